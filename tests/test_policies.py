"""Behaviour policies without pickles: the safe SB3 reader, the dawm format, the shipped defaults."""

from __future__ import annotations

import base64
import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from dawm_env.data import policies
from dawm_env.data.policies import (
    BehaviorPolicy,
    convert_sb3_policy,
    default_policy_path,
    load_policy,
    read_sb3_zip,
    save_sb3_actor,
)
from dawm_env.data.rollout import collect_transitions
from dawm_env.paths import SHIPPED_POLICIES_DIR
from dawm_env.tasks import get_task

SHARED_ZIPS = Path(__file__).resolve().parents[2] / "shared" / "behavior-policies"
SHIPPED = ["hopper-sac", "hopper-tqc", "walker2d-sac", "walker2d-tqc", "halfcheetah-sac", "halfcheetah-tqc"]


class _Payload:
    """Unpickling this creates the file ``path``: proof that a loader ran a pickle."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _obs(task_name: str, n: int = 32) -> np.ndarray:
    env = gym.make(get_task(task_name).env_id)
    obs = np.stack([env.reset(seed=i)[0] for i in range(n)])
    env.close()
    return (obs + np.random.default_rng(0).normal(0, 0.3, obs.shape)).astype(np.float32)  # beyond reset states


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Tiny untrained SB3 SAC (tanh activation) and TD3 models and their zips, made here (trusted)."""
    from stable_baselines3 import SAC, TD3

    root = tmp_path_factory.mktemp("sb3")
    env = gym.make("Hopper-v5")
    sac = SAC("MlpPolicy", env, buffer_size=10, seed=0, device="cpu",
              policy_kwargs={"net_arch": [32, 16], "activation_fn": torch.nn.Tanh})
    td3 = TD3("MlpPolicy", env, buffer_size=10, seed=0, device="cpu", policy_kwargs={"net_arch": [24]})
    sac.save(root / "sac.zip")
    td3.save(root / "td3.zip")
    return {"sac": (sac, root / "sac.zip"), "td3": (td3, root / "td3.zip")}


