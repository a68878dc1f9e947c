"""The dataset builder and the ``dawm data`` CLI on tiny budgets."""

from __future__ import annotations

import json

import minari
import numpy as np
import pytest
from conftest import interrupt_behavior_run_at_first_eval
from typer.testing import CliRunner

from dawm_env.cli import app
from dawm_env.data import minari_io
from dawm_env.data.build import BuildConfig, build_dataset, default_dataset_id
from dawm_env.data.loading import load_dataset
from dawm_env.data.minari_io import read_provenance
from dawm_env.paths import behavior_run_dir, minari_root
from dawm_env.tasks import get_task

runner = CliRunner()


def test_cli_build_and_info_random():
    res = runner.invoke(app, ["data", "build", "--task", "hopper", "--level", "random", "--steps", "600",
                              "--num-envs", "4", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == "dawm-d4rl/hopper/random-v0"
    ds = minari.load_dataset("dawm-d4rl/hopper/random-v0")
    assert ds.total_steps == 600
    assert ds.storage.metadata["ref_max_score"] == pytest.approx(3234.3)
    prov = read_provenance("dawm-d4rl/hopper/random-v0")
    assert prov["config"]["level"] == "random" and prov["transitions"] == 600
    info = runner.invoke(app, ["data", "info", "dawm-d4rl/hopper/random-v0", "--json"])
    assert info.exit_code == 0, info.output
    summary = json.loads(info.output)
    data = load_dataset("dawm-d4rl/hopper/random-v0")
    returns = data.episode_returns()
    assert summary["episodes"] == data.num_episodes
    assert summary["return_max"] == pytest.approx(returns.max(), rel=1e-5)
    assert summary["normalized_score_mean"] == pytest.approx(
        np.mean(100 * minari.get_normalized_score(ds, returns)), rel=1e-4)
    # seeds are per episode and distinct
    assert len(set(data.seeds.tolist())) == data.num_episodes


def test_build_is_deterministic():
    a = build_dataset(BuildConfig("hopper", "random", steps=300, num_envs=3, dataset_id="test/rand-a-v0"), progress=False)
    b = build_dataset(BuildConfig("hopper", "random", steps=300, num_envs=3, dataset_id="test/rand-b-v0"), progress=False)
    da, db = load_dataset(a), load_dataset(b)
    np.testing.assert_array_equal(da.observations, db.observations)
    np.testing.assert_array_equal(da.actions, db.actions)


def test_policy_level_with_explicit_zip_and_medium_expert(tmp_path):
    from dawm_env.data.policies import default_policy_path
    from dawm_env.tasks import get_task

    path = default_policy_path(get_task("hopper"), "medium")
    dataset_id = build_dataset(BuildConfig("hopper", "medium", policy=str(path), steps=200, num_envs=4),
                               progress=False)
    assert load_dataset(dataset_id).num_transitions == 200
    me = build_dataset(BuildConfig("hopper", "medium-expert", steps=150, num_envs=4), progress=False)
    data = load_dataset(me)
    assert data.num_transitions == 300
    prov = read_provenance(me)
    # the shipped dawm-format defaults, recorded with the sha256 of their weights
    assert prov["medium_policy"]["path"].endswith("hopper-sac.json")
    assert prov["expert_policy"]["path"].endswith("hopper-tqc.json")
    assert prov["medium_policy"]["algorithm"] == "SAC" and prov["expert_policy"]["algorithm"] == "TQC"
    assert len(prov["medium_policy"]["weights_sha256"]) == 64


def test_interrupted_build_registers_nothing(monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    # interrupt inside Minari's writer, after the staging folder exists
    monkeypatch.setattr(minari_io, "minari_root_at", _exploding_override(boom))
    with pytest.raises(KeyboardInterrupt):
        build_dataset(BuildConfig("hopper", "random", steps=100, num_envs=2), progress=False)
    assert "dawm-d4rl/hopper/random-v0" not in minari.list_local_datasets()
    assert not (minari_root() / "dawm-d4rl" / "hopper" / "random-v0").exists()
    assert not any(p.name.endswith("dawm-staging") for p in minari_root().parent.iterdir())


def _exploding_override(boom):
    import contextlib

    @contextlib.contextmanager
    def override(root):
        root.mkdir(parents=True)
        (root / "half-written").write_text("x")
        boom()
        yield

    return override


def _pickle_like_files(folder):
    return sorted(str(p) for p in folder.rglob("*") if p.suffix in (".pkl", ".pickle", ".zip", ".pt", ".pth"))


def test_medium_replay_from_behavior_run_and_resume(monkeypatch, tmp_path):
    """A tiny behaviour SAC run: interrupted at its first evaluation, then resumed to the end.

    Checkpoints and outputs are safetensors + JSON (+ npz) only, and the resumed run ends exactly where an
    uninterrupted run does.
    """
    from safetensors.numpy import load_file

    from dawm_env.data import behavior_sac
    from dawm_env.data.policies import load_policy

    cfg = behavior_sac.BehaviorSACConfig(task="hopper", max_steps=500, learning_starts=300, eval_every=400,
                                         eval_episodes=1, checkpoint_every_s=0.0)
    real_eval = interrupt_behavior_run_at_first_eval(monkeypatch, cfg)
    run_dir = behavior_sac.run_dir_for(cfg)
    assert run_dir != behavior_run_dir("hopper", 0)  # other settings than the default run: a folder of its own
    assert (run_dir / "checkpoint" / "meta.json").is_file() and not (run_dir / "run.json").exists()
    assert {"policy.safetensors", "replay.safetensors", "optim_actor.safetensors", "optim_critic.safetensors",
            "optim_ent_coef.safetensors", "misc.safetensors", "episodes.npz"} <= \
        {p.name for p in (run_dir / "checkpoint").iterdir()}
    assert _pickle_like_files(run_dir) == []
    monkeypatch.setattr(behavior_sac, "evaluate_returns", real_eval)
    behavior_sac.run_behavior_sac(cfg, progress=False)
    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["steps"] == 500 and summary["reached_target_at"] is None
    assert _pickle_like_files(run_dir) == [] and not (run_dir / "checkpoint").exists()
    medium = load_policy(run_dir / "policy.json", get_task("hopper"))  # the dawm policy format, loaded safely
    assert medium.algorithm == "SAC" and medium.kind == "squashed_gaussian"
    # restored weights, optimisers, replay buffer, counters and RNG states: identical to an uninterrupted run
    monkeypatch.setenv("DAWM_HOME", str(tmp_path / "uninterrupted"))
    plain_dir = behavior_sac.run_behavior_sac(cfg, progress=False)
    a, b = load_file(str(run_dir / "policy.safetensors")), load_file(str(plain_dir / "policy.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    monkeypatch.setenv("DAWM_HOME", str(run_dir.parent.parent))
    # a run is reused only under the settings it was made with: the builder's medium-replay run (cap 500, the
    # default warm-up) is a run of its own, and the finished one above is left as it was
    stamp = (run_dir / "run.json").stat().st_mtime_ns
    dataset_id = build_dataset(BuildConfig("hopper", "medium-replay", steps=500), progress=False)
    builder_run = behavior_sac.run_dir_for(behavior_sac.BehaviorSACConfig(task="hopper", max_steps=500))
    assert builder_run not in (run_dir, behavior_run_dir("hopper", 0)) and (builder_run / "run.json").is_file()
    assert (run_dir / "run.json").stat().st_mtime_ns == stamp
    data = load_dataset(dataset_id)
    assert data.num_transitions == json.loads((builder_run / "run.json").read_text())["replay_transitions"]
    # a finished run whose recorded settings differ (a copied or stale folder) is refused, not reused
    summary["config"]["max_steps"] = 1000
    (run_dir / "run.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="other settings.*max_steps=1000"):
        behavior_sac.run_behavior_sac(cfg, progress=False)
    # every recorded episode carries its own seed; the resumed run continues the seed sequence
    np.testing.assert_array_equal(np.sort(data.seeds), np.arange(data.num_episodes))


@pytest.mark.parametrize("args, message", [
    (["--task", "hopper", "--level", "medium-ish"], "unknown level"),
    (["--task", "ant", "--level", "medium"], "unknown task"),
    (["--task", "hopper", "--level", "random", "--id", "no version"], "invalid Minari dataset id"),
    (["--task", "hopper", "--level", "random", "--steps", "0"], "must be positive"),
    (["--task", "hopper", "--level", "medium-replay", "--policy", "x.zip"], "does not apply"),
    (["--task", "hopper", "--level", "expert", "--policy", "/nonexistent.zip"], "does not exist"),
])
def test_cli_bad_input(args, message):
    res = runner.invoke(app, ["data", "build", *args, "--no-progress"])
    assert res.exit_code == 2
    assert message in res.output


def test_existing_dataset_is_not_overwritten_silently():
    build_dataset(BuildConfig("hopper", "random", steps=50, num_envs=2), progress=False)
    # the same command again is a no-op; another configuration under the same id is refused
    assert build_dataset(BuildConfig("hopper", "random", steps=50, num_envs=2), progress=False) == \
        default_dataset_id("hopper", "random")
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_dataset(BuildConfig("hopper", "random", steps=55, num_envs=2), progress=False)
    build_dataset(BuildConfig("hopper", "random", steps=60, num_envs=2, overwrite=True), progress=False)
    assert load_dataset(default_dataset_id("hopper", "random")).num_transitions == 60


def test_info_on_missing_dataset_errors():
    res = runner.invoke(app, ["data", "info", "dawm-d4rl/walker2d/expert-v0"])
    assert res.exit_code == 2 and "dawm data build" in res.output


def test_medium_expert_reuses_built_halves_identically():
    fresh = build_dataset(BuildConfig("hopper", "medium-expert", steps=80, num_envs=2, dataset_id="test/me-fresh-v0"),
                          progress=False)
    for level in ("medium", "expert"):
        build_dataset(BuildConfig("hopper", level, steps=80, num_envs=2), progress=False)
    reused = build_dataset(BuildConfig("hopper", "medium-expert", steps=80, num_envs=2), progress=False)
    prov = read_provenance(reused)
    assert prov["medium_reused_from"] == "dawm-d4rl/hopper/medium-v0"
    assert prov["expert_reused_from"] == "dawm-d4rl/hopper/expert-v0"
    a, b = load_dataset(fresh), load_dataset(reused)
    np.testing.assert_array_equal(a.observations, b.observations)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.episode_offsets, b.episode_offsets)
