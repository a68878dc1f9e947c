"""Learn Hopper inside the DAWM dream with an SB3 / sb3-contrib agent, then evaluate it in real Hopper-v5.

The agent (SAC, TQC, CrossQ or TD3+BC) never touches MuJoCo while learning: every transition comes from the
world model (``DAWM-Hopper-v0`` through the batched env and the SB3 ``VecEnv`` adapter, one model call
per step for all ``--num-envs`` envs). Only the final evaluation runs the real simulator, and the
score is the D4RL-normalised return (0 = random, 100 = expert reference returns of D4RL; these are
Hopper-v5 returns, so not D4RL numbers).

Dream episodes start from real states (the bundle's seed states, or every state of ``--start-states``) and
are cut after ``--horizon`` steps (a time limit, which SB3 bootstraps through): short dreams keep the model's
compounding error small. The dream is pessimistic by default (uncertain steps are penalised and halted, see
``dawm_env.envs.dream``); ``--raw`` learns in the raw dream. ``--real-data`` mixes real transitions into every
batch (``--real-fraction``). Every ``--eval-every`` steps the policy is evaluated in the real env, next to the
return it collects in the dream (the exploitation gap).

    # the offline model-based recipe (MOPO-style: 5-step branches from the data, half real batches)
    python examples/dream_sac_hopper.py --start-states dawm-d4rl/hopper/medium-v0 --horizon 5 \\
        --real-data dawm-d4rl/hopper/medium-v0 --real-fraction 0.5
    python examples/dream_sac_hopper.py --algo tqc ...                       # sb3-contrib TQC (or crossq)
    python examples/dream_sac_hopper.py --algo td3bc --real-data ... ...      # TD3+BC: clones the real rows only
    python examples/dream_sac_hopper.py --bundle PATH --timesteps 400 --learning-starts 100 \\
        --eval-episodes 1 --final-episodes 1 --num-envs 4                    # smoke run

Writes the trained policy (``--out``.zip) and a JSON summary (scores, evaluation history) next to it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags (budgets default to a run a user would do on a CPU, ~1 hour on 2 cores)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--env-id", default="DAWM-Hopper-v0", help="dream env id")
    p.add_argument("--bundle", default=None, help="bundle name or folder (default: the env's, hopper-medium)")
    p.add_argument("--algo", choices=("sac", "tqc", "crossq", "td3bc"), default="sac",
                   help="td3bc: SB3 TD3 + behaviour cloning of the --real-data rows of each batch, on observations "
                        "normalised by that data's statistics (needs --real-data)")
    p.add_argument("--alpha", type=float, default=2.5, help="td3bc: lambda = alpha / mean|Q|")
    p.add_argument("--exploration-noise", type=float, default=0.1, help="td3bc: std of the Gaussian action noise")
    p.add_argument("--timesteps", type=int, default=200_000, help="dream transitions to learn from")
    p.add_argument("--num-envs", type=int, default=8, help="dream envs stepped by one model call")
    p.add_argument("--horizon", type=int, default=100, help="dream episode length (time limit)")
    p.add_argument("--gradient-steps", type=int, default=None,
                   help="gradient steps per vector step (default: num-envs, i.e. one per transition)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--learning-starts", type=int, default=5_000)
    p.add_argument("--rtg-target", type=float, default=None, help="return-to-go condition (default: task's)")
    p.add_argument("--guidance-weight", type=float, default=None)
    p.add_argument("--eval-episodes", type=int, default=10, help="episodes in the real env (each evaluation)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate in the real env every N steps (0 = at the end)")
    p.add_argument("--final-episodes", type=int, default=10,
                   help="fresh episodes of the final real evaluation (seeds none of the evaluations along the way use)")
    p.add_argument("--raw", action="store_true", help="learn in the raw dream (no penalty, no halting)")
    p.add_argument("--uncertainty", default=None, help="action_gap (default) or disagreement")
    p.add_argument("--penalty-coef", type=float, default=None, help="lambda of r - lambda * u (default: calibrated)")
    p.add_argument("--halt-threshold", type=float, default=None, help="halt when u exceeds it (default: calibrated)")
    p.add_argument("--start-states", default=None, help="dataset whose states start the dreams (default: seeds)")
    p.add_argument("--real-data", default=None, help="real dataset mixed into every batch")
    p.add_argument("--real-fraction", type=float, default=0.5, help="share of each batch from --real-data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--device", default="cpu", help="device of the world model and the agent")
    p.add_argument("--out", default="runs/dream_sac_hopper/policy", help="policy path (without .zip)")
    return p


def evaluate_real(model, env_id: str, episodes: int, seed: int, lengths: list | None = None) -> list[float]:
    """Undiscounted returns of ``episodes`` deterministic episodes in the real env (lengths appended to ``lengths``).

    Observations go through the model's ``VecNormalize`` when it learned behind one (td3bc)."""
    import gymnasium as gym

    norm = model.get_vec_normalize_env()

    env = gym.make(env_id)
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, ret, steps = False, 0.0, 0
        while not done:
            action, _ = model.predict(norm.normalize_obs(obs) if norm is not None else obs, deterministic=True)
            obs, rew, term, trunc, _ = env.step(action)
            ret += float(rew)
            done = term or trunc
            steps += 1
        returns.append(ret)
        if lengths is not None:
            lengths.append(steps)
    env.close()
    return returns


