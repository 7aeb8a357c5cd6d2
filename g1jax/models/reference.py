"""transformers (PyTorch) reference for parity checks: tiny random checkpoints, inputs, reference outputs.

Used by experiments/parity.py and tests/test_model.py; imports torch and transformers lazily (test
extra only), so the rest of g1jax never needs them.

Recipe (docs/model.md, "Parity"): every tensor randomised (norms 1 + noise, non-zero biases), a batch
with left padding, one row holding two images -- grids (1, 4, 6) and one larger than an attention
window -- and a text-only row; `mm_token_type_ids` passed to transformers so it builds 3-D positions.
"""

from __future__ import annotations

import json
import os

import numpy as np

from g1jax.constants import QWEN25_NUM_RANKED_TOKENS
from g1jax.models.config import Qwen25VLConfig


def _torch():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    import transformers

    return torch, transformers


def hf_config(config: Qwen25VLConfig):
    """transformers Qwen2_5_VLConfig from our config, via the v5 (nested) layout."""
    _, transformers = _torch()
    t, v = config.text, config.vision
    return transformers.Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=t.vocab_size,
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads,
            num_key_value_heads=t.num_key_value_heads,
            rms_norm_eps=t.rms_norm_eps,
            max_position_embeddings=t.max_position_embeddings,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": t.rope_theta,
                "mrope_section": list(t.mrope_section),
            },
            bos_token_id=t.bos_token_id,
            eos_token_id=t.eos_token_id,
            pad_token_id=t.pad_token_id,
        ),
        vision_config=dict(
            depth=v.depth,
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_heads=v.num_heads,
            in_channels=v.in_channels,
            patch_size=v.patch_size,
            temporal_patch_size=v.temporal_patch_size,
            spatial_merge_size=v.spatial_merge_size,
            window_size=v.window_size,
            out_hidden_size=v.out_hidden_size,
            fullatt_block_indexes=list(v.fullatt_block_indexes),
            tokens_per_second=v.tokens_per_second,
        ),
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        vision_start_token_id=config.vision_start_token_id,
        vision_end_token_id=config.vision_end_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
    )


def random_hf_model(config: Qwen25VLConfig, seed: int = 0):
    """A transformers Qwen2_5_VLForConditionalGeneration (float32, eager attention) with every tensor random.

    Matrices ~ N(0, 1/fan_in) so activations stay O(1) and logits are far from ties; the embedding
    ~ N(0, 0.25^2) so tied logits stay in a realistic range (|logit| of order 10, like real checkpoints);
    norm weights 1 + N(0, 0.1); biases N(0, 0.1) -- default init (norms 1, biases 0) would hide
    mapping bugs.
    """
    torch, transformers = _torch()
    torch.manual_seed(seed)
    cfg = hf_config(config)
    cfg._attn_implementation = "eager"
    model = transformers.Qwen2_5_VLForConditionalGeneration(cfg).float().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "norm" in name or "ln_q" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(0.25 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(fan_in))
    model.generation_config.eos_token_id = None  # fixed-length greedy continuations
    model.generation_config.pad_token_id = 0
    return model


def load_hf_model(directory: str, dtype: str = "float32"):
    torch, transformers = _torch()
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        directory, dtype=getattr(torch, dtype), attn_implementation="eager"
    ).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def parity_grids(config: Qwen25VLConfig) -> list[tuple[int, int, int]]:
    """(1, 4, 6): a non-divisible window tiling; and a square image 2x2 windows wide (larger than one window)."""
    side = 2 * config.vision.window_merge_units * config.vision.spatial_merge_size
    return [(1, 4, 6), (1, side, side)]


