"""The shared env pieces: registry and config errors, answer grammar, raster primitives,
wrappers (auto-reset, warm-up, parallel actions)."""

import abc
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chi_square
import envs
from envs import grammar, raster

ENV = envs.make("2048")


# --- registry -------------------------------------------------------------------------------


def test_unknown_game_names_the_choices():
    with pytest.raises(envs.UnknownGameError, match="unknown game 'chess'.*2048"):
        envs.make("chess")
    assert "2048" in envs.list_games()


def test_image_size_must_be_pairs_of_28_multiples():
    with pytest.raises(envs.ConfigError, match=r"image_size must be \(height, width\)"):
        envs.make("2048", image_size=448)
    with pytest.raises(envs.ConfigError, match="multiples of 28"):
        envs.make("2048", image_size=(448, 0))
    with pytest.raises(envs.ConfigError, match="must be two integers"):
        envs.make("2048", image_size=(448, 392.5))  # not truncated to 392
    with pytest.raises(envs.ConfigError, match="must be two integers"):
        envs.make("2048", image_size=(True, 392))
    with pytest.raises(envs.ConfigError, match="image_size .* exceeds the limit of 4096 pixels per side"):
        envs.make("swap", image_size=(11200, 11200))
    assert envs.make("2048", image_size=(np.int64(448), 392)).image_size == (448, 392)


def test_a_game_missing_part_of_the_contract_is_refused():
    """`Env` is an abstract base class: leaving out `valid_actions` fails at definition (the
    registry) and at construction, not when a trace first needs it."""
    from envs.game2048 import Game2048

    skip = ("valid_actions", "__dict__", "__weakref__", "__abstractmethods__", "_abc_impl")
    Incomplete = abc.ABCMeta("Incomplete", (envs.Env,), {k: v for k, v in vars(Game2048).items() if k not in skip})
    with pytest.raises(
        TypeError, match="game 'incomplete': Incomplete does not implement the env contract: valid_actions"
    ):
        envs.register("incomplete")(Incomplete)
    assert "incomplete" not in envs.list_games()
    with pytest.raises(TypeError, match="abstract method.*valid_actions"):
        Incomplete()


def test_unknown_options_are_named_with_the_valid_ones():
    with pytest.raises(envs.ConfigError, match="unknown option.*boardsize.*Valid options: board_size, image_size"):
        envs.make("2048", boardsize=4)


def test_env_is_hashable_static_config():
    a, b = envs.make("2048"), envs.make("2048")
    assert a == b and hash(a) == hash(b)
    assert envs.make("2048", board_size=5, image_size=(224, 196)) != a
    assert "board_size=4" in repr(a)


# --- grammar ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,pair",
    [
        ("<answer>(0, 1) (2, 3)</answer>", (0, 1, 2, 3)),
        ("<answer>(0,1)(2,3)</answer>", (0, 1, 2, 3)),
        ("blah <answer>(10, 11)\n(3, 4)</answer> tail", (10, 11, 3, 4)),
        ("<answer> (0, 1) (2, 3)</answer>", None),  # G1's regex allows no space after the tag
        ("<answer>(0 , 1) (2, 3)</answer>", None),
        ("<answer>(0,  1) (2,\n3)</answer>", (0, 1, 2, 3)),  # any whitespace after the comma (G1's `,\s*`)
        ("<answer>(0, 1)</answer>", None),
        ("<answer>(-1, 1) (2, 3)</answer>", None),
        ("", None),
        ("<answer>(a, b) (c, d)</answer><answer>(1, 1) (1, 2)</answer>", (1, 1, 1, 2)),
        # leading zeros are not significant: G1's int() reads (1, 0) (0, 1)
        ("<answer>(0000000000001, 0) (0, 1)</answer>", (1, 0, 0, 1)),
        ("<answer>(00, 0" + "0" * 20 + "3) (٠٠١, 1)</answer>", (0, 3, 1, 1)),  # other scripts' zeros too
        ("<answer>(1" + "0" * 9 + ", 0) (0, 1)</answer>", (10**9, 0, 0, 1)),  # 10 significant digits: clamped
    ],
)
def test_coordinate_answer(text, pair):
    assert grammar.coordinate_answer(text) == pair


