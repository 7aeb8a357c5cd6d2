"""Forward throughput and peak memory: g1jax's Flax Qwen2.5-VL vs transformers (PyTorch), same weights and inputs.

    python experiments/bench_model.py                          # CPU: 'bench' config (~31M params), batch 8 x 512
    python experiments/bench_model.py --json out/bench_model.json
    python experiments/bench_model.py --config 3b --dtype bfloat16 --skip-torch   # on a GPU: adds MFU
    python experiments/bench_model.py --decode-steps 0          # forward only
    python experiments/bench_model.py --attention-from 2ca6656  # also time attention as at that commit
    python experiments/bench_model.py --profile 3 --skip-torch --decode-steps 0   # where the forward's time goes

Each row of the batch is one image (224x224 px by default -> 64 image tokens) inside a 512-token
prompt. "first call" is compile + first run for Flax, the first (lazy-init) run for PyTorch. Both
models get identical random weights (the Flax model is exported with save_pretrained and
loaded by transformers) and identical inputs; the max abs logit difference between them is printed as
a sanity check. Timings are steady-state medians (and bests) after warm-up, with the two frameworks'
timed runs interleaved so both see the same background load (jit compile excluded, reported apart).

Peak memory: JAX from the compiled executable's memory_analysis() (arguments + outputs + temporaries
of one forward); PyTorch as the peak resident-set growth during its first forward (RSS sampled every
millisecond in a thread, after malloc_trim so freed heap does not hide the growth), over the RSS
before it. The same RSS measurement is also printed for JAX's first call after compilation. The
methods measure different things; each is labelled in the output.

Decode (Flax only; the sampler-vs-`generate` comparison is experiments/bench_train.py): the same
prompts prefilled once into a KV cache of seq + N slots, then N greedy `decode_step`s in one jitted
`fori_loop`, timed like the forward; tokens/s = batch x N / median. The printout also says which
attention kernel runs (`layers.fused_attention_fits`, docs/attention.md) and the load average
before and after (a shared machine slows both frameworks, PyTorch more).

--attention-from REV adds a same-process A/B: the forward and the decode built a second time with
`attention` taken from g1jax/models/layers.py at git revision REV (read with `git show`), timed
interleaved with the others. Separate processes on a shared machine differ by more than the change.
Each call's process CPU time is recorded too (steadier than wall time when other jobs take the cores).

--profile N traces N more calls of the compiled Flax forward with jax.profiler and sums the time of
each XLA kernel (thunk) over all threads, grouped by the named scope of the model code its result
comes from (attention, swiglu, rmsnorm, rotary; a kernel that fuses several, such as XLA:CPU's
YNNPACK fusions, counts where its root is) or else by its kind (other matmuls: q/k/v/o projections,
lm_head, vision patch/merger; other: the rest). Shares are of summed kernel time, not wall time.

--matmuls times the text decoder's matmul shapes of this forward alone (x [batch*seq, in] @ w [in, out]
for the q, k/v, o, gate/up, down projections and lm_head), jitted JAX vs torch.matmul at the same
thread count, in GFLOP/s (best of 5 x 10 calls), and names the library XLA hands those dots to (the
fusion kinds in the compiled HLO: ynn / xnn / onednn fusions, or XLA's own dot emitter). It separates
"the matmul library is slower on this CPU" from "the rest of the forward is": the question to answer
on an Intel Xeon, where PyTorch's MKL runs its AVX-512 kernels (on AMD it does not).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from g1jax.models import Qwen25VL, init_cache, preset, save_pretrained  # noqa: E402
from g1jax.models import text as text_module  # noqa: E402
from g1jax.models import vision as vision_module  # noqa: E402
from g1jax.models.layers import fused_attention_fits  # noqa: E402
from g1jax.models.synthetic import synthetic_inputs  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Dense bf16 peak FLOP/s by device kind (vendor datasheets), for MFU on accelerators.
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v5 lite": 197e12,
    "TPU v4": 275e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
}


def forward_flops(config, batch: int, seq: int, image_px: int) -> float:
    """Model FLOPs of one uncached forward, counted from the shapes (multiply-add = 2 FLOPs).

    Every matmul of the text decoder (q/k/v/o, SwiGLU, lm_head on every position) and causal attention
    (query i reads i + 1 keys), the vision tower on one image of image_px x image_px per row (patch
    embedding, q/k/v/proj, SwiGLU, windowed or whole-frame attention, the 2x2 patch merger). Norms,
    rotary and softmax are left out. This is the MFU numerator: XLA's cost analysis does not count
    what runs in a library call (cuDNN attention on a GPU), so it cannot serve there.
    """
    t, v = config.text, config.vision
    d, hd, heads, kv = t.hidden_size, t.head_dim, t.num_attention_heads, t.num_key_value_heads
    per_token = 2 * (d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * t.intermediate_size)
    text = batch * seq * (t.num_hidden_layers * per_token + 2 * d * t.vocab_size)
    text += batch * t.num_hidden_layers * 4 * heads * hd * seq * (seq + 1) / 2
    side = image_px // v.patch_size
    patches, frame = batch * side * side, side * side
    window = min(frame, (v.window_merge_units * v.spatial_merge_size) ** 2)
    dv, merged = v.hidden_size, 4 * v.hidden_size
    per_patch = 2 * (4 * dv * dv + 3 * dv * v.intermediate_size)
    vision = patches * (2 * v.patch_features * dv + v.depth * per_patch)
    for block in range(v.depth):
        keys = frame if block in v.fullatt_block_indexes else window
        vision += patches * 4 * dv * keys
    vision += patches // 4 * 2 * (merged * merged + merged * v.out_hidden_size)
    return float(text + vision)


class RssSampler:
    """Peak RSS growth of this process while active (Linux /proc); freed heap is trimmed first."""

    def __init__(self, interval: float = 1e-3):
        self.interval, self.peak, self.base = interval, 0, 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc: the growth may then under-count reused heap
            pass
        self.base = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def growth(self) -> int:
        return self.peak - self.base


class Runner:
    """One framework's forward: `call()` runs it to completion; `logits` holds the last output."""

    def __init__(self, name: str, call):
        self.name, self._call = name, call
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.first_call_s = 0.0
        self.rss_growth = 0

    def first(self):
        with RssSampler() as rss:
            t0 = time.perf_counter()
            self._call()
            self.first_call_s = time.perf_counter() - t0
        self.rss_growth = rss.growth

    def timed(self):
        c0, t0 = time.process_time(), time.perf_counter()
        self._call()
        self.times.append(time.perf_counter() - t0)
        self.cpu_times.append(time.process_time() - c0)


