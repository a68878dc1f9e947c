"""One entry point for offline data: ``load_dataset(source)``.

``source`` may be
- a local Minari dataset id (``dawm-d4rl/hopper/medium-v0``, ``mujoco/hopper/medium-v0``),
- a D4RL hdf5 file (keys ``observations, actions, rewards, terminals, timeouts``; ``next_observations``
  optional),
- an ``.npz`` in D4RL ``qlearning_dataset`` layout (``observations, actions, rewards,
  next_observations, terminals``; ``timeouts`` optional).

All return the same :class:`OfflineDataset` with exact episode boundaries: a timeout is a truncation,
never a terminal, and no transition ever pairs a state with the next episode's first state.
"""

from __future__ import annotations

import contextlib
import os
import re
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from dawm_env.data.minari_io import iter_episodes_fast, try_restore_interrupted_overwrite
from dawm_env.data.records import OfflineDataset
from dawm_env.paths import dawm_home, minari_root, new_temp_file
from dawm_env.tasks import get_task, task_from_env_id

_D4RL_REQUIRED = ("observations", "actions", "rewards", "terminals")


def load_dataset(source: str | os.PathLike, task: Optional[str] = None) -> OfflineDataset:
    """Load offline data from a Minari id, a D4RL hdf5 file or a qlearning-layout npz.

    Args:
        source: Minari dataset id or file path.
        task: task name, needed for files that do not say which env they come from (checked against the
            data's dimensions); inferred from Minari metadata when omitted.

    Raises:
        FileNotFoundError: a path that does not exist, or a Minari id not on disk (with how to get it).
        ValueError: a file whose keys or shapes are wrong, naming them.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.suffix in (".hdf5", ".h5"):
        return load_d4rl_hdf5(path, task)
    if path.suffix == ".npz":
        return load_npz(path, task)
    if is_dataset_file(source):
        raise FileNotFoundError(
            f"{text!r} is not a dataset file dawm can read (expected .hdf5 / .h5 / .npz) or does not exist"
        )
    return load_minari(text, task)


def is_dataset_file(source: str | os.PathLike) -> bool:
    """Whether :func:`load_dataset` reads ``source`` as a file (or fails on it as one), not as a Minari id."""
    text = str(source)
    path = Path(text).expanduser()
    return path.suffix in (".hdf5", ".h5", ".npz") or path.exists() or text.startswith((".", "/", "~"))


# --- Minari ---------------------------------------------------------------------------------------
def load_minari(dataset_id: str, task: Optional[str] = None) -> OfflineDataset:
    """Load a local Minari dataset into an :class:`OfflineDataset`."""
    import minari
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)
    except Exception as err:  # minari raises a bare Error type; re-raise with the expected shape
        raise ValueError(
            f"{dataset_id!r} is neither a dataset file nor a valid Minari id "
            "(expected namespace/name-vN, e.g. dawm-d4rl/hopper/medium-v0)"
        ) from err
    try_restore_interrupted_overwrite(dataset_id)  # an --overwrite killed mid-swap must not lose the id
    local = minari.list_local_datasets()
    if dataset_id not in local:
        prune_flat_caches(dataset_id)  # e.g. after `minari delete`: its cache would only take disk space
        raise FileNotFoundError(
            f"Minari dataset {dataset_id!r} is not on disk (root: {_minari_root_text()}).\n"
            f"  - with network access: minari download {dataset_id}\n"
            "  - or build a D4RL-style dataset locally: dawm data build --task hopper --level medium\n"
            f"  local datasets: {', '.join(sorted(local)) or 'none'}"
        )
    ds = minari.load_dataset(dataset_id)
    meta = dict(ds.storage.metadata)
    env_spec = ds.spec.env_spec
    recorded = ""
    if env_spec is not None:
        try:
            recorded = task_from_env_id(env_spec.id).name
        except ValueError:  # another env's data: usable only with an explicit task (checked by dimensions)
            if not task:
                raise
    task_name = task or recorded
    h5 = Path(ds.storage.data_path) / "main_data.hdf5"
    cache = _flat_cache_path(dataset_id, h5.parent, ds.total_episodes)
    prune_flat_caches(dataset_id, source=h5, keep=cache)  # copies of earlier versions of this dataset
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            data = OfflineDataset(task_name, *(z[k] for k in _FLAT_FIELDS), source=dataset_id, metadata=meta)
        _check_task(data, task_name, dataset_id, recorded)
        return data

    obs, act, rew, term, trunc = [], [], [], [], []
    seeds: list = []
    for ep in iter_episodes_fast(dataset_id, with_infos=False):  # faster than Minari's iterate_episodes
        seeds.append(ep["seed"])
        if not isinstance(ep["observations"], np.ndarray):
            raise ValueError(f"{dataset_id}: dict / tuple observations are not supported (need a Box space)")
        obs.append(ep["observations"])
        act.append(ep["actions"])
        rew.append(ep["rewards"])
        term.append(ep["terminations"])
        trunc.append(ep["truncations"])
    data = OfflineDataset.from_episodes(task_name, obs, act, rew, term, trunc, seeds=seeds,
                                        source=dataset_id, metadata=meta)
    _check_task(data, task_name, dataset_id, recorded)
    if cache is not None:
        _write_flat_cache(cache, data, source=h5)
    return data


#: OfflineDataset arrays in constructor order (after ``task``), as stored in the flat cache.
_FLAT_FIELDS = ("observations", "actions", "rewards", "next_observations", "terminations", "truncations",
                "episode_offsets", "seeds")
#: Minari datasets with at least this many episodes get a flat cache: reading one HDF5 group per episode
#: costs ~0.5 ms each (8 minutes of CPU for a 1M-rollout generated dataset), reading the cache seconds.
CACHE_MIN_EPISODES = 20_000


def _flat_cache_path(dataset_id: str, data_path: Path, episodes: int) -> Optional[Path]:
    """Where the flat copy of a large Minari dataset lives (None: too small, or caching off by ``DAWM_CACHE=0``).

    The name carries the HDF5 file's size and modification time, so a rewritten dataset never meets an old cache.
    """
    h5 = data_path / "main_data.hdf5"
    if episodes < CACHE_MIN_EPISODES or os.environ.get("DAWM_CACHE", "1") == "0" or not h5.is_file():
        return None
    import hashlib


    st = h5.stat()
    key = hashlib.sha256(f"{dataset_id}|{st.st_size}|{st.st_mtime_ns}|v1".encode()).hexdigest()[:16]
    return dawm_home() / "cache" / "minari" / f"{dataset_id.replace('/', '__')}-{key}.npz"


def _write_flat_cache(path: Path, data: OfflineDataset, source: Optional[Path] = None) -> None:
    """Write the cache atomically (a kill never leaves a half file that a later load would trust).

    ``source`` (the dataset's HDF5 file) is recorded so :func:`prune_flat_caches` can tell when it is gone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_temp_file(path, ".npz.tmp")
    extra = {} if source is None else {"_source": np.array(str(source))}
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: getattr(data, k) for k in _FLAT_FIELDS}, **extra)
        os.replace(tmp, path)
    except OSError:  # a read-only or full disk only costs the speed-up
        Path(tmp).unlink(missing_ok=True)


