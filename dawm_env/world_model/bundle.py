"""The bundle: one folder holding everything needed to generate DAWM transitions.

Layout (never a pickle)::

    world_model.safetensors   EMA weights of the diffusion world model
    world_model.json          its config, task, dataset id + fingerprint, normalisation stats
    idm.safetensors           best-validation IDM weights
    idm.json                  its config, validation history
    seeds.safetensors         a few thousand real (s, a) pairs and their return-to-go: start states
    bundle.json               format version, task, dataset, both configs, norm stats, evaluation metrics
    pessimism.json            uncertainty of one dream step on real held-out transitions and the dream env's
                              default penalty / halt threshold (optional; :mod:`.calibration`)

A bundle is addressed by a folder path or by name: ``dawm_env/bundles/<name>`` (shipped with the
package) or ``$DAWM_HOME/bundles/<name>``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from dawm_env.checkpoint import CheckpointError, load_tensors, read_json_object, save_tensors
from dawm_env.data.normalization import NormStats
from dawm_env.paths import atomic_write_json, dawm_home
from dawm_env.runtime import resolve_device
from dawm_env.tasks import TaskSpec, get_task
from dawm_env.world_model.calibration import PessimismCalibration, read_calibration
from dawm_env.world_model.config import WorldModelConfig
from dawm_env.world_model.diffusion import GaussianDiffusion
from dawm_env.world_model.idm import IDMConfig, InverseDynamics

BUNDLE_FORMAT = "dawm-bundle"
BUNDLE_VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "bundles"


def bundle_roots() -> list[Path]:
    """Folders searched for bundles by name: shipped first, then ``$DAWM_HOME/bundles``."""
    return [SHIPPED_DIR, dawm_home() / "bundles"]


#: Config fields the weights were trained for: a bundle whose ``bundle.json`` changes one of them no longer
#: fits its weights, and some (the world model's horizon, the IDM's log-std range) change no weight's shape.
STRUCTURAL_FIELDS = {"world_model": ("horizon", "dim", "dim_mults", "n_diffusion_steps"),
                     "idm": ("hidden", "log_std_min", "log_std_max")}
#: Key of the safetensors header metadata holding the config a component's weights were trained with.
CONFIG_METADATA_KEY = "dawm_model_config"
#: Keys ``bundle.json`` must hold for :meth:`Bundle.load`.
REQUIRED_BUNDLE_KEYS = ("format", "task", "world_model_config", "idm_config", "norm_stats")


def write_component(out: Path, stem: str, state_dict: dict[str, torch.Tensor], meta: dict) -> None:
    """Write ``{stem}.safetensors`` + ``{stem}.json`` into ``out`` (each file atomically).

    ``meta["model_config"]``, when present, is also stored in the safetensors header, so the weights carry
    the config they fit (:meth:`Bundle.load` checks it).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{stem}.safetensors.tmp"
    header = {CONFIG_METADATA_KEY: json.dumps(meta["model_config"], sort_keys=True)} if "model_config" in meta else None
    save_tensors(tmp, state_dict, metadata=header)
    os.replace(tmp, out / f"{stem}.safetensors")
    atomic_write_json(out / f"{stem}.json", meta)


def find_bundle_folder(name_or_dir: str | os.PathLike) -> Optional[Path]:
    """``name_or_dir`` if it is a folder, else the first ``<root>/<name>`` folder of :func:`bundle_roots`, else
    None (shared by world-model and planner bundles)."""
    p = Path(name_or_dir).expanduser()
    if p.is_dir():
        return p
    return next((r / str(name_or_dir) for r in bundle_roots() if (r / str(name_or_dir)).is_dir()), None)


def resolve_bundle(name_or_dir: str | os.PathLike) -> Path:
    """Folder of a bundle given by path or name; clear error listing what exists."""
    found = find_bundle_folder(name_or_dir)
    if found is not None:
        return found
    known = ", ".join(sorted(b.name for b in list_bundles())) or "none"
    raise FileNotFoundError(
        f"no bundle {str(name_or_dir)!r} (searched {', '.join(str(r) for r in bundle_roots())}; known: {known}). "
        "Train one: dawm train world-model --dataset ID --out DIR && dawm train idm --dataset ID --out DIR"
    )


def list_bundles() -> list[Path]:
    """Every complete bundle folder under the search roots."""
    found = []
    for root in bundle_roots():
        if root.is_dir():
            found += sorted(p for p in root.iterdir() if (p / "bundle.json").is_file())
    return found


