"""Cells other than Elman: derived, generated and checked by the same machinery."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from cells import CATALOGUE

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle

ALL_CELLS = {**CATALOGUE, **{f"builtin_{n}": b.make for n, b in rs.cells.BUILTIN.items()}}


@pytest.fixture(scope="module", params=sorted(ALL_CELLS))
def cell_and_kernel(request):
    cell = ALL_CELLS[request.param]()
    return cell, rs.compile(cell)


@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_matches_finite_differences(cell_and_kernel, seed):
    cell, kernel = cell_and_kernel
    params, inputs, targets = random_problem(cell, T=5, B=2, seed=seed)
    report = check_gradients(kernel, params, inputs, targets)
    # 1e-6: central differences at eps = 1e-6 are accurate to ~1e-8 for these smooth cells
    assert report.ok, str(report)


def test_float32_follows_float64(cell_and_kernel):
    cell, kernel = cell_and_kernel
    params, inputs, targets = random_problem(cell, T=6, B=3, seed=2)
    loss64, grads64 = kernel.loss_and_grad(params, inputs, targets)

    def f32(d):  # class indices stay integers
        return {k: v if v.dtype.kind in "iu" else v.astype(np.float32) for k, v in d.items()}

    loss32, grads32 = kernel.loss_and_grad(f32(params), f32(inputs), f32(targets))
    assert np.asarray(loss32).dtype == np.float32
    # float32 rounding (1.2e-7) amplified through 6 steps of gates: 1e-4 relative to the
    # largest entry is generous for these O(1) weights and still fails for a wrong kernel
    assert abs(loss32 - loss64) <= 1e-4 * max(1.0, abs(loss64))
    for name, g in grads64.items():
        assert grads32[name].dtype == np.float32
        np.testing.assert_allclose(grads32[name], g, rtol=0, atol=1e-4 * max(1.0, np.abs(g).max()))


def test_gru_like_oracle():
    """Exact check of a gated cell with the reset gate inside a matrix product (T = 2)."""
    report = scalar_oracle(CATALOGUE["gru_like"](), sizes={"n": 2, "m": 2}, T=2)
    assert report.ok, str(report)


def test_lstm_like_derivation_uses_same_step_state():
    d = rs.derive(CATALOGUE["lstm_like"]())
    # ∇c(t) gets a within-step term through h(t) = o ∘ tanh(c(t)), and a carry from c(t+1)
    (within,) = d.state_local["c"]
    assert "g_h" in {s.name for s in within.free_symbols}
    assert "c" in d.carry and "h" in d.carry


# ----- issue 10: clear errors for what a cell cannot hold -----


def _base():
    cell = rs.Cell("c")
    n, m = cell.dims("n m")
    return cell, cell.input("x", m), cell.state("h", n), cell.param("U", n, m)


@pytest.mark.parametrize(
    ("name", "function", "message"),
    [
        ("e_floor", lambda z: sp.floor(z), "derivative of floor"),
        ("e_heaviside", lambda z: sp.Heaviside(z), "derivative of Heaviside"),
        ("e_sign", lambda z: sp.sign(z), "derivative of sign"),
        ("e_gamma", lambda z: sp.gamma(z), "gamma.* cannot be computed with NumPy"),
        ("e_undef", lambda z: sp.Function("f")(z), "undefined function"),
        ("e_str", lambda z: "z + 1", "got 'z \\+ 1' of type str"),
        ("e_complex", lambda z: sp.I * z, "not real"),
    ],
)
def test_elementwise_refuses_at_definition(name, function, message):
    with pytest.raises(rs.CellError, match=message):
        rs.elementwise(name, function)


def test_elementwise_string_is_never_evaluated(tmp_path):
    marker = tmp_path / "ran"
    source = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    with pytest.raises(rs.CellError):
        rs.elementwise("e_code", lambda z: source)
    assert not marker.exists()


def test_scalar_coefficients_of_every_kind():
    from fractions import Fraction

    cell, x, h, U = _base()
    for value, want in [
        (np.float64(0.5), sp.Rational(1, 2)),
        (np.float32(0.25), sp.Rational(1, 4)),
        (np.int64(3), sp.Integer(3)),
        (Fraction(1, 3), sp.Rational(1, 3)),
        (sp.Integer(2), sp.Integer(2)),
    ]:
        term = value * (U @ x)
        assert isinstance(term, rs.Term)
        assert term.expr.args[0] == want
    with pytest.raises(rs.CellError, match="complex"):
        (1 + 2j) * (U @ x)
    with pytest.raises(rs.CellError, match="free symbols .*alpha"):
        sp.Symbol("alpha") * (U @ x)
    with pytest.raises(rs.CellError, match="NumPy array"):
        np.ones(2) * (U @ x)


def test_numpy_functions_on_a_term_name_the_rnnsym_function():
    cell, x, h, U = _base()
    with pytest.raises(rs.CellError, match="np.tanh .*use rs.tanh"):
        np.tanh(U @ x)
    with pytest.raises(rs.CellError, match="np.exp .*use rs.exp"):
        np.exp(U @ x)


def test_a_parameter_vector_stacked_with_per_step_data():
    """W [h(t−1); b] with b a parameter (formerly refused: "cannot stack parameters and
    per-step data"): the parameter is repeated in every row; both modes pass rs.verify."""
    cell = rs.Cell("concat_param")
    n, m, r, k = cell.dims("n m r k")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, b = cell.param("W", n, n + r), cell.param("U", n, m), cell.param("b", r)
    cell.update(h, rs.tanh(W @ rs.concat(h.prev, b) + U @ x))
    V = cell.param("V", k, n)
    cell.loss(rs.squared_error(cell.output("o", V @ h), cell.target("y", k)))
    # verify: the oracle at 40 of 60 digits; kernel checks within 1e-9 (float64), 1e-4 (float32)
    assert rs.verify(cell).ok
    assert rs.verify(cell, rs.compile(cell, mode="forward"), oracle=False).ok


def test_a_user_function_with_a_constant_derivative():
    """f(z) = 3 z + 1: its derivative is the number 3, which the kernel must spread over the
    entries of its argument (a review found the NumPy kernel indexing a plain 3 per step)."""
    affine = rs.elementwise("affine_test_fn", lambda z: sp.Integer(3) * z + 1)
    cell = rs.Cell("constant_derivative")
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("h", n)
    cell.update(h, 0.5 * rs.tanh(affine(h.prev)) + cell.param("U", n, m) @ x)
    cell.loss(rs.squared_error(cell.output("o", cell.param("V", k, n) @ h), cell.target("y", k)))
    report = rs.verify(cell)
    assert report.ok, report


def test_a_parameter_of_one_row():
    """w declared (1, m) is a 2-D array (1, m), unlike a vector parameter (a 1-D array): the
    kernel multiplies by w.T, not by a column made of it (found in review)."""
    cell = rs.Cell("one_row_parameter")
    m = cell.dims("m")
    x, h = cell.input("x", m), cell.state("h", 1)
    gate = rs.sigmoid(cell.param("w", 1, m) @ x)
    cell.update(h, gate * h.prev + cell.param("u", 1, m) @ x)
    cell.loss(rs.squared_error(cell.output("o", h), cell.target("y", 1)))
    params, _, _ = random_problem(cell, T=3, B=2)
    assert params["w"].shape[0] == 1 and params["w"].ndim == 2
    for schedule in ("scan", "sequential"):
        report = rs.verify(cell, rs.compile(cell, schedule=schedule))
        assert report.ok, (schedule, report)
