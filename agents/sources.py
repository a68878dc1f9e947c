"""Where an agent's transitions come from: the :class:`TransitionSource` protocol and its implementations.

An agent only ever calls ``source.sample(batch_size, rng)``. dawm ships

- :class:`DatasetSource`: uniform sampling from an :class:`~dawm_env.data.records.OfflineDataset` (a real
  dataset, or a synthetic DAWM Minari dataset: both load with ``load_dataset``);
- :class:`MixSource`: a fixed fraction of every batch from one source, the rest from another;
- :func:`ssorl_relabel`: the SSORL baseline's data (IDM-inferred actions on a fraction of the episodes);
- :class:`RolloutSource`: DWM's value-expansion rows, one per generated rollout (:class:`ValueExpansion`);
- :class:`OnlineGeneratedSource`: transitions generated on the fly from a world-model bundle (the paper's
  Algorithm 1), from a pool that is partly regenerated every ``refresh_every`` samples;

and anything else with a ``sample`` method plugs in.

Bootstrapping: a batch carries ``terminations``, and optionally per-row ``discounts``. A truncated transition
(time limit, collection budget, the end of a generated rollout) still has a real next state whose value must
be bootstrapped, so truncations are deliberately not part of a batch. The TD target of a row is
``y = r + d * V(s')`` with ``d = gamma (1 - terminated)`` for one-step rows (``discounts`` is None) and
``d = gamma^n (1 - terminated)`` for DWM's n-step rows, whose ``r`` is then the discounted sum of n rewards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from typing import Optional, Protocol, runtime_checkable

import numpy as np
import torch

from dawm_env.data.normalization import STD_EPS, safe_std
from dawm_env.data.records import OfflineDataset
from dawm_env.data.windows import positions_in_episode
from dawm_env.generation.rollouts import RolloutGenerator, check_task_match
from dawm_env.world_model.bundle import Bundle
from dawm_env.world_model.data import idm_triples

log = logging.getLogger(__name__)


@dataclass
class TransitionBatch:
    """A batch of transitions; all tensors share the leading batch shape ``S`` (``(n,)`` or ``(K, B)``).

    Attributes:
        observations: ``(*S, obs_dim)`` float32, raw (not normalised).
        actions: ``(*S, act_dim)`` float32 in [-1, 1].
        rewards: ``(*S,)`` float32, raw (n-step rows: the raw discounted sum ``sum_{h<n} gamma^h r_h``).
        next_observations: ``(*S, obs_dim)`` float32, raw (n-step rows: ``s_n``).
        terminations: ``(*S,)`` float32, 1.0 where the episode really ended at ``s'`` (no bootstrap).
        discounts: ``(*S,)`` float32 factor of the bootstrap value, ``gamma^n (1 - terminated)``, or None for
            one-step rows (the agent then uses ``gamma (1 - terminated)``: one-step TD is the special case).
        bc_weights: ``(*S,)`` float32 weight of each row in the actor's cloning (TD3+BC's BC term, IQL's weighted
            regression; 1: clone its action, 0: train the critics on it but do not clone its action, e.g. an
            IDM-inferred one), or None: clone all.
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    terminations: torch.Tensor
    discounts: Optional[torch.Tensor] = None
    bc_weights: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.rewards.shape[0]

    def reshape(self, *shape: int) -> "TransitionBatch":
        """Same transitions with leading shape ``shape`` (e.g. ``(K * B,) -> (K, B)``)."""
        return TransitionBatch(
            observations=self.observations.reshape(*shape, self.observations.shape[-1]),
            actions=self.actions.reshape(*shape, self.actions.shape[-1]),
            rewards=self.rewards.reshape(*shape),
            next_observations=self.next_observations.reshape(*shape, self.next_observations.shape[-1]),
            terminations=self.terminations.reshape(*shape),
            discounts=None if self.discounts is None else self.discounts.reshape(*shape),
            bc_weights=None if self.bc_weights is None else self.bc_weights.reshape(*shape),
        )

    def to(self, device: torch.device | str) -> "TransitionBatch":
        """Copy to ``device``."""
        return TransitionBatch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                                  for f in fields(self)})


