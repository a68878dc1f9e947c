"""Failures that lose work, lie or crash, on the data / generation side (issue 15).

1. one writer per output id (``dawm data build`` / ``dawm generate`` / ``dawm data combine`` share a lock);
2. no garbage after interrupted runs: stale staging, chunk folders, ``.ID.old-*`` of a killed ``--overwrite``,
   flat caches of rewritten or deleted datasets;
3. the forked chunk writer of ``dawm generate`` dies with its parent (``kill -9``);
4. ``dawm data info FILE.hdf5|FILE.npz``;
5. ``dawm data combine`` keeps reference scores, eval env and provenance (``minari.combine_datasets`` drops them).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import h5py
import minari
import numpy as np
import pytest
from conftest import assert_one_line_error, assert_same_data, cli

import dawm_env.data.build as build
from dawm_env.data import minari_io
from dawm_env.data.loading import load_dataset, save_npz
from dawm_env.data.minari_io import (
    dataset_lock,
    read_provenance,
    staging_parent,
    write_minari_dataset,
)
from dawm_env.data.records import OfflineDataset
from dawm_env.data.rollout import collect_transitions, uniform_random_policy
from dawm_env.generation import GenerateConfig, generate_dataset
from dawm_env.paths import LockHeldError, dawm_home, exclusive_lock, minari_root
from dawm_env.tasks import get_task
from dawm_env.world_model.bundle import Bundle


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    """A child Python running ``code`` with this test's roots (MINARI_DATASETS_PATH / DAWM_HOME)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_for_line(proc: subprocess.Popen, expected: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if expected in line:
            return
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"child never printed {expected!r}: rc {proc.poll()}, stderr {proc.stderr.read()[-3000:]}")


_HOLD = """
import sys, time
from dawm_env.data.minari_io import dataset_lock
with dataset_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def _lock_held_elsewhere(dataset_id: str) -> Iterator[int]:
    """Another process holds the id's lock for the block; yields its pid."""
    proc = _python(_HOLD, dataset_id)
    try:
        _wait_for_line(proc, "held", timeout=60)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def no_work(monkeypatch) -> None:
    """Building or loading a bundle fails loudly: a test using this proves its error came before any work."""
    def started(*args, **kwargs):
        raise AssertionError("work started before the output id was locked")

    monkeypatch.setattr(build, "collect_level", started)
    monkeypatch.setattr(Bundle, "load", started)


# --- 1. one writer per output id ----------------------------------------------------------------------
def test_the_lock_is_exclusive_across_processes_and_names_the_holder(tmp_path):
    lock = tmp_path / "x.lock"
    code = ("import sys\nfrom dawm_env.paths import LockHeldError, exclusive_lock\ntry:\n"
            "    with exclusive_lock(sys.argv[1], 'dataset X'):\n        print('got it')\n"
            "except LockHeldError as err:\n    print(err)\n")
    with exclusive_lock(lock, "dataset X") as path:
        assert path == lock and lock.read_text().split() == [str(os.getpid())]
        with exclusive_lock(lock, "dataset X"):  # nested in the holder: granted at once
            pass
        out, _ = _python(code, str(lock)).communicate(timeout=60)
        assert out.count("\n") == 1 and "another dawm run is writing dataset X" in out
        assert f"held by pid {os.getpid()}" in out and "wait for it to finish or use another --id" in out
    out, _ = _python(code, str(lock)).communicate(timeout=60)
    assert out.strip() == "got it"  # released with the block (and a killed holder's lock dies with it)


_GATED_BUILD = """
import sys, time
from pathlib import Path
import dawm_env.data.build as build
real = build.collect_level
def gated(cfg, progress=True):
    print("collecting", flush=True)
    while not Path(sys.argv[1]).exists():
        time.sleep(0.05)
    return real(cfg, progress)
build.collect_level = gated
print(build.build_dataset(build.BuildConfig(task="hopper", level="random", steps=200, num_envs=2,
                                            dataset_id=sys.argv[2]), progress=False))
"""


