"""FrozenLake against gymnasium's own FrozenLake-v1 (a test dependency): transitions, rewards,
terminations and truncations on thousands of random maps and action sequences (slippery ice
with gymnasium's random draw forced to the uniform our step drew, so both sides take the same
slip and the comparison is exact), the random map generator (every map has a path; gymnasium's
`is_valid` on raw draws; the distribution of holes against the exact one), text round trips,
bad answers, frames and the optimal teacher on hand-made maps and against a value iteration
written on gymnasium's own transition table."""

import collections
import functools
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chi_square
import envs
from envs import frozenlake
from envs.frozenlake import DOWN, GOAL, HOLE, LEFT, RIGHT, START, UP
from envs.grammar import format_ok
from g1jax.teachers import UNREACHABLE, goal_distances, make_teacher

gymnasium = pytest.importorskip("gymnasium")
from gymnasium.envs.toy_text.frozen_lake import MAPS, FrozenLakeEnv, generate_random_map, is_valid  # noqa: E402
from gymnasium.wrappers import TimeLimit  # noqa: E402


def letters(board) -> list[str]:
    return ["".join(frozenlake.TILE_LETTERS[int(v)] for v in row) for row in np.asarray(board)]


@functools.partial(jax.jit, static_argnums=0)
def play(env, params, states, actions, keys):
    """Each board steps its own actions [B, T] with its own keys [B, T]; per step (after it):
    position, reward, done, truncated, legal, as [T, B]."""

    def one(states, xs):
        action, key = xs
        states, reward, done, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(key, states, action, params)
        return states, (states.pos, reward, done, info["truncated"], info["legal"])

    return jax.lax.scan(one, states, (actions.T, keys.T))[1]


@functools.partial(jax.jit, static_argnums=0)
def reset_batch(env, keys, params):
    return jax.vmap(env.reset, in_axes=(0, None))(keys, params)


@functools.partial(jax.jit, static_argnums=0)
def STEP_POS(env, keys, state, action, params):  # noqa: N802
    return jax.vmap(lambda k: env.step(k, state, action, params)[0].pos)(keys)


@functools.partial(jax.jit, static_argnums=(1,))
def DRAW(keys, size, frozen_prob):  # noqa: N802
    """Raw draws of `generate_random_map` (no path check) and whether each has a path."""
    boards = jax.vmap(lambda k: frozenlake.draw_map(k, size, frozen_prob))(keys)
    return boards, jax.vmap(frozenlake.has_path)(boards)


MAPS_4 = envs.make("frozenlake", image_size=(56, 56))
MAPS_8 = envs.make("frozenlake", board_size=8, image_size=(112, 112))


@functools.cache
def generated(size: int) -> np.ndarray:
    """Our random maps, shared by the map tests: 6000 at 4x4, 1500 at 8x8."""
    return random_boards(MAPS_4 if size == 4 else MAPS_8, 6000 if size == 4 else 1500, size)


class ForcedDraws:
    """Stands in for gymnasium's `np_random`: `random()` returns the given uniforms in order."""

    def __init__(self, uniforms):
        self.uniforms = iter(np.asarray(uniforms, np.float64).tolist())

    def random(self):
        return next(self.uniforms)


