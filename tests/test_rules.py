"""The derivative rules one by one, against references that share nothing with them.

Each rule of :mod:`rnnsym.ir.rules` (vector-Jacobian products), :mod:`rnnsym.ir.jvp` (Jacobian-
vector products, parameter seeds) and each activation's derivative is applied to small
expressions at concrete sizes, evaluated in NumPy by an evaluator written here, and compared
with central finite differences of the expression's value at random (Hypothesis-drawn) points,
cotangents and directions. Then whole cells that need the rules in combination (a product of two
matrix parameters, scalar coefficients inside slices and products, a scaled softmax cross-
entropy, every built-in activation) are compiled in both modes and compared with finite
differences of a NumPy reference written here, and with the scalar oracle at T = 2; and the
∂q/∂θ formulas printed in forward kernels' docstrings are evaluated and compared with finite
differences.

This file is the default test selection of the mutation run, ``tools/mutate_rules.py``: it is
meant to kill every non-equivalent mutant of the rule tables, fast.

Tolerances: central differences with step eps = 1e-6 on O(1) float64 values have truncation
error O(eps²) ≈ 1e-12 and rounding error O(1e-16 / eps) ≈ 1e-10; a relative tolerance of 1e-6
(against max(1, |value|)) is four orders above both, while a wrong rule changes O(1) digits.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st
from sympy import (
    HadamardProduct,
    Identity,
    MatAdd,
    MatMul,
    MatrixSymbol,
    OneMatrix,
    Transpose,
    ZeroMatrix,
)

import rnnsym as rs
from rnnsym.derive import backprop
from rnnsym.ir.activations import get_activation
from rnnsym.ir.jvp import Direction, Seed, param_tangent, tangent
from rnnsym.ir.ops import (
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
    mul,
    slice_rows,
    transpose,
)

EPS = 1e-6
RTOL = 1e-6  # see the module docstring

# ----- a NumPy evaluator of the IR, independent of the rules under test -----


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


NUMPY_FUNCTIONS = {
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "exp": np.exp,
    "log": np.log,
    "reciprocal": lambda z: 1.0 / z,
    "relu": lambda z: np.maximum(z, 0.0),
    "step": lambda z: (z > 0).astype(float),
    "softplus": lambda z: np.log1p(np.exp(z)),
    "log_sigmoid": lambda z: -np.log1p(np.exp(-z)),
}


@functools.cache
def _lambdified(name: str):
    """A user activation (or a derivative SymPy derived) as a NumPy function of its scalar."""
    z = sp.Symbol("z", real=True)
    return sp.lambdify(z, get_activation(name).scalar(z), "numpy")


def evaluate(expr, env: dict, directions: dict | None = None) -> np.ndarray:
    """The value of an IR expression with arrays bound to its symbols (by name).

    ``directions[P]`` is the variation δP of parameter P: a ``Direction`` evaluates to it and a
    ``Seed(P, r, z, a, b)`` to z ∘ (δP r)[a:b], what the seed stands for along δP.
    """
    directions = directions or {}

    def ev(node):
        if isinstance(node, MatrixSymbol):
            return env[node.name]
        if isinstance(node, MatAdd):
            return sum(ev(a) for a in node.args)
        if isinstance(node, MatMul):
            coeff, factors = coeff_and_factors(node)
            value = ev(factors[0])
            for f in factors[1:]:
                value = value @ ev(f)
            return float(coeff) * value
        if isinstance(node, HadamardProduct):
            value = ev(node.args[0])
            for f in node.args[1:]:
                value = value * ev(f)
            return value
        if isinstance(node, Transpose):
            return ev(node.arg).T
        if isinstance(node, Apply):
            function = NUMPY_FUNCTIONS.get(node.name) or _lambdified(node.name)
            return np.asarray(function(ev(node.arg)), dtype=float) * np.ones(_shape(node))
        if isinstance(node, LogSumExp):
            a = ev(node.args[0])
            return np.array([[np.log(np.sum(np.exp(a)))]])
        if isinstance(node, Softmax):
            a = np.exp(ev(node.args[0]))
            return a / a.sum()
        if isinstance(node, Concat):
            return np.vstack([ev(a) for a in node.args])
        if isinstance(node, Slice):
            arg, start, stop = node.args
            return ev(arg)[int(start) : int(stop)]
        if isinstance(node, Pad):
            arg, start, total = node.args
            inner = ev(arg)
            out = np.zeros((int(total), inner.shape[1]))
            out[int(start) : int(start) + inner.shape[0]] = inner
            return out
        if isinstance(node, OneMatrix):
            return np.ones(_shape(node))
        if isinstance(node, ZeroMatrix):
            return np.zeros(_shape(node))
        if isinstance(node, Identity):
            return np.eye(_shape(node)[0])
        if isinstance(node, Direction):
            return directions[node.param.name]
        if isinstance(node, Seed):  # through its accessors: param, and the shape checked below
            _, r, z, start, stop = node.args
            varied = directions[node.param.name] @ ev(r)
            return ev(z) * varied[int(start) : int(stop)]
        raise TypeError(f"evaluate: no rule for {type(node).__name__}")

    value = ev(expr)
    assert value.shape == _shape(expr), (sp.sstr(expr), value.shape)
    return value


def _shape(node) -> tuple[int, int]:
    return tuple(int(s) for s in node.shape)


# ----- expressions that exercise each rule -----

n, r, m = 3, 2, 4  # distinct sizes, so that a transposed or swapped factor cannot fit

A, B = MatrixSymbol("A", n, r), MatrixSymbol("B", r, n)
W, U = MatrixSymbol("W", n, n), MatrixSymbol("U", n, m)
W2, Wc, Q = MatrixSymbol("W2", 2 * n, n), MatrixSymbol("Wc", n, n + m), MatrixSymbol("Q", n, 5)
b, u = MatrixSymbol("b", n, 1), MatrixSymbol("u", n, 1)
h, x = MatrixSymbol("h", n, 1), MatrixSymbol("x", m, 1)
LEAVES = [A, B, W, U, W2, Wc, Q, b, u, h, x]
PARAMS = {A, B, W, U, W2, Wc, Q, b, u}  # seeded as parameters in forward mode; h, x vary freely


def _pre():
    return add(W @ h, U @ x)


# name -> (expression, whether forward mode can seed its parameters)
EXPRESSIONS = {
    # a product of two matrix parameters with a coefficient; bias; tanh′ from ans
    "chain": (Apply("tanh", add(mul(A, B, h), U @ x, b)), True),
    "half": (Apply("tanh", add(mul(sp.Rational(1, 2), W, h), U @ x)), True),
    "negated_chain": (mul(-2, A, B, Apply("sigmoid", _pre())), True),
    # scalar coefficient inside a slice, slices of one product, a product of elementwise terms
    "slices": (
        hadamard(
            Apply("tanh", slice_rows(mul(2, W2, h), 0, n)),
            Apply("sigmoid", slice_rows(W2 @ h, n, 2 * n)),
        ),
        True,
    ),
    "concat": (Apply("tanh", mul(Wc, concat(h, Apply("sigmoid", x)))), True),
    # a coefficient on a sum (c (a + b) in a tangent), then scaled or sliced
    "scaled_sum": (Apply("tanh", mul(3, add(mul(sp.Rational(1, 2), W, h), U @ x, b))), True),
    "sliced_sum": (slice_rows(mul(-2, add(W2 @ h, concat(u, b))), 1, 5), True),
    # slices of activated vectors (gates of one stacked pre-activation), and a bare bias
    "sliced_activations": (
        hadamard(
            slice_rows(Apply("tanh", W2 @ h), 0, n),
            slice_rows(Apply("sigmoid", mul(-1, W2, h)), n, 2 * n),
        ),
        True,
    ),
    "affine": (add(W @ h, U @ x, b), True),
    "hadamard3": (hadamard(h, u, Apply("tanh", W @ h), Apply("exp", mul(-1, U @ x))), True),
    "quadratic": (mul(transpose(h), W, h), True),  # 1×1: h′W h, with a transpose
    "transposed_param": (mul(transpose(A), W, h), False),  # Aᵀ: forward mode cannot seed it
    "scaled_logsumexp": (mul(3, LogSumExp(add(W @ h, mul(-1, U @ x)))), True),
    "logsumexp_gate": (mul(u, LogSumExp(add(W @ h, b))), False),
    "pad": (mul(Q, Pad(hadamard(u, Apply("tanh", W @ h)), 1, 5)), True),
    "nested_activations": (
        Apply("log", Apply("softplus", add(mul(A, B, h), Apply("log_sigmoid", U @ x)))),
        True,
    ),
}

for _name in ("tanh", "sigmoid", "exp", "softplus", "log_sigmoid", "relu"):
    EXPRESSIONS[f"act_{_name}"] = (mul(sp.Rational(7, 10), Apply(_name, add(_pre(), b))), True)
EXPRESSIONS["act_log"] = (Apply("log", add(Apply("exp", W @ h), Apply("sigmoid", U @ x))), True)

user_softsign = rs.elementwise("rules_test_softsign", lambda z: z / (1 + z**2))
EXPRESSIONS["act_user"] = (Apply("rules_test_softsign", add(_pre(), b)), True)

# the nodes the tangent cell (second order) adds, with rules of their own: a softmax that can
# be differentiated (the loss tangent of softmax cross-entropy) and a 1×1 kept as one factor
from rnnsym.tangent import PerRow, SmoothSoftmax  # noqa: E402 - registers their rules

EXPRESSIONS["smooth_softmax"] = (hadamard(u, SmoothSoftmax(add(W @ h, b))), False)
EXPRESSIONS["per_row"] = (mul(u, PerRow(mul(transpose(h), W, h))), False)


def _point(seed: int) -> dict[str, np.ndarray]:
    """Random values of every leaf; away from relu's kink (|entries| ≥ 0.05 by construction)."""
    rng = np.random.default_rng(seed)
    env = {}
    for leaf in LEAVES:
        value = rng.uniform(0.1, 0.9, size=_shape(leaf)) * rng.choice([-1.0, 1.0], _shape(leaf))
        env[leaf.name] = value
    return env


