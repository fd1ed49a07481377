# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # A fixed-length vector as input (Fig. 6): back-propagation through time, derived and checked
#
# The report's third architecture (its §3, Fig. 6), the image-captioning RNN:
# besides the sequence, one fixed vector x (say an image's features) enters *every* step
# through a new weight matrix R, and the token y(t) is both the target at step t and the input
# at step t+1:
#
#     h(t) = tanh(b + W h(t−1) + R x + U y(t−1)),   o(t) = c + V h(t),
#
# with softmax cross-entropy over K token classes (*Deep Learning* eqs. 10.18–10.28) in place
# of eq. (5). Relative to the Elman cell, eq. (2) gains R x and reads y(t−1) where it read x(t);
# eq. (9) is unchanged; eq. (8) now exists twice, for U (with y(t−1)) and for R (with the same
# x at every step), so ∇R = Σ_t diag(1 − h(t)²) ∇h(t) xᵀ = (Σ_t diag(1 − h(t)²) ∇h(t)) xᵀ.

import numpy as np
import sympy as sp

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle

# ## 1. The cell
#
# `cell.context("x", m)` is an input given once per sequence, (B, m), and read at every step.
# `cell.target("y", k, classes=True)`: the kernel takes the tokens as class indices (T, B) and
# uses their 1-of-K vectors; `y.prev` is y(t−1), an input the kernel fills from the targets
# with y(0) = 0 (teacher forcing, as the report trains this model).

cell = rs.Cell("fixed_input")
n, m, k = cell.dims("n m k")
x = cell.context("x", m)  # once per sequence: the image
y = cell.target("y", k, classes=True)  # the caption's tokens
h = cell.state("h", n)
W, R, U = cell.param("W", n, n), cell.param("R", n, m), cell.param("U", n, k)
b, V, c = cell.param("b", n), cell.param("V", k, n), cell.param("c", k)
cell.update(h, rs.tanh(b + W @ h.prev + R @ x + U @ y.prev))  # eqs. (2)-(3) + R x
o = cell.output("o", c + V @ h)  # eq. (4)
cell.loss(rs.softmax_cross_entropy(o, y))  # softmax cross-entropy, not eq. (5)

# It is the built-in `rs.cells.get("fixed_input")`: the two derivations print identically.

assert rs.derive(cell).latex() == rs.derive(rs.cells.get("fixed_input")).latex()

# ## 2. The derivation

derivation = rs.derive(cell)
print(derivation.pretty())

# As LaTeX:

print(derivation.latex())

# ## 3. What to look for
#
# **∇o(t) = softmax(o(t)) − 1_{y(t)}**: the cross-entropy's adjoint, where eq. (5) gave o − y.
#
# **Eq. (9) is the Elman one.** R x and U y(t−1) do not depend on h(t−1), so they add nothing
# to the carry: ∇h(t) = Vᵀ ∇o(t) + Wᵀ diag(1 − h(t+1)²) ∇h(t+1).

g_o = derivation.output_adjoints["o"]
assert {s.name for s in g_o.atoms(sp.MatrixSymbol)} == {"o", "y"} and "softmax" in str(g_o)
elman = rs.derive(rs.cells.elman())
assert derivation.carry["h"] == elman.carry["h"]
assert derivation.state_local["h"] == elman.state_local["h"]

# **∇R has the form of eq. (8), with the fixed x.** Its per-step term is the bias term
# δ(t) = diag(1 − h(t)²) ∇h(t) times xᵀ, and x does not depend on t, so the sum over t
# factorises:
# ∇R = (Σ_t δ(t)) xᵀ = ∇b xᵀ for one sequence. (Over a batch, Σ_b of each sequence's ∇b times
# its own xᵀ; checked numerically in section 5.)

term_R, term_b = derivation.param_terms["R"], derivation.param_terms["b"]
assert isinstance(term_R, sp.MatMul) and term_R.args == (term_b, x.symbol.T)
# It is not the report's eq. (8) itself (the update is not eq. (2): it has four terms and no
# input x(t)), so it carries no report label; only o(t) = c + V h(t) (eq. (4)) and ∇V (eq. (6))
# do.
assert derivation.labels["R"] == ""
assert [k for k, v in derivation.labels.items() if v] == ["o", "V"]
print("∇R = Σ_t diag(1 − h(t)²) ∇h(t) xᵀ — the form of eq. (8), with the fixed x:", term_R)

# ## 4. An independent oracle
#
# `sympy.diff` of the unrolled scalar loss (n = 2, m = 2, k = 3 classes, T = 3), at 60 digits;
# the same x at every step, 1-of-K targets, y(0) = 0:

report = scalar_oracle(cell, sizes={"n": 2, "m": 2, "k": 3}, T=3)
print(report)
assert report.ok

# ## 5. The generated kernel
#
# Eq. (9) is the only loop. The context is given as (B, m): random_problem makes x of that
# shape and the targets integer class indices (T, B).

kernel = rs.compile(cell)
backward = kernel.source[kernel.source.index("    # adjoint recurrence") :]
print(backward[: backward.index("    if not full")])

sizes = {"n": 5, "m": 4, "k": 6}
T, B = 7, 3
params, inputs, targets = random_problem(cell, sizes, T=T, B=B)
assert inputs["x"].shape == (B, sizes["m"]) and targets["y"].shape == (T, B)
assert targets["y"].dtype.kind == "i"

