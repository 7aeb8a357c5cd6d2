"""Multi-turn credit assignment as pure, jittable float32 functions: which advantage each turn of an
episode gets. The formulas and their sources are written out in docs/grpo.md, "Multi-turn credit".

Shapes: N trajectories of up to T turns, laid out group-major (trajectory n belongs to episode group
n // G: the G trajectories played from one start state are contiguous). Per turn: rewards float [N, T],
active bool [N, T] (the board had not finished before the turn, so the turn was played; rewards of
inactive turns are ignored), keys [N, T, K] integers identifying the state the turn acted from (equal
keys = the same state; `state_hash` makes a 64-bit key of any state or frame on the device). Every
function returns 0 on inactive turns. Configuration arguments (group size, gamma, mode names) are
Python values checked eagerly, so a bad one is a one-line ValueError before anything is traced.

    episode   every turn gets its trajectory's normalised total return (GRPO over the G trajectories)
    gigpo     episode + step_weight * step advantage: the discounted return from the turn, normalised
              within its step group (turns of the episode group that acted from identical states)
    turn      the discounted return from the turn minus a turn-index baseline (the mean return at the
              same turn index of the group's other trajectories still playing)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from g1jax.rl.grpo import ADVANTAGE_ESTIMATORS, _check_choice, _check_group_size, _check_positive, _is_real

CREDIT_MODES = ("episode", "gigpo", "turn")

# ---------------------------------------------------------------------------------------------
# Argument checks


def _check_gamma(gamma) -> None:
    if not (_is_real(gamma) and 0 <= gamma <= 1):
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")


def _turn_arrays(rewards, active, group_size) -> tuple[jax.Array, jax.Array]:
    _check_group_size(group_size)
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [trajectories, turns], got shape {rewards.shape}")
    active = jnp.asarray(active)
    if active.shape != rewards.shape:
        raise ValueError(f"active must have the shape of rewards {rewards.shape}, got {active.shape}")
    if rewards.shape[0] == 0 or rewards.shape[0] % group_size:
        raise ValueError(
            f"rewards has {rewards.shape[0]} trajectories, not a positive multiple of group_size {group_size}"
        )
    active = active.astype(bool)
    # an inactive turn's reward (a finished board) never counts, whatever the caller left there
    return jnp.where(active, rewards, 0.0), active


def _turn_keys(keys, shape) -> jax.Array:
    keys = jnp.asarray(keys)
    if keys.ndim == 2:
        keys = keys[..., None]
    if keys.ndim != 3 or keys.shape[:2] != shape or not jnp.issubdtype(keys.dtype, jnp.integer):
        raise ValueError(f"keys must be integers [{shape[0]}, {shape[1]}, K] (one key per turn), got {keys.shape}")
    return keys


# ---------------------------------------------------------------------------------------------
# Returns


def episode_returns(rewards, active) -> jax.Array:
    """float32 [N]: each trajectory's undiscounted total reward over its active turns."""
    rewards = jnp.asarray(rewards, jnp.float32)
    return jnp.sum(jnp.where(jnp.asarray(active, bool), rewards, 0.0), axis=1)


def discounted_returns(rewards, active, gamma: float) -> jax.Array:
    """float32 [N, T]: R_t = r_t + gamma * R_{t+1} over active turns (0 on inactive ones).

    A trajectory's active turns are a prefix (a finished board stays finished), so the inactive tail
    adds 0 and the recursion needs no per-row end index."""
    _check_gamma(gamma)
    rewards = jnp.asarray(rewards, jnp.float32)
    active = jnp.asarray(active, bool)
    if rewards.ndim != 2 or active.shape != rewards.shape:
        raise ValueError(f"rewards and active must both be [trajectories, turns], got {rewards.shape}, {active.shape}")
    rewards = jnp.where(active, rewards, 0.0)

    def back(carry, reward):
        value = reward + gamma * carry
        return value, value

    _, returns = jax.lax.scan(back, jnp.zeros(rewards.shape[0], jnp.float32), rewards.T, reverse=True)
    return jnp.where(active, returns.T, 0.0)


# ---------------------------------------------------------------------------------------------
# (a) Episode-level GRPO


def episode_advantages(rewards, active, group_size: int, estimator: str = "grpo", eps: float = 1e-6) -> jax.Array:
    """float32 [N, T]: every active turn gets its trajectory's group-relative advantage of the total
    return (`estimator` as in grpo.group_advantages; each trajectory counts once in its group's
    statistics, however many turns it played)."""
    _check_choice("estimator", estimator, ADVANTAGE_ESTIMATORS)
    _check_positive("eps", eps)
    rewards, active = _turn_arrays(rewards, active, group_size)
    totals = jnp.sum(rewards, axis=1).reshape(-1, group_size)
    advantages = ADVANTAGE_ESTIMATORS[estimator](totals, eps).reshape(-1)
    return jnp.where(active, advantages[:, None], 0.0)


