# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # minLSTM: normalised gates, a linear state, derived and run as a scan
#
# The minLSTM of Feng, Tung, Ahmed, Bengio & Hajimirsadeghi ("Were RNNs All We Needed?",
# arXiv:2410.01201, 2024) keeps the LSTM's forget and input gates but lets them read x(t) only,
# drops the output gate and the cell/hidden split, and normalises the two gates to sum to one:
# f = σ(W_f x + b_f), i = σ(W_i x + b_i), h̃ = W_h x + b_h, f′ = f / (f + i),
# i′ = i / (f + i), h(t) = f′ ∘ h(t−1) + i′ ∘ h̃. The update replaces eqs. (2)–(3),
# out(t) = V h(t) + b_V is eq. (4), the loss is eq. (5); eq. (9) becomes
# ∇h(t) = Vᵀ ∇out(t) + f′(t+1) ∘ ∇h(t+1), a scan backwards in t.
#
# A cell term divides only by numbers, so f / (f + i) is written with an exact identity:
# f / (f + i) = 1 / (1 + i / f) = 1 / (1 + exp(log i − log f)) = σ(log f − log i). With
# d = log σ(a_f) − log σ(a_i), f′ = σ(d) and i′ = σ(−d) = 1 − f′. `rs.log(rs.sigmoid(a))` is
# log σ(a) computed as −softplus(−a), finite for every a, so the identity is also the stable
# way to compute the gates (§ 5).

import numpy as np
import sympy as sp

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle

# ## 1. The cell

cell = rs.Cell("min_lstm")
n, m, k = cell.dims("n m k")
x, h = cell.input("x", m), cell.state("h", n)
W_f, W_i, W_h = (cell.param(f"W_{s}", n, m) for s in "fih")
b_f, b_i, b_h = (cell.param(f"b_{s}", n) for s in "fih")
a_f = cell.define("a_f", W_f @ x + b_f)  # the forget gate f = σ(a_f) reads x(t) only
a_i = cell.define("a_i", W_i @ x + b_i)  # the input gate i = σ(a_i) likewise
d = cell.define("d", rs.log(rs.sigmoid(a_f)) - rs.log(rs.sigmoid(a_i)))  # log f − log i
f_prime = cell.define("f_prime", rs.sigmoid(d))  # f / (f + i)
i_prime = cell.define("i_prime", rs.sigmoid(-d))  # i / (f + i)
h_tilde = cell.define("h_tilde", W_h @ x + b_h)
cell.update(h, f_prime * h.prev + i_prime * h_tilde)  # in place of eqs. (2)-(3)
V, b_V = cell.param("V", k, n), cell.param("b_V", k)
out = cell.output("out", V @ h + b_V)  # eq. (4)
cell.loss(rs.squared_error(out, cell.target("y", k)))  # eq. (5)

# It is the built-in `rs.cells.min_lstm()`: the two derivations print identically.

assert rs.derive(cell).latex() == rs.derive(rs.cells.min_lstm()).latex()

# The identity, checked symbolically for scalars (log σ(a) = −log(1 + e^(−a))):

s_f, s_i = sp.symbols("a_f a_i", real=True)
sig = lambda a: 1 / (1 + sp.exp(-a))  # noqa: E731
log_sig = lambda a: -sp.log(1 + sp.exp(-a))  # noqa: E731
gap = sig(s_f) / (sig(s_f) + sig(s_i)) - sig(log_sig(s_f) - log_sig(s_i))
assert sp.simplify(sp.expand_log(gap, force=True)) == 0
print("f / (f + i) = σ(log σ(a_f) − log σ(a_i)): exact")

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

# The coefficient a(t) = f′(t) and the offset b(t) = i′(t) ∘ h̃(t) read x(t) and the parameters
# only: no state enters the gates. So h(t) = a(t) ∘ h(t−1) + b(t) with every a(t), b(t) known
# before the recurrence runs, and h(1..T) is a prefix scan of the pairs (a(t), b(t)) under
# (a₁, b₁) • (a₂, b₂) = (a₂ ∘ a₁, a₂ ∘ b₁ + b₂). The adjoint recurrence
# ∇h(t) = Vᵀ ∇out(t) + f′(t+1) ∘ ∇h(t+1) is the same scan backwards in t; what stays
# sequential in an LSTM (the gates' matrix products with h(t−1)) is gone, so every gate and
# every parameter gradient is computed for all t at once.

linear = derivation.linear_states
assert linear.all_linear and list(linear.linear) == ["h"]
state = linear.linear["h"]
assert names(state.coefficient) == {"W_f", "b_f", "W_i", "b_i", "x"}
assert names(state.offset) == {"W_f", "b_f", "W_i", "b_i", "W_h", "b_h", "x"}

g_h = derivation.state_adjoint("h")
(carried,) = [t for t in g_h.args if "g_h_next" in names(t)]
assert isinstance(carried, sp.HadamardProduct) and names(carried) == {"g_h_next", "f_prime_next"}
print("eq. (9) for minLSTM, the carried term:", carried)

# ## 4. An independent oracle
#
# `sympy.diff` of the cell unrolled into scalars (n = 2, m = 3, k = 1, T = 2), at 60 digits:

report = scalar_oracle(cell, sizes={"n": 2, "m": 3, "k": 1}, T=2)
print(report)
assert report.ok

# ## 5. The generated kernel: a scan

kernel = rs.compile(cell)
print("schedule:", kernel.schedule)
assert kernel.schedule == "scan"
body = kernel.source[kernel.source.index("def _loss_and_grad") :]
assert "_linear_scan(" in body and "_linear_scan_reverse(" in body and "for t in" not in body

# The gates far in the saturated range: with a_f = −800 and a_i = −801, f and i underflow to 0
# in float64 and the paper's f / (f + i) is 0 / 0; the kernel's σ(log σ(a_f) − log σ(a_i)) is
# σ(1) (log σ(a) = a to the last bit there), and the forward pass is the recurrence with the
# constant gates f′ = σ(1), i′ = σ(−1):

with np.errstate(over="ignore", invalid="ignore"):
    f, i = 1 / (1 + np.exp(800.0)), 1 / (1 + np.exp(801.0))
    assert np.isnan(f / (f + i))
params, inputs, targets = random_problem(cell, T=20, B=2, seed=2)
saturated = {**params, "W_f": 0 * params["W_f"], "W_i": 0 * params["W_i"]}
saturated["b_f"] = np.full_like(params["b_f"], -800.0)
saturated["b_i"] = np.full_like(params["b_i"], -801.0)
states = kernel.forward(saturated, inputs)["h"]
expected, h_t = [], np.zeros_like(states[0])
f1 = 1 / (1 + np.exp(-1.0))
for x_t in inputs["x"]:
    h_t = f1 * h_t + (1 - f1) * (x_t @ params["W_h"].T + params["b_h"])
    expected.append(h_t)
# 1e-12: the same recurrence, only the rounding of σ(1) and of its complement differ (ulps)
np.testing.assert_allclose(states, np.array(expected), rtol=1e-12)
loss, grads = kernel.loss_and_grad(saturated, inputs, targets)
assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())
print("saturated gates: finite states, loss and gradients")

# The scan and the sequential loop agree to 1e-10 relative in float64 (the same formulas,
# only the order of the recurrence's products and sums differs), at T = 300, B = 4:

sequential = rs.compile(cell, schedule="sequential")
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
