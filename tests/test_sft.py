"""The cold start: teacher answers as training tokens, the SFT loss, and a cold start -> RL run with its
held-out before / after evaluation (tiny preset, 2048)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import envs
from g1jax.checkpoint import Checkpointer, abstract_like
from g1jax.config import TrainConfig
from g1jax.models.config import ConfigError
from g1jax.sft import TeacherData, sft_loss_terms
from g1jax.tokenizer import make_tiny_tokenizer
from g1jax.trainer import Trainer, build_games, make_trainer

SMALL = dict(
    model="tiny",
    games=("2048",),
    image_size=(140, 112),
    states_per_step=4,
    grpo=dict(group_size=2),
    max_new_tokens=48,
    progress=False,
    export_hf=False,
    checkpoint_every=0,
    sample_every=0,
    teacher="greedy",
    teacher_epsilon=0.25,
)


def test_teacher_answers_become_masked_tokens_closed_by_the_stop_token():
    games = envs.MultiGame.make({"2048": 4}, image_size=(140, 112))
    tokenizer = make_tiny_tokenizer()
    data = TeacherData(games, tokenizer, max_tokens=400, kind="greedy")
    states = games.warmup(jax.random.key(0))
    texts, actions = data.answers(jax.random.key(1), states)
    assert [games.games[0].parse(t) for t in texts] == actions.tolist()
    completion, mask = data.tokens(texts)
    for row, text in enumerate(texts):
        n = int(mask[row].sum())
        assert mask[row, :n].all() and not mask[row, n:].any()
        assert completion[row, n - 1] == tokenizer.im_end_id
        assert tokenizer.decode(completion[row, :n]) == text
        assert (completion[row, n:] == tokenizer.pad_id).all()
    with pytest.warns(RuntimeWarning, match="truncated"):
        short, short_mask = TeacherData(games, tokenizer, max_tokens=8, kind="greedy").tokens(texts)
    assert short_mask.all() and short.shape == (4, 8)


def test_perception_first_answers_are_the_true_boards_alone():
    games = envs.MultiGame.make({"2048": 2, "swap": 2}, image_size=(252, 224))
    data = TeacherData(games, make_tiny_tokenizer(), max_tokens=400)
    states = games.warmup(jax.random.key(0))
    texts = data.perception_answers(states)
    full, _ = data.answers(jax.random.key(1), states)
    assert len(texts) == 4
    for text, answer in zip(texts, full):
        assert text.startswith("<perception>\n") and text.endswith("\n</perception>")
        assert answer.startswith(text + "\n<think>")  # the full answer's own block: the same board text


def test_sft_loss_is_the_masked_token_mean_of_minus_log_p():
    logp = jnp.log(jnp.asarray([[0.5, 0.25, 0.9], [0.125, 0.3, 0.3]]))
    mask = jnp.asarray([[True, True, False], [True, False, False]])
    total, count = sft_loss_terms(logp, mask)
    assert float(count) == 3
    np.testing.assert_allclose(float(total), -(np.log(0.5) + np.log(0.25) + np.log(0.125)), rtol=1e-6)


def test_a_teacher_per_game():
    config = TrainConfig(
        **{**SMALL, "run_dir": "unused", "sft_steps": 2, "games": ("2048", "shisensho"), "teacher": {"2048": "greedy"}}
    )
    assert config.teacher_kind("2048") == "greedy" and config.teacher_kind("shisensho") is None
    games = build_games(config)
    data = TeacherData(games, make_tiny_tokenizer(), 16, kind=config.teacher_kind)
    assert [t.kind for t in data.teachers] == ["greedy", "lookahead"]  # shisensho's default
    assert [t.kind for t in TeacherData(games, make_tiny_tokenizer(), 16).teachers] == ["expectimax", "lookahead"]


def test_bad_cold_start_settings_are_one_clear_error():
    for changes, match in [
        (dict(teacher_epsilon=1.5), "epsilon"),
        (dict(teacher={"swap": "best_score"}), "options given for 'swap', which is not in games"),
        (dict(teacher=3), "teacher must be a teacher kind"),
        (dict(eval_states=3, games=("2048", "swap"), states_per_step=4), "eval_states"),
        (dict(sft_perception_steps=3), "sft_perception_steps 3 must be at most sft_steps 2"),
    ]:
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**{**SMALL, "run_dir": "unused", "sft_steps": 2, **changes})
    # the teachers are built, and so checked, where a trainer is built (before the policy loads)
    for changes, match in [
        (dict(teacher="oracle"), "unknown teacher kind"),
        (
            dict(teacher="greedy", games=("2048", "shisensho"), states_per_step=4),
            "teacher='greedy' applies to every game: name one per game",
        ),
        (dict(teacher={"2048": "oracle"}), "unknown teacher kind 'oracle' for game '2048'"),
    ]:
        config = TrainConfig(**{**SMALL, "run_dir": "unused", "sft_steps": 2, **changes})
        with pytest.raises(ConfigError, match=match):
            make_trainer(config)


@pytest.mark.filterwarnings("ignore:teacher answers reach")  # short answers keep the test fast
def test_cold_start_then_rl_evaluates_the_policy_entering_rl_and_after(tmp_path):
    config = TrainConfig(
        **{**SMALL, "export_hf": True},
        sft_steps=3,
        sft_learning_rate=3e-3,
        steps=2,
        learning_rate=1e-4,
        eval_states=8,
        run_dir=str(tmp_path / "run"),
    )
    trainer = Trainer(config)
    initial = trainer.evaluate()  # the random-init policy on the held-out states
    summary = trainer.run()
    history = trainer.logger.read_metrics()
    assert [m["phase"] for m in history] == ["sft"] * 3 + ["rl"] * 2
    assert [m["step"] for m in history] == [1, 2, 3, 4, 5]
    losses = [m["sft_loss"] for m in history[:3]]
    assert losses[-1] < losses[0], losses  # a large step size on 100-token answers: the loss drops at once
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    for block in ("before", "after", "random", "blind", "teacher"):
        assert saved[block]["n"] == 8 and np.isfinite(saved[block]["reward"]) and saved[block]["reward_se"] >= 0
        assert set(saved[block]["games"]) == {"2048"}
    assert np.isfinite(saved["gain"]) and saved["gain_se"] >= 0
    assert np.isfinite(saved["gain_game"]) and saved["gain_game_se"] >= 0
    # the teacher answers in the strict format with the true board; the blind row repeats one move
    assert saved["teacher"]["format_strict"] == saved["teacher"]["perception_cells"] == 1.0
    assert saved["blind_actions"]["2048"] in range(4) and saved["blind"]["reward_format"] == 0
    assert saved["learned"] == all(saved["beats"].values()) and 0 < saved["perception_chance"] < 1
    before = json.loads((tmp_path / "run" / "eval_before.json").read_text())
    assert saved["before"] == before["policy"]
    after = json.loads((tmp_path / "run" / "eval_after.json").read_text())
    assert saved["after"] == after["policy"] and after["answers"] == trainer.evaluate()["answers"]
    assert summary["gain"] == pytest.approx(np.mean(np.subtract(after["rewards"], before["rewards"])))
    # "before" is the policy entering RL: the cold start's last checkpoint (step 3) answers exactly as
    # it did, and not as the random-init policy did (the rewards cannot tell: every answer scores -1)
    restored, _ = Checkpointer(tmp_path / "run" / "checkpoints").restore(
        3, {"params": abstract_like(trainer.state.params)}
    )
    after_rl = trainer.state
    trainer.state = after_rl.replace(params=restored["params"])
    assert trainer.evaluate()["answers"] == before["answers"] != initial["answers"]
    trainer.state = after_rl
    # the random baseline answers bare actions: no format or perception reward
    assert saved["random"]["reward_format"] == 0 and saved["random"]["reward_perception"] == 0
    # the final policy is exported as a Hugging Face checkpoint that loads back to the same weights
    from g1jax.models import load_pretrained

    exported = load_pretrained(str(tmp_path / "run" / "hf"))
    assert (tmp_path / "run" / "hf" / "tokenizer.json").is_file()
    mine = jax.tree.leaves(jax.device_get(trainer.state.params))
    theirs = jax.tree.leaves(jax.device_get(nnx.state(exported, nnx.Param)))
    assert len(mine) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(mine, theirs))
