"""Independent checks of a derivation and of a generated kernel.

* :func:`scalar_oracle` unrolls the cell for small concrete sizes and T into a graph of scalar
  SymPy nodes, differentiates it node by node with ``sympy.diff`` of each local scalar function
  (:mod:`rnnsym.oracle`; nothing of rnnsym's derivation or derivative rules is used), and
  compares with the matrix-form derivation evaluated step by step; both are evaluated with
  mpmath at ``digits`` significant digits at a random rational point.
* :func:`check_kernel` checks a kernel (any object with ``loss_and_grad``, ``forward`` and
  ``vjp``) against a NumPy interpreter of the cell's own equations: loss, states and outputs,
  every gradient entry (complex-step derivatives of the interpreter) and ``vjp()``'s adjoints,
  at random distinct sizes ≥ 7, T ≥ 8, B ≥ 3 and nonzero h(0), in float64 and float32.
* :func:`check_gradients` compares a kernel's gradients with central finite differences at
  data you give it.
* :func:`verify` runs the scalar oracle and :func:`check_kernel`: the report ``rnnsym derive``
  and ``rnnsym verify`` print.

The oracle is exact arithmetic's stand-in at small sizes (3, 4, 5, ..., T = 6 by default);
the kernel checks cover realistic sizes and lengths.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from sympy import ImmutableMatrix, MatrixSymbol

from .cell import Cell
from .derive import Derivation, adjoint_symbol, derive
from .display import attach_certificate
from .errors import RnnsymError
from .ir.explicit import concrete, concrete_shape, explicit, forward_envs
from .ir.ops import Apply, Concat, LogSumExp, Pad, Slice, Softmax, coeff_and_factors
from .oracle import GUARD_DIGITS, ScalarGraph, compile_cell_steps

__all__ = [
    "OracleReport",
    "GradientReport",
    "VerificationReport",
    "UnrolledPoint",
    "unrolled_point",
    "oracle_gradients",
    "bptt_gradients",
    "agreement_digits",
    "scalar_oracle",
    "check_gradients",
    "random_problem",
    "verify",
    "check_kernel",
    "kernel_problem",
    "KernelProblem",
    "KernelReport",
    "Check",
]


# ----- the scalar oracle -----


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


def _concrete_sizes(cell: Cell, sizes: dict | None, default) -> dict[sp.Symbol, int]:
    """A value for every size symbol: ``sizes[name]`` if given, else ``default(i)`` for the
    i-th size in name order (distinct sizes catch transposition mistakes)."""
    chosen = {}
    for i, (name, symbol) in enumerate(sorted(cell.size_symbols.items())):
        chosen[symbol] = int((sizes or {}).get(name, default(i)))
    return chosen


def _oracle_size(i: int) -> int:
    return 2 + i % 2  # tiny: the unrolled scalar loss swells fast


def _problem_size(i: int) -> int:
    return 3 + i


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
    dims = _concrete_sizes(cell, sizes, _oracle_size)
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
    (:mod:`rnnsym.oracle`); its cost grows linearly in T and in the number of entries.
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
    chosen = {s.name: v for s, v in _concrete_sizes(cell, sizes, _scalar_oracle_size).items()}
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


# ----- finite differences -----


@dataclass
class GradientReport:
    """Relative error ‖g_fd − g‖ / max(‖g_fd‖, ‖g‖) of each parameter's gradient.

    ``floors[name]`` is the rounding noise of the differences relative to that scale
    (|L| ε / eps per entry): a parameter passes when its error is within ``tolerance`` plus
    its floor, so a gradient tiny relative to the loss raises no false alarm.
    """

    errors: dict[str, float]
    eps: float
    tolerance: float
    floors: dict[str, float] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max(self.errors.values()) if self.errors else 0.0

    def passes(self, name: str) -> bool:
        error = self.errors[name]
        return bool(np.isfinite(error)) and error <= self.tolerance + self.floors.get(name, 0.0)

    @property
    def ok(self) -> bool:
        return all(self.passes(n) for n in self.errors)

    def __getitem__(self, name: str) -> float:
        return self.errors[name]

    def __str__(self) -> str:
        width = max((len(n) for n in self.errors), default=4)
        lines = [
            f"central finite differences (eps={self.eps:g}, float64), relative error per "
            f"parameter (tolerance {self.tolerance:g}):"
        ]
        for name, err in self.errors.items():
            mark = "ok" if self.passes(name) else "FAILED"
            floor = self.floors.get(name, 0.0)
            note = f"  (rounding floor {floor:.1e} added)" if floor > 0.01 * self.tolerance else ""
            lines.append(f"  {name.ljust(width)}  {err:9.2e}  {mark}{note}")
        return "\n".join(lines)


# rounding noise of one central difference: each loss carries about |L| ε of rounding
# (measured ≤ 1 |L| ε / eps per entry on a loss of 20 with gradients of 1e-6); 8 is the margin
_NOISE_MARGIN = 8.0


def check_gradients(
    kernel,
    params: dict,
    inputs: dict,
    targets: dict,
    h0=None,
    eps: float = 1e-6,
    tolerance: float = 1e-6,
    **options,
) -> GradientReport:
    """Central finite differences of the kernel's loss against its gradients, in float64.

    The tolerance is relative: central differences have truncation error O(eps²), about 1e-12
    here, and rounding error |L| ε / eps per entry, which is large relative to a gradient that
    is tiny relative to the loss. That rounding floor (times a margin of 8, times √entries for
    the norm) is added to ``tolerance`` per parameter and shown in the report.
    """

    def as64(v):  # class indices stay integers
        v = np.asarray(v)
        return v if v.dtype.kind in "iu" else v.astype(np.float64)

    params64 = {n: as64(v) for n, v in params.items()}
    inputs64 = {n: as64(v) for n, v in inputs.items()}
    targets64 = {n: as64(v) for n, v in targets.items()}
    if h0 is not None:
        options["h0"] = {n: as64(v) for n, v in h0.items()} if isinstance(h0, dict) else as64(h0)

    def loss_and_grad():
        return kernel.loss_and_grad(params64, inputs64, targets64, **options)

    loss, grads = loss_and_grad()
    epsilon = np.finfo(np.float64).eps
    errors, floors = {}, {}
    for name, value in params64.items():
        numeric = np.zeros_like(value)
        flat = value.reshape(-1)
        out = numeric.reshape(-1)
        largest = abs(float(loss))
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + eps
            plus = float(loss_and_grad()[0])
            flat[i] = saved - eps
            minus = float(loss_and_grad()[0])
            flat[i] = saved
            out[i] = (plus - minus) / (2 * eps)
            largest = max(largest, abs(plus), abs(minus))
        scale = max(np.linalg.norm(numeric), np.linalg.norm(grads[name]), 1e-300)
        errors[name] = float(np.linalg.norm(numeric - grads[name]) / scale)
        noise = _NOISE_MARGIN * largest * epsilon / eps * math.sqrt(flat.size)
        floors[name] = float(noise / scale)
    return GradientReport(errors=errors, eps=eps, tolerance=tolerance, floors=floors)


def random_problem(
    cell: Cell, sizes: dict[str, int] | None = None, T: int = 5, B: int = 2, seed: int = 0
):
    """Random float64 (params, inputs, targets) for a cell at concrete sizes."""
    rng = np.random.default_rng(seed)
    dims = _concrete_sizes(cell, sizes, _problem_size)

    def shape(var):
        return concrete_shape(var.symbol, dims)

    params = {}
    for n, p in cell.params.items():
        rows, cols = shape(p)
        scale = 0.8 / math.sqrt(cols) if cols > 1 else 0.3
        vector = p.symbol.shape[1] == 1  # a vector parameter, not a matrix that has 1 column
        params[n] = rng.normal(0.0, scale, size=(rows,) if vector else (rows, cols))
    inputs = {}
    for n, v in cell.inputs.items():
        if n in cell.fed_back:
            continue  # filled from the targets by the kernel (teacher forcing)
        size = (B, shape(v)[0]) if n in cell.context_inputs else (T, B, shape(v)[0])
        inputs[n] = rng.normal(size=size)
    targets = {}
    for n, v in cell.targets.items():
        if n in cell.class_targets:
            targets[n] = rng.integers(0, shape(v)[0], size=(T, B))
        else:
            targets[n] = rng.normal(size=(T, B, shape(v)[0]))
    return params, inputs, targets


# ----- the kernel against the cell's definition -----

# Tolerances of rs.verify's kernel checks, each an error relative to the scale of the compared
# quantity (its largest entry). Why these values:
#  * float64 kernel vs the float64 reference interpreter: both round every operation at
#    ε = 1.1e-16, in a different order. Measured on every built-in cell (both modes, three
#    seeds, T ≤ 11): ≤ 1.1e-15 for the loss, states, outputs and gradients. 1e-9 leaves a 10⁵
#    margin for worse-conditioned user cells and is still far below any real mistake (a wrong
#    term, sign or index shows at 1e-4 or more).
#  * float32 kernel vs the float64 reference evaluated at the same float32-rounded point, so
#    only the kernel's float32 arithmetic (ε₃₂ = 6e-8) differs: measured ≤ 5e-7 (≈ 8 ε₃₂) on
#    the same runs; 1e-4 (≈ 1700 ε₃₂) leaves a 200× margin for rounding growing along T.
#  * gradients: the reference is the complex-step derivative of the interpreter, free of
#    cancellation: accurate to ~1e-15 relative to the gradient itself, not to the loss, so a
#    gradient tiny relative to the loss is checked as precisely as a large one. A parameter
#    whose gradient is below 1e-6 of the largest one is compared on that 1e-6 scale.
#  * directional central differences of the kernel's own float64 loss (steps h and h/2 with
#    Richardson extrapolation, truncation O(h⁴) ≈ 1e-12 at h = 1e-3): measured ≤ 1e-10; 1e-6
#    plus the rounding floor 10 |L| ε / h (relative to the gradient), so a gradient tiny
#    relative to the loss raises no false alarm here either.
TOLERANCE_64 = 1e-9
TOLERANCE_32 = 1e-4
TOLERANCE_FD = 1e-6
# gradients when the cell has a function the complex step cannot take (none of the built-in or
# branch-wise ones; e.g. re, floor): the reference is then Richardson-extrapolated central
# differences at h = 1e-3, accurate to ~1e-9 on smooth functions (truncation O(h⁴)) but only
# O(h) for an entry whose pre-activation lies within h of a kink; 1e-4 in both dtypes
TOLERANCE_RICHARDSON = 1e-4
_COMPLEX_STEP = 1e-20
_ANALYTIC = {"tanh", "sigmoid", "exp", "log", "reciprocal", "softplus", "log_sigmoid", "relu"}
_NOT_ANALYTIC = (sp.floor, sp.ceiling, sp.Piecewise, sp.re, sp.im, sp.conjugate, sp.arg)


def _pick(larger: bool):
    def pick(*args):
        best = args[0]
        for other in args[1:]:
            better = other.real > best.real if larger else other.real < best.real
            best = np.where(better, other, best)
        return best

    return pick


# piecewise-analytic functions by the branch the real part selects: exact for the complex step
# everywhere except exactly at the kink
_BRANCHES = {
    "_branch_abs": lambda a: np.where(a.real >= 0, a, -a),
    "_branch_max": _pick(True),
    "_branch_min": _pick(False),
    "_branch_sign": lambda a: np.sign(a.real) + 0 * a,
    "_branch_step": lambda a, *_: np.where(a.real > 0, 1.0, np.where(a.real < 0, 0.0, 0.5)) + 0 * a,
}
_BRANCH_OF = {
    sp.Abs: "_branch_abs",
    sp.Max: "_branch_max",
    sp.Min: "_branch_min",
    sp.sign: "_branch_sign",
    sp.Heaviside: "_branch_step",
}


def _softplus(z):
    """log(1 + e^z) without overflow, for real and complex z."""
    positive = z.real > 0
    above, below = np.where(positive, z, 0), np.where(positive, 0, z)
    return np.where(positive, above + np.log1p(np.exp(-above)), np.log1p(np.exp(below)))


_FUNCTIONS = {  # numerically safe for real and complex arguments (complex step)
    "tanh": np.tanh,
    "sigmoid": lambda z: 0.5 * (1.0 + np.tanh(0.5 * z)),
    "exp": np.exp,
    "log": np.log,
    "reciprocal": lambda z: 1.0 / z,
    "softplus": _softplus,
    "log_sigmoid": lambda z: -_softplus(-z),
    "relu": lambda z: np.where(z.real > 0, z, 0.0 * z),
    "step": lambda z: np.where(z.real > 0, 1.0, 0.0) + 0.0 * z,
}


def _activation_function(activation) -> tuple:
    """(numpy function, analytic?) for an activation, from its own scalar definition when it is
    not a built-in one."""
    if activation.name in _FUNCTIONS:
        return _FUNCTIONS[activation.name], activation.name in _ANALYTIC
    z = sp.Symbol("z", real=True)
    body = sp.sympify(activation.scalar(z))
    branched = body
    for kind, name in _BRANCH_OF.items():
        branched = branched.replace(kind, sp.Function(name))
    analytic = not branched.has(*_NOT_ANALYTIC)
    numeric = sp.lambdify(z, branched, modules=[_BRANCHES, "numpy"])
    exact = sp.lambdify(z, body, modules="mpmath")

    def function(x):
        try:
            with np.errstate(all="ignore"):
                value = numeric(x)
            return np.broadcast_to(value, np.shape(x)) + 0 * x
        except (TypeError, NameError, AttributeError, ValueError):
            flat = [
                complex(exact(complex(v))) if np.iscomplexobj(x) else float(exact(float(v)))
                for v in np.ravel(x)
            ]
            return np.array(flat).reshape(np.shape(x))

    return function, analytic


class _Reference:
    """The cell's forward equations evaluated by a small NumPy interpreter of the IR.

    No generated code and none of rnnsym's derivative rules are involved: each node type of
    :mod:`rnnsym.ir.ops` is evaluated directly, for every batch entry (and every perturbation of
    the complex step) at once. Values have shape (P, B, rows, cols).
    """

    def __init__(self, cell: Cell, dims: dict):
        self.cell, self.dims = cell, dims
        self.steps = [(cell._vars[n].symbol, cell.step_term(k, n).expr) for k, n in cell.order]
        self.outputs = [(cell.outputs[n].symbol, t.expr) for n, t in cell.output_defs.items()]
        self.loss = cell.loss_expr
        self.functions: dict[str, tuple] = {}
        self.analytic = True
        for expr in [e for _, e in self.steps + self.outputs] + [self.loss]:
            for node in sp.preorder_traversal(expr):
                if isinstance(node, Apply) and node.name not in self.functions:
                    self.functions[node.name] = _activation_function(node.activation)
                    self.analytic &= self.functions[node.name][1]

    def _int(self, value) -> int:
        return int(sp.sympify(value).xreplace(self.dims))

    def _eval(self, node, env: dict, memo: dict):
        if node in memo:
            return memo[node]
        if isinstance(node, MatrixSymbol):
            value = env[node]
        elif isinstance(node, sp.MatAdd):
            value = self._eval(node.args[0], env, memo)
            for arg in node.args[1:]:
                value = value + self._eval(arg, env, memo)
        elif isinstance(node, sp.MatMul):
            coeff, factors = coeff_and_factors(node)
            value = self._eval(factors[0], env, memo)
            for factor in factors[1:]:
                value = np.matmul(value, self._eval(factor, env, memo))
            if coeff != 1:
                if not coeff.is_number or not coeff.is_real:
                    raise RnnsymError(
                        f"verify: the coefficient {coeff} of {node} is not a real number"
                    )
                value = float(coeff) * value
        elif isinstance(node, sp.HadamardProduct):
            value = self._eval(node.args[0], env, memo)
            for arg in node.args[1:]:
                value = value * self._eval(arg, env, memo)
        elif isinstance(node, sp.Transpose):
            value = np.swapaxes(self._eval(node.arg, env, memo), -1, -2)
        elif isinstance(node, Apply):
            with np.errstate(over="ignore", under="ignore"):
                value = self.functions[node.name][0](self._eval(node.arg, env, memo))
        elif isinstance(node, (LogSumExp, Softmax)):
            z = self._eval(node.args[0], env, memo)
            top = np.max(z.real, axis=-2, keepdims=True)
            e = np.exp(z - top)
            total = np.sum(e, axis=-2, keepdims=True)
            value = top + np.log(total) if isinstance(node, LogSumExp) else e / total
        elif isinstance(node, Concat):
            parts = [self._eval(a, env, memo) for a in node.args]
            lead = np.broadcast_shapes(*[p.shape[:-2] for p in parts])
            parts = [np.broadcast_to(p, lead + p.shape[-2:]) for p in parts]
            value = np.concatenate(parts, axis=-2)
        elif isinstance(node, Slice):
            arg, start, stop = node.args
            value = self._eval(arg, env, memo)[..., self._int(start) : self._int(stop), :]
        elif isinstance(node, Pad):
            arg, start, total = node.args
            inner = self._eval(arg, env, memo)
            before = self._int(start)
            after = self._int(total) - before - inner.shape[-2]
            width = [(0, 0)] * (inner.ndim - 2) + [(before, after), (0, 0)]
            value = np.pad(inner, width)
        elif isinstance(node, (sp.OneMatrix, sp.ZeroMatrix, sp.Identity)):
            rows, cols = (self._int(s) for s in node.shape)
            if isinstance(node, sp.Identity):
                value = np.eye(rows)
            else:
                value = np.full((rows, cols), 1.0 if isinstance(node, sp.OneMatrix) else 0.0)
        else:
            raise RnnsymError(
                f"verify: the reference evaluator has no rule for {type(node).__name__} "
                f"({node}) in cell {self.cell.name!r}"
            )
        memo[node] = value
        return value

    def run(self, params: dict, inputs: dict, targets: dict, h0: dict, T: int) -> dict:
        """Evaluate T steps. ``params[name]`` is (P, 1, rows, cols) or (rows, cols); ``inputs``
        and ``targets`` map names to (T, P, B, size) arrays (a context input: (P, B, size));
        ``h0`` maps state names to (P, B, size). Returns the per-(t, P, B) loss terms
        ``"loss"`` (T, P, B) and every state and output as (T, P, B, size)."""
        cell = self.cell
        env: dict = {}
        for n, p in cell.params.items():
            value = np.asarray(params[n])
            env[p.symbol] = value[..., None] if value.ndim in (1, 3) else value
        prev = {n: np.asarray(v)[..., None] for n, v in h0.items()}
        record: dict[str, list] = {n: [] for n in [*cell.states, *cell.output_defs]}
        losses = []
        for t in range(T):
            for n, var in cell.inputs.items():
                value = inputs[n] if n in cell.context_inputs else inputs[n][t]
                env[var.symbol] = value[..., None]
            for n, var in cell.targets.items():
                env[var.symbol] = targets[n][t][..., None]
            for n, s in cell.states.items():
                env[s.prev.symbol] = prev[n]
            memo: dict = {}
            for symbol, expr in self.steps:
                env[symbol] = self._eval(expr, env, memo)
            for symbol, expr in self.outputs:
                env[symbol] = self._eval(expr, env, memo)
            losses.append(self._eval(self.loss, env, memo)[..., 0, 0])
            for n in record:
                record[n].append(env[cell._vars[n].symbol][..., 0])
            prev = {n: env[s.symbol] for n, s in cell.states.items()}
        out = {n: np.stack(np.broadcast_arrays(*v)) for n, v in record.items()}
        out["loss"] = np.stack(np.broadcast_arrays(*losses))
        return out


@dataclass
class KernelProblem:
    """One random problem of :func:`verify`: arrays as the kernel takes them (float64), the
    same data prepared as the kernel prepares it (context inputs, fed-back y(t-1), 1-of-K
    targets), and the concrete sizes."""

    sizes: dict[str, int]
    T: int
    B: int
    params: dict
    inputs: dict  # without fed-back inputs: loss_and_grad fills them from the targets
    targets: dict
    h0: dict
    prepared_inputs: dict  # every input, fed-back ones filled, (T, B, size) or context (B, size)
    prepared_targets: dict  # (T, B, size), class indices as 1-of-K rows


def kernel_problem(
    cell: Cell,
    seed: int = 0,
    T: int | None = None,
    B: int | None = None,
    input_scale: float = 1.0,
) -> KernelProblem:
    """Random distinct sizes ≥ 7, T ≥ 8, B ≥ 3 and a nonzero h(0) for the kernel checks;
    the inputs are standard normal times ``input_scale``."""
    rng = np.random.default_rng([seed, 20260])
    names = sorted(cell.size_symbols)
    drawn = rng.choice(np.arange(7, 7 + len(names) + 4), size=len(names), replace=False)
    sizes = {name: int(v) for name, v in zip(names, drawn, strict=True)}
    T = int(rng.integers(8, 12)) if T is None else T
    B = int(rng.integers(3, 5)) if B is None else B
    params, inputs, targets = random_problem(cell, sizes, T=T, B=B, seed=int(rng.integers(2**31)))
    inputs = {n: input_scale * v for n, v in inputs.items()}
    dims = {cell.size_symbols[n]: v for n, v in sizes.items()}
    h0 = {
        n: 0.5 * rng.normal(size=(B, concrete_shape(s.symbol, dims)[0]))
        for n, s in cell.states.items()
    }
    prepared_targets = {}
    for n, v in cell.targets.items():
        if n in cell.class_targets:
            prepared_targets[n] = np.eye(concrete_shape(v.symbol, dims)[0])[targets[n]]
        else:
            prepared_targets[n] = targets[n]
    prepared_inputs = dict(inputs)
    for n, target in cell.fed_back.items():
        shifted = np.zeros_like(prepared_targets[target])
        shifted[1:] = prepared_targets[target][:-1]  # y(t-1), y(0) = 0, as the kernel does
        prepared_inputs[n] = shifted
    return KernelProblem(
        sizes, T, B, params, inputs, targets, h0, prepared_inputs, prepared_targets
    )


def _reference_arrays(problem: KernelProblem, dtype) -> tuple:
    """The problem's data rounded to ``dtype`` and back to float64 (what a float32 kernel
    sees), shaped for :meth:`_Reference.run` with one perturbation (P = 1)."""

    def r(v):
        return np.asarray(v).astype(dtype).astype(np.float64)

    params = {n: r(v) for n, v in problem.params.items()}
    params = {n: v[:, None] if v.ndim == 1 else v for n, v in params.items()}
    inputs = {
        n: r(v)[..., None, :, :] if v.ndim == 3 else r(v)[None]
        for n, v in problem.prepared_inputs.items()
    }
    targets = {n: r(v)[:, None] for n, v in problem.prepared_targets.items()}
    h0 = {n: r(v)[None] for n, v in problem.h0.items()}
    return params, inputs, targets, h0


def _complex_gradients(ref: _Reference, problem: KernelProblem, dtype, groups) -> dict:
    """d(total loss)/d(entry) of the reference for every entry of the arrays in ``groups``
    (("params" | "inputs" | "h0", name)), by the complex step (analytic cells) or by
    Richardson-extrapolated central differences (cells with non-analytic user functions)."""
    params, inputs, targets, h0 = _reference_arrays(problem, dtype)
    data = {"params": params, "inputs": inputs, "h0": h0}
    out = {}
    for group, name in groups:
        base = data[group][name]
        if group == "params":
            core = base  # (rows, cols)
        elif group == "inputs" and base.ndim == 4:
            core = base[:, 0]  # (T, B, size)
        else:
            core = base[0]  # (B, size)
        size = core.size
        eye = np.eye(size).reshape((size, *core.shape))
        if ref.analytic:
            steps = [(1j * _COMPLEX_STEP, 1.0)]
        else:  # central differences at h and h/2, Richardson: (4 D(h/2) − D(h)) / 3
            h = 1e-3
            steps = [
                (h, -1 / (3 * 2 * h)),
                (-h, 1 / (3 * 2 * h)),
                (h / 2, 4 / (3 * h)),
                (-h / 2, -4 / (3 * h)),
            ]
        total = np.zeros(size)
        for step, weight in steps:
            moved = core[None] + step * eye  # (P, *core)
            if group == "params":
                value = moved[:, None]  # (P, 1, rows, cols)
            elif group == "inputs" and base.ndim == 4:
                value = np.moveaxis(moved, 0, 1)  # (T, P, B, size)
            else:
                value = moved  # (P, B, size)
            args = {**data, group: {**data[group], name: value}}
            loss = ref.run(args["params"], args["inputs"], targets, args["h0"], problem.T)
            total_loss = loss["loss"].sum(axis=(0, 2))
            if ref.analytic:
                total += total_loss.imag / _COMPLEX_STEP
            else:
                total += weight * total_loss
        out[(group, name)] = total.reshape(core.shape)
    return out


@dataclass
class Check:
    """One comparison of :func:`verify`: ``error`` (relative to the quantity's scale) against
    ``tolerance``; ``skipped`` with a reason when the kernel cannot be asked."""

    kind: str  # "loss", "forward", "gradient", "finite differences", "vjp input", "vjp h0"
    name: str  # the parameter, state, output or input it concerns ("" for the loss)
    dtype: str
    error: float = 0.0
    tolerance: float = 0.0
    note: str = ""
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.skipped or (bool(np.isfinite(self.error)) and self.error <= self.tolerance)

    def __str__(self) -> str:
        label = f"{self.kind} {self.name}".strip()
        if self.skipped:
            return f"{label:28s} {self.dtype:8s}  skipped: {self.note}"
        mark = "ok" if self.ok else "FAILED"
        note = f"  ({self.note})" if self.note else ""
        return f"{label:28s} {self.dtype:8s} {self.error:9.2e} ≤ {self.tolerance:.0e}  {mark}{note}"


@dataclass
class KernelReport:
    """Every check of a kernel against its cell, at one random problem."""

    sizes: dict[str, int]
    T: int
    B: int
    reference: str
    checks: list[Check]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def errors(self, kind: str, dtype: str = "float64") -> dict[str, float]:
        """{name: error} of the checks of one kind and dtype, e.g. ``errors("gradient")``."""
        return {c.name: c.error for c in self.checks if c.kind == kind and c.dtype == dtype}

    def __str__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        lines = [
            f"kernel checks ({sizes}, T={self.T}, B={self.B}, random nonzero h(0), float64 and "
            f"float32) against {self.reference}; error relative to each quantity's largest "
            f"entry:"
        ]
        lines += [f"  {c}" for c in self.checks]
        verdict = "ok" if self.ok else f"FAILED ({len(self.failed)} of {len(self.checks)})"
        lines.append(f"  kernel: {verdict} [{self.seconds:.1f} s]")
        return "\n".join(lines)


def _relative(got, want, scale: float) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    with np.errstate(invalid="ignore", over="ignore"):
        error = float(np.max(np.abs(got - want), initial=0.0))
    return error / scale if np.isfinite(error) else float("inf")


def _scale(want, floor: float = 0.0) -> float:
    return max(float(np.max(np.abs(want), initial=0.0)), floor, 1e-300)


def _as(d: dict, dtype) -> dict:
    return {
        n: v if np.asarray(v).dtype.kind in "iu" else np.asarray(v, dtype=dtype)
        for n, v in d.items()
    }


class _Failure(Exception):
    pass


def _call(what: str, function, *args):
    try:
        return function(*args)
    except Exception as exc:  # the kernel is the user's code: report, never crash
        raise _Failure(f"{what} raised {type(exc).__name__}: {exc}") from None


def check_kernel(
    cell: Cell,
    kernel,
    seed: int = 0,
    T: int | None = None,
    B: int | None = None,
    directions: int = 2,
    input_scale: float = 1.0,
) -> KernelReport:
    """Check a kernel (or any object with ``loss_and_grad``, ``forward`` and ``vjp``) against
    an independent evaluation of ``cell``'s definition; see :func:`verify`."""
    start = time.perf_counter()
    problem = kernel_problem(cell, seed, T, B, input_scale)
    dims = {cell.size_symbols[n]: v for n, v in problem.sizes.items()}
    ref = _Reference(cell, dims)
    method = (
        "complex-step derivatives"
        if ref.analytic
        else "Richardson central differences (non-analytic functions)"
    )
    checks: list[Check] = []
    h0_arg = dict(problem.h0) if cell.states else None
    has_vjp = hasattr(kernel, "vjp") and getattr(kernel, "mode", "reverse") != "forward"
    for dtype, tol, tol_grad in (
        (np.float64, TOLERANCE_64, TOLERANCE_64),
        (np.float32, TOLERANCE_32, TOLERANCE_32),
    ):
        label = np.dtype(dtype).name
        if not ref.analytic:  # the reference gradient itself is only good to ~1e-6
            tol_grad = max(tol_grad, TOLERANCE_RICHARDSON)
        want = ref.run(*_reference_arrays(problem, dtype), problem.T)
        params, inputs = _as(problem.params, dtype), _as(problem.inputs, dtype)
        targets = _as(problem.targets, dtype)
        h0 = None if h0_arg is None else _as(h0_arg, dtype)
        # loss
        try:
            loss, grads = _call("loss_and_grad", kernel.loss_and_grad, params, inputs, targets, h0)
            scale = _scale(np.abs(want["loss"]).sum())
            checks.append(Check("loss", "", label, _relative(loss, want["loss"].sum(), scale), tol))
        except _Failure as exc:
            checks.append(Check("loss", "", label, float("inf"), tol, str(exc)))
            grads = None
        # forward states and outputs
        fed = {n: v for n, v in problem.prepared_inputs.items() if n in cell.fed_back}
        try:
            states = _call("forward", kernel.forward, params, {**inputs, **_as(fed, dtype)}, h0)
            for n in [*cell.states, *cell.output_defs]:
                if not isinstance(states, dict) or n not in states:
                    checks.append(Check("forward", n, label, float("inf"), tol, "missing"))
                    continue
                expected = want[n][:, 0]
                checks.append(
                    Check(
                        "forward", n, label, _relative(states[n], expected, _scale(expected)), tol
                    )
                )
        except _Failure as exc:
            checks.append(Check("forward", "", label, float("inf"), tol, str(exc)))
        # gradients, every entry
        groups = [("params", n) for n in cell.params]
        if has_vjp:
            groups += [("inputs", n) for n in problem.prepared_inputs]
            groups += [("h0", n) for n in cell.states]
        exact = _complex_gradients(ref, problem, dtype, groups)
        top = max(_scale(exact[("params", n)]) for n in cell.params)
        for n in cell.params:
            want_g = exact[("params", n)]
            want_g = want_g.reshape(np.shape(problem.params[n]))
            if grads is None or not isinstance(grads, dict) or n not in grads:
                checks.append(Check("gradient", n, label, float("inf"), tol_grad, "missing"))
                continue
            # each gradient on its own scale; one below 1e-6 of the largest on that 1e-6
            scale = _scale(want_g, 1e-6 * top)
            checks.append(Check("gradient", n, label, _relative(grads[n], want_g, scale), tol_grad))
        # vjp: the adjoints of the inputs and of h(0)
        if has_vjp:
            try:
                result = _call("vjp", kernel.vjp, params, inputs, targets, h0)
                _, vgrads, input_grads, h0_grads = result
                for n in problem.prepared_inputs:
                    want_g = exact[("inputs", n)]
                    got = input_grads.get(n) if isinstance(input_grads, dict) else None
                    checks.append(
                        Check(
                            "vjp input", n, label, _relative(got, want_g, _scale(want_g)), tol_grad
                        )
                    )
                for n in cell.states:
                    want_g = exact[("h0", n)]
                    got = h0_grads.get(n) if isinstance(h0_grads, dict) else None
                    checks.append(
                        Check("vjp h0", n, label, _relative(got, want_g, _scale(want_g)), tol_grad)
                    )
                worst = 0.0
                for n in cell.params:
                    got = vgrads.get(n) if isinstance(vgrads, dict) else None
                    if grads is not None and n in grads:
                        worst = max(worst, _relative(got, grads[n], _scale(grads[n])))
                checks.append(
                    Check(
                        "vjp grads",
                        "",
                        label,
                        worst,
                        tol_grad,
                        "as loss_and_grad's, every parameter",
                    )
                )
            except (_Failure, TypeError, ValueError) as exc:
                checks.append(Check("vjp", "", label, float("inf"), tol_grad, str(exc)))
        elif dtype == np.float64:
            checks.append(
                Check("vjp", "", label, skipped=True, note="the kernel has no vjp() (forward mode)")
            )
    # directional central differences of the kernel's own float64 loss
    checks += _directional(cell, kernel, problem, h0_arg, directions, seed)
    sizes = dict(problem.sizes)
    report = KernelReport(
        sizes,
        problem.T,
        problem.B,
        f"a NumPy interpreter of the cell's equations ({method})",
        checks,
        time.perf_counter() - start,
    )
    attach_certificate(kernel, cell, report)  # an rnnsym Kernel shows it in Jupyter
    return report


def _directional(cell, kernel, problem, h0, directions: int, seed: int) -> list[Check]:
    """For each parameter, ``directions`` random unit directions v: the kernel's g·v against
    Richardson-extrapolated central differences of its own float64 loss."""
    rng = np.random.default_rng([seed, 3])
    params = _as(problem.params, np.float64)
    args = (
        _as(problem.inputs, np.float64),
        _as(problem.targets, np.float64),
        None if h0 is None else _as(h0, np.float64),
    )
    checks = []
    try:
        loss, grads = _call("loss_and_grad", kernel.loss_and_grad, params, *args)
    except _Failure as exc:
        return [Check("finite differences", "", "float64", float("inf"), TOLERANCE_FD, str(exc))]
    for n, value in params.items():
        worst, floor_worst = 0.0, 0.0
        for _ in range(directions):
            v = rng.normal(size=value.shape)
            v /= np.linalg.norm(v)
            analytic = (
                float(np.vdot(np.asarray(grads.get(n, np.nan)), v))
                if isinstance(grads, dict)
                else float("nan")
            )
            size = max(1.0, float(np.max(np.abs(value))))

            def at(step, n=n, value=value, v=v):
                moved = {**params, n: value + step * v}
                return float(_call("loss_and_grad", kernel.loss_and_grad, moved, *args)[0])

            # A step that carries a pre-activation across a kink (relu, abs, max) makes the
            # difference quotient wrong by O(1) for that entry. Such a crossing disappears as
            # the step shrinks, while a wrong gradient stays wrong at every step: so a smaller
            # step is tried when the first disagrees, and the best step counts.
            best = None
            for h in (1e-3 * size, 1e-5 * size, 1e-7 * size):
                try:
                    d1 = (at(h) - at(-h)) / (2 * h)
                    d2 = (at(h / 2) - at(-h / 2)) / h
                except _Failure as exc:
                    return [
                        *checks,
                        Check(
                            "finite differences", n, "float64", float("inf"), TOLERANCE_FD, str(exc)
                        ),
                    ]
                numeric = (4 * d2 - d1) / 3  # truncation O(h⁴)
                scale = max(
                    abs(numeric), abs(analytic), float(np.linalg.norm(grads.get(n, 0))), 1e-300
                )
                # rounding of the loss, |L| ε per evaluation, amplified by 1/h (with margin 10)
                floor = 10 * np.finfo(np.float64).eps * max(abs(float(loss)), 1e-300) / h / scale
                err = abs(numeric - analytic)
                rel = err / scale if np.isfinite(err) else float("inf")
                if best is None or rel - floor < best[0] - best[1]:
                    best = (rel, floor)
                if rel <= TOLERANCE_FD + floor:
                    break
            worst = max(worst, best[0])
            floor_worst = max(floor_worst, best[1])
        shown = floor_worst > 0.01 * TOLERANCE_FD
        note = f"rounding floor {floor_worst:.0e} added" if shown else ""
        checks.append(
            Check("finite differences", n, "float64", worst, TOLERANCE_FD + floor_worst, note)
        )
    return checks


# ----- both -----


@dataclass
class VerificationReport:
    """The oracle's check of the derivation and the checks of the kernel.

    ``kernel`` holds :func:`check_kernel`'s checks (cells); ``gradients`` the finite
    differences of a composed model (``verify_model``).
    """

    oracle: OracleReport | ModelOracleReport | None
    gradients: GradientReport | None = None
    notes: list[str] = field(default_factory=list)
    kernel: KernelReport | None = None

    @property
    def ok(self) -> bool:
        parts = [self.oracle, self.gradients, self.kernel]
        return all(p.ok for p in parts if p is not None)

    def __str__(self) -> str:
        lines = ["Verification"]
        if self.oracle is not None:
            lines.append(f"  {self.oracle}")
            if isinstance(self.oracle, OracleReport):
                for name, digits in self.oracle.agreement.items():
                    shown = "exact" if math.isinf(digits) else f"{digits:.0f} digits"
                    lines.append(f"    {name}: {shown}")
        for part in (self.kernel, self.gradients):
            if part is not None:
                lines.append("  " + str(part).replace("\n", "\n  "))
        lines.extend(f"  {note}" for note in self.notes)
        lines.append(f"  result: {'all checks passed' if self.ok else 'CHECKS FAILED'}")
        return "\n".join(lines)


LONG_ORACLE_T = 8  # the scalar oracle's cost grows with T; warn above this


def verify(
    cell: Cell,
    kernel=None,
    T: int | None = None,
    seed: int = 0,
    oracle: bool = True,
    directions: int = 2,
    input_scale: float = 1.0,
) -> VerificationReport:
    """Check a cell's derivation and a kernel for it; the report ``rnnsym verify`` prints.

    ``kernel`` is a compiled kernel or any object with ``loss_and_grad(params, inputs,
    targets, h0)``, ``forward(params, inputs, h0)`` and (optionally) ``vjp(...)``; it is only
    called through them. Default: ``rs.compile(cell)``. ``T`` is the scalar oracle's number of
    steps (default ``ORACLE_T``; ``oracle=False`` skips the oracle); the kernel is checked at
    random distinct sizes ≥ 7, T in 8..11, B in 3..4 and a random nonzero h(0), in float64 and
    float32 (drawn from ``seed``), see docs/verification.md.

    A composed model (``rs.bidirectional``, ``rs.seq2seq``, ``rs.last_output``) is checked by
    :func:`verify_model` (``T`` and ``seed`` passed on).
    """
    from .compose import Model
    from .kernel import compile_cell

    if isinstance(cell, Model):
        return verify_model(cell, kernel=kernel, T=T, seed=seed)
    if not isinstance(cell, Cell):
        raise TypeError(f"verify: expected an rnnsym.Cell, got {type(cell).__name__}")
    if T is None:
        T = ORACLE_T
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"verify: T={T!r} steps for the scalar oracle; expected an integer ≥ 1")
    if kernel is None:
        kernel = compile_cell(cell)
    missing = [m for m in ("loss_and_grad", "forward") if not callable(getattr(kernel, m, None))]
    if missing:
        raise TypeError(
            f"verify: the kernel {type(kernel).__name__} has no {', '.join(missing)}(); expected "
            f"loss_and_grad(params, inputs, targets, h0) and forward(params, inputs, h0)"
        )
    notes = []
    oracle_report = None
    if oracle:
        derivation = getattr(kernel, "derivation", None)
        if not isinstance(derivation, Derivation) or derivation.cell is not cell:
            derivation = derive(cell)
        oracle_report = scalar_oracle(cell, T=T, seed=seed, derivation=derivation)
        if T > LONG_ORACLE_T:
            notes.append(f"(the scalar oracle ran at T={T}; its cost grows fast with T)")
    kernel_report = check_kernel(
        cell, kernel, seed=seed, directions=directions, input_scale=input_scale
    )
    report = VerificationReport(oracle=oracle_report, notes=notes, kernel=kernel_report)
    attach_certificate(kernel, cell, report)  # replaces check_kernel's with the whole report
    return report


