"""The whole-sequence bra-ket form of the lecture slides (Suga 2023), `rs.braket`.

Symbolic checks compare fully expanded matrix polynomials (:func:`rnnsym.braket.monomials`):
two expressions in non-commuting matrix symbols are equal exactly when their monomials are, so
equality here is a symbolic zero, not a numerical one. Numerical checks evaluate at a random
rational point with 60 significant digits and need 40 agreeing digits (the same standard as the
scalar oracle: 20 digits of margin over the rounding of a 60-digit evaluation, while any wrong
term changes the leading digits).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import sympy as sp

import rnnsym as rs
from rnnsym.braket import EPSILON, monomials
from rnnsym.cli import main
from rnnsym.verify import (
    agreement_digits,
    bptt_gradients,
    braket_report,
    oracle_gradients,
    unrolled_point,
)

REQUIRED = 40


def same(a, b) -> bool:
    return monomials(a) == monomials(b)


def _forms(names=("slides", "elman", "elman_relu", "gru", "indrnn", "lstm")):
    for name in names:
        for T in (1, 2, 3, 4):
            for tied in (True, False):
                yield pytest.param(name, T, tied, id=f"{name}-T{T}-{'tied' if tied else 'untied'}")


# ----- symbolic identities -----


@pytest.mark.parametrize("name,T,tied", list(_forms()))
def test_neumann_sum_inverts_and_closed_form_is_the_sum_of_error_bras(name, T, tied):
    form = rs.braket(rs.cells.get(name), T, tied=tied)
    # (𝕀 − M) Σ_{k<T} Mᵏ = 𝕀, blockwise, with M = 𝔾𝕁_h𝕊 (or 𝔸𝕊)
    check = form.inverse_check_blocks()
    for i in range(T):
        for j in range(T):
            assert same(check[i][j], form.identity_blocks[i][j]), (i, j, check[i][j])
    # M is nilpotent: M^T = 0
    power = form.identity_blocks
    from rnnsym.braket.form import _bmul

    for _ in range(T):
        power = _bmul(power, form.M_blocks)
    assert all(monomials(b) == {} for row in power for b in row)
    # ⟨δ| = ⟨d|(𝕀 − 𝔾𝕁_h𝕊)⁻¹𝔾 has blocks Σ_{t≥τ}⟨δ_t(τ)|, and the backward recurrence (eq. (9)
    # times G(τ)) gives the same bras
    closed = form.closed_form()
    for tau in range(1, T + 1):
        assert same(closed[tau - 1], form.adjoint_bra(tau)), tau
        assert same(form.bptt_bra(tau), form.adjoint_bra(tau)), tau


def test_error_bras_are_the_slides_products():
    form = rs.braket(rs.cells.slides(), 3, tied=False)
    n = form.n
    d3, G = sp.MatrixSymbol("d(3)", n, 1), [sp.MatrixSymbol(f"G({t})", n, n) for t in (1, 2, 3)]
    J = [sp.MatrixSymbol(f"J_h({t})", n, n) for t in (1, 2, 3)]
    # ⟨δ_3(1)| = ⟨d(3)|G(3)J_h(3)G(2)J_h(2)G(1)  (the slides' error bras), per-step weights distinct
    expected = sp.MatMul(d3.T, G[2], J[2], G[1], J[1], G[0])
    assert same(form.error_bra(3, 1), expected)
    # and the recursion ⟨δ_t(τ−1)| = ⟨δ_t(τ)|J_h(τ)G(τ−1)
    assert same(form.error_bra(3, 1), sp.MatMul(form.error_bra(3, 2), J[1], G[0]))
    tied = rs.braket(rs.cells.slides(), 3)
    W = sp.MatrixSymbol("J_h", n, n)
    assert same(tied.error_bra(3, 1), sp.MatMul(d3.T, G[2], W, G[1], W, G[0]))


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("T", [1, 2, 3, 4])
def test_variation_unrolled_is_the_closed_form(T, tied):
    """δ|h(t)⟩ = G(t)(δJ_x|x(t)⟩ + δJ_h|h(t−1)⟩ + J_h δ|h(t−1)⟩), unrolled from δh(0) = 0, equals
    the block τ of (𝕀 − 𝔾𝕁_h𝕊)⁻¹𝔾(δ𝕁_x|x⟩ + δ𝕁_h|h(t−1)⟩)."""
    form = rs.braket(rs.cells.slides(), T, tied=tied)
    n = form.n
    unrolled = []
    for t in range(1, T + 1):
        expr = form.variation(t)
        if t > 1:
            expr = expr.xreplace({sp.MatrixSymbol(f"δh({t - 1})", n, 1): unrolled[-1]})
        unrolled.append(expr)
    N = form.neumann_blocks()
    sources = [
        sp.MatMul(form.G_steps[s], form._delta("J_x", s + 1), form.x_steps[s])
        + sp.MatMul(form.G_steps[s], form._delta("J_h", s + 1), form.h_steps[s])
        for s in range(T)
    ]
    for t in range(T):
        block = sp.MatAdd(*[sp.MatMul(N[t][s], sources[s]) for s in range(T)])
        assert same(unrolled[t], block), t


def test_update_rules_are_the_slides_double_sums():
    form = rs.braket(rs.cells.slides(), 2)
    rules = form.update_rules()
    k = form.error_ket
    x = form.x_steps
    h = form.h_steps
    # δJ_x = −ε Σ_t Σ_{τ≤t} |δ_t(τ)⟩⟨x(τ)|
    expected = -EPSILON * (k(1, 1) * x[0].T + k(2, 1) * x[0].T + k(2, 2) * x[1].T)
    assert same(rules["J_x"], expected)
    expected = -EPSILON * (k(1, 1) * h[0].T + k(2, 1) * h[0].T + k(2, 2) * h[1].T)
    assert same(rules["J_h"], expected)
    untied = rs.braket(rs.cells.slides(), 2, tied=False).update_rules()
    assert same(untied["J_x"][1], -EPSILON * k(2, 2) * x[1].T)


# ----- numbers: against the core's BPTT and sympy.diff -----


def _agree(a, b) -> float:
    return min(agreement_digits(a[p], b[p]) for p in a)


@pytest.mark.parametrize("name,T,tied", list(_forms(("slides", "elman"))))
def test_braket_gradient_equals_bptt_and_oracle(name, T, tied):
    """Linear loss ⟨d|h⟩ (slides) and eq. (5) (elman), tied and untied, T = 1..4."""
    cell = rs.cells.get(name)
    form = rs.braket(cell, T, tied=tied)
    problem = unrolled_point(cell, T, seed=T, untied=not tied)
    bptt = bptt_gradients(problem, derivation=form.derivation)
    oracle = oracle_gradients(problem, derivation=form.derivation)
    for route in ("update_rule", "closed_form"):
        grads = form.gradients(problem, route=route)
        assert set(grads) == set(cell.params)
        if not tied:
            assert all(len(v) == T for v in grads.values())
        assert _agree(grads, bptt) >= REQUIRED, route
        assert _agree(grads, oracle) >= REQUIRED, route


@pytest.mark.parametrize("name", ["gru", "mgu", "indrnn", "gru_original", "lstm", "lstm_peephole"])
@pytest.mark.parametrize("tied", [True, False])
def test_general_form_gradient_equals_bptt_and_oracle(name, tied):
    cell = rs.cells.get(name)
    T = 2  # the oracle's sympy.diff of a gated cell takes a minute at T = 3
    form = rs.braket(cell, T, tied=tied)
    assert form.slides is None or name == "indrnn"
    problem = unrolled_point(cell, T, seed=7, untied=not tied)
    bptt = bptt_gradients(problem, derivation=form.derivation)
    oracle = oracle_gradients(problem, derivation=form.derivation)
    for route in ("update_rule", "closed_form"):
        grads = form.gradients(problem, route=route)
        assert _agree(grads, bptt) >= REQUIRED
        assert _agree(grads, oracle) >= REQUIRED


def test_general_form_longer_sequence_against_bptt():
    form = rs.braket(rs.cells.gru(), 4)
    problem = unrolled_point(form.cell, 4, seed=3)
    bptt = bptt_gradients(problem, derivation=form.derivation)
    assert _agree(form.gradients(problem, route="closed_form"), bptt) >= REQUIRED


def test_a_wrong_G_is_caught(monkeypatch):
    """Mutation: G(t) = diag(1 − h) instead of diag(1 − h∘h) disagrees with BPTT."""
    form = rs.braket(rs.cells.elman(), 3)
    problem = unrolled_point(form.cell, 3, seed=1)
    bptt = bptt_gradients(problem, derivation=form.derivation)
    assert _agree(form.gradients(problem), bptt) >= REQUIRED
    h = form.state.symbol
    monkeypatch.setattr(form, "G_definition_one_step", lambda: sp.OneMatrix(*h.shape) - h)
    assert _agree(form.gradients(problem), bptt) < 5


# ----- the update rule is a gradient-descent step of the generated kernel -----


@pytest.mark.parametrize("name", ["slides", "elman", "gru"])
def test_update_rule_is_the_kernel_gradient_descent_step(name):
    cell = rs.cells.get(name)
    T = 3
    form = rs.braket(cell, T)
    problem = unrolled_point(cell, T, seed=11)
    eps = sp.Rational(1, 10)
    updated = form.update(problem, eps)[0]

    def arr(m, vector):
        a = np.array(m.evalf(30), dtype=np.float64)
        return a.reshape(-1) if vector else a

    values = problem.values(30)[0]
    params = {n: arr(v, cell.params[n].symbol.shape[1] == 1) for n, v in values.items()}
    inputs = {
        n: np.stack([arr(problem.data[t][n], True)[None, :] for t in range(T)]) for n in cell.inputs
    }
    targets = {
        n: np.stack([arr(problem.data[t][n], True)[None, :] for t in range(T)])
        for n in cell.targets
    }
    _, grads = rs.compile(cell).loss_and_grad(params, inputs, targets)
    for n, value in params.items():
        step = value - 0.1 * grads[n]
        # float64 kernel vs 60-digit bra-ket: rounding of O(1e-16) relative, amplified by at
        # most T steps of O(1) Jacobians; rtol 1e-12 leaves margin, a wrong term is O(1)
        np.testing.assert_allclose(
            arr(updated[n], value.ndim == 1), step, rtol=1e-12, atol=1e-14, err_msg=n
        )


# ----- objects, sizes and errors -----


def test_sympy_objects_and_concrete_sizes():
    form = rs.braket(rs.cells.elman(), 3, sizes={"n": 2, "m": 3, "k": 2})
    assert form.J_h.shape == (6, 6) and form.J_x.shape == (6, 9)
    assert form.x.shape == (9, 1) and form.h.shape == (6, 1) and form.h_shifted.shape == (6, 1)
    S = sp.Matrix(form.S.as_explicit())
    assert S.shape == (6, 6) and S**3 == sp.zeros(6, 6) and S**2 != sp.zeros(6, 6)
    assert (S * form.h.as_explicit())[:2, :] == sp.zeros(2, 1)
    G = form.G.as_explicit()
    assert G.shape == (6, 6)
    symbolic = rs.braket(rs.cells.elman(), 2)
    n = symbolic.cell.size_symbols["n"]
    assert symbolic.J_h.shape == (2 * n, 2 * n)
    assert isinstance(symbolic.G_definition(1), sp.MatrixExpr)


@pytest.mark.parametrize("name", ["elman", "elman_relu", "slides"])
@pytest.mark.parametrize("t", [1, 2])
def test_G_definition_is_the_derivative_of_the_activation(name, t):
    """G(t) = σ′(a(t)) evaluated at a random point, against central differences of σ itself
    (NumPy's tanh / relu / sigmoid, not rnnsym's rules) at a(t) = J_x x(t) + J_h h(t−1) + b."""
    from test_rules import evaluate

    sizes = {"n": 3, "m": 2}
    form = rs.braket(rs.cells.get(name), 2, sizes=sizes)
    dims = {form.cell.size_symbols[k]: v for k, v in sizes.items()}
    expr = form.G_definition(t).xreplace(dims)
    pre = form.at(form.pre_activation(), t).xreplace(dims)
    rng = np.random.default_rng(t)
    env = {}
    for s in sorted(pre.free_symbols, key=str):
        if isinstance(s, sp.MatrixSymbol):
            env[s.name] = rng.normal(size=tuple(int(d) for d in s.shape))
    a = evaluate(pre, env)
    sigma = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0)}.get(
        form.cell.updates[form.state_name].expr.activation.name, lambda z: 1 / (1 + np.exp(-z))
    )
    env[f"{form.state_name}({t})"] = sigma(a)  # h(t), which G(t) may be written with
    eps = 1e-6
    expected = (sigma(a + eps) - sigma(a - eps)) / (2 * eps)
    # central differences: error O(eps²) ≈ 1e-12 on σ‴ = O(1); relu′ is exact away from 0
    assert np.min(np.abs(a)) > 1e-3
    np.testing.assert_allclose(evaluate(expr, env), expected, rtol=0, atol=1e-8)


def test_general_form_has_no_slides_operators():
    form = rs.braket(rs.cells.gru(), 2)
    with pytest.raises(rs.CellError, match="slides form.*'gru'.*A"):
        _ = form.J_h
    assert form.A.shape[0] == 2 * form.n


def test_bad_input():
    lstm = rs.braket(rs.cells.lstm(), 2)
    with pytest.raises(rs.RnnsymError, match="'lstm' has the states h, c: name one"):
        lstm.transition_action(1)
    with pytest.raises(rs.RnnsymError, match="'q' is not a state of cell 'lstm'"):
        lstm.d_definition(1, "q")
    # a loss that reads h(t−1) directly has no ⟨d(t)| on the states of step t
    peek = rs.Cell("peek")
    n, m, k = peek.dims("n m k")
    x, h = peek.input("x", m), peek.state("h", n)
    W, U, V = peek.param("W", n, n), peek.param("U", n, m), peek.param("V", k, n)
    peek.update(h, rs.tanh(W @ h.prev + U @ x))
    out = peek.output("o", V @ h + V @ h.prev)
    peek.loss(rs.squared_error(out, peek.target("y", k)))
    with pytest.raises(rs.CellError, match="'peek' reads the previous state h\\(t−1\\) directly"):
        rs.braket(peek, 2)
    stateless = rs.Cell("stateless")
    n, m = stateless.dims("n m")
    x = stateless.input("x", m)
    out = stateless.output("o", stateless.param("V", n, m) @ x)
    stateless.loss(rs.squared_error(out, stateless.target("y", n)))
    with pytest.raises(rs.CellError, match="'stateless' has no state"):
        rs.braket(stateless, 2)
    with pytest.raises(rs.RnnsymError, match="T >= 1, got 0"):
        rs.braket(rs.cells.elman(), 0)
    with pytest.raises(rs.CellError, match="size 'q' is not a size of cell 'elman'"):
        rs.braket(rs.cells.elman(), 2, sizes={"q": 3})
    with pytest.raises(TypeError, match="rnnsym.Cell"):
        rs.braket("elman", 2)
    form = rs.braket(rs.cells.elman(), 2)
    with pytest.raises(rs.RnnsymError, match="1 <= tau <= t <= T = 2, got t=1, tau=2"):
        form.error_bra(1, 2)
    problem = unrolled_point(form.cell, 3)
    with pytest.raises(rs.RnnsymError, match="T=2"):
        form.gradients(problem)
    with pytest.raises(ValueError, match="route must be"):
        form.gradients(unrolled_point(form.cell, 2), route="sideways")


# ----- output -----


def test_text_reads_like_the_slides():
    text = rs.braket(rs.cells.elman(), 3).pretty()
    for line in [
        "|x⟩ = (x(1), x(2), x(3))ᵀ",
        "𝕁_h = diag(W, W, W)",
        "|h⟩ = tanh(𝕁_x |x⟩ + 𝕁_h |h(t−1)⟩ + |b⟩)",
        "= Σ_{m=1..3n} |m⟩ tanh(⟨m|𝕁_x|x⟩ + ⟨m|𝕁_h|h(t−1)⟩ + ⟨m|b⟩)",
        "𝔾 = Σ_{m=1..3n} |m⟩ tanh′(⟨m|𝕁_x|x⟩ + ⟨m|𝕁_h|h(t−1)⟩ + ⟨m|b⟩) ⟨m|",
        "= diag(G(1), G(2), G(3))",
        "G(t) = diag(1 − h(t) ∘ h(t))",
        "δ𝕁_x = diag(δU, δU, δU) = Σ_{m,n} |m⟩⟨n| δU^{mn}",
        "δ|h(2)⟩ = G(2) (δU |x(2)⟩ + δW |h(1)⟩ + δb + W |δh(1)⟩)",
        "⟨δ_3(1)| = ⟨d(3)| G(3) W G(2) W G(1)",
        "δ⟨d(t)|h(t)⟩ = Σ_{τ≤t} (⟨δ_t(τ)| δU |x(τ)⟩ + ⟨δ_t(τ)| δW |h(τ−1)⟩ + ⟨δ_t(τ)|δb⟩)",
        "= Σ_{m,n} Σ_{τ≤t} (⟨δ_t(τ)|m⟩⟨n|x(τ)⟩ δU^{mn} + ⟨δ_t(τ)|m⟩⟨n|h(τ−1)⟩ δW^{mn}",
        "δ⟨d(3)|h(3)⟩ = ⟨d(3)| G(3) W G(2) W G(1) δU |x(1)⟩ + ",
        "δU^{mn} = −ε Σ_t Σ_{τ≤t} ⟨δ_t(τ)|m⟩⟨n|x(τ)⟩",
        "⟨δ| = ⟨d|(𝕀 − 𝔾𝕁_h𝕊)⁻¹𝔾",
        "|d(t)⟩ = Vᵀ (o(t) − y(t))",
        "⟨δ(τ)| = (⟨d(τ)| + ⟨δ(τ+1)| W) G(τ)",
        "⟨δ(4)| = 0",
    ]:
        assert line in text, line
    # the recurrence steps ⟨δ(τ)| = ∇_{a(τ)}L, not eq. (9)'s ∇_{h(τ)}L: no report label
    assert "eq. (9)" not in text and "§" not in text and "(Suga 2023)" in text
    untied = rs.braket(rs.cells.elman(), 2, tied=False).pretty()
    assert "𝕁_h = diag(W(1), W(2))" in untied and "δW(1) = " in untied
    slides = rs.braket(rs.cells.slides(), 2).pretty()
    assert "L = Σ_{t=1..2} ⟨d(t)|h(t)⟩" in slides  # the slides' linear loss


def test_lstm_text_has_the_stacked_state_and_block_jacobian():
    text = rs.braket(rs.cells.lstm(), 2).pretty()
    for line in [
        "|s(t)⟩ = (|h(t)⟩; |c(t)⟩)",
        "A(t) = ∂s(t)/∂s(t−1)",
        "= [∂h(t)/∂h(t−1)  ∂h(t)/∂c(t−1); ∂c(t)/∂h(t−1)  ∂c(t)/∂c(t−1)]",
        "ū_c(t) = u_c(t) + (1 − tanh(c(t)) ∘ tanh(c(t))) ∘ u_h(t) ∘ o(t)",
        "|u(t)⟩ = (|u_h(t)⟩; |u_c(t)⟩)",
        "[A(t)ᵀ |u(t)⟩]_c = ū_c(t) ∘ f(t)",
        "|d(t)⟩ = (Vᵀ (out(t) − y(t)); 0)",
        "⟨δ(τ)| = ⟨d(τ)| + ⟨δ(τ+1)| A(τ+1)",
        "⟨δ(3)| = 0",
    ]:
        assert line in text, line


def test_latex_uses_the_slides_notation():
    tex = rs.braket(rs.cells.elman(), 3).latex()
    assert tex.startswith(r"\begin{align*}") and tex.endswith(r"\end{align*}")
    # one display per section, so that a page can break between them
    assert tex.count(r"\begin{align*}") == tex.count(r"\end{align*}") == 10
    for piece in [
        r"\mathbb{J}_{h} &= \operatorname{diag}(W, W, W)",
        r"\langle \delta_{3}(1) | &= \langle d(3) | G(3) W G(2) W G(1)",
        r"\left(\mathbb{I} - \mathbb{G}\mathbb{J}_{h}\mathbb{S}\right)^{-1}",
        r"| x \rangle",
        r"\sum_{m=1}^{3 n} | m \rangle\, \tanh\left(\langle m | \mathbb{J}_{x} | x \rangle",
        r"\sum_{m,n} | m \rangle \langle n |\, \delta U^{mn}",
        r"\sum_{\tau \le t}",
        r"\langle \delta(4) | &= 0",
        r"Error bras $\langle\delta_t(\tau)|$, $\tau \le t$",
    ]:
        assert piece in tex, piece
    assert "τ" not in tex and "⟨" not in tex and "𝕁" not in tex and "ū" not in tex
    assert r"\mathbb{1}" not in tex and r"\S" not in tex and "eq. (9)" not in tex
    assert "align*}" in rs.braket(rs.cells.lstm(), 2).latex()


BUILTIN_CELLS = ["slides", "elman", "elman_relu", "indrnn", "mgu", "gru", "gru_original"]
MULTI_STATE = ["lstm", "lstm_peephole"]


def _compile(tex_body: str, tmp_path) -> str:
    """pdflatex on the body wrapped in a minimal article (6.5in text width, as in a paper with
    1in margins); returns the log."""
    doc = (
        "\\documentclass{article}\n\\usepackage[margin=1in]{geometry}\n"
        "\\usepackage{amsmath,amssymb}\n\\allowdisplaybreaks\n\\begin{document}\n"
        f"{tex_body}\n\\end{{document}}\n"
    )
    (tmp_path / "doc.tex").write_text(doc, encoding="utf-8")
    run = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    log = (tmp_path / "doc.log").read_text(encoding="latin-1")
    assert run.returncode == 0, log[-3000:]
    return log


@pytest.mark.skipif(
    shutil.which("pdflatex") is None,
    reason="pdflatex is not on PATH: install texlive-latex-base to test the LaTeX output",
)
@pytest.mark.parametrize(
    "name,T,tied",
    [(c, 2, True) for c in BUILTIN_CELLS + MULTI_STATE]
    + [("elman", 4, True), ("elman", 4, False), ("lstm", 4, False), ("elman", 6, False)],
)
def test_latex_compiles_without_overfull_boxes(name, T, tied, tmp_path):
    log = _compile(rs.braket(rs.cells.get(name), T, tied=tied).latex(), tmp_path)
    assert "! " not in log
    # no line wider than the text by more than 10pt (the limit for a paper)
    too_wide = [float(w) for w in re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide\)", log)]
    assert all(w <= 10 for w in too_wide), too_wide


def test_cli_braket(capsys):
    assert main(["braket", "elman", "--T", "3"]) == 0
    out = capsys.readouterr().out
    assert "⟨δ_3(1)| = ⟨d(3)| G(3) W G(2) W G(1)" in out
    assert "closed form vs sympy.diff" in out and "result: all checks passed" in out
    assert main(["braket", "slides", "--T", "2", "--latex", "--untied"]) == 0
    out = capsys.readouterr().out
    first, group, rest = out.split("\n", 2)
    assert first.startswith("% Generated by rnnsym ") and rest.startswith(r"\begin{align*}")
    assert group.startswith(r"{\allowdisplaybreaks")  # pastes as is, displays may break pages
    tail = out.split("\\end{align*}\n}\n")[-1]
    assert all(line.startswith("%") for line in tail.split("\n") if line)
    assert main(["braket", "lstm", "--T", "2"]) == 0
    out = capsys.readouterr().out
    assert "|s(t)⟩ = (|h(t)⟩; |c(t)⟩)" in out and "result: all checks passed" in out


def test_braket_report_fails_when_a_route_is_wrong(monkeypatch):
    form = rs.braket(rs.cells.elman(), 2)
    original = form.gradients

    def broken(problem, digits=60, route="update_rule"):
        grads = original(problem, digits, route)
        grads["W"] = grads["W"] * sp.Rational(1001, 1000)
        return grads

    monkeypatch.setattr(form, "gradients", broken)
    report = braket_report(form)
    assert not report.ok and "CHECKS FAILED" in str(report)


# ----- the slides' component form, 𝔾 and the chain, in numbers -----


def _point_env(form, problem, digits=60):
    """{step symbol: value} at a random point: parameters of step 1 (tied), x(t), h(t), G(t)."""
    from rnnsym.ir.explicit import explicit as _explicit
    from rnnsym.verify.symbolic import _run_forward

    cell, dims = form.cell, problem.dims

    def num(m):
        return sp.ImmutableMatrix(m).evalf(digits)

    envs = _run_forward(form.derivation.inlined(), problem, problem.values(digits), num)
    n = envs[0][cell.states[form.state_name].symbol.xreplace(dims)].shape[0]
    env = {form.param(p, 1): problem.values(digits)[0][p] for p in cell.params}
    hs = [sp.zeros(n, 1)] + [e[cell.states[form.state_name].symbol.xreplace(dims)] for e in envs]
    for t in range(form.T + 1):
        env[form.h_steps[t]] = hs[t]
    for t in range(1, form.T + 1):
        env[form.x_steps[t - 1]] = problem.data[t - 1][form.slides.input]
        env[form.step("d", t, (form.n, 1))] = problem.data[t - 1][next(iter(cell.targets))]
    for t in range(1, form.T + 1):
        diag = _explicit(form.G_definition(t), dims, env)
        env[form.G_steps[t - 1]] = num(sp.diag(*list(diag)))
    return env


@pytest.mark.parametrize("name", ["slides", "elman", "elman_relu"])
def test_component_form_and_G_sum_equal_the_recurrence(name):
    """|h⟩ = Σ_m |m⟩σ(⟨m|𝕁_x|x⟩ + ⟨m|𝕁_h|h(t−1)⟩ + ⟨m|b⟩) is the kets of the states the
    derivation's forward pass computes, and 𝔾 = Σ_m |m⟩σ′(…)⟨m| is diag(G(1), …, G(T)) with
    G(t) = diag(σ′(a(t))): both at a random rational point, 60 digits, 40 needed."""
    from rnnsym.ir.explicit import explicit as _explicit

    sizes = {"n": 3, "m": 2, "k": 2}
    cell = rs.cells.get(name)
    sizes = {k: v for k, v in sizes.items() if k in cell.size_symbols}
    form = rs.braket(cell, 3, sizes=sizes)
    problem = unrolled_point(cell, 3, sizes=sizes, seed=5)
    env = _point_env(form, problem)
    h = sp.ImmutableMatrix(form.h.xreplace(env).as_explicit())
    assert agreement_digits(_explicit(form.component_form(), {}, env), h) >= REQUIRED
    G = sp.ImmutableMatrix(form.G.xreplace(env).as_explicit())
    assert agreement_digits(_explicit(form.G_component_form(), {}, env), G) >= REQUIRED
    # G(t) is diagonal and not the identity (the test would pass vacuously otherwise)
    assert G != sp.eye(G.shape[0]) and G == sp.diag(*[G[i, i] for i in range(G.shape[0])])
    with pytest.raises(rs.RnnsymError, match="concrete sizes"):
        rs.braket(cell, 2).component_form()


@pytest.mark.parametrize("t", [1, 2, 3])
def test_chain_is_the_derivative_of_the_linear_loss(t):
    """δ⟨d(t)|h(t)⟩ = Σ_{τ≤t}(⟨δ_t(τ)|δJ_x|x(τ)⟩ + ⟨δ_t(τ)|δJ_h|h(τ−1)⟩) against central finite
    differences of ⟨d(t)|h(t)⟩ along a random direction (δJ_x, δJ_h), with the slides' cell."""
    from rnnsym.ir.explicit import explicit as _explicit

    sizes = {"n": 3, "m": 2}
    cell = rs.cells.slides()
    form = rs.braket(cell, 3, sizes=sizes)
    problem = unrolled_point(cell, 3, sizes=sizes, seed=t)
    env = _point_env(form, problem)
    rng = np.random.default_rng(t)
    direction = {
        name: sp.ImmutableMatrix(rng.normal(size=tuple(int(s) for s in form.param(name, 1).shape)))
        for name in ("J_x", "J_h")
    }
    for name, value in direction.items():
        env[form._delta(name, 1)] = value
    chain = float(_explicit(form.chain(t), {}, env)[0, 0])

    J = {name: np.array(problem.values(30)[0][name], dtype=float) for name in ("J_x", "J_h")}
    xs = [np.array(problem.data[i]["x"], dtype=float) for i in range(3)]
    d = np.array(problem.data[t - 1]["d"], dtype=float)

    def loss(eps: float) -> float:  # ⟨d(t)|h(t)⟩ with J + eps δJ, NumPy's tanh
        Jx = J["J_x"] + eps * np.array(direction["J_x"], dtype=float)
        Jh = J["J_h"] + eps * np.array(direction["J_h"], dtype=float)
        h = np.zeros((3, 1))
        for i in range(t):
            h = np.tanh(Jx @ xs[i] + Jh @ h)
        return (d.T @ h).item()

    eps = 1e-5
    fd = (loss(eps) - loss(-eps)) / (2 * eps)
    # central differences: truncation O(eps²·|third derivative|) ≈ 1e-10, rounding of the
    # float64 losses ≈ 1e-16/eps ≈ 1e-11; a missing term of the chain is O(0.1) or more
    assert abs(chain - fd) <= 1e-8 * max(1.0, abs(fd)), (chain, fd)
    assert abs(fd) > 1e-3  # a non-trivial direction


