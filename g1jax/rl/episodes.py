"""Multi-turn episodes on one game: for each start state, G trajectories of up to T turns (issue #23).

Each turn, for all N = S * G boards at once:

    device  draw the frames, key each board's state (`credit.state_hash` of its frame)        `_observe`
    device  build every row's prompt from static token pieces and the history buffers: the last k
            answers as their sampled tokens (and, with history_frames, their frames), then the
            current frame; compact to left padding; M-RoPE positions                          `_assemble`
    device  sample one answer per row (`sampling.sample`)
    host    decode and parse the answers, format / perception checks (only the tokens come over)
    device  step every board; a finished board stops acting: its state is kept, its reward is 0 and
            its later turns are inactive                                                      `_advance`

A turn's prompt (Qwen2.5-VL chat; the last two lines alone are G1's single-turn prompt):

    <|im_start|>system\\n{system}<|im_end|>\\n
    (for each of the last k turns, oldest first)
    <|im_start|>user\\n{past label}[frame]<|im_end|>\\n<|im_start|>assistant\\n{its answer}<|im_end|>\\n
    <|im_start|>user\\n{frame}{the game's prompt}<|im_end|>\\n<|im_start|>assistant\\n

Each turn is its own sequence of bounded length (the history holds at most k answers of at most
max_new_tokens tokens), so memory grows with k, not with T. Without history frames every turn has the
same shape (empty history slots are masked and compacted away), so the sampler compiles once; with
them, turns before k have fewer images and compile once each.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import envs
from g1jax.chat import DEFAULT_SYSTEM_PROMPT, IMAGE_PLACEHOLDER, decode_completions
from g1jax.constants import FACTOR
from g1jax.image_processing import grid_thw, num_image_tokens, preprocess
from g1jax.models.config import Qwen25VLConfig
from g1jax.rl.credit import state_hash
from g1jax.rl.rewards import TEXT_REWARDS, RewardWeights, g1_weights, text_parts, total_reward
from g1jax.rl.rollout import check_tokenizer_matches
from g1jax.sampling import Samples, SamplingConfig, sample
from g1jax.sharding import shard_rows, to_host
from g1jax.tokenizer import Tokenizer
from g1jax.update import Batch

PAST_LABEL = "An earlier turn; the board then:"  # with history frames

PAST_LABEL_NO_FRAME = "An earlier turn (its board is not shown)."


@dataclasses.dataclass(frozen=True, kw_only=True)
class EpisodeConfig:
    """group_size G trajectories per start state, at most max_turns T turns each, a history window of
    the last `history` k answers (with their frames when history_frames)."""

    group_size: int
    max_turns: int
    history: int = 2
    history_frames: bool = False
    system: str = DEFAULT_SYSTEM_PROMPT
    text_reward: str = "bonus"  # TEXT_REWARDS: how a turn's format / perception checks enter its reward

    def __post_init__(self):
        for name, low in (("group_size", 1), ("max_turns", 1), ("history", 0)):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.history_frames, bool):
            raise ValueError(f"history_frames must be True or False, got {self.history_frames!r}")
        if self.text_reward not in TEXT_REWARDS:
            raise ValueError(f"text_reward must be one of {list(TEXT_REWARDS)}, got {self.text_reward!r}")


# ------------------------------------------------------------------------------------ positions
def _running_count(flags: jax.Array) -> jax.Array:
    """Exclusive running count along axis 1 (an associative scan: XLA:CPU's cumsum is quadratic)."""
    inclusive = jax.lax.associative_scan(jnp.add, flags.astype(jnp.int32), axis=1)
    return inclusive - flags.astype(jnp.int32)


def rope_positions(input_ids, attention_mask, *, image_token_id: int, merged_grid: tuple[int, int]) -> jax.Array:
    """int32 [3, B, L]: `models.get_rope_index`'s positions on the device, for prompts whose images all
    have one merged grid (gh, gw) and are separated by text (the chat template's vision_start / end).

    A text token sits at (valid text tokens before it) + span * (images before it), span = max(gh, gw);
    the k-th token of an image starting at s sits at (s, s + k // gw, s + k % gw); padding at 0."""
    gh, gw = merged_grid
    valid = attention_mask.astype(bool)
    image = valid & (input_ids == image_token_id)
    text = valid & ~image
    texts_before = _running_count(text)
    image_tokens_before = _running_count(image)
    images_before, within = image_tokens_before // (gh * gw), image_tokens_before % (gh * gw)
    start = texts_before + images_before * max(gh, gw)
    axes = [start, start + within // gw, start + within % gw]
    positions = jnp.stack([jnp.where(image, axis, start) for axis in axes])
    return jnp.where(valid[None], positions, 0).astype(jnp.int32)


# ------------------------------------------------------------------------------------ output
def turn_rewards(parts, weights: RewardWeights, active, text_reward: str = "bonus") -> np.ndarray:
    """float32 [N, T]: each active turn's total reward from the host parts game / format / perception
    [N, T] (format and perception in [0, 1]) by `weights`; `text_reward` as TEXT_REWARDS; 0 when inactive."""
    if text_reward not in TEXT_REWARDS:
        raise ValueError(f"text_reward must be one of {list(TEXT_REWARDS)}, got {text_reward!r}")
    active = np.asarray(active, bool)
    scored = dict(parts)
    if text_reward == "penalty":
        for name in ("format", "perception"):
            scored[name] = np.asarray(parts[name], np.float32) - 1.0
    row = np.broadcast_to(weights.as_row(), (*active.shape, 3))
    return (total_reward(scored, row) * active).astype(np.float32)


def episode_success(active, legal, solved=None) -> np.ndarray:
    """bool [N] from host arrays active / legal [N, T] and solved ([N] or [N, T], None when the game has no
    notion of winning): solved at some turn; without one, at least one turn played and no illegal move.
    The policy's episodes and the random player's are scored by this one definition."""
    if solved is not None:
        solved = np.asarray(solved, bool)
        return solved.any(1) if solved.ndim == 2 else solved
    active = np.asarray(active, bool)
    return active.any(1) & ~(active & ~np.asarray(legal, bool)).any(1)


@dataclasses.dataclass
class TurnRows:
    """One turn of every trajectory: its prompt (left-padded), frame and sampled answer."""

    prompt_ids: jax.Array  # int32 [N, P]
    prompt_mask: jax.Array  # int32 [N, P]
    positions: jax.Array  # int32 [3, N, P]
    images: int  # frames in each prompt (history frames, then the current one)
    samples: Samples  # [N, L]; the mask is cut to the active rows


@dataclasses.dataclass
class Episodes:
    """A rollout of N = S * G trajectories (row s * G + g: trajectory g from start state s) of up to T
    turns. Per-turn arrays are [N, T]; turns that were not played (every board had finished) are
    inactive. Device arrays stay on the device; texts, actions and the reward parts are host values."""

    config: EpisodeConfig
    turns: list  # TurnRows per played turn
    frames: jax.Array  # uint8 [T_played, N, H, W, 3]: each turn's current frame
    keys: jax.Array  # uint32 [N, T, 2]: the hash of the frame each turn acted from
    active: jax.Array  # bool [N, T]
    rewards: jax.Array  # float32 [N, T]: the total reward per turn (0 on inactive turns)
    parts: dict  # host float32 / bool [N, T]: game, format, perception, legal, invalid
    actions: np.ndarray  # int32 [N, T] as parsed (the invalid action for unreadable answers)
    texts: list  # texts[t][n]: the answer of trajectory n at turn t
    solved: np.ndarray | None  # bool [N]: the game reported success (info["solved"]) at some turn; None: no such notion
    host_seconds: float = 0.0  # wall time of the host's part: decoding and parsing the answers, text checks

    @property
    def played(self) -> int:
        return len(self.turns)

    def metrics(self) -> dict[str, float]:
        """Episode means: return (total reward), game_return, success, turns, invalid-answer rate (over
        active turns), and the format rate."""
        active, rewards = to_host((self.active, self.rewards))
        turns = active.sum(1)
        played = max(int(turns.sum()), 1)
        return {
            "return": float(rewards.sum(1).mean()),
            "game_return": float((self.parts["game"] * active).sum(1).mean()),
            "success": float(self.success.mean()),
            "turns": float(turns.mean()),
            "invalid_rate": float((self.parts["invalid"] & active).sum() / played),
            "format_rate": float((self.parts["format"] * active).sum() / played),
        }

    @property
    def success(self) -> np.ndarray:
        """bool [N]: the game reported success when it has such a notion (info["solved"]); otherwise the
        episode played at least one turn and every played move was legal (2048: no illegal move)."""
        return episode_success(to_host(self.active), self.parts["legal"], self.solved)

    def turn_batch(self, turns: Sequence[int] | None = None) -> Batch:
        """The rows (n, t) of the given played turns (default: all) as an `update.Batch` with one
        completion per prompt (use group_size=1 with `update.completion_logprobs`), trajectory-major:
        row n * len(turns) + i is turn turns[i] of trajectory n, so consecutive micro-batches hold
        whole trajectories. Prompts are left-padded to the longest; every turn must have as many
        frames (always, without history frames). `rewards` holds each row's turn reward."""
        turns = list(range(self.played)) if turns is None else [int(t) for t in turns]
        if not turns or any(not 0 <= t < self.played for t in turns):
            raise ValueError(f"turns must be a non-empty list of played turns in [0, {self.played}), got {turns}")
        images = {self.turns[t].images for t in turns}
        if len(images) != 1:
            raise ValueError(f"turns {turns} have different numbers of frames {sorted(images)}; batch them apart")
        width = max(self.turns[t].prompt_ids.shape[1] for t in turns)

        def left_pad(x, fill=0):
            return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(width - x.shape[-1], 0)], constant_values=fill)

        def stack(values):  # [len(turns)] of [N, ...] -> [N * len(turns), ...], trajectory-major
            return jnp.stack(values, axis=1).reshape(-1, *values[0].shape[1:])

        rows = [self.turns[t] for t in turns]
        positions = jnp.stack([left_pad(r.positions) for r in rows], axis=2)
        count = images.pop()
        frames = jnp.stack([self.frames_of(t, count) for t in turns], axis=1)  # [N, turns, images, H, W, 3]
        pixels = jax.vmap(preprocess)(frames.reshape(-1, *frames.shape[-3:]))
        return Batch(
            prompt_ids=stack([left_pad(r.prompt_ids) for r in rows]),  # masked padding: any id
            prompt_mask=stack([left_pad(r.prompt_mask) for r in rows]),
            prompt_positions=positions.reshape(3, -1, width),
            pixel_values=pixels.reshape(-1, pixels.shape[-1]),
            completion=stack([r.samples.tokens for r in rows]),
            completion_mask=stack([r.samples.mask for r in rows]),
            sampler_logprobs=stack([r.samples.logprobs for r in rows]),
            rewards=self.rewards[:, jnp.asarray(turns)].reshape(-1),
        )

    def frame_groups(self) -> list[list[int]]:
        """The played turns in batches of equal frame counts, in order: all of them without history frames;
        with them (history k), turns 0 .. k - 1 one each (1 .. k frames), then every later turn (k + 1)."""
        groups: dict[int, list[int]] = {}
        for t, turn in enumerate(self.turns):
            groups.setdefault(turn.images, []).append(t)
        return list(groups.values())

    def frames_of(self, turn: int, count: int) -> jax.Array:
        """uint8 [N, count, H, W, 3]: the frames in turn `turn`'s prompt (the last count - 1 turns', then its own)."""
        return jnp.moveaxis(self.frames[turn - count + 1 : turn + 1], 0, 1)

    def image_grids(self, rows: int, turn: int = 0) -> tuple:
        """The static image grids of `rows` rows shaped like turn `turn` (for `completion_logprobs`)."""
        height, width = self.frames.shape[2:4]
        return (grid_thw(height, width),) * (rows * self.turns[turn].images)


