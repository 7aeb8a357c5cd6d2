"""The env contract, checked once for every registered game and every preset (a game is
covered the day it is registered): reset / step / render / valid_actions under jit and vmap,
dtypes and shapes, masks that agree with what step does, answers that parse back to their
action, determinism, an episode of random valid moves played to its end, clear errors for
arguments of the wrong kind."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chi_square
import envs

BATCH = 32  # boards per call: every function is compiled once per config, for this batch
MAX_MOVES = 600  # an episode must end within this many moves
DRAWS = 8192  # random valid actions drawn from one state for the uniformity check
# Config added to every game's configs so that an episode ends within MAX_MOVES moves
# (Swap's default move limit is G1's 1,000,000).
EPISODE_CONFIG = {"swap": dict(max_moves=40)}


def small_image(name, config):
    """The smallest square image size (multiples of 28) the game accepts for `config`: small
    frames keep the test fast; the default sizes are covered by the games' own tests."""
    for side in range(28, envs.core.MAX_IMAGE_SIDE + 1, 28):
        try:
            return envs.make(name, **config, image_size=(side, side))
        except envs.ConfigError:
            continue
    raise AssertionError(f"{name}: no image size fits {config}")


def contract_configs():
    out = []
    for name in envs.list_games():
        base = EPISODE_CONFIG.get(name, {})
        default = envs.make(name)
        out.append((name, base))
        out.extend((name, {**base, "preset": p}) for p in default.presets if p != getattr(default, "preset", None))
    return out


CONFIGS = contract_configs()
IDS = [f"{name}-{config.get('preset', 'default')}" for name, config in CONFIGS]


class Batched:
    """The env's device functions, vmapped over BATCH boards and jitted: one compile each."""

    def __init__(self, env):
        self.reset = jax.jit(jax.vmap(env.reset))
        self.valid = jax.jit(jax.vmap(env.valid_actions))
        self.random = jax.jit(jax.vmap(env.random_valid_action))
        self.step = jax.jit(jax.vmap(env.step))
        self.render = jax.jit(jax.vmap(env.render))


def keys(key, t):
    """(action keys, step keys) [BATCH] of move t."""
    return jnp.split(jax.random.split(jax.random.fold_in(key, t), 2 * BATCH), 2)


def repeat(state):
    return jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x), (BATCH, *np.shape(x))), state)


def first_move(fns, key):
    """Reset BATCH boards, their masks, a random valid action each, the step, the frames after."""
    states = fns.reset(jax.random.split(key, BATCH))
    pick, step = keys(key, 0)
    actions = fns.random(pick, states)
    new, rewards, dones, info = fns.step(step, states, actions)
    out = dict(
        states=states,
        masks=fns.valid(states),
        actions=actions,
        new=new,
        rewards=rewards,
        dones=dones,
        info=info,
        frames=fns.render(new),
    )
    return jax.device_get(out)


def episodes(fns, key, states):
    """BATCH games of random valid moves until all have ended, then 3 moves more: per move,
    facts about the states before and after (host arrays [moves, BATCH])."""
    facts, mask, t = [], fns.valid(states), 0
    while t < MAX_MOVES and (t < 3 or not all(f["was_done"].all() for f in facts[-3:])):
        pick, step = keys(key, t)
        actions = fns.random(pick, states)
        new, reward, done, info = fns.step(step, states, actions)
        after = fns.valid(new)
        chosen = jnp.take_along_axis(mask, actions[:, None], axis=1)[:, 0]
        facts.append(
            jax.device_get(
                dict(
                    was_done=states.done,
                    any_valid=mask.any(1),
                    chosen_valid=chosen,
                    action=actions,
                    legal=info["legal"],
                    reward=reward,
                    raw=info["raw_reward"],
                    done=done,
                    state_done=new.done,
                    valid_after=after.any(1),
                )
            )
        )
        states, mask, t = new, after, t + 1
    return jax.tree.map(lambda *xs: np.stack(xs), *facts), states


def every_action(env, fns, key, state):
    """Every action id stepped from one state, BATCH ids per call: legal or not, and the
    boards after."""
    legal, boards, states = [], [], repeat(state)
    step_keys = jax.random.split(key, BATCH)
    for start in range(0, env.num_actions, BATCH):
        ids = np.minimum(np.arange(start, start + BATCH), env.num_actions - 1).astype(np.int32)
        new, _, _, info = fns.step(step_keys, states, jnp.asarray(ids))
        legal.append(np.asarray(info["legal"]))
        boards.append(np.asarray(new.board))
    n = env.num_actions
    return dict(
        legal=np.concatenate(legal)[:n], boards=np.concatenate(boards)[:n], mask=np.asarray(fns.valid(states)[0])
    )