def scan_bundles() -> list[tuple[Path, Optional[dict], Optional[str]]]:
    """Every folder under the search roots that holds a bundle or a part of one, read from metadata only.

    Returns:
        ``(folder, bundle.json contents, None)`` per readable bundle and ``(folder, None, reason)`` per broken
        or incomplete one (unreadable or incomplete ``bundle.json``, or trained components without one), so a
        listing can show every folder instead of stopping at the first bad one.
    """
    found: list[tuple[Path, Optional[dict], Optional[str]]] = []
    for root in bundle_roots():
        if not root.is_dir():
            continue
        for path in sorted(root.iterdir()):
            if (path / "bundle.json").is_file():
                try:
                    found.append((path, read_bundle_meta(path), None))
                except (CheckpointError, OSError) as err:
                    found.append((path, None, str(err)))
            elif (path / "planner.json").is_file() or (path / "dd.json").is_file():
                continue  # a Decision Diffuser planner bundle (dawm_env.planner): listed by scan_planners
            elif any((path / f"{stem}.json").is_file() for stem in ("world_model", "idm")):
                found.append((path, None, "no bundle.json: train both the world model and the IDM into it"))
    return found


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a complete dawm bundle")
    return read_json_object(path)


def _require(meta: dict, keys: tuple[str, ...], path: Path) -> None:
    """A CheckpointError naming ``path`` and every one of ``keys`` that ``meta`` lacks (not a bare KeyError)."""
    missing = [k for k in keys if k not in meta]
    if missing:
        raise CheckpointError(f"{path} lacks the key(s) {missing}: a broken or hand-edited file; retrain the "
                              "bundle or restore the file")


def read_bundle_meta(path: str | os.PathLike) -> dict:
    """``bundle.json`` of the bundle folder ``path``, checked for format, version and required keys.

    Raises:
        CheckpointError: naming the file and what is wrong.
    """
    path = Path(path)
    if not (path / "bundle.json").is_file() and ((path / "planner.json").is_file() or (path / "dd.json").is_file()):
        raise CheckpointError(f"{path} is a Decision Diffuser planner bundle, not a world-model bundle; use it with "
                              f"dawm evaluate-planner {path}")
    meta = _read_json(path / "bundle.json")
    if meta.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{path}/bundle.json is not a {BUNDLE_FORMAT} file (format={meta.get('format')!r})")
    if not isinstance(meta.get("version", 0), int) or meta.get("version", 0) > BUNDLE_VERSION:
        raise CheckpointError(f"{path} is bundle format v{meta.get('version')}; this dawm reads up to "
                              f"v{BUNDLE_VERSION}")
    _require(meta, REQUIRED_BUNDLE_KEYS, path / "bundle.json")
    return meta


def _trained_config(path: Path, stem: str) -> tuple[Optional[dict], str]:
    """The config the ``stem`` weights were trained with, and where it was found: the safetensors header
    (bundles written since it is stored there), else ``{stem}.json`` written beside the weights."""
    from safetensors import safe_open

    weights = path / f"{stem}.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as f:
            raw = (f.metadata() or {}).get(CONFIG_METADATA_KEY)
    except Exception:  # noqa: BLE001 - an unreadable file is reported by load_tensors, with its cause
        raw = None
    if raw is not None:
        try:
            return json.loads(raw), f"{weights.name} (header)"
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{weights}: its stored config is not valid JSON ({err})") from err
    side = path / f"{stem}.json"
    if side.is_file():
        cfg = _read_json(side).get("model_config")
        return (cfg if isinstance(cfg, dict) else None), side.name
    return None, ""


def _check_fits_weights(path: Path, stem: str, cfg: dict, fields: Optional[Sequence[str]] = None) -> None:
    """Refuse a ``bundle.json`` config whose structural fields (default: :data:`STRUCTURAL_FIELDS` of ``stem``)
    differ from the ones the weights were trained with."""
    trained, where = _trained_config(path, stem)
    if trained is None:
        return

    def norm(v: object) -> object:
        return list(v) if isinstance(v, (list, tuple)) else v  # JSON lists vs config tuples

    for key in STRUCTURAL_FIELDS[stem] if fields is None else fields:
        if key in trained and norm(cfg[key]) != norm(trained[key]):
            raise CheckpointError(
                f"{path}/bundle.json: {stem} {key} = {cfg[key]!r}, but the weights were trained with "
                f"{key} = {trained[key]!r} ({where}); the config no longer fits the weights. Restore "
                f"{key} = {trained[key]!r} or retrain the bundle")


