"""Shisen-Sho (shape tiles): connectivity goldens checked against a plain-Python BFS, rules,
masks, generation, invariants, text, rendering, config errors."""

from collections import deque

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chi_square
import envs
from envs import shisensho, shisensho_paths
from envs.grammar import encode_pair

ENV = envs.make("shisensho")  # 6x6, 6 colours x 6 shapes: G1's game
G = ENV.board_size
STEP = jax.jit(ENV.step)
VALID = jax.jit(ENV.valid_actions)
RESET = jax.jit(ENV.reset)
RANDOM_ACTION = jax.jit(ENV.random_valid_action)


# --- an independent reference: breadth-first search over (cell, direction) ---------------


def min_turns(board, p, q, limit=3):
    """Fewest turns of an axis-aligned path from cell p to cell q through empty cells of the
    board padded with an empty ring (p and q themselves may be tiles), or None if more than
    `limit` turns are needed. 0-1 BFS: going straight costs 0, turning costs 1."""
    g = board.shape[0]
    start, end = (p[0] + 1, p[1] + 1), (q[0] + 1, q[1] + 1)

    def open_(r, c):
        if not (0 <= r < g + 2 and 0 <= c < g + 2):
            return False
        if (r, c) == end or not (1 <= r <= g and 1 <= c <= g):
            return True
        return board[r - 1, c - 1] == 0

    dirs = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    best, queue = {}, deque()
    for d, (dr, dc) in enumerate(dirs):
        if open_(start[0] + dr, start[1] + dc):
            best[(start[0] + dr, start[1] + dc, d)] = 0
            queue.append((start[0] + dr, start[1] + dc, d, 0))
    while queue:
        r, c, d, t = queue.popleft()
        if t > best.get((r, c, d), 99):
            continue
        if (r, c) == end:
            continue
        for nd, (dr, dc) in enumerate(dirs):
            nt = t + (nd != d)
            nr, nc = r + dr, c + dc
            if nt <= limit and open_(nr, nc) and nt < best.get((nr, nc, nd), 99):
                best[(nr, nc, nd)] = nt
                (queue.appendleft if nt == t else queue.append)((nr, nc, nd, nt))
    found = [t for (r, c, _), t in best.items() if (r, c) == end]
    return min(found) if found else None


def reference_legal(board, a, b):
    g = board.shape[0]
    p, q = divmod(a, g), divmod(b, g)
    if a == b or board[p] == 0 or board[p] != board[q]:
        return False
    turns = min_turns(board, p, q)
    return turns is not None and turns <= 2


def parse_board(rows):
    """Rows of space-separated cells: '.' empty, any other token a tile type (same token,
    same type); tokens are numbered in order of first appearance."""
    ids = {}
    grid = [[0 if tok == "." else ids.setdefault(tok, len(ids) + 1) for tok in row.split()] for row in rows]
    return np.array(grid, np.int32)


def act(r1, c1, r2, c2):
    return jnp.int32(encode_pair(r1, c1, r2, c2, G))


