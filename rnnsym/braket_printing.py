"""The sequence-space derivation as text and as LaTeX, in the lecture slides' notation.

Bras and kets are printed where a vector ends a product (``W |h(1)⟩``) or a transposed vector
starts one (``⟨d(3)| G(3)``); step symbols keep their step in parentheses, as the slides write
them: x(t), h(t−1), J_h(t), G(t), δ_t(τ).
"""

from __future__ import annotations

import re

import sympy as sp
from sympy import MatAdd, MatrixSymbol, Transpose

from .braket import EPSILON as EPS
from .ops import coeff_and_factors, signed_terms
from .printing import _latex_name

__all__ = ["braket_text", "braket_latex"]

_STEP = re.compile(r"^(?P<base>.+?)\((?P<t>[^()]*)\)$")


def _split(name: str) -> tuple[str, str | None]:
    match = _STEP.match(name)
    if not match:
        return name, None
    return match.group("base"), match.group("t").replace("-", "−")


class _BraKet:
    """Products with bras and kets; sums with proper minus signs (shared by both printers)."""

    MINUS = "-"

    def name(self, symbol: MatrixSymbol) -> str:
        raise NotImplementedError

    def bra(self, text: str) -> str:
        raise NotImplementedError

    def ket(self, text: str) -> str:
        raise NotImplementedError

    def group(self, text: str) -> str:
        raise NotImplementedError

    def transposed(self, text: str) -> str:
        raise NotImplementedError

    def term(self, expr) -> str:
        if isinstance(expr, MatrixSymbol):
            if expr.name.startswith("δ(") or (
                expr.name.startswith("δ_") and not expr.name.startswith("δ_θ")
            ):
                return self.ket(self.name(expr))  # error kets |δ_t(τ)⟩, |δ(τ)⟩
            return self.name(expr)
        if isinstance(expr, Transpose) and isinstance(expr.arg, MatrixSymbol):
            if expr.arg.shape[1] == 1:
                return self.bra(self.name(expr.arg))
            return self.transposed(self.name(expr.arg))
        if isinstance(expr, sp.Identity):
            return self.IDENTITY
        if isinstance(expr, sp.ZeroMatrix):
            return "0"
        if isinstance(expr, sp.MatMul):
            return self.product(expr)
        if isinstance(expr, MatAdd):
            return self.sum(expr)
        if isinstance(expr, sp.HadamardProduct):
            return self.hadamard(expr)
        if isinstance(expr, sp.OneMatrix):
            return self.ONES
        return self.other(expr)

    def factor(self, expr, last: bool) -> str:
        if isinstance(expr, MatrixSymbol) and expr.shape[1] == 1 and last:
            return self.ket(self.name(expr))
        if isinstance(expr, (MatAdd, sp.HadamardProduct)):
            return self.group(self.term(expr))
        return self.term(expr)

    def product(self, expr) -> str:
        coeff, factors = coeff_and_factors(expr)
        body = " ".join(
            self.factor(f, i == len(factors) - 1 and len(factors) > 1)
            for i, f in enumerate(factors)
        )
        if coeff == 1:
            return body
        if coeff == -1:
            return f"{self.MINUS}{body}"
        return f"{self.number(coeff)} {body}"

    def number(self, c) -> str:
        return str(c)

    def sum(self, expr) -> str:
        out = []
        for i, (negative, term) in enumerate(signed_terms(expr)):
            text = self.term(term)
            if negative:
                out.append(f" {self.MINUS} {text}" if i else f"{self.MINUS}{text}")
            else:
                out.append(f" + {text}" if i else text)
        return "".join(out)

    def hadamard(self, expr) -> str:
        raise NotImplementedError

    def other(self, expr) -> str:
        raise NotImplementedError


class BraketText(_BraKet):
    MINUS, IDENTITY, ONES = "−", "I", "1"

    def __init__(self):
        from .printing import TextPrinter

        self._fallback = TextPrinter({})

    def name(self, symbol: MatrixSymbol) -> str:
        base, t = _split(symbol.name)
        if base.startswith("g_"):
            return f"∇_{{{base[2:]}({t})}}L" if t else f"∇_{base[2:]}L"
        return f"{base}({t})" if t is not None else base

    def bra(self, text: str) -> str:
        return f"⟨{text}|"

    def ket(self, text: str) -> str:
        return f"|{text}⟩"

    def group(self, text: str) -> str:
        return f"({text})"

    def transposed(self, text: str) -> str:
        return f"{text}ᵀ"

    def number(self, c) -> str:
        if c == -EPS:
            return "−ε"
        return "ε" if c == EPS else str(c).replace("epsilon", "ε")

    def hadamard(self, expr) -> str:
        return " ∘ ".join(self.factor(a, False) for a in expr.args)

    def other(self, expr) -> str:
        names = {s.name: self.name(s) for s in expr.atoms(MatrixSymbol)}
        self._fallback.names = names
        return self._fallback.doprint(expr)


