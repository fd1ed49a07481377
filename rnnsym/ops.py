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

__all__ = [
    "Apply",
    "add",
    "mul",
    "hadamard",
    "transpose",
    "ones",
    "zeros",
    "is_zero",
    "coeff_and_factors",
    "leaves",
    "shape_str",
]


class Apply(MatrixExpr):
    """A scalar function applied to every entry of a matrix expression: ``Apply('tanh', a)``.

    The function is looked up by name in :mod:`rnnsym.activations`; the node stores only the
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
        from .activations import get_activation

        return get_activation(self.name)

    def _entry(self, i, j, **kwargs):
        return self.activation.scalar(self.arg._entry(i, j, **kwargs))

    def _eval_transpose(self) -> Apply:
        return Apply(self.name, transpose(self.arg))

    def _sympystr(self, printer) -> str:
        return f"{self.name}({printer._print(self.arg)})"

    def _latex(self, printer) -> str:
        return rf"{self.activation.latex}\left({printer._print(self.arg)}\right)"


def shape_str(expr: MatrixExpr) -> str:
    """The shape of a matrix expression written ``(n, 1)``."""
    rows, cols = expr.shape
    return f"({rows}, {cols})"


def ones(rows, cols=1) -> OneMatrix:
    return OneMatrix(rows, cols)


def zeros(rows, cols=1) -> ZeroMatrix:
    return ZeroMatrix(rows, cols)


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
    kept = [f for f in flat if not isinstance(f, OneMatrix)]
    if not kept:
        return mul(coeff, OneMatrix(*shape))
    body = kept[0] if len(kept) == 1 else HadamardProduct(*kept)
    return mul(coeff, body)


def transpose(expr: MatrixExpr) -> MatrixExpr:
    """Transpose, pushed down to the leaves (``(A B)ᵀ = Bᵀ Aᵀ``, ``(Aᵀ)ᵀ = A``)."""
    if isinstance(expr, Transpose):
        return expr.arg
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


def all_subexpressions(exprs: Iterable[Basic]) -> set[Basic]:
    """Every matrix subexpression of the given expressions."""
    found: set[Basic] = set()
    for expr in exprs:
        for node in sp.preorder_traversal(expr):
            if isinstance(node, MatrixExpr):
                found.add(node)
    return found
