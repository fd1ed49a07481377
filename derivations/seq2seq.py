# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # Sequence to sequence (Fig. 8): the gradient reaches the encoder through the context C
#
# Architecture 5 of the report (its §3, Fig. 8): an encoder RNN reads the input
# sequence x(1), …, x(T_x); its final state is the fixed-length context C = h(T_x); a decoder
# RNN started from C produces an output sequence of a *different* length T_y. Here the encoder
# is the Elman recurrence of eqs. (2)–(3), and the decoder is trained with teacher forcing
# (Fig. 4): its input at step t is the target y(t−1), s(t) = tanh(b_d + W_d s(t−1) +
# U_d y(t−1)) with s(0) = C, o(t) = c + V s(t) (eq. (4)) and the loss of eq. (5).
#
# The loss is only on the decoder's outputs, so the encoder is trained by what flows back
# through C alone: the decoder's eq. (9) runs from T_y down to 1, its carry out of step 1 is
# ∇_C L = ∇_{s(0)}L, and that is the one seed of the encoder's eq. (9) at t = T_x. The script
# runs as `python derivations/seq2seq.py` and is executed by the test suite.

import re
import tempfile
from pathlib import Path

import numpy as np

import rnnsym as rs
from rnnsym.models import random_model_problem
from rnnsym.verify import check_gradients, model_oracle

# ## 1. The cells and the composition
#
# The encoder is a layer: inputs, a state, parameters, no output and no loss. The decoder is
# an ordinary cell with its own outputs and loss; `y.prev` declares the fed-back input
# y(t−1) (y(0) = 0), which the kernel fills from the targets.

encoder = rs.Cell("encoder")
n, m = encoder.dims("n m")
x, h = encoder.input("x", m), encoder.state("h", n)
W_e, U_e, b_e = encoder.param("W_e", n, n), encoder.param("U_e", n, m), encoder.param("b_e", n)
encoder.update(h, rs.tanh(b_e + W_e @ h.prev + U_e @ x))  # eqs. (2)-(3)

decoder = rs.Cell("decoder")
n, k = decoder.dims("n k")
y = decoder.target("y", k)
s = decoder.state("s", n)
W_d, U_d, b_d = decoder.param("W_d", n, n), decoder.param("U_d", n, k), decoder.param("b_d", n)
V, c = decoder.param("V", k, n), decoder.param("c", k)
decoder.update(s, rs.tanh(b_d + W_d @ s.prev + U_d @ y.prev))  # like (2)-(3), reads y(t-1)
o = decoder.output("o", c + V @ s)  # eq. (4)
decoder.loss(rs.squared_error(o, y))  # eq. (5)
assert decoder.fed_back == {"y_prev": "y"}

model = rs.seq2seq(encoder, decoder, name="seq2seq_init")
print(model, model.wiring)
assert model.wiring == {"h0:s": "h"}  # C = h(T_x) is the decoder's s(0)

# It is the built-in `rs.cells.get("seq2seq_init")`. The built-in `seq2seq` is the report's own
# version of Fig. 8, whose decoder is given C as an input at every step
# (s(t) = tanh(b_d + W_d s(t−1) + U_d y(t−1) + R_d C)); a decoder that declares a
# `cell.context` input gets C there, and the same chain rule sends ∇_C L, summed over the
# decoder's steps, into the encoder at T_x:

fig8 = rs.cells.get("seq2seq")
assert fig8.wiring == {"context:C": "h"}

assert model.derive().latex() == rs.cells.get("seq2seq_init").derive().latex()

# ## 2. The derivation

derivation = model.derive()
text = derivation.pretty()
print(text)

# As LaTeX:

print(derivation.latex())

