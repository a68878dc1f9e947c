"""`dawm data subset` and the low-data regime (`data_fraction`, `dawm experiment lowdata`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dawm_env.cli import app
from dawm_env.data.loading import load_dataset, save_npz
from dawm_env.data.minari_io import read_provenance
from dawm_env.data.subset import SubsetConfig, subset_episodes, write_subset
from dawm_env.experiments.presets import LOWDATA, SMOKE
from dawm_env.experiments.runner import ExperimentConfig, Workspace, run_experiment


def test_select_episodes_keeps_whole_episodes_in_the_given_order(hopper_random):
    picked = [3, 0]
    sub = hopper_random.select_episodes(picked)
    assert sub.num_episodes == 2
    for new, old in enumerate(picked):
        a, b = sub.episode(new), hopper_random.episode(old)
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
        assert (a.terminations == b.terminations).all() and (a.truncations == b.truncations).all()
    assert list(sub.seeds) == [hopper_random.seeds[3], hopper_random.seeds[0]]
    with pytest.raises(ValueError, match="episode indices"):
        hopper_random.select_episodes([hopper_random.num_episodes])


def test_subset_is_the_shortest_shuffled_prefix_reaching_the_fraction(hopper_random):
    keep = subset_episodes(hopper_random, 0.3, seed=4)
    order = np.random.default_rng(4).permutation(hopper_random.num_episodes)
    lengths = hopper_random.episode_lengths
    need = np.ceil(0.3 * hopper_random.num_transitions)
    # the kept set is a prefix of the shuffled order, reaches the fraction, and one episode fewer would not
    k = len(keep)
    assert set(keep) == set(order[:k]) and (np.diff(keep) > 0).all()
    assert lengths[order[:k]].sum() >= need > lengths[order[:k - 1]].sum()
    np.testing.assert_array_equal(keep, subset_episodes(hopper_random, 0.3, seed=4))
    assert not np.array_equal(keep, subset_episodes(hopper_random, 0.3, seed=5))


def test_write_subset_writes_once_and_refuses_another_configuration(hopper_random, tmp_path):
    src = tmp_path / "r.npz"
    save_npz(hopper_random, src)
    cfg = SubsetConfig(dataset=str(src), fraction=0.25, dataset_id="test/hopper/sub-v0")
    assert write_subset(cfg) == "test/hopper/sub-v0"
    sub = load_dataset("test/hopper/sub-v0")
    keep = subset_episodes(hopper_random, 0.25, 0)
    np.testing.assert_array_equal(sub.actions, hopper_random.select_episodes(keep).actions)
    prov = read_provenance("test/hopper/sub-v0")
    assert prov["episode_indices"] == keep.tolist() and prov["source_fingerprint"] == hopper_random.fingerprint()
    assert write_subset(cfg) == "test/hopper/sub-v0"  # the same command again: a no-op
    with pytest.raises(FileExistsError, match="another configuration"):
        write_subset(replace(cfg, seed=1))


@pytest.mark.parametrize("args, message", [
    (["--fraction", "1.5"], "--fraction must lie strictly between 0 and 1"),
    (["--fraction", "0.1", "--id", "bad id"], "id"),
])
def test_data_subset_cli_bad_input_is_one_line(args, message, tmp_path):
    base = ["data", "subset", "--dataset", str(tmp_path / "missing.npz"), "--id", "test/hopper/s-v0"]
    res = CliRunner().invoke(app, base + args)
    assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output


def test_lowdata_preset_is_the_documented_regime():
    assert (LOWDATA.data_fraction, LOWDATA.generation_subsample, LOWDATA.seeds, LOWDATA.agent_steps) == (0.1, 1, 5,
                                                                                                          100_000)
    with pytest.raises(ValueError, match="data_fraction"):
        replace(SMOKE, data_fraction=0.0)


def test_lowdata_at_smoke_preset_trains_its_bundle_on_the_fraction(hopper_random, tmp_path):
    data = tmp_path / "hopper_random.npz"
    save_npz(hopper_random, data)
    cfg = ExperimentConfig(name="lowdata", preset=replace(SMOKE, tasks=("hopper",), levels=("random",),
                                                          data_fraction=0.5),
                           out=str(tmp_path / "exp"), datasets={"hopper/random": str(data)}, progress=False)
    ws = Workspace(cfg)
    full = Workspace(replace(cfg, preset=replace(cfg.preset, data_fraction=1.0)))
    assert ws.bundle_dir("hopper", "random") != full.bundle_dir("hopper", "random")
    assert ws.real_source("hopper", "random").startswith("dawm-exp/hopper/random-frac0p5-")
    res = run_experiment(cfg, echo=lambda _: None)
    assert res["complete"], [(r["cell"]["method"], r["status"]) for r in res["cells"]]
    sub = load_dataset(ws.real_source("hopper", "random"))
    assert 0.5 * hopper_random.num_transitions <= sub.num_transitions < hopper_random.num_transitions
    bundle = json.loads((ws.bundle_dir("hopper", "random") / "bundle.json").read_text())
    assert bundle["dataset_fingerprint"] == sub.fingerprint()  # the world model never saw the other half
    for rec in res["cells"]:
        run = json.loads((Path(rec["run_dir"]) / "config.json").read_text())
        assert run["data"]["dataset"] == ws.real_source("hopper", "random")
    noisy = [r for r in res["cells"] if r["cell"]["action_noise"]]
    assert len(noisy) == 1 and noisy[0]["generated_dataset"] != next(
        r["generated_dataset"] for r in res["cells"] if r["cell"]["method"] == "mix 50% real")
    assert read_provenance(noisy[0]["generated_dataset"])["rollout"]["action_noise"] == 0.3
    bc_real = [r for r in res["cells"] if r["cell"]["bc_real_only"]]
    assert len(bc_real) == 1 and bc_real[0]["cell"]["real_fraction"] == 0.5
