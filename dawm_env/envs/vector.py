"""Batched dream env: N dream episodes stepped by ONE world-model call per ``step``.

``gymnasium.make_vec("DAWM-Hopper-v0", num_envs=N, ...)`` builds :class:`DreamVectorEnv` through the
registered ``vector_entry_point`` (Gymnasium passes ``num_envs`` and ``max_episode_steps`` and adds no
``TimeLimit``: the time limit is counted here).

Autoreset is ``AutoresetMode.NEXT_STEP`` (Gymnasium's default, the one observation wrappers accept):
the step that ends an episode returns its last observation with ``terminated`` / ``truncated`` set; the
NEXT ``step`` ignores that env's action, resets it and returns the new start state with reward 0 and
both flags False. Only the envs that are not being reset go through the world model, in one call.

Randomness: one ``np_random`` for the whole batch (``reset(seed=int)``; a list of seeds is combined
into one), so the same seed and action sequence reproduce the same batch of episodes.

Infos: every key is a ``(N,)`` array with a boolean ``_key`` mask (Gymnasium's vector convention),
the same keys on reset and step: ``rtg_target``, ``start_index`` (and ``idm_action_error``; with pessimism
``uncertainty``, ``penalty``, ``halted``, ``raw_reward``, see :class:`~dawm_env.envs.dream.DreamEnv`). An env
being reset reports the reset values (0 / False).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from dawm_env.envs.dream import (
    DreamConfig,
    DreamDynamics,
    action_space,
    check_actions,
    check_max_episode_steps,
    check_states,
    observation_space,
)


class DreamVectorEnv(VectorEnv):
    """``num_envs`` dream envs stepped together.

    Args:
        num_envs: N, the batch size of every world-model call.
        max_episode_steps: time limit counted per env (``truncated`` when reached); None = no limit.
        render_mode: must be None (render a single :class:`~dawm_env.envs.dream.DreamEnv` instead).
        **config: the fields of :class:`~dawm_env.envs.dream.DreamConfig` (task, bundle, rtg_target, ...).

    Spaces:
        ``observation_space`` ``(N, obs_dim)`` float64, ``action_space`` ``(N, act_dim)`` float32.

    Reset options:
        ``{"start_state": (obs_dim,) or (N, obs_dim)}``: start states instead of drawing them;
        ``{"reset_mask": (N,) bool}``: reset only these envs (others keep their state), as in Gymnasium's
        ``AutoresetMode.DISABLED`` workflows.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, max_episode_steps: Optional[int] = 1000,
                 render_mode: Optional[str] = None, **config: Any) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        if render_mode is not None:
            raise ValueError(f"the batched dream env does not render (render_mode={render_mode!r}); make a single "
                             "env with gymnasium.make(..., render_mode='rgb_array') to look at a dream rollout")
        self.max_episode_steps = check_max_episode_steps(max_episode_steps)
        self.config = DreamConfig.from_kwargs(config, ("num_envs", "max_episode_steps", "render_mode"))
        self.dynamics = DreamDynamics(self.config)  # loads (or reuses) the bundle: validate everything first
        self.task = self.dynamics.task
        self.num_envs = int(num_envs)
        self.render_mode = None
        self.single_observation_space = observation_space(self.task)
        self.single_action_space = action_space(self.task)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        n, d = self.num_envs, self.task.obs_dim
        self._states = np.zeros((n, d))
        self._prev = np.full((n, d), np.nan)  # s_{t-1} for the IDM; NaN at episode start
        self._elapsed = np.zeros(n, dtype=np.int64)
        self._start_index = np.full(n, -1, dtype=np.int64)
        # per-step info values of the last step (reset values for envs that just started)
        self._step_info: dict[str, np.ndarray] = {k: np.full(n, v) for k, v in self.dynamics.info_keys().items()}
        self._autoreset = np.zeros(n, dtype=bool)  # envs whose episode ended on the previous step
        self._needs_reset = True

    # ------------------------------------------------------------------ helpers
    def _reset_envs(self, mask: np.ndarray, states: Optional[np.ndarray] = None) -> None:
        """Start new episodes in the envs of ``mask (N,)``; ``states`` = given starts for all N, or None."""
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            return
        if states is None:
            new, pool_idx = self.dynamics.draw_starts(self.np_random, len(idx))
        else:
            new, pool_idx = states[idx], np.full(len(idx), -1, dtype=np.int64)
        self._states[idx] = new
        self._prev[idx] = np.nan
        self._elapsed[idx] = 0
        self._start_index[idx] = pool_idx
        for key, value in self.dynamics.info_keys().items():
            self._step_info[key][idx] = value
        self._autoreset[idx] = False

    def _infos(self) -> dict[str, Any]:
        n = self.num_envs
        infos: dict[str, Any] = {
            "rtg_target": np.full(n, self.dynamics.rtg_target), "_rtg_target": np.ones(n, dtype=bool),
            "start_index": self._start_index.copy(), "_start_index": np.ones(n, dtype=bool),
        }
        for key, values in self._step_info.items():
            infos[key] = values.copy()
            infos[f"_{key}"] = np.ones(n, dtype=bool)
        return infos

    # ------------------------------------------------------------------ API
    def reset(self, *, seed: Optional[int | Sequence[int]] = None, options: Optional[dict[str, Any]] = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset (all or ``options["reset_mask"]``) envs: ``(obs (N, obs_dim) float64, infos)``."""
        if seed is not None:
            if not isinstance(seed, (int, np.integer)):  # list of per-env seeds -> one batch generator
                seed = int(np.random.SeedSequence([int(s) for s in seed]).generate_state(1)[0])
            self._np_random, self._np_random_seed = seeding.np_random(int(seed))
        options = dict(options or {})
        unknown = set(options) - {"start_state", "reset_mask"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; supported: ['reset_mask', 'start_state']")
        mask = np.ones(self.num_envs, dtype=bool)
        if options.get("reset_mask") is not None:
            mask = np.asarray(options["reset_mask"])
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
                raise ValueError(f"reset_mask must be a ({self.num_envs},) bool array, got {mask.shape} {mask.dtype}")
            if self._needs_reset and not mask.all():
                raise ValueError("the first reset must reset every env (reset_mask all True or absent)")
        states = None
        if options.get("start_state") is not None:
            states = check_states(options["start_state"], self.num_envs, self.task.obs_dim)
        self._reset_envs(mask, states)
        self._needs_reset = False
        return self._states.copy(), self._infos()

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step all envs with ``actions (N, act_dim)``.

        Returns:
            ``obs (N, obs_dim) float64, rewards (N,) float64, terminated (N,) bool, truncated (N,) bool,
            infos``. Envs that ended on the previous step are reset instead (NEXT_STEP autoreset).
        """
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        acts = check_actions(actions, self.action_space.shape)
        resetting = self._autoreset.copy()
        n = self.num_envs
        rewards = np.zeros(n)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        live = np.flatnonzero(~resetting)
        if len(live):  # one world-model call for every env that is not being reset
            out = self.dynamics.step(self._states[live], acts[live], self.np_random, self._prev[live])
            self._prev[live] = self._states[live]
            self._states[live] = out.next_states
            rewards[live] = out.rewards
            terminated[live] = out.terminated
            self._elapsed[live] += 1
            for key, values in out.info.items():
                self._step_info[key][live] = values
            if self.max_episode_steps is not None:
                # Same rule as gymnasium's TimeLimit: truncated once the limit is reached (may coincide
                # with terminated).
                truncated[live] = self._elapsed[live] >= self.max_episode_steps
        self._reset_envs(resetting)
        self._autoreset = terminated | truncated
        return self._states.copy(), rewards, terminated, truncated, self._infos()

    def close_extras(self, **kwargs: Any) -> None:
        """Nothing to free: the bundle is cached and shared."""
