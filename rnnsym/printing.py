"""Derivations as readable text and as LaTeX, in the report's notation.

Symbols carry their time step: h⁽ᵗ⁻¹⁾ for ``h.prev``, ∇_{h⁽ᵗ⁾}L for the adjoint ``g_h``, and the
step-(t+1) quantities of the backward recurrence as h⁽ᵗ⁺¹⁾. Parameters are shared over time and
print bare. ``∘`` is the elementwise (Hadamard) product.

Equation numbers are the derivation's own: equation N is the N-th of
``Derivation.equations()``, printed "(N)" in text and ``\\tag{N}`` in LaTeX. A line that *is* an
equation of the report carries the report's number as a side note, "[report eq. (7)]".

LaTeX conventions: rows k to l of a stacked vector a (1-based, both included) print as
``[a^{(t)}]_{k:l}``, a single row k as ``[a^{(t)}]_{k}``; the vector of ones is
``\\mathbf{1}``. User names are escaped: no name a user gives becomes LaTeX code.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import sympy as sp
from sympy import HadamardProduct, MatAdd, MatMul, MatrixSymbol, Transpose
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from .ir.ops import coeff_and_factors, signed_terms

__all__ = [
    "derivation_text",
    "derivation_latex",
    "latex_rows",
    "align_block",
    "LatexRow",
    "KetLatexPrinter",
    "latex_printer",
    "NOTATIONS",
    "TextPrinter",
    "DerivationLatexPrinter",
    "latex_text",
    "label_key",
    "TEXT_WIDTH_PT",
    "display_width",
    "join_bra_ket",
    "breakable",
]

_SUP = {"t": "ᵗ", "-": "⁻", "+": "⁺", "1": "¹", "(": "⁽", ")": "⁾"}

# The width LaTeX's article class gives the text at 10pt (345pt), less 10% for the error of the
# width estimate below (measured with pdflatex on the built-in cells' lines over 150pt: real
# width / estimate between 0.87 and 1.09): displayed lines are broken to fit it.
TEXT_WIDTH_PT = 0.9 * 345.0


# ----- names -----

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "&": r"\&",
    "#": r"\#",
    "^": r"\textasciicircum{}",
    "%": r"\%",
    "~": r"\textasciitilde{}",
    "_": r"\_",
}


def latex_text(text: str) -> str:
    """``text`` for LaTeX's text mode: specials escaped, characters outside ASCII as U+XXXX.

    Nothing of ``text`` is read as LaTeX code, whatever it holds.
    """
    out = []
    for ch in str(text):
        if ch in _LATEX_SPECIALS:
            out.append(_LATEX_SPECIALS[ch])
        elif ch == "\n":
            out.append(" ")
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(f"[U+{ord(ch):04X}]")
    return "".join(out)


def _greek(ch: str) -> str | None:
    """``\\alpha`` for α, ``\\Gamma`` for Γ; None for letters LaTeX has no command for."""
    try:
        uname = unicodedata.name(ch)
    except ValueError:
        return None
    match = re.fullmatch(r"GREEK (SMALL|CAPITAL) LETTER ([A-Z]+)", uname)
    if not match:
        return None
    word = match.group(2).lower()
    small = {
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
        "lamda", "mu", "nu", "xi", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi",
        "omega",
    }  # fmt: skip
    capital = {"gamma", "delta", "theta", "lamda", "xi", "pi", "sigma", "upsilon", "phi", "psi",
               "omega"}  # fmt: skip
    word_tex = "lambda" if word == "lamda" else word
    if match.group(1) == "SMALL" and word in small:
        return "\\" + word_tex
    if match.group(1) == "CAPITAL" and word in capital:
        return "\\" + word_tex.capitalize()
    return None


def _math_part(text: str) -> str:
    """One part of a name for math mode: ASCII letters and digits as they are, Greek letters
    as commands, anything else as escaped text."""
    out, plain = [], []

    def flush():
        if plain:
            out.append(rf"\text{{{latex_text(''.join(plain))}}}")
            plain.clear()

    for ch in text:
        if ch.isascii() and ch.isalnum():
            flush()
            out.append(ch)
        elif (cmd := _greek(ch)) is not None:
            flush()
            out.append(cmd + " ")
        else:
            plain.append(ch)
    flush()
    return "".join(out).rstrip()


# Greek letters spelt out in a name print as the letter, as SymPy prints them: W_alpha → W_{\alpha}
_GREEK_NAMES = set(
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi pi rho sigma tau "
    "upsilon phi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega".split()
)


def _name_part(text: str) -> str:
    """One ``_``-separated part of a name: a spelt-out Greek letter as its command, a word of
    several letters upright (``gate`` is a word, not g·a·t·e), anything else as ``_math_part``."""
    if text in _GREEK_NAMES:
        return f"\\{text}"
    if len(text) > 1 and text.isascii() and text.isalpha():
        return rf"\mathrm{{{text}}}"
    return _math_part(text)


def _latex_name(name: str, bold: bool = False) -> str:
    """A user's name as LaTeX math: ``W_hh`` → ``W_{hh}``, ``out`` → ``\\mathrm{out}``.

    The name is read as Python reads it (NFKC); characters other than ASCII letters, digits,
    underscores and Greek letters are printed as escaped text, never as LaTeX code. ``bold``
    sets the name (not its subscript) in bold: a vector in the report's notation.
    """
    name = unicodedata.normalize("NFKC", str(name))
    head, _, tail = name.partition("_")
    head_tex = f"\\{head}" if head in _GREEK_NAMES else _math_part(head)
    plain = head_tex == head
    if len(head) > 1 and plain:
        head_tex = rf"\mathrm{{{head}}}"  # a word, not a product of letters
    if not head_tex:
        head_tex = r"\_"
    if bold:
        head_tex = rf"\mathbf{{{head}}}" if plain else rf"\boldsymbol{{{head_tex}}}"
    if not tail:
        return head_tex
    tail_tex = ",".join(_name_part(p) or r"\_" for p in tail.split("_"))
    return f"{head_tex}_{{{tail_tex}}}"


def label_key(*parts: str) -> str:
    """A ``\\label`` key made of ``parts``: lower-case ASCII letters, digits, ':' and '-' only."""
    cleaned = []
    for part in parts:
        text = unicodedata.normalize("NFKD", str(part)).lower()
        text = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
        cleaned.append(text or "x")
    return ":".join(cleaned)


NOTATIONS = ("plain", "report", "braket")


def _time_tables(cell, bold: bool = False, notation: str = "plain") -> tuple[dict, dict]:
    """Unicode and LaTeX names of every symbol of ``cell`` at its time step.

    ``notation="report"`` (or ``bold``) sets vectors in bold, as the report does;
    ``notation="braket"`` writes the step in parentheses, h(t − 1), as the slides do (the
    printer adds the kets).
    """
    if notation not in NOTATIONS:
        raise ValueError(f"notation={notation!r}; expected one of {', '.join(NOTATIONS)}")
    bold = bold or notation == "report"
    kets = notation == "braket"
    text, tex = {"L": "L⁽ᵗ⁾"}, {"L": "L(t)" if kets else "L^{(t)}"}
    steps = {"": "(t)", "_prev": "(t-1)", "_next": "(t+1)"}

    def sup(s: str) -> str:
        return "".join(_SUP[c] for c in s)

    def at(base: str, step: str) -> str:
        return f"{base}{step}" if kets else f"{base}^{{{step}}}"

    def name_tex(var_name: str, vector: bool) -> str:
        return _latex_name(var_name, bold=bold and vector)

    timed = [v for v in cell._vars.values() if v.kind != "param"]
    for var in timed:
        vector = var.symbol.shape[1] == 1
        for suffix, step in steps.items():
            if suffix == "_prev" and var.kind != "state":
                continue
            name = var.name + suffix
            text[name] = f"{var.name}{sup(step)}"
            tex[name] = at(name_tex(var.name, vector), step)
            if var.kind in ("state", "output", "intermediate"):
                text[f"g_{name}"] = f"∇_{{{text[name]}}}L"
                tex[f"g_{name}"] = rf"\nabla_{{{tex[name]}}} L"
    for name, target in cell.fed_back.items():  # y.prev: y(t-1)
        text[name] = f"{target}{sup('(t-1)')}"
        tex[name] = at(name_tex(target, True), "(t-1)")
    for name in cell.context_inputs:  # one value for the whole sequence
        text[name] = name
        tex[name] = name_tex(name, True)
    for name, var in cell.params.items():
        text[name] = name
        tex[name] = name_tex(name, var.symbol.shape[1] == 1)
    return text, tex


# ----- printers -----


class _SumsAndProducts:
    """Sums with proper minus signs and products by juxtaposition, shared by both printers."""

    MINUS = "-"

    def _factor(self, expr) -> str:
        raise NotImplementedError

    def _print_MatMul(self, expr) -> str:
        coeff, factors = coeff_and_factors(expr)
        body = " ".join(self._factor_at(f, i == len(factors) - 1) for i, f in enumerate(factors))
        if coeff == 1:
            return body
        if coeff == -1:
            return f"{self.MINUS}{body}"
        return f"{self._print(coeff)} {body}"

    def _factor_at(self, expr, last: bool) -> str:
        return self._factor(expr)

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

    def _factor_at(self, expr, last: bool) -> str:
        if _is_adjoint(expr, self.names) and not last:  # (∇_{o⁽ᵗ⁾}L) h⁽ᵗ⁾ᵀ, as the report
            return f"({self._print(expr)})"
        return self._factor(expr)

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


def _is_adjoint(expr, names: dict[str, str]) -> bool:
    """Whether ``expr`` is the symbol of an adjoint ∇L (by how it prints: a state may itself
    be called g)."""
    return isinstance(expr, MatrixSymbol) and names.get(expr.name, "").startswith(("\\nabla", "∇"))


def _user_activation(name: str) -> bool:
    from .ir.activations import _USER_DEFINITIONS

    return name in _USER_DEFINITIONS


class DerivationLatexPrinter(_SumsAndProducts, LatexPrinter):
    """LaTeX with time-stepped symbols and ∘ for the Hadamard product.

    An adjoint ∇L followed by another factor keeps the report's parentheses:
    ``(\\nabla_{o^{(t)}} L)\\, {h^{(t)}}^{\\top}``.
    """

    def __init__(self, names: dict[str, str]):
        super().__init__()
        self.names = names

    _OWN = frozenset({"Apply", "Slice", "Pad", "Concat", "LogSumExp", "Softmax"})

    def _print(self, expr, **kwargs) -> str:
        # rnnsym's own nodes print here, not through their ``_latex`` methods: a user's
        # function name must be escaped, and slices use the 1-based form of this module
        name = type(expr).__name__
        if name in self._OWN:
            return getattr(self, f"_print_{name}")(expr)
        return super()._print(expr, **kwargs)

    def _print_MatrixSymbol(self, expr) -> str:
        name = self.names.get(expr.name)
        return name if name is not None else _latex_name(expr.name)

    def _print_OneMatrix(self, expr) -> str:
        return r"\mathbf{1}"

    def _print_ZeroMatrix(self, expr) -> str:
        return r"\mathbf{0}"

    def _print_Identity(self, expr) -> str:
        return "I"

    def _factor(self, expr) -> str:
        text = self._print(expr)
        if isinstance(expr, (MatAdd, HadamardProduct)):
            return rf"\left({text}\right)"
        return text

    def _factor_at(self, expr, last: bool) -> str:
        if _is_adjoint(expr, self.names) and not last:
            return rf"\left({self._print(expr)}\right)\,"
        return self._factor(expr)

    def _print_Transpose(self, expr) -> str:
        arg = expr.arg
        if isinstance(arg, MatrixSymbol):
            return rf"{{{self._print(arg)}}}^{{\top}}"
        return rf"\left({self._print(arg)}\right)^{{\top}}"

    def _print_HadamardProduct(self, expr) -> str:
        n = len(expr.args)
        parts = []
        for i, a in enumerate(expr.args):
            if _is_adjoint(a, self.names) and i < n - 1:
                parts.append(rf"\left({self._print(a)}\right)")
            else:
                parts.append(self._factor(a))
        return r" \circ ".join(parts)

    def _print_Apply(self, expr) -> str:
        return rf"{self._function(expr.name)}\left({self._print(expr.arg)}\right)"

    def _function(self, name: str) -> str:
        if _user_activation(name):  # the user's name, escaped; derivatives carry primes
            base = name.rstrip("'")
            primes = "'" * (len(name) - len(base))
            return rf"\operatorname{{{latex_text(base)}}}{primes}"
        from .ir.activations import get_activation

        return get_activation(name).latex

    def _index(self, value) -> str:
        return self._print(sp.sympify(value))

    def _print_Slice(self, expr) -> str:
        arg, start, stop = expr.args
        first = self._index(start + 1)
        if sp.simplify(stop - start - 1) == 0:
            rows = first
        else:
            rows = f"{first}:{self._index(stop)}"
        return rf"\left[{self._print(arg)}\right]_{{{rows}}}"

    def _print_Pad(self, expr) -> str:
        arg, start, total = expr.args
        return (
            rf"\operatorname{{pad}}_{{{self._index(start + 1)}}}^{{{self._index(total)}}}"
            rf"\left({self._print(arg)}\right)"
        )

    def _print_Concat(self, expr) -> str:
        rows = r" \\ ".join(self._print(a) for a in expr.args)
        return rf"\begin{{bmatrix}} {rows} \end{{bmatrix}}"

    def _print_LogSumExp(self, expr) -> str:
        return rf"\operatorname{{logsumexp}}\left({self._print(expr.args[0])}\right)"

    def _print_Softmax(self, expr) -> str:
        return rf"\operatorname{{softmax}}\left({self._print(expr.args[0])}\right)"


class KetLatexPrinter(DerivationLatexPrinter):
    """The slides' notation: vectors as kets |h(t)⟩, transposed vectors as bras ⟨x(t)|, and a
    bra next to a ket as one bracket ⟨d(t)|h(t)⟩."""

    def plain(self, expr) -> str:
        return super()._print_MatrixSymbol(expr)

    def _print_MatrixSymbol(self, expr) -> str:
        name = self.plain(expr)
        if expr.shape[1] == 1 and expr.shape[0] != 1:
            return rf"| {name} \rangle"
        return name

    def _print_Transpose(self, expr) -> str:
        arg = expr.arg
        if isinstance(arg, MatrixSymbol) and arg.shape[1] == 1 and arg.shape[0] != 1:
            return rf"\langle {self.plain(arg)} |"
        return super()._print_Transpose(expr)

    def _factor_at(self, expr, last: bool) -> str:
        return self._factor(expr)  # a ket needs no parentheses

    def _print_MatMul(self, expr) -> str:
        text = super()._print_MatMul(expr)
        return join_bra_ket(text)


def breakable(body: str) -> str:
    """``body`` in a group that lets its displays break across pages (amsmath's
    ``\\allowdisplaybreaks``, local to the group), so that it pastes into any document as is."""
    return "{\\allowdisplaybreaks\n" + body.rstrip("\n") + "\n}\n"


def join_bra_ket(text: str) -> str:
    """A bra meeting a ket is one bracket: ``⟨a| |b⟩`` → ``⟨a|b⟩`` (text or LaTeX)."""
    return re.sub(r"\|\s+\|", "|", text)


# ----- line breaking -----

# Widths in pt of glyphs at 10pt (Computer Modern), for estimating a displayed line's width.
_CMD_WIDTH = {
    "nabla": 8.3,
    "circ": 12.2,  # with the spacing of a binary operator
    "top": 7.8,
    "tanh": 18.9,
    "sigma": 5.7,
    "sum": 14.4,
    "log": 12.8,
    "exp": 15.6,
    "quad": 10.0,
    "qquad": 20.0,
    ",": 1.7,
    ";": 2.8,
    "langle": 3.9,
    "rangle": 3.9,
    "dots": 13.4,
    "cdot": 7.8,
    "le": 12.2,
    "delta": 4.5,
    "tau": 4.4,
    "mathbb": 0.0,
    "epsilon": 4.1,
    "boldsymbol": 0.0,
    "mathbf": 0.0,
    "mathrm": 0.0,
    "left": 0.0,
    "right": 0.0,
    "bigl": 0.0,
    "bigr": 0.0,
    "Bigl": 0.0,
    "Bigr": 0.0,
    "frac": 0.0,
    "tag": 0.0,
    "notag": 0.0,
}


# Math italic letters and digits at 10pt (cmmi10/cmr10 advance widths, rounded up): an "m" is
# half as wide again as the 5.6pt average, which bra-ket lines (⟨m|, ⟨n|) are full of.
_LOWER = (
    "5.3 4.3 4.3 5.2 4.7 4.9 4.8 5.8 3.5 4.2 5.3 3.0 8.8 6.0 4.9 5.1 4.5 4.6 4.7 3.7 5.8 4.9 7.3"
)
_LOWER += " 5.8 4.9 4.7"  # x y z
_UPPER = (
    "7.5 7.6 7.2 8.3 7.4 6.5 7.9 8.3 4.5 5.6 8.5 6.8 9.8 8.1 7.6 6.5 7.9 7.6 6.2 5.9 6.9 5.9 9.5"
)
_UPPER += " 8.3 5.9 6.9"  # X Y Z
_GLYPH_WIDTH = {
    **dict(zip("abcdefghijklmnopqrstuvwxyz", map(float, _LOWER.split()), strict=True)),
    **dict(zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", map(float, _UPPER.split()), strict=True)),
    **dict.fromkeys("0123456789", 5.0),
}


def _strip_environments(tex: str) -> str:
    """A bmatrix or pmatrix is as wide as its widest row (plus its brackets)."""

    def widest(match: re.Match) -> str:
        rows = match.group(2).split(r"\\")
        widest_row = max(rows, key=lambda r: display_width(r))
        return "[[" + widest_row.replace("&", r"\quad ") + "]]"  # column gap: 2 arraycolsep

    return re.sub(r"\\begin\{([bp])matrix\}(.*?)\\end\{\1matrix\}", widest, tex)


def display_width(tex: str) -> float:
    """Estimated width in pt of ``tex`` set as display math at 10pt (Computer Modern)."""
    tex = _strip_environments(tex)
    tex = re.sub(r"\\frac\{1\}\{2\}", "½", tex)
    tex = re.sub(r"\\(?:text|operatorname)\{((?:[^{}]|\{[^{}]*\})*)\}", r"\\txt{\1}", tex)
    total = 0.0
    scale = [1.0]  # script size per group
    pending = 1.0  # the size of the next group
    i = 0
    while i < len(tex):
        ch = tex[i]
        if ch == "\\":
            match = re.match(r"\\([A-Za-z]+|.)", tex[i:])
            cmd = match.group(1)
            i += len(match.group(0))
            if cmd == "txt":  # text or an operator name: about 5pt a letter
                end = tex.index("}", i)
                total += 5.0 * len(re.sub(r"\\[A-Za-z]+\{?\}?", "x", tex[i + 1 : end])) * scale[-1]
                i = end + 1
                continue
            if cmd in ("left", "right"):  # a delimiter grown to its contents, spaced
                total += 3.0 * scale[-1]
            total += _CMD_WIDTH.get(cmd, 8.0) * scale[-1]
            continue
        i += 1
        if ch in "_^":
            pending = max(0.5, scale[-1] * 0.7)
            if i < len(tex) and tex[i] != "{":  # a one-character script
                total += 5.0 * pending
                i += 1
                pending = 1.0
            continue
        if ch == "{":
            scale.append(pending if pending != 1.0 else scale[-1])
            pending = 1.0
            continue
        if ch == "}":
            if len(scale) > 1:
                scale.pop()
            continue
        if ch == " ":
            continue
        if ch in "+-=":
            total += (12.2 if scale[-1] == 1.0 else 7.8) * scale[-1]
        elif ch in "()[]":
            total += 3.9 * scale[-1]
        elif ch in ",:|.":
            total += 2.8 * scale[-1]
        elif ch == "½":
            total += 6.0 * scale[-1]
        else:
            total += _GLYPH_WIDTH.get(ch, 5.6) * scale[-1]
    return total


class _Breaker:
    """Splits a too-wide right-hand side into pieces joined by the lines of an ``align``.

    Pieces are cut only between the terms of a sum, the factors of a product or a Hadamard
    product, or inside the argument of a function; a parenthesis that spans pieces is a
    ``\\bigl(``/``\\bigr)`` pair, which LaTeX allows across lines.
    """

    def __init__(self, printer: DerivationLatexPrinter):
        self.p = printer

    def pieces(self, expr, budget: float) -> list[str]:
        whole = self.p.doprint(expr)
        if display_width(whole) <= budget:
            return [whole]
        if isinstance(expr, MatAdd):
            out: list[str] = []
            for i, (negative, term) in enumerate(signed_terms(expr)):
                sub = self.pieces(term, budget)
                sign = "-" if negative else ("+" if i else "")
                sub[0] = f"{sign} {sub[0]}".strip() if sign else sub[0]
                out.extend(sub)
            return out
        if isinstance(expr, MatMul):
            coeff, factors = coeff_and_factors(expr)
            out = []
            for i, f in enumerate(factors):
                last = i == len(factors) - 1
                if isinstance(f, (MatAdd, HadamardProduct)):
                    out.extend(self._grouped(f, budget))
                else:
                    out.append(self.p._factor_at(f, last))
            if coeff == -1:
                out[0] = "-" + out[0]
            elif coeff != 1:
                out[0] = f"{self.p._print(coeff)} {out[0]}"
            return self._merge(out, budget)
        if isinstance(expr, HadamardProduct):
            out = []
            n = len(expr.args)
            for i, f in enumerate(expr.args):
                if isinstance(f, (MatAdd, HadamardProduct)):
                    sub = self._grouped(f, budget)
                elif _is_adjoint(f, self.p.names) and i < n - 1:
                    sub = [rf"\left({self.p._print(f)}\right)"]
                else:
                    sub = [self.p._factor(f)]
                if i:
                    sub[0] = rf"\circ {sub[0]}"
                out.extend(sub)
            return self._merge(out, budget)
        if type(expr).__name__ == "Apply":
            inner = self.pieces(expr.arg, budget)
            if len(inner) > 1:
                return [rf"{self.p._function(expr.name)}\bigl({inner[0]}", *inner[1:-1],
                        rf"{inner[-1]}\bigr)"]  # fmt: skip
        if isinstance(expr, Transpose) and not isinstance(expr.arg, MatrixSymbol):
            inner = self.pieces(expr.arg, budget)
            if len(inner) > 1:
                return [rf"\bigl({inner[0]}", *inner[1:-1], rf"{inner[-1]}\bigr)^{{\top}}"]
        return [whole]

    def _grouped(self, expr, budget: float) -> list[str]:
        inner = self.pieces(expr, budget)
        if len(inner) == 1:
            return [rf"\left({inner[0]}\right)"]
        return [rf"\bigl({inner[0]}", *inner[1:-1], rf"{inner[-1]}\bigr)"]

    @staticmethod
    def _merge(parts: list[str], budget: float) -> list[str]:
        """Adjacent pieces joined again where they fit together on a line."""
        out: list[str] = []
        for part in parts:
            if out and display_width(out[-1] + " " + part) <= budget and not _open(out[-1]):
                out[-1] = f"{out[-1]} {part}"
            else:
                out.append(part)
        return out


def _open(text: str) -> bool:
    """Whether a piece leaves a \\bigl( open (then the next piece continues its group)."""
    return text.count(r"\bigl(") > text.count(r"\bigr)")


def _pack(pieces: list[str], first: float, rest: float) -> list[str]:
    """Pieces packed greedily into lines of ``first`` and then ``rest`` pt."""
    lines: list[str] = []
    for piece in pieces:
        budget = first if not lines else rest
        if lines and display_width(lines[-1] + " " + piece) <= budget:
            lines[-1] = f"{lines[-1]} {piece}"
        else:
            lines.append(piece)
    return lines


# ----- rows -----


@dataclass
class LatexRow:
    """One numbered equation: ``lhs = rhs`` over one or more lines, its own number, its
    ``\\label`` key and the report equation it is (``report``, "" if none)."""

    section: str  # "forward", "backward" or "gradient"
    number: int
    lhs: str
    lines: list[str]
    report: str
    key: str


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


def _report_note(label: str) -> str:
    """``[report eq.~(7)]`` for the label "eq. (7)"."""
    return rf"\text{{[report {latex_text(label).replace('. ', '.~')}]}}"


_TAG_PT = 30.0  # a tag "(12)" and the least space before it


def latex_printer(cell, notation: str = "plain") -> DerivationLatexPrinter:
    """The LaTeX printer of ``cell``'s symbols in a notation (see :data:`NOTATIONS`)."""
    _, names = _time_tables(cell, notation=notation)
    return KetLatexPrinter(names) if notation == "braket" else DerivationLatexPrinter(names)


def latex_rows(
    derivation,
    notation: str = "plain",
    key: str | None = None,
    tag_prefix: str = "",
    width: float = TEXT_WIDTH_PT,
) -> list[LatexRow]:
    """Every equation of ``derivation`` as LaTeX, broken into lines that fit ``width`` pt.

    ``notation``: "plain", "report" (vectors in bold, as the report) or "braket" (kets and
    bras, steps in parentheses, as the slides); ``key`` starts the label keys (default
    ``eq:<cell name>``); ``tag_prefix`` goes before each number (a model's parts).
    """
    printer = latex_printer(derivation.cell, notation)
    breaker = _Breaker(printer)
    key = key or label_key("eq", derivation.cell.name)
    tag_width = _TAG_PT + 6.0 * len(tag_prefix)
    rows = _rows(derivation)
    lefts = []
    for sect, lhs, _, _ in rows:
        if sect == "gradient":
            symbol = derivation.cell.params[lhs].symbol
            name = DerivationLatexPrinter._print_MatrixSymbol(printer, symbol)
            lefts.append(rf"\nabla_{{{name}}} L")
        else:
            lefts.append(printer.doprint(lhs))
    # an align sets every left-hand side in one column as wide as the widest
    left_width = max(display_width(left) for left in lefts) + 13.3
    out = []
    for number, ((sect, _, rhs, label), left) in enumerate(zip(rows, lefts, strict=True), 1):
        note = _report_note(label) if label else ""
        note_width = display_width(note) + 10.0 if note else 0.0
        summed = sect == "gradient" and isinstance(rhs, MatAdd)
        prefix = r"\sum_{t} " if sect == "gradient" else ""
        budget = width - left_width - tag_width - display_width(prefix) - (8.0 if summed else 0.0)
        whole = printer.doprint(rhs)
        if display_width(whole) + note_width <= budget:
            lines = [rf"\left({whole}\right)" if summed else whole]
        else:
            pieces = breaker.pieces(rhs, budget - 20.0)
            lines = _pack(pieces, budget, budget - 20.0)
            if len(lines) > 1 and summed:
                lines[0], lines[-1] = rf"\Bigl({lines[0]}", rf"{lines[-1]}\Bigr)"
            elif summed:
                lines = [rf"\left({lines[0]}\right)"]
            if display_width(lines[-1]) + note_width > budget - 20.0 * (len(lines) > 1) and note:
                lines.append("")  # the side note on a line of its own
        lines[0] = prefix + lines[0]
        if note:
            lines[-1] = (lines[-1] + r" \quad " + note) if lines[-1] else note
        out.append(LatexRow(sect, number, left, lines, label, f"{key}:{number}"))
    return out


def align_block(
    rows: list[LatexRow],
    tag_prefix: str = "",
    labels: bool = True,
    titles: dict[str, str] | None = None,
    heading: str = "",
) -> str:
    """Rows as one ``align`` environment: ``\\tag{N}`` and ``\\label`` on each equation's last
    line, continuation lines ``\\notag``; ``titles`` (LaTeX text, by section) head the
    sections as unnumbered lines, after ``heading`` (LaTeX math) if given."""
    out = [r"\begin{align}"]
    body: list[str] = [rf"  & {heading} \notag"] if heading else []
    section = None
    for row in rows:
        if titles and row.section != section and titles.get(row.section):
            body.append(rf"  & {titles[row.section]} \notag")
        section = row.section
        for i, line in enumerate(row.lines):
            left = f"{row.lhs} &= " if i == 0 else r"&\quad "
            if i < len(row.lines) - 1:
                body.append(f"  {left}{line} \\notag")
            else:
                label = rf"\label{{{row.key}}}" if labels else ""
                body.append(f"  {left}{line} \\tag{{{tag_prefix}{row.number}}}{label}")
    out.append(" \\\\\n".join(body))
    out.append(r"\end{align}")
    return "\n".join(out)


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


def latex_step(name: str, step: str, notation: str = "plain") -> str:
    """A user's vector name at a step in a notation: h^{(0)}, bold, or h(0) (slides)."""
    base = _latex_name(name, bold=notation == "report")
    return f"{base}({step})" if notation == "braket" else f"{base}^{{({step})}}"


def latex_titles(derivation, notation: str = "plain") -> dict[str, str]:
    """The section titles of a derivation as LaTeX math (text in ``\\text``, no ``$``, so
    MathJax renders them as LaTeX does)."""
    cell = derivation.cell
    if not cell.states:
        return {
            "forward": r"\text{Step } t \text{, every } t \text{ at once (no state)}",
            "backward": r"\text{Adjoints at step } t \text{ (no recurrence)}",
            "gradient": r"\text{Gradients, summed over } t \text{ and the batch}",
        }
    initial = ", ".join(latex_step(n, "0", notation) for n in cell.states)
    return {
        "forward": rf"\text{{Forward step, }} t = 1, \dots, T \text{{; }} {initial} "
        r"\text{ given}",
        "backward": r"\text{Backward recurrence, } t = T, \dots, 1 \text{; terms of step } "
        r"T+1 \text{ are zero}",
        "gradient": r"\text{Gradients, summed over } t \text{ and the batch}",
    }


def derivation_text(derivation, tag_prefix: str = "") -> str:
    """The derivation as aligned Unicode text, each equation numbered "(N)" (``tag_prefix``
    before N for a model's parts) and a report equation marked "[report eq. (7)]"."""
    titles = dict(_TITLES) if derivation.cell.states else _TITLES_NO_STATE
    if derivation.cell.states:  # name the cell's own states: h(0), or o(0) for Fig. 4
        initial = ", ".join(f"{n}(0)" for n in derivation.cell.states)
        titles["forward"] = titles["forward"].replace("h(0)", initial)
    names, _ = _time_tables(derivation.cell)
    printer = TextPrinter(names)
    lines: list[str] = [f"Cell {derivation.cell.name!r}"]
    section = None
    body = []
    rows = _rows(derivation)
    number_width = len(f"({tag_prefix}{len(rows)})")
    for number, (sect, lhs, rhs, label) in enumerate(rows, 1):
        if sect == "gradient":
            left = f"∇_{lhs} L = Σ_t"
        else:
            left = printer.doprint(lhs)
        body.append((sect, number, left, printer.doprint(rhs), label))
    width = max(len(left) for _, _, left, _, _ in body)
    for sect, number, left, right, label in body:
        if sect != section:
            lines.append("")
            lines.append(titles[sect])
            section = sect
        tag = f"    [report {label}]" if label else ""
        equals = "" if sect == "gradient" else " ="
        mark = f"({tag_prefix}{number})".rjust(number_width)
        lines.append(f"  {mark} {left.rjust(width)}{equals} {right}{tag}")
    return "\n".join(lines)


def derivation_latex(
    derivation,
    notation: str = "plain",
    key: str | None = None,
    tag_prefix: str = "",
    labels: bool = True,
    titles: bool = True,
) -> str:
    """The derivation as one LaTeX ``align`` environment (MathJax renders it too).

    Equation N carries ``\\tag{N}`` and ``\\label{<key>:N}`` (key default ``eq:<cell name>``);
    a report equation carries the note "[report eq. (7)]". ``notation="report"`` prints
    vectors in bold as the report does, ``"braket"`` as kets as the slides do;
    ``labels=False`` leaves the labels out (two copies on one page would clash); ``titles``
    heads the sections with unnumbered lines of text.
    """
    rows = latex_rows(derivation, notation=notation, key=key, tag_prefix=tag_prefix)
    shown = latex_titles(derivation, notation) if titles else None
    return align_block(rows, tag_prefix, labels=labels, titles=shown)
