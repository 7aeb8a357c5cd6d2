"""Programmatic teachers: one program per game that picks an action and writes the answer a
G1 cold start learns from (docs/teachers.md).

    teacher = make_teacher("2048", "expectimax", epsilon=0.1, depth=2)
    action = jax.jit(teacher.act)(key, state)          # int32, vmappable over keys and states
    text = teacher.answer(state, int(action))            # <perception>...</perception><think>...
    texts = teacher.answers(states, actions)             # a batch of states -> list[str]

Every answer is G1's full format (docs/teachers.md#answer-format): the exact ground-truth board
text (`env.describe`) in `<perception>`, a short templated reasoning in `<think>` that names
what the teacher compared, and the action in the game's syntax in `<answer>`, so it parses
back to the action (`env.parse`), passes `envs.grammar.format_ok(text, strict=True)` and earns
the perception reward.

The action choice (`Teacher.evaluate`, used by `act`) is a pure JAX function of the state;
with `epsilon > 0`, `act` plays a uniformly random valid action with that probability, so an
imperfect teacher leaves RL something to learn.

External teacher answers (from any model) are read with `load_teacher_jsonl`.
`g1jax.evaluation.teacher_strength` measures a teacher against random valid play in closed loop
(also the command `python -m g1jax.cli.teacher --game 2048`).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
import pathlib
import warnings
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

import envs
from envs import frozenlake
from envs.core import Env
from envs.grammar import encode_pair
from envs.sokoban import NOOP, solve
from envs.swap import line_mask

GAME_OVER_PENALTY = 1000.0  # expectimax value of a board with no move left, in points
LISTED_CANDIDATES = 3  # pair games: the best few candidates named in the reasoning


class TeacherError(ValueError):
    """A teacher was asked for, or given input, that it cannot handle."""


class TeacherDataError(ValueError):
    """A teacher-data file holds a malformed line (the message names the file and line)."""


# ---------------------------------------------------------------------------------------
# Answer text
# ---------------------------------------------------------------------------------------


def answer_block(env: Env, action: int) -> str:
    """The `<answer>` block a player writes for any action id: the game's `answer_text` for a
    move. The invalid action (no move left, an off-board draw) has no answer of its own (every
    unreadable answer plays it), so it gets one that parses back to it: 2048's "still" number,
    "none" in the pair games."""
    action = int(action)
    if action != env.invalid_action:
        return env.answer_text(action)
    return f"<answer>{action if env.name == '2048' else 'none'}</answer>"


def perception_answer(perception: str) -> str:
    """The `<perception>` block of G1's format (a perception-first cold start's whole answer)."""
    return f"<perception>\n{perception}\n</perception>"


def full_answer(perception: str, think: str, answer: str) -> str:
    """G1's full format; `answer` is the whole `<answer>` block."""
    return f"{perception_answer(perception)}\n<think>\n{think}\n</think>\n{answer}"


