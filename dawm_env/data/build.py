"""D4RL-style dataset builder: roll out real MuJoCo policies and write a local Minari dataset.

Levels follow D4RL's recipe (Fu et al. 2020):

==============  ============================================================================
random          uniform random actions
medium          the stochastic ``medium`` policy (hopper: shipped SB3 SAC; walker2d / halfcheetah:
                the behaviour SAC run's policy at one third of expert return)
expert          the stochastic expert policy (shipped sb3-contrib TQC)
medium-expert   ``medium`` + ``expert`` rollouts concatenated (N + N transitions)
medium-replay   the whole replay buffer of the behaviour SAC run (stopped at one third of expert)
==============  ============================================================================

Dataset ids: ``dawm-d4rl/<task>/<level>-v0`` by default (``--id`` overrides). The ``dawm-d4rl``
namespace keeps self-built data apart from Minari's remote ``mujoco/*`` datasets and from real D4RL.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from dawm_env.data.behavior_sac import BehaviorSACConfig, equivalent_finished_run, run_behavior_sac, run_dir_for
from dawm_env.data.loading import load_dataset, load_npz
from dawm_env.data.minari_io import (
    dataset_exists,
    read_provenance,
    validate_dataset_id,
    write_minari_dataset,
    write_once,
)
from dawm_env.data.policies import default_policy_path, load_policy
from dawm_env.data.records import OfflineDataset
from dawm_env.data.rollout import collect_transitions, uniform_random_policy
from dawm_env.paths import file_sha256, minari_root
from dawm_env.tasks import LEVEL_PARTS, LEVELS, TaskSpec, get_task

log = logging.getLogger(__name__)

DATASET_NAMESPACE = "dawm-d4rl"


def default_dataset_id(task: str, level: str, version: int = 0) -> str:
    """``dawm-d4rl/<task>/<level>-v<version>``."""
    return f"{DATASET_NAMESPACE}/{get_task(task).name}/{level}-v{version}"


@dataclass
class BuildConfig:
    """What to build."""

    task: str
    """hopper / walker2d / halfcheetah."""
    level: str
    """One of ``LEVELS``: random, medium, expert, medium-expert, medium-replay."""
    policy: Optional[str] = None
    """Path to any SB3 / sb3-contrib policy zip, overriding the default policy of the level."""
    steps: int = 1_000_000
    """Transitions to collect (per half for medium-expert; the SAC step cap for medium-replay)."""
    seed: int = 0
    """Seed: episode ``i`` is reset with ``seed * 10**6 + i``."""
    dataset_id: Optional[str] = None
    """Minari id to write; default ``dawm-d4rl/<task>/<level>-v0``."""
    num_envs: int = 16
    """Environments stepped together, one batched policy call per step."""
    overwrite: bool = False
    """Replace an existing dataset with the same id."""


def _check(cfg: BuildConfig) -> TaskSpec:
    task = get_task(cfg.task)
    if cfg.level not in LEVELS:
        raise ValueError(f"unknown level {cfg.level!r}; choose one of {', '.join(LEVELS)}")
    if cfg.steps <= 0:
        raise ValueError(f"--steps must be positive, got {cfg.steps}")
    if cfg.num_envs < 1:
        raise ValueError(f"--num-envs must be >= 1, got {cfg.num_envs}")
    if cfg.dataset_id is not None:  # an empty --id is an error, not a request for the default id
        validate_dataset_id(cfg.dataset_id)
    if cfg.policy is not None and cfg.level in ("random", "medium-expert", "medium-replay"):
        raise ValueError(
            f"--policy does not apply to level {cfg.level!r}: random uses uniform actions, medium-expert "
            "concatenates the medium and expert datasets, medium-replay is a SAC run's replay buffer"
        )
    return task


def _policy_rollouts(task: TaskSpec, level: str, cfg: BuildConfig, seed_base: int, progress: bool,
                     info: dict) -> OfflineDataset:
    """Rollouts of the level's policy (``cfg.policy`` or the default) with stochastic actions.

    Policies are loaded without unpickling (a dawm ``.json`` / ``.safetensors`` pair, or an SB3 zip read
    safely); actions are sampled from a generator seeded with ``seed_base``, so a build is reproducible.
    """

    path = Path(cfg.policy) if cfg.policy else default_policy_path(task, level)
    if path is None:  # walker2d / halfcheetah medium: the behaviour SAC run's policy
        run_dir = _behavior_run(task, cfg, progress)
        path = run_dir / "policy.json"
        if not path.is_file() and (run_dir / "policy.zip").is_file():
            path = run_dir / "policy.zip"  # a run finished by an older dawm: its zip is read safely too
    policy = load_policy(path, task)
    info[f"{level}_policy"] = {"path": str(path), "sha256": file_sha256(path), "weights_sha256": policy.weights_sha256,
                               "algorithm": policy.algorithm}
    return collect_transitions(task, policy.policy_fn(seed=seed_base, deterministic=False), cfg.steps,
                               seed=seed_base, num_envs=cfg.num_envs, progress=progress, desc=f"{task.name}-{level}")


def _behavior_run(task: TaskSpec, cfg: BuildConfig, progress: bool) -> Path:

    max_steps = cfg.steps if cfg.level == "medium-replay" else BehaviorSACConfig.max_steps
    sac_cfg = BehaviorSACConfig(task=task.name, seed=cfg.seed, max_steps=max_steps)
    run_dir = run_dir_for(sac_cfg)
    if not (run_dir / "run.json").is_file() and equivalent_finished_run(sac_cfg) is None:
        log.warning("no finished behaviour SAC run for %s in %s: training one now (tens of minutes on 2 CPU "
                    "cores; interrupt and rerun to resume)", task.name, run_dir)
    return run_behavior_sac(sac_cfg, progress=progress)


def _reuse_built(task: TaskSpec, level: str, cfg: BuildConfig, info: dict) -> Optional[OfflineDataset]:
    """The default-id dataset of ``level`` if it was built with the same steps / seed / envs / policy."""

    dataset_id = default_dataset_id(task.name, level)
    if cfg.policy is not None or not dataset_exists(dataset_id):
        return None
    prov = read_provenance(dataset_id)
    built = prov.get("config", {})
    if any(built.get(k) != getattr(cfg, k) for k in ("steps", "seed", "num_envs")) or built.get("policy") is not None:
        return None
    log.info("reusing %s for the %s half", dataset_id, level)
    info[f"{level}_policy"] = prov.get(f"{level}_policy", {})
    info[f"{level}_reused_from"] = dataset_id
    return load_dataset(dataset_id)


def collect_level(cfg: BuildConfig, progress: bool = True) -> tuple[OfflineDataset, dict]:
    """Collect the transitions of ``cfg`` (no writing). Returns the data and a provenance record."""
    task = _check(cfg)
    info: dict = {}
    base = cfg.seed * 10**6
    if cfg.level == "random":
        data = collect_transitions(task, uniform_random_policy(task.act_dim, seed=base), cfg.steps, seed=base,
                                   num_envs=cfg.num_envs, progress=progress, desc=f"{task.name}-random")
    elif cfg.level in ("medium", "expert"):
        data = _policy_rollouts(task, cfg.level, cfg, base, progress, info)
    elif cfg.level == "medium-expert":
        # D4RL concatenated its medium and expert datasets; the halves use the same seeds as the standalone
        # builds, so an already-built medium / expert dataset of the same config is reused as is
        halves = [_reuse_built(task, lvl, cfg, info) or _policy_rollouts(task, lvl, cfg, base, progress, info)
                  for lvl in LEVEL_PARTS["medium-expert"]]
        data = OfflineDataset.concatenate(halves)
    else:  # medium-replay
        run_dir = _behavior_run(task, cfg, progress)
        data = load_npz(run_dir / "replay.npz", task=task.name)
        info["behavior_run"] = json.loads((run_dir / "run.json").read_text())
    return data, info


def build_dataset(cfg: BuildConfig, progress: bool = True) -> str:
    """Build the dataset described by ``cfg`` and write it as a local Minari dataset; returns its id.

    The dataset appears only once complete: an interrupted build leaves nothing registered. The id's lock
    (:func:`~dawm_env.data.minari_io.dataset_lock`) is held for the whole build: a second build (or
    ``dawm generate``) into the same id fails at once instead of racing this one.
    """

    task = _check(cfg)
    dataset_id = default_dataset_id(task.name, cfg.level) if cfg.dataset_id is None else cfg.dataset_id
    return write_once(dataset_id, lambda: _already_built(cfg, dataset_id),
                      lambda: _build_locked(cfg, task, dataset_id, progress))


def _already_built(cfg: BuildConfig, dataset_id: str) -> bool:
    """True when ``dataset_id`` exists with this very configuration (a rerun is a no-op).

    Raises:
        FileExistsError: it exists with another configuration and ``cfg.overwrite`` is False.
    """
    if not (minari_root() / dataset_id).exists() or cfg.overwrite:
        return False
    built = read_provenance(dataset_id).get("config", {})
    if built == {**asdict(cfg), "dataset_id": cfg.dataset_id}:
        log.info("%s is already built with this configuration", dataset_id)
        return True  # rerunning the same command is a no-op, not an error
    raise FileExistsError(f"dataset {dataset_id!r} already exists with another configuration; pass --overwrite "
                          "or another --id")


def _build_locked(cfg: BuildConfig, task: TaskSpec, dataset_id: str, progress: bool) -> str:
    """Collect and write ``dataset_id`` (the caller holds its lock)."""
    start = time.perf_counter()
    data, info = collect_level(cfg, progress)
    collect_s = time.perf_counter() - start
    returns = data.episode_returns()
    provenance = {
        "builder": "dawm data build", "config": asdict(cfg), "collect_seconds": round(collect_s, 2),
        "transitions": data.num_transitions, "episodes": data.num_episodes,
        "mean_normalized_score": float(np.mean(task.normalized_score(returns))), **info,
    }
    algo = {"random": "uniform-random"}.get(cfg.level, f"{cfg.level} behaviour policy")
    write_minari_dataset(
        data, dataset_id, algorithm_name=algo, overwrite=cfg.overwrite, provenance=provenance,
        description=(f"Self-built D4RL-style {task.name} {cfg.level} data ({task.env_id}), dawm data build. "
                     "Not the original D4RL data."),
    )
    log.info("built %s: %d transitions in %.1fs", dataset_id, data.num_transitions, time.perf_counter() - start)
    return dataset_id
