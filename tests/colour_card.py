"""ColourCard: a one-decision test game (the frame is one colour; naming it scores 1) and a word-level
tokenizer and tiny policy that can say its answers. Rewards vary from the first step, so GRPO's
gradients are non-zero: used by the learning test and by the resume test."""

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

COLOURS = ("red", "green", "blue", "yellow")
RGB = np.asarray([(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 40)], np.uint8)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
WORDS = (
    "[UNK]",
    "system",
    "user",
    "assistant",
    *COLOURS,
    "the",
    "a",
    "is",
    "colour",
    "of",
    "card",
    "what",
    "name",
    "it",
    "one",
    "word",
    "You",
    "are",
    "helpful",
    "answer",
    "with",
    "this",
    "picture",
    "shows",
    "yes",
    "no",
)


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


def colour_card_policy(seed: int = 0) -> tuple[Qwen25VL, Tokenizer]:
    """The tiny preset, random init, with the word tokenizer's vocabulary and special ids ([UNK] stands for the
    video and vision pads it lacks)."""
    tokenizer = word_tokenizer()
    base = preset("tiny")
    config = base.replace(
        text=dataclasses.replace(base.text, vocab_size=tokenizer.vocab_size),
        image_token_id=tokenizer.image_pad_id,
        vision_start_token_id=tokenizer.vision_start_id,
        vision_end_token_id=tokenizer.vision_end_id,
        video_token_id=tokenizer.backend.token_to_id("[UNK]"),
        vision_token_id=tokenizer.backend.token_to_id("[UNK]"),
    )
    return Qwen25VL(config, rngs=nnx.Rngs(seed)), tokenizer


@struct.dataclass
class CardsState:
    colour: jax.Array  # int32
    done: jax.Array  # bool: never set (the episode's max_turns ends it)


@dataclasses.dataclass(frozen=True)
class ColourCards(ColourCard):
    """ColourCard as an episode: each answer is scored against the card shown, then the next card is drawn.
    The game never ends on its own, so every turn of every board is played (multi-turn tests). Any first
    word names a colour (its vocabulary index mod 4), so even a random policy hits a quarter of the time
    and a handful of turns has rewards that vary."""

    name = "colour_cards"

    def parse(self, text: str) -> int:
        words = text.split()
        return WORDS.index(words[0]) % len(COLOURS) if words and words[0] in WORDS else self.invalid_action

    def reset(self, key, params=None):
        return CardsState(colour=jax.random.randint(key, (), 0, len(COLOURS)), done=jnp.zeros((), bool))

    def step(self, key, state, action, params=None):
        hit = action == state.colour
        info = {"raw_reward": hit.astype(jnp.float32), "legal": hit}
        following = CardsState(colour=jax.random.randint(key, (), 0, len(COLOURS)), done=state.done)
        return following, hit.astype(jnp.float32), state.done, info

    def from_board(self, board, **kwargs):
        return CardsState(colour=jnp.asarray(COLOURS.index(board), jnp.int32), done=jnp.zeros((), bool))
