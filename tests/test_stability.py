"""Generated sigmoid, softplus, log and cross-entropy code stays finite for |a| up to 1e3.

Pre-activations are driven to magnitudes up to 1e3 in float64. There exp(|a|) overflows
(exp(710) = inf) and sigmoid(-a) underflows to 0, so a naive kernel returns inf or NaN (log 0,
inf - inf, 0 * inf). NumPy is set to raise on overflow, invalid operations and division by zero;
underflow to 0 is allowed, because it is the correctly rounded result.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

import rnnsym as rs


def saturating_cell() -> rs.Cell:
    cell = rs.Cell("saturating")
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U = cell.param("W", n, n), cell.param("U", n, m)
    P, Q, V = cell.param("P", k, m), cell.param("Q", n, m), cell.param("V", k, n)
    cell.update(h, rs.sigmoid(W @ h.prev + U @ x))
    o = cell.output("o", V @ h + rs.softplus(P @ x))
    z = cell.output("z", rs.log(rs.sigmoid(Q @ x)))  # built as the stable log_sigmoid
    cell.loss(rs.softmax_cross_entropy(o, cell.target("y", k)))
    cell.loss(rs.linear_loss(cell.target("d", n), z))
    return cell


@pytest.fixture(scope="module")
def kernel():
    return rs.compile(saturating_cell())


def problem(seed: int, scale: float, n=3, m=2, k=4, T=4, B=2):
    rng = np.random.default_rng(seed)
    params = {
        "W": rng.normal(size=(n, n)),
        "U": rng.normal(size=(n, m)),
        "P": rng.normal(size=(k, m)),
        "Q": rng.normal(size=(n, m)),
        "V": rng.normal(size=(k, n)) * scale,  # logits of size ~scale
    }
    x = rng.choice([-1.0, 1.0], size=(T, B, m)) * scale  # pre-activations of size ~scale
    y = np.eye(k)[rng.integers(0, k, size=(T, B))]  # one-hot targets
    d = rng.normal(size=(T, B, n))
    return params, {"x": x}, {"y": y, "d": d}


@given(seed=st.integers(0, 2**16), exponent=st.floats(0.0, 3.0))
def test_loss_and_gradients_are_finite_for_large_inputs(kernel, seed, exponent):
    scale = 10.0**exponent  # |a| from 1 to 1e3
    note(f"scale={scale:g}")
    params, inputs, targets = problem(seed, scale)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        loss, grads = kernel.loss_and_grad(params, inputs, targets)
        states = kernel.forward(params, inputs)
    assert np.isfinite(loss)
    for name, g in grads.items():
        assert np.all(np.isfinite(g)), name
    for name, value in states.items():
        assert np.all(np.isfinite(value)), name


def test_saturated_values_are_right(kernel):
    """At |a| = 1e3 the stable forms give the exact limits, not just finite numbers."""
    params, inputs, targets = problem(0, 1e3)
    params = {k: np.zeros_like(v) for k, v in params.items()}
    params["Q"][:, 0] = 1.0  # z = log σ(±1e3) per row: 0 or -1e3 (-softplus(1e3))
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        states = kernel.forward(params, inputs)
    x0 = inputs["x"][..., 0:1]
    expected = np.where(x0 > 0, 0.0, -1e3) * np.ones_like(states["z"])
    np.testing.assert_allclose(states["z"], expected, rtol=1e-15, atol=1e-300)
