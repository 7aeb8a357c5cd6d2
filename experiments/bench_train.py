"""Learner speed: the sampler vs transformers `generate`, one GRPO step vs TRL's GRPOTrainer, G1 memory per device.

    python experiments/bench_train.py                        # all three parts (2 CPU cores: 10-25 minutes)
    python experiments/bench_train.py --quick                # tiny decode + tiny GRPO step + memory (~80 s CPU)
    python experiments/bench_train.py --parts memory         # the memory table alone (instant, no compile)
    python experiments/bench_train.py --parts update flops   # the update alone, shared-prefix vs per-row; FLOPs
    PYTHONPATH=/tmp/trl/site-packages python experiments/bench_train.py --parts grpo   # TRL outside the venv

1. decode: greedy sampling with `g1jax.sampling.sample` (G = 1, stop ids set to an id outside the
   vocabulary, so every row decodes exactly N tokens) vs transformers `generate` (PyTorch, sdpa
   attention, `min_new_tokens = max_new_tokens`, no eos), same random weights (our model exported with
   `save_pretrained` and read back by transformers), same batch of prompts with one image each
   (`g1jax.models.synthetic.synthetic_inputs`). tokens/s = batch x N / wall time of the whole call (prefill
   included), median of `--runs` interleaved calls after one warm-up call each. The prefill share is
   measured with 1-token calls, so the table also shows the decode loop alone: batch x (N - 1) /
   (t_N - t_1). The greedy tokens of both are compared as a sanity check.
2. grpo: seconds per GRPO step of `g1jax.trainer.Trainer` on 2048 (tiny preset, random init; `--grpo-model 3b
   --dtype bfloat16` on a GPU), split into env start (warm-up moves + frames + patches), sampling, scoring
   (host parse + rewards) and update (loss, gradient, AdamW); the first step (compiles) is reported apart,
   completion tokens/s over the whole step too. Then, for the tiny preset when `trl` imports, TRL's
   GRPOTrainer on the same initial weights, the same frames, prompt tokens, group size, lengths and
   reward code (see `trl_grpo_benchmark` for what is and is not matched).
3. memory: bytes per device of the G1 recipe (`g1jax.recipes`, "g1-paper") at 3B and 7B on 8 devices, computed
   from shapes by `g1_memory_per_device` (assumptions in its docstring and in BENCHMARKS.md).
4. update (not in the default parts): the GRPO update alone, shared-prefix (each prompt through the
   decoder once per group) against per-row (each answer with its own copy of the prompt), alternated on
   one rollout per group size (`--groups`, default 4 8); `--image-size`, `--states`, `--length`,
   `--kl-coef` set the shapes.
5. flops (not in the default parts, instant): one G1-paper update at 3B counted from shapes, per-row
   against shared-prefix (`update_flops`).

Results: a table per part on stdout and everything in JSON (`--json`, default out/bench_train.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from g1jax.chat import DEFAULT_SYSTEM_PROMPT  # noqa: E402
from g1jax.config import TrainConfig  # noqa: E402
from g1jax.image_processing import grid_thw  # noqa: E402
from g1jax.models import ConfigError, Qwen25VL, preset, save_pretrained  # noqa: E402
from g1jax.models.synthetic import synthetic_inputs  # noqa: E402
from g1jax.models.vision import layout_for  # noqa: E402
from g1jax.recipes import config as recipe_config  # noqa: E402
from g1jax.sampling import Samples, SamplingConfig, sample  # noqa: E402
from g1jax.trainer import Trainer  # noqa: E402

PARTS = ("decode", "grpo", "memory", "update", "flops")
G1_PAPER = recipe_config("g1-paper")
GIB = 1024**3


def median_and_best(times: list[float]) -> dict:
    return {"times_s": times, "median_s": statistics.median(times), "best_s": min(times)}


# ---------------------------------------------------------------------------------------- 1. decode
def torch_model_like(model: Qwen25VL):
    """transformers Qwen2_5_VLForConditionalGeneration with our model's weights (sdpa attention, float32)."""
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as directory:
        save_pretrained(model, directory)
        hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
            directory, dtype=torch.float32, attn_implementation="sdpa"
        ).eval()
    hf.generation_config.eos_token_id = None  # fixed-length continuations
    hf.generation_config.pad_token_id = 0
    return hf


