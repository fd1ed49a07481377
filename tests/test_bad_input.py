"""Bad input gets a clear error: the offending expression or array, its shape or value, and what
was expected.

Three moments are covered:

* cell definition (``rs.CellError`` / ``rs.ShapeError``, both ``ValueError``): shapes of ``@``,
  ``+``, ``*``; ``cell.update``; undeclared symbols; names; loss and output shapes;
* derivation (``rs.derive`` / ``rs.compile``): whole-cell checks and ``rs.elementwise``;
* kernel calls (``kernel.loss_and_grad`` / ``kernel.forward``): a ``ValueError`` naming the array,
  its shape or dtype and the expected shape, never a NumPy error from inside the generated code.

After every error, nothing the user passed (arrays, dicts, the cell) has changed.

A comment "Regression (bug at commit b5faf93): ..." above a test says what went wrong there
when the test was written; those bugs are fixed in the package now.
"""

from __future__ import annotations

import copy
import itertools
import re

import numpy as np
import pytest
import sympy

import rnnsym as rs
from rnnsym.ir.activations import ACTIVATIONS
from rnnsym.verify import random_problem

_counter = itertools.count()


def fresh(base: str) -> str:
    """A name no other test has registered with ``rs.elementwise`` (the table is global)."""
    return f"tbi_{base}_{next(_counter)}"


def msg(*parts: str) -> str:
    """A regex matching a message that contains ``parts`` literally, in this order."""
    return "(?s)" + ".*".join(re.escape(p) for p in parts)


def contains(*parts: str) -> str:
    """A regex matching a message that contains every one of ``parts`` literally, in any order."""
    return "(?s)" + "".join(f"(?=.*{re.escape(p)})" for p in parts)


# ----- cells used by several tests -----


def elman_like(name: str = "c", act=rs.tanh, with_update=True, with_loss=True, extra=None):
    """The Elman cell of the report, built step by step so that parts can be left out."""
    cell = rs.Cell(name)
    n, m, k = cell.dims("n m k")
    x = cell.input("x", m)
    h = cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    V, c = cell.param("V", k, n), cell.param("c", k)
    if extra is not None:
        extra(cell, locals())
    if with_update:
        cell.update(h, act(b + W @ h.prev + U @ x))
    o = cell.output("o", c + V @ h)
    y = cell.target("y", k)
    if with_loss:
        cell.loss(rs.squared_error(o, y))
    return cell


@pytest.fixture
def parts():
    """A fresh cell with sizes n, m and variables W (n,n), U (n,m), x (m,1), h (n,1), v (m,1)."""
    cell = rs.Cell("c")
    n, m = cell.dims("n m")
    return {
        "cell": cell,
        "n": n,
        "m": m,
        "W": cell.param("W", n, n),
        "U": cell.param("U", n, m),
        "v": cell.param("v", m),
        "x": cell.input("x", m),
        "h": cell.state("h", n),
    }


def snapshot(cell: rs.Cell) -> tuple:
    """What a failed call must leave unchanged in a cell."""
    return (
        dict(cell._vars),
        dict(cell.updates),
        dict(cell.output_defs),
        list(cell._loss_terms),
        dict(cell.size_symbols),
    )


# =====================================================================================
# Cell definition time
# =====================================================================================


class TestShapesOfExpressions:
    def test_matmul_inner_dimensions(self, parts):
        W, x = parts["W"], parts["x"]
        with pytest.raises(rs.ShapeError, match=msg("W (n, n) @ x (m, 1)", "n and m differ")):
            W @ x

    def test_matmul_vector_by_vector(self, parts):
        h = parts["h"]
        with pytest.raises(rs.ShapeError, match=msg("h (n, 1) @ h (n, 1)", "1 and n differ")):
            h @ h

    def test_matmul_concrete_sizes(self):
        cell = rs.Cell("c")
        A, u = cell.param("A", 3, 2), cell.input("u", 4)
        with pytest.raises(rs.ShapeError, match=msg("A (3, 2) @ u (4, 1)", "2 and 4 differ")):
            A @ u

    def test_shape_error_is_a_cell_error_and_a_value_error(self, parts):
        with pytest.raises(rs.CellError):
            parts["W"] @ parts["x"]
        with pytest.raises(ValueError):
            parts["W"] @ parts["x"]

    @pytest.mark.parametrize(
        "op, word",
        [
            (lambda a, b: a + b, "add"),
            (lambda a, b: a - b, "subtract"),
            (lambda a, b: a * b, "multiply elementwise"),
        ],
        ids=["add", "sub", "hadamard"],
    )
    def test_vectors_of_different_sizes(self, parts, op, word):
        with pytest.raises(rs.ShapeError, match=msg(word, "h (n, 1)", "x (m, 1)", "differ")):
            op(parts["h"], parts["x"])

    def test_hadamard_of_matrix_and_vector(self, parts):
        W, h = parts["W"], parts["h"]
        with pytest.raises(rs.ShapeError, match=msg("W (n, n)", "h (n, 1)", "shapes differ")):
            W * h

    def test_add_compound_expressions_names_both(self, parts):
        W, U, h, x = parts["W"], parts["U"], parts["h"], parts["x"]
        with pytest.raises(rs.ShapeError, match=msg("W*h (n, 1)", "x (m, 1)")):
            W @ h + x
        assert (U @ x).shape == (parts["n"], 1)

    @pytest.mark.parametrize("scalar", [2, 2.5, sympy.Integer(3)], ids=["int", "float", "sympy"])
    def test_matmul_with_scalar(self, parts, scalar):
        with pytest.raises(
            rs.ShapeError, match=msg("'@' is the matrix product", "W (n, n)", "'*'")
        ):
            parts["W"] @ scalar

    # Regression (bug at commit b5faf93): 2 @ W raises 'expected a cell expression (vector or
    # matrix), got 2 of type int': it names neither W nor its shape, and does not suggest '*' as W @
    # 2 does
    def test_scalar_matmul_on_the_left(self, parts):
        with pytest.raises(rs.ShapeError, match=msg("W (n, n)", "'*'")):
            2 @ parts["W"]

    def test_division_by_a_vector(self, parts):
        with pytest.raises(rs.CellError, match=msg("division by a scalar", "h (n, 1)", "x")):
            parts["h"] / parts["x"]

    # Regression (bug at commit b5faf93): h / 0 is accepted and gives the expression zoo*h (complex
    # infinity) instead of an error naming h
    def test_division_by_zero(self, parts):
        with pytest.raises(rs.CellError, match=msg("h (n, 1)", "zero")):
            parts["h"] / 0

    @pytest.mark.parametrize(
        "other",
        [np.ones(3), "a", None, [1.0, 2.0]],
        ids=["ndarray", "str", "None", "list"],
    )
    def test_non_expression_operand(self, parts, other):
        with pytest.raises(
            rs.CellError, match=msg("expected a cell expression", type(other).__name__)
        ):
            parts["h"] + other

    def test_activation_of_a_number(self):
        with pytest.raises(rs.CellError, match=msg("expected a cell expression", "2", "int")):
            rs.tanh(2)

    def test_squared_error_of_different_shapes(self, parts):
        with pytest.raises(
            rs.ShapeError, match=msg("squared_error", "h (n, 1)", "x (m, 1)", "same size")
        ):
            rs.squared_error(parts["h"], parts["x"])

    def test_linear_loss_of_a_matrix(self, parts):
        with pytest.raises(rs.ShapeError, match=msg("linear_loss", "h (n, 1)", "W (n, n)")):
            rs.linear_loss(parts["h"], parts["W"])

    def test_operands_are_not_changed_by_a_failed_operation(self, parts):
        W, x = parts["W"], parts["x"]
        before = (W.expr, x.expr, W.cell, x.cell)
        with pytest.raises(rs.ShapeError):
            W @ x
        assert (W.expr, x.expr, W.cell, x.cell) == before