#: A flat cache file name: ``<dataset id, / as __>-<16 hex key>.npz``.
_CACHE_NAME = re.compile(r"(?P<stem>.+)-[0-9a-f]{16}\.npz")


def _cache_source(path: Path) -> Optional[str]:
    """The dataset file a flat cache was made from (None: written by an older dawm, or unreadable)."""
    try:
        with np.load(path) as z:
            return str(z["_source"]) if "_source" in z.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def prune_flat_caches(dataset_id: Optional[str] = None, source: Optional[Path] = None,
                      keep: Optional[Path] = None) -> None:
    """Remove flat caches that can no longer serve a load, so each dataset keeps at most one.

    Removed: a cache whose source dataset file is gone (``minari delete`` removes the folder); with
    ``dataset_id``, also its other copies made from the same file ``source`` (earlier versions of a rewritten
    dataset) or that recorded no source (older dawm). Caches of a same-named dataset under another Minari root
    are kept: they record their own source. ``keep`` is never removed.

    Args:
        dataset_id: limit the scan to this id's caches (None: all caches, source check only).
        source: the id's current ``main_data.hdf5``.
        keep: the cache file the current version of the dataset uses.
    """
    folder = dawm_home() / "cache" / "minari"
    if not folder.is_dir():
        return
    stem = dataset_id.replace("/", "__") if dataset_id is not None else None
    for f in folder.iterdir():
        m = _CACHE_NAME.fullmatch(f.name)
        if not m or f == keep or (stem is not None and m.group("stem") != stem):
            continue
        recorded = _cache_source(f)
        gone = recorded is not None and not Path(recorded).is_file()
        older = stem is not None and (recorded is None or (source is not None and Path(recorded).resolve() == source.resolve()))
        if gone or older:
            with contextlib.suppress(OSError):  # a read-only cache folder only costs disk space
                f.unlink()


