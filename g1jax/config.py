"""`TrainConfig`: every setting of a run as a value.

A config is checked field by field when it is made (types, ranges, names), each failure a one-line
`ConfigError`, and nothing else happens: no device, file or game is touched, so a saved `config.json`
reads back on any machine. What depends on the machine or needs things built (the mesh against the
devices, the model directory, the games' options, the teachers) is checked where a trainer is built
(`g1jax.trainer.check_buildable`), still before anything compiles.

The GRPO loss settings are one nested value, `TrainConfig.grpo` (`rl.grpo.GRPOConfig`, the type the loss
functions take): in a mapping or `config.json` they are `{"grpo": {"kl_coef": 0.01, ...}}`, on the command
line `--set grpo.kl_coef=0.01`; fields left out take `DEFAULT_GRPO`'s values.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping
from typing import Any

import envs
from g1jax.models.config import ConfigError
from g1jax.rl.credit import CREDIT_MODES, CreditConfig
from g1jax.rl.grpo import GRPOConfig
from g1jax.rl.rewards import TEXT_REWARDS, g1_weights
from g1jax.sampling import SamplingConfig
from g1jax.sharding import parse_mesh_shape

DTYPES = ("float32", "bfloat16")
SCHEDULES = ("constant", "cosine")
# A trainer's GRPO defaults: rl.grpo's, with 4 answers per state (a CPU-sized group; the G1 recipes say 5).
DEFAULT_GRPO = GRPOConfig(group_size=4)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultiTurnConfig:
    """Multi-turn episodes (g1jax/rl/episodes.py) and their credit (g1jax/rl/credit.py): grpo.group_size
    trajectories of up to max_turns turns from each start state, each turn's prompt holding the last
    `history` answers. text_reward: one of rl.rewards.TEXT_REWARDS. credit: one of rl.credit.CREDIT_MODES;
    estimator, gamma, step_weight as CreditConfig."""

    max_turns: int = 4
    history: int = 2
    history_frames: bool = False
    text_reward: str = "bonus"
    credit: str = "episode"
    estimator: str = "grpo"
    gamma: float = 0.95
    step_weight: float = 1.0

    def __post_init__(self):
        _check_int("multiturn.max_turns", self.max_turns, 1)
        _check_int("multiturn.history", self.history, 0)
        _check(
            isinstance(self.history_frames, bool),
            f"multiturn.history_frames must be true or false, got {self.history_frames!r}",
        )
        _check(
            self.text_reward in TEXT_REWARDS,
            f"multiturn.text_reward must be one of {list(TEXT_REWARDS)}, got {self.text_reward!r}",
        )
        _check(
            self.credit in CREDIT_MODES, f"multiturn.credit must be one of {list(CREDIT_MODES)}, got {self.credit!r}"
        )
        try:
            self.credit_config.__post_init__()  # its own checks of estimator, gamma, step_weight
        except ValueError as error:
            raise ConfigError(f"multiturn: {error}") from None

    @property
    def credit_config(self) -> CreditConfig:
        return CreditConfig(mode=self.credit, estimator=self.estimator, gamma=self.gamma, step_weight=self.step_weight)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a run needs. Every field is checked in `__post_init__` with a one-line ConfigError."""

    # policy
    model: str = "tiny"  # a preset name (random init), a local Hugging Face directory or a hub id
    tokenizer: str | None = None  # a tokenizer.json / checkpoint dir; None: the model's own (policy.load_policy)
    init_seed: int = 0  # random initialisation of preset models
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    freeze_vision: bool = False
    remat: bool = False
    # games
    games: tuple[str, ...] = ("2048",)
    game_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    image_size: tuple[int, int] | None = None  # None: each game's default (they must agree)
    states_per_step: int = 8  # P: split evenly across the games
    warmup_policy: str = "uniform"  # G1's: uniform random action ids
    warmup_moves: Mapping[str, int] = dataclasses.field(default_factory=dict)  # default: G1's per game
    reward_weights: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    strict_format: bool = False
    # sampling
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # the GRPO loss and group size (rl/grpo.py); a mapping given here is read onto DEFAULT_GRPO
    grpo: GRPOConfig = DEFAULT_GRPO
    # multi-turn episodes instead of G1's one answer per state (None: single-turn); a mapping is read onto
    # MultiTurnConfig
    multiturn: MultiTurnConfig | None = None
    # optimiser
    learning_rate: float = 1e-6
    schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    grad_clip: float = 1.0
    micro_batch_states: int | None = None  # prompts per micro-batch (None: a whole (mini-)batch at once)
    # G1's perception cold start (SFT on a programmatic teacher) and the held-out evaluation
    sft_steps: int = 0  # teacher-answer SFT steps before RL (0: the G0 recipe, RL only)
    # the first of them train on the teacher's <perception> block alone: a perception-first cold start
    sft_perception_steps: int = 0
    sft_learning_rate: float = 1e-4
    # teacher kind (g1jax.teachers.TEACHERS) for every game, or {game: kind} (games left out take their
    # default); None: each game's default
    teacher: str | Mapping[str, str] | None = None
    teacher_epsilon: float = 0.0  # chance of a random valid move instead of the teacher's: an imperfect teacher
    eval_states: int = 0  # held-out start states scored before and after RL (0: no evaluation)
    # run
    steps: int = 20
    seed: int = 0
    mesh: str = "1,1,1"  # data,fsdp,tp sizes ("-1" takes the remaining devices)
    run_dir: str = "runs/default"
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    sample_every: int = 10  # write sample frames with the answers every N steps (0: never)
    export_hf: bool = True  # write the final policy as Hugging Face safetensors into run_dir/hf
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self):
        self._normalise()
        self._check_games()
        self._check_counts()
        self._check_numbers()
        self._check_names()
        self._check_per_game_options()

    def _normalise(self) -> None:
        """Sequences read from JSON become tuples; a grpo mapping becomes a GRPOConfig."""
        set_field = functools.partial(object.__setattr__, self)  # the dataclass is frozen
        set_field("games", (self.games,) if isinstance(self.games, str) else tuple(self.games))
        if self.image_size is not None:
            set_field("image_size", tuple(self.image_size))
        if isinstance(self.grpo, Mapping):
            set_field("grpo", grpo_from_mapping(self.grpo))
        _check(isinstance(self.grpo, GRPOConfig), f"grpo must be a GRPOConfig or a mapping, got {self.grpo!r}")
        if isinstance(self.multiturn, Mapping):
            set_field("multiturn", multiturn_from_mapping(self.multiturn))
        _check(
            self.multiturn is None or isinstance(self.multiturn, MultiTurnConfig),
            f"multiturn must be None, a MultiTurnConfig or a mapping, got {self.multiturn!r}",
        )
        if self.multiturn is not None:
            _check(len(self.games) == 1, f"multiturn episodes play one game, got games {list(self.games)}")

    def _check_games(self) -> None:
        _check(bool(self.games), "games must name at least one game")
        unknown = [g for g in self.games if g not in envs.list_games()]
        _check(not unknown, f"unknown game(s) {unknown}; available: {', '.join(envs.list_games())}")
        _check(len(set(self.games)) == len(self.games), f"games lists a game twice: {list(self.games)}")

    def _check_counts(self) -> None:
        for name in ("states_per_step", "max_new_tokens", "steps", "keep_checkpoints"):
            _check_int(name, getattr(self, name), 1)
        for name in (
            "checkpoint_every",
            "sample_every",
            "warmup_steps",
            "seed",
            "init_seed",
            "top_k",
            "sft_steps",
            "sft_perception_steps",
            "eval_states",
        ):
            _check_int(name, getattr(self, name), 0)
        _check(
            self.sft_perception_steps <= self.sft_steps,
            f"sft_perception_steps {self.sft_perception_steps} must be at most sft_steps {self.sft_steps} (they "
            "are the first of the cold-start steps)",
        )
        games = len(self.games)
        _check(
            self.states_per_step % games == 0,
            f"states_per_step {self.states_per_step} must split evenly across the {games} games",
        )
        _check(
            self.eval_states % games == 0, f"eval_states {self.eval_states} must split evenly across the {games} games"
        )
        minibatches = self.grpo.ppo_minibatches
        _check(
            self.states_per_step % minibatches == 0,
            f"grpo.ppo_minibatches {minibatches} must divide states_per_step {self.states_per_step}",
        )
        if self.micro_batch_states is not None:
            _check_int("micro_batch_states", self.micro_batch_states, 1)
            minibatch_states = self.states_per_step // minibatches
            _check(
                minibatch_states % self.micro_batch_states == 0,
                f"micro_batch_states {self.micro_batch_states} must divide the {minibatch_states} states of a "
                f"mini-batch (states_per_step {self.states_per_step} / grpo.ppo_minibatches {minibatches})",
            )

    def _check_numbers(self) -> None:
        _check(
            _is_number(self.temperature) and self.temperature > 0,
            f"temperature must be > 0 for training (the policy's log-probs are taken at it), got {self.temperature!r}",
        )
        _check(_is_number(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")
        for name in ("learning_rate", "sft_learning_rate", "grad_clip"):
            value = getattr(self, name)
            _check(_is_number(value) and value > 0, f"{name} must be > 0, got {value!r}")
        _check(
            _is_number(self.weight_decay) and self.weight_decay >= 0,
            f"weight_decay must be >= 0, got {self.weight_decay!r}",
        )
        _check(
            all(_is_number(b) and 0 <= b < 1 for b in (self.b1, self.b2)),
            f"b1, b2 must be in [0, 1), got {self.b1}, {self.b2}",
        )
        _check(
            _is_number(self.teacher_epsilon) and 0 <= self.teacher_epsilon <= 1,
            f"teacher_epsilon must be a probability in [0, 1], got {self.teacher_epsilon!r}",
        )

    def _check_names(self) -> None:
        _check(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _check(
            self.dtype in DTYPES and self.param_dtype in DTYPES,
            f"dtype / param_dtype must be one of {DTYPES}, got {self.dtype!r} / {self.param_dtype!r}",
        )
        _check(
            self.warmup_policy in envs.wrappers.WARMUP_POLICIES,
            f"warmup_policy must be one of {envs.wrappers.WARMUP_POLICIES}, got {self.warmup_policy!r}",
        )
        _check(
            isinstance(self.model, str) and self.model,
            f"model must be a preset name, a directory or a hub id, got {self.model!r}",
        )
        _check(
            self.tokenizer is None or (isinstance(self.tokenizer, str) and self.tokenizer),
            f"tokenizer must be a path or None, got {self.tokenizer!r}",
        )
        _check(isinstance(self.run_dir, str) and self.run_dir, "run_dir must be a non-empty path")
        try:
            parse_mesh_shape(self.mesh)  # its form only: whether it fits the devices is the trainer's check
        except ValueError as error:
            raise ConfigError(str(error)) from None
        _check(
            self.teacher is None
            or isinstance(self.teacher, str)
            or (isinstance(self.teacher, Mapping) and all(isinstance(kind, str) for kind in self.teacher.values())),
            f"teacher must be a teacher kind, a mapping of game names to kinds, or None; got {self.teacher!r}",
        )

    def _check_per_game_options(self) -> None:
        per_game_teacher = list(self.teacher) if isinstance(self.teacher, Mapping) else []
        for name in list(self.game_options) + list(self.warmup_moves) + list(self.reward_weights) + per_game_teacher:
            _check(name in self.games, f"options given for {name!r}, which is not in games {list(self.games)}")
        for name, moves in self.warmup_moves.items():
            _check_int(f"warmup_moves[{name!r}]", moves, 0)
        for name, weights in self.reward_weights.items():
            try:
                g1_weights(name, weights)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"reward_weights[{name!r}]: {error}") from None

    def teacher_kind(self, game: str) -> str | None:
        """The cold-start teacher kind of `game` (None: its default)."""
        if isinstance(self.teacher, Mapping):
            return self.teacher.get(game)
        return self.teacher

    @property
    def group_size(self) -> int:
        """Answers sampled per start state (the rollout's and the loss's G)."""
        return self.grpo.group_size

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p
        )

    @property
    def micro_batches(self) -> int:
        """How many micro-batches one update accumulates (1: the whole batch at once)."""
        return self.states_per_step // (self.micro_batch_states or self.states_per_step)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a parsed JSON/YAML mapping; unknown keys are a ConfigError naming them."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"a config must be a mapping of field names to values, got {type(values).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            moved = [f"grpo.{name}" for name in unknown if name in _GRPO_FIELDS]
            hint = f" ({', '.join(moved)}: GRPO settings sit under grpo)" if moved else ""
            raise ConfigError(f"unknown config field(s) {unknown}{hint}; valid fields: {', '.join(sorted(fields))}")
        try:
            return cls(**values)
        except TypeError as error:
            raise ConfigError(f"bad config: {error}") from None

    def replace(self, **changes) -> TrainConfig:
        """A copy with `changes`; `grpo` may be a mapping of the GRPO fields to change."""
        if isinstance(changes.get("grpo"), Mapping):
            changes["grpo"] = grpo_from_mapping(changes["grpo"], base=self.grpo)
        return dataclasses.replace(self, **changes)


_GRPO_FIELDS = {f.name for f in dataclasses.fields(GRPOConfig)}
_MULTITURN_FIELDS = {f.name for f in dataclasses.fields(MultiTurnConfig)}


def multiturn_from_mapping(values: Mapping[str, Any]) -> MultiTurnConfig:
    """A MultiTurnConfig from a mapping; an unknown or bad field is a one-line ConfigError."""
    unknown = sorted(set(values) - _MULTITURN_FIELDS)
    _check(not unknown, f"unknown multiturn field(s) {unknown}; valid: {', '.join(sorted(_MULTITURN_FIELDS))}")
    try:
        return MultiTurnConfig(**values)
    except TypeError as error:
        raise ConfigError(f"multiturn: {error}") from None


def grpo_from_mapping(values: Mapping[str, Any], base: GRPOConfig = DEFAULT_GRPO) -> GRPOConfig:
    """`base` with the fields in `values` changed; an unknown or bad field is a one-line ConfigError."""
    unknown = sorted(set(values) - _GRPO_FIELDS)
    _check(not unknown, f"unknown grpo field(s) {unknown}; valid: {', '.join(sorted(_GRPO_FIELDS))}")
    try:
        return dataclasses.replace(base, **values)
    except ValueError as error:
        raise ConfigError(f"grpo: {error}") from None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
