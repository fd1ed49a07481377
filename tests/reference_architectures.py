"""Hand-written NumPy references for the report's architectures (§3–§4, Figures 4–10).

Each function is written straight from the report's description (its §3–§4, Figures 4–10):
the forward pass, the loss, and the gradients by a hand-written back-propagation through time.
Nothing here imports ``rnnsym``: these are the independent oracles the generated kernels are
tested against in ``test_architectures.py``.

Conventions: sequences are (T, B, size) arrays, vectors of one step are rows (B, size), so the
report's W h(t−1) is ``h_prev @ W.T`` and a gradient Σ_t δ(t) h(t−1)ᵀ is ``δ.T @ h_prev``.
Vector parameters are 1-D. Every function returns ``(loss, grads)`` with ``grads`` keyed and
shaped like the parameters, summed over time and batch.
"""

from __future__ import annotations

import numpy as np

# ----- building blocks -----


def shifted(y: np.ndarray) -> np.ndarray:
    """y(t−1) for t = 1..T with y(0) = 0 (the teacher-forced / fed-back previous target)."""
    out = np.zeros_like(y)
    out[1:] = y[:-1]
    return out


def one_hot(index: np.ndarray, k: int) -> np.ndarray:
    """1-of-K rows for integer class indices of any shape."""
    return np.eye(k)[index]


def log_sum_exp(o: np.ndarray) -> np.ndarray:
    """log Σ_i exp(o_i) over the last axis, with the maximum subtracted (no overflow)."""
    top = o.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(o - top).sum(axis=-1, keepdims=True)))[..., 0]