def test_lstm_bra_ket_report_passes():
    report = braket_report(rs.braket(rs.cells.lstm(), 2))
    assert report.ok, report
    assert set(report.columns) == {
        "update rule vs BPTT",
        "closed form vs BPTT",
        "closed form vs sympy.diff",
    }
    assert set(next(iter(report.columns.values()))) == set(rs.cells.lstm().params)


def test_a_wrong_lstm_transition_is_caught(monkeypatch):
    """Mutation: dropping the forget gate from ∂c(t)/∂c(t−1) disagrees with BPTT."""
    form = rs.braket(rs.cells.lstm(), 3)
    problem = unrolled_point(form.cell, 3, seed=2)
    bptt = bptt_gradients(problem, derivation=form.derivation)
    assert _agree(form.gradients(problem, route="closed_form"), bptt) >= REQUIRED
    c_total = form.totals["c"]
    form.carry_exprs = dict(form.carry_exprs, c=c_total)  # ū_c instead of ū_c ∘ f
    assert _agree(form.gradients(problem, route="closed_form"), bptt) < 5


@pytest.mark.parametrize("name", ["elman", "gru", "lstm"])
def test_a_bra_meeting_a_ket_is_one_bracket(name):
    """⟨d(2)|δ_θh(2)⟩, never ⟨d(2)| |δ_θh(2)⟩, in the text and the LaTeX."""
    form = rs.braket(rs.cells.get(name), 2)
    text, latex = form.pretty(), form.latex()
    assert not re.search(r"\|\s+\|", text), text
    assert not re.search(r"(?<!\\)\|\s+\|", latex), latex
    assert "⟨d(2)|" in text
