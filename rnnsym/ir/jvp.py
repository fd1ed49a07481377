"""Jacobian-vector products of the IR's node types: forward mode, twin of :mod:`rnnsym.ir.rules`.

``primitive_jvps[NodeType](node, ans, tangents)`` returns the tangent of ``node``'s value given one
tangent per argument of ``node`` (``None`` for an argument that is not a matrix, a ``ZeroMatrix``
for one that does not vary); ``ans`` names the node's value as in the VJP rules, so that
tanh′ = 1 − h∘h reuses h. A tangent is an IR expression of the node's shape built with the
canonicalising constructors of :mod:`rnnsym.ir.ops`. Rules are registered with :func:`defjvp`; a
node type without a rule raises :class:`~rnnsym.errors.DerivationError` naming it.

Tangents start at the parameters. The tangent of a parameter P is its variation δP taken along
every entry of P at once (one tangent per entry, stacked along an extra leading axis in code), so
it is written with two node types of its own::

    Direction(P)           δP of a matrix parameter: only a factor of a product δP r
    Seed(P, r, z, a, b)    z ∘ (δP r)[a:b]: the variation of z ∘ (P r)[a:b] along P's entries

A matrix parameter's ``Direction`` becomes a ``Seed`` in the product rule (``c L P r`` gives
``c L Seed(P, r)``); a vector parameter u is ``Seed(u, 1, 1)`` from the start (r is then the 1×1
one). Elementwise factors and row slices fold into a seed's ``z`` and ``[a:b]``, so the tangent of
``tanh(W h + b)`` is ``(1 − h∘h) ∘ (δW h) + (1 − h∘h) ∘ δb``: two seeds, each of them zero except
on the entries of its own parameter.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp
from sympy import HadamardProduct, MatAdd, MatMul, MatrixExpr, MatrixSymbol, Transpose, ZeroMatrix
from sympy.core.basic import Basic

from ..errors import DerivationError
from .ops import (
    Apply,
    Concat,
    LogSumExp,
    Pad,
    Slice,
    Softmax,
    add,
    coeff_and_factors,
    concat,
    hadamard,
    is_zero,
    mul,
    ones,
    postorder,
    slice_rows,
    transpose,
)

__all__ = [
    "Direction",
    "Seed",
    "primitive_jvps",
    "defjvp",
    "jvp",
    "param_tangent",
    "tangent",
    "seed_terms",
]


class Direction(MatrixExpr):
    """δP: the variation of a matrix parameter P along all of its entries."""

    def __new__(cls, param: MatrixSymbol) -> Direction:
        return Basic.__new__(cls, param)

    @property
    def param(self) -> MatrixSymbol:
        return self.args[0]

    @property
    def shape(self) -> tuple:
        return self.param.shape

    def _sympystr(self, printer) -> str:
        return f"δ{printer._print(self.param)}"


class Seed(MatrixExpr):
    """z ∘ (δP r)[a:b]: the variation of z ∘ (P r)[a:b] along every entry of the parameter P.

    For the entry (i, j) of P it is the vector whose row i − a is z_(i−a) r_j (zero if i is not
    in [a, b)). A vector parameter u has r = 1 (1×1): ``Seed(u, 1, z, a, b)`` is z ∘ δu[a:b].
    """

    def __new__(cls, param: MatrixSymbol, r: MatrixExpr, z: MatrixExpr, start, stop) -> Seed:
        return Basic.__new__(cls, param, r, z, sp.sympify(start), sp.sympify(stop))

    @property
    def param(self) -> MatrixSymbol:
        return self.args[0]

    @property
    def shape(self) -> tuple:
        return (self.args[4] - self.args[3], sp.S.One)

    def scaled(self, factor: MatrixExpr) -> Seed:
        """This seed times ``factor`` elementwise."""
        param, r, z, start, stop = self.args
        return Seed(param, r, hadamard(z, factor), start, stop)

    def sliced(self, start, stop) -> Seed:
        """Rows ``start:stop`` of this seed."""
        param, r, z, a, _ = self.args
        rows = ones(stop - start, 1) if isinstance(z, sp.OneMatrix) else slice_rows(z, start, stop)
        return Seed(param, r, rows, a + start, a + stop)

    def _sympystr(self, printer) -> str:
        param, r, z, start, stop = self.args
        rows = param.shape[0]
        body = f"δ{printer._print(param)}"
        if param.shape[1] != 1:
            body = f"({body} {_paren(printer, r)})"
        if sp.simplify(start) != 0 or sp.simplify(stop - rows) != 0:
            if param.shape[1] == 1:
                body = f"({body})"
            body = f"{body}[{printer._print(start)}:{printer._print(stop)}]"
        if isinstance(z, sp.OneMatrix):
            return body
        return f"{_paren(printer, z)} ∘ {body}"


def _paren(printer, expr) -> str:
    text = printer._print(expr)
    atomic = (MatrixSymbol, Apply, Concat, Slice, sp.OneMatrix, Direction, Seed)
    return text if isinstance(expr, atomic) else f"({text})"


def param_tangent(param: MatrixSymbol) -> MatrixExpr:
    """δP for a parameter: a ``Direction`` for a matrix, a ``Seed`` for a vector."""
    rows, cols = param.shape
    if cols == 1:
        return Seed(param, ones(1, 1), ones(rows, 1), 0, rows)
    return Direction(param)


def seed_terms(expr: MatrixExpr) -> tuple[list[tuple[sp.Expr, Seed]], list[MatrixExpr]]:
    """Split a tangent into its terms ``c · Seed`` as (c, seed) pairs and the other terms."""
    seeds, others = [], []
    for term in expr.args if isinstance(expr, MatAdd) else (expr,):
        coeff, factors = coeff_and_factors(term)
        if len(factors) == 1 and isinstance(factors[0], Seed):
            seeds.append((coeff, factors[0]))
        elif len(factors) == 1 and isinstance(factors[0], MatAdd):  # c (a + b): c a + c b
            inner_seeds, inner_others = seed_terms(factors[0])
            seeds.extend((coeff * c, seed) for c, seed in inner_seeds)
            others.extend(mul(coeff, t) for t in inner_others)
        elif not is_zero(term):
            others.append(term)
    return seeds, others


def _scaled(tangent: MatrixExpr, *factors: MatrixExpr) -> MatrixExpr:
    """``tangent ∘ factors``, folded into the ``z`` of each seed among its terms."""
    seeds, others = seed_terms(tangent)
    terms = [mul(c, seed.scaled(hadamard(*factors))) for c, seed in seeds]
    if others:
        terms.insert(0, hadamard(*factors, add(*others)))
    return add(*terms) if terms else ZeroMatrix(*tangent.shape)


def _sliced(tangent: MatrixExpr, start, stop) -> MatrixExpr:
    """Rows ``start:stop`` of a tangent, folded into the rows of each seed among its terms."""
    seeds, others = seed_terms(tangent)
    terms = [mul(c, seed.sliced(start, stop)) for c, seed in seeds]
    if others:
        terms.insert(0, slice_rows(add(*others), start, stop))
    return add(*terms) if terms else ZeroMatrix(stop - start, 1)


JVPRule = Callable[[MatrixExpr, MatrixExpr, list], MatrixExpr]

primitive_jvps: dict[type, JVPRule] = {}


def defjvp(node_type: type, rule: JVPRule) -> None:
    """Register the Jacobian-vector product of a node type."""
    primitive_jvps[node_type] = rule


def jvp(node: MatrixExpr, ans: MatrixExpr, tangents: list) -> MatrixExpr:
    """The tangent of ``node`` given the tangents of its arguments."""
    if not isinstance(node, (MatMul, Transpose)):  # Transpose says why itself
        for t in tangents:
            if isinstance(t, Direction):
                raise DerivationError(
                    f"forward mode needs the parameter {t.param.name} as a factor of a matrix "
                    f"product with a vector ({t.param.name} v); it appears in "
                    f"{type(node).__name__} {sp.sstr(node)}"
                )
    for cls in type(node).__mro__:
        rule = primitive_jvps.get(cls)
        if rule is not None:
            return rule(node, ans, tangents)
    raise DerivationError(
        f"no forward-mode rule for {type(node).__name__} in {sp.sstr(node)}; supported: "
        f"{', '.join(sorted(t.__name__ for t in primitive_jvps))}"
    )


def tangent(root: MatrixExpr, ans: MatrixExpr, leaf_tangents: dict) -> MatrixExpr:
    """The tangent of ``root`` given the tangents of some of its leaves (the others are fixed).

    ``ans`` names the value of ``root`` (its symbol in the cell), as in the VJP rules.
    """
    tangents: dict = {}
    for node in postorder([root]):
        if isinstance(node, MatrixSymbol):
            tangents[node] = leaf_tangents.get(node, ZeroMatrix(*node.shape))
            continue
        args = [tangents[a] if isinstance(a, MatrixExpr) else None for a in node.args]
        if all(t is None or is_zero(t) for t in args):
            tangents[node] = ZeroMatrix(*node.shape)
            continue
        value = jvp(node, ans if node == root else node, args)
        if value.shape != node.shape:
            raise DerivationError(
                f"internal error: tangent of {sp.sstr(node)} has shape {value.shape}, "
                f"expected {node.shape} (rule for {type(node).__name__})"
            )
        tangents[node] = value
    return tangents[root]


def _zero_if_none(args, tangents) -> list:
    return [
        ZeroMatrix(*a.shape) if t is None else t
        for a, t in zip(args, tangents, strict=True)
        if isinstance(a, MatrixExpr)
    ]


# ----- Linear nodes: the tangent is the same map applied to the tangents -----

defjvp(MatAdd, lambda node, ans, ts: add(*_zero_if_none(node.args, ts)))


def _transpose_jvp(node: Transpose, ans, ts) -> MatrixExpr:
    (t,) = ts
    if isinstance(t, Direction):
        raise DerivationError(
            f"forward mode cannot seed the transposed parameter {sp.sstr(node)}; write the "
            f"update with {t.param.name} itself, not its transpose"
        )
    return transpose(t)


defjvp(Transpose, _transpose_jvp)


def _matmul_jvp(node: MatMul, ans, ts) -> MatrixExpr:
    # d(c A1 ⋯ Ak) = Σ_i c A1 ⋯ Ai-1 dAi Ai+1 ⋯ Ak; a parameter's δP with its right part r
    # is the seed of P r
    coeff, factors = coeff_and_factors(node)
    tangents = [t for a, t in zip(node.args, ts, strict=True) if isinstance(a, MatrixExpr)]
    terms = []
    for i, t in enumerate(tangents):
        if t is None or is_zero(t):
            continue
        left, right = factors[:i], factors[i + 1 :]
        if isinstance(t, Direction):
            r = mul(*right) if right else None
            if r is None or r.shape[1] != 1:
                raise DerivationError(
                    f"forward mode needs the parameter {t.param.name} multiplied by a vector "
                    f"on its right; it appears in {sp.sstr(node)}"
                )
            rows = t.param.shape[0]
            terms.append(mul(coeff, *left, Seed(t.param, r, ones(rows, 1), 0, rows)))
        else:
            terms.append(mul(coeff, *left, t, *right))
    return add(*terms)


defjvp(MatMul, _matmul_jvp)


# ----- Concatenation, slicing and padding: linear -----

defjvp(Concat, lambda node, ans, ts: concat(*_zero_if_none(node.args, ts)))
defjvp(Slice, lambda node, ans, ts: _sliced(ts[0], node.args[1], node.args[2]))
defjvp(Pad, lambda node, ans, ts: Pad(ts[0], node.args[1], node.args[2]))


# ----- Reductions -----

# d logsumexp(a) = softmax(a)ᵀ da
defjvp(LogSumExp, lambda node, ans, ts: mul(transpose(Softmax(node.args[0])), ts[0]))


def _softmax_jvp(node, ans, ts) -> MatrixExpr:
    raise DerivationError(
        f"softmax inside a cell ({sp.sstr(node)}) has no derivative rule yet; use "
        f"rs.softmax_cross_entropy(o, y) for a softmax output with its loss"
    )


defjvp(Softmax, _softmax_jvp)


# ----- Elementwise nodes -----


def _hadamard_jvp(node: HadamardProduct, ans, ts) -> MatrixExpr:
    # d(A1 ∘ ⋯ ∘ Ak) = Σ_i dAi ∘ (product of the others)
    args = node.args
    terms = [
        _scaled(t, *(args[:i] + args[i + 1 :]))
        for i, t in enumerate(ts)
        if t is not None and not is_zero(t)
    ]
    return add(*terms)


defjvp(HadamardProduct, _hadamard_jvp)


def _apply_jvp(node: Apply, ans, ts) -> MatrixExpr:
    # d f(a) = f′(a) ∘ da, with f′ written in terms of ans = f(a) where possible
    act = node.activation
    if act.derivative is None:
        raise DerivationError(f"{act.name} has no derivative rule (in {sp.sstr(node)})")
    return _scaled(ts[1], act.derivative(node.arg, ans))


defjvp(Apply, _apply_jvp)
