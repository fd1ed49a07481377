"""Sphinx configuration of rnnsym's documentation site.

Build it with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` after
``pip install -e ".[docs]"``. Pages are MyST Markdown (``myst-nb``, which includes
``myst-parser``); the example notebook is rendered from its stored outputs, never executed
here, so the build is fast and needs no network. No extension that fetches anything
(intersphinx) is enabled.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from docutils import nodes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # autodoc imports the package from this checkout

import rnnsym  # noqa: E402

project = "rnnsym"
author = "the rnnsym authors"
copyright = "the rnnsym authors, MIT License"  # noqa: A001 - Sphinx's name
release = rnnsym.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: $...$ and $$...$$ math, top-level amsmath environments, and GitHub-style anchors for
# headings (the pages link to each other's sections as #slug, as GitHub renders them)
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# the notebook is stored with its outputs (tests/test_notebook.py executes it); show them as is
nb_execution_mode = "off"
# Markdown outputs (a composed model's derivation) are parsed as MyST, so their amsmath
# environments become math
nb_render_markdown_format = "myst"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = True

html_theme = "furo"
html_title = f"rnnsym {release}"
html_show_sourcelink = False

# Top-level AMS environments (align*, gather, ...) must reach MathJax as they are: Sphinx wraps
# every math block in \[ ... \] (and \begin{split} when it has line breaks), and MathJax 4 refuses
# an align* nested in display math ("Erroneous nesting of equation structures"). MyST's amsmath
# extension already marks its blocks so; notebook text/latex outputs (a Derivation's
# _repr_latex_) are marked here.
_TOP_LEVEL = re.compile(
    r"\A\s*\\begin\{(?:equation|align|alignat|gather|multline|flalign|eqnarray)\*?\}"
)


def _in_notebook_output(node) -> bool:
    parent = node.parent
    while parent is not None:
        if "cell_output" in parent.get("classes", ()):
            return True
        parent = parent.parent
    return False


def _unwrap_top_level_environments(app, doctree) -> None:
    for node in doctree.findall(nodes.math_block):
        if _TOP_LEVEL.match(node.astext()):
            node["nowrap"] = True
            # An output's environment numbers its own lines (\tag); MyST's amsmath extension
            # would put a page-wide equation number on the whole block as well.
            if _in_notebook_output(node):
                node["number"] = None


# Docstrings write bra-kets as the slides do, |x⟩ and ⟨d(t)|h(t)⟩; reST would read a bar as the
# start of a substitution reference. Outside ``literals`` a bar is escaped, so it prints as is.
_LITERAL = re.compile(r"(``.*?``)")


def _escape_bars(app, what, name, obj, options, lines: list[str]) -> None:
    for i, line in enumerate(lines):
        parts = _LITERAL.split(line)
        parts[::2] = [re.sub(r"(?<!\\)\|", r"\\|", part) for part in parts[::2]]
        lines[i] = "".join(parts)


def setup(app) -> dict:
    app.connect("doctree-read", _unwrap_top_level_environments)
    app.connect("autodoc-process-docstring", _escape_bars)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
