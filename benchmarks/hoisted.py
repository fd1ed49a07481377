"""Hand-hoisted NumPy BPTT for the Elman and LSTM cells: the baseline of ``bench_backends.py``.

An expert's batched BPTT, written to do as much as possible as large matrix products:

- the input projections (``U x`` for Elman, ``W_ih x`` for LSTM) of all T steps are one matrix
  product over the T·B rows, before the loop;
- the loops run the recurrence only: forward, the ``W h(t-1)`` product and the elementwise
  step; backward, the elementwise adjoint of the step and the ``Wᵀ ∇a`` product that carries
  the adjoint to step t-1;
- the output layer, its residuals, and every parameter gradient are each one matrix product
  (or one sum) over the T·B rows, after the loops.

Layouts are those of ``rnnsym``'s generated kernels and of ``torch.nn``: inputs ``x`` (T, B, m),
targets ``y`` (T, B, k), states (B, n). The loss is ``½ Σ_t Σ_batch ‖o(t) − y(t)‖²`` with
``o(t) = c + V h(t)``.

Elman (report eqs. (2)–(5)): ``h(t) = tanh(b + W h(t-1) + U x(t))``; parameters ``W (n, n)``,
``U (n, m)``, ``b (n,)``, ``V (k, n)``, ``c (k,)``.

LSTM (parameterised as ``rnnsym.cells.lstm()`` and ``torch.nn.LSTM``): ``a = W_ih x + b_ih +
W_hh h(t-1) + b_hh`` stacked as gates i, f, g, o (n rows each); ``i, f, o = σ(a_i, a_f, a_o)``,
``g = tanh(a_g)``, ``c(t) = f ∘ c(t-1) + i ∘ g``, ``h(t) = o ∘ tanh(c(t))``, output
``o(t) = b_V + V h(t)``; parameters ``W_ih (4n, m)``, ``W_hh (4n, n)``, ``b_ih (4n,)``,
``b_hh (4n,)``, ``V (k, n)``, ``b_V (k,)``.

Hand-written formulas are fine here: this is an independent reference, not library code.
"""

from __future__ import annotations

import numpy as np

__all__ = ["elman_loss_and_grad", "lstm_loss_and_grad", "LOSS_AND_GRAD"]


def _rows(a: np.ndarray) -> np.ndarray:
    """A (T, B, size) array viewed as (T·B, size) rows."""
    return a.reshape(-1, a.shape[-1])


def elman_loss_and_grad(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    h0: np.ndarray | None = None,
) -> tuple[float, dict[str, np.ndarray]]:
    """The Elman loss and its gradients w.r.t. ``W, U, b, V, c``.

    ``params``: ``W (n,n)``, ``U (n,m)``, ``b (n,)``, ``V (k,n)``, ``c (k,)``; ``x``: ``(T,B,m)``;
    ``y``: ``(T,B,k)``; ``h0``: ``(B,n)``, zero if ``None``.
    """
    W, U, b, V, c = (params[key] for key in ("W", "U", "b", "V", "c"))
    T, B, _ = x.shape
    n = W.shape[0]
    dtype = np.result_type(W, U, b, V, c, x, y)
    X = _rows(x)

    # ---- forward: b + U x(t) for all t in one product; the loop adds W h(t-1) and tanh.
    hs = np.empty((T + 1, B, n), dtype=dtype)  # h(0..T)
    hs[0] = 0.0 if h0 is None else h0
    np.matmul(X, U.T, out=_rows(hs[1:]))
    hs[1:] += b
    WT = W.T
    for t in range(T):
        a = hs[t + 1]
        a += hs[t] @ WT
        np.tanh(a, out=a)
    H = _rows(hs[1:])

    # ---- output layer and residuals o - y = dL/do, all rows at once.
    R = H @ V.T
    R += c
    R -= _rows(y)
    loss = 0.5 * float(np.vdot(R, R))

    # ---- backward: V^T (o - y) for all t in one product; the loop carries W^T da.
    das = R @ V  # becomes dL/da(t), row block t, in place
    das = das.reshape(T, B, n)
    tmp = np.empty((B, n), dtype=dtype)
    for t in range(T - 1, -1, -1):
        da = das[t]
        if t < T - 1:
            da += das[t + 1] @ W  # carried term W^T dL/da(t+1)
        h = hs[t + 1]
        np.multiply(h, h, out=tmp)  # dL/da = (1 - h^2) dL/dh
        np.subtract(1.0, tmp, out=tmp)
        da *= tmp
    DA = _rows(das)

    # ---- every parameter gradient: one product (or sum) over the T·B rows.
    grads = {
        "W": DA.T @ _rows(hs[:-1]),
        "U": DA.T @ X,
        "b": DA.sum(axis=0),
        "V": R.T @ H,
        "c": R.sum(axis=0),
    }
    return loss, grads


