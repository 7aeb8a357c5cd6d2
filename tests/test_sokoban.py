"""Sokoban against gym-sokoban 0.0.6 itself (a test dependency): the step logic on every push
case and on random rooms x random actions, the room generator's solution-length distribution;
every generated room solvable (breadth-first solver, itself checked against a plain Python BFS);
text, frames, teacher. The env contract (tests/test_env_contract.py) covers the rest."""

import collections
import importlib.util
import os
import random
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import sokoban as S
from envs.grammar import format_ok, perception_ok
from g1jax.teachers import TeacherError, make_teacher

ROOMS = 2048  # generated rooms checked for solvability and the length distribution
REFERENCE_ROOMS = 300  # rooms of gym-sokoban's own generator (about 3 ms each)


def gym_sokoban():
    """gym-sokoban's env module and room generator. Its package imports `pkg_resources`, which
    recent setuptools no longer ship: a stand-in that finds its data files is installed first."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, path: os.path.join(
            os.path.dirname(importlib.util.find_spec(package).origin), path
        )
        sys.modules["pkg_resources"] = shim
    sokoban_env = pytest.importorskip("gym_sokoban.envs.sokoban_env")
    from gym_sokoban.envs import room_utils

    return sokoban_env, room_utils


ENV = envs.make("sokoban", max_steps=40)
STEP = jax.jit(jax.vmap(ENV.step))
SOLVE = jax.jit(jax.vmap(S.solve))


@pytest.fixture(scope="module")
def rooms():
    """ROOMS default rooms generated on the device: (boards, players, scores, tries)."""
    return jax.device_get(ENV.generate_batch(jax.random.split(jax.random.key(0), ROOMS)))


def fresh_states(rooms, n: int):
    """The first n generated rooms as fresh states (what reset makes of them)."""
    boards, players = jnp.asarray(rooms[0][:n]), jnp.asarray(rooms[1][:n])
    return jax.vmap(lambda b, p: S.State(b, p, jnp.int32(0), jnp.bool_(False)))(boards, players)


def reference_env(board: np.ndarray, steps: int = 0, max_steps: int = 40):
    """A gym-sokoban SokobanEnv set to our board (codes 0..6)."""
    sokoban_env, _ = gym_sokoban()
    env = sokoban_env.SokobanEnv(
        dim_room=board.shape, num_boxes=int(S._is_box(board).sum()), max_steps=max_steps, reset=False
    )
    env.room_fixed = np.where(np.isin(board, (2, 3, 6)), 2, np.where(board == 0, 0, 1))
    env.room_state = np.where(board == 6, 5, board)
    env.player_position = np.argwhere(env.room_state == 5)[0]
    env.num_env_steps = steps
    env.boxes_on_target = int((board == 3).sum())
    return env


def our_board(env) -> np.ndarray:
    board = np.asarray(env.room_state, np.int32).copy()
    board[(board == 5) & (env.room_fixed == 2)] = 6
    return board


def room(rows: str) -> np.ndarray:
    """A board from rows of symbols without separators, e.g. "#_PX_#"."""
    return np.array([[S.SYMBOLS.index(ch) for ch in row] for row in rows.split()], np.int32)


# Every push case, each room with the action played from it.
CASES = {
    "plain move": ("###### #_P__# #____# #_XO_# #____# ######", S.RIGHT),
    "move into a wall": ("###### #P___# #____# #_XO_# #____# ######", S.UP),
    "push onto floor": ("###### #____# #PX__# #__O_# #____# ######", S.RIGHT),
    "push onto the target": ("###### #____# #PXO_# #____# #____# ######", S.RIGHT),
    "push off the target": ("###### #____# #P√__# #_XO_# #____# ######", S.RIGHT),
    "push from target to target": ("###### #____# #P√O_# #_X__# #____# ######", S.RIGHT),
    "box into a wall": ("###### #__PX# #____# #_O__# #____# ######", S.RIGHT),
    "box into a box": ("###### #PXX_# #_OO_# #____# #____# ######", S.RIGHT),
    "box into a box on target": ("###### #PX√_# #_O__# #____# #____# ######", S.RIGHT),
    "player onto a target": ("###### #____# #_PO_# #_X__# #____# ######", S.RIGHT),
    "player off a target": ("###### #____# #_S__# #_X__# #____# ######", S.LEFT),
    "push up onto the target": ("###### #_O__# #_X__# #_P__# #____# ######", S.UP),
    "push down, player from a target": ("###### #_S__# #_X__# #____# #_X_O# ######", S.DOWN),
    "push left": ("###### #____# #O_XP# #____# #____# ######", S.LEFT),
    "no-op": ("###### #____# #_PX_# #_O__# #____# ######", S.NOOP),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_push_case_steps_as_gym_sokoban(case):
    rows, action = CASES[case]
    board = room(rows)
    env = envs.make("sokoban", num_boxes=int(S._is_box(board).sum()), max_steps=40)
    state = env.from_board(board)
    new, reward, done, info = env.step(jax.random.key(0), state, action)
    ref = reference_env(board)
    _, ref_reward, ref_done, ref_info = ref.step(action, observation_mode="tiny_rgb_array")
    np.testing.assert_array_equal(np.asarray(new.board), our_board(ref), err_msg=case)
    np.testing.assert_array_equal(np.asarray(new.player), ref.player_position)
    assert float(reward) == pytest.approx(ref_reward) and float(info["raw_reward"]) == pytest.approx(ref_reward)
    assert bool(done) == ref_done
    assert bool(info["legal"]) == bool(ref_info["action.moved_player"])


def test_the_push_cases_have_the_expected_outcomes():
    """The reference is itself right on the cases (what gym-sokoban's code says, checked by hand)."""
    outcome = {}
    for case, (rows, action) in CASES.items():
        ref = reference_env(room(rows))
        _, reward, done, info = ref.step(action, observation_mode="tiny_rgb_array")
        outcome[case] = (round(reward, 2), done, info["action.moved_player"], info["action.moved_box"])
    assert outcome["plain move"] == (-0.1, False, True, False)
    assert outcome["move into a wall"] == (-0.1, False, False, False)
    assert outcome["push onto floor"] == (-0.1, False, True, True)
    assert outcome["push onto the target"] == (10.9, True, True, True)
    assert outcome["push off the target"] == (-1.1, False, True, True)
    assert outcome["push from target to target"] == (-0.1, False, True, True)
    assert outcome["box into a wall"][2:] == (False, False)
    assert outcome["box into a box"][2:] == (False, False)
    assert outcome["box into a box on target"][2:] == (False, False)
    assert outcome["no-op"] == (-0.1, False, False, False)


def test_random_rooms_and_actions_step_as_gym_sokoban(rooms):
    """64 generated rooms, 60 uniformly random actions each (no-ops included), against
    gym-sokoban step by step until each episode ends (40 steps at most)."""
    n, moves = 64, 60
    states = fresh_states(rooms, n)
    boards = np.asarray(states.board)
    refs = [reference_env(b) for b in boards]
    actions = np.random.default_rng(0).integers(0, 5, (moves, n))
    alive = np.ones(n, bool)
    for t in range(moves):
        states, reward, done, _ = jax.device_get(STEP(jax.random.split(jax.random.key(t), n), states, actions[t]))
        for i in np.flatnonzero(alive):
            _, ref_reward, ref_done, _ = refs[i].step(int(actions[t, i]), observation_mode="tiny_rgb_array")
            np.testing.assert_array_equal(states.board[i], our_board(refs[i]), err_msg=f"room {i}, move {t}")
            assert reward[i] == pytest.approx(ref_reward) and done[i] == ref_done, (i, t)
            alive[i] = not ref_done
    assert not alive.any()  # every episode ended: solved or 40 steps


def python_bfs(board: np.ndarray) -> int:
    """Shortest solution length of a room with any number of boxes, a plain breadth-first search over
    (player, boxes) (-1: none)."""
    walls = board == S.WALL
    targets = frozenset(map(tuple, np.argwhere(np.isin(board, (2, 3, 6)))))
    player = tuple(np.argwhere(np.isin(board, (5, 6)))[0])
    start = (player, frozenset(map(tuple, np.argwhere(np.isin(board, (3, 4))))))
    seen, queue = {start}, collections.deque([(start, 0)])
    while queue:
        (player, boxes), depth = queue.popleft()
        if boxes <= targets:
            return depth
        for dr, dc in S.DELTAS:
            p = (player[0] + dr, player[1] + dc)
            moved = boxes
            if walls[p]:
                continue
            if p in boxes:
                b = (p[0] + dr, p[1] + dc)
                if walls[b] or b in boxes:  # no pushing into a wall or another box
                    continue
                moved = (boxes - {p}) | {b}
            if (p, moved) not in seen:
                seen.add((p, moved))
                queue.append(((p, moved), depth + 1))
    return -1


def test_the_solver_agrees_with_a_plain_bfs(rooms):
    boards = rooms[0][:60]
    actions, lengths = jax.device_get(SOLVE(jnp.asarray(boards)))
    assert [python_bfs(b) for b in boards] == lengths.tolist()
    stuck = room("###### #X___# #____# #__O_# #___P# ######")  # a box in a corner
    assert python_bfs(stuck) == -1 and S.solve(jnp.asarray(stuck))[1] == -1
    # the first action starts a shortest solution
    for board, action, length in zip(boards[:20], actions, lengths):
        state = ENV.from_board(board)
        after = ENV.step(jax.random.key(0), state, int(action))[0]
        assert python_bfs(np.asarray(after.board)) == length - 1


def test_every_generated_room_is_solvable_and_starts_unsolved(rooms):
    boards, players, scores, tries = rooms
    _, lengths = jax.device_get(SOLVE(jnp.asarray(boards)))
    assert (lengths >= 1).all(), np.bincount(lengths + 1)
    assert (scores > 0).all() and (tries >= 1).all()  # no fallback room in this sample
    assert ((boards == S.BOX).sum((1, 2)) == 1).all() and ((boards == S.TARGET).sum((1, 2)) == 1).all()
    assert not np.isin(boards, (S.BOX_ON_TARGET, S.PLAYER_ON_TARGET)).any()
    assert (boards[:, 0] == 0).all() and (boards[:, -1] == 0).all() and (boards[:, :, 0] == 0).all()
    np.testing.assert_array_equal(boards[np.arange(ROOMS), players[:, 0], players[:, 1]], S.PLAYER)
    assert len({b.tobytes() for b in boards}) > 0.6 * ROOMS  # small rooms repeat (about 73% distinct)


def test_rooms_with_several_boxes_are_solvable():
    # the device solver (and teacher) handle one box; a plain BFS confirms the reverse-play guarantee here
    env = envs.make("sokoban", dim_room=(7, 7), num_boxes=2)
    boards, _, scores, _ = jax.device_get(env.generate_batch(jax.random.split(jax.random.key(1), 200)))
    assert ((boards == S.BOX).sum((1, 2)) == 2).all() and (scores > 0).all()
    lengths = [python_bfs(b) for b in boards]
    assert min(lengths) >= 1, lengths


def test_solution_lengths_are_distributed_as_gym_sokobans(rooms):
    """Shortest-solution lengths of our rooms against REFERENCE_ROOMS of gym-sokoban's generator
    (6x6, one box, its 20-step walk): total variation distance and means (BENCHMARKS.md has
    the full comparison, experiments/sokoban_rooms.py)."""
    _, room_utils = gym_sokoban()
    random.seed(0)
    np.random.seed(0)
    reference = []
    while len(reference) < REFERENCE_ROOMS:
        try:
            fixed, state, _ = room_utils.generate_room(dim=(6, 6), num_steps=20, num_boxes=1)
        except (RuntimeError, RuntimeWarning):
            continue  # SokobanEnv.reset tries again
        board = state.astype(np.int32)
        board[(board == 5) & (fixed == 2)] = 6
        reference.append(board)
    ref_lengths = np.asarray(SOLVE(jnp.asarray(np.stack(reference)))[1])
    ours = np.asarray(SOLVE(jnp.asarray(rooms[0]))[1])
    assert (ref_lengths >= 1).all()
    p = np.bincount(ours, minlength=64)[:64] / len(ours)
    q = np.bincount(ref_lengths, minlength=64)[:64] / len(ref_lengths)
    assert 0.5 * np.abs(p - q).sum() < 0.15, (p[:12].round(3), q[:12].round(3))
    assert abs(ours.mean() - ref_lengths.mean()) < 0.6


def test_the_fallback_room_is_used_when_every_try_fails():
    """One reverse step rarely yields a positive score: such rooms fall back to fallback_room."""
    env = envs.make("sokoban", dim_room=(5, 5), reverse_steps=1, reverse_walks=1, generation_tries=1)
    boards, _, scores, _ = jax.device_get(jax.jit(jax.vmap(env.generate))(jax.random.split(jax.random.key(1), 64)))
    failed = scores == 0
    assert failed.any() and (~failed).any()
    assert (boards[failed] == S.fallback_room((5, 5), 1)).all()
    assert S.solve(jnp.asarray(S.fallback_room((5, 5), 1)))[1] == 1


def test_text_describe_parse_and_answers():
    board = room("###### #____# #_PX_# #_O__# #____# ######")
    state = ENV.from_board(board)
    text = ENV.describe(state)
    assert text.split("\n")[2] == "# | _ | P | X | _ | #"
    np.testing.assert_array_equal(np.asarray(ENV.from_board(text).board), board)  # the text reads back
    for action in range(1, 5):
        assert ENV.parse(ENV.answer_text(action)) == action
    assert ENV.parse("<think>x</think><answer> left </answer>") == S.LEFT
    assert ENV.parse("<answer>UP</answer><answer>Down</answer>") == S.UP  # the first answer block
    assert ENV.parse("<answer>Left, Up</answer>") == S.LEFT
    for bad in ("Left", "<answer>west</answer>", "<answer></answer>", "<answer>Left"):
        assert ENV.parse(bad) == ENV.invalid_action
    three = envs.make("sokoban", actions_per_turn=3)
    assert three.parse_actions("<answer>Left, up,DOWN, Right</answer>") == [S.LEFT, S.UP, S.DOWN]
    assert three.parse_actions("<answer>Left, jump, Up</answer>") == [S.LEFT]  # stops at the first unknown
    assert "<answer>Left, Up</answer>" in three.prompt and "<answer>Left</answer>" in ENV.prompt
    with pytest.raises(ValueError, match="exactly one player"):
        ENV.from_board(room("###### #____# #__X_# #_O__# #____# ######"))


def test_a_turn_plays_its_actions_in_order_and_stops_at_the_end():
    env = envs.make("sokoban", actions_per_turn=3)
    state = env.from_board(room("###### #____# #P_XO# #____# #____# ######"))
    turn = jax.jit(env.step_turn)
    new, reward, done, info = turn(jax.random.key(0), state, jnp.array([S.RIGHT, S.RIGHT, S.UP]))
    assert bool(done) and bool(info["solved"]) and int(info["played"]) == 2  # solved after two: Up not played
    assert float(reward) == pytest.approx(-0.1 + 10.9)
    new, reward, _, info = turn(jax.random.key(0), state, jnp.array([S.RIGHT, S.NOOP, S.RIGHT]))
    assert int(info["played"]) == 1 and int(new.steps) == 1  # 0 ends the sequence
    new, reward, _, info = turn(jax.random.key(0), state, jnp.zeros(3, jnp.int32))
    assert int(info["played"]) == 1 and float(reward) == pytest.approx(-0.1)  # no move: one no-op step


def test_frames_show_gym_sokobans_tiles():
    env = envs.make("sokoban", image_size=(112, 112))  # 18-px cells
    board = room("###### #____# #_PX_# #_O__# #____# ######")
    frame = np.asarray(jax.jit(env.render)(env.from_board(board)))
    assert frame.shape == (112, 112, 3) and frame.dtype == np.uint8
    cell, (y0, x0) = env._cell, env._origin
    tile = lambda r, c: frame[y0 + r * cell : y0 + (r + 1) * cell, x0 + c * cell : x0 + (c + 1) * cell]  # noqa: E731
    np.testing.assert_array_equal(tile(1, 1), 0)  # floor: black
    assert (tile(0, 0).reshape(-1, 3) == S.BRICK).all(1).mean() > 0.5
    assert (tile(2, 2).reshape(-1, 3) == S.ALIEN).all(1).mean() > 0.3
    assert (tile(2, 3).reshape(-1, 3) == S.CRATE).all(1).mean() > 0.2
    red = (tile(3, 2)[..., 0] > 200) & (tile(3, 2)[..., 1] < 60)
    assert red.sum() > 2 * cell  # the red outline and diamond
    for code in range(7):  # every tile differs from every other
        for other in range(code):
            assert not np.array_equal(env._tile_atlas[code], env._tile_atlas[other])
    with pytest.raises(envs.ConfigError, match="image_size"):
        envs.make("sokoban", image_size=(28, 28))


def test_the_teacher_solves_every_room_in_the_shortest_number_of_moves(rooms):
    teacher = make_teacher(ENV)
    act = jax.jit(jax.vmap(teacher.act))
    n = 128
    boards, states = jnp.asarray(rooms[0][:n]), fresh_states(rooms, n)
    lengths = np.asarray(SOLVE(boards)[1])
    for t in range(int(lengths.max())):
        keys = jax.random.split(jax.random.key(t), n)
        states, _, _, _ = STEP(keys, states, act(keys, states))
    np.testing.assert_array_equal(np.asarray(states.done), True)  # all solved (40 steps would be the limit)
    np.testing.assert_array_equal(np.asarray(states.steps), lengths)
    first = S.State(boards[0], jnp.asarray(rooms[1][0]), jnp.int32(0), jnp.bool_(False))
    text = teacher.answer(first, int(teacher.act(jax.random.key(0), first)))
    assert format_ok(text, strict=True) and perception_ok(text, ENV.describe(first))
    assert ENV.parse(text) == int(S.solve(boards[0])[0])
    with pytest.raises(TeacherError, match="one-box"):
        make_teacher(envs.make("sokoban", num_boxes=2))


def test_resets_can_draw_from_a_pool_of_rooms():
    pool = ENV.room_pool(jax.random.key(3), 6, chunk=ROOMS)  # the fixture's compiled batch size
    assert pool.rooms.shape == (6, 6, 6) and pool.players.shape == (6, 2)
    states = jax.jit(jax.vmap(ENV.reset, in_axes=(0, None)))(jax.random.split(jax.random.key(4), 32), pool)
    rooms = {b.tobytes() for b in np.asarray(pool.rooms)}
    assert {b.tobytes() for b in np.asarray(states.board)} <= rooms
    np.testing.assert_array_equal(
        np.asarray(states.board)[np.arange(32), states.player[:, 0], states.player[:, 1]], S.PLAYER
    )


def test_closed_loop_scores_games_won_and_the_first_games_success():
    """`experiments/eval.py --game sokoban`'s loop: a decision scores 1 when it wins a game
    (info["solved"]), and the teacher wins every run's first game in its room's shortest solution."""
    from g1jax import evaluation as ev

    protocol = ev.PROTOCOLS["sokoban"]
    env = protocol.make_env()
    policies = [ev.make_policy(name, env, protocol) for name in ("random", "teacher")]
    rows = ev.evaluate(
        protocol, env, policies, runs=4, steps=24, key=jax.random.key(0), progress=False, keep_texts=False
    )
    for row in rows:
        episodes = row.episodes
        assert episodes["solved"] == row.totals.sum() and episodes["episodes"] == row.ended.sum()
        won = (row.scores > 0).T[:-1]  # [steps - 1, runs]; the next decision sees the won room
        assert bool(np.asarray(jax.vmap(S.solved)(row.states.board[1:][won])).all())
    teacher = rows[1].episodes
    lengths = np.asarray(SOLVE(jnp.asarray(rows[1].states.board[0]))[1])
    assert teacher["success_rate"] == 1.0 and teacher["solved"] == teacher["episodes"]
    assert teacher["steps_to_solve"] == pytest.approx(lengths.mean())
