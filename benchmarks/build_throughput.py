"""Benchmark: D4RL-style dataset build throughput (transitions/s) for a policy dataset.

Measures, for each ``--num-envs`` value, the rollout rate of a real SB3 policy in MuJoCo (batched policy
calls, stochastic actions), then the Minari write rate of the collected data, and the end-to-end rate.
Prints a table and saves a new JSON file (``--out``, default ``benchmarks/results/runs/build_throughput-<UTC time>.json``).

    python benchmarks/build_throughput.py --task hopper --level medium --steps 100000 --num-envs 1 16 64
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import datetime, timezone

import torch
from _common import add_out_argument, save_results  # benchmarks/ is on sys.path when a script runs


def main() -> None:
    """Run the benchmark and save its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="hopper")
    parser.add_argument("--level", default="medium", choices=["medium", "expert"])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 16, 64])
    add_out_argument(parser, "build_throughput")
    args = parser.parse_args()

    from dawm_env.data.minari_io import write_minari_dataset
    from dawm_env.data.policies import default_policy_path, load_policy
    from dawm_env.data.rollout import collect_transitions
    from dawm_env.tasks import get_task

    torch.set_num_threads(os.cpu_count() or 1)
    task = get_task(args.task)
    path = default_policy_path(task, args.level)
    if path is None:
        raise SystemExit(f"{args.task} {args.level} needs the behaviour SAC run; benchmark hopper or expert instead")
    policy = load_policy(path, task)
    rows = []
    for n in args.num_envs:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        data = collect_transitions(task, policy.policy_fn(seed=0), args.steps, seed=0, num_envs=n, progress=False)
        rollout_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as root:
            os.environ["MINARI_DATASETS_PATH"] = root
            t1 = time.perf_counter()
            write_minari_dataset(data, "bench/hopper/medium-v0", algorithm_name="bench", description="bench",
                                 provenance={})
            write_s = time.perf_counter() - t1
        rows.append({"num_envs": n, "transitions": data.num_transitions, "episodes": data.num_episodes,
                     "rollout_s": round(rollout_s, 2), "rollout_tps": round(data.num_transitions / rollout_s),
                     "write_s": round(write_s, 2), "write_tps": round(data.num_transitions / write_s),
                     "total_tps": round(data.num_transitions / (rollout_s + write_s))})
        r = rows[-1]
        print(f"num_envs={n:4d}  rollout {r['rollout_tps']:7d} tr/s  write {r['write_tps']:8d} tr/s  "
              f"end-to-end {r['total_tps']:7d} tr/s  ({r['episodes']} episodes)", flush=True)
    result = {
        "benchmark": "build_throughput", "task": task.name, "level": args.level, "policy": str(path.name),
        "steps": args.steps, "rows": rows, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_note": os.environ.get("BENCH_NOTE", ""),
    }
    save_results(args.out, "build_throughput", result)


if __name__ == "__main__":
    main()
