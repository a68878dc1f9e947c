"""The three loaders (Minari id, D4RL hdf5, qlearning npz) agree, and bad input errors clearly."""

from __future__ import annotations

import h5py
import minari
import numpy as np
import pytest
from conftest import assert_same_data

from dawm_env.data.loading import load_dataset, save_npz
from dawm_env.data.minari_io import write_minari_dataset
from dawm_env.data.records import OfflineDataset
from dawm_env.paths import dawm_home


def _write_d4rl_hdf5(data: OfflineDataset, path, with_next: bool = True) -> None:
    with h5py.File(path, "w") as f:
        f["observations"] = data.observations
        f["actions"] = data.actions
        f["rewards"] = data.rewards
        f["terminals"] = data.terminations
        f["timeouts"] = data.truncations
        if with_next:
            f["next_observations"] = data.next_observations


def _write_plain_qlearning(data: OfflineDataset, path) -> None:
    """Exactly D4RL's qlearning_dataset keys: no timeouts, no offsets."""
    np.savez(path, observations=data.observations, actions=data.actions, rewards=data.rewards,
             next_observations=data.next_observations, terminals=data.terminations)


def test_three_loaders_agree(hopper_random, tmp_path):
    write_minari_dataset(hopper_random, "test/hopper/random-v0", algorithm_name="random", description="t",
                         provenance={"test": True})
    _write_d4rl_hdf5(hopper_random, tmp_path / "d4rl.hdf5")
    _write_plain_qlearning(hopper_random, tmp_path / "q.npz")
    from_minari = load_dataset("test/hopper/random-v0")
    from_hdf5 = load_dataset(tmp_path / "d4rl.hdf5", task="hopper")
    from_npz = load_dataset(str(tmp_path / "q.npz"), task="hopper")
    for loaded in (from_minari, from_hdf5, from_npz):
        assert_same_data(hopper_random, loaded)
    assert from_minari.task == "hopper"
    np.testing.assert_array_equal(from_minari.seeds, hopper_random.seeds)  # per-episode seeds survive


def test_timeouts_are_not_terminals(halfcheetah_random, tmp_path):
    _write_d4rl_hdf5(halfcheetah_random, tmp_path / "hc.hdf5")
    loaded = load_dataset(tmp_path / "hc.hdf5", task="halfcheetah")
    assert not loaded.terminations.any()
    assert loaded.truncations.sum() == loaded.num_episodes == halfcheetah_random.num_episodes


def test_hdf5_without_next_observations_drops_unknown_last_steps(hopper_random, tmp_path):
    _write_d4rl_hdf5(hopper_random, tmp_path / "old.hdf5", with_next=False)
    loaded = load_dataset(tmp_path / "old.hdf5", task="hopper")
    keep = np.ones(hopper_random.num_transitions, bool)
    keep[hopper_random.episode_offsets[1:] - 1] = False
    np.testing.assert_array_equal(loaded.observations, hopper_random.observations[keep])
    np.testing.assert_array_equal(loaded.next_observations, hopper_random.next_observations[keep])
    # s' is the next row of the same episode, never the next episode's first state
    assert loaded.num_episodes == int((hopper_random.episode_lengths > 1).sum())
    assert not loaded.terminations.any()


def test_npz_round_trip_keeps_seeds_and_offsets(hopper_random, tmp_path):
    save_npz(hopper_random, tmp_path / "native.npz")
    loaded = load_dataset(tmp_path / "native.npz")
    assert_same_data(hopper_random, loaded)
    assert loaded.task == "hopper"
    np.testing.assert_array_equal(loaded.seeds, hopper_random.seeds)


def test_minari_normalized_score_and_eval_env(hopper_random):
    write_minari_dataset(hopper_random, "test/hopper/random-v0", algorithm_name="random", description="t",
                         provenance={"x": 1})
    ds = minari.load_dataset("test/hopper/random-v0")
    score = minari.get_normalized_score(ds, np.array([3234.3]))
    assert score[0] == pytest.approx(1.0)
    env = ds.recover_environment(eval_env=True)
    assert env.spec.id == "Hopper-v5"
    assert ds.total_steps == hopper_random.num_transitions


def test_missing_minari_id_says_how_to_get_it():
    with pytest.raises(FileNotFoundError, match="dawm data build") as err:
        load_dataset("dawm-d4rl/hopper/medium-v0")
    assert "minari download" in str(err.value)


@pytest.mark.parametrize("bad", ["not a dataset id!", "hopper//medium"])
def test_invalid_ids_error(bad):
    with pytest.raises((ValueError, FileNotFoundError)):
        load_dataset(bad)


