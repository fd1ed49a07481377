# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # The lecture slides, step by step: the whole sequence at once in bra-ket form
#
# Y. Suga's lecture slides ("Deep learning and physics 4.2", 2023) write the RNN over the whole
# sequence as one ket equation with block-diagonal operators 𝕁_x, 𝕁_h and the diagonal G(t), and
# stop just after G(t) is defined. This derivation rebuilds every object of the slides with
# `rs.braket`, completes the derivation as rnnsym sets it up (error bras, update rules, the closed
# form with a finite Neumann sum), and checks each step: symbolically where the claim is an
# identity, and numerically against the core's BPTT (eqs. (6)–(9)), `sympy.diff` of the unrolled
# loss and the generated NumPy kernel. It runs as a script (`python derivations/braket_elman.py`)
# and is executed by the test suite.

import numpy as np
import sympy as sp

import rnnsym as rs
from rnnsym.braket import monomials
from rnnsym.verify import braket_report, unrolled_point

# ## 1. The slides' model
#
# |h(t)⟩ = σ(J_x|x(t)⟩ + J_h|h(t−1)⟩) with σ = tanh, and the loss linear in the states,
# L = Σ_t ⟨d(t)|h(t)⟩. (This is the built-in cell `slides`.)

cell = rs.Cell("slides")
n, m = cell.dims("n m")
x, h = cell.input("x", m), cell.state("h", n)
J_x, J_h = cell.param("J_x", n, m), cell.param("J_h", n, n)
cell.update(h, rs.tanh(J_x @ x + J_h @ h.prev))
cell.loss(rs.linear_loss(cell.target("d", n), h))

# ## 2. Kets, block-diagonal operators, G(t) and the shift, for T = 3
#
# `rs.braket` builds them as SymPy block matrices with symbolic sizes. The weights are shared
# over time (tied) unless `tied=False`, which gives every step its own J_x(t), J_h(t).

T = 3
form = rs.braket(cell, T)
print(form.pretty())
print(form.latex())
print("𝕁_h =", form.J_h, " shape", form.J_h.shape)

# At concrete sizes the objects are ordinary matrices. 𝕊 moves every block one step down, so
# 𝕊^T = 0: that is why (𝕀 − 𝔾𝕁_h𝕊)⁻¹ will be a finite sum.

concrete = rs.braket(cell, T, sizes={"n": 2, "m": 3})
S = sp.Matrix(concrete.S.as_explicit())
assert S**T == sp.zeros(2 * T, 2 * T) and S ** (T - 1) != sp.zeros(2 * T, 2 * T)
print("𝕊 =", S, " and 𝕊^T = 0")

# The slides' whole-sequence equation |h⟩ = σ(𝕁_x|x⟩ + 𝕁_h|h(t−1)⟩), with |h(t−1)⟩ = 𝕊|h⟩ +
# |h(0)⟩, holds for the states the generated kernel computes step by step:

kernel = rs.compile(cell)
rng = np.random.default_rng(0)
N_, M_ = 4, 3
params = {"J_x": rng.normal(0, 0.5, (N_, M_)), "J_h": rng.normal(0, 0.5, (N_, N_))}
xs = rng.normal(size=(T, 1, M_))
h0 = rng.normal(size=N_)
hs = kernel.forward(params, {"x": xs}, h0)["h"][:, 0, :].reshape(-1)  # the ket |h⟩
Jx_big = np.kron(np.eye(T), params["J_x"])  # 𝕁_x
Jh_big = np.kron(np.eye(T), params["J_h"])  # 𝕁_h
S_big = np.kron(np.eye(T, k=-1), np.eye(N_))  # 𝕊
h0_ket = np.concatenate([h0, np.zeros(N_ * (T - 1))])
ket_equation = np.tanh(Jx_big @ xs.reshape(-1) + Jh_big @ (S_big @ hs + h0_ket))
assert np.allclose(ket_equation, hs, rtol=1e-14, atol=1e-15)
print("|h⟩ = σ(𝕁_x|x⟩ + 𝕁_h|h(t−1)⟩) holds for the kernel's states")

# ## 3. The variation of the state and the error bras
#
# δ|h(t)⟩ = G(t)(δJ_x|x(t)⟩ + δJ_h|h(t−1)⟩ + J_h δ|h(t−1)⟩). Unrolled from δh(0) = 0, it is the
# block t of (𝕀 − 𝔾𝕁_h𝕊)⁻¹𝔾(δ𝕁_x|x⟩ + δ𝕁_h|h(t−1)⟩): checked as a symbolic identity
# (`monomials` expands both sides into products of matrix symbols).

N = form.neumann_blocks()
unrolled = []
for t in range(1, T + 1):
    expr = form.variation(t)
    if t > 1:
        expr = expr.xreplace({sp.MatrixSymbol(f"δh({t - 1})", form.n, 1): unrolled[-1]})
    unrolled.append(expr)
sources = [
    form.G_steps[s] * (form._delta("J_x", s + 1) * form.x_steps[s])
    + form.G_steps[s] * (form._delta("J_h", s + 1) * form.h_steps[s])
    for s in range(T)
]
for t in range(T):
    block = sp.MatAdd(*[N[t][s] * sources[s] for s in range(T)])
    assert monomials(unrolled[t]) == monomials(block)
print("δ|h(t)⟩ unrolled = [(𝕀 − 𝔾𝕁_h𝕊)⁻¹𝔾(δ𝕁_x|x⟩ + δ𝕁_h|h(t−1)⟩)]_t, symbolically")

