"""See a game: play random valid moves on a batch of boards on the device, write the final
frames as a PNG (a grid when the batch has several boards) and the whole play as a GIF.

    python -m envs.show 2048 --seed 0 --out board.png
    python -m envs.show 2048 --batch 16 --steps 200 --out out/2048.png --gif out/2048.gif
    python -m envs.show swap --image-size 616 560 --labels --out swap.png
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import envs


def frame_grid(frames: np.ndarray, pad: int = 4) -> np.ndarray:
    """[B, H, W, 3] -> one image with the frames on a near-square grid."""
    b, h, w, _ = frames.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = f
    return out


def play(env, key, batch: int, steps: int, policy: str, keep_frames: bool):
    """Random play with auto-reset; returns (final states, frames [steps+1, B, H, W, 3] or
    None, total rewards [B], finished episodes [B])."""
    params = env.default_params

    def choose(k, state):
        if policy == "valid":
            return env.random_valid_action(k, state, params)
        return jax.random.randint(k, (), 0, env.num_actions)

    def body(state, k):
        ka, ks = jnp.split(jax.random.split(k, 2 * batch), 2)
        actions = jax.vmap(choose)(ka, state)
        state, reward, done, _ = jax.vmap(lambda kk, s, a: envs.auto_reset_step(env, kk, s, a, params))(ks, state, actions)
        frames = jax.vmap(lambda s: env.render(s, params))(state) if keep_frames else None
        return state, (frames, reward, done)

    def run(key):
        reset_key, play_key = jax.random.split(key)
        state = jax.vmap(lambda k: env.reset(k, params))(jax.random.split(reset_key, batch))
        first = jax.vmap(lambda s: env.render(s, params))(state)
        state, (frames, rewards, dones) = jax.lax.scan(body, state, jax.random.split(play_key, steps))
        if keep_frames:
            frames = jnp.concatenate([first[None], frames])
        return state, frames, rewards.sum(0), dones.sum(0)

    return jax.jit(run)(key)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("game", help=f"one of: {', '.join(envs.list_games())}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1, help="boards played in parallel")
    parser.add_argument("--steps", type=int, default=0, help="random moves before the picture")
    parser.add_argument("--policy", choices=("valid", "uniform"), default="valid", help="random valid moves, or G1's uniform ids")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None)
    parser.add_argument("--labels", action="store_true", help="draw coordinate labels")
    parser.add_argument("--out", default="board.png", help="PNG of the final frame(s)")
    parser.add_argument("--gif", default=None, help="GIF of the whole play")
    parser.add_argument("--fps", type=float, default=8.0)
    args = parser.parse_args(argv)

    from PIL import Image

    config = {}
    if args.image_size:
        config["image_size"] = tuple(args.image_size)
    if args.labels:
        config["coordinate_labels"] = True
    try:
        env = envs.make(args.game, **config)
    except (envs.UnknownGameError, envs.ConfigError) as err:
        parser.error(str(err))
    if args.batch < 1 or args.steps < 0:
        parser.error("--batch must be >= 1 and --steps >= 0")

    start = time.perf_counter()
    state, frames, rewards, finished = play(env, jax.random.key(args.seed), args.batch, args.steps, args.policy, args.gif is not None)
    if frames is None:
        frames = jax.vmap(lambda s: env.render(s, env.default_params))(state)[None]
    frames = np.asarray(frames)
    elapsed = time.perf_counter() - start

    for path in (args.out, args.gif):
        if path and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(frame_grid(frames[-1])).save(args.out)
    print(f"{env!r}: {args.batch} board(s), {args.steps} random {args.policy} moves in {elapsed:.2f} s (compile included)")
    print(f"wrote {args.out}")
    if args.gif:
        pictures = [Image.fromarray(frame_grid(f)) for f in frames]
        pictures[0].save(args.gif, save_all=True, append_images=pictures[1:], duration=int(1000 / args.fps), loop=0)
        print(f"wrote {args.gif} ({len(pictures)} frames)")
    print(f"mean reward per move {float(rewards.mean()) / max(args.steps, 1):+.3f}; finished games: {int(finished.sum())}")
    print(f"board 0 as the model's perception text must read it:\n{env.describe(envs.unbatch(state, 0))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
