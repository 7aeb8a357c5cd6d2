"""Train a policy on the games with GRPO.

    python experiments/train.py                                   # the default CPU run (tiny model, 2048)
    python experiments/train.py --config my.yaml --steps 200      # a config file, then flag overrides
    python experiments/train.py --recipe g0                       # the same RL budget without the cold start
    python experiments/train.py --model Qwen/Qwen2.5-VL-7B-Instruct --recipe g1-paper --game swap --mesh 1,8,1
    python experiments/train.py --run-dir runs/x --resume         # continue a run exactly where it stopped

Every value is checked before anything compiles; a bad one is a one-line error (exit status 2).
`--set key=value` sets any TrainConfig field (values parsed as JSON when they parse, else strings).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from envs import ConfigError  # noqa: E402  (the base of every config error, games' and learner's)
from g1jax.checkpoint import CheckpointError  # noqa: E402
from g1jax.train import G1_RECIPE, TrainConfig, make_trainer  # noqa: E402

# Small settings for a 2-CPU machine: a tiny random-init model on 2048 at a small frame size.
# max_new_tokens 144: the greedy teacher's full G1 answers on 2048 reach ~130 tokens with the stop token.
CPU_SMALL = dict(model="tiny", games=("2048",), image_size=(140, 112), states_per_step=16, group_size=4,
                 max_new_tokens=144, learning_rate=3e-4, checkpoint_every=20, sample_every=20, eval_states=256,
                 strict_format=True)
# G1 in miniature: a cold start on an imperfect programmatic teacher, then GRPO, evaluated on held-out
# start states before and after RL. G0: the same RL budget without the cold start.
# 2048's teacher is the greedy best-merge player, which with epsilon 0.5 makes an imperfect teacher;
# other games take their default teacher.
G1_SMALL = dict(CPU_SMALL, sft_steps=60, sft_learning_rate=3e-3, teacher={"2048": "greedy"}, teacher_epsilon=0.5,
                steps=40, run_dir="runs/default")
G0_SMALL = dict(CPU_SMALL, sft_steps=0, steps=40, run_dir="runs/g0")
# The paper's settings for real checkpoints (Qwen2.5-VL-3B/7B, accelerators); the cold start's length and
# step size are not published (docs/rl.md), these are ours.
G1_PAPER = dict(G1_RECIPE, sft_steps=200, sft_learning_rate=2e-5, teacher=None, teacher_epsilon=0.0, steps=400,
                eval_states=128, run_dir="runs/g1")
G0_PAPER = dict(G1_RECIPE, steps=400, eval_states=128, run_dir="runs/g0")
RECIPES = {"default": G1_SMALL, "g1": G1_SMALL, "g0": G0_SMALL, "g1-paper": G1_PAPER, "g0-paper": G0_PAPER}

FLAGS = {  # flag -> TrainConfig field
    "model": "model", "game": "games", "states": "states_per_step", "group_size": "group_size",
    "max_new_tokens": "max_new_tokens", "mesh": "mesh", "steps": "steps", "run_dir": "run_dir", "lr": "learning_rate",
    "seed": "seed", "temperature": "temperature", "micro_batch_states": "micro_batch_states", "kl_coef": "kl_coef",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", help="a JSON or YAML file of TrainConfig fields")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                        help="preset values the config file and flags override (default: G1 in miniature on CPU; "
                        "g0 / g1 small CPU settings, g0-paper / g1-paper the paper's for real checkpoints)")
    parser.add_argument("--model", help="a preset (tiny, bench, 3b, 7b), a local Hugging Face directory or a hub id")
    parser.add_argument("--game", nargs="+", help="one or several games (" + ", ".join(_games()) + ")")
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
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any TrainConfig field")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() first (run the same command on every host)")
    return parser.parse_args(argv)


def _games():
    import envs

    return envs.list_games()


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


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    values = dict(RECIPES[args.recipe])
    saved = os.path.join(args.run_dir or values["run_dir"], "config.json")
    if args.resume and not args.config and os.path.isfile(saved):
        values = read_config_file(saved)  # a resumed run keeps its own settings unless flags change them
    if args.config:
        values.update(read_config_file(args.config))
    for flag, field in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            values[field] = tuple(value) if field == "games" else value
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    if args.no_progress:
        values["progress"] = False
    return TrainConfig.from_dict(values)


def gain_table(summary: dict) -> str:
    """The held-out evaluation as a table: the policy entering RL, after RL, and the baselines (random, the
    best blind fixed move, the cold-start teacher), then the paired comparisons on the game reward."""
    blind = ", ".join(f"{game} {action}" for game, action in summary.get("blind_actions", {}).items())
    rows = [("before RL", summary["before"]), ("after RL", summary["after"]), ("random", summary["random"]),
            (f"blind ({blind})" if blind else "blind", summary["blind"])]
    if "teacher" in summary:
        rows.append(("teacher", summary["teacher"]))
    lines = [f"held-out start states: {summary['before']['n']}  (run: {summary['run_dir']}, summary.json)",
             f"{'policy':<16} {'reward':>7} {'game':>7} {'± SE':>6} {'format':>7} {'strict':>7} {'percept.':>8} "
             f"{'cells':>6}"]
    for name, block in rows:
        lines.append(f"{name:<16} {block['reward']:>+7.3f} {block['reward_game']:>+7.3f} {block['reward_game_se']:>6.3f} "
                     f"{block['reward_format']:>7.3f} {block['format_strict']:>7.3f} "
                     f"{block['reward_perception']:>8.3f} {block['perception_cells']:>6.3f}")
    lines.append(f"perception per cell: chance (best fixed board) {summary['perception_chance']:.3f}; after - before "
                 f"{summary['perception_cells_gain']:+.3f} ± {summary['perception_cells_gain_se']:.3f}; "
                 f"sees: {summary['sees']}")
    ratio = summary["gain_over_se"]
    ratio = f"{ratio:.1f} SE" if math.isfinite(ratio) else "no spread to measure it in SE"
    lines.append(f"total reward after - before: {summary['gain']:+.3f} ± {summary['gain_se']:.3f} = {ratio}")
    lines.append(f"game reward after - before: {summary['gain_game']:+.3f} ± {summary['gain_game_se']:.3f}; after - "
                 f"random {summary['game_over_random']:+.3f} ± {summary['game_over_random_se']:.3f}; after - blind "
                 f"{summary['game_over_blind']:+.3f} ± {summary['game_over_blind_se']:.3f} (SEs of paired "
                 f"differences); learned: {summary['learned']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.distributed:
        import jax

        jax.distributed.initialize()  # Cloud TPU: no arguments; GPU clusters: from SLURM / Open MPI variables
    try:
        config = resolve_config(args)
        trainer = make_trainer(config, resume=args.resume)
    except (ConfigError, CheckpointError, FileNotFoundError, NotADirectoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = trainer.run()
    if "before" in summary:
        print(gain_table(summary))
    else:
        final = summary["final"]
        print(f"{summary['steps']} steps in {summary['run_dir']}: last reward {final.get('reward', float('nan')):+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
