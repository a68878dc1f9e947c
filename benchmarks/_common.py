"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch

#: Result files the README quotes live here and are never overwritten: a run without ``--out`` writes a new
#: time-stamped file under ``RESULTS_DIR / "runs"``.
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_out_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out PATH``: where the JSON goes (default: a new ``results/runs/<name>-<UTC time>.json``)."""
    parser.add_argument("--out", default=None,
                        help=f"JSON file to write (default: benchmarks/results/runs/{name}-<UTC time>.json); "
                             "an existing file is never overwritten")


def results_path(out: Optional[str], name: str, suffix: str = ".json") -> Path:
    """The file a run writes: ``out``, or a new time-stamped one under ``results/runs/``."""
    if out:
        return Path(out)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return RESULTS_DIR / "runs" / f"{name}-{stamp}{suffix}"


def _plain(obj: Any) -> Any:
    """numpy scalars and the like -> plain JSON values."""
    return obj.item() if hasattr(obj, "item") else str(obj)


def save_results(out: Optional[str], name: str, result: Any) -> Path:
    """Write ``result`` as JSON to :func:`results_path`, refusing to replace an existing file."""
    path = results_path(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x") as fh:  # exclusive create: a rerun never overwrites figures the README quotes
            fh.write(json.dumps(result, indent=2, default=_plain) + "\n")
    except FileExistsError:
        raise SystemExit(f"{path} exists (the README may quote it); pass a new --out") from None
    print(f"saved {path}")
    return path


def groundtruth_rows(data: Any, bundle_meta: dict, task: Any, n: int, rng: Any) -> Any:
    """Sorted rows of ``data`` to compare a dream step against MuJoCo: at most ``n``, drawn with ``rng``.

    Only the bundle's held-out episodes (when ``data`` holds any), only mid-episode steps (``s_{t-1}`` known, for
    the action gap) and only states whose observation fixes the MuJoCo state (:meth:`TaskSpec.determines_state`).
    """
    import numpy as np

    from dawm_env.world_model.data import heldout_episodes

    held = heldout_episodes(data, float(bundle_meta["heldout_fraction"]), int(bundle_meta["split_seed"]))
    usable = np.repeat(held, data.episode_lengths) if held.any() else np.ones(data.num_transitions, dtype=bool)
    usable[data.episode_offsets[:-1]] = False
    usable &= task.determines_state(data.observations)
    return np.sort(rng.choice(np.flatnonzero(usable), size=min(n, int(usable.sum())), replace=False))


def load_groundtruth(bundle_name: str, dataset: str, states: int, seed: int) -> tuple[Any, Any, Any, Any, Any]:
    """What the MuJoCo-ground-truth benchmarks start from: ``(bundle, data, rows, rng, obs_std)``.

    ``rows`` are :func:`groundtruth_rows` of ``dataset`` (at most ``states``), drawn with ``rng``
    (``default_rng(seed)``, returned for the benchmark's further draws); ``obs_std`` is the bundle's float64
    observation std (errors are reported on states normalised by it).
    """
    import numpy as np

    from dawm_env.data.loading import load_dataset
    from dawm_env.world_model.bundle import Bundle

    bundle = Bundle.load(bundle_name)
    data = load_dataset(dataset, task=bundle.task.name)
    rng = np.random.default_rng(seed)
    rows = groundtruth_rows(data, bundle.meta, bundle.task, states, rng)
    return bundle, data, rows, rng, np.asarray(bundle.stats.obs_std, dtype=np.float64)


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    """fp32 GFLOP/s of an n x n matmul on this machine (best of ``reps``): the peak FLOP rates are quoted against."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9
