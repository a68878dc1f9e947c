"""Draw dream states with the real MuJoCo model (offscreen), and pick a headless OpenGL backend.

A dream observation is the real env's observation ``(qpos[1:], qvel)``: everything but the x position
(the root slide joint). :class:`StateRenderer` writes ``qpos = (x, obs[:nq-1])`` and
``qvel = obs[nq-1:]`` into the real ``-v5`` env (``set_state`` runs ``mj_forward``) and calls its own
``render()``, so dream and real frames come from the same model, camera and lighting. The x position
is integrated from the observed x velocity (trapezoid rule, ``x += dt (v_t + v_{t+1}) / 2``) so the
floor moves under a hopping robot; Hopper and Walker2d clip velocities at +-10 in observations, which
only matters for the picture.

OpenGL: MuJoCo needs an offscreen context. With ``MUJOCO_GL`` unset and no display, Gymnasium tries
GLFW first, which fails headless and then leaves EGL unusable in the same process, so
:func:`ensure_gl_backend` sets ``MUJOCO_GL=egl`` (Mesa's EGL renders in software, no GPU needed) before
the first renderer is made. Debian / Ubuntu packages: ``libegl1 libegl-mesa0`` (or ``libosmesa6`` with
``MUJOCO_GL=osmesa``). :func:`probe_gl` checks in a subprocess whether rendering works at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np

from dawm_env.tasks import TASKS, get_task

# obs = (qpos[1:], qvel): nq positions, the first (x) excluded (TaskSpec.qpos_dim). Checked against -v5 in tests.
QPOS_DIM: dict[str, int] = {name: spec.qpos_dim for name, spec in TASKS.items()}
# Control period of the real envs (frame_skip * timestep), for x integration and video fps.
CONTROL_DT: dict[str, float] = {"hopper": 0.008, "walker2d": 0.008, "halfcheetah": 0.05}


def render_fps(task: str) -> int:
    """Frames per second matching real time (the real env's ``metadata["render_fps"]``)."""
    return int(round(1.0 / CONTROL_DT[task]))


def ensure_gl_backend() -> str:
    """Choose MuJoCo's OpenGL backend for offscreen rendering and return its name.

    Respects an existing ``MUJOCO_GL``. Without one, uses ``glfw`` when a display exists, else ``egl``
    (and sets ``PYOPENGL_PLATFORM`` to match, as ``mujoco.egl`` expects). Call before the first
    renderer is created in the process.
    """
    backend = os.environ.get("MUJOCO_GL")
    if not backend:
        backend = "glfw" if (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) else "egl"
        os.environ["MUJOCO_GL"] = backend
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


_PROBE = (
    "from dawm_env.envs.render import ensure_gl_backend; ensure_gl_backend()\n"
    "import gymnasium as gym\n"
    "e = gym.make('Hopper-v5', render_mode='rgb_array', width=16, height=16); e.reset(seed=0)\n"
    "f = e.render(); assert f.shape == (16, 16, 3) and f.dtype.name == 'uint8', f\n"
)


def probe_gl(timeout: float = 120.0) -> tuple[bool, str]:
    """Whether offscreen MuJoCo rendering works here: ``(ok, reason)``, tried in a subprocess.

    A failed GL initialisation can leave the process unable to render, hence the subprocess.
    """
    try:
        res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout,
                             env={**os.environ})
    except subprocess.TimeoutExpired:
        return False, f"rendering probe timed out after {timeout:.0f} s"
    if res.returncode == 0:
        return True, f"MUJOCO_GL={os.environ.get('MUJOCO_GL') or 'auto (egl when headless)'} works"
    tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
    return False, (f"no working offscreen OpenGL backend for MuJoCo ({tail[0]}); install EGL "
                   "(apt-get install libegl1 libegl-mesa0) or OSMesa (libosmesa6, MUJOCO_GL=osmesa)")


def advance_x(task: str, x: float, obs: np.ndarray, next_obs: np.ndarray) -> float:
    """Integrate the unobserved x position over one control step from the observed x velocity."""
    vi = QPOS_DIM[task] - 1  # index of qvel[0] (x velocity) in the observation
    return float(x + CONTROL_DT[task] * 0.5 * (float(obs[vi]) + float(next_obs[vi])))


class StateRenderer:
    """Render observations of a task with its real MuJoCo model.

    Args:
        task: ``hopper`` / ``walker2d`` / ``halfcheetah``.
        width, height: frame size in pixels.

    The real env (with its tracking camera) is created on construction; :meth:`close` frees it.
    """

    def __init__(self, task: str, width: int = 480, height: int = 480) -> None:

        self.task = get_task(task)
        ensure_gl_backend()
        import gymnasium as gym

        self._env: Any = gym.make(self.task.env_id, render_mode="rgb_array", width=int(width),
                                  height=int(height)).unwrapped
        self._env.reset(seed=0)
        nq = QPOS_DIM[self.task.name]
        if self._env.model.nq != nq:  # pragma: no cover - guards against a changed MuJoCo model
            raise RuntimeError(f"{self.task.env_id} has nq={self._env.model.nq}, dawm expects {nq}")

    def qpos_qvel(self, obs: np.ndarray, x: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Split an observation ``(obs_dim,)`` into ``qpos (nq,)`` (with x prepended) and ``qvel (nv,)``."""
        return self.task.split_observation(obs, x)

    def render(self, obs: np.ndarray, x: float = 0.0) -> np.ndarray:
        """``(height, width, 3)`` uint8 picture of the state ``obs`` with root x position ``x``."""
        qpos, qvel = self.qpos_qvel(obs, x)
        if not (np.isfinite(qpos).all() and np.isfinite(qvel).all()):
            raise ValueError("cannot render a state with NaN / inf entries")
        self._env.set_state(qpos, qvel)
        return np.array(self._env.render(), dtype=np.uint8, copy=True)

    def close(self) -> None:
        """Free the GL context and the MuJoCo env."""
        self._env.close()
