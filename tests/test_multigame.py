"""Multi-game batches: one mixed batch of every registered game gives, row for row, what each
game gives on its own (states, actions, rewards, masks, frames, text), and bad layouts fail
clearly."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.multigame import MultiGame

GAMES = envs.list_games()
IMAGE_SIZE = (336, 336)
COUNTS = {name: 2 + i % 2 for i, name in enumerate(GAMES)}  # uneven counts catch offset mistakes
BATCH = MultiGame.make(COUNTS, image_size=IMAGE_SIZE)
GROUP = 3  # answers per row for parallel_step


def mixed(key):
    """The whole batch through the MultiGame methods, in one jitted program."""
    states = BATCH.reset(key)
    actions = BATCH.random_valid_actions(jax.random.fold_in(key, 1), states)
    limits = np.array([BATCH.games[i].num_actions for i in BATCH.game_index])[:, None]  # any id of the row's game
    answers = jax.random.randint(jax.random.fold_in(key, 2), (BATCH.size, GROUP), 0, limits)
    new, rewards, dones, info = BATCH.step(jax.random.fold_in(key, 3), states, actions)
    _, group_rewards, _, group_info = BATCH.parallel_step(jax.random.fold_in(key, 4), states, answers)
    return dict(
        states=states,
        actions=actions,
        answers=answers,
        new=new,
        rewards=rewards,
        dones=dones,
        legal=info["legal"],
        raw=info["raw_reward"],
        group_rewards=group_rewards,
        group_legal=group_info["legal"],
        frames=BATCH.render(new),
        masks=BATCH.valid_actions(states),
    )


def alone(game, i, count, key, answers):
    """Game i by itself with its own vmapped functions and the documented key layout
    (sub-batch i uses split(fold_in(key, i), count))."""

    def keys(k):
        return jax.random.split(jax.random.fold_in(k, i), count)

    states = jax.vmap(game.reset)(keys(key))
    actions = jax.vmap(game.random_valid_action)(keys(jax.random.fold_in(key, 1)), states)
    new, rewards, dones, info = jax.vmap(game.step)(keys(jax.random.fold_in(key, 3)), states, actions)
    _, group_rewards, _, group_info = jax.vmap(lambda k, s, a: envs.parallel_step(game, k, s, a))(
        keys(jax.random.fold_in(key, 4)), states, answers
    )
    return dict(
        states=states,
        actions=actions,
        new=new,
        rewards=rewards,
        dones=dones,
        legal=info["legal"],
        raw=info["raw_reward"],
        group_rewards=group_rewards,
        group_legal=group_info["legal"],
        frames=jax.vmap(game.render)(new),
        masks=jax.vmap(game.valid_actions)(states),
    )


@pytest.fixture(scope="module")
def results():
    key = jax.random.key(0)
    out = jax.device_get(jax.jit(mixed)(key))
    solo = [
        jax.device_get(jax.jit(alone, static_argnums=(0, 1, 2))(g, i, n, key, out["answers"][BATCH.rows(i)]))
        for i, (g, n) in enumerate(zip(BATCH.games, BATCH.counts))
    ]
    return out, solo


def test_layout():
    assert BATCH.size == sum(COUNTS.values())
    assert BATCH.game_names == [name for name, n in COUNTS.items() for _ in range(n)]
    assert BATCH.prompts == [
        envs.make(name, image_size=IMAGE_SIZE).prompt for name, n in COUNTS.items() for _ in range(n)
    ]
    assert [BATCH.rows(i) for i in range(len(GAMES))][-1].stop == BATCH.size
    assert BATCH.image_shape == (*IMAGE_SIZE, 3)


def test_shapes(results):
    out, _ = results
    b = BATCH.size
    assert out["frames"].shape == (b, *IMAGE_SIZE, 3) and out["frames"].dtype == np.uint8
    assert out["rewards"].shape == out["dones"].shape == out["legal"].shape == out["actions"].shape == (b,)
    assert out["group_rewards"].shape == (b, GROUP)
    assert out["masks"].shape == (b, max(g.num_actions for g in BATCH.games))
    assert out["legal"].all()  # random valid actions are legal in every game


@pytest.mark.parametrize("name", GAMES)
def test_rows_match_the_game_alone(results, name):
    out, solo = results
    i = GAMES.index(name)
    rows, mine = BATCH.rows(i), solo[i]
    for field in ("actions", "rewards", "dones", "legal", "raw", "group_rewards", "group_legal", "frames"):
        np.testing.assert_array_equal(out[field][rows], mine[field], err_msg=field)
    jax.tree.map(np.testing.assert_array_equal, out["states"][i], mine["states"])
    jax.tree.map(np.testing.assert_array_equal, out["new"][i], mine["new"])
    width = BATCH.games[i].num_actions
    np.testing.assert_array_equal(out["masks"][rows, :width], mine["masks"])
    assert not out["masks"][rows, width:].any()


@pytest.mark.parametrize("name", GAMES)
def test_text_per_row(results, name):
    out, _ = results
    i = GAMES.index(name)
    game, rows = BATCH.games[i], BATCH.rows(i)
    texts = BATCH.describe(out["states"])
    assert len(texts) == BATCH.size
    assert texts[rows] == [game.describe(envs.unbatch(out["states"][i], j)) for j in range(BATCH.counts[i])]
    answers = ["<answer>(0, 1) (0, 2)</answer>" if r % 2 else "<answer>1</answer>" for r in range(BATCH.size)]
    parsed = BATCH.parse(answers)
    assert parsed.dtype == np.int32 and parsed.shape == (BATCH.size,)
    assert parsed[rows].tolist() == [game.parse(a) for a in answers[rows]]


def test_warmup_and_auto_reset():
    """Warm-up gives each game its own number of moves; auto-reset steps keep the layout."""
    small = MultiGame.make({"2048": 2, "swap": 3}, image_size=IMAGE_SIZE)

    def run(key):
        states = small.warmup(key, num_moves={"2048": 5})
        actions = small.random_valid_actions(key, states)
        return states, small.step(key, states, actions, auto_reset=True)

    states, (new, rewards, dones, info) = jax.device_get(jax.jit(run)(jax.random.key(1)))
    assert (states[0].steps == 5).all()  # 2048 counts its steps: 5 warm-up moves
    assert (states[1].moves_left == small.games[1].max_moves).all()  # Swap: G1 uses no warm-up
    assert rewards.shape == (5,) and len(info["final_state"]) == 2
    frames = jnp.zeros((5, *IMAGE_SIZE, 3), jnp.uint8)
    frames = jax.jit(small.render_into, donate_argnums=0)(frames, new)
    np.testing.assert_array_equal(np.asarray(frames), np.asarray(jax.jit(small.render)(new)))


def test_info_keys_the_games_share_are_passed_on():
    """Every info key all games return comes back as one [B] batch (not only raw_reward and
    legal); a key only some games return is left out; a shared key of other shapes is an error."""
    from envs.game2048 import Game2048

    def with_info(**extra):
        def step(self, key, state, action, params=None):
            new, reward, done, info = Game2048.step(self, key, state, action, params)
            return new, reward, done, {**info, **{k: f(new, info) for k, f in extra.items()}}

        return dataclasses.dataclass(frozen=True, repr=False)(type("Extra2048", (Game2048,), {"step": step}))

    tiles = lambda s, i: (s.board > 0).sum()  # noqa: E731
    game_a = with_info(tiles=tiles, only_here=lambda s, i: i["legal"])(image_size=IMAGE_SIZE)
    game_b = with_info(tiles=tiles)(board_size=3, image_size=IMAGE_SIZE)
    both = MultiGame((game_a, game_b), (2, 3))

    def play(batch, key):
        states = batch.reset(key)
        return batch.step(key, states, batch.random_valid_actions(key, states))

    new, _, _, info = jax.jit(play, static_argnums=0)(both, jax.random.key(0))
    assert set(info) == {"raw_reward", "legal", "tiles"}
    expected = [int((np.asarray(b) > 0).sum()) for part in new for b in part.board]
    assert np.asarray(info["tiles"]).tolist() == expected
    states = jax.eval_shape(both.reset, jax.random.key(0))
    group = jax.eval_shape(both.parallel_step, jax.random.key(3), states, jnp.zeros((5, 2), jnp.int32))[3]
    assert set(group) == {"raw_reward", "legal", "tiles"} and group["tiles"].shape == (5, 2)
    odd = MultiGame((game_a, with_info(tiles=lambda s, i: s.board)(board_size=3, image_size=IMAGE_SIZE)), (2, 3))
    with pytest.raises(ValueError, match=r"info\['tiles'\] differs in shape or dtype"):
        jax.eval_shape(lambda key: play(odd, key), jax.random.key(0))


def test_bad_layouts_fail_clearly():
    swap, g2048 = envs.make("swap"), envs.make("2048")
    with pytest.raises(envs.ConfigError, match="same image_size"):
        MultiGame((swap, g2048), (1, 1))
    with pytest.raises(envs.ConfigError, match="positive integer"):
        MultiGame((swap,), (0,))
    with pytest.raises(envs.ConfigError, match="1 games but 2 counts"):
        MultiGame((swap,), (1, 2))
    with pytest.raises(envs.ConfigError, match="not in the batch"):
        MultiGame.make({"swap": 1}, configs={"2048": {}})
    with pytest.raises(envs.UnknownGameError):
        MultiGame.make({"chess": 1})
    with pytest.raises(ValueError, match="must have 5 rows"):
        MultiGame.make({"2048": 2, "swap": 3}, image_size=IMAGE_SIZE).step(
            jax.random.key(0), None, jnp.zeros(4, jnp.int32)
        )
    with pytest.raises(ValueError, match="expected 2 answers"):
        MultiGame.make({"swap": 2}).parse(["a"])