def test_a_second_writer_of_one_id_fails_at_once_and_the_first_finishes(tmp_path, no_work):
    dataset_id = "test/hopper/busy-v0"
    go = tmp_path / "go"
    first = _python(_GATED_BUILD, str(go), dataset_id)
    try:
        _wait_for_line(first, "collecting")  # the first build holds the lock and is working
        # a second build (other settings), a generate and a combine into the same id all fail before any work
        second = cli("data", "build", "--task", "hopper", "--level", "random", "--steps", "300", "--id", dataset_id,
                      "--overwrite", "--no-progress")
        assert_one_line_error(second, f"another dawm run is writing dataset {dataset_id}", f"held by pid {first.pid}",
                        "choose another --id")
        gen = cli("generate", "--bundle", "hopper-medium", "--seed-dataset", "x.npz", "--out", dataset_id,
                   "--no-progress")
        assert_one_line_error(gen, f"writing dataset {dataset_id}", "choose another --out")
        with pytest.raises(LockHeldError, match="another dawm run is writing"):
            write_minari_dataset(_tiny(), dataset_id,
                                 algorithm_name="t", description="t", provenance={})
        go.touch()
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == dataset_id
    assert read_provenance(dataset_id)["config"]["steps"] == 200  # the first run's dataset, complete
    assert not (minari_root() / ".locks").exists()  # released and tidied


def _tiny(task: str = "hopper", n: int = 40, seed: int = 0) -> OfflineDataset:
    """A few real transitions of ``task`` (random actions)."""
    spec = get_task(task)
    return collect_transitions(spec, uniform_random_policy(spec.act_dim, seed=seed), n, seed=seed, num_envs=2,
                               progress=False)


def test_shards_with_other_settings_are_refused_while_the_other_run_lives(tiny_bundle, hopper_random, tmp_path):
    """Shards share the id's lock; a live partial run of another configuration must not be deleted."""
    seed = tmp_path / "seed.npz"
    save_npz(hopper_random, seed)
    out = "test/hopper/shards-v0"
    other = staging_parent() / f"gen-test_hopper_shards-v0-{'0' * 16}"
    other.mkdir(parents=True)
    (other / "run.json").write_text(json.dumps({"identity": {"out": out}}))
    code = ("import sys, time\nfrom dawm_env.paths import exclusive_lock\n"
            "with exclusive_lock(sys.argv[1], 'run', shared=True):\n    print('held', flush=True)\n    time.sleep(600)\n")
    holder = _python(code, str(other / "run.lock"))
    try:
        _wait_for_line(holder, "held", timeout=60)
        cfg = GenerateConfig(bundle=str(tiny_bundle), seed_dataset=str(seed), out=out, horizon=2, subsample=50,
                             batch_size=64, chunk_size=8, shard="0/2", progress=False)
        with pytest.raises(LockHeldError, match="different settings is writing test/hopper/shards-v0"):
            generate_dataset(cfg)
        assert other.is_dir()  # the live run's files are untouched
    finally:
        holder.kill()
        holder.wait()
    # once it is gone, its folder is stale and removed by the next run
    generate_dataset(GenerateConfig(bundle=str(tiny_bundle), seed_dataset=str(seed), out=out, horizon=2,
                                    subsample=50, batch_size=64, chunk_size=8, shard="0/2", progress=False))
    assert not other.exists()
    assert not (minari_root() / ".locks").exists()  # the last shared holder removed the lock file


# --- 2. garbage after interrupted runs ------------------------------------------------------------------
def test_stale_writer_staging_of_the_id_is_removed_and_others_are_kept():
    dataset_id, other_id = "test/hopper/stale-v0", "test/hopper/other-v0"
    mine = staging_parent() / uuid.uuid4().hex / dataset_id / "data"
    theirs = staging_parent() / uuid.uuid4().hex / other_id / "data"
    for folder in (mine, theirs):
        folder.mkdir(parents=True)
        (folder / "main_data.hdf5").write_bytes(b"half written")
    write_minari_dataset(_tiny(), dataset_id, algorithm_name="t", description="t", provenance={})
    assert not mine.parents[2].exists()  # the killed writer's folder of this id
    assert theirs.is_dir()  # another id's: maybe a live writer, never touched