class TestUpdate:
    def test_state_of_another_cell(self, parts):
        other = rs.Cell("other")
        g = other.state("g", 3)
        with pytest.raises(rs.CellError, match=msg("update", "g", "not a state of cell 'c'")):
            parts["cell"].update(g, parts["h"].prev)

    def test_state_of_another_cell_with_the_same_name(self, parts):
        twin_cell = rs.Cell("c")
        twin = twin_cell.state("h", twin_cell.dims("n"))
        with pytest.raises(rs.CellError, match=msg("h", "not a state of cell 'c'")):
            parts["cell"].update(twin, parts["h"].prev)

    @pytest.mark.parametrize("which", ["x", "W"])
    def test_not_a_state(self, parts, which):
        with pytest.raises(
            rs.CellError, match=msg(f"update: {which} is not a state", "cell.state")
        ):
            parts["cell"].update(parts[which], parts["W"] @ parts["h"].prev)

    def test_previous_value_is_not_a_state(self, parts):
        with pytest.raises(rs.CellError, match=msg("h_prev is not a state of cell 'c'")):
            parts["cell"].update(parts["h"].prev, parts["W"] @ parts["h"].prev)

    def test_expression_of_the_wrong_shape(self, parts):
        cell, h, U = parts["cell"], parts["h"], parts["U"]
        before = snapshot(cell)
        with pytest.raises(
            rs.ShapeError, match=msg("update of h", "U has shape (n, m)", "h has shape (n, 1)")
        ):
            cell.update(h, U)
        assert snapshot(cell) == before

    def test_vector_of_the_wrong_size(self, parts):
        cell, h, v = parts["cell"], parts["h"], parts["v"]
        with pytest.raises(rs.ShapeError, match=msg("v has shape (m, 1)", "h has shape (n, 1)")):
            cell.update(h, v)

    def test_a_number(self, parts):
        with pytest.raises(rs.CellError, match=msg("update of h", "got 3 of type int")):
            parts["cell"].update(parts["h"], 3)

    def test_updating_twice(self, parts):
        cell, h, W = parts["cell"], parts["h"], parts["W"]
        first = rs.tanh(W @ h.prev)
        cell.update(h, first)
        with pytest.raises(rs.CellError, match=msg("state 'h' already has an update")):
            cell.update(h, W @ h.prev)
        assert cell.updates["h"] == first


class TestUndeclaredSymbols:
    def test_hand_made_matrix_symbol(self, parts):
        cell, h = parts["cell"], parts["h"]
        q = sympy.MatrixSymbol("q", parts["n"], 1)
        before = snapshot(cell)
        with pytest.raises(
            rs.CellError, match=msg("update of h", "h_prev + q", "uses q", "not declared", "'c'")
        ):
            cell.update(h, h.prev + q)
        assert snapshot(cell) == before

    def test_bare_matrix_symbol(self, parts):
        q = sympy.MatrixSymbol("q", parts["n"], 1)
        with pytest.raises(rs.CellError, match=msg("uses q", "not declared in cell 'c'")):
            parts["cell"].update(parts["h"], q)

    def test_several_undeclared_symbols(self, parts):
        n = parts["n"]
        p, q = sympy.MatrixSymbol("p", n, 1), sympy.MatrixSymbol("q", n, 1)
        with pytest.raises(rs.CellError, match=msg("uses p, q, which are not declared")):
            parts["cell"].update(parts["h"], parts["h"].prev + p + q)

    def test_mixing_variables_of_two_cells(self, parts):
        other = rs.Cell("other")
        z = other.input("z", other.dims("n"))
        with pytest.raises(
            rs.CellError, match=msg("h_prev (n, 1) of cell 'c'", "z (n, 1) of cell 'other'")
        ):
            parts["h"].prev + z

    def test_expression_of_another_cell_in_loss(self, parts):
        other = rs.Cell("other")
        g = other.state("g", 3)
        with pytest.raises(rs.CellError, match=msg("loss", "cell 'other'")):
            parts["cell"].loss(g.T @ g)

    # Regression (bug at commit b5faf93): cell.update(h, z) with z of another cell says only 'update
    # of h: the expression belongs to cell 'other'': it does not name z or its shape
    def test_expression_of_another_cell_names_the_variable(self, parts):
        other = rs.Cell("other")
        z = other.input("z", other.dims("n"))
        with pytest.raises(rs.CellError, match=contains("z (n, 1)", "'other'", "update of h")):
            parts["cell"].update(parts["h"], z)


