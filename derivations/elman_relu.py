# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # The Elman RNN with ReLU: back-propagation through time, derived and checked
#
# The report's Elman RNN (eqs. (2)–(5)) with tanh in eq. (3)
# replaced by the rectifier, h(t) = relu(b + W h(t−1) + U x(t)), as
# `torch.nn.RNN(nonlinearity="relu")` computes it (ReLU recurrent nets: Le, Jaitly & Hinton,
# 2015). The output (4) and loss (5) are the report's. Only one thing changes in the gradients
# (6)–(9): the factor diag(1 − h(t)²), tanh′ written with the forward value, becomes
# diag(step(a(t))), the Heaviside step of the pre-activation (2), so eq. (9) reads
# ∇h(t) = Vᵀ(o(t) − y(t)) + Wᵀ diag(step(a(t+1))) ∇h(t+1).

import sympy as sp

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle

# ## 1. The cell
#
# Written with the public API, exactly as the report's cell but for the activation:

cell = rs.Cell("elman_relu")
n, m, k = cell.dims("n m k")
x, h = cell.input("x", m), cell.state("h", n)
W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
V, c = cell.param("V", k, n), cell.param("c", k)
cell.update(h, rs.relu(b + W @ h.prev + U @ x))  # eqs. (2)-(3) with ReLU for tanh
o = cell.output("o", c + V @ h)  # eq. (4)
cell.loss(rs.squared_error(o, cell.target("y", k)))  # eq. (5)

# It is the built-in `rs.cells.elman_relu()`: the two derivations print identically.

assert rs.derive(cell).latex() == rs.derive(rs.cells.elman_relu()).latex()

# ## 2. The derivation
#
# One reverse-mode pass over one step, with symbolic sizes: the recurrence of ∇h(t) (eq. (9))
# and the per-step terms of eqs. (6)–(8).

derivation = rs.derive(cell)
print(derivation.pretty())

# As LaTeX:

print(derivation.latex())

# What to look for: tanh′ is written with the forward value (1 − h∘h), but relu′ is written as
# the step of its argument, so ∇h(t) holds the pre-activation of step t+1,
# a(t+1) = b + W h(t) + U x(t+1), and x(t+1) appears in it. a(t+1) is positive exactly where
# h(t+1) is, so step(a(t+1)) is the usual ReLU mask; nothing else in eq. (9) changes.

g_h = derivation.state_adjoint("h")
names = {s.name for s in g_h.free_symbols if isinstance(s, sp.MatrixSymbol)}
assert names == {"V", "g_o", "W", "U", "b", "h", "x_next", "g_h_next"}, names

# ## 3. Eq. (9) with the ReLU mask, written by hand, agrees exactly
#
# ∇h(t) = Vᵀ(o(t) − y(t)) + Wᵀ diag(step(b + W h(t) + U x(t+1))) ∇h(t+1), with SymPy matrices
# at n = 3, m = 2, k = 2, compared entry by entry with the derived form. SymPy's `Heaviside`
# is the step; its value at exactly 0 (½ in SymPy, 0 in the kernel) is where relu has no
# derivative.

sizes = {n: 3, m: 2, k: 2}
N, M, K = 3, 2, 2
Wm, Um = sp.Matrix(sp.MatrixSymbol("W", N, N)), sp.Matrix(sp.MatrixSymbol("U", N, M))
bm, Vm = sp.Matrix(sp.MatrixSymbol("b", N, 1)), sp.Matrix(sp.MatrixSymbol("V", K, N))
om, ym = sp.Matrix(sp.MatrixSymbol("o", K, 1)), sp.Matrix(sp.MatrixSymbol("y", K, 1))
h_t, x_next = sp.Matrix(sp.MatrixSymbol("h", N, 1)), sp.Matrix(sp.MatrixSymbol("x_next", M, 1))
g_next = sp.Matrix(sp.MatrixSymbol("g_h_next", N, 1))
a_next = bm + Wm * h_t + Um * x_next  # eq. (2) at step t+1
eq9 = Vm.T * (om - ym) + Wm.T * sp.diag(*[sp.Heaviside(a_next[i]) for i in range(N)]) * g_next

g_o = derivation.adjoint("o")
derived9 = g_h.xreplace({g_o: derivation.output_adjoints["o"]})
difference = (sp.Matrix(derived9.xreplace(sizes).as_explicit()) - eq9).applyfunc(sp.expand)
assert difference == sp.zeros(N, 1)
print("eq. (9) with the ReLU mask reproduced exactly")

# ## 4. An independent oracle
#
# The cell unrolled into scalars (n = 3, m = 2, k = 2, T = 3), differentiated by `sympy.diff`
# (which differentiates Max(0, a) to Heaviside(a)), evaluated with 60-digit mpmath at a random
# rational point, against the matrix-form derivation at the same point. The cell is as cheap
# as the report's, so it gets the report's sizes and T = 3.

report = scalar_oracle(cell, sizes={"n": 3, "m": 2, "k": 2}, T=3)
print(report)
assert report.ok

# ## 5. The generated kernel
#
# The ReLU mask step(a(t)) depends only on the forward pass, so it is computed for all t
# before the loop; the loop itself is eq. (9): one Hadamard product and one GEMM with W.

kernel = rs.compile(cell)
backward = kernel.source[kernel.source.index("    # adjoint recurrence") :]
print(backward[: backward.index("    return")])
loop = backward[backward.index("    for t in") : backward.index("    # parameter gradients")]
assert loop.count("@") == 1  # the GEMM with W of eq. (9)
assert "_step(" in backward[: backward.index("    for t in")] and "_step(" not in loop

# Central finite differences agree (relative error per parameter):

params, inputs, targets = random_problem(cell, T=6, B=3)
gradients = check_gradients(kernel, params, inputs, targets)
print(gradients)
assert gradients.ok
