"""Videos of an evaluation: one per run, each frame the board the policy saw with its answer, the
move played and the score in a caption strip below it (MP4, or GIF without ffmpeg)."""

from __future__ import annotations

import functools
import os
import textwrap
import warnings
from collections.abc import Sequence

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

import envs
from g1jax.evaluation.closed_loop import Rollout, loop_functions
from g1jax.evaluation.protocols import PROTOCOLS

CAPTION_LINES = 6
CAPTION_PX = 14


@functools.lru_cache(maxsize=1)
def _caption_font():
    return ImageFont.load_default(size=CAPTION_PX)  # loading it costs more than drawing a caption


def caption_frame(frame: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """The frame with a white strip below it holding `lines` of text (wrapped to the width; an
    over-long answer keeps its first lines, an ellipsis and its last line, where the answer is)."""
    height, width, _ = frame.shape
    font = _caption_font()
    chars = max(20, int(width / (0.6 * CAPTION_PX)))
    wrapped = [piece for line in lines for piece in (textwrap.wrap(line, chars) or [""])]
    if len(wrapped) > CAPTION_LINES:
        wrapped = wrapped[: CAPTION_LINES - 2] + ["…", wrapped[-1]]
    line_px = CAPTION_PX + 4
    strip = CAPTION_LINES * line_px + 8
    strip += strip % 2  # H.264 wants even sizes
    # Only the strip goes through PIL; the frame is copied in with numpy.
    text = Image.new("RGB", (width + width % 2, strip), "white")
    draw = ImageDraw.Draw(text)
    for i, line in enumerate(wrapped):
        draw.text((6, 4 + i * line_px), line, fill=(0, 0, 0), font=font)
    out = np.full((height + strip, width + width % 2, 3), 255, np.uint8)
    out[:height, :width] = frame
    out[height:] = np.asarray(text)
    return out


class _VideoWriter:
    """MP4 through imageio-ffmpeg when it is installed, else an animated GIF (Pillow)."""

    def __init__(self, path_without_suffix: str, fps: float):
        self.fps, self.frames = fps, []
        try:  # imported here: imageio-ffmpeg is optional, and without it the video is a GIF
            import imageio.v2 as imageio
            import imageio_ffmpeg  # noqa: F401  (the ffmpeg binary)

            self.path = path_without_suffix + ".mp4"
            # x264's fastest preset: a game's frames change little, so the files stay small, and encoding
            # at the default preset took most of an evaluation's time (BENCHMARKS.md, "Evaluation")
            self._writer = imageio.get_writer(
                self.path,
                fps=fps,
                codec="libx264",
                macro_block_size=1,
                ffmpeg_log_level="error",
                output_params=["-preset", "ultrafast"],
            )
        except ImportError:
            self.path, self._writer = path_without_suffix + ".gif", None

    def append(self, frame: np.ndarray) -> None:
        if self._writer is not None:
            self._writer.append_data(frame)
        else:
            self.frames.append(frame)

    def close(self) -> str:
        if self._writer is not None:
            self._writer.close()
        else:
            images = [Image.fromarray(f) for f in self.frames]
            images[0].save(self.path, save_all=True, append_images=images[1:], duration=int(1000 / self.fps), loop=0)
        return self.path


def write_videos(
    rollout: Rollout, env: envs.Env, directory: str, *, max_runs: int | None = None, fps: float = 2.0
) -> list[str]:
    """One video per run (the first `max_runs`): each frame the board the policy saw, with its
    answer, the move played and the score below it."""
    runs = rollout.runs if max_runs is None else min(max_runs, rollout.runs)
    if runs == 0:
        return []
    with warnings.catch_warnings():
        # ffmpeg runs as a fork+exec subprocess, which JAX's blanket fork warning cannot tell apart
        warnings.filterwarnings("ignore", message="os.fork\\(\\) was called")
        return _write_videos(rollout, env, directory, runs, fps)


def _write_videos(rollout: Rollout, env: envs.Env, directory: str, runs: int, fps: float) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    render = loop_functions(env, PROTOCOLS[rollout.game], rollout.runs)[2]
    safe = rollout.policy.replace(":", "-")
    writers = [_VideoWriter(os.path.join(directory, f"{rollout.game}_{safe}_run{run:03d}"), fps) for run in range(runs)]
    totals = np.cumsum(rollout.scores, axis=1)
    for step in range(rollout.steps):
        seen = jax.tree.map(lambda x: x[:runs], rollout.states_at(step))
        frames = np.asarray(render(seen))
        for run, writer in enumerate(writers):
            action = int(rollout.actions[run, step])
            status = (
                f"{rollout.policy} | step {step + 1}/{rollout.steps} | move {env.action_label(action)} | "
                f"+{rollout.scores[run, step]:g} | total {totals[run, step]:g}"
            )
            answer = "" if rollout.texts is None else " ".join(rollout.texts[run][step].split())
            writer.append(caption_frame(frames[run], [status, answer]))
    return [w.close() for w in writers]
