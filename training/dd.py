"""Train the Decision Diffuser planner's diffusion model (states-only windows, return-conditioned).

Reads top to bottom: config -> data (the world model's episode-safe windows, states only, the same held-out
episodes as the IDM) -> model -> the shared diffusion loop (:mod:`dawm_env.training.diffusion`: progress,
TensorBoard, atomic safetensors + JSON checkpoints in ``OUT/dd_ckpt/``, exact resume, DDP) -> the EMA weights
``OUT/dd.safetensors`` + ``OUT/dd.json``. ``dawm train idm --dataset ID --out DIR`` trains the IDM into the same
folder; when both are there, the planner bundle (``planner.json``) is assembled.

``dawm train dd --dataset ID --out DIR [--preset cpu|paper] [--steps N] [--set horizon=16] [--device D]``
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from dawm_env.data.loading import load_dataset
from dawm_env.planner.bundle import DD_FILE
from dawm_env.planner.config import DDConfig
from dawm_env.planner.data import plan_source, plan_windows, plan_x0_bounds
from dawm_env.planner.evaluation import evaluate_plans
from dawm_env.planner.model import build_dd_model
from dawm_env.training.common import ModelRunConfig
from dawm_env.training.diffusion import DiffusionJob, start_run, train_diffusion
from dawm_env.world_model.evaluation import heldout_starts

CKPT_DIR = f"{DD_FILE}_ckpt"
QUALITY_CURVE_FILE = "dd_quality_curve.json"


@dataclass
class DDTrainConfig(ModelRunConfig):
    """How to train the planner (the model itself is described by :class:`DDConfig`)."""

    preset: str = "cpu"
    """Planner preset: ``cpu`` or ``paper``."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """:class:`DDConfig` fields to change from the preset (e.g. ``{"horizon": 16}``); checked like the preset."""
    log_every: int = 100
    """TensorBoard / progress-bar scalars every this many steps."""
    eval_every: Optional[int] = None
    """Evaluate the EMA model on held-out windows every this many steps (None: never)."""
    eval_windows: int = 256
    """Held-out windows per evaluation (a fixed random subset)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.model_config()  # an unknown preset or a bad override fails here, before any data is loaded
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"--eval-every must be >= 1 (omit it to never evaluate), got {self.eval_every}")
        for name in ("log_every", "eval_windows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def model_config(self) -> DDConfig:
        """The preset with ``overrides``, ``steps`` and ``batch_size`` applied (validated)."""
        extra = {"train_steps": self.steps, "batch_size": self.batch_size}
        return DDConfig.preset(self.preset, **{**self.overrides, **{k: v for k, v in extra.items() if v is not None}})


def train_dd(cfg: DDTrainConfig) -> Path:
    """Train (or resume) the planner's diffusion model; returns the output folder."""
    rt = start_run(cfg)
    model_cfg = cfg.model_config()
    data = load_dataset(cfg.dataset, task=cfg.task)
    if not data.task:
        raise ValueError(f"{cfg.dataset} does not record its task; pass --task hopper, walker2d or halfcheetah")
    source = plan_source(data, model_cfg.horizon, model_cfg.gamma, cfg.heldout_fraction, cfg.split_seed)
    arch = {k: v for k, v in model_cfg.to_dict().items() if k != "train_steps"}  # steps may grow on resume
    run_meta = {"kind": "decision-diffuser", "architecture": arch, "model_config": model_cfg.to_dict(),
                "bf16": cfg.use_bf16(rt.device),
                "task": data.task, "dataset": cfg.dataset, "dataset_fingerprint": data.fingerprint(),
                "norm_stats": source.stats.to_dict(), "world_size": rt.world, "seed": cfg.seed,
                "heldout_fraction": cfg.heldout_fraction, "split_seed": cfg.split_seed}

    torch.manual_seed(model_cfg.seed + cfg.seed)
    model = build_dd_model(model_cfg, data.obs_dim).to(rt.device)
    eval_starts = heldout_starts(source, cfg.eval_windows, np.random.default_rng(cfg.split_seed))
    job = DiffusionJob(
        name=DD_FILE, label="decision diffuser", model=model, lr=model_cfg.lr, batch_size=model_cfg.batch_size,
        train_steps=model_cfg.train_steps, ema=(model_cfg.ema_decay, model_cfg.ema_every, model_cfg.ema_start),
        train_starts=source.train_starts, batch=lambda starts: plan_windows(source, starts),
        x0_bounds=plan_x0_bounds(source), run_meta=run_meta,
        resume_keys=("kind", "architecture", "dataset_fingerprint", "seed", "world_size", "split_seed"),
        evaluate=lambda m: evaluate_plans(m, source, eval_starts, seed=cfg.seed), eval_every=cfg.eval_every,
        curve_file=QUALITY_CURVE_FILE,
        curve_header={"dataset": cfg.dataset, "preset": cfg.preset, "eval_windows": len(eval_starts)},
        curve_scalars=("state_mse_mean",))
    return train_diffusion(cfg, rt, job, log_every=cfg.log_every, progress=cfg.progress)
