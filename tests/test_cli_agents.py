"""`dawm train agent` and `dawm evaluate` on a tiny budget."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dawm_env.cli import app
from dawm_env.data.loading import save_npz


def test_train_agent_and_evaluate_cli(hopper_random, tmp_path):
    data = tmp_path / "hopper.npz"
    save_npz(hopper_random, data)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "agent", "--algo", "td3bc", "--dataset", str(data), "--steps", "20",
                                   "--seeds", "2", "--eval-every", "10", "--eval-episodes", "1", "--out", str(out),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results
    assert (out / "learning_curve.png").stat().st_size > 1000  # matplotlib is a dependency
    ev = CliRunner().invoke(app, ["evaluate", str(out), "--episodes", "1"])
    assert ev.exit_code == 0, ev.output
    assert (out / "evaluation.json").is_file()
    bad = CliRunner().invoke(app, ["train", "agent", "--algo", "sac", "--dataset", str(data), "--out", str(out)])
    assert bad.exit_code == 2 and "sac" in bad.output
    # one seed's policy as TorchScript, equal to that seed's actions in the run
    import numpy as np
    import torch

    from dawm_env.agents.train import load_agent

    ex = CliRunner().invoke(app, ["export", str(out), "--out", str(tmp_path / "p.pt")])
    assert ex.exit_code == 0, ex.output
    agent, _ = load_agent(out)
    obs = hopper_random.observations[:4]
    want = agent.act(torch.from_numpy(obs).expand(agent.k, -1, -1)).numpy()[0]
    np.testing.assert_allclose(torch.jit.load(str(tmp_path / "p.pt"))(torch.from_numpy(obs)).numpy(), want, atol=1e-5)
    again = CliRunner().invoke(app, ["export", str(out), "--out", str(tmp_path / "p.pt")])
    assert again.exit_code == 2 and "exists" in again.output
