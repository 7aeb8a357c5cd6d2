"""One step of G1's loop on the games: start states -> frames -> prompts -> G samples -> actions -> rewards.

    device  warm-up start states (reset + random moves, vmapped), render, Qwen patchify      `_start`
    device  prefill each prompt once, decode G samples per prompt                             `sampling.sample`
    host    detokenise, parse answers, format / perception checks (small: B strings); on several
            processes every process gathers all B token rows and parses them all (docs/rl.md)
    device  score all G answers from the same immutable state (`parallel_step`)              `_score`

Rows are laid out prompt-major: row p*G + g is sample g of state p, so GRPO groups are contiguous.
Several games share one batch through `envs.MultiGame` (one image size, per-game prompts padded
to one length on the left).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from envs import MultiGame
from envs.wrappers import G1_WARMUP_MOVES
from g1jax.chat import decode_completions, encode_prompt, pad_prompts
from g1jax.image_processing import grid_thw, preprocess
from g1jax.models.config import Qwen25VLConfig
from g1jax.models.positions import get_rope_index
from g1jax.rl.rewards import g1_weights, text_parts, total_reward
from g1jax.sampling import Samples, SamplingConfig, sample
from g1jax.sharding import constrain_rows, shard_rows, to_host
from g1jax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class PromptArrays:
    """The static prompt of every row of a MultiGame batch (host numpy; identical every step)."""

    input_ids: np.ndarray  # int32 [P, T], left-padded
    attention_mask: np.ndarray  # int32 [P, T]
    positions: np.ndarray  # int32 [3, P, T]
    image_grids: tuple  # ((1, H/14, W/14),) * P

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]


def check_tokenizer_matches(tokenizer: Tokenizer, config: Qwen25VLConfig) -> None:
    """The model's special ids must be the tokenizer's, or image features land on the wrong tokens."""
    pairs = {
        "image_token_id": tokenizer.image_pad_id,
        "vision_start_token_id": tokenizer.vision_start_id,
        "vision_end_token_id": tokenizer.vision_end_id,
    }
    wrong = {name: (getattr(config, name), ids) for name, ids in pairs.items() if getattr(config, name) != ids}
    if wrong:
        listing = ", ".join(f"{name} {model_id} vs tokenizer {tok_id}" for name, (model_id, tok_id) in wrong.items())
        raise ValueError(f"the model config and the tokenizer disagree on special tokens: {listing}")
    if tokenizer.vocab_size > config.text.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary only {config.text.vocab_size}"
        )


def build_prompts(games: MultiGame, tokenizer: Tokenizer, config: Qwen25VLConfig) -> PromptArrays:
    """Chat-template prompt (system, user: image + the game's prompt, assistant) of every row."""
    check_tokenizer_matches(tokenizer, config)
    height, width = games.image_shape[:2]
    per_game = [encode_prompt(tokenizer, game.prompt, [(height, width)]) for game in games.games]
    rows = [per_game[i] for i in games.game_index]
    batch = pad_prompts(rows, max(len(p.input_ids) for p in per_game), tokenizer.pad_id)
    positions, _ = get_rope_index(
        batch.input_ids,
        batch.image_grid_thw,
        batch.attention_mask,
        image_token_id=config.image_token_id,
        spatial_merge_size=config.vision.spatial_merge_size,
    )
    grids = tuple(grid_thw(height, width) for _ in rows)
    return PromptArrays(batch.input_ids, batch.attention_mask, positions, grids)


@functools.partial(jax.jit, static_argnames=("games", "num_moves", "policy"))
def _start(key, *, games: MultiGame, num_moves, policy):
    """Start states (G1's warm-up), their frames uint8 [P, H, W, 3] and patch rows [P * patches, 1176]."""
    states = games.warmup(key, num_moves=dict(num_moves), policy=policy)
    frames = games.render(states)
    pixel_values = jax.vmap(preprocess)(frames)
    # under a set mesh (GameRollout(mesh=...)) every board's work stays on the device of its row
    return jax.tree.map(constrain_rows, (states, frames, pixel_values.reshape(-1, pixel_values.shape[-1])))


@functools.partial(jax.jit, static_argnames=("games",))
def _score(key, states, actions, *, games: MultiGame):
    """Every row's G actions from its own state: game reward and legality [P, G]."""
    _, rewards, _, info = games.parallel_step(key, states, actions)
    return rewards, info["legal"]


@dataclasses.dataclass
class Rollout:
    """One rollout batch. Device arrays stay on the device; host pieces are numpy / str."""

    states: tuple  # per-game batched start states
    frames: jax.Array  # uint8 [P, H, W, 3]
    pixel_values: jax.Array  # [P * patches, 1176]
    samples: Samples  # [B, L]
    texts: list  # B answers
    truths: list  # P ground-truth board texts
    actions: np.ndarray  # int32 [P, G]
    parts: dict  # reward parts [B] (game, format, perception) + perception_exact, legal
    rewards: np.ndarray  # float32 [B] total reward


class GameRollout:
    """Draws G1 training batches from a MultiGame: `rollout(graphdef, params, key)`."""

    def __init__(
        self,
        games: MultiGame,
        tokenizer: Tokenizer,
        model_config: Qwen25VLConfig,
        *,
        group_size: int,
        sampling: SamplingConfig,
        warmup_moves: dict | None = None,
        warmup_policy: str = "uniform",
        reward_weights: dict | None = None,
        strict_format: bool = False,
        mesh=None,
    ):
        """mesh: a device mesh whose ("data", "fsdp") axes the rows are split over (start states, frames,
        patches, the sampler's prompts and row keys); without one they go where JAX puts them."""
        self.games = games
        self.mesh = mesh
        self.tokenizer = tokenizer
        self.group_size = group_size
        self.sampling = dataclasses.replace(sampling, stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id)
        self.prompts = build_prompts(games, tokenizer, model_config)
        moves = {**G1_WARMUP_MOVES, **(warmup_moves or {})}
        self.warmup_moves = tuple(sorted((g.name, int(moves.get(g.name, 0))) for g in games.games))
        self.warmup_policy = warmup_policy
        weights = reward_weights or {}
        self.weights = {g.name: weights.get(g.name) or g1_weights(g.name) for g in games.games}
        self.row_weights = np.stack([self.weights[name].as_row() for name in games.game_names])
        self.strict_format = strict_format

    @property
    def num_prompts(self) -> int:
        return self.games.size

    def start(self, key):
        """(states, frames, pixel_values) of fresh start states; on a mesh, split by rows over data x fsdp."""
        with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
            return _start(key, games=self.games, num_moves=self.warmup_moves, policy=self.warmup_policy)

    def __call__(self, graphdef, params, key) -> Rollout:
        start_key, sample_key, score_key = jax.random.split(key, 3)
        states, frames, pixel_values = self.start(start_key)
        rows = self.num_prompts * self.group_size
        row_keys = jax.vmap(lambda r: jax.random.fold_in(sample_key, r))(jnp.arange(rows))
        p = self.prompts
        inputs = [(p.input_ids, 0), (p.positions, 1), (p.attention_mask, 0), (pixel_values, 0), (row_keys, 0)]
        if self.mesh is None:
            inputs = [jnp.asarray(x) for x, _ in inputs]
        else:  # rows split over the devices: each samples its own (left alone, every device samples all rows)
            inputs = [shard_rows(x, self.mesh, axis) for x, axis in inputs]
        samples = sample(
            graphdef, params, *inputs, image_grids=p.image_grids, group_size=self.group_size, config=self.sampling
        )
        return self.score(score_key, states, frames, pixel_values, samples)

    def score(self, key, states, frames, pixel_values, samples: Samples) -> Rollout:
        """Host text checks + device game rewards for sampled completions."""
        texts = decode_completions(self.tokenizer, to_host(samples.tokens))
        actions, parts, rewards, truths = self.score_texts(key, states, texts, return_truths=True)
        return Rollout(
            states=states,
            frames=frames,
            pixel_values=pixel_values,
            samples=samples,
            texts=texts,
            truths=truths,
            actions=actions,
            parts=parts,
            rewards=rewards,
        )

    def game_rewards(self, key, states, actions) -> np.ndarray:
        """Game reward float32 [P, K] of K given actions int32 [P, K] from each row's state."""
        rewards, _ = to_host(_score(key, states, jnp.asarray(actions, jnp.int32), games=self.games))
        return rewards.astype(np.float32)

    def score_texts(self, key, states, texts, return_truths: bool = False):
        """(actions [P, G], reward parts [B], total rewards [B]) of B = P * G answer texts from `states`."""
        g = len(texts) // self.num_prompts
        if g * self.num_prompts != len(texts):
            raise ValueError(f"{len(texts)} answers for {self.num_prompts} states: not a whole number per state")
        # each answer parsed by its row's game (MultiGame.parse takes one answer per board, not G)
        game_of_row = np.repeat(self.games.game_index, g)
        actions = np.asarray([self.games.games[i].parse(t) for i, t in zip(game_of_row, texts)], np.int32)
        actions = actions.reshape(self.num_prompts, g)
        game_reward, legal = to_host(_score(key, states, jnp.asarray(actions), games=self.games))
        truths = self.games.describe(to_host(states))
        parts = text_parts(texts, np.repeat(np.asarray(truths, dtype=object), g).tolist(), self.strict_format)
        parts["game"] = np.asarray(game_reward, np.float32).reshape(-1)
        parts["legal"] = np.asarray(legal, bool).reshape(-1)
        rewards = total_reward(parts, np.repeat(self.row_weights, g, axis=0))
        return (actions, parts, rewards, truths) if return_truths else (actions, parts, rewards)
