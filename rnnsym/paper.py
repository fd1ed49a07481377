"""A derivation as a standalone LaTeX document a researcher can cite or attach as an appendix.

:func:`paper_document` writes, for a cell or a composed model: its definition (sizes, inputs,
states, parameters, targets with their shapes), the forward equations, the backward recurrence
and every gradient in matrix form, numbered and labelled, the whole-sequence bra-ket form where
the cell has one, and a verification certificate (the scalar oracle's agreeing digits per
parameter, finite differences, forward mode against reverse mode, PyTorch where a built-in cell
matches a ``torch.nn`` module, the versions and the date). Only amsmath and amssymb are needed;
the document compiles with pdflatex.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import sympy as sp

from .cell import Cell
from .derive import Derivation, derive
from .errors import RnnsymError
from .models.compose import Model, ModelDerivation
from .models.nested import NestedModel, NestedSeq2Seq
from .printing import (
    DerivationLatexPrinter,
    _latex_name,
    align_block,
    breakable,
    label_key,
    latex_rows,
    latex_step,
    latex_text,
)

__all__ = ["paper_document", "make_paper", "Paper", "PAPER_NOTATIONS"]

PAPER_NOTATIONS = ("report", "braket")

# forward mode (sensitivities carried forward) and reverse mode (BPTT) add the same float64
# terms in a different order: they agree to rounding, ~1e-15 relative at T = 5 and sizes < 10;
# 1e-9 is verify's float64 tolerance, far below the O(1) error of any wrong term
FORWARD_REVERSE_TOLERANCE = 1e-9

# The references: key -> (bibliography entry, short form). --body-only output has no
# bibliography (the paper it goes into has its own) and cites the short form in the text.
_REFERENCES = {
    "goodfellow2016": (
        "I.~Goodfellow, Y.~Bengio and A.~Courville, \\emph{Deep Learning},\n"
        "  MIT Press, 2016, chapter~10: Sequence modeling: recurrent and recursive nets.",
        "\\emph{Deep Learning}, MIT Press, 2016",
    ),
    "suga2023": (
        "Y.~Suga, ``Deep learning and physics 4.2: recurrent neural networks and\n"
        "  back-propagation'', lecture slides, Ibaraki University, 2023.",
        "Y.~Suga, ``Deep learning and physics 4.2'', lecture slides, Ibaraki University, 2023",
    ),
}
_BIBLIOGRAPHY = (
    "\\begin{thebibliography}{9}\n"
    + "".join(f"\\bibitem{{{key}}} {entry}\n" for key, (entry, _) in _REFERENCES.items())
    + "\\end{thebibliography}"
)


@dataclass
class Paper:
    """The document (``tex``) and whether every check of its certificate passed (``ok``;
    True when it was made without a certificate)."""

    tex: str
    ok: bool


def _version() -> str:
    from ._version import __version__

    return __version__


# ----- the definition -----


def _shape_tex(symbol, printer: DerivationLatexPrinter) -> str:
    rows, cols = symbol.shape
    if cols == 1:
        return rf"\mathbb{{R}}^{{{printer._print(rows)}}}"
    return rf"\mathbb{{R}}^{{{printer._print(rows)} \times {printer._print(cols)}}}"


def _definition(cell: Cell, notation: str) -> str:
    """The cell's sizes and quantities as a table."""
    printer = DerivationLatexPrinter({})
    kets = notation == "braket"

    def shown(var, step: str | None) -> str:
        vector = var.symbol.shape[1] == 1
        if step is None:
            name = _latex_name(var.name, bold=vector and notation == "report")
            return rf"| {name} \rangle" if kets and vector else name
        name = latex_step(var.name, step, notation)
        return rf"| {name} \rangle" if kets else name

    rows = []
    for var in cell.inputs.values():
        if var.name in cell.fed_back:
            target = cell.targets[cell.fed_back[var.name]]
            what = r"input: the target of step $t-1$ (teacher forcing)"
            rows.append((shown(target, "t-1"), _shape_tex(var.symbol, printer), what))
        elif var.name in cell.context_inputs:
            rows.append(
                (shown(var, None), _shape_tex(var.symbol, printer), "input, one per sequence")
            )
        else:
            rows.append((shown(var, "t"), _shape_tex(var.symbol, printer), "input at step $t$"))
    for var in cell.states.values():
        rows.append((shown(var, "t"), _shape_tex(var.symbol, printer), "state"))
    for var in cell.intermediates.values():
        rows.append((shown(var, "t"), _shape_tex(var.symbol, printer), "named intermediate"))
    for var in cell.outputs.values():
        rows.append((shown(var, "t"), _shape_tex(var.symbol, printer), "output"))
    for var in cell.params.values():
        rows.append(
            (shown(var, None), _shape_tex(var.symbol, printer), "parameter, shared over $t$")
        )
    for var in cell.targets.values():
        what = "target (class index, as 1-of-$K$)" if var.name in cell.class_targets else "target"
        rows.append((shown(var, "t"), _shape_tex(var.symbol, printer), what))
    sizes = ", ".join(f"${_latex_name(n)}$" for n in cell.size_symbols) or "none"
    body = " \\\\\n".join(f"  ${a}$ & ${b}$ & {c}" for a, b, c in rows)
    return (
        f"Sizes (positive integers): {sizes}.\n\n"
        "\\begin{center}\n\\begin{tabular}{llp{0.45\\linewidth}}\n"
        "  quantity & space & role \\\\\n  \\hline\n"
        f"{body}\n\\end{{tabular}}\n\\end{{center}}\n"
    )


