"""Benchmark: gradient steps/s per seed of dawm's multi-seed TD3+BC / IQL vs a straightforward single-seed one.

The reference (:class:`ReferenceTD3BC`, :class:`ReferenceIQL`) is what one writes from CORL's single-file
implementations: ``nn.Sequential`` MLPs, one ``nn.Module`` per critic, one default ``torch.optim.Adam`` per
network, a replay buffer of five tensors indexed with ``np.random.randint``, a loop over ``soft_update``.
Same networks (256 x 256 ReLU MLPs), same batch size, same losses; ``tests/test_agents.py`` checks that one
dawm step equals one reference step per seed.

dawm trains K seeds in one process (batched ``(K, in, out)`` weights, one fused Adam, one multi-tensor
target update, K batches in one gather). Reported per configuration: steps/s of the whole process and
**per seed** (= K x steps/s), from wall-clock time and from process CPU time (CPU time is robust to other
jobs on the machine; wall time is what a user sees on an idle machine), and the speed-up of dawm per seed
over the reference. The load average is recorded: on a busy machine wall-clock figures are not meaningful.

What to expect on a CPU: one TD3+BC step at batch 256 is about 0.4 GFLOP of 256-wide matmuls (about 11.5
MLP forward passes: 3 for the target, 6 for the twin critics' forward + backward, 2.5 for the delayed actor
step), IQL about 15. The single-seed reference already runs these at roughly half of one core's fp32 matmul
peak, and batched ``bmm`` forward + backward reaches about 75% of it, so in fp32 batching seeds can win at most
about 1.5x per seed per core; ``--bf16`` (AVX512-BF16 / AMX) roughly doubles matmul throughput. Most of the
multi-seed gain is expected where a single seed is bound by per-kernel overhead rather than FLOPs: GPUs, and
more cores than one seed's small matmuls can use.

Saves a new JSON file (``--out``, default ``benchmarks/results/runs/agent_speed-<UTC time>.json``).

    python benchmarks/agent_speed.py --threads 2 --seeds 1 5 10 --steps 300
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from datetime import datetime, timezone
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from _common import add_out_argument, save_results  # benchmarks/ is on sys.path when a script runs
from torch import nn

HOPPER_OBS, HOPPER_ACT = 11, 3


# --- the straightforward single-seed reference (CORL style) -------------------------------------------
def mlp(in_dim: int, out_dim: int, hidden: int = 256, tanh: bool = False) -> nn.Sequential:
    """``in -> 256 -> 256 -> out`` ReLU MLP, optional tanh output (CORL's networks)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                               nn.Linear(hidden, out_dim)]
    if tanh:
        layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class Critic(nn.Module):
    """Q(s, a) -> (B, 1)."""

    def __init__(self, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1)

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([s, a], 1))


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """CORL's per-parameter Polyak update."""
    for tp, sp in zip(target.parameters(), source.parameters()):
        tp.data.copy_((1 - tau) * tp.data + tau * sp.data)


class ReplayBuffer:
    """Five tensors, uniform ``np.random.randint`` indices (CORL's buffer). Data must be pre-normalised."""

    def __init__(self, obs: np.ndarray, act: np.ndarray, rew: np.ndarray, next_obs: np.ndarray, done: np.ndarray,
                 seed: int = 0) -> None:
        self.s, self.a = torch.as_tensor(obs), torch.as_tensor(act)
        self.r, self.ns = torch.as_tensor(rew).reshape(-1, 1), torch.as_tensor(next_obs)
        self.d = torch.as_tensor(done, dtype=torch.float32).reshape(-1, 1)
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> list[torch.Tensor]:
        idx = self.rng.integers(0, len(self.s), batch_size)
        return [self.s[idx], self.a[idx], self.r[idx], self.ns[idx], self.d[idx]]


