"""Benchmark: the whole pipeline, timed stage by stage (issue 16, item 6).

data build -> world model -> IDM -> bundle assembly (seeds, held-out metrics, pessimism calibration) ->
generation -> agent training -> final evaluation, for one task and level, each stage a plain dawm API call in
this process, all under a fresh ``--work`` folder (its own ``DAWM_HOME`` and Minari root, so nothing of the
user's is read or reused). Prints a table of the stage wall-clock times and writes them, with every setting and the
final score, as JSON (never overwriting an existing file).

Defaults are the package's CPU recipe (1M-transition data, the ``cpu`` world-model preset's 12k steps as the shipped
bundle, 2000 IDM steps, generation H = 7 from every real pair, TD3+BC 3 seeds x 30k steps, 50 final episodes per
seed). Timings are only figures on an otherwise idle machine.

    python benchmarks/pipeline.py --work /tmp/pipe --threads 2
    python benchmarks/pipeline.py --work /tmp/pipe-small --data-steps 20000 --wm-steps 200 --idm-steps 200 \
        --subsample 10 --agent-steps 500 --final-episodes 2 --out /tmp/pipe-small.json     # minutes
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from _common import add_out_argument, save_results  # benchmarks/ is on sys.path when a script runs


def main() -> None:
    """Run every stage, print and save the timings."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="new, empty working folder (datasets, bundle, runs)")
    p.add_argument("--task", default="hopper")
    p.add_argument("--level", default="medium")
    p.add_argument("--data-steps", type=int, default=1_000_000, help="real transitions to build")
    p.add_argument("--wm-preset", default="cpu")
    p.add_argument("--wm-steps", type=int, default=12_000)
    p.add_argument("--idm-steps", type=int, default=2000)
    p.add_argument("--horizon", type=int, default=7, help="generated transitions per rollout")
    p.add_argument("--subsample", type=int, default=1, help="generate from a random 1/T of the real pairs")
    p.add_argument("--recipe", default="recommended", choices=("recommended", "paper"),
                   help="how the agent uses the generated data (dawm train agent --recipe)")
    p.add_argument("--real-fraction", type=float, default=None, help="real share of the agent's batches "
                   "(default: the recipe's)")
    p.add_argument("--algo", default="td3bc")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--agent-steps", type=int, default=30_000)
    p.add_argument("--final-episodes", type=int, default=50, help="fresh real episodes per seed at the end")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_out_argument(p, "pipeline")
    args = p.parse_args()

    work = Path(args.work).expanduser().resolve()
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"--work {work} is not empty: give a new folder (the benchmark times every stage from scratch)")
    os.environ["DAWM_HOME"] = str(work / "dawm_home")  # before dawm is imported: nothing of the user's is reused
    os.environ["MINARI_DATASETS_PATH"] = str(work / "minari")

    from dawm_env.agents.train import TrainAgentConfig, evaluate_run, train_agent
    from dawm_env.data.build import BuildConfig, build_dataset
    from dawm_env.generation import GenerateConfig, generate_dataset
    from dawm_env.runtime import machine_info, setup_torch
    from dawm_env.training.idm import IDMTrainConfig, train_idm
    from dawm_env.training.world_model import WorldModelTrainConfig, train_world_model
    from dawm_env.world_model.assemble import assemble_bundle

    setup_torch(args.device, args.threads)
    real_id = f"bench/{args.task}/{args.level}-v0"
    gen_id = f"bench/{args.task}/{args.level}-dawm-h{args.horizon}-v0"
    bundle, run = work / "bundle", work / "agent"
    common = dict(device=args.device, threads=args.threads, progress=False)
    stages: list[tuple[str, float]] = []

    def timed(name: str, fn, *a, **kw):
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        stages.append((name, time.perf_counter() - t0))
        print(f"{name:<14} {stages[-1][1]:8.1f} s", flush=True)
        return out

    timed("data build", build_dataset, BuildConfig(task=args.task, level=args.level, steps=args.data_steps,
                                                   dataset_id=real_id), progress=False)
    timed("world model", train_world_model, WorldModelTrainConfig(dataset=real_id, out=str(bundle),
                                                                  preset=args.wm_preset, steps=args.wm_steps, **common))
    timed("IDM", train_idm, IDMTrainConfig(dataset=real_id, out=str(bundle), steps=args.idm_steps, **common))
    timed("bundle", assemble_bundle, bundle)
    timed("generation", generate_dataset, GenerateConfig(bundle=str(bundle), seed_dataset=real_id, out=gen_id,
                                                         horizon=args.horizon, subsample=args.subsample, **common))
    timed("agent", train_agent, TrainAgentConfig(algo=args.algo, dataset=real_id, synthetic=gen_id, out=str(run),
                                                 recipe=args.recipe, real_fraction=args.real_fraction,
                                                 seeds=args.seeds,
                                                 steps=args.agent_steps, eval_every=max(1, args.agent_steps // 4),
                                                 eval_episodes=10, level=args.level, **common))
    final = timed("evaluation", evaluate_run, run, episodes=args.final_episodes, device=args.device)
    total = sum(s for _, s in stages)
    print(f"{'total':<14} {total:8.1f} s ({total / 60:.1f} min); final score {final['normalized']['mean']:.1f} ± "
          f"{final['normalized']['std']:.1f} ({args.seeds} seeds x {args.final_episodes} episodes)")
    save_results(args.out, "pipeline", {
        "settings": vars(args), "stages_seconds": dict(stages), "total_seconds": total,
        "final_normalized": final["normalized"], "machine": machine_info(args.device),
        "note": "wall-clock seconds per stage in one process; a figure only on an otherwise idle machine; "
                "self-built D4RL-style data on the -v5 env."})


if __name__ == "__main__":
    main()