def draws(fns, key, state):
    """DRAWS random valid actions from one state (BATCH per call), with its mask."""
    states = repeat(state)
    picks = [
        np.asarray(fns.random(jax.random.split(jax.random.fold_in(key, i), BATCH), states))
        for i in range(DRAWS // BATCH)
    ]
    return np.concatenate(picks), np.asarray(fns.valid(states)[0])


@pytest.fixture(scope="module", params=CONFIGS, ids=IDS)
def game(request):
    """One env per config with its results, each device function compiled once (the costly
    part) and shared by the tests of that config."""
    name, config = request.param
    env = small_image(name, config)
    fns = Batched(env)
    key = jax.random.key(0)
    batched = first_move(fns, key)
    live = envs.unbatch(batched["new"], 0) if not batched["dones"][0] else envs.unbatch(batched["states"], 0)
    facts, final = episodes(fns, jax.random.key(2), batched["states"])
    return dict(
        env=env,
        batched=batched,
        again=first_move(fns, key),
        other=first_move(fns, jax.random.key(1)),
        sweeps=[(state, every_action(env, fns, key, state)) for state in (envs.unbatch(batched["states"], 1), live)],
        facts=facts,
        final=jax.device_get(final),
        final_frames=np.asarray(fns.render(final)),
        draws=draws(fns, jax.random.key(3), live),
    )


def test_dtypes_and_shapes(game):
    env, out = game["env"], game["batched"]
    assert out["frames"].shape == (BATCH, *env.image_shape) and out["frames"].dtype == np.uint8
    assert env.image_shape[2] == 3
    assert out["masks"].shape == (BATCH, env.num_actions) and out["masks"].dtype == np.bool_
    assert out["actions"].shape == (BATCH,) and out["actions"].dtype == np.int32
    assert out["rewards"].shape == (BATCH,) and out["rewards"].dtype == np.float32
    assert out["dones"].shape == (BATCH,) and out["dones"].dtype == np.bool_
    assert {"raw_reward", "legal"} <= set(out["info"])
    assert out["info"]["raw_reward"].dtype == np.float32 and out["info"]["legal"].dtype == np.bool_
    assert all(np.shape(v)[:1] == (BATCH,) for v in out["info"].values())
    # a step keeps the state's structure, shapes and dtypes
    before, after = (
        jax.tree.map(lambda x: (x.shape, x.dtype), out["states"]),
        jax.tree.map(lambda x: (x.shape, x.dtype), out["new"]),
    )
    assert before == after
    assert 0 <= env.invalid_action < env.num_actions


def test_the_unbatched_functions_trace_to_the_same_shapes(game):
    """One board, unbatched, as `jax.jit(env.step)` would trace it: the shapes and dtypes of a
    row of the batch (traced only: compiling it again would double the cost of this test)."""
    env, out = game["env"], game["batched"]
    row = jax.tree.map(lambda x: x[0], out)
    spec = lambda tree: jax.tree.map(lambda x: (np.shape(x), np.result_type(x)), tree)  # noqa: E731
    key = jax.random.key(0)
    assert spec(jax.eval_shape(env.reset, key)) == spec(row["states"])
    assert spec(jax.eval_shape(env.step, key, row["states"], row["actions"])) == spec(
        (row["new"], row["rewards"], row["dones"], row["info"])
    )
    assert spec(jax.eval_shape(env.render, row["new"])) == spec(row["frames"])
    assert spec(jax.eval_shape(env.valid_actions, row["states"])) == spec(row["masks"])
    assert spec(jax.eval_shape(env.random_valid_action, key, row["states"])) == spec(row["actions"])


def test_determinism_under_a_fixed_key(game):
    jax.tree.map(np.testing.assert_array_equal, game["batched"], game["again"])
    assert not np.array_equal(game["batched"]["states"].board, game["other"]["states"].board)  # other key, other deals


def test_masks_are_never_empty_on_a_live_board(game):
    out = game["batched"]
    live = ~np.asarray(out["states"].done)
    assert out["masks"][live].any(axis=1).all()
    assert not out["masks"][:, game["env"].invalid_action].any()
    assert out["info"]["legal"][live].all()  # a random valid action is legal


def test_valid_actions_agree_with_step_for_every_action(game):
    for state, sweep in game["sweeps"]:
        np.testing.assert_array_equal(sweep["legal"], sweep["mask"])
        assert (sweep["boards"][~sweep["legal"]] == np.asarray(state.board)).all()  # illegal: the board stays


def test_answer_text_parses_back_to_its_action(game):
    env = game["env"]
    rng = np.random.default_rng(0)
    for _, sweep in game["sweeps"]:
        ids = np.flatnonzero(sweep["legal"]).tolist() + rng.integers(0, env.num_actions, 50).tolist()
        for action in ids:
            if action == env.invalid_action:
                continue
            text = env.answer_text(action)
            assert text.startswith("<answer>") and text.endswith("</answer>")
            assert env.parse(text) == action, (action, text)
    with pytest.raises(ValueError, match="invalid action"):
        env.answer_text(env.invalid_action)
    with pytest.raises(ValueError, match="names no move"):
        env.answer_text(env.num_actions)


def test_action_label_names_each_move_in_a_few_words(game):
    """A label is for people (captions, reasoning), not an answer: short, one line, no tags, one per move."""
    env = game["env"]
    moves = sorted({a for _, sweep in game["sweeps"] for a in np.flatnonzero(sweep["legal"]).tolist()})
    labels = [env.action_label(a) for a in moves + [env.invalid_action]]
    assert all(0 < len(label) <= 40 and "\n" not in label and "<" not in label for label in labels), labels
    assert len(set(labels)) == len(labels)


def test_random_valid_action_is_uniform_over_the_valid_actions(game):
    """The k-th-valid-action draw: only valid ids, each about equally often (chi-square)."""
    picks, mask = game["draws"]
    chi_square.assert_uniform(picks, np.flatnonzero(mask), f"{game['env'].name}.random_valid_action")


def test_episodes_of_random_valid_moves_keep_every_invariant(game):
    """BATCH games played to their end: every move before the end valid and legal, `done`
    exactly when nothing is valid any more, and after the end only the invalid action, never
    legal, still done."""
    env, final, f = game["env"], game["final"], game["facts"]
    assert f["state_done"][-1].all(), f"{env.name}: not every game ended within {MAX_MOVES} moves"
    playing = ~f["was_done"]
    assert f["any_valid"][playing].all() and f["chosen_valid"][playing].all() and f["legal"][playing].all()
    np.testing.assert_array_equal(f["done"], ~f["valid_after"])
    np.testing.assert_array_equal(f["done"], f["state_done"])
    over = f["was_done"]
    assert over.any() and not f["any_valid"][over].any() and f["done"][over].all()
    assert (f["action"][over] == env.invalid_action).all() and not f["legal"][over].any()
    assert f["reward"].dtype == np.float32 and f["raw"].dtype == np.float32 and f["done"].dtype == np.bool_
    frames = game["final_frames"]
    assert frames.shape == (BATCH, *env.image_shape) and frames.dtype == np.uint8
    assert env.describe(envs.unbatch(final, 0))  # the host text of a finished board


def test_step_rejects_arguments_of_the_wrong_kind(game):
    env = game["env"]
    state = envs.unbatch(game["batched"]["states"], 0)
    key = jax.random.key(0)
    step = jax.jit(env.step)  # these raise while tracing, before any compile
    with pytest.raises(ValueError, match=r"action must be one action id \(shape \(\)\), got shape \(1, 2\)"):
        env.step(key, state, np.array([[1, 2]]))
    with pytest.raises(TypeError, match="action must be an integer action id.*float 3.7"):
        env.step(key, state, 3.7)
    with pytest.raises(TypeError, match="action must be an integer action id.*float32"):
        step(key, state, 3.7)  # at trace time under jit too
    with pytest.raises(TypeError, match="bool"):
        env.step(key, state, True)
    batch_state = game["batched"]["states"]
    with pytest.raises(TypeError, match="state must be one .* state"):
        env.step(key, batch_state, 0)
    # ids outside the action space, beyond int32 too, are the invalid action, whatever their type
    for outside in (2**31, np.int64(2**31), np.uint32(2**32 - 1), 2**80, -1, env.num_actions):
        assert int(env.checked_action(state, outside)) == env.invalid_action
    assert int(env.checked_action(state, np.int16(1))) == 1


def test_an_action_beyond_int32_steps_as_the_invalid_action():
    env = envs.make("2048", board_size=3, image_size=(224, 196))
    state, key = env.reset(jax.random.key(0)), jax.random.key(1)
    expected = jax.device_get(env.step(key, state, env.invalid_action))
    for huge in (2**31, np.int64(2**31), 2**80):
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(env.step(key, state, huge)), expected)


def test_a_state_of_another_game_is_refused():
    g2048, swap = envs.make("2048"), envs.make("swap", board_size=4, image_size=(336, 308))
    rows, cols = np.indices((4, 4))
    board = 3 + (3 * rows + cols) % 9  # no line, no legal swap ...
    board[0] = [0, 1, 0, 0]  # ... until this row: swapping its first two cells makes a line
    other = swap.from_board(board)
    for method in (lambda s: g2048.step(jax.random.key(0), s, 0), g2048.render, g2048.valid_actions):
        with pytest.raises(TypeError, match=r"2048\.\w+: state must be one 2048 state"):
            method(other)
