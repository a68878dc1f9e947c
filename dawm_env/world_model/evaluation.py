"""Evaluation of a bundle on held-out real windows (episodes neither model trained on).

Metrics (written into ``bundle.json`` and printed by ``dawm bundle info``):

- ``state_mse_per_step``: normalised-state MSE between generated and real ``s_{t+h}``, ``h = 1..H``;
- ``reward_mae``: reward MAE in raw units over ``r_t .. r_{t+H}``;
- ``idm_action_mae`` / ``idm_nll``: the IDM on real ``(s_{t-1}, s_t, s_{t+1})`` of held-out transitions;
- ``action_consistency_mae``: MAE between the IDM's action inferred from ``(s_{t-1}, s_t, generated
  s_{t+1})`` and the real ``a_t`` the world model was conditioned on (the reviewers' check that the
  generated next state is consistent with the conditioning action);
- ``mujoco_one_step_mse``: normalised-state MSE between the generated ``s_{t+1}`` and MuJoCo stepped from
  the same real ``(s_t, a_t)`` (only windows whose observation fixes the MuJoCo state): the model against the
  simulator rather than against one recorded future.

Generation is conditioned on each window's real return-to-go so generated and real futures compare.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from dawm_env.data.records import OfflineDataset
from dawm_env.data.rollout import real_step_from
from dawm_env.world_model.data import WindowSource, idm_triples
from dawm_env.world_model.diffusion import GaussianDiffusion

if TYPE_CHECKING:  # bundle.py imports this module
    from dawm_env.world_model.bundle import Bundle


def heldout_pool(source: WindowSource) -> np.ndarray:
    """The held-out window starts (the training ones when nothing is held out)."""
    return source.heldout_starts if len(source.heldout_starts) else source.train_starts


def heldout_starts(source: WindowSource, n_windows: int, rng: np.random.Generator) -> np.ndarray:
    """A random subset of at most ``n_windows`` held-out window starts."""
    pool = heldout_pool(source)
    return pool[rng.choice(len(pool), size=min(n_windows, len(pool)), replace=False)]


class _WindowErrors:
    """Running sums of the world model's errors on real windows."""

    def __init__(self, horizon: int, rew_std: float) -> None:
        self.se_sum, self.se_n = np.zeros(horizon), np.zeros(horizon)
        self.rew_abs, self.rew_n, self.rew_std = 0.0, 0, rew_std

    def add(self, x: torch.Tensor, x0: torch.Tensor, valid: torch.Tensor, obs_dim: int) -> None:
        """Accumulate generated ``x`` vs real ``x0`` (both ``(B, H + 1, obs_dim + act_dim + 1)``)."""
        v = valid.float()
        err = (x[:, 1:, :obs_dim] - x0[:, 1:, :obs_dim]).square().mean(-1) * v[:, 1:]
        self.se_sum += err.sum(0).cpu().numpy()
        self.se_n += v[:, 1:].sum(0).cpu().numpy()
        self.rew_abs += float(((x[:, :, -1] - x0[:, :, -1]).abs() * self.rew_std * v).sum())
        self.rew_n += int(v.sum())

    def metrics(self) -> dict:
        """``state_mse_per_step`` (h = 1..H), ``state_mse_mean`` and ``reward_mae`` (raw units)."""
        return {"state_mse_per_step": [float(a / max(b, 1)) for a, b in zip(self.se_sum, self.se_n)],
                "state_mse_mean": float(self.se_sum.sum() / max(self.se_n.sum(), 1)),
                "reward_mae": self.rew_abs / max(self.rew_n, 1)}


@torch.no_grad()
def evaluate_world_model(world_model: GaussianDiffusion, source: WindowSource, starts: np.ndarray, rew_std: float,
                         seed: int = 0, batch: int = 1024) -> dict:
    """State MSE per horizon step and reward MAE of ``world_model`` on the windows at ``starts``.

    Used during training (the quality-vs-wall-clock curve) with the EMA model; sampling uses the
    model's own guidance weight, steps and temperature, conditioned on each window's real return-to-go.
    """
    errors = _WindowErrors(source.horizon, rew_std)
    for _, x, x0, valid in _sample_windows(world_model, source, starts, seed, batch):
        errors.add(x, x0, valid, source.data.obs_dim)
    return errors.metrics()


