"""The paper's evaluation protocol per game (G1, Figure 1); the source of every field: docs/eval.md."""

from __future__ import annotations

import dataclasses
from typing import Any

import envs

# The paper's Figure 1 (exact numbers), rows in the figure's bar order.
PAPER_ROWS = ("G1 (7B)", "Claude-3.7-Sonnet-Thinking", "G0 (7B)", "o1", "Qwen2.5-VL-72B", "GPT-4o", "Random")


class EvalError(ValueError):
    """A bad evaluation request (game, policy, checkpoint...), raised before anything compiles."""


@dataclasses.dataclass(frozen=True)
class GameProtocol:
    """How the paper evaluates one game (docs/eval.md gives the source of every field).

    env_config: static env options for evaluation (the image size of the original's eval
    scripts); warmup_moves: random moves (uniform over all action ids, as G1 samples them) before
    the scored steps; runs: the paper's N (avg@N); score: "merge" (sum of merge points),
    "success" (1 per successful move) or "solved" (1 per game won, the env's `info["solved"]`:
    the multi-turn games, whose rows add episode metrics, `Rollout.episodes`); test_time_fallback:
    2048's test-time parser, where an unparsable answer or a number >= 4 plays a uniformly random
    move 0..3; original_base: the base of the original's coordinate code (6 in both Shisen-Sho
    games, 8 in Swap); paper: the paper's Figure-1 numbers (None for games the paper did not
    evaluate)."""

    game: str
    title: str
    env_config: tuple[tuple[str, Any], ...]
    warmup_moves: int
    runs: int
    score: str
    test_time_fallback: bool
    original_base: int | None
    paper: tuple[float, ...] | None  # one value per PAPER_ROWS entry

    def make_env(self, **overrides) -> envs.Env:
        return envs.make(self.game, **{**dict(self.env_config), **overrides})

    @property
    def paper_scores(self) -> dict[str, float]:
        """The paper's Figure-1 numbers by row; empty for a game the paper did not evaluate."""
        return dict(zip(PAPER_ROWS, self.paper or ()))


PROTOCOLS: dict[str, GameProtocol] = {
    p.game: p
    for p in (
        # 640x840 (W x H) frames, which Qwen2.5-VL's processor turns into 644x840: drawn at that size.
        GameProtocol(
            "2048",
            "2048",
            (("image_size", (840, 644)),),
            100,
            10,
            "merge",
            True,
            None,
            (1070, 892, 759, 539, 243, 620, 701),
        ),
        # 640x640 frames -> 644x644 after the processor.
        GameProtocol(
            "shisensho",
            "Shisen-Sho",
            (("preset", "base"), ("image_size", (644, 644))),
            0,
            10,
            "success",
            False,
            6,
            (17.5, 15.3, 12.8, 3.9, 2.6, 1.5, 0.4),
        ),
        GameProtocol(
            "shisensho_photo",
            "Shisen-Sho-Cifar10",
            (("image_size", (644, 644)),),
            0,
            10,
            "success",
            False,
            6,
            (14.1, 8.7, 8.0, 5.4, 0.8, 4.7, 0.4),
        ),
        GameProtocol(
            "swap", "Swap", (("image_size", (644, 644)),), 0, 100, "success", False, 8, (78, 43, 5, 4, 6, 1, 1)
        ),
        # Not G1 games: the multi-turn anchors' settings, scored by games won ("solved"; the report
        # adds the success rate and the decisions to solve). FrozenLake as VAGEN plays it: random
        # 4x4 maps, ice that does not slip, 256x256 frames -> 252x252. Sokoban: gym-sokoban's 6x6
        # one-box rooms, as VAGEN, RAGEN and verl-agent play them (96-px frames, which Qwen2.5-VL
        # resizes to 84 px: drawn at that size).
        GameProtocol("frozenlake", "FrozenLake", (("image_size", (252, 252)),), 0, 100, "solved", False, None, None),
        GameProtocol("sokoban", "Sokoban 6x6", (("image_size", (84, 84)),), 0, 100, "solved", False, None, None),
    )
}
GAMES = tuple(PROTOCOLS)


def protocol_for(game: str) -> GameProtocol:
    if game not in PROTOCOLS:
        raise EvalError(f"unknown game {game!r}; evaluated games: {', '.join(GAMES)} (or 'all')")
    return PROTOCOLS[game]
