"""Layer-0 helpers: atomic writes give files the mode a plain ``open`` would; torch setup respects the caller."""

from __future__ import annotations

import json
import os
import stat

import numpy as np

from dawm_env.data.loading import _write_flat_cache
from dawm_env.paths import atomic_write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_follow_the_umask_not_mkstemps_0600(tmp_path, hopper_random):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "r.json", {"a": 1})
        _write_flat_cache(tmp_path / "cache.npz", hopper_random)
        assert _mode(tmp_path / "r.json") == 0o644  # readable by other users, like a plain open()
        assert _mode(tmp_path / "cache.npz") == 0o644
        os.umask(0o077)
        atomic_write_json(tmp_path / "private.json", {"a": 2})
        assert _mode(tmp_path / "private.json") == 0o600  # a strict umask is respected too
    finally:
        os.umask(old)
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
    assert np.load(tmp_path / "cache.npz")["observations"].shape == hopper_random.observations.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.npz", "private.json", "r.json"]  # no temp files


def test_setup_torch_leaves_the_callers_thread_count_alone(monkeypatch):
    import pytest
    import torch

    from dawm_env.runtime import setup_torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        setup_torch("cpu", None)
        assert torch.get_num_threads() == 1  # the Python API's default keeps what the caller chose
        setup_torch("cpu", 2)
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="threads"):
            setup_torch("cpu", 0)
    finally:
        torch.set_num_threads(before)