# ------------------------------------------------------------------------------------ the rollout
class EpisodeRollout:
    """Plays multi-turn episodes of `env` with a Qwen2.5-VL policy: `rollout(graphdef, params, key, starts)`."""

    def __init__(
        self,
        env: envs.Env,
        tokenizer: Tokenizer,
        model_config: Qwen25VLConfig,
        *,
        config: EpisodeConfig,
        sampling: SamplingConfig,
        reward_weights: RewardWeights | None = None,
        strict_format: bool = False,
        mesh=None,
    ):
        """mesh: a device mesh whose ("data", "fsdp") axes every row-indexed array of the loop is split over
        (boards, frames, history buffers, prompts, patches, the sampler's row keys, the parsed actions), as
        `rollout.GameRollout` does; without one they go where JAX puts them."""
        check_tokenizer_matches(tokenizer, model_config)
        if getattr(env, "actions_per_turn", 1) > 1 and hasattr(env, "step_turn"):
            # a turn plays the one action id `parse` gives; Sokoban's keeps the first of several (step_turn
            # plays the rest), so the episode would silently drop moves (FrozenLake's ids name whole sequences)
            raise envs.ConfigError(
                f"{env.name}: multi-turn episodes play one action id per turn, and actions_per_turn="
                f"{env.actions_per_turn} answers need step_turn; use actions_per_turn=1"
            )
        self.env, self.tokenizer, self.config, self.mesh = env, tokenizer, config, mesh
        self.sampling = dataclasses.replace(sampling, stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id)
        self.weights = reward_weights or g1_weights(env.name)
        self.strict_format = strict_format
        height, width = env.image_shape[:2]
        self.grid = grid_thw(height, width)
        self.merged_grid = (height // FACTOR, width // FACTOR)  # image tokens per side (one per 28 px)
        self.image_token_id = model_config.image_token_id
        self.pieces = self._pieces(height, width)
        # whether the game says when an episode is won (info["solved"]); otherwise success = no illegal move
        step = jax.eval_shape(lambda key: env.step(key, env.reset(key), jnp.int32(0)), jax.random.key(0))
        self.reports_solved = "solved" in step[3]
        context = model_config.text.max_position_embeddings
        if self.prompt_length(self.slots(config.max_turns)) + self.sampling.max_new_tokens > context:
            raise ValueError(
                f"a turn with {config.history} history turns of {self.sampling.max_new_tokens} tokens does not fit "
                f"the model's context of {context} positions; lower history or max_new_tokens"
            )

    # --- static token pieces ---------------------------------------------------------------
    def _encode(self, text: str, height: int, width: int) -> np.ndarray:
        ids = np.asarray(self.tokenizer.encode(text), np.int32)
        pads = ids == self.tokenizer.image_pad_id
        repeats = np.where(pads, num_image_tokens(height, width), 1)
        return np.repeat(ids, repeats)

    def _pieces(self, height: int, width: int) -> dict[str, np.ndarray]:
        label = PAST_LABEL + IMAGE_PLACEHOLDER if self.config.history_frames else PAST_LABEL_NO_FRAME
        texts = {
            "prefix": f"<|im_start|>system\n{self.config.system}<|im_end|>\n",
            "open": f"<|im_start|>user\n{label}<|im_end|>\n<|im_start|>assistant\n",
            "close": "<|im_end|>\n",
            "current": f"<|im_start|>user\n{IMAGE_PLACEHOLDER}{self.env.prompt}<|im_end|>\n<|im_start|>assistant\n",
        }
        return {name: self._encode(text, height, width) for name, text in texts.items()}

    def slots(self, turn: int) -> int:
        """History slots in turn `turn`'s prompt: always k without history frames (the empty ones are
        masked), the turns so far (at most k) with them (every slot holds a frame)."""
        k = self.config.history
        return min(turn, k) if self.config.history_frames else k

    def prompt_length(self, slots: int) -> int:
        """Padded prompt tokens of a turn with `slots` history slots (each up to max_new_tokens answer tokens)."""
        p = self.pieces
        slot = len(p["open"]) + self.sampling.max_new_tokens + len(p["close"])
        return len(p["prefix"]) + slots * slot + len(p["current"])

    # --- device pieces ---------------------------------------------------------------------
    @functools.partial(jax.jit, static_argnums=(0,))
    def _observe(self, states):
        frames = envs.render_batch(self.env, states)
        return frames, jax.vmap(state_hash)(frames)

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def _assemble(self, slots: int, answers, lengths, filled):
        """(ids, mask int32, positions) [N, P] of every row: the static pieces around the last `slots`
        answers of the history buffers (answers [N, k, L], lengths [N, k], filled bool [k])."""
        rows, width = answers.shape[0], answers.shape[2]
        p = self.pieces

        def constant(piece, on=True):
            ids = jnp.broadcast_to(jnp.asarray(piece), (rows, len(piece)))
            return ids, jnp.broadcast_to(on, ids.shape)

        parts = [constant(p["prefix"])]
        k = answers.shape[1]
        for j in range(k - slots, k):
            parts.append(constant(p["open"], filled[j]))
            parts.append((answers[:, j], filled[j] & (jnp.arange(width)[None] < lengths[:, j, None])))
            parts.append(constant(p["close"], filled[j]))
        parts.append(constant(p["current"]))
        ids = jnp.concatenate([x for x, _ in parts], axis=1)
        valid = jnp.concatenate([v for _, v in parts], axis=1)
        # left padding: the valid tokens keep their order at the right end (a stable sort on validity)
        order = jnp.argsort(valid.astype(jnp.int32), axis=1, stable=True)
        ids, valid = jnp.take_along_axis(ids, order, 1), jnp.take_along_axis(valid, order, 1)
        ids = jnp.where(valid, ids, self.tokenizer.pad_id)
        positions = rope_positions(ids, valid, image_token_id=self.image_token_id, merged_grid=self.merged_grid)
        return ids, valid.astype(jnp.int32), positions

    @functools.partial(jax.jit, static_argnums=(0,))
    def _pixels(self, frames):
        """[N, images, H, W, 3] -> patch rows, row-major over (row, image): the prompt's image order."""
        pixels = jax.vmap(preprocess)(frames.reshape(-1, *frames.shape[-3:]))
        return pixels.reshape(-1, pixels.shape[-1])

    @functools.partial(jax.jit, static_argnums=(0,))
    def _advance(self, key, states, actions, active):
        """Step every board; a finished (inactive) board keeps its state and gets reward 0."""
        stepped, reward, done, info = jax.vmap(self.env.step)(jax.random.split(key, actions.shape[0]), states, actions)
        states = envs.tree_where(active, stepped, states)
        solved = info["solved"] & active if "solved" in info else jnp.zeros_like(active)
        return (
            states,
            jnp.where(active, reward, 0.0),
            info["legal"] & active,
            active & ~done,
            solved,
        )

    @functools.partial(jax.jit, static_argnums=(0,))
    def _remember(self, answers, lengths, frames_seen, samples: Samples, frames):
        """Shift the history buffers by one turn: the newest answer (its stop token cut) and frame last."""
        if not self.config.history:
            return answers, lengths, frames_seen
        cut = samples.lengths - (~samples.truncated).astype(jnp.int32)
        answers = jnp.concatenate([answers[:, 1:], samples.tokens[:, None]], axis=1)
        lengths = jnp.concatenate([lengths[:, 1:], cut[:, None]], axis=1)
        if self.config.history_frames:
            frames_seen = jnp.concatenate([frames_seen[:, 1:], frames[:, None]], axis=1)
        return answers, lengths, frames_seen

    # --- the loop ----------------------------------------------------------------------------
    def rows(self, x, axis: int = 0):
        """`x` (a host or device array, or a tree of them) with its rows (`axis`) split over the mesh's
        ("data", "fsdp") axes (replicated when they do not divide); a device array as it is without a mesh."""
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, x)
        return jax.tree.map(lambda leaf: shard_rows(leaf, self.mesh, axis), x)

    @functools.partial(jax.jit, static_argnums=(0, 2, 3, 4))
    def start_states(self, key, count: int, warmup_moves: int = 0, policy: str = "uniform"):
        """`count` start states: resets, then `warmup_moves` random moves (G1's warm-up). Jitted whole:
        run eagerly, each of a reset's while loops (Sokoban's room generation) compiles on its own."""
        return envs.warmup_states(self.env, key, count, num_moves=warmup_moves, policy=policy)

    def __call__(self, graphdef, params, key, starts) -> Episodes:
        """Play G trajectories from each of the S batched start states `starts` (a batch of env states)."""
        cfg, env = self.config, self.env
        group, turns, k = cfg.group_size, cfg.max_turns, cfg.history
        # on a mesh every row-indexed array is split by rows from here on: the jitted pieces below follow
        # their inputs' layout, and each device samples its own rows
        states = self.rows(jax.tree.map(lambda x: jnp.repeat(x, group, axis=0), starts))
        rows = jax.tree.leaves(states)[0].shape[0]
        length = self.sampling.max_new_tokens
        height, width = env.image_shape[:2]
        answers, lengths, frames_seen = self.rows(
            (
                np.full((rows, k, length), self.tokenizer.pad_id, np.int32),
                np.zeros((rows, k), np.int32),
                np.zeros((rows, k if cfg.history_frames else 0, height, width, 3), np.uint8),
            )
        )
        active = ~states.done  # a start state whose game is already over never acts

        turn_rows, frames_all, keys_all, active_all, game_all, legal_all, solved = [], [], [], [], [], [], None
        texts_all, actions_all, host_seconds = [], [], 0.0
        for t in range(turns):
            if t and not bool(to_host(jnp.any(active))):
                break  # every board has finished: nothing is left to act
            turn_key = jax.random.fold_in(key, t)
            sample_key, step_key = jax.random.split(turn_key)
            frames, keys = self._observe(states)
            slots = self.slots(t)
            filled = jnp.arange(k) >= k - t  # slot j holds turn t - k + j
            ids, mask, positions = self._assemble(slots, answers, lengths, filled)
            past = frames_seen[:, k - slots :] if cfg.history_frames else frames_seen  # [N, 0] without frames
            images = jnp.concatenate([past, frames[:, None]], axis=1)
            row_keys = jax.vmap(lambda r, sk=sample_key: jax.random.fold_in(sk, r))(jnp.arange(rows))
            ids, mask, pixels, row_keys = self.rows((ids, mask, self._pixels(images), row_keys))
            samples = sample(
                graphdef,
                params,
                ids,
                self.rows(positions, 1),
                mask,
                pixels,
                row_keys,
                image_grids=(self.grid,) * (rows * images.shape[1]),
                group_size=1,
                config=self.sampling,
            )
            # host: only the answers' tokens come over; they are decoded and parsed here. The timer starts
            # once they are over: dispatch is asynchronous, and reading them waits for the sampler
            tokens = to_host(samples.tokens)
            host_started = time.perf_counter()
            texts = decode_completions(self.tokenizer, tokens)
            actions = np.asarray([env.parse(text) for text in texts], np.int32)
            truths = None
            if self.weights.perception:  # the perception reward reads the boards' ground truth (a few ints each)
                boards = to_host(states)
                truths = [env.describe(envs.unbatch(boards, n)) for n in range(rows)]
            host_seconds += time.perf_counter() - host_started
            turn_rows.append(
                TurnRows(ids, mask, positions, images.shape[1], samples.replace(mask=samples.mask & active[:, None]))
            )
            frames_all.append(frames)
            keys_all.append(keys)
            active_all.append(active)
            texts_all.append((texts, truths))
            actions_all.append(actions)
            answers, lengths, frames_seen = self._remember(answers, lengths, frames_seen, samples, frames)
            states, game, legal, active, solved_now = self._advance(step_key, states, self.rows(actions), active)
            game_all.append(game)
            legal_all.append(legal)
            solved = solved_now if solved is None else solved | solved_now
        episodes = self._collect(
            turn_rows, frames_all, keys_all, active_all, game_all, legal_all, solved, texts_all, actions_all
        )
        episodes.host_seconds += host_seconds
        return episodes

    def _collect(
        self, turn_rows, frames_all, keys_all, active_all, game_all, legal_all, solved, texts_all, actions_all
    ):
        cfg, env = self.config, self.env
        played, turns = len(turn_rows), cfg.max_turns
        rows = turn_rows[0].prompt_ids.shape[0]

        def per_turn(values, fill, dtype):  # [played] of [N] -> [N, T], unplayed turns filled
            out = np.full((rows, turns), fill, dtype)
            out[:, :played] = np.stack([np.asarray(v) for v in values], axis=1)
            return out

        active = per_turn(to_host(active_all), False, bool)
        actions = per_turn(actions_all, env.invalid_action, np.int32)
        parts = {
            "game": per_turn(to_host(game_all), 0.0, np.float32),
            "legal": per_turn(to_host(legal_all), False, bool),
            "invalid": (actions == env.invalid_action) & active,
        }
        texts = [texts for texts, _ in texts_all]
        # the text checks turn by turn; without a perception weight no truth was read (perception 0)
        for name in ("format", "perception"):
            parts[name] = np.zeros((rows, turns), np.float32)
        checks_started = time.perf_counter()
        for t, (answers, truths) in enumerate(texts_all):
            checks = text_parts(answers, truths or [""] * rows, self.strict_format)
            parts["format"][:, t] = checks["format"]
            if truths is not None:
                parts["perception"][:, t] = checks["perception"]
        for name in ("format", "perception"):
            parts[name] *= active
        rewards = turn_rewards(parts, self.weights, active, cfg.text_reward)
        checks_seconds = time.perf_counter() - checks_started
        keys = np.zeros((rows, turns, 2), np.uint32)
        keys[:, :played] = np.stack(to_host(keys_all), axis=1)
        solved_any = to_host(solved)
        return Episodes(
            config=cfg,
            turns=turn_rows,
            frames=self.rows(jnp.stack(frames_all), 1),
            keys=self.rows(keys),
            active=self.rows(active),
            rewards=self.rows(rewards.astype(np.float32)),
            parts=parts,
            actions=actions,
            texts=texts,
            solved=solved_any if self.reports_solved else None,
            host_seconds=checks_seconds,
        )


