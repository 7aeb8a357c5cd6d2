"""The learner end to end on a real game with the tiny preset: config errors (of the value and of the build),
recipes, exact resume, checkpoint fall-back, micro-batch accumulation, the same update on several device
meshes, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import envs
from colour_card import ColourCard, colour_card_policy
from g1jax import recipes, update
from g1jax.cli import train as train_cli
from g1jax.config import TrainConfig
from g1jax.models.config import ConfigError
from g1jax.models.qwen25vl import hidden_states_jit
from g1jax.policy import load_policy
from g1jax.rl import grpo
from g1jax.trainer import Trainer, check_buildable, make_trainer
from g1jax.update import completion_logprobs, shard_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(
    model="tiny",
    games=("2048",),
    image_size=(140, 112),
    states_per_step=8,
    grpo=dict(group_size=2),
    max_new_tokens=4,
    learning_rate=1e-3,
    checkpoint_every=1,
    sample_every=2,
    progress=False,
    export_hf=False,
)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(games=("chess",)), "unknown game"),
        (dict(grpo=dict(group_size=1)), "group_size"),
        (dict(grpo=dict(clip_hi=0.3)), "unknown grpo field"),
        (dict(mesh="a,b"), "mesh"),
        (dict(model=""), "model must be"),
        (dict(states_per_step=6, micro_batch_states=4), "micro_batch_states"),
        (dict(grpo=dict(group_size=2, ppo_minibatches=3)), "ppo_minibatches 3 must divide states_per_step 8"),
        (dict(grpo=dict(group_size=2, ppo_minibatches=2), micro_batch_states=8), "states of a mini-batch"),
        (dict(grpo=dict(ppo_epochs=0)), "ppo_epochs"),
        (dict(temperature=0.0), "temperature"),
        (dict(game_options={"swap": {}}), "not in games"),
        (dict(grpo=dict(loss_agg="mean")), "loss_agg"),
    ],
)
def test_bad_config_is_one_clear_error(changes, match):
    with pytest.raises(ConfigError, match=match) as error:
        TrainConfig(**{**SMALL, "run_dir": "unused", **changes})
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="unknown config field"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ConfigError, match="grpo.kl_coef: GRPO settings sit under grpo"):
        TrainConfig.from_dict({"kl_coef": 0.01})  # the flat form of earlier versions


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(mesh="3,1,1"), "mesh '3,1,1'.*8 devices"),
        (dict(model="/no/such/dir"), "neither a preset"),
        (dict(game_options={"2048": {"board_size": 99}}), "board_size"),
    ],
)
def test_what_the_machine_decides_is_checked_when_a_trainer_is_built(changes, match):
    config = TrainConfig(**{**SMALL, "run_dir": "unused", **changes})  # a value: reading it checks fields only
    with pytest.raises(ConfigError, match=match) as error:
        make_trainer(config)
    assert "\n" not in str(error.value)


def test_a_saved_config_reads_back_on_a_machine_with_fewer_devices(tmp_path):
    saved = TrainConfig(**{**SMALL, "grpo": dict(group_size=2, kl_coef=0.05)}, run_dir=str(tmp_path), mesh="1,64,1")
    config = TrainConfig.from_dict(json.loads(json.dumps(saved.to_dict())))
    assert config == saved and config.grpo.kl_coef == 0.05
    with pytest.raises(ConfigError) as error:
        make_trainer(config)
    message = str(error.value)
    assert "\n" not in message and "1,64,1" in message and f"the {len(jax.devices())} devices" in message, message


@pytest.mark.parametrize("name", recipes.RECIPES)
def test_every_recipe_is_a_config_this_machine_can_build(name):
    config = recipes.config(name)
    assert TrainConfig.from_dict(config.to_dict()) == config
    check_buildable(config)
    assert recipes.config(name, grpo={"kl_coef": 0.5}).grpo == dataclasses.replace(config.grpo, kl_coef=0.5)


def colour_card_trainer(run_dir, steps: int, resume: bool = False, init_seed: int = 0, seed: int = 0) -> Trainer:
    """A run whose rewards vary from the first step (ColourCard), so the gradients, the AdamW moments
    and the KL reference all carry information a broken resume would lose. A resumed trainer starts
    from other initial weights (init_seed 1): only what it restores can match the straight run.
    remat on, as the G1 recipe at scale runs: rematerialised layers in the sampler and in the KL
    reference's forward inside the update's jax.grad."""
    config = TrainConfig(
        games=("2048",),
        states_per_step=8,
        grpo=dict(group_size=4, kl_coef=0.05),
        max_new_tokens=2,
        steps=steps,
        learning_rate=3e-3,
        remat=True,
        checkpoint_every=1,
        sample_every=2,
        progress=False,
        export_hf=False,
        seed=seed,
        run_dir=str(run_dir),
    )
    return Trainer(
        config,
        resume=resume,
        games=envs.MultiGame(games=(ColourCard(),), counts=(8,)),
        policy=colour_card_policy(init_seed),
        reward_weights={"colour_card": {"format": 0.0, "perception": 0.0}},
    )


def test_resume_continues_exactly_and_falls_back_on_a_corrupt_checkpoint(tmp_path):
    straight = colour_card_trainer(tmp_path / "a", steps=3)
    straight.run()
    compiled = update.grpo_update._cache_size()
    expected = straight.logger.read_metrics()
    assert all(m["grad_norm"] > 1e-3 for m in expected), [m["grad_norm"] for m in expected]
    assert all(m["kl"] > 0 for m in expected[1:]), [m["kl"] for m in expected]

    first = colour_card_trainer(tmp_path / "b", steps=2)
    first.run()
    resumed = colour_card_trainer(tmp_path / "b", steps=3, resume=True, init_seed=1)
    assert resumed.start_step == 2
    resumed.run()
    # runs that differ only in run-only fields (run directory, initial weights) share one compiled step
    assert update.grpo_update._cache_size() == compiled
    got = resumed.logger.read_metrics()
    assert [m["step"] for m in got] == [1, 2, 3]
    for key in ("reward", "loss", "grad_norm", "kl", "entropy", "length_mean"):
        assert got[-1][key] == expected[-1][key], key
    for a, b in zip(leaves(straight.state), leaves(resumed.state)):  # params, AdamW moments, step
        np.testing.assert_array_equal(a, b)
    for a, b in zip(leaves(straight.reference), leaves(resumed.reference)):
        np.testing.assert_array_equal(a, b)
    run_dir = tmp_path / "b"
    for name in ("config.json", "metrics.jsonl", "reward_curve.png"):
        assert (run_dir / name).is_file(), name
    assert any(name.endswith(".png") for name in os.listdir(run_dir / "samples"))

    # damage the newest checkpoint: resuming warns and takes the one before
    latest = run_dir / "checkpoints" / "3"
    for root, _, files in os.walk(latest / "params"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    with pytest.warns(RuntimeWarning, match="step 3"):
        fallback = colour_card_trainer(run_dir, steps=3, resume=True, init_seed=1)
    assert fallback.start_step == 2
    # the damaged step is kept aside, and the run writes step 3 again, as the straight run did
    assert (run_dir / "checkpoints-unreadable" / "3" / "params").is_dir()
    fallback.run()
    assert fallback.checkpoints.steps()[-1] == 3
    assert fallback.logger.read_metrics()[-1]["loss"] == expected[-1]["loss"]
    for a, b in zip(leaves(straight.state), leaves(fallback.state)):
        np.testing.assert_array_equal(a, b)
    # a resume with another seed would not continue the same run
    with pytest.raises(ConfigError, match="seed 0.*seed 5"):
        colour_card_trainer(run_dir, steps=4, resume=True, init_seed=1, seed=5)


def test_reward_weights_without_custom_games_are_refused():
    with pytest.raises(ConfigError, match="reward_weights= goes with games="):
        Trainer(TrainConfig(**SMALL, steps=1, run_dir="/tmp/g1jax-test-unused"), reward_weights={"2048": {"format": 0}})


def test_checkpoints_that_cannot_be_restored_are_an_error_not_a_fresh_start(tmp_path):
    from g1jax.checkpoint import Checkpointer, CheckpointError

    checkpoints = Checkpointer(tmp_path / "checkpoints")
    assert checkpoints.restore_latest({"params": {"w": jax.ShapeDtypeStruct((2,), jnp.float32)}}) is None
    checkpoints.save(1, {"params": {"w": jnp.arange(2.0)}}, {"step": 1})
    # a run that now wants a KL reference its checkpoints never held
    wanted = {
        "params": {"w": jax.ShapeDtypeStruct((2,), jnp.float32)},
        "reference": {"w": jax.ShapeDtypeStruct((2,), jnp.float32)},
    }
    with pytest.raises(CheckpointError, match=r"none of the 1 checkpoint\(s\).*step 1: .*config\.json"):
        checkpoints.restore_latest(wanted)
    assert checkpoints.steps() == [1]  # nothing was moved or deleted


def test_reward_curve_leaves_the_plotting_backend_alone(tmp_path):
    import matplotlib

    from g1jax.run_logging import RunLogger

    logger = RunLogger(str(tmp_path), {"steps": 2})
    for step in (1, 2):
        logger.metrics({"step": step, "phase": "rl", "reward": 0.1 * step, "reward_game": 0.0})
    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # stands for a notebook's inline backend
    try:
        path = logger.reward_curve()
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)
    with open(path, "rb") as f:
        assert f.read(4) == b"\x89PNG"


def test_a_resume_trims_the_metrics_and_the_sample_rows_past_its_checkpoint(tmp_path):
    from types import SimpleNamespace

    from g1jax.run_logging import RunLogger

    logger = RunLogger(str(tmp_path), {"steps": 4})
    rollout = SimpleNamespace(
        frames=np.zeros((2, 28, 28, 3), np.uint8),
        texts=["a", "b", "c", "d"],
        truths=["x", "y"],
        rewards=np.zeros(4, np.float32),
    )
    for step in (1, 2, 3, 4):
        logger.metrics({"step": step, "phase": "rl", "reward": 0.0})
        logger.samples(step, rollout, group_size=2)
    logger.truncate_after(2)
    with open(tmp_path / "samples" / "samples.jsonl") as f:
        sample_steps = [json.loads(line)["step"] for line in f]
    assert [m["step"] for m in logger.read_metrics()] == [1, 2]
    assert sample_steps == [1, 1, 2, 2]  # two prompts a step; steps 3 and 4 are logged again after the resume


def test_the_step_settings_hold_what_the_update_depends_on():
    """The steps' static settings (jit's cache key) change with every field the update reads and with no
    run-only field, so equal runs share a compiled step and a changed one never reuses a stale one."""
    grids = ((1, 10, 8),) * 8
    base = TrainConfig(**SMALL, steps=3, run_dir="unused")
    settings = update.grpo_settings(base, grids)
    assert update.grpo_settings(base.replace(run_dir="elsewhere", seed=7, steps=9, progress=False), grids) == settings
    for change in (
        dict(learning_rate=3e-4),
        dict(grpo=dict(kl_coef=0.05)),
        dict(grpo=dict(group_size=4)),
        dict(temperature=0.5),
        dict(max_new_tokens=8),
        dict(micro_batch_states=2),
        dict(grad_clip=0.5),
        dict(grpo=dict(group_size=2, ppo_epochs=2)),
        dict(grpo=dict(group_size=2, ppo_minibatches=2)),
    ):
        assert update.grpo_settings(base.replace(**change), grids) != settings, change
    assert update.grpo_settings(base, grids[:4] + ((1, 8, 8),) * 4) != settings
    cosine = base.replace(schedule="cosine")
    assert update.grpo_settings(cosine, grids) != update.grpo_settings(cosine.replace(steps=9), grids)
    sft = update.sft_settings(base, grids)
    assert sft != update.sft_settings(base.replace(sft_learning_rate=1e-3), grids)
    assert sft == update.sft_settings(base.replace(grpo=dict(kl_coef=0.05), learning_rate=1e-2), grids)
    hash((settings, sft))  # static arguments of jit


def test_the_schedule_counts_rollouts_whatever_the_optimizer_steps_per_rollout():
    config = TrainConfig(**SMALL, steps=10, warmup_steps=2, schedule="cosine", run_dir="unused")
    ppo = update.OptimizerSettings.of(config.replace(grpo=dict(ppo_epochs=2, ppo_minibatches=2)))
    one = update.OptimizerSettings.of(config)
    assert (one.warmup_steps, one.decay_steps) == (2, 10) and (ppo.warmup_steps, ppo.decay_steps) == (8, 40)


@pytest.fixture(scope="module")
def reference_step():
    """One rollout on one device and the update it gives. The tiny model's 4-token answers never parse
    (every reward -1, every advantage 0, a zero gradient), so the rewards are replaced by a pattern with
    spread in every group: the updates compared below then depend on every gradient."""
    trainer = Trainer(TrainConfig(**SMALL, steps=1, run_dir="/tmp/g1jax-test-unused", mesh="1,1,1"))
    rollout = trainer.collect(0)
    batch = jax.device_get(trainer.batch_of(rollout))
    batch = batch.replace(rewards=np.resize(np.asarray([1.0, -1.0, 0.5, -0.25], np.float32), batch.rewards.shape))
    state, metrics = trainer._train_step(
        trainer.state, trainer.frozen, trainer.reference, shard_batch(batch, trainer.mesh)
    )
    metrics = jax.device_get(metrics)
    assert metrics["grad_norm"] > 0.1 and metrics["advantage_nonzero_frac"] == 1.0, metrics
    return batch, leaves(state.params), metrics


def test_the_update_scores_a_rollout_as_the_sampler_did():
    """The update's teacher-forced log-probs of a real rollout are the sampler's. The vision ids' lm_head
    columns are scaled 30x, so they hold most of the mass: a sampler free to draw them did (26 of 64
    tokens), and each image-pad id among them took an image feature in the update and shifted every
    later row's image by one (a log-prob gap of 4.4)."""
    config = TrainConfig(**SMALL, steps=1, run_dir="/tmp/g1jax-test-unused")
    model, tokenizer = load_policy(config)
    vision = jnp.asarray(model.config.vision_special_ids)
    model.lm_head.kernel[...] = model.lm_head.kernel[...].at[:, vision].multiply(30.0)
    trainer = Trainer(config, policy=(model, tokenizer))
    rollout = trainer.collect(0)
    batch = jax.device_get(trainer.batch_of(rollout))
    prompts = trainer.rollout.prompts
    grids = tuple(prompts.image_grids)
    hidden = hidden_states_jit(
        trainer.policy(),
        jnp.asarray(prompts.input_ids),
        jnp.asarray(prompts.positions),
        jnp.asarray(prompts.attention_mask),
        rollout.pixel_values,
        grids,
    )
    first_token = jax.nn.softmax(trainer.policy().logits(hidden[:, -1]), axis=-1)
    assert (first_token[:, vision].sum(-1) > 0.5).all()
    score = nnx.jit(completion_logprobs, static_argnames=("image_grids", "group_size", "temperature"))

    def update_logprobs(batch):
        return np.asarray(
            score(
                trainer.policy(), batch, image_grids=grids, group_size=config.group_size, temperature=config.temperature
            )[0]
        )

    mask = batch.completion_mask
    scored = update_logprobs(batch)
    # float32 on CPU: the cached decode and the one-pass forward add in other orders (about 1e-6 apart)
    np.testing.assert_allclose(scored[mask], batch.sampler_logprobs[mask], atol=1e-4)
    assert not np.isin(batch.completion, vision).any()
    # an image-pad id inside an answer (a teacher's text could hold one) is a token: no other row moves
    # (the same program on the same rows, so only float noise is allowed)
    answers = batch.completion.copy()
    answers[0, 0] = model.config.image_token_id
    moved = update_logprobs(batch.replace(completion=answers))
    np.testing.assert_allclose(moved[1:], scored[1:], atol=1e-6)


