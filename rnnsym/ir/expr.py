"""User-facing expressions: thin wrappers over SymPy matrix expressions with cell semantics.

SymPy's own ``*`` is the matrix product and ``1 - z`` with a matrix ``z`` is an error; in a cell
``@`` is the matrix product, ``*`` between vectors is the elementwise (Hadamard) product and
scalars broadcast. A :class:`Term` implements exactly that, checks shapes when the expression is
written, and keeps the SymPy object in ``.expr`` (``sympy.latex(term)`` and ``term.subs(...)``
work on it directly).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np
import sympy as sp
from sympy import MatrixExpr, MatrixSymbol

from ..errors import CellError, ShapeError
from .activations import define
from .ops import (
    Apply,
    add,
    coeff_and_factors,
    get_activation,
    hadamard,
    mul,
    ones,
    shape_str,
    slice_rows,
    transpose,
)
from .ops import concat as concat_exprs

__all__ = ["Term", "Variable", "State", "apply", "as_term", "concat", "elementwise"]


def _describe(term: Term) -> str:
    return f"{sp.sstr(term.expr)} {shape_str(term.expr)}"


def _is_scalar(value) -> bool:
    if isinstance(value, (Term, MatrixExpr, bool, np.bool_)):
        return False
    if isinstance(value, numbers.Number):
        return True
    return isinstance(value, sp.Expr) and not value.is_Matrix


def _scalar(value) -> sp.Expr:
    """A scalar as an exact SymPy number: a float becomes the rational of its shortest repr.

    ``0.1`` is kept as 1/10, so the oracle can evaluate the cell at any precision; the
    generated code prints it back as ``0.1``. NumPy scalars are taken by value; complex
    numbers and symbols are refused (a coefficient to learn is a parameter).
    """
    if isinstance(value, numbers.Integral):
        return sp.Integer(int(value))
    if isinstance(value, numbers.Rational) and not isinstance(value, sp.Basic):
        return sp.Rational(int(value.numerator), int(value.denominator))  # Fraction(1, 3)
    if isinstance(value, numbers.Real) and not isinstance(value, sp.Basic):
        value = float(value)  # np.float64(0.5) -> 0.5 (its repr is not a number in NumPy 2)
        if not math.isfinite(value):
            raise CellError(f"scalars in a cell must be finite, got {value}")
        return sp.Rational(repr(value))
    if isinstance(value, numbers.Complex) and not isinstance(value, sp.Basic):
        raise CellError(f"scalars in a cell must be real numbers, got the complex {value!r}")
    result = sp.sympify(value, strict=True)
    if result.free_symbols:
        names = ", ".join(sorted(map(str, result.free_symbols)))
        raise CellError(
            f"the scalar {result} has free symbols ({names}); coefficients must be numbers. "
            f"A coefficient to learn is a parameter: cell.param(name, 1), or a vector "
            f"parameter multiplied elementwise"
        )
    if not result.is_number or result.is_real is not True:
        raise CellError(f"scalars in a cell must be real numbers, got {result}")
    if not result.is_finite:
        raise CellError(f"scalars in a cell must be finite, got {value}")
    return result


_UFUNC_OPERATORS = {
    "add": ("__add__", "__radd__"),
    "subtract": ("__sub__", "__rsub__"),
    "multiply": ("__mul__", "__rmul__"),
    "true_divide": ("__truediv__", None),
    "matmul": ("__matmul__", "__rmatmul__"),
}


def _plain_scalar(value):
    """A NumPy scalar as the Python number it holds; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def as_term(value, cell=None) -> Term:
    """Wrap a SymPy matrix expression (or return a Term unchanged)."""
    if isinstance(value, Term):
        return value
    if isinstance(value, MatrixExpr):
        return Term(value, cell)
    raise CellError(
        f"expected a cell expression (vector or matrix), got {value!r} of type "
        f"{type(value).__name__}"
    )


