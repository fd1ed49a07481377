# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # The GRU of Cho et al. (2014): back-propagation through time, derived and checked
#
# The gated recurrent unit as Cho et al. (EMNLP 2014) wrote it, with one weight matrix per gate
# acting on the stacked [h(t−1); x(t)]: r = σ(W_r [h(t−1); x(t)] + b_r),
# z = σ(W_z [h(t−1); x(t)] + b_z), g = tanh(W_g [r ∘ h(t−1); x(t)] + b_g),
# h(t) = (1 − z) ∘ g + z ∘ h(t−1). The reset gate multiplies h(t−1) *before* the product,
# unlike the cuDNN/PyTorch variant of `derivations/gru.py`. The update replaces eqs. (2)–(3)
# (each [·; ·]-product is eq. (2)'s W h(t−1) + U x(t) with [W U] as one matrix),
# out(t) = V h(t) + b_V is eq. (4), the loss is eq. (5). Eq. (9) gets the direct term
# z(t+1) ∘ ∇h(t+1) and three matrix terms, one per gate, each keeping the first n rows (the
# h-columns) of W_·ᵀ(...); eqs. (7)–(8) merge into one outer product with [h(t−1); x(t)] per gate.

import sympy as sp

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle

# ## 1. The cell

cell = rs.Cell("gru_original")
n, m, k = cell.dims("n m k")
x, h = cell.input("x", m), cell.state("h", n)
W_r, W_z, W_g = (cell.param(f"W_{s}", n, n + m) for s in "rzg")
b_r, b_z, b_g = (cell.param(f"b_{s}", n) for s in "rzg")
r = cell.define("r", rs.sigmoid(W_r @ rs.concat(h.prev, x) + b_r))
z = cell.define("z", rs.sigmoid(W_z @ rs.concat(h.prev, x) + b_z))
g = cell.define("g", rs.tanh(W_g @ rs.concat(r * h.prev, x) + b_g))  # reset before W_g
cell.update(h, (1 - z) * g + z * h.prev)  # in place of eqs. (2)-(3)
V, b_V = cell.param("V", k, n), cell.param("b_V", k)
out = cell.output("out", V @ h + b_V)  # eq. (4)
cell.loss(rs.squared_error(out, cell.target("y", k)))  # eq. (5)

# It is the built-in `rs.cells.gru_original()`: the two derivations print identically.

assert rs.derive(cell).latex() == rs.derive(rs.cells.gru_original()).latex()

# ## 2. The derivation
#
# In the text form, `W_gᵀ (…)[0:n]` means (W_gᵀ (…))[0:n]: the slice keeps the rows of the
# (n + m)-vector W_gᵀ(…) that belong to h(t−1). The LaTeX form writes the brackets out.

derivation = rs.derive(cell)
print(derivation.pretty())

# As LaTeX:

print(derivation.latex())


def names(expr):
    """The names of the matrix symbols in a derived expression."""
    return {s.name for s in expr.atoms(sp.MatrixSymbol)}


# ## 3. What to look for
#
# **The direct path** is the same as in the PyTorch GRU: z(t+1) ∘ ∇h(t+1), no matrix.

g_h = derivation.state_adjoint("h")
(direct,) = [t for t in g_h.args if names(t) == {"g_h_next", "z_next"}]
assert isinstance(direct, sp.HadamardProduct)
print("direct term of ∇h(t) (eq. (9)):", direct)

# **The reset gate acts after the transposed product.** Since g(t+1) reads r(t+1) ∘ h(t), the
# path through the new gate is r(t+1) ∘ (W_gᵀ((1 − g²) ∘ ∇g(t+1)))[0:n]: r multiplies the
# result of W_gᵀ elementwise. In the PyTorch GRU it is the other way round: r sits inside
# ∇a_h, the vector that W_hhᵀ multiplies.

(through_g,) = [t for t in g_h.args if "W_g" in names(t)]
assert isinstance(through_g, sp.HadamardProduct) and "r_next" in {
    a.name for a in through_g.args if isinstance(a, sp.MatrixSymbol)
}
print("new-gate term of ∇h(t):", through_g)

# The other two gates contribute W_zᵀ(…)[0:n] and W_rᵀ(…)[0:n]: one product per gate, so
# the step's backward pass has three GEMMs with n×(n+m) matrices where the PyTorch layout has
# one with the stacked 3n×n W_hh.

matrix_terms = [t for t in g_h.args if names(t) & {"W_r", "W_z", "W_g"}]
assert len(matrix_terms) == 3

# ## 4. An independent oracle
#
# `sympy.diff` of the cell unrolled into scalars (n = 2, m = 1, k = 1, T = 2), at 60 digits,
# against the matrix-form derivation: about 6 s here.

report = scalar_oracle(cell, sizes={"n": 2, "m": 1, "k": 1}, T=2)
print(report)
assert report.ok

# ## 5. The generated kernel
#
# All gate values depend only on the forward pass and are computed for all t before the loop;
# the loop is eq. (9), with one GEMM per gate, each sliced to the h-rows.

kernel = rs.compile(cell)
backward = kernel.source[kernel.source.index("    # adjoint recurrence") :]
print(backward[: backward.index("    return")])
loop = backward[backward.index("    for t in") : backward.index("    # parameter gradients")]
assert loop.count("@") == 3  # W_g, W_z, W_r

# Central finite differences agree (relative error per parameter):

params, inputs, targets = random_problem(cell, T=6, B=3)
gradients = check_gradients(kernel, params, inputs, targets)
print(gradients)
assert gradients.ok
