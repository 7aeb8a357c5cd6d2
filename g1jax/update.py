"""The update: a rollout as a `Batch`, teacher-forced log-probs, micro-batched gradients, and the two
jitted steps, GRPO (`grpo_update`) and the cold start's masked cross-entropy (`sft_update`).

The parameters live as nnx States (trainable, frozen) next to the optax state in `TrainState`, a plain
pytree: jit, sharding and orbax see arrays only. A step is a pure function of arrays, donating the state:

    grpo_update(state, frozen, reference, batch, *, graphdef, settings, placement) -> (state, metrics)
    sft_update(state, frozen, batch, *, graphdef, settings, placement) -> (state, metrics)

Its keyword arguments are static and hashable: the model graph, `settings` (exactly what the step reads
besides its arrays: optimizer, micro-batches, image grids, GRPO loss, temperature) and `placement` (the
state's shardings, which the step's output keeps). jax.jit's own cache then compiles a step once per
distinct settings: trainers that differ only in run-only fields (run directory, seed, logging) share it,
and a setting the step reads cannot be left out of its key, because the step reads nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from g1jax import sharding as mesh_lib
from g1jax.config import TrainConfig
from g1jax.models.qwen25vl import Qwen25VL, token_logprobs
from g1jax.rl import grpo
from g1jax.sft import sft_loss_terms


# ------------------------------------------------------------------------------------------ data
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


# The axis of each field that indexes its rows (prompts, patches or completions): what sharding and
# micro-batching split.
ROW_AXES = Batch(
    prompt_ids=0,
    prompt_mask=0,
    prompt_positions=1,
    pixel_values=0,
    completion=0,
    completion_mask=0,
    sampler_logprobs=0,
    rewards=0,
)


def shard_batch(batch: Batch, mesh) -> Batch:
    """Rows of the batch over the mesh's ("data", "fsdp") axes (replicated when they do not divide)."""
    return jax.tree.map(lambda x, axis: mesh_lib.shard_rows(x, mesh, axis), batch, ROW_AXES)


