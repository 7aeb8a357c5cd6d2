"""Policies the evaluator drives: G1's random baselines, the programmatic teachers and a model.

Policies share one small protocol, `act(key, states, frames) -> (actions [N], texts)`.
`DevicePolicy`s (random, teachers) also expose their choice as a pure function of (key, state),
so the evaluator can run their whole loop on the device (g1jax.evaluation.closed_loop); a
`ModelPolicy` samples its answers from the frames, one sampling call per decision.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import envs
from envs.grammar import decode_pair, encode_pair
from g1jax import sampling, teachers
from g1jax.chat import decode_completions
from g1jax.constants import PATCH_DIM
from g1jax.evaluation.protocols import EvalError, GameProtocol
from g1jax.image_processing import preprocess
from g1jax.rl.rollout import build_prompts

# What G1's random baselines draw for a coordinate: 0..7 in every game (a hard-coded grid of 8).
ORIGINAL_RANDOM_COORDINATES = 8


class Policy(Protocol):
    """What the evaluator drives. `act` gets a batched state pytree [N] and, when `uses_frames`,
    the frames uint8 [N, H, W, 3] the policy sees; it returns int32 actions [N] (what its answers
    parse to) and the answer texts."""

    name: str
    uses_frames: bool

    def act(self, key, states, frames) -> tuple[np.ndarray, list[str]]: ...


class DevicePolicy:
    """A policy whose action choice is a pure, jittable function of (key, state), `choose`; its
    answers are written afterwards from the states and actions (`answers`, host). Subclasses are
    frozen dataclasses, so equal policies share one compiled loop (`evaluate` caches them)."""

    name = "device-policy"
    detail = ""  # shown beside the row's scores (a teacher's kind)
    uses_frames = False

    def choose(self, key, state) -> jax.Array:
        raise NotImplementedError

    def answers(self, states, actions) -> list[str]:
        raise NotImplementedError

    def choose_batch(self, key, states):
        keys = jax.random.split(key, jax.tree.leaves(states)[0].shape[0])
        return jax.vmap(self.choose)(keys, states).astype(jnp.int32)

    @functools.cached_property
    def _choose_batch_jit(self):
        return jax.jit(self.choose_batch)

    def act(self, key, states, frames=None):
        actions = np.asarray(self._choose_batch_jit(key, states))
        return actions, self.answers(jax.device_get(states), actions)


@dataclasses.dataclass(frozen=True)
class RandomPolicy(DevicePolicy):
    """G1's random baselines. 2048: a uniform move 0..3 (what its test-time parser falls back to);
    the multi-turn games outside G1 likewise, any action id but the invalid one: FrozenLake a
    uniform direction (gymnasium's `action_space.sample()`), Sokoban Up/Down/Left/Right.
    Coordinate games: four coordinates drawn uniformly from 0..7 as the original scripts drew them
    (also on 6x6 boards); the action is what our parser makes of the answer "(r1, c1) (r2, c2)", so
    a coordinate off the board is an invalid move. `aliased=True` instead decodes the draw as the
    original's base-6/base-8 action code did, where a 6 or 7 on a 6x6 board wraps onto another
    cell (docs/eval.md#random: the paper's Random row matches the unaliased draw); in 2048, which
    has no coordinates, both are the same policy. The answers are the actions' canonical answers
    (`teachers.answer_block`; an off-board draw answers "none", which plays the same invalid move)."""

    env: envs.Env
    protocol: GameProtocol
    aliased: bool = False

    @property
    def name(self) -> str:
        return "random:aliased" if self.aliased else "random"

    def draw(self, key):
        """The original's draw, decoded: int32 [4] (r1, c1, r2, c2) in the original's cell grid."""
        coords = jax.random.randint(key, (4,), 0, ORIGINAL_RANDOM_COORDINATES)
        if self.aliased:
            base = self.protocol.original_base
            coords = jnp.stack(decode_pair(encode_pair(*coords, base), base))
        return coords

    def choose(self, key, state):
        if self.protocol.original_base is None:  # a uniform move: any action id but the invalid one
            move = jax.random.randint(key, (), 0, self.env.num_actions - 1)
            return move + (move >= self.env.invalid_action)
        coords = self.draw(key)
        on_board = (coords < self.env.board_size).all()
        return jnp.where(on_board, encode_pair(*coords, self.env.board_size), self.env.invalid_action)

    def answers(self, states, actions) -> list[str]:
        return [teachers.answer_block(self.env, a) for a in actions]


@dataclasses.dataclass(frozen=True)
class TeacherPolicy(DevicePolicy):
    """A programmatic teacher (g1jax.teachers) as an evaluated policy; `name` is the row's name
    (each game's default teacher shares the row "teacher")."""

    teacher: teachers.Teacher
    name: str = "teacher"

    @property
    def detail(self) -> str:
        return self.teacher.kind

    def choose(self, key, state):
        return self.teacher.act(key, state)

    def answers(self, states, actions) -> list[str]:
        return self.teacher.answers(states, actions)


POLICY_NAMES = ("random", "random:aliased", "teacher", "teacher:KIND", "model")


def check_policy_spec(spec: str, games: Sequence[str]) -> None:
    """Reject an unknown policy name (or a teacher kind some requested game lacks) up front."""
    kind, _, option = spec.partition(":")
    if kind == "random" and option in ("", "aliased"):
        return
    if kind == "model" and not option:
        return
    if kind == "teacher":
        if not option:
            return
        lacking = [g for g in games if (g, option) not in teachers.TEACHERS]
        if lacking:
            choices = {g: sorted(k for game, k in teachers.TEACHERS if game == g) for g in lacking}
            listing = "; ".join(f"{g}: {', '.join(ks)}" for g, ks in choices.items())
            raise EvalError(f"no teacher {option!r} for {', '.join(lacking)} (teachers: {listing})")
        return
    raise EvalError(f"unknown policy {spec!r}; policies: {', '.join(POLICY_NAMES)}")


def make_policy(spec: str, env: envs.Env, protocol: GameProtocol, *, model: Policy | None = None) -> Policy:
    """A policy from its command-line name: "random", "random:aliased", "teacher" (the game's
    default teacher), "teacher:KIND", or "model" (then `model` is the ModelPolicy to use, built
    for this env)."""
    check_policy_spec(spec, [protocol.game])
    kind, _, option = spec.partition(":")
    if kind == "random":
        return RandomPolicy(env, protocol, aliased=option == "aliased")
    if kind == "teacher":
        return TeacherPolicy(teachers.make_teacher(env, option or None), spec)
    if model is None:
        raise EvalError("policy 'model' needs a model (--model DIR)")
    return model


class ModelPolicy:
    """A Qwen2.5-VL policy: each decision, the N frames go through ONE sampling call (prefill the
    N prompts, decode to a stop token or max_new_tokens), then every answer is parsed by the game."""

    uses_frames = True

    def __init__(
        self,
        model,
        tokenizer,
        env: envs.Env,
        runs: int,
        *,
        temperature: float,
        max_new_tokens: int,
        name: str = "model",
        detail: str = "",
    ):
        self.env, self.runs, self.tokenizer, self.name, self.detail = env, runs, tokenizer, name, detail
        try:
            self.sampling_config = sampling.SamplingConfig(
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                stop_ids=tokenizer.stop_ids,
                pad_id=tokenizer.pad_id,
            )
            self.prompts = build_prompts(envs.MultiGame((env,), (runs,)), tokenizer, model.config)
        except ValueError as error:
            raise EvalError(f"model policy on {env.name}: {error}") from None
        context = model.config.text.max_position_embeddings
        if self.prompts.length + max_new_tokens > context:
            raise EvalError(
                f"model policy on {env.name}: the {self.prompts.length}-token prompt plus {max_new_tokens} "
                f"new tokens exceeds the model's context of {context} positions"
            )
        self.graphdef, self.params = nnx.split(model)
        self._patches = jax.jit(lambda frames: jax.vmap(preprocess)(frames).reshape(-1, PATCH_DIM))

    def act(self, key, states, frames):
        p = self.prompts
        # sampling.sample looked up at call time: tests count the calls by patching the module
        samples = sampling.sample(
            self.graphdef,
            self.params,
            jnp.asarray(p.input_ids),
            jnp.asarray(p.positions),
            jnp.asarray(p.attention_mask),
            self._patches(frames),
            jax.random.split(key, self.runs),
            image_grids=p.image_grids,
            group_size=1,
            config=self.sampling_config,
        )
        texts = decode_completions(self.tokenizer, np.asarray(jax.device_get(samples.tokens)))
        return np.asarray([self.env.parse(t) for t in texts], np.int32), texts
