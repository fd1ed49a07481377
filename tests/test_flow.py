"""Gradient flow (rnnsym.flow): the norms of ∂h(t)/∂h(τ) and of the error bra ∂L(t)/∂h(τ).

The library computes them from a generated kernel's sensitivities; the references here are
independent: the Elman Jacobian written by hand as the product of diag(1 − h(s)²) W over the
steps (allowed in tests only), and central finite differences of the forward kernel for the
gated cells.
"""

from __future__ import annotations

import argparse
import functools

import numpy as np
import pytest

import rnnsym as rs
from rnnsym.cli import _target
from rnnsym.errors import RnnsymError
from rnnsym.flow import gradient_flow, register_cli, rescale_recurrent
from rnnsym.problems import random_problem


@functools.cache
def _cell(name: str):
    """One instance per built-in cell, so that its kernels are compiled once for the module."""
    return rs.cells.get(name)


@functools.cache
def _kernel(name: str):
    return rs.compile(_cell(name))


def _spectral(J):
    return np.linalg.norm(J, ord=2)


def _elman_reference(params, inputs, targets, h0):
    """‖∂h(t)/∂h(τ)‖₂ and ‖∂L(t)/∂h(τ)‖₂ per batch element, by hand: h(t) = tanh(b + W h(t−1)
    + U x(t)), ∂h(t)/∂h(t−1) = diag(1 − h(t)²) W, L(t) = ½‖c + V h(t) − y(t)‖²."""
    W, U, b, V, c = (params[k] for k in ("W", "U", "b", "V", "c"))
    x, y = inputs["x"], targets["y"]
    T, B = x.shape[:2]
    jac = np.full((B, T + 1, T + 1), np.nan)
    err = np.full((B, T + 1, T + 1), np.nan)
    for j in range(B):
        h = [h0[j]]
        for t in range(T):
            h.append(np.tanh(b + W @ h[-1] + U @ x[t, j]))
        for t in range(T + 1):
            J = np.eye(len(b))
            for tau in range(t, -1, -1):  # J = ∂h(t)/∂h(τ), grown one step back at a time
                if tau < t:
                    J = J @ (np.diag(1 - h[tau + 1] ** 2) @ W)
                jac[j, t, tau] = _spectral(J)
                if t >= 1:
                    err[j, t, tau] = np.linalg.norm((c + V @ h[t] - y[t - 1, j]) @ V @ J)
    return jac, err


@pytest.fixture(scope="module")
def elman_problem():
    cell = _cell("elman")
    params, inputs, targets = random_problem(cell, T=7, B=3, seed=1)
    h0 = np.random.default_rng(2).normal(scale=0.5, size=(3, params["W"].shape[0]))
    return cell, params, inputs, targets, h0


def test_diagonal_is_one_and_above_is_nan(elman_problem):
    cell, params, inputs, targets, h0 = elman_problem
    flow = gradient_flow(cell, params, inputs, h0, targets, reduce="none")
    T = 7
    assert flow.jacobian_norms.shape == flow.error_norms.shape == (3, T + 1, T + 1)
    for b in range(3):
        assert np.all(np.diagonal(flow.jacobian_norms[b]) == 1.0)  # exactly: the identity
        above = np.triu_indices(T + 1, 1)
        assert np.all(np.isnan(flow.jacobian_norms[b][above]))
        assert np.all(np.isnan(flow.error_norms[b][above]))
        assert np.all(np.isnan(flow.error_norms[b, 0]))  # no L(0)
        below = np.tril_indices(T + 1, -1)
        assert np.all(np.isfinite(flow.jacobian_norms[b][below]))
        assert np.all(np.isfinite(flow.error_norms[b][1:][np.tril_indices(T, 0)]))


def test_elman_matches_hand_written_jacobian_products(elman_problem):
    cell, params, inputs, targets, h0 = elman_problem
    flow = gradient_flow(cell, params, inputs, h0, targets, reduce="none")
    jac, err = _elman_reference(params, inputs, targets, h0)
    # float64 throughout, products of at most 7 matrices on both sides: the two computations
    # differ by rounding, ~1e-15 relative; 1e-10 leaves room and still catches a wrong step,
    # a wrong window or a transposed Jacobian (errors of order 1)
    np.testing.assert_allclose(flow.jacobian_norms, jac, rtol=1e-10, atol=0)
    np.testing.assert_allclose(flow.error_norms, err, rtol=1e-10, atol=0)
    # the reductions over the batch
    mean = gradient_flow(cell, params, inputs, h0, targets)
    biggest = gradient_flow(cell, params, inputs, h0, targets, reduce="max")
    np.testing.assert_allclose(mean.jacobian_norms, np.mean(jac, axis=0), rtol=1e-10)
    np.testing.assert_allclose(biggest.error_norms, np.max(err, axis=0), rtol=1e-10)