def updated(config, batch):
    trainer = Trainer(config)
    trainer.state, metrics = trainer._train_step(
        trainer.state, trainer.frozen, trainer.reference, shard_batch(batch, trainer.mesh)
    )  # the old state is donated
    return leaves(trainer.state.params), jax.device_get(metrics), trainer


def assert_same_update(got_params, got_metrics, params, metrics):
    """The gradient's size through its norm; its direction through the updated parameters. AdamW's first
    step moves each weight by about lr * g / (|g| + eps): a weight whose gradient is near zero turns
    float noise into a visible move, so parameters agree to 10% of lr (a wrong gradient moves weights
    the other way, 2 lr apart), and the loss, -mean(advantage) = 0 at the first step, says nothing."""
    np.testing.assert_allclose(got_metrics["grad_norm"], metrics["grad_norm"], rtol=1e-4)
    for a, b in zip(params, got_params):
        np.testing.assert_allclose(a, b, atol=0.1 * SMALL["learning_rate"])


def test_micro_batches_give_the_same_update(reference_step):
    batch, params, metrics = reference_step
    got_params, got_metrics, _ = updated(
        TrainConfig(**SMALL, steps=1, run_dir="/tmp/g1jax-test-unused", micro_batch_states=2), batch
    )
    assert_same_update(got_params, got_metrics, params, metrics)


