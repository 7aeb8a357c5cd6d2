"""Closed-loop evaluation as in the G1 paper (its Figure 1); the protocol and its sources: docs/eval.md.

N boards are played for `steps` decisions each: the policy sees the board (a frame, no history),
answers, the answer is parsed to an action, the game steps. A run's score is the game's summed
reward counted the way the paper counts it (2048: the merge score; the coordinate games: the
number of successful moves), reported as avg@N with its standard error.

    protocol = PROTOCOLS["2048"]
    env = protocol.make_env()
    rows = evaluate(protocol, env, [make_policy("random", env, protocol)], runs=10, steps=100,
                    key=jax.random.key(0))
    rows[0].mean, rows[0].se

Policies share one small protocol, `act(key, states, frames) -> (actions [N], texts)`.
`DevicePolicy`s (random, teachers) also expose their choice as a pure function of (key, state);
the evaluator then runs their whole loop as one jitted `lax.scan`, all of a game's device
policies in ONE compiled program (a `lax.switch` on the row), since compiling the game's step is
what costs time on a CPU. Other policies (a model) are driven by a host loop that calls the same
jitted step function once per decision.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import textwrap
import time
import warnings
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import envs
from envs.grammar import decode_pair, encode_pair

# The paper's Figure 1 (exact numbers), rows in the figure's bar order.
PAPER_ROWS = ("G1 (7B)", "Claude-3.7-Sonnet-Thinking", "G0 (7B)", "o1", "Qwen2.5-VL-72B", "GPT-4o", "Random")

# What G1's random baselines draw for a coordinate: 0..7 in every game (a hard-coded grid of 8).
ORIGINAL_RANDOM_COORDINATES = 8
DIRECTIONS = ("Up", "Right", "Down", "Left", "Still")


class EvalError(ValueError):
    """A bad evaluation request (game, policy, checkpoint...), raised before anything compiles."""


@dataclasses.dataclass(frozen=True)
class GameProtocol:
    """How the paper evaluates one game (docs/eval.md gives the source of every field).

    env_config: static env options for evaluation (the image size of the original's eval
    scripts); warmup_moves: random moves (uniform over all action ids, as G1 samples them) before
    the scored steps; runs: the paper's N (avg@N); score: "merge" (sum of merge points) or
    "success" (1 per successful move); test_time_fallback: 2048's test-time parser, where an
    unparsable answer or a number >= 4 plays a uniformly random move 0..3; original_base: the
    base of the original's coordinate code (6 in both Shisen-Sho games, 8 in Swap)."""

    game: str
    title: str
    env_config: tuple[tuple[str, Any], ...]
    warmup_moves: int
    runs: int
    score: str
    test_time_fallback: bool
    original_base: int | None
    paper: tuple[float, ...]  # one value per PAPER_ROWS entry

    def make_env(self, **overrides) -> envs.Env:
        return envs.make(self.game, **{**dict(self.env_config), **overrides})

    @property
    def paper_scores(self) -> dict[str, float]:
        return dict(zip(PAPER_ROWS, self.paper))


PROTOCOLS: dict[str, GameProtocol] = {
    p.game: p
    for p in (
        # 640x840 (W x H) frames, which Qwen2.5-VL's processor turns into 644x840: drawn at that size.
        GameProtocol("2048", "2048", (("image_size", (840, 644)),), 100, 10, "merge", True, None,
                     (1070, 892, 759, 539, 243, 620, 701)),
        # 640x640 frames -> 644x644 after the processor.
        GameProtocol("shisensho", "Shisen-Sho", (("preset", "base"), ("image_size", (644, 644))), 0, 10, "success",
                     False, 6, (17.5, 15.3, 12.8, 3.9, 2.6, 1.5, 0.4)),
        GameProtocol("shisensho_photo", "Shisen-Sho-Cifar10", (("image_size", (644, 644)),), 0, 10, "success",
                     False, 6, (14.1, 8.7, 8.0, 5.4, 0.8, 4.7, 0.4)),
        GameProtocol("swap", "Swap", (("image_size", (644, 644)),), 0, 100, "success", False, 8,
                     (78, 43, 5, 4, 6, 1, 1)),
    )
}
GAMES = tuple(PROTOCOLS)


