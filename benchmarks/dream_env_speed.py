"""Benchmark: dream env steps/s (batched, one world-model call per step) against the real MuJoCo env.

For each ``--num-envs`` N, a :class:`~dawm_env.envs.vector.DreamVectorEnv` is stepped with uniform random
actions for about ``--seconds`` (after ``--warmup`` steps); steps/s counts env transitions (N per call).
The single Gymnasium env (``gymnasium.make("DAWM-...-v0")``, wrappers included) is timed too, and the
real ``Hopper-v5`` (single env, random actions, resets included) in the same run, same threads.

Each dream step generates a whole window (T rows, N_sampling reverse steps, conditional and
unconditional passes): the cost per transition is about ``2 * N_sampling`` U-Net passes over T rows.

With ``--dataset`` (real data of the task), the same env configuration's one-step error is measured next to
its speed: held-out real states (whose observation fixes the MuJoCo state) stepped once by the dream with the
data's actions and once by the real env (normalised-state MSE, reward MAE), so speed is never bought with
wrong states unseen.

Saves a new JSON file (``--out``, default ``benchmarks/results/runs/dream_env_speed-<UTC time>.json``).

    python benchmarks/dream_env_speed.py --bundle hopper-medium --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
from _common import add_out_argument, groundtruth_rows, save_results  # benchmarks/ is on sys.path


def time_steps(step_fn: Any, make_action: Any, seconds: float, warmup: int, min_steps: int = 3) -> tuple[float, int]:
    """Call ``step_fn(make_action())`` for ``warmup`` steps, then for ``seconds``: ``(elapsed s, calls)``."""
    for _ in range(warmup):
        step_fn(make_action())
    calls, t0 = 0, time.perf_counter()
    while calls < min_steps or time.perf_counter() - t0 < seconds:
        step_fn(make_action())
        calls += 1
    return time.perf_counter() - t0, calls


def bench_single(env_id: str, seconds: float, warmup: int, seed: int, kwargs: dict, kind: str) -> dict:
    """Steps/s of one env from ``gymnasium.make`` (real or dream) with random actions, resets timed too."""
    import gymnasium as gym

    env = gym.make(env_id, **kwargs)
    env.reset(seed=seed)
    env.action_space.seed(seed)

    def step(a: np.ndarray) -> None:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()

    elapsed, n = time_steps(step, env.action_space.sample, seconds, warmup)
    env.close()
    return {"env": env_id, "kind": kind, "num_envs": 1, "steps": n, "seconds": elapsed, "steps_per_s": n / elapsed}


def bench_dream_vector(env_id: str, num_envs: int, seconds: float, warmup: int, seed: int, kwargs: dict) -> dict:
    """Steps/s (transitions) of the batched dream env."""
    import gymnasium as gym

    venv = gym.make_vec(env_id, num_envs=num_envs, **kwargs)
    venv.reset(seed=seed)
    rng = np.random.default_rng(seed)
    shape = venv.action_space.shape
    elapsed, calls = time_steps(venv.step, lambda: rng.uniform(-1, 1, shape).astype(np.float32), seconds, warmup)
    venv.close()
    return {"env": env_id, "kind": "vector", "num_envs": num_envs, "calls": calls, "seconds": elapsed,
            "steps_per_s": num_envs * calls / elapsed, "ms_per_call": 1e3 * elapsed / calls}


def main() -> None:
    """Run and save the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env-id", default="DAWM-Hopper-v0")
    p.add_argument("--bundle", default=None, help="bundle name or folder (default: the env's, hopper-medium)")
    p.add_argument("--num-envs", type=int, nargs="+", default=[1, 64, 1024])
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the issue's setting: 2 CPU cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sampling-steps", type=int, default=None, help="override N (default: the bundle's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance-weight", type=float, default=None,
                   help="override w (default: the bundle's); w = 1 runs one network pass instead of two")
    p.add_argument("--sampling-timesteps", type=int, nargs="+", default=None,
                   help="explicit diffusion steps to visit, e.g. 0 3 (instead of --sampling-steps)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the networks")
    p.add_argument("--raw", action="store_true", help="the raw dream (no pessimism: no IDM call per step)")
    p.add_argument("--dataset", default=None, help="real data of the task: also measure the one-step error")
    p.add_argument("--error-states", type=int, default=2000, help="held-out states for the one-step error")
    add_out_argument(p, "dream_env_speed")
    args = p.parse_args()

    import torch

    import dawm_env  # noqa: F401  (registers the dream ids)
    from dawm_env.envs.dream import DreamConfig, load_bundle_for
    from dawm_env.tasks import get_task

    torch.set_num_threads(args.threads)
    import gymnasium as gym

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and load > (os.cpu_count() or 1) - 0.5:
        # Timings on a busy machine are meaningless; with more torch threads than free cores, small
        # batches can slow down 10x (OpenMP threads wait for descheduled peers).
        print(f"WARNING: load average {load:.1f} on {os.cpu_count()} cores: other processes compete; "
              "run on an idle machine for numbers worth reporting")

    spec = gym.spec(args.env_id)
    kwargs: dict[str, Any] = {"device": args.device}
    if args.bundle is not None:
        kwargs["bundle"] = args.bundle
    if args.sampling_steps is not None:
        kwargs["sampling_steps"] = args.sampling_steps
    if args.guidance_weight is not None:
        kwargs["guidance_weight"] = args.guidance_weight
    if args.sampling_timesteps is not None:
        kwargs["sampling_timesteps"] = list(args.sampling_timesteps)
    if args.bf16:
        kwargs["bf16"] = True
    if args.raw:
        kwargs["pessimism"] = False
    cfg = DreamConfig(**{**spec.kwargs, **kwargs})
    bundle = load_bundle_for(cfg)
    task = get_task(cfg.task)
    wm_cfg = bundle.meta["world_model_config"]

    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": args.device,
                    "load_average_1min": load},
        "env_id": args.env_id, "bundle": str(bundle.path),
        "world_model": {"dim": wm_cfg["dim"], "dim_mults": wm_cfg["dim_mults"], "window": wm_cfg["horizon"] + 1,
                        "sampling_steps": args.sampling_steps or wm_cfg["n_sampling_steps"],
                        "sampling_timesteps": args.sampling_timesteps, "bf16": args.bf16,
                        "pessimism": not args.raw,
                        "guidance_weight": wm_cfg["guidance_weight"] if args.guidance_weight is None
                        else args.guidance_weight,
                        "parameters": sum(p.numel() for p in bundle.world_model.parameters())},
        "seconds_per_config": args.seconds,
        "real": bench_single(task.env_id, args.seconds, 100, args.seed, {}, kind="real"),
        "dream_single": bench_single(args.env_id, args.seconds, args.warmup, args.seed, kwargs, kind="single"),
        "dream_vector": [],
    }
    print(f"real {task.env_id}: {results['real']['steps_per_s']:.0f} steps/s")
    print(f"dream single env (gym.make): {results['dream_single']['steps_per_s']:.1f} steps/s")
    for n in args.num_envs:
        r = bench_dream_vector(args.env_id, n, args.seconds, args.warmup, args.seed, kwargs)
        r["vs_real"] = r["steps_per_s"] / results["real"]["steps_per_s"]
        results["dream_vector"].append(r)
        print(f"dream vector num_envs={n:5d}: {r['steps_per_s']:9.1f} steps/s ({r['ms_per_call']:.1f} ms/call, "
              f"{r['vs_real']:.3f} x real)")
    if args.dataset:
        results["one_step_error"] = one_step_error(cfg, args.dataset, args.error_states, args.seed)
        print(f"one-step error vs MuJoCo on {results['one_step_error']['states']} held-out states: state MSE "
              f"{results['one_step_error']['state_mse']:.4f} (normalised), reward MAE "
              f"{results['one_step_error']['reward_mae']:.4f}")
    save_results(args.out, "dream_env_speed", results)


def one_step_error(cfg: Any, dataset: str, n: int, seed: int) -> dict:
    """The dream step of ``cfg`` against MuJoCo from the same held-out real states with the data's actions."""
    from dawm_env.data.loading import load_dataset
    from dawm_env.data.rollout import real_step_from
    from dawm_env.envs.dream import DreamDynamics

    dyn = DreamDynamics(cfg)
    task, meta = dyn.task, dyn.bundle.meta
    data = load_dataset(dataset, task=task.name)
    rng = np.random.default_rng(seed)
    idx = groundtruth_rows(data, meta, task, n, rng)
    s, a = data.observations[idx].astype(np.float64), data.actions[idx]
    real_next, real_rew, _ = real_step_from(task, s, a)
    out = dyn.step(s, a, rng, data.observations[idx - 1].astype(np.float64))
    raw_rew = out.info.get("raw_reward", out.rewards)
    err = (((out.next_states - real_next) / np.asarray(dyn.bundle.stats.obs_std)) ** 2).mean(-1)
    return {"dataset": dataset, "states": int(len(idx)), "state_mse": float(err.mean()),
            "state_mse_median": float(np.median(err)), "reward_mae": float(np.abs(raw_rew - real_rew).mean())}


if __name__ == "__main__":
    main()