class TestNames:
    @pytest.mark.parametrize("name", ["1a", "a b", "", "x-y", 3, None])
    def test_not_an_identifier(self, name):
        cell = rs.Cell("c")
        with pytest.raises(
            rs.CellError, match=msg("parameter name must be a Python identifier", repr(name))
        ):
            cell.param(name, 2)

    @pytest.mark.parametrize("name", ["class", "lambda", "for"])
    def test_keyword(self, name):
        with pytest.raises(rs.CellError, match=msg("input name", repr(name))):
            rs.Cell("c").input(name, 2)

    @pytest.mark.parametrize("name", ["T", "np", "B", "t", "loss", "grads", "params", "h0"])
    def test_reserved(self, name):
        with pytest.raises(rs.CellError, match=msg(f"state name {name!r} is reserved")):
            rs.Cell("c").state(name, 2)

    @pytest.mark.parametrize("name", ["_x", "__init__", "g_h", "g_"])
    def test_reserved_prefix(self, name):
        with pytest.raises(rs.CellError, match=msg(repr(name), "'_' or 'g_'")):
            rs.Cell("c").target(name, 2)

    def test_duplicate(self, parts):
        cell = parts["cell"]
        before = snapshot(cell)
        with pytest.raises(
            rs.CellError, match=msg("parameter name 'W' is already used in cell 'c'")
        ):
            cell.param("W", 3, 3)
        assert snapshot(cell) == before

    def test_same_name_as_a_size(self, parts):
        with pytest.raises(rs.CellError, match=msg("input name 'n' is already used")):
            parts["cell"].input("n", 2)

    def test_clash_with_prev(self, parts):
        with pytest.raises(rs.CellError, match=msg("parameter name 'h_prev' clashes with h.prev")):
            parts["cell"].param("h_prev", parts["n"])

    def test_output_clash_with_prev(self, parts):
        with pytest.raises(rs.CellError, match=msg("output name 'h_prev' clashes with h.prev")):
            parts["cell"].output("h_prev", parts["h"])

    # Regression (bug at commit b5faf93): declaring parameter a_prev and then state a is accepted;
    # a.prev and a_prev are then the same SymPy symbol and rs.compile fails later with the internal
    # ValueError 'add() needs at least one term'
    def test_clash_with_prev_declared_before_the_state(self):
        cell = rs.Cell("c")
        n = cell.dims("n")
        cell.param("a_prev", n)
        with pytest.raises(rs.CellError, match=msg("'a'", "a_prev")):
            cell.state("a", n)

    def test_empty_cell_name(self):
        with pytest.raises(rs.CellError, match=msg("non-empty name", "''")):
            rs.Cell("")

    @pytest.mark.parametrize(
        "size, text",
        [
            (0, "must be positive, got 0"),
            (-1, "must be positive, got -1"),
            (2.0, "got 2.0"),
            (True, "got True"),
            ("n", "got 'n'"),
        ],
        ids=["zero", "negative", "float", "bool", "str"],
    )
    def test_bad_size(self, size, text):
        with pytest.raises(rs.CellError, match=msg("parameter 'A'", text)):
            rs.Cell("c").param("A", size)

    def test_bad_size_name(self):
        with pytest.raises(rs.CellError, match=contains("size", "'1a'", "identifier")):
            rs.Cell("c").dims("1a")

    # Regression (bug at commit b5faf93): cell.dims('a 1b') registers size a before rejecting 1b, so
    # a failed call changes the cell (a later cell.param('a', 2) says 'already used')
    def test_failed_dims_declares_nothing(self):
        cell = rs.Cell("c")
        with pytest.raises(rs.CellError, match="1b"):
            cell.dims("a 1b")
        assert "a" not in cell.size_symbols

    # Regression (bug at commit b5faf93): a size given as sympy.Symbol('n') instead of the symbol
    # from cell.dims('n') is accepted as a second size named n; W (n, n) @ x then fails with the
    # unclear 'inner dimensions n and n differ'
    def test_plain_symbol_size_with_the_name_of_a_cell_size(self):
        cell = rs.Cell("c")
        n = cell.dims("n")
        W = cell.param("W", n, n)
        try:
            x = cell.input("x", sympy.Symbol("n"))
        except rs.CellError:
            return  # rejecting it clearly is fine
        assert (W @ x).shape == (n, 1)

    # Regression (bug at commit b5faf93): size names are not checked against keywords and the
    # generated code's own names: dims 'class' gives a SyntaxError in the generated module; 'T',
    # 'B', 't', 'np', 'states', 'loss' give NumPy errors from inside the kernel
    @pytest.mark.parametrize("size_name", ["class", "T", "B", "t", "np", "states", "loss"])
    def test_size_names_reserved_for_generated_code(self, size_name):
        assert_rejected_or_correct(size_name=size_name)

    # Regression (bug at commit b5faf93): variable names 'sizes', 'states', 'dtype', 'range' are not
    # reserved but are names of the generated code; the kernel then fails inside its own lines
    # (IndexError, AttributeError, 'numpy.ndarray' object is not callable)
    @pytest.mark.parametrize("param_name", ["sizes", "states", "dtype", "range"])
    def test_variable_names_used_by_generated_code(self, param_name):
        assert_rejected_or_correct(param_name=param_name)


