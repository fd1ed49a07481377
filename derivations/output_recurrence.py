# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # Recurrence from the output to the hidden layer (Fig. 4): teacher forcing and free running
#
# The report's first architecture (its §3, Fig. 4): the recurrent weight W
# carries the previous *output* into the hidden state, h(t) = tanh(b + W o(t−1) + U x(t)), in
# place of W h(t−1) in eq. (2). There are two ways to run it, and they are two different cells:
#
# * **teacher forcing** (training): the true target y(t−1) is fed where o(t−1) would be. The
#   cell then has no state at all, the time steps decouple, eq. (9) loses its second term and
#   training parallelises over t;
# * **free running** (test time, or training without teacher forcing): the model's own o(t−1)
#   is fed back, o is the recurrent state, and training is full BPTT.
#
# Both are derived, verified against `sympy.diff` and against a hand-written NumPy version of
# the report's equations; at the end the teacher-forced kernel is run on its own outputs with
# `rs.generate` and reproduces the free-running kernel exactly.

import numpy as np
import sympy as sp

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle

# ## 1. Teacher forcing
#
# Eq. (2) with y(t−1) in place of h(t−1): a(t) = b + W y(t−1) + U x(t), so W is n × k.
# Eqs. (3)–(5) are unchanged: h(t) = tanh(a(t)), o(t) = c + V h(t), L(t) = ½‖o(t) − y(t)‖².
# `y.prev` is y(t−1): an input named `y_prev` that the kernel fills from the targets, y(0) = 0.
# h is only *named* (`cell.define`), not a state: nothing is carried from one step to the next.

tf = rs.Cell("teacher_forcing")
n, m, k = tf.dims("n m k")
x = tf.input("x", m)
y = tf.target("y", k)
W, U, b = tf.param("W", n, k), tf.param("U", n, m), tf.param("b", n)
V, c = tf.param("V", k, n), tf.param("c", k)
h = tf.define("h", rs.tanh(b + W @ y.prev + U @ x))  # like eqs. (2)-(3), y(t-1) for h(t-1)
o = tf.output("o", c + V @ h)  # eq. (4)
tf.loss(rs.squared_error(o, y))  # eq. (5)

# It is the built-in `rs.cells.get("teacher_forcing")`: the derivations print identically.

assert rs.derive(tf).latex() == rs.derive(rs.cells.get("teacher_forcing")).latex()

tf_derivation = rs.derive(tf)
print(tf_derivation.pretty())
print(tf_derivation.latex())

# **The steps decouple.** Eq. (9) for the Elman cell is ∇h(t) = Vᵀ(o(t) − y(t)) + Wᵀ diag(1 −
# h(t+1)²) ∇h(t+1). Its second term is what step t+1 hands back to step t — the derivation's
# `carry`. Here W multiplies the *data* y(t−1), not anything computed at step t−1, so there is
# no carry: ∇h(t) = Vᵀ ∇o(t) is all of eq. (9), and every ∇_W-type sum (eqs. (6)–(8)) is a sum
# of terms each computable from step t alone. ∇_W L = Σ_t diag(1 − h(t)²) ∇h(t) y(t−1)ᵀ has
# the form of eq. (8), with y(t−1) as the input.

assert tf_derivation.carry == {}
assert not tf.states
g_h_tf = tf_derivation.intermediate_adjoints["h"]
assert g_h_tf == V.T @ tf_derivation.adjoint("o")  # eq. (9) without its second term
y_prev_symbol = tf.inputs["y_prev"].symbol
assert tf_derivation.param_terms["W"].args[-1] == y_prev_symbol.T
print("teacher forcing: no carry, ∇h(t) = Vᵀ ∇o(t): eq. (9) loses its term from step t+1")

# **The kernel is vectorised over t.** With no carry the generated code has no loop over time,
# neither forward nor backward: every step is one row block of the same matrix products.

tf_kernel = rs.compile(tf)
body = tf_kernel.source[tf_kernel.source.index("def _forward") :]
assert "for t in" not in body and "adjoint recurrence" not in body
print(body[body.index("def _loss_and_grad") : body.index("    if not full")])