def main(argv: list[str] | None = None) -> dict:
    """Learn in the dream, evaluate in MuJoCo, print and save the normalised score; returns the summary."""
    args = build_parser().parse_args(argv)
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecMonitor

    import dawm_env  # noqa: F401  (registers the dream ids)
    from dawm_env.data.loading import load_dataset
    from dawm_env.envs.sb3 import (
        SB3TD3BC,
        RealMixReplayBuffer,
        frozen_obs_normalization,
        make_sb3_vec_env,
        real_mix_kwargs,
    )
    from dawm_env.tasks import get_task

    out = Path(args.out)
    if out.with_name(f"{out.name}.json").exists():  # a rerun never overwrites a finished run's results
        raise SystemExit(f"{out}.json exists: give another --out (or delete it to rerun)")
    if args.algo == "td3bc" and not args.real_data:
        raise SystemExit("--algo td3bc clones real actions: give --real-data (e.g. dawm-d4rl/hopper/medium-v0)")
    torch.set_num_threads(args.threads)
    dream_kwargs = {k: v for k, v in {"bundle": args.bundle, "rtg_target": args.rtg_target,
                                      "guidance_weight": args.guidance_weight, "device": args.device,
                                      "uncertainty": args.uncertainty, "penalty_coef": args.penalty_coef,
                                      "halt_threshold": args.halt_threshold,
                                      "start_states": args.start_states}.items()
                    if v is not None}
    if args.raw:
        dream_kwargs["pessimism"] = False
    venv = VecMonitor(make_sb3_vec_env(args.env_id, num_envs=args.num_envs, max_episode_steps=args.horizon,
                                       seed=args.seed, **dream_kwargs))
    dynamics = venv.venv.dynamics
    task = get_task(dynamics.task.name)
    real_data = load_dataset(args.real_data) if args.real_data else None  # loaded once: buffer and normaliser
    extra: dict = {}
    if args.algo == "sac":
        algo = SAC
    elif args.algo == "td3bc":
        from stable_baselines3.common.noise import NormalActionNoise

        algo = SB3TD3BC
        act_dim = venv.action_space.shape[0]
        # CORL's TD3+BC settings; the exploration noise is TD3's, the dream is where it acts
        extra = {"alpha": args.alpha, "bc_rows": "real", "learning_rate": 3e-4, "policy_delay": 2,
                 "target_policy_noise": 0.2, "target_noise_clip": 0.5, "policy_kwargs": {"net_arch": [256, 256]},
                 "action_noise": NormalActionNoise(np.zeros(act_dim), np.full(act_dim, args.exploration_noise))}
        venv = frozen_obs_normalization(venv, real_data)
    else:
        from sb3_contrib import TQC, CrossQ

        algo = {"tqc": TQC, "crossq": CrossQ}[args.algo]
    buffer = {}
    if args.real_data:
        buffer = {"replay_buffer_class": RealMixReplayBuffer,
                  "replay_buffer_kwargs": real_mix_kwargs(real_data, args.real_fraction, seed=args.seed)}
    model = algo("MlpPolicy", venv, batch_size=args.batch_size, learning_starts=args.learning_starts,
                 gradient_steps=args.gradient_steps or args.num_envs, seed=args.seed, device=args.device, verbose=0,
                 **buffer, **extra)
    mode = "raw dream" if args.raw else "pessimistic dream"
    print(f"{args.algo.upper()} in the {mode} {args.env_id} (bundle {dynamics.bundle.path}): "
          f"{args.timesteps} dream steps, {args.num_envs} envs, horizon {args.horizon}, real data "
          f"{args.real_data or 'none'}")
    history: list[dict] = []

    class RealEval(BaseCallback):
        """Every ``--eval-every`` steps: real score next to the recent dream return (the exploitation gap)."""

        def __init__(self) -> None:
            super().__init__()
            self.next_eval = args.eval_every

        def _on_step(self) -> bool:
            if args.eval_every and self.num_timesteps >= self.next_eval:
                self.next_eval += args.eval_every
                lens: list[int] = []
                rets = evaluate_real(self.model, task.env_id, args.eval_episodes, args.seed + 10_000, lens)
                dream = [ep["r"] for ep in self.model.ep_info_buffer]
                row = {"step": int(self.num_timesteps), "real_score": float(task.normalized_score(np.mean(rets))),
                       "real_episode_length": float(np.mean(lens)),
                       "real_return_per_step": float(np.sum(rets) / max(1, sum(lens))),
                       "dream_return_per_step": float(np.sum(dream) / max(1, sum(
                           ep["l"] for ep in self.model.ep_info_buffer))) if dream else None}
                history.append(row)
                print(f"step {row['step']}: real score {row['real_score']:.1f} (length {row['real_episode_length']:.0f},"
                      f" {row['real_return_per_step']:.2f} per step), dream return per step "
                      f"{row['dream_return_per_step']}", flush=True)
            return True

    t0 = time.perf_counter()
    model.learn(total_timesteps=args.timesteps, callback=RealEval())
    learn_s = time.perf_counter() - t0
    dream_returns = [ep["r"] for ep in model.ep_info_buffer] if model.ep_info_buffer else []
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)

    t0 = time.perf_counter()
    returns = evaluate_real(model, task.env_id, args.final_episodes, seed=args.seed + 20_000)
    eval_s = time.perf_counter() - t0
    scores = task.normalized_score(np.asarray(returns))
    summary = {
        "algo": args.algo, "env_id": args.env_id, "real_env": task.env_id,
        "bundle": str(dynamics.bundle.path), "timesteps": args.timesteps, "num_envs": args.num_envs,
        "horizon": args.horizon, "seed": args.seed, "learn_seconds": learn_s, "eval_seconds": eval_s,
        "pessimism": not args.raw, "dream_kwargs": dream_kwargs, "real_data": args.real_data,
        "td3bc": ({"alpha": args.alpha, "exploration_noise": args.exploration_noise, "bc_rows": "real"}
                  if args.algo == "td3bc" else None),
        "real_fraction": args.real_fraction if args.real_data else 0.0, "history": history,
        "dream_episode_return_mean_last100": float(np.mean(dream_returns)) if dream_returns else None,
        "dream_return_per_step_last100": (float(np.sum(dream_returns) / sum(ep["l"] for ep in model.ep_info_buffer))
                                          if dream_returns else None),
        "final_episodes": args.final_episodes, "real_returns": returns,
        "real_return_mean": float(np.mean(returns)),
        "normalized_score_mean": float(scores.mean()), "normalized_score_std": float(scores.std()),
        "note": "real Hopper-v5 returns normalised with D4RL reference returns; not a D4RL number",
    }
    (out.parent / f"{out.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"learned in {learn_s:.0f} s; dream return (last episodes) "
          f"{summary['dream_episode_return_mean_last100']}")
    print(f"real {task.env_id}: return {summary['real_return_mean']:.1f} over {len(returns)} episodes, "
          f"normalised score {summary['normalized_score_mean']:.1f} +- {summary['normalized_score_std']:.1f}")
    print(f"saved {out}.zip and {out}.json")
    return summary


if __name__ == "__main__":
    main()
