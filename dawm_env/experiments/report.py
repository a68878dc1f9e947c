"""Reports of demo and experiment runs: score formatting, markdown tables and matplotlib plots.

Everything here reads plain dicts (an agent run's ``results.json`` / ``curves.json``, the experiment
runner's cell records) so reports can be rebuilt from disk without loading a model or a dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from dawm_env.agents.evaluation import difference_ci
from dawm_env.agents.train import BASE_ALGO
from dawm_env.paths import atomic_write_json, atomic_write_text
from dawm_env.plotting import finish_figure, plot_learning_curves, pyplot
from dawm_env.tasks import level_overlap

log = logging.getLogger(__name__)

#: Shown in a table cell without a result (not run yet, or skipped).
MISSING = "n/a"


def format_score(stats: Optional[Mapping], digits: int = 1) -> str:
    """``"mean ± std"`` of an :func:`dawm_env.agents.evaluation.aggregate` dict; :data:`MISSING` for None."""
    if not stats:
        return MISSING
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def format_ci(stats: Optional[Mapping], digits: int = 1) -> str:
    """``"mean ± std [low, high]"`` (95% bootstrap CI of the mean) of an aggregate dict; :data:`MISSING` for None."""
    if not stats:
        return MISSING
    if "ci95" not in stats:  # a record written before CIs were reported
        return format_score(stats, digits)
    lo, hi = stats["ci95"]
    return f"{format_score(stats, digits)} [{lo:.{digits}f}, {hi:.{digits}f}]"


def format_difference(diff: Optional[Mapping], digits: int = 1) -> str:
    """``"+d [low, high]"`` of a :func:`~dawm_env.agents.evaluation.difference_ci` dict; :data:`MISSING` for None."""
    if not diff:
        return MISSING
    lo, hi = diff["ci95"]
    return f"{diff['mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table (first column left-aligned, the others right-aligned)."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def average_row(per_row_means: Sequence[Sequence[Optional[float]]]) -> list[Optional[float]]:
    """Column-wise mean over rows of per-row mean scores; None for a column with any missing entry
    (an average over a subset of environments would not compare with the other columns)."""
    if not per_row_means:
        return []
    cols = list(zip(*per_row_means))
    return [None if any(v is None for v in col) else float(np.mean(col)) for col in cols]


def plot_grouped_bars(groups: Sequence[str], labels: Sequence[str], means: Sequence[Sequence[Optional[float]]],
                      stds: Sequence[Sequence[Optional[float]]], path: Path, title: str, ylabel: str
                      ) -> Optional[Path]:
    """Grouped bar chart: one group per entry of ``groups``, one bar per label, error bars = ``stds``.

    ``means[g][l]`` / ``stds[g][l]`` may be None (drawn as an empty slot).
    """
    if not groups or not labels:
        return None
    plt = pyplot()
    n_g, n_l = len(groups), len(labels)
    width = 0.8 / n_l
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + n_g * n_l * 0.45), 4.2))
    x = np.arange(n_g)
    for j, label in enumerate(labels):
        m = np.array([np.nan if means[g][j] is None else means[g][j] for g in range(n_g)], dtype=float)
        has_err = any(stds[g][j] is not None for g in range(n_g))
        s = np.array([0.0 if stds[g][j] is None else stds[g][j] for g in range(n_g)], dtype=float)
        ax.bar(x - 0.4 + width * (j + 0.5), m, width, yerr=s if has_err else None, capsize=3, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=20 if n_g > 3 else 0, ha="right" if n_g > 3 else "center")
    ax.set_ylabel(ylabel)
    return finish_figure(fig, ax, path, title, grid_axis="y")


def plot_lines(xs: Sequence[float], series: Mapping[str, tuple[Sequence[Optional[float]], Sequence[Optional[float]]]],
               path: Path, title: str, xlabel: str, ylabel: str) -> Optional[Path]:
    """Lines with error bars: ``{label: (means, stds)}`` over ``xs`` (None entries are skipped)."""
    if not series:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for label, (means, stds) in series.items():
        pts = [(x, m, s or 0.0) for x, m, s in zip(xs, means, stds) if m is not None]
        if pts:
            px, pm, ps = zip(*pts)
            ax.errorbar(px, pm, yerr=ps, marker="o", capsize=3, label=label)
    ax.set_xticks(list(xs))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return finish_figure(fig, ax, path, title)


# --- experiment reports -------------------------------------------------------------------------------
RESULTS_FILE, TABLE_FILE = "results.json", "table.md"


def _score_grid(records: list[dict], envs: list[str], methods: list[str], which: str) -> list[list[Optional[dict]]]:
    """``grid[env][method]`` = the ``which`` (``last`` / ``best``) score dict of a finished cell, or None."""
    done = {(r["cell"]["task"] + "-" + r["cell"]["level"], r["cell"]["method"]): r.get(which)
            for r in records if r["status"] == "done"}
    return [[done.get((e, m)) for m in methods] for e in envs]


def _real_baselines(records: list[dict]) -> dict[tuple[str, str], str]:
    """``(env, method) -> method`` of the real-data cell of the same base algorithm (TD3+BC for DAWM-TD3BC, DWM-TD3BC,
    SSORL-TD3BC, ...), for every synthetic-data or model-based cell that has one in the same env. The baseline runs the
    algorithm's default settings (no ``alpha`` lever), so a real-data cell with a lever is compared to it too."""
    real = {(r["cell"]["task"] + "-" + r["cell"]["level"], r["cell"]["algo"]): r["cell"]["method"]
            for r in records if r["cell"]["kind"] == "agent" and not r["cell"]["generated"]
            and BASE_ALGO.get(r["cell"]["algo"]) == r["cell"]["algo"] and r["cell"].get("alpha") is None}
    out = {}
    for r in records:
        c = r["cell"]
        env, base = c["task"] + "-" + c["level"], BASE_ALGO.get(c["algo"])
        if base is not None and (env, base) in real and real[(env, base)] != c["method"]:
            out[(env, c["method"])] = real[(env, base)]
    return out


