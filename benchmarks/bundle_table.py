"""Held-out metrics of bundles as one markdown table (the README's bundle table), saved as JSON.

    python benchmarks/bundle_table.py hopper-medium walker2d-medium halfcheetah-medium --out results/bundles.json

Reads each bundle's ``bundle.json`` (the metrics ``dawm`` measured when it assembled or packed the bundle): state
MSE per horizon step (normalised), reward MAE, IDM action MAE, action consistency, one-step error against MuJoCo,
the training budget, the storage dtype and the folder's size on disk. Nothing is re-measured here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_out_argument, save_results  # noqa: E402


def bundle_row(name: str) -> dict:
    """The figures of one bundle (name or folder)."""
    from dawm_env.world_model.bundle import Bundle

    bundle = Bundle.load(name)
    meta, m = bundle.meta, bundle.meta.get("metrics", {})
    # the one-step error against MuJoCo: measured at assembly on the training data's held-out episodes, else (a bundle
    # assembled before the metric existed) when it was packed, on the data packing was given
    mujoco, mujoco_on = m.get("mujoco_one_step_mse"), meta["dataset"]
    if mujoco is None and "packing" in meta:
        mujoco, mujoco_on = meta["packing"]["packed"]["mujoco_one_step_mse"], meta["packing"]["dataset"]
    return {
        "bundle": bundle.path.name, "task": bundle.task.name, "dataset": meta["dataset"],
        "world_model_steps": meta["training"]["world_model_steps"], "idm_steps": meta["training"]["idm_steps"],
        "storage_dtype": meta.get("storage_dtype", "float32"),
        "size_mb": sum(f.stat().st_size for f in bundle.path.iterdir() if f.is_file()) / 1e6,
        "state_mse_per_step": m.get("state_mse_per_step"), "reward_mae": m.get("reward_mae"),
        "idm_action_mae": m.get("idm_action_mae"), "action_consistency_mae": m.get("action_consistency_mae"),
        "mujoco_one_step_mse": mujoco, "mujoco_one_step_on": mujoco_on,
    }


def markdown(rows: list[dict]) -> str:
    """The README table."""
    head = ("| bundle | WM / IDM steps | weights | size | state MSE h = 1, 4, 7 | reward MAE | IDM MAE | "
            "action consistency | one-step vs MuJoCo |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        mse = r["state_mse_per_step"]
        lines.append(f"| {r['bundle']} | {r['world_model_steps']} / {r['idm_steps']} | {r['storage_dtype']} | "
                     f"{r['size_mb']:.1f} MB | {mse[0]:.3f}, {mse[3]:.3f}, {mse[6]:.3f} | {r['reward_mae']:.3f} | "
                     f"{r['idm_action_mae']:.3f} | {r['action_consistency_mae']:.3f} | {r['mujoco_one_step_mse']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", nargs="+", help="bundle names or folders")
    add_out_argument(p, "bundles")
    args = p.parse_args()
    rows = [bundle_row(b) for b in args.bundles]
    table = markdown(rows)
    print(table)
    save_results(args.out, "bundles", {"bundles": rows, "markdown": table})


if __name__ == "__main__":
    main()
