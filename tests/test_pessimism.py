"""Pessimism in the dream env: uncertainty signals, penalty / halt math, the bundle's calibration, the SB3 recipe.

Uses the session's ``tiny_bundle`` (barely trained): the checks are about the machinery, not model quality.
"""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import dawm_env  # noqa: F401  (registers the ids)
from dawm_env.checkpoint import CheckpointError
from dawm_env.cli import app
from dawm_env.envs.dream import DreamConfig, DreamEnv, PessimismSettings
from dawm_env.envs.sb3 import (
    SB3TD3BC,
    RealMixReplayBuffer,
    frozen_obs_normalization,
    make_sb3_vec_env,
    real_mix_kwargs,
    td3bc_actor_loss,
)
from dawm_env.envs.vector import DreamVectorEnv
from dawm_env.world_model.bundle import Bundle
from dawm_env.world_model.calibration import (
    HALT_PERCENTILE,
    PENALTY_SCALE,
    PESSIMISM_FILE,
    PessimismCalibration,
    read_calibration,
)
from dawm_env.world_model.uncertainty import calibrate_pessimism, dream_transition

PESSIMISM_KEYS = ("uncertainty", "penalty", "halted", "raw_reward")


@pytest.fixture
def bundle(tiny_bundle) -> str:
    return str(tiny_bundle)


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> str:
    """A writable copy of the tiny bundle (for tests that rewrite its calibration)."""
    dst = tmp_path / "bundle_copy"
    shutil.copytree(tiny_bundle, dst)
    return str(dst)


# --------------------------------------------------------------------------- penalty / halt math
def test_penalty_and_halt_math_by_hand():
    p = PessimismSettings(signal="action_gap", penalty_coef=10.0, halt_threshold=0.3, halt_penalty=2.0)
    rewards = np.array([3.0, 2.0, 1.0, 4.0])
    u = np.array([0.1, 0.5, 0.05, 0.3])  # 0.3 is not above the threshold
    real_term = np.array([False, False, True, False])
    r, term, halted, penalty = p.apply(rewards, u, real_term)
    np.testing.assert_allclose(penalty, [1.0, 5.0 + 2.0, 0.5, 3.0])
    np.testing.assert_allclose(r, [2.0, 2.0 - 7.0, 0.5, 1.0])
    assert halted.tolist() == [False, True, False, False]
    assert term.tolist() == [False, True, True, False]
    no_halt = PessimismSettings("action_gap", 1.0, None, 5.0)
    r, term, halted, penalty = no_halt.apply(rewards, u, real_term)
    np.testing.assert_allclose(r, rewards - u)
    assert not halted.any() and term.tolist() == real_term.tolist()


def test_settings_resolve_from_calibration_and_overrides(bundle):
    cal = Bundle.load(bundle).pessimism
    c = cal.signal("action_gap")
    s = PessimismSettings.resolve(DreamConfig(bundle=bundle), cal, bundle)
    assert (s.signal, s.penalty_coef, s.halt_threshold, s.halt_penalty) == ("action_gap", c.penalty_coef,
                                                                           c.halt_threshold, 0.0)
    s = PessimismSettings.resolve(DreamConfig(bundle=bundle, uncertainty="disagreement", penalty_coef=2.0,
                                              halt=False), cal, bundle)
    assert (s.signal, s.penalty_coef, s.halt_threshold) == ("disagreement", 2.0, None)
    assert PessimismSettings.resolve(DreamConfig(bundle=bundle, pessimism=False), cal, bundle) is None
    # explicit values need no calibration; missing ones name the fixes
    s = PessimismSettings.resolve(DreamConfig(bundle=bundle, penalty_coef=1.0, halt_threshold=0.2), None, bundle)
    assert (s.penalty_coef, s.halt_threshold) == (1.0, 0.2)
    with pytest.raises(ValueError, match="no pessimism calibration.*dawm bundle calibrate.*pessimism=False"):
        PessimismSettings.resolve(DreamConfig(bundle=bundle), None, bundle)


