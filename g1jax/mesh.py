"""TEMPORARY glue until g1jax/sharding.py lands: mesh shape parsing and replicated placement."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tp")


def parse_mesh_shape(spec) -> tuple[int, int, int]:
    if isinstance(spec, str):
        try:
            sizes = tuple(int(x) for x in spec.replace("x", ",").split(","))
        except ValueError:
            raise ValueError(f"mesh must be three sizes 'data,fsdp,tp' such as '1,1,1' or '2,4,1', got {spec!r}") from None
    else:
        sizes = tuple(int(x) for x in spec)
    if len(sizes) != 3 or any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
        raise ValueError(f"mesh must be three positive sizes 'data,fsdp,tp' (one may be -1), got {spec!r}")
    return sizes


def make_mesh(spec):
    sizes = list(parse_mesh_shape(spec))
    n = len(jax.devices())
    if -1 in sizes:
        rest = int(np.prod([s for s in sizes if s != -1]))
        sizes[sizes.index(-1)] = n // rest
    size = int(np.prod(sizes))
    if size > n or n % size:
        raise ValueError(f"mesh {tuple(sizes)} needs {size} devices, which does not divide the {n} present")
    devices = np.asarray(jax.devices()[:size]).reshape(sizes)
    return jax.sharding.Mesh(devices, AXES)


def shard_state(state, mesh):
    return jax.device_put(state, NamedSharding(mesh, P()))


def shard_batch(batch, mesh, group_size):
    return batch
