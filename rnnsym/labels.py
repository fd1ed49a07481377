"""Which lines of a derivation ARE the report's equations (2)–(9).

The report (on recurrent networks, after Goodfellow, Bengio & Courville, *Deep Learning*, MIT
Press 2016, ch. 10) numbers the Elman RNN's equations (2)–(9). A line of a derivation carries one
of these numbers only when it is that equation up to a consistent renaming of symbols; every
other line is cited by the derivation's own number (its position in
:meth:`~rnnsym.derive.Derivation.equations`). The test of identity, line by line:

Forward lines (structural equality; the terms of a sum and the factors of an elementwise
product in any order):

* eq. (2), ``a(t) = b + W h(t−1) + U x(t)``: a named pre-activation a (``cell.define``) with b a
  vector parameter, W a square matrix parameter applied to h(t−1) of a state h of a's size, and
  U a matrix parameter applied to x(t), which is a per-step input of the cell or the current
  value of another state (the layer below, Fig. 9). A context input (given once per sequence)
  or a fed-back target y(t−1) is not x(t): mapping x(t) to y(t−1) shifts a sequence in time,
  which is not a renaming (Fig. 6's U y(t−1), the decoder of Fig. 8).
* eq. (3), ``h(t) = tanh(a(t))``: the update of that state h from its eq. (2) pre-activation.
* eqs. (2)–(3), fused: the update ``h(t) = tanh(b + W h(t−1) + U x(t))``, with the roles above.
* eq. (4), ``o(t) = c + V h(t)``: an output (or a state updated so: Fig. 4's o) with c a vector
  and V a matrix parameter, h any per-step vector of the step (a state, a named intermediate
  or a per-step input: the head of Fig. 5 reads the layer's state as its input).
* eq. (5), ``L(t) = ½ (o(t) − y(t))ᵀ (o(t) − y(t))``: the whole per-step loss, o the left side of
  an eq. (4) line or any output or state, y a target given as vectors (not class indices).

A symbol plays one role in a cell: the V and c of an eq. (4) line are not the W, U or b of an
eqs. (2)-(3) update, and the o of eq. (5) is not the h of one (a renaming maps distinct symbols
to distinct symbols). A cell may have several eqs. (2)-(3) updates (stacked layers, Fig. 9),
each with roles of its own.

Derived lines (the derivation's expression, with named intermediates and their adjoints written
out, compared with the report's formula built from the matched symbols; structurally first,
then, where the shapes differ only in how they are written, at random rational values with
exact arithmetic, or 30-digit floats when an activation enters: tolerance 1e-25 relative, far
below any real difference and far above 30-digit rounding):

* eq. (6), ``∇_V L = Σ_t ∇_{o(t)}L h(t)ᵀ``: V and h of an eq. (4) line.
* eq. (7), ``∇_W L = Σ_t ((1 − h(t)∘h(t)) ∘ ∇_{h(t)}L) h(t−1)ᵀ`` and
  eq. (8), ``∇_U L = Σ_t ((1 − h(t)∘h(t)) ∘ ∇_{h(t)}L) x(t)ᵀ``: W, U, h, x of a state whose
  update is eqs. (2)–(3) (fused or split). The report writes diag(1 − (h(t))²) v, the same
  vector as (1 − h∘h) ∘ v. (6)–(8) are written in the adjoints ∇_{o(t)}L and ∇_{h(t)}L, so they
  hold whatever the loss; only (9) spells the loss out.
* eq. (9), ``∇_{h(t)}L = Vᵀ (o(t) − y(t)) + Wᵀ ((1 − h(t+1)∘h(t+1)) ∘ ∇_{h(t+1)}L)``. The derived
  line reads ``Vᵀ ∇_{o(t)}L + ...``: it is eq. (9) exactly when the line before it derives
  ∇_{o(t)}L = o(t) − y(t), i.e. when o is an eq. (4) output of h read by nothing else and the
  whole loss is eq. (5) on o. So the state adjoint gets "eq. (9)" only when h's update is
  eqs. (2)–(3), o(t) = c + V h(t) is eq. (4), the loss is eq. (5) on o, ∇_{o(t)}L derives as
  o(t) − y(t), and the line equals Vᵀ ∇_{o(t)}L + Wᵀ((1 − h(t+1)∘h(t+1)) ∘ ∇_{h(t+1)}L) with
  nothing else. With the slides' loss Σ_t⟨d(t)|h(t)⟩, softmax cross-entropy or a second
  reader of h it is a different equation and carries no report number.

∇_{o(t)}L = o(t) − y(t) (stated in the report's text, not numbered), the gradients of the biases
b and c, the adjoints of named intermediates and every line of gated or other cells have no
report number: their label is "".
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import sympy as sp
from sympy import HadamardProduct, MatAdd, MatMul, MatrixExpr, MatrixSymbol, Transpose

from .ir.explicit import explicit
from .ir.ops import (
    Apply,
    add,
    adjoint_symbol,
    coeff_and_factors,
    hadamard,
    mul,
    next_symbol,
    ones,
    transpose,
)

__all__ = ["Layer", "OutputLine", "report_labels", "same_expression"]

# the labels, exactly as they are printed
FUSED, EQ2, EQ3, EQ4, EQ5 = "eqs. (2)-(3)", "eq. (2)", "eq. (3)", "eq. (4)", "eq. (5)"
EQ6, EQ7, EQ8, EQ9 = "eq. (6)", "eq. (7)", "eq. (8)", "eq. (9)"


@dataclass(frozen=True)
class Layer:
    """A state whose update is the report's eqs. (2)–(3): the roles of its symbols."""

    h: str  # the state
    W: str
    U: str
    b: str
    x: MatrixSymbol  # the input (or the state of the layer below) U multiplies
    a: str | None = None  # the named pre-activation, when eq. (2) is a line of its own