def test_remat_gives_the_same_update(reference_step):
    # remat recomputes activations in the backward pass and must change no number (the resume test runs
    # remat with a KL reference, whose forward inside jax.grad nnx.remat could not do)
    batch, params, metrics = reference_step
    got_params, got_metrics, trainer = updated(
        TrainConfig(**SMALL, steps=1, run_dir="/tmp/g1jax-test-unused", remat=True), batch
    )
    assert trainer.policy().model.remat
    assert_same_update(got_params, got_metrics, params, metrics)


def test_the_logged_loss_is_the_objective_of_the_chosen_aggregation(reference_step):
    # Dr. GRPO's constant normaliser on answers of uneven length: the loss is sum / (rows x max_new_tokens),
    # not the token mean. At the first update pi = pi_old, so each token's loss is -advantage.
    batch, _, _ = reference_step
    lengths = np.resize(np.arange(1, SMALL["max_new_tokens"] + 1), batch.completion_mask.shape[0])
    batch = batch.replace(completion_mask=np.arange(batch.completion_mask.shape[1])[None] < lengths[:, None])
    config = TrainConfig(**SMALL, steps=1, run_dir="/tmp/g1jax-test-unused").replace(
        grpo=dict(loss_agg="sequence-mean-token-sum-norm")
    )
    _, metrics, _ = updated(config, batch)
    advantages = np.asarray(grpo.group_advantages(batch.rewards, config.group_size))
    objective = -np.sum(advantages * lengths) / (len(lengths) * SMALL["max_new_tokens"])
    token_mean = -np.sum(advantages * lengths) / np.sum(lengths)
    assert abs(objective - token_mean) > 1e-3
    np.testing.assert_allclose(metrics["loss"], objective, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["policy_loss"], token_mean, rtol=1e-5, atol=1e-7)


