"""Independent checks of a derivation and of a generated kernel.

* :func:`scalar_oracle` unrolls the cell for small concrete sizes and T into scalar SymPy
  expressions, differentiates the total loss with ``sympy.diff`` (nothing of rnnsym's derivation
  is used), and compares with the matrix-form derivation evaluated step by step; both are
  evaluated with mpmath at ``digits`` significant digits at a random rational point.
* :func:`check_gradients` compares a kernel's gradients with central finite differences.
* :func:`verify` runs both and gives the report ``rnnsym derive`` prints.

Expression swell keeps the symbolic oracle to tiny sizes (n ≈ 2, T ≈ 3): that is its purpose,
an exact reference for small cases; finite differences cover realistic sizes.
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
from .ops import Apply, Concat, LogSumExp, Pad, Slice, Softmax, coeff_and_factors

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
]


# ----- the scalar oracle -----


@dataclass
class OracleReport:
    """Agreement between ``sympy.diff`` of the unrolled loss and the derivation, per parameter."""

    sizes: dict[str, int]
    T: int
    digits: int
    agreement: dict[str, float]  # agreeing significant digits (worst entry), per parameter
    required: int
    seconds: float

    @property
    def ok(self) -> bool:
        return all(d >= self.required for d in self.agreement.values())

    def __str__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        worst = min(self.agreement.values()) if self.agreement else float("inf")
        status = "ok" if self.ok else "FAILED"
        shown = "exact" if math.isinf(worst) else f"{worst:.0f} digits"
        return (
            f"scalar oracle ({sizes}, T={self.T}, sympy.diff of the unrolled loss, "
            f"{self.digits}-digit mpmath): worst agreement {shown} "
            f"(need {self.required}) — {status} [{self.seconds:.1f} s]"
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


def _concrete_shape(expr, dims: dict) -> tuple[int, ...]:
    return tuple(int(s.xreplace(dims)) for s in expr.shape)


def _concrete(symbol: MatrixSymbol, dims: dict) -> MatrixSymbol:
    return symbol.xreplace(dims)


def _explicit(expr, dims: dict, env: dict) -> ImmutableMatrix:
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
            value = ImmutableMatrix.ones(*_concrete_shape(node, dims))
        elif isinstance(node, sp.ZeroMatrix):
            value = ImmutableMatrix.zeros(*_concrete_shape(node, dims))
        elif isinstance(node, sp.Identity):
            value = ImmutableMatrix.eye(_concrete_shape(node, dims)[0])
        else:
            value = ImmutableMatrix(node.xreplace(dims).xreplace(env).as_explicit())
        memo[node] = ImmutableMatrix(value)
        return memo[node]

    return ev(expr)


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
    dims = _concrete_sizes(cell, sizes, _oracle_size)
    rng = random.Random(seed)

    def shape(var):
        return _concrete_shape(var.symbol, dims)

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
    cell, dims = problem.cell, problem.dims
    envs = []
    prev = {
        n: ImmutableMatrix.zeros(*_concrete_shape(s.symbol, dims)) for n, s in cell.states.items()
    }
    for t in range(problem.T):
        env = {_concrete(p.symbol, dims): params[t][n] for n, p in cell.params.items()}
        for var in [*cell.inputs.values(), *cell.targets.values()]:
            env[_concrete(var.symbol, dims)] = problem.data[t][var.name]
        for n, s in cell.states.items():
            env[_concrete(s.prev.symbol, dims)] = prev[n]
        for n in cell.updates:
            value = evaluate(_explicit(d.update_expr(n), dims, env))
            env[_concrete(cell.states[n].symbol, dims)] = value
        for n in cell.output_defs:
            env[_concrete(cell.outputs[n].symbol, dims)] = evaluate(
                _explicit(d.output_expr(n), dims, env)
            )
        prev = {n: env[_concrete(s.symbol, dims)] for n, s in cell.states.items()}
        envs.append(env)
    return envs


def oracle_gradients(problem: UnrolledPoint, digits: int = 60, derivation=None) -> dict:
    """``sympy.diff`` of the scalar-unrolled total loss, evaluated at ``problem.point``.

    Returns {name: matrix} for tied weights and {name: [matrix per step]} for untied ones.
    Only the forward equations of the cell are used, none of rnnsym's derivatives.
    """
    cell, dims = problem.cell, problem.dims
    d = derivation or derive(cell)
    envs = _run_forward(d, problem, problem.symbols, lambda m: m)
    total = sp.Add(*[_explicit(d.loss_expr, dims, env)[0, 0] for env in envs])
    if not problem.untied:
        return _evaluate_derivatives(total, problem.symbols[0], problem.point, digits)
    flat = {(n, t): step[n] for t, step in enumerate(problem.symbols) for n in step}
    values = _evaluate_derivatives(total, flat, problem.point, digits)
    return {n: [values[(n, t)] for t in range(problem.T)] for n in cell.params}


def bptt_gradients(problem: UnrolledPoint, digits: int = 60, derivation=None) -> dict:
    """The matrix-form derivation (eqs. (6)–(9)) evaluated step by step at ``problem.point``.

    Returns {name: matrix} (summed over t) for tied weights and {name: [matrix per step]} for
    untied ones (each step's term is the gradient of that step's own parameter).
    """
    cell, dims = problem.cell, problem.dims

    def num(m):
        return m.evalf(digits)

    d = (derivation or derive(cell)).inlined()
    envs = _run_forward(d, problem, problem.values(digits), num)
    per_step: dict[str, list] = {n: [None] * problem.T for n in cell.params}
    carry: dict[str, ImmutableMatrix] = {}
    for t in reversed(range(problem.T)):
        env = envs[t]
        for n, expr in d.output_adjoints.items():
            symbol = _concrete(adjoint_symbol(cell.outputs[n].symbol), dims)
            env[symbol] = num(_explicit(expr, dims, env))
        for n in reversed(list(cell.updates)):
            state = cell.states[n]
            total_adjoint = ImmutableMatrix.zeros(*_concrete_shape(state.symbol, dims))
            for term in d.state_local[n]:
                total_adjoint += _explicit(term, dims, env)
            if n in carry:
                total_adjoint += carry[n]
            env[_concrete(adjoint_symbol(state.symbol), dims)] = num(total_adjoint)
        for n, term in d.param_terms.items():
            per_step[n][t] = num(_explicit(term, dims, env))
        carry = {n: num(_explicit(expr, dims, env)) for n, expr in d.carry.items()}
    if problem.untied:
        return per_step
    return {n: num(sum(terms[1:], terms[0])) for n, terms in per_step.items()}


def agreement_digits(a, b, digits: int = 60) -> float:
    """Worst number of agreeing significant digits between two matrices (or lists of them)."""
    if isinstance(a, list):
        return min(agreement_digits(x, y, digits) for x, y in zip(a, b, strict=True))
    return min(_agreement(x, y, digits) for x, y in zip(a, b, strict=True))


def scalar_oracle(
    cell: Cell,
    sizes: dict[str, int] | None = None,
    T: int = 3,
    seed: int = 0,
    digits: int = 60,
    required: int = 40,
    derivation: Derivation | None = None,
) -> OracleReport:
    """Check the derivation against ``sympy.diff`` of the scalar-unrolled loss."""
    start = time.perf_counter()
    d = derivation or derive(cell)
    problem = unrolled_point(cell, T, sizes, seed)
    # 1. the oracle: the total loss as one scalar expression, differentiated by SymPy
    oracle = oracle_gradients(problem, digits, d)
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
    )


# ----- finite differences -----


@dataclass
class GradientReport:
    """Relative error ‖g_fd − g‖ / max(‖g_fd‖, ‖g‖) of each parameter's gradient."""

    errors: dict[str, float]
    eps: float
    tolerance: float

    @property
    def max_error(self) -> float:
        return max(self.errors.values()) if self.errors else 0.0

    @property
    def ok(self) -> bool:
        return self.max_error <= self.tolerance

    def __getitem__(self, name: str) -> float:
        return self.errors[name]

    def __str__(self) -> str:
        width = max((len(n) for n in self.errors), default=4)
        lines = [
            f"central finite differences (eps={self.eps:g}, float64), relative error per "
            f"parameter (tolerance {self.tolerance:g}):"
        ]
        for name, err in self.errors.items():
            mark = "ok" if err <= self.tolerance else "FAILED"
            lines.append(f"  {name.ljust(width)}  {err:9.2e}  {mark}")
        return "\n".join(lines)


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

    The tolerance is relative: central differences have truncation error O(eps²) and rounding
    error O(1e-16 / eps) relative to the loss, about 1e-9 to 1e-8 here, so 1e-6 flags real
    errors and not noise.
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

    _, grads = loss_and_grad()
    errors = {}
    for name, value in params64.items():
        numeric = np.zeros_like(value)
        flat = value.reshape(-1)
        out = numeric.reshape(-1)
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + eps
            plus = float(loss_and_grad()[0])
            flat[i] = saved - eps
            minus = float(loss_and_grad()[0])
            flat[i] = saved
            out[i] = (plus - minus) / (2 * eps)
        scale = max(np.linalg.norm(numeric), np.linalg.norm(grads[name]), 1e-300)
        errors[name] = float(np.linalg.norm(numeric - grads[name]) / scale)
    return GradientReport(errors=errors, eps=eps, tolerance=tolerance)


