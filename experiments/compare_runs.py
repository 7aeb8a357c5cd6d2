"""Compare finished runs: the held-out before / after table of every run, the spread over seeds per
recipe, and the RL curves (reward, perception accuracy) of each recipe as one PNG.

    python experiments/compare_runs.py runs/seeds/*  --json out/compare.json --plot out/g1_vs_g0.png

A run directory is one written by experiments/train.py with eval_states > 0 (it has summary.json).
Runs are grouped by their recipe name: the directory name up to "_seed".
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def load(run_dir: str) -> dict:
    summary_path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(summary_path):
        raise FileNotFoundError(f"{run_dir} has no summary.json (not finished, or run without eval_states)")
    with open(summary_path) as f:
        summary = json.load(f)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        history = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    name = os.path.basename(os.path.normpath(run_dir))
    return {"run": name, "recipe": name.split("_seed")[0], "seed": config["seed"], "summary": summary,
            "history": [m for m in history if m.get("phase") == "rl"]}


def table(runs: list[dict]) -> tuple[str, dict]:
    lines = [f"{'run':<22} {'seed':>4} {'before':>15} {'after':>15} {'random':>8} {'gain':>7} {'gain/SE':>8} "
             f"{'after game':>10}"]
    for r in runs:
        s = r["summary"]
        ratio = s["gain"] / s["gain_se"] if s["gain_se"] else float("nan")
        lines.append(f"{r['run']:<22} {r['seed']:>4} {s['before']['reward']:>+8.3f}±{s['before']['reward_se']:.3f} "
                     f"{s['after']['reward']:>+8.3f}±{s['after']['reward_se']:.3f} {s['random']['reward']:>+8.3f} "
                     f"{s['gain']:>+7.3f} {ratio:>8.1f} {s['after']['reward_game']:>+10.3f}")
    spread = {}
    for recipe in dict.fromkeys(r["recipe"] for r in runs):
        group = [r["summary"] for r in runs if r["recipe"] == recipe]
        gains = np.asarray([s["gain"] for s in group])
        after = np.asarray([s["after"]["reward"] for s in group])
        spread[recipe] = {"runs": len(group), "gain_mean": float(gains.mean()),
                          "gain_sd": float(gains.std(ddof=1)) if len(group) > 1 else 0.0,
                          "after_mean": float(after.mean()),
                          "after_sd": float(after.std(ddof=1)) if len(group) > 1 else 0.0,
                          "learned": sum(bool(s["learned"]) for s in group)}
        sp = spread[recipe]
        lines.append(f"{recipe}: {sp['runs']} seeds, gain {sp['gain_mean']:+.3f} (sd {sp['gain_sd']:.3f}), after-RL "
                     f"reward {sp['after_mean']:+.3f} (sd {sp['after_sd']:.3f}), learned in {sp['learned']}/{sp['runs']}")
    return "\n".join(lines), spread


def plot(runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    colours = dict(zip(dict.fromkeys(r["recipe"] for r in runs), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for r in runs:
        steps = np.arange(1, len(r["history"]) + 1)
        for ax, key in zip(axes, ("reward", "perception_accuracy")):
            ax.plot(steps, [m[key] for m in r["history"]], color=colours[r["recipe"]], alpha=0.7,
                    label=r["recipe"] if r["seed"] == min(x["seed"] for x in runs if x["recipe"] == r["recipe"]) else None)
    for ax, title in zip(axes, ("mean reward per RL step", "perception accuracy per RL step")):
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--json", default="out/compare_runs.json")
    parser.add_argument("--plot", default="out/compare_runs.png")
    args = parser.parse_args(argv)
    try:
        runs = [load(d) for d in args.runs]
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text, spread = table(runs)
    print(text)
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"runs": [{k: r[k] for k in ("run", "recipe", "seed", "summary")} for r in runs],
                   "spread": spread}, f, indent=2)
    plot(runs, args.plot)
    print(f"wrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
