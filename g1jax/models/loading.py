"""Hugging Face safetensors <-> Qwen25VL, without torch.

Loading builds the model abstractly (`rngs=None`: shapes only, nothing allocated), then reads one tensor at
a time through the numpy backend of safetensors (bf16 via ml_dtypes, memory-mapped), casts and
transposes it on the host and puts it straight onto its sharding, so no full host copy of the model
ever exists. Both key layouts are accepted: the hub/legacy names (`visual.*`, `model.*`, `lm_head`)
and transformers-v5 in-memory names (`model.visual.*`, `model.language_model.*`).

Saving writes the legacy names with torch-layout [out, in] weights plus a hub-layout config.json, so
transformers and vLLM load the trained policy directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from g1jax.models.config import Qwen25VLConfig
from g1jax.models.qwen25vl import Qwen25VL
from g1jax.sharding import state_shardings

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}  # safetensors dtype names
_V5_PREFIXES = (("model.visual.", "visual."), ("model.language_model.", "model."))


class CheckpointError(ValueError):
    """A checkpoint that does not match the model: the message names the offending key(s)."""


# ------------------------------------------------------------------------ key mapping
class ParamSpec:
    """One parameter: its NNX path, checkpoint key, and how its array maps to the checkpoint tensor."""

    def __init__(self, path: tuple, shape: tuple[int, ...], config: Qwen25VLConfig):
        self.path = path
        *prefix, leaf = path
        self.transposed = leaf == "kernel"  # Linear keeps [in, out]; torch Linear/Conv weights are [out, in...]
        leaf = {"kernel": "weight", "embedding": "weight"}.get(leaf, leaf)
        self.key = ".".join(str(p) for p in (*prefix, leaf))
        self.shape = tuple(shape)
        if self.key == "visual.patch_embed.proj.weight":
            v = config.vision
            self.hf_shape = (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
        elif self.transposed:
            self.hf_shape = (shape[1], shape[0])
        else:
            self.hf_shape = self.shape

    def from_hf(self, tensor: np.ndarray) -> np.ndarray:
        if self.transposed:
            return np.ascontiguousarray(tensor.reshape(tensor.shape[0], -1).T)
        return tensor

    def to_hf(self, array: np.ndarray) -> np.ndarray:
        if self.transposed:
            return np.ascontiguousarray(array.T).reshape(self.hf_shape)
        return array


def param_specs(state: nnx.State, config: Qwen25VLConfig) -> dict[str, tuple[ParamSpec, Any]]:
    """checkpoint key -> (spec, nnx Variable) for every Param in a (possibly abstract) model state."""
    specs = {}
    for path, variable in nnx.to_flat_state(state):
        if isinstance(variable, nnx.Param):
            spec = ParamSpec(tuple(path), variable.get_value().shape, config)
            specs[spec.key] = (spec, variable)
    return specs


def canonical_key(key: str) -> str:
    """Map transformers-v5 in-memory names to the hub names used by this module tree."""
    for old, new in _V5_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


# ------------------------------------------------------------------------ files
def resolve_checkpoint_dir(path_or_hub_id: str | os.PathLike) -> str:
    """A local directory, or a hub id fetched with huggingface_hub (needs a network connection)."""
    path = os.fspath(path_or_hub_id)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise NotADirectoryError(
                f"checkpoint path {path} is a file; pass the directory holding config.json and the *.safetensors files"
            )
        return path
    looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~")) and all(path.split("/"))
    if not looks_like_hub_id:
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, allow_patterns=["*.json", "*.safetensors"])
    except Exception as e:  # offline machines, unknown repos, gated repos
        raise FileNotFoundError(
            f"{path} is not a local directory and could not be fetched from the Hugging Face "
            f"hub ({type(e).__name__}: {e})"
        ) from e


def checkpoint_files(directory: str) -> dict[str, str]:
    """file key (as stored) -> absolute safetensors path, from the shard index or the single file."""
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path} has no weight_map")
        files = {}
        for key, name in weight_map.items():
            file = os.path.join(directory, name)
            if not os.path.isfile(file):
                raise FileNotFoundError(f"{index_path} lists {key!r} in shard {name}, which does not exist")
            files[key] = file
        return files
    single = os.path.join(directory, SINGLE_FILE)
    if not os.path.isfile(single):
        raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}")
    with safe_open(single, framework="numpy") as f:
        return {key: single for key in f.keys()}


def _read_tensors(files: dict[str, str], keys) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (file key, tensor) one at a time, opening each shard once."""
    by_file: dict[str, list[str]] = {}
    for key in keys:
        by_file.setdefault(files[key], []).append(key)
    for file, file_keys in by_file.items():
        with safe_open(file, framework="numpy") as f:
            for key in file_keys:
                yield key, f.get_tensor(key)


