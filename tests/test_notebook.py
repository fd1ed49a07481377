"""docs/notebook.ipynb runs from top to bottom, shows what it says it shows, and is stored with
the outputs of such a run."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

import rnnsym as rs

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "docs" / "notebook.ipynb"


def _outputs(cell) -> list[dict]:
    return cell["outputs"] if cell["cell_type"] == "code" else []


def _code_cells(notebook) -> list:
    return [c for c in notebook["cells"] if c["cell_type"] == "code"]


def _cell(notebook, starts: str):
    (cell,) = [c for c in _code_cells(notebook) if "".join(c["source"]).startswith(starts)]
    return cell


def _data(cell, mime: str) -> str:
    """The ``mime`` data of a cell's displayed result (one string; '' if it has none)."""
    for out in _outputs(cell):
        if out["output_type"] in ("execute_result", "display_data") and mime in out["data"]:
            value = out["data"][mime]
            return value if isinstance(value, str) else "".join(value)
    return ""


def _stream(cell) -> str:
    return "".join(
        out["text"] if isinstance(out["text"], str) else "".join(out["text"])
        for out in _outputs(cell)
        if out["output_type"] == "stream" and out["name"] == "stdout"
    )


def check_outputs(notebook) -> None:
    """What each step of the notebook must show."""
    errors = [o for c in _code_cells(notebook) for o in _outputs(c) if o["output_type"] == "error"]
    assert not errors, f"cell errors: {[e['ename'] + ': ' + e['evalue'] for e in errors]}"
    assert f"rnnsym {rs.__version__}" in _stream(_cell(notebook, "import numpy"))
    # the Elman derivation, the gated cell's and the bra-ket form display as LaTeX
    for starts, expected in (
        ("cell = rs.cells.elman()", r"\tanh"),
        ('gated = rs.Cell("leaky_gate")', r"\sigma"),
        ("rs.braket(cell, T=2)", r"\mathbb{S}"),
    ):
        latex = _data(_cell(notebook, starts), "text/latex")
        assert latex.lstrip().startswith(r"\begin{align"), (
            f"the output of {starts!r} is not a LaTeX align environment (is _repr_latex_ "
            f"wired to rnnsym.display?): {latex[:80]!r}"
        )
        assert expected in latex
    short = _stream(_cell(notebook, "print(repr(derivation))")).splitlines()[0]
    assert short.startswith("<Derivation 'elman'") and len(short) < 200, short
    markdown = _data(_cell(notebook, "model = rs.cells.get"), "text/markdown")
    # one environment per cell (forward, backward, head), with the parts named in the text
    assert markdown.count(r"\begin{align") >= 3, markdown[:200]
    assert all(part in markdown for part in ("forward", "backward", "head")), markdown[:200]
    # the kernel before and after rs.verify
    before = _data(_cell(notebook, "kernel = rs.compile(cell)"), "text/html")
    assert "not verified yet; run rs.verify(cell, kernel)" in before
    assert "<details>" in before and "def loss_and_grad" in before
    verified = _cell(notebook, "report = rs.verify(cell, kernel")
    assert "all checks passed: True" in _stream(verified)
    assert "<b>Certificate:</b> all checks passed (last run of rs.verify" in _data(
        verified, "text/html"
    )
    trained = _stream(_cell(notebook, "rng = np.random.default_rng(0)"))
    assert "loss decreased: True" in trained


def test_stored_notebook_has_the_outputs_of_a_run():
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    cells = _code_cells(notebook)
    counts = [c["execution_count"] for c in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"stored execution counts {counts}: re-run it top to bottom with "
        f"python docs/execute_notebook.py"
    )
    check_outputs(notebook)


def test_notebook_executes(tmp_path):
    missing = [m for m in ("nbclient", "nbformat", "ipykernel") if not importlib.util.find_spec(m)]
    if missing:
        pytest.skip(f"executing the notebook needs {', '.join(missing)}: pip install -e '.[docs]'")
    import nbformat

    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from execute_notebook import execute
    finally:
        sys.path.remove(str(ROOT / "docs"))
    copy = tmp_path / "notebook.ipynb"
    shutil.copy(NOTEBOOK, copy)
    notebook = execute(copy)  # raises CellExecutionError, naming the cell, if one fails
    check_outputs(json.loads(nbformat.writes(notebook)))
