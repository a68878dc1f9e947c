"""The one checkpoint format: a folder of safetensors tensors + JSON metadata, written atomically.

Never a pickle of our own objects: tensors go to ``*.safetensors``, everything else (configs, step
counters, RNG states, optimiser hyper-parameters) to JSON. A checkpoint folder is written under a
temporary name and renamed into place, so a kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

META_FILE = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint or bundle that is missing, corrupt or does not fit."""


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` to a safetensors file (contiguous CPU copies)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path),
              metadata=dict(metadata or {}))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or corrupt file raises :class:`CheckpointError`."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise CheckpointError(f"tensor file {path} does not exist")
    try:
        tensors = load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own SafetensorError for truncated / foreign files
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or inf")
    return tensors


def write_checkpoint_dir(path: Path, tensor_files: Mapping[str, Mapping[str, torch.Tensor]], meta: Mapping[str, Any]) -> None:
    """Atomically write a checkpoint folder: ``{name}.safetensors`` per entry plus ``meta.json``.

    Args:
        path: final folder; replaced as a whole if it exists.
        tensor_files: ``{file stem: {tensor name: tensor}}``.
        meta: JSON-serialisable metadata.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        for stem, tensors in tensor_files.items():
            save_tensors(tmp / f"{stem}.safetensors", tensors)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default) + "\n")
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json_object(path: Path) -> dict:
    """A JSON file holding an object (dawm's metadata files), with one clear error when it is not.

    Raises:
        CheckpointError: invalid JSON, not UTF-8, or a JSON value that is not an object.
    """
    try:
        obj = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a JSON {type(obj).__name__}, not an object")
    return obj


def read_meta(path: Path) -> dict:
    """``meta.json`` of a checkpoint folder, with a clear error when absent or malformed."""
    f = Path(path) / META_FILE
    if not f.is_file():
        raise CheckpointError(f"{path} is not a dawm checkpoint folder (no {META_FILE})")
    return read_json_object(f)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# --- optimiser and RNG state as tensors + JSON ------------------------------------------------------
def optimizer_state_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``opt.state_dict()`` into tensors (per-parameter state) and JSON (param groups, scalars)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{pid}.{key}"] = val
            else:
                scalars.setdefault(str(pid), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state_from_tensors(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: dict) -> None:
    """Inverse of :func:`optimizer_state_to_tensors`: load into ``opt``."""
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    for pid, sc in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --- resumable training state -----------------------------------------------------------------------
@dataclass
class TrainState:
    """Everything a training run needs to continue bit-exactly: modules, optimisers, step, extras.

    One home for the resumable state of every dawm training loop (world model, IDM, agents). The folder
    holds ``{name}.safetensors`` per module and per optimiser and ``meta.json`` with ``step``, the run's
    settings (``run``), the optimisers' JSON part and ``extra``.

    Attributes:
        modules: ``{name: module}``; state dicts saved as ``{name}.safetensors``.
        optimizers: ``{name: optimiser}``; tensors saved as ``{name}.safetensors``, the rest as JSON.
        step: optimiser steps done.
        extra: JSON-serialisable run state (evaluations, best validation loss, EMA counters...).
    """

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path, run_meta: Mapping[str, Any],
             extra_tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> None:
        """Atomically write the checkpoint folder ``path`` (the previous one survives a kill mid-write)."""
        files: dict[str, Mapping[str, torch.Tensor]] = {name: m.state_dict() for name, m in self.modules.items()}
        opt_meta = {}
        for name, opt in self.optimizers.items():
            files[name], opt_meta[name] = optimizer_state_to_tensors(opt)
        files.update(extra_tensors or {})
        write_checkpoint_dir(path, files, {"step": self.step, "run": dict(run_meta), "optimizers": opt_meta,
                                           "extra": self.extra})

    def load(self, path: Path, device: str | torch.device = "cpu", with_optimizers: bool = True) -> dict:
        """Restore modules (and optimisers) from ``path``; returns the checkpoint's metadata."""
        meta = read_meta(path)
        for name, m in self.modules.items():
            m.load_state_dict(load_tensors(Path(path) / f"{name}.safetensors", device))
        if with_optimizers:
            # checkpoints of dawm <= 0.1.0 world-model / IDM runs kept their one optimiser under "optimizer"
            opt_meta = meta.get("optimizers") or {"optimizer": meta.get("optimizer")}
            for name, opt in self.optimizers.items():
                if opt_meta.get(name) is None:
                    raise CheckpointError(f"{path}: no state for optimiser {name!r}; delete {path} to start afresh")
                optimizer_state_from_tensors(opt, load_tensors(Path(path) / f"{name}.safetensors", device),
                                             opt_meta[name])
        self.step = int(meta["step"])
        self.extra = dict(meta.get("extra", {}))
        return meta


def check_resumable(path: Path, run_meta: Mapping[str, Any], keys: Sequence[str], out_hint: Path | None = None) -> None:
    """Refuse to resume the checkpoint at ``path`` when any of the run settings ``keys`` differ.

    Raises:
        ValueError: naming the first differing setting and how to start afresh.
    """
    old = read_meta(path)["run"]
    for key in keys:
        if old.get(key) != run_meta.get(key):
            raise ValueError(f"{path} belongs to a run with a different {key!r} ({old.get(key)!r} vs "
                             f"{run_meta.get(key)!r}); use a new --out or delete {out_hint or path}")
