"""g1jax.models.layers.attention: every CPU path against a float64 reference, padding rows, dtypes,
the cuDNN selection rule and input errors (the kernels are described in docs/attention.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from g1jax.models.layers import FUSED_ATTENTION_ENV, attention, cudnn_attention_supports, fused_attention_fits

HEAD_DIM = 8
SCALE = HEAD_DIM**-0.5


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def reference(q, k, v, mask):
    """float64 softmax attention, key head n // (N/K) for query head n; masked-out rows -> nan."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    scores = np.einsum("btnd,bsnd->bnts", q, k) * SCALE
    scores = np.where(np.asarray(mask)[:, None], scores, -np.inf)
    with np.errstate(invalid="ignore"):
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
    out = np.einsum("bnts,bsnd->btnd", probs, v)
    return out.reshape(out.shape[0], out.shape[1], -1)


def random_qkv(batch, t_len, s_len, heads, kv_heads, seed=0):
    rng = np.random.RandomState(seed)
    return tuple(
        jnp.asarray(rng.standard_normal(shape) * 2.0, jnp.float32)
        for shape in (
            (batch, t_len, heads, HEAD_DIM),
            (batch, s_len, kv_heads, HEAD_DIM),
            (batch, s_len, kv_heads, HEAD_DIM),
        )
    )


@pytest.fixture(scope="module")
def run():
    return jax.jit(attention, static_argnums=(4, 5))


@pytest.fixture(scope="module")
def causal_case():
    """3 rows x 21 tokens, 6 query heads on 2 key heads; row 1 left-padded by 7, row 2 by 20."""
    q, k, v = random_qkv(3, 21, 21, 6, 2)
    valid = np.ones((3, 21), bool)
    valid[1, :7] = False
    valid[2, :20] = False
    mask = np.tril(np.ones((21, 21), bool))[None] & valid[:, None, :]
    return q, k, v, mask, valid


@pytest.mark.parametrize("causal_block", [None, 4, 21, 64])
def test_causal_attention_matches_float64_reference(run, causal_case, causal_block):
    # 4: 6 blocks, the last one short; 21 and 64: one block
    q, k, v, mask, valid = causal_case
    out = np.asarray(run(q, k, v, jnp.asarray(mask), SCALE, causal_block))
    want = reference(q, k, v, mask)
    np.testing.assert_allclose(out[valid], want[valid], atol=1e-5, rtol=1e-5)
    # Padding queries see no key at all: finite (so the next layer's padding keys stay finite too).
    assert np.isfinite(out).all()


def test_key_padding_mask_broadcast_over_queries(run):
    # The vision tower's form: one key mask [segments, 1, S] for every query, no causality.
    q, k, v = random_qkv(4, 16, 16, 2, 2, seed=1)
    filled = np.random.RandomState(2).rand(4, 1, 16) < 0.7
    filled[:, :, 0] = True
    out = np.asarray(run(q, k, v, jnp.asarray(filled), SCALE, None))
    np.testing.assert_allclose(out, reference(q, k, v, np.broadcast_to(filled, (4, 16, 16))), atol=1e-5, rtol=1e-5)


def test_single_query_against_a_cache(run):
    # Decoding: one query per row over a cache whose unwritten and padding slots are masked.
    q, k, v = random_qkv(3, 1, 30, 6, 2, seed=3)
    valid = np.zeros((3, 1, 30), bool)
    valid[0, :, :12] = True
    valid[1, :, 5:12] = True
    valid[2, :, 11] = True
    out = np.asarray(run(q, k, v, jnp.asarray(valid), SCALE, None))
    np.testing.assert_allclose(out, reference(q, k, v, valid), atol=1e-5, rtol=1e-5)
    # The same query as the last of a chunk of queries (the matmul path) gives the same output.
    q_chunk = jnp.concatenate([random_qkv(3, 4, 30, 6, 2, seed=4)[0], q], axis=1)
    chunk_mask = np.broadcast_to(valid, (3, 5, 30))
    chunk = np.asarray(run(q_chunk, k, v, jnp.asarray(chunk_mask), SCALE, None))
    np.testing.assert_allclose(chunk[:, -1:], out, atol=1e-5, rtol=1e-5)