def attention_from_revision(rev: str):
    """`attention` as defined in g1jax/models/layers.py at git revision `rev` of this repository."""
    try:
        source = subprocess.run(
            ["git", "show", f"{rev}:g1jax/models/layers.py"], cwd=REPO, check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit(
            f"--attention-from {rev}: cannot read g1jax/models/layers.py at that revision ({err})"
        ) from None
    module = types.ModuleType(f"layers_at_{rev}")
    exec(compile(source, f"{rev}:g1jax/models/layers.py", "exec"), module.__dict__)
    return module.attention


@contextlib.contextmanager
def attention_patched(attention):
    """Trace the model with another `attention` (the text and vision modules call it by name), under
    the same named scope as ours so that --profile counts its kernels alike."""

    def scoped(*args, **kwargs):
        with jax.named_scope("attention"):
            return attention(*args, **kwargs)

    saved = text_module.attention, vision_module.attention
    text_module.attention = vision_module.attention = scoped
    try:
        yield
    finally:
        text_module.attention, vision_module.attention = saved


def prepare_jax(model, inputs, name: str = "flax"):
    graphdef, state = nnx.split(model)
    grids = inputs["grids"]

    @jax.jit
    def forward(state, ids, positions, mask, pixel_values):
        return nnx.merge(graphdef, state)(ids, positions, mask, pixel_values, grids)

    args = (
        state,
        jnp.asarray(inputs["input_ids"], jnp.int32),
        jnp.asarray(inputs["positions"]),
        jnp.asarray(inputs["attention_mask"], jnp.int32),
        jnp.asarray(inputs["pixel_values"], model.dtype),
    )
    t0 = time.perf_counter()
    compiled = forward.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    info = {
        "compile_s": compile_s,
        "flops": flops,
        "hlo": compiled.as_text(),
        "memory": {
            "method": "XLA memory_analysis (arguments + outputs + temporaries)",
            "argument_bytes": int(mem.argument_size_in_bytes),
            "output_bytes": int(mem.output_size_in_bytes),
            "temp_bytes": int(mem.temp_size_in_bytes),
            "peak_bytes": int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes),
        },
    }
    runner = Runner(name, None)

    def call():
        runner.logits = compiled(*args)
        runner.logits.block_until_ready()

    runner._call = call
    return runner, info