@runtime_checkable
class TransitionSource(Protocol):
    """Anything agents can train from.

    A source may also define ``obs_moments() -> ObsMoments`` (exact observation moments for normalisation;
    without it the trainer estimates them from 20,000 sampled transitions) and ``seek(calls: int)``: the
    trainer calls it (:func:`seek_source`) before its first step with the number of batches already drawn
    (the resumed step), for sources whose state evolves with every ``sample`` call
    (:class:`OnlineGeneratedSource`).

    Attributes:
        obs_dim: observation size.
        act_dim: action size.
    """

    obs_dim: int
    act_dim: int

    def sample(self, batch_size: int, rng: np.random.Generator) -> TransitionBatch:
        """``batch_size`` transitions drawn i.i.d. (leading shape ``(batch_size,)``).

        All randomness must come from ``rng`` (a fresh generator keyed by the training step), or from state
        that is a function of how many batches were drawn (see ``seek``), so that a resumed run draws
        exactly what the uninterrupted run drew. The trainer asks for ``K * B`` rows once per step and
        splits them into K per-seed batches of B consecutive rows.
        """
        ...


@dataclass(frozen=True)
class ObsMoments:
    """First and second moments of the observations a source yields (for normalisation).

    Attributes:
        mean: ``(obs_dim,)`` E[s].
        sq_mean: ``(obs_dim,)`` E[s^2].
    """

    mean: np.ndarray
    sq_mean: np.ndarray

    def std(self, eps: float = STD_EPS) -> np.ndarray:
        """The normalisation divisor: :func:`~dawm_env.data.normalization.safe_std` of the standard deviation."""
        return safe_std(np.sqrt(np.maximum(self.sq_mean - self.mean**2, 0.0)), eps)

    @staticmethod
    def of(obs: np.ndarray | torch.Tensor) -> "ObsMoments":
        """Exact moments (float64) of ``(N, obs_dim)`` observations."""
        obs = obs.double().cpu().numpy() if isinstance(obs, torch.Tensor) else np.asarray(obs, dtype=np.float64)
        return ObsMoments(obs.mean(0), (obs**2).mean(0))

    @staticmethod
    def mix(a: "ObsMoments", b: "ObsMoments", weight_a: float) -> "ObsMoments":
        """Moments of the mixture that draws from ``a`` with probability ``weight_a``."""
        w = float(weight_a)
        return ObsMoments(w * a.mean + (1 - w) * b.mean, w * a.sq_mean + (1 - w) * b.sq_mean)


