"""Qwen2.5-VL prompts as token ids: the chat template, image-pad expansion, left-padded batches, stopping.

The template is rendered to text and tokenised in one piece, exactly as transformers'
processor does (tokenising turns separately could merge differently at the seams). Each
`<|image_pad|>` is then expanded to one token per merged 28x28 patch of its image.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from g1jax.constants import STOP_IDS
from g1jax.image_processing import grid_thw, num_image_tokens
from g1jax.tokenizer import Tokenizer

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
GENERATION_PROMPT = "<|im_start|>assistant\n"

# mm_token_type_ids values (transformers v5): what drives the 3-axis positions of image tokens.
TEXT_TOKEN = 0
IMAGE_TOKEN = 1

Message = Mapping[str, object]  # {"role": str, "content": str | [{"type": "image"} | {"type": "text", "text": str}]}


class EncodedPrompt(NamedTuple):
    input_ids: np.ndarray  # int32 [T], image pads expanded
    mm_token_type_ids: np.ndarray  # int32 [T]: 1 on image-pad tokens, else 0
    image_grid_thw: np.ndarray  # int32 [num_images, 3], patches per image in prompt order


class PromptBatch(NamedTuple):
    input_ids: np.ndarray  # int32 [B, L], left-padded with the pad id
    attention_mask: np.ndarray  # int32 [B, L]: 0 on padding
    mm_token_type_ids: np.ndarray  # int32 [B, L]
    image_grid_thw: np.ndarray  # int32 [total images, 3], rows in order, images in order within a row


def render_chat(messages: Sequence[Message], add_generation_prompt: bool = True, add_vision_id: bool = False) -> str:
    """The Qwen2-VL chat template as text, with one `<|image_pad|>` per image (unexpanded)."""
    if not messages:
        raise ValueError("a chat needs at least one message")
    parts = []
    if messages[0].get("role") != "system":
        parts.append(f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n")
    images_seen = 0
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise ValueError(f"message {index} has no role: {message!r}")
        if isinstance(content, str):
            text = content
        elif isinstance(content, Sequence):
            pieces = []
            for part in content:
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind == "image":
                    images_seen += 1
                    pieces.append((f"Picture {images_seen}: " if add_vision_id else "") + IMAGE_PLACEHOLDER)
                elif kind == "text" and isinstance(part.get("text"), str):
                    pieces.append(part["text"])
                else:
                    raise ValueError(f"message {index} has a content part that is neither an image nor text: {part!r}")
            text = "".join(pieces)
        else:
            kind = type(content).__name__
            raise ValueError(f"message {index} content must be a string or a list of parts, got {kind}")
        parts.append(f"<|im_start|>{role}\n{text}<|im_end|>\n")
    if add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return "".join(parts)


def encode_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Message],
    image_sizes: Sequence[tuple[int, int]] = (),
    add_generation_prompt: bool = True,
    prefill: str = "",
    add_vision_id: bool = False,
) -> EncodedPrompt:
    """Token ids of a chat; `image_sizes` gives (height, width) in pixels of each image part, in order.

    Sizes must be multiples of 28 (what `image_processing.preprocess` takes); an image of h x w
    becomes vision_start, (h/28)·(w/28) image pads, vision_end. This equals transformers'
    processor when it keeps the size (`smart_resize(h, w, ...) == (h, w)`; it upscales images
    below its min_pixels, e.g. 28x28 -> 56x56 with the class defaults). `prefill` is text the assistant
    turn starts with (e.g. "<think>"), tokenised together with the generation prompt.
    """
    if prefill and not add_generation_prompt:
        raise ValueError("prefill continues the assistant turn, so it needs add_generation_prompt=True")
    text = render_chat(messages, add_generation_prompt, add_vision_id) + prefill
    ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
    is_image_pad = ids == tokenizer.image_pad_id
    if is_image_pad.sum() != len(image_sizes):
        raise ValueError(
            f"the chat has {int(is_image_pad.sum())} <|image_pad|> tokens but {len(image_sizes)} image sizes were "
            "given (one size per image part; text must not contain the literal <|image_pad|>)"
        )
    repeats = np.ones(len(ids), dtype=np.int64)
    repeats[is_image_pad] = [num_image_tokens(h, w) for h, w in image_sizes]
    input_ids = np.repeat(ids, repeats)
    mm_token_type_ids = np.where(input_ids == tokenizer.image_pad_id, IMAGE_TOKEN, TEXT_TOKEN).astype(np.int32)
    grids = np.asarray([grid_thw(h, w) for h, w in image_sizes], dtype=np.int32).reshape(-1, 3)
    return EncodedPrompt(input_ids, mm_token_type_ids, grids)


def encode_prompt(
    tokenizer: Tokenizer,
    text: str,
    image_sizes: Sequence[tuple[int, int]] = (),
    system: str = DEFAULT_SYSTEM_PROMPT,
    prefill: str = "",
) -> EncodedPrompt:
    """The usual game prompt: a system turn, one user turn with the image(s) first and then `text`,
    then the generation prompt (plus `prefill`)."""
    content = [{"type": "image"} for _ in image_sizes] + [{"type": "text", "text": text}]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": content}]
    return encode_chat(tokenizer, messages, image_sizes, prefill=prefill)


def bucket_length(length: int, buckets: Iterable[int]) -> int:
    """The smallest bucket that holds `length` tokens (few distinct lengths = few jit compiles)."""
    fitting = [bucket for bucket in buckets if bucket >= length]
    if not fitting:
        raise ValueError(f"a prompt of {length} tokens is longer than every bucket {sorted(buckets)}")
    return min(fitting)


def pad_prompts(prompts: Sequence[EncodedPrompt], length: int, pad_id: int) -> PromptBatch:
    """Left-pad prompts to one static length, so generation appends at the same column in every row."""
    if not prompts:
        raise ValueError("no prompts to pad")
    input_ids = np.full((len(prompts), length), pad_id, dtype=np.int32)
    attention_mask = np.zeros((len(prompts), length), dtype=np.int32)
    mm_token_type_ids = np.full((len(prompts), length), TEXT_TOKEN, dtype=np.int32)
    for row, prompt in enumerate(prompts):
        n = len(prompt.input_ids)
        if n > length:
            raise ValueError(f"prompt {row} has {n} tokens, more than the bucket length {length}")
        if n == 0:
            raise ValueError(f"prompt {row} is empty")
        input_ids[row, length - n :] = prompt.input_ids
        attention_mask[row, length - n :] = 1
        mm_token_type_ids[row, length - n :] = prompt.mm_token_type_ids
    grids = np.concatenate([prompt.image_grid_thw.reshape(-1, 3) for prompt in prompts]).astype(np.int32)
    return PromptBatch(input_ids, attention_mask, mm_token_type_ids, grids)


def truncate_at_stop(ids: Iterable[int], stop_ids: Sequence[int] = STOP_IDS) -> list[int]:
    """Ids up to and including the first stop token (all of them when none occurs)."""
    out = []
    for token in ids:
        out.append(int(token))
        if token in stop_ids:
            break
    return out


def decode_completions(tokenizer: Tokenizer, completions: Iterable[Iterable[int]]) -> list[str]:
    """Text of each sampled completion: cut at the tokenizer's first stop token, specials skipped."""
    return tokenizer.decode_batch([truncate_at_stop(row, tokenizer.stop_ids) for row in completions])