# Reading off the coefficient of δJ in δ⟨d(t)|h(t)⟩ gives the error bras
# ⟨δ_t(τ)| = ⟨d(t)|G(t)J_h(t)G(t−1)⋯J_h(τ+1)G(τ), and the recursion
# ⟨δ_t(τ−1)| = ⟨δ_t(τ)|J_h(τ)G(τ−1):

for t in range(1, T + 1):
    for tau in range(t, 0, -1):
        print(f"⟨δ_{t}({tau})| =", form.text(form.error_bra(t, tau)))
        if tau > 1:
            step = form.error_bra(t, tau) * form.Jh_steps[tau - 1] * form.G_steps[tau - 2]
            assert monomials(form.error_bra(t, tau - 1)) == monomials(step)

# ## 4. The closed form: a finite Neumann sum
#
# (𝕀 − 𝔾𝕁_h𝕊) Σ_{k<T}(𝔾𝕁_h𝕊)ᵏ = 𝕀 exactly, because (𝔾𝕁_h𝕊)^T = 0. The adjoint bra
# ⟨δ| = ⟨d|(𝕀 − 𝔾𝕁_h𝕊)⁻¹𝔾 has the blocks Σ_{t≥τ}⟨δ_t(τ)|, and stepping τ down is the BPTT
# recurrence ⟨δ(τ)| = (⟨d(τ)| + ⟨δ(τ+1)|J_h)G(τ), where ⟨δ(τ)| = ∇_{a(τ)}L is the adjoint of the
# pre-activation: the report's eq. (9) (for ∇_{h(τ)}L) multiplied by G(τ), with the slides' loss.

check = form.inverse_check_blocks()
assert all(
    monomials(check[i][j]) == monomials(form.identity_blocks[i][j])
    for i in range(T)
    for j in range(T)
)
for tau, bra in enumerate(form.closed_form(), start=1):
    assert monomials(bra) == monomials(form.adjoint_bra(tau))
    assert monomials(form.bptt_bra(tau)) == monomials(form.adjoint_bra(tau))
print("closed form = Σ_t ⟨δ_t(τ)| = the backward recurrence (BPTT), symbolically")

# ## 5. Numbers: the bra-ket gradient against BPTT and `sympy.diff`
#
# For T = 1…4, tied and untied weights, the linear loss of the slides and eq. (5) (the Elman
# cell of the report): the update rules and the closed form, evaluated at a random rational
# point with 60 digits, agree with the core's BPTT and with `sympy.diff` of the unrolled loss.

for the_cell in (cell, rs.cells.elman()):
    for steps in (1, 2, 3, 4):
        for tied in (True, False):
            report = braket_report(rs.braket(the_cell, steps, tied=tied), seed=steps)
            assert report.ok, report
    print(report)
print("bra-ket gradient = BPTT (the report's eq. (9) and eqs. (6)-(8)) = sympy.diff, T = 1..4")

# ## 6. The update rule is a gradient-descent step
#
# δJ^{mn} = −ε Σ_t Σ_{τ≤t}⟨δ_t(τ)|m⟩⟨n|v(τ)⟩ applied once with ε = 1/10 gives the same weights as
# one step of plain gradient descent with the generated kernel's gradient (float64, rtol 1e-12).

problem = unrolled_point(cell, T, seed=11)
updated = form.update(problem, sp.Rational(1, 10))[0]
values = problem.values(30)[0]
as_array = {name: np.array(v.evalf(30), dtype=float) for name, v in values.items()}
data = np.stack([np.array(problem.data[t]["x"], dtype=float).T for t in range(T)])
weights = np.stack([np.array(problem.data[t]["d"], dtype=float).T for t in range(T)])
_, grads = kernel.loss_and_grad(as_array, {"x": data}, {"d": weights})
for name in as_array:
    step = as_array[name] - 0.1 * grads[name]
    assert np.allclose(np.array(updated[name], dtype=float), step, rtol=1e-12, atol=1e-14)
print("one update of the slides' rules = one gradient-descent step of the kernel")

# ## 7. The inverse applied to the right: forward mode (real-time recurrent learning)
#
# ⟨d|(𝕀 − 𝔾𝕁_h𝕊)⁻¹ read from the left is BPTT; (𝕀 − 𝔾𝕁_h𝕊)⁻¹ applied to the right carries the
# sensitivities ∂h(t)/∂θ forward with the states, so nothing of length T is stored.
# `rs.compile(cell, mode="forward")` generates that kernel; it gives the same loss and gradients
# as the reverse-mode kernel (float64; both are the same sums in a different order, so they
# agree to rounding, rtol 1e-10).

forward_kernel = rs.compile(cell, mode="forward")
T_long, B = 40, 3
xs = rng.normal(size=(T_long, B, M_))
ds = rng.normal(size=(T_long, B, N_))
loss_r, grads_r = kernel.loss_and_grad(params, {"x": xs}, {"d": ds})
loss_f, grads_f = forward_kernel.loss_and_grad(params, {"x": xs}, {"d": ds})
assert np.isclose(loss_f, loss_r, rtol=1e-10)
for name in params:
    assert np.allclose(grads_f[name], grads_r[name], rtol=1e-10, atol=1e-12), name
print(f"forward mode (RTRL) = reverse mode (BPTT) at T = {T_long}")
