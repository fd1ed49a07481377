# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # The LSTM with peephole connections: back-propagation through time, derived and checked
#
# Gers & Schmidhuber ("Recurrent nets that time and count", IJCNN 2000) let the gates of the
# LSTM (Hochreiter & Schmidhuber 1997, forget gate: Gers et al. 2000) look at the cell state:
# i = σ(a[0:n] + p_i ∘ c(t−1)), f = σ(a[n:2n] + p_f ∘ c(t−1)) and, after c(t) is updated,
# o = σ(a[3n:4n] + p_o ∘ c(t)), with diagonal (elementwise) peephole weights p_i, p_f, p_o.
# Everything else is `derivations/lstm.py`: c(t) = f ∘ c(t−1) + i ∘ g and h(t) = o ∘ tanh(c(t))
# in place of eqs. (2)–(3), out(t) = V h(t) + b_V for eq. (4), the loss of eq. (5). What
# changes is the c-half of eq. (9): c(t) now also reaches the loss through the gates, so
# ∇c(t) gains a term through o(t) within the step and two through f(t+1) and i(t+1).

import sympy as sp

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle

# ## 1. The cell

cell = rs.Cell("lstm_peephole")
n, m, k = cell.dims("n m k")
x = cell.input("x", m)
h, c = cell.state("h", n), cell.state("c", n)
W_ih, W_hh = cell.param("W_ih", 4 * n, m), cell.param("W_hh", 4 * n, n)
b_ih, b_hh = cell.param("b_ih", 4 * n), cell.param("b_hh", 4 * n)
a = cell.define("a", W_ih @ x + b_ih + W_hh @ h.prev + b_hh)  # four gates stacked
p_i, p_f, p_o = cell.param("p_i", n), cell.param("p_f", n), cell.param("p_o", n)
i = cell.define("i", rs.sigmoid(a[0:n] + p_i * c.prev))  # peeks at c(t-1)
f = cell.define("f", rs.sigmoid(a[n : 2 * n] + p_f * c.prev))  # peeks at c(t-1)
g = cell.define("g", rs.tanh(a[2 * n : 3 * n]))
cell.update(c, f * c.prev + i * g)
o = cell.define("o", rs.sigmoid(a[3 * n : 4 * n] + p_o * c))  # peeks at c(t), just updated
cell.update(h, o * rs.tanh(c))
V, b_V = cell.param("V", k, n), cell.param("b_V", k)
out = cell.output("out", V @ h + b_V)  # eq. (4)
cell.loss(rs.squared_error(out, cell.target("y", k)))  # eq. (5)

# It is the built-in `rs.cells.lstm_peephole()`: the two derivations print identically.

assert rs.derive(cell).latex() == rs.derive(rs.cells.lstm_peephole()).latex()

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
# **The carousel survives, with three new neighbours.** ∇c(t) still holds f(t+1) ∘ ∇c(t+1),
# and now also one term per peephole: through o(t) in the same step (p_o), and through the
# gates of the next step, f(t+1) (p_f) and i(t+1) (p_i), each σ′ times the gate's adjoint.
# Still no matrix acts on anything from step t+1 in ∇c(t): the peepholes are diagonal.

g_c = derivation.state_adjoint("c")
terms = {frozenset(names(t)) for t in g_c.args}
assert frozenset({"g_c_next", "f_next"}) in terms  # the carousel
assert frozenset({"o", "g_o", "p_o"}) in terms  # peephole p_o, within step t
assert frozenset({"f_next", "g_f_next", "p_f"}) in terms  # peephole p_f, from step t+1
assert frozenset({"i_next", "g_i_next", "p_i"}) in terms  # peephole p_i, from step t+1
assert not g_c.atoms(sp.Transpose) and not names(g_c) & {"W_ih", "W_hh", "V"}  # elementwise
print(f"∇c(t) (eq. (9)) has {len(g_c.args)} terms: the carousel, 3 peepholes, h(t)")

# ∇h(t) is the plain LSTM's: the peepholes do not touch h.

assert names(derivation.state_adjoint("h")) == {"V", "g_out", "W_hh", "g_a_next"}

# **The peephole gradients.** ∇p_i and ∇p_f pair their gate's σ′ ∘ ∇gate with c(t−1), ∇p_o
# with c(t): each is what the peephole looked at. (They are diagonal weights, the elementwise
# analogue of eq. (7), not eq. (7) itself: they carry no report label.)

assert "c_prev" in names(derivation.param_terms["p_i"])
assert "c_prev" in names(derivation.param_terms["p_f"])
assert "c" in names(derivation.param_terms["p_o"])
assert "c_prev" not in names(derivation.param_terms["p_o"])

# ## 4. An independent oracle
#
# `sympy.diff` of the cell unrolled into scalars, at 60 digits, against the matrix-form
# derivation. This is the most expensive cell to unroll, so the oracle runs n = 2, m = k = 1
# and T = 2: every peephole and both recurrences are exercised; the finite differences below
# check n = 5, m = 4, k = 3.

report = scalar_oracle(cell, sizes={"n": 2, "m": 1, "k": 1}, T=2)
print(report)
assert report.ok

# ## 5. The generated kernel
#
# carry_c now collects the carousel and the two next-step peephole terms; the stacked gate
# adjoint goes straight into the GEMM with W_hh, and the gate values needed by the parameter
# gradients are recomputed for all t after the loop.

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
