"""Per-step losses L(t); the total loss is their sum over t (and over the batch)."""

from __future__ import annotations

import sympy as sp
from sympy import Transpose

from .errors import ShapeError
from .ir.expr import Term, as_term
from .ir.ops import LogSumExp, add, mul, shape_str

__all__ = ["squared_error", "linear_loss", "softmax_cross_entropy"]


def squared_error(output, target) -> Term:
    """½ (o − y)ᵀ (o − y), eq. (5) of the report; its gradient w.r.t. o is o − y."""
    o, y = as_term(output), as_term(target)
    if o.shape != y.shape or o.shape[1] != 1:
        raise ShapeError(
            f"squared_error: output {sp.sstr(o.expr)} {shape_str(o.expr)} and target "
            f"{sp.sstr(y.expr)} {shape_str(y.expr)} must be column vectors of the same size"
        )
    diff = add(o.expr, mul(-1, y.expr))
    # Transpose(diff) is kept as one node so the printer sees ½ dᵀd (one dot product)
    return Term(mul(sp.Rational(1, 2), Transpose(diff), diff), o._cell_of(y))


def linear_loss(weights, states) -> Term:
    """⟨d|h⟩ = dᵀh, the loss linear in the states used in the lecture slides."""
    d, h = as_term(weights), as_term(states)
    if d.shape != h.shape or d.shape[1] != 1:
        raise ShapeError(
            f"linear_loss: {sp.sstr(d.expr)} {shape_str(d.expr)} and {sp.sstr(h.expr)} "
            f"{shape_str(h.expr)} must be column vectors of the same size"
        )
    return Term(mul(Transpose(d.expr), h.expr), d._cell_of(h))


def softmax_cross_entropy(logits, target) -> Term:
    """−Σ_i y_i log softmax(o)_i = logsumexp(o) − yᵀo for a probability (or one-hot) target y.

    *Deep Learning* eqs. (10.18)–(10.28): its gradient w.r.t. o is softmax(o) − y (for Σ y = 1).
    The kernel computes logsumexp and softmax with the maximum subtracted, so they do not
    overflow.
    """
    o, y = as_term(logits), as_term(target)
    if o.shape != y.shape or o.shape[1] != 1:
        raise ShapeError(
            f"softmax_cross_entropy: logits {sp.sstr(o.expr)} {shape_str(o.expr)} and target "
            f"{sp.sstr(y.expr)} {shape_str(y.expr)} must be column vectors of the same size"
        )
    return Term(add(LogSumExp(o.expr), mul(-1, Transpose(y.expr), o.expr)), o._cell_of(y))
