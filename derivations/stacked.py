# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # A deep RNN with more hidden layers (Fig. 9): three stacked layers, derived and checked
#
# The report's first way to make an RNN deep (its §4, Fig. 9): recurrent layers
# stacked so that layer ℓ's state sequence is layer ℓ+1's input sequence. Here three layers,
# written as ordinary user cells and merged by `rs.stack`:
#
# 1. an Elman layer, h_1(t) = tanh(b_1 + W_1 h_1(t−1) + U_1 x(t)) — eqs. (2)–(3);
# 2. a gated layer in the GRU's style (an update gate only, as in the minimal gated unit),
#    z(t) = σ(W_z h_2(t−1) + U_z h_1(t) + b_z), g(t) = tanh(W_2 h_2(t−1) + U_2 h_1(t) + b_2),
#    h_2(t) = (1 − z(t)) ∘ g(t) + z(t) ∘ h_2(t−1);
# 3. an Elman layer with the output and loss, h_3(t) = tanh(b_3 + W_3 h_3(t−1) + U_3 h_2(t)),
#    o(t) = c + V h_3(t) — eq. (4) — and L(t) = ½‖o(t) − y(t)‖² — eq. (5).
#
# What changes relative to the Elman cell is eq. (9): each layer below the top gets no error
# from the loss directly; the adjoint of h_ℓ(t) is what layer ℓ+1 hands down *at the same step*
# (through its input weights) plus what h_ℓ(t+1) hands back through layer ℓ's own recurrence.

import numpy as np
import sympy as sp

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle

# ## 1. The layers, as a researcher would write them
#
# A layer below the top has inputs, states and parameters only; the top layer also has the
# output and the loss. Each layer is written with its own local names (x, h, W, ...): `rs.stack`
# suffixes every name with the layer number (h_1, W_2, z_2, ...) and binds layer ℓ's input x to
# layer ℓ−1's state, including its size.


def elman_layer() -> rs.Cell:
    """Eqs. (2)-(3): h(t) = tanh(b + W h(t−1) + U x(t))."""
    cell = rs.Cell("elman_layer")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    cell.update(h, rs.tanh(b + W @ h.prev + U @ x))
    return cell


