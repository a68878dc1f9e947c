"""World-model / IDM training loops, resume, DDP, the bundle format and its errors (tiny budgets)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dawm_env.checkpoint import CheckpointError, load_tensors
from dawm_env.cli import app
from dawm_env.data.loading import save_npz
from dawm_env.training.idm import CKPT_DIR as IDM_CKPT_DIR, IDMTrainConfig, train_idm
from dawm_env.training.world_model import WorldModelTrainConfig, train_world_model
from dawm_env.world_model.assemble import assemble_bundle
from dawm_env.world_model.bundle import Bundle, resolve_bundle

runner = CliRunner()
TINY_WM = dict(preset="cpu", batch_size=16, progress=False, threads=1)
TINY_IDM = dict(hidden=(32, 32), batch_size=64, progress=False, threads=1)


@pytest.fixture
def hopper_npz(hopper_random, tmp_path) -> str:
    path = tmp_path / "hopper_random.npz"
    save_npz(hopper_random, path)
    return str(path)


def _weights(folder: Path, stem: str) -> dict[str, torch.Tensor]:
    return load_tensors(folder / f"{stem}.safetensors")


def test_resume_equals_uninterrupted_run(hopper_npz, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train_world_model(WorldModelTrainConfig(dataset=hopper_npz, out=str(a), steps=6, checkpoint_every=3, **TINY_WM))
    # "killed" after 3 steps (its last checkpoint), then the same command with the full budget resumes
    train_world_model(WorldModelTrainConfig(dataset=hopper_npz, out=str(b), steps=3, checkpoint_every=3, **TINY_WM))
    train_world_model(WorldModelTrainConfig(dataset=hopper_npz, out=str(b), steps=6, checkpoint_every=3, **TINY_WM))
    wa, wb = _weights(a, "world_model"), _weights(b, "world_model")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ca, cb = _weights(a / "world_model_ckpt", "model"), _weights(b / "world_model_ckpt", "model")
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    assert json.loads((b / "world_model_ckpt" / "meta.json").read_text())["step"] == 6


def test_x0_bounds_cover_terminal_states_and_are_refreshed_on_resume(hopper_random, hopper_npz, tmp_path, monkeypatch):
    """Terminal states lie outside the range of the non-terminal ones (hopper: below the healthy height or past
    the healthy angle); the sampling clamp must cover them or the model can never generate a fall."""
    from dawm_env.world_model.data import WindowSource

    src = WindowSource.build(hopper_random, 7, 0.99, 0.1, 0)
    low, high = (b.numpy() for b in src.x0_bounds())
    o = hopper_random.obs_dim
    terminal = src.stats.normalize_obs(hopper_random.next_observations[hopper_random.terminations])
    live = src.stats.normalize_obs(hopper_random.observations)
    assert len(terminal) > 0
    assert ((terminal < live.min(0)) | (terminal > live.max(0))).any()  # the case the clamp got wrong
    assert (terminal >= low[:o] - 1e-6).all() and (terminal <= high[:o] + 1e-6).all()

    # a checkpoint written with stale (observations-only) bounds gets the right ones when training resumes
    stale = (torch.as_tensor(np.r_[live.min(0), low[o:]]), torch.as_tensor(np.r_[live.max(0), high[o:]]))
    out = tmp_path / "wm"
    with monkeypatch.context() as m:
        m.setattr(WindowSource, "x0_bounds", lambda self: stale)
        train_world_model(WorldModelTrainConfig(dataset=hopper_npz, out=str(out), steps=2, **TINY_WM))
    assert torch.equal(_weights(out, "world_model")["x0_low"], stale[0].float())
    train_world_model(WorldModelTrainConfig(dataset=hopper_npz, out=str(out), steps=3, **TINY_WM))
    w = _weights(out, "world_model")
    np.testing.assert_allclose(w["x0_low"].numpy(), low, rtol=0, atol=1e-6)
    np.testing.assert_allclose(w["x0_high"].numpy(), high, rtol=0, atol=1e-6)


def test_quality_curve_is_written_and_leaves_training_unchanged(hopper_npz, tmp_path):
    plain, evaluated = tmp_path / "plain", tmp_path / "evaluated"
    train_world_model(WorldModelTrainConfig(dataset=hopper_npz, out=str(plain), steps=4, **TINY_WM))
    train_world_model(WorldModelTrainConfig(dataset=hopper_npz, out=str(evaluated), steps=2, eval_every=2,
                                            eval_windows=8, checkpoint_every=2, **TINY_WM))
    # resumed: the curve keeps the first point and the wall-clock keeps counting
    train_world_model(WorldModelTrainConfig(dataset=hopper_npz, out=str(evaluated), steps=4, eval_every=2,
                                            eval_windows=8, checkpoint_every=2, **TINY_WM))
    curve = json.loads((evaluated / "quality_curve.json").read_text())["curve"]
    assert [p["step"] for p in curve] == [2, 4]
    assert 0 < curve[0]["train_seconds"] < curve[1]["train_seconds"]
    assert len(curve[0]["state_mse_per_step"]) == 7 and all(np.isfinite(curve[1]["state_mse_per_step"]))
    assert curve[1]["reward_mae"] > 0
    wa, wb = _weights(plain, "world_model"), _weights(evaluated, "world_model")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # evaluation draws no training randomness


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    from dawm_env.checkpoint import TrainState, check_resumable

    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 4)).square().sum().backward()
        opt.step()
    TrainState({"net": net}, {"adam": opt}, step=3, extra={"best": 1.5}).save(tmp_path / "ck", {"k": 1})
    net2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-3)
    state = TrainState({"net": net2}, {"adam": opt2})
    check_resumable(tmp_path / "ck", {"k": 1}, ("k",))
    state.load(tmp_path / "ck")
    assert state.step == 3 and state.extra == {"best": 1.5}
    for p, q in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(p, q)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    for pid in s1:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(s1[pid][key], s2[pid][key])
    with pytest.raises(ValueError, match="different 'k'"):
        check_resumable(tmp_path / "ck", {"k": 2}, ("k",))


def test_checkpoint_of_the_old_single_optimizer_layout_resumes(tmp_path):
    """World-model / IDM checkpoints of dawm <= 0.1.0 kept their optimiser's JSON under "optimizer"."""
    import json

    from dawm_env.checkpoint import CheckpointError, TrainState

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    TrainState({"model": net}, {"optimizer": opt}, step=1).save(tmp_path / "ck", {})
    meta_file = tmp_path / "ck" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["optimizer"] = meta.pop("optimizers")["optimizer"]
    meta_file.write_text(json.dumps(meta))
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    state = TrainState({"model": torch.nn.Linear(3, 2)}, {"optimizer": opt2})
    state.load(tmp_path / "ck")
    assert state.step == 1 and opt2.state_dict()["state"][0]["step"] == 1
    with pytest.raises(CheckpointError, match="no state for optimiser 'other'"):
        TrainState({"model": torch.nn.Linear(3, 2)}, {"other": opt2}).load(tmp_path / "ck")


