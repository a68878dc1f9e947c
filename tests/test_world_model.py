"""Fast tests of the world-model modules (tiny models, one thread, seconds)."""

from __future__ import annotations

import json

import pytest
import torch

from dawm_env.world_model import (
    EMA,
    GaussianDiffusion,
    IDMConfig,
    InverseDynamics,
    TemporalUnet,
    WorldModelConfig,
    cosine_beta_schedule,
    strided_timesteps,
)

torch.set_num_threads(1)

OBS, ACT, T = 3, 2, 8
D = OBS + ACT + 1


def tiny_diffusion(seed: int = 0, **kw: object) -> GaussianDiffusion:
    torch.manual_seed(seed)
    net = TemporalUnet(horizon=T, transition_dim=D, act_dim=ACT, dim=16, dim_mults=(1, 2))
    return GaussianDiffusion(net, OBS, ACT, **kw)  # type: ignore[arg-type]


def random_windows(b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, T, D, generator=g)
    x[:, 1:, OBS : OBS + ACT] = 0.0  # future actions are not modelled
    rtg = torch.rand(b, generator=g)
    return x, rtg


def test_unet_output_shape_and_rtg_shapes() -> None:
    torch.manual_seed(0)
    net = TemporalUnet(horizon=T, transition_dim=D, act_dim=ACT, dim=16, dim_mults=(1, 2, 4))
    x = torch.randn(5, T, D)
    k = torch.randint(0, 5, (5,))
    a = torch.randn(5, ACT)
    out1 = net(x, k, a, torch.rand(5), torch.ones(5, dtype=torch.bool))
    out2 = net(x, k, a, torch.rand(5, 1))
    assert out1.shape == (5, T, D) and out2.shape == (5, T, D)


def test_cond_mask_false_ignores_action_and_rtg() -> None:
    torch.manual_seed(0)
    net = TemporalUnet(horizon=T, transition_dim=D, act_dim=ACT, dim=16, dim_mults=(1, 2))
    x, k = torch.randn(4, T, D), torch.randint(0, 5, (4,))
    off = torch.zeros(4, dtype=torch.bool)
    o1 = net(x, k, torch.randn(4, ACT), torch.rand(4), off)
    o2 = net(x, k, torch.randn(4, ACT), torch.rand(4), off)
    assert torch.allclose(o1, o2)


def test_horizon_divisibility_error() -> None:
    with pytest.raises(ValueError, match="divisible"):
        TemporalUnet(horizon=7, transition_dim=D, act_dim=ACT, dim=16, dim_mults=(1, 2))
    with pytest.raises(ValueError, match="divisible"):
        WorldModelConfig(horizon=7, dim_mults=(1, 2, 4, 8, 16))  # T = 8 not divisible by 16
    WorldModelConfig(horizon=7, dim_mults=(1, 2, 4, 8))  # 8 % 8 == 0: fine


def test_schedule() -> None:
    betas = cosine_beta_schedule(5)
    assert betas.shape == (5,) and (betas > 0).all() and betas.max() <= 0.999
    assert strided_timesteps(5, 3) == [0, 2, 4]
    assert strided_timesteps(5, 5) == [0, 1, 2, 3, 4]