def test_bad_paths_keys_and_shapes(hopper_random, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(tmp_path / "nope.hdf5")
    with pytest.raises(FileNotFoundError, match="expected .hdf5"):
        load_dataset(str(tmp_path))
    np.savez(tmp_path / "bad.npz", observations=np.zeros((3, 11)))
    with pytest.raises(ValueError, match="missing qlearning_dataset keys"):
        load_dataset(tmp_path / "bad.npz")
    np.savez(tmp_path / "short.npz", observations=np.zeros((3, 11)), actions=np.zeros((2, 3)),
             rewards=np.zeros(3), next_observations=np.zeros((3, 11)), terminals=np.zeros(3))
    with pytest.raises(ValueError, match="actions has 2 rows"):
        load_dataset(tmp_path / "short.npz")
    save_npz(hopper_random, tmp_path / "hopper.npz")
    with pytest.raises(ValueError, match="task walker2d needs 17 / 6"):
        load_dataset(tmp_path / "hopper.npz", task="walker2d")
    with h5py.File(tmp_path / "nokeys.hdf5", "w") as f:
        f["observations"] = np.zeros((2, 11))
    with pytest.raises(ValueError, match="missing D4RL keys"):
        load_dataset(tmp_path / "nokeys.hdf5")


def test_records_reject_inconsistent_data(hopper_random):
    d = hopper_random
    assert d.episode_lengths[0] > 1
    flags = d.terminations.copy()
    flags[0] = True  # a termination in the middle of episode 0
    with pytest.raises(ValueError, match="inside an episode"):
        OfflineDataset(d.task, d.observations, d.actions, d.rewards, d.next_observations, flags, d.truncations,
                       d.episode_offsets, d.seeds)
    bad_obs = d.observations.copy()
    bad_obs[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        OfflineDataset(d.task, bad_obs, d.actions, d.rewards, d.next_observations, d.terminations, d.truncations,
                       d.episode_offsets, d.seeds)


def test_episode_access_is_minari_layout(hopper_random):
    ep = hopper_random.episode(0)
    assert ep.observations.shape == (ep.length + 1, 11)
    assert ep.terminations[-1] != ep.truncations[-1]
    assert ep.seed == hopper_random.seeds[0]
    np.testing.assert_allclose(hopper_random.episode_returns()[0], ep.rewards.sum(), rtol=1e-6)


def test_terminated_and_truncated_on_the_same_step_survive_every_loader(tmp_path):
    """Gymnasium allows both flags at once (a fall on the time limit's last step); keep both."""
    rng = np.random.default_rng(0)
    obs = [rng.normal(size=(4, 11)).astype(np.float32), rng.normal(size=(3, 11)).astype(np.float32)]
    data = OfflineDataset.from_episodes(
        "hopper", obs, [rng.uniform(-1, 1, (3, 3)), rng.uniform(-1, 1, (2, 3))], [np.ones(3), np.ones(2)],
        [np.array([0, 0, 1], bool), np.array([0, 1], bool)], [np.array([0, 0, 1], bool), np.array([0, 0], bool)])
    assert data.terminations[2] and data.truncations[2]
    write_minari_dataset(data, "test/hopper/both-v0", algorithm_name="t", description="t", provenance={})
    _write_d4rl_hdf5(data, tmp_path / "both.hdf5")
    save_npz(data, tmp_path / "both.npz")
    for loaded in (load_dataset("test/hopper/both-v0"), load_dataset(tmp_path / "both.hdf5", task="hopper"),
                   load_dataset(tmp_path / "both.npz")):
        assert_same_data(data, loaded)


def test_large_minari_datasets_load_from_a_flat_cache(hopper_random, monkeypatch):
    import dawm_env.data.loading as loading

    monkeypatch.setattr(loading, "CACHE_MIN_EPISODES", 1)  # the fixture is small: cache it anyway
    write_minari_dataset(hopper_random, "test/hopper/cached-v0", algorithm_name="random", description="t",
                         provenance={"test": True})
    first = load_dataset("test/hopper/cached-v0")  # reads the episodes, writes the cache
    caches = list(dawm_home().glob("cache/minari/test__hopper__cached-v0-*.npz"))
    assert len(caches) == 1

    def no_episode_reads(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(loading, "iter_episodes_fast", no_episode_reads)
    second = load_dataset("test/hopper/cached-v0")
    assert_same_data(first, second)
    np.testing.assert_array_equal(first.seeds, second.seeds)
    assert second.metadata == first.metadata and second.task == "hopper"
    monkeypatch.setenv("DAWM_CACHE", "0")  # caching off: the episodes are read again
    with pytest.raises(AssertionError, match="cache should have been used"):
        load_dataset("test/hopper/cached-v0")


def test_minari_files_open_with_a_metadata_cache_big_enough_for_millions_of_episodes(hopper_random, monkeypatch):
    """Minari keeps every episode name in one HDF5 heap (~24 B each): past HDF5's default 32 MB cache
    (~1.3M episodes, e.g. 2M generated rollouts) every lookup re-read it and a merge crawled at 8
    episodes/s. The writer and the fast reader must open the file with the larger cache."""
    import dawm_env.data.minari_io as minari_io

    opened = []
    real_open = minari_io._open_hdf5

    def spy(path, writable=False):
        fid = real_open(path, writable)
        opened.append((writable, fid.get_mdc_config().max_size))
        return fid

    monkeypatch.setattr(minari_io, "_open_hdf5", spy)
    write_minari_dataset(hopper_random, "test/hopper/mdc-v0", algorithm_name="random", description="t",
                         provenance={})
    episodes = list(minari_io.iter_episodes_fast("test/hopper/mdc-v0"))
    assert len(episodes) == hopper_random.num_episodes
    assert {w for w, _ in opened} == {True, False}  # written and read through it
    assert all(size >= 2 * 48 * 1024 * 1024 for _, size in opened)  # 2M names (~48 MB) fit twice
