"""Environment throughput: game logic steps/s (with auto-reset, actions uniform over the valid
mask), rendered frames/s, and the env work of one G1 training step, for every registered game;
for games that generate their boards (Sokoban) also the generation cost per board (a vmapped
`reset`; `--resets` measures it for any game), steps/s with resets drawn from a pool of boards
generated up front, and steps/s without resets.

    python experiments/bench_envs.py                       # all games, batch 1/64/1024/4096
    python experiments/bench_envs.py --games 2048 --compare --json out/bench_envs.json
    python experiments/bench_envs.py --games sokoban --compare  # beside jumanji's Sokoban
    python experiments/bench_envs.py --g1-step             # only the G1-step measure
    python experiments/bench_envs.py --games frozenlake --config board_size=8 --resets   # an option, resets/s

Timings: each measured function is jitted once (compile time reported separately), then run
`--repeats` times; the table shows the median (and best) of those runs. On a shared machine
best-of-N is the better estimate of what the code can do; both are in the JSON.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp

import envs
from envs.wrappers import G1_WARMUP_MOVES

G1_FRAME = (840, 644)  # G1 resizes to 640x840 (WxH); the processor then makes it 644x840
G1_STATES, G1_GROUP = 128, 5
POOL_ROOMS = 10_000  # Sokoban rooms generated up front for the pool-reset rows


def scan_length(batch: int) -> int:
    return 1000 if batch <= 64 else 200 if batch <= 1024 else 100


def timed(fn, *args, repeats: int):
    """(compile+first-run seconds, list of steady-state seconds)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - start)
    return first, runs


def logic_rollout(env, batch: int, steps: int, auto_reset: bool = True, params=None):
    """A jitted rollout of `steps` auto-reset steps for `batch` boards; actions uniform over
    each board's valid actions. Returns the number of finished episodes (a sanity check).
    auto_reset=False: plain steps (a finished board stays finished), the game logic alone for
    games whose reset is costly (Sokoban generates a room, and `auto_reset_step` computes a
    reset for every board at every step)."""
    step_fn = envs.auto_reset_step if auto_reset else lambda env, k, s, a, p: env.step(k, s, a, p)
    params = env.default_params if params is None else params

    def run(key):
        state = jax.vmap(lambda k: env.reset(k, params))(jax.random.split(key, batch))

        def body(state, k):
            act_keys, step_keys = jnp.split(jax.random.split(k, 2 * batch), 2)
            actions = jax.vmap(lambda kk, s: env.random_valid_action(kk, s, params))(act_keys, state)
            state, _, done, _ = jax.vmap(lambda kk, s, a: step_fn(env, kk, s, a, params))(step_keys, state, actions)
            return state, done.sum()

        _, finished = jax.lax.scan(body, state, jax.random.split(key, steps))
        return finished.sum()

    return jax.jit(run)


def bench_reset(env, batch: int, repeats: int) -> dict:
    """Fresh games per second: a vmapped `reset` of B boards with the default params (where a game
    draws its board on the device, as FrozenLake's random maps and Sokoban's rooms, that is the
    generation cost; also as microseconds per board)."""
    fn = jax.jit(jax.vmap(lambda k: env.reset(k, env.default_params)))
    keys = jax.random.split(jax.random.key(0), batch)
    first, runs = timed(fn, keys, repeats=repeats)
    return dict(
        metric="resets_per_s",
        batch=batch,
        compile_s=first,
        median=batch / statistics.median(runs),
        best=batch / min(runs),
        us_per_board_best=min(runs) / batch * 1e6,
    )


def config_label(name: str, config: dict) -> str:
    """A result row's game: the name, then the --config options it was built with."""
    return name + "".join(f" {k}={v}" for k, v in config.items())