def decode_benchmark(
    preset_name: str,
    *,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    image_px: int,
    runs: int,
    torch_threads: tuple[int, ...] = (1, 2),
    one_token: bool = True,
) -> dict:
    """Whole-call tokens/s of our sampler and of transformers `generate` (one entry per torch thread count).

    one_token: also time 1-token calls, for the decode loop's own rate batch x (N - 1) / (t_N - t_1).
    """
    config = preset(preset_name)
    inputs = synthetic_inputs(config, batch, prompt_len, image_px)
    model = Qwen25VL(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    args = (
        jnp.asarray(inputs["input_ids"], jnp.int32),
        jnp.asarray(inputs["positions"]),
        jnp.asarray(inputs["attention_mask"], jnp.int32),
        jnp.asarray(inputs["pixel_values"]),
    )
    row_keys = jax.random.split(jax.random.key(0), batch)
    never = (config.text.vocab_size,)  # no sampled id reaches it: every row runs the full length

    def ours(length: int):
        sampling = SamplingConfig(max_new_tokens=length, temperature=0.0, stop_ids=never, pad_id=0)

        def call():
            samples = sample(
                graphdef, params, *args, row_keys, image_grids=inputs["grids"], group_size=1, config=sampling
            )
            return np.asarray(samples.tokens)

        return call

    lengths = (new_tokens, 1) if one_token else (new_tokens,)
    calls = {("g1jax", n): ours(n) for n in lengths}
    if torch_threads:
        import torch

        hf = torch_model_like(model)
        t_in = {k: torch.from_numpy(np.asarray(inputs[k], np.int64)) for k in ("input_ids", "attention_mask")}
        t_in["pixel_values"] = torch.from_numpy(inputs["pixel_values"])
        t_in["image_grid_thw"] = torch.tensor(inputs["grids"], dtype=torch.int64)
        t_in["mm_token_type_ids"] = (t_in["input_ids"] == config.image_token_id).long()

        def theirs(length: int, threads: int):
            def call():
                torch.set_num_threads(threads)
                hf.model.rope_deltas = None  # never let a stale delta leak between generate calls
                with torch.no_grad():
                    out = hf.generate(**t_in, max_new_tokens=length, min_new_tokens=length, do_sample=False)
                return out[:, prompt_len:].numpy()

            return call

        calls.update({(f"torch/{threads}", n): theirs(n, threads) for threads in torch_threads for n in lengths})

    first, outputs = {}, {}
    for name, call in calls.items():
        started = time.perf_counter()
        outputs[name] = call()
        first[name] = time.perf_counter() - started
    times = {name: [] for name in calls}
    for _ in range(runs):  # interleaved, so every runner sees the same background load
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)

    result = {
        "preset": preset_name,
        "params": int(sum(x.size for x in jax.tree.leaves(params))),
        "batch": batch,
        "prompt_len": prompt_len,
        "image_tokens_per_row": inputs["image_tokens"],
        "new_tokens": new_tokens,
        "runs": runs,
        "runners": {},
    }
    for runner in dict.fromkeys(name for name, _ in calls):
        full_median = statistics.median(times[(runner, new_tokens)])
        entry = {
            "first_call_s": first[(runner, new_tokens)],
            "call": median_and_best(times[(runner, new_tokens)]),
            "tokens_per_s": batch * new_tokens / full_median,
            "decode_only_tokens_per_s": None,
        }
        if one_token:
            entry["one_token_call"] = median_and_best(times[(runner, 1)])
            decode_s = full_median - entry["one_token_call"]["median_s"]
            entry["decode_only_tokens_per_s"] = batch * (new_tokens - 1) / decode_s if decode_s > 0 else None
        result["runners"][runner] = entry
    torch_runners = [r for r in result["runners"] if r != "g1jax"]
    if torch_runners:
        # against transformers at its best thread count for this run
        best = max(torch_runners, key=lambda r: result["runners"][r]["tokens_per_s"])
        ours_entry, theirs_entry = result["runners"]["g1jax"], result["runners"][best]
        result["torch_best"] = best
        result["speedup"] = ours_entry["tokens_per_s"] / theirs_entry["tokens_per_s"]
        rates = (ours_entry["decode_only_tokens_per_s"], theirs_entry["decode_only_tokens_per_s"])
        result["decode_only_speedup"] = rates[0] / rates[1] if all(rates) else None
        result["greedy_token_mismatches"] = int((outputs[("g1jax", new_tokens)] != outputs[(best, new_tokens)]).sum())
    return result


def _cell(value, width: int, digits: int) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def print_decode(results: list[dict]) -> None:
    print("\n1. Decode: greedy, fixed length, one image per prompt, G = 1 (median of interleaved calls)")
    print(
        f"{'preset':<7} {'params':>7} {'batch x prompt':>15} {'new':>4} {'runner':<19} {'call s':>8} "
        f"{'tokens/s':>9} {'1-token call s':>15} {'decode-only tok/s':>18}"
    )
    for r in results:
        for runner, f in r["runners"].items():
            label = "g1jax sample" if runner == "g1jax" else f"HF generate, {runner.split('/')[1]} thr"
            one = f.get("one_token_call", {}).get("median_s")
            print(
                f"{r['preset']:<7} {r['params'] / 1e6:>6.1f}M {r['batch']:>6} x {r['prompt_len']:<6} "
                f"{r['new_tokens']:>4} {label:<19} {f['call']['median_s']:>8.3f} {f['tokens_per_s']:>9.0f} "
                f"{_cell(one, 15, 3)} {_cell(f['decode_only_tokens_per_s'], 18, 0)}"
            )
        if "speedup" in r:
            decode = r["decode_only_speedup"]
            print(
                f"{'':<7} ours / transformers ({r['torch_best']}, its faster setting in this run): "
                f"{r['speedup']:.1f}x whole call, "
                f"{f'{decode:.1f}x decode loop only' if decode else 'decode loop not measured apart'}; "
                f"greedy token mismatches {r['greedy_token_mismatches']} of {r['batch'] * r['new_tokens']}"
            )


# ---------------------------------------------------------------------------------------- 2. GRPO step
class RolloutStages:
    """Splits `GameRollout.__call__` into env start / sampling / scoring by wrapping the instance's start and score.

    Blocking on the start states and on the samples only moves waits that the call makes anyway
    (scoring reads the tokens on the host), so the stages add up to the rollout's own wall time.
    """

    def __init__(self, rollout):
        self.rollout, self.marks = rollout, {}
        start, score = rollout.start, rollout.score

        def timed_start(key):
            self.marks = {"begin": time.perf_counter()}
            out = jax.block_until_ready(start(key))
            self.marks["started"] = time.perf_counter()
            return out

        def timed_score(key, states, frames, pixel_values, samples):
            jax.block_until_ready(samples)
            self.marks["sampled"] = time.perf_counter()
            out = score(key, states, frames, pixel_values, samples)
            self.marks["scored"] = time.perf_counter()
            return out

        rollout.start, rollout.score = timed_start, timed_score

    def stages(self) -> dict:
        m = self.marks
        return {
            "env_start": m["started"] - m["begin"],
            "sampling": m["sampled"] - m["started"],
            "scoring": m["scored"] - m["sampled"],
        }

    def remove(self) -> None:
        del self.rollout.start, self.rollout.score  # back to the class methods