class Term:
    """An expression of a cell; ``.expr`` is the underlying SymPy matrix expression."""

    __slots__ = ("expr", "cell")
    __array_priority__ = 1000  # keep NumPy from broadcasting over a Term
    _op_priority = 100.0  # SymPy defers to Term: sympy.Integer(2) * term is a Term

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """NumPy scalars combine with a Term as Python numbers do; NumPy functions are refused.

        ``np.float64(0.5) * term`` is ``0.5 * term``; ``np.tanh(term)`` is an error naming the
        rnnsym function to use instead.
        """
        ops = _UFUNC_OPERATORS.get(ufunc.__name__)
        if method == "__call__" and ops is not None and len(inputs) == 2 and not kwargs:
            a, b = (_plain_scalar(v) for v in inputs)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                array = a if isinstance(a, np.ndarray) else b
                raise CellError(
                    f"a NumPy array (shape {array.shape}) cannot be part of a cell expression; "
                    f"declare it with cell.param(...) and pass its value to the kernel"
                )
            if isinstance(a, Term):
                return getattr(a, ops[0])(b)
            if ops[1] is not None:
                return getattr(b, ops[1])(a)
        term = next(v for v in inputs if isinstance(v, Term))
        name = ufunc.__name__
        hint = {
            "tanh": "rs.tanh",
            "exp": "rs.exp",
            "log": "rs.log",
            "maximum": "rs.relu",
            "true_divide": "division by a scalar (term / 2)",
        }.get(name, "rs.tanh, rs.sigmoid, rs.relu, rs.softplus, rs.exp, rs.log or rs.elementwise")
        raise CellError(
            f"np.{name} cannot be applied to the cell expression {_describe(term)}: a cell is "
            f"symbolic, not an array; use {hint}"
        )

    def __init__(self, expr: MatrixExpr, cell=None):
        self.expr = expr
        self.cell = cell

    # ----- SymPy interoperability -----

    @property
    def shape(self) -> tuple:
        return self.expr.shape

    def _sympy_(self) -> MatrixExpr:
        return self.expr

    def _latex(self, printer) -> str:
        return printer._print(self.expr)

    def _repr_latex_(self) -> str:
        return f"${sp.latex(self.expr)}$"

    def __repr__(self) -> str:
        return sp.sstr(self.expr)

    def subs(self, *args, **kwargs) -> Term:
        return Term(self.expr.subs(*args, **kwargs), self.cell)

    def xreplace(self, rule) -> Term:
        return Term(self.expr.xreplace(rule), self.cell)

    @property
    def free_symbols(self) -> set:
        return self.expr.free_symbols

    def __eq__(self, other) -> bool:
        other_expr = other.expr if isinstance(other, Term) else other
        return self.expr == other_expr

    def __hash__(self) -> int:
        return hash(self.expr)

    # ----- arithmetic -----

    def _cell_of(self, other: Term):
        if self.cell is not None and other.cell is not None and self.cell is not other.cell:
            raise CellError(
                f"cannot combine {_describe(self)} of cell {self.cell.name!r} with "
                f"{_describe(other)} of cell {other.cell.name!r}"
            )
        return self.cell if self.cell is not None else other.cell

    def _wrap(self, expr: MatrixExpr, other: Term | None = None) -> Term:
        cell = self.cell if other is None else self._cell_of(other)
        return Term(expr, cell)

    def _same_shape(self, other: Term, op: str) -> None:
        if self.shape != other.shape:
            raise ShapeError(f"cannot {op} {_describe(self)} and {_describe(other)}: shapes differ")

    def __matmul__(self, other) -> Term:
        if _is_scalar(other):
            raise ShapeError(
                f"'@' is the matrix product; to scale {_describe(self)} by {other} use '*'"
            )
        other = as_term(other, self.cell)
        if self.shape[1] != other.shape[0]:
            raise ShapeError(
                f"cannot multiply {_describe(self)} @ {_describe(other)}: inner dimensions "
                f"{self.shape[1]} and {other.shape[0]} differ"
            )
        return self._wrap(mul(self.expr, other.expr), other)

    def __rmatmul__(self, other) -> Term:
        if _is_scalar(other):
            raise ShapeError(
                f"'@' is the matrix product; to scale {_describe(self)} by {other} use '*'"
            )
        return as_term(other, self.cell).__matmul__(self)

    def __mul__(self, other) -> Term:
        if _is_scalar(other):
            return self._wrap(mul(_scalar(other), self.expr))
        other = as_term(other, self.cell)
        self._same_shape(other, "multiply elementwise ('*')")
        return self._wrap(hadamard(self.expr, other.expr), other)

    def __rmul__(self, other) -> Term:
        return self.__mul__(other)

    def __truediv__(self, other) -> Term:
        if not _is_scalar(other):
            raise CellError(
                f"only division by a scalar is supported, got {_describe(self)} / {other!r}"
            )
        if _scalar(other) == 0:
            raise CellError(f"division of {_describe(self)} by zero")
        return self._wrap(mul(1 / _scalar(other), self.expr))

    def __neg__(self) -> Term:
        return self._wrap(mul(-1, self.expr))

    def __pos__(self) -> Term:
        return self

    def _broadcast(self, scalar) -> MatrixExpr:
        return mul(_scalar(scalar), ones(*self.shape))

    def __add__(self, other) -> Term:
        if _is_scalar(other):
            return self._wrap(add(self.expr, self._broadcast(other)))
        other = as_term(other, self.cell)
        self._same_shape(other, "add")
        return self._wrap(add(self.expr, other.expr), other)

    def __radd__(self, other) -> Term:
        if _is_scalar(other):
            return self._wrap(add(self._broadcast(other), self.expr))
        return as_term(other, self.cell).__add__(self)

    def __sub__(self, other) -> Term:
        if _is_scalar(other):
            return self._wrap(add(self.expr, self._broadcast(-_scalar(other))))
        other = as_term(other, self.cell)
        self._same_shape(other, "subtract")
        return self._wrap(add(self.expr, mul(-1, other.expr)), other)

    def __rsub__(self, other) -> Term:
        if _is_scalar(other):
            return self._wrap(add(self._broadcast(other), mul(-1, self.expr)))
        return as_term(other, self.cell).__sub__(self)

    @property
    def T(self) -> Term:
        return self._wrap(transpose(self.expr))

    def __getitem__(self, rows) -> Term:
        """Rows ``start:stop`` of a column vector, e.g. one gate of a stacked pre-activation."""
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise CellError(
                f"{_describe(self)} can only be sliced by rows, as v[start:stop]; got {rows!r}"
            )
        if self.shape[1] != 1:
            raise ShapeError(f"only column vectors can be sliced; {_describe(self)} is a matrix")
        size = self.shape[0]
        start = sp.sympify(0 if rows.start is None else rows.start)
        stop = sp.sympify(size if rows.stop is None else rows.stop)
        for bound, what in ((start, "start"), (stop, "stop")):
            if not (bound.is_integer or bound.is_Integer):
                raise CellError(
                    f"slice of {_describe(self)}: {what} must be an integer expression of the "
                    f"cell's sizes, got {bound!r}"
                )
        if (stop - start).is_positive is False or start.is_negative or ((size - stop).is_negative):
            raise ShapeError(
                f"slice [{start}:{stop}] of {_describe(self)} is empty or outside rows 0..{size}"
            )
        return self._wrap(slice_rows(self.expr, start, stop))


