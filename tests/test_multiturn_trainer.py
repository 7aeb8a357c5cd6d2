"""The multi-turn trainer (issue #23): its config checks, one RL step on 2048 episodes with the tiny preset,
the held-out verdict by hand, the recipe from the command line, and on ColourCards episodes (rewards that
vary from the first step, so every gradient carries information): exact resume, the same step on a device
mesh, PPO epochs and mini-batches over turn rows."""

from __future__ import annotations

import math

import jax
import numpy as np
import optax
import pytest

import envs
from colour_card import ColourCards, colour_card_policy
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
        (dict(grpo=dict(group_size=2, ppo_minibatches=3)), "ppo_minibatches 3 must divide states_per_step 2"),
        (dict(multiturn=dict(max_turns=0)), "multiturn.max_turns"),
        (dict(multiturn=dict(credit="gae")), "multiturn.credit"),
        (dict(multiturn=dict(gamma=1.5)), "gamma"),
        (dict(multiturn=dict(turns=3)), "unknown multiturn field"),
        (dict(multiturn=dict(history_frames=1)), "history_frames"),
        (dict(games=("chess",)), "chess"),
        (dict(multiturn=dict(text_reward="sum")), "multiturn.text_reward"),
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
    # a frozen vision tower halves the update's compile (the test's cost); the decoder trains on every turn
    trainer = make_trainer(TrainConfig(**{**SMALL, "freeze_vision": True}, run_dir=str(tmp_path)))
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


# ------------------------------------------------------------------------------------ Sokoban and FrozenLake
# The episode games, whose success is winning (info["solved"]): one RL step and the held-out episodes
# before / after on tiny boards. A frozen vision tower and no KL halve the update's compile (the test's
# cost); the cold start is the Trainer's, and the recipes' own run it (docs/multiturn.md).
def game_run(tmp_path, game: str, options: dict, image: tuple[int, int]):
    config = TrainConfig(
        **{
            **SMALL,
            "games": (game,),
            "game_options": {game: options},
            "image_size": image,
            "warmup_moves": {},
            "freeze_vision": True,
            "eval_states": 4,
        },
        run_dir=str(tmp_path),
    )
    trainer = make_trainer(config)
    summary = trainer.run()
    return trainer, summary, trainer.logger.read_metrics()[-1]


def check_sane(summary, metrics, max_turns: int):
    for row in ("before", "after", "random"):
        assert 0 <= summary[f"{row}_success"] <= 1, row
        assert math.isfinite(summary[f"{row}_game_return"]), row
    assert math.isfinite(summary["before_return"]) and math.isfinite(summary["after_return"])
    assert 1 <= metrics["turns_played"] <= max_turns and 0 < metrics["episode_turns"] <= max_turns
    assert 0 <= metrics["episode_success"] <= 1 and math.isfinite(metrics["loss"])


def test_sokoban_episodes_through_the_trainer(tmp_path):
    # 5x5 one-box rooms: most are solved in one push, so both winning and not winning come up
    trainer, summary, metrics = game_run(tmp_path, "sokoban", {"dim_room": (5, 5)}, (84, 84))
    check_sane(summary, metrics, max_turns=2)
    episodes, _ = trainer.play(trainer.step_key(0))
    game = episodes.parts["game"]
    # success is the win: the solving push pays -0.1 + 1 (box on target) + 10, no other turn pays over 1
    np.testing.assert_array_equal(episodes.success, (game > 10).any(1))
    # a won board stops acting: no turn after the win
    won_at = np.where((game > 10).any(1), np.argmax(game > 10, 1), -1)
    active = np.asarray(jax.device_get(episodes.active))
    for row, turn in enumerate(won_at):
        assert turn < 0 or not active[row, turn + 1 :].any()


def test_frozenlake_episodes_through_the_trainer(tmp_path):
    # 2x2 maps: the goal is two moves away, so a 2-turn episode can reach it; reward 1 only there
    trainer, summary, metrics = game_run(tmp_path, "frozenlake", {"board_size": 2}, (56, 56))
    check_sane(summary, metrics, max_turns=2)
    episodes, _ = trainer.play(trainer.step_key(0))
    np.testing.assert_array_equal(episodes.success, (episodes.parts["game"] > 0).any(1))
    # the random player is scored by the same win, not by "no illegal move": its success is the share
    # of its trajectories that reached the goal, which a random game return per start state equals
    before = trainer.logger.read_json("eval_before.json")
    np.testing.assert_allclose(before["random_success"], before["random_game_return"])


