"""Truncated BPTT (rnnsym.truncate): each step's loss back-propagates at most k steps.

The library computes the truncated gradient from the cell's generated kernel on windows of the
sequence, stacked along the batch. The references here are independent of that: PyTorch
autograd of cells re-implemented by hand in torch (allowed in tests only), where each loss
term L(s) is computed from h(s − k).detach() and the terms are summed, which is the
definition of per-loss truncation (Williams & Peng's BPTT(k)).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess

import numpy as np
import pytest

import rnnsym as rs
from rnnsym.cli import _target
from rnnsym.problems import concrete_sizes, random_problem
from rnnsym.truncate import (
    TruncatedKernel,
    compile_truncated,
    parse_ks,
    register_cli,
    tbptt_bias,
    truncated_derivation_text,
)

torch = pytest.importorskip("torch")

# float64 throughout: the truncated gradient and the torch reference take the same steps in a
# different order (windows stacked along the batch, differences of two window sums), so they
# agree to a few ulps times the gradient's size; 1e-10 relative leaves room for the
# cancellation in the difference of the two window sums and nothing more
RTOL = 1e-10

_KERNELS: dict[str, object] = {}


def _kernel(name: str):
    """The full generated kernel of a built-in cell, compiled once for the whole module."""
    if name not in _KERNELS:
        _KERNELS[name] = rs.compile(rs.cells.get(name))
    return _KERNELS[name]


def _t(array):
    return torch.tensor(np.asarray(array), dtype=torch.float64)


# ----- the cells, written by hand in torch: (step, loss) per cell -----


def _elman(P, inputs, targets):
    x, y = _t(inputs["x"]), _t(targets["y"])

    def step(state, t):
        (h,) = state
        return (torch.tanh(P["b"] + h @ P["W"].T + x[t] @ P["U"].T),)

    def loss(state, t):
        o = P["c"] + state[0] @ P["V"].T
        return 0.5 * ((o - y[t]) ** 2).sum()

    return step, loss


def _lstm(P, inputs, targets):
    x, y = _t(inputs["x"]), _t(targets["y"])

    def step(state, t):
        h, c = state
        a = x[t] @ P["W_ih"].T + P["b_ih"] + h @ P["W_hh"].T + P["b_hh"]
        i, f, g, o = a.chunk(4, dim=-1)  # torch.nn.LSTM's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return (torch.sigmoid(o) * torch.tanh(c), c)

    def loss(state, t):
        out = state[0] @ P["V"].T + P["b_V"]
        return 0.5 * ((out - y[t]) ** 2).sum()

    return step, loss


def _gru(P, inputs, targets):
    x, y = _t(inputs["x"]), _t(targets["y"])

    def step(state, t):
        (h,) = state
        ax = x[t] @ P["W_ih"].T + P["b_ih"]
        ah = h @ P["W_hh"].T + P["b_hh"]
        xr, xz, xn = ax.chunk(3, dim=-1)  # torch.nn.GRU's gate order
        hr, hz, hn = ah.chunk(3, dim=-1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return ((1 - z) * n + z * h,)

    def loss(state, t):
        out = state[0] @ P["V"].T + P["b_V"]
        return 0.5 * ((out - y[t]) ** 2).sum()

    return step, loss


def _fixed_input(P, inputs, targets):
    """Fig. 6: context x (B, m) read at every step, class targets y fed back one-hot."""
    x = _t(inputs["x"])
    y = torch.tensor(np.asarray(targets["y"]))
    K = P["c"].shape[0]
    onehot = torch.nn.functional.one_hot(y, K).to(torch.float64)
    prev = torch.cat([torch.zeros_like(onehot[:1]), onehot[:-1]])  # y(t − 1), y(0) = 0

    def step(state, t):
        (h,) = state
        return (torch.tanh(P["b"] + h @ P["W"].T + x @ P["R"].T + prev[t] @ P["U"].T),)

    def loss(state, t):
        o = P["c"] + state[0] @ P["V"].T
        return (torch.logsumexp(o, dim=-1) - (o * onehot[t]).sum(-1)).sum()

    return step, loss


REFERENCES = {"elman": _elman, "lstm": _lstm, "gru": _gru, "fixed_input": _fixed_input}


def _torch_truncated(name, params, inputs, targets, k, h0):
    """Σ_s ∇θ L(s), each L(s) computed from h(s − k).detach() (h(0) for s ≤ k), by autograd."""
    P = {n: _t(v).requires_grad_(True) for n, v in params.items()}
    step, loss = REFERENCES[name](P, inputs, targets)
    T = np.shape(targets["y"])[0]
    path = [tuple(_t(h) for h in h0)]
    for t in range(T):
        path.append(step(path[-1], t))
    total = 0.0
    for s in range(1, T + 1):
        start = max(0, s - k)
        state = tuple(h.detach() for h in path[start])
        for t in range(start, s):
            state = step(state, t)
        total = total + loss(state, s - 1)
    grads = torch.autograd.grad(total, list(P.values()))
    return float(total.detach()), {n: g.numpy() for n, g in zip(P, grads, strict=True)}


def _problem(name, T=7, B=3, seed=1):
    """A random problem of the built-in cell ``name`` at the default sizes, with a random h(0)."""
    cell = rs.cells.get(name)
    params, inputs, targets = random_problem(cell, T=T, B=B, seed=seed)
    sizes = concrete_sizes(cell, None, lambda i: 3 + i)  # random_problem's own sizes
    rng = np.random.default_rng(seed + 100)
    h0 = {
        s: rng.normal(scale=0.5, size=(B, int(state.symbol.shape[0].xreplace(sizes))))
        for s, state in cell.states.items()
    }
    return cell, params, inputs, targets, h0


def _assert_close(got: dict, want: dict, label: str):
    for name in want:
        scale = np.max(np.abs(want[name]))
        error = np.max(np.abs(np.asarray(got[name]) - want[name]))
        assert error <= RTOL * scale, f"{label}: ∇{name} off by {error:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("name", ["elman", "lstm", "gru", "fixed_input"])
def test_truncated_gradient_matches_torch_autograd(name):
    cell, params, inputs, targets, h0 = _problem(name)
    T = 7
    base = _kernel(name)
    states = list(cell.states)
    for k in (1, 2, 3, T - 1):
        kernel = TruncatedKernel(base, k)
        loss, grads = kernel.loss_and_grad(params, inputs, targets, h0)
        ref_loss, ref = _torch_truncated(name, params, inputs, targets, k, [h0[s] for s in states])
        _assert_close(grads, ref, f"{name}, k = {k}")
        # the loss is the full loss: truncation changes the gradient only
        full_loss, _ = base.loss_and_grad(params, inputs, targets, h0)
        assert loss == full_loss
        assert abs(loss - ref_loss) <= RTOL * abs(ref_loss)
    if name == "fixed_input":  # the context given as one (m,) vector for every sequence
        shared = {**inputs, "x": inputs["x"][0]}
        _, grads = TruncatedKernel(base, 2).loss_and_grad(params, shared, targets, h0)
        wide = {**inputs, "x": np.broadcast_to(inputs["x"][0], inputs["x"].shape)}
        _, ref = _torch_truncated(name, params, wide, targets, 2, [h0[s] for s in states])
        _assert_close(grads, ref, "fixed_input, k = 2, context (m,)")


def test_forward_mode_kernel_gives_the_same_truncation():
    cell, params, inputs, targets, h0 = _problem("lstm", T=5, B=2)
    reverse = TruncatedKernel(_kernel("lstm"), 2).loss_and_grad(params, inputs, targets, h0)[1]
    forward = compile_truncated(cell, 2, mode="forward")
    assert forward.mode == "forward" and "forward mode" in repr(forward)
    got = forward.loss_and_grad(params, inputs, targets, h0)[1]
    _assert_close(got, reverse, "lstm, k = 2, forward mode against reverse mode")


def test_truncated_is_not_full_below_T():
    """The references above could agree with a kernel that ignores k; here they must not."""
    cell, params, inputs, targets, h0 = _problem("elman")
    _, full = _kernel("elman").loss_and_grad(params, inputs, targets, h0)
    _, cut = TruncatedKernel(_kernel("elman"), 2).loss_and_grad(params, inputs, targets, h0)
    # W's gradient loses every path of two steps or more; on random data that is far above
    # rounding (1e-3 of its size is a loose floor for a gradient of order 1)
    assert np.max(np.abs(cut["W"] - full["W"])) > 1e-3 * np.max(np.abs(full["W"]))
    # the readout V, c sees h(t) of its own step only: any k ≥ 1 leaves it exact (to rounding
    # in the window sums: 1e-12 of its size)
    for name in ("V", "c"):
        assert np.max(np.abs(cut[name] - full[name])) <= 1e-12 * np.max(np.abs(full[name]))


@pytest.mark.parametrize("name", ["elman", "lstm"])
def test_k_at_least_T_is_full_bptt_exactly(name):
    cell, params, inputs, targets, h0 = _problem(name)
    T = 7
    loss, full = _kernel(name).loss_and_grad(params, inputs, targets, h0)
    for k in (T, T + 1, 100):
        got_loss, got = TruncatedKernel(_kernel(name), k).loss_and_grad(params, inputs, targets, h0)
        assert got_loss == loss
        for p in full:
            np.testing.assert_array_equal(got[p], full[p])


def test_compile_truncated_and_rs_compile():
    cell = rs.cells.elman()
    params, inputs, targets = random_problem(cell, T=4, B=2, seed=3)
    kernel = rs.compile(cell, truncate=4)
    assert isinstance(kernel, TruncatedKernel) and kernel.truncate == 4
    assert "truncated" in repr(kernel) and "k = 4" in repr(kernel)
    assert kernel.source == _kernel("elman").source  # the gradients come from the cell's kernel
    assert kernel.spec == _kernel("elman").spec
    loss, full = _kernel("elman").loss_and_grad(params, inputs, targets)
    got_loss, got = kernel.loss_and_grad(params, inputs, targets)  # h0=None
    assert got_loss == loss
    for p in full:
        np.testing.assert_array_equal(got[p], full[p])
    run, ref = kernel.forward(params, inputs), _kernel("elman").forward(params, inputs)
    np.testing.assert_array_equal(run["h"], ref["h"])  # forward() is the full forward pass
    # h0=None on a truncated window means zeros only at the start: k = 1 against torch
    small = compile_truncated(cell, 1)
    _, grads = small.loss_and_grad(params, inputs, targets)
    _, ref_grads = _torch_truncated(
        "elman", params, inputs, targets, 1, [np.zeros((2, 5))]
    )  # n = 5
    _assert_close(grads, ref_grads, "elman, k = 1, h0 = None")


def test_single_array_h0_and_float32():
    cell, params, inputs, targets, h0 = _problem("elman")
    kernel = TruncatedKernel(_kernel("elman"), 3)
    _, from_dict = kernel.loss_and_grad(params, inputs, targets, h0)
    _, from_array = kernel.loss_and_grad(params, inputs, targets, h0["h"])
    for p in from_dict:
        np.testing.assert_array_equal(from_array[p], from_dict[p])
    f32 = lambda d: {k: np.asarray(v, np.float32) for k, v in d.items()}  # noqa: E731
    _, g32 = kernel.loss_and_grad(f32(params), f32(inputs), f32(targets), f32(h0))
    for p in from_dict:
        assert g32[p].dtype == np.float32
        # float32 rounding (eps ≈ 6e-8) through 7 steps and two window sums: 1e-4 relative
        np.testing.assert_allclose(
            g32[p], from_dict[p], rtol=0, atol=1e-4 * np.abs(from_dict[p]).max()
        )


def test_stateless_cell_is_untouched():
    """Teacher forcing (Fig. 4) has no state: nothing carries a gradient back, any k is full."""
    cell = rs.cells.get("teacher_forcing")
    params, inputs, targets = random_problem(cell, T=5, B=2, seed=0)
    full = rs.compile(cell).loss_and_grad(params, inputs, targets)
    got = rs.compile(cell, truncate=1).loss_and_grad(params, inputs, targets)
    assert got[0] == full[0]
    for p in full[1]:
        np.testing.assert_array_equal(got[1][p], full[1][p])


def test_bias_grows_as_k_shrinks():
    """Elman with ‖W‖₂ = 0.5: a step back multiplies an error by at most 0.5 (|tanh′| ≤ 1), so
    what k = 5 leaves out (paths of 5 steps or more) is bounded by 0.5⁴ times the bound on what
    k = 1 leaves out; on these data the observed errors order as the bounds do."""
    cell = rs.cells.elman()
    params, inputs, targets = random_problem(cell, T=12, B=4, seed=0)
    params["W"] = params["W"] * (0.5 / np.linalg.norm(params["W"], 2))
    result = tbptt_bias(cell, [1, 2, 5, 12, 20], params, inputs, targets)
    rows = {row.k: row for row in result.rows}
    assert rows[12].cosine == 1.0 and rows[12].relative_error == 0.0  # k = T: exact
    assert rows[20].relative_error == 0.0
    assert rows[1].relative_error > rows[2].relative_error > rows[5].relative_error > 0
    assert rows[1].cosine < rows[5].cosine < 1.0
    # the readout's gradient is exact for every k (its relative error is rounding only)
    assert rows[1].per_param["V"][1] < 1e-12 and rows[1].per_param["c"][1] < 1e-12
    assert rows[1].per_param["W"][1] > rows[5].per_param["W"][1]
    table = result.table()
    assert "cosine" in table and "rel(W)" in table and "12*" in table


def test_bias_on_random_problem_defaults_and_given_params():
    cell = rs.cells.gru()
    result = tbptt_bias(cell, 3, T=6, B=2, seed=1)
    assert result.T == 6 and result.B == 2 and [r.k for r in result.rows] == [3]
    params, _, _ = random_problem(cell, sizes={"n": 2, "m": 3, "k": 2}, T=6, B=2, seed=1)
    again = tbptt_bias(cell, [1, 6], params=params, T=5, B=3)
    assert (again.T, again.B) == (5, 3)
    assert again.rows[1].relative_error == 0.0


@pytest.mark.parametrize("k", [0, -1, 1.5, "2", True, None])
def test_bad_truncation_lengths(k):
    with pytest.raises(ValueError, match=repr(k).replace(".", r"\.")):
        rs.compile(rs.cells.elman(), truncate=k) if k is not None else compile_truncated(
            rs.cells.elman(), k
        )


def test_bad_ks_and_option_text():
    with pytest.raises(ValueError, match="'x'"):
        parse_ks("1,x")
    with pytest.raises(ValueError, match="-3"):
        parse_ks("1,-3")
    with pytest.raises(ValueError, match="0 is not a truncation length"):
        parse_ks("0")
    with pytest.raises(ValueError, match="'2.5'"):
        parse_ks("2.5")
    assert parse_ks("1, 2,10") == [1, 2, 10]
    with pytest.raises(ValueError, match="1.5"):
        tbptt_bias(rs.cells.elman(), [1, 1.5])


def test_vjp_refused_and_bad_arrays_named():
    kernel = TruncatedKernel(_kernel("elman"), 2)
    cell, params, inputs, targets, _ = _problem("elman")
    with pytest.raises(ValueError, match="vjp.*truncat"):
        kernel.vjp(params, inputs, targets)
    bad = {**inputs, "x": inputs["x"][:, :, :2]}
    with pytest.raises(ValueError, match=r"inputs\['x'\]"):
        kernel.loss_and_grad(params, bad, targets)
    with pytest.raises(ValueError, match="backend='torch'"):
        compile_truncated(cell, 2, backend="torch")
    with pytest.raises(ValueError, match="composed model"):
        rs.compile(rs.cells.get("bidirectional"), truncate=2)


def test_derivation_text_makes_the_truncation_explicit():
    cell = rs.cells.lstm()
    text = truncated_derivation_text(cell, 3)
    assert text.startswith(rs.derive(cell).pretty())
    d = rs.derive(cell)
    assert f"({d.number_of('g_h')}) with L replaced by L⁽ˢ⁾" in text
    assert f"({d.number_of('g_c')}) with L replaced by L⁽ˢ⁾" in text
    assert "k = 3" in text and "h⁽ˢ⁻ᵏ⁾, c⁽ˢ⁻ᵏ⁾" in text and "min(T, t+k−1)" in text
    latex = TruncatedKernel(_kernel("lstm"), 3).derivation_text(latex=True)
    assert latex.startswith(d.latex())
    assert r"\nabla^{(k)}_{\theta} L" in latex and r"\eqref{eq:lstm:" in latex


def test_derivation_latex_escapes_user_names_and_compiles(tmp_path):
    cell = rs.Cell("evil_$cell{")
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("état_1", n)
    W, U = cell.param("W", n, n), cell.param("U", n, m)
    cell.update(h, rs.tanh(W @ h.prev + U @ x))
    cell.loss(rs.squared_error(cell.output("o", cell.param("V", k, n) @ h), cell.target("y", k)))
    latex = truncated_derivation_text(cell, 2, latex=True)
    section = latex[len(rs.derive(cell).latex()) :]
    assert r"evil\_\$cell\{" in section and "$" not in section.replace(r"\$", "")
    assert section.isascii()  # the state's name "état_1" is escaped, not pasted
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed: the LaTeX was checked for escaping only")
    doc = tmp_path / "t.tex"
    doc.write_text(
        "\\documentclass{article}\\usepackage{amsmath,amssymb}\\begin{document}\n"
        + latex
        + "\n\\end{document}\n"
    )
    run = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:]


def _cli(argv):
    parser = argparse.ArgumentParser(prog="rnnsym")
    register_cli(parser.add_subparsers(dest="command", required=True), _target)
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_table_and_plot(tmp_path, capsys):
    path = tmp_path / "bias.png"
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib (the plot extra)")
    assert _cli(["tbptt", "elman", "--k", "1,2,8", "--T", "8", "--B", "2", "-o", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "cell 'elman', T = 8, B = 2" in lines[0]
    row8 = next(line for line in lines if line.split()[:1] == ["8*"])
    assert row8.split()[1:3] == ["1.000000", "0.000e+00"]
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_cli_data_file_and_derivation(tmp_path, capsys):
    cell = rs.cells.elman()
    params, inputs, targets = random_problem(cell, T=5, B=2, seed=4)
    data = tmp_path / "d.npz"
    np.savez(data, **params, **inputs, **targets, h=np.ones((2, 5)) * 0.1)
    assert _cli(["tbptt", "elman", "--k", "2", "--data", str(data), "--derivation"]) == 0
    out = capsys.readouterr().out
    expected = tbptt_bias(cell, [2], params, inputs, targets, h0={"h": np.ones((2, 5)) * 0.1})
    assert f"{expected.rows[0].relative_error:.3e}" in out
    assert "T = 5, B = 2" in out and "Truncated BPTT, k = 2" in out
    np.savez(data, **params, x=inputs["x"])
    with pytest.raises(rs.RnnsymError, match="inputs and the targets together"):
        _cli(["tbptt", "elman", "--data", str(data)])
    np.savez(data, W=params["W"])
    with pytest.raises(rs.RnnsymError, match="'W' but not 'U'"):
        _cli(["tbptt", "elman", "--data", str(data)])
    with pytest.raises(ValueError, match="'-1'|-1"):
        _cli(["tbptt", "elman", "--k", "1,-1"])


def test_cli_through_main(capsys):
    from rnnsym.cli import build_parser, main

    try:
        build_parser().parse_args(["tbptt", "elman"])
    except SystemExit:
        pytest.skip("rnnsym tbptt is not wired into rnnsym.cli yet")
    assert main(["tbptt", "elman", "--k", "1,3", "--T", "3", "--B", "1"]) == 0
    out = capsys.readouterr().out
    assert "3*" in out and "rel(W)" in out
    assert main(["tbptt", "elman", "--k", "0"]) == 2
    assert "0 is not a truncation length" in capsys.readouterr().err


def test_cli_user_cell_and_builtin_only_loader(tmp_path, capsys):
    source = tmp_path / "mine.py"
    source.write_text(
        "import rnnsym as rs\n\ndef make():\n    return rs.cells.elman_relu()\n",
        encoding="utf-8",
    )
    assert _cli(["tbptt", f"{source}:make", "--k", "2,4", "--T", "4", "--B", "1"]) == 0
    out = capsys.readouterr().out
    assert "cell 'elman_relu', T = 4, B = 1" in out and "4*" in out
    # registered without the CLI's loader, CELL is a built-in name only, and it says so
    parser = argparse.ArgumentParser(prog="rnnsym")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["tbptt", f"{source}:make"])
    with pytest.raises(rs.RnnsymError, match="built-in cell"):
        args.handler(args)
