"""Failures that lose work, lie or crash (issue 15): interrupted checkpoint swaps, plain D4RL files in agents and
experiments, the default thread count, and a behaviour SAC run reused under a smaller step cap."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import interrupt_behavior_run_at_first_eval
from typer.testing import CliRunner

from dawm_env import checkpoint as ckpt_mod
from dawm_env.checkpoint import (
    MANIFEST_FILE,
    TrainState,
    readable_checkpoint,
    recover_checkpoint,
    staged_checkpoint,
    write_checkpoint_dir,
)
from dawm_env.cli import app
from dawm_env.data.loading import save_npz

runner = CliRunner()


# --- helpers --------------------------------------------------------------------------------------------
def _tiny_state(step: int) -> TrainState:
    torch.manual_seed(step)
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-3)
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    return TrainState(modules={"m": lin}, optimizers={"o": opt}, step=step)


def _leftovers(folder: Path) -> list[str]:
    """Everything beside the live checkpoint that a swap leaves behind."""
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name or ".old" in p.name)


def _as_leftover(src: Path, live: Path, kind: str, tag: str = "0000beef") -> Path:
    """Move a written checkpoint folder to the name a swap gives its staged (``tmp``) or old (``old``) copy."""
    dest = live.with_name(f".{live.name}.{kind}-{tag}")
    src.rename(dest)
    return dest


def _crash_state(root: Path, live_name: str, point: str, write) -> Path:
    """Leave on disk what a kill at ``point`` of the swap of checkpoint ``root/live_name`` leaves.

    ``write(path, step)`` writes a complete checkpoint of ``step`` at ``path``; step 1 is the checkpoint live
    before the swap, step 2 the one being written.
    """
    live = root / live_name
    if point in ("mid-write", "sealed-not-swapped", "after-swap", "between-renames", "corrupt-new"):
        write(live, 1)
    if point == "mid-write":  # killed while writing the new copy: unsealed, a file cut short
        tmp = live.with_name(f".{live.name}.tmp-0000dead")
        shutil.copytree(live, tmp)
        (tmp / MANIFEST_FILE).unlink()
        data = (tmp / "meta.json").read_bytes()
        (tmp / "meta.json").write_bytes(data[: len(data) // 2])
    elif point == "first-mid-write":  # the first checkpoint of the run, killed while being written
        tmp = live.with_name(f".{live.name}.tmp-0000dead")
        tmp.mkdir(parents=True)
        (tmp / "m.safetensors").write_bytes(b"\x00" * 10)
    else:
        write(root / "new", 2)
        if point in ("sealed-not-swapped", "first-save-between", "corrupt-new"):
            _as_leftover(root / "new", live, "tmp")
        elif point == "between-renames":  # the live copy renamed aside, the new one not yet renamed in
            _as_leftover(live, live, "old", "0000aaaa")
            _as_leftover(root / "new", live, "tmp")
        elif point == "after-swap":  # the new copy renamed in, the old one not yet removed
            _as_leftover(live, live, "old", "0000aaaa")
            (root / "new").rename(live)
        if point == "corrupt-new":  # a sealed copy whose file no longer matches its manifest, and no live one
            tmp = live.with_name(f".{live.name}.tmp-0000beef")
            (tmp / "m.safetensors").write_bytes((tmp / "m.safetensors").read_bytes()[:-4])
            _as_leftover(live, live, "old", "0000aaaa")
    return live


#: kill point -> step the run must resume from (None: no checkpoint, start from 0)
KILL_POINTS = {"mid-write": 1, "sealed-not-swapped": 1, "between-renames": 2, "after-swap": 2,
               "first-save-between": 2, "first-mid-write": None, "corrupt-new": 1}


# --- 1. the swap and its recovery -------------------------------------------------------------------------
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_recover_checkpoint_after_every_kill_point(tmp_path, point):
    live = _crash_state(tmp_path, "ckpt", point, lambda p, s: _tiny_state(s).save(p, {"run": 1}))
    before = sorted(p.name for p in tmp_path.iterdir())
    found = readable_checkpoint(live)  # a reader that does not own the run changes nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if KILL_POINTS[point] is None:
        assert found is None
    else:
        assert json.loads((found / "meta.json").read_text())["step"] == KILL_POINTS[point]
    assert recover_checkpoint(live) is (KILL_POINTS[point] is not None)
    assert _leftovers(tmp_path) == []
    if KILL_POINTS[point] is None:
        assert not live.exists()
        return
    state = _tiny_state(0)
    state.load(live)
    assert state.step == KILL_POINTS[point]


def test_a_save_removes_leftovers_and_an_interrupt_between_the_renames_keeps_the_new_copy(tmp_path, monkeypatch):
    live = tmp_path / "ckpt"
    _tiny_state(1).save(live, {})
    (tmp_path / ".ckpt.tmp-0000dead").mkdir()  # an earlier kill mid-write
    (tmp_path / ".ckpt.old-0000dead").mkdir()
    _tiny_state(2).save(live, {})
    assert _leftovers(tmp_path) == [] and json.loads((live / "meta.json").read_text())["step"] == 2

    real_rename = Path.rename

    def killed_on_second_rename(self, target):
        if ".tmp-" in self.name:
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", killed_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        _tiny_state(3).save(live, {})
    monkeypatch.setattr(Path, "rename", real_rename)
    assert not live.exists() and len(_leftovers(tmp_path)) == 2  # the sealed new copy survived the interrupt
    assert recover_checkpoint(live) and _leftovers(tmp_path) == []
    assert json.loads((live / "meta.json").read_text())["step"] == 3

    # an exception while writing leaves the live copy and nothing else
    with pytest.raises(RuntimeError), staged_checkpoint(live) as tmp:
        (tmp / "x.json").write_text("{}")
        raise RuntimeError("disk full")
    assert _leftovers(tmp_path) == [] and json.loads((live / "meta.json").read_text())["step"] == 3


def test_folders_of_older_dawm_versions_recover_by_their_files(tmp_path):
    """Behaviour SAC runs of earlier versions swapped through fixed names (checkpoint.tmp / checkpoint.old) and no
    manifest: an old copy whose files parse is used, a staged copy without a manifest never is."""
    live = tmp_path / "checkpoint"
    write_checkpoint_dir(tmp_path / "a", {"m": {"w": torch.ones(2)}}, {"step": 5})
    (tmp_path / "a" / MANIFEST_FILE).unlink()
    (tmp_path / "a").rename(tmp_path / "checkpoint.old")
    write_checkpoint_dir(tmp_path / "b", {"m": {"w": torch.ones(2)}}, {"step": 9})
    (tmp_path / "b" / MANIFEST_FILE).unlink()
    (tmp_path / "b").rename(tmp_path / "checkpoint.tmp")
    assert recover_checkpoint(live) and _leftovers(tmp_path) == []
    assert json.loads((live / "meta.json").read_text())["step"] == 5
    # an old copy cut short is not trusted either
    write_checkpoint_dir(tmp_path / "c", {"m": {"w": torch.ones(64)}}, {"step": 7})
    (tmp_path / "c" / MANIFEST_FILE).unlink()
    f = tmp_path / "c" / "m.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    assert not ckpt_mod.checkpoint_is_complete(tmp_path / "c")


@pytest.fixture
def hopper_npz(hopper_random, tmp_path) -> str:
    path = tmp_path / "hopper_random.npz"
    save_npz(hopper_random, path)
    return str(path)


@pytest.fixture
def resumed_steps(monkeypatch) -> list:
    """The step every TrainState.load restores (world model, IDM and agents resume through it)."""
    steps: list = []
    real = TrainState.load

    def load(self, *args, **kwargs):
        meta = real(self, *args, **kwargs)
        steps.append(self.step)
        return meta

    monkeypatch.setattr(TrainState, "load", load)
    return steps


@pytest.mark.parametrize("point", ["between-renames", "after-swap", "first-mid-write"])
def test_idm_resumes_from_the_right_step_after_a_killed_swap(hopper_npz, tmp_path, resumed_steps, point):
    from dawm_env.training.idm import CKPT_DIR, IDMTrainConfig, train_idm

    def cfg(out: Path, steps: int) -> IDMTrainConfig:
        return IDMTrainConfig(dataset=hopper_npz, out=str(out), steps=steps, checkpoint_every=2, hidden=(16,),
                              batch_size=32, progress=False, threads=1)

    def write(path: Path, step: int) -> None:  # a real IDM checkpoint of `step`, moved to `path`
        work = tmp_path / f"work{step}"
        train_idm(cfg(work, 2 * step))
        (work / CKPT_DIR).rename(path)

    out = tmp_path / "run"
    out.mkdir()
    _crash_state(out, CKPT_DIR, point, write)
    resumed_steps.clear()
    train_idm(cfg(out, 6))
    assert resumed_steps == ([] if KILL_POINTS[point] is None else [2 * KILL_POINTS[point]])
    assert _leftovers(out) == []
    assert json.loads((out / CKPT_DIR / "meta.json").read_text())["step"] == 6


def test_world_model_and_agent_resume_after_a_kill_between_the_renames(hopper_npz, tmp_path, resumed_steps):
    from dawm_env.agents.train import CKPT_DIR as AGENT_CKPT, TrainAgentConfig, load_agent, train_agent
    from dawm_env.training.world_model import CKPT_DIR as WM_CKPT, WorldModelTrainConfig, train_world_model

    wm = dict(dataset=hopper_npz, preset="cpu", batch_size=8, checkpoint_every=2, progress=False, threads=1)
    out = tmp_path / "wm"
    train_world_model(WorldModelTrainConfig(out=str(out), steps=2, **wm))
    shutil.copytree(out / WM_CKPT, tmp_path / "wm_old")
    train_world_model(WorldModelTrainConfig(out=str(out), steps=4, **wm))
    _as_leftover(out / WM_CKPT, out / WM_CKPT, "tmp")
    _as_leftover(tmp_path / "wm_old", out / WM_CKPT, "old")
    resumed_steps.clear()
    train_world_model(WorldModelTrainConfig(out=str(out), steps=4, **wm))
    assert resumed_steps == [4] and _leftovers(out) == []

    agent = dict(algo="td3bc", dataset=hopper_npz, seeds=1, batch_size=16, eval_every=2, eval_episodes=1,
                 progress=False, threads=1, algo_overrides={"hidden": [16, 16]})
    run = tmp_path / "agent"
    train_agent(TrainAgentConfig(out=str(run), steps=2, **agent))
    shutil.copytree(run / AGENT_CKPT, tmp_path / "agent_old")
    train_agent(TrainAgentConfig(out=str(run), steps=4, **agent))
    _as_leftover(run / AGENT_CKPT, run / AGENT_CKPT, "tmp")
    _as_leftover(tmp_path / "agent_old", run / AGENT_CKPT, "old")
    # `dawm evaluate` reads the newest complete copy where it lies and leaves the run's folder to its trainer
    _, meta = load_agent(run)
    assert meta["step"] == 4 and len(_leftovers(run)) == 2
    resumed_steps.clear()
    train_agent(TrainAgentConfig(out=str(run), steps=6, **agent))
    assert resumed_steps[0] == 4 and _leftovers(run) == []
    assert json.loads((run / AGENT_CKPT / "meta.json").read_text())["step"] == 6


def test_behavior_sac_resumes_after_a_kill_between_the_renames(monkeypatch, tmp_path, caplog):
    from dawm_env.data import behavior_sac

    cfg = behavior_sac.BehaviorSACConfig(task="hopper", max_steps=120, learning_starts=50, eval_every=100,
                                         eval_episodes=1, checkpoint_every_s=0.0)
    real_eval = interrupt_behavior_run_at_first_eval(monkeypatch, cfg)
    run_dir = behavior_sac.run_dir_for(cfg)
    ckpt = run_dir / "checkpoint"
    saved_at = json.loads((ckpt / "meta.json").read_text())["num_timesteps"]
    assert 0 < saved_at <= 100 and (ckpt / MANIFEST_FILE).is_file()
    # killed between the renames: the new copy staged and sealed, the previous one (here: an older dawm's
    # fixed-name copy, cut short) aside, no live checkpoint
    _as_leftover(ckpt, ckpt, "tmp")
    (run_dir / "checkpoint.old").mkdir()
    (run_dir / "checkpoint.old" / "meta.json").write_text("{")
    monkeypatch.setattr(behavior_sac, "evaluate_returns", real_eval)
    torch.set_num_threads(2)
    try:
        with caplog.at_level("INFO", logger="dawm_env.data.behavior_sac"):
            behavior_sac.run_behavior_sac(cfg, progress=False)
        assert torch.get_num_threads() == 2  # the run's own thread count (1) did not leak into the caller
    finally:
        torch.set_num_threads(1)
    assert f"resumed behaviour run at step {saved_at}" in caplog.text
    assert json.loads((run_dir / "run.json").read_text())["steps"] == 120
    assert not ckpt.exists() and _leftovers(run_dir) == []


# --- 2. plain D4RL files in `dawm train agent` and in experiments ------------------------------------------
def _write_d4rl_hdf5(data, path: Path, reward_scale: float = 1.0) -> Path:
    """``data`` in the layout of a D4RL hdf5 file (no next_observations, no task recorded)."""
    import h5py

    with h5py.File(path, "w") as f:
        f["observations"] = data.observations
        f["actions"] = data.actions
        f["rewards"] = data.rewards * reward_scale
        f["terminals"] = data.terminations
        f["timeouts"] = data.truncations
    return path


def _write_plain_npz(data, path: Path) -> Path:
    """``data`` as a qlearning_dataset npz that does not record its task."""
    np.savez(path, observations=data.observations, actions=data.actions, rewards=data.rewards,
             next_observations=data.next_observations, terminals=data.terminations, timeouts=data.truncations)
    return path


AGENT_ARGS = ["train", "agent", "--algo", "td3bc", "--steps", "2", "--seeds", "1", "--eval-every", "2",
              "--eval-episodes", "1", "--no-progress", "--threads", "1"]


def test_train_agent_on_d4rl_files_needs_task_only_when_they_do_not_record_it(hopper_random, halfcheetah_random,
                                                                               tmp_path):
    h5 = _write_d4rl_hdf5(hopper_random, tmp_path / "hopper_medium-v2.hdf5")
    plain = _write_plain_npz(hopper_random, tmp_path / "plain.npz")
    recorded = tmp_path / "recorded.npz"
    save_npz(hopper_random, recorded)  # records its task
    for source in (h5, plain):
        res = runner.invoke(app, AGENT_ARGS + ["--dataset", str(source), "--out", str(tmp_path / "x")])
        assert res.exit_code == 2 and "does not record its task; pass --task" in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
        out = tmp_path / f"run-{source.suffix[1:]}"
        res = runner.invoke(app, AGENT_ARGS + ["--dataset", str(source), "--task", "hopper", "--out", str(out)])
        assert res.exit_code == 0, res.output
        results = json.loads((out / "results.json").read_text())
        assert results["task"] == "hopper" and results["dataset"] == str(source)
    res = runner.invoke(app, AGENT_ARGS + ["--dataset", str(recorded), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    cheetah = tmp_path / "cheetah.npz"
    save_npz(halfcheetah_random, cheetah)
    for args, needle in ((["--dataset", str(cheetah), "--task", "walker2d"], "records task halfcheetah, not walker2d"),
                         (["--dataset", str(recorded), "--task", "walker2d"], "pass the right --task"),
                         (["--dataset", str(h5), "--task", "halfcheetah"], "pass the right --task"),
                         (["--dataset", str(h5), "--task", "ant"], "unknown task 'ant'"),
                         (["--dataset", str(h5), "--task", "hopper", "--level", "meh"], "unknown level 'meh'")):
        res = runner.invoke(app, AGENT_ARGS + args + ["--out", str(tmp_path / "bad")])
        assert res.exit_code == 2 and needle in res.output, res.output
        assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1
    # the same for the world model and the IDM
    res = runner.invoke(app, ["train", "idm", "--dataset", str(h5), "--out", str(tmp_path / "idm"), "--steps", "2",
                              "--hidden", "16", "--batch-size", "16", "--no-progress"])
    assert res.exit_code == 2 and "pass --task" in res.output
    res = runner.invoke(app, ["train", "idm", "--dataset", str(h5), "--task", "hopper", "--out",
                              str(tmp_path / "idm"), "--steps", "2", "--hidden", "16", "--batch-size", "16",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "idm" / "idm.json").read_text())["task"] == "hopper"


def test_experiment_real_data_from_a_d4rl_file(hopper_random, halfcheetah_random, tmp_path):
    from dawm_env.experiments.presets import SMOKE
    from dawm_env.experiments.registry import get_experiment
    from dawm_env.experiments.runner import ExperimentConfig, Workspace, run_experiment

    h5 = _write_d4rl_hdf5(hopper_random, tmp_path / "hopper.hdf5")
    preset = replace(SMOKE, tasks=("hopper",), levels=("random",), seeds=1, agent_steps=2, eval_every=2)
    cfg = ExperimentConfig(name="table4", preset=preset, out=str(tmp_path / "exp"), progress=False,
                           datasets={"hopper/random": str(h5)}, max_cells=1)
    results = run_experiment(cfg, echo=lambda _: None)
    done = [r for r in results["cells"] if r["status"] == "done"]
    assert len(done) == 1 and done[0]["cell"]["algo"] == "td3bc" and done[0]["real_dataset"] == str(h5)
    run = json.loads((Path(done[0]["run_dir"]) / "results.json").read_text())
    assert run["task"] == "hopper"
    # a file changed in place is other data: its cells are no longer finished
    cell = next(c for c in get_experiment("table4").cells(preset, ("hopper",), ("random",))
                if c.algo == "td3bc" and not c.generated)
    assert Workspace(cfg, echo=lambda _: None).cell_key(cell) == done[0]["key"]
    _write_d4rl_hdf5(hopper_random, h5, reward_scale=2.0)
    assert Workspace(cfg, echo=lambda _: None).cell_key(cell) != done[0]["key"]

    # the CLI: one line for a missing file and for another task's file
    base = ["experiment", "table4", "--preset", "smoke", "--levels", "random", "--out", str(tmp_path / "exp2"),
            "--no-progress", "--max-cells", "1", "--seeds", "1", "--steps", "2"]
    res = runner.invoke(app, base + ["--dataset", f"hopper/random={tmp_path / 'missing.hdf5'}"])
    assert res.exit_code == 2 and "no such file" in res.output, res.output
    cheetah = _write_d4rl_hdf5(halfcheetah_random, tmp_path / "cheetah.hdf5")
    res = runner.invoke(app, base + ["--dataset", f"hopper/random={cheetah}"])
    assert res.exit_code == 2 and "are not hopper's 11 / 3" in res.output, res.output
    recorded = tmp_path / "cheetah.npz"
    save_npz(halfcheetah_random, recorded)
    res = runner.invoke(app, base + ["--dataset", f"hopper/random={recorded}"])
    assert res.exit_code == 2 and "holds halfcheetah data" in res.output, res.output


# --- 3. the default thread count ---------------------------------------------------------------------------
def test_threads_default_comes_from_dawm_threads_and_never_overrides_the_caller(monkeypatch, hopper_npz, tmp_path):
    from dawm_env.runtime import THREADS_ENV, cli_threads, setup_torch

    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert cli_threads(None) is None and cli_threads(3) == 3
    monkeypatch.setenv(THREADS_ENV, "2")
    assert cli_threads(None) == 2 and cli_threads(1) == 1  # --threads beats the variable
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(ValueError, match=f"{THREADS_ENV}='{bad}' is not a thread count"):
            cli_threads(None)
    monkeypatch.delenv(THREADS_ENV)

    # the Python API: threads=None leaves the caller's own setting alone, even with the variable set
    monkeypatch.setenv(THREADS_ENV, "1")
    torch.set_num_threads(2)
    try:
        setup_torch("cpu", None)
        assert torch.get_num_threads() == 2
        from dawm_env.training.idm import IDMTrainConfig, train_idm

        train_idm(IDMTrainConfig(dataset=hopper_npz, out=str(tmp_path / "idm"), steps=1, hidden=(8,), batch_size=8,
                                 progress=False))
        assert torch.get_num_threads() == 2
        setup_torch("cpu", 1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)

    # the CLI: --threads, else $DAWM_THREADS, reach the run; a bad variable is one line
    import dawm_env.training.idm as idm_mod

    seen: list = []
    monkeypatch.setattr(idm_mod, "train_idm", lambda cfg: seen.append(cfg.threads) or tmp_path)
    args = ["train", "idm", "--dataset", hopper_npz, "--out", str(tmp_path / "o"), "--no-progress"]
    monkeypatch.setenv(THREADS_ENV, "2")
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, args + ["--threads", "1"]).exit_code == 0
    monkeypatch.delenv(THREADS_ENV)
    assert runner.invoke(app, args).exit_code == 0
    assert seen == [2, 1, None]
    monkeypatch.setenv(THREADS_ENV, "lots")
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and res.output.startswith(f"error: {THREADS_ENV}='lots'"), res.output


# --- 4. a behaviour SAC run reused under a smaller cap -------------------------------------------------------
def _fake_finished_run(folder: Path, cfg, reached, steps: int, data) -> Path:
    folder.mkdir(parents=True)
    save_npz(data, folder / "replay.npz")
    (folder / "policy.json").write_text("{}")
    (folder / "run.json").write_text(json.dumps({"config": asdict(cfg), "steps": steps, "reached_target_at": reached,
                                                 "eval_history": [], "replay_transitions": data.num_transitions}))
    return folder


def test_a_run_that_reached_its_target_serves_every_cap_above_that_step(monkeypatch, hopper_random):
    from dawm_env.data import behavior_sac
    from dawm_env.data.build import BuildConfig, collect_level

    def no_training(*args, **kwargs):
        raise AssertionError("trained instead of reusing")

    monkeypatch.setattr(behavior_sac, "_train_behavior_sac", no_training)
    default = behavior_sac.BehaviorSACConfig(task="hopper")
    base = _fake_finished_run(behavior_sac.run_dir_for(default), default, 300_000, 300_000, hopper_random)

    capped = behavior_sac.BehaviorSACConfig(task="hopper", max_steps=500_000)
    assert behavior_sac.run_behavior_sac(capped, progress=False) == base
    assert not behavior_sac.run_dir_for(capped).exists()  # nothing trained or created for it
    # the builder's medium-replay with a 500k cap gets the default run's replay buffer
    data, info = collect_level(BuildConfig("hopper", "medium-replay", steps=500_000), progress=False)
    assert data.num_transitions == hopper_random.num_transitions and info["behavior_run"]["steps"] == 300_000

    exact = behavior_sac.BehaviorSACConfig(task="hopper", max_steps=300_000)
    assert behavior_sac.equivalent_finished_run(exact) == base
    for cfg in (behavior_sac.BehaviorSACConfig(task="hopper", max_steps=299_999),  # below the reached step
                behavior_sac.BehaviorSACConfig(task="hopper", max_steps=500_000, learning_starts=5000),
                behavior_sac.BehaviorSACConfig(task="hopper", seed=1, max_steps=500_000)):
        assert behavior_sac.equivalent_finished_run(cfg) is None
        with pytest.raises(AssertionError, match="trained instead of reusing"):
            behavior_sac.run_behavior_sac(cfg, progress=False)

    # a run that stopped at its cap without reaching the target is the result of that cap only
    shutil.rmtree(base)
    small = behavior_sac.BehaviorSACConfig(task="hopper", max_steps=200_000)
    _fake_finished_run(behavior_sac.run_dir_for(small), small, None, 200_000, hopper_random)
    assert behavior_sac.equivalent_finished_run(capped) is None
    # and one that reached it under a smaller cap serves the default request too
    shutil.rmtree(behavior_sac.run_dir_for(small))
    reached = _fake_finished_run(behavior_sac.run_dir_for(capped), capped, 250_000, 250_000, hopper_random)
    assert behavior_sac.run_behavior_sac(default, progress=False) == reached


def test_tensor_files_get_the_mode_open_would_give(tmp_path):
    """safetensors itself writes 0600; bundles and checkpoints must be readable as the umask allows."""
    import os

    from dawm_env.paths import current_umask

    path = tmp_path / "t.safetensors"
    ckpt_mod.save_tensors(path, {"a": torch.zeros(2)})
    assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    os.umask(0o077)
    try:
        ckpt_mod.save_tensors(tmp_path / "private.safetensors", {"a": torch.zeros(2)})
        assert (tmp_path / "private.safetensors").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(0o022)
