"""Vector-Jacobian products of the IR's node types, in matrix form with symbolic sizes.

``primitive_vjps[NodeType](node, ans, g)`` returns one cotangent per argument of ``node``
(``None`` for an argument that is not a matrix), where ``g`` is the cotangent of the node's value
and ``ans`` names that value (the cell's symbol when the node is a named quantity, so that
tanh′ = 1 − h∘h reuses h). Rules are registered with :func:`defvjp`; a node type without a rule
raises :class:`~rnnsym.errors.DerivationError` naming it.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp
from sympy import HadamardProduct, MatAdd, MatMul, MatrixExpr, Transpose

from ..errors import DerivationError
from .ops import (
    Apply,
    Concat,
    LogSumExp,
    Pad,
    Slice,
    Softmax,
    coeff_and_factors,
    hadamard,
    mul,
    slice_rows,
    transpose,
)

__all__ = ["primitive_vjps", "defvjp", "vjp"]

VJPRule = Callable[[MatrixExpr, MatrixExpr, MatrixExpr], list]

primitive_vjps: dict[type, VJPRule] = {}


def defvjp(node_type: type, rule: VJPRule) -> None:
    """Register the vector-Jacobian product of a node type."""
    primitive_vjps[node_type] = rule


def vjp(node: MatrixExpr, ans: MatrixExpr, g: MatrixExpr) -> list:
    """Cotangents of ``node``'s arguments given the cotangent ``g`` of its value."""
    for cls in type(node).__mro__:
        rule = primitive_vjps.get(cls)
        if rule is not None:
            return rule(node, ans, g)
    raise DerivationError(
        f"no derivative rule for {type(node).__name__} in {sp.sstr(node)}; supported: "
        f"{', '.join(sorted(t.__name__ for t in primitive_vjps))}"
    )


# ----- Linear nodes: the VJP is the transpose of the map -----

defvjp(MatAdd, lambda node, ans, g: [g for _ in node.args])
defvjp(Transpose, lambda node, ans, g: [transpose(g)])


def _matmul_vjp(node: MatMul, ans, g) -> list:
    # d(c A1 ⋯ Ak) w.r.t. Ai:  c (A1 ⋯ Ai-1)ᵀ g (Ai+1 ⋯ Ak)ᵀ
    coeff, factors = coeff_and_factors(node)
    cotangents: list = []
    position = 0
    for arg in node.args:
        if not isinstance(arg, MatrixExpr):
            cotangents.append(None)
            continue
        left = [transpose(f) for f in reversed(factors[:position])]
        right = [transpose(f) for f in reversed(factors[position + 1 :])]
        cotangents.append(mul(coeff, *left, g, *right))
        position += 1
    return cotangents


defvjp(MatMul, _matmul_vjp)


# ----- Concatenation and slicing: linear, each the other's transpose -----


def _concat_vjp(node: Concat, ans, g) -> list:
    # d[a; b] w.r.t. a:  the rows of g where a sits
    return [
        slice_rows(g, offset, offset + arg.shape[0])
        for offset, arg in zip(node.offsets(), node.args, strict=True)
    ]


defvjp(Concat, _concat_vjp)
defvjp(Slice, lambda node, ans, g: [Pad(g, node.args[1], node.args[0].shape[0]), None, None])
defvjp(
    Pad,
    lambda node, ans, g: [
        slice_rows(g, node.args[1], node.args[1] + node.args[0].shape[0]),
        None,
        None,
    ],
)


# ----- Reductions -----

# d logsumexp(a) w.r.t. a:  softmax(a) g  (g is 1×1)
defvjp(LogSumExp, lambda node, ans, g: [mul(Softmax(node.args[0]), g)])


def _softmax_vjp(node, ans, g) -> list:
    raise DerivationError(
        f"softmax inside a cell ({sp.sstr(node)}) has no derivative rule yet; use "
        f"rs.softmax_cross_entropy(o, y) for a softmax output with its loss"
    )


defvjp(Softmax, _softmax_vjp)


# ----- Elementwise nodes -----


def _hadamard_vjp(node: HadamardProduct, ans, g) -> list:
    # d(A1 ∘ ⋯ ∘ Ak) w.r.t. Ai:  g ∘ (product of the others)
    args = node.args
    return [hadamard(g, *(args[:i] + args[i + 1 :])) for i in range(len(args))]


defvjp(HadamardProduct, _hadamard_vjp)


def _apply_vjp(node: Apply, ans, g) -> list:
    # d f(a) w.r.t. a:  f′(a) ∘ g, with f′ written in terms of ans = f(a) where possible
    act = node.activation
    if act.derivative is None:
        raise DerivationError(f"{act.name} has no derivative rule (in {sp.sstr(node)})")
    return [None, hadamard(act.derivative(node.arg, ans), g)]


defvjp(Apply, _apply_vjp)