def test_pair_actions_roundtrip_and_range():
    for size in (4, 6, 8, 12):
        for pair in [(0, 0, 0, 1), (size - 1, size - 2, 3, 0), (1, 2, 3, 1)]:
            a = grammar.encode_pair(*pair, size)
            assert tuple(int(v) for v in grammar.decode_pair(a, size)) == pair
            assert a < size**4
    invalid = 6**4
    assert grammar.parse_pair_action("<answer>(0, 6) (1, 1)</answer>", 6, invalid) == invalid  # no aliasing
    assert grammar.parse_pair_action("<answer>(0, 5) (1, 1)</answer>", 6, invalid) == grammar.encode_pair(0, 5, 1, 1, 6)
    assert grammar.parse_pair_action("nonsense", 6, invalid) == invalid


def test_format_and_perception_checks():
    good = "<perception>board</perception>\n<think>hmm</think>\n<answer>2</answer>"
    assert grammar.format_ok(good) and grammar.format_ok(good, strict=True)
    shuffled = "<answer>2</answer><think>x</think><perception>p</perception>"
    assert grammar.format_ok(shuffled) and not grammar.format_ok(shuffled, strict=True)
    doubled = good + "<answer>3</answer>"
    assert grammar.format_ok(doubled) and not grammar.format_ok(doubled, strict=True)
    assert not grammar.format_ok("<perception></perception><think></think><answer>1")
    assert not grammar.format_ok("text " + good, strict=True)
    truth = " - | 2 \n 4 | - "
    assert grammar.perception_ok(f"<perception>{truth}</perception>", truth)
    assert not grammar.perception_ok("<perception> - | 2 \n 4 | -</perception>", truth)


def cpu_seconds_per_call(fn, text: str, calls: int) -> float:
    """Best of 5 CPU-time measurements of `calls` calls: CPU time of this process only, so
    other processes on a shared machine do not count; the minimum filters what noise is left."""
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(calls):
            fn(text)
        best = min(best, time.process_time() - start)
    return best / calls


def calls_for(fn, text: str, seconds: float = 0.01) -> int:
    """Enough calls of fn(text) to take `seconds`, so the clock's resolution does not matter."""
    calls = 1
    while cpu_seconds_per_call(fn, text, calls) * calls < seconds and calls < 1 << 20:
        calls *= 2
    return calls


@pytest.mark.parametrize(
    "name,fn,unit,expected",
    [
        ("first integer, no closing tag", grammar.first_answer_integer, "<answer>1", None),
        ("first integer, leading zeros", lambda t: grammar.first_answer_integer(f"<answer>{t}</answer>"), "0", 0),
        ("coordinates, no closing tag", grammar.coordinate_answer, "<answer>(1, 1) ", None),
        ("strict format, many open tags", lambda t: grammar.format_ok(t, strict=True), "<answer>1", False),
        ("lenient format, no closing tags", grammar.format_ok, "<perception><think><answer>1", False),
    ],
)
def test_parsers_are_linear_time(name, fn, unit, expected):
    """Adversarial answers (the parsers' own: no answer, not well-formed) must not stall a
    training step: the work grows linearly with the text. At n and 16n repetitions a linear
    parser takes ~16x the CPU time (more where the long text no longer fits a cache) and a
    quadratic one ~256x; the bound of 64x sits between with a factor of 4 either way."""
    small, large = unit * 5_000, unit * 80_000
    assert fn(small) == expected and fn(large) == expected
    calls = calls_for(fn, small)
    ratio = cpu_seconds_per_call(fn, large, calls) / cpu_seconds_per_call(fn, small, calls)
    assert ratio < 64, f"{name}: 16x longer text took {ratio:.1f}x the CPU time (not linear)"


def nested_repeats(pattern: str) -> bool:
    """Whether a regular expression repeats something that itself repeats, like (a+)* (what
    lets a backtracking matcher take exponential time)."""
    from re import _constants as sre
    from re import _parser

    repeats = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)

    def walk(items, inside: bool) -> bool:
        for op, arg in items:
            if op in repeats and (inside or walk(arg[2], True)):
                return True
            if op is sre.SUBPATTERN and walk(arg[-1], inside):
                return True
            if op is sre.BRANCH and any(walk(branch, inside) for branch in arg[1]):
                return True
        return False

    return walk(_parser.parse(pattern), False)


