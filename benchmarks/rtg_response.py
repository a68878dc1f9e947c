"""Does a bundle's world model respond to its return-to-go target ``g``?

DAWM conditions every generated window on a target return-to-go ``g`` (``dawm generate --rtg``) and sharpens it
with classifier-free guidance ``w``. This measures how much the generated rewards and falls move with ``g`` and
``w``, from the same real (s, a) pairs and the same sampling noise, next to how much they differ in the real data
between windows of low and high return-to-go (the spread a responsive model could reproduce). No training.

    python benchmarks/rtg_response.py --bundle hopper-medium --dataset dawm-d4rl/hopper/medium-v0 \
        --out benchmarks/results/rtg_response_hopper-medium.json
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import add_out_argument, save_results

from dawm_env.data.loading import load_dataset
from dawm_env.data.windows import returns_to_go, window_starts
from dawm_env.world_model.bundle import Bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="bundle name or folder")
    parser.add_argument("--dataset", required=True, help="real data the (s, a) pairs come from (Minari id or file)")
    parser.add_argument("--pairs", type=int, default=2048, help="(s, a) pairs, drawn at random from the windows")
    parser.add_argument("--horizon", type=int, default=7, help="generated steps per window (H)")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5, 0.8, 0.95, 1.0],
                        help="return-to-go targets g (task units)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.2, 3.0],
                        help="guidance weights w")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    add_out_argument(parser, "rtg_response")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_dataset(args.dataset)
    bundle = Bundle.load(args.bundle, expect_task=data.task)
    H = args.horizon
    rtg = returns_to_go(data)
    idx = np.random.default_rng(args.seed).choice(window_starts(data, H), size=args.pairs, replace=False)
    real_rewards = np.stack([data.rewards[idx + k] for k in range(H)], 1)  # (B, H): r_t .. r_{t+H-1}
    low, high = np.quantile(rtg[idx], [0.25, 0.75])
    results: dict = {
        "bundle": str(bundle.path), "dataset": args.dataset, "pairs": args.pairs, "horizon": H,
        "pairs_rtg_quantiles_10_50_90": np.quantile(rtg[idx], [0.1, 0.5, 0.9]).tolist(),
        "real": {"reward_per_step": float(real_rewards.mean()),
                 "reward_per_step_low_rtg_quartile": float(real_rewards[rtg[idx] <= low].mean()),
                 "reward_per_step_high_rtg_quartile": float(real_rewards[rtg[idx] >= high].mean())},
        "generated": [],
    }
    real = results["real"]
    print(f"real windows: reward/step {real['reward_per_step']:.4f}; low-rtg quartile "
          f"{real['reward_per_step_low_rtg_quartile']:.4f}, high-rtg quartile {real['reward_per_step_high_rtg_quartile']:.4f}")
    for w in args.guidance:
        for g in args.targets:
            window = bundle.sample_window(data.observations[idx], data.actions[idx], g, H + 1,
                                          torch.Generator().manual_seed(args.seed), guidance=w)
            row = {"guidance": w, "rtg": g, "reward_per_step": float(window.rewards[:, :H].mean()),
                   "fall_rate": float(window.terminal.any(1).mean())}
            results["generated"].append(row)
            print(f"w={w:<4} g={g:<5} reward/step {row['reward_per_step']:.4f}  windows with a fall {row['fall_rate']:.4f}",
                  flush=True)
    for w in args.guidance:
        rows = [r for r in results["generated"] if r["guidance"] == w]
        spread = max(r["reward_per_step"] for r in rows) - min(r["reward_per_step"] for r in rows)
        results.setdefault("generated_spread_by_guidance", {})[str(w)] = spread
    results["real_spread_low_to_high_quartile"] = (real["reward_per_step_high_rtg_quartile"]
                                                   - real["reward_per_step_low_rtg_quartile"])
    print(f"reward/step spread over g: {results['generated_spread_by_guidance']}; real low -> high quartile "
          f"{results['real_spread_low_to_high_quartile']:.4f}")
    save_results(args.out, "rtg_response", results)


if __name__ == "__main__":
    main()
