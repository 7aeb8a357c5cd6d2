"""2048: rules (golden slides in all directions, invariants), RNG, masks, text, rendering."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chi_square
import envs
from envs import game2048
from envs.game2048 import DOWN, LEFT, RIGHT, STILL, UP

ENV = envs.make("2048")
STEP = jax.jit(ENV.step)
VALID = jax.jit(ENV.valid_actions)
RENDER = jax.jit(ENV.render)


def slide(board, action):
    """The deterministic part of a move (before the spawn), as `step` computes it."""
    state = ENV.from_board(board)
    moved, score = jax.jit(ENV._slide)(state.board, action)
    return np.asarray(moved), int(score)


# Rows written left-to-right as exponents, slid LEFT: (row, expected row, score)
ROW_CASES = [
    ([1, 1, 1, 1], [2, 2, 0, 0], 8),  # 2 2 2 2 -> 4 4: pairs merge from the leading edge
    ([1, 1, 2, 0], [2, 2, 0, 0], 4),  # 2 2 4 -> 4 4: the new 4 does not merge again
    ([2, 1, 1, 0], [2, 2, 0, 0], 4),  # 4 2 2 -> 4 4
    ([0, 0, 0, 1], [1, 0, 0, 0], 0),
    ([1, 0, 1, 2], [2, 2, 0, 0], 4),  # gaps close before merging
    ([3, 3, 3, 0], [4, 3, 0, 0], 16),  # 8 8 8 -> 16 8
    ([1, 2, 3, 4], [1, 2, 3, 4], 0),  # nothing moves
    ([0, 2, 0, 2], [3, 0, 0, 0], 8),
    ([5, 5, 6, 6], [6, 7, 0, 0], 64 + 128),  # 32 32 64 64 -> 64 128
]


@pytest.mark.parametrize("row,expected,score", ROW_CASES)
def test_golden_rows_all_directions(row, expected, score):
    row, expected = np.array(row), np.array(expected)
    filler = np.zeros((4, 4), int)
    # LEFT: row 1 as written
    b = filler.copy()
    b[1] = row
    moved, s = slide(b, LEFT)
    assert moved[1].tolist() == expected.tolist() and s == score
    # RIGHT: the row reversed, slides toward the right edge
    b = filler.copy()
    b[2] = row[::-1]
    moved, s = slide(b, RIGHT)
    assert moved[2].tolist() == expected[::-1].tolist() and s == score
    # UP: column 0 top to bottom
    b = filler.copy()
    b[:, 0] = row
    moved, s = slide(b, UP)
    assert moved[:, 0].tolist() == expected.tolist() and s == score
    # DOWN: column 3 bottom to top
    b = filler.copy()
    b[:, 3] = row[::-1]
    moved, s = slide(b, DOWN)
    assert moved[:, 3].tolist() == expected[::-1].tolist() and s == score


def test_lookup_table_matches_direct_rule():
    """The 4x4 path reads a row table; boards >= 5 run the rule directly: they must agree."""
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 6, size=(2000, 4)) * (rng.random((2000, 4)) < 0.7)
    direct, direct_score = jax.jit(game2048.slide_rows_left)(jnp.asarray(rows, jnp.int32))
    base = ENV.max_exponent + 1
    packed, score = game2048._row_table(4, base)
    index = (rows * base ** np.arange(4)).sum(-1)
    unpacked = (packed[index][:, None] >> (game2048.CELL_BITS * np.arange(4))) & 31
    np.testing.assert_array_equal(unpacked, np.asarray(direct))
    np.testing.assert_array_equal(score[index], np.asarray(direct_score))


def test_five_by_five_board_uses_direct_rule():
    env = envs.make("2048", board_size=5, image_size=(224, 196))
    board = np.zeros((5, 5), int)
    board[0] = [1, 1, 1, 1, 1]
    state = env.from_board(board)
    moved, score = jax.jit(env._slide)(state.board, LEFT)
    assert np.asarray(moved)[0].tolist() == [2, 2, 1, 0, 0] and int(score) == 8


boards = st.lists(st.integers(0, 9), min_size=16, max_size=16).map(lambda v: np.array(v).reshape(4, 4))


@settings(max_examples=60, deadline=None)
@given(board=boards, action=st.integers(0, 4), seed=st.integers(0, 2**31 - 1))
def test_step_invariants(board, action, seed):
    state = ENV.from_board(board, score=7)
    new, reward, done, info = STEP(jax.random.key(seed), state, action)
    before = int(np.where(board > 0, 2**board, 0).sum())
    after_board = np.asarray(new.board)
    after = int(np.where(after_board > 0, 2**after_board, 0).sum())
    legal = bool(info["legal"])
    if action == STILL:
        assert not legal and float(info["raw_reward"]) == -1.0 and float(reward) == -1.0
    if legal:
        spawned = after - before
        assert spawned in (2, 4)  # merges conserve the tile sum; exactly one tile spawns
        assert (after_board > 0).sum() >= 1
    else:
        np.testing.assert_array_equal(after_board, board)  # illegal or still: nothing changes
    merged = int(new.score) - 7
    assert merged == (int(info["raw_reward"]) if action != STILL else 0)
    assert float(reward) == (1.0 if merged > 0 else -1.0)
    assert int(new.illegal_count) == int(action < 4 and not legal)
    assert bool(done) == bool(new.done)
    if after_board.any():  # G1's rule (full board, no equal neighbours) = no legal move
        assert bool(done) == (not np.asarray(VALID(new))[:4].any())
    else:  # the empty board has no legal move yet is not "over" under that rule
        assert not bool(done)


@settings(max_examples=40, deadline=None)
@given(board=boards)
def test_valid_actions_agree_with_step(board):
    state = ENV.from_board(board)
    mask = np.asarray(VALID(state))
    assert not mask[STILL]
    for a in range(4):
        _, _, _, info = STEP(jax.random.key(0), state, a)
        assert mask[a] == bool(info["legal"]), (board, a)


def test_spawn_distribution():
    """Reset spawns two tiles, 2 with p 0.9 and 4 with p 0.1, on cells uniform among the empty
    ones, so every pair of cells is equally likely (chi-square / binomial bounds)."""
    states = jax.jit(jax.vmap(ENV.reset))(jax.random.split(jax.random.key(0), 20000))
    boards = np.asarray(states.board).reshape(20000, -1)
    assert ((boards > 0).sum(1) == 2).all()
    chi_square.assert_binomial(int((boards == 2).sum()), 2 * 20000, 0.1, "spawned 4s")
    cells = np.argsort(boards == 0, axis=1, kind="stable")[:, :2]  # the two filled cells, a < b
    chi_square.assert_uniform(
        cells[:, 0] * 16 + cells[:, 1], [a * 16 + b for a in range(16) for b in range(a + 1, 16)], "filled pair"
    )
    # a spawn after a move: uniform over the cells the move left empty
    state = ENV.from_board([[1, 2, 3, 4], [0, 0, 0, 0], [4, 3, 2, 1], [0, 0, 0, 0]])
    new = jax.jit(jax.vmap(ENV.step, in_axes=(0, None, None)))(jax.random.split(jax.random.key(1), 8000), state, UP)[0]
    spawned = np.argmax(np.asarray(new.board).reshape(8000, -1) != slide(state.board, UP)[0].reshape(-1), axis=1)
    chi_square.assert_uniform(spawned, range(8, 16), "spawn cell after a move")


def test_determinism_and_single_compile():
    traces = []

    def rollout(key):
        traces.append(1)

        def body(state, k):
            k1, k2 = jax.random.split(k)
            action = ENV.random_valid_action(k1, state)
            state, reward, _, _ = envs.auto_reset_step(ENV, k2, state, action)
            return state, reward

        return jax.lax.scan(body, ENV.reset(key), jax.random.split(key, 50))

    run = jax.jit(rollout)
    a = run(jax.random.key(3))
    b = run(jax.random.key(3))
    c = run(jax.random.key(4))
    assert len(traces) == 1
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(np.asarray(a[0].board), np.asarray(c[0].board))


def test_game_over_and_terminal_mask():
    full = ENV.from_board([[1, 2, 1, 2], [2, 1, 2, 1], [1, 2, 1, 2], [2, 1, 2, 1]])
    assert bool(full.done) and not np.asarray(VALID(full)).any()
    new, reward, done, info = STEP(jax.random.key(0), full, UP)
    assert bool(done) and not bool(info["legal"]) and float(reward) == -1.0
    assert int(ENV.random_valid_action(jax.random.key(0), full)) == STILL


@pytest.mark.parametrize(
    "text,action",
    [
        ("<answer>2</answer>", 2),
        ("<perception>..</perception><think>go</think><answer>Action 3 (Left)</answer>", 3),
        ("<answer>-1</answer>", 1),  # G1's regex reads the digit run only
        ("<answer>4</answer>", STILL),
        ("<answer>17</answer>", STILL),
        ("<answer>up</answer>", STILL),
        ("", STILL),
        ("2", STILL),  # no answer block
        ("<answer>1", STILL),  # unclosed
        ("<answer>\n 0 \n</answer>", 0),
        ("<answer>١</answer>", 1),  # unicode digits are digits to Python's regex, as in G1
        ("<answer>ゼロ</answer> <answer>1</answer>", 1),
        ("<answer>" + "9" * 5000 + "</answer>", STILL),
        ("<answer>" + "0" * 5000 + "2</answer>", 2),  # leading zeros are not significant (G1's int())
        ("<answer>000</answer>", 0),
        ("x" * 200_000 + "<answer>1</answer>", 1),
    ],
)
def test_parse(text, action):
    assert ENV.parse(text) == action


def test_parse_rejects_non_strings():
    with pytest.raises(TypeError, match="must be str"):
        ENV.parse(None)


def test_describe_format():
    state = ENV.from_board([[0, 1, 0, 2], [3, 0, 0, 0], [0, 0, 11, 0], [17, 0, 0, 1]])
    assert ENV.describe(state) == (" - | 2 | - | 4 \n 8 | - | - | - \n - | - | 2048 | - \n 131072 | - | - | 2 ")
    values = ENV.from_board([[0, 2, 0, 4], [8, 0, 0, 0], [0, 0, 2048, 0], [131072, 0, 0, 2]], values=True)
    np.testing.assert_array_equal(values.board, state.board)
    with pytest.raises(ValueError, match="powers of two"):
        ENV.from_board([[3, 0, 0, 0]] * 4, values=True)
    with pytest.raises(ValueError, match="shape"):
        ENV.from_board([[1, 2], [3, 4]])


def test_render_colours_and_digits():
    state = ENV.from_board([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 0]], score=4242)
    img = np.asarray(RENDER(state))
    assert img.shape == (448, 392, 3) and img.dtype == np.uint8
    L = ENV.layout
    crops = {}
    for r in range(4):
        for c in range(4):
            y = L.board_y + L.gap + r * L.pitch
            x = L.board_x + L.gap + c * L.pitch
            e = int(state.board[r, c])
            # a point inside the tile, away from the centred number
            pixel = tuple(img[y + L.tile // 8, x + L.tile // 2])
            expected = game2048.EMPTY_COLOR if e == 0 else game2048.TILE_COLORS.get(2**e, game2048.BIG_TILE_COLOR)
            assert pixel == expected, (r, c, pixel, expected)
            crops[e] = img[y : y + L.tile, x : x + L.tile].astype(int)
    # the number is drawn: each tile's crop differs from a plain tile, and digits differ by value
    for e in range(1, 15):
        assert len(np.unique(crops[e].reshape(-1, 3), axis=0)) > 5
    assert np.abs(crops[1] - crops[2]).sum() > 0
    text_2, text_4 = ((crops[e] != np.asarray(game2048.TILE_COLORS[2**e])).any(-1) for e in (1, 2))
    assert (text_2 != text_4).sum() > 20  # "2" and "4" have different glyph pixels
    # the score strip shows the score
    other = np.asarray(RENDER(state.replace(score=jnp.int32(99))))
    strip = slice(L.strip_y, L.strip_y + L.strip_h)
    assert (img[strip] != other[strip]).any() and (img[: L.strip_y] == other[: L.strip_y]).all()


def test_config_errors():
    with pytest.raises(envs.ConfigError, match="board_size"):
        envs.make("2048", board_size=9)
    with pytest.raises(envs.ConfigError, match="multiples of 28"):
        envs.make("2048", image_size=(400, 460))
    with pytest.raises(envs.ConfigError, match="coordinate_labels"):
        envs.make("2048", coordinate_labels="yes")
    with pytest.raises(envs.ConfigError, match="Valid options"):
        envs.make("2048", boardsize=4)


def test_coordinate_labels_draw_only_in_the_margin():
    labelled = envs.make("2048", coordinate_labels=True)
    state = ENV.from_board(np.eye(4, dtype=int))
    a, b = np.asarray(RENDER(state)), np.asarray(jax.jit(labelled.render)(state))
    diff = (a != b).any(-1)
    L = ENV.layout
    assert diff.any()
    assert not diff[L.board_y : L.board_y + L.board_px, L.board_x : L.board_x + L.board_px].any()


def test_instructions_option_picks_the_prompt():
    assert envs.make("2048").prompt.startswith("You are now playing the 2048 game")
    short = envs.make("2048", instructions="short").prompt
    assert len(short) < 120 and "(0) Up" in short and "<perception>" in short
    with pytest.raises(envs.ConfigError, match="instructions='long' is not supported"):
        envs.make("2048", instructions="long")
