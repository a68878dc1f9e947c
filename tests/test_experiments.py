"""`dawm experiment`: every experiment at the smoke preset on the tiny fixtures, shared runs, resume, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dawm_env.data.loading import save_npz
from dawm_env.experiments.presets import PRESETS, SMOKE, get_preset
from dawm_env.experiments.registry import EXPERIMENTS, get_experiment
from dawm_env.experiments.runner import ExperimentConfig, Workspace, run_experiment
from dawm_env.planner import DDConfig

AGENT_EXPERIMENTS = ("table2", "table4", "table5", "table6", "ablation-idm")


@pytest.fixture
def overrides(tiny_bundle, hopper_random, tmp_path) -> dict:
    """The tiny real data and bundle, standing in for hopper random."""
    data = tmp_path / "hopper_random.npz"
    save_npz(hopper_random, data)
    return {"datasets": {"hopper/random": str(data)}, "bundles": {"hopper/random": str(tiny_bundle)}}


def _cfg(name: str, overrides: dict, root: Path, **kw) -> ExperimentConfig:
    preset = replace(SMOKE, tasks=("hopper",), levels=("random",))
    return ExperimentConfig(name=name, preset=preset, out=str(root), progress=False,
                            datasets=dict(overrides["datasets"]), bundles=dict(overrides["bundles"]), **kw)


@pytest.fixture
def count_train_calls(monkeypatch) -> list:
    """Records the output folder of every train_agent call the experiment runner makes."""
    import dawm_env.agents.train
    import dawm_env.experiments.runner

    calls: list = []
    real = dawm_env.agents.train.train_agent

    def counted(cfg, *args, **kwargs):
        calls.append(cfg.out)
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(dawm_env.experiments.runner, "train_agent", counted)
    return calls


def test_presets_and_grids_are_documented_dataclasses():
    assert set(PRESETS) == {"smoke", "cpu", "screen", "confirm", "lowdata", "paper"}
    assert get_preset("paper").agent_steps == 1_000_000 and get_preset("paper").seeds == 5
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown experiment"):
        get_experiment("table9")
    t6 = EXPERIMENTS["table6"].cells(replace(SMOKE, horizons=(1, 3)), ("hopper",), ("medium",))
    assert [c.method for c in t6] == ["DAWM_1", "DWM_1", "DAWM_3", "DWM_3"]
    assert [c.horizon for c in t6] == [1, 1, 3, 3]
    t5 = EXPERIMENTS["table5"].cells(SMOKE, ("hopper",), ("medium",))
    assert [c.subsample for c in t5] == [SMOKE.generation_subsample * SMOKE.dawm_t, SMOKE.generation_subsample]
    cons = EXPERIMENTS["consistency"].cells(SMOKE, ("hopper",), ("medium",))
    assert cons[0].data_level == "medium" and len(cons) == 5


def test_identical_cells_share_keys_and_generated_ids(overrides, tmp_path):
    ws = Workspace(_cfg("table2", overrides, tmp_path / "exp"))
    preset = ws.p
    grid = (("hopper",), ("random",))
    t2 = {c.method: c for c in EXPERIMENTS["table2"].cells(preset, *grid)}
    t5 = {c.method: c for c in EXPERIMENTS["table5"].cells(preset, *grid)}
    t6 = {c.method: c for c in EXPERIMENTS["table6"].cells(preset, *grid)}
    ab = {c.method: c for c in EXPERIMENTS["ablation-idm"].cells(preset, *grid)}
    assert ws.cell_key(t2["DAWM-TD3BC"]) == ws.cell_key(t5["DAWM"]) == ws.cell_key(t6["DAWM_7"]) \
        == ws.cell_key(ab["IDM actions (DAWM)"])
    assert ws.generated_id(t2["DWM-TD3BC"]) == ws.generated_id(t2["DAWM-TD3BC"])  # DWM reuses DAWM's rollouts
    ids = {ws.generated_id(c) for c in (t6["DAWM_1"], t6["DAWM_3"], t5[next(iter(t5))], ab["random actions"])}
    assert len(ids) == 4 and all(i.startswith("dawm-exp/hopper/random-h") for i in ids)
    # the real data and the seeds decide the keys; the step budget does not
    other = Workspace(replace(ws.cfg, preset=replace(preset, agent_steps=999)))
    assert other.cell_key(t2["DAWM-TD3BC"]) == ws.cell_key(t2["DAWM-TD3BC"])
    more_seeds = Workspace(replace(ws.cfg, preset=replace(preset, seeds=3)))
    assert more_seeds.cell_key(t2["DAWM-TD3BC"]) != ws.cell_key(t2["DAWM-TD3BC"])


def test_a_bundle_changed_in_place_gives_new_keys(overrides, tiny_bundle, tmp_path):
    """Cells and generated data made with a bundle are not reused once the bundle's files change."""
    import shutil

    bundle = tmp_path / "bundle_copy"
    shutil.copytree(tiny_bundle, bundle)
    cfg = _cfg("table4", {**overrides, "bundles": {"hopper/random": str(bundle)}}, tmp_path / "exp")
    cells = {c.method: c for c in EXPERIMENTS["table4"].cells(cfg.preset, ("hopper",), ("random",))}
    before = Workspace(cfg)
    keys = {m: before.cell_key(c) for m, c in cells.items()}
    gen_id = before.generated_id(cells["DAWM-TD3BC"])
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["metrics"]["note"] = "changed"  # any change of any file of the bundle
    (bundle / "bundle.json").write_text(json.dumps(meta))
    after = Workspace(cfg)
    assert after.generated_id(cells["DAWM-TD3BC"]) != gen_id
    for method, cell in cells.items():
        changed = after.cell_key(cell) != keys[method]
        assert changed == Workspace.needs_bundle(cell), method  # real-data cells keep their keys


