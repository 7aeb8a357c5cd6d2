"""The GRPO learner: one typed config, validated before anything compiles, and `make_trainer(config)`.

    trainer = make_trainer(TrainConfig(model="tiny", games=("2048",), steps=20, run_dir="runs/x"))
    summary = trainer.run()

One step, as data flows (every arrow on the device unless marked):

    key_step = fold_in(seed, step)             the step's randomness is a function of the step alone,
                                               so a resumed run continues exactly
    rollout   start states -> frames -> prompts -> G samples -> (host) parse -> rewards   rl/rollout.py
    update    advantages -> micro-batched (sum, count) GRPO loss -> one optax update       `_train_step`

The parameters live as nnx States (trainable, frozen) next to the optax state in `TrainState`, a
plain pytree: jit, sharding and orbax see arrays only. The train step is a pure function
`(state, frozen, reference, batch) -> (state, metrics)` with the state donated.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import envs
from g1jax import sharding as mesh_lib
from g1jax.checkpoint import Checkpointer, abstract_like
from g1jax.models.config import PRESETS, ConfigError, Qwen25VLConfig, preset
from g1jax.models.qwen25vl import Qwen25VL, token_logprobs, trainable_filter
from g1jax.rl import grpo
from g1jax.rl.rewards import PARTS, g1_weights
from g1jax.rl.rollout import GameRollout, Rollout
from g1jax.sampling import SamplingConfig
from g1jax.sft import TeacherData, sft_loss_terms
from g1jax.teachers import answer_text
from g1jax.tokenizer import Tokenizer, load_tokenizer, make_tiny_tokenizer

DTYPES = ("float32", "bfloat16")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a run needs. Every field is checked in `__post_init__` with a one-line ConfigError."""

    # policy
    model: str = "tiny"  # a preset name (random init), a local Hugging Face directory or a hub id
    tokenizer: str | None = None  # a tokenizer.json / checkpoint dir; None: the model's own (see load_policy)
    init_seed: int = 0  # random initialisation of preset models
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    freeze_vision: bool = False
    remat: bool = False
    # games
    games: tuple[str, ...] = ("2048",)
    game_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    image_size: tuple[int, int] | None = None  # None: each game's default (they must agree)
    states_per_step: int = 8  # P: split evenly across the games
    warmup_policy: str = "uniform"  # G1's: uniform random action ids
    warmup_moves: Mapping[str, int] = dataclasses.field(default_factory=dict)  # default: G1's per game
    reward_weights: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    strict_format: bool = False
    # sampling
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # GRPO (rl/grpo.py; rl.GRPO_PRESETS and experiments/train.py's --recipe name settings of these fields)
    group_size: int = 4
    advantage: str = "grpo"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    kl_kind: str = "k3"
    loss_agg: str = "token-mean"
    tis_cap: float | None = None
    # optimiser
    learning_rate: float = 1e-6
    schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    grad_clip: float = 1.0
    micro_batch_states: int | None = None  # prompts per micro-batch (None: the whole batch at once)
    # G1's perception cold start (SFT on a programmatic teacher) and the held-out evaluation
    sft_steps: int = 0  # teacher-answer SFT steps before RL (0: the G0 recipe, RL only)
    sft_learning_rate: float = 1e-4
    # teacher kind (g1jax.teachers.TEACHERS) for every game, or {game: kind} (games left out take their
    # default); None: each game's default
    teacher: str | Mapping[str, str] | None = None
    teacher_epsilon: float = 0.0  # chance of a random valid move instead of the teacher's: an imperfect teacher
    eval_states: int = 0  # held-out start states scored before and after RL (0: no evaluation)
    # run
    steps: int = 20
    seed: int = 0
    mesh: str = "1,1,1"  # data,fsdp,tp sizes ("-1" takes the remaining devices)
    run_dir: str = "runs/default"
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    sample_every: int = 10  # write sample frames with the answers every N steps (0: never)
    export_hf: bool = True  # write the final policy as Hugging Face safetensors into run_dir/hf
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self):
        object.__setattr__(self, "games", tuple(self.games) if not isinstance(self.games, str) else (self.games,))
        if self.image_size is not None:
            object.__setattr__(self, "image_size", tuple(self.image_size))
        _check(bool(self.games), "games must name at least one game")
        unknown = [g for g in self.games if g not in envs.list_games()]
        _check(not unknown, f"unknown game(s) {unknown}; available: {', '.join(envs.list_games())}")
        _check(len(set(self.games)) == len(self.games), f"games lists a game twice: {list(self.games)}")
        for name in ("states_per_step", "max_new_tokens", "steps", "keep_checkpoints"):
            _check_int(name, getattr(self, name), 1)
        for name in ("checkpoint_every", "sample_every", "warmup_steps", "seed", "init_seed", "top_k", "sft_steps",
                     "eval_states"):
            _check_int(name, getattr(self, name), 0)
        _check_int("group_size", self.group_size, 2, "GRPO compares answers within a group: group_size must be >= 2")
        _check(self.states_per_step % len(self.games) == 0,
               f"states_per_step {self.states_per_step} must split evenly across the {len(self.games)} games")
        if self.micro_batch_states is not None:
            _check_int("micro_batch_states", self.micro_batch_states, 1)
            _check(self.states_per_step % self.micro_batch_states == 0,
                   f"micro_batch_states {self.micro_batch_states} must divide states_per_step {self.states_per_step}")
        _check(_is_number(self.temperature) and self.temperature > 0,
               f"temperature must be > 0 for training (the policy's log-probs are taken at it), got {self.temperature!r}")
        _check(_is_number(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")
        _check(_is_number(self.learning_rate) and self.learning_rate > 0,
               f"learning_rate must be > 0, got {self.learning_rate!r}")
        _check(_is_number(self.sft_learning_rate) and self.sft_learning_rate > 0,
               f"sft_learning_rate must be > 0, got {self.sft_learning_rate!r}")
        _check(_is_number(self.teacher_epsilon) and 0 <= self.teacher_epsilon <= 1,
               f"teacher_epsilon must be a probability in [0, 1], got {self.teacher_epsilon!r}")
        _check(self.eval_states % len(self.games) == 0,
               f"eval_states {self.eval_states} must split evenly across the {len(self.games)} games")
        _check(_is_number(self.weight_decay) and self.weight_decay >= 0,
               f"weight_decay must be >= 0, got {self.weight_decay!r}")
        _check(_is_number(self.grad_clip) and self.grad_clip > 0, f"grad_clip must be > 0, got {self.grad_clip!r}")
        _check(all(_is_number(b) and 0 <= b < 1 for b in (self.b1, self.b2)), f"b1, b2 must be in [0, 1), got {self.b1}, {self.b2}")
        _check(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _check(self.dtype in DTYPES and self.param_dtype in DTYPES,
               f"dtype / param_dtype must be one of {DTYPES}, got {self.dtype!r} / {self.param_dtype!r}")
        _check(self.warmup_policy in envs.wrappers.WARMUP_POLICIES,
               f"warmup_policy must be one of {envs.wrappers.WARMUP_POLICIES}, got {self.warmup_policy!r}")
        _check(self.teacher is None or isinstance(self.teacher, str) or (
            isinstance(self.teacher, Mapping) and all(isinstance(kind, str) for kind in self.teacher.values())),
            f"teacher must be a teacher kind, a mapping of game names to kinds, or None; got {self.teacher!r}")
        per_game_teacher = list(self.teacher) if isinstance(self.teacher, Mapping) else []
        for name in list(self.game_options) + list(self.warmup_moves) + list(self.reward_weights) + per_game_teacher:
            _check(name in self.games, f"options given for {name!r}, which is not in games {list(self.games)}")
        for name, moves in self.warmup_moves.items():
            _check_int(f"warmup_moves[{name!r}]", moves, 0)
        for name, weights in self.reward_weights.items():
            try:
                g1_weights(name, weights)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"reward_weights[{name!r}]: {error}") from None
        try:
            mesh_lib.make_mesh(self.mesh)  # the device count is known here: a mesh that does not fit fails now
            self.grpo
        except ValueError as error:
            raise ConfigError(str(error)) from None
        _check(isinstance(self.run_dir, str) and self.run_dir, "run_dir must be a non-empty path")
        _check_model_source(self.model)
        try:  # the games' own checks (options, image sizes) and the teachers' before anything compiles
            games = self.make_games()
            if self.sft_steps:
                from g1jax.teachers import TeacherError, make_teacher

                try:
                    for game in games.games:
                        make_teacher(game, self.teacher_kind(game.name), epsilon=self.teacher_epsilon)
                except TeacherError as error:
                    hint = (f" (teacher={self.teacher!r} applies to every game: name one per game, e.g. "
                            f"{{{self.games[0]!r}: {self.teacher!r}}}, or None for each game's own default)"
                            if isinstance(self.teacher, str) else "")
                    raise ConfigError(f"{error}{hint}") from None
        except envs.ConfigError as error:
            raise ConfigError(str(error)) from None

    def teacher_kind(self, game: str) -> str | None:
        """The cold-start teacher kind of `game` (None: its default)."""
        if isinstance(self.teacher, Mapping):
            return self.teacher.get(game)
        return self.teacher

    def make_games(self, states: int | None = None) -> envs.MultiGame:
        states = self.states_per_step if states is None else states
        return envs.MultiGame.make({g: states // len(self.games) for g in self.games},
                                   image_size=self.image_size, configs={k: dict(v) for k, v in self.game_options.items()})

    @property
    def grpo(self) -> grpo.GRPOConfig:
        return grpo.GRPOConfig(group_size=self.group_size, advantage=self.advantage, clip_low=self.clip_low,
                               clip_high=self.clip_high, dual_clip=self.dual_clip, kl_coef=self.kl_coef,
                               kl_kind=self.kl_kind, loss_agg=self.loss_agg, tis_cap=self.tis_cap)

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from a parsed JSON/YAML mapping; unknown keys are a ConfigError naming them."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"a config must be a mapping of field names to values, got {type(values).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; valid fields: {', '.join(sorted(fields))}")
        try:
            return cls(**values)
        except TypeError as error:
            raise ConfigError(f"bad config: {error}") from None

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# G1's RL recipe (vlm-gym-spec §9; docs/rl.md): 128 states x 5 answers, lr 1e-6, clip 0.2, KL 0.01 (k3),
# temperature 1, token-mean aggregation, one update per rollout. Meant for real checkpoints on accelerators.
G1_RECIPE = dict(states_per_step=128, group_size=5, learning_rate=1e-6, clip_low=0.2, clip_high=0.2, kl_coef=0.01,
                 kl_kind="k3", temperature=1.0, loss_agg="token-mean", weight_decay=0.01, grad_clip=1.0,
                 b1=0.9, b2=0.999, schedule="constant", warmup_steps=0, max_new_tokens=2048,
                 # 16 micro-batches of 8 states: one state per device per micro-batch on 8 chips, which is
                 # what fits 80 GB at 3B and 7B (BENCHMARKS.md, learner memory)
                 micro_batch_states=8)


def _check_model_source(model) -> None:
    """A preset name, a directory with a config.json, or a hub id ('org/name', fetched when the policy loads)."""
    _check(isinstance(model, str) and model, f"model must be a preset name, a directory or a hub id, got {model!r}")
    if model.lower() in PRESETS:
        return
    if os.path.exists(model):
        _check(os.path.isdir(model), f"model {model} is a file; pass the checkpoint directory holding config.json")
        _check(os.path.isfile(os.path.join(model, "config.json")), f"model directory {model} has no config.json")
        return
    hub_like = model.count("/") == 1 and not model.startswith((".", "/", "~")) and all(model.split("/"))
    _check(hub_like, f"model {model!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor an existing "
                     f"directory nor a hub id like 'Qwen/Qwen2.5-VL-3B-Instruct'")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value, low: int, message: str | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(message or f"{name} must be an integer >= {low}, got {value!r}")


# ------------------------------------------------------------------------------------------ policy
def load_policy(config: TrainConfig, mesh=None) -> tuple[Qwen25VL, Tokenizer]:
    """The model and its tokenizer, from a preset (random init) or a checkpoint directory / hub id.

    mesh: a checkpoint's tensors are read straight onto their shards of it (a 7B model never sits on one
    device first)."""
    dtype, param_dtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
    options = dict(dtype=dtype, param_dtype=param_dtype, remat=config.remat, freeze_vision=config.freeze_vision)
    if config.model.lower() in PRESETS:
        model_config = preset(config.model)
        model = Qwen25VL(model_config, rngs=nnx.Rngs(config.init_seed), **options)
        tokenizer = _preset_tokenizer(config, model_config)
    else:
        from g1jax.models.loading import load_pretrained, resolve_checkpoint_dir

        directory = resolve_checkpoint_dir(config.model)
        model = load_pretrained(directory, shardings=mesh, **options)
        tokenizer = load_tokenizer(config.tokenizer or _tokenizer_source(directory))
    return model, tokenizer


def _preset_tokenizer(config: TrainConfig, model_config: Qwen25VLConfig) -> Tokenizer:
    if config.tokenizer:
        return load_tokenizer(config.tokenizer)
    if model_config.text.vocab_size >= 151_665:  # a real-size vocabulary: the offline Qwen2.5 tokenizer
        return load_tokenizer()
    # A small BPE learned on the games' own text (prompts, board text, the teachers' phrases): the
    # answers and prompts of a tiny run then take a third of the tokens they would otherwise.
    return make_tiny_tokenizer(vocab_size=model_config.text.vocab_size, corpus=_game_corpus())


def _game_corpus() -> list[str]:
    from g1jax.tokenizer import _TINY_CORPUS as TINY_CORPUS

    phrases = ["<perception>\n 2 | 4 | - | 8 \n 16 | 32 | 64 | 128 \n</perception>\n<think>\n",
               "Looking 2 moves ahead (merge points, then room and merges left): Up merges 1 pair for 16 points, "
               "value 58.0; Right cannot move; Down merges 2 pairs for 8 points; Left merges no pair. "
               "So I play Down (2).\n</think>\n<answer>2</answer>",
               "Red circle | Green square | Blue triangle | Yellow diamond | Magenta cross | Cyan star | Empty | - ",
               "pair (0, 1) (2, 3) leaves 12 legal pairs; swap score points cascade tiles"]
    return [*TINY_CORPUS, *(envs.make(name).prompt for name in envs.list_games()), *phrases]


def _tokenizer_source(directory: str) -> str | None:
    has_own = any(os.path.isfile(os.path.join(directory, f)) for f in ("tokenizer.json", "tokenizer_config.json"))
    return directory if has_own else None


def make_optimizer(config: TrainConfig, learning_rate: float | None = None,
                   steps: int | None = None) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with the configured schedule (the RL phase's by default)."""
    lr = config.learning_rate if learning_rate is None else learning_rate
    steps = config.steps if steps is None else steps
    if config.schedule == "constant":
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, config.warmup_steps), optax.constant_schedule(lr)],
            [config.warmup_steps]) if config.warmup_steps else optax.constant_schedule(lr)
    else:
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps,
                                                      max(steps, config.warmup_steps + 1))
    return optax.chain(optax.clip_by_global_norm(config.grad_clip),
                       optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay))


