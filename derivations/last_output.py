# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # One output at the end (Fig. 5): the loss at t = T only, sequences of different lengths
#
# Architecture 2 of the report (its §3, Fig. 5): the recurrence of eqs. (2)–(3)
# reads the whole input sequence, and a single output o = c + V h(T) (eq. (4)) with a single
# loss summarises it, as in sentiment analysis. The loss here is softmax cross-entropy over
# K classes (ŷ = softmax(o), ∇_o L = ŷ − 1_y, *Deep Learning* eqs. 10.18–10.28), the other
# standard loss next to eq. (5).
#
# Eq. (9) keeps its shape, but its first term, the local loss gradient, is present at t = T
# only: ∇_{h(T)}L = Vᵀ(ŷ − 1_y), and ∇_{h(t)}L = Wᵀ diag(1 − h(t+1)²) ∇_{h(t+1)}L for
# t < T. In a batch whose sequences have different lengths T_b, "t = T" is each sequence's own
# last step; padding after it must not change anything. The script runs as
# `python derivations/last_output.py` and is executed by the test suite.

import re
import tempfile
from pathlib import Path

import numpy as np

import rnnsym as rs
from rnnsym.models import random_model_problem
from rnnsym.verify import check_gradients, model_oracle

# ## 1. The cells and the composition
#
# The layer has inputs, a state and parameters (no output, no loss). The head is a cell
# without state whose input is named after the state it reads, h; its target is given as
# class indices (`classes=True`), one per sequence.

layer = rs.Cell("elman_layer")
n, m = layer.dims("n m")
x, h = layer.input("x", m), layer.state("h", n)
W, U, b = layer.param("W", n, n), layer.param("U", n, m), layer.param("b", n)
layer.update(h, rs.tanh(b + W @ h.prev + U @ x))  # eqs. (2)-(3)

head = rs.Cell("final_head")
n, k = head.dims("n k")
c, V = head.param("c", k), head.param("V", k, n)
o = head.output("o", c + V @ head.input("h", n))  # eq. (4), at t = T
head.loss(rs.softmax_cross_entropy(o, head.target("y", k, classes=True)))

model = rs.last_output(layer, head, name="last_output")
print(model)
assert model.derive().latex() == rs.cells.get("last_output").derive().latex()  # the built-in

# ## 2. The derivation

derivation = model.derive()
text = derivation.pretty()
print(text)

# As LaTeX:

print(derivation.latex())

# ## 3. How the adjoints are chained
#
# The head gives ∇_{o}L = softmax(o) − 1_y and hands ∇_{h(T)}L = Vᵀ ∇_o L back to the layer.
# In the layer's derivation this is the seed d_h(t) of the slides' linear loss
# Σ_t ⟨d_h(t)|h(t)⟩, set to Vᵀ ∇_o L at each sequence's last step and to 0 before it, so the
# layer's eq. (9), ∇_{h(t)}L = d_h(t) + Wᵀ diag(1 − h(t+1)²) ∇_{h(t+1)}L, is the report's
# eq. (9) with its local term Vᵀ(o(t) − y(t)) present at t = T only. Eqs. (7)–(8) sum over
# all t: every step receives gradient, through the chain back from T.

head_d = derivation.parts["head"]
print("∇_o L =", head_d.output_adjoints["o"], "   d_h(T) =", head_d.input_terms["h"])
assert str(head_d.input_terms["h"]) == "V.T*g_o"
# each line without its number ("(5)", "(F3)") in front
lines = [re.sub(r"^\([A-Z]*\d+\)\s*", "", line.strip()) for line in text.splitlines()]
assert "== Head, at t = T ==" in lines
assert any(line.startswith("d_h⁽ᵗ⁾ := ∇_{h⁽ᵀ⁾}L from the head at t = T") for line in lines)
eq9 = next(line for line in lines if line.startswith("∇_{h⁽ᵗ⁾}L ="))
print(eq9)
assert "d_h⁽ᵗ⁾" in eq9 and "∇_{h⁽ᵗ⁺¹⁾}L" in eq9

# ## 4. The unrolled graph
#
# The layer's chain h(0) → … → h(T) and one head, o(T) and L(T), at the last step only.

graph = rs.unroll(model, 5)
assert [node.name for node in graph.nodes if node.quantity in ("o", "L")] == ["o_5", "L_5"]
assert [e.source for e in graph.edges if e.target == "o_5"] == ["h_5"]
with tempfile.TemporaryDirectory() as folder:
    dot = graph.write(Path(folder) / "last_output.dot").read_text()
print("\n".join(line for line in dot.splitlines() if '_5"' in line))
assert dot.count("{") == dot.count("}") and "at t = 5 only" in dot

# ## 5. Independent oracle: sympy.diff of the scalar-unrolled model, T = 3

report = model_oracle(model, T=3)
print(report)
assert report.ok

# ## 6. Finite differences, with sequences of different lengths in one batch