def _away_from_kinks(expr, env) -> bool:
    """relu and step are not differentiable at 0: keep their arguments away from it."""
    for node in sp.preorder_traversal(expr):
        if isinstance(node, Apply) and node.name in ("relu", "step"):
            if np.min(np.abs(evaluate(node.arg, env))) < 1e-3:
                return False
    return True


def _directional_fd(expr, env: dict, direction: dict) -> np.ndarray:
    """(f(θ + eps v) − f(θ − eps v)) / (2 eps): the variation of ``expr`` along ``direction``."""
    plus = {k: v + EPS * direction.get(k, 0.0) for k, v in env.items()}
    minus = {k: v - EPS * direction.get(k, 0.0) for k, v in env.items()}
    return (evaluate(expr, plus) - evaluate(expr, minus)) / (2 * EPS)


def _assert_close(actual, expected, what: str, derived=None) -> None:
    """|actual − expected| ≤ RTOL max(1, |expected|) entrywise; names the derived expression."""
    scale = max(1.0, float(np.max(np.abs(expected))))
    if not np.allclose(actual, expected, rtol=0, atol=RTOL * scale):
        shown = "" if derived is None else f" (derived: {sp.sstr(derived)})"  # printing is slow
        np.testing.assert_allclose(
            actual, expected, rtol=0, atol=RTOL * scale, err_msg=what + shown
        )