# ---------------------------------------------------------------------------------------
# The teacher contract
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Teacher(abc.ABC):
    """A teacher for one game. Subclasses define `games`, `kind`, `evaluate` (pure JAX: the
    facts the choice rests on, with the chosen action under "best") and `reasoning` (host:
    those facts as a sentence or two). Frozen and hashable, so `jax.jit(teacher.act)` and
    static arguments work."""

    env: Env
    epsilon: float = 0.0

    games: ClassVar[tuple[str, ...]] = ()
    kind: ClassVar[str] = ""

    def __post_init__(self):
        if not isinstance(self.env, Env):
            raise TeacherError(f"a teacher needs a game built with envs.make, got {self.env!r}")
        if self.env.name not in self.games:
            raise TeacherError(f"teacher {self.kind!r} is for {', '.join(self.games)}, not {self.env.name!r}")
        eps = self.epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps <= 1.0:
            raise TeacherError(f"epsilon must be a probability in [0, 1], got {eps!r}")

    # --- device ------------------------------------------------------------------------
    @abc.abstractmethod
    def evaluate(self, state, params) -> dict[str, jax.Array]:
        """Per-candidate facts (arrays) of one state, and "best": the teacher's action."""

    def act(self, key, state, params=None) -> jax.Array:
        """int32 action: the teacher's choice, or with probability `epsilon` a uniformly
        random valid action (`env.random_valid_action`)."""
        if self.epsilon == 0.0:
            self._check_state(state)
            params = self.env.default_params if params is None else params
            return self.evaluate(state, params)["best"].astype(jnp.int32)
        return self.act_with_epsilon(key, state, self.epsilon, params)

    def act_with_epsilon(self, key, state, epsilon, params=None) -> jax.Array:
        """`act` with the exploration probability as an argument (it may be traced, so one
        compiled function serves every epsilon: 0 is the teacher, 1 random valid play)."""
        self._check_state(state)
        params = self.env.default_params if params is None else params
        best = self.evaluate(state, params)["best"].astype(jnp.int32)
        explore_key, random_key = jax.random.split(key)
        explore = jax.random.uniform(explore_key) < epsilon
        return jnp.where(explore, self.env.random_valid_action(random_key, state, params), best).astype(jnp.int32)

    # --- host ----------------------------------------------------------------------------
    @abc.abstractmethod
    def reasoning(self, state, facts: dict[str, np.ndarray], action: int) -> str:
        """The `<think>` text: what was compared for this (host) state, and the action played."""

    def answer(self, state, action: int, params=None) -> str:
        """The full G1 answer for one state and the action taken there."""
        self._check_state(state)
        batched = jax.tree.map(lambda x: jnp.asarray(x)[None], state)
        return self.answers(batched, [action], params)[0]

    def answers(self, states, actions, params=None) -> list[str]:
        """Full G1 answers for a batch of states (leading axis B) and their B actions; the
        teacher's facts are computed for the whole batch in one jitted call."""
        actions = [self._check_action(a) for a in np.asarray(actions).reshape(-1)]
        facts = self.facts(states, params)
        if len(actions) != len(facts["best"]):
            raise TeacherError(
                f"answers needs one action per state: {len(facts['best'])} states, {len(actions)} actions"
            )
        host_states = jax.device_get(states)
        texts = []
        for i, action in enumerate(actions):
            state = jax.tree.map(lambda x, i=i: x[i], host_states)
            row = {name: value[i] for name, value in facts.items()}
            think = self.reasoning(state, row, action)
            texts.append(full_answer(self.env.describe(state), think, answer_block(self.env, action)))
        return texts

    def facts(self, states, params=None) -> dict[str, np.ndarray]:
        """`evaluate` over a batch of states (leading axis B), as host arrays [B, ...]; "best"
        holds the teacher's choices (without exploration). One compiled function per teacher
        configuration and batch size, shared by every equal teacher whatever its epsilon."""
        self._check_state(states, batched=True)
        sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(states)}
        if len(sizes) != 1 or None in sizes:
            raise TeacherError(
                "expected a batch of states (one leading axis on every field), "
                f"got leading sizes {sorted(map(str, sizes))}"
            )
        params = self.env.default_params if params is None else params
        return jax.device_get(_evaluate_batch(dataclasses.replace(self, epsilon=0.0), states, params))

    @functools.cached_property
    def _state_type(self) -> type:
        return type(jax.eval_shape(self.env.reset, jax.random.key(0)))

    def _check_state(self, state, batched: bool = False) -> None:
        if type(state) is not self._state_type:
            raise TeacherError(
                f"the {self.env.name} teacher needs a {self.env.name} state, "
                f"got {type(state).__module__}.{type(state).__name__}"
            )
        if jnp.ndim(state.board) != 2 + batched:
            want = "a batch of states (leading axis B)" if batched else "one state (jax.vmap act for a batch)"
            raise TeacherError(
                f"the {self.env.name} teacher expected {want}, got a board of shape {jnp.shape(state.board)}"
            )

    def _check_action(self, action) -> int:
        if not np.issubdtype(np.asarray(action).dtype, np.integer):
            raise TeacherError(f"actions must be integers, got {action!r}")
        action = int(action)
        if not 0 <= action < self.env.num_actions:
            raise TeacherError(f"{self.env.name}: action {action} is outside [0, {self.env.num_actions})")
        return action

    def _move_name(self, action: int) -> str:
        """How the reasoning names a move: its label, and in 2048, whose answer is a bare number,
        that number too ("Up (0)")."""
        label = self.env.action_label(action)
        return f"{label} ({action})" if self.env.name == "2048" else label

    def _conclusion(self, best: int, action: int) -> str:
        name = self._move_name
        n = self.env.board_size**2
        same = action == best if self.env.name == "2048" else _unordered(action, n) == _unordered(best, n)
        if same:  # a pair in either order is the same move
            return f"So I play {name(action)}."
        return f"{name(best)} is best by this count, but I play {name(action)}."


@functools.partial(jax.jit, static_argnums=0)
def _evaluate_batch(teacher: Teacher, states, params):
    return jax.vmap(teacher.evaluate, in_axes=(0, None))(states, params)


def _check_number(option: str, value, lo: float, hi: float, integer: bool = False) -> None:
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
        what = "an integer" if integer else "a number"
        raise TeacherError(f"{option}={value!r} must be {what} in [{lo}, {hi}]")


# ---------------------------------------------------------------------------------------
# 2048
# ---------------------------------------------------------------------------------------


def _moves_2048(env, board):
    """Every direction's afterstate (slid, before the spawn) [4, n, n], merge points [4],
    whether it changes the board [4]. (Game2048._slide is the game's own slide; a public
    afterstate function in envs would replace this use of a private method.)"""
    after, points = jax.vmap(lambda a: env._slide(board, a))(jnp.arange(4))
    legal = (after != board).any((1, 2))
    return after, points.astype(jnp.float32), legal


def _equal_to_left(board):
    """bool [n, n - 1]: the tile equals the non-empty tile right beside it, to its left (numpy or jax);
    on the transposed board, the tile above it."""
    return (board[:, 1:] == board[:, :-1]) & (board[:, 1:] > 0)


def _equal_neighbours(board):
    """Adjacent equal non-empty tiles: merges available on the next move."""
    return _equal_to_left(board).sum() + _equal_to_left(board.T).sum()