def lstm_loss_and_grad(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    h0: dict[str, np.ndarray] | None = None,
) -> tuple[float, dict[str, np.ndarray]]:
    """The LSTM loss and its gradients w.r.t. ``W_ih, W_hh, b_ih, b_hh, V, b_V``.

    ``params`` as ``rnnsym.cells.lstm()``; ``x``: ``(T,B,m)``; ``y``: ``(T,B,k)``; ``h0``:
    ``{"h": (B,n), "c": (B,n)}`` (either may be missing), zero if ``None``.
    """
    W_ih, W_hh, b_ih, b_hh, V, b_V = (
        params[key] for key in ("W_ih", "W_hh", "b_ih", "b_hh", "V", "b_V")
    )
    T, B, _ = x.shape
    n = W_hh.shape[1]
    dtype = np.result_type(W_ih, W_hh, b_ih, b_hh, V, b_V, x, y)
    X = _rows(x)
    h0 = h0 or {}

    # ---- forward: W_ih x(t) + both biases for all t in one product. The loop adds W_hh h(t-1)
    # and turns the pre-activations into the gates in place: acts[t] = [i, f, g, o].
    acts = np.empty((T, B, 4 * n), dtype=dtype)
    np.matmul(X, W_ih.T, out=_rows(acts))
    acts += b_ih + b_hh
    hs = np.empty((T + 1, B, n), dtype=dtype)  # h(0..T)
    cs = np.empty((T + 1, B, n), dtype=dtype)  # c(0..T)
    tcs = np.empty((T, B, n), dtype=dtype)  # tanh(c(1..T))
    hs[0] = h0.get("h", 0.0)
    cs[0] = h0.get("c", 0.0)
    W_hhT = W_hh.T
    sig = np.s_[:, 0 : 2 * n]  # i and f: sigmoid
    for t in range(T):
        a = acts[t]
        a += hs[t] @ W_hhT
        # sigmoid(z) = (1 + tanh(z/2)) / 2: one ufunc pass, no overflow
        a[:, 0 : 2 * n] *= 0.5
        a[:, 3 * n :] *= 0.5
        np.tanh(a, out=a)
        a[sig] += 1.0
        a[sig] *= 0.5
        a[:, 3 * n :] += 1.0
        a[:, 3 * n :] *= 0.5
        i, f, g, o = a[:, 0:n], a[:, n : 2 * n], a[:, 2 * n : 3 * n], a[:, 3 * n :]
        c = cs[t + 1]
        np.multiply(f, cs[t], out=c)
        c += i * g
        np.tanh(c, out=tcs[t])
        np.multiply(o, tcs[t], out=hs[t + 1])
    H = _rows(hs[1:])

    # ---- output layer and residuals, all rows at once.
    R = H @ V.T
    R += b_V
    R -= _rows(y)
    loss = 0.5 * float(np.vdot(R, R))

    # ---- backward: V^T (o - y) for all t in one product; the loop carries W_hh^T da and the
    # cell-state adjoint f(t+1) dL/dc(t+1).
    dhs = (R @ V).reshape(T, B, n)
    das = np.empty((T, B, 4 * n), dtype=dtype)
    dc = np.zeros((B, n), dtype=dtype)
    tmp = np.empty((B, n), dtype=dtype)
    for t in range(T - 1, -1, -1):
        dh = dhs[t]
        if t < T - 1:
            dh += das[t + 1] @ W_hh
        a, da = acts[t], das[t]
        i, f, g, o = a[:, 0:n], a[:, n : 2 * n], a[:, 2 * n : 3 * n], a[:, 3 * n :]
        tc = tcs[t]
        # dL/dc(t) = dh ∘ o ∘ (1 - tanh(c)^2) + f(t+1) ∘ dL/dc(t+1)   (dc holds the second term)
        np.multiply(tc, tc, out=tmp)
        np.subtract(1.0, tmp, out=tmp)
        tmp *= o
        tmp *= dh
        dc += tmp
        # gate adjoints times the gate derivatives, written into da = [da_i, da_f, da_g, da_o]
        da_i, da_f, da_g, da_o = (da[:, j * n : (j + 1) * n] for j in range(4))
        np.multiply(dc, g, out=da_i)  # dL/di
        da_i *= i
        np.subtract(1.0, i, out=tmp)
        da_i *= tmp
        np.multiply(dc, cs[t], out=da_f)  # dL/df
        da_f *= f
        np.subtract(1.0, f, out=tmp)
        da_f *= tmp
        np.multiply(dc, i, out=da_g)  # dL/dg
        np.multiply(g, g, out=tmp)
        np.subtract(1.0, tmp, out=tmp)
        da_g *= tmp
        np.multiply(dh, tc, out=da_o)  # dL/do
        da_o *= o
        np.subtract(1.0, o, out=tmp)
        da_o *= tmp
        dc *= f  # carried to step t-1
    DA = _rows(das)

    # ---- every parameter gradient: one product (or sum) over the T·B rows.
    grad_b = DA.sum(axis=0)
    grads = {
        "W_ih": DA.T @ X,
        "W_hh": DA.T @ _rows(hs[:-1]),
        "b_ih": grad_b,
        "b_hh": grad_b.copy(),
        "V": R.T @ H,
        "b_V": R.sum(axis=0),
    }
    return loss, grads


# cell name -> baseline
LOSS_AND_GRAD = {"elman": elman_loss_and_grad, "lstm": lstm_loss_and_grad}
