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

BATCH = 3
EPISODE_STEPS = 400
DRAWS = 8192  # random valid actions drawn from one state for the uniformity check
# Config added to every game's configs so that an episode ends within EPISODE_STEPS moves
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
        presets = envs.make(name).presets
        out.append((name, base))
        out.extend((name, {**base, "preset": p}) for p in presets if p != getattr(envs.make(name), "preset", None))
    return out


CONFIGS = contract_configs()
IDS = [f"{name}-{config.get('preset', 'default')}" for name, config in CONFIGS]


def move_keys(key, t):
    """(action key, step key) of move t of the game dealt with `key`."""
    return jax.random.split(jax.random.fold_in(key, t))


def batched_run(env, key):
    """The batch path, vmapped: reset, masks, the first move's random valid action and step,
    the frame after it."""
    keys = jax.random.split(key, BATCH)
    states = jax.vmap(env.reset)(keys)
    masks = jax.vmap(env.valid_actions)(states)
    pick_keys, step_keys = jnp.moveaxis(jax.vmap(lambda k: move_keys(k, 0))(keys), 1, 0)
    actions = jax.vmap(env.random_valid_action)(pick_keys, states)
    new, rewards, dones, info = jax.vmap(env.step)(step_keys, states, actions)
    frames = jax.vmap(env.render)(new)
    return dict(states=states, masks=masks, actions=actions, new=new, rewards=rewards, dones=dones, info=info, frames=frames)


def episode(env, key):
    """One game of random valid moves with the unbatched functions: facts per move, the frames
    after the first and after the last move. Its first move is the batch's row 0 (same keys)."""

    def move(carry, t):
        state, first_frame = carry
        pick_key, step_key = move_keys(key, t)
        mask = env.valid_actions(state)
        action = env.random_valid_action(pick_key, state)
        new, reward, done, info = env.step(step_key, state, action)
        frame = env.render(new)
        facts = dict(
            was_done=state.done, any_valid=mask.any(), chosen_valid=mask[action], action=action, legal=info["legal"],
            reward=reward, raw=info["raw_reward"], done=done, state_done=new.done, valid_after=env.valid_actions(new).any(),
            info=info,
        )
        return (new, jnp.where(t == 0, frame, first_frame)), (facts, frame)

    start = env.reset(key)
    blank = jnp.zeros(env.image_shape, jnp.uint8)
    (final, first_frame), (facts, frames) = jax.lax.scan(move, (start, blank), jnp.arange(EPISODE_STEPS))
    return dict(start=start, final=final, facts=facts, first_frame=first_frame, last_frame=frames[-1])


def every_action(env, key, state):
    """Every action id stepped from one state: whether each was legal and the boards after it,
    with the state's mask."""
    new, _, _, info = jax.vmap(lambda a: env.step(key, state, a))(jnp.arange(env.num_actions))
    return dict(legal=info["legal"], boards=new.board, mask=env.valid_actions(state))


def draws(env, key, state):
    """DRAWS random valid actions from one state, with its mask."""
    picks = jax.vmap(lambda k: env.random_valid_action(k, state))(jax.random.split(key, DRAWS))
    return picks, env.valid_actions(state)