def _facts_2048(board, after, points, legal):
    merges = jnp.sum(board > 0) - jnp.sum(after > 0, axis=(1, 2))
    return dict(points=points, legal=legal, merges=merges, empty=jnp.sum(after == 0, axis=(1, 2)))


def _merge_phrase(merges: int, points: float) -> str:
    if merges == 0:
        return "merges nothing"
    return f"merges {merges} pair{'s' if merges > 1 else ''} for {points:g} points"


@dataclasses.dataclass(frozen=True)
class Greedy2048(Teacher):
    """The legal move with the largest immediate merge score; ties go to the move that keeps
    the board most movable (most empty cells plus adjacent equal tiles after it), then to the
    lowest action number. Plays "still" (the invalid action) only when no move is left."""

    games: ClassVar = ("2048",)
    kind: ClassVar = "greedy"

    def evaluate(self, state, params):
        after, points, legal = _moves_2048(self.env, state.board)
        facts = _facts_2048(state.board, after, points, legal)
        mobility = facts["empty"] + jax.vmap(_equal_neighbours)(after)
        top = legal & (points == jnp.max(jnp.where(legal, points, -1.0)))
        choice = jnp.argmax(jnp.where(top, mobility, -1))
        return dict(facts, best=jnp.where(legal.any(), choice, self.env.invalid_action))

    def reasoning(self, state, facts, action):
        def describe(a):
            return f"{self.env.action_label(a)} {_merge_phrase(facts['merges'][a], facts['points'][a])}"

        return _reasoning_2048(facts, action, self, describe)


EXPONENT_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def exponent_grid(board) -> str:
    """A 2048 board as one character per cell: the tile's exponent as a base-36 digit (0 for empty;
    2 -> 1, 4 -> 2, 1024 -> a), rows separated by spaces ("1021 1054 0146 1413"). Qwen's
    pre-tokeniser splits digits one by one, so every cell below 1024 is exactly one token: in this
    text a cell's left neighbour is always 1 token back and the one above it n + 1 tokens back."""
    return " ".join("".join(EXPONENT_DIGITS[e] for e in row) for row in np.asarray(board).tolist())


def meets_equal(board) -> np.ndarray:
    """bool [n, n]: the tile meets an equal tile when the board slides left, i.e. the nearest tile to its
    left in its row (empty cells skipped) has its value. Some row has such a tile iff Left merges; on
    the transposed board, iff Up merges."""
    board = np.asarray(board)
    flags = np.zeros(board.shape, bool)
    for r, row in enumerate(board):
        previous = 0
        for c, value in enumerate(row):
            if value:
                flags[r, c] = value == previous
                previous = value
    return flags


def equal_neighbours(board) -> np.ndarray:
    """bool [n, n]: the tile's left neighbour (the cell right beside it) holds an equal tile. Some row has
    such a tile only if Left merges (not iff: 2 _ 2 merges across the gap); on the transposed board, Up."""
    board = np.asarray(board)
    flags = np.zeros(board.shape, bool)
    flags[:, 1:] = _equal_to_left(board)
    return flags


def _flag_grid(flags) -> str:
    return " ".join("".join("1" if f else "0" for f in row) for row in flags)


@dataclasses.dataclass(frozen=True)
class Pairs2048(Teacher):
    """A move that merges, found the way a small model can: Left when some row holds two equal
    tiles that meet when slid (empty cells between them do not matter), else Up when some column
    does, else the first legal move (nothing merges). G1's 2048 training reward pays +1 for any
    merge, so this teacher is optimal for it. Its reasoning is three lines of one token per cell
    and then the verdict: the board (`exponent_grid`), each tile's "meets an equal tile sliding
    left" flag and its "sliding up" flag (`meets_equal`), laid out like the board so that every flag
    sits a fixed number of tokens after the two cells it compares, and 32 supervised flags per
    answer instead of one verdict token (BENCHMARKS.md, "A teacher whose reasoning the tiny model
    can follow"). A flag across a gap is not a fixed-offset lookup; `Neighbours2048` drops those."""

    games: ClassVar = ("2048",)
    kind: ClassVar = "pairs"
    nothing: ClassVar = "Nothing merges."  # the verdict when neither line of flags has a 1

    @staticmethod
    def flags(board) -> np.ndarray:
        """The `left` flags of a board (numpy); those of the transposed board, transposed, are `up`."""
        return meets_equal(board)

    def _row_and_column(self, board, merges):
        """(some row's flag is set, some column's flag is set), on the device."""
        return merges[3] > 0, merges[0] > 0  # Left and Up merges: every row, every column

    def evaluate(self, state, params):
        after, points, legal = _moves_2048(self.env, state.board)
        facts = _facts_2048(state.board, after, points, legal)
        rows, columns = self._row_and_column(state.board, facts["merges"])
        choice = jnp.where(rows, 3, jnp.where(columns, 0, jnp.argmax(legal)))
        return dict(facts, rows=rows, columns=columns, best=jnp.where(legal.any(), choice, self.env.invalid_action))

    def reasoning(self, state, facts, action):
        board = np.asarray(state.board)
        lines = (
            f"rows {exponent_grid(board)}\n"
            f"left {_flag_grid(self.flags(board))}\n"
            f"up {_flag_grid(self.flags(board.T).T)}\n"
        )
        if not facts["legal"].any():
            return lines + f"No move changes the board: the game is over. I answer {action}."
        found = "Left merges." if facts["rows"] else "Up merges." if facts["columns"] else self.nothing
        return f"{lines}{found} {self._conclusion(int(facts['best']), action)}"


