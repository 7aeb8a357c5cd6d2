"""2048, faithful to G1's game (docs/envs.md, "2048"), as pure JAX functions.

Board: int32 exponents [n, n] (0 empty, k -> tile 2^k). Actions: 0 up, 1 right, 2 down,
3 left, 4 "still" (the action an unparsable answer maps to). A move compacts toward its
direction, merges equal neighbours once from the leading edge, compacts again; if the board
changed, a 2 (p 0.9) or 4 (p 0.1) spawns on a uniformly chosen empty cell. Raw reward: the
merge score (sum of merged tile values), -1 for "still". Training reward: +1 if the move
merged something, else -1. The game is over when no move changes the board.

Speed: every direction is turned into "slide rows left" by a fixed cell permutation, and a
row slide is one gather from a lookup table of all rows (n <= 4; 18^4 rows) or an unrolled
branch-free pass (larger boards). Spawning uses one uniform draw per decision. Timings:
BENCHMARKS.md.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs import raster
from envs.core import Env, check_bool, check_cell_size, check_choice, check_image_size, check_range, kth_true, register
from envs.grammar import board_text, first_answer_integer

UP, RIGHT, DOWN, LEFT, STILL = 0, 1, 2, 3, 4
ACTION_LABELS = ("Up", "Right", "Down", "Left", "Still")  # by action id, as the prompt names them

PROMPT = (
    "You are now playing the 2048 game. 2048 is a sliding tile puzzle game where you combine numbered tiles "
    "to create a tile with the value 2048.\n\nRule:\nOnly Tiles with the SAME number merge when they collide. "
    "After each move, a new tile (2 or 4) appears randomly on the board. The game ends when there are no more "
    "valid moves.\n\nAvailable actions:\n- (0): Up (slide all tiles upward)\n- (1): Right (slide all tiles to "
    "the right)\n- (2): Down (slide all tiles downward)\n- (3): Left (slide all tiles to the left)\nWhat action "
    "should you take to achieve the highest score and reach the 2048 tile?\n\nFirst describe the board in "
    "<perception></perception>.Then output your thinking process in <think></think> and final action number "
    "in <answer></answer>."
)
# The same task in a few words, for models trained from scratch (the CPU recipes): such a model cannot read
# the instructions, and G1's ~370 constant prompt tokens only cost compute and dilute the few image tokens
# in the decoder's attention (BENCHMARKS.md, "Why the tiny model does not see").
SHORT_PROMPT = "2048. Actions: (0) Up (1) Right (2) Down (3) Left. Write <perception>, <think>, <answer>."
INSTRUCTIONS = {"g1": PROMPT, "short": SHORT_PROMPT}

# Original look (pygame, 400 x 460 canvas): colours by tile value.
BACKGROUND = (250, 248, 238)
BOARD_COLOR = (186, 172, 160)
EMPTY_COLOR = (204, 193, 178)
TILE_COLORS = {
    2: (238, 228, 218),
    4: (237, 224, 200),
    8: (242, 177, 121),
    16: (245, 149, 99),
    32: (246, 124, 95),
    64: (246, 94, 59),
    128: (237, 207, 114),
    256: (237, 204, 97),
    512: (237, 200, 80),
    1024: (237, 197, 63),
    2048: (237, 194, 46),
}
BIG_TILE_COLOR = (60, 58, 50)  # 4096 and above
DARK_TEXT, LIGHT_TEXT = (119, 110, 101), (249, 246, 242)
LABEL_COLOR = (119, 110, 101)
SCORE_DIGITS = 9
LUT_MAX_SIZE = 4  # 18^4 rows = 105k entries; 27^5 would be 14M (too big to be worth it)
MIN_TILE_PX = 20  # smaller tiles cannot show their numbers legibly (10-px digits at 20 px)
CANVAS_W, CANVAS_H = 400, 460  # the original canvas: a 400 x 400 board area and a 60-px score strip


@dataclasses.dataclass(frozen=True)
class Layout:
    """Pixel layout of a frame: the original 400 x 460 canvas uniformly scaled by `scale` into
    the image and centred (its top-left at (ox, oy)); the board square at (board_x, board_y)
    of side board_px; cells every `pitch` pixels, each a `tile`-pixel tile after a `gap`; the
    score strip's rows [strip_y, strip_y + strip_h)."""

    scale: float
    ox: float
    oy: float
    pitch: int
    gap: int
    tile: int
    board_x: int
    board_y: int
    board_px: int
    strip_y: int
    strip_h: int

    @classmethod
    def fit(cls, image_size: tuple[int, int], board_size: int) -> Layout:
        h, w = image_size
        s = min(w / CANVAS_W, h / CANVAS_H)
        ox, oy = (w - CANVAS_W * s) / 2, (h - CANVAS_H * s) / 2
        pitch = max(2, int(round((360 - 10) // board_size * s)))
        gap = max(1, int(round(10 * s)))
        return cls(
            scale=s,
            ox=ox,
            oy=oy,
            pitch=pitch,
            gap=gap,
            tile=pitch - gap,
            board_x=int(round(ox + 20 * s)),
            board_y=int(round(oy + 20 * s)),
            board_px=int(round(360 * s)),
            strip_y=int(round(oy + 400 * s)),
            strip_h=int(round(60 * s)),
        )


@dataclasses.dataclass(frozen=True)
class ScoreLine:
    """The score strip: "Score: " (`prefix`, an alpha mask baked into the background at (x, y))
    and the score as `num_digits` fixed-width digit tiles from `digits_x`."""

    prefix: np.ndarray
    digits: raster.DigitTiles
    x: int
    y: int
    digits_x: int
    num_digits: int


@struct.dataclass
class State:
    board: jax.Array  # int32 [n, n] exponents, 0 = empty
    score: jax.Array  # int32 total merge score of the episode
    steps: jax.Array  # int32 actions taken
    illegal_count: jax.Array  # int32 moves that did not change the board
    done: jax.Array  # bool: no move changes the board


@struct.dataclass
class Params:
    spawn_four_prob: float = 0.1  # probability that a spawned tile is a 4 (else a 2)


# ---------------------------------------------------------------------------------------
# Row slide: the whole rule set lives here
# ---------------------------------------------------------------------------------------


def slide_rows_left(rows):
    """Slide int [..., n] rows of exponents left: compact, merge equal neighbours once
    (leading edge first), compact. Returns (new rows, merge score per row). Branch-free,
    unrolled over the (static, small) row length."""
    n = rows.shape[-1]
    rows = _compact_left(rows)
    out = []
    score = jnp.zeros(rows.shape[:-1], jnp.int32)
    merged_prev = jnp.zeros(rows.shape[:-1], bool)  # did cell i-1 absorb cell i?
    for i in range(n):
        cur = jnp.where(merged_prev, 0, rows[..., i])
        if i + 1 < n:
            merge = (cur != 0) & (cur == rows[..., i + 1])
        else:
            merge = jnp.zeros_like(merged_prev)
        cur = jnp.where(merge, cur + 1, cur)
        score = score + jnp.where(merge, jnp.left_shift(1, cur), 0)
        out.append(cur)
        merged_prev = merge
    return _compact_left(jnp.stack(out, -1)), score


def _compact_left(rows):
    """Move non-zero cells left, keeping their order (stable sort on emptiness)."""
    order = jnp.argsort(rows == 0, axis=-1, stable=True)
    return jnp.take_along_axis(rows, order, axis=-1)


CELL_BITS = 5  # a table entry packs the moved row as 5-bit exponents (unpacked with shifts)


@functools.cache
def _row_table(n: int, base: int):
    """Lookup tables over every row of n exponents < base (the row's table index is its
    base-`base` number): the moved row packed as CELL_BITS-bit fields, and its merge score.
    Built once per board size by running `slide_rows_left` on all rows."""
    codes = np.arange(base**n, dtype=np.int64)
    rows = np.stack([(codes // base**i) % base for i in range(n)], -1).astype(np.int32)
    with jax.ensure_compile_time_eval():  # may be first called while tracing a step
        moved, score = jax.jit(slide_rows_left)(jnp.asarray(rows))
    # two maximal tiles cannot both exist on a real board; clipping keeps those rows in range
    moved = np.minimum(np.asarray(moved), base - 1).astype(np.int64)
    packed = (moved << (CELL_BITS * np.arange(n))).sum(-1)
    return np.asarray(packed, np.int32), np.asarray(score, np.int32)


def _rows_sliding_left(board, action):
    """The board viewed so that moving in direction `action` slides its rows left. The four
    views are static transposes/flips; picking one is an elementwise select (no dynamic
    gather or scatter, which are slow under vmap on CPU)."""
    views = [board.T, board[:, ::-1], board[::-1, :].T, board]  # up, right, down, left
    return jnp.select([action == a for a in range(4)], views)


def _unview(rows, action):
    """Inverse of `_rows_sliding_left`."""
    boards = [rows.T, rows[:, ::-1], rows.T[::-1, :], rows]
    return jnp.select([action == a for a in range(4)], boards)


def _can_slide_left(rows):
    """bool [...]: some row changes when slid left: a tile with a gap before it, or two equal
    neighbouring tiles. Cheap comparisons only; used for the legal-move mask."""
    left, right = rows[..., :-1], rows[..., 1:]
    return (((left == 0) & (right != 0)) | ((left != 0) & (left == right))).any((-1, -2))


# ---------------------------------------------------------------------------------------
# The game
# ---------------------------------------------------------------------------------------


@register("2048")
@dataclasses.dataclass(frozen=True, repr=False)
class Game2048(Env):
    """G1's 2048. Static config: board_size (3..8), image_size (H, W) multiples of 28 with
    tiles of at least MIN_TILE_PX pixels, coordinate_labels (draw row/column indices; off like
    the original), instructions ("g1": G1's prompt; "short": SHORT_PROMPT)."""

    name = "2048"
    board_size: int = 4
    image_size: tuple = (448, 392)
    coordinate_labels: bool = False
    instructions: str = "g1"

    def __post_init__(self):
        check_range(self.name, "board_size", self.board_size, 3, 8)
        object.__setattr__(self, "image_size", check_image_size(self.name, self.image_size))
        check_bool(self.name, "coordinate_labels", self.coordinate_labels)
        check_choice(self.name, "instructions", self.instructions, tuple(INSTRUCTIONS))
        n = self.board_size
        check_cell_size(
            self.name,
            self.image_size,
            n,
            lambda size: Layout.fit(size, n).tile,
            MIN_TILE_PX,
            "tiles",
            (CANVAS_H, CANVAS_W),
        )

    # --- static facts ------------------------------------------------------------------
    @property
    def num_actions(self) -> int:
        return 5

    @property
    def invalid_action(self) -> int:
        return STILL

    @property
    def default_params(self) -> Params:
        return Params()

    @property
    def prompt(self) -> str:
        return INSTRUCTIONS[self.instructions]

    @property
    def max_exponent(self) -> int:
        """Largest reachable exponent: n*n cells can hold at most 2^(n*n+1)."""
        return self.board_size * self.board_size + 1

    # --- rules ---------------------------------------------------------------------------
    def _slide(self, board, action):
        """Board after sliding in direction `action` (0..3), and the merge score."""
        n = self.board_size
        rows = _rows_sliding_left(board, action)
        if n <= LUT_MAX_SIZE:
            base = self.max_exponent + 1
            index = (rows * base ** jnp.arange(n)).sum(-1)
            packed, score = (jnp.asarray(t) for t in _row_table(n, base))  # numpy -> XLA constant
            packed, score = packed[index], score[index]
            moved = (packed[:, None] >> (CELL_BITS * jnp.arange(n))) & ((1 << CELL_BITS) - 1)
        else:
            moved, score = slide_rows_left(rows)
        return _unview(moved.astype(board.dtype), action), score.sum()

    def _spawn(self, u_cell, u_value, board, params):
        """Put a 2 (exponent 1) or, with spawn_four_prob, a 4 on a uniformly chosen empty cell;
        `u_cell`, `u_value` are uniforms in [0, 1) (drawn in bulk by the caller)."""
        flat = board.reshape(-1)
        target, any_empty = kth_true(flat == 0, u_cell)  # the k-th empty cell, row-major
        value = jnp.where(u_value < params.spawn_four_prob, 2, 1).astype(board.dtype)
        # a select instead of a scatter: scatters are slow under vmap on CPU
        place = any_empty & (jnp.arange(flat.shape[0]) == target)
        return jnp.where(place, value, flat).reshape(board.shape)

    def _game_over(self, board):
        horizontal = (board[:, 1:] == board[:, :-1]).any()
        vertical = (board[1:, :] == board[:-1, :]).any()
        return ~((board == 0).any() | horizontal | vertical)

    def reset(self, key, params=None):
        params = self.default_params if params is None else params
        u = jax.random.uniform(key, (4,))
        board = jnp.zeros((self.board_size, self.board_size), jnp.int32)
        board = self._spawn(u[2], u[3], self._spawn(u[0], u[1], board, params), params)
        zero = jnp.int32(0)
        return State(board=board, score=zero, steps=zero, illegal_count=zero, done=jnp.bool_(False))

    def step(self, key, state, action, params=None):
        params = self.default_params if params is None else params
        action = self.checked_action(state, action)
        is_move = (action >= 0) & (action < 4)
        moved, score = self._slide(state.board, jnp.clip(action, 0, 3))
        changed = is_move & (moved != state.board).any()
        u = jax.random.uniform(key, (2,))
        board = jnp.where(changed, self._spawn(u[0], u[1], moved, params), state.board)
        score = jnp.where(changed, score, 0)
        raw = jnp.where(is_move, score, -1).astype(jnp.float32)
        new_state = State(
            board=board,
            score=state.score + score,
            steps=state.steps + 1,
            illegal_count=state.illegal_count + (is_move & ~changed),
            done=self._game_over(board),
        )
        reward = jnp.where(raw > 0, 1.0, -1.0)
        return new_state, reward, new_state.done, {"raw_reward": raw, "legal": changed}

    def valid_actions(self, state, params=None):
        self.check_state(state, "valid_actions")
        b = state.board
        can = jnp.stack([_can_slide_left(_rows_sliding_left(b, a)) for a in range(4)])
        return jnp.concatenate([can, jnp.zeros(1, bool)])

    # --- rendering -----------------------------------------------------------------------
    @functools.cached_property
    def layout(self) -> Layout:
        return Layout.fit(self.image_size, self.board_size)

    @functools.cached_property
    def _tile_atlas(self) -> np.ndarray:
        """uint8 [max_exp + 1, pitch, pitch, 3]: every cell state drawn once: a rounded tile in
        its colour with its number centred, on the board colour (the gap right and below)."""
        return raster.bake(lambda: jnp.stack([self._draw_tile(e) for e in range(self.max_exponent + 1)]))

    def _draw_tile(self, exponent: int):
        L = self.layout
        p, t = L.pitch, L.tile
        ys, xs = raster.pixel_centres(p, p)
        value = 2**exponent
        color = EMPTY_COLOR if exponent == 0 else TILE_COLORS.get(value, BIG_TILE_COLOR)
        img = raster.fill(
            raster.canvas(p, p, BOARD_COLOR), raster.coverage(raster.sdf_box(ys, xs, 0, 0, t, t, 4 * L.scale)), color
        )
        if exponent > 0:
            # the original draws 40-px text on 77-px tiles; long numbers shrink to fit the tile
            text, px = str(value), max(6, int(round(40 * t / 77)))
            while px > 6 and raster.text_width(text, px, 1) > 0.85 * t:
                px -= 1
            text_color = DARK_TEXT if value < 8 else LIGHT_TEXT
            img = raster.stamp(img, raster.text_alpha(text, px, 1), t / 2, t / 2, text_color)
        return raster.to_uint8(img)

    @functools.cached_property
    def _score_line(self) -> ScoreLine:
        """ "Score: " is static (baked into the background), the digits are fixed-width tiles
        after it, on the original's 40-px line centred in the 60-px strip."""
        L = self.layout
        px = max(6, int(round(40 * L.scale)))
        prefix = raster.text_alpha("Score: ", px, 1, crop=False)
        digits = raster.digit_tiles(px, (0, 0, 0), BACKGROUND, 1)
        x = int(round(L.ox + 20 * L.scale))
        num_digits = max(1, min(SCORE_DIGITS, (self.image_size[1] - x - prefix.shape[1]) // digits.width))
        y = L.strip_y + (L.strip_h - prefix.shape[0]) // 2
        return ScoreLine(prefix=prefix, digits=digits, x=x, y=y, digits_x=x + prefix.shape[1], num_digits=num_digits)

    @functools.cached_property
    def _background(self) -> np.ndarray:
        """The static part of the frame: canvas, board rectangle, optional coordinate labels."""
        return raster.bake(self._draw_background)

    def _draw_background(self):
        h, w = self.image_size
        L = self.layout
        ys, xs = raster.pixel_centres(h, w)
        bx, by, size = L.board_x, L.board_y, L.board_px
        img = raster.canvas(h, w, BACKGROUND)
        img = raster.fill(
            img, raster.coverage(raster.sdf_box(ys, xs, bx, by, bx + size, by + size, 4 * L.scale)), BOARD_COLOR
        )
        if self.coordinate_labels:  # in the 20-px margins above and left of the board
            first = L.gap + L.tile / 2
            px = max(6, int(round(14 * L.scale)))
            img = raster.coordinate_labels(
                img, self.board_size, bx + first, by + first, L.pitch, by / 2, bx / 2, px, LABEL_COLOR
            )
        line = self._score_line
        img = raster.stamp(img, line.prefix, line.x, line.y, (0, 0, 0), align="left")
        return raster.to_uint8(img)

    def render(self, state, params=None):
        self.check_state(state, "render")
        L = self.layout
        board = jnp.clip(state.board, 0, self.max_exponent)
        img = raster.paste_cells(
            jnp.asarray(self._background), jnp.asarray(self._tile_atlas), board, L.board_y + L.gap, L.board_x + L.gap
        )
        line = self._score_line
        return raster.paste(img, line.digits.row(state.score, line.num_digits), line.y, line.digits_x)

    # --- text ----------------------------------------------------------------------------
    def describe(self, state) -> str:
        """G1's perception text: rows joined by newlines, cells " <value> " or " - " joined by "|"."""
        return board_text(self.name, state.board, self.board_size, lambda e: f" {2**e} " if e else " - ", "|")

    def parse(self, text: str) -> int:
        """G1's training parser: the first integer in the first answer block; >= 4 or none -> 4."""
        value = first_answer_integer(text)
        return STILL if value is None or value >= STILL else value

    def answer_text(self, action: int) -> str:
        return f"<answer>{self.answerable_action(action)}</answer>"

    def action_label(self, action: int) -> str:
        """The direction's name ("Up"; the invalid action is "Still"): the answer is only its number."""
        if not 0 <= action < len(ACTION_LABELS):
            raise ValueError(f"2048.action_label: action {action} is outside [0, {len(ACTION_LABELS)})")
        return ACTION_LABELS[action]

    def from_board(self, board, score: int = 0, values: bool = False):
        """State from an [n, n] board of exponents (or of tile values with values=True; 0 = empty)."""
        arr = np.asarray(board, np.int64)
        n = self.board_size
        if arr.shape != (n, n):
            raise ValueError(f"2048: board must have shape ({n}, {n}), got {arr.shape}")
        if values:
            if ((arr != 0) & ((arr < 2) | (arr & (arr - 1)) != 0)).any():
                raise ValueError(f"2048: tile values must be 0 or powers of two >= 2, got {arr.tolist()}")
            arr = np.where(arr > 0, np.log2(np.maximum(arr, 1)).round(), 0).astype(np.int64)
        if (arr < 0).any() or (arr > self.max_exponent).any():
            raise ValueError(f"2048: exponents must lie in [0, {self.max_exponent}], got {arr.tolist()}")
        board = jnp.asarray(arr, jnp.int32)
        zero = jnp.int32(0)
        return State(board=board, score=jnp.int32(score), steps=zero, illegal_count=zero, done=self._game_over(board))