def assert_rejected_or_correct(size_name: str = "n", param_name: str = "W") -> str:
    """A name is either refused with a CellError naming it, or gives a kernel whose loss and
    gradients are right; returns which ("rejected" or "correct")."""
    try:
        cell = rs.Cell("named")
        n = cell.dims(size_name)
        x = cell.input("x", n)
        h = cell.state("h", n)
        W = cell.param(param_name, n, n)
        cell.update(h, rs.tanh(W @ h.prev + x))
        cell.loss(rs.squared_error(h, cell.target("y", n)))
    except rs.CellError as exc:
        assert size_name in str(exc) or param_name in str(exc)
        return "rejected"
    kernel = rs.compile(cell)
    # the size differs from T, B and the loop indices, so that a size named T, B or t cannot
    # pass by coincidence
    params, inputs, targets = random_problem(cell, sizes={size_name: 5}, T=4, B=2)
    W_value, xs, ys = params[param_name], inputs["x"], targets["y"]
    h_t, expected = np.zeros(xs.shape[1:]), 0.0
    for t in range(xs.shape[0]):  # the cell written out in NumPy
        h_t = np.tanh(h_t @ W_value.T + xs[t])
        expected += 0.5 * float(np.sum((h_t - ys[t]) ** 2))
    loss, grads = kernel.loss_and_grad(params, inputs, targets)
    assert set(grads) == {param_name}
    # the same float64 operations in another order: 1e-12 relative is rounding only
    assert loss == pytest.approx(expected, rel=1e-12)
    report = rs.check_gradients(kernel, params, inputs, targets)
    assert report.ok, str(report)  # the tolerance of check_gradients (1e-6) says why
    return "correct"


@pytest.mark.parametrize(
    "size_name, param_name",
    [("width", "W_hh"), ("n_hidden", "weights"), ("n", "tanh"), ("n", "zeros"), ("sum", "W")],
)
def test_ordinary_names_give_correct_kernels(size_name, param_name):
    """Names that generated code does not use reach the correctness branch of
    assert_rejected_or_correct (so that branch is exercised, not only the rejection)."""
    assert assert_rejected_or_correct(size_name=size_name, param_name=param_name) == "correct"


class TestLossAndOutput:
    def test_loss_not_scalar(self, parts):
        cell = parts["cell"]
        before = snapshot(cell)
        with pytest.raises(rs.ShapeError, match=msg("loss: h has shape (n, 1)", "scalar (1, 1)")):
            cell.loss(parts["h"])
        assert snapshot(cell) == before

    def test_loss_matrix(self, parts):
        with pytest.raises(rs.ShapeError, match=msg("loss: W has shape (n, n)", "(1, 1)")):
            parts["cell"].loss(parts["W"])

    def test_loss_a_number(self, parts):
        with pytest.raises(rs.CellError, match=msg("loss", "got 3 of type int")):
            parts["cell"].loss(3)

    def test_output_matrix(self, parts):
        cell = parts["cell"]
        before = snapshot(cell)
        with pytest.raises(
            rs.ShapeError, match=msg("output 'o'", "W has shape (n, n)", "column vectors (size, 1)")
        ):
            cell.output("o", parts["W"])
        assert snapshot(cell) == before
        assert "o" not in cell.outputs

    def test_output_row_vector(self, parts):
        with pytest.raises(rs.ShapeError, match=msg("output 'o'", "h.T has shape (1, n)")):
            parts["cell"].output("o", parts["h"].T)

    def test_output_name_already_used(self, parts):
        with pytest.raises(rs.CellError, match=msg("output name 'W' is already used")):
            parts["cell"].output("W", parts["h"])


# =====================================================================================
# Derive time
# =====================================================================================


def one_input_cell(name: str = "c"):
    """A cell with size n, input x (n, 1) and parameters W, U (n, n): the rest is up to a test."""
    cell = rs.Cell(name)
    n = cell.dims("n")
    return cell, n, cell.input("x", n), cell.param("W", n, n), cell.param("U", n, n)