def test_a_multi_chunk_generate_leaves_no_staging_and_no_lock(tiny_bundle, hopper_random, tmp_path):
    seed = tmp_path / "seed.npz"
    save_npz(hopper_random, seed)
    out = "test/hopper/chunks-v0"
    generate_dataset(GenerateConfig(bundle=str(tiny_bundle), seed_dataset=str(seed), out=out, horizon=2,
                                    subsample=20, batch_size=64, chunk_size=25, writers=1, progress=False))
    assert minari.load_dataset(out).total_episodes == len(hopper_random) // 20
    stage = staging_parent()
    assert not stage.exists() or not any(stage.iterdir())  # chunks and run folder removed after registration
    assert not (minari_root() / ".locks").exists()


def _kill_during_overwrite(dataset_id: str) -> Path:
    """The on-disk state an --overwrite killed between its two renames leaves: the id moved aside."""
    final = minari_root() / dataset_id
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
    final.rename(old)
    return old


def test_an_interrupted_overwrite_never_loses_the_id():
    data = _tiny()
    dataset_id = "test/hopper/swap-v0"
    write_minari_dataset(data, dataset_id, algorithm_name="t", description="t", provenance={"v": 1})
    old = _kill_during_overwrite(dataset_id)
    assert dataset_id not in minari.list_local_datasets()
    assert_same_data(data, load_dataset(dataset_id))  # the load puts the old copy back
    assert not old.exists()

    _kill_during_overwrite(dataset_id)
    listing = cli("data", "list")
    assert listing.exit_code == 0 and dataset_id in listing.output  # so does `dawm data list`

    # killed after the new one was moved in: both exist; the next writer of the id removes the old copy
    stray = minari_root() / "test/hopper" / f".swap-v0.old-{uuid.uuid4().hex}"
    shutil.copytree(minari_root() / dataset_id, stray)
    write_minari_dataset(_tiny(n=60), dataset_id, algorithm_name="t", description="t", provenance={"v": 2},
                         overwrite=True)
    assert not stray.exists() and read_provenance(dataset_id) == {"v": 2}