def protocol_for(game: str) -> GameProtocol:
    if game not in PROTOCOLS:
        raise EvalError(f"unknown game {game!r}; evaluated games: {', '.join(GAMES)} (or 'all')")
    return PROTOCOLS[game]


def action_label(env: envs.Env, action: int) -> str:
    """A short human name of an action: a 2048 direction, or "(r1, c1) (r2, c2)"."""
    if env.name == "2048":
        return DIRECTIONS[action] if 0 <= action < len(DIRECTIONS) else str(action)
    if action == env.invalid_action:
        return "invalid"
    r1, c1, r2, c2 = decode_pair(action, env.board_size)
    return f"({r1}, {c1}) ({r2}, {c2})"


# ---------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------


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
    """G1's random baselines. 2048: a uniform move 0..3 (what its test-time parser falls back to),
    answered "<answer> k </answer>" like the original. Coordinate games: four coordinates drawn
    uniformly from 0..7 as the original scripts drew them (also on 6x6 boards), answered
    "<answer>(r1, c1) (r2, c2)</answer>"; the action is what our parser makes of that answer, so
    a coordinate off the board is an invalid move. `aliased=True` instead decodes the draw as the
    original's base-6/base-8 action code did, where a 6 or 7 on a 6x6 board wraps onto another
    cell (docs/eval.md#random: the paper's Random row matches the unaliased draw); in 2048, which
    has no coordinates, both are the same policy."""

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
        if self.protocol.original_base is None:  # 2048
            return jax.random.randint(key, (), 0, 4)
        coords = self.draw(key)
        on_board = (coords < self.env.board_size).all()
        return jnp.where(on_board, encode_pair(*coords, self.env.board_size), self.env.invalid_action)

    def answers(self, states, actions) -> list[str]:
        if self.protocol.original_base is None:
            return [f"<answer> {int(a)} </answer>" for a in actions]
        return [f"<answer>{action_label(self.env, int(a))}</answer>" for a in actions]


@dataclasses.dataclass(frozen=True)
class TeacherPolicy(DevicePolicy):
    """A programmatic teacher (g1jax.teachers) as an evaluated policy; `name` is the row's name
    (each game's default teacher shares the row "teacher")."""

    teacher: Any
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
        from g1jax import teachers

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
        from g1jax import teachers

        return TeacherPolicy(teachers.make_teacher(env, option or None), spec)
    if model is None:
        raise EvalError("policy 'model' needs a model (--model DIR)")
    return model


