"""Hessian- and Gauss–Newton-vector products (rnnsym.tangent, rnnsym.second_order).

H v is checked against central differences of the generated gradient on every built-in cell
and a user cell, against an exact SymPy oracle (sympy.diff twice of the unrolled loss), and
for symmetry; G v against torch.autograd's J_oᵀ H_ℓ J_o v, and for positive semi-definiteness.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import sympy as sp

import rnnsym as rs
from rnnsym import second_order as so
from rnnsym.cells import BUILTIN
from rnnsym.tangent import tangent_cell
from rnnsym.verify import random_problem

_KERNELS: dict = {}  # name -> kernel; each tangent kernel is generated once per module


def kernel_of(name: str):
    if name not in _KERNELS:
        _KERNELS[name] = rs.compile(BUILTIN[name].make())
    return _KERNELS[name]


def problem(cell, seed: int = 0, sizes=None):
    sizes = sizes or {n: 2 + i for i, n in enumerate(sorted(cell.size_symbols))}
    params, inputs, targets = random_problem(cell, sizes, T=3, B=2, seed=seed)
    rng = np.random.default_rng(seed + 100)
    v = {n: rng.normal(size=np.shape(p)) for n, p in params.items()}
    return params, inputs, targets, v


def user_cell() -> rs.Cell:
    """A cell written here: a gated unit with a softplus, a user elementwise function and two
    loss terms (squared error and a linear term in log(1 + h∘h), whose second derivative needs
    log″)."""
    cubic = rs.elementwise("soft_cubic", lambda z: z / (1 + z**2))
    cell = rs.Cell("user_gated")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    a = cell.param("a", n)
    z = cell.define("z", rs.sigmoid(U @ x + a))
    cell.update(h, z * cubic(W @ h.prev + b) + (1 - z) * rs.softplus(h.prev))
    y = cell.target("y", n)
    cell.loss(rs.squared_error(h, y))
    cell.loss(rs.linear_loss(y, rs.log(1 + h * h)))
    return cell


# ----- H v against finite differences of the gradient -----


def _check_fd(kernel, seed: int = 0) -> float:
    params, inputs, targets, v = problem(kernel.cell, seed)
    value = kernel.hvp(params, inputs, targets, v)
    assert set(value) == set(params)
    for name in params:
        assert value[name].shape == np.shape(params[name])
    reference = so.finite_difference_hvp(kernel, params, inputs, targets, v, so.FD_EPS)
    return so.hvp_error(reference, value)


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_hvp_matches_finite_differences_on_every_builtin(name):
    # ε = 1e-5 (so.FD_EPS): truncation ~ε²‖∂³L‖ ≈ 1e-10, roundoff ~2.2e-16‖∇L‖/ε ≈ 1e-11 for
    # these O(1) problems, so 1e-6 relative (the bound) holds with margin; a wrong
    # second-order term is O(1) relative
    assert _check_fd(kernel_of(name)) < 1e-6


def test_hvp_matches_finite_differences_on_a_user_cell():
    # the same ε and tolerance as above, for the reasons given there
    kernel = rs.compile(user_cell())
    assert _check_fd(kernel, seed=3) < 1e-6


def test_hvp_is_the_derivative_of_the_gradient_not_the_gradient():
    # a mutant check: H v differs from ∇L (by O(1)), and scales linearly with v (exactly up
    # to rounding: 1e-12 relative, a few ulps times the kernel's O(10) terms)
    kernel = kernel_of("elman")
    params, inputs, targets, v = problem(kernel.cell)
    hv = kernel.hvp(params, inputs, targets, v)
    _, grad = kernel.loss_and_grad(params, inputs, targets)
    assert so.hvp_error(grad, hv) > 1e-2
    h2v = kernel.hvp(params, inputs, targets, {n: 2.0 * a for n, a in v.items()})
    assert so.hvp_error({n: 2.0 * a for n, a in hv.items()}, h2v) < 1e-12


def test_hvp_with_initial_state():
    # h(0) given: ḣ(0) stays zero (v is over parameters only); same ε and tolerance as above
    kernel = kernel_of("lstm")
    params, inputs, targets, v = problem(kernel.cell, seed=5)
    rng = np.random.default_rng(7)
    h0 = {
        name: rng.normal(size=(2, kernel.forward(params, inputs)[name].shape[-1]))
        for name in kernel.cell.states
    }
    value = kernel.hvp(params, inputs, targets, v, h0=h0)
    reference = so.finite_difference_hvp(kernel, params, inputs, targets, v, so.FD_EPS, h0)
    assert so.hvp_error(reference, value) < 1e-6


def _dot(a: dict, b: dict) -> float:
    return sum(float(np.sum(np.asarray(a[n]) * np.asarray(b[n]))) for n in a)


@pytest.mark.parametrize("name", ["elman", "gru", "elman_softmax"])
def test_hvp_is_symmetric(name):
    # ⟨u, H v⟩ = ⟨v, H u⟩: exact in exact arithmetic; the two sides are sums of O(100) float64
    # products of O(10) size, so they agree to 1e-10 relative
    kernel = kernel_of(name)
    params, inputs, targets, v = problem(kernel.cell, seed=1)
    _, _, _, u = problem(kernel.cell, seed=2)
    uHv = _dot(u, kernel.hvp(params, inputs, targets, v))
    vHu = _dot(v, kernel.hvp(params, inputs, targets, u))
    assert abs(uHv - vHu) <= 1e-10 * max(abs(uHv), 1.0)


# ----- the exact oracle: sympy.diff twice of the unrolled Elman loss -----


def test_hvp_against_sympy_diff_twice():
    # Elman at n = 2, m = k = 1, T = 2, B = 1 with rational parameters: H v computed by
    # sympy.diff twice of the unrolled scalar loss and evaluated to 30 digits; the kernel
    # computes in float64, so the two agree to 1e-10 relative (rounding ~1e-15 per operation)
    cell = BUILTIN["elman"].make()
    kernel = kernel_of("elman")
    n, m, k, T = 2, 1, 1, 2
    rng = np.random.default_rng(11)

    def rational(shape):
        return np.vectorize(lambda z: sp.Rational(int(z), 16))(rng.integers(-12, 13, size=shape))

    shapes = {"W": (n, n), "U": (n, m), "b": (n,), "V": (k, n), "c": (k,)}
    point = {p: rational(s) for p, s in shapes.items()}
    direction = {p: rational(s) for p, s in shapes.items()}
    xs = [rational((m,)) for _ in range(T)]
    ys = [rational((k,)) for _ in range(T)]
    eps = sp.Symbol("eps")
    syms = {
        p: sp.Matrix(
            *((s[0], s[1]) if len(s) == 2 else (s[0], 1)),
            lambda i, j, p=p: sp.Symbol(f"{p}_{i}_{j}"),
        )
        for p, s in shapes.items()
    }

    def column(a):
        return sp.Matrix(np.asarray(a).reshape(len(a), -1).tolist())

    moved = {
        p: syms[p] + eps * sp.Matrix(np.asarray(direction[p]).reshape(syms[p].shape).tolist())
        for p in shapes
    }
    h = sp.zeros(n, 1)
    loss = 0
    for t in range(T):
        h = (moved["b"] + moved["W"] * h + moved["U"] * column(xs[t])).applyfunc(sp.tanh)
        o = moved["c"] + moved["V"] * h
        d = o - column(ys[t])
        loss += (d.T * d)[0, 0] / 2
    along_v = sp.diff(loss, eps).subs(eps, 0)  # Dℒ[v] as a function of θ
    at = {
        syms[p][i, j]: sp.Matrix(np.asarray(point[p]).reshape(syms[p].shape).tolist())[i, j]
        for p in shapes
        for i in range(syms[p].shape[0])
        for j in range(syms[p].shape[1])
    }
    params = {p: np.asarray(point[p], dtype=float) for p in shapes}
    v = {p: np.asarray(direction[p], dtype=float) for p in shapes}
    inputs = {"x": np.asarray(xs, dtype=float).reshape(T, 1, m)}
    targets = {"y": np.asarray(ys, dtype=float).reshape(T, 1, k)}
    value = kernel.hvp(params, inputs, targets, v)
    assert cell.params.keys() == value.keys()
    for p in shapes:
        exact = np.array(
            [
                [
                    float(sp.diff(along_v, syms[p][i, j]).subs(at).evalf(30))
                    for j in range(syms[p].shape[1])
                ]
                for i in range(syms[p].shape[0])
            ]
        ).reshape(np.shape(params[p]))
        scale = max(np.max(np.abs(exact)), 1e-300)
        assert np.max(np.abs(value[p] - exact)) <= 1e-10 * scale, p


# ----- G v against torch.autograd -----


def _torch_elman(torch, x):
    def outputs(W, U, b, V, c):
        T, B, _ = x.shape
        h = torch.zeros(B, W.shape[0], dtype=torch.float64)
        os_ = []
        for t in range(T):
            h = torch.tanh(b + h @ W.T + x[t] @ U.T)
            os_.append(c + h @ V.T)
        return torch.stack(os_)

    return outputs


@pytest.mark.parametrize("name", ["elman", "elman_softmax"])
def test_gnvp_against_torch(name):
    # G v = J_oᵀ H_ℓ J_o v with J_o from torch.autograd (jvp, then vjp) and H_ℓ written here:
    # I for ½‖o − y‖², diag(p) − p pᵀ for softmax cross-entropy. Both sides are float64 sums of
    # O(100) terms of O(1): 1e-10 relative
    torch = pytest.importorskip("torch")
    kernel = kernel_of(name)
    params, inputs, targets, v = problem(kernel.cell, seed=4)
    order = ["W", "U", "b", "V", "c"]
    x = torch.tensor(inputs["x"])
    f = _torch_elman(torch, x)
    primals = tuple(torch.tensor(params[p]) for p in order)
    tangents = tuple(torch.tensor(v[p]) for p in order)
    o, o_dot = torch.autograd.functional.jvp(f, primals, tangents)
    if name == "elman":
        u = o_dot
    else:
        p = torch.softmax(o, dim=-1)
        u = p * o_dot - p * (p * o_dot).sum(-1, keepdim=True)
    _, gv = torch.autograd.functional.vjp(f, primals, u)
    expected = {name_: g.numpy() for name_, g in zip(order, gv, strict=True)}
    value = kernel.gnvp(params, inputs, targets, v)
    assert so.hvp_error(expected, value) < 1e-10
    # and G differs from H (the loss is not linear in θ's tangents): a mutant check
    assert so.hvp_error(expected, kernel.hvp(params, inputs, targets, v)) > 1e-3


@pytest.mark.parametrize(
    "name", ["elman", "elman_relu", "lstm", "gru_original", "output_feedback", "elman_softmax"]
)
def test_gnvp_is_positive_semidefinite_for_convex_losses(name):
    # squared error and softmax cross-entropy are convex in o, so ⟨v, G v⟩ = Σ_t ȯᵀ H_ℓ ȯ ≥ 0
    # for every v (a sign check that could fail); -1e-12 allows rounding of an exact zero
    kernel = kernel_of(name)
    params, inputs, targets, _ = problem(kernel.cell)
    rng = np.random.default_rng(9)
    for _ in range(5):
        v = {n: rng.normal(size=np.shape(p)) for n, p in params.items()}
        assert _dot(v, kernel.gnvp(params, inputs, targets, v)) >= -1e-12


def test_gnvp_of_a_linear_loss_is_zero():
    # the slides' loss ⟨d|h⟩ is linear in h: H_ℓ = 0, so G = 0 exactly
    kernel = kernel_of("slides")
    params, inputs, targets, v = problem(kernel.cell)
    value = kernel.gnvp(params, inputs, targets, v)
    assert all(np.all(value[n] == 0) for n in params)
    assert set(value) == set(params)


# ----- the tangent cell itself -----


def test_tangent_cell_declares_directions_and_tangents():
    made = tangent_cell(BUILTIN["lstm"].make(), "hvp")
    assert made.directions == {p: f"v_{p}" for p in BUILTIN["lstm"].make().params}
    for state in ("h", "c"):
        assert f"{state}_dot" in made.cell.states
    # a tangent of an intermediate named g_... would read as an adjoint: it is renamed
    made = tangent_cell(BUILTIN["gru"].make(), "hvp")
    assert all(not name.startswith("g_") for name in made.cell._vars)


def test_bad_kind():
    with pytest.raises(ValueError, match="kind='third'"):
        tangent_cell(BUILTIN["elman"].make(), "third")


# ----- bad input -----


def test_direction_missing_a_parameter():
    kernel = kernel_of("elman")
    params, inputs, targets, v = problem(kernel.cell)
    del v["V"]
    with pytest.raises(ValueError, match="missing: V"):
        kernel.hvp(params, inputs, targets, v)


def test_direction_with_an_extra_key():
    kernel = kernel_of("elman")
    params, inputs, targets, v = problem(kernel.cell)
    v["Q"] = np.zeros(3)
    with pytest.raises(ValueError, match="not a parameter: Q"):
        kernel.gnvp(params, inputs, targets, v)


def test_direction_with_a_wrong_shape():
    kernel = kernel_of("elman")
    params, inputs, targets, v = problem(kernel.cell)
    v["W"] = np.zeros((3, 7))
    with pytest.raises(ValueError, match=r"v\['W'\] has shape \(3, 7\).*params\['W'\] has shape"):
        kernel.hvp(params, inputs, targets, v)


def test_direction_not_a_dict():
    kernel = kernel_of("elman")
    params, inputs, targets, _ = problem(kernel.cell)
    with pytest.raises(ValueError, match="v must be a dict"):
        kernel.hvp(params, inputs, targets, [1.0])


# ----- the module API and the CLI entry -----


def test_module_functions_take_a_cell_or_a_kernel():
    cell = BUILTIN["elman"].make()
    kernel = kernel_of("elman")
    params, inputs, targets, v = problem(cell)
    from_cell = so.hvp(cell, params, inputs, targets, v)
    from_kernel = so.hvp(kernel, params, inputs, targets, v)
    # the same generated code on the same data: bitwise equal
    assert all(np.array_equal(from_cell[n], from_kernel[n]) for n in params)
    assert so.gnvp(kernel, params, inputs, targets, v).keys() == params.keys()
    with pytest.raises(TypeError, match="rnnsym.Cell or a kernel"):
        so.hvp("elman", params, inputs, targets, v)


def test_second_order_derivation_prints():
    derivation = so.second_order_derivation(kernel_of("elman"))
    text = derivation.pretty()
    assert "h_dot⁽ᵗ⁾ =" in text and "∇_v_W L" in text
    latex = derivation.latex()
    assert r"h_{\mathrm{dot}}^{(t)}" in latex and "\\begin{align}" in latex


def test_cli_order2(capsys):
    cell = BUILTIN["indrnn"].make()
    code = so.cli_order2(cell, argparse.Namespace(latex=False, T=3))
    out = capsys.readouterr().out
    assert code == 0
    assert "h_dot⁽ᵗ⁾ =" in out
    assert "H v agrees with central differences" in out
    code = so.cli_order2(BUILTIN["elman"].make(), argparse.Namespace(latex=True, T=None))
    out = capsys.readouterr().out
    assert code == 0 and "\\begin{align}" in out and "% H v agrees" in out


def test_cli_order2_refuses_a_model():
    with pytest.raises(rs.CellError, match="bidirectional.*Model"):
        so.cli_order2(rs.cells.get("bidirectional"), argparse.Namespace(latex=False, T=None))


@pytest.mark.parametrize("kind", ["hvp", "gnvp"])
def test_lengths_equal_each_sequence_alone(kind):
    # a padded batch (lengths 3 and 1, garbage past the end) gives the sum of the products of
    # each sequence run alone at its own length: the same float64 sums in another order, so
    # 1e-12 relative
    kernel = kernel_of("gru_original")
    params, inputs, targets, v = problem(kernel.cell, seed=6)
    lengths = np.array([3, 1])
    padded_inputs = {n: a.copy() for n, a in inputs.items()}
    padded_inputs["x"][1:, 1] = 1e3  # past the second sequence's end: must not matter
    value = getattr(kernel, kind)(params, padded_inputs, targets, v, lengths=lengths)
    alone = [
        getattr(kernel, kind)(
            params,
            {n: a[:length, b : b + 1] for n, a in inputs.items()},
            {n: a[:length, b : b + 1] for n, a in targets.items()},
            v,
        )
        for b, length in enumerate(lengths)
    ]
    total = {n: alone[0][n] + alone[1][n] for n in params}
    assert so.hvp_error(total, value) < 1e-12


def test_gauss_newton_derivation_and_a_linear_loss():
    derivation = so.second_order_derivation(kernel_of("elman_softmax"), "gnvp")
    text = derivation.pretty()
    # the tangent of p = softmax(o), ṗ = p ∘ ȯ − p (pᵀ ȯ), is an output, and the loss's
    # curvature term is ½ ṗᵀ ȯ = ½ ȯᵀ (diag p − p pᵀ) ȯ
    assert "softmax_o_dot⁽ᵗ⁾ = (softmax(c + V h⁽ᵗ⁾)) ∘ (" in text
    assert "L⁽ᵗ⁾ = ½ softmax_o_dot⁽ᵗ⁾ᵀ o_dot⁽ᵗ⁾ + logsumexp(o⁽ᵗ⁾) − y⁽ᵗ⁾ᵀ o⁽ᵗ⁾" in text
    with pytest.raises(ValueError, match="linear in what it reads"):
        so.second_order_derivation(kernel_of("slides"), "gnvp")


def test_generated_tangent_kernels_are_deterministic():
    # the same source in a fresh interpreter with another string-hash seed (set iteration
    # order differs between them)
    import hashlib
    import os
    import subprocess
    import sys

    script = (
        "import hashlib, rnnsym as rs\n"
        "k = rs.compile(rs.cells.get('elman_softmax'))\n"
        "print(hashlib.sha256(k.second_order_kernel('gnvp')[0].source.encode()).hexdigest())\n"
    )
    here = hashlib.sha256(
        kernel_of("elman_softmax").second_order_kernel("gnvp")[0].source.encode()
    ).hexdigest()
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert run.stdout.strip() == here


@pytest.mark.parametrize("name", ["elman", "elman_softmax"])
def test_tangent_cell_passes_rnnsym_verify(name):
    # the tangent cell is a cell like any other: its generated kernel (whose θ-gradient is H v)
    # agrees with rnnsym's 60-digit scalar oracle (sympy.diff node by node over the unrolled
    # graph) and with the kernel checks, at their own stated tolerances
    from rnnsym.verify import verify

    report = verify(tangent_cell(BUILTIN[name].make(), "hvp").cell, T=2)
    assert report.ok, str(report)


def test_the_tangent_derivation_numbers_only_the_reports_own_equations():
    # the forward updates and outputs are the report's eqs. (2)-(4) where the cell's are; the
    # gradients of the tangent loss (the derivative of L along v) are not its eqs. (6)-(9)
    from rnnsym.second_order import second_order_derivation

    text = second_order_derivation(rs.cells.elman()).pretty()
    assert "[report eqs. (2)-(3)]" in text and "[report eq. (4)]" in text
    for n in (5, 6, 7, 8, 9):
        assert f"eq. ({n})" not in text, n
