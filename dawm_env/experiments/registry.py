"""The paper's experiments as data: each is a grid of *cells* (task, level, method, horizon, ...).

An agent cell is one K-seed agent run: an algorithm trained on the real dataset of ``(task, level)`` or on data
generated from it (DAWM / DWM, at a horizon, from a fraction of the seed pairs, with an action source). A
consistency cell evaluates one bundle's IDM on one real dataset. The runner
(:mod:`dawm_env.experiments.runner`) turns cells into runs; identical cells of different experiments (e.g.
DAWM-TD3BC at H = 7 in tables 2, 4, 5 and 6) share one run.

=============  =========================================================================================
table2         Decision Diffuser and DAWM vs DWM, with TD3+BC and IQL (paper Table 2)
table3         per-episode inference time of DD vs DAWM-TD3BC and DWM-TD3BC policies (paper Table 3)
table4         DAWM vs TD3+BC / IQL on the real data and SSORL-TD3BC / SSORL-IQL (paper Table 4)
table5         DAWM-T (a random 1/T of the seed pairs, T = 8) vs DAWM, TD3+BC (paper Table 5)
table6         generation horizons H = 1, 3, 7 for DAWM-TD3BC and DWM-TD3BC (paper Table 6)
ablation-idm   actions of generated steps h >= 1 from the IDM vs uniform random vs the repeated
               conditioning action a_t (TD3+BC; the reviewers' IDM ablation)
augment        levers on DAWM data (real share, horizon, trust filter, g, BC weight) vs real data (not in the paper)
confirm        the screen's best lever vs real data and the paper's recipe, on seeds the screen never used
lowdata        DAWM from a world model trained on 10% of the real data vs the 10% alone (not in the paper)
consistency    IDM action error on real transitions and action consistency on generated next states,
               in distribution (the bundle's training level) and out of distribution (other levels)
=============  =========================================================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

from dawm_env.agents.planner import PLANNER_ALGO  # Method.algo of the Decision Diffuser: no agent, a planner
from dawm_env.experiments.presets import ExperimentPreset
from dawm_env.tasks import LEVELS

#: The paper's environments and datasets.
PAPER_TASKS: tuple[str, ...] = ("hopper", "walker2d", "halfcheetah")
PAPER_LEVELS: tuple[str, ...] = ("medium", "medium-replay", "medium-expert")


@dataclass(frozen=True)
class Method:
    """One column of an agent table: what is trained on what.

    ``generated`` methods train on a dataset generated from the real one; the others on the real one.
    """

    label: str
    """Column header (``DAWM-TD3BC``, ``DWM_3``, ...)."""
    algo: str
    """:class:`~dawm_env.agents.train.TrainAgentConfig` ``algo``: ``td3bc``, ``iql``, ``ssorl-*`` or ``dwm-*``."""
    generated: bool = False
    """Train on generated rollouts (DAWM: one-step TD on them; DWM: value-expansion targets from them)."""
    horizon: Optional[int] = None
    """H of the generated rollouts; None = the preset's ``horizon``."""
    subsample: int = 1
    """Extra seed-pair subsampling on top of the preset's (DAWM-T's T)."""
    action_source: str = "idm"
    """Actions of generated steps h >= 1: ``idm`` (DAWM), ``random`` or ``repeat`` (the IDM ablation)."""
    real_fraction: Optional[float] = None
    """Generated methods: fraction of every batch drawn from the real data (None = generated data only)."""
    rtg: Optional[float] = None
    """Generated methods: return-to-go target g of generation (task units); None = the preset's."""
    trust_keep: Optional[float] = None
    """Generated one-step methods: keep only this fraction of the IDM-inferred transitions, the ones with the
    lowest IDM std (:func:`~dawm_env.agents.sources.trust_mask`); None = keep all."""
    trust_signal: Optional[str] = None
    """With ``trust_keep``: ``random`` keeps as many transitions at random (the filter's control); None = by IDM std."""
    alpha: Optional[float] = None
    """TD3+BC's alpha (the Q term's weight against behaviour cloning); None = CORL's 2.5."""
    bc_real_only: bool = False
    """Generated TD3+BC methods: clone only each rollout's real first action, not the IDM-inferred ones."""
    action_noise: float = 0.0
    """Generated methods: std of the noise added to each seed action before generation (``dawm generate
    --action-noise``); 0 = the real action."""


