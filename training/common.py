"""Options shared by the world-model and IDM training runs (their resumable state: :class:`dawm_env.checkpoint.TrainState`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from dawm_env.tasks import get_task


@dataclass
class ModelRunConfig:
    """Options every model-training run shares (world model, IDM)."""

    dataset: str
    """Training data: a Minari id, D4RL hdf5 or qlearning npz."""
    out: str
    """Output folder; the world model and the IDM trained into one folder form a bundle."""
    steps: Optional[int] = None
    """Optimiser steps; default: the model config's ``train_steps``."""
    batch_size: Optional[int] = None
    """Override the model config's batch size (per process)."""
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``cuda:N`` (under torchrun each rank takes ``cuda:LOCAL_RANK``)."""
    seed: int = 0
    """Seed of initialisation, batches and noise / dropout."""
    heldout_fraction: float = 0.1
    """Fraction of episodes held out from both models: IDM validation and the bundle's evaluation."""
    split_seed: int = 0
    """Seed of the held-out episode split (the same for both models of a bundle)."""
    checkpoint_every: int = 1000
    """Write a resumable checkpoint every this many steps."""
    task: Optional[str] = None
    """Task of ``dataset`` (hopper, walker2d, halfcheetah): needed only for a file that does not record it (a D4RL
    hdf5, a plain qlearning npz); must agree with the data when it does."""
    threads: Optional[int] = None
    """torch CPU threads (None: the process's setting; under torchrun the cores split across local processes)."""
    progress: bool = True
    """Show a progress bar."""
    bf16: Optional[bool] = None
    """bfloat16 autocast of the training forward passes: None = on CUDA only; True = on every device (fast on
    CPUs with AVX512-BF16 / AMX); False = float32. Weights, optimiser state and checkpoints stay float32."""

    def use_bf16(self, device: torch.device) -> bool:
        """Whether this run trains under bfloat16 autocast on ``device``."""
        return device.type == "cuda" if self.bf16 is None else bool(self.bf16)

    def __post_init__(self) -> None:
        # degenerate values would train nothing (or divide by zero) and still write a bundle component
        for flag, value in (("--steps", self.steps), ("--batch-size", self.batch_size), ("--threads", self.threads)):
            if value is not None and int(value) < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        if int(self.checkpoint_every) < 1:
            raise ValueError(f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must lie in [0, 1), got {self.heldout_fraction}")
        for flag, value in (("--dataset", self.dataset), ("--out", self.out)):
            if not str(value).strip():
                raise ValueError(f"{flag} is empty")
        if self.task is not None:
            self.task = get_task(self.task).name  # an unknown task fails here, naming the known ones