@dataclass(frozen=True)
class OutputLine:
    """A line o(t) = c + V h(t), the report's eq. (4)."""

    o: str
    V: str
    c: str
    h: MatrixSymbol


# ----- comparing expressions -----


def _canon(expr):
    """A hashable form of ``expr`` in which sums and elementwise products are unordered."""
    if isinstance(expr, MatrixSymbol):
        return ("sym", expr.name, expr.shape)
    if isinstance(expr, MatAdd):
        return ("add", tuple(sorted((_canon(a) for a in expr.args), key=repr)))
    if isinstance(expr, HadamardProduct):
        return ("had", tuple(sorted((_canon(a) for a in expr.args), key=repr)))
    if isinstance(expr, MatMul):
        coeff, factors = coeff_and_factors(expr)
        return ("mul", coeff, tuple(_canon(f) for f in factors))
    if isinstance(expr, sp.Basic) and expr.args:
        return (type(expr).__name__, tuple(_canon(a) for a in expr.args))
    return (type(expr).__name__, expr)


def _random_env(exprs, rng: random.Random) -> tuple[dict, dict]:
    from sympy import ImmutableMatrix

    symbols = set()
    for expr in exprs:
        for node in sp.preorder_traversal(expr):
            if isinstance(node, MatrixExpr):
                for size in node.shape:
                    symbols |= sp.sympify(size).free_symbols
    sizes = sorted(symbols, key=lambda s: s.name)
    dims = {s: 2 + i for i, s in enumerate(sizes)}  # distinct sizes catch transpositions
    env = {}
    for expr in exprs:
        for node in sp.preorder_traversal(expr):
            if isinstance(node, MatrixSymbol):
                concrete = node.xreplace(dims)
                if concrete not in env:
                    rows, cols = (int(s) for s in concrete.shape)
                    env[concrete] = ImmutableMatrix(
                        rows,
                        cols,
                        [
                            sp.Rational(rng.randint(-9, 9), 10) + sp.Rational(1, 37)
                            for _ in range(rows * cols)
                        ],
                    )
    return dims, env


def same_expression(derived: MatrixExpr, reference: MatrixExpr, tries: int = 2) -> bool:
    """Whether two matrix expressions are the same: structurally (sums and elementwise products
    unordered) or, failing that, at ``tries`` random rational points (exact arithmetic; with
    activations 30-digit floats and a relative tolerance of 1e-25, see the module docstring)."""
    if derived.shape != reference.shape:
        return False
    if _canon(derived) == _canon(reference):
        return True

    rng = random.Random(11)
    for _ in range(tries):
        dims, env = _random_env([derived, reference], rng)
        try:
            a, b = explicit(derived, dims, env), explicit(reference, dims, env)
        except (KeyError, TypeError, ValueError):
            return False
        if a.shape != b.shape:
            return False
        for p, q in zip(a, b, strict=True):
            if p == q:
                continue
            if p.is_Rational and q.is_Rational:
                return False
            p, q = sp.N(p, 30), sp.N(q, 30)
            if abs(p - q) > sp.Float("1e-25", 30) * max(abs(p), abs(q), 1):
                return False
    return True


# ----- the forward lines -----


def _terms(expr) -> list:
    return list(expr.args) if isinstance(expr, MatAdd) else [expr]


