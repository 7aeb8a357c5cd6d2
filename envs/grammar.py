"""The answer grammar shared by the games: turning a model's text into an action, and the
G1 format / perception checks on that text. Everything here runs on the host, on strings.

The original G1 parsers (docs/envs.md, "Answers") are reproduced exactly, with one deliberate
fix: coordinates outside the board are invalid instead of aliasing onto other cells
(docs/envs.md, "The original's bugs"). All functions are linear in the length of the text, so adversarially long
answers cannot stall a training step.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
TAGS = ("perception", "think", "answer")

# G1's coordinate regex (the same in its Shisen-Sho and Swap games): `<answer>` immediately
# followed by "(r, c)" (any whitespace after the comma, none elsewhere inside), optional
# whitespace, "(r, c)", immediately `</answer>`; first occurrence anywhere.
_PAIR_RE = re.compile(r"<answer>\((\d+),\s*(\d+)\)\s*\((\d+),\s*(\d+)\)</answer>")
_DIGITS_RE = re.compile(r"\d+")
# Lazy blocks in sequence: linear because `format_ok` first checks that each tag occurs once.
_STRICT_FORMAT_RE = re.compile(
    r"\s*<perception>.*?</perception>\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL
)


def first_answer_integer(text: str) -> int | None:
    """G1's `<answer>.*?(\\d+).*?</answer>` (DOTALL) in linear time: the first digit run after
    the first `<answer>`, provided some `</answer>` follows that run. ("Action 2" -> 2,
    "-1" -> 1.) Later `<answer>` tags cannot change the result: any digit run they reach is
    also reachable from the first one, and the first one reached wins."""
    if not isinstance(text, str):
        raise TypeError(f"answer text must be str, got {type(text).__name__}")
    start = text.find(ANSWER_OPEN)
    if start < 0:
        return None
    digits = _DIGITS_RE.search(text, start + len(ANSWER_OPEN))
    if digits is None or text.find(ANSWER_CLOSE, digits.end()) < 0:
        return None
    return _digit_run_value(digits.group(), 18)


def _digit_run_value(run: str, max_digits: int) -> int:
    """The integer a run of (any Unicode) decimal digits spells, as G1's `int(...)` reads it,
    but capped: runs with more than `max_digits` significant digits give 10**max_digits (a
    pathological 10^6-digit run is still "an integer"; only its size matters to callers, and
    Python refuses to convert very long strings). Leading zeros are not significant, so they
    are stripped before the length is checked: "0000000000001" is 1, as in G1."""
    start = len(run) - len(run.lstrip("0"))
    while start < len(run) and unicodedata.decimal(run[start]) == 0:  # other scripts' zeros
        start += 1
    significant = run[start:]
    if len(significant) > max_digits:
        return 10**max_digits
    return int(significant) if significant else 0


def coordinate_answer(text: str) -> tuple[int, int, int, int] | None:
    """The first strict `<answer>(r1, c1) (r2, c2)</answer>`; None when there is none."""
    if not isinstance(text, str):
        raise TypeError(f"answer text must be str, got {type(text).__name__}")
    match = _PAIR_RE.search(text)
    if match is None:
        return None
    return tuple(_digit_run_value(g, 9) for g in match.groups())  # type: ignore[return-value]


def encode_pair(r1, c1, r2, c2, size: int):
    """Action id of a cell pair on a size x size board: base-`size` digits (r1, c1, r2, c2).
    Works on Python ints and on jax/numpy arrays."""
    return ((r1 * size + c1) * size + r2) * size + c2


def decode_pair(action, size: int):
    """Inverse of `encode_pair` for ids < size**4."""
    c2 = action % size
    r2 = (action // size) % size
    c1 = (action // size**2) % size
    r1 = action // size**3
    return r1, c1, r2, c2


def parse_pair_action(text: str, size: int, invalid_action: int) -> int:
    """Coordinate answer -> action id; malformed or out-of-range answers -> `invalid_action`."""
    pair = coordinate_answer(text)
    if pair is None or any(v >= size for v in pair):
        return invalid_action
    return int(encode_pair(*pair, size))


def pair_answer_text(action: int, size: int) -> str:
    """The canonical coordinate answer of a pair action: `<answer>(r1, c1) (r2, c2)</answer>`."""
    r1, c1, r2, c2 = decode_pair(int(action), size)
    return f"<answer>({r1}, {c1}) ({r2}, {c2})</answer>"


def board_text(game: str, board, size: int, cell_text, separator: str) -> str:
    """A board's perception text as G1 writes it: rows joined by newlines, each row's
    `cell_text(value)` joined by `separator`. `board` must be one size x size board."""
    board = np.asarray(board)
    if board.shape != (size, size):
        raise ValueError(
            f"{game}: describe expects one {size}x{size} board (unbatch a batched state first), got shape {board.shape}"
        )
    return "\n".join(separator.join(cell_text(int(v)) for v in row) for row in board)


def format_ok(text: str, strict: bool = False) -> bool:
    """G1's format reward condition. Lenient (the original): all six tags occur somewhere, in any
    order and number. Strict: exactly one `<perception>...</perception>`, then one
    `<think>...</think>`, then one `<answer>...</answer>`, in that order, nothing but whitespace
    between and around the blocks."""
    if not strict:
        return all(f"<{t}>" in text and f"</{t}>" in text for t in TAGS)
    for tag in TAGS:
        if text.count(f"<{tag}>") != 1 or text.count(f"</{tag}>") != 1:
            return False
    return _STRICT_FORMAT_RE.fullmatch(text) is not None


def perception_ok(text: str, truth: str) -> bool:
    """G1's perception reward condition: the exact ground-truth board text occurs verbatim."""
    return truth in text


_PERCEPTION_BLOCK = re.compile(r"<perception>(.*?)</perception>", re.DOTALL)


def perception_block(text: str) -> str | None:
    """The content of the first <perception>...</perception>, stripped of surrounding newlines."""
    match = _PERCEPTION_BLOCK.search(text)
    return None if match is None else match.group(1).strip("\n")


def board_cells(board: str) -> list[list[str]]:
    """A perception text as rows of cells: lines split on "|" (every game's separator), each cell
    stripped of spaces, blank lines dropped."""
    return [[cell.strip() for cell in line.split("|")] for line in board.split("\n") if line.strip()]


def perception_cell_accuracy(text: str, truth: str) -> float:
    """The share of cells that the answer's first <perception> block reads right, against the
    ground-truth board text. A block that is missing or does not parse into a board of the truth's
    shape (as many rows, each with as many cells) scores 0: a board cannot be read cell by cell
    from text whose cells do not line up."""
    block = perception_block(text)
    if block is None:
        return 0.0
    read, cells = board_cells(block), board_cells(truth)
    if len(read) != len(cells) or any(len(a) != len(b) for a, b in zip(read, cells)):
        return 0.0
    hits = sum(a == b for row_a, row_b in zip(read, cells) for a, b in zip(row_a, row_b))
    return hits / sum(len(row) for row in cells)
