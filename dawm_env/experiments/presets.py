"""Experiment budgets: ``smoke`` (seconds, for tests), ``cpu`` (what fits 2 CPU cores), ``screen`` (the lever screen
of ``augment`` on 2 cores) and ``paper``.

A preset fixes everything about *how much* is run; *what* is run (which methods, horizons, ...) belongs to the
experiment (:mod:`dawm_env.experiments.registry`). Every field can be overridden with
:func:`dataclasses.replace` (the CLI does so for ``--seeds``, ``--steps``, ``--eval-episodes``, ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Optional

from dawm_env.planner.config import DDConfig


@dataclass(frozen=True)
class ExperimentPreset:
    """The budget of an experiment run."""

    name: str
    """Preset name (``smoke``, ``cpu``, ``paper``); part of the default output folder."""
    tasks: Optional[tuple[str, ...]] = None
    """Tasks to run; None = the experiment's own grid (the paper's environments)."""
    levels: Optional[tuple[str, ...]] = None
    """Dataset levels to run; None = the experiment's own grid (the paper's datasets)."""
    seeds: int = 5
    """Agent seeds per cell (trained together in one process); the table reports mean ± std over them."""
    first_seed: int = 0
    """The cells' agent seeds are ``first_seed, ..., first_seed + seeds - 1``: a confirmation run takes seeds the
    screen it confirms never used (the protocol's "do not tune on the seeds you report")."""
    agent_steps: int = 1_000_000
    """Gradient steps per seed of every agent run."""
    eval_every: int = 5000
    """Evaluate every agent in the real env every this many steps (and at the end)."""
    eval_episodes: int = 10
    """Real episodes per seed per evaluation."""
    fresh_episodes: Optional[int] = None
    """After training, evaluate every seed's final policy on this many fresh episodes (a reset stream the
    learning curve never saw; the table's "fresh" column); None = skip."""
    batch_size: int = 256
    """Agent batch size per seed."""
    data_fraction: float = 1.0
    """Below 1: the low-data regime. Every cell's real data is a random ``data_fraction`` of the real dataset's
    transitions in whole episodes (:mod:`dawm_env.data.subset`, shuffle seed 0), and the world model and IDM are
    trained on that subset (never a bundle trained on the whole data)."""
    agent_bf16: Optional[bool] = False
    """Train the agents' matmuls under bfloat16 autocast (TD3BCConfig / IQLConfig ``bf16``); None = where the
    device runs bf16 natively (:func:`dawm_env.runtime.native_bf16`: CPUs with AVX512-BF16 / AMX, bf16 GPUs), float32
    elsewhere (emulated bf16 is several times slower). The precision used is part of every cell's key.
    benchmarks/agent_noise.py measures that bf16 agrees with float32 within the CI."""
    horizon: int = 7
    """H of DAWM / DWM generation where the experiment does not vary it (the paper's 7)."""
    horizons: tuple[int, ...] = (1, 3, 7)
    """The horizons compared in ``table6``."""
    dawm_t: int = 8
    """T of DAWM-T (``table5``): it rolls out from a random 1/T of the seed pairs DAWM uses."""
    generation_subsample: int = 1
    """Roll out from a random 1/this of the real dataset's (s, a) pairs (1 = every pair, as the paper)."""
    generation_repeats: int = 1
    """Rollouts per seed pair."""
    generation_batch_size: int = 4096
    """Rollouts per world-model call."""
    generation_chunk_size: int = 32768
    """Rollouts per committed generation chunk (the unit of resume)."""
    rtg: Optional[float] = None
    """Return-to-go target of generation; None = the task's default (top of DWM's range)."""
    ssorl_fraction: float = 0.5
    """SSORL baselines: fraction of the real episodes whose actions the IDM relabels."""
    dataset_steps: Optional[int] = None
    """Size of real datasets built when missing: None = the builder's 1M transitions under the standard id
    ``dawm-d4rl/<task>/<level>-v0``; a number builds ``dawm-exp/<task>/<level>-n<steps>-v0`` instead (never a
    small dataset under the standard id)."""
    wm_preset: str = "cpu"
    """World-model preset (``cpu`` / ``paper``) of bundles trained when missing."""
    wm_steps: Optional[int] = None
    """World-model steps of bundles trained when missing (None = the preset's)."""
    wm_batch_size: Optional[int] = None
    """World-model batch size of bundles trained when missing (None = the preset's)."""
    idm_steps: Optional[int] = None
    """IDM steps of bundles trained when missing (None = the IDM default)."""
    idm_hidden: Optional[tuple[int, ...]] = None
    """IDM hidden sizes of bundles trained when missing (None = the paper's 1024, 1024)."""
    idm_batch_size: Optional[int] = None
    """IDM batch size of bundles trained when missing (None = the IDM default)."""
    consistency_windows: int = 1024
    """``consistency``: generated windows per (bundle, dataset) pair."""
    dd_preset: str = "cpu"
    """Decision Diffuser preset (:class:`~dawm_env.planner.DDConfig`: ``smoke`` / ``cpu`` / ``paper``) of planners
    trained when missing (table2's DD column, table3)."""
    dd_steps: Optional[int] = None
    """Planner training steps of planners trained when missing (None = the DD preset's)."""
    timing_episodes: int = 5
    """``table3``: real episodes timed per method (one at a time, batch 1, as the paper times inference)."""
    threads: Optional[int] = None
    """torch CPU threads of every stage (None: the process's setting, torch's default unless the caller set one)."""

    def __post_init__(self) -> None:
        # checked here, not when the first cell reaches the agent: by then data may have been built for minutes
        flags = {"seeds": "--seeds", "agent_steps": "--steps", "eval_every": "--eval-every",
                 "eval_episodes": "--eval-episodes", "threads": "--threads"}
        optional = ("fresh_episodes", "dataset_steps", "wm_steps", "wm_batch_size", "idm_steps", "idm_batch_size", "threads", "dd_steps")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in optional and value is None:
                continue
            if f.name in ("horizons", "idm_hidden"):
                if value is not None and (not value or any(int(v) < 1 for v in value)):
                    raise ValueError(f"{f.name} needs one or more values >= 1, got {value}")
            elif f.name == "first_seed":
                if value < 0:
                    raise ValueError(f"first_seed must be >= 0, got {value}")
            elif isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise ValueError(f"{flags.get(f.name, f.name)} must be >= 1, got {value}")
        DDConfig.preset(self.dd_preset)  # an unknown planner preset fails here, listing the valid ones
        if not 0.0 < self.data_fraction <= 1.0:
            raise ValueError(f"data_fraction must lie in (0, 1], got {self.data_fraction}")
        if not 0.0 <= self.ssorl_fraction <= 1.0:
            raise ValueError(f"ssorl_fraction must lie in [0, 1], got {self.ssorl_fraction}")

    def to_dict(self) -> dict:
        """JSON-friendly dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of the overridable fields."""
        return [f.name for f in fields(cls)]


#: Tiny: every experiment runs in seconds on the tests' fixtures (a few hundred transitions, tens of steps).
SMOKE = ExperimentPreset(
    name="smoke", tasks=("hopper",), levels=("medium",), seeds=2, agent_steps=20, eval_every=10, eval_episodes=1,
    batch_size=32, horizons=(1, 3, 7), dawm_t=8, generation_subsample=4, generation_repeats=1,
    generation_batch_size=256, generation_chunk_size=256, dataset_steps=2000, wm_steps=30, wm_batch_size=16,
    idm_steps=60, idm_hidden=(32, 32), idm_batch_size=64, consistency_windows=32, threads=1,
    dd_preset="smoke", timing_episodes=1,
)

#: What fits 2 CPU cores: hopper-medium, 3 seeds x 30k steps, evaluation every 5k steps with 10 episodes,
#: generation from every real pair with H = 7 (1M rollouts on the 1M-transition dataset; the README's Results
#: give the measured wall clock). A short budget: CORL trains 1M steps.
CPU = ExperimentPreset(
    name="cpu", tasks=("hopper",), levels=("medium",), seeds=3, agent_steps=30_000, eval_every=5000,
    eval_episodes=10, generation_subsample=1, generation_repeats=1, dataset_steps=None, wm_preset="cpu",
    wm_steps=12_000, idm_steps=2000, consistency_windows=1024,
)

#: The lever screen of ``augment`` on 2 CPU cores (issue "DAWM data that pays off"): hopper-medium, 3 seeds x 100k
#: steps in bf16 where the CPU has it natively (float32 elsewhere), evaluation every 10k steps with 10 episodes and
#: 50 fresh episodes per seed at the end, generation from a random 1/8 of the real pairs (875k transitions at H = 7).
#: Two processes on one ``--out`` fill 2 cores.
SCREEN = ExperimentPreset(
    name="screen", tasks=("hopper",), levels=("medium",), seeds=3, agent_steps=100_000, eval_every=10_000,
    eval_episodes=10, fresh_episodes=50, agent_bf16=None, generation_subsample=8, generation_repeats=1,
    dataset_steps=None, wm_preset="cpu", wm_steps=12_000, idm_steps=2000, consistency_windows=1024, threads=1,
)

#: The confirmation of ``confirm`` (issue "DAWM data that pays off"): the screen's budget with 5 seeds that the
#: screen never used (100-104), on hopper-medium / -medium-replay / -medium-expert (the experiment's grid).
CONFIRM = replace(SCREEN, name="confirm", levels=None, seeds=5, first_seed=100)

#: The low-data regime of ``lowdata`` (issue "DAWM data that pays off"): 10% of hopper-medium (100k transitions in
#: whole episodes) is all the real data; a world model (the cpu recipe, 12k steps) and IDM trained on it roll out from
#: every one of its pairs (H = 7: about 7x the real data); 5 seeds x 100k agent steps in bf16 as ``confirm``.
LOWDATA = replace(CONFIRM, name="lowdata", levels=("medium",), first_seed=0, data_fraction=0.1,
                  generation_subsample=1)

#: The paper's budgets (a GPU setting): its datasets, 5 seeds x 1M steps, evaluation every 5k steps with 10
#: episodes, generation from every real pair with H = 7, DAWM-T with T = 8, the paper-size world model.
PAPER = ExperimentPreset(
    name="paper", tasks=None, levels=None, seeds=5, agent_steps=1_000_000, eval_every=5000, eval_episodes=10,
    generation_subsample=1, generation_repeats=1, dataset_steps=None, wm_preset="paper", wm_steps=None,
    idm_steps=None, consistency_windows=4096, dd_preset="paper",
)

PRESETS: dict[str, ExperimentPreset] = {p.name: p for p in (SMOKE, CPU, SCREEN, CONFIRM, LOWDATA, PAPER)}


def get_preset(name: str) -> ExperimentPreset:
    """The preset called ``name``; ValueError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
