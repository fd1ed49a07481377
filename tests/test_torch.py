"""Agreement with a system nobody here wrote: rnnsym's built-in cells vs ``torch.nn``.

The weights of ``torch.nn.LSTM``, ``torch.nn.GRU`` and ``torch.nn.RNN`` (tanh and relu) are
mapped into rnnsym's parameters using the layout PyTorch documents (single layer, unidirectional,
``batch_first=False``, i.e. ``(T, B, features)`` like rnnsym):

- ``lstm``: ``W_ih = weight_ih_l0`` (4n, m), ``W_hh = weight_hh_l0`` (4n, n), ``b_ih = bias_ih_l0``,
  ``b_hh = bias_hh_l0``; gates stacked i, f, g, o.
- ``gru``: the same names with 3n rows, gates r, z, n, and the reset gate applied after the
  product: ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
- ``elman`` / ``elman_relu`` (``nn.RNN`` with ``nonlinearity="tanh"`` / ``"relu"``): ``W =
  weight_hh_l0``, ``U = weight_ih_l0`` and ``b = bias_ih_l0 + bias_hh_l0``; rnnsym's one bias has
  the gradient that torch gives each of its two biases.

The output layer and the loss are written out in torch (``out = h @ V.T + b_V``, or ``o = c + V
h`` for the Elman cells, and ``0.5 * ((out - y)**2).sum()``), and autograd gives the reference
gradients. Everything runs in float64; the modules are made with ``.double()`` (the global torch
default dtype is left alone). The loss, every gradient, the state sequence and the output sequence
must agree.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, note
from hypothesis import strategies as st

import rnnsym as rs

torch = pytest.importorskip(
    "torch",
    reason=(
        "PyTorch not installed: install the 'compare' extra (pip install '.[compare]') to "
        "compare against torch.nn.LSTM/GRU/RNN"
    ),
)

CELLS = ("elman", "elman_relu", "lstm", "gru")

# Tolerance. rnnsym and torch evaluate the same float64 arithmetic in a different order (torch
# adds the two biases separately, uses BLAS for the products, its own sigmoid/tanh kernels), so
# their results differ by rounding alone: ~1e-16 per operation, carried through T <= 8 steps of
# n <= 6 sized products and amplified by at most a few orders of magnitude by the recurrence at
# weight scale <= 2. That is ~1e-14 relative; rtol = 1e-10 leaves a wide margin while any wrong
# term, gate order or bias mapping gives O(1) relative errors. atol = 1e-12 * max(1, max|ref|)
# covers entries that cancel to ~0, judging them on the array's scale rather than their own.
RTOL, ATOL_REL = 1e-10, 1e-12


@dataclasses.dataclass(frozen=True)
class Case:
    """Sizes and seed of one random problem; arrays come from ``np.random.default_rng(seed)``."""

    n: int
    m: int
    k: int
    T: int
    B: int
    seed: int
    scale: float = 1.0
    with_h0: bool = False


def cases() -> st.SearchStrategy[Case]:
    """Sizes n, m, k in 1..6, T in 1..8, B in 1..3, a seed, a weight scale, with/without h0."""
    dim = st.integers(1, 6)
    return st.builds(
        Case,
        n=dim,
        m=dim,
        k=dim,
        T=st.integers(1, 8),
        B=st.integers(1, 3),
        seed=st.integers(0, 2**32 - 1),
        scale=st.floats(0.1, 2.0, allow_nan=False, allow_infinity=False),
        with_h0=st.booleans(),
    )


# Pinned edge cases: one step of one scalar sequence (no recurrent term at all), with and without
# an initial state, and the longest scalar sequence at the largest weight scale.
EDGE = Case(n=1, m=1, k=1, T=1, B=1, seed=0)
EDGE_H0 = dataclasses.replace(EDGE, with_h0=True)
EDGE_LONG = Case(n=1, m=1, k=1, T=8, B=1, seed=1, scale=2.0, with_h0=True)


@pytest.fixture(scope="module")
def kernels() -> dict[str, Any]:
    """rnnsym's generated kernels for the four cells torch has, compiled once per module."""
    return {name: rs.compile(rs.cells.get(name)) for name in CELLS}


@dataclasses.dataclass
class Problem:
    """One problem in both systems: torch module and tensors, rnnsym params and arrays."""

    module: Any
    V: Any  # torch leaf (k, n)
    bias_out: Any  # torch leaf (k,): b_V, or c for the Elman cells
    params: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray
    h0: np.ndarray | None
    c0: np.ndarray | None


