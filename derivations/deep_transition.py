# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # A deep RNN with deeper blocks (Fig. 10): back-propagation through time, derived and checked
#
# The report's second way to make an RNN deep (its §4, Fig. 10): keep one
# recurrent state, but make each of the three blocks of the Elman cell — input→hidden (U in
# eq. (2)), hidden→hidden (W in eq. (2)) and hidden→output (V in eq. (4)) — a small multi-layer
# network instead of one affine map. With one hidden layer of p units in each block:
#
#     a(t) = tanh(A x(t) + a_b)                  input → hidden, first layer
#     r(t) = tanh(W h(t−1) + r_b)                hidden → hidden, first layer
#     h(t) = tanh(P r(t) + Q a(t) + b)           both blocks' last layer: eqs. (2)-(3)
#     z(t) = tanh(Z h(t) + z_b)                  hidden → output, first layer
#     o(t) = c + V z(t)                          eq. (4);  L(t) = ½‖o(t) − y(t)‖², eq. (5)
#
# The Elman cell is the special case without a, r, z. What changes in the gradients: eq. (9)'s
# local term goes through the output MLP, Vᵀ → Zᵀ diag(1 − z²) Vᵀ, and its term from step t+1
# goes through the transition MLP, Wᵀ diag(1 − h(t+1)²) → Wᵀ diag(1 − r(t+1)²) Pᵀ diag(1 −
# h(t+1)²): two squashing derivatives per time step instead of one, so the path between
# h(t) and h(t+τ) is twice as deep — the price of the deeper transition.

import numpy as np
import sympy as sp

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle

# ## 1. The cell
#
# The hidden layers of the three MLPs are named with `cell.define`, so the derivation shows
# a(t), r(t), z(t) and their adjoints by name; the kernel is the same as with the expressions
# written out.

cell = rs.Cell("deep_transition")
n, m, k, p = cell.dims("n m k p")
x, h = cell.input("x", m), cell.state("h", n)
A, a_b = cell.param("A", p, m), cell.param("a_b", p)
W, r_b = cell.param("W", p, n), cell.param("r_b", p)
P, Q, b = cell.param("P", n, p), cell.param("Q", n, p), cell.param("b", n)
Z, z_b = cell.param("Z", p, n), cell.param("z_b", p)
V, c = cell.param("V", k, p), cell.param("c", k)
a = cell.define("a", rs.tanh(A @ x + a_b))  # input -> hidden MLP, hidden layer
r = cell.define("r", rs.tanh(W @ h.prev + r_b))  # hidden -> hidden MLP, hidden layer
cell.update(h, rs.tanh(P @ r + Q @ a + b))  # the MLPs' last layer, for eqs. (2)-(3)
z = cell.define("z", rs.tanh(Z @ h + z_b))  # hidden -> output MLP, hidden layer
o = cell.output("o", c + V @ z)  # eq. (4)
cell.loss(rs.squared_error(o, cell.target("y", k)))  # eq. (5)

# It is the built-in `rs.cells.get("deep_transition")`: the derivations print identically.

assert rs.derive(cell).latex() == rs.derive(rs.cells.get("deep_transition")).latex()

# ## 2. The derivation

derivation = rs.derive(cell)
print(derivation.pretty())

# As LaTeX:

print(derivation.latex())


def names(expr):
    """The names of the matrix symbols in a derived expression."""
    return {s.name for s in expr.atoms(sp.MatrixSymbol)}


# ## 3. Eq. (9) through the deeper blocks
#
# The derivation keeps the named intermediates: ∇h(t) = Zᵀ diag(1 − z(t)²) ∇z(t) + Wᵀ
# diag(1 − r(t+1)²) ∇r(t+1), with ∇z(t) = Vᵀ ∇o(t) and ∇r(t+1) = Pᵀ diag(1 − h(t+1)²) ∇h(t+1).
# Substituting those two adjoints gives eq. (9) of the deep-transition RNN, which we write by
# hand at concrete sizes and compare entry by entry:
#
#     ∇h(t) = Zᵀ diag(1 − z(t)²) Vᵀ (o(t) − y(t))
#             + Wᵀ diag(1 − r(t+1)²) Pᵀ diag(1 − h(t+1)²) ∇h(t+1)

