"""Closed-loop evaluation (g1jax/evaluation, g1jax/cli/evaluate.py): scoring as the paper counts it, the
random baselines' statistics, device and host loops agreeing, the command's errors and outputs."""

import dataclasses
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.grammar import encode_pair
from g1jax import evaluation as ev
from g1jax.cli import evaluate as cli
from g1jax.teachers import answer_block

RUNS, STEPS = 6, 20  # the Shisen-Sho rows below; the command test reuses their compiled loop
ROW_SPECS = ("random", "random:aliased", "teacher")


def stack(states):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def draw_table(size: int, aliased: bool, base: int = 6) -> np.ndarray:
    """The action every one of the 8^4 equally likely random draws becomes (invalid: size**4)."""
    ids = []
    for coords in itertools.product(range(ev.ORIGINAL_RANDOM_COORDINATES), repeat=4):
        if aliased:
            code = encode_pair(*coords, base)
            coords = (code // base**3, code // base**2 % base, code // base % base, code % base)
        ids.append(encode_pair(*coords, size) if max(coords) < size else size**4)
    return np.asarray(ids)


@pytest.fixture(scope="module")
def shisensho():
    protocol = ev.PROTOCOLS["shisensho"]
    env = protocol.make_env()
    policies = [ev.make_policy(spec, env, protocol) for spec in ROW_SPECS]
    rows = ev.evaluate(protocol, env, policies, runs=RUNS, steps=STEPS, key=jax.random.key(3), progress=False)
    return protocol, env, policies, rows


@pytest.fixture(scope="module")
def valid_actions_of(shisensho):
    _, env, _, _ = shisensho
    return jax.jit(jax.vmap(env.valid_actions))


class ValidPolicy(ev.DevicePolicy):
    """Plays a uniformly random legal action: every decision on a live board must score 1."""

    name = "valid"

    def __init__(self, env):
        self.env = env

    def choose(self, key, state):
        return self.env.random_valid_action(key, state)

    def answers(self, states, actions):
        return [answer_block(self.env, a) for a in actions]


# --- scoring as the paper counts it -----------------------------------------------------------


def test_2048_scores_merge_points_with_test_time_fallback_and_next_step_reset():
    protocol = ev.PROTOCOLS["2048"]
    env = protocol.make_env(image_size=(140, 112))
    two_pairs = env.from_board([[2, 2, 4, 4], [0] * 4, [0] * 4, [0] * 4], values=True)
    one_pair = env.from_board([[2, 2, 0, 0], [0] * 4, [0] * 4, [0] * 4], values=True)
    stuck = env.from_board([[2, 4, 2, 4], [4, 2, 4, 2]] * 2, values=True)
    assert bool(stuck.done)
    step = jax.jit(lambda k, s, a: ev.closed_loop_step(env, protocol, k, s, a))
    left, still = 3, 4
    for seed in range(6):
        states, played, score = step(
            jax.random.key(seed), stack([two_pairs, one_pair, stuck]), jnp.array([left, still, left])
        )
        played, score = np.asarray(played), np.asarray(score)
        assert score[0] == 12.0  # 2+2 -> 4 and 4+4 -> 8
        # "still" (an unparsable answer) becomes a uniform move 0..3, never the -1 of "still"
        assert 0 <= played[1] <= 3 and score[1] == (4.0 if played[1] in (1, 3) else 0.0)
        # the game ended before this decision: it is wasted and the board starts again
        assert score[2] == 0.0 and not bool(states.done[2]) and int((states.board[2] > 0).sum()) == 2


def test_coordinate_games_count_successful_moves(shisensho):
    protocol, env, _, _ = shisensho
    board = np.zeros((6, 6), np.int32)
    board[0, 0] = board[0, 1] = 1  # an adjacent pair
    board[5, 5] = board[3, 3] = 2  # a pair that no path joins...
    board[5, 4] = board[4, 5] = 3
    board[5, 3] = board[3, 5] = 3
    state = env.from_board(board)
    pair, blocked = encode_pair(0, 0, 0, 1, 6), encode_pair(5, 5, 3, 3, 6)
    assert bool(env.valid_actions(state)[pair]) and not bool(env.valid_actions(state)[blocked])
    actions = [pair, blocked, env.invalid_action, encode_pair(0, 0, 0, 0, 6), pair, pair]
    _, step, _ = ev.loop_functions(env, protocol, RUNS)
    _, played, score = step(jax.random.key(0), stack([state] * RUNS), jnp.asarray(actions))
    # a match scores 1, anything else 0 (not the training reward's -1)
    np.testing.assert_array_equal(np.asarray(score), [1, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(np.asarray(played), actions)


def test_every_legal_move_scores_one_and_finished_boards_waste_a_decision(shisensho):
    protocol, env, _, _ = shisensho
    (rollout,) = ev.evaluate(
        protocol,
        env,
        [ValidPolicy(env)],
        runs=RUNS,
        steps=STEPS,
        key=jax.random.key(5),
        progress=False,
        on_device=False,
    )
    done_seen = np.asarray(rollout.states.done).T  # [runs, steps]
    np.testing.assert_array_equal(rollout.scores, 1.0 - done_seen)
    assert done_seen.any(), "no board ended: the next-step reset went untested"


# --- the random baselines ----------------------------------------------------------------------


@pytest.mark.parametrize("aliased", [False, True])
def test_random_draws_are_the_originals(shisensho, aliased):
    protocol, env, _, rows = shisensho
    policy = ev.RandomPolicy(env, protocol, aliased)
    n = 20000
    choose = jax.jit(jax.vmap(policy.choose, in_axes=(0, None)))
    actions = np.asarray(
        choose(jax.random.split(jax.random.key(1), n), jax.tree.map(lambda x: x[0, 0], rows[0].states))
    )
    # the share of the 8^4 uniform 0..7 draws that land on the board (aliased: those whose base-6
    # code stays below 6^4; unaliased: all four coordinates below 6)
    on_board = np.mean(draw_table(6, aliased) != env.invalid_action)
    share = np.mean(actions != env.invalid_action)
    assert abs(share - on_board) < 4 * np.sqrt(on_board * (1 - on_board) / n)
    if not aliased:  # the action is exactly what our parser makes of the original's answer text
        assert [env.parse(t) for t in policy.answers(None, actions[:200])] == list(actions[:200])


def test_random_row_success_count_within_binomial_bound(shisensho, valid_actions_of):
    # 6 x 1000 decisions: about 30 successes expected unaliased (sd ~5), 60 aliased (sd ~8), so the 4-sd
    # bound also rejects a policy that never succeeds (6 x 20 decisions expected under one success)
    protocol, env, policies, _ = shisensho
    rows = ev.evaluate(
        protocol, env, policies[:2], runs=RUNS, steps=1000, key=jax.random.key(4), progress=False, keep_texts=False
    )
    for row in rows:
        masks = np.asarray(valid_actions_of(jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), row.states)))
        p = masks[:, draw_table(6, aliased=row.policy == "random:aliased")].mean(axis=1)  # per decision taken
        expected, sd = p.sum(), np.sqrt((p * (1 - p)).sum())
        assert expected > 4 * sd, (row.policy, expected, sd)
        assert abs(row.totals.sum() - expected) <= 4 * sd, (row.policy, row.totals.sum(), expected)


def test_random_rate_on_fresh_boards_matches_the_paper(valid_actions_of):
    """The paper's Random row, 0.4 successes per 100 decisions on both Shisen-Sho games, is what
    the original's 0..7 draws give when off-board coordinates are invalid (aliased: about 1)."""
    env = ev.PROTOCOLS["shisensho"].make_env()
    fresh = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(0), 512))
    masks = np.asarray(valid_actions_of(fresh))
    per_100 = {aliased: 100 * masks[:, draw_table(6, aliased)].mean() for aliased in (False, True)}
    assert 0.3 < per_100[False] < 0.55 and 0.8 < per_100[True] < 1.2, per_100