def test_a_kernel_gives_the_same_flow_as_its_cell(elman_problem):
    cell, params, inputs, targets, h0 = elman_problem
    from_cell = gradient_flow(cell, params, inputs, h0)
    from_kernel = gradient_flow(_kernel("elman"), params, inputs, h0)
    assert from_kernel.error_norms is None  # no targets, no error bra
    np.testing.assert_array_equal(from_cell.jacobian_norms, from_kernel.jacobian_norms)
    assert from_cell.rate == from_kernel.rate


def _finite_difference_flow(cell, params, inputs, targets, h0, states, loss_output, eps=1e-6):
    """‖∂s(t)/∂s(τ)‖₂ and ‖∂L(t)/∂s(τ)‖₂ (batch element 0) by central differences of the
    forward kernel restarted at τ from a perturbed s(τ); s = ``states`` concatenated."""
    kernel = _kernel(cell.name)
    run = kernel.forward(params, inputs, h0)
    T = inputs["x"].shape[0]
    sizes = [run[s].shape[-1] for s in states]
    N = sum(sizes)
    path = {s: np.concatenate([h0[s][None], run[s]], axis=0) for s in cell.states}
    jac = np.full((T + 1, T + 1), np.nan)
    err = np.full((T + 1, T + 1), np.nan)
    y = targets["y"][:, :1]

    def restart(tau, delta):
        start = {s: path[s][tau][:1].copy() for s in cell.states}
        offset = 0
        for s, n in zip(states, sizes, strict=True):
            start[s] += delta[offset : offset + n]
            offset += n
        window = {"x": inputs["x"][tau:, :1]}
        out = kernel.forward(params, window, start)
        s_t = np.concatenate([out[s][:, 0] for s in states], axis=-1)  # (T - τ, N)
        loss = 0.5 * np.sum((out[loss_output][:, 0] - y[tau:, 0]) ** 2, axis=-1)  # L(τ+1..T)
        return s_t, loss

    for tau in range(T):
        columns, grads = [], []
        for i in range(N):
            e = np.zeros(N)
            e[i] = eps
            plus, minus = restart(tau, e), restart(tau, -e)
            columns.append((plus[0] - minus[0]) / (2 * eps))
            grads.append((plus[1] - minus[1]) / (2 * eps))
        J = np.stack(columns, axis=-1)  # (T - τ, N, N)
        G = np.stack(grads, axis=-1)  # (T - τ, N)
        for lag in range(1, T - tau + 1):
            jac[tau + lag, tau] = _spectral(J[lag - 1])
            err[tau + lag, tau] = np.linalg.norm(G[lag - 1])
    return jac, err