class BraketLatex(_BraKet):
    MINUS, IDENTITY, ONES = "-", r"\mathbb{1}", r"\mathbf{1}"

    def __init__(self):
        from .printing import DerivationLatexPrinter

        self._fallback = DerivationLatexPrinter({})

    def name(self, symbol: MatrixSymbol) -> str:
        base, t = _split(symbol.name)
        step = f"({t.replace('−', '-')})" if t is not None else ""
        if base.startswith("g_"):
            return rf"\nabla_{{{_latex_name(base[2:])}{step}}} L"
        if base.startswith("δ_θ"):
            return rf"\delta_\theta {_latex_name(base[3:])}{step}"
        if base.startswith("δ_"):
            return rf"\delta_{{{base[2:]}}}{step}"
        if base.startswith("δ"):
            return rf"\delta {_latex_name(base[1:])}{step}"
        return f"{_latex_name(base)}{step}"

    def bra(self, text: str) -> str:
        return rf"\langle {text} |"

    def ket(self, text: str) -> str:
        return rf"| {text} \rangle"

    def group(self, text: str) -> str:
        return rf"\left({text}\right)"

    def transposed(self, text: str) -> str:
        return rf"{{{text}}}^{{\top}}"

    def number(self, c) -> str:
        return sp.latex(c)

    def hadamard(self, expr) -> str:
        return r" \circ ".join(self.factor(a, False) for a in expr.args)

    def other(self, expr) -> str:
        names = {s.name: self.name(s) for s in expr.atoms(MatrixSymbol)}
        self._fallback.names = names
        return self._fallback.doprint(expr)


