"""GRPO's algorithm core as pure, jittable float32 functions.

Group-relative advantages (grpo, drgrpo, rloo), the PPO clipped token loss with separate low/high
epsilon and an optional dual clip, Schulman's k1/k2/k3 KL estimators, truncated importance sampling
between sampler and trainer, and loss aggregation as (sum, count) pairs so that micro-batch
accumulation reproduces the one-big-batch value exactly. Every formula and its source paper is
written out in docs/grpo.md.

Shapes: B sequences (completions), L token positions. Token arrays are float [B, L], the mask
is bool or 0/1 [B, L] (1 on the completion tokens that are trained), advantages are float [B].
Configuration arguments (group sizes, epsilons, mode names) are Python values, checked eagerly,
so a bad one is a one-line ValueError before anything is traced.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

# ---------------------------------------------------------------------------------------------
# Argument checks (shared by the functions and GRPOConfig so both say the same thing)


def _is_real(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")


def _check_positive(name: str, value) -> None:
    if not (_is_real(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_group_size(group_size) -> None:
    if not (isinstance(group_size, int) and not isinstance(group_size, bool) and group_size >= 2):
        raise ValueError(f"group_size must be an integer >= 2 (a group of one has no baseline), got {group_size!r}")


def _check_count(name: str, value) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_clip_args(clip_low, clip_high, dual_clip) -> None:
    if not (_is_real(clip_low) and 0 < clip_low < 1):
        raise ValueError(f"clip_low must be a number in (0, 1) (so that 1 - clip_low > 0), got {clip_low!r}")
    _check_positive("clip_high", clip_high)
    if dual_clip is not None and not (_is_real(dual_clip) and dual_clip > 1):
        raise ValueError(f"dual_clip must be None or a number > 1, got {dual_clip!r}")


def _check_tis_cap(name: str, cap) -> None:
    if not (_is_real(cap) and cap >= 1):
        raise ValueError(f"{name} must be a number >= 1 (it truncates large importance weights), got {cap!r}")


def _token_array(name: str, value, shape=None) -> jax.Array:
    array = jnp.asarray(value, jnp.float32)
    if shape is None and array.ndim != 2:
        raise ValueError(f"{name} must be [batch, length], got shape {array.shape}")
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    return array


# ---------------------------------------------------------------------------------------------
# Advantages


def _centered(grouped: jax.Array) -> jax.Array:
    # Shifting by the group's first reward first makes an all-equal group exactly 0 (the float mean
    # of identical values can be off by an ulp) without changing r - mean mathematically.
    shifted = grouped - grouped[:, :1]
    return shifted - jnp.mean(shifted, axis=1, keepdims=True)


def _grpo_advantages(grouped: jax.Array, eps: float) -> jax.Array:
    centered = _centered(grouped)
    std = jnp.sqrt(jnp.sum(centered**2, axis=1, keepdims=True) / (grouped.shape[1] - 1))  # ddof=1
    return centered / (std + eps)


def _drgrpo_advantages(grouped: jax.Array, eps: float) -> jax.Array:
    del eps  # Dr. GRPO drops the std division, so there is nothing to protect
    return _centered(grouped)


def _rloo_advantages(grouped: jax.Array, eps: float) -> jax.Array:
    del eps
    size = grouped.shape[1]
    # r_i - mean of the other G-1 equals G/(G-1) * (r_i - group mean)
    return _centered(grouped) * (size / (size - 1))


ADVANTAGE_ESTIMATORS: dict[str, Callable[[jax.Array, float], jax.Array]] = {
    "grpo": _grpo_advantages,
    "drgrpo": _drgrpo_advantages,
    "rloo": _rloo_advantages,
}


def _grouped_rewards(rewards, group_size) -> jax.Array:
    _check_group_size(group_size)
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be one-dimensional [num_groups * group_size], got shape {rewards.shape}")
    if rewards.shape[0] == 0 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards has {rewards.shape[0]} entries, not a positive multiple of group_size {group_size}")
    return rewards.reshape(-1, group_size)


def group_advantages(rewards, group_size: int, estimator: str = "grpo", eps: float = 1e-6) -> jax.Array:
    """Advantages [N] from rewards [N]; row i belongs to group i // group_size (groups contiguous).

    grpo: (r - mean_g) / (std_g(ddof=1) + eps); drgrpo: r - mean_g; rloo: r - mean of the other
    G-1 rewards. A group whose rewards are all equal gets exactly 0. See docs/grpo.md.
    """
    _check_choice("estimator", estimator, ADVANTAGE_ESTIMATORS)
    _check_positive("eps", eps)
    grouped = _grouped_rewards(rewards, group_size)
    return ADVANTAGE_ESTIMATORS[estimator](grouped, eps).reshape(-1)


def zero_spread_groups(rewards, group_size: int) -> jax.Array:
    """bool [num_groups]: True where every reward of the group is equal (no learning signal)."""
    grouped = _grouped_rewards(rewards, group_size)
    return jnp.all(grouped == grouped[:, :1], axis=1)


# ---------------------------------------------------------------------------------------------
# Per-token terms


def token_policy_loss(
    logp,
    old_logp,
    advantages,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    max_log_ratio: float = 20.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO clipped surrogate per token, as a loss to minimise: (loss [B, L], stats of [B, L] floats).

    ratio = exp(clamp(logp - old_logp, +-max_log_ratio)); loss = max(-A ratio, -A clip(ratio,
    1 - clip_low, 1 + clip_high)), and with dual_clip = C also min(that, -C A) where A < 0.
    stats: clipped_low / clipped_high / clipped_dual (1.0 where that bound holds the loss constant,
    so the token gives no gradient) and ratio. See docs/grpo.md.
    """
    _check_clip_args(clip_low, clip_high, dual_clip)
    _check_positive("max_log_ratio", max_log_ratio)
    logp = _token_array("logp", logp)
    old_logp = _token_array("old_logp", old_logp, logp.shape)
    advantages = jnp.asarray(advantages, jnp.float32)
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must have shape {logp.shape[:1]} (one per sequence), got {advantages.shape}")
    adv = advantages[:, None]
    ratio = jnp.exp(jnp.clip(logp - old_logp, -max_log_ratio, max_log_ratio))
    # The max of the two surrogates written as explicit cases, so a clipped token's gradient is
    # exactly zero and an unclipped one's is exactly -A * ratio (no tie-splitting inside jnp.maximum).
    clipped_high = (adv > 0) & (ratio > 1 + clip_high)
    clipped_low = (adv < 0) & (ratio < 1 - clip_low)
    loss = jnp.where(clipped_high, -adv * (1 + clip_high), jnp.where(clipped_low, -adv * (1 - clip_low), -adv * ratio))
    if dual_clip is None:
        clipped_dual = jnp.zeros_like(clipped_high)
    else:
        clipped_dual = (adv < 0) & (ratio > dual_clip)
        loss = jnp.where(clipped_dual, -adv * dual_clip, loss)
    stats = {
        "clipped_low": clipped_low.astype(jnp.float32),
        "clipped_high": clipped_high.astype(jnp.float32),
        "clipped_dual": clipped_dual.astype(jnp.float32),
        "ratio": ratio,
    }
    return loss, stats