def _product(term) -> tuple[MatrixSymbol, MatrixSymbol] | None:
    """``(A, v)`` for a term ``A v`` of two symbols with coefficient 1."""
    if not isinstance(term, MatMul):
        return None
    coeff, factors = coeff_and_factors(term)
    if coeff != 1 or len(factors) != 2 or not all(isinstance(f, MatrixSymbol) for f in factors):
        return None
    return factors[0], factors[1]


def _is_vector_param(cell, symbol) -> bool:
    var = cell.variable(symbol) if isinstance(symbol, MatrixSymbol) else None
    return var is not None and var.kind == "param" and symbol.shape[1] == 1


def _is_matrix_param(cell, symbol) -> bool:
    var = cell.variable(symbol) if isinstance(symbol, MatrixSymbol) else None
    return var is not None and var.kind == "param" and symbol.shape[1] != 1


def _per_step_input(cell, symbol) -> bool:
    var = cell.variable(symbol)
    return (
        var is not None
        and var.kind == "input"
        and var.name not in cell.context_inputs
        and var.name not in cell.fed_back
    )


def _pre_activation(cell, expr) -> tuple[str, str, str, str, MatrixSymbol] | None:
    """``(h, W, U, b, x)`` when ``expr`` is ``b + W h(t−1) + U x(t)`` (eq. (2)), else None."""
    terms = _terms(expr)
    if len(terms) != 3:
        return None
    biases = [t for t in terms if _is_vector_param(cell, t)]
    products = [p for p in map(_product, terms) if p is not None]
    if len(biases) != 1 or len(products) != 2:
        return None
    prev_states = {s.prev.symbol: n for n, s in cell.states.items()}
    recurrent = [(A, v) for A, v in products if v in prev_states]
    if len(recurrent) != 1:
        return None
    (W, h_prev), (U, x) = recurrent[0], next(p for p in products if p != recurrent[0])
    h = prev_states[h_prev]
    n = h_prev.shape[0]
    if not (_is_matrix_param(cell, W) and W.shape == (n, n) and _is_matrix_param(cell, U)):
        return None
    if len({W, U, biases[0]}) != 3 or biases[0].shape != (n, 1):
        return None
    var = cell.variable(x)
    other_state = var is not None and var.kind == "state" and var.name != h
    if not (_per_step_input(cell, x) or other_state):
        return None
    return h, W.name, U.name, biases[0].name, x


def _is_tanh_of(expr, symbol) -> bool:
    return isinstance(expr, Apply) and expr.name == "tanh" and expr.arg == symbol


def _output_line(cell, lhs: MatrixSymbol, expr) -> OutputLine | None:
    """The roles when ``lhs = expr`` is ``o = c + V h`` (eq. (4)), else None."""
    var = cell.variable(lhs)
    if var is None or var.kind not in ("output", "state"):
        return None
    terms = _terms(expr)
    if len(terms) != 2:
        return None
    biases = [t for t in terms if _is_vector_param(cell, t)]
    products = [p for p in map(_product, terms) if p is not None]
    if len(biases) != 1 or len(products) != 1:
        return None
    V, h = products[0]
    h_var = cell.variable(h)
    readable = h_var is not None and (
        h_var.kind in ("state", "intermediate") or _per_step_input(cell, h)
    )
    if not (_is_matrix_param(cell, V) and readable and h != lhs):
        return None
    return OutputLine(var.name, V.name, biases[0].name, h)


def _squared_error(o: MatrixSymbol, y: MatrixSymbol) -> MatrixExpr:
    diff = add(o, mul(-1, y))
    return mul(sp.Rational(1, 2), Transpose(diff), diff)


def _loss_line(cell, loss) -> tuple[str, str] | None:
    """``(o, y)`` when the whole per-step loss is ½ (o − y)ᵀ (o − y) (eq. (5)), else None."""
    for target in cell.targets.values():
        if target.name in cell.class_targets:
            continue
        for var in [*cell.outputs.values(), *cell.states.values()]:
            if var.symbol.shape == target.symbol.shape and _canon(loss) == _canon(
                _squared_error(var.symbol, target.symbol)
            ):
                return var.name, target.name
    return None


# ----- all lines -----


def _one_minus_square(h: MatrixExpr) -> MatrixExpr:
    return add(ones(h.shape[0]), mul(-1, hadamard(h, h)))


