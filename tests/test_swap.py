"""Swap (match-3): line detection, scoring, gravity and cascades on hand-written boards (with
hand-written refills), a plain-Python reference of the original rules, legal-swap masks,
invariants after every step, the cascade cap and reshuffle fallback, text and rendering."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chi_square
import envs
from envs import raster, swap
from envs.grammar import encode_pair

ENV = envs.make("swap")
G = ENV.board_size
PARAMS = ENV.default_params
RENDER = jax.jit(ENV.render)


# ---------------------------------------------------------------------------------------
# Writing boards by hand
# ---------------------------------------------------------------------------------------


def grid(text, filler):
    """Board from rows of space-separated tokens: letters a, b, c... are tile types 0, 1, 2...;
    "." takes the filler's value at that cell."""
    rows = [line.split() for line in text.strip().splitlines()]
    out = np.array(filler, np.int32, copy=True)
    for r, row in enumerate(rows):
        for c, tok in enumerate(row):
            if tok != ".":
                out[r, c] = ord(tok) - ord("a")
    return out


def unique_filler(shape):
    """Filler tiles that never match anything (distinct types >= 1000)."""
    return 1000 + np.arange(np.prod(shape)).reshape(shape)


def background(size=G):
    """A board of types 3..11 with no line and no legal swap: type 3 + (3r + c) mod 9 (equal
    tiles are 9 apart along rows and 3 apart down columns). Scenario tiles a, b, c (0..2)
    placed on it are the only ones that can move into lines."""
    r, c = np.indices((size, size))
    return 3 + (3 * r + c) % 9


def mask(text):
    return np.array([[tok == "x" for tok in line.split()] for line in text.strip().splitlines()])


def table_refill(table):
    """refill_fn reading wave w's tiles from a hand-written table."""
    table = jnp.asarray(table, jnp.int32)
    return lambda wave: table[jnp.minimum(wave, table.shape[0] - 1)]


@functools.cache
def cascade_fn(max_waves):
    return jax.jit(lambda b, t: swap.cascade(b, swap.line_mask(b), table_refill(t), max_waves))


def run_cascade(board, refills, max_waves=8):
    out, points, capped = cascade_fn(max_waves)(jnp.asarray(board, jnp.int32), jnp.asarray(refills, jnp.int32))
    return np.asarray(out), int(points), bool(capped)


def swap_ids(r1, c1, r2, c2):
    return {encode_pair(r1, c1, r2, c2, G), encode_pair(r2, c2, r1, c1, G)}


def act(r1, c1, r2, c2):
    return jnp.int32(encode_pair(r1, c1, r2, c2, G))


# ---------------------------------------------------------------------------------------
# Line detection
# ---------------------------------------------------------------------------------------

LINE_CASES = {
    "row of 3": (
        """
        a a a . .
        . . . . .
        . . . . .
        . . . . .
        . . . . .""",
        """
        x x x . .
        . . . . .
        . . . . .
        . . . . .
        . . . . .""",
    ),
    "column of 3 at the edge": (
        """
        . . . . .
        . . . . .
        . . . . a
        . . . . a
        . . . . a""",
        """
        . . . . .
        . . . . .
        . . . . x
        . . . . x
        . . . . x""",
    ),
    "4 and 5 in a line": (
        """
        b b b b .
        . . . . .
        c c c c c
        . . . . .
        . . . . .""",
        """
        x x x x .
        . . . . .
        x x x x x
        . . . . .
        . . . . .""",
    ),
    "L shape": (
        """
        a . . . .
        a . . . .
        a a a . .
        . . . . .
        . . . . .""",
        """
        x . . . .
        x . . . .
        x x x . .
        . . . . .
        . . . . .""",
    ),
    "T shape": (
        """
        . b b b .
        . . b . .
        . . b . .
        . . . . .
        . . . . .""",
        """
        . x x x .
        . . x . .
        . . x . .
        . . . . .
        . . . . .""",
    ),
    "pairs and gaps are not lines": (
        """
        a a . a a
        b . . . .
        b . c . c
        . . . . .
        a b a b a""",
        """
        . . . . .
        . . . . .
        . . . . .
        . . . . .
        . . . . .""",
    ),
    "different types never join": (
        """
        a a b b b
        a . . . .
        c . . . .
        . . . . .
        . . . . .""",
        """
        . . x x x
        . . . . .
        . . . . .
        . . . . .
        . . . . .""",
    ),
}


@pytest.mark.parametrize("name", LINE_CASES)
def test_line_mask_golden(name):
    board_text, expected = LINE_CASES[name]
    board = grid(board_text, unique_filler((5, 5)))
    np.testing.assert_array_equal(np.asarray(swap.line_mask(jnp.asarray(board))), mask(expected))