def parity_inputs(config: Qwen25VLConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Row 0: text, image A, text, image B, text. Row 1: text only, left-padded to the same length."""
    rng = np.random.RandomState(seed)
    merge = config.vision.spatial_merge_size
    grids = parity_grids(config)
    special = {config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id}
    text_vocab = min(config.text.vocab_size, QWEN25_NUM_RANKED_TOKENS)  # keep clear of the real special tokens

    def text(n):
        out = []
        while len(out) < n:
            tok = int(rng.randint(0, text_vocab))
            if tok not in special:
                out.append(tok)
        return out

    def image(grid):
        t, h, w = grid
        return (
            [config.vision_start_token_id]
            + [config.image_token_id] * (t * h * w // merge**2)
            + [config.vision_end_token_id]
        )

    row0 = text(3) + image(grids[0]) + text(3) + image(grids[1]) + text(4)
    row1 = text(11)
    length = len(row0)
    input_ids = np.zeros((2, length), np.int64)
    attention_mask = np.zeros((2, length), np.int64)
    input_ids[0] = row0
    attention_mask[0] = 1
    input_ids[1, length - len(row1) :] = row1
    attention_mask[1, length - len(row1) :] = 1
    patches = sum(t * h * w for t, h, w in grids)
    # float16-representable values: the fixture can store them exactly at half the size.
    pixel_values = rng.standard_normal((patches, config.vision.patch_features)).astype(np.float16).astype(np.float32)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": pixel_values,
        "image_grid_thw": np.asarray(grids, np.int64),
        "mm_token_type_ids": (input_ids == config.image_token_id).astype(np.int64) * attention_mask,
    }


def hf_outputs(model, inputs: dict[str, np.ndarray], max_new_tokens: int = 16) -> dict[str, np.ndarray]:
    """Positions, vision features, logits and a greedy continuation (tokens and step logits) from transformers.

    pixel_values are cast to the model's dtype; inputs without images (an empty image_grid_thw) run text only.
    """
    torch, _ = _torch()
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
    t["pixel_values"] = t["pixel_values"].to(next(model.parameters()).dtype)
    has_images = len(inputs["image_grid_thw"]) > 0
    images = dict(pixel_values=t["pixel_values"], image_grid_thw=t["image_grid_thw"]) if has_images else {}
    with torch.no_grad():
        positions, deltas = model.model.get_rope_index(
            t["input_ids"],
            t["mm_token_type_ids"],
            image_grid_thw=images.get("image_grid_thw"),
            attention_mask=t["attention_mask"],
        )
        if has_images:
            vision = model.model.get_image_features(t["pixel_values"], t["image_grid_thw"]).pooler_output
            vision = torch.cat(list(vision), dim=0).numpy()
        else:
            vision = np.zeros((0, model.config.text_config.hidden_size), np.float32)
        out = model(
            input_ids=t["input_ids"],
            attention_mask=t["attention_mask"],
            mm_token_type_ids=t["mm_token_type_ids"],
            **images,
        )
        model.model.rope_deltas = None  # never let a stale delta leak into generate (transformers PR #43952)
        generated = model.generate(
            input_ids=t["input_ids"],
            attention_mask=t["attention_mask"],
            mm_token_type_ids=t["mm_token_type_ids"],
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            **images,
        )
        model.model.rope_deltas = None
    return {
        "positions": positions.numpy().astype(np.int32),
        "rope_deltas": deltas.numpy().reshape(-1).astype(np.int32),
        "vision_features": vision,
        "logits": out.logits.numpy(),
        "greedy_tokens": generated.sequences[:, t["input_ids"].shape[1] :].numpy().astype(np.int32),
        "greedy_logits": torch.stack(generated.logits, dim=1).numpy(),  # [B, new tokens, V]
    }


def hf_float64_outputs(model64, inputs: dict[str, np.ndarray], max_new_tokens: int = 16) -> dict[str, np.ndarray]:
    """`hf_outputs` of a float64 copy of the reference, one row at a time on its valid tokens only.

    transformers' float64 path turns fully masked (padding) queries into NaN, which then reach the
    real tokens through the values, so each left-padded row runs alone; the results go back into
    the padded layout (logits of padding slots are 0 and never compared).
    """
    ids, mask = np.asarray(inputs["input_ids"]), np.asarray(inputs["attention_mask"]).astype(bool)
    grids = np.asarray(inputs["image_grid_thw"]).reshape(-1, 3)
    patch_starts = np.concatenate([[0], np.cumsum(grids.prod(axis=1))])
    image_id = model64.config.image_token_id
    logits, vision, tokens, step_logits = None, [], [], []
    next_image = 0
    for b in range(ids.shape[0]):
        row = ids[b, mask[b]][None]
        is_image = np.concatenate([[False], row[0] == image_id])
        images = int((is_image[1:] & ~is_image[:-1]).sum())  # image runs in this row
        row_grids = grids[next_image : next_image + images]
        row_inputs = {
            "input_ids": row,
            "attention_mask": np.ones_like(row),
            "pixel_values": np.asarray(inputs["pixel_values"])[
                patch_starts[next_image] : patch_starts[next_image + images]
            ],
            "image_grid_thw": row_grids,
            "mm_token_type_ids": (row == image_id).astype(np.int64),
        }
        next_image += images
        out = hf_outputs(model64, row_inputs, max_new_tokens)
        if logits is None:
            logits = np.zeros(ids.shape + out["logits"].shape[-1:], out["logits"].dtype)
        logits[b, mask[b]] = out["logits"][0]
        vision.append(out["vision_features"])
        tokens.append(out["greedy_tokens"][0])
        step_logits.append(out["greedy_logits"][0])
    return {
        "vision_features": np.concatenate(vision),
        "logits": logits,
        "greedy_tokens": np.stack(tokens),
        "greedy_logits": np.stack(step_logits),
    }


def save_reference(model, directory: str) -> None:
    """save_pretrained in float32 safetensors (legacy key names), as transformers writes hub checkpoints."""
    model.save_pretrained(directory, safe_serialization=True)
    with open(os.path.join(directory, "config.json")) as f:
        json.load(f)  # fail here, not later, if transformers wrote something unreadable


# ---------------------------------------------------------------------- the JAX side and the comparison
def jax_outputs(model, inputs: dict[str, np.ndarray], max_new_tokens: int = 16) -> dict[str, np.ndarray]:
    """The same quantities from our model, plus an uncached forward over prompt + greedy continuation."""
    import jax.numpy as jnp

    from g1jax.models.positions import get_rope_index
    from g1jax.models.qwen25vl import encode_images_jit, forward_jit, greedy_generate

    config = model.config
    grids = tuple(tuple(int(x) for x in g) for g in inputs["image_grid_thw"])
    ids, mask = np.asarray(inputs["input_ids"]), np.asarray(inputs["attention_mask"])
    pixel_values = jnp.asarray(inputs["pixel_values"], model.dtype)
    rope = dict(
        image_token_id=config.image_token_id,
        vision_start_token_id=config.vision_start_token_id,
        spatial_merge_size=config.vision.spatial_merge_size,
    )
    positions, deltas = get_rope_index(ids, grids, mask, **rope)
    features = encode_images_jit(model, pixel_values, grids)
    logits = forward_jit(
        model, jnp.asarray(ids, jnp.int32), jnp.asarray(positions), jnp.asarray(mask, jnp.int32), pixel_values, grids
    )
    tokens, step_logits = greedy_generate(model, ids, mask, pixel_values, grids, max_new_tokens=max_new_tokens)
    tokens = np.asarray(tokens)
    # Teacher-forced, uncached pass over prompt + continuation: must reproduce the cached step logits.
    full_ids = np.concatenate([ids, tokens], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(tokens)], axis=1)
    full_positions, _ = get_rope_index(full_ids, grids, full_mask, **rope)
    full_logits = forward_jit(
        model,
        jnp.asarray(full_ids, jnp.int32),
        jnp.asarray(full_positions),
        jnp.asarray(full_mask, jnp.int32),
        pixel_values,
        grids,
    )
    start = ids.shape[1] - 1
    return {
        "positions": positions,
        "rope_deltas": deltas,
        "vision_features": np.asarray(features, np.float32),
        "logits": np.asarray(logits),
        "greedy_tokens": tokens,
        "greedy_logits": np.asarray(step_logits),
        "uncached_greedy_logits": np.asarray(full_logits[:, start : start + max_new_tokens]),
    }


LOGIT_BOUND = 1e-4
VISION_BOUND = 1e-4
CACHE_BOUND = 1e-4
# Against a float64 reference, our float32 error may reach this multiple of transformers' own float32 error.
FLOAT32_SLACK = 2.0


def compare(
    ref: dict[str, np.ndarray], ours: dict[str, np.ndarray], attention_mask, exact: dict[str, np.ndarray] | None = None
) -> list[dict]:
    """Rows of {name, value, bound, ok}: the parity table. Padding positions are excluded from logits.

    ref: transformers in float32. Without `exact`, our float quantities must lie within the absolute
    bounds of ref. With `exact` (`hf_float64_outputs`), they are judged by their distance to it, which may
    reach max(bound, FLOAT32_SLACK x transformers' own float32 distance), and greedy tokens may differ from
    it in no more places than transformers' do: a checkpoint with large activations then does not fail on
    float32 rounding that transformers shows too, while a real mistake (far above rounding) still does.
    """
    valid = np.asarray(attention_mask).astype(bool)
    rows = []

    def row(name, value, bound):
        rows.append({"name": name, "value": float(value), "bound": float(bound), "ok": bool(value <= bound)})

    def distance(key, a, b):
        diff = np.abs(np.asarray(a[key], np.float64) - np.asarray(b[key], np.float64))
        return (diff[valid] if key == "logits" else diff).max()

    def float_row(name, key, bound):
        if exact is None:
            row(f"{name} (max abs diff)", distance(key, ref, ours), bound)
        else:
            row(
                f"{name} vs float64 (max abs diff)",
                distance(key, exact, ours),
                max(bound, FLOAT32_SLACK * distance(key, exact, ref)),
            )

    row("position ids (max abs diff)", np.abs(ref["positions"].astype(np.int64) - ours["positions"]).max(), 0)
    row("rope deltas (max abs diff)", np.abs(ref["rope_deltas"].astype(np.int64) - ours["rope_deltas"]).max(), 0)
    float_row("vision features", "vision_features", VISION_BOUND)
    float_row("logits, valid tokens", "logits", LOGIT_BOUND)
    if exact is None:
        row("greedy tokens (mismatches)", int((ref["greedy_tokens"] != ours["greedy_tokens"]).sum()), 0)
    else:
        row(
            "greedy tokens vs float64 (mismatches)",
            int((exact["greedy_tokens"] != ours["greedy_tokens"]).sum()),
            int((exact["greedy_tokens"] != ref["greedy_tokens"]).sum()),
        )
    if "greedy_logits" in ref:
        float_row("greedy step logits", "greedy_logits", LOGIT_BOUND)
    row(
        "cached vs uncached decoding logits (max abs diff)",
        np.abs(ours["greedy_logits"] - ours["uncached_greedy_logits"]).max(),
        CACHE_BOUND,
    )
    return rows


def format_rows(rows: list[dict], title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"{'check':<50} {'value':>12} {'bound':>10}  ok")
    for r in rows:
        lines.append(f"{r['name']:<50} {r['value']:>12.3e} {r['bound']:>10.1e}  {'yes' if r['ok'] else 'NO'}")
    return "\n".join(lines)
