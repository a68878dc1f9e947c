"""The levers of `dawm experiment augment`: trust filter math, filtered sources, per-cell settings, the screen."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dawm_env.agents.iql import IQL, IQLConfig
from dawm_env.agents.networks import Normalizer
from dawm_env.agents.sources import DatasetSource, MixSource, TransitionBatch, trust_mask
from dawm_env.agents.td3bc import TD3BC, TD3BCConfig
from dawm_env.agents.train import TrainAgentConfig
from dawm_env.data.loading import load_dataset, save_npz
from dawm_env.data.minari_io import iter_episodes_fast, read_provenance
from dawm_env.experiments.presets import CONFIRM, SCREEN, SMOKE
from dawm_env.experiments.registry import EXPERIMENTS
from dawm_env.experiments.runner import ExperimentConfig, Workspace, import_records, run_experiment
from dawm_env.generation.stats import transition_idm_std


def test_trust_mask_against_a_hand_computation():
    std = np.array([0.0, 0.5, 0.2, 0.9, 0.0, 0.2, 0.7])
    # inferred: 0.5, 0.2, 0.9, 0.2, 0.7 (5); keep round(0.6 * 5) = 3 lowest: 0.2 (idx 2), 0.2 (idx 5), 0.5 (idx 1)
    assert trust_mask(std, 0.6).tolist() == [True, True, True, False, True, True, False]
    assert trust_mask(std, 1.0).all()
    # keep 10%: round(0.1 * 5) = 0 inferred transitions, only the real first actions (std 0)
    assert trust_mask(std, 0.1).tolist() == [True, False, False, False, True, False, False]
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="trust_keep"):
            trust_mask(std, bad)


def test_dataset_source_samples_only_the_kept_rows(hopper_random):
    rows = np.array([3, 10, 11])
    src = DatasetSource(hopper_random, rows=rows)
    assert len(src) == 3
    batch = src.sample(200, np.random.default_rng(0))
    obs = batch.observations.numpy()
    kept = hopper_random.observations[rows].astype(np.float32)
    assert all(np.isclose(kept, o).all(1).any() for o in obs)  # every sampled row is one of the three
    np.testing.assert_allclose(src.obs_moments().mean, hopper_random.observations[rows].astype(np.float64).mean(0))


def test_bc_weights_travel_through_sources_and_mixes(hopper_random):
    n = hopper_random.num_transitions
    w = (np.arange(n) % 3 == 0).astype(np.float32)
    src = DatasetSource(hopper_random, bc_weights=w)
    batch = src.sample(500, np.random.default_rng(1))
    # each sampled row carries its own weight: find it by its observation
    first = {tuple(np.round(o, 5)): wi for o, wi in zip(hopper_random.observations.astype(np.float32), w)}
    got = [first[tuple(np.round(o, 5))] for o in batch.observations.numpy()]
    np.testing.assert_array_equal(batch.bc_weights.numpy(), got)
    mixed = MixSource(DatasetSource(hopper_random), src, 0.5).sample(64, np.random.default_rng(2))
    assert mixed.bc_weights is not None and (mixed.bc_weights[1::2] == 1).all()  # rows 1, 3, ...: the real ones


def test_td3bc_bc_weights_against_a_hand_computation():
    """Weighted BC = the MSE over the weighted rows only; all-ones weights = the plain CORL loss."""
    obs_dim, act_dim, b = 4, 2, 8

    def batch(weights):
        g = torch.Generator().manual_seed(3)
        return TransitionBatch(torch.randn(1, b, obs_dim, generator=g), torch.rand(1, b, act_dim, generator=g) * 2 - 1,
                               torch.randn(1, b, generator=g), torch.randn(1, b, obs_dim, generator=g),
                               torch.zeros(1, b), bc_weights=weights)

    def agent() -> TD3BC:  # the same initial weights every time (keyed by the seed)
        return TD3BC(TD3BCConfig(hidden=(8,)), obs_dim, act_dim, [0], Normalizer(torch.zeros(obs_dim), torch.ones(obs_dim)))

    def bc_loss(weights):  # step 1 is an actor step; its BC loss is measured with the actor before the step
        return agent().update(batch(weights), step=1, gen=torch.Generator().manual_seed(0))["bc_loss"]

    torch.testing.assert_close(bc_loss(None), bc_loss(torch.ones(1, b)))
    w = torch.tensor([[1.0, 0, 0, 1, 0, 0, 0, 1]])
    data = batch(w)
    with torch.no_grad():
        err = ((agent().actor(data.observations) - data.actions) ** 2).mean(-1)[0]  # per-row MSE over action dims
    torch.testing.assert_close(bc_loss(w), err[[0, 3, 7]].mean().reshape(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("deterministic", [True, False])
def test_iql_weighted_regression_equals_the_plain_loss_on_the_weighted_rows(deterministic):
    """IQL's actor with BC weights 0/1 = its plain advantage-weighted loss on the sub-batch of weight-1 rows (each
    row's advantage comes from the critics and value net before the step, so the other rows cannot change it)."""
    obs_dim, act_dim, b = 4, 2, 8
    g = torch.Generator().manual_seed(5)
    full = TransitionBatch(torch.randn(1, b, obs_dim, generator=g), torch.rand(1, b, act_dim, generator=g) * 2 - 1,
                           torch.randn(1, b, generator=g), torch.randn(1, b, obs_dim, generator=g), torch.zeros(1, b))
    rows = [1, 2, 6]
    w = torch.zeros(1, b)
    w[0, rows] = 1.0

    def actor_loss(batch: TransitionBatch) -> torch.Tensor:
        agent = IQL(IQLConfig(hidden=(8,), deterministic_actor=deterministic), obs_dim, act_dim, [0],
                    Normalizer(torch.zeros(obs_dim), torch.ones(obs_dim)), total_steps=10)
        return agent.update(batch, step=0, gen=torch.Generator().manual_seed(0))["actor_loss"]

    def pick(x: torch.Tensor) -> torch.Tensor:
        return x[:, rows]

    sub = TransitionBatch(pick(full.observations), pick(full.actions), pick(full.rewards),
                          pick(full.next_observations), pick(full.terminations))
    torch.testing.assert_close(actor_loss(replace(full, bc_weights=torch.ones(1, b))), actor_loss(full))
    torch.testing.assert_close(actor_loss(replace(full, bc_weights=w)), actor_loss(sub), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(actor_loss(full), actor_loss(sub))  # the weights do select rows


def test_bc_real_actions_only_needs_td3bc_or_iql_on_synthetic_data():
    with pytest.raises(ValueError, match="bc_real_actions_only"):
        TrainAgentConfig(algo="td3bc", dataset="x", out="y", bc_real_actions_only=True)
    with pytest.raises(ValueError, match="bc_real_actions_only"):
        TrainAgentConfig(algo="dwm-td3bc", dataset="x", out="y", synthetic="z", bc_real_actions_only=True)
    TrainAgentConfig(algo="iql", dataset="x", out="y", synthetic="z", bc_real_actions_only=True)  # accepted


def test_trust_keep_needs_a_synthetic_one_step_run():
    with pytest.raises(ValueError, match="trust_keep filters"):
        TrainAgentConfig(algo="td3bc", dataset="x", out="y", trust_keep=0.5)
    with pytest.raises(ValueError, match="trust_keep must lie"):
        TrainAgentConfig(algo="td3bc", dataset="x", out="y", synthetic="z", trust_keep=1.5)


def test_levers_enter_keys_only_when_set(tiny_bundle, hopper_random, tmp_path, monkeypatch):
    data = tmp_path / "hopper_random.npz"
    save_npz(hopper_random, data)
    cfg = ExperimentConfig(name="augment", preset=replace(SMOKE, tasks=("hopper",), levels=("random",)),
                           out=str(tmp_path / "exp"), datasets={"hopper/random": str(data)},
                           bundles={"hopper/random": str(tiny_bundle)}, progress=False)
    ws = Workspace(cfg)
    grid = (("hopper",), ("random",))
    aug = {c.method: c for c in EXPERIMENTS["augment"].cells(ws.p, *grid)}
    t2 = {c.method: c for c in EXPERIMENTS["table2"].cells(ws.p, *grid)}
    t4 = {c.method: c for c in EXPERIMENTS["table4"].cells(ws.p, *grid)}
    # the paper's recipe and the real baseline are the very cells of tables 2 and 4 (shared runs)
    assert ws.cell_key(aug["DAWM (paper)"]) == ws.cell_key(t2["DAWM-TD3BC"])
    assert ws.cell_key(aug["TD3BC"]) == ws.cell_key(t4["TD3BC"])
    assert ws.cell_key(aug["DWM-TD3BC"]) == ws.cell_key(t2["DWM-TD3BC"])
    keys = {ws.cell_key(c) for c in aug.values()}
    assert len(keys) == len(aug)
    # g changes the generated data; mixing, trust and alpha only the training
    paper_id = ws.generated_id(aug["DAWM (paper)"])
    assert ws.generated_id(aug["DAWM g=0.6"]) != paper_id and "-g0p6-" in ws.generated_id(aug["DAWM g=0.6"])
    for m in ("mix 50% real", "DAWM trust 50%", "DAWM alpha=10"):
        assert ws.generated_id(aug[m]) == paper_id
    # action noise is a generation setting: new data, and only for the cells that set it
    noisy = aug["mix 50% real, a_t noise 0.3"]
    assert noisy.action_noise == 0.3 and "-an0p3-" in ws.generated_id(noisy) and ws.generated_id(noisy) != paper_id
    assert "action_noise" not in ws.generation_settings(aug["DAWM (paper)"])
    assert ws.generation_request(noisy, "real")["action_noise"] == 0.3
    bf16 = Workspace(replace(cfg, preset=replace(cfg.preset, agent_bf16=True)))
    assert bf16.cell_key(aug["TD3BC"]) != ws.cell_key(aug["TD3BC"])
    # None: bf16 where the CPU runs it natively; the key says which precision was used
    auto = replace(cfg, preset=replace(cfg.preset, agent_bf16=None))
    for flags, expected in ((frozenset({"avx512f", "avx512_bf16"}), bf16), (frozenset({"amx_bf16"}), bf16),
                            (frozenset({"avx512f"}), ws), (frozenset(), ws)):
        monkeypatch.setattr("dawm_env.runtime.cpu_flags", lambda flags=flags: flags)
        assert Workspace(auto).agent_bf16 is (expected is bf16)
        assert Workspace(auto).cell_key(aug["TD3BC"]) == expected.cell_key(aug["TD3BC"])


def test_screen_preset_is_the_documented_budget():
    assert (SCREEN.seeds, SCREEN.agent_steps, SCREEN.eval_every, SCREEN.fresh_episodes) == (3, 100_000, 10_000, 50)
    assert SCREEN.agent_bf16 is None and SCREEN.generation_subsample == 8  # bf16 where native


def test_augment_at_smoke_preset(tiny_bundle, hopper_random, tmp_path):
    data = tmp_path / "hopper_random.npz"
    save_npz(hopper_random, data)
    root = tmp_path / "exp"
    cfg = ExperimentConfig(name="augment", preset=replace(SMOKE, tasks=("hopper",), levels=("random",),
                                                          agent_bf16=True),
                           out=str(root), datasets={"hopper/random": str(data)},
                           bundles={"hopper/random": str(tiny_bundle)}, progress=False)
    res = run_experiment(cfg, echo=lambda _: None)
    assert res["complete"], [(r["cell"]["method"], r["status"]) for r in res["cells"]]
    recs = {r["cell"]["method"]: r for r in res["cells"]}
    assert list(recs) == [m.label for m in EXPERIMENTS["augment"].methods(cfg.preset)]

    def run_config(method: str) -> dict:
        return json.loads((Path(recs[method]["run_dir"]) / "config.json").read_text())

    assert run_config("mix 50% real")["data"]["real_fraction"] == 0.5
    assert run_config("DAWM (paper)")["data"]["real_fraction"] == 0.0
    assert run_config("TD3BC alpha=10")["algo_config"]["alpha"] == 10.0
    assert run_config("DAWM alpha=10")["algo_config"]["alpha"] == 10.0
    assert run_config("TD3BC")["algo_config"]["alpha"] == 2.5
    assert all(run_config(m)["algo_config"]["bf16"] for m in recs)
    assert read_provenance(recs["DAWM g=0.6"]["generated_dataset"])["rollout"]["rtg"] == 0.6

    # the trust cell trains on the real first steps and the lower-std half of the inferred ones
    gen_id = recs["DAWM trust 50%"]["generated_dataset"]
    std = transition_idm_std(gen_id)
    syn = load_dataset(gen_id)
    assert std.shape == (syn.num_transitions,)
    starts = np.concatenate([[0], np.cumsum(syn.episode_lengths)[:-1]])
    assert (std[starts] == 0).all() and (np.delete(std, starts) > 0).all()  # row 0 of a rollout: the real action
    first = next(iter_episodes_fast(gen_id))
    np.testing.assert_allclose(std[:len(first["rewards"])], first["infos"]["idm_std"][:len(first["rewards"])].mean(-1),
                               rtol=1e-6)
    inferred = int((std > 0).sum())
    assert run_config("DAWM trust 50%")["data"]["trust"]["kept_transitions"] == len(starts) + round(0.5 * inferred)
    control = run_config("DAWM random 50%")["data"]["trust"]
    assert control == {"keep": 0.5, "kept_transitions": len(starts) + round(0.5 * inferred), "signal": "random"}

    assert run_config("DAWM BC on real a_t")["data"]["bc_real_actions_only"]["cloned_transitions"] == len(starts)
    mixed_bc = run_config("mix 50% real, BC on real a")["data"]  # the real half cloned, of the generated only a_t
    assert mixed_bc["real_fraction"] == 0.5 and mixed_bc["bc_real_actions_only"]["cloned_transitions"] == len(starts)

    table = (root / "augment" / "table.md").read_text()
    assert "TD3BC alpha=10 - TD3BC" in table and "DAWM trust 50% - TD3BC" in table


def test_confirm_preset_uses_seeds_the_screen_never_used():
    screen = set(range(SCREEN.first_seed, SCREEN.first_seed + SCREEN.seeds))
    confirm = set(range(CONFIRM.first_seed, CONFIRM.first_seed + CONFIRM.seeds))
    assert CONFIRM.seeds == 5 and not screen & confirm
    assert (CONFIRM.agent_steps, CONFIRM.fresh_episodes, CONFIRM.agent_bf16) == (100_000, 50, None)
    with pytest.raises(ValueError, match="first_seed must be >= 0"):
        replace(SMOKE, first_seed=-1)


def test_confirm_at_smoke_preset_trains_the_first_seed_onwards(tiny_bundle, hopper_random, tmp_path):
    data = tmp_path / "hopper_random.npz"
    save_npz(hopper_random, data)
    cfg = ExperimentConfig(name="confirm", preset=replace(SMOKE, tasks=("hopper",), levels=("random",), first_seed=7),
                           out=str(tmp_path / "exp"), datasets={"hopper/random": str(data)},
                           bundles={"hopper/random": str(tiny_bundle)}, progress=False)
    ws = Workspace(cfg)
    cells = EXPERIMENTS["confirm"].cells(ws.p, ("hopper",), ("random",))
    # seeds 0.. and 7.. are different runs; first_seed 0 keeps the keys every earlier run has
    zero = Workspace(replace(cfg, preset=replace(cfg.preset, first_seed=0)))
    aug = {c.method: c for c in EXPERIMENTS["augment"].cells(zero.p, ("hopper",), ("random",))}
    assert zero.cell_key(cells[0]) == zero.cell_key(aug["TD3BC"]) != ws.cell_key(cells[0])
    res = run_experiment(cfg, echo=lambda _: None)
    assert res["complete"], [(r["cell"]["method"], r["status"]) for r in res["cells"]]
    recs = {r["cell"]["method"]: r for r in res["cells"]}
    assert list(recs) == [m.label for m in EXPERIMENTS["confirm"].methods(cfg.preset)]
    for rec in recs.values():
        assert json.loads((Path(rec["run_dir"]) / "config.json").read_text())["seeds"] == [7, 8]
    table = (tmp_path / "exp" / "confirm" / "table.md").read_text()
    assert "DAWM trust 50% - TD3BC" in table and "DAWM-IQL trust 50% - IQL" in table
    iql_bc = json.loads((Path(recs["IQL mix 50% real, AWR on real a"]["run_dir"]) / "config.json").read_text())["data"]
    assert iql_bc["real_fraction"] == 0.5 and iql_bc["bc_real_actions_only"]["cloned_transitions"] > 0
    assert "IQL mix 50% real, AWR on real a - IQL" in table
    # a copy of the report (e.g. one kept in a repository) makes another output folder's cells finished: no run
    report = tmp_path / "kept_results.json"
    report.write_text((tmp_path / "exp" / "confirm" / "results.json").read_text())
    elsewhere = replace(cfg, out=str(tmp_path / "elsewhere"), import_reports=(str(report),), max_cells=0)
    shutil.rmtree(tmp_path / "exp" / "runs")  # the runs stay on the machine that made them
    again = run_experiment(elsewhere, echo=lambda _: None)
    assert again["complete"] and [r["final"] for r in again["cells"]] == [r["final"] for r in res["cells"]]
    assert all(r["curve"]["seeds"] == [7, 8] for r in again["cells"])  # the record carries its learning curve
    assert (tmp_path / "elsewhere" / "confirm" / "curves-hopper-random.png").is_file()
    # with another budget the imported records do not count (the key matches, the steps do not)
    other = replace(elsewhere, preset=replace(cfg.preset, agent_steps=cfg.preset.agent_steps + 10))
    assert run_experiment(other, echo=lambda _: None)["counts"]["pending"] == len(recs)


def test_import_records_checks_the_report_and_never_replaces(tmp_path):
    done = {"status": "done", "key": "hopper-medium-td3bc-real-abc", "steps": 10, "final": {"mean": 1.0}}
    report = tmp_path / "results.json"
    report.write_text(json.dumps({"cells": [done, {"status": "pending", "key": "other"}]}))
    assert import_records(tmp_path / "out", report) == 1
    assert json.loads((tmp_path / "out" / "cells" / f"{done['key']}.json").read_text()) == done
    report.write_text(json.dumps({"cells": [{**done, "final": {"mean": 2.0}}]}))
    assert import_records(tmp_path / "out", report) == 0  # the record already there stays
    assert json.loads((tmp_path / "out" / "cells" / f"{done['key']}.json").read_text())["final"]["mean"] == 1.0
    report.write_text(json.dumps({"cells": [{**done, "key": "../../escape"}]}))
    with pytest.raises(ValueError, match="invalid key"):
        import_records(tmp_path / "out", report)
    report.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an experiment report"):
        import_records(tmp_path / "out", report)
    with pytest.raises(ValueError, match="no such file"):
        ExperimentConfig(name="confirm", preset=SMOKE, import_reports=(str(tmp_path / "missing.json"),))


def test_random_trust_control_keeps_as_many_rows_at_random():
    std = np.array([0.0, 0.5, 0.1, 0.0, 0.3, 0.2, 0.4, 0.6, 0.05, 0.0])
    by_std, control = trust_mask(std, 0.5), trust_mask(std, 0.5, "random", seed=3)
    assert by_std.sum() == control.sum() == 3 + 4  # 3 real first steps + round(0.5 * 7) inferred
    assert (control[std == 0]).all()
    np.testing.assert_array_equal(control, trust_mask(std, 0.5, "random", seed=3))
    draws = {tuple(np.flatnonzero(trust_mask(std, 0.5, "random", seed=s))) for s in range(20)}
    assert len(draws) > 1  # a random set, not the std ranking under another name
    with pytest.raises(ValueError, match="unknown trust signal"):
        trust_mask(std, 0.5, "entropy")
    with pytest.raises(ValueError, match="unknown trust_signal"):
        TrainAgentConfig(algo="td3bc", dataset="x", out="y", synthetic="z", trust_keep=0.5, trust_signal="entropy")
