# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # Gradient flow through the Elman RNN: ∂h(t)/∂h(τ), eq. (9) and the slides' error bra
#
# How far back does an error reach? This worked derivation follows one perturbation of the
# state h(τ) of the report's Elman RNN (after Goodfellow, Bengio & Courville, *Deep Learning*,
# 2016, ch. 10, eqs. (2)–(9)) forward to h(t), shows that the Jacobian ∂h(t)/∂h(τ) is what
# eq. (9) multiplies the adjoint by, one step at a time, and relates the error reaching h(τ)
# to the error bra ⟨δ_t(τ)| of the lecture slides (Y. Suga, "Deep learning and physics 4.2",
# Ibaraki University, 2023). `rs.gradient_flow` computes the norms of both from the generated
# kernel; here every number is checked against an independent computation. It runs as a script
# (`python derivations/gradient_flow_elman.py`) and is executed by the test suite.

import numpy as np
import sympy as sp

import rnnsym as rs
from rnnsym.flow import flow_cell, gradient_flow
from rnnsym.kernel import compile_cell
from rnnsym.problems import random_problem

# ## 1. One step back is eq. (9)'s transition
#
# The derivation's carry, what step t hands back to step t − 1, is the second term of eq. (9):
# Wᵀ((1 − h(t)∘h(t)) ∘ ∇_{h(t)}L). It is linear in the adjoint, and the matrix that multiplies
# it is the transpose of the one-step Jacobian A(t) = ∂h(t)/∂h(t−1) = diag(1 − h(t)²) W
# (eqs. (2)–(3): h(t) = tanh(b + W h(t−1) + U x(t))). At n = 3, entry by entry:

cell = rs.cells.elman()
derivation = rs.derive(cell)
carry = derivation.carry["h"]
print("carry of eq. (9):", carry)

N = 3
n = cell.size_symbols["n"]
W = sp.Matrix(sp.MatrixSymbol("W", N, N))
h_t = sp.Matrix(sp.MatrixSymbol("h", N, 1))
g_t = sp.Matrix(sp.MatrixSymbol("g_h", N, 1))
explicit = sp.Matrix(carry.xreplace({n: N}).as_explicit())
A = sp.diag(*[1 - h_t[i] ** 2 for i in range(N)]) * W  # ∂h(t)/∂h(t−1), eqs. (2)-(3)
assert (explicit.jacobian(list(g_t)) - A.T).applyfunc(sp.expand) == sp.zeros(N, N)
print("eq. (9)'s carry is A(t)ᵀ ∇_{h(t)}L with A(t) = diag(1 − h(t)²) W: checked")

# ## 2. Many steps back: the chain rule over the trajectory
#
# h(t) depends on h(τ) only through h(τ+1), …, h(t − 1), so
#
#     ∂h(t)/∂h(τ) = A(t) A(t−1) ⋯ A(τ+1),     ∂h(t)/∂h(t) = I.
#
# We check it symbolically: the scalar Elman recurrence at n = 2 unrolled for three steps from
# a symbolic h(1), differentiated by `sympy.diff`, against the product of the A(s).

N2 = 2
W2 = sp.Matrix(2, 2, sp.symbols("w11 w12 w21 w22"))
U2 = sp.Matrix(2, 1, sp.symbols("u1 u2"))
b2 = sp.Matrix(sp.symbols("b1 b2"))
xs = sp.symbols("x2 x3 x4")
h1 = sp.Matrix(sp.symbols("h1_1 h1_2"))
states = [h1]
for x in xs:  # eqs. (2)-(3), h(2), h(3), h(4)
    states.append((b2 + W2 * states[-1] + U2 * x).applyfunc(sp.tanh))
jacobian = states[-1].jacobian(list(h1))  # ∂h(4)/∂h(1) by sympy.diff
product = sp.eye(N2)
for s in (3, 2, 1):  # A(4) A(3) A(2)
    product = product * sp.diag(*[1 - states[s][i] ** 2 for i in range(N2)]) * W2
assert (jacobian - product).applyfunc(sp.expand) == sp.zeros(N2, N2)
print("∂h(4)/∂h(1) = A(4) A(3) A(2) (sympy.diff of the unrolled eqs. (2)-(3)): checked")

# ## 3. What `rs.gradient_flow` computes, and how
#
# The map h(τ) ↦ h(t) is the cell run from step τ + 1 with initial state h(τ). `flow_cell`
# replaces the loss by w(t) L(t) + ⟨d_h(t)|h(t)⟩ (the slides' linear loss, for the seed). Its
# generated `vjp` returns the gradient of h(0): with d_h = e_i at the window's last step and
# w = 0 that is row i of ∂h(t)/∂h(τ); with d_h = 0 and w = 1 at the last step only it is
# ∂L(t)/∂h(τ). `rs.gradient_flow` cuts every window of one length t − τ out of the sequence
# and puts them, times the n seeds, along the batch axis: one kernel call per lag.

