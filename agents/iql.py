"""Implicit Q-Learning (Kostrikov et al. 2021), K seeds trained together; CORL's ``iql.py`` conventions.

Reads top to bottom: config (+ CORL's per-dataset presets) -> networks -> one gradient step -> acting.

Per step and per seed, in CORL's order:

1. ``next_v = V(s')`` with the value net *before* this step's update;
2. value: ``adv = min_j Q'_j(s, a) - V(s)``, expectile loss ``mean(|tau - 1[adv < 0]| adv^2)``;
3. critics: ``y = r + gamma (1 - terminated) next_v``, loss ``(MSE(Q_1, y) + MSE(Q_2, y)) / 2``, then the
   target critics move by ``tau`` (DWM's n-step rows: ``y = sum_h gamma^h r_h + gamma^n (1 - terminated) V(s_n)``,
   via ``batch.discounts``);
4. actor: advantage-weighted regression ``mean(min(exp(beta adv), 100) * bc)`` with ``bc = ||pi(s) - a||^2``
   (deterministic actor) or ``-log N(a; mu(s), sigma)`` (Gaussian actor, state-independent log-std),
   learning rate on a cosine schedule from ``actor_lr`` to 0 over the run; with ``batch.bc_weights`` the mean is
   weighted over rows (e.g. only rows whose action is real; value and critics still learn from every row).

Observations are normalised inside the agent; rewards are multiplied by the normaliser's reward scale
(CORL's ``normalize_reward``: ``1000 / (max return - min return)``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
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

EXP_ADV_MAX = 100.0
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


@dataclass
class IQLConfig:
    """IQL hyper-parameters (defaults: CORL's ``iql.py``; see :func:`corl_iql_preset` for per-dataset ones)."""

    beta: float = 3.0
    """Inverse temperature of the advantage weights (small: BC, large: greedy)."""
    expectile: float = 0.7
    """Expectile of the value loss (CORL's ``iql_tau``)."""
    discount: float = 0.99
    """Discount factor gamma."""
    tau: float = 0.005
    """Target critic update rate."""
    actor_lr: float = 3e-4
    """Actor Adam learning rate at step 0 (cosine-annealed to 0 over the run)."""
    critic_lr: float = 3e-4
    """Twin-critic Adam learning rate (CORL's ``qf_lr``)."""
    value_lr: float = 3e-4
    """Value-net Adam learning rate (CORL's ``vf_lr``)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden sizes of every network."""
    deterministic_actor: bool = False
    """Deterministic tanh actor with an L2 BC loss instead of a Gaussian one (CORL's hopper-m / mr configs)."""
    normalize_states: bool = True
    """Normalise observations with the training data's mean / std."""
    normalize_reward: bool = False
    """Scale rewards by ``1000 / (max episode return - min episode return)`` (CORL's hopper-m / mr configs)."""
    bf16: bool = False
    """Run the matmuls under bfloat16 autocast (faster on suitable CPUs / GPUs; not a CORL setting)."""

    def to_dict(self) -> dict:
        """JSON-serialisable dict."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def corl_iql_preset(task: str, level: Optional[str]) -> IQLConfig:
    """CORL's IQL settings for a D4RL-style dataset (``configs/offline/iql/{task}/{level}_v2.yaml``).

    Hopper medium / medium-replay: deterministic actor, reward normalisation, ``tau = 0.001``;
    hopper medium-expert: ``beta = 6``, expectile 0.5. Everything else (and unknown levels): the defaults.
    """
    cfg = IQLConfig()
    if task == "hopper" and level in ("medium", "medium-replay"):
        return replace(cfg, deterministic_actor=True, normalize_reward=True, tau=0.001)
    if task == "hopper" and level == "medium-expert":
        return replace(cfg, beta=6.0, expectile=0.5)
    return cfg


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """``CosineAnnealingLR(T_max=total_steps)``'s rate for the optimiser step with 0-based index ``step``."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


class IQL:
    """K independent IQL agents trained in lock-step.

    Args:
        cfg: hyper-parameters.
        obs_dim: observation size.
        act_dim: action size (actions in [-1, 1]).
        seeds: the K agent seeds (initialisation keys).
        normalizer: observation statistics and reward scale.
        device: where the networks live.
        total_steps: planned gradient steps: the length of the actor's cosine schedule.
    """

    name = "iql"

    def __init__(self, cfg: IQLConfig, obs_dim: int, act_dim: int, seeds: Sequence[int], normalizer: Normalizer,
                 device: torch.device | str = "cpu", total_steps: int = 1_000_000) -> None:
        self.cfg, self.seeds, self.k = cfg, list(seeds), len(seeds)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.device = torch.device(device)
        self.total_steps = total_steps
        self.max_action = 1.0
        k = self.k
        self.normalizer = normalizer.to(self.device)
        self.critic = BatchedMLP(2 * k, obs_dim + act_dim, cfg.hidden, 1, tanh_output=False,
                                 init_keys=[(s, f"critic.q{j}") for j in (1, 2) for s in self.seeds]).to(self.device)
        self.critic_target = frozen_copy(self.critic)
        self.value = BatchedMLP(k, obs_dim, cfg.hidden, 1, tanh_output=False,
                                init_keys=[(s, "value") for s in self.seeds]).to(self.device)
        self.actor = BatchedMLP(k, obs_dim, cfg.hidden, act_dim, tanh_output=True,
                                init_keys=[(s, "actor") for s in self.seeds]).to(self.device)
        actor_params = list(self.actor.parameters())
        if not cfg.deterministic_actor:
            self.log_std = nn.Parameter(torch.zeros(k, 1, act_dim, device=self.device))
            actor_params.append(self.log_std)
        self.critic_opt = make_adam(self.critic.parameters(), cfg.critic_lr)
        self.value_opt = make_adam(self.value.parameters(), cfg.value_lr)
        self.actor_opt = make_adam(actor_params, cfg.actor_lr)

    def _q_min(self, net: BatchedMLP, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``min(Q_1, Q_2)`` of ``net`` at ``(K, B)`` state-action pairs -> ``(K, B)``."""
        return net(torch.cat([obs, actions], -1).repeat(2, 1, 1)).view(2, self.k, -1).amin(0)

    @torch.no_grad()
    def td_target(self, next_obs: torch.Tensor, rewards: torch.Tensor, terminations: torch.Tensor,
                  discounts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``y = r + gamma (1 - terminated) V(s')``, with the value net as it is now.

        Args:
            next_obs: ``(K, B, obs_dim)`` normalised next observations.
            rewards: ``(K, B)`` (already scaled).
            terminations: ``(K, B)`` 1.0 where s' is terminal: only these stop bootstrapping.
            discounts: ``(K, B)`` bootstrap factors ``gamma^n (1 - terminated)`` of n-step rows (DWM), replacing
                ``gamma (1 - terminated)``; None = one-step rows.

        Returns:
            ``(K, B)`` targets.
        """
        v = self.value(next_obs).squeeze(-1)
        if discounts is not None:
            return rewards + discounts * v
        return rewards + (1.0 - terminations) * self.cfg.discount * v

    def update(self, batch: TransitionBatch, step: int,
               gen: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """One IQL step for all K seeds.

        Args:
            batch: raw transitions with leading shape ``(K, B)``.
            step: 0-based step index (sets the actor's cosine learning rate).
            gen: unused (IQL's update is deterministic given the batch); kept for a common signature.

        Returns:
            Detached per-seed ``(K,)`` diagnostics: ``value_loss``, ``critic_loss``, ``actor_loss``, ``adv``.
        """
        cfg, k = self.cfg, self.k
        amp = dict(device_type=self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        with torch.autocast(**amp):
            obs = self.normalizer.obs(batch.observations)
            next_obs = self.normalizer.obs(batch.next_observations)
            rewards = batch.rewards * self.normalizer.reward_scale
            # V(s') before this step's value update
            y = self.td_target(next_obs, rewards, batch.terminations, batch.discounts)
            with torch.no_grad():
                target_q = self._q_min(self.critic_target, obs, batch.actions)

            # 1. value: expectile regression towards the target critics
            v = self.value(obs).squeeze(-1)
            adv = target_q - v
            value_loss = (torch.abs(cfg.expectile - (adv < 0).float()) * adv**2).mean(-1)  # (K,)
        self.value_opt.zero_grad(set_to_none=True)
        value_loss.sum().backward()
        self.value_opt.step()

        # 2. critics: one-step TD towards r + gamma V(s'); only terminations stop bootstrapping
        with torch.autocast(**amp):
            q = self.critic(torch.cat([obs, batch.actions], -1).repeat(2, 1, 1)).view(2, k, -1)
            critic_loss = ((q - y) ** 2).mean(-1).mean(0)  # (K,): (MSE(Q1, y) + MSE(Q2, y)) / 2
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.sum().backward()
        self.critic_opt.step()
        polyak_update(self.critic_target.parameters(), self.critic.parameters(), cfg.tau)

        # 3. actor: advantage-weighted behaviour cloning
        with torch.autocast(**amp):
            weights = torch.exp(cfg.beta * adv.detach()).clamp(max=EXP_ADV_MAX)
            mean = self.actor(obs)
            if cfg.deterministic_actor:
                bc = ((mean - batch.actions) ** 2).sum(-1)
            else:
                log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
                z = (batch.actions - mean) * torch.exp(-log_std)
                bc = (0.5 * z**2 + log_std + 0.5 * math.log(2 * math.pi)).sum(-1)  # -log N(a; mean, std)
            if batch.bc_weights is None:
                actor_loss = (weights * bc).mean(-1)  # (K,)
            else:  # regress only onto the weighted rows' actions (e.g. the real ones): a weighted mean over rows
                w = batch.bc_weights
                actor_loss = (weights * bc * w).sum(-1) / w.sum(-1).clamp_min(1e-6)
        for group in self.actor_opt.param_groups:
            group["lr"] = cosine_lr(cfg.actor_lr, step, self.total_steps)
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.sum().backward()
        self.actor_opt.step()
        return {"value_loss": value_loss.detach(), "critic_loss": critic_loss.detach(),
                "actor_loss": actor_loss.detach(), "adv": adv.detach().mean(-1), "q": q.detach()[0].mean(-1)}

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic actions (the Gaussian's mean): ``(K, N, obs_dim)`` raw -> ``(K, N, act_dim)``."""
        return (self.actor(self.normalizer.obs(obs)) * self.max_action).clamp(-self.max_action, self.max_action)

    def networks(self) -> dict[str, nn.Module]:
        """Modules whose state dicts make up a checkpoint (the Gaussian log-std rides in ``log_std``)."""
        nets: dict[str, nn.Module] = {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target,
                                      "value": self.value, "normalizer": self.normalizer}
        if not self.cfg.deterministic_actor:
            holder = nn.Module()
            holder.log_std = self.log_std  # shares the parameter: loading into it loads the agent's
            nets["log_std"] = holder
        return nets

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers whose states make up a checkpoint."""
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt, "value_opt": self.value_opt}