# ----- the bra-ket form against BPTT and the oracle -----


@dataclass
class BraketReport:
    """Agreeing digits of the bra-ket gradient (two routes) with BPTT and with ``sympy.diff``."""

    sizes: dict[str, int]
    T: int
    tied: bool
    digits: int
    required: int
    columns: dict[str, dict[str, float]]  # column title -> {parameter: agreeing digits}
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(d >= self.required for col in self.columns.values() for d in col.values())

    def __str__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        tying = "tied" if self.tied else "untied (each step's weights separately)"
        lines = [
            "Verification of the bra-ket form",
            f"  at a random rational point ({sizes}, T={self.T}, weights {tying}), evaluated "
            f"with {self.digits} digits; agreeing significant digits (worst entry), need "
            f"{self.required}:",
        ]
        titles = list(self.columns)
        params = list(next(iter(self.columns.values()))) if self.columns else []
        width = max([len(p) for p in params] + [9])
        lines.append("    " + "parameter".ljust(width) + "".join(f"  {t:>26}" for t in titles))
        for p in params:
            cells = []
            for t in titles:
                d = self.columns[t][p]
                cells.append(f"  {'exact' if math.isinf(d) else f'{d:.0f}':>26}")
            lines.append("    " + p.ljust(width) + "".join(cells))
        lines.extend(f"  {note}" for note in self.notes)
        status = "all checks passed" if self.ok else "CHECKS FAILED"
        lines.append(f"  result: {status} [{self.seconds:.1f} s]")
        return "\n".join(lines)


