"""Benchmark: world-model training and sampling speed, and FLOP rate against the machine's matmul peak.

- training: optimiser steps/s and samples/s of a preset on random windows, FLOPs per step counted with
  ``torch.utils.flop_counter`` (forward + backward), achieved GFLOP/s and its fraction of the peak;
- sampling: generated transitions/s for ``--pairs`` conditioning pairs with N strided steps and
  classifier-free guidance (conditional + unconditional in one batched call), plus the IDM pass.

The peak is measured in the same run (a large fp32 matmul) unless ``--peak-gflops`` is given.
Saves a new JSON file (``--out``, default ``benchmarks/results/runs/world_model_speed-<UTC time>.json``).

    python benchmarks/world_model_speed.py --preset cpu --task hopper
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import datetime, timezone

import torch
from _common import add_out_argument, matmul_peak_gflops, save_results  # benchmarks/ is on sys.path when a script runs
from torch.utils.flop_counter import FlopCounterMode


def main() -> None:
    """Run and save the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--task", default="hopper")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--pairs", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--peak-gflops", type=float, default=None)
    p.add_argument("--bf16", action="store_true", help="time training under bfloat16 autocast on CPU too")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: every core)")
    add_out_argument(p, "world_model_speed")
    args = p.parse_args()

    from dawm_env.tasks import get_task
    from dawm_env.world_model.config import WorldModelConfig
    from dawm_env.world_model.diffusion import GaussianDiffusion
    from dawm_env.world_model.idm import IDMConfig, InverseDynamics

    dev = torch.device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    peak = args.peak_gflops or (matmul_peak_gflops() if dev.type == "cpu" else None)
    task = get_task(args.task)
    cfg = WorldModelConfig.preset(args.preset)
    model = GaussianDiffusion.from_config(cfg, task.obs_dim, task.act_dim).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    T, D = cfg.window, task.obs_dim + task.act_dim + 1
    train_rows = []
    bf16 = args.bf16 or dev.type == "cuda"
    for bs in args.batch_sizes or [cfg.batch_size]:
        x0, rtg = torch.randn(bs, T, D, device=dev), torch.rand(bs, device=dev)
        with FlopCounterMode(display=False) as fc:
            model.loss(x0, rtg).backward()
        flops = fc.get_total_flops()
        for _ in range(3):  # warm-up
            opt.zero_grad()
            model.loss(x0, rtg).backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(args.steps):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model.loss(x0, rtg)
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / args.steps
        gflops = flops / dt / 1e9
        row = {"batch_size": bs, "steps_per_s": 1 / dt, "samples_per_s": bs / dt, "gflop_per_step": flops / 1e9,
               "achieved_gflops": gflops, "fraction_of_peak": (gflops / peak) if peak else None}
        train_rows.append(row)
        frac = f"{100 * row['fraction_of_peak']:.0f}% of peak" if peak else ""
        print(f"train batch {bs:5d}: {row['steps_per_s']:.1f} steps/s, {row['samples_per_s']:.0f} samples/s, "
              f"{gflops:.1f} GFLOP/s {frac}", flush=True)

    # sampling: 4096 conditioning pairs, N steps with guidance, then the IDM over every generated step
    model.eval()
    idm = InverseDynamics.from_config(IDMConfig(), task.obs_dim, task.act_dim).to(dev).eval()
    s0, a0 = torch.randn(args.pairs, task.obs_dim, device=dev), torch.rand(args.pairs, task.act_dim, device=dev) * 2 - 1
    g = torch.full((args.pairs,), 0.8, device=dev)
    model.sample(s0[:64], a0[:64], g[:64])
    with FlopCounterMode(display=False) as fc:
        x = model.sample(s0, a0, g)
    sample_flops = fc.get_total_flops()
    t = time.perf_counter()
    x = model.sample(s0, a0, g)
    wm_s = time.perf_counter() - t
    states = x[:, :, : task.obs_dim]
    H = cfg.horizon
    prev = torch.cat([torch.zeros_like(states[:, :1]), states[:, :-2]], 1)[:, 1:H].reshape(-1, task.obs_dim)
    t = time.perf_counter()
    idm.act(prev, states[:, 1:H].reshape(-1, task.obs_dim), states[:, 2:H + 1].reshape(-1, task.obs_dim))
    idm_s = time.perf_counter() - t
    transitions = args.pairs * H
    sampling = {"pairs": args.pairs, "horizon": H, "sampling_steps": cfg.n_sampling_steps,
                "guidance_weight": cfg.guidance_weight, "world_model_s": wm_s, "idm_s": idm_s,
                "transitions_per_s": transitions / (wm_s + idm_s),
                "world_model_gflops": sample_flops / wm_s / 1e9,
                "world_model_fraction_of_peak": (sample_flops / wm_s / 1e9 / peak) if peak else None}
    print(f"sampling {args.pairs} pairs x H={H}: world model {wm_s:.2f}s + IDM {idm_s:.2f}s -> "
          f"{sampling['transitions_per_s']:.0f} transitions/s", flush=True)
    result = {"benchmark": "world_model_speed", "preset": args.preset, "train_bf16": bf16, "task": task.name,
              "params": n_params,
              "device": str(dev), "peak_gflops": peak, "train": train_rows, "sampling": sampling,
              "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "machine": platform.processor() or platform.machine(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "load_note": os.environ.get("BENCH_NOTE", "")}
    print(f"params {n_params}")
    save_results(args.out, "world_model_speed", result)


if __name__ == "__main__":
    main()
