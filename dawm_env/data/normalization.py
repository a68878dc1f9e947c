"""The one normalisation convention of dawm: ``(x - mean) / (std + eps)``.

World model, IDM, agents and the generation statistics all divide by :func:`safe_std` (CORL's convention,
``states.std(0) + 1e-3``), so a constant feature is scaled by ``1 / eps`` instead of dividing by zero.
:class:`NormStats` is the world model's and IDM's record of it (stored in every bundle); the agents keep
theirs in :class:`dawm_env.agents.networks.Normalizer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dawm_env.data.records import OfflineDataset

#: Added to every standard deviation dawm normalises by.
STD_EPS = 1e-3


def safe_std(std: Any, eps: float = STD_EPS) -> Any:
    """``std + eps`` (numpy array or float): the divisor of every normalisation in dawm."""
    return std + eps


@dataclass(frozen=True)
class NormStats:
    """Mean / std normalisation of observations and rewards (every std through :func:`safe_std`).

    Attributes:
        obs_mean: ``(obs_dim,)``.
        obs_std: ``(obs_dim,)``.
        rew_mean: scalar.
        rew_std: scalar.
    """

    obs_mean: np.ndarray
    obs_std: np.ndarray
    rew_mean: float
    rew_std: float

    @classmethod
    def from_dataset(cls, data: OfflineDataset, eps: float = STD_EPS) -> "NormStats":
        """Statistics over every state ``s_i`` and reward of ``data``."""
        obs = data.observations.astype(np.float64)
        return cls(
            obs_mean=obs.mean(0).astype(np.float32), obs_std=safe_std(obs.std(0), eps).astype(np.float32),
            rew_mean=float(data.rewards.mean()), rew_std=float(safe_std(data.rewards.std(), eps)),
        )

    def normalize_obs(self, obs: Any) -> Any:
        """``(..., obs_dim)`` -> normalised (numpy or torch)."""
        return (obs - _like(self.obs_mean, obs)) / _like(self.obs_std, obs)

    def denormalize_obs(self, obs: Any) -> Any:
        """Inverse of :meth:`normalize_obs`."""
        return obs * _like(self.obs_std, obs) + _like(self.obs_mean, obs)

    def normalize_reward(self, rew: Any) -> Any:
        """Rewards -> normalised."""
        return (rew - self.rew_mean) / self.rew_std

    def denormalize_reward(self, rew: Any) -> Any:
        """Inverse of :meth:`normalize_reward`."""
        return rew * self.rew_std + self.rew_mean

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return {"obs_mean": self.obs_mean.tolist(), "obs_std": self.obs_std.tolist(),
                "rew_mean": self.rew_mean, "rew_std": self.rew_std}

    @classmethod
    def from_dict(cls, d: dict) -> "NormStats":
        """Inverse of :meth:`to_dict`; raises ValueError on missing keys or mismatched sizes."""
        try:
            mean, std = np.asarray(d["obs_mean"], np.float32), np.asarray(d["obs_std"], np.float32)
            stats = cls(mean, std, float(d["rew_mean"]), float(d["rew_std"]))
        except KeyError as err:
            raise ValueError(f"normalisation stats lack key {err}") from err
        if mean.shape != std.shape or mean.ndim != 1 or np.any(std <= 0):
            raise ValueError("normalisation stats: obs_mean / obs_std must be 1-D, equal length, std > 0")
        return stats


def _like(arr: np.ndarray, ref: Any) -> Any:
    if isinstance(ref, np.ndarray):
        return arr
    import torch

    return torch.as_tensor(arr, dtype=ref.dtype, device=ref.device)