# --- connectivity goldens ----------------------------------------------------------------
EMPTY_ROW = ". . . . . ."
GOLDEN = {
    # name: (rows, first cell, second cell, legal, fewest turns per the BFS)
    "adjacent": (["A A . . . ."] + [EMPTY_ROW] * 5, (0, 0), (0, 1), True, 0),
    "straight": ([EMPTY_ROW] * 3 + ["A . . . . A"] + [EMPTY_ROW] * 2, (3, 0), (3, 5), True, 0),
    "one turn": (
        [EMPTY_ROW, ". A . . . .", ". B C D . .", ". E F G . .", ". . . . A .", EMPTY_ROW],
        (1, 1),
        (4, 4),
        True,
        1,
    ),
    "two turns inside": (
        [EMPTY_ROW, ". H I J K .", ". A B C A .", ". . D E . .", ". . . . . .", ". L M N O ."],
        (2, 1),
        (2, 4),
        True,
        2,
    ),
    "around the border": (["A B A . . .", "C D E . . ."] + [EMPTY_ROW] * 4, (0, 0), (0, 2), True, 2),
    "three turns needed": (
        [EMPTY_ROW, ". B C . . .", ". E A . F .", ". G H I . .", ". . . . J .", "A K . . . ."],
        (2, 2),
        (5, 0),
        False,
        3,
    ),
    "blocked": (
        [EMPTY_ROW, ". . B . . .", ". C A D . .", ". . E . . .", ". . . . A .", EMPTY_ROW],
        (2, 2),
        (4, 4),
        False,
        None,
    ),
    "different types": (["A B . . . ."] + [EMPTY_ROW] * 5, (0, 0), (0, 1), False, 0),
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_connectivity_goldens(name):
    rows, p, q, legal, turns = GOLDEN[name]
    board = parse_board(rows)
    assert min_turns(board, p, q) == turns  # the golden means what its name says
    state = ENV.from_board(board)
    for first, second in ((p, q), (q, p)):  # symmetric
        action = act(*first, *second)
        assert bool(VALID(state)[action]) == legal
        new, reward, done, info = STEP(jax.random.key(0), state, action)
        assert float(reward) == (1.0 if legal else -1.0) == float(info["raw_reward"])
        assert bool(info["legal"]) == legal
        if legal:
            assert new.board[first] == 0 and new.board[second] == 0 and int(new.score) == 1
            assert int(new.remaining) == int(state.remaining) - 2
        else:
            np.testing.assert_array_equal(new.board, state.board)
            assert int(new.score) == 0 and int(new.steps) == 1


def test_same_cell_empty_cells_and_invalid_ids_are_illegal():
    state = ENV.from_board(parse_board(["A A . . . ."] + [EMPTY_ROW] * 5))
    for action in (act(0, 0, 0, 0), act(0, 2, 0, 3), act(0, 0, 0, 2), ENV.invalid_action, -1, G**4 + 7):
        new, reward, _, info = STEP(jax.random.key(0), state, jnp.int32(action))
        assert float(reward) == -1.0 and not bool(info["legal"])
        np.testing.assert_array_equal(new.board, state.board)
    assert ENV.num_actions == G**4 + 1 and ENV.invalid_action == G**4
    assert not bool(VALID(state)[ENV.invalid_action])


def test_joined_pairs_match_bfs_on_random_boards():
    """All G^4 pairs of `joined_pairs` (whatever the cells hold) against the BFS."""
    rng = np.random.default_rng(0)
    joined = jax.jit(shisensho_paths.joined_pairs)
    for g in (4, 6, 8):
        for _ in range(4):
            board = rng.integers(1, 5, (g, g)) * (rng.random((g, g)) < rng.uniform(0.2, 0.9))
            got = np.asarray(joined(jnp.asarray(board, jnp.int32)))
            for a in range(g * g):
                for b in range(g * g):
                    if a != b:
                        turns = min_turns(board, divmod(a, g), divmod(b, g), limit=2)
                        assert got[a, b] == (turns is not None), (board, a, b)


def warm_states(count, moves, seed=0):
    """Boards in mid-game: reset, then random valid moves."""
    warm = jax.jit(lambda k: envs.warmup_states(ENV, k, count, num_moves=moves))
    return warm(jax.random.key(seed))


def test_valid_actions_agree_with_step_and_bfs():
    states = warm_states(6, 5)
    rng = np.random.default_rng(1)
    for i in range(6):
        state = envs.unbatch(states, i)
        board = np.asarray(state.board)
        mask = np.asarray(VALID(state))[:-1].reshape(G * G, G * G)
        # the mask is exactly the BFS's legal pairs (same-type candidates are all it can hold)
        flat = board.reshape(-1)
        for a in np.flatnonzero(flat):
            for b in np.flatnonzero(flat == flat[a]):
                assert mask[a, b] == reference_legal(board, a, b)
        assert mask.sum() == 0 or (mask & (flat[:, None] == flat[None, :]) & (flat[:, None] > 0)).sum() == mask.sum()
        np.testing.assert_array_equal(mask, mask.T)
        for action in np.flatnonzero(mask.reshape(-1)):  # every valid action scores +1
            _, reward, _, _ = STEP(jax.random.key(0), state, jnp.int32(action))
            assert float(reward) == 1.0
        invalid = np.flatnonzero(~mask.reshape(-1))
        for action in rng.choice(invalid, 40, replace=False):  # a sample of the rest scores -1, no change
            new, reward, _, _ = STEP(jax.random.key(0), state, jnp.int32(action))
            assert float(reward) == -1.0
            np.testing.assert_array_equal(new.board, state.board)


def test_random_valid_action_is_valid_and_covers_both_orders():
    state = envs.unbatch(warm_states(1, 3, seed=4), 0)
    mask = np.asarray(VALID(state))
    picks = np.asarray(jax.vmap(lambda k: RANDOM_ACTION(k, state))(jax.random.split(jax.random.key(0), 400)))
    assert mask[picks].all()
    assert set(picks.tolist()) == set(np.flatnonzero(mask).tolist())  # uniform over ~a dozen ids
    dead = ENV.from_board(parse_board(GOLDEN["blocked"][0]))
    assert int(RANDOM_ACTION(jax.random.key(0), dead)) == ENV.invalid_action


# --- episode end -----------------------------------------------------------------------------


def test_done_when_cleared_or_stuck():
    last_pair = ENV.from_board(parse_board(["A . . . . A"] + [EMPTY_ROW] * 5))
    assert not bool(last_pair.done)
    new, reward, done, _ = STEP(jax.random.key(0), last_pair, act(0, 0, 0, 5))
    assert float(reward) == 1.0 and bool(done) and int(new.remaining) == 0
    # removing the A pair leaves two B tiles that no path with <= 2 turns joins
    stuck_after = parse_board([EMPTY_ROW, ". C D . . .", ". E B . F .", ". G H I . .", ". . . . J .", "B K A A . ."])
    state = ENV.from_board(stuck_after)
    assert not bool(state.done)
    new, reward, done, _ = STEP(jax.random.key(0), state, act(5, 2, 5, 3))
    assert float(reward) == 1.0 and bool(done) and int(new.remaining) == int(state.remaining) - 2
    assert min_turns(np.asarray(new.board), (2, 2), (5, 0)) == 3
    # a board with no legal pair at all is done from the start; actions change nothing
    dead = ENV.from_board(parse_board(GOLDEN["blocked"][0]))
    assert bool(dead.done) and not np.asarray(VALID(dead)).any()
    new, reward, done, _ = STEP(jax.random.key(0), dead, act(2, 2, 4, 4))
    assert float(reward) == -1.0 and bool(done)


def test_full_board_shortcut_matches_the_general_test():
    """`reset` decides legality on full boards from positions alone; check it against the
    general table test on full boards with many same-side and adjacent pairs."""
    env = envs.make("shisensho", num_colors=3, num_shapes=3)
    rng = np.random.default_rng(2)
    for _ in range(20):
        board = rng.permutation(np.repeat(np.arange(1, 10), 4)).reshape(G, G)
        state = env.from_board(board)
        np.testing.assert_array_equal(shisensho_paths.full_board_pairs(state.pairs, G), state.legal)


# --- invariants (hypothesis) --------------------------------------------------------------


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), moves=st.lists(st.integers(0, ENV.num_actions), min_size=1, max_size=12))
def test_invariants_under_any_actions(seed, moves):
    state = RESET(jax.random.key(seed))
    counts0 = np.bincount(np.asarray(state.board).reshape(-1), minlength=ENV.num_types + 1)
    assert (counts0[1:] % 4 == 0).all() and counts0[0] == 0
    for i, move in enumerate(moves):
        # alternate raw ids (mostly invalid) with valid moves so boards really change
        action = RANDOM_ACTION(jax.random.key(i), state) if i % 2 else jnp.int32(move)
        state, reward, done, _ = STEP(jax.random.key(i), state, action)
        board = np.asarray(state.board)
        counts = np.bincount(board.reshape(-1), minlength=ENV.num_types + 1)
        assert (counts[1:] % 2 == 0).all() and (counts[1:] <= counts0[1:]).all()
        assert int(state.remaining) == (board > 0).sum() == G * G - 2 * int(state.score)
        np.testing.assert_array_equal(np.asarray(state.faces) > 0, board > 0)
        assert bool(done) == (not np.asarray(VALID(state)).any())


