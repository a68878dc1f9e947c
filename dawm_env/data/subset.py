"""A random fraction of a dataset's episodes as a new local Minari dataset (the low-data regime).

Whole episodes are kept (a world model trains on windows inside episodes, and an episode cut at a random row
would get a false truncation): the episodes are shuffled with ``seed`` and the shortest prefix of the shuffled
order holding at least ``fraction`` of the transitions is kept, in its original order. The same source, fraction
and seed always give the same episodes.

``dawm data subset --dataset dawm-d4rl/hopper/medium-v0 --fraction 0.1 --id dawm-d4rl/hopper/medium-10pct-v0``
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from dawm_env.data.loading import load_dataset
from dawm_env.data.minari_io import (
    dataset_exists,
    read_provenance,
    validate_dataset_id,
    write_minari_dataset,
    write_once,
)
from dawm_env.data.records import OfflineDataset
from dawm_env.tasks import get_task

log = logging.getLogger(__name__)

#: ``builder`` of a subset's provenance record.
SUBSET_BUILDER = "dawm data subset"


@dataclass(frozen=True)
class SubsetConfig:
    """Which episodes of which dataset to keep, and where to write them."""

    dataset: str
    """Source: a Minari id or a D4RL hdf5 / npz file."""
    fraction: float
    """Keep at least this fraction of the source's transitions, in whole episodes (0 < fraction < 1)."""
    dataset_id: str
    """The new local Minari id (``namespace/name-vN``)."""
    seed: int = 0
    """Seed of the episode shuffle."""

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"--fraction must lie strictly between 0 and 1, got {self.fraction}")
        validate_dataset_id(self.dataset_id)
        if self.dataset_id == self.dataset:
            raise ValueError(f"--id {self.dataset_id!r} is the source itself; choose a new id")


def subset_episodes(data: OfflineDataset, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the episodes a subset keeps (module docstring): ``(E_kept,)`` int64."""
    order = np.random.default_rng(seed).permutation(data.num_episodes)
    need = int(np.ceil(fraction * data.num_transitions))
    count = int(np.searchsorted(np.cumsum(data.episode_lengths[order]), need)) + 1
    return np.sort(order[:min(count, data.num_episodes)])


def write_subset(cfg: SubsetConfig) -> str:
    """Write the subset of ``cfg`` as a local Minari dataset (atomically, under the id's lock); returns its id.

    Rerunning the same configuration is a no-op.

    Raises:
        FileExistsError: the id exists with another configuration.
    """
    return write_once(cfg.dataset_id, lambda: _already_written(cfg), lambda: _write(cfg))


def _write(cfg: SubsetConfig) -> str:
    data = load_dataset(cfg.dataset)
    if not data.task:
        raise ValueError(f"{cfg.dataset} records no task; give a dataset of hopper, walker2d or halfcheetah")
    keep = subset_episodes(data, cfg.fraction, cfg.seed)
    sub = data.select_episodes(keep, source=cfg.dataset_id)
    provenance = {"builder": SUBSET_BUILDER, "config": asdict(cfg), "source_fingerprint": data.fingerprint(),
                  "source_transitions": data.num_transitions, "source_episodes": data.num_episodes,
                  "transitions": sub.num_transitions, "episodes": sub.num_episodes,
                  "mean_normalized_score": float(np.mean(get_task(sub.task).normalized_score(sub.episode_returns()))),
                  "episode_indices": keep.tolist()}
    write_minari_dataset(sub, cfg.dataset_id, algorithm_name=f"subset of {cfg.dataset}", provenance=provenance,
                         description=(f"{cfg.fraction:g} of the transitions of {cfg.dataset} in whole episodes "
                                      f"(shuffle seed {cfg.seed}), dawm data subset."))
    log.info("wrote %s: %d of %d episodes, %d transitions", cfg.dataset_id, sub.num_episodes, data.num_episodes,
             sub.num_transitions)
    return cfg.dataset_id


def _already_written(cfg: SubsetConfig) -> bool:
    if not dataset_exists(cfg.dataset_id):
        return False
    if read_provenance(cfg.dataset_id).get("config") == asdict(cfg):
        return True
    raise FileExistsError(f"dataset {cfg.dataset_id!r} already exists with another configuration; choose another "
                          "--id (or delete it: minari delete ID)")