def random_problem(
    cell: Cell, sizes: dict[str, int] | None = None, T: int = 5, B: int = 2, seed: int = 0
):
    """Random float64 (params, inputs, targets) for a cell at concrete sizes."""
    rng = np.random.default_rng(seed)
    dims = _concrete_sizes(cell, sizes, _problem_size)

    def shape(var):
        return _concrete_shape(var.symbol, dims)

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


# ----- both -----


@dataclass
class VerificationReport:
    """The oracle and finite-difference checks of one cell."""

    oracle: OracleReport
    gradients: GradientReport
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.oracle.ok and self.gradients.ok

    def __str__(self) -> str:
        lines = ["Verification", f"  {self.oracle}"]
        for name, digits in self.oracle.agreement.items():
            shown = "exact" if math.isinf(digits) else f"{digits:.0f} digits"
            lines.append(f"    {name}: {shown}")
        lines.append("  " + str(self.gradients).replace("\n", "\n  "))
        lines.extend(f"  {note}" for note in self.notes)
        lines.append(f"  result: {'all checks passed' if self.ok else 'CHECKS FAILED'}")
        return "\n".join(lines)


def verify(cell: Cell, kernel=None, T: int = 3, seed: int = 0) -> VerificationReport:
    """Run the scalar oracle on the derivation and finite differences on the kernel."""
    from .kernel import compile_cell

    kernel = kernel or compile_cell(cell)
    oracle = scalar_oracle(cell, T=T, seed=seed, derivation=kernel.derivation)
    params, inputs, targets = random_problem(cell, T=5, B=2, seed=seed)
    grads = check_gradients(kernel, params, inputs, targets)
    sizes = ", ".join(
        f"{s.name}={v}" for s, v in _concrete_sizes(cell, None, _problem_size).items()
    )
    note = f"(finite differences at {sizes}, T=5, B=2)"
    return VerificationReport(oracle=oracle, gradients=grads, notes=[note])


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


