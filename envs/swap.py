"""Swap (match-3), faithful to G1's game (docs/envs.md, "Swap"), as pure JAX functions.

Board: int32 tile types [G, G], type = colour * num_shapes + shape (colours and shapes in
the order of `raster.TILE_COLORS` and `raster.SHAPES`); no cell is ever empty between
steps. An action swaps two orthogonally adjacent cells (id = `encode_pair(r1, c1, r2, c2, G)`,
either order); it is legal only if afterwards a line of >= 3 identical tiles exists. Then,
wave by wave, the union of all runs >= 3 is cleared (score += L * (L - 1) for the L cleared
cells), the tiles above fall, new uniform random tiles drop in from the top, until no line
is left. If no legal swap remains, the board is reshuffled. A game allows `max_moves` legal
swaps (`State.moves_left` counts them down; the frame shows it as "Moves: ...").

Invariants after reset and after every step: no line of 3, at least one legal swap, tile
types in range. Every loop has a static bound:
  * cascades: at most `max_cascades` waves; a board that still has a line at the cap is
    reshuffled (that last line is not scored) and the reshuffle is counted;
  * reshuffle: up to SHUFFLE_TRIES times the original's shuffle (a random permutation of
    the tiles, its lines then cleared like a cascade), then DEAL_TRIES fresh deals with a
    planted legal swap, then a pattern board that is playable by construction.
The loops are `lax.while_loop`s, so a vmapped batch pays only for the iterations that some
board in it needs (cascades are short, reshuffles rare).

Deliberate differences from the original (docs/envs.md, "The original's bugs"): the score,
moves-left and shuffle counters on the image are the real ones (the original draws a constant
text); a game starts at score 0 and reshuffles never score (the original scored lines that
its set-up and shuffles cleared); coordinates outside the board are invalid instead of
aliasing; the prompt's indentation (a triple-quoted string indented by 8 spaces) is dropped
unless `original_prompt_layout=True`.
"""

from __future__ import annotations

import dataclasses
import functools

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
    check_image_size,
    check_range,
    kth_true,
    random_permutation,
    register,
    smallest_image_size,
    uniform_index,
)
from envs.grammar import board_text, decode_pair, encode_pair, pair_answer_text, parse_pair_action

OFF_BOARD = -1  # the tile "read" outside the board: equal to no real tile
PAD = 3  # neighbourhood read around a cell by the legal-swap test (a moved tile looks 3 ahead)
SHUFFLE_TRIES = 8  # shuffles (permutation + clearing its lines) tried first
DEAL_TRIES = 4  # then fresh deals with a planted legal swap, then the pattern board
MIN_TYPES = 3  # with >= 3 types a cell can always avoid both its left pair and its upper pair

# Original look (pygame): 70-px cells, a 60-px text strip. Geometry below is in 1/70 cell.
CELL_UNITS = 70.0
STRIP_CELLS = 0.8  # text strip under the board, in cells (56 px at 70-px cells: 616 = 8 * 70 + 56)
LABEL_CELLS = 0.5  # margin for coordinate labels, in cells
MIN_CELL_PX = 20  # smaller cells do not show shapes legibly
CELL_BG = ((240, 240, 240), (230, 230, 230))  # (row + col) even / odd
CELL_BORDER = (200, 200, 200)
SHADOW = (100, 100, 100)
FACE, FACE_BORDER = (245, 245, 245), (180, 180, 180)
BLACK, WHITE = (0, 0, 0), (255, 255, 255)
LABEL_COLOR = (90, 90, 90)
NUMBER_DIGITS = 10  # int32 counters have at most 10 digits
MIN_TEXT_PX = 8  # the counters line shrinks to fit the frame, but not below this

PROMPT_LINES = (
    "You are playing a Match-3 Game where you need to swap adjacent tiles "
    "to create matches of 3 or more identical tiles.",
    "",
    "Rules:",
    "- Tiles are identified by color ({colors}) and shape ({shapes})",
    "- You can only swap adjacent tiles (not diagonal)",
    "- A valid move must create at least one match of 3 or more identical tiles",
    "- After matches are removed, tiles above will fall down and new tiles will appear at the top",
    "- If no valid moves are available, the board will automatically be shuffled",
    "- The game ends when you run out of moves",
    "",
    "Please analyze the game board and identify two adjacent tiles to swap that will create a match.",
    "Return your answer as follows:",
    "1. First coordinate: (row1, col1)",
    "2. Second coordinate: (row2, col2)",
    "",
    "Where row and col are 0-indexed numbers starting from the top-left of the board.",
    "First describe the board in <perception></perception>. Then output your thinking process in "
    "<think></think> and final action in <answer>(row1, col1) (row2, col2)</answer>.",
)


