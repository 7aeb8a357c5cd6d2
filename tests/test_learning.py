"""A proof that the learner learns: a tiny random-init Qwen2.5-VL must learn, through GRPO alone, to
name the colour of the frame it is shown.

Everything on the real path runs: on-device frames -> Qwen patches -> prompt -> KV-cache sampler ->
detokenise -> parse -> parallel_step rewards -> group advantages -> micro-batched GRPO update.
Chance is 1/4 at best (a colour word, at random) and about 1/30 at the start (any word). A sign
error, a wrong completion mask, or a sampler that does not see the updated parameters keeps the
reward at chance, and the test fails.
"""

from __future__ import annotations

import numpy as np

import envs
from colour_card import ColourCard, colour_card_policy
from g1jax.config import TrainConfig
from g1jax.trainer import Trainer


def test_grpo_learns_to_name_the_colour(tmp_path):
    model, tokenizer = colour_card_policy()
    games = envs.MultiGame(games=(ColourCard(),), counts=(8,))
    config = TrainConfig(
        games=("2048",),
        states_per_step=8,
        grpo=dict(group_size=8),
        max_new_tokens=2,
        steps=60,
        learning_rate=3e-3,
        micro_batch_states=4,
        weight_decay=0.0,
        grad_clip=1.0,
        run_dir=str(tmp_path / "run"),
        checkpoint_every=0,
        sample_every=0,
        export_hf=False,
        progress=False,
    )
    trainer = Trainer(
        config,
        games=games,
        policy=(model, tokenizer),
        reward_weights={"colour_card": {"format": 0.0, "perception": 0.0}},
    )
    trainer.run()
    history = trainer.logger.read_metrics()
    rewards = np.asarray([m["reward_game"] for m in history])
    first, last = rewards[:5].mean(), rewards[-5:].mean()
    # 5 steps x 64 answers each: a binomial SE of the mean below 0.06 even at p = 0.5
    assert first < 0.2, f"a random-init policy should be near chance, got {first:.2f}"
    assert last > 0.6, f"GRPO did not learn: game reward {first:.2f} -> {last:.2f} ({rewards.round(2).tolist()})"
