"""DAWM dataset generation: tiny bundle end to end, DAWM-T, horizons, resume, shards, streaming API, stats."""

from __future__ import annotations

import json

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch

from dawm_env.data import minari_io
from dawm_env.data.loading import load_dataset
from dawm_env.data.minari_io import MinariStreamWriter, iter_episodes_fast, read_provenance, write_minari_dataset
from dawm_env.generation import (
    GenerateConfig,
    RolloutConfig,
    RolloutGenerator,
    TransitionStream,
    generate_dataset,
    generation_stats,
    is_generated_dataset,
    select_seed_pairs,
    writer as gen_writer,
)
from dawm_env.generation.stats import transition_infos
from dawm_env.generation.writer import ShardSpec, bundle_hash
from dawm_env.paths import minari_root
from dawm_env.tasks import get_task
from dawm_env.world_model.bundle import Bundle

torch.set_num_threads(1)

SEED_ID = "test/hopper/random-v0"


@pytest.fixture()
def seed_id(hopper_random) -> str:
    """The tiny real hopper dataset as a local Minari dataset (per-test Minari root)."""
    write_minari_dataset(hopper_random, SEED_ID, algorithm_name="random", description="t", provenance={})
    return SEED_ID


def _cfg(tiny_bundle, seed_id: str, out: str, **kw) -> GenerateConfig:
    kw.setdefault("batch_size", 256)
    kw.setdefault("chunk_size", 512)
    return GenerateConfig(bundle=str(tiny_bundle), seed_dataset=seed_id, out=out, progress=False, **kw)


def _episodes(dataset_id: str) -> list[dict]:
    return list(iter_episodes_fast(dataset_id))  # ~3x faster than minari's reader; equality tested below


def _assert_same_episodes(a: str, b: str) -> None:
    ea, eb = _episodes(a), _episodes(b)
    assert len(ea) == len(eb)
    for x, y in zip(ea, eb):
        for name in ("observations", "actions", "rewards", "terminations", "truncations"):
            np.testing.assert_array_equal(x[name], y[name], err_msg=name)
        assert x["infos"].keys() == y["infos"].keys()
        for k in x["infos"]:
            np.testing.assert_array_equal(x["infos"][k], y["infos"][k], err_msg=k)


def _check_episodes(dataset_id: str, seed, horizon: int) -> list[dict]:
    """Shape and bound checks of every episode, vectorised over the whole dataset."""
    task = get_task("hopper")
    env = gym.make(task.env_id)
    eps = _episodes(dataset_id)
    obs_space, act_space = env.observation_space, env.action_space
    for ep in eps:
        t = len(ep["actions"])
        assert 1 <= t <= horizon
        assert ep["observations"].shape == (t + 1, task.obs_dim) and ep["actions"].shape == (t, task.act_dim)
        assert ep["rewards"].shape == ep["terminations"].shape == ep["truncations"].shape == (t,)
        flags = ep["terminations"] | ep["truncations"]
        assert not flags[:-1].any() and ep["terminations"][-1] != ep["truncations"][-1]  # one flag, on the last step
        info = ep["infos"]
        assert info["idm_std"].shape == (t + 1, task.act_dim) and info["seed_index"].shape == (t + 1,)
        assert np.all(info["seed_index"] == info["seed_index"][0])
    obs = np.concatenate([e["observations"] for e in eps])
    act = np.concatenate([e["actions"] for e in eps])
    assert np.all(np.isfinite(obs)) and np.all(np.isfinite(np.concatenate([e["rewards"] for e in eps])))
    assert np.all((obs >= obs_space.low) & (obs <= obs_space.high))
    assert np.all((act >= act_space.low) & (act <= act_space.high))
    first = np.array([int(e["infos"]["seed_index"][0]) for e in eps])
    np.testing.assert_array_equal(np.stack([e["observations"][0] for e in eps]), seed.observations[first])  # real s_t
    np.testing.assert_array_equal(np.stack([e["actions"][0] for e in eps]), seed.actions[first])  # real a_t at h = 0
    np.testing.assert_array_equal(np.stack([e["infos"]["idm_std"][0] for e in eps]), 0.0)
    inferred = np.concatenate([e["infos"]["idm_std"][1:len(e["actions"])] for e in eps])
    assert np.all(inferred > 0)
    ends = np.stack([e["observations"][-1] for e in eps])
    terminated = np.array([bool(e["terminations"][-1]) for e in eps])
    np.testing.assert_array_equal(task.is_terminal(ends)[terminated], True)
    inner = [e["observations"][1:-1] for e in eps if len(e["actions"]) > 1]
    assert not inner or not task.is_terminal(np.concatenate(inner)).any()  # never continues past a terminal state
    return eps


