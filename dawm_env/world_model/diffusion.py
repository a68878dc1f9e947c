"""Conditional Gaussian diffusion over state-reward windows, with in-painting and CFG.

Data layout (already normalised): ``x (B, T, D)`` with ``D = obs_dim + act_dim + 1`` and columns
``[state | action | reward]``. Row 0 is ``(s_t, a_t, r_t)``; rows ``1..H`` are
``(s_{t+h}, 0, r_{t+h})``: future actions are not modelled (the IDM infers them later).

The same class is the Decision Diffuser planner (:mod:`dawm_env.planner`): ``act_dim = 0`` and
``reward = False`` give states-only windows ``D = obs_dim`` (rows ``s_t .. s_{t+T-1}``), conditioned on the
in-painted ``s_t`` and the return-to-go only.

Known entries (in-painted, Decision Diffuser's ``apply_conditioning``): row-0 state and action
columns, and every future action column (= 0). They are overwritten in ``x_k`` before the network
call in training and after every reverse step in sampling, and are excluded from the loss.
Modelled entries: row-0 reward, rows >= 1 states and rewards.

Noise: cosine beta schedule (Nichol & Dhariwal 2021, betas clipped at 0.999), ``K`` steps, epsilon
prediction, masked MSE on the noise. Sampling: ``N`` evenly strided steps out of ``K`` using the DDPM
posterior of the respaced schedule (``beta'_i = 1 - abar[tau_i] / abar[tau_{i-1}]``), low temperature,
classifier-free guidance with the conditional and unconditional passes in one batched call.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
from torch import nn

from dawm_env.world_model.unet import TemporalUnet

if TYPE_CHECKING:
    from dawm_env.world_model.config import WorldModelConfig


def cosine_beta_schedule(n_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule: ``abar(t) = cos^2(((t / K) + s) / (1 + s) * pi / 2)``, ``beta_t = 1 - abar_t / abar_{t-1}``.

    Args:
        n_steps: K.
        s: offset that keeps ``beta`` from being tiny near ``t = 0``.
        max_beta: clip to avoid a singular last step.

    Returns:
        ``(K,)`` float64 betas.
    """
    t = np.arange(n_steps + 1, dtype=np.float64)
    f = np.cos(((t / n_steps) + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = 1.0 - abar[1:] / abar[:-1]
    return np.clip(betas, 0.0, max_beta)


def strided_timesteps(n_diffusion_steps: int, n_sampling_steps: int) -> list[int]:
    """``N`` evenly spaced training step indices in ``[0, K - 1]``, ascending, always with 0 and ``K - 1``.

    ``K = 5, N = 3`` -> ``[0, 2, 4]``.
    """
    if not 1 <= n_sampling_steps <= n_diffusion_steps:
        raise ValueError(f"need 1 <= n_steps ({n_sampling_steps}) <= K ({n_diffusion_steps})")
    if n_sampling_steps == 1:
        return [n_diffusion_steps - 1]
    steps = np.linspace(0, n_diffusion_steps - 1, n_sampling_steps).round().astype(int)
    return sorted({int(s) for s in steps})


def check_timesteps(timesteps: Sequence[int], n_diffusion_steps: Optional[int] = None) -> list[int]:
    """Validate an explicit sampling schedule: strictly ascending ints in ``[0, K - 1]``, at least one.

    Starting below ``K - 1`` is allowed: with few diffusion steps the last one has ``abar ~ 1e-4``, and the
    first reverse step from there multiplies the network's noise error by ~100; starting one step lower from
    pure noise (which is nearly what ``x_k`` is there) avoids it. ``n_diffusion_steps=None`` checks everything
    but the upper end (a config validated before its model is known). Returns the list as plain ints.
    """
    steps = list(timesteps)
    k = n_diffusion_steps
    if (not steps or any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) for t in steps)
            or any(b <= a for a, b in zip(steps, steps[1:])) or steps[0] < 0
            or (k is not None and steps[-1] > k - 1)):
        bounds = f"in [0, {k - 1}]" if k is not None else ">= 0"
        raise ValueError(f"sampling timesteps must be strictly ascending ints {bounds}, got {steps!r}")
    return [int(t) for t in steps]


