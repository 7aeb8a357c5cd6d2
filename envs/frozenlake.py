"""FrozenLake, as gymnasium's FrozenLake-v1 (docs/envs.md, "FrozenLake"), as pure JAX functions.

Board: int32 tile codes [n, n], F frozen (0), H hole (1), S start (2), G goal (3); the player's
cell `pos` = row * n + col (gymnasium's observation). Actions, in gymnasium's ids: 0 Left,
1 Down, 2 Right, 3 Up. A move off the edge leaves the player in place. With `is_slippery` the
player goes the intended way with probability `success_rate` (1/3) and to either side of it with
(1 - success_rate) / 2 each, drawn the way gymnasium draws it (one uniform against the
cumulative probabilities of [(a - 1) % 4, a, (a + 1) % 4]). Entering a hole or the goal ends
the episode (terminated), so does the `max_steps`-th move (gymnasium's TimeLimit: 100 on 4x4,
200 on 8x8); raw reward = training reward = gymnasium's `reward_schedule` (goal, hole, frozen),
(1, 0, 0) by default (`Params.reward_goal`, `reward_hole`, `reward_frozen`); `info["solved"]`:
the player stands on the goal (the game was won, whatever the reward schedule). Ice that does
not slip is the default here (the anchors' VAGEN setting; gymnasium's default is slippery).

Maps: random by default, drawn on the device as gymnasium's `generate_random_map` draws them:
every cell frozen with probability `frozen_prob` (0.8), S at the top-left, G at the bottom-right,
the whole board redrawn until a path of non-hole cells joins them. Here the redraws are a
bounded `lax.while_loop` of at most `map_tries` (16) boards, each checked by a flood fill
bounded by n * n spreads; at p = 0.8 a board has a path with probability 0.86 (4x4) / 0.84 (8x8),
so all 16 tries fail with probability < 1e-12. If they all fail, the last board gets its top
row and right column cleared of holes, a path by construction (docs/envs.md says when that
matters). `map_name="4x4"` / `"8x8"` (or `desc`) play gymnasium's fixed maps instead.

Several moves per turn: with `actions_per_turn` k > 1 an action id names a sequence of 1..k
moves (`<answer>Left, Up</answer>`), played in order until the episode ends (the rest are
dropped); each move is one gymnasium step (it counts toward max_steps). The last id is the
invalid action (an unreadable answer): no move, but it costs one step, so an episode of bad
answers still ends.

Legal moves (`valid_actions`, `info["legal"]`): on a live board, every move on slippery ice
(each direction can move the player, if only by slipping sideways; gymnasium's optimal slippery
policies do aim at the edge); on ice that does not slip, a move intended onto the board, and a
sequence when every move of it is, judged along its path up to where the episode would end. A
move into the edge there only spends a step; it is played as gymnasium plays it, but is not legal.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs import raster
from envs.core import (
    ConfigError,
    Env,
    check_bool,
    check_cell_size,
    check_choice,
    check_image_size,
    check_range,
    register,
)
from envs.grammar import ANSWER_CLOSE, ANSWER_OPEN, board_text

FROZEN, HOLE, START, GOAL = 0, 1, 2, 3
TILE_LETTERS = "FHSG"  # by tile code: gymnasium's map letters
LEFT, DOWN, RIGHT, UP = 0, 1, 2, 3
MOVE_NAMES = ("Left", "Down", "Right", "Up")  # by action id, gymnasium's order
DELTAS = ((0, -1), (1, 0), (0, 1), (-1, 0))  # (row, col) of each move
# The perception text marks the player's cell (VAGEN's symbols): on the start or frozen ice,
# fallen into a hole, on the goal.
PLAYER, PLAYER_IN_HOLE, PLAYER_ON_GOAL = "P", "X", "V"
SYMBOLS = TILE_LETTERS + PLAYER + PLAYER_IN_HOLE + PLAYER_ON_GOAL
MAPS = {  # gymnasium's named maps
    "4x4": ("SFFF", "FHFH", "FFFH", "HFFG"),
    "8x8": ("SFFFFFFF", "FFFFFFFF", "FFFHFFFF", "FFFFFHFF", "FFFHFFFF", "FHHFFFHF", "FHFFHFHF", "FFFHFFFG"),
}
MAX_ACTIONS_PER_TURN = 5  # VAGEN allows up to 5; 5 gives 1364 move sequences
MIN_CELL_PX = 12  # smaller cells do not show the elf and the tiles legibly
MAX_BOARD = 16

# The original's look (gymnasium's pixel art, 32-px sprites scaled to the cell): colours of
# its palette; the shapes are redrawn here as vector shapes in 32-unit cells.
GRID_LINE = (180, 200, 230)
ICE, ICE_LIGHT, ICE_SHADE = (235, 245, 249), (255, 255, 255), (204, 230, 255)
HOLE_RIM, HOLE_WATER, HOLE_LIGHT, HOLE_GLINT = (40, 169, 249), (61, 202, 242), (86, 227, 247), (156, 247, 255)
CRACK_WATER, CRACK_DARK = (30, 119, 191), (0, 52, 94)
GIFT_BOX, GIFT_LID, GIFT_EDGE = (76, 104, 133), (58, 63, 94), (43, 43, 69)
RIBBON, BOW = (207, 117, 43), (240, 181, 65)
STOOL_SEAT, STOOL_LEG, DARK_BROWN, SHADOW = (189, 106, 98), (143, 77, 87), (82, 51, 63), (40, 53, 64)
HAT, HAT_BRIM, SKIN, TUNIC, TUNIC_DARK = (99, 171, 63), (59, 125, 79), (255, 194, 161), (230, 69, 57), (173, 47, 69)

_WORD_SPLIT = re.compile(r",|\|\|")  # VAGEN's "," and RAGEN's "||" both separate moves


@struct.dataclass
class State:
    board: jax.Array  # int32 [n, n] tile codes (the map; it never changes during an episode)
    pos: jax.Array  # int32 the player's cell, row * n + col
    last_action: jax.Array  # int32 direction of the last move played (the elf faces it; Down at first)
    steps: jax.Array  # int32 moves played (and unreadable answers), toward max_steps
    done: jax.Array  # bool: in a hole, on the goal, or at the step limit


@struct.dataclass
class Params:
    frozen_prob: float = 0.8  # random maps: probability that a cell is frozen (gymnasium's p)
    success_rate: float = 1.0 / 3.0  # slippery ice: probability of the intended move
    reward_goal: float = 1.0  # gymnasium's reward_schedule (goal, hole, frozen)
    reward_hole: float = 0.0
    reward_frozen: float = 0.0


# ---------------------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------------------


def _shift_rows(rows, s: int):
    """Row bitmasks moved by s rows (row i takes row i - s; s < 0 moves up), zeros shifted in."""
    n = rows.shape[0]
    if abs(s) >= n:
        return jnp.zeros_like(rows)
    pad = jnp.zeros(abs(s), rows.dtype)
    return jnp.concatenate([pad, rows[:-s]]) if s > 0 else jnp.concatenate([rows[-s:], pad])


def _fill(seeds, open_rows, shift, n: int):
    """Seeds spread along straight runs of open cells in one direction, in log2(n) shifts (a
    Kogge-Stone occluded fill): after the step of size s, `open_rows` marks the cells whose s
    cells behind are all open."""
    s = 1
    while s < n:
        seeds = seeds | (open_rows & shift(seeds, s))
        open_rows = open_rows & shift(open_rows, s)
        s *= 2
    return seeds


def reachable_rows(open_rows, start_rows, goal_rows=None):
    """int32 [n] row bitmasks (bit c of row r: cell (r, c)): the cells joined to `start_rows`
    through `open_rows` (cells that are not holes). Each round spreads the reached cells along
    whole straight runs of open cells in the four directions; rounds repeat until nothing
    changes, or until a cell of `goal_rows` is reached, at most n * n rounds (a path visits each
    cell once). A `lax.while_loop`, so a batch pays for its longest fill only."""
    n = open_rows.shape[0]
    full = (1 << n) - 1
    directions = (
        lambda x, s: (x << s) & full,  # right: toward higher columns
        lambda x, s: x >> s,  # left
        lambda x, s: _shift_rows(x, s),  # down
        lambda x, s: _shift_rows(x, -s),  # up
    )

    def spreading(carry):
        changed, i, reach = carry
        going = changed & (i < n * n)
        if goal_rows is not None:
            going = going & ~(reach & goal_rows).any()
        return going

    def spread(carry):
        _, i, reach = carry
        grown = reach
        for shift in directions:
            grown = _fill(grown, open_rows, shift, n)
        return (grown != reach).any(), i + 1, grown

    start = start_rows & open_rows
    return jax.lax.while_loop(spreading, spread, (jnp.bool_(True), jnp.int32(0), start))[2]


def row_bits(cells):
    """bool [n, n] -> int32 [n] row bitmasks (bit c of row r: cell (r, c))."""
    n = cells.shape[1]
    return jnp.sum(cells.astype(jnp.int32) << jnp.arange(n, dtype=jnp.int32), axis=1, dtype=jnp.int32)


def has_path(board):
    """gymnasium's `is_valid`: the goal (bottom-right) is reachable from the top-left corner
    through cells that are not holes."""
    n = board.shape[0]
    corner = jnp.zeros(n, jnp.int32)
    start, goal = corner.at[0].set(1), corner.at[-1].set(1 << (n - 1))
    return (reachable_rows(row_bits(board != HOLE), start, goal) & goal).any()


def draw_map(key, n: int, frozen_prob):
    """One board of `generate_random_map`'s draw: F with probability frozen_prob, else H; S
    top-left, G bottom-right."""
    board = jnp.where(jax.random.uniform(key, (n, n)) < frozen_prob, FROZEN, HOLE).astype(jnp.int32)
    return board.at[0, 0].set(START).at[-1, -1].set(GOAL)


def random_map(key, n: int, frozen_prob, tries: int):
    """gymnasium's `generate_random_map` on the device: boards drawn until one has a path, at
    most `tries`; if none had, the last one with its top row and right column cleared of holes
    (a path by construction). Returns (board, whether a draw had a path)."""

    def failing(carry):
        t, _, ok = carry
        return ~ok & (t < tries)

    def redraw(carry):
        t, _, _ = carry
        board = draw_map(jax.random.fold_in(key, t), n, frozen_prob)
        return t + 1, board, has_path(board)

    first = draw_map(jax.random.fold_in(key, 0), n, frozen_prob)
    _, board, ok = jax.lax.while_loop(failing, redraw, (jnp.int32(1), first, has_path(first)))
    rows, cols = np.indices((n, n))
    corridor = jnp.asarray((rows == 0) | (cols == n - 1)) & (board == HOLE)
    return jnp.where(~ok & corridor, FROZEN, board), ok


# ---------------------------------------------------------------------------------------
# Moves and move sequences
# ---------------------------------------------------------------------------------------


@functools.cache
def move_sequences(k: int) -> tuple[np.ndarray, np.ndarray]:
    """(directions int32 [A, k] padded with -1, lengths int32 [A]): every sequence of 1..k
    moves, shortest first, then in lexicographic order of gymnasium's ids, so ids 0..3 are the
    single moves Left, Down, Right, Up."""
    seqs = [s for length in range(1, k + 1) for s in itertools.product(range(4), repeat=length)]
    dirs = np.full((len(seqs), k), -1, np.int32)
    for i, s in enumerate(seqs):
        dirs[i, : len(s)] = s
    return dirs, np.asarray([len(s) for s in seqs], np.int32)


def sequence_id(moves) -> int:
    """The action id of a sequence of 1..k directions (independent of k)."""
    length = len(moves)
    offset = sum(4**m for m in range(1, length))
    return offset + sum(int(d) * 4 ** (length - 1 - i) for i, d in enumerate(moves))


@functools.cache
def next_cells(n: int) -> np.ndarray:
    """int32 [n * n, 4]: the cell each move leads to from each cell (the same cell off the edge)."""
    cells = np.zeros((n * n, 4), np.int32)
    for r in range(n):
        for c in range(n):
            for d, (dr, dc) in enumerate(DELTAS):
                rr, cc = min(max(r + dr, 0), n - 1), min(max(c + dc, 0), n - 1)
                cells[r * n + c, d] = rr * n + cc
    return cells


def move_uniforms(key, k: int):
    """float32 [k]: the uniforms a step draws from its key, one per move of the answer (the slip
    of move i is drawn from the i-th)."""
    return jax.random.uniform(key, (k,))


def slip_direction(direction, u, success_rate):
    """The direction actually taken on slippery ice, from one uniform u in [0, 1): gymnasium's
    `categorical_sample` over [(a - 1) % 4, a, (a + 1) % 4] with probabilities [f, s, f],
    f = (1 - s) / 2: the first outcome whose cumulative probability exceeds u."""
    fail = (1.0 - success_rate) / 2.0
    turn = jnp.where(u < fail, -1, jnp.where(u < fail + success_rate, 0, 1))
    return (direction + turn) % 4


class Pen:
    """Vector drawing of the original's sprites in a cell of `cell` pixels, in the sprites' own
    32-unit coordinates. `put` composites a shape onto an image (float [c, c, 3]) or onto a
    layer (float [c, c, 4]: premultiplied colour and coverage, drawn once and laid `over`
    several tiles)."""

    def __init__(self, cell: int):
        self.cell = cell
        self.u = cell / 32.0  # the original's sprites are 32 px
        self.ys, self.xs = raster.pixel_centres(cell, cell)

    def box(self, x0, y0, x1, y1, r=0.0):
        u = self.u
        return raster.sdf_box(self.ys, self.xs, x0 * u, y0 * u, x1 * u, y1 * u, r * u)

    def ellipse(self, x0, y0, x1, y1):
        u = self.u
        return raster.sdf_ellipse(self.ys, self.xs, x0 * u, y0 * u, x1 * u, y1 * u)

    def segment(self, x0, y0, x1, y1, width):
        u = self.u
        return raster.sdf_segment(self.ys, self.xs, x0 * u, y0 * u, x1 * u, y1 * u, 0.5 * width * u)

    def poly(self, *points):
        return raster.sdf_convex_polygon(self.ys, self.xs, [(x * self.u, y * self.u) for x, y in points])

    def put(self, img, sdf, color):
        mask = raster.coverage(sdf)
        if img.shape[-1] == 3:
            return raster.fill(img, mask, color)
        m = mask[..., None]
        paint = jnp.concatenate([jnp.asarray(color, jnp.float32), jnp.ones(1)])
        return img * (1.0 - m) + paint * m

    def over(self, img, layer):
        return img * (1.0 - layer[..., 3:]) + layer[..., :3]

    def ice(self):
        """Ice, streaked like the original's: under every tile."""
        img = raster.canvas(self.cell, self.cell, ICE)
        for x0, y0, x1, y1 in ((2, 9, 14, 3), (10, 22, 26, 13), (18, 30, 30, 23)):
            img = self.put(img, self.segment(x0, y0, x1, y1, 2.5), ICE_LIGHT)
        for x0, y0, x1, y1 in ((4, 17, 9, 14), (21, 7, 27, 4), (3, 28, 7, 26)):
            img = self.put(img, self.segment(x0, y0, x1, y1, 1.2), ICE_SHADE)
        return img

    def outline(self, img):
        """The original's 1-px cell outline."""
        return raster.fill(img, raster.inner_outline(self.box(0, 0, 32, 32), 1.0 / self.u), GRID_LINE)

    def decorate(self, img, tile: int, fell: bool = False):
        """A hole (broken, dark water and cracks, where the player fell in), the goal's gift box
        with an orange ribbon, the start's stool, on the ice; frozen ice stays bare."""
        put, box, ellipse, segment = self.put, self.box, self.ellipse, self.segment
        if tile == HOLE:
            img = put(img, box(2.5, 3.5, 29.5, 28.5, 9), HOLE_RIM)
            img = put(img, box(4, 5, 28, 27, 8), CRACK_WATER if fell else HOLE_WATER)
            if fell:
                img = put(img, self.poly((10, 12), (18, 8), (24, 14), (21, 22), (12, 23)), CRACK_DARK)
                for x0, y0, x1, y1 in ((10, 12, 5, 8), (24, 14, 28, 10), (21, 22, 25, 26), (12, 23, 7, 25)):
                    img = put(img, segment(x0, y0, x1, y1, 1.3), CRACK_DARK)
            else:
                for x0, y0, x1, y1 in ((8, 15, 14, 9), (12, 22, 22, 12), (19, 23, 24, 18)):
                    img = put(img, segment(x0, y0, x1, y1, 1.8), HOLE_LIGHT)
                img = put(img, segment(9, 11, 11, 9, 1.5), HOLE_GLINT)
        elif tile == GOAL:
            img = put(img, box(6, 13, 26, 29, 1.5), GIFT_EDGE)
            img = put(img, box(7, 14, 25, 28, 1), GIFT_BOX)
            img = put(img, box(5, 10, 27, 15, 1.5), GIFT_EDGE)
            img = put(img, box(6, 11, 26, 14, 1), GIFT_LID)
            img = put(img, box(14.5, 11, 17.5, 28), RIBBON)
            img = put(img, ellipse(9.5, 5, 16.5, 11.5), RIBBON)
            img = put(img, ellipse(15.5, 5, 22.5, 11.5), RIBBON)
            img = put(img, ellipse(11, 6.5, 15.5, 10), BOW)
            img = put(img, ellipse(16.5, 6.5, 21, 10), BOW)
        elif tile == START:
            img = put(img, ellipse(9, 24, 23, 28), SHADOW)
            img = put(img, box(10.5, 15, 13, 26, 0.5), DARK_BROWN)
            img = put(img, box(19, 15, 21.5, 26, 0.5), DARK_BROWN)
            img = put(img, box(11, 15, 12.5, 25.5), STOOL_LEG)
            img = put(img, box(19.5, 15, 21, 25.5), STOOL_LEG)
            img = put(img, box(8.5, 11, 23.5, 17.5, 2.5), DARK_BROWN)
            img = put(img, box(9.5, 12, 22.5, 16.5, 2), STOOL_SEAT)
        return img

    def elf(self, facing: int):
        """The elf as a layer: pointed green hat bent the way it faces, a face (its back, hair,
        facing up), a red tunic, dark boots."""
        put, box, ellipse = self.put, self.box, self.ellipse
        img = jnp.zeros((self.cell, self.cell, 4), jnp.float32)
        img = put(img, ellipse(9, 27, 23, 31), SHADOW)
        img = put(img, box(10.5, 25, 15.5, 30, 1), DARK_BROWN)  # boots
        img = put(img, box(16.5, 25, 21.5, 30, 1), DARK_BROWN)
        img = put(img, box(9, 16, 23, 27, 3), DARK_BROWN)  # tunic, outlined
        img = put(img, box(10, 17, 22, 26, 2.5), TUNIC)
        img = put(img, box(10, 22, 22, 23.5), TUNIC_DARK)  # belt
        img = put(img, ellipse(8.5, 6.5, 23.5, 19.5), DARK_BROWN)  # head, outlined
        img = put(img, ellipse(9.5, 7.5, 22.5, 18.5), DARK_BROWN if facing == UP else SKIN)
        tip = {LEFT: (5, 1), RIGHT: (27, 1), DOWN: (16, 0), UP: (16, 0)}[facing]
        img = put(img, self.poly((8, 10), (24, 10), tip), HAT)
        img = put(img, box(8, 8.5, 24, 11.5, 1), HAT_BRIM)
        for x in {LEFT: (11, 15), DOWN: (13, 19), RIGHT: (17, 21)}.get(facing, ()):
            img = put(img, ellipse(x - 1.1, 12.5, x + 1.1, 15.5), SHADOW)
        return img


