# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # The GRU (cuDNN / PyTorch variant): back-propagation through time, derived and checked
#
# The gated recurrent unit of Cho et al. (EMNLP 2014) as `torch.nn.GRU` and cuDNN compute it:
# r = σ(W_ir x + b_ir + W_hr h(t−1) + b_hr), z = σ(W_iz x + b_iz + W_hz h(t−1) + b_hz),
# g = tanh(W_in x + b_in + r ∘ (W_hn h(t−1) + b_hn)), h(t) = (1 − z) ∘ g + z ∘ h(t−1). The
# reset gate multiplies the *product* W_hn h(t−1) + b_hn, not h(t−1) as in Cho et al.
# (`derivations/gru_original.py`); that lets all three h-products be one GEMM with the stacked
# W_hh. The update replaces eqs. (2)–(3), out(t) = V h(t) + b_V is eq. (4), the loss is
# eq. (5). Eq. (9) gains a direct, matrix-free term z(t+1) ∘ ∇h(t+1) beside the
# W_hhᵀ-product, and eqs. (7)–(8) become ∇W_hh and ∇W_ih with two *different* stacked gate
# adjoints, ∇a_h(t) and ∇a_x(t).

import sympy as sp

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle

# ## 1. The cell
#
# The input and hidden products are kept apart, a_x = W_ih x + b_ih and a_h = W_hh h(t−1) +
# b_hh, because the reset gate acts on the third block of a_h only. Gates in PyTorch's order:
# reset, update, new.

cell = rs.Cell("gru")
n, m, k = cell.dims("n m k")
x, h = cell.input("x", m), cell.state("h", n)
W_ih, W_hh = cell.param("W_ih", 3 * n, m), cell.param("W_hh", 3 * n, n)
b_ih, b_hh = cell.param("b_ih", 3 * n), cell.param("b_hh", 3 * n)
a_x = cell.define("a_x", W_ih @ x + b_ih)
a_h = cell.define("a_h", W_hh @ h.prev + b_hh)
r = cell.define("r", rs.sigmoid(a_x[0:n] + a_h[0:n]))
z = cell.define("z", rs.sigmoid(a_x[n : 2 * n] + a_h[n : 2 * n]))
g = cell.define("g", rs.tanh(a_x[2 * n : 3 * n] + r * a_h[2 * n : 3 * n]))  # reset after W_hn
cell.update(h, (1 - z) * g + z * h.prev)  # in place of eqs. (2)-(3)
V, b_V = cell.param("V", k, n), cell.param("b_V", k)
out = cell.output("out", V @ h + b_V)  # eq. (4)
cell.loss(rs.squared_error(out, cell.target("y", k)))  # eq. (5)

# It is the built-in `rs.cells.gru()`: the two derivations print identically.

assert rs.derive(cell).latex() == rs.derive(rs.cells.gru()).latex()

# ## 2. The derivation

derivation = rs.derive(cell)
print(derivation.pretty())

# As LaTeX:

print(derivation.latex())


def names(expr):
    """The names of the matrix symbols in a derived expression."""
    return {s.name for s in expr.atoms(sp.MatrixSymbol)}


# ## 3. What to look for
#
# **The direct path.** h(t+1) = (1 − z) ∘ g + z ∘ h(t) passes h(t) through unchanged but for
# the gate, so ∇h(t) = Vᵀ ∇out(t) + z(t+1) ∘ ∇h(t+1) + W_hhᵀ ∇a_h(t+1): the middle term is
# the GRU's counterpart of the LSTM's carousel (no matrix, no squashing derivative), and the
# last carries all three gates of step t+1 back through one GEMM.

g_h = derivation.state_adjoint("h")
assert names(g_h) == {"V", "g_out", "g_h_next", "z_next", "W_hh", "g_a_h_next"}, names(g_h)
(direct,) = [t for t in g_h.args if isinstance(t, sp.HadamardProduct)]
assert names(direct) == {"g_h_next", "z_next"}
print("direct term of ∇h(t) (eq. (9)):", direct)

# **Where the reset gate sits.** Because r multiplies W_hn h(t−1) + b_hn, it appears in the
# new-gate block of ∇a_h(t) — inside what W_hhᵀ multiplies — and not in that block of
# ∇a_x(t). Hence ∇b_hh = Σ_t ∇a_h(t) and ∇b_ih = Σ_t ∇a_x(t) differ, unlike the LSTM's two
# biases.

new_h = derivation.intermediate_adjoints["a_h"].args[2]
new_x = derivation.intermediate_adjoints["a_x"].args[2]
assert "r" in names(new_h) and "r" not in names(new_x)
assert derivation.param_terms["b_ih"] != derivation.param_terms["b_hh"]

# ## 4. An independent oracle
#
# `sympy.diff` of the cell unrolled into scalars (n = 2, m = 1, k = 1, T = 2), at 60 digits,
# against the matrix-form derivation: about 11 s here; n = 2 keeps the coupling of the units
# through W_hh.

report = scalar_oracle(cell, sizes={"n": 2, "m": 1, "k": 1}, T=2)
print(report)
assert report.ok

# ## 5. The generated kernel
#
# The loop holds eq. (9): the direct term (∇h times z) and one GEMM of the stacked ∇a_h with
# W_hh. ∇W_hh contracts the stored ∇a_h; ∇W_ih recomputes ∇a_x (the same blocks, without r
# in the third) for all t after the loop.

kernel = rs.compile(cell)
backward = kernel.source[kernel.source.index("    # adjoint recurrence") :]
print(backward[: backward.index("    return")])
loop = backward[backward.index("    for t in") : backward.index("    # parameter gradients")]
assert loop.count("@") == 1  # the one GEMM with W_hh

# Central finite differences agree (relative error per parameter):

params, inputs, targets = random_problem(cell, T=6, B=3)
gradients = check_gradients(kernel, params, inputs, targets)
print(gradients)
assert gradients.ok