# --- generation --------------------------------------------------------------------------


def test_reset_is_deterministic_and_like_the_original():
    a, b, c = RESET(jax.random.key(7)), RESET(jax.random.key(7)), RESET(jax.random.key(8))
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(a.board, c.board)
    counts = np.bincount(np.asarray(a.board).reshape(-1))
    assert counts[0] == 0 and sorted(counts[counts > 0].tolist()) == [4] * 9  # 9 types x 4
    assert int(a.remaining) == 36 and int(a.score) == 0 and not bool(a.done)

    # same key and actions -> the same trajectory
    def roll(key):
        state = RESET(key)
        for i in range(5):
            state, *_ = STEP(jax.random.key(i), state, RANDOM_ACTION(jax.random.key(100 + i), state))
        return state

    chex.assert_trees_all_equal(roll(jax.random.key(3)), roll(jax.random.key(3)))


def test_deals_are_uniform():
    """The deal (hashed words -> 9 of the 36 types by Floyd's subset -> tiles placed by a
    random permutation) draws uniformly: every type equally likely in a cell and on a board;
    the second cell shares the first one's type with probability 3/35; the permutation of one
    deal's words puts tile 1 at a uniform offset from tile 0. A generator without its mixing
    steps fails these chi-square / binomial bounds."""
    n = 6000
    boards = np.asarray(jax.jit(jax.vmap(ENV.reset))(jax.random.split(jax.random.key(0), n)).board).reshape(n, -1)
    chi_square.assert_uniform(boards[:, 0], range(1, 37), "type of cell 0")
    chi_square.assert_uniform(boards[:, -1], range(1, 37), "type of the last cell")
    chi_square.assert_uniform(np.concatenate([np.unique(b) for b in boards[:1000]]), range(1, 37), "types on a board")
    chi_square.assert_binomial(int((boards[:, 0] == boards[:, 1]).sum()), n, 3 / 35, "cells 0 and 1 share a type")
    deal = jax.jit(jax.vmap(lambda k: envs.core.random_permutation(shisensho.hashed_words(k, G * G))))
    perms = np.asarray(deal(jax.random.split(jax.random.key(1), n)))
    chi_square.assert_uniform(perms[:, 0], range(G * G), "cell of tile 0")
    chi_square.assert_uniform((perms[:, 1] - perms[:, 0]) % (G * G), range(1, G * G), "offset of tile 1 from tile 0")