# ---------------------------------------------------------------------------------------
# A model as a policy
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model policy comes from, read from its JSON files only (no weights, no compile):
    kind "run" (a training run directory: config.json of TrainConfig fields + checkpoints/),
    "hf" (a Hugging Face directory: config.json + safetensors) or "preset" (a random-init preset
    such as "tiny", for smoke tests)."""

    path: str
    kind: str
    config: Any  # Qwen25VLConfig
    run_config: dict | None = None

    @property
    def train_image_size(self) -> tuple[int, int] | None:
        size = (self.run_config or {}).get("image_size")
        return None if size is None else tuple(int(v) for v in size)

    @property
    def detail(self) -> str:
        return os.path.basename(os.path.normpath(self.path)) if self.kind != "preset" else f"{self.path} (random init)"


def _checkpoint_steps(run_dir: str) -> list[int]:
    folder = os.path.join(run_dir, "checkpoints")
    return sorted(int(name) for name in os.listdir(folder) if name.isdigit()) if os.path.isdir(folder) else []


def resolve_model(path: str) -> ModelSource:
    """Identify --model without loading it: a run directory, a Hugging Face directory or a preset."""
    from g1jax.models.config import PRESETS, ConfigError, Qwen25VLConfig, preset

    if not os.path.isdir(path):
        if path.lower() in PRESETS:
            return ModelSource(path, "preset", preset(path))
        raise EvalError(f"--model {path}: no such directory (a training run directory or a Hugging Face directory)")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise EvalError(f"--model {path}: no config.json there, so neither a run directory nor a Hugging Face directory")
    with open(config_path) as f:
        values = json.load(f)
    try:
        if "vision_config" in values:
            if not any(name.endswith(".safetensors") for name in os.listdir(path)):
                raise EvalError(f"--model {path}: a Hugging Face config.json but no *.safetensors weights")
            return ModelSource(path, "hf", Qwen25VLConfig.from_json_file(config_path))
        if "model" in values and "games" in values:
            if not _checkpoint_steps(path):
                raise EvalError(f"--model {path}: a run directory without checkpoints (nothing in {path}/checkpoints)")
            base = values["model"]
            model_config = preset(base) if base.lower() in PRESETS else resolve_model(base).config
            return ModelSource(path, "run", model_config, values)
    except ConfigError as error:
        raise EvalError(f"--model {path}: {error}") from None
    raise EvalError(f"--model {path}: config.json is neither a run's config (model, games, ...) nor a "
                    "Hugging Face Qwen2.5-VL config (vision_config, ...)")


def check_model_fits(source: ModelSource, image_size: tuple[int, int], max_new_tokens: int, game: str) -> None:
    """The frames a game's evaluation draws must fit the checkpoint: its patch grid, the frame
    size it was trained on (a run) and its context length."""
    from g1jax.constants import FACTOR

    vision, text = source.config.vision, source.config.text
    factor = vision.patch_size * vision.spatial_merge_size
    height, width = image_size
    if factor != FACTOR:
        raise EvalError(f"--model {source.path}: {vision.patch_size}-px patches merged {vision.spatial_merge_size}x"
                        f"{vision.spatial_merge_size} make a {factor}-px grid; g1jax's image pipeline is Qwen2.5-VL's {FACTOR}-px one")
    trained = source.train_image_size
    if trained is not None and trained != (height, width):
        raise EvalError(f"--model {source.path} was trained on {trained[0]}x{trained[1]} frames but {game} is "
                        f"evaluated on {height}x{width}; pass --image-size {trained[0]} {trained[1]} to evaluate at "
                        "the training size")
    image_tokens = (height // FACTOR) * (width // FACTOR)
    if image_tokens + max_new_tokens > text.max_position_embeddings:
        raise EvalError(f"--model {source.path}: a {height}x{width} frame ({image_tokens} image tokens) plus "
                        f"{max_new_tokens} new tokens exceeds its context of {text.max_position_embeddings} positions")


def load_model(source: ModelSource):
    """(model, tokenizer) for a resolved source; a run's newest readable checkpoint is restored
    onto the model its config describes."""
    from flax import nnx

    from g1jax.checkpoint import Checkpointer, abstract_like
    from g1jax.models.qwen25vl import trainable_filter
    from g1jax.config import TrainConfig
    from g1jax.policy import load_policy

    if source.kind != "run":
        return load_policy(TrainConfig(model=source.path))
    config = TrainConfig.from_dict(source.run_config)
    model, tokenizer = load_policy(config)
    graphdef, params, frozen = nnx.split(model, trainable_filter(config.freeze_vision), ...)
    checkpoints = Checkpointer(os.path.join(source.path, "checkpoints"))
    found = checkpoints.restore_latest({"params": abstract_like(params)})
    checkpoints.close()
    if found is None:
        raise EvalError(f"--model {source.path}: no readable checkpoint in {source.path}/checkpoints")
    return nnx.merge(graphdef, found[1]["params"], frozen), tokenizer


class ModelPolicy:
    """A Qwen2.5-VL policy: each decision, the N frames go through ONE sampling call (prefill the
    N prompts, decode to a stop token or max_new_tokens), then every answer is parsed by the game."""

    uses_frames = True

    def __init__(self, model, tokenizer, env: envs.Env, runs: int, *, temperature: float, max_new_tokens: int,
                 name: str = "model", detail: str = ""):
        from flax import nnx

        from g1jax.constants import PATCH_DIM
        from g1jax.image_processing import preprocess
        from g1jax.rl.rollout import build_prompts
        from g1jax.sampling import SamplingConfig

        self.env, self.runs, self.tokenizer, self.name, self.detail = env, runs, tokenizer, name, detail
        try:
            self.sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                           stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id)
            self.prompts = build_prompts(envs.MultiGame((env,), (runs,)), tokenizer, model.config)
        except ValueError as error:
            raise EvalError(f"model policy on {env.name}: {error}") from None
        context = model.config.text.max_position_embeddings
        if self.prompts.length + max_new_tokens > context:
            raise EvalError(f"model policy on {env.name}: the {self.prompts.length}-token prompt plus {max_new_tokens} "
                            f"new tokens exceeds the model's context of {context} positions")
        self.graphdef, self.params = nnx.split(model)
        self._patches = jax.jit(lambda frames: jax.vmap(preprocess)(frames).reshape(-1, PATCH_DIM))

    def act(self, key, states, frames):
        from g1jax.chat import decode_completions
        from g1jax.sampling import sample

        p = self.prompts
        samples = sample(self.graphdef, self.params, jnp.asarray(p.input_ids), jnp.asarray(p.positions),
                         jnp.asarray(p.attention_mask), self._patches(frames), jax.random.split(key, self.runs),
                         image_grids=p.image_grids, group_size=1, config=self.sampling)
        texts = decode_completions(self.tokenizer, np.asarray(jax.device_get(samples.tokens)))
        return np.asarray([self.env.parse(t) for t in texts], np.int32), texts


# ---------------------------------------------------------------------------------------
# The closed loop
# ---------------------------------------------------------------------------------------


def start_states(env: envs.Env, protocol: GameProtocol, key, runs: int):
    """`runs` fresh boards, each after the protocol's random warm-up (G1 draws uniformly over
    all action ids, 2048's "still" included)."""
    if protocol.warmup_moves == 0:  # no warm-up scan to compile
        return jax.vmap(env.reset)(jax.random.split(key, runs))
    return envs.warmup_states(env, key, runs, num_moves=protocol.warmup_moves, policy="uniform")


