"""How noisy is a final score? Train one K-seed agent cell long, read the protocol's final score at several budgets.

The issue's protocol: a seed's final score is the mean of its last 3 evaluations (10 episodes each), the cell
reports mean +- std over seeds and a 95% bootstrap CI; after training every seed plays 50 fresh episodes. This
script trains one cell (resumable: rerun the same command after a kill), reads the final score at every
``--budgets`` step from the same learning curves (TD3+BC has no step schedule, so the score at 100k of a 200k run
is the score of a 100k run), and states the half-width of the 95% CI of a difference between two cells with
this spread: the smallest difference the budget can resolve.

    python benchmarks/agent_noise.py --dataset dawm-d4rl/hopper/medium-v0 --steps 200000 --budgets 100000 200000 \
        --precision bf16 --runs ~/.dawm/noise/td3bc-bf16 --out benchmarks/results/agent_noise_bf16.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import add_out_argument, save_results

from dawm_env.agents.evaluation import FINAL_EVALUATIONS, aggregate, difference_ci, final_scores
from dawm_env.agents.train import TrainAgentConfig, evaluate_run, train_agent
from dawm_env.runtime import machine_info


def budget_scores(curves: dict, budget: int) -> dict:
    """The protocol's final score of every seed from the evaluations at steps <= ``budget``."""
    steps = np.asarray(curves["steps"])
    keep = steps <= budget
    if not keep.any():
        raise SystemExit(f"no evaluation at or before step {budget}")
    scores = np.array([curves["normalized"][str(s)] for s in curves["seeds"]]).T[keep]  # (evaluations, K)
    per_seed = final_scores(scores)
    agg = aggregate(per_seed)
    # a difference between two cells with this spread: the CI of mean(x) - mean(x') with x' an independent copy
    diff = difference_ci(per_seed, per_seed, seed=1)
    return {"budget": budget, "evaluation_steps": steps[keep][-FINAL_EVALUATIONS:].tolist(), "final": agg,
            "last": aggregate(scores[-1]), "ci95_halfwidth": (agg["ci95"][1] - agg["ci95"][0]) / 2,
            "difference_ci95_halfwidth": (diff["ci95"][1] - diff["ci95"][0]) / 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True, help="real dataset (Minari id or file)")
    ap.add_argument("--algo", default="td3bc", help="td3bc or iql")
    ap.add_argument("--synthetic", default=None, help="optional generated dataset to train on")
    ap.add_argument("--real-fraction", type=float, default=None, help="with --synthetic: real share of each batch")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200_000)
    ap.add_argument("--budgets", type=int, nargs="+", default=[100_000, 200_000])
    ap.add_argument("--eval-every", type=int, default=10_000)
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--fresh-episodes", type=int, default=50)
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="algorithm config overrides, e.g. alpha=10 (values parsed as JSON)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", required=True, help="run folder (rerun to resume)")
    add_out_argument(ap, "agent_noise")
    args = ap.parse_args()
    if max(args.budgets) > args.steps:
        raise SystemExit(f"--budgets {max(args.budgets)} exceeds --steps {args.steps}")
    overrides = {"bf16": args.precision == "bf16"}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = json.loads(value)

    t0 = time.perf_counter()
    run = train_agent(TrainAgentConfig(
        algo=args.algo, dataset=args.dataset, synthetic=args.synthetic, real_fraction=args.real_fraction,
        out=args.runs, steps=args.steps, seeds=args.seeds, eval_every=args.eval_every,
        eval_episodes=args.eval_episodes, algo_overrides=overrides, threads=args.threads, progress=False))
    fresh = evaluate_run(run, episodes=args.fresh_episodes)
    wall = time.perf_counter() - t0
    curves = json.loads((Path(run) / "curves.json").read_text())
    results = json.loads((Path(run) / "results.json").read_text())
    out = {
        "benchmark": "agent_noise", "dataset": args.dataset, "synthetic": args.synthetic,
        "real_fraction": args.real_fraction, "algo": args.algo, "precision": args.precision,
        "overrides": overrides, "seeds": curves["seeds"], "steps": args.steps, "eval_every": args.eval_every,
        "eval_episodes": args.eval_episodes, "budgets": [budget_scores(curves, b) for b in args.budgets],
        "fresh": {"episodes": args.fresh_episodes, "step": fresh["step"], "normalized": fresh["normalized"]},
        "train_seconds": results["train_seconds"], "eval_seconds": results["eval_seconds"],
        "steps_per_second_per_seed": results["steps_per_second_per_seed"],
        "wall_seconds_this_call": wall, "machine": machine_info(),
        "curves": {"steps": curves["steps"], "normalized": curves["normalized"]},
        "note": "self-built D4RL-style data (not D4RL); D4RL-normalised scores on the -v5 env; std over seeds ddof=0; "
                "difference_ci95_halfwidth: 95% bootstrap CI half-width of a difference between two cells with "
                "this spread (the smallest resolvable difference).",
    }
    for b in out["budgets"]:
        f = b["final"]
        print(f"{args.algo} {args.precision} @ {b['budget']}: final {f['mean']:.1f} +- {f['std']:.1f} "
              f"CI [{f['ci95'][0]:.1f}, {f['ci95'][1]:.1f}]  difference resolvable +-{b['difference_ci95_halfwidth']:.1f}")
    print(f"fresh {args.fresh_episodes} episodes: {fresh['normalized']['mean']:.1f} +- {fresh['normalized']['std']:.1f}")
    save_results(args.out, "agent_noise", out)


if __name__ == "__main__":
    main()
