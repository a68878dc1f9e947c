"""Where dawm keeps things on disk, and atomic file helpers.

- ``DAWM_HOME`` (default ``~/.dawm``): behaviour-policy runs, bundles, caches.
- ``MINARI_DATASETS_PATH`` (Minari's own variable, default ``~/.minari/datasets``): datasets.
- ``DAWM_POLICIES_DIR``: a folder of behaviour policies overriding the ones shipped inside the package
  (``dawm_env/policies``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

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
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_temp_file(path, ".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON-dump ``obj`` to ``path`` atomically (sorted keys, indented)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


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
