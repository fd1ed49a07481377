"""Models that nest (issue 13 §1): stacks of bidirectional layers, a model as a layer, a head on
top, and padded batches of sequences of different lengths.

The references are independent: ``torch.nn.GRU(num_layers=2, bidirectional=True)`` and
``torch.nn.LSTM(num_layers=2)`` with ``torch.nn.Linear`` and autograd, with
``pack_padded_sequence`` for the padded batches; central finite differences; and each
sequence of a padded batch run alone.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnsym as rs
from rnnsym.errors import CellError
from rnnsym.models.nested import NestedModel, reverse_each

torch = pytest.importorskip("torch")

T, B, M, N, K = 6, 3, 4, 3, 2
LENGTHS = np.array([6, 2, 4])


def readout(name: str = "readout") -> rs.Cell:
    """A head: o(t) = V z(t) + c and the squared error, z the top layer's output."""
    head = rs.Cell(name)
    n, k = head.dims("n k")
    z = head.input("z", n)
    V, c = head.param("V", k, n), head.param("c", k)
    head.loss(rs.squared_error(head.output("o", V @ z + c), head.target("y", k)))
    return head


def _torch_names(bidirectional: bool):
    directions = [("", ""), ("_b", "_reverse")] if bidirectional else [("", "")]
    ours = [("W_ih", "weight_ih"), ("W_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh")]
    for layer in range(2):
        for suffix, theirs_suffix in directions:
            for mine, theirs in ours:
                yield f"{mine}{suffix}_{layer + 1}", f"{theirs}_l{layer}{theirs_suffix}"