class ReferenceTD3BC:
    """Single-seed TD3+BC exactly as CORL's ``td3_bc.py`` computes it."""

    def __init__(self, obs_dim: int, act_dim: int, alpha: float = 2.5, discount: float = 0.99, tau: float = 0.005,
                 policy_noise: float = 0.2, noise_clip: float = 0.5, policy_freq: int = 2, lr: float = 3e-4) -> None:
        self.actor = mlp(obs_dim, act_dim, tanh=True)
        self.critic_1, self.critic_2 = Critic(obs_dim, act_dim), Critic(obs_dim, act_dim)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_1_target, self.critic_2_target = copy.deepcopy(self.critic_1), copy.deepcopy(self.critic_2)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_1_optimizer = torch.optim.Adam(self.critic_1.parameters(), lr=lr)
        self.critic_2_optimizer = torch.optim.Adam(self.critic_2.parameters(), lr=lr)
        self.alpha, self.discount, self.tau = alpha, discount, tau
        self.policy_noise, self.noise_clip, self.policy_freq = policy_noise, noise_clip, policy_freq
        self.total_it = 0

    def train(self, batch: list[torch.Tensor], noise: Optional[torch.Tensor] = None) -> dict[str, float]:
        """One step; ``noise`` (B, act_dim) standard normal replaces ``randn_like`` when given (for tests)."""
        self.total_it += 1
        state, action, reward, next_state, done = batch
        with torch.no_grad():
            noise = torch.randn_like(action) if noise is None else noise
            noise = (noise * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
            next_action = (self.actor_target(next_state) + noise).clamp(-1.0, 1.0)
            target_q = torch.min(self.critic_1_target(next_state, next_action),
                                 self.critic_2_target(next_state, next_action))
            target_q = reward + (1 - done) * self.discount * target_q
        critic_loss = (F.mse_loss(self.critic_1(state, action), target_q)
                       + F.mse_loss(self.critic_2(state, action), target_q))
        self.critic_1_optimizer.zero_grad()
        self.critic_2_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_1_optimizer.step()
        self.critic_2_optimizer.step()
        out = {"critic_loss": critic_loss.item()}
        if self.total_it % self.policy_freq == 0:
            pi = self.actor(state)
            q = self.critic_1(state, pi)
            lmbda = self.alpha / q.abs().mean().detach()
            actor_loss = -lmbda * q.mean() + F.mse_loss(pi, action)
            self.actor_optimizer.zero_grad()
            actor_loss.backward()
            self.actor_optimizer.step()
            soft_update(self.critic_1_target, self.critic_1, self.tau)
            soft_update(self.critic_2_target, self.critic_2, self.tau)
            soft_update(self.actor_target, self.actor, self.tau)
            out["actor_loss"] = actor_loss.item()
        return out


class ReferenceIQL:
    """Single-seed IQL exactly as CORL's ``iql.py`` computes it (deterministic or Gaussian actor)."""

    def __init__(self, obs_dim: int, act_dim: int, deterministic: bool = False, beta: float = 3.0,
                 expectile: float = 0.7, discount: float = 0.99, tau: float = 0.005, lr: float = 3e-4,
                 max_steps: int = 1_000_000) -> None:
        self.q1, self.q2 = mlp(obs_dim + act_dim, 1), mlp(obs_dim + act_dim, 1)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        for p in (*self.q1_target.parameters(), *self.q2_target.parameters()):
            p.requires_grad_(False)
        self.vf = mlp(obs_dim, 1)
        self.actor = mlp(obs_dim, act_dim, tanh=True)
        self.deterministic = deterministic
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        actor_params = list(self.actor.parameters()) + ([] if deterministic else [self.log_std])
        self.q_optimizer = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=lr)
        self.v_optimizer = torch.optim.Adam(self.vf.parameters(), lr=lr)
        self.actor_optimizer = torch.optim.Adam(actor_params, lr=lr)
        self.actor_lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_optimizer, max_steps)
        self.beta, self.expectile, self.discount, self.tau = beta, expectile, discount, tau

    def train(self, batch: list[torch.Tensor]) -> dict[str, float]:
        """One step (CORL's order: V, then Q and its target, then the actor)."""
        s, a, r, ns, d = batch
        r, d = r.squeeze(-1), d.squeeze(-1)
        with torch.no_grad():
            next_v = self.vf(ns).squeeze(-1)
            sa = torch.cat([s, a], 1)
            target_q = torch.min(self.q1_target(sa), self.q2_target(sa)).squeeze(-1)
        v = self.vf(s).squeeze(-1)
        adv = target_q - v
        v_loss = torch.mean(torch.abs(self.expectile - (adv < 0).float()) * adv**2)
        self.v_optimizer.zero_grad()
        v_loss.backward()
        self.v_optimizer.step()
        targets = r + (1.0 - d) * self.discount * next_v
        q_loss = (F.mse_loss(self.q1(sa).squeeze(-1), targets) + F.mse_loss(self.q2(sa).squeeze(-1), targets)) / 2
        self.q_optimizer.zero_grad()
        q_loss.backward()
        self.q_optimizer.step()
        soft_update(self.q1_target, self.q1, self.tau)
        soft_update(self.q2_target, self.q2, self.tau)
        exp_adv = torch.exp(self.beta * adv.detach()).clamp(max=100.0)
        mean = self.actor(s)
        if self.deterministic:
            bc = torch.sum((mean - a) ** 2, dim=1)
        else:
            std = torch.exp(self.log_std.clamp(-20.0, 2.0))
            bc = -torch.distributions.Normal(mean, std).log_prob(a).sum(-1)
        policy_loss = torch.mean(exp_adv * bc)
        self.actor_optimizer.zero_grad()
        policy_loss.backward()
        self.actor_optimizer.step()
        self.actor_lr_schedule.step()
        return {"value_loss": v_loss.item(), "q_loss": q_loss.item(), "actor_loss": policy_loss.item()}


