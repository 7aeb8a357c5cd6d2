"""Train a policy on the games with GRPO.

    g1jax train                                                   # the default CPU run (tiny model, 2048)
    g1jax train --config my.yaml --steps 200                      # a config file, then flag overrides
    g1jax train --recipe g0                                       # the same RL budget without the cold start
    g1jax train --model Qwen/Qwen2.5-VL-7B-Instruct --recipe g1-paper --game swap --mesh 1,8,1
    g1jax train --run-dir runs/x --resume                         # continue a run exactly where it stopped
    g1jax train --distributed --coordinator host0:1234 --num-processes 2 --process-id I ...   # on host I

(`python experiments/train.py ...` is the same command.) Settings are read in this order, each overriding
the last: the recipe (g1jax/recipes.py), the run directory's config.json on --resume, --config, the flags,
--set. Every value is checked before anything compiles; a bad one is a one-line error (exit status 2).
`--set key=value` sets any TrainConfig field (values parsed as JSON when they parse, else strings); the GRPO
fields take a dotted key, `--set grpo.kl_coef=0.01`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import envs
from envs import ConfigError  # the base of every config error, games' and learner's
from g1jax.checkpoint import CheckpointError
from g1jax.config import TrainConfig
from g1jax.recipes import RECIPES, recipe
from g1jax.trainer import make_trainer

FLAGS = {  # flag -> TrainConfig field (a dotted name: a field of a nested section)
    "model": "model",
    "game": "games",
    "states": "states_per_step",
    "group_size": "grpo.group_size",
    "max_new_tokens": "max_new_tokens",
    "mesh": "mesh",
    "steps": "steps",
    "run_dir": "run_dir",
    "lr": "learning_rate",
    "seed": "seed",
    "temperature": "temperature",
    "micro_batch_states": "micro_batch_states",
    "kl_coef": "grpo.kl_coef",
}
# Fields that hold a nested config (grpo; multiturn, None unless set): overrides of them change the fields they
# name, not the whole section.
SECTIONS = (*(f.name for f in dataclasses.fields(TrainConfig) if dataclasses.is_dataclass(f.default)), "multiturn")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--config", help="a JSON or YAML file of TrainConfig fields")
    parser.add_argument(
        "--recipe",
        choices=list(RECIPES),
        default="default",
        help="preset values the config file and flags override (default: G1 in miniature on CPU; "
        "g0 / g1 small CPU settings, g0-paper / g1-paper the paper's for real checkpoints)",
    )
    parser.add_argument("--model", help="a preset (tiny, bench, 3b, 7b), a local Hugging Face directory or a hub id")
    parser.add_argument("--game", nargs="+", help="one or several games (" + ", ".join(envs.list_games()) + ")")
    parser.add_argument("--states", type=int, help="start states per step (split across games)")
    parser.add_argument("--group-size", type=int, help="answers sampled per state (>= 2)")
    parser.add_argument("--max-new-tokens", type=int, help="longest answer in tokens")
    parser.add_argument("--mesh", help="device mesh data,fsdp,tp, e.g. 1,1,1 or 2,4,1 (-1 = the rest)")
    parser.add_argument("--steps", type=int, help="total GRPO steps")
    parser.add_argument("--lr", type=float, help="learning rate")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--micro-batch-states", type=int, help="states per gradient-accumulation micro-batch")
    parser.add_argument("--kl-coef", type=float)
    parser.add_argument("--run-dir", help="where config, metrics, samples and checkpoints go")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any TrainConfig field; grpo.FIELD for a GRPO setting",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run first (jax.distributed.initialize; run the same command on every host): "
        "the cluster (Cloud TPU, SLURM, Open MPI) is detected, or --coordinator, --num-processes and "
        "--process-id name it",
    )
    parser.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="process 0's address (or $JAX_COORDINATOR_ADDRESS); with --distributed",
    )
    parser.add_argument("--num-processes", type=int, help="processes in the run (or $JAX_NUM_PROCESSES)")
    parser.add_argument("--process-id", type=int, help="this process's index, 0 .. N-1 (or $JAX_PROCESS_ID)")
    parser.add_argument(
        "--join-timeout",
        type=int,
        default=60,
        metavar="SECONDS",
        help="how long a process waits for all the others to reach the coordinator before it stops with a "
        "one-line error, exit status 2 (default 60)",
    )
    return parser.parse_args(argv)


DISTRIBUTED_FLAGS = {  # flag -> the environment variable that may stand in for it
    "coordinator": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


def process_layout(args: argparse.Namespace) -> dict[str, Any]:
    """jax.distributed.initialize's coordinator_address, num_processes and process_id from the flags (or
    their environment variables); empty when none is given (the cluster is then detected)."""
    given = {}
    for flag, variable in DISTRIBUTED_FLAGS.items():
        value = getattr(args, flag)
        given[flag] = value if value is not None else os.environ.get(variable)
    if all(value is None for value in given.values()):
        return {}
    missing = [f"--{flag.replace('_', '-')}" for flag, value in given.items() if value is None]
    if missing:
        raise ConfigError(
            f"--distributed without a cluster to detect needs --coordinator, --num-processes and --process-id "
            f"(or {', '.join(DISTRIBUTED_FLAGS.values())}); missing: {', '.join(missing)}"
        )
    host, colon, port = str(given["coordinator"]).rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ConfigError(f"--coordinator must be HOST:PORT, e.g. host0:1234, got {given['coordinator']!r}")
    try:
        count, index = int(given["num_processes"]), int(given["process_id"])
    except ValueError:
        raise ConfigError(
            f"--num-processes and --process-id must be integers, got {given['num_processes']!r} and "
            f"{given['process_id']!r}"
        ) from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--process-id must be in 0 .. {count - 1} for --num-processes {count}, got {index}")
    return dict(coordinator_address=given["coordinator"], num_processes=count, process_id=index)


def wait_for_coordinator(address: str, timeout: float) -> None:
    """Return once `address` (HOST:PORT) accepts a connection; a one-line error after `timeout` seconds.

    Checked here because XLA's own client, when the coordinator does not answer, aborts the process with
    a C++ stack trace instead of raising."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=max(deadline - time.monotonic(), 0.1)).close()
            return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"--distributed: the coordinator {address} did not answer within {timeout:g} s ({error}); "
                    "start process 0 first, or check the address and --join-timeout"
                ) from None
            time.sleep(0.5)


