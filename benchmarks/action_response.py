"""Does a bundle's world model follow the action it is conditioned on?

The critic of an offline agent learns what an action does only where the data shows it. A world model can show
it more: from real held-out states (only those whose observation fixes the MuJoCo state), this perturbs the data
action by N(0, sigma^2) (clipped), steps the real ``-v5`` env and the dream once each with the data action and
with the perturbed one, and compares how the next state and the reward move: the correlation and the slope of the
model's change against MuJoCo's, and the model's error against the error of a model that ignored the change.

    python benchmarks/action_response.py --bundle hopper-medium --dataset dawm-d4rl/hopper/medium-v0 \
        --out benchmarks/results/action_response_hopper-medium.json
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import add_out_argument, load_groundtruth, save_results

from dawm_env.data.rollout import real_step_from
from dawm_env.world_model.uncertainty import dream_transition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="hopper-medium")
    parser.add_argument("--dataset", required=True, help="real data of the bundle's task (held-out episodes used)")
    parser.add_argument("--states", type=int, default=2000, help="real start states")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.3, 0.6], help="action noise stds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    add_out_argument(parser, "action_response")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    bundle, data, idx, rng, std = load_groundtruth(args.bundle, args.dataset, args.states, args.seed)
    task = bundle.task
    s, a = data.observations[idx], data.actions[idx]
    rtg = float(max(task.gen_rtg_range))

    def dream(actions: np.ndarray):  # the same sampling noise for every action set
        return dream_transition(bundle, s, actions, rtg, torch.Generator().manual_seed(args.seed), ())

    real_next0, real_rew0, _ = real_step_from(task, s, a)
    dream0 = dream(a)
    results: dict = {"bundle": str(bundle.path), "dataset": args.dataset, "states": int(len(idx)), "rtg": rtg,
                     "sampler": "the bundle's default (guidance, sampling steps)", "sigmas": {}}
    for sigma in args.sigmas:
        a1 = np.clip(a + rng.normal(0.0, sigma, a.shape), -1.0, 1.0).astype(np.float32)
        real_next1, real_rew1, _ = real_step_from(task, s, a1)
        dream1 = dream(a1)
        d_real = (real_next1 - real_next0) / std  # normalised change MuJoCo makes
        d_dream = (dream1.next_states - dream0.next_states) / std
        row = {
            "real_change_mse": float((d_real ** 2).mean()),
            "dream_error_mse": float((((dream1.next_states - real_next1) / std) ** 2).mean()),
            "error_if_action_ignored_mse": float((((dream0.next_states - real_next1) / std) ** 2).mean()),
            "state_change_correlation": float(np.corrcoef(d_real.ravel(), d_dream.ravel())[0, 1]),
            "state_change_slope": float((d_dream * d_real).sum() / (d_real * d_real).sum()),
            "reward_change_correlation": float(np.corrcoef(real_rew1 - real_rew0, dream1.rewards - dream0.rewards)[0, 1]),
            "real_reward_change_std": float(np.std(real_rew1 - real_rew0)),
            "dream_reward_change_std": float(np.std(dream1.rewards - dream0.rewards)),
        }
        results["sigmas"][str(sigma)] = row
        print(f"sigma {sigma}: MuJoCo's change {row['real_change_mse']:.4f}; dream error {row['dream_error_mse']:.4f} "
              f"(ignoring the action: {row['error_if_action_ignored_mse']:.4f}); change correlation "
              f"{row['state_change_correlation']:.3f}, slope {row['state_change_slope']:.2f}; reward change "
              f"correlation {row['reward_change_correlation']:.3f}", flush=True)
    save_results(args.out, "action_response", results)


if __name__ == "__main__":
    main()