@pytest.mark.parametrize("kwargs, match", [
    ({"uncertainty": "ensemble"}, "unknown uncertainty signal"),
    ({"penalty_coef": -1.0}, "penalty_coef must be a finite number >= 0"),
    ({"halt_threshold": 0.0}, "halt_threshold must be > 0"),
    ({"halt_threshold": float("nan")}, "halt_threshold must be a finite number"),
    ({"halt_penalty": None}, "halt_penalty must be a number"),
])
def test_bad_pessimism_config(bundle, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DreamConfig(bundle=bundle, **kwargs)


# --------------------------------------------------------------------------- signals
def test_action_gap_is_zero_without_previous_state_and_equals_idm_error(bundle):
    b = Bundle.load(bundle)
    rng = np.random.default_rng(0)
    s = b.seed_states[:6].astype(np.float64)
    a = rng.uniform(-1, 1, (6, 3)).astype(np.float32)
    prev = s + 0.01
    prev[:2] = np.nan
    step = dream_transition(b, s, a, 0.8, torch.Generator().manual_seed(0), ("action_gap",), prev_states=prev)
    gap = step.signals["action_gap"]
    assert gap.shape == (6,) and (gap[:2] == 0).all() and (gap[2:] > 0).all()
    prev_norm = b.normalize_obs(torch.as_tensor(prev[2:], dtype=torch.float32))
    inferred, _ = b.idm.act(prev_norm, step.window.states_norm[2:, 0], step.window.states_norm[2:, 1])
    np.testing.assert_allclose(gap[2:], (inferred - torch.as_tensor(a[2:])).abs().mean(-1).numpy(), rtol=1e-5)


def test_disagreement_is_zero_without_sampling_noise(bundle):
    b = Bundle.load(bundle)
    s, a = b.seed_states[:4].astype(np.float64), b.seed_actions[:4]
    noisy = dream_transition(b, s, a, 0.8, torch.Generator().manual_seed(0), ("disagreement",), temperature=0.5)
    exact = dream_transition(b, s, a, 0.8, torch.Generator().manual_seed(0), ("disagreement",), temperature=0.0)
    assert (noisy.signals["disagreement"] > 0).all()
    np.testing.assert_allclose(exact.signals["disagreement"], 0.0, atol=1e-6)
    # the first of the two samples is the transition: same as a one-sample step with the same noise
    assert noisy.next_states.shape == (4, 11) and noisy.rewards.shape == (4,)


# --------------------------------------------------------------------------- calibration
def test_calibration_is_stored_with_the_bundle_and_consistent(bundle, hopper_random):
    cal = Bundle.load(bundle).pessimism
    assert cal is not None and cal == read_calibration(bundle)
    assert set(cal.signals) == {"action_gap", "disagreement"}
    for c in cal.signals.values():
        p = [c.percentiles[k] for k in ("p50", "p90", "p95", "p99", "p99.9")]
        assert p == sorted(p) and c.halt_threshold == c.percentiles[f"p{HALT_PERCENTILE:g}"]
        assert c.penalty_coef == pytest.approx(PENALTY_SCALE * abs(cal.reward_mean) / c.percentiles["p99"])
        assert -1.0 <= c.error_correlation <= 1.0
    again = calibrate_pessimism(Bundle.load(bundle), hopper_random, transitions=200, seed=3)
    assert PessimismCalibration.from_dict(json.loads(json.dumps(again.to_dict()))) == again
    assert again.transitions == 200


def test_calibration_rejects_other_tasks_and_bad_files(bundle_copy, halfcheetah_random):
    with pytest.raises(ValueError, match="cannot calibrate a hopper bundle on halfcheetah data"):
        calibrate_pessimism(Bundle.load(bundle_copy), halfcheetah_random, transitions=10)
    path = f"{bundle_copy}/{PESSIMISM_FILE}"
    cal = json.load(open(path))
    cal["signals"]["action_gap"]["penalty_coef"] = -3
    json.dump(cal, open(path, "w"))
    with pytest.raises(CheckpointError, match="pessimism.json is not a valid pessimism calibration.*dawm bundle calibrate"):
        Bundle.load(bundle_copy)


def test_cli_calibrate_writes_the_file(bundle_copy, hopper_random, tmp_path):
    from dawm_env.data.loading import save_npz

    data = tmp_path / "real.npz"
    save_npz(hopper_random, data)
    (tmp_path / "bundle_copy" / PESSIMISM_FILE).unlink()
    with pytest.raises(ValueError, match="no pessimism calibration"):
        gym.make("DAWM-Hopper-v0", bundle=bundle_copy)
    assert gym.make("DAWM-Hopper-v0", bundle=bundle_copy, pessimism=False) is not None
    res = CliRunner().invoke(app, ["bundle", "calibrate", bundle_copy, "--dataset", str(data), "--transitions", "300"])
    assert res.exit_code == 0, res.output
    assert "action_gap" in res.output and "penalty_coef" in res.output
    cal = read_calibration(bundle_copy)  # the bundle's own data: only its held-out episodes are measured
    assert cal.dataset == str(data) and 0 < cal.transitions < 300
    res = CliRunner().invoke(app, ["bundle", "calibrate", bundle_copy, "--transitions", "0"])
    assert res.exit_code == 2 and "--transitions must be >= 1" in res.output


# --------------------------------------------------------------------------- envs
def test_env_reward_is_raw_minus_penalty_and_halts(bundle):
    env = gym.make("DAWM-Hopper-v0", bundle=bundle, penalty_coef=3.0, halt_threshold=1e-9, halt_penalty=0.5)
    _, info = env.reset(seed=0)
    assert {k: info[k] for k in PESSIMISM_KEYS} == {"uncertainty": 0.0, "penalty": 0.0, "halted": False,
                                                    "raw_reward": 0.0}
    a = np.full(3, 0.9, np.float32)
    _, r, term, _, info = env.step(a)  # first step: s_{t-1} unknown, so the action gap is 0: no halt
    assert info["uncertainty"] == 0.0 and not info["halted"] and r == pytest.approx(info["raw_reward"])
    if not term:
        _, r, term, _, info = env.step(a)
        assert info["uncertainty"] > 1e-9 and info["halted"] and term
        assert info["penalty"] == pytest.approx(3.0 * info["uncertainty"] + 0.5)
        assert r == pytest.approx(info["raw_reward"] - info["penalty"])


def test_vector_and_single_env_agree_with_pessimism(bundle):
    kwargs = dict(task="hopper", bundle=bundle, uncertainty="disagreement")
    single = DreamEnv(max_episode_steps=50, **kwargs)
    vec = DreamVectorEnv(num_envs=1, max_episode_steps=50, **kwargs)
    o1, i1 = single.reset(seed=5)
    o2, i2 = vec.reset(seed=5)
    np.testing.assert_array_equal(o1, o2[0])
    actions = np.random.default_rng(1).uniform(-1, 1, (6, 3)).astype(np.float32)
    for a in actions:
        o1, r1, t1, _, i1 = single.step(a)
        o2, r2, t2, _, i2 = vec.step(a[None])
        np.testing.assert_allclose(o1, o2[0], rtol=1e-6)
        assert r1 == pytest.approx(r2[0], rel=1e-6) and t1 == t2[0]
        for k in PESSIMISM_KEYS:
            assert i1[k] == pytest.approx(i2[k][0], rel=1e-6) and i2[f"_{k}"].all()
        if t1:
            break


def test_sb3_halt_is_a_termination_not_a_timeout(bundle):
    venv = make_sb3_vec_env("DAWM-Hopper-v0", num_envs=4, max_episode_steps=50, seed=0, bundle=bundle,
                            penalty_coef=0.0, halt_threshold=1e-9)
    venv.reset()
    a = np.full((4, 3), 0.9, np.float32)
    venv.step(a)  # first step never halts on the action gap
    _, rew, dones, infos = venv.step(a)
    for i in range(4):
        if infos[i]["halted"]:
            assert dones[i] and infos[i]["TimeLimit.truncated"] is False and "terminal_observation" in infos[i]
    assert any(info["halted"] for info in infos)


def test_env_checkers_pass_with_pessimism_on(bundle):
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    with pytest.warns(UserWarning):  # infinite observation bounds, like the real env
        gym_check(gym.make("DAWM-Hopper-v0", bundle=bundle, uncertainty="disagreement").unwrapped)
    sb3_check(gym.make("DAWM-Hopper-v0", bundle=bundle), warn=False)


# --------------------------------------------------------------------------- SB3 real-data mixing
def test_real_mix_buffer_batches(hopper_random):
    from gymnasium import spaces

    obs_space = spaces.Box(-np.inf, np.inf, (11,), np.float64)
    act_space = spaces.Box(-1, 1, (3,), np.float32)
    buf = RealMixReplayBuffer(100, obs_space, act_space, device="cpu", real_data=hopper_random, real_fraction=0.25)
    only_real = buf.sample(8)  # nothing dreamed yet: all real
    assert only_real.observations.shape == (8, 11)
    for _ in range(10):
        buf.add(np.full((1, 11), 7.0), np.full((1, 11), 8.0), np.zeros((1, 3)), np.array([1.5]), np.array([False]),
                [{}])
    batch = buf.sample(40)
    dream = (batch.observations == 7.0).all(1)
    assert int(dream.sum()) == 30  # 40 - round(0.25 * 40)
    np.testing.assert_array_equal(buf.last_real_mask.numpy(), ~dream.numpy())  # the rows SB3TD3BC clones
    real_obs = batch.observations[~dream].numpy()
    rows = [int(np.flatnonzero((np.abs(hopper_random.observations - o) < 1e-6).all(1))[0]) for o in real_obs]
    np.testing.assert_allclose(batch.rewards[~dream].numpy().ravel(), hopper_random.rewards[rows], rtol=1e-6)
    np.testing.assert_array_equal(batch.dones[~dream].numpy().ravel(), hopper_random.terminations[rows])
    with pytest.raises(ValueError, match="real_fraction must lie in"):
        RealMixReplayBuffer(10, obs_space, act_space, real_data=hopper_random, real_fraction=1.5)
    with pytest.raises(ValueError, match="the agent's spaces"):
        RealMixReplayBuffer(10, spaces.Box(-1, 1, (5,)), act_space, real_data=hopper_random)


def test_sac_learns_with_real_mix_in_pessimistic_dream(bundle, hopper_random):
    from stable_baselines3 import SAC

    venv = make_sb3_vec_env("DAWM-Hopper-v0", num_envs=2, max_episode_steps=5, seed=0, bundle=bundle)
    model = SAC("MlpPolicy", venv, learning_starts=10, batch_size=16, buffer_size=200, seed=0, device="cpu",
                replay_buffer_class=RealMixReplayBuffer,
                replay_buffer_kwargs=real_mix_kwargs(hopper_random, real_fraction=0.5))
    model.learn(40)
    assert model.num_timesteps >= 40 and model.replay_buffer.size() > 0


def test_td3bc_actor_loss_by_hand():
    q = torch.tensor([[2.0], [-4.0], [6.0]])
    pi = torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    a = torch.tensor([[0.0, 0.0], [0.5, -0.5], [0.0, 0.0]])
    lmbda = 2.5 / 4.0  # alpha / mean |Q| = 2.5 / ((2 + 4 + 6) / 3)
    sq = [(0 + 1) / 2, (0 + 1) / 2, (1 + 0) / 2]  # per-row mean squared action error
    assert float(td3bc_actor_loss(q, pi, a, 2.5)) == pytest.approx(-lmbda * 4 / 3 + np.mean(sq))
    mask = torch.tensor([False, True, True])
    assert float(td3bc_actor_loss(q, pi, a, 2.5, mask)) == pytest.approx(-lmbda * 4 / 3 + np.mean(sq[1:]))
    none = torch.zeros(3, dtype=torch.bool)
    assert float(td3bc_actor_loss(q, pi, a, 2.5, none)) == pytest.approx(-lmbda * 4 / 3)
    # lambda is a constant: the gradient reaches pi only through Q and the BC term
    q_leaf = q.clone().requires_grad_(True)
    td3bc_actor_loss(q_leaf, pi, a, 2.5, none).backward()
    np.testing.assert_allclose(q_leaf.grad.numpy(), np.full((3, 1), -lmbda / 3), rtol=1e-6)


def test_frozen_obs_normalization_uses_the_data_statistics(bundle, hopper_random):
    venv = frozen_obs_normalization(make_sb3_vec_env("DAWM-Hopper-v0", num_envs=2, max_episode_steps=5, seed=0,
                                                     bundle=bundle), hopper_random)
    mean, std = hopper_random.observations.mean(0), hopper_random.observations.std(0) + 1e-3
    obs = venv.reset()
    np.testing.assert_allclose(obs, (venv.get_original_obs() - mean) / std, rtol=1e-5, atol=1e-5)
    before = venv.obs_rms.mean.copy()
    venv.step(np.zeros((2, 3), dtype=np.float32))
    np.testing.assert_array_equal(venv.obs_rms.mean, before)  # frozen: the dream's own states never move it


def test_sb3_td3bc_learns_in_the_dream_cloning_real_rows(bundle, hopper_random):
    venv = frozen_obs_normalization(make_sb3_vec_env("DAWM-Hopper-v0", num_envs=2, max_episode_steps=5, seed=0,
                                                     bundle=bundle), hopper_random)
    model = SB3TD3BC("MlpPolicy", venv, bc_rows="real", learning_starts=10, batch_size=16, buffer_size=200,
                     seed=0, device="cpu", policy_kwargs={"net_arch": [32, 32]}, replay_buffer_class=RealMixReplayBuffer,
                     replay_buffer_kwargs=real_mix_kwargs(hopper_random, real_fraction=0.5))
    model.learn(40)
    assert model.num_timesteps >= 40 and model.replay_buffer.size() > 0
    assert int(model.replay_buffer.last_real_mask.sum()) == 8
    with pytest.raises(ValueError, match="needs replay_buffer_class=RealMixReplayBuffer"):
        SB3TD3BC("MlpPolicy", venv, bc_rows="real", buffer_size=10, device="cpu")
    with pytest.raises(ValueError, match="bc_rows must be"):
        SB3TD3BC("MlpPolicy", venv, bc_rows="dream", buffer_size=10, device="cpu")


def test_dream_example_trains_td3bc_and_scores_in_mujoco(bundle, hopper_random, tmp_path):
    import importlib.util
    from pathlib import Path

    from dawm_env.data.minari_io import write_minari_dataset

    ds_id = write_minari_dataset(hopper_random, "dawm-test/hopper/random-dream-v0", algorithm_name="random",
                                 description="tiny", provenance={})
    path = Path(__file__).resolve().parent.parent / "examples" / "dream_sac_hopper.py"
    spec = importlib.util.spec_from_file_location("dream_sac_hopper", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with pytest.raises(SystemExit, match="give --real-data"):
        example.main(["--algo", "td3bc", "--bundle", bundle])
    summary = example.main(["--algo", "td3bc", "--bundle", bundle, "--real-data", ds_id, "--timesteps", "40",
                            "--learning-starts", "10", "--num-envs", "2", "--horizon", "5", "--batch-size", "16",
                            "--eval-episodes", "1", "--final-episodes", "1", "--threads", "1",
                            "--out", str(tmp_path / "policy")])
    assert summary["td3bc"]["bc_rows"] == "real" and np.isfinite(summary["normalized_score_mean"])
    assert len(summary["real_returns"]) == summary["final_episodes"] == 1
    assert (tmp_path / "policy.zip").exists() and (tmp_path / "policy.json").exists()


# --------------------------------------------------------------------------- sampler schedule and precision
def test_explicit_timesteps_equal_the_strided_default(bundle):
    from dawm_env.world_model.diffusion import check_timesteps, strided_timesteps

    b = Bundle.load(bundle)
    wm = b.world_model
    s, a = b.seed_states[:5].astype(np.float64), b.seed_actions[:5]
    default = strided_timesteps(wm.n_diffusion_steps, wm.n_sampling_steps)
    x = b.sample_window(s, a, 0.8, 2, torch.Generator().manual_seed(1))
    y = b.sample_window(s, a, 0.8, 2, torch.Generator().manual_seed(1), timesteps=default)
    np.testing.assert_array_equal(x.states, y.states)
    z = b.sample_window(s, a, 0.8, 2, torch.Generator().manual_seed(1), timesteps=[0, wm.n_diffusion_steps - 2])
    assert not np.array_equal(x.states, z.states)
    bf = b.sample_window(s, a, 0.8, 2, torch.Generator().manual_seed(1), bf16=True)
    assert bf.states.dtype == np.float32 and np.isfinite(bf.states).all()
    for bad in ([], [2, 1], [0, 0], [-1, 2], [0, wm.n_diffusion_steps], [0.5]):
        with pytest.raises(ValueError, match="strictly ascending ints"):
            check_timesteps(bad, wm.n_diffusion_steps)


@pytest.mark.parametrize("kwargs, match", [
    ({"sampling_timesteps": [0, 3], "sampling_steps": 2}, "not both"),
    ({"sampling_timesteps": "0,3"}, "must be a list of ints"),
    ({"sampling_timesteps": [3, 0]}, "strictly ascending"),
    ({"sampling_timesteps": [True]}, "strictly ascending"),
])
def test_bad_sampling_timesteps(bundle, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DreamConfig(bundle=bundle, **kwargs)


def test_env_with_fast_sampler_and_bf16(bundle):
    k = Bundle.load(bundle).world_model.n_diffusion_steps
    with pytest.raises(ValueError, match="use indices 0.."):
        gym.make("DAWM-Hopper-v0", bundle=bundle, sampling_timesteps=[0, k])
    env = gym.make("DAWM-Hopper-v0", bundle=bundle, sampling_timesteps=[0, k - 2], guidance_weight=1.0, bf16=True)
    env.reset(seed=0)
    obs, r, *_ = env.step(np.zeros(3, np.float32))
    assert obs.shape == (11,) and np.isfinite(obs).all() and np.isfinite(r)
    assert json.loads(json.dumps(env.unwrapped.config.to_dict()))["sampling_timesteps"] == [0, k - 2]


def test_dream_transfer_summary_differences_to_the_baseline(tmp_path, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))  # the script imports its sibling _common
    spec = importlib.util.spec_from_file_location("dream_transfer_bench", bench / "dream_transfer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for group, scores in (("a", (10.0, 20.0)), ("b", (40.0, 50.0))):
        for seed, score in enumerate(scores):
            (tmp_path / f"{group}-s{seed}.json").write_text(json.dumps({
                "seed": seed, "normalized_score_mean": score, "real_returns": [1.0] * 3, "real_return_mean": 1.0,
                "dream_return_per_step_last100": 2.0,
                "history": [{"step": 10, "real_score": score, "real_return_per_step": 1.0, "real_episode_length": 5,
                             "dream_return_per_step": 2.0}]}))
    out = tmp_path / "summary.json"
    monkeypatch.setattr(sys, "argv", ["dream_transfer.py", "--group", f"a={tmp_path}/a-s*.json", "--group",
                                      f"b={tmp_path}/b-s*.json", "--baseline", "b", "--out", str(out)])
    mod.main()
    groups = json.loads(out.read_text())["groups"]
    assert groups["a"]["final_mean"] == 15.0 and groups["a"]["diff_to_baseline"]["mean"] == -30.0
    assert groups["a"]["diff_to_baseline"]["vs"] == "b" and "diff_to_baseline" not in groups["b"]
    lo, hi = groups["a"]["diff_to_baseline"]["ci95"]
    assert -40.0 <= lo <= -30.0 <= hi <= -20.0
