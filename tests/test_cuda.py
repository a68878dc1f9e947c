"""CUDA paths (skipped without a GPU): the same code runs on cuda and agrees with the CPU where it must.

``benchmarks/gpu_check.sh`` runs this file first on a GPU machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dawm_env.data.loading import save_npz
from dawm_env.data.normalization import NormStats
from dawm_env.planner import DDConfig, DecisionDiffuser, build_dd_model
from dawm_env.tasks import get_task
from dawm_env.training.world_model import WorldModelTrainConfig, train_world_model
from dawm_env.world_model.bundle import Bundle
from dawm_env.world_model.idm import IDMConfig, InverseDynamics

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_world_model_trains_on_cuda_and_the_bundle_loads_there(hopper_random, tmp_path, tiny_bundle):
    data = str(tmp_path / "d.npz")
    save_npz(hopper_random, data)
    out = train_world_model(WorldModelTrainConfig(dataset=data, out=str(tmp_path / "wm"), preset="cpu", steps=3,
                                                  batch_size=16, device="cuda", progress=False))
    assert (out / "world_model.safetensors").is_file()
    cpu, gpu = Bundle.load(tiny_bundle, "cpu"), Bundle.load(tiny_bundle, "cuda")
    wm = cpu.world_model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, wm.horizon, wm.transition_dim, generator=g)
    a = torch.randn(4, wm.act_dim, generator=g).clamp(-1, 1)
    k = torch.tensor([0, 1, 2, 3])
    rtg = torch.full((4,), 0.5)
    with torch.no_grad():  # one guided prediction: the same network on both devices
        eps_cpu = wm.guided_eps(x, k, a, rtg, 1.2)
        eps_gpu = gpu.world_model.guided_eps(x.cuda(), k.cuda(), a.cuda(), rtg.cuda(), 1.2)
    torch.testing.assert_close(eps_gpu.cpu(), eps_cpu, rtol=1e-3, atol=1e-3)


def test_planner_acts_on_cuda(hopper_random):
    task = get_task("hopper")
    cfg = DDConfig.preset("smoke")
    planner = DecisionDiffuser(build_dd_model(cfg, task.obs_dim).cuda().eval(),
                               InverseDynamics.from_config(IDMConfig(hidden=(16, 16)), task.obs_dim,
                                                           task.act_dim).cuda().eval(),
                               NormStats.from_dataset(hopper_random), cfg)
    s = hopper_random.observations[:3]
    out = planner.act(s, s, np.ones(3, dtype=bool), torch.Generator(device="cuda").manual_seed(0))
    assert out.actions.shape == (3, task.act_dim) and out.plan.device.type == "cuda"
    assert torch.equal(out.plan[:, 0], planner.normalize(s))