@pytest.fixture(scope="module", params=CONFIGS, ids=IDS)
def game(request):
    """One env per config with its results, each function compiled once per config (the
    costly part) and shared by the tests of that config."""
    name, config = request.param
    env = small_image(name, config)
    key = jax.random.key(0)
    run = jax.jit(batched_run, static_argnums=0)
    batched = jax.device_get(run(env, key))
    live = envs.unbatch(batched["new"], 0) if not batched["dones"][0] else envs.unbatch(batched["states"], 0)
    sweep = jax.jit(every_action, static_argnums=0)
    return dict(
        env=env, batched=batched, again=jax.device_get(run(env, key)), other=jax.device_get(run(env, jax.random.key(1))),
        sweeps=[(state, jax.device_get(sweep(env, key, state))) for state in (envs.unbatch(batched["states"], 1), live)],
        episode=jax.device_get(jax.jit(episode, static_argnums=0)(env, jax.random.split(key, BATCH)[0])),
        draws=jax.device_get(jax.jit(draws, static_argnums=0)(env, jax.random.key(3), live)),
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
    before, after = jax.tree.map(lambda x: (x.shape, x.dtype), out["states"]), jax.tree.map(lambda x: (x.shape, x.dtype), out["new"])
    assert before == after
    assert 0 <= env.invalid_action < env.num_actions


def test_the_unbatched_functions_agree_with_the_vmapped_batch(game):
    """The episode's first move (jitted, one board) is the batch's row 0 (jitted, vmapped)."""
    row, ep = jax.tree.map(lambda x: x[0], game["batched"]), game["episode"]
    jax.tree.map(np.testing.assert_array_equal, ep["start"], row["states"])
    first = jax.tree.map(lambda x: x[0], ep["facts"])
    assert first["action"] == row["actions"] and first["reward"] == row["rewards"] and first["done"] == row["dones"]
    jax.tree.map(np.testing.assert_array_equal, first["info"], row["info"])
    assert first["any_valid"] == row["masks"].any()
    np.testing.assert_array_equal(ep["first_frame"], row["frames"])


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


def test_random_valid_action_is_uniform_over_the_valid_actions(game):
    """The k-th-valid-action draw: only valid ids, each about equally often (chi-square)."""
    picks, mask = game["draws"]
    chi_square.assert_uniform(picks, np.flatnonzero(mask), f"{game['env'].name}.random_valid_action")


def test_an_episode_of_random_valid_moves_keeps_every_invariant(game):
    env, final, f = game["env"], game["episode"]["final"], game["episode"]["facts"]
    assert f["done"].any(), f"{env.name}: the episode did not end within {EPISODE_STEPS} moves"
    end = int(np.argmax(f["done"]))  # the move that ended it
    playing = slice(0, end + 1)
    assert not f["was_done"][playing].any() and f["any_valid"][playing].all()
    assert f["chosen_valid"][playing].all() and f["legal"][playing].all()
    # done says exactly "nothing is valid any more"
    np.testing.assert_array_equal(f["done"], ~f["valid_after"])
    np.testing.assert_array_equal(f["done"], f["state_done"])
    # after the end: nothing valid, the invalid action, nothing legal, and it stays done
    over = slice(end + 1, None)
    assert f["was_done"][over].all() and not f["any_valid"][over].any()
    assert (f["action"][over] == env.invalid_action).all() and not f["legal"][over].any()
    assert f["reward"].dtype == np.float32 and f["raw"].dtype == np.float32 and f["done"].dtype == np.bool_
    assert bool(final.done)
    frame = game["episode"]["last_frame"]
    assert frame.shape == env.image_shape and frame.dtype == np.uint8 and len(np.unique(frame.reshape(-1, 3), axis=0)) > 1
    assert env.describe(final)  # the host text of a finished board


def test_step_rejects_arguments_of_the_wrong_kind(game):
    env = game["env"]
    state = envs.unbatch(game["batched"]["states"], 0)
    key = jax.random.key(0)
    step = jax.jit(env.step)
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
    env = envs.make("2048", image_size=(224, 196))
    state, key = env.reset(jax.random.key(0)), jax.random.key(1)
    expected = jax.device_get(env.step(key, state, env.invalid_action))
    for huge in (2**31, np.int64(2**31), 2**80):
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(env.step(key, state, huge)), expected)


def test_a_state_of_another_game_is_refused():
    g2048, swap = envs.make("2048"), envs.make("swap", board_size=4, image_size=(336, 308))
    other = swap.reset(jax.random.key(0))
    for method in (lambda s: g2048.step(jax.random.key(0), s, 0), g2048.render, g2048.valid_actions):
        with pytest.raises(TypeError, match=r"2048\.\w+: state must be one 2048 state"):
            method(other)