def compare_with_gymnasium(env, params, boards, actions, keys, success_rate):
    """Play our batch, then each board in gymnasium (its RNG forced to our uniforms), one
    gymnasium step per move of an answer. Returns the number of gymnasium steps compared."""
    states = jax.vmap(env._fresh)(jnp.asarray(boards))
    out = jax.device_get(play(env, params, states, jnp.asarray(actions), keys))
    pos, reward, done, truncated, _ = out
    uniforms = np.asarray(jax.vmap(jax.vmap(lambda k: frozenlake.move_uniforms(k, env.actions_per_turn)))(keys))
    dirs, lengths = frozenlake.move_sequences(env.actions_per_turn)
    schedule = (params.reward_goal, params.reward_hole, params.reward_frozen)
    compared = 0
    for b in range(len(boards)):
        lake = FrozenLakeEnv(
            desc=letters(boards[b]),
            is_slippery=env.is_slippery,
            success_rate=success_rate,
            reward_schedule=schedule,
        )
        gym_env = TimeLimit(lake, max_episode_steps=env.max_steps)
        obs, _ = gym_env.reset(seed=0)
        forced = [u for t in range(actions.shape[1]) for u in uniforms[b, t, : lengths[actions[b, t]]]]
        lake.np_random = ForcedDraws(forced)
        over = False
        for t in range(actions.shape[1]):
            if over:  # a finished game stays as it ended
                assert pos[t, b] == obs and reward[t, b] == 0 and done[t, b] and not truncated[t, b], (b, t)
                continue
            total, terminated, cut = 0.0, False, False
            for d in dirs[actions[b, t], : lengths[actions[b, t]]]:
                obs, r, terminated, cut, _ = gym_env.step(int(d))
                total += r
                compared += 1
                if terminated or cut:
                    break
            over = terminated or cut
            assert pos[t, b] == obs, (b, t, letters(boards[b]), actions[b, : t + 1])
            assert reward[t, b] == np.float32(total), (b, t)
            assert done[t, b] == over, (b, t)
            assert truncated[t, b] == (cut and not terminated), (b, t)
    return compared


def random_boards(env, count, seed, params=None):
    params = env.default_params if params is None else params
    return np.asarray(reset_batch(env, jax.random.split(jax.random.key(seed), count), params).board)


CASES = [
    # (config, params, boards, moves per board): non-slippery with a short time limit (truncations),
    # slippery 4x4 at gymnasium's 1/3 and at 3/4 with another reward schedule, slippery 8x8, and
    # several moves per answer
    (dict(max_steps=12), frozenlake.Params(), 1000, 16),
    (dict(is_slippery=True, max_steps=30), frozenlake.Params(), 600, 32),
    (
        dict(is_slippery=True, max_steps=30),
        frozenlake.Params(success_rate=0.75, reward_goal=2.0, reward_hole=-1.0, reward_frozen=0.25),
        600,
        32,
    ),
    (dict(board_size=8, is_slippery=True), frozenlake.Params(), 200, 48),
    (dict(actions_per_turn=3, max_steps=20), frozenlake.Params(), 250, 10),
]


@pytest.mark.parametrize("config,params,count,moves", CASES, ids=["plain", "slippery", "slippery-3/4", "8x8", "seq3"])
def test_steps_match_gymnasium(config, params, count, moves):
    env = envs.make("frozenlake", **config, image_size=(56, 56) if config.get("board_size") != 8 else (112, 112))
    seed = len(str(config)) + count + int(100 * params.success_rate)
    boards = random_boards(env, count, seed)
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, env.num_moves, (count, moves)).astype(np.int32)
    keys = jax.random.split(jax.random.key(seed), (count, moves))
    compared = compare_with_gymnasium(env, params, boards, actions, keys, params.success_rate)
    assert compared > count * 3  # episodes are short on random moves, but many steps are compared


def test_slips_follow_the_probabilities():
    """Without forcing: from one cell, each intended move goes straight with probability
    success_rate and to each side with (1 - success_rate) / 2 (chi-square over many keys)."""
    env = envs.make("frozenlake", is_slippery=True, image_size=(56, 56), desc=("FFFF", "FSFF", "FFFF", "FFFG"))
    state = env.reset(jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), 6000)
    for rate in (1.0 / 3.0, 0.6):
        params = frozenlake.Params(success_rate=rate)
        for action in (LEFT, UP):
            cells = np.asarray(STEP_POS(env, keys, state, jnp.int32(action), params))
            straight = 5 + np.asarray([-1, 4, 1, -4])[action]
            sides = [5 + np.asarray([-1, 4, 1, -4])[(action + turn) % 4] for turn in (-1, 1)]
            counts = [(cells == c).sum() for c in (sides[0], straight, sides[1])]
            assert sum(counts) == len(keys)
            expected = len(keys) * np.asarray([(1 - rate) / 2, rate, (1 - rate) / 2])
            assert chi_square.statistic(counts, expected) < chi_square.threshold(2), (rate, action, counts)


