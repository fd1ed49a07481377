"""Honest equation labels: a line carries the report's number only when it IS that equation.

The report (after Goodfellow, Bengio & Courville, *Deep Learning*, MIT Press 2016, ch. 10)
numbers the Elman RNN's equations:

    (2) a(t) = b + W h(t−1) + U x(t)        (3) h(t) = tanh(a(t))
    (4) o(t) = c + V h(t)                   (5) L = ½ (o(t) − y(t))ᵀ (o(t) − y(t)), summed over t
    (6) ∇_V L = Σ_t (∇_{o(t)}L) h(t)ᵀ
    (7) ∇_W L = Σ_t diag(1 − h(t)²) (∇_{h(t)}L) h(t−1)ᵀ
    (8) ∇_U L = Σ_t diag(1 − h(t)²) (∇_{h(t)}L) x(t)ᵀ
    (9) ∇_{h(t)}L = Vᵀ (o(t) − y(t)) + Wᵀ diag(1 − h(t+1)²) ∇_{h(t+1)}L

The table below is written by hand from these equations, one entry per built-in cell and per
part of each built-in model: the lines that are one of them, with the roles their symbols play.
Every other line must have no label. The labelled lines are also evaluated at random values and
compared with the formulas above written in NumPy (``_report_formula``).
"""

from __future__ import annotations

import keyword
import re

import numpy as np
import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

import rnnsym as rs
from rnnsym.backends.numpy import generate_module
from rnnsym.backends.numpy_forward import generate_forward_module
from rnnsym.cell import RESERVED
from rnnsym.derive import Derivation, adjoint_symbol, next_symbol
from rnnsym.ir.ops import Apply, Concat, LogSumExp, Slice, Softmax, coeff_and_factors
from rnnsym.labels import same_expression

FUSED, EQ2, EQ3, EQ4, EQ5 = "eqs. (2)-(3)", "eq. (2)", "eq. (3)", "eq. (4)", "eq. (5)"
EQ6, EQ7, EQ8, EQ9 = "eq. (6)", "eq. (7)", "eq. (8)", "eq. (9)"


# ----- the table, by hand -----


def update(h="h", W="W", U="U", b="b", x="x"):
    """h(t) = tanh(b + W h(t−1) + U x(t)), eqs. (2)-(3) fused, and its gradients (7), (8)."""
    roles = dict(h=h, W=W, U=U, b=b, x=x)
    return {h: (FUSED, roles), W: (EQ7, roles), U: (EQ8, roles)}


def output(o="o", V="V", c="c", h="h"):
    """o(t) = c + V h(t), eq. (4), and ∇_V L, eq. (6)."""
    roles = dict(o=o, V=V, c=c, h=h)
    return {o: (EQ4, roles), V: (EQ6, roles)}


def loss(o="o", y="y"):
    return {"L": (EQ5, dict(o=o, y=y))}


def eq9(h="h", W="W", V="V", o="o", y="y"):
    return {f"g_{h}": (EQ9, dict(h=h, W=W, V=V, o=o, y=y))}


GATED_OUTPUT = {**output("out", "V", "b_V", "h"), **loss("out")}

CELLS: dict[str, dict] = {
    "elman": {**update(), **output(), **loss(), **eq9()},
    "elman_relu": {**output(), **loss()},  # ReLU: the update is not eq. (3)
    "slides": {},  # no bias, no output, the loss Σ⟨d|h⟩: none of the report's lines
    "indrnn": GATED_OUTPUT,
    "mgu": GATED_OUTPUT,
    "gru": GATED_OUTPUT,
    "gru_original": GATED_OUTPUT,
    "lstm": GATED_OUTPUT,
    "lstm_peephole": GATED_OUTPUT,
    "min_gru": GATED_OUTPUT,
    "min_lstm": GATED_OUTPUT,
    "rg_lru": GATED_OUTPUT,
    # Fig. 4: W reads y(t−1) (teacher forcing) or o(t−1) (free-running), not h(t−1)
    "teacher_forcing": {**output(), **loss()},
    "output_feedback": {**output(), **loss()},
    # Fig. 6: four terms in the update, softmax cross-entropy
    "fixed_input": output(),
    # Fig. 9: two Elman layers; layer 2 reads h_1(t) as its x(t); eq. (9) for the top layer only
    "stacked": {
        **update("h_1", "W_1", "U_1", "b_1", "x_1"),
        **update("h_2", "W_2", "U_2", "b_2", "h_1"),
        **output("o_2", "V_2", "c_2", "h_2"),
        **loss("o_2", "y_2"),
        **eq9("h_2", "W_2", "V_2", "o_2", "y_2"),
    },
    # Fig. 10: the output line is eq. (4) with z for h; nothing else coincides
    "deep_transition": {**output(h="z"), **loss()},
    # softmax cross-entropy: not eq. (5), so ∇_h L is not eq. (9)
    "elman_softmax": {**update(), **output()},
}