def optimizer_counts(trainer) -> set[int]:
    """The optimizer's own counts of the updates it made (AdamW's and its schedule's)."""
    return {int(count) for _, count in optax.tree_utils.tree_get_all_with_path(trainer.state.opt_state, "count")}


def test_one_ppo_epoch_keeps_the_old_policy_the_current_one(reference_step):
    # mu = 1, one mini-batch: no extra pass, old = stop_gradient(current), so the ratio is exactly 1
    _, _, metrics = reference_step
    assert metrics["ratio_mean"] == 1.0 and metrics["abs_log_ratio_mean"] == 0.0
    assert metrics["clip_frac_low"] == metrics["clip_frac_high"] == 0.0


def test_ppo_epochs_and_minibatches_step_several_times_and_the_clip_acts(reference_step):
    """2 epochs x 2 mini-batches (each of 2 micro-batches): 4 optimizer steps on one rollout. With a large
    learning rate the later steps move the policy away from the sampling one: the ratio leaves 1 and the
    clip holds tokens."""
    batch, params, _ = reference_step
    config = TrainConfig(
        **{**SMALL, "learning_rate": 0.05},
        steps=1,
        run_dir="/tmp/g1jax-test-unused",
        mesh="2,2,2",  # on a mesh of every axis: the mini-batches split over data x fsdp
        micro_batch_states=2,
    ).replace(grpo=dict(ppo_epochs=2, ppo_minibatches=2))
    got_params, metrics, trainer = updated(config, batch)
    assert int(trainer.state.step) == 4 and optimizer_counts(trainer) == {4}
    assert metrics["abs_log_ratio_mean"] > 1e-3 and metrics["clip_frac_low"] + metrics["clip_frac_high"] > 0
    # the extra pass scores the rollout as the sampler did
    np.testing.assert_allclose(metrics["sampler_abs_logp_diff"], 0.0, atol=1e-4)
    assert any(np.abs(a - b).max() > 0.05 for a, b in zip(params, got_params))


