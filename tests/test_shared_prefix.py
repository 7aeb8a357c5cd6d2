"""The shared-prefix update (each prompt through the decoder once per group) against the per-row update
(each of the G answers with its own copy of the prompt): log-probs, entropies, gradients and whole GRPO
steps agree within float32 sum-order noise.

The bound: log-probs and entropies within 1e-5 (absolute, float32; measured 5e-7), every parameter's
gradient within 1e-5 of that parameter's largest gradient entry (measured 1e-6); a whole GRPO step's
metrics within rtol 1e-5 and its updated parameters within 1e-2 x lr (AdamW's first step divides by the
gradient's size, so an entry near zero turns noise into a move; a wrong gradient moves a weight 2 lr)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from g1jax.config import TrainConfig
from g1jax.models import Qwen25VL, get_rope_index, preset
from g1jax.trainer import Trainer
from g1jax.update import Batch, completion_logprobs, shard_batch, shared_prefix_logprobs

GROUP, LENGTH = 3, 7
GRID = (1, 4, 6)  # 24 patches, 6 image tokens


def prefix_batch(cfg) -> Batch:
    """3 left-padded prompts of different lengths (6, 2 and 10 text tokens around the image), G = 3 answers
    each of lengths 1..7 (one full), an image-pad id inside one answer (a token, not an image slot)."""
    rng = np.random.default_rng(0)
    image = [cfg.vision_start_token_id] + [cfg.image_token_id] * 6 + [cfg.vision_end_token_id]
    rows = [list(rng.integers(10, 900, 3)) + image + list(rng.integers(10, 900, n)) for n in (3, 0, 7)]
    prompts, width = len(rows), max(map(len, rows))
    ids, mask = np.zeros((prompts, width), np.int32), np.zeros((prompts, width), np.int32)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :], mask[r, width - len(row) :] = row, 1
    grids = (GRID,) * prompts
    positions, _ = get_rope_index(ids, grids, mask, image_token_id=cfg.image_token_id)
    answers = rng.integers(10, 900, (prompts * GROUP, LENGTH)).astype(np.int32)
    answers[1, 2] = cfg.image_token_id
    lengths = rng.integers(1, LENGTH + 1, prompts * GROUP)
    lengths[:2] = LENGTH, 1
    return Batch(
        prompt_ids=jnp.asarray(ids),
        prompt_mask=jnp.asarray(mask),
        prompt_positions=jnp.asarray(positions, jnp.int32),
        pixel_values=jax.random.normal(jax.random.key(1), (prompts * GRID[1] * GRID[2], 1176)),
        completion=jnp.asarray(answers),
        completion_mask=jnp.asarray(np.arange(LENGTH)[None] < lengths[:, None]),
        sampler_logprobs=jnp.zeros((prompts * GROUP, LENGTH)),
        rewards=jnp.zeros(prompts * GROUP),
    )


def test_shared_prefix_logprobs_and_gradients_equal_the_per_row_ones():
    cfg = preset("tiny")
    graphdef, params = nnx.split(Qwen25VL(cfg, rngs=nnx.Rngs(0)))
    batch = prefix_batch(cfg)
    grids = (GRID,) * batch.prompt_ids.shape[0]
    # a loss that weighs every row differently, through log-probs and entropies
    weights = batch.completion_mask * jnp.linspace(-1.0, 1.0, batch.completion.shape[0])[:, None]

    def loss(params, logprobs):
        logp, entropy = logprobs(
            nnx.merge(graphdef, params), batch, image_grids=grids, group_size=GROUP, temperature=1.0
        )
        return jnp.sum(logp * weights) + 0.1 * jnp.sum(entropy * weights), (logp, entropy)

    def run(logprobs):
        return jax.device_get(jax.jit(jax.grad(functools.partial(loss, logprobs=logprobs), has_aux=True))(params))

    row_grads, (row_logp, row_entropy) = run(completion_logprobs)
    grads, (logp, entropy) = run(shared_prefix_logprobs)
    mask = np.asarray(batch.completion_mask)
    np.testing.assert_allclose(logp[mask], row_logp[mask], atol=1e-5, rtol=0)
    np.testing.assert_allclose(entropy[mask], row_entropy[mask], atol=1e-5, rtol=0)
    assert logp[1, 2] == row_logp[1, 2] < -1e30  # the image-pad id in an answer: a text token at the floor
    for (path, got), want in zip(jax.tree.leaves_with_path(grads), jax.tree.leaves(row_grads)):
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, atol=1e-5 * max(scale, 1e-6), rtol=0, err_msg=jax.tree_util.keystr(path))
    # the gradient really reaches the prompt through the answers: the vision tower only gets it that way
    vision = [x for path, x in jax.tree.leaves_with_path(grads) if "visual" in jax.tree_util.keystr(path)]
    assert max(float(np.abs(x).max()) for x in vision) > 1e-4


def test_a_grpo_step_is_the_same_with_the_per_row_update():
    """Several games in one batch (2048 and shisensho: left-padded prompts of different lengths), a KL reference
    that differs from the policy, 2 micro-batches, remat and a 2 x 2 x 2 mesh: the shared-prefix step and
    the per-row step give the same metrics and the same update."""
    config = TrainConfig(
        model="tiny",
        games=("2048", "shisensho"),
        image_size=(140, 112),
        states_per_step=8,
        grpo=dict(group_size=2, kl_coef=0.05),
        max_new_tokens=4,
        learning_rate=1e-3,
        micro_batch_states=4,
        remat=True,
        mesh="2,2,2",
        steps=1,
        checkpoint_every=0,
        sample_every=0,
        progress=False,
        export_hf=False,
        run_dir="/tmp/g1jax-test-unused",
    )
    trainer = Trainer(config)
    assert trainer.policy().model.remat and trainer.mesh.size == 8
    rollout = trainer.collect(0)
    batch = jax.device_get(trainer.batch_of(rollout))
    prompt_lengths = batch.prompt_mask.sum(axis=1)
    assert len(set(prompt_lengths.tolist())) > 1, prompt_lengths  # left padding that differs between rows
    batch = shard_batch(
        batch.replace(rewards=np.resize(np.float32([1.0, -1.0, 0.5, -0.25]), batch.rewards.shape)), trainer.mesh
    )
    # a reference away from the policy, so the KL term and its gradient are not zero
    reference = jax.tree.map(lambda x: x * 1.05, trainer.reference)
    settings = trainer.grpo_static["settings"]
    assert settings.shared_prefix and settings.micro_batches == 2

    def step(shared: bool):
        trainer.grpo_static["settings"] = dataclasses.replace(settings, shared_prefix=shared)
        state = jax.tree.map(jnp.copy, trainer.state)  # the step donates its state
        state, metrics = trainer._train_step(state, trainer.frozen, reference, batch)
        return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))], jax.device_get(metrics)

    params, metrics = step(True)
    row_params, row_metrics = step(False)
    assert metrics["kl"] > 1e-4 and metrics["grad_norm"] > 0.1, metrics
    for name, value in row_metrics.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
    for got, want in zip(params, row_params):
        np.testing.assert_allclose(got, want, atol=1e-2 * config.learning_rate, rtol=0)
