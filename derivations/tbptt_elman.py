# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # Truncated BPTT for the Elman RNN: derived, cut, and checked
#
# The Elman RNN of the report (after Goodfellow, Bengio & Courville, *Deep Learning*, 2016,
# ch. 10, eqs. (2)–(5)) trained by truncated back-propagation through time. We use Williams &
# Peng's BPTT(k) (Neural Computation, 1990) with per-loss truncation: the loss L(s) of step s
# back-propagates through steps s − k + 1 .. s only, and h(s − k) is held constant. This
# file runs as a script (`python derivations/tbptt_elman.py`). The test suite executes it, so
# every claim below is an `assert`.

import numpy as np
import sympy as sp

import rnnsym as rs
from rnnsym.problems import random_problem
from rnnsym.truncate import TruncatedKernel, tbptt_bias, truncated_derivation_text

cell = rs.cells.elman()  # h(t) = tanh(b + W h(t−1) + U x(t)), o(t) = c + V h(t), ½‖o − y‖²
derivation = rs.derive(cell)

# ## 1. The derivation with the truncation made explicit
#
# The truncated derivation is the full one (eqs. (2)–(9)), seeded by each step's loss alone
# and cut after k steps. The state adjoint ∇_{h(t)}L of eq. (9) is replaced by
# ∇⁽ᵏ⁾_{h(t)}L = Σ_{s=t}^{min(T, t+k−1)} ∇_{h(t)}L(s), the adjoints of the losses at most
# k − 1 steps ahead. The parameter gradients, eqs. (6)–(8), keep their form.

text = truncated_derivation_text(cell, 2)
print(text)
assert text.startswith(derivation.pretty())
g_h = derivation.number_of("g_h")  # the line of eq. (9) in the derivation
assert f"∇_{{h⁽ᵗ⁾}}L⁽ˢ⁾ = ({g_h}) with L replaced by L⁽ˢ⁾ alone" in text
print(f"the cut recurrence is eq. (9), line ({g_h}), seeded by one loss and stopped at h(s-k)")

# ## 2. The definition, by `sympy.diff`, at n = 2
#
# We unroll the cell in scalars at n = m = k_out = 2 and T = 4. For each s, L(s) is built from
# a fresh symbol H for h(s − k), so H is a constant to `sympy.diff`. We differentiate with
# respect to every entry of W, sum over s, and then set H to the value h(s − k) has on the
# trajectory. This is the definition, written independently of the kernel.

N, M, K, T = 2, 2, 2, 4
rng = np.random.default_rng(7)


def matrix(shape, scale):
    """Random entries with three decimals, as 30-digit SymPy floats (float64 holds them to
    1e-16 relative)."""
    values = np.round(rng.normal(0, scale, size=shape), 3)
    return sp.Matrix(*shape, [sp.Float(str(v), 30) for v in values.ravel()])


Wv, Uv, bv = matrix((N, N), 0.6), matrix((N, M), 0.6), matrix((N, 1), 0.3)
Vv, cv = matrix((K, N), 0.6), matrix((K, 1), 0.3)
xs = [matrix((M, 1), 1.0) for _ in range(T)]
ys = [matrix((K, 1), 1.0) for _ in range(T)]
Ws = sp.Matrix(N, N, lambda i, j: sp.Symbol(f"W_{i}{j}"))
at_point = {Ws[i, j]: Wv[i, j] for i in range(N) for j in range(N)}


def step(h, t):
    return (bv + Ws * h + Uv * xs[t]).applyfunc(sp.tanh)


def loss(h, t):
    e = cv + Vv * h - ys[t]
    return (e.T * e)[0] / 2


def trajectory():
    """h(0) .. h(T) at the point, h(0) = 0."""
    h, path = sp.zeros(N, 1), [sp.zeros(N, 1)]
    for t in range(T):
        h = step(h, t).xreplace(at_point)
        path.append(h)
    return path


path = trajectory()


def truncated_gradient_W(k):
    """Σ_s ∂L(s)/∂W with h(s − k) a constant H (h(0) for s ≤ k), by sympy.diff, at the point."""
    total = sp.zeros(N, N)
    for s in range(1, T + 1):
        start = max(0, s - k)
        H = sp.Matrix(N, 1, lambda i, _: sp.Symbol(f"H_{i}"))  # h(s − k), held constant
        h = H
        for t in range(start, s):
            h = step(h, t)
        L = loss(h, s - 1)
        value = {H[i]: path[start][i] for i in range(N)} | at_point
        for i in range(N):
            for j in range(N):
                total[i, j] += sp.diff(L, Ws[i, j]).xreplace(value)
    return total


