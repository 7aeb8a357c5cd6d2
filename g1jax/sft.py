"""G1's perception cold start: supervised fine-tuning on a programmatic teacher's answers.

Data are made on the fly from the games: the same warm-up start states as RL, the teacher's action
(`g1jax/teachers.py`, jitted over the batch), and its full G1 answer (`<perception>` with the true
board, a short `<think>`, `<answer>`), tokenised and closed with `<|im_end|>`. The loss is the masked
cross-entropy of the answer tokens only (the prompt is context), as a (sum, count) pair so
micro-batch accumulation equals one big batch, on the same teacher-forced pass as GRPO
(`update.completion_logprobs` with one answer per prompt).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from envs import MultiGame
from g1jax.sharding import to_host
from g1jax.teachers import Teacher, make_teacher, perception_answer
from g1jax.tokenizer import Tokenizer


class TeacherData:
    """Teacher answers for the start states of a MultiGame batch, as completion tokens [P, L]."""

    def __init__(
        self,
        games: MultiGame,
        tokenizer: Tokenizer,
        max_tokens: int,
        *,
        kind: str | Callable[[str], str | None] | None = None,
        epsilon: float = 0.0,
    ):
        """kind: the teacher kind of every game, or a function of the game's name giving its kind (None:
        the game's default teacher)."""
        self.games = games
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        kind_of = kind if callable(kind) else (lambda name: kind)
        self.teachers: tuple[Teacher, ...] = tuple(
            make_teacher(g, kind_of(g.name) or None, epsilon=epsilon) for g in games.games
        )
        self._warned = False

    def answers(self, key, states) -> tuple[list[str], np.ndarray]:
        """The teachers' answer texts (one per start state, batch order) and their actions [P]."""
        actions = to_host(_teacher_actions(self.teachers, self.games.counts, key, states))
        texts = []
        for teacher, state, action in zip(self.teachers, to_host(states), actions):
            texts.extend(teacher.answers(state, action))
        return texts, np.concatenate([np.asarray(a).reshape(-1) for a in actions]).astype(np.int32)

    def perception_answers(self, states) -> list[str]:
        """The true board of each start state as a `<perception>` block alone (batch order): the answers of
        a perception-first cold start, which teach reading the picture before playing."""
        texts = []
        for game, state in zip(self.games.games, to_host(states)):
            count = jax.tree.leaves(state)[0].shape[0]
            boards = (game.describe(jax.tree.map(lambda x, i=i: x[i], state)) for i in range(count))
            texts.extend(map(perception_answer, boards))
        return texts

    def tokens(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """(completion int32 [P, L] padded with the pad id, mask bool [P, L]); the stop token closes each answer."""
        rows = [self.tokenizer.encode(t) + [self.tokenizer.im_end_id] for t in texts]
        longest = max(map(len, rows))
        if longest > self.max_tokens and not self._warned:
            warnings.warn(
                f"teacher answers reach {longest} tokens but max_new_tokens is {self.max_tokens}: the "
                f"cold start trains on truncated answers (raise max_new_tokens)",
                RuntimeWarning,
                stacklevel=2,
            )
            self._warned = True
        completion = np.full((len(rows), self.max_tokens), self.tokenizer.pad_id, np.int32)
        mask = np.zeros((len(rows), self.max_tokens), bool)
        for i, row in enumerate(rows):
            row = row[: self.max_tokens]
            completion[i, : len(row)] = row
            mask[i, : len(row)] = True
        return completion, mask


@functools.partial(jax.jit, static_argnums=(0, 1))
def _teacher_actions(teachers: tuple[Teacher, ...], counts: tuple[int, ...], key, states):
    """Each game's teacher over its rows (one compile per teachers and row counts, shared by every TeacherData)."""
    return tuple(
        jax.vmap(t.act)(jax.random.split(jax.random.fold_in(key, i), n), s)
        for i, (t, n, s) in enumerate(zip(teachers, counts, states))
    )


def sft_loss_terms(logp: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Masked cross-entropy of the answer tokens as (sum of -log p, number of answer tokens)."""
    weights = mask.astype(jnp.float32)
    return -jnp.sum(logp * weights), jnp.sum(weights)