class PackedRows:
    """Transition rows packed in one ``(N, C)`` tensor, so a batch is a single ``index_select``.

    Columns: ``obs | action | reward | next obs | terminated [| discount] [| bc weight]``.

    Args:
        tensor: ``(N, C)`` float32 packed rows (:meth:`from_arrays` builds it).
        obs_dim: observation size.
        act_dim: action size.
        has_discounts: whether a column holds n-step bootstrap factors.
        has_bc_weights: whether the last column holds behaviour-cloning weights.
    """

    def __init__(self, tensor: torch.Tensor, obs_dim: int, act_dim: int, has_discounts: bool,
                 has_bc_weights: bool = False) -> None:
        self.tensor, self.obs_dim, self.act_dim, self.has_discounts = tensor, obs_dim, act_dim, has_discounts
        self.has_bc_weights = has_bc_weights

    @classmethod
    def from_arrays(cls, observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                    next_observations: np.ndarray, terminations: np.ndarray, discounts: Optional[np.ndarray] = None,
                    device: torch.device | str = "cpu", bc_weights: Optional[np.ndarray] = None) -> "PackedRows":
        """Pack ``(N, obs_dim)``, ``(N, act_dim)``, ``(N,)``, ``(N, obs_dim)``, ``(N,)`` bool / float and optional
        ``(N,)`` discounts and behaviour-cloning weights onto ``device``."""
        cols = [observations, actions, np.asarray(rewards)[:, None], next_observations,
                np.asarray(terminations, dtype=np.float32)[:, None]]
        if discounts is not None:
            cols.append(np.asarray(discounts)[:, None])
        if bc_weights is not None:
            cols.append(np.asarray(bc_weights, dtype=np.float32)[:, None])
        tensor = torch.from_numpy(np.concatenate(cols, axis=1).astype(np.float32)).to(device)
        return cls(tensor, observations.shape[1], actions.shape[1], discounts is not None, bc_weights is not None)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def unpack(self, rows: torch.Tensor) -> TransitionBatch:
        """``(n, C)`` packed rows -> a :class:`TransitionBatch` of views."""
        o, a = self.obs_dim, self.act_dim
        return TransitionBatch(
            observations=rows.narrow(1, 0, o), actions=rows.narrow(1, o, a), rewards=rows[:, o + a],
            next_observations=rows.narrow(1, o + a + 1, o), terminations=rows[:, 2 * o + a + 1],
            discounts=rows[:, 2 * o + a + 2] if self.has_discounts else None,
            bc_weights=rows[:, -1] if self.has_bc_weights else None,
        )

    def sample(self, batch_size: int, rng: np.random.Generator) -> TransitionBatch:
        """``batch_size`` rows drawn uniformly with replacement (indices from ``rng``)."""
        idx = torch.from_numpy(rng.integers(0, len(self), size=batch_size)).to(self.tensor.device)
        return self.unpack(self.tensor.index_select(0, idx))


class DatasetSource:
    """Uniform i.i.d. sampling of transitions from an :class:`OfflineDataset`, on ``device``.

    Args:
        data: the transitions.
        device: where they live (packed in one tensor: :class:`PackedRows`).
        discount: when set, every row carries ``discounts = discount * (1 - terminated)``: the one-step rows
            that can be mixed with n-step rows (DWM with ``real_fraction``).
        rows: optional transition indices: sample only these (e.g. :func:`trust_mask`'s survivors).
        bc_weights: optional ``(N,)`` behaviour-cloning weight of every transition (:class:`TransitionBatch`).
    """

    def __init__(self, data: OfflineDataset, device: torch.device | str = "cpu",
                 discount: Optional[float] = None, rows: Optional[np.ndarray] = None,
                 bc_weights: Optional[np.ndarray] = None) -> None:
        self.data = data
        self.obs_dim, self.act_dim = data.obs_dim, data.act_dim
        self.device = torch.device(device)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        pick = (lambda a: a) if self.rows is None else (lambda a: a[self.rows])
        terminations = pick(data.terminations)
        disc = None if discount is None else discount * (1.0 - terminations.astype(np.float64))
        self._rows = PackedRows.from_arrays(pick(data.observations), pick(data.actions), pick(data.rewards),
                                            pick(data.next_observations), terminations, disc, self.device,
                                            bc_weights=None if bc_weights is None else pick(np.asarray(bc_weights)))

    def __len__(self) -> int:
        return len(self._rows)

    def sample(self, batch_size: int, rng: np.random.Generator) -> TransitionBatch:
        """``batch_size`` transitions drawn uniformly with replacement."""
        return self._rows.sample(batch_size, rng)

    def obs_moments(self) -> ObsMoments:
        """Exact moments of the sampled observations (float64)."""
        if self.rows is not None:
            return ObsMoments.of(self.data.observations[self.rows])
        return dataset_obs_moments(self.data)


#: How :func:`trust_mask` ranks the IDM-inferred transitions: ``idm_std`` (lowest std first) or ``random`` (the
#: control: as many transitions, drawn at random, so a gain can be told from the filter's other effects).
TRUST_SIGNALS: tuple[str, ...] = ("idm_std", "random")


