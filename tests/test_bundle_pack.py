"""``dawm bundle pack``: a half-precision copy of a bundle that loads and samples like the float32 one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, cli
from safetensors.torch import load_file

from dawm_env.world_model.assemble import pack_bundle
from dawm_env.world_model.bundle import Bundle


@pytest.fixture(scope="module")
def packed(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("pack") / "tiny-fp16"
    pack_bundle(tiny_bundle, out, eval_windows=32, calibration_transitions=256)
    return out


def test_pack_stores_parameters_in_float16_and_keeps_buffers_and_seeds(tiny_bundle, packed):
    src = Bundle.load(tiny_bundle)
    for stem, module in (("world_model", src.world_model), ("idm", src.idm)):
        params = {n for n, _ in module.named_parameters()}
        tensors = load_file(str(packed / f"{stem}.safetensors"))
        original = load_file(str(tiny_bundle / f"{stem}.safetensors"))
        assert set(tensors) == set(original)
        for k, v in tensors.items():
            assert v.dtype == (torch.float16 if k in params else original[k].dtype), k
            assert torch.equal(v, original[k].to(v.dtype)), k  # rounded, nothing else
        assert (packed / f"{stem}.safetensors").stat().st_size < 0.6 * (tiny_bundle / f"{stem}.safetensors").stat().st_size
    assert torch.equal(load_file(str(packed / "seeds.safetensors"))["states"],
                       load_file(str(tiny_bundle / "seeds.safetensors"))["states"])


def test_packed_bundle_loads_as_float32_and_samples_like_the_original(tiny_bundle, packed):
    src, half = Bundle.load(tiny_bundle), Bundle.load(packed)
    for (name, p), q in zip(half.world_model.named_parameters(), src.world_model.parameters()):
        assert p.dtype == torch.float32
        assert torch.equal(p, q.half().float()), name
    s, a = src.seed_states[:16], src.seed_actions[:16]
    w_src = src.sample_window(s, a, 0.8, rows=3, generator=torch.Generator().manual_seed(0))
    w_half = half.sample_window(s, a, 0.8, rows=3, generator=torch.Generator().manual_seed(0))
    assert np.abs(w_src.states - w_half.states).max() < 0.05 * max(1.0, np.abs(w_src.states).max())
    meta = half.meta
    assert meta["storage_dtype"] == "float16"
    assert meta["metrics_float32"] == src.meta["metrics"]  # packed on its own training data: metrics re-measured
    assert set(meta["metrics"]) == set(src.meta["metrics"]) and meta["metrics"] == meta["packing"]["packed"]
    assert meta["packing"]["training_data"] and meta["packing"]["float32"]["heldout_windows"] == 32
    assert half.pessimism is not None


def test_held_out_metrics_include_the_one_step_error_against_mujoco(packed):
    metrics = Bundle.load(packed).meta["metrics"]
    assert metrics["mujoco_one_step_states"] > 0 and np.isfinite(metrics["mujoco_one_step_mse"])


def test_pack_on_other_data_of_the_task_keeps_the_held_out_record(tiny_bundle, hopper_random, tmp_path):
    import dataclasses

    other = dataclasses.replace(hopper_random, rewards=hopper_random.rewards + 1.0)  # same task, other fingerprint
    out = pack_bundle(tiny_bundle, tmp_path / "p", data=other, eval_windows=16, calibration_transitions=128)
    meta = Bundle.load(out).meta
    assert not meta["packing"]["training_data"] and "metrics_float32" not in meta
    assert meta["metrics"] == Bundle.load(tiny_bundle).meta["metrics"]
    assert (out / "pessimism.json").read_text() == (tiny_bundle / "pessimism.json").read_text()
    assert all(f.stat().st_mode & 0o044 == 0o044 for f in out.iterdir())  # readable by others, as open() makes


def test_pack_refuses_an_existing_folder_and_an_unknown_dtype(tiny_bundle, packed, tmp_path):
    before = sorted(p.name for p in packed.parent.iterdir())
    with pytest.raises(FileExistsError):
        pack_bundle(tiny_bundle, packed)
    assert sorted(p.name for p in packed.parent.iterdir()) == before  # no staging folder left behind
    with pytest.raises(ValueError, match="float16"):
        pack_bundle(tiny_bundle, tmp_path / "x", dtype="int8")
    assert not (tmp_path / "x").exists()
    assert_one_line_error(cli("bundle", "pack", str(tiny_bundle), "--out", str(packed)), "already exists")
