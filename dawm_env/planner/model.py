"""The Decision Diffuser planner: the world model's diffusion over states-only windows, and acting with an IDM.

- The network is :class:`~dawm_env.world_model.unet.TemporalUnet` without an action condition (``act_dim = 0``:
  step and return embeddings only) and the diffusion is
  :class:`~dawm_env.world_model.diffusion.GaussianDiffusion` with ``act_dim = 0, reward = False``: windows
  ``(B, H, obs_dim)`` of normalised states ``s_t .. s_{t+H-1}``, row 0 in-painted with the current state,
  classifier-free guidance on the return-to-go (conditional and unconditional passes in one batched call).
- Acting (DD's evaluation loop): sample a plan from the current state and the target return, take its first
  planned state ``s_{t+1}``, and infer ``a_t`` with the IDM from ``(s_{t-1}, s_t, s_{t+1})`` (``s_{t-1}`` = the
  previous *real* state, the normalised zero at an episode's first step, as the IDM was trained); re-plan at
  every real step. Every environment's plan is sampled in one model call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from dawm_env.data.normalization import NormStats
from dawm_env.planner.config import DDConfig
from dawm_env.world_model.diffusion import GaussianDiffusion
from dawm_env.world_model.idm import InverseDynamics
from dawm_env.world_model.unet import TemporalUnet


def build_dd_model(cfg: DDConfig, obs_dim: int) -> GaussianDiffusion:
    """The planner's diffusion model for ``obs_dim``-dim states: ``x (B, cfg.horizon, obs_dim)``."""
    net = TemporalUnet(horizon=cfg.horizon, transition_dim=obs_dim, act_dim=0, dim=cfg.dim, dim_mults=cfg.dim_mults)
    return GaussianDiffusion(net, obs_dim, 0, n_diffusion_steps=cfg.n_diffusion_steps,
                             cond_drop_prob=cfg.cond_drop_prob, n_sampling_steps=cfg.n_sampling_steps,
                             guidance_weight=cfg.guidance_weight, temperature=cfg.temperature,
                             clip_denoised=cfg.clip_denoised, reward=False)


@dataclass(frozen=True)
class PlannedActions:
    """One planning call for ``B`` states.

    Attributes:
        actions: ``(B, act_dim)`` float32 numpy actions in ``(-1, 1)``.
        plan: ``(B, H, obs_dim)`` normalised plans on the model's device (row 0 = the normalised input state,
            exactly).
        prev: ``(B, obs_dim)`` normalised ``s_{t-1}`` the IDM read (zero at an episode's first step).
    """

    actions: np.ndarray
    plan: torch.Tensor
    prev: torch.Tensor


@dataclass
class DecisionDiffuser:
    """A planner: diffusion model (EMA weights), IDM and the normalisation both were trained with.

    Attributes:
        diffusion: the states-only :class:`GaussianDiffusion` (eval mode).
        idm: the :class:`InverseDynamics` ``f(a_t | s_{t-1}, s_t, s_{t+1})`` (eval mode).
        stats: normalisation of states (shared by both models).
        config: the :class:`DDConfig` the diffusion model was trained with.
    """

    diffusion: GaussianDiffusion
    idm: InverseDynamics
    stats: NormStats
    config: DDConfig

    def __post_init__(self) -> None:
        if self.diffusion.act_dim != 0 or self.diffusion.has_reward:
            raise ValueError("a DecisionDiffuser plans states only: its diffusion model needs act_dim = 0 and "
                             "reward = False (build it with build_dd_model)")
        if self.idm.obs_dim != self.diffusion.obs_dim:
            raise ValueError(f"IDM and planner disagree on the state size ({self.idm.obs_dim} vs "
                             f"{self.diffusion.obs_dim})")

    @property
    def device(self) -> torch.device:
        """The models' device."""
        return next(self.diffusion.parameters()).device

    @property
    def horizon(self) -> int:
        """H: rows of a plan."""
        return self.diffusion.horizon

    def normalize(self, states: np.ndarray) -> torch.Tensor:
        """``(B, obs_dim)`` raw states -> normalised float32 tensor on the models' device."""
        s = torch.as_tensor(np.asarray(states, dtype=np.float32), device=self.device)
        return self.stats.normalize_obs(s)

    @torch.inference_mode()
    def plan(self, states_norm: torch.Tensor, rtg: torch.Tensor | float, generator: Optional[torch.Generator] = None,
             guidance: Optional[float] = None, sampling_steps: Optional[int] = None,
             temperature: Optional[float] = None) -> torch.Tensor:
        """Sample plans: ``states_norm (B, obs_dim)`` normalised ``s_t`` -> ``(B, H, obs_dim)`` normalised plans.

        Args:
            rtg: ``(B,)`` or a scalar return-to-go over the task scale.
            generator: RNG on the models' device (all sampling noise).
            guidance / sampling_steps / temperature: None = the config's.
        """
        return self.diffusion.sample(states_norm, None, rtg, guidance_weight=guidance, n_steps=sampling_steps,
                                     temperature=temperature, generator=generator)

    @torch.inference_mode()
    def act(self, states: np.ndarray, prev_states: np.ndarray, first: np.ndarray,
            generator: Optional[torch.Generator] = None, rtg: Optional[float] = None, guidance: Optional[float] = None,
            sampling_steps: Optional[int] = None, temperature: Optional[float] = None) -> PlannedActions:
        """One planning step for ``B`` environments in one model call.

        Args:
            states: ``(B, obs_dim)`` raw current states ``s_t``.
            prev_states: ``(B, obs_dim)`` raw previous real states ``s_{t-1}`` (ignored where ``first``).
            first: ``(B,)`` bool: ``s_t`` is an episode's first state (the IDM reads a zero ``s_{t-1}``).
            rtg: target return-to-go over the task scale (None = the config's ``target_rtg``).

        Returns:
            :class:`PlannedActions`: ``IDM(s_{t-1}, s_t, plan[:, 1])`` (deterministic) and the plans.

        Raises:
            ValueError: inputs of the wrong shape or with NaN / inf.
        """
        states = np.asarray(states, dtype=np.float32)
        prev_states = np.asarray(prev_states, dtype=np.float32)
        first = np.asarray(first, dtype=bool)
        o = self.diffusion.obs_dim
        if states.ndim != 2 or states.shape[1] != o or prev_states.shape != states.shape \
                or first.shape != (states.shape[0],):
            raise ValueError(f"need states and prev_states of shape (B, {o}) and first of shape (B,); got "
                             f"{states.shape}, {prev_states.shape}, {first.shape}")
        if not (np.isfinite(states).all() and np.isfinite(prev_states[~first]).all()):
            raise ValueError("states contain NaN or inf")
        s = self.normalize(states)
        prev = self.normalize(prev_states)
        prev[torch.as_tensor(first, device=prev.device)] = 0.0
        target = self.config.target_rtg if rtg is None else float(rtg)
        plan = self.plan(s, target, generator, guidance, sampling_steps, temperature)
        actions, _ = self.idm.act(prev, s, plan[:, 1])
        return PlannedActions(actions=actions.float().cpu().numpy(), plan=plan, prev=prev)