# --- maps -----------------------------------------------------------------------------------


def test_random_maps_always_have_a_path():
    for size in (4, 8):
        boards = generated(size)
        count = len(boards)
        assert (boards[:, 0, 0] == START).all() and (boards[:, -1, -1] == GOAL).all()
        assert ((boards == 0) | (boards == HOLE)).reshape(count, -1)[:, 1:-1].all()
        assert all(is_valid([list(row) for row in letters(b)], size) for b in boards)
        if size == 8:
            assert len({b.tobytes() for b in boards}) > count * 0.99  # maps differ


def test_path_check_agrees_with_gymnasium_on_raw_draws():
    """`has_path` against gymnasium's depth-first `is_valid` on unconditioned draws, most of them
    without a path (p = 0.55), at several sizes."""
    for size, count in ((4, 1500), (8, 800), (13, 150)):
        keys = jax.random.split(jax.random.key(size), count)
        boards, ours = jax.device_get(DRAW(keys, size, 0.55))
        theirs = np.asarray([is_valid([list(row) for row in letters(b)], size) for b in boards])
        np.testing.assert_array_equal(ours, theirs, err_msg=f"{size}x{size}")
        assert 0.05 < theirs.mean() < 0.95 or size in (2, 13)


def test_hole_counts_follow_generate_random_maps_distribution():
    """4x4: the exact distribution of the number of holes given a path (all 2^14 boards
    enumerated, each checked by gymnasium's `is_valid`) against 6000 of our maps (chi-square)
    and against gymnasium's `generate_random_map`; 8x8: the mean hole rate against gymnasium's."""
    exact = np.zeros(15)
    for cells in itertools.product("FH", repeat=14):
        board = [["S", *cells[:3]], list(cells[3:7]), list(cells[7:11]), [*cells[11:14], "G"]]
        if is_valid(board, 4):
            holes = cells.count("H")
            exact[holes] += 0.8 ** (14 - holes) * 0.2**holes
    exact /= exact.sum()
    ours = (generated(4) == HOLE).sum((1, 2))
    theirs = np.asarray(["".join(generate_random_map(4, 0.8, seed=s)).count("H") for s in range(1500)])
    for counts, what in ((ours, "ours"), (theirs, "gymnasium")):
        observed = np.bincount(counts, minlength=15)[:7]
        expected = exact[:7] * len(counts)
        tail = len(counts) - observed.sum()  # pool the rare counts
        stat = chi_square.statistic([*observed, tail], [*expected, len(counts) - expected.sum()])
        assert stat < chi_square.threshold(7), (what, observed.tolist(), expected.round(1).tolist())
    rate = (generated(8) == HOLE).mean()
    gym_rate = np.mean([("".join(generate_random_map(8, 0.8, seed=s))).count("H") / 64 for s in range(600)])
    assert abs(rate - gym_rate) < 0.01, (rate, gym_rate)


def test_the_fallback_when_every_try_fails_still_has_a_path():
    """At p = 0.3 almost no draw has a path: with 2 tries the fallback (top row and right column
    cleared) runs, and the map still has one."""
    keys = jax.random.split(jax.random.key(0), 300)
    boards, ok = jax.jit(jax.vmap(lambda k: frozenlake.random_map(k, 4, 0.3, 2)))(keys)
    assert not np.asarray(ok).all()
    assert np.asarray(jax.vmap(frozenlake.has_path)(boards)).all()


def test_fixed_maps_are_gymnasiums():
    for name in ("4x4", "8x8"):
        env = envs.make("frozenlake", map_name=name)
        state = env.reset(jax.random.key(5))
        assert letters(state.board) == MAPS[name] and int(state.pos) == 0
        assert env.board_size == len(MAPS[name]) and env.max_steps == (100 if name == "4x4" else 200)
        assert env.image_size == ((252, 252) if name == "4x4" else (504, 504))
    with pytest.raises(envs.ConfigError, match="board_size=8 but the map is 4x4"):
        envs.make("frozenlake", map_name="4x4", board_size=8)
    with pytest.raises(envs.ConfigError, match="exactly one S"):
        envs.make("frozenlake", desc=("FFF", "FHF", "FFG"))
    with pytest.raises(envs.ConfigError, match="map_name"):
        envs.make("frozenlake", map_name="5x5")


