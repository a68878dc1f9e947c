"""Task constants: the one home for everything dawm knows about a locomotion task.

Every other module (data builder, world model, dream env, agents) reads task facts from here:
the Gymnasium env id, observation / action dims, D4RL reference returns, the return-to-go scale
used to condition the world model, and a batched termination function that reproduces the real
``-v5`` environment's health check from observations alone.

Sources: D4RL reference returns (``d4rl/infos.py``, v2 locomotion), return-to-go scales from the
DWM appendix (hopper 400, walker2d 550, halfcheetah 1200), health checks from Gymnasium 1.4
``hopper_v5.py`` / ``walker2d_v5.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Union

import numpy as np

if TYPE_CHECKING:  # torch is optional at import time: keep `import dawm_env` light
    import torch

ArrayLike = Union[np.ndarray, "torch.Tensor"]

#: Dataset levels the builder knows (D4RL names).
LEVELS: tuple[str, ...] = ("random", "medium", "expert", "medium-expert", "medium-replay")
#: Levels built by concatenating other levels' datasets (D4RL's medium-expert = medium + expert, same episodes).
LEVEL_PARTS: dict[str, tuple[str, ...]] = {"medium-expert": ("medium", "expert")}


def level_overlap(train_level: str, data_level: str) -> str:
    """How much of ``data_level``'s data a model trained on ``train_level`` has seen (same task, same seeds).

    Returns:
        ``"same"`` (the same dataset), ``"contained"`` (``data_level`` is part of ``train_level``),
        ``"half"`` (``train_level`` is one part of ``data_level``) or ``"none"``.
    """
    if train_level == data_level:
        return "same"
    if data_level in LEVEL_PARTS.get(train_level, ()):
        return "contained"
    if train_level in LEVEL_PARTS.get(data_level, ()):
        return "half"
    return "none"


def _hopper_healthy(obs: ArrayLike) -> ArrayLike:
    # Hopper-v5: healthy iff z > 0.7, -0.2 < angle < 0.2 and every entry of state_vector()[2:]
    # lies in (-100, 100). obs = (qpos[1:], clip(qvel, -10, 10)), so obs[1:] is qpos[2:] plus
    # clipped velocities: the qpos part is checked exactly; velocities are within +-10 in obs.
    z, angle, rest = obs[..., 0], obs[..., 1], obs[..., 1:]
    rest_ok = ((rest > -100.0) & (rest < 100.0)).all(-1)
    return (z > 0.7) & (angle > -0.2) & (angle < 0.2) & rest_ok


def _walker2d_healthy(obs: ArrayLike) -> ArrayLike:
    # Walker2d-v5: healthy iff 0.8 < z < 2.0 and -1 < angle < 1 (qpos[1], qpos[2] = obs[0], obs[1]).
    z, angle = obs[..., 0], obs[..., 1]
    return (z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0)


def _never_unhealthy(obs: ArrayLike) -> ArrayLike:
    # HalfCheetah never terminates.
    return obs[..., 0] == obs[..., 0]  # True, also for NaN-free tensors; keeps type (numpy / torch)


@dataclass(frozen=True)
class TaskSpec:
    """Static facts about one locomotion task.

    Attributes:
        name: short task name used in ids and CLIs (``hopper``).
        env_id: the real Gymnasium environment (``Hopper-v5``).
        obs_dim: observation size.
        act_dim: action size (actions live in [-1, 1] for all three tasks).
        ref_min_score: D4RL random-policy reference return.
        ref_max_score: D4RL expert reference return.
        rtg_scale: divisor applied to the discounted return-to-go before conditioning.
        max_episode_steps: the real env's time limit.
        gen_rtg_range: DWM's swept generation targets (normalised return-to-go) for m / mr data.
        healthy_fn: batched health check on observations ``(..., obs_dim) -> (...)`` bool.
        qpos_dim: MuJoCo ``nq``; the observation is ``(qpos[1:], qvel)`` (the root x position excluded).
        velocity_clip: the real env clips ``qvel`` to ``+-velocity_clip`` in the observation (hopper, walker2d:
            10; None = no clipping), so an observation at the clip does not determine the MuJoCo state.
    """

    name: str
    env_id: str
    obs_dim: int
    act_dim: int
    ref_min_score: float
    ref_max_score: float
    rtg_scale: float
    max_episode_steps: int
    gen_rtg_range: tuple[float, ...]
    healthy_fn: Callable[[ArrayLike], ArrayLike]
    qpos_dim: int
    velocity_clip: Optional[float]

    @property
    def can_terminate(self) -> bool:
        """Whether the real env ever terminates (False for HalfCheetah)."""
        return self.healthy_fn is not _never_unhealthy

    def is_terminal(self, obs: ArrayLike) -> ArrayLike:
        """Batched termination function on (next) observations.

        Args:
            obs: ``(..., obs_dim)`` numpy array or torch tensor.

        Returns:
            ``(...)`` boolean array / tensor, True where the real env would set ``terminated``.
        """
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(
                f"{self.name}: observations must have last dimension {self.obs_dim}, got shape "
                f"{tuple(obs.shape)}"
            )
        return ~self.healthy_fn(obs)

    def split_observation(self, obs: np.ndarray, x: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """An observation ``(obs_dim,)`` as MuJoCo state: ``qpos (nq,)`` (root x = ``x`` prepended), ``qvel (nv,)``.

        Exact unless a velocity sits at the observation's clip (:meth:`determines_state`).
        """
        obs = np.asarray(obs, dtype=np.float64)
        if obs.shape != (self.obs_dim,):
            raise ValueError(f"{self.name} observations have shape ({self.obs_dim},), got {obs.shape}")
        return np.concatenate(([x], obs[: self.qpos_dim - 1])), obs[self.qpos_dim - 1:].copy()

    def determines_state(self, obs: np.ndarray) -> np.ndarray:
        """``(...)`` bool: the observations ``(..., obs_dim)`` fix the MuJoCo state (no velocity at the clip)."""
        obs = np.asarray(obs)
        if self.velocity_clip is None:
            return np.ones(obs.shape[:-1], dtype=bool)
        return np.abs(obs[..., self.qpos_dim - 1:]).max(-1) < self.velocity_clip - 1e-6

    def normalized_score(self, episode_return: ArrayLike) -> ArrayLike:
        """D4RL normalised score x100: 0 = random, 100 = expert."""
        return 100.0 * (episode_return - self.ref_min_score) / (self.ref_max_score - self.ref_min_score)


TASKS: dict[str, TaskSpec] = {
    "hopper": TaskSpec(
        name="hopper", env_id="Hopper-v5", obs_dim=11, act_dim=3,
        ref_min_score=-20.272305, ref_max_score=3234.3, rtg_scale=400.0, max_episode_steps=1000,
        gen_rtg_range=(0.6, 0.7, 0.8), healthy_fn=_hopper_healthy, qpos_dim=6,
        velocity_clip=10.0,
    ),
    "walker2d": TaskSpec(
        name="walker2d", env_id="Walker2d-v5", obs_dim=17, act_dim=6,
        ref_min_score=1.629008, ref_max_score=4592.3, rtg_scale=550.0, max_episode_steps=1000,
        gen_rtg_range=(0.6, 0.7, 0.8), healthy_fn=_walker2d_healthy, qpos_dim=9,
        velocity_clip=10.0,
    ),
    "halfcheetah": TaskSpec(
        name="halfcheetah", env_id="HalfCheetah-v5", obs_dim=17, act_dim=6,
        ref_min_score=-280.178953, ref_max_score=12135.0, rtg_scale=1200.0, max_episode_steps=1000,
        gen_rtg_range=(0.4, 0.5, 0.6), healthy_fn=_never_unhealthy, qpos_dim=9,
        velocity_clip=None,
    ),
}


def get_task(name: str) -> TaskSpec:
    """Look up a task by name (case-insensitive; ``Hopper-v5`` and ``hopper`` both work).

    Raises:
        ValueError: naming the known tasks when ``name`` is not one of them.
    """
    key = name.lower().split("-")[0]
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[key]


def task_from_env_id(env_id: str) -> TaskSpec:
    """The task whose real env is ``env_id`` (any version suffix)."""
    base = env_id.split("-v")[0].lower()
    for spec in TASKS.values():
        if spec.env_id.split("-v")[0].lower() == base:
            return spec
    raise ValueError(f"no dawm task uses env {env_id!r}; known: {[t.env_id for t in TASKS.values()]}")
