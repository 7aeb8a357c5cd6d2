"""Closed-loop evaluation as in the G1 paper: N boards per game, 100 decisions each, avg@N ± SE.
(`python experiments/eval.py` runs the same command.)

    python -m g1jax.cli.evaluate --game all --policy random teacher --runs 10
    python -m g1jax.cli.evaluate --game 2048 --policy random --runs 10 --steps 100 --json out/2048.json
    python -m g1jax.cli.evaluate --game shisensho --policy model --model runs/x --out out/eval_x
    python -m g1jax.cli.evaluate --game swap --policy random random:aliased teacher:best_score --out out/swap
    python -m g1jax.cli.evaluate --game frozenlake --policy random teacher    # + success rate, steps to solve
    python -m g1jax.cli.evaluate --game sokoban --policy random teacher --steps 120  # its step limit

Policies: random (G1's random baselines), random:aliased (the original's coordinate aliasing),
teacher (each game's default programmatic teacher) or teacher:KIND, model (--model DIR: a run
directory with checkpoints or a Hugging Face directory). --runs defaults to the paper's N (10;
Swap 100; FrozenLake and Sokoban, not in the paper, 100). Every value is checked before anything
compiles; a bad one is a one-line error (exit status 2). The protocol and what was matched:
docs/eval.md. It runs in one process on one host: a run trained on several hosts is evaluated
from its checkpoints or its hf/ export on one machine.

--json writes the Figure-1 table (avg@N and SE per game and policy); --out DIR writes that table as
table.json and table.md, a cumulative-score plot per game, a video per run (MP4, or GIF without
ffmpeg) with each answer under its frame, and every answer as answers.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import jax

from g1jax import evaluation

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "g1jax", "jax")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument(
        "--game", nargs="+", default=["all"], help=f"{', '.join(evaluation.GAMES)} or all (default: all)"
    )
    parser.add_argument("--policy", nargs="+", default=["random"], help=", ".join(evaluation.POLICY_NAMES))
    parser.add_argument(
        "--runs", type=int, help="boards per game (default: the paper's N, 10; Swap 100; FrozenLake, Sokoban 100)"
    )
    parser.add_argument("--steps", type=int, default=100, help="decisions per board (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the Figure-1 table as JSON here")
    parser.add_argument("--out", help="results folder: table, plots, videos, answers")
    parser.add_argument("--videos", type=int, help="film only the first K runs of each row (default: every run)")
    parser.add_argument("--fps", type=float, default=2.0, help="video frames per second (default 2)")
    parser.add_argument(
        "--cifar-path",
        help="Shisen-Sho-Cifar10: a local CIFAR-10 python archive (default: the procedural picture bank)",
    )
    parser.add_argument(
        "--model",
        help="policy model: a run directory with checkpoints, a Hugging Face directory, "
        "or a preset name (random init, for smoke tests)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.5,
        help="model sampling temperature (default 0.5, G1's validation setting; 0 = greedy)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=1024, help="longest model answer in tokens (default 1024)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="draw every game at H x W instead of the protocol's frame size (multiples of 28)",
    )
    parser.add_argument(
        "--warmup-moves",
        type=int,
        help="random moves before the scored decisions, for every game (default: the protocol's, 2048 100, others 0)",
    )
    parser.add_argument(
        "--compile-cache",
        default=os.environ.get("JAX_COMPILATION_CACHE_DIR", DEFAULT_CACHE),
        help="JAX's persistent compilation cache: a second evaluation skips compiling (default "
        "%(default)s; '' turns it off)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def resolve_games(names) -> list[str]:
    if "all" in names:
        if len(names) > 1:
            raise evaluation.EvalError("--game all cannot be combined with other games")
        return list(evaluation.GAMES)
    for name in names:
        evaluation.protocol_for(name)
    return list(dict.fromkeys(names))


def image_size(protocol: evaluation.GameProtocol, args: argparse.Namespace) -> tuple[int, int]:
    return tuple(args.image_size) if args.image_size else dict(protocol.env_config)["image_size"]


def check_args(args: argparse.Namespace) -> tuple[list[str], evaluation.ModelSource | None]:
    """Validate everything that can be checked without compiling or loading weights; returns the
    games and the model source (None without a model policy)."""
    games = resolve_games(args.game)
    for spec in args.policy:
        evaluation.check_policy_spec(spec, games)
    if args.runs is not None and args.runs < 1:
        raise evaluation.EvalError(f"--runs must be >= 1, got {args.runs}")
    if args.steps < 1:
        raise evaluation.EvalError(f"--steps must be >= 1, got {args.steps}")
    if args.videos is not None and args.videos < 0:
        raise evaluation.EvalError(f"--videos must be >= 0, got {args.videos}")
    if not args.fps > 0:
        raise evaluation.EvalError(f"--fps must be > 0, got {args.fps}")
    if args.cifar_path is not None and not os.path.exists(args.cifar_path):
        raise evaluation.EvalError(f"--cifar-path {args.cifar_path} does not exist")
    if "model" in args.policy and not args.model:
        raise evaluation.EvalError("policy 'model' needs --model DIR")
    if args.model and "model" not in args.policy:
        raise evaluation.EvalError("--model is given but no 'model' policy is requested (add --policy model)")
    if not args.temperature >= 0:
        raise evaluation.EvalError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.warmup_moves is not None and args.warmup_moves < 0:
        raise evaluation.EvalError(f"--warmup-moves must be >= 0, got {args.warmup_moves}")
    if args.max_new_tokens < 1:
        raise evaluation.EvalError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    source = evaluation.resolve_model(args.model) if args.model else None
    if source is not None:
        for game in games:
            evaluation.check_model_fits(source, image_size(evaluation.PROTOCOLS[game], args), args.max_new_tokens, game)
    return games, source


def protocol_of(game: str, args: argparse.Namespace) -> evaluation.GameProtocol:
    protocol = evaluation.PROTOCOLS[game]
    if args.warmup_moves is not None:
        protocol = dataclasses.replace(protocol, warmup_moves=args.warmup_moves)
    return protocol


def make_env(protocol: evaluation.GameProtocol, args: argparse.Namespace, source=None):
    overrides = {"image_size": image_size(protocol, args)}
    if source is not None:
        overrides.update(source.train_prompt_options(protocol.game))
    if protocol.game == "shisensho_photo" and args.cifar_path:
        overrides["cifar_path"] = args.cifar_path
    return protocol.make_env(**overrides)


def make_policies(args, protocol, env, runs, model):
    policy_model = None
    if model is not None:
        policy_model = evaluation.ModelPolicy(
            *model, env, runs, temperature=args.temperature, max_new_tokens=args.max_new_tokens, detail=args.model
        )
    return [evaluation.make_policy(spec, env, protocol, model=policy_model) for spec in args.policy]


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        games, source = check_args(args)
        protocols = {game: protocol_of(game, args) for game in games}
        game_envs = {game: make_env(protocols[game], args, source) for game in games}
        model = evaluation.load_model(source) if source is not None else None
        runs = {game: args.runs or protocols[game].runs for game in games}
        policies = {g: make_policies(args, protocols[g], game_envs[g], runs[g], model) for g in games}
    except (evaluation.EvalError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
    key = jax.random.key(args.seed)
    keep_texts = args.out is not None
    rollouts = []
    for game in games:
        protocol, env = protocols[game], game_envs[game]
        rows = evaluation.evaluate(
            protocol,
            env,
            policies[game],
            runs=runs[game],
            steps=args.steps,
            key=jax.random.fold_in(key, evaluation.GAMES.index(game)),
            progress=not args.no_progress,
            keep_texts=keep_texts,
        )
        rollouts += rows
        if args.out:
            write_game_outputs(args, rows, env)

    table = evaluation.write_table(rollouts, json_path=args.json)
    if args.out:
        evaluation.write_table(rollouts, os.path.join(args.out, "table.json"), os.path.join(args.out, "table.md"))
        evaluation.write_answers(rollouts, game_envs, os.path.join(args.out, "answers.jsonl"))
    print(evaluation.table_markdown(table))
    return 0


def write_game_outputs(args, rows, env) -> None:
    os.makedirs(args.out, exist_ok=True)
    evaluation.plot_cumulative(rows, os.path.join(args.out, f"cumulative_{rows[0].game}.png"))
    for rollout in rows:
        evaluation.write_videos(rollout, env, os.path.join(args.out, "videos"), max_runs=args.videos, fps=args.fps)


if __name__ == "__main__":
    sys.exit(main())