def _scalar_steps(cell: Cell, dims: dict, params: dict, data: list[dict], h0: dict) -> list:
    """The cell's forward equations run step by step on explicit SymPy matrices.

    ``data[t]`` maps input and target names to matrices; returns each step's environment
    {concrete symbol: matrix}. Only the cell's own forward expressions are used.
    """
    envs = []
    prev = dict(h0)
    for step in data:
        env = {_concrete(p.symbol, dims): params[n] for n, p in cell.params.items()}
        for var in [*cell.inputs.values(), *cell.targets.values()]:
            if var.name in step:
                env[_concrete(var.symbol, dims)] = step[var.name]
        for n, s in cell.states.items():
            env[_concrete(s.prev.symbol, dims)] = prev[n]
        for kind, n in cell.order:
            expr = cell.step_term(kind, n).expr
            env[_concrete(cell._vars[n].symbol, dims)] = _explicit(expr, dims, env)
        for n, term in cell.output_defs.items():
            env[_concrete(cell.outputs[n].symbol, dims)] = _explicit(term.expr, dims, env)
        prev = {n: env[_concrete(s.symbol, dims)] for n, s in cell.states.items()}
        envs.append(env)
    return envs


def _scalar_data(cell: Cell, dims: dict, T: int, rng: random.Random, given: dict) -> list[dict]:
    """Random rational data of a cell for T steps; fed-back inputs and contexts as the kernel
    builds them; ``given`` names inputs supplied by the model (other cells' states)."""
    data: list[dict] = []
    for t in range(T):
        step = {}
        for var in [*cell.targets.values(), *cell.inputs.values()]:
            rows = _concrete_shape(var.symbol, dims)[0]
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


