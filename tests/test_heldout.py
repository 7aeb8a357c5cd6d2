"""The held-out comparison (g1jax.heldout): the blind row, per-cell perception, and `learned` judged on
the game reward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.grammar import perception_cell_accuracy
from g1jax import heldout
from g1jax.rl.rewards import text_parts

TRUTH = " 2 | - | 4 \n - | 8 | - \n 16 | - | 2 "


def test_per_cell_perception_accuracy_of_known_texts():
    exact = f"<perception>\n{TRUTH}\n</perception>\n<think>\nx\n</think>\n<answer>0</answer>"
    assert perception_cell_accuracy(exact, TRUTH) == 1.0
    one_wrong = exact.replace(" 8 ", " 4 ")
    assert perception_cell_accuracy(one_wrong, TRUTH) == pytest.approx(8 / 9)
    # cells are compared stripped: spacing is not part of what was read
    assert perception_cell_accuracy("<perception>2|-|4\n-|8|-\n16|-|2</perception>", TRUTH) == 1.0
    for garbled in [
        "<perception> 2 | - | 4 \n - | 8 \n 16 | - | 2 </perception>",  # a row short of a cell
        "<perception> 2 | - | 4 \n - | 8 | - </perception>",  # a row missing
        "<perception>2 4 8</perception>",
        "no block at all <answer>1</answer>",
        f"<perception>\n{TRUTH}\n",
    ]:  # never closed
        assert perception_cell_accuracy(garbled, TRUTH) == 0.0, garbled
    # only the first block is read
    assert perception_cell_accuracy(f"<perception>x</perception><perception>{TRUTH}</perception>", TRUTH) == 0.0


def test_text_parts_report_the_strict_format_whatever_the_reward_checks():
    soup = "<perception>\n" + TRUTH + "\n</perception><answer>1</think><think></answer>x<answer>2</answer>"
    good = f"<perception>\n{TRUTH}\n</perception>\n<think>\nx\n</think>\n<answer>1</answer>"
    lenient = text_parts([soup, good], [TRUTH, TRUTH], strict_format=False)
    strict = text_parts([soup, good], [TRUTH, TRUTH], strict_format=True)
    assert lenient["format"].tolist() == [1.0, 1.0] and strict["format"].tolist() == [0.0, 1.0]
    assert lenient["format_strict"].tolist() == strict["format_strict"].tolist() == [False, True]
    assert lenient["perception_cells"].tolist() == [1.0, 1.0]


BOARDS = [  # 2048 tile values; which moves merge, by hand (0 up, 1 right, 2 down, 3 left)
    [[2, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],  # a pair in a row: right, left
    [[0, 0, 0, 0], [0, 4, 4, 8], [0, 0, 0, 0], [0, 0, 0, 0]],  # a pair in a row: right, left
    [[2, 0, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],  # a pair in a column: up, down
]
HAND = np.array([[-1, 1, -1, 1], [-1, 1, -1, 1], [1, -1, 1, -1]], np.float64)  # [board, move]: +1 merge, else -1


def test_the_blind_row_is_the_best_of_the_four_constant_policies_by_hand():
    env = envs.make("2048")
    states = jax.tree.map(lambda *xs: jnp.stack(xs), *[env.from_board(b, values=True) for b in BOARDS])
    games = envs.MultiGame((env,), (len(BOARDS),))

    @jax.jit
    def game_rewards(actions):  # [P, K] actions from each row's state
        step = jax.vmap(jax.vmap(lambda s, a: env.step(jax.random.key(0), s, a)[1], (None, 0)))
        return step(states, actions)

    best = heldout.best_fixed_actions(games, lambda a: np.asarray(game_rewards(jnp.asarray(a))))
    means = HAND.mean(0)  # up -1/3, right +1/3, down -1/3, left +1/3: right and left tie, the lower id wins
    assert best == {"2048": int(np.argmax(means))} == {"2048": 1}
    assert heldout.blind_texts(games, best) == ["<answer>1</answer>"] * 3
    # the blind answers parse back to that move and score the hand-computed mean
    actions = np.asarray([[env.parse(t)] for t in heldout.blind_texts(games, best)], np.int32)
    assert np.asarray(game_rewards(jnp.asarray(actions))).mean() == pytest.approx(means.max())


def test_perception_chance_is_the_best_fixed_board_text():
    truths = [" 2 | - \n - | 4 ", " 2 | 8 \n - | - ", " 4 | 8 \n - | 4 ", " 2 | - \n 2 | 4 "]
    # per cell, the most common value: "2" (3 of 4), "-" or "8" (2 of 4), "-" (3 of 4), "4" (3 of 4)
    assert heldout.perception_chance(truths, ["2048"] * 4) == pytest.approx((3 + 2 + 3 + 3) / 16)


def _evaluation(game, cells, format_reward, per_state_random, per_state_blind, n=64):
    """An `evaluate()` result whose policy has the given per-state game rewards, per-cell perception and
    format reward."""
    game, cells = np.asarray(game, np.float64), np.asarray(cells, np.float64)
    rewards = game + format_reward
    row = {"reward": rewards.mean(), "n": n}
    return {
        "policy": row,
        "random": {},
        "blind": {},
        "rewards": rewards.tolist(),
        "game": game.tolist(),
        "perception_cells": cells.tolist(),
        "perception_chance": 0.25,
        "blind_actions": {"2048": 1},
        "per_state": {"random": {"game": per_state_random}, "blind": {"game": per_state_blind}},
    }


def test_learned_is_false_for_a_policy_that_only_learned_the_format():
    rng = np.random.default_rng(0)
    game = rng.choice([-1.0, 1.0], 64, p=[0.6, 0.4])  # the same moves before and after
    random_row, blind_row = rng.choice([-1.0, 1.0], 64).tolist(), rng.choice([-1.0, 1.0], 64).tolist()
    before = _evaluation(game, np.zeros(64), 0.0, random_row, blind_row)
    after = _evaluation(game, np.zeros(64), 1.0, random_row, blind_row)  # every answer now in the format
    verdict = heldout.comparison(before, after)
    assert verdict["gain"] == pytest.approx(1.0) and verdict["gain_game"] == 0.0
    assert not verdict["learned"] and not verdict["beats"]["before"]


def test_learned_needs_the_game_reward_above_before_random_and_blind():
    rng = np.random.default_rng(1)
    before_game = rng.choice([-1.0, 1.0], 64, p=[0.7, 0.3])
    weak = np.where(rng.random(64) < 0.3, 1.0, -1.0)  # baselines that merge 30% of the time
    after_game = np.where(rng.random(64) < 0.9, 1.0, -1.0)
    cells_before, cells_after = np.full(64, 0.3), np.clip(0.6 + rng.normal(0, 0.05, 64), 0, 1)
    before = _evaluation(before_game, cells_before, 1.0, weak.tolist(), weak.tolist())
    after = _evaluation(after_game, cells_after, 1.0, weak.tolist(), weak.tolist())
    verdict = heldout.comparison(before, after)
    assert verdict["learned"] and all(verdict["beats"].values()) and verdict["sees"]
    # the same policy against a blind baseline as good as it is: not learned
    strong = _evaluation(after_game, cells_after, 1.0, weak.tolist(), after_game.tolist())
    verdict = heldout.comparison(before, strong)
    assert not verdict["learned"] and verdict["beats"] == {"before": True, "random": True, "blind": False}
    assert verdict["game_over_blind"] == 0.0
