"""How far do generated rollouts drift from the real continuation of the pair they started from?

Every rollout of a ``dawm generate`` dataset starts from a real ``(s_t, a_t)`` pair (its ``seed_index``); where the
real episode goes on for ``h`` more steps, its transition ``t + h`` is what the behaviour policy actually did next.
Per rollout step ``h`` and per part of the seed data (for medium-expert: the medium half and the expert half), this
compares the generated transition with that real one: the reward's bias and absolute error, the normalised state
error of ``s_{t+h+1}``, and for IDM-inferred steps the action's absolute error against the behaviour action.

Where the part's behaviour policy is known (the seed data's build provenance names it), the generated actions are
also compared with that policy's mean action at the *generated* state, next to the same distance for the real
data's actions at real states (the behaviour policy's own sampling noise): this is the question TD3+BC's BC term
asks, whether the actions it clones on generated states are the behaviour policy's. No training.

    python benchmarks/generated_vs_real.py --dataset dawm-exp/hopper/medium-expert-h7-sub8-30ecb62f-v0 \
        --out benchmarks/results/generated_vs_real_hopper-medium-expert.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import numpy as np
from _common import add_out_argument, save_results

from dawm_env.data.loading import load_dataset
from dawm_env.data.minari_io import dataset_exists, read_provenance
from dawm_env.data.policies import BehaviorPolicy, default_policy_path, load_policy
from dawm_env.data.records import OfflineDataset
from dawm_env.data.windows import positions_in_episode
from dawm_env.generation.stats import transition_infos
from dawm_env.tasks import get_task


def seed_parts(seed_id: str, n: int, split_at: Optional[int]) -> list[tuple[str, int, int, Optional[BehaviorPolicy]]]:
    """``(name, start, stop, behaviour policy or None)`` ranges of the seed data: the medium / expert halves of a
    built medium-expert dataset (the medium half comes first, ``config.steps`` transitions), else ``split_at``
    or the whole."""
    prov = read_provenance(seed_id) if dataset_exists(seed_id) else {}  # a dataset file has no build provenance
    level = prov.get("config", {}).get("level")

    def policy(lvl: Optional[str]) -> Optional[BehaviorPolicy]:
        rec = prov.get(f"{lvl}_policy", {})
        if not rec.get("path"):
            return None
        path = Path(rec["path"])
        if not path.is_file():  # built on another machine: the package's copy of the same policy
            path = default_policy_path(get_task(prov["config"]["task"]), lvl) or path
        if not path.is_file():
            print(f"{lvl} policy {rec['path']} not found: no comparison with its actions")
            return None
        pol = load_policy(path)
        if rec.get("weights_sha256") and pol.weights_sha256 != rec["weights_sha256"]:
            print(f"{path} is not the {lvl} policy the data was built with (weights differ): no comparison")
            return None
        return pol

    if split_at is None and level == "medium-expert":
        return [("medium half", 0, int(prov["config"]["steps"]), policy("medium")),
                ("expert half", int(prov["config"]["steps"]), n, policy("expert"))]
    if split_at is None:
        return [("all", 0, n, policy(level))]
    return [("first part", 0, split_at, None), ("second part", split_at, n, None)]


def compare(gen: OfflineDataset, real: OfflineDataset, seed_index: np.ndarray, parts: list) -> dict:
    """Per part and rollout step: generated vs real-continuation statistics (see the module docstring)."""
    step = positions_in_episode(gen)
    target = seed_index + step  # the real transition this generated one stands for
    ends = np.repeat(real.episode_offsets[1:], real.episode_lengths)  # exclusive end of each real row's episode
    valid = target < ends[seed_index]
    state_std = real.observations.std(0) + 1e-6
    out: dict = {}
    for name, lo, hi, policy in parts:
        rows: dict = {}
        in_part = (seed_index >= lo) & (seed_index < hi)
        if policy is not None:  # the behaviour policy's own noise: real actions vs its mean at real states
            real_rows = np.arange(lo, hi)
            rows["behaviour_noise_mae"] = float(
                np.abs(real.actions[real_rows] - policy.act(real.observations[real_rows], deterministic=True)).mean())
        for h in np.unique(step):
            sel = np.flatnonzero(in_part & (step == h) & valid)
            if sel.size == 0:
                continue
            t = target[sel]
            dr = gen.rewards[sel] - real.rewards[t]
            ds = (gen.next_observations[sel] - real.next_observations[t]) / state_std
            da = np.abs(gen.actions[sel] - real.actions[t]).mean(-1)
            rows[int(h)] = {"n": int(sel.size), "real_reward": float(real.rewards[t].mean()),
                            "generated_reward": float(gen.rewards[sel].mean()), "reward_bias": float(dr.mean()),
                            "reward_mae": float(np.abs(dr).mean()), "state_mse": float((ds ** 2).mean()),
                            "action_mae": float(da.mean())}
            if policy is not None:
                mean_action = policy.act(gen.observations[sel], deterministic=True)
                rows[int(h)]["action_mae_vs_policy"] = float(np.abs(gen.actions[sel] - mean_action).mean(-1).mean())
        out[name] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a dataset written by dawm generate (Minari id)")
    parser.add_argument("--seed-dataset", default=None, help="its seed data (default: from its provenance)")
    parser.add_argument("--split-at", type=int, default=None,
                        help="seed-data row where a second part starts (default: the medium / expert halves of a "
                             "built medium-expert dataset, else one part)")
    add_out_argument(parser, "generated_vs_real")
    args = parser.parse_args()

    prov = read_provenance(args.dataset)
    seed_id = args.seed_dataset or prov.get("seed_dataset", {}).get("source")
    if not seed_id:
        raise SystemExit(f"{args.dataset} names no seed dataset in its provenance; pass --seed-dataset")
    gen, real = load_dataset(args.dataset), load_dataset(seed_id)
    seed_index = transition_infos(args.dataset, ("seed_index",))["seed_index"].astype(np.int64).reshape(-1)
    if seed_index.size != gen.num_transitions or seed_index.max(initial=0) >= real.num_transitions:
        raise SystemExit(f"{args.dataset}'s seed indices do not fit {seed_id}; pass the seed data it was made from")
    parts = seed_parts(seed_id, real.num_transitions, args.split_at)
    results = {"dataset": args.dataset, "seed_dataset": seed_id, "rollout": prov.get("rollout", {}),
               "parts": {name: [lo, hi] for name, lo, hi, _ in parts},
               "by_part_and_step": compare(gen, real, seed_index, parts)}
    for name, rows in results["by_part_and_step"].items():
        noise = rows.get("behaviour_noise_mae")
        print(f"{name}:" + (f" behaviour policy's own action noise (MAE to its mean) {noise:.4f}" if noise else ""))
        print("  h       n  real r   gen r    bias     MAE  state MSE  action MAE  vs policy mean")
        for h, r in rows.items():
            if h == "behaviour_noise_mae":
                continue
            print(f"  {h}  {r['n']:7d}  {r['real_reward']:6.3f}  {r['generated_reward']:6.3f}  {r['reward_bias']:+6.3f}"
                  f"  {r['reward_mae']:6.3f}  {r['state_mse']:9.4f}  {r['action_mae']:10.4f}"
                  f"  {r.get('action_mae_vs_policy', float('nan')):14.4f}")
    save_results(args.out, "generated_vs_real", results)


if __name__ == "__main__":
    main()
