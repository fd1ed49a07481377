"""Names and strings from the user never become code (issue 10, §2).

Python reads identifiers in NFKC form, so ``ﬁ`` and ``fi`` are one variable and ``Ｔ`` is ``T``;
the cell compares names in that form. A cell's name may be any text: it reaches the generated
module only escaped, and the module's docstring shows it as a Python literal.
"""

from __future__ import annotations

import ast
import unicodedata

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rnnsym as rs
from rnnsym.cell import RESERVED
from rnnsym.verify import check_gradients, random_problem


def small_cell(name: str = "c", param: str = "W", size: str = "n") -> rs.Cell:
    cell = rs.Cell(name)
    (n,) = (cell.dims(size),)
    x, h = cell.input("x", n), cell.state("h", n)
    W = cell.param(param, n, n)
    cell.update(h, rs.tanh(W @ h.prev + x))
    cell.loss(rs.linear_loss(h, cell.target("d", n)))
    return cell


class TestLookAlikeNames:
    def test_ligature_and_plain_letters_are_one_name(self):
        cell = rs.Cell("c")
        n = cell.dims("n")
        cell.param("fi", n)
        with pytest.raises(rs.CellError, match=r"'ﬁ'.*same name to Python \('fi'\).*'fi'"):
            cell.param("ﬁ", n)

    def test_fullwidth_T_is_the_step_count(self):
        cell = rs.Cell("c")
        with pytest.raises(rs.CellError, match=r"'Ｔ'.*Python reads 'Ｔ' as 'T'.*reserved"):
            cell.dims("Ｔ")

    def test_fullwidth_np_is_numpy(self):
        cell = rs.Cell("c")
        n = cell.dims("n")
        with pytest.raises(rs.CellError, match=r"Python reads 'ｎｐ' as 'np'.*reserved"):
            cell.param("ｎｐ", n)

    def test_a_size_and_a_parameter_that_normalise_alike(self):
        cell = rs.Cell("c")
        cell.dims("ﬁ")
        with pytest.raises(rs.CellError, match=r"same name to Python \('fi'\) as the size 'ﬁ'"):
            cell.input("fi", 2)

    def test_two_sizes_in_one_call(self):
        cell = rs.Cell("c")
        with pytest.raises(rs.CellError, match=r"'fi' and 'ﬁ' are the same name to Python"):
            cell.dims("fi ﬁ")
        assert cell.size_symbols == {}  # nothing declared when one name is refused

    def test_prev_of_a_state_normalises_alike(self):
        cell = rs.Cell("c")
        n = cell.dims("n")
        cell.state("h", n)
        with pytest.raises(rs.CellError, match=r"clashes with h\.prev"):
            cell.param("h_ｐrev", n)

    def test_a_size_named_like_the_generated_step_variable(self):
        cell = rs.Cell("c")
        cell.dims("h_prev_t")
        with pytest.raises(rs.CellError, match=r"state name 'h'.*'h_prev_t'"):
            cell.state("h", 2)

    def test_a_size_declared_after_the_state(self):
        cell = rs.Cell("c")
        cell.state("h", 2)
        with pytest.raises(rs.CellError, match=r"'h_t' clashes with the generated code of state h"):
            cell.dims("h_t")

    def test_distinct_non_ascii_names_work(self):
        # names that stay distinct after NFKC compile to a correct kernel, kept as written
        cell = small_cell(param="Ｗ", size="ñ")
        assert "Ｗ" in cell.params
        kernel = rs.compile(cell)
        params, inputs, targets = random_problem(cell, T=4, B=2)
        assert set(params) == {"Ｗ"}
        # central differences in float64: a correct kernel is within 1e-8 (see verify.py)
        assert check_gradients(kernel, params, inputs, targets).ok


# identifiers the cell may accept: letters from several scripts and compatibility forms
_identifier = st.text(
    alphabet=st.sampled_from(list("abcxyzWUVhﬁﬂＷｈｘñéΩωΣ_0123456789")), min_size=1, max_size=6
).filter(lambda s: s.isidentifier())


@given(names=st.lists(_identifier, min_size=3, max_size=3))
def test_accepted_names_are_distinct_to_python(names):
    """Whatever three names a user picks, either the cell refuses one clearly or all three are
    distinct identifiers to Python and the kernel is correct."""
    cell = rs.Cell("fuzz")
    try:
        n = cell.dims(names[0])
        x = cell.input(names[1], n)
        W = cell.param(names[2], n, n)
        h = cell.state("state", n)
    except rs.CellError:
        return
    keys = {unicodedata.normalize("NFKC", s) for s in names}
    assert len(keys) == 3
    assert not keys & RESERVED
    cell.update(h, rs.tanh(W @ h.prev + x))
    cell.loss(rs.linear_loss(h, cell.target("d", n)))
    kernel = rs.compile(cell)
    params, inputs, targets = random_problem(cell, T=3, B=2)
    # central differences in float64: a correct kernel is within 1e-8 (see verify.py)
    assert check_gradients(kernel, params, inputs, targets).ok


HOSTILE_NAMES = [
    'x"""; raise SystemExit("escaped")  #',
    "x'''\nimport os\n'''",
    'a\\"""\nraise SystemExit(1)\n"""',
    "line\nraise SystemExit(2)",
    "tab\t\r\x0bform\x0c",
    "back\\slash\\",
    "\\N{BULLET} \\x41 {curly} %s",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_cell_name_never_becomes_code(name, tmp_path):
    """The name reaches the module only as text: the module parses to the same statements as
    a plainly named cell's, and its docstring shows the name as a Python literal (``repr``),
    so nothing of it is lost."""
    kernel = rs.compile(small_cell(name))
    plain = rs.compile(small_cell("plain"))
    tree, plain_tree = ast.parse(kernel.source), ast.parse(plain.source)
    assert repr(name) in ast.get_docstring(tree, clean=False)
    assert [type(s) for s in tree.body] == [type(s) for s in plain_tree.body]
    assert len(tree.body) == len(plain_tree.body)
    # importing the emitted file runs nothing but the kernel's definitions
    path = kernel.write(tmp_path / "kernel.py")
    namespace: dict = {}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)  # noqa: S102
    params, inputs, targets = random_problem(kernel.cell, T=3, B=2)
    loss, _ = namespace["loss_and_grad"](params, inputs, targets)
    assert np.isclose(loss, kernel.loss_and_grad(params, inputs, targets)[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", HOSTILE_NAMES[:3])
def test_a_cell_name_never_becomes_code_in_forward_mode(name):
    kernel = rs.compile(small_cell(name), mode="forward")
    assert repr(name) in ast.get_docstring(ast.parse(kernel.source), clean=False)


@given(name=st.text(max_size=40).filter(bool))
def test_any_cell_name_is_shown_in_the_docstring(name):
    kernel = rs.compile(small_cell(name))
    assert repr(name) in ast.get_docstring(ast.parse(kernel.source), clean=False)