def difference_table(records: list[dict], envs: list[str], methods: list[str], which: str = "final") -> Optional[str]:
    """Markdown table of each cell's ``which`` score minus its real-data baseline's (:func:`_real_baselines`), with
    the 95% bootstrap CI of the difference (seeds of the two cells resampled independently); None without pairs."""
    pairs = _real_baselines(records)
    cols = [m for m in methods if any((e, m) in pairs for e in envs)]
    if not cols:
        return None
    grid = dict(zip(((e, m) for e in envs for m in methods),
                    (s for row in _score_grid(records, envs, methods, which) for s in row)))
    rows = []
    for e in envs:
        row = [e]
        for m in cols:
            a, b = grid.get((e, m)), grid.get((e, pairs.get((e, m), "")))
            row.append(format_difference(difference_ci(a["per_seed"], b["per_seed"])) if a and b else MISSING)
        rows.append(row)
    header = ["env"] + [f"{m} - {pairs[next(e for e in envs if (e, m) in pairs), m]}" for m in cols]
    return markdown_table(header, rows)


def _ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def agent_table(results: dict) -> str:
    """``table.md`` of an agent experiment: last and best score tables, the budget, unfinished cells."""
    records = results["cells"]
    envs = _ordered(r["cell"]["task"] + "-" + r["cell"]["level"] for r in records)
    methods = _ordered(r["cell"]["method"] for r in records)
    p = results["preset"]
    lines = [f"# {results['experiment']}: {results['title']}", "",
             f"Preset `{p['name']}`: {p['seeds']} seed(s) x {p['agent_steps']} gradient steps, evaluation every "
             f"{p['eval_every']} steps with {p['eval_episodes']} real episode(s) per seed; generation H = "
             f"{p['horizon']} (table6: {', '.join(map(str, p['horizons']))}), from 1/{p['generation_subsample']} of "
             f"the real (s, a) pairs x {p['generation_repeats']} rollout(s).", "",
             "Scores: D4RL-normalised returns (x100) on the Gymnasium `-v5` envs, mean ± std (population) over "
             "seeds [95% bootstrap CI of the mean over seeds], on dawm's self-built D4RL-style datasets: not "
             "comparable with the paper's D4RL v2 numbers.", ""]
    tables = [("final", "Final score (each seed: mean of its last 3 evaluations)"),
              ("fresh", f"Final policies on {p.get('fresh_episodes')} fresh episodes per seed"),
              ("last", "Last evaluation"), ("best", "Best evaluation (per seed, over the learning curve)")]
    for which, title in tables:
        grid = _score_grid(records, envs, methods, which)
        if which == "fresh" and not any(s for row in grid for s in row):
            continue
        rows = [[e] + [format_ci(s) for s in row] for e, row in zip(envs, grid)]
        if len(envs) > 1:
            avg = average_row([[None if s is None else s["mean"] for s in row] for row in grid])
            rows.append(["average"] + [MISSING if a is None else f"{a:.1f}" for a in avg])
        lines += [f"## {title}", "", markdown_table(["env", *methods], rows), ""]
        if which == "final":
            diff = difference_table(records, envs, methods, "final")
            if diff:
                lines += ["## Difference to real data (final score, same algorithm) [95% bootstrap CI]", "", diff,
                          ""]
    lines += _status_lines(results)
    return "\n".join(lines)


