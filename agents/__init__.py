"""Offline RL agents (TD3+BC, IQL) that train on real and DAWM-generated Minari datasets.

- :mod:`dawm_env.agents.td3bc`, :mod:`dawm_env.agents.iql`: one algorithm per file, CORL conventions, K seeds trained together
  with batched weights (:mod:`dawm_env.agents.networks`).
- :mod:`dawm_env.agents.sources`: the :class:`~dawm_env.agents.sources.TransitionSource` protocol (``sample(batch_size, rng)``)
  with real / synthetic dataset sources, a fixed-ratio mix, DWM's value-expansion rows over generated rollouts
  and transitions generated on the fly from a bundle (the paper's Algorithm 1).
- :mod:`dawm_env.agents.evaluation`: K x N episodes in the real ``-v5`` env, D4RL-normalised scores.
- :mod:`dawm_env.agents.train`: :func:`~dawm_env.agents.train.train_agent` (resumable runs: config, checkpoint, curves, results)
  and :func:`~dawm_env.agents.train.evaluate_run`.
- :mod:`dawm_env.agents.export`: one seed as a plain policy with SB3's ``predict`` protocol, and a TorchScript export.

Other libraries: ``examples/sb3_td3bc_offline.py`` trains Stable-Baselines3 TD3 (+BC) from a dawm Minari
dataset; any library that reads Minari can use dawm's datasets directly (recipe in that example's docstring).
"""

from dawm_env.agents.iql import IQL, IQLConfig
from dawm_env.agents.sources import (
    DatasetSource,
    MixSource,
    OnlineGeneratedSource,
    RolloutSource,
    TransitionBatch,
    TransitionSource,
    ValueExpansion,
)
from dawm_env.agents.td3bc import TD3BC, TD3BCConfig
from dawm_env.agents.train import (
    TrainAgentConfig,
    evaluate_run,
    load_agent,
    train_agent,
)

__all__ = [
    "IQL", "IQLConfig", "TD3BC", "TD3BCConfig", "DatasetSource", "MixSource", "OnlineGeneratedSource",
    "RolloutSource", "TransitionBatch", "TransitionSource", "ValueExpansion", "TrainAgentConfig", "evaluate_run",
    "load_agent", "train_agent",
]