# ## 3. How the adjoints are chained, eqs. (2)–(9)
#
# * Decoder, t = T_y..1: ∇_{o(t)}L = o(t) − y(t) (eq. (5)), and eq. (9)
#   ∇_{s(t)}L = Vᵀ ∇_{o(t)}L + W_dᵀ diag(1 − s(t+1)²) ∇_{s(t+1)}L.
# * The decoder's carry out of step 1 is ∇_{s(0)}L = W_dᵀ diag(1 − s(1)²) ∇_{s(1)}L: the
#   derivation's `carry["s"]`, taken at t = 1. Since s(0) = C = h(T_x), this is ∇_C L.
# * Encoder, t = T_x..1: eq. (9) with the slides' linear loss Σ_t ⟨d_h(t)|h(t)⟩ as its local
#   term, d_h(T_x) = ∇_C L and d_h(t) = 0 for t < T_x:
#   ∇_{h(T_x)}L = ∇_C L, ∇_{h(t)}L = W_eᵀ diag(1 − h(t+1)²) ∇_{h(t+1)}L.
# * Eqs. (7)–(8) then give ∇W_e, ∇U_e, ∇b_e from the encoder's adjoints, and ∇W_d, ∇U_d, ∇V
#   (eq. (6)) from the decoder's, each summed over its own steps: T_x ≠ T_y is no obstacle.

carry_s = derivation.parts["decoder"].carry["s"]
print("decoder carry to step t-1 (at t = 1: ∇_C L):", carry_s)
assert str(carry_s) == "W_d.T*(HadamardProduct(-(HadamardProduct(s, s)) + 1, g_s))"
assert model.parts["encoder"].seeds == {"h": "d_h"}
# each line without its number ("(5)", "(F3)") in front
lines = [re.sub(r"^\([A-Z]*\d+\)\s*", "", line.strip()) for line in text.splitlines()]
assert (
    "d_h⁽ᵗ⁾ := ∇_{s⁽⁰⁾}L (the decoder's carry out of its step 1) at t = T_x, 0 elsewhere" in lines
)
eq9_h = next(line for line in lines if line.startswith("∇_{h⁽ᵗ⁾}L ="))
eq9_s = next(line for line in lines if line.startswith("∇_{s⁽ᵗ⁾}L ="))
print(eq9_s)
print(eq9_h)
assert "d_h⁽ᵗ⁾" in eq9_h and "∇_{s⁽ᵗ⁺¹⁾}L" in eq9_s

# ## 4. The unrolled graph, T_x = 3, T_y = 5
#
# Encoder steps 1..T_x, the context node C fed by h(T_x) and starting the decoder, decoder
# steps 1..T_y, with the fed-back targets y(t−1) → s(t) (dashed).

T_x, T_y = 3, 5
graph = rs.unroll(model, T_x, T_out=T_y)
edges = {(e.source, e.target): e.params for e in graph.edges}
assert edges[("h_3", "C")] == () and edges[("C", "s_1")] == ("W_d",)
assert all(edges[(f"y_{t - 1}", f"s_{t}")] == ("U_d",) for t in range(1, T_y + 1))
assert len([node for node in graph.nodes if node.quantity == "L"]) == T_y
with tempfile.TemporaryDirectory() as folder:
    dot = graph.write(Path(folder) / "seq2seq.dot").read_text()
print("\n".join(line for line in dot.splitlines() if '"C"' in line))
assert dot.count("{") == dot.count("}") and "T_x = 3, T_y = 5" in dot

# ## 5. Independent oracle: sympy.diff of the scalar-unrolled model, T_x = 2, T_y = 3

report = model_oracle(model, T=2, T_out=3)
print(report)
assert report.ok

# ## 6. Finite differences, T_x = 4, T_y = 6

kernel = model.compile()
params, inputs, targets = random_model_problem(model, T=4, T_out=6, B=3, seed=2)
assert inputs["x"].shape[0] == 4 and targets["y"].shape[0] == 6
gradients = check_gradients(kernel, params, inputs, targets)
print(gradients)
assert gradients.ok

# ## 7. The report's equations by hand, in NumPy
#
# The encoder's forward pass (eqs. (2)–(3)), C = h(T_x), the decoder's (s(0) = C, input
# y(t−1) with y(0) = 0, eq. (4)), the loss (5); then the decoder's eq. (9), ∇_C L, the
# encoder's eq. (9) seeded at T_x only, and eqs. (6)–(8).


