"""Qwen2.5-VL for conditional generation: vision tower + Qwen2 LM + lm_head, as one NNX module tree.

Attribute paths mirror the checkpoint keys (`visual.blocks[i].attn.qkv`, `model.layers[i].self_attn.q_proj`,
`lm_head`), so loading is a name mapping (see loading.py).

Shapes are static: image grids are static Python tuples, image features are scattered into the
`<|image_pad|>` slots with a cumsum-gather, and the KV cache has a fixed length.

Entry points
* `model(input_ids, positions, attention_mask, pixel_values, image_grids)` -> logits [B, T, V] (float32)
* `model.hidden_states(...)` -> final-normed hidden [B, T, D]; `token_logprobs(model, hidden, targets)`
  turns them into per-token log-probs chunk by chunk without ever holding [B, T, V].
* `init_cache` / `model.prefill` / `model.decode_step`: static-size KV cache for sampling.
* `greedy_generate`: a compact greedy loop over that cache (tests and parity; the RL sampler reuses
  the same cache API).
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from g1jax.models.config import Qwen25VLConfig
from g1jax.models.layers import Linear
from g1jax.models.positions import get_rope_index
from g1jax.models.text import Qwen2Model
from g1jax.models.vision import VisionTransformer, layout_for, normalize_grids
from g1jax.sharding import gathered


class Qwen25VL(nnx.Module):
    def __init__(
        self,
        config: Qwen25VLConfig,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        remat: bool = False,
        freeze_vision: bool = False,
        rngs: nnx.Rngs | None,
    ):
        """dtype: activation/compute dtype; param_dtype: storage dtype of the parameters.

        remat: rematerialise each vision block and decoder layer in the backward pass.
        freeze_vision: stop gradients at the vision tower output (pair with `trainable_filter(True)`
        so the optimizer also leaves the tower alone).
        rngs: random initialisation (normal(0.02) weights, unit norms, zero biases); None builds an
        abstract model whose parameters are ShapeDtypeStructs (what the loader fills).
        """
        self.config = config
        self.dtype = dtype
        self.freeze_vision = freeze_vision
        self.visual = VisionTransformer(config.vision, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)
        self.model = Qwen2Model(config.text, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = Linear(
                config.text.hidden_size,
                config.text.vocab_size,
                bias=False,
                axes=("embed", "vocab"),
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )

    # ---------------------------------------------------------------- pieces
    def encode_images(self, pixel_values: jax.Array, image_grids) -> jax.Array:
        """[sum of patches, 1176] -> [sum of image tokens, hidden] (image order)."""
        features = self.visual(pixel_values, image_grids)
        return jax.lax.stop_gradient(features) if self.freeze_vision else features

    def embed(
        self, input_ids: jax.Array, pixel_values=None, image_grids=(), image_features=None, image_slots=None
    ) -> jax.Array:
        """Token embeddings with the image features written, in order, over the image slots.

        image_features: already encoded features [image tokens, D] (row-major over the batch) instead of
        pixel_values; the learner encodes each prompt's image once and repeats the features G times.
        image_slots: bool [B, T], where the features go; None: every `<|image_pad|>` token. A prompt and
        its sampled answer pass the prompt's slots, so an image-pad id in the answer stays a token.
        """
        embeds = self.model.embed_tokens(input_ids)
        if image_features is not None:
            features = image_features.astype(embeds.dtype)
        else:
            grids = normalize_grids(image_grids)
            if not grids:
                return embeds
            check_inputs(self.config, input_ids, None, None, pixel_values, grids)
            features = self.encode_images(pixel_values, grids).astype(embeds.dtype)
        num_features = features.shape[0]
        is_image = input_ids == self.config.image_token_id if image_slots is None else image_slots
        # Static-shape scatter: the k-th image slot (row-major over the batch) takes feature k.
        order = jnp.cumsum(is_image.reshape(-1)).reshape(is_image.shape) - 1
        gathered = jnp.take(features, jnp.clip(order, 0, num_features - 1), axis=0)
        return jnp.where(is_image[..., None], gathered, embeds)

    def lm_head_weight(self) -> jax.Array:
        """[hidden, vocab] output projection (the transposed embedding when tied)."""
        if self.lm_head is None:
            return gathered(self.model.embed_tokens.embedding).T
        return gathered(self.lm_head.kernel)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden [..., D] -> float32 logits (inputs in the compute dtype, accumulation in float32)."""
        weight = self.lm_head_weight().astype(hidden.dtype)
        return jnp.dot(hidden, weight, preferred_element_type=jnp.float32)

    # ---------------------------------------------------------------- full-sequence forward
    def hidden_states(
        self,
        input_ids,
        positions,
        attention_mask,
        pixel_values=None,
        image_grids=(),
        image_features=None,
        image_slots=None,
    ) -> jax.Array:
        """Causal forward over whole sequences; returns the final-normed hidden states [B, T, D]."""
        embeds = self.embed(input_ids, pixel_values, image_grids, image_features, image_slots)
        t = input_ids.shape[1]
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        mask = causal[None] & attention_mask.astype(bool)[:, None, :]
        hidden, _ = self.model(embeds, positions, mask)
        return hidden

    def shared_prefix_hidden_states(
        self, prompt_ids, prompt_positions, prompt_mask, answers, answer_mask, image_features
    ) -> tuple[jax.Array, jax.Array]:
        """Each prompt once, its G answers after it: (prompt hidden [P, S, D], answer hidden [P * G, T, D]).

        prompt_ids, prompt_mask [P, S] (left-padded), prompt_positions [3, P, S]; answers, answer_mask
        [P * G, T] (row p * G + g: answer g of prompt p); image_features [image tokens, D] for the
        prompts' image slots (None: text-only prompts). An answer's tokens continue its prompt's
        positions on all three M-RoPE axes (max valid position + 1, + 1, ...) and take no image
        features (an image-pad id in an answer is a token). The same hidden states as `hidden_states`
        on every row's concat(prompt, answer) with the prompt repeated G times, up to float32 sum order
        (`Qwen2Model.shared_prefix`), at the cost of one prompt per group.
        """
        prompts, rows, length = prompt_ids.shape[0], answers.shape[0], answers.shape[1]
        group = rows // prompts
        prompt_embeds = self.embed(prompt_ids, image_features=image_features)
        answer_embeds = self.model.embed_tokens(answers)
        valid = prompt_mask.astype(bool)
        start = jnp.max(jnp.where(valid[None], prompt_positions, jnp.iinfo(jnp.int32).min), axis=(0, 2)) + 1
        answer_positions = jnp.repeat(start, group)[:, None] + jnp.arange(length)[None, :]
        return self.model.shared_prefix(
            prompt_embeds,
            prompt_positions,
            valid,
            answer_embeds,
            jnp.broadcast_to(answer_positions[None], (3, rows, length)),
            answer_mask.astype(bool),
        )

    def __call__(self, input_ids, positions, attention_mask, pixel_values=None, image_grids=()) -> jax.Array:
        return self.logits(self.hidden_states(input_ids, positions, attention_mask, pixel_values, image_grids))

    # ---------------------------------------------------------------- KV-cache path
    def prefill(self, input_ids, positions, attention_mask, cache: KVCache, pixel_values=None, image_grids=()):
        """Write a (left-padded) prompt chunk into the cache at `cache.index`.

        positions [3, B, T] from `get_rope_index`. Returns (float32 logits of the last column [B, V], cache).
        The next token of each row continues at max(valid positions) + 1 = valid tokens + rope_delta.
        """
        t = input_ids.shape[1]
        embeds = self.embed(input_ids, pixel_values, image_grids)
        prompt_valid = attention_mask.astype(bool)
        valid = jax.lax.dynamic_update_slice(cache.valid, prompt_valid, (0, cache.index))
        hidden, kv = self._cached_forward(embeds, positions, valid, cache, t)
        last_pos = jnp.max(jnp.where(prompt_valid[None], positions, jnp.iinfo(jnp.int32).min), axis=(0, 2))
        cache = KVCache(
            keys=tuple(k for k, _ in kv),
            values=tuple(v for _, v in kv),
            valid=valid,
            index=cache.index + t,
            next_position=jnp.maximum(cache.next_position, last_pos + 1),
        )
        return self.logits(hidden[:, -1]), cache

    def decode_step(self, tokens: jax.Array, cache: KVCache):
        """One new token per row [B] at slot `cache.index`, position `cache.next_position` on all 3 axes."""
        embeds = self.model.embed_tokens(tokens[:, None])
        positions = jnp.broadcast_to(cache.next_position[None, :, None], (3, tokens.shape[0], 1))
        valid = jax.lax.dynamic_update_slice(cache.valid, jnp.ones((tokens.shape[0], 1), bool), (0, cache.index))
        hidden, kv = self._cached_forward(embeds, positions, valid, cache, 1)
        cache = KVCache(
            keys=tuple(k for k, _ in kv),
            values=tuple(v for _, v in kv),
            valid=valid,
            index=cache.index + 1,
            next_position=cache.next_position + 1,
        )
        return self.logits(hidden[:, 0]), cache

    def _cached_forward(self, embeds, positions, valid, cache, t):
        slots = cache.valid.shape[1]
        # Query i sits at slot index + i and sees filled slots up to itself.
        query_slot = cache.index + jnp.arange(t)
        mask = valid[:, None, :] & (jnp.arange(slots)[None, None, :] <= query_slot[None, :, None])
        return self.model(embeds, positions, mask, tuple(zip(cache.keys, cache.values)), cache.index)