# --- rules beyond gymnasium's ------------------------------------------------------------------


def test_unreadable_answers_spend_a_step_and_finished_games_stay_finished():
    env = envs.make("frozenlake", map_name="4x4", max_steps=3, image_size=(56, 56))
    state, key = env.reset(jax.random.key(0)), jax.random.key(1)
    step = jax.jit(env.step)
    for t in range(3):
        state, reward, done, info = step(key, state, env.invalid_action)
        assert int(state.pos) == 0 and int(state.steps) == t + 1 and not bool(info["legal"])
    assert bool(done) and bool(info["truncated"]) and float(reward) == 0.0
    again = step(key, state, RIGHT)[0]
    assert int(again.steps) == 3 and int(again.pos) == 0 and bool(again.done)


def test_legal_moves_on_ice_that_does_not_slip():
    env = envs.make("frozenlake", map_name="4x4", actions_per_turn=2, image_size=(56, 56))
    state = env.reset(jax.random.key(0))
    mask = np.asarray(env.valid_actions(state))
    legal = {env.action_label(a) for a in np.flatnonzero(mask)}
    # from the top-left corner: Down and Right, and pairs staying on the board; Down, Right
    # ends in the hole at (1, 1), so nothing after it would be played
    assert {"Down", "Right", "Down, Down", "Right, Right", "Right, Left", "Down, Up", "Down, Right"} <= legal
    assert not legal & {"Left", "Up", "Left, Down", "Down, Left", "Right, Up"}
    slippery = envs.make("frozenlake", map_name="4x4", is_slippery=True, image_size=(56, 56))
    assert np.asarray(slippery.valid_actions(slippery.reset(jax.random.key(0))))[:4].all()


# --- text -------------------------------------------------------------------------------------


def test_describe_and_from_board_round_trip():
    env = envs.make("frozenlake", image_size=(56, 56))
    boards = generated(4)[:12]
    rng = np.random.default_rng(0)
    for board in boards:
        for pos in rng.choice(16, 3, replace=False).tolist() + [15]:
            state = env.from_board(board, pos=pos, steps=2, last_action=UP)
            text = env.describe(state)
            back = env.from_board(text, steps=2, last_action=UP)
            jax.tree.map(np.testing.assert_array_equal, back, state)
            cells = [c for line in text.split("\n") for c in line.split(" | ")]
            assert len(cells) == 16 and sum(c in "PXV" for c in cells) == 1
            tile = int(board.reshape(-1)[pos])
            assert cells[pos] == {HOLE: "X", GOAL: "V"}.get(tile, "P")
            assert bool(state.done) == (tile in (HOLE, GOAL))
    state = env.from_board(MAPS["4x4"])
    assert env.describe(state) == "P | F | F | F\nF | H | F | H\nF | F | F | H\nH | F | F | G"
    assert env.from_board(["SFFF", "FHFH", "FFFH", "HFFP"]).pos == 15  # P over F: the start is elsewhere
    with pytest.raises(ValueError, match="exactly one start"):
        env.from_board(["FFFF", "FHFH", "FFFH", "HFFG"])
    with pytest.raises(ValueError, match="2 players"):
        env.from_board(["PFFF", "FHFH", "FFFH", "HFFP"])