def closed_loop_step(env: envs.Env, protocol: GameProtocol, key, states, actions):
    """One decision for the whole batch -> (next states, actions as played, per-step scores [N]).

    2048's test-time parser replaces an unparsable answer (our parser's "still") by a uniform
    move 0..3. A board whose game ended at the previous decision is reset now and this decision
    is wasted (score 0, action ignored), as in gymnasium's vector env (next-step auto-reset),
    which the original's evaluation ran on."""
    fallback_key, step_key, reset_key = jax.random.split(key, 3)
    runs = actions.shape[0]
    actions = jnp.asarray(actions, jnp.int32)
    if protocol.test_time_fallback:
        moves = jax.random.randint(fallback_key, (runs,), 0, 4)
        actions = jnp.where((actions >= 0) & (actions < 4), actions, moves)
    stepped, _, _, info = jax.vmap(env.step)(jax.random.split(step_key, runs), states, actions)
    raw = info["raw_reward"]
    score = raw if protocol.score == "merge" else (raw > 0).astype(jnp.float32)
    finished = states.done
    score = jnp.where(finished, 0.0, score).astype(jnp.float32)

    def reset_finished(stepped):
        fresh = jax.vmap(env.reset)(jax.random.split(reset_key, runs))
        pick = lambda a, b: jnp.where(finished.reshape(finished.shape + (1,) * (a.ndim - 1)), a, b)
        return jax.tree.map(pick, fresh, stepped)

    # a batch-level cond: most decisions end no game, and then no reset is computed at all
    next_states = jax.lax.cond(finished.any(), reset_finished, lambda s: s, stepped)
    return next_states, actions, score


