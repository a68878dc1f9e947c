"""A bundle's pessimism calibration (``pessimism.json``): how uncertain its dream is on real transitions.

The dream env penalises (MOPO: ``r - lambda * u``) and halts (MOReL: terminate when ``u > threshold``) steps
whose uncertainty ``u`` is high. "High" only means something relative to what the model does on the data it
was trained on, so a bundle stores the distribution of each signal on real held-out transitions (the real
``(s_{t-1}, s_t, a_t)``, one dream step) and the defaults derived from it:

- ``halt_threshold`` = the ``HALT_PERCENTILE`` percentile of ``u`` on real transitions: a real-looking step
  almost never halts (0.1% per step at 99.9);
- ``penalty_coef`` = ``PENALTY_SCALE * mean real reward / p99(u)``: a step as uncertain as the 99th
  percentile of real steps loses ``PENALTY_SCALE`` of an average real reward. Real-looking steps pay a small,
  nearly constant price; an action the model ignores (the IDM infers a very different one) pays several
  rewards, which is what removes the profit of driving actions outside the data.

The signals themselves are computed in :mod:`dawm_env.world_model.uncertainty`; this module is only the record
and its file, so :class:`~dawm_env.world_model.bundle.Bundle` can load it without a cycle.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from dawm_env.checkpoint import CheckpointError, read_json_object
from dawm_env.paths import atomic_write_json

PESSIMISM_FILE = "pessimism.json"

#: Uncertainty signals a dream step can report.
#: ``action_gap``: mean ``|IDM(s_{t-1}, s_t, s_{t+1}) - a_t|`` over action dims (DAWM's action consistency;
#: one IDM call). ``disagreement``: RMS over state dims of the difference of two independent samples of
#: ``s_{t+1}`` in normalised units, divided by sqrt(2) (a per-step std estimate; doubles the model batch).
SIGNALS = ("action_gap", "disagreement")

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
HALT_PERCENTILE = 99.9
PENALTY_SCALE = 1.0


def percentile_key(q: float) -> str:
    """``99.9 -> "p99.9"``, ``50.0 -> "p50"`` (the keys of :attr:`SignalCalibration.percentiles`)."""
    return f"p{q:g}"


@dataclass(frozen=True)
class SignalCalibration:
    """One signal on real transitions, and the env defaults derived from it.

    Attributes:
        mean: mean ``u``.
        percentiles: ``{"p50": .., "p90": .., "p95": .., "p99": .., "p99.9": ..}``.
        error_correlation: Spearman rank correlation of ``u`` with the dream's squared error on ``s_{t+1}``
            (normalised units) against the real next state: does the signal know when the model is wrong.
        penalty_coef: default ``lambda`` (reward units per unit of ``u``).
        halt_threshold: default halt threshold (units of ``u``).
    """

    mean: float
    percentiles: dict[str, float]
    error_correlation: float
    penalty_coef: float
    halt_threshold: float


@dataclass(frozen=True)
class PessimismCalibration:
    """The calibration stored with a bundle (``pessimism.json``).

    Attributes:
        dataset: the real dataset the transitions came from.
        transitions: how many real transitions were measured.
        rtg_target / guidance_weight / sampling_steps / temperature: the sampler settings it was measured
            with (the dream env's defaults); other settings shift ``u``, so recalibrate when changing them.
        reward_mean: mean real reward of those transitions.
        signals: one :class:`SignalCalibration` per name in :data:`SIGNALS`.
        seed: sampling seed.
    """

    dataset: str
    transitions: int
    rtg_target: float
    guidance_weight: float
    sampling_steps: int
    temperature: float
    reward_mean: float
    signals: dict[str, SignalCalibration]
    seed: int = 0

    def signal(self, name: str) -> SignalCalibration:
        """The calibration of one signal; ValueError naming the known ones."""
        if name not in self.signals:
            raise ValueError(f"uncertainty signal {name!r} is not calibrated in this bundle; known: "
                             f"{sorted(self.signals)}")
        return self.signals[name]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PessimismCalibration":
        """Inverse of :meth:`to_dict`; ValueError / TypeError / KeyError on a malformed dict."""
        signals = {k: SignalCalibration(**v) for k, v in dict(d["signals"]).items()}
        for name, s in signals.items():
            for field in ("penalty_coef", "halt_threshold"):
                v = getattr(s, field)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                    raise ValueError(f"signals.{name}.{field} must be a finite number >= 0, got {v!r}")
        return cls(**{**d, "signals": signals})

    def write(self, bundle_dir: Path) -> Path:
        """Write ``bundle_dir/pessimism.json`` atomically; returns the path."""
        path = Path(bundle_dir) / PESSIMISM_FILE
        atomic_write_json(path, self.to_dict())
        return path


def read_calibration(bundle_dir: Path) -> Optional[PessimismCalibration]:
    """The calibration of a bundle folder, or None when it has none.

    Raises:
        CheckpointError: the file exists but is not a valid calibration (names the file and the fix).
    """
    path = Path(bundle_dir) / PESSIMISM_FILE
    if not path.exists():
        return None
    try:
        return PessimismCalibration.from_dict(read_json_object(path))
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{path} is not a valid pessimism calibration ({err}); recreate it with "
                              f"`dawm bundle calibrate {Path(bundle_dir)} --dataset ID`") from err
