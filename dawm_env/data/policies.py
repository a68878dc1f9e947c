"""Behaviour policies without pickles: the dawm policy format, a safe SB3 zip reader, the defaults per level.

A behaviour policy is stored as a pair of files ``<stem>.json`` (format version, algorithm, provenance,
observation / action spaces, actor architecture) and ``<stem>.safetensors`` (the actor's float32 weights,
nothing else). Six are shipped inside the package (``dawm_env/policies``, converted from the DLR-RM
rl-trained-agents SB3 / sb3-contrib zips, MIT) and looked up in :func:`dawm_env.paths.policies_dir`.

Stable-Baselines3 zips are read *safely*: the ``data`` entry with :mod:`json` only (its ``:serialized:``
cloudpickle blobs are never unpickled; the activation class is found by listing the blob's GLOBAL names with
:func:`pickletools.genops`, which executes nothing), ``policy.pth`` with ``torch.load(weights_only=True)``.
Layer sizes come from the tensor shapes. Supported actors: the squashed-Gaussian actors of SAC and TQC and
the deterministic tanh actors of TD3 / DDPG.

Where D4RL's recipe needs a policy that no shipped file provides (walker2d and halfcheetah ``medium``: the
shipped SAC policies are too strong) the builder uses the policy saved by the behaviour SAC run
(``dawm_env/data/behavior_sac.py``) when it first reached a third of the expert return.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import pickletools
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from dawm_env.checkpoint import read_json_object
from dawm_env.data.rollout import PolicyFn
from dawm_env.paths import atomic_write_json, file_sha256, policies_dir
from dawm_env.tasks import TaskSpec

FORMAT = "dawm-behavior-policy"
FORMAT_VERSION = 1
#: SB3's clamp of the SAC / TQC actor's log-std (``LOG_STD_MIN``, ``LOG_STD_MAX``).
LOG_STD_CLAMP = (-20.0, 2.0)
SUPPORTED = ("SAC and TQC (squashed-Gaussian MLP actors) and TD3 / DDPG (deterministic tanh MLP actors) "
             "with Box observation and action spaces")

#: Default policy stems per (task, level); None = produced by the behaviour SAC run.
_DEFAULT_POLICIES = {
    ("hopper", "medium"): "hopper-sac",
    ("hopper", "expert"): "hopper-tqc",
    ("walker2d", "medium"): None,
    ("walker2d", "expert"): "walker2d-tqc",
    ("halfcheetah", "medium"): None,
    ("halfcheetah", "expert"): "halfcheetah-tqc",
}

# policy class module prefix (a plain JSON string in the zip's ``data``) -> algorithm
_ALGORITHMS = {
    "stable_baselines3.sac": "SAC",
    "sb3_contrib.tqc": "TQC",
    "stable_baselines3.td3": "TD3",  # DDPG saves TD3Policy too; told apart by its hyper-parameters below
    "stable_baselines3.ddpg": "DDPG",
}

# activation classes a policy may name (torch.nn class name -> our name); anything else is refused
_ACTIVATIONS = {"ReLU": "relu", "Tanh": "tanh", "ELU": "elu", "LeakyReLU": "leaky_relu", "GELU": "gelu",
                "SiLU": "silu", "SELU": "selu", "Sigmoid": "sigmoid", "Softplus": "softplus"}
_ACTIVATION_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU,
                       "gelu": nn.GELU, "silu": nn.SiLU, "selu": nn.SELU, "sigmoid": nn.Sigmoid,
                       "softplus": nn.Softplus}

# refuse absurd entries before reading them into memory (a zip bomb must not exhaust RAM)
_MAX_DATA_BYTES = 64 << 20
_MAX_PTH_BYTES = 512 << 20


# --- the runtime policy ---------------------------------------------------------------------------
class BehaviorPolicy(nn.Module):
    """A batched MLP actor: ``obs (N, obs_dim)`` -> actions ``(N, act_dim)`` in the action-space bounds.

    ``squashed_gaussian`` (SAC / TQC): ``a = tanh(mu + exp(clamp(log_std)) * eps)``, deterministic
    ``tanh(mu)``; ``deterministic`` (TD3 / DDPG): ``a = tanh(mu)``. Both are then mapped from [-1, 1] to
    ``[low, high]`` as SB3's ``unscale_action`` does. Built from a spec (the JSON of the dawm format).
    """

    def __init__(self, spec: Mapping[str, Any]):
        super().__init__()
        actor = spec["actor"]
        self.spec = dict(spec)
        self.kind: str = actor["type"]
        self.algorithm: str = spec["algorithm"]
        self.obs_dim = int(spec["observation_space"]["shape"][0])
        self.act_dim = int(spec["action_space"]["shape"][0])
        act_cls = _ACTIVATION_MODULES[actor["activation"]]
        sizes = [self.obs_dim, *[int(h) for h in actor["hidden_sizes"]]]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = act_cls()
        self.mu = nn.Linear(sizes[-1], self.act_dim)
        self.log_std = nn.Linear(sizes[-1], self.act_dim) if self.kind == "squashed_gaussian" else None
        self.log_std_min, self.log_std_max = (float(v) for v in actor.get("log_std_clamp", LOG_STD_CLAMP))
        low = _decode_floats(spec["action_space"]["low"])
        high = _decode_floats(spec["action_space"]["high"])
        # buffers, not weights: they come from the JSON, so they stay out of the safetensors file
        self.register_buffer("action_low", torch.tensor(low, dtype=torch.float32), persistent=False)
        self.register_buffer("action_high", torch.tensor(high, dtype=torch.float32), persistent=False)
        self.weights_sha256: Optional[str] = None
        self.requires_grad_(False)
        self.eval()

    def forward(self, obs: torch.Tensor, deterministic: bool = False,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Actions for a batch of observations (float32, inside the action-space bounds)."""
        x = obs.to(torch.float32)
        for layer in self.hidden:
            x = self.activation(layer(x))
        mu = self.mu(x)
        if self.log_std is None or deterministic:
            squashed = torch.tanh(mu)
        else:
            log_std = torch.clamp(self.log_std(x), self.log_std_min, self.log_std_max)
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
            squashed = torch.tanh(mu + log_std.exp() * eps)
        return self.action_low + 0.5 * (squashed + 1.0) * (self.action_high - self.action_low)

    @torch.inference_mode()
    def act(self, obs: np.ndarray, deterministic: bool = False,
            generator: Optional[torch.Generator] = None) -> np.ndarray:
        """NumPy in, NumPy out: ``(N, obs_dim)`` -> ``(N, act_dim)`` float32 (a 1-D obs gives a 1-D action)."""
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        single = x.ndim == 1
        out = self(x[None] if single else x, deterministic=deterministic, generator=generator).numpy()
        return out[0] if single else out

    def policy_fn(self, seed: int, deterministic: bool = False) -> PolicyFn:
        """A :data:`PolicyFn` for rollouts; stochastic actions come from a private generator seeded with ``seed``.

        The generator is private (not torch's global one), so a rollout is reproducible from its seed whatever
        else uses torch in the process.
        """
        gen = torch.Generator().manual_seed(int(seed))

        def fn(obs: np.ndarray) -> np.ndarray:
            return self.act(obs, deterministic=deterministic, generator=gen)

        return fn


