"""Benchmark: does a bundle generate falls (early terminations) as often as the real data holds them?

Three figures per bundle, on its own real dataset (every figure uses the bundle's default guidance, temperature
and sampling steps; the termination is the task's function applied to the generated states, as in
``dawm generate``):

- fall recall: from real transitions whose real next state is terminal, the fraction whose generated next
  state (H = 1, conditioned on the real ``(s_t, a_t)``) is terminal too;
- false falls: the same from real transitions whose next state is not terminal (should be ~0);
- early terminations: the fraction of H = 7 rollouts from random real pairs that terminate, next to the
  fraction of real 7-step futures from the same pairs that do.

``--compare-observation-bounds`` repeats them with the sampling clamp's state bounds taken from
``observations`` only (how dawm computed them before the fix: in hopper that range excludes every terminal
state, so no generated state could be one).

Saves a new JSON file (``--out``, default ``benchmarks/results/runs/generated_falls-<UTC time>.json``).

    python benchmarks/generated_falls.py hopper-medium=dawm-d4rl/hopper/medium-v0 --compare-observation-bounds
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from _common import add_out_argument, save_results  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parent.parent


def real_early_terminations(data, idx: np.ndarray, horizon: int) -> float:
    """Fraction of real pairs ``idx`` whose episode terminates within the next ``horizon`` transitions."""
    last = data.episode_offsets[1:][data.episode_ids()[idx]] - 1  # last transition of each pair's episode
    return float(np.mean(data.terminations[last] & (last - idx < horizon)))


def fall_figures(bundle, data, n_terminal: int, n_live: int, n_rollouts: int, horizon: int, seed: int) -> dict:
    """The three figures of the module docstring for one bundle and its data."""
    from dawm_env.generation.rollouts import RolloutConfig, RolloutGenerator

    rng = np.random.default_rng(seed)
    terminal, live = np.flatnonzero(data.terminations), np.flatnonzero(~data.terminations)
    if len(terminal) == 0:
        raise SystemExit(f"{data.source} has no terminal transition: nothing to compare falls with")
    ti = rng.choice(terminal, min(n_terminal, len(terminal)), replace=False)
    li = rng.choice(live, min(n_live, len(live)), replace=False)
    ri = rng.choice(data.num_transitions, min(n_rollouts, data.num_transitions), replace=False)
    one = RolloutGenerator(bundle, RolloutConfig(horizon=1))
    recall = one.generate(data.observations[ti], data.actions[ti], one.new_generator(seed)).terminated.mean()
    false = one.generate(data.observations[li], data.actions[li], one.new_generator(seed + 1)).terminated.mean()
    many = RolloutGenerator(bundle, RolloutConfig(horizon=horizon))
    rolls = many.generate(data.observations[ri], data.actions[ri], many.new_generator(seed + 2))
    return {"fall_recall": float(recall), "false_falls": float(false),
            "early_terminations": float(rolls.terminated.mean()), "mean_length": float(rolls.lengths.mean()),
            "real_early_terminations": real_early_terminations(data, ri, horizon),
            "n_terminal": len(ti), "n_live": len(li), "n_rollouts": len(ri), "horizon": horizon}


def main() -> None:
    """Measure every ``bundle=dataset`` pair, print and save the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pairs", nargs="+", help="BUNDLE=DATASET: a bundle (name or folder) and its real dataset id")
    p.add_argument("--terminal", type=int, default=1000, help="real terminal transitions to condition on")
    p.add_argument("--live", type=int, default=4000, help="real non-terminal transitions to condition on")
    p.add_argument("--rollouts", type=int, default=20000, help="H-step rollouts for the early-termination rate")
    p.add_argument("--horizon", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    add_out_argument(p, "generated_falls")
    p.add_argument("--compare-observation-bounds", action="store_true",
                   help="also measure with the pre-fix clamp (state bounds from observations only)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from dawm_env.data.loading import load_dataset
    from dawm_env.world_model.bundle import Bundle

    rows = []
    for pair in args.pairs:
        bundle_name, _, dataset_id = pair.partition("=")
        if not dataset_id:
            raise SystemExit(f"{pair!r}: give BUNDLE=DATASET, e.g. hopper-medium=dawm-d4rl/hopper/medium-v0")
        bundle, data = Bundle.load(bundle_name), load_dataset(dataset_id)
        wm, o = bundle.world_model, data.obs_dim
        clamps = {"fixed": (wm.x0_low.clone(), wm.x0_high.clone())}
        if args.compare_observation_bounds:
            live = torch.as_tensor(bundle.stats.normalize_obs(data.observations), dtype=torch.float32)
            low, high = clamps["fixed"][0].clone(), clamps["fixed"][1].clone()
            low[:o], high[:o] = live.min(0).values, live.max(0).values
            clamps["observations only (pre-fix)"] = (low, high)
        for clamp, bounds in clamps.items():
            wm.set_x0_bounds(*bounds)
            row = {"bundle": bundle_name, "dataset": dataset_id, "clamp": clamp,
                   **fall_figures(bundle, data, args.terminal, args.live, args.rollouts, args.horizon, args.seed)}
            rows.append(row)
            print(f"{bundle_name} on {dataset_id}, clamp {clamp}: fall recall {row['fall_recall']:.3f}, false falls "
                  f"{row['false_falls']:.4f}, H = {args.horizon} early terminations {row['early_terminations']:.4f} "
                  f"(real {row['real_early_terminations']:.4f})", flush=True)
    save_results(args.out, "generated_falls", {"benchmark": "generated_falls",
                                               "date": datetime.now(timezone.utc).isoformat(),
                                               "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
