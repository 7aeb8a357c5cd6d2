"""Multi-game batches: sub-batches of several games (one static count each, one shared image
size) stepped and rendered as one batch, so a single training step can draw from all games.

    batch = MultiGame.make({"2048": 64, "swap": 64}, image_size=(616, 560))
    states = batch.warmup(key)                            # reset + each game's G1 warm-up
    frames = batch.render(states)                         # uint8 [B, H, W, 3], B = 128
    actions = batch.parse(texts)                          # int32 [B], one answer per row
    states, rewards, dones, info = batch.step(key, states, actions)     # [B] arrays
    rewards = batch.parallel_step(key, states, answers)[1]              # answers [B, G] -> [B, G]

Rows are laid out game by game in the order given: rows `batch.rows(i)` belong to game i.
`states` is a tuple with one batched state per game; params likewise (None: each game's
defaults). Every device method is a pure function of its arguments: `jax.jit(batch.step)`
compiles the whole mixed batch into one program, each game's vmapped code on its rows.
Sub-batch i draws its randomness from `jax.random.split(jax.random.fold_in(key, i), count)`,
so a game's rows do not depend on which other games share the batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from envs.core import ConfigError, Env, make, unbatch
from envs.wrappers import G1_WARMUP_MOVES, auto_reset_step, parallel_step, warmup_states


def _shared_info(infos: list[dict], exclude=()) -> dict:
    """The info keys every game's step returns, each game's rows joined in batch order (keys
    only some games have cannot fill every row, so they are left out)."""
    shared = [k for k in infos[0] if all(k in info for info in infos) and k not in exclude]
    out = {}
    for k in shared:
        pieces = [info[k] for info in infos]
        if len({(p.shape[1:], p.dtype) for p in pieces}) > 1:
            listing = ", ".join(f"{p.dtype}{list(p.shape[1:])}" for p in pieces)
            raise ValueError(
                f"multigame: info[{k!r}] differs in shape or dtype between the games ({listing}); "
                "it cannot be one batch"
            )
        out[k] = jnp.concatenate(pieces)
    return out


@dataclasses.dataclass(frozen=True)
class MultiGame:
    """Static description of a mixed batch: `games[i]` gets `counts[i]` rows."""

    games: tuple[Env, ...]
    counts: tuple[int, ...]

    def __post_init__(self):
        games, counts = tuple(self.games), tuple(self.counts)
        object.__setattr__(self, "games", games)
        object.__setattr__(self, "counts", counts)
        if not games:
            raise ConfigError("multigame: give at least one game")
        if len(games) != len(counts):
            raise ConfigError(f"multigame: {len(games)} games but {len(counts)} counts")
        for game, count in zip(games, counts):
            if not isinstance(game, Env):
                raise ConfigError(f"multigame: {game!r} is not a game (build games with envs.make)")
            if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 1:
                raise ConfigError(f"multigame: the count for {game.name!r} must be a positive integer, got {count!r}")
        sizes = {tuple(game.image_size) for game in games}
        if len(sizes) > 1:
            listing = ", ".join(f"{game.name}: {tuple(game.image_size)}" for game in games)
            raise ConfigError(
                f"multigame: all games must render the same image_size to share one frame batch; got {listing}"
            )

    @classmethod
    def make(cls, counts: dict, image_size=None, configs: dict | None = None) -> MultiGame:
        """Build from {game name: rows}; `image_size` is passed to every game (None: the games'
        defaults, which must then agree); `configs` maps a name to more config for that game."""
        configs = dict(configs or {})
        unknown = set(configs) - set(counts)
        if unknown:
            raise ConfigError(f"multigame: configs given for games not in the batch: {sorted(unknown)}")
        size = {} if image_size is None else {"image_size": tuple(image_size)}
        games = tuple(make(name, **{**size, **configs.get(name, {})}) for name in counts)
        return cls(games, tuple(counts.values()))

    # --- static layout -----------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Total rows B."""
        return sum(self.counts)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.games[0].image_shape

    def rows(self, i: int) -> slice:
        """The rows of game i."""
        start = sum(self.counts[:i])
        return slice(start, start + self.counts[i])

    @property
    def game_index(self) -> np.ndarray:
        """int32 [B]: which game each row belongs to."""
        return np.repeat(np.arange(len(self.games), dtype=np.int32), self.counts)

    @property
    def game_names(self) -> list[str]:
        return [self.games[i].name for i in self.game_index]

    @property
    def prompts(self) -> list[str]:
        return [self.games[i].prompt for i in self.game_index]

    @property
    def default_params(self) -> tuple:
        return tuple(game.default_params for game in self.games)

    # --- device functions --------------------------------------------------------------------
    def _params(self, params):
        return self.default_params if params is None else tuple(params)

    def _keys(self, key, i: int):
        return jax.random.split(jax.random.fold_in(key, i), self.counts[i])

    def _split(self, flat, what: str):
        """Per-game pieces of a [B, ...] array, checked against the static layout."""
        flat = jnp.asarray(flat)
        if flat.shape[:1] != (self.size,):
            raise ValueError(f"multigame: {what} must have {self.size} rows (one per board), got shape {flat.shape}")
        return [flat[self.rows(i)] for i in range(len(self.games))]

    def reset(self, key, params=None) -> tuple:
        params = self._params(params)
        return tuple(
            jax.vmap(lambda k, g=g, p=p: g.reset(k, p))(self._keys(key, i))
            for i, (g, p) in enumerate(zip(self.games, params))
        )

    def warmup(self, key, params=None, num_moves: dict | None = None, policy: str = "valid") -> tuple:
        """Start states like G1's: reset, then random moves per game (`num_moves` maps a game
        name to its count; default G1's: 2048 100, Shisen-Sho 250, Swap 0)."""
        params = self._params(params)
        moves = {**G1_WARMUP_MOVES, **(num_moves or {})}
        return tuple(
            warmup_states(g, jax.random.fold_in(key, i), n, p, num_moves=moves.get(g.name, 0), policy=policy)
            for i, (g, n, p) in enumerate(zip(self.games, self.counts, params))
        )

    def step(self, key, states, actions, params=None, auto_reset: bool = False):
        """One action per row (int32 [B]) -> (states, rewards f32 [B], dones bool [B], info: every
        key the games' infos share, e.g. raw_reward [B] and legal [B]). auto_reset=True replaces finished
        games by fresh ones (`envs.auto_reset_step`; the finished states are in info["final_state"], per game)."""
        params = self._params(params)
        outs = []
        for i, (g, p, s, a) in enumerate(zip(self.games, params, states, self._split(actions, "actions"))):
            if auto_reset:
                fn = lambda k, s, a, g=g, p=p: auto_reset_step(g, k, s, a, p)  # noqa: E731
            else:
                fn = lambda k, s, a, g=g, p=p: g.step(k, s, a, p)  # noqa: E731
            outs.append(jax.vmap(fn)(self._keys(key, i), s, a))
        new_states = tuple(o[0] for o in outs)
        rewards, dones = (jnp.concatenate([o[j] for o in outs]) for j in (1, 2))
        info = _shared_info([o[3] for o in outs], exclude=("final_state",))
        if auto_reset:
            info["final_state"] = tuple(o[3]["final_state"] for o in outs)
        return new_states, rewards, dones, info

    def parallel_step(self, key, states, actions, params=None):
        """G answers per row (int32 [B, G]) scored from the same state each (no auto-reset):
        -> (states per game [count, G], rewards [B, G], dones [B, G], shared info keys [B, G])."""
        params = self._params(params)
        outs = [
            jax.vmap(lambda k, s, a, g=g, p=p: parallel_step(g, k, s, a, p))(self._keys(key, i), s, a)
            for i, (g, p, s, a) in enumerate(zip(self.games, params, states, self._split(actions, "actions")))
        ]
        rewards, dones = (jnp.concatenate([o[j] for o in outs]) for j in (1, 2))
        return tuple(o[0] for o in outs), rewards, dones, _shared_info([o[3] for o in outs])

    def random_valid_actions(self, key, states, params=None):
        """int32 [B]: per row, uniform over that game's valid actions."""
        params = self._params(params)
        return jnp.concatenate(
            [
                jax.vmap(lambda k, s, g=g, p=p: g.random_valid_action(k, s, p))(self._keys(key, i), s)
                for i, (g, p, s) in enumerate(zip(self.games, params, states))
            ]
        )

    def valid_actions(self, states, params=None):
        """bool [B, max num_actions]: per row its game's mask, False beyond its action count."""
        params = self._params(params)
        width = max(g.num_actions for g in self.games)
        masks = [jax.vmap(lambda s, g=g, p=p: g.valid_actions(s, p))(s) for g, p, s in zip(self.games, params, states)]
        return jnp.concatenate([jnp.pad(m, ((0, 0), (0, width - m.shape[1]))) for m in masks])

    def render(self, states, params=None):
        """uint8 [B, H, W, 3], rows in batch order."""
        params = self._params(params)
        return jnp.concatenate(
            [jax.vmap(lambda s, g=g, p=p: g.render(s, p))(s) for g, p, s in zip(self.games, params, states)]
        )

    def render_into(self, frames, states, params=None):
        """`render` written into an existing uint8 [B, H, W, 3] buffer: jit with `frames`
        donated and XLA draws in place (see `envs.render_into`)."""
        if tuple(frames.shape) != (self.size, *self.image_shape) or frames.dtype != jnp.uint8:
            raise ValueError(
                f"multigame: frames buffer is {frames.dtype}{list(frames.shape)}, "
                f"expected uint8{[self.size, *self.image_shape]}"
            )
        return frames.at[...].set(self.render(states, params))

    # --- host helpers ------------------------------------------------------------------------
    def describe(self, states) -> list[str]:
        """Ground-truth perception text per row."""
        out = []
        for g, n, s in zip(self.games, self.counts, states):
            host = jax.device_get(s)
            out.extend(g.describe(unbatch(host, j)) for j in range(n))
        return out

    def parse(self, texts) -> np.ndarray:
        """int32 [B]: each row's answer text parsed by its game."""
        texts = list(texts)
        if len(texts) != self.size:
            raise ValueError(f"multigame: expected {self.size} answers (one per row), got {len(texts)}")
        return np.asarray([self.games[i].parse(t) for i, t in zip(self.game_index, texts)], np.int32)
