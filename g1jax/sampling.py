"""Batched KV-cache sampling with the training model's own code (no second implementation).

One jitted call per rollout:

    prefill   P left-padded prompts (vision tower + prompt tokens) into a static KV cache, once each
    broadcast the cache and the last logits G times (row p*G + g is sample g of prompt p)
    decode    a `lax.while_loop` of `decode_step`s that stops when every row has emitted a stop token
              or `max_new_tokens` is reached; each row advances its own M-RoPE position

It returns the sampled tokens and their log-probs [B, L], never logits [B, T, V]. The log-prob of a
token is taken from the full-vocabulary, temperature-scaled distribution without the vision special
ids (an answer is text: `without_vision_ids`; top-k / top-p only choose which tokens may be drawn),
which is what the trainer recomputes with `token_logprobs(..., temperature=T, text_only=True)`: with
top_k = 0 and top_p = 1 (the default) sampler and trainer agree.

Row keys are per row (`row_keys[b]`, folded with the step), so a row's sample does not depend on
which other rows share its batch or how much left padding its prompt has.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from g1jax.models.config import Qwen25VLConfig
from g1jax.models.qwen25vl import KVCache, init_cache, without_vision_ids
from g1jax.tokenizer import STOP_IDS


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """Static sampling settings (hashable: one compile per distinct config).

    temperature 0 means greedy. stop_ids end a row (the stop token is kept in the completion);
    pad_id fills the slots after it. cache_dtype None: the model's compute dtype.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_ids: tuple[int, ...] = STOP_IDS
    pad_id: int = STOP_IDS[1]
    cache_dtype: str | None = None

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not self.stop_ids:
            raise ValueError("stop_ids must name at least one token")
        object.__setattr__(self, "stop_ids", tuple(int(t) for t in self.stop_ids))


@flax.struct.dataclass
class Samples:
    """What one sampling call returns (all [B, L] with B = prompts * group_size, L = max_new_tokens).

    tokens: sampled ids, `pad_id` after the stop token; logprobs: float32 log-prob of each sampled
    token (0 where masked); mask: True on completion tokens, the stop token included; lengths [B];
    truncated [B]: the row hit max_new_tokens without a stop token.
    """

    tokens: jax.Array
    logprobs: jax.Array
    mask: jax.Array
    lengths: jax.Array
    truncated: jax.Array


@flax.struct.dataclass
class _LoopState:
    step: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    last: jax.Array
    done: jax.Array
    lengths: jax.Array
    cache: KVCache


def _choose(logits: jax.Array, keys: jax.Array, step, config: SamplingConfig, model_config: Qwen25VLConfig):
    """Next token per row and its log-prob under the temperature-scaled text distribution (greedy: temperature 1)."""
    scaled = without_vision_ids(model_config, logits.astype(jnp.float32) / (config.temperature or 1.0))
    logp_all = jax.nn.log_softmax(scaled, axis=-1)
    if config.temperature == 0:
        token = jnp.argmax(scaled, axis=-1)
    else:
        allowed = scaled
        if config.top_k:
            kth = jax.lax.top_k(scaled, min(config.top_k, scaled.shape[-1]))[0][:, -1:]
            allowed = jnp.where(scaled >= kth, allowed, -jnp.inf)
        if config.top_p < 1:
            order = jnp.argsort(-allowed, axis=-1)
            sorted_probs = jnp.take_along_axis(jax.nn.softmax(allowed, axis=-1), order, axis=-1)
            # keep a token while the mass strictly before it is below top_p (the top token always stays)
            keep_sorted = (jnp.cumsum(sorted_probs, axis=-1) - sorted_probs) < config.top_p
            keep = jnp.zeros_like(keep_sorted).at[jnp.arange(keep_sorted.shape[0])[:, None], order].set(keep_sorted)
            allowed = jnp.where(keep, allowed, -jnp.inf)
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
        token = jax.vmap(jax.random.categorical)(step_keys, allowed)
    token = token.astype(jnp.int32)
    return token, jnp.take_along_axis(logp_all, token[:, None], axis=-1)[:, 0]


def _repeat_rows(tree, times: int):
    """Repeat every batched leaf `times` times along axis 0 (row p -> rows p*times ... p*times+times-1)."""
    if times == 1:
        return tree
    return jax.tree.map(lambda x: jnp.repeat(x, times, axis=0) if x.ndim else x, tree)


