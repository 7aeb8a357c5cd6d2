"""The environment contract shared by every game, the registry, config errors, argument checks
and the random draws the games share.

A game is a Python object that holds only *static* configuration (board size, image size,
number of colours...). Everything it does on the device is a pure function of explicit
arguments, so `jax.jit(env.step)` and `jax.vmap(env.step, in_axes=(0, 0, 0, None))` just work:

    env = envs.make("2048")
    params = env.default_params
    state = env.reset(key, params)
    state, reward, done, info = env.step(key, state, action, params)
    image = env.render(state, params)              # uint8[H, W, 3]
    mask = env.valid_actions(state, params)        # bool[num_actions]

`reward` is the G1 *training* game reward (e.g. +1 merge / -1 otherwise for 2048);
`info["raw_reward"]` is the game's raw reward (merge score, points gained...) and
`info["legal"]` says whether the action changed the game (used for evaluation scores).

Host-side (text) helpers: `env.prompt`, `env.describe(state)` (ground-truth perception
text in the original format), `env.parse(text) -> int` (invalid answers give
`env.invalid_action`), `env.answer_text(action)` (the canonical answer naming an action),
`env.action_label(action)` (a short name of it for people: "Up", "(0, 1) (2, 3)"),
`env.from_board(board)` (set up any position).

`Env` is an abstract base class: a game that leaves one of the members above unimplemented
cannot be registered or built. docs/envs.md describes the games themselves.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from envs.grammar import ANSWER_CLOSE, ANSWER_OPEN

MAX_IMAGE_SIDE = 4096  # pixels per side: frames beyond this cost gigabytes per batch for no gain
PATCH = 28  # Qwen2.5-VL's merged patch: images are multiples of it, so they need no resampling


class ConfigError(ValueError):
    """A game was asked for with a configuration it does not support."""


class UnknownGameError(ValueError):
    """`envs.make` was given a name that is not in the registry."""


_REGISTRY: dict[str, Callable[..., Env]] = {}


def register(name: str) -> Callable:
    """Class decorator: `@register("2048")` makes `envs.make("2048", **config)` build the class.
    A class that leaves a member of the contract abstract is refused here, at definition."""

    def wrap(factory):
        if name in _REGISTRY:
            raise ValueError(f"game {name!r} is registered twice")
        if inspect.isabstract(factory):
            missing = ", ".join(sorted(factory.__abstractmethods__))
            raise TypeError(f"game {name!r}: {factory.__name__} does not implement the env contract: {missing}")
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_games() -> list[str]:
    return sorted(_REGISTRY)


def make(name: str, **config) -> Env:
    """Build a game by registry name; bad names and bad config values raise here, clearly."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownGameError(f"unknown game {name!r}; available games: {', '.join(list_games())}")
    factory = _REGISTRY[name]
    options = [f.name for f in dataclasses.fields(factory) if f.init]
    unknown = sorted(set(config) - set(options))
    if unknown:
        raise ConfigError(
            f"bad config for game {name!r}: unknown option(s) {', '.join(unknown)}. Valid options: {', '.join(options)}"
        )
    return factory(**config)


# ---------------------------------------------------------------------------------------
# Config checks (one-line errors that name the option)
# ---------------------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_image_size(game: str, image_size) -> tuple[int, int]:
    """Images are (height, width): integers, multiples of 28 (one Qwen2.5-VL merged patch),
    at most MAX_IMAGE_SIDE per side. Returns them as Python ints."""
    try:
        h, w = image_size
    except (TypeError, ValueError):
        raise ConfigError(f"{game}: image_size must be (height, width), got {image_size!r}") from None
    if not (_is_int(h) and _is_int(w)):
        raise ConfigError(f"{game}: image_size {image_size!r} must be two integers (height, width)")
    h, w = int(h), int(w)
    if h <= 0 or w <= 0 or h % PATCH or w % PATCH:
        raise ConfigError(
            f"{game}: image_size {image_size!r} must be positive multiples of {PATCH} "
            f"(Qwen2.5-VL's 28-pixel patch grid), e.g. (448, 392)"
        )
    if max(h, w) > MAX_IMAGE_SIDE:
        raise ConfigError(f"{game}: image_size {image_size!r} exceeds the limit of {MAX_IMAGE_SIDE} pixels per side")
    return h, w