def reference(p, x, y):
    T_x, B, _ = x.shape
    T_y = y.shape[0]
    N = p["W_e"].shape[0]
    h = np.zeros((T_x + 1, B, N))  # h[0] = h(0) = 0
    for t in range(1, T_x + 1):
        h[t] = np.tanh(p["b_e"] + h[t - 1] @ p["W_e"].T + x[t - 1] @ p["U_e"].T)
    C = h[T_x]
    y_prev = np.concatenate([np.zeros_like(y[:1]), y[:-1]])  # y(t-1), y(0) = 0
    s = np.zeros((T_y + 1, B, N))
    s[0] = C
    for t in range(1, T_y + 1):
        s[t] = np.tanh(p["b_d"] + s[t - 1] @ p["W_d"].T + y_prev[t - 1] @ p["U_d"].T)
    o = p["c"] + s[1:] @ p["V"].T
    loss = 0.5 * np.sum((o - y) ** 2)  # eq. (5)
    g_o = o - y
    g_s = np.zeros((T_y + 2, B, N))
    s_ext = np.concatenate([s, np.zeros_like(s[:1])])  # s(T_y + 1) unused (its adjoint is 0)
    for t in range(T_y, 0, -1):  # eq. (9) in the decoder
        g_s[t] = g_o[t - 1] @ p["V"] + ((1 - s_ext[t + 1] ** 2) * g_s[t + 1]) @ p["W_d"]
    da_s = (1 - s[1:] ** 2) * g_s[1 : T_y + 1]
    g_C = da_s[0] @ p["W_d"]  # ∇_{s(0)}L = W_dᵀ diag(1 − s(1)²) ∇_{s(1)}L
    g_h = np.zeros((T_x + 2, B, N))
    h_ext = np.concatenate([h, np.zeros_like(h[:1])])
    for t in range(T_x, 0, -1):  # eq. (9) in the encoder, seeded with ∇_C L at t = T_x
        seed = g_C if t == T_x else 0.0
        g_h[t] = seed + ((1 - h_ext[t + 1] ** 2) * g_h[t + 1]) @ p["W_e"]
    da_h = (1 - h[1:] ** 2) * g_h[1 : T_x + 1]
    grads = {
        "V": np.einsum("tbk,tbn->kn", g_o, s[1:]),  # eq. (6)
        "c": g_o.sum(axis=(0, 1)),
        "W_d": np.einsum("tbi,tbj->ij", da_s, s[:-1]),  # eq. (7), s(t-1) with s(0) = C
        "U_d": np.einsum("tbi,tbj->ij", da_s, y_prev),  # eq. (8), input y(t-1)
        "b_d": da_s.sum(axis=(0, 1)),
        "W_e": np.einsum("tbi,tbj->ij", da_h, h[:-1]),  # eq. (7)
        "U_e": np.einsum("tbi,tbj->ij", da_h, x),  # eq. (8)
        "b_e": da_h.sum(axis=(0, 1)),
    }
    return loss, grads, g_C


ref_loss, ref_grads, ref_g_C = reference(params, inputs["x"], targets["y"])
loss, grads = kernel.loss_and_grad(params, inputs, targets)
TOLERANCE = 1e-12  # relative, float64
assert abs(loss - ref_loss) <= TOLERANCE * abs(ref_loss)
for name, ref in ref_grads.items():
    error = np.linalg.norm(grads[name] - ref) / np.linalg.norm(ref)
    print(f"  {name:4s} kernel vs hand-written eqs. (6)-(9): relative error {error:.1e}")
    assert error <= TOLERANCE, name
print(f"loss {loss:.12f} = hand-written eq. (5); every gradient agrees to {TOLERANCE:g}")

# The encoder learns only through C: its gradients are eqs. (7)–(8) of an encoder whose sole
# loss is ⟨∇_C L|h(T_x)⟩, the linear loss of the slides with d_h(T_x) = ∇_C L. The encoder's
# own kernel, seeded that way, returns the same numbers:

seeds = np.zeros(inputs["x"].shape[:2] + ref_g_C.shape[1:])  # (T_x, B, n)
seeds[-1] = ref_g_C
enc_params = {name: params[name] for name in encoder.params}
_, enc_grads = kernel.kernels["encoder"].loss_and_grad(enc_params, inputs, {"d_h": seeds})
for name in encoder.params:
    assert np.allclose(enc_grads[name], grads[name], rtol=TOLERANCE, atol=0), name
print("∇W_e, ∇U_e, ∇b_e = eq. (9) of the encoder seeded with ∇_C L at t = T_x only")
