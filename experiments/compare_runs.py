"""Compare finished runs: the held-out game reward of every run before / after RL beside its baselines
(random, best blind move, teacher), the spread over seeds per recipe, and the RL curves (game reward,
per-cell perception accuracy, with the baselines' levels as lines) as one PNG.

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
    return {
        "run": name,
        "recipe": name.split("_seed")[0],
        "seed": config["seed"],
        "summary": summary,
        "history": [m for m in history if m.get("phase") == "rl"],
    }


def _sd(values) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def table(runs: list[dict]) -> tuple[str, dict]:
    """One line per run (game reward before / after RL and of the baselines, the paired game-reward gain,
    per-cell perception, learned), then the spread over seeds of each recipe."""
    lines = [
        f"{'run':<22} {'seed':>4} {'game before':>12} {'game after':>12} {'random':>7} {'blind':>7} "
        f"{'teacher':>7} {'gain game':>14} {'cells':>11} {'strict':>6} {'learned':>7}"
    ]
    for r in runs:
        s = r["summary"]
        teacher = s.get("teacher", {}).get("reward_game", float("nan"))
        lines.append(
            f"{r['run']:<22} {r['seed']:>4} {s['before']['reward_game']:>+12.3f} "
            f"{s['after']['reward_game']:>+12.3f} {s['random']['reward_game']:>+7.3f} "
            f"{s['blind']['reward_game']:>+7.3f} {teacher:>+7.3f} "
            f"{s['gain_game']:>+7.3f}±{s['gain_game_se']:.3f} "
            f"{s['after']['perception_cells']:.3f}/{s['perception_chance']:.3f} "
            f"{s['after']['format_strict']:>6.3f} {str(s['learned']):>7}"
        )
    spread = {}
    for recipe in dict.fromkeys(r["recipe"] for r in runs):
        group = [r["summary"] for r in runs if r["recipe"] == recipe]
        gains = [s["gain_game"] for s in group]
        after = [s["after"]["reward_game"] for s in group]
        cells = [s["after"]["perception_cells"] for s in group]
        spread[recipe] = {
            "runs": len(group),
            "gain_game_mean": float(np.mean(gains)),
            "gain_game_sd": _sd(gains),
            "after_game_mean": float(np.mean(after)),
            "after_game_sd": _sd(after),
            "after_cells_mean": float(np.mean(cells)),
            "after_cells_sd": _sd(cells),
            "learned": sum(bool(s["learned"]) for s in group),
        }
        sp = spread[recipe]
        lines.append(
            f"{recipe}: {sp['runs']} seeds, game-reward gain {sp['gain_game_mean']:+.3f} "
            f"(sd {sp['gain_game_sd']:.3f}), after-RL game reward {sp['after_game_mean']:+.3f} "
            f"(sd {sp['after_game_sd']:.3f}), per-cell perception {sp['after_cells_mean']:.3f} "
            f"(sd {sp['after_cells_sd']:.3f}), learned in {sp['learned']}/{sp['runs']}"
        )
    return "\n".join(lines), spread


BASELINES = (("random", ":"), ("blind", "--"), ("teacher", "-."))


def plot(runs: list[dict], path: str) -> None:
    """Game reward and per-cell perception accuracy per RL step of every run (one colour per recipe), with
    the held-out levels of the random, best blind and teacher policies (means over the runs) as lines."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2)
    cycle = ["C0", "C1", "C2", "C3", "C4", "C5"]
    colours = dict(zip(dict.fromkeys(r["recipe"] for r in runs), cycle * 4))
    for r in runs:
        steps = np.arange(1, len(r["history"]) + 1)
        first = r["seed"] == min(x["seed"] for x in runs if x["recipe"] == r["recipe"])
        for ax, key in zip(axes, ("reward_game", "perception_cells")):
            ax.plot(
                steps,
                [m.get(key, np.nan) for m in r["history"]],
                color=colours[r["recipe"]],
                alpha=0.7,
                label=r["recipe"] if first else None,
            )
    for name, style in BASELINES:
        levels = [r["summary"][name] for r in runs if name in r["summary"]]
        if levels:
            for ax, key in zip(axes, ("reward_game", "perception_cells")):
                ax.axhline(np.mean([b[key] for b in levels]), color="grey", linestyle=style, label=f"{name} (held out)")
    chance = np.mean([r["summary"]["perception_chance"] for r in runs])
    axes[1].axhline(chance, color="black", linestyle=":", label="chance (best fixed board)")
    for ax, title in zip(axes, ("game reward per RL step", "per-cell perception accuracy per RL step")):
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)


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
        json.dump(
            {"runs": [{k: r[k] for k in ("run", "recipe", "seed", "summary")} for r in runs], "spread": spread},
            f,
            indent=2,
        )
    plot(runs, args.plot)
    print(f"wrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
