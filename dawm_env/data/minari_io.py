"""Writing Minari datasets atomically, and fast.

Minari writes a dataset in place; an interrupted write leaves a half-written folder that
``minari list local`` then trips over. dawm writes into a staging root on the same filesystem and
renames the finished folder into place, so a dataset id is either absent or complete.

Speed: Minari's own HDF5 writer (``create_dataset_from_buffers`` / ``storage.update_episodes``) has a
fixed cost per episode, whatever the episode length: per episode it creates a group and five to seven
*chunked, resizable* datasets through h5py's high-level API (each with a chunk index on disk). At millions of short generated
episodes that dominates everything else. :class:`MinariStreamWriter` writes the very same layout
(``episode_{i}`` groups with ``id`` / ``total_steps`` / ``seed`` attributes, ``observations``,
``actions``, ``rewards``, ``terminations``, ``truncations`` and an ``infos`` group) through h5py's
low-level API, with small arrays in HDF5's *compact* layout (stored inside the object header, no
separate allocation) and larger ones contiguous: several times faster and smaller per short episode
(``benchmarks/generation_speed.py`` measures it).
Minari reads it with its unmodified reader. The only difference: the arrays are not resizable, so
``storage.update_episodes`` cannot later *extend an existing episode* (adding new episodes works).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Mapping, Optional, Sequence

import numpy as np

from dawm_env.data.records import OfflineDataset
from dawm_env.paths import check_writable_dir, exclusive_lock, minari_root, minari_root_at
from dawm_env.tasks import TaskSpec, get_task, task_from_env_id

log = logging.getLogger(__name__)

#: Metadata key under which dawm stores its own provenance record (a JSON string).
DAWM_METADATA_KEY = "dawm"

#: Arrays up to this many bytes go into HDF5's compact layout (kept in the object header, whose hard
#: limit is 64 KiB for everything it holds); larger ones are stored contiguously.
_COMPACT_MAX_BYTES = 16 * 1024


def validate_dataset_id(dataset_id: str) -> None:
    """Check ``dataset_id`` is a Minari id that Minari can write: ``namespace/name-vN`` (namespace optional).

    The one id check of every dawm dataset writer (``data build``, ``generate``, :class:`MinariStreamWriter`),
    run before any work: Minari itself refuses a bad namespace only when the finished dataset is registered.

    Raises:
        ValueError: naming the problem and an example of a good id.
    """
    from minari.dataset.minari_dataset import DATASET_ID_RE
    from minari.namespace import NAMESPACE_REGEX, namespace_hierarchy

    example = "e.g. dawm-d4rl/hopper/medium-v0"
    if not isinstance(dataset_id, str) or not dataset_id.strip():
        raise ValueError(f"the dataset id is empty; give a Minari id namespace/name-vN, {example}")
    match = DATASET_ID_RE.fullmatch(dataset_id)
    if not match:
        raise ValueError(f"invalid Minari dataset id {dataset_id!r}: expected (namespace/)name-vN made of letters, "
                         f"digits, '-' and '_', with a namespace of at least 2 characters, {example}")
    if match.group("version") is None:
        raise ValueError(f"Minari dataset id {dataset_id!r} needs a version suffix, e.g. {dataset_id}-v0")
    namespace = match.group("namespace")
    for ns in namespace_hierarchy(namespace) if namespace else ():
        if not NAMESPACE_REGEX.fullmatch(ns):  # Minari checks each level only when it registers the dataset
            raise ValueError(f"invalid Minari dataset id {dataset_id!r}: Minari rejects its namespace {ns!r} (every "
                             f"namespace level from the top needs at least 2 characters), {example}")


def check_dataset_output(dataset_id: str) -> None:
    """Check, before any work, that dataset ``dataset_id`` could be written: a valid id and a writable Minari root.

    Tests the Minari root and the staging area beside it (:func:`staging_parent`); creates neither.

    Raises:
        ValueError: an invalid id (:func:`validate_dataset_id`), or a root that cannot be written (with the fix).
    """
    validate_dataset_id(dataset_id)
    hint = "set MINARI_DATASETS_PATH to a writable folder"
    check_writable_dir(minari_root(), "datasets into the Minari root", hint)
    check_writable_dir(staging_parent(), "dawm's staging area beside the Minari root", hint)


def dataset_exists(dataset_id: str) -> bool:
    """Whether a complete local dataset with this id exists."""
    return (minari_root() / dataset_id / "metadata.json").is_file() or (minari_root() / dataset_id / "data").is_dir()


def staging_parent() -> Path:
    """Folder holding dawm's staging areas: beside (never inside) the Minari root, so even a hard kill
    leaves nothing that ``minari list local`` would trip over."""
    root = minari_root()
    return root.parent / f".{root.name}-dawm-staging"


# --- one writer per dataset id, and what interrupted writers leave behind ------------------------------
def dataset_lock(dataset_id: str, *, shared: bool = False, flag: Optional[str] = None,
                 wait: bool = False) -> ContextManager[Path]:
    """The lock every dawm writer of ``dataset_id`` holds for its whole run: one writer per output id.

    An advisory ``flock`` on ``<Minari root>/.locks/<dataset id>.lock`` (hidden: Minari skips it), dropped by
    the OS when the holder dies. Nested requests in the process that holds it succeed at once, so a
    :class:`MinariStreamWriter` inside ``dawm data build`` / ``dawm generate`` needs no lock of its own.

    Args:
        dataset_id: the output id.
        shared: a shared lock, held by each shard of one ``dawm generate`` run (they write one dataset together).
        flag: the option that names the id, for the message (``--id``, ``--out``).
        wait: block until the lock is free instead of failing (``dawm experiment``: a prerequisite another
            process is creating is waited for, then reused).

    Raises:
        paths.LockHeldError: (an OSError, one line) another process holds it and ``wait`` is False.
    """
    root = minari_root() / ".locks"
    return exclusive_lock(root / f"{dataset_id}.lock", f"dataset {dataset_id}", shared=shared, wait=wait, prune_to=root,
                          hint=f"wait for it to finish or choose another {flag or 'dataset id'}")


def _old_copies(final: Path) -> list[Path]:
    """Hidden ``.NAME.old-*`` copies an ``--overwrite`` set aside for ``final``, oldest first."""
    if not final.parent.is_dir():
        return []
    olds = [p for p in final.parent.glob(f".{final.name}.old-*") if p.is_dir()]
    return sorted(olds, key=lambda p: p.stat().st_mtime_ns)


def restore_interrupted_overwrite(dataset_id: str) -> bool:
    """Undo what an ``--overwrite`` killed in its final swap left: never a missing id.

    The swap renames the old dataset to a hidden ``.NAME.old-*`` beside it, moves the new one in, then removes
    the old. Killed between the two renames, the id is missing: the old copy is moved back. Killed after them,
    both exist: the old copy is removed. Takes the id's lock (at once: a live writer's swap is left alone).

    Returns:
        Whether the id was restored from its old copy.

    Raises:
        paths.LockHeldError: a live writer holds the id (only when there is something to tidy).
    """
    final = minari_root() / dataset_id
    if not _old_copies(final):  # the usual case: nothing to do, no lock file created
        return False
    restored = False
    with dataset_lock(dataset_id):
        olds = _old_copies(final)
        if olds and not (final / "data").is_dir():
            newest = olds.pop()
            if final.exists():  # an empty or half-made folder: the old copy is the complete one
                shutil.rmtree(final)
            newest.rename(final)
            restored = True
            log.warning("restored %s from %s: an earlier --overwrite was interrupted before the new dataset was "
                        "in place", dataset_id, newest.name)
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)
    return restored


def try_restore_interrupted_overwrite(dataset_id: str) -> None:
    """:func:`restore_interrupted_overwrite` for readers: skipped while a writer holds the id or the root is
    read-only (then the id is simply reported as it is)."""
    with contextlib.suppress(OSError):  # LockHeldError included
        restore_interrupted_overwrite(dataset_id)


def restore_all_interrupted_overwrites() -> None:
    """:func:`try_restore_interrupted_overwrite` for every ``.NAME.old-*`` under the Minari root (for listings)."""
    root = minari_root()
    pattern = re.compile(r"\.(?P<name>.+)\.old-[0-9a-f]{32}")
    found = set()
    for folder, dirs, _ in os.walk(root):
        here = Path(folder)
        if (here / "data").is_dir():  # a dataset: nothing of interest inside
            dirs[:] = []
            continue
        for d in list(dirs):
            m = pattern.fullmatch(d)
            if m:
                found.add((here / m.group("name")).relative_to(root).as_posix())
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    for dataset_id in sorted(found):
        try_restore_interrupted_overwrite(dataset_id)


def remove_stale_staging(dataset_id: str) -> None:
    """Remove the staging folders earlier, killed :class:`MinariStreamWriter` runs of ``dataset_id`` left.

    Call it only under the id's lock (:func:`dataset_lock`): then no live writer of this id can own one.
    A writer's staging folder is ``<staging parent>/<32 hex>/`` holding ``<dataset_id>/``.
    """
    parent = staging_parent()
    if not parent.is_dir():
        return
    for folder in parent.iterdir():
        if re.fullmatch(r"[0-9a-f]{32}", folder.name) and (folder / dataset_id).is_dir():
            log.info("removing the staging folder %s of an interrupted write of %s", folder, dataset_id)
            shutil.rmtree(folder, ignore_errors=True)


def write_once(dataset_id: str, already_written: Callable[[], bool], write: Callable[[], str]) -> str:
    """Run ``write`` (which writes ``dataset_id`` and returns it) unless ``already_written()`` says it is done.

    The shared protocol of dawm's dataset writers: a read-only check first (a rerun works even where the root
    cannot be written), then under the id's lock (a second writer fails at once) the leftovers of killed runs are
    tidied and the check repeated, since another process may have finished the id meanwhile.
    """
    validate_dataset_id(dataset_id)
    if already_written():
        return dataset_id
    check_dataset_output(dataset_id)  # a read-only Minari root fails before the work, not after
    with dataset_lock(dataset_id, flag="--id"):
        restore_interrupted_overwrite(dataset_id)
        remove_stale_staging(dataset_id)
        if already_written():
            return dataset_id
        return write()


# --- fast episode-group writing -------------------------------------------------------------------
class _EpisodeGroupWriter:
    """Writes Minari-layout ``episode_{i}`` groups into an open HDF5 file with h5py's low-level API.

    Args:
        fid: an ``h5py.h5f.FileID`` opened for writing.
    """

    def __init__(self, fid: "object") -> None:
        import h5py

        self._h5 = h5py
        self.fid = fid
        self._compact = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        self._compact.set_layout(h5py.h5d.COMPACT)
        self._types: dict = {}
        self._spaces: dict = {}
        self._i64 = h5py.h5t.py_create(np.dtype(np.int64))
        self._scalar = h5py.h5s.create(h5py.h5s.SCALAR)

    def _put(self, parent: "object", name: bytes, arr: np.ndarray) -> None:
        h5 = self._h5
        arr = np.ascontiguousarray(arr)
        tid = self._types.get(arr.dtype)
        if tid is None:
            tid = self._types[arr.dtype] = h5.h5t.py_create(arr.dtype, logical=True)
        sid = self._spaces.get(arr.shape)
        if sid is None:
            sid = self._spaces[arr.shape] = h5.h5s.create_simple(arr.shape)
        dcpl = self._compact if arr.nbytes <= _COMPACT_MAX_BYTES else None
        ds = h5.h5d.create(parent, name, tid, sid, dcpl=dcpl)
        ds.write(h5.h5s.ALL, h5.h5s.ALL, arr)

    def _attr(self, gid: "object", name: bytes, value: int) -> None:
        a = self._h5.h5a.create(gid, name, self._i64, self._scalar)
        a.write(np.array(value, dtype=np.int64))

    def write(self, data: OfflineDataset, step_infos: Optional[Mapping[str, np.ndarray]], first_id: int) -> None:
        """Write every episode of ``data`` as groups ``episode_{first_id + e}``.

        Args:
            data: the episodes (flat transitions + offsets).
            step_infos: optional ``{name: (N, ...) array}`` per transition; stored per episode with
                ``T + 1`` rows (Minari keeps one info row per observation: the last row is repeated
                for the final state).
            first_id: id of the first episode written.
        """
        h5 = self._h5
        off = data.episode_offsets
        infos = {k.encode(): np.asarray(v) for k, v in (step_infos or {}).items()}
        for k, v in infos.items():
            if len(v) != data.num_transitions:
                raise ValueError(f"step info {k.decode()!r} has {len(v)} rows for {data.num_transitions} transitions")
        obs, nxt = data.observations, data.next_observations
        for e in range(data.num_episodes):
            s, t = int(off[e]), int(off[e + 1])
            gid = h5.h5g.create(self.fid, f"episode_{first_id + e}".encode())
            self._attr(gid, b"id", first_id + e)
            self._attr(gid, b"total_steps", t - s)
            if data.seeds[e] >= 0:
                self._attr(gid, b"seed", int(data.seeds[e]))
            episode_obs = np.empty((t - s + 1, obs.shape[1]), dtype=obs.dtype)
            episode_obs[:-1] = obs[s:t]
            episode_obs[-1] = nxt[t - 1]
            self._put(gid, b"observations", episode_obs)
            self._put(gid, b"actions", data.actions[s:t])
            self._put(gid, b"rewards", data.rewards[s:t])
            self._put(gid, b"terminations", data.terminations[s:t])
            self._put(gid, b"truncations", data.truncations[s:t])
            if infos:
                ig = h5.h5g.create(gid, b"infos")
                for k, v in infos.items():
                    self._put(ig, k, np.concatenate([v[s:t], v[t - 1: t]]))


def write_episode_file(path: str | os.PathLike, data: OfflineDataset,
                       step_infos: Optional[Mapping[str, np.ndarray]] = None) -> None:
    """Write ``data`` as a standalone HDF5 *episode file*, atomically (temp file + rename).

    The file holds ``episode_0 .. episode_{E-1}`` in Minari's ``main_data.hdf5`` layout plus root
    attributes ``num_episodes`` / ``num_steps``; :meth:`MinariStreamWriter.append_episode_file` copies
    its episodes into a dataset without decoding them. Used for resumable / sharded generation.

    Args:
        path: destination file.
        data: the episodes.
        step_infos: optional ``{name: (N, ...) array}`` per-transition infos.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        fid = h5py.h5f.create(str(tmp).encode(), h5py.h5f.ACC_TRUNC)
        try:
            w = _EpisodeGroupWriter(fid)
            w.write(data, step_infos, first_id=0)
            w._attr(fid, b"num_episodes", data.num_episodes)
            w._attr(fid, b"num_steps", data.num_transitions)
        finally:
            fid.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