def _loss_of(cell: Cell, dims: dict, envs: list) -> sp.Expr:
    return sp.Add(*[_explicit(cell.loss_expr, dims, env)[0, 0] for env in envs])


def _to_array(step_data: list[dict], name: str) -> np.ndarray:
    """(T, 1, size) float64 array of one name's column vectors over the steps."""
    return np.array([[[float(v) for v in step[name]]] for step in step_data])


@dataclass
class ModelOracleReport:
    """``sympy.diff`` of a model's scalar-unrolled loss against its generated kernel."""

    model: str
    sizes: dict[str, int]
    T: int
    agreement: dict[str, float]  # agreeing significant digits (whole gradient), per parameter
    required: float
    seconds: float

    @property
    def ok(self) -> bool:
        return all(d >= self.required for d in self.agreement.values())

    def __str__(self) -> str:
        worst = min(self.agreement.values())
        verdict = "ok" if self.ok else "FAILED"
        shown = "exact" if math.isinf(worst) else f"{worst:.1f} digits"
        return (
            f"scalar oracle (sympy.diff of the unrolled model {self.model!r}, sizes "
            f"{self.sizes}, T = {self.T}) vs the float64 kernel: worst {shown}, "
            f"{self.required:.0f} required: {verdict} ({self.seconds:.1f} s)"
        )


