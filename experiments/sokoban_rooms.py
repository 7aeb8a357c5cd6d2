"""Sokoban rooms: our on-device generator against gym-sokoban's own (`generate_room`, a test
dependency), by the distribution of shortest-solution lengths (breadth-first, `envs.sokoban.solve`),
for a few reverse-play settings; and the time per room of both generators.

    python experiments/sokoban_rooms.py                  # 6x6, one box, 2000 reference rooms
    python experiments/sokoban_rooms.py --reference 500 --rooms 2000 --settings 4x300 8x50

BENCHMARKS.md ("Sokoban") has the output; tests/test_sokoban.py runs a smaller version.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import envs
from envs import sokoban

sys.path.insert(0, "tests")  # the shim that imports gym-sokoban without pkg_resources
from test_sokoban import gym_sokoban  # noqa: E402

MAX_LENGTH = 64


def reference_rooms(n: int, dim: tuple[int, int], num_boxes: int, seed: int) -> tuple[np.ndarray, float]:
    """n rooms of gym-sokoban's generator (a try that raises is retried, as SokobanEnv.reset does)
    as our boards, and the seconds per room."""
    _, room_utils = gym_sokoban()
    random.seed(seed)
    np.random.seed(seed)
    boards, start = [], time.perf_counter()
    while len(boards) < n:
        try:
            fixed, state, _ = room_utils.generate_room(dim=dim, num_steps=int(1.7 * sum(dim)), num_boxes=num_boxes)
        except (RuntimeError, RuntimeWarning):
            continue
        board = state.astype(np.int32)
        board[(board == 5) & (fixed == 2)] = 6
        boards.append(board)
    return np.stack(boards), (time.perf_counter() - start) / n


def histogram(lengths: np.ndarray) -> np.ndarray:
    return np.bincount(np.clip(lengths, 0, MAX_LENGTH - 1), minlength=MAX_LENGTH) / len(lengths)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=int, default=2000, help="gym-sokoban rooms")
    parser.add_argument("--rooms", type=int, default=4000, help="our rooms per setting")
    parser.add_argument(
        "--settings", nargs="*", default=["4x300", "8x300", "2x600", "16x60", "8x50"], help="WALKSxSTEPS"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    solve = jax.jit(jax.vmap(sokoban.solve))
    boards, seconds = reference_rooms(args.reference, (6, 6), 1, args.seed)
    ref = np.asarray(solve(jnp.asarray(boards))[1])
    q = histogram(ref)
    shown = 11
    print(f"# shortest-solution length shares, lengths 1..{shown - 1}; 6x6, one box")
    print(f"| generator | rooms | mean | TV vs gym-sokoban | {' | '.join(str(i) for i in range(1, shown))} |")
    print("|---|---|---|---|" + "---|" * (shown - 1))
    print(
        f"| gym-sokoban 0.0.6 (DFS) | {len(ref)} | {ref.mean():.2f} | — | "
        + " | ".join(f"{v:.3f}" for v in q[1:shown])
        + " |"
    )
    for setting in args.settings:
        walks, steps = map(int, setting.split("x"))
        env = envs.make("sokoban", reverse_walks=walks, reverse_steps=steps)
        out = jax.device_get(jax.jit(jax.vmap(env.generate))(jax.random.split(jax.random.key(args.seed), args.rooms)))
        ours = np.asarray(solve(jnp.asarray(out[0]))[1])
        assert (ours >= 1).all(), "an unsolvable room"
        p = histogram(ours)
        tv = 0.5 * np.abs(p - q).sum()
        print(
            f"| ours, {walks} walks x {steps} steps | {len(ours)} | {ours.mean():.2f} | {tv:.3f} | "
            + " | ".join(f"{v:.3f}" for v in p[1:shown])
            + " |"
        )
        if setting == args.settings[0]:
            tries, fallback = np.bincount(out[3])[1:].tolist(), int((out[2] == 0).sum())
            print(f"#   topologies drawn per room (1, 2, ...): {tries}; fallback rooms: {fallback}")
    print(f"# gym-sokoban generate_room: {seconds * 1e3:.2f} ms per room (Python, one core)")


if __name__ == "__main__":
    main()
