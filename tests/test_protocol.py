"""The evaluation protocol's statistics: final score, bootstrap CIs, differences to real data, and their report."""

from __future__ import annotations

import numpy as np
import pytest

from dawm_env.agents.evaluation import aggregate, bootstrap_ci, difference_ci, final_scores
from dawm_env.experiments.report import agent_table, difference_table


def test_final_score_is_the_mean_of_each_seeds_last_three_evaluations():
    scores = np.array([[0.0, 10.0], [30.0, 20.0], [60.0, 40.0], [90.0, 0.0]])  # (evaluations, seeds)
    assert final_scores(scores).tolist() == [60.0, 20.0]
    assert final_scores(scores[:2]).tolist() == [15.0, 15.0]  # fewer than three: all of them
    with pytest.raises(ValueError):
        final_scores(np.zeros((0, 2)))


def test_bootstrap_ci_against_hand_computed_cases():
    assert bootstrap_ci([42.0]) == [42.0, 42.0]
    assert bootstrap_ci([5.0, 5.0, 5.0]) == [5.0, 5.0]
    # two seeds: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4 -> the 95% interval is [0, 1]
    assert bootstrap_ci([0.0, 1.0]) == [0.0, 1.0]
    lo, hi = bootstrap_ci([10.0, 20.0, 30.0, 40.0, 50.0])
    assert 10.0 < lo < 30.0 < hi < 50.0
    assert bootstrap_ci([1.0, 2.0, 7.0], seed=3) == bootstrap_ci([1.0, 2.0, 7.0], seed=3)  # reproducible
    agg = aggregate([10.0, 20.0, 60.0])
    assert agg["ci95"] == bootstrap_ci([10.0, 20.0, 60.0])


def test_difference_ci_of_independent_groups():
    d = difference_ci([50.0, 50.0], [40.0, 40.0, 40.0])
    assert d == {"mean": 10.0, "ci95": [10.0, 10.0]}
    d = difference_ci([0.0, 1.0], [0.0, 0.0])  # the second group has no spread: the interval is the first's
    assert d["mean"] == 0.5 and d["ci95"] == [0.0, 1.0]
    wide = difference_ci([30.0, 70.0, 50.0, 40.0, 60.0], [45.0, 55.0, 50.0, 48.0, 52.0])
    assert wide["ci95"][0] < 0.0 < wide["ci95"][1]  # a 0-point difference within noise is not resolved


def _record(method, algo, generated, per_seed):
    stats = aggregate(per_seed)
    return {"status": "done", "cell": {"kind": "agent", "task": "hopper", "level": "medium", "method": method,
                                        "algo": algo, "generated": generated},
            "final": stats, "last": stats, "best": stats}


def test_report_shows_final_scores_with_cis_and_differences_to_the_real_cell_of_the_same_algorithm():
    records = [_record("TD3+BC", "td3bc", False, [40.0, 42.0, 44.0]),
               _record("DAWM-TD3BC", "td3bc", True, [50.0, 52.0, 54.0]),
               _record("DWM-TD3BC", "dwm-td3bc", True, [30.0, 32.0, 34.0]),
               _record("IQL", "iql", False, [60.0, 60.0, 60.0]),
               _record("DAWM-IQL", "iql", True, [61.0, 61.0, 61.0])]
    table = difference_table(records, ["hopper-medium"], [r["cell"]["method"] for r in records])
    header, _, row = table.splitlines()
    assert "DAWM-TD3BC - TD3+BC" in header and "DWM-TD3BC - TD3+BC" in header and "DAWM-IQL - IQL" in header
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].startswith("+10.0 [") and cells[2].startswith("-10.0 [") and cells[3] == "+1.0 [+1.0, +1.0]"
    results = {"experiment": "table2", "title": "t", "cells": records, "updated": "now", "root": "r",
               "preset": {"name": "smoke", "seeds": 3, "agent_steps": 10, "eval_every": 5, "eval_episodes": 1,
                          "horizon": 7, "horizons": [7], "generation_subsample": 1, "generation_repeats": 1}}
    md = agent_table(results)
    assert "## Final score" in md and "## Difference to real data" in md and "fresh episodes" not in md
    assert f"42.0 ± {np.std([40.0, 42.0, 44.0]):.1f} [" in md