class TestDerive:
    @pytest.mark.parametrize("entry", [rs.derive, rs.compile], ids=["derive", "compile"])
    def test_no_loss(self, entry):
        with pytest.raises(rs.CellError, match=msg("cell 'c' has no loss", "cell.loss(")):
            entry(elman_like(with_loss=False))

    @pytest.mark.parametrize("entry", [rs.derive, rs.compile], ids=["derive", "compile"])
    def test_state_without_update(self, entry):
        with pytest.raises(rs.CellError, match=msg("state 'h' has no update", "cell.update(h,")):
            entry(elman_like(with_update=False))

    def test_empty_cell(self):
        with pytest.raises(rs.CellError, match=msg("cell 'e' declares nothing")):
            rs.derive(rs.Cell("e"))

    def test_parameter_the_loss_does_not_use(self):
        def add_unused(cell, names):
            cell.param("Z", names["n"], names["m"])

        with pytest.raises(rs.CellError, match=msg("does not depend on parameter(s) Z")):
            rs.compile(elman_like(extra=add_unused))

    def test_parameter_used_only_in_an_unused_output(self):
        def add_dead_output(cell, names):
            Z = cell.param("Z", names["k"], names["n"])
            cell.output("unused", Z @ names["h"])

        with pytest.raises(rs.CellError, match=msg("parameter(s) Z")):
            rs.derive(elman_like(extra=add_dead_output))

    def test_update_that_uses_a_target(self):
        cell, n, x, W, U = one_input_cell()
        h, y = cell.state("h", n), cell.target("y", n)
        cell.update(h, rs.tanh(W @ h.prev + U @ x + y))
        cell.loss(rs.squared_error(h, y))
        with pytest.raises(rs.CellError, match=msg("update of h", "h_prev", "uses y", "targets")):
            rs.derive(cell)

    def test_update_that_uses_an_output(self):
        cell, n, x, W, U = one_input_cell()
        h, y = cell.state("h", n), cell.target("y", n)
        o = cell.output("o", W @ h.prev + U @ x)
        cell.update(h, rs.tanh(o))
        cell.loss(rs.squared_error(h, y))
        with pytest.raises(rs.CellError, match=msg("update of h", "uses o", "outputs")):
            rs.derive(cell)

    def test_update_that_uses_a_state_updated_later(self):
        cell, n, x, W, U = one_input_cell()
        h, s = cell.state("h", n), cell.state("s", n)
        cell.update(h, rs.tanh(W @ s))
        cell.update(s, rs.tanh(W @ h.prev + U @ x))
        cell.loss(rs.squared_error(h, cell.target("y", n)))
        with pytest.raises(
            rs.CellError, match=msg("update of h", "uses s", "updated later in the step", ".prev")
        ):
            rs.derive(cell)

    def test_update_that_uses_its_own_state(self):
        cell, n, x, W, U = one_input_cell()
        h = cell.state("h", n)
        cell.update(h, rs.tanh(W @ h + U @ x))
        cell.loss(rs.squared_error(h, cell.target("y", n)))
        with pytest.raises(rs.CellError, match=msg("update of h", "uses h", ".prev")):
            rs.derive(cell)

    def test_state_updated_earlier_is_fine(self):
        cell, n, x, W, U = one_input_cell()
        s, h = cell.state("s", n), cell.state("h", n)
        cell.update(s, rs.tanh(W @ h.prev + U @ x))
        cell.update(h, rs.tanh(W @ s))
        cell.loss(rs.squared_error(h, cell.target("y", n)))
        assert set(rs.derive(cell).param_terms) == {"W", "U"}

    def test_failed_derive_leaves_the_cell_alone(self):
        cell = elman_like(with_loss=False)
        before = snapshot(cell)
        with pytest.raises(rs.CellError):
            rs.derive(cell)
        assert snapshot(cell) == before

    # Regression (bug at commit b5faf93): rs.derive('elman') raises AttributeError: 'str' object has
    # no attribute 'check'
    def test_derive_something_that_is_not_a_cell(self):
        with pytest.raises((TypeError, rs.RnnsymError), match="Cell"):
            rs.derive("elman")

    # Regression (bug at commit b5faf93): a cell without inputs passes rs.derive, but rs.compile
    # raises StopIteration from codegen (next(iter(cell.inputs)))
    def test_cell_without_inputs(self):
        cell = rs.Cell("noinput")
        n = cell.dims("n")
        h, W, b = cell.state("h", n), cell.param("W", n, n), cell.param("b", n)
        cell.update(h, rs.tanh(W @ h.prev + b))
        cell.loss(rs.squared_error(h, cell.target("y", n)))
        assert_compiles_or_refuses(cell)

    # Regression (bug at commit b5faf93): a cell without states passes rs.derive, but rs.compile
    # raises IndentationError from the generated module (an empty 'for' loop)
    def test_cell_without_states(self):
        cell = rs.Cell("nostate")
        n = cell.dims("n")
        x, W = cell.input("x", n), cell.param("W", n, n)
        o = cell.output("o", W @ x)
        cell.loss(rs.squared_error(o, cell.target("y", n)))
        assert_compiles_or_refuses(cell)


def assert_compiles_or_refuses(cell: rs.Cell) -> None:
    """Either a CellError naming the cell, or a kernel whose gradients are right."""
    try:
        kernel = rs.compile(cell)
    except rs.RnnsymError as exc:
        assert cell.name in str(exc)
        return
    params, inputs, targets = random_problem(cell, T=3, B=2)
    assert rs.check_gradients(kernel, params, inputs, targets).ok


