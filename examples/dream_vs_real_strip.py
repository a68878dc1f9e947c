"""A dream rollout next to a real one: an image strip (PNG) and an animated GIF.

Both start from the same state (the real Hopper-v5 reset state is handed to the dream with
``reset(options={"start_state": obs})``) and receive the same actions (open loop: actions are chosen
on the REAL observations, by a saved SB3 policy or uniformly at random), so any difference between the
rows is the world model's error. ``--closed-loop`` lets the policy act on each env's own observation
instead (what an agent trained in the dream experiences). Dream frames are drawn by the real MuJoCo
model from the dreamed state (see ``dawm_env/envs/render.py``).

    python examples/dream_vs_real_strip.py --bundle hopper-medium --steps 120 --every 10
    python examples/dream_vs_real_strip.py --bundle PATH --policy runs/dream_sac_hopper/policy.zip

Top row: real; bottom row: dream. An episode that ends is drawn greyed from then on.
Needs offscreen OpenGL (EGL or OSMesa; see ``dawm_env.envs.render``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from dawm_env.data.policies import load_policy
from dawm_env.tasks import TaskSpec


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--env-id", default="DAWM-Hopper-v0", help="dream env id")
    p.add_argument("--bundle", default=None, help="bundle name or folder (default: the env's)")
    p.add_argument("--steps", type=int, default=100, help="steps to roll out")
    p.add_argument("--every", type=int, default=10, help="one strip frame every this many steps")
    p.add_argument("--policy", default=None,
                   help="dawm policy .json or SB3 SAC / TQC / TD3 .zip, read without unpickling (default: random actions)")
    p.add_argument("--closed-loop", action="store_true", help="policy acts on each env's own observation")
    p.add_argument("--size", type=int, default=200, help="frame width = height in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gif-fps", type=int, default=25, help="GIF frame rate (0 = no GIF)")
    p.add_argument("--out", default="runs/dream_vs_real/hopper", help="output stem (.png and .gif are added)")
    return p


def make_policy(path: Optional[str], task: TaskSpec, action_space: Any, seed: int
                ) -> Callable[[np.ndarray], np.ndarray]:
    """``obs -> action``: a saved policy acting deterministically, or uniform random actions when ``path`` is None.

    ``path`` is a dawm policy ``.json`` or an SB3 / sb3-contrib zip (SAC, TQC, TD3), read for its actor weights
    only: nothing in it is unpickled.
    """
    if path is None:
        action_space.seed(seed)
        return lambda obs: action_space.sample()
    policy = load_policy(path, task)
    return lambda obs: policy.act(np.asarray(obs)[None], deterministic=True)[0]


def label(frame: np.ndarray, text: str, ended: bool) -> np.ndarray:
    """Frame with a caption; greyed out when the episode has ended."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame)
    if ended:
        img = Image.blend(img.convert("L").convert("RGB"), Image.new("RGB", img.size, (255, 255, 255)), 0.4)
    ImageDraw.Draw(img).text((4, 4), text, fill=(255, 255, 255) if not ended else (90, 90, 90))
    return np.asarray(img)


def main() -> None:
    """Roll out both envs, write ``<out>.png`` (strip) and ``<out>.gif`` (side-by-side animation)."""
    args = build_parser().parse_args()
    from dawm_env.envs.render import ensure_gl_backend

    ensure_gl_backend()  # before any MuJoCo renderer exists (headless: EGL)
    import gymnasium as gym
    from PIL import Image

    import dawm_env  # noqa: F401  (registers the dream ids)

    kwargs = {} if args.bundle is None else {"bundle": args.bundle}
    dream = gym.make(args.env_id, render_mode="rgb_array", width=args.size, height=args.size,
                     max_episode_steps=args.steps, **kwargs)
    task = dream.unwrapped.task
    real = gym.make(task.env_id, render_mode="rgb_array", width=args.size, height=args.size)
    policy = make_policy(args.policy, task, real.action_space, args.seed)

    real_obs, _ = real.reset(seed=args.seed)
    dream_obs, _ = dream.reset(seed=args.seed, options={"start_state": real_obs})
    real_ret = dream_ret = 0.0
    real_end = dream_end = None
    why = {"real": "-", "dream": "-"}
    pairs = [(real.render(), dream.render())]
    for t in range(1, args.steps + 1):
        action = policy(real_obs)
        if real_end is None:
            real_obs, r, term, trunc, _ = real.step(action)
            real_ret += float(r)
            real_end = t if (term or trunc) else None
            why["real"] = f"{'terminated' if term else 'truncated'} at step {t}" if real_end else "-"
        if dream_end is None:
            dream_obs, r, term, trunc, _ = dream.step(policy(dream_obs) if args.closed_loop else action)
            dream_ret += float(r)
            dream_end = t if (term or trunc) else None
            why["dream"] = f"{'terminated' if term else 'truncated'} at step {t}" if dream_end else "-"
        pairs.append((real.render() if real_end in (None, t) else pairs[-1][0],
                      dream.render() if dream_end in (None, t) else pairs[-1][1]))
        if real_end is not None and dream_end is not None:
            break

    def row(kind: int, steps: list[int]) -> np.ndarray:
        end = (real_end, dream_end)[kind]
        name = ("real", "dream")[kind]
        return np.concatenate([label(pairs[s][kind], f"{name} t={s}", end is not None and s > end)
                               for s in steps], axis=1)

    steps = list(range(0, len(pairs), args.every))
    strip = np.concatenate([row(0, steps), row(1, steps)], axis=0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(out.with_suffix(".png"))
    print(f"real   {task.env_id}: return {real_ret:8.1f}, {why['real']}")
    print(f"dream  {args.env_id}: return {dream_ret:8.1f}, {why['dream']}")
    print(f"saved {out.with_suffix('.png')} ({strip.shape[1]}x{strip.shape[0]}, {len(steps)} frames per row)")
    if args.gif_fps > 0:
        frames = [Image.fromarray(np.concatenate([label(p[0], f"real t={s}", real_end is not None and s > real_end),
                                                  label(p[1], f"dream t={s}", dream_end is not None and s > dream_end)],
                                                 axis=1)) for s, p in enumerate(pairs)]
        frames[0].save(out.with_suffix(".gif"), save_all=True, append_images=frames[1:],
                       duration=int(1000 / args.gif_fps), loop=0)
        print(f"saved {out.with_suffix('.gif')} ({len(frames)} frames)")
    real.close()
    dream.close()


if __name__ == "__main__":
    main()