def test_generate_end_to_end(tiny_bundle, hopper_random, seed_id):
    out = generate_dataset(_cfg(tiny_bundle, seed_id, "dawm-gen/hopper/tiny-v0"))
    assert out in minari.list_local_datasets()
    ds = minari.load_dataset(out)
    assert ds.total_episodes == hopper_random.num_transitions  # one rollout per seed (s_t, a_t)
    score = minari.get_normalized_score(ds, np.array([3234.3]))
    assert score == pytest.approx(1.0)
    eps = _check_episodes(out, hopper_random, horizon=7)
    assert sorted(int(e["infos"]["seed_index"][0]) for e in eps) == list(range(hopper_random.num_transitions))
    assert ds.total_steps == sum(len(e["actions"]) for e in eps)
    for ep, mine in zip(ds.iterate_episodes(episode_indices=range(0, len(eps), 50)), eps[::50]):  # Minari's reader
        for name in ("observations", "actions", "rewards", "terminations", "truncations"):
            np.testing.assert_array_equal(getattr(ep, name), mine[name])
        for k in mine["infos"]:
            np.testing.assert_array_equal(ep.infos[k], mine["infos"][k])
    prov = read_provenance(out)
    assert prov["kind"] == "dawm-generated" and prov["bundle"]["hash"] == bundle_hash(tiny_bundle)
    assert prov["eval_env"] == "Hopper-v5" and prov["ref_max_score"] == 3234.3
    assert prov["rollout"]["horizon"] == 7 and prov["rollout"]["rtg"] == 0.8  # default: max(gen_rtg_range)
    assert prov["generator_config"]["seed_dataset"] == seed_id
    assert prov["rollouts"] == ds.total_episodes and prov["transitions"] == ds.total_steps
    meta = ds.storage.metadata
    assert "Hopper-v5" in meta["eval_env_spec"] and meta["ref_min_score"] == pytest.approx(-20.272305)
    data = load_dataset(out)  # dawm's loader: task from the env spec
    assert data.task == "hopper" and data.num_transitions == ds.total_steps
    # staging is gone, and nothing but the two datasets sits under the Minari root
    assert not any(p.name.startswith("gen-") for p in minari_root().parent.glob(".*-dawm-staging/*"))

    assert is_generated_dataset(out) and not is_generated_dataset(seed_id)
    stats = generation_stats(out)
    assert stats.episodes == stats.episodes_analysed == ds.total_episodes
    assert stats.transitions_analysed == ds.total_steps
    assert 0.0 <= stats.terminated_fraction <= 1.0 and 1.0 <= stats.mean_length <= 7.0
    assert stats.idm_std_count == ds.total_steps - ds.total_episodes  # every step >= 1 is IDM-inferred
    assert stats.idm_std_quantiles is not None and stats.idm_std_quantiles[0] <= stats.idm_std_quantiles[-1]
    assert stats.seed_reward_mean == pytest.approx(float(hopper_random.rewards.mean()), rel=1e-5)
    assert len(stats.state_std_ratio_per_dim) == 11 and 0.0 <= stats.out_of_range_fraction <= 1.0
    text = stats.format()
    assert "terminated" in text and "IDM std" in text and seed_id in text
    json.dumps(stats.to_dict())
    small = generation_stats(out, seed=hopper_random, max_episodes=100)
    assert small.episodes_analysed == 100

    # per-transition infos in load_dataset's order: every rollout starts from the real pair its seed_index names
    infos = transition_infos(out, ("seed_index", "idm_std"))
    assert infos["seed_index"].shape == (data.num_transitions,) and infos["idm_std"].shape == (data.num_transitions, 3)
    starts = data.episode_offsets[:-1]
    idx = infos["seed_index"].astype(np.int64)
    np.testing.assert_array_equal(data.observations[starts], hopper_random.observations[idx[starts]])
    np.testing.assert_array_equal(data.actions[starts], hopper_random.actions[idx[starts]])
    assert (np.repeat(idx[starts], data.episode_lengths) == idx).all()  # one seed pair per rollout
    with pytest.raises(ValueError, match="not written by dawm generate"):
        transition_infos(seed_id, ("seed_index",))


