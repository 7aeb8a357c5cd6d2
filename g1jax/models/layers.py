"""Building blocks shared by the vision tower and the language model.

Every parameter name mirrors the Hugging Face checkpoint: `nnx.Linear` keeps `kernel` [in, out]
(the checkpoint's `weight` transposed) and `bias`; `RMSNorm` keeps `weight`; the embedding keeps
`embedding` (the checkpoint's `weight`). `loading.py` relies on exactly these names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def linear(in_features: int, out_features: int, *, bias: bool, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_features, out_features, use_bias=bias, dtype=dtype, param_dtype=param_dtype,
                      kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


class RMSNorm(nnx.Module):
    """transformers' Qwen2 RMSNorm: statistics in float32, cast back to the input dtype, then scale."""

    def __init__(self, dim: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs | None = None):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        input_dtype = x.dtype
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(self.dtype) * x32.astype(input_dtype)


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) * up(x)); the vision MLP has biases, the text MLP does not."""

    def __init__(self, dim: int, hidden: int, *, bias: bool, dtype, param_dtype, rngs: nnx.Rngs):
        self.gate_proj = linear(dim, hidden, bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.up_proj = linear(dim, hidden, bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.down_proj = linear(hidden, dim, bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Non-interleaved (rotate-half) rotary embedding; `cos`/`sin` broadcast against x [..., heads, head_dim]."""
    return x * cos + rotate_half(x) * sin


def inverse_frequencies(base: float, dim: int) -> np.ndarray:
    """1 / base^(2i/dim) as float32, rounded as transformers computes it in torch (pow exact, then f32 divide)."""
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return np.float32(1.0) / (np.float64(base) ** exponents.astype(np.float64)).astype(np.float32)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
    """Grouped-query attention as transformers' eager path computes it.

    q [B, T, N, hd]; k, v [B, S, K, hd] with N a multiple of K (query head n uses key head n // (N/K));
    mask: bool, broadcastable to [B, T, S] (True = attend). Scores in the activation dtype, softmax in
    float32, cast back before the value product. Masked entries get the dtype's minimum, so a row with
    no visible key (a padding query) yields a uniform average instead of NaN.
    """
    batch, t_len, n_heads, head_dim = q.shape
    kv_heads = k.shape[2]
    groups = n_heads // kv_heads
    q = q.reshape(batch, t_len, kv_heads, groups, head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k) * jnp.asarray(scale, q.dtype)
    scores = scores.astype(jnp.float32)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(batch, t_len, n_heads * head_dim)
