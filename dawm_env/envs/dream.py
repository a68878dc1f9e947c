"""The dream environment: a trained DAWM world model served as a Gymnasium ``Env``.

One ``step(a)`` is one call of the diffusion world model conditioned on ``(s_t, a_t, g)``:

- the model generates a whole window ``(T, obs + act + 1)`` (it was trained on windows of
  ``T = H + 1`` rows and its temporal U-Net sees them all), of which only two entries are used:
  ``s_{t+1}`` = row 1's state and ``r_t`` = row 0's reward. The rest of the window is a prediction
  under the *dataset's* behaviour policy for the following steps, not under the agent's future
  actions, so it is discarded. This is the simple, correct semantics; it costs a full window per step.
- ``terminated`` comes from the task's termination function on ``s_{t+1}`` (the real ``-v5`` health
  check); ``truncated`` from the time limit (``gymnasium.make`` adds ``TimeLimit``; a directly built
  env and the vector env count steps themselves).
- ``reset`` draws a start state: by default one of the bundle's seed states (real mid-episode
  states from the training data), or a state of a dataset (``start_states=<dataset id or path>``,
  every state or only episode-initial ones), or an explicit ``options={"start_state": obs}``.
- All randomness comes from ``self.np_random``: every step draws one integer from it and reseeds the
  torch generator used by the sampler, so the same seed and actions reproduce the same episode.

Actions are clipped to ``[-1, 1]`` like the real MuJoCo actuators' ``ctrlrange`` (the world model only
saw actions in that range); wrong shapes, non-numeric dtypes and NaN / inf raise ``ValueError``.

Pessimism (on by default; ``pessimism=False`` gives the raw dream): every step measures an uncertainty ``u``
(:mod:`dawm_env.world_model.uncertainty`; default ``action_gap``, DAWM's action consistency) and

- the reward becomes ``r - penalty_coef * u`` (MOPO, Yu et al. 2020);
- the episode halts (``terminated``, reward ``- halt_penalty`` added) when ``u > halt_threshold`` (MOReL,
  Kidambi et al. 2020).

Defaults for both come from the bundle's calibration on real held-out transitions (``pessimism.json``):
an agent that drives actions where the data never went finds that the world model ignores them (the IDM
infers a different action), pays for it and is stopped, instead of being rewarded by behaviour-like dreams.

Observation / action spaces equal the real env's (``Box(-inf, inf, (obs_dim,), float64)`` and
``Box(-1, 1, (act_dim,), float32)``), so a policy trained in the dream loads against the real env.

Configuration (every field JSON-friendly, so it survives ``EnvSpec`` / Minari serialisation) is
:class:`DreamConfig`; the same keyword arguments work for :class:`DreamEnv`, the vector env
(:mod:`dawm_env.envs.vector`) and ``gymnasium.make`` / ``gymnasium.make_vec``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from dawm_env.data.loading import load_dataset
from dawm_env.envs.render import StateRenderer, advance_x, render_fps
from dawm_env.tasks import TaskSpec, get_task
from dawm_env.world_model.bundle import Bundle, resolve_bundle
from dawm_env.world_model.calibration import SIGNALS, PessimismCalibration
from dawm_env.world_model.diffusion import check_timesteps
from dawm_env.world_model.uncertainty import check_signal, dream_transition

#: Dream env ids by task (also used in error messages).
ENV_IDS: dict[str, str] = {"hopper": "DAWM-Hopper-v0", "walker2d": "DAWM-Walker2d-v0",
                           "halfcheetah": "DAWM-HalfCheetah-v0"}

START_MODES = ("any", "initial")


def default_bundle_name(task: str) -> str:
    """Bundle an env uses when none is given: ``<task>-medium`` (e.g. ``hopper-medium``)."""
    return f"{get_task(task).name}-medium"


@dataclass
class DreamConfig:
    """Everything that defines a dream env. All fields are JSON-friendly (str / float / int / bool / None).

    Attributes:
        task: ``hopper`` / ``walker2d`` / ``halfcheetah``; the bundle must be for this task.
        bundle: bundle folder path or name (searched in ``dawm_env/bundles`` and ``$DAWM_HOME/bundles``);
            None = ``<task>-medium``.
        rtg_target: scaled return-to-go ``g`` the world model is conditioned on at every step (a constant
            target, as DAWM generation uses); None = the highest of the task's DWM generation targets
            (hopper / walker2d 0.8, halfcheetah 0.6).
        guidance_weight: classifier-free guidance ``w``; None = the bundle's (1.2 by default).
        sampling_steps: reverse diffusion steps ``N``; None = the bundle's (3). Fewer is faster, coarser.
        sampling_timesteps: explicit ascending diffusion steps to visit instead (e.g. ``[0, 3]``: two
            network passes starting one step below the noisiest; more accurate than the default three from
            a 5-step model, see the README's speed table); None = evenly strided ``sampling_steps``.
        bf16: run the networks under bfloat16 autocast (faster on CPUs with AVX512-BF16 / AMX and GPUs).
        temperature: sampling noise scale; None = the bundle's (0.5).
        device: torch device of the models (``cpu``, ``cuda``, ``cuda:1``).
        start_states: where ``reset`` draws start states from: ``"seeds"`` (the bundle's seed states) or
            a dataset id / path accepted by :func:`dawm_env.data.loading.load_dataset`.
        start_mode: with a dataset source, ``"any"`` (every state) or ``"initial"`` (episode-initial
            states only, i.e. the real env's reset distribution). Seeds support only ``"any"``.
        idm_info: add ``info["idm_action_error"]``: mean ``|IDM(s_{t-1}, s_t, s_{t+1}) - a_t|`` over action
            dims, a free per-step plausibility signal (0 on reset). Costs one IDM call per step.
        pessimism: penalise and halt uncertain steps (module docstring); False = the raw dream.
        uncertainty: the signal ``u``: ``action_gap`` (one IDM call) or ``disagreement`` (two samples per
            step, doubles the model batch).
        penalty_coef: ``lambda`` in ``r - lambda * u`` (>= 0; 0 = no penalty); None = the bundle's calibrated.
        halt_threshold: halt when ``u`` exceeds it (> 0); None = the bundle's calibrated (99.9th percentile
            of ``u`` on real transitions).
        halt: whether to halt at all (False keeps only the penalty).
        halt_penalty: subtracted from the reward of a halting step (>= 0). Halting already ends the return,
            which costs the alive bonus of every later step in hopper / walker2d.
    """

    task: str = "hopper"
    bundle: Optional[str] = None
    rtg_target: Optional[float] = None
    guidance_weight: Optional[float] = None
    sampling_steps: Optional[int] = None
    sampling_timesteps: Optional[list[int]] = None
    bf16: bool = False
    temperature: Optional[float] = None
    device: str = "cpu"
    start_states: str = "seeds"
    start_mode: str = "any"
    idm_info: bool = False
    pessimism: bool = True
    uncertainty: str = "action_gap"
    penalty_coef: Optional[float] = None
    halt_threshold: Optional[float] = None
    halt: bool = True
    halt_penalty: float = 0.0

    def __post_init__(self) -> None:
        self.task = get_task(self.task).name  # raises ValueError naming the known tasks
        check_signal(self.uncertainty)
        for name in ("penalty_coef", "halt_threshold", "halt_penalty"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0 or None, got {v!r}")
            setattr(self, name, float(v))
        if self.halt_threshold is not None and self.halt_threshold == 0:
            raise ValueError("halt_threshold must be > 0 (use halt=False to never halt)")
        if self.halt_penalty is None:
            raise ValueError("halt_penalty must be a number >= 0, got None")
        if self.bundle is not None:
            self.bundle = os.fspath(self.bundle)
        for name in ("rtg_target", "guidance_weight", "temperature"):
            v = getattr(self, name)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"{name} must be a finite number or None, got {v!r}")
                setattr(self, name, float(v))
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.sampling_steps is not None and (isinstance(self.sampling_steps, bool)
                                                or not isinstance(self.sampling_steps, int)
                                                or self.sampling_steps < 1):
            raise ValueError(f"sampling_steps must be a positive int or None, got {self.sampling_steps!r}")
        if self.sampling_timesteps is not None:
            if self.sampling_steps is not None:
                raise ValueError("pass sampling_steps or sampling_timesteps, not both")
            ts = self.sampling_timesteps
            if isinstance(ts, (str, bytes)) or not hasattr(ts, "__iter__"):
                raise ValueError(f"sampling_timesteps must be a list of ints (e.g. [0, 3]), got {ts!r}")
            self.sampling_timesteps = check_timesteps(ts)  # the upper end is checked against the bundle
        if self.start_mode not in START_MODES:
            raise ValueError(f"start_mode must be one of {START_MODES}, got {self.start_mode!r}")
        if self.start_states == "seeds" and self.start_mode != "any":
            raise ValueError(
                "start_mode='initial' needs a dataset: the bundle's seed states are mid-episode states. "
                "Pass start_states=<dataset id or path> (e.g. the bundle's training dataset)."
            )
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device {self.device!r} is not a torch device (use 'cpu' or 'cuda')") from err

    @property
    def bundle_name(self) -> str:
        """The bundle to load (``bundle`` or the task's default name)."""
        return self.bundle if self.bundle is not None else default_bundle_name(self.task)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], extra: tuple[str, ...] = ()) -> "DreamConfig":
        """Build from env keyword arguments; unknown keys raise ValueError listing the valid ones.

        Args:
            kwargs: the env's keyword arguments that are config fields.
            extra: the env's own other keyword arguments (only for the error message).
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise ValueError(f"unknown dream env argument(s) {unknown}; valid: {sorted(names + list(extra))}")
        return cls(**kwargs)


# Loaded bundles are shared between env instances (SyncVectorEnv makes N of them; the sampler keeps no
# state in the modules, so sharing is safe). Keyed by folder, device and bundle.json mtime so a
# retrained bundle in the same folder is reloaded; a few at most, since they hold the weights.
_BUNDLE_CACHE: "OrderedDict[tuple[str, str, int], Bundle]" = OrderedDict()
_BUNDLE_CACHE_SIZE = 4


def load_bundle_for(config: DreamConfig) -> Bundle:
    """Load (or reuse) the bundle of ``config`` and check that it is for ``config.task``.

    Raises:
        FileNotFoundError: no such bundle (the message says how to train one).
        ValueError: the bundle is for another task, or is corrupt (``CheckpointError``).
    """

    env_id = ENV_IDS[config.task]
    try:
        path = resolve_bundle(config.bundle_name).resolve()
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{env_id}: {err}. To use it by name, put the trained bundle in $DAWM_HOME/bundles/{config.bundle_name} "
            f"(--out of both training commands); or pass bundle='/path/to/a/{config.task}/bundle'."
        ) from err
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} requested but CUDA is not available; use device='cpu'")
    key = (str(path), str(torch.device(config.device)), (path / "bundle.json").stat().st_mtime_ns
           if (path / "bundle.json").exists() else 0)
    if key not in _BUNDLE_CACHE:
        try:
            bundle = Bundle.load(path, device=config.device, expect_task=config.task)
        except ValueError as err:
            if "is for task" not in str(err):
                raise
            raise ValueError(
                f"{err}. {env_id} needs a {config.task} bundle: pass one, or use the env of the bundle's task "
                f"({', '.join(ENV_IDS.values())})."
            ) from err
        _BUNDLE_CACHE[key] = bundle
        while len(_BUNDLE_CACHE) > _BUNDLE_CACHE_SIZE:
            _BUNDLE_CACHE.popitem(last=False)
    _BUNDLE_CACHE.move_to_end(key)
    return _BUNDLE_CACHE[key]


def check_actions(action: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Validate and convert actions to a fresh float32 array clipped to ``[-1, 1]``.

    Args:
        action: array-like of shape ``shape`` (``(act_dim,)`` or ``(num_envs, act_dim)``) with a real
            numeric dtype (float or int).
        shape: the expected shape.

    Raises:
        ValueError: wrong shape, a non-numeric / bool / complex dtype, or NaN / inf entries.
    """
    if isinstance(action, torch.Tensor):
        action = action.detach().cpu().numpy()
    try:
        arr = np.asarray(action)
    except (ValueError, TypeError) as err:  # ragged lists
        raise ValueError(f"action must be an array of shape {shape}, got {type(action).__name__} ({err})") from err
    if arr.dtype.kind not in "fiu":
        raise ValueError(
            f"action must have a real numeric dtype (float32 preferred), got dtype {arr.dtype}; "
            f"pass e.g. np.asarray(action, dtype=np.float32)"
        )
    if arr.shape != shape:
        raise ValueError(f"action must have shape {shape}, got {arr.shape}")
    arr = arr.astype(np.float32)  # always a copy: callers may reuse their buffer
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[:4].tolist()
        raise ValueError(f"action contains NaN or inf (first bad indices {bad}); the world model needs finite actions")
    # The real actuators clamp controls to ctrlrange [-1, 1]; do the same (the model never saw more).
    return np.clip(arr, -1.0, 1.0, out=arr)


def check_max_episode_steps(value: Any) -> Optional[int]:
    """A positive int time limit, or None (no limit); ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"max_episode_steps must be a positive int or None, got {value!r}")
    return int(value)


def check_states(states: Any, n: int, obs_dim: int, name: str = "start_state") -> np.ndarray:
    """Validate user-given states: ``(obs_dim,)`` (broadcast to ``n``) or ``(n, obs_dim)``, finite.

    Returns:
        ``(n, obs_dim)`` float64 copy.
    """
    arr = np.asarray(states, dtype=np.float64)
    if arr.shape == (obs_dim,):
        arr = np.broadcast_to(arr, (n, obs_dim))
    if arr.shape != (n, obs_dim):
        raise ValueError(f"{name} must have shape ({obs_dim},) or ({n}, {obs_dim}), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr.copy()


@dataclass(frozen=True)
class PessimismSettings:
    """The resolved pessimism of an env: what is penalised, by how much, and when it halts.

    Attributes:
        signal: the uncertainty signal (``action_gap`` / ``disagreement``).
        penalty_coef: ``lambda`` (reward units per unit of ``u``).
        halt_threshold: halt when ``u`` exceeds it; None = never halt.
        halt_penalty: subtracted from a halting step's reward.
    """

    signal: str
    penalty_coef: float
    halt_threshold: Optional[float]
    halt_penalty: float

    @classmethod
    def resolve(cls, config: "DreamConfig", calibration: Optional[PessimismCalibration],
                bundle_path: str) -> Optional["PessimismSettings"]:
        """The config's explicit values, else the calibration's; None when ``config.pessimism`` is off.

        Raises:
            ValueError: a value is needed from a bundle without calibration (the message gives the fixes).
        """
        if not config.pessimism:
            return None
        need_halt = config.halt and config.halt_threshold is None
        cal = None
        if config.penalty_coef is None or need_halt:
            if calibration is None:
                raise ValueError(
                    f"bundle {bundle_path} has no pessimism calibration (pessimism.json); run `dawm bundle calibrate "
                    f"{bundle_path} --dataset ID`, or pass penalty_coef=... and halt_threshold=... (or halt=False), "
                    f"or pessimism=False for the raw dream")
            cal = calibration.signal(config.uncertainty)
        coef = config.penalty_coef if config.penalty_coef is not None else cal.penalty_coef
        threshold = None
        if config.halt:
            threshold = config.halt_threshold if config.halt_threshold is not None else cal.halt_threshold
        return cls(signal=config.uncertainty, penalty_coef=float(coef),
                   halt_threshold=None if threshold is None else float(threshold),
                   halt_penalty=float(config.halt_penalty))

    def apply(self, rewards: np.ndarray, u: np.ndarray, terminated: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(rewards - penalty, terminated | halted, halted, penalty)`` for ``(B,)`` rewards, ``u`` and flags.

        ``penalty = penalty_coef * u`` plus ``halt_penalty`` where the step halts (``u > halt_threshold``).
        """
        halted = (u > self.halt_threshold) if self.halt_threshold is not None else np.zeros(len(u), dtype=bool)
        penalty = self.penalty_coef * u + self.halt_penalty * halted
        return rewards - penalty, terminated | halted, halted, penalty


@dataclass(frozen=True)
class DreamStep:
    """One batched dream step.

    Attributes:
        next_states: ``(B, obs_dim)`` float64 ``s_{t+1}``.
        rewards: ``(B,)`` float64, the reward the agent gets (penalised when pessimism is on).
        terminated: ``(B,)`` bool: the task's termination function on ``s_{t+1}``, or a halt.
        info: ``{key: (B,) array}`` per-step info (:meth:`DreamDynamics.info_keys`).
    """

    next_states: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    info: dict[str, np.ndarray]


class DreamDynamics:
    """Batched one-step dream transitions: the shared core of the single, vector and SB3 envs.

    Args:
        config: the env configuration.

    Attributes:
        task: the task spec.
        bundle: the loaded :class:`~dawm_env.world_model.bundle.Bundle`.
        start_pool: ``(M, obs_dim)`` float64 start states.
        rtg_target: the scaled return-to-go used as condition.
        pessimism: the resolved :class:`PessimismSettings` (None for the raw dream).
    """

    def __init__(self, config: DreamConfig) -> None:
        self.config = config
        self.task: TaskSpec = get_task(config.task)
        self.bundle = load_bundle_for(config)
        self.device = torch.device(config.device)
        wm = self.bundle.world_model
        if config.sampling_steps is not None and config.sampling_steps > wm.n_diffusion_steps:
            raise ValueError(f"sampling_steps={config.sampling_steps} exceeds the bundle's "
                             f"{wm.n_diffusion_steps} diffusion steps; use 1..{wm.n_diffusion_steps}")
        if config.sampling_timesteps is not None:
            try:
                check_timesteps(config.sampling_timesteps, wm.n_diffusion_steps)
            except ValueError:
                raise ValueError(f"sampling_timesteps={config.sampling_timesteps}: the bundle has "
                                 f"{wm.n_diffusion_steps} diffusion steps, use indices "
                                 f"0..{wm.n_diffusion_steps - 1}") from None
        self.rtg_target = float(config.rtg_target if config.rtg_target is not None else max(self.task.gen_rtg_range))
        self.pessimism = PessimismSettings.resolve(config, self.bundle.pessimism, str(self.bundle.path))
        signals = {self.pessimism.signal} if self.pessimism is not None else set()
        if config.idm_info:
            signals.add("action_gap")
        self._signals = tuple(n for n in SIGNALS if n in signals)
        self.start_pool = self._load_start_pool()
        self._gen = torch.Generator(device=self.device)

    def info_keys(self) -> dict[str, Any]:
        """The per-step info keys and their value on reset (the same keys on reset and step)."""
        keys: dict[str, Any] = {}
        if self.config.idm_info:
            keys["idm_action_error"] = 0.0
        if self.pessimism is not None:
            keys.update({"uncertainty": 0.0, "penalty": 0.0, "halted": False, "raw_reward": 0.0})
        return keys

    def _load_start_pool(self) -> np.ndarray:
        cfg = self.config
        if cfg.start_states == "seeds":
            pool = np.asarray(self.bundle.seed_states, dtype=np.float64)
        else:

            data = load_dataset(cfg.start_states, task=self.task.name)
            if data.obs_dim != self.task.obs_dim:
                raise ValueError(f"start_states dataset {cfg.start_states!r} has obs_dim {data.obs_dim}, "
                                 f"{self.task.name} needs {self.task.obs_dim}")
            obs = data.observations if cfg.start_mode == "any" else data.observations[data.episode_offsets[:-1]]
            pool = np.asarray(obs, dtype=np.float64)
        pool = pool[np.isfinite(pool).all(1) & ~np.asarray(self.task.is_terminal(pool), dtype=bool)]
        if len(pool) == 0:
            raise ValueError(f"no usable (finite, non-terminal) start states in {cfg.start_states!r}")
        return pool

    def draw_starts(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` start states from the pool: ``(states (n, obs_dim) float64, pool indices (n,) int64)``."""
        idx = rng.integers(len(self.start_pool), size=n)
        return self.start_pool[idx].copy(), idx.astype(np.int64)

    @torch.no_grad()
    def step(self, states: np.ndarray, actions: np.ndarray, rng: np.random.Generator,
             prev_states: Optional[np.ndarray] = None) -> DreamStep:
        """One world-model call for the whole batch.

        Args:
            states: ``(B, obs_dim)`` raw ``s_t``.
            actions: ``(B, act_dim)`` checked actions in ``[-1, 1]``.
            rng: the env's generator; one integer is drawn to seed the sampler.
            prev_states: ``(B, obs_dim)`` raw ``s_{t-1}`` (NaN rows = episode start); the action gap of a row
                without it is 0.
        """
        cfg = self.config
        self._gen.manual_seed(int(rng.integers(0, 2**63 - 1)))
        if prev_states is None:
            prev_states = np.full_like(states, np.nan)
        # the window's row 1 state is s_{t+1} and row 0 reward is r_t; the rest is discarded (module docstring)
        tr = dream_transition(self.bundle, states, actions, self.rtg_target, self._gen, self._signals,
                              prev_states=prev_states, guidance=cfg.guidance_weight,
                              sampling_steps=cfg.sampling_steps, temperature=cfg.temperature,
                              timesteps=cfg.sampling_timesteps, bf16=cfg.bf16)
        info: dict[str, np.ndarray] = {}
        if cfg.idm_info:
            info["idm_action_error"] = tr.signals["action_gap"]
        rewards, terminated = tr.rewards, tr.terminal
        if self.pessimism is not None:
            u = tr.signals[self.pessimism.signal]
            rewards, terminated, halted, penalty = self.pessimism.apply(tr.rewards, u, tr.terminal)
            info.update({"uncertainty": u, "penalty": penalty, "halted": halted, "raw_reward": tr.rewards})
        return DreamStep(next_states=tr.next_states, rewards=rewards, terminated=terminated, info=info)


def observation_space(task: TaskSpec) -> spaces.Box:
    """The real ``-v5`` env's observation space: ``Box(-inf, inf, (obs_dim,), float64)``."""
    return spaces.Box(-np.inf, np.inf, (task.obs_dim,), np.float64)


def action_space(task: TaskSpec) -> spaces.Box:
    """The real env's action space: ``Box(-1, 1, (act_dim,), float32)``."""
    return spaces.Box(-1.0, 1.0, (task.act_dim,), np.float32)


class DreamEnv(gym.Env[np.ndarray, np.ndarray]):
    """A single dream environment (``DAWM-Hopper-v0`` etc.): the world model as the simulator.

    Keyword arguments are the fields of :class:`DreamConfig` plus ``render_mode`` (None or
    ``"rgb_array"``), ``width`` / ``height`` of rendered frames and ``max_episode_steps``. Through
    ``gymnasium.make`` the time limit is Gymnasium's ``TimeLimit`` wrapper (1000 steps by default,
    ``make(..., max_episode_steps=N)`` to change it; ``make`` consumes that argument); an env built
    directly truncates itself after ``max_episode_steps`` steps when given (None = no limit).

    Spaces:
        observation: ``(obs_dim,)`` float64; action: ``(act_dim,)`` float32 in ``[-1, 1]``.

    Info (same keys on reset and step):
        ``rtg_target`` (float): the condition g; ``start_index`` (int): row of the start-state pool the
        episode began from (-1 for ``options["start_state"]``); ``idm_action_error`` (float, only with
        ``idm_info=True``; 0.0 on reset); with pessimism (the default) ``uncertainty`` (``u``), ``penalty``
        (what was subtracted from the reward), ``halted`` (bool: the episode ended on ``u > halt_threshold``)
        and ``raw_reward`` (the dream's reward before the penalty); 0 / False on reset.

    Reset options:
        ``{"start_state": obs}``: start from this ``(obs_dim,)`` state instead of drawing one.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 125}

    def __init__(self, render_mode: Optional[str] = None, width: int = 480, height: int = 480,
                 max_episode_steps: Optional[int] = None, **config: Any) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.max_episode_steps = check_max_episode_steps(max_episode_steps)
        self.config = DreamConfig.from_kwargs(config, ("render_mode", "width", "height", "max_episode_steps"))
        self.render_mode = render_mode
        self.width, self.height = int(width), int(height)
        self.dynamics = DreamDynamics(self.config)
        self.task = self.dynamics.task
        self.observation_space = observation_space(self.task)
        self.action_space = action_space(self.task)

        self.metadata = {**self.metadata, "render_fps": render_fps(self.task.name)}
        self._state: Optional[np.ndarray] = None  # (obs_dim,) float64
        self._prev: Optional[np.ndarray] = None  # s_{t-1} for the IDM (NaN at episode start)
        self._start_index = -1
        self._x = 0.0  # integrated x position, only for rendering (the observation excludes it)
        self._elapsed = 0
        self._renderer: Any = None

    def _info(self, step: Optional[dict[str, np.ndarray]] = None) -> dict[str, Any]:
        info: dict[str, Any] = {"rtg_target": self.dynamics.rtg_target, "start_index": int(self._start_index)}
        for key, reset_value in self.dynamics.info_keys().items():
            info[key] = reset_value if step is None else type(reset_value)(step[key][0])
        return info

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode: ``(obs (obs_dim,) float64, info)``."""
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"start_state"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; supported: ['start_state']")
        if options.get("start_state") is not None:
            self._state = check_states(options["start_state"], 1, self.task.obs_dim)[0]
            self._start_index = -1
        else:
            states, idx = self.dynamics.draw_starts(self.np_random, 1)
            self._state, self._start_index = states[0], int(idx[0])
        self._prev = np.full(self.task.obs_dim, np.nan)
        self._x = 0.0
        self._elapsed = 0
        return self._state.copy(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Dream one step: ``(next_obs (obs_dim,) float64, reward float, terminated bool, truncated bool, info)``."""
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        act = check_actions(action, self.action_space.shape)
        out = self.dynamics.step(self._state[None], act[None], self.np_random, self._prev[None])
        nxt = out.next_states
        if self.render_mode is not None:  # x is not observed; integrate it only for the picture

            self._x = advance_x(self.task.name, self._x, self._state, nxt[0])
        self._prev, self._state = self._state, nxt[0]
        self._elapsed += 1
        truncated = self.max_episode_steps is not None and self._elapsed >= self.max_episode_steps
        return (self._state.copy(), float(out.rewards[0]), bool(out.terminated[0]), bool(truncated),
                self._info(out.info))

    def render(self) -> Optional[np.ndarray]:
        """``(height, width, 3)`` uint8 frame of the current dream state drawn by the real MuJoCo model."""
        if self.render_mode is None:
            gym.logger.warn("render() called without render_mode; pass render_mode='rgb_array' to make()")
            return None
        if self._state is None:
            raise RuntimeError("call reset() before render()")
        if self._renderer is None:

            self._renderer = StateRenderer(self.task.name, self.width, self.height)
        return self._renderer.render(self._state, self._x)

    def close(self) -> None:
        """Free the renderer (the bundle stays cached for other envs)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()

