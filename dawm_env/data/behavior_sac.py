"""Behaviour SAC run: D4RL's recipe for ``medium`` and ``medium-replay`` data.

D4RL trained SAC from scratch, stopped when the policy first reached about one third of the expert
return, used that policy for ``medium`` and the run's whole replay buffer for ``medium-replay``.
This module reproduces that with Stable-Baselines3 SAC (rl-zoo MuJoCo defaults: 256x256 MLPs,
lr 3e-4, batch 256, 10k random warm-up steps).

Every episode the agent plays is recorded by a wrapper (its reset seed included), so the replay
dataset is exact: terminations and time-limit truncations kept apart, the episode running when the
target is reached marked truncated. The run checkpoints at episode boundaries (SB3 model + SB3 replay
buffer + our recorded episodes) and a rerun resumes from the last checkpoint.

Outputs in ``behavior_run_dir(task, seed)``: ``policy.zip`` (the medium policy), ``replay.npz``
(D4RL qlearning layout plus timeouts, seeds and episode offsets) and ``run.json``.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import gymnasium as gym
import numpy as np

from dawm_env.data.records import OfflineDataset
from dawm_env.data.rollout import evaluate_returns
from dawm_env.paths import atomic_write_json, behavior_run_dir
from dawm_env.tasks import get_task

log = logging.getLogger(__name__)


@dataclass
class BehaviorSACConfig:
    """Configuration of one behaviour SAC run."""

    task: str = "hopper"
    """Task name (hopper / walker2d / halfcheetah)."""
    seed: int = 0
    """Seed of SAC and of the recorded episodes' resets (episode i uses ``seed * 10**6 + i``)."""
    target_fraction: float = 1.0 / 3.0
    """Stop once the stochastic policy's mean return reaches this fraction of D4RL's expert return."""
    max_steps: int = 1_000_000
    """Hard cap on environment steps; the run stops there even if the target was not reached."""
    learning_starts: int = 10_000
    """Uniform-random warm-up steps before the first gradient step (rl-zoo MuJoCo setting)."""
    eval_every: int = 5_000
    """Evaluate the stochastic policy every this many environment steps."""
    eval_episodes: int = 5
    """Episodes per evaluation (run in parallel)."""
    checkpoint_every_s: float = 300.0
    """Seconds between resumable checkpoints (taken at the next episode boundary)."""
    torch_threads: int = 1
    """torch intra-op threads (small nets: one thread per run is most efficient on 2 cores)."""


class _EpisodeRecorder(gym.Wrapper):
    """Records every transition; reseeds every reset with ``base_seed + episode_index``."""

    def __init__(self, env: gym.Env, base_seed: int, episodes: Optional[list[dict]] = None):
        super().__init__(env)
        self.base_seed = base_seed
        self.episodes: list[dict] = list(episodes or [])
        self.current: Optional[dict] = None

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        # SB3 passes its own seed on the first reset; we reseed every episode ourselves instead, so the
        # recorded per-episode seeds are exact.
        s = self.base_seed + len(self.episodes)
        obs, info = self.env.reset(seed=s, options=options)
        self.current = {"seed": s, "obs": [obs], "act": [], "rew": [], "term": [], "trunc": []}
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        cur = self.current
        cur["obs"].append(obs)
        cur["act"].append(np.asarray(action, dtype=np.float32))
        cur["rew"].append(float(reward))
        cur["term"].append(bool(terminated))
        cur["trunc"].append(bool(truncated))
        if terminated or truncated:
            self.episodes.append(cur)
            self.current = None
        return obs, reward, terminated, truncated, info

    def to_dataset(self, task: str, include_current: bool) -> OfflineDataset:
        eps = list(self.episodes)
        if include_current and self.current is not None and self.current["act"]:
            eps.append(self.current)  # cut by the stop: from_episodes marks it truncated
        return _episodes_to_dataset(task, eps)


def _episodes_to_dataset(task: str, eps: list[dict]) -> OfflineDataset:
    return OfflineDataset.from_episodes(
        task=task,
        observations=[np.asarray(e["obs"], dtype=np.float32) for e in eps],
        actions=[np.asarray(e["act"], dtype=np.float32) for e in eps],
        rewards=[np.asarray(e["rew"], dtype=np.float32) for e in eps],
        terminations=[np.asarray(e["term"]) for e in eps],
        truncations=[np.asarray(e["trunc"]) for e in eps],
        seeds=[e["seed"] for e in eps],
        source=f"behavior-sac:{task}",
    )