def _random_direction(seed: int, leaves) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 7919)
    return {leaf.name: rng.normal(size=_shape(leaf)) for leaf in leaves}


def _leaves_of(expr) -> list[MatrixSymbol]:
    present = {s for s in sp.preorder_traversal(expr) if isinstance(s, MatrixSymbol)}
    return [leaf for leaf in LEAVES if leaf in present]


# The symbolic work is done once per expression; Hypothesis then draws points, cotangents and
# directions, which only NumPy evaluates. A wrong rule is wrong at almost every point, so a few
# examples per expression suffice (the profile's count applies; at least 5 in every profile).


@functools.cache
def _cotangents(name: str) -> dict:
    expr, _ = EXPRESSIONS[name]
    G, ans = MatrixSymbol("G", *expr.shape), MatrixSymbol("ans", *expr.shape)
    return backprop(expr, ans, G, set(_leaves_of(expr)))


@functools.cache
def _tangent(name: str, seeded: bool):
    expr, _ = EXPRESSIONS[name]
    tangents = {
        leaf: (
            param_tangent(leaf)
            if seeded and leaf in PARAMS
            else MatrixSymbol(f"d{leaf.name}", *leaf.shape)
        )
        for leaf in _leaves_of(expr)
    }
    return tangent(expr, MatrixSymbol("ans", *expr.shape), tangents)


