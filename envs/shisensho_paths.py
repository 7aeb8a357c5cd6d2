"""Shisen-Sho's connectivity engine: which cell pairs a path with at most two turns joins.

A path may run through empty cells and through a ring of empty cells around the board (it
may leave the board by one cell), and has at most three straight segments (docs/envs.md,
"Shisen-Sho"). Everything here is branch-free and of fixed work. On the (G+2)^2 grid padded
with the empty ring, every path with <= 2 turns is horizontal-vertical-horizontal or
vertical-horizontal-vertical (segments may be empty). So, as uint32 bitmasks over the <= 14
padded positions (bit arithmetic on one tile mask per row and column): for a cell, the
columns its row segment reaches (h) and the rows its column segment reaches (v); for two rows
(columns), the columns (rows) with no tile strictly between them. Two cells connect iff
(h_a & h_b & cols_clear(r_a, r_b)) | (v_a & v_b & rows_clear(c_a, c_b)) is non-zero.

`pair_legal` tests a list of candidate pairs (what a step needs), `joined_pairs` every pair
of cells (what a solvable deal needs), `full_board_pairs` the pairs of a full board from
their positions alone (what reset needs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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
    XLA:CPU that vectorises, where a gather is several times slower per element. An index outside
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
    cols_clear, rows_clear = (
        _clear_between(rows, i[:, None], i[None, :], p),
        _clear_between(cols, i[:, None], i[None, :], p),
    )
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
    (Q = 216 at 12x12, against 20736 cell pairs for `joined_pairs`)."""
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
