"""Batched DAWM rollouts: world-model futures + IDM actions -> complete ``(s, a, r, s')`` transitions.

One rollout starts from a real pair ``(s_t, a_t)`` (paper Algorithm 1, Sec. 4):

1. the diffusion world model samples the window ``s_t .. s_{t+H_m}`` and ``r_t .. r_{t+H_m}``
   conditioned on ``(s_t, a_t)`` and a return-to-go target ``g`` (classifier-free guidance ``w``,
   ``N`` strided reverse steps); ``H_m`` is the model's own horizon (7 for the paper's window of 8);
2. step ``h = 0`` keeps the real ``a_t``; every step ``h >= 1`` gets the IDM's action
   ``a_{t+h} = f(s_{t+h-1}, s_{t+h}, s_{t+h+1})`` from the *generated* states (deterministic
   ``tanh(mean)`` by default), and its predicted std is kept as a per-transition uncertainty
   (the ``action_source`` ablations replace the IDM by uniform random actions or by ``a_t`` repeated);
3. the rollout keeps the first ``H <= H_m`` transitions ``(s_{t+h}, a_{t+h}, r_{t+h}, s_{t+h+1})``
   (``H = 1, 3`` use the same window, truncated), and ends early at the first generated next state on
   which the task's termination function fires (``terminated``); otherwise it is ``truncated`` at ``H``.

Everything is batched: one world-model call (conditional and unconditional passes together) and one
IDM call per ``batch_size`` rollouts. :class:`TransitionStream` is the on-the-fly API: an endless
iterator of fresh transition batches for agents that train on newly generated data every iteration.

Defaults (the paper is silent; documented here): the return-to-go target is the task's largest DWM
generation target, ``max(task.gen_rtg_range)`` (hopper / walker2d 0.8, halfcheetah 0.6, in units of
the task's return-to-go scale); guidance, sampling steps and temperature are the bundle's own.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Iterator, Optional

import numpy as np
import torch

from dawm_env.data.records import OfflineDataset
from dawm_env.tasks import TaskSpec, get_task
from dawm_env.world_model.bundle import Bundle

#: Where the actions of steps ``h >= 1`` come from (:attr:`RolloutConfig.action_source`).
ACTION_SOURCES: tuple[str, ...] = ("idm", "random", "repeat")

#: Names of the per-step infos stored with every generated transition. The step ``h`` within the
#: rollout is not stored: it is the row's position in its episode (every HDF5 dataset per episode adds
#: to the write cost, which dominates generation on a CPU).
INFO_KEYS: tuple[str, ...] = ("seed_index", "repeat", "idm_std")


def check_rtg(rtg: Optional[float], flag: str = "--rtg") -> None:
    """Refuse a return-to-go target that is not a finite number (None, the task's default, passes).

    A NaN or infinite target turns every generated value into NaN; without this check the failure surfaces
    after generation, blamed on the bundle.

    Raises:
        ValueError: naming ``flag`` and what a target looks like.
    """
    if rtg is None:
        return
    if isinstance(rtg, bool) or not isinstance(rtg, numbers.Real) or not math.isfinite(rtg):
        raise ValueError(f"{flag} must be a finite number (a return-to-go target in the task's scaled units, "
                         f"e.g. 0.8; omit it for the task's default), got {rtg!r}")


@dataclass(frozen=True)
class RolloutConfig:
    """How rollouts are generated (all ``None`` fields take the bundle's / task's default).

    Attributes:
        horizon: H, transitions per rollout (``1 <= H <= `` the model's horizon).
        rtg: return-to-go target ``g`` in the task's scaled units; None = ``max(task.gen_rtg_range)``.
        guidance: classifier-free guidance weight ``w``; None = the bundle's.
        sampling_steps: N strided reverse steps; None = the bundle's.
        temperature: sampling temperature; None = the bundle's.
        stochastic_idm: sample IDM actions ``tanh(mean + std * eps)`` instead of ``tanh(mean)``.
        batch_size: rollouts per model call (the world model runs on ``2 * batch_size`` rows with guidance).
        action_source: actions of steps ``h >= 1`` (step 0 always keeps the real ``a_t``): ``"idm"`` (DAWM),
            or, for the IDM ablation, ``"random"`` (uniform in ``[-1, 1]^act_dim`` from the run's torch RNG)
            or ``"repeat"`` (the conditioning ``a_t`` at every step). Without the IDM the stored ``idm_std``
            is 0.
        action_noise: std ``sigma`` of Gaussian noise added to the seed action before it conditions the world
            model, clipped to ``[-1, 1]``: step 0 then stores ``(s_t, clip(a_t + sigma * eps), r_hat, s_hat')``,
            the model's outcome of an action near the data's, not the real transition (0 = the real ``a_t``).
            The world model follows such actions closely at one step (``benchmarks/action_response.py``), so
            these transitions show the critic what deviating from the behaviour action does.
    """

    horizon: int = 7
    rtg: Optional[float] = None
    guidance: Optional[float] = None
    sampling_steps: Optional[int] = None
    temperature: Optional[float] = None
    stochastic_idm: bool = False
    batch_size: int = 4096
    action_source: str = "idm"
    action_noise: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.action_noise, numbers.Real) and math.isfinite(self.action_noise)
                and self.action_noise >= 0):
            raise ValueError(f"--action-noise must be a finite number >= 0 (the std of the noise added to the seed "
                             f"action, e.g. 0.3; 0 = the real action), got {self.action_noise!r}")
        if self.action_source not in ACTION_SOURCES:
            raise ValueError(f"unknown action_source {self.action_source!r}; choose one of {', '.join(ACTION_SOURCES)}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.sampling_steps is not None and self.sampling_steps < 1:
            raise ValueError(f"sampling_steps must be >= 1, got {self.sampling_steps}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        check_rtg(self.rtg)
        for name in ("guidance", "temperature"):  # NaN passes the comparisons above and poisons every sample
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"--{name} must be a finite number (omit it for the bundle's), got {value!r}")

    def resolve(self, bundle: Bundle) -> "RolloutConfig":
        """A copy with every ``None`` replaced by the bundle's / task's value, checked against the model.

        Raises:
            ValueError: horizon longer than the world model's, or sampling steps above its K.
        """
        wm = bundle.world_model
        model_h = wm.horizon - 1
        if self.horizon > model_h:
            raise ValueError(f"horizon {self.horizon} exceeds the world model's horizon {model_h} "
                             f"(bundle {bundle.path}); use --horizon <= {model_h}")
        steps = wm.n_sampling_steps if self.sampling_steps is None else int(self.sampling_steps)
        if steps > wm.n_diffusion_steps:
            raise ValueError(f"sampling_steps {steps} exceeds the model's K = {wm.n_diffusion_steps}")
        return replace(
            self,
            rtg=float(max(bundle.task.gen_rtg_range) if self.rtg is None else self.rtg),
            guidance=float(wm.guidance_weight if self.guidance is None else self.guidance),
            sampling_steps=steps,
            temperature=float(wm.temperature if self.temperature is None else self.temperature),
        )

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return {"horizon": self.horizon, "rtg": self.rtg, "guidance": self.guidance,
                "sampling_steps": self.sampling_steps, "temperature": self.temperature,
                "stochastic_idm": self.stochastic_idm, "batch_size": self.batch_size,
                "action_source": self.action_source,
                # only when set: the provenance of data generated without it stays as it was
                **({"action_noise": self.action_noise} if self.action_noise else {})}


@dataclass(frozen=True)
class GeneratedTransitions:
    """Flat generated transitions, ready for a replay buffer (``N`` transitions).

    Attributes:
        observations: ``(N, obs_dim)`` float32 ``s``.
        actions: ``(N, act_dim)`` float32 ``a`` (real at ``step == 0``, then from the action source: the IDM
            by default).
        rewards: ``(N,)`` float32 ``r``.
        next_observations: ``(N, obs_dim)`` float32 ``s'``.
        terminations: ``(N,)`` bool: ``s'`` is terminal (do not bootstrap).
        truncations: ``(N,)`` bool: last transition of a rollout cut at the horizon (bootstrap).
        idm_std: ``(N, act_dim)`` float32 IDM pre-tanh std (0 for the real action at ``step == 0`` and for
            actions that did not come from the IDM).
        seed_index: ``(N,)`` int64 index of the seed pair the rollout started from.
        step: ``(N,)`` int32 position ``h`` of the transition in its rollout.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    idm_std: np.ndarray
    seed_index: np.ndarray
    step: np.ndarray

    def __len__(self) -> int:
        return len(self.rewards)

    def as_dict(self) -> dict[str, np.ndarray]:
        """``{field: array}`` (e.g. to feed ``torch.from_numpy`` or a replay buffer's ``add``)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class RolloutBatch:
    """``B`` generated rollouts of up to ``H`` transitions, in fixed-size arrays.

    Rows past a rollout's ``length`` (after an early termination) are generated values that are not
    part of the rollout; :meth:`transitions` and :meth:`to_dataset` drop them.

    Attributes:
        states: ``(B, H + 1, obs_dim)`` float32 raw ``s_t .. s_{t+H}`` (row 0 is the real ``s_t``).
        actions: ``(B, H, act_dim)`` float32 (row 0 is the real ``a_t``; rows ``h >= 1`` from the action source).
        rewards: ``(B, H)`` float32 raw ``r_t .. r_{t+H-1}``.
        idm_std: ``(B, H, act_dim)`` float32 IDM std (row 0 = 0: the real action is known; 0 everywhere when the
            actions do not come from the IDM).
        lengths: ``(B,)`` int64 transitions kept per rollout (``1..H``).
        terminated: ``(B,)`` bool: ended by the termination function (else truncated at ``H``).
        seed_index: ``(B,)`` int64 index of each rollout's seed pair.
        repeat: ``(B,)`` int32 repeat number of the rollout for its seed pair.
    """

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    idm_std: np.ndarray
    lengths: np.ndarray
    terminated: np.ndarray
    seed_index: np.ndarray
    repeat: np.ndarray

    @property
    def num_rollouts(self) -> int:
        """B."""
        return len(self.lengths)

    @property
    def num_transitions(self) -> int:
        """Total kept transitions (sum of lengths)."""
        return int(self.lengths.sum())

    def _mask(self) -> np.ndarray:
        h = self.actions.shape[1]
        return np.arange(h)[None, :] < self.lengths[:, None]  # (B, H), row-major = rollout order

    def transitions(self) -> GeneratedTransitions:
        """Flatten to ``N = num_transitions`` transitions, rollout by rollout, in step order."""
        m = self._mask()
        b, h = m.shape
        last = np.zeros((b, h), dtype=bool)
        last[np.arange(b), self.lengths - 1] = True
        step = np.broadcast_to(np.arange(h, dtype=np.int32)[None], (b, h))
        return GeneratedTransitions(
            observations=self.states[:, :-1][m], actions=self.actions[m], rewards=self.rewards[m],
            next_observations=self.states[:, 1:][m],
            terminations=(last & self.terminated[:, None])[m], truncations=(last & ~self.terminated[:, None])[m],
            idm_std=self.idm_std[m], seed_index=np.broadcast_to(self.seed_index[:, None], (b, h))[m],
            step=step[m],
        )

    def to_dataset(self, task: TaskSpec, source: str = "") -> tuple[OfflineDataset, dict[str, np.ndarray]]:
        """One episode per rollout, plus per-transition infos ``{seed_index, repeat, idm_std}`` (``(N, ...)``).

        Raises:
            ValueError: from :class:`OfflineDataset` validation (non-finite values, misplaced flags).
        """
        tr = self.transitions()
        offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        data = OfflineDataset(
            task=task.name, observations=tr.observations, actions=tr.actions, rewards=tr.rewards,
            next_observations=tr.next_observations, terminations=tr.terminations, truncations=tr.truncations,
            episode_offsets=offsets, seeds=np.full(self.num_rollouts, -1, dtype=np.int64), source=source,
        )
        infos = {"seed_index": tr.seed_index.astype(np.int64),
                 "repeat": np.repeat(self.repeat.astype(np.int32), self.lengths),
                 "idm_std": tr.idm_std.astype(np.float32)}
        return data, infos


def concat_rollouts(parts: list[RolloutBatch]) -> RolloutBatch:
    """Join rollout batches of one horizon along the rollout axis."""
    if len(parts) == 1:
        return parts[0]
    return RolloutBatch(**{f: np.concatenate([getattr(p, f) for p in parts])
                           for f in RolloutBatch.__dataclass_fields__})


def validate_episodes(data: OfflineDataset, task: TaskSpec, max_length: int) -> None:
    """Shape and bound checks every generated episode must pass before it is written.

    :class:`OfflineDataset` itself already checks finiteness, row counts and that flags sit only on an
    episode's last step; this adds the task's dimensions, the action space bounds ``[-1, 1]``, episode
    lengths ``1..max_length`` and exactly one flag (terminated xor truncated) per episode.

    Raises:
        ValueError: naming the first failed check.
    """
    if data.obs_dim != task.obs_dim or data.act_dim != task.act_dim:
        raise ValueError(f"generated episodes have obs/act dims {data.obs_dim}/{data.act_dim}; "
                         f"{task.name} needs {task.obs_dim}/{task.act_dim}")
    if np.abs(data.actions).max() > 1.0:
        raise ValueError(f"generated actions leave the action space [-1, 1] (max |a| = {np.abs(data.actions).max()})")
    lengths = data.episode_lengths
    if lengths.min() < 1 or lengths.max() > max_length:
        raise ValueError(f"generated episode lengths must lie in [1, {max_length}], got [{lengths.min()}, {lengths.max()}]")
    last = data.episode_offsets[1:] - 1
    if not np.all(data.terminations[last] ^ data.truncations[last]):
        raise ValueError("every generated episode must end terminated or truncated (exactly one)")


class RolloutGenerator:
    """Generates :class:`RolloutBatch` es from seed pairs with a loaded bundle.

    Args:
        bundle: a :class:`~dawm_env.world_model.bundle.Bundle` (models in eval mode, on their device).
        config: rollout settings (resolved against the bundle here).

    Raises:
        ValueError: horizon / sampling steps the bundle cannot do.
    """

    def __init__(self, bundle: Bundle, config: RolloutConfig = RolloutConfig()) -> None:
        self.bundle = bundle
        self.task: TaskSpec = bundle.task
        self.config = config.resolve(bundle)
        self.device = next(bundle.world_model.parameters()).device

    def new_generator(self, seed: int) -> torch.Generator:
        """A torch RNG on the models' device, seeded with ``seed``."""
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def rollouts_from(self, states: np.ndarray, actions: np.ndarray, n: int, rng: np.random.Generator) -> RolloutBatch:
        """On-the-fly generation: ``n`` rollouts from seed pairs drawn uniformly (with replacement) by ``rng``.

        The model noise is seeded from ``rng`` too, so the result is a pure function of ``rng``'s state.

        Args:
            states: ``(M, obs_dim)`` raw seed states; actions: ``(M, act_dim)`` their real actions.
            n: rollouts to generate.
            rng: draws the seed-pair indices, then the torch seed.
        """
        idx = rng.integers(0, len(states), size=int(n))
        generator = self.new_generator(int(rng.integers(0, 2**63 - 1)))
        return self.generate(states[idx], actions[idx], generator, seed_index=idx)

    @torch.inference_mode()
    def generate(self, states: np.ndarray, actions: np.ndarray, generator: torch.Generator,
                 seed_index: Optional[np.ndarray] = None, repeat: Optional[np.ndarray] = None) -> RolloutBatch:
        """Roll out from every seed pair, ``config.batch_size`` rollouts per model call.

        Args:
            states: ``(B, obs_dim)`` raw ``s_t``.
            actions: ``(B, act_dim)`` raw ``a_t`` in ``[-1, 1]``.
            generator: torch RNG on the models' device (all sampling noise comes from it).
            seed_index: ``(B,)`` recorded seed-pair index per rollout (default ``arange(B)``).
            repeat: ``(B,)`` recorded repeat number per rollout (default 0).

        Returns:
            The rollouts, in input order.
        """
        states = np.asarray(states, dtype=np.float32)
        actions = np.asarray(actions, dtype=np.float32)
        b = len(states)
        if states.shape != (b, self.task.obs_dim) or actions.shape != (b, self.task.act_dim):
            raise ValueError(f"need states (B, {self.task.obs_dim}) and actions (B, {self.task.act_dim}), got "
                             f"{states.shape} and {actions.shape}")
        if b == 0:
            raise ValueError("no seed pairs to roll out from")
        seed_index = np.arange(b, dtype=np.int64) if seed_index is None else np.asarray(seed_index, np.int64)
        repeat = np.zeros(b, dtype=np.int32) if repeat is None else np.asarray(repeat, np.int32)
        parts = []
        bs = self.config.batch_size
        for i in range(0, b, bs):
            parts.append(self._generate_batch(states[i:i + bs], actions[i:i + bs], generator,
                                              seed_index[i:i + bs], repeat[i:i + bs]))
        return concat_rollouts(parts)

    def _generate_batch(self, states: np.ndarray, actions: np.ndarray, generator: torch.Generator,
                        seed_index: np.ndarray, repeat: np.ndarray) -> RolloutBatch:
        cfg, task, dev = self.config, self.task, self.device
        H, o, a = cfg.horizon, task.obs_dim, task.act_dim
        b = len(states)
        if cfg.action_noise:  # drawn before the model's noise: data without it keeps its exact random stream
            eps = torch.randn(b, a, device=dev, generator=generator).cpu().numpy()
            actions = np.clip(actions + np.float32(cfg.action_noise) * eps, -1.0, 1.0).astype(np.float32)
        window = self.bundle.sample_window(states, actions, cfg.rtg, H + 1, generator, guidance=cfg.guidance,
                                           sampling_steps=cfg.sampling_steps, temperature=cfg.temperature)
        s_norm = window.states_norm  # (B, H+1, obs): normalised s_t .. s_{t+H}; row 0 in-painted exactly
        a0 = torch.from_numpy(actions).to(dev)
        act = torch.empty(b, H, a, device=dev)
        std = torch.zeros(b, H, a, device=dev)
        act[:, 0] = a0
        if H > 1 and cfg.action_source == "idm":
            # one IDM call for all h = 1..H-1: (s_{t+h-1}, s_{t+h}, s_{t+h+1}) from the generated window
            prev = s_norm[:, : H - 1].reshape(-1, o)
            cur = s_norm[:, 1:H].reshape(-1, o)
            nxt = s_norm[:, 2: H + 1].reshape(-1, o)
            ia, istd = self.bundle.idm.act(prev, cur, nxt, deterministic=not cfg.stochastic_idm, generator=generator)
            act[:, 1:] = ia.reshape(b, H - 1, a)
            std[:, 1:] = istd.reshape(b, H - 1, a)
        elif H > 1 and cfg.action_source == "random":
            act[:, 1:] = torch.rand(b, H - 1, a, device=dev, generator=generator) * 2.0 - 1.0
        elif H > 1:  # "repeat": the conditioning action at every step
            act[:, 1:] = a0[:, None]
        term = window.terminal  # (B, H): is s_{t+h+1} terminal?
        terminated = term.any(1)
        lengths = np.where(terminated, term.argmax(1) + 1, H).astype(np.int64)
        return RolloutBatch(
            states=window.states, actions=act.cpu().numpy(), rewards=window.rewards[:, :H],
            idm_std=std.cpu().numpy(), lengths=lengths, terminated=terminated, seed_index=seed_index, repeat=repeat,
        )


@dataclass
class TransitionStream:
    """Endless stream of freshly generated transitions (paper Algorithm 1: new rollouts every iteration).

    Every ``next()`` samples ``rollouts_per_batch`` seed pairs uniformly (with replacement), rolls them
    out and returns the flattened :class:`GeneratedTransitions` (up to ``rollouts_per_batch * H``
    transitions; fewer when rollouts terminate early). Nothing is stored (for agents,
    :class:`dawm_env.agents.sources.OnlineGeneratedSource` keeps a refreshed pool of them)::

        stream = TransitionStream(Bundle.load("hopper-medium"), seed_data, rollouts_per_batch=256)
        for it, batch in zip(range(n_iters), stream):
            agent.update(batch.observations, batch.actions, batch.rewards, batch.next_observations,
                         batch.terminations)

    Attributes:
        bundle: loaded bundle.
        seed_data: real dataset whose ``(s_t, a_t)`` start rollouts; None = the bundle's stored seed pairs.
        config: rollout settings.
        rollouts_per_batch: rollouts generated per ``next()``.
        seed: RNG seed (seed-pair choice and model noise): the stream is reproducible.
    """

    bundle: Bundle
    seed_data: Optional[OfflineDataset] = None
    config: RolloutConfig = RolloutConfig()
    rollouts_per_batch: int = 1024
    seed: int = 0
    _gen: RolloutGenerator = field(init=False, repr=False)
    _rng: np.random.Generator = field(init=False, repr=False)
    _states: np.ndarray = field(init=False, repr=False)
    _actions: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.rollouts_per_batch < 1:
            raise ValueError(f"rollouts_per_batch must be >= 1, got {self.rollouts_per_batch}")
        if self.seed_data is not None:
            check_task_match(self.bundle, self.seed_data)
            self._states, self._actions = self.seed_data.observations, self.seed_data.actions
        else:
            self._states, self._actions = self.bundle.seed_states, self.bundle.seed_actions
        self._gen = RolloutGenerator(self.bundle, self.config)
        self._rng = np.random.default_rng(self.seed)

    @property
    def num_seed_pairs(self) -> int:
        """How many seed pairs rollouts start from."""
        return len(self._states)

    def sample_rollouts(self, n: Optional[int] = None) -> RolloutBatch:
        """``n`` (default ``rollouts_per_batch``) fresh rollouts from uniformly drawn seed pairs."""
        n = self.rollouts_per_batch if n is None else int(n)
        return self._gen.rollouts_from(self._states, self._actions, n, self._rng)

    def sample(self, n: Optional[int] = None) -> GeneratedTransitions:
        """Transitions of ``n`` (default ``rollouts_per_batch``) fresh rollouts."""
        return self.sample_rollouts(n).transitions()

    def __iter__(self) -> Iterator[GeneratedTransitions]:
        return self

    def __next__(self) -> GeneratedTransitions:
        return self.sample()


def check_task_match(bundle: Bundle, data: OfflineDataset) -> None:
    """Raise ValueError unless ``data`` is data of the bundle's task (name when known, and dimensions)."""

    if data.task and get_task(data.task).name != bundle.task.name:
        raise ValueError(f"task mismatch: bundle {bundle.path} is for {bundle.task.name}, but seed data "
                         f"{data.source!r} is {get_task(data.task).name}")
    if data.obs_dim != bundle.task.obs_dim or data.act_dim != bundle.task.act_dim:
        raise ValueError(f"seed data {data.source!r} has obs/act dims {data.obs_dim}/{data.act_dim}; the bundle's "
                         f"task {bundle.task.name} needs {bundle.task.obs_dim}/{bundle.task.act_dim}")