@pytest.mark.parametrize("name", sorted(EXPRESSIONS))
@given(seed=st.integers(0, 2**31 - 1))
def test_vjp_rules_match_finite_differences(name, seed):
    """backprop (the VJP rules) gives ⟨g, ∂f/∂θ⟩ for every leaf θ, entry by entry."""
    expr, _ = EXPRESSIONS[name]
    env = _point(seed)
    if not _away_from_kinks(expr, env):
        return
    rng = np.random.default_rng(seed + 1)
    g = rng.normal(size=_shape(expr))  # a random cotangent: a dropped or doubled g shows
    leaves = _leaves_of(expr)
    cotangents = _cotangents(name)
    assert set(cotangents) == set(leaves)
    env_with = {**env, "G": g, "ans": evaluate(expr, env)}
    for leaf in leaves:
        got = evaluate(cotangents[leaf], env_with)
        expected = np.zeros(_shape(leaf))
        for index in np.ndindex(*_shape(leaf)):
            direction = {leaf.name: np.zeros(_shape(leaf))}
            direction[leaf.name][index] = 1.0
            expected[index] = np.sum(g * _directional_fd(expr, env, direction))
        _assert_close(got, expected, f"{name}: cotangent of {leaf.name}", cotangents[leaf])


@pytest.mark.parametrize("name", sorted(EXPRESSIONS))
@given(seed=st.integers(0, 2**31 - 1))
def test_jvp_rules_match_finite_differences(name, seed):
    """tangent (the JVP rules) with a free tangent dθ on every leaf: the directional derivative."""
    expr, _ = EXPRESSIONS[name]
    env = _point(seed)
    if not _away_from_kinks(expr, env):
        return
    direction = _random_direction(seed, _leaves_of(expr))
    value = _tangent(name, seeded=False)
    env_with = {**env, "ans": evaluate(expr, env)}
    env_with |= {f"d{k}": v for k, v in direction.items()}
    _assert_close(evaluate(value, env_with), _directional_fd(expr, env, direction), name, value)


@pytest.mark.parametrize("name", sorted(k for k, (_, seedable) in EXPRESSIONS.items() if seedable))
@given(seed=st.integers(0, 2**31 - 1))
def test_parameter_seeds_match_finite_differences(name, seed):
    """Forward mode's parameter tangents (Direction, Seed) along a random direction of every
    parameter at once, with a free tangent on the state h."""
    expr, _ = EXPRESSIONS[name]
    env = _point(seed)
    if not _away_from_kinks(expr, env):
        return
    direction = _random_direction(seed, _leaves_of(expr))
    value = _tangent(name, seeded=True)
    env_with = {**env, "ans": evaluate(expr, env)}
    env_with |= {f"d{k}": v for k, v in direction.items()}
    got = evaluate(value, env_with, directions=direction)
    _assert_close(got, _directional_fd(expr, env, direction), name, value)


def test_every_rule_is_exercised():
    """The expressions above reach every node type that has a rule (else a rule could be wrong
    unnoticed)."""
    from rnnsym.ir.jvp import primitive_jvps
    from rnnsym.ir.rules import primitive_vjps

    seen = {type(node) for e, _ in EXPRESSIONS.values() for node in sp.preorder_traversal(e)}
    missing = {t for t in set(primitive_vjps) | set(primitive_jvps) if t not in seen}
    assert missing == {Softmax}, missing  # Softmax's rules only refuse (tested below)


@pytest.mark.parametrize("rule", ["vjp", "jvp"])
def test_softmax_inside_a_cell_is_refused_clearly(rule):
    expr = Softmax(W @ h)
    with pytest.raises(rs.DerivationError, match="softmax inside a cell"):
        if rule == "vjp":
            backprop(expr, expr, MatrixSymbol("G", n, 1), {W})
        else:
            tangent(expr, expr, {h: MatrixSymbol("dh", n, 1)})


# ----- whole cells that need the rules in combination, against NumPy references -----


def _np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _np_logsumexp(o):
    top = o.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(o - top).sum(axis=-1, keepdims=True)))[..., 0]


