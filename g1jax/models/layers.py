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

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from g1jax.sharding import gathered


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

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool,
        axes: tuple[str, str],
        dtype,
        param_dtype,
        rngs: nnx.Rngs | None,
    ):
        self.kernel = make_param(rngs, _normal, (in_features, out_features), param_dtype, axes)
        self.bias = make_param(rngs, _zeros, (out_features,), param_dtype, axes[1:]) if bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), gathered(self.kernel).astype(self.dtype))
        if self.bias is not None:
            y = y + gathered(self.bias).astype(self.dtype)
        return y


class Embed(nnx.Module):
    def __init__(self, num_embeddings: int, features: int, *, dtype, param_dtype, rngs: nnx.Rngs | None):
        self.embedding = make_param(rngs, _normal, (num_embeddings, features), param_dtype, ("vocab", "embed"))
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(gathered(self.embedding), ids, axis=0).astype(self.dtype)


class RMSNorm(nnx.Module):
    """transformers' Qwen2 RMSNorm: statistics in float32, cast back to the input dtype, then scale."""

    def __init__(self, dim: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs | None):
        self.weight = make_param(rngs, _ones, (dim,), param_dtype, ("norm",))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        with jax.named_scope("rmsnorm"):
            input_dtype = x.dtype
            x32 = x.astype(jnp.float32)
            x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
            return self.weight[...].astype(self.dtype) * x32.astype(input_dtype)


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) * up(x)); the vision MLP has biases, the text MLP does not.

    axes: logical names of (model features, hidden features).
    """

    def __init__(
        self, dim: int, hidden: int, *, bias: bool, axes: tuple[str, str], dtype, param_dtype, rngs: nnx.Rngs | None
    ):
        layer = dict(bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = Linear(dim, hidden, axes=axes, **layer)
        self.up_proj = Linear(dim, hidden, axes=axes, **layer)
        self.down_proj = Linear(hidden, dim, axes=axes[::-1], **layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        with jax.named_scope("swiglu"):
            return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


def remat_call(module: nnx.Module, *args, method: str = "__call__", **static):
    """module(*args, **static) with its activations recomputed in the backward pass instead of kept.

    Functional (split, `jax.checkpoint`, merge inside) rather than `nnx.remat`: nnx.remat writes the
    module's variables back after the call, which fails ("Cannot mutate Param from a different trace
    level") when the module was merged at another trace level, e.g. the KL reference model inside
    the update's `jax.grad`. `static`: plain Python values (not traced), such as a segment length.
    `method`: the module's method to call (its `__call__` by default).
    """
    graphdef, state = nnx.split(module)

    def run(state, *args):
        return getattr(nnx.merge(graphdef, state), method)(*args, **static)

    return jax.checkpoint(run)(state, *args)


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Non-interleaved (rotate-half) rotary embedding; `cos`/`sin` broadcast against x [..., heads, head_dim]."""
    with jax.named_scope("rotary"):
        return x * cos + rotate_half(x) * sin


def inverse_frequencies(base: float, dim: int) -> np.ndarray:
    """1 / base^(2i/dim) as float32, rounded as transformers computes it in torch (pow exact, then f32 divide)."""
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return np.float32(1.0) / (np.float64(base) ** exponents.astype(np.float64)).astype(np.float32)


# A masked score gets float32's minimum added: a row with no visible key (a padding query) then
# averages its keys uniformly instead of producing NaN, so later layers' padding keys stay finite
# (a NaN key would poison every row through the value product, masked or not).
_MASKED_BIAS = float(np.finfo(np.float32).min)


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float, causal_block: int | None = None
) -> jax.Array:
    """Grouped-query attention softmax(q k^T * scale, masked) v -> [B, T, N * hd].

    q [B, T, N, hd]; k, v [B, S, K, hd] with N a multiple of K (query head n uses key head n // (N/K));
    mask: bool [B|1, T|1, S] (True = attend). Scores and softmax in float32 (matmuls
    accumulate in float32 whatever the activation dtype); the probabilities are cast to the value
    dtype for the value product and normalised after it. A row with no visible key yields a uniform
    average instead of NaN.

    causal_block: when the mask is causal (query i never sees key j > i, and T == S), process queries
    in blocks of this size against only the keys up to the block's end; skipping the masked upper
    triangle saves work and changes no value.

    Which kernel runs (docs/attention.md): cuDNN's fused attention on a GPU when the inputs fit it
    (`fused_attention_fits`); otherwise matmuls in a heads-major layout for many queries, and products
    and sums over the cache as it lies for a single decoded token.
    """
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape:
        raise ValueError(
            f"attention needs q [B, T, N, hd] and k, v [B, S, K, hd] of one shape; got q {q.shape}, "
            f"k {k.shape}, v {v.shape}"
        )
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {q.shape} and k {k.shape} must agree on batch and head_dim")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3-d [B|1, T|1, S], got shape {mask.shape}")
    with jax.named_scope("attention"):  # names the kernels for profiles (experiments/bench_model.py --profile)
        return _attention(q, k, v, mask, scale, causal_block)