def sample_tokens(
    model,
    input_ids,
    positions,
    attention_mask,
    pixel_values,
    row_keys,
    *,
    image_grids,
    group_size: int,
    config: SamplingConfig,
) -> Samples:
    """Traceable body of `sample` (call it inside your own jit, e.g. a fused rollout)."""
    prompts, prompt_len = input_ids.shape
    length = config.max_new_tokens
    rows = prompts * group_size
    cache_dtype = jnp.dtype(config.cache_dtype) if config.cache_dtype else model.dtype
    cache = init_cache(model.config, prompts, prompt_len + length, cache_dtype)
    logits, cache = model.prefill(input_ids, positions, attention_mask, cache, pixel_values, image_grids)
    # The prompt's cache is computed once and broadcast to its G samples.
    cache = KVCache(
        keys=_repeat_rows(cache.keys, group_size),
        values=_repeat_rows(cache.values, group_size),
        valid=_repeat_rows(cache.valid, group_size),
        index=cache.index,
        next_position=_repeat_rows(cache.next_position, group_size),
    )
    logits = _repeat_rows(logits, group_size)
    stop_ids = jnp.asarray(config.stop_ids, jnp.int32)

    token, logp = _choose(logits, row_keys, 0, config, model.config)
    state = _LoopState(
        step=jnp.ones((), jnp.int32),
        tokens=jnp.full((rows, length), config.pad_id, jnp.int32).at[:, 0].set(token),
        logprobs=jnp.zeros((rows, length), jnp.float32).at[:, 0].set(logp),
        last=token,
        done=jnp.isin(token, stop_ids),
        lengths=jnp.ones((rows,), jnp.int32),
        cache=cache,
    )

    def keep_going(s: _LoopState):
        return (s.step < length) & ~jnp.all(s.done)

    def decode(s: _LoopState):
        logits, cache = model.decode_step(s.last, s.cache)
        token, logp = _choose(logits, row_keys, s.step, config, model.config)
        token = jnp.where(s.done, config.pad_id, token)
        logp = jnp.where(s.done, 0.0, logp)
        tokens = jax.lax.dynamic_update_slice(s.tokens, token[:, None], (0, s.step))
        logprobs = jax.lax.dynamic_update_slice(s.logprobs, logp[:, None], (0, s.step))
        return _LoopState(
            step=s.step + 1,
            tokens=tokens,
            logprobs=logprobs,
            last=token,
            done=s.done | jnp.isin(token, stop_ids),
            lengths=s.lengths + (~s.done).astype(jnp.int32),
            cache=cache,
        )

    state = jax.lax.while_loop(keep_going, decode, state)
    mask = jnp.arange(length)[None, :] < state.lengths[:, None]
    return Samples(
        tokens=state.tokens, logprobs=state.logprobs, mask=mask, lengths=state.lengths, truncated=~state.done
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "image_grids", "group_size", "config"))
def _sample_jit(
    graphdef, params, input_ids, positions, attention_mask, pixel_values, row_keys, *, image_grids, group_size, config
):
    model = nnx.merge(graphdef, *params) if isinstance(params, tuple) else nnx.merge(graphdef, params)
    return sample_tokens(
        model,
        input_ids,
        positions,
        attention_mask,
        pixel_values,
        row_keys,
        image_grids=image_grids,
        group_size=group_size,
        config=config,
    )


def sample(
    graphdef,
    params,
    input_ids,
    positions,
    attention_mask,
    pixel_values,
    row_keys,
    *,
    image_grids,
    group_size: int,
    config: SamplingConfig,
) -> Samples:
    """Sample `group_size` completions for each of P left-padded prompts (jitted, one compile per shape/config).

    graphdef, params: `nnx.split(model)` (params may be a tuple of states, e.g. trainable and frozen
    parameters). input_ids / attention_mask [P, T], positions [3, P, T]
    (`get_rope_index`), pixel_values [patches of all P images, 1176] with static `image_grids`
    (or None / () for text-only prompts), row_keys: a key array [P * group_size].
    """
    prompts = input_ids.shape[0]
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if row_keys.shape != (prompts * group_size,):
        raise ValueError(
            f"row_keys must be a key array of shape [{prompts * group_size}] "
            f"(prompts x group_size), got {row_keys.shape}"
        )
    return _sample_jit(
        graphdef,
        params,
        input_ids,
        positions,
        attention_mask,
        pixel_values,
        row_keys,
        image_grids=tuple(image_grids or ()),
        group_size=group_size,
        config=config,
    )
