"""The held-out comparison of a run: does the policy after RL play better, and does it see?

On start states that no training step drew (a key of their own), every row answers once:

    policy    the model (before RL and after RL), one sampled answer per state
    random    G1's random baseline: a uniform action id (the invalid one excluded) as a bare <answer>
    blind     the best single fixed action of each game on those same states, picked after the fact:
              the most a policy that cannot see the board gets by repeating one move
    teacher   the cold-start teacher with its epsilon, in G1's full format

Each row reports the total reward and its parts, the strict-format rate whatever check the reward
uses, and perception: exact boards and the per-cell accuracy of the <perception> block, beside its
chance level (the best fixed board text: each cell's most common value on these states, picked after
the fact). The comparisons are paired differences on the same states with their standard errors.
`learned` is judged on the game reward alone (a policy that only learned the format cannot pass):
after RL above the policy entering RL, above random and above the best blind policy, each by more than
2 SE of the paired difference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from envs import MultiGame
from envs.grammar import board_cells
from g1jax.rl.rewards import PARTS

ROWS = ("policy", "random", "blind", "teacher")
MARGIN_SE = 2.0  # a difference counts when it exceeds this many standard errors of the paired difference


def random_texts(games: MultiGame, key) -> list[str]:
    """G1's random baseline as answers: a uniform action id (the invalid one excluded) per row, as the
    game's bare `<answer>` text (no perception, no reasoning)."""
    texts = []
    for i, (game, count) in enumerate(zip(games.games, games.counts)):
        draws = np.asarray(jax.random.randint(jax.random.fold_in(key, i), (count,), 0, game.num_actions - 1))
        actions = np.where(draws >= game.invalid_action, draws + 1, draws)
        texts.extend(game.answer_text(int(a)) for a in actions)
    return texts


def best_fixed_actions(games: MultiGame, game_rewards, chunk: int = 64) -> dict[str, int]:
    """Each game's best single action on its rows: the valid action id whose mean game reward over
    them is highest (ties: the lowest id). `game_rewards(actions int32 [P, K]) -> float [P, K]` scores
    K actions from every row's state; the ids are tried `chunk` at a time (one compiled shape)."""
    totals = [np.zeros(game.num_actions) for game in games.games]
    most = max(g.num_actions for g in games.games)
    chunk = min(chunk, most)  # 2048's five ids are one chunk of five, not of 64
    for start in range(0, most, chunk):
        ids = np.arange(start, start + chunk)
        actions = np.concatenate(
            [np.tile(np.minimum(ids, g.num_actions - 1), (n, 1)) for g, n in zip(games.games, games.counts)]
        ).astype(np.int32)
        rewards = game_rewards(actions)
        for i, game in enumerate(games.games):
            valid = ids < game.num_actions
            totals[i][ids[valid]] = rewards[games.rows(i)][:, valid].mean(0)
    best = {}
    for game, total in zip(games.games, totals):
        total[game.invalid_action] = -np.inf
        best[game.name] = int(np.argmax(total))
    return best


def blind_texts(games: MultiGame, best: dict[str, int]) -> list[str]:
    """Every row answers its game's fixed action (`best_fixed_actions`) as a bare `<answer>`."""
    return [games.games[i].answer_text(best[games.games[i].name]) for i in games.game_index]


def perception_chance(truths: Sequence[str], game_names: Sequence[str]) -> float:
    """Per-cell accuracy of the best fixed board text: each game's most common value at each cell over
    these boards (picked after the fact), the perception a policy that cannot see gets."""
    hits = cells = 0
    names = np.asarray(game_names, dtype=object)
    for name in dict.fromkeys(game_names):
        boards = [board_cells(truths[i]) for i in np.flatnonzero(names == name)]
        for position in zip(*(sum(board, []) for board in boards)):
            hits += Counter(position).most_common(1)[0][1]
            cells += len(position)
    return hits / cells if cells else 0.0


def _mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    se = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0
    return float(values.mean()), se


def row_summary(rewards, parts, game_names: Sequence[str]) -> dict[str, Any]:
    """One policy's row: total and game reward with their SEs, each part's mean, the strict-format rate,
    perception exact and per cell, valid-action rate; overall and per game."""
    rewards = np.asarray(rewards, np.float64)

    def block(sel):
        out = dict(zip(("reward", "reward_se"), _mean_se(rewards[sel])), n=int(sel.sum()))
        out.update({f"reward_{p}": float(np.asarray(parts[p], np.float64)[sel].mean()) for p in PARTS})
        out["reward_game_se"] = _mean_se(np.asarray(parts["game"])[sel])[1]
        out["format_strict"] = float(np.asarray(parts["format_strict"])[sel].mean())
        out["perception_accuracy"] = float(np.asarray(parts["perception_exact"])[sel].mean())
        out["perception_cells"] = float(np.asarray(parts["perception_cells"])[sel].mean())
        out["legal"] = float(np.asarray(parts["legal"])[sel].mean())
        return out

    names = np.asarray(game_names, dtype=object)
    summary = block(np.ones(rewards.size, bool))
    summary["games"] = {name: block(names == name) for name in dict.fromkeys(game_names)}
    return summary


def paired(after, before) -> tuple[float, float]:
    """Mean and standard error of the paired difference after - before (same states, same order)."""
    return _mean_se(np.asarray(after, np.float64) - np.asarray(before, np.float64))


def comparison(before: dict, after: dict) -> dict[str, Any]:
    """The run's verdict from the two held-out evaluations (`Trainer.evaluate` results: rows and the
    per-state values `rewards`, `game`, `perception_cells` of the policy and of each baseline)."""
    gain, gain_se = paired(after["rewards"], before["rewards"])
    game_gain, game_gain_se = paired(after["game"], before["game"])
    out = {
        "before": before["policy"],
        "after": after["policy"],
        **{row: after[row] for row in ROWS[1:] if row in after},
        "gain": gain,
        "gain_se": gain_se,
        "gain_over_se": gain / gain_se if gain_se > 0 else float("nan"),
        "gain_game": game_gain,
        "gain_game_se": game_gain_se,
        "perception_chance": after["perception_chance"],
        "blind_actions": after["blind_actions"],
    }
    beats = {"before": game_gain > MARGIN_SE * game_gain_se}
    for row in ("random", "blind"):
        diff, se = paired(after["game"], after["per_state"][row]["game"])
        out[f"game_over_{row}"], out[f"game_over_{row}_se"] = diff, se
        beats[row] = diff > MARGIN_SE * se
    cells_gain, cells_gain_se = paired(after["perception_cells"], before["perception_cells"])
    out["perception_cells_gain"], out["perception_cells_gain_se"] = cells_gain, cells_gain_se
    cells = np.asarray(after["perception_cells"], np.float64)
    cells_mean, cells_se = _mean_se(cells)
    out["sees"] = bool(
        cells_mean - out["perception_chance"] > MARGIN_SE * cells_se and cells_gain > MARGIN_SE * cells_gain_se
    )
    out["beats"] = beats
    out["learned"] = bool(all(beats.values()))
    return out
