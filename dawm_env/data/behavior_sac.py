"""Behaviour SAC run: D4RL's recipe for ``medium`` and ``medium-replay`` data.

D4RL trained SAC from scratch, stopped when the policy first reached about one third of the expert
return, used that policy for ``medium`` and the run's whole replay buffer for ``medium-replay``.
This module reproduces that with Stable-Baselines3 SAC (rl-zoo MuJoCo defaults: 256x256 MLPs,
lr 3e-4, batch 256, 10k random warm-up steps).

Every episode the agent plays is recorded by a wrapper (its reset seed included), so the replay
dataset is exact: terminations and time-limit truncations kept apart, the episode running when the
target is reached marked truncated. The run checkpoints at episode boundaries and a rerun resumes from
the last checkpoint.

No pickles: a checkpoint is a folder of safetensors files (SAC's actor / critic / critic-target weights, the
three optimisers' tensors, ``log_ent_coef``, torch's RNG state, the filled part of the replay buffer) plus
``meta.json`` (step / update / episode counters, optimiser hyper-parameters, numpy and action-space RNG
states, the evaluation history) and ``episodes.npz`` (our recorded episodes); it is restored into a freshly
constructed SB3 SAC. The checkpoint is taken after the step's gradient update, so a resumed run continues
exactly where the checkpointed one was.

Outputs in ``run_dir_for(cfg)`` (``behavior_run_dir(task, seed)`` for the default settings): ``policy.json`` + ``policy.safetensors`` (the medium policy's
actor, in the dawm policy format of :mod:`dawm_env.data.policies`), ``replay.npz`` (D4RL qlearning layout
plus timeouts, seeds and episode offsets) and ``run.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch

from dawm_env.checkpoint import (
    CheckpointError,
    load_tensors,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    read_meta,
    recover_checkpoint,
    save_tensors,
    staged_checkpoint,
)
from dawm_env.data.loading import load_npz, save_npz
from dawm_env.data.policies import save_sb3_actor, sb3_policy_fn
from dawm_env.data.records import OfflineDataset
from dawm_env.data.rollout import evaluate_returns
from dawm_env.paths import atomic_write_json, behavior_run_dir
from dawm_env.tasks import get_task

log = logging.getLogger(__name__)


@dataclass
class BehaviorSACConfig:
    """Configuration of one behaviour SAC run."""

    task: str = "hopper"
    """Task name (hopper / walker2d / halfcheetah)."""
    seed: int = 0
    """Seed of SAC and of the recorded episodes' resets (episode i uses ``seed * 10**6 + i``)."""
    target_fraction: float = 1.0 / 3.0
    """Stop once the stochastic policy's mean return reaches this fraction of D4RL's expert return."""
    max_steps: int = 1_000_000
    """Hard cap on environment steps; the run stops there even if the target was not reached."""
    learning_starts: int = 10_000
    """Uniform-random warm-up steps before the first gradient step (rl-zoo MuJoCo setting)."""
    eval_every: int = 5_000
    """Evaluate the stochastic policy every this many environment steps."""
    eval_episodes: int = 5
    """Episodes per evaluation (run in parallel)."""
    checkpoint_every_s: float = 300.0
    """Seconds between resumable checkpoints (taken at the next episode boundary)."""
    torch_threads: int = 1
    """torch intra-op threads (small nets: one thread per run is most efficient on 2 cores)."""


#: Settings that decide what a behaviour run produces (not how often it checkpoints or how many threads it uses).
RUN_IDENTITY = ("task", "seed", "target_fraction", "max_steps", "learning_starts", "eval_every", "eval_episodes")


def run_identity(cfg: BehaviorSACConfig) -> dict:
    """The settings of ``cfg`` that decide the run's result (task name canonical)."""
    d = asdict(cfg)
    d["task"] = get_task(cfg.task).name
    return {k: d[k] for k in RUN_IDENTITY}


