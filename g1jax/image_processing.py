"""Qwen2.5-VL image preprocessing on the device: uint8 frame -> patch rows for the vision tower.

For frames whose sides are multiples of 28 (and whose area the processor config would keep,
i.e. `smart_resize(h, w, ...) == (h, w)`), `preprocess` equals transformers'
`Qwen2VLImageProcessor` output: no resize, rescale 1/255, CLIP normalisation, the still frame
repeated over the 2 temporal slots, patches in the processor's block-major order. Games render
at such sizes, so nothing leaves the accelerator between `env.render` and the model.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from g1jax.constants import CHANNELS, FACTOR, MERGE_SIZE, PATCH_DIM, PATCH_SIZE, TEMPORAL_PATCH_SIZE

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Pixel-area limits (min_pixels, max_pixels) of the configs in use.
PROCESSOR_DEFAULT_PIXELS = (56 * 56, 28 * 28 * 1280)  # transformers' class defaults
HUB_PIXELS = (56 * 56, 28 * 28 * 16384)  # Qwen2.5-VL 3B/7B preprocessor_config.json
G1_PIXELS = (512 * 512, 2048 * 2048)  # EasyR1 / G1 training override


def _normalisation_table() -> np.ndarray:
    """float32[256, 3]: every uint8 value of every channel, rescaled and normalised.

    Computed with the processor's own arithmetic (rescale in float64, then float32 subtract and
    divide). Looking values up makes the device output bit-identical; computing them on the
    device would not be, because XLA turns division by a constant into a reciprocal multiply.
    """
    rescaled = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    return (rescaled[:, None] - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


_NORMALISED = _normalisation_table()


def check_frame_size(height: int, width: int) -> None:
    """Raise unless both sides are positive multiples of 28, the sizes `preprocess` takes as is."""
    if height <= 0 or width <= 0 or height % FACTOR or width % FACTOR:
        raise ValueError(
            f"frame size {height}x{width} is not a multiple of {FACTOR} on both sides; render at a multiple of "
            f"{FACTOR}, or resize on the host to smart_resize({height}, {width})"
        )


def grid_thw(height: int, width: int) -> tuple[int, int, int]:
    """The processor's `image_grid_thw` row for one frame: (1, H/14, W/14) patches."""
    check_frame_size(height, width)
    return (1, height // PATCH_SIZE, width // PATCH_SIZE)


def num_image_tokens(height: int, width: int) -> int:
    """`<|image_pad|>` tokens one frame takes in the prompt: (H/28)·(W/28)."""
    check_frame_size(height, width)
    return (height // FACTOR) * (width // FACTOR)


def preprocess(frame: jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
    """uint8[H, W, 3] -> pixel_values [(H/14)·(W/14), PATCH_DIM = 1176], jittable; `jax.vmap` it for a batch.

    Row order: merge units (2x2 patches) row-major over the frame, patches row-major inside a
    unit. Feature order: channel (3), temporal copy (2), patch row (14), patch column (14).
    """
    if frame.ndim != 3 or frame.shape[-1] != CHANNELS:
        raise ValueError(f"expected one RGB frame [H, W, 3], got shape {frame.shape}")
    if frame.dtype != jnp.uint8:
        raise TypeError(f"expected a uint8 frame, got {frame.dtype}")
    height, width, _ = frame.shape
    check_frame_size(height, width)
    pixels = jnp.asarray(_NORMALISED)[frame.astype(jnp.int32), jnp.arange(CHANNELS)]
    rows, cols = height // FACTOR, width // FACTOR
    # [rows, merge_y, patch_y, cols, merge_x, patch_x, channel]
    patches = pixels.reshape(rows, MERGE_SIZE, PATCH_SIZE, cols, MERGE_SIZE, PATCH_SIZE, CHANNELS)
    # -> [rows, cols, merge_y, merge_x, channel, patch_y, patch_x]
    patches = patches.transpose(0, 3, 1, 4, 6, 2, 5)
    # A still image fills both temporal slots with the same frame.
    patches = jnp.broadcast_to(
        patches[:, :, :, :, :, None], (*patches.shape[:5], TEMPORAL_PATCH_SIZE, PATCH_SIZE, PATCH_SIZE)
    )
    return patches.reshape(rows * cols * MERGE_SIZE * MERGE_SIZE, PATCH_DIM).astype(dtype)


def smart_resize(
    height: int,
    width: int,
    factor: int = FACTOR,
    min_pixels: int = PROCESSOR_DEFAULT_PIXELS[0],
    max_pixels: int = PROCESSOR_DEFAULT_PIXELS[1],
) -> tuple[int, int]:
    """The size (multiples of `factor`) the Qwen2-VL processor resizes an image of height x width to.

    Same arithmetic as transformers, including Python's round-half-to-even.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {height}x{width} exceeds 200, which the processor rejects")
    resized_h = round(height / factor) * factor
    resized_w = round(width / factor) * factor
    if resized_h * resized_w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        resized_h = max(factor, math.floor(height / beta / factor) * factor)
        resized_w = max(factor, math.floor(width / beta / factor) * factor)
    elif resized_h * resized_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        resized_h = math.ceil(height * beta / factor) * factor
        resized_w = math.ceil(width * beta / factor) * factor
    return resized_h, resized_w
