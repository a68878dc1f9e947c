"""How far to trust one dream step: uncertainty signals and their calibration on real transitions.

A dream step ``(s_t, a_t) -> (s_{t+1}, r_t)`` is one world-model call (:meth:`Bundle.sample_window`). Two
signals say how much it can be trusted (see :data:`~dawm_env.world_model.calibration.SIGNALS`):

- ``action_gap`` (DAWM's own): the IDM reads the generated ``(s_{t-1}, s_t, s_{t+1})`` and infers the action
  that produced it; when the world model ignored the agent's action (one it never saw, e.g. saturated at +-1)
  and produced behaviour-like states, the inferred action differs from the taken one. Needs ``s_{t-1}``; at an
  episode's first step it is unknown (a mid-episode start state) and the gap is reported as 0.
- ``disagreement``: two independent samples of the same step; their spread estimates the model's own noise
  (the single-model analogue of MOPO's ensemble spread). Doubles the batch of the model call.

:func:`calibrate_pessimism` measures both on real transitions of a dataset and derives the dream env's default
penalty and halt threshold (:mod:`dawm_env.world_model.calibration`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from dawm_env.data.records import OfflineDataset
from dawm_env.world_model.bundle import Bundle, SampledWindow
from dawm_env.world_model.calibration import (
    HALT_PERCENTILE,
    PENALTY_SCALE,
    PERCENTILES,
    SIGNALS,
    PessimismCalibration,
    SignalCalibration,
    percentile_key,
)


def check_signal(name: str) -> str:
    """``name`` if it is a known signal, else ValueError listing them."""
    if name not in SIGNALS:
        raise ValueError(f"unknown uncertainty signal {name!r}; choose one of {list(SIGNALS)}")
    return name


@torch.no_grad()
def action_gap(bundle: Bundle, prev_states: np.ndarray, window: SampledWindow, actions: np.ndarray) -> np.ndarray:
    """Mean ``|IDM(s_{t-1}, s_t, s_{t+1}) - a_t|`` over action dims, per row.

    Args:
        bundle: the bundle whose IDM reads the window.
        prev_states: ``(B, obs_dim)`` raw ``s_{t-1}``; NaN rows = unknown (the row's gap is 0).
        window: the sampled step (rows 0 and 1 are used).
        actions: ``(B, act_dim)`` the actions the step was conditioned on.

    Returns:
        ``(B,)`` float64.
    """
    dev = window.states_norm.device
    prev = torch.as_tensor(np.asarray(prev_states, dtype=np.float32), device=dev)
    known = torch.isfinite(prev).all(-1)
    # the IDM's episode-start convention (zero = the normalised mean) only for the rows masked out below
    prev_norm = torch.nan_to_num(bundle.normalize_obs(prev), nan=0.0)
    inferred, _ = bundle.idm.act(prev_norm, window.states_norm[:, 0], window.states_norm[:, 1])
    a = torch.as_tensor(np.asarray(actions, dtype=np.float32), device=dev)
    gap = (inferred - a).abs().mean(-1) * known
    return gap.double().cpu().numpy()


def disagreement(first: SampledWindow, second: SampledWindow) -> np.ndarray:
    """RMS over state dims of two samples' ``s_{t+1}`` difference (normalised units) / sqrt(2), per row: ``(B,)``."""
    diff = first.states_norm[:, 1] - second.states_norm[:, 1]
    return (diff.pow(2).mean(-1).sqrt() / math.sqrt(2.0)).double().cpu().numpy()


@dataclass(frozen=True)
class DreamTransition:
    """One dream step for ``B`` rows, before any penalty.

    Attributes:
        window: the sampled window (first sample), rows ``s_t`` and ``s_{t+1}``.
        next_states: ``(B, obs_dim)`` float64 raw ``s_{t+1}``.
        rewards: ``(B,)`` float64 raw ``r_t``.
        terminal: ``(B,)`` bool, the task's termination function on ``s_{t+1}``.
        signals: ``{name: (B,) float64}`` for each requested signal.
    """

    window: SampledWindow
    next_states: np.ndarray
    rewards: np.ndarray
    terminal: np.ndarray
    signals: dict[str, np.ndarray]


def dream_transition(bundle: Bundle, states: np.ndarray, actions: np.ndarray, rtg: float,
                     generator: torch.Generator, signals: Sequence[str] = (),
                     prev_states: Optional[np.ndarray] = None, guidance: Optional[float] = None,
                     sampling_steps: Optional[int] = None, temperature: Optional[float] = None,
                     timesteps: Optional[Sequence[int]] = None, bf16: bool = False) -> DreamTransition:
    """One dream step with the requested uncertainty signals: the shared core of the dream envs and calibration.

    Args:
        bundle: the world model + IDM.
        states: ``(B, obs_dim)`` raw ``s_t``.
        actions: ``(B, act_dim)`` actions in ``[-1, 1]``.
        rtg: scaled return-to-go condition ``g``.
        generator: torch RNG on the models' device.
        signals: names from :data:`SIGNALS` to compute.
        prev_states: ``(B, obs_dim)`` raw ``s_{t-1}`` (NaN rows = unknown); needed for ``action_gap``.
        guidance / sampling_steps / temperature: None = the bundle's.
        timesteps / bf16: sampler schedule and precision (:meth:`Bundle.sample_window`).
    """
    for name in signals:
        check_signal(name)
    b = len(states)
    twice = "disagreement" in signals
    s_in = np.concatenate([states, states]) if twice else states
    a_in = np.concatenate([actions, actions]) if twice else actions
    # one model call: with disagreement, rows B.. are an independent second sample of the same steps
    both = bundle.sample_window(s_in, a_in, rtg, 2, generator, guidance=guidance, sampling_steps=sampling_steps,
                                temperature=temperature, timesteps=timesteps, bf16=bf16)
    window = both if not twice else SampledWindow(both.states_norm[:b], both.states[:b], both.rewards[:b],
                                                  both.terminal[:b])
    out: dict[str, np.ndarray] = {}
    if "action_gap" in signals:
        if prev_states is None:
            prev_states = np.full_like(np.asarray(states, dtype=np.float64), np.nan)
        with torch.autocast(window.states_norm.device.type, dtype=torch.bfloat16, enabled=bool(bf16)):
            out["action_gap"] = action_gap(bundle, prev_states, window, actions)
    if twice:
        second = SampledWindow(both.states_norm[b:], both.states[b:], both.rewards[b:], both.terminal[b:])
        out["disagreement"] = disagreement(window, second)
    return DreamTransition(window=window, next_states=window.states[:, 1].astype(np.float64),
                           rewards=window.rewards[:, 0].astype(np.float64), terminal=window.terminal[:, 0],
                           signals=out)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (ties broken by order; fine for continuous values); 0.0 if constant."""
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def calibrate_pessimism(bundle: Bundle, data: OfflineDataset, transitions: int = 20_000, seed: int = 0,
                        rtg: Optional[float] = None, batch_size: int = 2048,
                        episodes: Optional[np.ndarray] = None) -> PessimismCalibration:
    """Measure every signal on real transitions of ``data`` and derive the dream env's defaults.

    Real mid-episode steps (``s_{t-1}`` known) are drawn at random; each is dreamed once from its real
    ``(s_t, a_t)`` with the dream env's default sampler settings. The real ``s_{t+1}`` gives the dream's error,
    against which each signal's rank correlation is reported.

    Args:
        bundle: the bundle to calibrate.
        data: real transitions of its task (its training data, or held-out data of the same policy).
        transitions: how many to measure (fewer if the data has fewer).
        seed: which transitions and the sampling noise.
        rtg: the condition ``g``; None = the dream env's default (the task's highest generation target).
        batch_size: rows per model call.
        episodes: optional ``(E,)`` bool mask: measure only these episodes (the bundle's held-out ones).

    Raises:
        ValueError: the data is for another task or has no mid-episode steps.
    """
    task = bundle.task
    if data.task and data.task != task.name:
        raise ValueError(f"cannot calibrate a {task.name} bundle on {data.task} data ({data.source})")
    if data.obs_dim != task.obs_dim or data.act_dim != task.act_dim:
        raise ValueError(f"dataset {data.source} has obs/act dims {data.obs_dim}/{data.act_dim}; {task.name} needs "
                         f"{task.obs_dim}/{task.act_dim}")
    starts = np.zeros(data.num_transitions, dtype=bool)
    starts[data.episode_offsets[:-1]] = True
    usable = ~starts
    if episodes is not None:
        episodes = np.asarray(episodes, dtype=bool)
        if episodes.shape != (data.num_episodes,):
            raise ValueError(f"episodes mask has shape {episodes.shape}, dataset has {data.num_episodes} episodes")
        usable &= np.repeat(episodes, data.episode_lengths)
    candidates = np.flatnonzero(usable)
    if len(candidates) == 0:
        raise ValueError(f"dataset {data.source} has no mid-episode transitions to calibrate on")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(candidates, size=min(int(transitions), len(candidates)), replace=False))
    rtg = float(rtg if rtg is not None else max(task.gen_rtg_range))
    dev = next(bundle.world_model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    values: dict[str, list[np.ndarray]] = {name: [] for name in SIGNALS}
    errors = []
    std = np.asarray(bundle.stats.obs_std, dtype=np.float64)
    for lo in range(0, len(idx), batch_size):
        rows = idx[lo:lo + batch_size]
        step = dream_transition(bundle, data.observations[rows], data.actions[rows], rtg, gen, SIGNALS,
                                prev_states=data.observations[rows - 1])
        for name in SIGNALS:
            values[name].append(step.signals[name])
        errors.append((((step.next_states - data.next_observations[rows]) / std) ** 2).mean(-1))
    err = np.concatenate(errors)
    wm = bundle.world_model
    reward_mean = float(np.mean(data.rewards[idx]))
    signals = {}
    for name in SIGNALS:
        u = np.concatenate(values[name])
        pct = {percentile_key(q): float(np.percentile(u, q)) for q in PERCENTILES}
        p99 = max(pct[percentile_key(99.0)], 1e-8)
        signals[name] = SignalCalibration(
            mean=float(u.mean()), percentiles=pct, error_correlation=spearman(u, err),
            penalty_coef=float(PENALTY_SCALE * abs(reward_mean) / p99),
            halt_threshold=float(np.percentile(u, HALT_PERCENTILE)))
    return PessimismCalibration(
        dataset=data.source, transitions=int(len(idx)), rtg_target=rtg,
        guidance_weight=float(wm.guidance_weight), sampling_steps=int(wm.n_sampling_steps),
        temperature=float(wm.temperature), reward_mean=reward_mean, signals=signals, seed=int(seed))
