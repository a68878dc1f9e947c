"""``dawm generate``: DAWM rollouts written as a Minari dataset, resumable, chunked and shardable.

Work plan. The seed dataset's ``(s_t, a_t)`` pairs (all of them, or an exact random ``1/T`` for
DAWM-T) times ``repeats`` give ``R = P * K`` rollouts, ordered repeat-major (rollout ``i`` uses pair
``i % P``, repeat ``i // P``, so the first ``P`` rollouts are one full pass). They are cut into
*chunks* of ``chunk_size`` rollouts; chunk ``c`` draws all its noise from a torch RNG seeded with
``SeedSequence([seed, c])``, so its content depends only on the configuration and ``c``: never on
which process made it, on what ran before it, or on whether the run was interrupted.

On disk. Everything is staged in ``<minari root>/../.<root name>-dawm-staging/gen-<id>-<key>/``
(outside the Minari root, so nothing half-made is ever listed), where ``key`` hashes the output id,
the bundle's file hash, the seed data's fingerprint and every setting that changes the data:

- ``run.json``: the configuration;
- ``chunks/chunk-000012.h5``: chunk 12's episodes in Minari's HDF5 episode layout, written to a temp
  file and renamed; ``chunk-000012.json`` (written after it) is the commit marker plus chunk totals.

Resume. A re-run with the same configuration finds the staging folder and generates only the chunks
without a commit marker; an interrupted chunk is simply redone. A changed configuration gets a new
key: stale staging folders of the same output id are removed. ``restart=True`` discards this key's
folder too.

Shards. ``--shard i/n`` (or torchrun's ``RANK`` / ``WORLD_SIZE``; ``--device cuda`` then uses
``cuda:LOCAL_RANK``) generates chunks ``c`` with ``c % n == i`` into the *same* staging folder; the key
does not include the shard, so shards of one configuration share it and need no communication. Every
process, after its own chunks, checks whether all chunks are committed; the one that finds them all
(the last to finish) takes a file lock and merges: the chunk files are copied in chunk order into a
:class:`~dawm_env.data.minari_io.MinariStreamWriter` (HDF5 object copies, no decoding), which
registers the dataset atomically. The result equals an unsharded run's, episode for episode.

Locks. A run holds its output id's lock (:func:`~dawm_env.data.minari_io.dataset_lock`) from start to end:
exclusively without shards, so a second ``dawm generate`` or ``dawm data build`` into that id fails at once;
shared by the shards of one run, which also hold their staging folder's ``run.lock`` (shared) and a lock per
shard, so shards with other settings, or one shard started twice, fail at once too. The OS drops every lock
when its process dies; forked chunk writers exit with their parent.

Memory. Only the seed data, the selected pair indices and one chunk of rollouts are in memory;
writing and merging stream chunk by chunk.

Determinism holds for one device type (CPU and CUDA random streams differ; the device type is part of
the key) and one ``batch_size`` (the noise of a chunk is drawn batch by batch).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np
import torch

from dawm_env.data.loading import load_dataset
from dawm_env.data.minari_io import (
    SLOW_MINARI_READ_EPISODES,
    MinariStreamWriter,
    check_dataset_output,
    dataset_exists,
    dataset_lock,
    remove_stale_staging,
    restore_interrupted_overwrite,
    staging_parent,
    validate_dataset_id,
    write_episode_file,
)
from dawm_env.data.records import OfflineDataset
from dawm_env.data.windows import positions_in_episode
from dawm_env.generation.rollouts import (
    RolloutConfig,
    RolloutGenerator,
    check_task_match,
    validate_episodes,
)
from dawm_env.generation.stats import GENERATED_KIND
from dawm_env.paths import LockHeldError, atomic_write_json, exclusive_lock, file_sha256
from dawm_env.runtime import resolve_device
from dawm_env.world_model.bundle import Bundle

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

_RUN_FORMAT = 1


@dataclass
class GenerateConfig:
    """Settings of ``dawm generate`` (one field per CLI flag).

    Attributes:
        bundle: bundle name or folder (``--bundle``).
        seed_dataset: Minari id or dataset file whose ``(s_t, a_t)`` pairs start rollouts (``--seed-dataset``).
        out: Minari id of the generated dataset, with version (``--out``).
        horizon: H, transitions per rollout, ``1 <= H <=`` the bundle's horizon (``--horizon``, paper: 7).
        rtg: return-to-go target ``g`` in the task's scaled units (``--rtg``); None = the task's largest DWM
            generation target, ``max(task.gen_rtg_range)`` (hopper / walker2d 0.8, halfcheetah 0.6).
        guidance: classifier-free guidance weight ``w`` (``--guidance``); None = the bundle's (1.2).
        subsample: T of DAWM-T: roll out from a random ``floor(P / T)`` of the ``P`` seed pairs (``--subsample``).
        repeats: K rollouts per selected seed pair, each with its own noise (``--repeats``).
        device: torch device of the models (``--device``); ``cuda`` under torchrun means ``cuda:LOCAL_RANK``.
        shard: ``"i/n"``: generate only chunks ``c % n == i`` (``--shard``); None = torchrun's rank or all.
        seed: base RNG seed (``--seed``).
        batch_size: rollouts per model call (``--batch-size``).
        chunk_size: rollouts per committed chunk: the unit of resume, of sharding and of writing
            (``--chunk-size``).
        sampling_steps: N reverse diffusion steps; None = the bundle's (3).
        temperature: sampling temperature; None = the bundle's (0.5).
        stochastic_idm: sample IDM actions instead of taking ``tanh(mean)``.
        action_source: actions of steps ``h >= 1``: ``"idm"`` (DAWM, default), or the IDM ablations
            ``"random"`` (uniform in ``[-1, 1]``) and ``"repeat"`` (the seed action ``a_t`` repeated); step 0
            always keeps the real ``a_t`` (``--action-source``).
        action_noise: std of Gaussian noise added to the seed action ``a_t`` before it conditions the world
            model (clipped to ``[-1, 1]``); step 0 then holds the model's outcome of that action, not the real
            transition (``--action-noise``; 0 = the real ``a_t``).
        overwrite: replace an existing dataset with this id.
        restart: discard a resumable partial run of this configuration and start over.
        progress: show progress bars and messages.
        threads: torch CPU threads (None = leave torch's setting alone).
        max_chunks: generate at most this many chunks in this call, then stop (resumable; for time-boxed
            jobs and tests). None = all.
        writers: background processes writing chunk files while the next chunk is generated (0 = write in
            the main process). Writing costs about as much as generating on a CPU, so on a GPU raise it.
    """

    bundle: str
    seed_dataset: str
    out: str
    horizon: int = 7
    rtg: Optional[float] = None
    guidance: Optional[float] = None
    subsample: int = 1
    repeats: int = 1
    device: str = "cpu"
    shard: Optional[str] = None
    seed: int = 0
    batch_size: int = 4096
    chunk_size: int = 32768
    sampling_steps: Optional[int] = None
    temperature: Optional[float] = None
    stochastic_idm: bool = False
    action_source: str = "idm"
    action_noise: float = 0.0
    overwrite: bool = False
    restart: bool = False
    progress: bool = True
    threads: Optional[int] = None
    max_chunks: Optional[int] = None
    writers: int = 1

    def __post_init__(self) -> None:
        validate_dataset_id(self.out)
        for name in ("horizon", "subsample", "repeats", "batch_size", "chunk_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.writers < 0:
            raise ValueError(f"writers must be >= 0, got {self.writers}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.max_chunks is not None and self.max_chunks < 0:
            raise ValueError(f"max_chunks must be >= 0, got {self.max_chunks}")
        if self.shard is not None:
            ShardSpec.parse(self.shard)  # fail early on a bad spec
        self.rollout_config()  # fail early on a bad rollout setting (e.g. an unknown action source, a NaN --rtg)
        resolve_device(self.device)  # --device cuda without CUDA: say so now, not from deep inside torch

    def rollout_config(self) -> RolloutConfig:
        """The :class:`RolloutConfig` these settings ask for (unresolved)."""
        return RolloutConfig(horizon=self.horizon, rtg=self.rtg, guidance=self.guidance,
                             sampling_steps=self.sampling_steps, temperature=self.temperature,
                             stochastic_idm=self.stochastic_idm, batch_size=self.batch_size,
                             action_source=self.action_source, action_noise=self.action_noise)


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count`` (``0 <= index < count``)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "ShardSpec":
        """``"i/n"`` -> ShardSpec; raises ValueError with the expected form."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise ValueError(f"bad shard spec {text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
        i, n = int(m.group(1)), int(m.group(2))
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"bad shard spec {text!r}: need 0 <= i < n and n >= 1, e.g. 0/4")
        return cls(i, n)

    @classmethod
    def from_env(cls) -> "ShardSpec":
        """torchrun's ``RANK`` / ``WORLD_SIZE`` when set, else the single shard 0/1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world) if world > 1 else cls()


@dataclass(frozen=True)
class GenerationPlan:
    """Which rollouts a run makes, and how they are cut into chunks.

    Attributes:
        pair_indices: ``(P,)`` sorted seed-pair (transition) indices that start rollouts.
        repeats: K rollouts per pair.
        chunk_size: rollouts per chunk.
    """

    pair_indices: np.ndarray
    repeats: int
    chunk_size: int

    @property
    def num_rollouts(self) -> int:
        """R = P * K."""
        return len(self.pair_indices) * self.repeats

    @property
    def num_chunks(self) -> int:
        """ceil(R / chunk_size)."""
        return -(-self.num_rollouts // self.chunk_size)

    def chunk_items(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """``(seed_index (n,), repeat (n,))`` of chunk ``chunk``'s rollouts (repeat-major order)."""
        if not 0 <= chunk < self.num_chunks:
            raise IndexError(f"chunk {chunk} out of range [0, {self.num_chunks})")
        items = np.arange(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, self.num_rollouts))
        p = len(self.pair_indices)
        return self.pair_indices[items % p], (items // p).astype(np.int32)

    def shard_chunks(self, shard: ShardSpec) -> list[int]:
        """Chunks of ``shard`` (round-robin: ``c % count == index``)."""
        return list(range(shard.index, self.num_chunks, shard.count))


def select_seed_pairs(num_pairs: int, subsample: int = 1, seed: int = 0) -> np.ndarray:
    """Seed pairs that start rollouts: all of them, or DAWM-T's random ``1/T``.

    Args:
        num_pairs: P, transitions in the seed dataset.
        subsample: T; keeps exactly ``floor(P / T)`` pairs (at least 1), chosen without replacement.
        seed: RNG seed of the choice.

    Returns:
        ``(floor(P / T),)`` sorted int64 indices.
    """
    if num_pairs < 1:
        raise ValueError("the seed dataset holds no (s, a) pairs")
    if subsample < 1:
        raise ValueError(f"subsample must be >= 1, got {subsample}")
    if subsample == 1:
        return np.arange(num_pairs, dtype=np.int64)
    k = max(1, num_pairs // subsample)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    return np.sort(rng.choice(num_pairs, size=k, replace=False)).astype(np.int64)


def chunk_seed(seed: int, chunk: int) -> int:
    """Independent 63-bit RNG seed of chunk ``chunk`` of a run with base seed ``seed``."""
    words = np.random.SeedSequence([int(seed), int(chunk)]).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


def bundle_hash(path: str | os.PathLike) -> str:
    """sha256 over a bundle's model, seed and config files (names and contents): identifies the bundle."""
    path = Path(path)
    h = hashlib.sha256()
    for name in ("bundle.json", "world_model.safetensors", "idm.safetensors", "seeds.safetensors"):
        f = path / name
        if f.is_file():
            h.update(name.encode())
            file_sha256(f, into=h)
    return h.hexdigest()


# --- the run ----------------------------------------------------------------------------------------
def _commit_chunk(h5: Path, marker: Path, data: OfflineDataset, infos: dict[str, np.ndarray], totals: dict) -> None:
    """Write chunk ``h5`` (atomically), then its commit marker: a chunk counts only once both exist."""
    write_episode_file(h5, data, infos)
    atomic_write_json(marker, totals)


def _writer_pool(workers: int) -> "Optional[ProcessPoolExecutor]":
    """A fork-based process pool for chunk files, or None (write inline) when ``workers == 0`` or fork is
    unavailable. Fork, not spawn: the children need no torch import; they only run numpy / h5py.
    Each child exits when the generating process dies, even by ``kill -9`` (:func:`_writer_init`)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if workers <= 0 or "fork" not in mp.get_all_start_methods():
        return None
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"), initializer=_writer_init,
                               initargs=(os.getpid(),))


#: Linux ``prctl`` option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _writer_init(parent: int) -> None:
    """First thing a forked chunk writer runs: make it exit when ``parent`` dies.

    A pool worker waits on a pipe whose other end the orphan itself inherited, so without this it would wait
    forever (~300 MB each) after a ``kill -9`` of the generator. Linux: ``PR_SET_PDEATHSIG`` has the kernel
    send SIGTERM; elsewhere (and as a backstop) a thread polls ``os.getppid()``, which changes on re-parenting.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler, if any, must not outlive it here
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect: nobody will signal us
        os._exit(1)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="dawm-writer-watch", daemon=True).start()


def _exit_with_parent(parent: int, period_s: float = 1.0) -> None:
    """Poll until ``parent`` is no longer this process's parent, then exit at once (portable fallback)."""
    while os.getppid() == parent:
        time.sleep(period_s)
    os._exit(1)


def _safe_name(dataset_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", dataset_id)


def _log(cfg: GenerateConfig, msg: str) -> None:
    if cfg.progress:
        print(f"dawm generate: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    """Non-blocking exclusive ``flock`` on ``path``; yields whether it was acquired. The OS drops the
    lock when the process dies, so a crashed merge never leaves a stale lock behind."""
    try:
        fh = open(path, "a+")
    except FileNotFoundError:  # the folder was removed: another process finished the merge
        yield False
        return
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


def _shard_of(cfg: GenerateConfig) -> ShardSpec:
    """The shard this process generates: ``cfg.shard``, else torchrun's rank, else all chunks."""
    return ShardSpec.parse(cfg.shard) if cfg.shard is not None else ShardSpec.from_env()


def _in_use(run_dir: Path) -> bool:
    """Whether a live process holds the run lock of the staging folder ``run_dir``."""
    try:
        with exclusive_lock(run_dir / "run.lock", f"the partial run {run_dir.name}"):
            return False
    except LockHeldError:
        return True


class _Run:
    """One configured generation run and its staging folder (see the module docstring)."""

    def __init__(self, cfg: GenerateConfig) -> None:

        self.cfg = cfg
        self.shard = _shard_of(cfg)
        if cfg.restart and self.shard.count > 1:
            raise ValueError("restart cannot be combined with shards (each shard would wipe the others' work); "
                             "run once with restart and no shard, or delete the staging folder")
        device = cfg.device
        if device == "cuda" and "LOCAL_RANK" in os.environ:
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        self.device = resolve_device(device)
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        if dataset_exists(cfg.out) and not cfg.overwrite:
            raise FileExistsError(f"Minari dataset {cfg.out!r} already exists; choose another --out, pass "
                                  f"--overwrite, or remove it (minari delete {cfg.out})")
        check_dataset_output(cfg.out)  # a read-only Minari root fails now, not after the whole generation
        self.bundle = Bundle.load(cfg.bundle, device=self.device)
        self.seed_data = load_dataset(cfg.seed_dataset)
        check_task_match(self.bundle, self.seed_data)
        self.task = self.bundle.task
        self.generator = RolloutGenerator(self.bundle, cfg.rollout_config())
        self.plan = GenerationPlan(select_seed_pairs(self.seed_data.num_transitions, cfg.subsample, cfg.seed),
                                   cfg.repeats, cfg.chunk_size)
        self.bundle_sha = bundle_hash(self.bundle.path)
        self.seed_fingerprint = self.seed_data.fingerprint()
        self.identity = {
            "format": _RUN_FORMAT, "out": cfg.out, "bundle_hash": self.bundle_sha,
            "seed_dataset_fingerprint": self.seed_fingerprint, "rollout": self.generator.config.to_dict(),
            "subsample": cfg.subsample, "repeats": cfg.repeats, "seed": cfg.seed, "chunk_size": cfg.chunk_size,
            "device_type": self.device.type,
        }
        self.key = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = staging_parent() / f"gen-{_safe_name(cfg.out)}-{self.key}"
        self.chunk_dir = self.dir / "chunks"

    # --- staging --------------------------------------------------------------------------------
    def prepare(self, locks: contextlib.ExitStack) -> None:
        """Create (or re-open) the staging folder and lock it for this run; remove stale runs of the same output id.

        The caller holds the output id's lock (:func:`generate_dataset`): exclusively without shards, so every
        other staging folder of the id is stale; shared by the shards of one run, so a folder of another
        configuration is stale only when no process holds its run lock (else this run fails: shards of one
        dataset need the same settings). The run lock (shared) and this shard's lock (exclusive) go on ``locks``.
        """
        parent = self.dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        safe = _safe_name(self.cfg.out)
        # shards starting together look at and claim staging folders one at a time
        with exclusive_lock(parent / f"gen-{safe}.gate", f"generation of {self.cfg.out}", wait=True, prune_to=parent):
            pattern = re.compile(rf"gen-{re.escape(safe)}-[0-9a-f]{{16}}")
            for other in parent.iterdir():
                if other == self.dir or not pattern.fullmatch(other.name):
                    continue
                try:
                    other_out = json.loads((other / "run.json").read_text()).get("identity", {}).get("out")
                except (OSError, json.JSONDecodeError):
                    other_out = None  # a run that died before writing run.json
                if other_out not in (None, self.cfg.out):
                    continue
                if self.shard.count > 1 and _in_use(other):
                    raise LockHeldError(
                        f"another dawm generate with different settings is writing {self.cfg.out} (partial run "
                        f"{other} in use); the shards of one dataset need the same settings: wait for it or "
                        "choose another --out")
                _log(self.cfg, f"removing stale partial run {other.name} (different configuration)")
                shutil.rmtree(other, ignore_errors=True)
            if self.cfg.restart and self.dir.exists():
                _log(self.cfg, f"restart: discarding partial run {self.dir.name}")
                shutil.rmtree(self.dir)
            self.chunk_dir.mkdir(parents=True, exist_ok=True)
            locks.enter_context(exclusive_lock(self.dir / "run.lock", f"the partial run {self.dir.name}", shared=True))
        if self.shard.count > 1:  # the same shard started twice would do its chunks twice
            locks.enter_context(exclusive_lock(
                self.dir / f"shard-{self.shard.index}-of-{self.shard.count}.lock",
                f"shard {self.shard.index}/{self.shard.count} of {self.cfg.out}",
                hint="each shard runs in one process: wait for it or give another --shard"))
        run_file = self.dir / "run.json"
        if not run_file.is_file():
            atomic_write_json(run_file, {"identity": self.identity, "num_chunks": self.plan.num_chunks,
                                         "num_rollouts": self.plan.num_rollouts})

    def chunk_paths(self, c: int) -> tuple[Path, Path]:
        """``(episode file, commit marker)`` of chunk ``c``."""
        return self.chunk_dir / f"chunk-{c:06d}.h5", self.chunk_dir / f"chunk-{c:06d}.json"

    def committed(self, c: int) -> bool:
        """Whether chunk ``c`` is complete on disk."""
        h5, marker = self.chunk_paths(c)
        return marker.is_file() and h5.is_file()

    # --- generation -----------------------------------------------------------------------------
    def generate_chunk(self, c: int) -> tuple[OfflineDataset, dict[str, np.ndarray], dict]:
        """Generate and validate chunk ``c`` (no I/O): ``(episodes, per-step infos, chunk totals)``."""
        seed_index, repeat = self.plan.chunk_items(c)
        gen = self.generator.new_generator(chunk_seed(self.cfg.seed, c))
        rollouts = self.generator.generate(self.seed_data.observations[seed_index],
                                           self.seed_data.actions[seed_index], gen,
                                           seed_index=seed_index, repeat=repeat)
        try:
            data, infos = rollouts.to_dataset(self.task, source=f"{self.cfg.out} chunk {c}")
            validate_episodes(data, self.task, self.generator.config.horizon)
        except ValueError as err:
            raise ValueError(f"generated chunk {c} failed validation, nothing written: {err}. The bundle "
                             f"{self.bundle.path} may be broken (non-finite outputs?)") from err
        inferred = positions_in_episode(data) > 0  # IDM actions; step 0 is the real a_t
        if self.generator.config.action_source != "idm":
            inferred[:] = False  # the ablation action sources do not use the IDM
        totals = {"chunk": c, "rollouts": int(data.num_episodes), "transitions": int(data.num_transitions),
                  "terminated": int(rollouts.terminated.sum()),
                  "reward_sum": float(data.rewards.astype(np.float64).sum()),
                  "idm_std_sum": float(infos["idm_std"][inferred].astype(np.float64).mean(-1).sum())
                  if inferred.any() else 0.0,
                  "idm_std_count": int(inferred.sum())}
        return data, infos, totals

    def run_chunks(self) -> None:
        """Generate this shard's uncommitted chunks, with a progress bar in transitions/s.

        With ``writers > 0``, chunk files are written by forked worker processes while the next chunk is
        generated (h5py holds the GIL, so a thread would stall the model's op dispatch); at most
        ``writers`` chunks wait in flight, which bounds memory.
        """
        from collections import deque

        from tqdm.auto import tqdm

        mine = self.plan.shard_chunks(self.shard)
        todo = [c for c in mine if not self.committed(c)]
        if len(todo) < len(mine):
            _log(self.cfg, f"resuming: {len(mine) - len(todo)} of {len(mine)} chunks already done")
        if self.cfg.max_chunks is not None:
            todo = todo[: self.cfg.max_chunks]
        total = sum(len(self.plan.chunk_items(c)[0]) for c in todo)
        bar = tqdm(total=total, unit="rollout", desc=f"generate {self.cfg.out}", disable=not self.cfg.progress,
                   smoothing=0.1)
        pool = _writer_pool(self.cfg.writers) if len(todo) > 1 else None
        pending: deque = deque()
        t0, transitions, committed = time.perf_counter(), 0, 0
        try:
            for c in todo:
                data, infos, totals = self.generate_chunk(c)
                h5, marker = self.chunk_paths(c)
                if pool is None:
                    _commit_chunk(h5, marker, data, infos, totals)
                    committed += 1
                else:
                    while len(pending) >= self.cfg.writers:
                        pending.popleft().result()  # re-raises a writer's error here
                        committed += 1
                    pending.append(pool.submit(_commit_chunk, h5, marker, data, infos, totals))
                transitions += totals["transitions"]
                bar.update(totals["rollouts"])
                bar.set_postfix_str(f"{transitions / max(time.perf_counter() - t0, 1e-9):,.0f} transitions/s")
            while pending:
                pending.popleft().result()
                committed += 1
        except KeyboardInterrupt:
            bar.close()
            _log(self.cfg, f"interrupted after {committed} new chunks; nothing was registered. Re-run the same "
                           f"command to resume (partial run kept in {self.dir})")
            raise
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)  # a chunk already being written still commits

    def all_committed(self) -> bool:
        """Whether every chunk of the plan is complete on disk."""
        return all(self.committed(c) for c in range(self.plan.num_chunks))

    # --- merge ----------------------------------------------------------------------------------
    def merge(self) -> bool:
        """Combine every chunk into the Minari dataset and register it; False when another process is
        already merging (it will register the dataset)."""
        from tqdm.auto import tqdm

        if not self.dir.exists():  # another process merged and cleaned up already
            return True
        with _try_lock(self.dir / "merge.lock") as got:
            if not got:
                _log(self.cfg, "another process is merging the chunks; it will register the dataset")
                return False
            if not self.dir.exists():  # merged and cleaned up by another process just before us
                return True
            totals = [json.loads(self.chunk_paths(c)[1].read_text()) for c in range(self.plan.num_chunks)]
            provenance = self.provenance(totals)
            rc = self.generator.config
            description = (f"DAWM synthetic rollouts: H={rc.horizon}, g={rc.rtg}, w={rc.guidance}, N={rc.sampling_steps}, "
                           f"{self.cfg.repeats} rollout(s) from each of {len(self.plan.pair_indices)} seed pairs of "
                           f"{self.cfg.seed_dataset} (1/{self.cfg.subsample}); bundle {self.bundle.path.name}")
            if rc.action_source != "idm":
                description += f"; actions of steps h >= 1: {rc.action_source} (IDM ablation)"
            if rc.action_noise:
                description += f"; step-0 actions = seed action + N(0, {rc.action_noise:g}^2), clipped (not real)"
            with MinariStreamWriter(self.cfg.out, self.task, algorithm_name="DAWM", description=description,
                                    provenance=provenance, overwrite=self.cfg.overwrite) as writer:
                for c in tqdm(range(self.plan.num_chunks), desc="merge chunks", unit="chunk",
                              disable=not self.cfg.progress or self.plan.num_chunks < 2):
                    writer.append_episode_file(self.chunk_paths(c)[0])
                writer.finalize()
            shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.dir.parent.rmdir()
        return True

    def provenance(self, totals: list[dict]) -> dict:
        """The record stored under the dataset's ``dawm`` metadata key."""
        rollouts = sum(t["rollouts"] for t in totals)
        transitions = sum(t["transitions"] for t in totals)
        terminated = sum(t["terminated"] for t in totals)
        std_n = sum(t["idm_std_count"] for t in totals)
        cfg = asdict(self.cfg)
        for k in ("progress", "overwrite", "restart", "max_chunks", "threads", "shard", "writers"):
            cfg.pop(k)
        return {
            "kind": GENERATED_KIND,
            "generator_config": cfg,
            "rollout": self.generator.config.to_dict(),
            "bundle": {"path": str(self.bundle.path), "hash": self.bundle_sha, "task": self.task.name,
                       "dataset": self.bundle.meta.get("dataset"),
                       "dataset_fingerprint": self.bundle.meta.get("dataset_fingerprint")},
            "seed_dataset": {"source": self.cfg.seed_dataset, "fingerprint": self.seed_fingerprint,
                             "transitions": self.seed_data.num_transitions},
            "seed_pairs": int(len(self.plan.pair_indices)),
            "rollouts": rollouts, "transitions": transitions, "terminated_rollouts": terminated,
            "terminated_fraction": terminated / max(rollouts, 1),
            "reward_mean": sum(t["reward_sum"] for t in totals) / max(transitions, 1),
            "idm_std_mean": sum(t["idm_std_sum"] for t in totals) / std_n if std_n else None,
            "eval_env": self.task.env_id, "ref_min_score": self.task.ref_min_score,
            "ref_max_score": self.task.ref_max_score,
            "num_chunks": self.plan.num_chunks, "run_key": self.key, "device": str(self.device),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def generate_dataset(config: GenerateConfig) -> str:
    """Generate DAWM rollouts from a seed dataset and register them as a Minari dataset.

    Rollouts start from every ``(s_t, a_t)`` pair of ``config.seed_dataset`` (or a random exact
    ``1/subsample`` of them), ``repeats`` times each; each rollout becomes one Minari episode of up to
    ``horizon`` transitions (``T + 1`` observations) with per-step infos ``seed_index``, ``repeat`` and
    ``idm_std`` (the IDM's pre-tanh action std, shape ``(act_dim,)``; 0 in row 0, the real action). See the module docstring for resume, shards and memory.

    Args:
        config: the settings.

    Returns:
        The dataset id. It is registered (loadable with ``minari.load_dataset``) once every chunk is
        done; a shard that finishes before the others, or a ``max_chunks``-limited call, returns the id
        of the dataset still to come (a message says so).

    Raises:
        ValueError: invalid id, a Minari root that cannot be written, bad shard spec, horizon beyond the
            model's, a non-finite rtg / guidance, CUDA asked for but not available, task mismatch between
            bundle and seed data, a chunk failing validation.
        FileExistsError: the output id exists and ``overwrite`` is False.
        FileNotFoundError / CheckpointError: a missing or broken bundle / seed dataset.
    """
    shard = _shard_of(config)
    check_dataset_output(config.out)  # a read-only root fails with its own message before any lock file is made
    with contextlib.ExitStack() as locks:
        # one writer per output id, held for the whole run (shared by the shards of one run): a second
        # dawm generate / data build into this id fails now, before loading anything
        locks.enter_context(dataset_lock(config.out, shared=shard.count > 1, flag="--out"))
        if shard.count == 1:  # exclusive: nothing of this id is live, so tidy what killed runs left
            restore_interrupted_overwrite(config.out)
            remove_stale_staging(config.out)
        return _generate_locked(config, locks)


def _generate_locked(config: GenerateConfig, locks: contextlib.ExitStack) -> str:
    """:func:`generate_dataset` once the output id is locked."""
    run = _Run(config)
    run.prepare(locks)
    rc = run.generator.config
    _log(config, f"{run.plan.num_rollouts} rollouts ({len(run.plan.pair_indices)} seed pairs x {config.repeats}), "
                 f"H={rc.horizon}, g={rc.rtg}, w={rc.guidance}, N={rc.sampling_steps}, {run.plan.num_chunks} chunk(s), "
                 f"shard {run.shard.index}/{run.shard.count}, device {run.device}")
    if run.plan.num_rollouts > SLOW_MINARI_READ_EPISODES:
        logging.getLogger(__name__).warning(
            "%s will hold %d episodes (one per rollout): dawm reads it quickly, but Minari's own reader slows to "
            "~20 episodes/s beyond ~1.3M episodes (HDF5's default metadata cache no longer holds the episode names). "
            "For other libraries, generate several datasets of under %d rollouts each (--subsample / --seed).",
            config.out, run.plan.num_rollouts, SLOW_MINARI_READ_EPISODES)
    run.run_chunks()
    if not run.dir.exists() and dataset_exists(config.out):  # another shard merged while we finished
        return config.out
    if not run.all_committed():
        missing = sum(not run.committed(c) for c in range(run.plan.num_chunks))
        _log(config, f"{missing} chunk(s) still to generate (other shards, or max_chunks); {config.out} will be "
                     "registered by the process that finishes the last chunk")
        return config.out
    if run.merge():
        _log(config, f"registered {config.out}")
    return config.out