KL_KINDS = ("k1", "k2", "k3")


def kl_penalty(logp, ref_logp, kind: str = "k3", *, log_ratio_clamp: float = 20.0, clamp: float = 10.0) -> jax.Array:
    """Per-token estimate [B, L] of KL(policy || reference) from the sampled tokens' log-probs.

    With d = ref_logp - logp: k1 = -d, k2 = d^2 / 2, k3 = exp(d) - d - 1. As in verl's
    low_var_kl, k3 clamps d to +-log_ratio_clamp and the result to +-clamp; k1 and k2 are returned
    unclamped. See docs/grpo.md.
    """
    _check_choice("kind", kind, KL_KINDS)
    _check_positive("log_ratio_clamp", log_ratio_clamp)
    _check_positive("clamp", clamp)
    logp = _token_array("logp", logp)
    delta = _token_array("ref_logp", ref_logp, logp.shape) - logp
    if kind == "k1":
        return -delta
    if kind == "k2":
        return 0.5 * delta**2
    delta = jnp.clip(delta, -log_ratio_clamp, log_ratio_clamp)
    return jnp.clip(jnp.exp(delta) - delta - 1.0, -clamp, clamp)


def tis_weights(old_logp, sampler_logp, cap: float) -> jax.Array:
    """Truncated importance weights [B, L] = min(exp(old_logp - sampler_logp), cap), no gradient.

    old_logp is the trainer's log-prob of the sampled token at rollout time, sampler_logp the
    sampler's; the weight corrects for the two disagreeing numerically. See docs/grpo.md.
    """
    _check_tis_cap("cap", cap)
    old_logp = _token_array("old_logp", old_logp)
    sampler_logp = _token_array("sampler_logp", sampler_logp, old_logp.shape)
    # min(exp(x), cap) = exp(min(x, log cap)): the same value, and exp can never overflow
    return jax.lax.stop_gradient(jnp.exp(jnp.minimum(old_logp - sampler_logp, math.log(cap))))


