"""The NumPy printer (exact strings, then executed) and the generator's buffer recycling."""

from __future__ import annotations

import ast

import numpy as np
import pytest
import sympy as sp
from sympy import MatrixSymbol, Transpose

import rnnsym as rs
from rnnsym.backends import numpy_runtime as _runtime
from rnnsym.backends.numpy import _recycle_buffers
from rnnsym.backends.numpy_printer import Assign, Line, RowPrinter
from rnnsym.ir.ops import Apply, add, hadamard, mul, ones
from rnnsym.problems import random_problem

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


# ----- issue 10: coefficients and negation in front of sums, user strings, names -----

b = MatrixSymbol("b", n, 1)


def test_a_coefficient_or_minus_brackets_a_sum():
    names = {**NAMES, b: "b"}
    batch = BATCH
    # the sequence branch printed -(h_prev + b) as -h_prev + b: a silently wrong gradient
    assert RowPrinter(names, batch, True).doprint(mul(-1, add(h, b))) == "-(h + b)"
    assert RowPrinter(names, batch, True).doprint(mul(2, add(h, b))) == "2 * (h + b)"
    assert RowPrinter(names, batch).doprint(mul(-1, add(h, b))) == "-(h + b)"
    # a bracketed or called term keeps its text
    assert show(mul(-1, Apply("tanh", add(h, g)))) == "-np.tanh(h + g)"


def test_scaled_softmax_cross_entropy_loss_value():
    """2 * softmax_cross_entropy(o, y) printed as 2*logsumexp(o) - sum(y*o) before the fix."""
    import rnnsym as rs
    from rnnsym.verify import random_problem

    cell = rs.Cell("sce")
    n_, m_, k_ = cell.dims("n m k")
    x_, h_ = cell.input("x", m_), cell.state("h", n_)
    U_, W_, V_ = cell.param("U", n_, m_), cell.param("W", n_, n_), cell.param("V", k_, n_)
    cell.update(h_, rs.tanh(U_ @ x_ + W_ @ h_.prev))
    o_, y_ = cell.output("o", V_ @ h_), cell.target("y", k_)
    cell.loss(2 * rs.softmax_cross_entropy(o_, y_))
    params, inputs, targets = random_problem(cell, T=3, B=2)
    loss, _ = rs.compile(cell).loss_and_grad(params, inputs, targets)
    o = rs.compile(cell).forward(params, inputs)["o"]
    y = targets["y"]
    top = o.max(axis=-1, keepdims=True)
    lse = top[..., 0] + np.log(np.exp(o - top).sum(axis=-1))
    want = 2 * np.sum(lse - np.sum(y * o, axis=-1))  # an independent NumPy reference
    # float64 sums of 6 terms: 1e-12 relative is rounding; the bug was off by O(1)
    assert abs(loss - want) <= 1e-12 * max(1.0, abs(want))


def _tiny_cell(name="c", param="W", size="n"):
    import rnnsym as rs

    cell = rs.Cell(name)
    n_, m_ = cell.dims(f"{size} m")
    x_, h_ = cell.input("x", m_), cell.state("h", n_)
    W_, U_ = cell.param(param, n_, n_), cell.param("U", n_, m_)
    cell.update(h_, rs.tanh(W_ @ h_.prev + U_ @ x_))
    V_ = cell.param("V", 2, n_)
    cell.loss(rs.squared_error(cell.output("o", V_ @ h_), cell.target("y", 2)))
    return cell


def test_a_cell_name_cannot_end_the_docstring(tmp_path):
    import rnnsym as rs

    marker = tmp_path / "ran"
    name = f'x"""\nopen({str(marker)!r}, "w").close()\n"""\\'
    for mode in ("reverse", "forward"):
        kernel = rs.compile(_tiny_cell(name), mode=mode)
        assert not marker.exists(), "the cell name ran as code"
        assert repr(name) in kernel.module.__doc__  # the name is shown as text


def test_control_characters_in_comments_stay_on_one_line():
    from rnnsym.backends.numpy_printer import Comment

    printer = RowPrinter({}, set())
    text = printer.doprint(Assign("a", "b", comment="first\nimport os\rsecond"))
    assert "\n" not in text and "\r" not in text and text.startswith("a = b  # first")
    assert printer.doprint(Comment("one\ntwo\x0bthree")) == "# one\n# two\\x0bthree"


def test_generated_names_step_aside_for_the_cells_names():
    import rnnsym as rs
    from rnnsym.verify import check_gradients, random_problem

    for param in ("full", "slice", "ｆｕｌｌ"):
        cell = _tiny_cell(param=param)
        for mode in ("reverse", "forward"):
            kernel = rs.compile(cell, mode=mode)
            params, inputs, targets = random_problem(cell, T=3, B=2)
            assert check_gradients(kernel, params, inputs, targets).ok, (param, mode)
        # the composing entry point still returns the input and h(0) adjoints
        out = rs.compile(cell).vjp(params, inputs, targets)
        assert len(out) == 4