def braket_report(
    form,
    seed: int = 0,
    digits: int = 60,
    required: int = 40,
    oracle: bool = True,
    sizes: dict[str, int] | None = None,
) -> BraketReport:
    """Check a :class:`~rnnsym.braket.SequenceForm`: its update rules and its closed form
    ⟨d|(𝕀 − 𝔾𝕁_h𝕊)⁻¹𝔾 against the core's BPTT (eqs. (6)–(9)) and ``sympy.diff``."""
    start = time.perf_counter()
    problem = unrolled_point(form.cell, form.T, sizes, seed, untied=not form.tied)
    bptt = bptt_gradients(problem, digits, form.derivation)
    routes = {
        "update rule": form.gradients(problem, digits, "update_rule"),
        "closed form": form.gradients(problem, digits, "closed_form"),
    }
    columns = {
        f"{name} vs BPTT": {p: agreement_digits(g[p], bptt[p], digits) for p in g}
        for name, g in routes.items()
    }
    notes = []
    if oracle:
        reference = oracle_gradients(problem, digits, form.derivation)
        g = routes["closed form"]
        columns["closed form vs sympy.diff"] = {
            p: agreement_digits(g[p], reference[p], digits) for p in g
        }
    else:
        notes.append("(sympy.diff oracle skipped at this T: it grows fast; pass a smaller --T)")
    return BraketReport(
        sizes={s.name: v for s, v in problem.dims.items()},
        T=form.T,
        tied=form.tied,
        digits=digits,
        required=required,
        columns=columns,
        seconds=time.perf_counter() - start,
        notes=notes,
    )


