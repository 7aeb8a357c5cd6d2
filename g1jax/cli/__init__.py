"""The `g1jax` command: one entry point for the project's command-line tools.

    g1jax train --recipe g0 --steps 20      # = python experiments/train.py ...
    g1jax eval --game 2048 --policy random
    g1jax show swap --out swap.png
    g1jax teacher --game 2048

Each subcommand is a module with `main(argv)`, imported only when it runs (`g1jax SUBCOMMAND --help` lists
its options).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {  # subcommand -> (module holding its main(argv), what it does)
    "train": ("g1jax.cli.train", "train a policy on the games (G1's cold start, GRPO, held-out evaluation)"),
    "eval": ("g1jax.cli.evaluate", "evaluate policies in the paper's closed loop"),
    "show": ("envs.show", "draw a game's boards after random moves (PNG, GIF)"),
    "teacher": ("g1jax.cli.teacher", "play a game with a programmatic teacher"),
}


def usage() -> str:
    lines = ["usage: g1jax COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<9} {about}" for name, (_, about) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    sys.argv[0] = f"g1jax {command}"  # the program name the subcommand's usage and errors print
    return module.main(rest) or 0