# ----- the equations -----

_SECTIONS = {
    "forward": "Forward equations",
    "backward": "Backward recurrence",
    "gradient": "Gradients",
}


def _cell_equations(derivation: Derivation, notation: str, key: str) -> str:
    rows = latex_rows(derivation, notation=latex_notation(notation), key=key)
    cell = derivation.cell
    out = []
    for section, title in _SECTIONS.items():
        part = [r for r in rows if r.section == section]
        if not part:
            continue
        first, last = part[0].key, part[-1].key
        span = rf"\eqref{{{first}}}" if first == last else rf"\eqref{{{first}}}--\eqref{{{last}}}"
        if section == "forward":
            states = ", ".join(f"${latex_step(s, '0', notation)}$" for s in cell.states)
            if cell.states:
                text = (
                    f"One step $t = 1, \\dots, T$ of the cell, {span}; the initial "
                    f"state{'s' if len(cell.states) > 1 else ''} {states} "
                    f"{'are' if len(cell.states) > 1 else 'is'} given (zero by default). The "
                    f"loss is $L = \\sum_{{t=1}}^{{T}} L^{{(t)}}$."
                )
            else:
                text = (
                    f"The cell has no state: every step is computed on its own, {span}. The "
                    f"loss is $L = \\sum_{{t=1}}^{{T}} L^{{(t)}}$."
                )
        elif section == "backward":
            if cell.states:
                text = (
                    f"The adjoints $\\nabla_q L$ of the step's quantities, {span}, for $t = T, "
                    f"\\dots, 1$: terms of step $T+1$ are zero, which is the boundary condition "
                    f"of the recurrence."
                )
            else:
                text = (
                    f"The adjoints $\\nabla_q L$ at step $t$, {span}; nothing flows between steps."
                )
        else:
            text = (
                f"Each parameter's gradient, {span}, is a sum over the steps (and over the "
                f"batch when the data come in batches)."
            )
        out.append(f"\\subsection*{{{title}}}\n{text}\n{align_block(part)}\n")
    return "\n".join(out)


def latex_notation(notation: str) -> str:
    """The printer's notation for a paper notation."""
    return "report" if notation == "report" else "braket"


