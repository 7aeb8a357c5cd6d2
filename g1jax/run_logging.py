"""Run directory: resolved config, metrics JSONL, sample frames with answers, reward curve, progress bar.

On several processes (jax.distributed) every process calls the same methods, and process 0 alone
writes (and prints): the files are written once, and no two processes race on a file.
"""

from __future__ import annotations

import json
import math
import os

import jax

from g1jax.sharding import to_host


class _Progress:
    def __init__(self, start: int, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc="GRPO", unit="step", dynamic_ncols=True)

    def update(self, metrics: dict) -> None:
        if self.bar is not None:
            if metrics.get("phase") == "sft":
                self.bar.set_postfix(phase="cold start", sft_loss=f"{metrics['sft_loss']:.3f}", refresh=False)
            else:
                self.bar.set_postfix(
                    reward=f"{metrics['reward']:+.3f}",
                    game=f"{metrics['reward_game']:+.3f}",
                    len=f"{metrics['length_mean']:.0f}",
                    refresh=False,
                )
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RunLogger:
    """Everything a run writes under its directory (see docs/rl.md for the files)."""

    def __init__(self, run_dir: str, config: dict, *, tensorboard: bool = False):
        self.run_dir = run_dir
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        self.samples_path = os.path.join(run_dir, "samples", "samples.jsonl")
        self.writes = jax.process_index() == 0
        self.writer = None
        if not self.writes:
            return
        os.makedirs(os.path.join(run_dir, "samples"), exist_ok=True)
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise ImportError("tensorboard=True needs the tensorboardX package: pip install tensorboardX") from None

            self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    def note(self, text: str) -> None:
        if self.writes:
            print(f"[g1jax] {text}", flush=True)

    def write_json(self, name: str, value) -> None:
        """A JSON file in the run directory, written atomically."""
        if not self.writes:
            return
        path = os.path.join(self.run_dir, name)
        with open(path + ".tmp", "w") as f:
            json.dump(value, f, indent=2)
        os.replace(path + ".tmp", path)

    def read_json(self, name: str):
        with open(os.path.join(self.run_dir, name)) as f:
            return json.load(f)

    def progress(self, start: int, total: int, enabled: bool = True) -> _Progress:
        return _Progress(start, total, enabled and self.writes)

    def metrics(self, metrics: dict) -> None:
        if not self.writes:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.writer is not None:
            for name, value in clean.items():
                if isinstance(value, (int, float)) and name != "step":
                    self.writer.add_scalar(name, value, metrics["step"])

    def read_metrics(self) -> list[dict]:
        return _read_jsonl(self.metrics_path)

    def truncate_after(self, step: int) -> None:
        """Drop logged steps and sample rows after `step` (a resumed run logs them again)."""
        if not self.writes:
            return
        for path in (self.metrics_path, self.samples_path):
            _keep_steps_up_to(path, step)

    def samples(self, step: int, rollout, group_size: int, count: int = 4) -> None:
        """A few start frames with the first answer of their group, as PNG + JSONL."""
        from PIL import Image, ImageDraw

        frames = to_host(rollout.frames)[:count]  # gathered by every process, drawn by process 0
        if not self.writes:
            return
        rows = []
        for p, frame in enumerate(frames):
            text = rollout.texts[p * group_size]
            rows.append(
                {
                    "step": step,
                    "prompt_index": p,
                    "answer": text,
                    "truth": rollout.truths[p],
                    "reward": float(rollout.rewards[p * group_size]),
                }
            )
            canvas = Image.new("RGB", (frame.shape[1], frame.shape[0] + 60), "white")
            canvas.paste(Image.fromarray(frame), (0, 0))
            ImageDraw.Draw(canvas).multiline_text(
                (4, frame.shape[0] + 2), _wrap(text, frame.shape[1] // 7, 4), fill="black"
            )
            canvas.save(os.path.join(self.run_dir, "samples", f"step{step:06d}_{p}.png"))
        with open(self.samples_path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    def reward_curve(self) -> str | None:
        """reward_curve.png: total and game reward per step (None on processes other than 0)."""
        if not self.writes:
            return None
        history = self.read_metrics()
        if not history:
            return None
        # A bare Figure (no pyplot): drawing it leaves the session's backend alone (inline plots in a notebook).
        from matplotlib.figure import Figure

        history = [m for m in history if m.get("phase") != "sft"]
        if not history:
            return None
        steps = [m["step"] for m in history]
        fig = Figure(figsize=(6, 3.5))
        ax = fig.subplots()
        for key, label in (("reward", "total reward"), ("reward_game", "game reward")):
            ax.plot(steps, [m.get(key) for m in history], label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("mean reward")
        ax.legend()
        ax.grid(alpha=0.3)
        path = os.path.join(self.run_dir, "reward_curve.png")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return path


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _keep_steps_up_to(path: str, step: int) -> None:
    """Rewrite a JSONL log (atomically) without its rows of later steps."""
    if not os.path.isfile(path):
        return
    kept = [row for row in _read_jsonl(path) if row.get("step", 0) <= step]
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in kept)
    os.replace(path + ".tmp", path)


def _wrap(text: str, width: int, lines: int) -> str:
    flat = " ".join(text.split())
    chunks = [flat[i : i + width] for i in range(0, len(flat), width)][:lines]
    return "\n".join(chunks)
