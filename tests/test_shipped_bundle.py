"""The bundles shipped inside the package (one per task) load by name and drive their registered dream env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from dawm_env.data.rollout import real_step_from
from dawm_env.envs import DREAM_ENVS
from dawm_env.tasks import get_task
from dawm_env.world_model.bundle import SHIPPED_DIR, Bundle, list_bundles

#: ``(env id, task, shipped bundle name)`` of every registered dream env: each must work out of the box.
SHIPPED = [pytest.param(*row, id=row[1]) for row in DREAM_ENVS]


@pytest.mark.parametrize("env_id,task,name", SHIPPED)
def test_shipped_bundle_loads_by_name(env_id, task, name):
    assert (SHIPPED_DIR / name / "bundle.json").is_file(), f"{name} is not shipped"
    assert SHIPPED_DIR / name in list_bundles()
    bundle = Bundle.load(name, expect_task=task)
    spec = get_task(task)
    assert bundle.meta["dataset"] == f"dawm-d4rl/{task}/medium-v0"
    assert bundle.meta["world_model_config"]["dim"] == 64  # the cpu preset
    assert bundle.seed_states.shape == (4096, spec.obs_dim) and np.isfinite(bundle.seed_states).all()
    metrics = bundle.meta["metrics"]
    assert len(metrics["state_mse_per_step"]) == 7 and all(np.isfinite(metrics["state_mse_per_step"]))
    assert bundle.pessimism is not None  # the dream env's pessimism defaults are calibrated


@pytest.mark.parametrize("env_id,task,name", SHIPPED)
def test_shipped_model_predicts_the_real_next_state(env_id, task, name):
    """One generated step from stored real (s, a) pairs against MuJoCo stepped from the same states."""
    bundle = Bundle.load(name)
    spec = bundle.task
    keep = np.flatnonzero(spec.determines_state(bundle.seed_states))[:64]
    states, actions = bundle.seed_states[keep], bundle.seed_actions[keep]
    real_next, _, _ = real_step_from(spec, states, actions)
    stats = bundle.stats
    with torch.no_grad():
        x = bundle.world_model.sample(torch.as_tensor(stats.normalize_obs(states)), torch.as_tensor(actions),
                                      torch.full((len(keep),), 0.8), generator=torch.Generator().manual_seed(0))
    err = ((x[:, 1, :spec.obs_dim].numpy() - stats.normalize_obs(real_next.astype(np.float32))) ** 2).mean()
    # the shipped bundles' held-out one-step error against MuJoCo is 0.003-0.05; an untrained model is ~1
    print(f"{name}: one-step normalised MSE vs MuJoCo: {err:.4f}")
    assert err < 0.15, err


@pytest.mark.parametrize("env_id,task,name", SHIPPED)
def test_default_dream_env_uses_the_shipped_bundle(env_id, task, name):
    env = gym.make(f"dawm_env:{env_id}", max_episode_steps=5)
    assert env.unwrapped.dynamics.bundle.path == SHIPPED_DIR / name
    obs, _ = env.reset(seed=0)
    assert obs.shape == (get_task(task).obs_dim,)
    steps = 0
    for _ in range(5):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
        assert np.isfinite(obs).all() and np.isfinite(reward)
        if terminated or truncated:
            break
    assert steps >= 1
    env.close()


@pytest.mark.parametrize("env_id,task,name", SHIPPED)
def test_checkers_pass_on_the_registered_env(env_id, task, name):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(f"dawm_env:{env_id}", max_episode_steps=20)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env, warn=False)
    env.close()
