"""The node-by-node scalar oracle (rnnsym/verify/scalar_graph.py): exact, independent and fast.

The oracle differentiates each named equation of the unrolled graph with ``sympy.diff`` and
chains the local Jacobians in mpmath. Here it is checked against the old oracle (``sympy.diff``
of the whole unrolled loss), shown not to use any of rnnsym's derivative rules, and run at the
sizes and lengths ``rnnsym verify`` now uses by default, on cells and on composed models.
"""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import sympy as sp

import rnnsym as rs
from rnnsym.ir.activations import ACTIVATIONS
from rnnsym.ir.ops import mul
from rnnsym.models import architectures
from rnnsym.verify import (
    ORACLE_T,
    agreement_digits,
    bptt_gradients,
    model_oracle,
    oracle_gradients,
    scalar_oracle,
    unrolled_point,
)

# the modules of rnnsym.verify that call derive() (the package's name `verify` is a function)
VERIFY_MODULES = [importlib.import_module(f"rnnsym.verify.{n}") for n in ("symbolic", "models")]

# Both oracles are exact up to mpmath's rounding at 60 + guard digits, so 50 agreeing digits
# (of 60 compared) leaves room only for rounding, not for a wrong term.
SAME_DIGITS = 50


@pytest.mark.parametrize(
    "name",
    [
        "elman",
        "elman_relu",
        "slides",
        "indrnn",
        "mgu",
        "teacher_forcing",
        "fixed_input",
        "elman_softmax",
        "stacked",
    ],
)
def test_node_oracle_equals_sympy_diff_of_the_whole_loss(name):
    cell = rs.cells.get(name)
    # sizes 2 and T = 2: the whole-loss sympy.diff swells fast (mgu takes ~4 s here)
    problem = unrolled_point(cell, 2, {s: 2 for s in cell.size_symbols}, seed=5)
    node = oracle_gradients(problem, 60)
    whole = oracle_gradients(problem, 60, method="whole-loss")
    assert set(node) == set(cell.params)
    for p in cell.params:
        assert agreement_digits(node[p], whole[p], 60) >= SAME_DIGITS, p


def test_node_oracle_equals_whole_loss_for_untied_weights():
    cell = rs.cells.elman()
    problem = unrolled_point(cell, 2, seed=2, untied=True)
    node = oracle_gradients(problem, 60)
    whole = oracle_gradients(problem, 60, method="whole-loss")
    for p in cell.params:
        assert len(node[p]) == 2
        assert agreement_digits(node[p], whole[p], 60) >= SAME_DIGITS, p
    # each step's own weights get a different gradient (not the sum copied T times)
    assert agreement_digits(node["W"][0], node["W"][1], 60) < 5


def test_unknown_oracle_method_is_refused():
    problem = unrolled_point(rs.cells.elman(), 2)
    with pytest.raises(ValueError, match="method must be 'node' or 'whole-loss', got 'fd'"):
        oracle_gradients(problem, method="fd")


def test_node_oracle_uses_none_of_rnnsyms_derivative_rules(monkeypatch):
    """With every derivative rule of rnnsym broken, the oracle still gives the same numbers."""
    cell = rs.cells.lstm_peephole()
    problem = unrolled_point(cell, 3, seed=1)
    before = oracle_gradients(problem, 60)

    def broken(*args, **kwargs):
        raise AssertionError("the oracle used rnnsym's derivation")

    # (``rnnsym.derive`` is also the name of a function: reach the modules themselves)
    modules = {
        n: importlib.import_module(f"rnnsym.{path}")
        for n, path in (("rules", "ir.rules"), ("derive", "derive"), ("jvp", "ir.jvp"))
    }
    monkeypatch.setattr(modules["rules"], "vjp", broken)
    monkeypatch.setattr(modules["derive"], "vjp", broken)
    monkeypatch.setattr(modules["derive"], "derive", broken)
    for module in VERIFY_MODULES:
        monkeypatch.setattr(module, "derive", broken)
    monkeypatch.setattr(modules["jvp"], "jvp", broken)
    monkeypatch.setattr(modules["jvp"], "tangent", broken)
    for name, activation in list(ACTIVATIONS.items()):
        monkeypatch.setitem(ACTIVATIONS, name, dataclasses.replace(activation, derivative=broken))
    after = oracle_gradients(problem, 60)
    for p in cell.params:
        # the same computation: bit-for-bit the same 60-digit numbers
        assert agreement_digits(before[p], after[p], 60) == float("inf"), p


def _peephole_cell() -> rs.Cell:
    """A two-state, three-gate user cell (the LSTM with peepholes, written as a user would)."""
    cell = rs.Cell("user_peephole")
    n, m, k = cell.dims("n m k")
    x = cell.input("x", m)
    h, c = cell.state("h", n), cell.state("c", n)
    W, U, b = cell.param("W", 4 * n, m), cell.param("U", 4 * n, n), cell.param("b", 4 * n)
    p_i, p_f, p_o = cell.param("p_i", n), cell.param("p_f", n), cell.param("p_o", n)
    a = cell.define("a", W @ x + U @ h.prev + b)
    i = cell.define("i", rs.sigmoid(a[0:n] + p_i * c.prev))
    f = cell.define("f", rs.sigmoid(a[n : 2 * n] + p_f * c.prev))
    g = cell.define("g", rs.tanh(a[2 * n : 3 * n]))
    cell.update(c, f * c.prev + i * g)
    o = cell.define("o", rs.sigmoid(a[3 * n : 4 * n] + p_o * c))
    cell.update(h, o * rs.tanh(c))
    V, c_V = cell.param("V", k, n), cell.param("c_V", k)
    cell.loss(rs.squared_error(cell.output("out", V @ h + c_V), cell.target("y", k)))
    return cell


