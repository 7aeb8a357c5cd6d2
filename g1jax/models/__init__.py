"""Qwen2.5-VL in Flax NNX: config, model, host-side positions, checkpoint loading and export."""

from g1jax.models.config import ConfigError, Qwen25VLConfig, TextConfig, VisionConfig, preset
from g1jax.models.loading import CheckpointError, load_pretrained, save_pretrained
from g1jax.models.positions import get_rope_index
from g1jax.models.qwen25vl import KVCache, Qwen25VL, greedy_generate, init_cache, token_logprobs, trainable_filter

__all__ = [
    "CheckpointError",
    "ConfigError",
    "KVCache",
    "Qwen25VL",
    "Qwen25VLConfig",
    "TextConfig",
    "VisionConfig",
    "get_rope_index",
    "greedy_generate",
    "init_cache",
    "load_pretrained",
    "preset",
    "save_pretrained",
    "token_logprobs",
    "trainable_filter",
]
