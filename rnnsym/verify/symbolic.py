"""The scalar oracle: the cell unrolled into scalar SymPy nodes, each differentiated by
``sympy.diff``, against the matrix-form derivation evaluated step by step (mpmath)."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy import ImmutableMatrix

from ..cell import Cell
from ..derive import Derivation, adjoint_symbol, derive
from ..ir.explicit import concrete, concrete_shape, explicit, forward_envs
from ..problems import concrete_sizes
from .scalar_graph import GUARD_DIGITS, ScalarGraph, compile_cell_steps


@dataclass
class OracleReport:
    """Agreement between the exact gradient of the unrolled loss (``sympy.diff``, node by node
    or of the whole loss) and the derivation, per parameter."""

    sizes: dict[str, int]
    T: int
    digits: int
    agreement: dict[str, float]  # agreeing significant digits (worst entry), per parameter
    required: int
    seconds: float
    method: str = "node"  # how the oracle differentiated: "node" or "whole-loss"
    oracle_seconds: float | None = None  # the oracle's share of ``seconds``

    @property
    def ok(self) -> bool:
        return all(d >= self.required for d in self.agreement.values())

    def __str__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        worst = min(self.agreement.values()) if self.agreement else float("inf")
        status = "ok" if self.ok else "FAILED"
        shown = "exact" if math.isinf(worst) else f"{worst:.0f} digits"
        how = {
            "node": "sympy.diff node by node over the unrolled graph",
            "whole-loss": "sympy.diff of the unrolled loss",
        }.get(self.method, self.method)
        timing = f"{self.seconds:.1f} s"
        if self.oracle_seconds is not None:
            timing += f", oracle {self.oracle_seconds:.1f} s"
        return (
            f"scalar oracle ({sizes}, T={self.T}, {how}, "
            f"{self.digits}-digit mpmath): worst agreement {shown} "
            f"(need {self.required}) — {status} [{timing}]"
        )


def _oracle_size(i: int) -> int:
    return 2 + i % 2  # tiny: the unrolled scalar loss swells fast


def _rational(rng: random.Random) -> sp.Rational:
    return sp.Rational(rng.randint(-9, 9), 10) + sp.Rational(rng.choice((1, -1)), 37)


def _random_matrix(rng, rows, cols) -> ImmutableMatrix:
    return ImmutableMatrix(rows, cols, [_rational(rng) for _ in range(rows * cols)])


def _agreement(a: sp.Expr, b: sp.Expr, digits: int) -> float:
    a, b = sp.Float(a, digits), sp.Float(b, digits)
    scale = max(abs(a), abs(b))
    if scale == 0 or a == b:
        return float("inf")
    return float(-sp.log(abs(a - b) / scale, 10))


def _evaluate_derivatives(total, param_syms: dict, point: dict, digits: int) -> dict:
    """∂total/∂θ for every parameter entry θ by ``sympy.diff``, evaluated with mpmath.

    The derivatives are compiled with ``lambdify`` (common subexpressions shared) and
    evaluated at ``digits`` significant digits; substituting and calling ``evalf`` on each
    swollen derivative is an order of magnitude slower.
    """
    import mpmath

    symbols = list(point)
    entries = [s for matrix in param_syms.values() for s in matrix]
    derivatives = [sp.diff(total, s) for s in entries]
    function = sp.lambdify(symbols, derivatives, modules="mpmath", cse=True)
    with mpmath.workdps(digits + 10):
        values = function(*[mpmath.mpf(v.p) / v.q for v in point.values()])
        numbers = [sp.Float(v, digits) for v in values]
    result, at = {}, 0
    for name, matrix in param_syms.items():
        size = len(matrix)
        result[name] = ImmutableMatrix(*matrix.shape, numbers[at : at + size])
        at += size
    return result


@dataclass
class UnrolledPoint:
    """A random rational point of a cell unrolled over T steps, at concrete sizes.

    ``symbols[t][name]`` is the matrix of scalar symbols of parameter ``name`` at step t
    (the same matrices at every step when the weights are tied); ``point`` gives each symbol a
    rational value; ``data[t]`` holds the inputs and targets of step t.
    """

    cell: Cell
    dims: dict
    T: int
    untied: bool
    symbols: list[dict[str, ImmutableMatrix]]
    point: dict
    data: list[dict[str, ImmutableMatrix]]

    def values(self, digits: int) -> list[dict[str, ImmutableMatrix]]:
        """The parameter values of every step, evaluated at ``digits`` digits."""
        cache: dict = {}
        out = []
        for step in self.symbols:
            values = {}
            for name, matrix in step.items():
                if matrix not in cache:
                    cache[matrix] = matrix.xreplace(self.point).evalf(digits)
                values[name] = cache[matrix]
            out.append(values)
        return out


def unrolled_point(
    cell: Cell,
    T: int,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    untied: bool = False,
) -> UnrolledPoint:
    """Random rational parameters and data for ``cell`` over ``T`` steps (tiny default sizes)."""
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"unrolled_point: T={T!r} steps; expected an integer >= 1")
    dims = concrete_sizes(cell, sizes, _oracle_size)
    rng = random.Random(seed)

    def shape(var):
        return concrete_shape(var.symbol, dims)

    def matrices(suffix: str) -> dict[str, ImmutableMatrix]:
        return {
            n: ImmutableMatrix(
                *shape(p), lambda i, j, n=n: sp.Symbol(f"{n}{suffix}_{i}_{j}", real=True)
            )
            for n, p in cell.params.items()
        }

    if untied:
        symbols = [matrices(f"({t + 1})") for t in range(T)]
    else:
        symbols = [matrices("")] * T
    # drawn in a fixed order (steps, parameters as declared, entries row by row)
    point = {}
    for step in symbols if untied else symbols[:1]:
        for matrix in step.values():
            for s in matrix:
                point[s] = _rational(rng)
    data = _scalar_data(cell, dims, T, rng, {})
    return UnrolledPoint(cell, dims, T, untied, symbols, point, data)


def _run_forward(d: Derivation, problem: UnrolledPoint, params: list[dict], evaluate) -> list:
    """Per-step environments {concrete symbol: matrix} of the unrolled cell (h(0) = 0)."""
    return forward_envs(d, problem.dims, params, problem.data, {}, evaluate)


def oracle_gradients(
    problem: UnrolledPoint, digits: int = 60, derivation=None, method: str = "node"
) -> dict:
    """The exact gradient of the unrolled total loss, evaluated at ``problem.point``.

    Returns {name: matrix} for tied weights and {name: [matrix per step]} for untied ones.
    Only the forward equations of the cell are used, none of rnnsym's derivatives.

    ``method="node"`` (the default) differentiates the unrolled graph node by node: each named
    equation's local Jacobian by ``sympy.diff``, chained in reverse in mpmath
    (:mod:`rnnsym.verify.scalar_graph`); its cost grows linearly in T and in the number of entries.
    ``method="whole-loss"`` writes the total loss out as one scalar expression and
    differentiates it with ``sympy.diff``: the same exact gradient, at a cost that swells fast
    with T and the sizes (kept as an independent check of the first).
    """
    if method == "node":
        return _node_oracle(problem, digits)
    if method != "whole-loss":
        raise ValueError(f"oracle_gradients: method must be 'node' or 'whole-loss', got {method!r}")
    cell, dims = problem.cell, problem.dims
    d = derivation or derive(cell)
    envs = _run_forward(d, problem, problem.symbols, lambda m: m)
    total = sp.Add(*[explicit(d.loss_expr, dims, env)[0, 0] for env in envs])
    if not problem.untied:
        return _evaluate_derivatives(total, problem.symbols[0], problem.point, digits)
    flat = {(n, t): step[n] for t, step in enumerate(problem.symbols) for n in step}
    values = _evaluate_derivatives(total, flat, problem.point, digits)
    return {n: [values[(n, t)] for t in range(problem.T)] for n in cell.params}


def _as_matrices(grads: dict, shapes: dict, digits: int) -> dict:
    """{key: entries} from :meth:`ScalarGraph.gradients` as SymPy matrices of ``digits``-digit
    Floats."""
    import mpmath

    with mpmath.workdps(digits + GUARD_DIGITS):
        return {
            k: ImmutableMatrix(*shapes[k], [sp.Float(v, digits) for v in entries])
            for k, entries in grads.items()
        }


def _node_oracle(problem: UnrolledPoint, digits: int) -> dict:
    cell, dims = problem.cell, problem.dims
    graph = ScalarGraph()
    params, shapes = [], {}
    for t, step in enumerate(problem.symbols):
        keys = {}
        for n, matrix in step.items():
            key = ("param", n, t if problem.untied else 0)
            if key not in graph.sources:
                graph.source(matrix.xreplace(problem.point), key)
                shapes[key] = matrix.shape
            keys[n] = key
        params.append(keys)
    graph.steps(cell, compile_cell_steps(cell, dims), dims, params, problem.data)
    _, grads = graph.gradients(list(shapes), digits)
    values = _as_matrices(grads, shapes, digits)
    if not problem.untied:
        return {n: values[("param", n, 0)] for n in cell.params}
    return {n: [values[("param", n, t)] for t in range(problem.T)] for n in cell.params}


def bptt_gradients(problem: UnrolledPoint, digits: int = 60, derivation=None) -> dict:
    """The matrix-form derivation (eqs. (6)–(9)) evaluated step by step at ``problem.point``.

    Returns {name: matrix} (summed over t) for tied weights and {name: [matrix per step]} for
    untied ones (each step's term is the gradient of that step's own parameter).
    """
    d = (derivation or derive(problem.cell)).inlined()
    run = _bptt(d, problem.dims, problem.values(digits), problem.data, {}, digits)
    if problem.untied:
        return run.params
    return {n: _sum(terms, digits) for n, terms in run.params.items()}


def _sum(terms: list, digits: int) -> ImmutableMatrix:
    return sum(terms[1:], terms[0]).evalf(digits)


@dataclass
class _BpttRun:
    """A derivation evaluated over one sequence: forward environments, each step's parameter
    terms, each step's input adjoints (``input_terms``) and the adjoints of h(0)."""

    envs: list[dict]
    params: dict[str, list]
    inputs: dict[str, list]
    h0: dict[str, ImmutableMatrix]


