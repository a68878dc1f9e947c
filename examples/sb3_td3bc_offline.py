"""Train Stable-Baselines3's TD3 offline, as TD3+BC, from a dawm Minari dataset (real or DAWM-generated).

SB3 has no offline algorithms, but it does not need one: fill an off-policy model's replay buffer from the
dataset, then call ``model.train(gradient_steps, batch_size)`` without ever calling ``learn()``. TD3+BC is
TD3 plus a behaviour-cloning term in the actor loss, so it fits as a TD3 subclass overriding ``train()``
(:class:`dawm_env.envs.sb3.SB3TD3BC`; the same pattern works for sb3-contrib's TQC or CrossQ with their own
``train()``). The same class learns inside the dream (``examples/dream_sac_hopper.py --algo td3bc``).

    python examples/sb3_td3bc_offline.py --dataset dawm-d4rl/hopper/medium-v0 --steps 100000

Recipe for any library that reads Minari (d3rlpy, CORL-style scripts, your own loop):

1. ``ds = minari.load_dataset(ID)`` -- dawm writes standard Minari datasets, real (``dawm data build``) and
   synthetic (DAWM generation) alike; ``MINARI_DATASETS_PATH`` points at the root.
2. For each episode ``ep`` of ``ds.iterate_episodes()``: ``s = ep.observations[:-1]``,
   ``s' = ep.observations[1:]`` (Minari stores T + 1 observations for T actions), ``a = ep.actions``,
   ``r = ep.rewards``, ``done = ep.terminations``. Use **terminations only** as "no bootstrap" flags;
   ``ep.truncations`` mark time limits / generation cuts whose ``s'`` is real and must be bootstrapped.
3. Observation mean / std from the training data (CORL adds 1e-3 to the std); normalise ``s`` and ``s'``
   and the evaluation env's observations alike.
4. Evaluate in ``ds.recover_environment(eval_env=True)`` (the real ``-v5`` env) and normalise returns with
   ``minari.get_normalized_score(ds, returns)`` (dawm stores D4RL's reference returns) -- or
   ``dawm_env.tasks.get_task(name).normalized_score``.
5. dawm's own agents (``dawm_env.agents.train.train_agent``) do all of this for K seeds at once; the flat arrays are also
   one call away: ``dawm_env.data.loading.load_dataset(ID)``.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

import gymnasium as gym
import numpy as np
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor

from dawm_env.envs.sb3 import SB3TD3BC


def minari_transitions(dataset_id: str) -> dict[str, np.ndarray]:
    """Flat ``(s, a, r, s', terminated)`` arrays of every episode of a local Minari dataset."""
    import minari

    ds = minari.load_dataset(dataset_id)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "act", "rew", "next_obs", "term")}
    for ep in ds.iterate_episodes():
        parts["obs"].append(ep.observations[:-1])
        parts["next_obs"].append(ep.observations[1:])
        parts["act"].append(ep.actions)
        parts["rew"].append(ep.rewards)
        parts["term"].append(ep.terminations)  # never ep.truncations: a cut episode still bootstraps
    return {k: np.concatenate(v).astype(np.float32) for k, v in parts.items()}


def fill_replay_buffer(buffer: ReplayBuffer, data: dict[str, np.ndarray]) -> None:
    """Write every transition into an SB3 ``ReplayBuffer`` (single env) of exactly that size."""
    n = len(data["obs"])
    if buffer.buffer_size != n or buffer.n_envs != 1 or buffer.optimize_memory_usage:
        raise ValueError(f"need a single-env buffer of size {n} without optimize_memory_usage")
    buffer.observations[:, 0] = data["obs"]
    buffer.next_observations[:, 0] = data["next_obs"]
    buffer.actions[:, 0] = data["act"]
    buffer.rewards[:, 0] = data["rew"]
    buffer.dones[:, 0] = data["term"]
    buffer.timeouts[:, 0] = 0.0
    buffer.pos, buffer.full = 0, True


def make_model(dataset_id: str, seed: int = 0, device: str = "cpu", alpha: float = 2.5,
               ) -> tuple[SB3TD3BC, gym.Env, np.ndarray, np.ndarray]:
    """SB3TD3BC with CORL's settings, its buffer filled (normalised observations), and the normalised eval env.

    Returns:
        ``(model, eval_env, obs_mean, obs_std)``.
    """
    import minari

    data = minari_transitions(dataset_id)
    mean, std = data["obs"].mean(0), data["obs"].std(0) + 1e-3
    data["obs"], data["next_obs"] = (data["obs"] - mean) / std, (data["next_obs"] - mean) / std

    def normalize(obs: np.ndarray) -> np.ndarray:
        return ((obs - mean) / std).astype(np.float32)

    env = Monitor(minari.load_dataset(dataset_id).recover_environment(eval_env=True))
    box = env.observation_space
    env = gym.wrappers.TransformObservation(
        env, normalize, gym.spaces.Box(-np.inf, np.inf, box.shape, np.float32))
    model = SB3TD3BC("MlpPolicy", env, alpha=alpha, learning_rate=3e-4, buffer_size=len(data["obs"]),
                     learning_starts=0, batch_size=256, tau=0.005, gamma=0.99, policy_delay=2,
                     target_policy_noise=0.2, target_noise_clip=0.5, policy_kwargs={"net_arch": [256, 256]},
                     seed=seed, device=device, verbose=0)
    model.set_logger(configure(None, []))
    fill_replay_buffer(model.replay_buffer, data)
    return model, env, mean, std


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Train and evaluate; returns ``{"steps": [...], "normalized": [...]}`` (also printed)."""
    from stable_baselines3.common.evaluation import evaluate_policy

    from dawm_env.tasks import task_from_env_id

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="local Minari dataset id")
    p.add_argument("--steps", type=int, default=100_000, help="gradient steps")
    p.add_argument("--eval-every", type=int, default=5000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--alpha", type=float, default=2.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    model, env, _, _ = make_model(args.dataset, args.seed, args.device, args.alpha)
    task = task_from_env_id(env.spec.id)
    curve: dict[str, list] = {"steps": [], "normalized": []}
    done = 0
    while done < args.steps:
        chunk = min(args.eval_every, args.steps - done)
        model.train(gradient_steps=chunk, batch_size=256)
        done += chunk
        mean_return, _ = evaluate_policy(model, env, n_eval_episodes=args.eval_episodes, deterministic=True)
        score = float(task.normalized_score(mean_return))
        curve["steps"].append(done)
        curve["normalized"].append(score)
        print(f"step {done:>8d}  return {mean_return:9.1f}  normalised score {score:6.1f} ({task.env_id})")
    env.close()
    return curve


if __name__ == "__main__":
    main()