def test_a_clip_setting_that_cannot_act_warns_once():
    config = TrainConfig(**SMALL, steps=1, run_dir="/tmp/g1jax-test-unused").replace(grpo=dict(clip_high=0.28))
    with pytest.warns(UserWarning, match="ppo_epochs") as caught:
        Trainer(config)
    assert len([w for w in caught if "clip_low / clip_high" in str(w.message)]) == 1
    assert not config.replace(grpo=dict(ppo_epochs=2)).grpo.clip_is_inert
    assert not config.replace(grpo=dict(clip_high=0.2)).grpo.clip_is_inert


def test_the_update_is_the_same_on_a_device_mesh(reference_step):
    # every axis at once (data 2 x fsdp 2 x tp 2): the data split, the parameters' shards and the tensor-parallel
    # collectives in one compile (tests/test_sharding.py checks the layouts of the other meshes)
    batch, params, metrics = reference_step
    got_params, got_metrics, trainer = updated(
        TrainConfig(**SMALL, steps=1, run_dir="/tmp/g1jax-test-unused", mesh="2,2,2"), batch
    )
    assert trainer.mesh.size == 8
    assert_same_update(got_params, got_metrics, params, metrics)
    specs = [x.sharding.spec for x in jax.tree.leaves(trainer.state.params)]
    assert any(any(axis is not None for axis in spec) for spec in specs)  # some parameter really is split
    rollout = trainer.collect(0)  # the rollout splits its boards and samples by rows over data x fsdp (4 ways)
    for rows in (rollout.frames, rollout.pixel_values, rollout.samples.tokens):
        assert rows.sharding.shard_shape(rows.shape)[0] == rows.shape[0] // 4


