"""dawm: Diffusion Action World Models for offline RL.

One import root, layers that import only downwards (``tests/test_layering.py`` enforces it):

1. ``tasks``, ``paths``, ``checkpoint``, ``runtime``, ``plotting``: task facts, file locations, the one
   checkpoint format (safetensors + JSON), device / RNG setup, plots.
2. ``data``: D4RL-style datasets (records, loading, Minari I/O, building from the shipped behaviour policies).
3. ``world_model``: the diffusion world model, the IDM and the bundle (both models + normalisation + seeds).
4. ``generation``: batched DAWM rollouts and the Minari dataset generator.
5. ``envs``: the dream Gymnasium envs (``DAWM-Hopper-v0`` ...), single, vector and SB3.
6. ``agents`` (the repository's ``agents/``): TD3+BC, IQL, DWM, SSORL; ``training`` (``training/``): the world-model
   and IDM training loops.
7. ``experiments``: ``dawm demo`` and the paper's tables; 8. ``cli``: the ``dawm`` command.

Importing this package stays light: it only registers the dream env ids (no torch, no checkpoints).
"""

__version__ = "0.1.0"

from dawm_env.envs import register_envs as _register_envs  # noqa: E402

_register_envs()  # dream env ids (string entry points: no torch, no checkpoints)