def test_keys_follow_the_bundle_content_not_its_folder(overrides, tiny_bundle, tmp_path):
    """The same bundle in another folder (checkout, site-packages, cluster node) gives the same keys; a record
    stored under a key of the older scheme (which hashed the folder too) is found and re-stored under the new key."""
    import shutil

    cfgs, workspaces = [], []
    for name in ("a", "b"):
        shutil.copytree(tiny_bundle, tmp_path / name)
        cfgs.append(_cfg("table4", {**overrides, "bundles": {"hopper/random": str(tmp_path / name)}}, tmp_path / "exp"))
        workspaces.append(Workspace(cfgs[-1]))
    cell = next(c for c in EXPERIMENTS["table4"].cells(cfgs[0].preset, ("hopper",), ("random",)) if c.generated)
    a, b = workspaces
    assert a.cell_key(cell) == b.cell_key(cell) and a.generated_id(cell) == b.generated_id(cell)
    assert a.cell_key(cell, legacy=True) != b.cell_key(cell, legacy=True) != a.cell_key(cell)
    old = a.cell_key(cell, legacy=True)
    rec = {"status": "done", "key": old, "steps": a.p.agent_steps, "final": {"mean": 1.0}}
    a.record_path(old).parent.mkdir(parents=True, exist_ok=True)
    a.record_path(old).write_text(json.dumps(rec))
    assert b.finished_record(cell, b.cell_key(cell)) is None  # an old key made in another folder is not matched
    found = a.finished_record(cell, a.cell_key(cell))
    assert found["final"] == {"mean": 1.0} and found["key"] == a.cell_key(cell) and found["legacy_key"] == old
    assert json.loads(a.record_path(a.cell_key(cell)).read_text()) == found  # stored under the new key
    assert b.finished_record(cell, b.cell_key(cell)) == found  # and from there found from any folder


def test_every_agent_experiment_at_smoke_preset(overrides, tmp_path, count_train_calls):
    root = tmp_path / "exp"
    total_cells = 0
    for name in AGENT_EXPERIMENTS:
        res = run_experiment(_cfg(name, overrides, root), echo=lambda _: None)
        total_cells += len(res["cells"])
        assert res["complete"], (name, [(r["cell"]["method"], r["status"], r.get("reason")) for r in res["cells"]])
        folder = root / name
        on_disk = json.loads((folder / "results.json").read_text())
        assert on_disk["counts"]["done"] == len(res["cells"]) and on_disk["preset"]["name"] == "smoke"
        table = (folder / "table.md").read_text()
        methods = [r["cell"]["method"] for r in res["cells"]]
        assert all(m in table for m in methods) and "hopper-random" in table and " ± " in table
        for rec in res["cells"]:
            assert len(rec["last"]["per_seed"]) == SMOKE.seeds
            if rec["cell"]["algo"] == "dd":  # the planner: trained once, evaluated with the agents' seeds / episodes
                assert rec["planner_steps"] == DDConfig.preset(SMOKE.dd_preset).train_steps
                assert (Path(rec["run_dir"]) / "evaluation.json").is_file()
                continue
            assert rec["steps"] == SMOKE.agent_steps
            assert (Path(rec["run_dir"]) / "checkpoint").is_dir()
        assert (folder / "scores.png").stat().st_size > 1000
        assert (folder / "curves-hopper-random.png").stat().st_size > 1000
    assert (root / "table6" / "horizons.png").stat().st_size > 1000
    # DAWM-TD3BC at H = 7 (and DAWM-IQL, DWM-TD3BC) are shared between tables: fewer runs than cells
    assert len(count_train_calls) == len(set(count_train_calls)) == 15 < total_cells == 22

    # table3 times the planner and table2's DAWM-TD3BC / DWM-TD3BC runs: nothing is trained again
    res = run_experiment(_cfg("table3", overrides, root), echo=lambda _: None)
    assert res["complete"] and len(count_train_calls) == 15
    assert [r["cell"]["method"] for r in res["cells"]] == ["DD", "DAWM-TD3BC", "DWM-TD3BC"]
    for rec in res["cells"]:
        assert len(rec["inference_seconds"]) == SMOKE.timing_episodes and rec["ms_per_step"] > 0
        assert rec["hardware"]["logical_cores"] >= 1
    table3 = (root / "table3" / "table.md").read_text()
    assert "ms / step" in table3 and "DD" in table3
    from dawm_env.data.minari_io import read_provenance

    ablation = json.loads((root / "ablation-idm" / "results.json").read_text())
    sources = [read_provenance(r["generated_dataset"])["generator_config"].get("action_source", "idm")
               for r in ablation["cells"]]
    assert sources == ["idm", "random", "repeat"]


