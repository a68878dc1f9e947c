"""Shared fixtures: isolated dataset / dawm roots and tiny real datasets."""

from __future__ import annotations

import numpy as np
import pytest

from dawm_env.data.records import OfflineDataset
from dawm_env.data.rollout import collect_transitions, uniform_random_policy
from dawm_env.tasks import get_task


@pytest.fixture(autouse=True)
def _isolated_roots(tmp_path, monkeypatch):
    """Every test writes datasets and runs under its own temporary roots."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setenv("DAWM_HOME", str(tmp_path / "dawm_home"))
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(scope="session")
def hopper_random() -> OfflineDataset:
    """~1500 real Hopper-v5 transitions from uniform random actions: many short, terminated episodes."""
    task = get_task("hopper")
    return collect_transitions(task, uniform_random_policy(task.act_dim, seed=0), 1500, seed=0, num_envs=4,
                               progress=False)


@pytest.fixture(scope="session")
def halfcheetah_random() -> OfflineDataset:
    """300 real HalfCheetah-v5 transitions in 4 episodes cut by the budget: truncations only."""
    task = get_task("halfcheetah")
    return collect_transitions(task, uniform_random_policy(task.act_dim, seed=1), 300, seed=0, num_envs=4,
                               progress=False)


def cli(*args: object):
    """Invoke the ``dawm`` CLI in-process with ``args`` (converted to str); returns typer's result."""
    from typer.testing import CliRunner

    from dawm_env.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(res, *needles: str) -> str:
    """Exit code 2, no traceback, and exactly one ``error:`` line holding every needle; returns the line."""
    assert res.exit_code == 2, (res.exit_code, res.output, repr(res.exception))
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.output
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def interrupt_behavior_run_at_first_eval(monkeypatch, cfg):
    """Run the behaviour SAC of ``cfg`` until its first evaluation, which is made to raise KeyboardInterrupt.

    Returns the real ``evaluate_returns`` (restore it with ``monkeypatch.setattr`` to resume the run).
    """
    from dawm_env.data import behavior_sac

    real_eval = behavior_sac.evaluate_returns

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(behavior_sac, "evaluate_returns", interrupt)
    with pytest.raises(KeyboardInterrupt):
        behavior_sac.run_behavior_sac(cfg, progress=False)
    return real_eval


def assert_same_data(a: OfflineDataset, b: OfflineDataset) -> None:
    """Transition-for-transition equality, including episode boundaries and flags."""
    np.testing.assert_array_equal(a.episode_offsets, b.episode_offsets)
    for name in ("observations", "actions", "rewards", "next_observations", "terminations", "truncations"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=1e-6, err_msg=name)


@pytest.fixture(scope="session")
def tiny_bundle(hopper_random, tmp_path_factory):
    """A complete but barely trained hopper bundle folder (world model + IDM + seeds + metrics).

    Tiny budgets: it exercises every code path, not model quality.
    """
    from dawm_env.data.loading import save_npz
    from dawm_env.training.idm import IDMTrainConfig, train_idm
    from dawm_env.training.world_model import WorldModelTrainConfig, train_world_model
    from dawm_env.world_model.assemble import assemble_bundle

    root = tmp_path_factory.mktemp("tiny_bundle")
    data_path = str(root / "hopper_random.npz")
    save_npz(hopper_random, data_path)
    out = root / "bundle"
    train_world_model(WorldModelTrainConfig(dataset=data_path, out=str(out), preset="cpu", steps=30, batch_size=16,
                                            progress=False, threads=1))
    train_idm(IDMTrainConfig(dataset=data_path, out=str(out), steps=60, hidden=(32, 32), batch_size=64,
                             progress=False, threads=1))
    assemble_bundle(out, num_seed_pairs=256, eval_windows=64, calibration_transitions=512)
    return out
