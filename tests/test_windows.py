"""World-model windows, return-to-go and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dawm_env.data.normalization import NormStats
from dawm_env.data.records import OfflineDataset
from dawm_env.data.windows import gather_windows, returns_to_go, window_starts


def test_windows_never_cross_episodes(hopper_random):
    H = 3
    starts = window_starts(hopper_random, H)
    ep = hopper_random.episode_ids()
    assert len(starts) > 0
    assert np.all(ep[starts] == ep[starts + H])
    w = gather_windows(hopper_random, starts, H)
    assert w.states.shape == (len(starts), H + 1, 11) and w.valid.all()
    # consecutive rows chain: next state of row h is the state of row h + 1
    np.testing.assert_array_equal(w.next_states[:, :-1], w.states[:, 1:])
    # every start that is missing would have crossed a boundary
    missing = np.setdiff1d(np.arange(hopper_random.num_transitions), starts)
    end = np.repeat(hopper_random.episode_offsets[1:], hopper_random.episode_lengths)
    assert np.all(missing + H >= end[missing])


def test_terminal_tails_pad_with_the_terminal_state(hopper_random):
    H = 4
    starts = window_starts(hopper_random, H, terminal_tails=True)
    w = gather_windows(hopper_random, starts, H)
    ep = hopper_random.episode_ids()
    last = hopper_random.episode_offsets[1:] - 1
    for b in np.flatnonzero(~w.valid.all(1))[:20]:
        e = ep[starts[b]]
        assert hopper_random.terminations[last[e]], "only terminated episodes are padded"
        n_real = last[e] - starts[b] + 1  # real transitions in the window
        np.testing.assert_array_equal(w.states[b, n_real], hopper_random.next_observations[last[e]])
        assert w.valid[b, n_real] and not w.valid[b, n_real + 1:].any()
        assert np.all(w.rewards[b, n_real:] == 0)


def test_return_to_go_matches_hand_computation():
    # one terminated episode of 3 steps and one truncated of 2, hopper-shaped
    obs = [np.arange(4 * 11, dtype=np.float32).reshape(4, 11), np.ones((3, 11), np.float32)]
    rew = [np.array([1.0, 2.0, 3.0], np.float32), np.array([10.0, -4.0], np.float32)]
    data = OfflineDataset.from_episodes(
        "hopper", obs, [np.zeros((3, 3)), np.zeros((2, 3))], rew,
        [np.array([0, 0, 1], bool), np.array([0, 0], bool)], [np.array([0, 0, 0], bool), np.array([0, 1], bool)])
    g = 0.9
    expected = np.array([1 + g * 2 + g * g * 3, 2 + g * 3, 3, 10 + g * -4, -4]) / 400.0
    np.testing.assert_allclose(returns_to_go(data, gamma=g), expected, rtol=1e-6)
    np.testing.assert_allclose(returns_to_go(data, gamma=g, scale=1.0), expected * 400.0, rtol=1e-6)


def test_return_to_go_long_episode(halfcheetah_random):
    rtg = returns_to_go(halfcheetah_random, gamma=0.99, scale=1.0)
    s, t = halfcheetah_random.episode_offsets[:2]
    r = halfcheetah_random.rewards[s:t].astype(np.float64)
    brute = np.array([sum(0.99 ** k * r[i + k] for k in range(len(r) - i)) for i in range(len(r))])
    np.testing.assert_allclose(rtg[s:t], brute, rtol=1e-4, atol=1e-4)


def test_norm_stats_round_trip(hopper_random):
    stats = NormStats.from_dataset(hopper_random)
    z = stats.normalize_obs(hopper_random.observations)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(stats.denormalize_obs(z), hopper_random.observations, atol=1e-4)
    zt = stats.normalize_obs(torch.as_tensor(hopper_random.observations))
    np.testing.assert_allclose(zt.numpy(), z, atol=1e-5)
    again = NormStats.from_dict(stats.to_dict())
    np.testing.assert_array_equal(again.obs_std, stats.obs_std)
    with pytest.raises(ValueError, match="lack key"):
        NormStats.from_dict({"obs_mean": [0.0]})