def _micro_batches(batch: Batch, count: int) -> Batch:
    """Split a batch into `count` micro- (or mini-) batches of whole groups (stacked on a new leading axis)."""

    def split(x, axis):
        moved = jnp.moveaxis(x, axis, 0)
        return jnp.moveaxis(moved.reshape(count, moved.shape[0] // count, *moved.shape[1:]), 1, axis + 1)

    return jax.tree.map(split, batch, ROW_AXES)


# ------------------------------------------------------------------------------------------ settings
@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerSettings:
    """Global-norm clipping, then AdamW with a constant or warm-up + cosine schedule."""

    learning_rate: float
    schedule: str
    warmup_steps: int
    decay_steps: int | None  # the cosine schedule's length (None with a constant schedule, which has none)
    weight_decay: float
    b1: float
    b2: float
    grad_clip: float

    @classmethod
    def of(cls, config: TrainConfig, phase: str = "rl") -> OptimizerSettings:
        """The optimizer of a phase of `config`: "rl" (learning_rate over steps) or "sft" (the cold start's)."""
        lr, steps = (
            (config.learning_rate, config.steps) if phase == "rl" else (config.sft_learning_rate, config.sft_steps)
        )
        # the schedule counts rollouts, as warmup_steps and steps do, whatever the optimizer steps per rollout
        per_step = config.grpo.updates_per_rollout if phase == "rl" else 1
        return cls(
            learning_rate=lr,
            schedule=config.schedule,
            warmup_steps=config.warmup_steps * per_step,
            decay_steps=None if config.schedule == "constant" else max(steps, config.warmup_steps + 1) * per_step,
            weight_decay=config.weight_decay,
            b1=config.b1,
            b2=config.b2,
            grad_clip=config.grad_clip,
        )

    def build(self) -> optax.GradientTransformation:
        lr, warmup = self.learning_rate, self.warmup_steps
        if self.schedule == "cosine":
            schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, self.decay_steps)
        elif warmup:
            schedule = optax.join_schedules(
                [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
            )
        else:
            schedule = optax.constant_schedule(lr)
        return optax.chain(
            optax.clip_by_global_norm(self.grad_clip),
            optax.adamw(schedule, b1=self.b1, b2=self.b2, weight_decay=self.weight_decay),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class UpdateSettings:
    """What the cold-start step reads besides its arrays (hashable: a static argument of jit)."""

    optimizer: OptimizerSettings
    micro_batches: int
    image_grids: tuple  # the whole batch's, one (t, h, w) per prompt
    # each prompt through the decoder once per group (`shared_prefix_logprobs`); False: once per answer
    # (`completion_logprobs`, the per-row update, kept as the reference the tests and benchmarks compare to)
    shared_prefix: bool = True

    @property
    def micro_grids(self) -> tuple:
        return self.image_grids[: len(self.image_grids) // self.micro_batches]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GRPOSettings(UpdateSettings):
    """What the GRPO step reads besides its arrays."""

    grpo: grpo.GRPOConfig
    temperature: float
    max_new_tokens: int

    @property
    def answers_per_prompt(self) -> int:
        """Completions per prompt row of the batch (each prompt's image is encoded once for all of them)."""
        return self.grpo.group_size


def grpo_settings(config: TrainConfig, image_grids) -> GRPOSettings:
    return GRPOSettings(
        optimizer=OptimizerSettings.of(config, "rl"),
        # at least one micro-batch per mini-batch (config's check makes micro-batches split mini-batches evenly)
        micro_batches=max(config.micro_batches, config.grpo.ppo_minibatches),
        image_grids=tuple(image_grids),
        grpo=config.grpo,
        temperature=config.temperature,
        max_new_tokens=config.max_new_tokens,
    )


def sft_settings(config: TrainConfig, image_grids) -> UpdateSettings:
    return UpdateSettings(
        optimizer=OptimizerSettings.of(config, "sft"),
        micro_batches=config.micro_batches,
        image_grids=tuple(image_grids),
    )


@dataclasses.dataclass(frozen=True)
class Placement:
    """The shardings of a TrainState's leaves as a hashable value: the step pins its output state to them,
    so the next step's input has the same layout (a changed input sharding would recompile the step)."""

    treedef: Any
    shardings: tuple

    @classmethod
    def of(cls, shardings_tree) -> Placement:
        leaves, treedef = jax.tree.flatten(shardings_tree)
        return cls(treedef, tuple(leaves))

    def tree(self):
        return jax.tree.unflatten(self.treedef, self.shardings)


# ------------------------------------------------------------------------------------------ the pieces
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
        [
            jnp.repeat(batch.prompt_positions, group_size, axis=1),
            jnp.broadcast_to(completion_positions[None], (3, *completion_positions.shape)),
        ],
        axis=2,
    )
    # The features fill the prompt's image slots only: an image-pad id inside an answer is a token.
    image_slots = jnp.concatenate(
        [repeat(batch.prompt_ids == model.config.image_token_id), jnp.zeros(batch.completion.shape, bool)], axis=1
    )
    hidden = model.hidden_states(
        ids, positions, mask, image_features=features.reshape(-1, features.shape[-1]), image_slots=image_slots
    )
    return token_logprobs(
        model,
        hidden[:, prompt_len - 1 : prompt_len + length - 1],
        batch.completion,
        temperature=temperature,
        return_entropy=True,
        text_only=True,
    )


def shared_prefix_logprobs(model: Qwen25VL, batch: Batch, *, image_grids, group_size: int, temperature: float):
    """`completion_logprobs` with each prompt through the decoder once per group, not once per answer.

    The prompts [P, S] go through the layers once; each layer's prompt keys and values are read by the
    prompt's G answers (broadcast, never copied), whose tokens attend to them and causally to their own
    answer (`Qwen25VL.shared_prefix_hidden_states`). An answer's first token is scored from its prompt's
    last hidden state (the last column: prompts are left-padded), the others from the answer's own.
    Equal to `completion_logprobs` up to float32 sum order (tests/test_shared_prefix.py states the bound).
    """
    prompts = batch.prompt_ids.shape[0]
    features = model.encode_images(batch.pixel_values, image_grids)
    prompt_hidden, answer_hidden = model.shared_prefix_hidden_states(
        batch.prompt_ids,
        batch.prompt_positions,
        batch.prompt_mask,
        batch.completion,
        batch.completion_mask,
        features.reshape(-1, features.shape[-1]),
    )
    rows = answer_hidden.shape[0]
    first = jnp.broadcast_to(prompt_hidden[:, None, -1:], (prompts, rows // prompts, 1, prompt_hidden.shape[-1]))
    hidden = jnp.concatenate([first.reshape(rows, 1, -1), answer_hidden[:, :-1]], axis=1)
    return token_logprobs(model, hidden, batch.completion, temperature=temperature, return_entropy=True, text_only=True)


def _split_rows(row_values, count: int):
    """Per-completion values (arrays whose leading axis indexes completions) in `count` stacked parts."""
    return jax.tree.map(lambda x: x.reshape(count, -1, *x.shape[1:]), row_values)


def _accumulated_gradients(grad_fn, params, batch: Batch, row_values, micro_count: int):
    """Sum `grad_fn(params, micro_batch, micro_row_values)` -> (grads, (count, metric sums)) over
    micro-batches of whole groups (a scan: one micro-batch's activations live at a time)."""
    if micro_count == 1:
        return grad_fn(params, batch, row_values)
    micro = _micro_batches(batch, micro_count)
    rows = _split_rows(row_values, micro_count)
    first, first_rows = jax.tree.map(lambda x: x[0], (micro, rows))
    shapes = jax.eval_shape(lambda: grad_fn(params, first, first_rows))
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

    def accumulate(carry, xs):
        return jax.tree.map(jnp.add, carry, grad_fn(params, *xs)), None

    summed, _ = jax.lax.scan(accumulate, zeros, (micro, rows))
    return summed


def _apply(settings: UpdateSettings, placement: Placement, state: TrainState, grads, count, metric_sums):
    """One optimizer update from summed gradients; the new state keeps `placement`'s shardings."""
    # the sum of per-token gradients / the total count = the gradient of the global (sum / count) loss
    grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1.0), grads)
    updates, opt_state = settings.optimizer.build().update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    metrics = {"grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params)}
    metrics.update({name: grpo.ratio_of(*pair) for name, pair in metric_sums.items()})
    return jax.lax.with_sharding_constraint(state, placement.tree()), metrics


# ------------------------------------------------------------------------------------------ the steps
def _logprobs_fn(settings: UpdateSettings):
    return shared_prefix_logprobs if settings.shared_prefix else completion_logprobs


def _micro_logprobs(settings: GRPOSettings):
    return functools.partial(
        _logprobs_fn(settings),
        image_grids=settings.micro_grids,
        group_size=settings.answers_per_prompt,
        temperature=settings.temperature,
    )


def _grpo_micro_loss(params, frozen, reference, micro: Batch, rows, *, graphdef, settings: GRPOSettings):
    """rows: (advantages [b], old log-probs [b, L] or None: one update per rollout, old = current)."""
    advantages, old_logp = rows
    logprobs = _micro_logprobs(settings)
    logp, entropy = logprobs(nnx.merge(graphdef, params, frozen), micro)
    if old_logp is None:
        old_logp = jax.lax.stop_gradient(logp)
    ref_logp = None
    if settings.grpo.needs_reference:
        ref_logp = jax.lax.stop_gradient(logprobs(nnx.merge(graphdef, reference, frozen), micro)[0])
    loss_sum, loss_count, metrics = grpo.grpo_loss_terms(
        logp,
        old_logp,
        advantages,
        micro.completion_mask,
        settings.grpo,
        ref_logp=ref_logp,
        sampler_logp=micro.sampler_logprobs,
        max_len=settings.max_new_tokens,
    )
    weights = micro.completion_mask.astype(jnp.float32)
    metrics["entropy"] = (jnp.sum(jax.lax.stop_gradient(entropy) * weights), jnp.sum(weights))
    metrics["loss"] = (jax.lax.stop_gradient(loss_sum), loss_count)  # the objective, as loss_agg weighs it
    return loss_sum, (loss_count, metrics)


def _old_logprobs(params, frozen, batch: Batch, *, graphdef, settings: GRPOSettings) -> jax.Array:
    """The sampling policy's teacher-forced log-probs [B, L] (one forward per micro-batch, no gradient):
    exact old log-probs whatever the sampler's precision."""
    model = nnx.merge(graphdef, params, frozen)
    micro = _micro_batches(batch, settings.micro_batches)
    old = jax.lax.map(lambda b: _micro_logprobs(settings)(model, b)[0], micro)
    return jax.lax.stop_gradient(old.reshape(-1, old.shape[-1]))


def _ppo_epochs(state: TrainState, batch: Batch, rows, grad_fn, *, settings: GRPOSettings, placement: Placement):
    """ppo_epochs passes over the rollout, each one optimizer step per mini-batch of whole groups (in a
    fixed order); the metrics are the mean over those steps."""
    config = settings.grpo
    minibatches = (_micro_batches(batch, config.ppo_minibatches), _split_rows(rows, config.ppo_minibatches))
    micro_count = settings.micro_batches // config.ppo_minibatches

    def minibatch_step(state, minibatch):
        grads, (count, metric_sums) = _accumulated_gradients(grad_fn, state.params, *minibatch, micro_count)
        return _apply(settings, placement, state, grads, count, metric_sums)

    def epoch(state, _):
        return jax.lax.scan(minibatch_step, state, minibatches)

    state, metrics = jax.lax.scan(epoch, state, None, length=config.ppo_epochs)
    return state, jax.tree.map(jnp.mean, metrics)


@functools.partial(jax.jit, static_argnames=("graphdef", "settings", "placement"), donate_argnums=(0,))
def grpo_update(
    state: TrainState, frozen, reference, batch: Batch, *, graphdef, settings: GRPOSettings, placement: Placement
):
    """GRPO on a rollout: group advantages, micro-batched (sum, count) loss, and one optimizer step, or
    with PPO epochs / mini-batches `updates_per_rollout` steps against the sampling policy's log-probs."""
    config = settings.grpo
    advantages = grpo.group_advantages(batch.rewards, config.group_size, config.advantage, config.advantage_eps)
    loss = functools.partial(_grpo_micro_loss, frozen=frozen, reference=reference, graphdef=graphdef, settings=settings)
    grad_fn = jax.grad(lambda p, b, r: loss(p, micro=b, rows=r), has_aux=True)
    if config.updates_per_rollout == 1:  # old = current: no extra forward pass (and G1's numbers exactly)
        grads, (count, metric_sums) = _accumulated_gradients(
            grad_fn, state.params, batch, (advantages, None), settings.micro_batches
        )
        state, metrics = _apply(settings, placement, state, grads, count, metric_sums)
    else:
        old_logp = _old_logprobs(state.params, frozen, batch, graphdef=graphdef, settings=settings)
        rows = (advantages, old_logp)
        state, metrics = _ppo_epochs(state, batch, rows, grad_fn, settings=settings, placement=placement)
    metrics["frac_zero_std"] = jnp.mean(grpo.zero_spread_groups(batch.rewards, config.group_size).astype(jnp.float32))
    return state, metrics


def _sft_micro_loss(params, frozen, micro: Batch, *, graphdef, settings: UpdateSettings):
    model = nnx.merge(graphdef, params, frozen)
    logp, _ = _logprobs_fn(settings)(model, micro, image_grids=settings.micro_grids, group_size=1, temperature=1.0)
    loss_sum, count = sft_loss_terms(logp, micro.completion_mask)
    return loss_sum, (count, {"sft_loss": (loss_sum, count)})


@functools.partial(jax.jit, static_argnames=("graphdef", "settings", "placement"), donate_argnums=(0,))
def sft_update(state: TrainState, frozen, batch: Batch, *, graphdef, settings: UpdateSettings, placement: Placement):
    """One cold-start update: masked cross-entropy on the teacher's answer tokens (one answer per prompt)."""
    loss = functools.partial(_sft_micro_loss, frozen=frozen, graphdef=graphdef, settings=settings)
    grad_fn = jax.grad(lambda p, b, unused: loss(p, micro=b), has_aux=True)
    # the rewards ride along as the per-row values the accumulation splits; the loss does not read them
    grads, (count, metric_sums) = _accumulated_gradients(
        grad_fn, state.params, batch, batch.rewards, settings.micro_batches
    )
    return _apply(settings, placement, state, grads, count, metric_sums)
