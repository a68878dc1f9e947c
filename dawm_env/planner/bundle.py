"""The planner bundle: one folder holding a Decision Diffuser planner (never a pickle).

Layout::

    dd.safetensors     EMA weights of the states-only diffusion model (``dawm train dd``)
    dd.json            its config, task, dataset id + fingerprint, normalisation stats, held-out split
    idm.safetensors    best-validation IDM weights (``dawm train idm``, into the same folder)
    idm.json           its config, validation history
    planner.json       format, task, dataset, both configs, norm stats, held-out evaluation: written when the
                       second of the two parts finishes; the bundle is loadable from then on

A planner bundle is addressed by folder or by name, in the same places as world-model bundles:
``dawm_env/bundles/<name>`` or ``$DAWM_HOME/bundles/<name>``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from dawm_env.checkpoint import CheckpointError
from dawm_env.data.loading import load_dataset
from dawm_env.paths import atomic_write_json, file_sha256
from dawm_env.planner.config import DDConfig
from dawm_env.planner.data import plan_source
from dawm_env.planner.evaluation import evaluate_plans
from dawm_env.planner.model import DecisionDiffuser, build_dd_model
from dawm_env.runtime import resolve_device
from dawm_env.tasks import TaskSpec
from dawm_env.world_model.bundle import (
    _check_fits_weights,
    _read_json,
    _require,
    bundle_roots,
    find_bundle_folder,
    load_weights,
    parse_bundle_parts,
)
from dawm_env.world_model.evaluation import heldout_starts
from dawm_env.world_model.idm import InverseDynamics

PLANNER_FORMAT = "dawm-planner"
PLANNER_VERSION = 1
PLANNER_FILE = "planner.json"
DD_FILE = "dd"  # OUT/dd.safetensors + OUT/dd.json
IDM_FILE = "idm"
#: Config fields of the diffusion model its weights were trained for (some change no weight's shape).
DD_STRUCTURAL_FIELDS = ("horizon", "dim", "dim_mults", "n_diffusion_steps")
REQUIRED_PLANNER_KEYS = ("format", "task", "dd_config", "idm_config", "norm_stats")
TRAIN_HINT = "dawm train dd --dataset ID --out DIR && dawm train idm --dataset ID --out DIR"


def is_planner_folder(path: Path) -> bool:
    """Whether ``path`` holds a planner bundle or a part of one (``planner.json`` or ``dd.json``)."""
    return (Path(path) / PLANNER_FILE).is_file() or (Path(path) / f"{DD_FILE}.json").is_file()


def planner_hash(path: str | os.PathLike) -> str:
    """sha256 over a planner bundle's weight and config files (names and contents): identifies the planner."""
    h = hashlib.sha256()
    for name in (f"{DD_FILE}.json", f"{DD_FILE}.safetensors", f"{IDM_FILE}.json", f"{IDM_FILE}.safetensors"):
        f = Path(path) / name
        if f.is_file():
            h.update(name.encode())
            file_sha256(f, into=h)
    return h.hexdigest()


def resolve_planner(name_or_dir: str | os.PathLike) -> Path:
    """Folder of a planner bundle given by path or name; a clear error listing the known ones."""
    found = find_bundle_folder(name_or_dir)
    if found is not None:
        return found
    known = ", ".join(sorted(path.name for path, meta, _ in scan_planners() if meta is not None)) or "none"
    raise FileNotFoundError(f"no planner bundle {str(name_or_dir)!r} (searched "
                            f"{', '.join(str(r) for r in bundle_roots())}; known: {known}). Train one: {TRAIN_HINT}")


def scan_planners() -> list[tuple[Path, Optional[dict], Optional[str]]]:
    """Every planner folder under the search roots: ``(folder, planner.json, None)`` or ``(folder, None, why)``."""
    found: list[tuple[Path, Optional[dict], Optional[str]]] = []
    for root in bundle_roots():
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.iterdir() if p.is_dir() and is_planner_folder(p)):
            try:
                found.append((path, read_planner_meta(path), None))
            except (CheckpointError, OSError) as err:
                found.append((path, None, str(err)))
    return found


def read_planner_meta(path: str | os.PathLike) -> dict:
    """``planner.json`` of the folder ``path``, checked; the error says what the folder is instead.

    Raises:
        CheckpointError: a world-model bundle, a planner without its IDM (or not assembled), or a broken file.
    """
    path = Path(path)
    where = path / PLANNER_FILE
    if not where.is_file():
        has_dd, has_idm = (path / f"{DD_FILE}.json").is_file(), (path / f"{IDM_FILE}.json").is_file()
        if (path / "bundle.json").is_file() and not has_dd:
            raise CheckpointError(f"{path} is a DAWM world-model bundle (world model + IDM), not a Decision Diffuser "
                                  f"planner bundle; train a planner: {TRAIN_HINT}")
        if has_dd and not has_idm:
            dataset = _read_json(path / f"{DD_FILE}.json").get("dataset", "ID")
            raise CheckpointError(f"{path} holds the planner's diffusion model but no IDM yet: "
                                  f"dawm train idm --dataset {dataset} --out {path}")
        if has_dd:
            raise CheckpointError(f"{path} holds both parts but {PLANNER_FILE} was not written (interrupted?): rerun "
                                  f"the last dawm train dd / dawm train idm command to assemble it")
        raise CheckpointError(f"{path} is not a Decision Diffuser planner bundle (no {PLANNER_FILE}); {TRAIN_HINT}")
    meta = _read_json(where)
    if meta.get("format") != PLANNER_FORMAT:
        raise CheckpointError(f"{where} is not a {PLANNER_FORMAT} file (format={meta.get('format')!r})")
    if not isinstance(meta.get("version", 0), int) or meta.get("version", 0) > PLANNER_VERSION:
        raise CheckpointError(f"{path} is planner format v{meta.get('version')}; this dawm reads up to "
                              f"v{PLANNER_VERSION}")
    _require(meta, REQUIRED_PLANNER_KEYS, where)
    return meta


