"""Held-out quality of a planner (no environment): how close its plans and actions are to real episodes.

Metrics (the training curve and ``planner.json``'s ``metrics``):

- ``state_mse_per_step``: normalised-state MSE between planned and real ``s_{t+h}``, ``h = 1 .. H - 1``, each
  plan conditioned on its window's real return-to-go (so planned and real futures compare);
- ``state_mse_mean``: the same over every planned row;
- with the IDM: ``action_mae``: MAE between the planner's action ``IDM(s_{t-1}, s_t, planned s_{t+1})`` and the
  real ``a_t`` of the data, and ``idm_action_mae``: the IDM on the real ``(s_{t-1}, s_t, s_{t+1})``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from dawm_env.planner.data import plan_windows
from dawm_env.world_model.data import WindowSource, idm_triples
from dawm_env.world_model.diffusion import GaussianDiffusion
from dawm_env.world_model.idm import InverseDynamics


@torch.no_grad()
def evaluate_plans(diffusion: GaussianDiffusion, source: WindowSource, starts: np.ndarray, seed: int = 0,
                   batch: int = 512, idm: Optional[InverseDynamics] = None) -> dict:
    """Plan-vs-real metrics of ``diffusion`` (the module docstring) on the windows at ``starts``."""
    device = next(diffusion.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    rows = source.horizon  # planned rows after s_t
    se_sum, se_n = np.zeros(rows), np.zeros(rows)
    act_abs, idm_abs, n = 0.0, 0.0, 0
    for i in range(0, len(starts), batch):
        s = starts[i:i + batch]
        x0, rtg, valid = (t.to(device) for t in plan_windows(source, s))
        plan = diffusion.sample(x0[:, 0], None, rtg, generator=gen)
        v = valid[:, 1:].float()
        err = (plan[:, 1:] - x0[:, 1:]).square().mean(-1) * v
        se_sum += err.sum(0).cpu().numpy()
        se_n += v.sum(0).cpu().numpy()
        if idm is not None:
            prev, cur, nxt, act = (t.to(device) for t in idm_triples(source.data, source.stats, s))
            planned, _ = idm.act(prev, cur, plan[:, 1])
            real, _ = idm.act(prev, cur, nxt)
            act_abs += float((planned - act).abs().mean(-1).sum())
            idm_abs += float((real - act).abs().mean(-1).sum())
            n += len(s)
    out = {"windows": int(len(starts)),
           "state_mse_per_step": [float(a / max(b, 1)) for a, b in zip(se_sum, se_n)],
           "state_mse_mean": float(se_sum.sum() / max(se_n.sum(), 1))}
    if idm is not None:
        out.update(action_mae=act_abs / max(n, 1), idm_action_mae=idm_abs / max(n, 1))
    return out
