"""How rnnsym's objects show themselves in Jupyter (and in a plain ``repr``).

Jupyter asks an object for rich representations through ``_repr_latex_``, ``_repr_markdown_``
and ``_repr_html_``; these functions compute them, so that each class needs one line per
method. A derivation is shown as its LaTeX (a top-level ``align*`` environment, which MathJax
typesets as it is), a composed model's derivation as Markdown with one such environment per
cell, and a kernel as HTML: its verification certificate and its generated source.

Nothing here imports the rest of rnnsym at module level, so any module may import it.
"""

from __future__ import annotations

import html
import re
from typing import Any

__all__ = [
    "derivation_repr",
    "derivation_latex",
    "sequence_form_latex",
    "model_derivation_repr",
    "model_derivation_markdown",
    "kernel_html",
    "model_kernel_html",
    "attach_certificate",
    "NOT_VERIFIED",
]

NOT_VERIFIED = "not verified yet; run rs.verify(cell, kernel)"


def _equation_counts(derivation: Any) -> tuple[int, int]:
    """(number of equations, number of parameter gradients) of a Derivation."""
    equations = derivation.equations()
    gradients = sum(1 for eq in equations if isinstance(eq.lhs, str) and eq.lhs.startswith("grad:"))
    return len(equations), gradients


def derivation_repr(derivation: Any) -> str:
    """A one-line summary of a Derivation, instead of its dataclass fields."""
    equations, gradients = _equation_counts(derivation)
    return (
        f"<Derivation {derivation.cell.name!r}: {equations} equations, {gradients} parameter "
        f"gradients; print() for text, .latex() for LaTeX>"
    )


_LABEL = re.compile(r"\\label\{[^{}]*\}")


def _for_mathjax(latex: str) -> str:
    """``latex`` without its ``\\label``s: a notebook (or a web page) may show the same
    derivation twice, and MathJax refuses a label defined twice on one page."""
    return _LABEL.sub("", latex).strip()


def derivation_latex(derivation: Any) -> str:
    """``_repr_latex_`` of a Derivation: its ``latex()`` (amsmath environments), less labels.

    The environments are returned as they are, not inside ``$$``: MathJax typesets a top-level
    ``\\begin{align}`` directly, while MathJax 4 rejects ``align`` nested in display math.
    """
    return _for_mathjax(derivation.latex())


def sequence_form_latex(form: Any) -> str:
    """``_repr_latex_`` of a SequenceForm (the bra-ket form): its ``latex()``, less labels."""
    return _for_mathjax(form.latex())


def model_derivation_repr(model_derivation: Any) -> str:
    """A one-line summary of a ModelDerivation, instead of its dataclass fields."""
    model = model_derivation.model
    parts = ", ".join(model_derivation.parts)
    equations = sum(_equation_counts(d)[0] for d in model_derivation.parts.values())
    kind = model.kind.replace("_", " ")
    return (
        f"<ModelDerivation {model.name!r} ({kind}): parts {parts}; {equations} equations; "
        f"print() for text, .latex() for LaTeX>"
    )


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|$~&])")


def _markdown_text(text: str) -> str:
    """``text`` as literal Markdown: every punctuation character Markdown reads is escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def model_derivation_markdown(model_derivation: Any) -> str:
    """``_repr_markdown_`` of a ModelDerivation: each cell's ``align*`` block, with the
    comment lines of ``latex()`` (the model, each part, how the adjoints are chained) as text."""
    blocks: list[str] = []
    math: list[str] = []
    prose: list[str] = []

    def flush_prose() -> None:
        if prose:
            blocks.append("  \n".join(_markdown_text(line) for line in prose))
            prose.clear()

    def flush_math() -> None:
        if math:
            blocks.append("\n".join(math))
            math.clear()

    for line in _for_mathjax(model_derivation.latex()).splitlines():
        if line.startswith("%"):
            flush_math()
            prose.append(line[1:].strip())
        elif line.strip():
            flush_prose()
            math.append(line)
    flush_math()
    flush_prose()
    return "\n\n".join(blocks) + "\n"


def attach_certificate(kernel: Any, cell: Any, report: Any) -> None:
    """Remember ``report`` (of ``rs.verify`` or ``check_kernel`` against ``cell``) on an rnnsym
    ``Kernel`` as its certificate; other kernel objects are left untouched."""
    if hasattr(kernel, "certificate_cell"):  # a Kernel or a ModelKernel
        kernel.certificate = report
        kernel.certificate_cell = cell


def _certificate_html(kernel: Any) -> str:
    report = getattr(kernel, "certificate", None)
    if report is None:
        return f"<p><b>Certificate:</b> {html.escape(NOT_VERIFIED)}</p>"
    cell = getattr(kernel, "certificate_cell", None)
    what = "model" if hasattr(cell, "parts") else "cell"
    against = "" if cell is None else f" against {what} {html.escape(repr(cell.name))}"
    compiled_from = getattr(kernel, "cell", None) or getattr(kernel, "model", None)
    if cell is not None and cell is not compiled_from:
        kind = "Model" if what == "model" else "Cell"
        against += f" (a different {kind} object from the one this kernel was compiled from)"
    verdict = "all checks passed" if report.ok else "CHECKS FAILED"
    kind = "rs.verify" if hasattr(report, "oracle") else "check_kernel"
    return (
        f"<p><b>Certificate:</b> {verdict} (last run of {kind}{against})</p>\n"
        f"<details><summary>verification report</summary>\n"
        f"<pre>{html.escape(str(report))}</pre>\n</details>"
    )


def _source_html(source: str, title: str = "") -> str:
    """A generated module, collapsed under its title and size."""
    lines = len(source.splitlines())
    return (
        f"<details><summary>{html.escape(title)}generated source ({lines} lines, NumPy only)"
        f"</summary>\n<pre>{html.escape(source)}</pre>\n</details>"
    )


def _kernel_div(kernel: Any, sources: list[str]) -> str:
    return (
        f'<div class="rnnsym-kernel">\n'
        f"<p>{html.escape(repr(kernel))}</p>\n"
        f"{_certificate_html(kernel)}\n" + "\n".join(sources) + "\n</div>"
    )


def kernel_html(kernel: Any) -> str:
    """``_repr_html_`` of a Kernel: its summary, its certificate and its source (collapsed)."""
    return _kernel_div(kernel, [_source_html(kernel.source)])


def model_kernel_html(kernel: Any) -> str:
    """``_repr_html_`` of a ModelKernel: its summary, its certificate (of ``rs.verify_model``)
    and the generated source of each part's kernel (collapsed)."""
    parts = kernel.kernels.items()
    return _kernel_div(kernel, [_source_html(part.source, f"{role}: ") for role, part in parts])