def _rewrite_zip(src: Path, dst: Path, **entries: bytes) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, entries.get(item.filename.replace(".", "_"), zin.read(item.filename)))
    return dst


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any general-purpose unpickler call fails the test (torch's weights_only reader is its own code)."""
    import cloudpickle

    def refuse(*args, **kwargs):
        raise AssertionError("a general unpickler was called")

    for mod in (pickle, cloudpickle):
        monkeypatch.setattr(mod, "loads", refuse)
        monkeypatch.setattr(mod, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


# (a) crafted zips --------------------------------------------------------------------------------
def test_payload_is_live(tmp_path):
    """Sanity check of the tests below: an ordinary unpickler does run the payload."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(str(marker))))
    assert marker.exists()


def test_pickle_payload_in_data_entry_is_never_run(tiny_models, tmp_path, no_unpickling):
    _, src = tiny_models["sac"]
    marker = tmp_path / "pwned"
    blob = base64.b64encode(pickle.dumps(_Payload(str(marker)))).decode()
    with zipfile.ZipFile(src) as zf:
        data = json.loads(zf.read("data"))
    for key, value in data.items():  # every serialized entry but policy_kwargs carries the payload
        if isinstance(value, dict) and ":serialized:" in value and key != "policy_kwargs":
            value[":serialized:"] = blob
    crafted = _rewrite_zip(src, tmp_path / "crafted.zip", data=json.dumps(data).encode())
    policy = load_policy(crafted, get_task("hopper"))  # loads cleanly: those entries are never decoded
    assert policy.spec["actor"]["activation"] == "tanh" and not marker.exists()
    # the payload as the policy_kwargs blob: its GLOBAL (builtins.open) is no whitelisted activation
    data["policy_kwargs"][":serialized:"] = blob
    data["policy_kwargs"]["activation_fn"] = "<class 'builtins.open'>"
    crafted = _rewrite_zip(src, tmp_path / "crafted2.zip", data=json.dumps(data).encode())
    with pytest.raises(ValueError, match="activation") as err:
        load_policy(crafted)
    assert "\n" not in str(err.value) and not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch.save", "raw pickle"])
def test_pickle_payload_in_policy_pth_is_refused(tiny_models, tmp_path, how):
    _, src = tiny_models["sac"]
    marker = tmp_path / "pwned"
    if how == "torch.save":
        buf = io.BytesIO()
        torch.save({"actor.mu.weight": _Payload(str(marker))}, buf)
        pth = buf.getvalue()
    else:
        pth = pickle.dumps({"actor.mu.weight": _Payload(str(marker))})
    assert not marker.exists()
    crafted = _rewrite_zip(src, tmp_path / "crafted.zip", policy_pth=pth)
    with pytest.raises(ValueError, match="refused to load") as err:
        load_policy(crafted)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError):
        convert_sb3_policy(crafted, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out.json").exists()


# (b) reader == SB3, convert -> load round trip ---------------------------------------------------
@pytest.mark.parametrize("name", ["sac", "td3"])
def test_reader_matches_sb3_and_round_trips(tiny_models, tmp_path, name, no_unpickling):
    model, src = tiny_models[name]
    obs = _obs("hopper")
    from_zip = load_policy(src, get_task("hopper"))
    ref, _ = model.predict(obs, deterministic=True)  # the in-memory SB3 model: nothing unpickled
    np.testing.assert_allclose(from_zip.act(obs, deterministic=True), ref, rtol=0, atol=1e-6)
    out = convert_sb3_policy(src, tmp_path / name, provenance={"origin": "test"})
    assert out == tmp_path / f"{name}.json" and out.with_suffix(".safetensors").is_file()
    meta = json.loads(out.read_text())
    assert meta["source"]["origin"] == "test" and meta["format_version"] == policies.FORMAT_VERSION
    assert meta["algorithm"] == name.upper()
    again = convert_sb3_policy(src, tmp_path / "again" / name, provenance={"origin": "test"})
    for suffix in (".json", ".safetensors"):  # conversion is reproducible to the byte
        assert again.with_suffix(suffix).read_bytes() == out.with_suffix(suffix).read_bytes()
    for path in (out, out.with_suffix(".safetensors")):
        converted = load_policy(path, get_task("hopper"))
        for det in (True, False):
            a = from_zip.policy_fn(seed=3, deterministic=det)(obs)
            b = converted.policy_fn(seed=3, deterministic=det)(obs)
            assert a.dtype == np.float32 and a.shape == (len(obs), 3)
            np.testing.assert_array_equal(a, b)
    # an in-memory model exported directly gives the same actor
    direct = load_policy(save_sb3_actor(model, tmp_path / f"{name}-direct"))
    np.testing.assert_array_equal(direct.act(obs, deterministic=True), converted.act(obs, deterministic=True))


def test_stochastic_actions_follow_sb3_and_the_seed(tiny_models):
    model, src = tiny_models["sac"]
    policy = load_policy(src)
    obs = _obs("hopper", 16)
    # same distribution as SB3: with torch's global generator the samples are even identical
    torch.manual_seed(7)
    ref, _ = model.predict(obs, deterministic=False)
    torch.manual_seed(7)
    np.testing.assert_allclose(policy.act(obs), ref, rtol=0, atol=1e-6)
    a, b, c = (policy.policy_fn(seed=s)(obs) for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and np.all(np.abs(a) <= 1.0)


@pytest.mark.skipif(not SHARED_ZIPS.is_dir(), reason="the original SB3 zips (../shared) are not here")
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_files_match_the_original_zips(name):
    """Trusted zips only: SB3's own (unpickling) loader is the reference for the shipped actors."""
    from sb3_contrib import TQC
    from stable_baselines3 import SAC

    from dawm_env.paths import file_sha256

    zip_path = SHARED_ZIPS / f"{name}.zip"
    shipped = load_policy(SHIPPED_POLICIES_DIR / f"{name}.json")
    assert shipped.spec["source"]["sha256"] == file_sha256(zip_path)
    task = get_task(name.split("-")[0])
    env = gym.make(task.env_id)
    model = (TQC if name.endswith("tqc") else SAC).load(
        zip_path, device="cpu", custom_objects={"observation_space": env.observation_space,
                                                "action_space": env.action_space, "lr_schedule": lambda _: 0.0})
    obs = _obs(task.name, 64)
    ref, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(shipped.act(obs, deterministic=True), ref, rtol=0, atol=1e-6)


# (c) shipped defaults ----------------------------------------------------------------------------
def test_shipped_folder_contents():
    for name in SHIPPED:
        assert (SHIPPED_POLICIES_DIR / f"{name}.json").is_file()
        size = (SHIPPED_POLICIES_DIR / f"{name}.safetensors").stat().st_size
        assert 100_000 < size < 400_000  # actor weights only
    licence = (SHIPPED_POLICIES_DIR / "LICENSE-rl-trained-agents").read_text()
    assert "MIT" in licence or "Permission is hereby granted" in licence
    assert "rl-trained-agents" in (SHIPPED_POLICIES_DIR / "README.md").read_text()
    assert not any(p.suffix in (".zip", ".pkl", ".pth") for p in SHIPPED_POLICIES_DIR.iterdir())


@pytest.mark.parametrize("task_name, level", sorted(policies._DEFAULT_POLICIES))
def test_defaults_resolve_inside_the_package_and_act(task_name, level, monkeypatch, no_unpickling):
    monkeypatch.delenv("DAWM_POLICIES_DIR", raising=False)
    task = get_task(task_name)
    path = default_policy_path(task, level)
    if path is None:  # walker2d / halfcheetah medium come from the behaviour SAC run
        assert level == "medium" and task_name != "hopper"
        return
    assert path.parent == SHIPPED_POLICIES_DIR and path.suffix == ".json"
    policy = load_policy(path, task)
    assert isinstance(policy, BehaviorPolicy) and policy.kind == "squashed_gaussian"
    fn = policy.policy_fn(seed=0)
    env = gym.make(task.env_id)
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        action = fn(obs[None].astype(np.float32))
        assert action.shape == (1, task.act_dim) and action.dtype == np.float32
        assert np.all(action >= env.action_space.low) and np.all(action <= env.action_space.high)
        obs, *_ = env.step(action[0])
    env.close()


def test_rollouts_are_reproducible_from_their_seed():
    task = get_task("hopper")
    policy = load_policy(default_policy_path(task, "medium"), task)
    a, b = (collect_transitions(task, policy.policy_fn(seed=5), 60, seed=0, num_envs=3, progress=False)
            for _ in range(2))
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.observations, b.observations)


# (d) DAWM_POLICIES_DIR ---------------------------------------------------------------------------
def test_policies_dir_override(tmp_path, monkeypatch):
    for suffix in (".json", ".safetensors"):
        shutil.copy(SHIPPED_POLICIES_DIR / f"hopper-sac{suffix}", tmp_path / f"hopper-sac{suffix}")
    monkeypatch.setenv("DAWM_POLICIES_DIR", str(tmp_path))
    hopper = get_task("hopper")
    assert default_policy_path(hopper, "medium") == tmp_path / "hopper-sac.json"
    with pytest.raises(FileNotFoundError, match="DAWM_POLICIES_DIR") as err:
        default_policy_path(hopper, "expert")  # not in the override folder
    assert "hopper-tqc" in str(err.value) and "--policy" in str(err.value)


# (e) bad files -----------------------------------------------------------------------------------
def test_bad_files_give_clear_errors(tiny_models, tmp_path):
    hopper, walker = get_task("hopper"), get_task("walker2d")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy(tmp_path / "missing.zip")
    (tmp_path / "text.zip").write_text("not a zip")
    with pytest.raises(ValueError, match="neither a dawm policy"):
        load_policy(tmp_path / "text.zip")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    (tmp_path / "other.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a dawm behaviour policy"):
        load_policy(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_policy(tmp_path / "broken.json")
    # half a pair, mixed pairs, truncated weights
    shutil.copy(SHIPPED_POLICIES_DIR / "hopper-sac.json", tmp_path / "half.json")
    with pytest.raises(FileNotFoundError, match="pair"):
        load_policy(tmp_path / "half.json")
    shutil.copy(SHIPPED_POLICIES_DIR / "hopper-tqc.safetensors", tmp_path / "half.safetensors")
    with pytest.raises(ValueError, match="does not match"):
        load_policy(tmp_path / "half.json")
    meta = json.loads((tmp_path / "half.json").read_text())
    meta.pop("weights_sha256")
    (tmp_path / "half.json").write_text(json.dumps(meta))
    (tmp_path / "half.safetensors").write_bytes((SHIPPED_POLICIES_DIR / "hopper-sac.safetensors").read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_policy(tmp_path / "half.json")
    # a policy for another env
    with pytest.raises(ValueError, match="does not fit Walker2d"):
        load_policy(SHIPPED_POLICIES_DIR / "hopper-sac.json", walker)
    # an SB3 zip of an unsupported algorithm / actor: one line naming what is supported
    _, src = tiny_models["sac"]
    with zipfile.ZipFile(src) as zf:
        data = json.loads(zf.read("data"))
    for module, extra in [("stable_baselines3.ppo.policies", {}), ("stable_baselines3.sac.policies", {"use_sde": True})]:
        crafted = {**data, **extra, "policy_class": {**data["policy_class"], "__module__": module}}
        path = _rewrite_zip(src, tmp_path / "unsupported.zip", data=json.dumps(crafted).encode())
        with pytest.raises(ValueError, match="supported: SAC and TQC") as err:
            load_policy(path, hopper)
        assert "\n" not in str(err.value)
    no_data = _rewrite_zip(src, tmp_path / "nodata.zip", data=b"[1, 2]")
    with pytest.raises(ValueError, match="not a Stable-Baselines3 model zip"):
        read_sb3_zip(no_data)