# ------------------------------------------------------------------------------------------ the step
@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # nnx.State of the trainable parameters
    opt_state: Any


@flax.struct.dataclass
class Batch:
    """A rollout as the update sees it (P prompts, B = P * G completions)."""

    prompt_ids: jax.Array  # int32 [P, T]
    prompt_mask: jax.Array  # int32 [P, T]
    prompt_positions: jax.Array  # int32 [3, P, T]
    pixel_values: jax.Array  # [P * patches, 1176]
    completion: jax.Array  # int32 [B, L]
    completion_mask: jax.Array  # bool [B, L]
    sampler_logprobs: jax.Array  # float32 [B, L]
    rewards: jax.Array  # float32 [B]


def completion_logprobs(model: Qwen25VL, batch: Batch, *, image_grids, group_size: int, temperature: float):
    """Teacher-forced log-probs and entropies [B, L] of the completions, each prompt's image encoded once."""
    prompts, prompt_len = batch.prompt_ids.shape
    length = batch.completion.shape[1]
    features = model.encode_images(batch.pixel_values, image_grids)
    features = jnp.repeat(features.reshape(prompts, -1, features.shape[-1]), group_size, axis=0)
    repeat = functools.partial(jnp.repeat, repeats=group_size, axis=0)
    ids = jnp.concatenate([repeat(batch.prompt_ids), batch.completion], axis=1)
    mask = jnp.concatenate([repeat(batch.prompt_mask), batch.completion_mask.astype(jnp.int32)], axis=1)
    valid = batch.prompt_mask.astype(bool)[None]
    start = jnp.max(jnp.where(valid, batch.prompt_positions, jnp.iinfo(jnp.int32).min), axis=(0, 2)) + 1
    completion_positions = repeat(start)[:, None] + jnp.arange(length)[None, :]
    positions = jnp.concatenate(
        [jnp.repeat(batch.prompt_positions, group_size, axis=1),
         jnp.broadcast_to(completion_positions[None], (3, *completion_positions.shape))], axis=2)
    # The features fill the prompt's image slots only: an image-pad id inside an answer is a token.
    image_slots = jnp.concatenate([repeat(batch.prompt_ids == model.config.image_token_id),
                                   jnp.zeros(batch.completion.shape, bool)], axis=1)
    hidden = model.hidden_states(ids, positions, mask, image_features=features.reshape(-1, features.shape[-1]),
                                 image_slots=image_slots)
    return token_logprobs(model, hidden[:, prompt_len - 1:prompt_len + length - 1], batch.completion,
                          temperature=temperature, return_entropy=True, text_only=True)


