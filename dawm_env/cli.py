"""The ``dawm`` command line (Typer). Heavy imports happen inside commands so ``dawm --help`` is instant."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="dawm: Diffusion Action World Models for offline RL.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Build and inspect offline datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
train_app = typer.Typer(help="Train the world model and the inverse dynamics model.", no_args_is_help=True)
app.add_typer(train_app, name="train")
bundle_app = typer.Typer(help="Inspect trained bundles (world model + IDM).", no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")


#: What a command reports as one ``error:`` line instead of a traceback: bad settings and inputs (ValueError,
#: which CheckpointError extends) and what the filesystem refuses (OSError: missing files, permissions, a full disk).
_EXPECTED = (ValueError, OSError)
#: ``--threads`` of every command; the default is resolved by :func:`dawm_env.runtime.cli_threads`.
_THREADS_HELP = "torch CPU threads (default: $DAWM_THREADS, else torch's default: one per physical core)."
_TASK_HELP = "Task of --dataset (hopper, walker2d or halfcheetah); needed only for a file that does not record it."


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _print_version(value: bool) -> None:
    if value:
        from dawm_env import __version__

        typer.echo(f"dawm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
          version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@data_app.command("build")
def data_build(
    task: str = typer.Option(..., help="hopper, walker2d or halfcheetah."),
    level: str = typer.Option(..., help="random, medium, expert, medium-expert or medium-replay."),
    policy: Optional[str] = typer.Option(None, help="A dawm policy .json or an SB3 / sb3-contrib zip (read for its weights, never unpickled); overrides the level's default policy (medium, expert)."),
    steps: int = typer.Option(1_000_000, help="Transitions (per half for medium-expert; SAC step cap for medium-replay)."),
    seed: int = typer.Option(0, help="Seed of episode resets and policy sampling."),
    dataset_id: Optional[str] = typer.Option(None, "--id", help="Minari id to write (default dawm-d4rl/TASK/LEVEL-v0)."),
    num_envs: int = typer.Option(16, help="Environments stepped together."),
    overwrite: bool = typer.Option(False, help="Replace an existing dataset with this id."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Build a D4RL-style dataset by rolling out real MuJoCo policies; prints the Minari id."""
    from dawm_env.data.build import BuildConfig, build_dataset

    try:
        cfg = BuildConfig(task=task, level=level, policy=policy, steps=steps, seed=seed, dataset_id=dataset_id,
                          num_envs=num_envs, overwrite=overwrite)
        typer.echo(build_dataset(cfg, progress=progress))
    except _EXPECTED as err:
        _fail(err)