@dataclasses.dataclass(frozen=True)
class Neighbours2048(Pairs2048):
    """`Pairs2048` with flags that compare a tile with the cell right beside it (`equal_neighbours`):
    Left when two equal tiles sit side by side in a row, else Up when two sit one above the other, else
    the first legal move. Each flag is then one lookup at a fixed offset (a gap merge, 2 _ 2, is not),
    which a 2-layer decoder learns faster (BENCHMARKS.md, "A teacher whose reasoning the tiny model can
    follow"); the price is the gap merges it misses, +0.60 instead of the optimal +0.65 game reward on
    the default's warm-up states."""

    kind: ClassVar = "neighbours"
    nothing: ClassVar = "No equal neighbours."

    @staticmethod
    def flags(board) -> np.ndarray:
        return equal_neighbours(board)

    def _row_and_column(self, board, merges):
        return _equal_to_left(board).any(), _equal_to_left(board.T).any()  # the flags `reasoning` writes


def _reasoning_2048(facts, action, teacher, describe_move, lead: str = "") -> str:
    """Each direction described (or "cannot move"), then the choice."""
    if not facts["legal"].any():
        return f"No move changes the board: the game is over. I answer {action}."
    label = teacher.env.action_label
    parts = [describe_move(a) if facts["legal"][a] else f"{label(a)} cannot move" for a in range(4)]
    return lead + "; ".join(parts) + ". " + teacher._conclusion(int(facts["best"]), action)


@dataclasses.dataclass(frozen=True)
class Expectimax2048(Teacher):
    """Expectimax over `depth` moves (1..3): each legal move is worth its merge points plus
    the expected value of the spawns that follow (a 2 with probability 1 - spawn_four_prob,
    else a 4, on each empty cell), alternating with the best next move; below the last move,
    a board is worth `empty_weight` points per empty cell and `merge_weight` per pair of
    adjacent equal tiles, minus a large penalty where no move is left. Vectorised over the 4
    moves and all spawn cells: depth d evaluates (4 * 2 n^2)^(d-1) * 4 afterstates
    (4 / 516 / 66k at n = 4)."""

    depth: int = 2
    empty_weight: float = 16.0
    merge_weight: float = 8.0

    games: ClassVar = ("2048",)
    kind: ClassVar = "expectimax"

    def __post_init__(self):
        super().__post_init__()
        _check_number("depth", self.depth, 1, 3, integer=True)
        _check_number("empty_weight", self.empty_weight, 0.0, 1e6)
        _check_number("merge_weight", self.merge_weight, 0.0, 1e6)

    def _leaf(self, board):
        return self.empty_weight * jnp.sum(board == 0) + self.merge_weight * _equal_neighbours(board)

    def _move_values(self, board, depth: int, four_prob):
        """(values [4], afterstates, points, legal): merge points plus the value after."""
        after, points, legal = _moves_2048(self.env, board)
        if depth == 1:
            future = jax.vmap(self._leaf)(after)
        else:
            future = jax.vmap(lambda b: self._spawn_value(b, depth - 1, four_prob))(after)
        return points + future, after, points, legal

    def _spawn_value(self, after, depth: int, four_prob):
        """Expected value over the spawn on `after` of the best of the next `depth` moves."""
        n = self.env.board_size
        flat = after.reshape(-1)
        empty = flat == 0
        on_cell = jnp.eye(n * n, dtype=bool)
        boards = jnp.stack([jnp.where(on_cell, e, flat[None]) for e in (1, 2)], 1).reshape(n * n, 2, n, n)
        probs = empty[:, None] * jnp.stack([1.0 - four_prob, four_prob]) / jnp.maximum(empty.sum(), 1)
        values = jax.vmap(jax.vmap(lambda b: self._best_value(b, depth, four_prob)))(boards)
        return jnp.sum(probs * values)

    def _best_value(self, board, depth: int, four_prob):
        values, _, _, legal = self._move_values(board, depth, four_prob)
        return jnp.where(
            legal.any(), jnp.max(jnp.where(legal, values, -jnp.inf)), self._leaf(board) - GAME_OVER_PENALTY
        )

    def evaluate(self, state, params):
        values, after, points, legal = self._move_values(state.board, self.depth, params.spawn_four_prob)
        choice = jnp.argmax(jnp.where(legal, values, -jnp.inf))
        facts = _facts_2048(state.board, after, points, legal)
        return dict(facts, value=values, best=jnp.where(legal.any(), choice, self.env.invalid_action))

    def reasoning(self, state, facts, action):
        lead = f"Looking {_count(self.depth, 'move')} ahead (merge points, then room and merges left): "

        def describe(a):
            merges = _merge_phrase(facts["merges"][a], facts["points"][a])
            return f"{self.env.action_label(a)} {merges}, value {facts['value'][a]:.1f}"

        return _reasoning_2048(facts, action, self, describe, lead)