@pytest.mark.parametrize(
    "name, state", [("lstm", None), ("lstm", "c"), ("gru", None)], ids=["lstm", "lstm-c", "gru"]
)
def test_gated_cells_match_finite_differences(name, state):
    cell = _cell(name)
    params, inputs, targets = random_problem(cell, T=5, B=2, seed=3)
    rng = np.random.default_rng(4)
    h0 = {s: rng.normal(scale=0.5, size=(2, 5)) for s in cell.states}  # n = 5 (k, m, n = 3, 4, 5)
    flow = gradient_flow(cell, params, inputs, h0, targets, state=state, reduce="none")
    states = list(cell.states) if state is None else [state]
    assert flow.states == tuple(states)
    jac, err = _finite_difference_flow(cell, params, inputs, targets, h0, states, "out")
    below = np.tril_indices(6, -1)
    # central differences with step 1e-6 in float64: truncation ~ eps² ‖f'''‖ ~ 1e-12,
    # rounding ~ 1e-16 / 1e-6 = 1e-10 absolute on norms of order 1e-3..1; 1e-6 relative
    # (plus 1e-9 absolute for the smallest norms) is far above both and far below any
    # mistake in the Jacobian (a wrong window, seed or state block changes them at order 1)
    np.testing.assert_allclose(flow.jacobian_norms[0][below], jac[below], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(flow.error_norms[0][below], err[below], rtol=1e-6, atol=1e-9)
    # τ = t: ∂L(t)/∂h(t) of L(t) = ½‖V h(t) + b_V − y(t)‖² is Vᵀ(out(t) − y(t)) in the block
    # of h and zero in the block of c (the loss does not read c); rounding only, 1e-12
    out = _kernel(name).forward(params, inputs, h0)["out"][:, 0]
    local = (out - targets["y"][:, 0]) @ params["V"]
    expected = np.linalg.norm(local, axis=-1) if "h" in states else np.zeros(5)
    np.testing.assert_allclose(np.diagonal(flow.error_norms[0])[1:], expected, rtol=1e-12)


def test_error_bra_is_the_local_error_times_the_jacobian():
    # ⟨δ_t(τ)| = ⟨δ_t(t)| ∂h(t)/∂h(τ): the slides' recursion. With one state of size 1 the
    # norms multiply exactly as the scalars do (|a b| = |a| |b|)
    cell = rs.Cell("scalar")
    x, h = cell.input("x", 1), cell.state("h", 1)
    w, u, v = cell.param("w", 1), cell.param("u", 1), cell.param("v", 1)
    cell.update(h, rs.tanh(w * h.prev + u * x))
    cell.loss(rs.squared_error(cell.output("o", v * h), cell.target("y", 1)))
    rng = np.random.default_rng(5)
    params = {"w": np.array([1.3]), "u": np.array([0.7]), "v": np.array([0.9])}
    inputs, targets = {"x": rng.normal(size=(6, 1, 1))}, {"y": rng.normal(size=(6, 1, 1))}
    flow = gradient_flow(cell, params, inputs, targets=targets)
    for t in range(1, 7):
        for tau in range(t):
            # both sides are products of the same generated numbers, up to rounding (1e-13)
            assert flow.error_norms[t, tau] == pytest.approx(
                flow.error_norms[t, t] * flow.jacobian_norms[t, tau], rel=1e-13
            )


def _orthogonal_elman(radius, n=6, T=20):
    """An Elman cell at the fixed point h = 0: zero inputs and biases, h(0) = 0, W = radius Q
    with Q orthogonal. Then ∂h(t)/∂h(τ) = W^(t−τ) exactly, whose norm is radius^(t−τ)."""
    cell = _cell("elman")
    params, inputs, targets = random_problem(cell, sizes={"n": n}, T=T, B=1, seed=6)
    Q, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(n, n)))
    params = {**params, "W": radius * Q, "b": np.zeros(n)}
    return cell, params, {"x": np.zeros_like(inputs["x"])}


@pytest.mark.parametrize("radius, verdict", [(0.5, "vanishing"), (1.5, "exploding")])
def test_rate_is_the_radius_in_the_linear_regime(radius, verdict):
    cell, params, inputs = _orthogonal_elman(radius)
    flow = gradient_flow(cell, params, inputs)
    # ‖(r Q)^k‖ = r^k exactly in exact arithmetic, so the fitted line has slope log r; the
    # products in float64 lose ~k ulps, far below 1e-12 relative
    assert flow.rate == pytest.approx(radius, rel=1e-12)
    assert flow.verdict == verdict
    lags = np.arange(21)[:, None] - np.arange(21)[None, :]
    below = lags > 0
    np.testing.assert_allclose(flow.jacobian_norms[below], radius ** lags[below], rtol=1e-12)


def _linear_regime(cell, params, inputs):
    """Zero inputs and zero bias vectors, so that with h(0) = 0 the trajectory stays at the
    fixed point h = 0 and ∂h(t)/∂h(τ) = A^(t−τ), A the Jacobian of one step there."""
    params = {k: np.zeros_like(v) if v.ndim == 1 else v for k, v in params.items()}
    return params, {k: np.zeros_like(v) for k, v in inputs.items()}


