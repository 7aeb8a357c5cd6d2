"""See a game: play random valid moves on a batch of boards on the device, write the final
frames as a PNG (a grid when the batch has several boards) and the whole play as a GIF.

    python -m envs.show 2048 --seed 0 --out board.png
    python -m envs.show 2048 --batch 16 --steps 200 --out out/2048.png --gif out/2048.gif
    python -m envs.show swap --image-size 616 560 --labels --out swap.png
    python -m envs.show shisensho --preset more_tiles --steps 20 --out more_tiles.png
    python -m envs.show swap --board-size 6 --set max_moves=50 --out swap6.png

Game options: --preset, --board-size, --image-size H W, --num-colors, --num-shapes, --labels,
and any other option of the game as --set key=value (value read as a Python literal).
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import sys
import time
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

import envs

MAX_FPS = 100  # GIF frame delays are whole hundredths of a second
TRANSPARENT = 255  # palette index of "same as the previous frame" in the GIF
GIF_MAX_SIDE = 640  # GIF frames are shrunk by a whole factor until they fit: a few MB per 200 frames


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


def play(env, key, batch: int, steps: int, policy: str, keep_states: bool):
    """Random play with auto-reset; returns (final states, the states before the first move and
    after each move [steps+1, B, ...] or None, total rewards [B], finished episodes [B]).

    The play keeps states, not frames: frames of every step would take steps x B x H x W x 3 bytes
    (1.7 GB for the README's GIF); `main` draws them one step at a time instead."""
    params = env.default_params

    def choose(k, state):
        if policy == "valid":
            return env.random_valid_action(k, state, params)
        return jax.random.randint(k, (), 0, env.num_actions)

    def body(state, k):
        ka, ks = jnp.split(jax.random.split(k, 2 * batch), 2)
        actions = jax.vmap(choose)(ka, state)
        state, reward, done, _ = jax.vmap(lambda kk, s, a: envs.auto_reset_step(env, kk, s, a, params))(
            ks, state, actions
        )
        return state, (state if keep_states else None, reward, done)

    def run(key):
        reset_key, play_key = jax.random.split(key)
        first = jax.vmap(lambda k: env.reset(k, params))(jax.random.split(reset_key, batch))
        state, (history, rewards, dones) = jax.lax.scan(body, first, jax.random.split(play_key, steps))
        if keep_states:
            history = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, history)
        return state, history, rewards.sum(0), dones.sum(0)

    return jax.jit(run)(key)