def grpo_config(
    image_size, states: int, group: int, length: int, run_dir: str, kl_coef: float = 0.0, **policy
) -> TrainConfig:
    """The benchmarked step's config; `policy`: TrainConfig fields of the policy and update (model, dtype, ...)."""
    return TrainConfig(
        games=("2048",),
        image_size=image_size,
        states_per_step=states,
        grpo=dict(group_size=group, kl_coef=kl_coef),
        max_new_tokens=length,
        run_dir=run_dir,
        progress=False,
        sample_every=0,
        checkpoint_every=0,
        export_hf=False,
        **policy,
    )


def our_grpo_benchmark(trainer: Trainer, steps: int) -> dict:
    stages = RolloutStages(trainer.rollout)
    rows = []
    try:
        for step in range(steps + 1):
            metrics = trainer.train_step(step)
            rows.append(
                dict(
                    stages.stages(),
                    rollout=metrics["time_rollout"],
                    update=metrics["time_update"],
                    total=metrics["time_step"],
                    completion_tokens=metrics["length_mean"]
                    * trainer.config.states_per_step
                    * trainer.config.group_size,
                )
            )
    finally:
        stages.remove()
    timed = rows[1:]
    return {
        "first_step": rows[0],
        "steps": timed,
        "median": {k: statistics.median(r[k] for r in timed) for k in timed[0]},
    }