# ---------------------------------------------------------------------------------------
# Scoring, gravity, cascades (pure functions, hand-written refills: no PRNG stream involved)
# ---------------------------------------------------------------------------------------

NO_MATCH_REFILLS = 2000 + np.arange(8 * 5 * 5).reshape(8, 5, 5)  # fresh tiles that match nothing


@pytest.mark.parametrize(
    "name,points",
    [("row of 3", 6), ("4 and 5 in a line", 72), ("L shape", 20), ("T shape", 20)],
)
def test_one_wave_scores_union(name, points):
    """One wave clears the union of all lines: L cells score L * (L - 1) (two lines of 4 and 5
    at once are 9 cells: 72, not 12 + 20)."""
    board = grid(LINE_CASES[name][0], unique_filler((5, 5)))
    _, got, capped = run_cascade(board, NO_MATCH_REFILLS)
    assert got == points and not capped


def test_two_disjoint_lines_score_30():
    board = grid(
        """
        a a a . .
        . . . . .
        . . . . b
        . . . . b
        . . . . b""",
        unique_filler((5, 5)),
    )
    assert run_cascade(board, NO_MATCH_REFILLS)[1] == 30


def test_gravity_golden():
    """Cleared cells vanish, the tiles above fall in order, the emptied top cells take the
    refill tiles at the same positions."""
    board = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]])
    cleared = np.array([[0, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, 0]], bool)
    refill = np.array([[-1, -2, -3], [-4, -5, -6], [-7, -8, -9], [-10, -11, -12]])
    out = swap.fall_and_refill(jnp.asarray(board), jnp.asarray(cleared), jnp.asarray(refill))
    np.testing.assert_array_equal(np.asarray(out), [[-1, 2, -3], [-4, 5, -6], [1, 8, 6], [7, 11, 12]])


CASCADE_BOARD = """
    . . . . .
    . b . . .
    . b . . .
    a a a . .
    . b . . ."""


def test_cascade_by_gravity_golden():
    """Wave 1 clears the a-row; the b's above it fall onto the lower b: wave 2 (6 + 6)."""
    filler = unique_filler((5, 5))
    board = grid(CASCADE_BOARD, filler)
    out, points, capped = run_cascade(board, NO_MATCH_REFILLS)
    assert points == 12 and not capped
    r = NO_MATCH_REFILLS
    f = filler
    expected = np.array(
        [
            [r[0, 0, 0], r[1, 0, 1], r[0, 0, 2], f[0, 3], f[0, 4]],
            [f[0, 0], r[1, 1, 1], f[0, 2], f[1, 3], f[1, 4]],
            [f[1, 0], r[1, 2, 1], f[1, 2], f[2, 3], f[2, 4]],
            [f[2, 0], r[0, 0, 1], f[2, 2], f[3, 3], f[3, 4]],
            [f[4, 0], f[0, 1], f[4, 2], f[4, 3], f[4, 4]],
        ]
    )
    np.testing.assert_array_equal(out, expected)


def test_cascade_by_refill_golden():
    """The same board, but wave 1's refill drops c c c into row 0: wave 2 clears the b column
    and the c row together (6 cells: 30)."""
    refills = NO_MATCH_REFILLS.copy()
    refills[0, 0, :3] = 2  # c
    _, points, _ = run_cascade(grid(CASCADE_BOARD, unique_filler((5, 5))), refills)
    assert points == 6 + 30


def test_cascade_cap_reports_lines_left():
    refills = np.zeros((8, 5, 5), np.int32)  # every refill is type a: lines forever
    out, points, capped = run_cascade(grid(CASCADE_BOARD, unique_filler((5, 5))), refills, max_waves=3)
    assert capped and swap.line_mask(jnp.asarray(out)).any()
    assert points > 12


def reference_cascade(board, refills, max_waves):
    """The original's rules in plain Python (gamematch3.py find_matches / remove_matches /
    fill_empty_spaces), with the refill of wave w read from refills[w]."""
    b = [list(row) for row in board]
    n = len(b)
    points = 0
    for wave in range(max_waves + 1):
        matches = set()
        for i in range(n):  # horizontal runs
            j = 0
            while j < n - 2:
                k = j + 1
                while k < n and b[i][k] == b[i][j]:
                    k += 1
                if k - j >= 3:
                    matches.update((i, m) for m in range(j, k))
                    j = k
                else:
                    j += 1
        for j in range(n):  # vertical runs
            i = 0
            while i < n - 2:
                k = i + 1
                while k < n and b[k][j] == b[i][j]:
                    k += 1
                if k - i >= 3:
                    matches.update((m, j) for m in range(i, k))
                    i = k
                else:
                    i += 1
        if not matches or wave == max_waves:
            return b, points, bool(matches)
        points += len(matches) * (len(matches) - 1)
        for r, c in matches:
            b[r][c] = None
        for c in range(n):  # gravity, then refill the empty top cells
            col = [b[r][c] for r in range(n) if b[r][c] is not None]
            col = [None] * (n - len(col)) + col
            for r in range(n):
                b[r][c] = refills[wave][r][c] if col[r] is None else col[r]