#: Above about this many episodes, Minari's own reader (h5py's default 32 MB metadata cache) slows to ~20
#: episodes/s: measured 21/s on a 2M-episode generated dataset; dawm's reader opens files via _open_hdf5.
SLOW_MINARI_READ_EPISODES = 1_200_000


def _open_hdf5(path: str | os.PathLike, writable: bool = False) -> "object":
    """Low-level h5py file id of a Minari ``main_data.hdf5`` with a metadata cache that fits big datasets.

    Minari's root group keeps every episode name in one HDF5 local heap (~24 bytes per episode). HDF5's
    metadata cache holds at most 32 MB by default, so past ~1.3M episodes (2M generated H = 7 rollouts)
    the heap no longer fits and every episode lookup re-reads and rewrites it: a merge fell from ~1000 to
    ~8 episodes/s. HDF5's largest ceiling, 128 MB (used only as needed), covers ~5M episodes.
    """
    import h5py

    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    mdc = fapl.get_mdc_config()
    mdc.max_size = 128 * 1024 * 1024  # H5C__MAX_MAX_CACHE_SIZE
    fapl.set_mdc_config(mdc)
    flags = h5py.h5f.ACC_RDWR if writable else h5py.h5f.ACC_RDONLY
    return h5py.h5f.open(str(path).encode(), flags, fapl=fapl)


