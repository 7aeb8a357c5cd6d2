"""Device meshes and parameter placement from the logical axis names declared in the module tree.

Every parameter of `Qwen25VL` names its axes in its NNX metadata (`out_sharding`, e.g. a text MLP
input kernel is ("embed", "mlp")); `LOGICAL_RULES` maps those names to the axes of a 3-axis mesh:

    data   batch rows only (parameters replicated along it)
    fsdp   batch rows and parameters (ZeRO-3 style: each parameter's "embed" side is split)
    tp     tensor parallel: attention heads, MLP hidden units and the vocabulary are split

The same rules serve the model, its optimizer state (nnx.Optimizer copies each parameter's
metadata onto its moments), the loader, the train step and the sampler:

    mesh = make_mesh("2,2,2")                            # or (2, 2, 2), "2x2x2", "-1,1,2"
    model = load_pretrained(path, shardings=mesh)          # each tensor goes straight to its shards
    model = shard_model(Qwen25VL(config, rngs=nnx.Rngs(0)), mesh)   # or place a model built in memory
    opt_state = shard_state(nnx.state(optimizer), mesh)    # moments follow their parameters
    shardings = state_shardings(nnx.state(model), mesh)    # nnx.State of NamedShardings (jit in/out_shardings)
    ids = jax.device_put(ids, batch_sharding(mesh))        # rows over ("data", "fsdp")
    ids = shard_rows(ids, mesh)                            # the same, replicated when the rows do not divide
    rows = place(host_rows, batch_sharding(mesh))          # device_put that also works under jax.distributed
    tokens = to_host(sampled)                              # whole on every process (gathered across hosts)
    step = on_mesh(jitted_update, mesh)                    # model inside pins activation rows, gathers weights

Inside the model, `constrain_rows` (hidden states) and `gathered` (weights) act only while a mesh is
set (`jax.set_mesh`, which `on_mesh` does around a call): see "inside the model" below for why the
Trainer sets it for the update and not for the sampler.

A dimension that the mesh axes of its rule do not divide is replicated instead, so every model
runs on every mesh (the tiny test model on 8 devices included). Division is checked on the
flattened size: Qwen2.5-VL-3B's k/v projections (2 KV heads x 128) on tp 4 are split inside a
head, which is correct but adds communication, so keep tp at most the KV head count for speed.
Mesh axes of size 1 are left out of the specs: on a (8, 1, 1) mesh every parameter is replicated.
Facts and the rules table: docs/model.md, "Sharding".
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tp")
BATCH_AXES = ("data", "fsdp")

MeshAxes = str | tuple[str, ...] | None
# Logical axis name -> mesh axes. The text rules follow tunix's Qwen2 defaults: embedding
# (vocab, embed) -> (tp, fsdp); q/k/v (embed, heads) -> (fsdp, tp); o_proj (heads, embed) -> (tp, fsdp);
# MLP in (fsdp, tp), out (tp, fsdp); norms replicated. The vision tower uses the same pattern.
LOGICAL_RULES: dict[str, MeshAxes] = {
    "vocab": "tp",
    "embed": "fsdp",
    "q_heads": "tp",
    "kv_heads": "tp",
    "mlp": "tp",
    "norm": None,
    "vision_patch": None,
    "vision_embed": "fsdp",
    "vision_heads": "tp",
    "vision_mlp": "tp",
    "vision_merged": "fsdp",
}


# ------------------------------------------------------------------------ meshes
def parse_mesh_shape(shape: str | Sequence[int]) -> tuple[int, int, int]:
    """(data, fsdp, tp) from "2,4,1", "2x4x1" or a sequence of three ints; one size may be -1 (the rest)."""
    if isinstance(shape, str):
        try:
            sizes = tuple(int(part) for part in shape.replace("x", ",").split(","))
        except ValueError:
            raise ValueError(f"mesh shape must be three sizes 'data,fsdp,tp' such as '2,4,1', got {shape!r}") from None
    else:
        sizes = tuple(shape)
    if (
        len(sizes) != 3
        or not all(isinstance(s, (int, np.integer)) and (s >= 1 or s == -1) for s in sizes)
        or sizes.count(-1) > 1
    ):
        raise ValueError(
            f"mesh shape must be three positive sizes (data, fsdp, tp), one of them may be -1; got {shape!r}"
        )
    return tuple(int(s) for s in sizes)


def make_mesh(shape: str | Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tp") mesh with Auto axes (GSPMD propagates shardings through the model).

    Its size must divide the number of devices; it takes the first that many (all by default; a -1
    size takes what the others leave). jax 0.10's `make_mesh` defaults to Explicit axes, under which
    a matmul that contracts a sharded dimension needs an explicit output sharding, hence Auto.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = list(parse_mesh_shape(shape))
    if -1 in sizes:
        rest = math.prod(s for s in sizes if s != -1)
        if len(devices) % rest:
            raise ValueError(
                f"mesh shape {shape!r}: the fixed sizes ({rest} devices) do not divide the {len(devices)} devices"
            )
        sizes[sizes.index(-1)] = len(devices) // rest
    size = math.prod(sizes)
    if len(devices) % size:
        raise ValueError(
            f"mesh shape {tuple(sizes)} needs {size} devices, which does not divide the {len(devices)} devices present"
        )
    return jax.make_mesh(
        tuple(sizes), AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES), devices=devices[:size]
    )


# ------------------------------------------------------------------------ logical -> mesh
def logical_to_spec(
    axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Mapping[str, MeshAxes] = LOGICAL_RULES
) -> PartitionSpec:
    """The PartitionSpec of an array of `shape` whose dimensions have the logical names `axes`.

    Per dimension: the rule's mesh axes, minus those of size 1 and those an earlier dimension
    already uses; replicated (None) when the remaining axes' total size does not divide the dimension.
    """
    if len(axes) != len(shape):
        raise ValueError(f"{len(axes)} logical axis names {tuple(axes)} for an array of shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape):
        if name is not None and name not in rules:
            raise ValueError(f"logical axis {name!r} has no sharding rule; known axes: {', '.join(sorted(rules))}")
        mapped = () if name is None or rules[name] is None else rules[name]
        mapped = (mapped,) if isinstance(mapped, str) else tuple(mapped)
        unknown = [a for a in mapped if a not in mesh.shape]
        if unknown:
            raise ValueError(f"rule for {name!r} names mesh axes {unknown} that the mesh {dict(mesh.shape)} lacks")
        mapped = tuple(a for a in mapped if mesh.shape[a] > 1 and a not in used)
        if mapped and size % math.prod(mesh.shape[a] for a in mapped) == 0:
            used.update(mapped)
            spec.append(mapped[0] if len(mapped) == 1 else mapped)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def state_shardings(tree, mesh: Mesh, rules: Mapping[str, MeshAxes] = LOGICAL_RULES):
    """NamedShardings for every array of `tree`, read from the variables' logical-axis metadata.

    tree: an nnx.State (of a model, abstract or real, or of an nnx.Optimizer) or a Module, whose state
    is then taken. Returns the same structure with each value replaced by its NamedSharding (an nnx.State
    for a State or a Module), usable as `load_pretrained(shardings=...)`, as jit in/out shardings, or
    with `jax.device_put`. Variables without logical axes (optimizer step counts, ...) are replicated.
    """
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree)

    def sharding_of(leaf):
        if isinstance(leaf, nnx.Variable):
            value = leaf.get_value()
            axes = leaf.get_metadata().get("out_sharding")
            spec = logical_to_spec(axes, value.shape, mesh, rules) if axes else PartitionSpec()
            return leaf.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(sharding_of, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_state(state, mesh: Mesh, rules: Mapping[str, MeshAxes] = LOGICAL_RULES):
    """`state` (an nnx.State of arrays) placed on `mesh` by `state_shardings`."""
    return place(state, state_shardings(state, mesh, rules))


def shard_model(model: nnx.Module, mesh: Mesh, rules: Mapping[str, MeshAxes] = LOGICAL_RULES) -> nnx.Module:
    """Move every parameter of `model` onto its shards of `mesh` (in place); returns the model."""
    nnx.update(model, shard_state(nnx.state(model), mesh, rules))
    return model


def _rows_spec(mesh, shape: Sequence[int], batch_axis: int) -> PartitionSpec:
    """Rows (`batch_axis`) over the mesh's ("data", "fsdp") axes larger than 1, the rest whole; fully
    replicated when there is no such axis, no such dimension, or the rows do not divide."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
    spec = [None] * len(shape)
    if axes and len(shape) > batch_axis and shape[batch_axis] % math.prod(mesh.shape[a] for a in axes) == 0:
        spec[batch_axis] = axes if len(axes) > 1 else axes[0]
    return PartitionSpec(*spec)