CASCADE_6 = jax.jit(lambda b, t: swap.cascade(b, swap.line_mask(b), table_refill(t), 6))


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_cascade_matches_reference(data):
    """Random 6x6 boards of 3 types (lines everywhere) and random refills: same board, points
    and cap flag as the plain-Python rules."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    board = rng.integers(0, 3, (6, 6))
    refills = rng.integers(0, 3, (6, 6, 6))
    out, points, capped = CASCADE_6(jnp.asarray(board, jnp.int32), jnp.asarray(refills, jnp.int32))
    ref_board, ref_points, ref_capped = reference_cascade(board.tolist(), refills.tolist(), 6)
    assert np.asarray(out).tolist() == ref_board
    assert (int(points), bool(capped)) == (ref_points, ref_capped)


# ---------------------------------------------------------------------------------------
# Stepping: one jitted function for every test
# ---------------------------------------------------------------------------------------


def all_swap_actions():
    ids = sorted(
        {
            a
            for r in range(G)
            for c in range(G)
            for r2, c2 in ((r, c + 1), (r + 1, c))
            if r2 < G and c2 < G
            for a in swap_ids(r, c, r2, c2)
        }
    )
    extra = [
        encode_pair(0, 0, 0, 0, G),
        encode_pair(0, 0, 1, 1, G),
        encode_pair(0, 0, 0, 2, G),
        ENV.invalid_action,
        -5,
        G**4 + 7,
    ]
    return np.array(ids + extra, np.int32)


ACTIONS = all_swap_actions()  # every adjacent swap in both orders, then non-adjacent / out-of-range ids
BATCH = 8
# A batch of states, each stepped with every id in ACTIONS (vmap of parallel_step). All tests
# step through this, always with explicit params: the trace counter fails any test that makes
# it compile a second time.
STEP_ALL = jax.jit(
    jax.vmap(
        chex.assert_max_traces(lambda k, s, p: envs.parallel_step(ENV, k, s, jnp.asarray(ACTIONS), p), n=1),
        in_axes=(0, 0, None),
    )
)
VALID_ALL = jax.jit(jax.vmap(ENV.valid_actions))


def batch(states):
    """Up to BATCH single states as one batch (padded by repeating the last)."""
    states = list(states) + [states[-1]] * (BATCH - len(states))
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def step_all(states, params=PARAMS, seed=0):
    """-> numpy (new states, rewards, dones, infos), each [BATCH, len(ACTIONS)]."""
    out = STEP_ALL(jax.random.split(jax.random.key(seed), BATCH), states, params)
    return jax.tree.map(np.asarray, out)


def column(action):
    return int(np.flatnonzero(ACTIONS == action)[0])


def row_state(states, i, j):
    """State i after action ACTIONS[j], as a single state."""
    return jax.tree.map(lambda x: jnp.asarray(x[i, j]), states)


def rollout(env, steps):
    """Jitted: BATCH games (vmapped), each a reset and `steps` steps with actions that are a
    valid swap half the time and any id (almost always invalid) otherwise. Returns the final
    states and per-step facts for the invariants."""

    def run(key):  # one game
        def body(state, k):
            pick, valid_key, any_key, step_key = jax.random.split(k, 4)
            action = jnp.where(
                jax.random.bernoulli(pick),
                env.random_valid_action(valid_key, state),
                jax.random.randint(any_key, (), -2, env.num_actions + 2),
            )
            new, reward, _, info = env.step(step_key, state, action, env.default_params)
            facts = dict(
                playable=swap.playable(new.board),
                in_range=(new.board >= 0).all() & (new.board < env.num_types).all(),
                legal=info["legal"],
                gained=new.score - state.score,
                raw=info["raw_reward"],
                used=state.moves_left - new.moves_left,
                unchanged=(new.board == state.board).all() & (new.shuffles == state.shuffles),
            )
            return new, facts

        state = env.reset(key)
        final, facts = jax.lax.scan(body, state, jax.random.split(key, steps))
        return final, facts | {"start_playable": swap.playable(state.board)}

    return jax.jit(lambda key: jax.vmap(run)(jax.random.split(key, BATCH)))


ROLL = rollout(ENV, 12)
# 3 tile types on 5x5 with a cascade cap of 2: long cascades, caps hit and fixed up all the time
SMALL = envs.make("swap", board_size=5, num_colors=1, num_shapes=3, image_size=(252, 224), max_cascades=2)
ROLL_SMALL = rollout(SMALL, 12)


# ---------------------------------------------------------------------------------------
# Legal swaps (either tile, both tiles) and steps on golden boards
# ---------------------------------------------------------------------------------------

SWAP_CASES = {
    # a moves right and lands in a row of a's
    "moved tile extends a row": (
        """
        a b a a . . . .""",
        (0, 0, 0, 1),
        6,
    ),
    # a moves right into the gap of a vertical a . a
    "moved tile fills a column gap": (
        """
        . . . . . . . .
        . . . . a . . .
        . . . a b . . .
        . . . . a . . .""",
        (2, 3, 2, 4),
        6,
    ),
    # the OTHER tile (b, moving left) makes the line
    "the other tile makes the line": (
        """
        . . . . . . . .
        . . . . . . . .
        . b b a b . . .""",
        (2, 3, 2, 4),
        6,
    ),
    # both tiles complete a line: b b b above, a a a below
    "both tiles make lines": (
        """
        a b b . . . . .
        b a a . . . . .""",
        (0, 0, 1, 0),
        30,
    ),
}


@pytest.mark.parametrize("name", SWAP_CASES)
def test_golden_swaps(name):
    """Exactly the expected swap (in either order) is legal, by the mask and by step; it
    scores at least its first wave (later waves come from random refills)."""
    text, pair, first_wave = SWAP_CASES[name]
    states = batch([ENV.from_board(grid(text, background()))])
    assert set(np.flatnonzero(np.asarray(VALID_ALL(states)[0])).tolist()) == swap_ids(*pair)
    new, reward, _, info = step_all(states)
    assert set(ACTIONS[info["legal"][0]].tolist()) == swap_ids(*pair)
    for action in swap_ids(*pair):
        j = column(action)
        assert reward[0, j] == 1.0 and info["raw_reward"][0, j] >= first_wave
        assert new.score[0, j] == info["raw_reward"][0, j] and new.moves_left[0, j] == ENV.max_moves - 1


GRAVITY_CASCADE_BOARD = """
    . . . . . . . .
    . . . . . . . .
    . . . . . . . .
    . . . . . . . .
    . b . . . . . .
    . b . . . . . .
    a c a a . . . .
    . b . . . . . ."""


def test_step_cascade_by_gravity_scores_both_waves():
    """Swapping (6,0)-(6,1) clears row 6 cols 1..3; column 1's b's then fall into a second
    line whatever the refill (8 copies, 8 different keys)."""
    states = batch([ENV.from_board(grid(GRAVITY_CASCADE_BOARD, background()))])
    new, _, _, info = step_all(states)
    j = column(encode_pair(6, 0, 6, 1, G))
    assert info["legal"][:, j].all() and (info["raw_reward"][:, j] >= 12).all()
    assert all(bool(swap.playable(row_state(new, i, j).board)) for i in range(BATCH))


CAP_ENV = envs.make("swap", max_cascades=1)


def test_cascade_cap_is_fixed_up():
    """With max_cascades=1 the gravity-made second line is left at the cap: the board is
    reshuffled so the invariant still holds, only wave 1 is scored, the reshuffle counts."""
    state = CAP_ENV.from_board(grid(GRAVITY_CASCADE_BOARD, background()))
    step = jax.jit(jax.vmap(CAP_ENV.step, in_axes=(0, None, None)))
    new, _, _, info = step(jax.random.split(jax.random.key(0), 4), state, act(6, 0, 6, 1))
    assert bool(info["legal"].all()) and bool((info["raw_reward"] == 6.0).all())
    assert bool((new.shuffles == 1).all()) and bool((new.score == 6).all())
    assert bool(jax.vmap(swap.playable)(new.board).all())


def test_settle_last_resort_pattern_board():
    """With no shuffle or deal tries left, `settle` falls back to the pattern board, which is
    playable for every size and number of types."""
    hopeless = jnp.zeros((G, G), jnp.int32)  # one big line
    board, reshuffled = jax.jit(lambda k, b: swap.settle(k, b, True, 12, 4, 0, 0))(jax.random.key(0), hopeless)
    assert bool(reshuffled) and bool(swap.playable(board))
    assert len(np.unique(np.asarray(board))) == 3
    for size, types in ((4, 3), (12, 96)):
        boards = jax.jit(jax.vmap(lambda k, size=size, types=types: swap.pattern_board(k, size, types)))(
            jax.random.split(jax.random.key(size), 64)
        )
        assert bool(jax.jit(jax.vmap(swap.playable))(boards).all())
        assert int(boards.min()) >= 0 and int(boards.max()) < types


def test_settle_reshuffles_hopeless_boards():
    """A board of one type (all lines) comes back playable through the normal tries, and a
    playable board or an unwanted settle is left alone."""
    hopeless = np.zeros((G, G), np.int32)
    good = np.asarray(ENV.from_board(grid("a b a a", background())).board)
    boards = jnp.asarray(np.stack([hopeless] * 14 + [good, hopeless]))
    wanted = jnp.asarray([True] * 15 + [False])
    settle = jax.jit(jax.vmap(lambda k, b, w: swap.settle(k, b, w, 3, 1)))
    out, reshuffled = settle(jax.random.split(jax.random.key(1), 16), boards, wanted)
    assert bool(reshuffled[:14].all()) and bool(jax.vmap(swap.playable)(out[:14]).all())
    assert not bool(reshuffled[14:].any()) and bool((out[14:] == boards[14:]).all())


# ---------------------------------------------------------------------------------------
# Masks vs step, invalid actions, invariants
# ---------------------------------------------------------------------------------------


def test_valid_actions_agree_with_step_and_invalid_changes_nothing():
    """Every adjacent swap (both orders) and some non-adjacent / out-of-range ids, from states
    reached by play: legal exactly where `valid_actions` says; illegal ones change nothing."""
    states = ROLL(jax.random.key(7))[0]
    masks = np.asarray(VALID_ALL(states))
    new, reward, done, info = step_all(states, seed=8)
    legal = info["legal"]
    in_mask = np.zeros_like(legal)
    ok = (ACTIONS >= 0) & (ACTIONS < ENV.num_actions)
    in_mask[:, ok] = masks[:, ACTIONS[ok]]
    np.testing.assert_array_equal(legal, in_mask)
    assert legal.any(axis=1).all()  # every reachable state has a legal swap
    assert masks.sum(1).min() >= 2 and not masks[:, ENV.invalid_action].any()
    # illegal -> -1 and nothing changes; legal -> +1 and a positive score gain
    raw = info["raw_reward"]
    assert (reward == np.where(legal, 1.0, -1.0)).all()
    assert (raw[~legal] == -1).all() and (raw[legal] >= 6).all()
    for field in ("board", "score", "moves_left", "shuffles", "done"):
        before = np.asarray(getattr(states, field))[:, None]
        after = getattr(new, field)
        unchanged = (after == before).reshape(after.shape[0], after.shape[1], -1).all(-1)
        assert unchanged[~legal].all(), field


def test_random_valid_action_covers_exactly_the_valid_ids():
    state = ENV.from_board(grid("a b a a", background()))
    actions = jax.jit(jax.vmap(ENV.random_valid_action, in_axes=(0, None)))(
        jax.random.split(jax.random.key(0), 64), state
    )
    assert set(np.asarray(actions).tolist()) == swap_ids(0, 0, 0, 1)


def check_invariants(facts):
    f = {k: np.asarray(v) for k, v in facts.items()}
    assert f["start_playable"].all() and f["playable"].all() and f["in_range"].all()
    legal = f["legal"]
    assert legal.any()
    assert (f["gained"][legal] == f["raw"][legal]).all() and (f["raw"][legal] >= 6).all()
    assert (f["gained"][~legal] == 0).all() and (f["raw"][~legal] == -1).all()
    assert (f["used"] == legal).all() and f["unchanged"][~legal].all()


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_invariants_after_every_step(seed):
    """Start boards and every later board: no line, a legal swap, types in range; score
    bookkeeping; invalid actions change nothing. Also with 3 types on 5x5 and a cascade cap
    of 2, where caps are hit and fixed up all the time."""
    check_invariants(ROLL(jax.random.key(seed))[1])
    check_invariants(ROLL_SMALL(jax.random.key(seed))[1])


def test_start_boards_are_playable():
    """Many keys at once (vmapped): no line, a legal swap, types in range, score 0. With 96
    types on 12x12 most deals have no legal swap, so this exercises the reshuffle fallbacks.
    (Default boards: `start_playable` in the invariant test.)"""
    env = envs.make("swap", board_size=12, num_colors=16, num_shapes=6, image_size=(896, 812))
    states = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(3), 64))
    assert bool(jax.vmap(swap.playable)(states.board).all())
    assert int(states.board.min()) >= 0 and int(states.board.max()) < env.num_types
    assert int(states.score.max()) == 0 and not bool(states.done.any())
    assert len(np.unique(np.asarray(states.board[:, 0, 0]))) > 1  # boards differ


def test_deals_and_shuffles_are_uniform():
    """The deal gives every cell a type uniformly (by symmetry between the types, also the
    cells constrained by their neighbours); a reshuffle moves each tile to a uniform cell and
    its neighbour to a uniform offset from it (chi-square)."""
    n = 6000
    boards = np.asarray(
        jax.jit(jax.vmap(lambda k: swap.deal(k, G, ENV.num_types)))(jax.random.split(jax.random.key(0), n))
    )
    chi_square.assert_uniform(boards[:, 0, 0], range(ENV.num_types), "type of the first cell")
    chi_square.assert_uniform(boards[:, -1, -1], range(ENV.num_types), "type of the last cell")
    tiles = jnp.arange(G * G, dtype=jnp.int32).reshape(G, G)
    shuffled = np.asarray(
        jax.jit(jax.vmap(lambda k: swap.shuffle_tiles(k, tiles)))(jax.random.split(jax.random.key(1), n))
    )
    where = np.argsort(shuffled.reshape(n, -1), axis=1)  # the cell each tile went to
    chi_square.assert_uniform(where[:, 0], range(G * G), "cell of tile 0")
    chi_square.assert_uniform((where[:, 1] - where[:, 0]) % (G * G), range(1, G * G), "offset of tile 1 from tile 0")


def test_determinism():
    key = jax.random.key(11)
    (final_a, a), (final_b, b) = ROLL(key), ROLL(key)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
    np.testing.assert_array_equal(np.asarray(final_a.board), np.asarray(final_b.board))
    assert not (np.asarray(ROLL(jax.random.key(12))[0].board) == np.asarray(final_a.board)).all()
    states = ROLL(key)[0]
    first, second = step_all(states, seed=3), step_all(states, seed=3)
    np.testing.assert_array_equal(first[0].board, second[0].board)


def test_step_compiles_once():
    """New states (other moves left), new keys: still the one trace (STEP_ALL counts)."""
    states = ROLL(jax.random.key(5))[0]
    for seed, start in ((1, states), (2, states.replace(moves_left=jnp.full_like(states.moves_left, 3)))):
        new, *_ = step_all(start, seed=seed)
        step_all(jax.tree.map(lambda x: jnp.asarray(x[:, 0]), new), seed=seed)


def test_move_limit_ends_the_game():
    states = batch([ENV.from_board(grid("a b a a", background()), moves_left=1)])
    new, _, done, info = step_all(states)
    j = column(encode_pair(0, 0, 0, 1, G))
    assert info["legal"][0, j] and done[0, j] and new.done[0, j] and new.moves_left[0, j] == 0
    assert not done[0, column(ENV.invalid_action)]
    finished = batch([row_state(new, 0, j)])
    again, reward, done2, info2 = step_all(finished)
    assert not info2["legal"].any() and (reward == -1).all() and done2.all()
    assert (again.board == np.asarray(finished.board)[:, None]).all()
    assert not np.asarray(VALID_ALL(finished)).any()
    assert int(jax.jit(envs.make("swap", max_moves=7).reset)(jax.random.key(0)).moves_left) == 7


# ---------------------------------------------------------------------------------------
# Text: perception, prompt, parser, from_board, config
# ---------------------------------------------------------------------------------------


def test_describe_golden():
    state = ENV.from_board(grid("a b a a c", background()))
    lines = ENV.describe(state).split("\n")
    assert len(lines) == G and all(len(line.split(" | ")) == G for line in lines)
    # types: 0 Red circle, 1 Red square, 2 Red triangle; background 3 + (3r + c) % 9 -> 3 + c at row 0
    assert (
        lines[0] == "Red circle | Red square | Red circle | Red circle | Red triangle | "
        "Blue triangle | Yellow circle | Yellow square"
    )
    assert lines[1].startswith("Blue circle | Blue square | Blue triangle | Yellow circle")
    names = envs.make("swap", num_colors=16, num_shapes=6).tile_names
    assert names[0] == "Red circle" and names[6 * 7 + 5] == "Dark green star" and names[-1] == "Pink star"
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), state, state)
    with pytest.raises(ValueError, match="one 8x8 board"):
        ENV.describe(batch)


def test_prompt():
    p = ENV.prompt
    assert p.startswith("You are playing a Match-3 Game") and p.endswith("<answer>(row1, col1) (row2, col2)</answer>.")
    assert "color (Red, Green, Blue, Yellow) and shape (circle, square, triangle)" in p
    big = envs.make("swap", num_colors=6, num_shapes=4).prompt
    assert "color (Red, Green, Blue, Yellow, Magenta, Cyan) and shape (circle, square, triangle, diamond)" in big
    original = envs.make("swap", original_prompt_layout=True).prompt
    assert original.startswith("\n        You are playing") and original.endswith("</answer>.\n        ")
    assert original.split("\n")[2] == "        "  # the blank lines keep their 8 spaces
    assert [line.strip() for line in original.split("\n") if line.strip()] == [
        line.strip() for line in p.split("\n") if line.strip()
    ]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<answer>(0, 1) (0, 2)</answer>", encode_pair(0, 1, 0, 2, G)),
        ("<think>..</think><answer>(7,6) (7,7)</answer>", encode_pair(7, 6, 7, 7, G)),
        ("<answer>(0,   1)\n(1,\n1)</answer>", encode_pair(0, 1, 1, 1, G)),  # G1's `,\s*`
        ("<answer>(0, 1) (0, 2)</answer> <answer>(3, 3) (3, 4)</answer>", encode_pair(0, 1, 0, 2, G)),  # first wins
        ("<answer>(0, 0) (5, 5)</answer>", encode_pair(0, 0, 5, 5, G)),  # parsed; step rejects it
        ("<answer>(0, 8) (0, 7)</answer>", G**4),  # out of range: invalid, not aliased to (1, 0)
        ("<answer>(0, 99999999999) (0, 1)</answer>", G**4),
        ("<answer>( 0, 1) (0, 2)</answer>", G**4),  # no space allowed after "("
        ("<answer>(0 , 1) (0, 2)</answer>", G**4),
        ("<answer> (0, 1) (0, 2)</answer>", G**4),
        ("<answer>(0, 1), (0, 2)</answer>", G**4),
        ("<answer>3</answer>", G**4),  # the original's (a, a, a, a) fallback is never a swap
        ("(0, 1) (0, 2)", G**4),
        ("", G**4),
    ],
)
def test_parse(text, expected):
    assert ENV.parse(text) == expected


def test_from_board_validation():
    good = grid("a b a a", background())
    state = ENV.from_board(good, score=12, moves_left=3, shuffles=1)
    assert (int(state.score), int(state.moves_left), int(state.shuffles)) == (12, 3, 1)
    assert int(ENV.from_board(good).moves_left) == ENV.max_moves and bool(ENV.from_board(good, moves_left=0).done)
    with pytest.raises(ValueError, match="shape"):
        ENV.from_board(good[:7])
    with pytest.raises(ValueError, match="integers"):
        ENV.from_board(good.astype(float))
    with pytest.raises(ValueError, match=r"\[0, 12\)"):
        ENV.from_board(np.where(good == 0, 12, good))
    with pytest.raises(ValueError, match="ready-made line"):
        ENV.from_board(grid("a a a", background()))
    with pytest.raises(ValueError, match="no legal swap"):
        ENV.from_board(background())


@pytest.mark.parametrize(
    "config,match",
    [
        (dict(num_colors=1, num_shapes=2), "num_colors \\* num_shapes = 2"),
        (dict(num_colors=17), "num_colors"),
        (dict(num_shapes=7), "num_shapes"),
        (dict(board_size=3), "board_size"),
        (dict(board_size=13), "board_size"),
        (dict(image_size=(100, 100)), "multiples of 28"),
        (dict(image_size=(168, 140)), "px cells"),
        (dict(max_cascades=0), "max_cascades"),
        (dict(max_moves=0), "max_moves"),
        (dict(coordinate_labels=1), "coordinate_labels"),
    ],
)
def test_config_errors(config, match):
    with pytest.raises(envs.ConfigError, match=match):
        envs.make("swap", **config)


def test_action_space():
    assert ENV.num_actions == G**4 + 1 and ENV.invalid_action == G**4
    assert envs.make("swap", board_size=5, image_size=(252, 224)).num_actions == 626


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------


def played_state():
    return jax.tree.map(lambda x: x[0], ROLL(jax.random.key(5))[0])


def test_render_tiles_and_cells():
    """Every cell shows its tile's colour at the centre, the checkerboard background at (1, 1),
    the shadow at its bottom-right corner (original 70-px geometry at the default size)."""
    state = played_state()
    img = np.asarray(RENDER(state, PARAMS))
    assert img.shape == (616, 560, 3) and img.dtype == np.uint8
    board = np.asarray(state.board)
    for r in range(G):
        for c in range(G):
            y, x = r * 70, c * 70
            color = raster.TILE_COLORS[board[r, c] // ENV.num_shapes][1]
            assert tuple(img[y + 35, x + 35]) == color, (r, c)
            assert tuple(img[y + 1, x + 1]) == ((240,) * 3 if (r + c) % 2 == 0 else (230,) * 3)
            assert tuple(img[y + 69, x + 69]) == (100, 100, 100)
            assert tuple(img[y + 5, x + 5]) == (245, 245, 245)


def test_render_shows_real_counters():
    """The strip shows the real score, moves left and shuffles (the original drew a constant):
    changing any of them changes the strip and nothing else."""
    state = played_state()
    base = np.asarray(RENDER(state, PARAMS))
    strip = slice(G * 70, None)
    for changed in [
        state.replace(score=state.score + 100),
        state.replace(moves_left=state.moves_left - 7),
        state.replace(shuffles=state.shuffles + 3),
        state.replace(moves_left=jnp.int32(50)),
    ]:
        img = np.asarray(RENDER(changed, PARAMS))
        assert (img[: G * 70] == base[: G * 70]).all()
        assert (img[strip] != base[strip]).any()
    assert (base[strip] < 128).any()  # some dark text pixels


def test_render_other_sizes_and_labels():
    """Another board size and image size, with coordinate labels: tiles keep their colours,
    labels sit in the margin left of and above the board."""
    env = envs.make("swap", board_size=6, image_size=(336, 280), coordinate_labels=True)
    s = env.from_board(grid("a b a a", background(6)))
    img = np.asarray(jax.jit(env.render)(s))
    assert img.shape == (336, 280, 3)
    L = env.layout
    assert L.band > 0 and L.board_x >= L.band and L.board_y >= L.band
    left_of_row0 = img[L.board_y : L.board_y + L.cell, L.board_x - L.band : L.board_x]
    above_col0 = img[L.board_y - L.band : L.board_y, L.board_x : L.board_x + L.cell]
    assert (left_of_row0 < 200).any() and (above_col0 < 200).any()
    for r in range(6):
        for c in range(6):
            y, x = L.board_y + r * L.cell + L.cell // 2, L.board_x + c * L.cell + L.cell // 2
            assert tuple(img[y, x]) == raster.TILE_COLORS[int(s.board[r, c]) // 3][1]


@pytest.mark.parametrize("board_size", range(4, 13))
@pytest.mark.parametrize("labels", [False, True])
def test_counters_fit_the_frame(board_size, labels):
    """At the default image size, for every board size, the counters line holds the widest
    values it can show (a 10-digit score, moves left and shuffles up to max_moves) inside the
    frame and the strip; on small boards the text is smaller than the original's."""
    env = envs.make("swap", board_size=board_size, coordinate_labels=labels)
    line, L = env._counters_line, env.layout
    widest = env.from_board(grid("a b a a", background(board_size)), score=2**31 - 1, shuffles=env.max_moves)
    for codes in env.counters_codes(widest):
        _, text_width = raster.text_columns(line.font, codes, line.width)
        assert line.x + int(text_width) <= env.image_size[1]
    assert L.strip_y <= line.ys[0] and line.ys[-1] + line.font.cell_h <= L.strip_y + L.strip_h
    assert line.font.px >= swap.MIN_TEXT_PX


