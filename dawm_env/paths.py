"""Where dawm keeps things on disk, and atomic file helpers.

- ``DAWM_HOME`` (default ``~/.dawm``): behaviour-policy runs, bundles, caches.
- ``MINARI_DATASETS_PATH`` (Minari's own variable, default ``~/.minari/datasets``): datasets.
- ``DAWM_POLICIES_DIR``: the shipped behaviour policies (default ``../shared/behavior-policies``
  next to the repository, as laid out on the project's machines).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent


def dawm_home() -> Path:
    """Root of dawm's own files (``$DAWM_HOME`` or ``~/.dawm``)."""
    return Path(os.environ.get("DAWM_HOME", Path.home() / ".dawm")).expanduser()


def minari_root() -> Path:
    """Root folder of local Minari datasets (honours ``MINARI_DATASETS_PATH``)."""
    return Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets")).expanduser()


def shared_policies_dir() -> Path:
    """Folder holding the shipped behaviour policy zips."""
    env = os.environ.get("DAWM_POLICIES_DIR")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "behavior-policies"


def behavior_run_dir(task: str, seed: int) -> Path:
    """Folder of the behaviour SAC run that provides medium / medium-replay data for ``task``."""
    return dawm_home() / "behavior" / f"{task}-sac-seed{seed}"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
