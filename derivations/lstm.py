# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # The LSTM: back-propagation through time, derived and checked
#
# The long short-term memory of Hochreiter & Schmidhuber (1997), with the forget gate of
# Gers, Schmidhuber & Cummins (2000), in `torch.nn.LSTM`'s layout: one stacked pre-activation
# a(t) = W_ih x(t) + b_ih + W_hh h(t−1) + b_hh, gates i = σ(a[0:n]), f = σ(a[n:2n]),
# g = tanh(a[2n:3n]), o = σ(a[3n:4n]), and two states, c(t) = f ∘ c(t−1) + i ∘ g and
# h(t) = o ∘ tanh(c(t)). These two updates replace the report's eqs. (2)–(3) (a(t) is eq. (2)
# with the four gates stacked); the output out(t) = V h(t) + b_V is eq. (4) (named `out`
# because o is the output gate) and the loss is eq. (5). Eq. (9) becomes a pair of coupled
# recurrences, one for ∇h(t) and one for ∇c(t), and eqs. (7)–(8) become ∇W_hh and ∇W_ih with
# the stacked gate adjoint ∇a(t) in place of diag(1 − h(t)²) ∇h(t).

import sympy as sp

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle

# ## 1. The cell
#
# `cell.define` names the gates, so the derivation shows ∇i(t), ∇f(t), ... by name. The
# output gate o is defined after c(t) is updated, as in the built-in (the peephole variant
# needs c(t) there); the order only changes the order in which equations are printed.

cell = rs.Cell("lstm")
n, m, k = cell.dims("n m k")
x = cell.input("x", m)
h, c = cell.state("h", n), cell.state("c", n)
W_ih, W_hh = cell.param("W_ih", 4 * n, m), cell.param("W_hh", 4 * n, n)
b_ih, b_hh = cell.param("b_ih", 4 * n), cell.param("b_hh", 4 * n)
a = cell.define("a", W_ih @ x + b_ih + W_hh @ h.prev + b_hh)  # four gates stacked
i = cell.define("i", rs.sigmoid(a[0:n]))
f = cell.define("f", rs.sigmoid(a[n : 2 * n]))
g = cell.define("g", rs.tanh(a[2 * n : 3 * n]))
cell.update(c, f * c.prev + i * g)  # the cell state
o = cell.define("o", rs.sigmoid(a[3 * n : 4 * n]))
cell.update(h, o * rs.tanh(c))  # uses c(t), updated earlier in the step
V, b_V = cell.param("V", k, n), cell.param("b_V", k)
out = cell.output("out", V @ h + b_V)  # eq. (4)
cell.loss(rs.squared_error(out, cell.target("y", k)))  # eq. (5)

# It is the built-in `rs.cells.lstm()`: the two derivations print identically.

assert rs.derive(cell).latex() == rs.derive(rs.cells.lstm()).latex()

# ## 2. The derivation
#
# Read it from the loss down: ∇out(t), then ∇h(t) and ∇c(t) (the two halves of eq. (9)),
# then the gate adjoints, which stack into ∇a(t); ∇W_ih and ∇W_hh are sums over t of ∇a(t)
# times the step's x(t)ᵀ or h(t−1)ᵀ.

derivation = rs.derive(cell)
print(derivation.pretty())

# As LaTeX:

print(derivation.latex())


def names(expr):
    """The names of the matrix symbols in a derived expression."""
    return {s.name for s in expr.atoms(sp.MatrixSymbol)}


# ## 3. What to look for
#
# **The constant error carousel.** ∇c(t) = (1 − tanh²c(t)) ∘ o(t) ∘ ∇h(t) + f(t+1) ∘ ∇c(t+1).
# The only path from step t+1 back to c(t) is the second term: an elementwise product with the
# forget gate, no matrix and no squashing derivative. With f ≈ 1 the error flows back through
# the cell state unchanged — Hochreiter & Schmidhuber's carousel, which Gers et al.'s forget
# gate lets the network open and close.

g_c = derivation.state_adjoint("c")
from_next = [t for t in g_c.args if any(s.endswith("_next") for s in names(t))]
assert len(from_next) == 1, from_next
(carousel,) = from_next
assert isinstance(carousel, sp.HadamardProduct) and names(carousel) == {"g_c_next", "f_next"}
print("constant error carousel in ∇c(t) (eq. (9)):", carousel)

# **∇h(t) reaches step t+1 only through W_hhᵀ ∇a(t+1).** All four gates of step t+1 read
# h(t) through the one matrix W_hh, so eq. (9)'s Wᵀ diag(1 − h²) ∇h(t+1) becomes one product
# with the stacked gate adjoint:

g_h = derivation.state_adjoint("h")
assert names(g_h) == {"V", "g_out", "W_hh", "g_a_next"}, names(g_h)

# **The two biases get the same gradient.** PyTorch's b_ih and b_hh only ever appear as a sum,
# so ∇b_ih = ∇b_hh = Σ_t ∇a(t) (the kernel computes it once and copies it). ∇W_hh and ∇W_ih
# play the roles of the report's eqs. (7) and (8) but are not those equations (the gates'
# derivatives replace diag(1 − h²)), so only out(t) (eq. (4)), the loss (eq. (5)) and ∇V
# (eq. (6)) carry report labels.

assert derivation.param_terms["b_ih"] == derivation.param_terms["b_hh"]
assert derivation.labels["W_hh"] == "" and derivation.labels["W_ih"] == ""
assert [k for k, v in derivation.labels.items() if v] == ["out", "L", "V"]

# ## 4. An independent oracle
#
# `sympy.diff` of the cell unrolled into scalars, at 60 digits, against the matrix-form
# derivation. The unrolled LSTM loss swells quickly with T (T = 3 takes minutes), so this
# runs n = 2, m = 3, k = 1 and T = 2, a few seconds. The finite differences below cover n = 5.

report = scalar_oracle(cell, sizes={"n": 2, "m": 3, "k": 1}, T=2)
print(report)
assert report.ok

# ## 5. The generated kernel
#
# The loop carries two adjoints: carry_c (the carousel, an elementwise product with f) and
# carry_h (the loop's one GEMM, with W_hh). The stacked gate adjoint is stored for all t, and
# each weight gradient is then one contraction over time and batch.

kernel = rs.compile(cell)
backward = kernel.source[kernel.source.index("    # adjoint recurrence") :]
print(backward[: backward.index("    return")])
loop = backward[backward.index("    for t in") : backward.index("    # parameter gradients")]
assert loop.count("@") == 1 and "carry_c" in loop

# Central finite differences agree (relative error per parameter):

params, inputs, targets = random_problem(cell, T=6, B=3)
gradients = check_gradients(kernel, params, inputs, targets)
print(gradients)
assert gradients.ok
