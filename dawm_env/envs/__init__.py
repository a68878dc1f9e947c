"""Dream environments: trained DAWM world models served as Gymnasium envs.

``import dawm_env`` registers (string entry points only: no torch, no checkpoints are loaded until an
env is made):

- ``DAWM-Hopper-v0``: task hopper, default bundle ``hopper-medium``;
- ``DAWM-Walker2d-v0``: task walker2d, default bundle ``walker2d-medium``;
- ``DAWM-HalfCheetah-v0``: task halfcheetah, default bundle ``halfcheetah-medium``;

each with ``max_episode_steps=1000`` (the real envs' limit), ``entry_point``
``dawm_env.envs.dream:DreamEnv`` and ``vector_entry_point`` ``dawm_env.envs.vector:DreamVectorEnv``.

    import gymnasium as gym
    env = gym.make("dawm_env:DAWM-Hopper-v0", bundle="path/or/name", rtg_target=0.8, max_episode_steps=200)
    venv = gym.make_vec("dawm_env:DAWM-Hopper-v0", num_envs=64)          # one model call per step
    from dawm_env.envs.sb3 import make_sb3_vec_env                       # SB3 VecEnv adapter

Keyword arguments (JSON-friendly, see :class:`dawm_env.envs.dream.DreamConfig`): ``bundle``,
``rtg_target``, ``guidance_weight``, ``sampling_steps``, ``sampling_timesteps``, ``bf16``, ``temperature``,
``device``, ``start_states``, ``start_mode``, ``idm_info``, and the pessimism (on by default): ``pessimism``,
``uncertainty``, ``penalty_coef``, ``halt_threshold``, ``halt``, ``halt_penalty``; ``render_mode`` / ``width`` / ``height`` for the single env;
``max_episode_steps`` through ``make`` / ``make_vec``.

Modules: :mod:`.dream` (``DreamEnv``, ``DreamConfig``, the shared ``DreamDynamics``), :mod:`.vector`
(``DreamVectorEnv``), :mod:`.sb3` (``DreamSB3VecEnv``, ``make_sb3_vec_env``, the offline model-based recipe's
``RealMixReplayBuffer``, ``frozen_obs_normalization`` and ``SB3TD3BC``), :mod:`.render`
(``StateRenderer``, GL backend helpers).
"""

from __future__ import annotations

from typing import Any

#: (env id, task, default bundle name)
DREAM_ENVS: tuple[tuple[str, str, str], ...] = (
    ("DAWM-Hopper-v0", "hopper", "hopper-medium"),
    ("DAWM-Walker2d-v0", "walker2d", "walker2d-medium"),
    ("DAWM-HalfCheetah-v0", "halfcheetah", "halfcheetah-medium"),
)

#: Time limit of the registered ids (the real envs'; pass ``max_episode_steps`` for shorter dreams).
MAX_EPISODE_STEPS = 1000

_LAZY = {
    "DreamEnv": "dawm_env.envs.dream", "DreamConfig": "dawm_env.envs.dream",
    "DreamVectorEnv": "dawm_env.envs.vector",
    "DreamSB3VecEnv": "dawm_env.envs.sb3", "make_sb3_vec_env": "dawm_env.envs.sb3",
    "RealMixReplayBuffer": "dawm_env.envs.sb3", "real_mix_kwargs": "dawm_env.envs.sb3",
    "frozen_obs_normalization": "dawm_env.envs.sb3", "SB3TD3BC": "dawm_env.envs.sb3",
}

__all__ = ["DREAM_ENVS", "MAX_EPISODE_STEPS", "register_envs", *_LAZY]


def register_envs() -> None:
    """Register the dream env ids with Gymnasium (idempotent; loads nothing heavy)."""
    from gymnasium.envs.registration import register, registry

    for env_id, task, bundle in DREAM_ENVS:
        if env_id in registry:
            continue
        register(
            id=env_id,
            entry_point="dawm_env.envs.dream:DreamEnv",
            vector_entry_point="dawm_env.envs.vector:DreamVectorEnv",
            max_episode_steps=MAX_EPISODE_STEPS,
            kwargs={"task": task, "bundle": bundle},
        )


def __getattr__(name: str) -> Any:
    # Lazy exports: importing dawm_env.envs must not import torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
