"""Reinforcement learning for g1jax: the GRPO algorithm core (g1jax.rl.grpo, see docs/grpo.md)."""

from g1jax.rl.grpo import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATION_MODES,
    KL_KINDS,
    GRPOConfig,
    aggregate,
    group_advantages,
    grpo_loss_terms,
    kl_penalty,
    ratio_of,
    tis_weights,
    token_policy_loss,
    zero_spread_groups,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATION_MODES",
    "KL_KINDS",
    "GRPOConfig",
    "aggregate",
    "group_advantages",
    "grpo_loss_terms",
    "kl_penalty",
    "ratio_of",
    "tis_weights",
    "token_policy_loss",
    "zero_spread_groups",
]
