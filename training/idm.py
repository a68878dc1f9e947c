"""Train the inverse dynamics model ``f(a_t | s_{t-1}, s_t, s_{t+1})`` (paper Sec. 3.2, SSORL).

Reads top to bottom: config -> data (same normalisation and held-out episodes as the world model) ->
model -> (resume) -> loop with validation NLL -> the best-validation weights.

``dawm train idm --dataset ID --out DIR [--steps N] [--device D]``
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from dawm_env.checkpoint import TrainState, check_resumable, recover_checkpoint
from dawm_env.data.loading import load_dataset
from dawm_env.data.normalization import NormStats
from dawm_env.paths import check_writable_dir
from dawm_env.runtime import setup_torch, step_rngs
from dawm_env.training.common import ModelRunConfig
from dawm_env.world_model.bundle import write_component
from dawm_env.world_model.data import heldout_episodes, idm_triples
from dawm_env.world_model.idm import IDMConfig, InverseDynamics

log = logging.getLogger(__name__)

IDM_FILE = "idm"  # OUT/idm.safetensors + OUT/idm.json
CKPT_DIR = "idm_ckpt"


@dataclass
class IDMTrainConfig(ModelRunConfig):
    """How to train the IDM (the model itself is described by :class:`IDMConfig`)."""

    hidden: Optional[tuple[int, ...]] = None
    """Override the hidden sizes (paper: 1024, 1024)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden is not None:
            self.hidden = tuple(self.hidden)
            if not self.hidden or any(int(h) < 1 for h in self.hidden):
                raise ValueError(f"--hidden needs one or more sizes >= 1 (e.g. 1024,1024), got {self.hidden}")


def train_idm(cfg: IDMTrainConfig) -> Path:
    """Train (or resume) the IDM; keeps the best-validation weights. Returns the output folder."""
    from tqdm.auto import tqdm

    device = setup_torch(cfg.device, cfg.threads)
    out = check_writable_dir(cfg.out, "--out")  # before loading data and training, not at the first checkpoint
    overrides = {"train_steps": cfg.steps, "hidden": cfg.hidden, "batch_size": cfg.batch_size}
    idm_cfg = IDMConfig(seed=cfg.seed, **{k: v for k, v in overrides.items() if v is not None})  # validated
    data = load_dataset(cfg.dataset, task=cfg.task)
    if not data.task:
        raise ValueError(f"{cfg.dataset} does not record its task; pass --task hopper, walker2d or halfcheetah")
    stats = NormStats.from_dataset(data)
    held_ep = heldout_episodes(data, cfg.heldout_fraction, cfg.split_seed)
    is_val = held_ep[data.episode_ids()]
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if len(val_idx) == 0:
        val_idx = train_idx  # a single-episode dataset: validate on what we have (tiny tests)
    val_batch = [t.to(device) for t in idm_triples(data, stats, val_idx[:20_000])]
    run_meta = {"model_config": idm_cfg.to_dict(), "task": data.task, "dataset": cfg.dataset,
                "bf16": cfg.use_bf16(device),
                "dataset_fingerprint": data.fingerprint(), "norm_stats": stats.to_dict(), "seed": cfg.seed,
                "heldout_fraction": cfg.heldout_fraction, "split_seed": cfg.split_seed}
    arch = ("task", "dataset_fingerprint", "seed", "split_seed")

    torch.manual_seed(cfg.seed)
    model = InverseDynamics.from_config(idm_cfg, data.obs_dim, data.act_dim).to(device)
    best = copy.deepcopy(model).eval()
    opt = torch.optim.Adam(model.parameters(), lr=idm_cfg.lr)
    state = TrainState(modules={"model": model, "best": best}, optimizers={"optimizer": opt},
                       extra={"best_val_nll": float("inf"), "best_step": 0, "history": []})
    ckpt = out / CKPT_DIR
    if recover_checkpoint(ckpt):  # a swap cut by a kill is finished first, not mistaken for "no checkpoint"
        check_resumable(ckpt, run_meta, arch)
        state.load(ckpt, device)
        log.info("resumed IDM from %s at step %d", ckpt, state.step)

    gen = torch.Generator(device=device)
    bar = tqdm(total=idm_cfg.train_steps, initial=state.step, desc="idm", unit="step", disable=not cfg.progress)
    # next to the world model's events; purge_step: a resumed run drops events logged after its checkpoint
    writer = SummaryWriter(str(out / "tensorboard" / "idm"), purge_step=state.step or None)
    while state.step < idm_cfg.train_steps:
        model.train()
        rng = step_rngs(cfg.seed, 0, state.step, gen)
        idx = train_idx[rng.integers(0, len(train_idx), idm_cfg.batch_size)]
        prev, cur, nxt, act = (t.to(device) for t in idm_triples(data, stats, idx))
        with torch.random.fork_rng(devices=[]):  # dropout masks from the step's generator seed
            torch.manual_seed(int(gen.initial_seed()) % (2**63))
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.use_bf16(device)):
                loss = model.nll(prev, cur, nxt, act)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state.step += 1
        bar.update(1)
        if state.step % idm_cfg.eval_every == 0 or state.step == idm_cfg.train_steps:
            model.eval()
            with torch.no_grad():
                val_nll = float(model.nll(*val_batch))
            state.extra["history"].append({"step": state.step, "train_nll": float(loss.detach()), "val_nll": val_nll})
            if val_nll < state.extra["best_val_nll"]:
                state.extra.update(best_val_nll=val_nll, best_step=state.step)
                best.load_state_dict(model.state_dict())
            bar.set_postfix(val_nll=f"{val_nll:.3f}", best=f"{state.extra['best_val_nll']:.3f}")
            writer.add_scalar("idm/train_nll", float(loss.detach()), state.step)
            writer.add_scalar("idm/val_nll", val_nll, state.step)
        if state.step % cfg.checkpoint_every == 0 or state.step == idm_cfg.train_steps:
            state.save(ckpt, run_meta)
    bar.close()
    writer.close()
    write_component(out, IDM_FILE, best.state_dict(), {**run_meta, "steps": state.step,
                                                        "best_val_nll": state.extra["best_val_nll"],
                                                        "best_step": state.extra["best_step"],
                                                        "history": state.extra["history"]})
    return out