# ----- the scalar oracle of a composed model -----


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


@dataclass
class ModelOracleReport:
    """The exact gradient of a model's unrolled loss (node-by-node ``sympy.diff``) against the
    model's derivation chained at high precision and against its generated float64 kernel."""

    model: str
    sizes: dict[str, int]
    T: int
    agreement: dict[str, float]  # vs the float64 kernel: agreeing digits (whole gradient)
    required: float
    seconds: float
    digits: int = 60
    # vs rnnsym's derivation of each part, chained as the model kernel chains them and
    # evaluated at ``digits`` digits: agreeing significant digits (worst entry)
    derivation_agreement: dict[str, float] = field(default_factory=dict)
    derivation_required: float = 40.0
    oracle_seconds: float | None = None

    @property
    def ok(self) -> bool:
        kernel = all(d >= self.required for d in self.agreement.values())
        chained = all(d >= self.derivation_required for d in self.derivation_agreement.values())
        return kernel and chained

    def __str__(self) -> str:
        def worst(values: dict[str, float]) -> str:
            low = min(values.values())
            return "exact" if math.isinf(low) else f"{low:.1f} digits"

        verdict = "ok" if self.ok else "FAILED"
        timing = f"{self.seconds:.1f} s"
        if self.oracle_seconds is not None:
            timing += f", oracle {self.oracle_seconds:.1f} s"
        chained = ""
        if self.derivation_agreement:
            chained = (
                f"the derivation chained at {self.digits} digits: worst "
                f"{worst(self.derivation_agreement)}, {self.derivation_required:.0f} "
                f"required; "
            )
        return (
            f"scalar oracle (sympy.diff node by node over the unrolled model {self.model!r}, "
            f"sizes {self.sizes}, T = {self.T}) vs {chained}vs the float64 kernel: worst "
            f"{worst(self.agreement)}, {self.required:.0f} required: {verdict} ({timing})"
        )


