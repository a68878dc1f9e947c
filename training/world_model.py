"""Train the DAWM diffusion world model (paper Sec. 3.1, App. A.1).

Reads top to bottom: config -> data -> model -> (resume) -> loop -> final weights.

- Data: windows of H + 1 rows that never cross an episode (terminal tails padded and masked), states
  and rewards normalised, the return-to-go of the rest of the episode over the task scale; 10% of
  episodes held out (shared with the IDM) for the bundle's evaluation.
- The loop (shared with the Decision Diffuser planner: :mod:`dawm_env.training.diffusion`). Checkpoints
  (``OUT/world_model_ckpt/``): model, EMA and Adam state as safetensors + JSON, written atomically every
  ``checkpoint_every`` steps. Rerunning the same command resumes and continues exactly as the uninterrupted
  run would.
- Multi-GPU / multi-process: launched by ``torchrun``, each rank samples its own batches, gradients
  are averaged by DDP (gloo on CPU, nccl on GPU); rank 0 writes checkpoints and logs.
- GPU: bf16 autocast.
- Quality vs wall-clock (``eval_every``): every so many steps the EMA model samples a fixed set of
  held-out windows; state MSE per horizon step and reward MAE go to TensorBoard and to
  ``OUT/quality_curve.json`` against the training wall-clock (evaluation time excluded, resumes included).

``dawm train world-model --dataset ID --out DIR [--preset cpu|paper] [--steps N] [--device D]``
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dawm_env.data.loading import load_dataset
from dawm_env.training.common import ModelRunConfig
from dawm_env.training.diffusion import DiffusionJob, start_run, train_diffusion
from dawm_env.world_model.config import WorldModelConfig
from dawm_env.world_model.data import WindowSource
from dawm_env.world_model.diffusion import GaussianDiffusion
from dawm_env.world_model.evaluation import evaluate_world_model, heldout_starts

WORLD_MODEL_FILE = "world_model"  # OUT/world_model.safetensors + OUT/world_model.json
CKPT_DIR = "world_model_ckpt"
QUALITY_CURVE_FILE = "quality_curve.json"


@dataclass
class WorldModelTrainConfig(ModelRunConfig):
    """How to train the world model (the model itself is described by :class:`WorldModelConfig`)."""

    preset: str = "cpu"
    """World-model preset: ``cpu`` or ``paper``."""
    log_every: int = 100
    """TensorBoard / progress-bar scalars every this many steps."""
    eval_every: Optional[int] = None
    """Evaluate the EMA model on held-out windows every this many steps (None: never)."""
    eval_windows: int = 512
    """Held-out windows per evaluation (a fixed random subset, the same every time)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        WorldModelConfig.preset(self.preset)  # an unknown preset fails here, listing the valid ones
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"--eval-every must be >= 1 (omit it to never evaluate), got {self.eval_every}")
        for name in ("log_every", "eval_windows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def train_world_model(cfg: WorldModelTrainConfig) -> Path:
    """Train (or resume) the world model; returns the output folder (the loop: :func:`train_diffusion`)."""
    rt = start_run(cfg)

    # --- config and data -----------------------------------------------------------------------
    model_cfg = WorldModelConfig.preset(cfg.preset)
    overrides = {"train_steps": cfg.steps, "batch_size": cfg.batch_size}
    model_cfg = replace(model_cfg, **{k: v for k, v in overrides.items() if v is not None})  # re-validated
    data = load_dataset(cfg.dataset, task=cfg.task)
    if not data.task:
        raise ValueError(f"{cfg.dataset} does not record its task; pass --task hopper, walker2d or halfcheetah")
    source = WindowSource.build(data, model_cfg.horizon, model_cfg.gamma, cfg.heldout_fraction, cfg.split_seed)
    arch = {k: v for k, v in model_cfg.to_dict().items() if k != "train_steps"}  # steps may grow on resume
    run_meta = {"architecture": arch, "model_config": model_cfg.to_dict(), "task": data.task,
                "bf16": cfg.use_bf16(rt.device),
                "dataset": cfg.dataset, "dataset_fingerprint": data.fingerprint(),
                "norm_stats": source.stats.to_dict(), "world_size": rt.world, "seed": cfg.seed,
                "heldout_fraction": cfg.heldout_fraction, "split_seed": cfg.split_seed}

    # --- model ----------------------------------------------------------------------------------
    torch.manual_seed(model_cfg.seed + cfg.seed)
    model = GaussianDiffusion.from_config(model_cfg, data.obs_dim, data.act_dim).to(rt.device)
    eval_starts = heldout_starts(source, cfg.eval_windows, np.random.default_rng(cfg.split_seed))
    job = DiffusionJob(
        name=WORLD_MODEL_FILE, label="world model", model=model, lr=model_cfg.lr, batch_size=model_cfg.batch_size,
        train_steps=model_cfg.train_steps, ema=(model_cfg.ema_decay, model_cfg.ema_every, model_cfg.ema_start),
        train_starts=source.train_starts, batch=source.batch,
        # clamp predicted x_0 to the data's range while sampling (3-step sampling needs it)
        x0_bounds=source.x0_bounds(), run_meta=run_meta,
        resume_keys=("architecture", "dataset_fingerprint", "seed", "world_size", "split_seed"),
        evaluate=lambda m: evaluate_world_model(m, source, eval_starts, source.stats.rew_std, seed=cfg.seed),
        eval_every=cfg.eval_every, curve_file=QUALITY_CURVE_FILE,
        curve_header={"dataset": cfg.dataset, "preset": cfg.preset, "eval_windows": len(eval_starts)},
        curve_scalars=("state_mse_mean", "reward_mae"))
    return train_diffusion(cfg, rt, job, log_every=cfg.log_every, progress=cfg.progress)