# --- the loop ----------------------------------------------------------------------------------


def test_rows_meet_the_same_boards_and_host_loop_matches_device_loop(shisensho):
    protocol, env, policies, rows = shisensho
    first = jax.tree.map(lambda x: x[0], [r.states for r in rows])
    for other in first[1:]:
        np.testing.assert_array_equal(other.board, first[0].board)
    (host,) = ev.evaluate(
        protocol, env, [policies[0]], runs=RUNS, steps=STEPS, key=jax.random.key(3), progress=False, on_device=False
    )
    np.testing.assert_array_equal(host.actions, rows[0].actions)
    np.testing.assert_array_equal(host.scores, rows[0].scores)
    assert host.texts == rows[0].texts


def test_rollout_statistics(shisensho):
    *_, rows = shisensho
    teacher = rows[2]
    assert teacher.policy == "teacher" and teacher.detail
    assert teacher.mean > 5 * rows[0].mean + 1  # a program beats random draws by far
    totals = teacher.totals
    assert teacher.se == pytest.approx(totals.std(ddof=1) / np.sqrt(RUNS), rel=1e-5, abs=1e-6)
    table = ev.figure1_table(rows)
    assert [r["policy"] for r in table["rows"]] == list(ROW_SPECS)
    assert table["paper"][-1] == {"policy": "Random", "source": "paper (Figure 1)", "scores": {"shisensho": 0.4}}
    assert "| Random | paper | 0.4 |" in ev.table_markdown(table)
    assert all(r.ended is None and r.episodes is None for r in rows)  # episode metrics: games scored "solved"