g_h = derivation.state_adjoint("h")
assert names(derivation.state_local["h"][0]) == {"Z", "z", "g_z"}
assert names(derivation.carry["h"]) == {"W", "r", "g_r"}

g_z, g_r_next, g_o = (
    derivation.adjoint("z"),
    sp.MatrixSymbol("g_r_next", p, 1),
    derivation.adjoint("o"),
)
expanded = g_h.xreplace(
    {
        g_z: derivation.intermediate_adjoints["z"],  # Vᵀ ∇o(t)
        g_r_next: derivation.shift_forward(derivation.intermediate_adjoints["r"]),
    }
).xreplace({g_o: derivation.output_adjoints["o"]})

N, M, K, Pn = 3, 2, 2, 4
Zm, Vm = sp.Matrix(sp.MatrixSymbol("Z", Pn, N)), sp.Matrix(sp.MatrixSymbol("V", K, Pn))
Wm, Pm = sp.Matrix(sp.MatrixSymbol("W", Pn, N)), sp.Matrix(sp.MatrixSymbol("P", N, Pn))
om, ym = sp.Matrix(sp.MatrixSymbol("o", K, 1)), sp.Matrix(sp.MatrixSymbol("y", K, 1))
zm = sp.Matrix(sp.MatrixSymbol("z", Pn, 1))
r_next, h_next = (
    sp.Matrix(sp.MatrixSymbol("r_next", Pn, 1)),
    sp.Matrix(sp.MatrixSymbol("h_next", N, 1)),
)
g_h_next = sp.Matrix(sp.MatrixSymbol("g_h_next", N, 1))


def dtanh(v):
    """diag(1 − v²) for a column v = tanh(·)."""
    return sp.diag(*[1 - v[i] ** 2 for i in range(v.rows)])


eq9 = Zm.T * dtanh(zm) * Vm.T * (om - ym) + Wm.T * dtanh(r_next) * Pm.T * dtanh(h_next) * g_h_next
concrete = expanded.xreplace({n: N, m: M, k: K, p: Pn}).as_explicit()
assert (sp.Matrix(concrete) - eq9).applyfunc(sp.expand) == sp.zeros(N, 1)
print("eq. (9) through the deeper blocks reproduced exactly:")
print("  ∇h(t) = Zᵀ diag(1 − z²) Vᵀ (o − y) + Wᵀ diag(1 − r(t+1)²) Pᵀ diag(1 − h(t+1)²) ∇h(t+1)")

# The gradients of eqs. (6)–(8) now have one analogue per layer of each block: ∇W pairs the
# hidden layer's adjoint with h(t−1) (as eq. (7) does), ∇A with x(t) (as eq. (8)), ∇V with
# z(t). Only ∇V = Σ_t ∇o(t) z(t)ᵀ is the report's equation itself (eq. (6), for
# o(t) = c + V z(t), eq. (4) with z for h); ∇W and ∇A go through the MLPs, so they carry no
# report label:

assert derivation.labels["W"] == "" and derivation.labels["A"] == ""
assert derivation.labels["V"] == "eq. (6)" and derivation.labels["o"] == "eq. (4)"
assert derivation.param_terms["W"].args[-1] == h.prev.symbol.T

# ## 4. An independent oracle
#
# `sympy.diff` of the unrolled scalar loss, 60 digits. The three MLPs make the unrolled loss
# swell quickly (m = 3, p = 3, T = 3 takes about two minutes), so: every size 2, T = 2, which
# keeps every matrix a full matrix and exercises the carry through the transition MLP.

report = scalar_oracle(cell, sizes={"m": 2, "n": 2, "p": 2, "k": 2}, T=2)
print(report)
assert report.ok

# ## 5. The generated kernel
#
# The loop holds eq. (9); the input MLP (a(t)) depends on no state and is computed for all t
# before it, and the output MLP's term Zᵀ diag(1 − z²) Vᵀ ∇o(t) likewise.

kernel = rs.compile(cell)
backward = kernel.source[kernel.source.index("    # adjoint recurrence") :]
print(backward[: backward.index("    # parameter gradients")])
loop = backward[backward.index("    for t in") : backward.index("    # parameter gradients")]
assert "@ A" not in loop and "A.T" not in loop  # nothing of the input MLP inside the loop