@dataclass(frozen=True)
class Cell:
    """One unit of work of an experiment, with everything that decides its result."""

    kind: str
    """``agent`` (train and evaluate an agent, or the Decision Diffuser planner: ``algo = "dd"``), ``consistency``
    (evaluate a bundle's IDM) or ``timing`` (time a method's per-episode inference)."""
    task: str
    """hopper / walker2d / halfcheetah."""
    level: str
    """Dataset level of the real data (agent, timing) or of the bundle's training data (consistency)."""
    method: str = ""
    """Column label (agent and timing cells)."""
    algo: str = ""
    """Agent algorithm, or ``dd`` (the planner) (agent and timing cells)."""
    generated: bool = False
    """Whether the agent trains on generated data."""
    horizon: int = 7
    """H of generated rollouts (generated cells)."""
    subsample: int = 1
    """Total seed-pair subsampling of generation (preset's x the method's)."""
    action_source: str = "idm"
    """Actions of generated steps h >= 1."""
    data_level: str = ""
    """Consistency cells: level of the real data the bundle is evaluated on."""
    real_fraction: Optional[float] = None
    """Generated cells: real share of every batch (None = generated data only)."""
    rtg: Optional[float] = None
    """Generated cells: generation target g (None = the preset's)."""
    trust_keep: Optional[float] = None
    """Generated cells: fraction of the IDM-inferred transitions kept, the most trusted (None = all)."""
    trust_signal: Optional[str] = None
    """Generated cells with ``trust_keep``: ``random`` = the control (as many at random); None = by IDM std."""
    alpha: Optional[float] = None
    """TD3+BC's alpha (None = CORL's default)."""
    bc_real_only: bool = False
    """Generated cells: TD3+BC clones only the real first actions."""
    action_noise: float = 0.0
    """Generated cells: std of the noise on the seed actions (a generation setting, in the generated id)."""

    @property
    def levers(self) -> dict:
        """The lever settings that are set (real share, g, trust filter, alpha, BC on real actions): part of keys
        and tags only when set, so cells without them keep the keys they always had."""
        names = ("real_fraction", "rtg", "trust_keep", "trust_signal", "alpha", "bc_real_only")
        return {n: getattr(self, n) for n in names if getattr(self, n) not in (None, False)}

    @property
    def env(self) -> str:
        """Row label: ``hopper-medium``."""
        return f"{self.task}-{self.level}"

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return asdict(self)


@dataclass(frozen=True)
class Experiment:
    """An experiment: its methods (columns) per preset and its default grid."""

    name: str
    """CLI name."""
    title: str
    """One line for reports."""
    kind: str
    """``agent`` (a score table), ``consistency`` or ``timing``."""
    methods: Callable[[ExperimentPreset], list[Method]]
    """The columns under a preset (horizons and T come from the preset)."""
    paper_tasks: tuple[str, ...] = PAPER_TASKS
    """Tasks of the paper's table (used when the preset does not fix them)."""
    paper_levels: tuple[str, ...] = PAPER_LEVELS
    """Levels of the paper's table (used when the preset does not fix them)."""
    note: str = ""
    """What differs from the paper's table."""

    def cells(self, preset: ExperimentPreset, tasks: tuple[str, ...], levels: tuple[str, ...]) -> list[Cell]:
        """Every cell of the grid ``tasks x levels x columns`` (consistency: ``x data levels``)."""
        out: list[Cell] = []
        for task in tasks:
            for level in levels:
                if self.kind == "consistency":
                    # the bundle's own level first (in distribution), then every other level (out of distribution)
                    for data_level in (level, *[lv for lv in LEVELS if lv != level]):
                        out.append(Cell(kind="consistency", task=task, level=level, data_level=data_level))
                    continue
                for m in self.methods(preset):
                    out.append(Cell(
                        kind="timing" if self.kind == "timing" else "agent", task=task, level=level, method=m.label, algo=m.algo, generated=m.generated,
                        horizon=(m.horizon or preset.horizon) if m.generated else 0,
                        subsample=preset.generation_subsample * m.subsample if m.generated else 1,
                        action_source=m.action_source if m.generated else "idm",
                        real_fraction=m.real_fraction if m.generated else None, rtg=m.rtg if m.generated else None,
                        trust_keep=m.trust_keep if m.generated else None,
                        trust_signal=m.trust_signal if m.generated and m.trust_keep is not None else None, alpha=m.alpha,
                        bc_real_only=m.bc_real_only and m.generated,
                        action_noise=m.action_noise if m.generated else 0.0))
        return out


def _table2(p: ExperimentPreset) -> list[Method]:
    return [Method("DD", PLANNER_ALGO), Method("DWM-TD3BC", "dwm-td3bc", True), Method("DAWM-TD3BC", "td3bc", True),
            Method("DWM-IQL", "dwm-iql", True), Method("DAWM-IQL", "iql", True)]


def _table3(p: ExperimentPreset) -> list[Method]:
    return [Method("DD", PLANNER_ALGO), Method("DAWM-TD3BC", "td3bc", True), Method("DWM-TD3BC", "dwm-td3bc", True)]


