import warnings

import numpy as np
import pytest

from g1jax.chat import (
    PromptBatch,
    bucket_length,
    decode_completions,
    encode_chat,
    encode_prompt,
    pad_prompts,
    render_chat,
    truncate_at_stop,
)
from g1jax.constants import ENDOFTEXT, IM_END, IMAGE_PAD, VISION_END, VISION_START
from g1jax.tokenizer import load_tokenizer, make_tiny_tokenizer

SYSTEM_TURN_IDS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]

# The Qwen2-VL chat template (images and text; no video or tools), for transformers' processor.
REFERENCE_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def qwen():
    # The default cache: built once per machine (the build itself is tested in test_tokenizer.py).
    return load_tokenizer()


def _processor(tokenizer):
    """transformers' Qwen2.5-VL processor without a video processor (which needs torchvision)."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.video_processor = None
            super().__init__(
                image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs
            )

    return ImageOnlyProcessor(Qwen2VLImageProcessorPil(), tokenizer.to_transformers(), chat_template=REFERENCE_TEMPLATE)


@pytest.fixture(scope="module")
def processor(qwen):
    return _processor(qwen)


def _images(sizes):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


CHATS = [
    ([{"role": "user", "content": "Hello, world!"}], []),
    (
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which move? Answer up/down."}]}],
        [(56, 84)],
    ),
    (
        [
            {"role": "system", "content": "You play 2048.\n\nBe brief."},
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": " Compare  them\n"}],
            },
        ],
        [(56, 84), (112, 56)],
    ),
    (
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Before: "}, {"type": "image"}, {"type": "text", "text": "?"}],
            },
            {"role": "assistant", "content": "<think>left</think><answer>left</answer>"},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And now 2048?"}]},
        ],
        [(84, 56), (224, 196)],
    ),
]


@pytest.mark.parametrize("add_vision_id", [False, True])
@pytest.mark.parametrize("messages,sizes", CHATS)
def test_template_and_ids_match_the_processor(qwen, processor, messages, sizes, add_vision_id):
    text = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, add_vision_id=add_vision_id
    )
    assert render_chat(messages, add_generation_prompt=True, add_vision_id=add_vision_id) == text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = processor(text=[text], images=_images(sizes) or None, return_tensors="np")
    ours = encode_chat(qwen, messages, sizes, add_vision_id=add_vision_id)
    np.testing.assert_array_equal(ours.input_ids, expected["input_ids"][0])
    np.testing.assert_array_equal(ours.mm_token_type_ids, expected["mm_token_type_ids"][0])
    np.testing.assert_array_equal(ours.image_grid_thw, expected.get("image_grid_thw", np.zeros((0, 3))))
    assert ours.input_ids.dtype == ours.mm_token_type_ids.dtype == np.int32


def test_prompt_ids_follow_the_documented_format(qwen):
    prompt = encode_prompt(qwen, "Hello, world!", image_sizes=[(224, 224)], prefill="<think>")
    ids = prompt.input_ids.tolist()
    assert ids[:11] == SYSTEM_TURN_IDS
    assert ids[11:14] == [151644, 872, 198]  # <|im_start|>user\n
    assert ids[14] == VISION_START and ids[15:79] == [IMAGE_PAD] * 64 and ids[79] == VISION_END  # (224/28)^2
    assert ids[80:84] == [9707, 11, 1879, 0]
    assert ids[84:89] == [151645, 198, 151644, 77091, 198]  # <|im_end|>\n<|im_start|>assistant\n
    assert qwen.decode(ids[89:]) == "<think>"
    assert prompt.mm_token_type_ids.tolist() == [int(i == IMAGE_PAD) for i in ids]
    assert prompt.image_grid_thw.tolist() == [[1, 16, 16]]


def test_prefill_matches_the_processor_on_the_concatenated_text(qwen, processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Move?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + "<think>\nI"
    expected = processor(text=[text], images=_images([(56, 56)]), return_tensors="np")
    ours = encode_chat(qwen, messages, [(56, 56)], prefill="<think>\nI")
    np.testing.assert_array_equal(ours.input_ids, expected["input_ids"][0])


def test_left_padding_matches_the_processor(qwen, processor):
    chats = [(CHATS[1][0], CHATS[1][1]), (CHATS[0][0], [])]
    prompts = [encode_chat(qwen, messages, sizes) for messages, sizes in chats]
    length = bucket_length(max(len(p.input_ids) for p in prompts), buckets=(16, 64, 128))
    assert length == 64
    batch = pad_prompts(prompts, length, pad_id=qwen.pad_id)
    assert isinstance(batch, PromptBatch)
    texts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m, _ in chats]
    expected = processor(
        text=texts,
        images=_images(CHATS[1][1]),
        padding="max_length",
        max_length=length,
        padding_side="left",
        return_tensors="np",
    )
    np.testing.assert_array_equal(batch.input_ids, expected["input_ids"])
    np.testing.assert_array_equal(batch.attention_mask, expected["attention_mask"])
    np.testing.assert_array_equal(batch.mm_token_type_ids, expected["mm_token_type_ids"])
    np.testing.assert_array_equal(batch.image_grid_thw, expected["image_grid_thw"])
    assert batch.input_ids[1, 0] == ENDOFTEXT and batch.attention_mask[1].sum() == len(prompts[1].input_ids)


def test_too_long_prompts_are_named(qwen):
    prompts = [encode_prompt(qwen, "short"), encode_prompt(qwen, "a much longer prompt " * 20)]
    with pytest.raises(
        ValueError, match=f"prompt 1 has {len(prompts[1].input_ids)} tokens, more than the bucket length 40"
    ):
        pad_prompts(prompts, 40, qwen.pad_id)
    with pytest.raises(ValueError, match="longer than every bucket"):
        bucket_length(600, buckets=(128, 512))


def test_image_count_and_size_errors(qwen):
    one_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}]
    with pytest.raises(ValueError, match="1 <|image_pad|> tokens but 0 image sizes"):
        encode_chat(qwen, one_image, [])
    with pytest.raises(ValueError, match="2 <|image_pad|> tokens but 1 image sizes"):
        encode_prompt(qwen, "literal <|image_pad|> in text", image_sizes=[(56, 56)])
    with pytest.raises(ValueError, match="multiple of 28"):
        encode_chat(qwen, one_image, [(50, 56)])
    with pytest.raises(ValueError, match="neither an image nor text"):
        render_chat([{"role": "user", "content": [{"type": "video"}]}])
    with pytest.raises(ValueError, match="no role"):
        render_chat([{"content": "hi"}])
    with pytest.raises(ValueError, match="needs add_generation_prompt"):
        encode_chat(qwen, one_image, [(56, 56)], add_generation_prompt=False, prefill="<think>")


def test_truncate_at_stop_keeps_the_stop_token():
    assert truncate_at_stop([5, 6, IM_END, 7, ENDOFTEXT]) == [5, 6, IM_END]
    assert truncate_at_stop(np.array([5, ENDOFTEXT, IM_END, 9])) == [5, ENDOFTEXT]
    assert truncate_at_stop([5, 6, 7]) == [5, 6, 7]
    assert truncate_at_stop([3, 4], stop_ids=(4,)) == [3, 4]


def test_decode_completions_cut_at_stop_and_skip_specials(qwen):
    answer = qwen.encode("<think>2+2</think><answer>up</answer>")
    # Sampler output: fixed-width rows; whatever follows the first stop token is ignored.
    rows = np.array([answer + [IM_END] + [ENDOFTEXT] * 3, answer + [9707] * 4])
    texts = decode_completions(qwen, rows)
    assert texts == [
        "<think>2+2</think><answer>up</answer>",
        "<think>2+2</think><answer>up</answer>HelloHelloHelloHello",
    ]
    assert decode_completions(qwen, [[9707, ENDOFTEXT, 11], [1879, IM_END, 0]]) == ["Hello", " world"]


def test_tiny_tokenizer_prompts_match_the_processor():
    tiny = make_tiny_tokenizer(vocab_size=1024)  # specials on the top ids: image pad 1014, endoftext 1002
    processor = _processor(tiny)
    messages = CHATS[2][0]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = processor(text=[text], images=_images(CHATS[2][1]), return_tensors="np")
    ours = encode_chat(tiny, messages, CHATS[2][1])
    np.testing.assert_array_equal(ours.input_ids, expected["input_ids"][0])
    np.testing.assert_array_equal(ours.mm_token_type_ids, expected["mm_token_type_ids"][0])
    assert (ours.input_ids == 1014).sum() == 6 + 8 and ours.input_ids.max() < 1024
    batch = pad_prompts([ours, encode_prompt(tiny, "hi")], len(ours.input_ids) + 3, tiny.pad_id)
    assert (batch.input_ids[:, :3] == 1002).all()
