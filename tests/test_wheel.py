"""dawm as users get it: build the wheel, install it into a fresh venv, work in an empty folder.

The fresh venv holds only the dawm wheel; its third-party dependencies (torch, gymnasium, minari, ...) come
from this test environment's site-packages through a ``.pth`` path entry, so the test needs no network and no
second torch install. A ``.pth`` path entry adds that folder without processing the ``.pth`` files inside it,
so the repository's editable install is invisible there: every dawm import must resolve to the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: What the wheel is built from (everything else in the repository must not be needed at run time).
SOURCES = ("pyproject.toml", "README.md", "dawm_env", "agents", "training")


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The dawm wheel, built from a copy of the sources (the checkout gets no build/ or egg-info)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)], src,
         dict(os.environ))
    (whl,) = out.glob("dawm-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> tuple[Path, dict]:
    """A fresh venv with the wheel installed, and the environment to run it in (empty HOME, no overrides)."""
    root = tmp_path_factory.mktemp("wheel-venv")
    venv_dir = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv_dir)], root, dict(os.environ))
    py = venv_dir / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], root, dict(os.environ))
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root,
                     dict(os.environ)).stdout.strip())
    (site / "_dawm_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    home = root / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DAWM_", "MINARI_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), DAWM_HOME=str(home / "dawm"), MINARI_DATASETS_PATH=str(home / "minari"),
               PATH=f"{venv_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return venv_dir, env


def test_wheel_installs_one_top_level_name_and_ships_its_data(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"dawm_env"}, sorted(tops)
    assert "dawm_env/agents/td3bc.py" in names and "dawm_env/training/world_model.py" in names
    assert "dawm_env/py.typed" in names
    for bundle in ("hopper-medium", "walker2d-medium", "halfcheetah-medium"):
        for part in ("bundle.json", "world_model.safetensors", "idm.safetensors", "seeds.safetensors",
                     "pessimism.json"):
            assert f"dawm_env/bundles/{bundle}/{part}" in names, (bundle, part)
    for policy in ("hopper-sac", "hopper-tqc", "walker2d-tqc", "halfcheetah-tqc"):
        assert f"dawm_env/policies/{policy}.json" in names and f"dawm_env/policies/{policy}.safetensors" in names
    assert "dawm_env/policies/LICENSE-rl-trained-agents" in names
    # three float16 bundles of ~7 MB and 1.7 MB of policies: a float32 copy of the weights would not fit here
    assert wheel.stat().st_size < 30e6, f"wheel weighs {wheel.stat().st_size / 1e6:.1f} MB"
    assert not [n for n in names if n.endswith((".zip", ".pkl", ".pt", ".pth"))]  # nothing that unpickles
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/"))]


def test_installed_wheel_works_from_an_empty_folder(venv, tmp_path):
    venv_dir, env = venv
    py, dawm = str(venv_dir / "bin" / "python"), str(venv_dir / "bin" / "dawm")
    work = tmp_path / "empty"
    work.mkdir()

    where = _run([py, "-c", "import dawm_env, dawm_env.agents, dawm_env.training; print(dawm_env.__file__)"],
                 work, env).stdout.strip()
    assert str(venv_dir) in where and not where.startswith(str(REPO)), where
    assert _run([dawm, "--version"], work, env).stdout.strip().startswith("dawm ")

    # a small D4RL-style build with the default (shipped) behaviour policy
    built = _run([dawm, "data", "build", "--task", "hopper", "--level", "medium", "--steps", "600",
                  "--num-envs", "2", "--no-progress"], work, env).stdout.strip().splitlines()[-1]
    assert built == "dawm-d4rl/hopper/medium-v0"
    info = json.loads(_run([dawm, "data", "info", built, "--json"], work, env).stdout)
    assert info["transitions"] == 600 and info["task"] == "hopper" and info["normalized_score_mean"] is not None

    # every registered dream env works out of the box: its default bundle ships inside the wheel
    script = (
        "import gymnasium as gym, numpy as np, dawm_env\n"
        "from gymnasium.utils.env_checker import check_env\n"
        "from stable_baselines3.common.env_checker import check_env as sb3_check_env\n"
        "from dawm_env.envs import DREAM_ENVS\n"
        "made = []\n"
        "for env_id, task, bundle in DREAM_ENVS:\n"
        "    env = gym.make(env_id, max_episode_steps=10)\n"
        "    obs, _ = env.reset(seed=0)\n"
        "    obs, r, term, trunc, info = env.step(env.action_space.sample())\n"
        "    assert obs.shape == env.observation_space.shape and np.isfinite(obs).all() and np.isfinite(r)\n"
        "    check_env(env.unwrapped, skip_render_check=True)\n"
        "    sb3_check_env(env, warn=False)\n"
        "    made.append(env_id)\n"
        "print(','.join(made))\n"
    )
    made = _run([py, "-c", script], work, env).stdout.strip().splitlines()[-1].split(",")
    assert made == ["DAWM-Hopper-v0", "DAWM-Walker2d-v0", "DAWM-HalfCheetah-v0"]
