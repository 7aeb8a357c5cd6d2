"""The model an evaluation plays: a training run's newest checkpoint, a Hugging Face directory or
a random-init preset. `resolve_model` reads only JSON, so every check runs before weights load or
anything compiles; `load_model` then builds (model, tokenizer)."""

from __future__ import annotations

import dataclasses
import json
import os

from flax import nnx

from g1jax.checkpoint import Checkpointer, abstract_like
from g1jax.config import TrainConfig
from g1jax.constants import FACTOR
from g1jax.evaluation.protocols import EvalError
from g1jax.models.config import PRESETS, ConfigError, Qwen25VLConfig, preset
from g1jax.models.qwen25vl import trainable_filter
from g1jax.policy import load_policy


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model policy comes from, read from its JSON files only (no weights, no compile):
    kind "run" (a training run directory: config.json of TrainConfig fields + checkpoints/),
    "hf" (a Hugging Face directory: config.json + safetensors) or "preset" (a random-init preset
    such as "tiny", for smoke tests)."""

    path: str
    kind: str
    config: Qwen25VLConfig
    run_config: dict | None = None

    @property
    def train_image_size(self) -> tuple[int, int] | None:
        size = (self.run_config or {}).get("image_size")
        return None if size is None else tuple(int(v) for v in size)

    def train_prompt_options(self, game: str) -> dict:
        """The run's options for `game` that change its prompt (2048's `instructions`): a model is evaluated
        on the prompt it was trained on."""
        options = ((self.run_config or {}).get("game_options") or {}).get(game) or {}
        return {name: options[name] for name in ("instructions",) if name in options}

    @property
    def detail(self) -> str:
        return os.path.basename(os.path.normpath(self.path)) if self.kind != "preset" else f"{self.path} (random init)"


def _checkpoint_steps(run_dir: str) -> list[int]:
    folder = os.path.join(run_dir, "checkpoints")
    return sorted(int(name) for name in os.listdir(folder) if name.isdigit()) if os.path.isdir(folder) else []


def resolve_model(path: str) -> ModelSource:
    """Identify --model without loading it: a run directory, a Hugging Face directory or a preset."""
    if not os.path.isdir(path):
        if path.lower() in PRESETS:
            return ModelSource(path, "preset", preset(path))
        raise EvalError(f"--model {path}: no such directory (a training run directory or a Hugging Face directory)")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise EvalError(
            f"--model {path}: no config.json there, so neither a run directory nor a Hugging Face directory"
        )
    with open(config_path) as f:
        values = json.load(f)
    try:
        if "vision_config" in values:
            if not any(name.endswith(".safetensors") for name in os.listdir(path)):
                raise EvalError(f"--model {path}: a Hugging Face config.json but no *.safetensors weights")
            return ModelSource(path, "hf", Qwen25VLConfig.from_json_file(config_path))
        if "model" in values and "games" in values:
            if not _checkpoint_steps(path):
                raise EvalError(f"--model {path}: a run directory without checkpoints (nothing in {path}/checkpoints)")
            base = values["model"]
            model_config = preset(base) if base.lower() in PRESETS else resolve_model(base).config
            return ModelSource(path, "run", model_config, values)
    except ConfigError as error:
        raise EvalError(f"--model {path}: {error}") from None
    raise EvalError(
        f"--model {path}: config.json is neither a run's config (model, games, ...) nor a "
        "Hugging Face Qwen2.5-VL config (vision_config, ...)"
    )


def check_model_fits(source: ModelSource, image_size: tuple[int, int], max_new_tokens: int, game: str) -> None:
    """The frames a game's evaluation draws must fit the checkpoint: its patch grid, the frame
    size it was trained on (a run) and its context length."""
    vision, text = source.config.vision, source.config.text
    factor = vision.patch_size * vision.spatial_merge_size
    height, width = image_size
    if factor != FACTOR:
        raise EvalError(
            f"--model {source.path}: {vision.patch_size}-px patches merged {vision.spatial_merge_size}x"
            f"{vision.spatial_merge_size} make a {factor}-px grid; g1jax's image pipeline is "
            f"Qwen2.5-VL's {FACTOR}-px one"
        )
    trained = source.train_image_size
    if trained is not None and trained != (height, width):
        raise EvalError(
            f"--model {source.path} was trained on {trained[0]}x{trained[1]} frames but {game} is "
            f"evaluated on {height}x{width}; pass --image-size {trained[0]} {trained[1]} to evaluate at "
            "the training size"
        )
    image_tokens = (height // FACTOR) * (width // FACTOR)
    if image_tokens + max_new_tokens > text.max_position_embeddings:
        raise EvalError(
            f"--model {source.path}: a {height}x{width} frame ({image_tokens} image tokens) plus "
            f"{max_new_tokens} new tokens exceeds its context of {text.max_position_embeddings} positions"
        )


def load_model(source: ModelSource):
    """(model, tokenizer) for a resolved source; a run's newest readable checkpoint is restored
    onto the model its config describes."""
    if source.kind != "run":
        return load_policy(TrainConfig(model=source.path))
    config = TrainConfig.from_dict(source.run_config)
    model, tokenizer = load_policy(config)
    graphdef, params, frozen = nnx.split(model, trainable_filter(config.freeze_vision), ...)
    checkpoints = Checkpointer(os.path.join(source.path, "checkpoints"))
    found = checkpoints.restore_latest({"params": abstract_like(params)})
    checkpoints.close()
    if found is None:
        raise EvalError(f"--model {source.path}: no readable checkpoint in {source.path}/checkpoints")
    return nnx.merge(graphdef, found[1]["params"], frozen), tokenizer