def write_gif(path: str, pictures: Iterable[np.ndarray], fps: float, max_side: int = GIF_MAX_SIDE) -> None:
    """An animated GIF of uint8 [H, W, 3] pictures, kept small: shrunk by the smallest whole
    factor that brings the longer side to `max_side` or less (a box filter), one palette for
    the whole play (the games draw few colours), and every pixel that did not change since the
    previous frame written as transparent, so a frame costs about what changed (LZW packs long
    runs of one index into a few bytes)."""
    from PIL import Image

    shrunk = []
    for picture in pictures:  # shrunk as they come: only the small pictures are kept
        factor = -(-max(picture.shape[:2]) // max_side)
        shrunk.append(np.asarray(Image.fromarray(picture).reduce(factor)) if factor > 1 else picture)
    pictures = shrunk

    sample = np.concatenate([pictures[i] for i in np.linspace(0, len(pictures) - 1, 5).astype(int)])
    palette = Image.fromarray(sample).quantize(
        colors=TRANSPARENT, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    frames, previous = [], None
    for picture in pictures:
        index = np.asarray(Image.fromarray(picture).quantize(palette=palette, dither=Image.Dither.NONE))
        shown = index if previous is None else np.where(index == previous, TRANSPARENT, index).astype(np.uint8)
        previous = index
        frame = Image.fromarray(shown, "P")
        frame.putpalette(palette.getpalette()[: 3 * TRANSPARENT] + [0, 0, 0])
        frames.append(frame)
    frames[0].save(
        path,
        save_all=True,
        append_images=frames[1:],
        duration=max(10, int(round(1000 / fps))),
        loop=0,
        transparency=TRANSPARENT,
        disposal=1,
        optimize=False,
    )


def parse_value(text: str):
    """A --set value: a Python literal (8, True, (448, 392), 'base'), else the plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def game_config(args, parser) -> dict:
    config = {}
    for option in ("preset", "board_size", "num_colors", "num_shapes"):
        if getattr(args, option) is not None:
            config[option] = getattr(args, option)
    if args.image_size:
        config["image_size"] = tuple(args.image_size)
    if args.labels:
        config["coordinate_labels"] = True
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--set takes key=value, got {item!r}")
        config[key.strip().replace("-", "_")] = parse_value(value.strip())
    return config


def check_output(parser, option: str, path: str | None, extension: str) -> None:
    """Before any play: the path names a file with the right extension in a folder that
    exists (or can be made) and is writable."""
    if path is None:
        return
    if os.path.isdir(path) or not path.lower().endswith(extension):
        parser.error(f"{option} {path!r} must be a file name ending in {extension}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        parser.error(f"{option} {path!r}: cannot create the folder {folder!r} ({err.strerror})")
    if not os.access(folder, os.W_OK):
        parser.error(f"{option} {path!r}: the folder {folder!r} is not writable")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("game", help=f"one of: {', '.join(envs.list_games())}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1, help="boards played in parallel")
    parser.add_argument("--steps", type=int, default=0, help="random moves before the picture")
    parser.add_argument(
        "--policy", choices=("valid", "uniform"), default="valid", help="random valid moves, or G1's uniform ids"
    )
    game = parser.add_argument_group("game options (each game takes the ones it has)")
    game.add_argument("--preset", default=None, help="a named configuration, e.g. shisensho's more_tiles")
    game.add_argument("--board-size", type=int, default=None)
    game.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None)
    game.add_argument("--num-colors", type=int, default=None)
    game.add_argument("--num-shapes", type=int, default=None)
    game.add_argument("--labels", action="store_true", help="draw coordinate labels")
    game.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any other game option (repeatable)"
    )
    parser.add_argument("--out", default="board.png", help="PNG of the final frame(s)")
    parser.add_argument("--gif", default=None, help="GIF of the whole play")
    parser.add_argument("--fps", type=float, default=8.0, help=f"GIF frames per second, in (0, {MAX_FPS}]")
    parser.add_argument(
        "--gif-max-side", type=int, default=GIF_MAX_SIDE, help="GIF frames are shrunk until their longer side fits"
    )
    args = parser.parse_args(argv)

    if args.batch < 1 or args.steps < 0:
        parser.error("--batch must be >= 1 and --steps >= 0")
    if not 0 < args.fps <= MAX_FPS:
        parser.error(f"--fps must be in (0, {MAX_FPS}], got {args.fps:g}")
    if args.gif_max_side < 16:
        parser.error(f"--gif-max-side must be >= 16, got {args.gif_max_side}")
    check_output(parser, "--out", args.out, ".png")
    check_output(parser, "--gif", args.gif, ".gif")
    try:
        env = envs.make(args.game, **game_config(args, parser))
    except (envs.UnknownGameError, envs.ConfigError) as err:
        parser.error(str(err))

    from PIL import Image

    start = time.perf_counter()
    state, history, rewards, finished = play(
        env, jax.random.key(args.seed), args.batch, args.steps, args.policy, args.gif is not None
    )
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - start
    render = jax.jit(jax.vmap(lambda s: env.render(s, env.default_params)))

    def picture(states) -> np.ndarray:
        return frame_grid(np.asarray(render(states)))

    Image.fromarray(picture(state)).save(args.out)
    print(
        f"{env!r}: {args.batch} board(s), {args.steps} random {args.policy} moves in {elapsed:.2f} s (compile included)"
    )
    print(f"wrote {args.out}")
    if args.gif:
        history = jax.device_get(history)
        write_gif(
            args.gif, (picture(envs.unbatch(history, t)) for t in range(args.steps + 1)), args.fps, args.gif_max_side
        )
        print(f"wrote {args.gif} ({args.steps + 1} frames, {os.path.getsize(args.gif) / 1e6:.1f} MB)")
    print(
        f"mean reward per move {float(rewards.mean()) / max(args.steps, 1):+.3f}; finished games: {int(finished.sum())}"
    )
    print(f"board 0 as the model's perception text must read it:\n{env.describe(envs.unbatch(state, 0))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
