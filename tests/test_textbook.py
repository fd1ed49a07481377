"""The derived Elman equations equal the report's eqs. (6)-(9), checked symbolically.

The right-hand sides below are written straight from the report's eqs. (6)-(9), with
diag(1 - h^2) as an explicit diagonal matrix, independently of rnnsym's rules. Both sides are
expanded entry by entry at concrete sizes (distinct n, m, k so that a transposition cannot
cancel) and must agree exactly: the difference of every entry is the polynomial 0.
"""

from __future__ import annotations

import pytest
import sympy as sp
from sympy import MatrixSymbol

import rnnsym as rs
from rnnsym.derive import adjoint_symbol, next_symbol

SIZES = {"n": 3, "m": 2, "k": 4}


@pytest.fixture(scope="module")
def elman():
    cell = rs.cells.elman()
    return cell, rs.derive(cell)


def concrete(cell, expr):
    """Replace the size symbols by SIZES and expand every entry."""
    dims = {cell.size_symbols[name]: value for name, value in SIZES.items()}
    return sp.Matrix(expr.xreplace(dims).as_explicit()).applyfunc(sp.expand)


def sym(cell, name, rows, cols=1):
    dims = {cell.size_symbols[k]: v for k, v in SIZES.items()}
    return MatrixSymbol(name, *(sp.sympify(rows).xreplace(dims), sp.sympify(cols).xreplace(dims)))


def textbook(cell):
    n, m, k = (SIZES[s] for s in "nmk")
    W, U, V = (
        sp.Matrix(MatrixSymbol(s, *shape))
        for s, shape in (("W", (n, n)), ("U", (n, m)), ("V", (k, n)))
    )
    h, h_prev, h_next = (sp.Matrix(MatrixSymbol(s, n, 1)) for s in ("h", "h_prev", "h_next"))
    x = sp.Matrix(MatrixSymbol("x", m, 1))
    o, y = (sp.Matrix(MatrixSymbol(s, k, 1)) for s in ("o", "y"))
    grad_h, grad_h_next = (sp.Matrix(MatrixSymbol(s, n, 1)) for s in ("g_h", "g_h_next"))
    diag = sp.diag(*[1 - h[i] ** 2 for i in range(n)])  # diag(1 - (h^(t))^2)
    diag_next = sp.diag(*[1 - h_next[i] ** 2 for i in range(n)])
    return {
        "(6) grad_V": (o - y) * h.T,
        "(7) grad_W": diag * grad_h * h_prev.T,
        "(8) grad_U": diag * grad_h * x.T,
        "grad_b": diag * grad_h,
        "grad_c": o - y,
        "(9) grad_h": V.T * (o - y) + W.T * diag_next * grad_h_next,
    }


def test_eqs_6_to_9_and_biases(elman):
    cell, d = elman
    g_o = adjoint_symbol(cell.outputs["o"].symbol)
    # ∇_o L is the adjoint of eq. (5): o - y; substitute it (also at t+1) to get the report's form
    o_adj = d.output_adjoints["o"]
    to_textbook = {g_o: o_adj}
    derived = {
        "(6) grad_V": d.param_terms["V"].xreplace(to_textbook),
        "(7) grad_W": d.param_terms["W"],
        "(8) grad_U": d.param_terms["U"],
        "grad_b": d.param_terms["b"],
        "grad_c": d.param_terms["c"].xreplace(to_textbook),
        "(9) grad_h": d.state_adjoint("h").xreplace(to_textbook),
    }
    expected = textbook(cell)
    for key, expr in derived.items():
        difference = (concrete(cell, expr) - expected[key]).applyfunc(sp.expand)
        assert difference == sp.zeros(*difference.shape), f"eq. {key} differs: {difference}"


def test_eq_9_second_term_comes_from_the_next_step(elman):
    cell, d = elman
    h = cell.states["h"].symbol
    adjoint = d.state_adjoint("h")
    assert next_symbol(h) in adjoint.free_symbols
    assert next_symbol(adjoint_symbol(h)) in adjoint.free_symbols
    # the within-step part is V^T ∇_o L only (first term of eq. (9))
    (local,) = d.state_local["h"]
    assert local.free_symbols >= {cell.params["V"].symbol}
    assert next_symbol(h) not in local.free_symbols


def test_a_wrong_textbook_equation_is_detected(elman):
    """The comparison is not vacuous: dropping the recurrent term of eq. (9) is caught."""
    cell, d = elman
    expected = textbook(cell)
    g_o = adjoint_symbol(cell.outputs["o"].symbol)
    derived = d.state_adjoint("h").xreplace({g_o: d.output_adjoints["o"]})
    n, k = SIZES["n"], SIZES["k"]
    V, o, y = (
        sp.Matrix(MatrixSymbol("V", k, n)),
        sp.Matrix(MatrixSymbol("o", k, 1)),
        sp.Matrix(MatrixSymbol("y", k, 1)),
    )
    truncated = V.T * (o - y)
    assert (concrete(cell, derived) - truncated).applyfunc(sp.expand) != sp.zeros(n, 1)
    assert (concrete(cell, derived) - expected["(9) grad_h"]).applyfunc(sp.expand) == sp.zeros(n, 1)


def test_derivation_does_not_depend_on_T_or_sizes(elman):
    """The derivation holds symbolic sizes; no T appears anywhere."""
    cell, d = elman
    n = cell.size_symbols["n"]
    assert d.param_terms["W"].shape == (n, n)
    for expr in [*d.param_terms.values(), *d.carry.values()]:
        assert not any(s.name == "T" for s in expr.free_symbols)


def test_latex_and_text_are_deterministic_and_cite_equations():
    first = rs.derive(rs.cells.elman())
    second = rs.derive(rs.cells.elman())
    assert first.latex() == second.latex()
    assert first.pretty() == second.pretty()
    # every line of the Elman cell is one of the report's equations, except ∇_o L, ∇_b L, ∇_c L
    # (tests/test_labels.py checks every built-in cell); the gradients in the report's order
    got = [(eq.key, eq.label) for eq in first.equations()]
    assert got == [
        ("h", "eqs. (2)-(3)"),
        ("o", "eq. (4)"),
        ("L", "eq. (5)"),
        ("g_o", ""),
        ("g_h", "eq. (9)"),
        ("V", "eq. (6)"),
        ("W", "eq. (7)"),
        ("U", "eq. (8)"),
        ("b", ""),
        ("c", ""),
    ]
    latex = first.latex()
    for number in range(1, len(got) + 1):  # the derivation's own numbers, as LaTeX tags
        assert rf"\tag{{{number}}}" in latex
    assert r"\nabla_{h^{(t+1)}} L" in latex
    assert "∇_{h⁽ᵗ⁺¹⁾}L" in first.pretty()