def _lines(form, p: _BraKet, latex: bool) -> list[tuple[str, list[tuple[str, str]]]]:
    """Sections of (lhs, rhs) pairs, printed by ``p``."""
    T = form.T
    steps = range(1, T + 1)
    bb = (
        (lambda s: rf"\mathbb{{{s}}}")
        if latex
        else (lambda s: {"J": "𝕁", "G": "𝔾", "S": "𝕊", "I": "𝕀", "A": "𝔸"}[s])
    )
    sub = (lambda s: f"_{{{s}}}") if latex else (lambda s: f"_{s}")
    diag = r"\operatorname{diag}" if latex else "diag"
    bra = p.bra
    ket = p.ket
    inv = "^{-1}" if latex else "⁻¹"
    tuple_of = (
        (lambda items: r"\left(" + ", ".join(items) + r"\right)^{\top}")
        if latex
        else (lambda items: "(" + ", ".join(items) + ")ᵀ")
    )
    sum_t = (lambda lo: rf"\sum_{{t={lo}}}^{{{T}}}") if latex else (lambda lo: f"Σ_{{t={lo}..{T}}}")
    sections = []
    h = form.h_steps
    name = p.name
    h_prev = name(form.step(form.state_name, sp.Symbol("t") - 1, h[0].shape))
    kets = [
        (ket("h"), tuple_of([name(s) for s in h[1:]])),
        (
            ket(h_prev),
            f"{bb('S')}{ket('h')} + {ket(name(h[0]))} = " + tuple_of([name(s) for s in h[:-1]]),
        ),
    ]
    if form.slides:
        kets.insert(0, (ket("x"), tuple_of([name(s) for s in form.x_steps])))
    sections.append(("Kets over the whole sequence (slides §4)", kets))

    ops = []
    if form.slides:
        s = form.slides
        ops.append(
            (f"{bb('J')}{sub('x')}", f"{diag}(" + ", ".join(name(J) for J in form.Jx_steps) + ")")
        )
        ops.append(
            (f"{bb('J')}{sub('h')}", f"{diag}(" + ", ".join(name(J) for J in form.Jh_steps) + ")")
        )
        gdef = p.term(form.G_definition(sp.Symbol("t")))
        ops.append(("G(t)", f"{diag}({gdef})"))
        ops.append((bb("G"), f"{diag}(" + ", ".join(name(G) for G in form.G_steps) + ")"))
        act = form.cell.updates[form.state_name].expr.activation
        sigma = act.latex if latex else act.name
        bias = "".join(f" + {ket(b)}" for b in s.biases)
        ops.append(
            (
                ket("h"),
                f"{sigma}({bb('J')}{sub('x')} {ket('x')} + "
                f"{bb('J')}{sub('h')} {ket(h_prev)}{bias})",
            )
        )
    else:
        g = MatrixSymbol(f"g_{form.state_name}(t)", *h[0].shape)
        action = p.term(form.transition_action(sp.Symbol("t")))
        top = r"^{\top}" if latex else "ᵀ"
        ops.append((f"A(t){top} {ket(name(g))}", action))
        ops.append((bb("A"), f"{diag}(" + ", ".join(name(A) for A in form.A_steps) + ")"))
    rows = [["I" if i == j + 1 else "0" for j in range(T)] for i in range(T)]
    if latex:
        body = r" \\ ".join(" & ".join(r) for r in rows)
        ops.append((bb("S"), rf"\begin{{pmatrix}} {body} \end{{pmatrix}}"))
    else:
        ops.append((bb("S"), "[" + "; ".join(" ".join(r) for r in rows) + "]"))
    title = (
        "Operators over time (slides §4)"
        if form.slides
        else "Operators over time (general form: A(t) = ∂h(t)/∂h(t−1))"
    )
    sections.append((title, ops))

    loss = []
    d_def = p.term(form.d_definition(sp.Symbol("t")))
    loss.append(
        (
            r"\delta L" if latex else "δL",
            sum_t(1) + " " + bra("d(t)") + " δ" + ket("h(t)")
            if not latex
            else sum_t(1) + r" \langle d(t) | \delta h(t) \rangle",
        )
    )
    loss.append((ket("d(t)"), d_def))
    sections.append(("Loss, through the direct weights d(t) = ∂L(t)/∂h(t)", loss))

    var = []
    for t in steps:
        lhs = rf"\delta | h({t}) \rangle" if latex else f"δ|h({t})⟩"
        var.append((lhs, p.term(form.variation(t))))
    sections.append(("Variation of the state (slides §4)", var))

    bras = []
    for t in steps:
        for tau in range(t, 0, -1):
            lhs = bra(rf"\delta_{{{t}}}({tau})" if latex else f"δ_{t}({tau})")
            bras.append((lhs, p.term(form.error_bra(t, tau))))
    sections.append(("Error bras ⟨δ_t(τ)|, τ ≤ t", bras))

    rules = []
    eps = r"\epsilon" if latex else "ε"
    vec = {}
    if form.slides:
        s = form.slides
        vec = {s.J_x: r"x(\tau)" if latex else "x(τ)", s.J_h: r"h(\tau-1)" if latex else "h(τ−1)"}
        vec |= {b: "" for b in s.biases}
    for pname, rule in form.update_rules().items():
        lhs_name = name(MatrixSymbol(pname, 1, 1))
        delta = rf"\delta {lhs_name}" if latex else f"δ{lhs_name}"
        if pname in vec:
            index = "mn" if vec[pname] else "m"
            if latex:
                entry = rf" \langle n | {vec[pname]} \rangle" if vec[pname] else ""
                general = (
                    rf"-{eps} \sum_{{t=1}}^{{{T}}} \sum_{{\tau \le t}} "
                    rf"\langle \delta_t(\tau) | m \rangle{entry}"
                )
            else:
                entry = f"⟨n|{vec[pname]}⟩" if vec[pname] else ""
                general = f"−{eps} Σ_t Σ_{{τ≤t}} ⟨δ_t(τ)|m⟩{entry}"
            rules.append((f"{delta}^{{{index}}}", general))
        if isinstance(rule, list):
            for i, e in enumerate(rule):
                rules.append((f"{delta}({i + 1})", p.term(e)))
        else:
            rules.append((delta, p.term(rule)))
    where = "slides §4" if form.slides else "|δ(τ)⟩ = Σ_{t≥τ} |δ_t(τ)⟩"
    sections.append((f"Update rules, learning rate ε ({where})", rules))

    closed = []
    M = f"{bb('G')}{bb('J')}{sub('h')}{bb('S')}" if form.slides else f"{bb('A')}{bb('S')}"
    N = form.neumann_blocks()
    if latex:
        body = r" \\ ".join(" & ".join(p.term(b) for b in row) for row in N)
        closed.append(
            (
                rf"\left({bb('I')} - {M}\right){inv}",
                rf"\sum_{{k<{T}}} \left({M}\right)^k = \begin{{pmatrix}} {body} \end{{pmatrix}}",
            )
        )
    else:
        for i, row in enumerate(N):
            closed.append((f"[(𝕀 − {M})⁻¹]_{{{i + 1},·}}", "  ".join(p.term(b) for b in row)))
    tail = bb("G") if form.slides else ""
    closed.append(
        (
            bra(r"\delta" if latex else "δ"),
            f"{bra('d')}({bb('I')} - {M}){inv}{tail}" if latex else f"⟨d|(𝕀 − {M})⁻¹{tail}",
        )
    )
    for tau, b in zip(steps, form.closed_form(), strict=True):
        lhs = bra(rf"\delta({tau})" if latex else f"δ({tau})")
        closed.append((lhs, p.term(b)))
    sections.append((f"Closed form: the inverse is a finite Neumann sum, 𝕊^{T} = 0", closed))

    rec = []
    if form.slides:
        jh = name(form.Jh_steps[0]) if form.tied else "J_h(τ+1)"
        if latex:
            jh_tex = jh if form.tied else r"J_{h}(\tau+1)"
            rec.append(
                (
                    bra(r"\delta(\tau)"),
                    rf"\left(\langle d(\tau) | + \langle \delta(\tau+1) | {jh_tex}\right) G(\tau)",
                )
            )
        else:
            rec.append(("⟨δ(τ)|", f"(⟨d(τ)| + ⟨δ(τ+1)| {jh}) G(τ),   ⟨δ({T + 1})| = 0"))
    else:
        rec.append(
            (
                bra(r"\delta(\tau)") if latex else "⟨δ(τ)|",
                (
                    r"\langle d(\tau) | + \langle \delta(\tau+1) | A(\tau+1)"
                    if latex
                    else f"⟨d(τ)| + ⟨δ(τ+1)| A(τ+1),   ⟨δ({T + 1})| = 0"
                ),
            )
        )
    sections.append(("Stepping τ down: the BPTT recurrence, eq. (9)", rec))
    return sections