def test_few_types_repeat_in_groups_of_four():
    env = envs.make("shisensho", board_size=8, num_colors=2, num_shapes=2, image_size=(504, 448))
    assert env.max_copies == 16
    state = jax.jit(env.reset)(jax.random.key(0))
    board = np.asarray(state.board)
    assert sorted(np.bincount(board.reshape(-1))[1:].tolist()) == [16, 16, 16, 16]
    assert state.pairs.shape == state.legal.shape == (4 * 120,)  # 4 types on 16 cells each
    # mid-game, the legal pairs of these big groups are exactly the BFS's
    step, pick, valid = jax.jit(env.step), jax.jit(env.random_valid_action), jax.jit(env.valid_actions)
    for i in range(12):
        state, reward, *_ = step(jax.random.key(i), state, pick(jax.random.key(i), state))
        assert float(reward) == 1.0
    board, g = np.asarray(state.board), env.board_size
    mask = np.asarray(valid(state))[:-1].reshape(g * g, g * g)
    flat = board.reshape(-1)
    for a in np.flatnonzero(flat):
        for b in np.flatnonzero(flat == flat[a]):
            assert mask[a, b] == reference_legal(board, a, b)
    assert mask.sum() == (mask & (flat[:, None] == flat[None, :])).sum()


def test_from_board_lists_pairs_for_any_type_counts():
    """Boards set up by hand may hold many types twice and some types once: every same-type
    pair is listed (at most 9 groups of 4 = 54 pairs on 36 cells), a lone tile has none."""
    env = envs.make("shisensho", num_colors=6, num_shapes=6)
    assert env.num_pairs == 54
    board = np.repeat(np.arange(1, 19), 2).reshape(G, G)  # 18 types, each twice, side by side
    state = env.from_board(board)
    assert state.pairs.shape == (54,) and int(np.asarray(state.legal).sum()) == 18
    mask = np.asarray(VALID(state))[:-1].reshape(G * G, G * G)
    assert mask.sum() == 36 and all(mask[2 * i, 2 * i + 1] and mask[2 * i + 1, 2 * i] for i in range(18))
    lone = board.copy()
    lone[0, 0] = 19  # type 1 is now a lone tile, type 19 too: neither has a pair
    state = env.from_board(lone)
    assert int(np.asarray(state.legal).sum()) == 17 and not np.asarray(VALID(state))[act(0, 0, 0, 1)]
    with pytest.raises(ValueError, match="appears 5 times"):
        env.from_board(np.where(np.arange(G * G).reshape(G, G) < 5, 1, 0))