def run_dir_for(cfg: BehaviorSACConfig) -> Path:
    """The run's folder: ``behavior_run_dir(task, seed)`` for the default settings, a folder of its own otherwise.

    A run with other settings (a 1000-step smoke test, another step cap) never shares a folder with the default
    run, so it can neither be reused in its place nor reuse it.
    """
    ident = run_identity(cfg)
    base = behavior_run_dir(ident["task"], cfg.seed)
    if ident == run_identity(BehaviorSACConfig(task=cfg.task, seed=cfg.seed)):
        return base
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    return base.with_name(f"{base.name}-{key}")


def _check_identity(found: Optional[dict], cfg: BehaviorSACConfig, where: Path) -> None:
    """Refuse a finished run or checkpoint in ``where`` that was made with other settings than ``cfg``."""
    want = run_identity(cfg)
    if found is None:
        return
    diff = {k: (found.get(k), want[k]) for k in want if found.get(k) != want[k]}
    if diff:
        raise ValueError(f"the behaviour run in {where} was made with other settings "
                         f"({', '.join(f'{k}={a!r}, wanted {b!r}' for k, (a, b) in diff.items())}); delete {where} "
                         "to start it afresh")


class _EpisodeRecorder(gym.Wrapper):
    """Records every transition; reseeds every reset with ``base_seed + episode_index``."""

    def __init__(self, env: gym.Env, base_seed: int, episodes: Optional[list[dict]] = None):
        super().__init__(env)
        self.base_seed = base_seed
        self.episodes: list[dict] = list(episodes or [])
        self.current: Optional[dict] = None

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        # SB3 passes its own seed on the first reset; we reseed every episode ourselves instead, so the
        # recorded per-episode seeds are exact.
        s = self.base_seed + len(self.episodes)
        obs, info = self.env.reset(seed=s, options=options)
        self.current = {"seed": s, "obs": [obs], "act": [], "rew": [], "term": [], "trunc": []}
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        cur = self.current
        cur["obs"].append(obs)
        cur["act"].append(np.asarray(action, dtype=np.float32))
        cur["rew"].append(float(reward))
        cur["term"].append(bool(terminated))
        cur["trunc"].append(bool(truncated))
        if terminated or truncated:
            self.episodes.append(cur)
            self.current = None
        return obs, reward, terminated, truncated, info

    def to_dataset(self, task: str, include_current: bool) -> OfflineDataset:
        eps = list(self.episodes)
        if include_current and self.current is not None and self.current["act"]:
            eps.append(self.current)  # cut by the stop: from_episodes marks it truncated
        return _episodes_to_dataset(task, eps)


def _episodes_to_dataset(task: str, eps: list[dict]) -> OfflineDataset:
    return OfflineDataset.from_episodes(
        task=task,
        observations=[np.asarray(e["obs"], dtype=np.float32) for e in eps],
        actions=[np.asarray(e["act"], dtype=np.float32) for e in eps],
        rewards=[np.asarray(e["rew"], dtype=np.float32) for e in eps],
        terminations=[np.asarray(e["term"]) for e in eps],
        truncations=[np.asarray(e["trunc"]) for e in eps],
        seeds=[e["seed"] for e in eps],
        source=f"behavior-sac:{task}",
    )


def _dataset_to_episodes(ds: OfflineDataset) -> list[dict]:
    out = []
    for e in range(ds.num_episodes):
        ep = ds.episode(e)
        out.append({"seed": ep.seed, "obs": list(ep.observations), "act": list(ep.actions),
                    "rew": list(ep.rewards), "term": list(ep.terminations), "trunc": list(ep.truncations)})
    return out


def _lock_run(run_dir: Path):
    """An exclusive lock on the run folder: two processes must never train the same run."""
    import fcntl

    fh = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise RuntimeError(f"another process is training the behaviour run in {run_dir}; wait for it to finish")
    return fh


CHECKPOINT_FORMAT = "dawm-behavior-sac-checkpoint"
CHECKPOINT_VERSION = 1
_OPTIMIZERS = ("actor", "critic", "ent_coef")
_BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _optimizers(model: Any) -> dict[str, Any]:
    opts = {"actor": model.actor.optimizer, "critic": model.critic.optimizer,
            "ent_coef": getattr(model, "ent_coef_optimizer", None)}
    return {k: v for k, v in opts.items() if v is not None}