# --- timing ----------------------------------------------------------------------------------------------
def fake_hopper_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random hopper-shaped transitions (speed does not depend on the values)."""
    rng = np.random.default_rng(seed)
    return {"obs": rng.standard_normal((n, HOPPER_OBS)).astype(np.float32),
            "act": rng.uniform(-1, 1, (n, HOPPER_ACT)).astype(np.float32),
            "rew": rng.standard_normal(n).astype(np.float32),
            "next_obs": rng.standard_normal((n, HOPPER_OBS)).astype(np.float32),
            "done": (rng.random(n) < 0.01)}


def time_steps(step: Callable[[int], None], steps: int, warmup: int) -> dict[str, float]:
    """Run ``warmup`` untimed then ``steps`` timed calls ``step(i)``; wall and process-CPU steps/s."""
    for i in range(warmup):
        step(i)
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(warmup, warmup + steps):
        step(i)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"wall_steps_per_s": steps / wall, "cpu_steps_per_s": steps / cpu, "wall_s": wall, "cpu_s": cpu}


def bench_reference(algo: str, data: dict, batch_size: int, steps: int, warmup: int) -> dict[str, float]:
    """Steps/s of the single-seed reference."""
    torch.manual_seed(0)
    buf = ReplayBuffer(data["obs"], data["act"], data["rew"], data["next_obs"], data["done"])
    ref = ReferenceTD3BC(HOPPER_OBS, HOPPER_ACT) if algo == "td3bc" else ReferenceIQL(HOPPER_OBS, HOPPER_ACT)
    return time_steps(lambda i: ref.train(buf.sample(batch_size)), steps, warmup)


def bench_dawm(algo: str, data: dict, k: int, batch_size: int, steps: int, warmup: int, bf16: bool) -> dict[str, float]:
    """Steps/s of dawm's K-seed agent, sampling through a :class:`~dawm_env.agents.sources.DatasetSource` as training does."""
    from dawm_env.agents.iql import IQL, IQLConfig
    from dawm_env.agents.networks import Normalizer
    from dawm_env.agents.sources import DatasetSource
    from dawm_env.agents.td3bc import TD3BC, TD3BCConfig
    from dawm_env.data.records import OfflineDataset
    from dawm_env.runtime import step_rngs

    n = len(data["obs"])
    truncations = np.zeros(n, bool)
    truncations[-1] = True  # one long episode cut at the end
    ds = OfflineDataset(task="hopper", observations=data["obs"], actions=data["act"], rewards=data["rew"],
                        next_observations=data["next_obs"], terminations=np.zeros(n, bool), truncations=truncations,
                        episode_offsets=np.array([0, n]), seeds=np.array([-1]), source="fake")
    source = DatasetSource(ds)
    norm = Normalizer(torch.zeros(HOPPER_OBS), torch.ones(HOPPER_OBS))
    seeds = list(range(k))
    if algo == "td3bc":
        agent = TD3BC(TD3BCConfig(bf16=bf16), HOPPER_OBS, HOPPER_ACT, seeds, norm)
    else:
        agent = IQL(IQLConfig(bf16=bf16), HOPPER_OBS, HOPPER_ACT, seeds, norm)
    gen = torch.Generator()

    def step(i: int) -> None:
        rng = step_rngs(0, 0, i, gen)
        agent.update(source.sample(k * batch_size, rng).reshape(k, batch_size), i, gen)

    return time_steps(step, steps, warmup)


