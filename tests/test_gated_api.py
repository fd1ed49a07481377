"""Slicing, concatenation, named intermediates and cross-entropy: meaning and bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sympy as sp
from cells import CATALOGUE

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle


def msg(*parts: str) -> str:
    return "(?s)" + ".*".join(re.escape(p) for p in parts)


@pytest.fixture
def parts():
    cell = rs.Cell("g")
    n, m = cell.dims("n m")
    return cell, n, m, cell.input("x", m), cell.state("h", n)


def test_slices_have_the_stated_rows(parts):
    cell, n, m, x, h = parts
    W = cell.param("W", 3 * n, n)
    a = W @ h.prev
    assert a[0:n].shape == (n, 1)
    assert a[n : 3 * n].shape == (2 * n, 1)
    assert a[:].expr == a.expr  # the whole vector is not wrapped in a slice


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda a, n: a[n:n], "empty or outside"),
        (lambda a, n: a[0 : 4 * n], "empty or outside"),
        (lambda a, n: a[0:n:2], "sliced by rows"),
        (lambda a, n: a[0], "sliced by rows"),
        (lambda a, n: a[0:0.5], "integer expression"),
    ],
)
def test_bad_slices_name_the_vector(parts, make, expected):
    cell, n, m, x, h = parts
    a = cell.param("W", 3 * n, n) @ h.prev
    with pytest.raises(
        rs.CellError,
        match=msg("W*h_prev", "(3*n, 1)", expected) if "sliced" not in expected else msg(expected),
    ):
        make(a, n)


def test_concat_needs_column_vectors(parts):
    cell, n, m, x, h = parts
    W = cell.param("W", n, n)
    assert rs.concat(h.prev, x).shape == (n + m, 1)
    with pytest.raises(rs.ShapeError, match=msg("concat", "W", "(n, n)", "not a column vector")):
        rs.concat(h.prev, W)
    with pytest.raises(rs.CellError, match="at least one"):
        rs.concat()


def test_weight_on_a_concatenation_checks_sizes(parts):
    cell, n, m, x, h = parts
    W = cell.param("W", n, n + m)
    (W @ rs.concat(h.prev, x))  # fine
    with pytest.raises(rs.ShapeError, match=msg("W", "(n, m + n)", "inner dimensions")):
        W @ rs.concat(h.prev, h.prev)


def test_compound_sizes_are_checked_by_the_kernel():
    kernel = rs.compile(rs.cells.lstm())
    params, inputs, targets = random_problem(rs.cells.lstm(), T=2, B=1)
    bad = dict(params, W_ih=np.zeros((7, params["W_ih"].shape[1])))
    with pytest.raises(ValueError, match=msg("params['W_ih']", "(4*n, m)", "4*n")):
        kernel.loss_and_grad(bad, inputs, targets)


def test_define_names_intermediates_without_changing_the_kernel():
    def make(named: bool) -> rs.Cell:
        cell = rs.Cell("named" if named else "plain")
        n, m = cell.dims("n m")
        x, h = cell.input("x", m), cell.state("h", n)
        W, U = cell.param("W", n, n), cell.param("U", n, m)
        z = rs.sigmoid(W @ h.prev + U @ x)
        if named:
            z = cell.define("z", z)
        cell.update(h, (1 - z) * h.prev + z * rs.tanh(U @ x))
        cell.loss(rs.squared_error(h, cell.target("y", n)))
        return cell

    named, plain = rs.compile(make(True)), rs.compile(make(False))
    assert "∇_{z⁽ᵗ⁾}L" in named.derivation.pretty()
    params, inputs, targets = random_problem(make(True), T=4, B=2)
    l1, g1 = named.loss_and_grad(params, inputs, targets)
    l2, g2 = plain.loss_and_grad(params, inputs, targets)
    assert l1 == pytest.approx(l2, rel=1e-14)
    for name in g1:
        np.testing.assert_allclose(g1[name], g2[name], rtol=1e-13)


def test_define_order_is_checked(parts):
    cell, n, m, x, h = parts
    W = cell.param("W", n, n)
    later = rs.tanh(W @ h.prev)
    z = cell.define("z", later)
    cell.define("w", z * h.prev)  # uses an earlier definition: fine
    cell.update(h, z)
    cell.loss(rs.squared_error(h, cell.target("y", n)))
    rs.derive(cell)
    with pytest.raises(rs.ShapeError, match=msg("intermediate 'M'", "(n, n)")):
        cell.define("M", W)


def test_cross_entropy_gradient_is_softmax_minus_target():
    cell = rs.Cell("ce")
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, V = cell.param("W", n, n), cell.param("U", n, m), cell.param("V", k, n)
    cell.update(h, rs.tanh(W @ h.prev + U @ x))
    o = cell.output("o", V @ h)
    y = cell.target("y", k)
    cell.loss(rs.softmax_cross_entropy(o, y))
    d = rs.derive(cell)
    assert sp.sstr(d.output_adjoints["o"]) in ("-y + softmax(o)", "softmax(o) - y")
    assert scalar_oracle(cell, T=2).ok
    kernel = rs.compile(cell)
    params, inputs, targets = random_problem(cell, T=4, B=2)
    targets["y"] = np.eye(targets["y"].shape[-1])[np.zeros(targets["y"].shape[:2], dtype=int)]
    assert check_gradients(kernel, params, inputs, targets).ok
    with pytest.raises(rs.ShapeError, match=msg("softmax_cross_entropy", "o", "(k, 1)", "h")):
        rs.softmax_cross_entropy(o, h)


# ----- every built-in cell: forward(), the loss and vjp() against independent computations -----

BUILTIN_CELLS = sorted(rs.cells.BUILTIN)
MAKERS = {**{n: b.make for n, b in rs.cells.BUILTIN.items()}, **CATALOGUE}


def _builtin_problem(name: str, seed: int):
    """(cell, dims, params, inputs for forward() incl. fed-back ones, inputs, targets, h0)."""
    cell = MAKERS[name]()
    sizes = {s: 3 + i for i, s in enumerate(sorted(cell.size_symbols))}  # distinct sizes
    dims = {cell.size_symbols[s]: v for s, v in sizes.items()}
    params, inputs, targets = random_problem(cell, sizes=sizes, T=3, B=2, seed=seed)
    rng = np.random.default_rng(seed + 100)
    h0 = {
        n: rng.normal(0.0, 0.5, size=(2, int(s.symbol.shape[0].xreplace(dims))))
        for n, s in cell.states.items()
    }
    explicit = dict(inputs)
    for fed, target in cell.fed_back.items():  # forward() is given y(t-1) explicitly
        y = _dense_target(cell, target, targets[target], dims)
        explicit[fed] = np.concatenate([np.zeros_like(y[:1]), y[:-1]])
    return cell, dims, params, explicit, inputs, targets, h0


def _dense_target(cell, name, value, dims):
    """A class-index target as the one-hot vectors the cell's expressions use."""
    if name in cell.class_targets:
        size = int(cell.targets[name].symbol.shape[0].xreplace(dims))
        return np.eye(size)[value]
    return value


