# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # IndRNN: an elementwise recurrence, derived and checked
#
# The independently recurrent network of Li, Li, Cook, Zhu & Gao (CVPR 2018) replaces the
# recurrent matrix W of the report's eq. (2) by a vector u acting elementwise:
# h(t) = relu(W x(t) + u ∘ h(t−1) + b), so each unit sees only its own past. Here W is the
# *input* matrix (the report's U) and the output is out(t) = V h(t) + b_V, the report's eq. (4)
# with c renamed b_V; the loss is eq. (5). Eq. (9) loses its matrix product: with the ReLU
# mask of eq. (3), ∇h(t) = Vᵀ ∇out(t) + u ∘ step(a(t+1)) ∘ ∇h(t+1), so over k steps the
# adjoint of unit j is scaled by the product of u_j ∘ step(·), which is what lets IndRNN bound
# vanishing and exploding gradients by bounding |u_j|. Eq. (8) gives ∇W, and ∇u, the
# recurrent weight, is the elementwise version of eq. (7).

import sympy as sp

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle

# ## 1. The cell

cell = rs.Cell("indrnn")
n, m, k = cell.dims("n m k")
x, h = cell.input("x", m), cell.state("h", n)
W, u, b = cell.param("W", n, m), cell.param("u", n), cell.param("b", n)
cell.update(h, rs.relu(W @ x + u * h.prev + b))  # in place of eqs. (2)-(3): elementwise
V, b_V = cell.param("V", k, n), cell.param("b_V", k)
out = cell.output("out", V @ h + b_V)  # eq. (4)
cell.loss(rs.squared_error(out, cell.target("y", k)))  # eq. (5)

# It is the built-in `rs.cells.indrnn()`: the two derivations print identically.

assert rs.derive(cell).latex() == rs.derive(rs.cells.indrnn()).latex()

# ## 2. The derivation

derivation = rs.derive(cell)
print(derivation.pretty())

# As LaTeX:

print(derivation.latex())

# A word on the labels: a line carries a report number only when it is that equation, so here
# only out(t) = V h(t) + b_V (eq. (4)), the loss (eq. (5)) and ∇V (eq. (6)) do. ∇u is the
# recurrent weight's gradient, and its term step(a(t)) ∘ ∇h(t) ∘ h(t−1) is the diagonal of
# the Elman cell's diag(1 − h(t)²) ∇h(t) h(t−1)ᵀ (eq. (7)) with the ReLU mask for tanh′: an
# analogue, not eq. (7), so it has no report label.

assert [k for k, v in derivation.labels.items() if v] == ["out", "L", "V"]

g_u_names = {s.name for s in derivation.param_terms["u"].atoms(sp.MatrixSymbol)}
assert {"g_h", "h_prev"} <= g_u_names, g_u_names

# ## 3. The recurrence is elementwise
#
# In the Elman cell the next-step adjoint reaches ∇h(t) through Wᵀ, an (n, n) matrix. Here no
# (n, n) matrix appears in ∇h(t) at all, and ∇h(t+1) occurs only inside a Hadamard product,
# with u and the ReLU mask of step t+1: the Jacobian ∂h(t+1)/∂h(t) is diagonal.

g_h = derivation.state_adjoint("h")
g_h_next = [s for s in g_h.free_symbols if getattr(s, "name", "") == "g_h_next"][0]
square = [s for s in g_h.atoms(sp.MatrixSymbol) if s.shape == (n, n)]
assert not square, square
assert not any(g_h_next in t.free_symbols for t in g_h.atoms(sp.MatMul, sp.Transpose))
(through_next,) = [t for t in g_h.args if g_h_next in t.free_symbols]
assert isinstance(through_next, sp.HadamardProduct)
assert {a.name for a in through_next.args if isinstance(a, sp.MatrixSymbol)} == {"g_h_next", "u"}
print("eq. (9) for IndRNN is elementwise:", through_next)

# Written by hand at n = 3, m = 2, k = 2 — ∇h(t) = Vᵀ(out(t) − y(t)) + u ∘ step(W x(t+1) +
# u ∘ h(t) + b) ∘ ∇h(t+1) — it agrees entry by entry. Every entry i involves unit i only,
# apart from the output term Vᵀ(out − y).

sizes = {n: 3, m: 2, k: 2}
N, M, K = 3, 2, 2
Wm, Vm = sp.Matrix(sp.MatrixSymbol("W", N, M)), sp.Matrix(sp.MatrixSymbol("V", K, N))
um, bm = sp.Matrix(sp.MatrixSymbol("u", N, 1)), sp.Matrix(sp.MatrixSymbol("b", N, 1))
outm, ym = sp.Matrix(sp.MatrixSymbol("out", K, 1)), sp.Matrix(sp.MatrixSymbol("y", K, 1))
h_t, x_next = sp.Matrix(sp.MatrixSymbol("h", N, 1)), sp.Matrix(sp.MatrixSymbol("x_next", M, 1))
g_next = sp.Matrix(sp.MatrixSymbol("g_h_next", N, 1))
a_next = Wm * x_next + um.multiply_elementwise(h_t) + bm
by_hand = Vm.T * (outm - ym) + sp.Matrix(
    N, 1, lambda i, _: um[i] * sp.Heaviside(a_next[i]) * g_next[i]
)
g_out = derivation.adjoint("out")
derived = g_h.xreplace({g_out: derivation.output_adjoints["out"]})
difference = (sp.Matrix(derived.xreplace(sizes).as_explicit()) - by_hand).applyfunc(sp.expand)
assert difference == sp.zeros(N, 1)
print("IndRNN's eq. (9) reproduced exactly")

# ## 4. An independent oracle
#
# `sympy.diff` of the cell unrolled into scalars (n = 3, m = 2, k = 2, T = 3), at 60 digits,
# against the matrix-form derivation. The cell is cheap, so it gets the report's T = 3.

report = scalar_oracle(cell, sizes={"n": 3, "m": 2, "k": 2}, T=3)
print(report)
assert report.ok

# ## 5. The generated kernel
#
# The loop body is one line of elementwise products: no GEMM is left in the sequential part.
# ∇W and ∇b_V are contractions after the loop; ∇u is a sum over t and the batch of
# mask ∘ ∇h(t) ∘ h(t−1).

kernel = rs.compile(cell)
backward = kernel.source[kernel.source.index("    # adjoint recurrence") :]
print(backward[: backward.index("    return")])
loop = backward[backward.index("    for t in") : backward.index("    # parameter gradients")]
assert "@" not in loop

# Central finite differences agree (relative error per parameter):

params, inputs, targets = random_problem(cell, T=6, B=3)
gradients = check_gradients(kernel, params, inputs, targets)
print(gradients)
assert gradients.ok