def _braket_section(cell: Cell, T: int) -> tuple[str, object | None]:
    """The whole-sequence bra-ket form (the slides') of ``cell`` over T steps, or why not."""
    from .braket.form import braket

    try:
        form = braket(cell, T)
    except RnnsymError as exc:
        reason = latex_text(str(exc))
        return (
            "\\subsection*{Whole-sequence bra-ket form}\n"
            f"Not available for this cell: {reason}.\n",
            None,
        )
    return (
        "\\subsection*{Whole-sequence bra-ket form}\n"
        f"The same gradients written over the whole sequence of $T = {T}$ steps in the bra-ket "
        "notation of the slides~\\cite{suga2023}: kets $|h\\rangle$ stack the states of all "
        "steps, and the errors of every step follow from one linear system.\n"
        f"{form.latex()}\n",
        form,
    )


# ----- the certificate -----


def _digits(d: float) -> str:
    return "exact" if math.isinf(d) else f"{d:.0f}"


def _err(e: float | None) -> str:
    if e is None:
        return "--"
    if e == 0:
        return "$0$"
    mantissa, exponent = f"{e:.1e}".split("e")
    return rf"${mantissa}\times 10^{{{int(exponent)}}}$"  # 10^{-8}, not 10^{-08}


def _note_tex(note: str) -> str:
    """A note of the verification report as a sentence; "finite differences at k=3, T_x=5"
    gives its sizes in math mode."""
    note = note.strip("()")
    prefix = "finite differences at "
    if note.startswith(prefix):
        pairs = [item.split("=") for item in note[len(prefix) :].split(", ")]
        if all(len(p) == 2 and p[1].isdigit() for p in pairs):
            return "Sizes: " + ", ".join(f"${_latex_name(a)} = {b}$" for a, b in pairs) + "."
    return latex_text(note) + "."


def _relative(got, want) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = max(float(np.linalg.norm(want)), float(np.linalg.norm(got)), 1e-300)
    return float(np.linalg.norm(got - want) / scale)


def _forward_vs_reverse(cell: Cell) -> tuple[dict[str, float] | None, str]:
    """Relative gradient errors of the forward-mode kernel against the reverse-mode one."""
    from .kernel import compile_cell
    from .problems import random_problem

    try:
        forward = compile_cell(cell, mode="forward")
    except RnnsymError as exc:
        return None, f"forward mode not available: {exc}"
    reverse = compile_cell(cell)
    params, inputs, targets = random_problem(cell, T=5, B=2, seed=1)
    loss_f, grads_f = forward.loss_and_grad(params, inputs, targets)
    loss_r, grads_r = reverse.loss_and_grad(params, inputs, targets)
    errors = {n: _relative(grads_f[n], grads_r[n]) for n in grads_r}
    errors["loss"] = _relative(float(loss_f), float(loss_r))
    return errors, "$T = 5$, $B = 2$, float64, random data"


def _versions(extra: dict[str, str]) -> str:
    versions = {
        "rnnsym": _version(),
        "SymPy": sp.__version__,
        "NumPy": np.__version__,
        "Python": platform.python_version(),
        **extra,
    }
    return ", ".join(f"{k} {latex_text(v)}" for k, v in versions.items())


def _module_tex(module: str) -> str:
    """``torch.nn.RNN(nonlinearity="tanh")`` as typewriter text that may break at the option."""
    head, _, option = module.partition("(")
    text = f"\\texttt{{{latex_text(head)}}}"
    return f"{text} with \\texttt{{{latex_text(option.rstrip(')'))}}}" if option else text


def _table(header: list[str], rows: list[list[str]]) -> str:
    body = " \\\\\n".join("  " + " & ".join(r) for r in rows)
    return (
        "\\begin{center}\\small\\setlength{\\tabcolsep}{4pt}\n"
        f"\\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}\n"
        f"  {' & '.join(header)} \\\\\n  \\hline\n{body}\n"
        "\\end{tabular}\n\\end{center}\n"
    )


