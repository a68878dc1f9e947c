"""The Decision Diffuser planner evaluated like the agents: real ``-v5`` episodes, D4RL-normalised scores.

The planner has no learning curve and no agent seeds: a "seed" here is a planning seed (the sampling noise) with
its own episodes (:func:`~dawm_env.agents.evaluation.reset_seeds` of that seed, so seed ``s`` plays the episodes
agent seed ``s`` plays); the score of a seed is the mean over its episodes and the reported std is over seeds,
as for the agents. All ``K x N`` episodes run together and every step plans for all running episodes in one
model call (:class:`~dawm_env.planner.model.PlannerPolicy`).

``dawm evaluate-planner BUNDLE --episodes N [--seeds K] [--out DIR]`` writes ``DIR/evaluation.json`` with the
fields of ``dawm evaluate``'s file (``algo = "dd"``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from dawm_env.agents.evaluation import FINAL_STREAM, Evaluator, aggregate, reset_seeds
from dawm_env.agents.train import EVALUATION_FILE
from dawm_env.paths import atomic_write_json, check_writable_dir
from dawm_env.planner.bundle import PlannerBundle
from dawm_env.planner.model import PlannerPolicy

#: ``algo`` of the planner's evaluation files and experiment cells.
PLANNER_ALGO = "dd"


def evaluate_planner(bundle: str | Path | PlannerBundle, episodes: int = 10, seeds: int = 1, seed: int = 0,
                     stream: int = FINAL_STREAM, device: str = "cpu", rtg: Optional[float] = None,
                     guidance: Optional[float] = None, sampling_steps: Optional[int] = None,
                     out: Optional[str | Path] = None) -> dict:
    """Evaluate a planner bundle in its task's real env; writes ``evaluation.json`` into ``out`` (if given).

    Args:
        bundle: a planner bundle name, folder or loaded :class:`PlannerBundle`.
        episodes: N episodes per planning seed.
        seeds: K planning seeds ``seed .. seed + K - 1``.
        stream: reset-seed stream (:data:`FINAL_STREAM` as ``dawm evaluate``; the experiments use the agents'
            training-time stream so DD plays the episodes of the agents' evaluations).
        rtg / guidance / sampling_steps: planning settings (None = the bundle's config).

    Returns:
        ``{"algo": "dd", "task", "env_id", "step", "seeds", "episodes", "normalized": {mean, std, per_seed},
        "returns": {...}, "episode_returns", "score_note", ...}``.

    Raises:
        ValueError: bad counts or settings; CheckpointError / FileNotFoundError: not a planner bundle.
    """
    for name, value in (("--episodes", episodes), ("--seeds", seeds)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if rtg is not None and not -10.0 < float(rtg) < 10.0:
        raise ValueError(f"--rtg is a return-to-go over the task scale (DD: 0.9), got {rtg}")
    if guidance is not None and not float(guidance) >= 0.0:
        raise ValueError(f"--guidance must be >= 0, got {guidance}")
    out_dir = check_writable_dir(out, "--out") if out is not None else None
    pb = bundle if isinstance(bundle, PlannerBundle) else PlannerBundle.load(bundle, device)
    cfg = pb.planner.config
    if sampling_steps is not None and not 1 <= int(sampling_steps) <= cfg.n_diffusion_steps:
        raise ValueError(f"--sampling-steps must lie in [1, {cfg.n_diffusion_steps}] for {pb.path}, got "
                         f"{sampling_steps}")
    seed_list = [seed + i for i in range(seeds)]
    policy = PlannerPolicy(pb.planner, seed=seed, rtg=rtg, guidance=guidance, sampling_steps=sampling_steps)
    t0 = time.perf_counter()
    with Evaluator(pb.task, len(seed_list), episodes) as ev:
        returns, scores = ev.scores(policy, [reset_seeds(s, episodes, stream) for s in seed_list])
        steps = ev.steps.copy()
    seconds = time.perf_counter() - t0
    task = pb.task
    result = {"algo": PLANNER_ALGO, "task": task.name, "env_id": task.env_id, "step": pb.steps,
              "seeds": seed_list, "episodes": episodes, "normalized": aggregate(scores.mean(1)),
              "returns": aggregate(returns.mean(1)), "episode_returns": returns.tolist(),
              "episode_steps": steps.tolist(), "bundle": str(pb.path), "stream": stream,
              "rtg": cfg.target_rtg if rtg is None else float(rtg),
              "guidance_weight": cfg.guidance_weight if guidance is None else float(guidance),
              "sampling_steps": cfg.n_sampling_steps if sampling_steps is None else int(sampling_steps),
              "horizon": cfg.horizon, "model_calls": policy.model_calls, "eval_seconds": seconds,
              "score_note": f"D4RL-normalised (x100) on {task.env_id}; std over planning seeds (ddof=0): one trained "
                            "planner, its seeds differ in sampling noise and episodes only."}
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / EVALUATION_FILE, result)
    return result
