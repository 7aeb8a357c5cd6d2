"""The Trainer: a run's loop, its held-out evaluation, its checkpoints.

    trainer = make_trainer(TrainConfig(model="tiny", games=("2048",), steps=20, run_dir="runs/x"))
    summary = trainer.run()

One step, as data flows (every arrow on the device unless marked; module of each stage on the right):

    key_step = fold_in(seed, step)             the step's randomness is a function of the step alone,
                                               so a resumed run continues exactly
    rollout   start states -> frames -> prompts -> G samples -> (host) parse -> rewards   rl/rollout.py
    batch     prompts + samples + rewards, rows split over the mesh                      update.Batch
    update    advantages -> micro-batched (sum, count) GRPO loss -> optax update(s)     update.grpo_update
    log       rollout metrics, samples, checkpoint every N steps             metrics.py, run_logging.py

The cold start (`sft_steps` > 0) runs first on the same loop, with teacher answers in place of the samples
(`update.sft_update`). Building a trainer first makes the checks a config's values alone cannot make
(`check_buildable`), each a one-line ConfigError before anything loads or compiles.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import envs
from g1jax import heldout
from g1jax import sharding as mesh_lib
from g1jax.checkpoint import Checkpointer, abstract_like
from g1jax.config import TrainConfig
from g1jax.metrics import rollout_metrics
from g1jax.models.config import ConfigError
from g1jax.models.qwen25vl import Qwen25VL, trainable_filter
from g1jax.policy import check_model_source, load_policy
from g1jax.rl.rewards import g1_weights
from g1jax.rl.rollout import GameRollout, Rollout
from g1jax.run_logging import RunLogger
from g1jax.sft import TeacherData
from g1jax.teachers import TeacherError, make_teacher
from g1jax.tokenizer import Tokenizer
from g1jax.update import (
    Batch,
    OptimizerSettings,
    Placement,
    TrainState,
    grpo_settings,
    grpo_update,
    sft_settings,
    sft_update,
    shard_batch,
)

HELD_OUT_STREAM = 2**31 - 1  # fold_in index of the evaluation states (training steps use 0, 1, 2, ...)


# ------------------------------------------------------------------------------------------ build checks
def build_games(config: TrainConfig, states: int | None = None) -> envs.MultiGame:
    """The configured games with `states` rows (default: states_per_step); their own checks (options, image
    sizes) fail as one-line ConfigErrors."""
    states = config.states_per_step if states is None else states
    try:
        return envs.MultiGame.make(
            {g: states // len(config.games) for g in config.games},
            image_size=config.image_size,
            configs={k: dict(v) for k, v in config.game_options.items()},
        )
    except envs.ConfigError as error:
        raise ConfigError(str(error)) from None


def check_teachers(config: TrainConfig, games: envs.MultiGame) -> None:
    """Every game of the cold start has the teacher the config names."""
    try:
        for game in games.games:
            make_teacher(game, config.teacher_kind(game.name), epsilon=config.teacher_epsilon)
    except TeacherError as error:
        hint = (
            f" (teacher={config.teacher!r} applies to every game: name one per game, e.g. "
            f"{{{config.games[0]!r}: {config.teacher!r}}}, or None for each game's own default)"
            if isinstance(config.teacher, str)
            else ""
        )
        raise ConfigError(f"{error}{hint}") from None


def check_buildable(
    config: TrainConfig, games: envs.MultiGame | None = None, *, model: bool = True
) -> tuple[jax.sharding.Mesh, envs.MultiGame]:
    """The checks a config's values alone cannot make, on this machine: the mesh against its devices, the
    games' own checks, the model source (`model=False`: the trainer is given its policy) and the cold
    start's teachers. Returns what it built on the way: the mesh and the games (`games` when given)."""
    try:
        mesh = mesh_lib.make_mesh(config.mesh)
    except ValueError as error:
        raise ConfigError(f"mesh {config.mesh!r}: {error}") from None
    games = build_games(config) if games is None else games
    if model:
        check_model_source(config.model)
    if config.sft_steps:
        check_teachers(config, games)
    return mesh, games


