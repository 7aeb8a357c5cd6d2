"""A teacher's strength: closed-loop play against uniformly random valid moves from the same start
states with the same randomness per board (docs/teachers.md#strength; the command:
`python -m g1jax.cli.teacher`)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

import envs
from envs.wrappers import G1_WARMUP_MOVES
from g1jax.evaluation.closed_loop import play
from g1jax.teachers import Teacher


@functools.partial(jax.jit, static_argnums=(0, 4))
def play_teacher(teacher: Teacher, board_keys, states, epsilon, num_moves: int, params=None):
    """Closed-loop play of a batch of B boards for `num_moves` moves: board i plays
    `teacher.act_with_epsilon(..., epsilon[i])` (so epsilon 0 is the teacher, 1 random valid
    moves) with its randomness drawn from board_keys[i] (equal keys: equal spawns and refills
    for equal moves). A board whose game is over stops scoring. Returns per board the summed
    raw reward (f32 [B]) and the number of legal moves (int32 [B])."""
    env = teacher.env
    params = env.default_params if params is None else params
    # [moves, B]: board i's key at move t is fold_in(board_keys[i], t), whatever the other boards play
    keys = jax.vmap(lambda t: jax.vmap(lambda k: jax.random.fold_in(k, t))(board_keys))(jnp.arange(num_moves))

    def choose(act_keys, states):
        return jax.vmap(lambda k, s, e: teacher.act_with_epsilon(k, s, e, params))(act_keys, states, epsilon)

    def advance(step_keys, states, actions):
        stepped, _, _, info = jax.vmap(lambda k, s, a: env.step(k, s, a, params))(step_keys, states, actions)
        live = ~states.done
        return envs.tree_where(live, stepped, states), (jnp.where(live, info["raw_reward"], 0.0), live & info["legal"])

    points, legal = play(states, keys, choose, advance)
    return points.sum(axis=0), legal.sum(axis=0, dtype=jnp.int32)


def default_moves(env: envs.Env) -> tuple[int, int]:
    """(warm-up moves, closed-loop moves) for `strength`: G1's warm-up and 50 moves; Shisen-Sho
    starts from a fresh deal and plays it out (a random warm-up of 250 valid moves would
    clear many boards)."""
    if env.name in ("shisensho", "shisensho_photo"):
        return 0, env.num_cells // 2
    return G1_WARMUP_MOVES.get(env.name, 0), 50


_warmup_states = jax.jit(envs.warmup_states, static_argnums=(0, 2, 4))


def start_states(env: envs.Env, key, boards: int, params=None, warmup_moves: int | None = None):
    """The start states `strength` plays from: `boards` G1 warm-up states (`default_moves`),
    drawn by one compiled function per (game, boards, moves)."""
    return _warmup_states(env, key, boards, params, default_moves(env)[0] if warmup_moves is None else warmup_moves)


def strength(
    teacher: Teacher, key, *, boards: int = 32, moves: int | None = None, warmup_moves: int | None = None, params=None
) -> dict:
    """The teacher (with its epsilon) against random valid play, in closed loop from the same
    start states (G1 warm-up states, `default_moves`) with the same randomness per board, in
    one compiled run.
    Returns {"teacher": ..., "random": ...} with per-board summed raw reward "points", "legal"
    moves, "mean" and "se" of the points, and "difference": the paired mean and standard error
    of teacher - random and the boards the teacher "wins" and "loses"."""
    env = teacher.env
    moves = default_moves(env)[1] if moves is None else moves
    start_key, play_key = jax.random.split(key)
    states = start_states(env, start_key, boards, params, warmup_moves)
    both = jax.tree.map(lambda x: jnp.concatenate([x, x]), states)
    board_keys = jnp.tile(jax.random.split(play_key, boards), 2)
    # the teacher as configured, then random
    epsilon = jnp.repeat(jnp.asarray([teacher.epsilon, 1.0], jnp.float32), boards)
    # play_teacher reads epsilon from its argument: equal teachers share one compile whatever their epsilon
    unexplored = dataclasses.replace(teacher, epsilon=0.0)
    points, legal = jax.device_get(play_teacher(unexplored, board_keys, both, epsilon, moves, params))
    out = {}
    for name, rows in (("teacher", slice(0, boards)), ("random", slice(boards, None))):
        p = points[rows]
        out[name] = dict(points=p, legal=legal[rows], mean=float(p.mean()), se=float(p.std(ddof=1) / np.sqrt(boards)))
    diff = out["teacher"]["points"] - out["random"]["points"]
    out["difference"] = dict(
        mean=float(diff.mean()),
        se=float(diff.std(ddof=1) / np.sqrt(boards)),
        wins=int((diff > 0).sum()),
        losses=int((diff < 0).sum()),
    )
    return out