def _against_torch(kind: str, lengths):
    torch.manual_seed(0)
    bidirectional = kind == "gru"
    layer = getattr(rs.cells, kind)(output=False)
    if bidirectional:  # the most common recurrent encoder, through the public API
        model = rs.stack(
            rs.bidirectional(layer, layer), rs.bidirectional(layer, layer), head=readout()
        )
        net = torch.nn.GRU(M, N, num_layers=2, bidirectional=True, dtype=torch.float64)
    else:
        model = rs.stack(layer, layer, head=readout())
        net = torch.nn.LSTM(M, N, num_layers=2, dtype=torch.float64)
    linear = torch.nn.Linear(2 * N if bidirectional else N, K, dtype=torch.float64)
    names = dict(_torch_names(bidirectional))
    params = {mine: getattr(net, theirs).detach().numpy().copy() for mine, theirs in names.items()}
    params |= {"V": linear.weight.detach().numpy().copy(), "c": linear.bias.detach().numpy().copy()}
    assert set(params) == set(model.params)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(T, B, M)), rng.normal(size=(T, B, K))
    loss, grads = rs.compile(model).loss_and_grad(params, {"x": x}, {"y": y}, lengths=lengths)

    xt, yt = torch.tensor(x), torch.tensor(y)
    if lengths is None:
        out, _ = net(xt)
        mask = torch.ones(T, B, 1, dtype=torch.float64)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.tensor(lengths), enforce_sorted=False
        )
        out, _ = net(packed)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
        mask = (torch.arange(T)[:, None] < torch.tensor(lengths)[None, :]).double()[..., None]
    reference = 0.5 * (((linear(out) - yt) ** 2) * mask).sum()
    reference.backward()
    expected = {mine: getattr(net, theirs).grad.numpy() for mine, theirs in names.items()}
    expected |= {"V": linear.weight.grad.numpy(), "c": linear.bias.grad.numpy()}
    # two float64 computations of the same numbers in a different order: ~1e-15 apart
    assert loss == pytest.approx(reference.item(), rel=1e-10)
    for name, want in expected.items():
        np.testing.assert_allclose(grads[name], want, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_two_layer_bidirectional_gru_equals_torch(lengths):
    _against_torch("gru", lengths)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_two_layer_lstm_with_a_linear_readout_equals_torch(lengths):
    _against_torch("lstm", lengths)


def _user_layer(name: str = "user") -> rs.Cell:
    """A layer the library does not ship: h = tanh(W h(t−1) + U x) ∘ σ(w ∘ h(t−1))."""
    cell = rs.Cell(name)
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, w = cell.param("W", n, n), cell.param("U", n, m), cell.param("w", n)
    cell.update(h, rs.tanh(W @ h.prev + U @ x) * rs.sigmoid(w * h.prev))
    return cell


def _nested_problem(model: NestedModel, seed: int = 0):
    return model.random_problem(T=T, B=B, seed=seed, size=N, inputs=M)


def test_a_model_is_a_layer_anywhere_and_its_gradients_match_finite_differences():
    # a bidirectional layer whose forward direction is itself a stack of a user cell and an
    # Elman layer, stacked under a GRU layer, with a head: nests three deep
    inner = rs.stack(_user_layer(), rs.cells.elman(output=False))
    model = rs.stack(
        rs.bidirectional(inner, rs.cells.gru(output=False)),
        rs.cells.elman(output=False),
        head=readout(),
    )
    assert isinstance(model, NestedModel)
    text = model.describe()
    for part in ("both ways", "run backwards", "user", "gru_layer", "head readout"):
        assert part in text, text
    kernel = rs.compile(model)
    params, inputs, targets = _nested_problem(model)
    for lengths in (None, LENGTHS):
        loss, grads, input_grads = kernel.vjp(params, inputs, targets, lengths=lengths)
        # central differences, eps = 1e-6: truncation ~1e-12 and rounding ~1e-10 relative for
        # these O(1) smooth losses; 1e-6 relative flags any wrong term
        eps = 1e-6
        for name, value in params.items():
            for index in [(0,) * value.ndim, tuple(s - 1 for s in value.shape)]:
                shifted = [dict(params), dict(params)]
                for sign, p in zip((1, -1), shifted, strict=True):
                    p[name] = value.copy()
                    p[name][index] += sign * eps
                up, down = (kernel.loss_and_grad(p, inputs, targets, lengths)[0] for p in shifted)
                numeric = (up - down) / (2 * eps)
                assert grads[name][index] == pytest.approx(numeric, rel=1e-6, abs=1e-8), name
        x = inputs["x"]
        for index in [(0, 0, 0), (1, 2, 3), (T - 1, 1, 1)]:
            up, down = x.copy(), x.copy()
            up[index] += eps
            down[index] -= eps
            numeric = (
                kernel.loss_and_grad(params, {"x": up}, targets, lengths)[0]
                - kernel.loss_and_grad(params, {"x": down}, targets, lengths)[0]
            ) / (2 * eps)
            assert input_grads["x"][index] == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_padding_reaches_nothing_each_sequence_as_if_alone():
    layer = rs.cells.gru(output=False)
    model = rs.stack(rs.bidirectional(layer, layer), layer, head=readout())
    kernel = rs.compile(model)
    params, inputs, targets = _nested_problem(model, seed=3)
    x = inputs["x"].copy()
    for b, length in enumerate(LENGTHS):
        x[length:, b] = np.nan  # padding that would poison any sum it reached
    loss, grads, input_grads = kernel.vjp(params, {"x": x}, targets, lengths=LENGTHS)
    assert np.isfinite(loss)
    total_loss, total = 0.0, {n: 0.0 for n in grads}
    for b, length in enumerate(LENGTHS):
        alone = kernel.loss_and_grad(
            params, {"x": inputs["x"][:length, b : b + 1]}, {"y": targets["y"][:length, b : b + 1]}
        )
        total_loss += alone[0]
        total = {n: total[n] + alone[1][n] for n in total}
        assert np.all(input_grads["x"][length:, b] == 0)
    # the same sums over the same real steps, in another order: rounding only
    assert loss == pytest.approx(total_loss, rel=1e-12)
    for name, value in total.items():
        np.testing.assert_allclose(grads[name], value, rtol=1e-10, atol=1e-12, err_msg=name)


def test_reverse_each_reverses_within_each_length():
    a = np.arange(5)[:, None, None] + 10 * np.arange(2)[None, :, None]
    got = reverse_each(a, np.array([5, 3]))[..., 0]
    assert got[:, 0].tolist() == [4, 3, 2, 1, 0]
    assert got[:, 1].tolist() == [12, 11, 10, 13, 14]  # steps past the end stay where they are
    np.testing.assert_array_equal(
        reverse_each(reverse_each(a, np.array([5, 3])), np.array([5, 3])), a
    )


def test_a_state_named_g_nests_too():
    layer = rs.Cell("g_layer")
    n, m = layer.dims("n m")
    x, g = layer.input("x", m), layer.state("g", n)
    layer.update(g, rs.tanh(layer.param("W", n, n) @ g.prev + layer.param("U", n, m) @ x))
    model = rs.stack(rs.bidirectional(layer, layer), head=readout())
    # g_1 and g_b read as adjoints in generated code: the states become g1 and gb_1
    assert set(model.params) == {"W_1", "U_1", "W_b_1", "U_b_1", "V", "c"}
    states = {s for leaf in model.body.cells() for s in leaf.cell.states}
    assert states == {"g1", "gb_1"}
    kernel = rs.compile(model)
    params, inputs, targets = _nested_problem(model)
    assert np.isfinite(kernel.loss_and_grad(params, inputs, targets)[0])


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: rs.stack(rs.cells.gru(), rs.cells.gru(output=False), head=readout()),
            "has outputs, targets or a loss",
        ),
        (
            lambda: rs.stack(rs.stack(rs.cells.gru(output=False), head=readout()), head=readout()),
            "has a head",
        ),
        (lambda: rs.stack(rs.cells.gru(output=False), head=rs.cells.elman()), "has state"),
        (
            lambda: rs.bidirectional(rs.cells.get("bidirectional"), rs.cells.gru(output=False)),
            "has a head",
        ),
        (
            lambda: rs.stack(rs.cells.gru(output=False), head="readout"),
            "head must be an rnnsym.Cell",
        ),
    ],
    ids=[
        "layer_with_loss",
        "model_with_head_as_layer",
        "head_with_state",
        "fig7_model_as_direction",
        "head_not_a_cell",
    ],
)
def test_ill_formed_nesting_is_refused_clearly(build, message):
    with pytest.raises(CellError, match=message):
        build()