class CellCase:
    """A cell and a NumPy reference of it written here: ``step(p, x_t, h_prev) -> h_t`` and
    ``loss(p, h_t, x_t, targets_t) -> (B,)`` on batch-major rows (v @ W.T is W v)."""

    sizes = {"n": 3, "m": 2, "r": 2, "k": 4}

    def __init__(self, name, build, step, loss, outputs=None, defines=None):
        self.name, self.build, self.step, self.loss = name, build, step, loss
        self.outputs = outputs or {}  # output name -> f(p, h_t, x_t)
        self.defines = defines or {}  # defined name -> f(p, x_t, h_prev)

    def problem(self, seed: int, T: int = 4, B: int = 3):
        rng = np.random.default_rng(seed)
        cell = self.build()
        sizes = {cell.size_symbols[k]: v for k, v in self.sizes.items() if k in cell.size_symbols}

        def size(expr):
            return int(sp.sympify(expr).subs(sizes))

        params = {}
        for pname, p in cell.params.items():
            rows, cols = p.symbol.shape
            if cols == 1:
                params[pname] = rng.normal(0.0, 0.5, size=size(rows))
            else:
                params[pname] = rng.normal(0.0, 0.8 / np.sqrt(size(cols)), (size(rows), size(cols)))
        inputs = {v: rng.normal(size=(T, B, size(s.shape[0]))) for v, s in cell.inputs.items()}
        targets = {v: rng.normal(size=(T, B, size(s.shape[0]))) for v, s in cell.targets.items()}
        h0 = {v: rng.normal(0.0, 0.5, size=(B, size(s.shape[0]))) for v, s in cell.states.items()}
        return cell, params, inputs, targets, h0

    def reference(self, params, inputs, targets, h0):
        """(total loss, {state/output: (T, B, size)}) by the NumPy reference."""
        T = next(iter(inputs.values())).shape[0]
        h = h0["h"]
        total, seqs = 0.0, {"h": [], **{o: [] for o in self.outputs}}
        for t in range(T):
            x_t = {k: v[t] for k, v in inputs.items()}
            h = self.step(params, x_t, h)
            seqs["h"].append(h)
            for o, f in self.outputs.items():
                seqs[o].append(f(params, h, x_t))
            total += float(np.sum(self.loss(params, h, x_t, {k: v[t] for k, v in targets.items()})))
        return total, {k: np.stack(v) for k, v in seqs.items()}


def _lowrank():
    cell = rs.Cell("lowrank")
    n, m, r = cell.dims("n m r")
    x, h = cell.input("x", m), cell.state("h", n)
    P, Q, U, b = (
        cell.param("P", n, r),
        cell.param("Q", r, n),
        cell.param("U", n, m),
        cell.param("b", n),
    )
    cell.update(h, rs.tanh(P @ Q @ h.prev + U @ x + b))
    cell.loss(rs.squared_error(h, cell.target("y", n)))
    return cell


def _scaled():
    cell = rs.Cell("scaled")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W2, W, U = cell.param("W2", 2 * n, n), cell.param("W", n, n), cell.param("U", n, m)
    pre = (2 * (W2 @ h.prev))[0:n] + 0.5 * (W @ h.prev) - U @ x
    cell.update(h, rs.tanh(pre) * rs.sigmoid((W2 @ h.prev)[n : 2 * n]))
    cell.loss(rs.squared_error(h, cell.target("y", n)))
    return cell


def _scaled_ce():
    cell = rs.Cell("scaled_ce")
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, V = cell.param("W", n, n), cell.param("U", n, m), cell.param("V", k, n)
    cell.update(h, rs.tanh(W @ h.prev + U @ x))
    o = cell.output("o", V @ h)
    cell.loss(2 * rs.softmax_cross_entropy(o, cell.target("y", k)))
    return cell


def _activations():
    cell = rs.Cell("activations")
    n, m, r = cell.dims("n m r")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    P, Q = cell.param("P", n, r), cell.param("Q", r, n)
    cell.update(h, rs.tanh(W @ h.prev + U @ x + rs.log(rs.softplus(b + P @ (Q @ h.prev)))))
    z = cell.output("z", rs.exp(W @ h) + rs.log_sigmoid(U @ x + h))
    cell.loss(rs.linear_loss(cell.target("d", n), z))
    return cell