def test_loss_shape_and_valid_mask() -> None:
    dm = tiny_diffusion()
    x, rtg = random_windows(6)
    loss = dm.loss(x, rtg, generator=torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.equal(loss, dm(x, rtg, generator=torch.Generator().manual_seed(1)))  # forward = loss
    # Only modelled entries of valid rows may receive gradient: capture the network output.
    outs: list[torch.Tensor] = []

    def keep_output(module: torch.nn.Module, inputs: object, out: torch.Tensor) -> None:
        out.retain_grad()
        outs.append(out)

    dm.model.register_forward_hook(keep_output)
    valid = torch.ones(6, T)
    valid[:, 5:] = 0
    dm.loss(x, rtg, valid, generator=torch.Generator().manual_seed(2)).backward()
    grad = outs[-1].grad
    assert grad is not None
    assert torch.all(grad[:, 5:] == 0)  # padded rows
    assert torch.all(grad[:, 0, : OBS + ACT] == 0)  # in-painted s_t, a_t
    assert torch.all(grad[:, :, OBS : OBS + ACT] == 0)  # future actions
    assert torch.all(grad[:, 1:5, :OBS] != 0) and torch.all(grad[:, :5, -1] != 0)  # modelled


def test_sample_inpainting_exact_and_shapes() -> None:
    dm = tiny_diffusion()
    b = 7
    s0, a0 = torch.randn(b, OBS), torch.rand(b, ACT) * 2 - 1
    out = dm.sample(s0, a0, torch.rand(b), guidance_weight=1.2, n_steps=3, temperature=0.5,
                    generator=torch.Generator().manual_seed(0))
    assert out.shape == (b, T, D)
    assert torch.equal(out[:, 0, :OBS], s0)
    assert torch.equal(out[:, 0, OBS : OBS + ACT], a0)
    assert torch.equal(out[:, 1:, OBS : OBS + ACT], torch.zeros(b, T - 1, ACT))
    assert torch.isfinite(out).all()


def test_sampling_reproducible_with_generator() -> None:
    dm = tiny_diffusion()
    s0, a0, g = torch.randn(4, OBS), torch.randn(4, ACT), torch.rand(4)
    o1 = dm.sample(s0, a0, g, generator=torch.Generator().manual_seed(123))
    o2 = dm.sample(s0, a0, g, generator=torch.Generator().manual_seed(123))
    o3 = dm.sample(s0, a0, g, generator=torch.Generator().manual_seed(124))
    assert torch.equal(o1, o2)
    assert not torch.equal(o1, o3)


def test_guided_eps_endpoints() -> None:
    dm = tiny_diffusion()
    b = 5
    x, k = torch.randn(b, T, D), torch.randint(0, 5, (b,))
    a, g = torch.randn(b, ACT), torch.rand(b)
    ones, zeros = torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)
    with torch.no_grad():
        eps_c = dm.model(x, k, a, g, ones)
        eps_u = dm.model(x, k, a, g, zeros)
        assert not torch.allclose(eps_c, eps_u)
        assert torch.allclose(dm.guided_eps(x, k, a, g, 0.0), eps_u, atol=1e-6)
        assert torch.allclose(dm.guided_eps(x, k, a, g, 1.0), eps_c, atol=1e-6)


def test_guidance_endpoints_run_one_pass_on_b_rows() -> None:
    """w = 0 / 1 need only one of the two predictions: the network sees B rows instead of 2B."""
    dm = tiny_diffusion()
    b = 3
    rows: list[int] = []
    hook = dm.model.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    x, k, a, g = torch.randn(b, T, D), torch.randint(0, 5, (b,)), torch.randn(b, ACT), torch.rand(b)
    with torch.no_grad():
        for w in (0.0, 1.0, 1.2):
            dm.guided_eps(x, k, a, g, w)
    hook.remove()
    assert rows == [b, b, 2 * b]


def test_loss_falls_when_overfitting() -> None:
    dm = tiny_diffusion(cond_drop_prob=0.25)
    x, rtg = random_windows(16, seed=3)
    opt = torch.optim.Adam(dm.parameters(), lr=3e-3)

    def eval_loss() -> float:
        # Same k / noise / condition drop every time: a fair before/after comparison.
        with torch.no_grad():
            xs, gs = x.repeat(8, 1, 1), rtg.repeat(8)
            return float(dm.loss(xs, gs, generator=torch.Generator().manual_seed(7)))

    initial = eval_loss()
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        loss = dm.loss(x, rtg, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = eval_loss()
    assert final < 0.5 * initial, (initial, final)


def test_ema_tracks_model() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5, update_every=2, start_step=0)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.model.weight.clone()
    ema.step(model)  # step 1: not due
    assert torch.equal(ema.model.weight, before)
    ema.step(model)  # step 2: lerp half-way
    assert torch.allclose(ema.model.weight, 0.5 * (before + model.weight))
    assert not ema.model.weight.requires_grad


