"""What an evaluation writes: the Figure-1 table (JSON, markdown), a cumulative-score plot per game
and every answer as JSON lines."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure  # no pyplot: the session's backend (a notebook's inline one) stays

import envs
from g1jax.evaluation.closed_loop import Rollout
from g1jax.evaluation.protocols import GAMES, PAPER_ROWS, PROTOCOLS


def figure1_table(rollouts: Sequence[Rollout]) -> dict:
    """Games as columns, policies as rows (ours, then the paper's Figure 1), as JSON-ready data."""
    games = [g for g in GAMES if any(r.game == g for r in rollouts)]
    ours: dict[str, dict] = {}
    for r in rollouts:
        ours.setdefault(r.policy, {})[r.game] = {
            "avg": r.mean,
            "se": r.se,
            "runs": r.runs,
            "steps": r.steps,
            "detail": r.detail,
            "seconds": round(r.seconds, 3),
            "compile_seconds": round(r.compile_seconds, 3),
        }
        if r.episodes is not None:
            ours[r.policy][r.game]["episodes"] = r.episodes
    return {
        "games": [{"game": g, "title": PROTOCOLS[g].title, "paper_runs": PROTOCOLS[g].runs} for g in games],
        "rows": [{"policy": name, "source": "ours", "scores": scores} for name, scores in ours.items()],
        "paper": [
            {
                "policy": name,
                "source": "paper (Figure 1)",
                "scores": {g: PROTOCOLS[g].paper_scores.get(name) for g in games},
            }
            for name in PAPER_ROWS
            if any(PROTOCOLS[g].paper for g in games)
        ],
    }


def _cell(score: dict | None) -> str:
    if score is None:
        return "—"
    se = "" if score["se"] is None else f" ± {score['se']:.3g}"
    detail = f", {score['detail']}" if score.get("detail") else ""
    cell = f"{score['avg']:.4g}{se} (N={score['runs']}{detail})"
    episodes = score.get("episodes")
    if episodes:  # the games scored "solved": success rate of the first games, decisions to solve
        cell += f"; success {episodes['success_rate']:.3g} ± {episodes['success_se']:.2g}"
        if episodes["steps_to_solve"] is not None:
            cell += f", {episodes['steps_to_solve']:.3g} decisions to solve"
        if episodes["unfinished"]:
            cell += f", {episodes['unfinished']} first games unfinished"
        cell += f"; {episodes['solved']} of {episodes['episodes']} ended games won"
    return cell


def _paper_header(game: dict) -> str:
    if not PROTOCOLS[game["game"]].paper:
        return f"{game['title']} (not in the paper)"
    return f"{game['title']} (paper avg@{game['paper_runs']})"


def table_markdown(table: dict) -> str:
    games = table["games"]
    header = "| policy | source | " + " | ".join(_paper_header(g) for g in games) + " |"
    lines = [header, "|" + "---|" * (len(games) + 2)]
    for row in table["rows"]:
        cells = [_cell(row["scores"].get(g["game"])) for g in games]
        lines.append(f"| {row['policy']} | ours | " + " | ".join(cells) + " |")
    for row in table["paper"]:
        cells = ["—" if row["scores"][g["game"]] is None else f"{row['scores'][g['game']]:g}" for g in games]
        lines.append(f"| {row['policy']} | paper | " + " | ".join(cells) + " |")
    steps = sorted({s["steps"] for row in table["rows"] for s in row["scores"].values()})
    note = (
        f"\nOurs: mean ± standard error over N runs of {', '.join(map(str, steps))} decisions each "
        "(2048: merge points; FrozenLake, Sokoban: games won, with the success rate, the share of runs whose "
        "first game was won within the decisions, and the decisions it took; the other games: successful moves). "
        "Protocol: docs/eval.md.\n"
    )
    return "\n".join(lines) + "\n" + note


def write_table(rollouts: Sequence[Rollout], json_path: str | None = None, markdown_path: str | None = None) -> dict:
    table = figure1_table(rollouts)
    for path, text in ((json_path, json.dumps(table, indent=2) + "\n"), (markdown_path, None)):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(text if text is not None else table_markdown(table))
    return table


def plot_cumulative(rollouts: Sequence[Rollout], path: str) -> None:
    """One game's cumulative score per step: every run thin, each policy's mean thick."""
    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.subplots()
    for index, r in enumerate(rollouts):
        color = f"C{index}"
        curves = np.cumsum(r.scores, axis=1)
        steps = np.arange(1, r.steps + 1)
        for curve in curves:
            ax.plot(steps, curve, color=color, alpha=0.2, linewidth=0.8)
        se = "" if r.se is None else f" ± {r.se:.3g}"
        ax.plot(
            steps, curves.mean(axis=0), color=color, linewidth=2.2, label=f"{r.policy}: {r.mean:.4g}{se} (N={r.runs})"
        )
    protocol = PROTOCOLS[rollouts[0].game]
    paper = protocol.paper_scores.get("Random")
    ax.set_title(
        f"{protocol.title}: cumulative score per run" + ("" if paper is None else f" (paper Random: {paper:g})")
    )
    ax.set_xlabel("decision")
    ax.set_ylabel({"merge": "merge points", "solved": "games won"}.get(protocol.score, "successful moves"))
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def write_answers(rollouts: Sequence[Rollout], env_by_game: dict[str, envs.Env], path: str) -> None:
    """Every decision as one JSON line: game, policy, run, step, answer, action played, score."""
    with open(path, "w") as f:
        for r in rollouts:
            env = env_by_game[r.game]
            for run in range(r.runs):
                for step in range(r.steps):
                    action = int(r.actions[run, step])
                    record = {
                        "game": r.game,
                        "policy": r.policy,
                        "run": run,
                        "step": step,
                        "answer": None if r.texts is None else r.texts[run][step],
                        "action": action,
                        "move": env.action_label(action),
                        "score": float(r.scores[run, step]),
                    }
                    f.write(json.dumps(record) + "\n")