def _tensor_meta(files: dict[str, str]) -> dict[str, tuple[tuple[int, ...], str]]:
    meta = {}
    by_file: dict[str, list[str]] = {}
    for key, file in files.items():
        by_file.setdefault(file, []).append(key)
    for file, keys in by_file.items():
        with safe_open(file, framework="numpy") as f:
            for key in keys:
                s = f.get_slice(key)
                meta[key] = (tuple(s.get_shape()), s.get_dtype())
    return meta


# ------------------------------------------------------------------------ loading
ShardingSpec = (
    jax.sharding.Mesh
    | jax.sharding.Sharding
    | Callable[[str, tuple[int, ...]], jax.sharding.Sharding]
    | nnx.State
    | None
)


def _sharding_lookup(shardings: ShardingSpec, state: nnx.State) -> Callable[[ParamSpec], jax.sharding.Sharding]:
    if isinstance(shardings, jax.sharding.Mesh):
        shardings = state_shardings(state, shardings)
    if shardings is None:
        default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return lambda spec: default
    if isinstance(shardings, jax.sharding.Sharding):
        return lambda spec: shardings
    if isinstance(shardings, nnx.State):
        table = {
            tuple(p): (v.get_value() if isinstance(v, nnx.Variable) else v) for p, v in nnx.to_flat_state(shardings)
        }
        return lambda spec: table[spec.path]
    if callable(shardings):
        return lambda spec: shardings(spec.key, spec.shape)
    raise TypeError(
        f"shardings must be None, a Mesh, a jax Sharding, a callable (key, shape) -> Sharding or an "
        f"nnx.State of shardings; got {type(shardings).__name__}"
    )


def load_pretrained(
    path_or_hub_id: str | os.PathLike,
    *,
    dtype=jnp.float32,
    param_dtype=None,
    config: Qwen25VLConfig | None = None,
    shardings: ShardingSpec = None,
    remat: bool = False,
    freeze_vision: bool = False,
) -> Qwen25VL:
    """Load a Qwen2.5-VL checkpoint into a `Qwen25VL` module.

    dtype: compute dtype; param_dtype: storage dtype (defaults to dtype). config: overrides the
    directory's config.json. shardings: where each parameter goes (default: the first device): a
    `jax.sharding.Mesh` (each parameter by its logical axes, `g1jax.sharding.state_shardings`), an
    nnx.State of shardings mirroring the parameters, one Sharding for all, or a callable
    (checkpoint key, shape) -> Sharding.
    """
    directory = resolve_checkpoint_dir(path_or_hub_id)
    if config is None:
        config_path = os.path.join(directory, "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"no config.json in checkpoint directory {directory}")
        config = Qwen25VLConfig.from_json_file(config_path)
    param_dtype = dtype if param_dtype is None else param_dtype
    abstract = Qwen25VL(
        config, dtype=dtype, param_dtype=param_dtype, remat=remat, freeze_vision=freeze_vision, rngs=None
    )
    graphdef, state = nnx.split(abstract)
    specs = param_specs(state, config)

    files = checkpoint_files(directory)
    by_canonical: dict[str, str] = {}
    for key in files:
        canon = canonical_key(key)
        if canon in by_canonical:
            raise CheckpointError(f"checkpoint has both {by_canonical[canon]!r} and {key!r} for parameter {canon!r}")
        by_canonical[canon] = key
    tied_head = config.tie_word_embeddings and "lm_head.weight" in by_canonical
    unexpected = sorted(k for k in by_canonical if k not in specs and not (tied_head and k == "lm_head.weight"))
    if unexpected:
        raise CheckpointError(
            f"unexpected key(s) in {directory} with no matching parameter: "
            f"{', '.join(repr(by_canonical[k]) for k in unexpected[:10])}"
            + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else "")
        )
    missing = sorted(k for k in specs if k not in by_canonical)
    if missing:
        hint = (
            " (config.json has tie_word_embeddings=false; a tied checkpoint has no lm_head.weight)"
            if missing == ["lm_head.weight"]
            else ""
        )
        raise CheckpointError(
            f"missing key(s) in {directory}: {', '.join(repr(k) for k in missing[:10])}"
            + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else "")
            + hint
        )
    meta = _tensor_meta(files)
    for canon, (spec, _) in specs.items():
        key = by_canonical[canon]
        shape, file_dtype = meta[key]
        if file_dtype not in _FLOAT_DTYPES:
            raise CheckpointError(
                f"key {key!r} has dtype {file_dtype} in {files[key]}; expected a floating dtype (F32, F16 or BF16)"
            )
        if shape != spec.hf_shape:
            raise CheckpointError(
                f"key {key!r} has shape {list(shape)} in {files[key]}, expected {list(spec.hf_shape)}"
            )
    if tied_head:
        _check_tied_head(files, by_canonical, directory)
    sharding_of = _sharding_lookup(shardings, state)
    file_to_canon = {v: k for k, v in by_canonical.items()}
    for key, tensor in _read_tensors(files, [by_canonical[c] for c in specs]):
        spec, variable = specs[file_to_canon[key]]
        array = spec.from_hf(tensor).astype(variable.get_value().dtype)
        variable.set_value(jax.device_put(array, sharding_of(spec)))
    return nnx.merge(graphdef, state)