@struct.dataclass
class State:
    board: jax.Array  # int32 [G, G] tile types
    score: jax.Array  # int32 points of the game so far
    moves_left: jax.Array  # int32 legal swaps still allowed (starts at the game's max_moves)
    shuffles: jax.Array  # int32 reshuffles (no legal swap left, or the cascade cap reached)
    done: jax.Array  # bool: no moves left


@struct.dataclass
class Params:
    """Swap has no dynamic knobs: the move limit is static config (`max_moves`), counted down
    in the state."""


def board_layout(image_size: tuple[int, int], board_size: int, labels: bool) -> raster.BoardLayout:
    """Square cells as large as fit the board, the label band (LABEL_CELLS) and the text strip
    (STRIP_CELLS), all centred; `scale` is the cell over the original's 70 px."""
    h, w = image_size
    band = LABEL_CELLS if labels else 0.0
    cell = int(min(w / (board_size + band), h / (board_size + band + STRIP_CELLS)))
    return raster.BoardLayout.centred(
        image_size, board_size, cell, cell / CELL_UNITS, int(round(band * cell)), int(round(STRIP_CELLS * cell))
    )


@dataclasses.dataclass(frozen=True)
class CountersLine:
    """Where and how the counters are drawn: one or two lines of `font` text from column x,
    line i on rows [ys[i], ys[i] + table.shape[0]), `width` pixel columns each; `table` holds
    every glyph column pre-blended black on white (uint8, one channel), `blank` is its
    all-white column."""

    font: raster.GlyphAtlas
    x: int
    ys: tuple[int, ...]
    width: int
    table: np.ndarray
    blank: int


# ---------------------------------------------------------------------------------------
# Rules on one board (pure functions of int32 [G, G] tile types)
# ---------------------------------------------------------------------------------------


def line_mask(board):
    """bool [G, G]: cells in a horizontal or vertical run of >= 3 identical tiles (a cell is in
    such a run iff one of the 3-windows covering it holds three equal tiles)."""
    h = (board[:, :-2] == board[:, 1:-1]) & (board[:, 1:-1] == board[:, 2:])  # [G, G-2] window starts
    v = (board[:-2] == board[1:-1]) & (board[1:-1] == board[2:])  # [G-2, G]
    in_h = jnp.pad(h, ((0, 0), (0, 2))) | jnp.pad(h, ((0, 0), (1, 1))) | jnp.pad(h, ((0, 0), (2, 0)))
    in_v = jnp.pad(v, ((0, 2), (0, 0))) | jnp.pad(v, ((1, 1), (0, 0))) | jnp.pad(v, ((2, 0), (0, 0)))
    return in_h | in_v


def _neighbours(board):
    """`at(dy, dx)` -> board[r + dy, c + dx] for every cell (OFF_BOARD outside), |d| <= PAD."""
    g = board.shape[0]
    padded = jnp.pad(board, PAD, constant_values=OFF_BOARD)
    return lambda dy, dx: padded[PAD + dy : PAD + dy + g, PAD + dx : PAD + dx + g]


def _moved_tile_lines(board, at, dy, dx):
    """bool [G, G]: the tile at p, moved one cell to q = p + (dy, dx), completes a line there.
    Only cells beyond q or across q count: after a swap, p holds the other tile."""
    ey, ex = dx, dy  # the perpendicular direction

    def same(oy, ox):  # board[q + o] == the moving tile
        return at(dy + oy, dx + ox) == board

    return (
        (same(dy, dx) & same(2 * dy, 2 * dx))
        | (same(ey, ex) & same(2 * ey, 2 * ex))
        | (same(-ey, -ex) & same(-2 * ey, -2 * ex))
        | (same(-ey, -ex) & same(ey, ex))
    )