@flax.struct.dataclass
class KVCache:
    """Static-size cache shared by all rows (prompts are left-padded so every row writes at one index).

    keys/values: per layer [B, S_max, KV heads, head_dim]; valid [B, S_max]: slot holds a real token;
    index: next slot to write; next_position [B]: M-RoPE position of each row's next token.
    """

    keys: tuple
    values: tuple
    valid: jax.Array
    index: jax.Array
    next_position: jax.Array


def init_cache(config: Qwen25VLConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    t = config.text
    shape = (batch, max_len, t.num_key_value_heads, t.head_dim)
    layers = range(t.num_hidden_layers)
    return KVCache(
        keys=tuple(jnp.zeros(shape, dtype) for _ in layers),
        values=tuple(jnp.zeros(shape, dtype) for _ in layers),
        valid=jnp.zeros((batch, max_len), bool),
        index=jnp.zeros((), jnp.int32),
        next_position=jnp.zeros((batch,), jnp.int32),
    )


# -------------------------------------------------------------------- log-probs
def without_vision_ids(config: Qwen25VLConfig, logits: jax.Array) -> jax.Array:
    """float32 logits [..., V] with the vision special ids at the float32 floor: an answer is text.

    The sampler draws from this distribution and the update scores answers under it, so the two agree.
    A finite floor, not -inf: it has probability 0 all the same, and 0 * floor keeps the entropy's
    value and gradient finite.
    """
    is_vision = jnp.zeros(logits.shape[-1], bool).at[jnp.asarray(config.vision_special_ids)].set(True)
    return jnp.where(is_vision, jnp.finfo(jnp.float32).min, logits)


def token_logprobs(
    model: Qwen25VL,
    hidden: jax.Array,
    targets: jax.Array,
    *,
    chunk_size: int = 256,
    temperature: float = 1.0,
    return_entropy: bool = False,
    text_only: bool = False,
):
    """log p(targets[b, t] | hidden[b, t]) in float32, [B, T] (and the entropy [B, T] if asked).

    A scan over sequence chunks applies lm_head + log-softmax to [B, chunk, V] at a time; the chunk
    body is rematerialised, so the backward pass does not keep every chunk's logits either.
    For next-token log-probs pass hidden[:, :-1] and input_ids[:, 1:].
    text_only: the distribution the sampler draws answers from (`without_vision_ids`).
    """
    if hidden.ndim != 3 or targets.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be [B, T, D] and targets [B, T]; got {hidden.shape} and {targets.shape}")
    batch, length, dim = hidden.shape
    chunk = max(1, min(chunk_size, length))
    chunks = -(-length // chunk)
    pad = chunks * chunk - length
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(batch, chunks, chunk, dim).swapaxes(0, 1)
    y = jnp.pad(targets, ((0, 0), (0, pad))).reshape(batch, chunks, chunk).swapaxes(0, 1)
    weight = model.lm_head_weight().astype(hidden.dtype)

    @jax.checkpoint
    def chunk_stats(h_chunk, y_chunk):
        logits = jnp.dot(h_chunk, weight, preferred_element_type=jnp.float32) / temperature
        if text_only:
            logits = without_vision_ids(model.config, logits)
        logz = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, y_chunk[..., None], axis=-1)[..., 0] - logz
        entropy = logz - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1)
        return picked, entropy

    def body(carry, xs):
        return carry, chunk_stats(*xs)

    _, (logp, entropy) = jax.lax.scan(body, None, (h, y))
    logp = logp.swapaxes(0, 1).reshape(batch, chunks * chunk)[:, :length]
    if not return_entropy:
        return logp
    return logp, entropy.swapaxes(0, 1).reshape(batch, chunks * chunk)[:, :length]