# --- reading and writing the dawm format ----------------------------------------------------------
def load_policy(path: str | os.PathLike, task: Optional[TaskSpec] = None) -> BehaviorPolicy:
    """Load a behaviour policy: a dawm pair (``.json`` or ``.safetensors`` of it) or an SB3 / sb3-contrib zip.

    SB3 zips are read without unpickling anything (see the module docstring). With ``task`` the policy's
    observation and action sizes are checked against it.

    Raises:
        FileNotFoundError: the file (or the other half of a dawm pair) does not exist.
        ValueError: the file is not a readable policy, its actor is not supported, or it does not fit ``task``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"policy file {path} does not exist")
    if path.suffix in (".json", ".safetensors"):
        policy = _load_dawm(path.with_suffix(".json"), path.with_suffix(".safetensors"))
    elif zipfile.is_zipfile(path):
        spec, weights = read_sb3_zip(path)
        policy = _build(spec, weights, str(path))
        policy.weights_sha256 = spec["source"]["sha256"]
    else:
        raise ValueError(f"{path} is neither a dawm policy (.json + .safetensors) nor a Stable-Baselines3 zip")
    if task is not None and (policy.obs_dim, policy.act_dim) != (task.obs_dim, task.act_dim):
        raise ValueError(f"{path} does not fit {task.env_id}: policy obs {policy.obs_dim} / act {policy.act_dim}, "
                         f"env obs {task.obs_dim} / act {task.act_dim}")
    return policy


def save_policy(out_stem: str | os.PathLike, spec: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> Path:
    """Write a dawm policy pair ``<out_stem>.safetensors`` + ``<out_stem>.json``; returns the JSON path.

    ``spec`` is the JSON content without ``format`` / ``format_version`` / ``weights_sha256`` (added here);
    ``weights`` are named as :class:`BehaviorPolicy`'s state dict. Both files are written atomically, the
    weights first, so a JSON on disk always names the sha256 of complete weights.
    """
    from safetensors.torch import save_file

    stem = Path(out_stem)
    if stem.suffix in (".json", ".safetensors"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    policy = _build({**spec, "format": FORMAT, "format_version": FORMAT_VERSION}, weights, str(stem))  # validates
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in policy.state_dict().items()}
    st_path = Path(f"{stem}.safetensors")
    tmp = st_path.with_name(f".{st_path.name}.tmp")
    save_file(tensors, str(tmp))  # no header metadata: safetensors writes it in random order, the JSON has it
    os.replace(tmp, st_path)
    meta = {**spec, "format": FORMAT, "format_version": FORMAT_VERSION, "weights_sha256": file_sha256(st_path)}
    json_path = Path(f"{stem}.json")
    atomic_write_json(json_path, meta)
    return json_path


def _load_dawm(json_path: Path, st_path: Path) -> BehaviorPolicy:
    from safetensors.torch import load_file

    if not json_path.is_file():
        raise FileNotFoundError(f"policy file {json_path} does not exist (a dawm policy is a .json + .safetensors pair)")
    spec = read_json_object(json_path)  # CheckpointError (a ValueError) for invalid JSON or a non-object
    if spec.get("format") != FORMAT:
        raise ValueError(f"{json_path} is not a dawm behaviour policy (no \"format\": \"{FORMAT}\")")
    if spec.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{json_path}: policy format version {spec.get('format_version')!r} is not supported "
                         f"(this dawm reads version {FORMAT_VERSION})")
    if not st_path.is_file():
        raise FileNotFoundError(f"policy file {st_path} does not exist (a dawm policy is a .json + .safetensors pair)")
    digest = file_sha256(st_path)
    if spec.get("weights_sha256") not in (None, digest):
        raise ValueError(f"{st_path} does not match {json_path} (sha256 {digest[:16]}..., the JSON names "
                         f"{str(spec['weights_sha256'])[:16]}...): the pair was mixed up or one file is corrupt")
    try:
        weights = load_file(str(st_path), device="cpu")
    except Exception as err:  # safetensors raises its own error type for truncated / foreign files
        raise ValueError(f"{st_path} is not a readable safetensors file ({err})") from err
    policy = _build(spec, weights, str(json_path))
    policy.weights_sha256 = digest
    return policy


def _build(spec: Mapping[str, Any], weights: Mapping[str, torch.Tensor], where: str) -> BehaviorPolicy:
    """A :class:`BehaviorPolicy` from a spec and weights, with one clear ValueError for any mismatch."""
    try:
        actor = spec["actor"]
        if actor["type"] not in ("squashed_gaussian", "deterministic"):
            raise ValueError(f"actor type {actor['type']!r}")
        if actor["activation"] not in _ACTIVATION_MODULES:
            raise ValueError(f"activation {actor['activation']!r}")
        if actor.get("squashing", "tanh") != "tanh":
            raise ValueError(f"squashing {actor['squashing']!r}")
        for space in ("observation_space", "action_space"):
            shape = spec[space]["shape"]
            if len(shape) != 1:
                raise ValueError(f"{space} shape {shape} (only flat Box spaces are supported)")
        policy = BehaviorPolicy(spec)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: unsupported or malformed policy description ({err}); supported: {SUPPORTED}") from err
    if tuple(policy.action_low.shape) != (policy.act_dim,) or tuple(policy.action_high.shape) != (policy.act_dim,):
        raise ValueError(f"{where}: action bounds do not have {policy.act_dim} entries")
    if not (torch.isfinite(policy.action_low).all() and torch.isfinite(policy.action_high).all()):
        raise ValueError(f"{where}: the action space must be bounded (squashed actors are unscaled to its bounds)")
    expected = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise ValueError(f"{where}: weights do not fit the described actor (missing {missing}, unexpected {extra}, "
                         f"wrong shape {wrong})")
    for name, t in weights.items():
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise ValueError(f"{where}: weight {name!r} is not finite floating point")
    policy.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()})
    return policy


# --- the safe SB3 zip reader ----------------------------------------------------------------------
def read_sb3_zip(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read an SB3 / sb3-contrib model zip without unpickling: ``(spec, actor weights)`` in the dawm format.

    ``data`` is parsed with :mod:`json` only; ``policy.pth`` with ``torch.load(weights_only=True)``, which
    refuses anything but tensors and plain containers. The spec's ``source`` records the zip's sha256.

    Raises:
        ValueError: not an SB3 zip, a refused payload, or an actor that is not supported (one line naming
        what is supported).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            data = json.loads(_read_entry(zf, "data", _MAX_DATA_BYTES))
            pth = _read_entry(zf, "policy.pth", _MAX_PTH_BYTES)
            version = _read_entry(zf, "_stable_baselines3_version", 1024).decode(errors="replace").strip() \
                if "_stable_baselines3_version" in zf.namelist() else None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, NotImplementedError, zlib.error) as err:
        # ValueError covers bad JSON / UTF-8 and oversized entries; zlib / NotImplemented a corrupt or odd zip
        raise ValueError(f"{path} is not a Stable-Baselines3 model zip ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a Stable-Baselines3 model zip (its data entry is not a JSON object)")
    try:
        state = torch.load(io.BytesIO(pth), weights_only=True, map_location="cpu")
    except Exception as err:  # weights_only refuses any pickle that is not plain tensors: say so in one line
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: policy.pth is not a plain tensor state dict, refused to load it ({msg})") from err
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path}: policy.pth does not hold a state dict of tensors")

    where = str(path)
    module = _policy_module(data, where)
    algorithm = next((v for k, v in _ALGORITHMS.items() if module.startswith(k)), None)
    if algorithm is None:
        raise ValueError(f"{where}: unsupported policy class module {module!r}; supported: {SUPPORTED}")
    if algorithm == "TD3" and data.get("policy_delay") == 1 and data.get("target_noise_clip") == 0.0:
        algorithm = "DDPG"  # SB3's DDPG is TD3 with these settings and the same policy class
    kwargs = data.get("policy_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where}: policy_kwargs is not a JSON object")
    if data.get("use_sde") or kwargs.get("use_sde"):
        raise ValueError(f"{where}: gSDE actors (use_sde=True) are not supported; supported: {SUPPORTED}")
    extractor = kwargs.get("features_extractor_class")
    if extractor is not None and "FlattenExtractor" not in str(extractor):
        raise ValueError(f"{where}: features extractor {extractor!r} is not supported; supported: {SUPPORTED}")
    activation = _activation_name(kwargs, where)
    actor_sd = {k[len("actor."):]: v for k, v in state.items() if k.startswith("actor.")}
    spec, weights = _actor_from_sb3_state(actor_sd, algorithm, activation, where)
    spec.update({
        "observation_space": _space_from_json(data.get("observation_space"), "observation_space", where),
        "action_space": _space_from_json(data.get("action_space"), "action_space", where),
        "source": {"format": "sb3-zip", "file": path.name, "sha256": file_sha256(path), "policy_module": module,
                   "sb3_version": version, "num_timesteps": data.get("num_timesteps")},
    })
    return spec, weights


def convert_sb3_policy(zip_path: str | os.PathLike, out_stem: str | os.PathLike,
                       provenance: Optional[Mapping[str, Any]] = None) -> Path:
    """Convert an SB3 / sb3-contrib zip (read safely) to a dawm pair ``<out_stem>.json`` + ``.safetensors``.

    Args:
        zip_path: the SB3 model zip.
        out_stem: output path without suffix (a ``.json`` / ``.safetensors`` suffix is dropped).
        provenance: extra JSON facts merged into ``source`` (origin, commit, licence...).

    Returns:
        The written JSON path.
    """
    spec, weights = read_sb3_zip(zip_path)
    spec["source"].update(dict(provenance or {}))
    return save_policy(out_stem, spec, weights)


def save_sb3_actor(model: Any, out_stem: str | os.PathLike, source: Optional[Mapping[str, Any]] = None) -> Path:
    """Write the actor of an in-memory SB3 SAC / TQC / TD3 / DDPG model as a dawm pair; returns the JSON path.

    Used by the behaviour SAC run for its medium policy (no SB3 zip, so nothing to unpickle later).
    """
    module = type(model.policy).__module__
    algorithm = type(model).__name__.upper()
    actor_mod = model.policy.actor
    # the hidden layers' activation (TD3's final Tanh is the squashing, not a hidden activation)
    body = list(actor_mod.latent_pi) if hasattr(actor_mod, "latent_pi") else list(actor_mod.mu)[:-1]
    activations = {type(m).__name__ for m in body if not isinstance(m, nn.Linear)}
    if not activations <= set(_ACTIVATIONS):
        raise ValueError(f"actor activation {sorted(activations)} is not supported; supported: {SUPPORTED}")
    if len(activations) > 1:
        raise ValueError(f"actor mixes activations {sorted(activations)}; supported: {SUPPORTED}")
    activation = _ACTIVATIONS[activations.pop()] if activations else "relu"
    if getattr(model, "use_sde", False):
        raise ValueError(f"gSDE actors (use_sde=True) are not supported; supported: {SUPPORTED}")
    spec, weights = _actor_from_sb3_state(actor_mod.state_dict(), algorithm, activation, module)
    spec.update({
        "observation_space": _space_from_box(model.observation_space),
        "action_space": _space_from_box(model.action_space),
        "source": {"format": "sb3-model", "policy_module": module, "num_timesteps": int(model.num_timesteps),
                   **dict(source or {})},
    })
    return save_policy(out_stem, spec, weights)


def _read_entry(zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    info = zf.getinfo(name)  # KeyError when absent: reported as "not an SB3 zip"
    if info.file_size > limit:
        raise ValueError(f"zip entry {name!r} is {info.file_size} bytes, more than a policy needs ({limit})")
    return zf.read(info)


def _policy_module(data: dict, where: str) -> str:
    cls = data.get("policy_class")
    module = cls.get("__module__") if isinstance(cls, dict) else None
    if not isinstance(module, str):
        raise ValueError(f"{where}: the data entry names no policy class module; supported: {SUPPORTED}")
    return module


def _actor_from_sb3_state(sd: Mapping[str, torch.Tensor], algorithm: str, activation: str,
                          where: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Map an SB3 actor state dict (keys without the ``actor.`` prefix) to the dawm weights; sizes from shapes."""
    params = {k: v for k, v in sd.items() if not k.startswith("features_extractor.")}
    if len(params) != len(sd):  # FlattenExtractor has no parameters, so any here belong to a learned extractor
        raise ValueError(f"{where}: actors with a learned features extractor are not supported; supported: {SUPPORTED}")
    weights: dict[str, torch.Tensor] = {}
    if algorithm in ("SAC", "TQC"):
        hidden = _linear_stack(params, "latent_pi.", where)
        extra = set(params) - {f"latent_pi.{i}.{p}" for i in hidden for p in ("weight", "bias")} \
            - {"mu.weight", "mu.bias", "log_std.weight", "log_std.bias"}
        if extra or "mu.weight" not in params or "log_std.weight" not in params:
            raise ValueError(f"{where}: {algorithm} actor layout not recognised (keys {sorted(params)[:8]}...); "
                             f"supported: {SUPPORTED}")
        for n, i in enumerate(hidden):
            weights[f"hidden.{n}.weight"], weights[f"hidden.{n}.bias"] = params[f"latent_pi.{i}.weight"], params[f"latent_pi.{i}.bias"]
        for name in ("mu", "log_std"):
            weights[f"{name}.weight"], weights[f"{name}.bias"] = params[f"{name}.weight"], params[f"{name}.bias"]
        actor = {"type": "squashed_gaussian", "log_std_clamp": list(LOG_STD_CLAMP)}
    elif algorithm in ("TD3", "DDPG"):
        layers = _linear_stack(params, "mu.", where)
        if not layers or set(params) != {f"mu.{i}.{p}" for i in layers for p in ("weight", "bias")}:
            raise ValueError(f"{where}: {algorithm} actor layout not recognised (keys {sorted(params)[:8]}...); "
                             f"supported: {SUPPORTED}")
        for n, i in enumerate(layers[:-1]):
            weights[f"hidden.{n}.weight"], weights[f"hidden.{n}.bias"] = params[f"mu.{i}.weight"], params[f"mu.{i}.bias"]
        weights["mu.weight"], weights["mu.bias"] = params[f"mu.{layers[-1]}.weight"], params[f"mu.{layers[-1]}.bias"]
        hidden = layers[:-1]
        actor = {"type": "deterministic"}
    else:
        raise ValueError(f"{where}: algorithm {algorithm} is not supported; supported: {SUPPORTED}")
    sizes = [int(weights[f"hidden.{n}.weight"].shape[0]) for n in range(len(hidden))]
    actor.update({"hidden_sizes": sizes, "activation": activation, "squashing": "tanh"})
    weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in weights.items()}
    return {"algorithm": algorithm, "actor": actor}, weights


