"""The documentation stands alone: the Sphinx site builds with warnings as errors, and no link in
the README, the changelog, the citation file or the docs leaves the repository or is dead."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

import rnnsym as rs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [
    "index",
    "tutorial",
    "notebook",
    "equations",
    "architectures",
    "verification",
    "design",
    "benchmarks",
    "api",
]
# the only external addresses allowed in the built HTML: the theme's credits in every page's
# footer and MathJax, which the browser loads to typeset the equations
THEME_AND_MATHJAX = (
    "https://www.sphinx-doc.org/",
    "https://github.com/pradyunsg/furo",
    "https://pradyunsg.me",
    "https://cdn.jsdelivr.net/npm/mathjax@",
)


def _missing_docs_tools() -> list[str]:
    return [m for m in ("sphinx", "myst_nb", "furo") if importlib.util.find_spec(m) is None]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    missing = _missing_docs_tools()
    if missing:
        pytest.skip(
            f"the docs site needs {', '.join(missing)}: pip install -e '.[docs]' to build it"
        )
    out = tmp_path_factory.mktemp("site") / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    result = subprocess.run(
        [*cmd, str(DOCS), str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert result.returncode == 0, f"sphinx-build -W failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_site_builds_with_every_page(site):
    for page in PAGES:
        html = site / f"{page}.html"
        assert html.is_file(), f"{html.name} missing from the built site"
        assert "<h1>" in html.read_text(encoding="utf-8"), f"{html.name} has no title"


def test_api_page_documents_the_public_api(site):
    html = (site / "api.html").read_text(encoding="utf-8")
    for name in rs.__all__:
        anchor = "module-rnnsym.cells" if name == "cells" else f"rnnsym.{name}"
        assert f'id="{anchor}"' in html, f"rnnsym.{name} is not in the API reference"
    assert 'id="rnnsym.kernel.Kernel"' in html


def test_notebook_page_shows_the_stored_outputs(site):
    html = (site / "notebook.html").read_text(encoding="utf-8")
    assert "all checks passed: True" in html
    assert "loss decreased: True" in html
    assert 'class="rnnsym-kernel"' in html  # the kernel's HTML repr, certificate and source
    # a derivation output reaches MathJax as a top-level environment, not wrapped in \[ \]
    assert re.search(r'text_latex math[^"]*">\s*\\begin\{align', html)


def test_built_pages_link_nowhere_outside(site):
    for html in site.glob("*.html"):
        text = html.read_text(encoding="utf-8")
        for url in re.findall(r'(?:href|src)="(https?://[^"]*)"', text):
            assert url.startswith(THEME_AND_MATHJAX), f"{html.name} links to {url}"
        assert "../shared" not in text and "seeds-en" not in text, html.name


# ----- links in the sources (no Sphinx needed) -----


def _sources() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "CITATION.cff"]
    files += sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
    files += sorted(DOCS.glob("*.ipynb"))
    return files


def _markdown(path: Path) -> str:
    """The Markdown of a file: a notebook's markdown cells, a .md file as it is."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text(encoding="utf-8")


def _prose_and_code(text: str) -> tuple[str, str]:
    """(the text with code blocks and code spans removed, the code removed)."""
    code: list[str] = []

    def keep(match: re.Match) -> str:
        code.append(match.group(0))
        return ""

    text = re.sub(r"^(```|~~~).*?^\1", keep, text, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", keep, text)
    return text, "\n".join(code)


def _link_targets(markdown: str) -> list[str]:
    text, _ = _prose_and_code(markdown)
    inline = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    reference = re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?\s*$", text, flags=re.M)
    return inline + reference


def _github_slug(heading: str) -> str:
    """The anchor GitHub (and MyST's heading anchors) give a heading."""
    text = re.sub(r"`|\*\*|__|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    markdown = re.sub(r"^(```|~~~).*?^\1", "", _markdown(path), flags=re.S | re.M)
    slugs: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", markdown, flags=re.M):
        slug = _github_slug(heading)
        count = slugs.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        slugs[slug] = count + 1
    return anchors


def test_github_slugs_follow_githubs_rule():
    assert _github_slug("`rs.verify`: the kernel against the cell's definition") == (
        "rsverify-the-kernel-against-the-cells-definition"
    )
    assert _github_slug("5. Completing the slides' derivation") == (
        "5-completing-the-slides-derivation"
    )
    assert _github_slug("Forward mode (RTRL)") == "forward-mode-rtrl"


# An address a shell command in a code block needs is not a link for the reader: the package
# index that serves PyTorch's CPU wheel (the README's install command). Nothing else.
COMMAND_ADDRESSES = {"https://download.pytorch.org/whl/cpu"}


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_link_leaves_the_repository(path):
    text = path.read_text(encoding="utf-8")
    rel = path.relative_to(ROOT)
    for forbidden in ("../shared", "seeds-en"):
        assert forbidden not in text, f"{rel} contains {forbidden!r}"
    prose, code = _prose_and_code(text) if path.suffix == ".md" else (text, "")
    for forbidden in ("http://", "https://"):
        assert forbidden not in prose, f"{rel} contains {forbidden!r} outside a command"
    for address in re.findall(r"https?://[^\s`'\"]+", code):
        assert address in COMMAND_ADDRESSES, f"{rel}: a command uses {address}"
    if path.suffix == ".cff":
        return
    for target in _link_targets(_markdown(path)):
        assert not re.match(r"[a-z][a-z0-9+.-]*:", target), f"{rel} links to {target}"
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        assert linked.is_relative_to(ROOT), f"{rel} links outside the repository: {target}"
        assert linked.exists(), f"{rel} links to {target}, which does not exist"
        if anchor and linked.suffix in (".md", ".ipynb"):
            assert anchor in _anchors(linked), (
                f"{rel} links to {target}: {linked.name} has no heading with anchor #{anchor}"
            )


def test_the_link_checker_sees_links():
    """The scan above is not vacuous: it finds the README's links into docs/ and their anchors."""
    targets = _link_targets(_markdown(ROOT / "README.md"))
    assert "docs/verification.md#rsverify-the-kernel-against-the-cells-definition" in targets
    assert _link_targets("see [a](x.md#y), `[no](code.md)` and\n[ref]: ../z.md\n") == [
        "x.md#y",
        "../z.md",
    ]
    prose, code = _prose_and_code(
        "see https://a.org, `pip x https://b.org`\n```sh\nc https://c.org\n```\n"
    )
    assert "https://a.org" in prose and "https://b.org" not in prose
    assert "https://b.org" in code and "https://c.org" in code and "https://c.org" not in prose


def test_no_extension_fetches_anything():
    """intersphinx (or any extension that downloads at build time) stays off."""
    conf: dict = {"__file__": str(DOCS / "conf.py")}
    if _missing_docs_tools():
        pytest.skip("docs/conf.py imports docutils: pip install -e '.[docs]'")
    exec(compile((DOCS / "conf.py").read_text(encoding="utf-8"), "conf.py", "exec"), conf)
    assert set(conf["extensions"]) <= {
        "myst_nb",
        "sphinx.ext.autodoc",
        "sphinx.ext.napoleon",
        "sphinx.ext.mathjax",
    }
    assert not conf.get("intersphinx_mapping")
    assert conf["nb_execution_mode"] == "off"