def _softplus(z):
    return np.log1p(np.exp(z))


def _defined():
    """A named intermediate (its ∂q/∂θ is a row of its own in the docstring), a leak term."""
    cell = rs.Cell("defined")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, Wq, bq = (
        cell.param("W", n, n),
        cell.param("U", n, m),
        cell.param("Wq", n, n),
        cell.param("bq", n),
    )
    q = cell.define("q", rs.sigmoid(Wq @ h.prev + bq))
    cell.update(h, q * rs.tanh(W @ h.prev + U @ x) - 0.5 * h.prev)
    cell.loss(rs.squared_error(h, cell.target("y", n)))
    return cell


def _defined_q(p, x, hp):
    return _np_sigmoid(hp @ p["Wq"].T + p["bq"])


CELL_CASES = {
    "lowrank": CellCase(
        "lowrank",
        _lowrank,
        lambda p, x, hp: np.tanh(hp @ (p["P"] @ p["Q"]).T + x["x"] @ p["U"].T + p["b"]),
        lambda p, h, x, y: 0.5 * np.sum((h - y["y"]) ** 2, axis=-1),
    ),
    "scaled": CellCase(
        "scaled",
        _scaled,
        lambda p, x, hp: (
            np.tanh(2 * (hp @ p["W2"].T)[:, :3] + 0.5 * hp @ p["W"].T - x["x"] @ p["U"].T)
            * _np_sigmoid((hp @ p["W2"].T)[:, 3:])
        ),
        lambda p, h, x, y: 0.5 * np.sum((h - y["y"]) ** 2, axis=-1),
    ),
    "scaled_ce": CellCase(
        "scaled_ce",
        _scaled_ce,
        lambda p, x, hp: np.tanh(hp @ p["W"].T + x["x"] @ p["U"].T),
        lambda p, h, x, y: 2 * (_np_logsumexp(h @ p["V"].T) - np.sum(y["y"] * (h @ p["V"].T), -1)),
        outputs={"o": lambda p, h, x: h @ p["V"].T},
    ),
    "activations": CellCase(
        "activations",
        _activations,
        lambda p, x, hp: np.tanh(
            hp @ p["W"].T + x["x"] @ p["U"].T + np.log(_softplus(p["b"] + hp @ (p["P"] @ p["Q"]).T))
        ),
        lambda p, h, x, y: np.sum(
            y["d"] * (np.exp(h @ p["W"].T) - np.log1p(np.exp(-(x["x"] @ p["U"].T + h)))), -1
        ),
        outputs={
            "z": lambda p, h, x: np.exp(h @ p["W"].T) - np.log1p(np.exp(-(x["x"] @ p["U"].T + h)))
        },
    ),
    "defined": CellCase(
        "defined",
        _defined,
        lambda p, x, hp: (
            _defined_q(p, x, hp) * np.tanh(hp @ p["W"].T + x["x"] @ p["U"].T) - 0.5 * hp
        ),
        lambda p, h, x, y: 0.5 * np.sum((h - y["y"]) ** 2, axis=-1),
        defines={"q": _defined_q},
    ),
}


@functools.cache
def _kernel(name: str, mode: str):
    return rs.compile(CELL_CASES[name].build(), mode=mode)


def _fd_gradient(case: CellCase, params, inputs, targets, h0) -> dict[str, np.ndarray]:
    """Central differences of the reference loss, entry by entry."""
    grads = {}
    for pname, value in params.items():
        g = np.zeros_like(value)
        for index in np.ndindex(*value.shape):
            plus, minus = value.copy(), value.copy()
            plus[index] += EPS
            minus[index] -= EPS
            lp = case.reference({**params, pname: plus}, inputs, targets, h0)[0]
            lm = case.reference({**params, pname: minus}, inputs, targets, h0)[0]
            g[index] = (lp - lm) / (2 * EPS)
        grads[pname] = g
    return grads


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("name", sorted(CELL_CASES))
@given(seed=st.integers(0, 2**31 - 1))
def test_cell_matches_numpy_reference(name, mode, seed):
    """Loss, forward() and every gradient entry of the kernel vs the NumPy reference (T = 4,
    B = 3, nonzero h(0)); gradients vs central differences of the reference loss."""
    case = CELL_CASES[name]
    kernel = _kernel(name, mode)
    _, params, inputs, targets, h0 = case.problem(seed)
    loss_ref, states_ref = case.reference(params, inputs, targets, h0)
    loss, grads = kernel.loss_and_grad(params, inputs, targets, h0)
    # the same float64 operations in another order: 1e-12 relative is rounding, not a formula
    assert loss == pytest.approx(loss_ref, rel=1e-12, abs=1e-12), "loss value"
    states = kernel.forward(params, inputs, h0)
    for key, ref in states_ref.items():
        np.testing.assert_allclose(states[key], ref, rtol=1e-12, atol=1e-12, err_msg=key)
    expected = _fd_gradient(case, params, inputs, targets, h0)
    for pname, g in expected.items():
        _assert_close(grads[pname], g, f"{name} ({mode}): gradient of {pname}")