# So the steps can be computed in any order: permuting time (keeping each x(t) with its own
# y(t−1)) permutes the outputs and leaves the loss and every gradient unchanged.

sizes = {"n": 5, "m": 3, "k": 4}
T, B = 7, 3
params, inputs, targets = random_problem(tf, sizes, T=T, B=B, seed=1)
y_prev = np.zeros_like(targets["y"])
y_prev[1:] = targets["y"][:-1]  # what the kernel fills in: y(t-1), y(0) = 0
perm = np.random.default_rng(2).permutation(T)
shuffled = {"x": inputs["x"][perm], "y_prev": y_prev[perm]}
out = tf_kernel.forward(params, {**inputs, "y_prev": y_prev})["o"]
assert np.allclose(tf_kernel.forward(params, shuffled)["o"], out[perm], rtol=0, atol=1e-14)
loss_tf, grads_tf = tf_kernel.loss_and_grad(params, inputs, targets)
loss_p, grads_p = tf_kernel.loss_and_grad(params, shuffled, {"y": targets["y"][perm]})
assert np.isclose(loss_p, loss_tf, rtol=1e-13)
assert all(np.allclose(grads_p[p], grads_tf[p], rtol=1e-12, atol=1e-14) for p in params)

# ## 2. Free running
#
# o(t−1) itself is fed back: h(t) = tanh(b + W o(t−1) + U x(t)), o(t) = c + V h(t). Now o is
# the state (o(0) = 0), updated by eq. (4), and h(t) is an intermediate of the step. Same
# parameter names and shapes as above.

fr = rs.Cell("output_feedback")
n, m, k = fr.dims("n m k")
x = fr.input("x", m)
o = fr.state("o", k)
W, U, b = fr.param("W", n, k), fr.param("U", n, m), fr.param("b", n)
V, c = fr.param("V", k, n), fr.param("c", k)
h = fr.define("h", rs.tanh(b + W @ o.prev + U @ x))  # like eqs. (2)-(3), o(t-1) for h(t-1)
fr.update(o, c + V @ h)  # eq. (4): the recurrent quantity
fr.loss(rs.squared_error(o, fr.target("y", k)))  # eq. (5)

assert rs.derive(fr).latex() == rs.derive(rs.cells.get("output_feedback")).latex()

fr_derivation = rs.derive(fr)
print(fr_derivation.pretty())
print(fr_derivation.latex())

# **Eq. (9) for o.** The recurrence now runs through o: step t+1 reads o(t) through W, so
# ∇o(t) = (o(t) − y(t)) + Wᵀ diag(1 − h(t+1)²) ∇h(t+1), with ∇h(t+1) = Vᵀ ∇o(t+1): the report's
# eq. (9) with the roles of V and W exchanged, the chain o(t) →W→ h(t+1) →V→ o(t+1) giving
# ∇o(t) = (o(t) − y(t)) + Wᵀ diag(1 − h(t+1)²) Vᵀ ∇o(t+1). We write that by hand at concrete
# sizes and compare entry by entry with the derived form.

assert set(fr_derivation.carry) == {"o"}
N, K = 3, 2
Wm, Vm = sp.Matrix(sp.MatrixSymbol("W", N, K)), sp.Matrix(sp.MatrixSymbol("V", K, N))
om, ym = sp.Matrix(sp.MatrixSymbol("o", K, 1)), sp.Matrix(sp.MatrixSymbol("y", K, 1))
h_next = sp.Matrix(sp.MatrixSymbol("h_next", N, 1))
g_o_next = sp.Matrix(sp.MatrixSymbol("g_o_next", K, 1))
eq9 = (om - ym) + Wm.T * sp.diag(*[1 - h_next[i] ** 2 for i in range(N)]) * Vm.T * g_o_next

g_h_next = sp.MatrixSymbol("g_h_next", n, 1)
g_h_next_value = fr_derivation.shift_forward(fr_derivation.intermediate_adjoints["h"])
derived9 = fr_derivation.state_adjoint("o").xreplace({g_h_next: g_h_next_value})
difference = derived9.xreplace({n: N, m: 2, k: K}).as_explicit() - eq9
assert sp.Matrix(difference).applyfunc(sp.expand) == sp.zeros(K, 1)
print("eq. (9) for the fed-back output: ∇o(t) = o(t) − y(t) + Wᵀ diag(1 − h(t+1)²) Vᵀ ∇o(t+1)")

