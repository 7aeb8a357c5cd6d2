"""Does the model read the 2048 board from the picture? A diagnosis for issue #19.

Two measurements on the default recipe's model, frames and start states:

1. A linear probe of the vision tower at initialisation: least squares from one merged image token's
   features to the value of the board cell under it, fitted on 3/4 of the states and scored on the rest.
   High accuracy means the picture's information reaches the decoder's input.
2. A perception-only cold start, seeing against blind: the teacher answer is only the `<perception>`
   block (the true board), and the "blind" arm trains on all-zero pixels. Every `--every` steps the
   negative log-likelihood of each cell's first token on fresh states is printed per cell. A model that
   reads the picture has a lower NLL than the blind arm; equal NLLs mean the decoder does not use it.

    python experiments/perception_probe.py --steps 400 --json out/perception_probe.json
    python experiments/perception_probe.py --short-prompt --rope-theta 10      # the variants of BENCHMARKS.md
    python experiments/perception_probe.py --short-prompt --freeze-vision --lr 1e-3 --steps 1700 --arms see

Writes the probe accuracies and both arms' per-cell NLL curves as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from envs.game2048 import SHORT_PROMPT
from envs.grammar import board_cells
from g1jax import recipes
from g1jax import update as update_lib
from g1jax.models import config as model_config
from g1jax.trainer import Trainer


def perception_texts(env, states) -> list[str]:
    host = jax.device_get(states[0])
    count = jax.tree.leaves(host)[0].shape[0]
    return [
        "<perception>\n" + env.describe(jax.tree.map(lambda x, i=i: x[i], host)) + "\n</perception>"
        for i in range(count)
    ]


def cell_starts(text: str) -> list[int]:
    """Character offsets of the first character of each cell value in a perception text."""
    head = "<perception>\n"
    starts, offset = [], len(head)
    for line in text[len(head) :].split("\n")[:4]:
        for part in line.split("|"):
            starts.append(offset + len(part) - len(part.lstrip()))
            offset += len(part) + 1
    return starts[:16]


def build(args, blind: bool) -> Trainer:
    config = recipes.config(
        "g1",
        run_dir=f"{args.run_dir}/{'blind' if blind else 'see'}",
        sft_steps=args.steps,
        steps=1,
        sft_learning_rate=args.lr,
        model=args.model,
        eval_states=0,
        checkpoint_every=0,
        sample_every=0,
        seed=args.seed,
        freeze_vision=args.freeze_vision,
        game_options={"2048": {"instructions": "short" if args.short_prompt else "g1"}},
    )
    return Trainer(config)


def probe_vision(trainer: Trainer, batches: int = 32) -> dict[str, float]:
    """Least-squares probe accuracy of merged image token 0 -> the top-left cell's value, at initialisation."""
    model = nnx.merge(trainer.graphdef, trainer.state.params, trainer.frozen)
    env = trainer.rollout.games.games[0]
    features, labels = [], []
    for rep in range(batches):
        states, _, pixels = trainer.rollout.start(jax.random.key(20_000 + rep))
        texts = perception_texts(env, states)
        f = np.asarray(model.encode_images(pixels, trainer.rollout.prompts.image_grids))
        features.append(f.reshape(len(texts), -1, f.shape[-1])[:, 0])  # merged token 0: the top-left cell
        labels += [board_cells(t[len("<perception>\n") :])[0][0] for t in texts]
    per_image = np.concatenate(features)
    values = sorted(set(labels))
    y = np.array([values.index(v) for v in labels])
    x = np.c_[per_image, np.ones(len(y))]
    fit, test = slice(0, len(y) * 3 // 4), slice(len(y) * 3 // 4, len(y))
    weights = np.linalg.lstsq(x[fit], np.eye(len(values))[y[fit]], rcond=1e-6)[0]
    return dict(
        probe_accuracy=float((np.argmax(x[test] @ weights, 1) == y[test]).mean()),
        majority_accuracy=float((y[test] == np.bincount(y[fit]).argmax()).mean()),
        states=len(y),
    )


def cell_nll(trainer: Trainer, blind: bool, batches: int = 4) -> list[float]:
    """Mean NLL of each cell's first token over fresh states (keys disjoint from training)."""
    model = nnx.merge(trainer.graphdef, trainer.state.params, trainer.frozen)
    env = trainer.rollout.games.games[0]
    per_cell = [[] for _ in range(16)]
    for rep in range(batches):
        states, _, pixels = trainer.rollout.start(jax.random.key(10_000 + rep))
        texts = perception_texts(env, states)
        completion, mask = trainer.teacher_data.tokens(texts)
        zeros = jnp.zeros(completion.shape, jnp.float32)
        batch = trainer._batch(jnp.zeros_like(pixels) if blind else pixels, completion, mask, zeros, zeros[:, 0])
        logp, _ = update_lib.completion_logprobs(
            model, batch, image_grids=trainer.rollout.prompts.image_grids, group_size=1, temperature=1.0
        )
        logp = np.asarray(logp)
        for i, text in enumerate(texts):
            for cell, start in enumerate(cell_starts(text)):
                per_cell[cell].append(-float(logp[i, len(trainer.tokenizer.encode(text[:start]))]))
    return [float(np.mean(v)) for v in per_cell]


def train_arm(args, blind: bool) -> dict:
    trainer = build(args, blind)
    env = trainer.rollout.games.games[0]
    trainer.teacher_data.answers = lambda key, states: (perception_texts(env, states), None)
    if blind:
        batch_of = trainer._batch
        trainer._batch = lambda pixels, *rest: batch_of(jnp.zeros_like(pixels), *rest)
    curve, started = [], time.perf_counter()
    for step in range(args.steps):
        loss = trainer.sft_step(step)["sft_loss"]
        if (step + 1) % args.every == 0:
            nll = cell_nll(trainer, blind)
            curve.append(dict(step=step + 1, sft_loss=loss, cell_nll=nll, mean=float(np.mean(nll))))
            cells = " ".join(f"{v:.2f}" for v in nll)
            print(
                f"{'blind' if blind else 'see':>5} step {step + 1:>4}  loss {loss:.3f}  cell NLL mean "
                f"{np.mean(nll):.3f}  cells {cells}  ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    return dict(curve=curve, probe=probe_vision(trainer) if not blind else None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--short-prompt", action="store_true", help=f"2048's prompt replaced by {SHORT_PROMPT!r}")
    parser.add_argument("--rope-theta", type=float, default=None, help="the text model's RoPE base (preset's if unset)")
    parser.add_argument("--freeze-vision", action="store_true", help="train the decoder only (the vision tower stays)")
    parser.add_argument("--arms", default="see,blind")
    parser.add_argument("--run-dir", default="/tmp/perception_probe")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.rope_theta is not None:
        preset = model_config.PRESETS[args.model]
        model_config.PRESETS[args.model] = lambda: (
            lambda c: c.replace(text=dataclasses.replace(c.text, rope_theta=args.rope_theta))
        )(preset())
    result = dict(args=vars(args))
    # the probe reads the vision tower at initialisation, before either arm trains
    result["probe_at_init"] = probe_vision(build(args, blind=False))
    print(f"vision probe at init: {result['probe_at_init']}", flush=True)
    for arm in args.arms.split(","):
        result[arm] = train_arm(args, blind=arm == "blind")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
