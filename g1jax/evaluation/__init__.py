"""Closed-loop evaluation as in the G1 paper (its Figure 1); the protocol and its sources: docs/eval.md.

One job per module:
    protocols         the paper's per-game protocol (GameProtocol, PROTOCOLS, protocol_for)
    policies          what plays: G1's random baselines, the teachers, a model (make_policy)
    model_source      which model: a run directory, a Hugging Face directory or a preset, loaded
    closed_loop       the loop itself (play), its start states and steps, a run's result (evaluate, Rollout)
    report            the Figure-1 table, markdown, the cumulative plot, the answers as JSON lines
    video             captioned frames and one video per run
    teacher_strength  a teacher against random valid play on the same boards (strength)
"""

from g1jax.evaluation.closed_loop import Rollout, closed_loop_step, evaluate, loop_functions, play, start_states
from g1jax.evaluation.model_source import ModelSource, check_model_fits, load_model, resolve_model
from g1jax.evaluation.policies import (
    ORIGINAL_RANDOM_COORDINATES,
    POLICY_NAMES,
    DevicePolicy,
    ModelPolicy,
    Policy,
    RandomPolicy,
    TeacherPolicy,
    check_policy_spec,
    make_policy,
)
from g1jax.evaluation.protocols import GAMES, PAPER_ROWS, PROTOCOLS, EvalError, GameProtocol, protocol_for
from g1jax.evaluation.report import figure1_table, plot_cumulative, table_markdown, write_answers, write_table
from g1jax.evaluation.teacher_strength import strength
from g1jax.evaluation.video import caption_frame, write_videos

__all__ = [
    "GAMES",
    "ORIGINAL_RANDOM_COORDINATES",
    "PAPER_ROWS",
    "POLICY_NAMES",
    "PROTOCOLS",
    "DevicePolicy",
    "EvalError",
    "GameProtocol",
    "ModelPolicy",
    "ModelSource",
    "Policy",
    "RandomPolicy",
    "Rollout",
    "TeacherPolicy",
    "caption_frame",
    "check_model_fits",
    "check_policy_spec",
    "closed_loop_step",
    "evaluate",
    "figure1_table",
    "load_model",
    "loop_functions",
    "make_policy",
    "play",
    "plot_cumulative",
    "protocol_for",
    "resolve_model",
    "start_states",
    "strength",
    "table_markdown",
    "write_answers",
    "write_table",
    "write_videos",
]