def test_namespace_check_refuses_a_clash():
    import pytest

    from rnnsym.backends.numpy import check_namespace
    from rnnsym.errors import DerivationError

    cell = _tiny_cell()
    clean = "def _forward(params):\n    W = params['W']\n    return W\n"
    assert check_namespace(clean, cell) == clean
    bound_twice = "def _forward(params):\n    W = params['W']\n    W = 0\n"
    with pytest.raises(DerivationError, match="'W' is bound 2 times"):
        check_namespace(bound_twice, cell)
    called = "def _loss_and_grad(params):\n    U = params['U']\n    return U(0, 1)\n"
    with pytest.raises(DerivationError, match="calls 'U'"):
        check_namespace(called, cell)
    # NFKC: Python reads ｈ_prev as h_prev, the cell's previous state
    folded = "def _forward(states):\n    h_prev = 1\n    ｈ_prev = 2\n"
    with pytest.raises(DerivationError, match="'h_prev' is bound 2 times"):
        check_namespace(folded, cell)


def _minimal_rnn() -> rs.Cell:
    """The Minimal RNN (Chen, 2017): z = tanh(W_x x), u = σ(U_h h(t−1) + U_z z + b)."""
    cell = rs.Cell("minimal_rnn")
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("h", n)
    W_x, U_h = cell.param("W_x", n, m), cell.param("U_h", n, n)
    U_z, b = cell.param("U_z", n, n), cell.param("b", n)
    z = cell.define("z", rs.tanh(W_x @ x))
    u = cell.define("u", rs.sigmoid(U_h @ h.prev + U_z @ z + b))
    cell.update(h, u * h.prev + (1 - u) * z)
    V = cell.param("V", k, n)
    cell.loss(rs.squared_error(cell.output("o", V @ h), cell.target("y", k)))
    return cell


def _function_source(source: str, name: str) -> str:
    tree = ast.parse(source)
    return next(
        ast.get_source_segment(source, f) for f in tree.body if getattr(f, "name", "") == name
    )


def test_forward_values_are_not_recomputed_by_the_backward_pass():
    # W_x x(t) is computed once for all t in the gradient function (it was three times)
    kernel = rs.compile(_minimal_rnn())
    body = _function_source(kernel.source, "_loss_and_grad")
    assert body.count("_mm(x, W_x.T)") == 1, body


def test_temporaries_take_the_names_of_cell_define():
    def bound(source, function):
        tree = ast.parse(_function_source(source, function))
        return {
            t.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            for t in node.targets
            if isinstance(t, ast.Name)
        }

    def named(names, define):
        # the value itself, or its array for all t kept for the backward pass (u_all[t])
        return define in names or f"{define}_all" in names

    minimal = rs.compile(_minimal_rnn()).source
    names = bound(minimal, "_loss_and_grad")
    assert all(named(names, d) for d in ("z", "u")), names
    lstm = rs.compile(rs.cells.lstm()).source
    names = bound(lstm, "_loss_and_grad")
    assert all(named(names, d) for d in ("i", "f", "g", "o")), names
    # a name of the cell is bound at most once per function, for its own value
    assert "i0" not in names and "i_all0" not in names


def test_minimal_rnn_kernel_is_correct():
    from rnnsym.verify import check_kernel

    cell = _minimal_rnn()
    # rs.verify's kernel checks: float64 within 1e-9, float32 within 1e-4 of the interpreter
    assert check_kernel(cell, rs.compile(cell)).ok


@pytest.mark.parametrize("name", ["lstm", "gru", "lstm_peephole", "mgu"])
def test_the_backward_pass_recomputes_no_product_and_no_gate(name):
    # the forward loop keeps the pre-activations and gate values the adjoint loop reads
    source = _function_source(rs.compile(rs.cells.get(name)).source, "_loss_and_grad")
    tree = ast.parse(source)
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.For)]
    forward = next(n for n in loops if ast.unparse(n.iter) == "range(T)")
    backward = next(n for n in loops if "T - 1" in ast.unparse(n.iter))
    after = source[source.index("for t in range(T - 1, -1, -1):") :]  # and the gradients
    assert "_sigmoid(" not in after and "np.tanh(" not in after, after
    assert "_mm(h_prev" not in source, source
    # each product with a recurrent weight once per step in each direction
    assert ast.unparse(backward).count("@") == ast.unparse(forward).count("@"), source


