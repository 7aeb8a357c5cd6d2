"""G1's training reward, as data: per-row weights times reward parts, summed.

    total = w_game * game + w_format * format + w_perception * perception

* game: the env's training reward of the parsed action (an unparsable answer is the game's
  defined invalid action, so it gets that action's reward, never an exception);
* format: 1 when the answer has all of <perception>, <think>, <answer> (G1's lenient check: the six
  tags occur somewhere) or, with `strict_format`, exactly one of each, in order;
* perception: 1 when the ground-truth board text occurs verbatim in the answer (G1's check).

G1's weights (docs/rl.md): perception weight 1 for 2048, Shisen-Sho-Cifar10 and Swap, 0 for
Shisen-Sho; format and game weight 1 everywhere. The analysis metrics of the paper are computed
here too: perception accuracy (the answer's <perception> block equals the truth), its per-cell
accuracy (the share of cells read right; 0 for a block that does not parse into a board) and reasoning
accuracy (game reward > 0 among answers whose perception is exact).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from envs.grammar import format_ok, perception_block, perception_cell_accuracy, perception_ok

G1_PERCEPTION_WEIGHTS = {"2048": 1.0, "shisensho": 0.0, "shisensho_photo": 1.0, "swap": 1.0}
PARTS = ("game", "format", "perception")
# Multi-turn episodes (rl/episodes.py): how a turn's format and perception checks enter its reward.
# "bonus": G1's, w * check (w when it passes). "penalty": w * (check - 1), 0 when it passes and -w when it
# fails (RAGEN's format penalty). Summed over turns, a bonus pays for every extra turn played, so in a game
# that ends when won (Sokoban, FrozenLake) it outweighs winning early; a penalty never pays for a longer
# episode.
TEXT_REWARDS = ("bonus", "penalty")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardWeights:
    game: float = 1.0
    format: float = 1.0
    perception: float = 1.0

    def as_row(self) -> np.ndarray:
        return np.asarray([getattr(self, part) for part in PARTS], np.float32)


def g1_weights(game: str, overrides: Mapping[str, float] | None = None) -> RewardWeights:
    """G1's weights for `game` (perception weight from its trainer; 1.0 for games G1 did not have)."""
    values = {"perception": G1_PERCEPTION_WEIGHTS.get(game, 1.0), **(overrides or {})}
    unknown = set(values) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown reward part(s) {sorted(unknown)}; the parts are {list(PARTS)}")
    return RewardWeights(**values)


def text_parts(texts: Sequence[str], truths: Sequence[str], strict_format: bool = False) -> dict[str, np.ndarray]:
    """Host-side checks of each answer: the reward parts format and perception (float32 [B]), and the
    analysis metrics perception_exact (bool [B]: the block equals the truth), perception_cells (float32 [B]:
    the share of cells the block reads right) and format_strict (bool [B]: the strict format, whatever
    check the reward uses, so a tag soup that the lenient check pays for shows)."""
    if len(texts) != len(truths):
        raise ValueError(f"{len(texts)} answers but {len(truths)} ground-truth boards")
    strict = np.asarray([format_ok(t, True) for t in texts], bool)
    return {
        "format": strict.astype(np.float32) if strict_format else np.asarray([format_ok(t) for t in texts], np.float32),
        "perception": np.asarray([perception_ok(t, truth) for t, truth in zip(texts, truths)], np.float32),
        "perception_exact": np.asarray([perception_block(t) == truth for t, truth in zip(texts, truths)], bool),
        "perception_cells": np.asarray(
            [perception_cell_accuracy(t, truth) for t, truth in zip(texts, truths)], np.float32
        ),
        "format_strict": strict,
    }


def total_reward(parts: Mapping[str, np.ndarray], weights: np.ndarray) -> np.ndarray:
    """weights float32 [B, 3] (rows of `RewardWeights.as_row`) -> total reward [B]."""
    stacked = np.stack([np.asarray(parts[p], np.float32) for p in PARTS], axis=-1)
    return (stacked * weights).sum(-1)
