"""A proof that the learner learns: a tiny random-init Qwen2.5-VL must learn, through GRPO alone, to
name the colour of the frame it is shown.

Everything on the real path runs: on-device frames -> Qwen patches -> prompt -> KV-cache sampler ->
detokenise -> parse -> parallel_step rewards -> group advantages -> micro-batched GRPO update.
Chance is 1/4 at best (a colour word, at random) and about 1/30 at the start (any word). A sign
error, a wrong completion mask, or a sampler that does not see the updated parameters keeps the
reward at chance, and the test fails.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models, pre_tokenizers

import envs
from g1jax.models import Qwen25VL, preset
from g1jax.tokenizer import Tokenizer
from g1jax.train import TrainConfig, Trainer

COLOURS = ("red", "green", "blue", "yellow")
RGB = np.asarray([(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 40)], np.uint8)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
WORDS = ("[UNK]", "system", "user", "assistant", *COLOURS, "the", "a", "is", "colour", "of", "card", "what",
         "name", "it", "one", "word", "You", "are", "helpful", "answer", "with", "this", "picture", "shows", "yes", "no")


def word_tokenizer() -> Tokenizer:
    """A whitespace word-level tokenizer: 32 ids, specials first (a vocabulary the tiny model can cover)."""
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = BackendTokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(list(SPECIALS))
    return Tokenizer(backend)


@struct.dataclass
class CardState:
    colour: jax.Array  # int32


@dataclasses.dataclass(frozen=True)
class ColourCard(envs.Env):
    """A one-decision game: the frame is one colour; answering its name scores 1."""

    name = "colour_card"
    image_size: tuple = (112, 112)

    num_actions = property(lambda self: len(COLOURS) + 1)
    invalid_action = property(lambda self: len(COLOURS))
    default_params = property(lambda self: None)
    prompt = property(lambda self: "what colour is this card ? answer with one word")

    def reset(self, key, params=None):
        return CardState(colour=jax.random.randint(key, (), 0, len(COLOURS)))

    def step(self, key, state, action, params=None):
        hit = action == state.colour
        info = {"raw_reward": hit.astype(jnp.float32), "legal": hit}
        return state, hit.astype(jnp.float32), jnp.zeros((), bool), info

    def render(self, state, params=None):
        return jnp.broadcast_to(jnp.asarray(RGB)[state.colour], (*self.image_size, 3))

    def valid_actions(self, state, params=None):
        return jnp.arange(self.num_actions) < len(COLOURS)

    def describe(self, state) -> str:
        return COLOURS[int(state.colour)]

    def parse(self, text: str) -> int:
        words = text.split()
        return COLOURS.index(words[0]) if words and words[0] in COLOURS else self.invalid_action

    def answer_text(self, action: int) -> str:
        if not 0 <= action < len(COLOURS):
            raise ValueError(f"action {action} has no answer (the invalid action)")
        return COLOURS[action]

    def from_board(self, board, **kwargs):
        return CardState(colour=jnp.asarray(COLOURS.index(board), jnp.int32))


def test_grpo_learns_to_name_the_colour(tmp_path):
    tokenizer = word_tokenizer()
    base = preset("tiny")
    config_model = base.replace(text=dataclasses.replace(base.text, vocab_size=tokenizer.vocab_size),
                                image_token_id=tokenizer.image_pad_id, vision_start_token_id=tokenizer.vision_start_id,
                                vision_end_token_id=tokenizer.vision_end_id,
                                video_token_id=tokenizer.backend.token_to_id("[UNK]"))
    model = Qwen25VL(config_model, rngs=nnx.Rngs(0))
    games = envs.MultiGame(games=(ColourCard(),), counts=(8,))
    config = TrainConfig(games=("2048",), states_per_step=8, group_size=8, max_new_tokens=2, steps=60,
                         learning_rate=3e-3, micro_batch_states=4, weight_decay=0.0, grad_clip=1.0,
                         run_dir=str(tmp_path / "run"), checkpoint_every=0, sample_every=0, export_hf=False,
                         progress=False)
    trainer = Trainer(config, games=games, policy=(model, tokenizer),
                      reward_weights={"colour_card": {"format": 0.0, "perception": 0.0}})
    trainer.run()
    history = trainer.logger.read_metrics()
    rewards = np.asarray([m["reward_game"] for m in history])
    first, last = rewards[:5].mean(), rewards[-5:].mean()
    # 5 steps x 64 answers each: a binomial SE of the mean below 0.06 even at p = 0.5
    assert first < 0.2, f"a random-init policy should be near chance, got {first:.2f}"
    assert last > 0.6, f"GRPO did not learn: game reward {first:.2f} -> {last:.2f} ({rewards.round(2).tolist()})"