@pytest.mark.parametrize("name", ["elman", "lstm", "gru"])
def test_small_weights_vanish_and_large_ones_explode(name):
    # At h = 0 with zero inputs and biases every gate is σ(0) = 1/2, and the one-step Jacobian
    # is A = W (Elman), A = I/2 + W_hn/4 (GRU: (1 − z) r W_hn + z I), and for the LSTM's
    # (h, c) a matrix whose nonzero eigenvalues are those of I/2 + W_hg/4 (∂c/∂(h, c) =
    # (i W_hg, f), ∂h = o ∂c). rescale_recurrent gives each n × n block spectral radius R, so
    # ρ(A) = R for Elman and 1/2 − R/4 ≤ ρ(A) ≤ 1/2 + R/4 for the gated cells: ρ(A) < 1 at
    # R = 0.1 and ρ(A) ≥ 1.5 at R = 8, and ‖A^k‖ follows ρ(A)^k up to a factor polynomial in k,
    # which the fitted intercept and slope over T = 12 steps cannot turn across 1.
    cell = _cell(name)
    weight = {"elman": "W", "lstm": "W_hh", "gru": "W_hh"}[name]
    params, inputs = _linear_regime(cell, *random_problem(cell, T=12, B=2, seed=8)[:2])
    small = gradient_flow(cell, rescale_recurrent(params, weight, 0.1), inputs)
    large = gradient_flow(cell, rescale_recurrent(params, weight, 8.0), inputs)
    assert small.rate < 1 and small.verdict == "vanishing"
    assert large.rate > 1 and large.verdict == "exploding"


def test_saturation_bounds_the_growth():
    # |tanh'| ≤ 1, so ‖∂h(t)/∂h(τ)‖ = ‖Π diag(1 − h²) W‖ ≤ ‖W‖₂^(t−τ) whatever the inputs; with
    # large inputs tanh saturates (1 − h² ≈ 0) and the flow vanishes even at radius 1.5
    cell = _cell("elman")
    params, inputs, _ = random_problem(cell, T=15, B=2, seed=9)
    params = rescale_recurrent(params, "W", 1.5)
    bound = np.linalg.norm(params["W"], ord=2)
    saturated = gradient_flow(cell, params, {"x": 10 * inputs["x"]}, reduce="max")
    lags = np.arange(16)[:, None] - np.arange(16)[None, :]
    below = lags > 0
    assert np.all(saturated.jacobian_norms[below] <= bound ** lags[below] * (1 + 1e-12))
    assert saturated.verdict == "vanishing"


def test_a_cell_without_a_loss_has_jacobians_only():
    cell = rs.cells.elman(output=False)
    params, inputs, _ = random_problem(cell, T=4, B=1)
    flow = gradient_flow(cell, params, inputs)
    assert flow.error_norms is None
    assert np.all(np.diagonal(flow.jacobian_norms) == 1.0)
    with pytest.raises(ValueError, match="has no loss"):
        gradient_flow(cell, params, inputs, targets={"y": np.zeros((4, 1, 3))})


def test_plot_writes_a_png(tmp_path, elman_problem):
    pytest.importorskip("matplotlib")
    cell, params, inputs, targets, h0 = elman_problem
    path = gradient_flow(cell, params, inputs, h0, targets).plot(tmp_path / "flow.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----- bad input -----


def test_unknown_state_reduction_or_cell_is_refused(elman_problem):
    cell, params, inputs, targets, h0 = elman_problem
    with pytest.raises(ValueError, match=r"state='g' is not a state of cell 'elman'.*'h'"):
        gradient_flow(cell, params, inputs, state="g")
    with pytest.raises(ValueError, match=r"reduce='sum' is not a reduction.*'mean'"):
        gradient_flow(cell, params, inputs, reduce="sum")
    with pytest.raises(RnnsymError, match="composed model"):
        gradient_flow(rs.cells.get("bidirectional"), params, inputs)
    with pytest.raises(RnnsymError, match="has no state"):
        gradient_flow(rs.cells.get("teacher_forcing"), params, inputs)
    with pytest.raises(ValueError, match=r"params\['W'\] is missing"):
        gradient_flow(cell, {k: v for k, v in params.items() if k != "W"}, inputs)


def test_bad_radius_or_weight_is_refused():
    params = random_problem(rs.cells.elman())[0]
    for radius in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="spectral radius must be a positive number"):
            rescale_recurrent(params, "W", radius)
    with pytest.raises(
        ValueError, match=r"recurrent weight 'Wx' is not a parameter.*W, U, b, V, c"
    ):
        rescale_recurrent(params, "Wx", 1.0)
    with pytest.raises(
        ValueError, match=r"recurrent weight 'U' has shape \(5, 4\); expected a square"
    ):
        rescale_recurrent(params, "U", 1.0)


