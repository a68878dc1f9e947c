"""Stable-Baselines3 ``VecEnv`` over the batched dream env (SB3 cannot take a Gymnasium ``VectorEnv``).

SB3 conventions, which differ from Gymnasium's vector API:

- same-step autoreset: the step that ends an episode already returns the NEXT episode's start state;
  the last state is in ``infos[i]["terminal_observation"]``;
- ``dones = terminated | truncated``; ``infos[i]["TimeLimit.truncated"]`` is True when the episode
  was cut by the time limit and did not terminate (SB3's off-policy algorithms then bootstrap);
- ``reset()`` returns only observations (``reset_infos`` keeps the infos); seeds from ``seed()`` are
  used at the next reset (only the first one: the batch shares one generator).

One world-model call per ``step_wait`` for all N envs. Wrap in ``VecMonitor`` for episode statistics.

    venv = make_sb3_vec_env("DAWM-Hopper-v0", num_envs=16, max_episode_steps=100, bundle="hopper-medium")
    model = SAC("MlpPolicy", VecMonitor(venv)).learn(100_000)

The offline model-based recipe (MOPO / MOReL / COMBO): short dreams branched from dataset states, the
pessimistic dream (the env's default), and real transitions mixed into every batch by
:class:`RealMixReplayBuffer`::

    venv = make_sb3_vec_env("DAWM-Hopper-v0", num_envs=16, max_episode_steps=5,
                            start_states="dawm-d4rl/hopper/medium-v0")
    model = SAC("MlpPolicy", VecMonitor(venv), replay_buffer_class=RealMixReplayBuffer,
                replay_buffer_kwargs=real_mix_kwargs("dawm-d4rl/hopper/medium-v0", real_fraction=0.5))

A behaviour-regularised agent in the dream: :class:`SB3TD3BC` (TD3+BC as an SB3 TD3) with ``bc_rows="real"``
clones only the real rows of each mixed batch, on observations normalised by the data's frozen statistics
(:func:`frozen_obs_normalization`, as TD3+BC normalises states)::

    venv = frozen_obs_normalization(VecMonitor(venv), "dawm-d4rl/hopper/medium-v0")
    model = SB3TD3BC("MlpPolicy", venv, bc_rows="real", replay_buffer_class=RealMixReplayBuffer, ...)
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.utils import seeding
from stable_baselines3 import TD3
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from dawm_env.data.loading import load_dataset
from dawm_env.data.normalization import safe_std
from dawm_env.data.records import OfflineDataset
from dawm_env.envs.dream import check_actions, check_states
from dawm_env.envs.vector import DreamVectorEnv


class DreamSB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` adapter: same-step autoreset over a :class:`DreamVectorEnv`'s dynamics.

    Args:
        venv: the batched dream env (e.g. ``gymnasium.make_vec("DAWM-Hopper-v0", num_envs=N).unwrapped``).
            Its world model, start-state pool and time limit are used; its own episode state is not
            (do not step both).

    Spaces:
        ``observation_space`` ``(obs_dim,)`` float64, ``action_space`` ``(act_dim,)`` float32 (per env,
        as SB3 expects); observations ``(N, obs_dim)``, actions ``(N, act_dim)``.
    """

    def __init__(self, venv: DreamVectorEnv) -> None:
        venv = getattr(venv, "unwrapped", venv)
        if not isinstance(venv, DreamVectorEnv):
            raise ValueError(f"DreamSB3VecEnv needs a DreamVectorEnv (from gymnasium.make_vec('DAWM-...-v0')), "
                             f"got {type(venv).__name__}")
        self.venv = venv
        self.dynamics = venv.dynamics
        self.max_episode_steps = venv.max_episode_steps
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        n, d = self.num_envs, venv.task.obs_dim
        self._states = np.zeros((n, d))
        self._prev = np.full((n, d), np.nan)
        self._elapsed = np.zeros(n, dtype=np.int64)
        self._start_index = np.full(n, -1, dtype=np.int64)
        self._actions: Optional[np.ndarray] = None
        self._ready = False
        self._rng: np.random.Generator = venv.np_random  # one generator for the batch, reseeded by seed()

    def _info(self, i: int, step: Optional[dict[str, np.ndarray]] = None) -> dict[str, Any]:
        info: dict[str, Any] = {"rtg_target": self.dynamics.rtg_target, "start_index": int(self._start_index[i])}
        for key, reset_value in self.dynamics.info_keys().items():
            info[key] = reset_value if step is None else type(reset_value)(step[key][i])
        return info

    def _start(self, idx: np.ndarray, states: Optional[np.ndarray] = None) -> None:
        if len(idx) == 0:
            return
        if states is None:
            new, pool_idx = self.dynamics.draw_starts(self._rng, len(idx))
        else:
            new, pool_idx = states, np.full(len(idx), -1, dtype=np.int64)
        self._states[idx] = new
        self._prev[idx] = np.nan
        self._elapsed[idx] = 0
        self._start_index[idx] = pool_idx

    def reset(self) -> VecEnvObs:
        """Start N episodes: ``(N, obs_dim)`` float64 (infos in ``self.reset_infos``)."""
        seed = self._seeds[0]
        if seed is not None:  # SB3's seed() gives seed + i per env; one batch generator uses the first
            self._rng, _ = seeding.np_random(int(seed))
        given = [o.get("start_state") for o in self._options]
        unknown = {k for o in self._options for k in o} - {"start_state"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; supported: ['start_state']")
        self._start(np.arange(self.num_envs))
        for i, s in enumerate(given):
            if s is not None:
                self._start(np.array([i]), check_states(s, 1, self.venv.task.obs_dim))
        self.reset_infos = [self._info(i) for i in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        self._ready = True
        return self._states.copy()

    def step_async(self, actions: np.ndarray) -> None:
        """Store ``actions (N, act_dim)`` (validated here, so errors point at the caller)."""
        self._actions = check_actions(actions, (self.num_envs, *self.action_space.shape))

    def step_wait(self) -> VecEnvStepReturn:
        """One world-model call: ``(obs (N, obs_dim), rewards (N,) float32, dones (N,) bool, infos)``."""
        if not self._ready or self._actions is None:
            raise RuntimeError("call reset() and step_async() before step_wait()")
        acts, self._actions = self._actions, None
        out = self.dynamics.step(self._states, acts, self._rng, self._prev)
        nxt, rew, term = out.next_states, out.rewards, out.terminated
        self._prev, self._states = self._states, nxt.copy()
        self._elapsed += 1
        trunc = (self._elapsed >= self.max_episode_steps) if self.max_episode_steps is not None \
            else np.zeros(self.num_envs, dtype=bool)
        dones = term | trunc
        infos = [self._info(i, out.info) for i in range(self.num_envs)]
        done_idx = np.flatnonzero(dones)
        for i in done_idx:
            infos[i]["terminal_observation"] = nxt[i].copy()
            infos[i]["TimeLimit.truncated"] = bool(trunc[i] and not term[i])
        self._start(done_idx)
        for i in done_idx:  # the new episode's start (index), keeping the last step's values and terminal keys
            infos[i]["start_index"] = int(self._start_index[i])
        return self._states.copy(), rew.astype(np.float32), dones, infos

    def close(self) -> None:
        """Close the underlying vector env."""
        self.venv.close()

    # All N envs share one batched env: attribute access goes to it, once per requested index.
    def _indices(self, indices: VecEnvIndices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else list(indices)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """``getattr(venv, attr_name)`` for each index (``render_mode`` is None)."""
        value = None if attr_name == "render_mode" else getattr(self.venv, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the shared vector env (affects every index)."""
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Call a method of the shared vector env once per requested index."""
        return [getattr(self.venv, method_name)(*method_args, **method_kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        """Sub-envs are never wrapped (there are no sub-envs)."""
        return [False for _ in self._indices(indices)]

    def get_images(self) -> Sequence[Optional[np.ndarray]]:
        """No rendering in the batched env (use a single env with ``render_mode='rgb_array'``)."""
        return [None for _ in range(self.num_envs)]


def make_sb3_vec_env(env_id: str = "DAWM-Hopper-v0", num_envs: int = 16, max_episode_steps: Optional[int] = None,
                     seed: Optional[int] = None, **kwargs: Any) -> DreamSB3VecEnv:
    """Build a batched dream env with ``gymnasium.make_vec`` and wrap it for SB3.

    Args:
        env_id: a dream env id (``DAWM-Hopper-v0``, ``dawm_env:DAWM-Walker2d-v0``, ...).
        num_envs: N.
        max_episode_steps: time limit; None = the registered one (1000).
        seed: seeds the first reset.
        **kwargs: :class:`~dawm_env.envs.dream.DreamConfig` fields (bundle, rtg_target, ...).
    """
    import gymnasium as gym

    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    venv = DreamSB3VecEnv(gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                                       **kwargs))
    if seed is not None:
        venv.seed(seed)
    return venv



def _as_dataset(real_data: "OfflineDataset | str") -> OfflineDataset:
    """``real_data`` itself, or the Minari id / D4RL file it names, loaded."""
    return real_data if isinstance(real_data, OfflineDataset) else load_dataset(real_data)


class RealMixReplayBuffer(ReplayBuffer):
    """SB3 replay buffer whose every batch holds a fixed fraction of real offline transitions.

    The dream transitions the agent collects go into the ordinary buffer; ``sample`` draws
    ``round(real_fraction * batch_size)`` rows uniformly from the real dataset and the rest from the buffer
    (MOPO / COMBO mix real and model data this way). Real ``dones`` are the dataset's terminations only:
    a truncated real episode bootstraps, as SB3 does with ``TimeLimit.truncated``.

    Args:
        buffer_size, observation_space, action_space, device, n_envs, optimize_memory_usage,
            handle_timeout_termination: as :class:`stable_baselines3.common.buffers.ReplayBuffer`.
        real_data: an :class:`~dawm_env.data.records.OfflineDataset`, or a Minari id / D4RL file to load.
        real_fraction: share of every batch taken from ``real_data``, in ``[0, 1]``.
        seed: seed of the real-row sampling.

    Use through ``replay_buffer_class=RealMixReplayBuffer, replay_buffer_kwargs=real_mix_kwargs(...)``.
    """

    def __init__(self, buffer_size: int, observation_space: Any, action_space: Any, device: Any = "auto",
                 n_envs: int = 1, optimize_memory_usage: bool = False, handle_timeout_termination: bool = True,
                 *, real_data: "OfflineDataset | str", real_fraction: float = 0.5, seed: int = 0) -> None:
        super().__init__(buffer_size, observation_space, action_space, device=device, n_envs=n_envs,
                         optimize_memory_usage=optimize_memory_usage,
                         handle_timeout_termination=handle_timeout_termination)
        if isinstance(real_fraction, bool) or not 0.0 <= float(real_fraction) <= 1.0:
            raise ValueError(f"real_fraction must lie in [0, 1], got {real_fraction!r}")
        data = _as_dataset(real_data)
        obs_shape, act_shape = tuple(observation_space.shape), tuple(action_space.shape)
        if data.observations.shape[1:] != obs_shape or data.actions.shape[1:] != act_shape:
            raise ValueError(f"real data {data.source!r} has observations {data.observations.shape[1:]} / actions "
                             f"{data.actions.shape[1:]}; the agent's spaces are {obs_shape} / {act_shape}")
        self.real_fraction = float(real_fraction)
        self.real = data
        self._real_rng = np.random.default_rng(seed)
        #: ``(batch,)`` bool of the last ``sample``: True for the rows drawn from the real data.
        self.last_real_mask: Optional[torch.Tensor] = None

    def sample(self, batch_size: int, env: Optional[VecNormalize] = None) -> ReplayBufferSamples:
        """``batch_size`` rows: the real share from the dataset, the rest from the dream buffer."""
        n_real = int(round(self.real_fraction * batch_size))
        if self.size() == 0:  # nothing dreamed yet: all real
            n_real = batch_size
        parts = []
        if n_real < batch_size:
            parts.append(super().sample(batch_size - n_real, env=env))
        if n_real:
            rows = self._real_rng.integers(self.real.num_transitions, size=n_real)
            d = self.real
            parts.append(ReplayBufferSamples(
                observations=self.to_torch(self._normalize_obs(d.observations[rows], env)),
                actions=self.to_torch(d.actions[rows]),
                next_observations=self.to_torch(self._normalize_obs(d.next_observations[rows], env)),
                dones=self.to_torch(d.terminations[rows].astype(np.float32).reshape(-1, 1)),
                rewards=self.to_torch(self._normalize_reward(d.rewards[rows].reshape(-1, 1), env)),
            ))
        self.last_real_mask = torch.arange(batch_size, device=self.device) >= batch_size - n_real  # real rows last
        if len(parts) == 1:
            return parts[0]
        # same dtype on both sides (the buffer stores float32; SB3's to_torch keeps it)
        return ReplayBufferSamples(*(torch.cat([p[i].to(parts[0][i].dtype) for p in parts])
                                     if parts[0][i] is not None else None
                                     for i in range(len(ReplayBufferSamples._fields))))


def real_mix_kwargs(real_data: "OfflineDataset | str", real_fraction: float = 0.5, seed: int = 0) -> dict[str, Any]:
    """``replay_buffer_kwargs`` for :class:`RealMixReplayBuffer` (the data is loaded once, here)."""
    data = _as_dataset(real_data)
    return {"real_data": data, "real_fraction": real_fraction, "seed": seed}


def frozen_obs_normalization(venv: VecEnv, real_data: "OfflineDataset | str") -> VecNormalize:
    """Wrap ``venv`` so the agent sees ``(s - mean) / safe_std(std)`` with the data's statistics, never updated.

    TD3+BC normalises states with the offline data's mean / std (+1e-3, CORL's); a running normaliser would
    drift with the dream's own states. Rewards are left as they are; the replay buffer stores raw
    observations and normalises them (dream and real rows alike) at sampling, as SB3 does with ``VecNormalize``.
    """
    data = _as_dataset(real_data)
    out = VecNormalize(venv, training=False, norm_obs=True, norm_reward=False, clip_obs=np.inf, epsilon=0.0)
    out.obs_rms.mean = data.observations.mean(0).astype(np.float64)
    out.obs_rms.var = safe_std(data.observations.std(0).astype(np.float64)) ** 2  # dawm's one convention
    return out


def td3bc_actor_loss(q: torch.Tensor, pi: torch.Tensor, actions: torch.Tensor, alpha: float,
                     bc_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """TD3+BC's actor loss ``-lambda * mean(Q(s, pi(s))) + BC``, ``lambda = alpha / mean|Q|`` (not differentiated).

    Args:
        q: ``(B, 1)`` critic values of the policy's actions.
        pi, actions: ``(B, act_dim)`` policy and batch actions.
        alpha: TD3+BC's alpha (2.5).
        bc_mask: ``(B,)`` bool, the rows whose actions are cloned (None = all); BC is the mean squared
            error over their action elements, 0 when no row is selected.
    """
    lmbda = alpha / q.abs().mean().detach()
    sq = (pi - actions) ** 2
    if bc_mask is None:
        bc = sq.mean()
    else:
        bc = sq[bc_mask].mean() if bool(bc_mask.any()) else sq.sum() * 0.0
    return -lmbda * q.mean() + bc


class SB3TD3BC(TD3):
    """TD3+BC (Fujimoto & Gu 2021) as a Stable-Baselines3 TD3 whose actor loss adds behaviour cloning.

    Offline: fill the replay buffer with a dataset and call ``train(gradient_steps, batch_size)`` without
    ``learn()`` (``examples/sb3_td3bc_offline.py``). In the dream: ``learn()`` with a
    :class:`RealMixReplayBuffer` and ``bc_rows="real"``, so the actor clones the data's actions and never its
    own dreamed ones, while the critic and the Q term learn from both.

    Args:
        alpha: ``lambda = alpha / mean|Q(s, pi(s))|`` (2.5 in the paper and CORL).
        bc_rows: ``"all"`` clones every batch row; ``"real"`` only the rows the buffer drew from real data
            (needs :class:`RealMixReplayBuffer`).
        *args, **kwargs: passed to :class:`stable_baselines3.TD3`.
    """

    def __init__(self, *args: Any, alpha: float = 2.5, bc_rows: Literal["all", "real"] = "all", **kwargs: Any) -> None:
        if bc_rows not in ("all", "real"):
            raise ValueError(f"bc_rows must be 'all' or 'real', got {bc_rows!r}")
        self.alpha = alpha
        self.bc_rows = bc_rows
        super().__init__(*args, **kwargs)
        if bc_rows == "real" and not isinstance(self.replay_buffer, RealMixReplayBuffer):
            raise ValueError("bc_rows='real' needs replay_buffer_class=RealMixReplayBuffer (it marks the real rows)")

    def train(self, gradient_steps: int, batch_size: int = 256) -> None:
        """``gradient_steps`` TD3+BC steps on batches from the replay buffer (SB3's TD3 update + the BC term)."""
        self.policy.set_training_mode(True)
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])
        actor_losses, critic_losses = [], []
        for _ in range(gradient_steps):
            self._n_updates += 1
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            with torch.no_grad():
                noise = data.actions.clone().data.normal_(0, self.target_policy_noise)
                noise = noise.clamp(-self.target_noise_clip, self.target_noise_clip)
                next_actions = (self.actor_target(data.next_observations) + noise).clamp(-1, 1)
                next_q = torch.cat(self.critic_target(data.next_observations, next_actions), dim=1)
                next_q, _ = torch.min(next_q, dim=1, keepdim=True)
                # SB3's dones are terminations: a timeout (TimeLimit.truncated) was stored as not done
                target_q = data.rewards + (1 - data.dones) * self.gamma * next_q
            critic_loss = sum(F.mse_loss(q, target_q) for q in self.critic(data.observations, data.actions))
            critic_losses.append(critic_loss.item())
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()

            if self._n_updates % self.policy_delay == 0:
                pi = self.actor(data.observations)
                mask = self.replay_buffer.last_real_mask if self.bc_rows == "real" else None
                actor_loss = td3bc_actor_loss(self.critic.q1_forward(data.observations, pi), pi, data.actions,
                                              self.alpha, mask)
                actor_losses.append(actor_loss.item())
                self.actor.optimizer.zero_grad()
                actor_loss.backward()
                self.actor.optimizer.step()
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                polyak_update(self.actor.parameters(), self.actor_target.parameters(), self.tau)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if actor_losses:
            self.logger.record("train/actor_loss", float(np.mean(actor_losses)))
        self.logger.record("train/critic_loss", float(np.mean(critic_losses)))
