"""Derivations as readable text and as LaTeX, in the report's notation.

Symbols carry their time step: h⁽ᵗ⁻¹⁾ for ``h.prev``, ∇_{h⁽ᵗ⁾}L for the adjoint ``g_h``, and the
step-(t+1) quantities of the backward recurrence as h⁽ᵗ⁺¹⁾. Parameters are shared over time and
print bare. ``∘`` is the elementwise (Hadamard) product.
"""

from __future__ import annotations

from sympy import HadamardProduct, MatAdd, MatrixSymbol
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from .ops import coeff_and_factors, signed_terms

__all__ = ["derivation_text", "derivation_latex", "TextPrinter", "DerivationLatexPrinter"]

_SUP = {"t": "ᵗ", "-": "⁻", "+": "⁺", "1": "¹", "(": "⁽", ")": "⁾"}


def _time_tables(cell) -> tuple[dict, dict]:
    text, tex = {"L": "L⁽ᵗ⁾"}, {"L": "L^{(t)}"}
    steps = {"": "(t)", "_prev": "(t-1)", "_next": "(t+1)"}

    def sup(s: str) -> str:
        return "".join(_SUP[c] for c in s)

    timed = [v for v in cell._vars.values() if v.kind != "param"]
    for var in timed:
        for suffix, step in steps.items():
            if suffix == "_prev" and var.kind != "state":
                continue
            name = var.name + suffix
            text[name] = f"{var.name}{sup(step)}"
            tex[name] = f"{_latex_name(var.name)}^{{{step}}}"
            if var.kind in ("state", "output", "intermediate"):
                text[f"g_{name}"] = f"∇_{{{text[name]}}}L"
                tex[f"g_{name}"] = rf"\nabla_{{{tex[name]}}} L"
    for name, target in cell.fed_back.items():  # y.prev: y(t-1)
        text[name] = f"{target}{sup('(t-1)')}"
        tex[name] = f"{_latex_name(target)}^{{(t-1)}}"
    for name in cell.context_inputs:  # one value for the whole sequence
        text[name] = name
        tex[name] = _latex_name(name)
    for name in cell.params:
        text[name] = name
        tex[name] = _latex_name(name)
    return text, tex


def _latex_name(name: str) -> str:
    head, _, tail = name.partition("_")
    if len(head) > 1:
        head = rf"\mathrm{{{head}}}"  # a word, not a product of letters
    return f"{head}_{{{tail}}}" if tail else head


class _SumsAndProducts:
    """Sums with proper minus signs and products by juxtaposition, shared by both printers."""

    MINUS = "-"

    def _factor(self, expr) -> str:
        raise NotImplementedError

    def _print_MatMul(self, expr) -> str:
        coeff, factors = coeff_and_factors(expr)
        body = " ".join(self._factor(f) for f in factors)
        if coeff == 1:
            return body
        if coeff == -1:
            return f"{self.MINUS}{body}"
        return f"{self._print(coeff)} {body}"

    def _print_MatAdd(self, expr) -> str:
        out = []
        for i, (negative, term) in enumerate(signed_terms(expr)):
            text = self._print(term)
            if negative:
                out.append(f" {self.MINUS} {text}" if i else f"{self.MINUS}{text}")
            else:
                out.append(f" + {text}" if i else text)
        return "".join(out)


class TextPrinter(_SumsAndProducts, StrPrinter):
    """Unicode text: Wᵀ, ∘, h⁽ᵗ⁻¹⁾, ∇_{h⁽ᵗ⁾}L."""

    MINUS = "−"

    def __init__(self, names: dict[str, str]):
        super().__init__()
        self.names = names

    def _print_MatrixSymbol(self, expr) -> str:
        return self.names.get(expr.name, expr.name)

    def _factor(self, expr) -> str:
        return self._paren(expr)

    def _paren(self, expr) -> str:
        text = self._print(expr)
        simple = isinstance(expr, MatrixSymbol) or type(expr).__name__ in (
            "Apply",
            "OneMatrix",
            "Concat",
            "Slice",
            "Transpose",
            "LogSumExp",
            "Softmax",
        )
        simple = simple or (
            type(expr).__name__ == "Transpose" and isinstance(expr.arg, MatrixSymbol)
        )
        return text if simple else f"({text})"

    def _print_OneMatrix(self, expr) -> str:
        return "1"

    def _print_ZeroMatrix(self, expr) -> str:
        return "0"

    def _print_Identity(self, expr) -> str:
        return "I"

    def _print_Transpose(self, expr) -> str:
        return f"{self._paren(expr.arg)}ᵀ"

    def _print_HadamardProduct(self, expr) -> str:
        return " ∘ ".join(self._paren(a) for a in expr.args)

    def _print_Rational(self, expr) -> str:
        return "½" if (expr.p, expr.q) == (1, 2) else f"{expr.p}/{expr.q}"

    def _print_Apply(self, expr) -> str:
        return f"{expr.name}({self._print(expr.arg)})"

    def _print_Slice(self, expr) -> str:
        arg, start, stop = expr.args
        return f"{self._paren(arg)}[{self._print(start)}:{self._print(stop)}]"

    def _print_Mul(self, expr) -> str:
        # sizes such as 2*n print as 2n
        return "".join(self._print(a) for a in expr.args)


