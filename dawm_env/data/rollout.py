"""Vectorised rollouts of a behaviour policy in the real MuJoCo env.

One batched policy call per step for ``num_envs`` environments stepped in a plain loop: cheaper than
Gymnasium's vector wrappers for this use and it lets every episode get its own recorded reset seed.
"""

from __future__ import annotations

from typing import Callable, Optional

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from dawm_env.data.records import OfflineDataset
from dawm_env.tasks import TaskSpec

#: ``(B, obs_dim) float32 -> (B, act_dim)`` batched action function.
PolicyFn = Callable[[np.ndarray], np.ndarray]


def uniform_random_policy(act_dim: int, seed: int) -> PolicyFn:
    """Uniform actions in [-1, 1] (D4RL's ``random`` level), from a seeded generator."""
    rng = np.random.default_rng(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, size=(obs.shape[0], act_dim)).astype(np.float32)

    return act


def collect_transitions(
    task: TaskSpec,
    policy: PolicyFn,
    num_steps: int,
    seed: int,
    num_envs: int = 16,
    progress: bool = True,
    desc: Optional[str] = None,
) -> OfflineDataset:
    """Roll out ``policy`` until exactly ``num_steps`` transitions are collected.

    Episode ``i`` (in order of its reset) is reset with seed ``seed + i``, recorded in the result.
    Episodes still running when the budget is reached are kept and marked truncated, as D4RL's
    final episode was: they are real data cut by the collection budget, not terminations.

    Args:
        task: which real env to roll out.
        policy: batched action function.
        num_steps: number of transitions to collect (> 0).
        seed: base seed for episode resets.
        num_envs: environments stepped together (one batched policy call per step).
        progress: show a tqdm progress bar.
        desc: progress bar label.

    Returns:
        An :class:`OfflineDataset` with ``num_steps`` transitions.
    """
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    num_envs = max(1, min(num_envs, num_steps))
    envs = [gym.make(task.env_id) for _ in range(num_envs)]
    next_seed = seed
    episodes: list[dict] = []  # finished episodes, each a dict of lists
    running: list[dict] = []
    obs = np.zeros((num_envs, task.obs_dim), dtype=np.float64)
    for i, env in enumerate(envs):
        obs[i], _ = env.reset(seed=next_seed)
        running.append(_new_episode(next_seed, obs[i]))
        next_seed += 1
    collected = 0
    bar = tqdm(total=num_steps, desc=desc or f"{task.name} rollouts", unit="step", disable=not progress)
    try:
        while collected < num_steps:
            actions = np.asarray(policy(obs.astype(np.float32)), dtype=np.float32).reshape(num_envs, task.act_dim)
            active = min(num_envs, num_steps - collected)  # the last step may need fewer envs
            for i in range(active):
                env, ep = envs[i], running[i]
                nobs, reward, terminated, truncated, _ = env.step(actions[i])
                ep["actions"].append(actions[i])
                ep["rewards"].append(float(reward))
                ep["terminations"].append(bool(terminated))
                ep["truncations"].append(bool(truncated))
                ep["observations"].append(nobs)
                obs[i] = nobs
                if terminated or truncated:
                    episodes.append(ep)
                    obs[i], _ = env.reset(seed=next_seed)
                    running[i] = _new_episode(next_seed, obs[i])
                    next_seed += 1
            collected += active
            bar.update(active)
    finally:
        bar.close()
        for env in envs:
            env.close()
    for ep in running:  # cut by the budget: truncated, never terminated
        if ep["actions"]:
            ep["truncations"][-1] = True
            episodes.append(ep)
    episodes.sort(key=lambda e: e["seed"])
    return OfflineDataset.from_episodes(
        task=task.name,
        observations=[np.asarray(e["observations"], dtype=np.float32) for e in episodes],
        actions=[np.asarray(e["actions"], dtype=np.float32) for e in episodes],
        rewards=[np.asarray(e["rewards"], dtype=np.float32) for e in episodes],
        terminations=[np.asarray(e["terminations"], dtype=bool) for e in episodes],
        truncations=[np.asarray(e["truncations"], dtype=bool) for e in episodes],
        seeds=[e["seed"] for e in episodes],
        source=f"rollouts:{task.env_id}",
    )


def _new_episode(seed: int, first_obs: np.ndarray) -> dict:
    return {"seed": seed, "observations": [np.array(first_obs)], "actions": [], "rewards": [],
            "terminations": [], "truncations": []}


def evaluate_returns(task: TaskSpec, policy: PolicyFn, num_episodes: int, seed: int) -> np.ndarray:
    """Undiscounted returns of ``num_episodes`` full episodes (reset seeds ``seed + i``), run in parallel."""
    envs = [gym.make(task.env_id) for _ in range(num_episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    returns = np.zeros(num_episodes)
    done = np.zeros(num_episodes, dtype=bool)
    try:
        while not done.all():
            actions = np.asarray(policy(obs.astype(np.float32)), dtype=np.float32).reshape(num_episodes, -1)
            for i in np.flatnonzero(~done):
                obs[i], reward, terminated, truncated, _ = envs[i].step(actions[i])
                returns[i] += reward
                done[i] = terminated or truncated
    finally:
        for env in envs:
            env.close()
    return returns


def real_step_from(task: TaskSpec, states: np.ndarray, actions: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step the real MuJoCo env once from each given observation: the ground truth of a dream step.

    The root x position is not observed and does not change the dynamics, so setting
    ``(qpos, qvel)`` from the observation reproduces the real transition exactly where the observation
    determines the state (:meth:`TaskSpec.determines_state`: no velocity at the observation's clip; select
    those rows to compare against ground truth).

    Args:
        task: the task (its ``-v5`` env is created once).
        states: ``(B, obs_dim)`` observations.
        actions: ``(B, act_dim)`` actions.

    Returns:
        ``next_observations (B, obs_dim) float64``, ``rewards (B,) float64``, ``terminated (B,) bool``.
    """
    states, actions = np.asarray(states, dtype=np.float64), np.asarray(actions, dtype=np.float32)
    if states.ndim != 2 or actions.shape != (len(states), task.act_dim):
        raise ValueError(f"need states (B, {task.obs_dim}) and actions (B, {task.act_dim}), got {states.shape} "
                         f"and {actions.shape}")
    env = gym.make(task.env_id).unwrapped
    env.reset(seed=0)
    nxt, rew, term = np.zeros_like(states), np.zeros(len(states)), np.zeros(len(states), dtype=bool)
    try:
        for i, (s, a) in enumerate(zip(states, actions)):
            env.set_state(*task.split_observation(s))
            obs, r, terminated, _, _ = env.step(a)
            nxt[i], rew[i], term[i] = obs, r, terminated
    finally:
        env.close()
    return nxt, rew, term
