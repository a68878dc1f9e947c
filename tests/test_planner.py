"""The Decision Diffuser planner: plans, in-painting, guidance, IDM actions, training, bundle and CLI (tiny)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, cli

from dawm_env.agents.evaluation import EpisodePolicy, Evaluator, time_episodes
from dawm_env.checkpoint import CheckpointError, load_tensors
from dawm_env.data.loading import save_npz
from dawm_env.data.normalization import NormStats
from dawm_env.planner import DDConfig, DecisionDiffuser, PlannerBundle, PlannerPolicy, build_dd_model
from dawm_env.tasks import get_task
from dawm_env.training.dd import DDTrainConfig, train_dd
from dawm_env.world_model.bundle import Bundle
from dawm_env.world_model.idm import IDMConfig, InverseDynamics

SMOKE = DDConfig.preset("smoke")
TINY_DD = dict(preset="smoke", progress=False, threads=1)


@pytest.fixture
def planner(hopper_random) -> DecisionDiffuser:
    torch.manual_seed(0)
    task = get_task("hopper")
    idm = InverseDynamics.from_config(IDMConfig(hidden=(16, 16)), task.obs_dim, task.act_dim).eval()
    return DecisionDiffuser(build_dd_model(SMOKE, task.obs_dim).eval(), idm, NormStats.from_dataset(hopper_random),
                            SMOKE)


@pytest.fixture
def hopper_npz(hopper_random, tmp_path) -> str:
    path = tmp_path / "hopper_random.npz"
    save_npz(hopper_random, path)
    return str(path)


def test_plan_shapes_and_the_current_state_is_in_painted_exactly(planner, hopper_random):
    states = hopper_random.observations[:5]
    out = planner.act(states, states, np.ones(5, dtype=bool), torch.Generator().manual_seed(0))
    assert out.plan.shape == (5, SMOKE.horizon, hopper_random.obs_dim)
    assert out.actions.shape == (5, hopper_random.act_dim) and out.actions.dtype == np.float32
    assert torch.equal(out.plan[:, 0], planner.normalize(states))  # exactly, not approximately
    assert (np.abs(out.actions) < 1).all()
    assert not torch.isclose(out.plan[:, 1], out.plan[:, 0]).all()  # the rest of the plan is sampled


def test_guidance_weights_zero_and_one_give_the_unconditional_and_conditional_predictions(planner):
    diff = planner.diffusion
    assert diff.model.action_mlp is None  # states only: no action embedding
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, SMOKE.horizon, diff.transition_dim, generator=g)
    k = torch.tensor([0, 1, 2, 4])
    rtg = torch.tensor([0.1, 0.5, 0.9, 1.3])
    with torch.no_grad():
        cond = diff.model(x, k, None, rtg.reshape(4, 1), torch.ones(4, dtype=torch.bool))
        uncond = diff.model(x, k, None, rtg.reshape(4, 1), torch.zeros(4, dtype=torch.bool))
        torch.testing.assert_close(diff.guided_eps(x, k, None, rtg, 1.0), cond)
        torch.testing.assert_close(diff.guided_eps(x, k, None, rtg, 0.0), uncond)
        torch.testing.assert_close(diff.guided_eps(x, k, None, rtg, 1.6), uncond + 1.6 * (cond - uncond))
        # the null condition ignores the return
        other = diff.model(x, k, None, torch.full((4, 1), 7.0), torch.zeros(4, dtype=torch.bool))
        torch.testing.assert_close(other, uncond)
    assert not torch.allclose(cond, uncond)


def test_the_action_is_the_idm_on_the_plans_first_step(planner, hopper_random):
    s, prev = hopper_random.observations[10:13], hopper_random.observations[9:12]
    first = np.array([True, False, False])
    out = planner.act(s, prev, first, torch.Generator().manual_seed(3))
    prev_norm = planner.normalize(prev)
    prev_norm[0] = 0.0  # an episode's first step: the IDM reads a zero s_{t-1}, as it was trained
    torch.testing.assert_close(out.prev, prev_norm)
    expected, _ = planner.idm.act(prev_norm, planner.normalize(s), out.plan[:, 1])
    np.testing.assert_array_equal(out.actions, expected.numpy())


def test_planner_inputs_are_checked(planner, hopper_random):
    s = hopper_random.observations[:2]
    with pytest.raises(ValueError, match=r"shape \(B, 11\)"):
        planner.act(s[:, :5], s[:, :5], np.ones(2, dtype=bool))
    bad = s.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        planner.act(bad, s, np.zeros(2, dtype=bool))
    with pytest.raises(ValueError, match="act_dim = 0"):
        DecisionDiffuser(build_world_model_like(), planner.idm, planner.stats, SMOKE)


def build_world_model_like():
    """A diffusion model with an action condition (the world model's layout): not a planner."""
    from dawm_env.world_model.config import WorldModelConfig
    from dawm_env.world_model.diffusion import GaussianDiffusion

    return GaussianDiffusion.from_config(WorldModelConfig.preset("cpu"), 11, 3)


def test_config_presets_and_validation():
    paper = DDConfig.preset("paper")
    assert (paper.horizon, paper.n_diffusion_steps, paper.guidance_weight, paper.target_rtg) == (100, 200, 1.2, 0.9)
    assert DDConfig.from_dict(json.loads(json.dumps(DDConfig.preset("cpu").to_dict()))) == DDConfig.preset("cpu")
    with pytest.raises(ValueError, match="divisible"):
        DDConfig.preset("cpu", horizon=30)
    with pytest.raises(ValueError, match="valid presets"):
        DDConfig.preset("gpu")
    with pytest.raises(ValueError, match="unknown DDConfig field"):
        DDConfig.preset("cpu", horizn=16)
    with pytest.raises(ValueError, match="n_sampling_steps"):
        DDConfig.preset("smoke", n_sampling_steps=9)


def test_planner_policy_tracks_episodes_and_only_plans_for_running_ones(planner, hopper_random):
    policy = PlannerPolicy(planner, seed=0)
    assert isinstance(policy, EpisodePolicy)
    policy.reset_episodes(2, 3)
    obs = hopper_random.observations[:6].reshape(2, 3, -1)
    running = np.array([[True, False, True], [True, True, False]])
    a = policy(obs, running)
    assert a.shape == (2, 3, 3)
    assert (a[~running] == 0).all() and (a[running] != 0).any()
    assert not policy.first.any()  # the next step's IDM reads the remembered state
    np.testing.assert_array_equal(policy.prev, obs.reshape(6, -1))

    task = get_task("hopper")
    with Evaluator(task, 2, 2) as ev:  # real episodes, reproducible: the planning noise is re-seeded per evaluation
        r1 = ev.returns(PlannerPolicy(planner, seed=4), [[1, 2], [3, 4]])
        steps = ev.steps.copy()
        r2 = ev.returns(PlannerPolicy(planner, seed=4), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(r1, r2)
    assert (steps >= 1).all()
    timed = time_episodes(task, PlannerPolicy(planner, seed=0), [5, 6])
    assert timed["episodes"] == 2 and len(timed["inference_seconds"]) == 2
    assert all(0 < i <= e for i, e in zip(timed["inference_seconds"], timed["episode_seconds"]))


def test_training_resume_equals_an_uninterrupted_run(hopper_npz, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train_dd(DDTrainConfig(dataset=hopper_npz, out=str(a), steps=6, checkpoint_every=3, **TINY_DD))
    train_dd(DDTrainConfig(dataset=hopper_npz, out=str(b), steps=3, checkpoint_every=3, **TINY_DD))  # "killed"
    train_dd(DDTrainConfig(dataset=hopper_npz, out=str(b), steps=6, checkpoint_every=3, **TINY_DD))
    wa, wb = load_tensors(a / "dd.safetensors"), load_tensors(b / "dd.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    meta = json.loads((b / "dd.json").read_text())
    assert meta["steps"] == 6 and meta["kind"] == "decision-diffuser"
    with pytest.raises(ValueError, match="architecture"):  # another architecture does not resume this checkpoint
        train_dd(DDTrainConfig(dataset=hopper_npz, out=str(b), steps=9, overrides={"dim": 16}, **TINY_DD))


def test_train_evaluate_cli_and_bundle_errors(hopper_npz, tmp_path, tiny_bundle):
    out = tmp_path / "dd"
    res = cli("train", "dd", "--dataset", hopper_npz, "--out", out, "--preset", "smoke", "--eval-every", "15",
              "--no-progress", "--threads", "1")
    assert res.exit_code == 0, res.output
    assert "next: dawm train idm" in res.output
    with pytest.raises(CheckpointError, match="no IDM yet"):
        PlannerBundle.load(out)
    res = cli("train", "idm", "--dataset", hopper_npz, "--out", out, "--steps", "20", "--hidden", "16,16",
              "--no-progress", "--threads", "1")
    assert res.exit_code == 0, res.output
    assert "planner bundle ready" in res.output
    meta = json.loads((out / "planner.json").read_text())
    assert meta["format"] == "dawm-planner" and len(meta["metrics"]["state_mse_per_step"]) == SMOKE.horizon - 1
    assert json.loads((out / "dd_quality_curve.json").read_text())["curve"][-1]["step"] == 30

    named = Path(os.environ["DAWM_HOME"]) / "bundles" / "tiny-dd"  # found by name, listed as a planner
    named.parent.mkdir(parents=True)
    named.symlink_to(out)
    assert PlannerBundle.load("tiny-dd").steps == SMOKE.train_steps
    listing = [line for line in cli("bundle", "list").output.splitlines() if line.startswith("tiny-dd")]
    assert len(listing) == 1 and "DD planner" in listing[0] and "BROKEN" not in listing[0]

    info = cli("bundle", "info", "tiny-dd")
    assert info.exit_code == 0 and "planner bundle:" in info.output and '"dd_config"' in info.output

    res = cli("evaluate-planner", out, "--episodes", "2", "--seeds", "2", "--out", tmp_path / "ev", "--threads", "1")
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert ev["algo"] == "dd" and len(ev["normalized"]["per_seed"]) == 2 and np.shape(ev["episode_returns"]) == (2, 2)

    # what each folder is, in one line
    with pytest.raises(CheckpointError, match="planner bundle, not a world-model bundle"):
        Bundle.load(out)
    assert_one_line_error(cli("evaluate-planner", tiny_bundle, "--episodes", "1"), "world-model bundle")
    assert_one_line_error(cli("evaluate-planner", out, "--episodes", "0"), "--episodes must be >= 1")
    assert_one_line_error(cli("evaluate-planner", out, "--sampling-steps", "99"), "--sampling-steps")
    assert_one_line_error(cli("evaluate-planner", tmp_path / "nothing"), "no planner bundle")
    assert_one_line_error(cli("train", "dd", "--dataset", hopper_npz, "--out", tmp_path / "x", "--set", "horizn=8"),
                          "unknown DDConfig field")
    assert_one_line_error(cli("train", "dd", "--dataset", hopper_npz, "--out", tmp_path / "x", "--set", "horizon"),
                          "FIELD=VALUE")
