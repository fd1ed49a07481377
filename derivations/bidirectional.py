# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # The bidirectional RNN (Fig. 7): two adjoint recurrences running in opposite directions
#
# Architecture 4 of the report (its §3, Fig. 7): a forward RNN h(t) reads the
# sequence from its start, a backward RNN g(t) from its end, and the output combines them at
# every step, o(t) = c + V h(t) + V_g g(t), with the squared-error loss of eq. (5). The
# forward layer is the Elman recurrence of eqs. (2)–(3); the backward layer is the same
# recurrence with time reversed, g(t) = tanh(b_g + W_g g(t+1) + U_g x(t)).
#
# Back-propagation through time then has *two* copies of eq. (9), and they run in opposite
# directions: ∇h(t) needs ∇h(t+1) (a loop from T down to 1, as in the report), while ∇g(t)
# needs ∇g(t−1) (a loop from 1 up to T). Both get their local term from the same output
# adjoint ∇o(t) = o(t) − y(t). This script builds the model from user-level cells, derives
# it, draws it, and checks it three independent ways. It runs as a script
# (`python derivations/bidirectional.py`) and is executed by the test suite.

import re
import tempfile
from pathlib import Path

import numpy as np

import rnnsym as rs
from rnnsym.models import random_model_problem
from rnnsym.verify import check_gradients, model_oracle

# ## 1. The cells and the composition
#
# A *layer* is a cell with inputs, states and parameters only; the model's loss lives in the
# *head*, a cell without state whose inputs are named after the states it reads (h and g).
# Both layers read the model input x(t) by name. `rs.bidirectional` runs the second layer
# backwards in time.


def elman_layer(name, state, suffix):
    """Eqs. (2)-(3): state(t) = tanh(b + W state(t-1) + U x(t)), no output and no loss."""
    cell = rs.Cell(name)
    n, m = cell.dims("n m")
    x, s = cell.input("x", m), cell.state(state, n)
    W, U = cell.param(f"W{suffix}", n, n), cell.param(f"U{suffix}", n, m)
    b = cell.param(f"b{suffix}", n)
    cell.update(s, rs.tanh(b + W @ s.prev + U @ x))
    return cell


forward = elman_layer("forward_rnn", "h", "")  # h(t) from h(t-1)
backward = elman_layer("backward_rnn", "g", "_g")  # run reversed: g(t) from g(t+1)

head = rs.Cell("bidirectional_head")
n, k = head.dims("n k")
c, V, V_g = head.param("c", k), head.param("V", k, n), head.param("V_g", k, n)
o = head.output("o", c + V @ head.input("h", n) + V_g @ head.input("g", n))  # Fig. 7's o(t)
head.loss(rs.squared_error(o, head.target("y", k)))  # eq. (5)

model = rs.bidirectional(forward, backward, head, name="bidirectional")
print(model)
assert model.parts["backward"].reverse and not model.parts["forward"].reverse

# It is the built-in `rs.cells.get("bidirectional")`: both derive to the same equations.

builtin = rs.cells.get("bidirectional")
assert model.derive().latex() == builtin.derive().latex()

# ## 2. The derivation
#
# Each layer is derived as a cell of its own with the lecture slides' linear loss
# Σ_t ⟨d_h(t)|h(t)⟩ added: the seed d_h(t) stands for the adjoint that the head hands back.
# The head has no state, so its steps decouple (no recurrence).

derivation = model.derive()
text = derivation.pretty()
print(text)

# As LaTeX:

print(derivation.latex())

# ## 3. How the adjoints are chained: eq. (9) twice, in opposite directions
#
# The head gives the local terms, ∇_{h(t)}L ← Vᵀ ∇_{o(t)}L and ∇_{g(t)}L ← V_gᵀ ∇_{o(t)}L
# with ∇_{o(t)}L = o(t) − y(t) (eq. (5)). They are the seeds d_h(t), d_g(t) of the layers:

