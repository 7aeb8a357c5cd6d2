"""Sokoban as gym-sokoban plays it (docs/envs.md, "Sokoban"), as pure JAX functions, rooms
generated on the device.

Board: int32 [H, W] in gym-sokoban's room-state codes: 0 wall, 1 floor, 2 empty target, 3 box
on target, 4 box off target, 5 player, 6 player on a target (gym-sokoban's renderer's code;
its room_state writes 5 and keeps targets in a second array). Actions are gym-sokoban's ids
0..4: 0 no-op (the invalid action an unreadable answer maps to), 1 up, 2 down, 3 left, 4 right,
each "move, pushing the box in front if it can move" (gym-sokoban's push actions 1-4, the only
ones the LLM frameworks use). A box moves only onto floor or an empty target; there are no chain
pushes. Raw reward, exactly gym-sokoban's: -0.1 per step (no-ops and blocked moves too), +1
when a box lands on a target, -1 when one leaves a target, +10 more when every box is on a
target. The training reward is the same number (what RAGEN, verl-agent / GiGPO and VAGEN's
paper code train on); `info["solved"]` gives VAGEN-Lite's success-only reward. The episode ends
when every box is on a target or after `max_steps` steps (gym-sokoban counts every step).

Rooms are generated on the device the way gym-sokoban's `generate_room` does, with one bounded
change (docs/envs.md, "Sokoban", "Room generation"):
  1. topology: a random walk of int(1.7 * (H + W)) steps that changes direction with p=0.35,
     ORs one of five 3x3 masks around itself at every step; the border is wall;
  2. the player, then each target, on a uniform free floor cell;
  3. reverse play from the solved position (every box on its target): gym-sokoban searches
     every reachable state depth-first (8 reverse actions: 4 pulls, 4 plain moves; depth 300,
     300k states) and keeps the first state of the best score `pulls x sum of box-to-own-target
     Manhattan distances` (0 unless every target is empty). Here `reverse_walks` random walks of
     `reverse_steps` uniformly drawn reverse actions (the same 8) run side by side and every
     state they visit is scored the same way; the best is kept (first walk, first step on ties);
  4. a try whose best score is 0 (too little floor, no pull possible) draws a new topology, up
     to `generation_tries` times in a `lax.while_loop` (gym-sokoban: 4 tries, then reset again
     without limit); if every try fails, the room is a fixed solvable one (`fallback_room`).
Every room is therefore solvable: the player can undo the reverse play with pushes. A room costs
about 60-100 us on a CPU core; `room_pool` generates rooms up front into `Params`, and `reset`
then draws one (a gather), which matters under `auto_reset_step` (it computes a reset per board
per step). BENCHMARKS.md, "Sokoban".

`solve` (breadth-first over (player, box) positions, jittable, one-box rooms) finds shortest
solutions; it is the teacher (g1jax.teachers) and the tests' solvability check.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs import raster
from envs.core import ConfigError, Env, check_cell_size, check_image_size, check_range, kth_true, register
from envs.grammar import ANSWER_CLOSE, ANSWER_OPEN

# Reverse-play walk length per box: 300 (gym-sokoban's search depth) matches its solution lengths
# on 6x6 one-box rooms; with more boxes, longer walks are needed to get every box off its target
# (10x10, 4 boxes: 14 of 512 rooms fell back at 300 steps, none at 1000).
REVERSE_STEPS_PER_BOX = 300
WALL, FLOOR, TARGET, BOX_ON_TARGET, BOX, PLAYER, PLAYER_ON_TARGET = range(7)
NOOP, UP, DOWN, LEFT, RIGHT = range(5)
ACTION_LABELS = ("No-op", "Up", "Down", "Left", "Right")
DELTAS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # (row, col) of up, down, left, right: actions 1..4
# The perception symbols of the LLM frameworks' text Sokoban (RAGEN, VAGEN), by board code.
SYMBOLS = ("#", "_", "O", "√", "X", "P", "S")
SYMBOL_NAMES = ("wall", "floor", "empty target", "box on target", "box", "player", "player on target")

P_CHANGE_DIRECTION = 0.35  # gym-sokoban's room_topology_generation
# gym-sokoban's five 3x3 floor masks, centred on the walker.
TOPOLOGY_MASKS = np.array(
    [
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]],
        [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
        [[0, 0, 0], [1, 1, 0], [0, 1, 0]],
        [[0, 0, 0], [1, 1, 0], [1, 1, 0]],
        [[0, 0, 0], [0, 1, 1], [0, 1, 0]],
    ],
    bool,
)

STEP_PENALTY, BOX_ON_REWARD, BOX_OFF_PENALTY, SOLVED_REWARD = -0.1, 1.0, -1.0, 10.0
CELL_PX = 14  # default cell size: gym-sokoban's 16-px sprites, 96 px for 6x6, as Qwen2.5-VL resizes them (84 px)
MIN_CELL_PX = 8  # smaller sprites are not legible
MIN_DIM, MAX_DIM = 5, 16

# gym-sokoban's sprite colours (surface/*.png, 16 x 16)
BRICK, MORTAR = (176, 61, 0), (176, 154, 142)
BLACK = (0, 0, 0)
TARGET_RED, TARGET_CORE = (239, 22, 22), (242, 26, 26)
CRATE, CRATE_FRAME, CRATE_DARK = (215, 196, 0), (215, 114, 0), (215, 103, 0)
ON_TARGET_RED = (238, 0, 0)
ALIEN = (41, 202, 26)


@struct.dataclass
class State:
    board: jax.Array  # int32 [H, W] codes (module docstring)
    player: jax.Array  # int32 [2] (row, col) of the player
    steps: jax.Array  # int32 steps taken (every action counts, as in gym-sokoban)
    done: jax.Array  # bool: every box on a target, or max_steps steps taken


@struct.dataclass
class Params:
    """The room options and the step limit are static config. `rooms` / `players` optionally hold
    a pool of rooms generated beforehand (`Sokoban.room_pool`): `reset` then draws one uniformly
    instead of generating it (as jumanji loads stored levels), so that resets cost a gather,
    e.g. under `auto_reset_step`, which computes a reset for every board at every step."""

    rooms: jax.Array | None = None  # int32 [N, H, W] boards
    players: jax.Array | None = None  # int32 [N, 2]


# ---------------------------------------------------------------------------------------
# Rules on one board
# ---------------------------------------------------------------------------------------


def _is_target(board):
    return (board == TARGET) | (board == BOX_ON_TARGET) | (board == PLAYER_ON_TARGET)


def _is_box(board):
    return (board == BOX) | (board == BOX_ON_TARGET)


def _is_open(board):
    """Cells a player or box may enter: floor or an empty target."""
    return (board == FLOOR) | (board == TARGET)


def solved(board):
    """Every box on a target: no empty target, no target under the player (gym-sokoban's test)."""
    return ~((board == TARGET) | (board == PLAYER_ON_TARGET)).any()


def move(board, player, direction):
    """The board after the player tries to go `direction` (0..3: up, down, left, right), pushing
    a box in front if the cell behind it is open. Returns (board, player, moved, pushed). The
    border is wall, so the player is never on it and the cells ahead are on the grid (clipped
    for safety). Writes are selects on one-hot masks (scatters are slow under vmap on CPU)."""
    h, w = board.shape
    d = jnp.asarray(DELTAS, jnp.int32)[direction]
    p1 = jnp.clip(player + d, 0, jnp.array([h - 1, w - 1]))
    p2 = jnp.clip(player + 2 * d, 0, jnp.array([h - 1, w - 1]))
    c1, c2 = board[p1[0], p1[1]], board[p2[0], p2[1]]
    push = _is_box(c1) & _is_open(c2)
    moved = _is_open(c1) | push
    rows, cols = np.indices((h, w))
    at = lambda p: (rows == p[0]) & (cols == p[1])  # noqa: E731
    target = _is_target(board)
    new = jnp.where(at(player), jnp.where(target, TARGET, FLOOR), board)
    new = jnp.where(at(p1), jnp.where(target, PLAYER_ON_TARGET, PLAYER), new)
    new = jnp.where(at(p2) & push, jnp.where(target, BOX_ON_TARGET, BOX), new)
    return jnp.where(moved, new, board), jnp.where(moved, p1, player), moved, push


def can_move(board, player):
    """bool [4]: which directions (up, down, left, right) change the board."""
    h, w = board.shape
    padded = jnp.pad(board, 2, constant_values=WALL)
    r, c = player[0] + 2, player[1] + 2
    out = []
    for dr, dc in DELTAS:
        c1 = padded[r + dr, c + dc]
        c2 = padded[r + 2 * dr, c + 2 * dc]
        out.append(_is_open(c1) | (_is_box(c1) & _is_open(c2)))
    return jnp.stack(out)


# ---------------------------------------------------------------------------------------
# Room generation (gym-sokoban's generate_room, bounded)
# ---------------------------------------------------------------------------------------


def room_topology(key, dim: tuple[int, int], num_steps: int):
    """bool [H, W] floor of gym-sokoban's random-walk topology: start uniform in [1, H-1] x
    [1, W-1], a uniform first direction, at every step a new uniform direction with p=0.35, a
    step clamped to [1, dim-2], one of the five masks (uniform) ORed around the walker; the
    border is wall."""
    h, w = dim
    k_dir, k_start, k_change, k_new, k_mask = jax.random.split(key, 5)
    directions = jnp.asarray(((1, 0), (0, 1), (-1, 0), (0, -1)), jnp.int32)
    first = jax.random.randint(k_dir, (), 0, 4)
    start = jax.random.randint(k_start, (2,), 1, jnp.array([h, w]))
    change = jax.random.uniform(k_change, (num_steps,)) < P_CHANGE_DIRECTION
    new_dir = jax.random.randint(k_new, (num_steps,), 0, 4)
    mask_id = jax.random.randint(k_mask, (num_steps,), 0, len(TOPOLOGY_MASKS))
    lo, hi = jnp.array([1, 1]), jnp.array([h - 2, w - 2])

    def walk(carry, x):
        position, direction = carry
        change_now, candidate = x
        direction = jnp.where(change_now, candidate, direction)
        position = jnp.clip(position + directions[direction], lo, hi)
        return (position, direction), position

    _, path = jax.lax.scan(walk, (start, first), (change, new_dir))  # [S, 2]
    dy = jnp.arange(h)[None, :, None] - path[:, 0, None, None] + 1  # [S, H, 1]
    dx = jnp.arange(w)[None, None, :] - path[:, 1, None, None] + 1  # [S, 1, W]
    inside = (dy >= 0) & (dy < 3) & (dx >= 0) & (dx < 3)
    stamped = jnp.asarray(TOPOLOGY_MASKS)[mask_id[:, None, None], jnp.clip(dy, 0, 2), jnp.clip(dx, 0, 2)]
    floor = (inside & stamped).any(0)
    rows, cols = np.indices((h, w))
    interior = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
    return floor & jnp.asarray(interior)


def place_player_and_targets(key, floor, num_boxes: int):
    """gym-sokoban's placement on a flat floor mask [C]: the player on a uniform floor cell, then
    each target on a uniform floor cell still free. Returns (player, targets [num_boxes], whether
    there were more than num_boxes + 1 floor cells, gym-sokoban's condition)."""
    u = jax.random.uniform(key, (num_boxes + 1,))
    cells = jnp.arange(floor.shape[0])
    player, _ = kth_true(floor, u[0])
    free = floor & (cells != player)
    targets = []
    for i in range(num_boxes):
        t, _ = kth_true(free, u[i + 1])
        free = free & (cells != t)
        targets.append(t)
    return player, jnp.stack(targets), floor.sum() > num_boxes + 1


def reverse_walk(key, floor, width: int, player, targets, num_steps: int):
    """One walk of reverse play on flat cells: from every box on its target, `num_steps` reverse
    actions drawn uniformly from gym-sokoban's 8 (0-3: step up/down/left/right pulling a box
    that is directly behind, 4-7: plain steps); a step into a wall or a box does nothing. Every
    state reached is scored as gym-sokoban scores it, pulls so far x the sum of Manhattan
    distances from each box to its own target, 0 unless every target is empty (no box on one,
    the player not on one). Returns (best score, its player, its boxes [B]); the first state of
    the best score wins, and score 0 keeps the start."""
    flat = jnp.asarray([dr * width + dc for dr, dc in DELTAS], jnp.int32)
    is_target = jnp.zeros(floor.shape, bool).at[targets].set(True)
    actions = jax.random.randint(key, (num_steps,), 0, 8)

    def step(carry, action):
        player, boxes, pulls, best = carry
        d = flat[action % 4]
        ahead = player + d
        can = floor[ahead] & ~(boxes == ahead).any()
        hit = (boxes == player - d) & (action < 4) & can  # the box pulled along
        boxes = jnp.where(hit, player, boxes)
        player = jnp.where(can, ahead, player)
        pulls = pulls + hit.any()
        dist = jnp.abs(boxes // width - targets // width) + jnp.abs(boxes % width - targets % width)
        clear = ~is_target[boxes].any() & ~is_target[player]
        score = jnp.where(clear, pulls * dist.sum(), 0)
        better = score > best[0]
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), (score, player, boxes), best)
        return (player, boxes, pulls, best), None

    start = (jnp.int32(0), player, targets)
    (_, _, _, best), _ = jax.lax.scan(step, (player, targets, jnp.int32(0), start), actions)
    return best