def test_killed_experiment_resumes_at_the_next_cell(overrides, tmp_path, monkeypatch, count_train_calls):
    import dawm_env.experiments.runner

    root = tmp_path / "exp"
    counted = dawm_env.experiments.runner.train_agent  # the fixture's counting wrapper

    def dies_on_second_run(cfg, *args, **kwargs):
        if len(count_train_calls) >= 1:
            raise KeyboardInterrupt  # a kill after the first cell finished
        return counted(cfg, *args, **kwargs)

    monkeypatch.setattr(dawm_env.experiments.runner, "train_agent", dies_on_second_run)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_cfg("table5", overrides, root), echo=lambda _: None)
    partial = json.loads((root / "table5" / "results.json").read_text())
    assert partial["counts"]["done"] == 1 and not partial["complete"]
    first = next(iter((root / "cells").glob("*.json")))
    stamp = first.stat().st_mtime_ns

    monkeypatch.setattr(dawm_env.experiments.runner, "train_agent", counted)
    res = run_experiment(_cfg("table5", overrides, root), echo=lambda _: None)
    assert res["complete"] and len(count_train_calls) == 2  # only the unfinished cell ran
    assert first.stat().st_mtime_ns == stamp
    # a time-boxed call runs nothing more once everything is done; more steps continue the same runs
    res = run_experiment(_cfg("table5", overrides, root, max_cells=0), echo=lambda _: None)
    assert res["complete"] and len(count_train_calls) == 2
    longer = _cfg("table5", overrides, root, max_cells=1)
    longer.preset = replace(longer.preset, agent_steps=30)
    res = run_experiment(longer, echo=lambda _: None)
    assert res["counts"] == {"done": 1, "pending": 1, "skipped": 0}
    assert count_train_calls[-1] in count_train_calls[:2]  # resumed an existing run folder
    assert json.loads((Path(count_train_calls[-1]) / "results.json").read_text())["steps"] == 30


def test_consistency_in_and_out_of_distribution(overrides, tmp_path):
    from dawm_env.data.rollout import collect_transitions, uniform_random_policy
    from dawm_env.tasks import get_task

    task = get_task("hopper")
    other = tmp_path / "hopper_other.npz"  # stands in for another level of the same task
    save_npz(collect_transitions(task, uniform_random_policy(task.act_dim, seed=7), 400, seed=3, num_envs=4,
                                 progress=False), other)
    overrides["datasets"]["hopper/medium"] = str(other)
    res = run_experiment(_cfg("consistency", overrides, tmp_path / "exp"), echo=lambda _: None)
    assert res["complete"]
    by_level = {r["cell"]["data_level"]: r for r in res["cells"]}
    assert by_level["random"]["status"] == "done" and by_level["random"]["in_distribution"]
    assert by_level["random"]["same_data_as_bundle"]
    assert by_level["medium"]["status"] == "done" and not by_level["medium"]["in_distribution"]
    assert by_level["expert"]["status"] == "skipped"
    for r in (by_level["random"], by_level["medium"]):
        m = r["metrics"]
        assert 0 <= m["idm_action_mae"] <= 2 and 0 <= m["action_consistency_mae"] <= 2
    folder = tmp_path / "exp" / "consistency"
    table = (folder / "table.md").read_text()
    assert "in distribution" in table and "out of distribution" in table and "skipped" in table
    assert (folder / "consistency.png").stat().st_size > 1000


