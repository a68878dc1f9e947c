"""Decision Diffuser (Ajay et al. 2023) as a planner baseline: the paper's Table 2 DD column and Table 3.

- :class:`DDConfig`: documented hyperparameters, ``paper`` (DD's locomotion setting) and ``cpu`` presets.
- :func:`build_dd_model`: the world model's temporal U-Net and Gaussian diffusion over states-only windows
  (no action condition, no reward column), conditioned on the in-painted current state and a return-to-go
  through classifier-free guidance.
- :class:`DecisionDiffuser`: plan, then the IDM infers ``a_t`` from ``(s_{t-1}, s_t, planned s_{t+1})``;
  :class:`PlannerPolicy`: re-planning at every real step for many environments in one model call.
- :class:`PlannerBundle`: the planner folder (``dd`` + ``idm`` safetensors / JSON and ``planner.json``).

Layer 3: above the world model (whose blocks it reuses), below the agents (which evaluate it in the real env).
"""

from dawm_env.planner.bundle import PlannerBundle, assemble_planner_bundle, resolve_planner
from dawm_env.planner.config import DDConfig
from dawm_env.planner.model import DecisionDiffuser, PlannedActions, PlannerPolicy, build_dd_model

__all__ = ["DDConfig", "DecisionDiffuser", "PlannedActions", "PlannerBundle", "PlannerPolicy",
           "assemble_planner_bundle", "build_dd_model", "resolve_planner"]