def _cell_certificate(cell: Cell, T: int | None, form, today: str) -> tuple[str, bool]:
    from .verify import braket_report, verify
    from .verify.torch_compare import TORCH_MODULES, compare_with_torch, torch_builtin

    report = verify(cell, T=T)
    oracle, kernel = report.oracle, report.kernel
    fd = kernel.errors("finite differences")
    interp = kernel.errors("gradient")
    fwd, fwd_note = _forward_vs_reverse(cell)
    fwd_ok = fwd is None or all(e <= FORWARD_REVERSE_TOLERANCE for e in fwd.values())
    builtin = torch_builtin(cell)
    torch = compare_with_torch(builtin) if builtin else None
    torch_ok = torch is None or not torch.available or torch.ok
    extra = {"PyTorch": torch.torch_version} if torch is not None and torch.available else {}
    header = ["parameter", "oracle digits", "finite diff.", "interpreter", "fwd vs rev"]
    if torch is not None and torch.available:
        header.append("torch")
    rows = []
    for name in cell.params:
        row = [
            f"${_latex_name(name)}$",
            _digits(oracle.agreement[name]) if name in oracle.agreement else "--",
            _err(fd.get(name)),
            _err(interp.get(name)),
            _err(fwd.get(name)) if fwd else "--",
        ]
        if torch is not None and torch.available:
            row.append(_err(torch.errors.get(name)))
        rows.append(row)
    sizes = ", ".join(f"${_latex_name(k)} = {v}$" for k, v in oracle.sizes.items())
    ksizes = ", ".join(f"${_latex_name(k)} = {v}$" for k, v in kernel.sizes.items())
    lines = [
        "\\subsection*{Verification certificate}",
        f"Checked on {today} with {_versions(extra)}.",
        "\\begin{itemize}",
        f"\\item \\emph{{oracle digits}}: significant digits in which the derivation above, "
        f"evaluated step by step at a random rational point with {oracle.digits}-digit "
        f"arithmetic, agrees with \\texttt{{sympy.diff}} applied node by node to the unrolled "
        f"scalar graph ({sizes}, $T = {oracle.T}$; worst entry of each gradient; "
        f"{oracle.required} required).",
        f"\\item \\emph{{finite diff.}}: the generated NumPy kernel's gradient against "
        f"Richardson-extrapolated central differences of its own loss along random directions "
        f"(tolerance $10^{{-6}}$); \\emph{{interpreter}}: against complex-step derivatives of an "
        f"independent NumPy evaluation of the cell's equations (tolerance $10^{{-9}}$); both "
        f"relative, in float64, at {ksizes}, $T = {kernel.T}$, $B = {kernel.B}$.",
    ]
    if fwd is not None:
        lines.append(
            f"\\item \\emph{{fwd vs rev}}: the forward-mode kernel (sensitivities carried "
            f"forward in time) against the reverse-mode one (back-propagation through time), "
            f"relative error of the gradients, {fwd_note} (tolerance "
            f"$10^{{-9}}$); loss {_err(fwd['loss'])}."
        )
    else:
        lines.append(f"\\item {latex_text(fwd_note)}.")
    if torch is not None:
        if torch.available:
            lines.append(
                f"\\item \\emph{{torch}}: this is rnnsym's built-in cell "
                f"\\texttt{{{latex_text(builtin)}}}, which {_module_tex(TORCH_MODULES[builtin])} "
                f"computes; its gradients under "
                f"\\texttt{{torch.autograd}} against the generated kernel's, relative error "
                f"(float64, tolerance $10^{{-10}}$); loss {_err(torch.errors['loss'])}."
            )
        else:
            lines.append(f"\\item PyTorch comparison skipped: {latex_text(torch.note)}.")
    ok = report.ok and fwd_ok and torch_ok
    braket_ok = True
    if form is not None:
        b = braket_report(form, oracle=False)
        worst = min(d for col in b.columns.values() for d in col.values())
        braket_ok = b.ok
        lines.append(
            f"\\item The bra-ket form above (update rules and closed form) against "
            f"back-propagation through time at a random rational point, $T = {b.T}$: worst "
            f"agreement {_digits(worst)} significant digits ({b.required} required)."
        )
    ok = ok and braket_ok
    lines.append("\\end{itemize}")
    lines.append(_table(header, rows))
    verdict = "All checks passed." if ok else "\\textbf{Some checks FAILED.}"
    lines.append(verdict)
    return "\n".join(lines) + "\n", ok