def _table4(p: ExperimentPreset) -> list[Method]:
    return [Method("TD3BC", "td3bc"), Method("SSORL-TD3BC", "ssorl-td3bc"), Method("DAWM-TD3BC", "td3bc", True),
            Method("IQL", "iql"), Method("SSORL-IQL", "ssorl-iql"), Method("DAWM-IQL", "iql", True)]


def _table5(p: ExperimentPreset) -> list[Method]:
    return [Method(f"DAWM-T (T={p.dawm_t})", "td3bc", True, subsample=p.dawm_t), Method("DAWM", "td3bc", True)]


def _table6(p: ExperimentPreset) -> list[Method]:
    out: list[Method] = []
    for h in p.horizons:
        out += [Method(f"DAWM_{h}", "td3bc", True, horizon=h), Method(f"DWM_{h}", "dwm-td3bc", True, horizon=h)]
    return out


def _ablation_idm(p: ExperimentPreset) -> list[Method]:
    return [Method("IDM actions (DAWM)", "td3bc", True, action_source="idm"),
            Method("random actions", "td3bc", True, action_source="random"),
            Method("repeated a_t", "td3bc", True, action_source="repeat")]


#: Every batch half real; the generated half rolled out from the seed pairs with their actions perturbed by
#: N(0, 0.3^2): each rollout's first transition is the model's outcome of an action near the data's, which the
#: real data never shows the critic (the world model follows such actions at one step: response correlation 0.99,
#: benchmarks/action_response.py), and TD3+BC's policy moves along the critic's action gradient.
_NOISY_MIX = Method("mix 50% real, a_t noise 0.3", "td3bc", True, real_fraction=0.5, action_noise=0.3)

#: Every batch half real; the critic and the Q term learn from both halves, the behaviour-cloning term clones only
#: real actions (the real half and each rollout's real first step). The IDM-inferred actions are 2-4x further from
#: the behaviour policy's mean than its own samples (benchmarks/generated_vs_real.py), and on medium-expert such BC
#: targets scatter around the narrow expert mode; cloning only the rollouts' first actions without a real half
#: left too little anchor (-16.1 in the screen), the real half restores it.
_MIX_BC_REAL = Method("mix 50% real, BC on real a", "td3bc", True, real_fraction=0.5, bc_real_only=True)
#: its IQL form: the advantage-weighted regression onto real actions only (value and critics learn from all rows)
_IQL_MIX_BC_REAL = Method("IQL mix 50% real, AWR on real a", "iql", True, real_fraction=0.5, bc_real_only=True)


def _augment(p: ExperimentPreset) -> list[Method]:
    # the levers of "DAWM data that pays off", most telling first (a time-boxed run finishes those): TD3+BC on this
    # data clones the behaviour policy's mean action (benchmarks/end_point.py), so the BC weight and a target g
    # near the top of the data's return-to-go (p50 0.84, p95 0.93 on hopper-medium, task units) come first
    return [Method("TD3BC", "td3bc"), Method("TD3BC alpha=10", "td3bc", alpha=10.0),
            Method("DAWM (paper)", "td3bc", True), Method("DAWM alpha=10", "td3bc", True, alpha=10.0),
            Method("DAWM g=0.95", "td3bc", True, rtg=0.95), Method("DAWM BC on real a_t", "td3bc", True, bc_real_only=True),
            Method("DAWM trust 50%", "td3bc", True, trust_keep=0.5),
            Method("DAWM random 50%", "td3bc", True, trust_keep=0.5, trust_signal="random"),
            Method("mix 50% real", "td3bc", True, real_fraction=0.5), Method("DAWM_1", "td3bc", True, horizon=1),
            Method("DAWM_3", "td3bc", True, horizon=3), Method("DAWM g=0.6", "td3bc", True, rtg=0.6),
            Method("DWM-TD3BC", "dwm-td3bc", True), _NOISY_MIX, _MIX_BC_REAL]


def _confirm(p: ExperimentPreset) -> list[Method]:
    # the screen's winner (trust 50%: +8.9 [+7.0, +10.0] over TD3BC at 3 seeds x 100k on hopper-medium) and its
    # random control (+13.0 [+4.8, +21.0]: the kept real first steps, not the IDM std, may be the lever) against
    # real data and the paper's recipe with seeds the screen never used; then half of every batch real (the same
    # direction as the control, further: where the real data alone is strong, medium-expert, the generated
    # share is what loses); the winner's IQL last. No g cell: the world model hardly responds to g
    # (benchmarks/rtg_response.py)
    return [Method("TD3BC", "td3bc"), Method("DAWM trust 50%", "td3bc", True, trust_keep=0.5),
            Method("DAWM random 50%", "td3bc", True, trust_keep=0.5, trust_signal="random"),
            Method("mix 50% real", "td3bc", True, real_fraction=0.5), _NOISY_MIX, _MIX_BC_REAL,
            Method("DAWM (paper)", "td3bc", True), Method("DWM-TD3BC", "dwm-td3bc", True), Method("IQL", "iql"),
            Method("DAWM-IQL trust 50%", "iql", True, trust_keep=0.5), _IQL_MIX_BC_REAL]


