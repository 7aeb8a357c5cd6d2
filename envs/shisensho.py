"""Shisen-Sho, faithful to G1's game (vlm-gym-spec.md §4), as pure JAX functions.

Board: int32 tile types [G, G] (0 = empty). A type is a (colour, shape) pair; every type on a
fresh board appears a multiple of 4 times. An action names two cells, (r1, c1) (r2, c2),
encoded as base-G digits (`envs.grammar.encode_pair`); id G**4 is the invalid action. A pair
matches when both cells hold the same type, are distinct, and a path of at most three straight
segments (two turns) joins them through empty cells, where the path may leave the board by
one cell (a ring of empty cells around it). A match removes both tiles: reward +1, score +1.
Anything else: reward -1, nothing changes. The episode ends when no legal pair is left
(including the cleared board). Training reward = raw reward (G1 trains on the raw +-1).

Connectivity, branch-free and in fixed work (env-design-notes.md §12 asks for labelled
empty runs; this is the same idea, kept as bitmasks). On the (G+2)^2 grid padded with the
empty ring, every path with <= 2 turns is horizontal-vertical-horizontal or
vertical-horizontal-vertical (segments may be empty). So, as uint32 bitmasks over the <= 14
padded positions (bit arithmetic on one tile mask per row and column): for a cell, the
columns its row segment reaches (h) and the rows its column segment reaches (v); for two rows
(columns), the columns (rows) with no tile strictly between them. Two cells connect iff
(h_a & h_b & cols_clear(r_a, r_b)) | (v_a & v_b & rows_clear(c_a, c_b)) is non-zero.
Tiles never move, so the pairs of cells dealt the same type are fixed when the board is
dealt and kept in the state (`pairs`, as actions; 216 on a dealt 12x12 board), with which of
them are legal now (`legal`). A step looks its action up there and, after a match,
recomputes `legal` (`pair_legal`: elementwise bit operations per listed pair, no gathers):
that is the "any legal pair left" test, and `valid_actions` / `random_valid_action` read it
too, never building G^4 pair tests.

Boards: like the original, shuffle the colour x shape product, take the first G^2/4 types,
place each 4 times, shuffle (one random draw per deal). With `solvable=True`, the deal follows a
clearing order played on positions first (`_clearing_order`), so the board can be cleared;
that deal costs G^2/2 all-pairs connectivity passes instead of one shuffle.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs import raster
from envs.core import ConfigError, Env, check_bool, check_choice, check_image_size, check_range, register
from envs.grammar import parse_pair_action

WHITE, BLACK, GRID_GREY = (255, 255, 255), (0, 0, 0), (200, 200, 200)

# The original's layout, in its pixels: 80-px cells, a 40-px text strip below the board,
# shapes in the 60-px box 10 px inside the cell, 2-px black outlines, 1-px grey cell borders.
CELL, STRIP, PAD, OUTLINE, BORDER = 80.0, 40.0, 10.0, 2.0, 1.0
MIN_CELL_PX = 16  # smaller cells make the shapes and the score text illegible

ANSWER_INSTRUCTIONS = (
    "Please analyze the game board and identify two matching tiles that can be connected according to these "
    "rules.\nReturn your answer as follows:\n1. First coordinate: (row1, col1)\n2. Second coordinate: (row2, col2)\n"
    "Where row and col are 0-indexed numbers such as (0, 1), starting from the top-left of the board.\n"
    "First describe the board in <perception></perception>. Then output your thinking process in <think></think> "
    "and final action in <answer>(row1, col1) (row2, col2)</answer>."
)

# Compositional difficulty (G1 Figure 1's axes). The original game already uses all six
# shapes, so "more shapes and colours" can only add colours: the ten darker/mixed colours of
# the original's commented-out list (Maroon next to Red, Navy next to Blue...).
PRESETS = {
    # G1's Shisen-Sho: 6x6 board, 6 colours x 6 shapes (9 of the 36 types per game)
    "base": dict(board_size=6, num_colors=6, num_shapes=6, image_size=(504, 448)),
    # perception axis: 16 colours x 6 shapes (9 of 96 types per game, similar hues)
    "more_shapes_colors": dict(board_size=6, num_colors=16, num_shapes=6, image_size=(504, 448)),
    # board axis: 12x12 like the original's committed code (36 types, 144 tiles); ~56-px cells
    "more_tiles": dict(board_size=12, num_colors=6, num_shapes=6, image_size=(728, 672)),
    # both axes
    "composition": dict(board_size=12, num_colors=16, num_shapes=6, image_size=(728, 672)),
}


@struct.dataclass
class State:
    board: jax.Array  # int32 [G, G] tile type per cell, 0 = empty (what matching compares)
    faces: jax.Array  # int32 [G, G] atlas index drawn per cell, 0 = empty (shapes: the type)
    pairs: jax.Array  # int32 [Q] actions a * G^2 + b (a < b) naming two cells dealt the same type; G^4 pads
    legal: jax.Array  # bool [Q] whether each of those pairs is a legal match now
    score: jax.Array  # int32 pairs removed this episode
    remaining: jax.Array  # int32 tiles left on the board
    steps: jax.Array  # int32 actions taken
    done: jax.Array  # bool: no legal pair left


@struct.dataclass
class Params:
    """Shisen-Sho has no dynamic knobs: everything that matters changes shapes (static)."""


# ---------------------------------------------------------------------------------------
# Connectivity on the padded grid
# ---------------------------------------------------------------------------------------


def _line_masks(board):
    """uint32 [G] tile bitmasks of the interior rows and of the interior columns of the
    (G+2)^2 grid padded with the empty ring (bit = padded position, so bit 0 and bit G+1,
    the ring, are never set). The shifted bits are distinct, so a sum is their OR."""
    filled = (board > 0).astype(jnp.uint32)
    shifts = jnp.arange(1, board.shape[0] + 1, dtype=jnp.uint32)
    rows = jnp.sum(filled << shifts, axis=1, dtype=jnp.uint32)
    cols = jnp.sum(filled << shifts[:, None], axis=0, dtype=jnp.uint32)
    return rows, cols


def _select(lines, index):
    """lines[index] (broadcasting) for uint32 lines [L], L <= 12, as a chain of selects: on
    XLA:CPU that vectorises, where a gather costs several ns per element. An index outside
    [0, L) gives 0 (an empty line)."""
    out = jnp.zeros(jnp.shape(index), jnp.uint32)
    for line in range(lines.shape[0]):
        out = jnp.where(index == line, lines[line], out)
    return out


def _segment(line, pos, p: int):
    """uint32 [...] (broadcasting): line = uint32 tile bitmask of a line over its p padded
    positions, pos = padded position of a cell on it. The positions a straight segment from
    that cell reaches: the cell itself and the open cells next to it up to the first tile
    either way (or the grid's edge)."""
    one = jnp.uint32(1)
    pos = jnp.asarray(pos).astype(jnp.uint32)
    before = line & ((one << pos) - one)
    after = line & ~((one << (pos + one)) - one)
    lo = 32 - jax.lax.clz(before).astype(jnp.int32)  # one past the last tile before (0: none)
    lowest_after = after & (~after + one)
    hi = jnp.where(after == 0, p, 31 - jax.lax.clz(lowest_after).astype(jnp.int32))  # first tile after
    return ((one << hi.astype(jnp.uint32)) - one) & ~((one << lo.astype(jnp.uint32)) - one)


def _clear_between(lines, i, k, p: int):
    """uint32 [...] (broadcasting i, k): bitmask of the positions across the lines (uint32
    [G] tile bitmasks of the interior lines) where no tile lies strictly between interior
    lines i and k: the OR of the lines in between, inverted (an unrolled chain, see _select)."""
    lo, hi = jnp.minimum(i, k), jnp.maximum(i, k)
    tiles = jnp.zeros(jnp.shape(lo), jnp.uint32)
    for line in range(1, lines.shape[0] - 1):  # the first and last lines are never strictly between
        tiles = tiles | jnp.where((lo < line) & (line < hi), lines[line], jnp.uint32(0))
    return ~tiles & jnp.uint32((1 << p) - 1)


def _joined(h1, v1, h2, v2, cols_clear, rows_clear):
    """The <= 2-turn test on bitmasks (broadcasting). Every such path is
    horizontal-vertical-horizontal or vertical-horizontal-vertical, some segments possibly
    empty: leave the first cell along its row to some column, cross to the second cell's row
    in that column, reach the second cell along that row. So some column is reached by both
    cells' row segments and clear between their rows (or the same with rows and columns
    swapped)."""
    return ((h1 & h2 & cols_clear) | (v1 & v2 & rows_clear)) != 0


def joined_pairs(board):
    """bool [G^2, G^2]: [a, b] = cells a and b (row-major) are joined by a <= 2-turn path
    through empty cells, whatever they hold: per-cell segments and per-line-pair clear
    masks, then G^4 bitwise ANDs of broadcast tables (for `_clearing_order`, which needs
    every pair; a step tests only the dealt pairs, `pair_legal`)."""
    g = board.shape[0]
    p = g + 2
    rows, cols = _line_masks(board)
    i = np.arange(g)
    h, v = _segment(rows[:, None], i[None, :] + 1, p), _segment(cols[None, :], i[:, None] + 1, p)
    cols_clear, rows_clear = _clear_between(rows, i[:, None], i[None, :], p), _clear_between(cols, i[:, None], i[None, :], p)
    a, b = (slice(None), slice(None), None, None), (None, None, slice(None), slice(None))
    joined = _joined(h[a], v[a], h[b], v[b], cols_clear[:, None, :, None], rows_clear[None, :, None, :])
    return joined.reshape(g * g, g * g)


def pair_legal(board, pairs):
    """bool [Q]: whether each candidate pair is a legal match on `board`. `pairs` (int [Q])
    are actions a * G^2 + b (a < b) naming two cells dealt the same type, G^4 for padding;
    tiles never move, so these are the only candidates and the result is the whole set of
    legal pairs.

    Per pair, all elementwise: the tile masks of the two rows and two columns (selects
    among G words), the four segments, and the lines clear between the rows and between the
    columns. O(Q * G) bit operations and no gathers, against G^4 for all cell pairs
    (Q = 216 at 12x12: ~30x less work than `joined_pairs`)."""
    g = board.shape[0]
    n, p = g * g, g + 2
    rows, cols = _line_masks(board)
    first, second = jnp.divmod(pairs, n)
    (r1, c1), (r2, c2) = jnp.divmod(first, g), jnp.divmod(second, g)
    row1, row2, col1, col2 = _select(rows, r1), _select(rows, r2), _select(cols, c1), _select(cols, c2)
    there = (row1 >> (c1 + 1).astype(jnp.uint32)) & (row2 >> (c2 + 1).astype(jnp.uint32)) & jnp.uint32(1)
    h1, h2 = _segment(row1, c1 + 1, p), _segment(row2, c2 + 1, p)
    v1, v2 = _segment(col1, r1 + 1, p), _segment(col2, r2 + 1, p)
    joined = _joined(h1, v1, h2, v2, _clear_between(rows, r1, r2, p), _clear_between(cols, c1, c2, p))
    return joined & (there != 0) & (pairs < n * n)


def full_board_pairs(pairs, board_size: int):
    """`pair_legal` on a board with no empty cell, from positions alone: paths can then only
    run along the outer ring, so two same-type tiles match iff they are adjacent or on the
    same side of the board (out, along the ring, back in: two turns). Cheap enough for
    `reset`, which auto-reset runs on every step."""
    g = board_size
    first, second = jnp.divmod(pairs, g * g)
    (ra, ca), (rb, cb) = jnp.divmod(first, g), jnp.divmod(second, g)
    adjacent = jnp.abs(ra - rb) + jnp.abs(ca - cb) == 1
    same_side = ((ra == rb) & ((ra == 0) | (ra == g - 1))) | ((ca == cb) & ((ca == 0) | (ca == g - 1)))
    return (adjacent | same_side) & (pairs < g**4)


def hashed_words(key, n: int):
    """uint32 [n] pseudo-random words from one 64-bit jax.random draw, expanded by murmur3's
    32-bit finaliser over a counter. On XLA:CPU threefry is a rolled 5-round loop costing
    ~14 ns per word at batch 128; reset draws ~50 words on every auto-reset step. The
    finaliser is a bijection, so the n words are distinct (no ties in `random_permutation`)."""
    seed = jax.random.bits(key, (2,), jnp.uint32)
    h = seed[0] + jnp.arange(n, dtype=jnp.uint32) * jnp.uint32(0x9E3779B9)
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    return (h ^ (h >> 16)) ^ seed[1]


def random_permutation(words):
    """int32 [n]: a random permutation of range(n) from n random uint32 words, via n distinct
    keys (24 random bits above the index; ties in the random bits, probability < n^2 / 2^25,
    are broken by index): for small n their ranks (n^2 compares), for larger n their sorting
    order. On XLA:CPU the compares are ~5x faster than a sort at n = 36 and ~4x slower at
    n = 144 (jax.random.permutation sorts three times)."""
    n = words.shape[0]
    keys = (words << 8) | jnp.arange(n, dtype=jnp.uint32)
    if n <= 64:
        return jnp.sum(keys[None, :] < keys[:, None], axis=1, dtype=jnp.int32)
    return jnp.argsort(keys).astype(jnp.int32)


def random_subset(words, population: int):
    """int32 [*batch, draws] from uint32 words [draws, *batch]: `draws` distinct values from
    range(population), a uniformly random subset (Floyd's algorithm: one word and a few
    compares per draw; the order is not uniform, so use it where order does not matter)."""
    draws = words.shape[0]
    picks = jnp.zeros((*words.shape[1:], draws), jnp.int32)
    for j, top in enumerate(range(population - draws, population)):
        t = ((words[j] >> 8).astype(jnp.float32) * (top + 1) / 2.0**24).astype(jnp.int32)  # uniform in [0, top]
        taken = (picks[..., :j] == t[..., None]).any(-1)
        picks = picks.at[..., j].set(jnp.where(taken, top, t))
    return picks


# ---------------------------------------------------------------------------------------
# The engine shared by the shape and photo games
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class ShisenShoEngine(Env):
    """Rules, generation, rendering and text shared by Shisen-Sho games. Subclasses say what
    a tile is: `num_types`, `_faces` (what each dealt tile shows), `_face_atlas` (the
    drawings), `type_names` (for the perception text), `prompt` and `from_board`."""

    name = "shisensho-engine"
    board_size: int = 6
    image_size: tuple = (504, 448)
    coordinate_labels: bool = False
    solvable: bool = False

    def __post_init__(self):
        check_range(self.name, "board_size", self.board_size, 4, 12)
        if self.board_size % 2:
            raise ConfigError(f"{self.name}: board_size={self.board_size} must be even (tiles come in groups of 4)")
        object.__setattr__(self, "image_size", check_image_size(self.name, self.image_size))
        check_bool(self.name, "coordinate_labels", self.coordinate_labels)
        check_bool(self.name, "solvable", self.solvable)
        if self._layout["cell"] < MIN_CELL_PX:
            raise ConfigError(
                f"{self.name}: image_size {self.image_size} leaves {self._layout['cell']}-px cells for a "
                f"{self.board_size}x{self.board_size} board; cells need >= {MIN_CELL_PX} px to be legible"
            )
        self._score_text  # the score line must fit: fail at construction, not at the first frame

    # --- static facts ------------------------------------------------------------------
    @property
    def num_cells(self) -> int:
        return self.board_size * self.board_size

    @property
    def num_actions(self) -> int:
        return self.num_cells**2 + 1

    @property
    def invalid_action(self) -> int:
        return self.num_cells**2

    @property
    def default_params(self) -> Params:
        return Params()

    @property
    def num_types(self) -> int:
        raise NotImplementedError

    @property
    def max_copies(self) -> int:
        """Most tiles of one type a dealt board holds: 4, or more when the board has more
        slots (G^2/4) than there are types and types repeat."""
        slots = self.num_cells // 4
        return 4 * -(-slots // self.num_types)

    @property
    def num_pairs(self) -> int:
        """Length Q of `State.pairs`: the most same-type cell pairs a board of this config can
        hold (types on at most `max_copies` cells each, so whole groups of `max_copies`)."""
        n, m = self.num_cells, self.max_copies
        return (n // m) * m * (m - 1) // 2 + (n % m) * (n % m - 1) // 2

    def _state(self, board, faces, pairs, score=0, steps=0):
        board = jnp.asarray(board, jnp.int32)
        pairs = jnp.asarray(pairs, jnp.int32)
        legal = pair_legal(board, pairs)
        return State(
            board=board,
            faces=jnp.asarray(faces, jnp.int32),
            pairs=pairs,
            legal=legal,
            score=jnp.asarray(score, jnp.int32),
            remaining=jnp.sum(board > 0, dtype=jnp.int32),
            steps=jnp.asarray(steps, jnp.int32),
            done=~legal.any(),
        )

    @property
    def _type_words(self) -> int:
        """Random words `_slot_types` needs: one per drawn type (Floyd) or per type (a shuffle)."""
        return min(self.num_cells // 4, self.num_types)

    @property
    def _face_words(self) -> int:
        """Random words `_faces` needs per deal."""
        return 0

    def reset(self, key, params=None):
        n, t = self.num_cells, self._type_words
        words = hashed_words(key, n + t + self._face_words)
        tile_types = jnp.repeat(self._slot_types(words[n : n + t]), 4)  # tile i belongs to slot i // 4
        tile_faces = self._faces(words[n + t :], tile_types)
        if self.solvable:
            # pair p = tiles (2p, 2p + 1), which share a slot; the k-th pair removed is pair_order[k]
            pair_order = random_permutation(words[: n // 2])
            tiles = (2 * pair_order[:, None] + jnp.arange(2)).reshape(-1)
            cells = self._clearing_order(jax.random.fold_in(key, 1)).reshape(-1)
            cell_of_tile = jnp.zeros(n, jnp.int32).at[tiles].set(cells)
        else:
            cell_of_tile = random_permutation(words[:n])
        tile_of_cell = jnp.zeros(n, jnp.int32).at[cell_of_tile].set(jnp.arange(n, dtype=jnp.int32))
        g = self.board_size
        cells = jnp.append(cell_of_tile, n)[self._tile_pairs]  # [Q, 2]; the non-tile n maps to the non-cell n
        first, second = jnp.min(cells, axis=1), jnp.max(cells, axis=1)
        pairs = jnp.where(second < n, first * n + second, n * n)
        legal = full_board_pairs(pairs, g)
        return State(
            board=tile_types[tile_of_cell].reshape(g, g),
            faces=tile_faces[tile_of_cell].reshape(g, g),
            pairs=pairs,
            legal=legal,
            score=jnp.int32(0),
            remaining=jnp.int32(n),
            steps=jnp.int32(0),
            done=~legal.any(),
        )

    def step(self, key, state, action, params=None):
        del key  # the rules are deterministic
        n = self.num_cells
        action = jnp.asarray(action, jnp.int32)
        in_range = (action >= 0) & (action < n * n)
        a, b = jnp.divmod(jnp.where(in_range, action, 0), n)
        # every legal match is a listed pair (either order), and `state.legal` says which are
        legal = in_range & (state.legal & (state.pairs == jnp.minimum(a, b) * n + jnp.maximum(a, b))).any()
        remove = (legal & ((jnp.arange(n) == a) | (jnp.arange(n) == b))).reshape(state.board.shape)
        board = jnp.where(remove, 0, state.board)
        now_legal = jnp.where(legal, pair_legal(board, state.pairs), state.legal)
        new_state = state.replace(
            board=board,
            faces=jnp.where(remove, 0, state.faces),
            legal=now_legal,
            score=state.score + legal,
            remaining=state.remaining - 2 * legal,
            steps=state.steps + 1,
            done=~now_legal.any(),
        )
        reward = jnp.where(legal, 1.0, -1.0).astype(jnp.float32)
        return new_state, reward, new_state.done, {"raw_reward": reward, "legal": legal}

    def valid_actions(self, state, params=None):
        n = self.num_cells
        a, b = jnp.divmod(state.pairs, n)
        ids = jnp.concatenate([state.pairs, b * n + a])  # both orders
        legal = jnp.concatenate([state.legal, state.legal])
        return jnp.zeros(self.num_actions, bool).at[jnp.where(legal, ids, self.num_actions)].set(True, mode="drop")

    def random_valid_action(self, key, state, params=None):
        """Uniform over `valid_actions` without building the G^4 mask: the k-th legal pair
        for a uniform k, in a random order (each pair is two valid actions);
        `invalid_action` when nothing is valid."""
        count = state.legal.sum()
        u = jax.random.uniform(key, (2,))
        k = jnp.floor(u[0] * count).astype(jnp.int32)
        # a log-depth scan: XLA:CPU lowers cumsum to an O(n^2) reduce-window
        running = jax.lax.associative_scan(jnp.add, state.legal.astype(jnp.int32))
        a, b = jnp.divmod(state.pairs[jnp.argmax(state.legal & (running == k + 1))], self.num_cells)
        action = jnp.where(u[1] < 0.5, a * self.num_cells + b, b * self.num_cells + a)
        return jnp.where(count > 0, action, self.invalid_action).astype(jnp.int32)

    # --- generation ----------------------------------------------------------------------
    def _slot_types(self, words):
        """int32 [G^2/4] from `_type_words` random words: the type (1-based) of each group of 4
        tiles. Like the original, G^2/4 distinct random types (slot order is irrelevant: tiles
        are shuffled onto cells). With fewer types than slots the types repeat in a shuffled
        cycle (the original repeats random drawn types instead; the cycle keeps every type at
        most `max_copies` times, which bounds the pair table)."""
        slots, types = self.num_cells // 4, self.num_types
        if types >= slots:
            return random_subset(words, types) + 1
        return random_permutation(words)[jnp.arange(slots) % types] + 1

    def _faces(self, words, tile_types):
        """int32 [G^2]: the atlas face of each tile, given its type (tile i is in slot i // 4)
        and `_face_words` random words."""
        raise NotImplementedError

    def _pair_table(self, groups, padding: int) -> np.ndarray:
        """int32 [Q, 2]: every pair of members of each group (lists of indices), padded."""
        table = np.full((self.num_pairs, 2), padding, np.int32)
        listed = [pair for members in groups for pair in itertools.combinations(members, 2)]
        if listed:
            table[: len(listed)] = listed
        return table

    @functools.cached_property
    def _tile_pairs(self) -> np.ndarray:
        """int32 [Q, 2]: the pairs of tiles of the same type on every deal (slots s and s'
        with s = s' mod num_types share a type; tile i is in slot i // 4), padded with the
        non-tile G^2."""
        group = (np.arange(self.num_cells) // 4) % self.num_types
        return self._pair_table([np.flatnonzero(group == t) for t in np.unique(group)], self.num_cells)

    def _board_pairs(self, board: np.ndarray) -> np.ndarray:
        """Host: `State.pairs` of an arbitrary board (for `from_board`)."""
        flat = board.reshape(-1)
        n = flat.size
        groups = []
        for t in np.unique(flat[flat > 0]):
            cells = np.flatnonzero(flat == t)
            if len(cells) > self.max_copies:
                raise ValueError(
                    f"{self.name}: type {int(t)} appears {len(cells)} times; this configuration deals "
                    f"at most {self.max_copies} tiles of a type (board_size {self.board_size}, {self.num_types} types)"
                )
            groups.append(cells)
        cells = self._pair_table(groups, n)
        return np.where(cells[:, 1] < n, cells[:, 0] * n + cells[:, 1], n * n).astype(np.int32)

    def _clearing_order(self, key):
        """int32 [G^2/2, 2]: cells for the pairs in an order that clears the board.

        Plays positions forwards on a full board: pair k is two still-filled cells joined by
        a <= 2-turn path once pairs 0..k-1 are gone (a random cell that has such a partner,
        then a random partner). Any types dealt in pairs onto these cells make a board that
        removing pairs 0, 1, ... clears. Playing forwards works because removing tiles only
        opens paths: it never got stuck in 720 trial boards (4x4 to 12x12), whereas
        placing pairs backwards onto an empty board got stuck on 95% of 6x6 boards. Should it
        ever get stuck, the board falls back to side-by-side pairs (always solvable)."""
        g, n = self.board_size, self.num_cells

        def remove(carry, key):
            filled, ok = carry
            flat = filled.reshape(-1)
            options = joined_pairs(filled.astype(jnp.int32)) & flat[:, None] & flat[None, :] & ~jnp.eye(n, dtype=bool)
            has_partner = options.any(1)
            k_first, k_second = jax.random.split(key)
            first = jax.random.categorical(k_first, jnp.where(has_partner, 0.0, -jnp.inf))
            second = jax.random.categorical(k_second, jnp.where(options[first], 0.0, -jnp.inf))
            taken = (jnp.arange(n) == first) | (jnp.arange(n) == second)
            return (filled & ~taken.reshape(g, g), ok & has_partner.any()), jnp.stack([first, second])

        start = (jnp.ones((g, g), bool), jnp.bool_(True))
        (_, ok), cells = jax.lax.scan(remove, start, jax.random.split(key, n // 2))
        dominoes = jnp.arange(n, dtype=jnp.int32).reshape(-1, 2)  # (r, 2j), (r, 2j+1)
        return jnp.where(ok, cells.astype(jnp.int32), dominoes)

    # --- rendering -----------------------------------------------------------------------
    @functools.cached_property
    def _layout(self):
        """Pixel layout: the original canvas (80-px cells, 40-px strip; with coordinate labels,
        a 40-px band above and left of the board) uniformly scaled into image_size, centred.
        Cells are whole pixels so the board is a gather of equal tiles."""
        h, w = self.image_size
        g = self.board_size
        band = STRIP if self.coordinate_labels else 0.0
        s = min(w / (band + CELL * g), h / (band + CELL * g + STRIP))
        cell = int(CELL * s)
        band_px, strip_px = int(round(band * s)), int(round(STRIP * s))
        x0 = (w - band_px - g * cell) // 2 + band_px
        y0 = (h - band_px - g * cell - strip_px) // 2 + band_px
        return dict(scale=cell / CELL, cell=cell, board_x=x0, board_y=y0, band=band_px, strip_y=y0 + g * cell, strip_h=strip_px)

    def _empty_tile(self):
        """float [cell, cell, 3]: a white cell with the original's 1-px grey border."""
        c, s = self._layout["cell"], self._layout["scale"]
        ys, xs = raster.pixel_centres(c, c)
        border = raster.inner_outline(raster.sdf_box(ys, xs, 0, 0, c, c), max(1.0, BORDER * s))
        return raster.fill(raster.canvas(c, c, WHITE), border, GRID_GREY)

    def _face_atlas(self) -> jax.Array:
        """uint8 [num_faces, cell, cell, 3]; face 0 is the empty cell."""
        raise NotImplementedError

    @functools.cached_property
    def _atlas(self) -> np.ndarray:
        return raster.bake(self._face_atlas)

    @functools.cached_property
    def _score_text(self):
        """The strip "Score: <s>   Remaining: <r>" (the original's text, 36-px font on 80-px
        cells): the two labels are static (baked into the background), the numbers are rows
        of fixed-width digit tiles, so "Remaining" sits after room for the widest score."""
        L = self._layout
        px = max(8, int(round(26 * L["scale"])))
        labels = [raster.text_alpha(text, px, crop=False) for text in ("Score: ", "   Remaining: ")]
        digits = raster.digit_tiles(px, BLACK, WHITE)
        score_digits, remaining_digits = len(str(self.num_cells // 2)), len(str(self.num_cells))
        x = L["board_x"] + int(round(PAD * L["scale"]))
        y = L["strip_y"] + (L["strip_h"] - labels[0].shape[0]) // 2
        score_x = x + labels[0].shape[1]
        label_x = score_x + score_digits * digits.width
        remaining_x = label_x + labels[1].shape[1]
        if remaining_x + remaining_digits * digits.width > self.image_size[1]:
            raise ConfigError(f"{self.name}: image_size {self.image_size} is too narrow for the score line")
        return dict(
            labels=labels, label_x=(x, label_x), y=y, digits=digits,
            score=(score_x, score_digits), remaining=(remaining_x, remaining_digits),
        )

    @functools.cached_property
    def _background(self) -> np.ndarray:
        """The static part of the frame: white canvas, score labels, optional coordinates."""
        return raster.bake(self._draw_background)

    def _draw_background(self):
        h, w = self.image_size
        L = self._layout
        img = raster.canvas(h, w, WHITE)
        text = self._score_text
        for label, x in zip(text["labels"], text["label_x"]):
            img = raster.stamp(img, label, x, text["y"], BLACK, align="left")
        if self.coordinate_labels:
            px = max(8, int(round(24 * L["scale"])))
            for i in range(self.board_size):
                centre, label = (i + 0.5) * L["cell"], raster.text_alpha(str(i), px)
                img = raster.stamp(img, label, L["board_x"] + centre, L["board_y"] - L["band"] / 2, BLACK)
                img = raster.stamp(img, label, L["board_x"] - L["band"] / 2, L["board_y"] + centre, BLACK)
        return raster.to_uint8(img)

    def render(self, state, params=None):
        L = self._layout
        faces = jnp.clip(state.faces, 0, self._atlas.shape[0] - 1)
        img = raster.paste_cells(jnp.asarray(self._background), jnp.asarray(self._atlas), faces, L["board_y"], L["board_x"])
        text = self._score_text
        for value, (x, num_digits) in ((state.score, text["score"]), (state.remaining, text["remaining"])):
            img = raster.paste(img, text["digits"].row(value, num_digits), text["y"], x)
        return img

    # --- text ----------------------------------------------------------------------------
    @property
    def type_names(self) -> tuple[str, ...]:
        """Perception-text name of every tile type; index 0 (empty) is unused."""
        raise NotImplementedError

    def describe(self, state) -> str:
        board = np.asarray(state.board)
        g = self.board_size
        if board.shape != (g, g):
            raise ValueError(f"{self.name}: describe expects one {g}x{g} board, got shape {board.shape}")
        names = self.type_names
        return "\n".join("|".join(f" {names[t]} " if t else " - " for t in row) for row in board)

    def parse(self, text: str) -> int:
        """G1's coordinate answer; malformed, out-of-range (no aliasing) or missing -> invalid."""
        return parse_pair_action(text, self.board_size, self.invalid_action)

    def board_from_text(self, text: str) -> np.ndarray:
        """Inverse of `describe`: int [G, G] tile types from the perception text."""
        g, lookup = self.board_size, {name: t for t, name in enumerate(self.type_names) if t}
        rows = text.split("\n")
        cells = [row.split("|") for row in rows]
        if len(rows) != g or any(len(r) != g for r in cells):
            raise ValueError(f"{self.name}: board text must have {g} rows of {g} '|'-separated cells")
        board = np.zeros((g, g), np.int32)
        for i, row in enumerate(cells):
            for j, cell in enumerate(row):
                name = cell.strip()
                if name != "-" and name not in lookup:
                    raise ValueError(f"{self.name}: unknown tile {name!r} at ({i}, {j}); known: {sorted(lookup)}")
                board[i, j] = lookup.get(name, 0)
        return board

    def _check_board(self, board) -> np.ndarray:
        if isinstance(board, str):
            board = self.board_from_text(board)
        arr = np.asarray(board)
        g, num_types = self.board_size, len(self.type_names) - 1
        if arr.shape != (g, g) or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{self.name}: board must be integer tile types of shape ({g}, {g}), got {arr.dtype} {arr.shape}")
        if (arr < 0).any() or (arr > num_types).any():
            raise ValueError(f"{self.name}: tile types must lie in [0, {num_types}] (0 = empty), got {arr.tolist()}")
        return arr.astype(np.int32)


# ---------------------------------------------------------------------------------------
# The shape-tile game
# ---------------------------------------------------------------------------------------


@register("shisensho")
@dataclasses.dataclass(frozen=True, repr=False)
class ShisenSho(ShisenShoEngine):
    """G1's Shisen-Sho with (colour, shape) tiles. Static config: `preset` (a key of PRESETS,
    default "base"), then any of board_size (even, 4..12), num_colors (1..16, the first n of
    raster.TILE_COLORS), num_shapes (1..6, the first n of raster.SHAPES), image_size (H, W)
    multiples of 28; options left as None come from the preset. coordinate_labels draws row
    and column indices (off like the original); solvable=True deals only boards that can be cleared."""

    name = "shisensho"
    preset: str = "base"
    board_size: int | None = None
    num_colors: int | None = None
    num_shapes: int | None = None
    image_size: tuple | None = None

    def __post_init__(self):
        check_choice(self.name, "preset", self.preset, PRESETS)
        for option, value in PRESETS[self.preset].items():
            if getattr(self, option) is None:
                object.__setattr__(self, option, value)
        check_range(self.name, "num_colors", self.num_colors, 1, len(raster.TILE_COLORS))
        check_range(self.name, "num_shapes", self.num_shapes, 1, len(raster.SHAPES))
        super().__post_init__()

    @property
    def colors(self) -> tuple[str, ...]:
        return tuple(name for name, _ in raster.TILE_COLORS[: self.num_colors])

    @property
    def shapes(self) -> tuple[str, ...]:
        return raster.SHAPES[: self.num_shapes]

    @property
    def num_types(self) -> int:
        return self.num_colors * self.num_shapes

    @functools.cached_property
    def type_names(self) -> tuple[str, ...]:
        # type t >= 1 is (colour (t-1) // num_shapes, shape (t-1) % num_shapes), the original's
        # colour-major product order
        return ("-",) + tuple(f"{c} {s}" for c in self.colors for s in self.shapes)

    @property
    def prompt(self) -> str:
        return (
            "You are playing a 'Shisen-sho' puzzle game.\nThe goal is to match pairs of identical tiles by connecting "
            "them with a path that has at most 2 turns and doesn't cross any other tiles.\nThe tiles are distinguished "
            f"by their color and shape:\n- {', '.join(self.colors)}, etc.\n- Shapes include: {', '.join(self.shapes)}, "
            f"etc.\n{ANSWER_INSTRUCTIONS}"
        )

    def _faces(self, words, tile_types):
        return tile_types  # one drawing per type

    def _face_atlas(self):
        return jnp.stack([raster.to_uint8(self._draw_tile(t)) for t in range(self.num_types + 1)])

    def _draw_tile(self, t: int):
        img = self._empty_tile()
        if t == 0:
            return img
        L = self._layout
        c, s = L["cell"], L["scale"]
        _, rgb = raster.TILE_COLORS[(t - 1) // self.num_shapes]
        shape = self.shapes[(t - 1) % self.num_shapes]
        ys, xs = raster.pixel_centres(c, c)
        sdf = raster.shape_sdf(shape, ys, xs, PAD * s, PAD * s, c - 2 * PAD * s)
        img = raster.fill(img, raster.coverage(sdf), rgb)
        if shape in raster.OUTLINED_SHAPES:
            img = raster.fill(img, raster.inner_outline(sdf, OUTLINE * s), BLACK)
        return img

    def from_board(self, board, score: int = 0, steps: int = 0):
        """State from int [G, G] tile types (0 empty, t = colour * num_shapes + shape + 1) or
        from the perception text (`describe`'s format)."""
        arr = self._check_board(board)
        return self._state(arr, arr, self._board_pairs(arr), score, steps)