@dataclass(frozen=True)
class SampledWindow:
    """One world-model call for ``B`` real pairs, in raw units: the shared core of generation and the dream env.

    Attributes:
        states_norm: ``(B, R, obs_dim)`` normalised ``s_t .. s_{t+R-1}`` on the model's device (row 0 is the
            in-painted real ``s_t``); the IDM reads these.
        states: ``(B, R, obs_dim)`` float32 raw states; row 0 is the input ``s_t`` exactly.
        rewards: ``(B, R)`` float32 raw rewards ``r_t .. r_{t+R-1}``.
        terminal: ``(B, R - 1)`` bool: the task's termination function on ``s_{t+h+1}`` for ``h = 0 .. R-2``.
    """

    states_norm: torch.Tensor
    states: np.ndarray
    rewards: np.ndarray
    terminal: np.ndarray


@dataclass
class Bundle:
    """A loaded bundle: models in eval mode, normalisation, task and seed pairs.

    Attributes:
        path: the folder.
        task: task spec.
        world_model: :class:`GaussianDiffusion` (EMA weights).
        idm: :class:`InverseDynamics`.
        stats: normalisation shared by both models.
        seed_states: ``(M, obs_dim)`` raw start states.
        seed_actions: ``(M, act_dim)`` their real actions.
        seed_rtg: ``(M,)`` their scaled return-to-go.
        meta: ``bundle.json`` contents.
        pessimism: the ``pessimism.json`` calibration, or None when the bundle has none.
    """

    path: Path
    task: TaskSpec
    world_model: GaussianDiffusion
    idm: InverseDynamics
    stats: NormStats
    seed_states: np.ndarray
    seed_actions: np.ndarray
    seed_rtg: np.ndarray
    meta: dict
    pessimism: Optional[PessimismCalibration] = None

    def normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """``(..., obs_dim)`` raw states on the models' device -> the models' normalised units."""
        mean, std = self._obs_moments_on(obs.device)
        return (obs - mean) / std

    def _obs_moments_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # cached per device: the dream env calls this at every step
        cache = self.__dict__.setdefault("_moments", {})
        if device not in cache:
            cache[device] = (torch.as_tensor(self.stats.obs_mean, device=device),
                             torch.as_tensor(self.stats.obs_std, device=device))
        return cache[device]

    @torch.inference_mode()
    def sample_window(self, states: np.ndarray, actions: np.ndarray, rtg: float, rows: int,
                      generator: torch.Generator, guidance: Optional[float] = None,
                      sampling_steps: Optional[int] = None, temperature: Optional[float] = None,
                      timesteps: Optional[Sequence[int]] = None, bf16: bool = False) -> SampledWindow:
        """The world-model step: normalise, sample one window per pair, denormalise, check terminals.

        Args:
            states: ``(B, obs_dim)`` raw ``s_t``.
            actions: ``(B, act_dim)`` actions in ``[-1, 1]``.
            rtg: scaled return-to-go target ``g`` (every pair).
            rows: window rows to return, ``2 .. T`` (the model's horizon ``T``).
            generator: torch RNG on the models' device (all sampling noise).
            guidance / sampling_steps / temperature: None = the world model's own.
            timesteps: explicit diffusion steps to visit (overrides ``sampling_steps``; see
                :meth:`GaussianDiffusion.sample`).
            bf16: run the network under bfloat16 autocast (fast on CPUs with AVX512-BF16 / AMX and on GPUs;
                the schedule arithmetic stays float32).
        """
        wm = self.world_model
        if not 2 <= rows <= wm.horizon:
            raise ValueError(f"rows must lie in [2, {wm.horizon}] for bundle {self.path}, got {rows}")
        dev = next(wm.parameters()).device
        s = torch.as_tensor(np.asarray(states, dtype=np.float32), device=dev)
        a = torch.as_tensor(np.asarray(actions, dtype=np.float32), device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bool(bf16)):
            x = wm.sample(self.normalize_obs(s), a, rtg, guidance_weight=guidance, n_steps=sampling_steps,
                          temperature=temperature, generator=generator, timesteps=timesteps)[:, :rows]
        x = x.float()
        o = self.task.obs_dim
        states_norm = x[..., :o]
        mean, std = self._obs_moments_on(dev)
        raw = (states_norm * std + mean).cpu().numpy()
        raw[:, 0] = states  # exact real s_t (no normalise / denormalise round-off)
        rewards = (x[..., -1] * float(self.stats.rew_std) + float(self.stats.rew_mean)).cpu().numpy()
        terminal = np.asarray(self.task.is_terminal(raw[:, 1:]), dtype=bool)
        return SampledWindow(states_norm=states_norm, states=raw, rewards=rewards, terminal=terminal)

    @classmethod
    def load(cls, name_or_dir: str | os.PathLike, device: str | torch.device = "cpu",
             expect_task: Optional[str] = None) -> "Bundle":
        """Load a bundle; raises CheckpointError / FileNotFoundError / ValueError with the cause.

        Every required key of ``bundle.json`` is checked, and its configs against the weights: names and shapes
        (strict loading), and the structural fields (:data:`STRUCTURAL_FIELDS`) against the config stored with
        the weights, which catches an edited horizon that changes no weight's shape.
        """
        device = resolve_device(device)  # --device cuda without CUDA: one clear line, not torch's AssertionError
        path = resolve_bundle(name_or_dir)
        meta = read_bundle_meta(path)
        where = path / "bundle.json"
        task, wm_cfg, idm_cfg, stats = parse_bundle_parts(meta, where, "world_model_config", WorldModelConfig.from_dict,
                                                          expect_task, "bundle")
        _check_fits_weights(path, "world_model", wm_cfg.to_dict())
        _check_fits_weights(path, "idm", idm_cfg.to_dict())
        wm = GaussianDiffusion.from_config(wm_cfg, task.obs_dim, task.act_dim)
        idm = InverseDynamics.from_config(idm_cfg, task.obs_dim, task.act_dim)
        load_weights(path, where, ((wm, "world_model"), (idm, "idm")))
        seeds = load_tensors(path / "seeds.safetensors")
        _check_seeds(seeds, task, path / "seeds.safetensors")
        return cls(path=path, task=task, world_model=wm.to(device).eval(), idm=idm.to(device).eval(),
                   stats=stats, seed_states=seeds["states"].numpy(),
                   seed_actions=seeds["actions"].numpy(), seed_rtg=seeds["rtg"].numpy(), meta=meta,
                   pessimism=read_calibration(path))


