"""Qwen2 language model of Qwen2.5-VL (`model.*`): GQA with q/k/v biases, M-RoPE, RMSNorm, SwiGLU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from g1jax.models.config import TextConfig
from g1jax.models.layers import (
    Embed,
    Linear,
    RMSNorm,
    SwiGLU,
    apply_rotary,
    attention,
    inverse_frequencies,
    prefix_attention,
    remat_call,
)
from g1jax.sharding import constrain_rows

# Uncached (full-sequence) path, where the mask is causal: queries go in at most 8 blocks of at least
# 64 tokens, each against the keys up to its end, skipping most of the masked upper triangle
# (speed-up: BENCHMARKS.md, "Model"); at most 8 blocks keep the unrolled graph small.
MAX_CAUSAL_BLOCKS = 8
MIN_CAUSAL_BLOCK = 64


def mrope_cos_sin(positions: jax.Array, cfg: TextConfig, dtype) -> tuple[jax.Array, jax.Array]:
    """positions int [3, B, T] (t, h, w) -> cos, sin [B, T, head_dim] in `dtype`.

    Frequency slot i takes its angle from axis 0 for the first mrope_section[0] slots, axis 1 for the
    next mrope_section[1], axis 2 for the rest; angles are computed in float32 and cast to the
    activation dtype before use (transformers does the same, which matters for bf16 parity).
    """
    inv_freq = jnp.asarray(inverse_frequencies(cfg.rope_theta, cfg.head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [3, B, T, head_dim/2]
    bounds = [0]
    for size in cfg.mrope_section:
        bounds.append(bounds[-1] + size)
    angles = jnp.concatenate([angles[axis, ..., bounds[axis] : bounds[axis + 1]] for axis in range(3)], axis=-1)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


class Qwen2Attention(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs | None):
        d, hd = cfg.hidden_size, cfg.head_dim
        layer = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = Linear(d, cfg.num_attention_heads * hd, bias=True, axes=("embed", "q_heads"), **layer)
        self.k_proj = Linear(d, cfg.num_key_value_heads * hd, bias=True, axes=("embed", "kv_heads"), **layer)
        self.v_proj = Linear(d, cfg.num_key_value_heads * hd, bias=True, axes=("embed", "kv_heads"), **layer)
        self.o_proj = Linear(cfg.num_attention_heads * hd, d, bias=False, axes=("q_heads", "embed"), **layer)
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, hd

    def __call__(self, x, cos, sin, mask, kv=None, write_index=None):
        """x [B, T, D]; cos/sin [B, T, hd]; mask bool [B, T, S].

        Without `kv`, attends over its own T keys (S = T). With `kv` = (keys, values) [B, S_max, K, hd],
        writes this chunk's keys/values at slot `write_index` and attends over the whole cache
        (S = S_max; the mask hides unwritten and padding slots). Returns (out, new kv or None).
        """
        t = x.shape[1]
        q, k, v = self._heads(x, cos, sin)
        if kv is not None:
            cache_k, cache_v = kv
            start = (0, write_index, 0, 0)
            cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
            cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
            kv = (cache_k, cache_v)
            k, v = cache_k.astype(q.dtype), cache_v.astype(q.dtype)
            out = attention(q, k, v, mask, self.head_dim**-0.5)
        else:
            block = max(MIN_CAUSAL_BLOCK, -(-t // MAX_CAUSAL_BLOCKS))
            out = attention(q, k, v, mask, self.head_dim**-0.5, causal_block=block)
        return self.o_proj(out), kv

    def _heads(self, x, cos, sin):
        """x [B, T, D] -> rotated q [B, T, N, hd], rotated k and v [B, T, K, hd]."""
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def shared_prefix(self, prompt, answers, rope, masks):
        """Prompts and their G answers each, every prompt computed once (`Qwen2Model.shared_prefix`).

        prompt [P, S, D], answers [P * G, T, D]; rope: (prompt cos, sin [P, S, hd], answer cos, sin
        [P * G, T, hd]); masks: (prompt causal mask [P, S, S], the prompt's real slots [P, S], the
        answers' causal mask over themselves [P * G, T, T]). Returns (prompt out, answer out).
        """
        prompt_cos, prompt_sin, answer_cos, answer_sin = rope
        prompt_mask, prompt_valid, answer_mask = masks
        q, k, v = self._heads(prompt, prompt_cos, prompt_sin)
        s = prompt.shape[1]
        block = max(MIN_CAUSAL_BLOCK, -(-s // MAX_CAUSAL_BLOCKS))
        prompt_out = attention(q, k, v, prompt_mask, self.head_dim**-0.5, causal_block=block)
        prompts, (rows, t, _) = prompt.shape[0], answers.shape
        group = rows // prompts
        aq, ak, av = self._heads(answers, answer_cos, answer_sin)
        answer_out = prefix_attention(
            aq.reshape(prompts, group, t, *aq.shape[2:]),
            ak.reshape(prompts, group, t, *ak.shape[2:]),
            av.reshape(prompts, group, t, *av.shape[2:]),
            answer_mask.reshape(prompts, group, t, t),
            k,
            v,
            prompt_valid,
            self.head_dim**-0.5,
            causal_block=max(MIN_CAUSAL_BLOCK, -(-t // MAX_CAUSAL_BLOCKS)),
        )
        return self.o_proj(prompt_out), self.o_proj(answer_out.reshape(rows, t, -1))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs | None):
        self.self_attn = Qwen2Attention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mlp = SwiGLU(
            cfg.hidden_size,
            cfg.intermediate_size,
            bias=False,
            axes=("embed", "mlp"),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        norm = dict(eps=cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.input_layernorm = RMSNorm(cfg.hidden_size, **norm)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, **norm)

    def __call__(self, x, cos, sin, mask, kv=None, write_index=None):
        attn_out, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv, write_index)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv

    def shared_prefix(self, prompt, answers, rope, masks):
        """The layer on prompts [P, S, D] and their answers [P * G, T, D] (`Qwen2Model.shared_prefix`)."""
        prompt_attn, answer_attn = self.self_attn.shared_prefix(
            self.input_layernorm(prompt), self.input_layernorm(answers), rope, masks
        )
        prompt, answers = prompt + prompt_attn, answers + answer_attn
        prompt = prompt + self.mlp(self.post_attention_layernorm(prompt))
        answers = answers + self.mlp(self.post_attention_layernorm(answers))
        return prompt, answers


def _call_layer(layer, x, cos, sin, mask, kv, write_index):
    return layer(x, cos, sin, mask, kv, write_index)


class Qwen2Model(nnx.Module):
    def __init__(
        self, cfg: TextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: bool = False, rngs: nnx.Rngs | None
    ):
        self.config = cfg
        self.dtype = dtype
        self.remat = remat
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layers = nnx.List(
            [DecoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs) for _ in range(cfg.num_hidden_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, embeds, positions, mask, kv_caches=None, write_index=None):
        """embeds [B, T, D], positions [3, B, T], mask bool [B, T, S] -> (normed hidden [B, T, D], new caches).

        The mask must be causal (the language model always is); without caches S == T.
        """
        cos, sin = mrope_cos_sin(positions, self.config, embeds.dtype)
        # Remat only where a backward pass may follow: the cached path (prefill, decode) never takes gradients.
        call = remat_call if self.remat and kv_caches is None else _call_layer
        x = constrain_rows(embeds)
        new_caches = []
        for index, layer in enumerate(self.layers):
            kv = None if kv_caches is None else kv_caches[index]
            x, kv = call(layer, x, cos, sin, mask, kv, write_index)
            x = constrain_rows(x)
            new_caches.append(kv)
        return self.norm(x), (None if kv_caches is None else tuple(new_caches))

    def shared_prefix(
        self, prompt_embeds, prompt_positions, prompt_valid, answer_embeds, answer_positions, answer_valid
    ):
        """Prompts and G answers each, every prompt through the layers once: the shared-prefix update.

        prompt_embeds [P, S, D], prompt_positions [3, P, S], prompt_valid bool [P, S] (left padding
        False); answer_embeds [P * G, T, D] (row p * G + g: answer g of prompt p), answer_positions
        [3, P * G, T], answer_valid bool [P * G, T]. Returns the normed hidden states of the prompts
        [P, S, D] and of the answers [P * G, T, D]: those of `__call__` on each row's whole sequence
        concat(prompt, answer) with a causal mask, up to the order of float32 sums.

        In every layer the prompt's keys and values are computed once and read by all G answers
        (`layers.prefix_attention`): an answer token attends to its prompt's real tokens and causally
        to its own answer. The gradient of the G answers reaches the one prompt through those reads.
        """
        dtype = prompt_embeds.dtype
        causal_prompt = jnp.tril(jnp.ones((prompt_embeds.shape[1],) * 2, bool))
        causal_answer = jnp.tril(jnp.ones((answer_embeds.shape[1],) * 2, bool))
        masks = (
            causal_prompt[None] & prompt_valid[:, None, :],
            prompt_valid,
            causal_answer[None] & answer_valid[:, None, :],
        )
        rope = (
            *mrope_cos_sin(prompt_positions, self.config, dtype),
            *mrope_cos_sin(answer_positions, self.config, dtype),
        )
        prompt, answers = constrain_rows(prompt_embeds), constrain_rows(answer_embeds)
        for layer in self.layers:
            if self.remat:
                prompt, answers = remat_call(layer, prompt, answers, rope, masks, method="shared_prefix")
            else:
                prompt, answers = layer.shared_prefix(prompt, answers, rope, masks)
            prompt, answers = constrain_rows(prompt), constrain_rows(answers)
        return self.norm(prompt), self.norm(answers)
