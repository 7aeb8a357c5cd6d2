"""Qwen2.5-VL vision tower (`visual.*`): patch embed, 2D rotary, window/full attention, 2x2 merger.

Layout trick (all static per image grid, computed once on the host in numpy):
transformers permutes the merge units of an image window-major (`window_index`) and then attends
inside variable-length windows (`cu_window_seqlens`) or over whole frames (`cu_seqlens`). Here each
frame is laid out as a fixed number of *slots*: every window gets room for a full window of patches
(window_merge_units**2 merge units * 4 patches), partial windows at the right/bottom edge leave empty
slots, and windows that would be entirely empty are dropped (exactly as transformers deduplicates
them). The slot order with the empty slots removed is transformers' permuted order, so

* window attention = reshape to [windows, slots_per_window] + a key mask of filled slots;
* full attention = reshape to [frames, slots_per_frame] + the same key mask;
* the merger groups 4 consecutive slots (a merge unit is either wholly present or wholly absent);
* gathering the merged units back in processor order undoes the permutation (argsort(window_index)).

Images that share a grid are batched; distinct grids run as separate static groups.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from g1jax.models.config import VisionConfig
from g1jax.models.layers import Linear, RMSNorm, SwiGLU, apply_rotary, attention, inverse_frequencies, remat_call

VISION_NORM_EPS = 1e-6  # hard-coded in transformers for every vision RMSNorm (not the text eps)


@dataclasses.dataclass(frozen=True, eq=False)
class VisionLayout:
    """Host-side tables for one image grid (t, h, w) in patches."""

    grid: tuple[int, int, int]
    num_patches: int
    num_tokens: int  # merged tokens fed to the language model = t * h * w / merge**2
    slots_per_window: int
    windows_per_frame: int
    slot_patch: np.ndarray  # [slots] int32: index of the patch (processor order) in each slot, 0 if empty
    slot_filled: np.ndarray  # [slots] bool
    token_unit: np.ndarray  # [num_tokens] int32: merge unit (slot // 4) of each output token, processor order
    cos: np.ndarray  # [slots, head_dim] float32, rotary tables already in slot order
    sin: np.ndarray

    @property
    def num_slots(self) -> int:
        return self.slot_patch.shape[0]


@functools.lru_cache(maxsize=64)
def vision_layout(
    grid: tuple[int, int, int], merge: int, window_units: int, head_dim: int, rope_theta: float
) -> VisionLayout:
    t, h, w = (int(x) for x in grid)
    if t < 1 or h < merge or w < merge or h % merge or w % merge:
        raise ValueError(
            f"image grid {grid} must have t >= 1 and h, w positive multiples of spatial_merge_size {merge}"
        )
    gh, gw = h // merge, w // merge
    unit = merge * merge
    # Windows that contain at least one merge unit (transformers pads to a multiple of the window and
    # drops windows that end up empty, including the extra row/column added when already divisible).
    nwh, nww = -(-gh // window_units), -(-gw // window_units)
    wp = window_units * window_units * unit
    slots = t * nwh * nww * wp

    f, a, b, r, c, i, j = np.meshgrid(
        np.arange(t),
        np.arange(nwh),
        np.arange(nww),
        np.arange(window_units),
        np.arange(window_units),
        np.arange(merge),
        np.arange(merge),
        indexing="ij",
    )
    unit_row, unit_col = a * window_units + r, b * window_units + c
    filled = (unit_row < gh) & (unit_col < gw)
    patch = f * (h * w) + (unit_row * gw + unit_col) * unit + i * merge + j
    slot_patch = np.where(filled, patch, 0).reshape(-1).astype(np.int32)
    slot_filled = filled.reshape(-1)
    assert slot_patch.shape[0] == slots

    # Output token k (processor order) is merge unit k; find which slot group holds it.
    unit_of_patch = np.full((t * gh * gw,), -1, dtype=np.int64)
    filled_slots = np.flatnonzero(slot_filled)
    unit_of_patch[slot_patch[filled_slots] // unit] = filled_slots // unit
    assert (unit_of_patch >= 0).all()

    # 2D rotary: head_dim/2 angles = [h * inv_freq, w * inv_freq], duplicated for rotate-half.
    inv_freq = inverse_frequencies(rope_theta, head_dim // 2)
    hpos = (unit_row * merge + i).reshape(-1).astype(np.float32)
    wpos = (unit_col * merge + j).reshape(-1).astype(np.float32)
    angles = np.concatenate([hpos[:, None] * inv_freq, wpos[:, None] * inv_freq], axis=-1)
    angles = np.where(slot_filled[:, None], angles, 0.0).astype(np.float32)
    angles = np.concatenate([angles, angles], axis=-1)
    return VisionLayout(
        grid=(t, h, w),
        num_patches=t * h * w,
        num_tokens=t * gh * gw,
        slots_per_window=wp,
        windows_per_frame=nwh * nww,
        slot_patch=slot_patch,
        slot_filled=slot_filled,
        token_unit=unit_of_patch.astype(np.int32),
        cos=np.cos(angles),
        sin=np.sin(angles),
    )


def layout_for(cfg: VisionConfig, grid) -> VisionLayout:
    return vision_layout(
        tuple(int(x) for x in grid), cfg.spatial_merge_size, cfg.window_merge_units, cfg.head_dim, float(cfg.rope_theta)
    )


class PatchEmbed(nnx.Module):
    """Conv3d with kernel = stride = (2, 14, 14) is a matmul over the 1176 features of each patch."""

    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs | None):
        self.proj = Linear(
            cfg.patch_features,
            cfg.hidden_size,
            bias=False,
            axes=("vision_patch", "vision_embed"),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, patches: jax.Array) -> jax.Array:
        return self.proj(patches)


class VisionAttention(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs | None):
        layer = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.qkv = Linear(cfg.hidden_size, 3 * cfg.hidden_size, axes=("vision_embed", "vision_heads"), **layer)
        self.proj = Linear(cfg.hidden_size, cfg.hidden_size, axes=("vision_heads", "vision_embed"), **layer)
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim

    def __call__(
        self, x: jax.Array, cos: jax.Array, sin: jax.Array, key_filled: jax.Array, segment_slots: int
    ) -> jax.Array:
        """x [G, S, D]; attention inside consecutive segments of `segment_slots` slots (a window or a frame)."""
        images, slots, dim = x.shape
        qkv = self.qkv(x).reshape(images, slots, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        # Rotary in float32 whatever the activation dtype (transformers upcasts q and k here).
        cos32, sin32 = cos[None, :, None, :], sin[None, :, None, :]
        q = apply_rotary(q.astype(jnp.float32), cos32, sin32).astype(x.dtype)
        k = apply_rotary(k.astype(jnp.float32), cos32, sin32).astype(x.dtype)
        segments = images * (slots // segment_slots)

        def split(a):
            return a.reshape(segments, segment_slots, self.num_heads, self.head_dim)

        # Key mask per segment; frame-wide segments share one mask across images (broadcast, not tiled,
        # so a fused kernel's bias stays [1, 1, S, S] instead of one per image).
        mask = key_filled.reshape(-1, 1, segment_slots)
        if mask.shape[0] > 1:
            mask = jnp.tile(mask, (images, 1, 1))
        out = attention(split(q), split(k), split(v), mask, self.head_dim**-0.5)
        return self.proj(out.reshape(images, slots, dim))


class VisionBlock(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs | None):
        norm = dict(eps=VISION_NORM_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = RMSNorm(cfg.hidden_size, **norm)
        self.norm2 = RMSNorm(cfg.hidden_size, **norm)
        self.attn = VisionAttention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mlp = SwiGLU(
            cfg.hidden_size,
            cfg.intermediate_size,
            bias=True,
            axes=("vision_embed", "vision_mlp"),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x, cos, sin, key_filled, segment_slots: int):
        x = x + self.attn(self.norm1(x), cos, sin, key_filled, segment_slots)
        return x + self.mlp(self.norm2(x))


class ExactGELU(nnx.Module):
    """torch nn.GELU() is the erf form; jax.nn.gelu defaults to the tanh approximation."""

    def __call__(self, x):
        return jax.nn.gelu(x, approximate=False)


class PatchMerger(nnx.Module):
    """RMSNorm per patch, concatenate each 2x2 merge unit, Linear -> exact GELU -> Linear (keys mlp.0 / mlp.2)."""

    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs | None):
        merged = cfg.hidden_size * cfg.spatial_merge_size**2
        self.ln_q = RMSNorm(cfg.hidden_size, eps=VISION_NORM_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        layer = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mlp = nnx.List(
            [
                Linear(merged, merged, axes=("vision_merged", "vision_mlp"), **layer),
                ExactGELU(),
                Linear(merged, cfg.out_hidden_size, axes=("vision_mlp", "embed"), **layer),
            ]
        )
        self.merged = merged

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.ln_q(x)
        x = x.reshape(x.shape[0], -1, self.merged)
        for layer in self.mlp:
            x = layer(x)
        return x


class VisionTransformer(nnx.Module):
    def __init__(
        self,
        cfg: VisionConfig,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs | None,
    ):
        self.config = cfg
        self.dtype = dtype
        self.remat = remat
        self.patch_embed = PatchEmbed(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.blocks = nnx.List(
            [VisionBlock(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs) for _ in range(cfg.depth)]
        )
        self.merger = PatchMerger(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def encode_group(self, patches: jax.Array, grid) -> jax.Array:
        """patches [G, t*h*w, 1176] for G images of one grid (processor order) -> [G, tokens, out_hidden]."""
        layout = layout_for(self.config, grid)
        if patches.ndim != 3 or patches.shape[1:] != (layout.num_patches, self.config.patch_features):
            raise ValueError(
                f"patches for grid {layout.grid} must be [images, {layout.num_patches}, "
                f"{self.config.patch_features}], got {patches.shape}"
            )
        filled = jnp.asarray(layout.slot_filled)
        slots = jnp.take(patches.astype(self.dtype), jnp.asarray(layout.slot_patch), axis=1)
        slots = jnp.where(filled[None, :, None], slots, 0)
        x = self.patch_embed(slots)
        cos, sin = jnp.asarray(layout.cos), jnp.asarray(layout.sin)
        window_slots = layout.slots_per_window
        frame_slots = layout.slots_per_window * layout.windows_per_frame
        call = remat_call if self.remat else _call_block
        for index, block in enumerate(self.blocks):
            segment = frame_slots if index in self.config.fullatt_block_indexes else window_slots
            x = call(block, x, cos, sin, filled, segment_slots=segment)
        merged = self.merger(x)
        return jnp.take(merged, jnp.asarray(layout.token_unit), axis=1)

    def __call__(self, pixel_values: jax.Array, image_grids) -> jax.Array:
        """pixel_values [sum of patches, 1176] (images concatenated, processor order), static grids ((t,h,w), ...)
        -> merged features [sum of tokens, out_hidden] in image order, as transformers' `pooler_output`."""
        grids = normalize_grids(image_grids)
        layouts = [layout_for(self.config, g) for g in grids]
        total = sum(layout.num_patches for layout in layouts)
        if pixel_values.ndim != 2 or pixel_values.shape != (total, self.config.patch_features):
            raise ValueError(
                f"pixel_values must be [{total}, {self.config.patch_features}] for grids {grids}, "
                f"got {tuple(pixel_values.shape)}"
            )
        starts = np.cumsum([0] + [layout.num_patches for layout in layouts])
        per_image: list[jax.Array | None] = [None] * len(grids)
        for grid in dict.fromkeys(grids):  # distinct grids, first-seen order
            members = [k for k, g in enumerate(grids) if g == grid]
            n = layouts[members[0]].num_patches
            if members == list(range(members[0], members[-1] + 1)):  # consecutive (always, for one grid): reshape
                patches = pixel_values[starts[members[0]] : starts[members[-1] + 1]].reshape(len(members), n, -1)
            else:
                patches = jnp.stack([pixel_values[starts[k] : starts[k + 1]] for k in members])
            features = self.encode_group(patches, grid)
            if len(members) == len(grids):
                return features.reshape(-1, features.shape[-1])
            for row, k in enumerate(members):
                per_image[k] = features[row]
        return jnp.concatenate(per_image, axis=0)


def _call_block(block, x, cos, sin, filled, *, segment_slots):
    return block(x, cos, sin, filled, segment_slots)


def normalize_grids(image_grids) -> tuple[tuple[int, int, int], ...]:
    """((t, h, w), ...) as plain ints; accepts lists or an [N, 3] array (host values, never traced)."""
    if isinstance(image_grids, jax.core.Tracer):
        raise TypeError("image_grids must be static host values (a tuple of (t, h, w)), not a traced array")
    grids = np.asarray(image_grids, dtype=np.int64).reshape(-1, 3)
    return tuple(tuple(int(x) for x in g) for g in grids)