def gated_layer() -> rs.Cell:
    """An update-gated layer: h(t) = (1 − z) ∘ g + z ∘ h(t−1)."""
    cell = rs.Cell("gated_layer")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W_z, U_z, b_z = cell.param("W_z", n, n), cell.param("U_z", n, m), cell.param("b_z", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    z = cell.define("z", rs.sigmoid(W_z @ h.prev + U_z @ x + b_z))  # update gate
    cand = cell.define("cand", rs.tanh(W @ h.prev + U @ x + b))  # candidate state
    cell.update(h, (1 - z) * cand + z * h.prev)
    return cell


def elman_top() -> rs.Cell:
    """Eqs. (2)-(5): the Elman cell with its output and loss."""
    cell = rs.Cell("elman_top")
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    V, c = cell.param("V", k, n), cell.param("c", k)
    cell.update(h, rs.tanh(b + W @ h.prev + U @ x))  # eqs. (2)-(3)
    o = cell.output("o", c + V @ h)  # eq. (4)
    cell.loss(rs.squared_error(o, cell.target("y", k)))  # eq. (5)
    return cell


# Two of these layers stacked are the built-in `rs.cells.get("stacked")` (Fig. 9 with two
# layers): the derivations print identically.

two = rs.stack(elman_layer(), elman_top(), name="stacked")
assert rs.derive(two).latex() == rs.derive(rs.cells.get("stacked")).latex()

# Three layers, the middle one gated:

cell = rs.stack(elman_layer(), gated_layer(), elman_top(), name="stacked3")
print(cell)
assert set(cell.states) == {"h_1", "h_2", "h_3"}
assert set(cell.size_symbols) == {"n_1", "m_1", "n_2", "n_3", "k_3"}  # m_2 = n_1, m_3 = n_2

# ## 2. The derivation
#
# One cell, one step, derived once: the three states are updated in order within the step, so
# reverse mode visits h_3, then h_2, then h_1.

derivation = rs.derive(cell)
print(derivation.pretty())

# As LaTeX:

print(derivation.latex())


def names(expr):
    """The names of the matrix symbols in a derived expression."""
    return {s.name for s in expr.atoms(sp.MatrixSymbol)}


def split(name):
    """The two halves of eq. (9) for a state: (terms from step t, terms from step t+1)."""
    g = derivation.state_adjoint(name)
    terms = g.args if isinstance(g, sp.MatAdd) else (g,)
    from_next = [t for t in terms if any(s.endswith("_next") for s in names(t))]
    return [t for t in terms if t not in from_next], from_next


# ## 3. Eq. (9), layer by layer
#
# **Top layer (3): the report's eq. (9)**, ∇h_3(t) = Vᵀ ∇o(t) + W_3ᵀ diag(1 − h_3(t+1)²)
# ∇h_3(t+1). Its local term comes from the loss.

local, from_next = split("h_3")
assert [names(t) for t in local] == [{"V_3", "g_o_3"}]
assert [names(t) for t in from_next] == [{"W_3", "h_3_next", "g_h_3_next"}]

# **Middle layer (2)**: no loss term. Its local term is layer 3 at the *same* step handing
# back through its input weights, U_3ᵀ diag(1 − h_3(t)²) ∇h_3(t); from step t+1 come the
# gated layer's own three paths: z_2(t+1) ∘ ∇h_2(t+1) (no matrix, the GRU's direct path) and
# one W-product for each of the gate and the candidate.

local, from_next = split("h_2")
assert [names(t) for t in local] == [{"U_3", "h_3", "g_h_3"}]
paths = sorted(sorted(names(t) & {"W_2", "W_z_2"}) for t in from_next)
assert paths == [[], ["W_2"], ["W_z_2"]], paths
(direct,) = [t for t in from_next if not names(t) & {"W_2", "W_z_2"}]
assert names(direct) == {"g_h_2_next", "z_2_next"}

# **Bottom layer (1)**: its local term is layer 2 at the same step — through *both* of layer
# 2's input weights, U_2 (the candidate) and U_z_2 (the gate) — and from step t+1 comes the
# Elman recurrence of layer 1 itself, W_1ᵀ diag(1 − h_1(t+1)²) ∇h_1(t+1).

local, from_next = split("h_1")
weights = sorted(sorted(names(t) & {"U_2", "U_z_2"}) for t in local)
assert weights == [["U_2"], ["U_z_2"]], weights
assert all(not any(s.endswith("_next") for s in names(t)) for t in local)
assert [names(t) for t in from_next] == [{"W_1", "h_1_next", "g_h_1_next"}]
print("eq. (9) per layer: ∇h_ℓ(t) = (layer ℓ+1 at step t) + (layer ℓ from step t+1)")

# Layer 1's recurrence is exactly the Elman cell's eq. (9) with Vᵀ(o − y) replaced by what
# layer 2 hands down: written by hand at concrete sizes, entry by entry. ∇cand_2 and ∇z_2 are
# the adjoints of layer 2's candidate and gate (named intermediates, as in the derivation);
# tanh′ = 1 − cand² and σ′ = z(1 − z) turn them into the adjoints of their pre-activations.

N1, N2 = 3, 2
W1 = sp.Matrix(sp.MatrixSymbol("W_1", N1, N1))
U2, Uz2 = sp.Matrix(sp.MatrixSymbol("U_2", N2, N1)), sp.Matrix(sp.MatrixSymbol("U_z_2", N2, N1))
cand, z = sp.Matrix(sp.MatrixSymbol("cand_2", N2, 1)), sp.Matrix(sp.MatrixSymbol("z_2", N2, 1))
g_cand, g_z = (sp.Matrix(sp.MatrixSymbol(f"g_{q}_2", N2, 1)) for q in ("cand", "z"))
h1_next = sp.Matrix(sp.MatrixSymbol("h_1_next", N1, 1))
g_h1_next = sp.Matrix(sp.MatrixSymbol("g_h_1_next", N1, 1))
from_layer_2 = (
    U2.T * sp.diag(*[1 - cand[i] ** 2 for i in range(N2)]) * g_cand
    + Uz2.T * sp.diag(*[z[i] * (1 - z[i]) for i in range(N2)]) * g_z
)
eq9 = from_layer_2 + W1.T * sp.diag(*[1 - h1_next[i] ** 2 for i in range(N1)]) * g_h1_next
concrete = {"n_1": N1, "m_1": 2, "n_2": N2, "n_3": 2, "k_3": 2}
dims = {cell.size_symbols[name]: value for name, value in concrete.items()}
derived = derivation.state_adjoint("h_1").xreplace(dims).as_explicit()
difference = (sp.Matrix(derived) - eq9).applyfunc(sp.expand)
assert difference == sp.zeros(N1, 1), difference
print("eq. (9) for h_1 reproduced exactly")

# ## 4. An independent oracle
#
# `sympy.diff` of the unrolled scalar loss at 60 digits. Three layers unrolled swell fast
# (T = 3 takes about 30 s), so the check is minimal but keeps every coupling: two units in
# layers 1 and 2 (full matrices W_1, W_2, W_z_2, U_2, U_z_2) and T = 2, so that every layer's
# carry from step t+1 and every same-step term from the layer above is exercised.

report = scalar_oracle(cell, sizes={"m_1": 1, "n_1": 2, "n_2": 2, "n_3": 1, "k_3": 1}, T=2)
print(report)
assert report.ok

# ## 5. The generated kernel
#
# One backward loop for the three coupled recurrences:

kernel = rs.compile(cell)
backward = kernel.source[kernel.source.index("    # adjoint recurrence") :]
print(backward[: backward.index("    # parameter gradients")])
assert backward.count("for t in range(T - 1, -1, -1)") == 1

sizes = {"m_1": 3, "n_1": 5, "n_2": 4, "n_3": 6, "k_3": 2}
params, inputs, targets = random_problem(cell, sizes, T=6, B=3)
gradients = check_gradients(kernel, params, inputs, targets)
print(gradients)
assert gradients.ok

# ## 6. The report's equations in plain NumPy
#
# The three layers' forward passes, the loss (5), and ∇U_1 — the input weights of the bottom
# layer, whose gradient needs the whole chain: eq. (9) for h_3, the gated layer's adjoint
# recurrence for h_2, and eq. (9) for h_1 with layer 2's same-step term — written by hand.
# Both sides are float64 doing the same arithmetic grouped differently; they agree to a few
# rounding units (≈ 1e-15 relative), and 1e-12 is the stated tolerance.


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def reference(p, x, y):
    """Forward pass, loss and ∇U_1 of the three-layer stack."""
    T, B = x.shape[:2]
    zeros = {i: np.zeros((T + 1, B, p[f"b_{i}"].shape[0])) for i in (1, 2, 3)}
    h1, h2, h3 = zeros[1], zeros[2], zeros[3]
    z, cand = np.zeros_like(h2[1:]), np.zeros_like(h2[1:])
    for t in range(1, T + 1):
        h1[t] = np.tanh(p["b_1"] + h1[t - 1] @ p["W_1"].T + x[t - 1] @ p["U_1"].T)
        z[t - 1] = sigmoid(h2[t - 1] @ p["W_z_2"].T + h1[t] @ p["U_z_2"].T + p["b_z_2"])
        cand[t - 1] = np.tanh(h2[t - 1] @ p["W_2"].T + h1[t] @ p["U_2"].T + p["b_2"])
        h2[t] = (1 - z[t - 1]) * cand[t - 1] + z[t - 1] * h2[t - 1]
        h3[t] = np.tanh(p["b_3"] + h3[t - 1] @ p["W_3"].T + h2[t] @ p["U_3"].T)
    o = p["c_3"] + h3[1:] @ p["V_3"].T  # eq. (4)
    loss = 0.5 * np.sum((o - y) ** 2)  # eq. (5)
    g_U1 = np.zeros_like(p["U_1"])
    carry3 = np.zeros_like(h3[0])  # W_3ᵀ diag(1 − h_3(t+1)²) ∇h_3(t+1)
    carry2 = np.zeros_like(h2[0])  # what h_2(t+1) hands back to h_2(t)
    carry1 = np.zeros_like(h1[0])  # W_1ᵀ diag(1 − h_1(t+1)²) ∇h_1(t+1)
    for t in range(T, 0, -1):
        s = t - 1  # index of step t in the (T, ...) arrays
        g_h3 = (o[s] - y[s]) @ p["V_3"] + carry3  # eq. (9), top layer
        d3 = (1 - h3[t] ** 2) * g_h3
        carry3 = d3 @ p["W_3"]
        g_h2 = d3 @ p["U_3"] + carry2  # layer 3 at step t + layer 2 from step t+1
        g_cand = (1 - z[s]) * g_h2  # through h_2 = (1 − z) ∘ cand + z ∘ h_2(t−1)
        g_z = (h2[t - 1] - cand[s]) * g_h2
        d_cand = (1 - cand[s] ** 2) * g_cand
        d_z = z[s] * (1 - z[s]) * g_z
        carry2 = z[s] * g_h2 + d_cand @ p["W_2"] + d_z @ p["W_z_2"]
        g_h1 = d_cand @ p["U_2"] + d_z @ p["U_z_2"] + carry1  # eq. (9), bottom layer
        d1 = (1 - h1[t] ** 2) * g_h1
        carry1 = d1 @ p["W_1"]
        g_U1 += d1.T @ x[s]  # eq. (8)
    return {"h_1": h1[1:], "h_2": h2[1:], "h_3": h3[1:], "o_3": o}, loss, g_U1


states_ref, loss_ref, g_U1_ref = reference(params, inputs["x_1"], targets["y_3"])
states = kernel.forward(params, inputs)
loss, grads = kernel.loss_and_grad(params, inputs, targets)
for name, value in states_ref.items():
    assert np.allclose(states[name], value, rtol=1e-12, atol=1e-14), name
assert np.isclose(loss, loss_ref, rtol=1e-12)
assert np.allclose(grads["U_1"], g_U1_ref, rtol=1e-12, atol=1e-14)
print("forward, loss and ∇U_1 agree with the hand-written three-layer BPTT")

# ## 7. The unrolled graph
#
# DOT text (render with Graphviz's `dot`; not needed here). Each quantity is a row of the
# drawing, with a horizontal chain for each layer's own recurrence (h_ℓ(1) → h_ℓ(2)) and
# vertical edges from layer ℓ to layer ℓ+1 at the same step. The edges into step 2 (node
# names are quantity_step: "h_1_2" is h_1(2)):

dot = rs.unroll(cell, 3).to_dot()
edges = [line.strip() for line in dot.splitlines() if "->" in line and "invis" not in line]
into_step_2 = [e for e in edges if e.split(" -> ")[1].split(" [")[0].rstrip(";").endswith('_2"')]
print("\n".join(into_step_2))
for layer in (1, 2, 3):
    assert any(e.startswith(f'"h_{layer}_1" -> "h_{layer}_2"') for e in edges)  # recurrence
assert any(e.startswith('"h_1_2" -> "cand_2_2"') for e in edges)  # layer 1 -> layer 2, t = 2
assert any(e.startswith('"h_2_2" -> "h_3_2"') for e in edges)  # layer 2 -> layer 3, t = 2