def test_bundle_end_to_end_and_cli(hopper_npz, tmp_path):
    out = tmp_path / "bundle"
    train_world_model(WorldModelTrainConfig(dataset=hopper_npz, out=str(out), steps=20, **TINY_WM))
    assert assemble_bundle(out) is None  # IDM still missing
    train_idm(IDMTrainConfig(dataset=hopper_npz, out=str(out), steps=60, **TINY_IDM))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    idm_events = EventAccumulator(str(out / "tensorboard" / "idm")).Reload()
    assert [e.step for e in idm_events.Scalars("idm/val_nll")] == [60]  # the IDM logs its curve like the world model
    assemble_bundle(out, num_seed_pairs=200, eval_windows=64)
    bundle = Bundle.load(out)
    assert bundle.task.name == "hopper"
    assert bundle.seed_states.shape == (200, 11) and bundle.seed_actions.shape == (200, 3)
    m = bundle.meta["metrics"]
    assert len(m["state_mse_per_step"]) == 7 and all(np.isfinite(m["state_mse_per_step"]))
    for key in ("reward_mae", "action_consistency_mae", "idm_action_mae", "idm_nll"):
        assert np.isfinite(m[key]), key
    idm_meta = json.loads((out / "idm.json").read_text())
    assert idm_meta["best_val_nll"] == min(h["val_nll"] for h in idm_meta["history"])
    res = runner.invoke(app, ["bundle", "info", str(out)])
    assert res.exit_code == 0 and "state_mse_per_step" in res.output
    # by name from $DAWM_HOME/bundles
    named = Path(os.environ["DAWM_HOME"]) / "bundles" / "tiny-hopper"
    named.parent.mkdir(parents=True)
    named.symlink_to(out)
    assert resolve_bundle("tiny-hopper") == named
    listing = runner.invoke(app, ["bundle", "list"])
    assert "tiny-hopper" in listing.output

    # --- bad bundles -----------------------------------------------------------------------
    with pytest.raises(ValueError, match="for task hopper, not walker2d"):
        Bundle.load(out, expect_task="walker2d")
    with pytest.raises(FileNotFoundError, match="dawm train world-model"):
        Bundle.load("no-such-bundle")
    raw = (out / "idm.safetensors").read_bytes()
    (out / "idm.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        Bundle.load(out)
    (out / "idm.safetensors").write_bytes(raw)
    wm = load_tensors(out / "world_model.safetensors")
    first = next(k for k, v in wm.items() if v.is_floating_point())
    wm[first][...] = float("nan")
    from safetensors.torch import save_file

    save_file(wm, str(out / "world_model.safetensors"))
    with pytest.raises(CheckpointError, match="NaN"):
        Bundle.load(out)
    meta = json.loads((out / "bundle.json").read_text())
    (out / "bundle.json").write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a dawm-bundle"):
        Bundle.load(out)
    (out / "bundle.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Bundle.load(out)


def test_mismatched_components_are_refused(hopper_npz, halfcheetah_random, tmp_path):
    other = tmp_path / "hc.npz"
    save_npz(halfcheetah_random, other)
    out = tmp_path / "mixed"
    train_world_model(WorldModelTrainConfig(dataset=hopper_npz, out=str(out), steps=2, **TINY_WM))
    train_idm(IDMTrainConfig(dataset=str(other), out=str(out), steps=2, **TINY_IDM))
    with pytest.raises(CheckpointError, match="different task"):
        assemble_bundle(out)


@pytest.mark.parametrize("bf16", [None, True])
def test_world_model_loss_falls_on_real_windows(hopper_npz, tmp_path, bf16):
    out = tmp_path / "wm"
    train_world_model(WorldModelTrainConfig(dataset=hopper_npz, out=str(out), steps=150, log_every=25, bf16=bf16,
                                            **TINY_WM))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard" / "world_model"))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("world_model/loss")]
    assert len(losses) == 6
    assert losses[-1] < 0.7 * losses[0]


def test_bf16_on_cpu_is_applied_recorded_and_resumes(hopper_npz, tmp_path):
    runs = {}
    for name, bf16 in (("fp32", None), ("bf16", True), ("bf16-resumed", True)):
        out = tmp_path / name
        if name == "bf16-resumed":  # "killed" after its checkpoint at step 2, then rerun
            train_world_model(WorldModelTrainConfig(dataset=hopper_npz, out=str(out), steps=2, checkpoint_every=2,
                                                    bf16=bf16, **TINY_WM))
        train_world_model(WorldModelTrainConfig(dataset=hopper_npz, out=str(out), steps=4, checkpoint_every=2,
                                                bf16=bf16, **TINY_WM))
        train_idm(IDMTrainConfig(dataset=hopper_npz, out=str(out), steps=3, bf16=bf16, **TINY_IDM))
        runs[name] = out
    for stem, ckpt in (("world_model", "world_model_ckpt"), ("idm", IDM_CKPT_DIR)):
        assert json.loads((runs["fp32"] / f"{stem}.json").read_text())["bf16"] is False  # default: CUDA only
        assert json.loads((runs["bf16"] / f"{stem}.json").read_text())["bf16"] is True
        # the trained (not the EMA / best-validation) weights of each run's last checkpoint
        fp32, bf16, resumed = (_weights(runs[n] / ckpt, "model") for n in ("fp32", "bf16", "bf16-resumed"))
        assert all(v.dtype == torch.float32 for v in bf16.values())  # autocast: the weights stay float32
        assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32), stem  # bf16 did change the arithmetic
        if stem == "world_model":
            assert all(torch.equal(bf16[k], resumed[k]) for k in bf16)
    assert assemble_bundle(runs["bf16"]) is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes(hopper_npz, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "--master_addr=127.0.0.1", "-m", "dawm_env.cli", "train", "world-model", "--dataset", hopper_npz,
           "--out", str(out), "--steps", "4", "--batch-size", "8", "--checkpoint-every", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((out / "world_model.json").read_text())
    assert meta["world_size"] == 2 and meta["steps"] == 4
    assert all(torch.isfinite(t).all() for t in _weights(out, "world_model").values() if t.is_floating_point())