@pytest.mark.parametrize("name", sorted(CELL_CASES))
def test_cell_derivation_matches_scalar_oracle(name):
    """The matrix-form derivation vs sympy.diff of the unrolled scalar loss (T = 2, tiny sizes)."""
    from rnnsym.verify import scalar_oracle

    report = scalar_oracle(CELL_CASES[name].build(), T=2)
    assert report.ok, str(report)  # 40 of 60 digits: see scalar_oracle


@pytest.mark.parametrize("name", sorted(CELL_CASES))
@given(seed=st.integers(0, 2**31 - 1))
def test_sensitivity_formulas_match_finite_differences(name, seed):
    """The ∂q(t)/∂θ formulas of a forward kernel's docstring (``Sensitivities.display``, what
    ``sensitivity_text`` prints), evaluated along a random direction of every parameter and of
    h(t−1), vs central differences of the NumPy reference step along the same direction."""

    case = CELL_CASES[name]
    cell, params, inputs, _, h0 = case.problem(seed, T=1, B=1)
    dims = {cell.size_symbols[k]: v for k, v in case.sizes.items() if k in cell.size_symbols}
    rows = _sensitivity_rows(name)
    rng = np.random.default_rng(seed + 3)
    direction = {k: rng.normal(size=v.shape) for k, v in params.items()}
    dh_prev = rng.normal(size=h0["h"].shape)
    x_t = {k: v[0] for k, v in inputs.items()}

    def at(sign):  # the step at θ ± eps v, h(t-1) ± eps dh(t-1)
        p = {k: v + sign * EPS * direction[k] for k, v in params.items()}
        hp = h0["h"] + sign * EPS * dh_prev
        return {"h": case.step(p, x_t, hp), **{q: f(p, x_t, hp) for q, f in case.defines.items()}}

    plus, minus = at(1.0), at(-1.0)
    base = at(0.0)
    column = {k: v.reshape(_shape(cell.params[k].symbol.xreplace(dims))) for k, v in params.items()}
    env = {**column, "x": x_t["x"].T, "h_prev": h0["h"].T, "∂h_prev/∂θ": dh_prev.T}
    env |= {k: v.T for k, v in base.items()}
    directions = {
        k: v.reshape(_shape(cell.params[k].symbol.xreplace(dims))) for k, v in direction.items()
    }
    assert [q for q, _ in rows] == [*case.defines, "h"]
    for q, formula in rows:
        expected = ((plus[q] - minus[q]) / (2 * EPS)).T
        got = evaluate(formula.xreplace(dims), env, directions=directions)
        _assert_close(got, expected, f"{name}: ∂{q}/∂θ", formula)
        env[f"∂{q}/∂θ"] = expected  # later rows read this quantity's sensitivity by name


@functools.cache
def _sensitivity_rows(name: str):
    from rnnsym.backends.numpy_forward import sensitivities

    return sensitivities(rs.derive(CELL_CASES[name].build())).display


def test_sensitivity_formulas_are_the_docstrings():
    """The formulas evaluated above are the ones a forward kernel's docstring prints."""
    from rnnsym.backends.numpy_forward import sensitivities, sensitivity_text

    for name in CELL_CASES:
        kernel = _kernel(name, "forward")
        sens = sensitivities(kernel.derivation)
        text = sensitivity_text(sens)
        # a printed row is "(N) ∂h⁽ᵗ⁾/∂θ = …", N its number in the kernel's docstring
        rows = [
            line.strip()
            for line in text.splitlines()
            if re.sub(r"^\(\d+\)\s*", "", line.strip()).startswith("∂")
        ]
        assert len(rows) >= len(sens.display), name  # one printed row per formula at least
        for line in rows:
            assert line in kernel.source, (name, line)


