"""DWM value expansion (n-step targets over generated rollouts) and on-the-fly generation (paper Algorithm 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dawm_env.agents.iql import IQL, IQLConfig
from dawm_env.agents.networks import Normalizer
from dawm_env.agents.sources import (
    DatasetSource,
    MixSource,
    OnlineGeneratedSource,
    RolloutSource,
    ValueExpansion,
    value_expansion_rows,
)
from dawm_env.agents.td3bc import TD3BC, TD3BCConfig
from dawm_env.agents.train import TrainAgentConfig, load_agent, train_agent
from dawm_env.data.loading import save_npz
from dawm_env.data.minari_io import write_minari_dataset
from dawm_env.data.records import OfflineDataset

GAMMA = 0.9


@pytest.fixture
def hopper_npz(hopper_random, tmp_path) -> str:
    path = tmp_path / "hopper_random.npz"
    save_npz(hopper_random, path)
    return str(path)


@pytest.fixture
def generated_id(tiny_bundle, hopper_npz) -> str:
    """A tiny dataset written by ``dawm generate``: 187 rollouts of up to 3 steps from the real pairs."""
    from dawm_env.generation import GenerateConfig, generate_dataset

    return generate_dataset(GenerateConfig(bundle=str(tiny_bundle), seed_dataset=hopper_npz,
                                           out="dawm-gen/hopper/tiny-v0", horizon=3, subsample=8, batch_size=256,
                                           progress=False))


def _rollouts() -> OfflineDataset:
    """Two 3-step rollouts: the first truncated at its horizon, the second terminated at s_3."""
    rng = np.random.default_rng(0)
    obs = [rng.standard_normal((4, 11)).astype(np.float32) for _ in range(2)]
    act = [rng.uniform(-1, 1, (3, 3)).astype(np.float32) for _ in range(2)]
    rew = [np.array([1.0, 2.0, 4.0], np.float32), np.array([3.0, -1.0, 5.0], np.float32)]
    term = [np.array([False, False, False]), np.array([False, False, True])]
    trunc = [np.array([False, False, True]), np.array([False, False, False])]
    return OfflineDataset.from_episodes("hopper", obs, act, rew, term, trunc, source="two-rollouts")


# --- the n-step target ------------------------------------------------------------------------------------
def test_value_expansion_rows_match_a_hand_computation():
    data = _rollouts()
    g = GAMMA
    rows = value_expansion_rows(data, ValueExpansion(g))
    np.testing.assert_allclose(rows["rewards"], [1 + 2 * g + 4 * g**2, 3 - g + 5 * g**2], rtol=1e-6)
    np.testing.assert_allclose(rows["discounts"], [g**3, 0.0], rtol=1e-6)  # terminated: no bootstrap
    np.testing.assert_array_equal(rows["terminations"], [False, True])
    np.testing.assert_array_equal(rows["steps"], [3, 3])
    np.testing.assert_array_equal(rows["observations"], data.observations[[0, 3]])  # real s_0
    np.testing.assert_array_equal(rows["actions"], data.actions[[0, 3]])  # real a_0 only
    np.testing.assert_array_equal(rows["next_observations"], data.next_observations[[2, 5]])  # s_3

    # mve_horizon truncates: n = 2 stops before the terminal step, so both rows bootstrap at s_2
    rows = value_expansion_rows(data, ValueExpansion(g, horizon=2))
    np.testing.assert_allclose(rows["rewards"], [1 + 2 * g, 3 - g], rtol=1e-6)
    np.testing.assert_allclose(rows["discounts"], [g**2, g**2], rtol=1e-6)
    np.testing.assert_array_equal(rows["terminations"], [False, False])
    np.testing.assert_array_equal(rows["next_observations"], data.next_observations[[1, 4]])
    rows = value_expansion_rows(data, ValueExpansion(g, horizon=1))  # n = 1: one-step TD on (s_0, a_0)
    np.testing.assert_allclose(rows["rewards"], [1.0, 3.0])
    np.testing.assert_allclose(rows["discounts"], [g, g], rtol=1e-6)
    rows = value_expansion_rows(data, ValueExpansion(g, horizon=10))  # longer than the rollouts: whole rollouts
    np.testing.assert_allclose(rows["discounts"], [g**3, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match="horizon"):
        ValueExpansion(g, horizon=0)


@pytest.mark.parametrize("algo", ["td3bc", "iql"])
def test_agents_bootstrap_n_step_rows_with_their_discounts(algo):
    data = _rollouts()
    batch = RolloutSource(data, ValueExpansion(GAMMA)).sample(64, np.random.default_rng(0)).reshape(1, 64)
    assert batch.discounts is not None
    assert torch.all((batch.discounts == 0) | (batch.discounts - GAMMA**3).abs().lt(1e-6))
    norm = Normalizer(torch.zeros(11), torch.ones(11), reward_scale=0.5)
    nxt = norm.obs(batch.next_observations)
    rewards = batch.rewards * norm.reward_scale  # the reward scale is linear: scaling the sum = summing scaled
    if algo == "td3bc":
        agent = TD3BC(TD3BCConfig(policy_noise=0.0, discount=GAMMA, hidden=(16, 16)), 11, 3, [0], norm)
        y = agent.td_target(nxt, rewards, batch.terminations, torch.Generator(), batch.discounts)
        with torch.no_grad():
            a = agent.actor_target(nxt)
            boot = agent.critic_target(torch.cat([nxt, a], -1).repeat(2, 1, 1)).view(2, 1, -1).amin(0)
        one_step = agent.td_target(nxt, rewards, batch.terminations, torch.Generator())
    else:
        agent = IQL(IQLConfig(discount=GAMMA, hidden=(16, 16)), 11, 3, [0], norm, total_steps=1)
        y = agent.td_target(nxt, rewards, batch.terminations, batch.discounts)
        with torch.no_grad():
            boot = agent.value(nxt).squeeze(-1)
        one_step = agent.td_target(nxt, rewards, batch.terminations)
    torch.testing.assert_close(y, rewards + batch.discounts * boot)
    # None = one-step rows: gamma (1 - terminated)
    torch.testing.assert_close(one_step, rewards + GAMMA * (1 - batch.terminations) * boot)
    first = batch.discounts > 0  # rows of the truncated rollout
    torch.testing.assert_close(y[first], 0.5 * (1 + 2 * GAMMA + 4 * GAMMA**2) + GAMMA**3 * boot[first])
    agent.update(batch, 1, torch.Generator())  # the update path accepts n-step rows


def test_mixing_n_step_rows_needs_one_step_discounts(hopper_random):
    n_step = RolloutSource(_rollouts(), ValueExpansion(GAMMA))
    with pytest.raises(ValueError, match="one-step rows with n-step rows"):
        MixSource(DatasetSource(hopper_random), n_step, 0.5).sample(8, np.random.default_rng(0))
    batch = MixSource(DatasetSource(hopper_random, discount=GAMMA), n_step, 0.5).sample(400, np.random.default_rng(0))
    real, rollout = batch.discounts.sub(GAMMA).abs() < 1e-6, batch.discounts.sub(GAMMA**3).abs() < 1e-6
    assert real.any() and rollout.any() and torch.all(real | rollout | (batch.discounts == 0))
    torch.testing.assert_close(batch.terminations[batch.discounts == 0], torch.ones(int((batch.discounts == 0).sum())))
    reshaped = batch.reshape(4, 100)
    assert reshaped.discounts.shape == (4, 100) and batch.to("cpu").discounts is not None


# --- dwm-* runs -----------------------------------------------------------------------------------------------
def _cfg(hopper_npz: str, out: Path, algo: str, **kw) -> TrainAgentConfig:
    base = dict(algo=algo, dataset=hopper_npz, out=str(out), steps=4, seeds=2, batch_size=16, eval_every=4,
                eval_episodes=1, log_every=2, progress=False, threads=1, algo_overrides={"hidden": [16, 16]})
    base.update(kw)
    return TrainAgentConfig(**base)


@pytest.mark.parametrize("algo", ["dwm-td3bc", "dwm-iql"])
def test_dwm_trains_on_a_generated_dataset(hopper_random, hopper_npz, generated_id, tmp_path, algo):
    out = train_agent(_cfg(hopper_npz, tmp_path / algo, algo, synthetic=generated_id, mve_horizon=2))
    run = json.loads((out / "config.json").read_text())
    mve = run["data"]["mve"]
    assert mve["horizon"] == 2 and mve["rollouts"] == hopper_random.num_transitions // 8
    assert 1.0 <= mve["mean_steps"] <= 2.0
    agent, meta = load_agent(out)
    assert meta["step"] == 4 and agent.name == algo.split("-")[1]
    # normalisation comes from the real dataset, not from the generated states
    obs = hopper_random.observations.astype(np.float64)
    np.testing.assert_allclose(agent.normalizer.obs_mean.numpy(), obs.mean(0), rtol=1e-5, atol=1e-6)
    results = json.loads((out / "results.json").read_text())
    assert results["algo"] == algo and results["synthetic"] == generated_id and np.isfinite(results["last"]["mean"])
    # mixed with real one-step rows
    out = train_agent(_cfg(hopper_npz, tmp_path / f"{algo}-mix", algo, synthetic=generated_id, real_fraction=0.5,
                           steps=2, eval_every=2))
    assert json.loads((out / "config.json").read_text())["data"]["real_fraction"] == 0.5


def test_dwm_errors(hopper_random, hopper_npz, tmp_path):
    with pytest.raises(ValueError, match="pass --synthetic"):
        TrainAgentConfig(algo="dwm-iql", dataset=hopper_npz, out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="dwm-\\* setting"):
        TrainAgentConfig(algo="td3bc", dataset=hopper_npz, out=str(tmp_path / "x"), mve_horizon=3)
    with pytest.raises(ValueError, match="mve_horizon must be >= 1"):
        TrainAgentConfig(algo="dwm-td3bc", dataset=hopper_npz, out=str(tmp_path / "x"), synthetic="a/b-v0",
                         mve_horizon=0)
    plain = write_minari_dataset(hopper_random, "dawm-test/hopper/plain-v0", algorithm_name="test",
                                 description="not generated", provenance={})
    for synthetic in (plain, hopper_npz):
        with pytest.raises(ValueError, match="not one"):
            train_agent(_cfg(hopper_npz, tmp_path / "bad", "dwm-td3bc", synthetic=synthetic))
    with pytest.raises(ValueError, match="needs a bundle"):
        TrainAgentConfig(algo="td3bc", dataset=hopper_npz, out=str(tmp_path / "x"), online=True)
    with pytest.raises(ValueError, match="not both"):
        TrainAgentConfig(algo="td3bc", dataset=hopper_npz, out=str(tmp_path / "x"), online=True, bundle="b",
                         synthetic=plain)
    with pytest.raises(ValueError, match="online_refresh_fraction"):
        TrainAgentConfig(algo="iql", dataset=hopper_npz, out=str(tmp_path / "x"), online=True, bundle="b",
                         online_refresh_fraction=0.0)


# --- on-the-fly generation --------------------------------------------------------------------------------------
def _online(bundle, data, **kw) -> OnlineGeneratedSource:
    from dawm_env.generation.rollouts import RolloutConfig, RolloutGenerator

    gen = RolloutGenerator(bundle, RolloutConfig(horizon=3, batch_size=16))
    args = dict(pool_rollouts=12, refresh_every=2, refresh_fraction=1 / 3, seed=5)
    args.update(kw)
    return OnlineGeneratedSource(gen, data, **args)


def test_online_source_refreshes_blocks_and_seeks_exactly(tiny_bundle, hopper_random):
    from dawm_env.world_model.bundle import Bundle

    bundle = Bundle.load(tiny_bundle)
    src = _online(bundle, hopper_random)
    assert src.num_blocks == 3 and src.block_sizes == [4, 4, 4]
    # block b was last written by refresh r (every 2 calls; blocks in turn 0, 1, 2, 0, ...)
    assert [[src.block_key(b, n) for b in range(3)] for n in (0, 1, 2, 5, 6, 8, 14)] == [
        [0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 2, 0], [1, 2, 3], [4, 2, 3], [7, 5, 6]]
    pools = []
    for n in range(7):
        batch = src.sample(8, np.random.default_rng(n))
        assert batch.observations.shape == (8, 11) and batch.discounts is None
        pools.append(src._pool.tensor.clone())
    assert torch.equal(pools[0], pools[1]) and not torch.equal(pools[1], pools[2])  # one refresh every 2 calls
    assert src.rollouts_generated == 12 + 3 * 4  # the initial pool, then one block of 4 per refresh
    # a fresh source that seeks to call 6 rebuilds exactly the pool the first one had there
    other = _online(bundle, hopper_random)
    other.seek(6)
    assert torch.equal(other._pool.tensor, pools[6])
    b1, b2 = src.sample(8, np.random.default_rng(99)), other.sample(8, np.random.default_rng(99))
    assert torch.equal(b1.observations, b2.observations) and torch.equal(b1.rewards, b2.rewards)
    # the pool's generated transitions start at real pairs of the data, with the real a_t at step 0
    m = src.obs_moments()
    assert m.mean.shape == (11,) and np.all(m.std(0.0) > 0)
    # value expansion: one n-step row per rollout
    dwm = _online(bundle, hopper_random, expansion=ValueExpansion(0.99, horizon=2))
    batch = dwm.sample(8, np.random.default_rng(0))
    assert len(dwm) == 12 and batch.discounts is not None
    assert torch.all((batch.discounts == 0) | (batch.discounts - 0.99 ** 2).abs().lt(1e-6) |
                     (batch.discounts - 0.99).abs().lt(1e-6))


@pytest.mark.parametrize("algo", ["td3bc", "dwm-iql"])
def test_online_run_trains_and_resumes_exactly(tiny_bundle, hopper_npz, tmp_path, algo):
    kw = dict(online=True, bundle=str(tiny_bundle), online_pool=12, online_refresh_every=2,
              online_refresh_fraction=0.5, online_horizon=3, steps=6, eval_every=6, checkpoint_every=3,
              real_fraction=0.25)
    full = train_agent(_cfg(hopper_npz, tmp_path / "full", algo, **kw))
    run = json.loads((full / "config.json").read_text())["data"]
    assert run["online"]["blocks"] == 2 and run["online"]["rollout"]["horizon"] == 3
    assert run["online"]["rollout"]["action_source"] == ("repeat" if algo.startswith("dwm") else "idm")
    assert json.loads((full / "results.json").read_text())["online"] is True

    class Killed(Exception):
        pass

    def kill_at_5(step: int, metrics: dict) -> None:
        if step == 5:
            raise Killed

    cfg = _cfg(hopper_npz, tmp_path / "killed", algo, **kw)
    with pytest.raises(Killed):
        train_agent(cfg, callback=kill_at_5)
    resumed = train_agent(cfg)  # resumes at step 3: the pool is rebuilt for step 3, then refreshed at step 4
    a, _ = load_agent(full)
    b, meta = load_agent(resumed)
    assert meta["step"] == 6
    for name, module in a.networks().items():
        for (k1, v1), v2 in zip(module.state_dict().items(), b.networks()[name].state_dict().values()):
            assert torch.equal(v1, v2), f"{name}.{k1}"
    assert json.loads((full / "curves.json").read_text())["losses"] == \
        json.loads((resumed / "curves.json").read_text())["losses"]