@dataclasses.dataclass
class Rollout:
    """One policy on one game. scores, actions: [runs, steps] (per-step score as the paper counts
    it; actions as played); states: the states the policy saw, a pytree of host arrays
    [steps, runs, ...]; texts[run][step]: the answers (None when not kept); seconds: the row's
    wall time without compile_seconds (the device program, compiled once per game for all device
    rows, is counted on the first of them; the host loop compiles inside its first steps)."""

    game: str
    policy: str
    scores: np.ndarray
    actions: np.ndarray
    states: Any
    texts: list[list[str]] | None
    seconds: float
    compile_seconds: float = 0.0
    detail: str = ""

    @property
    def runs(self) -> int:
        return self.scores.shape[0]

    @property
    def steps(self) -> int:
        return self.scores.shape[1]

    @property
    def totals(self) -> np.ndarray:
        return self.scores.sum(axis=1)

    @property
    def mean(self) -> float:
        return float(self.totals.mean())

    @property
    def se(self) -> float | None:
        """Standard error of avg@N (sample standard deviation / sqrt(N)); None for one run."""
        if self.runs < 2:
            return None
        return float(self.totals.std(ddof=1) / math.sqrt(self.runs))

    def states_at(self, step: int):
        return jax.tree.map(lambda x: x[step], self.states)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False)


def evaluate(protocol: GameProtocol, env: envs.Env, policies: Sequence[Policy], *, runs: int, steps: int, key,
             progress: bool = True, keep_texts: bool = True, on_device: bool = True) -> list[Rollout]:
    """Play `runs` boards for `steps` decisions with each policy; one Rollout per policy, in order.

    Every policy meets the same start boards and the same game randomness (the keys depend only
    on `key`), so rows differ only by their choices. The device policies' loops are one jitted
    program (compiled once per game, policies and shape; later calls reuse it); on_device=False
    drives them from the host instead, one jitted step per decision with the same keys, hence
    the same results."""
    if runs < 1 or steps < 1:
        raise EvalError(f"runs and steps must be >= 1, got runs={runs}, steps={steps}")
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw uint32 key (jax.random.PRNGKey)
    start_key, loop_key = jax.random.split(key)
    step_keys = jax.random.split(loop_key, steps)
    device = tuple(p for p in policies if on_device and isinstance(p, DevicePolicy))
    rollouts = {}
    if device:
        loop, shared = _compiled_device_loop(env, protocol, device, runs, steps, progress)
        compile_seconds = shared.pop("compile_seconds", 0.0)  # paid by the first call only
        for index, policy in enumerate(device):
            bar = shared["bar"] = _progress(steps, f"{protocol.game} {policy.name}", progress)
            begin = time.perf_counter()
            seen, chosen, played, scores = jax.device_get(loop(jnp.int32(index), start_key, step_keys))
            seconds = time.perf_counter() - begin
            bar.close()
            texts = None
            if keep_texts:
                per_step = [policy.answers(jax.tree.map(lambda x: x[t], seen), chosen[t]) for t in range(steps)]
                texts = [list(row) for row in zip(*per_step)]
            rollouts[id(policy)] = Rollout(protocol.game, policy.name, scores.T, played.T, seen, texts, seconds,
                                           compile_seconds if index == 0 else 0.0, policy.detail)
    for policy in policies:
        if id(policy) not in rollouts:
            rollouts[id(policy)] = _host_loop(env, protocol, policy, runs, start_key, step_keys, progress, keep_texts)
    return [rollouts[id(p)] for p in policies]


