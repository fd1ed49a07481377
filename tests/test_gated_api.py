"""Slicing, concatenation, named intermediates and cross-entropy: meaning and bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sympy as sp

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
