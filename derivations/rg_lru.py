# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # The real-gated LRU of Griffin and Hawk: derived and run as a scan
#
# De et al. ("Griffin: Mixing Gated Linear Recurrences with Local Attention for Efficient
# Language Models", arXiv:2402.19427, 2024), eqs. (1)–(4), define the RG-LRU on an input x(t)
# of the state's size n: a recurrence gate r = σ(W_a x + b_a), an input gate
# i = σ(W_x x + b_x), a decay a(t) = σ(Λ)^(c r(t)) with c = 8 and a learned vector Λ, computed
# in log space as log a(t) = −c r(t) ∘ softplus(−Λ), and
# h(t) = a(t) ∘ h(t−1) + sqrt(1 − a(t)²) ∘ (i(t) ∘ x(t)). Here out(t) = V h(t) + b_V is the
# report's eq. (4) and the loss its eq. (5); eq. (9) becomes
# ∇h(t) = Vᵀ ∇out(t) + a(t+1) ∘ ∇h(t+1). Because a(t) ∈ (0, 1) and the input is scaled by
# sqrt(1 − a²), h stays bounded for any T when x is; the scan below relies on nothing of that,
# only on a(t) not reading h.

import numpy as np
import sympy as sp

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle

# ## 1. The cell

cell = rs.Cell("rg_lru")
n, k = cell.dims("n k")
x, h = cell.input("x", n), cell.state("h", n)
W_a, W_x = cell.param("W_a", n, n), cell.param("W_x", n, n)
b_a, b_x = cell.param("b_a", n), cell.param("b_x", n)
Lambda = cell.param("Lambda", n)
r = cell.define("r", rs.sigmoid(W_a @ x + b_a))  # recurrence gate, eq. (1) of De et al.
i = cell.define("i", rs.sigmoid(W_x @ x + b_x))  # input gate, their eq. (2)
log_a = cell.define("log_a", -8 * (r * rs.softplus(-Lambda)))  # c = 8: a = σ(Λ)^(8 r)
a = cell.define("a", rs.exp(log_a))  # their eq. (3)
cell.update(h, a * h.prev + rs.sqrt(1 - a * a) * (i * x))  # their eq. (4)
V, b_V = cell.param("V", k, n), cell.param("b_V", k)
out = cell.output("out", V @ h + b_V)  # eq. (4) of the report
cell.loss(rs.squared_error(out, cell.target("y", k)))  # eq. (5)

# It is the built-in `rs.cells.rg_lru()`: the two derivations print identically. (rs.sqrt is the
# elementwise square root, with the derivative 1 / (2 sqrt(z)) from its forward value.)

assert rs.derive(cell).latex() == rs.derive(rs.cells.rg_lru()).latex()

# log a = −c r softplus(−Λ) is the paper's a = σ(Λ)^(c r), exactly: log σ(Λ) = −softplus(−Λ).

s_l, s_r = sp.symbols("Lambda r", real=True)
power = (1 / (1 + sp.exp(-s_l))) ** (8 * s_r)  # σ(Λ)^(8 r), positive
log_space = sp.exp(-8 * s_r * sp.log(1 + sp.exp(-s_l)))  # exp(−8 r softplus(−Λ)), positive
logs = [sp.expand_log(sp.log(v), force=True) for v in (power, log_space)]
assert sp.simplify(logs[0] - logs[1]) == 0  # equal logarithms of positive numbers
print("σ(Λ)^(8 r) = exp(−8 r softplus(−Λ)): exact")

# ## 2. The derivation

derivation = rs.derive(cell)
print(derivation.pretty())

# As LaTeX:

print(derivation.latex())


def names(expr):
    """The names of the matrix symbols in a derived expression."""
    return {s.name for s in expr.atoms(sp.MatrixSymbol)}


# ## 3. The state is linear

print(derivation.linear_states)

# The coefficient a(t) = exp(−8 r(t) ∘ softplus(−Λ)) and the offset
# b(t) = sqrt(1 − a(t)²) ∘ i(t) ∘ x(t) read x(t) and the parameters only: the gates look at the
# input, never at h. So h(t) = a(t) ∘ h(t−1) + b(t) is a prefix scan of the pairs (a(t), b(t))
# under (a₁, b₁) • (a₂, b₂) = (a₂ ∘ a₁, a₂ ∘ b₁ + b₂), and the adjoint recurrence
# ∇h(t) = Vᵀ ∇out(t) + a(t+1) ∘ ∇h(t+1) is the same scan run backwards: the kernel computes
# both over all t at once, and every gradient (of Λ too) is one contraction over t and batch.

linear = derivation.linear_states
assert linear.all_linear and list(linear.linear) == ["h"]
state = linear.linear["h"]
assert names(state.coefficient) == {"W_a", "b_a", "Lambda", "x"}
assert names(state.offset) == {"W_a", "b_a", "Lambda", "W_x", "b_x", "x"}

g_h = derivation.state_adjoint("h")
(carried,) = [t for t in g_h.args if "g_h_next" in names(t)]
assert isinstance(carried, sp.HadamardProduct) and names(carried) == {"g_h_next", "a_next"}
print("eq. (9) for the RG-LRU, the carried term:", carried)

# ∇Λ collects the decay's dependence on Λ: d log a / dΛ = 8 r ∘ σ(−Λ).

print("gradient of Lambda:", derivation.param_terms["Lambda"])
assert {"r", "g_log_a"} <= names(derivation.param_terms["Lambda"])

# ## 4. An independent oracle
#
# `sympy.diff` of the cell unrolled into scalars (n = 2, k = 1, T = 2), at 60 digits:

report = scalar_oracle(cell, sizes={"n": 2, "k": 1}, T=2)
print(report)
assert report.ok

# ## 5. The generated kernel: a scan

kernel = rs.compile(cell)
print("schedule:", kernel.schedule)
assert kernel.schedule == "scan"
body = kernel.source[kernel.source.index("def _loss_and_grad") :]
print(body[body.index("    # forward recurrence") : body.index("    # outputs")])
assert "_linear_scan(" in body and "_linear_scan_reverse(" in body and "for t in" not in body

# The scan and the sequential loop agree to 1e-10 relative in float64 (the same formulas, only
# the order of the recurrence's products and sums differs), at T = 300, B = 4, once with Λ as
# drawn (a(t) spread over (0, 1)) and once with Λ = 6, where a(t) = σ(6)^(8 r) is within a few
# percent of 1 and the scan carries h over hundreds of steps:

sequential = rs.compile(cell, schedule="sequential")
params, inputs, targets = random_problem(cell, T=300, B=4, seed=1)
slow = {**params, "Lambda": np.full_like(params["Lambda"], 6.0)}
for values in (params, slow):
    loss_scan, grads_scan = kernel.loss_and_grad(values, inputs, targets)
    loss_loop, grads_loop = sequential.loss_and_grad(values, inputs, targets)
    np.testing.assert_allclose(loss_scan, loss_loop, rtol=1e-10)
    for p in values:
        scale = np.abs(grads_loop[p]).max()
        np.testing.assert_allclose(grads_scan[p], grads_loop[p], rtol=1e-10, atol=1e-10 * scale)
    print(f"scan vs sequential at T = 300: loss {loss_scan:.12g} = {loss_loop:.12g}")

# Central finite differences agree (relative error per parameter):

params, inputs, targets = random_problem(cell, T=6, B=3)
gradients = check_gradients(kernel, params, inputs, targets)
print(gradients)
assert gradients.ok
