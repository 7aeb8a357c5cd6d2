"""Qwen2.5-VL numbers that several modules rely on, each written once (the facts: docs/model.md).

Special tokens: the Qwen2.5 tokenizer has 151,643 ranked byte-level BPE tokens (ids 0..151,642)
followed by 22 added tokens in a fixed order. Small vocabularies (the `tiny` and `bench` model
presets, `make_tiny_tokenizer`) put the same 22 tokens, in the same order, on their top 22 ids, so
a small model and a small tokenizer of one vocabulary size agree without any id argument.

Patch geometry: the vision tower reads 14x14-pixel patches over 2 temporal slots (a still image
fills both), and merges 2x2 patches into one language-model token, so one token covers 28x28
pixels and one patch row of `pixel_values` has 3 * 2 * 14 * 14 = 1176 features.
"""

from __future__ import annotations

# The 22 added tokens in id order, with the checkpoint's `special` flag: the tool-call and
# fill-in-the-middle tokens are ordinary added tokens there, so decoding with
# skip_special_tokens=True keeps them, as transformers does with the hub tokenizer.
QWEN25_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
QWEN25_NUM_RANKED_TOKENS = 151_643


def special_token_ids(vocab_size: int | None = None) -> dict[str, int]:
    """token -> id of the 22 added tokens: Qwen2.5's own ids (151,643..151,664) when vocab_size is None,
    else the top 22 ids of a vocabulary of that size, in the same order (for vocab 1024: <|endoftext|>
    1002, <|im_start|> 1003, <|im_end|> 1004, <|vision_start|> 1011, <|vision_end|> 1012,
    <|image_pad|> 1014, <|video_pad|> 1015)."""
    if vocab_size is None:
        first = QWEN25_NUM_RANKED_TOKENS
    elif vocab_size < len(QWEN25_ADDED_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} cannot hold the {len(QWEN25_ADDED_TOKENS)} special tokens")
    else:
        first = vocab_size - len(QWEN25_ADDED_TOKENS)
    return {token: first + i for i, (token, _) in enumerate(QWEN25_ADDED_TOKENS)}


_QWEN25_IDS = special_token_ids()
ENDOFTEXT = _QWEN25_IDS["<|endoftext|>"]  # 151643, also the padding id
IM_START = _QWEN25_IDS["<|im_start|>"]  # 151644
IM_END = _QWEN25_IDS["<|im_end|>"]  # 151645
VISION_START = _QWEN25_IDS["<|vision_start|>"]  # 151652
VISION_END = _QWEN25_IDS["<|vision_end|>"]  # 151653
VISION_PAD = _QWEN25_IDS["<|vision_pad|>"]  # 151654
IMAGE_PAD = _QWEN25_IDS["<|image_pad|>"]  # 151655
VIDEO_PAD = _QWEN25_IDS["<|video_pad|>"]  # 151656
# The checkpoints' generation_config stops on both; stopping on im_end alone lets completions
# that end in <|endoftext|> run on to the length limit.
STOP_IDS = (IM_END, ENDOFTEXT)

CHANNELS = 3
PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: one merged (language-model) token covers FACTOR x FACTOR pixels
PATCH_DIM = CHANNELS * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE  # 1176