gradients = check_gradients(kernel, params, inputs, targets)
print(gradients)
assert gradients.ok

# ∇R = Σ_b ∇b^(b) x_bᵀ, with ∇b^(b) the bias gradient of sequence b run alone: the
# factorisation of section 3, on the kernel. (Float64 sums in a different order: 1e-12.)

_, grads = kernel.loss_and_grad(params, inputs, targets)
factored = np.zeros_like(params["R"])
for i in range(B):
    _, alone = kernel.loss_and_grad(
        params, {"x": inputs["x"][i : i + 1]}, {"y": targets["y"][:, i : i + 1]}
    )
    factored += np.outer(alone["b"], inputs["x"][i])
assert np.allclose(grads["R"], factored, rtol=1e-12, atol=1e-14)
print("∇R = Σ_b ∇b(sequence b) x_bᵀ: the sum over t factorises through the fixed x")

# A context given once for the whole batch, (m,), is the same as that vector repeated (B, m):

one = inputs["x"][0]
loss_1, grads_1 = kernel.loss_and_grad(params, {"x": one}, targets)
loss_B, grads_B = kernel.loss_and_grad(params, {"x": np.tile(one, (B, 1))}, targets)
assert np.isclose(loss_1, loss_B) and np.allclose(grads_1["R"], grads_B["R"])

# ## 6. The report's equations in plain NumPy
#
# Eqs. (2)–(4) with R x, softmax cross-entropy, and ∇R by the backward recurrence of eq. (9),
# written by hand. Both are float64 and do the same arithmetic grouped differently (per-step
# products here, single contractions over T·B in the kernel, a max-shifted logsumexp in both):
# they agree to rounding, ≈ 1e-15 relative; 1e-12 is the stated tolerance.


def reference(p, x, y_index):
    """Loss, outputs and ∇R of the Fig. 6 model, straight from the report's equations."""
    T, B = y_index.shape
    K = p["c"].shape[0]
    y = np.eye(K)[y_index]  # 1-of-K tokens
    y_prev = np.concatenate([np.zeros((1, B, K)), y[:-1]])  # y(0) = 0
    h = np.zeros((T + 1, B, p["b"].shape[0]))
    o = np.empty((T, B, K))
    for t in range(1, T + 1):
        a = p["b"] + h[t - 1] @ p["W"].T + x @ p["R"].T + y_prev[t - 1] @ p["U"].T  # eq. (2)
        h[t] = np.tanh(a)  # eq. (3)
        o[t - 1] = p["c"] + h[t] @ p["V"].T  # eq. (4)
    shifted = o - o.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1)) + o.max(axis=-1)
    loss = np.sum(log_z - np.sum(y * o, axis=-1))  # cross-entropy, summed over t and batch
    g_o = np.exp(o - log_z[..., None]) - y  # softmax(o) - 1_y
    g_R = np.zeros_like(p["R"])
    g_h = np.zeros((B, p["b"].shape[0]))
    for t in range(T, 0, -1):
        from_next = 0.0 if t == T else ((1 - h[t + 1] ** 2) * g_h) @ p["W"]
        g_h = g_o[t - 1] @ p["V"] + from_next  # eq. (9)
        g_R += ((1 - h[t] ** 2) * g_h).T @ x  # eq. (8) for R, the same x at every t
    return loss, o, g_R


loss_ref, o_ref, g_R_ref = reference(params, inputs["x"], targets["y"])
loss, grads = kernel.loss_and_grad(params, inputs, targets)
y_prev = np.concatenate([np.zeros((1, B, sizes["k"])), np.eye(sizes["k"])[targets["y"][:-1]]])
o_kernel = kernel.forward(params, {"x": inputs["x"], "y_prev": y_prev})["o"]
assert np.allclose(o_kernel, o_ref, rtol=1e-12, atol=1e-14)
assert np.isclose(loss, loss_ref, rtol=1e-12)
assert np.allclose(grads["R"], g_R_ref, rtol=1e-12, atol=1e-14)
print("forward, cross-entropy loss and ∇R agree with the hand-written reference")

# ## 7. Test time: captioning an image
#
# At test time the model's own most likely token is fed back (`"argmax"`), starting from
# y(0) = 0. Teacher-forcing the kernel with the generated tokens as targets must reproduce
# the generated outputs: the same computation, once step by step and once all at once.

steps = 8
caption = rs.generate(
    kernel,
    params,
    steps=steps,
    feed={"y_prev": ("o", "argmax")},
    inputs={"x": inputs["x"]},
    start={"y_prev": np.zeros((B, sizes["k"]))},
)
tokens = caption["o"].argmax(axis=-1)  # (steps, B)
print("generated tokens (one column per image):\n", tokens)
replay = kernel.forward(params, {"x": inputs["x"], "y_prev": caption["y_prev"]})
assert np.allclose(replay["o"], caption["o"], rtol=1e-12, atol=1e-14)
assert np.array_equal(caption["y_prev"][1:].argmax(axis=-1), tokens[:-1])

# ## 8. The unrolled graph
#
# DOT text (render with Graphviz's `dot`, not needed here): x enters every step through R.

dot = rs.unroll(cell, 3).to_dot()
lines = dot.splitlines()
print("\n".join(line for line in lines if '-> "h_' in line and "invis" not in line))
assert sum('[label="R"]' in line for line in lines) == 3  # one R edge into each h(t)