head_d = derivation.parts["head"]
print("d_h =", head_d.input_terms["h"], "   d_g =", head_d.input_terms["g"])
print("∇_o L =", head_d.output_adjoints["o"])
assert str(head_d.input_terms["h"]) == "V.T*g_o" and str(head_d.input_terms["g"]) == "V_g.T*g_o"

# The `carry` of a layer is what its step hands back to the step that ran before it:
# Wᵀ((1 − h∘h) ∘ ∇h) for the forward layer, W_gᵀ((1 − g∘g) ∘ ∇g) for the backward one — the
# same expression (eq. (9)'s second term), but "the step before" is t−1 for h and t+1 for g.

carry_h = derivation.parts["forward"].carry["h"]
carry_g = derivation.parts["backward"].carry["g"]
print("carry of h to step t-1:", carry_h)
print("carry of g to step t+1:", carry_g)
assert str(carry_h).replace("h", "g").replace("W", "W_g") == str(carry_g)

# In sequence time the two recurrences therefore read
#
#     ∇_{h(t)}L = Vᵀ(o(t) − y(t))   + Wᵀ   diag(1 − h(t+1)²) ∇_{h(t+1)}L,   t = T, …, 1   (eq. 9)
#     ∇_{g(t)}L = V_gᵀ(o(t) − y(t)) + W_gᵀ diag(1 − g(t−1)²) ∇_{g(t−1)}L,   t = 1, …, T
#
# which is exactly what the derivation prints for the two layers:

# each line without its number ("(5)", "(F3)") in front
lines = [re.sub(r"^\([A-Z]*\d+\)\s*", "", line.strip()) for line in text.splitlines()]
eq9_h = next(line for line in lines if line.startswith("∇_{h⁽ᵗ⁾}L ="))
eq9_g = next(line for line in lines if line.startswith("∇_{g⁽ᵗ⁾}L ="))
print(eq9_h)
print(eq9_g)
assert "∇_{h⁽ᵗ⁺¹⁾}L" in eq9_h and "∇_{g⁽ᵗ⁻¹⁾}L" in eq9_g  # opposite directions
assert "Backward recurrence, t = T..1" in text and "Backward recurrence, t = 1..T" in text
assert "opposite directions" in text

# ## 4. The unrolled graph
#
# `rs.unroll(model, T)` draws Fig. 7: the forward chain h(0) → h(1) → … → h(T), the backward
# chain g(T+1) → g(T) → … → g(1) (its arrows point backwards in time), and o(t), L(t) reading
# h(t) and g(t). The DOT text is written to a temporary folder (Graphviz renders it with
# `dot -Tsvg`; it is not needed here).

graph = rs.unroll(model, 4)
edges = {(e.source, e.target) for e in graph.edges}
assert all((f"g_{t + 1}", f"g_{t}") in edges for t in range(1, 5))
assert all((f"h_{t - 1}", f"h_{t}") in edges for t in range(1, 5))
assert all({(f"h_{t}", f"o_{t}"), (f"g_{t}", f"o_{t}")} <= edges for t in range(1, 5))
with tempfile.TemporaryDirectory() as folder:
    path = graph.write(Path(folder) / "bidirectional.dot")
    dot = path.read_text()
print("\n".join(line for line in dot.splitlines() if "->" in line and "W_g" in line))
assert dot.count("{") == dot.count("}") and '"g_2" -> "g_3" [label="W_g", dir=back];' in dot

# ## 5. Independent oracle: sympy.diff of the scalar-unrolled model
#
# The model unrolled for T = 2 into scalar SymPy expressions (the forward RNN from the start,
# the backward RNN from the end), differentiated by `sympy.diff`, against the generated
# float64 kernels:

report = model_oracle(model, T=2)
print(report)
assert report.ok

# ## 6. Finite differences at realistic sizes

kernel = model.compile()
params, inputs, targets = random_model_problem(model, T=6, B=3, seed=1)
gradients = check_gradients(kernel, params, inputs, targets)
print(gradients)
assert gradients.ok

