"""The environment contract shared by every game, the registry and config errors.

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
`env.invalid_action`), `env.from_board(board)` (set up any position).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np


class ConfigError(ValueError):
    """A game was asked for with a configuration it does not support."""


class UnknownGameError(ValueError):
    """`envs.make` was given a name that is not in the registry."""


_REGISTRY: dict[str, Callable[..., "Env"]] = {}


def register(name: str) -> Callable:
    """Class decorator: `@register("2048")` makes `envs.make("2048", **config)` build the class."""

    def wrap(factory):
        if name in _REGISTRY:
            raise ValueError(f"game {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_games() -> list[str]:
    return sorted(_REGISTRY)


def make(name: str, **config) -> "Env":
    """Build a game by registry name; bad names and bad config values raise here, clearly."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownGameError(
            f"unknown game {name!r}; available games: {', '.join(list_games())}"
        )
    factory = _REGISTRY[name]
    try:
        return factory(**config)
    except TypeError as err:  # unknown keyword -> name the valid ones
        fields = [f.name for f in dataclasses.fields(factory)] if dataclasses.is_dataclass(factory) else []
        raise ConfigError(
            f"bad config for game {name!r}: {err}. Valid options: {', '.join(fields) or 'none'}"
        ) from None


def check_image_size(game: str, image_size) -> tuple[int, int]:
    """Images are (height, width), both multiples of 28 (one Qwen2.5-VL merged patch)."""
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ConfigError(f"{game}: image_size must be (height, width), got {image_size!r}") from None
    if h <= 0 or w <= 0 or h % 28 or w % 28:
        raise ConfigError(
            f"{game}: image_size {image_size!r} must be positive multiples of 28 "
            f"(Qwen2.5-VL's 28-pixel patch grid), e.g. (448, 392)"
        )
    return h, w


def check_bool(game: str, option: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{game}: {option}={value!r} must be True or False")


def check_choice(game: str, option: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{game}: {option}={value!r} is not supported; allowed: {list(allowed)}")


def check_range(game: str, option: str, value, lo: int, hi: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"{game}: {option}={value!r} must be an integer in [{lo}, {hi}]")


@dataclasses.dataclass(frozen=True)
class Env:
    """Base class. Subclasses are frozen dataclasses of static config (hashable, so an env can
    be a static argument of `jax.jit`) and implement the abstract methods below."""

    name: ClassVar[str] = "env"

    # --- static facts every game defines -------------------------------------------------
    @property
    def num_actions(self) -> int:
        raise NotImplementedError

    @property
    def invalid_action(self) -> int:
        """The action id an unparsable or out-of-range answer maps to."""
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w = self.image_size  # type: ignore[attr-defined]
        return (h, w, 3)

    @property
    def default_params(self) -> Any:
        raise NotImplementedError

    @property
    def prompt(self) -> str:
        raise NotImplementedError

    # --- device functions (pure, jittable, vmappable) ------------------------------------
    def reset(self, key: jax.Array, params=None):
        raise NotImplementedError

    def step(self, key: jax.Array, state, action, params=None):
        """-> (state, reward f32, done bool, info dict(raw_reward f32, legal bool))."""
        raise NotImplementedError

    def render(self, state, params=None) -> jax.Array:
        raise NotImplementedError

    def valid_actions(self, state, params=None) -> jax.Array:
        raise NotImplementedError

    def random_valid_action(self, key: jax.Array, state, params=None) -> jax.Array:
        """Uniform over `valid_actions`; `invalid_action` when nothing is valid. One uniform
        draw picks the k-th valid id (cheaper than Gumbel sampling over all actions)."""
        mask = self.valid_actions(state, params)
        count = mask.sum()
        k = jnp.floor(jax.random.uniform(key) * count).astype(jnp.int32)
        choice = jnp.argmax(mask & (jnp.cumsum(mask) == k + 1))
        return jnp.where(count > 0, choice, self.invalid_action).astype(jnp.int32)

    # --- host helpers ----------------------------------------------------------------------
    def describe(self, state) -> str:
        raise NotImplementedError

    def parse(self, text: str) -> int:
        raise NotImplementedError

    def from_board(self, board, **kwargs):
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"envs.make({self.name!r}, {fields})"


def unbatch(tree, index: int):
    """Row `index` of a batched pytree (e.g. one state out of a vmapped batch), for host helpers."""
    return jax.tree.map(lambda x: x[index], tree)