@pytest.mark.parametrize("horizon,subsample,repeats", [(1, 8, 1), (3, 3, 2)])
def test_horizons_subsample_and_repeats(tiny_bundle, hopper_random, seed_id, horizon, subsample, repeats):
    out = generate_dataset(_cfg(tiny_bundle, seed_id, f"dawm-gen/hopper/h{horizon}-v0", horizon=horizon,
                                subsample=subsample, repeats=repeats, chunk_size=200))
    n_pairs = hopper_random.num_transitions // subsample  # DAWM-T keeps exactly 1/T of the seed pairs
    eps = _check_episodes(out, hopper_random, horizon=horizon)
    assert len(eps) == n_pairs * repeats
    seeds = np.array([int(e["infos"]["seed_index"][0]) for e in eps])
    reps = np.array([int(e["infos"]["repeat"][0]) for e in eps])
    assert len(np.unique(seeds)) == n_pairs
    assert np.all(np.bincount(reps) == n_pairs)
    if horizon == 1:
        assert all(len(e["actions"]) == 1 for e in eps)
    if repeats > 1:  # the same pair's repeats have different noise
        first = {}
        for e, s, r in zip(eps, seeds, reps):
            first.setdefault(s, {})[r] = e["observations"][1]
        assert any(not np.array_equal(v[0], v[1]) for v in first.values())


def test_datasets_too_big_for_minaris_reader_are_flagged(tiny_bundle, seed_id, monkeypatch, caplog):
    import dawm_env.generation.writer as writer

    generate_dataset(_cfg(tiny_bundle, seed_id, "dawm-gen/hopper/small-v0", subsample=8))
    assert "Minari's own reader" not in caplog.text
    monkeypatch.setattr(writer, "SLOW_MINARI_READ_EPISODES", 10)  # the fixture's rollouts stand in for >1.2M
    generate_dataset(_cfg(tiny_bundle, seed_id, "dawm-gen/hopper/big-v0", subsample=8))
    assert "Minari's own reader" in caplog.text and "dawm-gen/hopper/big-v0" in caplog.text


