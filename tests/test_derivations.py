"""Every worked derivation in derivations/ runs to the end (its asserts are the checks)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

DERIVATIONS = sorted((Path(__file__).parent.parent / "derivations").glob("*.py"))


def test_there_are_derivations():
    assert DERIVATIONS, "derivations/ holds no worked derivation"


@pytest.mark.parametrize("path", DERIVATIONS, ids=[p.stem for p in DERIVATIONS])
def test_derivation_runs(path, capsys):
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert "eq." in out
