"""The sequence-space derivation as text and as LaTeX, in the lecture slides' notation.

Bras and kets are printed where a vector ends a product (``W |h(1)⟩``) or a transposed vector
starts one (``⟨d(3)| G(3)``); step symbols keep their step in parentheses, as the slides write
them: x(t), h(t−1), J_h(t), G(t), δ_t(τ).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sympy as sp
from sympy import MatAdd, MatrixSymbol, Transpose

from ..ir.ops import coeff_and_factors, signed_terms
from ..printing import TEXT_WIDTH_PT, _latex_name, display_width, join_bra_ket
from .symbols import EPSILON as EPS

if TYPE_CHECKING:
    from .form import SequenceForm

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
        from ..printing import TextPrinter

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
    MINUS, IDENTITY, ONES = "-", "I", r"\mathbf{1}"

    def __init__(self):
        from ..printing import DerivationLatexPrinter

        self._fallback = DerivationLatexPrinter({})

    def name(self, symbol: MatrixSymbol) -> str:
        base, t = _split(symbol.name)
        step = ""
        if t is not None:
            step = "(" + t.replace("−", "-").replace("τ", r"\tau ").strip() + ")"
        if base.startswith("ū_"):
            return rf"\bar{{u}}_{{{_latex_name(base[2:])}}}{step}"
        if base.startswith("g_"):
            return rf"\nabla_{{{_latex_name(base[2:])}{step}}} L"
        if base.startswith("δ_θ"):
            return rf"\delta_\theta {_latex_name(base[3:])}{step}"
        if base.startswith("δ_"):  # error bras δ_3(1), parts of the adjoint δ_c(τ)
            rest = base[2:] if base[2:].isdigit() else _latex_name(base[2:])
            return rf"\delta_{{{rest}}}{step}"
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


@dataclass
class Broken:
    """A right-hand side that may be broken over lines: ``prefix chunk chunk … suffix``.

    Each chunk after the first carries its own leading `` + `` or `` − ``; the LaTeX printer
    breaks between chunks where the line would be too wide, the text printer never breaks.
    """

    prefix: str
    chunks: list[str]
    suffix: str = ""

    def joined(self) -> str:
        return self.prefix + "".join(self.chunks) + self.suffix


class _Notation:
    """The symbols of the sequence-space derivation, in text or in LaTeX."""

    def __init__(self, p: _BraKet, latex: bool):
        self.p, self.latex = p, latex
        self.eps = r"\epsilon" if latex else "ε"
        self.delta = r"\delta" if latex else "δ"
        self.top = r"^{\top}" if latex else "ᵀ"
        self.inv = "^{-1}" if latex else "⁻¹"
        self.diag = r"\operatorname{diag}" if latex else "diag"
        self.open, self.close = (r"\bigl(", r"\bigr)") if latex else ("(", ")")

    def pick(self, text: str, tex: str) -> str:
        return tex if self.latex else text

    def bb(self, s: str) -> str:
        if self.latex:
            return rf"\mathbb{{{s}}}"
        return {"J": "𝕁", "G": "𝔾", "S": "𝕊", "I": "𝕀", "A": "𝔸"}[s]

    def sub(self, s: str) -> str:
        return f"_{{{s}}}" if self.latex else f"_{s}"

    def sum(self, below: str, above=None) -> str:
        if self.latex:
            top = f"^{{{above}}}" if above is not None else ""
            return rf"\sum_{{{below}}}{top}"
        return f"Σ_{{{below}..{above}}}" if above is not None else f"Σ_{{{below}}}"

    def group(self, text: str) -> str:
        return rf"\left({text}\right)" if self.latex else f"({text})"

    def tuple_of(self, items: list[str]) -> str:
        return self.group(", ".join(items)) + self.top

    def column(self, items: list[str]) -> str:
        if self.latex:
            return r"\begin{pmatrix} " + r" \\ ".join(items) + r" \end{pmatrix}"
        return "(" + "; ".join(items) + ")"

    def matrix(self, rows: list[list[str]]) -> str:
        if self.latex:
            body = r" \\ ".join(" & ".join(r) for r in rows)
            return rf"\begin{{pmatrix}} {body} \end{{pmatrix}}"
        return "[" + "; ".join("  ".join(r) for r in rows) + "]"

    def partial(self, top: str, bottom: str) -> str:
        if self.latex:
            return rf"\partial {top} / \partial {bottom}"
        return f"∂{top}/∂{bottom}"

    def shift(self, T: int) -> str:
        return self.matrix([["I" if i == j + 1 else "0" for j in range(T)] for i in range(T)])

    def diag_of(self, items: list[str]) -> str:
        return f"{self.diag}(" + ", ".join(items) + ")"

    def chunks(self, expr) -> Broken:
        """``expr`` as chunks: the terms of a sum, or of the sum inside ``c (…)``."""
        p = self.p
        coeff, factors = coeff_and_factors(expr)
        prefix = suffix = ""
        inner = expr
        if isinstance(expr, sp.MatMul) and len(factors) == 1 and isinstance(factors[0], MatAdd):
            number = p.MINUS if coeff == -1 else p.number(coeff)
            prefix, inner, suffix = f"{number} {self.open}", factors[0], self.close
        if not isinstance(inner, MatAdd):
            return Broken(p.term(expr), [])
        return Broken(
            prefix, _signed(p, [(neg, p.term(t)) for neg, t in signed_terms(inner)]), suffix
        )


def _signed(p: _BraKet, terms: list[tuple[bool, str]]) -> list[str]:
    """Terms as chunks with their signs: ``a``, `` + b``, `` − c``."""
    out = []
    for i, (negative, text) in enumerate(terms):
        if i == 0:
            out.append(f"{p.MINUS}{text}" if negative else text)
        else:
            out.append(f" {p.MINUS} {text}" if negative else f" + {text}")
    return out


Rows = list[tuple["str | None", "str | Broken"]]  # lhs None: a remark


def _lines(form: SequenceForm, p: _BraKet, latex: bool) -> list[tuple[str, Rows]]:
    """Sections (title, rows of (lhs, rhs)) printed by ``p``; a title is text with its
    mathematics in $…$ (LaTeX) or plain Unicode (text)."""
    N = _Notation(p, latex)
    pick = N.pick
    T, steps = form.T, range(1, form.T + 1)
    bb, sub = N.bb, N.sub
    bra, ket, name = p.bra, p.ket, p.name
    t, tau = sp.Symbol("t"), sp.Symbol("τ")
    k, n = form.ket_name, form.n
    slides = form.slides

    def step(base: str, at) -> str:
        return name(form.step(base, at, (1, 1)))

    h_t, h_prev, h_tau_prev = step(k, t), step(k, t - 1), step(k, tau - 1)
    h_tau = step(k, tau)
    tau_text = pick("τ", r"\tau")
    cite = "(Suga 2023)"
    sections: list = []

    # ----- kets -----
    kets: Rows = []
    if slides:
        kets.append((ket("x"), N.tuple_of([name(s) for s in form.x_steps])))
    kets.append((ket(k), N.tuple_of([name(s) for s in form.h_steps[1:]])))
    shifted = N.tuple_of([name(s) for s in form.h_steps[:-1]])
    kets.append((ket(h_prev), f"{bb('S')}{ket(k)} + {ket(name(form.h_steps[0]))} = {shifted}"))
    if form.multi:
        kets.append((ket(h_t), N.column([ket(step(s, t)) for s, _ in form.states])))
    sections.append((f"Kets over the whole sequence {cite}", kets))

    # ----- operators, the recurrence, G(t) -----
    ops: Rows = []
    Jx, Jh = f"{bb('J')}{sub('x')}", f"{bb('J')}{sub('h')}"
    if slides:
        s = slides
        ops.append((Jx, N.diag_of([name(J) for J in form.Jx_steps])))
        ops.append((Jh, N.diag_of([name(J) for J in form.Jh_steps])))
        ops.append((bb("S"), N.shift(T)))
        sections.append((f"Operators over time {cite}", ops))

        act = form.cell.updates[form.state_name].expr.activation
        sigma = act.latex if latex else act.name
        sigma_prime = pick(f"{sigma}′", f"{sigma}'")
        biases = [name(MatrixSymbol(b, 1, 1)) for b in s.biases]
        bias_ket = "".join(f" + {ket(b)}" for b in biases)
        if latex:
            m_bias = "".join(rf" + \langle m | {b} \rangle" for b in biases)
            arg = rf"\langle m | {Jx} | x \rangle + \langle m | {Jh} | {h_prev} \rangle{m_bias}"
            sum_m = rf"\sum_{{m=1}}^{{{sp.latex(n * T)}}}"
            comp = rf"{sum_m} | m \rangle\, {sigma}\left({arg}\right)"
            g_comp = rf"{sum_m} | m \rangle\, {sigma_prime}\left({arg}\right) \langle m |"
        else:
            m_bias = "".join(f" + ⟨m|{b}⟩" for b in biases)
            arg = f"⟨m|{Jx}|x⟩ + ⟨m|{Jh}|{h_prev}⟩{m_bias}"
            nT = str(n * T).replace("*", "")
            comp = f"Σ_{{m=1..{nT}}} |m⟩ {sigma}({arg})"
            g_comp = f"Σ_{{m=1..{nT}}} |m⟩ {sigma_prime}({arg}) ⟨m|"
        rec: Rows = [
            (ket(k), f"{sigma}({Jx} {ket('x')} + {Jh} {ket(h_prev)}{bias_ket})"),
            ("", comp),
            (bb("G"), g_comp),
            ("", N.diag_of([name(G) for G in form.G_steps])),
            ("G(t)", N.diag_of([p.term(form.G_definition(t))])),
        ]
        title = pick(
            "The recurrence component by component (σ elementwise), and 𝔾, which is diagonal",
            r"The recurrence component by component ($\sigma$ elementwise), and "
            r"$\mathbb{G}$, which is diagonal",
        )
        sections.append((title, rec))
    else:
        if form.multi:
            names = [s for s, _ in form.states]
            rows = [[N.partial(step(a, t), step(b, t - 1)) for b in names] for a in names]
            ops.append(("A(t)", N.partial(h_t, h_prev)))
            ops.append(("", N.matrix(rows)))
            u = N.column([ket(step(form.seeds[s].name, t)) for s in names])
            ops.append((ket("u(t)"), u))
            for q, total in form.totals.items():
                ops.append((step(total.name, t), N.chunks(form.at(form.total_defs[q], t))))
            for s in names:
                lhs = f"[A(t){N.top} {ket('u(t)')}]{sub(name(MatrixSymbol(s, 1, 1)))}"
                ops.append((lhs, N.chunks(form.transition_action(t, s))))
        else:
            ops.append(("A(t)", N.partial(h_t, h_prev)))
            g = ket(step(f"g_{form.state_name}", t))
            for q, total in form.totals.items():
                ops.append((step(total.name, t), N.chunks(form.at(form.total_defs[q], t))))
            ops.append((f"A(t){N.top} {g}", N.chunks(form.transition_action(t))))
        ops.append((bb("A"), N.diag_of([name(A) for A in form.A_steps])))
        ops.append((bb("S"), N.shift(T)))
        title = pick(
            f"Operators over time (general form: A(t) = ∂{h_t}/∂{h_prev})",
            rf"Operators over time (general form: $A(t) = \partial {h_t}/\partial {h_prev}$)",
        )
        sections.append((title, ops))

    # ----- the loss -----
    loss: Rows = []
    delta_L = pick("δL", r"\delta L")
    varied = f"{N.sum('t=1', T)} " + pick(f"⟨d(t)|δ{h_t}⟩", rf"\langle d(t) | \delta {h_t} \rangle")
    if form.is_linear_loss():
        loss.append(
            ("L", f"{N.sum('t=1', T)} " + pick(f"⟨d(t)|{h_t}⟩", rf"\langle d(t) | {h_t} \rangle"))
        )
        loss.append((delta_L, varied))
        title = pick(
            "Loss, linear in the states as in the slides",
            "Loss, linear in the states as in the slides",
        )
    else:
        loss.append((delta_L, varied))
        if form.multi:
            comps = [p.term(form.d_definition(t, s)) for s, _ in form.states]
            loss.append((ket("d(t)"), N.column(comps)))
        else:
            loss.append((ket("d(t)"), N.chunks(form.d_definition(t))))
        title = pick(
            f"Loss, through the direct weights d(t) = ∂L(t)/∂{h_t}",
            rf"Loss, through the direct weights $d(t) = \partial L(t)/\partial {h_t}$",
        )
    sections.append((title, loss))

    # ----- variations -----
    var: Rows = []
    if slides:
        for J, which in ((slides.J_x, "x"), (slides.J_h, "h")):
            dname = name(MatrixSymbol(f"δ{J}", 1, 1))
            blocks = N.diag_of([name(form._delta(J, i)) for i in steps])
            mn = pick(
                f"Σ_{{m,n}} |m⟩⟨n| {dname}^{{mn}}",
                rf"\sum_{{m,n}} | m \rangle \langle n |\, {dname}^{{mn}}",
            )
            var.append((f"{N.delta}{pick('', ' ')}{bb('J')}{sub(which)}", f"{blocks} = {mn}"))
    for i in steps:
        lhs = pick(f"δ|{step(k, i)}⟩", rf"\delta | {step(k, i)} \rangle")
        var.append((lhs, N.chunks(form.variation(i))))
    if not slides:
        remark = pick(
            f"δ_θ{h_tau} = (∂{h_tau}/∂θ) δθ: the step's own dependence on the weights, "
            f"{h_tau_prev} held",
            rf"$\delta_\theta {h_tau} = (\partial {h_tau}/\partial\theta)\,\delta\theta$: "
            rf"the step's own dependence on the weights, ${h_tau_prev}$ held",
        )
        var.append((None, remark))
    title = (
        f"Variation of the weights and of the state {cite}" if slides else "Variation of the state"
    )
    sections.append((title, var))

    # ----- error bras -----
    bras: Rows = []
    for i in steps:
        for j in range(i, 0, -1):
            lhs = bra(pick(f"δ_{i}({j})", rf"\delta_{{{i}}}({j})"))
            bras.append((lhs, p.term(form.error_bra(i, j))))
    sections.append(
        (
            pick(
                "Error bras ⟨δ_t(τ)|, τ ≤ t", r"Error bras $\langle\delta_t(\tau)|$, $\tau \le t$"
            ),
            bras,
        )
    )

    # ----- the chain -----
    chain: Rows = []
    d_h = pick(f"δ⟨d(t)|{h_t}⟩", rf"\delta \langle d(t) | {h_t} \rangle")
    dt = pick("δ_t(τ)", r"\delta_t(\tau)")
    sum_tau = N.sum(pick("τ≤t", r"\tau \le t"))
    if slides:
        s = slides
        vectors = [(s.J_x, pick("x(τ)", r"x(\tau)")), (s.J_h, h_tau_prev)]
        terms, comps = [], []
        for J, v in vectors:
            dJ = name(form._delta(J, tau))
            terms.append(f"{bra(dt)} {dJ} {ket(v)}")
            comps.append(
                pick(
                    f"⟨{dt}|m⟩⟨n|{v}⟩ {dJ}^{{mn}}",
                    rf"\langle {dt} | m \rangle \langle n | {v} \rangle\, {dJ}^{{mn}}",
                )
            )
        for b in s.biases:
            db = name(form._delta(b, tau))
            terms.append(pick(f"⟨{dt}|{db}⟩", rf"\langle {dt} | {db} \rangle"))
            comps.append(pick(f"⟨{dt}|m⟩ {db}^{{m}}", rf"\langle {dt} | m \rangle\, {db}^{{m}}"))
        chain.append(
            (d_h, Broken(f"{sum_tau} {N.open}", _signed(p, [(False, x) for x in terms]), N.close))
        )
        mn_sum = N.sum("m,n")
        chain.append(
            (
                "",
                Broken(
                    f"{mn_sum} {sum_tau} {N.open}", _signed(p, [(False, x) for x in comps]), N.close
                ),
            )
        )
        explicit = []
        for j in range(1, T + 1):
            b = p.term(form.error_bra(T, j))
            for J, v in ((s.J_x, form.x_steps[j - 1]), (s.J_h, form.h_steps[j - 1])):
                explicit.append(_join(b, name(form._delta(J, j)), ket(name(v))))
            explicit.extend(_join(b, ket(name(form._delta(c, j)))) for c in s.biases)
    else:
        source = step(f"δ_θ{k}", tau)
        chain.append(
            (d_h, f"{sum_tau} " + pick(f"⟨{dt}|{source}⟩", rf"\langle {dt} | {source} \rangle"))
        )
        explicit = [_join(p.term(form.error_bra(T, j)), ket(step(f"δ_θ{k}", j))) for j in steps]
    lhs_T = pick(f"δ⟨d({T})|{step(k, T)}⟩", rf"\delta \langle d({T}) | {step(k, T)} \rangle")
    chain.append((lhs_T, Broken("", _signed(p, [(False, x) for x in explicit]))))
    source = f" {cite}" if slides else ""
    title = pick(
        f"The chain: the variation of ⟨d(t)|{h_t}⟩ through the error bras{source}",
        rf"The chain: the variation of $\langle d(t)|{h_t}\rangle$ through the error bras" + source,
    )
    sections.append((title, chain))

    # ----- update rules -----
    rules: Rows = []
    eps = N.eps
    if slides:
        vec = {slides.J_x: pick("x(τ)", r"x(\tau)"), slides.J_h: h_tau_prev}
        vec |= {b: "" for b in slides.biases}
        for pname, rule in form.update_rules().items():
            delta = f"{N.delta}{pick('', ' ')}{name(MatrixSymbol(pname, 1, 1))}"
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
                    rules.append((f"{delta}({i + 1})", N.chunks(e)))
            else:
                rules.append((delta, N.chunks(rule)))
        title = pick(
            f"Update rules, learning rate ε {cite}",
            rf"Update rules, learning rate $\epsilon$ {cite}",
        )
    else:
        for pname in form.cell.params:
            pn = name(MatrixSymbol(pname, 1, 1))
            if form.tied:
                lhs = f"{N.delta}{pick('', ' ')}{pn}"
                tau_1 = pick("τ=1", r"\tau=1")
                prefix = f"{p.MINUS}{eps} {N.sum(tau_1, T)} "
            else:
                lhs = f"{N.delta}{pick('', ' ')}{pn}({tau_text})"
                prefix = f"{p.MINUS}{eps} "
            body = N.chunks(form.step_term(pname, tau))
            if body.chunks and not body.prefix:
                rules.append((lhs, Broken(prefix + N.open, body.chunks, N.close)))
            else:
                rules.append((lhs, Broken(prefix + body.prefix, body.chunks, body.suffix)))
        title = pick("Update rules, learning rate ε", r"Update rules, learning rate $\epsilon$")
        t_ge_tau = N.sum(pick("t≥τ", r"t \ge \tau"))
        delta_t_tau = pick("δ_t(τ)", r"\delta_t(\tau)")
        if form.multi:
            parts = ", ".join(bra(step(f"δ_{s}", tau)) for s, _ in form.states)
            sum_bras = f"{t_ge_tau} {bra(delta_t_tau)}"
            rules.insert(0, (bra(pick("δ(τ)", r"\delta(\tau)")), f"({parts}) = {sum_bras}"))
            where = pick("|u(τ)⟩ = |δ(τ)⟩", r"$|u(\tau)\rangle = |\delta(\tau)\rangle$")
        else:
            sum_kets = f"{t_ge_tau} {ket(delta_t_tau)}"
            rules.insert(0, (ket(pick("δ(τ)", r"\delta(\tau)")), sum_kets))
            g = step(f"g_{form.state_name}", tau)
            where = pick(f"{g} = |δ(τ)⟩", rf"${g} = |\delta(\tau)\rangle$")
        if form.totals:
            note = pick("ū(τ): the totals above at ", r"$\bar u(\tau)$: the totals above at ")
            rules.insert(1, (None, note + where))
    sections.append((title, rules))

    # ----- the closed form -----
    closed: Rows = []
    M = f"{bb('G')}{Jh}{bb('S')}" if slides else f"{bb('A')}{bb('S')}"
    I_minus_M = N.group(f"{bb('I')} {p.MINUS} {M}")
    closed.append((f"{I_minus_M}{N.inv}", f"{N.sum(f'k<{T}')} {N.group(M)}^k"))
    blocks = [[p.term(b) for b in row] for row in form.neumann_blocks()]
    matrix = N.matrix(blocks)
    if latex and _too_wide(matrix, rf"{I_minus_M}{N.inv}"):  # too wide for the page: block by block
        closed.append((None, "its blocks above the diagonal are 0"))
        for i, row in enumerate(blocks, start=1):
            for j, block in enumerate(row[:i], start=1):
                closed.append((rf"\bigl[{I_minus_M}{N.inv}\bigr]_{{{i}{j}}}", block))
    else:
        closed.append(("", matrix))
    tail = bb("G") if slides else ""
    closed.append((bra(N.delta), f"{bra('d')}{I_minus_M}{N.inv}{tail}"))
    for j, b in zip(steps, form.closed_form(), strict=True):
        rhs = N.chunks(b)
        if latex and _too_wide(rhs.joined(), bra("d")):  # nested too deep: Σ_{t≥τ}⟨δ_t(τ)|
            bras = [(False, p.term(form.error_bra(i, j))) for i in range(j, T + 1)]
            rhs = Broken("", _signed(p, bras))
        closed.append((bra(pick(f"δ({j})", rf"\delta({j})")), rhs))
    title = pick(
        f"Closed form: the inverse is a finite Neumann sum, 𝕊^{T} = 0",
        rf"Closed form: the inverse is a finite Neumann sum, $\mathbb{{S}}^{{{T}}} = 0$",
    )
    sections.append((title, closed))

    # ----- the backward recurrence -----
    rec2: Rows = []
    tau_bra = bra(pick("δ(τ)", r"\delta(\tau)"))
    nxt = bra(pick("δ(τ+1)", r"\delta(\tau+1)"))
    d_tau = bra(pick("d(τ)", r"d(\tau)"))
    if slides:
        jh = name(form.Jh_steps[0]) if form.tied else name(form.param(slides.J_h, tau + 1))
        rec2.append((tau_bra, N.group(f"{d_tau} + {nxt} {jh}") + pick(" G(τ)", r" G(\tau)")))
        title = pick(
            "Stepping τ down: the BPTT recurrence (⟨δ(τ)| = ∇_{a(τ)}L, a the pre-activation)",
            r"Stepping $\tau$ down: the BPTT recurrence ($\langle\delta(\tau)| = "
            r"\nabla_{a(\tau)}L$, $a$ the pre-activation)",
        )
    else:
        rec2.append((tau_bra, f"{d_tau} + {nxt} " + pick("A(τ+1)", r"A(\tau+1)")))
        title = pick(
            f"Stepping τ down: the BPTT recurrence (⟨δ(τ)| = ∇_{{{h_tau}}}L)",
            rf"Stepping $\tau$ down: the BPTT recurrence ($\langle\delta(\tau)| = "
            rf"\nabla_{{{h_tau}}}L$)",
        )
    rec2.append((bra(pick(f"δ({T + 1})", rf"\delta({T + 1})")), "0"))
    sections.append((title, rec2))
    return sections


def braket_text(form: SequenceForm) -> str:
    """The sequence-space derivation as aligned Unicode text."""
    p = BraketText()
    tied = "weights tied over time" if form.tied else "untied: every step has its own weights"
    kind = "slides form" if form.slides else "general form"
    if form.multi:
        kind += f", stacked state {form.ket_name}(t) = ({'; '.join(form.cell.states)})"
    out = [f"Sequence-space form of cell {form.cell.name!r}, T = {form.T} ({kind}; {tied})"]
    for title, rows in _lines(form, p, latex=False):
        out.append("")
        out.append(title)
        width = max(len(lhs) for lhs, _ in rows if lhs is not None)
        for lhs, rhs in rows:
            text = rhs.joined() if isinstance(rhs, Broken) else rhs
            if lhs is None:  # a remark
                out.append(f"  {' ' * width}   ({text})")
            else:
                out.append(f"  {lhs.rjust(width)} = {text}")
    return "\n".join(out)


# ----- LaTeX: one display per section, long right-hand sides broken -----


#: the width left for a right-hand side once its left-hand side and "=" are set: what
#: rnnsym.printing budgets for a display line (the article class's text width, less 10% for the
#: error of the width estimate)
def _too_wide(tex: str, lhs: str = "") -> bool:
    return display_width(tex) + (display_width(lhs) + 13.3 if lhs else 0.0) > TEXT_WIDTH_PT


def _join(*parts: str) -> str:
    """Bras, operators and kets side by side; a bra meeting a ket is one bracket: ⟨a|b⟩."""
    return join_bra_ket(" ".join(parts))


def _title_lines(title: str, column: str) -> list[str]:
    """A section title, in as many text rows as it takes to fit beside the first column."""
    words = re.findall(r"(?:\$[^$]*\$|[^\s$])+", title)  # inline math stays whole
    lines: list[str] = []
    for word in words:
        if lines and not _too_wide(rf"\text{{{lines[-1]} {word}}}", column):
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [title]


def _tex_rows(lhs: str, rhs, column: str = "") -> list[str]:
    """``lhs &= rhs``, broken into ``&\\quad …`` continuation lines where too wide."""
    if lhs is None:  # a remark
        return [rf"&\text{{{line}}}" for line in _title_lines(f"({rhs})", column)]
    if not isinstance(rhs, Broken):
        return [f"{lhs} &= {rhs}"]
    lines, current = [], rhs.prefix
    for chunk in rhs.chunks:
        if current.strip() and _too_wide(current + chunk, column or lhs):
            lines.append(current)
            current = chunk.lstrip()
        else:
            current += chunk
    lines.append(current + rhs.suffix)
    out = [f"{lhs} &= {lines[0]}"]
    out.extend(rf"&\quad {line}" for line in lines[1:])
    return out


def braket_latex(form: SequenceForm) -> str:
    """The sequence-space derivation as LaTeX: one ``align*`` display per section.

    Pastes into a document with amsmath and amssymb as is and renders in MathJax; long lines
    are broken so that nothing is wider than a 6.5in text width.
    """
    p = BraketLatex()
    blocks = []
    for title, rows in _lines(form, p, latex=True):
        # the align's first column is as wide as its widest left-hand side
        column = max((lhs for lhs, _ in rows if lhs), key=display_width, default="")
        body = [rf"  &\text{{{line}}}" for line in _title_lines(title, column)]
        for lhs, rhs in rows:
            body.extend(f"  {line}" for line in _tex_rows(lhs, rhs, column))
        blocks.append("\\begin{align*}\n" + " \\\\\n".join(body) + "\n\\end{align*}")
    return "\n".join(blocks)