# -------------------------------------------------------------------- parameter filters
def trainable_filter(freeze_vision: bool = False):
    """nnx filter for the optimizer's `wrt`: all Params, or all but the vision tower's."""
    if freeze_vision:
        return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("visual")))
    return nnx.Param


# -------------------------------------------------------------------- host-side input checks
def check_inputs(
    config: Qwen25VLConfig, input_ids, positions=None, attention_mask=None, pixel_values=None, image_grids=()
) -> tuple[tuple[int, int, int], ...]:
    """Validate shapes and the image-token count on the host (a clear error instead of a trace failure).

    Returns the normalised grids. Values that are already traced are only shape-checked.
    """
    grids = normalize_grids(image_grids)
    if len(input_ids.shape) != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    batch, seq = input_ids.shape
    if positions is not None and tuple(positions.shape) != (3, batch, seq):
        raise ValueError(f"positions must be [3, {batch}, {seq}] (t, h, w axes), got {tuple(positions.shape)}")
    if attention_mask is not None and tuple(attention_mask.shape) != (batch, seq):
        raise ValueError(f"attention_mask must be [{batch}, {seq}], got {tuple(attention_mask.shape)}")
    if grids:
        if pixel_values is None:
            raise ValueError("image_grids given without pixel_values")
        layouts = [layout_for(config.vision, g) for g in grids]
        patches = sum(layout.num_patches for layout in layouts)
        if tuple(pixel_values.shape) != (patches, config.vision.patch_features):
            raise ValueError(
                f"pixel_values must be [{patches}, {config.vision.patch_features}] for image grids "
                f"{grids}, got {tuple(pixel_values.shape)}"
            )
        if not isinstance(input_ids, jax.core.Tracer):
            found = int((np.asarray(input_ids) == config.image_token_id).sum())
            expected = sum(layout.num_tokens for layout in layouts)
            if found != expected:
                raise ValueError(
                    f"input_ids hold {found} image tokens (id {config.image_token_id}) but the image "
                    f"grids {grids} produce {expected} features"
                )
    elif pixel_values is not None:
        raise ValueError("pixel_values given without image_grids")
    return grids


