"""Task constants and termination functions against the real environments."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from dawm_env.tasks import TASKS, get_task, task_from_env_id


def _real_rollout_flags(env_id: str, steps: int, seed: int, action_scale: float):
    """Step the real env with random actions; return next observations and its terminated flags."""
    env = gym.make(env_id)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    nexts, flags = [], []
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(action_scale * rng.uniform(-1, 1, env.action_space.shape))
        nexts.append(obs)
        flags.append(terminated)
        if terminated or truncated:
            obs, _ = env.reset(seed=int(rng.integers(1 << 30)))
    env.close()
    return np.array(nexts), np.array(flags)


@pytest.mark.parametrize("name", ["hopper", "walker2d", "halfcheetah"])
def test_termination_matches_real_env(name):
    task = get_task(name)
    # small actions keep episodes long (healthy states), full-scale ones make them fall: both sides covered
    for scale in (0.3, 1.0):
        nexts, flags = _real_rollout_flags(task.env_id, 1500, seed=7, action_scale=scale)
        pred = task.is_terminal(nexts)
        np.testing.assert_array_equal(pred, flags)
        pred_t = task.is_terminal(torch.as_tensor(nexts))
        np.testing.assert_array_equal(pred_t.numpy(), flags)
    if name != "halfcheetah":
        assert flags.any(), "random full-scale actions should make the robot fall at least once"


def test_termination_boundaries_are_strict():
    hopper = get_task("hopper")
    obs = np.zeros((4, 11))
    obs[:, 0] = [0.7, 0.7001, 1.2, 1.2]
    obs[:, 1] = [0.0, 0.0, 0.2, 0.1999]
    assert hopper.is_terminal(obs).tolist() == [True, False, True, False]
    far = np.zeros((1, 11))
    far[0, 0] = 1.2
    far[0, 5] = 100.0
    assert hopper.is_terminal(far).tolist() == [True]
    walker = get_task("walker2d")
    w = np.zeros((3, 17))
    w[:, 0] = [0.8, 2.0, 1.2]
    assert walker.is_terminal(w).tolist() == [True, True, False]
    assert not get_task("halfcheetah").can_terminate


def test_constants_and_errors():
    assert {t.name for t in TASKS.values()} == {"hopper", "walker2d", "halfcheetah"}
    assert [TASKS[n].rtg_scale for n in ("hopper", "walker2d", "halfcheetah")] == [400.0, 550.0, 1200.0]
    for spec in TASKS.values():
        env = gym.make(spec.env_id)
        assert env.observation_space.shape == (spec.obs_dim,)
        assert env.action_space.shape == (spec.act_dim,)
        assert env.spec.max_episode_steps == spec.max_episode_steps
        env.close()
    assert get_task("Hopper-v5").name == "hopper"
    assert task_from_env_id("Walker2d-v4").name == "walker2d"
    assert get_task("hopper").normalized_score(3234.3) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="unknown task"):
        get_task("ant")
    with pytest.raises(ValueError, match="last dimension 11"):
        get_task("hopper").is_terminal(np.zeros((2, 17)))


def test_level_overlap_knows_medium_expert_is_medium_plus_expert():
    from dawm_env.tasks import level_overlap

    assert level_overlap("medium", "medium") == "same"
    assert level_overlap("medium-expert", "expert") == "contained"  # a medium-expert model has seen expert data
    assert level_overlap("medium", "medium-expert") == "half"
    assert level_overlap("medium", "expert") == "none"
    assert level_overlap("medium-replay", "medium") == "none"


def test_consistency_table_labels_rows_by_training_data_overlap():
    from dawm_env.experiments.report import consistency_table

    metrics = {"idm_action_mae": 0.1, "idm_nll": -1.0, "action_consistency_mae": 0.1, "state_mse_mean": 0.1,
               "reward_mae": 0.1, "heldout_windows": 8}
    cells = [{"status": "done", "in_distribution": level == "medium-expert", "metrics": metrics,
              "cell": {"task": "hopper", "level": "medium-expert", "data_level": level}}
             for level in ("medium-expert", "medium", "random")]
    table = consistency_table({"experiment": "consistency", "title": "t", "cells": cells,
                               "updated": "now", "root": "/tmp"})
    rows = {line.split("|")[3].strip(): line.split("|")[4].strip() for line in table.splitlines()
            if line.startswith("| hopper")}
    assert rows == {"medium-expert": "in distribution", "medium": "in the bundle's training data",
                    "random": "out of distribution"}