PROFILE_SCOPES = ("attention", "swiglu", "rmsnorm", "rotary")


def kernel_categories(hlo_text: str) -> dict[str, str]:
    """HLO instruction name of each entry-computation kernel -> its category (see --profile)."""
    bodies, current = {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) ", line)
        if header and line.rstrip().endswith("{"):
            current = header.group(1)
            bodies[current] = []
        elif current is not None:
            bodies[current].append(line)
    entry = next(name for name in bodies if re.search(rf"^ENTRY %{re.escape(name)} ", hlo_text, re.M))

    categories = {}
    for line in bodies[entry]:
        instruction = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
        if not instruction:
            continue
        called = re.search(r"calls=%([\w.\-]+)", line)
        body = bodies.get(called.group(1), []) if called else [line]
        # A fused kernel counts where its result comes from (its root), e.g. the last layer's MLP fused
        # into the lm_head matmul counts as lm_head.
        root = next((body_line for body_line in body if body_line.lstrip().startswith("ROOT ")), line)
        scope = next((name for name in PROFILE_SCOPES if f"/{name}/" in root), None)
        categories[instruction.group(1)] = scope or (
            "other matmuls" if any(re.search(r"\bdot\(", body_line) for body_line in body) else "other"
        )
    return categories


def profile_forward(runner: Runner, hlo_text: str, calls: int) -> dict[str, float]:
    """Summed kernel seconds per call by category, from a jax.profiler trace of `calls` forward calls."""
    categories = kernel_categories(hlo_text)
    totals = collections.defaultdict(float)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(calls):
                runner._call()
        trace = jax.profiler.ProfileData.from_file(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0])
    for plane in trace.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in categories:
                    totals[categories[event.name]] += event.duration_ns * 1e-9 / calls
    return dict(totals)


def prepare_decode(model, inputs, steps: int, name: str = "flax decode"):
    """N greedy decode steps after a prefill of the benchmark prompts (prefill run once, not timed)."""
    graphdef, state = nnx.split(model)
    grids = inputs["grids"]
    batch, seq = inputs["input_ids"].shape

    @jax.jit
    def prefill(state, ids, positions, mask, pixel_values):
        model = nnx.merge(graphdef, state)
        cache = init_cache(model.config, batch, seq + steps, model.dtype)
        logits, cache = model.prefill(ids, positions, mask, cache, pixel_values, grids)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache

    @jax.jit
    def decode(state, token, cache):
        model = nnx.merge(graphdef, state)

        def step(_, carry):
            token, cache = carry
            logits, cache = model.decode_step(token, cache)
            return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache

        return jax.lax.fori_loop(0, steps, step, (token, cache))[0]

    token, cache = prefill(
        state,
        jnp.asarray(inputs["input_ids"], jnp.int32),
        jnp.asarray(inputs["positions"]),
        jnp.asarray(inputs["attention_mask"], jnp.int32),
        jnp.asarray(inputs["pixel_values"], model.dtype),
    )
    t0 = time.perf_counter()
    compiled = decode.lower(state, token, cache).compile()
    compile_s = time.perf_counter() - t0
    runner = Runner(name, None)

    def call():
        runner.tokens = compiled(state, token, cache)
        runner.tokens.block_until_ready()

    runner._call = call
    return runner, {"compile_s": compile_s, "steps": steps, "cache_slots": seq + steps}


