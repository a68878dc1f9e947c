"""Assemble a bundle from its two trained components: seed pairs, held-out evaluation, pessimism calibration.

Called when the second of the two training commands (world model, IDM) finishes into the same folder.
:func:`pack_bundle` makes a half-precision copy for shipping (weights stored in float16, loaded as float32).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dawm_env.checkpoint import CheckpointError, save_tensors
from dawm_env.data.loading import load_dataset
from dawm_env.data.records import OfflineDataset
from dawm_env.data.windows import returns_to_go
from dawm_env.paths import atomic_write_json, claim_new_dir
from dawm_env.world_model.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, Bundle, _read_json, _require
from dawm_env.world_model.data import heldout_episodes
from dawm_env.world_model.evaluation import evaluate_bundle
from dawm_env.world_model.uncertainty import calibrate_pessimism


def assemble_bundle(out: Path, num_seed_pairs: int = 4096, eval_windows: int = 1024, seed: int = 0,
                    calibration_transitions: int = 20_000) -> Optional[Path]:
    """Turn a folder holding both trained components into a bundle: seeds, evaluation, ``bundle.json``,
    ``pessimism.json``.

    Does nothing (returns None) while one component is missing.

    Raises:
        CheckpointError: when the two components were trained on different data or tasks.
    """
    out = Path(out)
    if not ((out / "world_model.json").is_file() and (out / "idm.json").is_file()):
        return None
    wm_meta, idm_meta = _read_json(out / "world_model.json"), _read_json(out / "idm.json")
    _require(wm_meta, ("task", "dataset", "dataset_fingerprint", "model_config", "norm_stats", "heldout_fraction",
                       "split_seed", "steps"), out / "world_model.json")
    _require(idm_meta, ("task", "dataset_fingerprint", "model_config", "steps", "best_val_nll", "best_step"),
             out / "idm.json")
    for key in ("task", "dataset_fingerprint"):
        if wm_meta[key] != idm_meta[key]:
            raise CheckpointError(f"{out}: world model and IDM were trained with different {key} "
                                  f"({wm_meta[key]!r} vs {idm_meta[key]!r})")

    data = load_dataset(wm_meta["dataset"])
    if data.fingerprint() != wm_meta["dataset_fingerprint"]:
        raise CheckpointError(f"dataset {wm_meta['dataset']} changed since the world model was trained on it")
    rng = np.random.default_rng(seed)
    idx = rng.choice(data.num_transitions, size=min(num_seed_pairs, data.num_transitions), replace=False)
    rtg = returns_to_go(data, wm_meta["model_config"]["gamma"])
    save_tensors(out / ".seeds.safetensors.tmp", {
        "states": torch.from_numpy(data.observations[idx]), "actions": torch.from_numpy(data.actions[idx]),
        "rtg": torch.from_numpy(rtg[idx]), "index": torch.from_numpy(idx.astype(np.int64))})
    os.replace(out / ".seeds.safetensors.tmp", out / "seeds.safetensors")
    meta = {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "task": wm_meta["task"], "dataset": wm_meta["dataset"],
        "dataset_fingerprint": wm_meta["dataset_fingerprint"], "world_model_config": wm_meta["model_config"],
        "idm_config": idm_meta["model_config"], "norm_stats": wm_meta["norm_stats"],
        "heldout_fraction": wm_meta["heldout_fraction"], "split_seed": wm_meta["split_seed"],
        "training": {"world_model_steps": wm_meta["steps"], "idm_steps": idm_meta["steps"],
                     "idm_best_val_nll": idm_meta["best_val_nll"], "idm_best_step": idm_meta["best_step"]},
    }
    atomic_write_json(out / "bundle.json", meta)  # loadable from here on

    bundle = Bundle.load(out)
    meta["metrics"] = evaluate_bundle(bundle, data, n_windows=eval_windows, seed=seed)
    atomic_write_json(out / "bundle.json", meta)
    write_calibration(bundle, data, transitions=calibration_transitions, seed=seed)
    return out


def write_calibration(bundle: Bundle, data: OfflineDataset, transitions: int = 20_000, seed: int = 0) -> Path:
    """Measure the dream env's pessimism defaults and write ``pessimism.json`` into the bundle folder.

    On the bundle's own training data only its held-out episodes are used (the same ones as its metrics);
    other data of the task is used whole.
    """
    episodes = None
    if data.fingerprint() == bundle.meta.get("dataset_fingerprint"):
        held = heldout_episodes(data, float(bundle.meta["heldout_fraction"]), int(bundle.meta["split_seed"]))
        episodes = held if held.any() else None
    calibration = calibrate_pessimism(bundle, data, transitions=transitions, seed=seed, episodes=episodes)
    return calibration.write(bundle.path)


#: Storage dtypes :func:`pack_bundle` offers (float16 keeps 3 more mantissa bits than bfloat16 at these magnitudes).
PACK_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def pack_bundle(src: Path, out: Path, dtype: str = "float16", data: Optional[OfflineDataset] = None,
                eval_windows: int = 1024, calibration_transitions: int = 20_000, seed: int = 0) -> Path:
    """Copy bundle ``src`` to the new folder ``out`` with its networks' parameters stored in ``dtype``.

    Only parameters are cast; buffers (the sampling clamp) and the seed pairs stay float32, and loading casts
    the weights back to float32 (``load_state_dict`` copies into the float32 modules), so the packed bundle
    runs exactly like a float32 one whose weights were rounded. What rounding costs is measured: the original
    and the packed bundle are evaluated on the same windows of ``data`` with the same noise, both recorded under
    ``packing`` in ``bundle.json``. On the bundle's own training data (its held-out episodes) the packed
    metrics also replace ``metrics`` (the originals kept as ``metrics_float32``); on other data of the task
    ``metrics`` and the pessimism calibration stay the original held-out records (the packed columns show what
    rounding changes); on the training data the calibration is measured again on the packed bundle.

    Args:
        src: a bundle name or folder.
        out: the folder to create; it must not exist (it appears complete or not at all).
        dtype: ``"float16"`` or ``"bfloat16"``.
        data: real data of the bundle's task (default: its training data, loaded by the id in ``bundle.json``).

    Raises:
        ValueError: an unknown dtype or data of another task; FileExistsError: ``out`` exists.
    """
    if dtype not in PACK_DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(PACK_DTYPES)}, got {dtype!r}")
    bundle = Bundle.load(src)
    if data is None:
        data = load_dataset(bundle.meta["dataset"], task=bundle.task.name)
    if data.task and data.task != bundle.task.name:
        raise ValueError(f"bundle {bundle.path} is for {bundle.task.name}, the data is {data.task} data")
    own_data = data.fingerprint() == bundle.meta["dataset_fingerprint"]
    out = Path(out)
    with claim_new_dir(out) as stage:
        networks = {"world_model": bundle.world_model, "idm": bundle.idm}
        for f in bundle.path.iterdir():  # configs, seeds, calibration; copyfile: the umask's mode, not the source's
            if f.is_file() and f.suffix in (".json", ".safetensors") and f.stem not in networks:
                shutil.copyfile(f, stage / f.name)
        for stem, module in networks.items():  # the loaded state is the file's (strict load)
            params = {name for name, _ in module.named_parameters()}
            save_tensors(stage / f"{stem}.safetensors",
                         {k: v.to(PACK_DTYPES[dtype]) if k in params else v for k, v in module.state_dict().items()})
        packed = Bundle.load(stage)
        measured = {name: evaluate_bundle(b, data, n_windows=eval_windows, seed=seed)
                    for name, b in (("float32", bundle), (dtype, packed))}
        meta = dict(bundle.meta)
        meta["storage_dtype"] = dtype
        meta["packing"] = {"dtype": dtype, "dataset": data.source or bundle.meta["dataset"],
                           "dataset_fingerprint": data.fingerprint(), "training_data": own_data,
                           "float32": measured["float32"], "packed": measured[dtype]}
        if own_data:
            meta["metrics_float32"] = bundle.meta.get("metrics")
            meta["metrics"] = measured[dtype]
        atomic_write_json(stage / "bundle.json", meta)
        if own_data:  # else the copied calibration stays: it was measured on the held-out episodes
            write_calibration(Bundle.load(stage), data, transitions=calibration_transitions, seed=seed)
    return out
