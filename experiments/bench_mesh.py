"""What the model's mesh constraints change in the compiled GRPO step and sampler, per device.

    python experiments/bench_mesh.py                              # tiny and bench presets, 4 meshes (~8 min, 2 cores)
    python experiments/bench_mesh.py --models tiny --meshes 2,4,1 # one cell

On 8 host devices (`--xla_force_host_platform_device_count=8`, set here when XLA_FLAGS does not
already say it), for each model preset and mesh this builds a `g1jax.trainer.Trainer` (2048, 8 states x
group 2), collects one rollout and compiles, without running them:

- the GRPO update (`Trainer._train_step`: loss, gradient, AdamW) and
- the sampler (`g1jax.sampling.sample` on the rollout's prompts),

the update twice: "propagation" = jitted with sharded inputs only (no mesh set, so
`g1jax.sharding.constrain_rows` / `gathered` do nothing: GSPMD propagates the parameters' shardings)
and "constrained" = with the mesh set (`jax.set_mesh`), as the Trainer runs it; the sampler three
times: its prompts, images and row keys left where JAX puts them (every device then samples every
row), split by rows over data x fsdp as GameRollout places them (what the Trainer runs), and split
with the mesh set as well. Reported per compile: XLA's per-device temporary
buffer size and argument size (`compiled.memory_analysis()`), the number of collectives of each kind
in the partitioned program, and how many "Involuntary full rematerialization" warnings the SPMD
partitioner printed (a tensor replicated on every device to change its layout).

These are compile-time facts of XLA:CPU's partitioner; on GPU/TPU the same partitioner runs, but the
buffer sizes there depend on the backend's own fusion and scheduling. Nothing here is timed: 8 fake
devices on 2 cores say nothing about speed.
Results: a table on stdout and everything in JSON (`--json`, default out/bench_mesh.json).
"""

from __future__ import annotations

import os
import sys

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from g1jax import sampling  # noqa: E402
from g1jax.config import TrainConfig  # noqa: E402
from g1jax.sharding import shard_rows  # noqa: E402
from g1jax.trainer import Trainer  # noqa: E402
from g1jax.update import grpo_update  # noqa: E402

COLLECTIVES = {
    "all-gather": "AG",
    "all-reduce": "AR",
    "reduce-scatter": "RS",
    "all-to-all": "A2A",
    "collective-permute": "CP",
}
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1, "f64": 8, "s64": 8}
REMAT_WARNING = "Involuntary full rematerialization"


@contextlib.contextmanager
def captured_stderr():
    """The process's file descriptor 2 (where XLA's C++ logging goes) into a buffer: yields a list that
    holds the captured text once the block ends."""
    out: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            out.append(sink.read().decode(errors="replace"))


def _shape_bytes(shapes: str) -> int:
    """Bytes of the arrays in an HLO result type such as `f32[16,64]{1,0}` or `(f32[2], bf16[4,4])`."""
    total = 0
    for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shapes):
        size = 1
        for d in filter(None, dims.split(",")):
            size *= int(d)
        total += size * _DTYPE_BYTES.get(dtype, 4)
    return total


def compile_facts(lowerable, args, kwargs, mesh) -> dict:
    """Compile `lowerable(*args, **kwargs)` (a jitted function) with `mesh` set (or none) and report it."""
    started = time.perf_counter()
    with captured_stderr() as log, jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        compiled = lowerable.lower(*args, **kwargs).compile()
    seconds = time.perf_counter() - started
    memory = compiled.memory_analysis()
    text = compiled.as_text()
    counts, mib = {}, {}
    for name in COLLECTIVES:
        ops = re.findall(rf"= ([^=]*?)\b{name}(?:-start)?\(", text)
        counts[name] = len(ops)
        mib[name] = sum(_shape_bytes(shape) for shape in ops) / 2**20
    return {
        "temp_mib": memory.temp_size_in_bytes / 2**20,
        "argument_mib": memory.argument_size_in_bytes / 2**20,
        "collectives": counts,
        "collective_result_mib": mib,
        "remat_warnings": log[0].count(REMAT_WARNING),
        "compile_s": seconds,
    }