class GaussianDiffusion(nn.Module):
    """Diffusion world model: :class:`TemporalUnet` + noise schedule + in-painting + guided sampling.

    Args:
        model: the noise predictor; its ``horizon`` / ``transition_dim`` / ``act_dim`` must match.
        obs_dim: state size.
        act_dim: size of the conditioning action (in-painted in row 0 and embedded); 0 = no action columns and
            no action condition (the planner).
        n_diffusion_steps: K.
        cond_drop_prob: probability of the null (a_t, g) condition in training.
        n_sampling_steps: default N for :meth:`sample`.
        guidance_weight: default w for :meth:`sample`.
        temperature: default sampling temperature.
        clip_denoised: clamp predicted ``x_0`` to ``[-c, c]`` while sampling (None = off); see also
            :meth:`set_x0_bounds` for per-column data bounds.
        reward: whether the last column is a modelled reward (the world model); False = no reward column.

    Shapes:
        ``T = model.horizon`` rows, ``D = obs_dim + act_dim + (1 if reward else 0)`` columns.
    """

    def __init__(
        self,
        model: TemporalUnet,
        obs_dim: int,
        act_dim: int,
        n_diffusion_steps: int = 5,
        cond_drop_prob: float = 0.25,
        n_sampling_steps: int = 3,
        guidance_weight: float = 1.2,
        temperature: float = 0.5,
        clip_denoised: Optional[float] = None,
        reward: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.has_reward = bool(reward)
        self.transition_dim = obs_dim + act_dim + int(self.has_reward)
        self.horizon = model.horizon
        if model.transition_dim != self.transition_dim or model.act_dim != act_dim:
            raise ValueError(
                f"model expects D={model.transition_dim}, act_dim={model.act_dim}; got obs_dim={obs_dim}, "
                f"act_dim={act_dim} (D={self.transition_dim})"
            )
        self.n_diffusion_steps = n_diffusion_steps
        self.cond_drop_prob = cond_drop_prob
        self.n_sampling_steps = n_sampling_steps
        self.guidance_weight = guidance_weight
        self.temperature = temperature
        strided_timesteps(n_diffusion_steps, n_sampling_steps)  # validates N

        betas = cosine_beta_schedule(n_diffusion_steps)
        # float64 copy for the per-step sampling coefficients (Python scalars, so no device issues).
        self._abar64 = np.cumprod(1.0 - betas)
        abar = torch.tensor(self._abar64, dtype=torch.float32)
        # Derived buffers are not persistent: checkpoints hold only weights; the schedule is rebuilt.
        self.register_buffer("betas", torch.tensor(betas, dtype=torch.float32), persistent=False)
        self.register_buffer("sqrt_abar", abar.sqrt(), persistent=False)
        self.register_buffer("sqrt_one_minus_abar", (1.0 - abar).sqrt(), persistent=False)

        T, D, o, a = self.horizon, self.transition_dim, obs_dim, act_dim
        known = torch.zeros(T, D, dtype=torch.bool)
        known[0, : o + a] = True  # s_t and a_t
        known[1:, o : o + a] = True  # future actions (always 0)
        self.register_buffer("known_mask", known, persistent=False)
        self.register_buffer("loss_mask", (~known).float(), persistent=False)
        # Bounds for the predicted x_0 while sampling (persistent: saved with the weights). With K = 5
        # the last cosine step has abar ~ 1e-4, so the first reverse step turns an eps error e into an
        # x_0 error ~100 e; clamping x_0_hat to the data range (Decision Diffuser's clip_denoised)
        # keeps that from derailing the remaining N - 1 steps.
        c = math.inf if clip_denoised is None else float(clip_denoised)
        self.register_buffer("x0_low", torch.full((D,), -c))
        self.register_buffer("x0_high", torch.full((D,), c))

    @classmethod
    def from_config(cls, cfg: "WorldModelConfig", obs_dim: int, act_dim: int) -> "GaussianDiffusion":
        """Build the U-Net and the diffusion wrapper from a :class:`WorldModelConfig`."""
        net = TemporalUnet(
            horizon=cfg.window,
            transition_dim=obs_dim + act_dim + 1,
            act_dim=act_dim,
            dim=cfg.dim,
            dim_mults=cfg.dim_mults,
        )
        return cls(
            net,
            obs_dim,
            act_dim,
            n_diffusion_steps=cfg.n_diffusion_steps,
            cond_drop_prob=cfg.cond_drop_prob,
            n_sampling_steps=cfg.n_sampling_steps,
            guidance_weight=cfg.guidance_weight,
            temperature=cfg.temperature,
            clip_denoised=cfg.clip_denoised,
        )

    def set_x0_bounds(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """Clamp range of the predicted ``x_0`` during sampling, per column: ``low, high (D,)``.

        Typically the normalised data min / max (optionally widened by a margin). Overrides the
        symmetric ``clip_denoised`` bound; ``+-inf`` disables clamping for a column.
        """
        low = torch.as_tensor(low, dtype=self.x0_low.dtype).reshape(-1)
        high = torch.as_tensor(high, dtype=self.x0_high.dtype).reshape(-1)
        if low.shape != (self.transition_dim,) or high.shape != (self.transition_dim,):
            raise ValueError(f"bounds must have shape ({self.transition_dim},), got {low.shape}, {high.shape}")
        if bool((low > high).any()):
            raise ValueError("x0 bounds: low > high in some column")
        self.x0_low.copy_(low)
        self.x0_high.copy_(high)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        # Checkpoints written before the x_0 bounds existed lack them: keep this module's values.
        for name in ("x0_low", "x0_high"):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ conditioning
    def known_values(self, state0: torch.Tensor, action0: Optional[torch.Tensor]) -> torch.Tensor:
        """Dense tensor ``(B, T, D)`` holding ``s_t``, ``a_t`` in row 0 and zeros elsewhere (``action0`` may be
        None when ``act_dim == 0``)."""
        b = state0.shape[0]
        vals = state0.new_zeros(b, self.horizon, self.transition_dim)
        vals[:, 0, : self.obs_dim] = state0
        if self.act_dim:
            vals[:, 0, self.obs_dim : self.obs_dim + self.act_dim] = action0
        return vals

    def _action0(self, action0: Optional[torch.Tensor], state0: torch.Tensor) -> torch.Tensor:
        """``(B, act_dim)`` conditioning action on ``state0``'s device and dtype (empty ``(B, 0)`` without one)."""
        if self.act_dim == 0:
            if action0 is not None and action0.numel():
                raise ValueError("this diffusion model has no action condition (act_dim = 0); pass action0=None")
            return state0.new_zeros(state0.shape[0], 0)
        if action0 is None:
            raise ValueError(f"this diffusion model is conditioned on a {self.act_dim}-dim action; got None")
        return action0.to(state0.device, state0.dtype)

    def apply_conditioning(self, x: torch.Tensor, known_values: torch.Tensor) -> torch.Tensor:
        """In-paint: ``x (B, T, D)`` with the known entries replaced EXACTLY by ``known_values (B, T, D)``."""
        return torch.where(self.known_mask, known_values, x)

    # ------------------------------------------------------------------ training
    def q_sample(self, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward noising ``x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps``; ``x0, noise (B, T, D)``, ``k (B,)``."""
        return self.sqrt_abar[k][:, None, None] * x0 + self.sqrt_one_minus_abar[k][:, None, None] * noise

    def loss(
        self,
        x0: torch.Tensor,
        rtg: torch.Tensor,
        valid: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Masked noise-prediction MSE (scalar), averaged over modelled (and valid) entries.

        Args:
            x0: ``(B, T, D)`` normalised clean windows (future action columns should be 0).
            rtg: ``(B,)`` or ``(B, 1)`` scaled return-to-go.
            valid: optional ``(B, T)`` bool/float row mask (rows after a terminal = padding = 0).
            generator: optional RNG for ``k``, the noise and the condition drop (reproducible loss).
        """
        b, dev = x0.shape[0], x0.device
        k = torch.randint(0, self.n_diffusion_steps, (b,), device=dev, generator=generator)
        noise = torch.randn(x0.shape, device=dev, dtype=x0.dtype, generator=generator)
        cond_mask = torch.rand(b, device=dev, generator=generator) >= self.cond_drop_prob
        action0 = x0[:, 0, self.obs_dim : self.obs_dim + self.act_dim]
        known = self.known_values(x0[:, 0, : self.obs_dim], action0)
        x_k = self.apply_conditioning(self.q_sample(x0, k, noise), known)
        eps = self.model(x_k, k, action0, rtg, cond_mask)
        w = self.loss_mask.expand(b, -1, -1)
        if valid is not None:
            w = w * valid.to(w.dtype)[:, :, None]
        return ((eps - noise).square() * w).sum() / w.sum().clamp_min(1.0)

    def forward(
        self,
        x0: torch.Tensor,
        rtg: torch.Tensor,
        valid: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Alias of :meth:`loss` (so DDP / compile wrappers see the training objective)."""
        return self.loss(x0, rtg, valid, generator)

    # ------------------------------------------------------------------ sampling
    def guided_eps(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        action0: Optional[torch.Tensor],
        rtg: torch.Tensor,
        guidance_weight: float,
    ) -> torch.Tensor:
        """Classifier-free guided noise ``eps_u + w (eps_c - eps_u)`` from ONE network call on ``2B`` rows (``B`` for
        ``w`` = 0 or 1, where one of the two predictions is not needed).

        Args:
            x: ``(B, T, D)`` noisy windows (already in-painted).
            k: ``(B,)`` long step indices.
            action0: ``(B, act_dim)`` (None when ``act_dim == 0``); rtg: ``(B,)`` or ``(B, 1)``.
            guidance_weight: w (0 = unconditional, 1 = conditional, > 1 = extrapolate).

        Returns:
            ``(B, T, D)``.
        """
        b = x.shape[0]
        if action0 is None:  # the planner's empty (B, 0) action, or one clear error (sample() passes it resolved)
            action0 = self._action0(action0, x)
        if guidance_weight in (0.0, 1.0):
            # w = 1 is the conditional prediction, w = 0 the unconditional one: one pass on B rows, not 2B
            cond = torch.full((b,), guidance_weight == 1.0, device=x.device, dtype=torch.bool)
            return self.model(x, k, action0, rtg.reshape(b, 1), cond)
        cond_mask = torch.arange(2 * b, device=x.device) < b  # first half conditional
        out = self.model(
            torch.cat((x, x)), torch.cat((k, k)), torch.cat((action0, action0)),
            torch.cat((rtg.reshape(b, 1), rtg.reshape(b, 1))), cond_mask,
        )
        eps_c, eps_u = out[:b], out[b:]
        return eps_u + guidance_weight * (eps_c - eps_u)

    @torch.no_grad()
    def sample(
        self,
        state0: torch.Tensor,
        action0: Optional[torch.Tensor],
        rtg: torch.Tensor | float,
        guidance_weight: Optional[float] = None,
        n_steps: Optional[int] = None,
        temperature: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        timesteps: Optional[Sequence[int]] = None,
    ) -> torch.Tensor:
        """Generate windows conditioned on real ``(s_t, a_t)`` and a return-to-go target.

        Args:
            state0: ``(B, obs_dim)`` normalised ``s_t``.
            action0: ``(B, act_dim)`` normalised ``a_t`` (None without an action condition, ``act_dim == 0``).
            rtg: ``(B,)`` or ``(B, 1)`` scaled return-to-go target (a scalar is broadcast).
            guidance_weight: w (default: the constructor's).
            n_steps: N strided reverse steps (default: the constructor's).
            temperature: noise scale (default: the constructor's).
            generator: RNG on the model's device for reproducible samples.
            timesteps: explicit ascending diffusion step indices to visit (overrides ``n_steps``), e.g.
                ``[0, 3]``: two reverse steps starting one below ``K - 1`` (:func:`check_timesteps`).

        Returns:
            ``(B, T, D)`` normalised windows; row-0 ``s_t``/``a_t`` and future actions (0) are exact (the
            planner: row 0 is ``s_t`` exactly).
        """
        w = self.guidance_weight if guidance_weight is None else guidance_weight
        n = self.n_sampling_steps if n_steps is None else n_steps
        temp = self.temperature if temperature is None else temperature
        b, dev, dt = state0.shape[0], state0.device, state0.dtype
        rtg = torch.as_tensor(rtg, device=dev, dtype=dt)
        rtg = rtg.reshape(1, 1).expand(b, 1) if rtg.numel() == 1 else rtg.reshape(b, 1)
        action0 = self._action0(action0, state0)
        known = self.known_values(state0, action0)
        shape = (b, self.horizon, self.transition_dim)

        x = temp * torch.randn(shape, device=dev, dtype=dt, generator=generator)
        x = self.apply_conditioning(x, known)
        taus = (check_timesteps(timesteps, self.n_diffusion_steps) if timesteps is not None
                else strided_timesteps(self.n_diffusion_steps, n))
        low, high = self.x0_low.to(dt), self.x0_high.to(dt)
        clip = bool(torch.isfinite(low).any() or torch.isfinite(high).any())  # one sync per call
        for i in reversed(range(len(taus))):
            t = taus[i]
            abar_t = float(self._abar64[t])
            abar_prev = float(self._abar64[taus[i - 1]]) if i > 0 else 1.0
            beta = 1.0 - abar_t / abar_prev  # beta of the respaced (strided) chain
            k = torch.full((b,), t, device=dev, dtype=torch.long)
            eps = self.guided_eps(x, k, action0, rtg, w)
            x0_hat = (x - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)
            if clip:
                x0_hat = torch.clamp(x0_hat, min=low, max=high)
            # DDPM posterior q(x_{prev} | x_t, x_0_hat) of the strided chain.
            c0 = math.sqrt(abar_prev) * beta / (1.0 - abar_t)
            ct = math.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar_t)
            x = c0 * x0_hat + ct * x
            if i > 0:
                sigma = math.sqrt(beta * (1.0 - abar_prev) / (1.0 - abar_t))
                x = x + (temp * sigma) * torch.randn(shape, device=dev, dtype=dt, generator=generator)
            x = self.apply_conditioning(x, known)
        return x


class EMA:
    """Exponential moving average copy of a module, updated every ``update_every`` calls of :meth:`step`.

    Before ``start_step`` steps the EMA is a plain copy of the model (Decision Diffuser's
    ``step_start_ema``). Use ``ema.model`` for sampling / evaluation.

    Args:
        model: the trained module (not modified).
        decay: EMA decay per update.
        update_every: update period in optimiser steps.
        start_step: copy instead of average before this step.
    """

    def __init__(self, model: nn.Module, decay: float = 0.995, update_every: int = 10, start_step: int = 0) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.update_every = update_every
        self.start_step = start_step
        self.num_steps = 0

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        """Count one optimiser step of ``model`` and update the average when it is due."""
        self.num_steps += 1
        if self.num_steps % self.update_every != 0:
            return
        if self.num_steps < self.start_step:
            self.copy_from(model)
            return
        ema_p = list(self.model.parameters())
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - self.decay)  # ema += (1 - decay) (p - ema)
        for eb, b in zip(self.model.buffers(), model.buffers()):
            eb.copy_(b)

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        """Set the EMA weights (and buffers) to ``model``'s."""
        for ep, p in zip(self.model.parameters(), model.parameters()):
            ep.copy_(p)
        for eb, b in zip(self.model.buffers(), model.buffers()):
            eb.copy_(b)

    def state_dict(self) -> dict:
        """Checkpointable state: EMA weights and counters."""
        return {"model": self.model.state_dict(), "num_steps": self.num_steps, "decay": self.decay,
                "update_every": self.update_every, "start_step": self.start_step}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.model.load_state_dict(state["model"])
        self.num_steps = int(state["num_steps"])
        self.decay = float(state["decay"])
        self.update_every = int(state["update_every"])
        self.start_step = int(state["start_step"])
