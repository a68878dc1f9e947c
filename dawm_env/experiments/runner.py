"""Run an experiment's cells resumably: resolve or create data and bundles, train, evaluate, report.

Output root ``OUT`` (default ``$DAWM_HOME/experiments/<preset>``), shared by every experiment run there::

    OUT/<experiment>/results.json   every cell's record (finished or not) + the preset
    OUT/<experiment>/table.md       mean ± std over seeds of the last and the best normalised score
    OUT/<experiment>/*.png          bar chart of the scores, learning curves per environment (+ per-experiment plots)
    OUT/cells/<key>.json            a finished cell's record: written last, it marks the cell done
    OUT/runs/<key>/                 the cell's agent run (checkpoint, curves, results): resumes after a kill
    OUT/bundles/<task>-<level>/     bundles trained here because none existed
    OUT/locks/                      claims of cells and of bundles being trained (flock; gone when released)

A cell's ``key`` hashes everything that decides its result except the step budget (so raising ``agent_steps``
continues the runs); identical cells of different experiments share their key, run and record. A killed
experiment, rerun, skips finished cells, resumes the interrupted agent run from its checkpoint and an
interrupted generation from its committed chunks.

What a cell needs is created when missing:

- real data ``dawm-d4rl/<task>/<level>-v0`` (built like ``dawm data build``; a preset with ``dataset_steps``
  builds ``dawm-exp/<task>/<level>-n<steps>-v0`` instead), unless ``datasets`` maps ``task/level`` elsewhere:
  to a Minari id, or to a D4RL hdf5 / qlearning npz file (its task is the key's, so the file need not record it;
  keys of cells on a file cover its content, so a file changed in place makes them unfinished again);
- the bundle of ``(task, level)``: ``bundles`` override, else a bundle named ``<task>-<level>`` (shipped or in
  ``$DAWM_HOME/bundles``), else ``$DAWM_HOME/runs/<task>-<level>`` when it holds a finished bundle, else one is
  trained into ``OUT/bundles/<task>-<level>`` with the preset's world-model / IDM budgets;
- generated data ``dawm-exp/<task>/<level>-h<H>[-sub<n>][-<actions>][-g<g>]-<hash>-v0`` (:func:`generate_dataset`;
  ``sub<n>``: from 1/n of the seed pairs; ``g<g>``: a generation target of its own, dots as ``p``; the hash covers
  the real data, the bundle's content and every generation setting).

Keys of cells that use a bundle cover the bundle's content (sha256 of its files), not its folder: a bundle
retrained or changed in place makes those cells unfinished again instead of reporting results made with the old
one, while the same bundle installed elsewhere (another checkout, a wheel's site-packages, another machine of a
cluster) gives the same keys, so records made there are reused (``--import``). Records keyed before this rule
(their keys also hashed the bundle's folder) are found under that older key when the bundle is in the same folder,
and are then stored under the new key too.

Parallel runs. Any number of processes may run the same experiment on one ``OUT`` at once (on one machine, or on
several sharing a filesystem with working POSIX ``flock``: a Slurm array or Ray tasks each running the same
``dawm experiment`` command). A process claims a cell with a non-blocking lock on ``OUT/locks/cells/<cell>.lock``
(named by the cell, not its key), held while it runs the cell; it skips cells another live process holds and moves
on. The OS drops a claim when its holder dies (even by ``kill -9``), so a rerun takes over. What a cell needs (real
data, bundle or planner, generated data) is created under a blocking per-``(task, level)`` lock
(``OUT/locks/prepare-<env>.lock``): a second process waits, then finds and reuses it, never builds it twice. Each
process writes the report at its end (under ``OUT/locks/report-<experiment>.lock``) from the records on disk at that
moment (cells still held by others are ``pending`` with ``held_by``), so the last to finish leaves the complete
report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from dawm_env.agents.evaluation import FINAL_STREAM, TRAINING_STREAM, aggregate, reset_seeds, time_episodes
from dawm_env.agents.export import load_seed_policy
from dawm_env.agents.planner import evaluate_planner
from dawm_env.agents.train import TrainAgentConfig, evaluate_run, train_agent
from dawm_env.data.build import BuildConfig, build_dataset, default_dataset_id
from dawm_env.data.loading import is_dataset_file, load_dataset
from dawm_env.data.minari_io import dataset_exists, read_provenance
from dawm_env.data.subset import SubsetConfig, write_subset
from dawm_env.experiments.presets import ExperimentPreset
from dawm_env.experiments.registry import PLANNER_ALGO, Cell, Experiment, get_experiment
from dawm_env.experiments.report import write_experiment_report
from dawm_env.generation import GenerateConfig, bundle_hash, generate_dataset
from dawm_env.generation.rollouts import check_rtg
from dawm_env.generation.stats import GENERATED_KIND
from dawm_env.paths import (
    LockHeldError,
    atomic_copy,
    atomic_write_json,
    check_writable_dir,
    dawm_home,
    exclusive_lock,
    file_sha256,
    minari_root,
)
from dawm_env.planner.bundle import (
    DD_FILE,
    IDM_FILE,
    PLANNER_FILE,
    PlannerBundle,
    assemble_planner_bundle,
    planner_hash,
)
from dawm_env.planner.model import PlannerPolicy
from dawm_env.runtime import machine_info, native_bf16, resolve_device, setup_torch
from dawm_env.tasks import LEVELS, get_task
from dawm_env.training.dd import DDTrainConfig, train_dd
from dawm_env.training.idm import IDMTrainConfig, train_idm
from dawm_env.training.world_model import WorldModelTrainConfig, train_world_model
from dawm_env.world_model.assemble import assemble_bundle
from dawm_env.world_model.bundle import (
    Bundle,
    bundle_roots,
    resolve_bundle,
)
from dawm_env.world_model.evaluation import evaluate_bundle

log = logging.getLogger(__name__)

EXP_NAMESPACE = "dawm-exp"
CELLS_DIR, RUNS_DIR, BUNDLES_DIR, LOCKS_DIR = "cells", "runs", "bundles", "locks"
#: Status of a cell record. ``done``: finished (stored); ``pending``: not run yet (``max_cells``; ``held_by``
#: set: another process is running it); ``skipped``: optional input missing.
STATUSES = ("done", "pending", "skipped")


@dataclass
class ExperimentConfig:
    """One ``dawm experiment`` call."""

    name: str
    """Experiment (:data:`~dawm_env.experiments.registry.EXPERIMENTS`): table2, table4, ..., consistency."""
    preset: ExperimentPreset
    """The budget (already carrying any CLI overrides)."""
    out: Optional[str] = None
    """Output root shared by experiments; None = ``$DAWM_HOME/experiments/<preset name>``."""
    datasets: dict[str, str] = field(default_factory=dict)
    """``{"task/level": source}``: use this real dataset (Minari id or file) instead of the standard one."""
    bundles: dict[str, str] = field(default_factory=dict)
    """``{"task/level": bundle}``: use this bundle (name or folder) for that task and level."""
    device: str = "cpu"
    """Torch device of generation, training and evaluation."""
    max_cells: Optional[int] = None
    """Run at most this many unfinished cells in this call, then write the report and stop (time-boxing; cells
    other processes hold do not count)."""
    progress: bool = True
    """Show progress bars."""
    import_reports: tuple[str, ...] = ()
    """``results.json`` reports (of any experiment) whose finished cell records are copied into ``OUT/cells``
    first (:func:`import_records`): results made on another machine, or kept in a repository, count as finished
    here when their keys match (same data, bundle, method and budget); a record whose key does not match is
    never used."""
    methods: tuple[str, ...] = ()
    """Run only the agent / timing cells whose method label is one of these (e.g. ``mix 50% real``); the other
    unfinished cells are reported as pending. Empty = every cell. Finished cells are always reported."""

    def __post_init__(self) -> None:
        exp = get_experiment(self.name)
        if self.methods:
            known = sorted({c.method for c in exp.cells(self.preset, *resolve_grid(exp, self.preset)) if c.method})
            unknown = [m for m in self.methods if m not in known]
            if unknown:
                raise ValueError(f"--method {unknown[0]!r}: not a method of {self.name}; choose from "
                                 f"{', '.join(repr(m) for m in known)}")
        for what, mapping in (("dataset", self.datasets), ("bundle", self.bundles)):
            for key in mapping:
                task, _, level = key.partition("/")
                get_task(task)
                if level not in LEVELS:
                    raise ValueError(f"{what} override {key!r}: expected TASK/LEVEL with a level in "
                                     f"{', '.join(LEVELS)}")
        for key, source in self.datasets.items():
            if is_dataset_file(source) and not Path(source).expanduser().is_file():
                # now, not after other cells' data and bundles were built
                raise ValueError(f"--dataset {key}={source}: no such file (a D4RL hdf5 / npz file or a Minari id)")
        if self.max_cells is not None and self.max_cells < 0:
            raise ValueError(f"max_cells must be >= 0, got {self.max_cells}")
        for report in self.import_reports:
            if not Path(report).expanduser().is_file():
                raise ValueError(f"--import {report}: no such file (an experiment's results.json)")
        resolve_device(self.device)  # --device cuda without CUDA: one line now, not after building data
        check_rtg(self.preset.rtg, "preset rtg")  # a NaN target would fail after generation, blamed on the bundle

    @property
    def root(self) -> Path:
        """The output root."""
        return Path(self.out).expanduser() if self.out else dawm_home() / "experiments" / self.preset.name


def _hash(obj: object, n: int = 10) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _data_tag(cell: Cell) -> str:
    """Readable part of a generated cell's data names: ``h7``, ``h7-sub8`` (1/8 of the seed pairs), ``h7-random``,
    ``h7-g0p6`` (generation target 0.6; Minari ids allow no dots)."""
    tag = f"h{cell.horizon}" + (f"-sub{cell.subsample}" if cell.subsample > 1 else "")
    tag += f"-{_slug(cell.action_source)}" if cell.action_source != "idm" else ""
    tag += f"-an{cell.action_noise:g}".replace(".", "p") if cell.action_noise else ""
    return tag + (f"-g{cell.rtg:g}".replace(".", "p") if cell.rtg is not None else "")


def _lever_tag(cell: Cell) -> str:
    """Readable part of a cell's run name for the training levers: ``-mix0p5-trust0p5-a10-bcreal``."""
    names = {"real_fraction": "mix", "trust_keep": "trust", "alpha": "a"}
    tag = "".join(f"-{names[k]}{v:g}".replace(".", "p") for k, v in cell.levers.items() if k in names)
    tag += f"-{cell.trust_signal}" if cell.trust_signal else ""
    return tag + ("-bcreal" if cell.bc_real_only else "")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Workspace:
    """Resolves and creates what cells need, and runs cells. Cheap lookups (ids, folders, keys) never build
    anything; the ``ensure_*`` methods do."""

    def __init__(self, cfg: ExperimentConfig, echo: Callable[[str], None] = print) -> None:
        self.cfg, self.p, self.echo = cfg, cfg.preset, echo
        self.root = cfg.root
        #: the agents' precision: the preset's, or (None) bf16 where this device runs it natively
        self.agent_bf16 = native_bf16(cfg.device) if cfg.preset.agent_bf16 is None else cfg.preset.agent_bf16
        self._bundle_hashes: dict[str, str] = {}
        self._file_hashes: dict[str, str] = {}
        self._checked_files: set[str] = set()

    # --- real data --------------------------------------------------------------------------------
    def full_real_source(self, task: str, level: str) -> str:
        """The whole real dataset of ``(task, level)``: the override, else the preset's standard id (may not exist
        yet). :meth:`real_source` is a fraction of it when the preset's ``data_fraction`` is below 1."""

        override = self.cfg.datasets.get(f"{task}/{level}")
        if override:
            return override
        if self.p.dataset_steps is None:
            return default_dataset_id(task, level)
        return f"{EXP_NAMESPACE}/{get_task(task).name}/{level}-n{self.p.dataset_steps}-v0"

    def real_source(self, task: str, level: str) -> str:
        """The real dataset every cell of ``(task, level)`` trains on (may not exist yet): the whole one, or with a
        ``data_fraction`` below 1 the subset ``dawm-exp/<task>/<level>-frac<f>-<hash of the whole one>-v0``."""
        full = self.full_real_source(task, level)
        if self.p.data_fraction >= 1.0:
            return full
        return f"{EXP_NAMESPACE}/{get_task(task).name}/{level}-{self._fraction_tag(task, level)}-v0"

    def _fraction_tag(self, task: str, level: str) -> str:
        """``frac0p1-<hash of the whole dataset's identity>``: names the subset and the bundle trained on it."""
        full = self._source_identity(self.full_real_source(task, level))
        return f"frac{self.p.data_fraction:g}".replace(".", "p") + f"-{_hash(full, 8)}"

    def existing_real_source(self, task: str, level: str) -> Optional[str]:
        """A real dataset of ``(task, level)`` that is on disk (the preset's, else the standard id), or None."""

        source = self.real_source(task, level)
        if self.p.data_fraction < 1.0:
            return source if dataset_exists(source) else None
        if f"{task}/{level}" in self.cfg.datasets:
            return source
        for candidate in (source, default_dataset_id(task, level)):
            if dataset_exists(candidate):
                return candidate
        return None

    def real_identity(self, task: str, level: str) -> dict:
        """``{"real": source}`` of ``(task, level)``, plus the sha256 of its content when the source is a file."""
        return self._source_identity(self.real_source(task, level))

    def _source_identity(self, source: str) -> dict:
        if not is_dataset_file(source):
            return {"real": source}
        if source not in self._file_hashes:
            path = Path(source).expanduser()
            self._file_hashes[source] = file_sha256(path) if path.is_file() else ""
        return {"real": source, "real_sha256": self._file_hashes[source]}

    def ensure_real(self, task: str, level: str) -> str:
        """The real dataset of ``(task, level)``, built with the D4RL-style builder when missing (and its
        ``data_fraction`` subset written, :mod:`dawm_env.data.subset`).

        Raises:
            ValueError: an override that holds another task's data (one line naming the override).
        """

        full = self._ensure_full_real(task, level)
        if self.p.data_fraction >= 1.0:
            return full
        return write_subset(SubsetConfig(dataset=full, fraction=self.p.data_fraction,
                                         dataset_id=self.real_source(task, level), seed=0))

    def _ensure_full_real(self, task: str, level: str) -> str:
        source = self.full_real_source(task, level)
        key = f"{task}/{level}"
        if key in self.cfg.datasets:
            if is_dataset_file(source) and key not in self._checked_files:  # a Minari id records its env
                self._check_override(task, key, source)
                self._checked_files.add(key)
            return source
        if dataset_exists(source):
            return source
        steps = self.p.dataset_steps or 1_000_000
        self.echo(f"building real dataset {source} ({steps} transitions)")
        return build_dataset(BuildConfig(task=task, level=level, steps=steps, dataset_id=source),
                             progress=self.cfg.progress)

    @staticmethod
    def _check_override(task: str, key: str, source: str) -> None:
        """Refuse ``--dataset key=source`` when the data records another task or has another task's dimensions."""
        data = load_dataset(source)
        spec = get_task(task)
        if data.task and get_task(data.task).name != spec.name:
            raise ValueError(f"--dataset {key}={source} holds {get_task(data.task).name} data; give it as "
                             f"{get_task(data.task).name}/LEVEL={source}")
        if (data.obs_dim, data.act_dim) != (spec.obs_dim, spec.act_dim):
            raise ValueError(f"--dataset {key}={source}: observation / action sizes {data.obs_dim} / {data.act_dim} "
                             f"are not {spec.name}'s {spec.obs_dim} / {spec.act_dim}")

    # --- bundles ----------------------------------------------------------------------------------
    def bundle_dir(self, task: str, level: str) -> Path:
        """Where the bundle of ``(task, level)`` is, or will be trained (see the module docstring)."""

        override = self.cfg.bundles.get(f"{task}/{level}")
        if override:
            return resolve_bundle(override).resolve()
        name = f"{get_task(task).name}-{level}"
        if self.p.data_fraction < 1.0:  # never a bundle trained on the whole data
            name += f"-{self._fraction_tag(task, level)}"
        for candidate in [r / name for r in bundle_roots()] + [dawm_home() / "runs" / name]:
            if (candidate / "bundle.json").is_file():
                return candidate.resolve()
        return (self.root / BUNDLES_DIR / name).resolve()

    def ensure_bundle(self, task: str, level: str) -> Path:
        """The bundle folder of ``(task, level)``, trained with the preset's budgets when none exists."""

        path = self.bundle_dir(task, level)
        if (path / "bundle.json").is_file():
            return path

        real = self.ensure_real(task, level)
        p = self.p
        self.echo(f"training a bundle for {task}-{level} into {path} (world model preset {p.wm_preset})")
        train_world_model(WorldModelTrainConfig(
            dataset=real, out=str(path), preset=p.wm_preset, steps=p.wm_steps, batch_size=p.wm_batch_size,
            task=task, device=self.cfg.device, threads=p.threads, progress=self.cfg.progress))
        train_idm(IDMTrainConfig(dataset=real, out=str(path), steps=p.idm_steps, hidden=p.idm_hidden,
                                 batch_size=p.idm_batch_size, task=task, device=self.cfg.device, threads=p.threads,
                                 progress=self.cfg.progress))
        assemble_bundle(path, eval_windows=min(1024, p.consistency_windows))
        return path

    def bundle_hash(self, path: Path) -> str:
        """sha256 of a bundle's files (cached)."""

        key = str(path)
        if key not in self._bundle_hashes:
            self._bundle_hashes[key] = bundle_hash(path)
        return self._bundle_hashes[key]

    def bundle_identity(self, task: str, level: str, legacy: bool = False) -> dict:
        """``{"bundle_sha": hash of its files}``; with the folder too while the bundle is not trained (sha None).

        Part of every key that depends on a bundle, so that retraining or changing a bundle in place gives new
        generated-data ids and new cells instead of silently reusing results made with the old one. The folder is
        left out so that keys do not depend on where the bundle is installed; ``legacy`` gives the identity of
        keys made before that (``{"bundle": folder, "bundle_sha": ...}``)."""
        path = self.bundle_dir(task, level)
        sha = self.bundle_hash(path) if (path / "bundle.json").is_file() else None
        return {"bundle": str(path), "bundle_sha": sha} if legacy or sha is None else {"bundle_sha": sha}

    # --- Decision Diffuser planners ----------------------------------------------------------------
    def planner_dir(self, task: str, level: str) -> Path:
        """Where the planner of ``(task, level)`` is (``<task>-<level>-dd`` in the bundle roots), or will be trained
        (``OUT/bundles/<task>-<level>-dd``)."""
        name = f"{get_task(task).name}-{level}-dd"
        for candidate in [r / name for r in bundle_roots()]:
            if (candidate / PLANNER_FILE).is_file():
                return candidate.resolve()
        return (self.root / BUNDLES_DIR / name).resolve()

    def ensure_planner(self, task: str, level: str) -> Path:
        """The planner bundle of ``(task, level)``, trained with the preset's budgets when none exists.

        Its IDM is the world-model bundle's when that one was trained on the same data and held-out split (the
        same recipe; copied, not retrained), else one trained with the preset's IDM budget.
        """
        path = self.planner_dir(task, level)
        if (path / PLANNER_FILE).is_file():
            return path
        real = self.ensure_real(task, level)
        p = self.p
        self.echo(f"training a Decision Diffuser planner for {task}-{level} into {path} (preset {p.dd_preset})")
        train_dd(DDTrainConfig(dataset=real, out=str(path), preset=p.dd_preset, steps=p.dd_steps, task=task,
                               device=self.cfg.device, threads=p.threads, progress=self.cfg.progress))
        if not (path / f"{IDM_FILE}.json").is_file() and not self._reuse_bundle_idm(task, level, path):
            train_idm(IDMTrainConfig(dataset=real, out=str(path), steps=p.idm_steps, hidden=p.idm_hidden,
                                     batch_size=p.idm_batch_size, task=task, device=self.cfg.device,
                                     threads=p.threads, progress=self.cfg.progress))
        assemble_planner_bundle(path, eval_windows=min(256, p.consistency_windows))
        return path

    def _reuse_bundle_idm(self, task: str, level: str, planner: Path) -> bool:
        """Copy the world-model bundle's IDM into ``planner`` if it was trained on the planner's data and split."""
        bundle = self.bundle_dir(task, level)
        try:
            dd_meta = json.loads((planner / f"{DD_FILE}.json").read_text())
            idm_meta = json.loads((bundle / f"{IDM_FILE}.json").read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if any(idm_meta.get(k) != dd_meta.get(k) for k in ("dataset_fingerprint", "heldout_fraction", "split_seed")):
            return False
        for suffix in (".safetensors", ".json"):  # the JSON last: it marks the IDM as present
            atomic_copy(bundle / f"{IDM_FILE}{suffix}", planner / f"{IDM_FILE}{suffix}")
        self.echo(f"planner {planner.name}: reusing the IDM of bundle {bundle} (same data and held-out split)")
        return True

    def planner_identity(self, task: str, level: str) -> dict:
        """``{"planner": folder, "planner_sha": hash of its files}`` (sha None while it is not trained)."""
        path = self.planner_dir(task, level)
        key = f"planner:{path}"
        if (path / PLANNER_FILE).is_file() and key not in self._bundle_hashes:
            self._bundle_hashes[key] = planner_hash(path)
        return {"planner": str(path), "planner_sha": self._bundle_hashes.get(key)}

    def prepare(self, cell: Cell) -> None:
        """Create what a cell needs before it runs: its real data, the bundle or planner its key covers (so that
        the key is final) and its generated data. :func:`run_experiment` calls it under a per-``(task, level)``
        lock, so parallel processes never build one of these twice."""
        if cell.kind == "timing" and cell.algo != PLANNER_ALGO:  # an agent's timing needs that agent's cell
            self.prepare(replace(cell, kind="agent"))
            return
        real = self.ensure_real(cell.task, cell.level)
        if cell.algo == PLANNER_ALGO:
            self.ensure_planner(cell.task, cell.level)
        elif self.needs_bundle(cell):
            bundle = self.ensure_bundle(cell.task, cell.level)
            if cell.generated:
                self.ensure_generated(cell, real, bundle)

    @staticmethod
    def needs_bundle(cell: Cell) -> bool:
        """Whether a cell uses its (task, level) bundle: generated data, SSORL's IDM, consistency."""
        return cell.kind == "consistency" or cell.generated or cell.algo.startswith("ssorl-")

    # --- generated data ---------------------------------------------------------------------------
    def generation_settings(self, cell: Cell, legacy: bool = False) -> dict:
        """Every setting that decides a cell's generated data (its id hashes them; ``legacy``: as before
        bundle folders left the keys, see :meth:`bundle_identity`)."""
        p = self.p
        return {**self.real_identity(cell.task, cell.level), **self.bundle_identity(cell.task, cell.level, legacy),
                "horizon": cell.horizon, "subsample": cell.subsample, "repeats": p.generation_repeats,
                "rtg": self.generation_rtg(cell),
                "batch_size": p.generation_batch_size, "chunk_size": p.generation_chunk_size, "seed": 0,
                "action_source": cell.action_source, "device_type": self.cfg.device.split(":")[0],
                **({"action_noise": cell.action_noise} if cell.action_noise else {})}  # old ids stay

    def generated_id(self, cell: Cell, legacy: bool = False) -> str:
        """The Minari id of a generated cell's data (deterministic; see the module docstring)."""
        return (f"{EXP_NAMESPACE}/{get_task(cell.task).name}/{cell.level}-{_data_tag(cell)}-"
                f"{_hash(self.generation_settings(cell, legacy), 8)}-v0")

    def ensure_generated(self, cell: Cell, real: str, bundle: Path) -> str:
        """Generate a cell's data when missing (resuming an interrupted generation); returns its id.

        An equal dataset already on disk under another id (same bundle, seed data and settings) is reused.

        Raises:
            ValueError: an existing dataset of this id made with a different bundle.
        """

        gen_id = self.generated_id(cell)
        if dataset_exists(gen_id):
            made_with = read_provenance(gen_id).get("bundle", {}).get("hash")
            if made_with and made_with != self.bundle_hash(bundle):
                raise ValueError(f"{gen_id} was generated with another version of bundle {bundle}; delete it "
                                 f"(minari delete {gen_id}) to regenerate")
            return gen_id
        request = self.generation_request(cell, real)
        same = find_equivalent_generated(request, self.bundle_hash(bundle))
        if same is not None:
            self.echo(f"reusing {same}: generated with the same bundle, seed data and settings as {gen_id}")
            return same
        self.echo(f"generating {gen_id}")
        return generate_dataset(GenerateConfig(bundle=str(bundle), out=gen_id, device=self.cfg.device,
                                               threads=self.p.threads, progress=self.cfg.progress, **request))

    def generation_request(self, cell: Cell, real: str) -> dict:
        """The :class:`GenerateConfig` fields that decide a cell's generated data: what it is generated
        with, and what an equal dataset under another id must have been generated with."""
        p = self.p
        return {"seed_dataset": real, "horizon": cell.horizon, "rtg": self.generation_rtg(cell), "guidance": None,
                "subsample": cell.subsample, "repeats": p.generation_repeats, "seed": 0,
                "batch_size": p.generation_batch_size, "chunk_size": p.generation_chunk_size,
                "sampling_steps": None, "temperature": None, "stochastic_idm": False,
                "action_source": cell.action_source, "action_noise": cell.action_noise}

    def generation_rtg(self, cell: Cell) -> Optional[float]:
        """The generation target of a cell: its own ``rtg`` lever, else the preset's (None = the task default)."""
        return cell.rtg if cell.rtg is not None else self.p.rtg

    # --- cells ------------------------------------------------------------------------------------
    def cell_key(self, cell: Cell, legacy: bool = False) -> str:
        """Folder-safe key of everything that decides a cell's result except the step budget (``legacy``: the
        key as made before bundle folders left the keys, see :meth:`bundle_identity`)."""
        p = self.p
        if cell.kind == "consistency":
            data = self.real_identity(cell.task, cell.data_level)
            ident = {"kind": "consistency", **self.bundle_identity(cell.task, cell.level, legacy),
                     "data": data.pop("real"),
                     **{f"data_{k}": v for k, v in data.items()}, "windows": p.consistency_windows}
            return f"consistency-{cell.task}-{cell.level}-on-{cell.data_level}-{_hash(ident)}"
        if cell.kind == "timing":
            ident = {"kind": "timing", "of": self.cell_key(replace(cell, kind="agent"), legacy),
                     "episodes": p.timing_episodes,
                     "device": self.cfg.device, "threads": p.threads}
            return f"timing-{cell.task}-{cell.level}-{_slug(cell.method)}-{_hash(ident)}"
        if cell.algo == PLANNER_ALGO:
            ident = {"kind": "planner", "task": cell.task, "level": cell.level, **self.real_identity(cell.task, cell.level),
                     **self.planner_identity(cell.task, cell.level), "seeds": p.seeds,
                     "eval_episodes": p.eval_episodes}
            return f"{cell.task}-{cell.level}-dd-{_hash(ident)}"
        ident = {"kind": "agent", "algo": cell.algo, "task": cell.task, "level": cell.level,
                 **self.real_identity(cell.task, cell.level),
                 "generated": self.generated_id(cell, legacy) if cell.generated else None,
                 "seeds": p.seeds, "batch_size": p.batch_size, "eval_episodes": p.eval_episodes}
        if cell.algo.startswith("ssorl-"):
            ident.update(**self.bundle_identity(cell.task, cell.level, legacy), ssorl_fraction=p.ssorl_fraction)
        # only when set: cells without levers (and fp32 agents) keep the keys they always had
        ident.update({k: v for k, v in cell.levers.items() if k != "rtg"})  # rtg is in the generated id
        if self.agent_bf16:
            ident["bf16"] = True
        if p.first_seed:
            ident["first_seed"] = p.first_seed
        data = _data_tag(cell) if cell.generated else "real"
        return f"{cell.task}-{cell.level}-{cell.algo}-{data}{_lever_tag(cell)}-{_hash(ident)}"

    def claim_path(self, cell: Cell) -> Path:
        """Lock file a process holds while it runs ``cell``: named by the cell itself, not by its key (a key
        changes once the cell's bundle exists)."""
        what = _slug(cell.method or cell.data_level)
        return self.root / LOCKS_DIR / CELLS_DIR / f"{cell.env}-{what}-{_hash(cell.to_dict())}.lock"

    def record_path(self, key: str) -> Path:
        """Where a finished cell's record lives."""
        return self.root / CELLS_DIR / f"{key}.json"

    def finished_record(self, cell: Cell, key: str) -> Optional[dict]:
        """The stored record of a finished cell, or None (missing, or trained with a different step budget).

        A record stored under the cell's legacy key (:meth:`bundle_identity`) is found too, and stored under
        ``key`` from then on."""
        rec = self._read_record(cell, key)
        if rec is None:
            old = self.cell_key(cell, legacy=True)
            rec = self._read_record(cell, old) if old != key else None
            if rec is not None:
                rec = {**rec, "key": key, "legacy_key": old}
                atomic_write_json(self.record_path(key), rec)
        return rec

    def _read_record(self, cell: Cell, key: str) -> Optional[dict]:
        try:
            rec = json.loads(self.record_path(key).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if rec.get("status") != "done":
            return None
        if cell.kind == "agent" and cell.algo != PLANNER_ALGO and rec.get("steps") != self.p.agent_steps:
            return None
        return rec

    def run_cell(self, cell: Cell, key: str) -> dict:
        """Run one cell; a finished one's record is stored (and returned)."""
        if cell.kind == "timing":
            rec = self._run_timing(cell, key)
        elif cell.algo == PLANNER_ALGO:
            rec = self._run_planner(cell, key)
        elif cell.kind == "agent":
            rec = self._run_agent(cell, key)
        else:
            rec = self._run_consistency(cell, key)
        if rec["status"] == "done":
            atomic_write_json(self.record_path(key), rec)
        return rec

    def _run_agent(self, cell: Cell, key: str) -> dict:

        p, t0 = self.p, time.perf_counter()
        real = self.ensure_real(cell.task, cell.level)
        bundle = self.ensure_bundle(cell.task, cell.level) if self.needs_bundle(cell) else None
        gen_id = self.ensure_generated(cell, real, bundle) if cell.generated else None
        run_dir = self.root / RUNS_DIR / key
        kwargs: dict = dict(
            algo=cell.algo, dataset=real, out=str(run_dir), synthetic=gen_id, steps=p.agent_steps, seeds=p.seeds,
            seed=p.first_seed,
            batch_size=p.batch_size, eval_every=min(p.eval_every, p.agent_steps), eval_episodes=p.eval_episodes,
            level=cell.level, task=cell.task, device=self.cfg.device, threads=p.threads, progress=self.cfg.progress)
        if cell.algo.startswith("ssorl-"):
            kwargs.update(bundle=str(bundle), ssorl_fraction=p.ssorl_fraction)
        overrides = {"bf16": True} if self.agent_bf16 else {}
        if cell.alpha is not None:
            overrides["alpha"] = cell.alpha
        if cell.trust_signal:
            kwargs["trust_signal"] = cell.trust_signal
        # a cell names its levers relative to the paper's recipe (generated data only, every action cloned)
        kwargs.update(recipe="paper", real_fraction=cell.real_fraction, trust_keep=cell.trust_keep,
                      bc_real_actions_only=cell.bc_real_only, algo_overrides=overrides)
        train_agent(TrainAgentConfig(**kwargs))
        res = json.loads((run_dir / "results.json").read_text())
        # the protocol's last word: fresh episodes (a reset stream the learning curve never used) per seed
        fresh = (evaluate_run(run_dir, episodes=p.fresh_episodes, device=self.cfg.device)["normalized"]
                 if p.fresh_episodes else None)
        # the evaluation curve travels with the record (a few kB), so a report imported elsewhere still plots it
        return {"status": "done", "key": key, "cell": cell.to_dict(), "real_dataset": real, "generated_dataset": gen_id,
                **_run_curve(str(run_dir)),
                "bundle": str(bundle) if bundle else None, "run_dir": str(run_dir), "steps": res["steps"],
                "seeds": res["seeds"], "eval_episodes": res["eval_episodes"], "final": res.get("final"),
                "fresh": fresh, "fresh_episodes": p.fresh_episodes, "last": res["last"], "best": res["best"],
                "train_seconds": res.get("train_seconds"), "eval_seconds": res.get("eval_seconds"),
                "wall_seconds_this_call": time.perf_counter() - t0, "finished": _now()}

    def _run_planner(self, cell: Cell, key: str) -> dict:
        """DD's score: the planner evaluated with the agents' seeds and episodes (their training-time stream)."""
        p, t0 = self.p, time.perf_counter()
        path = self.ensure_planner(cell.task, cell.level)
        setup_torch(self.cfg.device, p.threads)
        res = evaluate_planner(path, episodes=p.eval_episodes, seeds=p.seeds, seed=0, stream=TRAINING_STREAM,
                               device=self.cfg.device, out=self.root / RUNS_DIR / key)
        return {"status": "done", "key": key, "cell": cell.to_dict(), "real_dataset": self.real_source(cell.task,
                cell.level), "generated_dataset": None, "bundle": str(path), "run_dir": str(self.root / RUNS_DIR / key),
                "steps": res["step"], "planner_steps": res["step"], "seeds": res["seeds"],
                "eval_episodes": res["episodes"], "final": res["normalized"], "last": res["normalized"],
                "best": res["normalized"],
                "eval_seconds": res["eval_seconds"], "wall_seconds_this_call": time.perf_counter() - t0,
                "finished": _now()}

    def _run_timing(self, cell: Cell, key: str) -> dict:
        """Per-episode inference time of one method's policy (seed 0), one episode at a time, in this process."""
        p = self.p
        if cell.algo == PLANNER_ALGO:
            source = self.ensure_planner(cell.task, cell.level)
            device = setup_torch(self.cfg.device, p.threads)
            policy: object = PlannerPolicy(PlannerBundle.load(source, str(device), expect_task=cell.task).planner)
        else:
            agent_cell = replace(cell, kind="agent")
            self.prepare(agent_cell)
            agent_key = self.cell_key(agent_cell)
            rec = self.finished_record(agent_cell, agent_key) or self.run_cell(agent_cell, agent_key)
            source = Path(rec["run_dir"])
            setup_torch("cpu", p.threads)
            actor = load_seed_policy(source)

            def policy(obs):  # (1, 1, obs_dim) -> (1, 1, act_dim)
                with torch.no_grad():
                    return actor(torch.from_numpy(obs.reshape(1, -1))).numpy()

        task = get_task(cell.task)
        timed = time_episodes(task, policy, reset_seeds(0, p.timing_episodes, FINAL_STREAM))
        inf, steps = np.asarray(timed["inference_seconds"]), np.asarray(timed["steps"])
        return {"status": "done", "key": key, "cell": cell.to_dict(), "source": str(source), **timed,
                "inference": aggregate(inf), "ms_per_step": float(1e3 * inf.sum() / steps.sum()),
                "hardware": machine_info(self.cfg.device), "finished": _now()}

    def _run_consistency(self, cell: Cell, key: str) -> dict:

        in_dist = cell.data_level == cell.level
        base = {"key": key, "cell": cell.to_dict(), "in_distribution": in_dist}
        if in_dist:
            source: Optional[str] = self.ensure_real(cell.task, cell.data_level)
        else:
            source = self.existing_real_source(cell.task, cell.data_level)
            if source is None:
                return {**base, "status": "skipped", "reason": f"no {cell.task} {cell.data_level} dataset on disk "
                        f"(dawm data build --task {cell.task} --level {cell.data_level}, or --dataset)"}
        bundle_path = self.ensure_bundle(cell.task, cell.level)
        device = setup_torch(self.cfg.device, self.p.threads)
        bundle = Bundle.load(bundle_path, device, expect_task=cell.task)
        data = load_dataset(source, task=cell.task)
        t0 = time.perf_counter()
        metrics = evaluate_bundle(bundle, data, n_windows=self.p.consistency_windows, seed=0)
        return {**base, "status": "done", "bundle": str(bundle_path), "bundle_dataset": bundle.meta.get("dataset"),
                "data": source, "data_transitions": data.num_transitions,
                "same_data_as_bundle": data.fingerprint() == bundle.meta.get("dataset_fingerprint"),
                "metrics": metrics, "seconds": time.perf_counter() - t0, "finished": _now()}


def find_equivalent_generated(request: dict, bundle_sha: str) -> Optional[str]:
    """A local dataset written by ``dawm generate`` with the same bundle (by hash) and the same generation
    settings as ``request`` (e.g. one a user generated by hand under another id), or None.

    Generation is deterministic given these settings, so such a dataset holds exactly the rollouts the
    experiment would generate; reusing it saves the most expensive stage of a CPU run.
    """

    root = minari_root()
    for meta in sorted(root.glob("**/data/metadata.json")) if root.is_dir() else []:  # <id>/data/metadata.json
        dataset_id = str(meta.parent.parent.relative_to(root))
        try:
            record = read_provenance(dataset_id)
        except Exception:  # noqa: BLE001 - an unreadable foreign dataset is simply not a match
            continue
        if record.get("kind") != GENERATED_KIND or record.get("bundle", {}).get("hash") != bundle_sha:
            continue
        made = {"action_source": "idm", "action_noise": 0.0, **record.get("generator_config", {})}  # older records lack them
        if all(made.get(k) == v for k, v in request.items()):
            return dataset_id
    return None


def resolve_grid(exp: Experiment, preset: ExperimentPreset) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Tasks and levels of a run: the preset's, else the experiment's paper grid; validated."""
    tasks = tuple(get_task(t).name for t in (preset.tasks or exp.paper_tasks))
    levels = tuple(preset.levels or exp.paper_levels)
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad:
        raise ValueError(f"unknown level(s) {bad}; choose from {', '.join(LEVELS)}")
    return tasks, levels


def _run_curve(run_dir: Optional[str]) -> dict:
    """``{"curve": ...}``: the evaluation curve of an agent run folder, or ``{}`` where there is none."""
    try:
        curves = json.loads((Path(run_dir) / "curves.json").read_text())
        return {"curve": {k: curves[k] for k in ("steps", "seeds", "normalized")}}
    except (TypeError, OSError, json.JSONDecodeError, KeyError):
        return {}


_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def import_records(root: Path, report: str | Path) -> int:
    """Copy the finished cell records of a ``results.json`` report into ``root/cells``; returns how many were new.

    A record already in ``root/cells`` is never replaced. Nothing is trusted beyond the file name: the runner uses
    an imported record only for a cell whose key (a hash of its data, bundle, method and budget) equals the
    record's, and only with the same step budget (:meth:`Workspace.finished_record`).
    """
    path = Path(report).expanduser()
    try:
        data = json.loads(path.read_text())
        cells = data["cells"]
        if not isinstance(cells, list):
            raise TypeError
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"--import {report}: not an experiment report (a results.json with a 'cells' list)") from None
    new = 0
    for rec in cells:
        if not isinstance(rec, dict) or rec.get("status") != "done":
            continue
        key = rec.get("key")
        if not isinstance(key, str) or not _SAFE_KEY.match(key):  # a key names a file: no paths
            raise ValueError(f"--import {report}: a cell record has an invalid key {key!r}")
        target = root / CELLS_DIR / f"{key}.json"
        if not target.exists():
            atomic_write_json(target, rec)
            new += 1
    return new


def run_experiment(cfg: ExperimentConfig, echo: Callable[[str], None] = print) -> dict:
    """Run (or resume) an experiment; writes and returns its ``results.json`` content.

    Finished cells are reused; at most ``cfg.max_cells`` unfinished cells run. The report is written even when
    a cell raises (then the error propagates): what finished is kept and shown.
    """
    from tqdm.auto import tqdm


    exp = get_experiment(cfg.name)
    tasks, levels = resolve_grid(exp, cfg.preset)
    check_writable_dir(cfg.root, "--out")  # before any data is built or trained
    for report in cfg.import_reports:
        echo(f"imported {import_records(cfg.root, report)} new finished cell record(s) from {report}")
    ws = Workspace(cfg, echo)
    cells = exp.cells(cfg.preset, tasks, levels)
    folder = ws.root / exp.name
    echo(f"{exp.name}: {exp.title}; preset {cfg.preset.name}, {len(cells)} cells, output {folder}")
    records: list[dict] = []
    ran = 0
    locks = ws.root / LOCKS_DIR
    bar = tqdm(cells, desc=exp.name, unit="cell", disable=not cfg.progress)
    try:
        for cell in bar:
            key = ws.cell_key(cell)
            rec = ws.finished_record(cell, key)
            if rec is not None:
                records.append(rec)
                continue
            if (cfg.max_cells is not None and ran >= cfg.max_cells) or (cfg.methods and cell.method not in cfg.methods):
                records.append({"status": "pending", "key": key, "cell": cell.to_dict()})
                continue
            bar.set_postfix_str(f"{cell.env} {cell.method or cell.data_level}")
            claim = ws.claim_path(cell)
            try:
                with exclusive_lock(claim, f"experiment cell {cell.env} {cell.method or cell.data_level}",
                                    hint="another dawm experiment process runs it", prune_to=locks):
                    with exclusive_lock(locks / f"prepare-{cell.env}.lock", f"the inputs of {cell.env}", wait=True,
                                        prune_to=locks):
                        ws.prepare(cell)  # the key covers the bundle's / planner's content, known once it exists
                    key = ws.cell_key(cell)
                    rec = ws.finished_record(cell, key)  # finished by another process meanwhile?
                    if rec is None:
                        ran += 1
                        rec = ws.run_cell(cell, key)
                    records.append(rec)
            except LockHeldError as held:
                echo(f"{cell.env} {cell.method or cell.data_level}: run by {held.holders}; moving on")
                records.append({"status": "pending", "key": key, "cell": cell.to_dict(), "held_by": held.holders})
    finally:
        bar.close()
        # pending cells (held by other processes, or not selected / beyond max_cells here) may have been finished
        # by another process since: the report shows what is on disk now
        for i, rec in enumerate(records):
            if rec["status"] == "pending":
                cell = Cell(**rec["cell"])
                records[i] = ws.finished_record(cell, ws.cell_key(cell)) or rec
            if records[i]["status"] == "done" and "curve" not in records[i]:  # a record from before curves travelled
                records[i] = {**records[i], **_run_curve(records[i].get("run_dir"))}
        results = {
            "experiment": exp.name, "title": exp.title, "note": exp.note, "preset": cfg.preset.to_dict(),
            "tasks": list(tasks), "levels": list(levels), "root": str(ws.root), "device": cfg.device,
            "complete": len(records) == len(cells) and all(r["status"] in ("done", "skipped") for r in records),
            "counts": {s: sum(r["status"] == s for r in records) for s in STATUSES}, "cells": records,
            "updated": _now(),
        }
        with exclusive_lock(locks / f"report-{exp.name}.lock", f"the {exp.name} report", wait=True, prune_to=locks):
            write_experiment_report(exp, results, folder)
    return results
