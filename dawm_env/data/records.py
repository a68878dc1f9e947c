"""Typed, episode-aware offline data records.

``OfflineDataset`` stores transitions flat (row ``i`` is ``(s_i, a_i, r_i, s'_i)``) plus episode
offsets, so both per-transition sampling (agents) and per-episode access (windows, return-to-go,
Minari export) are cheap. Terminations and truncations are kept apart: only a termination means the
episode really ended; a truncation (time limit or collection budget) is a cut, and the value of
``s'`` still has to be bootstrapped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class Episode:
    """One episode, Minari layout.

    Attributes:
        observations: ``(T + 1, obs_dim)``: every state including the one after the last action.
        actions: ``(T, act_dim)``.
        rewards: ``(T,)``.
        terminations: ``(T,)`` bool; only the last entry can be True.
        truncations: ``(T,)`` bool; only the last entry can be True.
        seed: reset seed of the episode, or None when unknown.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    seed: Optional[int] = None

    @property
    def length(self) -> int:
        """Number of transitions T."""
        return len(self.actions)


@dataclass(frozen=True)
class OfflineDataset:
    """A whole offline dataset as flat transitions with exact episode boundaries.

    Attributes:
        task: task name (``hopper`` / ``walker2d`` / ``halfcheetah``) or ``""`` when unknown.
        observations: ``(N, obs_dim)`` float32, ``s_i``.
        actions: ``(N, act_dim)`` float32, ``a_i``.
        rewards: ``(N,)`` float32, ``r_i``.
        next_observations: ``(N, obs_dim)`` float32, ``s'_i``.
        terminations: ``(N,)`` bool, True only on an episode's last transition when it really ended.
        truncations: ``(N,)`` bool, True only on the last transition of an episode that was cut. Both can be
            True at once, as in Gymnasium (the robot fell on the time limit's last step): only the
            termination matters for bootstrapping.
        episode_offsets: ``(E + 1,)`` int64; episode ``e`` is rows ``offsets[e]:offsets[e+1]``.
        seeds: ``(E,)`` int64 reset seeds, -1 where unknown.
        source: where the data came from (Minari id, file path, ``rollouts:...``).
    """

    task: str
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    episode_offsets: np.ndarray
    seeds: np.ndarray
    source: str = ""
    metadata: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        n = len(self.observations)
        if n == 0:
            raise ValueError(f"dataset {self.source!r} holds no transitions")
        for name in ("actions", "rewards", "next_observations", "terminations", "truncations"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"dataset {self.source!r}: {name} has {len(getattr(self, name))} rows but observations has {n}"
                )
        if self.observations.ndim != 2 or self.next_observations.shape != self.observations.shape:
            raise ValueError(
                f"dataset {self.source!r}: observations / next_observations must both be (N, obs_dim), got "
                f"{self.observations.shape} and {self.next_observations.shape}"
            )
        if self.actions.ndim != 2 or self.rewards.ndim != 1:
            raise ValueError(
                f"dataset {self.source!r}: actions must be (N, act_dim) and rewards (N,), got "
                f"{self.actions.shape} and {self.rewards.shape}"
            )
        off = self.episode_offsets
        if off[0] != 0 or off[-1] != n or np.any(np.diff(off) <= 0):
            raise ValueError(f"dataset {self.source!r}: episode offsets must increase strictly from 0 to {n}")
        if len(self.seeds) != len(off) - 1:
            raise ValueError(f"dataset {self.source!r}: need one seed per episode")
        ends = np.zeros(n, dtype=bool)
        ends[off[1:] - 1] = True
        if np.any((self.terminations | self.truncations) & ~ends):
            raise ValueError(f"dataset {self.source!r}: a termination / truncation flag lies inside an episode")
        for name in ("observations", "actions", "rewards", "next_observations"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"dataset {self.source!r}: {name} holds NaN or inf")

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_episodes(
        cls,
        task: str,
        observations: Sequence[np.ndarray],
        actions: Sequence[np.ndarray],
        rewards: Sequence[np.ndarray],
        terminations: Sequence[np.ndarray],
        truncations: Sequence[np.ndarray],
        seeds: Optional[Sequence[Optional[int]]] = None,
        source: str = "",
        metadata: Optional[dict] = None,
    ) -> "OfflineDataset":
        """Build from per-episode arrays in Minari layout (``T + 1`` observations, ``T`` of the rest).

        An episode whose last step is neither terminated nor truncated is marked truncated: it was cut.
        """
        if not len(actions):
            raise ValueError(f"dataset {source!r} holds no episodes")
        lengths = np.array([len(a) for a in actions], dtype=np.int64)
        for e, (o, length) in enumerate(zip(observations, lengths)):
            if length == 0:
                raise ValueError(f"dataset {source!r}: episode {e} has no transitions")
            if len(o) != length + 1:
                raise ValueError(
                    f"dataset {source!r}: episode {e} has {len(o)} observations for {length} actions; "
                    "Minari layout needs T + 1 observations"
                )
        term = np.concatenate([np.asarray(t, dtype=bool) for t in terminations])
        trunc = np.concatenate([np.asarray(t, dtype=bool) for t in truncations])
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        last = offsets[1:] - 1
        trunc[last] |= ~term[last]
        seeds_arr = np.array([-1 if s is None else int(s) for s in (seeds or [None] * len(lengths))], dtype=np.int64)
        return cls(
            task=task,
            observations=np.concatenate([o[:-1] for o in observations]).astype(np.float32),
            actions=np.concatenate(actions).astype(np.float32),
            rewards=np.concatenate(rewards).astype(np.float32).reshape(-1),
            next_observations=np.concatenate([o[1:] for o in observations]).astype(np.float32),
            terminations=term,
            truncations=trunc,
            episode_offsets=offsets,
            seeds=seeds_arr,
            source=source,
            metadata=dict(metadata or {}),
        )

    @classmethod
    def concatenate(cls, parts: Sequence["OfflineDataset"], source: str = "") -> "OfflineDataset":
        """Join datasets of one task end to end (D4RL's medium-expert = medium + expert)."""
        tasks = {p.task for p in parts}
        if len(tasks) != 1:
            raise ValueError(f"cannot concatenate datasets of different tasks: {sorted(tasks)}")
        offsets, start = [np.zeros(1, dtype=np.int64)], 0
        for p in parts:
            offsets.append(p.episode_offsets[1:] + start)
            start += p.num_transitions
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        return cls(
            task=parts[0].task, observations=cat("observations"), actions=cat("actions"),
            rewards=cat("rewards"), next_observations=cat("next_observations"),
            terminations=cat("terminations"), truncations=cat("truncations"),
            episode_offsets=np.concatenate(offsets), seeds=cat("seeds"), source=source,
        )

    def select_episodes(self, episodes: Sequence[int], source: str = "") -> "OfflineDataset":
        """The dataset of only ``episodes`` (indices, in the order given), every row of each kept whole."""
        idx = np.asarray(episodes, dtype=np.int64)
        if idx.ndim != 1 or not len(idx) or idx.min() < 0 or idx.max() >= self.num_episodes:
            raise ValueError(f"episode indices must be a non-empty list within [0, {self.num_episodes})")
        lengths = self.episode_lengths[idx]
        rows = np.concatenate([np.arange(self.episode_offsets[e], self.episode_offsets[e + 1]) for e in idx])
        take = lambda name: getattr(self, name)[rows]  # noqa: E731
        return OfflineDataset(
            task=self.task, observations=take("observations"), actions=take("actions"), rewards=take("rewards"),
            next_observations=take("next_observations"), terminations=take("terminations"),
            truncations=take("truncations"), episode_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            seeds=self.seeds[idx], source=source or self.source,
        )

    # --- access -------------------------------------------------------------------------------
    @property
    def num_transitions(self) -> int:
        """N, the number of transitions."""
        return len(self.observations)

    @property
    def num_episodes(self) -> int:
        """E, the number of episodes."""
        return len(self.episode_offsets) - 1

    @property
    def obs_dim(self) -> int:
        """Observation size."""
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        """Action size."""
        return self.actions.shape[1]

    @property
    def episode_lengths(self) -> np.ndarray:
        """``(E,)`` transitions per episode."""
        return np.diff(self.episode_offsets)

    def episode_ids(self) -> np.ndarray:
        """``(N,)`` episode index of every transition."""
        return np.repeat(np.arange(self.num_episodes), self.episode_lengths)

    def episode(self, e: int) -> Episode:
        """Episode ``e`` in Minari layout."""
        if not 0 <= e < self.num_episodes:
            raise IndexError(f"episode {e} out of range [0, {self.num_episodes})")
        s, t = self.episode_offsets[e], self.episode_offsets[e + 1]
        return Episode(
            observations=np.concatenate([self.observations[s:t], self.next_observations[t - 1: t]]),
            actions=self.actions[s:t], rewards=self.rewards[s:t],
            terminations=self.terminations[s:t], truncations=self.truncations[s:t],
            seed=None if self.seeds[e] < 0 else int(self.seeds[e]),
        )

    def episode_returns(self) -> np.ndarray:
        """``(E,)`` undiscounted return of every episode."""
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_offsets[:-1])

    def fingerprint(self) -> str:
        """sha256 over every array: ties a trained model to the exact data it saw."""
        import hashlib

        h = hashlib.sha256()
        for name in ("observations", "actions", "rewards", "next_observations", "terminations", "truncations",
                     "episode_offsets"):
            h.update(np.ascontiguousarray(getattr(self, name)).tobytes())
        return h.hexdigest()

    def __len__(self) -> int:
        return self.num_transitions
