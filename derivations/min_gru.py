# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # minGRU: a recurrence linear in its state, derived and run as a scan
#
# Feng, Tung, Ahmed, Bengio & Hajimirsadeghi ("Were RNNs All We Needed?", arXiv:2410.01201,
# 2024) strip the GRU until its gates no longer read the state: z = σ(W_z x(t) + b_z),
# h̃ = W_h x(t) + b_h, h(t) = (1 − z) ∘ h(t−1) + z ∘ h̃. The update replaces eqs. (2)–(3),
# out(t) = V h(t) + b_V is eq. (4) (c renamed b_V), the loss is eq. (5). Eq. (9) loses its
# matrix term: ∇h(t) = Vᵀ ∇out(t) + (1 − z(t+1)) ∘ ∇h(t+1). Both recurrences are of the form
# u(t) = a(t) ∘ u(t∓1) + b(t) with a(t) known before the recurrence starts, so they are
# prefix scans, computed by the generated kernel without a loop over t.

import numpy as np
import sympy as sp

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle

# ## 1. The cell, in eight lines

cell = rs.Cell("min_gru")
n, m, k = cell.dims("n m k")
x, h = cell.input("x", m), cell.state("h", n)
W_z, W_h = cell.param("W_z", n, m), cell.param("W_h", n, m)
b_z, b_h = cell.param("b_z", n), cell.param("b_h", n)
z = cell.define("z", rs.sigmoid(W_z @ x + b_z))  # the update gate reads x(t) only
h_tilde = cell.define("h_tilde", W_h @ x + b_h)  # the candidate: no tanh, no h(t−1)
cell.update(h, (1 - z) * h.prev + z * h_tilde)  # in place of eqs. (2)-(3)
V, b_V = cell.param("V", k, n), cell.param("b_V", k)
out = cell.output("out", V @ h + b_V)  # eq. (4)
cell.loss(rs.squared_error(out, cell.target("y", k)))  # eq. (5)

# It is the built-in `rs.cells.min_gru()`: the two derivations print identically.

assert rs.derive(cell).latex() == rs.derive(rs.cells.min_gru()).latex()

# ## 2. The derivation

derivation = rs.derive(cell)
print(derivation.pretty())

# As LaTeX:

print(derivation.latex())


def names(expr):
    """The names of the matrix symbols in a derived expression."""
    return {s.name for s in expr.atoms(sp.MatrixSymbol)}


# ## 3. The state is linear
#
# rnnsym reads the coefficient of h(t−1) off the update symbolically (the tangent of the update
# in the direction of h(t−1)) and the offset by setting h(t−1) to zero:

print(derivation.linear_states)

# The coefficient a(t) = 1 − z(t) and the offset b(t) = z(t) ∘ h̃(t) read only x(t) and the
# parameters, never a state: the update is h(t) = a(t) ∘ h(t−1) + b(t) with a(t) and b(t)
# computable for every t before the recurrence runs. What that buys: (a₁, b₁) • (a₂, b₂) =
# (a₂ ∘ a₁, a₂ ∘ b₁ + b₂) is associative, so h(1..T) is a prefix scan of the pairs, evaluated
# in blocks over all t at once instead of T dependent steps; and the adjoint recurrence,
# ∇h(t) = Vᵀ ∇out(t) + a(t+1) ∘ ∇h(t+1), is the same kind of scan run backwards.

linear = derivation.linear_states
assert linear.all_linear and list(linear.linear) == ["h"]
state = linear.linear["h"]
assert names(state.coefficient) == {"W_z", "b_z", "x"}
assert names(state.offset) == {"W_z", "b_z", "W_h", "b_h", "x"}
assert not any(s.name.startswith("h") for s in state.coefficient.atoms(sp.MatrixSymbol))

# Eq. (9) for minGRU carries ∇h(t+1) only through the Hadamard factor 1 − z(t+1):

g_h = derivation.state_adjoint("h")
(carried,) = [t for t in g_h.args if "g_h_next" in names(t)]
assert isinstance(carried, sp.HadamardProduct) and names(carried) == {"g_h_next", "z_next"}
print("eq. (9) for minGRU, the carried term:", carried)

# ## 4. An independent oracle
#
# `sympy.diff` of the cell unrolled into scalars (n = 2, m = 3, k = 1, T = 2), at 60 digits,
# against the matrix-form derivation:

report = scalar_oracle(cell, sizes={"n": 2, "m": 3, "k": 1}, T=2)
print(report)
assert report.ok

# ## 5. The generated kernel: a scan
#
# `rs.compile` sees that every state is linear and picks the scan schedule; the forward states
# come from one `_linear_scan` call and the adjoints from one `_linear_scan_reverse` (each a
# two-level scan: about 7 √T array operations over blocks of about √T steps), with no loop
# over t in the kernel's own code.

kernel = rs.compile(cell)
print("schedule:", kernel.schedule)
assert kernel.schedule == "scan"
body = kernel.source[kernel.source.index("def _loss_and_grad") :]
print(body[body.index("    # forward recurrence") : body.index("    # parameter gradients")])
assert "_linear_scan(" in body and "_linear_scan_reverse(" in body
assert "for t in" not in body

# The scan and the sequential loop (`schedule="sequential"`) compute the same function; in
# float64 they agree to 1e-10 relative (they differ only in the order of the recurrence's
# products and sums, a few ulp per step), at T = 300, B = 4:

sequential = rs.compile(cell, schedule="sequential")
assert sequential.schedule == "sequential"
params, inputs, targets = random_problem(cell, T=300, B=4, seed=1)
loss_scan, grads_scan = kernel.loss_and_grad(params, inputs, targets)
loss_loop, grads_loop = sequential.loss_and_grad(params, inputs, targets)
np.testing.assert_allclose(loss_scan, loss_loop, rtol=1e-10)
for p in params:
    scale = np.abs(grads_loop[p]).max()
    np.testing.assert_allclose(grads_scan[p], grads_loop[p], rtol=1e-10, atol=1e-10 * scale)
print(f"scan vs sequential at T = 300: loss {loss_scan:.12g} = {loss_loop:.12g}")

# Central finite differences agree (relative error per parameter):

params, inputs, targets = random_problem(cell, T=6, B=3)
gradients = check_gradients(kernel, params, inputs, targets)
print(gradients)
assert gradients.ok
