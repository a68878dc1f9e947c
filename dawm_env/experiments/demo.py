"""``dawm demo``: the whole DAWM pipeline in minutes, offline, from the shipped Hopper bundle alone.

Stages (each reused when the demo is rerun with the same settings):

1. **seed pairs**: the bundle's stored real ``(s_t, a_t)`` pairs (``seeds.safetensors``) are written as a small
   qlearning-layout npz, one single-step episode per pair. The generator reads only ``(s_t, a_t)`` from it;
   the file's rewards (0) and next states (``s_t``) are placeholders, so it is not a dataset to train on.
2. **generate**: DAWM rollouts (world model + IDM actions, ``H`` transitions each) from those pairs, written
   with :func:`~dawm_env.generation.generate_dataset` as a Minari dataset in a Minari root *inside the run
   folder* (``OUT/minari``), so the demo never touches the user's datasets. Resumable chunk by chunk.
3. **train**: TD3+BC (K seeds at once) on the generated data only, evaluated periodically in the real
   ``-v5`` MuJoCo env. No real dataset is needed: the generated dataset records its task, so it is also the
   ``dataset`` of :class:`~dawm_env.agents.train.TrainAgentConfig` (observation normalisation from the generated data;
   TD3+BC does not normalise rewards). Resumes from its checkpoint.
4. **evaluate**: fresh real episodes of the final policies (:func:`~dawm_env.agents.train.evaluate_run`), then
   ``summary.md``, ``results.json`` and ``learning_curve.png`` in the run folder.

Scores are D4RL-normalised returns on ``Hopper-v5`` (x100); they are not D4RL v2 numbers.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from dawm_env.agents.train import (
    CURVES_FILE,
    EVALUATION_FILE,
    RESULTS_FILE as RUN_RESULTS,
    TrainAgentConfig,
    evaluate_run,
    train_agent,
)
from dawm_env.data.loading import save_npz
from dawm_env.data.minari_io import dataset_exists
from dawm_env.data.records import OfflineDataset
from dawm_env.experiments.report import format_score, markdown_table
from dawm_env.generation import GenerateConfig, generate_dataset, generation_stats
from dawm_env.paths import atomic_write_json, atomic_write_text, check_writable_dir, minari_root_at
from dawm_env.plotting import plot_learning_curves
from dawm_env.runtime import resolve_device
from dawm_env.world_model.bundle import Bundle

log = logging.getLogger(__name__)

SEEDS_FILE, RESULTS_FILE, SUMMARY_FILE, PLOT_FILE = "seed_pairs.npz", "results.json", "summary.md", "learning_curve.png"
MINARI_DIR, AGENT_DIR = "minari", "agents"


@dataclass
class DemoConfig:
    """Settings of ``dawm demo`` (one field per CLI flag). The defaults fit a few CPU-minutes (README: measured)."""

    out: str = "runs/dawm-demo"
    """Run folder: seed pairs, the generated Minari root, the agent run and the reports. Rerun to resume."""
    bundle: str = "hopper-medium"
    """Bundle name or folder (world model + IDM + seed pairs); the shipped Hopper bundle by default."""
    pairs: int = 4096
    """Seed pairs to roll out from (the first ``pairs`` of the bundle's stored ones, at most all of them)."""
    repeats: int = 2
    """Rollouts per seed pair, each with its own noise: ``pairs * repeats`` rollouts of ``horizon`` steps."""
    horizon: int = 7
    """H, generated transitions per rollout (the paper's 7)."""
    steps: int = 15_000
    """TD3+BC gradient steps per seed."""
    seeds: int = 2
    """Agent seeds, trained together in one process."""
    eval_every: Optional[int] = None
    """Evaluate in the real env every this many steps; None = ``steps // 8`` (8 points on the curve)."""
    eval_episodes: int = 5
    """Real episodes per seed per evaluation (and for the final evaluation)."""
    device: str = "cpu"
    """Torch device for generation and training (``cpu`` or ``cuda``)."""
    seed: int = 0
    """Generation seed and first agent seed."""
    threads: Optional[int] = None
    """torch CPU threads for generation and training (None: the process's setting stands)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        for name in ("pairs", "repeats", "horizon", "steps", "seeds", "eval_episodes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        resolve_device(self.device)  # --device cuda without CUDA: one line now, not after the generation stage

    @property
    def resolved_eval_every(self) -> int:
        """The evaluation period actually used."""
        return self.eval_every or max(1, self.steps // 8)


def write_seed_pairs(bundle, pairs: int, path: Path) -> int:
    """Write the first ``pairs`` stored seed pairs of ``bundle`` as a qlearning npz of single-step episodes.

    Only ``(s_t, a_t)`` are real: rewards are 0 and next states repeat ``s_t`` (the generator reads neither).

    Returns:
        The number of pairs written (``min(pairs, stored)``).
    """

    n = min(int(pairs), len(bundle.seed_states))
    obs = np.asarray(bundle.seed_states[:n], dtype=np.float32)
    data = OfflineDataset(
        task=bundle.task.name, observations=obs, actions=np.asarray(bundle.seed_actions[:n], dtype=np.float32),
        rewards=np.zeros(n, np.float32), next_observations=obs.copy(), terminations=np.zeros(n, bool),
        truncations=np.ones(n, bool), episode_offsets=np.arange(n + 1, dtype=np.int64),
        seeds=np.full(n, -1, np.int64), source=f"{bundle.path}/seeds.safetensors")
    save_npz(data, path)
    return n


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "bundle"


def generated_id(task: str, bundle_name: str, pairs: int, repeats: int, horizon: int, seed: int) -> str:
    """The demo's Minari id of the generated data (every setting that changes the data is in the name)."""
    return f"dawm-demo/{task}/{_slug(bundle_name)}-p{pairs}-r{repeats}-h{horizon}-s{seed}-v0"


def run_demo(cfg: DemoConfig, echo: Callable[[str], None] = print) -> dict:
    """Run (or resume) the demo; returns what it writes to ``results.json``.

    Args:
        cfg: the settings.
        echo: where stage messages go (the CLI passes ``typer.echo``).
    """
    import minari


    out = check_writable_dir(cfg.out, "--out").resolve()  # before any stage runs
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, object] = {}
    t0 = time.perf_counter()

    # 1. seed pairs from the bundle (cheap: always rewritten, so a changed --pairs is honoured)
    echo("[1/4] seed pairs from the bundle")
    bundle = Bundle.load(cfg.bundle)
    task = bundle.task
    seed_file = out / SEEDS_FILE
    n_pairs = write_seed_pairs(bundle, cfg.pairs, seed_file)
    bundle_path, bundle_name = bundle.path, bundle.path.name
    del bundle  # generation loads its own copy on the requested device
    echo(f"      {n_pairs} real (s, a) pairs of bundle {bundle_path} ({task.name})")

    with minari_root_at(out / MINARI_DIR):
        # 2. generated dataset
        gen_id = generated_id(task.name, bundle_name, n_pairs, cfg.repeats, cfg.horizon, cfg.seed)
        echo(f"[2/4] generate {n_pairs} x {cfg.repeats} rollouts of H = {cfg.horizon} -> {gen_id}")
        t, c = time.perf_counter(), time.process_time()
        if dataset_exists(gen_id):
            echo("      reusing the generated dataset of a previous run")
            timings["generate_seconds"] = "reused"
        else:
            generate_dataset(GenerateConfig(bundle=str(bundle_path), seed_dataset=str(seed_file), out=gen_id,
                                            horizon=cfg.horizon, repeats=cfg.repeats, device=cfg.device,
                                            seed=cfg.seed, threads=cfg.threads, progress=cfg.progress))
            timings["generate_seconds"] = time.perf_counter() - t
            timings["generate_cpu_seconds"] = time.process_time() - c
        gen_stats = generation_stats(gen_id).to_dict()
        for key in ("seed_reward_mean", "seed_reward_std"):  # the seed file's rewards are placeholders
            gen_stats.pop(key, None)
        gen_stats["transitions"] = int(minari.load_dataset(gen_id).total_steps)

        # 3. TD3+BC on the generated data only (its task and eval env come from the dataset's metadata)
        # one folder per (data, seeds, eval episodes): a changed setting starts a new run instead of refusing
        # to resume; a changed --steps continues the same run
        agent_dir = out / AGENT_DIR / f"td3bc-{gen_id.split('/')[-1][:-3]}-k{cfg.seeds}-e{cfg.eval_episodes}"
        echo(f"[3/4] TD3+BC, {cfg.seeds} seed(s) x {cfg.steps} steps on the generated data, evaluated in "
             f"{task.env_id} every {cfg.resolved_eval_every} steps")
        t, c = time.perf_counter(), time.process_time()
        prior = _read_json(agent_dir / RUN_RESULTS)
        train_agent(TrainAgentConfig(
            algo="td3bc", dataset=gen_id, out=str(agent_dir), steps=cfg.steps, seeds=cfg.seeds, seed=cfg.seed,
            eval_every=cfg.resolved_eval_every, eval_episodes=cfg.eval_episodes, device=cfg.device,
            threads=cfg.threads, progress=cfg.progress))
        reused = prior is not None and prior.get("steps") == cfg.steps
        timings["train_seconds"] = "reused" if reused else time.perf_counter() - t
        if not reused:
            timings["train_cpu_seconds"] = time.process_time() - c  # includes the periodic evaluations
        run_results = json.loads((agent_dir / RUN_RESULTS).read_text())
        curves = json.loads((agent_dir / CURVES_FILE).read_text())

    # 4. final evaluation on fresh episodes (a stream apart from the training-time evaluations)
    echo(f"[4/4] final evaluation: {cfg.eval_episodes} fresh {task.env_id} episode(s) per seed")
    t, c = time.perf_counter(), time.process_time()
    final = _read_json(agent_dir / EVALUATION_FILE)
    if final is not None and final.get("step") == cfg.steps and final.get("episodes") == cfg.eval_episodes:
        timings["evaluate_seconds"] = "reused"
    else:
        final = evaluate_run(agent_dir, episodes=cfg.eval_episodes, device=cfg.device)
        timings["evaluate_seconds"] = time.perf_counter() - t
        timings["evaluate_cpu_seconds"] = time.process_time() - c
    timings["total_seconds_this_call"] = time.perf_counter() - t0

    plot = plot_learning_curves({"DAWM-TD3BC (generated data only)": curves}, out / PLOT_FILE,
                                title=f"dawm demo: TD3+BC on DAWM data, {task.env_id}")
    results = {
        "config": asdict(cfg), "task": task.name, "env_id": task.env_id, "bundle": str(bundle_path),
        "seed_pairs": n_pairs, "generated_dataset": gen_id, "minari_root": str(out / MINARI_DIR),
        "generation": gen_stats, "agent_run": str(agent_dir),
        "last": run_results["last"], "best": run_results["best"], "final_evaluation": final["normalized"],
        "final_evaluation_episodes": final["episodes"], "steps_per_second_per_seed":
            run_results.get("steps_per_second_per_seed"), "timings": timings,
        "plot": plot.name if plot else None,
        "score_note": run_results.get("score_note"),
    }
    atomic_write_json(out / RESULTS_FILE, results)
    atomic_write_text(out / SUMMARY_FILE, demo_summary(results))
    echo(f"normalised score on {task.env_id} (final, {final['episodes']} fresh episodes x {cfg.seeds} seeds): "
         f"{final['normalized']['mean']:.1f} ± {final['normalized']['std']:.1f}")
    echo(f"summary: {out / SUMMARY_FILE}")
    return results


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _seconds(v: object) -> str:
    return f"{v:.0f} s" if isinstance(v, (int, float)) else str(v)


