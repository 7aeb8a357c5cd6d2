"""The closed loop of the G1 paper's evaluation (its Figure 1): boards played for `steps` decisions.

Each decision the policy sees the board (a frame, no history) and answers; the answer is parsed
to an action and the game steps. A run's score is the game's summed reward counted the way the
paper counts it (2048: the merge score; the coordinate games: the number of successful moves),
reported as avg@N with its standard error (`Rollout`). The multi-turn games outside the paper
(FrozenLake, Sokoban; protocol score "solved") count games won, and their rows add episode
metrics: the success rate of each run's first game and the decisions it took (`Rollout.episodes`).

    protocol = PROTOCOLS["2048"]
    env = protocol.make_env()
    rows = evaluate(protocol, env, [make_policy("random", env, protocol)], runs=10, steps=100,
                    key=jax.random.key(0))
    rows[0].mean, rows[0].se

`play` is the loop itself, shared with the teachers' strength (g1jax.evaluation.teacher_strength).
The device policies' (random, teachers) loops run as one jitted `lax.scan`, all of a game's device
policies in ONE compiled program (a `lax.switch` on the row), since compiling the game's step is
what costs time on a CPU. Other policies (a model) are driven by a host loop that calls the same
jitted step function once per decision.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import envs
from g1jax.evaluation.policies import DevicePolicy, Policy
from g1jax.evaluation.protocols import EvalError, GameProtocol


def start_states(env: envs.Env, protocol: GameProtocol, key, runs: int):
    """`runs` fresh boards, each after the protocol's random warm-up (G1 draws uniformly over
    all action ids, 2048's "still" included)."""
    if protocol.warmup_moves == 0:  # no warm-up scan to compile
        return jax.vmap(env.reset)(jax.random.split(key, runs))
    return envs.warmup_states(env, key, runs, num_moves=protocol.warmup_moves, policy="uniform")


def closed_loop_step(env: envs.Env, protocol: GameProtocol, key, states, actions):
    """One decision for the whole batch -> (next states, actions as played, per-step scores [N]).

    2048's test-time parser replaces an unparsable answer (our parser's "still") by a uniform
    move 0..3. A board whose game ended at the previous decision is reset now and this decision
    is wasted (score 0, action ignored), as in gymnasium's vector env (next-step auto-reset),
    which the original's evaluation ran on."""
    fallback_key, step_key, reset_key = jax.random.split(key, 3)
    runs = actions.shape[0]
    actions = jnp.asarray(actions, jnp.int32)
    if protocol.test_time_fallback:
        moves = jax.random.randint(fallback_key, (runs,), 0, 4)
        actions = jnp.where((actions >= 0) & (actions < 4), actions, moves)
    stepped, _, _, info = jax.vmap(env.step)(jax.random.split(step_key, runs), states, actions)
    raw = info["raw_reward"]
    if protocol.score == "solved":  # the game was won (every game scored so reports info["solved"])
        score = info["solved"].astype(jnp.float32)
    else:
        score = raw if protocol.score == "merge" else (raw > 0).astype(jnp.float32)
    finished = states.done
    score = jnp.where(finished, 0.0, score).astype(jnp.float32)

    def reset_finished(stepped):
        return envs.tree_where(finished, jax.vmap(env.reset)(jax.random.split(reset_key, runs)), stepped)

    # a batch-level cond: most decisions end no game, and then no reset is computed at all
    next_states = jax.lax.cond(finished.any(), reset_finished, lambda s: s, stepped)
    return next_states, actions, score


def episode_ends(states, next_states):
    """bool [N]: the decision ended its board's game (won, lost or out of steps). A board that
    was already over before the decision (it restarts now) ends nothing."""
    return ~states.done & next_states.done


def _decision_keys(key):
    """(policy key, game key) of one decision's key, or of a key per board ([B] -> two [B])."""
    pair = jax.random.split(key) if key.ndim == 0 else jax.vmap(jax.random.split)(key)
    return pair[..., 0], pair[..., 1]


def play(states, keys, choose, advance):
    """The closed loop, as one `lax.scan` with a step per decision: the policy picks actions for
    the states it sees (`choose(policy key, states)`), then the game moves on (`advance(game key,
    states, actions)` -> (next states, what the decision records)). `keys` [steps] or [steps, B]
    (each board its own randomness) give the decisions' keys (`_decision_keys`). Returns the
    records stacked [steps, ...]."""

    def decision(states, key):
        policy_key, game_key = _decision_keys(key)
        return advance(game_key, states, choose(policy_key, states))

    return jax.lax.scan(decision, states, keys)[1]


