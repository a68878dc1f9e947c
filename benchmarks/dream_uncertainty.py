"""Benchmark: does a dream step's uncertainty know when the dream is wrong? And what does each sampler setting cost in error?

Ground truth is MuJoCo itself: real held-out states of a dataset (only those whose observation fixes the MuJoCo
state, :meth:`TaskSpec.determines_state`) are stepped once by the dream and once by the real ``-v5`` env from the
same state with the same action. Actions come in kinds an agent in the dream produces:

- ``data``: the dataset's own action (in distribution);
- ``noisy``: the data action + N(0, 0.3^2), clipped;
- ``uniform``: uniform in [-1, 1];
- ``saturated``: the sign of the data action (every component at +-1, what SB3 SAC learned in the raw dream).

For every kind: the dream's one-step error (normalised-state MSE, reward abs error) against MuJoCo and the mean of
each uncertainty signal (``action_gap``, ``disagreement``); pooled over kinds, each signal's Spearman correlation
with the error and its AUROC at telling the worst quarter of steps from the rest. With ``--settings``, the
one-step error on data actions for each sampler setting (guidance weight, sampling steps) next to the default.

    python benchmarks/dream_uncertainty.py --bundle hopper-medium --dataset dawm-d4rl/hopper/medium-v0
"""

from __future__ import annotations

import argparse
import platform
from datetime import datetime, timezone

import numpy as np
from _common import add_out_argument, load_groundtruth, save_results  # benchmarks/ is on sys.path

KINDS = ("data", "noisy", "uniform", "saturated")


def make_actions(kind: str, data_actions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The ``(B, act_dim)`` actions of one kind (see the module docstring)."""
    if kind == "data":
        return data_actions.copy()
    if kind == "noisy":
        return np.clip(data_actions + rng.normal(0, 0.3, data_actions.shape), -1, 1).astype(np.float32)
    if kind == "uniform":
        return rng.uniform(-1, 1, data_actions.shape).astype(np.float32)
    if kind == "saturated":
        return np.where(data_actions >= 0, 1.0, -1.0).astype(np.float32)
    raise ValueError(kind)


def rank_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """AUROC of ``score`` for the boolean ``positive`` (Mann-Whitney U / (n_pos n_neg))."""
    ranks = np.argsort(np.argsort(score)) + 1.0
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main() -> None:
    """Measure and save."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="hopper-medium")
    p.add_argument("--dataset", required=True, help="real data of the bundle's task (held-out episodes are used)")
    p.add_argument("--states", type=int, default=2000, help="real start states per action kind")
    p.add_argument("--settings", nargs="*",
                   default=["1.2:3", "1.0:3", "1.0:0,3", "1.0:0,1,2,3,4", "1.0:0,4", "1.0:2,4", "1.0:2,", "1.0:3,"],
                   help="guidance:N (N evenly strided steps) or guidance:t0,t1,.. (explicit diffusion steps) settings "
                        "whose one-step error on data actions is measured")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    add_out_argument(p, "dream_uncertainty")
    args = p.parse_args()

    import torch

    from dawm_env.data.rollout import real_step_from
    from dawm_env.world_model.calibration import SIGNALS
    from dawm_env.world_model.uncertainty import dream_transition, spearman

    torch.set_num_threads(args.threads)
    bundle, data, idx, rng, std = load_groundtruth(args.bundle, args.dataset, args.states, args.seed)
    task = bundle.task
    s, prev, a_data = data.observations[idx], data.observations[idx - 1], data.actions[idx]
    rtg = float(max(task.gen_rtg_range))
    gen = torch.Generator().manual_seed(args.seed)

    per_kind, pooled_err, pooled_u = {}, [], {n: [] for n in SIGNALS}
    for kind in KINDS:
        a = make_actions(kind, a_data, rng)
        real_next, real_rew, _ = real_step_from(task, s, a)
        step = dream_transition(bundle, s, a, rtg, gen, SIGNALS, prev_states=prev)
        err = (((step.next_states - real_next) / std) ** 2).mean(-1)
        per_kind[kind] = {
            "state_mse": float(err.mean()), "state_mse_median": float(np.median(err)),
            "reward_mae": float(np.abs(step.rewards - real_rew).mean()),
            "dream_reward_mean": float(step.rewards.mean()), "real_reward_mean": float(real_rew.mean()),
            **{f"{n}_mean": float(step.signals[n].mean()) for n in SIGNALS},
            **{f"{n}_median": float(np.median(step.signals[n])) for n in SIGNALS},
        }
        pooled_err.append(err)
        for n in SIGNALS:
            pooled_u[n].append(step.signals[n])
        print(f"{kind:>9}: one-step state MSE {err.mean():.4f} (median {np.median(err):.4f}), reward MAE "
              f"{per_kind[kind]['reward_mae']:.3f}, dream / real reward {step.rewards.mean():.2f} / "
              f"{real_rew.mean():.2f}, " + ", ".join(f"{n} {step.signals[n].mean():.3f}" for n in SIGNALS))
    err = np.concatenate(pooled_err)
    worst = err >= np.percentile(err, 75)
    ood = np.repeat(np.array([k != "data" for k in KINDS]), len(idx))
    signal_quality = {}
    for n in SIGNALS:
        u = np.concatenate(pooled_u[n])
        signal_quality[n] = {"spearman_with_error": spearman(u, err), "auroc_worst_quarter": rank_auc(u, worst),
                             "auroc_ood_action": rank_auc(u, ood)}
        print(f"{n}: Spearman with error {signal_quality[n]['spearman_with_error']:.3f}, AUROC worst quarter "
              f"{signal_quality[n]['auroc_worst_quarter']:.3f}, AUROC out-of-data action "
              f"{signal_quality[n]['auroc_ood_action']:.3f}")

    settings = {}
    real_next, _, _ = real_step_from(task, s, a_data)
    for text in args.settings:
        w, sched = text.split(":")
        if "," in sched:
            steps = [int(t) for t in sched.split(",") if t]
            kw = {"timesteps": steps}
        else:
            kw = {"sampling_steps": int(sched)}
        step = dream_transition(bundle, s, a_data, rtg, gen, (), guidance=float(w), **kw)
        e = (((step.next_states - real_next) / std) ** 2).mean(-1)
        settings[text] = {"guidance_weight": float(w), **kw, "state_mse": float(e.mean()),
                          "state_mse_median": float(np.median(e))}
        print(f"w = {w}, {kw}: one-step state MSE on data actions {e.mean():.4f} (median {np.median(e):.4f})")

    save_results(args.out, "dream_uncertainty", {
        "bundle": str(bundle.path), "dataset": args.dataset, "states": int(len(idx)), "rtg_target": rtg,
        "kinds": per_kind, "signals": signal_quality, "settings": settings, "threads": args.threads,
        "machine": platform.processor() or platform.machine(), "date": datetime.now(timezone.utc).isoformat(),
        "note": "ground truth: the real -v5 env stepped from the same held-out states (self-built D4RL-style data)",
    })


if __name__ == "__main__":
    main()
