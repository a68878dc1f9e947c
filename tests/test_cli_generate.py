"""`dawm generate` and `dawm data info` on a generated dataset (tiny bundle)."""

from __future__ import annotations

import json

import minari
from typer.testing import CliRunner

from dawm_env.cli import app
from dawm_env.data.loading import save_npz


def test_generate_and_info_cli(tiny_bundle, hopper_random, tmp_path):
    seed_path = tmp_path / "seed.npz"
    save_npz(hopper_random, seed_path)
    runner = CliRunner()
    res = runner.invoke(app, ["generate", "--bundle", str(tiny_bundle), "--seed-dataset", str(seed_path),
                              "--out", "test/hopper/dawm-gen-v0", "--horizon", "3", "--subsample", "4",
                              "--batch-size", "256", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == "test/hopper/dawm-gen-v0"
    ds = minari.load_dataset("test/hopper/dawm-gen-v0")
    assert ds.total_episodes == len(hopper_random) // 4
    info = runner.invoke(app, ["data", "info", "test/hopper/dawm-gen-v0", "--json"])
    assert info.exit_code == 0, info.output
    parsed = json.loads(info.output)
    assert parsed["episodes"] == ds.total_episodes
    assert 0.0 <= parsed["generation"]["terminated_fraction"] <= 1.0
    text = runner.invoke(app, ["data", "info", "test/hopper/dawm-gen-v0"])
    assert text.exit_code == 0, text.output
    assert "rollout return:" in text.output and "normalised:   n/a (episodes are generated rollouts" in text.output
    bad = runner.invoke(app, ["generate", "--bundle", "no-such-bundle", "--seed-dataset", str(seed_path),
                              "--out", "test/hopper/x-v0"])
    assert bad.exit_code == 2 and "no bundle" in bad.output