params = {
    "W": np.array(Wv, dtype=float),
    "U": np.array(Uv, dtype=float),
    "b": np.array(bv, dtype=float).ravel(),
    "V": np.array(Vv, dtype=float),
    "c": np.array(cv, dtype=float).ravel(),
}
inputs = {"x": np.array([np.array(x, dtype=float).T for x in xs])}  # (T, B = 1, m)
targets = {"y": np.array([np.array(y, dtype=float).T for y in ys])}
full_kernel = rs.compile(cell)

# `sympy.diff` works in 30 digits and the kernel in float64. Their agreement is limited by
# float64 rounding through four steps and two window sums, a few units of 1e-16 relative, so
# 1e-12 relative is a tight bound with margin.
exact_by_k = {}
for k in (1, 2, 3, T):
    exact = exact_by_k[k] = np.array(truncated_gradient_W(k), dtype=float)
    _, grads = TruncatedKernel(full_kernel, k).loss_and_grad(params, inputs, targets)
    error = np.max(np.abs(grads["W"] - exact)) / np.max(np.abs(exact))
    print(f"k = {k}: ∇⁽ᵏ⁾_W L, kernel against sympy.diff with h(s-k) held constant: {error:.1e}")
    assert error < 1e-12
# k = T is full BPTT; k = 1 is not: the check above would notice a kernel that ignored k
_, full_grads = full_kernel.loss_and_grad(params, inputs, targets)
assert np.max(np.abs(full_grads["W"] - exact_by_k[T])) < 1e-12 * np.max(np.abs(exact_by_k[T]))
assert np.max(np.abs(exact_by_k[1] - exact_by_k[T])) > 1e-3 * np.max(np.abs(exact_by_k[T]))

# ## 3. k = 1 in closed form
#
# With k = 1 each loss reaches only its own step. The truncated state adjoint of eq. (9) keeps
# its local term alone, ∇⁽¹⁾_{h(t)}L = Vᵀ(o(t) − y(t)). Eq. (7) then gives
# ∇⁽¹⁾_W L = Σ_t ((1 − h(t)∘h(t)) ∘ Vᵀ(o(t) − y(t))) h(t−1)ᵀ. Here it is written by hand in
# NumPy on the full run's states:

h = np.concatenate([np.zeros((1, 1, N)), full_kernel.forward(params, inputs)["h"]])
o = params["c"] + h[1:] @ params["V"].T
delta = (1 - h[1:] ** 2) * ((o - targets["y"]) @ params["V"])
by_hand = np.einsum("tbi,tbj->ij", delta, h[:-1])
_, grads1 = TruncatedKernel(full_kernel, 1).loss_and_grad(params, inputs, targets)
# the same float64 operations in another order: 1e-13 relative
assert np.allclose(grads1["W"], by_hand, rtol=0, atol=1e-13 * np.abs(by_hand).max())
print("k = 1: eq. (7) with the local adjoint V^T (o - y) alone, reproduced")

# ## 4. k ≥ T is full BPTT, exactly
#
# With k ≥ T nothing is cut. The truncated kernel returns the full kernel's arrays, equal bit
# for bit, not merely to rounding.

p, x, y = random_problem(cell, T=6, B=3, seed=0)
loss_full, full = full_kernel.loss_and_grad(p, x, y)
for k in (6, 7, 50):
    loss_k, got = rs.compile(cell, truncate=k).loss_and_grad(p, x, y)
    assert loss_k == loss_full and all(np.array_equal(got[n], full[n]) for n in full)
print("k >= T: loss and every gradient equal to full BPTT bit for bit")

# ## 5. The bias
#
# The relative error ‖g_k − g‖/‖g‖ of the truncated gradient on a random problem at T = 20.
# We rescale W to spectral norm 0.5, so an error shrinks by at least half per step back
# (|tanh′| ≤ 1). What k leaves out is then bounded by a geometric tail in k, and the error
# falls with k.

p, x, y = random_problem(cell, T=20, B=4, seed=0)
p["W"] = p["W"] * (0.5 / np.linalg.norm(p["W"], 2))
result = tbptt_bias(cell, [1, 2, 3, 5, 10, 20], p, x, y)
print(result.table())
errors = [row.relative_error for row in result.rows]
assert all(a > b for a, b in zip(errors, errors[1:], strict=False))
assert errors[-1] == 0.0 and result.rows[-1].cosine == 1.0
# the tail beyond k = 10 steps is at most about 0.5^10 ≈ 1e-3 of the gradient's scale
assert errors[-2] < 1e-3
print("the bias falls with k as the geometric bound of eq. (9)'s transition 0.5 per step says")
