"""Where dawm keeps things on disk, and atomic file helpers.

- ``DAWM_HOME`` (default ``~/.dawm``): behaviour-policy runs, bundles, caches.
- ``MINARI_DATASETS_PATH`` (Minari's own variable, default ``~/.minari/datasets``): datasets.
- ``DAWM_POLICIES_DIR``: a folder of behaviour policies overriding the ones shipped inside the package
  (``dawm_env/policies``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterator, Optional

#: The behaviour policies shipped inside the package (actor weights as safetensors + JSON).
SHIPPED_POLICIES_DIR = Path(__file__).resolve().parent / "policies"


def dawm_home() -> Path:
    """Root of dawm's own files (``$DAWM_HOME`` or ``~/.dawm``)."""
    return Path(os.environ.get("DAWM_HOME", Path.home() / ".dawm")).expanduser()


def minari_root() -> Path:
    """Root folder of local Minari datasets (honours ``MINARI_DATASETS_PATH``)."""
    return Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets")).expanduser()


def policies_dir() -> Path:
    """Folder holding the default behaviour policies (``$DAWM_POLICIES_DIR`` or the shipped ones)."""
    env = os.environ.get("DAWM_POLICIES_DIR")
    return Path(env).expanduser() if env else SHIPPED_POLICIES_DIR


def behavior_run_dir(task: str, seed: int) -> Path:
    """Folder of the behaviour SAC run that provides medium / medium-replay data for ``task``."""
    return dawm_home() / "behavior" / f"{task}-sac-seed{seed}"


def file_sha256(path: str | os.PathLike, into: "hashlib._Hash | None" = None) -> str:
    """Hex sha256 of a file's bytes, read in 1 MB blocks; with ``into``, feeds that running hash instead."""
    h = hashlib.sha256() if into is None else into
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_writable_dir(path: str | os.PathLike, what: str, hint: str = "") -> Path:
    """Fail at once, before any work, when files cannot be written into the folder ``path``.

    Nothing is left behind: an existing folder gets a temp file created and removed in it; a missing one is
    not created, the nearest existing folder above it is tested instead (that is where it would be created).

    Args:
        path: the output folder (may not exist yet).
        what: how the user named it, for the message (``--out``, ``the Minari root``...).
        hint: how to fix it, appended to the message (default: choose another folder).

    Returns:
        ``path`` as an expanded :class:`Path`.

    Raises:
        ValueError: ``path`` (or a folder above it) is a file, or is not writable; the message says which.
    """
    target = Path(path).expanduser()
    fix = hint or f"choose a writable folder for {what}"
    probe = target
    while not probe.exists():  # the nearest existing folder is where the missing ones would be created
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"cannot write {what} {target}: {probe} exists and is not a folder; {fix}")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".dawm-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise ValueError(f"cannot write {what} {target}: {probe} is not writable ({err.strerror or err}); "
                         f"{fix}") from err
    return target