# ## 7. The report's equations by hand, in NumPy
#
# Forward: eqs. (2)–(3) for h from t = 1, the same with time reversed for g from t = T,
# o(t) = c + V h(t) + V_g g(t) and eq. (5), summed over t and the batch. Backward: the two
# eq. (9) recurrences above, then eqs. (6)–(8) and the biases. Arrays are (T, B, size); a
# row vector per sequence, so W h is `h @ W.T`.


def reference(p, x, y):
    T, B, _ = x.shape
    N = p["W"].shape[0]
    h = np.zeros((T + 2, B, N))  # h[0] = h(0) = 0; h[t] = h(t)
    g = np.zeros((T + 2, B, N))  # g[T+1] = g(T+1) = 0
    for t in range(1, T + 1):  # eqs. (2)-(3), forward in time
        h[t] = np.tanh(p["b"] + h[t - 1] @ p["W"].T + x[t - 1] @ p["U"].T)
    for t in range(T, 0, -1):  # the same, backward in time
        g[t] = np.tanh(p["b_g"] + g[t + 1] @ p["W_g"].T + x[t - 1] @ p["U_g"].T)
    o = p["c"] + h[1 : T + 1] @ p["V"].T + g[1 : T + 1] @ p["V_g"].T
    loss = 0.5 * np.sum((o - y) ** 2)  # eq. (5)
    g_o = o - y  # ∇_{o(t)} L
    g_h = np.zeros_like(h)  # g_h[T+1] = 0: no step T+1
    for t in range(T, 0, -1):  # eq. (9), t = T..1
        g_h[t] = g_o[t - 1] @ p["V"] + ((1 - h[t + 1] ** 2) * g_h[t + 1]) @ p["W"]
    g_g = np.zeros_like(g)  # g_g[0] = 0: no step 0
    for t in range(1, T + 1):  # eq. (9) reversed, t = 1..T
        g_g[t] = g_o[t - 1] @ p["V_g"] + ((1 - g[t - 1] ** 2) * g_g[t - 1]) @ p["W_g"]
    da_h = (1 - h[1 : T + 1] ** 2) * g_h[1 : T + 1]
    da_g = (1 - g[1 : T + 1] ** 2) * g_g[1 : T + 1]
    grads = {
        "V": np.einsum("tbk,tbn->kn", g_o, h[1 : T + 1]),  # eq. (6)
        "V_g": np.einsum("tbk,tbn->kn", g_o, g[1 : T + 1]),
        "c": g_o.sum(axis=(0, 1)),
        "W": np.einsum("tbi,tbj->ij", da_h, h[0:T]),  # eq. (7), h(t-1)
        "W_g": np.einsum("tbi,tbj->ij", da_g, g[2 : T + 2]),  # eq. (7) reversed, g(t+1)
        "U": np.einsum("tbi,tbj->ij", da_h, x),  # eq. (8)
        "U_g": np.einsum("tbi,tbj->ij", da_g, x),
        "b": da_h.sum(axis=(0, 1)),
        "b_g": da_g.sum(axis=(0, 1)),
    }
    return loss, grads, h[1 : T + 1], g[1 : T + 1]


ref_loss, ref_grads, ref_h, ref_g = reference(params, inputs["x"], targets["y"])
loss, grads = kernel.loss_and_grad(params, inputs, targets)
states = kernel.forward(params, inputs)
TOLERANCE = 1e-12  # relative, float64: the kernel and the reference sum in different orders
assert np.allclose(states["h"], ref_h, rtol=TOLERANCE, atol=TOLERANCE)
assert np.allclose(states["g"], ref_g, rtol=TOLERANCE, atol=TOLERANCE)
assert abs(loss - ref_loss) <= TOLERANCE * abs(ref_loss)
for name, ref in ref_grads.items():
    error = np.linalg.norm(grads[name] - ref) / np.linalg.norm(ref)
    print(f"  {name:4s} kernel vs hand-written eqs. (6)-(9): relative error {error:.1e}")
    assert error <= TOLERANCE, name
print(f"loss {loss:.12f} = hand-written eq. (5); every gradient agrees to {TOLERANCE:g}")