def _sample_windows(world_model: GaussianDiffusion, source: WindowSource, starts: np.ndarray, seed: int, batch: int
                    ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Generate the windows at ``starts`` in batches, conditioned on each real window's ``(s_t, a_t)`` and
    return-to-go: yields ``(starts, generated x, real x0, valid)``, tensors ``(B, H + 1, D)`` / ``(B, H + 1)``."""
    device = next(world_model.parameters()).device
    obs_dim, act_dim = source.data.obs_dim, source.data.act_dim
    gen = torch.Generator(device=device).manual_seed(seed)
    for i in range(0, len(starts), batch):
        s = starts[i:i + batch]
        x0, rtg, valid = (t.to(device) for t in source.batch(s))
        x = world_model.sample(x0[:, 0, :obs_dim], x0[:, 0, obs_dim:obs_dim + act_dim], rtg, generator=gen)
        yield s, x, x0, valid


@torch.no_grad()
def evaluate_bundle(bundle: "Bundle", data: OfflineDataset, n_windows: int = 1024, seed: int = 0,
                    batch: int = 1024) -> dict:
    """Compute the held-out metrics of ``bundle`` (a :class:`~dawm_env.world_model.bundle.Bundle`)."""
    cfg = bundle.meta["world_model_config"]
    H = int(cfg["horizon"])
    source = WindowSource.build(data, H, float(cfg["gamma"]), float(bundle.meta["heldout_fraction"]),
                                int(bundle.meta["split_seed"]), stats=bundle.stats)
    rng = np.random.default_rng(seed)
    starts = heldout_starts(source, n_windows, rng)
    device = next(bundle.world_model.parameters()).device
    obs_dim = data.obs_dim
    errors = _WindowErrors(H, bundle.stats.rew_std)
    cons_abs, cons_n = 0.0, 0
    firsts, first_rows = [], []
    t0 = time.perf_counter()
    for s, x, x0, valid in _sample_windows(bundle.world_model, source, starts, seed, batch):
        errors.add(x, x0, valid, obs_dim)
        firsts.append(x[:, 1, :obs_dim].cpu().numpy())
        first_rows.append(s)
        # action consistency: IDM(s_{t-1}, s_t, generated s_{t+1}) vs the real a_t
        prev, cur, _, act = (t.to(device) for t in idm_triples(data, bundle.stats, s))
        inferred, _ = bundle.idm.act(prev, cur, x[:, 1, :obs_dim])
        cons_abs += float((inferred - act).abs().mean(-1).sum())
        cons_n += len(s)
    sample_s = time.perf_counter() - t0
    mujoco_mse, mujoco_n = _mujoco_one_step_mse(bundle, data, np.concatenate(first_rows), np.concatenate(firsts))
    # IDM on real held-out transitions
    held_ep = np.isin(data.episode_ids(), np.unique(data.episode_ids()[heldout_pool(source)]))
    idx = np.flatnonzero(held_ep)
    idx = idx[rng.choice(len(idx), size=min(20_000, len(idx)), replace=False)]
    prev, cur, nxt, act = (t.to(device) for t in idm_triples(data, bundle.stats, idx))
    pred, std = bundle.idm.act(prev, cur, nxt)
    return {
        "heldout_windows": int(len(starts)),
        **errors.metrics(),
        "action_consistency_mae": cons_abs / max(cons_n, 1),
        "mujoco_one_step_mse": mujoco_mse,
        "mujoco_one_step_states": mujoco_n,
        "idm_action_mae": float((pred - act).abs().mean()),
        "idm_nll": float(bundle.idm.nll(prev, cur, nxt, act)),
        "idm_std_mean": float(std.mean()),
        "heldout_transitions": int(len(idx)),
        "sampling_seconds": sample_s,
        "guidance_weight": float(cfg["guidance_weight"]),
        "sampling_steps": int(cfg["n_sampling_steps"]),
    }


def _mujoco_one_step_mse(bundle: "Bundle", data: OfflineDataset, rows: np.ndarray, generated: np.ndarray
                         ) -> tuple[float, int]:
    """Normalised MSE of generated ``s_{t+1}`` ``(B, obs_dim)`` against MuJoCo stepped from ``data`` rows ``(B,)``.

    Rows whose observation does not fix the MuJoCo state (a velocity at the clip) are left out; returns
    ``(nan, 0)`` when none is left.
    """
    task = bundle.task
    states = data.observations[rows]
    keep = task.determines_state(states)
    if not keep.any():
        return float("nan"), 0
    real_next, _, _ = real_step_from(task, states[keep], data.actions[rows][keep])
    stats = bundle.stats
    err = (generated[keep] - stats.normalize_obs(real_next.astype(np.float32))) ** 2
    return float(err.mean()), int(keep.sum())
