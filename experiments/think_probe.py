"""Which part of a teacher's answer does the tiny model learn, and when? A diagnosis for issue #19.

The default recipe's cold start (frozen vision tower, 2048's short prompt) on a 2048 teacher; every
`--every` steps, on fresh start states (keys no training step draws) with the teacher's own answer fed
in (teacher forcing), the mean probability the model gives the right token at:

    cells    the first token of each of the 16 cells of <perception> (the board read from the picture)
    grid     each cell of the pairs teacher's `rows` line (the board again, one token per cell)
    flags    each of the 32 merge flags (`left`, `up`); flag1 those that are 1 (a tile meeting an equal one)
    verdict  the first token of the verdict ("Left merges." / "Up merges." / "Nothing merges." or
             "No equal neighbours.")
    answer   the action digit in <answer>

The neighbours teacher (flags of side-by-side tiles) is measured the same way; the greedy teacher has
no grid, flags or verdict: only cells and answer are measured for it.

    python experiments/think_probe.py --steps 3000 --every 250 --json out/think_probe.json
    python experiments/think_probe.py --lr 1e-3 --states 16          # the slower setting of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from perception_probe import cell_starts  # noqa: E402 (experiments/ is the script's directory)

from g1jax import recipes
from g1jax import update as update_lib
from g1jax.trainer import Trainer

PARTS = ("cells", "grid", "flags", "flag1", "verdict", "answer")


def positions(text: str) -> dict[str, list[int]]:
    """Character offsets of the measured tokens in one teacher answer (pairs teacher or greedy)."""
    out = {"cells": cell_starts(text), "answer": [text.index("<answer>") + len("<answer>")]}
    if "\nrows " in text:

        def laid_out(start):  # the 16 cells of a line laid out like exponent_grid: 4 digits, a space
            return [start + 5 * r + c for r in range(4) for c in range(4)]

        out["grid"] = laid_out(text.index("\nrows ") + 6)
        left, up = text.index("\nleft ") + 6, text.index("\nup ") + 4
        out["flags"] = laid_out(left) + laid_out(up)
        out["flag1"] = [c for c in out["flags"] if text[c] == "1"]
        out["verdict"] = [text.index("\n", up) + 1]
    return out


def measure(trainer: Trainer, batches: int = 4) -> dict[str, float]:
    model = nnx.merge(trainer.graphdef, trainer.state.params, trainer.frozen)
    probs = {part: [] for part in PARTS}
    for rep in range(batches):
        states, _, pixels = trainer.rollout.start(jax.random.key(10_000 + rep))
        texts, _ = trainer.teacher_data.answers(jax.random.key(5), states)
        completion, mask = trainer.teacher_data.tokens(texts)
        zeros = jnp.zeros(completion.shape, jnp.float32)
        batch = trainer._batch(pixels, completion, mask, zeros, zeros[:, 0])
        logp, _ = update_lib.completion_logprobs(
            model, batch, image_grids=trainer.rollout.prompts.image_grids, group_size=1, temperature=1.0
        )
        p = np.exp(np.asarray(logp))
        for i, text in enumerate(texts):
            for part, offsets in positions(text).items():
                probs[part] += [p[i, len(trainer.tokenizer.encode(text[:c]))] for c in offsets]
    return {part: float(np.mean(v)) for part, v in probs.items() if v}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--teacher", default="neighbours", help="2048 teacher kind (neighbours, pairs, greedy, expectimax)"
    )
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--states", type=int, default=8, help="start states per cold-start step")
    parser.add_argument("--epsilon", type=float, default=0.0, help="the teacher's exploration (0: its own moves)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default="/tmp/think_probe")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    config = recipes.config(
        "default",
        run_dir=args.run_dir,
        sft_steps=args.steps,
        steps=1,
        sft_learning_rate=args.lr,
        states_per_step=args.states,
        model=args.model,
        seed=args.seed,
        teacher={"2048": args.teacher},
        teacher_epsilon=args.epsilon,
        eval_states=0,
        checkpoint_every=0,
        sample_every=0,
    )
    trainer = Trainer(config)
    curve, started = [], time.perf_counter()
    for step in range(args.steps):
        loss = trainer.sft_step(step)["sft_loss"]
        if (step + 1) % args.every == 0:
            row = dict(step=step + 1, sft_loss=loss, **measure(trainer), seconds=time.perf_counter() - started)
            curve.append(row)
            print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), curve=curve), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
