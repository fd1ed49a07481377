"""Tests of the hand-written oracle in ``reference_elman`` (they do not need ``rnnsym``).

Equation numbers (2)-(9) are the report's (``spec/seeds-en.md`` section 1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from reference_elman import (
    PARAM_NAMES,
    central_differences,
    elman_loss,
    elman_reference,
    random_problem,
    rel_err,
)

# Central differences with eps = 1e-6 have truncation error O(eps^2 * |f'''|) ~ 1e-12 and
# rounding error O(ulp(L) / eps) ~ 1e-16 * |L| / 1e-6 ~ 1e-10 * |L|, so with O(1) losses and
# gradients a relative error (floored at 1) of ~1e-8 is the right bound: much looser and a wrong
# formula could slip through, much tighter and rounding alone would fail the test.
EPS = 1e-6
CD_RTOL = 1e-8


# (n, m, k, T, B, seed, scale, with_h0)
CASES = [
    (1, 1, 1, 1, 1, 0, 1.0, False),
    (1, 1, 1, 3, 1, 1, 1.5, True),
    (2, 3, 1, 1, 2, 2, 1.0, True),
    (3, 2, 2, 4, 2, 3, 0.5, False),
    (4, 3, 2, 5, 2, 4, 2.0, True),
    (4, 4, 4, 5, 1, 5, 1.0, False),
    (2, 1, 3, 6, 3, 6, 1.2, True),
]


@pytest.mark.parametrize(("n", "m", "k", "T", "B", "seed", "scale", "with_h0"), CASES)
def test_gradients_match_central_differences(
    n: int, m: int, k: int, T: int, B: int, seed: int, scale: float, with_h0: bool
) -> None:
    """Eqs. (6)-(9) plus grad_b, grad_c agree with central differences of the loss (5)."""
    params, x, y, h0 = random_problem(n, m, k, T, B, seed, scale, with_h0)
    _, grads, _ = elman_reference(params, x, y, h0)
    numeric = central_differences(lambda p: elman_loss(p, x, y, h0), params, EPS)
    assert set(grads) == set(PARAM_NAMES)
    for name in PARAM_NAMES:
        assert grads[name].shape == params[name].shape, name
        assert grads[name].dtype == np.float64, name
        err = rel_err(grads[name], numeric[name])
        assert err < CD_RTOL, f"grad_{name}: relative error {err:.3e}"


def test_hand_computed_scalar_sequence() -> None:
    """n = m = k = 1, T = 2: forward (2)-(5) and backward (6)-(9) written out by hand."""
    w, u, bb, v, cc = 0.7, -1.3, 0.2, 1.1, -0.4
    xs, ys, h_0 = [0.5, -2.0], [0.3, 1.0], 0.25
    params = {
        "W": np.array([[w]]),
        "U": np.array([[u]]),
        "b": np.array([bb]),
        "V": np.array([[v]]),
        "c": np.array([cc]),
    }
    x = np.array(xs).reshape(2, 1, 1)
    y = np.array(ys).reshape(2, 1, 1)
    loss, grads, states = elman_reference(params, x, y, np.array([[h_0]]))

    h1 = math.tanh(bb + w * h_0 + u * xs[0])
    h2 = math.tanh(bb + w * h1 + u * xs[1])
    o1, o2 = cc + v * h1, cc + v * h2
    e1, e2 = o1 - ys[0], o2 - ys[1]
    g2 = v * e2  # (9) at t = T: no recurrent term
    g1 = v * e1 + w * (1 - h2**2) * g2  # (9) at t = 1
    d1, d2 = 1 - h1**2, 1 - h2**2
    expected = {
        "V": e1 * h1 + e2 * h2,
        "c": e1 + e2,
        "W": d1 * g1 * h_0 + d2 * g2 * h1,
        "U": d1 * g1 * xs[0] + d2 * g2 * xs[1],
        "b": d1 * g1 + d2 * g2,
    }
    assert loss == pytest.approx(0.5 * e1**2 + 0.5 * e2**2, rel=1e-14)
    np.testing.assert_allclose(states["h"][:, 0, 0], [h1, h2], rtol=1e-14)
    np.testing.assert_allclose(states["o"][:, 0, 0], [o1, o2], rtol=1e-14)
    for name, value in expected.items():
        np.testing.assert_allclose(grads[name].ravel(), [value], rtol=1e-13, err_msg=name)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_is_sum_of_per_step_and_per_sequence_losses(seed: int) -> None:
    """(5): L = sum over t and batch of 1/2 |o(t) - y(t)|^2; also additive over batch and time."""
    n, m, k, T, B = 3, 2, 2, 6, 3
    params, x, y, h0 = random_problem(n, m, k, T, B, seed, 1.0, with_h0=True)
    loss, _, states = elman_reference(params, x, y, h0)
    per_step = 0.5 * np.sum((states["o"] - y) ** 2, axis=2)  # (T, B)
    assert per_step.shape == (T, B)
    assert loss == pytest.approx(float(per_step.sum()), rel=1e-13)

    per_sequence = [
        elman_loss(params, x[:, i : i + 1], y[:, i : i + 1], h0[i : i + 1]) for i in range(B)
    ]
    assert loss == pytest.approx(sum(per_sequence), rel=1e-13)

    # The recurrence is causal: the loss of a prefix is the partial sum of the per-step losses.
    for t in range(1, T + 1):
        prefix = elman_loss(params, x[:t], y[:t], h0)
        assert prefix == pytest.approx(float(per_step[:t].sum()), rel=1e-13)


def test_h0_none_means_zeros() -> None:
    """h(0) defaults to zero."""
    params, x, y, _ = random_problem(3, 2, 2, 4, 2, seed=7)
    loss_none, grads_none, states_none = elman_reference(params, x, y, None)
    loss_zero, grads_zero, states_zero = elman_reference(params, x, y, np.zeros((2, 3)))
    assert loss_none == loss_zero
    for name in PARAM_NAMES:
        np.testing.assert_array_equal(grads_none[name], grads_zero[name])
    for key in ("h", "o"):
        np.testing.assert_array_equal(states_none[key], states_zero[key])


def test_h0_enters_the_first_step_and_chains_sequences() -> None:
    """(2) at t = 1 uses h0; running two halves with h0 = h(T1) equals running the whole."""
    params, x, y, h0 = random_problem(3, 2, 2, 6, 2, seed=8, with_h0=True)
    loss, _, states = elman_reference(params, x, y, h0)
    a1 = params["b"] + h0 @ params["W"].T + x[0] @ params["U"].T  # (2), row-vector form
    np.testing.assert_allclose(states["h"][0], np.tanh(a1), rtol=1e-14, atol=1e-15)
    loss_zero, _, _ = elman_reference(params, x, y, None)
    assert loss != loss_zero

    t1 = 2
    loss_a, _, states_a = elman_reference(params, x[:t1], y[:t1], h0)
    loss_b, _, states_b = elman_reference(params, x[t1:], y[t1:], states_a["h"][-1])
    assert loss == pytest.approx(loss_a + loss_b, rel=1e-13)
    np.testing.assert_allclose(
        np.concatenate([states_a["h"], states_b["h"]]), states["h"], rtol=1e-13, atol=1e-15
    )


@pytest.mark.parametrize("with_h0", [False, True])
def test_single_step_has_no_recurrent_term(with_h0: bool) -> None:
    """T = 1: (9) reduces to grad_h(1) = V^T (o(1) - y(1)); with h0 = 0, grad_W = 0 by (7)."""
    n, m, k, B = 3, 2, 4, 2
    params, x, y, h0 = random_problem(n, m, k, 1, B, seed=9, with_h0=with_h0)
    _, grads, states = elman_reference(params, x, y, h0)
    h_prev = np.zeros((B, n)) if h0 is None else h0
    h1, o1 = states["h"][0], states["o"][0]
    e = o1 - y[0]  # (B, k)
    delta = (e @ params["V"]) * (1 - h1**2)  # rows: diag(1 - h^2) V^T (o - y)
    np.testing.assert_allclose(grads["V"], e.T @ h1, rtol=1e-13)
    np.testing.assert_allclose(grads["c"], e.sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(grads["U"], delta.T @ x[0], rtol=1e-13)
    np.testing.assert_allclose(grads["b"], delta.sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(grads["W"], delta.T @ h_prev, rtol=1e-13)
    if h0 is None:
        assert np.all(grads["W"] == 0.0)


def test_dtype_follows_x() -> None:
    """Computed in the dtype of x: float32 in, float32 grads and states out."""
    params, x, y, h0 = random_problem(3, 2, 2, 4, 2, seed=10, with_h0=True, dtype=np.float32)
    loss, grads, states = elman_reference(params, x, y, h0)
    assert isinstance(loss, float)
    for name in PARAM_NAMES:
        assert grads[name].dtype == np.float32, name
        assert grads[name].shape == params[name].shape, name
    assert states["h"].dtype == np.float32 and states["o"].dtype == np.float32
    loss64, grads64, _ = elman_reference(
        {key: val.astype(np.float64) for key, val in params.items()},
        x.astype(np.float64),
        y.astype(np.float64),
        h0.astype(np.float64),
    )
    assert loss == pytest.approx(loss64, rel=1e-5)
    for name in PARAM_NAMES:
        assert rel_err(grads[name], grads64[name]) < 1e-5, name


def test_reference_does_not_mutate_inputs() -> None:
    """The oracle leaves its arguments untouched."""
    params, x, y, h0 = random_problem(2, 3, 2, 3, 2, seed=11, with_h0=True)
    copies = ({key: val.copy() for key, val in params.items()}, x.copy(), y.copy(), h0.copy())
    elman_reference(params, x, y, h0)
    for name in PARAM_NAMES:
        np.testing.assert_array_equal(params[name], copies[0][name])
    np.testing.assert_array_equal(x, copies[1])
    np.testing.assert_array_equal(y, copies[2])
    np.testing.assert_array_equal(h0, copies[3])


def test_central_differences_on_a_known_function() -> None:
    """The numerical-gradient helper itself: f = sum(A * p^2) + sum(q^3) has a known gradient."""
    rng = np.random.default_rng(12)
    a = rng.normal(size=(3, 2))
    params = {"p": rng.normal(size=(3, 2)), "q": rng.normal(size=(4,))}

    def f(p: dict[str, np.ndarray]) -> float:
        return float(np.sum(a * p["p"] ** 2) + np.sum(p["q"] ** 3))

    numeric = central_differences(f, params, EPS)
    assert rel_err(numeric["p"], 2 * a * params["p"]) < CD_RTOL
    assert rel_err(numeric["q"], 3 * params["q"] ** 2) < CD_RTOL
    assert numeric["p"].dtype == np.float64 and numeric["q"].shape == (4,)
