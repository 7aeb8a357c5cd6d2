"""Multi-turn episode rollout (issue #23) at the CPU recipe's shapes (`--recipe multiturn`): speed, and memory
against the history window k and the episode length T.

    python experiments/bench_multiturn.py                          # speed (2 timed rollouts) + memory table
    python experiments/bench_multiturn.py --runs 3 --ks 0,1,2,4 --turns 1,2,4,8 --json out/bench_multiturn.json

1. speed: `EpisodeRollout` on 2048 with the recipe's tiny preset (random init: the policy entering RL is
   the cold start's, whose answers stop earlier, so the answer length is reported with the speed), its
   states_per_step x group_size boards, max_turns, history, max_new_tokens and frame size, from the
   recipe's warm-up start states. The first call (compiles) is reported apart; then `--runs` calls with
   fresh keys: turns/s = active turns / wall time of the call, answer tokens/s = sampled answer tokens of
   active turns / wall time, host parse share = time in the host's decode + parse + text checks
   (`Episodes.host_seconds`) / wall time.
2. memory, for every k in --ks and T in --turns (N = states x group rows per turn; all per process, one
   device):
   - prompt tokens per turn: `EpisodeRollout.prompt_length` (exact, from the token pieces);
   - sampler: XLA's buffer plan of the compiled sampler for one turn (arguments + outputs + temporaries,
     `Compiled.memory_analysis()`; measured from the compiled program, not a process RSS); it depends on
     k and not on T;
   - KV cache per turn: computed, N x (prompt + answer) x layers x 2 x kv_heads x head_dim x 4 bytes;
   - stored episodes (every turn's prompt ids, mask, positions, samples, frames, keys, rewards): computed
     from shapes, and checked against the measured array bytes of the speed part's rollout;
   - the update's batch (`Episodes.turn_batch`: N x T turn rows with their patches): computed from shapes,
     checked against the measured bytes of the speed part's batch.

Prints a table per part and writes everything as JSON (`--json`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from envs.wrappers import G1_WARMUP_MOVES  # noqa: E402
from g1jax import recipes  # noqa: E402
from g1jax.image_processing import grid_thw  # noqa: E402
from g1jax.policy import load_policy  # noqa: E402
from g1jax.rl.episodes import EpisodeConfig, EpisodeRollout, Episodes  # noqa: E402
from g1jax.rl.rewards import g1_weights  # noqa: E402
from g1jax.sampling import _sample_jit  # noqa: E402
from g1jax.trainer import build_games  # noqa: E402

MB = 1e6


def rollout_for(config, model, tokenizer, game, history: int, turns: int) -> EpisodeRollout:
    return EpisodeRollout(
        game,
        tokenizer,
        model.config,
        config=EpisodeConfig(group_size=config.group_size, max_turns=turns, history=history),
        sampling=config.sampling,
        reward_weights=g1_weights(game.name, dict(config.reward_weights).get(game.name)),
        strict_format=config.strict_format,
    )


def array_bytes(tree) -> int:
    return sum(int(x.nbytes) for x in jax.tree.leaves(tree) if hasattr(x, "nbytes"))


def episode_array_bytes(episodes: Episodes) -> int:
    """Measured: the bytes of every array an Episodes holds (device and host)."""
    per_turn = [(t.prompt_ids, t.prompt_mask, t.positions, t.samples) for t in episodes.turns]
    host = (episodes.actions, episodes.solved, episodes.parts)
    return array_bytes((per_turn, episodes.frames, episodes.keys, episodes.active, episodes.rewards, host))


def stored_bytes(rows: int, prompt: int, answer: int, turns: int, frame: tuple, solved: bool) -> int:
    """Computed from shapes: what `episode_array_bytes` counts for T = `turns` turns of `rows` rows."""
    height, width = frame
    per_turn = (
        prompt * (4 + 4 + 3 * 4)  # prompt ids, mask, positions (int32)
        + answer * (4 + 4 + 1)  # answer tokens, log-probs, mask
        + 4 + 1  # answer length, truncated
        + height * width * 3  # the turn's frame (uint8)
        + 2 * 4 + 1 + 4  # state key (2 x uint32), active, reward
        + 4 + 1 + 1 + 4 + 4 + 4  # host: game, legal, invalid, format, perception, parsed action
    )  # fmt: skip
    return rows * turns * per_turn + (rows if solved else 0)


def batch_bytes(rows: int, prompt: int, answer: int, turns: int, patches: int) -> int:
    """Computed from shapes: `Episodes.turn_batch()` of `turns` turns (ids, mask, positions, patches float32
    [patches, 1176], completion, its mask, sampler log-probs, rewards)."""
    return rows * turns * (prompt * 20 + patches * 1176 * 4 + answer * 9 + 4)


def sampler_plan(rollout: EpisodeRollout, graphdef, params, rows: int) -> dict:
    """XLA's memory plan of the compiled sampler for one turn of `rollout` (lowered on shapes, not run)."""
    prompt = rollout.prompt_length(rollout.slots(rollout.config.max_turns))
    height, width = rollout.env.image_shape[:2]
    patches = int(np.prod(grid_thw(height, width)))
    spec = jax.ShapeDtypeStruct
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), rows))
    compiled = _sample_jit.lower(
        graphdef,
        params,
        spec((rows, prompt), jnp.int32),
        spec((3, rows, prompt), jnp.int32),
        spec((rows, prompt), jnp.int32),
        spec((rows * patches, 1176), jnp.float32),
        keys,
        image_grids=(rollout.grid,) * rows,
        group_size=1,
        config=rollout.sampling,
    ).compile()
    stats = compiled.memory_analysis()
    parts = {
        "arguments": int(stats.argument_size_in_bytes),
        "outputs": int(stats.output_size_in_bytes),
        "temporaries": int(stats.temp_size_in_bytes),
    }
    return dict(parts, total=sum(parts.values()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="timed rollouts after the compiling one")
    parser.add_argument("--ks", default="0,1,2,4", help="history windows k of the memory table")
    parser.add_argument("--turns", default="1,2,4,8", help="episode lengths T of the memory table")
    parser.add_argument("--json", default="out/bench_multiturn.json")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    ts = [int(t) for t in args.turns.split(",")]

    config = recipes.config("multiturn")
    model, tokenizer = load_policy(config)
    graphdef, params = nnx.split(model)
    game = build_games(config).games[0]
    text = model.config.text
    turns, history = config.multiturn.max_turns, config.multiturn.history
    rows = config.states_per_step * config.group_size
    answer = config.max_new_tokens
    frame = tuple(game.image_shape[:2])
    patches = int(np.prod(grid_thw(*frame)))
    rollout = rollout_for(config, model, tokenizer, game, history, turns)
    moves = dict(config.warmup_moves).get(game.name, G1_WARMUP_MOVES.get(game.name, 0))
    starts = rollout.start_states(jax.random.key(0), config.states_per_step, moves, config.warmup_policy)

    # ---------------------------------------------------------------- 1. speed
    calls = []
    for index in range(args.runs + 1):
        started = time.perf_counter()
        episodes = rollout(graphdef, params, jax.random.key(100 + index), starts)
        jax.block_until_ready(episodes.rewards)
        wall = time.perf_counter() - started
        active = np.asarray(episodes.active)
        tokens = sum(int(np.asarray(t.samples.mask).sum()) for t in episodes.turns)
        calls.append(
            dict(
                wall_s=wall,
                played=episodes.played,
                active_turns=int(active.sum()),
                answer_tokens=tokens,
                host_s=episodes.host_seconds,
                turns_per_s=active.sum() / wall,
                tokens_per_s=tokens / wall,
                host_share=episodes.host_seconds / wall,
                answer_length=tokens / max(int(active.sum()), 1),
            )
        )
        print(f"call {index}{' (compiles)' if index == 0 else ''}: {calls[-1]}", flush=True)
    timed = calls[1:]
    speed = {
        name: statistics.median(c[name] for c in timed)
        for name in ("wall_s", "turns_per_s", "tokens_per_s", "host_share", "answer_length", "host_s")
    }
    speed["first_call_s"] = calls[0]["wall_s"]

    # the speed part's rollout, measured, against the shape formulas
    prompt = rollout.prompt_length(rollout.slots(turns))
    measured_store = episode_array_bytes(episodes)
    computed_store = stored_bytes(rows, prompt, answer, episodes.played, frame, episodes.solved is not None)
    batch = episodes.turn_batch()
    measured_batch = array_bytes(batch)
    computed_batch = batch_bytes(rows, prompt, answer, episodes.played, patches)
    checks = dict(
        stored_measured=measured_store,
        stored_computed=computed_store,
        batch_measured=measured_batch,
        batch_computed=computed_batch,
    )
    print(f"shape formulas against the measured arrays (k={history}, T played={episodes.played}): {checks}")

    # ---------------------------------------------------------------- 2. memory against k and T
    kv_per_token = text.num_hidden_layers * 2 * text.num_key_value_heads * text.head_dim * 4
    memory = []
    for k in ks:
        per_k = rollout_for(config, model, tokenizer, game, k, max(ts))
        prompt_k = per_k.prompt_length(per_k.slots(max(ts)))
        plan = sampler_plan(per_k, graphdef, params, rows)
        for t in ts:
            memory.append(
                dict(
                    k=k,
                    T=t,
                    prompt_tokens=prompt_k,
                    sampler_plan_bytes=plan["total"],
                    sampler_plan=plan,
                    kv_cache_bytes=rows * (prompt_k + answer) * kv_per_token,
                    stored_bytes=stored_bytes(rows, prompt_k, answer, t, frame, episodes.solved is not None),
                    batch_bytes=batch_bytes(rows, prompt_k, answer, t, patches),
                )
            )
        print(f"k={k}: prompt {prompt_k} tokens, sampler plan {plan}", flush=True)

    # ---------------------------------------------------------------- report
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?")
    load = os.getloadavg()
    shapes = dict(
        states=config.states_per_step,
        group=config.group_size,
        rows=rows,
        max_turns=turns,
        history=history,
        max_new_tokens=answer,
        image_size=frame,
        prompt_tokens=prompt,
        warmup_moves=moves,
    )
    print()
    print(f"Episode rollout, recipe 'multiturn' shapes {shapes}; CPU {model_name}; load {load}")
    print(
        "| first call (compiles) s | wall s / rollout | turns/s | answer tokens/s | host parse share | answer length |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {speed['first_call_s']:.1f} | {speed['wall_s']:.2f} | {speed['turns_per_s']:.2f} | "
        f"{speed['tokens_per_s']:.0f} | {100 * speed['host_share']:.2f}% | {speed['answer_length']:.1f} |"
    )
    print()
    print(f"Memory per turn / per rollout, N = {rows} rows (sampler: XLA plan, measured; the rest computed)")
    print(
        "| k | T | prompt tokens | sampler plan MB (per turn) | KV cache MB (per turn) | stored episodes MB "
        "| update batch MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for m in memory:
        print(
            f"| {m['k']} | {m['T']} | {m['prompt_tokens']} | {m['sampler_plan_bytes'] / MB:.1f} | "
            f"{m['kv_cache_bytes'] / MB:.2f} | {m['stored_bytes'] / MB:.2f} | {m['batch_bytes'] / MB:.2f} |"
        )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout
    out = dict(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        commit=commit.strip(),
        cpu=model_name,
        machine=platform.machine(),
        load_average=load,
        jax=jax.__version__,
        devices=str(jax.devices()[0]),
        shapes=shapes,
        calls=calls,
        speed=speed,
        formula_checks=checks,
        memory=memory,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1, default=float)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