kernel = model.compile()
T, B = 6, 4
params, inputs, targets = random_model_problem(model, T=T, B=B, seed=3)
lengths = np.array([6, 4, 1, 3])
gradients = check_gradients(kernel, params, inputs, targets, lengths=lengths)
print(gradients)
assert gradients.ok

# ## 7. Different lengths give the gradients of each sequence alone
#
# Sequence b uses x(1..T_b) only: the head reads h(T_b). Summing the loss and gradients of
# each sequence run alone, cut to its own length (a batch of one), gives the batch's numbers;
# and changing the padding after T_b changes nothing.

loss, grads = kernel.loss_and_grad(params, inputs, targets, lengths=lengths)
alone_loss, alone_grads = 0.0, {name: 0.0 for name in grads}
for i, T_b in enumerate(lengths):
    one = {"x": inputs["x"][:T_b, i : i + 1]}
    loss_b, grads_b = kernel.loss_and_grad(params, one, {"y": targets["y"][i : i + 1]})
    alone_loss += loss_b
    alone_grads = {name: alone_grads[name] + grads_b[name] for name in grads}
TOLERANCE = 1e-12  # relative, float64
assert abs(loss - alone_loss) <= TOLERANCE * abs(loss)
for name in grads:
    error = np.linalg.norm(grads[name] - alone_grads[name]) / np.linalg.norm(grads[name])
    print(f"  {name}: batch with lengths {lengths.tolist()} vs each sequence alone: {error:.1e}")
    assert error <= TOLERANCE, name

padded = {"x": inputs["x"].copy()}
for i, T_b in enumerate(lengths):
    padded["x"][T_b:, i] = 1e3 * np.random.default_rng(i).normal(size=padded["x"][T_b:, i].shape)
loss_p, grads_p = kernel.loss_and_grad(params, padded, targets, lengths=lengths)
assert loss_p == loss and all(np.array_equal(grads_p[n], grads[n]) for n in grads)
print("changing the padding after each sequence's end changes nothing")

# Without `lengths=`, every sequence is read to t = T, which differs:

full_loss, _ = kernel.loss_and_grad(params, inputs, targets)
assert abs(full_loss - loss) > 1e-6
print(f"loss with lengths {loss:.12f}, without (all to T = {T}) {full_loss:.12f}")

# ## 8. The report's equations by hand, in NumPy
#
# Eqs. (2)–(3) up to each sequence's T_b, o = c + V h(T_b) (eq. (4)), the cross-entropy
# L = logsumexp(o) − o_y; then eq. (9) with the local term at T_b only, and eqs. (6)–(8).


def reference(p, x, y, lengths):
    T, B, _ = x.shape
    N = p["W"].shape[0]
    h = np.zeros((T + 1, B, N))
    for t in range(1, T + 1):  # eqs. (2)-(3)
        h[t] = np.tanh(p["b"] + h[t - 1] @ p["W"].T + x[t - 1] @ p["U"].T)
    last = h[lengths, np.arange(B)]  # h(T_b) of each sequence
    o = p["c"] + last @ p["V"].T  # eq. (4)
    shift = o.max(axis=1, keepdims=True)
    log_z = shift[:, 0] + np.log(np.exp(o - shift).sum(axis=1))
    loss = np.sum(log_z - o[np.arange(B), y])
    g_o = np.exp(o - log_z[:, None])  # softmax(o) − 1_y
    g_o[np.arange(B), y] -= 1
    g_h = np.zeros((T + 2, B, N))
    h_ext = np.concatenate([h, np.zeros_like(h[:1])])
    for t in range(T, 0, -1):  # eq. (9): the local term only at t = T_b (0 after it)
        local = np.where((lengths == t)[:, None], g_o @ p["V"], 0.0)
        g_h[t] = local + ((1 - h_ext[t + 1] ** 2) * g_h[t + 1]) @ p["W"]
    da = (1 - h[1:] ** 2) * g_h[1 : T + 1]
    grads = {
        "V": g_o.T @ last,  # eq. (6)
        "c": g_o.sum(axis=0),
        "W": np.einsum("tbi,tbj->ij", da, h[:-1]),  # eq. (7)
        "U": np.einsum("tbi,tbj->ij", da, x),  # eq. (8)
        "b": da.sum(axis=(0, 1)),
    }
    return loss, grads


ref_loss, ref_grads = reference(params, inputs["x"], targets["y"], lengths)
assert abs(loss - ref_loss) <= TOLERANCE * abs(ref_loss)
for name, ref in ref_grads.items():
    error = np.linalg.norm(grads[name] - ref) / np.linalg.norm(ref)
    print(f"  {name} kernel vs hand-written eqs. (6)-(9): relative error {error:.1e}")
    assert error <= TOLERANCE, name
print(f"loss {loss:.12f} = hand-written cross-entropy; every gradient agrees to {TOLERANCE:g}")
