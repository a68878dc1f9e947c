"""Temporal U-Net noise predictor (Decision Diffuser style) conditioned on ``(k, a_t, g)`` or ``(k, g)``.

The window ``x (B, T, D)`` is treated as a 1-D signal over time with ``D`` channels. Each resolution
level has two :class:`ResidualTemporalBlock`; all but the last level halve ``T``. The decoder mirrors
the encoder with skip connections. As in Decision Diffuser / ``diffuser``, the skip of the first
(full-resolution) level is not used by the decoder.

Conditioning embedding (fed to every residual block):
- diffusion step ``k``: sinusoidal(dim) + 2-layer MLP -> ``dim``;
- conditioning action ``a_t``: 3-layer MLP -> ``dim`` (only when ``act_dim > 0``: the world model);
- return-to-go ``g``: 3-layer MLP -> ``dim``;
concatenated to ``3 * dim`` (``2 * dim`` without the action: the Decision Diffuser planner of
:mod:`dawm_env.planner`, whose windows hold states only); each block then applies its own ``Mish -> Linear``,
i.e. concat+linear.
Classifier-free guidance: where ``cond_mask`` is False the action and return embeddings are zeroed
(the "null" condition, as Decision Diffuser does). ``s_t`` is not embedded: it is in-painted into
``x`` by :class:`~dawm_env.world_model.diffusion.GaussianDiffusion` for both passes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from dawm_env.world_model.blocks import (
    Conv1dBlock,
    Downsample1d,
    ResidualTemporalBlock,
    SinusoidalPosEmb,
    Upsample1d,
    mlp,
)


class TemporalUnet(nn.Module):
    """Epsilon-prediction network ``eps_theta(x_k, k, a_t, g)``.

    Args:
        horizon: number of rows ``T`` of the window the net processes (``T = H + 1``; the world model
            config calls ``H`` the horizon). Must be divisible by ``2 ** (len(dim_mults) - 1)``.
        transition_dim: columns ``D`` of one row (world model: ``obs_dim + act_dim + 1``; planner: ``obs_dim``).
        act_dim: size of the conditioning action ``a_t``; 0 = no action condition (no action embedding).
        dim: base channel width (also the size of each embedding).
        dim_mults: channel multipliers per resolution level.
        kernel_size: temporal conv kernel size.
        n_groups: GroupNorm groups; every ``dim * m`` must be divisible by it.

    Shapes:
        forward: ``x (B, T, D)``, ``k (B,)`` long, ``action (B, act_dim)`` (None or ``(B, 0)`` when
        ``act_dim == 0``), ``rtg (B,)`` or ``(B, 1)``, ``cond_mask (B,)`` bool or None (= all conditioned) ->
        ``(B, T, D)`` predicted noise.
    """

    def __init__(
        self,
        horizon: int,
        transition_dim: int,
        act_dim: int,
        dim: int = 128,
        dim_mults: Sequence[int] = (1, 4, 8),
        kernel_size: int = 5,
        n_groups: int = 8,
    ) -> None:
        super().__init__()
        dim_mults = tuple(int(m) for m in dim_mults)
        if len(dim_mults) < 1:
            raise ValueError("dim_mults must have at least one level")
        factor = 2 ** (len(dim_mults) - 1)
        if horizon % factor != 0:
            raise ValueError(
                f"window length {horizon} must be divisible by 2**(len(dim_mults)-1) = {factor} "
                f"(dim_mults={dim_mults}); use fewer levels or another horizon"
            )
        for m in dim_mults:
            if (dim * m) % n_groups != 0:
                raise ValueError(f"dim * mult = {dim * m} is not divisible by GroupNorm groups={n_groups}")
        self.horizon = horizon
        self.transition_dim = transition_dim
        self.act_dim = act_dim
        self.dim = dim
        self.dim_mults = dim_mults
        self._factor = factor

        # Step embedding: sinusoidal + 2-layer MLP. Condition embeddings: 3-layer MLPs.
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(dim), mlp(dim, (dim * 4,), dim))
        if act_dim < 0:
            raise ValueError(f"act_dim must be >= 0, got {act_dim}")
        # created only when used: the world model's weights (and their init order) are unchanged
        self.action_mlp: Optional[nn.Module] = mlp(act_dim, (dim, dim * 4), dim) if act_dim > 0 else None
        self.rtg_mlp = mlp(1, (dim, dim * 4), dim)
        embed_dim = (3 if act_dim > 0 else 2) * dim

        dims = [transition_dim, *(dim * m for m in dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        n_levels = len(in_out)

        self.downs = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(in_out):
            is_last = i == n_levels - 1
            self.downs.append(
                nn.ModuleList(
                    [
                        ResidualTemporalBlock(c_in, c_out, embed_dim, kernel_size, n_groups),
                        ResidualTemporalBlock(c_out, c_out, embed_dim, kernel_size, n_groups),
                        Downsample1d(c_out) if not is_last else nn.Identity(),
                    ]
                )
            )
        mid = dims[-1]
        self.mid1 = ResidualTemporalBlock(mid, mid, embed_dim, kernel_size, n_groups)
        self.mid2 = ResidualTemporalBlock(mid, mid, embed_dim, kernel_size, n_groups)

        self.ups = nn.ModuleList()
        for c_in, c_out in reversed(in_out[1:]):
            self.ups.append(
                nn.ModuleList(
                    [
                        ResidualTemporalBlock(c_out * 2, c_in, embed_dim, kernel_size, n_groups),
                        ResidualTemporalBlock(c_in, c_in, embed_dim, kernel_size, n_groups),
                        Upsample1d(c_in),  # T -> 2T
                    ]
                )
            )
        self.final = nn.Sequential(
            Conv1dBlock(dim, dim, kernel_size, n_groups), nn.Conv1d(dim, transition_dim, 1)
        )

    def embed(
        self,
        k: torch.Tensor,
        action: Optional[torch.Tensor],
        rtg: torch.Tensor,
        cond_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Combined embedding ``(B, 3 * dim)`` of ``k (B,)``, ``action (B, act_dim)``, ``rtg (B,)|(B, 1)``
        (``(B, 2 * dim)`` of ``k`` and ``rtg`` when ``act_dim == 0``; ``action`` is then ignored).

        Where ``cond_mask (B,)`` is False the action and rtg parts are zero (null condition).
        """
        b = k.shape[0]
        t_emb = self.time_mlp(k)
        g_emb = self.rtg_mlp(rtg.reshape(b, 1).to(t_emb.dtype))
        parts = [t_emb]
        if self.action_mlp is not None:
            if action is None:
                raise ValueError(f"this network is conditioned on a {self.act_dim}-dim action; got action=None")
            parts.append(self.action_mlp(action))
        parts.append(g_emb)
        if cond_mask is not None:
            keep = cond_mask.reshape(b, 1).to(t_emb.dtype)
            parts[1:] = [p * keep for p in parts[1:]]
        return torch.cat(parts, dim=-1)

    def forward(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        action: Optional[torch.Tensor],
        rtg: torch.Tensor,
        cond_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Predict the noise: ``x (B, T, D)`` -> ``(B, T, D)`` (see class docstring for the inputs)."""
        if x.shape[1] % self._factor != 0:
            raise ValueError(f"window length {x.shape[1]} is not divisible by {self._factor}")
        emb = self.embed(k, action, rtg, cond_mask)
        h = x.transpose(1, 2)  # (B, D, T): channels-first for Conv1d
        skips: list[torch.Tensor] = []
        for res1, res2, down in self.downs:
            h = res2(res1(h, emb), emb)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid1(h, emb), emb)
        for res1, res2, up in self.ups:
            h = torch.cat((h, skips.pop()), dim=1)
            h = res2(res1(h, emb), emb)
            h = up(h)
        return self.final(h).transpose(1, 2)
