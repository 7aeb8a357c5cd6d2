"""Game-independent wrappers over the env contract: auto-reset, random warm-up start states
(the way G1 samples its training states), and parallel actions (G answers scored from one
state). All are pure functions of (env, key, state, ...); jit them with the env static."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from envs.core import Env

WARMUP_POLICIES = ("valid", "uniform")
# Random moves G1's trainers play from a fresh game to draw each training state
# (docs/envs.md, "Training states").
G1_WARMUP_MOVES = {"2048": 100, "shisensho": 250, "shisensho_photo": 250, "swap": 0}


def tree_where(pred, on_true, on_false):
    """`jnp.where` over two pytrees of the same structure (two states, two batches of states):
    `pred` of shape [] picks a whole tree, of shape [B] a row of every leaf [B, ...]."""

    def pick(a, b):
        return jnp.where(jnp.reshape(pred, jnp.shape(pred) + (1,) * (jnp.ndim(a) - jnp.ndim(pred))), a, b)

    return jax.tree.map(pick, on_true, on_false)


def auto_reset_step(env: Env, key, state, action, params=None):
    """`env.step`, then a fresh game wherever the episode ended.

    The episode's last state is returned separately as `info["final_state"]` (render it for
    the final observation), so nothing is lost at episode ends; `done` and the rewards are
    those of the step itself. The reset is computed for every env and selected with
    `jnp.where`: branch-free, so vmap stays a single program."""
    step_key, reset_key = jax.random.split(key)
    next_state, reward, done, info = env.step(step_key, state, action, params)
    fresh = env.reset(reset_key, params)
    info = dict(info, final_state=next_state)
    return tree_where(done, fresh, next_state), reward, done, info


def warmup_state(env: Env, key, params=None, num_moves: int = 100, policy: str = "valid"):
    """A start state drawn like G1's: reset, then `num_moves` random actions (a fresh game
    wherever one ends on the way).

    policy="valid": uniform over the currently valid actions (every move does something);
    policy="uniform": uniform over all action ids, G1's behaviour (in 2048 that includes
    "still", in the matching games almost every draw is an invalid no-op)."""
    states = warmup_states(env, key, 1, params, num_moves, policy)
    return jax.tree.map(lambda x: x[0], states)


def warmup_states(env: Env, key, batch: int, params=None, num_moves: int = 100, policy: str = "valid"):
    """`batch` independent warm-up start states (see `warmup_state`), the batch stepped
    together: games that end are reset under a batch-level `lax.cond`, so a
    step where no board finished (most of them) computes no reset at all. (Inside `vmap` a
    cond becomes a select, which would pay for a full reset of every board on every move.)"""
    if policy not in WARMUP_POLICIES:
        raise ValueError(f"warm-up policy must be one of {WARMUP_POLICIES}, got {policy!r}")
    if num_moves < 0:
        raise ValueError(f"num_moves must be >= 0, got {num_moves}")
    reset_key, moves_key = jax.random.split(key)
    reset = jax.vmap(lambda k: env.reset(k, params))
    states = reset(jax.random.split(reset_key, batch))

    def move(states, k):
        act_key, step_key, reset_key = jax.random.split(k, 3)
        act_keys, step_keys = jax.random.split(act_key, batch), jax.random.split(step_key, batch)
        if policy == "valid":
            actions = jax.vmap(lambda kk, s: env.random_valid_action(kk, s, params))(act_keys, states)
        else:
            actions = jax.random.randint(act_key, (batch,), 0, env.num_actions)
        states, _, done, _ = jax.vmap(lambda kk, s, a: env.step(kk, s, a, params))(step_keys, states, actions)
        states = jax.lax.cond(
            done.any(),
            lambda s: tree_where(done, reset(jax.random.split(reset_key, batch)), s),
            lambda s: s,
            states,
        )
        return states, None

    states, _ = jax.lax.scan(move, states, jax.random.split(moves_key, num_moves))
    return states


def parallel_step(env: Env, key, state, actions, params=None):
    """Score G candidate actions from the SAME state: `vmap(step)` over the actions, each with
    its own key (fold_in of the sample index, so sample g's randomness does not depend on G).

    Exact by construction: the input state is immutable, so every sample sees the same board
    (G1 restored boards in place and got this wrong for 2048: docs/envs.md, "The original's
    bugs"), and nothing auto-resets. Returns (states[G], rewards[G], dones[G], infos[G])."""
    actions = jnp.asarray(actions)  # no cast: `step` checks that the ids are integers
    keys = jax.vmap(lambda g: jax.random.fold_in(key, g))(jnp.arange(actions.shape[0]))
    return jax.vmap(lambda k, a: env.step(k, state, a, params))(keys, actions)


def render_batch(env: Env, states, params=None):
    """Frames uint8 [B, H, W, 3] of a batch of states."""
    return jax.vmap(lambda s: env.render(s, params))(states)


def render_into(env: Env, frames, states, params=None):
    """`render_batch` written into an existing frames buffer. Jit it with `frames` donated
    (`donate_argnums`) and XLA reuses the buffer: on CPU, writing a fresh output buffer costs
    a page fault per 4 KiB, which for large frames costs about as much as drawing them."""
    new = render_batch(env, states, params)
    if new.shape != frames.shape or new.dtype != frames.dtype:
        raise ValueError(
            f"frames buffer is {frames.dtype}{list(frames.shape)}, the batch renders {new.dtype}{list(new.shape)}"
        )
    # an update of the donated buffer (not a new array) is what lets XLA draw in place
    return frames.at[...].set(new)