def braket_text(form) -> str:
    """The sequence-space derivation as aligned Unicode text."""
    p = BraketText()
    tied = "weights tied over time" if form.tied else "untied: every step has its own weights"
    kind = "slides form" if form.slides else "general form"
    out = [f"Sequence-space form of cell {form.cell.name!r}, T = {form.T} ({kind}; {tied})"]
    for title, rows in _lines(form, p, latex=False):
        out.append("")
        out.append(title)
        width = max(len(lhs) for lhs, _ in rows)
        for lhs, rhs in rows:
            out.append(f"  {lhs.rjust(width)} = {rhs}")
    return "\n".join(out)


_TEX_TITLE = {
    "§": r"\S",
    "τ": r"$\tau$",
    "≤": r"$\le$",
    "≥": r"$\ge$",
    "ε": r"$\epsilon$",
    "𝕊": r"$\mathbb{S}$",
    "∂": r"$\partial$",
    "⟨δ_t(τ)|": r"$\langle\delta_t(\tau)|$",
    "|δ(τ)⟩ = Σ_{t≥τ} |δ_t(τ)⟩": r"$|\delta(\tau)\rangle = \sum_{t\ge\tau}|\delta_t(\tau)\rangle$",
    "A(t) = ∂h(t)/∂h(t−1)": r"$A(t) = \partial h(t)/\partial h(t-1)$",
    "d(t) = ∂L(t)/∂h(t)": r"$d(t) = \partial L(t)/\partial h(t)$",
}


def _tex_title(title: str) -> str:
    """A section title for ``\\text{}``: its mathematics in $…$."""
    for plain in sorted(_TEX_TITLE, key=len, reverse=True):
        title = title.replace(plain, _TEX_TITLE[plain])
    return re.sub(r"\^(\d+)", r"$^{\1}$", title).replace("$$", "")


def braket_latex(form) -> str:
    """The sequence-space derivation as a LaTeX ``align*`` block."""
    p = BraketLatex()
    out = [r"\begin{align*}"]
    sections = _lines(form, p, latex=True)
    body = []
    for title, rows in sections:
        body.append(rf"  &\text{{{_tex_title(title)}}} \\")
        for lhs, rhs in rows:
            body.append(f"  {lhs} &= {rhs} \\\\")
    body[-1] = body[-1].removesuffix(" \\\\")
    out.extend(body)
    out.append(r"\end{align*}")
    return "\n".join(out)