def _cli(argv, capsys):
    parser = argparse.ArgumentParser(prog="rnnsym")
    register_cli(parser.add_subparsers(dest="command"), _target)
    args = parser.parse_args(["flow", *argv])
    code = args.handler(args)
    return code, capsys.readouterr().out


def test_cli_reports_vanishing_and_exploding(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    linear = ["--input-scale", "0", "--bias-scale", "0"]  # h stays 0: ‖W^k‖, ρ → radius
    code, out = _cli(["elman", "--T", "10", "--radius", "0.5", *linear], capsys)
    assert code == 0 and "(vanishing)" in out
    png = tmp_path / "flow.png"
    argv = ["elman", "--T", "10", "--radius", "1.5", *linear, "-o", str(png)]
    code, out = _cli(argv, capsys)
    assert code == 0 and "(exploding)" in out and png.is_file()


def test_cli_help_names_the_options(capsys):
    with pytest.raises(SystemExit):
        _cli(["--help"], capsys)
    text = capsys.readouterr().out
    for option in ("--params", "--radius", "--weight", "--state", "-o"):
        assert option in text


def test_cli_errors_are_clear(tmp_path, capsys):
    with pytest.raises(RnnsymError, match=r"--radius -1.0: the spectral radius must be positive"):
        _cli(["elman", "--radius", "-1"], capsys)
    with pytest.raises(RnnsymError, match=r"recurrent weight\? Name it with --weight NAME"):
        _cli(["mgu", "--radius", "1"], capsys)
    with pytest.raises(RnnsymError, match=r"--state 'q' is not a state of cell 'lstm'"):
        _cli(["lstm", "--state", "q"], capsys)
    with pytest.raises(RnnsymError, match=r"'bidirectional' is a model of several cells"):
        _cli(["bidirectional"], capsys)
    params = random_problem(rs.cells.elman())[0]
    missing = tmp_path / "missing.npz"
    np.savez(missing, **{k: v for k, v in params.items() if k != "V"})
    with pytest.raises(RnnsymError, match=r"no array 'V'; cell 'elman' needs W, U, b, V, c"):
        _cli(["elman", "--params", str(missing)], capsys)
    misshaped = tmp_path / "misshaped.npz"
    np.savez(misshaped, **{**params, "b": np.zeros(7)})
    with pytest.raises(RnnsymError, match=r"'b' has shape \(7,\); expected \(n,\)"):
        _cli(["elman", "--params", str(misshaped)], capsys)


def test_cli_reads_params(tmp_path, capsys):
    params = random_problem(rs.cells.elman(), sizes={"n": 2, "m": 3, "k": 1})[0]
    path = tmp_path / "params.npz"
    np.savez(path, **params)
    code, out = _cli(["elman", "--params", str(path), "--T", "6"], capsys)
    problem = random_problem(rs.cells.elman(), sizes={"n": 2, "m": 3, "k": 1}, T=6, B=1)
    expected = gradient_flow(_cell("elman"), params, problem[1], targets=problem[2])
    assert code == 0 and f"ρ = {expected.rate:.4f}" in out


def test_docs_page_runs(capsys):
    """The python block of docs/flow.md runs as written (documentation nobody runs goes stale)."""
    import re
    from pathlib import Path

    page = Path(__file__).parent.parent / "docs" / "flow.md"
    (block,) = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    exec(compile(block, "flow-docs", "exec"), {"__name__": "__flow_docs__"})
    out = capsys.readouterr().out
    assert "lstm: h = (h, c)" in out and "(2, 21, 21)" in out


def test_cli_measures_a_user_cell_without_a_loss(tmp_path, capsys):
    path = tmp_path / "layer.py"
    path.write_text("import rnnsym as rs\n\ndef make():\n    return rs.cells.elman(output=False)\n")
    argv = [f"{path}:make", "--T", "8", "--radius", "0.5", "--weight", "W", "--size", "n=3"]
    code, out = _cli(argv, capsys)
    assert code == 0 and "elman_layer: h = h, T = 8" in out and "∂L" not in out
    with pytest.raises(RnnsymError, match=r"--size 'q=3': 'q' is not a size of cell"):
        _cli([f"{path}:make", "--size", "q=3"], capsys)