def _bptt(
    d: Derivation, dims: dict, params: list[dict], data: list[dict], h0: dict, digits: int
) -> _BpttRun:
    """Run the (inlined) derivation ``d`` forward and backward over ``data`` in SymPy Floats of
    ``digits`` digits: eqs. (6)–(9) and their generalisation, step by step."""
    cell = d.cell

    def num(m):
        return m.evalf(digits)

    T = len(data)
    envs = forward_envs(d, dims, params, data, h0, num)
    per_step: dict[str, list] = {n: [None] * T for n in cell.params}
    inputs: dict[str, list] = {n: [None] * T for n in d.input_terms}
    carry: dict[str, ImmutableMatrix] = {}
    for t in reversed(range(T)):
        env = envs[t]
        for n, expr in d.output_adjoints.items():
            symbol = concrete(adjoint_symbol(cell.outputs[n].symbol), dims)
            env[symbol] = num(explicit(expr, dims, env))
        for n in reversed(list(cell.updates)):
            state = cell.states[n]
            total_adjoint = ImmutableMatrix.zeros(*concrete_shape(state.symbol, dims))
            for term in d.state_local[n]:
                total_adjoint += explicit(term, dims, env)
            if n in carry:
                total_adjoint += carry[n]
            env[concrete(adjoint_symbol(state.symbol), dims)] = num(total_adjoint)
        for n, term in d.param_terms.items():
            per_step[n][t] = num(explicit(term, dims, env))
        for n, term in d.input_terms.items():
            inputs[n][t] = num(explicit(term, dims, env))
        carry = {n: num(explicit(expr, dims, env)) for n, expr in d.carry.items()}
    return _BpttRun(envs, per_step, inputs, carry)