def test_the_answer_patterns_cannot_backtrack_badly():
    """Structurally: no pattern of the grammar nests repetitions (the checker itself is
    checked on patterns that do)."""
    assert nested_repeats(r"(a+)*b") and nested_repeats(r"x(?:\s*\d)+") and nested_repeats(r"(a|b+)+")
    for pattern in (grammar._PAIR_RE, grammar._DIGITS_RE, grammar._STRICT_FORMAT_RE):
        assert not nested_repeats(pattern.pattern), pattern.pattern


# --- raster -------------------------------------------------------------------------------


def test_shape_areas_match_geometry():
    ys, xs = raster.pixel_centres(100, 100)

    def area(sdf):
        return float(raster.coverage(sdf).sum())

    assert area(raster.sdf_box(ys, xs, 10, 20, 50, 80)) == pytest.approx(40 * 60, rel=1e-3)
    assert area(raster.shape_sdf("circle", ys, xs, 10, 10, 60)) == pytest.approx(np.pi * 30**2, rel=0.01)
    assert area(raster.shape_sdf("triangle", ys, xs, 10, 10, 60)) == pytest.approx(60 * 60 / 2, rel=0.02)
    assert area(raster.shape_sdf("diamond", ys, xs, 10, 10, 60)) == pytest.approx(60 * 60 / 2, rel=0.02)
    assert area(raster.shape_sdf("cross", ys, xs, 10, 10, 60)) == pytest.approx(2 * 60 * 8 - 64, rel=0.02)
    rounded = area(raster.sdf_box(ys, xs, 10, 10, 70, 70, radius=10))
    assert rounded == pytest.approx(3600 - (4 - np.pi) * 100, rel=0.01)
    m = raster.coverage(raster.shape_sdf("star", ys, xs, 10, 10, 60))
    assert float(m.min()) >= 0 and float(m.max()) <= 1 and m[40, 40] == 1 and m[40, 12] == 0
    with pytest.raises(ValueError, match="unknown shape"):
        raster.shape_sdf("hexagon", ys, xs, 0, 0, 10)


def test_number_codes_and_text():
    atlas = raster.glyph_atlas(16)
    zero = ord("0") - raster.FIRST_CHAR

    def digits(v, n):
        return [c - zero if c >= 0 else None for c in np.asarray(raster.number_codes(v, n)).tolist()]

    assert digits(0, 4) == [0, None, None, None]
    assert digits(1000, 4) == [1, 0, 0, 0]
    assert digits(99, 4) == [9, 9, None, None]
    assert digits(10, 3) == [1, 0, None]
    assert digits(123456, 3) == [4, 5, 6]  # overflow keeps the lowest digits
    codes = raster.concat_codes(atlas.codes("ab", length=4), raster.number_codes(7, 3))
    assert np.asarray(codes).tolist()[:3] == atlas.codes("ab7").tolist()
    columns, width = raster.text_columns(atlas, jnp.asarray(atlas.codes("1 1")), 64)
    assert int(width) == atlas.text_width("1 1") == raster.text_advance("1 1", 16)
    ink = np.asarray(columns) >= 0  # columns of the two glyphs, a blank gap between them
    assert ink[0] and not ink[int(width) :].any() and not ink.all()
    assert np.asarray(raster.glyph_columns(atlas)).shape == (atlas.cell_h, atlas.alpha.shape[0] * atlas.cell_w)
    assert raster.line_height(16) == atlas.cell_h and raster.digit_advance(16) == max(
        atlas.text_width(d) for d in "0123456789"
    )
    a, b = raster.text_alpha("2", 20), raster.text_alpha("4", 20)
    assert a.max() == 1.0 and a.shape[0] > 10 and (a.shape != b.shape or (a != b).any())
    img = raster.stamp(jnp.zeros((30, 30, 3), jnp.uint8), a, 15, 15, (255, 255, 255))
    assert img.dtype == jnp.uint8 and int(img[..., 0].sum()) == pytest.approx(255 * a.sum(), rel=0.02)
    assert raster.text_width("1111", 20) > raster.text_width("11", 20)