def _linear_stack(params: Mapping[str, torch.Tensor], prefix: str, where: str) -> list[int]:
    """Indices of the Linear layers of an ``nn.Sequential`` under ``prefix``, in order, checked to chain.

    SB3's ``create_mlp`` alternates Linear and activation, so the Linear layers sit at even indices.
    """
    idx = sorted({int(k[len(prefix):].split(".")[0]) for k in params
                  if k.startswith(prefix) and k[len(prefix):].split(".")[0].isdigit()})
    if idx != list(range(0, 2 * len(idx), 2)):
        raise ValueError(f"{where}: layers {prefix}{idx} are not an MLP of Linear + activation; supported: {SUPPORTED}")
    prev = None
    for i in idx:
        w, b = params.get(f"{prefix}{i}.weight"), params.get(f"{prefix}{i}.bias")
        if w is None or b is None or w.ndim != 2 or tuple(b.shape) != (w.shape[0],) or \
                (prev is not None and w.shape[1] != prev):
            raise ValueError(f"{where}: layer {prefix}{i} does not chain as a Linear layer; supported: {SUPPORTED}")
        prev = w.shape[0]
    return idx


def _activation_name(kwargs: dict, where: str) -> str:
    """The actor's activation from ``policy_kwargs``; ReLU (SB3's off-policy default) when none is named.

    The class is only *named* in the cloudpickle blob: its GLOBAL / STACK_GLOBAL opcodes are listed with
    ``pickletools.genops`` (which executes nothing) and matched against a whitelist.
    """
    if "activation_fn" not in kwargs:
        return "relu"
    names: set[str] = set()
    blob = kwargs.get(":serialized:")
    if isinstance(blob, str):
        try:
            names = {qual for mod, qual in _pickle_globals(base64.b64decode(blob))
                     if mod.startswith("torch.nn") and qual in _ACTIVATIONS}
        except (binascii.Error, ValueError):
            names = set()
    if not names:  # fall back on the class repr SB3 writes next to the blob, "<class 'torch.nn....ReLU'>"
        rep = str(kwargs["activation_fn"])
        if rep.startswith("<class 'torch.nn."):
            names = {rep.rstrip("'>").rsplit(".", 1)[-1]} & set(_ACTIVATIONS)
    if len(names) != 1:
        raise ValueError(f"{where}: activation {kwargs['activation_fn']!r} is not supported (supported: "
                         f"{', '.join(sorted(_ACTIVATIONS))}); supported actors: {SUPPORTED}")
    return _ACTIVATIONS[names.pop()]