@dataclasses.dataclass
class Rollout:
    """One policy on one game. scores, actions: [runs, steps] (per-step score as the paper counts
    it; actions as played); states: the states the policy saw, a pytree of host arrays
    [steps, runs, ...]; texts[run][step]: the answers (None when not kept); seconds: the row's
    wall time without compile_seconds (the device program, compiled once per game for all device
    rows, is counted on the first of them; the host loop compiles inside its first steps); ended:
    [runs, steps] bool, the decision ended a live game (won, lost or out of steps: `episode_ends`),
    kept for games scored "solved" (None for the others), whose `episodes` it gives."""

    game: str
    policy: str
    scores: np.ndarray
    actions: np.ndarray
    states: Any
    texts: list[list[str]] | None
    seconds: float
    compile_seconds: float = 0.0
    detail: str = ""
    ended: np.ndarray | None = None

    @property
    def runs(self) -> int:
        return self.scores.shape[0]

    @property
    def steps(self) -> int:
        return self.scores.shape[1]

    @property
    def totals(self) -> np.ndarray:
        return self.scores.sum(axis=1)

    @property
    def mean(self) -> float:
        return float(self.totals.mean())

    @property
    def se(self) -> float | None:
        """Standard error of avg@N (sample standard deviation / sqrt(N)); None for one run."""
        if self.runs < 2:
            return None
        return float(self.totals.std(ddof=1) / math.sqrt(self.runs))

    def states_at(self, step: int):
        return jax.tree.map(lambda x: x[step], self.states)

    @property
    def episodes(self) -> dict | None:
        """Episode metrics of a game scored "solved" (None for the others; docs/eval.md). Every run
        starts a fresh game. "success_rate": the share of the runs whose first game was won within
        the evaluated decisions, as the multi-turn frameworks report success within a turn budget,
        with "success_se", its binomial standard error over the runs; a first game still running
        after the last decision counts as not won ("unfinished" counts those runs: give at least
        the game's step limit of decisions to score every first game). "steps_to_solve": the mean
        number of decisions those won first games took (from the run's first decision to the
        winning one, inclusive). "episodes" and "solved": every game that ended within the
        decisions and how many of them were won (the decision that meets a finished game only
        restarts it and is part of no game)."""
        if self.ended is None:
            return None
        won = self.scores > 0  # score "solved": 1 exactly where the decision won the game
        first_won, lengths = np.zeros(self.runs, bool), []
        for run in range(self.runs):
            ends = np.flatnonzero(self.ended[run])
            if len(ends) and won[run, ends[0]]:
                first_won[run] = True
                lengths.append(int(ends[0]) + 1)
        rate = float(first_won.mean())
        return {
            "runs": self.runs,
            "success_rate": rate,
            "success_se": math.sqrt(rate * (1.0 - rate) / self.runs),
            "steps_to_solve": float(np.mean(lengths)) if lengths else None,
            "unfinished": int((~self.ended.any(axis=1)).sum()),
            "episodes": int(self.ended.sum()),
            "solved": int(won.sum()),
        }


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False)


def evaluate(
    protocol: GameProtocol,
    env: envs.Env,
    policies: Sequence[Policy],
    *,
    runs: int,
    steps: int,
    key,
    progress: bool = True,
    keep_texts: bool = True,
    on_device: bool = True,
) -> list[Rollout]:
    """Play `runs` boards for `steps` decisions with each policy; one Rollout per policy, in order.

    Every policy meets the same start boards and the same game randomness (the keys depend only
    on `key`), so rows differ only by their choices. The device policies' loops are one jitted
    program (compiled once per game, policies and shape; later calls reuse it); on_device=False
    drives them from the host instead, one jitted step per decision with the same keys, hence
    the same results."""
    if runs < 1 or steps < 1:
        raise EvalError(f"runs and steps must be >= 1, got runs={runs}, steps={steps}")
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw uint32 key (jax.random.PRNGKey)
    start_key, loop_key = jax.random.split(key)
    step_keys = jax.random.split(loop_key, steps)
    device = tuple(p for p in policies if on_device and isinstance(p, DevicePolicy))
    rollouts = {}
    if device:
        loop, shared = _compiled_device_loop(env, protocol, device, runs, steps, progress)
        compile_seconds = shared.pop("compile_seconds", 0.0)  # paid by the first call only
        for index, policy in enumerate(device):
            bar = shared["bar"] = _progress(steps, f"{protocol.game} {policy.name}", progress)
            begin = time.perf_counter()
            seen, chosen, played, scores, ended = jax.device_get(loop(jnp.int32(index), start_key, step_keys))
            seconds = time.perf_counter() - begin
            bar.close()
            texts = None
            if keep_texts:
                per_step = [policy.answers(jax.tree.map(lambda x, t=t: x[t], seen), chosen[t]) for t in range(steps)]
                texts = [list(row) for row in zip(*per_step)]
            rollouts[id(policy)] = Rollout(
                protocol.game,
                policy.name,
                scores.T,
                played.T,
                seen,
                texts,
                seconds,
                compile_seconds if index == 0 else 0.0,
                policy.detail,
                ended.T if protocol.score == "solved" else None,
            )
    for policy in policies:
        if id(policy) not in rollouts:
            rollouts[id(policy)] = _host_loop(env, protocol, policy, runs, start_key, step_keys, progress, keep_texts)
    return [rollouts[id(p)] for p in policies]


