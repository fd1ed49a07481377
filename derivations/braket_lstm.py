# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # A cell with two states in bra-ket form: the LSTM over the whole sequence
#
# The slides (Y. Suga, "Deep learning and physics 4.2", 2023) write one state ket |h(t)⟩. An
# LSTM carries two states, h(t) and c(t), and h(t) = o ∘ tanh(c(t)) reads the *new* c(t) within
# the step. `rs.braket` stacks them into one ket per step, |s(t)⟩ = (|h(t)⟩; |c(t)⟩), and uses
# the general form with the block Jacobian A(t) = ∂s(t)/∂s(t−1):
#
#     A(t) = [∂h(t)/∂h(t−1)  ∂h(t)/∂c(t−1); ∂c(t)/∂h(t−1)  ∂c(t)/∂c(t−1)]
#
# known by its action on a ket |u⟩ = (|u_h⟩; |u_c⟩) on s(t), derived by one backward pass of the
# step without the loss. ⟨d(t)| = ∂L(t)/∂s(t) holds the other state of the step fixed (here
# (Vᵀ(out(t) − y(t)); 0): the loss reads h only), and the adjoint bra obeys
# ⟨δ(τ)| = ⟨d(τ)| + ⟨δ(τ+1)|A(τ+1), ⟨δ(T+1)| = 0, with the closed form ⟨δ| = ⟨d|(𝕀 − 𝔸𝕊)⁻¹.
# Runs as a script (`python derivations/braket_lstm.py`) and under the test suite.

import sympy as sp

import rnnsym as rs
from rnnsym.braket import monomials
from rnnsym.verify import braket_report

# ## 1. The cell and its sequence-space form, T = 3

cell = rs.cells.lstm()
T = 3
form = rs.braket(cell, T)
print(form.pretty())

# The two block columns of A(t)ᵀ|u⟩. The cell state's part is ū_c ∘ f: the forget gate is
# ∂c(t)/∂c(t−1) on the diagonal, and ū_c(t) = u_c(t) + (∂h(t)/∂c(t))ᵀ u_h(t) collects what h(t)
# sends back to c(t) within the step.

t = sp.Symbol("t")
for state in cell.states:
    print(f"[A(t)ᵀ|u⟩]_{state} =", form.text(form.transition_action(t, state)))
print("ū_c(t) =", form.text(form.at(form.total_defs["c"], t)))

# ## 2. Identities, symbolically
#
# (𝕀 − 𝔸𝕊)Σ_{k<T}(𝔸𝕊)ᵏ = 𝕀 with 𝔸 block-diagonal in the stacked state; ⟨d|(𝕀 − 𝔸𝕊)⁻¹ has the
# blocks Σ_{t≥τ}⟨δ_t(τ)|; and stepping τ down is the backward recurrence.

check = form.inverse_check_blocks()
assert all(
    monomials(check[i][j]) == monomials(form.identity_blocks[i][j])
    for i in range(T)
    for j in range(T)
)
for tau, bra in enumerate(form.closed_form(), start=1):
    assert monomials(bra) == monomials(form.adjoint_bra(tau))
    assert monomials(form.bptt_bra(tau)) == monomials(form.adjoint_bra(tau))
    print(f"⟨δ({tau})| =", form.text(bra))
print("⟨δ(τ)| = ∇_{s(τ)}L: the stacked-state generalisation of the report's eq. (9), symbolically")

# ## 3. Numbers
#
# The update rules (∂L(τ)/∂θ + ⟨δ(τ)|∂s(τ)/∂θ) and the closed form with an explicit 𝔸 (2n × 2n
# blocks), against the core's BPTT and `sympy.diff` of the unrolled loss, tied and untied
# (T = 2: the scalar oracle of a gated cell grows fast), and against BPTT alone for T = 3; the
# peephole LSTM, whose gates read c(t−1) and c(t), the same way.

for tied in (True, False):
    report = braket_report(rs.braket(cell, 2, tied=tied))
    print(report)
    assert report.ok
report = braket_report(form, oracle=False)
print(report)
assert report.ok
report = braket_report(rs.braket(rs.cells.lstm_peephole(), 2))
print(report)
assert report.ok