def test_seed_terms_splits_a_tangent_into_seeds_and_the_rest():
    """seed_terms finds every c · Seed term, also inside c (a + b), and keeps the rest."""
    from rnnsym.ir.jvp import seed_terms

    seed_W, seed_b = Seed(W, h, OneMatrix(n, 1), 0, n), param_tangent(b)
    other = mul(U, MatrixSymbol("dx", m, 1))
    tangent_value = add(mul(2, seed_W), mul(3, add(mul(5, seed_b), other)))
    seeds, others = seed_terms(tangent_value)
    assert {(c, s) for c, s in seeds} == {(2, seed_W), (15, seed_b)}
    assert len(others) == 1 and not any(isinstance(x, Seed) for x in sp.preorder_traversal(others))
    env, direction = _point(1), _random_direction(1, LEAVES)
    env["dx"] = direction["x"]
    whole = evaluate(tangent_value, env, directions=direction)
    parts = sum(float(c) * evaluate(s, env, direction) for c, s in seeds)
    parts = parts + sum(evaluate(o, env, direction) for o in others)
    _assert_close(parts, whole, "seeds + others == tangent")


def test_a_zero_tangent_gives_a_zero_of_the_node_shape():
    """jvp() with ZeroMatrix tangents (arguments that do not vary) gives zero of the node's
    shape. tangent() skips such nodes; this is jvp()'s own contract. (MatMul and Hadamard
    rules need at least one varying factor: add() of no terms refuses, so they are left out.)"""
    from rnnsym.ir.jvp import jvp
    from rnnsym.ir.ops import postorder

    env = _point(0)
    checked = set()
    for expr, _ in EXPRESSIONS.values():
        for node in postorder([expr]):
            if isinstance(node, (MatrixSymbol, MatMul, HadamardProduct)):
                continue
            zeros = [
                ZeroMatrix(*a.shape) if isinstance(a, sp.MatrixExpr) else None for a in node.args
            ]
            value = jvp(node, node, zeros)
            assert value.shape == node.shape, sp.sstr(node)
            np.testing.assert_array_equal(evaluate(value, env), np.zeros(_shape(node)))
            checked.add(type(node))
    assert checked >= {MatAdd, Transpose, Apply, Slice, Concat, Pad, LogSumExp}


@pytest.mark.parametrize(
    "expr, param",
    [
        (mul(A, B), "A"),  # A's right part B is a matrix: no seed of a vector
        (mul(transpose(h), W), "W"),  # nothing on W's right
    ],
)
def test_forward_mode_refuses_a_parameter_without_a_vector_on_its_right(expr, param):
    with pytest.raises(rs.DerivationError, match=f"parameter {param} multiplied by a vector"):
        tangent(expr, expr, {leaf: param_tangent(leaf) for leaf in _leaves_of(expr)})


@pytest.mark.parametrize("name", sorted(k for k, (_, seedable) in EXPRESSIONS.items() if seedable))
def test_elementwise_factors_and_slices_fold_into_the_seeds(name):
    """The documented form of a parameter tangent (rnnsym.ir.jvp): elementwise factors and row
    slices fold into each seed's z and [a:b], so a seed outside c · Seed terms only sits under
    a matrix product (c L Seed(P, r) keeps L) or inside a concatenation or padding."""
    from rnnsym.ir.jvp import seed_terms

    def loose_seeds(node, sheltered=False) -> list:
        if isinstance(node, Seed):
            return [] if sheltered else [node]
        if isinstance(node, (Concat, Pad)) or (
            isinstance(node, MatMul) and len(coeff_and_factors(node)[1]) >= 2
        ):
            sheltered = True  # a matrix factor L (not only a coefficient), or a concatenation
        found = []
        for arg in node.args:
            if isinstance(arg, sp.MatrixExpr):
                found += loose_seeds(arg, sheltered)
        return found

    _, others = seed_terms(_tangent(name, seeded=True))
    for term in others:
        assert loose_seeds(term) == [], sp.sstr(term)
