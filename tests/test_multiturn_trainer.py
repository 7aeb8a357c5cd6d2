"""The multi-turn trainer (issue #23): its config checks, one RL step on 2048 episodes with the tiny preset,
the held-out verdict by hand, and the recipe from the command line."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from g1jax import recipes
from g1jax.cli import train as train_cli
from g1jax.config import MultiTurnConfig, TrainConfig
from g1jax.models.config import ConfigError
from g1jax.multiturn_trainer import MultiTurnTrainer, episode_comparison, episode_table
from g1jax.trainer import make_trainer

SMALL = dict(
    model="tiny",
    games=("2048",),
    image_size=(140, 112),
    states_per_step=2,
    grpo=dict(group_size=2),
    max_new_tokens=3,
    learning_rate=1e-3,
    steps=1,
    checkpoint_every=1,
    sample_every=0,
    progress=False,
    export_hf=False,
    multiturn=dict(max_turns=2, history=1, credit="gigpo"),
    warmup_moves={"2048": 0},  # fresh boards: no warm-up scan to compile
)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(games=("2048", "swap")), "one game"),
        (dict(grpo=dict(group_size=2, ppo_minibatches=2)), "one optimizer step"),
        (dict(multiturn=dict(max_turns=0)), "multiturn.max_turns"),
        (dict(multiturn=dict(credit="gae")), "multiturn.credit"),
        (dict(multiturn=dict(gamma=1.5)), "gamma"),
        (dict(multiturn=dict(turns=3)), "unknown multiturn field"),
        (dict(multiturn=dict(history_frames=True)), "history_frames"),
    ],
)
def test_bad_multiturn_config_is_one_clear_error(changes, match):
    with pytest.raises(ConfigError, match=match) as error:
        TrainConfig(**{**SMALL, "run_dir": "unused", **changes})
    assert "\n" not in str(error.value)


def test_the_recipe_reads_from_the_command_line(tmp_path):
    args = train_cli.parse_args(["--recipe", "multiturn", "--run-dir", str(tmp_path), "--set", "multiturn.max_turns=2"])
    config = train_cli.resolve_config(args)
    assert config.multiturn == MultiTurnConfig(**{**recipes.recipe("multiturn")["multiturn"], "max_turns": 2})
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_one_step_trains_on_every_turn(tmp_path):
    trainer = make_trainer(TrainConfig(**SMALL, run_dir=str(tmp_path)))
    assert isinstance(trainer, MultiTurnTrainer)
    before = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(trainer.state.params))]
    metrics = trainer.train_step(0)
    after = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(trainer.state.params))]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    # 2 start states x 2 trajectories x 2 turns, every board still playing: 8 turn rows of answers
    assert metrics["turns_played"] == 2 and metrics["episode_turns"] == 2.0
    for name in ("loss", "grad_norm", "entropy", "episode_return", "turns_per_s", "host_parse_share"):
        assert math.isfinite(metrics[name]), name
    assert 0 <= metrics["episode_invalid_rate"] <= 1 and 0 <= metrics["frac_zero_advantage"] <= 1


def test_the_held_out_verdict_by_hand():
    # per start state: before, after and the random player; success is a rate in [0, 1]
    before = {"return": [0.0, 1.0, 2.0], "game_return": [0.0, 1.0, 2.0], "success": [0.0, 0.0, 0.5]}
    after = {
        "return": [2.0, 3.0, 4.0],
        "game_return": [2.0, 3.0, 4.5],
        "success": [0.5, 0.5, 0.5],
        "random_game_return": [0.0, 0.0, 1.0],
        "random_success": [0.5, 0.5, 0.5],
    }
    out = episode_comparison(before, after)
    assert out["before_return"] == pytest.approx(1.0) and out["before_return_se"] == pytest.approx(1 / math.sqrt(3))
    # game-return gains 2, 2, 2.5: mean 13/6, ddof=1 std of the differences sqrt(1/12), SE sqrt(1/36)
    assert out["gain_game_return"] == pytest.approx(13 / 6)
    assert out["gain_game_return_se"] == pytest.approx(math.sqrt(1 / 12) / math.sqrt(3))
    assert out["beats"]["game_return"] is True  # 13/6 > 2 * 0.167 and 3.5 - 1/3 over random with a small SE
    assert out["beats"]["success"] is False  # no gain over random: 0.5 each
    assert out["learned"] is True
    assert "learned: True" in episode_table(out)
