"""TD3+BC (Fujimoto & Gu 2021), K seeds trained together; CORL's ``td3_bc.py`` conventions.

Reads top to bottom: config -> networks -> TD target -> one gradient step -> acting.

Per step and per seed (CORL, the field's reference implementation):

- critic: ``y = r + gamma (1 - terminated) min_j Q'_j(s', clip(pi'(s') + clip(N(0, 0.2), +-0.5), +-1))``,
  loss ``MSE(Q_1(s, a), y) + MSE(Q_2(s, a), y)``; DWM's n-step rows (``batch.discounts``) replace
  ``gamma (1 - terminated)`` by ``gamma^n (1 - terminated)`` and ``r`` by the discounted n-step sum;
- every ``policy_freq``-th step: actor loss ``-lambda mean Q_1(s, pi(s)) + MSE(pi(s), a)`` with
  ``lambda = alpha / mean|Q_1(s, pi(s))|`` (detached), then the three target networks move by ``tau``; with
  ``batch.bc_weights`` the MSE is the weighted mean over rows (e.g. only rows whose action is real);

Observations are normalised with the training data's mean / std (+1e-3) inside the agent, so sources
hand over raw transitions and :meth:`TD3BC.act` takes raw observations.

Multi-seed: every network stacks its K seeds (twin critics: 2K members, ``[Q1 of seeds..., Q2 of seeds...]``)
in :class:`~dawm_env.agents.networks.BatchedMLP`; each seed's loss is a mean over its own batch and the losses are
summed over seeds, so the seeds train exactly as K separate runs would, in one batched matmul per layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from dawm_env.agents.networks import (
    BatchedMLP,
    Normalizer,
    frozen_copy,
    make_adam,
    polyak_update,
)
from dawm_env.agents.sources import TransitionBatch


@dataclass
class TD3BCConfig:
    """TD3+BC hyper-parameters (defaults: CORL's D4RL locomotion settings)."""

    alpha: float = 2.5
    """Weight of the Q term relative to behaviour cloning (lambda = alpha / mean|Q|)."""
    discount: float = 0.99
    """Discount factor gamma."""
    tau: float = 0.005
    """Target network update rate."""
    policy_noise: float = 0.2
    """Std of the target policy smoothing noise (times max_action = 1)."""
    noise_clip: float = 0.5
    """Clip of the target policy smoothing noise."""
    policy_freq: int = 2
    """Actor and target updates every this many critic steps."""
    actor_lr: float = 3e-4
    """Actor Adam learning rate."""
    critic_lr: float = 3e-4
    """Critic Adam learning rate."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden sizes of actor and critics."""
    normalize_states: bool = True
    """Normalise observations with the training data's mean / std."""
    normalize_reward: bool = False
    """Scale rewards by CORL's ``1000 / (max return - min return)`` (off for TD3+BC in CORL)."""
    bf16: bool = False
    """Run the matmuls under bfloat16 autocast (faster on CPUs with AVX512-BF16 / AMX and on GPUs; changes
    numerics slightly: not a CORL setting, off by default)."""

    def to_dict(self) -> dict:
        """JSON-serialisable dict."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


class TD3BC:
    """K independent TD3+BC agents trained in lock-step.

    Args:
        cfg: hyper-parameters.
        obs_dim: observation size.
        act_dim: action size (actions in [-1, 1]).
        seeds: the K agent seeds (initialisation keys).
        normalizer: observation statistics and reward scale.
        device: where the networks live.
        total_steps: planned gradient steps (unused; IQL's schedule needs it).
    """

    name = "td3bc"

    def __init__(self, cfg: TD3BCConfig, obs_dim: int, act_dim: int, seeds: Sequence[int], normalizer: Normalizer,
                 device: torch.device | str = "cpu", total_steps: int = 1) -> None:
        self.cfg, self.seeds, self.k = cfg, list(seeds), len(seeds)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = torch.device(device)
        self.max_action = 1.0
        k = self.k
        self.normalizer = normalizer.to(self.device)
        self.actor = BatchedMLP(k, obs_dim, cfg.hidden, act_dim, tanh_output=True,
                                init_keys=[(s, "actor") for s in self.seeds]).to(self.device)
        self.critic = BatchedMLP(2 * k, obs_dim + act_dim, cfg.hidden, 1, tanh_output=False,
                                 init_keys=[(s, f"critic.q{j}") for j in (1, 2) for s in self.seeds]).to(self.device)
        self.actor_target = frozen_copy(self.actor)
        self.critic_target = frozen_copy(self.critic)
        self.actor_opt = make_adam(self.actor.parameters(), cfg.actor_lr)
        self.critic_opt = make_adam(self.critic.parameters(), cfg.critic_lr)

    # --- TD target ---------------------------------------------------------------------------------
    @torch.no_grad()
    def td_target(self, next_obs: torch.Tensor, rewards: torch.Tensor, terminations: torch.Tensor,
                  gen: torch.Generator, discounts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Clipped double-Q target with target policy smoothing.

        Args:
            next_obs: ``(K, B, obs_dim)`` normalised next observations.
            rewards: ``(K, B)`` (already scaled).
            terminations: ``(K, B)`` 1.0 where s' is terminal: only these stop bootstrapping.
            gen: generator of the smoothing noise.
            discounts: ``(K, B)`` bootstrap factors ``gamma^n (1 - terminated)`` of n-step rows (DWM), replacing
                ``gamma (1 - terminated)``; None = one-step rows.

        Returns:
            ``(K, B)`` targets y.
        """
        cfg, k = self.cfg, self.k
        noise = torch.randn((*next_obs.shape[:2], self.act_dim), generator=gen, device=next_obs.device)
        noise = (noise * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
        next_action = (self.actor_target(next_obs) * self.max_action + noise).clamp(-self.max_action, self.max_action)
        next_sa = torch.cat([next_obs, next_action], -1).repeat(2, 1, 1)  # (2K, B, obs + act)
        next_q = self.critic_target(next_sa).view(2, k, -1).amin(0)
        if discounts is not None:
            return rewards + discounts * next_q
        return rewards + (1.0 - terminations) * cfg.discount * next_q

    # --- one gradient step ---------------------------------------------------------------------------
    def update(self, batch: TransitionBatch, step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """One TD3+BC step for all K seeds.

        Args:
            batch: raw transitions with leading shape ``(K, B)``.
            step: index of this step (0-based); the actor updates when ``(step + 1) % policy_freq == 0``,
                as CORL's counter does.
            gen: generator for the target smoothing noise.

        Returns:
            Detached per-seed ``(K,)`` diagnostics (``critic_loss``, ``q``; on actor steps also
            ``actor_loss``, ``bc_loss``, ``lambda``).
        """
        cfg, k = self.cfg, self.k
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            obs = self.normalizer.obs(batch.observations)
            next_obs = self.normalizer.obs(batch.next_observations)
            rewards = batch.rewards * self.normalizer.reward_scale
            target = self.td_target(next_obs, rewards, batch.terminations, gen, batch.discounts)
            sa = torch.cat([obs, batch.actions], -1).repeat(2, 1, 1)
            q = self.critic(sa).view(2, k, -1)  # (2, K, B)
            critic_loss = ((q - target) ** 2).mean(-1).sum(0)  # (K,): MSE(Q1, y) + MSE(Q2, y)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.sum().backward()
        self.critic_opt.step()
        out = {"critic_loss": critic_loss.detach(), "q": q.detach()[0].mean(-1)}

        if (step + 1) % cfg.policy_freq == 0:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                pi = self.actor(obs) * self.max_action
                # Q_1 with the critic weights as constants: the actor loss differentiates Q only w.r.t. the action
                q1 = self.critic(torch.cat([obs, pi], -1), members=slice(0, k), detach=True).squeeze(-1)  # (K, B)
                lmbda = cfg.alpha / q1.abs().mean(-1).detach()
                if batch.bc_weights is None:
                    bc_loss = ((pi - batch.actions) ** 2).mean((-2, -1))
                else:  # clone only the weighted rows' actions: a weighted mean over rows of the per-row MSE
                    w = batch.bc_weights
                    bc_loss = (((pi - batch.actions) ** 2).mean(-1) * w).sum(-1) / w.sum(-1).clamp_min(1e-6)
                actor_loss = -lmbda * q1.mean(-1) + bc_loss  # (K,)
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.sum().backward()
            self.actor_opt.step()
            polyak_update(self.critic_target.parameters(), self.critic.parameters(), cfg.tau)
            polyak_update(self.actor_target.parameters(), self.actor.parameters(), cfg.tau)
            out.update(actor_loss=actor_loss.detach(), bc_loss=bc_loss.detach(), **{"lambda": lmbda})
        return out

    # --- acting --------------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic actions of every seed: ``(K, N, obs_dim)`` raw observations -> ``(K, N, act_dim)``."""
        return (self.actor(self.normalizer.obs(obs)) * self.max_action).clamp(-self.max_action, self.max_action)

    # --- state for checkpoints ---------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        """Modules whose state dicts make up a checkpoint."""
        return {"actor": self.actor, "critic": self.critic, "actor_target": self.actor_target,
                "critic_target": self.critic_target, "normalizer": self.normalizer}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers whose states make up a checkpoint."""
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt}
