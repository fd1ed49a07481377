# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # The minimal gated unit: back-propagation through time, derived and checked
#
# Zhou, Wu, Zhang & Zhou ("Minimal gated unit for recurrent neural networks", IJAC 2016) cut the
# GRU down to one gate f, which does the work of both the reset and the update gate:
# f = σ(W_f [h(t−1); x(t)] + b_f), g = tanh(W_g [f ∘ h(t−1); x(t)] + b_g),
# h(t) = (1 − f) ∘ h(t−1) + f ∘ g. The update replaces eqs. (2)–(3) (each [·; ·]-product is
# eq. (2)'s W h(t−1) + U x(t) with [W U] as one matrix), out(t) = V h(t) + b_V is eq. (4), the
# loss is eq. (5). Eq. (9) gets a direct term (1 − f(t+1)) ∘ ∇h(t+1) and two matrix terms, and
# because f both gates the state and resets it, ∇f(t) collects three terms; eqs. (7)–(8)
# merge into one outer product with the stacked input per weight.

import sympy as sp

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle

# ## 1. The cell

cell = rs.Cell("mgu")
n, m, k = cell.dims("n m k")
x, h = cell.input("x", m), cell.state("h", n)
W_f, W_g = cell.param("W_f", n, n + m), cell.param("W_g", n, n + m)
b_f, b_g = cell.param("b_f", n), cell.param("b_g", n)
f = cell.define("f", rs.sigmoid(W_f @ rs.concat(h.prev, x) + b_f))
g = cell.define("g", rs.tanh(W_g @ rs.concat(f * h.prev, x) + b_g))  # f as the reset gate
cell.update(h, (1 - f) * h.prev + f * g)  # in place of eqs. (2)-(3); f as the update gate
V, b_V = cell.param("V", k, n), cell.param("b_V", k)
out = cell.output("out", V @ h + b_V)  # eq. (4)
cell.loss(rs.squared_error(out, cell.target("y", k)))  # eq. (5)

# It is the built-in `rs.cells.mgu()`: the two derivations print identically.

assert rs.derive(cell).latex() == rs.derive(rs.cells.mgu()).latex()

# ## 2. The derivation
#
# In the text form, `W_gᵀ (…)[0:n]` means (W_gᵀ (…))[0:n], the h-rows of an (n + m)-vector;
# the LaTeX form writes the brackets out.

derivation = rs.derive(cell)
print(derivation.pretty())

# As LaTeX:

print(derivation.latex())


def names(expr):
    """The names of the matrix symbols in a derived expression."""
    return {s.name for s in expr.atoms(sp.MatrixSymbol)}


# ## 3. What to look for
#
# **The direct path**, with the MGU's sign convention: the state is kept where f is small,
# so the matrix-free term of eq. (9) is (1 − f(t+1)) ∘ ∇h(t+1) (the GRU's is z(t+1) ∘ ∇h(t+1)).

g_h = derivation.state_adjoint("h")
(direct,) = [t for t in g_h.args if names(t) == {"g_h_next", "f_next"}]
assert isinstance(direct, sp.HadamardProduct)
assert not names(direct) & {"W_f", "W_g"}
print("direct term of ∇h(t) (eq. (9)):", direct)

# Besides ∇out, the other two terms come through g(t+1) (W_gᵀ, then gated by f(t+1)) and
# through f(t+1) itself (W_fᵀ):

others = [names(t) & {"W_f", "W_g", "V"} for t in g_h.args if t != direct]
assert sorted(map(sorted, others)) == [["V"], ["W_f"], ["W_g"]], others

# **One gate, two jobs.** ∇f(t) has three terms: from h(t) = (1 − f) ∘ h(t−1) + f ∘ g it gets
# ∇h ∘ g − ∇h ∘ h(t−1), and from the reset f ∘ h(t−1) inside g it gets
# (W_gᵀ((1 − g²) ∘ ∇g))[0:n] ∘ h(t−1).

g_f = derivation.intermediate_adjoints["f"]
assert len(g_f.args) == 3
assert sum("W_g" in names(t) for t in g_f.args) == 1

# ## 4. An independent oracle
#
# `sympy.diff` of the cell unrolled into scalars (n = 2, m = 3, k = 1, T = 2), at 60 digits,
# against the matrix-form derivation: about 9 s here. Distinct n and m make the [h; x] slices
# visible: a slice in the wrong place would change shapes.

report = scalar_oracle(cell, sizes={"n": 2, "m": 3, "k": 1}, T=2)
print(report)
assert report.ok

# ## 5. The generated kernel
#
# f and g depend only on the forward pass and are computed for all t before the loop; the
# loop is eq. (9): the direct term (∇h times 1 − f) and two GEMMs, each sliced to the h-rows.

kernel = rs.compile(cell)
backward = kernel.source[kernel.source.index("    # adjoint recurrence") :]
print(backward[: backward.index("    return")])
loop = backward[backward.index("    for t in") : backward.index("    # parameter gradients")]
assert loop.count("@") == 2  # W_g, W_f

# Central finite differences agree (relative error per parameter):

params, inputs, targets = random_problem(cell, T=6, B=3)
gradients = check_gradients(kernel, params, inputs, targets)
print(gradients)
assert gradients.ok