class TestElementwise:
    def test_softsign_can_be_defined_and_used(self):
        name = fresh("softsign")
        softsign = rs.elementwise(name, lambda z: z / (1 + sympy.Abs(z)))
        assert callable(softsign)
        cell = elman_like(act=softsign)
        assert name in sympy.sstr(cell.updates["h"].expr)
        assert rs.derive(cell).param_terms.keys() == {"W", "U", "b", "V", "c"}

    # Regression (bug at commit b5faf93): the derivative of z/(1+Abs(z)) is taken with a non-real
    # SymPy symbol, so it holds Derivative(re(z), z); rs.compile then raises sympy's
    # PrintMethodNotImplementedError (and the scalar oracle 'Can't calculate derivative')
    def test_softsign_cell_compiles_with_correct_gradients(self):
        softsign = rs.elementwise(fresh("softsign"), lambda z: z / (1 + sympy.Abs(z)))
        cell = elman_like(act=softsign)
        kernel = rs.compile(cell)
        params, inputs, targets = random_problem(cell, T=3, B=2)
        assert rs.check_gradients(kernel, params, inputs, targets).ok

    def test_redefining_with_another_function(self):
        name = fresh("softsign")
        rs.elementwise(name, lambda z: z / (1 + sympy.Abs(z)))
        before = ACTIVATIONS[name]
        with pytest.raises(rs.CellError, match=msg(repr(name), "already defined", "Abs")):
            rs.elementwise(name, lambda z: z / (2 + sympy.Abs(z)))
        assert ACTIVATIONS[name] is before

    # Regression (bug at commit b5faf93): defining the same name again with the same function raises
    # 'already defined' (the two Lambdas use different Dummy symbols and compare unequal), so a file
    # that calls rs.elementwise inside make_cell cannot be loaded twice in one process
    def test_redefining_with_the_same_function(self):
        name = fresh("softsign")

        def function(z):
            return z / (1 + sympy.Abs(z))

        first = rs.elementwise(name, function)
        second = rs.elementwise(name, function)
        assert second.__name__ == first.__name__ == name

    @pytest.mark.parametrize("builtin", ["tanh", "sigmoid", "relu", "exp", "log", "softplus"])
    def test_name_of_a_builtin(self, builtin):
        before = ACTIVATIONS[builtin]
        with pytest.raises(rs.CellError, match=msg(repr(builtin), "built-in", "another name")):
            rs.elementwise(builtin, sympy.tanh)
        assert ACTIVATIONS[builtin] is before

    @pytest.mark.parametrize(
        "function, shown",
        [
            (lambda z: (z, z), "(_d, _d)"),
            (lambda z: z > 0, "_d > 0"),
            (lambda z: None, "None"),
            (lambda z: z + sympy.Symbol("a"), "_d + a"),
        ],
        ids=["tuple", "relational", "None", "free-symbol"],
    )
    def test_function_not_returning_a_scalar_of_its_argument(self, function, shown):
        name = fresh("bad")
        with pytest.raises(
            rs.CellError, match=msg(repr(name), "scalar SymPy expression", f"got {shown}")
        ):
            rs.elementwise(name, function)
        assert name not in ACTIVATIONS

    # Regression (bug at commit b5faf93): a function returning sympy.Matrix([z, z]) is accepted
    # (ImmutableMatrix is a sympy.Expr), although elementwise functions must be scalar
    def test_function_returning_a_matrix(self):
        name = fresh("vec")
        with pytest.raises(rs.CellError, match=msg(repr(name), "scalar")):
            rs.elementwise(name, lambda z: sympy.Matrix([z, z]))

    @pytest.mark.parametrize(
        "function, cause",
        [(lambda z: np.tanh(z), "tanh"), (lambda z: 1 / 0, "division by zero")],
        ids=["numpy", "raises"],
    )
    def test_function_failing_on_a_symbol(self, function, cause):
        name = fresh("fails")
        with pytest.raises(rs.CellError, match=msg(repr(name), "SymPy symbol failed", cause)):
            rs.elementwise(name, function)

    def test_name_not_an_identifier(self):
        with pytest.raises(rs.CellError, match=msg("identifier", "'soft sign'")):
            rs.elementwise("soft sign", sympy.tanh)

    # Regression (bug at commit b5faf93): the derivative of a user function f is registered as 'd' +
    # f; if the user has already defined an elementwise function with that name, it is silently
    # taken as f' and the kernel's gradients are wrong (relative error ~1)
    def test_user_function_named_like_a_derivative(self):
        base = fresh("isru")
        try:
            rs.elementwise(f"d{base}", lambda z: z)
        except rs.CellError:
            return  # refusing the name is fine
        isru = rs.elementwise(base, lambda z: z / sympy.sqrt(1 + z**2))
        cell = elman_like(act=isru)
        kernel = rs.compile(cell)
        params, inputs, targets = random_problem(cell, T=3, B=2)
        assert rs.check_gradients(kernel, params, inputs, targets).ok


# =====================================================================================
# Kernel call time
# =====================================================================================

N, M, K, T, B = 4, 3, 2, 5, 2


def problem(dtype=np.float64, seed=0):
    """Valid Elman arrays: params W (n,n), U (n,m), b (n,), V (k,n), c (k,); x, y (T,B,size)."""
    rng = np.random.default_rng(seed)
    params = {
        "W": rng.normal(size=(N, N)),
        "U": rng.normal(size=(N, M)),
        "b": rng.normal(size=(N,)),
        "V": rng.normal(size=(K, N)),
        "c": rng.normal(size=(K,)),
    }
    params = {k: v.astype(dtype) for k, v in params.items()}
    inputs = {"x": rng.normal(size=(T, B, M)).astype(dtype)}
    targets = {"y": rng.normal(size=(T, B, K)).astype(dtype)}
    return params, inputs, targets


def assert_unchanged(before, after) -> None:
    """Dicts, their keys and array contents (and dtypes) are as they were."""
    if isinstance(before, dict):
        assert isinstance(after, dict) and list(before) == list(after)
        for key in before:
            assert_unchanged(before[key], after[key])
    elif isinstance(before, (list, tuple)):
        assert type(after) is type(before) and len(after) == len(before)
        for a, b in zip(before, after, strict=True):
            assert_unchanged(a, b)
    elif isinstance(before, np.ndarray):
        assert isinstance(after, np.ndarray)
        assert before.dtype == after.dtype and before.shape == after.shape
        np.testing.assert_array_equal(before, after)
    else:
        assert before == after


def call_fails(kernel, match, params, inputs, targets, h0=None, forward=False):
    """The call raises a ValueError matching ``match`` and changes none of its arguments."""
    args = (params, inputs, targets, h0)
    saved = copy.deepcopy(args)
    with pytest.raises(ValueError, match=match) as info:
        if forward:
            kernel.forward(params, inputs, h0)
        else:
            kernel.loss_and_grad(params, inputs, targets, h0)
    assert not isinstance(info.value, (TypeError, IndexError, KeyError))
    for a, b in zip(saved, args, strict=True):
        assert_unchanged(a, b)
    return info.value