def solve(board):
    """Depth-first search for a clearing order (small boards only)."""
    seen = set()

    def dfs(b):
        key = b.tobytes()
        if not b.any():
            return True
        if key in seen:
            return False
        seen.add(key)
        g = b.shape[0]
        flat = b.reshape(-1)
        for a in np.flatnonzero(flat):
            for c in np.flatnonzero(flat == flat[a]):
                if c > a and reference_legal(b, a, c):
                    nb = b.copy().reshape(-1)
                    nb[[a, c]] = 0
                    if dfs(nb.reshape(g, g)):
                        return True
        return False

    return dfs(board)


def test_solvable_boards_can_be_cleared():
    env = envs.make("shisensho", board_size=4, solvable=True)
    reset = jax.jit(env.reset)
    for seed in range(6):
        board = np.asarray(reset(jax.random.key(seed)).board)
        counts = np.bincount(board.reshape(-1))
        assert counts[0] == 0 and set(counts[1:][counts[1:] > 0].tolist()) == {4}
        assert not (board[:, 0::2] == board[:, 1::2]).all()  # not the side-by-side fallback
        assert solve(board), board


def test_clearing_order_clears_larger_boards():
    """The positions' removal order behind solvable deals, replayed with the BFS."""
    env = envs.make("shisensho", solvable=True)
    orders = np.asarray(jax.jit(jax.vmap(env._clearing_order))(jax.random.split(jax.random.key(0), 4)))
    for order in orders:
        filled = np.ones((G, G), np.int32)
        assert sorted(order.reshape(-1).tolist()) == list(range(G * G))
        assert not (order == np.arange(G * G).reshape(-1, 2)).all()
        for a, b in order:
            assert min_turns(filled, divmod(a, G), divmod(b, G), limit=2) is not None
            filled.reshape(-1)[[a, b]] = 0


# --- jit / vmap ----------------------------------------------------------------------------


def test_step_compiles_once_and_vmaps():
    step = jax.jit(chex.assert_max_traces(ENV.step, n=1))
    s0 = RESET(jax.random.key(0))
    s1, *_ = step(jax.random.key(1), s0, jnp.int32(3))
    step(jax.random.key(2), s1, RANDOM_ACTION(jax.random.key(3), s1))
    chex.clear_trace_counter()
    batch = jax.vmap(RESET)(jax.random.split(jax.random.key(0), 4))
    actions = jax.vmap(RANDOM_ACTION)(jax.random.split(jax.random.key(1), 4), batch)
    new, reward, _, _ = jax.vmap(STEP)(jax.random.split(jax.random.key(2), 4), batch, actions)
    assert (np.asarray(reward) == 1).all() and (np.asarray(new.remaining) == 34).all()
    # parallel actions from one state: G answers scored without touching the state
    rewards = envs.parallel_step(ENV, jax.random.key(0), s0, jnp.stack([actions[0], jnp.int32(0)]))[1]
    assert rewards.shape == (2,)


# --- text ------------------------------------------------------------------------------------