@functools.lru_cache(maxsize=32)
def _compiled_device_loop(env, protocol, policies: tuple[DevicePolicy, ...], runs: int, steps: int, progress: bool):
    """Every device policy's whole rollout as one compiled function of (policy index, start key,
    step keys): start states, then a scan of choose -> step. It returns (states seen, actions
    chosen, actions played, scores), each [steps, runs, ...]. In `shared`: "bar", the progress
    bar the scan advances, and "compile_seconds" until the first caller takes it."""
    shared = {"bar": None}

    def choose(index, key, states):
        if len(policies) == 1:
            return policies[0].choose_batch(key, states)
        return jax.lax.switch(index, [p.choose_batch for p in policies], key, states)

    def rollout(index, start_key, step_keys):
        def one_step(states, step_key):
            policy_key, env_key = jax.random.split(step_key)
            chosen = choose(index, policy_key, states)
            next_states, played, score = closed_loop_step(env, protocol, env_key, states, chosen)
            if progress:
                jax.debug.callback(lambda: shared["bar"].update(1))
            return next_states, (states, chosen, played, score)

        first = start_states(env, protocol, start_key, runs)
        return jax.lax.scan(one_step, first, step_keys)[1]

    begin = time.perf_counter()
    key = jax.random.key(0)
    compiled = jax.jit(rollout).lower(jnp.int32(0), key, jax.random.split(key, steps)).compile()
    shared["compile_seconds"] = time.perf_counter() - begin
    return compiled, shared


@functools.lru_cache(maxsize=32)
def loop_functions(env: envs.Env, protocol: GameProtocol, runs: int):
    """Jitted (start states, one decision, frames) for the host loop; cached per game."""
    start = jax.jit(lambda k: start_states(env, protocol, k, runs))
    step = jax.jit(functools.partial(closed_loop_step, env, protocol))
    render = jax.jit(functools.partial(envs.render_batch, env))
    return start, step, render


def _host_loop(env, protocol, policy: Policy, runs, start_key, step_keys, progress, keep_texts) -> Rollout:
    """The same loop driven from the host: one `policy.act` and one jitted step per decision."""
    start, step, render = loop_functions(env, protocol, runs)
    states = start(start_key)
    seen, played, scores, texts = [], [], [], []
    bar = _progress(len(step_keys), f"{protocol.game} {policy.name}", progress)
    begin = time.perf_counter()
    for step_key in step_keys:
        policy_key, env_key = jax.random.split(step_key)
        frames = render(states) if policy.uses_frames else None
        actions, answers = policy.act(policy_key, states, frames)
        actions = np.asarray(actions)
        if actions.shape != (runs,) or len(answers) != runs:
            raise EvalError(f"policy {policy.name!r} returned {actions.shape} actions and {len(answers)} answers "
                            f"for {runs} boards")
        seen.append(jax.device_get(states))
        states, moves, score = step(env_key, states, jnp.asarray(actions, jnp.int32))
        played.append(np.asarray(moves))
        scores.append(np.asarray(score))
        texts.append(list(answers))
        bar.update(1)
    seconds = time.perf_counter() - begin
    bar.close()
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *seen)
    runs_texts = [list(row) for row in zip(*texts)] if keep_texts else None
    return Rollout(protocol.game, policy.name, np.stack(scores).T, np.stack(played).T, stacked, runs_texts, seconds,
                   detail=getattr(policy, "detail", ""))


# ---------------------------------------------------------------------------------------
# The Figure-1 table
# ---------------------------------------------------------------------------------------


def figure1_table(rollouts: Sequence[Rollout]) -> dict:
    """Games as columns, policies as rows (ours, then the paper's Figure 1), as JSON-ready data."""
    games = [g for g in GAMES if any(r.game == g for r in rollouts)]
    ours: dict[str, dict] = {}
    for r in rollouts:
        ours.setdefault(r.policy, {})[r.game] = {
            "avg": r.mean, "se": r.se, "runs": r.runs, "steps": r.steps, "detail": r.detail,
            "seconds": round(r.seconds, 3), "compile_seconds": round(r.compile_seconds, 3)}
    return {
        "games": [{"game": g, "title": PROTOCOLS[g].title, "paper_runs": PROTOCOLS[g].runs} for g in games],
        "rows": [{"policy": name, "source": "ours", "scores": scores} for name, scores in ours.items()],
        "paper": [{"policy": name, "source": "paper (Figure 1)",
                   "scores": {g: PROTOCOLS[g].paper_scores[name] for g in games}} for name in PAPER_ROWS],
    }


