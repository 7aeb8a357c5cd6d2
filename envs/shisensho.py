"""Shisen-Sho, faithful to G1's game (docs/envs.md, "Shisen-Sho"), as pure JAX functions.

Board: int32 tile types [G, G] (0 = empty). A type is a (colour, shape) pair; every type on a
fresh board appears a multiple of 4 times. An action names two cells, (r1, c1) (r2, c2),
encoded as base-G digits (`envs.grammar.encode_pair`); id G**4 is the invalid action. A pair
matches when both cells hold the same type, are distinct, and a path of at most three straight
segments (two turns) joins them through empty cells, where the path may leave the board by
one cell (a ring of empty cells around it). A match removes both tiles: reward +1, score +1.
Anything else: reward -1, nothing changes. The episode ends when no legal pair is left
(including the cleared board). Training reward = raw reward (G1 trains on the raw +-1).

Connectivity (which pairs a <= 2-turn path joins) is `envs.shisensho_paths`. Tiles never
move, so the pairs of cells dealt the same type are fixed when the board is dealt and kept
in the state (`pairs`, as actions; 216 on a dealt 12x12 board), with which of them are legal
now (`legal`). A step looks its action up there and, after a match, recomputes `legal`
(`pair_legal`: elementwise bit operations per listed pair, no gathers): that is the "any
legal pair left" test, and `valid_actions` / `random_valid_action` read it too, never
building G^4 pair tests.

Boards: like the original, shuffle the colour x shape product, take the first G^2/4 types,
place each 4 times, shuffle (one random draw per deal). With `solvable=True`, the deal follows a
clearing order played on positions first (`_clearing_order`), so the board can be cleared;
that deal costs G^2/2 all-pairs connectivity passes instead of one shuffle.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import itertools

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
    kth_true,
    random_permutation,
    register,
)
from envs.grammar import board_text, pair_answer_text, parse_pair_action
from envs.shisensho_paths import full_board_pairs, joined_pairs, pair_legal

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


def board_layout(image_size: tuple[int, int], board_size: int, labels: bool) -> raster.BoardLayout:
    """The original canvas (80-px cells, a 40-px strip; with coordinate labels, a 40-px band
    above and left of the board) scaled into the image, centred. Cells are whole pixels, so
    the board is a paste of equal tiles."""
    h, w = image_size
    band = STRIP if labels else 0.0
    s = min(w / (band + CELL * board_size), h / (band + CELL * board_size + STRIP))
    cell = int(CELL * s)
    return raster.BoardLayout.centred(
        image_size, board_size, cell, cell / CELL, int(round(band * s)), int(round(STRIP * s))
    )


@dataclasses.dataclass(frozen=True)
class ScoreLine:
    """The strip "Score: <s>   Remaining: <r>": the two labels (alpha masks, baked into the
    background at x = label_x, row y) and each number's (x, digit count) of `digits` tiles."""

    labels: tuple[np.ndarray, np.ndarray]
    label_x: tuple[int, int]
    y: int
    digits: raster.DigitTiles
    score: tuple[int, int]
    remaining: tuple[int, int]