def test_episode_metrics_score_each_runs_first_game():
    """The games scored "solved" (FrozenLake, Sokoban), three runs of 6 decisions. Run 0 wins its
    first game at decision 1 (decision 2 only restarts it), then loses one at decision 4; run 1
    loses its first game at decision 2 and wins the next at decision 4, so its first game counts
    as lost; run 2's first game is still running after the last decision (not won)."""
    scores = np.zeros((3, 6), np.float32)
    scores[0, 1] = scores[1, 4] = 1
    ended = np.zeros((3, 6), bool)  # [runs, steps]: the decision ended a live game
    ended[0, [1, 4]] = ended[1, [2, 4]] = True
    row = ev.Rollout("sokoban", "x", scores, np.zeros((3, 6), int), None, None, 0.0, ended=ended)
    assert row.episodes == {
        "runs": 3,
        "success_rate": pytest.approx(1 / 3),
        "success_se": pytest.approx(np.sqrt(1 / 3 * 2 / 3 / 3)),
        "steps_to_solve": 2.0,
        "unfinished": 1,
        "episodes": 4,
        "solved": 2,
    }
    cell = ev.table_markdown(ev.figure1_table([row]))
    assert "Sokoban 6x6 (not in the paper)" in cell and "| paper |" not in cell
    assert "success 0.333 ± 0.27, 2 decisions to solve, 1 first games unfinished; 2 of 4 ended games won" in cell
    assert dataclasses.replace(row, ended=None).episodes is None


# --- the command -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--game", "chess"], "unknown game 'chess'"),
        (["--game", "all", "2048"], "cannot be combined"),
        (["--policy", "greedy"], "unknown policy 'greedy'"),
        (["--game", "all", "--policy", "teacher:greedy"], "no teacher 'greedy' for shisensho"),
        (["--policy", "model"], "needs --model"),
        (["--runs", "0"], "--runs must be >= 1"),
    ],
)
def test_command_rejects_bad_input_in_one_line(capsys, argv, message):
    assert cli.main(argv + ["--compile-cache", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


def test_command_writes_table_plots_videos_and_answers(shisensho, tmp_path):
    _, env, _, _ = shisensho
    out, table_json = tmp_path / "out", tmp_path / "table.json"
    argv = [
        "--game",
        "shisensho",
        "--policy",
        *ROW_SPECS,
        "--runs",
        str(RUNS),
        "--steps",
        str(STEPS),
        "--out",
        str(out),
        "--json",
        str(table_json),
        "--videos",
        "1",
        "--no-progress",
        "--compile-cache",
        "",
    ]
    import matplotlib

    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # stands for a notebook's inline backend: plotting must leave it alone
    try:
        assert cli.main(argv) == 0
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)
    table = json.loads(table_json.read_text())
    assert [r["policy"] for r in table["rows"]] == list(ROW_SPECS)
    assert set(table["rows"][0]["scores"]["shisensho"]) >= {"avg", "se", "runs", "steps"}
    assert json.loads((out / "table.json").read_text()) == table
    assert "| random | ours |" in (out / "table.md").read_text()
    assert (out / "cumulative_shisensho.png").read_bytes()[:4] == b"\x89PNG"
    videos = sorted(os.listdir(out / "videos"))
    assert len(videos) == len(ROW_SPECS) and all(v.endswith((".mp4", ".gif")) for v in videos)
    records = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(records) == len(ROW_SPECS) * RUNS * STEPS
    random_records = [r for r in records if r["policy"] == "random"]
    assert all(env.parse(r["answer"]) == r["action"] for r in random_records)
    teacher = [r for r in records if r["policy"] == "teacher"]
    assert all(envs.grammar.format_ok(r["answer"], strict=True) for r in teacher[:20])


# --- a model as the policy ---------------------------------------------------------------------


def write_json(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))


