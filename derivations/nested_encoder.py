# ---
# jupyter:
#   jupytext:
#     formats: py:light
# ---

# # A two-layer bidirectional GRU encoder: models that nest, and padded batches
#
# The report composes its architectures from the Elman cell (§3–§4, after Goodfellow, Bengio &
# Courville, *Deep Learning*, 2016, ch. 10): a bidirectional RNN (Fig. 7) and stacked layers
# (Fig. 9). Used together they make the most common recurrent encoder, two bidirectional
# layers stacked, here with gated cells (a GRU, laid out as `torch.nn.GRU`) and a linear
# readout with the squared error of eq. (5). This worked derivation builds it from the
# built-in cells through the public API, prints what is derived, and checks the kernel against
# finite differences, against each sequence of a padded batch run alone, and, where PyTorch is
# installed, against `torch.nn.GRU(num_layers=2, bidirectional=True)`. It runs as a script
# (`python derivations/nested_encoder.py`) and is executed by the test suite.

import numpy as np

import rnnsym as rs

# ## 1. The model
#
# `rs.cells.gru(output=False)` is the GRU layer alone: no output, target or loss. A
# bidirectional layer runs one copy forward and one backward and concatenates their outputs at
# each step, [h(t); h_b(t)]; a stack reads each layer's output as the next layer's input; the
# head is a cell without state that reads the top output z(t) and has the loss.

gru = rs.cells.gru(output=False)
head = rs.Cell("readout")
n, k = head.dims("n k")
z = head.input("z", n)
V, c = head.param("V", k, n), head.param("c", k)
head.loss(rs.squared_error(head.output("o", V @ z + c), head.target("y", k)))  # eqs. (4)-(5)

model = rs.stack(rs.bidirectional(gru, gru), rs.bidirectional(gru, gru), head=head)
print(model.describe())

# Every cell of the tree has its own names: layer ℓ's end in `_ℓ`, the backward direction's
# in `_b` (the same cell was given twice), so `W_ih_b_1` is `weight_ih_l0_reverse` in PyTorch.

assert sorted(model.params) == sorted(
    [f"{p}{d}_{layer}" for p in ("W_ih", "W_hh", "b_ih", "b_hh") for d in ("", "_b")
     for layer in (1, 2)] + ["V", "c"]
)  # fmt: skip

# ## 2. What is derived
#
# Nothing about the composition is differentiated symbolically: each cell is derived on its
# own, with the slides' linear loss Σ_t ⟨d_h(t)|h(t)⟩ on its output state. Its adjoint
# recurrence (eq. (9) of the report, with d_h(t) in the place of the output layer's term) is
# what turns the adjoint handed down from the layer above into its parameters' gradients and
# its input's adjoint, handed on below. The backward direction's recurrence runs forward in
# the model's time.

derivations = model.derive()
print(derivations["gru_layer_b_1"].pretty())
print(derivations["readout"].pretty())  # the head: eqs. (4)-(6) of the report
assert set(derivations) == {
    "gru_layer_1",
    "gru_layer_b_1",
    "gru_layer_2",
    "gru_layer_b_2",
    "readout",
}

# ## 3. The kernel, checked by finite differences, on a full and a padded batch
#
# `lengths` says how many steps of each sequence are real. The padding is NaN here: it would
# poison any sum it reached. The backward directions start at each sequence's own end.

kernel = rs.compile(model)
T, B = 6, 3
params, inputs, targets = model.random_problem(T=T, B=B, seed=0)
lengths = np.array([6, 2, 4])
for given in (None, lengths):
    report = rs.check_gradients(kernel, params, inputs, targets, lengths=given)
    print(report)
    assert report.ok

x = inputs["x"].copy()
for b, length in enumerate(lengths):
    x[length:, b] = np.nan
loss, grads = kernel.loss_and_grad(params, {"x": x}, targets, lengths=lengths)
alone = [
    kernel.loss_and_grad(
        params, {"x": inputs["x"][:m, b : b + 1]}, {"y": targets["y"][:m, b : b + 1]}
    )
    for b, m in enumerate(lengths)
]
# the same sums over the same real steps in another order: rounding only
assert np.isclose(loss, sum(a[0] for a in alone), rtol=1e-12)
for name in grads:
    assert np.allclose(grads[name], sum(a[1][name] for a in alone), rtol=1e-10, atol=1e-12)
print(f"padded batch = each sequence alone: loss {loss:.12g}")

# ## 4. Against PyTorch
#
# The same weights in `torch.nn.GRU(num_layers=2, bidirectional=True)` and `nn.Linear`,
# packed with `pack_padded_sequence`: the loss and every gradient agree to 1e-10.

try:
    import torch
except ImportError:  # PyTorch is optional: pip install 'rnnsym[compare]'
    torch = None
if torch is not None:
    size_in, size_h = inputs["x"].shape[-1], params["W_hh_1"].shape[1]
    net = torch.nn.GRU(size_in, size_h, num_layers=2, bidirectional=True, dtype=torch.float64)
    linear = torch.nn.Linear(2 * size_h, params["V"].shape[0], dtype=torch.float64)
    names = {}
    for layer in (0, 1):
        for ours, theirs in (("", ""), ("_b", "_reverse")):
            for p, q in (("W_ih", "weight_ih"), ("W_hh", "weight_hh"), ("b_ih", "bias_ih"),
                         ("b_hh", "bias_hh")):  # fmt: skip
                names[f"{p}{ours}_{layer + 1}"] = getattr(net, f"{q}_l{layer}{theirs}")
    with torch.no_grad():
        for name, tensor in names.items():
            tensor.copy_(torch.tensor(params[name]))
        linear.weight.copy_(torch.tensor(params["V"]))
        linear.bias.copy_(torch.tensor(params["c"]))
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.tensor(inputs["x"]), torch.tensor(lengths), enforce_sorted=False
    )
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(net(packed)[0], total_length=T)
    mask = torch.tensor((np.arange(T)[:, None] < lengths[None, :])[..., None], dtype=torch.float64)
    reference = 0.5 * (((linear(out) - torch.tensor(targets["y"])) ** 2) * mask).sum()
    reference.backward()
    assert np.isclose(loss, reference.item(), rtol=1e-10)
    for name, tensor in names.items():
        assert np.allclose(grads[name], tensor.grad.numpy(), rtol=1e-10, atol=1e-12), name
    assert np.allclose(grads["V"], linear.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    print("torch.nn.GRU(num_layers=2, bidirectional=True) + Linear: the same loss and gradients")