def _model_certificate(model: Model, T: int | None, today: str) -> tuple[str, bool]:
    from .verify import verify_model

    report = verify_model(model, T=T)
    oracle, grads = report.oracle, report.gradients
    rows = []
    for name in model.params:
        rows.append(
            [
                f"${_latex_name(name)}$",
                _digits(oracle.derivation_agreement[name])
                if name in oracle.derivation_agreement
                else "--",
                _digits(oracle.agreement[name]) if name in oracle.agreement else "--",
                _err(grads.errors.get(name)),
            ]
        )
    header = ["parameter", "derivation", "kernel", "finite diff."]
    sizes = ", ".join(f"${_latex_name(k)} = {v}$" for k, v in oracle.sizes.items())
    notes = " ".join(_note_tex(n) for n in report.notes)
    lines = [
        "\\subsection*{Verification certificate}",
        f"Checked on {today} with {_versions({})}.",
        "\\begin{itemize}",
        f"\\item \\emph{{derivation}} and \\emph{{kernel}}: significant digits in which the "
        f"derivation of each cell, chained as the model chains them and evaluated with "
        f"{oracle.digits}-digit arithmetic ({oracle.derivation_required:.0f} required), and the "
        f"generated float64 kernel ({oracle.required:.0f} required) agree with "
        f"\\texttt{{sympy.diff}} applied node by node to the unrolled model ({sizes}, "
        f"$T = {oracle.T}$).",
        f"\\item \\emph{{finite diff.}}: the kernel's gradient against central finite "
        f"differences (step $10^{{-6}}$, relative error, tolerance $10^{{-6}}$ plus the "
        f"rounding floor). {notes}",
        "\\item Forward mode: a composed model is compiled in reverse mode only.",
        "\\end{itemize}",
        _table(header, rows),
        "All checks passed." if report.ok else "\\textbf{Some checks FAILED.}",
    ]
    return "\n".join(lines) + "\n", report.ok


# ----- the document -----


def _notation_sentence(notation: str) -> str:
    if notation == "report":
        return (
            "Notation as in the report: vectors are bold, $\\mathbf{h}^{(t)}$ is the state at "
            "step $t$, $\\nabla_{q} L$ the gradient of the total loss $L$ with respect to $q$, "
            "$\\circ$ the elementwise product, $\\mathbf{1}$ the vector of ones and "
            "$[\\mathbf{a}]_{k:l}$ rows $k$ to $l$ of $\\mathbf{a}$ (counted from 1, both "
            "included)."
        )
    return (
        "Notation as in the slides~\\cite{suga2023}: vectors are kets $| h(t) \\rangle$, their "
        "transposes bras $\\langle h(t) |$, and $\\langle a | b \\rangle$ the inner product; "
        "$\\nabla_{q} L$ is the gradient of the total loss $L$ with respect to $q$, $\\circ$ "
        "the elementwise product, $\\mathbf{1}$ the vector of ones and $[a]_{k:l}$ rows $k$ "
        "to $l$ of $a$ (counted from 1, both included)."
    )


_NUMBERS = (
    "Equations are numbered in this document's own order, as rnnsym prints them. The report "
    "is a report on recurrent networks after Goodfellow, Bengio and "
    "Courville~\\cite{goodfellow2016}, chapter~10; a line that \\emph{is} one of its equations "
    "carries that equation's number as a side note, [report eq.~($N$)]. No other number in "
    "this document is the report's."
)


