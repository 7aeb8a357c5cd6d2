import math
import random
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from g1jax.constants import PATCH_DIM
from g1jax.image_processing import (
    G1_PIXELS,
    HUB_PIXELS,
    grid_thw,
    num_image_tokens,
    preprocess,
    smart_resize,
)

SIZES = [(56, 84), (112, 168), (224, 196)]


def _frame(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pil_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil()


@pytest.fixture(scope="module")
def default_processor():
    # Uses torchvision when installed, else warns and falls back to the PIL backend.
    from transformers import Qwen2VLImageProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Qwen2VLImageProcessor()


@pytest.mark.parametrize("height,width", SIZES)
def test_equals_the_pil_processor_exactly(pil_processor, height, width):
    frame = _frame(height, width, seed=height + width)
    expected = pil_processor(images=[frame], return_tensors="np")
    ours = np.asarray(jax.jit(preprocess)(frame))
    # Bit equality holds on every CPU: both sides are the same correctly rounded elementwise numpy float32
    # operations (our device side only looks their results up in a table), with no reduction or fused kernel.
    assert ours.shape == expected["pixel_values"].shape == (height * width // 196, PATCH_DIM)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, expected["pixel_values"])
    assert [list(grid_thw(height, width))] == expected["image_grid_thw"].tolist()


@pytest.mark.parametrize("height,width", SIZES)
def test_matches_the_default_processor(default_processor, height, width):
    frame = _frame(height, width, seed=7)
    expected = default_processor(images=[frame], return_tensors="np")
    # With torchvision installed this backend fuses rescale and normalise in torch, whose CPU kernels round
    # differently from numpy (and between CPUs) by a few float32 ulps of values up to ~2.2.
    np.testing.assert_allclose(np.asarray(preprocess(frame)), expected["pixel_values"], rtol=0, atol=1e-5)


def test_patch_layout_by_hand():
    # Independent check of the block-major order: row r of the output is the patch at
    # (merge unit (by, bx), offset (my, mx)); features run channel, time, y, x.
    height, width = 56, 84
    frame = _frame(height, width, seed=3)
    out = np.asarray(preprocess(frame)).reshape(-1, 3, 2, 14, 14)
    mean = np.array([0.48145466, 0.4578275, 0.40821073])
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    row = 0
    for by in range(height // 28):
        for bx in range(width // 28):
            for my in range(2):
                for mx in range(2):
                    y0, x0 = by * 28 + my * 14, bx * 28 + mx * 14
                    patch = (frame[y0 : y0 + 14, x0 : x0 + 14] / 255.0 - mean) / std  # [14, 14, 3]
                    for t in range(2):
                        np.testing.assert_allclose(out[row, :, t], patch.transpose(2, 0, 1), atol=1e-5)
                    row += 1
    assert row == out.shape[0]


def test_vmap_over_a_batch():
    frames = np.stack([_frame(112, 168, seed=s) for s in range(3)])
    batched = np.asarray(jax.jit(jax.vmap(preprocess))(frames))
    assert batched.shape == (3, 96, PATCH_DIM)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], np.asarray(preprocess(frames[i])))


def test_grid_and_token_counts():
    assert grid_thw(56, 84) == (1, 4, 6)
    assert grid_thw(840, 644) == (1, 60, 46)
    assert num_image_tokens(840, 644) == 690
    assert num_image_tokens(224, 224) == 64
    t, h, w = grid_thw(112, 168)
    assert num_image_tokens(112, 168) == t * h * w // 4


@pytest.mark.parametrize("height,width", [(56, 80), (50, 84), (0, 28), (28, -28)])
def test_sizes_off_the_28_grid_are_rejected(height, width):
    with pytest.raises(ValueError, match="multiple of 28"):
        grid_thw(height, width)
    with pytest.raises(ValueError, match="multiple of 28"):
        num_image_tokens(height, width)
    if height > 0 and width > 0:
        with pytest.raises(ValueError, match=f"{height}x{width}"):
            preprocess(jnp.zeros((height, width, 3), jnp.uint8))


def test_bad_frames_are_rejected():
    with pytest.raises(TypeError, match="uint8"):
        preprocess(jnp.zeros((56, 56, 3), jnp.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        preprocess(jnp.zeros((56, 56, 4), jnp.uint8))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        preprocess(jnp.zeros((2, 56, 56, 3), jnp.uint8))


@pytest.mark.parametrize(
    "frame,limits,expected",
    [
        ((224, 224), HUB_PIXELS, (224, 224)),
        ((224, 224), G1_PIXELS, (532, 532)),
        ((448, 448), HUB_PIXELS, (448, 448)),
        ((448, 448), G1_PIXELS, (532, 532)),
        ((560, 560), G1_PIXELS, (560, 560)),
        ((672, 672), G1_PIXELS, (672, 672)),
        ((840, 640), HUB_PIXELS, (840, 644)),
        ((840, 640), G1_PIXELS, (840, 644)),
        ((640, 640), HUB_PIXELS, (644, 644)),
        ((640, 640), G1_PIXELS, (644, 644)),
    ],
)
def test_smart_resize_spec_table(frame, limits, expected):
    assert smart_resize(*frame, min_pixels=limits[0], max_pixels=limits[1]) == expected


def test_smart_resize_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

    rng = random.Random(0)
    cases = [(42, 70), (14, 14), (4000, 3000), (70, 13000), (1, 150)]  # ties round half to even; both limits
    cases += [(rng.randrange(10, 5000), rng.randrange(10, 5000)) for _ in range(300)]
    cases = [(h, w) for h, w in cases if max(h, w) / min(h, w) <= 200]  # rejected by both (tested below)
    for limits in ((56 * 56, 28 * 28 * 1280), HUB_PIXELS, G1_PIXELS):
        for height, width in cases:
            assert smart_resize(height, width, min_pixels=limits[0], max_pixels=limits[1]) == hf_smart_resize(
                height, width, min_pixels=limits[0], max_pixels=limits[1]
            ), (height, width, limits)


def test_smart_resize_output_is_usable():
    resized = smart_resize(333, 517, min_pixels=G1_PIXELS[0], max_pixels=G1_PIXELS[1])
    assert resized[0] % 28 == 0 and resized[1] % 28 == 0
    assert G1_PIXELS[0] <= resized[0] * resized[1] <= G1_PIXELS[1]
    assert math.isclose(resized[0] / resized[1], 333 / 517, rel_tol=0.1)


def test_smart_resize_rejects_extreme_aspect_and_empty_images():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2010)
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 100)
