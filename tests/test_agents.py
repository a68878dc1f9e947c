"""Offline agents on tiny data: faithfulness to CORL, losses, targets, flags, checkpoints, scores, resume."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dawm_env.agents.evaluation import Evaluator, aggregate, reset_seeds
from dawm_env.agents.iql import IQL, IQLConfig, corl_iql_preset, cosine_lr
from dawm_env.agents.networks import BatchedMLP, Normalizer
from dawm_env.agents.sources import DatasetSource, MixSource, ObsMoments, TransitionBatch, corl_reward_scale
from dawm_env.agents.td3bc import TD3BC, TD3BCConfig
from dawm_env.agents.train import (
    TrainAgentConfig,
    evaluate_run,
    infer_level,
    load_agent,
    load_checkpoint,
    save_checkpoint,
    train_agent,
)
from dawm_env.data.loading import save_npz
from dawm_env.data.records import OfflineDataset
from dawm_env.tasks import get_task

REPO = Path(__file__).resolve().parent.parent


def _load_script(rel: str, name: str):
    if str(REPO / "benchmarks") not in sys.path:  # a benchmark script imports its sibling _common
        sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    """The benchmark script: it holds the straightforward single-seed CORL-style reference implementations."""
    return _load_script("benchmarks/agent_speed.py", "agent_speed_bench")


@pytest.fixture
def hopper_npz(hopper_random, tmp_path) -> str:
    path = tmp_path / "hopper_random.npz"
    save_npz(hopper_random, path)
    return str(path)


def _stats(data: OfflineDataset) -> Normalizer:
    obs = data.observations.astype(np.float64)
    return Normalizer(torch.tensor(obs.mean(0), dtype=torch.float32),
                      torch.tensor(obs.std(0) + 1e-3, dtype=torch.float32))


def _batch(data: OfflineDataset, k: int, b: int, seed: int = 0) -> TransitionBatch:
    return DatasetSource(data).sample(k * b, np.random.default_rng(seed)).reshape(k, b)


def _copy_member(batched: BatchedMLP, member: int, seq: torch.nn.Sequential) -> None:
    """Load member ``member`` of a BatchedMLP into a reference nn.Sequential of Linear layers."""
    linears = [m for m in seq if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for lin, layer in zip(linears, batched.layers):
            lin.weight.copy_(layer.weight[member].T)
            lin.bias.copy_(layer.bias[member, 0])


def _assert_member_equal(batched: BatchedMLP, member: int, seq: torch.nn.Sequential, atol: float = 2e-6) -> None:
    linears = [m for m in seq if isinstance(m, torch.nn.Linear)]
    for lin, layer in zip(linears, batched.layers):
        torch.testing.assert_close(layer.weight[member].T, lin.weight, atol=atol, rtol=1e-5)
        torch.testing.assert_close(layer.bias[member, 0], lin.bias, atol=atol, rtol=1e-5)


# --- networks ---------------------------------------------------------------------------------------------
def test_batched_mlp_members_are_independent_nets():
    net = BatchedMLP(3, 5, (8, 8), 2, tanh_output=True, init_keys=[(s, "actor") for s in (0, 1, 2)])
    x = torch.randn(3, 4, 5)
    y = net(x)
    for e in range(3):
        h = x[e]
        for i, layer in enumerate(net.layers):
            h = h @ layer.weight[e] + layer.bias[e]
            h = torch.relu(h) if i < len(net.layers) - 1 else torch.tanh(h)
        torch.testing.assert_close(y[e], h)
    # a seed's initial weights do not depend on which other seeds share the stack
    alone = BatchedMLP(1, 5, (8, 8), 2, tanh_output=True, init_keys=[(2, "actor")])
    torch.testing.assert_close(alone.layers[0].weight[0], net.layers[0].weight[2])
    assert not torch.equal(net.layers[0].weight[0], net.layers[0].weight[1])


# --- faithfulness: one dawm step == one CORL-style step, per seed --------------------------------------------
def test_td3bc_step_matches_single_seed_reference(hopper_random, bench):
    k, b = 2, 32
    data = hopper_random
    norm = _stats(data)
    agent = TD3BC(TD3BCConfig(), data.obs_dim, data.act_dim, [0, 1], norm)
    refs = []
    for i in range(k):
        ref = bench.ReferenceTD3BC(data.obs_dim, data.act_dim)
        for net, name in ((ref.actor, "actor"), (ref.actor_target, "actor_target")):
            _copy_member(getattr(agent, name), i, net)
        for j, (c, ct) in enumerate(((ref.critic_1, ref.critic_1_target), (ref.critic_2, ref.critic_2_target))):
            _copy_member(agent.critic, j * k + i, c.net)
            _copy_member(agent.critic_target, j * k + i, ct.net)
        refs.append(ref)
    gen = torch.Generator()
    for step in range(4):  # two critic-only and two actor steps
        batch = _batch(data, k, b, seed=step)
        gen.manual_seed(100 + step)
        agent.update(batch, step, gen)
        gen.manual_seed(100 + step)
        noise = torch.randn((k, b, data.act_dim), generator=gen)
        for i, ref in enumerate(refs):
            s, ns = norm.obs(batch.observations[i]), norm.obs(batch.next_observations[i])
            ref.train([s, batch.actions[i], batch.rewards[i, :, None], ns, batch.terminations[i, :, None]],
                      noise=noise[i])
    for i, ref in enumerate(refs):
        _assert_member_equal(agent.actor, i, ref.actor)
        _assert_member_equal(agent.actor_target, i, ref.actor_target)
        _assert_member_equal(agent.critic, i, ref.critic_1.net)
        _assert_member_equal(agent.critic, k + i, ref.critic_2.net)
        _assert_member_equal(agent.critic_target, k + i, ref.critic_2_target.net)


@pytest.mark.parametrize("deterministic", [True, False])
def test_iql_step_matches_single_seed_reference(hopper_random, bench, deterministic):
    k, b, total = 2, 32, 10
    data = hopper_random
    norm = _stats(data)
    agent = IQL(IQLConfig(deterministic_actor=deterministic), data.obs_dim, data.act_dim, [3, 4], norm,
                total_steps=total)
    refs = []
    for i in range(k):
        ref = bench.ReferenceIQL(data.obs_dim, data.act_dim, deterministic=deterministic, max_steps=total)
        _copy_member(agent.actor, i, ref.actor)
        _copy_member(agent.value, i, ref.vf)
        for j, (q, qt) in enumerate(((ref.q1, ref.q1_target), (ref.q2, ref.q2_target))):
            _copy_member(agent.critic, j * k + i, q)
            _copy_member(agent.critic_target, j * k + i, qt)
        refs.append(ref)
    for step in range(3):
        batch = _batch(data, k, b, seed=10 + step)
        agent.update(batch, step)
        for i, ref in enumerate(refs):
            ref.train([norm.obs(batch.observations[i]), batch.actions[i], batch.rewards[i, :, None],
                       norm.obs(batch.next_observations[i]), batch.terminations[i, :, None]])
    for i, ref in enumerate(refs):
        _assert_member_equal(agent.actor, i, ref.actor)
        _assert_member_equal(agent.value, i, ref.vf)
        _assert_member_equal(agent.critic, k + i, ref.q2)
        _assert_member_equal(agent.critic_target, i, ref.q1_target)
        if not deterministic:
            torch.testing.assert_close(agent.log_std[i, 0], ref.log_std.detach(), atol=2e-6, rtol=1e-5)
    # CORL steps its scheduler after the update, dawm sets the rate before it: same rate for every update
    assert refs[0].actor_optimizer.param_groups[0]["lr"] == pytest.approx(cosine_lr(3e-4, 3, total))
    assert agent.actor_opt.param_groups[0]["lr"] == pytest.approx(cosine_lr(3e-4, 2, total))


# --- learning: losses fall, targets track ---------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["td3bc", "iql"])
def test_losses_fall(hopper_random, algo):
    # the real hopper transitions, with actions made a function of the state so that BC has something to learn
    acts = np.tanh(hopper_random.observations[:, :3] * 2.0).astype(np.float32)
    data = replace(hopper_random, actions=acts)
    norm = _stats(data)
    if algo == "td3bc":
        agent = TD3BC(TD3BCConfig(hidden=(64, 64)), data.obs_dim, data.act_dim, [0, 1], norm)
        keys = ("critic_loss", "bc_loss")
    else:
        agent = IQL(IQLConfig(deterministic_actor=True, hidden=(64, 64)), data.obs_dim, data.act_dim, [0, 1], norm,
                    total_steps=200)
        keys = ("critic_loss", "value_loss", "actor_loss")
    source, gen = DatasetSource(data), torch.Generator()
    history: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for step in range(200):
        gen.manual_seed(step)
        m = agent.update(source.sample(2 * 64, np.random.default_rng(step)).reshape(2, 64), step, gen)
        for key in keys:
            if key in m:
                history[key].append(m[key].numpy())
    for key, values in history.items():
        v = np.array(values)  # (steps, K)
        first, last = v[:10].mean(0), v[-10:].mean(0)
        assert np.all(last < 0.7 * first), f"{algo} {key}: {first} -> {last}"


def test_target_networks_track_by_polyak(hopper_random):
    data = hopper_random
    cfg = TD3BCConfig(tau=0.1)
    agent = TD3BC(cfg, data.obs_dim, data.act_dim, [0, 1], _stats(data))
    gen = torch.Generator()
    before = [p.clone() for p in agent.critic_target.parameters()]
    agent.update(_batch(data, 2, 16, 0), 0, gen)  # critic-only step: targets stay
    for p, q in zip(before, agent.critic_target.parameters()):
        assert torch.equal(p, q)
    agent.update(_batch(data, 2, 16, 1), 1, gen)  # actor step: targets move by tau towards the online nets
    for t0, t1, online in zip(before, agent.critic_target.parameters(), agent.critic.parameters()):
        torch.testing.assert_close(t1, (1 - cfg.tau) * t0 + cfg.tau * online.detach())
    gap0 = sum((t - o).abs().sum() for t, o in zip(agent.actor_target.parameters(), agent.actor.parameters()))
    for step in range(2, 40):
        agent.update(_batch(data, 2, 16, step), step, gen)
    # the online nets keep moving, but targets follow: after many steps of tau = 0.1 they are close again
    gap = sum((t - o).abs().sum() for t, o in zip(agent.actor_target.parameters(), agent.actor.parameters()))
    assert gap < 3 * gap0 and gap > 0
    # IQL moves its target critics on every step
    iql = IQL(IQLConfig(tau=0.2), data.obs_dim, data.act_dim, [0], _stats(data), total_steps=10)
    t0 = [p.clone() for p in iql.critic_target.parameters()]
    iql.update(_batch(data, 1, 16, 0), 0)
    for a, t1, online in zip(t0, iql.critic_target.parameters(), iql.critic.parameters()):
        torch.testing.assert_close(t1, 0.8 * a + 0.2 * online.detach())


# --- terminations vs truncations ------------------------------------------------------------------------------
def _two_episode_dataset() -> OfflineDataset:
    """Episode 0 (3 steps) truncated, episode 1 (2 steps) terminated; rewards mark the rows."""
    rng = np.random.default_rng(0)
    obs = [rng.standard_normal((4, 11)).astype(np.float32), rng.standard_normal((3, 11)).astype(np.float32)]
    act = [rng.uniform(-1, 1, (3, 3)).astype(np.float32), rng.uniform(-1, 1, (2, 3)).astype(np.float32)]
    rew = [np.array([0.0, 1.0, 2.0], np.float32), np.array([3.0, 4.0], np.float32)]
    term = [np.array([False, False, False]), np.array([False, True])]
    trunc = [np.array([False, False, True]), np.array([False, False])]
    return OfflineDataset.from_episodes("hopper", obs, act, rew, term, trunc, source="two-episodes")


def test_only_terminations_stop_bootstrapping():
    data = _two_episode_dataset()
    batch = DatasetSource(data).sample(500, np.random.default_rng(0))
    rows = batch.rewards.long()
    # the truncated last step of episode 0 (reward 2) is NOT terminal; the terminated one (reward 4) is
    assert torch.all(batch.terminations[rows == 2] == 0) and torch.all(batch.terminations[rows == 4] == 1)
    assert torch.all(batch.terminations[rows < 4] == 0)

    norm = Normalizer(torch.zeros(11), torch.ones(11))
    nxt = torch.randn(1, 2, 11)
    rewards = torch.tensor([[1.0, 1.0]])
    flags = torch.tensor([[1.0, 0.0]])  # first: terminated, second: truncated / running
    td3 = TD3BC(TD3BCConfig(policy_noise=0.0), 11, 3, [0], norm)
    y = td3.td_target(nxt, rewards, flags, torch.Generator())
    with torch.no_grad():
        a = td3.actor_target(nxt)
        q = td3.critic_target(torch.cat([nxt, a], -1).repeat(2, 1, 1)).view(2, 1, 2).amin(0)
    assert y[0, 0] == pytest.approx(1.0)
    assert y[0, 1] == pytest.approx(1.0 + 0.99 * float(q[0, 1]), abs=1e-6)
    iql = IQL(IQLConfig(), 11, 3, [0], norm, total_steps=1)
    y = iql.td_target(nxt, rewards, flags)
    with torch.no_grad():
        v = iql.value(nxt).squeeze(-1)
    assert y[0, 0] == pytest.approx(1.0)
    assert y[0, 1] == pytest.approx(1.0 + 0.99 * float(v[0, 1]), abs=1e-6)


def test_truncation_only_data_never_terminates(halfcheetah_random):
    batch = DatasetSource(halfcheetah_random).sample(1000, np.random.default_rng(0))
    assert halfcheetah_random.truncations.sum() > 0
    assert float(batch.terminations.sum()) == 0.0


# --- sources ---------------------------------------------------------------------------------------------------
def test_mix_source_ratio_per_seed_block(hopper_random):
    real = hopper_random
    fake = OfflineDataset(**{**{f: getattr(real, f) for f in ("task", "observations", "actions", "next_observations",
                                                                "terminations", "truncations", "episode_offsets",
                                                                "seeds")},
                             "rewards": np.full(real.num_transitions, 1000.0, np.float32), "source": "fake"})
    mix = MixSource(DatasetSource(real), DatasetSource(fake), 0.25)
    batch = mix.sample(4 * 64, np.random.default_rng(0)).reshape(4, 64)
    n_real = (batch.rewards < 100).sum(1)
    assert torch.all((n_real - 16).abs() <= 1), n_real
    moments = mix.obs_moments()
    obs = real.observations.astype(np.float64)
    np.testing.assert_allclose(moments.mean, obs.mean(0), rtol=1e-6)
    np.testing.assert_allclose(moments.std(0.0), obs.std(0), rtol=1e-5)
    only_real = MixSource(DatasetSource(real), DatasetSource(fake), 1.0)
    assert only_real.sample(8, np.random.default_rng(0)).rewards.max() < 100
    with pytest.raises(ValueError, match="mix fraction"):
        MixSource(DatasetSource(real), DatasetSource(fake), 1.5)
    m = ObsMoments.mix(ObsMoments(np.zeros(1), np.ones(1)), ObsMoments(np.full(1, 2.0), np.full(1, 5.0)), 0.5)
    assert m.std(0.0)[0] == pytest.approx(np.std([-1, 1, 1, 3]))


def test_corl_reward_scale_and_presets(hopper_random):
    returns = hopper_random.episode_returns()
    assert corl_reward_scale(hopper_random) == pytest.approx(1000 / (returns.max() - returns.min()))
    assert infer_level("dawm-d4rl/hopper/medium-replay-v0") == "medium-replay"
    assert infer_level("/data/hopper_medium_expert.npz") == "medium-expert"
    assert infer_level("mujoco/hopper/simple-v0") is None
    p = corl_iql_preset("hopper", "medium")
    assert p.deterministic_actor and p.normalize_reward and p.tau == 0.001
    assert corl_iql_preset("walker2d", "medium") == IQLConfig()
    assert cosine_lr(1.0, 0, 10) == 1.0 and cosine_lr(1.0, 10, 10) == pytest.approx(0.0)


# --- evaluation: normalised score by hand -----------------------------------------------------------------------
def test_normalized_score_matches_hand_computation():
    import gymnasium as gym

    task = get_task("hopper")
    seeds = [[11, 12], [13, 14]]
    actions = np.array([0.5, -0.5, 1.0], np.float32), np.array([-1.0, 0.2, 0.3], np.float32)

    def policy(obs: np.ndarray) -> np.ndarray:  # policy k plays a constant action
        return np.stack([np.broadcast_to(actions[k], (obs.shape[1], 3)) for k in range(2)])

    with Evaluator(task, 2, 2) as ev:
        returns, scores = ev.scores(policy, seeds)
    for k in range(2):
        for i in range(2):
            env = gym.make("Hopper-v5")
            env.reset(seed=seeds[k][i])
            total, done = 0.0, False
            while not done:
                _, r, term, trunc, _ = env.step(actions[k])
                total += r
                done = term or trunc
            env.close()
            assert returns[k, i] == pytest.approx(total)
            assert scores[k, i] == pytest.approx(100 * (total + 20.272305) / (3234.3 + 20.272305))
    agg = aggregate([10.0, 20.0, 60.0])
    assert agg["mean"] == pytest.approx(30.0) and agg["std"] == pytest.approx(np.sqrt((400 + 100 + 900) / 3))
    assert reset_seeds(0, 3) == reset_seeds(0, 3) != reset_seeds(1, 3)


# --- runs: results, save / load, resume --------------------------------------------------------------------------
def _cfg(hopper_npz: str, out: Path, algo: str = "td3bc", **kw) -> TrainAgentConfig:
    base = dict(algo=algo, dataset=hopper_npz, out=str(out), steps=8, seeds=2, batch_size=32, eval_every=4,
                eval_episodes=2, log_every=2, progress=False, threads=1,
                algo_overrides={"hidden": [32, 32]})
    base.update(kw)
    return TrainAgentConfig(**base)


def test_train_agent_writes_results_matching_curves(hopper_npz, tmp_path, caplog):
    with caplog.at_level("INFO", logger="dawm_env.agents.train"):
        out = train_agent(_cfg(hopper_npz, tmp_path / "run"))
    # without a progress bar every evaluation's score is logged
    assert sum("normalised score" in r.getMessage() for r in caplog.records) == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("eval/normalized_score")] == [4, 8]
    assert {"eval/normalized_score_seed0", "eval/normalized_score_seed1", "train/critic_loss"} <= set(
        events.Tags()["scalars"])
    for name in ("config.json", "curves.json", "results.json", "checkpoint/meta.json", "checkpoint/actor.safetensors"):
        assert (out / name).exists(), name
    curves = json.loads((out / "curves.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert curves["steps"] == [4, 8]
    per_seed = np.array([curves["normalized"][str(s)] for s in (0, 1)])  # (K, evals)
    assert results["last"]["mean"] == pytest.approx(per_seed[:, -1].mean())
    assert results["last"]["std"] == pytest.approx(per_seed[:, -1].std())
    assert results["best"]["mean"] == pytest.approx(per_seed.max(1).mean())
    task = get_task("hopper")
    returns = np.array(curves["returns"]["0"][-1])
    assert curves["normalized"]["0"][-1] == pytest.approx(float(np.mean(task.normalized_score(returns))))
    assert set(curves["losses"]) >= {"steps", "critic_loss", "actor_loss"}
    assert results["plot"] is None or (out / results["plot"]).exists()

    ev = evaluate_run(out, episodes=2)
    assert ev["step"] == 8 and len(ev["normalized"]["per_seed"]) == 2
    assert json.loads((out / "evaluation.json").read_text())["episodes"] == 2


@pytest.mark.parametrize("algo", ["td3bc", "iql"])
def test_save_load_round_trip(hopper_random, tmp_path, algo):
    data = hopper_random
    cls, cfg = (TD3BC, TD3BCConfig(hidden=(16, 16))) if algo == "td3bc" else (IQL, IQLConfig(hidden=(16, 16)))
    agent = cls(cfg, data.obs_dim, data.act_dim, [5, 6], _stats(data))
    for step in range(3):
        agent.update(_batch(data, 2, 16, step), step, torch.Generator().manual_seed(step))
    save_checkpoint(tmp_path / "ckpt", agent, 3, {"algo": algo}, {"note": "x"})
    fresh = cls(cfg, data.obs_dim, data.act_dim, [5, 6], Normalizer(torch.zeros(11), torch.ones(11)))
    meta = load_checkpoint(tmp_path / "ckpt", fresh, torch.device("cpu"))
    assert meta["step"] == 3 and meta["extra"] == {"note": "x"}
    for name, module in agent.networks().items():
        for (k1, v1), (k2, v2) in zip(module.state_dict().items(), fresh.networks()[name].state_dict().items()):
            assert k1 == k2 and torch.equal(v1, v2), f"{name}.{k1}"
    for name, opt in agent.optimizers().items():
        s1, s2 = opt.state_dict()["state"], fresh.optimizers()[name].state_dict()["state"]
        for pid in s1:
            for key in s1[pid]:
                assert torch.equal(torch.as_tensor(s1[pid][key]), torch.as_tensor(s2[pid][key]))
    # both continue identically
    for a in (agent, fresh):
        a.update(_batch(data, 2, 16, 9), 3, torch.Generator().manual_seed(9))
    obs = torch.as_tensor(data.observations[:5]).expand(2, 5, -1)
    assert torch.equal(agent.act(obs), fresh.act(obs))


@pytest.mark.parametrize("algo", ["td3bc", "iql"])
def test_killed_run_resumes_exactly(hopper_npz, tmp_path, algo):
    full = train_agent(_cfg(hopper_npz, tmp_path / "full", algo, checkpoint_every=3))

    class Killed(Exception):
        pass

    def kill_at_5(step: int, metrics: dict) -> None:
        if step == 5:
            raise Killed

    cfg = _cfg(hopper_npz, tmp_path / "killed", algo, checkpoint_every=3)
    with pytest.raises(Killed):
        train_agent(cfg, callback=kill_at_5)
    assert json.loads((tmp_path / "killed" / "checkpoint" / "meta.json").read_text())["step"] == 3
    resumed = train_agent(cfg)  # same command again
    a, _ = load_agent(full)
    b, meta = load_agent(resumed)
    assert meta["step"] == 8
    for name, module in a.networks().items():
        for (k1, v1), v2 in zip(module.state_dict().items(), b.networks()[name].state_dict().values()):
            assert torch.equal(v1, v2), f"{name}.{k1}"
    c_full = json.loads((full / "curves.json").read_text())
    c_res = json.loads((resumed / "curves.json").read_text())
    assert c_full["normalized"] == c_res["normalized"] and c_full["losses"] == c_res["losses"]
    # a different setting refuses to resume into the same folder
    with pytest.raises(ValueError, match="different"):
        train_agent(replace(cfg, algo_overrides={"hidden": [16, 16]}))


def test_synthetic_and_mixed_sources(hopper_random, hopper_npz, tmp_path):
    from dawm_env.data.minari_io import write_minari_dataset

    syn = OfflineDataset(**{**{f: getattr(hopper_random, f) for f in (
        "task", "observations", "actions", "next_observations", "terminations", "truncations", "episode_offsets",
        "seeds")}, "rewards": hopper_random.rewards + 0.5, "source": "synthetic"})
    syn_id = write_minari_dataset(syn, "dawm-test/hopper/synthetic-v0", algorithm_name="test",
                                  description="tiny synthetic", provenance={})
    out = train_agent(_cfg(hopper_npz, tmp_path / "mix", "iql", synthetic=syn_id, real_fraction=0.5, steps=4,
                           eval_every=4))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["synthetic"] == syn_id and cfg["data"]["real_fraction"] == 0.5
    assert json.loads((out / "results.json").read_text())["real_fraction"] == 0.5
    out = train_agent(_cfg(hopper_npz, tmp_path / "syn", "td3bc", synthetic=syn_id, steps=2, eval_every=2))
    assert json.loads((out / "config.json").read_text())["data"]["real_fraction"] == 0.0

    class OnTheFly:  # any object with sample(batch_size, rng) plugs in (e.g. a world-model generator)
        obs_dim, act_dim = 11, 3

        def sample(self, batch_size: int, rng: np.random.Generator) -> TransitionBatch:
            return DatasetSource(syn).sample(batch_size, rng)

    out = train_agent(_cfg(hopper_npz, tmp_path / "fly", "td3bc", steps=2, eval_every=2), source=OnTheFly())
    assert json.loads((out / "config.json").read_text())["data"]["custom_source"] == "OnTheFly"


def test_config_errors(hopper_npz, tmp_path):
    with pytest.raises(ValueError, match="unknown algo"):
        TrainAgentConfig(algo="cql", dataset=hopper_npz, out=str(tmp_path))
    with pytest.raises(ValueError, match="unknown td3bc settings"):
        TrainAgentConfig(algo="td3bc", dataset=hopper_npz, out=str(tmp_path), algo_overrides={"expectile": 0.7})
    with pytest.raises(ValueError, match="needs a synthetic"):
        train_agent(_cfg(hopper_npz, tmp_path / "r", real_fraction=0.5))
    with pytest.raises(FileNotFoundError, match="not a dawm agent run"):
        evaluate_run(tmp_path / "nothing")


def test_bf16_option_trains(hopper_random):
    data = hopper_random
    agent = TD3BC(TD3BCConfig(bf16=True, hidden=(32, 32)), data.obs_dim, data.act_dim, [0], _stats(data))
    for step in range(4):
        m = agent.update(_batch(data, 1, 16, step), step, torch.Generator().manual_seed(step))
    assert torch.isfinite(m["critic_loss"]).all() and agent.actor.layers[0].weight.dtype == torch.float32


# --- other codebases and the benchmark ------------------------------------------------------------------------------
def test_sb3_td3bc_example_trains_from_minari(hopper_random):
    from dawm_env.data.minari_io import write_minari_dataset

    ds_id = write_minari_dataset(hopper_random, "dawm-test/hopper/random-v0", algorithm_name="random",
                                 description="tiny", provenance={})
    example = _load_script("examples/sb3_td3bc_offline.py", "sb3_td3bc_offline")
    model, env, mean, std = example.make_model(ds_id)
    rb = model.replay_buffer
    assert rb.full and rb.buffer_size == hopper_random.num_transitions
    np.testing.assert_array_equal(rb.dones[:, 0], hopper_random.terminations.astype(np.float32))
    np.testing.assert_allclose(rb.observations[:, 0], (hopper_random.observations - mean) / std, rtol=1e-5, atol=1e-5)
    env.close()
    curve = example.main(["--dataset", ds_id, "--steps", "6", "--eval-every", "3", "--eval-episodes", "1"])
    assert curve["steps"] == [3, 6] and all(np.isfinite(curve["normalized"]))


def test_benchmark_smoke(bench, tmp_path, monkeypatch):
    out = tmp_path / "speed.json"
    monkeypatch.setattr(sys, "argv", ["agent_speed.py", "--threads", "1", "--seeds", "2", "--steps", "2",
                                      "--warmup", "1", "--data-size", "1000", "--out", str(out)])
    bench.main()
    rows = json.loads(out.read_text())["rows"]
    assert {(r["algo"], r["impl"]) for r in rows} == {("td3bc", "reference"), ("td3bc", "dawm"), ("iql", "reference"),
                                                      ("iql", "dawm")}
    assert all(r["cpu_per_seed"] > 0 for r in rows)
    with pytest.raises(SystemExit, match="exists"):  # a rerun never overwrites a results file
        bench.main()
    assert json.loads(out.read_text())["rows"] == rows


def test_ssorl_relabels_a_fraction_of_episodes_and_trains(hopper_random, hopper_npz, tiny_bundle, tmp_path):
    from dawm_env.agents.sources import ssorl_relabel
    from dawm_env.world_model.bundle import Bundle

    bundle = Bundle.load(tiny_bundle)
    relabelled, info = ssorl_relabel(hopper_random, bundle, 0.5, seed=0)
    changed = np.any(relabelled.actions != hopper_random.actions, axis=1)
    ep = hopper_random.episode_ids()
    n_changed_eps = len(np.unique(ep[changed]))
    assert info["relabelled_episodes"] == round(0.5 * hopper_random.num_episodes) >= n_changed_eps > 0
    # whole episodes: an episode is either fully kept or fully relabelled
    for e in np.unique(ep[changed]):
        assert changed[ep == e].mean() > 0.9
    for name in ("observations", "rewards", "next_observations", "terminations", "truncations"):
        np.testing.assert_array_equal(getattr(relabelled, name), getattr(hopper_random, name))
    assert np.all(np.abs(relabelled.actions) < 1)
    out = train_agent(_cfg(hopper_npz, tmp_path / "ssorl", "ssorl-td3bc", bundle=str(tiny_bundle), steps=2,
                           eval_every=2))
    desc = json.loads((out / "config.json").read_text())["data"]["ssorl"]
    assert desc["relabelled_episodes"] == info["relabelled_episodes"]
    assert load_agent(out)[0].name == "td3bc"
    with pytest.raises(ValueError, match="needs a bundle"):
        TrainAgentConfig(algo="ssorl-iql", dataset=hopper_npz, out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="pass --synthetic"):
        TrainAgentConfig(algo="dwm-td3bc", dataset=hopper_npz, out=str(tmp_path / "x"))


@pytest.mark.parametrize("algo", ["td3bc", "iql"])
def test_one_seed_exports_as_a_plain_policy_and_torchscript(hopper_npz, tmp_path, algo):
    from stable_baselines3.common.evaluation import evaluate_policy

    from dawm_env.agents.export import export_torchscript, load_seed_policy
    from dawm_env.agents.train import load_agent

    out = train_agent(replace(_cfg(hopper_npz, tmp_path / "run"), algo=algo))
    agent, _ = load_agent(out)
    obs = np.random.default_rng(0).normal(size=(6, 11)).astype(np.float32)
    batched = agent.act(torch.from_numpy(obs).expand(agent.k, -1, -1)).numpy()  # (K, N, act)
    for member, seed in enumerate(agent.seeds):
        policy = load_seed_policy(out, seed=seed)
        actions, state = policy.predict(obs)
        assert state is None and actions.shape == (6, 3)
        np.testing.assert_allclose(actions, batched[member], atol=1e-5)  # the agent's own actions, seed by seed
        np.testing.assert_allclose(policy.predict(obs[0])[0], batched[member, 0], atol=1e-5)
    assert not np.allclose(batched[0], batched[1])  # the two seeds differ, so the check above can tell them apart
    path = export_torchscript(out, tmp_path / "policy.pt", seed=agent.seeds[1])
    scripted = torch.jit.load(str(path))
    np.testing.assert_allclose(scripted(torch.from_numpy(obs)).numpy(), batched[1], atol=1e-5)
    with pytest.raises(FileExistsError):
        export_torchscript(out, path, seed=agent.seeds[1])
    with pytest.raises(ValueError, match="not one of this run's seeds"):
        load_seed_policy(out, seed=99)
    with pytest.raises(ValueError, match="shape"):
        policy.predict(obs[:, :5])
    import gymnasium as gym
    from stable_baselines3.common.monitor import Monitor

    env = Monitor(gym.make("Hopper-v5"))
    mean, _ = evaluate_policy(policy, env, n_eval_episodes=1)  # SB3's own evaluation runs it as is
    env.close()
    assert np.isfinite(mean)
