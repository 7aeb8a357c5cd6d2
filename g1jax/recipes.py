"""The training recipes: named, complete settings of a run (TrainConfig fields as plain data), the one
registry that the command line's `--recipe`, the notebooks and the tests read.

    config = recipes.config("g1", steps=10, grpo={"kl_coef": 0.01})   # a recipe with some fields changed

A recipe names every setting that makes it what it is; the fields it leaves out take TrainConfig's defaults.
"""

from __future__ import annotations

import copy
from typing import Any

from g1jax.config import TrainConfig
from g1jax.models.config import ConfigError

# ------------------------------------------------------------------------------ the GRPO losses
# G1 (arXiv 2505.13426), trained with its fork of EasyR1: 5 answers per state, symmetric clip, k3 KL as a
# loss term with coefficient 0.01, global token mean.
G1_LOSS = dict(
    group_size=5,
    advantage="grpo",
    clip_low=0.2,
    clip_high=0.2,
    dual_clip=None,
    kl_coef=0.01,
    kl_kind="k3",
    loss_agg="token-mean",
    tis_cap=None,
)
# DAPO's loss: clip-higher 0.28, no KL, token mean (its dynamic sampling and overlong shaping would live
# in the rollout; they are not implemented).
# Two mini-batches per rollout (two optimizer steps), so that the second step's ratio departs from 1 and
# clip-higher acts, as in DAPO's own several mini-batches per rollout.
DAPO_LOSS = dict(clip_low=0.2, clip_high=0.28, kl_coef=0.0, loss_agg="token-mean", ppo_minibatches=2)
# Dr. GRPO's loss: advantages without the std division, no KL, a constant length normaliser.
DRGRPO_LOSS = dict(advantage="drgrpo", kl_coef=0.0, loss_agg="sequence-mean-token-sum-norm")

# ------------------------------------------------------------------------------ runs on a CPU
# Small settings for a 2-CPU machine: a tiny random-init model on 2048 at a small frame size, the strict
# format check (G1's lenient one pays a tag soup: BENCHMARKS.md, "G1 in miniature"), and a KL term to the
# policy entering RL, without which RL dissolves the unrewarded <perception> block in a few steps.
# max_new_tokens 144: the greedy teacher's full G1 answers on 2048 reach ~130 tokens with the stop token.
CPU_SMALL = dict(
    model="tiny",
    games=("2048",),
    image_size=(140, 112),
    states_per_step=16,
    grpo=dict(group_size=4, kl_coef=0.05),
    max_new_tokens=144,
    learning_rate=3e-4,
    checkpoint_every=20,
    sample_every=20,
    eval_states=256,
    strict_format=True,
)
# G1 in miniature: a cold start on an imperfect programmatic teacher, then GRPO, evaluated on held-out
# start states before and after RL (BENCHMARKS.md, "G1 in miniature"). What it takes for a 0.31M-parameter
# model trained from scratch to play from the picture:
# - the vision tower frozen at its random init: its features already carry the cells, and trained with the
#   decoder it collapses to a constant ("Why the tiny model does not see");
# - 2048's short prompt (20 tokens): a model trained from scratch cannot read G1's, whose ~370 tokens only
#   dilute the 20 image tokens;
# - 2048's `neighbours` teacher: its <think> is a reasoning a 2-layer decoder can compute from what it
#   reads (the board one token per cell, a flag per tile for an equal tile right beside it, the verdict;
#   docs/teachers.md); the greedy teacher's merges and points it cannot, and the `pairs` teacher's flags
#   across gaps it learns more slowly;
# - 3,000 cold-start steps of 8 states at 2e-3: the decoder first learns to fetch the cells (a plateau
#   of ~500 steps), then the flags; epsilon 0.5 leaves half the teacher's moves random, which RL removes.
G1_SMALL = dict(
    CPU_SMALL,
    freeze_vision=True,
    game_options={"2048": {"instructions": "short"}},
    states_per_step=8,
    max_new_tokens=176,  # the teacher's answers: 140-169 tokens with the stop token (10% above 160)
    sft_steps=3000,
    sft_learning_rate=2e-3,
    teacher={"2048": "neighbours"},
    teacher_epsilon=0.5,
    steps=180,  # 60 RL steps learned in 2 seeds of 5, 180 in 4 of 5 (BENCHMARKS.md); 9.3 min in all, quiet
    run_dir="runs/default",
)
# G0: the same RL budget without the cold start.
G0_SMALL = dict(G1_SMALL, sft_steps=0, run_dir="runs/g0")
# Multi-turn agent RL (issue #23) after G1's cold start: 4 start states x 4 trajectories of 4 turns, each
# turn's prompt holding the previous answer (history 1, as short windows do better: docs/multiturn.md),
# GiGPO's credit with its published settings (gamma 0.95, omega 1, mean_norm = drgrpo). Three seeds did not
# learn (BENCHMARKS.md, "Does the multiturn recipe learn?"): this cold start does not read the board.
MULTITURN_SMALL = dict(
    CPU_SMALL,  # the cold start the three seeds of BENCHMARKS.md ran with: 500 steps on the greedy teacher
    sft_steps=500,
    sft_learning_rate=2e-3,
    teacher={"2048": "greedy"},
    teacher_epsilon=0.5,
    states_per_step=4,
    steps=20,
    eval_states=32,
    multiturn=dict(max_turns=4, history=1, credit="gigpo", estimator="drgrpo", gamma=0.95, step_weight=1.0),
    run_dir="runs/multiturn",
)
# The same on the two episode games, where success means winning (info["solved"]), not just no illegal
# move: one cold start on the game's own optimal teacher (bfs / optimal; G1's epsilon 0.5 keeps it
# imperfect), then RL. Small boards drawn one image token per cell (28-px cells), so the tiny model's
# frames stay small: Sokoban in the anchors' 6x6 one-box rooms (88% of them solve in at most 5 moves),
# FrozenLake on random 3x3 maps (a shortest path is 4 moves, 2 to spare). max_new_tokens covers the
# teachers' longest answers (147 and 92 tokens with the stop token). Format and perception are per-turn
# penalties (text_reward "penalty"): as G1's per-turn bonuses they pay for every extra turn, more than
# winning does (FrozenLake's goal is worth 1), and RL learned to stop winning (docs/multiturn.md).
MULTITURN_SOKOBAN = dict(
    MULTITURN_SMALL,
    games=("sokoban",),
    game_options={"sokoban": {"dim_room": [6, 6]}},  # a list: config.json keeps it one
    image_size=(168, 168),
    teacher=None,
    max_new_tokens=160,
    multiturn=dict(MULTITURN_SMALL["multiturn"], max_turns=6, text_reward="penalty"),
    run_dir="runs/multiturn-sokoban",
)
MULTITURN_FROZENLAKE = dict(
    MULTITURN_SMALL,
    games=("frozenlake",),
    game_options={"frozenlake": {"board_size": 3}},
    image_size=(84, 84),
    teacher=None,
    max_new_tokens=112,
    multiturn=dict(MULTITURN_SMALL["multiturn"], max_turns=6, text_reward="penalty"),
    run_dir="runs/multiturn-frozenlake",
)