def save_sac_state(model: Any, folder: Path, extra: Optional[dict] = None) -> None:
    """Write everything needed to continue training ``model`` (an SB3 SAC) into ``folder``, without pickles.

    Tensors go to safetensors (``policy``, ``optim_<name>``, ``misc``, ``replay``), the rest to ``meta.json``;
    ``extra`` (JSON) is stored in the meta under ``"run"``. The caller makes the folder appear atomically.
    """
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / "policy.safetensors", model.policy.state_dict())
    optim_meta = {}
    for name, opt in _optimizers(model).items():
        tensors, meta = optimizer_state_to_tensors(opt)
        save_tensors(folder / f"optim_{name}.safetensors", tensors)
        optim_meta[name] = meta
    misc = {"torch_rng": torch.get_rng_state()}
    if getattr(model, "log_ent_coef", None) is not None:
        misc["log_ent_coef"] = model.log_ent_coef.detach()
    save_tensors(folder / "misc.safetensors", misc)
    buf = model.replay_buffer
    if buf.optimize_memory_usage:
        raise ValueError("checkpointing a replay buffer with optimize_memory_usage=True is not supported")
    n = buf.buffer_size if buf.full else buf.pos  # only the filled part: the rest is zeros
    save_tensors(folder / "replay.safetensors", {k: torch.from_numpy(getattr(buf, k)[:n]) for k in _BUFFER_ARRAYS})
    np_state = np.random.get_state()
    meta = {
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
        "num_timesteps": int(model.num_timesteps), "n_updates": int(model._n_updates),
        "episode_num": int(model._episode_num), "learning_starts": int(model.learning_starts),
        "replay": {"pos": int(buf.pos), "full": bool(buf.full), "stored": int(n), "buffer_size": int(buf.buffer_size)},
        "optimizers": optim_meta,
        # SB3 samples warm-up actions from the action space's generator and replay batches from numpy's global one
        "numpy_rng": {"name": np_state[0], "keys": np_state[1].tolist(), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "action_space_rng": model.action_space.np_random.bit_generator.state,
        "run": extra or {},
    }
    atomic_write_json(folder / "meta.json", meta)


def load_sac_state(model: Any, folder: Path) -> dict:
    """Restore :func:`save_sac_state`'s folder into a freshly constructed SB3 SAC ``model``; returns ``"run"``.

    Raises:
        CheckpointError: the folder is not such a checkpoint or does not fit ``model``.
    """
    meta = read_meta(folder)
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{folder} is not a {CHECKPOINT_FORMAT} v{CHECKPOINT_VERSION} folder")
    if meta["learning_starts"] != model.learning_starts:
        raise CheckpointError(f"{folder} was made with learning_starts={meta['learning_starts']}, this run uses "
                              f"{model.learning_starts}; delete the run folder or use the same setting")
    try:
        model.policy.load_state_dict(load_tensors(folder / "policy.safetensors"))
    except RuntimeError as err:  # shape / key mismatch
        raise CheckpointError(f"{folder}: the saved SAC networks do not fit this run ({err})") from err
    opts = _optimizers(model)
    if set(opts) != set(meta["optimizers"]):
        raise CheckpointError(f"{folder}: saved optimisers {sorted(meta['optimizers'])} do not fit {sorted(opts)}")
    for name, opt in opts.items():
        optimizer_state_from_tensors(opt, load_tensors(folder / f"optim_{name}.safetensors"), meta["optimizers"][name])
    misc = load_tensors(folder / "misc.safetensors")
    if "log_ent_coef" in misc:
        with torch.no_grad():
            model.log_ent_coef.copy_(misc["log_ent_coef"])  # in place: the optimiser holds this tensor
    buf, rb = model.replay_buffer, meta["replay"]
    if rb["buffer_size"] != buf.buffer_size:
        raise CheckpointError(f"{folder}: replay buffer size {rb['buffer_size']} does not fit {buf.buffer_size}")
    arrays = load_tensors(folder / "replay.safetensors")
    for k in _BUFFER_ARRAYS:
        target = getattr(buf, k)
        src = arrays[k].numpy()
        if src.shape != (rb["stored"], *target.shape[1:]) or src.dtype != target.dtype:
            raise CheckpointError(f"{folder}: replay array {k} {src.shape} {src.dtype} does not fit {target.shape} "
                                  f"{target.dtype}")
        target[: rb["stored"]] = src
    buf.pos, buf.full = rb["pos"], rb["full"]
    model.num_timesteps, model._n_updates, model._episode_num = meta["num_timesteps"], meta["n_updates"], meta["episode_num"]
    torch.set_rng_state(misc["torch_rng"])
    r = meta["numpy_rng"]
    np.random.set_state((r["name"], np.asarray(r["keys"], dtype=np.uint32), r["pos"], r["has_gauss"],
                         r["cached_gaussian"]))
    model.action_space.np_random.bit_generator.state = meta["action_space_rng"]
    return meta["run"]


def _is_finished(run_dir: Path) -> bool:
    return (run_dir / "run.json").is_file() and (run_dir / "replay.npz").is_file()


def equivalent_finished_run(cfg: BehaviorSACConfig) -> Optional[Path]:
    """A finished run made with another step cap whose result is exactly what ``cfg`` would produce, or None.

    A run stops at the evaluation where its target is first reached, and nothing else it does depends on the
    cap (constant learning rate, same seed and settings), so a run that reached its target at step ``r`` is
    the result of every cap ``>= r``: the default run that reached its target at 300k serves a 500k-cap request
    (and a 500k-cap run that did serves the default one). Runs that stopped at their cap are never used.
    """
    want = {k: v for k, v in run_identity(cfg).items() if k != "max_steps"}
    base = behavior_run_dir(want["task"], cfg.seed)
    if not base.parent.is_dir():
        return None
    own = re.compile(re.escape(base.name) + r"(-[0-9a-f]{8})?")
    for folder in sorted(p for p in base.parent.iterdir() if own.fullmatch(p.name)):
        if folder == run_dir_for(cfg) or not _is_finished(folder):
            continue
        try:
            finished = json.loads((folder / "run.json").read_text())
            made, reached = dict(finished["config"]), finished["reached_target_at"]
            made["task"] = get_task(made["task"]).name
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # an unreadable or foreign record is simply not a match
        if (isinstance(reached, int) and reached <= cfg.max_steps and finished.get("steps") == reached
                and all(made.get(k) == v for k, v in want.items())):
            return folder
    return None


def run_behavior_sac(cfg: BehaviorSACConfig, progress: bool = True) -> Path:
    """Train (or resume, or reuse) the behaviour SAC run for ``cfg.task``; returns its folder.

    Safe to interrupt: rerunning resumes from the last checkpoint; a finished run is reused as is, and so is a
    finished run of another step cap that reached its target within this one's (:func:`equivalent_finished_run`).
    """
    run_dir = run_dir_for(cfg)  # checks the task name
    if _is_finished(run_dir):
        finished = json.loads((run_dir / "run.json").read_text())
        _check_identity({k: finished.get("config", {}).get(k) for k in RUN_IDENTITY}, cfg, run_dir)
        log.info("reusing finished behaviour run %s", run_dir)
        return run_dir
    same = equivalent_finished_run(cfg)
    if same is not None:
        log.info("reusing finished behaviour run %s: it reached its target within max_steps=%d", same, cfg.max_steps)
        return same
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_run(run_dir)
    threads = torch.get_num_threads()
    try:
        return _train_behavior_sac(cfg, run_dir, progress)
    finally:  # the run's thread count is its own: the caller's setting comes back
        torch.set_num_threads(threads)
        lock.close()


def _train_behavior_sac(cfg: BehaviorSACConfig, run_dir: Path, progress: bool) -> Path:
    """The body of :func:`run_behavior_sac`, under its lock: resume or start, train, write the outputs."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    task = get_task(cfg.task)
    ckpt = run_dir / "checkpoint"
    recover_checkpoint(ckpt)  # a swap cut by a kill is finished first, not mistaken for "no checkpoint"
    torch.set_num_threads(cfg.torch_threads)
    target = cfg.target_fraction * task.ref_max_score

    if (ckpt / "model.zip").is_file():  # written by an older dawm: a pickle, never loaded
        log.warning("ignoring the old pickle-based checkpoint in %s: the run starts over", ckpt)
        shutil.rmtree(ckpt)
    resume = (ckpt / "meta.json").is_file()
    episodes: list[dict] = []
    if resume and (ckpt / "episodes.npz").is_file():
        episodes = _dataset_to_episodes(load_npz(ckpt / "episodes.npz", task=task.name))
    recorder = _EpisodeRecorder(gym.make(task.env_id), base_seed=cfg.seed * 10**6, episodes=episodes)
    model = SAC("MlpPolicy", recorder, learning_starts=cfg.learning_starts, seed=cfg.seed, device="cpu")
    state: dict = {"history": [], "reached_at": None, "identity": run_identity(cfg)}
    if resume:
        state = load_sac_state(model, ckpt)
        _check_identity(state.get("identity"), cfg, run_dir)
        state["identity"] = run_identity(cfg)
        log.info("resumed behaviour run at step %d", model.num_timesteps)

    def save_checkpoint() -> None:
        # written under a temporary name and swapped in: a kill mid-write keeps the previous checkpoint
        with staged_checkpoint(ckpt) as tmp:
            save_sac_state(model, tmp, extra=state)
            if recorder.episodes:
                save_npz(_episodes_to_dataset(task.name, recorder.episodes), tmp / "episodes.npz")

    class _Control(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.last_ckpt = time.time()
            self.episode_ended = False

        def _on_step(self) -> bool:
            step = self.num_timesteps
            if step % cfg.eval_every == 0 and step >= cfg.learning_starts:
                rets = evaluate_returns(task, sb3_policy_fn(self.model), cfg.eval_episodes, seed=10**8 + step)
                state["history"].append({"step": step, "mean_return": float(rets.mean()),
                                         "normalized": float(task.normalized_score(rets.mean()))})
                log.info("step %d: stochastic return %.1f (target %.1f)", step, rets.mean(), target)
                if rets.mean() >= target:
                    state["reached_at"] = step
                    return False
            self.episode_ended = bool(self.locals["dones"][0])
            return True

        def _on_rollout_start(self) -> None:
            # the next step begins here: the last one's transition is stored and its gradient step taken, so a
            # checkpoint now is a clean cut (at an episode boundary, the next episode not yet started)
            if self.episode_ended and time.time() - self.last_ckpt > cfg.checkpoint_every_s:
                save_checkpoint()
                self.last_ckpt = time.time()
            self.episode_ended = False

    remaining = cfg.max_steps - model.num_timesteps
    if remaining > 0:
        model.learn(remaining, callback=_Control(), reset_num_timesteps=False, progress_bar=progress)
    save_sb3_actor(model, run_dir / "policy", source={
        "run": "dawm behaviour SAC", "task": task.name, "env_id": task.env_id, "seed": cfg.seed,
        "reached_target_at": state["reached_at"]})
    replay = recorder.to_dataset(task.name, include_current=True)
    save_npz(replay, run_dir / "replay.npz")
    summary = {
        "config": asdict(cfg), "steps": int(model.num_timesteps), "target_return": target,
        "reached_target_at": state["reached_at"], "eval_history": state["history"],
        "replay_transitions": replay.num_transitions, "replay_episodes": replay.num_episodes,
    }
    if state["reached_at"] is None:
        log.warning("behaviour run stopped at max_steps=%d without reaching return %.0f", cfg.max_steps, target)
    atomic_write_json(run_dir / "run.json", summary)  # written last: marks the run finished
    shutil.rmtree(ckpt, ignore_errors=True)
    return run_dir