sizes = {"m": 3, "n": 5, "p": 4, "k": 2}
params, inputs, targets = random_problem(cell, sizes, T=6, B=3)
gradients = check_gradients(kernel, params, inputs, targets)
print(gradients)
assert gradients.ok

# ## 6. The report's equations in plain NumPy
#
# The forward pass through the three MLPs, the loss (5), and ∇W (the first layer of the
# transition MLP) and ∇A (of the input MLP) by the hand-written backward recurrence above.
# Both sides are float64 doing the same arithmetic grouped differently (per-step products
# here, one contraction over T·B in the kernel): they agree to rounding, ≈ 1e-15 relative;
# the stated tolerance is 1e-12.


def reference(p, x, y):
    """Forward pass, loss, ∇W and ∇A of the deep-transition RNN."""
    T, B = x.shape[:2]
    h = np.zeros((T + 1, B, p["b"].shape[0]))  # h[0] = h(0) = 0
    a = np.tanh(x @ p["A"].T + p["a_b"])  # input MLP: no recurrence, all t at once
    r, z = np.zeros((T, B, p["r_b"].shape[0])), np.zeros((T, B, p["z_b"].shape[0]))
    for t in range(1, T + 1):
        r[t - 1] = np.tanh(h[t - 1] @ p["W"].T + p["r_b"])
        h[t] = np.tanh(r[t - 1] @ p["P"].T + a[t - 1] @ p["Q"].T + p["b"])
        z[t - 1] = np.tanh(h[t] @ p["Z"].T + p["z_b"])
    o = p["c"] + z @ p["V"].T  # eq. (4)
    loss = 0.5 * np.sum((o - y) ** 2)  # eq. (5)
    g_W, g_A = np.zeros_like(p["W"]), np.zeros_like(p["A"])
    carry = np.zeros_like(h[0])
    for t in range(T, 0, -1):
        s = t - 1
        g_h = ((1 - z[s] ** 2) * ((o[s] - y[s]) @ p["V"])) @ p["Z"] + carry  # eq. (9)
        d_h = (1 - h[t] ** 2) * g_h
        d_r = (1 - r[s] ** 2) * (d_h @ p["P"])  # through the transition MLP
        d_a = (1 - a[s] ** 2) * (d_h @ p["Q"])  # through the input MLP
        carry = d_r @ p["W"]  # Wᵀ diag(1 − r(t)²) Pᵀ diag(1 − h(t)²) ∇h(t), to step t − 1
        g_W += d_r.T @ h[t - 1]  # eq. (7)
        g_A += d_a.T @ x[s]  # eq. (8)
    return h[1:], o, loss, g_W, g_A


h_ref, o_ref, loss_ref, g_W_ref, g_A_ref = reference(params, inputs["x"], targets["y"])
forward = kernel.forward(params, inputs)
loss, grads = kernel.loss_and_grad(params, inputs, targets)
assert np.allclose(forward["h"], h_ref, rtol=1e-12, atol=1e-14)
assert np.allclose(forward["o"], o_ref, rtol=1e-12, atol=1e-14)
assert np.isclose(loss, loss_ref, rtol=1e-12)
assert np.allclose(grads["W"], g_W_ref, rtol=1e-12, atol=1e-14)
assert np.allclose(grads["A"], g_A_ref, rtol=1e-12, atol=1e-14)
print("forward, loss, ∇W and ∇A agree with the hand-written deep-transition BPTT")

# ## 7. The unrolled graph
#
# DOT text (render with Graphviz's `dot`; not needed here). h(t−1) reaches h(t) only through
# r(t): the recurrence of Fig. 10 passes two layers per step.

dot = rs.unroll(cell, 3).to_dot()
edges = [line.strip() for line in dot.splitlines() if "->" in line and "invis" not in line]
print("\n".join(e for e in edges if e.split(" -> ")[1].split(" [")[0].rstrip(";").endswith('_2"')))
assert any(e.startswith('"h_1" -> "r_2" [label="W"]') for e in edges)
assert any(e.startswith('"r_2" -> "h_2" [label="P"]') for e in edges)
assert not any(e.startswith('"h_1" -> "h_2"') for e in edges)