def assemble_planner_bundle(out: str | os.PathLike, eval_windows: int = 256, seed: int = 0) -> Optional[Path]:
    """Write ``planner.json`` (with the held-out evaluation) once both parts are in ``out``; None while one is
    missing.

    Raises:
        CheckpointError: the two parts were trained on different data, tasks or held-out splits, or the
            dataset changed since.
    """
    out = Path(out)
    if not ((out / f"{DD_FILE}.json").is_file() and (out / f"{IDM_FILE}.json").is_file()):
        return None
    dd_meta, idm_meta = _read_json(out / f"{DD_FILE}.json"), _read_json(out / f"{IDM_FILE}.json")
    keys = ("task", "dataset", "dataset_fingerprint", "model_config", "norm_stats", "heldout_fraction", "split_seed",
            "steps")
    _require(dd_meta, keys, out / f"{DD_FILE}.json")
    _require(idm_meta, keys[:4] + ("heldout_fraction", "split_seed", "steps", "best_val_nll", "best_step"),
             out / f"{IDM_FILE}.json")
    for key in ("task", "dataset_fingerprint", "heldout_fraction", "split_seed"):
        if dd_meta[key] != idm_meta[key]:
            raise CheckpointError(f"{out}: the planner and the IDM were trained with different {key} "
                                  f"({dd_meta[key]!r} vs {idm_meta[key]!r}); retrain one of them with the other's")
    data = load_dataset(dd_meta["dataset"], task=dd_meta["task"])
    if data.fingerprint() != dd_meta["dataset_fingerprint"]:
        raise CheckpointError(f"dataset {dd_meta['dataset']} changed since the planner was trained on it")
    meta = {"format": PLANNER_FORMAT, "version": PLANNER_VERSION, "kind": "decision-diffuser",
            "task": dd_meta["task"], "dataset": dd_meta["dataset"], "dataset_fingerprint": dd_meta["dataset_fingerprint"],
            "dd_config": dd_meta["model_config"], "idm_config": idm_meta["model_config"],
            "norm_stats": dd_meta["norm_stats"], "heldout_fraction": dd_meta["heldout_fraction"],
            "split_seed": dd_meta["split_seed"],
            "training": {"dd_steps": dd_meta["steps"], "idm_steps": idm_meta["steps"],
                         "idm_best_val_nll": idm_meta["best_val_nll"], "idm_best_step": idm_meta["best_step"]}}
    atomic_write_json(out / PLANNER_FILE, meta)  # loadable from here on
    bundle = PlannerBundle.load(out)
    cfg = bundle.planner.config
    source = plan_source(data, cfg.horizon, cfg.gamma, float(meta["heldout_fraction"]), int(meta["split_seed"]),
                         stats=bundle.planner.stats)
    starts = heldout_starts(source, eval_windows, np.random.default_rng(seed))
    meta["metrics"] = evaluate_plans(bundle.planner.diffusion, source, starts, seed=seed, idm=bundle.planner.idm)
    atomic_write_json(out / PLANNER_FILE, meta)
    return out


@dataclass
class PlannerBundle:
    """A loaded planner bundle.

    Attributes:
        path: the folder.
        task: task spec.
        planner: the :class:`DecisionDiffuser` (models in eval mode on the requested device).
        meta: ``planner.json`` contents.
    """

    path: Path
    task: TaskSpec
    planner: DecisionDiffuser
    meta: dict

    @property
    def steps(self) -> int:
        """Optimiser steps the diffusion model was trained for."""
        return int(self.meta.get("training", {}).get("dd_steps", 0))

    @classmethod
    def load(cls, name_or_dir: str | os.PathLike, device: str = "cpu",
             expect_task: Optional[str] = None) -> "PlannerBundle":
        """Load a planner bundle; CheckpointError / FileNotFoundError / ValueError name the cause.

        The configs in ``planner.json`` are checked against the weights: names and shapes (strict loading) and
        the structural fields against the config stored in the weights' header.
        """
        dev = resolve_device(device)
        path = resolve_planner(name_or_dir)
        meta = read_planner_meta(path)
        where = path / PLANNER_FILE
        task, dd_cfg, idm_cfg, stats = parse_bundle_parts(meta, where, "dd_config", DDConfig.from_mapping, expect_task,
                                                          "planner bundle")
        _check_fits_weights(path, DD_FILE, dd_cfg.to_dict(), DD_STRUCTURAL_FIELDS)
        _check_fits_weights(path, IDM_FILE, idm_cfg.to_dict())
        dd = build_dd_model(dd_cfg, task.obs_dim)
        idm = InverseDynamics.from_config(idm_cfg, task.obs_dim, task.act_dim)
        load_weights(path, where, ((dd, DD_FILE), (idm, IDM_FILE)))
        planner = DecisionDiffuser(diffusion=dd.to(dev).eval(), idm=idm.to(dev).eval(), stats=stats, config=dd_cfg)
        return cls(path=path, task=task, planner=planner, meta=meta)