def _status_lines(results: dict) -> list[str]:
    lines = []
    open_cells = [r for r in results["cells"] if r["status"] != "done"]
    if open_cells:
        lines += ["## Cells without a result", ""]
        for r in open_cells:
            c = r["cell"]
            what = c.get("method") or f"on {c.get('data_level')}"
            reason = f" ({r['reason']})" if r.get("reason") else ""
            lines.append(f"- {c['task']}-{c['level']} {what}: {r['status']}{reason}")
        lines.append("")
    if results.get("note"):
        lines += [f"Note: {results['note']}", ""]
    lines.append(f"Updated {results['updated']}; runs and records under `{results['root']}`.")
    lines.append("")
    return lines


#: Labels of a consistency row's split (table, plot), by how much of the data the bundle was trained on.
_SPLITS = {"same": ("in distribution", "ID"), "contained": ("in the bundle's training data", "train"),
           "half": ("half in the bundle's training data", "half"), "none": ("out of distribution", "OOD")}


def _split(record: dict) -> tuple[str, str]:
    """(table label, plot label) of a consistency row's split."""
    if record["in_distribution"]:
        return _SPLITS["same"]
    return _SPLITS[level_overlap(record["cell"]["level"], record["cell"]["data_level"])]


def consistency_table(results: dict) -> str:
    """``table.md`` of the consistency experiment."""
    done = [r for r in results["cells"] if r["status"] == "done"]
    header = ["task", "bundle level", "data level", "split", "IDM action MAE (real)", "IDM NLL (real)",
              "action consistency MAE (generated s')", "state MSE (norm., mean over h)", "reward MAE", "windows"]
    rows = []
    for r in done:
        c, m = r["cell"], r["metrics"]
        rows.append([c["task"], c["level"], c["data_level"], _split(r)[0],
                     f"{m['idm_action_mae']:.3f}", f"{m['idm_nll']:.2f}", f"{m['action_consistency_mae']:.3f}",
                     f"{m['state_mse_mean']:.3f}", f"{m['reward_mae']:.3f}", m["heldout_windows"]])
    lines = [f"# {results['experiment']}: {results['title']}", "",
             "IDM action MAE / NLL: the bundle's IDM on real (s_{t-1}, s_t, s_{t+1}) of the data (in distribution: the "
             "episodes held out from the bundle's training). Action consistency: MAE between IDM(s_{t-1}, s_t, "
             "generated s_{t+1}) and the real a_t the world model was conditioned on (generation conditioned on the "
             "window's real return-to-go). Actions lie in [-1, 1].", "",
             markdown_table(header, rows) if rows else "(no finished cell)", ""]
    lines += _status_lines(results)
    return "\n".join(lines)