def _cell(score: dict | None) -> str:
    if score is None:
        return "—"
    se = "" if score["se"] is None else f" ± {score['se']:.3g}"
    detail = f", {score['detail']}" if score.get("detail") else ""
    return f"{score['avg']:.4g}{se} (N={score['runs']}{detail})"


def table_markdown(table: dict) -> str:
    games = table["games"]
    header = "| policy | source | " + " | ".join(f"{g['title']} (paper avg@{g['paper_runs']})" for g in games) + " |"
    lines = [header, "|" + "---|" * (len(games) + 2)]
    for row in table["rows"]:
        cells = [_cell(row["scores"].get(g["game"])) for g in games]
        lines.append(f"| {row['policy']} | ours | " + " | ".join(cells) + " |")
    for row in table["paper"]:
        lines.append(f"| {row['policy']} | paper | " + " | ".join(f"{row['scores'][g['game']]:g}" for g in games) + " |")
    steps = sorted({s["steps"] for row in table["rows"] for s in row["scores"].values()})
    note = (f"\nOurs: mean ± standard error over N runs of {', '.join(map(str, steps))} decisions each "
            "(2048: merge points; the other games: successful moves). Protocol: docs/eval.md.\n")
    return "\n".join(lines) + "\n" + note


# ---------------------------------------------------------------------------------------
# Outputs: table, plots, videos, answers
# ---------------------------------------------------------------------------------------


def write_table(rollouts: Sequence[Rollout], json_path: str | None = None, markdown_path: str | None = None) -> dict:
    table = figure1_table(rollouts)
    for path, text in ((json_path, json.dumps(table, indent=2) + "\n"), (markdown_path, None)):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(text if text is not None else table_markdown(table))
    return table


def plot_cumulative(rollouts: Sequence[Rollout], path: str) -> None:
    """One game's cumulative score per step: every run thin, each policy's mean thick."""
    from matplotlib.figure import Figure  # no pyplot: the session's backend (a notebook's inline one) stays

    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.subplots()
    for index, r in enumerate(rollouts):
        color = f"C{index}"
        curves = np.cumsum(r.scores, axis=1)
        steps = np.arange(1, r.steps + 1)
        for curve in curves:
            ax.plot(steps, curve, color=color, alpha=0.2, linewidth=0.8)
        se = "" if r.se is None else f" ± {r.se:.3g}"
        ax.plot(steps, curves.mean(axis=0), color=color, linewidth=2.2, label=f"{r.policy}: {r.mean:.4g}{se} (N={r.runs})")
    game = rollouts[0].game
    ax.set_title(f"{PROTOCOLS[game].title}: cumulative score per run (paper Random: {PROTOCOLS[game].paper_scores['Random']:g})")
    ax.set_xlabel("decision")
    ax.set_ylabel("merge points" if PROTOCOLS[game].score == "merge" else "successful moves")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def write_answers(rollouts: Sequence[Rollout], env_by_game: dict[str, envs.Env], path: str) -> None:
    """Every decision as one JSON line: game, policy, run, step, answer, action played, score."""
    with open(path, "w") as f:
        for r in rollouts:
            env = env_by_game[r.game]
            for run in range(r.runs):
                for step in range(r.steps):
                    action = int(r.actions[run, step])
                    record = {"game": r.game, "policy": r.policy, "run": run, "step": step,
                              "answer": None if r.texts is None else r.texts[run][step],
                              "action": action, "move": action_label(env, action),
                              "score": float(r.scores[run, step])}
                    f.write(json.dumps(record) + "\n")


CAPTION_LINES = 6
CAPTION_PX = 14


@functools.lru_cache(maxsize=1)
def _caption_font():
    from PIL import ImageFont

    return ImageFont.load_default(size=CAPTION_PX)  # loading it costs more than drawing a caption