def join_processes(args: argparse.Namespace) -> None:
    """jax.distributed.initialize with this run's process layout, processes waiting --join-timeout seconds
    for each other: an unreachable coordinator, or processes that never come, is a one-line error on every
    process that waits, not a hang or XLA's abort."""
    if not args.distributed:
        named = [f"--{flag.replace('_', '-')}" for flag in DISTRIBUTED_FLAGS if getattr(args, flag) is not None]
        if named:
            raise ConfigError(f"{', '.join(named)} go with --distributed")
        return
    if args.join_timeout < 1:
        raise ConfigError(f"--join-timeout must be at least 1 second, got {args.join_timeout}")
    layout = process_layout(args)
    started = time.monotonic()
    if layout and layout["process_id"] > 0:
        wait_for_coordinator(layout["coordinator_address"], args.join_timeout)
    import jax

    # XLA's client, when not every process registers in time, aborts this process with a C++ stack trace
    # (LOG(FATAL), nothing Python can catch). So a timer of our own stops the process first, in one line;
    # XLA's own deadline is set past it and only acts if the timer could not.
    count = f"{layout['num_processes']} " if layout else ""
    where = f"the coordinator {layout['coordinator_address']}" if layout else "the detected coordinator"
    message = (
        f"error: --distributed: not all {count}processes joined at {where} within {args.join_timeout} s; "
        "start the same command on every host (another process id on each), or raise --join-timeout\n"
    )
    timer = threading.Timer(max(started + args.join_timeout - time.monotonic(), 0.1), _give_up, (message,))
    timer.daemon = True
    timer.start()
    try:
        jax.distributed.initialize(**layout, initialization_timeout=args.join_timeout + JOIN_MARGIN_S)
    finally:
        timer.cancel()


JOIN_MARGIN_S = 30  # XLA's own join deadline lies this far past --join-timeout


def _give_up(message: str) -> None:
    """End this process at once with `message` on stderr (exit status 2): the main thread is inside XLA's
    join and cannot be interrupted."""
    sys.stdout.flush()
    sys.stderr.write(message)
    sys.stderr.flush()
    os._exit(2)


def read_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as error:  # json / yaml parse errors
        raise ConfigError(f"config file {path} does not parse: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of TrainConfig fields")
    return values