def new_temp_file(path: Path, suffix: str) -> tuple[int, str]:
    """A hidden temp file beside ``path`` for a write-then-rename, with the mode a plain ``open`` would give.

    ``tempfile.mkstemp`` creates files 0600; renamed into place they would keep it, and another user could not
    read a bundle, a dataset cache or a result. The mode is set from the process umask instead.

    Returns:
        ``(fd, temp path)``, like ``tempfile.mkstemp``.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.fchmod(fd, 0o666 & ~current_umask())
    return fd, tmp


@contextlib.contextmanager
def _replaced_atomically(path: Path, mode: str) -> Iterator[IO]:
    """A temp file beside ``path`` to write into (``mode`` ``"w"`` / ``"wb"``), fsynced and renamed onto ``path``
    when the block ends; removed if it raises: readers see the old file or the whole new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_temp_file(path, ".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + rename: readers never see half a file."""
    with _replaced_atomically(path, "w") as fh:
        fh.write(text)


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy the file ``src`` to ``dst`` via a temp file + rename: ``dst`` is absent or complete, never half."""
    with _replaced_atomically(dst, "wb") as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out)


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON-dump ``obj`` to ``path`` atomically (sorted keys, indented)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def claim_new_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden staging folder beside ``path`` to fill; renamed to ``path`` when the block ends, removed if it raises.

    ``path`` must not exist: it appears complete or not at all, and of two runs creating the same folder the
    second fails with FileExistsError (a rename onto a non-empty folder fails) instead of mixing files.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new folder or remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".staging"))
    try:
        yield stage
        if path.exists():  # another run finished first
            raise FileExistsError(f"{path} appeared while this run was writing it; keeping the other run's folder")
        os.chmod(stage, 0o777 & ~current_umask())  # mkdtemp makes 0700: give what mkdir() would
        try:
            os.rename(stage, path)
        except OSError as err:
            raise FileExistsError(f"{path} appeared while this run was writing it ({err})") from err
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def current_umask() -> int:
    """The process umask (read by setting and restoring it): the mode ``open()`` would give is ``0o666 & ~umask``."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def minari_root_at(root: Path) -> Iterator[None]:
    """Point Minari (and dawm) at the dataset root ``root`` for the duration of the block.

    Minari reads ``MINARI_DATASETS_PATH`` at every call, so setting it is enough; the old value is restored.
    """
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


class LockHeldError(OSError):
    """Another process holds the lock :func:`exclusive_lock` was asked for (the message says who and what to do)."""

    holders: str = "another process"
    """Who holds it, ``pid N`` when the lock file names a live local process (for messages)."""


#: Lock files this process holds -> nested re-acquisitions: a nested request for a lock the process already
#: holds (a dataset writer inside ``dawm generate``, which locked the id first) succeeds at once.
_HELD: dict[str, int] = {}
_HELD_GUARD = threading.Lock()


def _lock_holders(path: Path) -> str:
    """``pid N`` of the live processes recorded in the lock file ``path`` (best effort, for the message)."""
    pids = []
    with contextlib.suppress(OSError, ValueError):
        for word in path.read_text().split():
            pid = int(word)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 0)  # signal 0: only asks whether the process exists
                pids.append(str(pid))
    return f"pid {', '.join(dict.fromkeys(pids))}" if pids else "another process"


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str, *, shared: bool = False, wait: bool = False,
                   hint: str = "wait for it to finish or use another --id",
                   prune_to: Optional[Path] = None) -> Iterator[Path]:
    """Hold an advisory ``flock`` on the file ``path`` for the duration of the block.

    The OS drops the lock when the holder dies, even by ``kill -9``, so a crashed run never leaves a stale lock.
    The file records the holders' pids (for the message). A process that already holds ``path`` (in either
    mode) gets it again at once: the outer holder owns it.

    Args:
        path: the lock file (created with its folders when missing).
        what: what the lock guards, for the message (``dataset X``).
        shared: take a shared lock: any number of shared holders at once, but none beside an exclusive one
            (the shards of one ``dawm generate`` run).
        wait: block until the lock is free instead of failing.
        hint: how to fix a conflict, appended to the message.
        prune_to: the last holder to let go removes the lock file and the folders this leaves empty, up to and
            including ``prune_to`` (a folder above ``path``); None keeps the file.

    Yields:
        ``path`` as a :class:`Path`.

    Raises:
        LockHeldError: (an OSError) the lock is held by another process and ``wait`` is False; one line naming
            ``what``, the lock file, the holder's pid and ``hint``.
    """
    path = Path(path).expanduser()
    key = os.path.abspath(path)
    with _HELD_GUARD:
        nested = key in _HELD
        _HELD[key] = _HELD.get(key, 0) + 1 if nested else 0
    if nested:
        try:
            yield path
        finally:
            with _HELD_GUARD:
                _HELD[key] -= 1
        return
    try:
        fd = _acquire(path, what, shared, wait, hint)
    except BaseException:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        raise
    try:
        yield path
    finally:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        if prune_to is not None and _sole_holder(fd, shared):
            # removed while still locked: a process that opened the old file finds it unlinked and retries
            with contextlib.suppress(OSError):
                path.unlink()
                top = Path(os.path.abspath(prune_to))
                folder = path.parent
                while folder != top.parent and top in (folder, *folder.parents):
                    folder.rmdir()  # stops (OSError) at the first folder that is not empty
                    folder = folder.parent
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _sole_holder(fd: int, shared: bool) -> bool:
    """Whether this process alone holds the lock on ``fd``: always for an exclusive lock; a shared holder asks
    for an exclusive lock without waiting (if another holder got in meanwhile, the file is simply kept)."""
    if not shared:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _acquire(path: Path, what: str, shared: bool, wait: bool, hint: str) -> int:
    """Open and ``flock`` ``path``; retried when a releasing holder removed the file between open and flock."""
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # its folder was removed by a releasing holder just now
            continue
        try:
            fcntl.flock(fd, mode)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holders = _lock_holders(path)
            held = LockHeldError(f"another dawm run is writing {what} (lock {path} held by {holders}); {hint}")
            held.holders = holders
            raise held from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # we locked a file its last holder had just removed: lock the new one instead
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            time.sleep(0.01)
            continue
        record = f"{os.getpid()}\n".encode()
        if shared:
            os.lseek(fd, 0, os.SEEK_END)
        else:
            os.ftruncate(fd, 0)
        os.write(fd, record)
        return fd