# the parts of the composed models; the layers carry the seed loss Σ_t⟨d_h(t)|h(t)⟩
MODELS: dict[str, dict[str, dict]] = {
    "last_output": {"layer": update(), "head": output()},  # softmax cross-entropy at T
    "bidirectional": {
        "forward": update(),
        # shown in the model's time the backward layer reads g(t+1), where eq. (2) reads h(t-1):
        # not the report's equation as printed, so no report number on any of its lines
        "backward": {},
        "head": loss(),  # o = c + V h + V_g g: three terms, not eq. (4)
    },
    "seq2seq": {
        "encoder": update("h", "W_e", "U_e", "b_e"),
        # the decoder reads y(t−1), a shifted target, and C, where eq. (2) reads x(t)
        "decoder": {**output(h="s"), **loss()},
    },
    "seq2seq_init": {
        "encoder": update("h", "W_e", "U_e", "b_e"),
        # the decoder reads y(t−1), a shifted target, where eq. (2) reads x(t)
        "decoder": {**output(h="s"), **loss()},
    },
}


def all_derivations():
    for name, table in CELLS.items():
        yield name, rs.derive(rs.cells.get(name)), table
    for name, parts in MODELS.items():
        derived = rs.cells.get(name).derive().parts
        assert set(derived) == set(parts), name
        for role, table in parts.items():
            yield f"{name}.{role}", derived[role], table


def test_the_table_covers_every_builtin():
    assert set(CELLS) == set(rs.cells.BUILTIN)
    assert set(MODELS) == set(rs.cells.MODELS)


@pytest.mark.parametrize("name,derivation,table", list(all_derivations()))
def test_every_label_of_every_builtin(name: str, derivation: Derivation, table: dict) -> None:
    equations = derivation.equations()
    keys = [eq.key for eq in equations]
    assert len(set(keys)) == len(keys), keys
    assert set(derivation.labels) == set(keys), name  # every line has an entry
    got = {eq.key: eq.label for eq in equations}
    expected = {key: table[key][0] if key in table else "" for key in keys}
    assert got == expected, name
    assert {k: v for k, v in derivation.labels.items()} == expected
    for eq in equations:  # the old labels, stamped on by role, are gone
        assert "cf." not in eq.label and "from" not in eq.label and "bias" not in eq.label


def test_gradients_in_the_report_order():
    """(6), (7), (8) first, then the others in declaration order; numbers = positions."""
    d = rs.derive(rs.cells.elman())
    keys = [eq.key for eq in d.equations()]
    assert keys == ["h", "o", "L", "g_o", "g_h", "V", "W", "U", "b", "c"]
    assert [d.number_of(k) for k in keys] == list(range(1, 11))
    assert d.number_of("V") == 6 and d.number_of("W") == 7 and d.number_of("U") == 8
    stacked = rs.derive(rs.cells.get("stacked"))
    grads = [eq.key for eq in stacked.equations()][-8:]
    assert grads == ["V_2", "W_1", "W_2", "U_1", "U_2", "b_1", "b_2", "c_2"]
    lstm = rs.derive(rs.cells.get("lstm"))  # only V is labelled; the rest in declaration order
    assert [eq.key for eq in lstm.equations()][-6:] == ["V", "W_ih", "W_hh", "b_ih", "b_hh", "b_V"]
    with pytest.raises(KeyError, match="no line 'nope'"):
        d.number_of("nope")


def split_elman(activation=rs.tanh) -> rs.Cell:
    """The Elman cell with its pre-activation named: eq. (2) and eq. (3) on lines of their own."""
    cell = rs.Cell("elman_split")
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    V, c = cell.param("V", k, n), cell.param("c", k)
    a = cell.define("a", b + W @ h.prev + U @ x)
    cell.update(h, activation(a))
    o = cell.output("o", c + V @ h)
    cell.loss(rs.squared_error(o, cell.target("y", k)))
    return cell