def test_the_readme_training_commands_resolve_to_valid_configs(tmp_path, monkeypatch):
    """Every `experiments/train.py` line of the README's examples parses and passes the config checks and
    the trainer's build checks (the games' options and frame size, the teachers), leaving out the ones that
    name a checkpoint directory or a config file that only a user has, and so does the default run's empty
    command line."""
    import re
    import shlex

    with open(os.path.join(ROOT, "README.md")) as fh:
        text = fh.read().replace("\\\n", " ")
    lines = re.findall(r"^python experiments/train\.py.*$", text, re.M)
    commands = [shlex.split(line, comments=True)[2:] for line in lines]
    commands = [[]] + [argv for argv in commands if not any(a.startswith("/path") or a.endswith(".yaml") for a in argv)]
    assert len(commands) >= 3, commands  # the default run, the mixed-games run, its resume
    monkeypatch.chdir(tmp_path)  # the --resume example reads runs/mix/config.json when it exists
    for argv in commands:
        config = train_cli.resolve_config(train_cli.parse_args(argv))
        assert isinstance(config, TrainConfig), argv
        check_buildable(config)


def test_cli_rejects_bad_values_before_compiling(tmp_path):
    # the package of this checkout, also where another checkout of it is the one installed
    env = dict(os.environ, PYTHONPATH=ROOT)

    def cli(*args):
        return subprocess.run(
            [sys.executable, os.path.join(ROOT, "experiments", "train.py"), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    for args, match in [
        (["--game", "chess"], "unknown game"),
        (["--group-size", "1"], "group_size"),
        (["--model", str(tmp_path / "missing")], "neither a preset"),
        (["--config", str(tmp_path / "none.yaml")], "does not exist"),
        (["--set", "stepz=3"], "unknown config field"),
    ]:
        result = cli(*args, "--run-dir", str(tmp_path / "r"))
        assert result.returncode == 2, (args, result.stderr[-500:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and __import__("re").search(match, lines[0]), lines


def test_cli_overrides_change_only_the_grpo_fields_they_name(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"grpo": {"clip_high": 0.28}, "steps": 3}))
    args = train_cli.parse_args(
        [
            "--recipe",
            "g1-paper",
            "--config",
            str(path),
            "--kl-coef",
            "0.02",
            "--set",
            "grpo.tis_cap=2",
            "--group-size",
            "6",
        ]
    )
    config = train_cli.resolve_config(args)
    assert config.steps == 3 and config.micro_batch_states == 8
    assert config.grpo == dataclasses.replace(
        recipes.config("g1-paper").grpo, clip_high=0.28, kl_coef=0.02, tis_cap=2, group_size=6
    )
    with pytest.raises(envs.ConfigError, match="a dotted key names a field of grpo"):
        train_cli.resolve_config(train_cli.parse_args(["--set", "games.x=1"]))


def test_the_g1jax_command_runs_its_subcommands(capsys, monkeypatch):
    from g1jax import cli

    monkeypatch.setattr(sys, "argv", ["g1jax"])  # the command names its subcommand's program in sys.argv[0]

    assert cli.main(["train", "--set", "stepz=3"]) == 2  # g1jax.cli.train's main, failing before it compiles
    assert "unknown config field" in capsys.readouterr().err
    assert cli.main(["fly"]) == 2 and "unknown command 'fly'" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0 and "train" in capsys.readouterr().out