def parse_config(items) -> dict:
    """--config key=value pairs; values are read as Python literals where they parse (8, True,
    "4x4"), else kept as strings."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--config expects key=value, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def warm_batch(env, batch: int, moves: int = 20):
    return jax.jit(lambda k: envs.warmup_states(env, k, batch, num_moves=moves))(jax.random.key(1))


def bench_logic(env, batch: int, repeats: int, auto_reset: bool = True, params=None, metric=None) -> dict:
    steps = scan_length(batch)
    fn = logic_rollout(env, batch, steps, auto_reset, params)
    first, runs = timed(fn, jax.random.key(0), repeats=repeats)
    finished = int(fn(jax.random.key(0)))
    return dict(
        metric=metric or ("steps_per_s" if auto_reset else "steps_per_s_no_reset"),
        batch=batch,
        scan_steps=steps,
        compile_s=first,
        median=batch * steps / statistics.median(runs),
        best=batch * steps / min(runs),
        episodes=finished,
    )


def bench_render(env, batch: int, repeats: int, donate: bool) -> dict:
    """Frames/s of `render_batch`; with donate=True into a reused (donated) frames buffer."""
    states = warm_batch(env, batch)
    h, w = env.image_size
    if donate:
        fn = jax.jit(lambda frames, s: envs.render_into(env, frames, s), donate_argnums=0)
        frames = [jnp.zeros((batch, h, w, 3), jnp.uint8)]

        def call(s):  # thread the buffer through the calls, as a training loop would
            frames[0] = fn(frames[0], s)
            return frames[0]

        first, runs = timed(call, states, repeats=repeats)
    else:
        first, runs = timed(jax.jit(lambda s: envs.render_batch(env, s)), states, repeats=repeats)
    return dict(
        metric="frames_per_s",
        batch=batch,
        image=f"{h}x{w}",
        donated=donate,
        compile_s=first,
        median=batch / statistics.median(runs),
        best=batch / min(runs),
    )


def g1_step_fn(env, warmup_moves: int, policy: str):
    """The env work of one G1 training step, done the JAX way, as one jitted function:
    128 start states (reset + random warm-up moves), their 128 frames (written into the
    donated frames buffer of the previous step), and the rewards of 5 answers per state
    scored from the same state (parallel actions)."""
    params = env.default_params

    def step(frames, key):
        warm_key, answer_key, score_key = jax.random.split(key, 3)
        states = envs.warmup_states(env, warm_key, G1_STATES, params, num_moves=warmup_moves, policy=policy)
        frames = envs.render_into(env, frames, states, params)
        # stand-ins for the model's parsed answers: any action id, valid or not
        answers = jax.random.randint(answer_key, (G1_STATES, G1_GROUP), 0, env.num_actions)
        keys = jax.random.split(score_key, G1_STATES)
        _, rewards, _, _ = jax.vmap(lambda k, s, a: envs.parallel_step(env, k, s, a, params))(keys, states, answers)
        return frames, rewards

    return jax.jit(step, donate_argnums=0)


def bench_g1_step(name: str, repeats: int, policy: str, config: dict | None = None) -> dict:
    env = envs.make(name, **{**(config or {}), "image_size": G1_FRAME})
    moves = G1_WARMUP_MOVES.get(name, 0)
    fn = g1_step_fn(env, moves, policy)
    frames = [jnp.zeros((G1_STATES, *G1_FRAME, 3), jnp.uint8)]
    keys = iter(jax.random.split(jax.random.key(0), repeats + 1))

    def call():
        frames[0], rewards = fn(frames[0], next(keys))
        return frames[0], rewards

    first, runs = timed(call, repeats=repeats)
    assert frames[0].shape == (G1_STATES, *G1_FRAME, 3)
    return dict(
        metric="g1_step_s",
        game=config_label(name, config or {}),
        warmup_moves=moves,
        warmup_policy=policy,
        image=f"{G1_FRAME[0]}x{G1_FRAME[1]}",
        compile_s=first,
        median=statistics.median(runs),
        best=min(runs),
    )


def cpu_seconds(fn, *args, repeats: int) -> float:
    """Best-of-`repeats` CPU time (all threads of this process) of a jitted call: steadier
    than wall time on a shared machine, and comparable between calls of different sizes."""
    jax.block_until_ready(fn(*args))
    runs = []
    for _ in range(repeats):
        start = time.process_time()
        jax.block_until_ready(fn(*args))
        runs.append(time.process_time() - start)
    return min(runs)


def bench_shisensho_check(repeats: int, batch: int = 1024) -> list[dict]:
    """What the legal-pair update (the "any pair left" check, `pair_legal`) costs at 6x6 and
    12x12: CPU time per board of a vmapped `step` and of the update alone; and its share of
    the G1 step at that board size (128 boards x 250 warm-up steps + 5x128 scored answers,
    each running the update once), measured by ablation: the same G1 step with the update
    swapped for a free stand-in (every listed pair stays legal), CPU time of both."""
    from envs import shisensho

    rows = []
    for preset in ("base", "more_tiles"):
        env = envs.make("shisensho", preset=preset, image_size=G1_FRAME)
        states = warm_batch(env, batch, moves=10)
        keys = jax.random.split(jax.random.key(2), batch)
        actions = jax.vmap(env.random_valid_action)(keys, states)
        step_us = cpu_seconds(jax.jit(jax.vmap(env.step)), keys, states, actions, repeats=repeats) / batch * 1e6
        update = jax.jit(jax.vmap(shisensho.pair_legal))
        update_us = cpu_seconds(update, states.board, states.pairs, repeats=repeats) / batch * 1e6

        def g1_cpu(env=env):
            fn = g1_step_fn(env, G1_WARMUP_MOVES["shisensho"], "uniform")
            frames = [jnp.zeros((G1_STATES, *G1_FRAME, 3), jnp.uint8)]

            def g1_step(key):
                frames[0], rewards = fn(frames[0], key)
                return rewards

            return cpu_seconds(g1_step, jax.random.key(3), repeats=repeats)

        real = g1_cpu()
        original = shisensho.pair_legal
        shisensho.pair_legal = lambda board, pairs: pairs < board.size**2  # the stand-in
        try:
            without = g1_cpu()
        finally:
            shisensho.pair_legal = original
        g = env.board_size
        rows.append(
            dict(
                metric="legal_pair_share",
                game="shisensho",
                board=f"{g}x{g}",
                batch=batch,
                step_us=step_us,
                legal_pairs_us=update_us,
                g1_step_cpu_s=real,
                g1_without_update_cpu_s=without,
                g1_update_cpu_s=real - without,
                g1_share=(real - without) / real,
            )
        )
    return rows


# --- other libraries, for --compare ----------------------------------------------------------


def compare_rollouts(batch: int):
    """pgx and jumanji 2048 rollouts in the same style (actions uniform over the legal mask),
    when those packages are installed: {label: jitted fn(key) -> finished episodes}."""
    out = {}
    steps = scan_length(batch)

    def uniform_legal(key, mask):
        logits = jnp.where(mask, 0.0, -jnp.inf)
        return jax.random.categorical(key, logits)

    try:
        import pgx
        import pgx.experimental

        penv = pgx.make("2048")

        def pgx_run(key, auto):
            state = jax.vmap(penv.init)(jax.random.split(key, batch))

            def body(state, k):
                ka, ks = jnp.split(jax.random.split(k, 2 * batch), 2)
                actions = jax.vmap(uniform_legal)(ka, state.legal_action_mask)
                step = pgx.experimental.auto_reset(penv.step, penv.init) if auto else penv.step
                state = jax.vmap(step)(state, actions, ks)
                return state, state.terminated.sum()

            _, fin = jax.lax.scan(body, state, jax.random.split(key, steps))
            return fin.sum()

        out["pgx 2048 (no reset)"] = jax.jit(lambda k: pgx_run(k, False))
        out["pgx 2048 (auto_reset)"] = jax.jit(lambda k: pgx_run(k, True))
    except ImportError:
        pass
    try:
        import jumanji
        from jumanji.wrappers import AutoResetWrapper

        jenv = jumanji.make("Game2048-v1")

        def jumanji_run(key, auto):
            env = AutoResetWrapper(jenv) if auto else jenv
            state, ts = jax.vmap(env.reset)(jax.random.split(key, batch))

            def body(carry, k):
                state, ts = carry
                actions = jax.vmap(uniform_legal)(jax.random.split(k, batch), ts.observation.action_mask)
                state, ts = jax.vmap(env.step)(state, actions)
                return (state, ts), ts.last().sum()

            _, fin = jax.lax.scan(body, (state, ts), jax.random.split(key, steps))
            return fin.sum()

        out["jumanji 2048 (no reset)"] = jax.jit(lambda k: jumanji_run(k, False))
        out["jumanji 2048 (AutoResetWrapper)"] = jax.jit(lambda k: jumanji_run(k, True))
    except ImportError:
        pass
    return out


def compare_sokoban_rollouts(batch: int):
    """jumanji's Sokoban (1.1.2) in the same style, when installed: auto-reset rollouts with
    uniformly random actions (it has no action mask; illegal moves are no-ops). Its levels come
    from the 2 built-in toy levels (`ToyGenerator`): its default generator downloads the Boxoban
    levels, and either way a reset loads a stored level, where ours generates a room."""
    try:
        from jumanji.environments.routing.sokoban import Sokoban
        from jumanji.environments.routing.sokoban.generator import ToyGenerator
        from jumanji.wrappers import AutoResetWrapper
    except ImportError:
        return {}
    env = AutoResetWrapper(Sokoban(generator=ToyGenerator()))
    steps = scan_length(batch)

    def run(key):
        state, ts = jax.vmap(env.reset)(jax.random.split(key, batch))

        def body(carry, k):
            state, ts = carry
            actions = jax.random.randint(k, (batch,), 0, 4)
            state, ts = jax.vmap(env.step)(state, actions)
            return (state, ts), ts.last().sum()

        _, fin = jax.lax.scan(body, (state, ts), jax.random.split(key, steps))
        return fin.sum()

    return {"jumanji Sokoban 10x10 (AutoResetWrapper, toy levels)": jax.jit(run)}


# --- driver ------------------------------------------------------------------------------------


def compare(game: str, others: dict, batch: int, rows: list, repeats: int, emit, metric: str) -> None:
    """Time other libraries' rollouts of `game` at `batch` and set each beside our `metric` row."""
    ours = next(r for r in rows if r.get("game") == game and r["metric"] == metric and r["batch"] == batch)
    for label, fn in others.items():
        first, runs = timed(fn, jax.random.key(0), repeats=repeats)
        n = batch * scan_length(batch)
        row = dict(
            game=label,
            metric="steps_per_s",
            batch=batch,
            compile_s=first,
            median=n / statistics.median(runs),
            best=n / min(runs),
            g1jax_ratio_best=ours["best"] / (n / min(runs)),
        )
        emit(row)
        print(f"{'':<34} g1jax {game} ({metric}, auto-reset) / {label}: {row['g1jax_ratio_best']:.2f}x (best vs best)")


