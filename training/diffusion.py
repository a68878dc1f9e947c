"""The one training loop of dawm's diffusion models: the world model and the Decision Diffuser planner.

Both are a :class:`~dawm_env.world_model.diffusion.GaussianDiffusion` trained on episode-safe windows with
the masked noise-prediction loss; they differ in their window layout, their data and their names, which
a :class:`DiffusionJob` carries. What the loop does for both:

- progress bar, TensorBoard scalars (``OUT/tensorboard/<name>``), optional held-out evaluation every
  ``eval_every`` steps into a quality-vs-wall-clock curve (``OUT/<curve_file>``, evaluation time excluded);
- Adam + EMA (the EMA weights are the final weights), bf16 autocast on CUDA (on CPU too with ``bf16=True``);
- checkpoints (``OUT/<name>_ckpt/``: model, EMA, Adam state as safetensors + JSON, written atomically every
  ``checkpoint_every`` steps); rerunning resumes and continues exactly as the uninterrupted run would: the
  randomness of every step is keyed by ``(seed, rank, step)`` (:func:`dawm_env.runtime.step_rngs`);
- several processes (``torchrun``): DDP (gloo on CPU, nccl on GPU), rank 0 writes checkpoints and logs;
- the final EMA weights as ``OUT/<name>.safetensors`` + ``OUT/<name>.json`` (:func:`write_component`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from dawm_env.checkpoint import TrainState, check_resumable, recover_checkpoint
from dawm_env.paths import atomic_write_json, check_writable_dir
from dawm_env.runtime import setup_torch, step_rngs
from dawm_env.training.common import ModelRunConfig
from dawm_env.world_model.bundle import write_component
from dawm_env.world_model.diffusion import EMA, GaussianDiffusion

log = logging.getLogger(__name__)

#: ``starts (B,)`` -> ``(x0 (B, T, D), rtg (B,), valid (B, T))``: the normalised training windows at ``starts``.
BatchFn = Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class DiffusionRuntime:
    """Where and how a diffusion run executes (from :func:`start_run`)."""

    device: torch.device
    """This process's torch device."""
    out: Path
    """The output folder (checked writable)."""
    rank: int
    """This process's rank (0 without torchrun)."""
    world: int
    """Number of processes."""
    local_rank: int
    """Rank on this machine (the CUDA device index under torchrun)."""


def start_run(cfg: ModelRunConfig) -> DiffusionRuntime:
    """Device, threads, output folder and (under torchrun) the process group, before any data is loaded."""
    rank, world, local_rank = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1),
                                                                        ("LOCAL_RANK", 0)))
    device = setup_torch(cfg.device, cfg.threads)
    out = check_writable_dir(cfg.out, "--out")  # before loading data and training, not at the first checkpoint
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DiffusionRuntime(device=device, out=out, rank=rank, world=world, local_rank=local_rank)


@dataclass
class DiffusionJob:
    """What differs between the diffusion models dawm trains (everything else is :func:`train_diffusion`)."""

    name: str
    """File stem of the final weights (``OUT/<name>.safetensors``), of the checkpoint folder
    (``OUT/<name>_ckpt``), of the TensorBoard folder and of the loss scalars."""
    label: str
    """Progress-bar label."""
    model: GaussianDiffusion
    """The freshly initialised model on the run's device (built under the run's seed)."""
    lr: float
    """Adam learning rate."""
    batch_size: int
    """Windows per batch and process."""
    train_steps: int
    """Total optimiser steps."""
    ema: tuple[float, int, int]
    """``(decay, update_every, start_step)`` of the :class:`EMA`."""
    train_starts: np.ndarray
    """``(N,)`` window starts to draw batches from."""
    batch: BatchFn
    """Normalised windows at given starts."""
    x0_bounds: tuple[torch.Tensor, torch.Tensor]
    """``(low (D,), high (D,))`` clamp range of the predicted ``x_0`` while sampling (set after a resume too:
    it derives from the data and is never trained)."""
    run_meta: dict[str, Any]
    """Settings stored in every checkpoint and in ``OUT/<name>.json``."""
    resume_keys: tuple[str, ...]
    """Keys of ``run_meta`` a checkpoint must match to be resumed."""
    evaluate: Optional[Callable[[GaussianDiffusion], dict]] = None
    """Held-out evaluation of the EMA model (metrics dict); None = never evaluate."""
    eval_every: Optional[int] = None
    """Evaluate every this many steps (and at the end); None = never."""
    curve_file: str = "quality_curve.json"
    """File (in ``OUT``) of the quality-vs-wall-clock curve."""
    curve_header: dict[str, Any] = field(default_factory=dict)
    """Keys written beside ``curve`` in the curve file."""
    curve_scalars: tuple[str, ...] = ()
    """Metrics of each evaluation also logged to TensorBoard as ``heldout/<key>``."""


