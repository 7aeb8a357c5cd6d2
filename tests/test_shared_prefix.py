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
import pytest
from flax import nnx

from adam_checks import assert_adam_params_close
from g1jax.config import TrainConfig
from g1jax.models import Qwen25VL, get_rope_index, preset
from g1jax.models.layers import attention, prefix_attention
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


@pytest.mark.parametrize(
    "dtype, block, tol", [(jnp.float32, None, 1e-5), (jnp.float32, 2, 1e-5), (jnp.bfloat16, 3, 2e-2)]
)
def test_prefix_attention_is_attention_over_the_copied_prompt(dtype, block, tol):
    """2 prompts of 5 slots (the first 2 of prompt 0 padding) x G = 3 answers of 7 tokens, 4 query heads on
    2 key heads, head_dim 8 (scale 8^-0.5 is no power of two: bfloat16 scales the scores, not q), in
    query blocks or not: the values and the gradients of `attention` over concat(prompt, answer) per row."""
    prompts, group, t, s, heads, kv, hd = 2, 3, 7, 5, 4, 2, 8
    keys = jax.random.split(jax.random.key(0), 6)
    q = jax.random.normal(keys[0], (prompts, group, t, heads, hd))
    k, v = (jax.random.normal(key, (prompts, group, t, kv, hd)) for key in keys[1:3])
    pk, pv = (jax.random.normal(key, (prompts, s, kv, hd)) for key in keys[3:5])
    prefix_mask = jnp.ones((prompts, s), bool).at[0, :2].set(False)
    valid = jnp.arange(t)[None, None] < jnp.asarray([[7, 3, 1], [5, 7, 2]])[..., None]
    mask = jnp.tril(jnp.ones((t, t), bool)) & valid[:, :, None, :]
    weights = jax.random.normal(keys[5], (prompts, group, t, heads * hd))

    def shared(q, k, v, pk, pv):
        args = [x.astype(dtype) for x in (q, k, v)], [x.astype(dtype) for x in (pk, pv)]
        out = prefix_attention(*args[0], mask, *args[1], prefix_mask, hd**-0.5, causal_block=block)
        return jnp.sum(out.astype(jnp.float32) * weights), out

    def per_row(q, k, v, pk, pv):
        def rows(x):
            return x.reshape(prompts * group, *x.shape[2:]).astype(dtype)

        def copied(x):
            return jnp.repeat(x, group, axis=0).astype(dtype)

        keys_mask = jnp.concatenate([jnp.repeat(prefix_mask, group, 0)[:, None].repeat(t, 1), rows(mask)], axis=2)
        out = attention(
            rows(q),
            jnp.concatenate([copied(pk), rows(k)], axis=1),
            jnp.concatenate([copied(pv), rows(v)], axis=1),
            keys_mask,
            hd**-0.5,
        ).reshape(prompts, group, t, heads * hd)
        return jnp.sum(out.astype(jnp.float32) * weights), out

    arrays = (q, k, v, pk, pv)
    got_grads, got = jax.jit(jax.grad(shared, argnums=range(5), has_aux=True))(*arrays)
    want_grads, want = jax.jit(jax.grad(per_row, argnums=range(5), has_aux=True))(*arrays)
    np.testing.assert_allclose(np.float32(got), np.float32(want), atol=tol, rtol=0)
    for a, b in zip(got_grads, want_grads):
        np.testing.assert_allclose(a, b, atol=tol * float(np.abs(b).max()), rtol=0)


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
        assert_adam_params_close(got, want, rtol=0, atol=1e-2 * config.learning_rate, max_step=2 * config.learning_rate)