# ---------------------------------------------------------------------------------------------
# (b) GiGPO step groups


def _fmix32(x: jax.Array) -> jax.Array:
    # MurmurHash3's 32-bit finaliser: every input bit flips each output bit with probability ~1/2
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


HASH_SEEDS = (0x9E3779B9, 0x7F4A7C15)  # one per 32-bit lane of the key


def state_hash(tree) -> jax.Array:
    """uint32 [2]: a 64-bit hash of every leaf of `tree` (a state, a frame); vmap it for a batch.

    Each element is mixed with its flat position before the lanes sum them, so equal trees give equal
    keys and two different trees collide with probability about 2^-64. Leaves are read as 32-bit words
    (wider leaves are rounded to int32/float32 first: game states and uint8 frames fit)."""
    words = []
    for leaf in jax.tree.leaves(tree):
        leaf = jnp.asarray(leaf)
        if leaf.dtype == jnp.bool_:
            leaf = leaf.astype(jnp.uint8)
        if leaf.dtype.itemsize > 4:
            leaf = leaf.astype(jnp.float32 if jnp.issubdtype(leaf.dtype, jnp.floating) else jnp.int32)
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            leaf = jax.lax.bitcast_convert_type(leaf.astype(jnp.float32), jnp.uint32)
        words.append(leaf.reshape(-1).astype(jnp.uint32))
    if not words:
        raise ValueError("state_hash needs a tree with at least one array leaf")
    flat = jnp.concatenate(words)
    index = jnp.arange(flat.shape[0], dtype=jnp.uint32)
    lanes = [
        jnp.sum(_fmix32(_fmix32(index * jnp.uint32(2) + jnp.uint32(seed)) ^ flat), dtype=jnp.uint32)
        for seed in HASH_SEEDS
    ]
    return jnp.stack(lanes)


