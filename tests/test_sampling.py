"""The KV-cache sampler against teacher forcing with the same model (tiny random Qwen2.5-VL, one image per prompt)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from g1jax.models import Qwen25VL, get_rope_index, greedy_generate, preset
from g1jax.models.qwen25vl import token_logprobs
from g1jax.sampling import SamplingConfig, sample

PROMPTS, GROUP, LENGTH = 3, 2, 10
GRID = (1, 4, 4)  # a 56 x 56 image: 16 patches, 4 image tokens
STOP = (1, 2)
PAD = 0


@pytest.fixture(scope="module")
def setup():
    cfg = preset("tiny")
    model = Qwen25VL(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    body = [cfg.vision_start_token_id] + [cfg.image_token_id] * 4 + [cfg.vision_end_token_id]
    rng = np.random.default_rng(0)
    # prompts of different lengths, left-padded to one width (row 1 is the shortest)
    rows = [list(rng.integers(10, 900, 4)) + body + list(rng.integers(10, 900, n)) for n in (5, 2, 4)]
    width = max(map(len, rows))
    ids = np.full((PROMPTS, width), PAD, np.int32)
    mask = np.zeros((PROMPTS, width), np.int32)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :], mask[r, width - len(row) :] = row, 1
    pixels = np.asarray(jax.random.normal(jax.random.key(1), (PROMPTS * 16, 1176)), np.float32)
    keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(7), r))(jnp.arange(PROMPTS * GROUP))
    return dict(
        cfg=cfg, model=model, graphdef=graphdef, params=params, ids=ids, mask=mask, pixels=pixels, keys=keys, rows=rows
    )


def run(s, config, ids=None, mask=None, pixels=None, keys=None):
    ids = s["ids"] if ids is None else ids
    mask = s["mask"] if mask is None else mask
    grids = (GRID,) * ids.shape[0]
    positions, _ = get_rope_index(ids, grids, mask, image_token_id=s["cfg"].image_token_id)
    out = sample(
        s["graphdef"],
        s["params"],
        jnp.asarray(ids),
        jnp.asarray(positions),
        jnp.asarray(mask),
        jnp.asarray(s["pixels"] if pixels is None else pixels),
        s["keys"] if keys is None else keys,
        image_grids=grids,
        group_size=GROUP,
        config=config,
    )
    return jax.device_get(out)


def teacher_forced(s, out, temperature):
    """log-probs (of the text-only distribution the sampler draws from) and full logits of the sampled
    completions, recomputed by one uncached forward."""
    ids = np.repeat(s["ids"], GROUP, 0)
    full = np.concatenate([ids, out.tokens], 1)
    mask = np.concatenate([np.repeat(s["mask"], GROUP, 0), out.mask.astype(np.int32)], 1)
    grids = (GRID,) * full.shape[0]
    positions, _ = get_rope_index(full, grids, mask, image_token_id=s["cfg"].image_token_id)
    pixels = np.repeat(s["pixels"].reshape(PROMPTS, 16, -1), GROUP, 0).reshape(-1, 1176)
    model = s["model"]
    hidden = model.hidden_states(
        jnp.asarray(full), jnp.asarray(positions), jnp.asarray(mask), jnp.asarray(pixels), grids
    )
    t = ids.shape[1]
    logp = token_logprobs(
        model, hidden[:, t - 1 : -1], jnp.asarray(out.tokens), temperature=temperature, text_only=True
    )
    logits = model.logits(hidden[:, t - 1 : -1])
    return np.asarray(logp), np.asarray(logits)


@pytest.fixture(scope="module")
def greedy(setup):
    return run(setup, SamplingConfig(max_new_tokens=LENGTH, temperature=0.0, stop_ids=STOP, pad_id=PAD))


def test_greedy_is_the_argmax_of_teacher_forced_logits(setup, greedy):
    logp, logits = teacher_forced(setup, greedy, 1.0)
    m = greedy.mask
    assert m.all(), "greedy on this model never hits the stop ids: every slot is a completion token"
    np.testing.assert_array_equal(greedy.tokens[m], logits.argmax(-1)[m])
    np.testing.assert_allclose(greedy.logprobs[m], logp[m], atol=1e-4)
    # all G samples of a prompt are the same under greedy decoding
    np.testing.assert_array_equal(greedy.tokens[0::GROUP], greedy.tokens[1::GROUP])
    assert greedy.truncated.all() and (greedy.lengths == LENGTH).all()


@pytest.fixture(scope="module")
def sampled(setup):
    return run(setup, SamplingConfig(max_new_tokens=LENGTH, temperature=0.7, stop_ids=STOP, pad_id=PAD))


def test_sampled_logprobs_equal_teacher_forced_logprobs(setup, sampled):
    logp, _ = teacher_forced(setup, sampled, 0.7)
    m = sampled.mask
    np.testing.assert_allclose(sampled.logprobs[m], logp[m], atol=1e-4)
    # samples of one prompt differ (per-row keys), so the group carries information
    assert (sampled.tokens[0::GROUP] != sampled.tokens[1::GROUP]).any()


@pytest.fixture(scope="module")
def vision_heavy(setup):
    """The tiny model with its vision ids' lm_head columns scaled 30x: they then hold most of the mass."""
    model = Qwen25VL(setup["cfg"], rngs=nnx.Rngs(0))
    vision = jnp.asarray(setup["cfg"].vision_special_ids)
    model.lm_head.kernel[...] = model.lm_head.kernel[...].at[:, vision].multiply(30.0)
    graphdef, params = nnx.split(model)
    return dict(setup, model=model, graphdef=graphdef, params=params)


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
def test_the_sampler_never_emits_vision_ids(vision_heavy, temperature):
    s = vision_heavy
    vision = np.asarray(s["cfg"].vision_special_ids)
    raw, _ = greedy_generate(
        s["model"], s["ids"], s["mask"], jnp.asarray(s["pixels"]), (GRID,) * PROMPTS, max_new_tokens=LENGTH
    )
    assert np.isin(raw, vision).mean() > 0.5  # the model's own argmax is mostly a vision id
    out = run(s, SamplingConfig(max_new_tokens=LENGTH, temperature=temperature, stop_ids=STOP, pad_id=PAD))
    assert not np.isin(out.tokens, vision).any()
    # and the returned log-probs are those of the distribution drawn from (greedy: at temperature 1)
    logp, _ = teacher_forced(s, out, temperature or 1.0)
    np.testing.assert_allclose(out.logprobs[out.mask], logp[out.mask], atol=1e-4)