# -------------------------------------------------------------------- jitted entry points
# Module-level jits, so every caller shares one compilation per (model structure, shapes, grids);
# the public wrappers validate on the host first.
@functools.partial(nnx.jit, static_argnames=("image_grids",))
def _forward(model, input_ids, positions, attention_mask, pixel_values, image_grids):
    return model(input_ids, positions, attention_mask, pixel_values, image_grids)


@functools.partial(nnx.jit, static_argnames=("image_grids",))
def _hidden_states(model, input_ids, positions, attention_mask, pixel_values, image_grids):
    return model.hidden_states(input_ids, positions, attention_mask, pixel_values, image_grids)


@functools.partial(nnx.jit, static_argnames=("image_grids",))
def _encode_images(model, pixel_values, image_grids):
    return model.encode_images(pixel_values, image_grids)


def forward_jit(model: Qwen25VL, input_ids, positions, attention_mask, pixel_values=None, image_grids=()):
    """Jitted `model(...)` -> float32 logits [B, T, V]."""
    grids = check_inputs(model.config, input_ids, positions, attention_mask, pixel_values, image_grids)
    return _forward(model, input_ids, positions, attention_mask, pixel_values, grids)


def hidden_states_jit(model: Qwen25VL, input_ids, positions, attention_mask, pixel_values=None, image_grids=()):
    """Jitted `model.hidden_states(...)` -> [B, T, D]."""
    grids = check_inputs(model.config, input_ids, positions, attention_mask, pixel_values, image_grids)
    return _hidden_states(model, input_ids, positions, attention_mask, pixel_values, grids)


