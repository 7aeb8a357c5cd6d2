"""The notebooks in notebooks/ run top to bottom and are committed clean (docs/notebooks.md).

Each notebook runs in a fresh Python process, the way a Jupyter kernel runs it: the code cells in
order in one namespace, the working directory the notebook's folder, a cell's last expression
shown through `display` (IPython's rule). `display` is what a kernel provides; here it checks that
each object shown renders (an image's PNG, an object's HTML) and counts what was shown, and with
`display_id=True` it returns a handle whose `update` does the same. Jupyter itself is not needed.
The notebooks run in parallel processes: most of their time is XLA compiling on one core each.

    python tests/test_notebooks.py notebooks/games.ipynb REPORT.json    # one notebook by hand
"""

from __future__ import annotations

import ast
import collections
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import traceback

import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
TIMEOUT_S = 1800  # generous: a loaded 2-core machine runs them several times slower than a quiet one
CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # nbformat 4.5's cell id pattern
CELL_KEYS = {
    "markdown": {"cell_type", "id", "metadata", "source", "attachments"},
    "raw": {"cell_type", "id", "metadata", "source", "attachments"},
    "code": {"cell_type", "id", "metadata", "source", "outputs", "execution_count"},
}


def source_text(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def format_problems(notebook) -> list[str]:
    """What keeps a notebook from being clean nbformat 4.5 JSON with stripped outputs (empty: none)."""
    if not isinstance(notebook, dict):
        return ["the file is not a JSON object"]
    problems = []
    if set(notebook) != {"cells", "metadata", "nbformat", "nbformat_minor"}:
        problems.append(f"top-level keys {sorted(notebook)}; nbformat 4 has cells, metadata, nbformat, nbformat_minor")
    if (
        notebook.get("nbformat") != 4
        or not isinstance(notebook.get("nbformat_minor"), int)
        or notebook["nbformat_minor"] < 5
    ):
        problems.append(f"nbformat {notebook.get('nbformat')}.{notebook.get('nbformat_minor')}; expected 4.5 or later")
    if not isinstance(notebook.get("metadata"), dict) or "kernelspec" not in notebook.get("metadata", {}):
        problems.append("notebook metadata has no kernelspec")
    ids = []
    for i, cell in enumerate(notebook.get("cells", [])):
        kind = cell.get("cell_type")
        if kind not in CELL_KEYS:
            problems.append(f"cell {i}: cell_type {kind!r}")
            continue
        missing, extra = CELL_KEYS[kind] - {"attachments"} - set(cell), set(cell) - CELL_KEYS[kind]
        if missing or extra:
            problems.append(f"cell {i} ({kind}): missing {sorted(missing)}, not allowed {sorted(extra)}")
        source = cell.get("source")
        if not (isinstance(source, str) or isinstance(source, list) and all(isinstance(s, str) for s in source)):
            problems.append(f"cell {i}: source must be a string or a list of strings")
        if not isinstance(cell.get("metadata"), dict):
            problems.append(f"cell {i}: metadata must be an object")
        if not CELL_ID.match(str(cell.get("id", ""))):
            problems.append(f"cell {i}: id {cell.get('id')!r} does not match {CELL_ID.pattern}")
        ids.append(cell.get("id"))
        if kind == "code":
            if cell.get("outputs") != [] or cell.get("execution_count") is not None:
                problems.append(f"cell {i}: outputs not stripped (outputs and execution_count must be empty)")
            for line in source_text(cell).splitlines():
                if line.lstrip().startswith(("!", "%")):
                    problems.append(f"cell {i}: shell/magic line {line.strip()!r} (plain Python only)")
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        problems.append(f"cell ids used twice: {duplicated}")
    if not any(c.get("cell_type") == "code" for c in notebook.get("cells", [])):
        problems.append("no code cell")
    return problems


# ------------------------------------------------------------------------ the runner (a subprocess)
class Shown:
    """What a notebook displayed, by MIME type: a kernel's display(), checked and counted."""

    def __init__(self):
        self.counts = collections.Counter()

    def show(self, value) -> None:
        for method, mime in (("_repr_html_", "text/html"), ("_repr_png_", "image/png")):
            if hasattr(value, method):
                data = getattr(value, method)()
                if not data:
                    raise ValueError(f"{type(value).__name__}.{method}() returned nothing to show")
                self.counts[mime] += 1
                return
        self.counts["text/plain"] += 1
        print(repr(value))

    def display(self, *values, display_id=None, **unused):
        for value in values:
            self.show(value)
        return Handle(self) if display_id else None


class Handle:
    def __init__(self, shown: Shown):
        self.shown = shown

    def update(self, value, **unused) -> None:
        self.shown.show(value)


def run_cell(source: str, name: str, namespace: dict, shown: Shown) -> None:
    """exec the cell; its last expression, when it is one, is evaluated and shown (unless it ends in ';')."""
    tree = ast.parse(source, name)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, name, "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), name, "eval"), namespace)
        if value is not None and not source.rstrip().endswith(";"):
            shown.show(value)


def run_notebook(path: pathlib.Path, report_path: pathlib.Path) -> int:
    notebook = json.loads(path.read_text())
    shown = Shown()
    namespace = {"__name__": "__main__", "display": shown.display}
    cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    for index, cell in enumerate(cells):
        name = f"{path.name}[code cell {index}, id {cell['id']}]"
        print(f"--- {name}", flush=True)
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            run_cell(source_text(cell), name, namespace, shown)
        except Exception:
            traceback.print_exc()
            print(f"FAILED in {name}", flush=True)
            return 1
        print(f"--- {name}: {time.process_time() - cpu:.1f} s CPU, {time.perf_counter() - wall:.1f} s wall", flush=True)
    report_path.write_text(json.dumps({"code_cells": len(cells), "shown": shown.counts}))
    return 0


# ------------------------------------------------------------------------------------------- tests
def notebook_environment() -> dict:
    """The test's environment for a notebook: CPU only (the path the test checks), one device as on a
    CPU runtime (no fake devices from conftest), no GUI for matplotlib, no network."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg", HF_HUB_OFFLINE="1")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every notebook started at once, each in its own process; name -> (process, log, report)."""
    folder = tmp_path_factory.mktemp("notebooks")
    started = {}
    for path in NOTEBOOKS:
        log, report = folder / f"{path.stem}.log", folder / f"{path.stem}.json"
        with open(log, "w") as out:
            process = subprocess.Popen(
                [sys.executable, __file__, str(path), str(report)],
                cwd=NOTEBOOK_DIR,
                env=notebook_environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started[path.name] = (process, log, report)
    yield started
    for process, _, _ in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def finished(runs, name: str) -> dict:
    process, log, report = runs[name]
    try:
        code = process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"{name} did not finish within {TIMEOUT_S} s; its output ends:\n{log.read_text()[-3000:]}")
    assert code == 0, f"{name} failed (exit {code}); its output ends:\n{log.read_text()[-6000:]}"
    return json.loads(report.read_text())


def test_the_notebooks_are_there():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "games.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_nbformat(path):
    assert format_problems(json.loads(path.read_text())) == []


def test_format_check_catches_outputs_magics_and_bad_ids():
    clean = {
        "cells": [
            {
                "cell_type": "code",
                "id": "a",
                "metadata": {},
                "source": ["x = 1"],
                "outputs": [],
                "execution_count": None,
            }
        ],
        "metadata": {"kernelspec": {"name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    assert format_problems(clean) == []
    dirty = json.loads(json.dumps(clean))
    dirty["cells"][0].update(outputs=[{"output_type": "stream", "name": "stdout", "text": "1"}], execution_count=3)
    magic = json.loads(json.dumps(clean))
    magic["cells"][0]["source"] = ["import os\n", "!pip install g1jax"]
    twice = json.loads(json.dumps(clean))
    twice["cells"].append(dict(twice["cells"][0]))
    twice["cells"][1]["id"] = "a b"
    assert any("not stripped" in p for p in format_problems(dirty))
    assert any("shell/magic" in p for p in format_problems(magic))
    assert any("does not match" in p for p in format_problems(twice))
    assert format_problems(dict(clean, nbformat_minor=4)) != []


def test_runner_shows_last_expressions_and_names_the_failing_cell(tmp_path, capsys):
    def code(i, source):
        return {
            "cell_type": "code",
            "id": f"c{i}",
            "metadata": {},
            "source": source,
            "outputs": [],
            "execution_count": None,
        }

    sources = [
        "from PIL import Image\nx = 1",
        "Image.new('RGB', (2, 2))",
        "handle = display(x, display_id=True)\nx;",
        "handle.update(Image.new('RGB', (2, 2)))",
        "1 / 0",
        "never = True",
    ]
    notebook = {
        "cells": [code(i, s) for i, s in enumerate(sources)],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path, report = tmp_path / "t.ipynb", tmp_path / "report.json"
    path.write_text(json.dumps(notebook))
    assert run_notebook(path, report) == 1
    captured = capsys.readouterr()
    output = captured.out + captured.err  # the traceback goes to stderr
    assert "ZeroDivisionError" in output and "FAILED in t.ipynb[code cell 4, id c4]" in output
    assert not report.exists()
    del notebook["cells"][4:]
    path.write_text(json.dumps(notebook))
    assert run_notebook(path, report) == 0
    # the image of cell 1 and the update of cell 3 as PNG; display(x) as text; "x;" shows nothing
    assert json.loads(report.read_text())["shown"] == {"image/png": 2, "text/plain": 1}


# What each notebook must have shown at least (other notebooks: that they run)
MIN_SHOWN = {
    "quickstart.ipynb": {"image/png": 4, "text/html": 1},  # boards, frames, the live reward plot; the video
    "games.ipynb": {"image/png": 11},  # a grid per game and preset (7), the answers of the 4 games stepped
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(runs, path):
    report = finished(runs, path.name)
    for mime, least in MIN_SHOWN.get(path.name, {}).items():
        assert report["shown"].get(mime, 0) >= least, f"{path.name} showed {report['shown']}, wanted {least} x {mime}"


if __name__ == "__main__":
    sys.exit(run_notebook(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])))