def agreement_digits(a, b, digits: int = 60) -> float:
    """Worst number of agreeing significant digits between two matrices (or lists of them)."""
    if isinstance(a, list):
        return min(agreement_digits(x, y, digits) for x, y in zip(a, b, strict=True))
    return min(_agreement(x, y, digits) for x, y in zip(a, b, strict=True))


# The scalar oracle's defaults: distinct sizes 3, 4, 5, ... (a transposed or misplaced index
# cannot cancel) and T = 6 steps (a term reaching back more than a step or two shows); the
# node-by-node oracle's cost grows linearly in T, so this stays around a second for gated cells.
ORACLE_T = 6


def _scalar_oracle_size(i: int) -> int:
    return 3 + i


def scalar_oracle(
    cell: Cell,
    sizes: dict[str, int] | None = None,
    T: int | None = None,
    seed: int = 0,
    digits: int = 60,
    required: int = 40,
    derivation: Derivation | None = None,
    method: str = "node",
) -> OracleReport:
    """Check the derivation against the exact gradient of the scalar-unrolled loss.

    Defaults: sizes 3, 4, 5, ... in name order, ``T = ORACLE_T`` steps, evaluation at
    ``digits`` = 60 significant digits, ``required`` = 40 agreeing digits per parameter entry.
    ``method`` is the oracle's (see :func:`oracle_gradients`).
    """
    start = time.perf_counter()
    T = ORACLE_T if T is None else T
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"scalar_oracle: T={T!r} steps; expected an integer >= 1")
    d = derivation or derive(cell)
    chosen = {s.name: v for s, v in concrete_sizes(cell, sizes, _scalar_oracle_size).items()}
    problem = unrolled_point(cell, T, chosen, seed)
    # 1. the oracle: exact local derivatives of the unrolled graph (or of the whole loss)
    oracle_start = time.perf_counter()
    oracle = oracle_gradients(problem, digits, d, method=method)
    oracle_seconds = time.perf_counter() - oracle_start
    # 2. the matrix-form derivation, evaluated step by step at the same point
    grads = bptt_gradients(problem, digits, d)
    agreement = {n: agreement_digits(oracle[n], grads[n], digits) for n in cell.params}
    return OracleReport(
        sizes={s.name: v for s, v in problem.dims.items()},
        T=T,
        digits=digits,
        agreement=agreement,
        required=required,
        seconds=time.perf_counter() - start,
        method=method,
        oracle_seconds=oracle_seconds,
    )