# The generated kernel has the sequential loop of BPTT:

fr_kernel = rs.compile(fr)
backward = fr_kernel.source[fr_kernel.source.index("    # adjoint recurrence") :]
print(backward[: backward.index("    # parameter gradients")])
assert "for t in range(T - 1, -1, -1)" in backward

# ## 3. Each against its own oracle; the two gradients differ
#
# `sympy.diff` of each cell's unrolled scalar loss at 60 digits (tiny sizes, T = 3), against
# the matrix-form derivation:

for cell in (tf, fr):
    report = scalar_oracle(cell, sizes={"n": 2, "m": 2, "k": 2}, T=3)
    print(cell.name, report)
    assert report.ok

# Central finite differences of each kernel (the same parameters for both cells):

params, inputs, targets = random_problem(tf, sizes, T=6, B=3)
for kernel in (tf_kernel, fr_kernel):
    gradients = check_gradients(kernel, params, inputs, targets)
    print(kernel.cell.name, gradients)
    assert gradients.ok

# Same parameters, same data, different losses and gradients: teacher forcing optimises the
# one-step-ahead loss given the true past, free running the loss of the model's own
# trajectory. Every parameter's gradient differs (relative difference printed).

loss_tf, grads_tf = tf_kernel.loss_and_grad(params, inputs, targets)
loss_fr, grads_fr = fr_kernel.loss_and_grad(params, inputs, targets)
print(f"loss: teacher forcing {loss_tf:.6f}, free running {loss_fr:.6f}")
for name in params:
    gap = np.linalg.norm(grads_tf[name] - grads_fr[name]) / np.linalg.norm(grads_fr[name])
    print(f"  ∇{name}: relative difference {gap:.3f}")
    assert gap > 1e-2
assert abs(loss_tf - loss_fr) > 1e-3 * loss_fr

# ## 4. The report's equations in plain NumPy
#
# Written from eqs. (2)–(9) alone, for both regimes: forward pass, loss, and ∇W by the
# hand-written recurrence. Tolerance: both sides are float64 and compute the same sums in a
# different order (per-step products here, one contraction over T·B in the kernel), so they
# agree to a few units of rounding, ≈ 1e-15 relative; 1e-12 leaves room for that and would
# still catch any wrong term, which changes the result at order 1.


def teacher_forced_reference(p, x, y):
    """Eqs. (2)-(5) with y(t-1) fed back; ∇W with eq. (9) reduced to Vᵀ(o - y)."""
    y_prev = np.concatenate([np.zeros_like(y[:1]), y[:-1]])
    loss, g_W = 0.0, np.zeros_like(p["W"])
    o = np.empty_like(y)
    for t in range(len(x)):
        h = np.tanh(p["b"] + y_prev[t] @ p["W"].T + x[t] @ p["U"].T)  # eqs. (2)-(3)
        o[t] = p["c"] + h @ p["V"].T  # eq. (4)
        loss += 0.5 * np.sum((o[t] - y[t]) ** 2)  # eq. (5)
        g_h = (o[t] - y[t]) @ p["V"]  # eq. (9): nothing from step t+1
        g_W += ((1 - h**2) * g_h).T @ y_prev[t]  # eq. (8), y(t-1) as the input
    return o, loss, g_W