def _attention(q, k, v, mask, scale, causal_block):
    batch, t_len, n_heads, head_dim = q.shape
    s_len = k.shape[1]
    causal = causal_block is not None and t_len == s_len
    if fused_attention_fits(q, k):
        return _cudnn_attention(q, k, v, mask, scale, causal).reshape(batch, t_len, n_heads * head_dim)
    if t_len == 1:
        return _attention_one_query(q, k, v, jnp.broadcast_to(mask, (mask.shape[0], 1, s_len)), scale)
    # Heads-major layout, transposed once for all blocks: each block is then two batched matmuls over
    # contiguous [queries, hd] x [keys, hd] slabs, which XLA's CPU backend runs as one fused kernel
    # with the softmax (BENCHMARKS.md, "Model").
    kv_heads = k.shape[2]
    groups = n_heads // kv_heads
    qh = q.reshape(batch, t_len, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    if not causal or t_len <= causal_block:
        out = _attention_heads_major(qh, kh, vh, mask, scale)
    else:
        mask = jnp.broadcast_to(mask, (mask.shape[0], t_len, s_len))
        out = jnp.concatenate(
            [
                _attention_heads_major(
                    qh[:, :, :, start : start + causal_block],
                    kh[:, :, : start + causal_block],
                    vh[:, :, : start + causal_block],
                    mask[:, start : start + causal_block, : start + causal_block],
                    scale,
                )
                for start in range(0, t_len, causal_block)
            ],
            axis=3,
        )
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, t_len, n_heads * head_dim)