def _definition_run(kernel, dims, params, inputs, targets, h0):
    """States, outputs and total loss of the cell's own (inlined) equations, evaluated entry by
    entry by the NumPy evaluator of tests/test_rules.py: no generated code involved."""
    from test_rules import evaluate

    cell, d = kernel.cell, kernel.derivation
    T, B = 3, 2

    def size(var) -> int:
        return int(var.symbol.shape[0].xreplace(dims))

    column = {
        n: v.reshape(tuple(int(s.xreplace(dims)) for s in cell.params[n].symbol.shape))
        for n, v in params.items()
    }
    seqs = {n: np.zeros((T, B, size(v))) for n, v in {**cell.states, **cell.outputs}.items()}
    updates = {n: d.update_expr(n).xreplace(dims) for n in cell.updates}
    outputs = {n: d.output_expr(n).xreplace(dims) for n in cell.output_defs}
    loss_expr = d.loss_expr.xreplace(dims)
    total = 0.0
    for b in range(B):
        prev = {n: h0[n][b][:, None] for n in cell.states}
        for t in range(T):
            env = dict(column)
            for n, v in cell.inputs.items():
                value = inputs[n][b] if n in cell.context_inputs else inputs[n][t, b]
                env[v.symbol.name] = value[:, None]
            for n, v in cell.targets.items():
                env[v.symbol.name] = _dense_target(cell, n, targets[n], dims)[t, b][:, None]
            for n, s in cell.states.items():
                env[s.prev.symbol.name] = prev[n]
            for n, expr in updates.items():
                env[cell.states[n].symbol.name] = evaluate(expr, env)
            for n, expr in outputs.items():
                env[cell.outputs[n].symbol.name] = evaluate(expr, env)
            for n in seqs:
                var = cell.states.get(n) or cell.outputs[n]
                seqs[n][t, b] = env[var.symbol.name][:, 0]
            total += float(evaluate(loss_expr, env)[0, 0])
            prev = {n: env[s.symbol.name] for n, s in cell.states.items()}
    return seqs, total


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_builtin_forward_and_loss_match_the_definition(name, mode):
    """forward() and the loss of every built-in kernel (and of the test catalogue's cells)
    equal the cell's equations evaluated without generated code (T = 3, B = 2, nonzero h(0),
    distinct sizes)."""
    cell, dims, params, explicit, inputs, targets, h0 = _builtin_problem(name, seed=5)
    kernel = rs.compile(cell, mode=mode)
    seqs, total = _definition_run(kernel, dims, params, explicit, targets, h0)
    states = kernel.forward(params, explicit, h0 or None)
    assert set(states) == set(cell.states) | set(cell.outputs)
    for key, expected in seqs.items():
        # float64, the same operations in another order: rounding only
        np.testing.assert_allclose(states[key], expected, rtol=1e-10, atol=1e-12, err_msg=key)
    loss, _ = kernel.loss_and_grad(params, inputs, targets, h0 or None)
    assert loss == pytest.approx(total, rel=1e-10)