def _pickle_globals(blob: bytes) -> list[tuple[str, str]]:
    """``(module, name)`` of every GLOBAL / STACK_GLOBAL / INST in a pickle, read with pickletools (no execution).

    For STACK_GLOBAL the two names are the last two strings pushed (directly or fetched from the memo).
    """
    out: list[tuple[str, str]] = []
    pushed: list[Optional[str]] = []
    memo: dict[int, Optional[str]] = {}
    for op, arg, _ in pickletools.genops(blob):
        name = op.name
        if name in ("GLOBAL", "INST"):
            mod, _, qual = str(arg).partition(" ")
            out.append((mod, qual))
            pushed.append(None)
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                      "BINSTRING", "STRING"):
            pushed.append(arg if isinstance(arg, str) else None)
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = pushed[-1] if pushed else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(int(arg)))
        elif name == "STACK_GLOBAL":
            if len(pushed) >= 2 and isinstance(pushed[-2], str) and isinstance(pushed[-1], str):
                out.append((pushed[-2], pushed[-1]))
            pushed.append(None)
        elif name not in ("PROTO", "FRAME", "MARK"):
            pushed.append(None)
    return out


def _space_from_json(space: Any, name: str, where: str) -> dict:
    """A Box space from SB3's JSON description (old gym ``shape`` or gymnasium ``_shape``; bounds as numpy str)."""
    if not isinstance(space, dict) or "Box" not in str(space.get(":type:", "")):
        raise ValueError(f"{where}: {name} is not a Box space; supported: {SUPPORTED}")
    shape = space.get("shape", space.get("_shape"))
    if not isinstance(shape, list) or len(shape) != 1 or not isinstance(shape[0], int):
        raise ValueError(f"{where}: {name} shape {shape!r} is not a flat vector; supported: {SUPPORTED}")
    low, high = (_parse_numpy_str(space.get(k), shape[0], f"{where}: {name}.{k}") for k in ("low", "high"))
    return {"shape": shape, "dtype": str(space.get("dtype", "float32")), "low": _encode_floats(low),
            "high": _encode_floats(high)}


