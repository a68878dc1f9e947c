"""`dawm demo` end to end at a tiny budget, from the shipped bundle alone (no real dataset, no network)."""

from __future__ import annotations

import json

import minari
from typer.testing import CliRunner

from dawm_env.cli import app
from dawm_env.experiments.demo import DemoConfig, run_demo


def test_demo_writes_reports_and_reuses_finished_stages(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--pairs", "48", "--repeats", "1", "--steps", "20", "--seeds", "2",
            "--eval-every", "10", "--eval-episodes", "1", "--threads", "1", "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "normalised score on Hopper-v5" in res.output
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "hopper" and results["seed_pairs"] == 48
    assert results["generation"]["episodes"] == 48 and 0 < results["generation"]["transitions"] <= 48 * 7
    assert len(results["final_evaluation"]["per_seed"]) == 2 and results["last"]["step"] == 20
    assert isinstance(results["timings"]["train_seconds"], float)
    summary = (out / "summary.md").read_text()
    assert "TD3+BC" in summary and " ± " in summary and "learning_curve.png" in summary
    assert (out / "learning_curve.png").stat().st_size > 1000
    # the generated data lives in the run folder's own Minari root, not the user's
    assert results["generated_dataset"] not in minari.list_local_datasets()
    assert (out / "minari" / results["generated_dataset"]).is_dir()

    again = run_demo(DemoConfig(out=str(out), pairs=48, repeats=1, steps=20, seeds=2, eval_every=10, eval_episodes=1,
                                threads=1, progress=False), echo=lambda _: None)
    assert again["timings"]["generate_seconds"] == "reused"
    assert again["timings"]["train_seconds"] == "reused"
    assert again["timings"]["evaluate_seconds"] == "reused"
    assert again["final_evaluation"] == results["final_evaluation"]


def test_demo_rejects_bad_settings(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--steps", "0"])
    assert res.exit_code == 2 and "steps" in res.output
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--bundle", "no-such-bundle"])
    assert res.exit_code == 2 and "no bundle" in res.output