class Variable(Term):
    """A named leaf of a cell: input, state, parameter, target or output."""

    __slots__ = ("name", "kind")

    def __init__(self, symbol: MatrixSymbol, cell, kind: str):
        super().__init__(symbol, cell)
        self.name = symbol.name
        self.kind = kind

    @property
    def symbol(self) -> MatrixSymbol:
        return self.expr

    def __repr__(self) -> str:
        return self.name


class Target(Variable):
    """A per-step target y(t); ``y.prev`` is y(t−1), fed back as an input (teacher forcing)."""

    __slots__ = ()

    @property
    def prev(self) -> Variable:
        """y(t−1) as an input of the step, with y(0) = 0; the kernel fills it from the targets."""
        return self.cell._fed_back_input(self)


class State(Variable):
    """A recurrent state; ``h.prev`` is its value at the previous step, h(t−1)."""

    __slots__ = ("prev",)

    def __init__(self, symbol: MatrixSymbol, cell):
        super().__init__(symbol, cell, "state")
        prev_symbol = MatrixSymbol(f"{symbol.name}_prev", *symbol.shape)
        self.prev = Variable(prev_symbol, cell, "prev")


def concat(*parts) -> Term:
    """Column vectors stacked vertically, ``[h(t-1); x(t)]``, for one weight matrix on both."""
    if not parts:
        raise CellError("concat() needs at least one vector")
    terms = [as_term(p) for p in parts]
    for term in terms:
        if term.shape[1] != 1:
            raise ShapeError(
                f"concat: {_describe(term)} is not a column vector; only vectors are stacked"
            )
    cell = terms[0].cell
    for term in terms[1:]:
        cell = Term(terms[0].expr, cell)._cell_of(term)
    return Term(concat_exprs(*[t.expr for t in terms]), cell)


