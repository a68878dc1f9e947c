"""Offline RL agents (TD3+BC, IQL) that train on real and DAWM-generated Minari datasets.

- :mod:`agents.td3bc`, :mod:`agents.iql`: one algorithm per file, CORL conventions, K seeds trained together
  with batched weights (:mod:`agents.networks`).
- :mod:`agents.sources`: the :class:`~agents.sources.TransitionSource` protocol (``sample(batch_size, rng)``)
  with real / synthetic dataset sources, a fixed-ratio mix, DWM's value-expansion rows over generated rollouts
  and transitions generated on the fly from a bundle (the paper's Algorithm 1).
- :mod:`agents.evaluation`: K x N episodes in the real ``-v5`` env, D4RL-normalised scores.
- :mod:`agents.train`: :func:`~agents.train.train_agent` (resumable runs: config, checkpoint, curves, results)
  and :func:`~agents.train.evaluate_run`.

Other libraries: ``examples/sb3_td3bc_offline.py`` trains Stable-Baselines3 TD3 (+BC) from a dawm Minari
dataset; any library that reads Minari can use dawm's datasets directly (recipe in that example's docstring).
"""

from agents.iql import IQL, IQLConfig
from agents.sources import (
    DatasetSource, MixSource, OnlineGeneratedSource, RolloutSource, TransitionBatch, TransitionSource, ValueExpansion,
)
from agents.td3bc import TD3BC, TD3BCConfig
from agents.train import TrainAgentConfig, evaluate_run, load_agent, train_agent

__all__ = [
    "IQL", "IQLConfig", "TD3BC", "TD3BCConfig", "DatasetSource", "MixSource", "OnlineGeneratedSource",
    "RolloutSource", "TransitionBatch", "TransitionSource", "ValueExpansion", "TrainAgentConfig", "evaluate_run",
    "load_agent", "train_agent",
]