def test_select_seed_pairs_is_exact_and_seeded():
    for n, t in ((1600, 8), (1500, 3), (10, 1), (7, 8)):
        idx = select_seed_pairs(n, t, seed=1)
        assert len(idx) == max(1, n // t) and len(np.unique(idx)) == len(idx)
        assert idx.min() >= 0 and idx.max() < n and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(select_seed_pairs(1000, 8, 3), select_seed_pairs(1000, 8, 3))
    assert not np.array_equal(select_seed_pairs(1000, 8, 3), select_seed_pairs(1000, 8, 4))


def test_resume_and_shards_equal_an_uninterrupted_run(tiny_bundle, seed_id, monkeypatch):
    kw = dict(subsample=3, chunk_size=100)  # 500 rollouts in 5 chunks
    ref = generate_dataset(_cfg(tiny_bundle, seed_id, "dawm-gen/hopper/ref-v0", **kw))

    # interrupted twice (a time-boxed call, then a Ctrl-C mid-chunk), then resumed
    out = "dawm-gen/hopper/resumed-v0"
    assert generate_dataset(_cfg(tiny_bundle, seed_id, out, max_chunks=2, **kw)) == out
    assert out not in minari.list_local_datasets() and not (minari_root() / out).exists()
    real_generate, calls = gen_writer._Run.generate_chunk, []

    def flaky(self, c):
        calls.append(c)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_generate(self, c)

    monkeypatch.setattr(gen_writer._Run, "generate_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(_cfg(tiny_bundle, seed_id, out, **kw))
    assert calls == [2, 3]  # chunks 0, 1 were not redone
    assert out not in minari.list_local_datasets() and not (minari_root() / out).exists()
    monkeypatch.setattr(gen_writer._Run, "generate_chunk", real_generate)
    generate_dataset(_cfg(tiny_bundle, seed_id, out, **kw))
    _assert_same_episodes(ref, out)

    # two shards, run one after the other: the second one to finish combines and registers
    sharded = "dawm-gen/hopper/sharded-v0"
    generate_dataset(_cfg(tiny_bundle, seed_id, sharded, shard="1/2", writers=0, **kw))  # inline writes too
    assert sharded not in minari.list_local_datasets()
    generate_dataset(_cfg(tiny_bundle, seed_id, sharded, shard="0/2", **kw))
    _assert_same_episodes(ref, sharded)

    # a changed configuration restarts cleanly instead of mixing chunks of two configurations
    other = "dawm-gen/hopper/changed-v0"
    generate_dataset(_cfg(tiny_bundle, seed_id, other, max_chunks=1, **kw))
    generate_dataset(_cfg(tiny_bundle, seed_id, other, seed=1, **kw))
    stage = minari_root().parent / f".{minari_root().name}-dawm-staging"
    assert not stage.exists() or not any(stage.iterdir())
    assert len(_episodes(other)) == 500


def test_torchrun_env_selects_the_shard(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    assert ShardSpec.from_env() == ShardSpec(2, 4)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert ShardSpec.from_env() == ShardSpec(0, 1)


@pytest.mark.parametrize("kw,err,match", [
    ({"shard": "2/2"}, ValueError, "shard"),
    ({"shard": "a/b"}, ValueError, "shard"),
    ({"out": "no-version"}, ValueError, "version"),
    ({"out": "bad id with spaces-v0"}, ValueError, "invalid Minari dataset id"),
    ({"horizon": 0}, ValueError, "horizon"),
    ({"subsample": 0}, ValueError, "subsample"),
])
def test_bad_config_errors(kw, err, match):
    args = dict(bundle="b", seed_dataset="s", out="dawm-gen/hopper/x-v0", progress=False)
    args.update(kw)
    with pytest.raises(err, match=match):
        GenerateConfig(**args)


def test_run_errors(tiny_bundle, seed_id, halfcheetah_random, tmp_path):
    with pytest.raises(ValueError, match="exceeds the world model's horizon"):
        generate_dataset(_cfg(tiny_bundle, seed_id, "dawm-gen/hopper/x-v0", horizon=8))
    with pytest.raises(FileNotFoundError, match="no bundle"):
        generate_dataset(_cfg(tmp_path / "missing", seed_id, "dawm-gen/hopper/x-v0"))
    write_minari_dataset(halfcheetah_random, "test/halfcheetah/random-v0", algorithm_name="random",
                         description="t", provenance={})
    with pytest.raises(ValueError, match="task mismatch"):
        generate_dataset(_cfg(tiny_bundle, "test/halfcheetah/random-v0", "dawm-gen/hopper/x-v0"))
    with pytest.raises(FileExistsError, match="already exists"):
        generate_dataset(_cfg(tiny_bundle, seed_id, seed_id))
    assert sorted(minari.list_local_datasets()) == ["test/halfcheetah/random-v0", SEED_ID]


def test_termination_ends_rollouts_early(tiny_bundle, hopper_random):
    bundle = Bundle.load(tiny_bundle)
    real_sample = bundle.world_model.sample

    def falling_sample(state0, action0, rtg, **kw):
        x = real_sample(state0, action0, rtg, **kw)
        z_norm = (0.5 - bundle.stats.obs_mean[0]) / bundle.stats.obs_std[0]  # hopper z = 0.5: unhealthy
        x[::2, 3, 0] = float(z_norm)  # even rollouts fall at s_{t+3}
        x[:, 1:, 1] = 0.0  # healthy angle elsewhere (normalised 0 = data mean, well inside +-0.2)
        x[:, 1:, 0] = torch.where(torch.arange(len(x))[:, None] % 2 == 0, x[:, 1:, 0], torch.zeros_like(x[:, 1:, 0]))
        return x

    bundle.world_model.sample = falling_sample
    gen = RolloutGenerator(bundle, RolloutConfig(horizon=7, batch_size=64))
    idx = np.arange(0, 200, 2)
    healthy_start = ~get_task("hopper").is_terminal(hopper_random.observations[idx])
    idx = idx[healthy_start][:40]
    r = gen.generate(hopper_random.observations[idx], hopper_random.actions[idx], gen.new_generator(0), seed_index=idx)
    even = np.arange(len(idx)) % 2 == 0
    assert np.all(r.terminated[even]) and np.all(r.lengths[even] <= 3)
    data, infos = r.to_dataset(bundle.task)
    last = data.episode_offsets[1:] - 1
    np.testing.assert_array_equal(data.terminations[last], r.terminated)
    np.testing.assert_array_equal(data.truncations[last], ~r.terminated)
    assert data.num_transitions == r.lengths.sum() and len(infos["idm_std"]) == data.num_transitions


def test_transition_stream_gives_fresh_reproducible_batches(tiny_bundle, hopper_random):
    bundle = Bundle.load(tiny_bundle)
    cfg = RolloutConfig(horizon=3, batch_size=32)
    s1 = TransitionStream(bundle, hopper_random, config=cfg, rollouts_per_batch=50, seed=7)
    b1, b2 = next(s1), next(s1)
    assert 50 <= len(b1) <= 150 and b1.observations.shape == (len(b1), 11) and b1.actions.shape == (len(b1), 3)
    assert b1.next_observations.shape == b1.observations.shape and b1.idm_std.shape == (len(b1), 3)
    assert (b1.terminations | b1.truncations).sum() == 50  # one end flag per rollout
    assert not np.array_equal(b1.seed_index[:10], b2.seed_index[:10])  # fresh pairs and noise every call
    real = b1.step == 0
    np.testing.assert_array_equal(b1.actions[real], hopper_random.actions[b1.seed_index[real]])
    s2 = TransitionStream(bundle, hopper_random, config=cfg, rollouts_per_batch=50, seed=7)
    c1 = next(s2)
    np.testing.assert_array_equal(b1.observations, c1.observations)
    np.testing.assert_array_equal(b1.rewards, c1.rewards)
    from_bundle = TransitionStream(bundle, rollouts_per_batch=8).sample()  # the bundle's own seed pairs
    assert (from_bundle.step == 0).sum() == 8


def test_stream_writer_chunks_match_one_shot_and_stay_minari_compatible(hopper_random):
    from minari.data_collector import EpisodeBuffer

    half = hopper_random.episode_offsets[hopper_random.num_episodes // 2]
    info = {"tag": np.arange(hopper_random.num_transitions, dtype=np.int64)}
    write_minari_dataset(hopper_random, "test/hopper/one-v0", algorithm_name="r", description="t", provenance={"a": 1},
                         step_infos=info)
    first = load_dataset("test/hopper/one-v0")
    with MinariStreamWriter("test/hopper/two-v0", "hopper", algorithm_name="r", description="t",
                            provenance={"a": 1}) as w:
        for lo, hi in ((0, hopper_random.num_episodes // 2), (hopper_random.num_episodes // 2, hopper_random.num_episodes)):
            s, t = hopper_random.episode_offsets[lo], hopper_random.episode_offsets[hi]
            part = _slice_episodes(hopper_random, lo, hi)
            w.append(part, {"tag": info["tag"][s:t]})
        w.finalize()
    assert half > 0
    second = load_dataset("test/hopper/two-v0")
    for name in ("observations", "actions", "rewards", "next_observations", "terminations", "truncations",
                 "episode_offsets", "seeds"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name), err_msg=name)
    ds = minari.load_dataset("test/hopper/two-v0")
    eps = list(ds.iterate_episodes())
    tags = np.concatenate([e.infos["tag"][:-1] for e in eps])
    np.testing.assert_array_equal(tags, info["tag"])
    for ep, fast in zip(eps, iter_episodes_fast("test/hopper/two-v0")):  # the fast reader agrees with Minari's
        assert ep.id == fast["id"]
        for name in ("observations", "actions", "rewards", "terminations", "truncations"):
            np.testing.assert_array_equal(getattr(ep, name), fast[name])
        np.testing.assert_array_equal(ep.infos["tag"], fast["infos"]["tag"])
    assert read_provenance("test/hopper/two-v0") == {"a": 1}
    # Minari's own writer can still append episodes to a dawm-written dataset
    ds.storage.update_episodes([EpisodeBuffer(observations=np.zeros((3, 11)), actions=np.zeros((2, 3)),
                                              rewards=np.zeros(2), terminations=np.array([False, True]),
                                              truncations=np.zeros(2, bool))])
    assert minari.load_dataset("test/hopper/two-v0").total_episodes == hopper_random.num_episodes + 1


def test_stream_writer_abort_and_interrupt_leave_nothing(hopper_random, monkeypatch):
    w = MinariStreamWriter("test/hopper/aborted-v0", "hopper", algorithm_name="r", description="t")
    w.append(hopper_random)
    w.abort()
    with pytest.raises(RuntimeError, match="finalised or aborted"):
        w.append(hopper_random)
    with pytest.raises(ValueError, match="hopper"):
        with MinariStreamWriter("test/walker2d/x-v0", "walker2d", algorithm_name="r", description="t") as w2:
            w2.append(hopper_random)
    assert not minari.list_local_datasets()
    assert not (minari_root() / "test").exists() or not any((minari_root() / "test").rglob("metadata.json"))
    stage = minari_root().parent / f".{minari_root().name}-dawm-staging"
    assert not stage.exists()
    monkeypatch.setattr(minari_io, "_EpisodeGroupWriter", _Exploding)
    with pytest.raises(KeyboardInterrupt):
        write_minari_dataset(hopper_random, "test/hopper/boom-v0", algorithm_name="r", description="t", provenance={})
    assert not (minari_root() / "test" / "hopper" / "boom-v0").exists() and not stage.exists()


class _Exploding:
    def __init__(self, fid):
        raise KeyboardInterrupt


def _slice_episodes(data, lo: int, hi: int):
    from dawm_env.data.records import OfflineDataset

    s, t = data.episode_offsets[lo], data.episode_offsets[hi]
    return OfflineDataset(
        task=data.task, observations=data.observations[s:t], actions=data.actions[s:t], rewards=data.rewards[s:t],
        next_observations=data.next_observations[s:t], terminations=data.terminations[s:t],
        truncations=data.truncations[s:t], episode_offsets=data.episode_offsets[lo:hi + 1] - s,
        seeds=data.seeds[lo:hi], source=data.source)


def test_action_sources_for_the_idm_ablation(tiny_bundle, hopper_random):
    bundle = Bundle.load(tiny_bundle)
    idx = np.arange(0, 120, 3)
    s, a = hopper_random.observations[idx], hopper_random.actions[idx]
    runs = {}
    for source in ("idm", "random", "repeat"):
        gen = RolloutGenerator(bundle, RolloutConfig(horizon=5, batch_size=16, action_source=source))
        runs[source] = gen.generate(s, a, gen.new_generator(3))
        assert gen.config.to_dict()["action_source"] == source
    for source, r in runs.items():
        np.testing.assert_array_equal(r.actions[:, 0], a)  # step 0 always keeps the real a_t
    rnd, rep, idm = runs["random"], runs["repeat"], runs["idm"]
    assert np.all(np.abs(rnd.actions[:, 1:]) <= 1.0) and rnd.actions[:, 1:].std() > 0.4  # uniform in [-1, 1]
    assert not np.allclose(rnd.actions[:, 1:], idm.actions[:, 1:], atol=1e-3)
    np.testing.assert_array_equal(rep.actions, np.broadcast_to(a[:, None], rep.actions.shape))
    for r in (rnd, rep):
        np.testing.assert_array_equal(r.idm_std, 0.0)  # no IDM: no IDM uncertainty
    # the random actions come from the run's torch generator: reproducible, and a new seed changes them
    gen = RolloutGenerator(bundle, RolloutConfig(horizon=5, batch_size=16, action_source="random"))
    np.testing.assert_array_equal(gen.generate(s, a, gen.new_generator(3)).actions, rnd.actions)
    assert not np.array_equal(gen.generate(s, a, gen.new_generator(4)).actions, rnd.actions)
    with pytest.raises(ValueError, match="unknown action_source 'zero'"):
        RolloutConfig(action_source="zero")
    with pytest.raises(ValueError, match="action_source"):
        GenerateConfig(bundle="b", seed_dataset="s", out="dawm-gen/hopper/x-v0", action_source="idm2")


def test_generated_ablation_dataset_records_its_action_source(tiny_bundle, hopper_random, seed_id):
    out = generate_dataset(_cfg(tiny_bundle, seed_id, "dawm-gen/hopper/repeat-v0", horizon=3, subsample=30,
                                action_source="repeat"))
    prov = read_provenance(out)
    assert prov["rollout"]["action_source"] == "repeat" and prov["generator_config"]["action_source"] == "repeat"
    assert prov["idm_std_mean"] is None
    for ep in _episodes(out):
        np.testing.assert_array_equal(ep["actions"], np.broadcast_to(ep["actions"][0], ep["actions"].shape))
    stats = generation_stats(out)
    assert stats.idm_std_count == 0 and stats.generator["action_source"] == "repeat"
    assert "repeat" in stats.format()


def test_action_noise_perturbs_the_seed_action_exactly(tiny_bundle, hopper_random, seed_id):
    bundle = Bundle.load(tiny_bundle)
    idx = np.arange(0, 120, 3)
    s, a = hopper_random.observations[idx], hopper_random.actions[idx]
    noisy_gen = RolloutGenerator(bundle, RolloutConfig(horizon=4, batch_size=64, action_noise=0.3))
    noisy = noisy_gen.generate(s, a, noisy_gen.new_generator(5))
    # by hand: the noise is the run's first torch draw, then the rollout is the noiseless one from those actions
    plain = RolloutGenerator(bundle, RolloutConfig(horizon=4, batch_size=64))
    torch_gen = plain.new_generator(5)
    eps = torch.randn(len(idx), a.shape[1], generator=torch_gen).numpy()
    expected_a0 = np.clip(a + np.float32(0.3) * eps, -1.0, 1.0).astype(np.float32)
    by_hand = plain.generate(s, expected_a0, torch_gen)
    np.testing.assert_allclose(noisy.actions[:, 0], expected_a0, rtol=0, atol=1e-7)
    for field in ("states", "actions", "rewards", "idm_std", "lengths"):
        np.testing.assert_array_equal(getattr(noisy, field), getattr(by_hand, field))
    assert not np.allclose(noisy.actions[:, 0], a) and np.all(np.abs(noisy.actions[:, 0]) <= 1.0)
    # zero noise leaves the random stream and the provenance as they were
    assert "action_noise" not in plain.config.to_dict() and noisy_gen.config.to_dict()["action_noise"] == 0.3
    np.testing.assert_array_equal(plain.generate(s, a, plain.new_generator(5)).actions[:, 0], a)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="--action-noise must be a finite number >= 0"):
            RolloutConfig(action_noise=bad)
    out = generate_dataset(_cfg(tiny_bundle, seed_id, "dawm-gen/hopper/noisy-v0", horizon=3, subsample=30,
                                action_noise=0.3))
    prov = read_provenance(out)
    assert prov["rollout"]["action_noise"] == 0.3 and prov["generator_config"]["action_noise"] == 0.3
    stats = generation_stats(out)
    assert stats.generator["action_noise"] == 0.3 and "step-0 actions + N(0, 0.3^2)" in stats.format()


def test_levers_that_trust_the_real_first_step_refuse_action_noise_data(tiny_bundle, seed_id, tmp_path):
    from dawm_env.agents.train import TrainAgentConfig, train_agent

    out = generate_dataset(_cfg(tiny_bundle, seed_id, "dawm-gen/hopper/noisy-v0", horizon=3, subsample=30,
                                action_noise=0.3))
    for kw in ({"trust_keep": 0.5}, {"bc_real_actions_only": True}, {"algo": "dwm-td3bc"}):
        cfg = TrainAgentConfig(**{"algo": "td3bc", **kw}, dataset=SEED_ID, synthetic=out, out=str(tmp_path / "run"),
                               steps=2, seeds=1, batch_size=8, eval_every=2, eval_episodes=1, progress=False)
        with pytest.raises(ValueError, match="generated with --action-noise: its rollouts' first steps are not real"):
            train_agent(cfg)


@pytest.mark.parametrize("algo", ["td3bc", "iql"])
def test_recipes_on_generated_data(tiny_bundle, seed_id, tmp_path, algo):
    """The recommended recipe (half real, clone real actions only) is the default on dawm's generated data; the
    paper's (generated only, clone everything) is one flag away; explicit settings win over either."""
    from dawm_env.agents.train import TrainAgentConfig, train_agent

    clean = generate_dataset(_cfg(tiny_bundle, seed_id, "dawm-gen/hopper/clean-v0", horizon=3, subsample=30))
    noisy = generate_dataset(_cfg(tiny_bundle, seed_id, "dawm-gen/hopper/noisy-v0", horizon=3, subsample=30,
                                  action_noise=0.3))
    rollouts = load_dataset(clean).num_episodes

    def data_desc(name: str, synthetic: str, **kw) -> dict:
        cfg = TrainAgentConfig(algo=algo, dataset=SEED_ID, synthetic=synthetic, out=str(tmp_path / name), steps=2,
                               seeds=1, batch_size=8, eval_every=2, eval_episodes=1, progress=False, **kw)
        return json.loads((train_agent(cfg) / "config.json").read_text())["data"]

    default = data_desc("default", clean)
    assert default["real_fraction"] == 0.5 and default["bc_real_actions_only"]["cloned_transitions"] == rollouts
    paper = data_desc("paper", clean, recipe="paper")
    assert paper["real_fraction"] == 0.0 and "bc_real_actions_only" not in paper
    own = data_desc("own", clean, real_fraction=0.25, bc_real_actions_only=False)
    assert own["real_fraction"] == 0.25 and "bc_real_actions_only" not in own
    # --action-noise data has no real first actions to clone: the recipe mixes but clones every action
    noisy_desc = data_desc("noisy", noisy)
    assert noisy_desc["real_fraction"] == 0.5 and "bc_real_actions_only" not in noisy_desc
    with pytest.raises(ValueError, match="unknown recipe 'dwm'; choose one of recommended, paper"):
        TrainAgentConfig(algo=algo, dataset=SEED_ID, synthetic=clean, out=str(tmp_path / "x"), recipe="dwm")