def apply(name: str, x) -> Term:
    """Apply the registered elementwise function ``name`` to a cell expression."""
    get_activation(name)
    term = as_term(x)
    return Term(Apply(name, term.expr), term.cell)


def tanh(x) -> Term:
    """Elementwise hyperbolic tangent."""
    return apply("tanh", x)


def sigmoid(x) -> Term:
    """Elementwise logistic sigmoid 1 / (1 + exp(−z))."""
    return apply("sigmoid", x)


def relu(x) -> Term:
    """Elementwise max(0, z)."""
    return apply("relu", x)


def softplus(x) -> Term:
    """Elementwise log(1 + exp(z))."""
    return apply("softplus", x)


def exp(x) -> Term:
    """Elementwise exponential."""
    return apply("exp", x)


def sqrt(x) -> Term:
    """Elementwise square root (of a nonnegative argument)."""
    return apply("sqrt", x)


def log(x) -> Term:
    """Elementwise natural logarithm.

    ``log(sigmoid(a))`` is built as the single function log σ(a), which the kernel computes as
    −softplus(−a): the composition would give log 0 = −∞ and ∞·0 = NaN in the gradient once σ
    underflows (a ≲ −745 in float64). ``log(1 - sigmoid(a))`` is log σ(−a) likewise (1 − σ(a)
    rounds to 0 already for a ≳ 37). The two are equal; only the computation differs.
    """
    term = as_term(x)
    if isinstance(term.expr, Apply) and term.expr.name == "sigmoid":
        return Term(Apply("log_sigmoid", term.expr.arg), term.cell)
    negated = _one_minus_sigmoid(term.expr)
    if negated is not None:  # log(1 − σ(a)) = log σ(−a): 1 − σ(a) rounds to 0 for a ≳ 37
        return Term(Apply("log_sigmoid", mul(-1, negated)), term.cell)
    return apply("log", term)


def _one_minus_sigmoid(expr):
    """``a`` if ``expr`` is 1 − σ(a), else None."""
    if not isinstance(expr, sp.MatAdd) or len(expr.args) != 2:
        return None
    ones_ = [a for a in expr.args if isinstance(a, sp.OneMatrix)]
    rest = [a for a in expr.args if not isinstance(a, sp.OneMatrix)]
    if len(ones_) != 1 or len(rest) != 1:
        return None
    coeff, factors = coeff_and_factors(rest[0])
    if coeff == -1 and len(factors) == 1:
        (inner,) = factors
        if isinstance(inner, Apply) and inner.name == "sigmoid":
            return inner.arg
    return None


def log_sigmoid(x) -> Term:
    """Elementwise log σ(z) = −softplus(−z), stable for large |z|."""
    return apply("log_sigmoid", x)


def elementwise(name: str, function) -> Callable[[Term], Term]:
    """Make an elementwise activation from a scalar SymPy function.

    ``function`` is a one-argument callable returning a SymPy expression (``lambda z: z /
    (1 + sympy.Abs(z))``) or a ``sympy.Lambda``. Returns a function that applies it to a cell
    expression. Its derivative is derived by SymPy when a cell using it is derived.
    """
    lam = define(name, function)

    def applied(x):
        return apply(name, x)

    applied.__name__ = name
    applied.__doc__ = f"Elementwise {name}(z) = {lam.expr.subs(lam.variables[0], sp.Symbol('z'))}."
    return applied