def test_named_pre_activation_is_eq_2_and_the_update_eq_3():
    d = rs.derive(split_elman())
    got = {eq.key: eq.label for eq in d.equations()}
    assert got == {
        "a": EQ2,
        "h": EQ3,
        "o": EQ4,
        "L": EQ5,
        "g_o": "",
        "g_h": EQ9,  # its carry is Wᵀ ∇_{a(t+1)}L, with ∇_a L = (1 − h∘h) ∘ ∇_h L written out
        "g_a": "",
        "V": EQ6,
        "W": EQ7,
        "U": EQ8,
        "b": "",
        "c": "",
    }
    relu = {eq.key: eq.label for eq in rs.derive(split_elman(rs.relu)).equations()}
    assert {k: v for k, v in relu.items() if v} == {"a": EQ2, "o": EQ4, "L": EQ5, "V": EQ6}


# ----- every labelled line, evaluated: the derived expression = the report's formula -----

_ACTIVATIONS = {
    "tanh": np.tanh,
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "relu": lambda v: np.maximum(v, 0),
    "step": lambda v: (v > 0).astype(float),
    "exp": np.exp,
    "sqrt": np.sqrt,
    "softplus": lambda v: np.logaddexp(0, v),
    "log_sigmoid": lambda v: -np.logaddexp(0, -v),
}


class _Evaluator:
    """Evaluates a derivation's lines with NumPy at random values of every free symbol.

    A symbol that is the left side of a line takes that line's value (so h(t) = tanh(a(t)) and
    ∇_{o(t)}L = o(t) − y(t) hold); ∇_{a(t+1)}L of a named intermediate is its line one step
    later; everything else (inputs, parameters, previous and next states, targets, next
    adjoints) is drawn at random. Sizes n, m, k, ... get distinct values.
    """

    def __init__(self, d: Derivation, seed: int):
        self.d = d
        self.rng = np.random.default_rng(seed)
        sizes = sorted(d.cell.size_symbols.values(), key=lambda s: s.name)
        self.dims = {s: 2 + i for i, s in enumerate(sizes)}
        self.lines = {eq.lhs: eq.rhs for eq in d.equations() if not isinstance(eq.lhs, str)}
        for name in d.cell.intermediates:  # ∇_{a(t+1)}L, the line of ∇_{a(t)}L one step later
            g = adjoint_symbol(d.cell._vars[name].symbol)
            self.lines[d.shift_forward(g)] = d.shift_forward(d.intermediate_adjoints[name])
        self.values: dict = {}

    def symbol(self, s: sp.MatrixSymbol) -> np.ndarray:
        if s not in self.values:
            if s in self.lines:
                self.values[s] = self(self.lines[s])
            else:
                shape = tuple(int(v) for v in s.xreplace(self.dims).shape)
                self.values[s] = self.rng.uniform(-0.9, 0.9, shape)
        return self.values[s]

    def __call__(self, e) -> np.ndarray:
        if isinstance(e, sp.MatrixSymbol):
            return self.symbol(e)
        if isinstance(e, sp.MatAdd):
            return sum(self(a) for a in e.args)
        if isinstance(e, sp.MatMul):
            coeff, factors = coeff_and_factors(e)
            out = self(factors[0])
            for f in factors[1:]:
                out = out @ self(f)
            return float(coeff) * out
        if isinstance(e, sp.HadamardProduct):
            out = self(e.args[0])
            for a in e.args[1:]:
                out = out * self(a)
            return out
        if isinstance(e, sp.Transpose):
            return self(e.arg).T
        if isinstance(e, Apply):
            return _ACTIVATIONS[e.name](self(e.arg))
        if isinstance(e, (sp.OneMatrix, sp.ZeroMatrix)):
            shape = tuple(int(v) for v in e.xreplace(self.dims).shape)
            return np.full(shape, 1.0 if isinstance(e, sp.OneMatrix) else 0.0)
        if isinstance(e, Slice):
            arg, start, stop = e.args
            return self(arg)[int(start.xreplace(self.dims)) : int(stop.xreplace(self.dims))]
        if isinstance(e, Concat):
            return np.vstack([self(a) for a in e.args])
        if isinstance(e, LogSumExp):
            return np.log(np.sum(np.exp(self(e.args[0])))).reshape(1, 1)
        if isinstance(e, Softmax):
            v = np.exp(self(e.args[0]))
            return v / v.sum()
        raise TypeError(f"the test's evaluator does not know {type(e).__name__}")


