"""The independent scalar oracle: sympy.diff of the unrolled loss (node by node over the unrolled
graph, see tests/test_fast_oracle.py) vs the matrix derivation."""

from __future__ import annotations

import dataclasses

import pytest
import sympy as sp

import rnnsym as rs
from rnnsym.ir.ops import mul
from rnnsym.verify import check_gradients, random_problem, scalar_oracle


def test_elman_derivation_agrees_with_the_oracle_to_40_digits():
    # n = 2, T = 3 as the issue asks; 60-digit evaluation, at least 40 digits must agree
    report = scalar_oracle(rs.cells.elman(), sizes={"n": 2, "m": 2, "k": 2}, T=3)
    assert report.ok, str(report)
    assert min(report.agreement.values()) >= 40
    assert set(report.agreement) == {"W", "U", "b", "V", "c"}


def test_oracle_detects_a_wrong_derivation():
    """Scaling one parameter's derived term by 1 + 1e-30 is far below float64 and still caught."""
    cell = rs.cells.elman()
    d = rs.derive(cell)
    wrong_terms = dict(d.param_terms)
    wrong_terms["W"] = mul(1 + sp.Rational(1, 10**30), wrong_terms["W"])
    wrong = dataclasses.replace(d, param_terms=wrong_terms)
    report = scalar_oracle(cell, T=2, derivation=wrong)
    assert not report.ok
    assert report.agreement["W"] < 35
    assert report.agreement["U"] >= 40


def test_oracle_detects_a_dropped_recurrent_term():
    cell = rs.cells.elman()
    d = rs.derive(cell)
    wrong = dataclasses.replace(d, carry={})  # no second term in eq. (9)
    report = scalar_oracle(cell, T=3, derivation=wrong)
    assert not report.ok
    assert report.agreement["W"] < 10


def test_float_literals_stay_exact_for_the_oracle():
    """0.5 * relu(...) must not cap the 60-digit evaluation at float64 precision."""
    cell = rs.Cell("leaky")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U = cell.param("W", n, n), cell.param("U", n, m)
    cell.update(h, rs.tanh(W @ h.prev + U @ x) + 0.1 * rs.relu(U @ x))
    cell.loss(rs.squared_error(h, cell.target("y", n)))
    report = scalar_oracle(cell, T=2)
    assert report.ok, str(report)


def test_check_gradients_reports_every_parameter(elman_kernel):
    params, inputs, targets = random_problem(rs.cells.elman(), T=4, B=2, seed=3)
    report = check_gradients(elman_kernel, params, inputs, targets)
    assert set(report.errors) == set(params)
    # tolerance 1e-6: central differences with eps = 1e-6 are accurate to ~1e-9 here
    assert report.ok, str(report)
    assert "relative error" in str(report)


def test_check_gradients_detects_a_wrong_kernel(elman_kernel):
    class Wrong:
        def loss_and_grad(self, params, inputs, targets, h0=None):
            loss, grads = elman_kernel.loss_and_grad(params, inputs, targets, h0)
            return loss, {**grads, "U": grads["U"] * 1.001}

    params, inputs, targets = random_problem(rs.cells.elman(), T=3, B=1, seed=4)
    report = check_gradients(Wrong(), params, inputs, targets)
    assert report.errors["U"] > 1e-4
    assert report.errors["W"] < 1e-6
    assert not report.ok


@pytest.mark.parametrize("T", [1, 2])
def test_oracle_handles_short_sequences(T):
    assert scalar_oracle(rs.cells.elman(), T=T).ok


def test_random_problem_keeps_matrices_two_dimensional_at_size_one():
    """A (n, n) weight at n = 1 is still a matrix (1, 1); only vector parameters are 1-D."""
    import rnnsym as rs
    from rnnsym.verify import check_gradients, random_problem

    cell = rs.cells.elman()
    params, inputs, targets = random_problem(cell, sizes={"n": 1, "m": 1, "k": 1}, T=3)
    assert params["W"].shape == (1, 1) and params["V"].shape == (1, 1) and params["b"].shape == (1,)
    assert check_gradients(rs.compile(cell), params, inputs, targets).ok