def model_oracle(
    model,
    sizes: dict[str, int] | None = None,
    T: int = 4,
    T_out: int | None = None,
    seed: int = 0,
    required: float = 10.0,
    digits: int = 60,
    derivation_required: float = 40.0,
    chain: bool = True,
) -> ModelOracleReport:
    """Check a composed model against the exact gradient of its unrolled loss.

    The oracle unrolls every cell in its own time direction (the backward layer from T down to
    1, the decoder from the encoder's last state, the head at T only) into one graph and
    differentiates it node by node with ``sympy.diff`` (:mod:`rnnsym.oracle`), evaluated in
    mpmath at ``digits`` digits at a random rational point; nothing of rnnsym's derivation is
    used. It is compared with

    * rnnsym's derivation of each part (``chain=True``), evaluated at ``digits`` digits and
      chained as :class:`~rnnsym.compose.ModelKernel` chains the kernels: the head's (or
      decoder's) input or h(0) adjoints passed to each layer as the slides' d_h(t);
      ``derivation_required`` digits must agree per entry;
    * the model's generated kernel in float64 (batch 1): ``required`` digits, norm-wise.
      float64 carries about 16; the kernel's rounding over a few steps costs one to two, so 10
      flags any wrong term and no rounding.

    Defaults: sizes 3, 4, 5, ... (distinct), T = 4 (seq2seq: T_y = T + 1).
    """
    from .compose import model_sizes

    start = time.perf_counter()
    names = {**model_sizes(model, _scalar_oracle_size), **(sizes or {})}
    rng = random.Random(seed)
    parts = model.parts
    dims = {}
    for part in parts.values():
        for n, s in part.cell.size_symbols.items():
            dims[s] = names[n]
    values = {}  # exact rational parameter values, drawn in declaration order
    for part in parts.values():
        for n, p in part.cell.params.items():
            values[n] = _random_matrix(rng, *concrete_shape(p.symbol, dims))
    oracle_start = time.perf_counter()
    graph = ScalarGraph()
    keys = {n: graph.source(v, ("param", n)) for n, v in values.items()}

    def run(role: str, data: list[dict], h0: dict | None = None) -> list[dict]:
        cell = parts[role].cell
        steps = compile_cell_steps(cell, dims)
        return graph.steps(cell, steps, dims, [keys] * len(data), data, h0, prefix=role)

    inputs, targets, lengths = {}, {}, None
    datasets: dict[str, list[dict]] = {}
    if model.kind == "bidirectional":
        fwd, bwd, head = (parts[r].cell for r in ("forward", "backward", "head"))
        data = _scalar_data(fwd, dims, T, rng, {})
        nodes_f = run("forward", data)
        nodes_b = run("backward", data[::-1])[::-1]
        states = {n: [step[n] for step in nodes_f] for n in fwd.states}
        states |= {n: [step[n] for step in nodes_b] for n in bwd.states}
        head_data = _scalar_data(head, dims, T, rng, {n: states[n] for n in head.inputs})
        run("head", head_data)
        datasets = {"forward": data, "backward": data[::-1], "head": head_data}
        inputs = {n: _to_array(data, n) for n in fwd.inputs}
        targets = {n: head_data for n in head.targets}
    elif model.kind == "seq2seq":
        enc, dec = parts["encoder"].cell, parts["decoder"].cell
        T_y = T_out if T_out is not None else T + 1
        data_e = _scalar_data(enc, dims, T, rng, {})
        nodes_e = run("encoder", data_e)
        where, target, state = model.context_slot
        context = nodes_e[-1][state]
        h0, given = {}, {}
        if where == "h0":
            h0[target] = context
        else:
            given[target] = [context] * T_y
        data_d = _scalar_data(dec, dims, T_y, rng, given)
        run("decoder", data_d, h0)
        datasets = {"encoder": data_e, "decoder": data_d}
        inputs = {n: _to_array(data_e, n) for n in enc.inputs}
        inputs |= {
            n: _to_array(data_d, n) for n in dec.inputs if n not in dec.fed_back and n not in given
        }
        targets = {n: data_d for n in dec.targets}
    else:  # last_output
        layer, head = parts["layer"].cell, parts["head"].cell
        data = _scalar_data(layer, dims, T, rng, {})
        nodes = run("layer", data)
        final = {n: [nodes[-1][n]] for n in layer.states}
        head_data = _scalar_data(head, dims, 1, rng, {n: final[n] for n in head.inputs})
        run("head", head_data)
        datasets = {"layer": data, "head": head_data}
        inputs = {n: _to_array(data, n) for n in layer.inputs}
        targets = {n: head_data for n in head.targets}
        lengths = np.array([T])
    shapes = {keys[n]: v.shape for n, v in values.items()}
    _, grads = graph.gradients(list(keys.values()), digits)
    exact = _as_matrices(grads, shapes, digits)
    oracle = {n: exact[keys[n]] for n in values}
    oracle_seconds = time.perf_counter() - oracle_start
    chained_agreement = {}
    if chain:
        chained = _chained_derivation(model, dims, values, datasets, digits)
        chained_agreement = {n: agreement_digits(oracle[n], chained[n], digits) for n in values}
    # the same point in float64 for the kernel (batch 1)
    params = {}
    for part in parts.values():
        for n, p in part.cell.params.items():
            value = np.array(values[n], dtype=np.float64)
            params[n] = value.reshape(-1) if p.symbol.shape[1] == 1 else value
    target_arrays = {}
    for n, steps in targets.items():
        cell = next(p.cell for p in parts.values() if n in p.cell.targets)
        if n in cell.class_targets:
            index = np.array([[list(step[n]).index(1)] for step in steps])
            target_arrays[n] = index[0] if model.kind == "last_output" else index
        else:
            array = _to_array(steps, n)
            target_arrays[n] = array[0] if model.kind == "last_output" else array
    kernel = model.compile()
    options = {"lengths": lengths} if lengths is not None else {}
    _, kernel_grads = kernel.loss_and_grad(params, inputs, target_arrays, **options)
    agreement = {}
    for n, want in oracle.items():
        a = np.array(want, dtype=np.float64).reshape(kernel_grads[n].shape)
        scale = max(np.linalg.norm(a), 1e-300)
        error = np.linalg.norm(a - kernel_grads[n]) / scale
        agreement[n] = float("inf") if error == 0 else float(-np.log10(error))
    return ModelOracleReport(
        model.name,
        names,
        T,
        agreement,
        required,
        time.perf_counter() - start,
        digits=digits,
        derivation_agreement=chained_agreement,
        derivation_required=derivation_required,
        oracle_seconds=oracle_seconds,
    )