def test_a_call_that_passed_the_checks_does_not_hide_a_later_error():
    cell = rs.cells.elman()
    kernel = rs.compile(cell)
    params, inputs, targets = random_problem(cell, T=4, B=2)
    first = kernel.loss_and_grad(params, inputs, targets)
    again = kernel.loss_and_grad(params, inputs, targets)  # the checks are skipped now
    assert first[0] == again[0]
    bad = [
        ({**params, "W": params["W"][:, :2]}, inputs, targets),
        ({**params, "W": params["W"].astype(np.float32)}, inputs, targets),
        ({k: v for k, v in params.items() if k != "b"}, inputs, targets),
        ({**params, "W": params["W"].tolist()}, inputs, targets),
        (params, {"x": inputs["x"][:, :1]}, targets),
    ]
    for case in bad:
        fresh = rs.compile(cell)  # nothing cached: its message is the reference
        with pytest.raises(ValueError) as want:
            fresh.loss_and_grad(*case)
        with pytest.raises(ValueError) as got:
            kernel.loss_and_grad(*case)
        assert str(got.value) == str(want.value)


@pytest.mark.parametrize("name", ["elman", "lstm", "gru"])
def test_the_adjoint_loop_reads_forward_only_factors_computed_for_all_t(name):
    # 1 - h∘h (tanh'), σ(1 - σ) of a gate: one array operation each before the adjoint loop,
    # written in place (no temporary as large as the sequence); the loop multiplies by them
    source = _function_source(rs.compile(rs.cells.get(name)).source, "_loss_and_grad")
    loops = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.For)]
    loop = ast.unparse(next(n for n in loops if "T - 1" in ast.unparse(n.iter)))
    assert "1.0 -" not in loop and "1 -" not in loop, loop
    before = source[: source.index("for t in range(T - 1, -1, -1):")]
    assert "np.subtract(1.0, " in before, before


def test_sequence_arrays_of_the_gradient_come_from_the_workspace_and_are_never_returned():
    kernel = rs.compile(rs.cells.lstm())
    gradient = _function_source(kernel.source, "_loss_and_grad")
    forward = _function_source(kernel.source, "_forward")
    # the gradient's (T, B, size) arrays are reused across calls; forward's are returned
    assert "np.empty((T" not in gradient, gradient
    assert gradient.count("_workspace(") >= 5, gradient
    assert "_workspace(" not in forward, forward
    # vjp's input adjoint is a fresh array: a later call does not overwrite it
    cell = rs.cells.lstm()
    params, inputs, targets = random_problem(cell, T=5, B=2, seed=1)
    loss, grads, input_grads, h0_grads = kernel.vjp(params, inputs, targets)
    kept = {n: a.copy() for n, a in {**grads, **input_grads, **h0_grads}.items()}
    other = random_problem(cell, T=5, B=2, seed=2)
    kernel.vjp(*other)
    for n, a in {**grads, **input_grads, **h0_grads}.items():
        np.testing.assert_array_equal(a, kept[n], err_msg=n)
    # the module frees its workspaces on request; the next call makes them again
    kernel.clear_workspaces()
    assert not kernel.module._WORKSPACE and not kernel.module._OWNER
    again = kernel.vjp(params, inputs, targets)
    assert again[0] == loss


def test_sigmoid_is_accurate_and_finite_on_both_sides_of_its_size_switch():
    import mpmath

    from rnnsym.backends.numpy_runtime import _sigmoid

    eps = np.finfo(np.float64).eps
    mpmath.mp.dps = 30  # the exact values, rounded once to float64
    # above 512 entries: 1 / (1 + e) or e / (1 + e), e = exp(-|a|), each step to an ulp: 2 ulp
    # allowed. Below: exp(-softplus(-a)), whose exponential amplifies the rounding of the
    # softplus by its magnitude, up to ~|a| ulp: 64 ulp allowed on [-40, 40]
    for grid, ulps in ((np.linspace(-700.0, 700.0, 4001), 2), (np.linspace(-40.0, 40.0, 256), 64)):
        exact = np.array([float(1 / (1 + mpmath.exp(-mpmath.mpf(a)))) for a in grid])
        got = _sigmoid(grid)
        assert got.dtype == np.float64 and np.all(np.isfinite(got))
        normal = exact > 1e-300  # below, the float64 value is subnormal or 0, as it should be
        rel = np.abs(got[normal] - exact[normal]) / exact[normal]
        assert rel.max() <= ulps * eps, (len(grid), rel.max() / eps)
    for size in (10, 600):
        assert _sigmoid(np.zeros(size, np.float32)).dtype == np.float32


def test_calls_from_several_threads_at_once_each_get_their_own_result():
    # one call at a time holds the workspace; a call that finds it held allocates its own
    # arrays, so concurrent calls (NumPy releases the GIL in its products) never share one
    import threading

    cell = rs.cells.lstm()
    kernel = rs.compile(cell)
    problems = [
        random_problem(cell, T=30, B=4, seed=s, sizes={"n": 24, "m": 8, "k": 3}) for s in range(4)
    ]
    expected = [kernel.loss_and_grad(*p) for p in problems]
    failures = []

    def work(index):
        for _ in range(15):
            loss, grads = kernel.loss_and_grad(*problems[index])
            if loss != expected[index][0] or any(
                not np.array_equal(grads[n], expected[index][1][n]) for n in grads
            ):
                failures.append(index)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert not kernel.module._OWNER  # released by every call