def cell(model: str, mesh_shape: str, max_new_tokens: int) -> list[dict]:
    config = TrainConfig(
        model=model,
        games=("2048",),
        image_size=(140, 112),
        states_per_step=8,
        grpo=dict(group_size=2),
        max_new_tokens=max_new_tokens,
        steps=1,
        checkpoint_every=0,
        sample_every=0,
        progress=False,
        export_hf=False,
        mesh=mesh_shape,
        run_dir=tempfile.mkdtemp(prefix="g1jax-bench-mesh-"),
    )
    trainer = Trainer(config)
    batch = trainer.batch_of(trainer.collect(0))
    rollout = trainer.rollout
    p = rollout.prompts
    pixel_values = np.asarray(rollout.start(jax.random.key(0))[2])  # a host copy: on a mesh they come back split
    inputs = [
        (p.input_ids, 0),
        (p.positions, 1),
        (p.attention_mask, 0),
        (pixel_values, 0),
        (jax.random.split(jax.random.key(1), rollout.num_prompts * rollout.group_size), 0),
    ]
    params = (trainer.graphdef, (trainer.state.params, trainer.frozen))
    whole = params + tuple(jnp.asarray(x) for x, _ in inputs)  # rows where JAX puts them
    split = params + tuple(shard_rows(x, trainer.mesh, axis) for x, axis in inputs)  # as GameRollout places them
    sampler_kwargs = dict(image_grids=tuple(p.image_grids), group_size=rollout.group_size, config=rollout.sampling)
    update_args = (trainer.state, trainer.frozen, trainer.reference, batch)
    cases = [
        ("update", "propagation", grpo_update, update_args, trainer.grpo_static, None),
        ("update", "constrained (Trainer)", grpo_update, update_args, trainer.grpo_static, trainer.mesh),
        ("sampler", "rows unplaced", sampling._sample_jit, whole, sampler_kwargs, None),
        ("sampler", "rows split (Trainer)", sampling._sample_jit, split, sampler_kwargs, None),
        ("sampler", "rows split, constrained", sampling._sample_jit, split, sampler_kwargs, trainer.mesh),
    ]
    results = [
        dict(model=model, mesh=mesh_shape, program=program, layout=layout, **compile_facts(fn, args, kwargs, mesh))
        for program, layout, fn, args, kwargs, mesh in cases
    ]
    trainer.checkpoints.close()
    return results


def table(results: list[dict]) -> str:
    def short(counts):
        return " ".join(f"{COLLECTIVES[name]} {n}" for name, n in counts.items() if n) or "none"

    lines = [f"{'model':<6} {'mesh':<6} {'program':<8} {'layout':<24} {'temp MiB/dev':>12} {'remat':>5}  collectives"]
    for r in results:
        lines.append(
            f"{r['model']:<6} {r['mesh']:<6} {r['program']:<8} {r['layout']:<24} {r['temp_mib']:>12.1f} "
            f"{r['remat_warnings']:>5}  {short(r['collectives'])}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,bench", help="comma-separated model presets")
    parser.add_argument(
        "--meshes",
        nargs="+",
        default=["8,1,1", "2,4,1", "2,2,2", "1,4,2"],
        help="data,fsdp,tp mesh shapes of at most 8 devices",
    )
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--json", default="out/bench_mesh.json")
    args = parser.parse_args(argv)
    if jax.device_count() < 8:
        print(
            f"error: needs 8 devices, found {jax.device_count()} (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r})",
            file=sys.stderr,
        )
        return 2
    results = []
    for model in args.models.split(","):
        for mesh in args.meshes:
            rows = cell(model, mesh, args.max_new_tokens)
            results += rows
            print("\n".join(table(rows).splitlines()[1:]), flush=True)
    print()
    print(table(results))
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "devices": jax.device_count(),
        "argv": sys.argv[1:],
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