def _softmax_parts(scores: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Unnormalised probabilities exp(s - max) and their sum; dividing the (smaller) output by the sum
    afterwards saves a pass over the [.., T, S] probabilities."""
    probs = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    return probs, jnp.sum(probs, axis=-1, keepdims=True)


def _mask_bias(mask: jax.Array) -> jax.Array:
    """0 where attended, float32's minimum elsewhere. Added rather than selected, so XLA's CPU backend
    fuses it into the score matmul's kernel; made per block from the boolean mask, so no float32
    copy of the whole [B, T, S] mask stays alive."""
    return jnp.where(mask, 0.0, _MASKED_BIAS).astype(jnp.float32)


def _attention_heads_major(q, k, v, mask, scale):
    """q [B, K, G, t, hd]; k, v [B, K, s, hd]; mask bool [B|1, t|1, s] -> [B, K, G, t, hd]."""
    # The scale goes on q where that rounds no worse than on the float32 scores (float32 q, or a power
    # of two): on the scores, XLA's CPU backend materialises it as a full-size operand of the kernel.
    on_q = q.dtype == jnp.float32 or math.frexp(scale)[0] == 0.5
    scores = jnp.einsum(
        "bkgtd,bksd->bkgts", q * jnp.asarray(scale, q.dtype) if on_q else q, k, preferred_element_type=jnp.float32
    )
    scores = (scores if on_q else scores * scale) + _mask_bias(mask)[:, None, None]
    probs, total = _softmax_parts(scores)
    out = jnp.einsum("bkgts,bksd->bkgtd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (out / total).astype(v.dtype)


def prefix_attention(
    q, k, v, mask, prefix_k, prefix_v, prefix_mask, scale: float, causal_block: int | None = None
) -> jax.Array:
    """Attention of G answers per prompt over their prompt's keys (shared, never copied) and their own.

    q [P, G, T, N, hd]; k, v [P, G, T, K, hd] (the answers' own keys and values); mask bool [P, G, T, T]
    over them (causal and their padding); prefix_k, prefix_v [P, S, K, hd]: the prompt's keys and values,
    read by all G answers; prefix_mask bool [P, S]: its real (not padding) slots. -> [P, G, T, N * hd].

    The same value as `attention` over the keys concat(prompt, answer) of each answer row (what the
    per-row update computes, the prompt copied G times), up to the order of float32 sums: the softmax
    is taken over the two key blocks together (one max, one sum), the prompt block as one matmul of all
    G x T answer queries against the S prompt keys. Its backward sums the G answers' gradients into the
    one copy of the prompt's keys and values. Matmuls in the heads-major layout of `attention`'s
    many-query path, float32 scores, probabilities cast to the value dtype for the value products.

    causal_block: `mask` is causal; answer queries go in blocks of this size, each against its own
    answer's keys up to the block's end only (as `attention` does), skipping most of the masked triangle.
    """
    prompts, group, t_len, n_heads, head_dim = q.shape
    kv_heads = k.shape[3]
    with jax.named_scope("prefix_attention"):
        on_q = q.dtype == jnp.float32 or math.frexp(scale)[0] == 0.5
        q = q * jnp.asarray(scale, q.dtype) if on_q else q
        # [P, K, G, g, T, hd] (query head n reads key head n // g): batch dimensions lead in every matmul, as
        # XLA's CPU backend needs for bfloat16 inputs with float32 accumulation
        qh = q.reshape(prompts, group, t_len, kv_heads, n_heads // kv_heads, head_dim).transpose(0, 3, 1, 4, 2, 5)
        kh, vh = k.transpose(0, 3, 1, 2, 4), v.transpose(0, 3, 1, 2, 4)  # [P, K, G, T, hd]
        prefix = (prefix_k.transpose(0, 2, 1, 3), prefix_v.transpose(0, 2, 1, 3), prefix_mask)  # [P, K, S, hd]
        scale = None if on_q else scale
        if causal_block is None or t_len <= causal_block:
            out = _prefix_attention_block(qh, kh, vh, mask, prefix, scale)
        else:
            out = jnp.concatenate(
                [
                    _prefix_attention_block(
                        qh[:, :, :, :, start : start + causal_block],
                        kh[:, :, :, : start + causal_block],
                        vh[:, :, :, : start + causal_block],
                        mask[:, :, start : start + causal_block, : start + causal_block],
                        prefix,
                        scale,
                    )
                    for start in range(0, t_len, causal_block)
                ],
                axis=4,
            )
        return out.transpose(0, 2, 4, 1, 3, 5).reshape(prompts, group, t_len, n_heads * head_dim)


def _prefix_attention_block(qh, kh, vh, mask, prefix, scale):
    """qh [P, K, G, g, t, hd] (scaled already unless `scale`); kh, vh [P, K, G, s, hd]; mask [P, G, t, s];
    prefix: (keys, values [P, K, S, hd], real slots [P, S]) -> [P, K, G, g, t, hd]."""
    pk, pv, prefix_mask = prefix
    prefix_scores = jnp.einsum("pkagtd,pksd->pkagts", qh, pk, preferred_element_type=jnp.float32)
    own_scores = jnp.einsum("pkagtd,pkasd->pkagts", qh, kh, preferred_element_type=jnp.float32)
    if scale is not None:
        prefix_scores, own_scores = prefix_scores * scale, own_scores * scale
    prefix_scores = prefix_scores + _mask_bias(prefix_mask)[:, None, None, None, None, :]
    own_scores = own_scores + _mask_bias(mask)[:, None, :, None]
    top = jnp.maximum(jnp.max(prefix_scores, axis=-1, keepdims=True), jnp.max(own_scores, axis=-1, keepdims=True))
    prefix_probs, own_probs = jnp.exp(prefix_scores - top), jnp.exp(own_scores - top)
    total = jnp.sum(prefix_probs, axis=-1, keepdims=True) + jnp.sum(own_probs, axis=-1, keepdims=True)
    out = jnp.einsum("pkagts,pksd->pkagtd", prefix_probs.astype(vh.dtype), pv, preferred_element_type=jnp.float32)
    out = out + jnp.einsum("pkagts,pkasd->pkagtd", own_probs.astype(vh.dtype), vh, preferred_element_type=jnp.float32)
    return (out / total).astype(vh.dtype)


def _attention_one_query(q, k, v, mask, scale):
    """q [B, 1, N, hd] against k, v [B, S, K, hd] as they lie, with products and sums instead of matmuls.

    A matmul would need each key head's [S, hd] slab contiguous, i.e. a transposed copy of the whole
    KV cache per layer and token, which costs more than this attention reads (BENCHMARKS.md, "Model").
    """
    batch, _, n_heads, head_dim = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(batch, 1, kv_heads, n_heads // kv_heads, head_dim).astype(jnp.float32) * scale
    scores = jnp.sum(q * k[:, :, :, None, :].astype(jnp.float32), axis=-1)  # [B, S, K, G]
    scores = scores + _mask_bias(mask)[:, 0, :, None, None]
    probs = jnp.exp(scores - jnp.max(scores, axis=1, keepdims=True))
    total = jnp.sum(probs, axis=1)[..., None]
    # Probabilities rounded to the value dtype, as in the matmul path (a no-op in float32).
    probs = probs.astype(v.dtype).astype(jnp.float32)
    out = jnp.sum(probs[..., None] * v[:, :, :, None, :].astype(jnp.float32), axis=1)  # [B, K, G, hd]
    return (out / total).astype(v.dtype).reshape(batch, 1, n_heads * head_dim)


# cuDNN's fused (flash) attention never materialises the [B, N, T, S] scores. Its limits (jax 0.10.2,
# docs/attention.md): float16/bfloat16 inputs, head_dim a multiple of 8 and at most 128 (256 from
# Hopper, compute capability 9.0, on), compute capability 8.0 or newer; with a bias (our mask) and
# gradients both sequence lengths must be even. G1JAX_FUSED_ATTENTION=0 turns it off.
_CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
FUSED_ATTENTION_ENV = "G1JAX_FUSED_ATTENTION"


def cudnn_attention_supports(backend: str, compute_capability, dtype, t_len: int, s_len: int, head_dim: int) -> bool:
    """The rule behind `fused_attention_fits`, on plain values (compute_capability like "9.0", or None).

    More than one query per row is required: a decoded token's attention is a matrix-vector product
    that `attention`'s own single-query path already does in one pass over the cache.
    """
    if backend != "gpu" or compute_capability is None:  # no CUDA device (a ROCm GPU has no cuDNN)
        return False
    major = int(str(compute_capability).split(".")[0])
    max_head_dim = 256 if major >= 9 else 128
    return (
        major >= 8
        and jnp.dtype(dtype) in _CUDNN_DTYPES
        and t_len > 1
        and t_len % 2 == 0
        and s_len % 2 == 0
        and head_dim % 8 == 0
        and head_dim <= max_head_dim
    )


def fused_attention_fits(q, k) -> bool:
    """Whether `attention` hands q [B, T, N, hd], k [B, S, K, hd] to cuDNN (a static, trace-time decision).

    Arrays or `jax.ShapeDtypeStruct`s. Decided by the default backend and its first device, so a
    computation placed on the CPU of a GPU machine should set G1JAX_FUSED_ATTENTION=0.
    """
    if os.environ.get(FUSED_ATTENTION_ENV, "1") == "0" or k.dtype != q.dtype:
        return False
    backend = jax.default_backend()
    capability = getattr(jax.devices()[0], "compute_capability", None) if backend == "gpu" else None
    return cudnn_attention_supports(backend, capability, q.dtype, q.shape[1], k.shape[1], q.shape[3])


def _cudnn_attention(q, k, v, mask, scale, causal):
    # The boolean mask becomes a [B|1, 1, T, S] additive bias inside jax (cuDNN needs full T and S);
    # `is_causal` lets the kernel skip the upper triangle as the CPU path's blocks do.
    mask = jnp.broadcast_to(mask.astype(bool), (mask.shape[0], q.shape[1], k.shape[1]))[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=causal, implementation="cudnn")