def _minari_root_text() -> str:

    return str(minari_root())


# --- D4RL hdf5 ------------------------------------------------------------------------------------
def load_d4rl_hdf5(path: str | os.PathLike, task: Optional[str] = None) -> OfflineDataset:
    """Load a D4RL hdf5 file.

    Episodes end at ``terminals | timeouts``. Without ``next_observations`` the next state of an
    episode's last step is unknown, so that step is dropped (D4RL's own ``qlearning_dataset`` does the
    same); with it, every step is kept.
    """
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - h5py comes with minari
        raise ImportError("reading D4RL hdf5 files needs h5py: pip install h5py") from err
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"D4RL file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as err:  # not an HDF5 file, or a truncated one
        raise ValueError(f"{path} is not a readable HDF5 file ({err}); expected a D4RL hdf5 dataset") from err
    with f:
        missing = [k for k in (*_D4RL_REQUIRED, "timeouts") if k not in f]
        if missing:
            raise ValueError(f"{path}: missing D4RL keys {missing}; found {sorted(f.keys())}")
        arrays = {k: np.asarray(f[k]) for k in (*_D4RL_REQUIRED, "timeouts", "next_observations") if k in f}
    return _from_flat(arrays, task, str(path), has_timeouts=True)


# --- qlearning npz --------------------------------------------------------------------------------
def load_npz(path: str | os.PathLike, task: Optional[str] = None) -> OfflineDataset:
    """Load an npz in D4RL ``qlearning_dataset`` layout (``timeouts``, ``seeds``, ``episode_offsets`` optional).

    Without timeouts or offsets, an episode boundary is placed after every terminal and wherever
    ``next_observations[i] != observations[i + 1]``: exact for data that came from real rollouts.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"npz file {path} does not exist")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:  # numpy says "pickled data" for any non-npz file
        raise ValueError(f"{path} is not a readable .npz archive ({type(err).__name__}); expected a D4RL "
                         "qlearning_dataset npz (numpy.savez)") from err
    if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy saved under an .npz name
        raise ValueError(f"{path} holds a single array, not an .npz archive of qlearning_dataset keys")
    with z:
        need = (*_D4RL_REQUIRED, "next_observations")
        missing = [k for k in need if k not in z.files]
        if missing:
            raise ValueError(f"{path}: missing qlearning_dataset keys {missing}; found {sorted(z.files)}")
        try:
            arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile) as err:  # a damaged member, or object arrays
            raise ValueError(f"{path}: cannot read its arrays ({err})") from err
    return _from_flat(arrays, task, str(path), has_timeouts="timeouts" in arrays)


def save_npz(data: OfflineDataset, path: str | os.PathLike) -> None:
    """Write ``data`` as a qlearning-layout npz (plus timeouts, seeds and offsets), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(
        tmp, observations=data.observations, actions=data.actions, rewards=data.rewards,
        next_observations=data.next_observations, terminals=data.terminations, timeouts=data.truncations,
        episode_offsets=data.episode_offsets, seeds=data.seeds, task=np.array(data.task),
    )
    os.replace(tmp, path)


