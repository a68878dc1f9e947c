"""Evaluation of K policies in the real MuJoCo env (``-v5``): D4RL-normalised scores, aggregated over seeds.

All ``K x N`` episodes run together: one batched policy call per time step for every still-running episode,
environments stepped in a plain loop (as :func:`dawm_env.data.rollout.evaluate_returns`, generalised to K
policies and kept alive between evaluations). Actions are deterministic. A policy with memory across an
episode's steps (:class:`EpisodePolicy`, the Decision Diffuser planner) is told when episodes start and which
are still running. :func:`time_episodes` measures per-episode inference time (the paper's Table 3).

Scores are ``100 (R - R_random) / (R_expert - R_random)`` with D4RL's reference returns
(:meth:`dawm_env.tasks.TaskSpec.normalized_score`). dawm evaluates on the ``-v5`` envs, so these are
D4RL-*normalised* scores, not D4RL v2 numbers.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Protocol, Sequence, Union, runtime_checkable

import gymnasium as gym
import numpy as np

from dawm_env.tasks import TaskSpec

#: ``(K, M, obs_dim) float32 -> (K, M, act_dim)``: every policy's actions for its own M observations.
BatchedPolicyFn = Callable[[np.ndarray], np.ndarray]


@runtime_checkable
class EpisodePolicy(Protocol):
    """A batched policy with memory across the steps of an episode (e.g. the planner's previous state).

    ``reset_episodes(K, N)`` is called before the first step of ``K x N`` new episodes; then every step
    ``policy(obs (K, N, obs_dim), running (K, N) bool) -> (K, N, act_dim)`` (actions of finished episodes are
    ignored, so the policy need not compute them).
    """

    def reset_episodes(self, num_policies: int, episodes: int) -> None:
        """Start new episodes."""

    def __call__(self, obs: np.ndarray, running: np.ndarray) -> np.ndarray:
        """Actions of every episode."""


AnyPolicy = Union[BatchedPolicyFn, EpisodePolicy]

#: Stream ids that keep reset seeds of periodic (training-time) and final evaluations apart.
TRAINING_STREAM, FINAL_STREAM = 0, 1


def reset_seeds(agent_seed: int, episodes: int, stream: int = TRAINING_STREAM) -> list[int]:
    """Reset seeds of the evaluation episodes of one agent seed: a fixed set per ``(agent seed, stream)``.

    Every periodic evaluation of a run uses the same episodes (less noise between points of a learning
    curve); ``evaluate_run`` uses a different stream so the final score is not measured on the episodes
    that picked the best checkpoint.
    """
    state = np.random.SeedSequence([agent_seed, stream]).generate_state(episodes, dtype=np.uint32)
    return [int(s) for s in state]


class Evaluator:
    """``K x N`` real environments, reused across evaluations.

    Args:
        task: which env (``task.env_id``) and which reference returns.
        num_policies: K.
        episodes: N episodes per policy.
    """

    def __init__(self, task: TaskSpec, num_policies: int, episodes: int) -> None:
        if num_policies < 1 or episodes < 1:
            raise ValueError(f"need at least one policy and one episode, got {num_policies} and {episodes}")
        self.task, self.k, self.n = task, num_policies, episodes
        self.envs = [gym.make(task.env_id) for _ in range(num_policies * episodes)]
        #: ``(K, N)`` steps of every episode of the last :meth:`returns` call.
        self.steps = np.zeros((num_policies, episodes), dtype=np.int64)

    def returns(self, policy: AnyPolicy, seeds: Sequence[Sequence[int]]) -> np.ndarray:
        """Undiscounted returns of every episode.

        Args:
            policy: batched deterministic policy of the K agents, or an :class:`EpisodePolicy`.
            seeds: ``seeds[k][i]`` is the reset seed of policy k's episode i (``K x N``).

        Returns:
            ``(K, N)`` float64 returns.
        """
        k, n = self.k, self.n
        if len(seeds) != k or any(len(s) != n for s in seeds):
            raise ValueError(f"need {k} x {n} reset seeds")
        obs = np.stack([env.reset(seed=int(seeds[e // n][e % n]))[0] for e, env in enumerate(self.envs)])
        obs = obs.astype(np.float32).reshape(k, n, -1)
        returns = np.zeros((k, n))
        done = np.zeros((k, n), dtype=bool)
        episodic = isinstance(policy, EpisodePolicy)
        if episodic:
            policy.reset_episodes(k, n)
        self.steps = np.zeros((k, n), dtype=np.int64)
        while not done.all():
            raw = policy(obs, ~done) if episodic else policy(obs)
            actions = np.asarray(raw, dtype=np.float32).reshape(k, n, -1)
            for e in np.flatnonzero(~done.reshape(-1)):
                i, j = divmod(int(e), n)
                nobs, reward, terminated, truncated, _ = self.envs[e].step(actions[i, j])
                obs[i, j] = nobs
                returns[i, j] += reward
                self.steps[i, j] += 1
                done[i, j] = terminated or truncated
        return returns

    def scores(self, policy: AnyPolicy, seeds: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """``(returns, normalised scores)``, both ``(K, N)``."""
        r = self.returns(policy, seeds)
        return r, np.asarray(self.task.normalized_score(r))

    def close(self) -> None:
        """Close every environment."""
        for env in self.envs:
            env.close()

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Bootstrap resamples behind every confidence interval (fixed generator seed: a report is reproducible).
BOOTSTRAP_SAMPLES = 10_000


def bootstrap_ci(per_seed: Sequence[float], level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES,
                 seed: int = 0) -> list[float]:
    """Percentile-bootstrap confidence interval ``[low, high]`` of the mean over seeds.

    Seeds are resampled with replacement ``samples`` times; with one seed the interval is that value.
    """
    x = np.asarray(per_seed, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    means = x[np.random.default_rng(seed).integers(0, x.size, (samples, x.size))].mean(1)
    alpha = (1.0 - level) / 2.0
    return [float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))]


def difference_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES,
                  seed: int = 0) -> dict:
    """``mean(a) - mean(b)`` of two independent groups of seeds, with its percentile-bootstrap interval.

    Each group is resampled on its own (the seeds of two cells are separate runs, not pairs).

    Returns:
        ``{"mean": difference, "ci95": [low, high]}``.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size == 0 or y.size == 0:
        raise ValueError("difference_ci needs at least one value per group")
    rng = np.random.default_rng(seed)
    diff = (x[rng.integers(0, x.size, (samples, x.size))].mean(1)
            - y[rng.integers(0, y.size, (samples, y.size))].mean(1))
    alpha = (1.0 - level) / 2.0
    return {"mean": float(x.mean() - y.mean()),
            "ci95": [float(np.quantile(diff, alpha)), float(np.quantile(diff, 1.0 - alpha))]}


def aggregate(per_seed: Sequence[float]) -> dict:
    """Mean, (population, ``ddof = 0``, as CORL reports) std and 95% bootstrap CI of the mean over seeds, plus
    the per-seed values."""
    x = np.asarray(per_seed, dtype=np.float64)
    return {"mean": float(x.mean()), "std": float(x.std()), "ci95": bootstrap_ci(x),
            "per_seed": [float(v) for v in x]}


#: Evaluations averaged into a seed's final score (the protocol: the mean of each seed's last three).
FINAL_EVALUATIONS = 3


def final_scores(scores: np.ndarray, last: int = FINAL_EVALUATIONS) -> np.ndarray:
    """Per-seed final score ``(K,)``: the mean of the last ``last`` rows of ``scores (evaluations, K)``
    (all of them when fewer were made)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or len(scores) == 0:
        raise ValueError(f"need scores of shape (evaluations >= 1, K), got {scores.shape}")
    return scores[-last:].mean(0)


class _TimedPolicy:
    """Wraps a policy and sums the wall-clock seconds spent inside its calls."""

    def __init__(self, policy: AnyPolicy) -> None:
        self.policy, self.seconds = policy, 0.0
        self.episodic = isinstance(policy, EpisodePolicy)

    def reset_episodes(self, num_policies: int, episodes: int) -> None:
        if self.episodic:
            self.policy.reset_episodes(num_policies, episodes)

    def __call__(self, obs: np.ndarray, running: Optional[np.ndarray] = None) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.policy(obs, running) if self.episodic else self.policy(obs)
        out = np.asarray(out)  # a GPU policy's result is on the host here: the time includes the sync
        self.seconds += time.perf_counter() - t0
        return out


def time_episodes(task: TaskSpec, policy: AnyPolicy, seeds: Sequence[int]) -> dict:
    """Per-episode inference time of ``policy`` in the real env: one episode at a time (batch 1), one per seed.

    Returns:
        ``{"episodes", "seeds", "inference_seconds": per episode, "episode_seconds": per episode (env steps
        included), "steps": per episode, "returns", "normalized"}`` (lists, one entry per episode).
    """
    rows: dict[str, list] = {k: [] for k in ("inference_seconds", "episode_seconds", "steps", "returns",
                                             "normalized")}
    with Evaluator(task, 1, 1) as ev:
        for s in seeds:
            timed = _TimedPolicy(policy)
            t0 = time.perf_counter()
            ret = float(ev.returns(timed, [[int(s)]])[0, 0])
            rows["episode_seconds"].append(time.perf_counter() - t0)
            rows["inference_seconds"].append(timed.seconds)
            rows["steps"].append(int(ev.steps[0, 0]))
            rows["returns"].append(ret)
            rows["normalized"].append(float(task.normalized_score(ret)))
    return {"episodes": len(rows["steps"]), "seeds": [int(s) for s in seeds], **rows}