@pytest.mark.parametrize("k", [1, 3])
def test_answers_parse(k):
    env = envs.make("frozenlake", actions_per_turn=k, image_size=(56, 56))
    seq = frozenlake.sequence_id
    cases = {
        "<answer>Left</answer>": seq([LEFT]),
        "<think>x</think><answer> up </answer>": seq([UP]),
        "<answer>DOWN</answer> <answer>Up</answer>": seq([DOWN]),
        "<answer>Left, Up</answer>": seq([LEFT, UP][:k]),
        "<answer>left || right || down || up</answer>": seq([LEFT, RIGHT, DOWN, UP][:k]),
        "<answer>Right, Jump, Up</answer>": seq([RIGHT]),  # the first unknown word stops the moves
        "<answer>Right,</answer>": seq([RIGHT]),
    }
    for text, action in cases.items():
        assert env.parse(text) == action, text
        assert env.parse(env.answer_text(action)) == action
    for bad in (
        "",
        "Left",
        "<answer>Left",
        "<answer></answer>",
        "<answer>2</answer>",
        "<answer>Lef</answer>",
        "<answer>move left</answer>",
        "<answer>, Left</answer>",
        "</answer>Left<answer>",
    ):
        assert env.parse(bad) == env.invalid_action, bad
    for action in range(env.num_moves):
        assert env.parse(env.answer_text(action)) == action
    assert env.answer_text(seq([DOWN])) == "<answer>Down</answer>"
    if k == 3:
        assert env.answer_text(seq([LEFT, UP, UP])) == "<answer>Left, Up, Up</answer>"
        assert env.num_actions == 4 + 16 + 64 + 1
    # adversarial text: linear time
    begin = time.perf_counter()
    env.parse("<answer>" * 50_000 + "Left, " * 50_000)
    env.parse("<answer>" + "Left, " * 200_000 + "</answer>")
    assert time.perf_counter() - begin < 1.0


# --- frames -----------------------------------------------------------------------------------


def test_frames_show_the_tiles_and_the_player():
    env = envs.make("frozenlake", map_name="4x4", image_size=(140, 140))
    render = jax.jit(env.render)
    cell = env.layout.cell
    atlas = env._tile_atlas.astype(np.int32)
    assert atlas.shape == (17, cell, cell, 3) and cell == 35
    # the tiles, the elf facing each way, the elf on the goal and the cracked hole differ visibly
    # (the elf on the start hides the stool, as in gymnasium)
    shown = atlas[[0, 1, 2, 3, 4, 5, 6, 7, 12, 16]]
    diffs = np.abs(shown[:, None] - shown[None]).mean((2, 3, 4))
    assert (diffs + np.eye(len(shown)) * 100 > 3).all(), diffs.round(1)
    start = env.reset(jax.random.key(0))
    frame = np.asarray(render(start))
    assert frame.shape == (140, 140, 3) and frame.dtype == np.uint8
    y0, x0 = env.layout.board_y, env.layout.board_x

    def tile(frame, r, c):
        return frame[y0 + r * cell : y0 + (r + 1) * cell, x0 + c * cell : x0 + (c + 1) * cell]

    np.testing.assert_array_equal(tile(frame, 0, 0), env._tile_atlas[4 + 4 + DOWN])  # the elf on the stool
    np.testing.assert_array_equal(tile(frame, 1, 1), env._tile_atlas[HOLE])
    np.testing.assert_array_equal(tile(frame, 3, 3), env._tile_atlas[GOAL])
    moved = jax.jit(env.step)(jax.random.key(0), start, RIGHT)[0]
    frame = np.asarray(render(moved))
    np.testing.assert_array_equal(tile(frame, 0, 0), env._tile_atlas[START])
    np.testing.assert_array_equal(tile(frame, 0, 1), env._tile_atlas[4 + RIGHT])  # facing its last move
    fallen = np.asarray(render(jax.jit(env.step)(jax.random.key(0), moved, DOWN)[0]))
    np.testing.assert_array_equal(tile(fallen, 1, 1), env._tile_atlas[16])
    with pytest.raises(envs.ConfigError, match="cells need >= 12 px"):
        envs.make("frozenlake", board_size=8, image_size=(84, 84))


# --- the teacher ------------------------------------------------------------------------------