def shard_rows(x, mesh: Mesh, batch_axis: int = 0) -> jax.Array:
    """`x` placed on `mesh` with its rows (`batch_axis`) split over ("data", "fsdp"), or replicated when
    they do not divide (or the mesh has one row shard)."""
    x = x if hasattr(x, "shape") else np.asarray(x)
    return place(x, NamedSharding(mesh, _rows_spec(mesh, x.shape, batch_axis)))


# ------------------------------------------------------------------------ several processes
# Under jax.distributed each process addresses only its own devices, and every process runs the same
# program on the same keys: each can compute the whole (global) value of every host array, so placing
# one means each process hands its own devices their shards, and reading one back means gathering the
# shards of the other processes. On one process both are the plain device_put / device_get.
def place(tree, shardings):
    """`tree`'s arrays (host arrays, this process's arrays, or arrays already spread over the processes)
    on `shardings` (one sharding, or a matching tree of them), also when they span other processes'
    devices. Every process must pass the same values."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: _place_one(x, shardings), tree)
    return jax.tree.map(_place_one, tree, shardings)


def _place_one(x, sharding: jax.sharding.Sharding) -> jax.Array:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)  # already global: XLA moves the shards between the layouts
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(tree):
    """`tree`'s arrays as numpy on this process, whole: on several processes the shards held by the
    others are gathered (a collective: every process must call it at the same point). Each gather is
    counted in `GATHERED`."""
    return jax.tree.map(_to_host_one, tree)


# What `to_host` gathered across processes since the last `GATHERED.clear()`: "arrays" gathered, their
# whole "bytes", and the bytes this process "received" (held only by other processes' devices). Counted
# from the arrays at each call; reading an array that this process holds whole counts nothing.
GATHERED: collections.Counter = collections.Counter()


def _to_host_one(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        local = {str(shard.index): shard.data.nbytes for shard in x.addressable_shards}  # each block once
        GATHERED.update(arrays=1, bytes=x.nbytes, received=x.nbytes - sum(local.values()))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Rows split over ("data", "fsdp") along `batch_axis` (1 for M-RoPE positions [3, B, T]), the rest
    replicated. The row count must be a multiple of data x fsdp."""
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), BATCH_AXES))


