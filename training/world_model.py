"""Train the DAWM diffusion world model (paper Sec. 3.1, App. A.1).

Reads top to bottom: config -> data -> model -> (resume) -> loop -> final weights.

- Data: windows of H + 1 rows that never cross an episode (terminal tails padded and masked), states
  and rewards normalised, the return-to-go of the rest of the episode over the task scale; 10% of
  episodes held out (shared with the IDM) for the bundle's evaluation.
- Checkpoints (``OUT/world_model_ckpt/``): model, EMA, Adam state and both RNG states as safetensors +
  JSON, written atomically every ``checkpoint_every`` steps. Rerunning the same command resumes and
  continues exactly as the uninterrupted run would.
- Multi-GPU / multi-process: launched by ``torchrun``, each rank samples its own batches, gradients
  are averaged by DDP (gloo on CPU, nccl on GPU); rank 0 writes checkpoints and logs.
- GPU: bf16 autocast.
- Quality vs wall-clock (``eval_every``): every so many steps the EMA model samples a fixed set of
  held-out windows; state MSE per horizon step and reward MAE go to TensorBoard and to
  ``OUT/quality_curve.json`` against the training wall-clock (evaluation time excluded, resumes included).

``dawm train world-model --dataset ID --out DIR [--preset cpu|paper] [--steps N] [--device D]``
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dawm_env.checkpoint import TrainState, check_resumable, recover_checkpoint
from dawm_env.data.loading import load_dataset
from dawm_env.paths import atomic_write_json, check_writable_dir
from dawm_env.runtime import setup_torch, step_rngs
from dawm_env.training.common import ModelRunConfig
from dawm_env.world_model.bundle import write_component
from dawm_env.world_model.config import WorldModelConfig
from dawm_env.world_model.data import WindowSource
from dawm_env.world_model.diffusion import EMA, GaussianDiffusion
from dawm_env.world_model.evaluation import evaluate_world_model, heldout_starts

log = logging.getLogger(__name__)

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


def _dist_info() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def train_world_model(cfg: WorldModelTrainConfig) -> Path:
    """Train (or resume) the world model; returns the output folder."""
    rank, world, local_rank = _dist_info()
    device = setup_torch(cfg.device, cfg.threads)
    out = check_writable_dir(cfg.out, "--out")  # before loading data and training, not at the first checkpoint
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")

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
                "dataset": cfg.dataset, "dataset_fingerprint": data.fingerprint(),
                "norm_stats": source.stats.to_dict(), "world_size": world, "seed": cfg.seed,
                "heldout_fraction": cfg.heldout_fraction, "split_seed": cfg.split_seed}

    # --- model, EMA, optimiser, resume ----------------------------------------------------------
    torch.manual_seed(model_cfg.seed + cfg.seed)
    model = GaussianDiffusion.from_config(model_cfg, data.obs_dim, data.act_dim).to(device)
    ema = EMA(model, model_cfg.ema_decay, model_cfg.ema_every, model_cfg.ema_start)
    opt = torch.optim.Adam(model.parameters(), lr=model_cfg.lr)
    state = TrainState(modules={"model": model, "ema": ema.model}, optimizers={"optimizer": opt})
    ckpt = out / CKPT_DIR
    if rank == 0:  # a swap cut by a kill is finished first (by the rank that writes checkpoints), then all read
        recover_checkpoint(ckpt)
    if world > 1:
        torch.distributed.barrier()
    if ckpt.exists():
        check_resumable(ckpt, run_meta, ("architecture", "dataset_fingerprint", "seed", "world_size", "split_seed"))
        state.load(ckpt, device)
        ema.num_steps = int(state.extra["ema_num_steps"])
        log.info("resumed from %s at step %d", ckpt, state.step)
    # clamp predicted x_0 to the data's range while sampling (3-step sampling needs it); set after a resume
    # as well: the bounds derive from the data, are never trained, and so stay right for older checkpoints
    bounds = source.x0_bounds()
    for m in (model, ema.model):
        m.set_x0_bounds(*bounds)
    train_module: torch.nn.Module = model
    if world > 1:
        train_module = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None)
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard" / "world_model"))

    # --- periodic held-out evaluation (quality vs wall-clock) -------------------------------------
    curve: list[dict] = list(state.extra.get("quality_curve", []))
    train_seconds = float(state.extra.get("train_seconds", 0.0))
    eval_starts = heldout_starts(source, cfg.eval_windows, np.random.default_rng(cfg.split_seed))

    def evaluate_now() -> None:
        metrics = evaluate_world_model(ema.model, source, eval_starts, source.stats.rew_std, seed=cfg.seed)
        curve.append({"step": state.step, "train_seconds": round(train_seconds, 2), **metrics})
        for key in ("state_mse_mean", "reward_mae"):
            writer.add_scalar(f"heldout/{key}", metrics[key], state.step)
        atomic_write_json(out / QUALITY_CURVE_FILE, {"dataset": cfg.dataset, "preset": cfg.preset,
                                                     "eval_windows": len(eval_starts), "curve": curve})

    # --- loop -----------------------------------------------------------------------------------
    from tqdm.auto import tqdm

    gen = torch.Generator(device=device)
    use_bf16 = device.type == "cuda"
    bar = tqdm(total=model_cfg.train_steps, initial=state.step, desc="world model", unit="step",
               disable=not (cfg.progress and rank == 0))
    t_last, step_last, loss_sum, loss_n = time.perf_counter(), state.step, 0.0, 0
    model.train()
    t_step = time.perf_counter()
    while state.step < model_cfg.train_steps:
        rng = step_rngs(cfg.seed, rank, state.step, gen)
        starts = source.train_starts[rng.integers(0, len(source.train_starts), model_cfg.batch_size)]
        x0, rtg, valid = (t.to(device, non_blocking=True) for t in source.batch(starts))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = train_module(x0, rtg, valid, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.step(model)
        state.step += 1
        loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
        bar.update(1)
        if state.step % cfg.log_every == 0 and writer is not None:
            now = time.perf_counter()
            sps = (state.step - step_last) * model_cfg.batch_size * world / (now - t_last)
            writer.add_scalar("world_model/loss", loss_sum / loss_n, state.step)
            writer.add_scalar("world_model/samples_per_s", sps, state.step)
            bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}", samples_s=f"{sps:.0f}")
            t_last, step_last, loss_sum, loss_n = now, state.step, 0.0, 0
        train_seconds += time.perf_counter() - t_step
        if rank == 0 and cfg.eval_every and (state.step % cfg.eval_every == 0 or state.step == model_cfg.train_steps):
            if not curve or curve[-1]["step"] != state.step:
                evaluate_now()
        if rank == 0 and (state.step % cfg.checkpoint_every == 0 or state.step == model_cfg.train_steps):
            state.extra.update(ema_num_steps=ema.num_steps, train_seconds=train_seconds, quality_curve=curve)
            state.save(ckpt, run_meta)
        t_step = time.perf_counter()
    bar.close()

    # --- final EMA weights ----------------------------------------------------------------------
    if rank == 0:

        write_component(out, WORLD_MODEL_FILE, ema.model.state_dict(), {**run_meta, "steps": state.step})
        writer.close()
    if world > 1:
        torch.distributed.barrier()
    return out
