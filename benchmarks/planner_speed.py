"""Benchmark: Decision Diffuser planning time per real step, per preset, against a TD3+BC actor's.

Acting with DD costs one plan per real step: ``N`` reverse diffusion steps, each one U-Net call on ``2B`` rows
(guidance), then the IDM. Planning time does not depend on the weights, so the planners here are freshly
initialised (``--preset cpu`` and DD's own ``paper`` setting, which cannot be trained on a CPU); the actor is
TD3+BC's (256, 256) MLP. Each figure is the median over ``--repeats`` timed calls after one warm-up call, at batch
1 (one episode, as the paper's Table 3 times it) and at ``--batch`` environments (one call for all evaluation
episodes). A figure only on an otherwise idle machine.

    python benchmarks/planner_speed.py --threads 1 --out benchmarks/results/planner_speed.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import add_out_argument, save_results  # benchmarks/ is on sys.path when a script runs


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    """Time every preset's planning step and the actor, print a table, save the JSON."""
    from dawm_env.agents.networks import BatchedMLP
    from dawm_env.data.normalization import NormStats
    from dawm_env.planner import DDConfig, DecisionDiffuser, build_dd_model
    from dawm_env.runtime import machine_info, setup_torch
    from dawm_env.tasks import get_task
    from dawm_env.world_model.idm import IDMConfig, InverseDynamics

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="hopper")
    p.add_argument("--presets", default="cpu,paper", help="DDConfig presets, comma separated")
    p.add_argument("--batch", type=int, default=50, help="environments planned for in one call (the evaluation)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    add_out_argument(p, "planner_speed")
    args = p.parse_args()

    device = setup_torch(args.device, args.threads)
    task = get_task(args.task)
    o, a = task.obs_dim, task.act_dim
    stats = NormStats(obs_mean=np.zeros(o, np.float32), obs_std=np.ones(o, np.float32), rew_mean=0.0, rew_std=1.0)
    idm = InverseDynamics.from_config(IDMConfig(), o, a).to(device).eval()
    rng = np.random.default_rng(0)
    rows = []
    for name in args.presets.split(","):
        cfg = DDConfig.preset(name)
        planner = DecisionDiffuser(build_dd_model(cfg, o).to(device).eval(), idm, stats, cfg)
        params = sum(p.numel() for p in planner.diffusion.parameters())
        for b in (1, args.batch):
            s = rng.standard_normal((b, o)).astype(np.float32)
            gen = torch.Generator(device=device).manual_seed(0)
            sec = _median_seconds(lambda: planner.act(s, s, np.zeros(b, dtype=bool), gen), args.repeats)
            rows.append({"method": f"DD ({name})", "horizon": cfg.horizon, "sampling_steps": cfg.n_sampling_steps,
                         "params": params, "batch": b, "seconds_per_step": sec})
            print(f"DD {name:6s} H={cfg.horizon:3d} N={cfg.n_sampling_steps:3d} batch {b:3d}: {1e3 * sec:10.2f} ms / step",
                  flush=True)
    actor = BatchedMLP(1, o, (256, 256), a, tanh_output=True, init_keys=[(0, "actor")]).to(device).eval()
    for b in (1, args.batch):
        x = torch.as_tensor(rng.standard_normal((1, b, o)).astype(np.float32), device=device)

        def act() -> None:
            with torch.no_grad():
                actor(x).cpu().numpy()

        sec = _median_seconds(act, max(args.repeats, 100))
        rows.append({"method": "TD3+BC actor", "batch": b, "seconds_per_step": sec})
        print(f"TD3+BC actor (256, 256)      batch {b:3d}: {1e3 * sec:10.3f} ms / step", flush=True)
    save_results(args.out, "planner_speed", {"task": task.name, "rows": rows, "machine": machine_info(args.device),
                                             "repeats": args.repeats})


if __name__ == "__main__":
    main()
