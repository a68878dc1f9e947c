"""Train K seeds of TD3+BC or IQL on real, synthetic, on-the-fly generated or mixed data; evaluate a finished run.

Reads top to bottom: config -> data source -> normalisation -> agent -> (resume) -> loop with periodic
evaluation and checkpoints -> results.

Run folder (``OUT``)::

    config.json          the TrainAgentConfig, the resolved algorithm config, task, seeds, data fingerprints
    checkpoint/          resumable state: networks, target networks, normaliser and Adam states as safetensors,
                         step counter, learning curves and timings in meta.json (written atomically)
    curves.json          per-seed learning curves: normalised score (and returns) at every evaluation, losses
    results.json         last and best normalised score, mean and std over seeds (+ per seed)
    learning_curve.png   mean +- std over seeds
    tensorboard/         TensorBoard events: training losses (mean over seeds), evaluation scores (mean, per seed)
    evaluation.json      written by :func:`evaluate_run` (fresh episodes of the final policies)

Rerunning the same config resumes from ``checkpoint/`` and continues exactly as the uninterrupted run would:
every step's batch indices and noise come from generators keyed by ``(seed, step)``
(:func:`dawm_env.training.common.step_rngs`), and evaluations reuse fixed reset seeds.

Variants (``algo``):

- ``td3bc`` / ``iql``: on ``dataset``, on a ``synthetic`` dataset (DAWM: ``dawm generate`` output), on
  transitions generated on the fly from a ``bundle`` (``online``: the paper's Algorithm 1), or a mix;
- ``ssorl-*``: the real data with IDM-inferred actions on a fraction of the episodes;
- ``dwm-*``: DWM's Diffusion-MVE baseline: the critic is trained at every generated rollout's real
  ``(s_0, a_0)`` towards an n-step target over the generated rewards with a bootstrap at the generated
  ``s_n`` (:class:`~dawm_env.agents.sources.ValueExpansion`); the rollouts come from ``synthetic`` (a generated
  dataset) or are generated ``online``. Normalisation, reward scale and evaluation stay the real dataset's.

``dawm train agent --algo td3bc --dataset ID|FILE [--task T] [--synthetic ID] [--steps N] [--seeds K] --out DIR``
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from dawm_env.agents.evaluation import (
    FINAL_EVALUATIONS,
    FINAL_STREAM,
    TRAINING_STREAM,
    Evaluator,
    aggregate,
    final_scores,
    reset_seeds,
)
from dawm_env.agents.iql import IQL, IQLConfig, corl_iql_preset
from dawm_env.agents.networks import Normalizer
from dawm_env.agents.sources import (
    TRUST_SIGNALS,
    DatasetSource,
    MixSource,
    OnlineGeneratedSource,
    RolloutSource,
    TransitionSource,
    ValueExpansion,
    corl_reward_scale,
    dataset_obs_moments,
    seek_source,
    source_obs_moments,
    ssorl_relabel,
    trust_mask,
)
from dawm_env.agents.td3bc import TD3BC, TD3BCConfig
from dawm_env.checkpoint import CheckpointError, TrainState, check_resumable, readable_checkpoint, recover_checkpoint
from dawm_env.data.loading import load_dataset
from dawm_env.data.minari_io import dataset_exists, read_provenance
from dawm_env.data.records import OfflineDataset
from dawm_env.generation.rollouts import RolloutConfig, RolloutGenerator, check_rtg
from dawm_env.generation.stats import is_generated_dataset, transition_idm_std
from dawm_env.generation.writer import bundle_hash
from dawm_env.paths import atomic_write_json, check_writable_dir
from dawm_env.plotting import plot_learning_curves
from dawm_env.runtime import resolve_device, setup_torch, step_rngs
from dawm_env.tasks import LEVELS, TaskSpec, get_task
from dawm_env.world_model.bundle import Bundle

log = logging.getLogger(__name__)

Agent = Union[TD3BC, IQL]
AlgoConfig = Union[TD3BCConfig, IQLConfig]
#: The two learners: agent class and config class.
ALGOS: dict[str, tuple[type, type]] = {"td3bc": (TD3BC, TD3BCConfig), "iql": (IQL, IQLConfig)}
#: Every trainable ``--algo`` and its learner. ``ssorl-*``: the real data with IDM-inferred actions on a
#: fraction of the episodes (:func:`~dawm_env.agents.sources.ssorl_relabel`); ``dwm-*``: DWM's value expansion over
#: generated rollouts (:class:`~dawm_env.agents.sources.RolloutSource`).
BASE_ALGO: dict[str, str] = {"td3bc": "td3bc", "iql": "iql", "ssorl-td3bc": "td3bc", "ssorl-iql": "iql",
                             "dwm-td3bc": "td3bc", "dwm-iql": "iql"}

CONFIG_FILE, CKPT_DIR, CURVES_FILE, RESULTS_FILE = "config.json", "checkpoint", "curves.json", "results.json"
TENSORBOARD_DIR = "tensorboard"
PLOT_FILE, EVALUATION_FILE = "learning_curve.png", "evaluation.json"


@dataclass(frozen=True)
class Recipe:
    """How one-step TD3+BC / IQL train on a DAWM dataset (``synthetic`` written by ``dawm generate``) unless a run
    sets ``real_fraction`` / ``bc_real_actions_only`` itself."""

    real_fraction: float
    """Share of every batch drawn from the real dataset."""
    bc_real_actions_only: bool
    """Whether the actor clones only real actions (each rollout's real first action and the real rows)."""


#: ``recommended``: half of every batch real, the actor cloning real actions only: of the recipes measured on all
#: three hopper levels the one that loses least to the real data (level on medium and medium-expert, -2.9 on
#: medium-replay; README, "Confirmation on held-out seeds"); ``paper``: the paper's (generated data only, every
#: action cloned), which loses on medium-replay (-5.5) and medium-expert (-59.4).
RECIPES: dict[str, Recipe] = {"recommended": Recipe(0.5, True), "paper": Recipe(0.0, False)}
#: The one-step learners a recipe (and ``bc_real_actions_only``) applies to.
RECIPE_ALGOS = ("td3bc", "iql")


@dataclass
class TrainAgentConfig:
    """How to train an offline agent (K seeds in one process)."""

    algo: str
    """``td3bc``, ``iql``, ``ssorl-td3bc``, ``ssorl-iql``, ``dwm-td3bc`` or ``dwm-iql``."""
    dataset: str
    """The real dataset (Minari id, D4RL hdf5 or qlearning npz): the task, the evaluation env, the reward
    normalisation and, with ``synthetic``, the real part of a mix."""
    out: str
    """Run folder; rerunning with the same folder resumes."""
    synthetic: Optional[str] = None
    """A synthetic (DAWM) dataset to train on, e.g. a Minari id written by ``dawm generate``. ``dwm-*``: the
    generated dataset whose rollouts give the value-expansion targets (required unless ``online``)."""
    recipe: str = "recommended"
    """How one-step ``td3bc`` / ``iql`` use a ``synthetic`` dataset written by ``dawm generate`` where
    ``real_fraction`` / ``bc_real_actions_only`` are unset (:data:`RECIPES`): ``recommended`` (half of every batch
    real, the actor cloning real actions only) or ``paper`` (generated data only, every action cloned). Other runs
    (``dwm-*``, ``online``, a custom source, a synthetic dataset from elsewhere) default to generated data only."""
    real_fraction: Optional[float] = None
    """With ``synthetic``, ``online`` (or a custom source): the fraction of every batch drawn from ``dataset``;
    None = the ``recipe``'s (0 where no recipe applies). Without: must be unset or 1."""
    trust_keep: Optional[float] = None
    """With a ``synthetic`` dataset written by ``dawm generate`` (one-step ``td3bc`` / ``iql``): train only on the
    fraction ``trust_keep`` of its IDM-inferred transitions with the lowest IDM std, plus every rollout's real first
    step (:func:`~dawm_env.agents.sources.trust_mask`); None = all of them."""
    trust_signal: str = "idm_std"
    """How ``trust_keep`` ranks the IDM-inferred transitions: ``idm_std`` (lowest first) or ``random`` (the control:
    as many transitions at random, seed 0)."""
    bc_real_actions_only: Optional[bool] = None
    """With a ``synthetic`` dataset written by ``dawm generate`` (``td3bc`` / ``iql``): the actor clones only each
    rollout's real first action (IDM std 0), TD3+BC's BC term and IQL's advantage-weighted regression alike; the
    critics (and TD3+BC's Q term) train on every transition; real rows of a mix are cloned as usual. None = the
    ``recipe``'s where it applies (not for data generated with ``--action-noise``: its first actions are not
    real), else False."""
    steps: int = 1_000_000
    """Gradient steps per seed."""
    seeds: int = 5
    """K, the number of seeds trained together."""
    seed: int = 0
    """First seed; the run's seeds are ``seed, ..., seed + K - 1``."""
    batch_size: int = 256
    """Transitions per seed per step."""
    eval_every: int = 5000
    """Evaluate every this many steps (and at the last step)."""
    eval_episodes: int = 10
    """Episodes per seed per evaluation."""
    checkpoint_every: Optional[int] = None
    """Write a resumable checkpoint every this many steps (default: ``eval_every``) and at the end."""
    log_every: int = 1000
    """Record losses every this many steps."""
    algo_overrides: dict = field(default_factory=dict)
    """Fields of :class:`TD3BCConfig` / :class:`IQLConfig` to override (e.g. ``{"alpha": 2.5}``)."""
    level: Optional[str] = None
    """Dataset level for CORL's per-dataset IQL settings; inferred from the dataset id when unset."""
    task: Optional[str] = None
    """Task of ``dataset`` (hopper, walker2d, halfcheetah): needed only for a file that does not record it (a D4RL
    hdf5, a plain qlearning npz); must agree with the data when it does."""
    bundle: Optional[str] = None
    """World-model bundle (name or folder); ``ssorl-*`` use its inverse dynamics model, ``online`` generates
    with it."""
    ssorl_fraction: float = 0.5
    """``ssorl-*``: fraction of the real episodes whose actions are replaced by IDM-inferred ones."""
    mve_horizon: Optional[int] = None
    """``dwm-*``: n of the n-step value-expansion target, ``n = min(mve_horizon, rollout length)`` generated
    rewards then a bootstrap at the generated ``s_n``; None = each rollout's whole length."""
    online: bool = False
    """Train on transitions generated on the fly from ``bundle`` (paper Algorithm 1) instead of a synthetic
    dataset: rollouts from the real dataset's ``(s_t, a_t)`` pairs in a pool, part of which is regenerated every
    ``online_refresh_every`` steps (:class:`~dawm_env.agents.sources.OnlineGeneratedSource`; ``dwm-*``: one n-step row
    per rollout). Resumes exactly (the pool is a function of the seed and the step)."""
    online_pool: int = 20_000
    """``online``: rollouts in the pool (up to ``online_horizon`` transitions each)."""
    online_refresh_every: int = 1000
    """``online``: regenerate one block of the pool every this many steps."""
    online_refresh_fraction: float = 0.1
    """``online``: fraction of the pool in one block (the pool is cut into ``round(1 / f)`` blocks, the
    oldest is regenerated at every refresh); 1 with ``online_refresh_every = 1`` is Algorithm 1 literally."""
    online_horizon: int = 7
    """``online``: H, transitions per generated rollout (at most the bundle's horizon; paper: 7)."""
    online_rtg: Optional[float] = None
    """``online``: return-to-go target ``g`` in the task's scaled units; None = the task's default
    (``max(task.gen_rtg_range)``)."""
    device: str = "cpu"
    """``cpu`` or ``cuda``."""
    threads: Optional[int] = None
    """torch CPU threads (None: the process's setting stands, torch's default unless the caller set one)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.algo not in BASE_ALGO:
            raise ValueError(f"unknown algo {self.algo!r}; implemented: {', '.join(BASE_ALGO)}")
        if self.task is not None:
            self.task = get_task(self.task).name  # an unknown task fails here, naming the known ones
        if self.level is not None and self.level not in LEVELS:
            raise ValueError(f"unknown level {self.level!r}; choose from {', '.join(LEVELS)}")
        if self.algo.startswith("ssorl-") and not self.bundle:
            raise ValueError(f"{self.algo} needs a bundle (its inverse dynamics model relabels the actions)")
        if self.is_dwm and self.synthetic is None and not self.online:
            raise ValueError(f"{self.algo} needs generated rollouts for its value-expansion targets: pass --synthetic "
                             "ID, a dataset written by dawm generate (or bundle=... with online=True)")
        if self.mve_horizon is not None and not self.is_dwm:
            raise ValueError(f"mve_horizon is a dwm-* setting; {self.algo} trains with one-step TD")
        if self.mve_horizon is not None and self.mve_horizon < 1:
            raise ValueError(f"mve_horizon must be >= 1, got {self.mve_horizon}")
        if self.online:
            if not self.bundle:
                raise ValueError("online generation needs a bundle (world model + IDM)")
            if self.synthetic is not None:
                raise ValueError("give either a synthetic dataset or online generation, not both")
            if self.algo.startswith("ssorl-"):
                raise ValueError(f"online generation is for td3bc, iql and dwm-*, not {self.algo}")
            for name in ("online_pool", "online_refresh_every", "online_horizon"):
                if int(getattr(self, name)) < 1:
                    raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
            if not 0.0 < self.online_refresh_fraction <= 1.0:
                raise ValueError(f"online_refresh_fraction must lie in (0, 1], got {self.online_refresh_fraction}")
        if not 0.0 <= self.ssorl_fraction <= 1.0:
            raise ValueError(f"ssorl_fraction must lie in [0, 1], got {self.ssorl_fraction}")
        for name in ("steps", "seeds", "batch_size", "eval_every", "eval_episodes", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        check_rtg(self.online_rtg, "online_rtg")
        if self.trust_keep is not None:
            if self.synthetic is None or self.is_dwm:
                raise ValueError("trust_keep filters the transitions of a --synthetic dataset for one-step td3bc / "
                                 f"iql; {self.algo} without --synthetic has none")
            if not 0.0 < self.trust_keep <= 1.0:
                raise ValueError(f"trust_keep must lie in (0, 1], got {self.trust_keep}")
        if self.trust_signal not in TRUST_SIGNALS:
            raise ValueError(f"unknown trust_signal {self.trust_signal!r}; choose one of {', '.join(TRUST_SIGNALS)}")
        if self.bc_real_actions_only and (self.synthetic is None or self.algo not in RECIPE_ALGOS):
            raise ValueError("bc_real_actions_only restricts the actor's cloning (TD3+BC's BC term, IQL's weighted "
                             "regression) to real actions of a --synthetic dataset; it needs --algo td3bc or iql with "
                             f"--synthetic (got {self.algo}, synthetic={self.synthetic})")
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        if self.real_fraction is not None and not 0.0 <= self.real_fraction <= 1.0:
            raise ValueError(f"real_fraction must lie in [0, 1], got {self.real_fraction}")
        valid = {f.name for f in fields(ALGOS[self.base_algo][1])}
        unknown = set(self.algo_overrides) - valid
        if unknown:
            raise ValueError(f"unknown {self.base_algo} settings {sorted(unknown)}; valid: {sorted(valid)}")

    @property
    def base_algo(self) -> str:
        """The learner: ``td3bc`` or ``iql``."""
        return BASE_ALGO[self.algo]

    @property
    def is_dwm(self) -> bool:
        """Whether this is a DWM value-expansion run (``dwm-*``)."""
        return self.algo.startswith("dwm-")

    @property
    def seed_list(self) -> list[int]:
        """The K agent seeds."""
        return list(range(self.seed, self.seed + self.seeds))


def infer_level(dataset: str) -> Optional[str]:
    """The D4RL level named in a dataset id or file name (``.../medium-replay-v0`` -> ``medium-replay``)."""
    name = Path(dataset).name.lower().replace("_", "-")
    for level in sorted(LEVELS, key=len, reverse=True):  # medium-replay before medium
        if level in name:
            return level
    return None


def resolve_algo_config(cfg: TrainAgentConfig, task: TaskSpec) -> AlgoConfig:
    """The algorithm config: CORL defaults (IQL: CORL's per-dataset preset), then ``algo_overrides``."""
    if cfg.base_algo == "td3bc":
        base: AlgoConfig = TD3BCConfig()
    else:
        base = corl_iql_preset(task.name, cfg.level or infer_level(cfg.dataset))
    overrides = dict(cfg.algo_overrides)
    if "hidden" in overrides:
        overrides["hidden"] = tuple(overrides["hidden"])
    return replace(base, **overrides)


def build_agent(algo: str, algo_cfg: AlgoConfig, obs_dim: int, act_dim: int, seeds: list[int],
                normalizer: Normalizer, device: torch.device | str, total_steps: int) -> Agent:
    """Instantiate the K-seed agent of ``algo`` (any name of :data:`BASE_ALGO`)."""
    agent_cls = ALGOS[BASE_ALGO[algo]][0]
    return agent_cls(algo_cfg, obs_dim, act_dim, seeds, normalizer, device, total_steps)


# --- data -------------------------------------------------------------------------------------------------
def build_source(cfg: TrainAgentConfig, real: OfflineDataset, device: torch.device,
                 custom: Optional[TransitionSource] = None,
                 discount: Optional[float] = None) -> tuple[TransitionSource, dict]:
    """The training source and a JSON description of it (fingerprints, mix fraction, SSORL relabelling,
    online generation, value expansion).

    Args:
        cfg: the run.
        real: the real dataset.
        device: where batches live.
        custom: a custom source (replaces ``synthetic`` / ``online``).
        discount: the agent's gamma; required for ``dwm-*`` (n-step targets).
    """
    desc: dict[str, Any] = {"dataset": cfg.dataset, "dataset_fingerprint": real.fingerprint(),
                            "dataset_transitions": real.num_transitions}
    expansion: Optional[ValueExpansion] = None
    if cfg.is_dwm:
        if discount is None:
            raise ValueError(f"{cfg.algo} needs the agent's discount for its n-step targets")
        expansion = ValueExpansion(discount, cfg.mve_horizon)
        desc["mve"] = {"horizon": cfg.mve_horizon, "discount": discount}
    if cfg.algo.startswith("ssorl-"):

        bundle = Bundle.load(cfg.bundle, device, expect_task=real.task)
        real, info = ssorl_relabel(real, bundle, cfg.ssorl_fraction, seed=cfg.seed)
        desc["ssorl"] = {"bundle": str(bundle.path), **info}
        log.info("SSORL: relabelled %d of %d episodes with the IDM (action MAE %.3f)", info["relabelled_episodes"],
                 real.num_episodes, info["idm_action_mae"])
    # dwm-*: the real rows are one-step rows beside n-step ones, so they carry discounts too
    real_src = DatasetSource(real, device, discount=expansion.discount if expansion else None)
    if custom is not None and (cfg.synthetic is not None or cfg.online):
        raise ValueError("give either a synthetic dataset / online generation or a custom source, not both")
    other: Optional[TransitionSource] = custom
    if custom is not None:
        desc["custom_source"] = type(custom).__name__
    elif cfg.online:
        other, desc["online"] = build_online_source(cfg, real, device, expansion)
    elif cfg.synthetic is not None:
        syn = load_dataset(cfg.synthetic, task=real.task or None)
        generated = _is_generated(cfg.synthetic)
        if expansion is not None and not generated:
            raise ValueError(f"{cfg.algo} needs a dataset written by dawm generate (one episode per rollout, "
                             f"starting at a real (s_t, a_t)); {cfg.synthetic} is not one")
        noisy = generated and bool(_action_noise(cfg.synthetic))
        # the recipe is measured for one-step td3bc / iql on dawm's own generated data; elsewhere generated data only
        recipe = RECIPES[cfg.recipe] if generated and cfg.algo in RECIPE_ALGOS else RECIPES["paper"]
        if cfg.real_fraction is None:
            cfg = replace(cfg, real_fraction=recipe.real_fraction)
        if cfg.bc_real_actions_only is None:
            cfg = replace(cfg, bc_real_actions_only=recipe.bc_real_actions_only and not noisy)
        uses_real_first_step = expansion is not None or cfg.trust_keep is not None or cfg.bc_real_actions_only
        if uses_real_first_step and noisy:
            raise ValueError(f"{cfg.synthetic} was generated with --action-noise: its rollouts' first steps are not "
                             f"real transitions, which {'dwm-*' if expansion is not None else 'trust_keep / bc_real_actions_only'} "
                             "relies on; generate it without --action-noise")
        if (syn.obs_dim, syn.act_dim) != (real.obs_dim, real.act_dim):
            raise ValueError(f"{cfg.synthetic}: obs/act dims {syn.obs_dim}/{syn.act_dim} do not match "
                             f"{cfg.dataset}'s {real.obs_dim}/{real.act_dim}")
        desc.update(synthetic=cfg.synthetic, synthetic_fingerprint=syn.fingerprint(),
                    synthetic_transitions=syn.num_transitions)
        if expansion is not None:
            rollouts = RolloutSource(syn, expansion, device)
            desc["mve"].update(rollouts=len(rollouts), mean_steps=float(rollouts.steps.mean()))
            other = rollouts
        elif cfg.trust_keep is not None or cfg.bc_real_actions_only:
            std = transition_idm_std(cfg.synthetic)
            if std.size != syn.num_transitions:
                raise ValueError(f"{cfg.synthetic}: {std.size} IDM std rows for {syn.num_transitions} transitions; "
                                 "the dataset is damaged, regenerate it")
            rows = weights = None
            if cfg.trust_keep is not None:
                keep = trust_mask(std, cfg.trust_keep, cfg.trust_signal)
                rows = np.flatnonzero(keep)
                desc["trust"] = {"keep": cfg.trust_keep, "kept_transitions": int(keep.sum())}
                if cfg.trust_signal != "idm_std":  # the default stays out: older runs resume with their records
                    desc["trust"]["signal"] = cfg.trust_signal
                log.info("trust filter: training on %d of %d generated transitions", int(keep.sum()), keep.size)
            if cfg.bc_real_actions_only:
                weights = (std <= 0.0).astype(np.float32)  # std 0: the rollout's real first action
                desc["bc_real_actions_only"] = {"cloned_transitions": int(weights.sum())}
            other = DatasetSource(syn, device, rows=rows, bc_weights=weights)
        else:
            other = DatasetSource(syn, device)
    if other is None:
        if cfg.real_fraction not in (None, 1.0):
            raise ValueError(f"real_fraction={cfg.real_fraction} needs a synthetic dataset (or a custom source) "
                             "to mix with")
        desc["real_fraction"] = 1.0
        return real_src, desc
    if (other.obs_dim, other.act_dim) != (real.obs_dim, real.act_dim):
        raise ValueError(f"custom source dims {other.obs_dim}/{other.act_dim} do not match the dataset's "
                         f"{real.obs_dim}/{real.act_dim}")
    frac = 0.0 if cfg.real_fraction is None else float(cfg.real_fraction)
    desc["real_fraction"] = frac
    return MixSource(real_src, other, frac), desc


def _is_generated(dataset: str) -> bool:
    """Whether ``dataset`` is a local Minari dataset written by ``dawm generate`` (False for files)."""

    try:
        return dataset_exists(dataset) and is_generated_dataset(dataset)
    except (ValueError, FileNotFoundError, OSError):
        return False


def _action_noise(dataset: str) -> float:
    """The ``--action-noise`` a dataset written by ``dawm generate`` was made with (0: its first steps are real)."""
    return float(read_provenance(dataset).get("rollout", {}).get("action_noise", 0.0))


def build_online_source(cfg: TrainAgentConfig, real: OfflineDataset, device: torch.device,
                        expansion: Optional[ValueExpansion]) -> tuple[OnlineGeneratedSource, dict]:
    """The ``online`` source: rollouts of ``cfg.bundle`` from ``real``'s pairs, and its JSON description.

    ``dwm-*`` never reads the actions of steps ``h >= 1``, so their rollouts skip the IDM (``action_source =
    "repeat"``).
    """

    bundle = Bundle.load(cfg.bundle, device, expect_task=real.task)
    rollout_cfg = RolloutConfig(horizon=cfg.online_horizon, rtg=cfg.online_rtg,
                                action_source="repeat" if expansion is not None else "idm")
    generator = RolloutGenerator(bundle, rollout_cfg)
    source = OnlineGeneratedSource(generator, real, cfg.online_pool, cfg.online_refresh_every,
                                   cfg.online_refresh_fraction, seed=cfg.seed, device=device, expansion=expansion)
    desc = {"bundle": str(bundle.path), "bundle_hash": bundle_hash(bundle.path), "pool_rollouts": cfg.online_pool,
            "refresh_every": cfg.online_refresh_every, "refresh_fraction": cfg.online_refresh_fraction,
            "blocks": source.num_blocks, "seed": cfg.seed, "rollout": generator.config.to_dict()}
    log.info("online generation: a pool of %d rollouts from %s, %d block(s), one regenerated every %d steps",
             cfg.online_pool, bundle.path, source.num_blocks, cfg.online_refresh_every)
    return source, desc


def build_normalizer(algo_cfg: AlgoConfig, source: TransitionSource, real: OfflineDataset,
                     task: TaskSpec, real_moments: bool = False) -> Normalizer:
    """Observation mean / std (+1e-3) and CORL's reward scale of the real data.

    The observation statistics are those of what the agent trains on (``source``), or of the real dataset
    with ``real_moments`` (``dwm-*``: the critic and actor inputs are real ``s_0``).
    """
    obs_dim = source.obs_dim
    if algo_cfg.normalize_states:
        m = dataset_obs_moments(real) if real_moments else source_obs_moments(source)
        mean, std = torch.as_tensor(m.mean, dtype=torch.float32), torch.as_tensor(m.std(), dtype=torch.float32)
    else:
        mean, std = torch.zeros(obs_dim), torch.ones(obs_dim)
    scale = corl_reward_scale(real, task.max_episode_steps) if algo_cfg.normalize_reward else 1.0
    return Normalizer(mean, std, scale)


# --- checkpoints ------------------------------------------------------------------------------------------
def agent_state(agent: Agent, step: int = 0, extra: Optional[dict] = None) -> TrainState:
    """The agent's resumable state: networks (incl. normaliser and targets) and optimisers."""
    return TrainState(modules=agent.networks(), optimizers=agent.optimizers(), step=step, extra=dict(extra or {}))


def save_checkpoint(path: Path, agent: Agent, step: int, run_meta: dict, extra: dict) -> None:
    """Atomically write networks, normaliser and optimiser states (safetensors) plus JSON metadata."""
    agent_state(agent, step, extra).save(path, run_meta)


def load_checkpoint(path: Path, agent: Agent, device: torch.device, with_optimizers: bool = True) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``agent``; returns its metadata."""
    return agent_state(agent).load(path, device, with_optimizers=with_optimizers)


#: Run settings that must match for a checkpoint to be resumed (``steps`` may grow).
RESUME_KEYS = ("algo", "algo_config", "task", "seeds", "batch_size", "data", "eval_episodes")


# --- training ---------------------------------------------------------------------------------------------
def train_agent(cfg: TrainAgentConfig, source: Optional[TransitionSource] = None,
                callback: Optional[Callable[[int, dict], None]] = None) -> Path:
    """Train (or resume) K seeds of ``cfg.algo``; returns the run folder.

    Args:
        cfg: the run.
        source: optional custom transition source; mixed with ``cfg.dataset`` at ``cfg.real_fraction``
            (default 0: the custom source only). It must be deterministic given the ``rng`` it is handed (and
            its ``seek``, if it has one) for a resume to be exact.
        callback: called as ``callback(steps_done, metrics)`` after every step (metrics: per-seed ``(K,)``
            tensors); raising from it stops the run, which resumes from its last checkpoint.
    """
    from tqdm.auto import tqdm

    device = setup_torch(cfg.device, cfg.threads)
    out = check_writable_dir(cfg.out, "--out")  # before loading data and training, not at the first checkpoint
    real = load_dataset(cfg.dataset, task=cfg.task)
    if not real.task:
        raise ValueError(f"{cfg.dataset} does not record its task; pass --task hopper, walker2d or halfcheetah")
    task = get_task(real.task)
    algo_cfg = resolve_algo_config(cfg, task)
    train_source, data_desc = build_source(cfg, real, device, source, discount=algo_cfg.discount)
    normalizer = build_normalizer(algo_cfg, train_source, real, task, real_moments=cfg.is_dwm)
    seeds, k, b = cfg.seed_list, cfg.seeds, cfg.batch_size
    agent = build_agent(cfg.algo, algo_cfg, real.obs_dim, real.act_dim, seeds, normalizer, device, cfg.steps)

    run_meta = {"algo": cfg.algo, "algo_config": algo_cfg.to_dict(), "task": task.name, "env_id": task.env_id,
                "obs_dim": real.obs_dim, "act_dim": real.act_dim, "seeds": seeds, "batch_size": b,
                "data": data_desc, "eval_episodes": cfg.eval_episodes, "steps": cfg.steps,
                "train_config": asdict(cfg)}
    ckpt = out / CKPT_DIR
    extra: dict[str, Any] = {"evals": [], "losses": [], "train_seconds": 0.0, "eval_seconds": 0.0}
    step = 0
    if recover_checkpoint(ckpt):  # a swap cut by a kill is finished first, not mistaken for "no checkpoint"
        check_resumable(ckpt, run_meta, RESUME_KEYS, out_hint=out)
        meta = load_checkpoint(ckpt, agent, device)
        step, extra = int(meta["step"]), meta["extra"]
        if meta["run"].get("steps") != cfg.steps and cfg.base_algo == "iql":
            log.warning("resuming IQL with a different step budget: the actor's cosine schedule changes")
        log.info("resumed %s from %s at step %d", cfg.algo, ckpt, step)
    seek_source(train_source, step)  # sources with state (online generation) continue where the run left off
    atomic_write_json(out / CONFIG_FILE, run_meta)

    ckpt_every = cfg.checkpoint_every or cfg.eval_every
    gen = torch.Generator(device=device)
    act_fn = _numpy_policy(agent, device)
    eval_seeds = [reset_seeds(s, cfg.eval_episodes, TRAINING_STREAM) for s in seeds]
    bar = tqdm(total=cfg.steps, initial=step, desc=f"{cfg.algo} x{k}", unit="step", disable=not cfg.progress)
    # purge_step: a resumed run drops events logged after its checkpoint, so curves never double back
    writer = SummaryWriter(str(out / TENSORBOARD_DIR), purge_step=step or None)
    t_start = time.perf_counter()
    with Evaluator(task, k, cfg.eval_episodes) as evaluator, writer:
        while step < cfg.steps:
            rng = step_rngs(cfg.seed, 0, step, gen)
            batch = train_source.sample(k * b, rng).reshape(k, b)
            metrics = agent.update(batch, step, gen)
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0:
                extra["losses"].append({"step": step, **{n: v.float().tolist() for n, v in metrics.items()}})
                for name, v in metrics.items():
                    writer.add_scalar(f"train/{name}", float(v.float().mean()), step)  # mean over the K seeds
            if step % cfg.eval_every == 0 or step == cfg.steps:
                extra["train_seconds"] += time.perf_counter() - t_start
                t_eval = time.perf_counter()
                returns, scores = evaluator.scores(act_fn, eval_seeds)
                extra["evals"].append({"step": step, "normalized": scores.mean(1).tolist(),
                                       "returns": returns.tolist()})
                extra["eval_seconds"] += time.perf_counter() - t_eval
                t_start = time.perf_counter()
                bar.set_postfix(score=f"{scores.mean():.1f}")
                writer.add_scalar("eval/normalized_score", float(scores.mean()), step)
                for s_i, s_score in zip(seeds, scores.mean(1)):
                    writer.add_scalar(f"eval/normalized_score_seed{s_i}", float(s_score), step)
                if not cfg.progress:  # no bar to show it: say it in the log
                    log.info("%s step %d/%d: normalised score %.1f +- %.1f over %d seeds", cfg.algo, step, cfg.steps,
                             scores.mean(1).mean(), scores.mean(1).std(), k)
                _write_curves(out, extra, seeds)
            if step % ckpt_every == 0 or step == cfg.steps:
                extra["train_seconds"] += time.perf_counter() - t_start
                save_checkpoint(ckpt, agent, step, run_meta, extra)
                t_start = time.perf_counter()
            if callback is not None:
                callback(step, metrics)
    bar.close()
    _write_curves(out, extra, seeds)
    results = _results(run_meta, extra, cfg.steps)
    results["plot"] = _plot(out, run_meta)
    atomic_write_json(out / RESULTS_FILE, results)
    return out


def _numpy_policy(agent: Agent, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    def act(obs: np.ndarray) -> np.ndarray:
        return agent.act(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
    return act


def _write_curves(out: Path, extra: dict, seeds: list[int]) -> None:
    evals = extra["evals"]
    curves = {
        "seeds": seeds,
        "steps": [e["step"] for e in evals],
        "normalized": {str(s): [e["normalized"][i] for e in evals] for i, s in enumerate(seeds)},
        "returns": {str(s): [e["returns"][i] for e in evals] for i, s in enumerate(seeds)},
        "losses": {"steps": [x["step"] for x in extra["losses"]],
                   **{name: {str(s): [x[name][i] for x in extra["losses"] if name in x] for i, s in enumerate(seeds)}
                      for name in sorted({n for x in extra["losses"] for n in x if n != "step"})}},
    }
    atomic_write_json(out / CURVES_FILE, curves)


def _results(run_meta: dict, extra: dict, steps: int) -> dict:
    evals = extra["evals"]
    if not evals:
        raise RuntimeError("no evaluation was recorded")
    scores = np.array([e["normalized"] for e in evals])  # (evaluations, K)
    best_idx = scores.argmax(0)
    task = get_task(run_meta["task"])
    return {
        "algo": run_meta["algo"], "task": task.name, "env_id": task.env_id, "seeds": run_meta["seeds"],
        "dataset": run_meta["data"]["dataset"], "synthetic": run_meta["data"].get("synthetic"),
        "online": "online" in run_meta["data"],
        "real_fraction": run_meta["data"]["real_fraction"], "steps": steps,
        "eval_episodes": run_meta["eval_episodes"],
        "final": {**aggregate(final_scores(scores)), "evaluations": int(min(FINAL_EVALUATIONS, len(evals))),
                  "steps": [int(e["step"]) for e in evals[-FINAL_EVALUATIONS:]]},
        "last": {**aggregate(scores[-1]), "step": evals[-1]["step"]},
        "best": {**aggregate(scores.max(0)), "step_per_seed": [int(evals[i]["step"]) for i in best_idx]},
        "train_seconds": extra["train_seconds"], "eval_seconds": extra["eval_seconds"],
        "steps_per_second_per_seed": steps * len(run_meta["seeds"]) / max(extra["train_seconds"], 1e-9),
        "score_note": f"D4RL-normalised (x100) with D4RL reference returns on {task.env_id}; not D4RL v2 numbers. "
                      "std over seeds is the population std (ddof=0).",
    }


def _plot(out: Path, run_meta: dict) -> Optional[str]:
    """Learning curve PNG (mean +- std over seeds) from the run's ``curves.json``."""
    curves = json.loads((out / CURVES_FILE).read_text())
    path = plot_learning_curves({run_meta["algo"]: curves}, out / PLOT_FILE, f"{run_meta['algo']} on {run_meta['task']}",
                                ylabel=f"normalised score ({run_meta['env_id']})")
    return None if path is None else PLOT_FILE


# --- evaluation of a finished run ---------------------------------------------------------------------------
def load_agent(run_dir: str | Path, device: str = "cpu") -> tuple[Agent, dict]:
    """Rebuild the K-seed agent of a run from its config and checkpoint (no dataset needed).

    Returns:
        ``(agent, checkpoint metadata)``.
    """
    run_dir = Path(run_dir)
    cfg_file = run_dir / CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a dawm agent run (no {CONFIG_FILE})")
    # read-only: the copy an interrupted swap left is read where it lies (the training run, which may still be
    # writing, is the one that repairs its folder)
    ckpt = readable_checkpoint(run_dir / CKPT_DIR)
    if ckpt is None:
        raise CheckpointError(f"{run_dir} has no {CKPT_DIR}/ yet: the run has not reached its first checkpoint")
    dev = resolve_device(device)
    try:
        run = json.loads(cfg_file.read_text())
        algo_cfg_cls = ALGOS[BASE_ALGO[run["algo"]]][1]
        ac = dict(run["algo_config"])
        ac["hidden"] = tuple(ac["hidden"])
        normalizer = Normalizer(torch.zeros(run["obs_dim"]), torch.ones(run["obs_dim"]))
        agent = build_agent(run["algo"], algo_cfg_cls(**ac), run["obs_dim"], run["act_dim"], run["seeds"],
                            normalizer, dev, run["steps"])
    except (KeyError, TypeError, json.JSONDecodeError) as err:  # a broken or hand-edited config.json
        raise CheckpointError(f"{cfg_file} is not a readable dawm run config ({type(err).__name__}: {err}); "
                              "rerun dawm train agent with the same --out to rewrite it") from err
    meta = load_checkpoint(ckpt, agent, dev, with_optimizers=False)
    return agent, meta


def evaluate_run(run_dir: str | Path, episodes: int = 10, device: str = "cpu") -> dict:
    """Evaluate the latest checkpoint of every seed on fresh episodes; writes ``evaluation.json``.

    The reset seeds come from a stream separate from the training-time evaluations, so this score is not
    measured on the episodes that selected the "best" point of the learning curve.

    Returns:
        ``{"step", "episodes", "normalized": {mean, std, per_seed}, "returns": {...}, ...}``.
    """
    run_dir = Path(run_dir)
    resolve_device(device)  # --device cuda without CUDA: one line, before anything is read
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    agent, meta = load_agent(run_dir, device)
    task = get_task(meta["run"]["task"])
    seeds = meta["run"]["seeds"]
    with Evaluator(task, len(seeds), episodes) as ev:
        returns, scores = ev.scores(_numpy_policy(agent, torch.device(device)),
                                    [reset_seeds(s, episodes, FINAL_STREAM) for s in seeds])
    result = {"algo": meta["run"]["algo"], "task": task.name, "env_id": task.env_id, "step": int(meta["step"]),
              "seeds": seeds, "episodes": episodes, "normalized": aggregate(scores.mean(1)),
              "returns": aggregate(returns.mean(1)), "episode_returns": returns.tolist(),
              "score_note": f"D4RL-normalised (x100) on {task.env_id}; std over seeds (ddof=0)."}
    atomic_write_json(run_dir / EVALUATION_FILE, result)
    return result
