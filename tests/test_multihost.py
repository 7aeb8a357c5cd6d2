"""Two processes joined by jax.distributed (2 CPU devices each, one 4-device mesh) run the tiny G1 recipe end
to end, cold start, RL, held-out evaluation, checkpoints, export, and match one process with 4 devices;
then one process resumes the two-process run's checkpoint and two processes the one-process run's."""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from adam_checks import assert_adam_params_close
from envs import ConfigError
from g1jax.checkpoint import Checkpointer
from g1jax.cli import train as train_cli
from g1jax.trainer import make_trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# fsdp 4: rows and parameters are split across both processes, so the row gathers, the update's
# collectives, the multi-host checkpoint and the export's weight gather all cross the process boundary.
# kl_coef 0: these untrained answers all score the same, so the RL advantages are 0 and the RL gradient is
# exactly 0; with the KL term it would be ~1e-9 of summation noise, which Adam scales up to a step of ~lr.
RUN = [
    "--recipe", "g1", "--steps", "1", "--states", "4", "--group-size", "2", "--max-new-tokens", "16",
    "--mesh", "1,4,1", "--kl-coef", "0", "--no-progress",
    "--set", "sft_steps=1", "--set", "eval_states=4", "--set", "export_hf=true",
]  # fmt: skip
TIMEOUT_S = 600  # each two-process run; a hang fails the test instead of stalling the suite (420 s was hit at load 20)
# Float32 collectives that sum in another order (gloo across processes vs. in-process) differ in the last bits.
RTOL, ATOL = 1e-5, 1e-6
# Parameters after the cold-start step (lr 2e-3) and the RL step: Adam can turn those last bits into up to 2 lr
# per step on the rare element whose gradient is near zero (adam_checks.py).
MAX_STEP = 2 * (2e-3 + 3e-4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def process_env(cache=None) -> dict[str, str]:
    """A child process's environment: 2 CPU devices, and this checkout's g1jax first on the path. With a
    `cache` directory, JAX's persistent compilation cache: process 0 writes the programs it compiles there
    and the processes of a later run read them instead of compiling again."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
    )
    if cache is not None:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        )
    return env


def start_processes(commands: list[list[str]], logs) -> list[subprocess.Popen]:
    """One process per command (its log in logs/process<i>.log), each with 2 CPU devices; their compiled
    programs are kept in logs/../xla-cache for the next processes (see process_env)."""
    env = process_env(logs.parent / "xla-cache")
    processes = []
    for index, command in enumerate(commands):
        with open(logs / f"process{index}.log", "w") as log:
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
    return processes


def train_commands(run_dir, count: int, *extra: str) -> list[list[str]]:
    layout = ["--distributed", "--coordinator", f"localhost:{free_port()}", "--num-processes", str(count)]
    command = [sys.executable, "-m", "g1jax.cli", "train", *RUN, *extra, "--run-dir", str(run_dir), *layout]
    return [[*command, "--process-id", str(index)] for index in range(count)]


def wait_all(processes: list[subprocess.Popen], logs, deadline: float) -> None:
    for index, process in enumerate(processes):
        try:
            code = process.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            code = "timed out"
        if code != 0:
            tail = (logs / f"process{index}.log").read_text()[-3000:]
            pytest.fail(f"process {index}: exit {code}\n{tail}")


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def cpu_seconds() -> str:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return f"{own.ru_utime + own.ru_stime:.0f} + {children.ru_utime + children.ru_stime:.0f} s"


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def assert_close_metrics(got: list[dict], expected: list[dict]) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in expected]
    for a, b in zip(got, expected):
        for key, value in b.items():
            if isinstance(value, float) and not key.startswith("time") and key != "tokens_per_s":
                np.testing.assert_allclose(a[key], value, rtol=RTOL, atol=ATOL, err_msg=f"step {b['step']} {key}")
            elif not isinstance(value, float):
                assert a[key] == value, (b["step"], key)


def host_leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def config_of(run_dir, *extra):
    return train_cli.resolve_config(train_cli.parse_args([*RUN, "--run-dir", str(run_dir), *extra]))


@pytest.mark.skipif(len(jax.devices()) < 4, reason="needs 4 CPU devices for the one-process run")
@pytest.mark.filterwarnings("ignore:teacher answers reach")  # 16 new tokens: the cold start's answers are cut
def test_two_processes_train_as_one_and_checkpoints_cross_over(tmp_path):
    started = time.monotonic()
    two, one, logs = tmp_path / "two", tmp_path / "one", tmp_path / "logs"
    logs.mkdir()
    processes = start_processes(train_commands(two, 2), logs)
    try:
        # meanwhile the same run in this process, on the first 4 of its devices
        single = make_trainer(config_of(one))
        single.run()
        wait_all(processes, logs, started + TIMEOUT_S)
    finally:
        stop(processes)
    two_processes_s, two_processes_cpu = time.monotonic() - started, cpu_seconds()

    # written once, by process 0: one metrics line per step (cold start + RL)
    assert_close_metrics(read_jsonl(two / "metrics.jsonl"), read_jsonl(one / "metrics.jsonl"))
    assert len(read_jsonl(two / "metrics.jsonl")) == 2
    # the held-out evaluation: the same answers, and the same rewards for the policy and each baseline
    for name in ("eval_before.json", "summary.json"):
        got, expected = json.loads((two / name).read_text()), json.loads((one / name).read_text())
        for row in ("policy", "before", "after", "random", "blind", "teacher"):
            if row in expected:
                assert got[row]["reward"] == pytest.approx(expected[row]["reward"], rel=RTOL, abs=ATOL), (name, row)
        if "answers" in expected:
            assert got["answers"] == expected["answers"]
            np.testing.assert_allclose(got["rewards"], expected["rewards"], rtol=RTOL, atol=ATOL)
    # the export: the whole weights, gathered from both processes' shards
    assert sorted(os.listdir(two / "hf")) == sorted(os.listdir(one / "hf"))
    got, expected = load_file(two / "hf" / "model.safetensors"), load_file(one / "hf" / "model.safetensors")
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert_adam_params_close(got[name], value, rtol=RTOL, atol=ATOL, max_step=MAX_STEP, name=name)
    assert not any(name.endswith(".tmp") for name in os.listdir(two))

    # the two-process checkpoint restores in one process, on another mesh too: the one-process run's parameters
    expected = host_leaves(single.state.params)
    other_mesh = make_trainer(config_of(two, "--steps", "2", "--mesh", "2,1,1"), resume=True)
    other_mesh.checkpoints.close()
    resumed = make_trainer(config_of(two, "--steps", "2"), resume=True)
    for trainer in (other_mesh, resumed):
        assert trainer.start_step == 2
        for a, b in zip(host_leaves(trainer.state.params), expected):
            assert_adam_params_close(a, b, rtol=RTOL, atol=ATOL, max_step=MAX_STEP)
    # and the reverse, at the same time: two processes resume the one-process run's checkpoint, while this
    # process continues the two-process run's; both take the same third step
    processes = start_processes(train_commands(one, 2, "--steps", "2", "--resume"), logs)
    try:
        resumed.run()
        wait_all(processes, logs, time.monotonic() + TIMEOUT_S)
    finally:
        stop(processes)
    assert [m["step"] for m in read_jsonl(two / "metrics.jsonl")] == [1, 2, 3]
    assert_close_metrics(read_jsonl(two / "metrics.jsonl"), read_jsonl(one / "metrics.jsonl"))
    # wall and CPU seconds (this process, its children): on a loaded machine the CPU seconds say more
    print(f"two-process run with the one-process run beside it: {two_processes_s:.0f} s, CPU {two_processes_cpu}; "
          f"with the restores and resumes: {time.monotonic() - started:.0f} s, CPU {cpu_seconds()}")  # fmt: skip


# the start of a script run as `python -c SCRIPT PROCESS_ID PORT ...`: join the other process
JOIN = """
import sys, jax
jax.distributed.initialize(
    f"localhost:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[1]), initialization_timeout=60
)
"""
# process I restores from the checkpoint directory argv[3 + I]
DIFFERENT_CHECKPOINTS = (
    JOIN
    + """
from g1jax.checkpoint import Checkpointer, CheckpointError
try:
    Checkpointer(sys.argv[3 + jax.process_index()]).restore_latest({})
except CheckpointError as error:
    print(error)
"""
)


def test_processes_that_see_different_checkpoints_refuse_to_resume(tmp_path):
    """A run directory that is not shared (each host its own copy): the hosts would resume from different steps."""
    shared = Checkpointer(tmp_path / "host0")
    shared.save(3, {"x": np.zeros(2)}, {"step": 3})
    shared.close()
    logs = tmp_path / "logs"
    logs.mkdir()
    port = str(free_port())
    dirs = [str(tmp_path / "host0"), str(tmp_path / "host1")]
    processes = start_processes(
        [[sys.executable, "-c", DIFFERENT_CHECKPOINTS, str(i), port, *dirs] for i in (0, 1)], logs
    )
    try:
        wait_all(processes, logs, time.monotonic() + 120)
    finally:
        stop(processes)
    for index in (0, 1):
        assert "process 0: 1 up to step 3, process 1: 0 up to step -1" in (logs / f"process{index}.log").read_text()


# both processes restore the newest readable checkpoint of argv[3] onto their 4-device mesh
FALL_BACK = (
    JOIN
    + """
import warnings, numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from g1jax.checkpoint import Checkpointer
whole = NamedSharding(jax.make_mesh((4,), ("data",)), PartitionSpec())
target = {"x": jax.ShapeDtypeStruct((2,), np.float32, sharding=whole)}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    step, items, _ = Checkpointer(sys.argv[3]).restore_latest(target)
print("restored step", step, "x", float(items["x"].addressable_data(0)[0]), "warned", len(caught))
# what sharding.to_host gathers across the processes is counted: nothing for the replicated x, all of the
# row-split array, half of which this process held
from g1jax.sharding import GATHERED, to_host
rows = jax.make_array_from_callback(
    (4,), NamedSharding(whole.mesh, PartitionSpec("data")), lambda index: np.arange(4, dtype=np.float32)[index]
)
to_host(items)
print("gathered", to_host(rows).tolist(), dict(GATHERED))
"""
)


def test_processes_fall_back_together_past_a_damaged_checkpoint(tmp_path):
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    for step in (1, 2):
        checkpoints.save(step, {"x": np.full(2, step, np.float32)}, {"step": step})
    checkpoints.close()
    for root, _, files in os.walk(tmp_path / "checkpoints" / "2" / "x"):
        for name in files:
            (Path(root) / name).write_bytes(b"garbage")
    logs = tmp_path / "logs"
    logs.mkdir()
    port = str(free_port())
    command = [sys.executable, "-c", FALL_BACK]
    processes = start_processes([[*command, str(i), port, str(tmp_path / "checkpoints")] for i in (0, 1)], logs)
    try:
        wait_all(processes, logs, time.monotonic() + 120)
    finally:
        stop(processes)
    for index in (0, 1):
        log = (logs / f"process{index}.log").read_text()
        assert "restored step 1 x 1.0 warned 1" in log
        assert "gathered [0.0, 1.0, 2.0, 3.0] {'arrays': 1, 'bytes': 16, 'received': 8}" in log
    assert os.listdir(tmp_path / "checkpoints-unreadable") == ["2"]
    assert os.listdir(tmp_path / "checkpoints") == ["1"]


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--coordinator", "localhost:1234"], "go with --distributed"),
        (["--distributed", "--coordinator", "localhost:1234", "--num-processes", "2"], "missing: --process-id"),
        (["--distributed", "--coordinator", "host0", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
        (["--distributed", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], r"0 \.\. 1"),
    ],
)
def test_a_bad_process_layout_is_one_line(flags, match, monkeypatch):
    for variable in train_cli.DISTRIBUTED_FLAGS.values():
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ConfigError, match=match):
        train_cli.join_processes(train_cli.parse_args(flags))


def test_an_unreachable_coordinator_fails_within_the_timeout(capsys):
    started = time.monotonic()
    flags = ["--coordinator", f"localhost:{free_port()}", "--num-processes", "2", "--process-id", "1"]
    assert train_cli.main(["--distributed", *flags, "--join-timeout", "2"]) == 2
    assert time.monotonic() - started < 10
    assert "did not answer within 2 s" in capsys.readouterr().err


def test_process_0_alone_stops_in_one_line_within_the_timeout():
    """The coordinator waiting for a process that never comes: XLA would abort it with a C++ stack trace."""
    address = f"localhost:{free_port()}"
    command = [sys.executable, "-m", "g1jax.cli", "train", "--distributed", "--coordinator", address]
    command += ["--num-processes", "2", "--process-id", "0", "--join-timeout", "2"]
    started = time.monotonic()
    # hard timeout: XLA's own deadline (2 + JOIN_MARGIN_S s) would abort it with status 134 long before
    done = subprocess.run(command, env=process_env(), cwd=ROOT, capture_output=True, text=True, timeout=90)
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        f"error: --distributed: not all 2 processes joined at the coordinator {address} within 2 s; "
        "start the same command on every host (another process id on each), or raise --join-timeout"
    ]
    assert seconds < 2 + train_cli.JOIN_MARGIN_S  # the process's own timer, not XLA's deadline


HLO = """HloModule jit_f, entry_computation_layout={(f32[8]{0})->f32[32]{0}}

%add (a: f32[], b: f32[]) -> f32[] {
  ROOT %s = f32[] add(%a, %b)
}

%decode (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %r = f32[8]{0} all-reduce(%x), channel_id=1, replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_1'}, to_apply=%add
}

%stop (p: (s32[], f32[8])) -> pred[] {
  ROOT %c = pred[] all-reduce(%y), channel_id=2, replica_groups=[1,4]<=[4], to_apply=%add
}

%layers (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %g = f32[2,8]{1,0} all-gather(%z), channel_id=4, replica_groups=[2,2]<=[2,2]T(1,0), dimensions={0}
}

%layers_cond (p: (s32[], f32[8])) -> pred[] {
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (x: f32[8]) -> f32[32] {
  %w = (s32[], f32[8]) while(%t), condition=%stop, body=%decode
  %l = (s32[], f32[8]) while(%t), condition=%layers_cond, body=%layers, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %a = f32[32]{0} all-gather(%x), channel_id=3, replica_groups={{0,1},{2,3}}, dimensions={0}
}
"""


def test_the_benchmark_counts_collectives_per_execution_and_whether_they_cross_processes():
    """experiments/bench_multihost.py's reading of optimized HLO: loop trips, operand bytes, process groups."""
    spec = importlib.util.spec_from_file_location("bench_multihost", Path(ROOT) / "experiments" / "bench_multihost.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ops = bench.count_collectives(HLO, mesh_processes=[0, 0, 1, 1])
    got = [(op["kind"], op["bytes"], op["group_size"], op["crosses"], op["executions"]) for op in ops]
    assert got == [
        ("all-reduce", 32, 2, False, (0, 1)),  # once per decode iteration D; groups {0,1}, {2,3}: one process each
        ("all-reduce", 1, 4, True, (1, 1)),  # the loop's stop test: D + 1 times
        ("all-gather", 32, 2, True, (3, 0)),  # 3 known trips; groups {0,2}, {1,3}; operand = result / 2
        ("all-gather", 64, 2, False, (1, 0)),
    ]
    assert bench.per_call(ops, 15, crossing=True) == {
        "all-reduce": {"ops": 1, "executions": 16, "bytes": 16},
        "all-gather": {"ops": 1, "executions": 3, "bytes": 96},
    }
