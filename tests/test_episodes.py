"""g1jax.rl.episodes: multi-turn episodes of 2048 with the tiny random policy: finished boards are masked,
each turn's prompt holds exactly the last k answers (built on the device, checked against the chat template
and the host's M-RoPE positions), a key gives one rollout, and the turn rows feed the learner's log-probs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import envs
from g1jax.chat import encode_prompt
from g1jax.image_processing import preprocess
from g1jax.models import get_rope_index
from g1jax.models.config import preset
from g1jax.models.qwen25vl import Qwen25VL
from g1jax.rl import credit, grpo
from g1jax.rl.episodes import (
    PAST_LABEL,
    PAST_LABEL_NO_FRAME,
    EpisodeConfig,
    EpisodeRollout,
    random_play,
    rope_positions,
    turn_rewards,
)
from g1jax.rl.rewards import RewardWeights
from g1jax.sampling import SamplingConfig
from g1jax.tokenizer import make_tiny_tokenizer
from g1jax.update import completion_logprobs

IMAGE = (140, 112)
GROUP, TURNS, HISTORY, LENGTH = 2, 3, 1, 5
OPEN_BOARD = [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
OVER_BOARD = [[1, 2, 1, 2], [2, 1, 2, 1], [1, 2, 1, 2], [2, 1, 2, 1]]  # full, no equal neighbours: game over
# Left merges the two 8s (exponent 3); the board is then full with no equal neighbours, whatever spawns
LAST_MOVE_BOARD = [[7, 8, 9, 10], [11, 12, 13, 14], [15, 16, 7, 8], [3, 3, 5, 6]]


def batched(states):
    return jax.tree.map(lambda *x: jnp.stack(x), *states)


@pytest.fixture(scope="module")
def setup():
    cfg = preset("tiny")
    model = Qwen25VL(cfg, rngs=nnx.Rngs(0))
    tokenizer = make_tiny_tokenizer(vocab_size=cfg.text.vocab_size)
    env = envs.make("2048", image_size=IMAGE)
    sampling = SamplingConfig(max_new_tokens=LENGTH)
    config = EpisodeConfig(group_size=GROUP, max_turns=TURNS, history=HISTORY)
    rollout = EpisodeRollout(env, tokenizer, cfg, config=config, sampling=sampling)
    graphdef, params = nnx.split(model)
    starts = batched([env.from_board(OPEN_BOARD), env.from_board(OVER_BOARD)])
    episodes = rollout(graphdef, params, jax.random.key(3), starts)
    return dict(
        cfg=cfg, model=model, tokenizer=tokenizer, env=env, rollout=rollout, graphdef=graphdef, params=params,
        starts=starts, episodes=episodes, sampling=sampling,
    )  # fmt: skip


def valid_ids(turn, row):
    mask = np.asarray(turn.prompt_mask[row]).astype(bool)
    return np.asarray(turn.prompt_ids[row])[mask].tolist()


def answer_ids(turn, row):
    """The answer as it enters later prompts: the sampled tokens without the stop token."""
    s = jax.device_get(turn.samples)
    keep = int(s.lengths[row]) - (0 if s.truncated[row] else 1)
    return np.asarray(s.tokens[row, :keep]).tolist()


def expected_prompt(s, past_answers, label=PAST_LABEL_NO_FRAME, frames=0):
    """The chat template by hand: G1's single-turn prompt with the past turns inserted after the system turn."""
    tok = s["tokenizer"]
    single = encode_prompt(tok, s["env"].prompt, [IMAGE]).input_ids.tolist()
    system = len(tok.encode("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"))
    image = [tok.vision_start_id] + [tok.image_pad_id] * (IMAGE[0] // 28) * (IMAGE[1] // 28) + [tok.vision_end_id]
    history = []
    for answer in past_answers:
        history += tok.encode(f"<|im_start|>user\n{label}")
        history += image if frames else []
        history += tok.encode("<|im_end|>\n<|im_start|>assistant\n") + answer + tok.encode("<|im_end|>\n")
    return single[:system] + history + single[system:]


def test_turn_zero_is_g1s_single_turn_prompt(setup):
    turn = setup["episodes"].turns[0]
    single = encode_prompt(setup["tokenizer"], setup["env"].prompt, [IMAGE]).input_ids.tolist()
    for row in range(turn.prompt_ids.shape[0]):
        assert valid_ids(turn, row) == single
    # left padding only: the valid tokens are one block at the right end
    assert np.all(np.diff(np.asarray(turn.prompt_mask), axis=1) >= 0)


def test_each_prompt_holds_exactly_the_last_k_answers(setup):
    episodes = setup["episodes"]
    assert episodes.played == TURNS
    for t, turn in enumerate(episodes.turns):
        for row in range(turn.prompt_ids.shape[0]):
            past = [answer_ids(episodes.turns[u], row) for u in range(max(0, t - HISTORY), t)]
            assert len(past) == min(t, HISTORY)
            assert valid_ids(turn, row) == expected_prompt(setup, past), (t, row)
    # every turn has one shape (empty history slots are masked), so the sampler compiled once
    assert len({turn.prompt_ids.shape for turn in episodes.turns}) == 1


def test_positions_match_the_host_rope_index(setup):
    cfg = setup["cfg"]
    for turn in setup["episodes"].turns:
        ids, mask = np.asarray(turn.prompt_ids), np.asarray(turn.prompt_mask)
        grids = [(1, IMAGE[0] // 14, IMAGE[1] // 14)] * (ids.shape[0] * turn.images)
        host, _ = get_rope_index(ids, grids, mask, image_token_id=cfg.image_token_id)
        np.testing.assert_array_equal(np.asarray(turn.positions), host)


def test_rope_positions_with_several_images_and_inner_padding():
    # text, image (2 x 3 merged), text, padding inside, image, text
    ids = np.array([[5, 6, 1, 9, 9, 9, 9, 9, 9, 2, 7, 0, 0, 1, 9, 9, 9, 9, 9, 9, 2, 8]])
    mask = np.ones_like(ids)
    mask[0, 11:13] = 0
    got = rope_positions(jnp.asarray(ids), jnp.asarray(mask), image_token_id=9, merged_grid=(2, 3))
    host, _ = get_rope_index(ids, [(1, 4, 6), (1, 4, 6)], mask, image_token_id=9)
    np.testing.assert_array_equal(np.asarray(got), host)


def test_finished_boards_are_masked(setup):
    episodes = setup["episodes"]
    active = np.asarray(episodes.active)
    # rows 2, 3 start from a finished game: they never act; rows 0, 1 never finish (STILL keeps the board)
    assert active[:2].all() and not active[2:].any()
    rewards = np.asarray(episodes.rewards)
    assert np.array_equal(rewards[2:], np.zeros((2, TURNS)))
    for turn in episodes.turns:
        mask = np.asarray(turn.samples.mask)
        assert not mask[2:].any() and mask[:2].any()
    metrics = episodes.metrics()
    assert metrics["turns"] == pytest.approx(TURNS / 2)
    assert episodes.parts["invalid"][2:].sum() == 0


def test_a_board_stops_acting_once_its_game_ends(setup):
    env, rollout = setup["env"], setup["rollout"]
    states = batched([env.from_board(LAST_MOVE_BOARD), env.from_board(OPEN_BOARD)])
    assert not np.asarray(states.done).any()
    left = jnp.array([envs.game2048.LEFT, envs.game2048.LEFT], jnp.int32)
    states, reward, legal, active, _ = rollout._advance(jax.random.key(0), states, left, jnp.array([True, True]))
    assert np.asarray(active).tolist() == [False, True]  # the first game is over after this move
    assert np.asarray(legal).tolist() == [True, True] and np.asarray(reward)[0] == 1.0  # the move merged
    frozen = jax.device_get(states)
    states, reward, legal, active, _ = rollout._advance(jax.random.key(1), states, left, active)
    assert float(reward[0]) == 0.0 and not bool(legal[0]) and not bool(active[0])
    np.testing.assert_array_equal(np.asarray(states.board[0]), frozen.board[0])
    assert int(states.steps[0]) == int(frozen.steps[0])


def test_a_key_gives_one_rollout(setup):
    s = setup
    again = s["rollout"](s["graphdef"], s["params"], jax.random.key(3), s["starts"])
    first = s["episodes"]
    for a, b in zip(first.turns, again.turns):
        np.testing.assert_array_equal(np.asarray(a.samples.tokens), np.asarray(b.samples.tokens))
        np.testing.assert_array_equal(np.asarray(a.prompt_ids), np.asarray(b.prompt_ids))
    np.testing.assert_array_equal(np.asarray(first.rewards), np.asarray(again.rewards))
    other = s["rollout"](s["graphdef"], s["params"], jax.random.key(4), s["starts"])
    assert not np.array_equal(np.asarray(other.turns[0].samples.tokens), np.asarray(first.turns[0].samples.tokens))


def test_turn_rows_feed_the_learners_logprobs_and_loss(setup):
    episodes, model = setup["episodes"], setup["model"]
    batch = episodes.turn_batch()
    rows = batch.completion.shape[0]
    assert rows == 2 * GROUP * TURNS
    logp, _ = jax.jit(completion_logprobs, static_argnames=("image_grids", "group_size", "temperature"))(
        model, batch, image_grids=episodes.image_grids(rows), group_size=1, temperature=1.0
    )
    mask = np.asarray(batch.completion_mask)
    # the learner's teacher-forced log-probs are the sampler's, turn by turn
    np.testing.assert_allclose(np.asarray(logp)[mask], np.asarray(batch.sampler_logprobs)[mask], atol=2e-4)
    # trajectory-major rows: row n * T + t is turn t of trajectory n, as the [N, T] advantages flatten
    advantages = credit.turn_advantages(
        episodes.rewards, episodes.active, episodes.keys, GROUP, credit.CreditConfig(mode="gigpo")
    ).reshape(-1)
    config = grpo.GRPOConfig(group_size=GROUP)
    total, count, _ = grpo.grpo_loss_terms(logp, jax.lax.stop_gradient(logp), advantages, mask, config)
    assert float(count) == mask.sum() > 0  # every active turn's answer tokens, nothing of the finished boards
    # two micro-batches of whole trajectories add up to the whole batch (sum, count)
    halves = [slice(0, rows // 2), slice(rows // 2, rows)]
    parts = [grpo.grpo_loss_terms(logp[h], logp[h], advantages[h], mask[h], config)[:2] for h in halves]
    np.testing.assert_allclose(sum(float(p[0]) for p in parts), float(total), rtol=1e-5, atol=1e-6)
    assert sum(float(p[1]) for p in parts) == float(count)


def test_history_frames_enter_the_prompt(setup):
    s = setup
    config = EpisodeConfig(group_size=GROUP, max_turns=2, history=1, history_frames=True)
    rollout = EpisodeRollout(s["env"], s["tokenizer"], s["cfg"], config=config, sampling=s["sampling"])
    episodes = rollout(s["graphdef"], s["params"], jax.random.key(5), jax.tree.map(lambda x: x[:1], s["starts"]))
    first, second = episodes.turns
    assert (first.images, second.images) == (1, 2)
    for row in range(GROUP):
        past = [answer_ids(first, row)]
        assert valid_ids(second, row) == expected_prompt(s, past, label=PAST_LABEL, frames=1)
    grids = [(1, IMAGE[0] // 14, IMAGE[1] // 14)] * (GROUP * 2)
    host, _ = get_rope_index(
        np.asarray(second.prompt_ids), grids, np.asarray(second.prompt_mask), image_token_id=s["cfg"].image_token_id
    )
    np.testing.assert_array_equal(np.asarray(second.positions), host)
    # turn 1 sees turn 0's frame, then its own
    np.testing.assert_array_equal(np.asarray(episodes.frames_of(1, 2)[:, 0]), np.asarray(episodes.frames[0]))
    # the learner's rows carry the same images in the same order: turn 0's frame, then turn 1's, per row
    batch = episodes.turn_batch([1])
    frames = jnp.stack([episodes.frames[0], episodes.frames[1]], axis=1).reshape(-1, *IMAGE, 3)
    expected = jax.vmap(preprocess)(frames).reshape(-1, batch.pixel_values.shape[-1])
    np.testing.assert_array_equal(np.asarray(batch.pixel_values), np.asarray(expected))
    assert len(episodes.image_grids(GROUP, 1)) == 2 * GROUP
    with pytest.raises(ValueError, match="different numbers of frames"):
        episodes.turn_batch([0, 1])


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(group_size=0, max_turns=2), "group_size"),
        (dict(group_size=2, max_turns=0), "max_turns"),
        (dict(group_size=2, max_turns=2, history=-1), "history"),
        (dict(group_size=2, max_turns=2, history_frames=1), "history_frames"),
        (dict(group_size=2, max_turns=2, text_reward="sum"), "text_reward"),
    ],
)
def test_bad_config_is_one_line(kwargs, words):
    with pytest.raises(ValueError, match=words) as excinfo:
        EpisodeConfig(**kwargs)
    assert "\n" not in str(excinfo.value)


def test_text_rewards_as_a_bonus_or_a_penalty_by_hand():
    parts = {"game": [[1.0, -0.1, 5.0]], "format": [[1.0, 0.0, 1.0]], "perception": [[0.0, 1.0, 1.0]]}
    active = [[True, True, False]]  # the last turn was not played: 0 whatever its parts
    weights = RewardWeights(game=1.0, format=1.0, perception=0.5)
    # bonus (G1's): w * check; penalty: w * (check - 1), nothing for a passed check
    np.testing.assert_allclose(turn_rewards(parts, weights, active), [[2.0, 0.4, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(turn_rewards(parts, weights, active, "penalty"), [[0.5, -1.1, 0.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="text_reward"):
        turn_rewards(parts, weights, active, "sum")


def test_several_sokoban_actions_per_turn_are_one_clear_error(setup):
    # a turn plays the one action id parse gives; Sokoban's parse keeps only the first of several
    env = envs.make("sokoban", actions_per_turn=2)
    config = EpisodeConfig(group_size=GROUP, max_turns=2, history=1)
    with pytest.raises(envs.ConfigError, match="actions_per_turn=2") as excinfo:
        EpisodeRollout(env, setup["tokenizer"], setup["cfg"], config=config, sampling=setup["sampling"])
    assert "\n" not in str(excinfo.value)


def test_the_random_player_never_answers_the_invalid_action_and_masks_finished_boards(setup):
    env = setup["env"]
    rewards, active, legal, solved = jax.device_get(
        random_play(env, jax.random.key(0), setup["starts"], group_size=GROUP, turns=3)
    )
    assert rewards.shape == active.shape == legal.shape == solved.shape == (2 * GROUP, 3)
    assert not solved.any()  # 2048 reports no win
    assert active[:GROUP].all() and not active[GROUP:].any()  # an open board cannot end in 3 moves
    assert np.array_equal(rewards[GROUP:], np.zeros((GROUP, 3)))
    # every move of 2048's training reward is +1 (merged) or -1; "still" never comes up, so legal <=> moved
    assert set(np.unique(rewards[:GROUP])) <= {-1.0, 1.0}
    again = jax.device_get(random_play(env, jax.random.key(0), setup["starts"], group_size=GROUP, turns=3))
    np.testing.assert_array_equal(again[0], rewards)