def test_experiment_cli_time_boxed_then_resumed(overrides, tmp_path):
    args = ["experiment", "table5", "--preset", "smoke", "--tasks", "hopper", "--levels", "random",
            "--seeds", "1", "--out", str(tmp_path / "exp"), "--no-progress",
            "--dataset", f"hopper/random={overrides['datasets']['hopper/random']}",
            "--bundle", f"hopper/random={overrides['bundles']['hopper/random']}"]
    from dawm_env.cli import app

    runner = CliRunner()
    res = runner.invoke(app, args + ["--max-cells", "1"])
    assert res.exit_code == 1, res.output  # incomplete: one cell left
    assert "pending" in res.output
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "DAWM-T (T=8)" in res.output and "results:" in res.output
    saved = json.loads((tmp_path / "exp" / "table5" / "results.json").read_text())
    assert saved["preset"]["seeds"] == 1 and saved["complete"]
    bad = runner.invoke(app, ["experiment", "table5", "--preset", "smoke", "--dataset", "nonsense"])
    assert bad.exit_code == 2 and "TASK/LEVEL=VALUE" in bad.output
    bad = runner.invoke(app, ["experiment", "table7", "--preset", "smoke"])
    assert bad.exit_code == 2 and "unknown experiment" in bad.output


def test_an_equal_generated_dataset_under_another_id_is_reused(overrides, tmp_path):
    from dawm_env.generation import GenerateConfig, generate_dataset

    ws = Workspace(_cfg("table2", overrides, tmp_path / "exp"))
    cell = next(c for c in EXPERIMENTS["table2"].cells(ws.p, ("hopper",), ("random",)) if c.method == "DAWM-TD3BC")
    real, bundle = ws.ensure_real("hopper", "random"), ws.ensure_bundle("hopper", "random")
    request = ws.generation_request(cell, real)
    by_hand = generate_dataset(GenerateConfig(bundle=str(bundle), out="mine/hopper/by-hand-v0", progress=False,
                                              threads=1, **request))
    assert ws.ensure_generated(cell, real, bundle) == by_hand
    # another horizon is a different dataset: generated under the experiment's own id
    other = replace(cell, horizon=1)
    assert ws.ensure_generated(other, real, bundle) == ws.generated_id(other)


def test_a_cell_another_process_holds_is_skipped_then_taken_over(overrides, tmp_path, count_train_calls):
    """Parallel processes on one output folder: a held cell is left to its holder (pending, ``held_by``), the
    others run; once the holder dies (its flock is dropped by the OS) a rerun runs the rest."""
    import subprocess
    import sys

    from dawm_env.experiments.registry import get_experiment
    from dawm_env.experiments.runner import Workspace, resolve_grid

    root = tmp_path / "exp"
    cfg = _cfg("table5", overrides, root)
    cells = get_experiment("table5").cells(cfg.preset, *resolve_grid(get_experiment("table5"), cfg.preset))
    claim = Workspace(cfg).claim_path(cells[0])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; p = sys.argv[1]; os.makedirs(os.path.dirname(p), "
         "exist_ok=True); f = open(p, 'a'); f.write(str(os.getpid())); f.flush(); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); time.sleep(600)", str(claim)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = run_experiment(cfg, echo=lambda _: None)
        statuses = [(r["status"], r.get("held_by")) for r in res["cells"]]
        assert statuses[0][0] == "pending" and str(holder.pid) in statuses[0][1]
        assert statuses[1] == ("done", None) and len(count_train_calls) == 1
        assert "pending" in (root / "table5" / "table.md").read_text()
    finally:
        holder.kill()
        holder.wait()
    res = run_experiment(cfg, echo=lambda _: None)
    assert res["complete"] and len(count_train_calls) == 2


def test_set_overrides_preset_fields_and_names_bad_ones(tmp_path):
    from conftest import assert_one_line_error, cli

    out = tmp_path / "exp"
    assert_one_line_error(cli("experiment", "table5", "--preset", "smoke", "--out", out, "--set", "dd_stepz=5"),
                          "unknown preset field(s) ['dd_stepz']", "dd_steps")
    assert_one_line_error(cli("experiment", "table5", "--preset", "smoke", "--out", out, "--set", "dd_preset=gpu"),
                          "unknown DDConfig preset 'gpu'")
    assert_one_line_error(cli("experiment", "table5", "--preset", "smoke", "--out", out, "--set", "horizons=[0]"),
                          "horizons needs one or more values >= 1")


def test_method_selection_runs_only_the_chosen_cells(overrides, tmp_path, count_train_calls):
    root = tmp_path / "exp"
    res = run_experiment(_cfg("table5", overrides, root, methods=("DAWM",)), echo=lambda _: None)
    assert len(count_train_calls) == 1 and not res["complete"]
    status = {r["cell"]["method"]: r["status"] for r in res["cells"]}
    assert status["DAWM"] == "done" and [s for m, s in status.items() if m != "DAWM"] == ["pending"]
    # the whole experiment afterwards runs only what is left; the selected cell stays finished
    res = run_experiment(_cfg("table5", overrides, root), echo=lambda _: None)
    assert res["complete"] and len(count_train_calls) == 2
    with pytest.raises(ValueError, match="not a method of table5"):
        _cfg("table5", overrides, root, methods=("DAWM-X",))
