"""The tutorial's code runs as written (documentation nobody runs goes stale)."""

from __future__ import annotations

import re
from pathlib import Path

from rnnsym.cli import main

DOCS = Path(__file__).parent.parent / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def test_tutorial_runs(tmp_path, monkeypatch, capsys):
    cell_file, _, session = python_blocks(DOCS / "tutorial.md")
    (tmp_path / "mycell.py").write_text(cell_file, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["verify", "mycell.py:make_cell", "--T", "2", "--emit", "mycell_kernel.py"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "all checks passed" in out
    assert (tmp_path / "mycell_kernel.py").is_file()
    exec(compile(session, "tutorial-session", "exec"), {"__name__": "__tutorial__"})
    out = capsys.readouterr().out
    assert re.search(r"\\begin\{align\*?\}", out)  # derivation.latex(): an align environment
    assert "relative error per parameter" in out and "FAILED" not in out


def test_architectures_doc_runs(capsys):
    """Every python block of docs/architectures.md, in order, in one namespace."""
    namespace = {"__name__": "__architectures__"}
    for i, block in enumerate(python_blocks(DOCS / "architectures.md")):
        exec(compile(block, f"architectures-block-{i}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "opposite directions" in out
    assert "V_4" in out


def test_equations_page_numbers_only_the_reports_equations():
    """docs/equations.md tags exactly the report's eqs. (2)-(9), once each and in order; every
    other equation on the page is unnumbered (the slides do not number theirs, and rnnsym's
    completion is not the report's)."""
    text = (DOCS / "equations.md").read_text(encoding="utf-8")
    assert re.findall(r"\\tag\{([^}]*)\}", text) == [str(n) for n in range(2, 10)]
    # no MathJax/Sphinx automatic numbering either: only starred environments, no labels
    assert not re.search(r"\\begin\{(equation|align|gather|multline)\}", text)
    assert not re.search(r"\$\$[ \t]*\([^)\n]*\)[ \t]*$", text, flags=re.M)  # $$ ... $$ (label)