def test_coordinate_labels_are_centred_on_their_cells():
    img = raster.coordinate_labels(jnp.full((60, 60, 3), 255.0), 3, 25, 25, 15, 5, 5, 8, (0, 0, 0))
    dark = np.asarray(img)[..., 0] < 128
    for i in range(3):
        column = dark[:12, 25 + 15 * i - 7 : 25 + 15 * i + 8]  # label i above column i
        row = dark[25 + 15 * i - 7 : 25 + 15 * i + 8, :12]  # label i left of row i
        assert column.any() and row.any()
    assert not dark[12:, 12:].any()  # nothing on the board


def test_grid_from_atlas_and_resize():
    atlas = jnp.arange(3 * 2 * 2 * 1).reshape(3, 2, 2, 1)
    grid = raster.grid_from_atlas(atlas, jnp.array([[0, 2], [1, 0]]))
    assert grid.shape == (4, 4, 1)
    np.testing.assert_array_equal(grid[:2, 2:, 0], atlas[2, :, :, 0])
    np.testing.assert_array_equal(grid[2:, :2, 0], atlas[1, :, :, 0])
    img = jnp.full((56, 56, 3), 200, jnp.uint8)
    small = raster.resize(img, 28, 14)
    assert small.shape == (28, 14, 3) and small.dtype == jnp.uint8 and int(small.min()) == 200


def test_paste_cells_equals_numpy_paste():
    rng = np.random.default_rng(0)
    atlas = rng.integers(0, 256, (5, 3, 4, 3), dtype=np.uint8)
    ids = rng.integers(0, 5, (2, 3))
    image = rng.integers(0, 256, (12, 17, 3), dtype=np.uint8)
    expected = image.copy()
    for i in range(2):
        for j in range(3):
            expected[4 + 3 * i : 7 + 3 * i, 2 + 4 * j : 6 + 4 * j] = atlas[ids[i, j]]
    out = jax.jit(lambda img, a, k: raster.paste_cells(img, a, k, 4, 2))(
        jnp.asarray(image), jnp.asarray(atlas), jnp.asarray(ids)
    )
    assert out.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(out), expected)
    grid = raster.paste(jnp.asarray(image), raster.grid_from_atlas(jnp.asarray(atlas), jnp.asarray(ids)), 4, 2)
    np.testing.assert_array_equal(np.asarray(grid), expected)


# --- shared random draws -------------------------------------------------------------------


def test_kth_true_is_uniform_over_the_true_entries():
    """One uniform picks the k-th True entry: uniform over exactly the True entries (a skewed
    uniform, e.g. u**4, fails the chi-square), and "none" on an all-False mask."""
    mask = jnp.zeros(40, bool).at[jnp.array([0, 3, 4, 17, 30, 39])].set(True)
    draw = jax.jit(jax.vmap(lambda u: envs.core.kth_true(mask, u)))
    picks, found = draw(jax.random.uniform(jax.random.key(0), (12000,)))
    assert bool(found.all())
    chi_square.assert_uniform(picks, np.flatnonzero(mask), "kth_true")
    assert not bool(envs.core.kth_true(jnp.zeros(5, bool), 0.5)[1])
    assert int(envs.core.kth_true(mask, jnp.float32(1.0 - 2**-24))[0]) == 39  # the largest u stays in range


@pytest.mark.parametrize("n", [36, 144])  # the ranks path and the sorting path
def test_random_permutation_is_uniform(n):
    """Where an element lands, and where its neighbour lands relative to it, are uniform."""
    words = jax.random.bits(jax.random.key(n), (6000, n), jnp.uint32)
    perms = np.asarray(jax.jit(jax.vmap(envs.core.random_permutation))(words))
    assert (np.sort(perms, axis=1) == np.arange(n)).all()
    chi_square.assert_uniform(perms[:, 0], range(n), "position of element 0")
    chi_square.assert_uniform((perms[:, 1] - perms[:, 0]) % n, range(1, n), "offset of element 1 from element 0")


# --- wrappers -----------------------------------------------------------------------------


