"""The policy a run starts from: a Qwen2.5-VL model and its tokenizer, from a preset (random init), a local
Hugging Face checkpoint or a hub id (`TrainConfig.model`)."""

from __future__ import annotations

import os

import jax.numpy as jnp
from flax import nnx

import envs
from g1jax.config import TrainConfig
from g1jax.models.config import PRESETS, ConfigError, Qwen25VLConfig, preset
from g1jax.models.qwen25vl import Qwen25VL
from g1jax.tokenizer import Tokenizer, load_tokenizer, make_tiny_tokenizer


def check_model_source(model: str) -> None:
    """A preset name, a directory with a config.json, or a hub id ('org/name', fetched when the policy loads);
    anything else is a one-line ConfigError."""
    if model.lower() in PRESETS:
        return
    if os.path.exists(model):
        if not os.path.isdir(model):
            raise ConfigError(f"model {model} is a file; pass the checkpoint directory holding config.json")
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise ConfigError(f"model directory {model} has no config.json")
        return
    hub_like = model.count("/") == 1 and not model.startswith((".", "/", "~")) and all(model.split("/"))
    if not hub_like:
        raise ConfigError(
            f"model {model!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor an existing "
            f"directory nor a hub id like 'Qwen/Qwen2.5-VL-3B-Instruct'"
        )


def load_policy(config: TrainConfig, mesh=None) -> tuple[Qwen25VL, Tokenizer]:
    """The model and its tokenizer, from a preset (random init) or a checkpoint directory / hub id.

    mesh: a checkpoint's tensors are read straight onto their shards of it (a 7B model never sits on one
    device first)."""
    dtype, param_dtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
    options = dict(dtype=dtype, param_dtype=param_dtype, remat=config.remat, freeze_vision=config.freeze_vision)
    if config.model.lower() in PRESETS:
        model_config = preset(config.model)
        model = Qwen25VL(model_config, rngs=nnx.Rngs(config.init_seed), **options)
        tokenizer = _preset_tokenizer(config, model_config)
    else:
        from g1jax.models.loading import load_pretrained, resolve_checkpoint_dir

        directory = resolve_checkpoint_dir(config.model)
        model = load_pretrained(directory, shardings=mesh, **options)
        tokenizer = load_tokenizer(config.tokenizer or _tokenizer_source(directory))
    return model, tokenizer


def _preset_tokenizer(config: TrainConfig, model_config: Qwen25VLConfig) -> Tokenizer:
    if config.tokenizer:
        return load_tokenizer(config.tokenizer)
    if model_config.text.vocab_size >= 151_665:  # a real-size vocabulary: the offline Qwen2.5 tokenizer
        return load_tokenizer()
    # A small BPE learned on the games' own text (prompts, board text, the teachers' phrases): the
    # answers and prompts of a tiny run then take a third of the tokens they would otherwise.
    return make_tiny_tokenizer(vocab_size=model_config.text.vocab_size, corpus=_game_corpus())


# The games whose prompts the tiny tokenizer was learned on (G1's four); fixed, see _game_corpus.
TOKENIZER_GAMES = ("2048", "shisensho", "shisensho_photo", "swap")


def _game_corpus() -> list[str]:
    from g1jax.tokenizer import _TINY_CORPUS as TINY_CORPUS

    phrases = [
        "<perception>\n 2 | 4 | - | 8 \n 16 | 32 | 64 | 128 \n</perception>\n<think>\n",
        "Looking 2 moves ahead (merge points, then room and merges left): Up merges 1 pair for 16 points, "
        "value 58.0; Right cannot move; Down merges 2 pairs for 8 points; Left merges no pair. "
        "So I play Down (2).\n</think>\n<answer>2</answer>",
        "Red circle | Green square | Blue triangle | Yellow diamond | Magenta cross | Cyan star | Empty | - ",
        "pair (0, 1) (2, 3) leaves 12 legal pairs; swap score points cascade tiles",
    ]
    # The corpus names its games rather than reading the registry: a game registered later must not change
    # the vocabulary, or the token ids of every saved tiny run would move under it.
    return [*TINY_CORPUS, *(envs.make(name).prompt for name in TOKENIZER_GAMES), *phrases]


def _tokenizer_source(directory: str) -> str | None:
    has_own = any(os.path.isfile(os.path.join(directory, f)) for f in ("tokenizer.json", "tokenizer_config.json"))
    return directory if has_own else None