def iter_episodes_fast(dataset_id: str, indices: Optional[Sequence[int]] = None,
                       with_infos: bool = True) -> Iterator[dict]:
    """Episodes of a local HDF5 Minari dataset with flat (Box) spaces, read with h5py's low-level API.

    Several times faster per episode than Minari's ``iterate_episodes`` (for Minari's own files and dawm's
    alike): it skips the space decoding and the high-level h5py objects. Datasets with dict / tuple spaces or
    another storage format fall back to Minari's reader.

    Args:
        dataset_id: local Minari id.
        indices: episode indices to read, in this order (default: all).
        with_infos: also read the ``infos`` group (flat keys only).

    Yields:
        ``{"id": int, "observations": (T+1, obs), "actions": (T, act), "rewards": (T,),
        "terminations": (T,), "truncations": (T,), "infos": {name: (T+1, ...)}, "seed": the reset seed
        or None}``.
    """
    import gymnasium as gym
    import h5py
    import minari

    ds = minari.load_dataset(dataset_id)
    idx = range(ds.total_episodes) if indices is None else indices
    path = Path(ds.storage.data_path) / "main_data.hdf5"
    flat = ds.storage.metadata.get("data_format") == "hdf5" and all(
        isinstance(s, gym.spaces.Box) for s in (ds.observation_space, ds.action_space))
    if not flat:
        for ep, meta in zip(ds.storage.get_episodes(idx), ds.storage.get_episode_metadata(idx)):
            yield {**ep, "seed": meta.get("seed")}
        return

    def read(gid: "object", name: bytes) -> np.ndarray:
        d = h5py.h5d.open(gid, name)
        out = np.empty(d.shape, dtype=d.dtype)
        d.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
        return out

    fid = _open_hdf5(path)
    try:
        for e in idx:
            gid = h5py.h5g.open(fid, f"episode_{int(e)}".encode())
            seed = None
            if h5py.h5a.exists(gid, b"seed"):
                attr = h5py.h5a.open(gid, b"seed")
                value = np.empty(attr.shape, dtype=attr.dtype)
                attr.read(value)
                seed = int(value) if value.dtype.kind in "iu" else None  # Minari may store "None"
            ep = {"id": int(e), "seed": seed}
            for key in (b"observations", b"actions", b"rewards", b"terminations", b"truncations"):
                ep[key.decode()] = read(gid, key)
            infos: dict = {}
            if with_infos and gid.links.exists(b"infos"):
                ig = h5py.h5g.open(gid, b"infos")
                for j in range(ig.get_num_objs()):
                    name = ig.get_objname_by_idx(j)
                    if ig.get_objtype_by_idx(j) == h5py.h5g.DATASET:
                        infos[name.decode()] = read(ig, name)
            ep["infos"] = infos
            yield ep
    finally:
        fid.close()