class DerivationLatexPrinter(_SumsAndProducts, LatexPrinter):
    """LaTeX with time-stepped symbols and ∘ for the Hadamard product."""

    def __init__(self, names: dict[str, str]):
        super().__init__()
        self.names = names

    def _print_MatrixSymbol(self, expr) -> str:
        return self.names.get(expr.name, expr.name)

    def _print_OneMatrix(self, expr) -> str:
        return r"\mathbf{1}"

    def _factor(self, expr) -> str:
        text = self._print(expr)
        if isinstance(expr, (MatAdd, HadamardProduct)):
            return rf"\left({text}\right)"
        return text

    def _print_Transpose(self, expr) -> str:
        arg = expr.arg
        if isinstance(arg, MatrixSymbol):
            return rf"{{{self._print(arg)}}}^{{\top}}"
        return rf"\left({self._print(arg)}\right)^{{\top}}"

    def _print_HadamardProduct(self, expr) -> str:
        return r" \circ ".join(self._factor(a) for a in expr.args)


def _rows(derivation) -> list[tuple[str, object, str, str]]:
    """(section, lhs, rhs, label) for every equation, in reading order."""
    rows = []
    n_forward = len(derivation.forward)
    for i, eq in enumerate(derivation.equations()):
        if isinstance(eq.lhs, str) and eq.lhs.startswith("grad:"):
            rows.append(("gradient", eq.lhs[5:], eq.rhs, eq.label))
        else:
            rows.append(("forward" if i < n_forward else "backward", eq.lhs, eq.rhs, eq.label))
    return rows


_TITLES = {
    "forward": "Forward step, t = 1..T (h(0) given, zero by default)",
    "backward": "Backward recurrence, t = T..1 (step T+1 terms are zero)",
    "gradient": "Gradients, summed over t (and over the batch)",
}


_TITLES_NO_STATE = {
    **_TITLES,
    "forward": "Step t, every t at once (no state: the steps decouple)",
    "backward": "Adjoints at step t: no recurrence, nothing flows from step t+1",
}


def derivation_text(derivation) -> str:
    """The derivation as aligned Unicode text."""
    titles = dict(_TITLES) if derivation.cell.states else _TITLES_NO_STATE
    if derivation.cell.states:  # name the cell's own states: h(0), or o(0) for Fig. 4
        initial = ", ".join(f"{n}(0)" for n in derivation.cell.states)
        titles["forward"] = titles["forward"].replace("h(0)", initial)
    names, _ = _time_tables(derivation.cell)
    printer = TextPrinter(names)
    lines: list[str] = [f"Cell {derivation.cell.name!r}"]
    section = None
    body = []
    for sect, lhs, rhs, label in _rows(derivation):
        if sect == "gradient":
            left = f"∇_{lhs} L = Σ_t"
        else:
            left = printer.doprint(lhs)
        body.append((sect, left, printer.doprint(rhs), label))
    width = max(len(left) for _, left, _, _ in body)
    for sect, left, right, label in body:
        if sect != section:
            lines.append("")
            lines.append(titles[sect])
            section = sect
        tag = f"    [{label}]" if label else ""
        lines.append(
            f"  {left.rjust(width)} {'=' if sect != 'gradient' else ''}"
            f"{' ' if sect != 'gradient' else ''}{right}{tag}".replace("  =", " =")
        )
    return "\n".join(lines)


def derivation_latex(derivation) -> str:
    """The derivation as a LaTeX ``align*`` environment."""
    _, names = _time_tables(derivation.cell)
    printer = DerivationLatexPrinter(names)
    out = [r"\begin{align*}"]
    rows = _rows(derivation)
    for i, (sect, lhs, rhs, label) in enumerate(rows):
        if sect == "gradient":
            left = rf"\nabla_{{{_latex_name(lhs)}}} L &= \sum_{{t}} "
            right = printer.doprint(rhs)
            if isinstance(rhs, MatAdd):
                right = rf"\left({right}\right)"
        else:
            left = f"{printer.doprint(lhs)} &= "
            right = printer.doprint(rhs)
        tag = rf" && \text{{{label}}}" if label else ""
        end = r" \\" if i < len(rows) - 1 else ""
        out.append(f"  {left}{right}{tag}{end}")
    out.append(r"\end{align*}")
    return "\n".join(out)
