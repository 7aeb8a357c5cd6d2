"""Qwen2.5-VL configuration: a frozen dataclass read from (and written back to) a HF `config.json`.

Two on-disk layouts exist and both are accepted:

* legacy / hub layout (what the Qwen2.5-VL-3B/7B checkpoints ship): text fields flat at the root,
  `rope_scaling: {"type": "mrope", "mrope_section": [...]}`, `rope_theta` at the root, and a nested
  `vision_config` (with `in_chans`);
* transformers-v5 layout: `text_config` / `vision_config` sub-dicts, `rope_parameters:
  {"rope_type": "default", "rope_theta": ..., "mrope_section": [...]}`.

The dataclasses are frozen (hashable) so a config can be a static argument of `jax.jit`.
Defaults are Qwen2.5-VL-3B's; the special-token ids and the patch geometry come from
`g1jax.constants`. Field meanings and both layouts: docs/model.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from envs.core import ConfigError as ProjectConfigError
from g1jax.constants import (
    CHANNELS,
    ENDOFTEXT,
    IM_END,
    IMAGE_PAD,
    MERGE_SIZE,
    PATCH_SIZE,
    TEMPORAL_PATCH_SIZE,
    VIDEO_PAD,
    VISION_END,
    VISION_PAD,
    VISION_START,
    special_token_ids,
)

# Default M-RoPE split used by transformers when a config names none (fits head_dim 128 only).
_HF_DEFAULT_MROPE_SECTION = (16, 24, 24)


class ConfigError(ProjectConfigError):
    """A config.json (or preset) that this implementation cannot represent faithfully.

    A subclass of the games' `envs.ConfigError`, so one `except envs.ConfigError` catches every
    configuration the project refuses (games, model, training), while `envs` stays free of g1jax.
    """


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = CHANNELS
    patch_size: int = PATCH_SIZE
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE
    spatial_merge_size: int = MERGE_SIZE
    window_size: int = 112  # pixels; window in merge units = window_size // spatial_merge_size // patch_size
    out_hidden_size: int = 2048
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    tokens_per_second: int = 2
    hidden_act: str = "silu"
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_features(self) -> int:
        """Length of one flattened patch in `pixel_values` (`constants.PATCH_DIM` for Qwen2.5-VL's geometry)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def window_merge_units(self) -> int:
        """Side of one attention window counted in 2x2 merge units (112 px -> 4)."""
        return self.window_size // self.spatial_merge_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_hidden_layers: int = 36
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, ...] = (16, 24, 24)
    max_position_embeddings: int = 128000
    hidden_act: str = "silu"
    bos_token_id: int | None = ENDOFTEXT
    eos_token_id: int | tuple[int, ...] | None = IM_END
    pad_token_id: int | None = None

    @property
    def head_dim(self) -> int:
        # transformers' Qwen2.5-VL attention derives head_dim from hidden/heads (a `head_dim` field is ignored).
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    image_token_id: int = IMAGE_PAD
    video_token_id: int = VIDEO_PAD
    vision_start_token_id: int = VISION_START
    vision_end_token_id: int = VISION_END
    vision_token_id: int = VISION_PAD  # <|vision_pad|> (config.json's name for it)
    tie_word_embeddings: bool = False

    def __post_init__(self):
        validate(self)

    @property
    def vision_special_ids(self) -> tuple[int, ...]:
        """The ids that mark image and video content: they belong in prompts, never in an answer."""
        return (
            self.vision_start_token_id,
            self.vision_end_token_id,
            self.vision_token_id,
            self.image_token_id,
            self.video_token_id,
        )

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> Qwen25VLConfig:
        """Build from a parsed HF `config.json` (legacy flat or v5 nested layout)."""
        if not isinstance(hf, dict):
            raise ConfigError(f"config must be a JSON object, got {type(hf).__name__}")
        model_type = hf.get("model_type")
        if model_type is not None and model_type != "qwen2_5_vl":
            raise ConfigError(f"model_type is {model_type!r}; only 'qwen2_5_vl' is supported")
        nested_text = hf.get("text_config") or {}
        if not isinstance(nested_text, dict):
            raise ConfigError("text_config must be a JSON object")

        def text_field(name, default=dataclasses.MISSING):
            # v5 keeps text fields in text_config; legacy keeps them at the root (some 4.5x saves have both).
            if name in nested_text:
                return nested_text[name]
            if name in hf:
                return hf[name]
            if default is dataclasses.MISSING:
                raise ConfigError(f"config.json has no text field {name!r} (looked in text_config and the root)")
            return default

        if text_field("use_sliding_window", False):
            raise ConfigError("use_sliding_window=true is not supported (Qwen2.5-VL checkpoints ship it disabled)")
        if text_field("hidden_act", "silu") != "silu":
            raise ConfigError(f"text hidden_act {text_field('hidden_act')!r} is not supported (expected 'silu')")

        rope = text_field("rope_parameters", None) or text_field("rope_scaling", None) or {}
        if not isinstance(rope, dict):
            raise ConfigError(f"rope_parameters / rope_scaling must be an object, got {rope!r}")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "mrope"):
            raise ConfigError(f"rope type {rope_type!r} is not supported (expected 'mrope' or 'default')")
        rope_theta = rope.get("rope_theta", text_field("rope_theta", _TEXT_DEFAULTS.rope_theta))
        mrope_section = tuple(int(s) for s in rope.get("mrope_section", _HF_DEFAULT_MROPE_SECTION))

        eos = text_field("eos_token_id", None)
        text = TextConfig(
            vocab_size=int(text_field("vocab_size")),
            hidden_size=int(text_field("hidden_size")),
            intermediate_size=int(text_field("intermediate_size")),
            num_hidden_layers=int(text_field("num_hidden_layers")),
            num_attention_heads=int(text_field("num_attention_heads")),
            num_key_value_heads=int(text_field("num_key_value_heads", None) or text_field("num_attention_heads")),
            rms_norm_eps=float(text_field("rms_norm_eps", _TEXT_DEFAULTS.rms_norm_eps)),
            rope_theta=float(rope_theta),
            mrope_section=mrope_section,
            max_position_embeddings=int(text_field("max_position_embeddings", _TEXT_DEFAULTS.max_position_embeddings)),
            hidden_act="silu",
            bos_token_id=text_field("bos_token_id", None),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=text_field("pad_token_id", None),
        )

        v, vd = hf.get("vision_config"), _VISION_DEFAULTS
        if not isinstance(v, dict):
            raise ConfigError("config.json has no vision_config object")
        if v.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"vision hidden_act {v.get('hidden_act')!r} is not supported (expected 'silu')")
        v_rope = v.get("rope_parameters") or {}
        if "num_heads" not in v and "num_attention_heads" not in v:
            raise ConfigError("vision_config has no num_heads")
        vision = VisionConfig(
            depth=int(v.get("depth", v.get("num_hidden_layers", vd.depth))),
            hidden_size=int(v["hidden_size"]) if "hidden_size" in v else _missing("vision_config.hidden_size"),
            intermediate_size=int(v.get("intermediate_size", vd.intermediate_size)),
            num_heads=int(v.get("num_heads", v.get("num_attention_heads"))),
            in_channels=int(v.get("in_channels", v.get("in_chans", vd.in_channels))),
            patch_size=int(v.get("patch_size", v.get("spatial_patch_size", vd.patch_size))),
            temporal_patch_size=int(v.get("temporal_patch_size", vd.temporal_patch_size)),
            spatial_merge_size=int(v.get("spatial_merge_size", vd.spatial_merge_size)),
            window_size=int(v.get("window_size", vd.window_size)),
            out_hidden_size=int(v.get("out_hidden_size", text.hidden_size)),
            fullatt_block_indexes=tuple(int(i) for i in v.get("fullatt_block_indexes", vd.fullatt_block_indexes)),
            tokens_per_second=int(v.get("tokens_per_second", vd.tokens_per_second)),
            hidden_act="silu",
            rope_theta=float(v_rope.get("rope_theta", vd.rope_theta)),
        )
        # pre-v5 saves may carry tie_word_embeddings inside text_config (transformers forwards it to the root).
        tie = bool(hf.get("tie_word_embeddings", False)) or bool(nested_text.get("tie_word_embeddings", False))
        vision_end = int(hf.get("vision_end_token_id", VISION_END))
        return cls(
            text=text,
            vision=vision,
            image_token_id=int(hf.get("image_token_id", IMAGE_PAD)),
            video_token_id=int(hf.get("video_token_id", VIDEO_PAD)),
            vision_start_token_id=int(hf.get("vision_start_token_id", VISION_START)),
            vision_end_token_id=vision_end,
            # transformers v5 writes no vision_token_id; every Qwen2.5 layout puts <|vision_pad|> after <|vision_end|>
            vision_token_id=int(hf.get("vision_token_id", vision_end + 1)),
            tie_word_embeddings=tie,
        )

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> Qwen25VLConfig:
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no config.json at {path}")
        with open(path) as f:
            try:
                hf = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path} is not valid JSON: {e}") from None
        try:
            return cls.from_hf_dict(hf)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    # ------------------------------------------------------------------ writing
    def to_hf_dict(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """Hub (legacy, flat) layout: readable by transformers 4.5x, transformers v5 and vLLM."""
        t, v = self.text, self.vision
        eos = list(t.eos_token_id) if isinstance(t.eos_token_id, tuple) else t.eos_token_id
        return {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "torch_dtype": torch_dtype,
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "hidden_act": t.hidden_act,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_theta": t.rope_theta,
            "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section)},
            "max_position_embeddings": t.max_position_embeddings,
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "bos_token_id": t.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": t.pad_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "vision_token_id": self.vision_token_id,
            "vision_config": {
                "model_type": "qwen2_5_vl_vision",
                "depth": v.depth,
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_heads": v.num_heads,
                "in_channels": v.in_channels,
                "in_chans": v.in_channels,
                "patch_size": v.patch_size,
                "temporal_patch_size": v.temporal_patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "window_size": v.window_size,
                "out_hidden_size": v.out_hidden_size,
                "fullatt_block_indexes": list(v.fullatt_block_indexes),
                "tokens_per_second": v.tokens_per_second,
                "hidden_act": v.hidden_act,
            },
        }

    def replace(self, **changes) -> Qwen25VLConfig:
        return dataclasses.replace(self, **changes)


_TEXT_DEFAULTS, _VISION_DEFAULTS = TextConfig(), VisionConfig()  # what a config.json that omits a field means


def _missing(name: str):
    raise ConfigError(f"config.json has no {name}")


def validate(cfg: Qwen25VLConfig) -> None:
    """Raise ConfigError naming the first inconsistency found."""
    t, v = cfg.text, cfg.vision
    for name in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
    ):
        if getattr(t, name) <= 0:
            raise ConfigError(f"text {name} must be positive, got {getattr(t, name)}")
    if t.hidden_size % t.num_attention_heads:
        raise ConfigError(
            f"text hidden_size {t.hidden_size} is not divisible by num_attention_heads {t.num_attention_heads}"
        )
    if t.num_attention_heads % t.num_key_value_heads:
        raise ConfigError(
            f"num_attention_heads {t.num_attention_heads} is not a multiple of num_key_value_heads "
            f"{t.num_key_value_heads}"
        )
    if t.head_dim % 2:
        raise ConfigError(f"text head_dim {t.head_dim} must be even for rotary embeddings")
    if sum(t.mrope_section) != t.head_dim // 2:
        raise ConfigError(
            f"sum(mrope_section) = sum({list(t.mrope_section)}) = {sum(t.mrope_section)} must equal "
            f"head_dim / 2 = {t.head_dim // 2}"
        )
    if len(t.mrope_section) != 3 or min(t.mrope_section) < 0:
        raise ConfigError(f"mrope_section must be three non-negative sizes (t, h, w), got {list(t.mrope_section)}")
    if v.hidden_size % v.num_heads:
        raise ConfigError(f"vision hidden_size {v.hidden_size} is not divisible by num_heads {v.num_heads}")
    if v.head_dim % 4:
        raise ConfigError(f"vision head_dim {v.head_dim} must be a multiple of 4 (2D rotary over h and w)")
    if v.out_hidden_size != t.hidden_size:
        raise ConfigError(f"vision out_hidden_size {v.out_hidden_size} must equal text hidden_size {t.hidden_size}")
    if v.window_merge_units < 1:
        raise ConfigError(
            f"vision window_size {v.window_size} px is smaller than one merge unit "
            f"({v.spatial_merge_size * v.patch_size} px)"
        )
    bad = [i for i in v.fullatt_block_indexes if not 0 <= i < v.depth]
    if bad:
        raise ConfigError(f"fullatt_block_indexes {bad} out of range for vision depth {v.depth}")
    for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id", "vision_token_id"):
        tok = getattr(cfg, name)
        if not 0 <= tok < t.vocab_size:
            raise ConfigError(f"{name} {tok} is outside the vocabulary (vocab_size {t.vocab_size})")