def read_episode_file_counts(path: str | os.PathLike) -> tuple[int, int]:
    """``(num_episodes, num_steps)`` of an episode file written by :func:`write_episode_file`."""
    import h5py

    with h5py.File(path, "r") as f:
        return int(f.attrs["num_episodes"]), int(f.attrs["num_steps"])


# --- streaming dataset writer ---------------------------------------------------------------------
class MinariStreamWriter:
    """Builds one Minari dataset from chunks of episodes, in a staging folder, then registers it atomically.

    Memory stays bounded by one chunk: episodes go to disk as they are appended. Nothing appears
    under the Minari root until :meth:`finalize`; an exception (or :meth:`abort`) removes the staging
    folder. ``eval_env`` and D4RL's reference returns of ``task`` are stored so
    ``minari.get_normalized_score`` works; ``provenance`` goes under the ``dawm`` metadata key.

    Usage::

        with MinariStreamWriter("dawm-gen/hopper/x-v0", "hopper", algorithm_name="DAWM",
                                description="...", provenance={...}) as w:
            for chunk, infos in chunks:
                w.append(chunk, infos)          # (N, ...) flat transitions + per-step infos
            w.finalize()

    Args:
        dataset_id: Minari id with version (``namespace/name-vN``).
        task: task name or spec (decides ``env`` / ``eval_env`` and the reference returns).
        algorithm_name: what produced the data.
        description: free text.
        provenance: JSON-serialisable record stored under the ``dawm`` metadata key (may be replaced
            at :meth:`finalize`).
        overwrite: replace an existing dataset with this id (the old one is removed only after the new
            one is complete).
        minari_kwargs: arguments of ``minari.create_dataset_from_buffers`` replacing dawm's (``env``,
            ``eval_env``, ``ref_min_score``, ``ref_max_score``, ``observation_space``, ``action_space``), e.g. to
            keep those of combined datasets.

    The writer holds the id's lock (:func:`dataset_lock`) from construction to :meth:`finalize` / :meth:`abort`,
    and first tidies what killed writers of this id left (:func:`restore_interrupted_overwrite`,
    :func:`remove_stale_staging`).

    Raises:
        ValueError: invalid id, or a Minari root that cannot be written. FileExistsError: the id exists and
        ``overwrite`` is False. paths.LockHeldError: another process is writing this id.
    """

    def __init__(self, dataset_id: str, task: str | TaskSpec, *, algorithm_name: str, description: str,
                 provenance: Optional[dict] = None, overwrite: bool = False,
                 minari_kwargs: Optional[Mapping[str, Any]] = None) -> None:
        import minari

        check_dataset_output(dataset_id)
        self.dataset_id = dataset_id
        self.task = task if isinstance(task, TaskSpec) else get_task(task)
        self.provenance = dict(provenance or {})
        self.overwrite = overwrite
        self.num_episodes = 0
        self.num_steps = 0
        self._final = minari_root() / dataset_id
        self._staging_parent = staging_parent()
        self._staging = self._staging_parent / uuid.uuid4().hex
        self._fid = None
        self._done = False
        self._lock = contextlib.ExitStack()
        try:
            self._lock.enter_context(dataset_lock(dataset_id))
            restore_interrupted_overwrite(dataset_id)
            remove_stale_staging(dataset_id)
            if self._final.exists() and not overwrite:
                raise FileExistsError(
                    f"Minari dataset {dataset_id!r} already exists at {self._final}; choose another id or remove "
                    f"it (minari delete {dataset_id})"
                )
            kwargs: dict[str, Any] = dict(
                env=self.task.env_id, eval_env=self.task.env_id, ref_min_score=self.task.ref_min_score,
                ref_max_score=self.task.ref_max_score)
            kwargs.update(minari_kwargs or {})
            with minari_root_at(self._staging), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "code_permalink is None" and friends
                ds = minari.create_dataset_from_buffers(
                    dataset_id=dataset_id, buffer=[], algorithm_name=algorithm_name, author="dawm",
                    code_permalink=None, description=description, requirements=["mujoco>=3", "gymnasium>=1"],
                    **kwargs,
                )
            self._storage = ds.storage
            self._fid = _open_hdf5(Path(ds.storage.data_path) / "main_data.hdf5", writable=True)
            self._writer = _EpisodeGroupWriter(self._fid)
        except BaseException:
            self._cleanup()
            raise

    # --- appending ----------------------------------------------------------------------------
    def append(self, data: OfflineDataset, step_infos: Optional[Mapping[str, np.ndarray]] = None) -> None:
        """Write the episodes of ``data`` (and optional ``{name: (N, ...)}`` per-transition infos)."""
        self._check_open()
        if data.task and get_task(data.task).name != self.task.name:
            raise ValueError(f"cannot append {data.task} episodes to a {self.task.name} dataset")
        if data.obs_dim != self.task.obs_dim or data.act_dim != self.task.act_dim:
            raise ValueError(f"episodes have obs/act dims {data.obs_dim}/{data.act_dim}; {self.task.name} needs "
                             f"{self.task.obs_dim}/{self.task.act_dim}")
        self._writer.write(data, step_infos, first_id=self.num_episodes)
        self.num_episodes += data.num_episodes
        self.num_steps += data.num_transitions

    def append_episode_file(self, path: str | os.PathLike) -> None:
        """Copy every episode of a :func:`write_episode_file` file, renumbered after the current ones.

        HDF5 copies the groups as they are (no decode / re-encode).
        """
        import h5py

        self._check_open()
        n_eps, n_steps = read_episode_file_counts(path)
        src = h5py.h5f.open(str(path).encode(), h5py.h5f.ACC_RDONLY)
        try:
            self._copy_episode_groups(src, n_eps, n_steps)
        finally:
            src.close()

    def _copy_episode_groups(self, src: Any, n_eps: int, n_steps: int) -> None:
        """Copy ``episode_0 .. episode_{n_eps-1}`` of the open HDF5 file ``src`` after the current episodes."""
        import h5py

        for j in range(n_eps):
            k = self.num_episodes + j
            name = f"episode_{k}".encode()
            h5py.h5o.copy(src, f"episode_{j}".encode(), self._fid, name)
            gid = h5py.h5g.open(self._fid, name)
            h5py.h5a.open(gid, b"id").write(np.array(k, dtype=np.int64))  # Minari's episode id = its new index
        self.num_episodes += n_eps
        self.num_steps += n_steps

    def append_dataset(self, dataset_id: str) -> None:
        """Copy every episode of the local Minari dataset ``dataset_id``, renumbered after the current ones.

        HDF5 datasets are copied group by group (no decoding; per-step infos and seeds kept); other storage
        formats are read through Minari and re-written (their infos are not kept).
        """
        import minari

        self._check_open()
        ds = minari.load_dataset(dataset_id)
        path = Path(ds.storage.data_path) / "main_data.hdf5"
        if ds.storage.metadata.get("data_format") != "hdf5" or not path.is_file():
            eps = list(iter_episodes_fast(dataset_id, with_infos=False))
            self.append(OfflineDataset.from_episodes(
                self.task.name, *([ep[k] for ep in eps] for k in ("observations", "actions", "rewards",
                                                                  "terminations", "truncations")),
                seeds=[ep["seed"] for ep in eps], source=dataset_id))
            return
        src = _open_hdf5(path)
        try:
            self._copy_episode_groups(src, int(ds.total_episodes), int(ds.total_steps))
        finally:
            src.close()

    # --- finishing ----------------------------------------------------------------------------
    def finalize(self, provenance: Optional[dict] = None, extra_metadata: Optional[Mapping[str, Any]] = None) -> str:
        """Record totals and provenance, then move the dataset into the Minari root atomically.

        Args:
            provenance: replaces the constructor's provenance record when given.
            extra_metadata: more Minari metadata keys to store (e.g. ``combined_datasets``).

        Returns:
            The dataset id.
        """
        from minari.namespace import create_namespace, list_local_namespaces, namespace_hierarchy

        self._check_open()
        if self.num_episodes == 0:
            raise ValueError(f"dataset {self.dataset_id!r} would hold no episodes")
        if provenance is not None:
            self.provenance = dict(provenance)
        try:
            self._fid.close()
            self._fid = None
            self._storage.update_metadata({
                "total_episodes": int(self.num_episodes), "total_steps": int(self.num_steps),
                "dataset_size": self._storage.get_size(),
                DAWM_METADATA_KEY: json.dumps(self.provenance, sort_keys=True, default=str),
                **(extra_metadata or {}),
            })
            namespace = self.dataset_id.rsplit("/", 1)[0] if "/" in self.dataset_id else None
            if namespace:
                for ns in namespace_hierarchy(namespace):
                    if ns not in list_local_namespaces():
                        create_namespace(ns)
            final = self._final
            if final.exists() and not self.overwrite:
                raise FileExistsError(f"Minari dataset {self.dataset_id!r} appeared at {final} while writing")
            final.parent.mkdir(parents=True, exist_ok=True)
            old = None
            if final.exists():
                # set aside, not deleted: a kill before the move below leaves it for
                # restore_interrupted_overwrite to put back at the next start or load
                old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
                final.rename(old)
            try:
                shutil.move(str(self._staging / self.dataset_id), str(final))  # a rename on the same filesystem
            except BaseException:
                if old is not None and not final.exists():
                    old.rename(final)  # the new dataset could not be moved in: keep the old one
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            self._done = True
        finally:
            self._cleanup()
        return self.dataset_id

    def abort(self) -> None:
        """Discard everything written so far (idempotent)."""
        self._cleanup()

    def __enter__(self) -> "MinariStreamWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._cleanup()

    def _check_open(self) -> None:
        if self._fid is None:
            raise RuntimeError(f"stream writer for {self.dataset_id!r} is already finalised or aborted")

    def _cleanup(self) -> None:
        if self._fid is not None:
            with contextlib.suppress(Exception):
                self._fid.close()
            self._fid = None
        shutil.rmtree(self._staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            self._staging_parent.rmdir()
        self._lock.close()  # idempotent


def write_minari_dataset(
    data: OfflineDataset,
    dataset_id: str,
    *,
    algorithm_name: str,
    description: str,
    provenance: dict,
    step_infos: Optional[dict[str, np.ndarray]] = None,
    overwrite: bool = False,
) -> str:
    """Write ``data`` as a local Minari dataset, atomically.

    ``eval_env`` and D4RL's reference returns are stored so ``minari.get_normalized_score`` works;
    per-episode reset seeds go into each episode; ``provenance`` (JSON-serialisable) is stored under
    the ``dawm`` metadata key. Written through :class:`MinariStreamWriter` (faster than Minari's
    own writer, same on-disk layout).

    Args:
        data: the dataset; its task decides ``eval_env`` and the reference returns.
        dataset_id: Minari id with version.
        algorithm_name: what produced the data (policy name, ``DAWM``...).
        description: free text.
        provenance: builder / generator configuration to record.
        step_infos: optional ``{name: (N, ...) array}`` per-transition infos, stored per episode.
        overwrite: replace an existing dataset with this id (the old one is removed only after the new one
            is complete).

    Returns:
        The dataset id.
    """
    with MinariStreamWriter(dataset_id, data.task, algorithm_name=algorithm_name, description=description,
                            provenance=provenance, overwrite=overwrite) as writer:
        writer.append(data, step_infos)
        return writer.finalize()


def read_provenance(dataset_id: str) -> dict:
    """dawm's provenance record of a local Minari dataset ({} for datasets dawm did not write)."""
    import minari

    meta = minari.load_dataset(dataset_id).storage.metadata
    raw = meta.get(DAWM_METADATA_KEY)
    return json.loads(raw) if raw else {}


# --- combining datasets ---------------------------------------------------------------------------
#: ``kind`` in the provenance record of a dataset written by :func:`combine_datasets`.
COMBINED_KIND = "dawm-combined"


def combine_datasets(dataset_ids: Sequence[str], out: str, *, overwrite: bool = False,
                     description: Optional[str] = None) -> str:
    """Write the episodes of several local Minari datasets, in order, as one new dataset ``out`` (atomically).

    Unlike ``minari.combine_datasets`` it keeps what scoring and evaluation need: the inputs' reference
    returns (``ref_min_score`` / ``ref_max_score``; the task's D4RL ones when no input has any), their
    ``eval_env`` spec, their env spec and spaces, and each input's dawm provenance record (under the ``dawm``
    key: ``{"kind": "dawm-combined", "combined_datasets": [...], "inputs": {id: record}}``). Minari's own
    ``combined_datasets`` metadata key is set too. Episodes are copied as HDF5 groups (infos and seeds kept).

    Args:
        dataset_ids: two or more local Minari ids of one task, with equal observation and action spaces.
        out: the new Minari id (``namespace/name-vN``), not one of the inputs.
        overwrite: replace an existing ``out`` (the old one is removed only once the new one is complete).
        description: free text (default: names the inputs).

    Returns:
        ``out``.

    Raises:
        ValueError: fewer than two inputs, ``out`` among them, an invalid id, inputs of different tasks / spaces /
            eval envs / reference returns (one line naming both inputs).
        FileNotFoundError: an input that is not on disk. FileExistsError: ``out`` exists and ``overwrite`` is
            False. paths.LockHeldError: another process is writing ``out``.
    """
    import minari
    from gymnasium.envs.registration import EnvSpec

    ids = list(dict.fromkeys(dataset_ids))
    if len(ids) < 2:
        raise ValueError(f"combining needs at least two different datasets, got {list(dataset_ids)}")
    if out in ids:
        raise ValueError(f"the output id {out!r} is one of the inputs; choose a new id")
    check_dataset_output(out)
    with dataset_lock(out, flag="--id"):  # before any work: a second writer of `out` fails now
        for dataset_id in ids:
            try_restore_interrupted_overwrite(dataset_id)
        local = minari.list_local_datasets()
        missing = [d for d in ids if d not in local]
        if missing:
            raise FileNotFoundError(f"dataset(s) {', '.join(missing)} not on disk (root {minari_root()}); local: "
                                    f"{', '.join(sorted(local)) or 'none'}")
        if (minari_root() / out).exists() and not overwrite:
            raise FileExistsError(f"Minari dataset {out!r} already exists; pass --overwrite or choose another --id")
        inputs = {d: minari.load_dataset(d) for d in ids}
        first_id, first = ids[0], inputs[ids[0]]
        tasks, evals, scores = {}, {}, {}
        for d, ds in inputs.items():
            meta = ds.storage.metadata
            spec = ds.spec.env_spec
            if spec is None:
                raise ValueError(f"{d} records no environment, so its task is unknown; only datasets of dawm's "
                                 "tasks (hopper, walker2d, halfcheetah) can be combined")
            tasks[d] = task_from_env_id(spec.id)
            if tasks[d].name != tasks[first_id].name:
                raise ValueError(f"cannot combine {first_id} ({tasks[first_id].name}) with {d} ({tasks[d].name}): "
                                 "the datasets must be of one task")
            for what in ("observation_space", "action_space"):
                if getattr(ds, what) != getattr(first, what):
                    raise ValueError(f"cannot combine {first_id} with {d}: their {what.replace('_', ' ')}s differ "
                                     f"({getattr(first, what)} vs {getattr(ds, what)})")
            if meta.get("eval_env_spec"):
                evals[d] = json.loads(meta["eval_env_spec"])
            if meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None:
                scores[d] = (float(meta["ref_min_score"]), float(meta["ref_max_score"]))
        for name, found, same in (("eval_env specs", evals, lambda a, b: a == b),
                                  ("reference returns (ref_min_score, ref_max_score)", scores, np.allclose)):
            (ref_id, ref), *rest = list(found.items()) or [(None, None)]
            for d, v in rest:
                if not same(v, ref):
                    raise ValueError(f"cannot combine {ref_id} with {d}: their {name} differ ({ref} vs {v})")
        task = tasks[first_id]
        ref_min, ref_max = next(iter(scores.values()), (task.ref_min_score, task.ref_max_score))
        eval_env = EnvSpec.from_json(json.dumps(next(iter(evals.values())))) if evals else task.env_id
        kwargs = dict(env=first.spec.env_spec, eval_env=eval_env, ref_min_score=ref_min, ref_max_score=ref_max,
                      observation_space=first.observation_space, action_space=first.action_space)
        provenance = {
            "kind": COMBINED_KIND, "combined_datasets": ids,
            "inputs": {d: json.loads(inputs[d].storage.metadata.get(DAWM_METADATA_KEY) or "{}") for d in ids},
            "transitions": int(sum(ds.total_steps for ds in inputs.values())),
            "episodes": int(sum(ds.total_episodes for ds in inputs.values())),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        algos = ", ".join(dict.fromkeys(str(ds.storage.metadata.get("algorithm_name", "?")) for ds in inputs.values()))
        with MinariStreamWriter(out, task, algorithm_name=f"combined ({algos})", overwrite=overwrite,
                                description=description or f"Combination of {', '.join(ids)} (dawm data combine)",
                                provenance=provenance, minari_kwargs=kwargs) as writer:
            for d in ids:
                writer.append_dataset(d)
            return writer.finalize(extra_metadata={"combined_datasets": ids})
