"""Numerical parity of g1jax's Qwen2.5-VL against transformers (PyTorch, CPU, float32, eager attention).

    python experiments/parity.py                      # tiny random checkpoints, untied and tied
    python experiments/parity.py --hf-dir DIR         # an existing HF checkpoint directory
    python experiments/parity.py --write-fixture tests/fixtures/qwen25vl_tiny   # regenerate test goldens

Prints the parity table: position ids and rope deltas (identical to transformers), vision features,
logits and greedy step logits, 16 greedy tokens, and our cached vs uncached decoding (<= 1e-4).
The float quantities are judged against transformers run in float64: ours may be off by
max(1e-4, 2 x transformers' own float32 error), so a checkpoint with large activations does not fail
on float32 rounding that transformers shows too (`--float32-reference` skips the float64 copy, which
needs twice the model's memory, and holds ours within 1e-4 of transformers' float32 instead).
Exits with status 1 when a bound is broken.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import numpy as np  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from g1jax.models import Qwen25VLConfig, load_pretrained, preset  # noqa: E402
from g1jax.models import reference as R  # noqa: E402

FIXTURE_NPZ = "goldens.npz"


def check_directory(directory: str, max_new_tokens: int, seed: int, float64: bool = True):
    """Load `directory` in both frameworks, run the parity inputs, return (rows, ref, inputs)."""
    config = Qwen25VLConfig.from_json_file(directory)
    hf = R.load_hf_model(directory)
    inputs = R.parity_inputs(config, seed)
    ref = R.hf_outputs(hf, inputs, max_new_tokens)
    del hf
    exact = R.hf_float64_outputs(R.load_hf_model(directory, "float64"), inputs, max_new_tokens) if float64 else None
    model = load_pretrained(directory)
    ours = R.jax_outputs(model, inputs, max_new_tokens)
    return R.compare(ref, ours, inputs["attention_mask"], exact), ref, inputs


def build_tiny(directory: str, seed: int) -> dict[str, str]:
    """Random tiny reference checkpoints: untied, and tied sharing every other tensor."""
    import torch

    config = preset("tiny")
    untied = R.random_hf_model(config.replace(tie_word_embeddings=False), seed)
    tied = R.random_hf_model(config.replace(tie_word_embeddings=True), seed)
    state = {k: v for k, v in untied.state_dict().items() if not k.startswith("lm_head")}
    with torch.no_grad():
        missing, unexpected = tied.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("lm_head") for k in missing), (missing, unexpected)
    dirs = {"untied": os.path.join(directory, "untied"), "tied": os.path.join(directory, "tied")}
    R.save_reference(untied, dirs["untied"])
    R.save_reference(tied, dirs["tied"])
    return dirs


def write_fixture(out_dir: str, dirs: dict[str, str], results: dict) -> None:
    """The untied float32 checkpoint + goldens for both variants (the tied checkpoint = untied minus lm_head)."""
    os.makedirs(out_dir, exist_ok=True)
    tensors = load_file(os.path.join(dirs["untied"], "model.safetensors"))
    tied_tensors = load_file(os.path.join(dirs["tied"], "model.safetensors"))
    assert set(tied_tensors) == set(tensors) - {"lm_head.weight"}
    assert all(np.array_equal(tied_tensors[k], tensors[k]) for k in tied_tensors)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(dirs["untied"], "config.json")) as f:
        hf_config = json.load(f)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    _, _, inputs = results["untied"]
    valid = inputs["attention_mask"].astype(bool)
    golden = {
        "input_ids": inputs["input_ids"].astype(np.int32),
        "attention_mask": inputs["attention_mask"].astype(np.int32),
        "pixel_values": inputs["pixel_values"].astype(np.float16),  # exact: generated as float16 values
        "image_grid_thw": inputs["image_grid_thw"].astype(np.int32),
    }
    for variant, (_, ref, _) in results.items():
        golden[f"{variant}_positions"] = ref["positions"]
        golden[f"{variant}_rope_deltas"] = ref["rope_deltas"]
        golden[f"{variant}_vision_features"] = ref["vision_features"].astype(np.float32)
        golden[f"{variant}_logits_valid"] = ref["logits"][valid].astype(np.float32)  # [valid tokens, V]
        golden[f"{variant}_greedy_tokens"] = ref["greedy_tokens"]
    np.savez_compressed(os.path.join(out_dir, FIXTURE_NPZ), **golden)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-dir", help="HF checkpoint directory (default: build tiny random references)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the parity table as JSON here")
    parser.add_argument("--write-fixture", metavar="DIR", help="(tiny mode) also write checkpoint + goldens to DIR")
    parser.add_argument(
        "--float32-reference",
        action="store_true",
        help="judge against transformers float32 only (no float64 copy of the model)",
    )
    args = parser.parse_args(argv)
    if args.hf_dir and args.write_fixture:
        parser.error("--write-fixture only applies to the built tiny references")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {"checkpoint": args.hf_dir} if args.hf_dir else build_tiny(tmp, args.seed)
        for variant, directory in dirs.items():
            results[variant] = check_directory(
                directory, args.max_new_tokens, args.seed, float64=not args.float32_reference
            )
            print(R.format_rows(results[variant][0], f"\n== {variant}: {directory}"))
        if args.write_fixture:
            write_fixture(args.write_fixture, dirs, results)
            print(f"\nwrote fixture to {args.write_fixture}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({variant: rows for variant, (rows, _, _) in results.items()}, f, indent=2)
    broken = [(v, r["name"]) for v, (rows, _, _) in results.items() for r in rows if not r["ok"]]
    if broken:
        print("\nFAILED: " + "; ".join(f"{v}: {name}" for v, name in broken))
        return 1
    print("\nall parity bounds hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