def prepare_torch(directory, inputs, threads, attn):
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        directory, dtype=torch.float32, attn_implementation=attn
    ).eval()
    t = {k: torch.from_numpy(np.asarray(inputs[k], np.int64)) for k in ("input_ids", "attention_mask")}
    t["pixel_values"] = torch.from_numpy(inputs["pixel_values"])
    t["image_grid_thw"] = torch.tensor(inputs["grids"], dtype=torch.int64)
    t["mm_token_type_ids"] = (t["input_ids"] == model.config.image_token_id).long()
    runner = Runner("pytorch", None)

    def call():
        with torch.no_grad():
            runner.logits = model(**t).logits

    runner._call = call
    return runner, {"threads": threads, "attn_implementation": attn}


def dot_library(hlo_text: str) -> dict[str, int]:
    """How many dots of a compiled CPU program each matmul library runs (the fusion names XLA gives them)."""
    counts = collections.Counter(re.findall(r"%(ynn|xnn|onednn)_fusion[.\d]* = ", hlo_text))
    # computations a library fusion calls hold its dots; a dot anywhere else is XLA's own
    library_bodies = set(re.findall(r"%(?:ynn|xnn|onednn)_fusion[.\d]* = .*?calls=%([\w.-]+)", hlo_text))
    plain, body = 0, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.-]+) .*\{$", line)
        if header:
            body = header.group(1)
        elif re.search(r"\} dot\(", line) and body not in library_bodies:
            plain += 1
    return dict(counts, **({"xla dot": plain} if plain else {}))


def matmul_table(config, rows: int, threads: int, skip_torch: bool, calls: int = 10) -> list[dict]:
    """GFLOP/s of the decoder's matmul shapes, JAX (jit) and, unless skipped, torch.matmul."""
    t = config.text
    d, q, kv = t.hidden_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    shapes = {
        "q_proj": (d, q),
        "k/v_proj": (d, kv),
        "o_proj": (q, d),
        "gate/up_proj": (d, t.intermediate_size),
        "down_proj": (t.intermediate_size, d),
        "lm_head": (d, t.vocab_size),
    }
    rng = np.random.default_rng(0)
    if not skip_torch:
        import torch

        torch.set_num_threads(threads)
    table = []
    for name, (n_in, n_out) in shapes.items():
        x = rng.standard_normal((rows, n_in), np.float32)
        w = rng.standard_normal((n_in, n_out), np.float32) * n_in**-0.5
        flops = 2.0 * rows * n_in * n_out
        jx, jw = jnp.asarray(x), jnp.asarray(w)
        compiled = jax.jit(jnp.matmul).lower(jx, jw).compile()
        runs = {"jax": lambda compiled=compiled, jx=jx, jw=jw: compiled(jx, jw).block_until_ready()}
        if not skip_torch:
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            runs["torch"] = lambda tx=tx, tw=tw: torch.matmul(tx, tw)
        row = {"name": name, "shape": [rows, n_in, n_out], "xla_library": dot_library(compiled.as_text())}
        for label, call in runs.items():
            call()
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(calls):
                    call()
                best = min(best, (time.perf_counter() - start) / calls)
            row[f"{label}_gflops"] = flops / best / 1e9
        table.append(row)
    return table


def summarize(runner: Runner, tokens: int) -> dict:
    median = statistics.median(runner.times)
    return {
        "times_s": runner.times,
        "median_s": median,
        "best_s": min(runner.times),
        "tokens_per_s": tokens / median,
        "tokens_per_s_best": tokens / min(runner.times),
        "first_call_s": runner.first_call_s,
        "cpu_times_s": runner.cpu_times,
        "cpu_median_s": statistics.median(runner.cpu_times),
    }


def peak_flops(device) -> float | None:
    kind = getattr(device, "device_kind", "")
    for name, flops in PEAK_BF16_FLOPS.items():
        if name.lower() in kind.lower():
            return flops
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="bench", help="preset name: bench (CPU default), tiny, 3b, 7b")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--image-px", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--torch-attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--skip-torch", action="store_true", help="Flax only (e.g. 3B on a GPU)")
    parser.add_argument("--decode-steps", type=int, default=32, help="greedy decode steps after a prefill (0: skip)")
    parser.add_argument(
        "--attention-from",
        metavar="REV",
        help="also time the model with layers.attention from this git revision (same process)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="trace N more Flax forward calls and print where the kernel time goes",
    )
    parser.add_argument(
        "--matmuls",
        action="store_true",
        help="also time the decoder's matmul shapes alone, JAX vs torch.matmul (GFLOP/s)",
    )
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)

    if args.decode_steps < 0 or args.profile < 0 or args.runs < 1 or args.warmup < 1:
        raise SystemExit("--decode-steps and --profile must be >= 0, --runs and --warmup >= 1")
    load_before = os.getloadavg()
    config = preset(args.config)
    dtype = jnp.dtype(args.dtype)
    device = jax.devices()[0]
    on_accelerator = device.platform != "cpu"
    if not args.skip_torch and dtype != jnp.float32:
        raise SystemExit("the PyTorch comparison runs in float32 on CPU; use --skip-torch with --dtype bfloat16")
    try:
        inputs = synthetic_inputs(config, args.batch, args.seq, args.image_px)
    except ValueError as error:
        raise SystemExit(f"--seq / --image-px: {error}") from None
    model = Qwen25VL(config, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
    tokens = args.batch * args.seq

    results = {
        "config": args.config,
        "dtype": args.dtype,
        "batch": args.batch,
        "seq": args.seq,
        "image_tokens_per_row": inputs["image_tokens"],
        "params": int(params),
        "device": f"{device.platform}: {getattr(device, 'device_kind', '')}",
        "host": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": {"jax": jax.__version__},
        "load_average_before": load_before,
    }
    text = config.text
    attention_probe = (
        jax.ShapeDtypeStruct((args.batch, args.seq, text.num_attention_heads, text.head_dim), dtype),
        jax.ShapeDtypeStruct((args.batch, args.seq, text.num_key_value_heads, text.head_dim), dtype),
    )
    results["attention_kernel"] = "cudnn fused" if fused_attention_fits(*attention_probe) else "xla matmuls"
    flax, flax_info = prepare_jax(model, inputs)
    runners = [flax]
    if not args.skip_torch:
        import torch
        import transformers

        results["versions"].update(torch=torch.__version__, transformers=transformers.__version__)
        with tempfile.TemporaryDirectory() as tmp:
            save_pretrained(model, tmp)
            torch_runner, torch_info = prepare_torch(tmp, inputs, args.torch_threads, args.torch_attn)
        runners.append(torch_runner)
    decode = baseline = baseline_decode = None
    if args.decode_steps:
        decode, decode_info = prepare_decode(model, inputs, args.decode_steps)
    if args.attention_from:
        with attention_patched(attention_from_revision(args.attention_from)):
            baseline, baseline_info = prepare_jax(model, inputs, f"flax, attention@{args.attention_from}")
            if args.decode_steps:
                baseline_decode, _ = prepare_decode(
                    model, inputs, args.decode_steps, f"flax decode, attention@{args.attention_from}"
                )
    timed = [r for r in runners + [baseline, decode, baseline_decode] if r is not None]
    for runner in timed:
        runner.first()
        for _ in range(args.warmup - 1):
            runner._call()
    # Interleave the timed runs so both frameworks see the same background load on a shared host.
    for _ in range(args.runs):
        for runner in timed:
            runner.timed()
    hlo = flax_info.pop("hlo")
    results["xla_dot_library"] = dot_library(hlo)
    if args.matmuls:
        results["matmuls"] = matmul_table(config, tokens, args.torch_threads, args.skip_torch or on_accelerator)
    if args.profile:
        results["profile_kernel_s_per_call"] = profile_forward(flax, hlo, args.profile)
        if baseline:
            baseline_profile = profile_forward(baseline, baseline_info["hlo"], args.profile)
    results["load_average_after"] = os.getloadavg()

    results["flax"] = dict(summarize(flax, tokens), **flax_info)
    results["flax"]["memory"]["rss_growth_bytes_first_call"] = flax.rss_growth
    results["flax"]["model_flops"] = forward_flops(config, args.batch, args.seq, args.image_px)
    if on_accelerator:
        peak = peak_flops(device)
        results["flax"]["model_tflops_per_s"] = results["flax"]["model_flops"] / results["flax"]["median_s"] / 1e12
        results["flax"]["mfu"] = (results["flax"]["model_tflops_per_s"] * 1e12 / peak) if peak else None
    if not args.skip_torch:
        results["torch"] = dict(summarize(torch_runner, tokens), **torch_info)
        results["torch"]["memory"] = {
            "method": "peak RSS growth during the first forward (sampled every 1 ms)",
            "peak_bytes": torch_runner.rss_growth,
        }
        results["flax_over_torch_speed"] = results["torch"]["median_s"] / results["flax"]["median_s"]
        results["flax_over_torch_speed_best"] = results["torch"]["best_s"] / results["flax"]["best_s"]
        results["max_abs_logit_diff"] = float(
            np.abs(torch_runner.logits.float().numpy() - np.asarray(flax.logits, np.float32)).max()
        )
    if decode:
        results["decode"] = dict(summarize(decode, args.batch * args.decode_steps), **decode_info)
    if baseline:
        results["baseline"] = {
            "attention_from": args.attention_from,
            "flax": dict(summarize(baseline, tokens), memory_peak_bytes=baseline_info["memory"]["peak_bytes"]),
            "max_abs_logit_diff": float(
                np.abs(np.asarray(baseline.logits, np.float32) - np.asarray(flax.logits, np.float32)).max()
            ),
        }
        if baseline_decode:
            results["baseline"]["decode"] = summarize(baseline_decode, args.batch * args.decode_steps)
        if args.profile:
            results["baseline"]["profile_kernel_s_per_call"] = baseline_profile

    gib = 1024**3
    print(
        f"Qwen2.5-VL '{args.config}' ({params / 1e6:.1f}M params, {args.dtype}), batch {args.batch} x "
        f"{args.seq} tokens ({inputs['image_tokens']} image tokens per row), device {results['device']}, "
        f"{os.cpu_count()} CPUs, attention: {results['attention_kernel']}, load average "
        f"{load_before[0]:.1f} before, {results['load_average_after'][0]:.1f} after"
    )
    print(
        f"{'framework':<10} {'median s':>9} {'best s':>8} {'tokens/s':>10} {'first call s':>13} {'peak GiB':>9}"
        f"  memory method"
    )
    f = results["flax"]
    print(
        f"{'flax':<10} {f['median_s']:>9.3f} {f['best_s']:>8.3f} {f['tokens_per_s']:>10.0f} "
        f"{f['first_call_s'] + f['compile_s']:>13.2f} {f['memory']['peak_bytes'] / gib:>9.3f}  "
        f"{f['memory']['method']}"
    )
    if "torch" in results:
        t = results["torch"]
        print(
            f"{'pytorch':<10} {t['median_s']:>9.3f} {t['best_s']:>8.3f} {t['tokens_per_s']:>10.0f} "
            f"{t['first_call_s']:>13.2f} {t['memory']['peak_bytes'] / gib:>9.3f}  {t['memory']['method']}"
        )
        print(
            f"flax peak RSS growth during its first call after compiling: "
            f"{f['memory']['rss_growth_bytes_first_call'] / gib:.3f} GiB (same method as the PyTorch row)"
        )
        print(
            f"Flax/PyTorch speed ratio: {results['flax_over_torch_speed']:.2f}x on medians, "
            f"{results['flax_over_torch_speed_best']:.2f}x on best runs "
            f"(torch threads {args.torch_threads}, attention {args.torch_attn}); "
            f"max |logit diff| {results['max_abs_logit_diff']:.2e}"
        )
    if decode:
        d = results["decode"]
        print(
            f"flax decode: {args.decode_steps} greedy steps x {args.batch} rows over a {d['cache_slots']}-slot "
            f"cache: median {d['median_s']:.3f} s (best {d['best_s']:.3f}), {d['tokens_per_s']:.0f} tokens/s, "
            f"{d['median_s'] / args.decode_steps * 1e3:.1f} ms per step; compile {d['compile_s']:.2f} s"
        )
    if args.profile:
        profiles = [("this tree", results["profile_kernel_s_per_call"])]
        if baseline:
            profiles.append((f"attention@{args.attention_from}", results["baseline"]["profile_kernel_s_per_call"]))
        print(f"flax forward kernels, summed over threads, s per call ({args.profile} traced calls each)")
        for label, kernels in profiles:
            total = sum(kernels.values())
            parts = ", ".join(
                f"{name} {seconds:.3f} ({100 * seconds / total:.1f}%)"
                for name, seconds in sorted(kernels.items(), key=lambda kv: -kv[1])
            )
            print(f"  {label}: total {total:.3f}: {parts}")
    if baseline:
        b = results["baseline"]
        rows = [("forward", results["flax"], b["flax"])]
        if baseline_decode:
            rows.append(("decode", results["decode"], b["decode"]))
        for what, new, old in rows:
            print(
                f"{what}, attention@{args.attention_from} -> this tree: median {old['median_s']:.3f} -> "
                f"{new['median_s']:.3f} s ({old['median_s'] / new['median_s']:.2f}x), best {old['best_s']:.3f} -> "
                f"{new['best_s']:.3f} s ({old['best_s'] / new['best_s']:.2f}x), process CPU time "
                f"{old['cpu_median_s']:.3f} -> {new['cpu_median_s']:.3f} s "
                f"({old['cpu_median_s'] / new['cpu_median_s']:.2f}x)"
            )
        print(
            f"max |logit diff| between the two forwards: {b['max_abs_logit_diff']:.2e}; XLA peak memory "
            f"{b['flax']['memory_peak_bytes'] / gib:.3f} -> {f['memory']['peak_bytes'] / gib:.3f} GiB"
        )
    if "mfu" in f:
        mfu = f"{f['mfu'] * 100:.1f}%" if f["mfu"] is not None else "unknown peak for this device"
        print(
            f"model FLOPs per forward {f['model_flops'] / 1e12:.2f} TFLOP (from the shapes; XLA cost analysis "
            f"{f['flops'] / 1e12:.2f}), {f['model_tflops_per_s']:.1f} TFLOP/s, MFU {mfu} of "
            f"{(peak_flops(device) or 0) / 1e12:.0f} TFLOP/s bf16 peak"
        )
    if "matmuls" in results:
        libraries = ", ".join(f"{k} {v}" for k, v in results["xla_dot_library"].items())
        print(
            f"decoder matmul shapes alone ([{tokens} x in] @ [in x out], GFLOP/s, best of 5 x 10 calls; "
            f"the forward's dots run in: {libraries})"
        )
        print(f"{'matmul':<13} {'in x out':>13} {'jax':>7} {'torch':>7} {'jax/torch':>10}  xla library")
        for row in results["matmuls"]:
            torch_cell = (
                f"{row['torch_gflops']:>7.0f} {row['jax_gflops'] / row['torch_gflops']:>10.2f}"
                if "torch_gflops" in row
                else f"{'-':>7} {'-':>10}"
            )
            print(
                f"{row['name']:<13} {row['shape'][1]:>6} x {row['shape'][2]:<6} {row['jax_gflops']:>7.0f} "
                f"{torch_cell}  {', '.join(row['xla_library']) or '?'}"
            )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
