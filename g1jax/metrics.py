"""What a training step reports about its answers (the held-out rows: g1jax/heldout.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from g1jax.rl.rewards import PARTS
from g1jax.rl.rollout import Rollout
from g1jax.sharding import to_host


def rollout_metrics(rollout: Rollout, game_names: Sequence[str], group_size: int) -> dict[str, float]:
    """Reward parts (overall and per game), answer lengths, truncation, valid-action rate."""
    out = {"reward": float(np.mean(rollout.rewards)), "reward_std": float(np.std(rollout.rewards))}
    rows = np.repeat(np.asarray(game_names, dtype=object), group_size)
    for part in (*PARTS, "legal", "perception_exact", "perception_cells", "format_strict"):
        values = np.asarray(rollout.parts[part], np.float32)
        out[f"reward_{part}" if part in PARTS else part] = float(values.mean())
    exact = np.asarray(rollout.parts["perception_exact"], bool)
    good = np.asarray(rollout.parts["game"]) > 0
    out["perception_accuracy"] = float(exact.mean())
    out["reasoning_accuracy"] = float(good[exact].mean()) if exact.any() else float("nan")
    for name in dict.fromkeys(game_names):
        sel = rows == name
        out[f"{name}/reward"] = float(np.mean(rollout.rewards[sel]))
        out[f"{name}/reward_game"] = float(np.mean(rollout.parts["game"][sel]))
    lengths, truncated = to_host((rollout.samples.lengths, rollout.samples.truncated))
    out.update(
        length_mean=float(lengths.mean()),
        length_max=float(lengths.max()),
        truncated_frac=float(np.mean(truncated)),
    )
    return out
