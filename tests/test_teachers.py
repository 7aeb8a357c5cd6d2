"""Programmatic teachers: answers in G1's full format that parse back to the teacher's action,
every game's choice checked against an independent numpy reference (2048 merges and a
brute-force expectimax, Swap line scores, Shisen-Sho follow-up counts through the game's own
valid-action mask), closed-loop strength against random valid play, epsilon exploration,
configuration errors, and the JSONL import with each kind of malformed line."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import envs
from envs.grammar import decode_pair, encode_pair, format_ok, perception_ok
from g1jax import teachers
from g1jax.cli import teacher as teacher_cli
from g1jax.evaluation.teacher_strength import start_states, strength
from g1jax.teachers import TEACHERS, TeacherDataError, TeacherError, load_teacher_jsonl, make_teacher

ENVS = {
    "2048": envs.make("2048"),
    "shisensho": envs.make("shisensho"),
    "shisensho_photo": envs.make("shisensho_photo", bank_size=4),
    "swap": envs.make("swap"),
}
BATCH = 32
# Start states: 2048's G1 warm-up (g1jax.evaluation.teacher_strength, compiled once for this file and the
# strength run), Shisen-Sho mid-game (6 random valid moves), Swap and the photo game fresh
# deals (G1's Swap has no warm-up; that also spares compiling their steps here).
SHISENSHO_MOVES = 6
TEACHER = {game: make_teacher(env) for game, env in ENVS.items()}  # each game's default kind
RESET = jax.jit(lambda env, keys: jax.vmap(env.reset)(keys), static_argnums=0)
RANDOM_ACTIONS = jax.jit(lambda env, keys, states: jax.vmap(env.random_valid_action)(keys, states), static_argnums=0)
VALID = jax.jit(lambda env, states: jax.vmap(env.valid_actions)(states), static_argnums=0)
GREEDY = make_teacher(ENVS["2048"], "greedy")


def keys(seed, n=BATCH):
    return jax.random.split(jax.random.key(seed), n)


@pytest.fixture(scope="module")
def warm_states():
    out = {}
    out["2048"] = start_states(ENVS["2048"], jax.random.key(7), BATCH)
    out["shisensho"] = start_states(ENVS["shisensho"], jax.random.key(7), BATCH, warmup_moves=SHISENSHO_MOVES)
    for game in ("shisensho_photo", "swap"):
        out[game] = RESET(ENVS[game], keys(7))
    return out


def with_row(states, state, row=0):
    """The batch with row `row` replaced by `state` (so a hand-made position reuses the
    batch's compiled functions)."""
    return jax.tree.map(lambda batch, one: batch.at[row].set(one), states, state)


# ---------------------------------------------------------------------------------------
# Answers: format, perception, parse-back
# ---------------------------------------------------------------------------------------


def same_move(env, action):
    """A pair game's move without its order (both orders are the same move)."""
    if env.name == "2048" or action == env.invalid_action:
        return int(action)
    r1, c1, r2, c2 = decode_pair(int(action), env.board_size)
    return tuple(sorted([(r1, c1), (r2, c2)]))


def check_answers(env, states, actions, texts):
    assert len(texts) == len(actions)
    for i, (action, text) in enumerate(zip(actions, texts)):
        truth = env.describe(envs.unbatch(states, i))
        assert env.parse(text) == action, text
        if action != env.invalid_action:  # the game's own answer text ends every answer
            assert text.endswith(env.answer_text(action)), text
        assert format_ok(text, strict=True), text
        assert perception_ok(text, truth) and text.count(truth) == 1


@pytest.mark.parametrize("game", sorted(ENVS))
def test_answers_parse_back_to_the_action_in_the_full_format(game, warm_states):
    """Every other row plays a random valid action instead of the teacher's (the epsilon
    path: the reasoning then says the teacher would have played another)."""
    env, teacher, states = ENVS[game], TEACHER[game], warm_states[game]
    best = teacher.facts(states)["best"]
    random = np.asarray(RANDOM_ACTIONS(env, keys(2), states))
    actions = np.where(np.arange(BATCH) % 2 == 0, best, random)
    texts = teacher.answers(states, actions)
    check_answers(env, states, actions, texts)
    differs = [same_move(env, a) != same_move(env, b) for a, b in zip(actions, best)]
    assert any(differs)
    assert all(("but I play" in t) == d for t, d in zip(texts, differs)), "the reasoning names the teacher's choice"


def test_greedy_answers_for_other_kinds_parse_back(warm_states):
    env, states = ENVS["2048"], warm_states["2048"]
    actions = GREEDY.facts(states)["best"]
    check_answers(env, states, actions, GREEDY.answers(states, actions))


def test_one_state_answer_equals_the_batch_answer(warm_states):
    states = warm_states["2048"]
    actions = GREEDY.facts(states)["best"]
    assert GREEDY.answer(envs.unbatch(states, 3), int(actions[3])) == GREEDY.answers(states, actions)[3]


def test_answers_name_what_was_compared(warm_states):
    env = ENVS["2048"]
    # Left and Right merge the two 2s for 4 points; Up and Down merge nothing; Right and Left
    # tie on mobility too, so the greedy teacher plays Right (the lower action number)
    state = env.from_board(np.array([[1, 1, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 3]]))
    states = with_row(warm_states["2048"], state)
    actions = np.zeros(BATCH, np.int64)
    actions[0] = 3
    text = GREEDY.answers(states, actions)[0]
    assert (
        "Right merges 1 pair for 4 points" in text
        and "Left merges 1 pair for 4 points" in text
        and "Up merges nothing" in text
    )
    assert "Right (1) is best by this count, but I play Left (3)." in text and text.endswith("<answer>3</answer>")
    swap, states = TEACHER["swap"], warm_states["swap"]
    text = swap.answers(states, swap.facts(states)["best"])[0]
    assert "complete a line. Swapping" in text and "points" in text and "So I play" in text


def test_no_move_left_answers_the_invalid_action(warm_states):
    env2048 = ENVS["2048"]
    stuck = env2048.from_board(np.array([[1, 2, 1, 2], [2, 1, 2, 1], [1, 2, 1, 2], [2, 1, 2, 1]]))
    shisen = ENVS["shisensho"]
    # two crossed pairs in the middle: every path with <= 2 turns runs into the other pair
    blocked = shisen.from_board(np.pad(np.array([[1, 2], [2, 1]]), 2))
    assert not bool(blocked.legal.any())
    for env, state in ((env2048, stuck), (shisen, blocked)):
        teacher, states = TEACHER[env.name], with_row(warm_states[env.name], state)
        actions = teacher.facts(states)["best"]
        assert actions[0] == env.invalid_action
        texts = teacher.answers(states, actions)
        assert "game is over" in texts[0] or "no move is left" in texts[0]
        check_answers(env, states, actions, texts)


# ---------------------------------------------------------------------------------------
# 2048: greedy merges, expectimax against a brute-force reference
# ---------------------------------------------------------------------------------------


def slide_left(row):
    """numpy reference of one row slid left: (new row, points)."""
    tiles = [v for v in row if v]
    out, points, i = [], 0, 0
    while i < len(tiles):
        if i + 1 < len(tiles) and tiles[i] == tiles[i + 1]:
            out.append(tiles[i] + 1)
            points += 2 ** (tiles[i] + 1)
            i += 2
        else:
            out.append(tiles[i])
            i += 1
    return out + [0] * (len(row) - len(out)), points


def move_board(board, action):
    """numpy reference: board after direction `action` (0 up, 1 right, 2 down, 3 left), points."""
    view = {0: lambda b: b.T, 1: lambda b: b[:, ::-1], 2: lambda b: b[::-1].T, 3: lambda b: b}[action](board)
    rows, points = zip(*(slide_left(list(r)) for r in view))
    moved = np.array(rows)
    back = {0: lambda b: b.T, 1: lambda b: b[:, ::-1], 2: lambda b: b.T[::-1], 3: lambda b: b}[action](moved)
    return back, sum(points)


def leaf_value(board, empty_weight, merge_weight):
    pairs = ((board[:, 1:] == board[:, :-1]) & (board[:, 1:] > 0)).sum() + (
        (board[1:] == board[:-1]) & (board[1:] > 0)
    ).sum()
    return empty_weight * (board == 0).sum() + merge_weight * pairs


def expectimax_reference(board, depth, four_prob, w_empty, w_merge):
    """Plain-Python expectimax: per move, points plus (depth 1) the leaf value of the
    afterstate or (deeper) the spawn-averaged best value one move shallower."""

    def move_values(b, d):
        values = []
        for a in range(4):
            after, points = move_board(b, a)
            if (after == b).all():
                values.append(None)
                continue
            if d == 1:
                values.append(points + leaf_value(after, w_empty, w_merge))
                continue
            empties = list(zip(*np.nonzero(after == 0)))
            expected = 0.0
            for cell in empties:
                for exponent, p in ((1, 1 - four_prob), (2, four_prob)):
                    spawned = after.copy()
                    spawned[cell] = exponent
                    nxt = [v for v in move_values(spawned, d - 1) if v is not None]
                    best = max(nxt) if nxt else leaf_value(spawned, w_empty, w_merge) - teachers.GAME_OVER_PENALTY
                    expected += p / len(empties) * best
            values.append(points + expected)
        return values

    return move_values(board, depth)


@pytest.fixture(scope="module")
def boards_2048(warm_states):
    """96 mid-game boards: three warm-up batches (one compiled warm-up)."""
    batches = [warm_states["2048"]] + [start_states(ENVS["2048"], jax.random.key(seed), BATCH) for seed in (8, 9)]
    return batches, np.concatenate([np.asarray(b.board) for b in batches])


def test_greedy_2048_merges_whenever_a_merge_exists(boards_2048):
    batches, boards = boards_2048
    actions = np.concatenate([GREEDY.facts(b)["best"] for b in batches])
    merging = 0
    for board, action in zip(boards, actions):
        results = [move_board(board, a) for a in range(4)]
        legal = [not (after == board).all() for after, _ in results]
        points = [p if ok else -1 for (_, p), ok in zip(results, legal)]
        assert legal[action], (board, action)
        assert points[action] == max(points), (board, action, points)
        merging += max(points) > 0
    assert merging > len(boards) // 2  # the check saw many boards with a merge on offer


PAIRS = make_teacher(ENVS["2048"], "pairs")
NEIGHBOURS = make_teacher(ENVS["2048"], "neighbours")


def slide_merges(board, action) -> bool:
    return move_board(board, action)[1] > 0


def side_by_side(board, action) -> bool:
    """Two equal tiles right beside each other in a row (Left) or one above the other (Up)."""
    lines = board if action == 3 else board.T
    return any(lines[r, c] and lines[r, c] == lines[r, c + 1] for r in range(4) for c in range(3))


@pytest.mark.parametrize("teacher, finds", [(PAIRS, slide_merges), (NEIGHBOURS, side_by_side)])
def test_pairs_2048_plays_left_up_or_a_legal_move(boards_2048, teacher, finds):
    # pairs: Left / Up when the reference slide merges; neighbours: when two equal tiles touch (a gap merge,
    # 2 _ 2, does not count); else the first legal move. Either way a chosen Left / Up merges.
    batches, boards = boards_2048
    actions = np.concatenate([teacher.facts(b)["best"] for b in batches])
    seen = set()
    for board, action in zip(boards, actions):
        legal = [not (move_board(board, a)[0] == board).all() for a in range(4)]
        want = 3 if finds(board, 3) else 0 if finds(board, 0) else legal.index(True)
        assert action == want, (board, action)
        assert slide_merges(board, action) or not (finds(board, 3) or finds(board, 0))
        seen.add(want)
    assert {0, 3} <= seen  # boards where a row merges and boards where only a column does


def test_pairs_2048_reasoning_lays_out_the_board_and_its_meet_equal_flags(warm_states):
    env = ENVS["2048"]
    # row 0: 2 _ 2 4 (the 2s meet across the gap); column 3: 4 over 4; 1024 is the digit "a"
    board = np.array([[1, 0, 1, 2], [3, 4, 5, 2], [10, 0, 0, 0], [0, 0, 0, 0]])
    states = with_row(warm_states["2048"], env.from_board(board))
    one = jax.tree.map(lambda x: x[0], states)
    text = PAIRS.answer(one, 3)
    assert "rows 1012 3452 a000 0000\nleft 0010 0000 0000 0000\nup 0000 0001 0000 0000\nLeft merges." in text
    assert "So I play Left (3)." in text and env.parse(text) == 3 and format_ok(text, strict=True)
    assert teachers.meets_equal(board.T).T.sum() == 1
    # nothing merges: the flags are all 0 and the first legal move is played
    board = np.array([[1, 2, 1, 2], [2, 1, 2, 1], [1, 2, 1, 2], [2, 1, 2, 0]])
    states = with_row(warm_states["2048"], env.from_board(board))
    assert int(PAIRS.facts(states)["best"][0]) == 1  # Up and Left move nothing; Right does
    text = PAIRS.answer(jax.tree.map(lambda x: x[0], states), 2)
    assert "Nothing merges. Right (1) is best by this count, but I play Down (2)." in text


def test_neighbours_2048_flags_only_side_by_side_tiles(warm_states):
    env = ENVS["2048"]
    # row 0: 2 _ 2 4 (a gap merge: no flag); column 3: 4 over 4 (a flag); row 1: 8 16 32 4
    board = np.array([[1, 0, 1, 2], [3, 4, 5, 2], [10, 0, 0, 0], [0, 0, 0, 0]])
    one = jax.tree.map(lambda x: x[0], with_row(warm_states["2048"], env.from_board(board)))
    text = NEIGHBOURS.answer(one, 0)
    assert "rows 1012 3452 a000 0000\nleft 0000 0000 0000 0000\nup 0000 0001 0000 0000\nUp merges." in text
    assert "So I play Up (0)." in text and env.parse(text) == 0 and format_ok(text, strict=True)
    # only a gap merge: Left merges, but no neighbours are equal, so the first legal move (Up)
    board = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    states = with_row(warm_states["2048"], env.from_board(board))
    assert int(NEIGHBOURS.facts(states)["best"][0]) == 1  # Up moves nothing, Right is the first legal move
    text = NEIGHBOURS.answer(jax.tree.map(lambda x: x[0], states), 1)
    assert "left 0000 0000 0000 0000\nup 0000 0000 0000 0000\nNo equal neighbours. So I play Right (1)." in text


def test_greedy_2048_ties_go_to_the_more_movable_board(warm_states):
    env = ENVS["2048"]
    # no move merges; Right and Left bring the two 2s side by side (a merge for later), Up and
    # Down leave them apart; of the tied Right and Left, the lower action number
    board = np.array([[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
    states = with_row(warm_states["2048"], env.from_board(board))
    assert int(GREEDY.facts(states)["best"][0]) == 1


@pytest.mark.parametrize("depth", [1, 2])
def test_expectimax_values_equal_a_brute_force_reference(depth, warm_states):
    states = warm_states["2048"]
    teacher = make_teacher(ENVS["2048"], "expectimax", depth=depth)  # depth 2 is TEACHER["2048"]'s compile
    facts = teacher.facts(states)
    four_prob = ENVS["2048"].default_params.spawn_four_prob
    for i, board in enumerate(np.asarray(states.board)[:3]):
        want = expectimax_reference(board, depth, four_prob, teacher.empty_weight, teacher.merge_weight)
        for a in range(4):
            assert bool(facts["legal"][i, a]) == (want[a] is not None)
            if want[a] is not None:
                np.testing.assert_allclose(facts["value"][i, a], want[a], rtol=1e-5, atol=1e-4)
        best_value = max(v for v in want if v is not None)
        np.testing.assert_allclose(want[int(facts["best"][i])], best_value, rtol=1e-5)


@pytest.fixture(scope="module")
def strength_2048():
    return strength(TEACHER["2048"], jax.random.key(0), boards=32, moves=50)


def test_expectimax_2048_beats_random_play(strength_2048):
    diff = strength_2048["difference"]
    assert diff["mean"] > 4 * diff["se"], diff
    assert diff["wins"] > 0.8 * 32, diff


def test_strength_command_prints_the_table(strength_2048, capsys):
    teacher_cli.main(["--game", "2048", "--boards", "32", "--moves", "50"])  # the compiled run above
    out = capsys.readouterr().out
    assert f"{strength_2048['teacher']['mean']:.2f}" in out and f"{strength_2048['random']['mean']:.2f}" in out
    assert "teacher - random" in out


# ---------------------------------------------------------------------------------------
# Shisen-Sho: legal pairs, the lookahead, closed loop
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("game", ["shisensho", "shisensho_photo"])
def test_shisensho_teacher_picks_a_legal_pair_with_the_most_follow_ups(game, warm_states):
    env, teacher, states = ENVS[game], TEACHER[game], warm_states[game]
    actions = teacher.facts(states)["best"]
    valid = np.asarray(VALID(env, states))
    step_all = jax.jit(lambda s, acts: envs.parallel_step(env, jax.random.key(0), s, acts)[0])
    count_valid = jax.jit(lambda s: VALID(env, s).sum(axis=1) // 2)  # both orders of a pair are valid
    for i, action in enumerate(actions):
        assert valid[i].any()
        assert valid[i][action], (i, action)
        candidates = np.flatnonzero(valid[i])
        after = step_all(envs.unbatch(states, i), jnp.asarray(np.resize(candidates, 2 * env.num_pairs)))
        follow_ups = np.asarray(count_valid(after))[: len(candidates)]
        cleared = np.asarray(after.remaining)[: len(candidates)] == 0
        score = np.where(cleared, 10**6, follow_ups)
        assert score[list(candidates).index(action)] == score.max()


def test_shisensho_teacher_clears_more_than_random_pairs():
    env = envs.make("shisensho", preset="more_tiles")  # 12x12 random deals: random play gets stuck
    result = strength(make_teacher(env), jax.random.key(0), boards=128)
    diff = result["difference"]
    teacher = result["teacher"]
    np.testing.assert_array_equal(teacher["legal"], teacher["points"])  # +1 per legal pair, -1 per other: none illegal
    # most boards tie (both clear the same); a sign test over the others
    assert diff["mean"] > 0 and diff["wins"] - diff["losses"] > 4 * np.sqrt(diff["wins"] + diff["losses"]), diff


# ---------------------------------------------------------------------------------------
# Swap: the best immediate score
# ---------------------------------------------------------------------------------------


def line_cells(board):
    """numpy reference: the number of cells in horizontal or vertical runs of >= 3."""
    g = board.shape[0]
    hit = np.zeros_like(board, bool)
    for r in range(g):
        for c in range(g):
            for dr, dc in ((0, 1), (1, 0)):
                cells = [(r + k * dr, c + k * dc) for k in range(3)]
                if all(0 <= y < g and 0 <= x < g for y, x in cells) and len({board[y, x] for y, x in cells}) == 1:
                    for y, x in cells:
                        hit[y, x] = True
    return int(hit.sum())


def test_swap_teacher_scores_at_least_every_other_valid_swap(warm_states):
    env, teacher, states = ENVS["swap"], TEACHER["swap"], warm_states["swap"]
    actions = teacher.facts(states)["best"]
    valid = np.asarray(VALID(env, states))
    boards = np.asarray(states.board)

    def points(board, action):
        r1, c1, r2, c2 = decode_pair(int(action), env.board_size)
        swapped = board.copy()
        swapped[r1, c1], swapped[r2, c2] = board[r2, c2], board[r1, c1]
        cells = line_cells(swapped)
        return cells * (cells - 1)

    for board, action, mask in zip(boards, actions, valid):
        assert mask[action]
        scores = [points(board, a) for a in np.flatnonzero(mask)]
        assert min(scores) >= 6  # every valid swap completes a line
        assert points(board, action) == max(scores)


# ---------------------------------------------------------------------------------------
# Exploration
# ---------------------------------------------------------------------------------------


def test_act_is_the_teachers_choice_or_with_epsilon_a_random_one(warm_states):
    env, teacher, states = ENVS["swap"], TEACHER["swap"], warm_states["swap"]
    np.testing.assert_array_equal(jax.jit(jax.vmap(teacher.act))(keys(0), states), teacher.facts(states)["best"])
    exploring = make_teacher(env, epsilon=0.5)
    got = jax.jit(jax.vmap(exploring.act))(keys(1), states)
    want = jax.jit(jax.vmap(teacher.act_with_epsilon, in_axes=(0, 0, None)))(keys(1), states, 0.5)
    np.testing.assert_array_equal(got, want)


def test_epsilon_plays_random_valid_actions_at_the_given_rate(warm_states):
    env, teacher = ENVS["swap"], TEACHER["swap"]
    state = envs.unbatch(warm_states["swap"], 0)
    best = int(teacher.facts(warm_states["swap"])["best"][0])
    act = jax.jit(jax.vmap(teacher.act_with_epsilon, in_axes=(0, None, None)))  # one compile for every epsilon
    valid = np.flatnonzero(np.asarray(env.valid_actions(state)))
    epsilon, draws = 0.3, 4000
    actions = np.asarray(act(keys(1, draws), state, epsilon))
    assert np.isin(actions, valid).all()
    # a random valid action is the best swap (in either order) with probability 2 / len(valid)
    expected = epsilon * (1 - 2 / len(valid))
    rate = np.mean([same_move(env, a) != same_move(env, best) for a in actions])
    assert abs(rate - expected) < 4 * np.sqrt(expected * (1 - expected) / draws), (rate, expected)
    random_play = np.asarray(act(keys(2, draws), state, 1.0))
    assert np.isin(random_play, valid).all() and len(set(random_play.tolist())) == len(valid)
    assert (np.asarray(act(keys(3, draws), state, 0.0)) == best).all()
    assert make_teacher(env, epsilon=epsilon).epsilon == epsilon


# ---------------------------------------------------------------------------------------
# Configuration errors
# ---------------------------------------------------------------------------------------


def test_registry_covers_every_game():
    assert {game for game, _ in TEACHERS} == set(envs.list_games())
    for game in envs.list_games():
        assert (game, teachers.DEFAULT_KIND[game]) in TEACHERS


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda: make_teacher("chess"),
            "games with teachers: 2048, frozenlake, shisensho, shisensho_photo, sokoban, swap",
        ),
        (lambda: make_teacher(ENVS["2048"], "minimax"), "choices: expectimax, greedy, neighbours, pairs"),
        (
            lambda: make_teacher(ENVS["2048"], "expectimax", depht=2),
            "no option depht; options: depth, empty_weight, merge_weight",
        ),
        (lambda: make_teacher(ENVS["2048"], "greedy", epsilon=1.5), "epsilon must be a probability"),
        (lambda: make_teacher(ENVS["2048"], "expectimax", depth=4), "depth=4 must be an integer in [1, 3]"),
        (lambda: make_teacher(42), "needs a game name or an env"),
        (lambda: teachers.Greedy2048(ENVS["swap"]), "is for 2048, not 'swap'"),
    ],
)
def test_bad_configuration_gives_one_clear_line(call, message):
    with pytest.raises(TeacherError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_inputs_give_one_clear_line(warm_states):
    teacher = TEACHER["2048"]
    with pytest.raises(TeacherError, match="needs a 2048 state"):
        teacher.act(jax.random.key(0), envs.unbatch(warm_states["swap"], 0))
    with pytest.raises(TeacherError, match="one action per state: 32 states, 2 actions"):
        teacher.answers(warm_states["2048"], [0, 1])
    with pytest.raises(TeacherError, match="expected a batch of states"):
        teacher.facts(envs.unbatch(warm_states["2048"], 0))
    with pytest.raises(TeacherError, match=r"expected one state \(jax.vmap act for a batch\)"):
        teacher.act(jax.random.key(0), warm_states["2048"])
    with pytest.raises(TeacherError, match=r"outside \[0, 5\)"):
        teacher.answer(envs.unbatch(warm_states["2048"], 0), 7)


# ---------------------------------------------------------------------------------------
# JSONL import
# ---------------------------------------------------------------------------------------


def write_lines(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


ANSWER_2048 = "<perception>x</perception><think>y</think><answer>2</answer>"
BOARD_2048 = [[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]


def test_jsonl_reads_boards_text_boards_and_images(tmp_path, warm_states):
    Image.fromarray(np.full((8, 6, 3), 200, np.uint8)).save(tmp_path / "frame.png")
    path = write_lines(
        tmp_path / "data.jsonl",
        [
            {"board": BOARD_2048, "answer": ANSWER_2048},
            "",
            {
                "board": [[2, 0, 0, 0], [0, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 2]],
                "board_options": {"values": True},
                "image": "frame.png",
                "answer": "<answer>Down: 2</answer>",
            },
            {"image": str(tmp_path / "frame.png"), "answer": ANSWER_2048},
        ],
    )
    examples = load_teacher_jsonl(path, ENVS["2048"])
    assert [e.line for e in examples] == [1, 3, 4] and [e.action for e in examples] == [2, 2, 2]
    np.testing.assert_array_equal(np.asarray(examples[1].state.board), BOARD_2048)
    assert examples[0].image is None and examples[1].image.shape == (8, 6, 3) and examples[1].image.dtype == np.uint8
    assert examples[2].state is None and examples[2].image.shape == (8, 6, 3)
    shisen = ENVS["shisensho"]
    state = envs.unbatch(warm_states["shisensho"], 0)
    answer = "<perception>...</perception><think>...</think><answer>(0, 1) (5, 4)</answer>"
    path = write_lines(tmp_path / "shisen.jsonl", [{"board": shisen.describe(state), "answer": answer}])
    (example,) = load_teacher_jsonl(path, shisen)
    np.testing.assert_array_equal(np.asarray(example.state.board), np.asarray(state.board))
    assert example.action == shisen.parse(answer) == encode_pair(0, 1, 5, 4, 6)


BAD_LINES = {
    "bad JSON": ('{"board": [[1]], "answer": ', "bad JSON"),
    "not an object": ("[1, 2]", "expected a JSON object"),
    "missing answer": ({"board": BOARD_2048}, 'missing field "answer"'),
    "missing position": ({"answer": ANSWER_2048}, 'missing field "board" or "image"'),
    "unknown field": ({"board": BOARD_2048, "answer": ANSWER_2048, "score": 3}, "unknown field(s) score"),
    "unreadable image": ({"image": "missing.png", "answer": ANSWER_2048}, "cannot read image"),
    "rejected board": ({"board": [[1, 2], [3, 4]], "answer": ANSWER_2048}, "board rejected by 2048.from_board"),
    "unparsable answer": ({"board": BOARD_2048, "answer": "<answer>up</answer>"}, "does not parse to a 2048 action"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_jsonl_malformed_line_names_file_and_line(case, tmp_path):
    line, message = BAD_LINES[case]
    path = write_lines(tmp_path / "data.jsonl", [{"board": BOARD_2048, "answer": ANSWER_2048}, line])
    with pytest.raises(TeacherDataError) as err:
        load_teacher_jsonl(path, ENVS["2048"])
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value), str(err.value)


def test_jsonl_skip_bad_skips_and_reports_line_numbers(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    good = {"board": BOARD_2048, "answer": ANSWER_2048}
    path = write_lines(
        tmp_path / "data.jsonl", [good, "{oops", good, {"image": "broken.png", "answer": ANSWER_2048}, good]
    )
    with pytest.warns(UserWarning, match=r"skipped 2 malformed line\(s\): 2, 4 \(line 2: bad JSON"):
        examples = load_teacher_jsonl(path, ENVS["2048"], skip_bad=True)
    assert [e.line for e in examples] == [1, 3, 5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean file warns nothing
        assert len(load_teacher_jsonl(write_lines(tmp_path / "ok.jsonl", [good]), ENVS["2048"], skip_bad=True)) == 1


def test_jsonl_missing_file_is_one_line(tmp_path):
    with pytest.raises(TeacherDataError, match="cannot read teacher data"):
        load_teacher_jsonl(tmp_path / "nope.jsonl", ENVS["2048"])
