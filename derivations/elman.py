# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # The Elman RNN: back-propagation through time, derived and checked
#
# This worked derivation reproduces §1 of the report (after Goodfellow, Bengio & Courville, *Deep
# Learning*, 2016, ch. 10): the Elman RNN of eqs. (2)–(5) and its gradients, eqs. (6)–(9). It runs
# as a script (`python derivations/elman.py`) and is executed by the test suite, so every claim
# below is checked each time the tests run.

import sympy as sp

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle

# ## 1. The cell
#
# One step: a(t) = b + W h(t−1) + U x(t) (2), h(t) = tanh(a(t)) (3), o(t) = c + V h(t) (4),
# and the per-step loss L(t) = ½‖o(t) − y(t)‖² (5), summed over t.

cell = rs.Cell("elman")
n, m, k = cell.dims("n m k")
x = cell.input("x", m)
h = cell.state("h", n)
W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
V, c = cell.param("V", k, n), cell.param("c", k)
cell.update(h, rs.tanh(b + W @ h.prev + U @ x))  # eqs. (2)-(3)
o = cell.output("o", c + V @ h)  # eq. (4)
cell.loss(rs.squared_error(o, cell.target("y", k)))  # eq. (5)

# ## 2. The derivation
#
# `rs.derive` runs reverse mode over one step, once, with symbolic sizes. The result is the
# backward recurrence of the state adjoint (eq. (9)) and, for each parameter, the term summed
# over t (eqs. (6)–(8)).

derivation = rs.derive(cell)
print(derivation.pretty())

# As LaTeX, ready for a paper:

print(derivation.latex())

# ## 3. The report's equations, written by hand, agree exactly
#
# Eq. (9): ∇_{h(t)}L = Vᵀ(o(t) − y(t)) + Wᵀ diag(1 − h(t+1)²) ∇_{h(t+1)}L. We write it with
# SymPy matrices at concrete sizes and compare entry by entry with the derived form.

sizes = {n: 3, m: 2, k: 2}
N, K = 3, 2
Wm, Vm = sp.Matrix(sp.MatrixSymbol("W", N, N)), sp.Matrix(sp.MatrixSymbol("V", K, N))
om, ym = sp.Matrix(sp.MatrixSymbol("o", K, 1)), sp.Matrix(sp.MatrixSymbol("y", K, 1))
h_next = sp.Matrix(sp.MatrixSymbol("h_next", N, 1))
g_next = sp.Matrix(sp.MatrixSymbol("g_h_next", N, 1))
eq9 = Vm.T * (om - ym) + Wm.T * sp.diag(*[1 - h_next[i] ** 2 for i in range(N)]) * g_next

g_o = rs.derive(cell).adjoint("o")
derived9 = derivation.state_adjoint("h").xreplace({g_o: derivation.output_adjoints["o"]})
difference = (sp.Matrix(derived9.xreplace(sizes).as_explicit()) - eq9).applyfunc(sp.expand)
assert difference == sp.zeros(N, 1)
print("eq. (9) reproduced exactly")

# ## 4. An independent oracle
#
# The cell unrolled for n = 2, T = 3 into scalar SymPy expressions, differentiated by
# `sympy.diff`, evaluated with 60-digit mpmath at a random rational point, against the
# matrix-form derivation evaluated at the same point:

report = scalar_oracle(cell, sizes={"n": 2, "m": 2, "k": 2}, T=3)
print(report)
assert report.ok

# ## 5. The generated kernel
#
# `rs.compile` prints the derivation as NumPy. Only the adjoint recurrence (eq. (9)) is a loop;
# each parameter gradient is one contraction over time and batch.

kernel = rs.compile(cell)
backward = kernel.source[kernel.source.index("    # adjoint recurrence") :]
print(backward[: backward.index("    return")])

# Central finite differences agree (relative error per parameter):

params, inputs, targets = random_problem(cell, T=6, B=3)
gradients = check_gradients(kernel, params, inputs, targets)
print(gradients)
assert gradients.ok
