"""What the world model needs from data: return-to-go and episode-safe windows (normalisation: ``normalization``).

A window starting at transition ``t`` holds rows ``t .. t+H`` (``H + 1`` rows): states
``s_t .. s_{t+H}``, actions ``a_t .. a_{t+H}`` and rewards ``r_t .. r_{t+H}``. Windows never cross an
episode boundary. With ``terminal_tails=True`` windows may also run past a *terminated* episode's
last step: the row after it holds the terminal state ``s'`` with reward 0, later rows repeat it, and
``valid`` marks the real rows. That is how a world model sees terminal states at all; truncated
episodes are never padded (their future is unknown, not absorbing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dawm_env.data.records import OfflineDataset
from dawm_env.tasks import get_task


def positions_in_episode(data: OfflineDataset) -> np.ndarray:
    """``(N,)`` index of every transition within its episode."""
    starts = np.repeat(data.episode_offsets[:-1], data.episode_lengths)
    return np.arange(data.num_transitions) - starts


def returns_to_go(data: OfflineDataset, gamma: float = 0.99, scale: float | None = None) -> np.ndarray:
    """Discounted return of the rest of the episode from every transition, divided by ``scale``.

    ``rtg_t = sum_{k >= t} gamma^(k - t) r_k`` within the episode. ``scale`` defaults to the task's
    return-to-go scale (hopper 400, walker2d 550, halfcheetah 1200).

    Returns:
        ``(N,)`` float32.
    """
    if scale is None:
        scale = get_task(data.task).rtg_scale
    pos = positions_in_episode(data).astype(np.float64)
    # sum_{j>=t} gamma^pos_j r_j over the episode, then divide by gamma^pos_t; float64 holds gamma^1000
    weighted = data.rewards.astype(np.float64) * gamma ** pos
    suffix = np.concatenate([np.cumsum(weighted[::-1])[::-1], [0.0]])
    ends = np.repeat(data.episode_offsets[1:], data.episode_lengths)
    rtg = (suffix[:-1] - suffix[ends]) / gamma ** pos
    return (rtg / scale).astype(np.float32)


def window_starts(data: OfflineDataset, horizon: int, terminal_tails: bool = False) -> np.ndarray:
    """Transition indices where a window of ``horizon + 1`` rows can start.

    Without ``terminal_tails`` rows ``t .. t+horizon`` all lie in one episode. With it, windows that
    run past the end of a terminated episode are allowed too (see the module docstring).
    """
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    pos = positions_in_episode(data)
    length = np.repeat(data.episode_lengths, data.episode_lengths)
    ok = pos + horizon <= length - 1
    if terminal_tails:
        ep_terminated = np.repeat(data.terminations[data.episode_offsets[1:] - 1], data.episode_lengths)
        ok |= ep_terminated
    return np.flatnonzero(ok)


@dataclass(frozen=True)
class WindowBatch:
    """A batch of windows (raw, not normalised).

    Attributes:
        states: ``(B, H+1, obs_dim)``: ``s_t .. s_{t+H}``.
        actions: ``(B, H+1, act_dim)``: ``a_t .. a_{t+H}`` (zeros on padded rows).
        rewards: ``(B, H+1)``: ``r_t .. r_{t+H}`` (zeros on padded rows).
        next_states: ``(B, H+1, obs_dim)``: ``s_{t+1} .. s_{t+H+1}``.
        valid: ``(B, H+1)`` bool: row holds a real state (False only after a terminal).
        rtg: ``(B,)``: scaled return-to-go at ``t``.
        starts: ``(B,)`` transition index of row 0.
    """

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_states: np.ndarray
    valid: np.ndarray
    rtg: np.ndarray
    starts: np.ndarray


def gather_windows(data: OfflineDataset, starts: np.ndarray, horizon: int, rtg: np.ndarray | None = None,
                   gamma: float = 0.99) -> WindowBatch:
    """Gather windows of ``horizon + 1`` rows starting at ``starts`` (from :func:`window_starts`).

    Rows past a terminated episode's end hold the terminal state, zero action and zero reward, and are
    marked invalid except the first such row, whose state (the terminal state) is real.
    """
    starts = np.asarray(starts, dtype=np.int64)
    ep_end = np.repeat(data.episode_offsets[1:], data.episode_lengths)[starts]  # exclusive
    idx = starts[:, None] + np.arange(horizon + 1)[None, :]  # (B, H+1)
    inside = idx < ep_end[:, None]
    last = ep_end - 1
    clipped = np.minimum(idx, last[:, None])
    states = data.observations[clipped]
    states = np.where(inside[..., None], states, data.next_observations[last][:, None, :])
    next_states = np.where(inside[..., None], data.next_observations[clipped],
                           data.next_observations[last][:, None, :])
    actions = np.where(inside[..., None], data.actions[clipped], 0.0).astype(np.float32)
    rewards = np.where(inside, data.rewards[clipped], 0.0).astype(np.float32)
    # the first row past a terminal holds the real terminal state; later ones are padding
    valid = idx <= ep_end[:, None]
    if rtg is None:
        rtg = returns_to_go(data, gamma)
    return WindowBatch(states=states.astype(np.float32), actions=actions, rewards=rewards,
                       next_states=next_states.astype(np.float32), valid=valid, rtg=rtg[starts], starts=starts)
