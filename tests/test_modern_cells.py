"""The built-in linear-recurrent cells of issue 14: minGRU, minLSTM and the RG-LRU.

Each is checked against references written here from the publications' equations, not from
rnnsym: minGRU and minLSTM from Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, "Were RNNs All We
Needed?" (arXiv:2410.01201, 2024), the RG-LRU from De et al., "Griffin: Mixing Gated Linear
Recurrences with Local Attention for Efficient Language Models" (arXiv:2402.19427, 2024),
eqs. (1)-(4). The references use the papers' own forms where rnnsym's cells use equal ones:
minLSTM's gates as f / (f + i) (the cell: σ(log σ(a_f) − log σ(a_i))), the RG-LRU's a(t) as
the power σ(Λ)^(c r) (the cell: exp of its logarithm). Every cell is

* classified linear (``all_linear``) and compiled to the scan schedule;
* equal, loss and gradients, to its sequential schedule;
* equal, loss, to a plain NumPy loop, and its gradients to central finite differences of
  that loop;
* equal, loss and gradients, to PyTorch autograd through the same loop written in torch.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnsym as rs
from rnnsym.verify import random_problem

CELLS = ["min_gru", "min_lstm", "rg_lru"]
SIZES = {"n": 3, "m": 4, "k": 2}
T, B = 7, 3

# why 1e-10: the scan and the loop, and the references, evaluate the same function in float64;
# they differ in the order of the recurrence's products and sums (the scan joins blocks of
# steps) and in equal forms of the gates (f / (f + i) vs σ(log σ(a_f) − log σ(a_i)), σ(Λ)^(8r)
# vs exp(−8 r softplus(−Λ))): a few ulp per operation, ~1e-15 relative over T = 7 steps with
# coefficients in (0, 1). 1e-10 still catches any wrong term (a missing term moves the loss or
# a gradient by far more than 1e-10 relative).
RTOL = 1e-10


def close(got, expected, what):
    """Equal to RTOL, relative to each entry or (for entries near zero, whose rounding error is
    that of the larger entries they are summed from) to the largest entry."""
    np.testing.assert_allclose(
        got, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max(), err_msg=what
    )


# ----- the papers' equations, written once for NumPy and torch (xp: the array module) -----


def _sigmoid(xp, a):
    return 1 / (1 + xp.exp(-a))


def _softplus(xp, a):
    return xp.log1p(xp.exp(a))


def _linear(x, W, b):
    """W x + b for a batch x of shape (B, m)."""
    return x @ W.T + b


def min_gru_step(xp, p, x, h):
    """Feng et al. (2024), minGRU: z = σ(Linear(x)), h̃ = Linear(x), h = (1 − z) h + z h̃."""
    z = _sigmoid(xp, _linear(x, p["W_z"], p["b_z"]))
    h_tilde = _linear(x, p["W_h"], p["b_h"])
    return (1 - z) * h + z * h_tilde


def min_lstm_step(xp, p, x, h):
    """Feng et al. (2024), minLSTM: f, i = σ(Linear(x)), h̃ = Linear(x),
    f′ = f / (f + i), i′ = i / (f + i), h = f′ h + i′ h̃."""
    f = _sigmoid(xp, _linear(x, p["W_f"], p["b_f"]))
    i = _sigmoid(xp, _linear(x, p["W_i"], p["b_i"]))
    h_tilde = _linear(x, p["W_h"], p["b_h"])
    return f / (f + i) * h + i / (f + i) * h_tilde


def rg_lru_step(xp, p, x, h):
    """De et al. (2024), eqs. (1)-(4): r = σ(W_a x + b_a), i = σ(W_x x + b_x),
    a = σ(Λ)^(c r) with c = 8, h = a h + sqrt(1 − a²) (i x)."""
    r = _sigmoid(xp, _linear(x, p["W_a"], p["b_a"]))
    i = _sigmoid(xp, _linear(x, p["W_x"], p["b_x"]))
    a = _sigmoid(xp, p["Lambda"]) ** (8 * r)
    return a * h + xp.sqrt(1 - a * a) * (i * x)


STEPS = {"min_gru": min_gru_step, "min_lstm": min_lstm_step, "rg_lru": rg_lru_step}


def reference_loss(xp, name, p, xs, ys):
    """Σ_t ½ ‖V h(t) + b_V − y(t)‖², summed over the batch, h(0) = 0: a plain loop over t."""
    h = xp.zeros((xs.shape[1], p["V"].shape[1]), dtype=xs.dtype)
    loss = 0
    for t in range(xs.shape[0]):
        h = STEPS[name](xp, p, xs[t], h)
        out = h @ p["V"].T + p["b_V"]
        loss = loss + 0.5 * ((out - ys[t]) ** 2).sum()
    return loss


# ----- the problems -----


def problem(name, seed=0):
    cell = rs.cells.get(name)
    sizes = {"n": SIZES["n"], "k": SIZES["k"]} if name == "rg_lru" else SIZES
    params, inputs, targets = random_problem(cell, sizes=sizes, T=T, B=B, seed=seed)
    return cell, params, inputs["x"], targets["y"]


_KERNELS: dict = {}


def kernel(name, schedule=None):
    key = (name, schedule)
    if key not in _KERNELS:
        cell = rs.cells.get(name)
        _KERNELS[key] = (
            rs.compile(cell) if schedule is None else rs.compile(cell, schedule=schedule)
        )
    return _KERNELS[key]


# ----- the tests -----


@pytest.mark.parametrize("name", CELLS)
def test_linear_and_compiled_to_a_scan(name):
    derivation = rs.derive(rs.cells.get(name))
    linear = derivation.linear_states
    assert linear.all_linear, linear.text()
    assert list(linear.linear) == ["h"]
    assert kernel(name).schedule == "scan"
    assert kernel(name, "sequential").schedule == "sequential"
    # the layer (output=False) stacks under another linear cell into a cell that is all scan
    stacked = rs.stack(getattr(rs.cells, name)(output=False), rs.cells.min_gru())
    assert rs.derive(stacked).linear_states.order == ["h_1", "h_2"]
    assert rs.compile(stacked).schedule == "scan"


@pytest.mark.parametrize("name", CELLS)
def test_scan_equals_the_sequential_schedule(name):
    _, params, x, y = problem(name)
    loss_scan, grads_scan = kernel(name).loss_and_grad(params, {"x": x}, {"y": y})
    loss_loop, grads_loop = kernel(name, "sequential").loss_and_grad(params, {"x": x}, {"y": y})
    np.testing.assert_allclose(loss_scan, loss_loop, rtol=RTOL)
    assert set(grads_scan) == set(params)
    for p in params:
        close(grads_scan[p], grads_loop[p], p)


@pytest.mark.parametrize("name", CELLS)
def test_against_a_numpy_loop_and_its_finite_differences(name):
    _, params, x, y = problem(name, seed=1)
    loss, grads = kernel(name).loss_and_grad(params, {"x": x}, {"y": y})
    np.testing.assert_allclose(loss, reference_loss(np, name, params, x, y), rtol=RTOL)
    # central differences of the NumPy loop, eps = 1e-6: truncation error ~eps² |L'''| ≈ 1e-12,
    # rounding ~1e-16 |L| / eps ≈ 1e-10 |L|; |L| is O(10) here, so 1e-7 absolute plus 1e-6
    # relative bounds both with margin, and a wrong gradient term (O(1e-2) or more) fails it
    eps = 1e-6
    for p, value in params.items():
        numeric = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            plus = {**params, p: value.copy()}
            minus = {**params, p: value.copy()}
            plus[p][idx] += eps
            minus[p][idx] -= eps
            numeric[idx] = (
                reference_loss(np, name, plus, x, y) - reference_loss(np, name, minus, x, y)
            ) / (2 * eps)
        np.testing.assert_allclose(grads[p], numeric, rtol=1e-6, atol=1e-7, err_msg=p)


@pytest.mark.parametrize("name", CELLS)
def test_against_torch_autograd(name):
    torch = pytest.importorskip("torch")
    _, params, x, y = problem(name, seed=2)
    tp = {p: torch.tensor(v, dtype=torch.float64, requires_grad=True) for p, v in params.items()}
    tloss = reference_loss(torch, name, tp, torch.tensor(x), torch.tensor(y))
    tloss.backward()
    loss, grads = kernel(name).loss_and_grad(params, {"x": x}, {"y": y})
    np.testing.assert_allclose(loss, tloss.item(), rtol=RTOL)
    for p in params:
        close(grads[p], tp[p].grad.numpy(), p)


def test_min_lstm_gates_stay_exact_where_f_and_i_underflow():
    """With a_f, a_i ≈ −800, σ underflows to 0 and the paper's f / (f + i) is 0 / 0; the cell's
    σ(log σ(a_f) − log σ(a_i)) is the same number computed in log space. Compared with the
    gates computed in log space by NumPy's logaddexp: f′ = exp(log f − log(f + i))."""
    _, params, x, y = problem("min_lstm", seed=3)
    params = {**params, "b_f": params["b_f"] - 800.0, "b_i": params["b_i"] - 800.0}
    with np.errstate(over="ignore", invalid="ignore"):
        assert np.isnan(reference_loss(np, "min_lstm", params, x, y))  # the direct form fails
    h, states = np.zeros((B, SIZES["n"])), []
    for x_t in x:
        log_f = -np.logaddexp(0, -(x_t @ params["W_f"].T + params["b_f"]))
        log_i = -np.logaddexp(0, -(x_t @ params["W_i"].T + params["b_i"]))
        log_sum = np.logaddexp(log_f, log_i)
        h_tilde = x_t @ params["W_h"].T + params["b_h"]
        h = np.exp(log_f - log_sum) * h + np.exp(log_i - log_sum) * h_tilde
        states.append(h)
    got = kernel("min_lstm").forward(params, {"x": x})["h"]
    # 1e-10: the same gates by two equal float64 formulas, a few ulp each (as RTOL above)
    np.testing.assert_allclose(got, np.array(states), rtol=RTOL)
    loss, grads = kernel("min_lstm").loss_and_grad(params, {"x": x}, {"y": y})
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())