class TestKernelParams:
    def test_missing_param(self, elman_kernel):
        params, inputs, targets = problem()
        del params["W"]
        call_fails(elman_kernel, msg("params['W'] is missing", "(n, n)"), params, inputs, targets)

    def test_extra_param(self, elman_kernel):
        params, inputs, targets = problem()
        params["Z"] = np.zeros(3)
        call_fails(
            elman_kernel,
            msg("params['Z'] is not a name of this kernel", "['U', 'V', 'W', 'b', 'c']"),
            params,
            inputs,
            targets,
        )

    def test_wrong_param_shape(self, elman_kernel):
        params, inputs, targets = problem()
        params["U"] = params["U"].T.copy()  # (m, n) instead of (n, m)
        call_fails(
            elman_kernel,
            msg("params['U']", f"({M}, {N})", "expected (n, m)", f"n = {N} from params['W']"),
            params,
            inputs,
            targets,
        )

    def test_vector_param_given_as_column(self, elman_kernel):
        params, inputs, targets = problem()
        params["b"] = params["b"][:, None]
        call_fails(
            elman_kernel, msg("params['b']", f"({N}, 1)", "expected (n,)"), params, inputs, targets
        )

    def test_inconsistent_sizes_between_params(self, elman_kernel):
        params, inputs, targets = problem()
        params["V"] = np.zeros((K, N + 1))
        call_fails(
            elman_kernel,
            msg("params['V']", f"({K}, {N + 1})", "(k, n)", f"n = {N} from params['W']"),
            params,
            inputs,
            targets,
        )

    def test_inconsistent_sizes_between_param_and_input(self, elman_kernel):
        # U and x disagree on m, one array each: the data wins the tie, so U is blamed
        # (the README's example)
        params, inputs, targets = problem()
        params["U"] = np.zeros((N, M + 1))
        call_fails(
            elman_kernel,
            msg(
                "params['U']",
                f"({N}, {M + 1})",
                f"expected (n, m) = ({N}, {M})",
                f"m = {M} from inputs['x']",
            ),
            params,
            inputs,
            targets,
        )

    @pytest.mark.parametrize("name", ["W", "U", "V"])
    def test_the_array_inconsistent_with_the_majority_is_blamed(self, elman_kernel, name):
        # transposing one parameter must blame that parameter, whichever is read first
        params, inputs, targets = problem()
        params[name] = params[name].T.copy() if name != "W" else np.zeros((N + 1, N))
        call_fails(elman_kernel, msg(f"params['{name}']", "expected"), params, inputs, targets)

    def test_readme_example_is_reproduced(self, elman_kernel):
        # the README quotes this error for U of the wrong width; same sizes as there
        import re
        from pathlib import Path

        readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
        quoted = re.search(r"`(params\['U'\] has shape \(4, 3\);[^`]*)`", readme).group(1)
        from rnnsym.verify import random_problem

        params, inputs, targets = random_problem(
            elman_kernel.cell, sizes={"n": 4, "m": 5, "k": 2}, T=3, B=2
        )
        params["U"] = np.zeros((4, 3))
        with pytest.raises(ValueError) as info:
            elman_kernel.loss_and_grad(params, inputs, targets)
        assert str(info.value) == quoted

    # Regression (bug at commit b5faf93): the concrete expected shape of a vector is printed without
    # its comma: 'expected (n,) = (4) with n = 4' instead of '(4,)'
    def test_concrete_expected_shape_of_a_vector(self, elman_kernel):
        params, inputs, targets = problem()
        params["b"] = np.zeros(N + 1)
        call_fails(elman_kernel, msg("params['b']", f"= ({N},)"), params, inputs, targets)

    @pytest.mark.parametrize("dtype", [np.int64, np.complex128, np.float16, bool])
    def test_unsupported_dtype(self, elman_kernel, dtype):
        params, inputs, targets = problem()
        params["W"] = params["W"].astype(dtype)
        dt = str(np.dtype(dtype))
        call_fails(
            elman_kernel,
            msg(f"params['W'] has dtype {dt}", "float32 or float64"),
            params,
            inputs,
            targets,
        )

    def test_list_instead_of_array(self, elman_kernel):
        params, inputs, targets = problem()
        params["W"] = params["W"].tolist()
        call_fails(
            elman_kernel,
            msg("params['W'] must be a NumPy array, got list"),
            params,
            inputs,
            targets,
        )

    def test_scalar_instead_of_array(self, elman_kernel):
        params, inputs, targets = problem()
        params["c"] = np.float64(1.0)
        call_fails(
            elman_kernel, msg("params['c']", "NumPy array", "float64"), params, inputs, targets
        )

    def test_params_not_a_dict(self, elman_kernel):
        params, inputs, targets = problem()
        call_fails(
            elman_kernel,
            msg("params must be a dict", "got list"),
            list(params.values()),
            inputs,
            targets,
        )

    def test_zero_size(self, elman_kernel):
        params, inputs, targets = problem()
        params["W"] = np.zeros((0, 0))
        call_fails(
            elman_kernel, msg("params['W']", "(0, 0)", "n must be >= 1"), params, inputs, targets
        )


