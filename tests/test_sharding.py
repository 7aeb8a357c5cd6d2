"""g1jax.sharding on 8 fake CPU devices (tests/conftest.py): meshes, logical-axis rules, placement,
and a sharded forward that equals the single-device one."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from g1jax import sharding as S
from g1jax.models import Qwen25VL, get_rope_index, load_pretrained, preset, token_logprobs

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "qwen25vl_tiny")
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


@pytest.fixture(scope="module", autouse=True)
def _eight_devices():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8, set in conftest.py)")


# ---------------------------------------------------------------------------- meshes
def test_make_mesh_shapes():
    mesh = S.make_mesh("2,4,1")
    assert mesh.axis_names == S.AXES and dict(mesh.shape) == {"data": 2, "fsdp": 4, "tp": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert dict(S.make_mesh("2x2x2").shape) == {"data": 2, "fsdp": 2, "tp": 2}
    assert dict(S.make_mesh((-1, 1, 2)).shape) == {"data": 4, "fsdp": 1, "tp": 2}
    one = S.make_mesh((1, 1, 1))  # a mesh smaller than the host takes the first devices
    assert one.devices.size == 1 and one.devices.flat[0] == jax.devices()[0]
    assert S.make_mesh("2,2,1").devices.size == 4


@pytest.mark.parametrize(
    "shape, match",
    [
        ((3, 1, 1), "needs 3 devices, which does not divide the 8"),
        ("2,4", "three positive sizes"),
        ("a,b,c", "three sizes 'data,fsdp,tp'"),
        ((0, 1, 1), "three positive sizes"),
        ((-1, -1, 2), "three positive sizes"),
        ((-1, 3, 1), "fixed sizes \\(3 devices\\) do not divide"),
    ],
)
def test_make_mesh_errors(shape, match):
    with pytest.raises(ValueError, match=match):
        S.make_mesh(shape)


# ---------------------------------------------------------------------------- rules
def test_logical_to_spec_rules_and_fallback():
    mesh = S.make_mesh((2, 2, 2))
    assert S.logical_to_spec(("vocab", "embed"), (1024, 64), mesh) == P("tp", "fsdp")
    # a dimension the axis size does not divide is replicated, the others keep their axes
    assert S.logical_to_spec(("embed", "q_heads"), (64, 5), mesh) == P("fsdp", None)
    assert S.logical_to_spec(("embed", "q_heads"), (63, 6), mesh) == P(None, "tp")
    assert S.logical_to_spec(("norm",), (64,), mesh) == P(None)
    assert S.logical_to_spec(("embed", "mlp"), (64, 128), S.make_mesh((8, 1, 1))) == P(None, None)
    # a mesh axis is used at most once per array; a tuple of axes must divide as a whole
    assert S.logical_to_spec(("a", "b"), (8, 8), mesh, {"a": "tp", "b": "tp"}) == P("tp", None)
    assert S.logical_to_spec(("a",), (8,), mesh, {"a": ("fsdp", "tp")}) == P(("fsdp", "tp"))
    assert S.logical_to_spec(("a",), (6,), mesh, {"a": ("fsdp", "tp")}) == P(None)
    with pytest.raises(ValueError, match="logical axis 'heads' has no sharding rule"):
        S.logical_to_spec(("embed", "heads"), (64, 64), mesh)
    with pytest.raises(ValueError, match="mesh axes \\['model'\\]"):
        S.logical_to_spec(("a",), (8,), mesh, {"a": "model"})
    with pytest.raises(ValueError, match="2 logical axis names"):
        S.logical_to_spec(("embed", "mlp"), (64,), mesh)


def test_abstract_3b_shardings_follow_the_rules():
    """Specs of the real 3B from its abstract model (nothing allocated); tp 2 matches its 2 KV heads."""
    mesh = S.make_mesh((2, 2, 2))
    specs = {
        path: v.get_value().spec
        for path, v in nnx.to_flat_state(S.state_shardings(Qwen25VL(preset("3b"), rngs=None), mesh))
    }
    layer = ("model", "layers", 0)
    assert specs[("model", "embed_tokens", "embedding")] == P("tp", "fsdp")  # tied: also the output head
    assert specs[(*layer, "self_attn", "q_proj", "kernel")] == P("fsdp", "tp")
    assert specs[(*layer, "self_attn", "k_proj", "kernel")] == P("fsdp", "tp")
    assert specs[(*layer, "self_attn", "k_proj", "bias")] == P("tp")
    assert specs[(*layer, "self_attn", "o_proj", "kernel")] == P("tp", "fsdp")
    assert specs[(*layer, "mlp", "up_proj", "kernel")] == P("fsdp", "tp")
    assert specs[(*layer, "mlp", "down_proj", "kernel")] == P("tp", "fsdp")
    assert specs[(*layer, "input_layernorm", "weight")] == P(None)
    assert specs[("visual", "patch_embed", "proj", "kernel")] == P(None, "fsdp")
    assert specs[("visual", "blocks", 0, "attn", "qkv", "kernel")] == P("fsdp", "tp")
    assert specs[("visual", "merger", "mlp", 2, "kernel")] == P("tp", "fsdp")
    assert len(specs) == len(jax.tree.leaves(nnx.state(Qwen25VL(preset("3b"), rngs=None))))


def test_optimizer_state_follows_its_parameters():
    mesh = S.make_mesh((2, 2, 2))
    model = load_pretrained(FIXTURE)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    param_specs = {path: v.get_value().spec for path, v in nnx.to_flat_state(S.state_shardings(model, mesh))}
    placed = S.shard_state(nnx.state(optimizer), mesh)
    moments = 0
    for path, variable in nnx.to_flat_state(placed):
        spec = variable.get_value().sharding.spec
        if path[-1] == "count" or path == ("step",):
            assert spec == P()
        elif path[0] == "opt_state" and path[2] in ("mu", "nu"):
            assert spec == param_specs[path[3:]], path
            moments += 1
    assert moments == 2 * len(param_specs)


# ---------------------------------------------------------------------------- sharded model
def _inputs():
    """The goldens' two rows (two images + text, text only) four times over, every copy made distinct
    (other text ids, scaled pixels) so rows or images mixed up between shards change the logits."""
    config = preset("tiny")
    with np.load(os.path.join(FIXTURE, "goldens.npz")) as g:
        base_ids, pixels = g["input_ids"], g["pixel_values"].astype(np.float32)
        text = base_ids < min(config.image_token_id, config.vision_start_token_id, config.vision_end_token_id)
        ids = np.concatenate([np.where(text, (base_ids + 37 * c) % 1000, base_ids) for c in range(4)])
        mask = np.tile(g["attention_mask"], (4, 1))
        pixel_values = np.concatenate([pixels * (1 + 0.25 * c) for c in range(4)])
        grids = tuple(tuple(int(x) for x in row) for row in g["image_grid_thw"]) * 4
    assert len({row.tobytes() for row in ids}) == 8
    positions, _ = get_rope_index(ids, grids, mask, image_token_id=config.image_token_id)
    return ids, positions, mask, pixel_values, grids


@nnx.jit(static_argnames="grids")
def _logits_and_logprobs(model, ids, positions, mask, pixel_values, grids):
    hidden = model.hidden_states(ids, positions, mask, pixel_values, grids)
    return model.logits(hidden), token_logprobs(model, hidden[:, :-1], ids[:, 1:], chunk_size=16)


@pytest.fixture(scope="module")
def single_device():
    ids, positions, mask, pixel_values, grids = _inputs()
    model = load_pretrained(FIXTURE)
    with jax.default_matmul_precision("highest"):
        logits, logp = _logits_and_logprobs(model, ids, positions, mask, pixel_values, grids)
    return np.asarray(logits), np.asarray(logp)


def _shard_shape(variable):
    array = variable[...]
    return array.sharding.shard_shape(array.shape)


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_forward_equals_single_device(shape, single_device):
    mesh = S.make_mesh(shape)
    model = load_pretrained(FIXTURE, shardings=mesh)  # straight onto the shards
    attention = model.model.layers[0].self_attn
    data, fsdp, tp = shape
    # really sharded where the mesh axis divides the dimension (tiny: embed 64, heads 4 x 16, KV 2 x 16)
    assert _shard_shape(attention.q_proj.kernel) == (64 // fsdp, 64 // tp)
    assert _shard_shape(attention.k_proj.bias) == (32 // tp,)
    assert _shard_shape(model.model.embed_tokens.embedding) == (1024 // tp, 64 // fsdp)
    assert _shard_shape(model.model.norm.weight) == (64,)
    assert {s.device for s in attention.q_proj.kernel[...].addressable_shards} == set(mesh.devices.flat)
    # shard_model places a model built in memory the same way
    built = S.shard_model(load_pretrained(FIXTURE), mesh)
    assert (
        built.model.layers[1].mlp.down_proj.kernel[...].sharding
        == model.model.layers[1].mlp.down_proj.kernel[...].sharding
    )

    ids, positions, mask, pixel_values, grids = _inputs()
    rows = S.batch_sharding(mesh)
    ids, mask = jax.device_put(ids, rows), jax.device_put(mask, rows)
    positions = jax.device_put(positions, S.batch_sharding(mesh, batch_axis=1))
    assert ids.sharding.shard_shape(ids.shape)[0] == 8 // (data * fsdp)
    with jax.default_matmul_precision("highest"):
        logits, logp = _logits_and_logprobs(model, ids, positions, mask, pixel_values, grids)
    want_logits, want_logp = single_device
    valid = np.asarray(mask).astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[valid], want_logits[valid], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(logp)[valid[:, 1:]], want_logp[valid[:, 1:]], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- constraints inside the model
def test_row_and_weight_constraints_act_only_on_a_set_mesh():
    mesh = S.make_mesh((2, 2, 2))

    def placed(array, *spec):
        return array.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, P(*spec)), array.ndim)

    rows = jax.jit(S.constrain_rows, static_argnames="batch_axis")
    x = jnp.arange(8 * 3 * 4, dtype=jnp.float32).reshape(8, 3, 4)
    assert rows(x).sharding.is_fully_replicated  # no mesh set: untouched (one device)
    with jax.set_mesh(mesh):
        assert placed(rows(x), ("data", "fsdp"), None, None)
        assert placed(rows(jnp.zeros((3, 8, 4)), batch_axis=1), None, ("data", "fsdp"), None)
        assert rows(jnp.zeros((6, 4))).sharding.is_fully_replicated  # 4 ways do not divide 6 rows: left alone
        assert rows(jnp.zeros(())).shape == ()  # a scalar (a game's per-batch counter) has no rows
    # placing arrays outside jit: the same rule
    assert placed(S.shard_rows(np.zeros((8, 4)), mesh), ("data", "fsdp"), None)
    assert placed(S.shard_rows(np.zeros((3, 8)), mesh, 1), None, ("data", "fsdp"))
    assert S.shard_rows(np.zeros((6, 4)), mesh).sharding.is_fully_replicated
    with jax.set_mesh(S.make_mesh((1, 1, 8))):
        assert rows(x).sharding.is_fully_replicated  # no row axis larger than 1
    np.testing.assert_array_equal(np.asarray(rows(x)), np.asarray(x))

    # a weight stored FSDP x TP is used whole along fsdp, still split along tp
    stored = jax.device_put(jnp.ones((1024, 64)), jax.sharding.NamedSharding(mesh, P("tp", "fsdp")))
    used = jax.jit(lambda w: S.gathered(nnx.Param(w, out_sharding=("vocab", "embed"), eager_sharding=False)))
    with jax.set_mesh(mesh):
        assert placed(used(stored), "tp", None)
    assert S.USE_RULES["embed"] is None and S.USE_RULES["vocab"] == "tp" and S.USE_RULES["mlp"] == "tp"


@pytest.mark.parametrize("shape", [(2, 2, 2)], ids=lambda s: "x".join(map(str, s)))
def test_the_sampler_on_a_mesh_samples_what_one_device_does(shape):
    """Greedy answers of the fixture model on one device and with its weights and prompts sharded over a
    mesh, as the Trainer's rollouts run (no mesh set: the propagated layout): same tokens and lengths,
    log-probs within float tolerance."""
    from g1jax.sampling import SamplingConfig, sample

    ids, positions, mask, pixel_values, grids = _inputs()
    config = SamplingConfig(max_new_tokens=6, temperature=0.0)
    keys = jax.random.split(jax.random.key(3), 2 * ids.shape[0])

    def answers(model, ids, positions, mask):
        graphdef, params = nnx.split(model)
        out = sample(
            graphdef, params, ids, positions, mask, pixel_values, keys, image_grids=grids, group_size=2, config=config
        )
        return jax.device_get(out)

    with jax.default_matmul_precision("highest"):
        want = answers(load_pretrained(FIXTURE), ids, positions, mask)
        mesh = S.make_mesh(shape)
        rows = S.batch_sharding(mesh)
        model = load_pretrained(FIXTURE, shardings=mesh)
        assert not model.model.layers[0].mlp.up_proj.kernel[...].sharding.is_fully_replicated
        got = answers(
            model,
            jax.device_put(ids, rows),
            jax.device_put(positions, S.batch_sharding(mesh, batch_axis=1)),
            jax.device_put(mask, rows),
        )
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)