FULL = [[1, 2, 1, 2], [2, 1, 2, 1], [1, 2, 1, 2], [2, 1, 2, 3]]
ALMOST_OVER = [[1, 2, 1, 2], [2, 1, 2, 1], [1, 2, 1, 2], [2, 1, 3, 3]]


def test_auto_reset_returns_the_final_state():
    state = ENV.from_board(ALMOST_OVER)
    # moving left merges the two 8s; then the spawn may or may not end the game: try keys
    step = jax.jit(lambda k, s, a: envs.auto_reset_step(ENV, k, s, a))
    ended = 0
    for seed in range(20):
        new, reward, done, info = step(jax.random.key(seed), state, 3)
        final = info["final_state"]
        assert float(reward) == 1.0 and int(final.score) == 16
        if bool(done):
            ended += 1
            assert bool(final.done) and int(new.score) == 0 and int((new.board > 0).sum()) == 2
        else:
            jax.tree.map(np.testing.assert_array_equal, new, final)
    assert ended > 0


def test_tree_where_picks_whole_trees_or_rows():
    a, b = ENV.from_board(FULL), ENV.from_board(ALMOST_OVER)
    jax.tree.map(np.testing.assert_array_equal, envs.tree_where(jnp.bool_(False), a, b), b)
    rows_a, rows_b = (jax.tree.map(lambda x: jnp.stack([x, x, x]), s) for s in (a, b))
    picked = envs.tree_where(jnp.array([True, False, True]), rows_a, rows_b)
    for row, want in enumerate((a, b, a)):
        jax.tree.map(np.testing.assert_array_equal, envs.unbatch(picked, row), want)


def test_warmup_states_take_random_moves():
    batch = jax.jit(lambda k: envs.warmup_states(ENV, k, 64, num_moves=30))(jax.random.key(0))
    steps = np.asarray(batch.steps)
    tiles = (np.asarray(batch.board) > 0).reshape(64, -1).sum(1)
    assert (steps > 0).all() and (steps <= 30).all() and tiles.mean() > 3
    assert not np.asarray(batch.done).any()  # finished games were reset
    assert len({np.asarray(b).tobytes() for b in batch.board}) == 64
    uniform = jax.jit(lambda k: envs.warmup_state(ENV, k, num_moves=200, policy="uniform"))(jax.random.key(1))
    assert int(uniform.illegal_count) > 0  # G1's policy includes wasted moves
    with pytest.raises(ValueError, match="warm-up policy"):
        envs.warmup_state(ENV, jax.random.key(0), policy="greedy")


def test_parallel_step_scores_every_answer_from_the_same_state():
    state = ENV.from_board([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 2]])
    actions = jnp.array([0, 1, 2, 3, 4, 3])
    key = jax.random.key(7)
    states, rewards, dones, infos = jax.jit(lambda k, s, a: envs.parallel_step(ENV, k, s, a))(key, state, actions)
    assert rewards.shape == (6,) and states.board.shape == (6, 4, 4)
    for g, a in enumerate(actions.tolist()):
        single = ENV.step(jax.random.fold_in(key, g), state, a)
        jax.tree.map(np.testing.assert_array_equal, envs.unbatch(states, g), single[0])
        assert float(rewards[g]) == float(single[1])
    assert np.asarray(rewards).tolist() == [-1.0, 1.0, -1.0, 1.0, -1.0, 1.0]
    assert np.asarray(infos["raw_reward"]).tolist() == [0.0, 4.0, 0.0, 4.0, -1.0, 4.0]
    np.testing.assert_array_equal(
        state.board, ENV.from_board([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 2]]).board
    )


def test_render_into_reuses_the_buffer_and_checks_its_shape():
    env = envs.make("2048", image_size=(224, 196))
    states = jax.vmap(env.reset)(jax.random.split(jax.random.key(0), 3))
    draw = jax.jit(lambda f, s: envs.render_into(env, f, s), donate_argnums=0)
    frames = draw(jnp.zeros((3, 224, 196, 3), jnp.uint8), states)
    np.testing.assert_array_equal(frames, jax.jit(envs.render_batch, static_argnums=0)(env, states))
    with pytest.raises(ValueError, match=r"frames buffer is uint8\[2, 224, 196, 3\]"):
        envs.render_into(env, jnp.zeros((2, 224, 196, 3), jnp.uint8), states)