class TestKernelSequences:
    @pytest.mark.parametrize("shape", [(T, M), (T, B, M, 1), (M,)], ids=["2d", "4d", "1d"])
    def test_x_not_three_dimensional(self, elman_kernel, shape):
        params, inputs, targets = problem()
        inputs["x"] = np.zeros(shape)
        shown = "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
        call_fails(
            elman_kernel,
            msg(f"inputs['x'] has shape {shown}", "expected (T, B, m)", "(time, batch, size)"),
            params,
            inputs,
            targets,
        )

    def test_input_of_the_wrong_size(self, elman_kernel):
        # m is read from U and x only, one array each: the data sets the size on a tie, and the
        # message names both arrays
        params, inputs, targets = problem()
        inputs["x"] = np.zeros((T, B, M + 1))
        call_fails(
            elman_kernel,
            msg(f"params['U'] has shape ({N}, {M})", f"m = {M + 1} from inputs['x']"),
            params,
            inputs,
            targets,
        )

    def test_target_of_the_wrong_size(self, elman_kernel):
        params, inputs, targets = problem()
        targets["y"] = np.zeros((T, B, K + 1))
        call_fails(
            elman_kernel,
            msg(f"targets['y'] has shape ({T}, {B}, {K + 1})", "(T, B, k)", f"k = {K}"),
            params,
            inputs,
            targets,
        )

    def test_ragged_steps(self, elman_kernel):
        params, inputs, targets = problem()
        targets["y"] = targets["y"][: T - 1]
        call_fails(
            elman_kernel,
            msg(f"targets['y'] has {T - 1} steps", f"inputs['x'] has {T} steps", "ragged"),
            params,
            inputs,
            targets,
        )

    def test_ragged_batch(self, elman_kernel):
        params, inputs, targets = problem()
        targets["y"] = np.zeros((T, B + 1, K))
        call_fails(
            elman_kernel,
            msg(f"targets['y'] has {T} steps and batch {B + 1}", f"batch {B}"),
            params,
            inputs,
            targets,
        )

    def test_empty_sequence(self, elman_kernel):
        params, inputs, targets = problem()
        inputs["x"], targets["y"] = inputs["x"][:0], targets["y"][:0]
        call_fails(
            elman_kernel, msg("inputs['x'] has 0 steps", "at least 1"), params, inputs, targets
        )

    def test_int_input(self, elman_kernel):
        params, inputs, targets = problem()
        inputs["x"] = np.ones((T, B, M), dtype=np.int64)
        call_fails(
            elman_kernel,
            msg("inputs['x'] has dtype int64", "float32 or float64"),
            params,
            inputs,
            targets,
        )

    def test_mixed_float32_and_float64(self, elman_kernel):
        params, inputs, targets = problem()
        inputs["x"] = inputs["x"].astype(np.float32)
        call_fails(
            elman_kernel,
            msg("inputs['x'] has dtype float32", "params['W'] has dtype float64", "one dtype"),
            params,
            inputs,
            targets,
        )

    def test_list_input(self, elman_kernel):
        params, inputs, targets = problem()
        inputs["x"] = inputs["x"].tolist()
        call_fails(
            elman_kernel,
            msg("inputs['x'] must be a NumPy array, got list"),
            params,
            inputs,
            targets,
        )

    def test_missing_input(self, elman_kernel):
        params, inputs, targets = problem()
        call_fails(elman_kernel, msg("inputs['x'] is missing", "(T, B, m)"), params, {}, targets)

    def test_missing_target(self, elman_kernel):
        params, inputs, targets = problem()
        call_fails(elman_kernel, msg("targets['y'] is missing", "(T, B, k)"), params, inputs, {})

    def test_extra_target(self, elman_kernel):
        params, inputs, targets = problem()
        targets["z"] = targets["y"].copy()
        call_fails(
            elman_kernel,
            msg("targets['z'] is not a name of this kernel", "['y']"),
            params,
            inputs,
            targets,
        )

    def test_inputs_not_a_dict(self, elman_kernel):
        params, inputs, targets = problem()
        call_fails(
            elman_kernel, msg("inputs must be a dict", "ndarray"), params, inputs["x"], targets
        )

    # Regression (bug at commit b5faf93): loss_and_grad(params, inputs, None) passes the checks
    # (None means 'forward') and fails inside the generated code: TypeError 'NoneType' object is
    # not subscriptable
    def test_targets_none_in_loss_and_grad(self, elman_kernel):
        params, inputs, _ = problem()
        call_fails(elman_kernel, msg("targets"), params, inputs, None)

    def test_forward_checks_too(self, elman_kernel):
        params, inputs, targets = problem()
        inputs["x"] = np.zeros((T, M))
        call_fails(
            elman_kernel,
            msg(f"inputs['x'] has shape ({T}, {M})", "(T, B, m)"),
            params,
            inputs,
            None,
            forward=True,
        )


class TestKernelInitialState:
    @pytest.mark.parametrize(
        "shape", [(B, N + 1), (N + 1,), (1, B, N), (N, B)], ids=["batch", "vector", "3d", "swapped"]
    )
    def test_h0_of_the_wrong_shape(self, elman_kernel, shape):
        params, inputs, targets = problem()
        h0 = np.zeros(shape)
        shown = "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
        call_fails(
            elman_kernel,
            msg(f"h0['h'] has shape {shown}", f"expected ({B}, {N}) (batch, size) or ({N},)"),
            params,
            inputs,
            targets,
            h0,
        )

    def test_h0_dict_with_unknown_key(self, elman_kernel):
        params, inputs, targets = problem()
        call_fails(
            elman_kernel,
            msg("h0['z'] is not a state of this kernel", "['h']"),
            params,
            inputs,
            targets,
            {"z": np.zeros(N)},
        )

    def test_h0_of_another_dtype(self, elman_kernel):
        params, inputs, targets = problem()
        call_fails(
            elman_kernel,
            msg("h0['h']", "float64", "got float32"),
            params,
            inputs,
            targets,
            np.zeros(N, dtype=np.float32),
        )

    def test_h0_list(self, elman_kernel):
        params, inputs, targets = problem()
        call_fails(elman_kernel, msg("h0['h']", "got list"), params, inputs, targets, [0.0] * N)

    @pytest.mark.parametrize("dtype", [np.float64, np.float32])
    def test_h0_vector_is_broadcast_over_the_batch(self, elman_kernel, dtype):
        params, inputs, targets = problem(dtype)
        h0 = np.linspace(-0.5, 0.5, N).astype(dtype)
        saved = copy.deepcopy((params, inputs, targets, h0))
        loss, grads = elman_kernel.loss_and_grad(params, inputs, targets, h0)
        tiled = np.tile(h0, (B, 1))
        loss_b, grads_b = elman_kernel.loss_and_grad(params, inputs, targets, tiled)
        loss_d, _ = elman_kernel.loss_and_grad(params, inputs, targets, {"h": h0})
        assert loss == loss_b == loss_d
        for name in params:
            np.testing.assert_array_equal(grads[name], grads_b[name])
            assert grads[name].dtype == dtype and grads[name].shape == params[name].shape
        states = elman_kernel.forward(params, inputs, h0)["h"]
        np.testing.assert_array_equal(states, elman_kernel.forward(params, inputs, tiled)["h"])
        # h0 does matter: the zero state gives another loss
        assert elman_kernel.loss_and_grad(params, inputs, targets)[0] != loss
        for a, b in zip(saved, (params, inputs, targets, h0), strict=True):
            assert_unchanged(a, b)

    def test_successful_call_changes_nothing(self, elman_kernel):
        params, inputs, targets = problem()
        h0 = {"h": np.full((B, N), 0.1)}
        saved = copy.deepcopy((params, inputs, targets, h0))
        elman_kernel.loss_and_grad(params, inputs, targets, h0)
        elman_kernel.forward(params, inputs, h0)
        for a, b in zip(saved, (params, inputs, targets, h0), strict=True):
            assert_unchanged(a, b)
