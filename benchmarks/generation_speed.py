"""Benchmark: DAWM dataset generation speed, FLOP rate, Minari write speed and streaming peak memory.

Figures (all on this machine, ``--threads`` torch threads, default 2):

- ``model``: generated rollout steps/s (= transitions/s when no rollout terminates early; both are
  reported) of the batched core (world model with N steps and classifier-free
  guidance, conditional + unconditional passes in one call, then one IDM call), its FLOPs counted with
  ``torch.utils.flop_counter`` and the achieved GFLOP/s as a fraction of a large fp32 matmul's peak;
- ``end_to_end``: ``generate_dataset`` (generate + validate + chunk files + merge + register),
  transitions/s;
- ``real_build``: building a real dataset with a behaviour policy in MuJoCo (SB3 ``hopper-sac``,
  16 envs, batched policy calls) and writing it, transitions/s; the ratios generated / real;
- ``minari_write``: ms per generated episode with Minari's ``create_dataset_from_buffers`` vs dawm's
  :class:`~dawm_env.data.minari_io.MinariStreamWriter`, and the merge copy;
- ``memory``: peak RSS (``resource.getrusage``) of a child process that runs ``generate_dataset`` for
  ``--repeats 8`` over a synthetic ``--memory-seed-transitions`` (1M) seed dataset for a few chunks:
  everything streams, so the peak does not grow with the number of chunks (run it with two values of
  ``--memory-chunks`` to see).

Without ``--bundle`` a bundle with *random* weights of the ``--preset`` architecture is made (speed does
not depend on the weights). Saves a new JSON file (``--out``, default ``benchmarks/results/runs/generation_speed-<UTC time>.json``).

    python benchmarks/generation_speed.py --preset cpu --pairs 4096            # the real measurement
    python benchmarks/generation_speed.py --pairs 256 --batch-size 256 --real-steps 2000 \\
        --minari-episodes 300 --memory-chunks 1 3 --memory-chunk-size 512        # a tiny smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from _common import add_out_argument, matmul_peak_gflops, save_results  # benchmarks/ is on sys.path when a script runs
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_random_bundle(out: Path, seed_data, preset: str) -> Path:
    """A loadable bundle with untrained weights of the ``preset`` architecture and default IDM."""
    from dawm_env.checkpoint import save_tensors
    from dawm_env.data.normalization import NormStats
    from dawm_env.data.windows import returns_to_go
    from dawm_env.paths import atomic_write_json
    from dawm_env.tasks import get_task
    from dawm_env.world_model.bundle import BUNDLE_FORMAT, BUNDLE_VERSION
    from dawm_env.world_model.config import WorldModelConfig
    from dawm_env.world_model.diffusion import GaussianDiffusion
    from dawm_env.world_model.idm import IDMConfig, InverseDynamics

    task = get_task(seed_data.task)
    torch.manual_seed(0)
    wm_cfg, idm_cfg = WorldModelConfig.preset(preset), IDMConfig()
    out.mkdir(parents=True, exist_ok=True)
    wm = GaussianDiffusion.from_config(wm_cfg, task.obs_dim, task.act_dim)
    # Untrained weights give states anywhere in the clamp range and nearly every rollout terminates at
    # once; clamp x_0 tightly around the data mean instead, so rollouts run their full length as a trained
    # bundle's mostly do (~2% early terminations in the notes). Same compute either way.
    d = wm.transition_dim
    low, high = torch.full((d,), -0.05), torch.full((d,), 0.05)
    low[task.obs_dim: task.obs_dim + task.act_dim], high[task.obs_dim: task.obs_dim + task.act_dim] = -1.0, 1.0
    wm.set_x0_bounds(low, high)
    save_tensors(out / "world_model.safetensors", wm.state_dict())
    save_tensors(out / "idm.safetensors", InverseDynamics.from_config(idm_cfg, task.obs_dim, task.act_dim).state_dict())
    idx = np.arange(min(4096, seed_data.num_transitions))
    save_tensors(out / "seeds.safetensors", {
        "states": torch.from_numpy(seed_data.observations[idx]), "actions": torch.from_numpy(seed_data.actions[idx]),
        "rtg": torch.from_numpy(returns_to_go(seed_data)[idx]), "index": torch.from_numpy(idx.astype(np.int64))})
    atomic_write_json(out / "bundle.json", {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "task": task.name, "dataset": "benchmark-random-weights",
        "dataset_fingerprint": "", "world_model_config": wm_cfg.to_dict(), "idm_config": idm_cfg.to_dict(),
        "norm_stats": NormStats.from_dataset(seed_data).to_dict(), "heldout_fraction": 0.1, "split_seed": 0})
    return out


def synthetic_seed_npz(path: Path, n: int, task_name: str) -> None:
    """``n`` random transitions of ``task_name`` in 1000-step episodes (for the memory figure only)."""
    from dawm_env.data.loading import save_npz
    from dawm_env.data.records import OfflineDataset
    from dawm_env.tasks import get_task

    task = get_task(task_name)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((n, task.obs_dim), dtype=np.float32) * 0.1
    obs[:, 0] = 1.25  # healthy height for hopper / walker
    offsets = np.unique(np.r_[np.arange(0, n, 1000), n]).astype(np.int64)
    trunc = np.zeros(n, bool)
    trunc[offsets[1:] - 1] = True
    save_npz(OfflineDataset(task=task.name, observations=obs, actions=rng.uniform(-1, 1, (n, task.act_dim)).astype(np.float32),
                            rewards=rng.standard_normal(n, dtype=np.float32), next_observations=obs.copy(),
                            terminations=np.zeros(n, bool), truncations=trunc, episode_offsets=offsets,
                            seeds=np.full(len(offsets) - 1, -1, np.int64)), path)


_MEMORY_CHILD = r"""
import json, os, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[6]))
from dawm_env.generation import GenerateConfig, generate_dataset
t = time.perf_counter()
generate_dataset(GenerateConfig(bundle=sys.argv[1], seed_dataset=sys.argv[2], out="bench/mem/gen-v0", repeats=8,
                                chunk_size=int(sys.argv[3]), batch_size=int(sys.argv[4]), max_chunks=int(sys.argv[5]),
                                progress=False))
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t}))
"""


def main() -> None:
    """Run and save the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="bundle name / folder (default: random weights of --preset)")
    p.add_argument("--preset", default="cpu", help="architecture of the random-weight bundle")
    p.add_argument("--task", default="hopper")
    p.add_argument("--horizon", type=int, default=7)
    p.add_argument("--pairs", type=int, default=4096, help="seed pairs rolled out for the model / end-to-end figures")
    p.add_argument("--batch-size", type=int, default=4096, help="rollouts per model call")
    p.add_argument("--real-steps", type=int, default=20_000, help="transitions of the real MuJoCo build")
    p.add_argument("--minari-episodes", type=int, default=2000, help="episodes for the Minari write comparison")
    p.add_argument("--memory-seed-transitions", type=int, default=1_000_000)
    p.add_argument("--memory-chunks", type=int, nargs="+", default=[1, 3],
                   help="chunks to run in the memory child, one child per value (the peak should not grow)")
    p.add_argument("--memory-chunk-size", type=int, default=32768)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--memory-only", action="store_true", help="only the memory figure (needs --bundle or makes one)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peak-gflops", type=float, default=None)
    add_out_argument(p, "generation_speed")
    args = p.parse_args()

    import minari
    from minari.data_collector import EpisodeBuffer

    from dawm_env.data.minari_io import MinariStreamWriter, write_episode_file, write_minari_dataset
    from dawm_env.data.policies import default_policy_path, load_policy
    from dawm_env.data.rollout import collect_transitions
    from dawm_env.generation import GenerateConfig, RolloutConfig, RolloutGenerator, generate_dataset
    from dawm_env.tasks import get_task
    from dawm_env.world_model.bundle import Bundle

    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    work = Path(tempfile.mkdtemp(prefix="dawm-genbench-"))
    os.environ["MINARI_DATASETS_PATH"] = str(work / "minari")
    os.environ["DAWM_HOME"] = str(work / "home")
    peak = args.peak_gflops or matmul_peak_gflops()
    print(f"matmul peak {peak:.1f} GFLOP/s on {torch.get_num_threads()} threads; load average {os.getloadavg()}",
          flush=True)

    real_row = model_row = write_row = e2e_row = None
    bundle_dir = Path(args.bundle) if args.bundle else None
    if not args.memory_only:
        # --- real dataset build with a behaviour policy in MuJoCo -------------------------------------
        policy_path = default_policy_path(task, "expert") if task.name != "hopper" else default_policy_path(task, "medium")
        policy = load_policy(policy_path, task)
        t0 = time.perf_counter()
        real = collect_transitions(task, policy.policy_fn(seed=0), args.real_steps, seed=0, num_envs=16, progress=False)
        rollout_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_minari_dataset(real, "bench/real/medium-v0", algorithm_name="bench", description="bench", provenance={})
        real_write_s = time.perf_counter() - t0
        real_row = {"policy": policy_path.name, "transitions": real.num_transitions, "episodes": real.num_episodes,
                    "rollout_tps": real.num_transitions / rollout_s, "write_s": real_write_s,
                    "total_tps": real.num_transitions / (rollout_s + real_write_s)}
        print(f"real build: rollouts {real_row['rollout_tps']:.0f} tr/s, with write {real_row['total_tps']:.0f} tr/s", flush=True)

        # --- model-only generation + FLOP rate ----------------------------------------------------------
        bundle_dir = bundle_dir or make_random_bundle(work / "bundle", real, args.preset)
        bundle = Bundle.load(bundle_dir)
        gen = RolloutGenerator(bundle, RolloutConfig(horizon=args.horizon, batch_size=args.batch_size))
        n = min(args.pairs, real.num_transitions)
        s, a = real.observations[:n], real.actions[:n]
        gen.generate(s[: min(64, n)], a[: min(64, n)], gen.new_generator(0))  # warm-up
        with FlopCounterMode(display=False) as fc:
            gen.generate(s[: args.batch_size], a[: args.batch_size], gen.new_generator(0))
        flops_per_rollout = fc.get_total_flops() / min(args.batch_size, n)
        t0 = time.perf_counter()
        rollouts = gen.generate(s, a, gen.new_generator(1))
        model_s = time.perf_counter() - t0
        gflops = flops_per_rollout * n / model_s / 1e9
        model_row = {"rollouts": n, "transitions": rollouts.num_transitions, "seconds": model_s,
                     "transitions_per_s": rollouts.num_transitions / model_s,
                     "rollout_steps_per_s": n * gen.config.horizon / model_s,
                     "terminated_fraction": float(rollouts.terminated.mean()),
                     "gflop_per_rollout": flops_per_rollout / 1e9,
                     "achieved_gflops": gflops, "fraction_of_peak": gflops / peak, "config": gen.config.to_dict(),
                     "params_world_model": sum(p.numel() for p in bundle.world_model.parameters()),
                     "params_idm": sum(p.numel() for p in bundle.idm.parameters())}
        print(f"model: {model_row['rollout_steps_per_s']:.0f} rollout steps/s (= transitions/s when none terminates; "
              f"kept {model_row['transitions_per_s']:.0f}/s, {100 * model_row['terminated_fraction']:.0f}% terminated "
              f"early), {gflops:.1f} GFLOP/s = "
              f"{100 * gflops / peak:.0f}% of peak ({flops_per_rollout / 1e6:.1f} MFLOP per rollout)", flush=True)

        # --- Minari write speed: Minari's writer vs dawm's, and the merge copy ---------------------------
        data, infos = rollouts.to_dataset(task)
        m = min(args.minari_episodes, data.num_episodes)
        sub_off = data.episode_offsets[: m + 1]
        buffers = []
        for e in range(m):
            lo, hi = sub_off[e], sub_off[e + 1]
            buffers.append(EpisodeBuffer(
                id=e, observations=np.concatenate([data.observations[lo:hi], data.next_observations[hi - 1: hi]]),
                actions=data.actions[lo:hi], rewards=data.rewards[lo:hi], terminations=data.terminations[lo:hi],
                truncations=data.truncations[lo:hi],
                infos={k: np.concatenate([v[lo:hi], v[hi - 1: hi]]) for k, v in infos.items()}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            minari.create_dataset_from_buffers("bench/w/minari-v0", buffers, env=task.env_id, eval_env=task.env_id,
                                               algorithm_name="b", author="b", code_permalink="b", description="b",
                                               ref_min_score=task.ref_min_score, ref_max_score=task.ref_max_score)
            minari_s = time.perf_counter() - t0
        from dawm_env.data.records import OfflineDataset

        part = OfflineDataset(task=task.name, observations=data.observations[: sub_off[-1]], actions=data.actions[: sub_off[-1]],
                              rewards=data.rewards[: sub_off[-1]], next_observations=data.next_observations[: sub_off[-1]],
                              terminations=data.terminations[: sub_off[-1]], truncations=data.truncations[: sub_off[-1]],
                              episode_offsets=sub_off, seeds=np.full(m, -1, np.int64))
        part_infos = {k: v[: sub_off[-1]] for k, v in infos.items()}
        t0 = time.perf_counter()
        with MinariStreamWriter("bench/w/dawm-v0", task, algorithm_name="b", description="b") as w:
            t1 = time.perf_counter()
            w.append(part, part_infos)
            append_s = time.perf_counter() - t1
            w.finalize()
        dawm_total_s = time.perf_counter() - t0
        write_episode_file(work / "part.h5", part, part_infos)
        with MinariStreamWriter("bench/w/merge-v0", task, algorithm_name="b", description="b") as w:
            t1 = time.perf_counter()
            w.append_episode_file(work / "part.h5")
            merge_s = time.perf_counter() - t1
            w.finalize()
        root = Path(os.environ["MINARI_DATASETS_PATH"])
        size = lambda d: sum(f.stat().st_size for f in (root / d).rglob("*.hdf5"))  # noqa: E731
        write_row = {"episodes": m, "minari_ms_per_episode": 1e3 * minari_s / m,
                     "dawm_append_ms_per_episode": 1e3 * append_s / m, "dawm_total_ms_per_episode": 1e3 * dawm_total_s / m,
                     "merge_copy_ms_per_episode": 1e3 * merge_s / m,
                     "minari_bytes_per_episode": size("bench/w/minari-v0") / m,
                     "dawm_bytes_per_episode": size("bench/w/dawm-v0") / m}
        print(f"write: minari {write_row['minari_ms_per_episode']:.2f} ms/episode "
              f"({write_row['minari_bytes_per_episode']:.0f} B), dawm {write_row['dawm_append_ms_per_episode']:.2f} ms/episode "
              f"({write_row['dawm_bytes_per_episode']:.0f} B), merge copy {write_row['merge_copy_ms_per_episode']:.2f} ms/episode",
              flush=True)

        # --- end to end: generate_dataset -------------------------------------------------------------
        t0 = time.perf_counter()
        out = generate_dataset(GenerateConfig(bundle=str(bundle_dir), seed_dataset="bench/real/medium-v0",
                                              out="bench/gen/e2e-v0", horizon=args.horizon, batch_size=args.batch_size,
                                              chunk_size=max(args.batch_size, n // 2), subsample=max(1, real.num_transitions // n),
                                              progress=False))
        e2e_s = time.perf_counter() - t0
        ds = minari.load_dataset(out)
        e2e_row = {"rollouts": ds.total_episodes, "transitions": ds.total_steps, "seconds": e2e_s,
                   "transitions_per_s": ds.total_steps / e2e_s,
                   "rollout_steps_per_s": ds.total_episodes * args.horizon / e2e_s}
        print(f"end to end: {ds.total_episodes} rollouts, {e2e_row['rollout_steps_per_s']:.0f} rollout steps/s "
              f"(kept {e2e_row['transitions_per_s']:.0f} transitions/s; incl. bundle / seed loading, chunk files, "
              f"merge)", flush=True)


    # --- peak memory of a streaming run over a 1M-transition seed dataset, repeats 8 -------------------
    mem_rows = None
    if not args.skip_memory:
        npz = work / "seed_1m.npz"
        synthetic_seed_npz(npz, args.memory_seed_transitions, task.name)
        if bundle_dir is None:
            from dawm_env.data.loading import load_dataset

            bundle_dir = make_random_bundle(work / "bundle", load_dataset(npz), args.preset)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        mem_rows = []
        for chunks in args.memory_chunks:
            shutil.rmtree(work / f".{Path(os.environ['MINARI_DATASETS_PATH']).name}-dawm-staging", ignore_errors=True)
            res = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(bundle_dir), str(npz),
                                  str(args.memory_chunk_size), str(min(args.batch_size, args.memory_chunk_size)),
                                  str(chunks), str(args.threads)], env=env, capture_output=True, text=True, check=True)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row.update({"seed_transitions": args.memory_seed_transitions, "repeats": 8,
                        "planned_rollouts": args.memory_seed_transitions * 8, "chunks_run": chunks,
                        "chunk_size": args.memory_chunk_size})
            mem_rows.append(row)
            print(f"memory: peak RSS {row['peak_rss_mb']:.0f} MB for a {args.memory_seed_transitions}-transition seed "
                  f"dataset x 8 repeats ({chunks} chunk(s) of {args.memory_chunk_size} rollouts run)", flush=True)

    ratios = {}
    if model_row is not None:
        # rollout steps, not kept transitions: an untrained (random-weight) bundle terminates most rollouts
        # at once, a trained one ~2% (implementation notes); the compute per rollout is the same.
        ratios = {"ratio_model_vs_real_rollouts": model_row["rollout_steps_per_s"] / real_row["rollout_tps"],
                  "ratio_end_to_end_vs_real_build": e2e_row["rollout_steps_per_s"] / real_row["total_tps"]}
        print(f"ratios: model / real rollouts {ratios['ratio_model_vs_real_rollouts']:.2f}, "
              f"end-to-end / real build {ratios['ratio_end_to_end_vs_real_build']:.2f}")
    result = {
        "benchmark": "generation_speed", "task": task.name, "bundle": str(args.bundle or f"random weights, preset {args.preset}"),
        "peak_gflops": peak, "model": model_row, "end_to_end": e2e_row, "real_build": real_row, **ratios,
        "minari_write": write_row, "memory": mem_rows,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        "machine": platform.processor() or platform.machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "args": vars(args), "load_note": os.environ.get("BENCH_NOTE", ""),
    }
    shutil.rmtree(work, ignore_errors=True)
    save_results(args.out, "generation_speed", result)


if __name__ == "__main__":
    main()