def eager_bfloat16(q, k, v, mask):
    """transformers' eager attention in bfloat16: bf16 scores, then the scale, float32 softmax, bf16 probabilities."""
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("btnd,bsnd->bnts", q, k) * jnp.asarray(SCALE, q.dtype)
    scores = jnp.where(mask[:, None], scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    out = jnp.einsum("bnts,bsnd->btnd", jax.nn.softmax(scores, axis=-1).astype(v.dtype), v)
    return out.reshape(out.shape[0], out.shape[1], -1)


def test_bfloat16_error_no_worse_than_transformers_eager(run, causal_case):
    q, k, v, mask, valid = causal_case
    q16, k16, v16 = (a.astype(jnp.bfloat16) for a in (q, k, v))
    out16 = run(q16, k16, v16, jnp.asarray(mask), SCALE, 4)
    assert out16.dtype == jnp.bfloat16
    want = reference(q, k, v, mask)[valid]
    ours = np.abs(np.asarray(out16, np.float32)[valid] - want)
    eager = np.abs(np.asarray(jax.jit(eager_bfloat16)(q16, k16, v16, jnp.asarray(mask)), np.float32)[valid] - want)
    assert np.isfinite(ours).all()
    assert ours.mean() <= eager.mean() and ours.max() <= 1.25 * eager.max()


@pytest.mark.parametrize(
    "backend, capability, dtype, t_len, s_len, head_dim, fits",
    [
        ("gpu", "9.0", jnp.bfloat16, 512, 512, 128, True),
        ("gpu", "8.0", jnp.float16, 64, 1024, 64, True),
        ("gpu", "9.0", jnp.bfloat16, 512, 512, 256, True),  # Hopper takes head_dim up to 256
        ("gpu", "8.6", jnp.bfloat16, 512, 512, 256, False),  # Ampere up to 128
        ("gpu", "9.0", jnp.float32, 512, 512, 128, False),  # float32: no cuDNN flash attention
        ("gpu", "9.0", jnp.bfloat16, 1, 1024, 128, False),  # one decoded token: the matrix-vector path
        ("gpu", "9.0", jnp.bfloat16, 511, 512, 128, False),  # odd length
        ("gpu", "9.0", jnp.bfloat16, 512, 512, 80 + 4, False),  # head_dim not a multiple of 8
        ("gpu", "7.5", jnp.bfloat16, 512, 512, 64, False),  # before Ampere
        ("gpu", None, jnp.bfloat16, 512, 512, 64, False),  # a GPU without CUDA compute capability (ROCm)
        ("cpu", None, jnp.bfloat16, 512, 512, 64, False),
        ("tpu", None, jnp.bfloat16, 512, 512, 128, False),
    ],
)
def test_cudnn_selection_rule(backend, capability, dtype, t_len, s_len, head_dim, fits):
    assert cudnn_attention_supports(backend, capability, dtype, t_len, s_len, head_dim) is fits


def test_fused_attention_follows_backend_and_switch(monkeypatch):
    q = jax.ShapeDtypeStruct((2, 64, 8, 64), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((2, 64, 2, 64), jnp.bfloat16)
    if jax.default_backend() == "cpu":
        assert not fused_attention_fits(q, k)
    # A Hopper GPU as jax would report it: cuDNN for bfloat16, not for float32, not when switched off.
    hopper = type("FakeGpu", (), {"compute_capability": "9.0"})()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda *args: [hopper])
    assert fused_attention_fits(q, k)
    assert not fused_attention_fits(
        jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct(k.shape, jnp.float32)
    )
    monkeypatch.setenv(FUSED_ATTENTION_ENV, "0")
    assert not fused_attention_fits(q, k)


@pytest.mark.parametrize(
    "shapes, match",
    [
        (((2, 5, 6, 8), (2, 5, 4, 8), (2, 5, 5)), r"query heads \(6\) must be a multiple of key/value heads \(4\)"),
        (((2, 5, 6, 8), (2, 5, 2, 4), (2, 5, 5)), "agree on batch and head_dim"),
        (((2, 5, 6, 8), (3, 5, 2, 8), (2, 5, 5)), "agree on batch and head_dim"),
        (((2, 5, 48), (2, 5, 2, 8), (2, 5, 5)), r"q \[B, T, N, hd\]"),
        (((2, 5, 6, 8), (2, 5, 2, 8), (5, 5)), r"mask must be 3-d \[B\|1, T\|1, S\], got shape \(5, 5\)"),
    ],
)
def test_bad_shapes_raise_one_clear_error(shapes, match):
    q_shape, k_shape, mask_shape = shapes
    with pytest.raises(ValueError, match=match):
        attention(jnp.zeros(q_shape), jnp.zeros(k_shape), jnp.zeros(k_shape), jnp.ones(mask_shape, bool), SCALE)