@pytest.mark.parametrize("name", BUILTIN_CELLS)
def test_builtin_vjp_adjoints_match_finite_differences_in_random_directions(name):
    """vjp()'s adjoints of every input sequence and every h(0), all entries at once: ⟨∇, v⟩ vs
    central differences of the loss along three random directions v per array."""
    cell, dims, params, _, inputs, targets, h0 = _builtin_problem(name, seed=9)
    kernel = rs.compile(cell)
    loss, _, g_in, g_h0 = kernel.vjp(params, inputs, targets, h0 or None)
    assert set(g_in) >= set(inputs) and set(g_h0) == set(cell.states)
    rng = np.random.default_rng(11)
    eps = 1e-6
    # rounding of the loss (1e-16 |L|) over 2 eps and the O(eps²) truncation stay below
    # 1e-7 max(1, |L|) by orders of magnitude; a wrong adjoint entry moves ⟨∇, v⟩ by O(1)
    tol = 1e-7 * max(1.0, abs(loss))

    def loss_at(new_inputs, new_h0):
        return kernel.loss_and_grad(params, new_inputs, targets, new_h0 or None)[0]

    for group, arrays, grads in (("input", inputs, g_in), ("h0", h0, g_h0)):
        for n, array in arrays.items():
            assert grads[n].shape == array.shape, (group, n)
            for _ in range(3):
                v = rng.normal(size=array.shape)
                if group == "input":
                    plus = loss_at({**inputs, n: array + eps * v}, h0)
                    minus = loss_at({**inputs, n: array - eps * v}, h0)
                else:
                    plus = loss_at(inputs, {**h0, n: array + eps * v})
                    minus = loss_at(inputs, {**h0, n: array - eps * v})
                numeric = (plus - minus) / (2 * eps)
                assert abs(np.sum(grads[n] * v) - numeric) <= tol, (group, n, numeric)