def merge(values: dict, overrides: Mapping[str, Any]) -> None:
    """Write `overrides` into `values`: a nested section (grpo) field by field, any other field whole."""
    for key, value in overrides.items():
        if key in SECTIONS and isinstance(value, Mapping) and isinstance(values.get(key), Mapping):
            values[key] = {**values[key], **value}
        else:
            values[key] = value


def set_field(values: dict, key: str, value) -> None:
    """Set field `key` ("kl_coef" style, or "grpo.kl_coef" for a field of a nested section)."""
    section, dot, field = key.partition(".")
    if not dot:
        merge(values, {key: value})
    elif section in SECTIONS and field and "." not in field:
        merge(values, {section: {field: value}})
    else:
        raise ConfigError(f"--set {key}: a dotted key names a field of {' or '.join(SECTIONS)}, e.g. grpo.kl_coef")


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    values = recipe(args.recipe)
    saved = os.path.join(args.run_dir or values["run_dir"], "config.json")
    if args.resume and not args.config and os.path.isfile(saved):
        values = read_config_file(saved)  # a resumed run keeps its own settings unless flags change them
    if args.config:
        merge(values, read_config_file(args.config))
    for flag, field in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            set_field(values, field, tuple(value) if field == "games" else value)
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        set_field(values, key, value)
    if args.no_progress:
        values["progress"] = False
    return TrainConfig.from_dict(values)


def gain_table(summary: dict) -> str:
    """The held-out evaluation as a table: the policy entering RL, after RL, and the baselines (random, the
    best blind fixed move, the cold-start teacher), then the paired comparisons on the game reward."""
    blind = ", ".join(f"{game} {action}" for game, action in summary.get("blind_actions", {}).items())
    rows = [
        ("before RL", summary["before"]),
        ("after RL", summary["after"]),
        ("random", summary["random"]),
        (f"blind ({blind})" if blind else "blind", summary["blind"]),
    ]
    if "teacher" in summary:
        rows.append(("teacher", summary["teacher"]))
    lines = [
        f"held-out start states: {summary['before']['n']}  (run: {summary['run_dir']}, summary.json)",
        f"{'policy':<16} {'reward':>7} {'game':>7} {'± SE':>6} {'format':>7} {'strict':>7} {'percept.':>8} "
        f"{'cells':>6}",
    ]
    for name, block in rows:
        lines.append(
            f"{name:<16} {block['reward']:>+7.3f} {block['reward_game']:>+7.3f} "
            f"{block['reward_game_se']:>6.3f} {block['reward_format']:>7.3f} {block['format_strict']:>7.3f} "
            f"{block['reward_perception']:>8.3f} {block['perception_cells']:>6.3f}"
        )
    lines.append(
        f"perception per cell: chance (best fixed board) {summary['perception_chance']:.3f}; after - before "
        f"{summary['perception_cells_gain']:+.3f} ± {summary['perception_cells_gain_se']:.3f}; "
        f"sees: {summary['sees']}"
    )
    ratio = summary["gain_over_se"]
    ratio = f"{ratio:.1f} SE" if math.isfinite(ratio) else "no spread to measure it in SE"
    lines.append(f"total reward after - before: {summary['gain']:+.3f} ± {summary['gain_se']:.3f} = {ratio}")
    lines.append(
        f"game reward after - before: {summary['gain_game']:+.3f} ± {summary['gain_game_se']:.3f}; after - "
        f"random {summary['game_over_random']:+.3f} ± {summary['game_over_random_se']:.3f}; after - blind "
        f"{summary['game_over_blind']:+.3f} ± {summary['game_over_blind_se']:.3f} (SEs of paired "
        f"differences); learned: {summary['learned']}"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        join_processes(args)
        config = resolve_config(args)
        trainer = make_trainer(config, resume=args.resume)
    except (ConfigError, CheckpointError, FileNotFoundError, NotADirectoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = trainer.run()
    if "before" in summary:
        print(gain_table(summary))
    elif "before_game_return" in summary:  # a multi-turn run's held-out episodes
        from g1jax.multiturn_trainer import episode_table

        print(episode_table(summary))
    else:
        final = summary["final"]
        print(f"{summary['steps']} steps in {summary['run_dir']}: last reward {final.get('reward', float('nan')):+.3f}")
    return 0