# ---------------------------------------------------------------------------------------
# Shisen-Sho (shape and photo tiles)
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LookaheadShisenSho(Teacher):
    """A legal pair, chosen by a one-step lookahead: the pair after whose removal the most
    pairs are still connectable (clearing the board counts above everything); ties go to the
    first pair in the state's pair table. Each candidate is scored by the game's own step
    (vmapped over the legal pairs of `state.pairs`)."""

    games: ClassVar = ("shisensho", "shisensho_photo")
    kind: ClassVar = "lookahead"

    def evaluate(self, state, params):
        env = self.env
        candidates = state.pairs  # actions first * G^2 + second, first < second; padding = invalid
        after = jax.vmap(lambda a: env.step(jax.random.key(0), state, a, params)[0])(candidates)
        follow_ups = jnp.sum(after.legal, axis=1)
        score = jnp.where(after.remaining == 0, candidates.shape[0] + 1, follow_ups)
        score = jnp.where(state.legal, score, -1)
        choice = candidates[jnp.argmax(score)]
        return dict(
            pairs=candidates,
            legal=state.legal,
            follow_ups=follow_ups,
            cleared=after.remaining == 0,
            best=jnp.where(state.legal.any(), choice, env.invalid_action),
        )

    def reasoning(self, state, facts, action):
        env = self.env
        legal = np.flatnonzero(facts["legal"])
        if legal.size == 0:
            return "No two matching tiles can be connected with at most two turns: no move is left."
        rank = facts["cleared"].astype(np.int64) * 10**6 + facts["follow_ups"]
        shown, more = _listing(legal, rank, facts["pairs"], action, env.num_cells)
        board = state.board.reshape(-1)

        def outcome(i):
            pair = int(facts["pairs"][i])
            tile = env.type_names[int(board[pair // env.num_cells])]
            rest = (
                "clears the board" if facts["cleared"][i] else f"leaves {int(facts['follow_ups'][i])} connectable pairs"
            )
            return f"{tile} {env.action_label(pair)} {rest}"

        head = f"{_count(len(legal), 'pair')} of matching tiles can be connected. Removing "
        return head + "; ".join(map(outcome, shown)) + more + ". " + self._conclusion(int(facts["best"]), action)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _unordered(action: int, num_cells: int) -> int:
    """A pair action with its two cells in row-major order (how the teachers list pairs);
    -1 for ids that name no pair."""
    if not 0 <= action < num_cells * num_cells:
        return -1
    first, second = divmod(action, num_cells)
    return min(first, second) * num_cells + max(first, second)


def _listing(legal: np.ndarray, rank: np.ndarray, actions: np.ndarray, action: int, num_cells: int):
    """Which candidates a pair game's reasoning names: the LISTED_CANDIDATES best by `rank`
    (stable), plus the played one if it is not among them; and a note on how many are left out."""
    shown = sorted(legal, key=lambda i: -rank[i])[:LISTED_CANDIDATES]
    played = [i for i in legal if int(actions[i]) == _unordered(action, num_cells)]
    if played and played[0] not in shown:
        shown.append(played[0])
    more = f" ({len(legal) - len(shown)} more not listed)" if len(legal) > len(shown) else ""
    return shown, more


# ---------------------------------------------------------------------------------------
# Swap
# ---------------------------------------------------------------------------------------


@functools.cache
def _adjacent_swaps(size: int) -> np.ndarray:
    """int32 [S, 4]: every orthogonally adjacent cell pair (r1, c1, r2, c2), the first cell
    above or left of the second, row-major by the first cell, right neighbour first."""
    swaps = [
        (r, c, r + dr, c + dc)
        for r in range(size)
        for c in range(size)
        for dr, dc in ((0, 1), (1, 0))
        if r + dr < size and c + dc < size
    ]
    return np.asarray(swaps, np.int32)


@dataclasses.dataclass(frozen=True)
class BestSwap(Teacher):
    """The valid swap with the best immediate score: the points of the line(s) it completes
    (L cleared cells score L * (L - 1), the game's rule); the cascades that may follow depend
    on random refills, which no player can see. Ties go to the swap lowest on the board
    (clearing low moves more tiles, so cascades are likelier), then to the first in row-major
    order."""

    games: ClassVar = ("swap",)
    kind: ClassVar = "best_score"

    def evaluate(self, state, params):
        g = self.env.board_size
        swaps = jnp.asarray(_adjacent_swaps(g))
        r1, c1, r2, c2 = swaps.T
        board = state.board

        def cleared(r1, c1, r2, c2):
            swapped = board.at[r1, c1].set(board[r2, c2]).at[r2, c2].set(board[r1, c1])
            return jnp.sum(line_mask(swapped))

        cells = jax.vmap(cleared)(r1, c1, r2, c2)
        legal = (cells > 0) & ~state.done
        points = cells * (cells - 1)
        top = legal & (points == jnp.max(jnp.where(legal, points, -1)))
        choice = jnp.argmax(jnp.where(top, r2, -1))  # first of the lowest top-scoring swaps
        actions = encode_pair(r1, c1, r2, c2, g)
        return dict(
            actions=actions,
            legal=legal,
            cells=cells,
            points=points,
            lower_row=r2,
            best=jnp.where(legal.any(), actions[choice], self.env.invalid_action),
        )

    def reasoning(self, state, facts, action):
        env = self.env
        legal = np.flatnonzero(facts["legal"])
        if legal.size == 0:
            return "No swap of adjacent tiles completes a line of three."
        rank = facts["points"] * env.board_size + facts["lower_row"]  # the teacher's order: points, then depth
        shown, more = _listing(legal, rank, facts["actions"], action, env.board_size**2)
        parts = [
            f"{env.action_label(int(facts['actions'][i]))} clears {int(facts['cells'][i])} tiles "
            f"for {int(facts['points'][i])} points"
            for i in shown
        ]
        head = f"{_count(len(legal), 'swap')} complete a line. Swapping "
        return head + "; ".join(parts) + more + ". " + self._conclusion(int(facts["best"]), action)


# ---------------------------------------------------------------------------------------
# FrozenLake
# ---------------------------------------------------------------------------------------

UNREACHABLE = 1 << 20  # goal distance of a hole, or of a cell with no path around the holes
VALUE_TIE = 1e-6  # success probabilities this close count as equal (the nearer move wins)


def goal_distances(board):
    """int32 [n * n]: the fewest moves from each cell to a goal without entering a hole (a
    breadth-first search from the goals, as a bounded `lax.while_loop` of relaxations: at most
    n * n rounds); 0 on a goal, UNREACHABLE on holes and where no such path exists."""
    n = board.shape[0]
    cells = jnp.asarray(frozenlake.next_cells(n))
    flat = board.reshape(-1)
    goal, hole = flat == frozenlake.GOAL, flat == frozenlake.HOLE

    def relaxing(carry):
        changed, i, _ = carry
        return changed & (i < n * n)

    def relax(carry):
        _, i, dist = carry
        closer = jnp.minimum(dist, dist[cells].min(axis=1) + 1)
        new = jnp.where(goal, 0, jnp.where(hole, UNREACHABLE, jnp.minimum(closer, UNREACHABLE)))
        return (new != dist).any(), i + 1, new

    start = jnp.where(goal, 0, UNREACHABLE).astype(jnp.int32)
    return jax.lax.while_loop(relaxing, relax, (jnp.bool_(True), jnp.int32(0), start))[2]


def _first_step(dist, cells, flat, pos):
    """The move (gymnasium's order breaks ties) that gets nearest the goal from `pos`: onto the
    board, not into a hole, fewest moves left; with no path, the first move that stays safe."""
    targets = cells[pos]
    on_board = targets != pos
    hole = flat[targets] == frozenlake.HOLE
    score = jnp.where(on_board, jnp.where(hole, 2 * UNREACHABLE, dist[targets]), 3 * UNREACHABLE)
    return jnp.argmin(score).astype(jnp.int32)


def _sequence_id(moves, length):
    """`frozenlake.sequence_id` of the first `length` of `moves` (int32 [k]), traced."""
    k = moves.shape[0]
    offsets = jnp.asarray([0] + [sum(4**m for m in range(1, size)) for size in range(1, k + 1)], jnp.int32)
    value = jnp.int32(0)
    for i in range(k):
        value = jnp.where(i < length, value * 4 + moves[i], value)
    return offsets[length] + value


def _slippery_values(env, board, steps, params):
    """float32 [n * n, 4]: the probability of reaching the goal within the moves left
    (max_steps - steps) after each intended move from each cell: finite-horizon value iteration
    over gymnasium's slip probabilities (a hole scores 0, the goal 1), `max_steps - 1` rounds of
    which those beyond the moves left change nothing."""
    n = env.board_size
    cells = jnp.asarray(frozenlake.next_cells(n))
    flat = board.reshape(-1)
    goal, hole = flat == frozenlake.GOAL, flat == frozenlake.HOLE
    s = params.success_rate
    f = (1.0 - s) / 2.0

    def after_move(value):  # [n * n, 4]: intended direction a slips to a - 1, a, a + 1
        taken = value[cells]
        return s * taken + f * jnp.roll(taken, 1, axis=1) + f * jnp.roll(taken, -1, axis=1)

    def round_(h, value):
        new = jnp.where(goal, 1.0, jnp.where(hole, 0.0, after_move(value).max(axis=1)))
        return jnp.where(h < env.max_steps - steps - 1, new, value)

    value = jax.lax.fori_loop(0, env.max_steps - 1, round_, goal.astype(jnp.float32))
    return after_move(value)


@dataclasses.dataclass(frozen=True)
class OptimalFrozenLake(Teacher):
    """The optimal move. Ice that does not slip: a shortest path to the goal around the holes
    (breadth-first search; gymnasium's action order breaks ties); with actions_per_turn k > 1 it
    answers the first min(k, distance) moves of that path at once. Slippery ice: the move with
    the highest probability of reaching the goal within the moves left (finite-horizon value
    iteration over the slip probabilities), ties within VALUE_TIE going to the move whose
    expected goal distance is smallest; one move per answer, since where the player lands is
    only known after it. With no path left, a move that does not fall into a hole; on a
    finished board, the invalid action ("none")."""

    games: ClassVar = ("frozenlake",)
    kind: ClassVar = "optimal"

    def evaluate(self, state, params):
        env = self.env
        n, k = env.board_size, env.actions_per_turn
        cells = jnp.asarray(frozenlake.next_cells(n))
        flat = state.board.reshape(-1)
        dist = goal_distances(state.board)
        targets = cells[state.pos]
        on_board = targets != state.pos
        if env.is_slippery:
            value = _slippery_values(env, state.board, state.steps, params)[state.pos]
            near = jnp.where(dist < UNREACHABLE, dist, 4 * n * n).astype(jnp.float32)[cells[state.pos]]
            s, f = params.success_rate, (1.0 - params.success_rate) / 2.0
            expected = s * near + f * jnp.roll(near, 1) + f * jnp.roll(near, -1)
            top = value >= value.max() - VALUE_TIE
            best = jnp.argmin(jnp.where(top, expected, jnp.inf)).astype(jnp.int32)
        else:
            moves, pos = [], state.pos
            for _ in range(k):
                move = _first_step(dist, cells, flat, pos)
                moves.append(move)
                pos = cells[pos, move]
            length = jnp.where(dist[state.pos] < UNREACHABLE, jnp.clip(dist[state.pos], 1, k), 1)
            best = _sequence_id(jnp.stack(moves), length)
            value = jnp.where(on_board, dist[targets] + 1, UNREACHABLE).astype(jnp.float32)
        best = jnp.where(state.done, env.invalid_action, best)
        return dict(dist=dist, value=value, on_board=on_board, best=best)

    def reasoning(self, state, facts, action):
        env = self.env
        n = env.board_size
        if bool(state.done):
            return "The episode is over: no move is left."
        pos = int(state.pos)
        where = f"I am at row {pos // n}, column {pos % n}."
        if env.is_slippery:
            left = env.max_steps - int(state.steps)
            odds = ", ".join(f"{frozenlake.MOVE_NAMES[a]} {facts['value'][a]:.2f}" for a in range(4))
            lead = f"{where} The ice is slippery; chance of reaching the goal within the {left} moves left: {odds}."
        else:
            path = self._path(facts["dist"], pos)
            if path is None:
                lead = f"{where} No path reaches the goal without crossing a hole, so I only avoid falling in."
            else:
                steps = ", ".join(frozenlake.MOVE_NAMES[a] for a in path)
                lead = f"{where} The shortest path to the goal around the holes takes {_count(len(path), 'move')}: "
                lead += f"{steps}."
        best = int(facts["best"])
        if action == best:
            return f"{lead} So I play {env.action_label(action)}."
        return f"{lead} {env.action_label(best)} is best, but I play {env.action_label(action)}."

    def _path(self, dist: np.ndarray, pos: int) -> list[int] | None:
        """The moves of the shortest path from `pos` the teacher follows (host), None if none."""
        if dist[pos] >= UNREACHABLE:
            return None
        cells = frozenlake.next_cells(self.env.board_size)
        path = []
        while dist[pos] > 0:
            move = next(a for a in range(4) if cells[pos, a] != pos and dist[cells[pos, a]] == dist[pos] - 1)
            path.append(move)
            pos = int(cells[pos, move])
        return path


# ---------------------------------------------------------------------------------------
# Sokoban
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BfsSokoban(Teacher):
    """Optimal play: the first move of a shortest solution (`envs.sokoban.solve`, breadth-first
    over (player, box) positions; one-box rooms). Among equally short solutions the one whose
    first move has the highest id (Right, Left, Down, Up) wins. A room that cannot be solved any
    more (a box stuck in a corner) gets its first valid move."""

    games: ClassVar = ("sokoban",)
    kind: ClassVar = "bfs"

    def __post_init__(self):
        super().__post_init__()
        if self.env.num_boxes != 1:
            raise TeacherError(f"the bfs teacher solves one-box rooms; this game has num_boxes={self.env.num_boxes}")

    def evaluate(self, state, params):
        action, moves = solve(state.board)
        legal = self.env.valid_actions(state, params)
        first_valid = jnp.where(legal.any(), jnp.argmax(legal), NOOP)
        best = jnp.where(state.done, NOOP, jnp.where(moves > 0, action, first_valid))
        return dict(best=best.astype(jnp.int32), moves=moves, legal=legal)

    def reasoning(self, state, facts, action):
        moves, best = int(facts["moves"]), int(facts["best"])
        name = self.env.action_label
        if bool(state.done) or not facts["legal"].any():
            return "The game is over: there is no move left to make."
        if moves < 0:
            lead = "No sequence of moves puts every box on a target any more."
            return f"{lead} So I play {name(action)}." if action == best else f"{lead} I play {name(action)}."
        lead = f"A shortest solution takes {_count(moves, 'move')} and starts with {name(best)}."
        if action == best:
            return f"{lead} So I play {name(action)}."
        return f"{lead} But I play {name(action)}."


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------

TEACHERS: dict[tuple[str, str], type[Teacher]] = {
    (game, cls.kind): cls
    for cls in (
        Greedy2048,
        Expectimax2048,
        Pairs2048,
        Neighbours2048,
        LookaheadShisenSho,
        BestSwap,
        OptimalFrozenLake,
        BfsSokoban,
    )
    for game in cls.games
}
DEFAULT_KIND = {
    "2048": "expectimax",
    "shisensho": "lookahead",
    "shisensho_photo": "lookahead",
    "swap": "best_score",
    "frozenlake": "optimal",
    "sokoban": "bfs",
}


def make_teacher(env_or_name, kind: str | None = None, *, epsilon: float = 0.0, **options) -> Teacher:
    """A teacher for a game (an env, or a game name built with its defaults). `kind` picks
    among the game's teachers (None: its default, DEFAULT_KIND); `options` are the kind's
    settings (e.g. depth=2 for expectimax)."""
    games = sorted({g for g, _ in TEACHERS})
    name = env_or_name if isinstance(env_or_name, str) else getattr(env_or_name, "name", None)
    if not isinstance(env_or_name, (str, Env)):
        raise TeacherError(f"make_teacher needs a game name or an env built with envs.make, got {env_or_name!r}")
    if name not in games:
        raise TeacherError(f"no teacher for game {name!r}; games with teachers: {', '.join(games)}")
    env = envs.make(name) if isinstance(env_or_name, str) else env_or_name
    kinds = sorted(k for g, k in TEACHERS if g == env.name)
    kind = DEFAULT_KIND[env.name] if kind is None else kind
    if kind not in kinds:
        raise TeacherError(f"unknown teacher kind {kind!r} for game {env.name!r}; choices: {', '.join(kinds)}")
    cls = TEACHERS[(env.name, kind)]
    allowed = [f.name for f in dataclasses.fields(cls) if f.name not in ("env", "epsilon")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TeacherError(
            f"teacher {kind!r} has no option {', '.join(unknown)}; options: {', '.join(allowed) or 'none'}"
        )
    return cls(env, epsilon, **options)


# ---------------------------------------------------------------------------------------
# External teacher data (JSONL)
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class TeacherExample:
    """One imported answer: the position (a state from "board", and/or the image read from
    "image" as uint8 [H, W, 3]), the answer text, the action it parses to, and its line."""

    answer: str
    action: int
    state: Any = None
    image: np.ndarray | None = None
    line: int = 0


def _read_image(path: pathlib.Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), np.uint8)


def _example(record, env: Env, folder: pathlib.Path, line: int) -> TeacherExample:
    """One parsed JSONL record -> example; a problem raises ValueError with a short reason."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - {"board", "board_options", "image", "answer"})
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; fields: board, board_options, image, answer")
    if "board" not in record and "image" not in record:
        raise ValueError('missing field "board" or "image" (give at least one)')
    answer = record.get("answer")
    if not isinstance(answer, str):
        raise ValueError(
            'missing field "answer" (a string)'
            if answer is None
            else f'"answer" must be a string, got {type(answer).__name__}'
        )
    state = image = None
    if "board" in record:
        options = record.get("board_options", {})
        if not isinstance(options, dict):
            raise ValueError('"board_options" must be an object of from_board keyword arguments')
        board = record["board"] if isinstance(record["board"], str) else np.asarray(record["board"])
        try:
            state = env.from_board(board, **options)
        except (ValueError, TypeError) as err:
            raise ValueError(f"board rejected by {env.name}.from_board: {err}") from None
    if "image" in record:
        if not isinstance(record["image"], str):
            raise ValueError('"image" must be a path string')
        path = folder / record["image"]
        try:
            image = _read_image(path)
        except (OSError, ValueError, Image.DecompressionBombError) as err:  # missing, not an image, truncated, too big
            raise ValueError(f"cannot read image {str(path)!r}: {type(err).__name__}: {err}") from None
    action = env.parse(answer)
    if action == env.invalid_action:
        raise ValueError(f"answer does not parse to a {env.name} action: {answer[:80]!r}")
    return TeacherExample(answer=answer, action=int(action), state=state, image=image, line=line)


def load_teacher_jsonl(path, env: Env, *, skip_bad: bool = False) -> list[TeacherExample]:
    """Teacher answers from a JSONL file, one object per line:
    {"board": <what env.from_board takes>, "board_options": {...optional kwargs...},
     "image": "relative/or/absolute.png", "answer": "<perception>...</answer>"}
    (a board, an image or both; image paths are relative to the file's folder). Blank lines
    are ignored. A malformed line raises TeacherDataError naming the file and line; with
    skip_bad=True it is skipped and the skipped lines are reported in one warning."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise TeacherDataError(f"{path}: cannot read teacher data: {err}") from None
    examples, bad = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as err:
                raise ValueError(f"bad JSON: {err.msg} at column {err.colno}") from None
            examples.append(_example(record, env, path.parent, number))
        except ValueError as err:
            if not skip_bad:
                raise TeacherDataError(f"{path}:{number}: {err}") from None
            bad.append((number, str(err)))
    if bad:
        lines = ", ".join(str(n) for n, _ in bad)
        warnings.warn(
            f"{path}: skipped {len(bad)} malformed line(s): {lines} (line {bad[0][0]}: {bad[0][1]})", stacklevel=2
        )
    return examples
