"""Plots shared by agent runs, the demo and the experiment reports (matplotlib on the Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed); imported on first use, it is slow to load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_stats(curves: Mapping) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, mean, std)`` over seeds of an agent run's ``curves.json`` (normalised scores)."""
    steps = np.asarray(curves["steps"], dtype=np.int64)
    per_seed = np.asarray([curves["normalized"][str(s)] for s in curves["seeds"]], dtype=np.float64)  # (K, E)
    if per_seed.size == 0:
        return steps, np.zeros(0), np.zeros(0)
    return steps, per_seed.mean(0), per_seed.std(0)


def plot_learning_curves(series: Mapping[str, Mapping], path: Path, title: str, ylabel: str = "normalised score"
                         ) -> Optional[Path]:
    """One mean ± std band per labelled run (``{label: curves.json dict}``) into ``path`` (PNG).

    Returns:
        ``path``, or None when there was nothing to draw.
    """
    series = {k: v for k, v in series.items() if v and v.get("steps")}
    if not series:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, curves in series.items():
        steps, mean, std = curve_stats(curves)
        ax.plot(steps, mean, label=f"{label} ({len(curves['seeds'])} seeds)")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("gradient steps")
    ax.set_ylabel(ylabel)
    return finish_figure(fig, ax, path, title)


def finish_figure(fig: Any, ax: Any, path: Path, title: str, grid_axis: str = "both") -> Path:
    """Title, grid, legend; save ``fig`` to ``path`` (folders created) and close it."""
    ax.set_title(title)
    ax.grid(axis=grid_axis, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path