def caption_frame(frame: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """The frame with a white strip below it holding `lines` of text (wrapped to the width; an
    over-long answer keeps its first lines, an ellipsis and its last line, where the answer is)."""
    from PIL import Image, ImageDraw

    height, width, _ = frame.shape
    font = _caption_font()
    chars = max(20, int(width / (0.6 * CAPTION_PX)))
    wrapped = [piece for line in lines for piece in (textwrap.wrap(line, chars) or [""])]
    if len(wrapped) > CAPTION_LINES:
        wrapped = wrapped[: CAPTION_LINES - 2] + ["…", wrapped[-1]]
    line_px = CAPTION_PX + 4
    strip = CAPTION_LINES * line_px + 8
    strip += strip % 2  # H.264 wants even sizes
    # Only the strip goes through PIL; the frame is copied in with numpy.
    text = Image.new("RGB", (width + width % 2, strip), "white")
    draw = ImageDraw.Draw(text)
    for i, line in enumerate(wrapped):
        draw.text((6, 4 + i * line_px), line, fill=(0, 0, 0), font=font)
    out = np.full((height + strip, width + width % 2, 3), 255, np.uint8)
    out[:height, :width] = frame
    out[height:] = np.asarray(text)
    return out


class _VideoWriter:
    """MP4 through imageio-ffmpeg when it is installed, else an animated GIF (Pillow)."""

    def __init__(self, path_without_suffix: str, fps: float):
        self.fps, self.frames = fps, []
        try:
            import imageio.v2 as imageio
            import imageio_ffmpeg  # noqa: F401  (the ffmpeg binary)

            self.path = path_without_suffix + ".mp4"
            # x264's fastest preset: a game's frames change little, so the files stay small, and encoding
            # at the default preset took most of an evaluation's time (BENCHMARKS.md, "Evaluation")
            self._writer = imageio.get_writer(self.path, fps=fps, codec="libx264", macro_block_size=1,
                                              ffmpeg_log_level="error", output_params=["-preset", "ultrafast"])
        except ImportError:
            self.path, self._writer = path_without_suffix + ".gif", None

    def append(self, frame: np.ndarray) -> None:
        if self._writer is not None:
            self._writer.append_data(frame)
        else:
            self.frames.append(frame)

    def close(self) -> str:
        if self._writer is not None:
            self._writer.close()
        else:
            from PIL import Image

            images = [Image.fromarray(f) for f in self.frames]
            images[0].save(self.path, save_all=True, append_images=images[1:], duration=int(1000 / self.fps), loop=0)
        return self.path


def write_videos(rollout: Rollout, env: envs.Env, directory: str, *, max_runs: int | None = None,
                 fps: float = 2.0) -> list[str]:
    """One video per run (the first `max_runs`): each frame the board the policy saw, with its
    answer, the move played and the score below it."""
    runs = rollout.runs if max_runs is None else min(max_runs, rollout.runs)
    if runs == 0:
        return []
    with warnings.catch_warnings():
        # ffmpeg runs as a fork+exec subprocess, which JAX's blanket fork warning cannot tell apart
        warnings.filterwarnings("ignore", message="os.fork\\(\\) was called")
        return _write_videos(rollout, env, directory, runs, fps)


def _write_videos(rollout: Rollout, env: envs.Env, directory: str, runs: int, fps: float) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    render = loop_functions(env, PROTOCOLS[rollout.game], rollout.runs)[2]
    safe = rollout.policy.replace(":", "-")
    writers = [_VideoWriter(os.path.join(directory, f"{rollout.game}_{safe}_run{run:03d}"), fps) for run in range(runs)]
    totals = np.cumsum(rollout.scores, axis=1)
    for step in range(rollout.steps):
        seen = jax.tree.map(lambda x: x[:runs], rollout.states_at(step))
        frames = np.asarray(render(seen))
        for run, writer in enumerate(writers):
            action = int(rollout.actions[run, step])
            status = (f"{rollout.policy} | step {step + 1}/{rollout.steps} | move {action_label(env, action)} | "
                      f"+{rollout.scores[run, step]:g} | total {totals[run, step]:g}")
            answer = "" if rollout.texts is None else " ".join(rollout.texts[run][step].split())
            writer.append(caption_frame(frames[run], [status, answer]))
    return [w.close() for w in writers]
