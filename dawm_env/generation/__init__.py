"""DAWM data generation: world-model rollouts completed by the IDM, as Minari datasets or on the fly.

- :func:`generate_dataset` / :class:`GenerateConfig` (``dawm generate``): resumable, chunked, sharded
  generation of a Minari dataset (:mod:`dawm_env.generation.writer`);
- :class:`TransitionStream`: endless fresh transition batches for training on newly generated data every
  iteration, as in the paper's Algorithm 1; :class:`RolloutGenerator` is the batched core
  (:mod:`dawm_env.generation.rollouts`);
- :func:`generation_stats`: what ``dawm data info`` adds for a generated dataset
  (:mod:`dawm_env.generation.stats`).

Names are imported lazily, so ``dawm_env.generation.stats`` does not pull in torch.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "GenerateConfig": "writer", "generate_dataset": "writer", "GenerationPlan": "writer", "ShardSpec": "writer",
    "select_seed_pairs": "writer", "bundle_hash": "writer",
    "RolloutConfig": "rollouts", "RolloutGenerator": "rollouts", "RolloutBatch": "rollouts",
    "ACTION_SOURCES": "rollouts",
    "GeneratedTransitions": "rollouts", "TransitionStream": "rollouts", "validate_episodes": "rollouts",
    "GenerationStats": "stats", "generation_stats": "stats", "is_generated_dataset": "stats",
    "GENERATED_KIND": "stats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