# ------------------------------------------------------------------------------------------ trainer
class Trainer:
    """Holds a run: policy, rollout, jitted steps, checkpoints, logs. `run()` trains to `config.steps`."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: bool = False,
        games: envs.MultiGame | None = None,
        policy: tuple[Qwen25VL, Tokenizer] | None = None,
        reward_weights: Mapping[str, Mapping[str, float]] | None = None,
    ):
        """games / policy / reward_weights: a custom task instead of `config.games` (a MultiGame of your own
        `envs.Env` subclasses with `states_per_step` rows, and their reward weights by game name) and a
        model + tokenizer instead of `config.model`."""
        self._created = time.perf_counter()
        self.config = config
        if games is None:
            if reward_weights is not None:
                raise ConfigError(
                    "reward_weights= goes with games= (a custom task); weights for the configured "
                    "games belong in config.reward_weights, which the run directory keeps"
                )
            reward_weights = config.reward_weights
        elif games.size != config.states_per_step:
            raise ConfigError(
                f"the custom games have {games.size} rows but states_per_step is {config.states_per_step}"
            )
        self.mesh, games = check_buildable(config, games, model=policy is None)
        model, self.tokenizer = load_policy(config, self.mesh) if policy is None else policy
        self.model_config = model.config
        self.rollout = GameRollout(
            games,
            self.tokenizer,
            model.config,
            group_size=config.group_size,
            sampling=config.sampling,
            warmup_moves=dict(config.warmup_moves),
            warmup_policy=config.warmup_policy,
            reward_weights={n: g1_weights(n, w) for n, w in (reward_weights or {}).items()},
            strict_format=config.strict_format,
            mesh=self.mesh,
        )
        self._init_state(model)
        self._init_steps()
        if config.grpo.clip_is_inert:
            warnings.warn(
                "grpo clip_low / clip_high / dual_clip do nothing with one optimizer step per rollout (the ratio "
                "is always 1); set grpo.ppo_epochs or grpo.ppo_minibatches above 1 to make them act",
                stacklevel=2,
            )
        self.teacher_data = None
        if config.sft_steps:
            self.teacher_data = TeacherData(
                games, self.tokenizer, config.max_new_tokens, kind=config.teacher_kind, epsilon=config.teacher_epsilon
            )
        self.eval_rollout = self._held_out_rollout(games) if config.eval_states else None
        self.eval_teacher = self._held_out_teacher() if config.eval_states else None
        self.base_key = jax.random.key(config.seed)
        self.checkpoints = Checkpointer(os.path.join(config.run_dir, "checkpoints"), keep=config.keep_checkpoints)
        self.logger = RunLogger(config.run_dir, config.to_dict(), tensorboard=config.tensorboard)
        self.start_step = 0
        self.eval_before = None
        if resume:
            self._resume()

    def _init_state(self, model: Qwen25VL) -> None:
        """Parameters split into trainable and frozen, placed on the mesh, with a fresh RL optimizer state."""
        self.graphdef, params, frozen = nnx.split(model, trainable_filter(self.config.freeze_vision), ...)
        params, frozen = mesh_lib.shard_state(params, self.mesh), mesh_lib.shard_state(frozen, self.mesh)
        self.optimizer = OptimizerSettings.of(self.config, "rl").build()
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.optimizer.init(params))
        # Pin every leaf's sharding (the optimizer moments follow their parameters, counters are
        # replicated), in and out of the jitted step: a changed input sharding would recompile it.
        self.state_shardings = jax.tree.map(self._sharding_of, state)
        self.state = mesh_lib.place(state, self.state_shardings)
        self.frozen = frozen
        self.reference = jax.tree.map(jnp.copy, params) if self.config.grpo.needs_reference else None

    def _init_steps(self) -> None:
        """The jitted updates with this run's static arguments, called with the mesh set so the model's
        activation and weight constraints (g1jax.sharding, "inside the model") apply. Trainers with equal
        settings share jit's compiled program (a resume, a sweep over seeds, a test)."""
        grids = tuple(self.rollout.prompts.image_grids)
        static = dict(graphdef=self.graphdef, placement=Placement.of(self.state_shardings))
        self.grpo_static = dict(static, settings=grpo_settings(self.config, grids))
        self._train_step = mesh_lib.on_mesh(lambda *arrays: grpo_update(*arrays, **self.grpo_static), self.mesh)
        sft_static = dict(static, settings=sft_settings(self.config, grids))
        self._sft_step = mesh_lib.on_mesh(lambda *arrays: sft_update(*arrays, **sft_static), self.mesh)

    def _held_out_rollout(self, games: envs.MultiGame) -> GameRollout:
        """The training games on `eval_states` start states, one answer each."""
        config = self.config
        eval_games = envs.MultiGame(games.games, (config.eval_states // len(games.games),) * len(games.games))
        return GameRollout(
            eval_games,
            self.tokenizer,
            self.model_config,
            group_size=1,
            sampling=config.sampling,
            warmup_moves=dict(config.warmup_moves),
            warmup_policy=config.warmup_policy,
            reward_weights=self.rollout.weights,
            strict_format=config.strict_format,
            mesh=self.mesh,
        )

    def _held_out_teacher(self) -> TeacherData | None:
        """The cold-start teacher with its epsilon, answering the held-out states as a baseline row (games
        without a teacher, such as a custom task's: no teacher row)."""
        config = self.config
        try:
            return TeacherData(
                self.eval_rollout.games,
                self.tokenizer,
                config.max_new_tokens,
                kind=config.teacher_kind,
                epsilon=config.teacher_epsilon,
            )
        except TeacherError:
            return None

    def _sharding_of(self, leaf):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh == self.mesh:
            return sharding
        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())

    # -------------------------------------------------------------- checkpoints
    def _items(self) -> dict[str, Any]:
        items = {"params": self.state.params, "opt_state": self.state.opt_state}
        if self.reference is not None:
            items["reference"] = self.reference
        return items

    def save(self, step: int) -> None:
        meta = {
            "step": step,
            "seed": self.config.seed,
            "data_cursor": step,
            "rng_key": np.asarray(jax.random.key_data(self.base_key)).tolist(),
            "config": self.config.to_dict(),
        }
        self.checkpoints.save(step, self._items(), meta)

    def _resume(self) -> None:
        found = self.checkpoints.restore_latest({name: abstract_like(tree) for name, tree in self._items().items()})
        if found is None:
            self.logger.note(f"no checkpoint in {self.checkpoints.directory}: starting from step 0")
            return
        step, items, meta = found
        if meta["seed"] != self.config.seed:
            raise ConfigError(
                f"the checkpoint at step {step} was written by a run with seed {meta['seed']}, this "
                f"config has seed {self.config.seed}: a resumed run continues the same states and "
                "samples only with its own seed (or start a new run directory)"
            )
        self.state = mesh_lib.place(
            TrainState(step=jnp.asarray(step, jnp.int32), params=items["params"], opt_state=items["opt_state"]),
            self.state_shardings,
        )
        if self.reference is not None:
            self.reference = items["reference"]
        self.start_step = step
        self.logger.truncate_after(step)
        self.logger.note(f"resumed from step {step} ({self.checkpoints.directory})")

    # -------------------------------------------------------------- one step
    def step_key(self, step: int):
        return jax.random.fold_in(self.base_key, step)

    def collect(self, step: int) -> Rollout:
        return self.rollout(self.graphdef, (self.state.params, self.frozen), self.step_key(step))

    def _batch(self, pixel_values, completion, completion_mask, sampler_logprobs, rewards) -> Batch:
        """The update's batch: this run's prompts with one step's images, answers and rewards, split over the mesh."""
        p = self.rollout.prompts
        return shard_batch(
            Batch(
                prompt_ids=jnp.asarray(p.input_ids),
                prompt_mask=jnp.asarray(p.attention_mask),
                prompt_positions=jnp.asarray(p.positions),
                pixel_values=pixel_values,
                completion=jnp.asarray(completion),
                completion_mask=jnp.asarray(completion_mask),
                sampler_logprobs=sampler_logprobs,
                rewards=jnp.asarray(rewards),
            ),
            self.mesh,
        )

    def batch_of(self, rollout: Rollout) -> Batch:
        samples = rollout.samples
        return self._batch(rollout.pixel_values, samples.tokens, samples.mask, samples.logprobs, rollout.rewards)

    def train_step(self, step: int) -> dict[str, float]:
        """Roll out and update once (`step` is the 0-based index of this step); returns the step's metrics."""
        started = time.perf_counter()
        rollout = self.collect(step)
        jax.block_until_ready(rollout.samples.tokens)
        rollout_time = time.perf_counter() - started
        update_started = time.perf_counter()
        self.state, metrics = self._train_step(self.state, self.frozen, self.reference, self.batch_of(rollout))
        metrics = {k: float(v) for k, v in mesh_lib.to_host(metrics).items()}
        update_time = time.perf_counter() - update_started
        metrics.update(rollout_metrics(rollout, self.rollout.games.game_names, self.config.group_size))
        tokens = float(mesh_lib.to_host(rollout.samples.lengths).sum())
        metrics.update(
            step=step + 1,
            phase="rl",
            time_rollout=rollout_time,
            time_update=update_time,
            time_step=rollout_time + update_time,
            tokens_per_s=tokens / max(rollout_time, 1e-9),
        )
        if self.config.sample_every and (step + 1) % self.config.sample_every == 0:
            self.logger.samples(step + 1, rollout, self.config.group_size)
        return metrics

    def sft_step(self, step: int) -> dict[str, float]:
        """One cold-start update on fresh teacher answers (`step` < config.sft_steps)."""
        started = time.perf_counter()
        start_key, teacher_key = jax.random.split(self.step_key(step))
        states, _, pixel_values = self.rollout.start(start_key)
        if step < self.config.sft_perception_steps:
            texts = self.teacher_data.perception_answers(states)
        else:
            texts, _ = self.teacher_data.answers(teacher_key, states)
        completion, mask = self.teacher_data.tokens(texts)
        zeros = jnp.zeros(completion.shape, jnp.float32)
        batch = self._batch(pixel_values, completion, mask, zeros, zeros[:, 0])
        self.state, metrics = self._sft_step(self.state, self.frozen, batch)
        metrics = {k: float(v) for k, v in mesh_lib.to_host(metrics).items()}
        return dict(
            metrics,
            step=step + 1,
            phase="sft",
            answer_tokens=float(mask.sum(1).mean()),
            time_step=time.perf_counter() - started,
        )

    def begin_rl(self) -> None:
        """Entering RL: a fresh optimizer state, the reference = the policy entering RL, the 'before' evaluation."""
        self.state = mesh_lib.place(
            TrainState(
                step=self.state.step, params=self.state.params, opt_state=self.optimizer.init(self.state.params)
            ),
            self.state_shardings,
        )
        if self.reference is not None:
            self.reference = jax.tree.map(jnp.copy, self.state.params)
        if self.eval_rollout is not None:
            self.eval_before = self.evaluate()
            self.logger.write_json("eval_before.json", self.eval_before)

    def evaluate(self) -> dict[str, Any]:
        """The current policy and the baselines (g1jax.heldout: random, best blind, teacher) on the held-out
        start states, one answer each: a summary row of each, their per-state rewards (`per_state`), and
        the policy's answer texts ("answers", in held-out state order)."""
        rollout = self.eval_rollout
        key = jax.random.fold_in(self.base_key, HELD_OUT_STREAM)  # never a training step's key
        result = rollout(self.graphdef, (self.state.params, self.frozen), key)
        random_key, score_key = jax.random.split(jax.random.fold_in(key, 1))
        games, names = rollout.games, rollout.games.game_names
        blind = heldout.best_fixed_actions(games, lambda a: rollout.game_rewards(score_key, result.states, a))
        texts = {"random": heldout.random_texts(games, random_key), "blind": heldout.blind_texts(games, blind)}
        if self.eval_teacher is not None:
            texts["teacher"], _ = self.eval_teacher.answers(jax.random.fold_in(key, 2), result.states)
        out = {
            "policy": heldout.row_summary(result.rewards, result.parts, names),
            "rewards": result.rewards.tolist(),
            "game": result.parts["game"].tolist(),
            "perception_cells": result.parts["perception_cells"].tolist(),
            "answers": list(result.texts),
            "blind_actions": blind,
            "perception_chance": heldout.perception_chance(result.truths, names),
            "per_state": {},
        }
        for row, row_texts in texts.items():
            _, parts, rewards = rollout.score_texts(score_key, result.states, row_texts)
            out[row] = heldout.row_summary(rewards, parts, names)
            out["per_state"][row] = {"rewards": rewards.tolist(), "game": parts["game"].tolist()}
        return out

    def run(self) -> dict[str, Any]:
        config = self.config
        total = config.sft_steps + config.steps
        bar = self.logger.progress(self.start_step, total, enabled=config.progress)
        metrics = {}
        for step in range(self.start_step, total):
            if step == config.sft_steps:
                self.begin_rl()
            metrics = self.sft_step(step) if step < config.sft_steps else self.train_step(step)
            self.logger.metrics(metrics)
            bar.update(metrics)
            if (
                config.checkpoint_every
                and (step + 1) % config.checkpoint_every == 0
                or step + 1 in (total, config.sft_steps)
            ):
                self.save(step + 1)
        bar.close()
        self.logger.reward_curve()
        summary = {"steps": total, "final": metrics, "run_dir": config.run_dir}
        if self.eval_rollout is not None:
            # every process holds the 'before' evaluation of this run; a run resumed past it reads it back
            before = self.eval_before if self.eval_before is not None else self.logger.read_json("eval_before.json")
            after = self.evaluate()
            self.logger.write_json("eval_after.json", after)  # the answers after RL, to read beside the before's
            summary.update(heldout.comparison(before, after))
            # wall time of this process (set-up, compiles, training, both evaluations; a resumed run counts its part)
            summary["wall_s"] = time.perf_counter() - self._created
            self.logger.write_json("summary.json", {k: v for k, v in summary.items() if k != "final"})
        if config.export_hf:
            self.export(os.path.join(config.run_dir, "hf"))
        self.checkpoints.close()
        return summary

    def policy(self) -> Qwen25VL:
        return nnx.merge(self.graphdef, self.state.params, self.frozen)

    def export(self, directory: str) -> None:
        """The policy as Hugging Face safetensors + tokenizer: the whole weights, gathered on every process
        (a collective), written by process 0."""
        from g1jax.models.loading import save_pretrained

        model = self.policy()
        nnx.update(model, mesh_lib.to_host(nnx.state(model)))
        if jax.process_index() == 0:
            save_pretrained(model, directory)
            self.tokenizer.save(os.path.join(directory, "tokenizer.json"))


def make_trainer(config: TrainConfig, *, resume: bool = False) -> Trainer:
    if config.multiturn is not None:  # multi-turn episodes: g1jax/multiturn_trainer.py
        from g1jax.multiturn_trainer import MultiTurnTrainer

        return MultiTurnTrainer(config, resume=resume)
    return Trainer(config, resume=resume)
