"""rnnsym.display: what a derivation, a bra-ket form, a composed model and a kernel show in
Jupyter, and the certificate rs.verify / check_kernel attach to a kernel."""

from __future__ import annotations

import html
import importlib.util
import re
import sys
from types import SimpleNamespace

import pytest

import rnnsym as rs
from rnnsym import display

verify_module = sys.modules["rnnsym.verify"]  # rs.verify is the function


def elman_named(name: str) -> rs.Cell:
    """The report's Elman cell under another name (built with the public API)."""
    cell = rs.Cell(name)
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    V, c = cell.param("V", k, n), cell.param("c", k)
    cell.update(h, rs.tanh(b + W @ h.prev + U @ x))
    cell.loss(rs.squared_error(cell.output("o", c + V @ h), cell.target("y", k)))
    return cell


def test_derivation_repr_is_one_short_line():
    derivation = rs.derive(rs.cells.elman())
    text = display.derivation_repr(derivation)
    assert "\n" not in text and len(text) < 200, text
    assert text.startswith("<Derivation 'elman': ")
    assert f"{len(derivation.equations())} equations" in text
    assert "5 parameter gradients" in text  # W, U, b, V, c


def without_labels(latex: str) -> str:
    return re.sub(r"\\label\{[^{}]*\}", "", latex).strip()


def test_latex_reprs_are_the_objects_latex_less_labels():
    derivation = rs.derive(rs.cells.elman())
    latex = display.derivation_latex(derivation)
    assert latex == without_labels(derivation.latex())
    # a top-level environment, not wrapped in $$ (MathJax 4 rejects align inside display math)
    assert re.match(r"\\begin\{align\*?\}", latex) and re.search(r"\\end\{align\*?\}\Z", latex)
    # no \label: MathJax refuses a label defined twice, as when a derivation is shown twice
    assert "\\label" not in latex and latex.count("\\tag{") == len(derivation.equations())
    form = rs.braket(rs.cells.elman(), T=2)
    assert display.sequence_form_latex(form) == without_labels(form.latex())


def test_model_derivation_markdown_keeps_every_latex_line():
    derivation = rs.cells.get("bidirectional").derive()
    markdown = display.model_derivation_markdown(derivation)
    lines = markdown.splitlines()
    latex_lines = [ln for ln in without_labels(derivation.latex()).splitlines() if ln.strip()]
    math = [ln for ln in latex_lines if not ln.startswith("%")]
    assert [ln for ln in lines if ln in math] == math  # every line, in order, unchanged
    assert not any(ln.startswith("%") for ln in lines)  # comments became text
    assert markdown.count(r"\begin{align") == sum(r"\begin{align" in ln for ln in math) >= 3
    summary = display.model_derivation_repr(derivation)
    assert summary.startswith("<ModelDerivation 'bidirectional' (bidirectional): parts forward")
    assert "\n" not in summary and len(summary) < 200


def test_markdown_text_is_literal():
    hostile = "a_b *c* [link](x.md) <b>bold</b> `code` $x$ # \\ | ~ & !"
    escaped = display._markdown_text(hostile)
    if importlib.util.find_spec("markdown_it") is None:
        pytest.skip("markdown-it-py (a dependency of the docs extra) renders the check")
    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark").render(escaped)
    assert rendered == f"<p>{html.escape(hostile, quote=False)}</p>\n"


def _pre_blocks(text: str) -> list[str]:
    return [html.unescape(block) for block in re.findall(r"<pre>(.*?)</pre>", text, re.S)]


def test_kernel_html_before_and_after_verification():
    cell = rs.cells.elman()
    kernel = rs.compile(cell)
    before = display.kernel_html(kernel)
    assert kernel._repr_html_() == before
    assert display.NOT_VERIFIED in before and "<details>" in before
    assert _pre_blocks(before) == [kernel.source]  # the source, escaped and complete
    kernel_report = verify_module.check_kernel(cell, kernel)
    assert kernel.certificate is kernel_report and kernel.certificate_cell is cell
    checked = display.kernel_html(kernel)
    assert "all checks passed (last run of check_kernel against cell &#x27;elman&#x27;)" in checked
    assert _pre_blocks(checked) == [str(kernel_report), kernel.source]
    report = rs.verify(cell, kernel, oracle=False)
    assert report.ok and kernel.certificate is report
    verified = display.kernel_html(kernel)
    assert "last run of rs.verify" in verified and "different Cell object" not in verified
    assert _pre_blocks(verified) == [str(report), kernel.source]


def test_failed_certificate_and_another_cell():
    relu_kernel = rs.compile(rs.cells.elman_relu())  # the same parameters, ReLU for tanh
    report = rs.verify(rs.cells.elman(), relu_kernel, oracle=False)
    assert not report.ok
    text = display.kernel_html(relu_kernel)
    assert "<b>Certificate:</b> CHECKS FAILED" in text
    assert "a different Cell object from the one this kernel was compiled from" in text


def test_hostile_names_are_escaped():
    name = '<script>alert("x")</script> & *_'
    kernel = rs.compile(elman_named(name))
    rs.verify(kernel.cell, kernel, oracle=False)
    text = display.kernel_html(kernel)
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "\n" not in display.derivation_repr(kernel.derivation)


def test_certificate_only_on_rnnsym_kernels():
    cell = rs.cells.elman()
    other = SimpleNamespace(cell=cell)
    display.attach_certificate(other, cell, object())
    assert not hasattr(other, "certificate")


def test_model_kernel_html_before_and_after_verification():
    """A composed model's kernel shows each part's source, and its certificate once
    ``rs.verify`` (which hands a model to ``verify_model``) has run on it."""
    model = rs.cells.get("last_output")
    kernel = model.compile()
    before = kernel._repr_html_()
    assert display.NOT_VERIFIED in before
    assert _pre_blocks(before) == [k.source for k in kernel.kernels.values()]
    report = rs.verify(model, kernel, T=2)
    assert report.ok and kernel.certificate is report and kernel.certificate_cell is model
    after = kernel._repr_html_()
    assert (
        "all checks passed (last run of rs.verify against model &#x27;last_output&#x27;)" in after
    )
    assert _pre_blocks(after) == [str(report)] + [k.source for k in kernel.kernels.values()]
