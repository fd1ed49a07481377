"""Generated sigmoid, softplus, log and cross-entropy code stays finite for |a| up to 1e3.

Pre-activations are driven to magnitudes up to 1e3 in float64. There exp(|a|) overflows
(exp(710) = inf) and sigmoid(-a) underflows to 0, so a naive kernel returns inf or NaN (log 0,
inf - inf, 0 * inf). NumPy is set to raise on overflow, invalid operations and division by zero;
underflow to 0 is allowed, because it is the correctly rounded result.

Finite is not enough: the gradients through softplus, log σ and the cross-entropy are compared
with closed forms evaluated stably in NumPy up to |a| = 1e3, and all gradients with finite
differences where those are accurate.
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


def _stable_sigmoid(a):
    return 0.5 * (1.0 + np.tanh(0.5 * a))  # no overflow for any finite a


@given(seed=st.integers(0, 2**16), exponent=st.floats(0.0, 3.0))
def test_saturated_gradients_match_closed_forms(kernel, seed, exponent):
    """The gradients of P (through softplus′ = σ), Q (through log σ′ = σ(−a)) and V (through the
    cross-entropy) against closed forms evaluated stably in NumPy, for |a| up to 1e3, where
    finite differences are useless: the stable forms must be right, not only finite."""
    scale = 10.0**exponent
    params, inputs, targets = problem(seed, scale)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        _, grads = kernel.loss_and_grad(params, inputs, targets)
        h = kernel.forward(params, inputs)["h"]
    x, y, d = inputs["x"], targets["y"], targets["d"]
    o = h @ params["V"].T + np.logaddexp(0.0, x @ params["P"].T)  # softplus, stably
    softmax = np.exp(o - o.max(axis=-1, keepdims=True))
    softmax /= softmax.sum(axis=-1, keepdims=True)
    g_o = softmax - y
    expected = {
        "V": np.einsum("tbk,tbn->kn", g_o, h),
        "P": np.einsum("tbk,tbm->km", g_o * _stable_sigmoid(x @ params["P"].T), x),
        "Q": np.einsum("tbn,tbm->nm", d * _stable_sigmoid(-(x @ params["Q"].T)), x),
    }
    for name, value in expected.items():
        # float64 sums of O(scale) terms in another order: 1e-12 relative to the largest entry
        atol = 1e-12 * max(1.0, np.abs(value).max())
        np.testing.assert_allclose(grads[name], value, rtol=1e-10, atol=atol, err_msg=name)


@given(seed=st.integers(0, 2**16), exponent=st.floats(-1.0, 0.5))
def test_gradients_match_finite_differences_at_moderate_scale(kernel, seed, exponent):
    """Every gradient (sigmoid, softplus, log σ, cross-entropy, through time) vs central finite
    differences where those are accurate (|a| up to about 3)."""
    params, inputs, targets = problem(seed, 10.0**exponent)
    report = rs.check_gradients(kernel, params, inputs, targets)
    assert report.ok, str(report)  # check_gradients' 1e-6 relative tolerance says why