def test_a_parameter_name_in_two_cells_is_refused():
    head = rs.Cell("readout")
    n, k = head.dims("n k")
    z = head.input("z", n)
    head.loss(
        rs.squared_error(head.output("o", head.param("W_ih_1", k, n) @ z), head.target("y", k))
    )
    message = "parameter 'W_ih_1' is declared by both 'gru_layer_1' and 'readout'"
    with pytest.raises(CellError, match=message):
        rs.stack(rs.cells.gru(output=False), head=head)


def test_a_layer_without_head_does_not_compile_and_bad_arrays_are_named():
    layer = rs.cells.gru(output=False)
    with pytest.raises(ValueError, match="layer without a head"):
        rs.compile(rs.bidirectional(layer, layer))
    model = rs.stack(layer, head=readout())
    kernel = rs.compile(model)
    params, inputs, targets = _nested_problem(model)
    with pytest.raises(ValueError, match=r"params\['W_ih_1'\] is missing"):
        kernel.loss_and_grad({n: v for n, v in params.items() if n != "W_ih_1"}, inputs, targets)
    with pytest.raises(ValueError, match=r"lengths\[1\] = 9; a length must be in 1..6"):
        kernel.loss_and_grad(params, inputs, targets, lengths=np.array([6, 9, 1]))
    shape = r"lengths has shape \(2,\); expected integers of shape \(3,\)"
    with pytest.raises(ValueError, match=shape):
        kernel.loss_and_grad(params, inputs, targets, lengths=np.array([6, 2]))
    with pytest.raises(ValueError, match=r"inputs\['x'\] has shape \(6, 3\); expected"):
        kernel.loss_and_grad(params, {"x": inputs["x"][..., 0]}, targets)


