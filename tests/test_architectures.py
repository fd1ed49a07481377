"""The report's architectures (§3 Figures 4–8, §4 Figures 9–10) against hand-written references.

For every architecture: (1) a Hypothesis property that the generated kernel's loss and every
gradient equal an independent NumPy reference with a hand-written BPTT
(``reference_architectures.py``, which never imports rnnsym); (2) central finite differences
via ``check_gradients`` on a few fixed problems; (3) clear errors for mismatched shapes,
lengths, class indices and ill-formed compositions. Plus the properties the report states:
teacher forcing decouples the steps (Fig. 4), a one-output model ignores padding (Fig. 5),
the seq2seq context C carries the gradient into the encoder (Fig. 8), stacks of any number of
user-defined layers (Fig. 9), and softmax cross-entropy stays finite for logits ~1e3.

Kernels are compiled once per module (``_built``): compilation, not evaluation, dominates.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import reference_architectures as ref
from hypothesis import given
from hypothesis import strategies as st

import rnnsym as rs
from rnnsym.models.compose import random_model_problem
from rnnsym.verify import check_gradients, random_problem

# Tolerance of kernel vs reference. Both compute the same float64 arithmetic, only in a
# different order (the kernel contracts over time and batch in one matrix product, the reference
# accumulates step by step), so they differ by rounding: a few ulps times T·B·size ≲ 1e-13
# relative for these O(1) problems of at most 5 steps. rtol = 1e-9 leaves four orders of margin
# and still catches any wrong term (a missing carry, a transposed weight, an off-by-one step),
# which changes gradients at the 1e-2 level. atol is 1e-12 of the largest entry (at least 1),
# for entries that cancel to ~0.
RTOL = 1e-9
ATOL = 1e-12

sizes_1_4 = st.integers(1, 4)
steps_1_5 = st.integers(1, 5)
batch_1_3 = st.integers(1, 3)
seeds = st.integers(0, 2**16)


def size_dicts(*names: str):
    return st.fixed_dictionaries({name: sizes_1_4 for name in names})


@functools.cache
def _built(name: str):
    """(cell or model, compiled kernel) of a built-in, once per module."""
    made = rs.cells.get(name)
    return made, rs.compile(made)


def assert_close(got, want, what: str, rtol: float = RTOL, scale: float = 0.0) -> None:
    """allclose at rtol, with atol = ATOL times the largest entry, or ``scale`` (the size of
    the terms that cancel in ``want``) where that is larger, and at least 1."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, reference {want.shape}"
    scale = max(1.0, scale, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=ATOL * scale, err_msg=what)


def assert_matches(got, want, rtol: float = RTOL) -> None:
    """(loss, grads) of a kernel equal the reference's, every gradient with its shape."""
    (loss, grads), (ref_loss, ref_grads) = got, want
    assert np.isfinite(loss)
    assert_close(loss, ref_loss, "loss", rtol)
    assert sorted(grads) == sorted(ref_grads)
    for name, value in ref_grads.items():
        assert_close(grads[name], value, f"gradient of {name}", rtol)


def suffixed(params: dict, suffix: str) -> dict:
    """The parameters of one part of a stacked cell, under the part's own names."""
    return {n[: -len(suffix)]: v for n, v in params.items() if n.endswith(suffix)}


# ===== 1. kernels against the hand-written references (Hypothesis) =====


@given(sizes=size_dicts("n", "m", "k"), T=steps_1_5, B=batch_1_3, seed=seeds)
def test_teacher_forcing_matches_reference(sizes, T, B, seed):
    cell, kernel = _built("teacher_forcing")
    params, inputs, targets = random_problem(cell, sizes, T=T, B=B, seed=seed)
    want = ref.teacher_forcing(params, inputs["x"], targets["y"])
    assert_matches(kernel.loss_and_grad(params, inputs, targets), want)


@given(sizes=size_dicts("n", "m", "k"), T=steps_1_5, B=batch_1_3, seed=seeds)
def test_output_feedback_matches_reference(sizes, T, B, seed):
    cell, kernel = _built("output_feedback")
    params, inputs, targets = random_problem(cell, sizes, T=T, B=B, seed=seed)
    want = ref.output_feedback(params, inputs["x"], targets["y"])
    assert_matches(kernel.loss_and_grad(params, inputs, targets), want)
    _, o = ref.output_feedback_forward(params, inputs["x"])
    assert_close(kernel.forward(params, inputs)["o"], o[1:], "o(1..T)")