def fmt(v: float) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.3g}"


def machine() -> dict:
    dev = jax.devices()[0]
    return dict(
        platform=platform.platform(),
        python=platform.python_version(),
        cpus=os.cpu_count(),
        jax=jax.__version__,
        backend=jax.default_backend(),
        device=str(dev.device_kind),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", nargs="*", default=None, help=f"default: all ({', '.join(envs.list_games())})")
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 64, 1024, 4096])
    parser.add_argument(
        "--g1-batches", nargs="*", type=int, default=[1, 64, 1024], help="batches for frames at 840x644"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--compare", action="store_true", help="also run pgx / jumanji 2048 and jumanji Sokoban if installed"
    )
    parser.add_argument("--g1-step", action="store_true", help="only the G1-step measure")
    parser.add_argument(
        "--g1-warmup-policy",
        choices=envs.wrappers.WARMUP_POLICIES,
        default="uniform",
        help="warm-up moves of the G1 step: G1's uniform action ids (default) or valid moves",
    )
    parser.add_argument(
        "--shisensho-check",
        action="store_true",
        help="only: cost of the Shisen-Sho legal-pair update at 6x6 and 12x12, alone and within a G1 step",
    )
    parser.add_argument(
        "--config", nargs="*", default=None, help="game options for every game measured, as key=value (board_size=8)"
    )
    parser.add_argument("--resets", action="store_true", help="also fresh games per second (reset alone)")
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args(argv)
    games = args.games or envs.list_games()
    config = parse_config(args.config)
    for g in games:
        if g not in envs.list_games():
            parser.error(f"unknown game {g!r}; available: {', '.join(envs.list_games())}")
    rows = []

    def emit(row):
        rows.append(row)
        label = row.get("game", "")
        extra = f" image {row['image']}" if "image" in row else ""
        extra += " donated" if row.get("donated") else ""
        if row["metric"] == "g1_step_s":
            print(
                f"{label:<34} G1 step ({row['warmup_moves']} {row['warmup_policy']} warm-up moves, "
                f"128 frames{extra}, 5x128 rewards): "
                f"median {row['median']:.3f} s, best {row['best']:.3f} s  [compile {row['compile_s']:.1f} s]",
                flush=True,
            )
        else:
            print(
                f"{label:<34} {row['metric']:<20} B={row['batch']:<5}{extra:<24} median {fmt(row['median']):>8}  "
                f"best {fmt(row['best']):>8}  [compile+first {row['compile_s']:.1f} s]",
                flush=True,
            )

    print(f"# {machine()}")
    if args.shisensho_check:
        for row in bench_shisensho_check(args.repeats):
            rows.append(row)
            print(
                f"shisensho {row['board']:<6} CPU per board at batch {row['batch']}: step {row['step_us']:.2f} us, "
                f"legal-pair update alone {row['legal_pairs_us']:.2f} us | G1 step (CPU) {row['g1_step_cpu_s']:.3f} s, "
                f"of which the update {row['g1_update_cpu_s']:.3f} s = {row['g1_share']:.0%}",
                flush=True,
            )
        games = []
    elif not args.g1_step:
        for name in games:
            env = envs.make(name, **config)
            label = config_label(name, config)
            for b in args.batches:
                emit(dict(game=label, **bench_logic(env, b, args.repeats)))
            if hasattr(env, "room_pool"):  # Sokoban: also resets drawn from a pool of rooms, and no resets
                pool = env.room_pool(jax.random.key(7), POOL_ROOMS)
                for b in args.batches:
                    emit(dict(game=label, **bench_logic(env, b, args.repeats, params=pool, metric="steps_per_s_pool")))
                for b in args.batches:
                    emit(dict(game=label, **bench_logic(env, b, args.repeats, auto_reset=False)))
            if args.resets or hasattr(env, "room_pool"):  # the generation cost, always for Sokoban's rooms
                for b in args.batches:
                    emit(dict(game=label, **bench_reset(env, b, args.repeats)))
            big = envs.make(name, **{**config, "image_size": G1_FRAME})
            for donate in (False, True):
                for b in args.batches:
                    emit(dict(game=label, **bench_render(env, b, args.repeats, donate)))
                for b in args.g1_batches:
                    emit(dict(game=label, **bench_render(big, b, args.repeats, donate)))
        if args.compare:
            # Sokoban: ours with pool resets, like jumanji's stored levels
            pairs = (
                ("2048", compare_rollouts, "steps_per_s"),
                ("sokoban", compare_sokoban_rollouts, "steps_per_s_pool"),
            )
            for game, others, metric in pairs:
                if game in games:
                    for b in args.batches:
                        compare(config_label(game, config), others(b), b, rows, args.repeats, emit, metric)
    for name in games:
        emit(bench_g1_step(name, args.repeats, args.g1_warmup_policy, config))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine(), argv=sys.argv[1:], results=rows), f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
