"""Hand-written NumPy oracle for the Elman RNN and its BPTT gradients.

Written straight from the report's equations (2)-(9) (the Elman RNN and its gradients), one
time step and one batch element at a time, with column vectors, so that every line can be read
against the textbook formula. It is deliberately slow and must never import ``rnnsym``.

Shapes: ``W`` (n, n), ``U`` (n, m), ``b`` (n,), ``V`` (k, n), ``c`` (k,);
``x`` (T, B, m), ``y`` (T, B, k), ``h0`` (B, n) or ``None`` (zeros).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

PARAM_NAMES: tuple[str, ...] = ("W", "U", "b", "V", "c")


def _col(v: np.ndarray) -> np.ndarray:
    """Return ``v`` as a column vector of shape (len, 1)."""
    return np.asarray(v).reshape(-1, 1)


def elman_reference(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    h0: np.ndarray | None = None,
) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Loss, gradients and states of the Elman RNN, computed in the dtype of ``x``.

    Returns ``(loss, grads, states)``: ``loss`` is a Python float summed over time and batch
    (eq. (5)), ``grads`` has the keys and shapes of ``params`` (summed over time and batch) and
    ``states = {"h": (T, B, n), "o": (T, B, k)}``.
    """
    x = np.asarray(x)
    dtype = x.dtype
    x = x.astype(dtype, copy=False)
    y = np.asarray(y).astype(dtype, copy=False)
    W = np.asarray(params["W"]).astype(dtype, copy=False)
    U = np.asarray(params["U"]).astype(dtype, copy=False)
    b = _col(np.asarray(params["b"]).astype(dtype, copy=False))
    V = np.asarray(params["V"]).astype(dtype, copy=False)
    c = _col(np.asarray(params["c"]).astype(dtype, copy=False))

    T, B, m = x.shape
    n = W.shape[0]
    k = V.shape[0]
    assert W.shape == (n, n) and U.shape == (n, m) and V.shape == (k, n)
    assert b.shape == (n, 1) and c.shape == (k, 1) and y.shape == (T, B, k)
    if h0 is None:
        h0 = np.zeros((B, n), dtype=dtype)  # h(0) is zero by default
    h0 = np.asarray(h0).astype(dtype, copy=False)
    assert h0.shape == (B, n)

    loss = dtype.type(0)
    grads = {
        "W": np.zeros((n, n), dtype=dtype),
        "U": np.zeros((n, m), dtype=dtype),
        "b": np.zeros((n, 1), dtype=dtype),
        "V": np.zeros((k, n), dtype=dtype),
        "c": np.zeros((k, 1), dtype=dtype),
    }
    h_out = np.zeros((T, B, n), dtype=dtype)
    o_out = np.zeros((T, B, k), dtype=dtype)

    for i in range(B):
        # ---- forward pass; h[t] is h(t) for t = 0..T, x_[t], y_[t], o[t] for t = 1..T ----
        h: list[np.ndarray] = [_col(h0[i])]
        x_: list[np.ndarray | None] = [None]
        y_: list[np.ndarray | None] = [None]
        o: list[np.ndarray | None] = [None]
        for t in range(1, T + 1):
            x_t = _col(x[t - 1, i])
            y_t = _col(y[t - 1, i])
            a_t = b + W @ h[t - 1] + U @ x_t  # (2)  a(t) = b + W h(t-1) + U x(t)
            h_t = np.tanh(a_t)  # (3)  h(t) = tanh(a(t))
            o_t = c + V @ h_t  # (4)  o(t) = c + V h(t)
            loss = loss + dtype.type(0.5) * np.sum((o_t - y_t) ** 2)  # (5)  1/2 |o(t) - y(t)|^2
            h.append(h_t)
            x_.append(x_t)
            y_.append(y_t)
            o.append(o_t)
            h_out[t - 1, i] = h_t[:, 0]
            o_out[t - 1, i] = o_t[:, 0]

        # ---- backward pass (BPTT), t = T..1 ----
        grad_h_next: np.ndarray | None = None  # grad_{h(t+1)} L
        for t in range(T, 0, -1):
            grad_o = o[t] - y_[t]  # grad_{o(t)} L = o(t) - y(t)
            # (9)  grad_{h(t)} L = V^T (o(t) - y(t)) + W^T diag(1 - h(t+1)^2) grad_{h(t+1)} L,
            #      the second term absent at t = T.
            grad_h = V.T @ grad_o
            if t < T:
                assert grad_h_next is not None
                D_next = np.diag(1 - h[t + 1][:, 0] ** 2)
                grad_h = grad_h + W.T @ D_next @ grad_h_next
            D = np.diag(1 - h[t][:, 0] ** 2)  # diag(1 - h(t)^2) = tanh'(a(t))
            grads["V"] += grad_o @ h[t].T  # (6)  sum_t (o(t) - y(t)) h(t)^T
            grads["c"] += grad_o  # grad_c L = sum_t (o(t) - y(t))
            grads["W"] += D @ grad_h @ h[t - 1].T  # (7)  sum_t diag(1-h(t)^2) grad_h(t) h(t-1)^T
            grads["U"] += D @ grad_h @ x_[t].T  # (8)  sum_t diag(1-h(t)^2) grad_h(t) x(t)^T
            grads["b"] += D @ grad_h  # grad_b L = sum_t diag(1-h(t)^2) grad_h(t)
            grad_h_next = grad_h

    grads["b"] = grads["b"][:, 0]
    grads["c"] = grads["c"][:, 0]
    return float(loss), grads, {"h": h_out, "o": o_out}