def _report_formula(label: str, roles: dict, v: _Evaluator) -> np.ndarray:
    """The report's equation ``label``, written in NumPy from its text, with these roles."""
    cell = v.d.cell

    def val(role: str) -> np.ndarray:
        return v.symbol(cell._vars[roles[role]].symbol)

    def prev(role: str) -> np.ndarray:
        return v.symbol(cell.states[roles[role]].prev.symbol)

    def grad(role: str, step: str = "") -> np.ndarray:  # ∇_{q(t)}L, or ∇_{q(t+1)}L
        g = adjoint_symbol(cell._vars[roles[role]].symbol)
        return v.symbol(next_symbol(g) if step else g)

    def diag_one_minus_square(h: np.ndarray) -> np.ndarray:  # diag(1 − h²), as the report
        return np.diag(1 - h[:, 0] ** 2)

    if label in (FUSED, EQ2):
        a = val("b") + val("W") @ prev("h") + val("U") @ val("x")
        return np.tanh(a) if label == FUSED else a
    if label == EQ3:
        return np.tanh(val("a"))
    if label == EQ4:
        return val("c") + val("V") @ val("h")
    if label == EQ5:
        diff = val("o") - val("y")
        return 0.5 * diff.T @ diff
    if label == EQ6:
        return grad("o") @ val("h").T
    if label == EQ7:
        return diag_one_minus_square(val("h")) @ grad("h") @ prev("h").T
    if label == EQ8:
        return diag_one_minus_square(val("h")) @ grad("h") @ val("x").T
    if label == EQ9:
        h_next = v.symbol(next_symbol(cell._vars[roles["h"]].symbol))
        return val("V").T @ (val("o") - val("y")) + val("W").T @ diag_one_minus_square(
            h_next
        ) @ grad("h", "next")
    raise AssertionError(f"no report formula for {label!r}")


SPLIT = {
    "a": (EQ2, dict(a="a", h="h", W="W", U="U", b="b", x="x")),
    "h": (EQ3, dict(a="a", h="h")),
    "W": (EQ7, dict(h="h")),
    "U": (EQ8, dict(h="h", x="x")),
    **output(),
    **loss(),
    **eq9(),
}


@pytest.mark.parametrize(
    "name,derivation,table",
    [*all_derivations(), ("elman_split", rs.derive(split_elman()), SPLIT)],
)
def test_labelled_lines_equal_the_report_formulas(name, derivation, table) -> None:
    """Each labelled line at random values = the report's formula with the table's roles.

    float64 at sizes 2-6: both sides are a few dozen operations on numbers of size ≤ 1, so they
    agree to ~1e-15; rtol = atol = 1e-12 leaves room for that and nothing else (a missing or
    extra term changes entries by ~0.1).
    """
    lines = {eq.key: eq for eq in derivation.equations()}
    assert {k for k, eq in lines.items() if eq.label} == set(table), name
    for seed in range(3):
        v = _Evaluator(derivation, seed)
        for key, (label, roles) in table.items():
            assert lines[key].label == label
            derived = v(lines[key].rhs)
            expected = _report_formula(label, roles, v)
            assert derived.shape == expected.shape, (name, key)
            np.testing.assert_allclose(
                derived, expected, rtol=1e-12, atol=1e-12, err_msg=f"{name}: {key} {label}"
            )


def test_the_numeric_check_is_not_vacuous():
    """The formulas catch a line that is not the equation: ReLU's ∇_W L is not eq. (7), and
    eq. (9) without its term from step t+1 differs from eq. (9)."""
    relu = rs.derive(rs.cells.elman_relu())
    v = _Evaluator(relu, 0)
    derived = v(relu.param_terms["W"])
    expected = _report_formula(EQ7, dict(h="h"), v)
    assert derived.shape == expected.shape
    assert not np.allclose(derived, expected, rtol=1e-12, atol=1e-12)
    elman = rs.derive(rs.cells.elman())
    v = _Evaluator(elman, 0)
    local_only = v(elman.state_local["h"][0])
    full = _report_formula(EQ9, eq9()["g_h"][1], v)
    assert local_only.shape == full.shape
    assert not np.allclose(local_only, full, rtol=1e-12, atol=1e-12)


