"""Configuration of the Decision Diffuser planner (Ajay et al. 2023, "Is Conditional Generative Modeling all you
need for Decision-Making?").

``DDConfig.preset("paper")`` is DD's D4RL-locomotion setting; ``DDConfig.preset("cpu")`` a small variant for a
2-core CPU. Configs round-trip through JSON (``to_dict`` / ``from_dict``) and are stored with the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Mapping, Optional

from dawm_env.world_model.config import DictConfigMixin


@dataclass
class DDConfig(DictConfigMixin):
    """Hyperparameters of the Decision Diffuser planner. Defaults are DD's locomotion setting (a GPU setting).

    Sources of the defaults (the ``paper`` preset):

    - DD's released locomotion config (``code/config/locomotion_config.py`` of anuragajay/decision-diffuser):
      ``horizon = 100``, ``n_diffusion_steps = 200``, ``dim = 128``, ``dim_mults = (1, 4, 8)``,
      ``condition_dropout = 0.25``, ``condition_guidance_w = 1.2``, ``test_ret = 0.9`` (the return-to-go the
      planner is conditioned on when acting), ``discount = 0.99``, ``returns_scale = 400`` (hopper; dawm takes
      the scale per task from :mod:`dawm_env.tasks`: hopper 400, walker2d 550, halfcheetah 1200, the scales DWM
      took from DD), ``batch_size = 32`` with ``gradient_accumulate_every = 2`` (64 windows per optimiser step
      here), ``learning_rate = 2e-4``, ``ema_decay = 0.995``, ``n_train_steps = 1e6``, ``seed = 100``.
    - DD's sampler (``diffuser/models/diffusion.py``): every one of the K reverse steps is taken (DDPM), the
      initial and per-step noise are scaled by 0.5 (low-temperature sampling), the predicted ``x_0`` is clipped;
      the conditioned first row is excluded from the loss. Its trainer updates the EMA every 10 steps from step
      2000 on.
    - The DD paper (App. B) states the same horizon, guidance range {1.2, 1.4, 1.6, 1.8} and dropout 0.25, and
      2e6 training steps (the released config: 1e6).

    Deviations (the same conventions as dawm's world model): mean / std normalisation instead of DD's CDF
    normaliser, so the predicted ``x_0`` is clamped to the data's normalised range instead of [-1, 1]; the
    return-to-go has no termination penalty (DD's dataset adds -100 at a terminal step); windows that run past a
    terminated episode repeat its terminal state and padded rows are masked out of the loss (DD pads with zeros
    and keeps them in the loss); DD's own IDM is an MLP on ``(s_t, s_{t+1})`` trained jointly with the diffusion
    model, dawm reuses its tanh-Gaussian IDM on ``(s_{t-1}, s_t, s_{t+1})`` (:mod:`dawm_env.world_model.idm`),
    trained separately into the same folder (``dawm train idm``).
    """

    horizon: int = 100
    """H: rows of a plan, ``s_t .. s_{t+H-1}`` (row 0 = the in-painted current state; DD's ``horizon``).
    Must be divisible by 2 ** (len(dim_mults) - 1)."""

    dim: int = 128
    """Base channel width of the temporal U-Net and size of the step / return embeddings."""

    dim_mults: tuple[int, ...] = (1, 4, 8)
    """Channel multipliers per U-Net level."""

    n_diffusion_steps: int = 200
    """K: diffusion steps of the cosine noise schedule."""

    n_sampling_steps: int = 200
    """N: reverse steps when planning (N = K: every step, as DD; N < K: evenly strided, faster)."""

    cond_drop_prob: float = 0.25
    """Probability of the null (no return) condition in training (classifier-free guidance)."""

    guidance_weight: float = 1.2
    """w in eps = eps_uncond + w (eps_cond - eps_uncond); 0 = unconditional, 1 = conditional."""

    temperature: float = 0.5
    """Sampling temperature: the initial noise and every per-step noise are scaled by it (DD: 0.5)."""

    clip_denoised: Optional[float] = 5.0
    """Clamp the predicted x_0 to [-c, c] while sampling (normalised units; None = off); training sets the
    tighter per-column bounds of the data (as the world model does)."""

    target_rtg: float = 0.9
    """Return-to-go (over the task's scale) the planner is conditioned on when acting (DD's ``test_ret``)."""

    lr: float = 2e-4
    """Adam learning rate."""

    batch_size: int = 64
    """Windows per optimiser step (DD: 32 x 2 accumulated)."""

    ema_decay: float = 0.995
    """Decay of the exponential moving average of the weights (the EMA model plans)."""

    ema_every: int = 10
    """Update the EMA every this many optimiser steps."""

    ema_start: int = 2000
    """Before this many steps the EMA is a copy of the model."""

    train_steps: int = 1_000_000
    """Total optimiser steps."""

    gamma: float = 0.99
    """Discount of the return-to-go (rest-of-episode discounted return over the task scale)."""

    seed: int = 100
    """Initialisation seed (added to the run's ``--seed``)."""

    def __post_init__(self) -> None:
        self.dim_mults = tuple(int(m) for m in self.dim_mults)
        self.require_positive("dim", "n_diffusion_steps", "n_sampling_steps", "batch_size", "train_steps",
                              "ema_every")
        if int(self.horizon) < 2:
            raise ValueError(f"horizon must be >= 2 (the current state and at least one planned state), "
                             f"got {self.horizon}")
        if not self.dim_mults or any(m < 1 for m in self.dim_mults):
            raise ValueError(f"dim_mults needs one or more multipliers >= 1, got {self.dim_mults}")
        factor = 2 ** (len(self.dim_mults) - 1)
        if self.horizon % factor != 0:
            raise ValueError(f"horizon {self.horizon} must be divisible by 2**(len(dim_mults)-1) = {factor} "
                             f"(dim_mults={self.dim_mults})")
        if self.dim % 2 != 0 or self.dim < 8 or any((self.dim * m) % 8 for m in self.dim_mults):
            raise ValueError(f"dim must be even, >= 8 and dim * mult divisible by 8 (GroupNorm), got dim={self.dim}")
        if not self.n_sampling_steps <= self.n_diffusion_steps:
            raise ValueError(f"need n_sampling_steps ({self.n_sampling_steps}) <= n_diffusion_steps "
                             f"({self.n_diffusion_steps})")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        if not self.guidance_weight >= 0.0:
            raise ValueError(f"guidance_weight must be >= 0, got {self.guidance_weight}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.clip_denoised is not None and not self.clip_denoised > 0:
            raise ValueError(f"clip_denoised must be > 0 or None, got {self.clip_denoised}")
        if not -10.0 < self.target_rtg < 10.0:  # also refuses NaN
            raise ValueError(f"target_rtg is a return-to-go over the task scale (DD: 0.9); got {self.target_rtg}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1], got {self.ema_decay}")
        if self.ema_start < 0:
            raise ValueError(f"ema_start must be >= 0, got {self.ema_start}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in (0, 1], got {self.gamma}")

    PRESETS: ClassVar[tuple[str, ...]] = ("paper", "cpu", "smoke")  # class constant, not a field

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "DDConfig":
        """A named configuration, with optional field overrides (validated).

        - ``"paper"``: DD's locomotion setting (see the class docstring): H = 100, K = N = 200, dim 128,
          (1, 4, 8), w = 1.2, 1M steps of 64 windows; planning one step costs 400 U-Net passes (guidance doubles
          the batch): a GPU setting.
        - ``"cpu"``: for a 2-core CPU: H = 32 (32 planned rows, divisible by 4), K = N = 20, dim 32 with
          (1, 2, 4) (1.04M parameters), batch 64, lr 3e-4, 30k steps and the EMA from step 500 (the budget is
          30k steps, not 1M); the other settings are DD's. 30k, not 15k: on hopper-medium the held-out plan
          error halved from 15k to 30k steps (state MSE 0.152 -> 0.070) and was still falling 7% per 2.5k steps.
          Measured on the project's 2-core machine, one torch thread: 11-12 training steps/s on the 1M-transition
          hopper data alone on the machine (30k steps: about 45 minutes; 5-7 steps/s beside 2-3 other jobs),
          planning one real step in 112 ms at batch 1 and 588 ms for 50 environments in one call
          (``benchmarks/planner_speed.py``): an evaluation of 50 episodes of up to 1000 steps takes about 10
          minutes, one 1000-step episode alone about 2 minutes.
        - ``"smoke"``: a few-thousand-parameter planner (H = 8, K = N = 5, dim 8) that trains in seconds: for
          tests and the experiments' ``smoke`` preset; it exercises the code paths, not planning quality.

        Raises:
            ValueError: an unknown name (listing the valid ones) or a bad override.
        """
        if name == "paper":
            cfg = cls()
        elif name == "cpu":
            cfg = cls(horizon=32, dim=32, dim_mults=(1, 2, 4), n_diffusion_steps=20, n_sampling_steps=20,
                      batch_size=64, lr=3e-4, train_steps=30_000, ema_start=500)
        elif name == "smoke":
            cfg = cls(horizon=8, dim=8, dim_mults=(1, 2), n_diffusion_steps=5, n_sampling_steps=5, batch_size=16,
                      train_steps=30, ema_every=1, ema_start=0)
        else:
            raise ValueError(f"unknown DDConfig preset {name!r}; valid presets: {list(cls.PRESETS)}")
        if overrides:
            unknown = sorted(set(overrides) - set(cfg.to_dict()))
            if unknown:
                raise ValueError(f"unknown DDConfig field(s) {unknown}; valid: {sorted(cfg.to_dict())}")
            cfg = replace(cfg, **overrides)
        return cfg

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "DDConfig":
        """:meth:`from_dict`, with a :class:`TypeError` from a value of the wrong type turned into ValueError."""
        try:
            return cls.from_dict(data)
        except TypeError as err:
            raise ValueError(f"bad DDConfig: {err}") from err
