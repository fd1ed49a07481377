"""Hand-written per-step NumPy BPTT for the Elman RNN: the baseline for ``bench_elman.py``.

Equations (report, see ``spec/seeds-en.md`` section 1), row layout (states are ``(B, n)``)::

    a(t) = b + W h(t-1) + U x(t)          (2)   ->  a = b + h_prev @ W.T + x_t @ U.T
    h(t) = tanh(a(t))                     (3)
    o(t) = c + V h(t)                     (4)   ->  o = c + h @ V.T
    L    = sum_t,batch 1/2 ||o - y||^2    (5)

Gradients (6)-(9) plus grad_b and grad_c.  Both loops run over t; the backward loop
accumulates every parameter gradient per step (``grad_W += da.T @ h_prev`` ...), which is
how BPTT is typically written by hand.  Buffers are preallocated and reused, so the loops do
no avoidable allocation.
"""

from __future__ import annotations

import numpy as np

__all__ = ["loss_and_grad"]


def loss_and_grad(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    h0: np.ndarray | None = None,
) -> tuple[float, dict[str, np.ndarray]]:
    """Return the loss (5) and its gradients w.r.t. ``W, U, b, V, c``.

    ``params``: ``W (n,n)``, ``U (n,m)``, ``b (n,)``, ``V (k,n)``, ``c (k,)``;
    ``x``: ``(T,B,m)``; ``y``: ``(T,B,k)``; ``h0``: ``(B,n)``, zero if ``None``.
    """
    W, U, b, V, c = (params[key] for key in ("W", "U", "b", "V", "c"))
    T, B, _ = x.shape
    n = W.shape[0]
    dtype = np.result_type(W, U, b, V, c, x, y)

    # ---- forward, one step at a time; keep h(0..T) and the output residuals o - y.
    hs = np.empty((T + 1, B, n), dtype=dtype)
    hs[0] = 0.0 if h0 is None else h0
    res = np.empty(y.shape, dtype=dtype)  # dL/do(t) = o(t) - y(t)
    WT, UT, VT = W.T, U.T, V.T
    loss = 0.0
    for t in range(T):
        a = hs[t + 1]  # compute a(t) in place, then tanh it into h(t)
        np.matmul(hs[t], WT, out=a)
        a += x[t] @ UT
        a += b
        np.tanh(a, out=a)
        r = res[t]
        np.matmul(a, VT, out=r)
        r += c
        r -= y[t]
        loss += 0.5 * float(np.vdot(r, r))

    # ---- backward, one step at a time, accumulating each gradient per step.
    gW = np.zeros_like(W, dtype=dtype)
    gU = np.zeros_like(U, dtype=dtype)
    gb = np.zeros_like(b, dtype=dtype)
    gV = np.zeros_like(V, dtype=dtype)
    gc = np.zeros_like(c, dtype=dtype)
    dh = np.zeros((B, n), dtype=dtype)  # carried term W^T diag(1-h^2) dL/dh of eq. (9)
    da = np.empty((B, n), dtype=dtype)
    for t in range(T - 1, -1, -1):
        h, h_prev, r = hs[t + 1], hs[t], res[t]
        gV += r.T @ h  # (6)
        gc += r.sum(axis=0)
        dh += r @ V  # (9): V^T (o - y) + carried term
        np.multiply(h, h, out=da)  # da = (1 - h^2) * dh, the pre-activation adjoint
        np.subtract(1.0, da, out=da)
        da *= dh
        gW += da.T @ h_prev  # (7)
        gU += da.T @ x[t]  # (8)
        gb += da.sum(axis=0)
        np.matmul(da, W, out=dh)  # carried term for step t-1

    return loss, {"W": gW, "U": gU, "b": gb, "V": gV, "c": gc}
