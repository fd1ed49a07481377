"""The pieces composition is built on: vjp() (adjoints of the inputs and of h(0)), cells
without state, fed-back targets, context inputs, class-index targets, and the CLI of issue 5.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnsym as rs
from rnnsym.cli import main
from rnnsym.verify import random_problem

ALL_CELLS = [name for name, b in rs.cells.BUILTIN.items() if isinstance(b.make(), rs.Cell)]


@pytest.fixture(scope="module")
def kernels():
    return {}


def _kernel(kernels, name):
    if name not in kernels:
        kernels[name] = rs.compile(rs.cells.get(name))
    return kernels[name]


@pytest.mark.parametrize("name", ALL_CELLS)
def test_vjp_input_and_initial_state_adjoints_match_finite_differences(kernels, name):
    # central differences in float64: truncation O(eps^2) ~ 1e-12 and rounding
    # ~1e-16/eps ~ 1e-10 relative to the loss; 1e-6 absolute on O(1) adjoints flags real errors
    kernel = _kernel(kernels, name)
    cell = kernel.cell
    params, inputs, targets = random_problem(cell, T=3, B=2, seed=4)
    rng = np.random.default_rng(1)
    zero_state_adjoints = kernel.module.vjp(params, inputs, targets)[3]
    assert set(zero_state_adjoints) == set(cell.states)
    h0 = {n: rng.normal(size=a.shape) for n, a in zero_state_adjoints.items()}
    loss, grads, g_in, g_h0 = kernel.module.vjp(params, inputs, targets, h0)
    loss2, grads2 = kernel.loss_and_grad(params, inputs, targets, h0)
    assert loss == pytest.approx(loss2, rel=1e-14)
    for n in grads2:
        np.testing.assert_allclose(grads[n], grads2[n], rtol=1e-13, atol=1e-15)
    eps = 1e-6

    def loss_at(new_inputs, new_h0):
        return kernel.loss_and_grad(params, new_inputs, targets, new_h0)[0]

    for n, array in inputs.items():  # every entry (a few dozen at these sizes)
        assert g_in[n].shape == array.shape
        for index in np.ndindex(array.shape):
            plus, minus = array.copy(), array.copy()
            plus[index] += eps
            minus[index] -= eps
            numeric = (loss_at({**inputs, n: plus}, h0) - loss_at({**inputs, n: minus}, h0)) / (
                2 * eps
            )
            assert g_in[n][index] == pytest.approx(numeric, abs=1e-6)
    for n, array in h0.items():
        assert g_h0[n].shape == array.shape
        for index in np.ndindex(array.shape):
            plus, minus = array.copy(), array.copy()
            plus[index] += eps
            minus[index] -= eps
            numeric = (loss_at(inputs, {**h0, n: plus}) - loss_at(inputs, {**h0, n: minus})) / (
                2 * eps
            )
            assert g_h0[n][index] == pytest.approx(numeric, abs=1e-6)


def test_stateless_cell_kernel_has_no_time_loop(kernels):
    source = _kernel(kernels, "teacher_forcing").source
    assert "for t in range" not in source
    assert "no state: the steps decouple" in source
    assert "for t in range(T - 1, -1, -1)" in _kernel(kernels, "output_feedback").source


def test_fed_back_target_is_the_shifted_target(kernels):
    kernel = _kernel(kernels, "teacher_forcing")
    params, inputs, targets = random_problem(kernel.cell, T=4, B=2, seed=0)
    y = targets["y"]
    shifted = np.concatenate([np.zeros_like(y[:1]), y[:-1]])
    explicit = kernel.loss_and_grad(params, {**inputs, "y_prev": shifted}, targets)
    filled = kernel.loss_and_grad(params, inputs, targets)
    assert explicit[0] == filled[0]
    with pytest.raises(ValueError, match=r"inputs\['y_prev'\] is missing.*fed-back y\(t-1\)"):
        kernel.forward(params, inputs)


def test_class_targets_are_checked(kernels):
    kernel = _kernel(kernels, "elman_softmax")
    params, inputs, targets = random_problem(kernel.cell, T=3, B=2, seed=0)
    K = params["V"].shape[0]
    bad = targets["y"].copy()
    bad[2, 1] = K
    with pytest.raises(ValueError, match=rf"targets\['y'\]\[2, 1\] = {K} is not a class index"):
        kernel.loss_and_grad(params, inputs, {"y": bad})
    with pytest.raises(ValueError, match=r"targets\['y'\] holds class indices.*float64"):
        kernel.loss_and_grad(params, inputs, {"y": targets["y"].astype(float)})
    with pytest.raises(ValueError, match=r"targets\['y'\] has shape \(3, 2, 1\)"):
        kernel.loss_and_grad(params, inputs, {"y": targets["y"][..., None]})


def test_class_targets_equal_one_hot_probabilities():
    # the same cell with a probability-vector target: one-hot rows give the same loss/grads
    cell = rs.Cell("dense")
    n, k = cell.dims("n k")
    x, h = cell.input("x", k), cell.state("h", n)
    W, U, V = cell.param("W", n, n), cell.param("U", n, k), cell.param("V", k, n)
    cell.update(h, rs.tanh(W @ h.prev + U @ x))
    cell.loss(rs.softmax_cross_entropy(cell.output("o", V @ h), cell.target("y", k)))
    dense = rs.compile(cell)
    sparse = rs.compile(rs.cells.get("elman_softmax"))
    params, inputs, targets = random_problem(sparse.cell, sizes={"n": 3, "k": 4}, T=3, B=2)
    one_hot = np.eye(4)[targets["y"]]
    p = {n: params[n] for n in ("W", "U", "V")}
    p_sparse = {**p, "b": np.zeros(3), "c": np.zeros(4)}
    loss_d, grads_d = dense.loss_and_grad(p, inputs, {"y": one_hot})
    loss_s, grads_s = sparse.loss_and_grad(p_sparse, inputs, targets)
    assert loss_s == pytest.approx(loss_d, rel=1e-13)
    for n in p:
        np.testing.assert_allclose(grads_s[n], grads_d[n], rtol=1e-12, atol=1e-14)


def test_context_input_batch_is_checked(kernels):
    kernel = _kernel(kernels, "fixed_input")
    params, inputs, targets = random_problem(kernel.cell, T=3, B=2, seed=0)
    assert inputs["x"].shape[0] == 2  # (B, m): once per sequence
    once = kernel.loss_and_grad(params, inputs, targets)
    single = kernel.loss_and_grad(params, {"x": inputs["x"][:1]}, {"y": targets["y"][:, :1]})
    assert np.isfinite(single[0]) and np.isfinite(once[0])
    with pytest.raises(ValueError, match=r"inputs\['x'\] has batch 3, but targets\['y'\]"):
        kernel.loss_and_grad(params, {"x": np.zeros((3, inputs["x"].shape[1]))}, targets)
    with pytest.raises(ValueError, match=r"inputs\['x'\] has shape \(3, 2, 4\).*once per seq"):
        kernel.loss_and_grad(params, {"x": np.zeros((3, 2, 4))}, targets)


def test_generated_source_is_deterministic():
    for name in ("teacher_forcing", "fixed_input", "stacked"):
        assert rs.compile(rs.cells.get(name)).source == rs.compile(rs.cells.get(name)).source


def test_a_layer_with_a_loss_is_refused():
    with pytest.raises(rs.CellError, match=r"layer 1 'elman' has output o, target y, a loss"):
        rs.stack(rs.cells.get("elman"), rs.cells.get("elman"))


def test_model_refuses_forward_mode():
    with pytest.raises(ValueError, match="mode='forward'.*reverse mode only"):
        rs.compile(rs.cells.get("seq2seq_init"), mode="forward")


def test_cli_derives_and_verifies_a_model(capsys):
    assert main(["derive", "last_output"]) == 0
    out = capsys.readouterr().out
    assert "How the adjoints are chained" in out
    assert "scalar oracle" in out and "all checks passed" in out


def test_cli_derive_model_latex_no_verify(capsys):
    assert main(["derive", "bidirectional", "--latex", "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert r"\begin{align}" in out and "opposite directions" in out


def test_cli_braket_refuses_a_model(capsys):
    assert main(["braket", "seq2seq_init"]) == 2
    assert "model of several cells" in capsys.readouterr().err


def test_cli_demo_apple_learns_the_sentence(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "apple", "--steps", "200"]) == 0
    out = capsys.readouterr().out
    assert "predicted: This is an apple ." in out
    assert "learned the sentence exactly" in out
    assert "step 1 .. 200" in out


def test_demo_loss_decreases_and_is_from_the_kernel():
    from rnnsym.demo import apple

    result = apple(steps=100, seed=3)
    assert result.learned
    assert result.losses[-1] < 0.05 * result.losses[0]
    assert np.all(np.diff(result.losses[10:]) <= 1e-12)


def test_demo_rejects_bad_options():
    from rnnsym.demo import apple

    with pytest.raises(ValueError, match="lr must be positive, got -1"):
        apple(lr=-1)
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        apple(steps=0)


def test_nan_padding_after_a_sequence_end_reaches_nothing():
    from rnnsym.models.compose import random_model_problem

    model = rs.cells.get("last_output")
    kernel = model.compile()
    params, inputs, targets = random_model_problem(model, T=4, B=2, seed=5)
    lengths = np.array([2, 4])
    loss, grads = kernel.loss_and_grad(params, inputs, targets, lengths=lengths)
    padded = {"x": inputs["x"].copy()}
    padded["x"][2:, 0] = np.nan
    loss_nan, grads_nan = kernel.loss_and_grad(params, padded, targets, lengths=lengths)
    assert loss_nan == loss
    for name in grads:
        np.testing.assert_array_equal(grads_nan[name], grads[name])
    assert np.isnan(padded["x"][2:, 0]).all()  # the caller's array is untouched


def _layer_with_state(name: str) -> rs.Cell:
    cell = rs.Cell(f"layer_{name}")
    n, m = cell.dims("n m")
    x, s = cell.input("x", m), cell.state(name, n)
    W, U = cell.param("W", n, n), cell.param("U", n, m)
    cell.update(s, rs.tanh(W @ s.prev + U @ x))
    return cell


def test_a_layer_state_named_g_stacks_and_goes_both_ways():
    # the report names the backward state g; suffixing it must not give g_1 or g_b, which
    # read as adjoints in generated code and are refused as names
    from rnnsym.verify import check_gradients

    top = rs.Cell("top")
    n, k = top.dims("n k")
    h = top.state("h", n)
    x = top.input("x", n)
    W, U, V = top.param("W", n, n), top.param("U", n, n), top.param("V", k, n)
    top.update(h, rs.tanh(W @ h.prev + U @ x))
    top.loss(rs.squared_error(top.output("o", V @ h), top.target("y", k)))
    stacked = rs.stack(_layer_with_state("g"), top)
    assert set(stacked.states) == {"g1", "h_2"}
    # central differences, check_gradients' documented tolerance (1e-6 relative + rounding)
    assert check_gradients(rs.compile(stacked), *random_problem(stacked, T=3, B=2)).ok
    head = rs.Cell("head")
    n, k = head.dims("n k")
    g, gb = head.input("g", n), head.input("gb", n)
    V, Vb = head.param("V", k, n), head.param("Vb", k, n)
    head.loss(rs.squared_error(head.output("o", V @ g + Vb @ gb), head.target("y", k)))
    model = rs.bidirectional(_layer_with_state("g"), head=head)
    assert "gb" in model.parts["backward"].cell.states