# ------------------------------------------------------------------------------------ ColourCards episodes
# 2 start states x 2 trajectories x 2 turns of 2-token answers, a KL term (the reference must be restored
# too), history 1, GiGPO's step groups (equal cards give equal frames, hence equal state keys).
CARDS = dict(
    games=("2048",),  # the config's game; the trainer plays the custom ColourCards task given to it
    states_per_step=2,
    grpo=dict(group_size=2, kl_coef=0.05),
    max_new_tokens=2,
    learning_rate=3e-3,
    checkpoint_every=1,
    sample_every=0,
    progress=False,
    export_hf=False,
    multiturn=dict(max_turns=2, history=1, credit="gigpo"),
    seed=1,  # its first rollout hits in both groups (seed 0: in one), so the first update moves every weight
)
CARD_WEIGHTS = {"colour_cards": {"format": 0.0, "perception": 0.0}}


def cards_trainer(run_dir, steps: int, *, resume: bool = False, init_seed: int = 0, **changes) -> MultiTurnTrainer:
    """A multi-turn run on ColourCards; a resumed trainer starts from other initial weights (init_seed 1),
    so only what it restores can match the straight run."""
    config = TrainConfig(**{**CARDS, **changes}, steps=steps, run_dir=str(run_dir))
    return MultiTurnTrainer(
        config,
        resume=resume,
        games=envs.MultiGame(games=(ColourCards(),), counts=(config.states_per_step,)),
        policy=colour_card_policy(init_seed),
        reward_weights=CARD_WEIGHTS,
    )


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.fixture(scope="module")
def card_runs(tmp_path_factory):
    """A straight 2-step run, and a 1-step run in another directory (the one resumed below, and the
    one-device reference of the mesh test), all on one device."""
    root = tmp_path_factory.mktemp("cards")
    straight = cards_trainer(root / "straight", steps=2)
    straight.run()
    first = cards_trainer(root / "stopped", steps=1)
    first.run()
    return dict(root=root, straight=straight, first=first, first_state=leaves(first.state))


def test_a_resumed_multiturn_run_continues_exactly(card_runs):
    straight = card_runs["straight"]
    expected = straight.logger.read_metrics()
    # the runs carry information a broken resume would lose: rewards vary, so the gradients are non-zero
    assert all(m["grad_norm"] > 1e-3 for m in expected), [m["grad_norm"] for m in expected]
    assert expected[1]["kl"] > 0 and expected[0]["frac_zero_advantage"] < 1
    resumed = cards_trainer(card_runs["root"] / "stopped", steps=2, resume=True, init_seed=1)
    assert resumed.start_step == 1
    resumed.run()
    got = resumed.logger.read_metrics()
    assert [m["step"] for m in got] == [1, 2]
    for key in ("reward", "episode_return", "episode_success", "loss", "grad_norm", "kl", "entropy", "length_mean"):
        assert got[-1][key] == expected[-1][key], key
    for a, b in zip(leaves(straight.state), leaves(resumed.state)):  # params, AdamW moments, step
        np.testing.assert_array_equal(a, b)
    for a, b in zip(leaves(straight.reference), leaves(resumed.reference)):
        np.testing.assert_array_equal(a, b)


def test_a_multiturn_step_is_the_same_on_a_device_mesh(card_runs):
    """data 2 x fsdp 2: the episode rollout splits its 4 boards over 4 devices and the parameters are
    FSDP-split. The sampled answers are the same tokens (each row keeps its key), so the episodes' metrics
    are equal; the update sums in another order: grad_norm within rtol 1e-4, parameters within 10% of lr
    (AdamW's first step moves a weight by about lr whatever the size of its gradient)."""
    first = card_runs["first"]
    trainer = cards_trainer(card_runs["root"] / "mesh", steps=1, mesh="2,2,1")
    assert trainer.mesh.size == 4
    trainer.run()
    expected, got = first.logger.read_metrics()[0], trainer.logger.read_metrics()[0]
    for key in ("episode_return", "episode_success", "episode_turns", "episode_invalid_rate", "length_mean"):
        assert got[key] == expected[key], key
    for key in ("grad_norm", "loss", "kl", "entropy"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-6, err_msg=key)
    for a, b in zip(card_runs["first_state"], leaves(trainer.state)):
        np.testing.assert_allclose(b, a, atol=0.1 * CARDS["learning_rate"])
    # the rollout's rows really are split 4 ways: boards, turn prompts, answers, per-turn rewards
    episodes, _ = trainer.play(trainer.step_key(0))
    turn = episodes.turns[0]
    for rows in (turn.prompt_ids, turn.samples.tokens, episodes.rewards, episodes.active):
        assert rows.sharding.shard_shape(rows.shape)[0] == rows.shape[0] // 4
    assert turn.positions.sharding.shard_shape(turn.positions.shape)[1] == turn.positions.shape[1] // 4


