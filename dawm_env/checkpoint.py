"""The one checkpoint format: a folder of safetensors tensors + JSON metadata, written atomically.

Never a pickle of our own objects: tensors go to ``*.safetensors``, everything else (configs, step
counters, RNG states, optimiser hyper-parameters) to JSON. A checkpoint folder is written under a
temporary name (``.NAME.tmp-XXXXXXXX``), sealed with ``manifest.json`` (size and sha256 of every file) and
swapped into place: the live folder is renamed aside (``.NAME.old-XXXXXXXX``), the new one renamed in, the
old one removed. A kill at any point of that leaves a complete copy on disk; :func:`recover_checkpoint`
(called by every trainer before it looks for its checkpoint) finishes an interrupted swap and removes the
leftovers, so a resumed run never silently starts again from step 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

META_FILE = "meta.json"
#: Written last into a staged checkpoint folder: a staged copy without it (or failing it) is incomplete.
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "dawm-checkpoint-manifest"
_TMP, _OLD = ".tmp-", ".old-"


class CheckpointError(ValueError):
    """A checkpoint or bundle that is missing, corrupt or does not fit."""


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` to a safetensors file (contiguous CPU copies), with the mode ``open()`` gives.

    Serialised in memory and written by ``open()``: safetensors' own ``save_file`` creates its files 0600, and
    other users could not read a bundle or checkpoint made by one.
    """
    from safetensors.torch import save

    blob = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=dict(metadata or {}))
    Path(path).write_bytes(blob)


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
    with staged_checkpoint(path) as tmp:
        for stem, tensors in tensor_files.items():
            save_tensors(tmp / f"{stem}.safetensors", tensors)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default) + "\n")


# --- the swap and its recovery ----------------------------------------------------------------------
@contextlib.contextmanager
def staged_checkpoint(path: Path) -> Iterator[Path]:
    """A fresh hidden folder beside ``path`` to write a checkpoint into; on a clean exit it replaces ``path``.

    The one way dawm replaces a checkpoint folder (TrainState, behaviour SAC): the staged folder is sealed with
    :data:`MANIFEST_FILE`, the live ``path`` renamed aside, the staged one renamed in, then the old copy and any
    leftovers of earlier interrupted swaps are removed. An exception inside the block removes the staged folder
    and leaves ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP}{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        _write_manifest(tmp)
        old = path.with_name(f".{path.name}{_OLD}{uuid.uuid4().hex[:8]}")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except BaseException:
        # interrupted between the two renames, the sealed copy is the newest checkpoint: keep it for recovery
        if path.exists() or not (tmp / MANIFEST_FILE).is_file():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    for leftover in _leftovers(path):
        shutil.rmtree(leftover, ignore_errors=True)


def recover_checkpoint(path: Path) -> bool:
    """Finish a swap that a kill interrupted and remove its leftovers; whether a checkpoint is at ``path`` now.

    Call before looking for a checkpoint to resume, only from the process that owns (writes) it. With ``path``
    present, the leftovers beside it (a staged copy killed mid-write, an old copy killed before its removal) are
    removed. With ``path`` missing, the newest complete leftover is renamed into place: a sealed staged copy
    (its manifest checks out) before an old copy (it was live, so complete; its manifest, or for folders of
    older dawm versions its JSON and safetensors files, must check out).
    """
    path = Path(path)
    if not path.exists():
        best = _newest_complete(path)
        if best is not None:
            best.rename(path)
            log.warning("finished the interrupted checkpoint swap of %s (from %s)", path, best.name)
    for leftover in _leftovers(path):
        shutil.rmtree(leftover, ignore_errors=True)
    return path.exists()


def readable_checkpoint(path: Path) -> Optional[Path]:
    """The folder to read the checkpoint ``path`` from, changing nothing on disk (readers that do not own it).

    ``path`` itself when present, else the copy :func:`recover_checkpoint` would put in its place, else None.
    """
    path = Path(path)
    return path if path.exists() else _newest_complete(path)


def checkpoint_is_complete(folder: Path, require_manifest: bool = False) -> bool:
    """Whether ``folder`` holds a whole checkpoint.

    With a :data:`MANIFEST_FILE`: every file it lists has the recorded size and sha256. Without one (folders of
    dawm versions before the manifest): False when ``require_manifest``, else every ``*.json`` parses, every
    ``*.safetensors`` is as long as its header says and every ``*.npz`` passes its CRC check.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return False
    manifest = folder / MANIFEST_FILE
    try:
        if manifest.is_file():
            spec = json.loads(manifest.read_text())
            if spec.get("format") != MANIFEST_FORMAT:
                return False
            return all((folder / name).is_file() and (folder / name).stat().st_size == rec["bytes"]
                       and _sha256(folder / name) == rec["sha256"] for name, rec in spec["files"].items())
        if require_manifest or not (folder / META_FILE).is_file():
            return False
        for f in folder.iterdir():
            if f.suffix == ".json":
                json.loads(f.read_text())
            elif f.suffix == ".safetensors" and not _safetensors_intact(f):
                return False
            elif f.suffix == ".npz":
                with zipfile.ZipFile(f) as z:
                    if z.testzip() is not None:
                        return False
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile):
        return False  # unreadable or malformed: not a copy to resume from


def _leftovers(path: Path) -> list[Path]:
    """Staged (``.NAME.tmp-*``) and old (``.NAME.old-*``) copies of ``path``, and the fixed-name ones
    (``NAME.tmp`` / ``NAME.old``) of behaviour SAC runs of earlier dawm versions."""
    if not path.parent.is_dir():
        return []
    names = (f".{path.name}{_TMP}", f".{path.name}{_OLD}", f"{path.name}.tmp", f"{path.name}.old")
    return sorted(p for p in path.parent.iterdir() if p.is_dir() and p.name.startswith(names)
                  and (p.name.startswith(names[:2]) or p.name in names[2:]))


def _newest_complete(path: Path) -> Optional[Path]:
    """The leftover of ``path`` to resume from: a swap seals its staged copy while the old one is still live, so
    staged copies come first (only sealed ones count), then old ones; the most recent first within each kind."""
    def staged(p: Path) -> bool:
        return p.name.startswith(f".{path.name}{_TMP}") or p.name == f"{path.name}.tmp"

    for cand in sorted(_leftovers(path), key=lambda p: (not staged(p), -p.stat().st_mtime_ns)):
        if checkpoint_is_complete(cand, require_manifest=staged(cand)):
            return cand
    return None


def _write_manifest(folder: Path) -> None:
    files = {f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)}
             for f in sorted(folder.iterdir()) if f.is_file() and f.name != MANIFEST_FILE}
    (folder / MANIFEST_FILE).write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1) + "\n")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _safetensors_intact(path: Path) -> bool:
    """A safetensors file exactly as long as its header says (a truncated write is shorter)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return False
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return False
        header = json.loads(fh.read(n))
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    return size == 8 + n + max(ends, default=0)


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
