"""Exact evaluation of the IR: matrix expressions with concrete matrices bound to their symbols.

The checks' evaluator (the scalar oracle, the bra-ket form's numbers, the labels' test of
identity): SymPy matrices of exact or mpmath numbers, never floating-point NumPy.
"""

from __future__ import annotations

import sympy as sp
from sympy import ImmutableMatrix, MatrixSymbol

from .ops import Apply, Concat, LogSumExp, Pad, Slice, Softmax, coeff_and_factors

__all__ = ["concrete", "concrete_shape", "explicit", "forward_envs"]


def concrete_shape(expr, dims: dict) -> tuple[int, ...]:
    return tuple(int(s.xreplace(dims)) for s in expr.shape)


def concrete(symbol: MatrixSymbol, dims: dict) -> MatrixSymbol:
    return symbol.xreplace(dims)


def explicit(expr, dims: dict, env: dict) -> ImmutableMatrix:
    """Evaluate a matrix expression with concrete matrices bound to its symbols.

    A direct walk over the IR's node types: SymPy's generic ``as_explicit`` goes entry by entry
    through ``_entry`` and is two orders of magnitude slower on gated cells.
    """
    memo: dict = {}

    def ev(node):
        if node in memo:
            return memo[node]
        if isinstance(node, MatrixSymbol):
            value = env[node.xreplace(dims)]
        elif isinstance(node, sp.MatAdd):
            value = ev(node.args[0])
            for arg in node.args[1:]:
                value = value + ev(arg)
        elif isinstance(node, sp.MatMul):
            coeff, factors = coeff_and_factors(node)
            value = ev(factors[0])
            for factor in factors[1:]:
                value = value * ev(factor)
            value = value * coeff if coeff != 1 else value
        elif isinstance(node, sp.HadamardProduct):
            value = ev(node.args[0])
            for arg in node.args[1:]:
                value = value.multiply_elementwise(ev(arg))
        elif isinstance(node, sp.Transpose):
            value = ev(node.arg).T
        elif isinstance(node, Apply):
            value = ev(node.arg).applyfunc(node.activation.scalar)
        elif isinstance(node, LogSumExp):
            entries = list(ev(node.args[0]))
            value = ImmutableMatrix([[sp.log(sp.Add(*[sp.exp(e) for e in entries]))]])
        elif isinstance(node, Softmax):
            entries = ev(node.args[0])
            total = sp.Add(*[sp.exp(e) for e in entries])
            value = entries.applyfunc(lambda e: sp.exp(e) / total)
        elif isinstance(node, Concat):
            value = ImmutableMatrix.vstack(*[ev(a) for a in node.args])
        elif isinstance(node, Slice):
            arg, start, stop = node.args
            value = ev(arg)[int(start.xreplace(dims)) : int(stop.xreplace(dims)), :]
        elif isinstance(node, Pad):
            arg, start, total = node.args
            inner = ev(arg)
            before = int(start.xreplace(dims))
            after = int(total.xreplace(dims)) - before - inner.shape[0]
            value = ImmutableMatrix.vstack(
                ImmutableMatrix.zeros(before, 1), inner, ImmutableMatrix.zeros(after, 1)
            )
        elif isinstance(node, sp.OneMatrix):
            value = ImmutableMatrix.ones(*concrete_shape(node, dims))
        elif isinstance(node, sp.ZeroMatrix):
            value = ImmutableMatrix.zeros(*concrete_shape(node, dims))
        elif isinstance(node, sp.Identity):
            value = ImmutableMatrix.eye(concrete_shape(node, dims)[0])
        else:
            value = ImmutableMatrix(node.xreplace(dims).xreplace(env).as_explicit())
        memo[node] = ImmutableMatrix(value)
        return memo[node]

    return ev(expr)


def forward_envs(d, dims: dict, params: list[dict], data: list[dict], h0: dict, evaluate) -> list:
    """Per-step environments {concrete symbol: matrix} of ``d.cell`` run over ``data``
    (``data[t]``: input and target matrices of step t, ``params[t]``: parameter matrices),
    from the initial states ``h0`` (zeros where missing), with the derivation's forward
    equations."""
    cell = d.cell
    envs = []
    prev = {
        n: h0[n] if n in h0 else ImmutableMatrix.zeros(*concrete_shape(s.symbol, dims))
        for n, s in cell.states.items()
    }
    for t, step in enumerate(data):
        env = {concrete(p.symbol, dims): params[t][n] for n, p in cell.params.items()}
        for var in [*cell.inputs.values(), *cell.targets.values()]:
            if var.name in step:
                env[concrete(var.symbol, dims)] = step[var.name]
        for n, s in cell.states.items():
            env[concrete(s.prev.symbol, dims)] = prev[n]
        for n in cell.updates:
            value = evaluate(explicit(d.update_expr(n), dims, env))
            env[concrete(cell.states[n].symbol, dims)] = value
        for n in cell.output_defs:
            env[concrete(cell.outputs[n].symbol, dims)] = evaluate(
                explicit(d.output_expr(n), dims, env)
            )
        prev = {n: env[concrete(s.symbol, dims)] for n, s in cell.states.items()}
        envs.append(env)
    return envs
