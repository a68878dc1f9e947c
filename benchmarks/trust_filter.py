"""What does the trust filter (``--trust-keep``) take out of a DAWM dataset?

For a dataset written by ``dawm generate`` and a keep fraction, compares what the IDM-std filter and its random
control (``--trust-signal random``, as many transitions at random) keep: the share kept at every rollout step h
(is the filter a shorter horizon in disguise?), of the terminal rows (generated falls), the mean reward and IDM
std of what is kept, and the correlation of the IDM std with the reward on the inferred rows. No training.

    python benchmarks/trust_filter.py --dataset dawm-exp/hopper/medium-h7-sub8-a1df93b1-v0 --keep 0.5 \
        --out benchmarks/results/trust_filter_hopper-medium.json
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import add_out_argument, save_results

from dawm_env.agents.sources import TRUST_SIGNALS, trust_mask
from dawm_env.data.loading import load_dataset
from dawm_env.data.windows import positions_in_episode
from dawm_env.generation.stats import transition_idm_std


def kept_profile(keep: np.ndarray, step: np.ndarray, terminal: np.ndarray, rewards: np.ndarray,
                 std: np.ndarray) -> dict:
    """Shares kept per rollout step and of the terminal rows, and the kept rows' mean reward / IDM std."""
    return {"kept_transitions": int(keep.sum()),
            "kept_share_by_step": {int(h): float(keep[step == h].mean()) for h in np.unique(step)},
            "kept_share_of_terminal_rows": float(keep[terminal].mean()) if terminal.any() else None,
            "terminal_rate": float(terminal[keep].mean()), "reward_mean": float(rewards[keep].mean()),
            "idm_std_mean_of_inferred": float(std[keep & (std > 0)].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a dataset written by dawm generate (Minari id)")
    parser.add_argument("--keep", type=float, default=0.5, help="fraction of the IDM-inferred transitions kept")
    add_out_argument(parser, "trust_filter")
    args = parser.parse_args()

    data = load_dataset(args.dataset)
    std = transition_idm_std(args.dataset)
    step = positions_in_episode(data)
    terminal = data.terminations.astype(bool)
    inferred = std > 0
    everything = np.ones(data.num_transitions, dtype=bool)
    results = {
        "dataset": args.dataset, "keep": args.keep, "transitions": data.num_transitions,
        "rollouts": data.num_episodes, "terminal_rows": int(terminal.sum()),
        "corr_idm_std_reward_inferred": float(np.corrcoef(std[inferred], data.rewards[inferred])[0, 1]),
        "all": kept_profile(everything, step, terminal, data.rewards, std),
        **{signal: kept_profile(trust_mask(std, args.keep, signal), step, terminal, data.rewards, std)
           for signal in TRUST_SIGNALS},
    }
    for name in ("all", *TRUST_SIGNALS):
        r = results[name]
        print(f"{name:8s} kept {r['kept_transitions']:7d}  terminal share kept "
              f"{r['kept_share_of_terminal_rows']}  terminal rate {r['terminal_rate']:.5f}  "
              f"reward {r['reward_mean']:.3f}  inferred std {r['idm_std_mean_of_inferred']:.3f}")
    save_results(args.out, "trust_filter", results)


if __name__ == "__main__":
    main()