def parse_bundle_parts(meta: dict, where: Path, model_key: str, parse_model: Callable[[Any], Any],
                       expect_task: Optional[str], what: str) -> tuple[TaskSpec, Any, IDMConfig, NormStats]:
    """``(task, model config, IDM config, norm stats)`` of a bundle's JSON (world model or planner), checked.

    Raises:
        CheckpointError: a field that does not parse, or stats of another state size (``where`` names the file).
        ValueError: the bundle is not for ``expect_task``.
    """
    try:
        task = get_task(meta["task"])
        model_cfg = parse_model(meta[model_key])
        idm_cfg = IDMConfig.from_dict(meta["idm_config"])
        stats = NormStats.from_dict(meta["norm_stats"])
    except (ValueError, TypeError, AttributeError) as err:  # a hand-edited or foreign file
        raise CheckpointError(f"{where}: {err}") from err
    if expect_task is not None and get_task(expect_task).name != task.name:
        raise ValueError(f"{what} {where.parent} is for task {task.name}, not {get_task(expect_task).name}")
    if len(stats.obs_mean) != task.obs_dim:
        raise CheckpointError(f"{where}: norm_stats hold {len(stats.obs_mean)} state dims; {task.name} has "
                              f"{task.obs_dim}")
    return task, model_cfg, idm_cfg, stats


def load_weights(path: Path, where: Path, parts: Sequence[tuple[torch.nn.Module, str]]) -> None:
    """Load ``path/<stem>.safetensors`` into each ``(module, stem)`` strictly (every name and shape must fit)."""
    for module, stem in parts:
        tensors = load_tensors(path / f"{stem}.safetensors")
        try:
            module.load_state_dict(tensors)
        except RuntimeError as err:
            raise CheckpointError(f"{path}/{stem}.safetensors does not fit the config in {where}: {err}") from err


def _check_seeds(seeds: dict[str, torch.Tensor], task: TaskSpec, path: Path) -> None:
    """The seed pairs' tensors exist and have the task's shapes (``(M, obs)``, ``(M, act)``, ``(M,)``)."""
    missing = [k for k in ("states", "actions", "rtg") if k not in seeds]
    if missing:
        raise CheckpointError(f"{path} lacks the tensor(s) {missing}; retrain or reassemble the bundle")
    m = seeds["states"].shape[0] if seeds["states"].ndim == 2 else -1
    want = {"states": (m, task.obs_dim), "actions": (m, task.act_dim), "rtg": (m,)}
    for k, shape in want.items():
        if tuple(seeds[k].shape) != shape or m < 1:
            raise CheckpointError(f"{path}: {k} has shape {tuple(seeds[k].shape)}, expected {shape} for "
                                  f"{task.name} (M >= 1 pairs)")