def encode_images_jit(model: Qwen25VL, pixel_values, image_grids):
    """Jitted `model.encode_images(...)` -> [image tokens, D]."""
    grids = normalize_grids(image_grids)
    if not grids:
        raise ValueError("encode_images needs at least one image grid")
    return _encode_images(model, pixel_values, grids)


# -------------------------------------------------------------------- greedy generation
@functools.partial(nnx.jit, static_argnames=("image_grids", "max_new_tokens", "cache_len", "cache_dtype"))
def _greedy_jit(
    model, input_ids, positions, attention_mask, pixel_values, image_grids, max_new_tokens, cache_len, cache_dtype
):
    cache = init_cache(model.config, input_ids.shape[0], cache_len, cache_dtype)
    logits, cache = model.prefill(input_ids, positions, attention_mask, cache, pixel_values, image_grids)
    first = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def step(carry, _):
        token, cache = carry
        logits, cache = model.decode_step(token, cache)
        nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return (nxt, cache), (nxt, logits)

    (_, _), (rest, step_logits) = jax.lax.scan(step, (first, cache), None, length=max_new_tokens - 1)
    tokens = jnp.concatenate([first[:, None], rest.swapaxes(0, 1)], axis=1)
    all_logits = jnp.concatenate([logits[:, None], step_logits.swapaxes(0, 1)], axis=1)
    return tokens, all_logits


def greedy_generate(
    model: Qwen25VL,
    input_ids,
    attention_mask=None,
    pixel_values=None,
    image_grids=(),
    *,
    max_new_tokens: int,
    positions=None,
    cache_len: int | None = None,
    cache_dtype=None,
):
    """Greedy continuation of left-padded prompts through the KV cache (no stop tokens: a fixed length).

    Returns (tokens int32 [B, max_new_tokens], logits float32 [B, max_new_tokens, V]) where logits[:, i]
    is the distribution token i was picked from. Positions default to `get_rope_index` on the host.
    """
    input_ids = np.asarray(input_ids)
    attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    if not attention_mask[:, -1].all():
        raise ValueError("greedy_generate needs left-padded prompts: the last column must be a real token in every row")
    grids = check_inputs(model.config, input_ids, positions, attention_mask, pixel_values, image_grids)
    if positions is None:
        positions, _ = get_rope_index(
            input_ids,
            grids,
            attention_mask,
            image_token_id=model.config.image_token_id,
            spatial_merge_size=model.config.vision.spatial_merge_size,
        )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    cache_len = input_ids.shape[1] + max_new_tokens if cache_len is None else cache_len
    if cache_len < input_ids.shape[1] + max_new_tokens - 1:
        raise ValueError(f"cache_len {cache_len} cannot hold {input_ids.shape[1]} prompt + {max_new_tokens} new tokens")
    return _greedy_jit(
        model,
        jnp.asarray(input_ids, jnp.int32),
        jnp.asarray(positions, jnp.int32),
        jnp.asarray(attention_mask, jnp.int32),
        pixel_values,
        grids,
        max_new_tokens,
        cache_len,
        jnp.dtype(cache_dtype or model.dtype),
    )
