"""The teacher command: a teacher's closed-loop strength against random valid moves (docs/teachers.md).

python -m g1jax.cli.teacher --game 2048 --kind greedy --option depth=3 --epsilon 0.3 --boards 32 --moves 50
python -m g1jax.cli.teacher --game shisensho --config preset=more_tiles --seed 1
"""

from __future__ import annotations

import argparse
import json

import jax

import envs
from g1jax.evaluation.teacher_strength import default_moves, strength
from g1jax.teachers import TEACHERS, make_teacher


def _name_values(items: list[str], flag: str, parser) -> dict:
    """NAME=VALUE pairs; values are read as JSON where they parse (2, 0.5, true, [448, 392])."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"{flag} {item!r}: write NAME=VALUE")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--game", default="2048", choices=sorted({g for g, _ in TEACHERS}))
    parser.add_argument(
        "--config", action="append", default=[], metavar="NAME=VALUE", help="game option, e.g. preset=more_tiles"
    )
    parser.add_argument("--kind", default=None, help="teacher kind (default: the game's default)")
    parser.add_argument(
        "--option", action="append", default=[], metavar="NAME=VALUE", help="teacher option, e.g. depth=2"
    )
    parser.add_argument("--epsilon", type=float, default=0.0)
    parser.add_argument("--boards", type=int, default=32)
    parser.add_argument(
        "--moves", type=int, default=None, help="moves per board (default: 50; Shisen-Sho: a whole game)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.config = _name_values(args.config, "--config", parser)
    args.option = _name_values(args.option, "--option", parser)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    teacher = make_teacher(envs.make(args.game, **args.config), args.kind, epsilon=args.epsilon, **args.option)
    moves = default_moves(teacher.env)[1] if args.moves is None else args.moves
    result = strength(teacher, jax.random.key(args.seed), boards=args.boards, moves=moves)
    settings = ", ".join(f"{k}={v}" for k, v in {**args.config, **args.option, "epsilon": args.epsilon}.items())
    print(f"{args.game} / {teacher.kind} ({settings}): {args.boards} boards x {moves} moves, seed {args.seed}")
    print(f"{'policy':<10} {'points/board':>14} {'se':>8} {'legal moves':>12}")
    for name in ("teacher", "random"):
        row = result[name]
        print(f"{name:<10} {row['mean']:>14.2f} {row['se']:>8.2f} {row['legal'].mean():>12.2f}")
    d = result["difference"]
    print(
        f"teacher - random: {d['mean']:.2f} +- {d['se']:.2f} (paired se); "
        f"teacher ahead on {d['wins']} boards, behind on {d['losses']}"
    )


if __name__ == "__main__":
    main()