def test_the_report_bidirectional_model_takes_lengths():
    # Fig. 7's model (h forward, g backward, a head reading both by name): g starts at each
    # sequence's own end, and the padding, NaN here, reaches nothing
    from rnnsym.models import random_model_problem

    model = rs.cells.get("bidirectional")
    kernel = rs.compile(model)
    params, inputs, targets = random_model_problem(model, T=T, B=B, seed=2)
    x = inputs["x"].copy()
    for b, length in enumerate(LENGTHS):
        x[length:, b] = np.nan
    loss, grads = kernel.loss_and_grad(params, {"x": x}, targets, lengths=LENGTHS)
    alone = [
        kernel.loss_and_grad(
            params, {"x": inputs["x"][:n, b : b + 1]}, {"y": targets["y"][:n, b : b + 1]}
        )
        for b, n in enumerate(LENGTHS)
    ]
    _assert_same_as_alone(loss, grads, alone)


@pytest.mark.parametrize("name", ["seq2seq", "seq2seq_init"])
def test_seq2seq_takes_input_and_output_lengths(name):
    # C is the encoder's state at each input's own end; the decoder's loss counts each
    # output's real steps; NaN padding on both sides reaches nothing
    from rnnsym.models import random_model_problem

    model = rs.cells.get(name)
    kernel = rs.compile(model)
    params, inputs, targets = random_model_problem(model, T=5, B=3, seed=0, T_out=4)
    _assert_seq2seq_padding_reaches_nothing(kernel, params, inputs, targets)
    with pytest.raises(ValueError, match=r"a pair \(input lengths, output lengths\)"):
        kernel.loss_and_grad(params, inputs, targets, lengths=np.array([5, 2, 3]))


