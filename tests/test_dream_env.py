"""Dream environments: registration, semantics, determinism, vector env, SB3 adapter, rendering, bad input.

Every test uses the session's ``tiny_bundle`` (a barely trained hopper bundle): the checks are about
the env machinery, not model quality.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import dawm_env  # noqa: F401  (registers the ids)
from dawm_env.envs import DREAM_ENVS
from dawm_env.envs.dream import DreamConfig, DreamEnv, load_bundle_for
from dawm_env.envs.vector import DreamVectorEnv
from dawm_env.tasks import get_task

REPO = Path(__file__).resolve().parent.parent
HOPPER = get_task("hopper")


@pytest.fixture
def bundle(tiny_bundle) -> str:
    """The tiny hopper bundle folder as a JSON-friendly string kwarg."""
    return str(tiny_bundle)


def make(bundle: str, **kwargs):
    return gym.make("DAWM-Hopper-v0", bundle=bundle, **kwargs)


def rollout(env, seed: int, actions: np.ndarray):
    """Observations, rewards and flags of an episode driven by ``actions`` (stops at the end)."""
    obs, info = env.reset(seed=seed)
    out = [obs]
    rews, flags = [], []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append(obs)
        rews.append(r)
        flags.append((term, trunc))
        if term or trunc:
            break
    return np.array(out), np.array(rews), flags


def stay_model(monkeypatch, dynamics, terminate=None):
    """Replace the world model by one that keeps the state (healthy) and pays reward 1.

    ``terminate``: optional ``{call_number: batch_rows}`` forced to an unhealthy next state (z = 0.5).
    Returns a list that records the batch size of every call.
    """
    wm, stats = dynamics.bundle.world_model, dynamics.bundle.stats
    batches: list[int] = []
    z_low = float((0.5 - stats.obs_mean[0]) / stats.obs_std[0])

    def fake(state0, action0, rtg, **kwargs):
        batches.append(state0.shape[0])
        x = torch.zeros(state0.shape[0], wm.horizon, wm.transition_dim)
        x[:, 1, : HOPPER.obs_dim] = state0
        x[:, 0, -1] = float(stats.normalize_reward(1.0))
        for row in (terminate or {}).get(len(batches), []):
            x[row, 1, 0] = z_low
        return x

    monkeypatch.setattr(wm, "sample", fake)
    return batches


def run_subprocess(code: str, env_extra: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=str(REPO), env=env)


# --------------------------------------------------------------------------- registration
def test_registered_with_string_entry_points():
    for env_id, task, default_bundle in DREAM_ENVS:
        spec = gym.spec(env_id)
        assert spec.entry_point == "dawm_env.envs.dream:DreamEnv"
        assert spec.vector_entry_point == "dawm_env.envs.vector:DreamVectorEnv"
        assert spec.max_episode_steps == 1000
        assert spec.kwargs == {"task": task, "bundle": default_bundle}
        json.dumps(spec.kwargs)


def test_import_is_light_and_make_works_without_prior_import(bundle):
    code = (
        "import sys, dawm_env, gymnasium as gym\n"
        "assert 'torch' not in sys.modules, 'import dawm_env loaded torch'\n"
        "assert 'DAWM-Walker2d-v0' in gym.registry\n"
        "print('light ok')\n"
    )
    res = run_subprocess(code)
    assert res.returncode == 0, res.stderr
    code = (
        "import sys, gymnasium as gym\n"
        "assert 'dawm_env' not in sys.modules\n"
        f"env = gym.make('dawm_env:DAWM-Hopper-v0', bundle={bundle!r}, max_episode_steps=5)\n"
        "obs, info = env.reset(seed=0); env.step(env.action_space.sample())\n"
        f"venv = gym.make_vec('dawm_env:DAWM-Hopper-v0', num_envs=2, bundle={bundle!r})\n"
        "assert type(venv).__name__ == 'DreamVectorEnv', type(venv)\n"
        "print('make ok')\n"
    )
    res = run_subprocess(code)
    assert res.returncode == 0, res.stderr
    assert "make ok" in res.stdout


def _not_shipped(bundle_name: str) -> bool:
    from dawm_env.world_model.bundle import SHIPPED_DIR

    return not (SHIPPED_DIR / bundle_name).is_dir()


@pytest.mark.parametrize("env_id,task", [(e, t) for e, t, b in DREAM_ENVS if _not_shipped(b)])
def test_missing_default_bundle_says_how_to_train(env_id, task):
    with pytest.raises(FileNotFoundError, match="dawm train world-model") as err:
        gym.make(env_id)
    assert env_id in str(err.value) and f"{task}-medium" in str(err.value)


# --------------------------------------------------------------------------- checkers
def test_gymnasium_check_env(bundle):
    from gymnasium.utils.env_checker import check_env

    env = make(bundle)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    # The only warnings are the ones the real Hopper-v5 gets too (an unbounded observation Box).
    msgs = [str(w.message) for w in caught if "infinity" not in str(w.message)]
    assert msgs == []
    check_env(env)  # the TimeLimit-wrapped env from make() passes as well


def test_sb3_check_env(bundle):
    from stable_baselines3.common.env_checker import check_env

    check_env(make(bundle).unwrapped, warn=True)


def test_spaces_equal_the_real_env(bundle):
    env, real = make(bundle), gym.make("Hopper-v5")
    assert env.observation_space == real.observation_space
    assert env.action_space == real.action_space


# --------------------------------------------------------------------------- semantics
def test_step_types_and_fresh_arrays(bundle):
    env = make(bundle)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float64 and obs.shape == (HOPPER.obs_dim,)
    obs[:] = 123.0  # the caller owns returned arrays
    nxt, rew, term, trunc, info2 = env.step(env.action_space.sample())
    assert type(rew) is float and type(term) is bool and type(trunc) is bool
    assert not np.allclose(nxt, 123.0)
    assert nxt.dtype == np.float64 and np.isfinite(nxt).all()
    assert set(info) == set(info2) == {"rtg_target", "start_index", "uncertainty", "penalty", "halted", "raw_reward"}
    assert [type(info2[k]) for k in ("uncertainty", "penalty", "halted", "raw_reward")] == [float, float, bool, float]
    assert (info["uncertainty"], info["penalty"], info["halted"], info["raw_reward"]) == (0.0, 0.0, False, 0.0)
    assert set(make(bundle, pessimism=False).reset(seed=0)[1]) == {"rtg_target", "start_index"}
    nxt2, *_ = env.step(env.action_space.sample())
    assert nxt2 is not nxt


def test_step_uses_row1_state_and_row0_reward(bundle, monkeypatch):
    """next obs = denormalised row-1 state; reward = denormalised row-0 reward; termination from the task."""
    env = make(bundle, rtg_target=0.5, guidance_weight=2.0, sampling_steps=2, temperature=0.3, pessimism=False)
    dyn = env.unwrapped.dynamics
    wm, stats = dyn.bundle.world_model, dyn.bundle.stats
    seen = {}

    def fake_sample(state0, action0, rtg, guidance_weight=None, n_steps=None, temperature=None, generator=None,
                    timesteps=None):
        seen.update(state0=state0.clone(), action0=action0.clone(), rtg=rtg, w=guidance_weight, n=n_steps,
                    temp=temperature)
        x = torch.zeros(state0.shape[0], wm.horizon, wm.transition_dim)
        x[:, 1, : HOPPER.obs_dim] = 0.25  # row 1 state
        x[:, 2, : HOPPER.obs_dim] = 9.0  # later rows must be ignored
        x[:, 0, -1] = 0.5  # r_t
        x[:, 1, -1] = 7.0
        return x

    monkeypatch.setattr(wm, "sample", fake_sample)
    obs, _ = env.reset(seed=0)
    action = np.array([0.5, -2.0, 0.25], dtype=np.float32)  # -2 is clipped like the real actuators
    nxt, rew, term, _, _ = env.step(action)
    np.testing.assert_allclose(seen["state0"].numpy(), stats.normalize_obs(obs[None]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(seen["action0"].numpy(), [[0.5, -1.0, 0.25]])
    assert (seen["rtg"], seen["w"], seen["n"], seen["temp"]) == (0.5, 2.0, 2, 0.3)
    expected = stats.denormalize_obs(np.full(HOPPER.obs_dim, 0.25, dtype=np.float32))
    np.testing.assert_allclose(nxt, expected, rtol=1e-5, atol=1e-5)
    assert rew == pytest.approx(stats.denormalize_reward(0.5), rel=1e-5)
    assert term == bool(HOPPER.is_terminal(nxt))


def test_termination_from_task_function(bundle, monkeypatch):
    env = make(bundle, pessimism=False)
    stay_model(monkeypatch, env.unwrapped.dynamics, terminate={2: [0]})
    env.reset(seed=0)
    assert env.step(np.zeros(3, np.float32))[2:4] == (False, False)
    _, rew, term, trunc, _ = env.step(np.zeros(3, np.float32))  # z = 0.5 < 0.7: Hopper falls
    assert term is True and trunc is False and rew == pytest.approx(1.0, rel=1e-5)


def test_time_limit_truncates(bundle, monkeypatch):
    env = make(bundle, max_episode_steps=3)
    stay_model(monkeypatch, env.unwrapped.dynamics)
    env.reset(seed=0)
    flags = [env.step(np.zeros(3, np.float32))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


def test_direct_env_counts_its_own_time_limit(bundle, monkeypatch):
    env = DreamEnv(task="hopper", bundle=bundle, max_episode_steps=2)
    stay_model(monkeypatch, env.dynamics)
    env.reset(seed=0)
    assert [env.step(np.zeros(3, np.float32))[3] for _ in range(2)] == [False, True]
    env.reset(seed=0)
    assert env.step(np.zeros(3, np.float32))[3] is False


def test_determinism_same_seed_same_actions(bundle):
    actions = np.random.default_rng(0).uniform(-1, 1, (8, 3)).astype(np.float32)
    a = rollout(make(bundle), 7, actions)
    b = rollout(make(bundle), 7, actions)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    c = rollout(make(bundle), 8, actions)
    assert not np.array_equal(a[0][1:3], c[0][1:3])


def test_reset_start_state_option_and_dataset_source(bundle, hopper_random, tmp_path):
    from dawm_env.data.loading import save_npz

    env = make(bundle)
    s0 = hopper_random.observations[5]
    obs, info = env.reset(seed=0, options={"start_state": s0})
    np.testing.assert_allclose(obs, s0)
    assert info["start_index"] == -1
    with pytest.raises(ValueError, match="start_state must have shape"):
        env.reset(options={"start_state": s0[:5]})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"state": s0})

    path = str(tmp_path / "starts.npz")
    save_npz(hopper_random, path)
    env = make(bundle, start_states=path, start_mode="initial")
    initial = hopper_random.observations[hopper_random.episode_offsets[:-1]]
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        assert np.isclose(initial, obs, atol=1e-6).all(1).any()


def test_idm_info_is_a_per_step_float(bundle):
    env = make(bundle, idm_info=True)
    _, info = env.reset(seed=0)
    assert info["idm_action_error"] == 0.0
    _, _, _, _, info = env.step(np.zeros(3, np.float32))
    assert isinstance(info["idm_action_error"], float) and 0.0 <= info["idm_action_error"] <= 2.0


# --------------------------------------------------------------------------- vector env
def test_make_vec_one_model_call_per_step_and_next_step_autoreset(bundle, monkeypatch):
    venv = gym.make_vec("DAWM-Hopper-v0", num_envs=4, bundle=bundle, max_episode_steps=3)
    assert isinstance(venv, DreamVectorEnv)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    assert venv.observation_space.shape == (4, 11) and venv.action_space.shape == (4, 3)
    batches = stay_model(monkeypatch, venv.dynamics, terminate={1: [0]})  # env 0 falls on its first step
    obs, info = venv.reset(seed=0)
    assert obs.shape == (4, 11) and obs.dtype == np.float64
    acts = np.zeros((4, 3), np.float32)
    steps = [venv.step(acts) for _ in range(4)]
    # one call per step, for the envs that are not being reset: env 0 resets at step 2, envs 1-3 at step 4
    assert batches == [4, 3, 4, 1]
    term = np.array([s[2] for s in steps])
    trunc = np.array([s[3] for s in steps])
    rew = np.array([s[1] for s in steps])
    np.testing.assert_array_equal(term[:, 0], [True, False, False, False])
    assert not term[:, 1:].any()
    np.testing.assert_array_equal(trunc[:, 1:].all(1), [False, False, True, False])  # time limit 3, inside
    np.testing.assert_allclose(rew[1, 0], 0.0)  # the autoreset step: reward 0, flags False
    np.testing.assert_allclose(rew[3, 1:], 0.0)
    np.testing.assert_allclose(rew[0], 1.0, rtol=1e-5)
    assert not steps[1][2][0] and not steps[1][3][0]
    for _, _, _, _, inf in steps:
        assert set(inf) == set(info)
        assert all(inf[f"_{k}"].all() for k in ("rtg_target", "start_index"))
    assert np.isin(steps[1][4]["start_index"][0], np.arange(len(venv.dynamics.start_pool)))
    for k in range(4):
        assert type(steps[k][0]) is np.ndarray and steps[k][0] is not steps[k - 1][0]


def test_vector_determinism_and_seed_lists(bundle):
    def run(seed):
        venv = DreamVectorEnv(num_envs=3, task="hopper", bundle=bundle, max_episode_steps=4)
        out = [venv.reset(seed=seed)[0]]
        rng = np.random.default_rng(1)
        for _ in range(6):
            out.append(venv.step(rng.uniform(-1, 1, (3, 3)).astype(np.float32))[0])
        return np.array(out)

    np.testing.assert_array_equal(run(3), run(3))
    np.testing.assert_array_equal(run([1, 2, 3]), run([1, 2, 3]))
    assert not np.array_equal(run(3), run(4))


def test_vector_reset_mask_and_start_state(bundle):
    venv = DreamVectorEnv(num_envs=3, task="hopper", bundle=bundle)
    obs, _ = venv.reset(seed=0)
    nxt, *_ = venv.step(np.zeros((3, 3), np.float32))
    s = np.full(11, 0.1)
    s[0] = 1.25
    obs2, info = venv.reset(options={"reset_mask": np.array([False, True, False]), "start_state": s})
    np.testing.assert_array_equal(obs2[[0, 2]], nxt[[0, 2]])
    np.testing.assert_allclose(obs2[1], s)
    assert info["start_index"][1] == -1


def test_make_vec_sync_mode_also_works(bundle):
    venv = gym.make_vec("DAWM-Hopper-v0", num_envs=2, vectorization_mode="sync", bundle=bundle)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (2, 11)
    venv.step(venv.action_space.sample())
    venv.close()


# --------------------------------------------------------------------------- SB3
def test_sb3_adapter_same_step_reset_and_terminal_observation(bundle):
    from dawm_env.envs.sb3 import make_sb3_vec_env

    venv = make_sb3_vec_env("DAWM-Hopper-v0", num_envs=3, max_episode_steps=2, seed=0, bundle=bundle)
    obs = venv.reset()
    assert obs.shape == (3, 11) and len(venv.reset_infos) == 3
    acts = np.zeros((3, 3), np.float32)
    _, rew, dones, infos = venv.step(acts)
    assert rew.dtype == np.float32 and dones.dtype == np.bool_
    obs2, _, dones2, infos2 = venv.step(acts)
    assert (dones | dones2).all()  # the time limit of 2 steps ends every episode
    for i in np.flatnonzero(dones2):
        term_obs = infos2[i]["terminal_observation"]
        assert term_obs.shape == (11,) and not np.array_equal(term_obs, obs2[i])
        assert isinstance(infos2[i]["TimeLimit.truncated"], bool)
        assert np.isin(infos2[i]["start_index"], np.arange(len(venv.dynamics.start_pool)))
    # same seed -> same trajectory
    venv_b = make_sb3_vec_env("DAWM-Hopper-v0", num_envs=3, max_episode_steps=2, seed=0, bundle=bundle)
    np.testing.assert_array_equal(venv_b.reset(), obs)
    with pytest.raises(ValueError, match="shape"):
        venv.step(np.zeros((2, 3), np.float32))


def test_sb3_sac_learns_a_few_steps_in_the_dream(bundle):
    from stable_baselines3 import SAC
    from stable_baselines3.common.vec_env import VecMonitor

    from dawm_env.envs.sb3 import make_sb3_vec_env

    venv = VecMonitor(make_sb3_vec_env("DAWM-Hopper-v0", num_envs=4, max_episode_steps=5, seed=0, bundle=bundle))
    model = SAC("MlpPolicy", venv, learning_starts=8, batch_size=16, policy_kwargs={"net_arch": [16, 16]},
                seed=0, device="cpu")
    model.learn(total_timesteps=32)
    real = gym.make("Hopper-v5")
    action, _ = model.predict(real.reset(seed=0)[0], deterministic=True)  # the policy fits the real env
    assert action.shape == (3,)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("action,match", [
    (np.zeros(4, np.float32), "shape"),
    (np.zeros((1, 3), np.float32), "shape"),
    (np.array([0.0, np.nan, 0.0], np.float32), "NaN or inf"),
    (np.array([0.0, np.inf, 0.0]), "NaN or inf"),
    (np.array([True, False, True]), "dtype"),
    (np.array([1j, 0, 0]), "dtype"),
    (np.array(["a", "b", "c"]), "dtype"),
    ([0.0, [1.0], 2.0], "array"),
])
def test_bad_actions_raise(bundle, action, match):
    env = make(bundle).unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_int_and_float64_actions_are_accepted(bundle):
    env = make(bundle).unwrapped
    env.reset(seed=0)
    env.step(np.zeros(3, dtype=np.int64))
    env.step([0.1, 0.2, 0.3])


def test_bad_vector_actions_raise(bundle):
    venv = DreamVectorEnv(num_envs=2, task="hopper", bundle=bundle)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        venv.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        venv.step(np.array([[0, 0, 0], [0, np.nan, 0]], np.float32))


def test_unknown_bundle_and_bundle_of_another_task(bundle, tmp_path):
    with pytest.raises(FileNotFoundError, match="no bundle 'nope'"):
        make("nope")
    other = tmp_path / "walker_bundle"
    shutil.copytree(bundle, other)
    meta = json.loads((other / "bundle.json").read_text())
    meta["task"] = "walker2d"
    (other / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="is for task walker2d, not hopper.*DAWM-Walker2d-v0"):
        make(str(other))


@pytest.mark.parametrize("kwargs,match", [
    ({"start_mode": "first"}, "start_mode"),
    ({"start_mode": "initial"}, "needs a dataset"),
    ({"rtg_target": float("nan")}, "rtg_target"),
    ({"guidance_weight": "high"}, "guidance_weight"),
    ({"sampling_steps": 0}, "sampling_steps"),
    ({"sampling_steps": 99}, "sampling_steps"),
    ({"temperature": -1.0}, "temperature"),
    ({"device": "gpu0"}, "device"),
    ({"task": "ant"}, "unknown task"),
    ({"render_mode": "human"}, "render_mode"),
    ({"max_episode_steps": 0}, "max_episode_steps"),
    ({"rtg": 0.8}, r"unknown dream env argument\(s\) \['rtg'\]; valid: .*rtg_target"),
    ({"start_states": "/no/such/file.npz"}, "No such file|does not exist|not a dataset"),
])
def test_bad_config_raises(bundle, kwargs, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        DreamEnv(bundle=bundle, **{"task": "hopper", **kwargs})


def test_bad_vector_config_raises(bundle):
    with pytest.raises(ValueError, match="num_envs"):
        DreamVectorEnv(num_envs=0, bundle=bundle)
    with pytest.raises(ValueError, match="max_episode_steps"):
        DreamVectorEnv(num_envs=2, max_episode_steps=0, bundle=bundle)
    with pytest.raises(ValueError, match="does not render"):
        DreamVectorEnv(num_envs=2, render_mode="rgb_array", bundle=bundle)


def test_config_is_json_friendly(bundle):
    cfg = DreamConfig(task="Hopper-v5", bundle=bundle, rtg_target=1, sampling_steps=2)
    assert DreamConfig(**json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.task == "hopper" and cfg.rtg_target == 1.0
    assert load_bundle_for(cfg) is load_bundle_for(DreamConfig(task="hopper", bundle=bundle))  # cached


# --------------------------------------------------------------------------- rendering
@pytest.fixture(scope="module")
def gl_ok() -> None:
    from dawm_env.envs.render import probe_gl

    ok, reason = probe_gl()
    if not ok:
        pytest.skip(reason)


def test_render_tables_match_the_real_models():
    from dawm_env.envs.render import CONTROL_DT, QPOS_DIM, render_fps

    for task in ("hopper", "walker2d", "halfcheetah"):
        real = gym.make(get_task(task).env_id).unwrapped
        assert real.model.nq == QPOS_DIM[task]
        assert real.dt == pytest.approx(CONTROL_DT[task])
        assert real.metadata["render_fps"] == render_fps(task)
        real.close()


def test_render_draws_the_state_with_the_real_model(bundle, gl_ok):
    from dawm_env.envs.render import StateRenderer

    real = gym.make("Hopper-v5", render_mode="rgb_array", width=64, height=64)
    obs, _ = real.reset(seed=3)
    for _ in range(10):
        obs, *_ = real.step(real.action_space.sample())
    expected = real.render()
    frame = StateRenderer("hopper", 64, 64).render(obs, float(real.unwrapped.data.qpos[0]))
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert np.abs(frame.astype(int) - expected).mean() < 1.0

    env = make(bundle, render_mode="rgb_array", width=64, height=64)
    env.reset(seed=0)
    first = env.render()
    env.step(np.ones(3, np.float32))
    assert first.shape == (64, 64, 3) and first.std() > 0
    assert env.render() is not first
    env.close()