# --- shared ---------------------------------------------------------------------------------------
def _from_flat(a: dict, task: Optional[str], source: str, has_timeouts: bool) -> OfflineDataset:
    obs, act = np.asarray(a["observations"], np.float32), np.asarray(a["actions"], np.float32)
    n = len(obs)
    if obs.ndim != 2 or act.ndim != 2:
        raise ValueError(f"{source}: observations and actions must be 2-D, got {obs.shape} and {act.shape}")
    for k in ("actions", "rewards", "terminals", "timeouts", "next_observations", "seeds"):
        if k in a and np.ndim(a[k]) == 0:
            raise ValueError(f"{source}: {k} is a scalar; expected one value per transition")
    for k in ("actions", "rewards", "terminals", "timeouts", "next_observations"):
        if k in a and len(a[k]) != n:
            raise ValueError(f"{source}: {k} has {len(a[k])} rows but observations has {n}")
    for k in ("rewards", "terminals", "timeouts"):
        # (N,) or (N, 1) only: flattening an (N, 2) array would silently pair transitions with the wrong values
        if k in a and not (np.ndim(a[k]) == 1 or (np.ndim(a[k]) == 2 and np.shape(a[k])[1] == 1)):
            raise ValueError(f"{source}: {k} has shape {np.shape(a[k])}; expected ({n},) or ({n}, 1), one value "
                             "per transition")
    if "next_observations" in a and np.shape(a["next_observations"]) != obs.shape:
        raise ValueError(f"{source}: next_observations has shape {np.shape(a['next_observations'])}, observations "
                         f"{obs.shape}; they must match")
    rew = np.asarray(a["rewards"], np.float32).reshape(-1)
    term = np.asarray(a["terminals"]).astype(bool).reshape(-1)
    tout = np.asarray(a["timeouts"]).astype(bool).reshape(-1) if has_timeouts else np.zeros(n, bool)
    nxt = np.asarray(a["next_observations"], np.float32) if "next_observations" in a else None
    if "episode_offsets" in a:
        offsets = np.asarray(a["episode_offsets"], np.int64)
        if (offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != n
                or np.any(np.diff(offsets) < 1)):
            raise ValueError(f"{source}: episode_offsets must rise strictly from 0 to the {n} transitions, got "
                             f"{len(offsets)} offsets from {offsets[:1].tolist()} to {offsets[-1:].tolist()}")
    else:
        ends = term | tout
        if nxt is not None:  # a state that does not continue into the next row ends an episode
            ends[:-1] |= np.any(nxt[:-1] != obs[1:], axis=1)
        ends[-1] = True
        offsets = np.concatenate([[0], np.flatnonzero(ends) + 1]).astype(np.int64)
    keep = np.ones(n, dtype=bool)
    if nxt is None:
        # hdf5 without next_observations: s' = next row inside an episode; last steps are unknown
        nxt = np.empty_like(obs)
        nxt[:-1] = obs[1:]
        keep[offsets[1:] - 1] = False
        lengths = np.diff(offsets) - 1
        # the dropped step's flags move to the new last step only as a truncation (we cut there)
        term = np.zeros(n, bool)
        tout = np.zeros(n, bool)
        new_ends = offsets[1:] - 2
        valid = lengths > 0
        tout[new_ends[valid]] = True
        offsets = np.concatenate([[0], np.cumsum(lengths[valid])]).astype(np.int64)
    trunc = tout.copy()
    last = offsets[1:] - 1
    idx = np.flatnonzero(keep)
    term, trunc = term[idx], trunc[idx]
    trunc[last] |= ~term[last]
    seeds = np.asarray(a["seeds"], np.int64) if "seeds" in a else np.full(len(offsets) - 1, -1, np.int64)
    recorded = str(a["task"]) if "task" in a else ""
    task_name = task or recorded
    data = OfflineDataset(
        task=task_name, observations=obs[idx], actions=act[idx], rewards=rew[idx], next_observations=nxt[idx],
        terminations=term, truncations=trunc, episode_offsets=offsets, seeds=seeds, source=source,
    )
    _check_task(data, task_name, source, recorded)
    return data


def _check_task(data: OfflineDataset, task_name: str, source: str, recorded: str = "") -> None:
    """Refuse a task whose dimensions the data does not have, or that differs from the one the data records."""
    if not task_name:
        return
    spec = get_task(task_name)
    if data.obs_dim != spec.obs_dim or data.act_dim != spec.act_dim:
        raise ValueError(
            f"{source}: data has obs_dim {data.obs_dim} / act_dim {data.act_dim}, but task {spec.name} needs "
            f"{spec.obs_dim} / {spec.act_dim}; pass the right --task"
        )
    if recorded and get_task(recorded).name != spec.name:  # walker2d and halfcheetah share their dimensions
        raise ValueError(f"{source} records task {get_task(recorded).name}, not {spec.name}; omit --task or pass "
                         f"--task {get_task(recorded).name}")