def softmax(o: np.ndarray) -> np.ndarray:
    e = np.exp(o - o.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_ce(o: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Σ logsumexp(o) − o[y] over all leading axes, and ∇_o = softmax(o) − onehot(y)
    (*Deep Learning* eqs. 10.18–10.28)."""
    picked = np.take_along_axis(o, y[..., None], axis=-1)[..., 0]
    loss = float(np.sum(log_sum_exp(o) - picked))
    return loss, softmax(o) - one_hot(y, o.shape[-1])


def squared_error(o: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Eq. (5), ½‖o − y‖² summed over t and batch, and ∇_o L = o − y."""
    diff = o - y
    return 0.5 * float(np.sum(diff * diff)), diff


def elman_forward(W, U, b, x, h0=None) -> np.ndarray:
    """Eqs. (2)–(3): h(t) = tanh(b + W h(t−1) + U x(t)); returns h(0..T), shape (T+1, B, n)."""
    T, B = x.shape[:2]
    h = np.zeros((T + 1, B, W.shape[0]))
    if h0 is not None:
        h[0] = h0
    for t in range(T):
        h[t + 1] = np.tanh(b + h[t] @ W.T + x[t] @ U.T)
    return h


def elman_backward(W, U, h, x, dh_local):
    """BPTT of an Elman layer (eqs. (7)–(9)) given the local adjoints ∂L/∂h(t) from outside.

    ``dh_local[t]`` is the part of ∇_{h(t+1)}L that does not come through h(t+2) (e.g.
    Vᵀ(o − y) for eq. (5)). Returns ``(grads of W, U, b), ∇_x L (T, B, m), ∇_{h(0)} L``.
    """
    T = x.shape[0]
    gW, gU, gb = np.zeros_like(W), np.zeros_like(U), np.zeros(W.shape[0])
    dx = np.zeros_like(x)
    carry = np.zeros_like(h[0])  # Wᵀ diag(1 − h(t+1)²) ∇_{h(t+1)}L, zero at t = T (eq. (9))
    for t in range(T - 1, -1, -1):
        grad_h = dh_local[t] + carry  # eq. (9)
        delta = (1.0 - h[t + 1] ** 2) * grad_h  # diag(1 − h(t)²) ∇_{h(t)}L
        gW += delta.T @ h[t]  # eq. (7)
        gU += delta.T @ x[t]  # eq. (8)
        gb += delta.sum(axis=0)
        dx[t] = delta @ U
        carry = delta @ W
    return (gW, gU, gb), dx, carry


# ----- Fig. 4 -----


def teacher_forcing(p, x, y):
    """Fig. 4 with teacher forcing: h(t) = tanh(b + W y(t−1) + U x(t)), o = c + V h, eq. (5).

    No recurrence: every step's gradient is local to that step.
    """
    y_prev = shifted(y)
    h = np.tanh(p["b"] + y_prev @ p["W"].T + x @ p["U"].T)
    o = p["c"] + h @ p["V"].T
    loss, g_o = squared_error(o, y)
    delta = (1.0 - h**2) * (g_o @ p["V"])
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731 - (T·B, size)
    grads = {
        "W": flat(delta).T @ flat(y_prev),
        "U": flat(delta).T @ flat(x),
        "b": flat(delta).sum(axis=0),
        "V": flat(g_o).T @ flat(h),
        "c": flat(g_o).sum(axis=0),
    }
    return loss, grads


def output_feedback_forward(p, x) -> tuple[np.ndarray, np.ndarray]:
    """Fig. 4 free-running: h(t) = tanh(b + W o(t−1) + U x(t)), o(t) = c + V h(t), o(0) = 0.

    Returns h (T, B, n) and o(0..T) (T+1, B, k)."""
    T, B = x.shape[:2]
    W, U, b, V, c = (p[n] for n in "WUbVc")
    h = np.zeros((T, B, W.shape[0]))
    o = np.zeros((T + 1, B, V.shape[0]))
    for t in range(T):
        h[t] = np.tanh(b + o[t] @ W.T + x[t] @ U.T)
        o[t + 1] = c + h[t] @ V.T
    return h, o


def output_feedback(p, x, y):
    """Fig. 4 free-running with eq. (5); BPTT through the recurrent output o."""
    W, V = p["W"], p["V"]
    h, o = output_feedback_forward(p, x)
    loss, local = squared_error(o[1:], y)
    grads = {n: np.zeros_like(v) for n, v in p.items()}
    carry = np.zeros_like(o[0])  # what o(t+1) hands back to o(t): Wᵀ δ(t+1)
    for t in range(x.shape[0] - 1, -1, -1):
        g_o = local[t] + carry  # ∇_{o(t)}L
        delta = (1.0 - h[t] ** 2) * (g_o @ V)  # ∇ of the pre-activation of h(t)
        grads["V"] += g_o.T @ h[t]
        grads["c"] += g_o.sum(axis=0)
        grads["W"] += delta.T @ o[t]  # o(t−1) in the report's numbering
        grads["U"] += delta.T @ x[t]
        grads["b"] += delta.sum(axis=0)
        carry = delta @ W
    return loss, grads


# ----- Fig. 5 -----


def last_output(p, x, y, lengths=None):
    """Fig. 5: an Elman layer reads x; one output o = c + V h(T_b) per sequence, at its own
    last step T_b; softmax cross-entropy against the class y[b]. Each sequence is run alone on
    x[:T_b, b] (the padding after T_b is never read)."""
    T, B = x.shape[:2]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    grads = {n: np.zeros_like(v) for n, v in p.items()}
    loss = 0.0
    for i in range(B):
        xi = x[: lengths[i], i : i + 1]
        h = elman_forward(p["W"], p["U"], p["b"], xi)
        o = p["c"] + h[-1] @ p["V"].T
        li, g_o = softmax_ce(o, y[i : i + 1])
        loss += li
        grads["V"] += g_o.T @ h[-1]
        grads["c"] += g_o.sum(axis=0)
        dh = np.zeros_like(h[1:])
        dh[-1] = g_o @ p["V"]  # the only local adjoint: at t = T_b
        (gW, gU, gb), _, _ = elman_backward(p["W"], p["U"], h, xi, dh)
        grads["W"] += gW
        grads["U"] += gU
        grads["b"] += gb
    return loss, grads


# ----- Fig. 6 -----


def fixed_input(p, x, y):
    """Fig. 6: h(t) = tanh(b + W h(t−1) + R x + U y(t−1)), o = c + V h, softmax CE against
    the class y(t); x (B, m) is given once per sequence, y (T, B) as class indices.

    R x + U y(t−1) = [R U] [x; y(t−1)], so the hand BPTT of an Elman layer applies with the
    concatenated input; its U-gradient splits into the gradients of R and U.
    """
    T, B = y.shape
    k, m = p["V"].shape[0], x.shape[-1]
    y_prev = shifted(one_hot(y, k))  # 1-of-K y(t−1), y(0) = 0
    both = np.concatenate([np.broadcast_to(x, (T, B, m)), y_prev], axis=-1)
    RU = np.concatenate([p["R"], p["U"]], axis=1)
    h = elman_forward(p["W"], RU, p["b"], both)
    o = p["c"] + h[1:] @ p["V"].T
    loss, g_o = softmax_ce(o, y)
    (gW, gRU, gb), _, _ = elman_backward(p["W"], RU, h, both, g_o @ p["V"])
    flat = g_o.reshape(-1, k)
    grads = {
        "W": gW,
        "R": gRU[:, :m],
        "U": gRU[:, m:],
        "b": gb,
        "V": flat.T @ h[1:].reshape(-1, h.shape[-1]),
        "c": flat.sum(axis=0),
    }
    return loss, grads


# ----- Fig. 7 -----


def bidirectional(p, x, y):
    """Fig. 7: h(t) forward over t = 1..T, g(t) = tanh(b_g + W_g g(t+1) + U_g x(t)) backward
    over t = T..1 with g(T+1) = 0, o(t) = c + V h(t) + V_g g(t), eq. (5)."""
    h = elman_forward(p["W"], p["U"], p["b"], x)
    g_rev = elman_forward(p["W_g"], p["U_g"], p["b_g"], x[::-1])  # g in reversed time
    g = g_rev[1:][::-1]  # g(1..T)
    o = p["c"] + h[1:] @ p["V"].T + g @ p["V_g"].T
    loss, g_o = squared_error(o, y)
    (gW, gU, gb), _, _ = elman_backward(p["W"], p["U"], h, x, g_o @ p["V"])
    # the backward layer is an Elman layer in reversed time: its BPTT runs t = 1..T
    (gWg, gUg, gbg), _, _ = elman_backward(
        p["W_g"], p["U_g"], g_rev, x[::-1], (g_o @ p["V_g"])[::-1]
    )
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    grads = {
        "W": gW,
        "U": gU,
        "b": gb,
        "W_g": gWg,
        "U_g": gUg,
        "b_g": gbg,
        "c": flat(g_o).sum(axis=0),
        "V": flat(g_o).T @ flat(h[1:]),
        "V_g": flat(g_o).T @ flat(g),
    }
    return loss, grads


# ----- Fig. 8 -----


def seq2seq(p, x, y):
    """Fig. 8: encoder h(t) = tanh(b_e + W_e h(t−1) + U_e x(t)), t = 1..T_x; C = h(T_x);
    decoder s(0) = C, s(t) = tanh(b_d + W_d s(t−1) + U_d y(t−1)) with y(0) = 0,
    o = c + V s, eq. (5) over T_y steps. ∇_C L flows back into the encoder's BPTT."""
    h = elman_forward(p["W_e"], p["U_e"], p["b_e"], x)
    y_prev = shifted(y)
    s = elman_forward(p["W_d"], p["U_d"], p["b_d"], y_prev, h0=h[-1])
    o = p["c"] + s[1:] @ p["V"].T
    loss, g_o = squared_error(o, y)
    (gWd, gUd, gbd), _, g_context = elman_backward(p["W_d"], p["U_d"], s, y_prev, g_o @ p["V"])
    dh = np.zeros_like(h[1:])
    dh[-1] = g_context  # ∇_{h(T_x)}L = ∇_{s(0)}L, nothing else reaches the encoder
    (gWe, gUe, gbe), _, _ = elman_backward(p["W_e"], p["U_e"], h, x, dh)
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    grads = {
        "W_e": gWe,
        "U_e": gUe,
        "b_e": gbe,
        "W_d": gWd,
        "U_d": gUd,
        "b_d": gbd,
        "V": flat(g_o).T @ flat(s[1:]),
        "c": flat(g_o).sum(axis=0),
    }
    return loss, grads


# ----- Fig. 9: any number of layers, Elman or GRU-like -----


def gru_forward(p, x):
    """A GRU-like layer: z = σ(W_z h(t−1) + U_z x + b_z), r = σ(W_r h(t−1) + U_r x + b_r),
    ĥ = tanh(W_h (r ∘ h(t−1)) + U_h x + b_h), h(t) = (1 − z) ∘ h(t−1) + z ∘ ĥ.
    Returns h(0..T) and the per-step gates (z, r, ĥ)."""
    T, B = x.shape[:2]
    n = p["W_z"].shape[0]
    h = np.zeros((T + 1, B, n))
    z, r, cand = (np.zeros((T, B, n)) for _ in range(3))

    def sig(a):
        return 1.0 / (1.0 + np.exp(-a))

    for t in range(T):
        z[t] = sig(h[t] @ p["W_z"].T + x[t] @ p["U_z"].T + p["b_z"])
        r[t] = sig(h[t] @ p["W_r"].T + x[t] @ p["U_r"].T + p["b_r"])
        cand[t] = np.tanh((r[t] * h[t]) @ p["W_h"].T + x[t] @ p["U_h"].T + p["b_h"])
        h[t + 1] = (1.0 - z[t]) * h[t] + z[t] * cand[t]
    return h, (z, r, cand)


def gru_backward(p, h, gates, x, dh_local):
    """Hand BPTT of :func:`gru_forward`; returns (grads, ∇_x L)."""
    z, r, cand = gates
    grads = {n: np.zeros_like(v) for n, v in p.items()}
    dx = np.zeros_like(x)
    carry = np.zeros_like(h[0])
    for t in range(x.shape[0] - 1, -1, -1):
        g = dh_local[t] + carry  # ∇_{h(t)}L
        d_cand = (g * z[t]) * (1.0 - cand[t] ** 2)
        d_z = (g * (cand[t] - h[t])) * z[t] * (1.0 - z[t])
        through_r = d_cand @ p["W_h"]  # ∇ of r ∘ h(t−1)
        d_r = through_r * h[t] * r[t] * (1.0 - r[t])
        for gate, delta, source in (("h", d_cand, r[t] * h[t]), ("z", d_z, h[t]), ("r", d_r, h[t])):
            grads[f"W_{gate}"] += delta.T @ source
            grads[f"U_{gate}"] += delta.T @ x[t]
            grads[f"b_{gate}"] += delta.sum(axis=0)
            dx[t] += delta @ p[f"U_{gate}"]
        carry = g * (1.0 - z[t]) + through_r * r[t] + d_z @ p["W_z"] + d_r @ p["W_r"]
    return grads, dx


def stacked(layer_params, kinds, top, x, y):
    """Fig. 9 with any number of layers: layer ℓ's states h_ℓ(t) are layer ℓ+1's inputs.

    ``kinds[ℓ]`` is ``"elman"`` (params W, U, b) or ``"gru"`` (see :func:`gru_forward`) for
    each lower layer, ``layer_params[ℓ]`` its parameters under their own names; ``top`` has
    W, U, b, V, c: an Elman layer over the last lower layer's states with the output
    o = c + V h_top and eq. (5). Returns (loss, [grads of each lower layer], grads of top).
    """
    seqs, states, gates = [x], [], []  # seqs[ℓ]: the input sequence of layer ℓ
    for kind, p in zip(kinds, layer_params, strict=True):
        if kind == "elman":
            h, cache = elman_forward(p["W"], p["U"], p["b"], seqs[-1]), None
        else:
            h, cache = gru_forward(p, seqs[-1])
        states.append(h)  # h(0..T), kept for the backward pass
        gates.append(cache)
        seqs.append(h[1:])
    h_top = elman_forward(top["W"], top["U"], top["b"], seqs[-1])
    o = top["c"] + h_top[1:] @ top["V"].T
    loss, g_o = squared_error(o, y)
    (gW, gU, gb), dx, _ = elman_backward(top["W"], top["U"], h_top, seqs[-1], g_o @ top["V"])
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    top_grads = {
        "W": gW,
        "U": gU,
        "b": gb,
        "V": flat(g_o).T @ flat(h_top[1:]),
        "c": flat(g_o).sum(axis=0),
    }
    layer_grads = [None] * len(kinds)
    for i in range(len(kinds) - 1, -1, -1):  # ∇ of layer i's states = ∇ of layer i+1's input
        p, h = layer_params[i], states[i]
        if kinds[i] == "elman":
            (gW, gU, gb), dx, _ = elman_backward(p["W"], p["U"], h, seqs[i], dx)
            layer_grads[i] = {"W": gW, "U": gU, "b": gb}
        else:
            layer_grads[i], dx = gru_backward(p, h, gates[i], seqs[i], dx)
    return loss, layer_grads, top_grads


# ----- Fig. 10 -----


def deep_transition(p, x, y):
    """Fig. 10, each block a small MLP: a(t) = tanh(A x(t) + a_b), r(t) = tanh(W h(t−1) + r_b),
    h(t) = tanh(P r(t) + Q a(t) + b), z(t) = tanh(Z h(t) + z_b), o(t) = c + V z(t), eq. (5)."""
    T, B = x.shape[:2]
    n = p["P"].shape[0]
    h = np.zeros((T + 1, B, n))
    a, r, z = [], [], []
    for t in range(T):
        a.append(np.tanh(x[t] @ p["A"].T + p["a_b"]))
        r.append(np.tanh(h[t] @ p["W"].T + p["r_b"]))
        h[t + 1] = np.tanh(r[t] @ p["P"].T + a[t] @ p["Q"].T + p["b"])
        z.append(np.tanh(h[t + 1] @ p["Z"].T + p["z_b"]))
    o = p["c"] + np.stack(z) @ p["V"].T
    loss, local = squared_error(o, y)
    grads = {n_: np.zeros_like(v) for n_, v in p.items()}
    carry = np.zeros((B, n))  # ∇_{h(t)}L through h(t+1)
    for t in range(T - 1, -1, -1):
        g_o = local[t]
        grads["V"] += g_o.T @ z[t]
        grads["c"] += g_o.sum(axis=0)
        d_z = (1.0 - z[t] ** 2) * (g_o @ p["V"])
        grads["Z"] += d_z.T @ h[t + 1]
        grads["z_b"] += d_z.sum(axis=0)
        d_h = (1.0 - h[t + 1] ** 2) * (d_z @ p["Z"] + carry)
        grads["P"] += d_h.T @ r[t]
        grads["Q"] += d_h.T @ a[t]
        grads["b"] += d_h.sum(axis=0)
        d_r = (1.0 - r[t] ** 2) * (d_h @ p["P"])
        grads["W"] += d_r.T @ h[t]
        grads["r_b"] += d_r.sum(axis=0)
        d_a = (1.0 - a[t] ** 2) * (d_h @ p["Q"])
        grads["A"] += d_a.T @ x[t]
        grads["a_b"] += d_a.sum(axis=0)
        carry = d_r @ p["W"]
    return loss, grads


# ----- softmax cross-entropy Elman (class targets) -----


def elman_softmax(p, x, y):
    """Elman (eqs. (2)–(4)) with softmax cross-entropy against class indices y (T, B)."""
    h = elman_forward(p["W"], p["U"], p["b"], x)
    o = p["c"] + h[1:] @ p["V"].T
    loss, g_o = softmax_ce(o, y)
    (gW, gU, gb), _, _ = elman_backward(p["W"], p["U"], h, x, g_o @ p["V"])
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    grads = {
        "W": gW,
        "U": gU,
        "b": gb,
        "V": flat(g_o).T @ flat(h[1:]),
        "c": flat(g_o).sum(axis=0),
    }
    return loss, grads
