"""Citation and licence metadata: CITATION.cff parses as Citation File Format 1.2.0 and agrees
with the package."""

from __future__ import annotations

from pathlib import Path

import pytest

import rnnsym as rs

ROOT = Path(__file__).resolve().parents[1]


def test_citation_cff_is_valid_and_matches_the_package():
    yaml = pytest.importorskip("yaml", reason="PyYAML (in the test extra) parses CITATION.cff")
    data = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    # the keys CFF 1.2.0 requires, and the ones a citation of this software needs
    assert data["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors", "version", "license", "references"):
        assert data[key], key
    assert data["version"] == rs.__version__
    assert data["license"] == "MIT"
    for author in data["authors"]:
        assert "name" in author or "family-names" in author
    cited = {ref["title"] for ref in data["references"]}
    assert "Deep Learning" in cited
    assert any("Deep learning and physics 4.2" in title for title in cited)


def test_license_file_matches_the_package_metadata():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert meta["license"]["text"] == "MIT"
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