def _space_from_box(space: Any) -> dict:
    if len(space.shape) != 1:
        raise ValueError(f"space shape {space.shape} is not a flat vector; supported: {SUPPORTED}")
    return {"shape": [int(space.shape[0])], "dtype": str(space.dtype),
            "low": _encode_floats(np.asarray(space.low, dtype=np.float64).tolist()),
            "high": _encode_floats(np.asarray(space.high, dtype=np.float64).tolist())}


def _parse_numpy_str(text: Any, n: int, where: str) -> list[float]:
    """Parse numpy's ``str(array)`` of a 1-D float array (``"[-1. -1.  1.]"``, ``inf`` allowed)."""
    if not isinstance(text, str) or "..." in text:
        raise ValueError(f"{where} is not a readable array ({str(text)[:60]!r})")
    try:
        vals = [float(t) for t in text.replace("[", " ").replace("]", " ").replace(",", " ").split()]
    except ValueError as err:
        raise ValueError(f"{where} is not a readable array ({text[:60]!r})") from err
    if len(vals) == 1 and n != 1:
        vals = vals * n  # a scalar bound broadcast over the shape
    if len(vals) != n:
        raise ValueError(f"{where} has {len(vals)} values, expected {n}")
    return vals


def _encode_floats(vals: Sequence[float]) -> list:
    """Floats for JSON: strict JSON has no infinity, so unbounded entries are the strings ``"inf"`` / ``"-inf"``."""
    return [float(v) if np.isfinite(v) else ("inf" if v > 0 else "-inf") for v in vals]