def legal_swaps(board):
    """(horizontal bool [G, G-1], vertical bool [G-1, G]): swapping (r, c) with (r, c+1),
    resp. (r+1, c), completes a line. Assumes the board has no line yet (the invariant):
    then a line after a swap must run through one of the two moved tiles, so 4 directions x
    4 neighbour patterns of shifted comparisons decide every swap at once."""
    at = _neighbours(board)
    right, left = _moved_tile_lines(board, at, 0, 1), _moved_tile_lines(board, at, 0, -1)
    down, up = _moved_tile_lines(board, at, 1, 0), _moved_tile_lines(board, at, -1, 0)
    return right[:, :-1] | left[:, 1:], down[:-1] | up[1:]


def has_legal_swap(board):
    horizontal, vertical = legal_swaps(board)
    return horizontal.any() | vertical.any()


def playable(board):
    """The invariant of every state between steps: no line, and a legal swap exists."""
    return ~line_mask(board).any() & has_legal_swap(board)


def fall_and_refill(board, cleared, refill):
    """Cleared cells vanish and the tiles above fall, keeping their order (a stable per-column
    sort with the cleared slots on top, written as counting: a kept tile drops by the number
    of cleared cells below it, which is many times faster than a sort on CPU). The emptied
    top cells take `refill`'s tiles at the same positions."""
    g = board.shape[0]
    rows = jnp.arange(g)
    below = jnp.cumsum(cleared[::-1], axis=0)[::-1] - cleared  # cleared cells under each cell
    dest = jnp.where(cleared, -1, rows[:, None] + below)
    lands = dest[None, :, :] == rows[:, None, None]  # [to row, from row, col]
    fallen = (lands * board[None]).sum(1)
    return jnp.where(lands.any(1), fallen, refill)


def shuffle_tiles(key, board):
    """A uniformly random permutation of the board's tiles (`envs.core.random_permutation` of
    24 random bits per tile)."""
    flat = board.reshape(-1)
    destination = random_permutation(jax.random.bits(key, flat.shape) >> 8)
    return jnp.zeros_like(flat).at[destination].set(flat).reshape(board.shape)


def uniform_tiles(key, shape, num_types: int):
    return uniform_index(jax.random.uniform(key, shape), num_types)


def cascade(board, lines, refill_fn, max_waves: int):
    """Resolve waves until no line is left or `max_waves` waves ran: each wave clears the
    union of all lines (L cells, L * (L - 1) points), lets tiles fall and refills from
    `refill_fn(wave) -> int32 [G, G]`. `lines` is `line_mask(board)` (the caller has it).
    Returns (board, points, whether a line is still left at the cap)."""

    def unresolved(carry):
        _, lines, _, wave = carry
        return lines.any() & (wave < max_waves)

    def wave_step(carry):
        board, lines, points, wave = carry
        cleared = lines.sum(dtype=jnp.int32)
        board = fall_and_refill(board, lines, refill_fn(wave))
        return board, line_mask(board), points + cleared * (cleared - 1), wave + 1

    board, lines, points, _ = jax.lax.while_loop(unresolved, wave_step, (board, lines, jnp.int32(0), jnp.int32(0)))
    return board, points, lines.any()


def _kth_allowed(k, f1, f2):
    """The k-th (0-based) type not in {f1, f2} (distinct; a value >= num_types means none)."""
    lo, hi = jnp.minimum(f1, f2), jnp.maximum(f1, f2)
    k = k + (k >= lo)  # skip the forbidden types in increasing order
    return k + (k >= hi)


def deal(key, size: int, num_types: int):
    """A random line-free board, the original's way: every cell takes a uniform type among
    those that do not complete a line with its two left or its two upper neighbours. Cells on
    one anti-diagonal do not constrain each other, so the 2G-1 anti-diagonals are filled in
    turn, each in one vectorised pass."""
    u = jax.random.uniform(key, (size, size))
    rows, cols = np.indices((size, size))
    diagonal = jnp.asarray(rows + cols)
    none = num_types  # "no forbidden type": above every real type

    def fill_diagonal(d, board):
        at = _neighbours(board)
        left, left2, up, up2 = at(0, -1), at(0, -2), at(-1, 0), at(-2, 0)
        f1 = jnp.where((left == left2) & (left >= 0), left, none)
        f2 = jnp.where((up == up2) & (up >= 0) & (up != f1), up, none)
        allowed = num_types - (f1 < none).astype(jnp.int32) - (f2 < none).astype(jnp.int32)
        return jnp.where(diagonal == d, _kth_allowed(uniform_index(u, allowed), f1, f2), board)

    return jax.lax.fori_loop(0, 2 * size - 1, fill_diagonal, jnp.full((size, size), OFF_BOARD, jnp.int32))