@given(sizes=size_dicts("n", "m", "k"), T=steps_1_5, B=batch_1_3, seed=seeds, data=st.data())
def test_last_output_matches_reference(sizes, T, B, seed, data):
    model, kernel = _built("last_output")
    params, inputs, targets = random_model_problem(model, sizes, T=T, B=B, seed=seed)
    lengths = np.array(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    want = ref.last_output(params, inputs["x"], targets["y"], lengths)
    assert_matches(kernel.loss_and_grad(params, inputs, targets, lengths=lengths), want)
    if (lengths == T).all():  # lengths=None means every sequence has all T steps
        assert_matches(kernel.loss_and_grad(params, inputs, targets), want)


@given(sizes=size_dicts("n", "m", "k"), T=steps_1_5, B=batch_1_3, seed=seeds)
def test_fixed_input_matches_reference(sizes, T, B, seed):
    cell, kernel = _built("fixed_input")
    params, inputs, targets = random_problem(cell, sizes, T=T, B=B, seed=seed)
    assert inputs["x"].shape == (B, sizes["m"]) and targets["y"].shape == (T, B)
    want = ref.fixed_input(params, inputs["x"], targets["y"])
    assert_matches(kernel.loss_and_grad(params, inputs, targets), want)


@given(sizes=size_dicts("n", "m", "k"), T=steps_1_5, B=batch_1_3, seed=seeds)
def test_bidirectional_matches_reference(sizes, T, B, seed):
    model, kernel = _built("bidirectional")
    params, inputs, targets = random_model_problem(model, sizes, T=T, B=B, seed=seed)
    want = ref.bidirectional(params, inputs["x"], targets["y"])
    assert_matches(kernel.loss_and_grad(params, inputs, targets), want)


@given(sizes=size_dicts("n", "m", "k"), T_x=steps_1_5, T_y=steps_1_5, B=batch_1_3, seed=seeds)
def test_seq2seq_matches_reference(sizes, T_x, T_y, B, seed):
    model, kernel = _built("seq2seq_init")
    params, inputs, targets = random_model_problem(model, sizes, T=T_x, B=B, seed=seed, T_out=T_y)
    assert inputs["x"].shape[0] == T_x and targets["y"].shape[0] == T_y
    want = ref.seq2seq(params, inputs["x"], targets["y"])
    assert_matches(kernel.loss_and_grad(params, inputs, targets), want)


@given(sizes=size_dicts("n_1", "m_1", "n_2", "k_2"), T=steps_1_5, B=batch_1_3, seed=seeds)
def test_stacked_matches_reference(sizes, T, B, seed):
    cell, kernel = _built("stacked")
    params, inputs, targets = random_problem(cell, sizes, T=T, B=B, seed=seed)
    loss, (layer,), top = ref.stacked(
        [suffixed(params, "_1")], ["elman"], suffixed(params, "_2"), inputs["x_1"], targets["y_2"]
    )
    want = {**{f"{n}_1": g for n, g in layer.items()}, **{f"{n}_2": g for n, g in top.items()}}
    assert_matches(kernel.loss_and_grad(params, inputs, targets), (loss, want))


@given(sizes=size_dicts("n", "m", "k", "p"), T=steps_1_5, B=batch_1_3, seed=seeds)
def test_deep_transition_matches_reference(sizes, T, B, seed):
    cell, kernel = _built("deep_transition")
    params, inputs, targets = random_problem(cell, sizes, T=T, B=B, seed=seed)
    want = ref.deep_transition(params, inputs["x"], targets["y"])
    assert_matches(kernel.loss_and_grad(params, inputs, targets), want)


@given(sizes=size_dicts("n", "k"), T=steps_1_5, B=batch_1_3, seed=seeds)
def test_elman_softmax_matches_reference(sizes, T, B, seed):
    cell, kernel = _built("elman_softmax")
    params, inputs, targets = random_problem(cell, sizes, T=T, B=B, seed=seed)
    want = ref.elman_softmax(params, inputs["x"], targets["y"])
    assert_matches(kernel.loss_and_grad(params, inputs, targets), want)


# ----- Fig. 9 with any number of user-defined layers -----


def user_elman_layer() -> rs.Cell:
    """An Elman layer written here with the public API (not the built-in)."""
    cell = rs.Cell("my_elman")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    cell.update(h, rs.tanh(b + W @ h.prev + U @ x))
    return cell


def user_gru_layer() -> rs.Cell:
    """A GRU-like layer (Cho et al. gates, reset applied to h(t−1) before the product)."""
    cell = rs.Cell("my_gru")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    p = {}
    for g in "zrh":
        p[g] = (cell.param(f"W_{g}", n, n), cell.param(f"U_{g}", n, m), cell.param(f"b_{g}", n))
    z = cell.define("z", rs.sigmoid(p["z"][0] @ h.prev + p["z"][1] @ x + p["z"][2]))
    r = cell.define("r", rs.sigmoid(p["r"][0] @ h.prev + p["r"][1] @ x + p["r"][2]))
    cand = cell.define("cand", rs.tanh(p["h"][0] @ (r * h.prev) + p["h"][1] @ x + p["h"][2]))
    cell.update(h, (1 - z) * h.prev + z * cand)
    return cell


def user_top() -> rs.Cell:
    """The top of the stack: an Elman layer with the output o = c + V h and eq. (5)."""
    cell = rs.Cell("my_top")
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    V, c = cell.param("V", k, n), cell.param("c", k)
    cell.update(h, rs.tanh(b + W @ h.prev + U @ x))
    cell.loss(rs.squared_error(cell.output("o", c + V @ h), cell.target("y", k)))
    return cell


USER_LAYERS = {"elman": user_elman_layer, "gru": user_gru_layer}


@functools.cache
def _user_stack(kinds: tuple[str, ...]):
    cell = rs.stack(*(USER_LAYERS[k]() for k in kinds), user_top())
    return cell, rs.compile(cell)


def _user_stack_reference(kinds, params, inputs, targets):
    top = len(kinds) + 1
    layers = [suffixed(params, f"_{i}") for i in range(1, top)]
    loss, layer_grads, top_grads = ref.stacked(
        layers, kinds, suffixed(params, f"_{top}"), inputs["x_1"], targets[f"y_{top}"]
    )
    want = {f"{n}_{top}": g for n, g in top_grads.items()}
    for i, grads in enumerate(layer_grads, 1):
        want |= {f"{n}_{i}": g for n, g in grads.items()}
    return loss, want


@given(
    kinds=st.lists(st.sampled_from(sorted(USER_LAYERS)), min_size=1, max_size=3),
    T=steps_1_5,
    B=batch_1_3,
    seed=seeds,
    data=st.data(),
)
def test_stack_of_user_layers_matches_reference(kinds, T, B, seed, data):
    """2 to 4 layers (Elman or GRU-like, any order) plus the top: Fig. 9, any depth."""
    kinds = tuple(kinds)
    cell, kernel = _user_stack(kinds)
    assert set(cell.states) == {f"h_{i}" for i in range(1, len(kinds) + 2)}
    sizes = data.draw(size_dicts(*sorted(cell.size_symbols)))
    params, inputs, targets = random_problem(cell, sizes, T=T, B=B, seed=seed)
    want = _user_stack_reference(kinds, params, inputs, targets)
    assert_matches(kernel.loss_and_grad(params, inputs, targets), want)


# ===== 2. finite differences (a few fixed problems) =====

CELL_NAMES = [
    "teacher_forcing",
    "output_feedback",
    "fixed_input",
    "stacked",
    "deep_transition",
    "elman_softmax",
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_cell_architecture_finite_differences(name, seed):
    cell, kernel = _built(name)
    params, inputs, targets = random_problem(cell, T=4, B=2, seed=seed)
    report = check_gradients(kernel, params, inputs, targets)
    # default tolerance 1e-6: central differences at eps = 1e-6 are good to ~1e-8 here
    assert report.ok, str(report)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["bidirectional", "seq2seq", "seq2seq_init", "last_output"])
def test_model_architecture_finite_differences(name, seed):
    model, kernel = _built(name)
    params, inputs, targets = random_model_problem(model, T=4, B=3, seed=seed, T_out=6)
    options = {"lengths": np.array([4, 1, 3])} if name == "last_output" else {}
    report = check_gradients(kernel, params, inputs, targets, **options)
    assert report.ok, str(report)


def test_three_layer_user_stack_finite_differences():
    cell, kernel = _user_stack(("gru", "elman"))
    params, inputs, targets = random_problem(cell, T=4, B=2, seed=3)
    report = check_gradients(kernel, params, inputs, targets)
    assert report.ok, str(report)
    assert len(report.errors) == len(params) == 9 + 3 + 5


# ===== Fig. 4: teacher forcing vs free-running =====


def test_teacher_forcing_and_free_running_differ_and_match_their_references():
    tf_cell, tf = _built("teacher_forcing")
    _, of = _built("output_feedback")
    params, inputs, targets = random_problem(tf_cell, T=5, B=2, seed=3)
    x, y = inputs["x"], targets["y"]
    forced = tf.loss_and_grad(params, inputs, targets)
    free = of.loss_and_grad(params, inputs, targets)  # same parameter names and shapes
    assert_matches(forced, ref.teacher_forcing(params, x, y))
    assert_matches(free, ref.output_feedback(params, x, y))
    assert not np.isclose(forced[0], free[0])
    for name in params:  # y(t−1) in place of o(t−1) changes every gradient
        assert not np.allclose(forced[1][name], free[1][name]), name


def test_teacher_forcing_and_free_running_agree_for_one_step():
    """At T = 1 both feed the zero vector y(0) = o(0) = 0: the same loss and gradients."""
    tf_cell, tf = _built("teacher_forcing")
    _, of = _built("output_feedback")
    params, inputs, targets = random_problem(tf_cell, T=1, B=3, seed=4)
    assert_matches(
        tf.loss_and_grad(params, inputs, targets), of.loss_and_grad(params, inputs, targets)
    )


def test_teacher_forcing_kernel_has_no_backward_recurrence():
    """Teacher forcing decouples the steps: no loop over t at all, let alone t = T..1."""
    _, tf = _built("teacher_forcing")
    _, of = _built("output_feedback")
    backward_loop = "for t in range(T - 1, -1, -1)"
    assert backward_loop not in tf.source
    assert re.search(r"for t in range\(", tf.source) is None
    assert backward_loop in of.source


def test_generate_feeding_outputs_back_equals_free_running():
    """Fig. 4 at test time: the teacher-forced kernel fed its own o(t−1) is the free-running one."""
    tf_cell, tf = _built("teacher_forcing")
    _, of = _built("output_feedback")
    params, inputs, _ = random_problem(tf_cell, T=6, B=3, seed=5)
    run = rs.generate(tf, params, steps=6, feed={"y_prev": ("o", "identity")}, inputs=inputs)
    free = of.forward(params, inputs)["o"]
    assert run["o"].shape == free.shape == (6, 3, params["c"].shape[0])
    np.testing.assert_allclose(run["o"], free, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(run["o"], ref.output_feedback_forward(params, inputs["x"])[1][1:])
    assert not run["y_prev"][0].any()  # y(0) = 0
    np.testing.assert_array_equal(run["y_prev"][1:], run["o"][:-1])


# ===== Fig. 5: one output at the end, lengths =====


def test_last_output_padded_batch_equals_each_sequence_alone():
    model, kernel = _built("last_output")
    lengths = np.array([5, 2, 3, 1])
    params, inputs, targets = random_model_problem(model, T=5, B=4, seed=6)
    loss, grads = kernel.loss_and_grad(params, inputs, targets, lengths=lengths)
    alone_loss, alone = 0.0, {n: np.zeros_like(v) for n, v in params.items()}
    for b, length in enumerate(lengths):
        one = {"x": inputs["x"][:length, b : b + 1]}  # B = 1, unpadded, T = its length
        l_b, g_b = kernel.loss_and_grad(params, one, {"y": targets["y"][b : b + 1]})
        alone_loss += l_b
        for name in alone:
            alone[name] += g_b[name]
    assert_matches((loss, grads), (alone_loss, alone))
    assert_matches((loss, grads), ref.last_output(params, inputs["x"], targets["y"], lengths))


def test_last_output_ignores_padding_values():
    model, kernel = _built("last_output")
    lengths = np.array([2, 5, 3])
    params, inputs, targets = random_model_problem(model, T=5, B=3, seed=8)
    padded = inputs["x"].copy()
    rng = np.random.default_rng(9)
    for b, length in enumerate(lengths):
        padded[length:, b] = 1e3 * rng.normal(size=padded[length:, b].shape)
    loss, grads = kernel.loss_and_grad(params, inputs, targets, lengths=lengths)
    loss_p, grads_p = kernel.loss_and_grad(params, {"x": padded}, targets, lengths=lengths)
    assert loss_p == loss
    for name in grads:
        np.testing.assert_array_equal(grads_p[name], grads[name], err_msg=name)
    out, out_p = (kernel.forward(params, {"x": a}, lengths=lengths) for a in (inputs["x"], padded))
    assert out["o"].shape == (3, params["c"].shape[0])
    np.testing.assert_array_equal(out_p["o"], out["o"])


# ===== Fig. 8: sequence to sequence =====


@pytest.mark.parametrize(("T_x", "T_y"), [(4, 7), (6, 2), (1, 3)])
def test_seq2seq_gradient_flows_through_the_context(T_x, T_y):
    model, kernel = _built("seq2seq_init")
    params, inputs, targets = random_model_problem(model, T=T_x, B=2, seed=10, T_out=T_y)
    loss, grads = kernel.loss_and_grad(params, inputs, targets)
    assert_matches((loss, grads), ref.seq2seq(params, inputs["x"], targets["y"]))
    # the encoder is reached only through C = h(T_x); W_e multiplies h(0) = 0 when T_x = 1
    for name in ("W_e", "U_e", "b_e") if T_x > 1 else ("U_e", "b_e"):
        assert np.abs(grads[name]).max() > 1e-6, name
    # the decoder reads x only through C, and C does change its loss
    loss_changed, _ = kernel.loss_and_grad(params, {"x": inputs["x"] + 0.5}, targets)
    assert loss_changed != loss


# ===== softmax cross-entropy with class targets =====


@functools.cache
def _softmax_probe():
    """A stateless cell o = c + z with softmax CE: its input adjoint is ∇_o L itself."""
    cell = rs.Cell("softmax_probe")
    k = cell.dims("k")
    o = cell.output("o", cell.param("c", k) + cell.input("z", k))
    cell.loss(rs.softmax_cross_entropy(o, cell.target("y", k, classes=True)))
    return cell, rs.compile(cell)


@given(
    k=st.integers(1, 6),
    T=steps_1_5,
    B=batch_1_3,
    seed=seeds,
    scale=st.sampled_from([1.0, 30.0, 1e3, 1e4]),
)
def test_softmax_cross_entropy_matches_stable_reference(k, T, B, seed, scale):
    _, kernel = _softmax_probe()
    rng = np.random.default_rng(seed)
    params = {"c": rng.normal(size=k)}
    z = scale * rng.normal(size=(T, B, k))  # logits up to ~4e4: exp would overflow
    y = rng.integers(0, k, size=(T, B))
    loss, grads = kernel.loss_and_grad(params, {"z": z}, {"y": y})
    o = params["c"] + z
    want_loss, want_g_o = ref.softmax_ce(o, y)  # logsumexp with the max subtracted
    assert np.isfinite(loss) and np.isfinite(grads["c"]).all()
    # the loss Σ logsumexp(o) − o[y] cancels terms of size |o| (exactly, to 0, when k = 1)
    assert_close(loss, want_loss, "loss", scale=float(np.abs(o).sum()))
    # o = c + z, so ∇_c L = Σ_{t,b} ∇_{o(t)} L with ∇_o L = softmax(o) − onehot(y)
    assert_close(grads["c"], want_g_o.sum(axis=(0, 1)), "∇_c L")
    # one step of one sequence: ∇_c L is ∇_o L itself
    _, one = kernel.loss_and_grad(params, {"z": z[:1, :1]}, {"y": y[:1, :1]})
    assert_close(one["c"], ref.softmax(o[0, 0]) - np.eye(k)[y[0, 0]], "softmax(o) − onehot(y)")


def test_softmax_input_adjoint_is_softmax_minus_onehot():
    # o = c + z: the input's adjoint is ∇_o L itself (a bug once left it unassigned in vjp)
    _, kernel = _softmax_probe()
    rng = np.random.default_rng(12)
    params, z, y = (
        {"c": rng.normal(size=4)},
        1e3 * rng.normal(size=(3, 2, 4)),
        rng.integers(0, 4, (3, 2)),
    )
    loss, _, input_grads, _ = kernel.module.vjp(params, {"z": z}, {"y": y})
    want_loss, want_g_o = ref.softmax_ce(params["c"] + z, y)
    assert_close(loss, want_loss, "loss")
    assert_close(input_grads["z"], want_g_o, "∇_o L")


@pytest.mark.parametrize("name", ["elman_softmax", "fixed_input"])
def test_softmax_stays_finite_for_huge_logits(name):
    """V and c scaled up so the logits are ~1e3: exp(o) would overflow without the max trick."""
    cell, kernel = _built(name)
    params, inputs, targets = random_problem(cell, T=4, B=3, seed=11)
    params["V"] = params["V"] * 3e3
    params["c"] = params["c"] * 3e3
    reference = ref.elman_softmax if name == "elman_softmax" else ref.fixed_input
    loss, grads = kernel.loss_and_grad(params, inputs, targets)
    fed = {}
    if "y_prev" in cell.fed_back:  # forward() needs y(t−1) given: 1-of-K rows, y(0) = 0
        fed["y_prev"] = ref.shifted(ref.one_hot(targets["y"], params["c"].shape[0]))
    o = kernel.forward(params, {**inputs, **fed})["o"]
    assert np.abs(o).max() > 500
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())
    assert_matches((loss, grads), reference(params, inputs["x"], targets["y"]))


# ===== 3. clear errors =====


def _problem(name: str, T: int = 3, B: int = 2, T_out: int | None = None):
    made, kernel = _built(name)
    if isinstance(made, rs.Model):
        return kernel, *random_model_problem(made, T=T, B=B, seed=0, T_out=T_out)
    return kernel, *random_problem(made, T=T, B=B, seed=0)


def _seq2seq_targets_batch():
    kernel, params, inputs, _ = _problem("seq2seq_init", T=3, B=2)
    kernel.loss_and_grad(params, inputs, {"y": np.zeros((4, 3, 3))})  # k = 3, batch 3 ≠ 2


def _seq2seq_inputs_batch():
    kernel, params, _, targets = _problem("seq2seq_init", T=3, B=2, T_out=4)
    kernel.loss_and_grad(params, {"x": np.zeros((3, 3, 4))}, targets)  # m = 4, batch 3 ≠ 2


def _last_output(lengths=None, y=None):
    kernel, params, inputs, targets = _problem("last_output", T=3, B=2)
    kernel.loss_and_grad(params, inputs, targets if y is None else {"y": y}, lengths=lengths)


def _fixed_input(x=None, y=None):
    kernel, params, inputs, targets = _problem("fixed_input", T=3, B=2)
    inputs = inputs if x is None else {"x": x}
    kernel.loss_and_grad(params, inputs, targets if y is None else {"y": y})


def _elman_softmax_class_out_of_range():
    kernel, params, inputs, targets = _problem("elman_softmax", T=3, B=2)
    y = targets["y"].copy()
    y[2, 1] = 7
    kernel.loss_and_grad(params, inputs, {"y": y})


def _teacher_forcing_ragged():
    kernel, params, inputs, _ = _problem("teacher_forcing", T=3, B=2)
    kernel.loss_and_grad(params, inputs, {"y": np.zeros((4, 2, 3))})


def _bidirectional_ragged():
    kernel, params, inputs, _ = _problem("bidirectional", T=3, B=2)
    kernel.loss_and_grad(params, inputs, {"y": np.zeros((4, 2, 3))})


def _bidirectional_lengths():
    kernel, params, inputs, targets = _problem("bidirectional", T=3, B=2)
    kernel.loss_and_grad(params, inputs, targets, lengths=np.array([1, 4]))


def _bidirectional_missing_param():
    kernel, params, inputs, targets = _problem("bidirectional", T=3, B=2)
    del params["V_g"]
    kernel.loss_and_grad(params, inputs, targets)


def _stacked_input_size():
    kernel, params, _, targets = _problem("stacked", T=3, B=2)
    kernel.loss_and_grad(params, {"x_1": np.zeros((3, 2, 7))}, targets)


RUNTIME_ERRORS = {
    # seq2seq: the context C = h(T_x) has the encoder's batch, the decoder's targets another
    "seq2seq_targets_batch": (
        _seq2seq_targets_batch,
        r"targets\['y'\] of the decoder has shape \(4, 3, 3\), batch 3, but the encoder's "
        r"inputs have batch 2",
    ),
    "seq2seq_inputs_batch": (
        _seq2seq_inputs_batch,
        r"targets\['y'\] of the decoder has shape \(4, 2, 3\), batch 2, but the encoder's "
        r"inputs have batch 3",
    ),
    "lengths_zero": (
        lambda: _last_output(lengths=np.array([0, 3])),
        r"lengths\[0\] = 0; a length must be in 1\.\.3",
    ),
    "lengths_too_long": (
        lambda: _last_output(lengths=np.array([1, 4])),
        r"lengths\[1\] = 4; a length must be in 1\.\.3 \(the inputs have 3 steps\)",
    ),
    "lengths_wrong_shape": (
        lambda: _last_output(lengths=np.array([1, 2, 3])),
        r"lengths has shape \(3,\); expected integers of shape \(2,\)",
    ),
    "lengths_2d": (
        lambda: _last_output(lengths=np.array([[1, 2]])),
        r"lengths has shape \(1, 2\); expected integers of shape \(2,\)",
    ),
    "lengths_float": (
        lambda: _last_output(lengths=np.array([1.0, 2.0])),
        r"lengths has dtype float64; expected integers",
    ),
    "lengths_past_the_end": (
        _bidirectional_lengths,
        r"lengths\[1\] = 4; a length must be in 1..3",
    ),
    "last_output_class_out_of_range": (
        lambda: _last_output(y=np.array([0, 3])),
        r"targets\['y'\]\[1\] = 3 is not a class index; expected 0\.\.2 \(k = 3 classes\)",
    ),
    "last_output_class_negative": (
        lambda: _last_output(y=np.array([-1, 0])),
        r"targets\['y'\]\[0\] = -1 is not a class index",
    ),
    "last_output_class_float": (
        lambda: _last_output(y=np.array([0.0, 1.0])),
        r"targets\['y'\] holds class indices: expected an integer array \(2,\), one per "
        r"sequence, got dtype float64",
    ),
    "last_output_class_shape": (
        lambda: _last_output(y=np.zeros((2, 3), dtype=int)),
        r"targets\['y'\] has shape \(2, 3\); expected class indices of shape \(2,\)",
    ),
    "fixed_input_class_out_of_range": (
        lambda: _fixed_input(y=np.array([[0, 1], [3, 0], [1, 1]])),
        r"targets\['y'\]\[1, 0\] = 3 is not a class index; expected 0\.\.2 \(k = 3 classes\)",
    ),
    "fixed_input_class_float": (
        lambda: _fixed_input(y=np.zeros((3, 2))),
        r"targets\['y'\] holds class indices: expected an integer array \(T, B\), got dtype "
        r"float64",
    ),
    "fixed_input_context_batch": (
        lambda: _fixed_input(x=np.zeros((3, 4))),
        r"inputs\['x'\] has batch 3, but targets\['y'\] has batch 2",
    ),
    "fixed_input_context_size": (
        lambda: _fixed_input(x=np.zeros((2, 5))),
        # m is read from R and x only, one array each: the data sets it, both arrays are named
        r"params\['R'\] has shape \(5, 4\); expected \(n, m\) = \(5, 5\) with m = 5 from "
        r"inputs\['x'\]",
    ),
    "fixed_input_context_as_sequence": (
        lambda: _fixed_input(x=np.zeros((3, 2, 4))),
        r"inputs\['x'\] has shape \(3, 2, 4\); expected .*once per sequence",
    ),
    "elman_softmax_class_out_of_range": (
        _elman_softmax_class_out_of_range,
        r"targets\['y'\]\[2, 1\] = 7 is not a class index; expected 0\.\.2",
    ),
    "teacher_forcing_ragged": (
        _teacher_forcing_ragged,
        r"targets\['y'\] has 4 steps and batch 2, but inputs\['x'\] has 3 steps",
    ),
    "bidirectional_ragged": (_bidirectional_ragged, r"targets\['y'\] has 4 steps and batch 2"),
    "bidirectional_missing_param": (
        _bidirectional_missing_param,
        r"params\['V_g'\] is missing",
    ),
    "stacked_input_size": (
        _stacked_input_size,
        # m_1 is read from U_1 and x_1 only: the data sets it, both arrays are named
        r"params\['U_1'\] has shape \(5, 4\); expected \(n_1, m_1\) = \(5, 7\) with m_1 = 7 "
        r"from inputs\['x_1'\]",
    ),
}


@pytest.mark.parametrize("case", sorted(RUNTIME_ERRORS))
def test_bad_arrays_raise_clear_errors(case):
    call, message = RUNTIME_ERRORS[case]
    with pytest.raises(ValueError, match=message):
        call()


# ----- ill-formed compositions: CellError when the model is defined -----


def head(name: str, reads: dict[str, str], classes: bool = False) -> rs.Cell:
    """A stateless head o = c + Σ V_s s(t) over the states s it reads, with its loss."""
    cell = rs.Cell(name)
    n, k = cell.dims("n k")
    o = cell.param("c", k)
    for state, weight in reads.items():
        o = o + cell.param(weight, k, n) @ cell.input(state, n)
    out = cell.output("o", o)
    y = cell.target("y", k, classes=classes)
    cell.loss(rs.softmax_cross_entropy(out, y) if classes else rs.squared_error(out, y))
    return cell


def layer(name: str, state: str = "h", suffix: str = "", size=None) -> rs.Cell:
    """An Elman layer h(t) = tanh(W h(t−1) + U x(t) + b) under chosen names."""
    cell = rs.Cell(name)
    n, m = cell.dims("n m")
    n = size or n
    x, h = cell.input("x", m), cell.state(state, n)
    W, U = cell.param(f"W{suffix}", n, n), cell.param(f"U{suffix}", n, m)
    cell.update(h, rs.tanh(W @ h.prev + U @ x + cell.param(f"b{suffix}", n)))
    return cell


def decoder(suffix: str = "_d", stateless: bool = False) -> rs.Cell:
    cell = rs.Cell("my_decoder")
    n, k = cell.dims("n k")
    y = cell.target("y", k)
    V = cell.param("V", k, n)
    if stateless:
        s = cell.define("s", rs.tanh(cell.param(f"U{suffix}", n, k) @ y.prev))
    else:
        s = cell.state("s", n)
        W, U = cell.param(f"W{suffix}", n, n), cell.param(f"U{suffix}", n, k)
        cell.update(s, rs.tanh(W @ s.prev + U @ y.prev))
    cell.loss(rs.squared_error(cell.output("o", V @ s), y))
    return cell


def _top_with_input_size(size: int) -> rs.Cell:
    cell = rs.Cell("fixed_top")
    n, k = cell.dims("n k")
    x, h = cell.input("x", size), cell.state("h", n)
    cell.update(h, rs.tanh(cell.param("W", n, n) @ h.prev + cell.param("U", n, size) @ x))
    cell.loss(rs.squared_error(cell.output("o", cell.param("V", k, n) @ h), cell.target("y", k)))
    return cell


DEFINITION_ERRORS = {
    "bidirectional_head_reads_unknown_state": (
        lambda: rs.bidirectional(
            layer("fwd", "h"), layer("bwd", "g", "_g"), head("my_head", {"h": "V", "q": "V_q"})
        ),
        r"head 'my_head' reads input 'q', which is not a state of the model's layers; .*"
        r"h \(fwd\), g \(bwd\)",
    ),
    "bidirectional_duplicate_params": (
        lambda: rs.bidirectional(
            layer("fwd", "h"), layer("bwd", "g"), head("my_head", {"h": "V", "g": "V_g"})
        ),
        r"parameter 'W' is declared by both the forward cell 'fwd' and the backward cell 'bwd'",
    ),
    "bidirectional_head_param_clashes_with_layer": (
        lambda: rs.bidirectional(
            layer("fwd", "h"), layer("bwd", "g", "_g"), head("my_head", {"h": "W", "g": "V_g"})
        ),
        r"parameter 'W' is declared by both the forward cell 'fwd' and the head cell 'my_head'",
    ),
    "bidirectional_same_state": (
        lambda: rs.bidirectional(
            layer("fwd", "h"), layer("bwd", "h", "_g"), head("my_head", {"h": "V"})
        ),
        r"forward and backward layers both have state\(s\) h",
    ),
    "bidirectional_head_ignores_backward_layer": (
        lambda: rs.bidirectional(
            layer("fwd", "h"), layer("bwd", "g", "_g"), head("my_head", {"h": "V"})
        ),
        r"the head reads no state of the backward layer 'bwd'; its inputs should include g",
    ),
    "bidirectional_head_has_state": (
        lambda: rs.bidirectional(layer("fwd", "h"), layer("bwd", "g", "_g"), rs.cells.elman()),
        r"head 'elman' has state\(s\) h; a head is applied at each step on its own",
    ),
    "bidirectional_layer_has_loss": (
        lambda: rs.bidirectional(rs.cells.elman(), layer("bwd", "g", "_g"), head("hd", {"g": "V"})),
        r"forward layer 'elman' has output o, target y, a loss",
    ),
    "bidirectional_layer_with_a_loss": (
        lambda: rs.bidirectional(rs.cells.elman(), rs.cells.elman(output=False)),
        r"layer 'elman' has outputs, targets or a loss",
    ),
    "stack_layer_with_loss": (
        lambda: rs.stack(rs.cells.elman(), user_top()),
        r"stack\(\): layer 1 'elman' has output o, target y, a loss; a layer of a composed "
        r"model has only inputs, states and parameters",
    ),
    "stack_middle_layer_with_loss": (
        lambda: rs.stack(user_elman_layer(), rs.cells.elman(), user_top()),
        r"stack\(\): layer 2 'elman' has output o, target y, a loss",
    ),
    "stack_size_mismatch": (
        lambda: rs.stack(layer("narrow", size=3), _top_with_input_size(4)),
        r"stack\(\): layer 2 'fixed_top' reads input x of size 4, but layer 1's state h_1 has "
        r"size 3",
    ),
    "stack_of_one": (lambda: rs.stack(user_top()), r"stack\(\) needs at least two cells, got 1"),
    "seq2seq_duplicate_params": (
        lambda: rs.seq2seq(layer("enc", "h", "_d"), decoder("_d")),
        r"parameter 'W_d' is declared by both the encoder cell 'enc' and the decoder cell "
        r"'my_decoder'",
    ),
    "seq2seq_encoder_with_loss": (
        lambda: rs.seq2seq(rs.cells.elman(), decoder()),
        r"seq2seq\(\): encoder 'elman' has output o, target y, a loss",
    ),
    "seq2seq_decoder_without_state": (
        lambda: rs.seq2seq(layer("enc", "h", "_e"), decoder(stateless=True)),
        r"seq2seq\(\): the decoder 'my_decoder' has no state",
    ),
    "last_output_duplicate_params": (
        lambda: rs.last_output(layer("enc"), head("final", {"h": "U"}, classes=True)),
        r"parameter 'U' is declared by both the layer cell 'enc' and the head cell 'final'",
    ),
    "last_output_head_has_state": (
        lambda: rs.last_output(layer("enc"), rs.cells.elman()),
        r"last_output\(\): head 'elman' has state\(s\) h",
    ),
    "last_output_head_reads_unknown_state": (
        lambda: rs.last_output(layer("enc"), head("final", {"s": "V"}, classes=True)),
        r"head 'final' reads input 's', which is not a state of the model's layers",
    ),
}


@pytest.mark.parametrize("case", sorted(DEFINITION_ERRORS))
def test_ill_formed_compositions_raise_cell_errors(case):
    build, message = DEFINITION_ERRORS[case]
    with pytest.raises(rs.CellError, match=message):
        build()