def fallback_room(dim: tuple[int, int], num_boxes: int) -> np.ndarray:
    """The room used if every generation try fails (documented, never seen in tests): an open
    room, targets on row 1 from column 1, a box under each, the player under the first box.
    Solvable: push each box up, walking along row 3 between pushes."""
    h, w = dim
    board = np.full((h, w), WALL, np.int32)
    board[1:-1, 1:-1] = FLOOR
    board[1, 1 : 1 + num_boxes] = TARGET
    board[2, 1 : 1 + num_boxes] = BOX
    board[3, 1] = PLAYER
    return board


def generate_room(
    key,
    dim: tuple[int, int],
    num_boxes: int,
    num_gen_steps: int,
    reverse_walks: int,
    reverse_steps: int,
    tries: int,
):
    """A room as gym-sokoban generates it (module docstring). Returns (board int32 [H, W],
    player int32 [2], reverse-play score of the room, topologies drawn; score 0 means the
    fallback room)."""
    h, w = dim
    flat = [dr * w + dc for dr, dc in DELTAS]
    layout_key, walks_key = jax.random.split(key)

    def layout(k):
        """A topology with the player and targets placed, and whether it can succeed at all:
        enough floor, and next to every target a line of two floor cells (where the player can
        stand and step back to pull that box off; without one, reverse play scores 0)."""
        k_topology, k_place = jax.random.split(k)
        floor = room_topology(k_topology, dim, num_gen_steps).reshape(-1)
        player, targets, enough = place_player_and_targets(k_place, floor, num_boxes)
        free = floor  # boxes may move away first: only walls rule a pull out for sure
        beyond = [jnp.clip(targets + 2 * d, 0, h * w - 1) for d in flat]  # clipped: a corner (wall)
        pullable = jnp.stack([free[targets + d] & free[b] for d, b in zip(flat, beyond)]).any(0).all()
        return floor, player, targets, enough & pullable

    def drawing(carry):
        return ~carry[-2] & (carry[-1] < tries)

    def next_layout(carry):
        n = carry[-1]
        return (*layout(jax.random.fold_in(layout_key, n)), n + 1)

    def attempt(n):
        """Layouts until one can succeed (cheap, in a loop of its own), then the reverse walks."""
        blank = (jnp.zeros(h * w, bool), jnp.int32(0), jnp.zeros(num_boxes, jnp.int32), jnp.bool_(False), n)
        floor, player, targets, ok, n = jax.lax.while_loop(drawing, next_layout, blank)
        walk = functools.partial(
            reverse_walk, floor=floor, width=w, player=player, targets=targets, num_steps=reverse_steps
        )
        walk_key = jax.random.fold_in(walks_key, n)
        scores, players, boxes = jax.vmap(lambda kk: walk(kk))(jax.random.split(walk_key, reverse_walks))
        best = jnp.argmax(scores)  # the first walk among equals
        score = jnp.where(ok, scores[best], 0)
        cells = jnp.arange(h * w)
        board = jnp.where(floor, FLOOR, WALL)
        board = jnp.where((cells[:, None] == targets).any(1), TARGET, board)
        board = jnp.where((cells[:, None] == boxes[best]).any(1), BOX, board)  # off target when score > 0
        board = jnp.where(cells == players[best], PLAYER, board)
        return board.reshape(h, w), jnp.stack([players[best] // w, players[best] % w]), score, n

    def searching(carry):
        return (carry[2] == 0) & (carry[3] < tries)

    def next_try(carry):
        return attempt(carry[3])

    fallback = fallback_room(dim, num_boxes)
    start = (jnp.asarray(fallback), jnp.array([3, 1], jnp.int32), jnp.int32(0), jnp.int32(0))
    board, player, score, n = jax.lax.while_loop(searching, next_try, start)
    board = jnp.where(score > 0, board, jnp.asarray(fallback))
    player = jnp.where(score > 0, player, jnp.array([3, 1], jnp.int32))
    return board, player.astype(jnp.int32), score, n


# ---------------------------------------------------------------------------------------
# Breadth-first solver (one box)
# ---------------------------------------------------------------------------------------


def solve(board, max_depth: int | None = None):
    """Shortest solution of a one-box room by breadth-first search over (player, box) cells:
    (first action of a shortest solution, 1..4, and its length in moves). (0, 0) if the room is
    solved already, (0, -1) if no solution exists (or none within `max_depth` moves; default:
    every state). Each layer moves the whole frontier table [4 directions, C player cells, C box
    cells] at once by static shifts of flat cell indices, carrying the first action of the path
    that reached each state; a `lax.while_loop` stops at the first layer that puts the box on a
    target. Jittable and vmappable (a batch runs as many layers as its longest search)."""
    h, w = board.shape
    c = h * w
    flat = board.reshape(-1)
    open_ = flat != WALL  # the box is the only movable obstacle
    target = _is_target(flat)
    cells = jnp.arange(c)
    player = jnp.argmax((flat == PLAYER) | (flat == PLAYER_ON_TARGET))
    box = jnp.argmax(_is_box(flat))
    max_depth = c * c if max_depth is None else max_depth
    shifts = [dr * w + dc for dr, dc in DELTAS]
    ahead = [jnp.asarray(np.equal.outer(np.arange(c) + s, np.arange(c))) for s in shifts]  # [q, b]: b == q + s

    def expand(labels):
        """labels int32 [4, C, C] (-1: not in the frontier; per direction, to allow the first
        layer to label each successor by its own direction) -> successors' labels [C, C]."""
        out = jnp.full((c, c), -1, jnp.int32)
        for i, s in enumerate(shifts):
            moved = jnp.roll(labels[i], s, axis=0)  # moved[q, b] = labels[q - s, b]: the player stepped to q
            walk = jnp.where(open_[:, None] & (cells[:, None] != cells[None, :]), moved, -1)
            pushed = jnp.diagonal(moved)  # labels of (q - s, q): the box was in front of the player at q - s
            behind = jnp.roll(open_, -s)  # open_[q + s]
            push = jnp.where(ahead[i] & behind[:, None], pushed[:, None], -1)
            out = jnp.maximum(out, jnp.maximum(walk, push))
        return out

    start = (cells[:, None] == player) & (cells[None, :] == box)
    first = jnp.where(start[None], jnp.arange(1, 5)[:, None, None], -1)
    frontier = expand(first)
    visited = start | (frontier >= 0)

    def goal_label(frontier):
        return jnp.max(jnp.where(target[None, :], frontier, -1))

    def searching(carry):
        frontier, _, depth, found = carry
        return (found < 0) & (frontier >= 0).any() & (depth < max_depth)

    def layer(carry):
        frontier, visited, depth, _ = carry
        new = expand(jnp.broadcast_to(frontier, (4, c, c)))
        new = jnp.where(visited, -1, new)
        return new, visited | (new >= 0), depth + 1, goal_label(new)

    carry = (frontier, visited, jnp.int32(1), goal_label(frontier))
    _, _, depth, found = jax.lax.while_loop(searching, layer, carry)
    done = target[box]
    action = jnp.where(done | (found < 0), NOOP, found)
    length = jnp.where(done, 0, jnp.where(found < 0, -1, depth))
    return action.astype(jnp.int32), length.astype(jnp.int32)


# ---------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------

_ANSWER_RE = re.compile(re.escape(ANSWER_OPEN) + r"(.*?)" + re.escape(ANSWER_CLOSE), re.DOTALL)
_WORDS = {label.lower(): action for action, label in enumerate(ACTION_LABELS) if action != NOOP}


def parse_actions(text: str, limit: int) -> list[int]:
    """The actions of the first `<answer>...</answer>`: its content split on commas, each item a
    direction word (case-insensitive, surrounding whitespace ignored), read up to the first item
    that is not one and at most `limit` items. [] if there is none."""
    if not isinstance(text, str):
        raise TypeError(f"answer text must be str, got {type(text).__name__}")
    match = _ANSWER_RE.search(text)
    if match is None:
        return []
    out = []
    for item in match.group(1).split(",")[:limit]:
        action = _WORDS.get(item.strip().lower())
        if action is None:
            break
        out.append(action)
    return out


def prompt_text(actions_per_turn: int) -> str:
    legend = "\n".join(f"- {s}: {name}" for s, name in zip(SYMBOLS, SYMBOL_NAMES))
    if actions_per_turn == 1:
        answer = "the action in <answer></answer>, e.g. <answer>Left</answer>"
    else:
        answer = (
            f"up to {actions_per_turn} actions in <answer></answer>, separated by commas and played in order, "
            "e.g. <answer>Left, Up</answer>"
        )
    return (
        "You are playing Sokoban. You are the player (a green alien) in a room of walls (brick) and floor "
        "(black). Push every box (a yellow crate) onto a target (a red square outline).\n\n"
        "Rules:\n- You move one cell Up, Down, Left or Right.\n- Walking into a box pushes it one cell in the "
        "same direction if the cell behind it is floor or an empty target; you cannot push a box into a wall "
        "or into another box, and you cannot pull boxes.\n- The game is won when every box is on a target.\n\n"
        f"Board symbols:\n{legend}\n\n"
        "Actions: Up, Down, Left, Right.\n"
        "First describe the board in <perception></perception> as rows of symbols separated by ' | ', one row "
        f"per line. Then output your thinking process in <think></think> and {answer}."
    )


# ---------------------------------------------------------------------------------------
# The game
# ---------------------------------------------------------------------------------------


def default_image_size(dim: tuple[int, int]) -> tuple[int, int]:
    """CELL_PX-pixel cells, rounded up to Qwen2.5-VL's 28-px patches: (84, 84) for 6x6."""
    return tuple(28 * math.ceil(CELL_PX * n / 28) for n in dim)  # type: ignore[return-value]


@register("sokoban")
@dataclasses.dataclass(frozen=True, repr=False)
class Sokoban(Env):
    """gym-sokoban's Sokoban. Static config: dim_room (H, W), 5..16 each (the anchors' 6x6 by
    default); num_boxes (1 by default, at most W - 2); max_steps (gym-sokoban's 120);
    num_gen_steps (the topology walk's length, None: gym-sokoban's int(1.7 * (H + W)));
    reverse_walks and reverse_steps (the bounded reverse play; None: 300 steps per box); generation_tries (topologies
    tried before the fallback room); image_size (None: 14-px cells rounded up to multiples of
    28, (84, 84) for 6x6); actions_per_turn (how many comma-separated actions an answer may
    name, `parse_actions` and `step_turn`)."""

    name = "sokoban"
    dim_room: tuple = (6, 6)
    num_boxes: int = 1
    max_steps: int = 120
    num_gen_steps: int | None = None
    reverse_walks: int = 4
    reverse_steps: int | None = None
    generation_tries: int = 16
    image_size: tuple | None = None
    actions_per_turn: int = 1

    def __post_init__(self):
        try:
            h, w = self.dim_room
        except (TypeError, ValueError):
            raise ConfigError(f"sokoban: dim_room must be (height, width), got {self.dim_room!r}") from None
        check_range(self.name, "dim_room height", h, MIN_DIM, MAX_DIM)
        check_range(self.name, "dim_room width", w, MIN_DIM, MAX_DIM)
        object.__setattr__(self, "dim_room", (int(h), int(w)))
        check_range(self.name, "num_boxes", self.num_boxes, 1, w - 2)
        check_range(self.name, "max_steps", self.max_steps, 1, 2**31 - 1)
        if self.num_gen_steps is None:
            object.__setattr__(self, "num_gen_steps", int(1.7 * (h + w)))
        check_range(self.name, "num_gen_steps", self.num_gen_steps, 1, 10_000)
        check_range(self.name, "reverse_walks", self.reverse_walks, 1, 4096)
        if self.reverse_steps is None:
            object.__setattr__(self, "reverse_steps", REVERSE_STEPS_PER_BOX * self.num_boxes)
        check_range(self.name, "reverse_steps", self.reverse_steps, 1, 100_000)
        check_range(self.name, "generation_tries", self.generation_tries, 1, 10_000)
        check_range(self.name, "actions_per_turn", self.actions_per_turn, 1, 64)
        size = default_image_size(self.dim_room) if self.image_size is None else self.image_size
        object.__setattr__(self, "image_size", check_image_size(self.name, size))
        check_cell_size(
            self.name, self.image_size, max(h, w), lambda s: self._cell_px(s), MIN_CELL_PX, "cells", self.dim_room
        )

    def _cell_px(self, image_size) -> int:
        return min(image_size[0] // self.dim_room[0], image_size[1] // self.dim_room[1])

    # --- static facts ------------------------------------------------------------------
    @property
    def num_actions(self) -> int:
        return 5

    @property
    def invalid_action(self) -> int:
        return NOOP

    @property
    def default_params(self) -> Params:
        return Params()

    @property
    def prompt(self) -> str:
        return prompt_text(self.actions_per_turn)

    # --- rules ---------------------------------------------------------------------------
    def generate(self, key):
        """`generate_room` with this game's options: (board, player, score, tries)."""
        return generate_room(
            key,
            self.dim_room,
            self.num_boxes,
            self.num_gen_steps,
            self.reverse_walks,
            self.reverse_steps,
            self.generation_tries,
        )

    def reset(self, key, params=None):
        params = self.default_params if params is None else params
        if params.rooms is None:
            board, player, _, _ = self.generate(key)
        else:
            index = jax.random.randint(key, (), 0, params.rooms.shape[0])
            board, player = params.rooms[index], params.players[index]
        return State(board=board, player=player, steps=jnp.int32(0), done=jnp.bool_(False))

    @functools.cached_property
    def generate_batch(self):
        """`generate` vmapped over a batch of keys and jitted (compiled once per batch size)."""
        return jax.jit(jax.vmap(self.generate))

    def room_pool(self, key, size: int, chunk: int = 1024) -> Params:
        """Params holding `size` rooms generated now, `chunk` at a time (the last chunk padded, so
        one compiled batch size serves), for cheap resets."""
        keys = jax.random.split(key, -(-size // chunk) * chunk)
        parts = [self.generate_batch(keys[i : i + chunk])[:2] for i in range(0, len(keys), chunk)]
        rooms, players = (jnp.concatenate(x)[:size] for x in zip(*parts))
        return Params(rooms=rooms, players=players)

    def step(self, key, state, action, params=None):
        action = self.checked_action(state, action)
        is_move = (action >= UP) & (action <= RIGHT)
        board, player, moved, _ = move(state.board, state.player, jnp.clip(action - 1, 0, 3))
        live = ~state.done
        legal = live & is_move & moved
        board = jnp.where(legal, board, state.board)
        player = jnp.where(legal, player, state.player)
        before = (state.board == BOX_ON_TARGET).sum()
        after = (board == BOX_ON_TARGET).sum()
        won = solved(board)
        raw = STEP_PENALTY + jnp.where(after > before, BOX_ON_REWARD, jnp.where(after < before, BOX_OFF_PENALTY, 0.0))
        raw = jnp.where(live, raw + jnp.where(won, SOLVED_REWARD, 0.0), 0.0).astype(jnp.float32)
        steps = state.steps + live
        done = state.done | won | (steps >= self.max_steps)
        new_state = State(board=board, player=player, steps=steps, done=done)
        return new_state, raw, done, {"raw_reward": raw, "legal": legal, "solved": won}

    def step_turn(self, key, state, actions, params=None):
        """One turn of `actions_per_turn` actions (int32 [k], e.g. `parse_actions` padded with
        0): the ids 1..4 up to the first other id are played in order, and none after the episode
        ends; an answer with no move at all plays one no-op (as a one-action turn would: -0.1 and
        a step). Returns (state, summed reward, done, info: summed raw reward, whether any action
        was legal, solved, how many actions were played)."""
        actions = jnp.asarray(actions, jnp.int32)
        playing = jnp.cumprod((actions >= UP) & (actions <= RIGHT)).astype(bool)
        playing = playing.at[0].set(True)  # the no-op of an empty answer
        keys = jax.random.split(key, actions.shape[0])

        def one(carry, x):
            state, total, legal, count = carry
            k, action, play = x
            play = play & ~state.done
            new, reward, _, info = self.step(k, state, action, params)
            state = jax.tree.map(lambda a, b: jnp.where(play, a, b), new, state)
            return (state, total + jnp.where(play, reward, 0.0), legal | (play & info["legal"]), count + play), None

        init = (state, jnp.float32(0), jnp.bool_(False), jnp.int32(0))
        (state, total, legal, count), _ = jax.lax.scan(one, init, (keys, actions, playing))
        info = {"raw_reward": total, "legal": legal, "solved": solved(state.board), "played": count}
        return state, total, state.done, info

    def valid_actions(self, state, params=None):
        self.check_state(state, "valid_actions")
        can = can_move(state.board, state.player) & ~state.done
        return jnp.concatenate([jnp.zeros(1, bool), can])

    # --- rendering -----------------------------------------------------------------------
    @functools.cached_property
    def _cell(self) -> int:
        return self._cell_px(self.image_size)

    @functools.cached_property
    def _origin(self) -> tuple[int, int]:
        c, (h, w) = self._cell, self.dim_room
        return (self.image_size[0] - c * h) // 2, (self.image_size[1] - c * w) // 2

    @functools.cached_property
    def _tile_atlas(self) -> np.ndarray:
        """uint8 [7, cell, cell, 3]: each board code drawn once, in gym-sokoban's look."""
        return raster.bake(lambda: jnp.stack([draw_tile(code, self._cell) for code in range(7)]))

    def render(self, state, params=None):
        self.check_state(state, "render")
        h, w = self.image_size
        y, x = self._origin
        background = jnp.zeros((h, w, 3), jnp.uint8)
        return raster.paste_cells(background, jnp.asarray(self._tile_atlas), jnp.clip(state.board, 0, 6), y, x)

    # --- text ----------------------------------------------------------------------------
    def describe(self, state) -> str:
        """The perception text: rows of symbols (# wall, _ floor, O target, √ box on target, X box,
        P player, S player on target) joined by " | ", one row per line."""
        board = np.asarray(state.board)
        h, w = self.dim_room
        if board.shape != (h, w):
            raise ValueError(f"sokoban: describe expects one {h}x{w} board (unbatch a batched state first)")
        return "\n".join(" | ".join(SYMBOLS[int(v)] for v in row) for row in board)

    def parse(self, text: str) -> int:
        """The first action the answer names (`parse_actions`); none -> the no-op (invalid)."""
        actions = parse_actions(text, self.actions_per_turn)
        return actions[0] if actions else NOOP

    def parse_actions(self, text: str) -> list[int]:
        """Up to `actions_per_turn` actions of the answer, in order (module function)."""
        return parse_actions(text, self.actions_per_turn)

    def answer_text(self, action: int) -> str:
        return f"{ANSWER_OPEN}{ACTION_LABELS[self.answerable_action(action)]}{ANSWER_CLOSE}"

    def from_board(self, board, steps: int = 0):
        """State from an [H, W] board of codes 0..6 or its `describe` text (symbols). The border
        must be wall; one player; as many boxes as targets."""
        if isinstance(board, str):
            lookup = {s: i for i, s in enumerate(SYMBOLS)}
            try:
                board = [[lookup[cell.strip()] for cell in line.split("|")] for line in board.strip().split("\n")]
            except KeyError as e:
                raise ValueError(f"sokoban: unknown board symbol {e.args[0]!r}; symbols are {SYMBOLS}") from None
        arr = np.asarray(board)
        h, w = self.dim_room
        if arr.shape != (h, w):
            raise ValueError(f"sokoban: board must have shape ({h}, {w}), got {arr.shape}")
        if arr.dtype.kind not in "iu" or (arr < 0).any() or (arr > 6).any():
            raise ValueError(f"sokoban: board codes must be integers in [0, 6], got {arr.tolist()}")
        border = np.ones((h, w), bool)
        border[1:-1, 1:-1] = False
        if (arr[border] != WALL).any():
            raise ValueError("sokoban: the border of the room must be wall (code 0)")
        players = np.argwhere((arr == PLAYER) | (arr == PLAYER_ON_TARGET))
        if len(players) != 1:
            raise ValueError(f"sokoban: the board needs exactly one player, found {len(players)}")
        boxes = int(((arr == BOX) | (arr == BOX_ON_TARGET)).sum())
        targets = int(((arr == TARGET) | (arr == BOX_ON_TARGET) | (arr == PLAYER_ON_TARGET)).sum())
        if boxes != targets or boxes != self.num_boxes:
            raise ValueError(f"sokoban: {boxes} boxes and {targets} targets; this game has num_boxes={self.num_boxes}")
        b = jnp.asarray(arr, jnp.int32)
        return State(
            board=b,
            player=jnp.asarray(players[0], jnp.int32),
            steps=jnp.int32(steps),
            done=jnp.bool_(bool(solved(b)) or steps >= self.max_steps),
        )


# ---------------------------------------------------------------------------------------
# Tiles: gym-sokoban's 16-px sprites, drawn procedurally at any cell size
# ---------------------------------------------------------------------------------------


def draw_tile(code: int, cell: int):
    """One tile (uint8 [cell, cell, 3]) in gym-sokoban's look; geometry in sprite units (1/16 cell)."""
    s = cell / 16.0
    ys, xs = raster.pixel_centres(cell, cell)
    box = lambda x0, y0, x1, y1, r=0.0: raster.sdf_box(ys, xs, x0 * s, y0 * s, x1 * s, y1 * s, r * s)  # noqa: E731
    img = raster.canvas(cell, cell, BLACK)
    if code == WALL:  # bricks in rows of 4, 2-unit mortar between rows, joints offset row to row
        img = raster.canvas(cell, cell, BRICK)
        mortar = jnp.minimum(box(-1, 4, 17, 6), box(-1, 10, 17, 12))
        for x0, y0, y1 in ((5, 0, 4), (12, 0, 4), (3, 6, 10), (11, 6, 10), (5, 12, 16), (12, 12, 16)):
            mortar = jnp.minimum(mortar, box(x0, y0, x0 + 1, y1))
        return raster.to_uint8(raster.fill(img, raster.coverage(mortar), MORTAR))
    if code in (TARGET, PLAYER_ON_TARGET):  # a 1-unit red square inset by 1 unit
        img = raster.fill(img, raster.inner_outline(box(1, 1, 15, 15), max(1.0, s)), TARGET_RED)
    if code == TARGET:  # and a small diamond in the middle
        diamond = raster.sdf_convex_polygon(
            ys, xs, [(7.5 * s, 4.5 * s), (10 * s, 7.5 * s), (7.5 * s, 10.5 * s), (5 * s, 7.5 * s)]
        )
        img = raster.fill(img, raster.coverage(diamond), TARGET_CORE)
    if code in (BOX, BOX_ON_TARGET):
        inset = 0.0 if code == BOX else 2.0
        if code == BOX_ON_TARGET:
            img = raster.canvas(cell, cell, ON_TARGET_RED)
        a, b = inset, 16 - inset
        crate = box(a, a, b, b, 2.5)
        img = raster.fill(img, raster.coverage(crate), CRATE_FRAME)
        img = raster.fill(img, raster.coverage(box(a + 1.5, a + 1.5, b - 1.5, b - 1.5, 1)), CRATE)
        half = 0.9 * s
        cross = jnp.minimum(
            raster.sdf_segment(ys, xs, (a + 2) * s, (a + 2) * s, (b - 2) * s, (b - 2) * s, half),
            raster.sdf_segment(ys, xs, (a + 2) * s, (b - 2) * s, (b - 2) * s, (a + 2) * s, half),
        )
        img = raster.fill(img, raster.coverage(cross), CRATE_FRAME)
        img = raster.fill(img, raster.coverage(box(7, 7, 9, 9)), CRATE_DARK)
    if code in (PLAYER, PLAYER_ON_TARGET):  # the green alien: antennae, head with two eyes, body, legs
        alien = raster.sdf_union(
            box(4, 2, 12, 6),
            box(1, 5.5, 15, 7, 0.5),
            box(0, 7, 16, 12, 1),
            box(2, 11, 14, 13),
            raster.sdf_segment(ys, xs, 3.5 * s, 0.5 * s, 4.5 * s, 2.5 * s, 0.6 * s),
            raster.sdf_segment(ys, xs, 12.5 * s, 0.5 * s, 11.5 * s, 2.5 * s, 0.6 * s),
            box(4, 12, 5, 16),
            box(11, 12, 12, 16),
        )
        img = raster.fill(img, raster.coverage(alien), ALIEN)
        img = raster.fill(img, raster.coverage(jnp.minimum(box(5, 4, 7, 6), box(9, 4, 11, 6))), BLACK)
    return raster.to_uint8(img)