def _module(name: str, n: int, m: int) -> Any:
    """The float64 torch.nn module for rnnsym's cell ``name`` (one layer, batch_first=False)."""
    if name == "lstm":
        return torch.nn.LSTM(m, n).double()
    if name == "gru":
        return torch.nn.GRU(m, n).double()
    nonlinearity = "relu" if name == "elman_relu" else "tanh"
    return torch.nn.RNN(m, n, nonlinearity=nonlinearity).double()


def make_problem(name: str, case: Case) -> Problem:
    """Random weights ~ N(0, scale^2 / fan_in) from the seed, copied into torch and rnnsym."""
    rng = np.random.default_rng(case.seed)
    n, m, k, T, B = case.n, case.m, case.k, case.T, case.B
    gates = {"lstm": 4, "gru": 3}.get(name, 1)
    w_ih = rng.normal(0.0, case.scale / np.sqrt(m), (gates * n, m))
    w_hh = rng.normal(0.0, case.scale / np.sqrt(n), (gates * n, n))
    b_ih = rng.normal(0.0, case.scale, gates * n) * 0.5
    b_hh = rng.normal(0.0, case.scale, gates * n) * 0.5
    V = rng.normal(0.0, case.scale / np.sqrt(n), (k, n))
    bias_out = rng.normal(0.0, 1.0, k)
    x = rng.normal(0.0, 1.0, (T, B, m))
    y = rng.normal(0.0, 1.0, (T, B, k))
    h0 = rng.normal(0.0, 0.5, (B, n)) if case.with_h0 else None
    c0 = rng.normal(0.0, 1.0, (B, n)) if case.with_h0 and name == "lstm" else None

    module = _module(name, n, m)
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.from_numpy(w_ih))
        module.weight_hh_l0.copy_(torch.from_numpy(w_hh))
        module.bias_ih_l0.copy_(torch.from_numpy(b_ih))
        module.bias_hh_l0.copy_(torch.from_numpy(b_hh))
    if name in ("lstm", "gru"):
        params = {"W_ih": w_ih, "W_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh, "V": V, "b_V": bias_out}
    else:
        params = {"W": w_hh, "U": w_ih, "b": b_ih + b_hh, "V": V, "c": bias_out}
    return Problem(
        module=module,
        V=torch.from_numpy(V.copy()).requires_grad_(),
        bias_out=torch.from_numpy(bias_out.copy()).requires_grad_(),
        params={key: value.copy() for key, value in params.items()},
        x=x,
        y=y,
        h0=h0,
        c0=c0,
    )


@dataclasses.dataclass
class TorchResult:
    """torch's loss, states, outputs and gradients mapped to rnnsym's names."""

    loss: float
    h: np.ndarray  # (T, B, n)
    c_last: np.ndarray | None  # (B, n), LSTM only
    out: np.ndarray  # (T, B, k)
    grads: dict[str, np.ndarray]
    extra: dict[str, np.ndarray]  # bias_hh_l0.grad for the Elman cells (should equal grad b)


def run_torch(name: str, p: Problem) -> TorchResult:
    """Forward, output layer, loss and backward in torch; gradients under rnnsym's names."""
    x = torch.from_numpy(p.x)
    state: Any = None
    if p.h0 is not None:
        h0 = torch.from_numpy(p.h0)[None]  # (1, B, n): one layer
        state = (h0, torch.from_numpy(p.c0)[None]) if name == "lstm" else h0
    h_seq, final = p.module(x, state)
    out = h_seq @ p.V.T + p.bias_out  # V h + b_V, or c + V h: the same expression
    loss = 0.5 * ((out - torch.from_numpy(p.y)) ** 2).sum()
    loss.backward()
    mod = p.module

    def g(tensor: Any) -> np.ndarray:
        return tensor.grad.detach().numpy().copy()

    extra: dict[str, np.ndarray] = {}
    if name in ("lstm", "gru"):
        grads = {
            "W_ih": g(mod.weight_ih_l0),
            "W_hh": g(mod.weight_hh_l0),
            "b_ih": g(mod.bias_ih_l0),
            "b_hh": g(mod.bias_hh_l0),
            "V": g(p.V),
            "b_V": g(p.bias_out),
        }
    else:
        grads = {
            "W": g(mod.weight_hh_l0),
            "U": g(mod.weight_ih_l0),
            "b": g(mod.bias_ih_l0),
            "V": g(p.V),
            "c": g(p.bias_out),
        }
        extra["b (from bias_hh_l0)"] = g(mod.bias_hh_l0)
    c_last = final[1][0].detach().numpy().copy() if name == "lstm" else None
    return TorchResult(
        loss=float(loss.item()),
        h=h_seq.detach().numpy().copy(),
        c_last=c_last,
        out=out.detach().numpy().copy(),
        grads=grads,
        extra=extra,
    )


def assert_close(actual: Any, expected: np.ndarray, label: str) -> None:
    """float64 ndarray of ``expected``'s shape, within RTOL and ATOL_REL * max(1, max|ref|)."""
    assert isinstance(actual, np.ndarray), f"{label}: expected ndarray, got {type(actual)}"
    assert actual.dtype == np.float64, f"{label}: dtype {actual.dtype}"
    assert actual.shape == expected.shape, f"{label}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL_REL * scale, err_msg=label)


def rnnsym_h0(name: str, p: Problem) -> Any:
    """rnnsym's ``h0`` argument: None, an array (B, n), or {"h", "c"} for the LSTM."""
    if p.h0 is None:
        return None
    return {"h": p.h0, "c": p.c0} if name == "lstm" else p.h0


@pytest.mark.parametrize("name", CELLS)
@given(case=cases())
@example(case=EDGE)
@example(case=EDGE_H0)
@example(case=EDGE_LONG)
def test_loss_and_gradients_match_torch(kernels: dict[str, Any], name: str, case: Case) -> None:
    """Loss and the gradient of every parameter agree with torch autograd to 1e-10 relative."""
    note(f"{name}: {case!r}")
    p = make_problem(name, case)
    ref = run_torch(name, p)
    loss, grads = kernels[name].loss_and_grad(p.params, {"x": p.x}, {"y": p.y}, rnnsym_h0(name, p))
    note(f"torch loss = {ref.loss!r}, rnnsym loss = {float(loss)!r}")
    assert np.ndim(loss) == 0
    tol = RTOL * abs(ref.loss) + ATOL_REL * max(1.0, abs(ref.loss))
    assert abs(float(loss) - ref.loss) <= tol, f"loss {float(loss)!r} != torch {ref.loss!r}"
    assert set(grads) == set(ref.grads), sorted(grads)
    for key, expected in ref.grads.items():
        assert_close(grads[key], expected, f"{name}: grad {key}")
    for label, expected in ref.extra.items():  # torch's two biases each carry rnnsym's grad b
        assert_close(grads["b"], expected, f"{name}: grad {label}")


@pytest.mark.parametrize("name", CELLS)
@given(case=cases())
@example(case=EDGE_H0)
@example(case=EDGE_LONG)
def test_forward_states_match_torch(kernels: dict[str, Any], name: str, case: Case) -> None:
    """rnnsym's forward h sequence (and outputs, and the LSTM's last c) equal torch's."""
    note(f"{name}: {case!r}")
    p = make_problem(name, case)
    ref = run_torch(name, p)
    states = kernels[name].forward(p.params, {"x": p.x}, rnnsym_h0(name, p))
    assert_close(states["h"], ref.h, f"{name}: states['h']")
    out_key = "o" if name.startswith("elman") else "out"
    assert_close(states[out_key], ref.out, f"{name}: states[{out_key!r}]")
    if name == "lstm":
        assert ref.c_last is not None
        assert_close(states["c"][-1], ref.c_last, "lstm: states['c'][-1] vs torch c_n")


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_gate_order_matters(kernels: dict[str, Any], name: str) -> None:
    """Swapping two gate blocks breaks agreement, so the tests above do check the layout."""
    case = Case(n=3, m=2, k=2, T=4, B=2, seed=7, with_h0=True)
    p = make_problem(name, case)
    ref = run_torch(name, p)
    n = case.n
    swap = np.r_[n : 2 * n, 0:n, 2 * n : p.params["W_ih"].shape[0]]  # first two gates swapped
    params = dict(p.params)
    for key in ("W_ih", "W_hh", "b_ih", "b_hh"):
        params[key] = p.params[key][swap]
    loss, _ = kernels[name].loss_and_grad(params, {"x": p.x}, {"y": p.y}, rnnsym_h0(name, p))
    assert abs(float(loss) - ref.loss) > 1e-6 * max(1.0, abs(ref.loss))


@pytest.mark.parametrize("name", CELLS)
def test_library_comparison_agrees_with_torch(name: str) -> None:
    """rnnsym.verify.torch_compare (what ``rnnsym paper`` certifies) finds the same agreement as the
    independent references above: every parameter and the loss within its 1e-10 tolerance."""
    from rnnsym.verify.torch_compare import TORCH_MODULES, compare_with_torch

    result = compare_with_torch(name, n=4, m=3, k=2, T=6, B=3, seed=11)
    assert result.available and result.torch_version == str(torch.__version__)
    assert result.module == TORCH_MODULES[name]
    params = set(rs.cells.get(name).params)
    assert params | {"loss"} <= set(result.errors)
    assert result.ok, str(result)
    assert max(result.errors.values()) <= RTOL  # the same bound as the tests above