def test_default_scalar_oracle_is_stronger_than_before_and_passes_a_gated_user_cell():
    report = scalar_oracle(_peephole_cell())
    # distinct sizes >= 3 (before: 2 and 3) and T = ORACLE_T >= 5 (before: 2 or 3)
    assert sorted(report.sizes.values()) == [3, 4, 5]
    assert report.T == ORACLE_T >= 5
    assert report.method == "node"
    assert report.oracle_seconds is not None and report.oracle_seconds <= report.seconds
    # 60-digit evaluation; 40 digits must agree (the derivation is exact, the rest rounding)
    assert report.ok, str(report)
    assert min(report.agreement.values()) >= 40
    assert "sympy.diff node by node" in str(report) and "oracle" in str(report)


def test_default_scalar_oracle_catches_an_error_below_float64():
    """A derived term scaled by 1 + 1e-30 is caught at the default sizes and T."""
    cell = _peephole_cell()
    d = rs.derive(cell)
    terms = dict(d.param_terms)
    terms["p_f"] = mul(1 + sp.Rational(1, 10**30), terms["p_f"])
    report = scalar_oracle(cell, derivation=dataclasses.replace(d, param_terms=terms))
    assert not report.ok
    assert report.agreement["p_f"] < 35
    assert report.agreement["p_i"] >= 40


def test_node_oracle_at_long_sequences_agrees_with_bptt():
    """T = 8 at distinct sizes: out of reach of the whole-loss sympy.diff, seconds here."""
    cell = rs.cells.gru()
    problem = unrolled_point(cell, 8, {"n": 3, "m": 4, "k": 5}, seed=3)
    oracle = oracle_gradients(problem, 60)
    bptt = bptt_gradients(problem, 60)
    for p in cell.params:
        assert agreement_digits(oracle[p], bptt[p], 60) >= 40, p


def test_user_elementwise_function_goes_through_its_scalar_definition():
    swish = rs.elementwise("swish_oracle_test", lambda z: z / (1 + sp.exp(-z)))
    cell = rs.Cell("swish_cell")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U = cell.param("W", n, n), cell.param("U", n, m)
    cell.update(h, swish(W @ h.prev + U @ x))
    cell.loss(rs.squared_error(h, cell.target("y", n)))
    problem = unrolled_point(cell, 2, seed=4)
    node = oracle_gradients(problem, 60)
    whole = oracle_gradients(problem, 60, method="whole-loss")
    for p in cell.params:
        assert agreement_digits(node[p], whole[p], 60) >= SAME_DIGITS
    assert scalar_oracle(cell).ok


@pytest.mark.parametrize("name", ["last_output", "bidirectional", "seq2seq", "seq2seq_init"])
def test_model_oracle_at_40_digits(name):
    report = model_oracle(rs.cells.get(name))
    assert report.T == 4 and sorted(set(report.sizes.values())) == [3, 4, 5]
    # the derivation of each part, chained as the model kernel chains them, at 60 digits:
    # exact up to rounding, so 40 digits must agree per entry
    assert set(report.derivation_agreement) == set(rs.cells.get(name).params)
    assert min(report.derivation_agreement.values()) >= 40, str(report)
    # the float64 kernel: ~16 digits less a few steps' rounding; 10 required
    assert min(report.agreement.values()) >= 10, str(report)
    assert report.ok


def test_model_oracle_with_a_context_input_decoder():
    """seq2seq whose decoder reads C at every step (a context input), not as h(0)."""
    encoder = architectures.elman_layer("enc", "h", "_e")
    decoder = rs.Cell("ctx_decoder")
    n, k = decoder.dims("n k")
    C = decoder.context("C", n)
    y = decoder.target("y", k)
    s = decoder.state("s", n)
    W, U, P = decoder.param("W_d", n, n), decoder.param("U_d", n, k), decoder.param("P", n, n)
    decoder.update(s, rs.tanh(W @ s.prev + U @ y.prev + P @ C))
    V = decoder.param("V", k, n)
    decoder.loss(rs.squared_error(decoder.output("o", V @ s), y))
    model = rs.seq2seq(encoder, decoder)
    report = model_oracle(model, T=3, T_out=2)
    assert min(report.derivation_agreement.values()) >= 40, str(report)
    assert report.ok, str(report)


def test_model_oracle_catches_a_wrong_chained_derivation(monkeypatch):
    """The head's ∇V scaled by 1 + 1e-30: invisible in float64, caught by the 40-digit check."""
    models = importlib.import_module("rnnsym.verify.models")  # where model_oracle derives
    real = models.derive

    def wrong(cell):
        d = real(cell)
        if "V" not in d.param_terms:
            return d
        terms = dict(d.param_terms)
        terms["V"] = mul(1 + sp.Rational(1, 10**30), terms["V"])
        return dataclasses.replace(d, param_terms=terms)

    monkeypatch.setattr(models, "derive", wrong)
    report = model_oracle(rs.cells.get("last_output"), T=3)
    assert report.derivation_agreement["V"] < 35
    assert report.derivation_agreement["W"] >= 40
    assert not report.ok


@pytest.mark.parametrize("T", [0, -1, 2.5, True])
def test_oracle_refuses_a_bad_number_of_steps(T):
    with pytest.raises(ValueError, match=f"T={T!r} steps; expected an integer >= 1"):
        unrolled_point(rs.cells.elman(), T)
    with pytest.raises(ValueError, match=f"T={T!r} steps; expected an integer >= 1"):
        scalar_oracle(rs.cells.elman(), T=T)