def test_same_expression_structural_and_at_random_points():
    """Terms in any order are the same structurally; A(B + C) = AB + AC only at the random
    points (exact rational arithmetic); a transposed or missing factor is told apart."""
    n, m = sp.symbols("n m", integer=True, positive=True)
    A, B, C = (sp.MatrixSymbol(s, n, n) for s in "ABC")
    x = sp.MatrixSymbol("x", n, 1)
    assert same_expression(sp.MatAdd(A * x, B * x), sp.MatAdd(B * x, A * x))
    assert same_expression(sp.MatMul(A, sp.MatAdd(B, C)), sp.MatAdd(A * B, A * C))
    assert not same_expression(sp.MatMul(A, sp.MatAdd(B, C)), sp.MatAdd(A * B, C))
    assert not same_expression(A * B, A * B.T)
    assert not same_expression(A * x, sp.MatrixSymbol("y", m, 1))  # shapes differ
    h = sp.MatrixSymbol("h", n, 1)
    tanh_h = Apply("tanh", h)
    assert same_expression(sp.HadamardProduct(tanh_h, x), sp.HadamardProduct(x, tanh_h))
    assert not same_expression(Apply("tanh", h), Apply("sigmoid", h))


# ----- renaming keeps the labels; a change to the equation removes them -----

_NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,4}", fullmatch=True).filter(
    lambda name: not keyword.iskeyword(name) and name not in RESERVED
)

# what each perturbation of the Elman cell breaks: the lines whose labels must go
PERTURBATIONS = {
    "none": set(),
    # eq. (3) has tanh: with ReLU the update, ∇_h L (9), ∇_W (7) and ∇_U (8) are not the report's
    "relu": {"h", "g_h", "W", "U"},
    # an extra term in the update: not eq. (2)
    "extra_term": {"h", "g_h", "W", "U"},
    # W applied to an input instead of h(t−1): not eq. (2)
    "W_on_input": {"h", "g_h", "W", "U"},
    # softmax cross-entropy instead of eq. (5): ∇_o L is not o − y, so ∇_h L is not eq. (9)
    "softmax_loss": {"L", "g_h"},
    # an extra term in the output: not eq. (4), so ∇_V L is not eq. (6) and ∇_h L not eq. (9)
    "extra_output_term": {"o", "V", "g_h"},
    # a second loss term: the loss is not eq. (5)
    "extra_loss": {"L", "g_h"},
}


def renamed_elman(names: list[str], order: list[int], perturbation: str):
    """The Elman cell with every symbol renamed, the update's terms in the given order, and
    one perturbation; returns the cell and {report name: the cell's name}."""
    roles = ["x", "h", "W", "U", "b", "V", "c", "y", "o", "x2", "b2", "n", "m", "k"]
    r = dict(zip(roles, names, strict=True))
    cell = rs.Cell("renamed")
    n, m, k = cell.dims(" ".join([r["n"], r["m"], r["k"]]))
    x, h = cell.input(r["x"], m), cell.state(r["h"], n)
    W, U, b = cell.param(r["W"], n, n), cell.param(r["U"], n, m), cell.param(r["b"], n)
    V, c = cell.param(r["V"], k, n), cell.param(r["c"], k)
    recurrent = W @ h.prev
    if perturbation == "W_on_input":
        recurrent = W @ cell.input(r["x2"], n)
    terms = [b, recurrent, U @ x]
    pre = terms[order[0]] + terms[order[1]] + terms[order[2]]
    if perturbation == "extra_term":
        pre = pre + cell.param(r["b2"], n)
    cell.update(h, rs.relu(pre) if perturbation == "relu" else rs.tanh(pre))
    out = V @ h + c if order[0] % 2 else c + V @ h
    if perturbation == "extra_output_term":
        out = out + cell.param(r["b2"], k)
    o = cell.output(r["o"], out)
    y = cell.target(r["y"], k, classes=perturbation == "softmax_loss")
    if perturbation == "softmax_loss":
        cell.loss(rs.softmax_cross_entropy(o, y))
    else:
        cell.loss(rs.squared_error(o, y))
    if perturbation == "extra_loss":
        cell.loss(rs.squared_error(h, cell.target(r["x2"], n)))
    return cell, r


@given(
    names=st.lists(_NAME, min_size=14, max_size=14, unique_by=str.lower),
    order=st.permutations([0, 1, 2]),
    perturbation=st.sampled_from(sorted(PERTURBATIONS)),
)
def test_renaming_keeps_the_labels_and_a_change_removes_them(names, order, perturbation):
    cell, r = renamed_elman(names, order, perturbation)
    d = rs.derive(cell)
    elman = {"h": FUSED, "o": EQ4, "L": EQ5, "g_h": EQ9, "V": EQ6, "W": EQ7, "U": EQ8}
    broken = PERTURBATIONS[perturbation]
    # the Elman line names, in the renamed cell's names
    key = {"h": r["h"], "o": r["o"], "L": "L", "g_h": f"g_{r['h']}"}
    key |= {p: r[p] for p in ("V", "W", "U")}
    expected = {key[line]: label for line, label in elman.items() if line not in broken}
    got = {eq.key: eq.label for eq in d.equations() if eq.label}
    assert got == expected, (perturbation, r)
    # numbered in the report's order whatever the names: ∇V, ∇W, ∇U first when they are labelled
    grads = [eq.key for eq in d.equations() if eq.key in cell.params]
    labelled = [p for p in grads if d.labels[p]]
    assert grads[: len(labelled)] == labelled
    assert labelled == [r[p] for p in ("V", "W", "U") if p not in broken]