def test_counters_need_room():
    with pytest.raises(envs.ConfigError, match=r"too small for the counters.*e\.g\. image_size=\(\d+, \d+\)"):
        envs.make("swap", board_size=4, image_size=(112, 112))


def generic_render(env, state):
    """The frame drawn the plain way: `grid_from_atlas` + `paste` for the board, and each
    counters line blended in float from the font's glyph alphas. The renderer's faster path (a
    gather per cell fused into the frame update, pre-blended glyph columns) must give the same
    pixels."""
    L, line = env.layout, env._counters_line
    ids = jnp.clip(state.board, 0, env.num_types - 1) * 2 + jnp.asarray(env._parity)
    board = raster.grid_from_atlas(jnp.asarray(env._tile_atlas), ids)
    img = raster.paste(jnp.asarray(env._background), board, L.board_y, L.board_x)
    h, alphas = line.font.cell_h, jnp.asarray(raster.glyph_columns(line.font))
    for codes, y in zip(env.counters_codes(state), line.ys):
        columns, _ = raster.text_columns(line.font, codes, line.width)
        alpha = jnp.where(columns >= 0, alphas[:, jnp.maximum(columns, 0)], 0.0)
        window = img[y : y + h, line.x : line.x + line.width].astype(jnp.float32)
        img = img.at[y : y + h, line.x : line.x + line.width].set(
            raster.to_uint8(raster.fill(window, alpha, swap.BLACK))
        )
    return img