# Qwen2-VL's chat layout (what g1jax.chat.render_chat writes) as a Jinja template for transformers' processor.
QWEN_VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def trl_grpo_benchmark(trainer: Trainer, policy_dir: str, steps: int, threads: int) -> dict:
    """TRL's GRPOTrainer (PyTorch, CPU) on what our trainer uses: weights, frames, prompt tokens, rewards.

    Matched: the initial weights (our tiny policy exported), P start states drawn by our warm-up and
    their frames (as PIL images through transformers' Qwen2-VL image processor), the prompt token ids
    (checked equal to ours), group size, completion length, temperature 1 / top-p 1 / top-k 0, stop on
    <|im_end|>, the reward code (our `GameRollout.score` on TRL's completion ids), beta 0 (no reference
    model), PPO clip 0.2, token-mean loss ("dapo"), group std scaling, AdamW lr / betas / weight decay,
    clip-norm 1, one update per rollout, float32. Not matched: TRL keeps the P states fixed
    (a dataset) where ours draws new ones every step; TRL prefills G copies of each prompt and runs the
    vision tower per completion, ours prefills and encodes each prompt once.
    """
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from PIL import Image
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(threads)
    config, rollout = trainer.config, trainer.rollout
    states, frames, pixel_values = rollout.start(jax.random.key(1234))
    game = rollout.games.games[0]
    images = [Image.fromarray(frame) for frame in np.asarray(frames)]
    # every content a list of parts: the dataset's arrow columns cannot mix strings and lists
    messages = [
        {"role": "system", "content": [{"type": "text", "text": DEFAULT_SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": game.prompt}]},
    ]
    dataset = Dataset.from_dict(
        {"prompt": [messages] * len(images), "image": images, "state": list(range(len(images)))}
    )

    class ImageOnlyProcessor(transformers.Qwen2_5_VLProcessor):
        """Qwen2.5-VL's processor without its video half: transformers' video processor needs torchvision,
        which has no wheel for this CPU build of torch on the registries reachable here."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            transformers.ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    processor = ImageOnlyProcessor(
        transformers.Qwen2VLImageProcessorPil(), trainer.tokenizer.to_transformers(), chat_template=QWEN_VL_TEMPLATE
    )
    probe = processor.apply_chat_template(
        [
            messages[:1]
            + [
                {
                    "role": "user",
                    "content": [{"type": "image", "image": images[0]}, {"type": "text", "text": game.prompt}],
                }
            ]
        ],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    ours = rollout.prompts.input_ids[0][rollout.prompts.attention_mask[0].astype(bool)]
    prompt_ids_equal = bool(np.array_equal(np.asarray(probe["input_ids"][0]), ours))
    pixel_values_equal = bool(
        np.allclose(
            np.asarray(probe["pixel_values"]), np.asarray(pixel_values)[: probe["pixel_values"].shape[0]], atol=1e-5
        )
    )

    group, length = config.group_size, config.max_new_tokens
    score_key = jax.random.key(99)

    def game_reward(prompts, completions, completion_ids, state, **_):
        # TRL passes each state's G completions in some order: lay them out as ours (row p*G + g), score, map back.
        slots, seen = [], [0] * len(images)
        for p in state:
            slots.append(p * group + seen[p])
            seen[p] += 1
        if sorted(slots) != list(range(len(images) * group)):
            raise RuntimeError(f"expected every state {group} times in one TRL batch, got counts {seen}")
        tokens = np.full((len(slots), length), trainer.tokenizer.pad_id, np.int32)
        for slot, ids in zip(slots, completion_ids):
            tokens[slot, : len(ids)] = ids
        empty = np.zeros(tokens.shape, np.float32)
        scored = rollout.score(
            score_key,
            states,
            frames,
            pixel_values,
            Samples(
                tokens=tokens,
                logprobs=empty,
                mask=empty > 0,
                lengths=np.zeros(len(slots), np.int32),
                truncated=np.zeros(len(slots), bool),
            ),
        )
        return [float(scored.rewards[slot]) for slot in slots]

    marks: dict[str, list[float]] = {"generate_and_score": [], "sampling": [], "scoring": [], "step": []}

    class StepTimes(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            marks["step"].append(time.perf_counter() - self.began)

    with tempfile.TemporaryDirectory() as out_dir:
        args = GRPOConfig(
            output_dir=out_dir,
            per_device_train_batch_size=len(images) * group,
            num_generations=group,
            max_completion_length=length,
            max_steps=steps + 1,
            learning_rate=config.learning_rate,
            beta=0.0,
            epsilon=config.grpo.clip_low,
            epsilon_high=config.grpo.clip_high,
            loss_type="dapo",
            scale_rewards="group",
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            weight_decay=config.weight_decay,
            adam_beta1=config.b1,
            adam_beta2=config.b2,
            max_grad_norm=config.grad_clip,
            lr_scheduler_type="constant",
            warmup_steps=0,
            num_iterations=1,
            steps_per_generation=1,
            gradient_accumulation_steps=1,
            use_cpu=True,
            bf16=False,
            fp16=False,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            dataloader_num_workers=0,
            remove_unused_columns=False,
            seed=config.seed,
        )
        hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
            policy_dir, dtype=torch.float32, attn_implementation="sdpa"
        )
        grpo = GRPOTrainer(
            model=hf,
            reward_funcs=game_reward,
            args=args,
            train_dataset=dataset,
            processing_class=processor,
            callbacks=[StepTimes()],
        )
        for method, key in (
            ("_generate_and_score_completions", "generate_and_score"),
            ("_generate", "sampling"),
            ("_calculate_rewards", "scoring"),
        ):
            original = getattr(grpo, method)

            def timed(*a, _original=original, _key=key, **kw):
                started = time.perf_counter()
                out = _original(*a, **kw)
                marks[_key].append(time.perf_counter() - started)
                return out

            setattr(grpo, method, timed)
        grpo.train()

    rows = [
        {"rollout": g, "sampling": s, "scoring": r, "update": t - g, "total": t}
        for g, s, r, t in zip(marks["generate_and_score"], marks["sampling"], marks["scoring"], marks["step"])
    ]
    timed_rows = rows[1:]
    return {
        "trl": trl.__version__,
        "optimizer": str(args.optim),
        "prompt_ids_equal_ours": prompt_ids_equal,
        "pixel_values_equal_ours": pixel_values_equal,
        "first_step": rows[0],
        "steps": timed_rows,
        "median": {k: statistics.median(r[k] for r in timed_rows) for k in timed_rows[0]},
    }


def print_grpo(result: dict) -> None:
    s = result["setup"]
    print(
        f"\n2. GRPO step: {s['preset']} preset ({s['params'] / 1e6:.1f}M params, {s['dtype']} compute, "
        f"{s['param_dtype']} params, on {s['device']}), 2048 frames {s['image_size'][1]} px wide "
        f"x {s['image_size'][0]} high "
        f"({s['prompt_len']}-token prompts), {s['states']} states x {s['group']} answers, {s['length']} new tokens, "
        f"median of "
        f"{s['steps']} steps after the first"
    )
    columns = ("env_start", "sampling", "scoring", "rollout", "update", "total")
    print(f"{'learner':<22} " + " ".join(f"{c:>10}" for c in columns) + f" {'first step':>11}")
    for label, key in (("g1jax Trainer", "ours"), ("TRL GRPOTrainer", "trl")):
        r = result.get(key)
        if not isinstance(r, dict) or "median" not in r:
            continue
        cells = " ".join(f"{r['median'][c]:>10.3f}" if c in r["median"] else f"{'-':>10}" for c in columns)
        print(f"{label:<22} {cells} {r['first_step']['total']:>11.1f}")
    ours = result["ours"]
    print(
        f"g1jax: {ours['median']['completion_tokens']:.0f} completion tokens per step, "
        f"{ours['completion_tokens_per_s']:.0f} completion tokens/s over the whole step"
    )
    if "speedup" in result:
        print(
            f"TRL / g1jax seconds per step: {result['speedup']:.1f}x; prompt ids equal: "
            f"{result['trl']['prompt_ids_equal_ours']}, pixel values equal: "
            f"{result['trl']['pixel_values_equal_ours']}"
        )
    elif "trl_unavailable" in result:
        print(f"TRL not run: {result['trl_unavailable']}")


def grpo_benchmark(
    image_size, states: int, group: int, length: int, steps: int, threads: int, with_trl: bool, **policy
) -> dict:
    with tempfile.TemporaryDirectory() as run_dir, tempfile.TemporaryDirectory() as policy_dir:
        config = grpo_config(image_size, states, group, length, run_dir, **policy)
        trainer = Trainer(config)
        if with_trl:
            save_pretrained(trainer.policy(), policy_dir)  # the initial weights, for TRL
        size = trainer.rollout.games.image_shape[:2]
        devices = jax.devices()
        result = {
            "setup": {
                "preset": config.model,
                "dtype": config.dtype,
                "param_dtype": config.param_dtype,
                "remat": config.remat,
                "kl_coef": config.grpo.kl_coef,
                "micro_batch_states": config.micro_batch_states,
                "game": "2048",
                "image_size": list(size),
                "states": states,
                "group": group,
                "length": length,
                "steps": steps,
                "prompt_len": int(trainer.rollout.prompts.length),
                "image_tokens_per_prompt": int(np.prod(grid_thw(*size))) // 4,
                "params": count_params(trainer.policy()),
                "device": f"{devices[0].platform}: {getattr(devices[0], 'device_kind', '')} x {len(devices)}",
            }
        }
        result["ours"] = our_grpo_benchmark(trainer, steps)
        median = result["ours"]["median"]
        result["ours"]["completion_tokens_per_s"] = median["completion_tokens"] / median["total"]
        if with_trl:
            try:
                import trl  # noqa: F401
            except ImportError as error:
                result["trl_unavailable"] = f"trl does not import here ({error})"
            else:
                result["trl"] = trl_grpo_benchmark(trainer, policy_dir, steps, threads)
                result["speedup"] = result["trl"]["median"]["total"] / result["ours"]["median"]["total"]
        else:
            result["trl_unavailable"] = (
                "skipped (--quick, --skip-trl, or a policy other than the default tiny float32 one)"
            )
    return result


# ---------------------------------------------------------------------------------------- 3. memory
def count_params(module) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))


ATTENTION_BYTES_INFERENCE = 8  # per score element: float32 scores and float32 probabilities alive together
ATTENTION_BYTES_BACKWARD = 12  # probabilities, their gradient and the scores' gradient, float32
CAUSAL_BLOCK_FRACTION = 36 / 64  # 8 query blocks against the keys up to each block's end: sum(1..8) / 8^2


def g1_memory_per_device(
    name: str,
    *,
    devices: int = 8,
    states: int = G1_PAPER.states_per_step,
    group: int = G1_PAPER.group_size,
    prompt_len: int = 1024,
    image_hw=(840, 644),
    response_len: int = G1_PAPER.max_new_tokens,
    micro_states_per_device: int | None = 1,
    param_bytes: int = 4,
    compute_bytes: int = 2,
    kl: bool = G1_PAPER.grpo.needs_reference,
    fused_attention: bool = False,
    logprob_chunk: int = 256,
) -> dict:
    """Bytes per device of one G1 step, from shapes (the code as it is unless `fused_attention`).

    Layout: parameters, gradients and AdamW moments fully sharded over `devices` (FSDP / ZeRO-3);
    batch rows split evenly over the devices. Persistent: parameters (`param_bytes`, float32 by
    default), AdamW m and v (float32), the KL reference copy (the trainer copies the parameters, so
    param_bytes too) when `kl`. Then the larger of two phases:
      sampling: the bfloat16 KV cache of this device's P*G/devices rows over prompt + response slots,
      plus its prompts' cache before the broadcast to G rows; the prefill's working set of one layer
      (attention scores over the whole static cache: [prompts, heads, prompt, slots], MLP
      intermediates); the vision tower's largest attention (full-attention blocks over each image's
      slots) for this device's images at once; the bf16 all-gather of the largest weight.
      training: gradients (float32; twice when micro-batched: the scan's running sum and one
      micro-batch's), and the activations of one micro-batch of `micro_states_per_device` states
      (the shared-prefix update: each state's prompt once, its G responses beside it, a response
      token's scores over its whole prompt and, blocked, its own response) with remat per layer: every
      decoder layer's input saved in the compute dtype, one layer's backward working set (attention
      scores and MLP intermediates), the chunked log-prob head (float32 logits of `logprob_chunk` positions,
      with softmax and gradient), and the vision tower per state (block inputs saved, one
      full-attention block's backward).
    None as micro_states_per_device: the recipe's whole batch in one micro-batch (no accumulation).
    fused_attention: attention through a kernel that never holds the score matrix (flash / cuDNN);
    the score terms then vanish.
    """
    config = preset(name)
    text, vision = config.text, config.vision
    abstract = Qwen25VL(config, rngs=None)  # shapes only, nothing allocated
    params = count_params(abstract)
    largest_weight = max(count_params(abstract.model.layers[0]), text.vocab_size * text.hidden_size)
    layout = layout_for(vision, grid_thw(*image_hw))
    image_tokens = layout.num_tokens
    if image_tokens > prompt_len:
        raise ValueError(f"{image_tokens} image tokens do not fit a {prompt_len}-token prompt")
    if states % devices or (states * group) % devices:
        raise ValueError(f"{states} states x {group} answers do not split over {devices} devices")
    prompts = states // devices
    rows = prompts * group
    micro_states = prompts if micro_states_per_device is None else micro_states_per_device
    if prompts % micro_states:
        raise ValueError(f"{micro_states} states per micro-batch do not divide the {prompts} states per device")
    slots = prompt_len + response_len
    micro_rows = micro_states * group
    score_inf = 0 if fused_attention else ATTENTION_BYTES_INFERENCE
    score_bwd = 0 if fused_attention else ATTENTION_BYTES_BACKWARD
    kv_per_token = text.num_hidden_layers * 2 * text.num_key_value_heads * text.head_dim * compute_bytes

    persistent = {
        "parameters": params * param_bytes / devices,
        "adamw_moments_f32": params * 8 / devices,
        "reference_copy": params * param_bytes / devices if kl else 0.0,
    }
    sampling = {
        "kv_cache_bf16": (rows + prompts) * slots * kv_per_token,
        "prefill_layer_working_set": prompts * text.num_attention_heads * prompt_len * slots * score_inf
        + prompts * prompt_len * text.intermediate_size * compute_bytes * 3,
        "vision_layer_working_set": prompts * vision.num_heads * layout.num_slots**2 * score_inf
        + prompts * layout.num_slots * vision.intermediate_size * compute_bytes * 3,
        "gathered_weight_bf16": largest_weight * compute_bytes,
    }
    micro_count = prompts // micro_states
    # the shared-prefix update: a micro-batch's prompts once, its G answers each beside them
    tokens = micro_states * prompt_len + micro_rows * response_len
    training = {
        "gradients_f32": params * 4 / devices * (2 if micro_count > 1 else 1),
        "saved_layer_inputs": (text.num_hidden_layers + 1) * tokens * text.hidden_size * compute_bytes,
        # the prompts' blocked causal scores; the answers' over their whole prompt and, blocked, their own
        "layer_backward_attention": text.num_attention_heads
        * (
            micro_states * CAUSAL_BLOCK_FRACTION * prompt_len**2
            + micro_rows * response_len * (prompt_len + CAUSAL_BLOCK_FRACTION * response_len)
        )
        * score_bwd,
        "layer_backward_mlp": tokens * text.intermediate_size * compute_bytes * 4,
        "logprob_head_f32": micro_rows * logprob_chunk * text.vocab_size * 4 * 3,
        "vision_saved_block_inputs": micro_states
        * vision.depth
        * layout.num_slots
        * vision.hidden_size
        * compute_bytes,
        "vision_block_backward": micro_states * vision.num_heads * layout.num_slots**2 * score_bwd
        + micro_states * layout.num_slots * vision.intermediate_size * compute_bytes * 4,
    }
    phases = {"sampling": sum(sampling.values()), "training": sum(training.values())}
    total = sum(persistent.values()) + max(phases.values())
    return {
        "model": name,
        "params": params,
        "devices": devices,
        "states": states,
        "group": group,
        "prompt_len": prompt_len,
        "image_tokens": image_tokens,
        "response_len": response_len,
        "micro_states_per_device": micro_states,
        "micro_batches": micro_count,
        "kl_reference": kl,
        "fused_attention": fused_attention,
        "persistent": persistent,
        "sampling": sampling,
        "training": training,
        "phase_totals": phases,
        "peak_phase": max(phases, key=phases.get),
        "total_bytes": total,
    }


def memory_tables() -> list[dict]:
    return [
        g1_memory_per_device(name, micro_states_per_device=micro, fused_attention=fused)
        for name in ("3b", "7b")
        for micro, fused in ((1, False), (1, True), (None, False))
    ]


def print_memory(rows: list[dict], device_gib: float = 80 * 1e9 / GIB) -> None:
    first = rows[0]
    print(
        f"\n3. Memory per device (GiB), G1 recipe: {first['states']} states x {first['group']}, prompt "
        f"{first['prompt_len']} ({first['image_tokens']} image tokens), responses up to {first['response_len']}, "
        f"{first['devices']} devices, FSDP; compute bf16, parameters and AdamW float32"
    )
    keys = (
        [("persistent", k) for k in first["persistent"]]
        + [("sampling", k) for k in first["sampling"]]
        + [("training", k) for k in first["training"]]
    )
    headers = [
        f"{r['model'].upper()} m={r['micro_states_per_device']}{' flash' if r['fused_attention'] else ''}" for r in rows
    ]
    print(
        f"m = states per micro-batch per device ({first['states'] // first['devices']}: the recipe as is, one "
        f"micro-batch); flash = attention that never holds the score matrix"
    )
    print(f"{'component':<58} " + " ".join(f"{h:>11}" for h in headers))
    for phase, key in keys:
        print(f"{phase + ': ' + key:<58} " + " ".join(f"{r[phase][key] / GIB:>11.2f}" for r in rows))
    for phase in ("sampling", "training"):
        print(f"{phase + ' phase total':<58} " + " ".join(f"{r['phase_totals'][phase] / GIB:>11.2f}" for r in rows))
    print(f"{'peak = persistent + larger phase':<58} " + " ".join(f"{r['total_bytes'] / GIB:>11.2f}" for r in rows))
    print(
        f"{'fits 80 GB (' + f'{device_gib:.1f}' + ' GiB)':<58} "
        + " ".join(f"{'yes' if r['total_bytes'] / GIB <= device_gib else 'NO':>11}" for r in rows)
    )


# ---------------------------------------------------------------------------------------- 4. the update alone
PATHS = (("per_row", False), ("shared", True))


def _timed_update(trainer: Trainer, settings, batch, shared: bool) -> float:
    """Wall seconds of one update of a copy of the trainer's state (the step donates it) on `batch`."""
    trainer.grpo_static["settings"] = dataclasses.replace(settings, shared_prefix=shared)
    state = jax.block_until_ready(jax.tree.map(jnp.copy, trainer.state))
    started = time.perf_counter()
    _, metrics = trainer._train_step(state, trainer.frozen, trainer.reference, batch)
    jax.device_get(metrics)
    return time.perf_counter() - started


def update_benchmark(image_size, states: int, groups, length: int, runs: int, **policy) -> list[dict]:
    """Seconds per GRPO update (loss, gradient, AdamW, the metrics read on the host) of the shared-prefix
    update against the per-row one (`UpdateSettings.shared_prefix` False: each answer with its own copy of
    the prompt, the update before #21), on one rollout of `Trainer` per group size, the two interleaved
    `runs` times after one compiling call each; medians."""
    results = []
    for group in groups:
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(grpo_config(image_size, states, group, length, run_dir, **policy))
            batch = trainer.batch_of(trainer.collect(0))
            settings = trainer.grpo_static["settings"]

            first = {name: _timed_update(trainer, settings, batch, shared) for name, shared in PATHS}
            times = {"per_row": [], "shared": []}
            for _ in range(runs):
                for name, shared in PATHS:
                    times[name].append(_timed_update(trainer, settings, batch, shared))
            trainer.grpo_static["settings"] = settings
            row = {
                "group": group,
                "states": states,
                "length": length,
                "prompt_len": int(trainer.rollout.prompts.length),
                "kl_coef": trainer.config.grpo.kl_coef,
                "first_call": first,
                "times": times,
                "median": {name: statistics.median(t) for name, t in times.items()},
            }
            row["speedup"] = row["median"]["per_row"] / row["median"]["shared"]
            results.append(row)
            print_update(results[-1:])
    return results


def print_update(rows: list[dict]) -> None:
    for r in rows:
        print(
            f"\n4. Update alone, G = {r['group']}: {r['states']} states x {r['group']} answers, "
            f"{r['prompt_len']}-token prompts, {r['length']} answer tokens, KL {r['kl_coef']}: "
            f"per-row {r['median']['per_row']:.3f} s, "
            f"shared-prefix {r['median']['shared']:.3f} s (median of {len(r['times']['shared'])}): "
            f"{r['speedup']:.2f}x; first calls (compile) {r['first_call']['per_row']:.1f} s / "
            f"{r['first_call']['shared']:.1f} s"
        )


def update_flops(
    name: str,
    *,
    states: int = 16,
    group: int = 5,
    prompt_len: int = 1100,
    answer_len: int = 256,
    image_hw=(840, 644),
    kl: bool = True,
    remat: bool = False,
) -> dict:
    """Model FLOPs of one GRPO update (multiply-add = 2), per-row against shared-prefix, from the shapes.

    Counted as `bench_model.forward_flops` counts a forward: every decoder matmul (q/k/v/o, SwiGLU) on the
    tokens it runs on, causal attention (a token reads the keys up to itself: per row, its whole
    prompt + answer; shared, a prompt token its prompt's, an answer token its prompt's and its answer's up
    to itself), lm_head on the answer positions only (what `token_logprobs` scores), and the vision tower
    once per state in both (the image is already encoded once per prompt). Norms, rotary and softmax are
    left out. The trained pass costs 3 forwards (forward + backward), 4 with `remat`; the KL reference
    pass (`kl`) 1 forward, also shared-prefix in the shared update.
    """
    config = preset(name)
    t, v = config.text, config.vision
    d, hd, heads, kv, layers = (
        t.hidden_size,
        t.head_dim,
        t.num_attention_heads,
        t.num_key_value_heads,
        t.num_hidden_layers,
    )
    per_token = layers * 2 * (d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * t.intermediate_size)
    per_key = layers * 4 * heads * hd  # scores and value product of one query against one key, all layers
    rows = states * group
    total = prompt_len + answer_len
    head = rows * answer_len * 2 * d * t.vocab_size
    per_row = {
        "decoder_matmuls": rows * total * per_token,
        "attention": rows * per_key * total * (total + 1) / 2,
    }
    shared = {
        "decoder_matmuls": (states * prompt_len + rows * answer_len) * per_token,
        "attention": states * per_key * prompt_len * (prompt_len + 1) / 2
        + rows * per_key * (answer_len * prompt_len + answer_len * (answer_len + 1) / 2),
    }
    patches = int(np.prod(grid_thw(*image_hw)))
    frame = patches
    window = min(frame, (v.window_merge_units * v.spatial_merge_size) ** 2)
    dv, merged = v.hidden_size, 4 * v.hidden_size
    vision = states * patches * (2 * v.patch_features * dv + v.depth * 2 * (4 * dv * dv + 3 * dv * v.intermediate_size))
    vision += states * sum(
        patches * 4 * dv * (frame if b in v.fullatt_block_indexes else window) for b in range(v.depth)
    )
    vision += states * patches // 4 * 2 * (merged * merged + merged * v.out_hidden_size)
    passes = (4 if remat else 3) + (1 if kl else 0)
    out = {
        "model": name,
        "states": states,
        "group": group,
        "prompt_len": prompt_len,
        "answer_len": answer_len,
        "image_hw": list(image_hw),
        "kl": kl,
        "remat": remat,
        "forward_passes": passes,
    }
    for label, parts in (("per_row", per_row), ("shared", shared)):
        forward = sum(parts.values()) + head + vision
        out[label] = {
            **{k: float(x) for k, x in parts.items()},
            "lm_head": float(head),
            "vision": float(vision),
            "forward": float(forward),
            "update": float(passes * forward),
        }
    out["ratio"] = out["per_row"]["update"] / out["shared"]["update"]
    return out


def print_flops(r: dict) -> None:
    print(
        f"\n5. FLOPs of one GRPO update ({r['model']}, {r['states']} states x {r['group']} answers, "
        f"{r['prompt_len']}-token prompts, {r['answer_len']}-token answers, "
        f"image {r['image_hw'][0]}x{r['image_hw'][1]}, "
        f"{r['forward_passes']} forward-equivalents: train fwd+bwd{' + remat' if r['remat'] else ''}"
        f"{' + KL reference' if r['kl'] else ''})"
    )
    print(f"{'part (one forward, TFLOP)':<28} {'per-row':>10} {'shared':>10}")
    for key in ("decoder_matmuls", "attention", "lm_head", "vision", "forward"):
        print(f"{key:<28} {r['per_row'][key] / 1e12:>10.2f} {r['shared'][key] / 1e12:>10.2f}")
    print(f"{'update (TFLOP)':<28} {r['per_row']['update'] / 1e12:>10.1f} {r['shared']['update'] / 1e12:>10.1f}")
    print(f"per-row / shared: {r['ratio']:.2f}x")


# ---------------------------------------------------------------------------------------- main
def machine() -> dict:
    def shell(command):
        try:
            return subprocess.run(command, capture_output=True, text=True, shell=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = {"python": platform.python_version(), "jax": jax.__version__}
    for module in ("torch", "transformers", "trl"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            pass
    return {
        "cpu": shell("lscpu | grep 'Model name' | sed 's/.*: *//'"),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "device": str(jax.devices()[0].device_kind),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": shell("git -C " + REPO + " rev-parse --short HEAD"),
        "versions": versions,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=["decode", "grpo", "memory"])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny decode (torch at 1 thread, no 1-token calls), small frames, 1 timed GRPO step, no TRL",
    )
    parser.add_argument("--presets", nargs="+", help="decode presets (default: bench tiny; --quick: tiny)")
    parser.add_argument("--batch", type=int, default=8, help="decode prompts (G = 1)")
    parser.add_argument("--prompt-len", type=int, default=256, help="decode prompt tokens, image included")
    parser.add_argument("--new-tokens", type=int, help="decode tokens per row (default 128; --quick: 32)")
    parser.add_argument("--image-px", type=int, default=224, help="decode image side in pixels (224: 64 tokens)")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per decode configuration")
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="2048 frame size for the GRPO step (default: the game's 448x392; --quick: 140x112)",
    )
    parser.add_argument("--states", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--length", type=int, default=32, help="new tokens per answer in the GRPO step")
    parser.add_argument("--steps", type=int, help="timed GRPO steps after the first (default 3; --quick: 1)")
    parser.add_argument(
        "--groups", type=int, nargs="+", default=[4, 8], help="update part: the group sizes (default 4 8)"
    )
    parser.add_argument("--update-runs", type=int, default=3, help="update part: timed calls of each path")
    parser.add_argument(
        "--grpo-model",
        default="tiny",
        help="GRPO step: a preset (random init, e.g. 3b on a GPU) or a checkpoint directory; TRL "
        "runs only for the default policy settings",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="GRPO step: compute dtype")
    parser.add_argument(
        "--param-dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="GRPO step: parameter (and optimizer state) dtype",
    )
    parser.add_argument("--tokenizer", help="GRPO step: a tokenizer.json (default: the model's own)")
    parser.add_argument("--remat", action="store_true", help="GRPO step: rematerialise the decoder layers")
    parser.add_argument("--kl-coef", type=float, default=0.0, help="GRPO step: KL coefficient (> 0 keeps a reference)")
    parser.add_argument(
        "--micro-batch-states", type=int, help="GRPO step: states per micro-batch of the update (default: all at once)"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        nargs="+",
        help="decode: transformers runs at each of these thread counts and the faster one is "
        "compared (default 1 2; --quick: 1)",
    )
    parser.add_argument("--trl-threads", type=int, default=1, help="torch threads of the TRL run")
    parser.add_argument("--skip-torch", action="store_true", help="decode: ours only")
    parser.add_argument("--skip-trl", action="store_true", help="GRPO: ours only")
    parser.add_argument("--json", default="out/bench_train.json", help="where the results go")
    args = parser.parse_args(argv)
    defaults = (
        dict(presets=["tiny"], new_tokens=32, steps=1, torch_threads=[1], image_size=(140, 112))
        if args.quick
        else dict(presets=["bench", "tiny"], new_tokens=128, steps=3, torch_threads=[1, 2], image_size=None)
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("batch", "prompt_len", "runs", "states", "group", "length", "steps", "trl_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.torch_threads) < 1:
        parser.error("--torch-threads must be >= 1")
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2 (the decode-only rate compares N tokens with 1)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except ConfigError as error:  # e.g. a frame size the game refuses: one line, not a traceback
        print(f"bench_train.py: error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    results = {
        "machine": machine(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "quick": args.quick,
    }
    print(
        f"{results['machine']['cpu']} ({os.cpu_count()} CPUs), load average "
        f"{' '.join(f'{x:.1f}' for x in results['machine']['load_average'])}, {results['machine']['date_utc']}"
    )
    if "memory" in args.parts:
        results["memory"] = memory_tables()
        print_memory(results["memory"])
    if "decode" in args.parts:
        results["decode"] = []
        for name in args.presets:  # printed one preset at a time: a large preset takes minutes
            results["decode"].append(
                decode_benchmark(
                    name,
                    batch=args.batch,
                    prompt_len=args.prompt_len,
                    new_tokens=args.new_tokens,
                    image_px=args.image_px,
                    runs=args.runs,
                    one_token=not args.quick,
                    torch_threads=() if args.skip_torch else tuple(args.torch_threads),
                )
            )
            print_decode(results["decode"][-1:])
    policy = dict(
        model=args.grpo_model,
        tokenizer=args.tokenizer,
        dtype=args.dtype,
        param_dtype=args.param_dtype,
        remat=args.remat,
        kl_coef=args.kl_coef,
        micro_batch_states=args.micro_batch_states,
    )
    image_size = tuple(args.image_size) if args.image_size else None
    if "grpo" in args.parts:
        # TRL is matched to the default step only (tiny, float32, no KL, one micro-batch)
        matched = policy == dict(
            model="tiny",
            tokenizer=None,
            dtype="float32",
            param_dtype="float32",
            remat=False,
            kl_coef=0.0,
            micro_batch_states=None,
        )
        results["grpo"] = grpo_benchmark(
            image_size,
            args.states,
            args.group,
            args.length,
            args.steps,
            args.trl_threads,
            with_trl=matched and not (args.quick or args.skip_trl),
            **policy,
        )
        print_grpo(results["grpo"])
    if "update" in args.parts:
        results["update"] = update_benchmark(
            image_size, args.states, args.groups, args.length, args.update_runs, **policy
        )
    if "flops" in args.parts:
        results["flops"] = [update_flops("3b"), update_flops("3b", remat=True)]
        print_flops(results["flops"][0])
        print(f"(with remat: per-row / shared {results['flops'][1]['ratio']:.2f}x)")
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["wall_s"] = time.perf_counter() - started
    print(
        f"\nwall time {results['wall_s']:.0f} s; load average at the end "
        f"{' '.join(f'{x:.1f}' for x in results['machine']['load_average_end'])}"
    )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=lambda x: x.item() if hasattr(x, "item") else str(x))
    return 0


if __name__ == "__main__":
    sys.exit(main())