def elman_loss(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    h0: np.ndarray | None = None,
) -> float:
    """Loss (5) only, from :func:`elman_reference`."""
    return elman_reference(params, x, y, h0)[0]


def central_differences(
    f: Callable[[dict[str, np.ndarray]], float],
    params: Mapping[str, np.ndarray],
    eps: float = 1e-6,
) -> dict[str, np.ndarray]:
    """Numerical gradient of scalar ``f(params)`` by central differences, entry by entry.

    ``(f(p + eps e_j) - f(p - eps e_j)) / (2 eps)`` for every entry ``j`` of every array, in
    float64. ``f`` receives a fresh dict of float64 copies each call.
    """
    base = {name: np.array(value, dtype=np.float64) for name, value in params.items()}
    grads: dict[str, np.ndarray] = {}
    for name, value in base.items():
        g = np.zeros_like(value)
        for j in np.ndindex(value.shape):
            plus = {key: arr.copy() for key, arr in base.items()}
            minus = {key: arr.copy() for key, arr in base.items()}
            plus[name][j] += eps
            minus[name][j] -= eps
            g[j] = (float(f(plus)) - float(f(minus))) / (2.0 * eps)
        grads[name] = g
    return grads


def rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    """Max abs difference relative to the larger of 1 and the max magnitude of ``expected``."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if expected.size == 0:
        return 0.0
    return float(np.max(np.abs(actual - expected)) / max(1.0, float(np.max(np.abs(expected)))))


def random_problem(
    n: int,
    m: int,
    k: int,
    T: int,
    B: int,
    seed: int,
    scale: float = 1.0,
    with_h0: bool = False,
    dtype: type[np.floating] | np.dtype = np.float64,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray | None]:
    """Deterministic random ``(params, x, y, h0)`` from ``default_rng(seed)``.

    Weights ~ N(0, scale^2 / fan_in) (fan_in = n for ``W`` and ``V``, m for ``U``), biases
    ~ N(0, (scale/2)^2), inputs and targets ~ N(0, 1), ``h0`` ~ U(-0.9, 0.9) if requested.
    """
    rng = np.random.default_rng(seed)
    params = {
        "W": rng.normal(0.0, scale / np.sqrt(n), size=(n, n)),
        "U": rng.normal(0.0, scale / np.sqrt(m), size=(n, m)),
        "b": rng.normal(0.0, scale / 2, size=(n,)),
        "V": rng.normal(0.0, scale / np.sqrt(n), size=(k, n)),
        "c": rng.normal(0.0, scale / 2, size=(k,)),
    }
    x = rng.normal(size=(T, B, m))
    y = rng.normal(size=(T, B, k))
    h0 = rng.uniform(-0.9, 0.9, size=(B, n)) if with_h0 else None
    params = {name: value.astype(dtype) for name, value in params.items()}
    return params, x.astype(dtype), y.astype(dtype), None if h0 is None else h0.astype(dtype)