# ---------------------------------------------------------------------------------------------
# Aggregation as (sum, count)

AGGREGATION_MODES = ("token-mean", "sequence-mean-token-mean", "sequence-mean-token-sum-norm")


def aggregate(values, mask, mode: str, max_len: int | None = None) -> tuple[jax.Array, jax.Array]:
    """(sum, count) float32 scalars whose ratio is the loss; both add across micro-batches.

    token-mean: (sum over active tokens, number of active tokens).
    sequence-mean-token-mean: (sum of each sequence's token mean, sequences with >= 1 active token).
    sequence-mean-token-sum-norm (Dr. GRPO): (sum over active tokens, sequences * max_len), max_len
    defaulting to the length L of values; pass the run's maximum response length when micro-batches
    are padded to different lengths. Inactive positions never enter a sum (NaN there is harmless).
    """
    _check_choice("mode", mode, AGGREGATION_MODES)
    values = _token_array("values", values)
    weights = _token_array("mask", mask, values.shape)
    length_ok = isinstance(max_len, int) and not isinstance(max_len, bool) and max_len >= values.shape[1]
    if max_len is not None and not length_ok:
        raise ValueError(f"max_len must be an integer >= the token length {values.shape[1]}, got {max_len!r}")
    active = weights > 0
    weighted = jnp.where(active, values * weights, 0.0)
    if mode == "token-mean":
        return jnp.sum(weighted), jnp.sum(weights)
    if mode == "sequence-mean-token-mean":
        row_count = jnp.sum(weights, axis=1)
        has_tokens = row_count > 0
        row_mean = jnp.sum(weighted, axis=1) / jnp.where(has_tokens, row_count, 1.0)
        return jnp.sum(jnp.where(has_tokens, row_mean, 0.0)), jnp.sum(has_tokens.astype(jnp.float32))
    length = values.shape[1] if max_len is None else max_len
    return jnp.sum(weighted), jnp.asarray(values.shape[0] * length, jnp.float32)


def ratio_of(total, count) -> jax.Array:
    """total / max(count, 1): an empty batch gives 0, never NaN."""
    return jnp.asarray(total, jnp.float32) / jnp.maximum(jnp.asarray(count, jnp.float32), 1.0)


# ---------------------------------------------------------------------------------------------
# Configuration and the combined loss


@dataclasses.dataclass(frozen=True, kw_only=True)
class GRPOConfig:
    """The GRPO loss settings (hashable: pass it to jit as a static argument). See docs/grpo.md."""

    group_size: int = 5
    advantage: str = "grpo"  # a key of ADVANTAGE_ESTIMATORS
    advantage_eps: float = 1e-6
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    kl_kind: str = "k3"  # one of KL_KINDS
    loss_agg: str = "token-mean"  # one of AGGREGATION_MODES
    tis_cap: float | None = None  # truncated importance sampling sampler -> trainer; None: off
    ppo_epochs: int = 1  # mu: passes over each rollout (verl's ppo_epochs, TRL's num_iterations)
    ppo_minibatches: int = 1  # mini-batches of whole groups per pass, one optimizer step each

    def __post_init__(self):
        _check_group_size(self.group_size)
        _check_choice("advantage", self.advantage, ADVANTAGE_ESTIMATORS)
        _check_positive("advantage_eps", self.advantage_eps)
        _check_clip_args(self.clip_low, self.clip_high, self.dual_clip)
        if not (_is_real(self.kl_coef) and self.kl_coef >= 0):
            raise ValueError(f"kl_coef must be a finite number >= 0, got {self.kl_coef!r}")
        _check_choice("kl_kind", self.kl_kind, KL_KINDS)
        _check_choice("loss_agg", self.loss_agg, AGGREGATION_MODES)
        if self.tis_cap is not None:
            _check_tis_cap("tis_cap", self.tis_cap)
        _check_count("ppo_epochs", self.ppo_epochs)
        _check_count("ppo_minibatches", self.ppo_minibatches)

    @property
    def needs_reference(self) -> bool:
        """Whether the loss uses the reference policy (otherwise its forward pass can be skipped)."""
        return self.kl_coef > 0

    @property
    def updates_per_rollout(self) -> int:
        """Optimizer steps per rollout: ppo_epochs passes of ppo_minibatches mini-batches each."""
        return self.ppo_epochs * self.ppo_minibatches

    @property
    def clip_is_inert(self) -> bool:
        """Whether clip settings other than the defaults are set but cannot act: with one optimizer step
        per rollout the ratio is exactly 1, so no bound is ever reached."""
        changed = (self.clip_low, self.clip_high, self.dual_clip) != (0.2, 0.2, None)
        return changed and self.updates_per_rollout == 1