# ------------------------------------------------------------------------ inside the model
# The model calls these on its activations and weights. They act only while a mesh is set with
# `jax.set_mesh(mesh)`; without one, and so on a single device or in code that never sets a mesh,
# they return their input unchanged. The Trainer sets its mesh around the update (train and
# cold-start steps) and not around the sampler (reasons below).
#
# Why: the parameters are stored FSDP-split along their "embed" side, and left to itself GSPMD
# follows that split into the activations (hidden states split along the hidden size instead of
# the rows). On the update's backward pass that ends in XLA replicating whole activations on every
# device ("Involuntary full rematerialization" for the embedding's gradient) and in all-to-alls
# between the two layouts. Pinning the rows of the activations and gathering each weight whole
# along fsdp where a layer uses it is the ZeRO-3 pattern: an all-gather of the weight going in,
# a reduce-scatter of its gradient coming out, and activations that never leave their rows.
#
# Not for the sampler (whose rows `shard_rows` splits): there XLA hoists the weight gathers out of
# the decode loop, so every device holds whole weights for the call, while the propagated layout
# keeps them sharded and all-reduces per-token partial results, which are small. Measured by
# experiments/bench_mesh.py (BENCHMARKS.md, "Mesh").
def on_mesh(fn, mesh: Mesh):
    """`fn` called with `mesh` set (`jax.set_mesh`), so the model's constraints below apply in its traces."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with jax.set_mesh(mesh):
            return fn(*args, **kwargs)

    return call


def _context_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


def constrain_rows(x: jax.Array, batch_axis: int = 0) -> jax.Array:
    """`x` with its rows (`batch_axis`) split over the set mesh's ("data", "fsdp") axes, the rest whole.

    Left as it is when no mesh is set, when those axes are all of size 1, or when they do not divide
    the rows (propagation then places it)."""
    mesh = _context_mesh()
    if mesh is None:
        return x
    spec = _rows_spec(mesh, x.shape, batch_axis)
    return x if all(axis is None for axis in spec) else jax.lax.with_sharding_constraint(x, spec)


def _without_fsdp(rule: MeshAxes) -> MeshAxes:
    axes = () if rule is None else (rule,) if isinstance(rule, str) else tuple(rule)
    kept = tuple(a for a in axes if a != "fsdp")
    return kept[0] if len(kept) == 1 else (kept or None)


USE_RULES: dict[str, MeshAxes] = {name: _without_fsdp(rule) for name, rule in LOGICAL_RULES.items()}


def gathered(param: nnx.Variable) -> jax.Array:
    """The value of a parameter as a layer uses it on the set mesh: whole along "fsdp" (all-gathered),
    still split along "tp" as its rule says. The parameter's value itself when no mesh is set."""
    value = param[...]
    mesh = _context_mesh()
    axes = param.get_metadata().get("out_sharding")
    if mesh is None or not axes or "fsdp" not in mesh.axis_names:
        return value
    return jax.lax.with_sharding_constraint(value, logical_to_spec(axes, value.shape, mesh, USE_RULES))