def trust_mask(idm_std: np.ndarray, keep: float, signal: str = "idm_std", seed: int = 0) -> np.ndarray:
    """Which generated transitions to train on when only the most trusted IDM-inferred ones are kept.

    Transitions with ``idm_std == 0`` carry a known action (each rollout's real first action) and are always kept.
    Of the others, ``round(keep * n)`` are kept: those with the lowest std (ties broken by position), or with
    ``signal="random"`` a uniformly random set of that size (``seed``).

    Args:
        idm_std: ``(N,)`` per-transition IDM std (:func:`~dawm_env.generation.stats.transition_idm_std`).
        keep: fraction in (0, 1] of the IDM-inferred transitions to keep.
        signal: one of :data:`TRUST_SIGNALS`.
        seed: seed of the ``random`` control.

    Returns:
        ``(N,)`` bool mask.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"trust_keep must lie in (0, 1], got {keep}")
    if signal not in TRUST_SIGNALS:
        raise ValueError(f"unknown trust signal {signal!r}; choose one of {', '.join(TRUST_SIGNALS)}")
    std = np.asarray(idm_std, dtype=np.float64)
    mask = std <= 0.0
    inferred = np.flatnonzero(~mask)
    n_keep = int(round(keep * inferred.size))
    if signal == "random":
        mask[np.random.default_rng(seed).choice(inferred, size=n_keep, replace=False)] = True
    else:
        mask[inferred[np.argsort(std[inferred], kind="stable")[:n_keep]]] = True
    return mask


def dataset_obs_moments(data: OfflineDataset) -> ObsMoments:
    """Exact moments of ``data.observations`` (float64): what the agents normalise real data with."""
    return ObsMoments.of(data.observations)


class MixSource:
    """A fixed fraction ``first_fraction`` of every batch from ``first``, the rest from ``second``.

    Rows are assigned with an even (Bresenham) pattern: row ``i`` comes from ``first`` iff
    ``floor((i + 1) f) > floor(i f)``. Any run of consecutive rows, in particular each seed's B rows of a
    ``K * B`` request, therefore holds ``f B`` rows of ``first`` up to one row.
    """

    def __init__(self, first: TransitionSource, second: TransitionSource, first_fraction: float) -> None:
        if not 0.0 <= first_fraction <= 1.0:
            raise ValueError(f"mix fraction must lie in [0, 1], got {first_fraction}")
        if (first.obs_dim, first.act_dim) != (second.obs_dim, second.act_dim):
            raise ValueError(
                f"cannot mix sources of different shapes: obs/act dims {first.obs_dim}/{first.act_dim} vs "
                f"{second.obs_dim}/{second.act_dim}"
            )
        self.first, self.second, self.first_fraction = first, second, float(first_fraction)
        self.obs_dim, self.act_dim = first.obs_dim, first.act_dim
        self._patterns: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _pattern(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if n not in self._patterns:
            i = np.arange(n)
            is_first = np.floor((i + 1) * self.first_fraction) > np.floor(i * self.first_fraction)
            self._patterns[n] = (torch.from_numpy(np.flatnonzero(is_first)).to(device),
                                 torch.from_numpy(np.flatnonzero(~is_first)).to(device))
        return self._patterns[n]

    def sample(self, batch_size: int, rng: np.random.Generator) -> TransitionBatch:
        """``batch_size`` rows: ``floor(batch_size * f)`` from ``first``, evenly spread, the rest from ``second``."""
        n_first = int(np.floor(batch_size * self.first_fraction))
        if n_first == batch_size:
            return self.first.sample(batch_size, rng)
        if n_first == 0:
            return self.second.sample(batch_size, rng)
        a = self.first.sample(n_first, rng)
        b = self.second.sample(batch_size - n_first, rng)
        if (a.discounts is None) != (b.discounts is None):
            raise ValueError("cannot mix one-step rows with n-step rows (discounts): give the one-step source a "
                             "discount (DatasetSource(..., discount=gamma))")
        pos_a, pos_b = self._pattern(batch_size, a.rewards.device)
        out = {}
        if (a.bc_weights is None) != (b.bc_weights is None):  # rows without weights are cloned: weight 1
            a, b = (replace(x, bc_weights=torch.ones_like(x.rewards)) if x.bc_weights is None else x for x in (a, b))
        for f in fields(TransitionBatch):
            ta, tb = getattr(a, f.name), getattr(b, f.name)
            if ta is None:
                out[f.name] = None
                continue
            t = ta.new_empty((batch_size, *ta.shape[1:]))
            t.index_copy_(0, pos_a, ta)
            t.index_copy_(0, pos_b, tb)
            out[f.name] = t
        return TransitionBatch(**out)

    def obs_moments(self) -> ObsMoments:
        """Moments of the mixture (each part's exact moments, or estimated from samples)."""
        ma, mb = source_obs_moments(self.first), source_obs_moments(self.second)
        return ObsMoments.mix(ma, mb, self.first_fraction)

    def seek(self, calls: int) -> None:
        """Forward :func:`seek_source` to both parts."""
        seek_source(self.first, calls)
        seek_source(self.second, calls)


def seek_source(source: TransitionSource, calls: int) -> None:
    """Tell a source that ``calls`` batches were drawn before (a resumed run); no-op without ``seek``."""
    seek = getattr(source, "seek", None)
    if seek is not None:
        seek(int(calls))


def source_obs_moments(source: TransitionSource, n: int = 20_000, seed: int = 0) -> ObsMoments:
    """Observation moments of ``source``: exact if it provides ``obs_moments()``, else from ``n`` samples."""
    exact = getattr(source, "obs_moments", None)
    if exact is not None:
        m = exact()
        if m is not None:
            return m
    return ObsMoments.of(source.sample(n, np.random.default_rng(seed)).observations)


def corl_reward_scale(data: OfflineDataset, max_episode_steps: int = 1000) -> float:
    """CORL's locomotion reward normalisation: ``max_episode_steps / (max return - min return)``.

    Returns are those of the dataset's episodes (CORL's ``return_reward_range`` splits D4RL's flat data at
    terminals and every ``max_episode_steps``; dawm knows the exact episodes).

    Raises:
        ValueError: when all episodes have the same return (nothing to normalise by).
    """
    returns = data.episode_returns()
    spread = float(returns.max() - returns.min())
    if not spread > 0:
        raise ValueError(f"{data.source}: every episode has return {returns.max():.3f}; cannot normalise rewards "
                         "by the return range (turn reward normalisation off)")
    return max_episode_steps / spread


def ssorl_relabel(data: OfflineDataset, bundle: Bundle, fraction: float, seed: int = 0,
                  chunk: int = 65_536) -> tuple[OfflineDataset, dict]:
    """SSORL baseline data: the actions of a random ``fraction`` of episodes replaced by IDM-inferred ones.

    Those episodes play SSORL's action-free trajectories: their actions are inferred by the bundle's inverse
    dynamics model from ``(s_{t-1}, s_t, s_{t+1})`` (deterministic, ``tanh`` of the mean; ``s_{t-1}`` zero
    after normalisation at an episode's first step, as the IDM was trained). States, rewards and flags stay.
    Note: a bundle's IDM was trained on the whole dataset, including these episodes, so this is an optimistic
    version of SSORL (whose IDM sees only the labelled part).

    Args:
        data: the real dataset.
        bundle: a :class:`dawm_env.world_model.bundle.Bundle` (uses ``idm``, ``stats`` and ``task``).
        fraction: fraction of episodes relabelled, in [0, 1].
        seed: which episodes.
        chunk: transitions per IDM call.

    Returns:
        ``(relabelled dataset, info)`` with the number of relabelled episodes / transitions and the mean
        absolute error of the inferred actions against the real ones.
    """

    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"SSORL fraction must lie in [0, 1], got {fraction}")
    if data.task and bundle.task.name != data.task:
        raise ValueError(f"bundle {getattr(bundle, 'path', '')} is for {bundle.task.name}, the data for {data.task}")
    rng = np.random.default_rng(seed)
    n_ep = int(round(fraction * data.num_episodes))
    chosen = np.sort(rng.choice(data.num_episodes, n_ep, replace=False))
    rows = np.flatnonzero(np.isin(data.episode_ids(), chosen))
    actions = data.actions.copy()
    device = next(bundle.idm.parameters()).device
    for start in range(0, len(rows), chunk):
        idx = rows[start:start + chunk]
        prev, cur, nxt, _ = idm_triples(data, bundle.stats, idx)
        inferred, _ = bundle.idm.act(prev.to(device), cur.to(device), nxt.to(device))
        actions[idx] = inferred.cpu().numpy()
    mae = float(np.abs(actions[rows] - data.actions[rows]).mean()) if len(rows) else 0.0
    info = {"relabelled_episodes": n_ep, "relabelled_transitions": int(len(rows)), "fraction": fraction,
            "seed": seed, "idm_action_mae": mae}
    return replace(data, actions=actions, source=f"ssorl({fraction}):{data.source}"), info