def _scalar_data(cell: Cell, dims: dict, T: int, rng: random.Random, given: dict) -> list[dict]:
    """Random rational data of a cell for T steps; fed-back inputs and contexts as the kernel
    builds them; ``given`` names inputs supplied by the model (other cells' states)."""
    data: list[dict] = []
    for t in range(T):
        step = {}
        for var in [*cell.targets.values(), *cell.inputs.values()]:
            rows = concrete_shape(var.symbol, dims)[0]
            if var.name in given:
                step[var.name] = given[var.name][t]
            elif var.name in cell.fed_back:  # teacher forcing: y(t-1), y(0) = 0
                target = cell.fed_back[var.name]
                step[var.name] = data[t - 1][target] if t else ImmutableMatrix.zeros(rows, 1)
            elif var.name in cell.context_inputs and t:  # one value for the sequence
                step[var.name] = data[0][var.name]
            elif var.name in cell.class_targets:  # a 1-of-K vector
                k = rng.randrange(rows)
                step[var.name] = ImmutableMatrix(rows, 1, lambda i, j, k=k: int(i == k))
            else:
                step[var.name] = _random_matrix(rng, rows, 1)
        data.append(step)
    return data


def _to_array(step_data: list[dict], name: str) -> np.ndarray:
    """(T, 1, size) float64 array of one name's column vectors over the steps."""
    return np.array([[[float(v) for v in step[name]]] for step in step_data])