def smallest_image_size(fits: Callable[[tuple[int, int]], bool], aspect: tuple[int, int]) -> tuple[int, int] | None:
    """The smallest image_size of roughly the default's `aspect` (height, width) that `fits`,
    for error messages that say what would work; None if none up to MAX_IMAGE_SIDE does."""
    for k in range(1, MAX_IMAGE_SIDE // PATCH + 1):
        h = PATCH * max(1, round(k * aspect[0] / max(aspect)))
        w = PATCH * max(1, round(k * aspect[1] / max(aspect)))
        if max(h, w) <= MAX_IMAGE_SIDE and fits((h, w)):
            return h, w
    return None


def check_cell_size(
    game: str,
    image_size,
    board_size: int,
    cell_px: Callable[[tuple[int, int]], int],
    minimum: int,
    what: str,
    aspect,
    fits=None,
) -> None:
    """Raise if `image_size` gives cells (`what`: "cells", "tiles") of fewer than `minimum`
    pixels, `cell_px(image_size)`; the message names a smallest image_size that works (for
    which `fits(size)`, by default: its cells are large enough)."""
    got = cell_px(image_size)
    if got < minimum:
        smallest = smallest_image_size(fits or (lambda size: cell_px(size) >= minimum), aspect)
        raise ConfigError(
            f"{game}: image_size {image_size} gives {got}-px {what} on a {board_size}x{board_size} board; "
            f"{what} need >= {minimum} px to be legible, e.g. image_size={smallest}"
        )


def check_bool(game: str, option: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{game}: {option}={value!r} must be True or False")


def check_choice(game: str, option: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{game}: {option}={value!r} is not supported; allowed: {list(allowed)}")


def check_range(game: str, option: str, value, lo: int, hi: int) -> None:
    if not _is_int(value) or not lo <= value <= hi:
        raise ConfigError(f"{game}: {option}={value!r} must be an integer in [{lo}, {hi}]")


# ---------------------------------------------------------------------------------------
# Random draws shared by the games
# ---------------------------------------------------------------------------------------


def uniform_index(u, n):
    """A uniform integer in [0, n) from a uniform float u in [0, 1) (cheaper than randint;
    the clamp guards against float rounding of u * n up to n)."""
    return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), jnp.maximum(n - 1, 0))


def kth_true(mask, u):
    """A uniform draw among the True entries of bool [n] `mask` from one uniform u in [0, 1):
    (the index of the k-th True entry for k = floor(u * count), whether any entry is True).
    The running count is a log-depth associative scan: XLA:CPU lowers `cumsum` to a
    reduce-window that is quadratic in n."""
    mask = jnp.asarray(mask, bool)
    count = mask.sum(dtype=jnp.int32)
    k = uniform_index(u, count)
    running = jax.lax.associative_scan(jnp.add, mask.astype(jnp.int32))
    return jnp.argmax(mask & (running == k + 1)).astype(jnp.int32), count > 0


def random_permutation(words):
    """int32 [n]: a uniformly random permutation of range(n) from n random uint32 words (their
    low 24 bits are used). The words become n distinct keys (24 random bits above the index,
    so ties in the random bits, probability < n^2 / 2^25, are broken by index); the result is
    their ranks for small n (n^2 compares) and their sorting order for larger n, whichever
    is faster on XLA:CPU (BENCHMARKS.md)."""
    n = words.shape[0]
    keys = (words.astype(jnp.uint32) << 8) | jnp.arange(n, dtype=jnp.uint32)
    if n <= 64:
        return jnp.sum(keys[None, :] < keys[:, None], axis=1, dtype=jnp.int32)
    return jnp.argsort(keys).astype(jnp.int32)


# ---------------------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------------------


def _leaf_spec(x) -> tuple[tuple[int, ...], Any]:
    return tuple(jnp.shape(x)), jnp.result_type(x)


def _spec_text(tree) -> str:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    fields = ", ".join(
        f"{jax.tree_util.keystr(path).lstrip('.')}={np.dtype(d).name}{list(s)}"
        for path, (s, d) in ((p, _leaf_spec(x)) for p, x in leaves)
    )
    return f"{type(tree).__module__}.{type(tree).__name__}({fields})"


@functools.cache
def _state_spec(env: Env):
    """(tree structure, leaf (shape, dtype)s) of one state of `env`, from an abstract reset."""
    spec = jax.eval_shape(lambda key: env.reset(key, env.default_params), jax.random.key(0))
    leaves, tree = jax.tree.flatten(spec)
    return tree, tuple((tuple(x.shape), x.dtype) for x in leaves), spec


@dataclasses.dataclass(frozen=True)
class Env(abc.ABC):
    """Base class. Subclasses are frozen dataclasses of static config (hashable, so an env can
    be a static argument of `jax.jit`) and implement every abstract member below."""

    name: ClassVar[str] = "env"
    # Named configurations the game's `preset` option accepts (none for most games).
    presets: ClassVar[tuple[str, ...]] = ()

    # --- static facts every game defines -------------------------------------------------
    @property
    @abc.abstractmethod
    def num_actions(self) -> int: ...

    @property
    @abc.abstractmethod
    def invalid_action(self) -> int:
        """The action id an unparsable or out-of-range answer maps to."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w = self.image_size  # type: ignore[attr-defined]
        return (h, w, 3)

    @property
    @abc.abstractmethod
    def default_params(self) -> Any: ...

    @property
    @abc.abstractmethod
    def prompt(self) -> str: ...

    # --- device functions (pure, jittable, vmappable) ------------------------------------
    @abc.abstractmethod
    def reset(self, key: jax.Array, params=None): ...

    @abc.abstractmethod
    def step(self, key: jax.Array, state, action, params=None):
        """-> (state, reward f32, done bool, info dict(raw_reward f32, legal bool)). Starts with
        `self.checked_action(state, action)`."""

    @abc.abstractmethod
    def render(self, state, params=None) -> jax.Array: ...

    @abc.abstractmethod
    def valid_actions(self, state, params=None) -> jax.Array: ...

    def random_valid_action(self, key: jax.Array, state, params=None) -> jax.Array:
        """Uniform over `valid_actions`; `invalid_action` when nothing is valid. One uniform
        draw picks the k-th valid id (cheaper than Gumbel sampling over all actions)."""
        choice, any_valid = kth_true(self.valid_actions(state, params), jax.random.uniform(key))
        return jnp.where(any_valid, choice, self.invalid_action).astype(jnp.int32)

    # --- host helpers ----------------------------------------------------------------------
    @abc.abstractmethod
    def describe(self, state) -> str: ...

    @abc.abstractmethod
    def parse(self, text: str) -> int: ...

    @abc.abstractmethod
    def answer_text(self, action: int) -> str:
        """The canonical `<answer>...</answer>` text of an action id (what `parse` reads back
        as that id); the invalid action has none (ValueError)."""

    def action_label(self, action: int) -> str:
        """A short human name of an action id for captions and a teacher's reasoning (an answer is
        `answer_text`): what its answer names, e.g. "(0, 1) (2, 3)"; "invalid" for the invalid action."""
        if action == self.invalid_action:
            return "invalid"
        return self.answer_text(action).removeprefix(ANSWER_OPEN).removesuffix(ANSWER_CLOSE)

    @abc.abstractmethod
    def from_board(self, board, **kwargs): ...

    # --- argument checks, at trace time ---------------------------------------------------
    def check_state(self, state, method: str = "step") -> None:
        """Raise one line if `state` is not one state of this game (another game's, a batch
        given to an unbatched call, a leaf of the wrong dtype)."""
        tree, leaves, spec = _state_spec(self)
        try:
            got_leaves, got_tree = jax.tree.flatten(state)
            # the class too: treedefs of two struct dataclasses with as many fields compare equal
            matches = (
                type(state) is type(spec) and got_tree == tree and tuple(_leaf_spec(x) for x in got_leaves) == leaves
            )
        except TypeError:  # leaves that are not arrays at all
            matches = False
        if not matches:
            raise TypeError(
                f"{self.name}.{method}: state must be one {self.name} state like reset returns, "
                f"{_spec_text(spec)}; got {_spec_text(state)} (a batch of states needs jax.vmap)"
            )

    def checked_action(self, state, action) -> jax.Array:
        """The int32 action id `step` works with, after checking (at trace time) that `state`
        is this game's and `action` one integer id: shape (), an integer dtype (not bool or
        float). Ids outside [0, num_actions), 2**31 included, become `invalid_action`."""
        self.check_state(state)
        if isinstance(action, (bool, np.bool_)) or (hasattr(action, "dtype") and jnp.dtype(action.dtype) == jnp.bool_):
            raise TypeError(f"{self.name}.step: action must be an integer action id, got the bool {action!r}")
        if isinstance(action, int):  # a Python int may be any size
            return jnp.int32(action if 0 <= action < self.num_actions else self.invalid_action)
        dtype = getattr(action, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
            got = f"{type(action).__name__} {action!r}" if dtype is None else f"an array of dtype {dtype}"
            raise TypeError(f"{self.name}.step: action must be an integer action id (int32), got {got}"[:300])
        if jnp.shape(action) != ():
            raise ValueError(
                f"{self.name}.step: action must be one action id (shape ()), got shape {tuple(jnp.shape(action))}; "
                "to step a batch of boards, jax.vmap(env.step)"
            )
        if isinstance(action, (np.ndarray, np.generic)):  # host values: check before int32 wraps them
            value = int(action)
            return jnp.int32(value if 0 <= value < self.num_actions else self.invalid_action)
        in_range = (action >= 0) & (action < self.num_actions)
        return jnp.where(in_range, action, self.invalid_action).astype(jnp.int32)

    def answerable_action(self, action) -> int:
        """`action` as a Python int, for `answer_text`: an integer id in [0, num_actions) other
        than the invalid action (which no answer names: every unreadable answer maps there)."""
        if not _is_int(action) and not (
            isinstance(action, (np.ndarray, jax.Array))
            and action.shape == ()
            and jnp.issubdtype(action.dtype, jnp.integer)
        ):
            raise TypeError(f"{self.name}.answer_text: action must be one integer action id, got {action!r}")
        action = int(action)
        if not 0 <= action < self.num_actions or action == self.invalid_action:
            raise ValueError(
                f"{self.name}.answer_text: action {action} names no move; ids are [0, {self.num_actions}) "
                f"and {self.invalid_action} is the invalid action"
            )
        return action

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"envs.make({self.name!r}, {fields})"


def unbatch(tree, index: int):
    """Row `index` of a batched pytree (e.g. one state out of a vmapped batch), for host helpers."""
    return jax.tree.map(lambda x: x[index], tree)