def make_paper(
    obj,
    notation: str = "report",
    body_only: bool = False,
    verify: bool = True,
    T: int | None = None,
    braket_T: int = 3,
    today: str | None = None,
) -> Paper:
    """The document for a cell, a model or their derivation; see :func:`paper_document`."""
    if notation not in PAPER_NOTATIONS:
        raise ValueError(f"notation={notation!r}; expected one of {', '.join(PAPER_NOTATIONS)}")
    if isinstance(obj, Derivation):
        cell, derivation, model, model_derivation = obj.cell, obj, None, None
    elif isinstance(obj, Cell):
        cell, derivation, model, model_derivation = obj, derive(obj), None, None
    elif isinstance(obj, ModelDerivation):
        cell, derivation, model, model_derivation = None, None, obj.model, obj
    elif isinstance(obj, Model):
        cell, derivation, model, model_derivation = None, None, obj, obj.derive()
    elif isinstance(obj, NestedModel | NestedSeq2Seq):
        return _nested_paper(obj, notation, body_only, verify, T, today)
    else:
        raise TypeError(
            f"paper: expected an rnnsym.Cell, Model or their derivation, got "
            f"{type(obj).__name__} {obj!r}"
        )
    if today is None:
        today = datetime.now(timezone.utc).date().isoformat()
    name = (cell or model).name
    title = latex_text(name)
    out = _opening(name, title, notation, body_only, verify)
    what = "cell" if cell is not None else f"model ({latex_text(model.kind.replace('_', ' '))})"
    out.append(
        f"This is the derivation of back-propagation through time for the recurrent {what} "
        f"\\texttt{{{title}}}, derived symbolically by rnnsym {_version()} (gradients are "
        f"derived, not written by hand). {_NUMBERS} {_notation_sentence(notation)}\n"
    )
    ok = True
    if cell is not None:
        out.append("\\subsection*{Definition}")
        out.append(_definition(cell, notation))
        out.append(_cell_equations(derivation, notation, label_key("eq", name)))
        linearity = derivation.linear_states
        if linearity.linear:  # (a cell with no linear state gets no such section)
            out.append("\\subsection*{Linear recurrences}")
            out.append(linearity.latex(latex_notation(notation)))
        braket_text, form = _braket_section(cell, braket_T)
        out.append(braket_text)
        if verify:
            text, ok = _cell_certificate(cell, T, form, today)
            out.append(text)
    else:
        out.append("\\subsection*{Definition}")
        out.append(
            "The model is made of the cells below; each part's equations carry its letter "
            "(F forward layer, B backward layer, H head, E encoder, D decoder, L layer), and "
            "equations C chain their adjoints. A layer whose states feed the rest of the model "
            "gets the linear loss $\\sum_t {d_h^{(t)}}^{\\top} h^{(t)}$ of the "
            "slides~\\cite{suga2023}, with $d_h^{(t)}$ the adjoint the rest of the model hands "
            "back."
        )
        for role, part in model.parts.items():
            part_name = latex_text(part.cell.name)
            out.append(f"\\paragraph{{{role.capitalize()}: \\texttt{{{part_name}}}.}}")
            out.append(_definition(part.cell, notation))
        out.append("\\subsection*{Equations}")
        for role, block in model_derivation.latex_parts(notation=latex_notation(notation)):
            out.append(f"% {role}")
            out.append(block)
        if verify:
            text, ok = _model_certificate(model, T, today)
            out.append(text)
    if not verify:
        out.append(
            "\\subsection*{Verification}\nNo certificate: this document was made without "
            "verification (\\texttt{--no-verify}); \\texttt{rnnsym verify} or "
            "\\texttt{rnnsym paper} without that option adds it.\n"
        )
    return _closing(out, ok, body_only)


