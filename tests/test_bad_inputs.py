"""Failures that lose work, lie or crash: every bad input fails at once, with one clear line, before any work.

One test (or a few) per class of failure:

1. outputs (dataset ids, Minari roots, ``--out`` folders) are checked before building / generating / training;
2. degenerate training arguments are refused by the configs themselves (CLI and Python API);
3. raw or misleading errors: broken bundles, a NaN ``--rtg``, ``--device cuda`` without CUDA, and a sweep
   of other bad inputs across the CLI;
4. loads that would be silently wrong: an edited bundle config, rewards of the wrong shape.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, cli

from dawm_env.checkpoint import CheckpointError, load_tensors, save_tensors
from dawm_env.data.loading import load_dataset, save_npz
from dawm_env.data.minari_io import check_dataset_output, validate_dataset_id
from dawm_env.paths import check_writable_dir
from dawm_env.world_model.bundle import CONFIG_METADATA_KEY, SHIPPED_DIR, Bundle, scan_bundles


@pytest.fixture
def no_work(monkeypatch) -> None:
    """Make every expensive stage fail loudly: a test using this proves its error came before any work."""
    import dawm_env.agents.train
    import dawm_env.data.build
    import dawm_env.experiments.runner
    import dawm_env.training.idm
    import dawm_env.training.world_model

    def started(*args, **kwargs):
        raise AssertionError("work started before the input was checked")

    for module, name in ((dawm_env.data.build, "collect_level"), (dawm_env.training.world_model, "load_dataset"),
                         (dawm_env.training.idm, "load_dataset"), (dawm_env.agents.train, "load_dataset"),
                         (dawm_env.experiments.runner, "build_dataset")):
        monkeypatch.setattr(module, name, started)
    monkeypatch.setattr(Bundle, "load", started)


# --- 1. outputs checked before the work ----------------------------------------------------------------
@pytest.mark.parametrize("bad, needle", [
    ("a/b/c/d-v0", "namespace 'a'"), ("hopper-medium", "needs a version suffix"), ("", "empty"), ("  ", "empty"),
    ("t/x-v0", "at least 2 characters"), ("has space/x-v0", "invalid Minari dataset id"),
])
def test_invalid_dataset_ids_are_refused_by_the_one_check(bad, needle):
    with pytest.raises(ValueError, match=needle):
        validate_dataset_id(bad)


def test_good_dataset_ids_pass():
    for good in ("dawm-d4rl/hopper/medium-v0", "hopper-medium-v0", "ab/c/d-v3"):
        validate_dataset_id(good)


def test_check_writable_dir_creates_nothing_and_names_the_blocker(tmp_path):
    assert check_writable_dir(tmp_path, "--out") == tmp_path
    missing = tmp_path / "a" / "b"
    assert check_writable_dir(missing, "--out") == missing and not (tmp_path / "a").exists()
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="file exists and is not a folder; choose a writable folder for --out"):
        check_writable_dir(tmp_path / "file" / "out", "--out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="is not writable"):
            check_writable_dir(ro / "out", "--out")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("dataset_id, needle", [
    ("", "empty"), ("  ", "empty"), ("a/b/c/d-v0", "namespace 'a'"), ("hopper-medium", "version suffix"),
])
def test_data_build_refuses_bad_ids_before_rolling_out(no_work, dataset_id, needle):
    res = cli("data", "build", "--task", "hopper", "--level", "random", "--steps", 20, "--id", dataset_id,
               "--no-progress")
    assert_one_line_error(res, needle)
    assert not (Path(os.environ["MINARI_DATASETS_PATH"]) / "dawm-d4rl").exists()  # no canonical id instead


def test_unwritable_minari_root_fails_before_building_or_generating(no_work, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "file" / "minari"))
    with pytest.raises(ValueError, match="MINARI_DATASETS_PATH"):
        check_dataset_output("test/hopper/x-v0")
    res = cli("data", "build", "--task", "hopper", "--level", "random", "--steps", 20, "--no-progress")
    assert_one_line_error(res, "Minari root", "set MINARI_DATASETS_PATH to a writable folder")
    res = cli("generate", "--bundle", "hopper-medium", "--seed-dataset", "unused.npz", "--out", "test/hopper/g-v0",
               "--no-progress")
    assert_one_line_error(res, "Minari root")
    res = cli("generate", "--bundle", "hopper-medium", "--seed-dataset", "unused.npz", "--out", "", "--no-progress")
    assert_one_line_error(res, "empty")


@pytest.mark.parametrize("command", [
    ["train", "world-model", "--dataset", "unused.npz", "--steps", 2],
    ["train", "idm", "--dataset", "unused.npz", "--steps", 2],
    ["train", "agent", "--algo", "td3bc", "--dataset", "unused.npz", "--steps", 2],
    ["demo"],
    ["experiment", "table2", "--preset", "smoke"],
])
def test_unwritable_out_fails_before_any_work(no_work, tmp_path, command):
    (tmp_path / "file").write_text("x")
    res = cli(*command, "--out", tmp_path / "file" / "out", "--no-progress")
    assert_one_line_error(res, "cannot write --out", "is not a folder")


# --- 2. degenerate training arguments --------------------------------------------------------------------
@pytest.mark.parametrize("command, needle", [
    (["world-model", "--steps", 0], "--steps must be >= 1, got 0"),
    (["world-model", "--steps", -5], "--steps must be >= 1, got -5"),
    (["world-model", "--batch-size", 0], "--batch-size must be >= 1"),
    (["world-model", "--checkpoint-every", 0], "--checkpoint-every must be >= 1"),
    (["world-model", "--eval-every", -1], "--eval-every must be >= 1"),
    (["world-model", "--threads", 0], "--threads must be >= 1"),
    (["idm", "--steps", 0], "--steps must be >= 1"),
    (["idm", "--batch-size", 0], "--batch-size must be >= 1"),
    (["idm", "--hidden", "0"], "--hidden needs one or more sizes >= 1"),
    (["idm", "--hidden", "16,-1"], "--hidden needs one or more sizes >= 1"),
    (["idm", "--hidden", "16,abc"], "--hidden expects comma-separated layer sizes"),
])
def test_degenerate_training_arguments_fail_and_write_nothing(no_work, tmp_path, command, needle):
    out = tmp_path / "out"
    res = cli("train", command[0], "--dataset", "unused.npz", "--out", out, *command[1:], "--no-progress")
    assert_one_line_error(res, needle)
    assert not out.exists()


def test_degenerate_sizes_are_refused_by_the_python_api():
    from dawm_env.training.common import ModelRunConfig
    from dawm_env.training.idm import IDMTrainConfig
    from dawm_env.training.world_model import WorldModelTrainConfig
    from dawm_env.world_model.config import WorldModelConfig
    from dawm_env.world_model.idm import IDMConfig

    for bad in (dict(steps=0), dict(batch_size=-1), dict(checkpoint_every=0), dict(threads=0)):
        with pytest.raises(ValueError, match="must be >= 1"):
            ModelRunConfig(dataset="d.npz", out="o", **bad)
    with pytest.raises(ValueError, match="unknown WorldModelConfig preset"):
        WorldModelTrainConfig(dataset="d.npz", out="o", preset="gpu")
    with pytest.raises(ValueError, match="--hidden"):
        IDMTrainConfig(dataset="d.npz", out="o", hidden=())
    for bad in (dict(dim=0), dict(train_steps=0), dict(batch_size=0), dict(n_diffusion_steps=0, n_sampling_steps=0),
                dict(dim_mults=()), dict(dim_mults=(1, 0)), dict(lr=0.0)):
        with pytest.raises(ValueError):
            WorldModelConfig(**bad)
    for bad in (dict(hidden=(0,)), dict(hidden=()), dict(hidden=(16, -1)), dict(batch_size=0), dict(train_steps=0),
                dict(eval_every=0), dict(lr=-1.0)):
        with pytest.raises(ValueError):
            IDMConfig(**bad)
    WorldModelConfig.preset("cpu")  # the presets themselves stay valid
    IDMConfig()


# --- 3. raw or misleading errors ---------------------------------------------------------------------------
def _bundle_home() -> Path:
    root = Path(os.environ["DAWM_HOME"]) / "bundles"
    root.mkdir(parents=True, exist_ok=True)
    return root


def test_broken_bundles_are_named_and_listed_not_crashed():
    root = _bundle_home()
    meta = json.loads((SHIPPED_DIR / "hopper-medium" / "bundle.json").read_text())
    for name, content in (("good", meta), ("no-task", {k: v for k, v in meta.items() if k != "task"}),
                          ("no-norm", {k: v for k, v in meta.items() if k != "norm_stats"})):
        (root / name).mkdir()
        (root / name / "bundle.json").write_text(json.dumps(content))
    (root / "bad-json").mkdir()
    (root / "bad-json" / "bundle.json").write_text("{oops")
    (root / "half").mkdir()
    (root / "half" / "world_model.json").write_text("{}")

    with pytest.raises(CheckpointError, match=r"no-task/bundle\.json lacks the key\(s\) \['task'\]"):
        Bundle.load(root / "no-task")
    with pytest.raises(CheckpointError, match="norm_stats"):
        Bundle.load("no-norm")
    res = cli("bundle", "info", "no-task")
    assert_one_line_error(res, "bundle.json", "'task'")

    status = {path.name: problem for path, _, problem in scan_bundles()}
    assert status["good"] is None and status["hopper-medium"] is None
    assert "'task'" in status["no-task"] and "not valid JSON" in status["bad-json"]
    assert "no bundle.json" in status["half"]
    listing = cli("bundle", "list")
    assert listing.exit_code == 0, listing.output
    lines = {line.split()[0]: line for line in listing.output.splitlines() if line.strip()}
    assert "BROKEN" in lines["no-task"] and "BROKEN" in lines["bad-json"] and "BROKEN" in lines["half"]
    assert "BROKEN" not in lines["good"] and "BROKEN" not in lines["hopper-medium"]


def test_assemble_bundle_names_a_missing_component_key(tmp_path):
    from dawm_env.world_model.assemble import assemble_bundle

    (tmp_path / "world_model.json").write_text(json.dumps({"task": "hopper"}))
    (tmp_path / "idm.json").write_text(json.dumps({"task": "hopper"}))
    with pytest.raises(CheckpointError, match=r"world_model\.json lacks the key\(s\) \['dataset'"):
        assemble_bundle(tmp_path)


def test_non_finite_rtg_is_refused_up_front(no_work):
    from dawm_env.agents.train import TrainAgentConfig
    from dawm_env.envs.dream import DreamConfig
    from dawm_env.experiments.presets import SMOKE
    from dawm_env.experiments.runner import ExperimentConfig
    from dawm_env.generation.rollouts import RolloutConfig

    for flag, value in (("--rtg", "nan"), ("--rtg", "inf"), ("--guidance", "nan")):
        res = cli("generate", "--bundle", "hopper-medium", "--seed-dataset", "unused.npz",
                   "--out", "test/hopper/g-v0", flag, value, "--no-progress")
        line = assert_one_line_error(res, f"{flag} must be a finite number")
        assert "bundle" not in line.replace("the bundle's", "")  # not blamed on the bundle
    with pytest.raises(ValueError, match="--rtg must be a finite number"):
        RolloutConfig(rtg=float("nan"))
    RolloutConfig(rtg=np.float32(0.8))  # numpy scalars are numbers too
    with pytest.raises(ValueError, match="online_rtg must be a finite number"):
        TrainAgentConfig(algo="td3bc", dataset="d.npz", out="o", online_rtg=float("nan"))
    with pytest.raises(ValueError, match="preset rtg must be a finite number"):
        ExperimentConfig(name="table2", preset=replace(SMOKE, rtg=float("inf")))
    with pytest.raises(ValueError, match="rtg_target must be a finite number"):
        DreamConfig(rtg_target=float("nan"))


@pytest.mark.parametrize("command", [
    ["demo", "--out", "{tmp}/demo"],
    ["generate", "--bundle", "hopper-medium", "--seed-dataset", "unused.npz", "--out", "test/hopper/g-v0"],
    ["experiment", "table2", "--preset", "smoke", "--out", "{tmp}/exp"],
    ["evaluate", "{tmp}/run"],
    ["train", "agent", "--algo", "td3bc", "--dataset", "unused.npz", "--out", "{tmp}/agent"],
    ["train", "world-model", "--dataset", "unused.npz", "--out", "{tmp}/wm"],
    ["train", "idm", "--dataset", "unused.npz", "--out", "{tmp}/idm"],
])
def test_device_cuda_without_cuda_is_one_line(no_work, monkeypatch, tmp_path, command):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in command]
    no_progress = [] if args[0] == "evaluate" else ["--no-progress"]
    res = cli(*args, "--device", "cuda", *no_progress)
    assert_one_line_error(res, "CUDA is not available", "use --device cpu")
    res = cli(*args, "--device", "tpu", *no_progress)
    assert_one_line_error(res, "is not a torch device")


@pytest.fixture
def bad_files(tmp_path, hopper_random, halfcheetah_random) -> dict[str, str]:
    """Inputs that are wrong in assorted ways."""
    files = {"tmp": str(tmp_path)}
    save_npz(hopper_random, tmp_path / "hopper.npz")
    save_npz(halfcheetah_random, tmp_path / "halfcheetah.npz")
    files.update(hopper=str(tmp_path / "hopper.npz"), halfcheetah=str(tmp_path / "halfcheetah.npz"))
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "hopper.npz").read_bytes()[:1000])
    (tmp_path / "text.npz").write_text("not numpy")
    (tmp_path / "text.hdf5").write_text("not hdf5")
    (tmp_path / "file").write_text("x")
    run = tmp_path / "broken-run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"algo": "td3bc"}))
    files.update(trunc=str(tmp_path / "trunc.npz"), text_npz=str(tmp_path / "text.npz"),
                 text_hdf5=str(tmp_path / "text.hdf5"), file=str(tmp_path / "file"), broken_run=str(run))
    return files


@pytest.mark.parametrize("command, needle", [
    (["data", "info", "{trunc}"], "not a readable .npz archive"),
    (["data", "info", "{text_npz}"], "not a readable .npz archive"),
    (["data", "info", "{text_hdf5}"], "not a readable HDF5 file"),
    (["data", "info", "{tmp}/missing.npz"], "does not exist"),
    (["data", "info", "{hopper}", "--task", "walker2d"], "pass the right --task"),
    (["data", "info", "{hopper}", "--task", "hoppr"], "unknown task"),
    (["data", "build", "--task", "hopper", "--level", "random", "--num-envs", "0"], "--num-envs must be >= 1"),
    (["data", "build", "--task", "hoppr", "--level", "random"], "unknown task"),
    (["data", "build", "--task", "hopper", "--level", "rand"], "unknown level"),
    (["data", "build", "--task", "hopper", "--level", "random", "--steps", "-3"], "--steps must be positive"),
    (["bundle", "info", "{hopper}"], "no bundle"),
    (["bundle", "info", "{tmp}"], "bundle.json is missing"),
    (["generate", "--bundle", "hopper-medium", "--seed-dataset", "{halfcheetah}", "--out", "test/hopper/g-v0"],
     "task mismatch"),
    (["generate", "--bundle", "hopper-medium", "--seed-dataset", "{hopper}", "--out", "test/hopper/g-v0",
      "--horizon", "50"], "exceeds the world model's horizon"),
    (["generate", "--bundle", "hopper-medium", "--seed-dataset", "{hopper}", "--out", "test/hopper/g-v0",
      "--repeats", "-1"], "repeats must be >= 1"),
    (["train", "agent", "--algo", "ssorl-td3bc", "--dataset", "{halfcheetah}", "--bundle", "hopper-medium",
      "--out", "{tmp}/a", "--steps", "2"], "is for task hopper, not halfcheetah"),
    (["train", "agent", "--algo", "td3bc", "--dataset", "{hopper}", "--out", "{tmp}/a", "--seeds", "0"],
     "seeds must be >= 1"),
    (["train", "agent", "--algo", "td3bc", "--dataset", "{hopper}", "--out", "{tmp}/a", "--recipe", "dwm"],
     "unknown recipe 'dwm'; choose one of recommended, paper"),
    (["evaluate", "{tmp}/nothing"], "is not a dawm agent run"),
    (["evaluate", "{tmp}", "--episodes", "0"], "--episodes must be >= 1"),
    (["evaluate", "{broken_run}"], "not a readable dawm run config"),
    (["demo", "--out", "{tmp}/d", "--threads", "0"], "--threads must be >= 1"),
    (["demo", "--out", "{tmp}/d", "--bundle", "nope"], "no bundle 'nope'"),
    (["experiment", "table9"], "unknown experiment"),
    (["experiment", "table2", "--preset", "smoke", "--seeds", "0", "--out", "{tmp}/e"], "--seeds must be >= 1"),
    (["experiment", "table2", "--preset", "smoke", "--steps", "-1", "--out", "{tmp}/e"], "--steps must be >= 1"),
    (["experiment", "table2", "--preset", "smoke", "--threads", "0", "--out", "{tmp}/e"], "--threads must be >= 1"),
    (["experiment", "table2", "--preset", "smoke", "--dataset", "foo", "--out", "{tmp}/e"], "expected TASK/LEVEL"),
])
def test_other_bad_inputs_are_one_line_errors(bad_files, command, needle):
    args = [a.format(**bad_files) for a in command]
    if args[0] not in ("bundle", "evaluate") and args[:2] != ["data", "info"]:
        args.append("--no-progress")
    assert_one_line_error(cli(*args), needle)


def test_data_list_with_an_unusable_root_is_one_line(bad_files, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", f"{bad_files['file']}/minari")
    assert_one_line_error(cli("data", "list"), "Not a directory")


# --- 4. silent wrong results in loading ---------------------------------------------------------------------
@pytest.fixture
def bundle_copy(tmp_path) -> Path:
    """A copy of the shipped Hopper bundle to edit."""
    path = tmp_path / "edited"
    shutil.copytree(SHIPPED_DIR / "hopper-medium", path)
    return path


def _edit_json(path: Path, section: str, **changes) -> None:
    meta = json.loads(path.read_text())
    meta[section].update(changes)
    path.write_text(json.dumps(meta))


def test_bundle_config_edited_away_from_its_weights_fails_to_load(bundle_copy):
    Bundle.load(bundle_copy)  # the untouched copy loads
    bundle_json = bundle_copy / "bundle.json"
    original = bundle_json.read_text()
    for section, change, needle in (("world_model_config", {"horizon": 5}, "horizon = 5, but the weights"),
                                    ("world_model_config", {"n_diffusion_steps": 7}, "n_diffusion_steps"),
                                    ("idm_config", {"log_std_min": -3.0}, "log_std_min"),
                                    ("world_model_config", {"horizon": 6}, "divisible")):
        _edit_json(bundle_json, section, **change)
        with pytest.raises(CheckpointError, match=needle):
            Bundle.load(bundle_copy)
        bundle_json.write_text(original)
    res = cli("bundle", "info", bundle_copy)
    assert res.exit_code == 0, res.output


def test_weights_carry_their_config_so_editing_both_jsons_is_caught(bundle_copy):
    """Since write_component stores the config in the safetensors header, an edit of both JSON files is caught."""
    wm_meta = json.loads((bundle_copy / "world_model.json").read_text())
    weights = bundle_copy / "world_model.safetensors"
    save_tensors(weights, load_tensors(weights), metadata={CONFIG_METADATA_KEY: json.dumps(wm_meta["model_config"])})
    Bundle.load(bundle_copy)
    _edit_json(bundle_copy / "bundle.json", "world_model_config", horizon=5)
    _edit_json(bundle_copy / "world_model.json", "model_config", horizon=5)
    with pytest.raises(CheckpointError, match=r"horizon = 7 \(world_model.safetensors \(header\)\)"):
        Bundle.load(bundle_copy)


def test_write_component_stores_the_config_in_the_weights(tmp_path):
    from safetensors import safe_open

    from dawm_env.world_model.bundle import write_component

    write_component(tmp_path, "idm", {"w": torch.zeros(2)}, {"model_config": {"hidden": [4]}})
    with safe_open(str(tmp_path / "idm.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()[CONFIG_METADATA_KEY]) == {"hidden": [4]}


def _flat(n: int = 12) -> dict[str, np.ndarray]:
    """A hopper-shaped flat dataset: one episode of ``n`` steps, truncated at the end."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n + 1, 11)).astype(np.float32)
    return {"observations": obs[:-1], "actions": rng.uniform(-1, 1, (n, 3)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32), "next_observations": obs[1:],
            "terminals": np.zeros(n, bool), "timeouts": np.r_[np.zeros(n - 1, bool), True]}


