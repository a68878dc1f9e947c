"""The planner's training windows: states only, ``H`` rows, from the world model's episode-safe window source.

The same starts, held-out split, return-to-go and normalisation as the world model
(:class:`~dawm_env.world_model.data.WindowSource` with ``H - 1`` future steps), so a planner and an IDM trained
on one dataset with the same ``heldout_fraction`` / ``split_seed`` hold out the same episodes. Windows may run
past a terminated episode's end (the terminal state repeated, padded rows masked by ``valid``); they never
cross a truncation.
"""

from __future__ import annotations

import numpy as np
import torch

from dawm_env.data.records import OfflineDataset
from dawm_env.data.windows import gather_windows
from dawm_env.world_model.data import WindowSource


def plan_source(data: OfflineDataset, horizon: int, gamma: float, heldout_fraction: float, split_seed: int,
                stats=None) -> WindowSource:
    """Window starts of ``horizon``-row plans (``horizon - 1`` future states), split by episode.

    Raises:
        ValueError: no window fits (episodes too short and none terminated).
    """
    return WindowSource.build(data, horizon - 1, gamma, heldout_fraction, split_seed, stats=stats)


def plan_windows(source: WindowSource, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised states-only windows at ``starts``.

    Returns:
        ``x0 (B, H, obs_dim)`` float32 (``s_t .. s_{t+H-1}``), ``rtg (B,)`` float32, ``valid (B, H)`` bool.
    """
    w = gather_windows(source.data, starts, source.horizon, rtg=source.rtg)
    x = np.ascontiguousarray(source.stats.normalize_obs(w.states), dtype=np.float32)
    return torch.from_numpy(x), torch.from_numpy(w.rtg.astype(np.float32)), torch.from_numpy(w.valid)


def plan_x0_bounds(source: WindowSource) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column ``(low (obs_dim,), high (obs_dim,))`` clamp range of a planned state: the state part of the
    world model's bounds (terminal states included, so a plan can contain a fall)."""
    low, high = source.x0_bounds()
    o = source.data.obs_dim
    return low[:o].clone(), high[:o].clone()