def test_cli_derives_and_checks_a_nested_model(tmp_path, capsys):
    from rnnsym.cli import main

    path = tmp_path / "encoder.py"
    path.write_text(
        "import rnnsym as rs\n"
        "def encoder():\n"
        "    head = rs.Cell('readout')\n"
        "    n, k = head.dims('n k')\n"
        "    z = head.input('z', n)\n"
        "    o = head.output('o', head.param('V', k, n) @ z + head.param('c', k))\n"
        "    head.loss(rs.squared_error(o, head.target('y', k)))\n"
        "    gru = rs.cells.gru(output=False)\n"
        "    return rs.stack(rs.bidirectional(gru, gru), gru, head=head)\n",
        encoding="utf-8",
    )
    assert main(["derive", f"{path}:encoder", "--T", "3"]) == 0
    out = capsys.readouterr().out
    assert "model 'stack_bi_gru_layer_gru_layer'" in out and "run backwards in time" in out
    assert "== gru_layer_b_1 ==" in out and "== readout ==" in out  # every cell derived
    assert "padded batch, lengths [3, 1]" in out and "result: all checks passed" in out
    assert main(["graph", f"{path}:encoder", "--T", "3"]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith('digraph "stack_bi_gru_layer_gru_layer"')
    assert 'subgraph "cluster_gru_layer_b_1"' in dot and "runs t = 3..1" in dot


def test_the_unrolled_graph_of_a_nested_model():
    layer = rs.cells.elman(output=False)
    model = rs.stack(rs.bidirectional(layer, layer), head=readout())
    graph = rs.unroll(model, 3)
    names = {n.name for n in graph.nodes}
    # each direction in its own time order: the backward chain starts after T, at h(T + 1)
    assert {"elman_layer_1.h_1_0", "elman_layer_b_1.h_b_1_4"} <= names
    edges = {(e.source, e.target) for e in graph.edges}
    assert ("elman_layer_1.h_1_1", "elman_layer_1.h_1_2") in edges  # forward: t -> t + 1
    assert ("elman_layer_b_1.h_b_1_2", "elman_layer_b_1.h_b_1_1") in edges  # backward: t -> t - 1
    # the two directions meet in a concatenation at each step, which the head reads
    for t in (1, 2, 3):
        assert (f"elman_layer_1.h_1_{t}", f"z1_{t}") in edges
        assert (f"elman_layer_b_1.h_b_1_{t}", f"z1_{t}") in edges
        assert (f"z1_{t}", f"readout.o_{t}") in edges
        assert (f"x_{t}", f"elman_layer_b_1.h_b_1_{t}") in edges  # both read the same x(t)
    assert sum(n.kind == "loss" for n in graph.nodes) == 3
    with pytest.raises(rs.RnnsymError, match="T_out is the decoder length"):
        rs.unroll(model, 3, T_out=4)


def test_the_scalar_oracle_of_a_nested_model_agrees_and_catches_a_wrong_gradient(monkeypatch):
    # sympy.diff node by node over the whole model unrolled, in exact arithmetic, against the
    # float64 kernel: 10 digits required (float64 carries ~16; a few steps cost one or two)
    from rnnsym.models.nested import NestedKernel
    from rnnsym.verify.nested import nested_oracle

    layer = rs.cells.gru(output=False)
    model = rs.stack(rs.bidirectional(layer, layer), rs.cells.elman(output=False), head=readout())
    report = nested_oracle(model, T=3)
    assert report.ok, report
    assert min(report.agreement.values()) >= 13  # the kernel is right to rounding
    assert set(report.agreement) == set(model.params)

    original = NestedKernel.loss_and_grad

    def off_by_a_little(self, *args, **kwargs):  # a kernel wrong in one entry, by 1e-6
        loss, grads = original(self, *args, **kwargs)
        grads["W_hh_b_1"] = grads["W_hh_b_1"].copy()
        grads["W_hh_b_1"].flat[0] += 1e-6 * np.abs(grads["W_hh_b_1"]).max()
        return loss, grads

    monkeypatch.setattr(NestedKernel, "loss_and_grad", off_by_a_little)
    wrong = nested_oracle(model, T=3)
    assert not wrong.ok and wrong.agreement["W_hh_b_1"] < 10


def _decoder(context: bool) -> rs.Cell:
    """s(t) = tanh(W s(t−1) + U y(t−1) [+ R C]), o = V s, the squared error."""
    cell = rs.Cell("decoder")
    n, k = cell.dims("n k")
    y, s = cell.target("y", k), cell.state("s", n)
    a = cell.param("W_d", n, n) @ s.prev + cell.param("U_d", n, k) @ y.prev
    if context:
        a = a + cell.param("R_d", n, n) @ cell.context("C", n)
    cell.update(s, rs.tanh(a))
    cell.loss(rs.squared_error(cell.output("o", cell.param("V_d", k, n) @ s), y))
    return cell


@pytest.mark.parametrize(
    "decoder", ["context", "h0", "model"], ids=["C_at_every_step", "C_as_s0", "decoder_model"]
)
def test_seq2seq_with_a_bidirectional_stacked_encoder(decoder):
    # the encoder is a model: C is its top output at each input's own end; the decoder a cell
    # reading C (or starting from it), or a model (an LSTM stack) reading [y(t-1); C]
    from rnnsym.models.nested import NestedSeq2Seq
    from rnnsym.verify.nested import nested_oracle

    gru = rs.cells.gru(output=False)
    if decoder == "model":
        lstm = rs.cells.lstm(output=False)
        made = rs.stack(lstm, lstm, head=_readout_of("y"))
        # the same names in both halves: the decoder's end in _dec
        cells = {"lstm_layer_1_dec", "lstm_layer_2_dec", "readout_dec"}
    else:
        made, cells = _decoder(decoder == "context"), {"decoder"}
    model = rs.seq2seq(rs.stack(rs.bidirectional(gru, gru), gru), made)
    assert isinstance(model, NestedSeq2Seq)
    assert model.slot[0] == {"context": "context", "h0": "h0", "model": "input"}[decoder]
    assert "encoder:" in model.describe() and "decoder" in model.describe()
    assert set(model.derive()) == {"gru_layer_1", "gru_layer_b_1", "gru_layer_2"} | cells
    kernel = rs.compile(model)
    params, inputs, targets = model.random_problem(T=5, B=3, seed=1, size=3, inputs=4, T_out=4)
    # central differences, check_gradients' documented tolerance (1e-6 relative + rounding)
    assert rs.check_gradients(kernel, params, inputs, targets).ok
    # exact: sympy.diff node by node over the whole model unrolled (10 digits required)
    assert nested_oracle(model, T=3).ok
    # a padded batch, NaN padding on both sides, equals each sequence alone
    _assert_seq2seq_padding_reaches_nothing(kernel, params, inputs, targets)


def _readout_of(target: str, classes: bool = False) -> rs.Cell:
    head = rs.Cell("readout")
    n, k = head.dims("n k")
    z = head.input("z", n)
    out = head.output("o", head.param("V", k, n) @ z + head.param("c", k))
    if classes:
        head.loss(rs.softmax_cross_entropy(out, head.target(target, k, classes=True)))
    else:
        head.loss(rs.squared_error(out, head.target(target, k)))
    return head


def test_seq2seq_refuses_what_it_cannot_feed_back_clearly():
    gru = rs.cells.gru(output=False)
    with pytest.raises(CellError, match="needs exactly one target of real values"):
        rs.seq2seq(gru, rs.stack(gru, head=_readout_of("y", classes=True)))
    with pytest.raises(CellError, match="must be an rnnsym.Cell or a model with a head"):
        rs.seq2seq(gru, rs.bidirectional(gru, gru))


def test_a_seq2seq_with_a_nested_encoder_is_derived_drawn_and_written(tmp_path, capsys):
    from rnnsym.cli import main

    path = tmp_path / "translate.py"
    path.write_text(
        "import rnnsym as rs\n"
        "def model():\n"
        "    d = rs.Cell('decoder')\n"
        "    n, k = d.dims('n k')\n"
        "    y, s = d.target('y', k), d.state('s', n)\n"
        "    a = d.param('W_d', n, n) @ s.prev + d.param('U_d', n, k) @ y.prev\n"
        "    d.update(s, rs.tanh(a + d.param('R_d', n, n) @ d.context('C', n)))\n"
        "    d.loss(rs.squared_error(d.output('o', d.param('V_d', k, n) @ s), y))\n"
        "    e = rs.cells.elman(output=False)\n"
        "    return rs.seq2seq(rs.bidirectional(e, e), d)\n",
        encoding="utf-8",
    )
    assert main(["derive", f"{path}:model", "--T", "3"]) == 0
    out = capsys.readouterr().out
    assert "sequence to sequence" in out and "scalar oracle" in out
    assert "(outputs)" not in out and "result: all checks passed" in out
    assert main(["graph", f"{path}:model", "--T", "3"]) == 0
    dot = capsys.readouterr().out
    # C: the concatenated encoder output at T_x = 3, read by the decoder at each of T + 1 steps
    assert '"z1_3" -> "C"' in dot and '"C" -> "decoder.s_4"' in dot
    assert main(["paper", f"{path}:model", "--T", "3"]) == 0
    paper = capsys.readouterr().out
    assert "sequence to sequence model" in paper and "(inputs)" in paper


def test_a_decoder_model_is_derived_drawn_and_written(tmp_path, capsys):
    from rnnsym.cli import main

    path = tmp_path / "translate.py"
    path.write_text(
        "import rnnsym as rs\n"
        "def model():\n"
        "    h = rs.Cell('readout')\n"
        "    n, k = h.dims('n k')\n"
        "    o = h.output('o', h.param('V', k, n) @ h.input('z', n) + h.param('c', k))\n"
        "    h.loss(rs.squared_error(o, h.target('y', k)))\n"
        "    e, g = rs.cells.elman(output=False), rs.cells.gru(output=False)\n"
        "    return rs.seq2seq(rs.bidirectional(e, e), rs.stack(g, head=h))\n",
        encoding="utf-8",
    )
    assert main(["derive", f"{path}:model", "--T", "3"]) == 0
    out = capsys.readouterr().out
    assert "reads [y(t-1); C] at every step" in out and "result: all checks passed" in out
    assert main(["graph", f"{path}:model", "--T", "3"]) == 0
    dot = capsys.readouterr().out
    # u(t) = [y(t-1); C]: C, and the target one step late (dashed), into the decoder's input
    assert '"C" -> "u_4"' in dot and '"readout.y_3" -> "u_4" [style=dashed]' in dot
    assert main(["paper", f"{path}:model", "--T", "3"]) == 0
    assert "$[y^{(t-1)}; C]$" in capsys.readouterr().out


def test_last_output_with_a_model_as_its_layer():
    # Fig. 5 on a bidirectional GRU: one output per sequence, at each sequence's own end
    from rnnsym.verify.nested import nested_oracle

    gru = rs.cells.gru(output=False)
    model = rs.last_output(rs.bidirectional(gru, gru), _readout_of("label", classes=True))
    assert model.last_only and "at each sequence's last step" in model.describe()
    kernel = rs.compile(model)
    params, inputs, targets = model.random_problem(T=5, B=3, seed=2)
    assert targets["label"].shape == (3,)  # one class index per sequence
    # central differences, check_gradients' documented tolerance (1e-6 relative + rounding)
    assert rs.check_gradients(kernel, params, inputs, targets).ok
    assert nested_oracle(model, T=3).ok  # sympy.diff of the unrolled model, 10 digits
    x = inputs["x"].copy()
    for b, length in enumerate(LENGTHS[:3] - 1):
        x[length:, b] = np.nan
    lengths = LENGTHS[:3] - 1
    loss, grads = kernel.loss_and_grad(params, {"x": x}, targets, lengths=lengths)
    alone = [
        kernel.loss_and_grad(
            params, {"x": inputs["x"][:n, b : b + 1]}, {"label": targets["label"][b : b + 1]}
        )
        for b, n in enumerate(lengths)
    ]
    _assert_same_as_alone(loss, grads, alone)
    graph = rs.unroll(model, 4)
    assert sorted(n.t for n in graph.nodes if n.kind == "loss") == [4]  # the head at T only


def _assert_same_as_alone(loss, grads, alone) -> None:
    """A padded batch's loss and gradients against its sequences run alone, summed: the same
    sums over the same real steps in another order, so rounding only (1e-12 and 1e-10)."""
    assert loss == pytest.approx(sum(a[0] for a in alone), rel=1e-12)
    for name, value in grads.items():
        want = sum(a[1][name] for a in alone)
        np.testing.assert_allclose(value, want, rtol=1e-10, atol=1e-12, err_msg=name)


def _assert_seq2seq_padding_reaches_nothing(kernel, params, inputs, targets) -> None:
    """A seq2seq batch padded on both sides (NaN) with a pair of lengths, against each pair of
    sequences run alone (B = 3, T_x = 5, T_y = 4)."""
    x_lengths, y_lengths = np.array([5, 2, 3]), np.array([4, 1, 3])
    x, y = inputs["x"].copy(), targets["y"].copy()
    for b in range(3):
        x[x_lengths[b] :, b] = np.nan
        y[y_lengths[b] :, b] = np.nan
    loss, grads = kernel.loss_and_grad(params, {"x": x}, {"y": y}, lengths=(x_lengths, y_lengths))
    alone = [
        kernel.loss_and_grad(
            params,
            {"x": inputs["x"][: x_lengths[b], b : b + 1]},
            {"y": targets["y"][: y_lengths[b], b : b + 1]},
        )
        for b in range(3)
    ]
    _assert_same_as_alone(loss, grads, alone)
