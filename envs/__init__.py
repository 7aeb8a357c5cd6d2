"""VLM-Gym games as pure JAX functions that draw their own observations.

import envs
env = envs.make("2048")                 # static config: board_size, image_size, ...
state = env.reset(key, env.default_params)
"""

import importlib

from envs.core import ConfigError, Env, UnknownGameError, list_games, make, register, unbatch
from envs.wrappers import (
    auto_reset_step,
    parallel_step,
    render_batch,
    render_into,
    tree_where,
    warmup_state,
    warmup_states,
)

# Each game registers itself on import; one module per game.
_GAME_MODULES = ("game2048", "swap", "shisensho", "shisensho_photo", "frozenlake", "sokoban")
for _module in _GAME_MODULES:
    importlib.import_module(f"envs.{_module}")

from envs.multigame import MultiGame  # noqa: E402  (needs the games registered)

__all__ = [
    "ConfigError",
    "Env",
    "MultiGame",
    "UnknownGameError",
    "auto_reset_step",
    "list_games",
    "make",
    "parallel_step",
    "register",
    "render_batch",
    "render_into",
    "tree_where",
    "unbatch",
    "warmup_state",
    "warmup_states",
]