ORIGINAL_PROMPT = (
    "You are playing a 'Shisen-sho' puzzle game.\nThe goal is to match pairs of identical tiles by connecting them "
    "with a path that has at most 2 turns and doesn't cross any other tiles.\nThe tiles are distinguished by their "
    "color and shape:\n- Red, Green, Blue, Yellow, Magenta, Cyan, etc.\n- Shapes include: circle, square, triangle, "
    "diamond, cross, star, etc.\nPlease analyze the game board and identify two matching tiles that can be connected "
    "according to these rules.\nReturn your answer as follows:\n1. First coordinate: (row1, col1)\n2. Second "
    "coordinate: (row2, col2)\nWhere row and col are 0-indexed numbers such as (0, 1), starting from the top-left of "
    "the board.\nFirst describe the board in <perception></perception>. Then output your thinking process in "
    "<think></think> and final action in <answer>(row1, col1) (row2, col2)</answer>."
)


def test_prompt_is_the_original_and_lists_what_is_in_use():
    assert ENV.prompt == ORIGINAL_PROMPT
    small = envs.make("shisensho", num_colors=2, num_shapes=3)
    assert "- Red, Green, etc.\n- Shapes include: circle, square, triangle, etc." in small.prompt
    assert "Pink" in envs.make("shisensho", preset="composition").prompt


def test_describe_format_and_round_trip():
    board = np.zeros((G, G), np.int32)
    board[0, 0] = 1  # Red circle
    board[0, 2] = 6 * 2 + 2  # Blue square
    board[5, 5] = 6 * 5 + 6  # Cyan star
    text = ENV.describe(ENV.from_board(board))
    lines = text.split("\n")
    assert lines[0] == " Red circle | - | Blue square | - | - | - "
    assert lines[5] == " - | - | - | - | - | Cyan star "
    assert len(lines) == G and all(line.count("|") == G - 1 for line in lines)
    np.testing.assert_array_equal(ENV.from_board(text).board, board)
    state = RESET(jax.random.key(5))
    np.testing.assert_array_equal(ENV.from_board(ENV.describe(state)).board, state.board)
    with pytest.raises(ValueError, match="one 6x6 board"):
        ENV.describe(jax.vmap(RESET)(jax.random.split(jax.random.key(0), 2)))


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<answer>(0, 1) (2, 3)</answer>", (0, 1, 2, 3)),
        ("thinking... <answer>(5,5)\n(0, 0)</answer>", (5, 5, 0, 0)),
        ("<answer>(2,   3) (4,\t5)</answer>", (2, 3, 4, 5)),  # G1's `,\s*`: any whitespace after a comma
        ("答案 <answer>(1, 0) (1, 2)</answer> ✓", (1, 0, 1, 2)),
        ("<answer>(0, 6) (1, 1)</answer>", None),  # out of range: invalid, not (1, 0)
        ("<answer>(0, 1) (2, 99999999999999999999)</answer>", None),
        ("<answer>( 0, 1) (2, 3)</answer>", None),  # G1's regex: no space after "("
        ("<answer>(0, 1)</answer>", None),
        ("<answer>7</answer>", None),  # the original's integer fallback is a same-cell (invalid) move
        ("", None),
        ("(0, 1) (2, 3)", None),
    ],
)
def test_parse(text, expected):
    got = ENV.parse(text)
    assert got == (ENV.invalid_action if expected is None else encode_pair(*expected, G))


def test_from_board_errors():
    with pytest.raises(ValueError, match=r"shape \(6, 6\)"):
        ENV.from_board(np.zeros((4, 4), int))
    with pytest.raises(ValueError, match=r"\[0, 36\]"):
        ENV.from_board(np.full((G, G), 37))
    with pytest.raises(ValueError, match="unknown tile 'Gold circle'"):
        ENV.from_board("\n".join([" Gold circle " + "| - " * 5] * G))
    with pytest.raises(ValueError, match="appears 5 times"):
        ENV.from_board(np.array([1] * 5 + [0] * 31).reshape(G, G))


# --- rendering -------------------------------------------------------------------------------


