"""Two processes x 2 devices against one process x 4 devices: step times, and the bytes that cross the
processes in a step, counted.

    python experiments/bench_multihost.py                           # meshes 4,1,1 and 1,4,1, 8 steps (~6 min, 2 cores)
    python experiments/bench_multihost.py --meshes 4,1,1 --steps 4  # one mesh

For each mesh this runs the g0 recipe (`experiments/train.py --recipe g0 --steps N --states 4 --group-size 2
--max-new-tokens 16 --mesh M --set eval_states=0 --set checkpoint_every=0 --set sample_every=0 --set
export_hf=false`) twice, one after the other: as two processes with 2 CPU devices each
(`XLA_FLAGS=--xla_force_host_platform_device_count=2`) joined by `jax.distributed` on a free localhost port,
and as one process with 4 devices. Each run is `Trainer.run`, as `g1jax train` runs it, with per RL step:

- the step, rollout and update times (`metrics.jsonl`'s time_step / time_rollout / time_update);
- the host reads that cross the processes, counted as they happen: `g1jax.sharding.GATHERED` (arrays that
  `to_host` gathered, their whole bytes, and the bytes this process held none of, i.e. received);
- the sampler's decode iterations this step (its `while` loop runs max(answer length) - 1 times).

XLA dumps every program it compiles in process 0 (`--xla_dump_to`, optimized HLO as text). From the dump
this script counts the collectives of each program: every all-reduce / all-gather / reduce-scatter /
collective-permute / all-to-all, its executions per call (an op in a `while` body runs once per trip: XLA's
`known_trip_count`, or for the sampler's decode loop the iterations counted above; the loop's condition
once more) and its operand bytes per device (all-reduce, all-to-all, collective-permute: the result's
bytes; all-gather: result / group size; reduce-scatter: result x group size), and whether its device
groups span both processes (partition i runs on the mesh's i-th device, whose `process_index` the worker
records). One RL step calls the sampler once and the GRPO update once (`Trainer.train_step`); other
programs with collectives are listed per call.

Results: a table on stdout and everything in JSON (`--json`, default out/bench_multihost.json). The times
are wall times of this machine (loaded or not: note `uptime`); the bytes do not depend on the load.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1, "f64": 8, "s64": 8}
_OP = re.compile(
    r"^\s*(?:ROOT\s+)?%\S+ = (?P<result>.*?) (?P<kind>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\((?P<rest>.*)$"
)
_HEADER = re.compile(r"^(?:ENTRY\s+)?%(?P<name>[^\s(]+)\s.*\{\s*$")


def train_flags(mesh: str, steps: int, run_dir: str) -> list[str]:
    return [
        "--recipe", "g0", "--steps", str(steps), "--states", "4", "--group-size", "2", "--max-new-tokens", "16",
        "--mesh", mesh, "--no-progress", "--set", "eval_states=0", "--set", "checkpoint_every=0",
        "--set", "sample_every=0", "--set", "export_hf=false", "--run-dir", run_dir,
    ]  # fmt: skip


# ------------------------------------------------------------------------ the worker (one process of a run)
def worker(args) -> int:
    import jax

    if args.num_processes > 1:
        jax.distributed.initialize(
            f"localhost:{args.port}", args.num_processes, args.process_id, initialization_timeout=120
        )
    from g1jax import sharding
    from g1jax.cli import train as train_cli
    from g1jax.trainer import make_trainer

    config = train_cli.resolve_config(train_cli.parse_args(train_flags(args.mesh, args.steps, args.run_dir)))
    trainer = make_trainer(config)
    collect, train_step = trainer.collect, trainer.train_step
    rows, last = [], {}

    def collect_seen(step):
        last["rollout"] = rollout = collect(step)
        return rollout

    def counted_step(step):
        sharding.GATHERED.clear()
        metrics = train_step(step)
        gathered = dict(sharding.GATHERED)
        lengths = sharding.to_host(last["rollout"].samples.lengths)
        rows.append(
            dict(
                step=metrics["step"],
                **{k: metrics[k] for k in ("time_step", "time_rollout", "time_update")},
                gathered=gathered,
                decode_iterations=int(lengths.max()) - 1,
            )
        )
        return metrics

    trainer.collect, trainer.train_step = collect_seen, counted_step
    trainer.run()
    if jax.process_index() == 0:
        with open(args.out, "w") as fh:
            json.dump(
                dict(
                    steps=rows,
                    mesh_processes=[d.process_index for d in trainer.mesh.devices.flat],
                    processes=jax.process_count(),
                    devices=jax.device_count(),
                ),
                fh,
            )
    return 0


# ------------------------------------------------------------------------ counting collectives in optimized HLO
def shape_bytes(shapes: str) -> int:
    """Bytes of the arrays in an HLO type such as `f32[16,64]{1,0}` or `(f32[2], bf16[4,4])`."""
    total = 0
    for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shapes):
        total += int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64)) * _DTYPE_BYTES.get(dtype, 4)
    return total


def device_groups(attributes: str, partitions: int) -> list[list[int]] | None:
    """The partition groups of one collective, from its `replica_groups` / `source_target_pairs`; None if
    the format is not one this reads."""
    if m := re.search(r"source_target_pairs=\{(.*?)\}\}", attributes):
        return [[int(a), int(b)] for a, b in re.findall(r"\{(\d+),(\d+)", m.group(1) + "}")]
    if m := re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attributes):
        axes = re.findall(r"'([^']+)'=(\d+)", m.group(1))
        if ":" in m.group(2) or "(" in m.group(2):
            return None
        grouped = re.findall(r"'([^']+)'", m.group(2))
        names, sizes = [a for a, _ in axes], [int(s) for _, s in axes]
        ids = np.arange(int(np.prod(sizes))).reshape(sizes)
        order = [i for i, a in enumerate(names) if a not in grouped] + [names.index(a) for a in grouped]
        group_size = int(np.prod([sizes[names.index(a)] for a in grouped])) if grouped else 1
        return ids.transpose(order).reshape(-1, group_size).tolist()
    if m := re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", attributes):
        dims = [int(d) for d in m.group(3).split(",")]
        ids = np.arange(int(np.prod(dims))).reshape(dims)
        if m.group(4):
            ids = ids.transpose([int(p) for p in m.group(4).split(",")])
        return ids.reshape(int(m.group(1)), int(m.group(2))).tolist()
    if m := re.search(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}", attributes):
        if not m.group(1).strip():
            return [list(range(partitions))]
        return [[int(i) for i in g.split(",") if i] for g in re.findall(r"\{([\d,]*)\}", m.group(1) + "}")]
    return None


def _times(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """(c0 + c1 D)(d0 + d1 D) for D the decode iterations of a step (never squared: one unknown loop)."""
    if a[1] and b[1]:
        raise ValueError("two nested loops of unknown trip count")
    return a[0] * b[0], a[0] * b[1] + a[1] * b[0]


def count_collectives(text: str, mesh_processes: list[int]) -> list[dict]:
    """Every collective op of one optimized HLO module: kind, executions per call (c0 + c1 x decode
    iterations), operand bytes per device and per execution, whether a device group spans processes."""
    ops, edges, current = [], [], None  # edges: (caller, callee, factor)
    for line in text.splitlines():
        if m := _HEADER.match(line):
            current = m.group("name")
            continue
        if current is None:
            continue
        if " while(" in line:
            trip = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
            n = (int(trip.group(1)), 0) if trip else (0, 1)
            body = re.search(r"body=%([^\s,]+)", line).group(1)
            cond = re.search(r"condition=%([^\s,]+)", line).group(1)
            edges += [(current, body, n), (current, cond, (n[0] + 1, n[1]) if trip else (1, 1))]
        for key in ("to_apply", "calls", "true_computation", "false_computation"):
            for callee in re.findall(rf"\b{key}=%([^\s,)]+)", line):
                edges.append((current, callee, (1, 0)))
        if m := re.search(r"branch_computations=\{([^}]*)\}", line):
            edges += [(current, c.strip().lstrip("%"), (1, 0)) for c in m.group(1).split(",")]  # each, at most
        if m := _OP.match(line):
            ops.append((current, m))
    entry = re.search(r"^ENTRY\s+%([^\s(]+)", text, re.M).group(1)
    callers: dict[str, list] = {}
    for caller, callee, factor in edges:
        callers.setdefault(callee, []).append((caller, factor))
    memo: dict[str, tuple[int, int]] = {entry: (1, 0)}

    def executions(name: str) -> tuple[int, int]:
        if name not in memo:
            memo[name] = (0, 0)  # against cycles (none in HLO)
            total = (0, 0)
            for caller, factor in callers.get(name, []):
                c = _times(executions(caller), factor)
                total = (total[0] + c[0], total[1] + c[1])
            memo[name] = total
        return memo[name]

    partitions = len(mesh_processes)
    found = []
    for computation, m in ops:
        kind, result = m.group("kind"), m.group("result")
        groups = device_groups(m.group("rest"), partitions)
        size = len(groups[0]) if groups else partitions
        if m.group("start") and result.startswith("("):  # async start: (operands, results[, scratch])
            result = re.findall(r"\b[a-z]+\d*\[[\d,]*\]", result)[0]
        whole = shape_bytes(result)
        operand = {"all-gather": whole // max(size, 1), "reduce-scatter": whole * size}.get(kind, whole)
        crosses = (
            None if groups is None else any(len({mesh_processes[i] for i in g if i < partitions}) > 1 for g in groups)
        )
        found.append(
            dict(kind=kind, bytes=operand, group_size=size, crosses=crosses, executions=executions(computation))
        )
    return found


def module_programs(dump_dir: str, mesh_processes: list[int]) -> dict[str, dict]:
    """The collectives of each program XLA compiled in process 0, by jitted function name (the last
    compile of a name wins)."""
    programs = {}
    for path in sorted(glob.glob(os.path.join(dump_dir, "*after_optimizations.txt"))):
        text = open(path).read()
        name = re.search(r"^HloModule\s+([^\s,]+)", text, re.M).group(1)
        ops = count_collectives(text, mesh_processes)
        if ops:
            programs[name] = dict(file=os.path.basename(path), ops=ops)
    return programs


def per_call(ops: list[dict], iterations: float, crossing: bool | None = None) -> dict:
    """Executions and operand bytes per device of one call, by kind (only the ops that cross the
    processes, or only those that do not, when `crossing` says so)."""
    out: dict[str, dict] = {}
    for op in ops:
        if crossing is not None and bool(op["crosses"]) != crossing:
            continue
        times = op["executions"][0] + op["executions"][1] * iterations
        entry = out.setdefault(op["kind"], {"ops": 0, "executions": 0.0, "bytes": 0.0})
        entry["ops"] += 1
        entry["executions"] += times
        entry["bytes"] += times * op["bytes"]
    return out


# ------------------------------------------------------------------------ the driver
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_layout(mesh: str, processes: int, steps: int, workdir: str, timeout: float) -> dict:
    tag = f"{mesh.replace(',', '')}-{processes}p"
    dump, out = os.path.join(workdir, f"dump-{tag}"), os.path.join(workdir, f"worker-{tag}.json")
    port = free_port()
    started, children = time.monotonic(), []
    for index in range(processes):
        flags = f"--xla_force_host_platform_device_count={4 // processes}"
        if index == 0:
            flags += f" --xla_dump_to={dump} --xla_dump_hlo_as_text"
        env = dict(os.environ, XLA_FLAGS=flags)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
        command = [sys.executable, os.path.abspath(__file__), "--worker", "--mesh", mesh, "--steps", str(steps)]
        command += ["--num-processes", str(processes), "--process-id", str(index), "--port", str(port)]
        command += ["--run-dir", os.path.join(workdir, f"run-{tag}"), "--out", out]
        log = open(os.path.join(workdir, f"{tag}-{index}.log"), "w")
        children.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
    try:
        for index, child in enumerate(children):
            code = child.wait(timeout=max(started + timeout - time.monotonic(), 1))
            if code:
                tail = open(os.path.join(workdir, f"{tag}-{index}.log")).read()[-3000:]
                raise SystemExit(f"{tag} process {index}: exit {code}\n{tail}")
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    result = json.load(open(out))
    result["wall_s"] = time.monotonic() - started
    result["programs"] = module_programs(dump, result["mesh_processes"])
    return result


# The programs one RL step runs once each (`Trainer.train_step`: the rollout's start states, the sampler, the
# update), by a part of their jitted name, with the trip count that their unknown-length loop takes.
STEP_PROGRAMS = {"_start": "none", "_sample_jit": "decode", "grpo_update": "none"}
GATHER_PROGRAM = "_identity_fn"  # multihost_utils.process_allgather's program: counted by sharding.GATHERED


def summarize(mesh: str, layout: str, result: dict, skip: int) -> dict:
    steps = result["steps"][skip:] or result["steps"]
    iterations = statistics.mean(s["decode_iterations"] for s in steps)
    programs = result["programs"]
    per_step, cross = {}, {True: 0.0, False: 0.0}
    for part, loop in STEP_PROGRAMS.items():
        names = [n for n in programs if part in n]
        ops = programs[names[-1]]["ops"] if names else []
        its = iterations if loop == "decode" else 0
        per_step[part] = per_call(ops, its)
        for crossing in cross:
            cross[crossing] += sum(e["bytes"] for e in per_call(ops, its, crossing).values())
    return dict(
        mesh=mesh,
        layout=layout,
        step_s=statistics.median(s["time_step"] for s in steps),
        rollout_s=statistics.median(s["time_rollout"] for s in steps),
        update_s=statistics.median(s["time_update"] for s in steps),
        step_range_s=[min(s["time_step"] for s in steps), max(s["time_step"] for s in steps)],
        steps_measured=len(steps),
        gathered_arrays=statistics.mean(s["gathered"].get("arrays", 0) for s in steps),
        gathered_bytes=statistics.mean(s["gathered"].get("bytes", 0) for s in steps),
        gathered_received=statistics.mean(s["gathered"].get("received", 0) for s in steps),
        decode_iterations=iterations,
        per_step=per_step,
        collective_bytes_crossing=cross[True],
        collective_bytes_local=cross[False],
        other_programs={
            name: per_call(p["ops"], iterations)
            for name, p in programs.items()
            if GATHER_PROGRAM not in name and not any(part in name for part in STEP_PROGRAMS)
        },
        wall_s=result["wall_s"],
    )


def table(rows: list[dict]) -> str:
    def ops(d):
        return ", ".join(f"{k} x{v['executions']:g} {v['bytes']:,.0f} B" for k, v in d.items()) or "none"

    lines = [
        f"{'mesh':<6} {'layout':<5} {'step s':>6} {'roll s':>6} {'upd s':>6} {'gathered B (recv)':>18} "
        f"{'coll. B crossing':>16} {'local':>9}  start | sampler | update (per device, per step)"
    ]
    for r in rows:
        lines.append(
            f"{r['mesh']:<6} {r['layout']:<5} {r['step_s']:>6.2f} {r['rollout_s']:>6.2f} {r['update_s']:>6.2f} "
            f"{r['gathered_bytes']:>9,.0f} ({r['gathered_received']:>5,.0f}) {r['collective_bytes_crossing']:>16,.0f} "
            f"{r['collective_bytes_local']:>9,.0f}  " + " | ".join(ops(r["per_step"][part]) for part in STEP_PROGRAMS)
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meshes", nargs="+", default=["4,1,1", "1,4,1"], help="data,fsdp,tp meshes of 4 devices")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--skip", type=int, default=2, help="first RL steps left out of the medians (compiles)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for one run before it is killed")
    parser.add_argument("--json", default="out/bench_multihost.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("mesh", "run-dir", "out"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    for name in ("num-processes", "process-id", "port"):
        parser.add_argument(f"--{name}", type=int, default=1 if name == "num-processes" else 0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    rows, raw = [], []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="g1jax-bench-multihost-") as workdir:
        for mesh in args.meshes:
            for processes, layout in ((2, "2x2"), (1, "1x4")):
                result = run_layout(mesh, processes, args.steps, workdir, args.timeout)
                rows.append(summarize(mesh, layout, result, args.skip))
                raw.append(dict(mesh=mesh, layout=layout, steps=result["steps"], programs=result["programs"]))
                print(table(rows[-1:]).splitlines()[1], flush=True)
    print()
    print(table(rows))
    for r in rows:
        for name, kinds in r["other_programs"].items():
            print(f"  {r['mesh']} {r['layout']} other program {name}: per call {kinds}")
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "")
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": model or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "argv": sys.argv[1:],
        "command": " ".join(train_flags("MESH", args.steps, "RUN_DIR")),
    }
    print(f"\n{meta}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "results": rows, "raw": raw}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