@data_app.command("info")
def data_info(
    source: str = typer.Argument(..., help="Minari id, D4RL hdf5 file or qlearning npz."),
    task: Optional[str] = typer.Option(None, help="Task, for files that do not record it."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Episodes, transitions, returns and mean normalised score of a dataset."""
    from dawm_env.data.loading import is_dataset_file, load_dataset
    from dawm_env.data.summary import summarize
    from dawm_env.generation.stats import generation_stats, is_generated_dataset
    from dawm_env.tasks import TASKS

    try:
        data = load_dataset(source, task=task)
        if not data.task:  # a D4RL hdf5 / npz that does not say which env it is from
            raise ValueError(f"{source} does not record its task (needed for the normalised score); pass --task, "
                             f"one of {', '.join(TASKS)}")
        summary = summarize(data)
        # generation records live in Minari metadata only: a file is never a `dawm generate` output
        generated = None if is_dataset_file(source) or not is_generated_dataset(source) else generation_stats(source)
    except _EXPECTED as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps({**summary.to_dict(), "generation": generated and generated.to_dict()}, indent=2))
    else:
        typer.echo(summary.format(rollouts=generated is not None))
        if generated is not None:
            typer.echo(generated.format())


@data_app.command("list")
def data_list() -> None:
    """List local Minari datasets, with dawm's build record where there is one (metadata only: fast)."""
    import minari

    from dawm_env.data.loading import prune_flat_caches
    from dawm_env.data.minari_io import read_provenance, restore_all_interrupted_overwrites

    try:
        restore_all_interrupted_overwrites()  # an --overwrite killed mid-swap: list the id, not a gap
        local = sorted(minari.list_local_datasets())
    except _EXPECTED as err:  # e.g. MINARI_DATASETS_PATH below a file
        _fail(err)
    try:
        prune_flat_caches()  # flat caches of deleted datasets (`minari delete`) only take disk space
    except OSError:  # an unreadable cache folder must not stop the listing
        pass
    typer.echo(f"{'dataset':44s} {'transitions':>11s} {'episodes':>8s} {'norm. score':>11s} {'build s':>8s}")
    for dataset_id in local:
        try:
            prov = read_provenance(dataset_id)
        except Exception as err:  # noqa: BLE001 - one unreadable dataset must not hide the others
            typer.echo(f"{dataset_id:44s} BROKEN: {type(err).__name__}: {err}")
            continue
        score = prov.get("mean_normalized_score")
        typer.echo(f"{dataset_id:44s} {prov.get('transitions', ''):>11} {prov.get('episodes', ''):>8} "
                   f"{'' if score is None else f'{score:.1f}':>11s} {prov.get('collect_seconds', ''):>8}")


@data_app.command("combine")
def data_combine(
    sources: list[str] = typer.Argument(..., help="Two or more local Minari ids of one task (e.g. real + generated)."),
    dataset_id: str = typer.Option(..., "--id", help="Minari id of the combined dataset."),
    overwrite: bool = typer.Option(False, help="Replace an existing dataset with this id."),
    description: Optional[str] = typer.Option(None, help="Free text (default: names the inputs)."),
) -> None:
    """Combine Minari datasets into one, keeping reference scores, eval env and dawm provenance; prints the id.

    minari.combine_datasets drops ref_min_score / ref_max_score and eval_env, so
    minari.get_normalized_score fails on its result; this writes the episodes in order, atomically.
    """
    from dawm_env.data.minari_io import combine_datasets

    try:
        typer.echo(combine_datasets(sources, dataset_id, overwrite=overwrite, description=description))
    except _EXPECTED as err:
        _fail(err)


@data_app.command("subset")
def data_subset(
    dataset: str = typer.Option(..., help="Source: a Minari id or a D4RL hdf5 / npz file."),
    fraction: float = typer.Option(..., help="Keep at least this fraction of the transitions, in whole episodes."),
    dataset_id: str = typer.Option(..., "--id", help="Minari id of the subset."),
    seed: int = typer.Option(0, help="Seed of the episode shuffle."),
) -> None:
    """Write a random fraction of a dataset's episodes as a new Minari dataset (the low-data regime); prints the id."""
    from dawm_env.data.subset import SubsetConfig, write_subset

    try:
        typer.echo(write_subset(SubsetConfig(dataset=dataset, fraction=fraction, dataset_id=dataset_id, seed=seed)))
    except _EXPECTED as err:
        _fail(err)


@app.command("generate")
def generate_cmd(
    bundle: str = typer.Option(..., help="Bundle name or folder (world model + IDM)."),
    seed_dataset: str = typer.Option(..., help="Real dataset whose (s_t, a_t) pairs start the rollouts."),
    out: str = typer.Option(..., help="Minari id of the generated dataset."),
    horizon: int = typer.Option(7, help="Generated transitions per rollout (1..the model's H)."),
    rtg: Optional[float] = typer.Option(None, help="Return-to-go target (default: top of the task's DWM range)."),
    guidance: Optional[float] = typer.Option(None, help="Guidance weight (default: the bundle's)."),
    subsample: int = typer.Option(1, help="DAWM-T: keep a random 1/T of the seed pairs."),
    repeats: int = typer.Option(1, help="Rollouts per seed pair, each with its own noise."),
    action_source: str = typer.Option(
        "idm", help="Actions of generated steps: idm (DAWM), random or repeat (the conditioning action; ablations)."),
    action_noise: float = typer.Option(
        0.0, help="Std of Gaussian noise added to each seed action before it conditions the world model (step 0 "
                  "then holds the model's outcome of a nearby action, not the real transition); 0 = the real action."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    shard: Optional[str] = typer.Option(None, help="i/n: generate shard i of n (they combine into one dataset)."),
    seed: int = typer.Option(0, help="Generation seed."),
    batch_size: int = typer.Option(4096, help="Rollouts per model call."),
    overwrite: bool = typer.Option(False, help="Replace an existing dataset with this id."),
    restart: bool = typer.Option(False, help="Discard a previous interrupted run instead of resuming it."),
    threads: Optional[int] = typer.Option(None, help=_THREADS_HELP),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Generate DAWM rollouts from a bundle as a Minari dataset (resumable; prints the id)."""
    from dawm_env.generation import GenerateConfig, generate_dataset
    from dawm_env.runtime import cli_threads

    try:
        dataset_id = generate_dataset(GenerateConfig(
            bundle=bundle, seed_dataset=seed_dataset, out=out, horizon=horizon, rtg=rtg, guidance=guidance,
            subsample=subsample, repeats=repeats, device=device, shard=shard, seed=seed, batch_size=batch_size,
            action_source=action_source, action_noise=action_noise, overwrite=overwrite, restart=restart,
            threads=cli_threads(threads), progress=progress))
    except _EXPECTED as err:
        _fail(err)
    typer.echo(dataset_id)


@train_app.command("world-model")
def train_world_model_cmd(
    dataset: str = typer.Option(..., help="Training data: Minari id, D4RL hdf5 or qlearning npz."),
    out: str = typer.Option(..., help="Output folder (a bundle once the IDM is trained into it too)."),
    preset: str = typer.Option("cpu", help="Model preset: cpu or paper."),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps (default: the preset's)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size per process (default: the preset's)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    seed: int = typer.Option(0, help="Training seed."),
    checkpoint_every: int = typer.Option(1000, help="Resumable checkpoint period (steps)."),
    eval_every: Optional[int] = typer.Option(
        None, help="Evaluate on held-out windows every this many steps (OUT/quality_curve.json)."),
    task: Optional[str] = typer.Option(None, help=_TASK_HELP),
    threads: Optional[int] = typer.Option(None, help=_THREADS_HELP),
    bf16: Optional[bool] = typer.Option(None, "--bf16/--fp32", help="bfloat16 autocast (default: on CUDA only)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train (or resume) the diffusion world model; rerun the same command to resume after a kill."""
    from dawm_env.runtime import cli_threads
    from dawm_env.training.world_model import WorldModelTrainConfig, train_world_model
    from dawm_env.world_model.assemble import assemble_bundle

    try:
        path = train_world_model(WorldModelTrainConfig(
            dataset=dataset, out=out, preset=preset, steps=steps, batch_size=batch_size, device=device, seed=seed,
            checkpoint_every=checkpoint_every, eval_every=eval_every, task=task, threads=cli_threads(threads),
            progress=progress, bf16=bf16))
        if assemble_bundle(path) is not None:
            typer.echo(f"bundle ready: {path}")
    except _EXPECTED as err:
        _fail(err)
    typer.echo(str(path))


def _parse_sizes(text: str, flag: str) -> tuple[int, ...]:
    """``"256,256"`` -> ``(256, 256)``; a ValueError naming ``flag`` and the expected form otherwise."""
    try:
        return tuple(int(h) for h in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated layer sizes, e.g. 1024,1024; got {text!r}") from None


@train_app.command("idm")
def train_idm_cmd(
    dataset: str = typer.Option(..., help="Training data: Minari id, D4RL hdf5 or qlearning npz."),
    out: str = typer.Option(..., help="Output folder (shared with the world model)."),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps (default 20000)."),
    hidden: Optional[str] = typer.Option(None, help="Hidden sizes, comma separated (default 1024,1024)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (default 1024)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    seed: int = typer.Option(0, help="Training seed."),
    task: Optional[str] = typer.Option(None, help=_TASK_HELP),
    threads: Optional[int] = typer.Option(None, help=_THREADS_HELP),
    bf16: Optional[bool] = typer.Option(None, "--bf16/--fp32", help="bfloat16 autocast (default: on CUDA only)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train (or resume) the inverse dynamics model; keeps the best validation checkpoint."""
    from dawm_env.planner.bundle import assemble_planner_bundle
    from dawm_env.runtime import cli_threads
    from dawm_env.training.idm import IDMTrainConfig, train_idm
    from dawm_env.world_model.assemble import assemble_bundle

    try:
        sizes = _parse_sizes(hidden, "--hidden") if hidden else None
        path = train_idm(IDMTrainConfig(dataset=dataset, out=out, steps=steps, hidden=sizes, batch_size=batch_size,
                                        device=device, seed=seed, task=task, threads=cli_threads(threads),
                                        progress=progress, bf16=bf16))
        if assemble_bundle(path) is not None:
            typer.echo(f"bundle ready: {path}")
        if assemble_planner_bundle(path) is not None:
            typer.echo(f"planner bundle ready: {path}")
    except _EXPECTED as err:
        _fail(err)
    typer.echo(str(path))


@train_app.command("dd")
def train_dd_cmd(
    dataset: str = typer.Option(..., help="Training data: Minari id, D4RL hdf5 or qlearning npz."),
    out: str = typer.Option(..., help="Output folder (a planner bundle once the IDM is trained into it too)."),
    preset: str = typer.Option("cpu", help="Planner preset: cpu or paper (Decision Diffuser's locomotion setting)."),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps (default: the preset's)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size per process (default: the preset's)."),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="Override a planner config field, e.g. --set horizon=16 (repeatable)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    seed: int = typer.Option(0, help="Training seed."),
    checkpoint_every: int = typer.Option(1000, help="Resumable checkpoint period (steps)."),
    eval_every: Optional[int] = typer.Option(
        None, help="Evaluate plans on held-out windows every this many steps (OUT/dd_quality_curve.json)."),
    task: Optional[str] = typer.Option(None, help=_TASK_HELP),
    threads: Optional[int] = typer.Option(None, help=_THREADS_HELP),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train (or resume) the Decision Diffuser planner's diffusion model; then `dawm train idm` into OUT."""
    from dawm_env.planner.bundle import assemble_planner_bundle
    from dawm_env.planner.config import DDConfig
    from dawm_env.runtime import cli_threads
    from dawm_env.training.dd import DDTrainConfig, train_dd

    try:
        overrides = _parse_fields(set_, "--set")
        DDConfig.preset(preset, **overrides)  # unknown fields / bad values: one line before any data is read
        path = train_dd(DDTrainConfig(
            dataset=dataset, out=out, preset=preset, overrides=overrides, steps=steps, batch_size=batch_size,
            device=device, seed=seed, checkpoint_every=checkpoint_every, eval_every=eval_every, task=task,
            threads=cli_threads(threads), progress=progress))
        if assemble_planner_bundle(path) is not None:
            typer.echo(f"planner bundle ready: {path}")
        else:
            typer.echo(f"next: dawm train idm --dataset {dataset} --out {path}")
    except _EXPECTED as err:
        _fail(err)
    typer.echo(str(path))


@train_app.command("agent")
def train_agent_cmd(
    algo: str = typer.Option(..., help="td3bc, iql, dwm-td3bc, dwm-iql, ssorl-td3bc or ssorl-iql."),
    dataset: str = typer.Option(..., help="Real dataset (Minari id, D4RL hdf5 or npz): data, normaliser, eval env."),
    synthetic: Optional[str] = typer.Option(
        None, help="Generated dataset (dawm generate) to train on; dwm-* read its rollouts' states and rewards."),
    recipe: str = typer.Option(
        "recommended", help="How td3bc / iql use a --synthetic dataset from dawm generate: recommended (half of each "
                            "batch real, the actor clones real actions only) or paper (generated data only)."),
    real_fraction: Optional[float] = typer.Option(
        None, help="With --synthetic or --online: fraction of each batch from real data (default: the recipe's)."),
    trust_keep: Optional[float] = typer.Option(
        None, help="With --synthetic: keep only this fraction of the IDM-inferred transitions, lowest IDM std first."),
    trust_signal: str = typer.Option(
        "idm_std", help="How --trust-keep ranks: idm_std, or random (the control: as many transitions at random)."),
    bc_real_actions_only: Optional[bool] = typer.Option(
        None, "--bc-real-actions-only/--bc-all-actions",
        help="With --synthetic (td3bc, iql): the actor clones only real actions, or every action (default: the "
             "recipe's)."),
    bf16: bool = typer.Option(False, help="bfloat16 autocast for the agent's matmuls (faster on AVX512-BF16 CPUs)."),
    bundle: Optional[str] = typer.Option(None, help="Bundle: SSORL's IDM, or the generator of --online."),
    ssorl_fraction: float = typer.Option(0.5, help="SSORL: fraction of trajectories whose actions the IDM relabels."),
    mve_horizon: Optional[int] = typer.Option(
        None, help="dwm-*: value-expansion steps (default: the whole generated rollout)."),
    online: bool = typer.Option(
        False, help="Train on transitions generated on the fly from --bundle (the paper's Algorithm 1)."),
    online_pool: int = typer.Option(20_000, help="--online: rollouts kept in the generated pool."),
    online_refresh_every: int = typer.Option(1000, help="--online: regenerate one block of the pool every N steps."),
    steps: int = typer.Option(1_000_000, help="Gradient steps per seed."),
    seeds: int = typer.Option(5, help="Seeds, trained together in one process."),
    seed: int = typer.Option(0, help="First seed."),
    eval_every: int = typer.Option(5000, help="Evaluate in the real env every this many steps."),
    eval_episodes: int = typer.Option(10, help="Real episodes per evaluation and seed."),
    out: str = typer.Option(..., help="Run folder (rerun the same command to resume)."),
    task: Optional[str] = typer.Option(None, help=_TASK_HELP),
    level: Optional[str] = typer.Option(
        None, help="D4RL level of --dataset, for CORL's per-level IQL settings (default: from the dataset's name)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help=_THREADS_HELP),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train an offline agent (several seeds at once) and evaluate it in the real MuJoCo env."""
    from dawm_env.agents.train import TrainAgentConfig, train_agent
    from dawm_env.runtime import cli_threads

    try:
        path = train_agent(TrainAgentConfig(
            algo=algo, dataset=dataset, out=out, synthetic=synthetic, recipe=recipe, real_fraction=real_fraction,
            trust_keep=trust_keep, trust_signal=trust_signal, bc_real_actions_only=bc_real_actions_only,
            algo_overrides={"bf16": True} if bf16 else {}, steps=steps,
            seeds=seeds, seed=seed, eval_every=eval_every, eval_episodes=eval_episodes, bundle=bundle,
            ssorl_fraction=ssorl_fraction, mve_horizon=mve_horizon, online=online, online_pool=online_pool,
            online_refresh_every=online_refresh_every, task=task, level=level, device=device,
            threads=cli_threads(threads), progress=progress))
    except _EXPECTED as err:
        _fail(err)
    typer.echo(str(path))


@app.command("evaluate")
def evaluate_cmd(
    run_dir: str = typer.Argument(..., help="Agent run folder."),
    episodes: int = typer.Option(10, help="Real episodes per seed."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
) -> None:
    """Evaluate a trained agent run in the real MuJoCo env; prints and saves the normalised scores."""
    from dawm_env.agents.train import evaluate_run

    try:
        result = evaluate_run(run_dir, episodes=episodes, device=device)
    except _EXPECTED as err:
        _fail(err)
    typer.echo(json.dumps(result, indent=2))


@app.command("evaluate-planner")
def evaluate_planner_cmd(
    bundle: str = typer.Argument(..., help="Planner bundle name or folder (dawm train dd + dawm train idm)."),
    episodes: int = typer.Option(10, help="Real episodes per planning seed."),
    seeds: int = typer.Option(1, help="Planning seeds (sampling noise and episodes differ; one trained planner)."),
    seed: int = typer.Option(0, help="First planning seed."),
    rtg: Optional[float] = typer.Option(None, help="Target return-to-go over the task scale (default: the config's)."),
    guidance: Optional[float] = typer.Option(None, help="Guidance weight w (default: the config's)."),
    sampling_steps: Optional[int] = typer.Option(None, help="Reverse diffusion steps (default: the config's)."),
    out: Optional[str] = typer.Option(None, help="Folder for evaluation.json (default: print only)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help=_THREADS_HELP),
) -> None:
    """Evaluate a Decision Diffuser planner in the real MuJoCo env (re-plans every step); normalised scores."""
    from dawm_env.agents.planner import evaluate_planner
    from dawm_env.runtime import cli_threads, setup_torch

    try:
        setup_torch(device, cli_threads(threads))
        result = evaluate_planner(bundle, episodes=episodes, seeds=seeds, seed=seed, device=device, rtg=rtg,
                                  guidance=guidance, sampling_steps=sampling_steps, out=out)
    except _EXPECTED as err:
        _fail(err)
    summary = {k: v for k, v in result.items() if k not in ("episode_returns", "episode_steps")}
    typer.echo(json.dumps(summary, indent=2))


@app.command("export")
def export_cmd(
    run_dir: str = typer.Argument(..., help="Agent run folder (dawm train agent --out)."),
    out: str = typer.Option(..., help="TorchScript file to write (never overwritten)."),
    seed: Optional[int] = typer.Option(None, help="Which seed's policy (default: the first)."),
) -> None:
    """Export one seed's policy as TorchScript: torch.jit.load(OUT)(obs) -> actions, no dawm needed to run it."""
    from dawm_env.agents.export import export_torchscript

    try:
        typer.echo(str(export_torchscript(run_dir, out, seed=seed)))
    except _EXPECTED as err:
        _fail(err)


@app.command("demo")
def demo_cmd(
    out: str = typer.Option("runs/dawm-demo", help="Run folder (rerun the same command to resume / reuse)."),
    bundle: str = typer.Option("hopper-medium", help="Bundle name or folder (default: the shipped Hopper bundle)."),
    pairs: int = typer.Option(4096, help="Seed (s, a) pairs of the bundle to roll out from (at most the stored ones)."),
    repeats: int = typer.Option(2, help="Rollouts per seed pair."),
    horizon: int = typer.Option(7, help="Generated transitions per rollout."),
    steps: int = typer.Option(15_000, help="TD3+BC gradient steps per seed."),
    seeds: int = typer.Option(2, help="Agent seeds, trained together."),
    eval_every: Optional[int] = typer.Option(None, help="Evaluation period in steps (default: steps / 8)."),
    eval_episodes: int = typer.Option(5, help="Real episodes per seed per evaluation."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    seed: int = typer.Option(0, help="Generation seed and first agent seed."),
    threads: Optional[int] = typer.Option(None, help=_THREADS_HELP),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Offline, from the shipped bundle alone: generate DAWM data, train TD3+BC on it, score it in real Hopper-v5."""
    from dawm_env.experiments.demo import DemoConfig, run_demo
    from dawm_env.runtime import cli_threads

    try:
        run_demo(DemoConfig(out=out, bundle=bundle, pairs=pairs, repeats=repeats, horizon=horizon, steps=steps,
                            seeds=seeds, eval_every=eval_every, eval_episodes=eval_episodes, device=device, seed=seed,
                            threads=cli_threads(threads), progress=progress), echo=typer.echo)
    except _EXPECTED as err:
        _fail(err)


def _split_list(values: Optional[list[str]]) -> Optional[tuple[str, ...]]:
    """Repeated and / or comma-separated option values -> tuple (None when not given)."""
    if not values:
        return None
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


def _parse_overrides(values: Optional[list[str]], what: str) -> dict[str, str]:
    """``TASK/LEVEL=VALUE`` options -> ``{"TASK/LEVEL": VALUE}``."""
    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or "/" not in key or not value:
            raise ValueError(f"--{what} {item!r}: expected TASK/LEVEL=VALUE, e.g. hopper/medium=path")
        out[key.strip()] = value.strip()
    return out


def _parse_fields(values: Optional[list[str]], flag: str) -> dict[str, object]:
    """``FIELD=VALUE`` options -> ``{"FIELD": value}``: JSON values (``horizon=16``, ``dim_mults=[1,2,4]``,
    ``clip_denoised=null``), anything else a string (``dd_preset=cpu``)."""
    out: dict[str, object] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{flag} {item!r}: expected FIELD=VALUE, e.g. {flag} horizon=16")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:  # a bare word: a string (--set dd_preset=cpu)
            out[key.strip()] = value.strip()
    return out


@app.command("experiment")
def experiment_cmd(
    name: str = typer.Argument(..., help="table2, table3, table4, table5, table6, ablation-idm, augment, confirm, lowdata or consistency."),
    preset: str = typer.Option("cpu", help="Budget: smoke (seconds), cpu (2 CPU cores), screen (augment's lever screen), confirm (its confirmation), lowdata or paper."),
    tasks: Optional[list[str]] = typer.Option(None, help="Tasks (repeat or comma-separate; default: the preset's)."),
    levels: Optional[list[str]] = typer.Option(None, help="Levels (repeat or comma-separate; default: the preset's)."),
    seeds: Optional[int] = typer.Option(None, help="Agent seeds per cell (default: the preset's)."),
    steps: Optional[int] = typer.Option(None, help="Agent gradient steps per seed (default: the preset's)."),
    eval_every: Optional[int] = typer.Option(None, help="Evaluation period in steps (default: the preset's)."),
    eval_episodes: Optional[int] = typer.Option(None, help="Real episodes per seed per evaluation."),
    out: Optional[str] = typer.Option(None, help="Output root (default $DAWM_HOME/experiments/PRESET)."),
    dataset: Optional[list[str]] = typer.Option(
        None, help="TASK/LEVEL=SOURCE: the real data of that task and level, a Minari id or a D4RL hdf5 / npz file "
                   "(repeatable)."),
    bundle: Optional[list[str]] = typer.Option(None, help="TASK/LEVEL=BUNDLE: use this bundle (repeatable)."),
    max_cells: Optional[int] = typer.Option(None, help="Run at most this many unfinished cells, then stop."),
    method: Optional[list[str]] = typer.Option(
        None, help="Run only the cells of this method (its table label, e.g. 'mix 50% real'; repeatable); the "
                   "others stay pending."),
    import_: Optional[list[str]] = typer.Option(
        None, "--import", help="A results.json (e.g. a copy in benchmarks/results/experiments): its finished cells "
                               "count here when their keys match (repeatable)."),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="Override any preset field, e.g. --set dd_steps=5000 --set horizons=[1,3] (repeatable)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(
        None, help="torch CPU threads (default: $DAWM_THREADS, else the preset's, else torch's default)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Run (or resume) one of the paper's experiments; writes results.json, table.md and plots.

    Several processes may run the same command at once (e.g. a Slurm array): they share the cells."""
    from dataclasses import replace

    from dawm_env.experiments.presets import ExperimentPreset, get_preset
    from dawm_env.experiments.runner import ExperimentConfig, run_experiment
    from dawm_env.runtime import cli_threads

    try:
        overrides = {k: v for k, v in dict(tasks=_split_list(tasks), levels=_split_list(levels), seeds=seeds,
                                           agent_steps=steps, eval_every=eval_every, eval_episodes=eval_episodes,
                                           threads=cli_threads(threads)).items() if v is not None}
        fields = _parse_fields(set_, "--set")
        unknown = sorted(set(fields) - set(ExperimentPreset.field_names()) - {"name"})
        if unknown or "name" in fields:
            raise ValueError(f"--set: unknown preset field(s) {unknown or ['name']}; valid: "
                             f"{', '.join(f for f in ExperimentPreset.field_names() if f != 'name')}")
        overrides.update({k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        cfg = ExperimentConfig(name=name, preset=replace(get_preset(preset), **overrides), out=out,
                               datasets=_parse_overrides(dataset, "dataset"),
                               bundles=_parse_overrides(bundle, "bundle"),
                               max_cells=max_cells, device=device, progress=progress,
                               import_reports=tuple(import_ or ()), methods=tuple(method or ()))
        results = run_experiment(cfg, echo=typer.echo)
    except _EXPECTED as err:
        _fail(err)
    folder = f"{results['root']}/{results['experiment']}"
    typer.echo((Path(folder) / "table.md").read_text())
    typer.echo(f"results: {folder}/results.json")
    if not results["complete"]:
        typer.secho(f"incomplete: {results['counts']}; rerun the same command to continue", fg=typer.colors.YELLOW,
                    err=True)
        raise typer.Exit(code=1)


@bundle_app.command("list")
def bundle_list() -> None:
    """List bundles (world model + IDM) and Decision Diffuser planners, shipped and under $DAWM_HOME/bundles."""
    from dawm_env.planner.bundle import scan_planners
    from dawm_env.world_model.bundle import scan_bundles

    for kind, found in (("world model", scan_bundles()), ("DD planner", scan_planners())):
        for path, meta, problem in found:
            if meta is None:  # a broken folder is listed with its reason; the others are still listed
                typer.echo(f"{path.name:24s} {kind:12s} {'BROKEN':12s} {problem}")
                continue
            typer.echo(f"{path.name:24s} {kind:12s} {str(meta['task']):12s} {str(meta.get('dataset', '?')):36s} "
                       f"{path}")


@bundle_app.command("info")
def bundle_info(name: str = typer.Argument(..., help="Bundle name or folder.")) -> None:
    """Print a bundle's (or a DD planner's) task, data, configs and held-out metrics."""
    from dawm_env.planner.bundle import PlannerBundle, is_planner_folder, resolve_planner
    from dawm_env.world_model.bundle import Bundle

    try:
        try:
            planner_dir = resolve_planner(name)
        except FileNotFoundError:
            planner_dir = None
        if planner_dir is not None and is_planner_folder(planner_dir):
            planner = PlannerBundle.load(planner_dir)
            meta = {k: v for k, v in planner.meta.items() if k != "norm_stats"}
            typer.echo(f"planner bundle: {planner.path}")
            typer.echo(json.dumps(meta, indent=2))
            return
        bundle = Bundle.load(name)
    except _EXPECTED as err:
        _fail(err)
    meta = dict(bundle.meta)
    meta.pop("norm_stats", None)
    if bundle.pessimism is not None:
        meta["pessimism"] = bundle.pessimism.to_dict()
    typer.echo(f"bundle: {bundle.path}")
    typer.echo(json.dumps(meta, indent=2))


@bundle_app.command("pack")
def bundle_pack(
    name: str = typer.Argument(..., help="Bundle name or folder."),
    out: str = typer.Option(..., help="New folder for the packed copy (must not exist)."),
    dtype: str = typer.Option("float16", help="Storage dtype of the weights: float16 or bfloat16."),
    dataset: Optional[str] = typer.Option(None, help="The bundle's training data (default: the id in bundle.json)."),
) -> None:
    """Copy a bundle with half-precision weights (half the size); re-measures its held-out metrics."""
    from dawm_env.data.loading import load_dataset
    from dawm_env.world_model.assemble import pack_bundle
    from dawm_env.world_model.bundle import read_bundle_meta

    try:
        data = load_dataset(dataset) if dataset else None
        path = pack_bundle(name, Path(out), dtype=dtype, data=data)
        meta = read_bundle_meta(path)
    except _EXPECTED as err:
        _fail(err)
    packing = meta["packing"]
    typer.echo(f"measured on {packing['dataset']} ({'held-out episodes of the training data' if packing['training_data'] else 'data the bundle was not trained on'}):")
    for key in ("state_mse_mean", "reward_mae", "idm_action_mae", "action_consistency_mae", "mujoco_one_step_mse"):
        typer.echo(f"{key:>24}: float32 {packing['float32'][key]:.5f} -> {dtype} {packing['packed'][key]:.5f}")
    typer.echo(str(path))


@bundle_app.command("calibrate")
def bundle_calibrate(
    name: str = typer.Argument(..., help="Bundle name or folder (must be writable)."),
    dataset: Optional[str] = typer.Option(None, help="Real data of the bundle's task (default: its training data, "
                                                     "held-out episodes only)."),
    transitions: int = typer.Option(20_000, help="Real transitions to measure."),
    seed: int = typer.Option(0, help="Which transitions, and the sampling noise."),
) -> None:
    """Measure the dream's uncertainty on real transitions; write the pessimism defaults (pessimism.json)."""
    from dawm_env.data.loading import load_dataset
    from dawm_env.paths import check_writable_dir
    from dawm_env.world_model.assemble import write_calibration
    from dawm_env.world_model.bundle import Bundle

    try:
        if transitions < 1:
            raise ValueError(f"--transitions must be >= 1, got {transitions}")
        bundle = Bundle.load(name)
        check_writable_dir(bundle.path, "bundle folder")
        data = load_dataset(dataset or bundle.meta["dataset"], task=bundle.task.name)
        path = write_calibration(bundle, data, transitions=transitions, seed=seed)
    except _EXPECTED as err:
        _fail(err)
    cal = Bundle.load(name).pessimism
    for signal, c in cal.signals.items():
        typer.echo(f"{signal:>13}: real p50 {c.percentiles['p50']:.4f}  p99 {c.percentiles['p99']:.4f}  "
                   f"rank corr. with error {c.error_correlation:.3f}  -> penalty_coef {c.penalty_coef:.3f}, "
                   f"halt_threshold {c.halt_threshold:.4f}")
    typer.echo(str(path))


if __name__ == "__main__":  # pragma: no cover
    app()