def _check_tied_head(files, by_canonical, directory):
    """A tied config may still ship lm_head.weight; accept it only if it equals the embedding."""
    head_key, embed_key = by_canonical["lm_head.weight"], by_canonical["model.embed_tokens.weight"]
    tensors = dict(_read_tensors(files, [head_key, embed_key]))
    head, embed = tensors[head_key], tensors[embed_key]
    if head.shape != embed.shape or not np.array_equal(head, embed):
        raise CheckpointError(
            f"config.json sets tie_word_embeddings=true but {head_key!r} in {directory} differs "
            f"from {embed_key!r}; set tie_word_embeddings=false to load a separate lm_head"
        )


# ------------------------------------------------------------------------ saving
def save_pretrained(
    model: Qwen25VL,
    out_dir: str | os.PathLike,
    *,
    config: Qwen25VLConfig | None = None,
    dtype=None,
    max_shard_bytes: int = 4 * 1024**3,
) -> list[str]:
    """Write HF-layout safetensors (hub key names, [out, in] weights) and config.json into out_dir.

    dtype: storage dtype (default: each parameter's own dtype). Files above max_shard_bytes are split
    into shards listed in model.safetensors.index.json. Returns the written safetensors paths.
    """
    config = model.config if config is None else config
    if config != model.config:
        raise ValueError("config differs from the model's own config; save the model's config instead")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    specs = param_specs(nnx.state(model), model.config)
    target = None if dtype is None else np.dtype(jnp.dtype(dtype))

    shards: list[dict[str, np.ndarray]] = [{}]
    shard_bytes = 0
    for key in sorted(specs):
        spec, variable = specs[key]
        array = np.asarray(jax.device_get(variable.get_value()))
        if target is not None:
            array = array.astype(target)
        tensor = spec.to_hf(array)
        if shards[-1] and shard_bytes + tensor.nbytes > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][key] = tensor
        shard_bytes += tensor.nbytes

    written = []
    if len(shards) == 1:
        path = os.path.join(out_dir, SINGLE_FILE)
        save_file(shards[0], path, metadata={"format": "pt"})
        written.append(path)
    else:
        weight_map, total = {}, 0
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(out_dir, name), metadata={"format": "pt"})
            written.append(os.path.join(out_dir, name))
            for key, tensor in shard.items():
                weight_map[key] = name
                total += tensor.nbytes
        with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    stored = {np.dtype(t.dtype) for shard in shards for t in shard.values()}
    torch_dtype = (
        {
            np.dtype(np.float32): "float32",
            np.dtype(ml_dtypes.bfloat16): "bfloat16",
            np.dtype(np.float16): "float16",
        }.get(stored.pop(), "float32")
        if len(stored) == 1
        else "float32"
    )
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config.to_hf_dict(torch_dtype=torch_dtype), f, indent=2)
    return written