def model_oracle(
    model,
    sizes: dict[str, int] | None = None,
    T: int = 2,
    T_out: int | None = None,
    seed: int = 0,
    required: float = 10.0,
) -> ModelOracleReport:
    """Unroll a composed model (every cell, in its time direction) into scalar SymPy
    expressions, differentiate the total loss with ``sympy.diff`` and compare with the
    model's generated kernel in float64 (batch 1). Nothing of rnnsym's derivation is used.
    """
    from .compose import model_sizes

    start = time.perf_counter()
    names = {**model_sizes(model, _oracle_size), **(sizes or {})}
    rng = random.Random(seed)
    parts = model.parts
    dims = {}
    for part in parts.values():
        for n, s in part.cell.size_symbols.items():
            dims[s] = names[n]
    symbols, point = {}, {}
    for part in parts.values():
        for n, p in part.cell.params.items():
            shape = _concrete_shape(p.symbol, dims)
            symbols[n] = ImmutableMatrix(
                *shape, lambda i, j, n=n: sp.Symbol(f"{n}_{i}_{j}", real=True)
            )
            for s in symbols[n]:
                point[s] = _rational(rng)

    def zeros(cell):
        return {
            n: ImmutableMatrix.zeros(*_concrete_shape(s.symbol, dims))
            for n, s in cell.states.items()
        }

    def params_of(cell):
        return {n: symbols[n] for n in cell.params}

    inputs, targets, lengths = {}, {}, None
    if model.kind == "bidirectional":
        fwd, bwd, head = (parts[r].cell for r in ("forward", "backward", "head"))
        data = _scalar_data(fwd, dims, T, rng, {})
        for name in bwd.inputs:  # the same model inputs, read backwards
            for step in data:
                step.setdefault(name, step.get(name))
        envs_f = _scalar_steps(fwd, dims, params_of(fwd), data, zeros(fwd))
        envs_b = _scalar_steps(bwd, dims, params_of(bwd), data[::-1], zeros(bwd))[::-1]
        states = {
            n: [env[_concrete(cell.states[n].symbol, dims)] for env in envs]
            for cell, envs in ((fwd, envs_f), (bwd, envs_b))
            for n in cell.states
        }
        head_data = _scalar_data(head, dims, T, rng, {n: states[n] for n in head.inputs})
        total = _loss_of(head, dims, _scalar_steps(head, dims, params_of(head), head_data, {}))
        inputs = {n: _to_array(data, n) for n in fwd.inputs}
        targets = {n: head_data for n in head.targets}
    elif model.kind == "seq2seq":
        enc, dec = parts["encoder"].cell, parts["decoder"].cell
        T_y = T_out if T_out is not None else T + 1
        data_e = _scalar_data(enc, dims, T, rng, {})
        envs_e = _scalar_steps(enc, dims, params_of(enc), data_e, zeros(enc))
        where, target, state = model.context_slot
        context = envs_e[-1][_concrete(enc.states[state].symbol, dims)]
        h0 = zeros(dec)
        given = {}
        if where == "h0":
            h0[target] = context
        else:
            given[target] = [context] * T_y
        data_d = _scalar_data(dec, dims, T_y, rng, given)
        total = _loss_of(dec, dims, _scalar_steps(dec, dims, params_of(dec), data_d, h0))
        inputs = {n: _to_array(data_e, n) for n in enc.inputs}
        inputs |= {
            n: _to_array(data_d, n) for n in dec.inputs if n not in dec.fed_back and n not in given
        }
        targets = {n: data_d for n in dec.targets}
    else:  # last_output
        layer, head = parts["layer"].cell, parts["head"].cell
        data = _scalar_data(layer, dims, T, rng, {})
        envs = _scalar_steps(layer, dims, params_of(layer), data, zeros(layer))
        final = {n: [envs[-1][_concrete(s.symbol, dims)]] for n, s in layer.states.items()}
        head_data = _scalar_data(head, dims, 1, rng, {n: final[n] for n in head.inputs})
        total = _loss_of(head, dims, _scalar_steps(head, dims, params_of(head), head_data, {}))
        inputs = {n: _to_array(data, n) for n in layer.inputs}
        targets = {n: head_data for n in head.targets}
        lengths = np.array([T])
    oracle = _evaluate_derivatives(total, symbols, point, 30)
    # the same point in float64 for the kernel (batch 1)
    params = {}
    for part in parts.values():
        for n, p in part.cell.params.items():
            value = np.array(symbols[n].xreplace(point), dtype=np.float64)
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
    _, grads = kernel.loss_and_grad(params, inputs, target_arrays, **options)
    agreement = {}
    for n, exact in oracle.items():
        a = np.array(exact, dtype=np.float64).reshape(grads[n].shape)
        scale = max(np.linalg.norm(a), 1e-300)
        error = np.linalg.norm(a - grads[n]) / scale
        agreement[n] = float("inf") if error == 0 else float(-np.log10(error))
    return ModelOracleReport(model.name, names, T, agreement, required, time.perf_counter() - start)


def verify_model(model, kernel=None, T: int = 2, seed: int = 0) -> VerificationReport:
    """The scalar oracle and finite differences of a composed model (``rnnsym derive``)."""
    from .compose import model_sizes, random_model_problem

    kernel = kernel or model.compile()
    oracle = model_oracle(model, T=T, seed=seed)
    params, inputs, targets = random_model_problem(model, T=5, B=3, seed=seed)
    options, notes = {}, []
    if model.kind == "last_output":
        options["lengths"] = np.array([5, 3, 1])
        notes.append("(lengths 5, 3, 1 in one padded batch)")
    grads = check_gradients(kernel, params, inputs, targets, **options)
    sizes = ", ".join(f"{n}={v}" for n, v in model_sizes(model).items())
    length = "T_x=5, T_y=6" if model.kind == "seq2seq" else "T=5"
    notes.insert(0, f"(finite differences at {sizes}, {length}, B=3)")
    return VerificationReport(oracle=oracle, gradients=grads, notes=notes)