@pytest.fixture
def model_dirs(tmp_path):
    run_config = {"model": "tiny", "games": ["2048"], "image_size": [140, 112]}
    write_json(tmp_path / "fresh_run" / "config.json", run_config)
    write_json(tmp_path / "run" / "config.json", run_config)
    (tmp_path / "run" / "checkpoints" / "5").mkdir(parents=True)
    fixture = json.loads(
        open(os.path.join(os.path.dirname(__file__), "fixtures", "qwen25vl_tiny", "config.json")).read()
    )
    fixture["vision_config"]["patch_size"] = 16
    write_json(tmp_path / "patch16" / "config.json", fixture)
    (tmp_path / "patch16" / "model.safetensors").write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "{tmp}/missing"], "no such directory"),
        (["--model", "{tmp}/fresh_run"], "a run directory without checkpoints"),
        (["--model", "{tmp}/run"], "was trained on 140x112 frames but 2048 is evaluated on 840x644"),
        (["--model", "{tmp}/patch16"], "make a 32-px grid"),
        (["--model", "tiny", "--max-new-tokens", "5000"], "exceeds its context of 4096"),
    ],
)
def test_command_rejects_models_that_do_not_fit(capsys, model_dirs, argv, message):
    argv = ["--game", "2048", "--policy", "model", "--compile-cache", ""] + [a.format(tmp=model_dirs) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


def test_model_policy_batches_every_decision_into_one_sampling_call(shisensho, monkeypatch, tmp_path):
    import g1jax.sampling

    calls = []
    original = g1jax.sampling.sample

    def counting(*args, **kwargs):
        calls.append(args[2].shape[0])  # prompts in this call
        return original(*args, **kwargs)

    monkeypatch.setattr(g1jax.sampling, "sample", counting)
    table_json = tmp_path / "table.json"
    # the same game and runs as the rows above: the host loop's start, step and render are compiled already
    argv = [
        "--game",
        "shisensho",
        "--policy",
        "model",
        "--model",
        "tiny",
        "--runs",
        str(RUNS),
        "--steps",
        "2",
        "--max-new-tokens",
        "3",
        "--json",
        str(table_json),
        "--no-progress",
        "--compile-cache",
        "",
    ]
    assert cli.main(argv) == 0
    assert calls == [RUNS, RUNS]  # one call per decision, all runs in it
    (row,) = json.loads(table_json.read_text())["rows"]
    assert row["policy"] == "model" and row["scores"]["shisensho"]["runs"] == RUNS


def test_a_run_is_evaluated_on_the_prompt_it_trained_on(tmp_path):
    from g1jax.evaluation.model_source import ModelSource
    from g1jax.models.config import preset

    run = {"model": "tiny", "games": ["2048"], "game_options": {"2048": {"instructions": "short", "board_size": 4}}}
    source = ModelSource(str(tmp_path), "run", preset("tiny"), run)
    assert source.train_prompt_options("2048") == {"instructions": "short"}
    assert source.train_prompt_options("swap") == {}
    assert ModelSource(str(tmp_path), "preset", preset("tiny")).train_prompt_options("2048") == {}