def _lowdata(p: ExperimentPreset) -> list[Method]:
    # the low-data regime: every cell (and the world model) sees only the preset's data_fraction of the real data
    return [Method("TD3BC", "td3bc"), Method("DAWM (paper)", "td3bc", True),
            Method("DAWM trust 50%", "td3bc", True, trust_keep=0.5),
            Method("mix 50% real", "td3bc", True, real_fraction=0.5), _NOISY_MIX, _MIX_BC_REAL]


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("table2", "Decision Diffuser and DAWM vs DWM with TD3+BC and IQL (paper Table 2)", "agent", _table2,
               note="DD: one planner per dataset (preset dd_preset), its seeds are planning seeds (sampling noise "
                    "and episodes), evaluated once on the episodes the agents' evaluations play; DD's own IDM is "
                    "replaced by dawm's (the bundle's IDM when it was trained on the same data)."),
    Experiment("table3", "Per-episode inference time: DD vs DAWM-TD3BC and DWM-TD3BC (paper Table 3)", "timing",
               _table3, paper_levels=("medium",),
               note="One process, one episode at a time (batch 1), on this machine; the agents are the runs of "
                    "table2's cells (trained if missing). Inference time only (env steps excluded)."),
    Experiment("table4", "DAWM vs real-data TD3+BC / IQL and SSORL (paper Table 4)", "agent", _table4,
               note="SSORL relabels a fraction of the real episodes' actions with the bundle's IDM; SSORL's "
                    "top-K longest-trajectory filter is not applied."),
    Experiment("table5", "DAWM-T vs DAWM: data volume (paper Table 5)", "agent", _table5,
               paper_levels=("medium",)),
    Experiment("table6", "DAWM vs DWM over generation horizons (paper Table 6)", "agent", _table6,
               paper_levels=("medium",)),
    Experiment("ablation-idm", "IDM ablation: actions of generated steps from the IDM, random, or a_t repeated",
               "agent", _ablation_idm, paper_levels=("medium",),
               note="Not in the paper: the reviewers' check that the IDM's actions matter."),
    Experiment("augment", "Levers on DAWM data: real share, horizon, trust filter, g, BC weight (vs real data)",
               "agent", _augment, paper_levels=("medium",),
               note="Not in the paper: the lever screen of 'DAWM data that pays off'. Every cell's difference is "
                    "to TD3BC on the real data (CORL defaults). DAWM (paper) is the paper's recipe (H and g of the "
                    "preset, IDM actions, generated data only); trust: only the least uncertain half of the "
                    "IDM-inferred transitions (by the IDM's std) is trained on, real first steps always kept (random 50%: "
                    "its control, as many kept at random); BC on real "
                    "a_t: TD3+BC's behaviour cloning uses only each rollout's real first action (the critic all "
                    "transitions), DWM's use of the data without cloning IDM actions."),
    Experiment("confirm", "The screen's best lever vs real data and the paper's recipe (held-out seeds)", "agent",
               _confirm, paper_levels=PAPER_LEVELS,
               note="Not in the paper: the confirmation step of 'DAWM data that pays off', run with the confirm "
                    "preset's seeds (100-104), which the screen (seeds 0-2) never used. Every cell's difference is "
                    "to the real-data cell of its algorithm (CORL defaults)."),
    Experiment("lowdata", "Low data: DAWM from a world model trained on a fraction of the real data vs that fraction",
               "agent", _lowdata, paper_levels=("medium",),
               note="Not in the paper: every cell's real data, and the data its bundle is trained on, is the "
                    "preset's data_fraction of the real dataset (whole episodes, shuffle seed 0); DAWM rolls out "
                    "from every pair of it. Differences are to TD3BC on the same fraction."),
    Experiment("consistency", "IDM action error and action consistency, in and out of distribution",
               "consistency", lambda p: [], paper_levels=("medium",),
               note="In distribution: the bundle's own training level (its held-out episodes); out of "
                    "distribution: every other level of the task with a dataset on disk, except that medium-expert "
                    "is the medium and the expert datasets concatenated: a medium-expert bundle was trained on "
                    "(90% of) the medium and expert episodes, and half of the medium-expert data is a medium or "
                    "expert bundle's own training data. Those rows say so."),
)}


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; ValueError listing the known ones."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}") from None