def test_render_colours_at_cell_centres_and_score_text():
    render = jax.jit(ENV.render)
    board = np.zeros((G, G), np.int32)
    board[0, 0], board[0, 1] = 1, 1  # Red circle pair
    board[2, 3] = 6 * 2 + 2  # Blue square
    board[4, 1] = 6 * 1 + 4  # Green diamond
    state = ENV.from_board(board)
    img = np.asarray(render(state))
    assert img.shape == (*ENV.image_size, 3) and img.dtype == np.uint8
    L = ENV.layout

    def centre(r, c):
        return img[L.board_y + r * L.cell + L.cell // 2, L.board_x + c * L.cell + L.cell // 2]

    assert centre(0, 0).tolist() == [255, 0, 0]
    assert centre(2, 3).tolist() == [0, 0, 255]
    assert centre(4, 1).tolist() == [0, 255, 0]
    assert centre(3, 3).tolist() == [255, 255, 255]  # empty
    # the grey border of a cell
    assert img[L.board_y, L.board_x + L.cell // 2].tolist() == [200, 200, 200]
    after, *_ = STEP(jax.random.key(0), state, act(0, 0, 0, 1))
    img2 = np.asarray(render(after))
    strip = slice(L.strip_y, L.strip_y + L.strip_h)
    assert (img[strip] != img2[strip]).any()  # "Score: 0 ... Remaining: 4" -> "Score: 1 ... Remaining: 2"
    assert (img[strip] < 128).any()  # there is dark text
    assert centre(0, 0).tolist() != np.asarray(img2)[L.board_y + L.cell // 2, L.board_x + L.cell // 2].tolist()


def test_coordinate_labels_draw_ink_outside_the_board():
    env = envs.make("shisensho", coordinate_labels=True)
    plain = np.asarray(jax.jit(ENV.render)(ENV.from_board(np.zeros((G, G), int))))
    labelled = np.asarray(jax.jit(env.render)(env.from_board(np.zeros((G, G), int))))
    L = env.layout
    assert (labelled[: L.board_y] < 128).any() and (labelled[:, : L.board_x] < 128).any()
    assert not (plain[: ENV.layout.board_y] < 128).any()


# --- configuration -------------------------------------------------------------------------


def test_presets():
    expected = {
        "base": (6, 6, 6),
        "more_shapes_colors": (6, 16, 6),
        "more_tiles": (12, 6, 6),
        "composition": (12, 16, 6),
    }
    for preset, (g, colours, shapes) in expected.items():
        env = envs.make("shisensho", preset=preset)
        assert (env.board_size, env.num_colors, env.num_shapes) == (g, colours, shapes)
        assert env.image_size == shisensho.PRESETS[preset]["image_size"]
    assert envs.make("shisensho", preset="composition", board_size=8).board_size == 8  # explicit wins


@pytest.mark.parametrize(
    "config,message",
    [
        (dict(board_size=7), "must be even"),
        (dict(board_size=14), r"board_size=14 must be an integer in \[4, 12\]"),
        (dict(num_colors=0), r"num_colors=0 must be an integer in \[1, 16\]"),
        (dict(num_colors=17), "num_colors"),
        (dict(num_shapes=7), "num_shapes"),
        (dict(preset="hard"), "preset='hard' is not supported"),
        (dict(image_size=(84, 84)), "cells need >= 16 px"),
        (dict(coordinate_labels=1), "coordinate_labels=1 must be True or False"),
        (dict(image_size=(504, 449)), "multiples of 28"),
        (dict(colors=3), "Valid options"),
    ],
)
def test_config_errors(config, message):
    with pytest.raises(envs.ConfigError, match=message):
        envs.make("shisensho", **config)


def test_large_board_plays():
    env = envs.make("shisensho", preset="composition")
    state = jax.jit(env.reset)(jax.random.key(0))
    step, pick = jax.jit(env.step), jax.jit(env.random_valid_action)
    for i in range(5):
        state, reward, *_ = step(jax.random.key(i), state, pick(jax.random.key(i), state))
        assert float(reward) == 1.0
    assert int(state.remaining) == 144 - 10
    board = np.asarray(state.board)
    legal = np.asarray(jax.jit(env.valid_actions)(state))[:-1].reshape(144, 144)
    flat = board.reshape(-1)
    for a in np.flatnonzero(flat)[:30]:
        for b in np.flatnonzero(flat == flat[a]):
            assert legal[a, b] == reference_legal(board, a, b)
