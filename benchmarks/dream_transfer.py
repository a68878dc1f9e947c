"""Summary: agents trained inside the dream, scored in the real env (runs of ``examples/dream_sac_hopper.py``).

Each ``--group NAME=GLOB`` names the JSON summaries one configuration's seeds wrote (``--out`` of the example,
``<out>.json``). Per group: the final real score (normalised, ``--eval-episodes`` fresh episodes per seed) as
mean +- std over seeds with a 95% bootstrap CI, the mean of each seed's evaluations along the way, the dream
return per step next to the real return per step at every evaluation (the exploitation gap: what the dream
pays minus what reality pays), and each group's difference to the first group (or to ``--baseline``) with a
bootstrap CI.

    python benchmarks/dream_transfer.py --group raw='runs/raw-s*/policy.json' \\
        --group pessimistic='runs/pess-s*/policy.json' --out benchmarks/results/dream_transfer.json
"""

from __future__ import annotations

import argparse
import glob
import json

import numpy as np
from _common import add_out_argument, save_results  # benchmarks/ is on sys.path when a script runs


def bootstrap_ci(values: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap CI of the mean over seeds."""
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(n, len(values)), replace=True).mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def diff_ci(a: np.ndarray, b: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap CI of ``mean(b) - mean(a)``, resampling the seeds of each group independently."""
    rng = np.random.default_rng(seed)
    d = rng.choice(b, (n, len(b))).mean(1) - rng.choice(a, (n, len(a))).mean(1)
    return float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))


def summarize(files: list[str]) -> dict:
    """One group's figures from its seeds' summaries."""
    runs = [json.loads(open(f).read()) for f in sorted(files)]
    final = np.array([r["normalized_score_mean"] for r in runs])
    lo, hi = bootstrap_ci(final)
    steps = sorted({h["step"] for r in runs for h in r.get("history", [])})
    curve = []
    for s in steps:
        rows = [h for r in runs for h in r.get("history", []) if h["step"] == s]
        dream = [h["dream_return_per_step"] for h in rows if h["dream_return_per_step"] is not None]
        curve.append({"step": s, "seeds": len(rows),
                      "real_score_mean": float(np.mean([h["real_score"] for h in rows])),
                      "real_return_per_step": float(np.mean([h["real_return_per_step"] for h in rows])),
                      "real_episode_length": float(np.mean([h["real_episode_length"] for h in rows])),
                      "dream_return_per_step": float(np.mean(dream)) if dream else None})
    first = runs[0]
    return {"files": sorted(files), "seeds": [r["seed"] for r in runs], "final_scores": final.tolist(),
            "final_mean": float(final.mean()), "final_std": float(final.std(ddof=0)), "final_ci95": [lo, hi],
            "eval_episodes_final": len(first["real_returns"]),
            "final_real_return_mean": float(np.mean([r["real_return_mean"] for r in runs])),
            "dream_return_per_step_last100": float(np.mean([r["dream_return_per_step_last100"] for r in runs])),
            "curve": curve,
            "setting": {k: first.get(k) for k in ("algo", "timesteps", "num_envs", "horizon", "pessimism",
                                                   "dream_kwargs", "real_data", "real_fraction", "bundle")}}


def main() -> None:
    """Aggregate, print and save."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", action="append", required=True, help="NAME=GLOB of the seeds' JSON summaries")
    p.add_argument("--baseline", default=None, help="group the differences are taken to (default: the first)")
    add_out_argument(p, "dream_transfer")
    args = p.parse_args()
    groups = {}
    for g in args.group:
        name, _, pattern = g.partition("=")
        files = glob.glob(pattern)
        if not files:
            raise SystemExit(f"--group {name}: no file matches {pattern!r}")
        groups[name] = summarize(files)
    names = list(groups)
    ref = args.baseline or names[0]
    if ref not in groups:
        raise SystemExit(f"--baseline {ref}: not a group name ({', '.join(names)})")
    base = np.array(groups[ref]["final_scores"])
    for name in names:
        g = groups[name]
        line = (f"{name:>12}: final real score {g['final_mean']:.1f} +- {g['final_std']:.1f} "
                f"(95% CI {g['final_ci95'][0]:.1f} .. {g['final_ci95'][1]:.1f}, seeds {g['seeds']}), dream return "
                f"per step {g['dream_return_per_step_last100']:.2f}")
        if name != ref:
            lo, hi = diff_ci(base, np.array(g["final_scores"]))
            g["diff_to_baseline"] = {"mean": g["final_mean"] - groups[ref]["final_mean"], "ci95": [lo, hi], "vs": ref}
            line += f"; vs {ref}: {g['diff_to_baseline']['mean']:+.1f} (CI {lo:+.1f} .. {hi:+.1f})"
        print(line)
        for c in g["curve"]:
            print(f"    step {c['step']:>6}: real score {c['real_score_mean']:5.1f} (length "
                  f"{c['real_episode_length']:4.0f}, {c['real_return_per_step']:.2f}/step), dream "
                  f"{c['dream_return_per_step']:.2f}/step")
    save_results(args.out, "dream_transfer", {"groups": groups})


if __name__ == "__main__":
    main()
