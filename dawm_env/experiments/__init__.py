"""Runnable studies: ``dawm demo`` and the paper's experiments (``dawm experiment NAME --preset ...``).

- :mod:`dawm_env.experiments.demo`: the offline end-to-end demo from the shipped bundle;
- :mod:`dawm_env.experiments.presets`: budgets (``smoke``, ``cpu``, ``paper``) as documented dataclasses;
- :mod:`dawm_env.experiments.registry`: every experiment as a list of cells (task, level, method, horizon, ...);
- :mod:`dawm_env.experiments.runner`: resolves / creates datasets and bundles, runs cells resumably;
- :mod:`dawm_env.experiments.report`: JSON, markdown tables and plots.
"""