@functools.lru_cache(maxsize=32)
def _compiled_device_loop(env, protocol, policies: tuple[DevicePolicy, ...], runs: int, steps: int, progress: bool):
    """Every device policy's whole rollout as one compiled function of (policy index, start key,
    step keys): start states, then a scan of choose -> step. It returns (states seen, actions
    chosen, actions played, scores, whether the decision ended a live game), each [steps, runs,
    ...]. In `shared`: "bar", the progress bar the scan advances, and "compile_seconds" until the
    first caller takes it."""
    shared = {"bar": None}

    def choose(index, key, states):
        if len(policies) == 1:
            return policies[0].choose_batch(key, states)
        return jax.lax.switch(index, [p.choose_batch for p in policies], key, states)

    def rollout(index, start_key, step_keys):
        def advance(env_key, states, chosen):
            next_states, played, score = closed_loop_step(env, protocol, env_key, states, chosen)
            if progress:
                jax.debug.callback(lambda: shared["bar"].update(1))
            return next_states, (states, chosen, played, score, episode_ends(states, next_states))

        first = start_states(env, protocol, start_key, runs)
        return play(first, step_keys, functools.partial(choose, index), advance)

    begin = time.perf_counter()
    key = jax.random.key(0)
    compiled = jax.jit(rollout).lower(jnp.int32(0), key, jax.random.split(key, steps)).compile()
    shared["compile_seconds"] = time.perf_counter() - begin
    return compiled, shared


@functools.lru_cache(maxsize=32)
def loop_functions(env: envs.Env, protocol: GameProtocol, runs: int):
    """Jitted (start states, one decision, frames) for the host loop; cached per game."""
    start = jax.jit(lambda k: start_states(env, protocol, k, runs))
    step = jax.jit(functools.partial(closed_loop_step, env, protocol))
    render = jax.jit(functools.partial(envs.render_batch, env))
    return start, step, render


def _host_loop(env, protocol, policy: Policy, runs, start_key, step_keys, progress, keep_texts) -> Rollout:
    """The same loop driven from the host: one `policy.act` and one jitted step per decision."""
    start, step, render = loop_functions(env, protocol, runs)
    states = start(start_key)
    seen, played, scores, texts, ended = [], [], [], [], []
    bar = _progress(len(step_keys), f"{protocol.game} {policy.name}", progress)
    begin = time.perf_counter()
    for step_key in step_keys:
        policy_key, env_key = _decision_keys(step_key)
        frames = render(states) if policy.uses_frames else None
        actions, answers = policy.act(policy_key, states, frames)
        actions = np.asarray(actions)
        if actions.shape != (runs,) or len(answers) != runs:
            raise EvalError(
                f"policy {policy.name!r} returned {actions.shape} actions and {len(answers)} answers for {runs} boards"
            )
        seen.append(jax.device_get(states))
        states, moves, score = step(env_key, states, jnp.asarray(actions, jnp.int32))
        ended.append(np.asarray(episode_ends(seen[-1], states)))
        played.append(np.asarray(moves))
        scores.append(np.asarray(score))
        texts.append(list(answers))
        bar.update(1)
    seconds = time.perf_counter() - begin
    bar.close()
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *seen)
    runs_texts = [list(row) for row in zip(*texts)] if keep_texts else None
    return Rollout(
        protocol.game,
        policy.name,
        np.stack(scores).T,
        np.stack(played).T,
        stacked,
        runs_texts,
        seconds,
        detail=getattr(policy, "detail", ""),
        ended=np.stack(ended).T if protocol.score == "solved" else None,
    )