def _chained_derivation(model, dims: dict, values: dict, datasets: dict, digits: int) -> dict:
    """The model's gradient from rnnsym's derivation of each part, evaluated at ``digits``
    digits and chained as :class:`~rnnsym.compose.ModelKernel` chains the parts' kernels.

    ``datasets[role]`` is the data of each part in the order it runs; entries that are not
    matrices (nodes of the oracle's graph: another part's states, seq2seq's context) are
    replaced by this function's own values of those states.
    """
    parts = model.parts
    point = {n: v.evalf(digits) for n, v in values.items()}

    def derivation(role: str) -> Derivation:
        part = parts[role]
        return derive(part.seeded or part.cell).inlined()

    def params_of(d: Derivation, T: int) -> list[dict]:
        return [{n: point[n] for n in d.cell.params}] * T

    def state_values(d: Derivation, data: list[dict], h0: dict | None = None) -> dict:
        envs = forward_envs(d, dims, params_of(d, len(data)), data, h0 or {}, lambda m: m)
        return {
            n: [env[concrete(s.symbol, dims)] for env in envs] for n, s in d.cell.states.items()
        }

    def with_values(data: list[dict], given: dict) -> list[dict]:
        return [
            {n: (given[n][t] if n in given else v) for n, v in step.items()}
            for t, step in enumerate(data)
        ]

    def zeros_like(matrix) -> ImmutableMatrix:
        return ImmutableMatrix.zeros(*matrix.shape)

    def seeded_run(role: str, data: list[dict], adjoints: dict, h0=None) -> dict:
        """The layer with the loss Σ_t ⟨d_h(t)|h(t)⟩, d_h the adjoints passed in."""
        d = derivation(role)
        seeds = parts[role].seeds
        data = [
            {**step, **{seeds[n]: adjoints[n][t] for n in seeds}} for t, step in enumerate(data)
        ]
        run = _bptt(d, dims, params_of(d, len(data)), data, h0 or {}, digits)
        return {n: _sum(terms, digits) for n, terms in run.params.items()}

    def input_adjoints(run: _BpttRun, name: str, like: list) -> list:
        terms = run.inputs.get(name)
        return terms if terms is not None else [zeros_like(v) for v in like]

    grads: dict = {}
    if model.kind == "bidirectional":
        fwd_data, bwd_data = datasets["forward"], datasets["backward"]
        states = state_values(derivation("forward"), fwd_data)
        back = state_values(derivation("backward"), bwd_data)
        states |= {n: v[::-1] for n, v in back.items()}
        head_data = with_values(datasets["head"], states)
        d_head = derive(parts["head"].cell).inlined()
        run = _bptt(d_head, dims, params_of(d_head, len(head_data)), head_data, {}, digits)
        grads |= {n: _sum(terms, digits) for n, terms in run.params.items()}
        for role, data, order in (("forward", fwd_data, 1), ("backward", bwd_data, -1)):
            adjoints = {n: input_adjoints(run, n, states[n])[::order] for n in parts[role].seeds}
            grads |= seeded_run(role, data, adjoints)
    elif model.kind == "seq2seq":
        where, target, state = model.context_slot
        enc_data = datasets["encoder"]
        context = state_values(derivation("encoder"), enc_data)[state][-1]
        dec_data, h0 = datasets["decoder"], {}
        if where == "h0":
            h0[target] = context
        else:  # the context input reads C at every step
            dec_data = with_values(dec_data, {target: [context] * len(dec_data)})
        d_dec = derive(parts["decoder"].cell).inlined()
        run = _bptt(d_dec, dims, params_of(d_dec, len(dec_data)), dec_data, h0, digits)
        grads |= {n: _sum(terms, digits) for n, terms in run.params.items()}
        if where == "h0":
            g_context = run.h0.get(target, zeros_like(context))
        else:
            g_context = _sum(input_adjoints(run, target, [context] * len(dec_data)), digits)
        ((seeded_state, _),) = parts["encoder"].seeds.items()
        adjoint = [zeros_like(context)] * (len(enc_data) - 1) + [g_context]
        grads |= seeded_run("encoder", enc_data, {seeded_state: adjoint})
    else:  # last_output
        data = datasets["layer"]
        states = state_values(derivation("layer"), data)
        final = {n: [v[-1]] for n, v in states.items()}
        head_data = with_values(datasets["head"], final)
        d_head = derive(parts["head"].cell).inlined()
        run = _bptt(d_head, dims, params_of(d_head, 1), head_data, {}, digits)
        grads |= {n: _sum(terms, digits) for n, terms in run.params.items()}
        adjoints = {}
        for n in parts["layer"].seeds:
            (last,) = input_adjoints(run, n, final[n])
            adjoints[n] = [zeros_like(last)] * (len(data) - 1) + [last]
        grads |= seeded_run("layer", data, adjoints)
    return grads


def verify_model(model, kernel=None, T: int | None = None, seed: int = 0) -> VerificationReport:
    """The scalar oracle and finite differences of a composed model (``rnnsym derive``).

    ``T`` is the oracle's number of steps (default: :func:`model_oracle`'s).
    """
    from .compose import model_sizes, random_model_problem

    kernel = kernel or model.compile()
    oracle = model_oracle(model, seed=seed, **({} if T is None else {"T": T}))
    params, inputs, targets = random_model_problem(model, T=5, B=3, seed=seed)
    options, notes = {}, []
    if model.kind == "last_output":
        options["lengths"] = np.array([5, 3, 1])
        notes.append("(lengths 5, 3, 1 in one padded batch)")
    grads = check_gradients(kernel, params, inputs, targets, **options)
    sizes = ", ".join(f"{n}={v}" for n, v in model_sizes(model).items())
    length = "T_x=5, T_y=6" if model.kind == "seq2seq" else "T=5"
    notes.insert(0, f"(finite differences at {sizes}, {length}, B=3)")
    report = VerificationReport(oracle=oracle, gradients=grads, notes=notes)
    attach_certificate(kernel, model, report)  # a ModelKernel shows it in Jupyter
    return report