# --- DWM: value expansion over generated rollouts ------------------------------------------------------------
@dataclass(frozen=True)
class ValueExpansion:
    """DWM's Diffusion-MVE target (Ding et al. 2024): an n-step return over a generated rollout.

    For a rollout ``s_0, a_0, r_0, s_1, r_1, ..., s_T`` (``(s_0, a_0)`` real, the rest generated) the critic is
    trained at ``(s_0, a_0)`` towards ``sum_{h<n} gamma^h r_h + gamma^n (1 - terminated) V(s_n)`` with
    ``n = min(horizon, T)``; ``V`` is the agent's bootstrap (TD3+BC: ``min_j Q'_j(s_n, pi'(s_n) + noise)``;
    IQL: the value net). Only generated states and rewards are used, never actions of steps ``h >= 1``.

    Attributes:
        discount: gamma (the agent's).
        horizon: n at most; None = each rollout's whole length.
    """

    discount: float
    horizon: Optional[int] = None

    def __post_init__(self) -> None:
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"value-expansion horizon must be >= 1, got {self.horizon}")


def value_expansion_rows(data: OfflineDataset, expansion: ValueExpansion) -> dict[str, np.ndarray]:
    """One n-step row per episode (rollout) of ``data``, DWM-style (see :class:`ValueExpansion`).

    Rewards are summed raw: the agents' reward scale is linear, so scaling the sum equals summing scaled
    rewards.

    Returns:
        ``{observations (E, obs_dim): s_0, actions (E, act_dim): a_0, rewards (E,): sum_{h<n} gamma^h r_h,
        next_observations (E, obs_dim): s_n, terminations (E,) bool: s_n terminal, discounts (E,):
        gamma^n (1 - terminated), steps (E,) int64: n}``.
    """

    starts, lengths = data.episode_offsets[:-1], data.episode_lengths
    n = lengths if expansion.horizon is None else np.minimum(lengths, expansion.horizon)
    ep, pos = data.episode_ids(), positions_in_episode(data)
    keep = pos < n[ep]
    weighted = expansion.discount ** pos[keep] * data.rewards[keep].astype(np.float64)
    rewards = np.bincount(ep[keep], weights=weighted, minlength=data.num_episodes)
    last = starts + n - 1  # row of (s_{n-1}, a, r_{n-1}, s_n)
    # a termination flag sits only on an episode's last row: n < T never stops bootstrapping
    term = data.terminations[last]
    return {"observations": data.observations[starts], "actions": data.actions[starts],
            "rewards": rewards.astype(np.float32), "next_observations": data.next_observations[last],
            "terminations": term, "discounts": (expansion.discount ** n * (1.0 - term)).astype(np.float32),
            "steps": n.astype(np.int64)}


