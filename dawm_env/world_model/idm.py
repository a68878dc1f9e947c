"""Stochastic inverse dynamics model ``f(a_t | s_{t-1}, s_t, s_{t+1})`` (SSORL style, context m = 1).

Two separate MLPs map the concatenated (normalised) states to the mean and the log-std of a Gaussian
over the pre-tanh action ``u``; the action is ``a = tanh(u)``. Training minimises the exact negative
log-likelihood of the dataset action, including the tanh change-of-variables term.
At episode start ``s_{t-1}`` is padded (zero or first state) by the caller, after normalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from dawm_env.world_model.blocks import mlp
from dawm_env.world_model.config import DictConfigMixin

_ACTION_CLAMP = 1.0 - 1e-6
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class IDMConfig(DictConfigMixin):
    """Hyperparameters of the inverse dynamics model (SSORL / paper App. A.1)."""

    hidden: tuple[int, ...] = (1024, 1024)
    """Hidden layer sizes of EACH of the two MLPs (mean and log-std)."""

    dropout: float = 0.1
    """Dropout after every hidden ReLU (active in train mode only)."""

    log_std_min: float = -5.0
    """Lower end of the squashed log-std range."""

    log_std_max: float = 2.0
    """Upper end of the squashed log-std range."""

    lr: float = 1e-4
    """Adam learning rate."""

    batch_size: int = 1024
    """Transitions per batch."""

    val_fraction: float = 0.1
    """Fraction of episodes (or transitions) held out; the best validation checkpoint is kept."""

    train_steps: int = 20_000
    """Optimiser steps; the best validation checkpoint is kept, so overshooting costs only time."""

    eval_every: int = 500
    """Validate (and maybe checkpoint) every this many steps."""

    seed: int = 0
    """Training seed."""

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden needs one or more layer sizes >= 1, got {self.hidden}")
        self.require_positive("batch_size", "train_steps", "eval_every")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.log_std_min < self.log_std_max:
            raise ValueError(f"need log_std_min < log_std_max, got {self.log_std_min}, {self.log_std_max}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


class InverseDynamics(nn.Module):
    """Tanh-squashed diagonal Gaussian ``p(a_t | s_{t-1}, s_t, s_{t+1})``.

    Args:
        obs_dim: state size.
        act_dim: action size (actions in ``[-1, 1]``).
        hidden: hidden sizes of each of the two MLPs.
        dropout: dropout after each hidden ReLU.
        log_std_min: lower bound of the log-std.
        log_std_max: upper bound of the log-std.

    Shapes:
        ``prev, cur, nxt (B, obs_dim)``; ``action (B, act_dim)``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (1024, 1024),
        dropout: float = 0.1,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
    ) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max
        self.mean_net = mlp(3 * obs_dim, tuple(hidden), act_dim, activation=nn.ReLU, dropout=dropout)
        self.log_std_net = mlp(3 * obs_dim, tuple(hidden), act_dim, activation=nn.ReLU, dropout=dropout)

    @classmethod
    def from_config(cls, cfg: IDMConfig, obs_dim: int, act_dim: int) -> "InverseDynamics":
        """Build from an :class:`IDMConfig`."""
        return cls(obs_dim, act_dim, cfg.hidden, cfg.dropout, cfg.log_std_min, cfg.log_std_max)

    def distribution(
        self, prev: torch.Tensor, cur: torch.Tensor, nxt: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-tanh Gaussian parameters ``(mean (B, act_dim), log_std (B, act_dim))``."""
        inp = torch.cat((prev, cur, nxt), dim=-1)
        mean = self.mean_net(inp)
        # tanh-rescale (smooth, keeps gradients everywhere) into [log_std_min, log_std_max].
        raw = torch.tanh(self.log_std_net(inp))
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (raw + 1.0)
        return mean, log_std

    def nll(
        self,
        prev: torch.Tensor,
        cur: torch.Tensor,
        nxt: torch.Tensor,
        action: torch.Tensor,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Negative log-likelihood of ``action (B, act_dim)`` under the tanh-squashed Gaussian.

        ``-log p(a) = -log N(atanh(a); mean, std) + sum log(1 - a^2)``, with targets clamped to
        ``+-(1 - 1e-6)`` so that ``atanh`` stays finite.

        Args:
            reduction: ``"mean"`` (scalar, mean over the batch of per-sample sums over action dims)
                or ``"none"`` (``(B,)``).
        """
        mean, log_std = self.distribution(prev, cur, nxt)
        a = action.clamp(-_ACTION_CLAMP, _ACTION_CLAMP)
        u = torch.atanh(a)
        z = (u - mean) * torch.exp(-log_std)
        log_prob_u = -0.5 * z.square() - log_std - _LOG_SQRT_2PI
        log_det = torch.log1p(-a.square())  # log |d tanh(u) / du| = log(1 - a^2)
        nll = -(log_prob_u - log_det).sum(-1)
        if reduction == "mean":
            return nll.mean()
        if reduction == "none":
            return nll
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")

    def forward(
        self,
        prev: torch.Tensor,
        cur: torch.Tensor,
        nxt: torch.Tensor,
        deterministic: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Infer actions.

        Returns:
            ``action (B, act_dim)`` in ``(-1, 1)``: ``tanh(mean)`` if ``deterministic`` else
            ``tanh(mean + std * eps)`` with ``eps`` from ``generator``; and the pre-tanh
            ``std (B, act_dim)`` as a per-transition uncertainty signal. Call ``.eval()`` first to
            switch dropout off.
        """
        mean, log_std = self.distribution(prev, cur, nxt)
        std = log_std.exp()
        if deterministic:
            u = mean
        else:
            u = mean + std * torch.randn(mean.shape, device=mean.device, dtype=mean.dtype, generator=generator)
        # float32 tanh saturates to exactly +-1 for |u| > ~9: keep actions strictly inside (-1, 1).
        return torch.tanh(u).clamp(-_ACTION_CLAMP, _ACTION_CLAMP), std

    def act(
        self,
        prev: torch.Tensor,
        cur: torch.Tensor,
        nxt: torch.Tensor,
        deterministic: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`forward`, without autograd: ``(action (B, act_dim), std (B, act_dim))``."""
        with torch.no_grad():
            return self.forward(prev, cur, nxt, deterministic, generator)