def _dataset_to_episodes(ds: OfflineDataset) -> list[dict]:
    out = []
    for e in range(ds.num_episodes):
        ep = ds.episode(e)
        out.append({"seed": ep.seed, "obs": list(ep.observations), "act": list(ep.actions),
                    "rew": list(ep.rewards), "term": list(ep.terminations), "trunc": list(ep.truncations)})
    return out


def _lock_run(run_dir: Path):
    """An exclusive lock on the run folder: two processes must never train the same run."""
    import fcntl

    fh = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise RuntimeError(f"another process is training the behaviour run in {run_dir}; wait for it to finish")
    return fh


def run_behavior_sac(cfg: BehaviorSACConfig, progress: bool = True) -> Path:
    """Train (or resume, or reuse) the behaviour SAC run for ``cfg.task``; returns its folder.

    Safe to interrupt: rerunning resumes from the last checkpoint; a finished run is reused as is.
    """
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    from dawm_env.data.loading import load_npz, save_npz
    from dawm_env.data.policies import sb3_policy_fn

    task = get_task(cfg.task)
    run_dir = behavior_run_dir(task.name, cfg.seed)
    if (run_dir / "run.json").is_file() and (run_dir / "replay.npz").is_file():
        log.info("reusing finished behaviour run %s", run_dir)
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_run(run_dir)  # noqa: F841  (held until this function returns)
    ckpt = run_dir / "checkpoint"
    torch.set_num_threads(cfg.torch_threads)
    target = cfg.target_fraction * task.ref_max_score

    state = {"history": [], "reached_at": None}
    episodes: list[dict] = []
    if (ckpt / "state.json").is_file():
        import json

        state = json.loads((ckpt / "state.json").read_text())
        episodes = _dataset_to_episodes(load_npz(ckpt / "episodes.npz", task=task.name))
    recorder = _EpisodeRecorder(gym.make(task.env_id), base_seed=cfg.seed * 10**6, episodes=episodes)
    if (ckpt / "model.zip").is_file():
        model = SAC.load(ckpt / "model.zip", env=recorder, device="cpu")
        model.load_replay_buffer(ckpt / "replay_buffer.pkl")
        log.info("resumed behaviour run at step %d", model.num_timesteps)
    else:
        model = SAC("MlpPolicy", recorder, learning_starts=cfg.learning_starts, seed=cfg.seed, device="cpu")

    def save_checkpoint() -> None:
        tmp = run_dir / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model.save(tmp / "model.zip")
        model.save_replay_buffer(tmp / "replay_buffer.pkl")
        if recorder.episodes:
            save_npz(_episodes_to_dataset(task.name, recorder.episodes), tmp / "episodes.npz")
        atomic_write_json(tmp / "state.json", state)
        old = run_dir / "checkpoint.old"
        shutil.rmtree(old, ignore_errors=True)
        if ckpt.exists():
            ckpt.rename(old)
        tmp.rename(ckpt)
        shutil.rmtree(old, ignore_errors=True)

    class _Control(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.last_ckpt = time.time()

        def _on_step(self) -> bool:
            step = self.num_timesteps
            if step % cfg.eval_every == 0 and step >= cfg.learning_starts:
                rets = evaluate_returns(task, sb3_policy_fn(self.model), cfg.eval_episodes, seed=10**8 + step)
                state["history"].append({"step": step, "mean_return": float(rets.mean()),
                                         "normalized": float(task.normalized_score(rets.mean()))})
                log.info("step %d: stochastic return %.1f (target %.1f)", step, rets.mean(), target)
                if rets.mean() >= target:
                    state["reached_at"] = step
                    return False
            if self.locals["dones"][0] and time.time() - self.last_ckpt > cfg.checkpoint_every_s:
                save_checkpoint()
                self.last_ckpt = time.time()
            return True

    remaining = cfg.max_steps - model.num_timesteps
    if remaining > 0:
        model.learn(remaining, callback=_Control(), reset_num_timesteps=False, progress_bar=progress)
    model.save(run_dir / "policy.zip")
    replay = recorder.to_dataset(task.name, include_current=True)
    save_npz(replay, run_dir / "replay.npz")
    summary = {
        "config": asdict(cfg), "steps": int(model.num_timesteps), "target_return": target,
        "reached_target_at": state["reached_at"], "eval_history": state["history"],
        "replay_transitions": replay.num_transitions, "replay_episodes": replay.num_episodes,
    }
    if state["reached_at"] is None:
        log.warning("behaviour run stopped at max_steps=%d without reaching return %.0f", cfg.max_steps, target)
    atomic_write_json(run_dir / "run.json", summary)  # written last: marks the run finished
    shutil.rmtree(ckpt, ignore_errors=True)
    return run_dir