def report_labels(derivation) -> dict[str, str]:
    """The report label of every line of ``derivation``, keyed as
    :attr:`~rnnsym.derive.Equation.key` (a quantity's name, ``"L"``, ``"g_<name>"`` for an
    adjoint, a parameter's name for its gradient): ``"eq. (N)"``, ``"eqs. (2)-(3)"`` or ""."""

    d = derivation
    cell = d.cell
    labels: dict[str, str] = {}
    for eq in d.forward:
        labels[eq.key] = ""
    for name in [*cell.outputs, *cell.updates, *cell.definitions]:
        labels[f"g_{name}"] = ""
    for name in cell.params:
        labels[name] = ""

    # eqs. (2)-(3)
    layers: dict[str, Layer] = {}
    split: dict[str, tuple] = {}  # intermediate -> eq. (2) roles
    for kind, name in cell.order:
        expr = cell.step_term(kind, name).expr
        if kind == "define":
            roles = _pre_activation(cell, expr)
            if roles is not None and cell.states[roles[0]].shape == cell._vars[name].shape:
                labels[name] = EQ2
                split[name] = roles
            continue
        if isinstance(expr, Apply) and expr.name == "tanh":
            arg = expr.arg
            roles = _pre_activation(cell, arg)
            if roles is not None and roles[0] == name:
                labels[name] = FUSED
                layers[name] = Layer(*roles)
                continue
            a = cell.variable(arg) if isinstance(arg, MatrixSymbol) else None
            if a is not None and a.name in split and split[a.name][0] == name:
                labels[name] = EQ3
                layers[name] = Layer(*split[a.name], a=a.name)

    # a symbol plays one role: the report's V, c and o are not its W, U, b or h
    layer_params = {p for layer in layers.values() for p in (layer.W, layer.U, layer.b)}
    layer_states = set(layers)

    # eq. (4)
    outputs: dict[str, OutputLine] = {}
    for eq in d.forward:
        if isinstance(eq.lhs, MatrixSymbol) and eq.key != "L":
            line = _output_line(cell, eq.lhs, eq.rhs)
            if line is not None and not {line.V, line.c} & layer_params:
                labels[eq.key] = EQ4
                outputs[line.o] = line

    # eq. (5)
    loss = _loss_line(cell, cell.loss_expr)
    if loss is not None and loss[0] in layer_states:
        loss = None  # ½ (h − y)ᵀ (h − y) on an eq. (2)-(3) state: h would also be the report's o
    if loss is not None:
        labels["L"] = EQ5

    # eq. (6)
    for line in outputs.values():
        g_o = adjoint_symbol(cell._vars[line.o].symbol)
        reference = mul(g_o, transpose(line.h))
        if same_expression(d.inline(d.param_terms[line.V]), d.inline(reference)):
            labels[line.V] = EQ6

    # eqs. (7), (8)
    for layer in layers.values():
        state = cell.states[layer.h]
        h = state.symbol
        delta = hadamard(_one_minus_square(h), adjoint_symbol(h))
        for param, right, label in ((layer.W, state.prev.symbol, EQ7), (layer.U, layer.x, EQ8)):
            reference = mul(delta, transpose(right))
            if same_expression(d.inline(d.param_terms[param]), d.inline(reference)):
                labels[param] = label

    # eq. (9)
    if loss is not None:
        o_name, y_name = loss
        line = outputs.get(o_name)
        layer = layers.get(line.h.name) if line is not None else None
        if (
            line is not None
            and layer is not None
            and line.h == cell.states[layer.h].symbol
            and o_name in d.output_adjoints
        ):
            o, y = cell._vars[o_name].symbol, cell._vars[y_name].symbol
            if same_expression(d.inline(d.output_adjoints[o_name]), add(o, mul(-1, y))):
                labels.update(_eq9(d, layer, line))
    return labels


def _eq9(d, layer: Layer, line: OutputLine) -> dict[str, str]:
    """{"g_h": "eq. (9)"} when ∇_{h(t)}L derives as Vᵀ ∇_{o(t)}L + Wᵀ(...) and nothing else."""

    cell = d.cell
    h = cell.states[layer.h].symbol
    V, W = cell._vars[line.V].symbol, cell._vars[layer.W].symbol
    g_o = adjoint_symbol(cell._vars[line.o].symbol)
    h_next, g_next = next_symbol(h), next_symbol(adjoint_symbol(h))
    reference = add(
        mul(transpose(V), g_o),
        mul(transpose(W), hadamard(_one_minus_square(h_next), g_next)),
    )
    terms = [d.inline(e) for e in d.state_local[layer.h]]
    if layer.h in d.carry:
        terms.append(d.shift_forward(d.inline(d.carry[layer.h])))
    if not terms or not same_expression(add(*terms), reference):
        return {}
    return {f"g_{layer.h}": EQ9}