def planted_deal(key, size: int, num_types: int):
    """A fresh deal with a legal swap planted: a random tile t at (r, c) is copied to (r, c+1)
    and (r+1, c+2), so that swapping (r, c+2) with (r+1, c+2) completes row r. The copies may
    complete some other line; `settle` checks and tries again."""
    deal_key, row_key, col_key = jax.random.split(key, 3)
    board = deal(deal_key, size, num_types)
    r = jax.random.randint(row_key, (), 0, size - 1)
    c = jax.random.randint(col_key, (), 0, size - 2)
    tile = board[r, c]
    return board.at[r, c + 1].set(tile).at[r + 1, c + 2].set(tile)


def pattern_board(key, size: int, num_types: int):
    """A board with no line and a legal swap at any size: type (c // 2 + r) mod 3 (equal pairs
    along rows, no two equal neighbours down columns; swapping (0, 2) with (1, 2) completes
    row 1), relabelled with 3 random distinct types. The last resort of `settle`."""
    rows, cols = np.indices((size, size))
    u = jax.random.uniform(key, (3,))
    first = uniform_index(u[0], num_types)
    second = _kth_allowed(uniform_index(u[1], num_types - 1), first, num_types)
    third = _kth_allowed(uniform_index(u[2], num_types - 2), first, second)
    return jnp.stack([first, second, third])[jnp.asarray((cols // 2 + rows) % 3)]


def random_refill(key, size: int, num_types: int):
    """A `refill_fn` for `cascade`: wave w drops uniform random tiles drawn from fold_in(key, w)."""
    return lambda wave: uniform_tiles(jax.random.fold_in(key, wave), (size, size), num_types)


def settle(
    key, board, wanted, num_types: int, max_waves: int, shuffle_tries: int = SHUFFLE_TRIES, deal_tries: int = DEAL_TRIES
):
    """Reshuffle `board` if `wanted` and it is not playable (a line left at the cascade cap, or
    no legal swap). First the original's shuffle, up to `shuffle_tries` times: a random
    permutation of the tiles whose lines are then cleared wave by wave (unscored); then up to
    `deal_tries` fresh deals with a planted legal swap; then the pattern board, which always
    works. Each stage is a while_loop that a vmapped batch enters only if one of its boards
    still needs it. Returns (board, whether it was reshuffled)."""
    size = board.shape[0]
    wanted = jnp.asarray(wanted, bool)

    def shuffle(k):
        perm_key, refill_key = jax.random.split(k)
        shuffled = shuffle_tiles(perm_key, board)
        shuffled, _, _ = cascade(shuffled, line_mask(shuffled), random_refill(refill_key, size, num_types), max_waves)
        return shuffled

    def search(board, found, make, tries: int, first_attempt: int):
        def searching(carry):
            _, attempt, found = carry
            return ~found & (attempt < tries)

        def try_one(carry):
            current, attempt, _ = carry
            candidate = make(jax.random.fold_in(key, first_attempt + attempt))
            ok = playable(candidate)
            return jnp.where(ok, candidate, current), attempt + 1, ok

        board, _, found = jax.lax.while_loop(searching, try_one, (board, jnp.int32(0), found))
        return board, found

    keep = ~wanted | playable(board)
    new, found = search(board, keep, shuffle, shuffle_tries, 0)
    new, found = search(new, found, lambda k: planted_deal(k, size, num_types), deal_tries, shuffle_tries)
    last_resort = pattern_board(jax.random.fold_in(key, shuffle_tries + deal_tries), size, num_types)
    return jnp.where(found, new, last_resort), ~keep


# ---------------------------------------------------------------------------------------
# The game
# ---------------------------------------------------------------------------------------


@register("swap")
@dataclasses.dataclass(frozen=True, repr=False)
class Swap(Env):
    """G1's Swap (match-3). Static config: board_size (4..12), num_colors (1..16, the first
    colours of raster.TILE_COLORS), num_shapes (1..6, the first of raster.SHAPES), with at
    least 3 tile types; image_size (H, W) multiples of 28; coordinate_labels (off like the
    original); max_moves (legal swaps per game); max_cascades (cap on resolution waves per
    step); original_prompt_layout (keep the original prompt's indentation)."""

    name = "swap"
    board_size: int = 8
    num_colors: int = 4
    num_shapes: int = 3
    image_size: tuple = (616, 560)
    coordinate_labels: bool = False
    max_moves: int = 1_000_000
    max_cascades: int = 16
    original_prompt_layout: bool = False

    def __post_init__(self):
        check_range(self.name, "board_size", self.board_size, 4, 12)
        check_range(self.name, "num_colors", self.num_colors, 1, len(raster.TILE_COLORS))
        check_range(self.name, "num_shapes", self.num_shapes, 1, len(raster.SHAPES))
        if self.num_types < MIN_TYPES:
            raise ConfigError(
                f"swap: num_colors * num_shapes = {self.num_types} tile types is too few; need >= {MIN_TYPES}: "
                "with 1 type every board is one big line, and with 2 a cell whose left pair and upper pair "
                "differ cannot avoid completing a line, so line-free boards cannot be dealt"
            )
        object.__setattr__(self, "image_size", check_image_size(self.name, self.image_size))
        check_bool(self.name, "coordinate_labels", self.coordinate_labels)
        check_bool(self.name, "original_prompt_layout", self.original_prompt_layout)
        check_range(self.name, "max_moves", self.max_moves, 1, 2**31 - 1)
        check_range(self.name, "max_cascades", self.max_cascades, 1, 64)
        g, labels = self.board_size, self.coordinate_labels
        cell = lambda size: board_layout(size, g, labels).cell  # noqa: E731
        fits = lambda size: cell(size) >= MIN_CELL_PX and self._counters_fit(size) is not None  # noqa: E731
        check_cell_size(self.name, self.image_size, g, cell, MIN_CELL_PX, "cells", (11, 10), fits)
        if self._counters_fit(self.image_size) is None:
            smallest = smallest_image_size(fits, (11, 10))
            raise ConfigError(
                f"swap: image_size {self.image_size} is too small for the counters (score, moves left up to "
                f"max_moves={self.max_moves}, shuffles) at >= {MIN_TEXT_PX}-px text, e.g. image_size={smallest}"
            )

    # --- static facts ------------------------------------------------------------------
    @property
    def num_types(self) -> int:
        return self.num_colors * self.num_shapes

    @property
    def num_actions(self) -> int:
        return self.board_size**4 + 1

    @property
    def invalid_action(self) -> int:
        return self.board_size**4

    @property
    def default_params(self) -> Params:
        return Params()

    @functools.cached_property
    def tile_names(self) -> tuple[str, ...]:
        """Perception-text name of every tile type, e.g. "Red circle"."""
        return tuple(
            f"{color} {shape}"
            for color, _ in raster.TILE_COLORS[: self.num_colors]
            for shape in raster.SHAPES[: self.num_shapes]
        )

    @property
    def prompt(self) -> str:
        colors = ", ".join(name for name, _ in raster.TILE_COLORS[: self.num_colors])
        lines = [
            line.format(colors=colors, shapes=", ".join(raster.SHAPES[: self.num_shapes])) for line in PROMPT_LINES
        ]
        if self.original_prompt_layout:  # the original's indented triple-quoted string
            return "\n" + "".join(f"        {line}\n" for line in lines) + "        "
        return "\n".join(lines)

    @functools.cached_property
    def _swap_action_ids(self) -> np.ndarray:
        """int32 [2, S]: the action ids of every adjacent swap in both orders, listed like the
        flattened (horizontal, vertical) masks of `legal_swaps`."""
        g = self.board_size
        hr, hc = (a.ravel() for a in np.indices((g, g - 1)))
        vr, vc = (a.ravel() for a in np.indices((g - 1, g)))
        r1, c1 = np.concatenate([hr, vr]), np.concatenate([hc, vc])
        r2, c2 = np.concatenate([hr, vr + 1]), np.concatenate([hc + 1, vc])
        return np.stack([encode_pair(r1, c1, r2, c2, g), encode_pair(r2, c2, r1, c1, g)]).astype(np.int32)

    # --- rules ---------------------------------------------------------------------------
    def reset(self, key, params=None):
        deal_key, settle_key = jax.random.split(key)
        board = deal(deal_key, self.board_size, self.num_types)
        board, _ = settle(settle_key, board, jnp.bool_(True), self.num_types, self.max_cascades)  # rare: no legal swap
        zero = jnp.int32(0)
        return State(
            board=board, score=zero, moves_left=jnp.int32(self.max_moves), shuffles=zero, done=jnp.bool_(False)
        )

    def step(self, key, state, action, params=None):
        g = self.board_size
        action = self.checked_action(state, action)
        in_range = (action >= 0) & (action < g**4)
        r1, c1, r2, c2 = decode_pair(jnp.clip(action, 0, g**4 - 1), g)
        adjacent = jnp.abs(r1 - r2) + jnp.abs(c1 - c2) == 1
        board = jnp.asarray(state.board)  # host (numpy) states too
        swapped = board.at[r1, c1].set(board[r2, c2]).at[r2, c2].set(board[r1, c1])
        lines = line_mask(swapped)
        legal = in_range & adjacent & lines.any() & ~state.done

        refill_key, settle_key = jax.random.split(key)
        refill = random_refill(refill_key, g, self.num_types)
        board, points, _ = cascade(jnp.where(legal, swapped, board), lines & legal, refill, self.max_cascades)
        board, shuffled = settle(settle_key, board, legal, self.num_types, self.max_cascades)
        moves_left = state.moves_left - legal
        new_state = State(
            board=board,
            score=state.score + points,
            moves_left=moves_left,
            shuffles=state.shuffles + shuffled,
            done=state.done | (moves_left <= 0),
        )
        raw = jnp.where(legal, points, -1).astype(jnp.float32)
        reward = jnp.where(legal, 1.0, -1.0)
        return new_state, reward, new_state.done, {"raw_reward": raw, "legal": legal}

    def _legal_swap_flags(self, state):
        horizontal, vertical = legal_swaps(state.board)
        return jnp.concatenate([horizontal.ravel(), vertical.ravel()]) & ~state.done

    def valid_actions(self, state, params=None):
        self.check_state(state, "valid_actions")
        flags = self._legal_swap_flags(state)
        ids = jnp.asarray(self._swap_action_ids)
        return jnp.zeros(self.num_actions, bool).at[ids[0]].set(flags).at[ids[1]].set(flags)

    def random_valid_action(self, key, state, params=None):
        """Uniform over the valid actions (every legal swap, in either order), from one uniform
        draw: the k-th valid id, found by a cumulative count over the swaps only (not a
        categorical over all G**4 + 1 ids)."""
        self.check_state(state, "random_valid_action")
        pick, any_valid = kth_true(jnp.tile(self._legal_swap_flags(state), 2), jax.random.uniform(key))
        ids = jnp.asarray(self._swap_action_ids.reshape(-1))
        return jnp.where(any_valid, ids[pick], self.invalid_action).astype(jnp.int32)

    # --- rendering -----------------------------------------------------------------------
    @functools.cached_property
    def layout(self) -> raster.BoardLayout:
        return board_layout(self.image_size, self.board_size, self.coordinate_labels)

    @functools.cached_property
    def _tile_atlas(self) -> np.ndarray:
        """uint8 [2 * num_types, cell, cell, 3]: tile type t on a light (2t) or dark (2t + 1)
        checkerboard cell, drawn once."""
        return raster.bake(
            lambda: jnp.stack([self._draw_tile(t, parity) for t in range(self.num_types) for parity in (0, 1)])
        )

    def _draw_tile(self, tile: int, parity: int):
        """The original's cell: checkerboard background with a 1-px border, a shadow offset by
        4 units, the tile face (2 units in, 1-px border), the shape 12 units in (46 wide) with a
        2-unit black outline."""
        c, s = self.layout.cell, self.layout.scale
        ys, xs = raster.pixel_centres(c, c)
        line = max(1.0, s)
        color = raster.TILE_COLORS[tile // self.num_shapes][1]
        shape = raster.SHAPES[tile % self.num_shapes]
        img = raster.canvas(c, c, CELL_BG[parity])
        img = raster.fill(img, raster.inner_outline(raster.sdf_box(ys, xs, 0, 0, c, c), line), CELL_BORDER)
        img = raster.fill(img, raster.coverage(raster.sdf_box(ys, xs, 4 * s, 4 * s, c, c)), SHADOW)
        face = raster.sdf_box(ys, xs, 2 * s, 2 * s, 68 * s, 68 * s)
        img = raster.fill(img, raster.coverage(face), FACE)
        img = raster.fill(img, raster.inner_outline(face, line), FACE_BORDER)
        sdf = raster.shape_sdf(shape, ys, xs, 12 * s, 12 * s, 46 * s)
        img = raster.fill(img, raster.coverage(sdf), color)
        if shape in raster.OUTLINED_SHAPES:
            img = raster.fill(img, raster.inner_outline(sdf, 2 * s), BLACK)
        return raster.to_uint8(img)

    @functools.cached_property
    def _parity(self) -> np.ndarray:
        rows, cols = np.indices((self.board_size, self.board_size))
        return ((rows + cols) % 2).astype(np.int32)

    @property
    def _label_px(self) -> int:
        """Text size of the coordinate labels: the original's 32-px text on 70-px cells."""
        return max(MIN_TEXT_PX, int(round(0.32 * self.layout.cell)))

    @functools.cached_property
    def _background(self) -> np.ndarray:
        """The static part of the frame: white canvas and, optionally, coordinate labels."""
        return raster.bake(self._draw_background)

    def _draw_background(self):
        h, w = self.image_size
        L = self.layout
        img = raster.canvas(h, w, WHITE)
        if self.coordinate_labels:
            first_x, first_y = L.board_x + L.cell / 2, L.board_y + L.cell / 2
            img = raster.coordinate_labels(
                img,
                self.board_size,
                first_x,
                first_y,
                L.cell,
                L.board_y - L.band / 2,
                L.board_x - L.band / 2,
                self._label_px,
                LABEL_COLOR,
            )
        return raster.to_uint8(img)

    def _counter_lines(self, num_lines: int) -> tuple[tuple[tuple[str, int], ...], ...]:
        """The counters text as lines of (label, most digits of the number after it): one line
        "Score: <s>   Moves: <left>   Shuffles: <n>", or two with the score on its own. The
        score is any int32; moves left and shuffles (at most one per move) have at most the
        digits of max_moves."""
        moves = len(str(self.max_moves))
        score, rest = (("Score: ", NUMBER_DIGITS),), (("Moves: ", moves), ("   Shuffles: ", moves))
        if num_lines == 1:
            return (score + (("   " + rest[0][0], moves), rest[1]),)
        return (score, rest)

    def _counters_fit(self, image_size: tuple[int, int]) -> tuple[int, int] | None:
        """(text px, lines) of the counters in a frame of `image_size`: the original's size
        (32-px text on 70-px cells) when the widest values fit on one line in the strip; else
        the largest smaller size down to MIN_TEXT_PX on one line, then on two; None when
        nothing fits."""
        L = board_layout(image_size, self.board_size, self.coordinate_labels)
        room = image_size[1] - (L.board_x + int(round(10 * L.scale)))
        for num_lines in (1, 2):
            for px in range(max(MIN_TEXT_PX, int(round(0.32 * L.cell))), MIN_TEXT_PX - 1, -1):
                digit = raster.digit_advance(px)
                width = max(
                    sum(raster.text_advance(label, px) + digits * digit for label, digits in line)
                    for line in self._counter_lines(num_lines)
                )
                if width <= room and num_lines * raster.line_height(px) <= L.strip_h:
                    return px, num_lines
        return None

    @functools.cached_property
    def _counters_line(self) -> CountersLine:
        """The counters under the board, laid out by `raster.text_columns` at static spots and
        drawn from pre-blended pixels: every glyph column of the font, black on the strip's
        white (uint8, one channel: black on white has equal channels), plus a blank column. A
        frame then gathers one column index per pixel column of a line instead of blending a
        float strip."""
        px, num_lines = self._counters_fit(self.image_size)
        L = self.layout
        font = raster.glyph_atlas(px)
        x = L.board_x + int(round(10 * L.scale))
        top = L.strip_y + (L.strip_h - num_lines * font.cell_h) // 2
        ys = tuple(top + i * font.cell_h for i in range(num_lines))
        alpha = np.zeros((font.cell_h, font.alpha.shape[0] * font.cell_w + 1), np.float32)  # the last column is blank
        alpha[:, :-1] = raster.glyph_columns(font)  # indexed like raster.text_columns
        for y in ys:
            assert (self._background[y : y + font.cell_h, x:] == 255).all(), "the counters are drawn on white"
        table = raster.bake(
            lambda: raster.to_uint8(raster.fill(raster.canvas(*alpha.shape, WHITE), jnp.asarray(alpha), BLACK))
        )
        assert (table == table[..., :1]).all()
        return CountersLine(
            font=font, x=x, ys=ys, width=self.image_size[1] - x, table=table[..., 0], blank=alpha.shape[1] - 1
        )

    def counters_codes(self, state) -> tuple[jax.Array, ...]:
        """Glyph codes of each counters line ("Score: <score>   Moves: <left>   Shuffles: <n>",
        or the score on a line of its own)."""
        font = self._counters_line.font
        values = iter((state.score, state.moves_left, state.shuffles))
        return tuple(
            raster.concat_codes(
                *(
                    piece
                    for label, _ in line
                    for piece in (font.codes(label), raster.number_codes(next(values), NUMBER_DIGITS))
                )
            )
            for line in self._counter_lines(len(self._counters_line.ys))
        )

    def render(self, state, params=None):
        self.check_state(state, "render")
        L = self.layout
        ids = jnp.clip(state.board, 0, self.num_types - 1) * 2 + jnp.asarray(self._parity)
        img = raster.paste_cells(
            jnp.asarray(self._background), jnp.asarray(self._tile_atlas), ids, L.board_y, L.board_x
        )
        line = self._counters_line
        for codes, y in zip(self.counters_codes(state), line.ys):
            columns, _ = raster.text_columns(line.font, codes, line.width)
            strip = jnp.asarray(line.table)[:, jnp.where(columns >= 0, columns, line.blank)]
            img = jax.lax.dynamic_update_slice(
                img, jnp.broadcast_to(strip[..., None], (*strip.shape, 3)), (y, line.x, 0)
            )
        return img

    # --- text ----------------------------------------------------------------------------
    def describe(self, state) -> str:
        """G1's perception text: rows joined by newlines, cells "<Colour> <shape>" joined by " | "."""
        return board_text(self.name, state.board, self.board_size, self.tile_names.__getitem__, " | ")

    def parse(self, text: str) -> int:
        """G1's Swap parser: the first `<answer>(r1, c1) (r2, c2)</answer>` (any whitespace after
        the commas); malformed or out-of-range -> `invalid_action`. (The original's fallbacks
        all decode to a same-cell or corner pair, i.e. an invalid swap, so they map here too.)"""
        return parse_pair_action(text, self.board_size, self.invalid_action)

    def answer_text(self, action: int) -> str:
        return pair_answer_text(self.answerable_action(action), self.board_size)

    def from_board(self, board, score: int = 0, moves_left: int | None = None, shuffles: int = 0):
        """State from an int [G, G] board of tile types (colour * num_shapes + shape). The board
        must satisfy the game's invariant: no ready-made line and at least one legal swap.
        `moves_left` defaults to a fresh game's `max_moves`."""
        arr = np.asarray(board)
        g = self.board_size
        if arr.shape != (g, g):
            raise ValueError(f"swap: board must have shape ({g}, {g}), got {arr.shape}")
        if arr.dtype.kind not in "iu":
            raise ValueError(f"swap: tile types must be integers, got dtype {arr.dtype}")
        if (arr < 0).any() or (arr >= self.num_types).any():
            raise ValueError(f"swap: tile types must lie in [0, {self.num_types}), got {arr.tolist()}")
        state_board = jnp.asarray(arr, jnp.int32)
        lines = np.argwhere(np.asarray(line_mask(state_board)))
        if len(lines):
            raise ValueError(
                f"swap: the board has a ready-made line of 3 at cells {lines.tolist()}; "
                "positions between moves never do"
            )
        if not bool(has_legal_swap(state_board)):
            raise ValueError("swap: the board has no legal swap; the game would have reshuffled it")
        moves_left = self.max_moves if moves_left is None else moves_left
        return State(
            board=state_board,
            score=jnp.int32(score),
            moves_left=jnp.int32(moves_left),
            shuffles=jnp.int32(shuffles),
            done=jnp.bool_(moves_left <= 0),
        )