def _idm_data(n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    prev, cur, nxt = (torch.randn(n, OBS, generator=g) for _ in range(3))
    w = torch.randn(3 * OBS, ACT, generator=g) * 0.5
    action = 0.9 * torch.tanh(torch.cat((prev, cur, nxt), -1) @ w)  # deterministic in the states
    return prev, cur, nxt, action


def test_idm_nll_falls_and_outputs_in_range() -> None:
    torch.manual_seed(0)
    idm = InverseDynamics(OBS, ACT, hidden=(64, 64), dropout=0.0)
    prev, cur, nxt, action = _idm_data(256)
    opt = torch.optim.Adam(idm.parameters(), lr=3e-3)
    initial = float(idm.nll(prev, cur, nxt, action).detach())
    for _ in range(300):
        loss = idm.nll(prev, cur, nxt, action)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = float(idm.nll(prev, cur, nxt, action).detach())
    assert final < initial - 2.0, (initial, final)
    idm.eval()
    pred, std = idm.act(prev, cur, nxt)
    assert pred.shape == (256, ACT) and std.shape == (256, ACT)
    assert float((pred - action).abs().mean()) < 0.1
    assert (std > 0).all()
    # Extreme inputs saturate tanh: still strictly inside (-1, 1).
    big = torch.full((4, OBS), 1e4)
    for det in (True, False):
        a, _ = idm.act(big, -big, big, deterministic=det, generator=torch.Generator().manual_seed(0))
        assert (a.abs() < 1).all()


def test_idm_nll_finite_at_action_bounds() -> None:
    idm = InverseDynamics(OBS, ACT, hidden=(16,), dropout=0.1)
    s = torch.randn(3, OBS)
    a = torch.tensor([[1.0, -1.0], [0.0, 1.0], [-1.0, 0.5]])
    nll = idm.nll(s, s, s, a, reduction="none")
    assert nll.shape == (3,) and torch.isfinite(nll).all()
    mean, log_std = idm.distribution(s, s, s)
    assert (log_std >= -5).all() and (log_std <= 2).all()


def test_idm_stochastic_reproducible() -> None:
    idm = InverseDynamics(OBS, ACT, hidden=(16,)).eval()
    s = torch.randn(4, OBS)
    a1, _ = idm.act(s, s, s, deterministic=False, generator=torch.Generator().manual_seed(5))
    a2, _ = idm.act(s, s, s, deterministic=False, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a1, a2)


@pytest.mark.parametrize("name", ["paper", "cpu"])
def test_config_presets_round_trip(name: str) -> None:
    cfg = WorldModelConfig.preset(name)
    restored = WorldModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert restored == cfg
    assert cfg.window == cfg.horizon + 1 == 8


def test_config_values() -> None:
    paper = WorldModelConfig.preset("paper")
    assert (paper.dim, paper.dim_mults, paper.batch_size, paper.train_steps) == (128, (1, 4, 8), 64, 2_000_000)
    assert (paper.n_diffusion_steps, paper.n_sampling_steps, paper.cond_drop_prob) == (5, 3, 0.25)
    assert (paper.guidance_weight, paper.temperature, paper.ema_decay, paper.ema_every) == (1.2, 0.5, 0.995, 10)
    cpu = WorldModelConfig.preset("cpu")
    dm = GaussianDiffusion.from_config(cpu, obs_dim=11, act_dim=3)
    assert dm.horizon == cpu.window


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="paper"):
        WorldModelConfig.preset("gpu-huge")
    with pytest.raises(ValueError, match="dimm"):
        WorldModelConfig.from_dict({"dimm": 3})
    with pytest.raises(ValueError, match="unknown IDMConfig keys"):
        IDMConfig.from_dict({"hiden": [8]})
    idm_cfg = IDMConfig(hidden=(32, 32))
    assert IDMConfig.from_dict(json.loads(json.dumps(idm_cfg.to_dict()))) == idm_cfg
    idm = InverseDynamics.from_config(idm_cfg, OBS, ACT)
    assert idm.mean_net[0].out_features == 32


def test_x0_bounds_clamp_samples() -> None:
    dm = tiny_diffusion(clip_denoised=None)
    s0, a0, g = torch.randn(3, OBS), torch.randn(3, ACT), torch.rand(3)
    # A zero-width range pins every modelled entry: the last reverse step returns x_0_hat itself.
    dm.set_x0_bounds(torch.zeros(D), torch.zeros(D))
    out = dm.sample(s0, a0, g, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 1:, :OBS], torch.zeros(3, T - 1, OBS))
    assert torch.equal(out[:, :, -1], torch.zeros(3, T))
    assert torch.equal(out[:, 0, :OBS], s0)  # in-painting still wins
    with pytest.raises(ValueError):
        dm.set_x0_bounds(torch.ones(D), torch.zeros(D))
    # Bounds are part of the checkpoint.
    dm2 = tiny_diffusion(seed=1)
    dm2.load_state_dict(dm.state_dict())
    assert torch.equal(dm2.x0_high, torch.zeros(D))
    # Older checkpoints without the bounds still load (the module keeps its own).
    old = {k: v for k, v in dm.state_dict().items() if not k.startswith("x0_")}
    dm3 = tiny_diffusion(seed=1, clip_denoised=5.0)
    dm3.load_state_dict(old)
    assert torch.equal(dm3.x0_high, torch.full((D,), 5.0))