# ---------------------------------------------------------------------- presets
def _preset_3b() -> Qwen25VLConfig:
    return Qwen25VLConfig(
        text=TextConfig(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
        ),
        vision=VisionConfig(out_hidden_size=2048),
        tie_word_embeddings=True,
    )


def _preset_7b() -> Qwen25VLConfig:
    return Qwen25VLConfig(
        text=TextConfig(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
        ),
        vision=VisionConfig(out_hidden_size=3584),
        tie_word_embeddings=False,
    )


def _small_vocab_ids(vocab_size: int) -> tuple[dict, dict]:
    """(text, model) id fields of a small vocabulary: the special-token layout of `make_tiny_tokenizer(vocab_size)`."""
    ids = special_token_ids(vocab_size)
    text = dict(
        vocab_size=vocab_size, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=None
    )
    model = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"],
    )
    return text, model


def _preset_tiny() -> Qwen25VLConfig:
    # Small enough for CPU tests, yet with an image larger than one window (window_size 56 px -> 2x2
    # merge-unit windows) and full-attention blocks at small indexes (docs/model.md, "Presets").
    text_ids, model_ids = _small_vocab_ids(1024)
    return Qwen25VLConfig(
        text=TextConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            mrope_section=(2, 3, 3),
            max_position_embeddings=4096,
            **text_ids,
        ),
        vision=VisionConfig(
            depth=4,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            window_size=56,
            fullatt_block_indexes=(1, 3),
        ),
        tie_word_embeddings=False,
        **model_ids,
    )


