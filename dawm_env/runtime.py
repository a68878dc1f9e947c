"""Device / thread setup and the per-step RNG keys that every dawm training loop shares."""

from __future__ import annotations

import os

import numpy as np
import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`, checked: the one device check of every dawm command.

    Raises:
        ValueError: a string torch does not read as a device, or a CUDA device on a machine without CUDA
            (or without that many GPUs); the message says to use ``--device cpu``.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             "use cuda:0 .. cuda:N-1, or --device cpu")
    return dev


#: Environment variable giving the torch CPU thread count of every ``dawm`` command that has no ``--threads``.
THREADS_ENV = "DAWM_THREADS"


def cli_threads(threads: int | None) -> int | None:
    """The thread count a command runs with: ``--threads``, else ``$DAWM_THREADS``, else None (torch's default).

    Why not a fixed cap such as ``min(4, cores)``: the best count depends on what else runs, which only the
    user knows (every core on an idle machine, one on a busy one), so the user says it once, for every command
    and experiment stage, with the variable. Why not a count derived from the current load: it would change
    from run to run, and with it the order of CPU float reductions, so that a resumed run could differ from
    the uninterrupted one. Only commands call this: in the Python API ``threads=None`` leaves the process's
    setting (the caller's own ``torch.set_num_threads``) alone.

    Raises:
        ValueError: ``$DAWM_THREADS`` that is not an integer >= 1 (``--threads`` is checked by :func:`setup_torch`).
    """
    if threads is not None:
        return threads
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{THREADS_ENV}={text!r} is not a thread count; set it to an integer >= 1 or unset it")
    return value


def setup_torch(device: str, threads: int | None) -> torch.device:
    """Pick the device and, on CPU, the number of intra-op threads.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        threads: torch CPU threads; None leaves the process's setting alone (the caller's own
            ``torch.set_num_threads`` stands), except under torchrun, where the cores are split between the
            local processes so that they do not oversubscribe them.

    Raises:
        ValueError: a bad device or CUDA asked for but not available (:func:`resolve_device`); ``threads`` below 1.
    """
    dev = resolve_device(device)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if dev.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        if threads is not None:
            torch.set_num_threads(threads)
        elif local > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return dev


def step_rngs(seed: int, rank: int, step: int, gen: torch.Generator) -> np.random.Generator:
    """Randomness of one training step, keyed by ``(seed, rank, step)``.

    Batch indices come from the returned numpy generator; noise, diffusion steps and dropout masks from
    ``gen``, reseeded here. No RNG state has to be checkpointed: a resumed run draws exactly what the
    uninterrupted run drew, for any number of processes.
    """
    gen.manual_seed((seed * 1_000_003 + rank) * 1_000_000_007 + step)
    return np.random.default_rng([seed, rank, step])


def _cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of ``/proc/cpuinfo``; None where it cannot be read (e.g. off Linux)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith(field)), None)
    except OSError:
        return None


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where it cannot be read, e.g. off Linux)."""
    return frozenset((_cpuinfo("flags") or "").split())


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` runs bfloat16 matmuls natively, i.e. bf16 autocast is worth it.

    CUDA: the GPU supports bf16. CPU: AVX512-BF16 or AMX (``/proc/cpuinfo``; False where unknown). Without them
    bf16 autocast on a CPU is emulated and slower than float32 (on this project's AVX512 Xeon without BF16, 2026-12-03:
    a batched (5, 256, 256) matmul 4.8x slower, a world-model training step 1.8x slower).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def machine_info(device: str = "cpu") -> dict:
    """What a timing was measured on: CPU model, logical cores, torch threads, device (and GPU name)."""
    import os
    import platform

    cpu = _cpuinfo("model name") or platform.processor() or platform.machine()
    info = {"cpu": cpu, "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "native_bf16": native_bf16(device),
            "device": str(device), "torch": torch.__version__, "platform": platform.platform()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