def train_diffusion(cfg: ModelRunConfig, rt: DiffusionRuntime, job: DiffusionJob, log_every: int = 100,
                    progress: bool = True) -> Path:
    """Train (or resume) ``job.model``; writes the final EMA weights and returns the output folder."""
    from tqdm.auto import tqdm

    out, device, rank, world = rt.out, rt.device, rt.rank, rt.world
    model = job.model
    ema = EMA(model, *job.ema)
    opt = torch.optim.Adam(model.parameters(), lr=job.lr)
    state = TrainState(modules={"model": model, "ema": ema.model}, optimizers={"optimizer": opt})
    ckpt = out / f"{job.name}_ckpt"
    if rank == 0:  # a swap cut by a kill is finished first (by the rank that writes checkpoints), then all read
        recover_checkpoint(ckpt)
    if world > 1:
        torch.distributed.barrier()
    if ckpt.exists():
        check_resumable(ckpt, job.run_meta, job.resume_keys)
        state.load(ckpt, device)
        ema.num_steps = int(state.extra["ema_num_steps"])
        log.info("resumed from %s at step %d", ckpt, state.step)
    for m in (model, ema.model):
        m.set_x0_bounds(*job.x0_bounds)
    train_module: torch.nn.Module = model
    if world > 1:
        train_module = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.local_rank] if device.type == "cuda" else None)
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard" / job.name))

    # --- periodic held-out evaluation (quality vs wall-clock) -------------------------------------
    curve: list[dict] = list(state.extra.get("quality_curve", []))
    train_seconds = float(state.extra.get("train_seconds", 0.0))

    def evaluate_now() -> None:
        metrics = job.evaluate(ema.model)
        curve.append({"step": state.step, "train_seconds": round(train_seconds, 2), **metrics})
        for key in job.curve_scalars:
            writer.add_scalar(f"heldout/{key}", metrics[key], state.step)
        atomic_write_json(out / job.curve_file, {**job.curve_header, "curve": curve})

    # --- loop -----------------------------------------------------------------------------------
    gen = torch.Generator(device=device)
    use_bf16 = cfg.use_bf16(device)
    steps, batch_size = job.train_steps, job.batch_size
    bar = tqdm(total=steps, initial=state.step, desc=job.label, unit="step", disable=not (progress and rank == 0))
    t_last, step_last, loss_sum, loss_n = time.perf_counter(), state.step, 0.0, 0
    model.train()
    t_step = time.perf_counter()
    while state.step < steps:
        rng = step_rngs(cfg.seed, rank, state.step, gen)
        starts = job.train_starts[rng.integers(0, len(job.train_starts), batch_size)]
        x0, rtg, valid = (t.to(device, non_blocking=True) for t in job.batch(starts))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = train_module(x0, rtg, valid, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.step(model)
        state.step += 1
        loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
        bar.update(1)
        if state.step % log_every == 0 and writer is not None:
            now = time.perf_counter()
            sps = (state.step - step_last) * batch_size * world / (now - t_last)
            writer.add_scalar(f"{job.name}/loss", loss_sum / loss_n, state.step)
            writer.add_scalar(f"{job.name}/samples_per_s", sps, state.step)
            bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}", samples_s=f"{sps:.0f}")
            t_last, step_last, loss_sum, loss_n = now, state.step, 0.0, 0
        train_seconds += time.perf_counter() - t_step
        if (rank == 0 and job.evaluate is not None and job.eval_every
                and (state.step % job.eval_every == 0 or state.step == steps)):
            if not curve or curve[-1]["step"] != state.step:
                evaluate_now()
        if rank == 0 and (state.step % cfg.checkpoint_every == 0 or state.step == steps):
            state.extra.update(ema_num_steps=ema.num_steps, train_seconds=train_seconds, quality_curve=curve)
            state.save(ckpt, job.run_meta)
        t_step = time.perf_counter()
    bar.close()

    # --- final EMA weights ----------------------------------------------------------------------
    if rank == 0:
        write_component(out, job.name, ema.model.state_dict(), {**job.run_meta, "steps": state.step})
        writer.close()
    if world > 1:
        torch.distributed.barrier()
    return out