def _preset_small() -> Qwen25VLConfig:
    # Between tiny and bench: the tiny vocabulary with a wider, deeper text model and vision tower, for
    # CPU learning runs where tiny cannot read the board (BENCHMARKS.md, "G1 in miniature").
    text_ids, model_ids = _small_vocab_ids(1024)
    return Qwen25VLConfig(
        text=TextConfig(
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            mrope_section=(4, 6, 6),
            max_position_embeddings=4096,
            **text_ids,
        ),
        vision=VisionConfig(
            depth=4,
            hidden_size=64,
            intermediate_size=128,
            num_heads=2,
            out_hidden_size=128,
            window_size=56,
            fullatt_block_indexes=(1, 3),
        ),
        tie_word_embeddings=False,
        **model_ids,
    )


def _preset_bench() -> Qwen25VLConfig:
    # ~34M parameters: the CPU benchmark config (Flax vs PyTorch) of experiments/bench_model.py.
    text_ids, model_ids = _small_vocab_ids(8192)
    return Qwen25VLConfig(
        text=TextConfig(
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=6,
            num_attention_heads=8,
            num_key_value_heads=2,
            mrope_section=(8, 12, 12),
            max_position_embeddings=4096,
            **text_ids,
        ),
        vision=VisionConfig(
            depth=4,
            hidden_size=256,
            intermediate_size=640,
            num_heads=4,
            out_hidden_size=512,
            window_size=112,
            fullatt_block_indexes=(1, 3),
        ),
        tie_word_embeddings=False,
        **model_ids,
    )


PRESETS = {"3b": _preset_3b, "7b": _preset_7b, "tiny": _preset_tiny, "small": _preset_small, "bench": _preset_bench}


def preset(name: str) -> Qwen25VLConfig:
    """Named configs: '3b', '7b' (Qwen2.5-VL-{3B,7B}-Instruct), 'tiny' (tests), 'small' (CPU
    learning runs), 'bench' (CPU benchmark)."""
    try:
        return PRESETS[name.lower()]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