@functools.partial(jax.jit, static_argnames=("env", "group_size", "turns"))
def random_play(env: envs.Env, key, starts, *, group_size: int, turns: int):
    """The random baseline on the same start states: G trajectories of up to T uniformly random moves (any
    id but the invalid action) each. Returns (game rewards float32 [N, T], active bool [N, T], legal bool
    [N, T], solved bool [N, T]: info["solved"] on an active turn, all False for a game without it),
    finished boards masked as in the rollout."""
    states = jax.tree.map(lambda x: jnp.repeat(x, group_size, axis=0), starts)
    rows = states.done.shape[0]

    def turn(carry, turn_key):
        states, active = carry
        draw_key, step_key = jax.random.split(turn_key)
        # uniform over the num_actions - 1 real moves: skip over the invalid action's id
        actions = jax.random.randint(draw_key, (rows,), 0, env.num_actions - 1)
        actions = jnp.where(actions >= env.invalid_action, actions + 1, actions).astype(jnp.int32)
        stepped, reward, done, info = jax.vmap(env.step)(jax.random.split(step_key, rows), states, actions)
        states = envs.tree_where(active, stepped, states)
        solved = info["solved"] & active if "solved" in info else jnp.zeros_like(active)
        out = (jnp.where(active, reward, 0.0), active, info["legal"] & active, solved)
        return (states, active & ~done), out

    _, out = jax.lax.scan(turn, (states, ~states.done), jax.random.split(key, turns))
    return tuple(x.T for x in out)