def _decode_floats(vals: Sequence[Any]) -> list[float]:
    return [float(v) for v in vals]


# --- defaults per level ---------------------------------------------------------------------------
def default_policy_path(task: TaskSpec, level: str) -> Optional[Path]:
    """The default policy JSON for ``(task, level)`` in :func:`policies_dir`, or None when the behaviour SAC run
    provides it (walker2d / halfcheetah ``medium``).

    Raises:
        FileNotFoundError: the policy pair is not in the folder (names the folder and how to fix it).
    """
    stem = _DEFAULT_POLICIES[(task.name, level)]
    if stem is None:
        return None
    folder = policies_dir()
    path = folder / f"{stem}.json"
    if not path.is_file() or not path.with_suffix(".safetensors").is_file():
        hint = ("unset DAWM_POLICIES_DIR or put the pair there" if os.environ.get("DAWM_POLICIES_DIR")
                else "reinstall dawm (the policies ship inside the package) or set DAWM_POLICIES_DIR")
        raise FileNotFoundError(
            f"default {level} policy for {task.name} not found: {path} and {path.with_suffix('.safetensors').name} "
            f"are needed; {hint}, or pass --policy PATH (a dawm policy .json or an SB3 zip)")
    return path


def sb3_policy_fn(model: Any, deterministic: bool = False) -> PolicyFn:
    """Batched action function of an in-memory SB3 model (training-time evaluation; nothing is loaded).

    Stochastic actions come from torch's global generator, as SB3 samples them.
    """

    def act(obs: np.ndarray) -> np.ndarray:
        action, _ = model.predict(obs, deterministic=deterministic)
        return np.asarray(action, dtype=np.float32)

    return act
