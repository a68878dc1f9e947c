"""DAWM world model: conditional diffusion over state-reward windows + inverse dynamics model.

- :class:`WorldModelConfig` / :class:`IDMConfig`: documented hyperparameters, presets, JSON round-trip.
- :class:`TemporalUnet`: Decision-Diffuser-style noise predictor conditioned on ``(k, a_t, g)``.
- :class:`GaussianDiffusion`: cosine schedule, in-painting of ``s_t``/``a_t``, masked loss,
  classifier-free guided strided sampling; :class:`EMA` weight averaging.
- :class:`InverseDynamics`: tanh-Gaussian ``f(a_t | s_{t-1}, s_t, s_{t+1})``.

Importing this subpackage loads torch (``import dawm_env`` alone does not).
"""

from dawm_env.world_model.blocks import Conv1dBlock, ResidualTemporalBlock, SinusoidalPosEmb, mlp
from dawm_env.world_model.config import WorldModelConfig
from dawm_env.world_model.diffusion import EMA, GaussianDiffusion, cosine_beta_schedule, strided_timesteps
from dawm_env.world_model.idm import IDMConfig, InverseDynamics
from dawm_env.world_model.unet import TemporalUnet

__all__ = [
    "EMA",
    "Conv1dBlock",
    "GaussianDiffusion",
    "IDMConfig",
    "InverseDynamics",
    "ResidualTemporalBlock",
    "SinusoidalPosEmb",
    "TemporalUnet",
    "WorldModelConfig",
    "cosine_beta_schedule",
    "mlp",
    "strided_timesteps",
]