def demo_summary(results: dict) -> str:
    """The demo's ``summary.md`` from its ``results.json`` dict."""

    cfg, gen, tm = results["config"], results["generation"], results["timings"]
    rows = [
        ("last evaluation (training episodes)", format_score(results["last"]), results["last"]["step"]),
        ("best evaluation (training episodes)", format_score(results["best"]), "per seed"),
        (f"final ({results['final_evaluation_episodes']} fresh episodes per seed)",
         format_score(results["final_evaluation"]), cfg["steps"]),
    ]
    lines = [
        "# dawm demo",
        "",
        f"TD3+BC trained only on DAWM-generated data, evaluated in the real `{results['env_id']}` env.",
        "",
        markdown_table(["score (D4RL-normalised, x100; mean ± std over seeds)", "value", "step"], rows),
        "",
        "## What ran",
        "",
        f"- bundle: `{results['bundle']}` ({results['task']})",
        f"- seed pairs: {results['seed_pairs']} real (s, a) pairs stored in the bundle",
        f"- generated: `{results['generated_dataset']}` in `{results['minari_root']}`: "
        f"{gen.get('episodes', '?')} rollouts, {gen.get('transitions', '?')} transitions, H = {cfg['horizon']}, "
        f"{cfg['repeats']} rollout(s) per pair",
        f"- agent: TD3+BC, {cfg['seeds']} seed(s) x {cfg['steps']} gradient steps, evaluation every "
        f"{cfg['eval_every'] or max(1, cfg['steps'] // 8)} steps with {cfg['eval_episodes']} episode(s) per seed; "
        f"run folder `{results['agent_run']}`",
        f"- wall clock of this call: generation {_seconds(tm.get('generate_seconds'))}, training "
        f"{_seconds(tm.get('train_seconds'))}, final evaluation {_seconds(tm.get('evaluate_seconds'))}, total "
        f"{_seconds(tm.get('total_seconds_this_call'))}",
        "",
        f"![learning curve]({results['plot']})" if results.get("plot") else "(no plot: no evaluation recorded)",
        "",
        f"Note: {results.get('score_note') or 'D4RL-normalised scores on the -v5 env; not D4RL v2 numbers.'} "
        "A few minutes of CPU training is far from the paper's 1M steps: the demo shows the pipeline, not the "
        "paper's scores.",
        "",
    ]
    return "\n".join(lines)
