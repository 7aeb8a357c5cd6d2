"""Building blocks shared by the vision tower and the language model.

Every parameter name mirrors the Hugging Face checkpoint: `Linear` keeps `kernel` [in, out] (the
checkpoint's `weight` transposed) and `bias`; `RMSNorm` keeps `weight`; `Embed` keeps `embedding`
(the checkpoint's `weight`). `loading.py` relies on exactly these names.

Every parameter also carries the logical names of its axes (NNX metadata `out_sharding`, e.g.
("embed", "mlp") for an MLP input kernel); `g1jax.sharding` maps them to mesh axes. Eager sharding
is off for these variables, so building a model needs no mesh.

`rngs=None` builds an *abstract* module: every parameter is a `jax.ShapeDtypeStruct`, created
without tracing. The loader uses it instead of `nnx.eval_shape`, whose traced RNG-counter updates
make flax 0.12.8 probe `tracer.sharding` (an error path that rescans the whole trace), which is
quadratic in the number of parameters (timings: BENCHMARKS.md, "Model").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def make_param(rngs: nnx.Rngs | None, init, shape: tuple[int, ...], dtype, axes: tuple[str, ...]) -> nnx.Param:
    """A parameter drawn from `init(key, shape, dtype)`, or an abstract one when rngs is None.

    axes: one logical axis name per dimension, kept as the variable's `out_sharding` metadata.
    """
    if len(axes) != len(shape):
        raise ValueError(f"a parameter of shape {shape} needs {len(shape)} logical axis names, got {axes}")
    value = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype)) if rngs is None else init(rngs.params(), shape, dtype)
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


_normal = nnx.initializers.normal(0.02)


def _ones(key, shape, dtype):
    return jnp.ones(shape, dtype)


def _zeros(key, shape, dtype):
    return jnp.zeros(shape, dtype)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias), computed in `dtype` (parameters are stored in `param_dtype`).

    axes: logical names of (input, output) features; the bias takes the output's.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool, axes: tuple[str, str], dtype,
                 param_dtype, rngs: nnx.Rngs | None):
        self.kernel = make_param(rngs, _normal, (in_features, out_features), param_dtype, axes)
        self.bias = make_param(rngs, _zeros, (out_features,), param_dtype, axes[1:]) if bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Embed(nnx.Module):
    def __init__(self, num_embeddings: int, features: int, *, dtype, param_dtype, rngs: nnx.Rngs | None):
        self.embedding = make_param(rngs, _normal, (num_embeddings, features), param_dtype, ("vocab", "embed"))
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)


class RMSNorm(nnx.Module):
    """transformers' Qwen2 RMSNorm: statistics in float32, cast back to the input dtype, then scale."""

    def __init__(self, dim: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs | None):
        self.weight = make_param(rngs, _ones, (dim,), param_dtype, ("norm",))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        input_dtype = x.dtype
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(self.dtype) * x32.astype(input_dtype)


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) * up(x)); the vision MLP has biases, the text MLP does not.

    axes: logical names of (model features, hidden features).
    """

    def __init__(self, dim: int, hidden: int, *, bias: bool, axes: tuple[str, str], dtype, param_dtype,
                 rngs: nnx.Rngs | None):
        layer = dict(bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = Linear(dim, hidden, axes=axes, **layer)
        self.up_proj = Linear(dim, hidden, axes=axes, **layer)
        self.down_proj = Linear(hidden, dim, axes=axes[::-1], **layer)

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


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float,
              causal_block: int | None = None) -> jax.Array:
    """Grouped-query attention as transformers' eager path computes it.

    q [B, T, N, hd]; k, v [B, S, K, hd] with N a multiple of K (query head n uses key head n // (N/K));
    mask: bool, broadcastable to [B, T, S] (True = attend). Scores in the activation dtype, softmax in
    float32, cast back before the value product. Masked entries get float32's minimum, so a row with
    no visible key (a padding query) yields a uniform average instead of NaN.

    causal_block: when the mask is causal (query i never sees key j > i, and T == S), process queries
    in blocks of this size against only the keys up to the block's end; skipping the masked upper
    triangle saves work (BENCHMARKS.md, "Model") and changes no value.
    """
    t_len, s_len = q.shape[1], k.shape[1]
    if causal_block is None or t_len != s_len or t_len <= causal_block:
        return _attention(q, k, v, mask, scale)
    mask = jnp.broadcast_to(mask, (q.shape[0], t_len, s_len))
    outputs = []
    for start in range(0, t_len, causal_block):
        end = min(start + causal_block, t_len)
        outputs.append(_attention(q[:, start:end], k[:, :end], v[:, :end], mask[:, start:end, :end], scale))
    return jnp.concatenate(outputs, axis=1)


def _attention(q, k, v, mask, scale):
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