def timing_table(results: dict) -> str:
    """``table.md`` of ``table3``: per-episode inference time of each method, and its ratio to DAWM-TD3BC's."""
    done = [r for r in results["cells"] if r["status"] == "done"]
    per_env: dict[str, dict[str, dict]] = {}
    for r in done:
        per_env.setdefault(f"{r['cell']['task']}-{r['cell']['level']}", {})[r["cell"]["method"]] = r
    rows = []
    for env, by_method in per_env.items():
        ref = by_method.get("DAWM-TD3BC")
        for method, r in by_method.items():
            # per step: episodes end at a fall, so per-episode times of methods that fall at different steps
            # do not compare
            ratio = f"{r['ms_per_step'] / ref['ms_per_step']:.0f}x" if ref and ref["ms_per_step"] > 0 else MISSING
            rows.append([env, method, format_score(r["inference"], 3), f"{np.mean(r['episode_seconds']):.3f}",
                         f"{r['ms_per_step']:.3f}",
                         f"{np.mean(r['steps']):.0f}", f"{np.mean(r['normalized']):.1f}", ratio])
    hw = done[0]["hardware"] if done else {}
    lines = [f"# {results['experiment']}: {results['title']}", "",
             "Inference seconds per real episode (mean ± std over episodes; policy calls only), one episode at a time "
             "(batch 1), and the whole episode with the MuJoCo steps; episodes end at a fall, so compare ms / step "
             "(inference per real step) across methods. Measured in "
             f"one process on {hw.get('cpu', '?')} ({hw.get('logical_cores', '?')} logical cores, "
             f"{hw.get('torch_threads', '?')} torch thread(s), device {hw.get('device', '?')}).", "",
             markdown_table(["env", "method", "inference s / episode", "s / episode with env steps", "ms / step", "steps / episode",
                             "normalised score", "ms / step vs DAWM-TD3BC"], rows) if rows else "(no finished cell)", ""]
    lines += _status_lines(results)
    return "\n".join(lines)


def write_experiment_report(exp, results: dict, folder: Path) -> list[str]:
    """Write ``results.json``, ``table.md`` and the plots of an experiment into ``folder``; returns the plot names."""

    folder.mkdir(parents=True, exist_ok=True)
    plots: list[Optional[Path]] = []
    if exp.kind == "consistency":
        table = consistency_table(results)
        done = [r for r in results["cells"] if r["status"] == "done"]
        bundles = _ordered(f"{r['cell']['task']}-{r['cell']['level']}" for r in done)
        groups = [(f"{r['cell']['task']}-{r['cell']['level']}: " if len(bundles) > 1 else "")
                  + f"{r['cell']['data_level']} ({_split(r)[1]})" for r in done]
        vals = [[r["metrics"]["idm_action_mae"], r["metrics"]["action_consistency_mae"]] for r in done]
        plots.append(plot_grouped_bars(groups, ["IDM action MAE (real s')", "action consistency MAE (generated s')"],
                                       vals, [[None, None]] * len(vals), folder / "consistency.png",
                                       f"IDM action error, bundle {', '.join(bundles)}",
                                       "MAE (actions in [-1, 1])"))
    elif exp.kind == "timing":
        table = timing_table(results)
    else:
        table = agent_table(results)
        plots += _agent_plots(exp, results, folder)
    results["plots"] = [p.name for p in plots if p is not None]
    atomic_write_json(folder / RESULTS_FILE, results)
    atomic_write_text(folder / TABLE_FILE, table)
    return results["plots"]


def _agent_plots(exp, results: dict, folder: Path) -> list[Optional[Path]]:
    records = results["cells"]
    envs = _ordered(r["cell"]["task"] + "-" + r["cell"]["level"] for r in records)
    methods = _ordered(r["cell"]["method"] for r in records)
    grid = _score_grid(records, envs, methods, "last")
    means = [[None if s is None else s["mean"] for s in row] for row in grid]
    stds = [[None if s is None else s["std"] for s in row] for row in grid]
    plots = [plot_grouped_bars(envs, methods, means, stds, folder / "scores.png",
                               f"{exp.name}: last normalised score (mean ± std over seeds)", "normalised score")]
    for env in envs:
        # every finished agent record carries its evaluation curve (the runner backfills older ones)
        series = {r["cell"]["method"]: r["curve"] for r in records
                  if r["status"] == "done" and r.get("curve") and r["cell"]["task"] + "-" + r["cell"]["level"] == env}
        plots.append(plot_learning_curves(series, folder / f"curves-{env}.png", f"{exp.name}: {env}"))
    if exp.name == "table6":  # the paper's question: does the horizon matter, for DAWM and DWM?
        hs = list(results["preset"]["horizons"])
        series = {}
        for e_i, env in enumerate(envs):
            for family in ("DAWM", "DWM"):
                idx = [methods.index(f"{family}_{h}") if f"{family}_{h}" in methods else None for h in hs]
                series[f"{env} {family}"] = ([None if i is None else means[e_i][i] for i in idx],
                                             [None if i is None else stds[e_i][i] for i in idx])
        plots.append(plot_lines(hs, series, folder / "horizons.png", "table6: score over generation horizon",
                                "H (generated transitions per rollout)", "last normalised score"))
    return plots
