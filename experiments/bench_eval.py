"""Evaluation speed and faithfulness: the random and teacher rows of every G1 game.

    python experiments/bench_eval.py --json out/bench_eval.json  # speed at N = 10, then N = 1000 random rows
    python experiments/bench_eval.py --faithfulness-runs 0       # speed only

Speed: per game, the env's construction, the one compile of the game's device loop (random and
teacher rows share it), each row's run, and the whole game again with the compiled loop cached
(what a second evaluation in the same process costs), 100 decisions per board as in the paper.
Wall seconds, and the process's CPU seconds for the cold total (on a loaded machine the wall time
is mostly waiting; XLA compiles on more than one thread, so on a quiet one CPU > wall).
Faithfulness: the random rows (and 2048 without its warm-up, an open question of the protocol)
at a large N, beside the paper's Random row, so the gap, if any, is measured and not guessed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import jax

from g1jax import evaluation as ev


def speed(game: str, runs: int, steps: int, policies: list[str]) -> dict:
    protocol = ev.PROTOCOLS[game]
    begin, cpu = time.perf_counter(), time.process_time()
    env = protocol.make_env()
    construct = time.perf_counter() - begin
    rows = [ev.make_policy(spec, env, protocol) for spec in policies]
    begin = time.perf_counter()
    first = ev.evaluate(
        protocol, env, rows, runs=runs, steps=steps, key=jax.random.key(0), progress=False, keep_texts=False
    )
    cold, cold_cpu = time.perf_counter() - begin, time.process_time() - cpu
    begin = time.perf_counter()
    again = ev.evaluate(
        protocol, env, rows, runs=runs, steps=steps, key=jax.random.key(1), progress=False, keep_texts=False
    )
    warm = time.perf_counter() - begin
    return {
        "game": game,
        "runs": runs,
        "steps": steps,
        "construct_s": construct,
        "compile_s": first[0].compile_seconds,
        "rows": {r.policy: {"run_s": r.seconds, "avg": r.mean, "se": r.se, "detail": r.detail} for r in first},
        "rows_again": {r.policy: {"run_s": r.seconds, "avg": r.mean, "se": r.se} for r in again},
        "cold_total_s": construct + cold,
        "cold_total_cpu_s": cold_cpu,
        "warm_total_s": warm,
    }


def faithfulness(game: str, runs: int, steps: int) -> list[dict]:
    protocol = ev.PROTOCOLS[game]
    env = protocol.make_env()
    variants = [("paper protocol", protocol)]
    if protocol.warmup_moves:
        variants.append(("no warm-up", dataclasses.replace(protocol, warmup_moves=0)))
    specs = ["random"] + (["random:aliased"] if protocol.original_base else [])
    out = []
    for label, variant in variants:
        policies = [ev.make_policy(spec, env, variant) for spec in (specs if label == "paper protocol" else ["random"])]
        for r in ev.evaluate(
            variant, env, policies, runs=runs, steps=steps, key=jax.random.key(7), progress=False, keep_texts=False
        ):
            out.append(
                {
                    "game": game,
                    "policy": r.policy,
                    "protocol": label,
                    "runs": r.runs,
                    "steps": r.steps,
                    "avg": r.mean,
                    "se": r.se,
                    "sd": float(r.totals.std(ddof=1)),
                    "paper_random": protocol.paper_scores["Random"],
                }
            )
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", nargs="*", default=list(ev.GAMES))
    parser.add_argument("--runs", type=int, default=10, help="boards per game for the speed rows (default 10)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--policies", nargs="*", default=["random", "teacher"])
    parser.add_argument("--faithfulness-runs", type=int, default=1000, help="boards per random row (0: skip)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "load_average": os.getloadavg(),
        },
        "speed": [],
        "faithfulness": [],
    }
    total = 0.0
    print(
        f"| game | construct s | compile s | {' | '.join(p + ' run s' for p in args.policies)} | cold total s | "
        f"cold total CPU s | warm total s | {' | '.join(args.policies)} |"
    )
    print("|" + "---|" * (6 + 2 * len(args.policies)))
    for game in args.games:
        row = speed(game, args.runs, args.steps, args.policies)
        result["speed"].append(row)
        total += row["cold_total_s"]
        runs = " | ".join(f"{r['run_s']:.3f}" for r in row["rows"].values())
        scores = " | ".join(f"{r['avg']:.4g} ± {r['se']:.3g}" for r in row["rows"].values())
        print(
            f"| {game} | {row['construct_s']:.2f} | {row['compile_s']:.2f} | {runs} | {row['cold_total_s']:.2f} | "
            f"{row['cold_total_cpu_s']:.2f} | {row['warm_total_s']:.3f} | {scores} |",
            flush=True,
        )
    result["cold_total_all_games_s"] = total
    print(f"\nall games, cold: {total:.1f} s\n")

    if args.faithfulness_runs:
        print("| game | policy | protocol | N | avg ± SE | SD of a run | paper Random |")
        print("|---|---|---|---|---|---|---|")
        for game in args.games:
            for row in faithfulness(game, args.faithfulness_runs, args.steps):
                result["faithfulness"].append(row)
                print(
                    f"| {game} | {row['policy']} | {row['protocol']} | {row['runs']} | {row['avg']:.4g} ± "
                    f"{row['se']:.2g} | {row['sd']:.3g} | {row['paper_random']:g} |",
                    flush=True,
                )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
