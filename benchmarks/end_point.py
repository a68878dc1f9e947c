"""Why does TD3+BC end where it ends? Compare the behaviour policy's modes with a trained agent's policy.

On the self-built hopper-medium data TD3+BC converges to ~35 normalised, below the data's own ~48. This script
measures, on the same reset seeds:

- the behaviour policy (the SAC actor the data was rolled out with) sampled (as the data was) and at its mean
  action ``tanh(mu)`` (deterministic);
- the data's action noise: dataset action minus the behaviour mean at the same state;
- for each seed of a trained agent run (``--run``): its actions on dataset states against the behaviour mean
  and against the dataset actions (is it cloning the mean?), and its return and episode length in the real env.

    python benchmarks/end_point.py --dataset dawm-d4rl/hopper/medium-v0 --run ~/.dawm/noise/td3bc-bf16 \
        --out benchmarks/results/end_point_hopper-medium.json
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import add_out_argument, save_results

from dawm_env.agents.evaluation import FINAL_STREAM, Evaluator, aggregate, reset_seeds
from dawm_env.agents.export import seed_policy
from dawm_env.agents.train import load_agent
from dawm_env.data.loading import load_dataset
from dawm_env.data.policies import default_policy_path, load_policy
from dawm_env.runtime import machine_info
from dawm_env.tasks import get_task


def episode_stats(task, policy, episodes: int, seed: int) -> dict:
    """Normalised score and length of ``episodes`` real episodes of a ``(1, N, obs) -> (1, N, act)`` policy."""
    with Evaluator(task, 1, episodes) as ev:
        returns = ev.returns(policy, [reset_seeds(seed, episodes, FINAL_STREAM)])[0]
        lengths = ev.steps[0].copy()
    return {"normalized": aggregate(task.normalized_score(returns)), "return_mean": float(returns.mean()),
            "length_mean": float(lengths.mean()), "full_length_fraction": float((lengths >= task.max_episode_steps).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--level", default="medium", help="level whose default behaviour policy made the data")
    ap.add_argument("--run", default=None, help="a dawm train agent run folder to compare")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--states", type=int, default=20_000, help="dataset states the actions are compared on")
    add_out_argument(ap, "end_point")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(args.dataset)
    task = get_task(data.task)
    behaviour = load_policy(default_policy_path(task, args.level), task)
    rng = np.random.default_rng(0)
    idx = rng.choice(data.num_transitions, size=min(args.states, data.num_transitions), replace=False)
    obs, act = data.observations[idx].astype(np.float32), data.actions[idx].astype(np.float32)
    mean_act = behaviour.act(obs, deterministic=True)
    noise = act - mean_act
    out: dict = {"benchmark": "end_point", "dataset": args.dataset, "task": task.name,
                 "behaviour_policy": str(default_policy_path(task, args.level).name), "episodes": args.episodes,
                 "data_episode_score": aggregate(task.normalized_score(data.episode_returns())),
                 "data_action_noise": {"std_per_dim": noise.std(0).tolist(), "rms": float(np.sqrt((noise**2).mean())),
                                       "action_rms": float(np.sqrt((act**2).mean()))}}
    gen = torch.Generator().manual_seed(7)

    def as_policy(fn):
        return lambda o, *_: fn(np.asarray(o, dtype=np.float32).reshape(-1, task.obs_dim))[None]

    out["behaviour_sampled"] = episode_stats(task, as_policy(lambda o: behaviour.act(o, generator=gen)),
                                             args.episodes, 0)
    out["behaviour_mean_action"] = episode_stats(
        task, as_policy(lambda o: behaviour.act(o, deterministic=True)), args.episodes, 0)
    if args.run:
        seeds = []
        agent, _ = load_agent(args.run)
        for member in agent.seeds:
            pol = seed_policy(agent, member)
            with torch.no_grad():
                a = pol(torch.from_numpy(obs)).numpy()
            seeds.append({"seed_member": member,
                          "mse_to_behaviour_mean": float(((a - mean_act) ** 2).mean()),
                          "mse_to_dataset_action": float(((a - act) ** 2).mean()),
                          **episode_stats(task, as_policy(lambda o, p=pol: p(torch.from_numpy(o)).numpy()),
                                          args.episodes, 0)})
        out["agent_run"], out["agent_seeds"] = args.run, seeds
        out["reference_mse_mean_to_dataset_action"] = float((noise**2).mean())
    out["machine"] = machine_info()
    print(f"behaviour sampled {out['behaviour_sampled']['normalized']['mean']:.1f}, mean action "
          f"{out['behaviour_mean_action']['normalized']['mean']:.1f}; data episodes "
          f"{out['data_episode_score']['mean']:.1f}; action noise rms {out['data_action_noise']['rms']:.3f}")
    for s in out.get("agent_seeds", []):
        print(f"seed {s['seed_member']}: {s['normalized']['mean']:.1f}, mse to behaviour mean "
              f"{s['mse_to_behaviour_mean']:.4f}, to dataset actions {s['mse_to_dataset_action']:.4f}")
    save_results(args.out, "end_point", out)


if __name__ == "__main__":
    main()