def _micro_batches(batch: Batch, count: int) -> Batch:
    """Split a batch into `count` micro-batches of whole groups (stacked on a new leading axis)."""
    def split(x, axis=0):
        moved = jnp.moveaxis(x, axis, 0)
        return jnp.moveaxis(moved.reshape(count, moved.shape[0] // count, *moved.shape[1:]), 1, axis + 1)

    return Batch(prompt_ids=split(batch.prompt_ids), prompt_mask=split(batch.prompt_mask),
                 prompt_positions=split(batch.prompt_positions, axis=1), pixel_values=split(batch.pixel_values),
                 completion=split(batch.completion), completion_mask=split(batch.completion_mask),
                 sampler_logprobs=split(batch.sampler_logprobs), rewards=split(batch.rewards))


def _accumulated_gradients(grad_fn, params, batch: Batch, row_values, micro_count: int):
    """Sum `grad_fn(params, micro_batch, micro_row_values)` -> (grads, (count, metric sums)) over
    micro-batches of whole groups (a scan: one micro-batch's activations live at a time)."""
    if micro_count == 1:
        return grad_fn(params, batch, row_values)
    micro = _micro_batches(batch, micro_count)
    rows = row_values.reshape(micro_count, -1)
    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(lambda: grad_fn(params, first, rows[0]))
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

    def accumulate(carry, xs):
        return jax.tree.map(jnp.add, carry, grad_fn(params, *xs)), None

    summed, _ = jax.lax.scan(accumulate, zeros, (micro, rows))
    return summed


def _apply(optimizer, state: TrainState, grads, count):
    # the sum of per-token gradients / the total count = the gradient of the global (sum / count) loss
    grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1.0), grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    norms = {"grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), norms


def _micro_count(config: TrainConfig) -> int:
    return config.states_per_step // (config.micro_batch_states or config.states_per_step)


def make_train_step(graphdef, optimizer: optax.GradientTransformation, config: TrainConfig, image_grids):
    """The pure GRPO update `(state, frozen, reference, batch) -> (state, metrics)` (not yet jitted)."""
    grpo_config = config.grpo
    group_size = config.group_size
    temperature = config.temperature
    max_len = config.max_new_tokens
    micro_count = _micro_count(config)
    micro_grids = tuple(image_grids[: len(image_grids) // micro_count])

    def micro_loss(params, frozen, reference, micro: Batch, advantages):
        model = nnx.merge(graphdef, params, frozen)
        logp, entropy = completion_logprobs(model, micro, image_grids=micro_grids, group_size=group_size,
                                            temperature=temperature)
        ref_logp = None
        if grpo_config.needs_reference:
            ref_model = nnx.merge(graphdef, reference, frozen)
            ref_logp = jax.lax.stop_gradient(completion_logprobs(
                ref_model, micro, image_grids=micro_grids, group_size=group_size, temperature=temperature)[0])
        loss_sum, loss_count, metrics = grpo.grpo_loss_terms(
            logp, jax.lax.stop_gradient(logp), advantages, micro.completion_mask, grpo_config,
            ref_logp=ref_logp, sampler_logp=micro.sampler_logprobs, max_len=max_len)
        weights = micro.completion_mask.astype(jnp.float32)
        metrics["entropy"] = (jnp.sum(jax.lax.stop_gradient(entropy) * weights), jnp.sum(weights))
        metrics["loss"] = (jax.lax.stop_gradient(loss_sum), loss_count)  # the objective, as config.loss_agg weighs it
        return loss_sum, (loss_count, metrics)

    def train_step(state: TrainState, frozen, reference, batch: Batch):
        advantages = grpo.group_advantages(batch.rewards, group_size, grpo_config.advantage,
                                           grpo_config.advantage_eps)
        grad_fn = jax.grad(lambda p, b, a: micro_loss(p, frozen, reference, b, a), has_aux=True)
        grads, (count, metric_sums) = _accumulated_gradients(grad_fn, state.params, batch, advantages, micro_count)
        state, metrics = _apply(optimizer, state, grads, count)
        metrics.update({name: grpo.ratio_of(*pair) for name, pair in metric_sums.items()})
        metrics["frac_zero_std"] = jnp.mean(grpo.zero_spread_groups(batch.rewards, group_size).astype(jnp.float32))
        return state, metrics

    return train_step


def make_sft_step(graphdef, optimizer: optax.GradientTransformation, config: TrainConfig, image_grids):
    """The pure cold-start update `(state, frozen, batch) -> (state, metrics)`: masked cross-entropy on the
    teacher's answer tokens (one answer per prompt)."""
    micro_count = _micro_count(config)
    micro_grids = tuple(image_grids[: len(image_grids) // micro_count])

    def micro_loss(params, frozen, micro: Batch, unused):
        model = nnx.merge(graphdef, params, frozen)
        logp, _ = completion_logprobs(model, micro, image_grids=micro_grids, group_size=1, temperature=1.0)
        loss_sum, count = sft_loss_terms(logp, micro.completion_mask)
        return loss_sum, (count, {"sft_loss": (loss_sum, count)})

    def sft_step(state: TrainState, frozen, batch: Batch):
        grad_fn = jax.grad(lambda p, b, u: micro_loss(p, frozen, b, u), has_aux=True)
        grads, (count, metric_sums) = _accumulated_gradients(grad_fn, state.params, batch, batch.rewards,
                                                             micro_count)
        state, metrics = _apply(optimizer, state, grads, count)
        metrics.update({name: grpo.ratio_of(*pair) for name, pair in metric_sums.items()})
        return state, metrics

    return sft_step


def _step_key(kind: str, config: TrainConfig) -> tuple:
    """What a jitted step of `kind` ("rl" / "sft") depends on in the config: its optimizer (the
    schedule's length only when it decays) and the update's static settings. Run-only fields (run
    directory, seed, logging, checkpoints) are left out, so Trainers that differ only there share it."""
    lr, steps = (config.learning_rate, config.steps) if kind == "rl" else (config.sft_learning_rate, config.sft_steps)
    optimizer = (lr, config.schedule, config.warmup_steps, None if config.schedule == "constant" else steps,
                 config.weight_decay, config.b1, config.b2, config.grad_clip)
    update = (config.grpo, config.group_size, config.temperature, config.max_new_tokens) if kind == "rl" else ()
    return kind, optimizer, update, _micro_count(config)


_STEP_CACHE: dict[tuple, Any] = {}
_STEP_CACHE_SIZE = 8


def _jitted_step(kind: str, graphdef, optimizer, config: TrainConfig, image_grids: tuple, state_shardings, mesh):
    """The jitted, donating train (`kind` "rl") or cold-start ("sft") step with `optimizer` (the one
    `make_optimizer` builds for that phase of `config`), shared by every Trainer with the same model
    graph, step settings, image grids and state shardings: a new Trainer of a run seen before in this
    process (a resume, a sweep over seeds, a test) does not compile it again. It runs with `mesh` set,
    so the model's activation and weight constraints (g1jax.sharding, "inside the model") apply."""
    shardings = jax.tree.flatten(state_shardings)
    key = (_step_key(kind, config), graphdef, image_grids, tuple(shardings[0]), shardings[1])
    if key not in _STEP_CACHE:
        if len(_STEP_CACHE) >= _STEP_CACHE_SIZE:
            _STEP_CACHE.pop(next(iter(_STEP_CACHE)))
        make_step = make_train_step if kind == "rl" else make_sft_step
        step_fn = make_step(graphdef, optimizer, config, image_grids)
        _STEP_CACHE[key] = mesh_lib.on_mesh(
            jax.jit(step_fn, donate_argnums=(0,), out_shardings=(state_shardings, None)), mesh)
    return _STEP_CACHE[key]


# ------------------------------------------------------------------------------------------ trainer
class Trainer:
    """Holds a run: policy, rollout, jitted step, checkpoints, logs. `run()` trains to `config.steps`."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, games: envs.MultiGame | None = None,
                 policy: tuple[Qwen25VL, Tokenizer] | None = None,
                 reward_weights: Mapping[str, Mapping[str, float]] | None = None):
        """games / policy / reward_weights: a custom task instead of `config.games` (a MultiGame of your own
        `envs.Env` subclasses with `states_per_step` rows, and their reward weights by game name) and a
        model + tokenizer instead of `config.model`."""
        from g1jax.run_logging import RunLogger

        self._created = time.perf_counter()
        self.config = config
        self.mesh = mesh_lib.make_mesh(config.mesh)
        if games is None:
            if reward_weights is not None:
                raise ConfigError("reward_weights= goes with games= (a custom task); weights for the configured "
                                  "games belong in config.reward_weights, which the run directory keeps")
            games = config.make_games()
            reward_weights = config.reward_weights
        elif games.size != config.states_per_step:
            raise ConfigError(f"the custom games have {games.size} rows but states_per_step is "
                              f"{config.states_per_step}")
        model, self.tokenizer = load_policy(config, self.mesh) if policy is None else policy
        self.model_config = model.config
        self.rollout = GameRollout(
            games, self.tokenizer, model.config, group_size=config.group_size, sampling=config.sampling,
            warmup_moves=dict(config.warmup_moves), warmup_policy=config.warmup_policy,
            reward_weights={n: g1_weights(n, w) for n, w in (reward_weights or {}).items()},
            strict_format=config.strict_format, mesh=self.mesh)
        self.graphdef, params, frozen = nnx.split(model, trainable_filter(config.freeze_vision), ...)
        params, frozen = mesh_lib.shard_state(params, self.mesh), mesh_lib.shard_state(frozen, self.mesh)
        self.optimizer = make_optimizer(config)
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.optimizer.init(params))
        # Pin every leaf's sharding (the optimizer moments follow their parameters, counters are
        # replicated), in and out of the jitted step: a changed input sharding would recompile it.
        self.state_shardings = jax.tree.map(self._sharding_of, state)
        self.state = jax.device_put(state, self.state_shardings)
        self.frozen = frozen
        self.reference = jax.tree.map(jnp.copy, params) if config.grpo.needs_reference else None
        grids = tuple(self.rollout.prompts.image_grids)
        self._train_step = _jitted_step("rl", self.graphdef, self.optimizer, config, grids, self.state_shardings,
                                        self.mesh)
        self.teacher_data = None
        if config.sft_steps:
            self.sft_optimizer = make_optimizer(config, config.sft_learning_rate, config.sft_steps)
            self.teacher_data = TeacherData(games, self.tokenizer, config.max_new_tokens, kind=config.teacher_kind,
                                            epsilon=config.teacher_epsilon)
            self._sft_step = _jitted_step("sft", self.graphdef, self.sft_optimizer, config, grids,
                                          self.state_shardings, self.mesh)
        self.eval_rollout = None
        if config.eval_states:
            eval_games = envs.MultiGame(games.games, (config.eval_states // len(games.games),) * len(games.games))
            self.eval_rollout = GameRollout(
                eval_games, self.tokenizer, model.config, group_size=1, sampling=config.sampling,
                warmup_moves=dict(config.warmup_moves), warmup_policy=config.warmup_policy,
                reward_weights=self.rollout.weights, strict_format=config.strict_format, mesh=self.mesh)
        self.base_key = jax.random.key(config.seed)
        self.checkpoints = Checkpointer(os.path.join(config.run_dir, "checkpoints"), keep=config.keep_checkpoints)
        self.logger = RunLogger(config.run_dir, config.to_dict(), tensorboard=config.tensorboard)
        self.start_step = 0
        if resume:
            self._resume()

    def _sharding_of(self, leaf):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh == self.mesh:
            return sharding
        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())

    # -------------------------------------------------------------- checkpoints
    def _items(self) -> dict[str, Any]:
        items = {"params": self.state.params, "opt_state": self.state.opt_state}
        if self.reference is not None:
            items["reference"] = self.reference
        return items

    def save(self, step: int) -> None:
        meta = {"step": step, "seed": self.config.seed, "data_cursor": step,
                "rng_key": np.asarray(jax.random.key_data(self.base_key)).tolist(), "config": self.config.to_dict()}
        self.checkpoints.save(step, self._items(), meta)

    def _resume(self) -> None:
        found = self.checkpoints.restore_latest({name: abstract_like(tree) for name, tree in self._items().items()})
        if found is None:
            self.logger.note(f"no checkpoint in {self.checkpoints.directory}: starting from step 0")
            return
        step, items, meta = found
        if meta["seed"] != self.config.seed:
            raise ConfigError(f"the checkpoint at step {step} was written by a run with seed {meta['seed']}, this "
                              f"config has seed {self.config.seed}: a resumed run continues the same states and "
                              "samples only with its own seed (or start a new run directory)")
        self.state = jax.device_put(TrainState(step=jnp.asarray(step, jnp.int32), params=items["params"],
                                               opt_state=items["opt_state"]), self.state_shardings)
        if self.reference is not None:
            self.reference = items["reference"]
        self.start_step = step
        self.logger.truncate_after(step)
        self.logger.note(f"resumed from step {step} ({self.checkpoints.directory})")

    # -------------------------------------------------------------- one step
    def step_key(self, step: int):
        return jax.random.fold_in(self.base_key, step)

    def collect(self, step: int) -> Rollout:
        return self.rollout(self.graphdef, (self.state.params, self.frozen), self.step_key(step))

    def batch_of(self, rollout: Rollout) -> Batch:
        p = self.rollout.prompts
        batch = Batch(prompt_ids=jnp.asarray(p.input_ids), prompt_mask=jnp.asarray(p.attention_mask),
                      prompt_positions=jnp.asarray(p.positions), pixel_values=rollout.pixel_values,
                      completion=rollout.samples.tokens, completion_mask=rollout.samples.mask,
                      sampler_logprobs=rollout.samples.logprobs, rewards=jnp.asarray(rollout.rewards))
        return shard_batch(batch, self.mesh)

    def train_step(self, step: int) -> dict[str, float]:
        """Roll out and update once (`step` is the 0-based index of this step); returns the step's metrics."""
        started = time.perf_counter()
        rollout = self.collect(step)
        jax.block_until_ready(rollout.samples.tokens)
        rollout_time = time.perf_counter() - started
        update_started = time.perf_counter()
        self.state, metrics = self._train_step(self.state, self.frozen, self.reference, self.batch_of(rollout))
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        update_time = time.perf_counter() - update_started
        metrics.update(rollout_metrics(rollout, self.rollout.games.game_names, self.config.group_size))
        tokens = float(np.asarray(rollout.samples.lengths).sum())
        metrics.update(step=step + 1, phase="rl", time_rollout=rollout_time, time_update=update_time,
                       time_step=rollout_time + update_time, tokens_per_s=tokens / max(rollout_time, 1e-9))
        if self.config.sample_every and (step + 1) % self.config.sample_every == 0:
            self.logger.samples(step + 1, rollout, self.config.group_size)
        return metrics

    def sft_step(self, step: int) -> dict[str, float]:
        """One cold-start update on fresh teacher answers (`step` < config.sft_steps)."""
        started = time.perf_counter()
        start_key, teacher_key = jax.random.split(self.step_key(step))
        states, _, pixel_values = self.rollout.start(start_key)
        texts, _ = self.teacher_data.answers(teacher_key, states)
        completion, mask = self.teacher_data.tokens(texts)
        p = self.rollout.prompts
        zeros = jnp.zeros(completion.shape, jnp.float32)
        batch = shard_batch(Batch(prompt_ids=jnp.asarray(p.input_ids), prompt_mask=jnp.asarray(p.attention_mask),
                                  prompt_positions=jnp.asarray(p.positions), pixel_values=pixel_values,
                                  completion=jnp.asarray(completion), completion_mask=jnp.asarray(mask),
                                  sampler_logprobs=zeros, rewards=zeros[:, 0]), self.mesh)
        self.state, metrics = self._sft_step(self.state, self.frozen, batch)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        return dict(metrics, step=step + 1, phase="sft", answer_tokens=float(mask.sum(1).mean()),
                    time_step=time.perf_counter() - started)

    def begin_rl(self) -> None:
        """Entering RL: a fresh optimizer state, the reference = the policy entering RL, the 'before' evaluation."""
        self.state = jax.device_put(TrainState(step=self.state.step, params=self.state.params,
                                               opt_state=self.optimizer.init(self.state.params)), self.state_shardings)
        if self.reference is not None:
            self.reference = jax.tree.map(jnp.copy, self.state.params)
        if self.eval_rollout is not None:
            self.logger.write_json("eval_before.json", self.evaluate())

    def evaluate(self) -> dict[str, Any]:
        """The current policy and the random policy on the held-out start states (one answer each);
        "answers" holds the policy's answer texts, in held-out state order."""
        rollout = self.eval_rollout
        key = jax.random.fold_in(self.base_key, HELD_OUT_STREAM)  # never a training step's key
        result = rollout(self.graphdef, (self.state.params, self.frozen), key)
        random_key, score_key = jax.random.split(jax.random.fold_in(key, 1))
        random_texts = random_answers(rollout.games, random_key)
        _, random_parts, random_rewards = rollout.score_texts(score_key, result.states, random_texts)
        return {"policy": reward_summary(result.rewards, result.parts, rollout.games.game_names),
                "random": reward_summary(random_rewards, random_parts, rollout.games.game_names),
                "rewards": result.rewards.tolist(), "answers": list(result.texts)}

    def run(self) -> dict[str, Any]:
        config = self.config
        total = config.sft_steps + config.steps
        bar = self.logger.progress(self.start_step, total, enabled=config.progress)
        metrics = {}
        for step in range(self.start_step, total):
            if step == config.sft_steps:
                self.begin_rl()
            metrics = self.sft_step(step) if step < config.sft_steps else self.train_step(step)
            self.logger.metrics(metrics)
            bar.update(metrics)
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 or step + 1 in (
                    total, config.sft_steps):
                self.save(step + 1)
        bar.close()
        self.logger.reward_curve()
        summary = {"steps": total, "final": metrics, "run_dir": config.run_dir}
        if self.eval_rollout is not None:
            summary.update(self.gain_summary(self.logger.read_json("eval_before.json"), self.evaluate()))
            # wall time of this process (set-up, compiles, training, both evaluations; a resumed run counts its part)
            summary["wall_s"] = time.perf_counter() - self._created
            self.logger.write_json("summary.json", {k: v for k, v in summary.items() if k != "final"})
        if config.export_hf:
            self.export(os.path.join(config.run_dir, "hf"))
        self.checkpoints.close()
        return summary

    @staticmethod
    def gain_summary(before: dict, after: dict) -> dict[str, Any]:
        """before / after / random blocks and the paired gain on the same held-out states."""
        diff = np.asarray(after["rewards"]) - np.asarray(before["rewards"])
        se = float(np.std(diff, ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("nan")
        gain = float(diff.mean())
        return {"before": before["policy"], "after": after["policy"], "random": after["random"],
                "gain": gain, "gain_se": se, "gain_over_se": gain / se if se > 0 else float("nan"),
                "learned": bool(gain > 2 * se and after["policy"]["reward"] > after["random"]["reward"])}

    def policy(self) -> Qwen25VL:
        return nnx.merge(self.graphdef, self.state.params, self.frozen)

    def export(self, directory: str) -> None:
        from g1jax.models.loading import save_pretrained

        save_pretrained(self.policy(), directory)
        self.tokenizer.save(os.path.join(directory, "tokenizer.json"))


HELD_OUT_STREAM = 2**31 - 1  # fold_in index of the evaluation states (training steps use 0, 1, 2, ...)


def random_answers(games: envs.MultiGame, key) -> list[str]:
    """G1's random baseline as answers: a uniform action id (the invalid one excluded) per row, as bare
    `<answer>` text (no perception, no reasoning)."""
    texts = []
    for i, (game, count) in enumerate(zip(games.games, games.counts)):
        draws = np.asarray(jax.random.randint(jax.random.fold_in(key, i), (count,), 0, game.num_actions - 1))
        actions = np.where(draws >= game.invalid_action, draws + 1, draws)
        texts.extend(f"<answer>{answer_text(game, int(a))}</answer>" for a in actions)
    return texts


def reward_summary(rewards, parts, game_names) -> dict[str, Any]:
    """Mean total reward with its standard error, the mean of each part, per game."""
    rewards = np.asarray(rewards, np.float64)

    def block(sel):
        r = rewards[sel]
        out = {"reward": float(r.mean()), "reward_se": float(r.std(ddof=1) / np.sqrt(r.size)) if r.size > 1 else 0.0,
               "n": int(r.size)}
        out.update({f"reward_{p}": float(np.asarray(parts[p], np.float64)[sel].mean()) for p in PARTS})
        out["perception_accuracy"] = float(np.asarray(parts["perception_exact"])[sel].mean())
        return out

    names = np.asarray(game_names, dtype=object)
    summary = block(np.ones(rewards.size, bool))
    summary["games"] = {name: block(names == name) for name in dict.fromkeys(game_names)}
    return summary


def shard_batch(batch: Batch, mesh) -> Batch:
    """Rows of the batch over the mesh's ("data", "fsdp") axes (replicated when they do not divide)."""
    def put(x, axis=0):
        return mesh_lib.shard_rows(x, mesh, axis)

    return Batch(prompt_ids=put(batch.prompt_ids), prompt_mask=put(batch.prompt_mask),
                 prompt_positions=put(batch.prompt_positions, 1), pixel_values=put(batch.pixel_values),
                 completion=put(batch.completion), completion_mask=put(batch.completion_mask),
                 sampler_logprobs=put(batch.sampler_logprobs), rewards=put(batch.rewards))


def rollout_metrics(rollout: Rollout, game_names: Sequence[str], group_size: int) -> dict[str, float]:
    """Reward parts (overall and per game), answer lengths, truncation, valid-action rate."""
    out = {"reward": float(np.mean(rollout.rewards)), "reward_std": float(np.std(rollout.rewards))}
    rows = np.repeat(np.asarray(game_names, dtype=object), group_size)
    for part in (*PARTS, "legal", "perception_exact"):
        values = np.asarray(rollout.parts[part], np.float32)
        out[f"reward_{part}" if part in PARTS else part] = float(values.mean())
    exact = np.asarray(rollout.parts["perception_exact"], bool)
    good = np.asarray(rollout.parts["game"]) > 0
    out["perception_accuracy"] = float(exact.mean())
    out["reasoning_accuracy"] = float(good[exact].mean()) if exact.any() else float("nan")
    for name in dict.fromkeys(game_names):
        sel = rows == name
        out[f"{name}/reward"] = float(np.mean(rollout.rewards[sel]))
        out[f"{name}/reward_game"] = float(np.mean(rollout.parts["game"][sel]))
    lengths = np.asarray(rollout.samples.lengths)
    out.update(length_mean=float(lengths.mean()), length_max=float(lengths.max()),
               truncated_frac=float(np.mean(np.asarray(rollout.samples.truncated))))
    return out


def make_trainer(config: TrainConfig, *, resume: bool = False) -> Trainer:
    return Trainer(config, resume=resume)
