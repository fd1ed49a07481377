"""A kernel against a NumPy interpreter of the cell's own equations: loss, states, outputs,
every gradient entry (complex step) and ``vjp()``'s adjoints, in float64 and float32."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy import MatrixSymbol

from ..cell import Cell
from ..display import attach_certificate
from ..errors import RnnsymError
from ..ir.explicit import concrete_shape
from ..ir.ops import Apply, Concat, LogSumExp, Pad, Slice, Softmax, coeff_and_factors
from ..problems import random_problem

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