fc = flow_cell(cell)
print(fc.cell)
params, inputs, targets = random_problem(cell, T=6, B=1, seed=0)
kernel = rs.compile(cell)
h = kernel.forward(params, inputs)["h"][:, 0]  # h(1..6)
hs = np.concatenate([np.zeros((1, h.shape[1])), h])  # h(0..6)
Wn = params["W"]
flow = gradient_flow(cell, params, inputs, targets=targets)
for t in range(7):
    J = np.eye(len(Wn))
    for tau in range(t, -1, -1):
        if tau < t:
            J = J @ (np.diag(1 - hs[tau + 1] ** 2) @ Wn)  # grow A(t) ⋯ A(τ+1) to the right
        # float64 products of ≤ 6 matrices on both sides: equal up to rounding, ~1e-15
        assert abs(flow.jacobian_norms[t, tau] - np.linalg.norm(J, 2)) <= 1e-12 * np.linalg.norm(
            J, 2
        )
print("‖∂h(t)/∂h(τ)‖₂ of the generated kernel = ‖A(t) ⋯ A(τ+1)‖₂ for all τ ≤ t ≤ 6")

# ## 4. The error reaching h(τ), and the slides' error bra
#
# Unrolling eq. (9) from t = T down to τ gives the adjoint as a sum over the later steps:
#
#     ∇_{h(τ)}L = Σ_{t ≥ τ} ∂L(t)/∂h(τ)ᵀ,   ∂L(t)/∂h(τ) = (o(t) − y(t))ᵀ V ∂h(t)/∂h(τ),
#
# so each step's error reaches h(τ) through the Jacobian above; `error_norms[t, τ]` is
# ‖∂L(t)/∂h(τ)‖. The slides write the same recursion for h(t) = σ(J_x x(t) + J_h h(t−1)) and
# L = Σ⟨d(t)|h(t)⟩ as ⟨δ_t(τ)| = ⟨d(t)| G(t) J_h G(t−1) ⋯ J_h G(τ), G(s) = diag(σ′(a(s))):
# the gradient of L(t) with respect to the pre-activation a(τ), the thing δJ multiplies. It is
# therefore ∂L(t)/∂h(τ) G(τ): the state's error bra times the diagonal factor of step τ. We
# check this on the slides' own cell with the vectors the generated flow kernel returns.

slides = rs.cells.slides()
sp_params, sp_inputs, sp_targets = random_problem(slides, T=5, B=1, seed=1)
fcs = flow_cell(slides)
flow_kernel = compile_cell(fcs.cell)
a_h = rs.compile(slides).forward(sp_params, sp_inputs)["h"][:, 0]
a_h = np.concatenate([np.zeros((1, a_h.shape[1])), a_h])  # h(0..5)
G = [np.diag(1 - a_h[s] ** 2) for s in range(6)]  # σ = tanh, σ′(a(s)) = 1 − h(s)²
J_h, d = sp_params["J_h"], sp_targets["d"][:, 0]
t, tau = 5, 2
window = {"x": sp_inputs["x"][tau:t], fcs.weight: np.zeros((t - tau, 1, 1))}
window[fcs.weight][-1] = 1.0  # the loss of the last step, L(t), only
window[fcs.probes["h"]] = np.zeros((t - tau, 1, a_h.shape[1]))
seeds = {"d": sp_targets["d"][tau:t], fcs.seeds["h"]: np.zeros((t - tau, 1, a_h.shape[1]))}
_, _, _, h0_grad = flow_kernel.vjp(sp_params, window, seeds, a_h[tau][None])
state_bra = h0_grad["h"][0]  # ∂L(t)/∂h(τ) from the generated kernel
slides_bra = d[t - 1] @ G[t]  # ⟨d(t)| G(t) J_h G(t−1) ⋯ J_h G(τ)
for s in range(t - 1, tau - 1, -1):
    slides_bra = slides_bra @ J_h @ G[s]
# both are float64 products of 2(t − τ) + 1 matrices: equal up to rounding (1e-12 relative)
np.testing.assert_allclose(state_bra @ G[tau], slides_bra, rtol=1e-12, atol=0)
sf = gradient_flow(slides, sp_params, sp_inputs, targets=sp_targets)
assert abs(sf.error_norms[t, tau] - np.linalg.norm(state_bra)) <= 1e-12 * np.linalg.norm(state_bra)
print(f"slides' ⟨δ_{t}({tau})| = ∂L({t})/∂h({tau}) G({tau}): checked against the generated kernel")

# ## 5. Vanishing and exploding
#
# At the fixed point h = 0 (zero inputs and biases, h(0) = 0), every A(s) is W, and
# ‖∂h(t)/∂h(τ)‖ = ‖W^(t−τ)‖. With W = r Q, Q orthogonal, that is r^(t−τ) exactly, and the rate
# per step fitted to log ‖∂h(t)/∂h(τ)‖ against t − τ is r: vanishing for r < 1, exploding
# for r > 1. Away from h = 0, |tanh′| ≤ 1 makes ‖A(s)‖ ≤ ‖W‖: saturation can only slow the
# growth down, which is why a driven tanh network with r = 1.5 still shows vanishing
# gradients (docs/flow.md has the table).

Q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(5, 5)))
zero_inputs = {"x": np.zeros_like(inputs["x"])}
for r, verdict in ((0.5, "vanishing"), (1.5, "exploding")):
    linear = {**params, "W": r * Q, "b": np.zeros(5)}
    result = gradient_flow(cell, linear, zero_inputs)
    print(result.summary())
    assert abs(result.rate - r) <= 1e-12 * r and result.verdict == verdict  # ‖(rQ)^k‖ = r^k
print("the fitted rate per step is the spectral radius r in the linear regime (eq. (9)'s W)")
