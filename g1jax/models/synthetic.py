"""Synthetic model inputs for benchmarks and checks: random-token prompts, each holding one square image."""

from __future__ import annotations

import numpy as np

from g1jax.constants import QWEN25_NUM_RANKED_TOKENS
from g1jax.models.positions import get_rope_index


def synthetic_inputs(config, batch: int, seq: int, image_px: int, seed: int = 0) -> dict:
    """`batch` prompts of `seq` tokens: random text around one image of image_px x image_px (random patches),
    with the M-RoPE positions the model expects. Keys: input_ids, attention_mask, positions, pixel_values,
    grids, image_tokens."""
    merge, patch = config.vision.spatial_merge_size, config.vision.patch_size
    if image_px % (merge * patch):
        raise ValueError(f"image_px {image_px} must be a multiple of {merge * patch}")
    side = image_px // patch
    grid = (1, side, side)
    image_tokens = side * side // merge**2
    text = seq - image_tokens - 2
    if text < 2:
        raise ValueError(f"seq {seq} is too short for {image_tokens} image tokens")
    rng = np.random.RandomState(seed)
    vocab = min(config.text.vocab_size, QWEN25_NUM_RANKED_TOKENS)
    ids = rng.randint(0, min(vocab, config.image_token_id), size=(batch, seq))
    before = text // 2
    ids[:, before] = config.vision_start_token_id
    ids[:, before + 1 : before + 1 + image_tokens] = config.image_token_id
    ids[:, before + 1 + image_tokens] = config.vision_end_token_id
    mask = np.ones_like(ids)
    grids = [grid] * batch
    positions, _ = get_rope_index(ids, grids, mask, image_token_id=config.image_token_id, spatial_merge_size=merge)
    pixel_values = rng.standard_normal((batch * side * side, config.vision.patch_features)).astype(np.float32)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "positions": positions,
        "pixel_values": pixel_values,
        "grids": tuple(grids),
        "image_tokens": image_tokens,
    }