def test_one_symbol_one_role():
    """A renaming maps distinct symbols to distinct symbols: the state h cannot also be the
    report's o, nor the update's W and b the output's V and c."""
    cell = rs.Cell("h_is_o")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    cell.update(h, rs.tanh(b + W @ h.prev + U @ x))
    cell.loss(rs.squared_error(h, cell.target("y", n)))
    d = rs.derive(cell)
    assert {eq.key: eq.label for eq in d.equations() if eq.label} == {
        "h": FUSED,
        "W": EQ7,
        "U": EQ8,
    }
    shared = rs.Cell("shared_weights")
    n, m = shared.dims("n m")
    x, h = shared.input("x", m), shared.state("h", n)
    W, U, b = shared.param("W", n, n), shared.param("U", n, m), shared.param("b", n)
    shared.update(h, rs.tanh(b + W @ h.prev + U @ x))
    o = shared.output("o", b + W @ h)  # W and b again: not eq. (4)'s V and c
    shared.loss(rs.squared_error(o, shared.target("y", n)))
    labels = {eq.key: eq.label for eq in rs.derive(shared).equations() if eq.label}
    # ∇_W L gains the output's term, so it is not eq. (7); ∇_U L is still eq. (8) in ∇_{h(t)}L
    assert labels == {"h": FUSED, "L": EQ5, "U": EQ8}


# ----- kernels cite what the derivation says -----


def _report_numbers_cited(source: str) -> set[int]:
    numbers: set[int] = set()
    for match in re.finditer(r"report eqs?\.(?:~| )((?:\(\d+\)(?:-|, )?)+)", source):
        found = [int(n) for n in re.findall(r"\d+", match.group(1))]
        ranges = re.findall(r"\((\d+)\)-\((\d+)\)", match.group(1))
        numbers.update(found)
        for lo, hi in ranges:
            numbers.update(range(int(lo), int(hi) + 1))
    return numbers


def _label_numbers(d: Derivation) -> set[int]:
    numbers: set[int] = set()
    for label in d.labels.values():
        found = [int(n) for n in re.findall(r"\d+", label)]
        numbers.update(range(found[0], found[-1] + 1) if found else [])
    return numbers


@pytest.mark.parametrize("name", sorted(rs.cells.BUILTIN))
def test_kernels_cite_only_the_report_equations_the_cell_has(name):
    """Reverse- and forward-mode kernels of every built-in cell cite a report number only where
    the derivation has a line with that label, and carry the rnnsym version in their header."""
    d = rs.derive(rs.cells.get(name))
    for source in (generate_module(d), generate_forward_module(d)):
        assert f"generated by rnnsym {rs.__version__}." in source.splitlines()[0]
        assert "eqs. (2)-(9)" not in source and "cf." not in source
        assert _report_numbers_cited(source) <= _label_numbers(d), name
        if _label_numbers(d):
            assert _report_numbers_cited(source), name


def test_kernel_comments_use_the_derivation_numbers():
    d = rs.derive(rs.cells.elman())
    source = generate_module(d)
    assert "# adjoint recurrence, (5) above, report eq. (9): the only sequential part" in source
    assert "g_W = _sum_outer(d0_seq, h_prev)  # (7) above, report eq. (7)" in source
    assert "g_b = _sum_rows(d0_seq)  # (9) above\n" in source
    lstm = generate_module(rs.derive(rs.cells.lstm()))
    number = rs.derive(rs.cells.lstm()).number_of("g_h")
    assert re.search(rf"g_h_t = .*  # \({number}\) above\n", lstm)
    assert "report eq. (9)" not in lstm and "report eqs. (2)" not in lstm


def test_model_kernels_carry_the_version():
    for name in rs.cells.MODELS:
        kernel = rs.cells.get(name).compile()
        for part in kernel.kernels.values():
            assert f"generated by rnnsym {rs.__version__}." in part.source.splitlines()[0]