def _opening(name: str, title: str, notation: str, body_only: bool, verify: bool) -> list[str]:
    """The document's first lines: the comments saying where it comes from, then the preamble
    and title (or, with ``body_only``, a section heading)."""
    out = [
        f"% Generated by rnnsym {_version()} (rnnsym paper, {notation} notation): the derivation "
        f"of {name!r}.".replace("\n", " "),
        "% Regenerate it rather than edit it. Needs the LaTeX packages amsmath and amssymb.",
    ]
    if body_only:
        return [*out, f"\\section*{{Back-propagation through time for \\texttt{{{title}}}}}"]
    return out + [
        "\\documentclass{article}",
        "\\usepackage{amsmath,amssymb}",
        "\\allowdisplaybreaks",
        f"\\title{{Back-propagation through time for \\texttt{{{title}}}}}",
        f"\\author{{Derived{' and verified' if verify else ''} by rnnsym {_version()}}}",
        "\\date{}",
        "\\begin{document}",
        "\\maketitle",
    ]


def _closing(out: list[str], ok: bool, body_only: bool) -> Paper:
    """The document from its lines: with the bibliography and ``\\end{document}``; or, with
    ``body_only``, for pasting into a paper: its displays may break across pages (in a group,
    so the paper's own setting is untouched), and the paper has its own references, so the
    citations are written in the text."""
    if body_only:
        comments = [line for line in out if line.startswith("%")]
        tex = "\n".join([*comments, breakable("\n".join(out[len(comments) :]))])
        for key, (_, short) in _REFERENCES.items():
            tex = tex.replace(f"~\\cite{{{key}}}", f" ({short})")
        return Paper(tex, ok)
    return Paper("\n".join([*out, _BIBLIOGRAPHY, "\\end{document}"]) + "\n", ok)