def test_rows_do_not_depend_on_padding_or_batch_order(setup, sampled):
    s = setup
    order = np.asarray([2, 0, 1])
    extra = 3  # more left padding
    ids = np.concatenate([np.full((PROMPTS, extra), PAD, np.int32), s["ids"]], 1)[order]
    mask = np.concatenate([np.zeros((PROMPTS, extra), np.int32), s["mask"]], 1)[order]
    pixels = s["pixels"].reshape(PROMPTS, 16, -1)[order].reshape(-1, 1176)
    row_order = (order[:, None] * GROUP + np.arange(GROUP)).reshape(-1)
    moved = run(
        s,
        SamplingConfig(max_new_tokens=LENGTH, temperature=0.7, stop_ids=STOP, pad_id=PAD),
        ids,
        mask,
        pixels,
        s["keys"][row_order],
    )
    np.testing.assert_array_equal(moved.tokens, sampled.tokens[row_order])
    np.testing.assert_allclose(moved.logprobs, sampled.logprobs[row_order], atol=1e-5)


def test_a_rematerialised_model_samples_the_same(setup, greedy):
    # remat is for the backward pass; a trainer built with remat=True samples through the same layers
    # (nnx.remat inside the decode while_loop used to fail: "Cannot mutate Param from a different trace level")
    graphdef, params = nnx.split(Qwen25VL(setup["cfg"], remat=True, rngs=nnx.Rngs(0)))
    jax.tree.map(np.testing.assert_array_equal, params, setup["params"])
    out = run(
        dict(setup, graphdef=graphdef),
        SamplingConfig(max_new_tokens=LENGTH, temperature=0.0, stop_ids=STOP, pad_id=PAD),
    )
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    np.testing.assert_allclose(out.logprobs, greedy.logprobs, atol=1e-5)


def test_stop_tokens_end_rows_and_mask_the_rest(setup, greedy):
    # make the greedy token at step 3 of row 0 a stop token: row 0 then ends there, stop included
    stop = int(greedy.tokens[0, 3])
    out = run(setup, SamplingConfig(max_new_tokens=LENGTH, temperature=0.0, stop_ids=(stop,), pad_id=PAD))
    for r in range(PROMPTS * GROUP):
        hits = np.flatnonzero(greedy.tokens[r] == stop)
        end = hits[0] + 1 if hits.size else LENGTH
        assert out.lengths[r] == end and out.truncated[r] == (hits.size == 0)
        np.testing.assert_array_equal(out.tokens[r, :end], greedy.tokens[r, :end])
        assert (out.tokens[r, end:] == PAD).all() and (out.logprobs[r, end:] == 0).all()
        np.testing.assert_array_equal(out.mask[r], np.arange(LENGTH) < end)


def test_top_k_one_is_greedy_and_config_errors(setup, greedy):
    out = run(setup, SamplingConfig(max_new_tokens=LENGTH, temperature=1.3, top_k=1, stop_ids=STOP, pad_id=PAD))
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    for bad, match in [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=4, temperature=-1), "temperature"),
        (dict(max_new_tokens=4, top_p=0.0), "top_p"),
        (dict(max_new_tokens=4, top_k=-2), "top_k"),
        (dict(max_new_tokens=4, stop_ids=()), "stop_ids"),
    ]:
        with pytest.raises(ValueError, match=match):
            SamplingConfig(**bad)
    with pytest.raises(ValueError, match="row_keys"):
        run(
            setup,
            SamplingConfig(max_new_tokens=LENGTH, temperature=0.0, stop_ids=STOP, pad_id=PAD),
            keys=setup["keys"][:2],
        )
