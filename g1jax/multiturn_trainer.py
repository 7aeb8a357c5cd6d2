"""Multi-turn RL (issue #23): the Trainer's run with episodes in place of G1's one answer per state.

One RL step:

    rollout   S start states -> G trajectories of up to T turns each            rl/episodes.py
    batch     every played turn of every trajectory as its own row (bounded length), trajectory-major
    update    per-turn advantages on the device (config.multiturn.credit)         rl/credit.py
              -> micro-batched (sum, count) loss over the answer tokens of every turn -> one optax update
              (with grpo.ppo_epochs / ppo_minibatches: epochs of mini-batches of whole trajectories)
    log       the update's metrics, episode metrics (return, success, turns, invalid-answer rate), speed

The cold start (G1's single-turn SFT), checkpoints, exact resume, the mesh and logging are the Trainer's.
The held-out evaluation plays episodes: the policy before and after RL and a random player on the same
held-out start states, compared per start state with standard errors.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from g1jax import heldout
from g1jax import sharding as mesh_lib
from g1jax.config import TrainConfig
from g1jax.models.config import ConfigError
from g1jax.rl import credit
from g1jax.rl.episodes import EpisodeConfig, EpisodeRollout, Episodes, episode_success, random_play
from g1jax.trainer import HELD_OUT_STREAM, Trainer
from g1jax.update import (
    Batch,
    GRPOSettings,
    OptimizerSettings,
    Placement,
    TrainState,
    _accumulated_gradients,
    _apply,
    _grpo_micro_loss,
    _micro_batches,
    _old_logprobs,
    _split_rows,
    shard_batch,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TurnSettings(GRPOSettings):
    """What the multi-turn step reads besides its arrays: the GRPO step's settings (image_grids: one per
    frame of every turn row; grpo.group_size: trajectories per start state) and the credit assignment."""

    credit: credit.CreditConfig
    # ((turns, image_grids), ...): the played turns batched together, one Batch each. With history frames
    # a turn before k holds fewer frames than the later ones, so its rows need their own batch shape
    turn_groups: tuple = ()

    @property
    def answers_per_prompt(self) -> int:
        return 1  # a turn row is its own prompt; the G trajectories' prompts differ after turn 0

    def of_group(self, index: int) -> TurnSettings:
        """These settings for the rows of turn group `index` (its batch's image grids)."""
        return dataclasses.replace(self, image_grids=self.turn_groups[index][1])


def _summed(parts):
    """The elementwise sum of (grads, (count, metric sums)) trees: the (sum, count) loss over several
    batches is exactly the loss over their rows together."""
    return functools.reduce(lambda a, b: jax.tree.map(jnp.add, a, b), parts)


def _grouped_ppo_epochs(state, batches, rows, grad_fns, *, settings: TurnSettings, placement: Placement):
    """`update._ppo_epochs` over several turn groups: mini-batch m holds the m-th share of the start
    states in every group (whole trajectories), and one optimizer step sums the groups' gradients."""
    parts = settings.grpo.ppo_minibatches
    minibatches = tuple((_micro_batches(b, parts), _split_rows(r, parts)) for b, r in zip(batches, rows))
    micro_count = settings.micro_batches // parts

    def minibatch_step(state, minibatch):
        grads, (count, metric_sums) = _summed(
            _accumulated_gradients(grad_fn, state.params, *group, micro_count)
            for grad_fn, group in zip(grad_fns, minibatch)
        )
        return _apply(settings, placement, state, grads, count, metric_sums)

    def epoch(state, _):
        return jax.lax.scan(minibatch_step, state, minibatches)

    state, metrics = jax.lax.scan(epoch, state, None, length=settings.grpo.ppo_epochs)
    return state, jax.tree.map(jnp.mean, metrics)


@functools.partial(jax.jit, static_argnames=("graphdef", "settings", "placement"), donate_argnums=(0,))
def multiturn_update(
    state: TrainState,
    frozen,
    reference,
    batches: tuple[Batch, ...],
    rewards,
    active,
    keys,
    *,
    graphdef,
    settings: TurnSettings,
    placement: Placement,
):
    """One update on the turn rows of a rollout, one Batch per turn group of `settings.turn_groups`
    (`Episodes.turn_batch(turns)`: row n * len(turns) + i is turn turns[i] of trajectory n): advantages
    from rewards / active [N, T] and state keys [N, T, 2] by `settings.credit`, then the micro-batched
    (sum, count) loss over every turn's answer tokens, summed over the groups, and one optimizer step
    (with grpo.ppo_epochs / ppo_minibatches, `updates_per_rollout` steps against the sampler's log-probs)."""
    advantages = credit.turn_advantages(rewards, active, keys, settings.grpo.group_size, settings.credit)
    # the GRPO step's micro-batch loss and, with PPO epochs / mini-batches, its epochs: the rows are
    # trajectory-major and ppo_minibatches divides the start states, so every mini-batch (and micro-batch)
    # holds whole trajectories; the advantages are computed once over the whole rollout, as in grpo_update
    grad_fns, group_rows = [], []
    for index, (turns, _) in enumerate(settings.turn_groups):
        loss = functools.partial(
            _grpo_micro_loss, frozen=frozen, reference=reference, graphdef=graphdef, settings=settings.of_group(index)
        )
        grad_fns.append(jax.grad(lambda p, b, r, loss=loss: loss(p, micro=b, rows=r), has_aux=True))
        group_rows.append(advantages[:, jnp.asarray(turns)].reshape(-1))
    if len(batches) != len(grad_fns):
        raise ValueError(f"{len(batches)} batches for {len(grad_fns)} turn groups")
    if settings.grpo.updates_per_rollout == 1:  # old = current: no extra forward pass
        grads, (count, metric_sums) = _summed(
            _accumulated_gradients(grad_fn, state.params, batch, (rows, None), settings.micro_batches)
            for grad_fn, batch, rows in zip(grad_fns, batches, group_rows)
        )
        state, metrics = _apply(settings, placement, state, grads, count, metric_sums)
    else:
        rows = tuple(
            (advantages, _old_logprobs(state.params, frozen, batch, graphdef=graphdef, settings=settings.of_group(i)))
            for i, (batch, advantages) in enumerate(zip(batches, group_rows))
        )
        state, metrics = _grouped_ppo_epochs(state, batches, rows, grad_fns, settings=settings, placement=placement)
    played = jnp.maximum(jnp.sum(active), 1)
    metrics["frac_zero_advantage"] = jnp.sum(active & (advantages == 0)) / played
    return state, metrics


def _mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(se)


class MultiTurnTrainer(Trainer):
    """The Trainer with `config.multiturn` episodes for RL (see the module docstring)."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, games=None, policy=None, reward_weights=None):
        """games / policy / reward_weights: a custom task (one game) and model, as for the Trainer."""
        if config.multiturn is None:
            raise ConfigError("MultiTurnTrainer needs config.multiturn (e.g. multiturn={'max_turns': 4})")
        if games is not None and len(games.games) != 1:
            raise ConfigError(f"multiturn episodes play one game, got custom games {[g.name for g in games.games]}")
        super().__init__(config, resume=resume, games=games, policy=policy, reward_weights=reward_weights)
        # the evaluation plays episodes (below), not the single-turn held-out rows of the Trainer
        self.eval_episodes, self.eval_rollout, self.eval_teacher = self.eval_rollout is not None, None, None

    def _init_steps(self) -> None:
        super()._init_steps()  # the cold start's step
        config, turns = self.config, self.config.multiturn
        game = self.rollout.games.games[0]
        self.episodes = EpisodeRollout(
            game,
            self.tokenizer,
            self.model_config,
            config=EpisodeConfig(
                group_size=config.group_size,
                max_turns=turns.max_turns,
                history=turns.history,
                history_frames=turns.history_frames,
                text_reward=turns.text_reward,
            ),
            sampling=config.sampling,
            reward_weights=self.rollout.weights[game.name],
            strict_format=config.strict_format,
            mesh=self.mesh,
        )
        self.warmup = (dict(self.rollout.warmup_moves)[game.name], self.rollout.warmup_policy)
        self._turn_static = dict(graphdef=self.graphdef, placement=Placement.of(self.state_shardings))

    def _turn_settings(self, episodes: Episodes, groups) -> TurnSettings:
        rows = episodes.turns[0].prompt_ids.shape[0]
        config = self.config
        turn_groups = tuple((tuple(turns), episodes.image_grids(rows * len(turns), turns[0])) for turns in groups)
        return TurnSettings(
            optimizer=OptimizerSettings.of(config, "rl"),
            # at least one micro-batch per mini-batch, as grpo_settings
            micro_batches=max(config.micro_batches, config.grpo.ppo_minibatches),
            image_grids=turn_groups[0][1],
            grpo=config.grpo,
            temperature=config.temperature,
            max_new_tokens=config.max_new_tokens,
            credit=config.multiturn.credit_config,
            turn_groups=turn_groups,
        )

    def play(self, key, params=None) -> tuple[Episodes, Any]:
        """(episodes, their start states) from `states_per_step` fresh start states (G1's warm-up)."""
        start_key, play_key = jax.random.split(key)
        moves, policy = self.warmup
        starts = self.episodes.start_states(start_key, self.config.states_per_step, moves, policy)
        params = (self.state.params, self.frozen) if params is None else params
        return self.episodes(self.graphdef, params, play_key, starts), starts

    def update(self, episodes: Episodes, groups=None) -> tuple[dict[str, float], tuple[Batch, ...]]:
        """One update of self.state on the episodes' turn rows, batched by `groups` (lists of played turns;
        default `Episodes.frame_groups()`, the turns with equal frame counts). Returns (metrics, batches)."""
        played = episodes.played
        groups = episodes.frame_groups() if groups is None else [list(turns) for turns in groups]
        batches = tuple(shard_batch(episodes.turn_batch(turns), self.mesh) for turns in groups)
        settings = self._turn_settings(episodes, groups)
        step_fn = mesh_lib.on_mesh(
            lambda *arrays: multiturn_update(*arrays, settings=settings, **self._turn_static), self.mesh
        )
        self.state, metrics = step_fn(
            self.state,
            self.frozen,
            self.reference,
            batches,
            episodes.rewards[:, :played],
            episodes.active[:, :played],
            episodes.keys[:, :played],
        )
        return {k: float(v) for k, v in mesh_lib.to_host(metrics).items()}, batches

    def train_step(self, step: int) -> dict[str, float]:
        started = time.perf_counter()
        episodes, _ = self.play(self.step_key(step))
        jax.block_until_ready(episodes.rewards)
        rollout_time = time.perf_counter() - started
        update_started = time.perf_counter()
        played = episodes.played
        metrics, batches = self.update(episodes)
        update_time = time.perf_counter() - update_started
        metrics.update({f"episode_{name}": value for name, value in episodes.metrics().items()})
        mask = np.concatenate([np.asarray(mesh_lib.to_host(b.completion_mask)) for b in batches])
        active_turns = float(mesh_lib.to_host(episodes.active).sum())
        metrics.update(
            # what the progress bar and the reward curve read: per-trajectory totals, mean answer length
            reward=metrics["episode_return"],
            reward_game=metrics["episode_game_return"],
            length_mean=float(mask.sum() / max(active_turns, 1.0)),
            step=step + 1,
            phase="rl",
            turns_played=played,
            time_rollout=rollout_time,
            time_update=update_time,
            time_step=rollout_time + update_time,
            turns_per_s=active_turns / max(rollout_time, 1e-9),
            tokens_per_s=float(mask.sum()) / max(rollout_time, 1e-9),
            host_parse_share=episodes.host_seconds / max(rollout_time, 1e-9),
        )
        return metrics

    # -------------------------------------------------------------- held-out episodes
    def evaluate_episodes(self) -> dict[str, Any]:
        """The policy on held-out start states (eval_states of them, states_per_step at a time, G
        trajectories each) and a random player on the same ones: per start state, the mean over its
        trajectories of return, game return and success."""
        config = self.config
        key = jax.random.fold_in(self.base_key, HELD_OUT_STREAM)
        rounds = -(-config.eval_states // config.states_per_step)
        out = {name: [] for name in ("return", "game_return", "success", "random_game_return", "random_success")}
        group = config.group_size
        for index in range(rounds):
            episodes, starts = self.play(jax.random.fold_in(key, index))
            per_start = lambda x: np.asarray(x, np.float64).reshape(-1, group).mean(1)  # noqa: E731
            rewards, active = mesh_lib.to_host((episodes.rewards, episodes.active))
            out["return"] += per_start(rewards.sum(1)).tolist()
            out["game_return"] += per_start((episodes.parts["game"] * active).sum(1)).tolist()
            out["success"] += per_start(episodes.success).tolist()
            rewards, active, legal, solved = jax.device_get(
                random_play(
                    self.episodes.env,
                    jax.random.fold_in(key, rounds + index),
                    starts,
                    group_size=group,
                    turns=config.multiturn.max_turns,
                )
            )
            out["random_game_return"] += per_start(rewards.sum(1)).tolist()
            # the policy's definition of success: winning where the game reports it (Sokoban, FrozenLake)
            solved = solved if self.episodes.reports_solved else None
            out["random_success"] += per_start(episode_success(active, legal, solved)).tolist()
        return {name: values[: config.eval_states] for name, values in out.items()}

    def begin_rl(self) -> None:
        super().begin_rl()
        if self.eval_episodes:
            self.eval_before = self.evaluate_episodes()
            self.logger.write_json("eval_before.json", self.eval_before)

    def run(self) -> dict[str, Any]:
        summary = super().run()
        if self.eval_episodes:
            before = self.eval_before if self.eval_before is not None else self.logger.read_json("eval_before.json")
            summary.update(episode_comparison(before, self.evaluate_episodes()))
            summary["wall_s"] = time.perf_counter() - self._created
            self.logger.write_json("summary.json", {k: v for k, v in summary.items() if k != "final"})
        return summary


def episode_comparison(before: dict, after: dict) -> dict[str, Any]:
    """The verdict of two held-out episode evaluations: means with standard errors over start states, and
    the paired gains of the policy after RL over the policy before RL and over the random player (in game
    return and success); `learned` when both gains exceed heldout.MARGIN_SE standard errors."""
    out = {}
    for name in ("return", "game_return", "success"):
        out[f"before_{name}"], out[f"before_{name}_se"] = _mean_se(before[name])
        out[f"after_{name}"], out[f"after_{name}_se"] = _mean_se(after[name])
    for name in ("game_return", "success"):
        out[f"random_{name}"], out[f"random_{name}_se"] = _mean_se(after[f"random_{name}"])
    beats = {}
    for name in ("game_return", "success"):
        gain, se = heldout.paired(after[name], before[name])
        out[f"gain_{name}"], out[f"gain_{name}_se"] = gain, se
        over, over_se = heldout.paired(after[name], after[f"random_{name}"])
        out[f"{name}_over_random"], out[f"{name}_over_random_se"] = over, over_se
        beats[name] = gain > heldout.MARGIN_SE * se and over > heldout.MARGIN_SE * over_se
    out["beats"] = beats
    out["learned"] = bool(any(beats.values()))
    return out


def episode_table(summary: dict) -> str:
    """The held-out episodes as lines: the policy before and after RL and the random player (mean ± SE over
    start states), then the paired gains."""
    lines = []
    for row in ("before", "after", "random"):
        names = ("game_return", "success") if row == "random" else ("return", "game_return", "success")
        cells = ", ".join(
            f"{name} {summary[f'{row}_{name}']:+.3f} ± {summary[f'{row}_{name}_se']:.3f}" for name in names
        )
        lines.append(f"{row}: {cells}")
    for name in ("game_return", "success"):
        lines.append(
            f"{name}: after - before {summary[f'gain_{name}']:+.3f} ± {summary[f'gain_{name}_se']:.3f}; after - random "
            f"{summary[f'{name}_over_random']:+.3f} ± {summary[f'{name}_over_random_se']:.3f}"
        )
    lines.append(f"learned: {summary['learned']}")
    return "\n".join(lines)