def bfs_distances(rows: list[str]) -> np.ndarray:
    """Plain breadth-first search from the goals over non-hole cells."""
    n = len(rows)
    dist = np.full(n * n, UNREACHABLE)
    queue = collections.deque()
    for i, ch in enumerate("".join(rows)):
        if ch == "G":
            dist[i] = 0
            queue.append(i)
    while queue:
        cell = queue.popleft()
        r, c = divmod(cell, n)
        for dr, dc in frozenlake.DELTAS:
            rr, cc = r + dr, c + dc
            if 0 <= rr < n and 0 <= cc < n and rows[rr][cc] != "H" and dist[rr * n + cc] > dist[cell] + 1:
                dist[rr * n + cc] = dist[cell] + 1
                queue.append(rr * n + cc)
    return dist


def test_goal_distances_match_a_plain_bfs():
    boards = random_boards(MAPS_8, 1500, 4, frozenlake.Params(frozen_prob=0.7))[:200]
    ours = np.asarray(jax.jit(jax.vmap(goal_distances))(jnp.asarray(boards)))
    for board, dist in zip(boards, ours):
        np.testing.assert_array_equal(dist, bfs_distances(letters(board)))


@functools.cache
def teaching(size: int, k: int):
    """(env, teacher, jitted act, jitted step) on random-map envs, set up by `from_board`: one
    compile per board size and moves per answer, shared by the teacher tests."""
    env = envs.make("frozenlake", board_size=size, actions_per_turn=k, image_size=(28 * size, 28 * size))
    teacher = make_teacher(env)
    return env, teacher, jax.jit(teacher.act), jax.jit(env.step)


