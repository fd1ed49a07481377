# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # A gated cell in bra-ket form: the GRU over the whole sequence
#
# The slides' form h = σ(J_x x + J_h h(t−1)) has a diagonal G(t), so the step-to-step Jacobian
# factors as G(t)J_h(t). A gated cell does not: in the GRU (PyTorch's layout, the built-in
# `gru`) h(t) = (1 − z) ∘ g + z ∘ h(t−1) depends on h(t−1) directly, through the gates r, z and
# through the candidate g. `rs.braket` then uses the general form that completes the
# slides' derivation: the transition A(t) = ∂h(t)/∂h(t−1), known by its action on a bra (the
# `carry` that
# `rs.derive` derives), the block-diagonal 𝔸 = diag(A(1), …, A(T)), the error bras
# ⟨δ_t(τ)| = ⟨d(t)|A(t)⋯A(τ+1) and the closed form ⟨δ| = ⟨d|(𝕀 − 𝔸𝕊)⁻¹. For the slides' cell
# A(t) = G(t)J_h(t) and everything below reduces to `derivations/braket_elman.py`. Runs as a
# script (`python derivations/braket_gru.py`) and under the test suite.

import rnnsym as rs
from rnnsym.braket import monomials
from rnnsym.verify import braket_report

# ## 1. The cell and its sequence-space form, T = 3

cell = rs.cells.gru()
T = 3
form = rs.braket(cell, T)
print(form.pretty())

# A(t)ᵀ acting on a ket is the carry term of this cell's backward recurrence: what step t hands
# back to step t − 1. Its first term is z(t) ∘ g: the direct path h(t−1) → h(t) a gated cell
# has and an Elman cell lacks.

print("A(t)ᵀ|g⟩ =", form.text(form.transition_action(1)))

# ## 2. Identities, symbolically
#
# (𝕀 − 𝔸𝕊)Σ_{k<T}(𝔸𝕊)ᵏ = 𝕀; ⟨d|(𝕀 − 𝔸𝕊)⁻¹ = (Σ_{t≥τ}⟨δ_t(τ)|)_τ; and stepping τ down is the
# BPTT recurrence ⟨δ(τ)| = ⟨d(τ)| + ⟨δ(τ+1)|A(τ+1) (the generalisation of the report's eq. (9)
# to this cell: ⟨δ(τ)| = ∇_{h(τ)}L).

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
print("⟨δ(τ)| = ∇_{h(τ)}L: this cell's generalisation of the report's eq. (9), symbolically")

# ## 3. Numbers
#
# The update rules (each parameter's step term read with ∇_{h(τ)}L = |δ(τ)⟩) and the closed
# form with an explicit 𝔸, against the core's BPTT and `sympy.diff` of the unrolled loss, for
# tied and untied weights (T = 2: the scalar oracle of a gated cell grows fast), and against
# BPTT alone for T = 3.

for tied in (True, False):
    report = braket_report(rs.braket(cell, 2, tied=tied))
    print(report)
    assert report.ok
report = braket_report(form, oracle=False)
print(report)
assert report.ok
