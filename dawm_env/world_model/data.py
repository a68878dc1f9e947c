"""Turning an :class:`OfflineDataset` into world-model and IDM training tensors.

One home for the model-side data conventions:

- window ``x`` layout ``(B, T, obs_dim + act_dim + 1)``: columns ``[state, action, reward]``; states and
  rewards mean/std-normalised, actions raw (already in [-1, 1]); only row 0 carries ``a_t``; future
  action columns are 0 (not modelled);
- a held-out split by whole episodes, shared by the world model and the IDM, so the bundle's
  evaluation uses episodes neither model saw;
- IDM triples ``(s_{t-1}, s_t, s_{t+1}) -> a_t`` with ``s_{t-1}`` zero-padded at episode start,
  after normalisation (SSORL).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dawm_env.data.normalization import NormStats
from dawm_env.data.records import OfflineDataset
from dawm_env.data.windows import (
    gather_windows,
    positions_in_episode,
    returns_to_go,
    window_starts,
)


def heldout_episodes(data: OfflineDataset, fraction: float, seed: int) -> np.ndarray:
    """``(E,)`` bool: a seeded random ``fraction`` of whole episodes (at least one, never all)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    n_out = int(round(fraction * data.num_episodes))
    if fraction > 0 and data.num_episodes > 1:
        n_out = min(max(n_out, 1), data.num_episodes - 1)
    mask = np.zeros(data.num_episodes, dtype=bool)
    mask[np.random.default_rng(seed).permutation(data.num_episodes)[:n_out]] = True
    return mask


def window_tensor(data: OfflineDataset, stats: NormStats, starts: np.ndarray, horizon: int,
                  rtg: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised model windows for ``starts``.

    Returns:
        ``x0 (B, T, D)`` float32, ``rtg (B,)`` float32, ``valid (B, T)`` bool.
    """
    w = gather_windows(data, starts, horizon, rtg=rtg)
    b, t = w.rewards.shape
    obs_dim, act_dim = data.obs_dim, data.act_dim
    x = np.zeros((b, t, obs_dim + act_dim + 1), dtype=np.float32)
    x[:, :, :obs_dim] = stats.normalize_obs(w.states)
    x[:, 0, obs_dim:obs_dim + act_dim] = w.actions[:, 0]
    x[:, :, -1] = stats.normalize_reward(w.rewards)
    return torch.from_numpy(x), torch.from_numpy(w.rtg.astype(np.float32)), torch.from_numpy(w.valid)


@dataclass
class WindowSource:
    """Window start indices of a dataset split into train / held-out by episode."""

    data: OfflineDataset
    stats: NormStats
    horizon: int
    rtg: np.ndarray
    train_starts: np.ndarray
    heldout_starts: np.ndarray

    @classmethod
    def build(cls, data: OfflineDataset, horizon: int, gamma: float, heldout_fraction: float, split_seed: int,
              stats: NormStats | None = None) -> "WindowSource":
        """Window starts (terminal tails included) split by :func:`heldout_episodes`."""
        stats = stats or NormStats.from_dataset(data)
        starts = window_starts(data, horizon, terminal_tails=True)
        out_ep = heldout_episodes(data, heldout_fraction, split_seed)
        is_out = out_ep[data.episode_ids()[starts]]
        train, held = starts[~is_out], starts[is_out]
        if len(train) == 0:
            raise ValueError(
                f"{data.source}: no training windows of {horizon + 1} steps (episodes too short or too few); "
                "use a larger dataset or a shorter horizon"
            )
        return cls(data, stats, horizon, returns_to_go(data, gamma), train, held)

    def x0_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-column ``(low (D,), high (D,))`` of normalised windows: data min / max of states and
        rewards, [-1, 1] for actions. Used to clamp the predicted ``x_0`` while sampling.

        The state bounds cover ``next_observations`` too: terminal states appear only there, and in a task
        whose termination is a state range (hopper, walker2d) every non-terminal state lies inside the
        healthy range, so bounds from ``observations`` alone would clamp every generated state back inside
        it and the model could never generate a fall."""
        norm = self.stats.normalize_obs
        obs, nxt = norm(self.data.observations), norm(self.data.next_observations)
        rew = self.stats.normalize_reward(self.data.rewards)
        act_dim = self.data.act_dim
        obs_low, obs_high = np.minimum(obs.min(0), nxt.min(0)), np.maximum(obs.max(0), nxt.max(0))
        low = np.concatenate([obs_low, -np.ones(act_dim), [min(rew.min(), self.stats.normalize_reward(0.0))]])
        high = np.concatenate([obs_high, np.ones(act_dim), [max(rew.max(), self.stats.normalize_reward(0.0))]])
        return torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)

    def batch(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`window_tensor` for these starts."""
        return window_tensor(self.data, self.stats, starts, self.horizon, self.rtg)


def idm_triples(data: OfflineDataset, stats: NormStats, idx: np.ndarray
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """IDM inputs for transitions ``idx``: normalised ``(s_{t-1}, s_t, s_{t+1})`` and the raw ``a_t``.

    ``s_{t-1}`` is zero (the normalised mean) at an episode's first step.
    """
    first = positions_in_episode(data)[idx] == 0
    prev = stats.normalize_obs(data.observations[np.maximum(idx - 1, 0)])
    prev[first] = 0.0
    cur = stats.normalize_obs(data.observations[idx])
    nxt = stats.normalize_obs(data.next_observations[idx])
    f = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return f(prev), f(cur), f(nxt), f(data.actions[idx])
