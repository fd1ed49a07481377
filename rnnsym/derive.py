"""Back-propagation through time, derived symbolically for any cell.

The step of a cell is a list of named equations, in order: the state updates (and named
intermediates), the outputs and the per-step loss L(t). Reverse mode runs over them backwards,
and inside each equation over its expression DAG with the rules of :mod:`rnnsym.ir.rules`. Every
named quantity q gets an adjoint symbol ``g_q`` standing for ∇_{q(t)} L, so the results stay
short and read like the report:

* ``output_adjoints[o]``: ∇_{o(t)} L (o(t) − y(t) for the squared error);
* ``state_local[h]``: the part of ∇_{h(t)} L that arises within step t (through outputs, the
  loss and states updated later in the step);
* ``carry[h]``: the part that step t hands back to step t − 1, (∂h(t)/∂h(t−1))ᵀ-products of the
  step-t adjoints; so ∇_{h(t)} L = state_local[h](t) + carry[h](t + 1);
* ``param_terms[W]``: the per-step term whose sum over t is ∇_W L.

Each line is numbered by its position in :meth:`Derivation.equations` (the derivation's own
numbering, :meth:`Derivation.number_of`), and carries the report's equation number as its label
only when it is that equation (:mod:`rnnsym.labels`). Nothing depends on T or on the sizes: the
derivation is done once, for one step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp
from sympy import Identity, MatrixExpr, MatrixSymbol

from . import display as _display
from .cell import Cell
from .errors import DerivationError
from .ir.ops import add, adjoint_symbol, leaves, next_symbol, postorder
from .ir.rules import vjp
from .labels import report_labels

__all__ = ["Derivation", "Equation", "derive", "adjoint_symbol", "next_symbol"]


@dataclass(frozen=True)
class Equation:
    """``lhs = rhs``; ``label`` is the report's equation this line is ("eq. (4)",
    "eqs. (2)-(3)"), or "" when it is none of them (see :mod:`rnnsym.labels`)."""

    lhs: MatrixSymbol | str
    rhs: MatrixExpr
    label: str = ""

    @property
    def key(self) -> str:
        """The line's name: the quantity it defines (``"h"``, ``"L"``), its adjoint
        (``"g_h"``), or the parameter whose gradient it is (``"W"`` for ``"grad:W"``)."""
        lhs = self.lhs
        if isinstance(lhs, str):
            return lhs[5:] if lhs.startswith("grad:") else lhs
        return lhs.name


@dataclass
class Derivation:
    """The derived BPTT equations of a cell (see the module docstring).

    ``labels`` maps every line's :attr:`Equation.key` to its report label ("" for none).
    """

    __repr__ = _display.derivation_repr
    _repr_latex_ = _display.derivation_latex

    cell: Cell
    forward: list[Equation]
    output_adjoints: dict[str, MatrixExpr]
    state_local: dict[str, list[MatrixExpr]]
    carry: dict[str, MatrixExpr]
    param_terms: dict[str, MatrixExpr]
    input_terms: dict[str, MatrixExpr]
    labels: dict[str, str] = field(default_factory=dict)
    intermediate_adjoints: dict[str, MatrixExpr] = field(default_factory=dict)

    # ----- named intermediates written out (for code generation and the oracle) -----

    def _inline_maps(self) -> tuple[dict, dict]:
        cached = self.__dict__.get("_maps")
        if cached is not None:
            return cached
        cell = self.cell
        forward: dict = {}
        for kind, name in cell.order:
            if kind == "define":
                forward[cell._vars[name].symbol] = cell.definitions[name].expr.xreplace(forward)
        adjoint: dict = {}
        for kind, name in reversed(cell.order):
            if kind == "define":
                expr = self.intermediate_adjoints[name].xreplace(adjoint).xreplace(forward)
                adjoint[adjoint_symbol(cell._vars[name].symbol)] = expr
        self.__dict__["_maps"] = (forward, adjoint)
        return forward, adjoint

    def inline(self, expr: MatrixExpr) -> MatrixExpr:
        """``expr`` with every named intermediate (and its adjoint) written out."""
        forward, adjoint = self._inline_maps()
        return expr.xreplace(adjoint).xreplace(forward) if forward else expr

    def inlined(self) -> Derivation:
        """The same derivation with intermediates written out: what the kernel computes."""
        if not self.cell.definitions:
            return self
        inline = self.inline
        return Derivation(
            cell=self.cell,
            forward=[
                Equation(eq.lhs, inline(eq.rhs), eq.label)
                for eq in self.forward
                if not (isinstance(eq.lhs, MatrixSymbol) and eq.lhs.name in self.cell.definitions)
            ],
            output_adjoints={n: inline(e) for n, e in self.output_adjoints.items()},
            state_local={n: [inline(e) for e in es] for n, es in self.state_local.items()},
            carry={n: inline(e) for n, e in self.carry.items()},
            param_terms={n: inline(e) for n, e in self.param_terms.items()},
            input_terms={n: inline(e) for n, e in self.input_terms.items()},
            labels=self.labels,
            intermediate_adjoints=self.intermediate_adjoints,
        )

    def update_expr(self, name: str) -> MatrixExpr:
        """The update of a state as the kernel computes it (intermediates written out)."""
        return self.inline(self.cell.updates[name].expr)

    def output_expr(self, name: str) -> MatrixExpr:
        return self.inline(self.cell.output_defs[name].expr)

    @property
    def loss_expr(self) -> MatrixExpr:
        return self.inline(self.cell.loss_expr)

    # ----- derived views -----

    @property
    def linear_states(self):
        """Which states follow a linear recurrence h(t) = a(t) ∘ h(t−1) + b(t) that a parallel
        scan computes, and why the others do not (:class:`rnnsym.linear.Linearity`)."""
        cached = self.__dict__.get("_linearity")
        if cached is None:
            from .linear import linearity

            named = {expr: symbol for symbol, expr in self._inline_maps()[0].items()}
            updates = {n: self.update_expr(n) for n in self.cell.states}
            cached = linearity(self.cell, updates, named)
            self.__dict__["_linearity"] = cached
        return cached

    def adjoint(self, name: str) -> MatrixSymbol:
        return adjoint_symbol(self.cell._vars[name].symbol)

    def shift_forward(self, expr: MatrixExpr) -> MatrixExpr:
        """Rewrite a step-t expression at step t+1 (h(t−1) → h(t), h(t) → h(t+1), ...)."""
        rule = {}
        cell = self.cell
        for name, state in cell.states.items():
            rule[state.prev.symbol] = state.symbol
            rule[state.symbol] = next_symbol(state.symbol)
            rule[self.adjoint(name)] = next_symbol(self.adjoint(name))
        for var in list(cell.inputs.values()) + list(cell.targets.values()):
            rule[var.symbol] = next_symbol(var.symbol)
        for name, var in [*cell.outputs.items(), *cell.intermediates.items()]:
            rule[var.symbol] = next_symbol(var.symbol)
            rule[self.adjoint(name)] = next_symbol(self.adjoint(name))
        return expr.xreplace(rule)

    def state_adjoint(self, name: str) -> MatrixExpr:
        """∇_{h(t)} L = (within-step part) + (part from step t+1)."""
        local = self.state_local[name]
        from_next = self.shift_forward(self.carry[name]) if name in self.carry else None
        terms = list(local) + ([from_next] if from_next is not None else [])
        symbol = self.cell._vars[name].symbol
        return add(*terms) if terms else sp.ZeroMatrix(*symbol.shape)

    def equations(self) -> list[Equation]:
        """Forward step, adjoints and gradients, in reading order.

        The forward lines in the order the cell computes them; the adjoints of the outputs,
        then of the states and intermediates from the last computed back to the first; then the
        gradients: those that are the report's eqs. (6), (7), (8) first, in that order (ties in
        declaration order), then the others in declaration order. Position i (1-based) in this
        list is the line's number, :meth:`number_of`.
        """
        label = self.labels.get
        eqs = list(self.forward)
        for name, expr in self.output_adjoints.items():
            eqs.append(Equation(self.adjoint(name), expr, label(f"g_{name}", "")))
        for kind, name in reversed(self.cell.order):
            if kind == "update":
                expr = self.state_adjoint(name)
            else:
                expr = self.intermediate_adjoints[name]
            eqs.append(Equation(self.adjoint(name), expr, label(f"g_{name}", "")))
        names = list(self.param_terms)
        report = sorted((n for n in names if label(n, "")), key=lambda n: label(n))
        for name in report + [n for n in names if not label(n, "")]:
            eqs.append(Equation(f"grad:{name}", self.param_terms[name], label(name, "")))
        return eqs

    def number_of(self, key: str) -> int:
        """The derivation's own number of a line: its 1-based position in :meth:`equations`.

        ``key`` is the line's :attr:`Equation.key`: ``"h"`` (its update), ``"L"`` (the loss),
        ``"g_h"`` (∇_{h(t)}L), ``"W"`` (∇_W L). Text, LaTeX and kernel comments cite this number.
        """
        numbers = self.__dict__.get("_numbers")
        if numbers is None:
            numbers = {eq.key: i for i, eq in enumerate(self.equations(), 1)}
            self.__dict__["_numbers"] = numbers
        if key not in numbers:
            raise KeyError(
                f"cell {self.cell.name!r} has no line {key!r}; its lines are {', '.join(numbers)}"
            )
        return numbers[key]

    def latex(self, notation: str = "plain") -> str:
        """The derivation as one LaTeX ``align`` block, every line tagged with its number.

        ``notation`` is "plain", "report" (bold vectors, as the report) or "braket" (kets, as
        the slides); see :func:`rnnsym.printing.derivation_latex`.
        """
        from .printing import derivation_latex

        return derivation_latex(self, notation=notation)

    def paper(self, **options) -> str:
        """This derivation as a standalone LaTeX document with its verification certificate;
        see :func:`rnnsym.paper.paper_document` for the options."""
        from .paper import paper_document

        return paper_document(self, **options)

    def pretty(self) -> str:
        """The derivation as readable Unicode text for a terminal."""
        from .printing import derivation_text

        return derivation_text(self)

    def __str__(self) -> str:
        return self.pretty()


# ----- reverse mode over one expression DAG -----


def backprop(root: MatrixExpr, ans: MatrixExpr, g: MatrixExpr, differentiable: set) -> dict:
    """Cotangents of the leaves in ``differentiable`` reached from ``root`` with cotangent g."""
    order = postorder([root])
    live = {node for node in order if leaves(node) & differentiable}
    cotangents: dict[MatrixExpr, list[MatrixExpr]] = {root: [g]}
    result: dict[MatrixSymbol, MatrixExpr] = {}
    for node in reversed(order):
        if node not in live or node not in cotangents:
            continue
        total = add(*cotangents.pop(node))
        if isinstance(node, MatrixSymbol):
            result[node] = total
            continue
        node_ans = ans if node == root else node
        for arg, ct in zip(node.args, vjp(node, node_ans, total), strict=True):
            if ct is None or arg not in live:
                continue
            if ct.shape != arg.shape:
                raise DerivationError(
                    f"internal error: cotangent of {sp.sstr(arg)} has shape {ct.shape}, "
                    f"expected {arg.shape} (rule for {type(node).__name__})"
                )
            cotangents.setdefault(arg, []).append(ct)
    return result


def derive(cell: Cell) -> Derivation:
    """Derive the backward recurrence and the parameter gradients of a cell."""
    if not isinstance(cell, Cell):
        raise TypeError(f"derive() needs an rnnsym.Cell, got {type(cell).__name__} {cell!r}")
    cell.check()
    states = cell.states
    loss_symbol = MatrixSymbol("L", 1, 1)
    eqs: list[tuple[MatrixSymbol, MatrixExpr, str]] = []
    for kind, name in cell.order:
        eqs.append((cell._vars[name].symbol, cell.step_term(kind, name).expr, ""))
    for name, term in cell.output_defs.items():
        eqs.append((cell.outputs[name].symbol, term.expr, ""))
    eqs.append((loss_symbol, cell.loss_expr, ""))

    prev_of = {s.prev.symbol: n for n, s in states.items()}
    named = {sym for sym, _, _ in eqs}
    differentiable = (
        named
        | set(prev_of)
        | {p.symbol for p in cell.params.values()}
        | {x.symbol for x in cell.inputs.values()}
    )
    by_symbol = {cell._vars[n].symbol: n for n in [*states, *cell.outputs, *cell.intermediates]}
    intermediate_adjoints: dict[str, MatrixExpr] = {}

    pending: dict[MatrixSymbol, list[MatrixExpr]] = {}
    output_adjoints: dict[str, MatrixExpr] = {}
    state_local: dict[str, list[MatrixExpr]] = {n: [] for n in states}
    carry: dict[str, list[MatrixExpr]] = {}
    param_terms: dict[str, list[MatrixExpr]] = {n: [] for n in cell.params}
    input_terms: dict[str, list[MatrixExpr]] = {}

    for symbol, expr, _label in reversed(eqs):
        if symbol is loss_symbol:
            g = Identity(1)
        else:
            name = by_symbol[symbol]
            contributions = pending.pop(symbol, [])
            if name in states:
                state_local[name] = contributions
            elif name in cell.intermediates:
                intermediate_adjoints[name] = (
                    add(*contributions) if contributions else sp.ZeroMatrix(*symbol.shape)
                )
            else:
                output_adjoints[name] = (
                    add(*contributions) if contributions else sp.ZeroMatrix(*symbol.shape)
                )
            g = adjoint_symbol(symbol)
        for leaf, ct in backprop(expr, symbol, g, differentiable).items():
            if leaf in named:
                pending.setdefault(leaf, []).append(ct)
            elif leaf in prev_of:
                carry.setdefault(prev_of[leaf], []).append(ct)
            elif (v := cell.variable(leaf)) is not None and v.kind == "param":
                param_terms[v.name].append(ct)
            elif (v := cell.variable(leaf)) is not None and v.kind == "input":
                input_terms.setdefault(v.name, []).append(ct)

    # The loss's contributions to outputs and states are in dependency order; reading order is
    # outputs, then states from the last updated back to the first.
    output_adjoints = {n: output_adjoints[n] for n in cell.outputs}
    derivation = Derivation(
        cell=cell,
        forward=[Equation(sym, expr) for sym, expr, _ in eqs],
        output_adjoints=output_adjoints,
        state_local=state_local,
        carry={n: add(*terms) for n, terms in carry.items()},
        param_terms={n: add(*terms) for n, terms in param_terms.items()},
        input_terms={n: add(*terms) for n, terms in input_terms.items()},
        intermediate_adjoints=intermediate_adjoints,
    )

    derivation.labels = report_labels(derivation)
    derivation.forward = [
        Equation(eq.lhs, eq.rhs, derivation.labels[eq.key]) for eq in derivation.forward
    ]
    return derivation