class RolloutSource:
    """DWM's training rows from a generated dataset: one n-step row per rollout (episode), drawn uniformly.

    Args:
        data: a dataset written by ``dawm generate`` (episode = rollout, row 0 the real ``(s_t, a_t)``).
        expansion: discount and horizon of the n-step target.
        device: where the rows live.
    """

    def __init__(self, data: OfflineDataset, expansion: ValueExpansion, device: torch.device | str = "cpu") -> None:
        self.data, self.expansion = data, expansion
        self.obs_dim, self.act_dim = data.obs_dim, data.act_dim
        rows = value_expansion_rows(data, expansion)
        self.steps = rows.pop("steps")
        self._rows = PackedRows.from_arrays(**rows, device=device)

    def __len__(self) -> int:
        return len(self._rows)

    def sample(self, batch_size: int, rng: np.random.Generator) -> TransitionBatch:
        """``batch_size`` n-step rows drawn uniformly with replacement."""
        return self._rows.sample(batch_size, rng)

    def obs_moments(self) -> ObsMoments:
        """Moments of the rows' observations ``s_0`` (the real seed states)."""
        return ObsMoments.of(self.data.observations[self.data.episode_offsets[:-1]])


# --- the paper's Algorithm 1: transitions generated on the fly --------------------------------------------------
class OnlineGeneratedSource:
    """Freshly generated transitions from a world-model bundle (paper Algorithm 1), served from a refreshed pool.

    Design. Algorithm 1 rolls out new ``(s_t, a_t)`` pairs at every iteration. Generating ``K * B / H``
    rollouts per gradient step costs far more than the step itself on a CPU, so the source keeps a pool of
    ``pool_rollouts`` rollouts, cut into ``m = round(1 / refresh_fraction)`` blocks; every ``refresh_every``
    ``sample`` calls the oldest block is regenerated from newly drawn seed pairs (round-robin), so every
    generated transition is used for ``m * refresh_every`` steps. ``refresh_every = 1`` with
    ``refresh_fraction = 1`` is Algorithm 1 literally. Batches are drawn uniformly from the whole pool.
    The pool holds one-step transitions (DAWM: IDM actions, ``h >= 1`` included) or, with ``expansion``,
    one DWM n-step row per rollout.

    Exact resume. The content of block ``b`` is a pure function of ``(seed, r)``, ``r`` being the refresh
    that last wrote it (0 = the initial fill): its seed pairs come from ``default_rng([seed, r, b])`` and its
    model noise from a torch generator seeded by that rng. The pool after ``n`` calls therefore depends only
    on ``(seed, n)``; :meth:`seek` rebuilds it (one pool generation) and a resumed run draws exactly what the
    uninterrupted one drew, with nothing in the checkpoint. The ``rng`` handed to :meth:`sample` only
    picks rows (pool contents are keyed by the refresh index instead, because that ``rng`` is shared with
    the other part of a :class:`MixSource`). Determinism holds for one device type and one generation batch
    size, as for ``dawm generate``.

    Args:
        generator: a :class:`~dawm_env.generation.rollouts.RolloutGenerator` (bundle and rollout settings).
        seed_data: real dataset whose ``(s_t, a_t)`` pairs start the rollouts (drawn uniformly).
        pool_rollouts: rollouts in the pool (up to ``H`` transitions each, or one n-step row each).
        refresh_every: regenerate a block every this many ``sample`` calls.
        refresh_fraction: fraction of the pool per block, in (0, 1].
        seed: keys every block's randomness.
        device: where the pool lives (default: the generator's device).
        expansion: DWM n-step rows instead of transitions.
    """

    def __init__(self, generator: RolloutGenerator, seed_data: OfflineDataset, pool_rollouts: int = 20_000,
                 refresh_every: int = 1000, refresh_fraction: float = 0.1, seed: int = 0,
                 device: Optional[torch.device | str] = None, expansion: Optional[ValueExpansion] = None) -> None:

        if pool_rollouts < 1 or refresh_every < 1:
            raise ValueError(f"pool_rollouts and refresh_every must be >= 1, got {pool_rollouts}, {refresh_every}")
        if not 0.0 < refresh_fraction <= 1.0:
            raise ValueError(f"refresh_fraction must lie in (0, 1], got {refresh_fraction}")
        check_task_match(generator.bundle, seed_data)
        self.generator, self.seed_data, self.expansion = generator, seed_data, expansion
        self.obs_dim, self.act_dim = seed_data.obs_dim, seed_data.act_dim
        self.refresh_every, self.seed = int(refresh_every), int(seed)
        self.device = torch.device(device) if device is not None else generator.device
        n_blocks = min(pool_rollouts, max(1, round(1.0 / refresh_fraction)))
        self.block_sizes = [len(part) for part in np.array_split(np.arange(pool_rollouts), n_blocks)]
        self.calls = 0
        self._keys: list[Optional[int]] = [None] * n_blocks  # refresh index that wrote each block
        self._blocks: list[Optional[torch.Tensor]] = [None] * n_blocks
        self._pool: Optional[PackedRows] = None
        self.rollouts_generated = 0

    @property
    def num_blocks(self) -> int:
        """m, the number of blocks."""
        return len(self.block_sizes)

    def block_key(self, block: int, calls: int) -> int:
        """The refresh that last wrote ``block`` before sample call ``calls`` (0 = the initial fill)."""
        r, m = calls // self.refresh_every, self.num_blocks
        if r - 1 < block:  # refreshes 1..r wrote blocks (r' - 1) % m: this one not yet
            return 0
        return r - (r - 1 - block) % m

    def _generate_block(self, block: int, key: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, key, block])
        rollouts = self.generator.rollouts_from(self.seed_data.observations, self.seed_data.actions,
                                                self.block_sizes[block], rng)
        self.rollouts_generated += rollouts.num_rollouts
        if self.expansion is None:
            tr = rollouts.transitions()
            rows = PackedRows.from_arrays(tr.observations, tr.actions, tr.rewards, tr.next_observations,
                                          tr.terminations, device=self.device)
        else:
            data, _ = rollouts.to_dataset(self.generator.task)
            vals = value_expansion_rows(data, self.expansion)
            vals.pop("steps")
            rows = PackedRows.from_arrays(**vals, device=self.device)
        return rows.tensor

    def _sync(self) -> None:
        """Bring every block to its content for the current call count (regenerating stale ones)."""
        if self._pool is None:
            log.info("generating the initial pool: %d rollouts from %d real pairs", sum(self.block_sizes),
                     self.seed_data.num_transitions)
        changed = False
        for b in range(self.num_blocks):
            key = self.block_key(b, self.calls)
            if self._keys[b] != key:
                self._blocks[b] = self._generate_block(b, key)
                self._keys[b] = key
                changed = True
        if changed or self._pool is None:
            self._pool = PackedRows(torch.cat(self._blocks), self.obs_dim, self.act_dim, self.expansion is not None)

    def __len__(self) -> int:
        """Rows in the pool now (generated on first use)."""
        self._sync()
        return len(self._pool)

    def seek(self, calls: int) -> None:
        """Continue as if ``calls`` batches had been drawn (rebuilds the stale blocks of the pool)."""
        self.calls = int(calls)
        self._sync()

    def sample(self, batch_size: int, rng: np.random.Generator) -> TransitionBatch:
        """``batch_size`` rows drawn uniformly from the pool (after this call's scheduled refresh)."""
        self._sync()
        self.calls += 1
        return self._pool.sample(batch_size, rng)

    def obs_moments(self) -> ObsMoments:
        """Moments of the pool's observations now (the initial pool for a fresh source)."""
        self._sync()
        return ObsMoments.of(self._pool.tensor.narrow(1, 0, self.obs_dim))