def hashed_words(key, n: int):
    """uint32 [n] pseudo-random words from one 64-bit jax.random draw, expanded by murmur3's
    32-bit finaliser over a counter: on XLA:CPU threefry is a rolled loop, costly per word,
    and reset draws ~50 words on every auto-reset step (BENCHMARKS.md). The finaliser is a
    bijection, so the n words are distinct."""
    seed = jax.random.bits(key, (2,), jnp.uint32)
    h = seed[0] + jnp.arange(n, dtype=jnp.uint32) * jnp.uint32(0x9E3779B9)
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    return (h ^ (h >> 16)) ^ seed[1]


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
        g, labels = self.board_size, self.coordinate_labels
        check_cell_size(
            self.name, self.image_size, g, lambda size: board_layout(size, g, labels).cell, MIN_CELL_PX, "cells", (9, 8)
        )
        _ = self._score_line  # the score line must fit: fail at construction, not at the first frame

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
    @abc.abstractmethod
    def num_types(self) -> int:
        """Tile types a matching compares (shape x colour products, photo classes)."""

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
        action = self.checked_action(state, action)
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
        self.check_state(state, "valid_actions")
        n = self.num_cells
        a, b = jnp.divmod(state.pairs, n)
        ids = jnp.concatenate([state.pairs, b * n + a])  # both orders
        legal = jnp.concatenate([state.legal, state.legal])
        return jnp.zeros(self.num_actions, bool).at[jnp.where(legal, ids, self.num_actions)].set(True, mode="drop")

    def random_valid_action(self, key, state, params=None):
        """Uniform over `valid_actions` without building the G^4 mask: the k-th legal pair
        for a uniform k, in a random order (each pair is two valid actions);
        `invalid_action` when nothing is valid."""
        self.check_state(state, "random_valid_action")
        u = jax.random.uniform(key, (2,))
        pick, any_valid = kth_true(state.legal, u[0])
        a, b = jnp.divmod(state.pairs[pick], self.num_cells)
        action = jnp.where(u[1] < 0.5, a * self.num_cells + b, b * self.num_cells + a)
        return jnp.where(any_valid, action, self.invalid_action).astype(jnp.int32)

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

    @abc.abstractmethod
    def _faces(self, words, tile_types):
        """int32 [G^2]: the atlas face of each tile, given its type (tile i is in slot i // 4)
        and `_face_words` random words."""

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
    def layout(self) -> raster.BoardLayout:
        return board_layout(self.image_size, self.board_size, self.coordinate_labels)

    def _empty_tile(self):
        """float [cell, cell, 3]: a white cell with the original's 1-px grey border."""
        c, s = self.layout.cell, self.layout.scale
        ys, xs = raster.pixel_centres(c, c)
        border = raster.inner_outline(raster.sdf_box(ys, xs, 0, 0, c, c), max(1.0, BORDER * s))
        return raster.fill(raster.canvas(c, c, WHITE), border, GRID_GREY)

    @abc.abstractmethod
    def _face_atlas(self) -> jax.Array:
        """uint8 [num_faces, cell, cell, 3]; face 0 is the empty cell."""

    @functools.cached_property
    def _atlas(self) -> np.ndarray:
        return raster.bake(self._face_atlas)

    @functools.cached_property
    def _score_line(self) -> ScoreLine:
        """The original's text (36-px font on 80-px cells): the two labels are static (baked
        into the background), the numbers are rows of fixed-width digit tiles, so "Remaining"
        sits after room for the widest score."""
        L = self.layout
        px = max(8, int(round(26 * L.scale)))
        labels = [raster.text_alpha(text, px, crop=False) for text in ("Score: ", "   Remaining: ")]
        digits = raster.digit_tiles(px, BLACK, WHITE)
        score_digits, remaining_digits = len(str(self.num_cells // 2)), len(str(self.num_cells))
        x = L.board_x + int(round(PAD * L.scale))
        y = L.strip_y + (L.strip_h - labels[0].shape[0]) // 2
        score_x = x + labels[0].shape[1]
        label_x = score_x + score_digits * digits.width
        remaining_x = label_x + labels[1].shape[1]
        if remaining_x + remaining_digits * digits.width > self.image_size[1]:
            raise ConfigError(f"{self.name}: image_size {self.image_size} is too narrow for the score line")
        return ScoreLine(
            labels=tuple(labels),
            label_x=(x, label_x),
            y=y,
            digits=digits,
            score=(score_x, score_digits),
            remaining=(remaining_x, remaining_digits),
        )

    @functools.cached_property
    def _background(self) -> np.ndarray:
        """The static part of the frame: white canvas, score labels, optional coordinates."""
        return raster.bake(self._draw_background)

    def _draw_background(self):
        h, w = self.image_size
        L = self.layout
        img = raster.canvas(h, w, WHITE)
        line = self._score_line
        for label, x in zip(line.labels, line.label_x):
            img = raster.stamp(img, label, x, line.y, BLACK, align="left")
        if self.coordinate_labels:
            px = max(8, int(round(24 * L.scale)))
            first_x, first_y = L.board_x + L.cell / 2, L.board_y + L.cell / 2
            img = raster.coordinate_labels(
                img,
                self.board_size,
                first_x,
                first_y,
                L.cell,
                L.board_y - L.band / 2,
                L.board_x - L.band / 2,
                px,
                BLACK,
            )
        return raster.to_uint8(img)

    def render(self, state, params=None):
        self.check_state(state, "render")
        L = self.layout
        faces = jnp.clip(state.faces, 0, self._atlas.shape[0] - 1)
        img = raster.paste_cells(jnp.asarray(self._background), jnp.asarray(self._atlas), faces, L.board_y, L.board_x)
        line = self._score_line
        for value, (x, num_digits) in ((state.score, line.score), (state.remaining, line.remaining)):
            img = raster.paste(img, line.digits.row(value, num_digits), line.y, x)
        return img

    # --- text ----------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def type_names(self) -> tuple[str, ...]:
        """Perception-text name of every tile type; index 0 (empty) is unused."""

    def describe(self, state) -> str:
        """G1's perception text: rows joined by newlines, cells " <name> " or " - " joined by "|"."""
        names = self.type_names
        return board_text(self.name, state.board, self.board_size, lambda t: f" {names[t]} " if t else " - ", "|")

    def parse(self, text: str) -> int:
        """G1's coordinate answer; malformed, out-of-range (no aliasing) or missing -> invalid."""
        return parse_pair_action(text, self.board_size, self.invalid_action)

    def answer_text(self, action: int) -> str:
        return pair_answer_text(self.answerable_action(action), self.board_size)

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
            raise ValueError(
                f"{self.name}: board must be integer tile types of shape ({g}, {g}), got {arr.dtype} {arr.shape}"
            )
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
    presets = tuple(PRESETS)
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
        c, s = self.layout.cell, self.layout.scale
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