@pytest.mark.parametrize("k", [1, 2])
def test_teacher_walks_a_shortest_path(k):
    """Hand-made maps with known shortest paths: the teacher reaches the goal in exactly that
    many moves (k moves per answer), never steps into the edge, and its answers are G1's full
    format and parse back to its moves."""
    cases = [
        (("SFFF", "HHHF", "FFFF", "GHHH"), 9),  # a snake: right, down, left, down
        (("SHFF", "FHFH", "FFFH", "HFFG"), 6),
        (("SFFF", "FHHF", "FHGH", "FFFF"), 6),  # down, right, then up into the walled goal
    ]
    if k == 1:
        cases.append((("SFFFFFFF",) + ("FFFFFFFF",) * 6 + ("FFFFFFFG",), 14))
    for desc, length in cases:
        env, teacher, act, step = teaching(len(desc), k)
        state, moves, answers = env.from_board(desc), 0, 0
        while not bool(state.done):
            action = int(act(jax.random.key(0), state))
            text = teacher.answer(state, action)
            assert format_ok(text, strict=True) and env.parse(text) == action
            assert env.describe(state) in text
            state, _, _, info = step(jax.random.key(0), state, action)
            assert bool(info["legal"])
            moves, answers = int(state.steps), answers + 1
        assert bool(env.solved(state)) and moves == length, (desc, moves)
        assert answers == -(-length // k)


def test_teacher_without_a_path_avoids_the_holes():
    env, teacher, act, _ = teaching(4, 1)
    desc = ["SFHF", "HFHF", "FHGH", "FFHF"]  # the goal is walled in by holes
    state = env.from_board(desc, pos=(1, 1))
    action = int(act(jax.random.key(0), state))
    assert action == UP  # left, right and down are holes
    assert "No path" in teacher.answer(state, action)
    done = env.from_board(["SFHF", "HXHF", "FHGH", "FFHF"])
    assert int(act(jax.random.key(0), done)) == env.invalid_action
    assert teacher.answer(done, env.invalid_action).endswith("<answer>none</answer>")
    assert env.parse("<answer>none</answer>") == env.invalid_action


def gym_success_values(desc, horizon, success_rate=1.0 / 3.0):
    """[n * n, 4]: probability of reaching the goal within `horizon` moves after each action,
    by finite-horizon value iteration on gymnasium's own transition table `P`."""
    lake = FrozenLakeEnv(desc=list(desc), is_slippery=True, success_rate=success_rate)
    states = len(lake.P)
    value = np.zeros(states)
    goal = np.asarray([ch == "G" for ch in "".join(desc)])
    value[goal] = 1.0

    def q(value):
        out = np.zeros((states, 4))
        for s in range(states):
            for a in range(4):
                out[s, a] = sum(
                    p * (1.0 if goal[nxt] else 0.0 if done else value[nxt]) for p, nxt, _, done in lake.P[s][a]
                )
        return out

    for _ in range(horizon - 1):
        value = np.where(goal, 1.0, q(value).max(1))
        value[[i for i, ch in enumerate("".join(desc)) if ch == "H"]] = 0.0
    return q(value)


def test_slippery_teacher_maximises_the_chance_of_success():
    """gymnasium's 4x4 map: our success probabilities after each move from the start equal a value
    iteration on gymnasium's transition table (0.74 for the best move, its registration's
    "optimum success"), and the teacher picks a best move; likewise mid-game with few moves left."""
    env = envs.make("frozenlake", map_name="4x4", is_slippery=True)
    teacher = make_teacher(env)
    for pos, steps in ((0, 0), (9, 90), (6, 97)):
        state = env.from_board(MAPS["4x4"], pos=pos, steps=steps)
        facts = teacher.facts(jax.tree.map(lambda x: jnp.asarray(x)[None], state))
        expected = gym_success_values(MAPS["4x4"], env.max_steps - steps)[pos]
        np.testing.assert_allclose(facts["value"][0], expected, atol=1e-5)
        best = int(facts["best"][0])
        assert expected[best] >= expected.max() - 1e-5
    start = teacher.facts(jax.tree.map(lambda x: jnp.asarray(x)[None], env.reset(jax.random.key(0))))
    assert abs(start["value"][0].max() - 0.74) < 0.005
    assert "chance of reaching the goal within the 100 moves left" in teacher.answer(env.reset(jax.random.key(0)), 0)


# --- closed-loop evaluation ---------------------------------------------------------------------


def test_closed_loop_reports_success_rate_and_steps_to_solve():
    """`experiments/eval.py --game frozenlake`'s loop: every goal scores 1 (info["solved"]), every
    run's first game ends within the decisions, and the teacher wins each first game in its start's
    shortest-path length."""
    from g1jax import evaluation as ev

    protocol = ev.PROTOCOLS["frozenlake"]
    env = protocol.make_env(image_size=(56, 56))
    policies = [ev.make_policy(name, env, protocol) for name in ("random", "teacher")]
    args = dict(runs=6, steps=24, key=jax.random.key(0), progress=False, keep_texts=False)
    rows = ev.evaluate(protocol, env, policies, **args)
    for row in rows:
        episodes = row.episodes
        assert episodes["solved"] == row.totals.sum() and episodes["episodes"] >= episodes["solved"]
        assert episodes["episodes"] == row.ended.sum() and episodes["runs"] == 6
        won = (row.scores > 0).T[:-1]  # [steps - 1, runs]; the next decision sees the won board
        goal = (row.states.board.reshape(24, 6, -1) == GOAL).argmax(-1)
        np.testing.assert_array_equal(row.states.pos[1:][won], goal[1:][won])
        first = [row.scores[r, : np.flatnonzero(row.ended[r])[0] + 1].sum() > 0 for r in range(6) if row.ended[r].any()]
        assert episodes["success_rate"] == pytest.approx(sum(first) / 6)
    teacher = rows[1]
    assert teacher.episodes["success_rate"] == 1.0 and teacher.episodes["unfinished"] == 0
    assert teacher.episodes["solved"] == teacher.episodes["episodes"]  # and every later game
    distances = jax.jit(goal_distances)
    lengths = [int(distances(jnp.asarray(teacher.states.board[0, r]))[int(teacher.states.pos[0, r])]) for r in range(6)]
    assert teacher.episodes["steps_to_solve"] == pytest.approx(np.mean(lengths))
    table = ev.table_markdown(ev.figure1_table(rows))
    assert "FrozenLake (not in the paper)" in table and "success 1 ± 0, " in table and "| paper |" not in table