def main() -> None:
    """Run and save the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", nargs="+", default=["td3bc", "iql"], choices=["td3bc", "iql"])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 5, 10], help="K values for dawm's batched agents")
    p.add_argument("--steps", type=int, default=300, help="timed gradient steps per configuration")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="also time dawm with bfloat16 autocast matmuls")
    p.add_argument("--data-size", type=int, default=200_000)
    p.add_argument("--label", default="", help="free text stored with the results (e.g. 'smoke run')")
    add_out_argument(p, "agent_speed")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    data = fake_hopper_data(args.data_size)
    load_before = os.getloadavg()
    rows = []
    for algo in args.algos:
        ref = bench_reference(algo, data, args.batch_size, args.steps, args.warmup)
        rows.append({"algo": algo, "impl": "reference", "seeds": 1, "bf16": False, **ref,
                     "wall_per_seed": ref["wall_steps_per_s"], "cpu_per_seed": ref["cpu_steps_per_s"]})
        for bf16 in ([False, True] if args.bf16 else [False]):
            for k in args.seeds:
                r = bench_dawm(algo, data, k, args.batch_size, max(1, args.steps // k), args.warmup, bf16)
                rows.append({"algo": algo, "impl": "dawm", "seeds": k, "bf16": bf16, **r,
                             "wall_per_seed": k * r["wall_steps_per_s"], "cpu_per_seed": k * r["cpu_steps_per_s"],
                             "speedup_wall_per_seed": k * r["wall_steps_per_s"] / ref["wall_steps_per_s"],
                             "speedup_cpu_per_seed": k * r["cpu_steps_per_s"] / ref["cpu_steps_per_s"]})
    load_after = os.getloadavg()

    print(f"{'algo':6} {'impl':9} {'K':>3} {'bf16':>5} {'wall st/s/seed':>15} {'cpu st/s/seed':>14} "
          f"{'x wall':>7} {'x cpu':>6}")
    for r in rows:
        print(f"{r['algo']:6} {r['impl']:9} {r['seeds']:>3} {str(r['bf16']):>5} {r['wall_per_seed']:>15.1f} "
              f"{r['cpu_per_seed']:>14.1f} {r.get('speedup_wall_per_seed', 1.0):>7.2f} "
              f"{r.get('speedup_cpu_per_seed', 1.0):>6.2f}")
    busy = max(load_before[0], load_after[0]) > args.threads + 0.5
    if busy:
        print(f"warning: load average {load_before[0]:.1f} / {load_after[0]:.1f} on {os.cpu_count()} cores: other "
              "jobs share the CPU, wall-clock figures are not meaningful (CPU-time figures are closer)")
    result = {
        "benchmark": "agent_speed", "label": args.label,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "threads": args.threads,
                    "loadavg_before": load_before, "loadavg_after": load_after, "busy": busy},
        "settings": {"steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
                     "data_size": args.data_size, "networks": "256x256 ReLU MLPs, hopper dims 11 / 3"},
        "notes": "per_seed = K x process steps/s; speedup = dawm per-seed / single-seed reference (same machine, "
                 "same run). dawm's K seeds run steps // K timed steps.",
        "rows": rows,
    }
    save_results(args.out, "agent_speed", result)


if __name__ == "__main__":
    main()