# ------------------------------------------------------------------------------ the paper's, for real checkpoints
# G1's RL recipe (vlm-gym-spec §9; docs/rl.md): 128 states x 5 answers, lr 1e-6, G1's loss, temperature 1,
# one update per rollout. Meant for Qwen2.5-VL-3B/7B on accelerators.
PAPER_RL = dict(
    states_per_step=128,
    grpo=G1_LOSS,
    learning_rate=1e-6,
    temperature=1.0,
    weight_decay=0.01,
    grad_clip=1.0,
    b1=0.9,
    b2=0.999,
    schedule="constant",
    warmup_steps=0,
    max_new_tokens=2048,
    # 16 micro-batches of 8 states: one state per device per micro-batch on 8 chips, which is
    # what fits 80 GB at 3B and 7B (BENCHMARKS.md, learner memory)
    micro_batch_states=8,
)
# The cold start's length and step size are not published (docs/rl.md); these are ours.
G1_PAPER = dict(
    PAPER_RL,
    sft_steps=200,
    sft_learning_rate=2e-5,
    teacher=None,
    teacher_epsilon=0.0,
    steps=400,
    eval_states=128,
    run_dir="runs/g1",
)
G0_PAPER = dict(PAPER_RL, steps=400, eval_states=128, run_dir="runs/g0")

RECIPES: dict[str, dict[str, Any]] = {
    "default": G1_SMALL,
    "g1": G1_SMALL,
    "g0": G0_SMALL,
    "g0-dapo": dict(G0_SMALL, grpo=dict(G0_SMALL["grpo"], **DAPO_LOSS), run_dir="runs/g0-dapo"),
    "g0-drgrpo": dict(G0_SMALL, grpo=dict(G0_SMALL["grpo"], **DRGRPO_LOSS), run_dir="runs/g0-drgrpo"),
    "multiturn": MULTITURN_SMALL,
    "multiturn-sokoban": MULTITURN_SOKOBAN,
    "multiturn-frozenlake": MULTITURN_FROZENLAKE,
    "g1-paper": G1_PAPER,
    "g0-paper": G0_PAPER,
}


def recipe(name: str) -> dict[str, Any]:
    """A copy of recipe `name`'s settings, to change freely."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return copy.deepcopy(RECIPES[name])


def config(name: str, **changes) -> TrainConfig:
    """Recipe `name` as a TrainConfig with `changes` (a `grpo` mapping changes only the GRPO fields it names)."""
    return TrainConfig.from_dict(recipe(name)).replace(**changes)