@pytest.mark.parametrize(
    "config",
    [
        dict(),
        dict(board_size=6, num_shapes=2, image_size=(336, 280), coordinate_labels=True),
    ],
)
def test_render_matches_generic_drawing(config):
    """Pixel-identical to the generic drawing, on fresh and played boards and on counters from
    0 to 10 digits, on one line and on two."""
    env = envs.make("swap", **config)
    keys = jax.random.split(jax.random.key(3), 4)
    states = jax.jit(jax.vmap(env.reset))(keys)  # jitted: Swap's loops run op by op when eager
    actions = jax.jit(jax.vmap(env.random_valid_action))(keys, states)
    played, _, _, _ = jax.jit(jax.vmap(env.step))(keys, states, actions)
    counters = jnp.asarray([[0, 0, 0], [7, 5, 3], [123456, 999, 42], [2**31 - 1, 2**31 - 1, 2**31 - 1]], jnp.int32)
    states = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), states, played)
    states = states.replace(
        score=counters[:, 0].repeat(2), moves_left=counters[:, 1].repeat(2), shuffles=counters[:, 2].repeat(2)
    )
    fast = jax.jit(jax.vmap(env.render))(states)
    generic = jax.jit(jax.vmap(lambda s: generic_render(env, s)))(states)
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(generic))