# ---------------------------------------------------------------------------------------
# The game
# ---------------------------------------------------------------------------------------


@register("frozenlake")
@dataclasses.dataclass(frozen=True, repr=False)
class FrozenLake(Env):
    """gymnasium's FrozenLake-v1. Static config: board_size (2..16; default 4, or the fixed
    map's), map_name (None: a random map each episode, gymnasium's generate_random_map;
    "4x4" / "8x8": gymnasium's named maps), desc (a fixed map of your own: row strings of S F H G,
    square, one S), is_slippery (default False, the anchors' VAGEN setting; gymnasium's default
    is True), max_steps (None: gymnasium's TimeLimit, 100 up to 4x4, else 200),
    actions_per_turn (1..5 moves per answer), map_tries (random maps: boards drawn at most
    before the fallback), image_size (None: gymnasium's window min(64 n, 512) rounded down to a
    multiple of 28: 252 for 4x4, 504 for 8x8)."""

    name = "frozenlake"
    board_size: int | None = None
    map_name: str | None = None
    desc: tuple | None = None
    is_slippery: bool = False
    max_steps: int | None = None
    actions_per_turn: int = 1
    map_tries: int = 16
    image_size: tuple | None = None

    def __post_init__(self):
        check_choice(self.name, "map_name", self.map_name, (None, *MAPS))
        fixed = self.desc if self.desc is not None else MAPS.get(self.map_name)
        if self.desc is not None and self.map_name is not None:
            raise ConfigError(f"{self.name}: give map_name or desc, not both")
        if fixed is not None:
            fixed = self._check_desc(fixed)
            object.__setattr__(self, "desc", fixed)
            if self.board_size is not None and self.board_size != len(fixed):
                raise ConfigError(f"{self.name}: board_size={self.board_size} but the map is {len(fixed)}x{len(fixed)}")
            object.__setattr__(self, "board_size", len(fixed))
        elif self.board_size is None:
            object.__setattr__(self, "board_size", 4)
        check_range(self.name, "board_size", self.board_size, 2, MAX_BOARD)
        n = self.board_size
        check_bool(self.name, "is_slippery", self.is_slippery)
        if self.max_steps is None:
            object.__setattr__(self, "max_steps", 100 if n <= 4 else 200)
        check_range(self.name, "max_steps", self.max_steps, 1, 1_000_000)
        check_range(self.name, "actions_per_turn", self.actions_per_turn, 1, MAX_ACTIONS_PER_TURN)
        check_range(self.name, "map_tries", self.map_tries, 1, 1024)
        if self.image_size is None:
            side = max(28, min(64 * n, 512) // 28 * 28)
            object.__setattr__(self, "image_size", (side, side))
        object.__setattr__(self, "image_size", check_image_size(self.name, self.image_size))
        check_cell_size(self.name, self.image_size, n, lambda size: min(size) // n, MIN_CELL_PX, "cells", (1, 1))

    def _check_desc(self, desc) -> tuple[str, ...]:
        if isinstance(desc, str) or not all(isinstance(row, str) for row in desc):
            raise ConfigError(f"{self.name}: desc must be a tuple of row strings such as ('SFFF', 'FHFH', ...)")
        desc = tuple(desc)
        n = len(desc)
        if not 2 <= n <= MAX_BOARD or any(len(row) != n for row in desc):
            raise ConfigError(f"{self.name}: desc must be a square map of 2..{MAX_BOARD} rows, got {desc!r}")
        if set("".join(desc)) - set(TILE_LETTERS) or "".join(desc).count("S") != 1:
            raise ConfigError(f"{self.name}: desc must use the letters S F H G with exactly one S, got {desc!r}")
        return desc

    # --- static facts ------------------------------------------------------------------
    @property
    def num_moves(self) -> int:
        """Move sequences an answer can name (4 with one action per turn)."""
        return len(move_sequences(self.actions_per_turn)[1])

    @property
    def num_actions(self) -> int:
        return self.num_moves + 1

    @property
    def invalid_action(self) -> int:
        return self.num_moves

    @property
    def default_params(self) -> Params:
        return Params()

    @property
    def prompt(self) -> str:
        n, k = self.board_size, self.actions_per_turn
        slippery = (
            "The ice is slippery: you move in the direction you choose only with probability 1/3, otherwise "
            "to one of the two sides of it."
            if self.is_slippery
            else "The ice is not slippery: you always move in the direction you choose."
        )
        answer = (
            "your move in <answer></answer>, one of Left, Down, Right, Up, e.g. <answer>Left</answer>."
            if k == 1
            else f"up to {k} moves in <answer></answer>, separated by commas, e.g. <answer>Left, Up</answer>; "
            "they are played in order until the episode ends."
        )
        return (
            f"You are playing FrozenLake on a {n}x{n} grid. Walk across the frozen lake from the start (a stool) "
            "to the goal (a gift) without falling into a hole.\n\nRules:\n"
            "- Each move goes one cell Left, Down, Right or Up; a move off the edge leaves you where you are.\n"
            f"- {slippery}\n"
            f"- The game ends when you reach the goal (reward 1), fall into a hole, "
            f"or after {self.max_steps} moves.\n\n"
            "First describe the board in <perception></perception>: one line per row, cells separated by ' | ', "
            "S start, F frozen, H hole, G goal, P you, X you in a hole, V you on the goal. Then output your "
            f"thinking process in <think></think> and {answer}"
        )

    # --- rules ---------------------------------------------------------------------------
    def _fixed_board(self) -> np.ndarray:
        return np.asarray([[TILE_LETTERS.index(ch) for ch in row] for row in self.desc], np.int32)

    def _fresh(self, board):
        start = jnp.argmax(board.reshape(-1) == START).astype(jnp.int32)
        zero = jnp.int32(0)
        return State(board=board, pos=start, last_action=jnp.int32(DOWN), steps=zero, done=jnp.bool_(False))

    def reset(self, key, params=None):
        params = self.default_params if params is None else params
        if self.desc is not None:
            return self._fresh(jnp.asarray(self._fixed_board()))
        return self._fresh(random_map(key, self.board_size, params.frozen_prob, self.map_tries)[0])

    def _tile(self, board, pos):
        return board.reshape(-1)[pos]

    def _move(self, board, pos, direction, u, params):
        """One gymnasium step from a live cell: (cell, reward, terminated)."""
        if self.is_slippery:
            direction = slip_direction(direction, u, params.success_rate)
        cell = jnp.asarray(next_cells(self.board_size))[pos, direction]
        tile = self._tile(board, cell)
        reward = jnp.where(
            tile == GOAL, params.reward_goal, jnp.where(tile == HOLE, params.reward_hole, params.reward_frozen)
        )
        return cell, jnp.asarray(reward, jnp.float32), (tile == GOAL) | (tile == HOLE)

    def _sequence(self, action):
        dirs, lengths = (jnp.asarray(t) for t in move_sequences(self.actions_per_turn))
        is_move = action < self.num_moves
        index = jnp.minimum(action, self.num_moves - 1)
        return dirs[index], jnp.where(is_move, lengths[index], 0)

    def _legal(self, state, dirs, length):
        """Slippery ice: any move on a live board. Otherwise every move of the sequence intended
        onto the board, along its path up to where it would end the episode. Nothing is legal on
        a finished board."""
        n = self.board_size
        cells = jnp.asarray(next_cells(n))
        ok, ended = ~state.done & (length > 0), jnp.bool_(False)
        if self.is_slippery:
            return ok
        pos, steps = state.pos, state.steps
        for i in range(self.actions_per_turn):
            active = (i < length) & ~ended
            d = jnp.maximum(dirs[i], 0)
            target = cells[pos, d]
            ok = ok & (~active | (target != pos))
            pos, steps = jnp.where(active, target, pos), steps + active
            tile = self._tile(state.board, pos)
            ended = ended | (active & ((tile == GOAL) | (tile == HOLE) | (steps >= self.max_steps)))
        return ok

    def step(self, key, state, action, params=None):
        params = self.default_params if params is None else params
        action = self.checked_action(state, action)
        dirs, length = self._sequence(action)
        legal = self._legal(state, dirs, length)
        u = move_uniforms(key, self.actions_per_turn)
        pos, steps, last, done, terminated = state.pos, state.steps, state.last_action, state.done, jnp.bool_(False)
        reward = jnp.float32(0.0)
        for i in range(self.actions_per_turn):
            play = (i < length) & ~done
            cell, r, term = self._move(state.board, pos, jnp.maximum(dirs[i], 0), u[i], params)
            pos = jnp.where(play, cell, pos)
            reward = reward + jnp.where(play, r, 0.0)
            last = jnp.where(play, dirs[i], last)
            steps = steps + play
            terminated = terminated | (play & term)
            done = done | (play & (term | (steps >= self.max_steps)))
        wasted = (length == 0) & ~state.done  # an unreadable answer: no move, one step spent
        steps = steps + wasted
        done = done | (wasted & (steps >= self.max_steps))
        new = State(board=state.board, pos=pos, last_action=last, steps=steps, done=done)
        info = {
            "raw_reward": reward,
            "legal": legal,
            "truncated": done & ~state.done & ~terminated,
            "solved": self.solved(new),
        }
        return new, reward, done, info

    def valid_actions(self, state, params=None):
        self.check_state(state, "valid_actions")
        if self.is_slippery:
            return jnp.concatenate([jnp.full(self.num_moves, ~state.done), jnp.zeros(1, bool)])
        if self.actions_per_turn == 1:
            on_board = jnp.asarray(next_cells(self.board_size))[state.pos] != state.pos
            return jnp.concatenate([on_board & ~state.done, jnp.zeros(1, bool)])
        dirs, lengths = (jnp.asarray(t) for t in move_sequences(self.actions_per_turn))
        legal = jax.vmap(lambda d, n: self._legal(state, d, n))(dirs, lengths)
        return jnp.concatenate([legal, jnp.zeros(1, bool)])

    def solved(self, state):
        """bool: the player stands on the goal (the episode ended in success)."""
        return self._tile(state.board, state.pos) == GOAL

    # --- rendering -----------------------------------------------------------------------
    @functools.cached_property
    def layout(self) -> raster.BoardLayout:
        n = self.board_size
        cell = min(self.image_size) // n
        return raster.BoardLayout.centred(self.image_size, n, cell, cell / 32.0, 0, 0)

    @functools.cached_property
    def _tile_atlas(self) -> np.ndarray:
        """uint8 [17, cell, cell, 3]: F, H, S, G; the elf facing each direction (gymnasium's
        order) on F, S and G (ids 4 + 4 * (0 F, 1 S, 2 G) + direction); the cracked hole of a
        player who fell in (16). The ice and each elf are drawn once and composited."""

        def draw():
            pen = Pen(self.layout.cell)
            ice = pen.ice()
            tiles = [pen.outline(pen.decorate(ice, t)) for t in range(4)]
            elves = [pen.elf(d) for d in range(4)]
            tiles += [pen.over(tiles[t], elf) for t in (FROZEN, START, GOAL) for elf in elves]
            tiles.append(pen.outline(pen.decorate(ice, HOLE, fell=True)))
            return jnp.stack([raster.to_uint8(t) for t in tiles])

        return raster.bake(draw)

    @functools.cached_property
    def _background(self) -> np.ndarray:
        h, w = self.image_size
        return np.asarray(np.broadcast_to(np.asarray(GRID_LINE, np.uint8), (h, w, 3)))

    def render(self, state, params=None):
        self.check_state(state, "render")
        L = self.layout
        flat = state.board.reshape(-1)
        tile = flat[state.pos]
        facing = jnp.clip(state.last_action, 0, 3)
        kind = jnp.where(tile == START, 1, jnp.where(tile == GOAL, 2, 0))
        player = jnp.where(tile == HOLE, 16, 4 + 4 * kind + facing)
        ids = jnp.where(jnp.arange(flat.shape[0]) == state.pos, player, flat).reshape(state.board.shape)
        return raster.paste_cells(
            jnp.asarray(self._background), jnp.asarray(self._tile_atlas), ids, L.board_y, L.board_x
        )

    # --- text ----------------------------------------------------------------------------
    def symbols(self, state) -> np.ndarray:
        """int [n, n] indices into SYMBOLS: the map with the player's cell marked."""
        board = np.asarray(state.board)
        if board.shape != (self.board_size, self.board_size):
            raise ValueError(
                f"{self.name}: describe expects one {self.board_size}x{self.board_size} board "
                f"(unbatch a batched state first), got shape {board.shape}"
            )
        out = board.copy().reshape(-1)
        pos = int(state.pos)
        out[pos] = {HOLE: 5, GOAL: 6}.get(int(out[pos]), 4)
        return out.reshape(board.shape)

    def describe(self, state) -> str:
        """The perception text: rows joined by newlines, cells joined by " | ", gymnasium's map
        letters S F H G with the player's cell P (X fallen into a hole, V on the goal)."""
        return board_text(self.name, self.symbols(state), self.board_size, SYMBOLS.__getitem__, " | ")

    def moves_of(self, text: str) -> list[int]:
        """The directions an answer names: the first `<answer>...</answer>` block split at "," (or
        "||"), each word stripped and read case-insensitively, at most actions_per_turn of them,
        up to the first word that names no move (VAGEN's rule). Linear in the text."""
        if not isinstance(text, str):
            raise TypeError(f"answer text must be str, got {type(text).__name__}")
        start = text.find(ANSWER_OPEN)
        if start < 0:
            return []
        end = text.find(ANSWER_CLOSE, start + len(ANSWER_OPEN))
        if end < 0:
            return []
        names = [m.lower() for m in MOVE_NAMES]
        moves = []
        for word in _WORD_SPLIT.split(text[start + len(ANSWER_OPEN) : end], maxsplit=self.actions_per_turn)[
            : self.actions_per_turn
        ]:
            word = word.strip().lower()
            if word not in names:
                break
            moves.append(names.index(word))
        return moves

    def parse(self, text: str) -> int:
        """An answer naming 1..actions_per_turn moves (`<answer>Left</answer>`, `<answer>left, UP</answer>`)
        -> its action id; nothing readable -> `invalid_action`."""
        moves = self.moves_of(text)
        return sequence_id(moves) if moves else self.invalid_action

    def answer_text(self, action: int) -> str:
        action = self.answerable_action(action)
        dirs, length = move_sequences(self.actions_per_turn)
        return f"<answer>{', '.join(MOVE_NAMES[d] for d in dirs[action, : length[action]])}</answer>"

    def board_from_text(self, board) -> tuple[np.ndarray, int | None]:
        """(tile codes int32 [n, n], the player's cell or None) from a perception text (`describe`'s
        format) or from row strings (gymnasium's desc, letters S F H G, optionally P X V)."""
        lines = board.split("\n") if isinstance(board, str) else list(board)
        rows = []
        for line in lines:
            if not line.strip():
                continue
            rows.append([c.strip() for c in line.split("|")] if "|" in line else list(line.strip()))
        n = self.board_size
        if len(rows) != n or any(len(r) != n for r in rows) or any(c not in SYMBOLS for r in rows for c in r):
            raise ValueError(f"{self.name}: expected {n} rows of {n} cells from {SYMBOLS!r}, got {board!r}"[:400])
        codes = np.asarray([[SYMBOLS.index(c) for c in r] for r in rows], np.int32).reshape(-1)
        players = np.flatnonzero(codes >= 4)
        if len(players) > 1:
            raise ValueError(f"{self.name}: the board shows {len(players)} players")
        pos = None
        if len(players):
            pos = int(players[0])
            under = {4: FROZEN, 5: HOLE, 6: GOAL}[int(codes[pos])]
            if codes[pos] == 4 and not (codes == START).any():
                under = START  # the player hides the start
            codes[pos] = under
        return codes.reshape(n, n), pos

    def from_board(self, board, pos=None, steps: int = 0, last_action: int = DOWN):
        """State from a board: tile codes int [n, n] (F 0, H 1, S 2, G 3), row strings (gymnasium's
        desc) or a perception text, which may mark the player (P, X, V). `pos` (row * n + col, or
        (row, col)) overrides the marked cell; by default the player stands on the start."""
        n = self.board_size
        if isinstance(board, str) or (isinstance(board, (list, tuple)) and board and isinstance(board[0], str)):
            codes, marked = self.board_from_text(board)
        else:
            codes, marked = np.asarray(board), None
            if codes.shape != (n, n) or codes.dtype.kind not in "iu" or (codes < 0).any() or (codes > GOAL).any():
                raise ValueError(f"{self.name}: board must be int tile codes 0..3 of shape ({n}, {n}), got {board!r}")
        if (codes == START).sum() != 1:
            raise ValueError(f"{self.name}: the board needs exactly one start S")
        if pos is None:
            pos = marked if marked is not None else int(np.flatnonzero(codes.reshape(-1) == START)[0])
        elif isinstance(pos, (tuple, list)):
            pos = int(pos[0]) * n + int(pos[1])
        if not 0 <= int(pos) < n * n:
            raise ValueError(f"{self.name}: pos {pos} is off the {n}x{n} board")
        check_range(self.name, "last_action", last_action, 0, 3)
        tile = int(codes.reshape(-1)[int(pos)])
        done = tile in (HOLE, GOAL) or steps >= self.max_steps
        return State(
            board=jnp.asarray(codes, jnp.int32),
            pos=jnp.int32(pos),
            last_action=jnp.int32(last_action),
            steps=jnp.int32(steps),
            done=jnp.bool_(done),
        )