def test_a_failed_move_keeps_the_old_dataset(monkeypatch):
    dataset_id = "test/hopper/keep-v0"
    write_minari_dataset(_tiny(), dataset_id, algorithm_name="t", description="t", provenance={"v": 1})

    def broken_move(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(minari_io.shutil, "move", broken_move)
    with pytest.raises(OSError, match="No space"):
        write_minari_dataset(_tiny(n=60), dataset_id, algorithm_name="t", description="t", provenance={"v": 2},
                             overwrite=True)
    assert read_provenance(dataset_id) == {"v": 1}
    assert not list((minari_root() / "test/hopper").glob(".keep-v0.old-*"))


def test_the_flat_cache_keeps_one_copy_and_forgets_deleted_datasets(monkeypatch):
    import dawm_env.data.loading as loading

    monkeypatch.setattr(loading, "CACHE_MIN_EPISODES", 1)  # tiny data: cache it anyway
    dataset_id = "test/hopper/cached-v0"

    def caches() -> list[Path]:
        return sorted(dawm_home().glob("cache/minari/test__hopper__cached-v0-*.npz"))

    write_minari_dataset(_tiny(n=40), dataset_id, algorithm_name="t", description="t", provenance={})
    load_dataset(dataset_id)
    assert len(caches()) == 1
    new = _tiny(n=80, seed=1)
    write_minari_dataset(new, dataset_id, algorithm_name="t", description="t", provenance={}, overwrite=True)
    assert_same_data(new, load_dataset(dataset_id))  # the rewrite is read, and its cache replaces the old one
    assert len(caches()) == 1
    assert_same_data(new, load_dataset(dataset_id))  # now from the cache

    shutil.rmtree(minari_root() / dataset_id)  # what `minari delete` does
    with pytest.raises(FileNotFoundError, match="not on disk"):
        load_dataset(dataset_id)
    assert caches() == []

    write_minari_dataset(new, dataset_id, algorithm_name="t", description="t", provenance={})
    load_dataset(dataset_id)
    shutil.rmtree(minari_root() / dataset_id)
    assert cli("data", "list").exit_code == 0
    assert caches() == []  # `dawm data list` drops caches of deleted datasets too


# --- 3. the forked chunk writer dies with its parent ------------------------------------------------------
_SLOW_GENERATE = """
import sys, time
from dawm_env.generation import GenerateConfig, generate_dataset, writer
real = writer._Run.generate_chunk
def slow(self, c):
    if c >= 1:  # chunk 0 is with the forked writer by now
        print("writing", flush=True)
        time.sleep(600)
    return real(self, c)
writer._Run.generate_chunk = slow
generate_dataset(GenerateConfig(bundle=sys.argv[1], seed_dataset=sys.argv[2], out="test/hopper/fork-v0", horizon=2,
                                subsample=20, batch_size=64, chunk_size=25, writers=1, progress=False, threads=1))
"""


def _children(pid: int) -> list[int]:
    """Live (non-zombie) child processes of ``pid``, from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_forked_writer_exits_when_generate_is_killed(tiny_bundle, hopper_random, tmp_path):
    seed = tmp_path / "seed.npz"
    save_npz(hopper_random, seed)
    parent = _python(_SLOW_GENERATE, str(tiny_bundle), str(seed))
    try:
        _wait_for_line(parent, "writing")
        children = _children(parent.pid)
        assert children, "no forked writer found"
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(c) for c in children), "the writer outlived its parent"
    finally:
        parent.kill()
        parent.wait()
    # and the id is free again: the OS dropped the dead run's lock once its last process (a pool worker forked
    # after the snapshot above also inherits it) exited with the parent
    deadline = time.monotonic() + 10
    while True:
        try:
            with dataset_lock("test/hopper/fork-v0"):
                break
        except LockHeldError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_the_portable_fallback_exits_when_the_parent_changes():
    code = "from dawm_env.generation.writer import _exit_with_parent\n_exit_with_parent(-5, 0.01)\nprint('survived')"
    proc = _python(code)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "survived" not in out


# --- 4. dawm data info FILE ---------------------------------------------------------------------------------
def _write_d4rl_hdf5(data, path: Path) -> None:
    with h5py.File(path, "w") as f:
        f["observations"] = data.observations
        f["next_observations"] = data.next_observations
        f["actions"] = data.actions
        f["rewards"] = data.rewards
        f["terminals"] = data.terminations
        f["timeouts"] = data.truncations


def test_data_info_reads_d4rl_hdf5_and_npz_files(tmp_path, hopper_random):
    h5 = tmp_path / "hopper_random.hdf5"
    _write_d4rl_hdf5(hopper_random, h5)
    bare = tmp_path / "qlearning.npz"  # D4RL's qlearning_dataset layout: no task recorded
    np.savez(bare, observations=hopper_random.observations, actions=hopper_random.actions,
             rewards=hopper_random.rewards, next_observations=hopper_random.next_observations,
             terminals=hopper_random.terminations, timeouts=hopper_random.truncations)
    recorded = tmp_path / "saved.npz"  # save_npz records the task
    save_npz(hopper_random, recorded)
    for path, extra in ((h5, ["--task", "hopper"]), (bare, ["--task", "hopper"]), (recorded, [])):
        res = cli("data", "info", path, *extra)
        assert res.exit_code == 0, res.output
        assert f"dataset:      {path}" in res.output and "task:         hopper" in res.output
        assert f"transitions:  {hopper_random.num_transitions}" in res.output
        parsed = json.loads(cli("data", "info", path, *extra, "--json").output)
        assert parsed["episodes"] == hopper_random.num_episodes and parsed["generation"] is None
    for path in (h5, bare):
        assert_one_line_error(cli("data", "info", path), "does not record its task", "--task", "hopper")
    assert_one_line_error(cli("data", "info", h5, "--task", "halfcheetah"), "--task")  # wrong dimensions
    assert_one_line_error(cli("data", "info", tmp_path / "missing.hdf5"), "does not exist")


# --- 5. dawm data combine -------------------------------------------------------------------------------------
def test_combine_keeps_scores_eval_env_provenance_and_infos(hopper_random):
    real, other = "test/hopper/real-v0", "test/hopper/gen-v0"
    write_minari_dataset(hopper_random, real, algorithm_name="random", description="t",
                         provenance={"builder": "dawm data build"})
    extra = _tiny(n=30, seed=3)
    infos = {"seed_index": np.arange(extra.num_transitions, dtype=np.int64)}
    write_minari_dataset(extra, other, algorithm_name="DAWM", description="t", provenance={"kind": "generated"},
                         step_infos=infos)
    res = cli("data", "combine", real, other, "--id", "test/hopper/both-v0")
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == "test/hopper/both-v0"

    ds = minari.load_dataset("test/hopper/both-v0")
    src = minari.load_dataset(real)
    assert ds.total_episodes == hopper_random.num_episodes + extra.num_episodes
    assert ds.total_steps == hopper_random.num_transitions + extra.num_transitions
    for key in ("ref_min_score", "ref_max_score", "eval_env_spec", "env_spec"):
        assert ds.storage.metadata[key] == src.storage.metadata[key], key
    assert ds.storage.metadata["combined_datasets"] == [real, other]
    assert ds.recover_environment(eval_env=True).spec.id == "Hopper-v5"
    returns = np.array([float(np.sum(ep.rewards)) for ep in ds.iterate_episodes(range(3))])
    assert np.all(np.isfinite(minari.get_normalized_score(ds, returns)))  # fails on minari.combine_datasets' output
    prov = read_provenance("test/hopper/both-v0")
    assert prov["kind"] == minari_io.COMBINED_KIND and prov["combined_datasets"] == [real, other]
    assert prov["inputs"] == {real: {"builder": "dawm data build"}, other: {"kind": "generated"}}

    both = load_dataset("test/hopper/both-v0")
    assert_same_data(OfflineDataset.concatenate([hopper_random, extra]), both)
    last = list(minari_io.iter_episodes_fast("test/hopper/both-v0", indices=[ds.total_episodes - 1]))[0]
    assert "seed_index" in last["infos"]  # per-step infos copied with the episodes


def test_combine_refuses_what_it_cannot_combine(hopper_random, halfcheetah_random):
    write_minari_dataset(hopper_random, "test/hopper/a-v0", algorithm_name="t", description="t", provenance={})
    write_minari_dataset(_tiny(), "test/hopper/b-v0", algorithm_name="t", description="t", provenance={})
    write_minari_dataset(halfcheetah_random, "test/halfcheetah/c-v0", algorithm_name="t", description="t",
                         provenance={})
    assert_one_line_error(cli("data", "combine", "test/hopper/a-v0", "test/halfcheetah/c-v0", "--id", "test/x/y-v0"),
                    "must be of one task", "hopper", "halfcheetah")
    assert_one_line_error(cli("data", "combine", "test/hopper/a-v0", "--id", "test/x/y-v0"), "at least two")
    assert_one_line_error(cli("data", "combine", "test/hopper/a-v0", "test/hopper/b-v0", "--id", "test/hopper/a-v0"),
                    "is one of the inputs")
    assert_one_line_error(cli("data", "combine", "test/hopper/a-v0", "test/hopper/nope-v0", "--id", "test/x/y-v0"),
                    "test/hopper/nope-v0", "not on disk")
    assert_one_line_error(cli("data", "combine", "test/hopper/a-v0", "test/hopper/b-v0", "--id", "bad id"),
                    "invalid Minari dataset id")
    assert cli("data", "combine", "test/hopper/a-v0", "test/hopper/b-v0", "--id", "test/x/y-v0").exit_code == 0
    assert_one_line_error(cli("data", "combine", "test/hopper/a-v0", "test/hopper/b-v0", "--id", "test/x/y-v0"),
                    "already exists", "--overwrite")
    assert cli("data", "combine", "test/hopper/b-v0", "test/hopper/a-v0", "--id", "test/x/y-v0",
                "--overwrite").exit_code == 0
    with _lock_held_elsewhere("test/x/z-v0") as pid:
        assert_one_line_error(cli("data", "combine", "test/hopper/a-v0", "test/hopper/b-v0", "--id", "test/x/z-v0"),
                        "another dawm run is writing dataset test/x/z-v0", f"pid {pid}", "--id")
    assert sorted(minari.list_local_datasets()) == ["test/halfcheetah/c-v0", "test/hopper/a-v0", "test/hopper/b-v0",
                                                    "test/x/y-v0"]