def grpo_loss_terms(
    logp,
    old_logp,
    advantages,
    mask,
    config: GRPOConfig,
    ref_logp=None,
    sampler_logp=None,
    max_len: int | None = None,
) -> tuple[jax.Array, jax.Array, dict[str, tuple[jax.Array, jax.Array]]]:
    """(loss_sum, loss_count, metric_sums) for one micro-batch; the loss is ratio_of(sum, count)
    after summing both over micro-batches, and so is each metric.

    Per token: policy loss (times the TIS weight when config.tis_cap is set) + kl_coef * KL,
    aggregated by config.loss_agg. With one update per rollout pass old_logp =
    stop_gradient(logp); with several, the log-probs of the policy that sampled. Metrics (token
    means unless noted): policy_loss, clip_frac_low/high/dual,
    ratio_mean, abs_log_ratio_mean (|logp - old_logp|), kl (when ref_logp is given),
    sampler_abs_logp_diff (when sampler_logp is given), tis_weight_mean (when TIS is on), and over
    sequences with an active token advantage_mean, advantage_sq_mean, advantage_nonzero_frac.
    """
    if not isinstance(config, GRPOConfig):
        raise ValueError(f"config must be a GRPOConfig, got {type(config).__name__}")
    if config.needs_reference and ref_logp is None:
        raise ValueError("config.kl_coef > 0 needs ref_logp (the reference policy's token log-probs)")
    if config.tis_cap is not None and sampler_logp is None:
        raise ValueError("config.tis_cap is set but sampler_logp (the sampler's token log-probs) was not given")
    logp = _token_array("logp", logp)
    weights = _token_array("mask", mask, logp.shape)
    active = weights > 0

    def active_only(name, value):
        # Padding may carry any log-prob (even -inf); zeroing it before any exp keeps both the
        # values and the gradients finite, and the mask removes those positions afterwards.
        return jnp.where(active, _token_array(name, value, logp.shape), 0.0)

    logp, old_logp = active_only("logp", logp), active_only("old_logp", old_logp)
    policy, stats = token_policy_loss(
        logp, old_logp, advantages, clip_low=config.clip_low, clip_high=config.clip_high, dual_clip=config.dual_clip
    )

    def token_mean(values):
        return aggregate(values, weights, "token-mean")

    metrics = {}
    if sampler_logp is not None:
        sampler_logp = active_only("sampler_logp", sampler_logp)
        metrics["sampler_abs_logp_diff"] = token_mean(jnp.abs(old_logp - sampler_logp))
    if config.tis_cap is not None:
        tis = tis_weights(old_logp, sampler_logp, config.tis_cap)
        policy = policy * tis
        metrics["tis_weight_mean"] = token_mean(tis)
    per_token = policy
    if ref_logp is not None:
        kl = kl_penalty(logp, active_only("ref_logp", ref_logp), config.kl_kind)
        metrics["kl"] = token_mean(kl)
        if config.needs_reference:
            per_token = per_token + config.kl_coef * kl
    loss_sum, loss_count = aggregate(per_token, weights, config.loss_agg, max_len)

    metrics["policy_loss"] = token_mean(policy)
    metrics["clip_frac_low"] = token_mean(stats["clipped_low"])
    metrics["clip_frac_high"] = token_mean(stats["clipped_high"])
    metrics["clip_frac_dual"] = token_mean(stats["clipped_dual"])
    metrics["ratio_mean"] = token_mean(stats["ratio"])
    metrics["abs_log_ratio_mean"] = token_mean(jnp.abs(logp - old_logp))
    has_tokens = jnp.any(active, axis=1)
    sequences = jnp.sum(has_tokens.astype(jnp.float32))
    adv = jnp.where(has_tokens, jnp.asarray(advantages, jnp.float32), 0.0)
    metrics["advantage_mean"] = (jnp.sum(adv), sequences)
    metrics["advantage_sq_mean"] = (jnp.sum(adv**2), sequences)
    metrics["advantage_nonzero_frac"] = (jnp.sum((adv != 0).astype(jnp.float32)), sequences)
    return loss_sum, loss_count, metrics
