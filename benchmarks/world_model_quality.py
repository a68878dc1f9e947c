"""Benchmark: world-model quality vs training wall-clock, from a run trained with ``--eval-every``.

``dawm train world-model ... --eval-every 1000`` makes the training loop sample a fixed set of held-out
windows with the EMA model every 1000 steps and record the held-out state MSE per horizon step and the
reward MAE against the training wall-clock (``OUT/quality_curve.json``). This script turns that record into
a plot and a results JSON, and reports where the curve flattens: the first evaluation whose mean state
MSE is within ``--tolerance`` (relative) of the best one.

Wall-clock depends on what else ran on the machine during training; ``--quiet-steps-per-s`` (the training
speed measured by ``world_model_speed.py`` on an idle machine) adds an "idle-machine minutes" axis
computed from the step count, which is the figure to compare recipes with.

    python benchmarks/world_model_quality.py ~/.dawm/runs/hopper-medium-replay --quiet-steps-per-s 12.1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import add_out_argument, save_results  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    """Read the curve, print the table, save the PNG and the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="world-model run folder holding quality_curve.json")
    p.add_argument("--quiet-steps-per-s", type=float, default=None,
                   help="training steps/s of this preset on an idle machine (adds idle-machine minutes)")
    p.add_argument("--tolerance", type=float, default=0.05, help="relative distance to the best MSE")
    p.add_argument("--name", default=None, help="results name (default: the run folder's name)")
    add_out_argument(p, "world_model_quality")
    args = p.parse_args()

    run = Path(args.run).expanduser()
    if not (run / "quality_curve.json").is_file():
        raise SystemExit(f"{run} has no quality_curve.json: train the world model with --eval-every N (and --out {run}) "
                         "to record its held-out quality curve")
    record = json.loads((run / "quality_curve.json").read_text())
    curve = record["curve"]
    if not curve:
        raise SystemExit(f"{run}/quality_curve.json has no evaluations yet")
    name = args.name or run.name
    for point in curve:
        if args.quiet_steps_per_s:
            point["idle_minutes"] = point["step"] / args.quiet_steps_per_s / 60
    best = min(curve, key=lambda q: q["state_mse_mean"])
    enough = next(q for q in curve if q["state_mse_mean"] <= best["state_mse_mean"] * (1 + args.tolerance))

    print(f"{name}: {record['dataset']} (preset {record['preset']}, {record['eval_windows']} held-out windows)")
    print(f"{'step':>6} {'train min':>9} {'idle min':>8} {'MSE h=1':>8} {'MSE h=H':>8} {'MSE mean':>8} {'rew MAE':>8}")
    for q in curve:
        idle = f"{q['idle_minutes']:8.1f}" if "idle_minutes" in q else f"{'-':>8}"
        print(f"{q['step']:6d} {q['train_seconds'] / 60:9.1f} {idle} {q['state_mse_per_step'][0]:8.4f} "
              f"{q['state_mse_per_step'][-1]:8.4f} {q['state_mse_mean']:8.4f} {q['reward_mae']:8.4f}")
    print(f"best mean state MSE {best['state_mse_mean']:.4f} at step {best['step']}; within "
          f"{args.tolerance:.0%} of it from step {enough['step']}")

    summary = {"run": str(run), **{k: record[k] for k in ("dataset", "preset", "eval_windows")},
               "quiet_steps_per_s": args.quiet_steps_per_s, "tolerance": args.tolerance,
               "best_step": best["step"], "enough_step": enough["step"], "curve": curve}
    json_path = save_results(args.out, f"world_model_quality_{name}", summary)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_idle = args.quiet_steps_per_s is not None
    x = [q["idle_minutes"] if use_idle else q["train_seconds"] / 60 for q in curve]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    horizon = len(curve[0]["state_mse_per_step"])
    for h in sorted({0, horizon // 2, horizon - 1}):
        ax1.plot(x, [q["state_mse_per_step"][h] for q in curve], marker="o", label=f"h = {h + 1}")
    ax1.plot(x, [q["state_mse_mean"] for q in curve], "k--", label="mean")
    ax1.set(xlabel="idle-machine minutes" if use_idle else "training minutes", ylabel="held-out state MSE (normalised)",
            yscale="log", title=name)
    ax1.legend()
    ax2.plot(x, [q["reward_mae"] for q in curve], marker="o")
    ax2.set(xlabel=ax1.get_xlabel(), ylabel="held-out reward MAE", title="reward")
    fig.tight_layout()
    png = json_path.with_suffix(".png")
    fig.savefig(png, dpi=100)
    print(f"saved {png}")


if __name__ == "__main__":
    main()
