"""g1jax.rl.credit: multi-turn credit assignment against hand-computed values (docs/grpo.md, "Multi-turn credit")."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from g1jax.rl import credit
from g1jax.rl.credit import CreditConfig


def close(actual, expected, atol=1e-6):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected, dtype=np.float64), rtol=1e-5, atol=atol)


# One episode group of G = 2 trajectories, T = 3 turns, gamma 0.5. Trajectory 1's board finished after
# its second turn: its third turn is inactive and its reward 5 (and key 3) must count nowhere.
REWARDS = [[1.0, 0.0, 2.0], [0.0, 1.0, 5.0]]
ACTIVE = [[True, True, True], [True, True, False]]
KEYS = [[1, 2, 3], [1, 3, 3]]
# discounted: trajectory 0 R2 = 2, R1 = 0 + 0.5 * 2 = 1, R0 = 1 + 0.5 * 1 = 1.5; trajectory 1 R1 = 1, R0 = 0.5
RETURNS = [[1.5, 1.0, 2.0], [0.5, 1.0, 0.0]]
# step groups: key 1 {(0,0), (1,0)}, key 2 {(0,1)} alone, key 3 {(0,2), (1,1)}, (1,2) inactive alone
GROUP_IDS = [[0, 1, 2], [0, 2, 5]]
GROUP_SIZES = [[2, 1, 2], [2, 2, 1]]


def test_discounted_returns_by_hand():
    close(credit.discounted_returns(jnp.array(REWARDS), jnp.array(ACTIVE), 0.5), RETURNS)
    close(credit.discounted_returns(jnp.array(REWARDS), jnp.array(ACTIVE), 1.0), [[3, 2, 2], [1, 1, 0]])
    close(credit.discounted_returns(jnp.array(REWARDS), jnp.array(ACTIVE), 0.0), [[1, 0, 2], [0, 1, 0]])


def test_episode_returns_ignore_finished_turns():
    close(credit.episode_returns(jnp.array(REWARDS), jnp.array(ACTIVE)), [3.0, 1.0])


def test_episode_advantages_by_hand():
    # totals 3 and 1: mean 2, deviations +-1, ddof=1 std sqrt(2); every active turn gets its trajectory's
    close(credit.episode_advantages(REWARDS, ACTIVE, 2, "drgrpo"), [[1, 1, 1], [-1, -1, 0]])
    a = 1 / (math.sqrt(2) + 1e-6)
    close(credit.episode_advantages(REWARDS, ACTIVE, 2, "grpo"), [[a, a, a], [-a, -a, 0]])
    close(credit.episode_advantages(REWARDS, ACTIVE, 2, "rloo"), [[2, 2, 2], [-2, -2, 0]])


def test_step_groups_by_hand():
    ids, sizes = credit.step_groups(jnp.array(KEYS), jnp.array(ACTIVE), 2)
    assert np.asarray(ids).tolist() == GROUP_IDS
    assert np.asarray(sizes).tolist() == GROUP_SIZES


def test_step_groups_count_repeat_visits_and_never_cross_episode_groups():
    # two episode groups with the same keys: each groups its own turns only; trajectory 0 visits key 7 twice
    keys = jnp.array([[7, 7, 8], [8, 9, 7], [7, 7, 8], [8, 9, 7]])
    ids, sizes = credit.step_groups(keys, jnp.ones((4, 3), bool), 2)
    assert np.asarray(ids).tolist() == [[0, 0, 2], [2, 4, 0], [6, 6, 8], [8, 10, 6]]
    assert np.asarray(sizes).tolist() == [[3, 3, 2], [2, 1, 3]] * 2


def test_step_advantages_by_hand():
    returns, keys, active = jnp.array(RETURNS), jnp.array(KEYS), jnp.array(ACTIVE)
    # key 1: returns 1.5 and 0.5 (mean 1); key 3: 2 and 1 (mean 1.5); the singleton and the inactive turn: 0
    close(credit.step_advantages(returns, keys, active, 2, "drgrpo"), [[0.5, 0, 0.5], [-0.5, -0.5, 0]])
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # ddof=1 std of two values 1 apart
    close(credit.step_advantages(returns, keys, active, 2, "grpo"), [[a, 0, a], [-a, -a, 0]])
    close(credit.step_advantages(returns, keys, active, 2, "rloo"), [[1, 0, 1], [-1, -1, 0]])


def test_a_singleton_step_group_gets_exactly_zero():
    adv = credit.step_advantages(jnp.array([[5.0, 2.0], [1.0, 3.0]]), jnp.array([[1, 2], [3, 4]]), jnp.ones((2, 2)), 2)
    assert np.array_equal(np.asarray(adv), np.zeros((2, 2)))


def test_gigpo_combines_episode_and_step_advantages():
    kwargs = dict(gamma=0.5, estimator="drgrpo")
    close(credit.gigpo_advantages(REWARDS, ACTIVE, KEYS, 2, **kwargs), [[1.5, 1, 1.5], [-1.5, -1.5, 0]])
    close(
        credit.gigpo_advantages(REWARDS, ACTIVE, KEYS, 2, step_weight=0.5, **kwargs),
        [[1.25, 1, 1.25], [-1.25, -1.25, 0]],
    )
    close(credit.gigpo_advantages(REWARDS, ACTIVE, KEYS, 2, step_weight=0.0, **kwargs), [[1, 1, 1], [-1, -1, 0]])


def test_gamma_reaches_the_step_advantages():
    # one state visited at turn 0 by both trajectories; rewards only at the last turn: R0 = gamma^2 * r2
    rewards = jnp.array([[0.0, 0.0, 4.0], [0.0, 0.0, 0.0]])
    keys = jnp.array([[1, 2, 3], [1, 4, 5]])
    for gamma in (1.0, 0.5):
        adv = credit.gigpo_advantages(rewards, jnp.ones((2, 3)), keys, 2, gamma=gamma, step_weight=1.0)
        step = 4 * gamma**2 / 2
        close(np.asarray(adv)[:, 0], [2 + step, -2 - step])


def test_turn_baseline_by_hand():
    # per turn index, the other trajectory's return if it is still playing (else the baseline is 0)
    close(credit.turn_baseline_advantages(REWARDS, ACTIVE, 2, gamma=0.5), [[1, 0, 2], [-1, 0, 0]])
    # three trajectories, one turn: r_i minus the mean of the other two
    close(credit.turn_baseline_advantages([[3.0], [6.0], [9.0]], [[True]] * 3, 3), [[-4.5], [0.0], [4.5]])
    # returns [3, 2], [7, 4], [5, -]: at turn 0 each against the mean of the other two; the finished
    # trajectory 2 leaves the baseline of the others at turn 1
    rewards, active = [[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]], [[True, True], [True, True], [True, False]]
    close(credit.turn_baseline_advantages(rewards, active, 3, gamma=1.0), [[-3, -2], [3, 2], [0, 0]])


@pytest.mark.parametrize("mode", credit.CREDIT_MODES)
@pytest.mark.parametrize("estimator", ["grpo", "drgrpo", "rloo"])
def test_equal_returns_give_exactly_zero(mode, estimator):
    # float32 sums and means of 0.1, 0.2, 0.7 are inexact; three identical trajectories must still give 0
    rewards = jnp.tile(jnp.array([[0.1, 0.2, 0.7]]), (3, 1))
    keys = jnp.tile(jnp.array([[1, 2, 3]]), (3, 1))
    config = CreditConfig(mode=mode, estimator=estimator, gamma=0.9)
    adv = credit.turn_advantages(rewards, jnp.ones((3, 3), bool), keys, 3, config)
    assert np.array_equal(np.asarray(adv), np.zeros((3, 3)))


def test_turn_advantages_select_and_jit():
    rewards, active, keys = jnp.array(REWARDS), jnp.array(ACTIVE), jnp.array(KEYS)
    expected = {
        "episode": credit.episode_advantages(rewards, active, 2, "drgrpo"),
        "gigpo": credit.gigpo_advantages(rewards, active, keys, 2, gamma=0.5, estimator="drgrpo"),
        "turn": credit.turn_baseline_advantages(rewards, active, 2, 0.5),
    }
    for mode, value in expected.items():
        config = CreditConfig(mode=mode, estimator="drgrpo", gamma=0.5)
        jitted = jax.jit(functools.partial(credit.turn_advantages, group_size=2, config=config))
        close(jitted(rewards, active, keys), value)


def test_state_hash_finds_equal_boards_on_the_device():
    env = envs.make("2048")
    boards = [[[1, 0, 0, 0]] * 4, [[1, 0, 0, 0]] * 4, [[1, 0, 0, 1]] + [[1, 0, 0, 0]] * 3]
    states = jax.tree.map(lambda *x: jnp.stack(x), *[env.from_board(b) for b in boards])
    hashes = np.asarray(jax.jit(jax.vmap(credit.state_hash))(states))
    assert hashes.shape == (3, 2) and hashes.dtype == np.uint32
    assert (hashes[0] == hashes[1]).all() and (hashes[0] != hashes[2]).any()
    frames = jax.vmap(env.render)(states)
    frame_hashes = np.asarray(jax.vmap(credit.state_hash)(frames))
    assert (frame_hashes[0] == frame_hashes[1]).all() and (frame_hashes[0] != frame_hashes[2]).any()
    # one changed pixel changes the key; so does the same word at another position
    one_pixel = frames[0].at[5, 7, 1].add(1)
    assert (np.asarray(credit.state_hash(one_pixel)) != frame_hashes[0]).any()
    assert (np.asarray(credit.state_hash(jnp.array([1, 0]))) != np.asarray(credit.state_hash(jnp.array([0, 1])))).any()


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: credit.episode_advantages(REWARDS, ACTIVE, 1), ["group_size"]),
        (lambda: credit.episode_advantages(REWARDS, ACTIVE, 3), ["2 trajectories", "group_size 3"]),
        (lambda: credit.episode_advantages(REWARDS, [[True, True]] * 2, 2), ["active", "(2, 3)"]),
        (lambda: credit.episode_advantages([1.0, 2.0], [True, True], 2), ["[trajectories, turns]"]),
        (lambda: credit.discounted_returns(REWARDS, ACTIVE, 1.5), ["gamma"]),
        (lambda: credit.step_groups(jnp.ones((2, 2, 1), jnp.int32), ACTIVE, 2), ["keys", "[2, 3, K]"]),
        (lambda: credit.step_advantages(REWARDS, jnp.ones((2, 3)), ACTIVE, 2), ["keys"]),
        (lambda: credit.gigpo_advantages(REWARDS, ACTIVE, KEYS, 2, step_weight=-1.0), ["step_weight"]),
        (lambda: CreditConfig(mode="ppo"), ["mode", "ppo"]),
        (lambda: CreditConfig(estimator="gae"), ["estimator"]),
        (lambda: CreditConfig(gamma=2), ["gamma"]),
        (lambda: credit.turn_advantages(REWARDS, ACTIVE, KEYS, 2, "episode"), ["CreditConfig"]),
        (lambda: credit.state_hash({}), ["leaf"]),
    ],
)
def test_errors_are_one_line(call, words):
    with pytest.raises(ValueError) as excinfo:
        call()
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