def free_running_reference(p, x, y):
    """Eqs. (2)-(5) with o(t-1) fed back; ∇W by the backward recurrence of ∇o(t)."""
    T, B = x.shape[:2]
    o = np.zeros((T + 1, B, p["c"].shape[0]))  # o[0] = o(0) = 0
    h = np.zeros((T + 1, B, p["b"].shape[0]))
    for t in range(1, T + 1):
        h[t] = np.tanh(p["b"] + o[t - 1] @ p["W"].T + x[t - 1] @ p["U"].T)  # eqs. (2)-(3)
        o[t] = p["c"] + h[t] @ p["V"].T  # eq. (4)
    loss = 0.5 * np.sum((o[1:] - y) ** 2)  # eq. (5)
    g_W = np.zeros_like(p["W"])
    g_o = np.zeros_like(o[0])
    for t in range(T, 0, -1):
        from_next = 0.0 if t == T else ((1 - h[t + 1] ** 2) * (g_o @ p["V"])) @ p["W"]
        g_o = (o[t] - y[t - 1]) + from_next  # eq. (9) for o
        g_a = (1 - h[t] ** 2) * (g_o @ p["V"])  # diag(1 - h(t)²) ∇h(t), ∇h(t) = Vᵀ ∇o(t)
        g_W += g_a.T @ o[t - 1]  # eq. (7) with o(t-1) for h(t-1)
    return o[1:], loss, g_W


for kernel, reference in (
    (tf_kernel, teacher_forced_reference),
    (fr_kernel, free_running_reference),
):
    o_ref, loss_ref, g_W_ref = reference(params, inputs["x"], targets["y"])
    loss, grads = kernel.loss_and_grad(params, inputs, targets)
    if kernel is tf_kernel:
        y_prev = np.concatenate([np.zeros_like(targets["y"][:1]), targets["y"][:-1]])
        o_kernel = kernel.forward(params, {**inputs, "y_prev": y_prev})["o"]
    else:
        o_kernel = kernel.forward(params, inputs)["o"]
    assert np.allclose(o_kernel, o_ref, rtol=1e-12, atol=1e-14)
    assert np.isclose(loss, loss_ref, rtol=1e-12)
    assert np.allclose(grads["W"], g_W_ref, rtol=1e-12, atol=1e-14)
    print(f"{kernel.cell.name}: forward, loss and ∇W agree with the hand-written reference")

# ## 5. Test time: the teacher-forced model generating on its own
#
# After training with teacher forcing, the model is run with its own output fed back:
# `rs.generate` feeds o(t) as the next step's `y_prev` (`"identity"`), starting from
# y_prev(1) = 0. That is exactly the free-running cell with o(0) = 0, so the teacher-forced
# kernel, driven step by step, must reproduce the free-running kernel's forward pass.
# (Tolerance 1e-12: the same float64 operations grouped differently, as above.)

T_test = 10
x_test = np.random.default_rng(3).normal(size=(T_test, B, sizes["m"]))
generated = rs.generate(
    tf_kernel, params, steps=T_test, feed={"y_prev": ("o", "identity")}, inputs={"x": x_test}
)
free = fr_kernel.forward(params, {"x": x_test})
assert generated["o"].shape == free["o"].shape == (T_test, B, sizes["k"])
assert np.allclose(generated["o"], free["o"], rtol=1e-12, atol=1e-14)
assert np.allclose(generated["y_prev"][1:], generated["o"][:-1])  # o(t-1) was fed back
print(f"rs.generate with the teacher-forced kernel = free-running forward, {T_test} steps")

# ## 6. The unrolled graphs
#
# `rs.unroll(cell, 3).to_dot()` gives Graphviz DOT text (render it with `dot -Tsvg`; Graphviz
# is not needed here). Under teacher forcing no edge joins step t to step t+1 — W reads the
# data y(t−1); free running, W carries o(t−1) → h(t), the recurrence of Fig. 4.

for cell in (tf, fr):
    dot = rs.unroll(cell, 3).to_dot()
    edges = [line.strip() for line in dot.splitlines() if "->" in line and "invis" not in line]
    print(f"{cell.name}: {len(dot.splitlines())} lines of DOT; the edges into h(2):")
    print("\n".join("  " + e for e in edges if '-> "h_2"' in e))
    step_1 = {f'"{q}_1"' for q in cell.states} | {'"h_1"', '"o_1"'}
    across = [e for e in edges if e.split(" -> ")[0] in step_1 and '"h_2"' in e]
    if cell is tf:
        assert not across  # nothing computed at step 1 reaches step 2
    else:
        assert across == ['"o_1" -> "h_2" [label="W"];']