class PlannerPolicy:
    """The planner as a batched evaluation policy with episode memory (the agents' ``EpisodePolicy`` protocol).

    ``policy(obs (K, N, obs_dim), running (K, N)) -> actions (K, N, act_dim)``: plans for the running
    environments only, all in one model call, and remembers each environment's state for the next step's IDM
    input; ``reset_episodes`` starts new episodes (a zero ``s_{t-1}`` on their first step). All sampling noise
    comes from one generator seeded with ``seed`` at every reset, so an evaluation is reproducible.

    Args:
        planner: the :class:`DecisionDiffuser`.
        seed: sampling seed.
        rtg / guidance / sampling_steps / temperature: planning settings (None = the planner's config).
    """

    def __init__(self, planner: DecisionDiffuser, seed: int = 0, rtg: Optional[float] = None,
                 guidance: Optional[float] = None, sampling_steps: Optional[int] = None,
                 temperature: Optional[float] = None) -> None:
        self.planner, self.seed = planner, int(seed)
        self.settings = dict(rtg=rtg, guidance=guidance, sampling_steps=sampling_steps, temperature=temperature)
        self.generator = torch.Generator(device=planner.device)
        self.prev: Optional[np.ndarray] = None
        self.first: Optional[np.ndarray] = None
        self.model_calls = 0

    def reset_episodes(self, num_policies: int, episodes: int) -> None:
        """Start ``num_policies x episodes`` new episodes (called by the evaluator before their first step)."""
        self.generator.manual_seed(self.seed)
        self.prev, self.first = None, np.ones((num_policies, episodes), dtype=bool)

    def __call__(self, obs: np.ndarray, running: Optional[np.ndarray] = None) -> np.ndarray:
        """``(K, N, obs_dim)`` observations (and ``(K, N)`` running mask) -> ``(K, N, act_dim)`` actions
        (``(N, obs_dim)`` -> ``(N, act_dim)`` for one policy); finished environments get zero actions."""
        obs = np.asarray(obs, dtype=np.float32)
        single = obs.ndim == 2
        if single:  # (N, obs_dim): one policy's N environments
            obs = obs[None]
        if obs.ndim != 3:
            raise ValueError(f"observations must have shape (K, N, obs_dim) or (N, obs_dim), got {obs.shape}")
        if self.first is None or self.first.shape != obs.shape[:-1]:  # not reset for this batch: new episodes
            self.reset_episodes(obs.shape[0], obs.shape[1])
        shape = self.first.shape
        flat = obs.reshape(-1, obs.shape[-1])
        run = np.ones(flat.shape[0], dtype=bool) if running is None else np.asarray(running, dtype=bool).reshape(-1)
        prev = flat if self.prev is None else self.prev
        actions = np.zeros((flat.shape[0], self.planner.idm.act_dim), dtype=np.float32)
        if run.any():
            out = self.planner.act(flat[run], prev[run], self.first.reshape(-1)[run], self.generator,
                                   **self.settings)
            actions[run] = out.actions
            self.model_calls += 1
        self.prev = flat.copy()
        self.first = np.zeros(shape, dtype=bool)
        actions = actions.reshape(*shape, -1)
        return actions[0] if single else actions