def test_ppo_epochs_and_minibatches_over_turn_rows(card_runs):
    """2 epochs x 2 mini-batches of whole trajectories: 4 optimizer steps on one rollout; with a large
    learning rate the later steps move the policy off the sampling one, so the ratio leaves 1 and the clip acts."""
    trainer = cards_trainer(
        card_runs["root"] / "ppo",
        steps=1,
        learning_rate=0.05,
        grpo=dict(group_size=2, kl_coef=0.05, ppo_epochs=2, ppo_minibatches=2),
    )
    trainer.run()
    metrics = trainer.logger.read_metrics()[0]
    counts = {int(c) for _, c in optax.tree_utils.tree_get_all_with_path(trainer.state.opt_state, "count")}
    assert int(trainer.state.step) == 4 and counts == {4}
    assert metrics["abs_log_ratio_mean"] > 1e-3 and metrics["clip_frac_low"] + metrics["clip_frac_high"] > 0
    # the extra pass scores the turn rows as the sampler did (float32 on CPU: about 1e-6 apart)
    np.testing.assert_allclose(metrics["sampler_abs_logp_diff"], 0.0, atol=1e-4)


def test_turn_groups_sum_to_one_batch_of_their_rows(card_runs):
    """The update over the turn rows in two batches (turn 0, turn 1) is the update over them in one: the
    (sum, count) loss adds across batches. This is how turns of different frame counts train together."""
    trainer = cards_trainer(card_runs["root"] / "groups", steps=1)
    episodes, _ = trainer.play(trainer.step_key(0))
    assert episodes.frame_groups() == [[0, 1]]  # no history frames: one shape
    start = jax.tree.map(jax.numpy.copy, trainer.state)
    one, _ = trainer.update(episodes)
    one_state = leaves(trainer.state)
    trainer.state = start
    two, batches = trainer.update(episodes, groups=[[0], [1]])
    assert [b.prompt_ids.shape[0] for b in batches] == [4, 4]
    assert one["grad_norm"] > 1e-3
    for key in ("grad_norm", "loss", "kl", "entropy"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, err_msg=key)
    # AdamW's first step moves a weight by about lr whatever its gradient's size, so a near-zero gradient
    # summed in another order can move differently: the mesh test's bound, 10% of lr
    for a, b in zip(one_state, leaves(trainer.state)):
        np.testing.assert_allclose(b, a, atol=0.1 * CARDS["learning_rate"])


def test_history_frames_train_in_batches_of_equal_frame_counts(card_runs):
    """history 1 with frames: turn 0 holds its own frame, turn 1 the previous one too; each turn is its
    own batch and the update trains on both, here in 2 PPO mini-batches (each takes one start state's
    trajectories from both batches: 2 optimizer steps)."""
    multiturn = dict(CARDS["multiturn"], history_frames=True)
    grpo = dict(CARDS["grpo"], ppo_minibatches=2)
    trainer = cards_trainer(card_runs["root"] / "frames", steps=1, multiturn=multiturn, grpo=grpo)
    episodes, _ = trainer.play(trainer.step_key(0))
    assert [turn.images for turn in episodes.turns] == [1, 2] and episodes.frame_groups() == [[0], [1]]
    before = leaves(trainer.state.params)
    metrics, batches = trainer.update(episodes)
    # 4 rows per turn; the second batch carries two frames per row, so twice the patches
    assert [b.prompt_ids.shape[0] for b in batches] == [4, 4]
    assert batches[1].pixel_values.shape[0] == 2 * batches[0].pixel_values.shape[0]
    assert metrics["grad_norm"] > 1e-3 and math.isfinite(metrics["loss"]) and int(trainer.state.step) == 2
    assert any(not np.array_equal(a, b) for a, b in zip(before, leaves(trainer.state.params)))