def _nested_paper(model, notation, body_only, verify, T, today) -> Paper:
    """The document of a nested model: its layers, each cell's derivation, and finite
    differences of its kernel on a full and a padded batch."""
    from .models.nested import Both, CellLayer, Chain, Reversed

    if today is None:
        today = datetime.now(timezone.utc).date().isoformat()
    title = latex_text(model.name)

    def structure(layer) -> str:
        if isinstance(layer, CellLayer):
            return f"\\texttt{{{latex_text(layer.cell.name)}}}"
        if isinstance(layer, Reversed):
            return f"{structure(layer.layer)} run backwards in time"
        if isinstance(layer, Both):
            return (
                f"[{structure(layer.forward_layer)}; {structure(layer.backward_layer)}] "
                f"(outputs concatenated)"
            )
        assert isinstance(layer, Chain)
        return ", then ".join(structure(inner) for inner in layer.layers)

    out = _opening(model.name, title, notation, body_only, verify)
    if isinstance(model, NestedSeq2Seq) and model.slot[0] == "input":
        decoder = model.decoder
        layers = (
            f"a sequence to sequence model. Bottom first, its encoder's layers are "
            f"{structure(model.encoder)}; $C$ is the encoder's output at each input's own last "
            f"step. The decoder reads $[y^{{(t-1)}}; C]$ at every step (the target one step late, "
            f"$y^{{(0)}} = 0$); bottom first, its layers are {structure(decoder.body)}, and the "
            f"head \\texttt{{{latex_text(decoder.head.name)}}} reads the top one's output and has "
            f"the loss"
        )
    elif isinstance(model, NestedSeq2Seq):
        where, slot = model.slot
        how = "reads $C$ at every step" if where == "context" else "starts from $C$"
        layers = (
            f"a sequence to sequence model. Bottom first, its encoder's layers are "
            f"{structure(model.encoder)}; $C$ is the encoder's output at each input's own last "
            f"step, and the decoder \\texttt{{{latex_text(model.decoder.name)}}} {how} and has "
            f"the loss"
        )
    else:
        when = "at each sequence's last step" if model.last_only else "at each step"
        layers = (
            f"Bottom first, its layers are {structure(model.body)}; the head "
            f"\\texttt{{{latex_text(model.head.name)}}} reads the top layer's output {when} "
            f"and has the loss"
        )
    out.append(
        f"This is the derivation of back-propagation through time for the nested recurrent "
        f"model \\texttt{{{title}}}, derived symbolically by rnnsym {_version()} (gradients "
        f"are derived, not written by hand). {layers}. Each cell is derived on its own, "
        f"with the linear loss $\\sum_t {{d_h^{{(t)}}}}^{{\\top}} h^{{(t)}}$ of the "
        f"slides~\\cite{{suga2023}} on its output state, $d_h^{{(t)}}$ the adjoint handed down "
        f"from the layer above. {_NUMBERS} {_notation_sentence(notation)}\n"
    )
    for name, derivation in model.derive().items():
        out.append(f"\\subsection*{{Cell \\texttt{{{latex_text(name)}}}}}")
        out.append(_definition(derivation.cell, notation))
        out.append(_cell_equations(derivation, notation, label_key("eq", name)))
    ok = True
    if verify:
        from .verify.nested import nested_finite_differences, nested_oracle

        steps = T or 4
        (_, full), (lengths, padded) = nested_finite_differences(model, steps)
        reports = [full, padded]

        oracle = nested_oracle(model, T=min(steps, 3))
        ok = oracle.ok and all(r.ok for r in reports)
        rows = [
            [
                f"${_latex_name(n)}$",
                _digits(oracle.agreement[n]),
                _err(reports[0].errors.get(n)),
                _err(reports[1].errors.get(n)),
            ]
            for n in model.params
        ]
        out += [
            "\\subsection*{Verification certificate}",
            f"Checked on {today} with {_versions({})}. \\emph{{oracle}}: significant digits "
            f"in which the generated float64 kernel ({oracle.required:.0f} required) agrees with "
            f"\\texttt{{sympy.diff}} applied node by node to the whole model unrolled "
            f"($T = {oracle.T}$, every size {oracle.sizes['size']}, evaluated at "
            f"{oracle.digits} digits). \\emph{{full batch}}, \\emph{{padded batch}}: the "
            f"kernel's gradient against central finite differences (step $10^{{-6}}$, relative "
            f"error, tolerance $10^{{-6}}$ plus the rounding floor), $T = {steps}$, $B = 2$, "
            f"the padded batch with lengths {_lengths_tex(lengths)}.",
            _table(["parameter", "oracle", "full batch", "padded batch"], rows),
            "All checks passed." if ok else "\\textbf{Some checks FAILED.}",
        ]
    else:
        out.append(
            "\\subsection*{Verification}\nNo certificate: this document was made without "
            "verification (\\texttt{--no-verify}).\n"
        )
    return _closing(out, ok, body_only)


def _lengths_tex(lengths) -> str:
    """The lengths of a padded batch in the certificate: $6, 4$, or inputs and outputs."""
    if isinstance(lengths, tuple):
        inputs, outputs = lengths
        return f"${inputs[0]}, {inputs[1]}$ (inputs) and ${outputs[0]}, {outputs[1]}$ (outputs)"
    return f"${lengths[0]}, {lengths[1]}$"


def paper_document(
    derivation_or_model,
    notation: str = "report",
    body_only: bool = False,
    verify: bool = True,
    T: int | None = None,
    braket_T: int = 3,
    today: str | None = None,
) -> str:
    """A standalone LaTeX document (article class, amsmath and amssymb) for a cell, a composed
    model or their derivation: definition, forward equations, backward recurrence, every
    gradient, the bra-ket form where the cell has one, and a verification certificate.

    ``notation``: "report" (bold vectors, ∇ notation) or "braket" (the slides' kets);
    ``body_only`` leaves out the preamble, for pasting into a document that loads amsmath and
    amssymb; ``verify=False`` leaves out the certificate; ``T`` is the scalar oracle's number
    of steps; ``braket_T`` the bra-ket form's; ``today`` the certificate's date (default: today,
    UTC).
    """
    return make_paper(derivation_or_model, notation, body_only, verify, T, braket_T, today).tex