def _step_membership(keys, active, group_size) -> tuple[jax.Array, jax.Array]:
    """same bool [S, M, M] (M = G * T turns of an episode group, trajectory-major): turns i and j acted
    from equal keys, both active (an inactive turn is alone in its own group); and active [S, M]."""
    num, turns, width = keys.shape
    keys = keys.reshape(num // group_size, group_size * turns, width)
    active = active.reshape(num // group_size, group_size * turns)
    same = jnp.all(keys[:, :, None, :] == keys[:, None, :, :], axis=-1)
    same = same & active[:, :, None] & active[:, None, :]
    return same | jnp.eye(group_size * turns, dtype=bool)[None], active


def step_groups(keys, active, group_size: int) -> tuple[jax.Array, jax.Array]:
    """(group ids int32 [N, T], sizes int32 [N, T]) of GiGPO's step groups, found on the device: active
    turns of one episode group whose keys are equal share a group; its id is the flat index n * T + t of
    its first turn (trajectory-major), its size how many turns it holds. Inactive turns are singletons."""
    _check_group_size(group_size)
    active = jnp.asarray(active, bool)
    keys = _turn_keys(keys, active.shape)
    if active.shape[0] == 0 or active.shape[0] % group_size:
        raise ValueError(f"{active.shape[0]} trajectories are not a positive multiple of group_size {group_size}")
    same, _ = _step_membership(keys, active, group_size)
    groups, members = same.shape[0], same.shape[1]
    first = jnp.argmax(same, axis=-1).astype(jnp.int32) + (jnp.arange(groups, dtype=jnp.int32) * members)[:, None]
    sizes = jnp.sum(same, axis=-1, dtype=jnp.int32)
    return first.reshape(active.shape), sizes.reshape(active.shape)


def step_advantages(returns, keys, active, group_size: int, estimator: str = "drgrpo", eps: float = 1e-6):
    """float32 [N, T]: each active turn's return (e.g. `discounted_returns`) relative to its step group.

    With c = returns of the group: drgrpo (GiGPO's mean_norm) c_i - mean(c); grpo (mean_std_norm)
    (c_i - mean(c)) / (std(c, ddof=1) + eps); rloo c_i - mean of the others. A singleton group gets 0
    (GiGPO: its mean is its own return), a group of equal returns exactly 0."""
    _check_choice("estimator", estimator, ADVANTAGE_ESTIMATORS)
    _check_positive("eps", eps)
    returns, active = _turn_arrays(returns, active, group_size)
    keys = _turn_keys(keys, active.shape)
    same, flat_active = _step_membership(keys, active, group_size)
    values = returns.reshape(flat_active.shape)
    count = jnp.sum(same, axis=-1).astype(jnp.float32)
    # Centre on the group's first member, so identical returns give exactly 0 (cf. grpo._centered).
    reference = jnp.take_along_axis(values, jnp.argmax(same, axis=-1), axis=-1)
    shifted = jnp.where(same, values[:, None, :] - reference[:, :, None], 0.0)  # [S, i, j]
    mean = jnp.sum(shifted, axis=-1) / count
    centered = values - reference - mean
    if estimator == "grpo":
        spread = jnp.where(same, shifted - mean[:, :, None], 0.0)
        std = jnp.sqrt(jnp.sum(spread**2, axis=-1) / jnp.maximum(count - 1, 1.0))
        centered = centered / (jnp.where(count > 1, std, 1.0) + eps)
    elif estimator == "rloo":
        centered = centered * jnp.where(count > 1, count / jnp.maximum(count - 1, 1.0), 0.0)
    return jnp.where(active, centered.reshape(active.shape), 0.0)


def gigpo_advantages(
    rewards,
    active,
    keys,
    group_size: int,
    *,
    gamma: float = 0.95,
    step_weight: float = 1.0,
    estimator: str = "drgrpo",
    eps: float = 1e-6,
) -> jax.Array:
    """float32 [N, T]: GiGPO's A = A_episode + step_weight * A_step (arXiv 2505.10978, Eq. 8), the
    episode part over total returns, the step part over discounted returns within step groups, both
    normalised by `estimator` (drgrpo = GiGPO's mean_norm, grpo = mean_std_norm)."""
    if not (_is_real(step_weight) and step_weight >= 0):
        raise ValueError(f"step_weight must be a finite number >= 0, got {step_weight!r}")
    episode = episode_advantages(rewards, active, group_size, estimator, eps)
    returns = discounted_returns(rewards, active, gamma)
    return episode + step_weight * step_advantages(returns, keys, active, group_size, estimator, eps)


# ---------------------------------------------------------------------------------------------
# (c) Discounted returns with a turn-level baseline


def turn_baseline_advantages(rewards, active, group_size: int, gamma: float = 1.0) -> jax.Array:
    """float32 [N, T]: R_t(gamma) minus the mean R_t of the group's OTHER trajectories still active at
    turn t (0 when none is). Leaving the trajectory itself out keeps the baseline independent of its own
    actions, hence the gradient unbiased (docs/grpo.md: a per-turn-index mean that includes the
    trajectory depends on when it stopped)."""
    rewards, active = _turn_arrays(rewards, active, group_size)
    returns = discounted_returns(rewards, active, gamma).reshape(-1, group_size, rewards.shape[1])
    live = active.reshape(returns.shape).astype(jnp.float32)
    # Centred on the group's first trajectory at each turn, so equal returns give exactly 0.
    shifted = returns - returns[:, :1]
    others = jnp.sum(live, axis=1, keepdims=True) - live
    baseline = (jnp.sum(shifted * live, axis=1, keepdims=True) - shifted * live) / jnp.maximum(others, 1.0)
    advantages = jnp.where(others > 0, shifted - baseline, returns)
    return jnp.where(active, advantages.reshape(rewards.shape), 0.0)


# ---------------------------------------------------------------------------------------------
# Selection


@dataclasses.dataclass(frozen=True, kw_only=True)
class CreditConfig:
    """Which credit assignment a multi-turn run uses (hashable: a static argument of jit). See
    docs/grpo.md. estimator normalises the episode (and GiGPO's step) advantages; turn mode has none."""

    mode: str = "episode"  # one of CREDIT_MODES
    estimator: str = "grpo"  # a key of grpo.ADVANTAGE_ESTIMATORS
    gamma: float = 0.95  # GiGPO's step returns and turn mode's returns
    step_weight: float = 1.0  # GiGPO's omega
    eps: float = 1e-6

    def __post_init__(self):
        _check_choice("mode", self.mode, CREDIT_MODES)
        _check_choice("estimator", self.estimator, ADVANTAGE_ESTIMATORS)
        _check_gamma(self.gamma)
        if not (_is_real(self.step_weight) and self.step_weight >= 0):
            raise ValueError(f"step_weight must be a finite number >= 0, got {self.step_weight!r}")
        _check_positive("eps", self.eps)


def turn_advantages(rewards, active, keys, group_size: int, config: CreditConfig) -> jax.Array:
    """float32 [N, T]: the advantage of every turn under `config` (keys are read by gigpo only)."""
    if not isinstance(config, CreditConfig):
        raise ValueError(f"config must be a CreditConfig, got {type(config).__name__}")
    if config.mode == "episode":
        return episode_advantages(rewards, active, group_size, config.estimator, config.eps)
    if config.mode == "gigpo":
        return gigpo_advantages(
            rewards,
            active,
            keys,
            group_size,
            gamma=config.gamma,
            step_weight=config.step_weight,
            estimator=config.estimator,
            eps=config.eps,
        )
    return turn_baseline_advantages(rewards, active, group_size, config.gamma)