def _save(tmp_path: Path, kind: str, arrays: dict) -> Path:
    path = tmp_path / f"d.{kind}"
    if kind == "npz":
        np.savez(path, **arrays)
    else:
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f[k] = v
    return path


@pytest.mark.parametrize("kind", ["npz", "hdf5"])
def test_arrays_of_the_wrong_shape_are_refused(tmp_path, kind):
    good = _flat()
    ok = load_dataset(_save(tmp_path, kind, {**good, "rewards": good["rewards"][:, None]}), task="hopper")
    np.testing.assert_array_equal(ok.rewards, good["rewards"])  # (N, 1) is (N,)
    for change, needle in (({"rewards": np.zeros((12, 2), np.float32)}, r"rewards has shape \(12, 2\)"),
                           ({"rewards": np.zeros(11, np.float32)}, "rewards has 11 rows"),
                           ({"terminals": np.zeros((12, 2), bool)}, r"terminals has shape \(12, 2\)"),
                           ({"timeouts": np.zeros((12, 3), bool)}, "timeouts has shape"),
                           ({"actions": good["actions"][:10]}, "actions has 10 rows"),
                           ({"next_observations": good["next_observations"][:, :5]}, "next_observations has shape"),
                           ({"rewards": np.float32(1.0)}, "rewards is a scalar")):
        with pytest.raises(ValueError, match=needle):
            load_dataset(_save(tmp_path, kind, {**good, **change}))


def test_npz_with_inconsistent_episode_offsets_is_refused(tmp_path):
    with pytest.raises(ValueError, match="episode_offsets must rise strictly from 0"):
        load_dataset(_save(tmp_path, "npz", {**_flat(), "episode_offsets": np.array([0, 5, 20])}))
