"""The NumPy printer (exact strings, then executed) and the generator's buffer recycling."""

from __future__ import annotations

import numpy as np
import sympy as sp
from sympy import MatrixSymbol, Transpose

from rnnsym import _runtime
from rnnsym.codegen import _recycle_buffers
from rnnsym.numpy_printer import Assign, Line, RowPrinter
from rnnsym.ops import Apply, add, hadamard, mul, ones

n, m = sp.symbols("n m", integer=True, positive=True)
W = MatrixSymbol("W", n, n)
U = MatrixSymbol("U", n, m)
x = MatrixSymbol("x", m, 1)
h = MatrixSymbol("h", n, 1)
g = MatrixSymbol("g", n, 1)
NAMES = {W: "W", U: "U", x: "x", h: "h", g: "g"}
BATCH = {x, h, g}


def show(expr, sequence=False) -> str:
    return RowPrinter(NAMES, BATCH, sequence).doprint(expr)


def test_matrix_products_print_in_row_layout():
    assert show(mul(W, h)) == "h @ W.T"
    assert show(mul(Transpose(W), g)) == "g @ W"
    assert show(mul(W, U, x)) == "x @ U.T @ W.T"
    assert show(mul(2, W, h)) == "2 * h @ W.T"
    assert show(mul(W, h), sequence=True) == "_mm(h, W.T)"


def test_elementwise_and_sums():
    assert show(hadamard(add(ones(n, 1), mul(-1, hadamard(h, h))), g)) == "(1.0 - h * h) * g"
    assert show(Apply("sigmoid", add(mul(W, h), mul(U, x)))) == "_sigmoid(h @ W.T + x @ U.T)"
    assert show(mul(Transpose(h), g)) == "np.sum(h * g, axis=-1, keepdims=True)"


def test_printed_code_computes_the_expression():
    rng = np.random.default_rng(0)
    Wv, Uv = rng.normal(size=(3, 3)), rng.normal(size=(3, 2))
    hv, xv = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))  # 4 rows: the batch
    expr = hadamard(Apply("tanh", add(mul(W, h), mul(U, x))), h)
    namespace = {"np": np, "W": Wv, "U": Uv, "h": hv, "x": xv, "_mm": _runtime._mm}
    got = eval(show(expr), namespace)  # noqa: S307 - our own printed expression
    want = np.stack([np.tanh(Wv @ hv[b] + Uv @ xv[b]) * hv[b] for b in range(4)])
    np.testing.assert_allclose(got, want, rtol=1e-14)


def test_a_finished_buffer_is_reused():
    stmts = [
        Assign("a", "_mm(x, U.T)", size="n"),
        Line("s = a[0]"),
        Assign("c", "_mm(g, V)", size="n"),
        Line("return c"),
    ]
    out = _recycle_buffers(stmts)
    assert out[2].value == "_mm(g, V, out=a)"


def test_a_buffer_with_a_live_alias_is_not_reused():
    stmts = [
        Assign("a", "_mm(x, U.T)", size="n"),
        Assign("b", "a"),  # b is the same array as a
        Assign("c", "_mm(g, V)", size="n"),
        Line("return b, c"),
    ]
    assert _recycle_buffers(stmts)[2].value == "_mm(g, V)"


def test_buffers_of_other_sizes_and_inputs_are_never_reused():
    stmts = [
        Assign("a", "_mm(x, U.T)", size="n"),
        Assign("c", "_mm(g, V)", size="k"),  # another size
        Assign("d", "x - y", size="m"),  # x is an input, not ours
        Line("return c, d"),
    ]
    out = _recycle_buffers(stmts)
    assert out[1].value == "_mm(g, V)"
    assert out[2].value == "x - y"


def test_in_place_difference_only_when_the_first_array_is_finished():
    finished = [
        Assign("o", "_mm(h, V.T)", size="k"),
        Assign("g_o", "o - y", size="k"),
        Line("return g_o"),
    ]
    assert _recycle_buffers(finished)[1].value == "np.subtract(o, y, out=o)"
    live = [
        Assign("o", "_mm(h, V.T)", size="k"),
        Assign("g_o", "o - y", size="k"),
        Line("return o, g_o"),
    ]
    assert _recycle_buffers(live)[1].value == "o - y"
