"""The expression IR: SymPy matrix expressions built through canonicalising constructors.

Every quantity of a cell is a SymPy ``MatrixExpr`` whose shape may hold symbolic sizes.
Vectors are columns, shape ``(n, 1)``; the per-step loss is ``(1, 1)``. The node types are::

    MatrixSymbol               leaf: input, state, previous state, parameter, target, adjoint
    MatAdd(A, B, ...)          sum of same-shaped terms
    MatMul(c, A, B, ...)       matrix product with an optional scalar coefficient c
    HadamardProduct(A, B, ...) elementwise product (written ``*`` in a cell)
    Transpose(A)               transpose
    Apply(f, A)                the scalar function f applied to every entry of A
    OneMatrix / ZeroMatrix     all-ones (scalar broadcast: ``1 - z``) and zero

SymPy's own ``doit()`` rewrites ``W*W`` into ``W**2`` and ``h∘h`` into a Hadamard power, which
no derivative rule or printer here would then recognise. The constructors below (``add``, ``mul``,
``hadamard``, ``transpose``) canonicalise only as far as needed: they flatten, fold scalar
coefficients, drop identities and zeros, collect equal terms and push transposes down to leaves.
They never reorder factors, so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sympy as sp
from sympy import (
    HadamardProduct,
    Identity,
    MatAdd,
    MatMul,
    MatrixExpr,
    MatrixSymbol,
    OneMatrix,
    Transpose,
    ZeroMatrix,
)
from sympy.core.basic import Basic
from sympy.core.symbol import Str

from ..errors import CellError

__all__ = [
    "Apply",
    "Concat",
    "Slice",
    "Pad",
    "concat",
    "slice_rows",
    "LogSumExp",
    "Softmax",
    "add",
    "mul",
    "hadamard",
    "transpose",
    "ones",
    "is_zero",
    "coeff_and_factors",
    "signed_terms",
    "leaves",
    "shape_str",
    "postorder",
]


class Apply(MatrixExpr):
    """A scalar function applied to every entry of a matrix expression: ``Apply('tanh', a)``.

    The function is looked up by name in :mod:`rnnsym.ir.activations`; the node stores only the
    name, so it prints, substitutes and compares like any other SymPy expression.
    """

    def __new__(cls, name: str | Str, arg: MatrixExpr) -> Apply:
        if not isinstance(name, Str):
            name = Str(name)
        return Basic.__new__(cls, name, arg)

    @property
    def name(self) -> str:
        return self.args[0].name

    @property
    def arg(self) -> MatrixExpr:
        return self.args[1]

    @property
    def shape(self) -> tuple:
        return self.arg.shape

    @property
    def activation(self):
        return get_activation(self.name)

    def _entry(self, i, j, **kwargs):
        return self.activation.scalar(self.arg._entry(i, j, **kwargs))

    def _eval_transpose(self) -> Apply:
        return Apply(self.name, transpose(self.arg))

    def _sympystr(self, printer) -> str:
        return f"{self.name}({printer._print(self.arg)})"

    def _latex(self, printer) -> str:
        return rf"{self.activation.latex}\left({printer._print(self.arg)}\right)"


class Concat(MatrixExpr):
    """Column vectors stacked vertically: ``[a; b]`` (rows add up)."""

    def __new__(cls, *args: MatrixExpr) -> Concat:
        return Basic.__new__(cls, *args)

    @property
    def shape(self) -> tuple:
        return (sp.Add(*[a.shape[0] for a in self.args]), sp.S.One)

    def offsets(self) -> list:
        """The first row of each part."""
        starts, row = [], sp.S.Zero
        for arg in self.args:
            starts.append(row)
            row = row + arg.shape[0]
        return starts

    def _sympystr(self, printer) -> str:
        return "[" + "; ".join(printer._print(a) for a in self.args) + "]"

    def _latex(self, printer) -> str:
        return (
            r"\begin{bmatrix} "
            + r" \\ ".join(printer._print(a) for a in self.args)
            + (r" \end{bmatrix}")
        )


class Slice(MatrixExpr):
    """Rows ``start`` to ``stop`` (exclusive) of a column vector: ``a[start:stop]``."""

    def __new__(cls, arg: MatrixExpr, start, stop) -> Slice:
        return Basic.__new__(cls, arg, sp.sympify(start), sp.sympify(stop))

    @property
    def shape(self) -> tuple:
        return (self.args[2] - self.args[1], sp.S.One)

    def _sympystr(self, printer) -> str:
        arg, start, stop = self.args
        text = printer._print(arg)
        if not isinstance(arg, (MatrixSymbol, Concat)):
            text = f"({text})"  # (Wᵀ g)[0:n], not Wᵀ (g)[0:n]
        return f"{text}[{printer._print(start)}:{printer._print(stop)}]"

    def _latex(self, printer) -> str:
        arg, start, stop = self.args
        return rf"\left({printer._print(arg)}\right)_{{[{sp.latex(start)}:{sp.latex(stop)}]}}"


class Pad(MatrixExpr):
    """A column vector placed at row ``start`` of a zero vector of ``total`` rows."""

    def __new__(cls, arg: MatrixExpr, start, total) -> Pad:
        return Basic.__new__(cls, arg, sp.sympify(start), sp.sympify(total))

    @property
    def shape(self) -> tuple:
        return (self.args[2], sp.S.One)

    def _sympystr(self, printer) -> str:
        arg, start, total = self.args
        return f"pad({printer._print(arg)}, {start}, {total})"


class LogSumExp(MatrixExpr):
    """log Σ_i exp(a_i) of a column vector: a 1×1 quantity (softmax cross-entropy's normaliser)."""

    def __new__(cls, arg: MatrixExpr) -> LogSumExp:
        return Basic.__new__(cls, arg)

    @property
    def shape(self) -> tuple:
        return (sp.S.One, sp.S.One)

    def _sympystr(self, printer) -> str:
        return f"logsumexp({printer._print(self.args[0])})"

    def _latex(self, printer) -> str:
        return rf"\operatorname{{logsumexp}}\left({printer._print(self.args[0])}\right)"


class Softmax(MatrixExpr):
    """exp(a_i) / Σ_j exp(a_j) of a column vector (the gradient of LogSumExp)."""

    def __new__(cls, arg: MatrixExpr) -> Softmax:
        return Basic.__new__(cls, arg)

    @property
    def shape(self) -> tuple:
        return self.args[0].shape

    def _sympystr(self, printer) -> str:
        return f"softmax({printer._print(self.args[0])})"

    def _latex(self, printer) -> str:
        return rf"\operatorname{{softmax}}\left({printer._print(self.args[0])}\right)"


def concat(*parts: MatrixExpr) -> MatrixExpr:
    """``[a; b; ...]``, flattened; a single part is returned as is."""
    flat: list[MatrixExpr] = []
    for part in parts:
        flat.extend(part.args if isinstance(part, Concat) else (part,))
    return flat[0] if len(flat) == 1 else Concat(*flat)


def slice_rows(expr: MatrixExpr, start, stop) -> MatrixExpr:
    """Rows start:stop, simplified through concatenations and pads where the bounds line up."""
    start, stop = sp.sympify(start), sp.sympify(stop)
    if sp.simplify(start) == 0 and sp.simplify(stop - expr.shape[0]) == 0:
        return expr
    if isinstance(expr, Concat):
        for offset, part in zip(expr.offsets(), expr.args, strict=True):
            if sp.simplify(start - offset) == 0 and sp.simplify(stop - offset - part.shape[0]) == 0:
                return part
    if isinstance(expr, Pad):
        inner, at, _ = expr.args
        if sp.simplify(start - at) == 0 and sp.simplify(stop - at - inner.shape[0]) == 0:
            return inner
    if isinstance(expr, ZeroMatrix):
        return ZeroMatrix(stop - start, 1)
    return Slice(expr, start, stop)


def _factor_common(terms: list[MatrixExpr], left: bool) -> list[MatrixExpr]:
    """A Bᵀ... + A C... = A (B... + C...) (or on the right): one product instead of several."""
    groups: dict[MatrixExpr, list[MatrixExpr]] = {}
    for term in terms:
        coeff, factors = coeff_and_factors(term)
        if len(factors) >= 2:
            key = factors[0] if left else factors[-1]
            rest = factors[1:] if left else factors[:-1]
            groups.setdefault(key, []).append(mul(coeff, *rest))
    if all(len(g) < 2 for g in groups.values()):
        return terms
    out, done = [], set()
    for term in terms:
        _, factors = coeff_and_factors(term)
        key = (factors[0] if left else factors[-1]) if len(factors) >= 2 else None
        if key is None or len(groups[key]) < 2:
            out.append(term)
        elif key not in done:
            done.add(key)
            inner = add(*groups[key])
            out.append(mul(key, inner) if left else mul(inner, key))
    return out


def _expand_zero_blocks(terms: list[MatrixExpr]) -> list[MatrixExpr]:
    """A concatenation with zero blocks, written as the pads of its non-zero parts."""
    out = []
    for term in terms:
        if isinstance(term, Concat) and any(isinstance(p, ZeroMatrix) for p in term.args):
            total = term.shape[0]
            out.extend(
                Pad(part, offset, total)
                for offset, part in zip(term.offsets(), term.args, strict=True)
                if not isinstance(part, ZeroMatrix)
            )
        else:
            out.append(term)
    return out


def _merge_pads(terms: list[MatrixExpr]) -> list[MatrixExpr]:
    """Pads that tile disjoint row ranges of one vector become one concatenation."""
    if sum(isinstance(t, (Pad, Concat)) for t in terms) < 2:
        return terms
    original = terms
    terms = _expand_zero_blocks(terms)
    pads = [t for t in terms if isinstance(t, Pad)]
    if len(pads) < 2 or len({p.args[2] for p in pads}) != 1:
        return original
    total = pads[0].args[2]
    probe = {s: 10**6 + 7 * i for i, s in enumerate(sorted(total.free_symbols, key=str))}
    ordered = sorted(pads, key=lambda p: float(p.args[1].xreplace(probe)))
    parts, row = [], sp.S.Zero
    for pad in ordered:
        inner, start, _ = pad.args
        gap = sp.simplify(start - row)
        if gap != 0:
            if not (gap.xreplace(probe) > 0):
                return original  # overlapping ranges: keep the sum
            parts.append(ZeroMatrix(gap, 1))
        parts.append(inner)
        row = start + inner.shape[0]
    rest = sp.simplify(total - row)
    if rest != 0:
        parts.append(ZeroMatrix(rest, 1))
    others = [t for t in terms if not isinstance(t, Pad)]
    return [Concat(*parts), *others]


def shape_str(expr: MatrixExpr) -> str:
    """The shape of a matrix expression written ``(n, 1)``."""
    rows, cols = expr.shape
    return f"({rows}, {cols})"


def ones(rows, cols=1) -> OneMatrix:
    return OneMatrix(rows, cols)


def is_zero(expr) -> bool:
    return isinstance(expr, ZeroMatrix) or expr == 0


def coeff_and_factors(expr: MatrixExpr) -> tuple[sp.Expr, tuple[MatrixExpr, ...]]:
    """Split ``c*A*B`` into the scalar ``c`` and the matrix factors ``(A, B)``."""
    if isinstance(expr, MatMul):
        coeff = sp.S.One
        factors = []
        for arg in expr.args:
            if isinstance(arg, MatrixExpr):
                factors.append(arg)
            else:
                coeff *= arg
        return coeff, tuple(factors)
    return sp.S.One, (expr,)


def signed_terms(expr: MatrixExpr) -> list[tuple[bool, MatrixExpr]]:
    """The terms of a sum as (negative, magnitude): ``a - 2 b`` gives [(False, a), (True, 2 b)].

    Printers write ``a − 2 b`` from this instead of ``a + (−2) b``.
    """
    out = []
    for term in expr.args if isinstance(expr, MatAdd) else (expr,):
        coeff, factors = coeff_and_factors(term)
        if coeff.is_number and coeff < 0:
            out.append((True, _from_factors(-coeff, factors, term.shape)))
        else:
            out.append((False, term))
    return out


def _from_factors(coeff: sp.Expr, factors: tuple[MatrixExpr, ...], shape) -> MatrixExpr:
    if coeff == 0:
        return ZeroMatrix(*shape)
    if not factors:
        raise ValueError("a matrix product needs at least one matrix factor")
    if coeff == 1 and len(factors) == 1:
        return factors[0]
    if coeff == 1:
        return MatMul(*factors)
    return MatMul(coeff, *factors)


def add(*terms: MatrixExpr) -> MatrixExpr:
    """Sum of same-shaped terms: flattened, zeros dropped, equal terms collected, order kept."""
    flat: list[MatrixExpr] = []
    for term in terms:
        flat.extend(term.args if isinstance(term, MatAdd) else (term,))
    if not flat:
        raise ValueError("add() needs at least one term")
    shape = flat[0].shape
    collected: dict[MatrixExpr, sp.Expr] = {}
    for term in flat:
        if is_zero(term):
            continue
        coeff, factors = coeff_and_factors(term)
        key = factors[0] if len(factors) == 1 else MatMul(*factors)
        collected[key] = collected.get(key, sp.S.Zero) + coeff
    kept = [
        _from_factors(coeff, coeff_and_factors(key)[1], shape)
        for key, coeff in collected.items()
        if coeff != 0
    ]
    kept = _merge_pads(_factor_common(_factor_common(kept, left=True), left=False))
    if not kept:
        return ZeroMatrix(*shape)
    if len(kept) == 1:
        return kept[0]
    return MatAdd(*kept)


def mul(*factors) -> MatrixExpr:
    """Matrix product; scalars among the factors become one leading coefficient."""
    coeff = sp.S.One
    mats: list[MatrixExpr] = []
    for factor in factors:
        if isinstance(factor, MatrixExpr):
            c, fs = coeff_and_factors(factor)
            coeff *= c
            mats.extend(fs)
        else:
            coeff *= sp.sympify(factor)
    if not mats:
        raise ValueError("mul() needs at least one matrix factor")
    shape = (mats[0].shape[0], mats[-1].shape[1])
    if coeff == 0 or any(isinstance(m, ZeroMatrix) for m in mats):
        return ZeroMatrix(*shape)
    kept = [m for m in mats if not isinstance(m, Identity)]
    if not kept:
        return _from_factors(coeff, (mats[0],), shape)
    return _from_factors(coeff, tuple(kept), shape)


def hadamard(*factors: MatrixExpr) -> MatrixExpr:
    """Elementwise product; all-ones factors dropped, scalar coefficients pulled out."""
    coeff = sp.S.One
    flat: list[MatrixExpr] = []
    for factor in factors:
        c, fs = coeff_and_factors(factor)
        coeff *= c
        inner = fs[0] if len(fs) == 1 else MatMul(*fs)
        flat.extend(inner.args if isinstance(inner, HadamardProduct) else (inner,))
    shape = flat[0].shape
    if coeff == 0 or any(is_zero(f) for f in flat):
        return ZeroMatrix(*shape)
    # all-ones factors, and the 1×1 identity (the seed ∂L/∂L), multiply by one
    kept = [f for f in flat if not isinstance(f, (OneMatrix, Identity))]
    if not kept:
        return mul(coeff, OneMatrix(*shape))
    body = kept[0] if len(kept) == 1 else HadamardProduct(*kept)
    return mul(coeff, body)


def transpose(expr: MatrixExpr) -> MatrixExpr:
    """Transpose, pushed down to the leaves (``(A B)ᵀ = Bᵀ Aᵀ``, ``(Aᵀ)ᵀ = A``); a 1×1 symbol
    (a per-step weight) is its own transpose."""
    if isinstance(expr, Transpose):
        return expr.arg
    if isinstance(expr, MatrixSymbol) and expr.shape == (1, 1):
        return expr
    if isinstance(expr, MatMul):
        coeff, factors = coeff_and_factors(expr)
        return mul(coeff, *[transpose(f) for f in reversed(factors)])
    if isinstance(expr, MatAdd):
        return add(*[transpose(t) for t in expr.args])
    if isinstance(expr, HadamardProduct):
        return hadamard(*[transpose(f) for f in expr.args])
    if isinstance(expr, (OneMatrix, ZeroMatrix)):
        return type(expr)(expr.shape[1], expr.shape[0])
    if isinstance(expr, Identity):
        return expr
    if isinstance(expr, Apply):
        return Apply(expr.name, transpose(expr.arg))
    return Transpose(expr)


def leaves(expr: Basic) -> set[MatrixSymbol]:
    """The matrix symbols an expression depends on."""
    return {node for node in sp.preorder_traversal(expr) if isinstance(node, MatrixSymbol)}


def postorder(roots: Iterable[Basic]) -> list[MatrixExpr]:
    """The distinct matrix subexpressions of ``roots``, every node after its arguments."""
    order: list[MatrixExpr] = []
    seen: set = set()
    for root in roots:
        stack: list[tuple[Basic, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if node in seen:
                continue
            seen.add(node)
            stack.append((node, True))
            if not isinstance(node, MatrixSymbol):
                for arg in reversed(node.args):
                    if isinstance(arg, MatrixExpr) and arg not in seen:
                        stack.append((arg, False))
    return order


# ----- the table of elementwise functions -----
# Filled by rnnsym.ir.activations (the built-ins, and each function a user defines with
# rnnsym.elementwise); kept here so that an Apply node can find its function.

ACTIVATIONS: dict[str, Any] = {}


def get_activation(name: str) -> Any:
    """The registered elementwise function ``name`` (an ``Activation``)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        known = ", ".join(sorted(ACTIVATIONS))
        raise CellError(f"unknown elementwise function {name!r}; known: {known}") from None


def adjoint_symbol(symbol: MatrixSymbol) -> MatrixSymbol:
    """The symbol of ∇_{q(t)} L for a named quantity q(t)."""
    return MatrixSymbol(f"g_{symbol.name}", *symbol.shape)


def next_symbol(symbol: MatrixSymbol) -> MatrixSymbol:
    """The symbol of q(t+1)."""
    return MatrixSymbol(f"{symbol.name}_next", *symbol.shape)
