"""Every notebook in notebooks/ runs top to bottom (code cells executed in one namespace,
as a kernel would, without needing Jupyter installed)."""

import json
import pathlib

import pytest

NOTEBOOKS = sorted(pathlib.Path(__file__).resolve().parent.parent.joinpath("notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path):
    notebook = json.loads(path.read_text())
    namespace = {"__name__": "__notebook__"}
    cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert cells, f"{path.name} has no code"
    for i, cell in enumerate(cells):
        source = "".join(cell["source"])
        assert not source.lstrip().startswith(("!", "%")), f"{path.name} cell {i}: shell/magic lines cannot run in CI"
        exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)


def test_notebooks_exist():
    assert NOTEBOOKS
