"""One seed of a trained K-seed agent as a plain policy: ``predict(obs)`` and a TorchScript export.

A dawm run trains K seeds with batched ``(K, in, out)`` weights; deploying one of them should need neither
the batch nor dawm. :class:`SeedPolicy` copies one seed's actor and observation normaliser into ordinary
``nn.Linear`` layers: ``forward`` maps raw observations ``(N, obs_dim)`` to deterministic actions
``(N, act_dim)`` in ``[-1, 1]`` (the actor's output, as the agent evaluates it), and ``predict`` follows
Stable-Baselines3's predictor protocol (``action, state = model.predict(obs, deterministic=True)``), so
SB3's ``evaluate_policy`` and anything written against SB3 policies can run it. :func:`export_torchscript`
saves it as a TorchScript file that loads with ``torch.jit.load`` alone, without dawm installed.

    from dawm_env.agents.export import load_seed_policy, export_torchscript
    policy = load_seed_policy("runs/td3bc-hopper", seed=0)
    action, _ = policy.predict(obs)
    export_torchscript("runs/td3bc-hopper", "hopper_td3bc_seed0.pt", seed=0)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from dawm_env.agents.iql import IQL
from dawm_env.agents.networks import BatchedMLP
from dawm_env.agents.td3bc import TD3BC
from dawm_env.agents.train import load_agent
from dawm_env.paths import new_temp_file


class SeedPolicy(nn.Module):
    """One seed's deterministic actor with its observation normalisation, as ordinary torch layers.

    Args:
        actor: the agent's batched actor (``K`` members).
        member: index of the seed within the batch.
        obs_mean / obs_std: ``(obs_dim,)`` the agent's normaliser.
        max_action: action scale (1 for the MuJoCo tasks).
    """

    def __init__(self, actor: BatchedMLP, member: int, obs_mean: torch.Tensor, obs_std: torch.Tensor,
                 max_action: float = 1.0) -> None:
        super().__init__()
        layers = []
        for batched in actor.layers:
            lin = nn.Linear(batched.in_features, batched.out_features)
            with torch.no_grad():  # batched weights are (in, out): nn.Linear stores (out, in)
                lin.weight.copy_(batched.weight[member].detach().t())
                lin.bias.copy_(batched.bias[member, 0].detach())
            layers.append(lin)
        self.layers = nn.ModuleList(layers)
        self.tanh_output = bool(actor.tanh_output)
        self.max_action = float(max_action)
        self.register_buffer("obs_mean", obs_mean.detach().float().cpu().clone())
        self.register_buffer("obs_std", obs_std.detach().float().cpu().clone())
        self.obs_dim, self.act_dim = int(obs_mean.shape[0]), int(layers[-1].out_features)
        self.requires_grad_(False)  # a deployed policy: outputs need no autograd graph

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``(N, obs_dim)`` raw observations -> ``(N, act_dim)`` deterministic actions."""
        x = (obs.float() - self.obs_mean) / self.obs_std
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        if self.tanh_output:
            x = torch.tanh(x)
        return (x * self.max_action).clamp(-self.max_action, self.max_action)

    @torch.no_grad()
    def predict(self, observation: Any, state: Any = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[np.ndarray, None]:
        """SB3's predictor protocol: ``(obs_dim,)`` or ``(N, obs_dim)`` observations -> ``(actions, None)``.

        The policy is deterministic (the agents' evaluation policy); ``state`` / ``episode_start`` are
        accepted for the protocol and ignored (no recurrence).

        Raises:
            ValueError: observations of the wrong size or with NaN / inf.
        """
        obs = np.asarray(observation, dtype=np.float32)
        single = obs.ndim == 1
        batch = obs[None] if single else obs
        if batch.ndim != 2 or batch.shape[1] != self.obs_dim:
            raise ValueError(f"observation must have shape ({self.obs_dim},) or (N, {self.obs_dim}), got {obs.shape}")
        if not np.isfinite(batch).all():
            raise ValueError("observation contains NaN or inf")
        actions = self(torch.from_numpy(batch)).numpy()
        return (actions[0] if single else actions), None


def seed_policy(agent: TD3BC | IQL, seed: Optional[int] = None) -> SeedPolicy:
    """The :class:`SeedPolicy` of ``seed`` (an agent seed, e.g. 0; None = the first) of a K-seed agent.

    Raises:
        ValueError: ``seed`` is not one of the agent's seeds.
    """
    seeds = list(agent.seeds)
    seed = seeds[0] if seed is None else int(seed)
    if seed not in seeds:
        raise ValueError(f"seed {seed} is not one of this run's seeds {seeds}; pass --seed with one of them")
    return SeedPolicy(agent.actor, seeds.index(seed), agent.normalizer.obs_mean, agent.normalizer.obs_std,
                      agent.max_action).eval()


def load_seed_policy(run_dir: str | os.PathLike, seed: Optional[int] = None) -> SeedPolicy:
    """One seed's policy from a run folder's latest checkpoint (CPU)."""
    agent, _ = load_agent(run_dir, device="cpu")
    return seed_policy(agent, seed)


def export_torchscript(run_dir: str | os.PathLike, out: str | os.PathLike, seed: Optional[int] = None) -> Path:
    """Save one seed's policy as TorchScript (``torch.jit.load(out)(obs)`` -> actions); written atomically.

    Raises:
        FileExistsError: ``out`` exists (never overwritten).
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another output file or delete it")
    out.parent.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(load_seed_policy(run_dir, seed))
    fd, tmp = new_temp_file(out, ".tmp")
    os.close(fd)
    try:
        scripted.save(tmp)
        os.link(tmp, out)  # fails if another export created ``out`` meanwhile: two runs never both succeed
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out
