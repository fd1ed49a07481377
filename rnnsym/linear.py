"""Which states of a cell follow a linear recurrence that a parallel scan can compute.

A state h is *linear* when its update is affine in h(t−1) with a diagonal coefficient:

    h(t) = a(t) ∘ h(t−1) + b(t),

where neither a(t) nor b(t) depends on h(t−1), and every other state they read is itself linear
and computed before h (minGRU, minLSTM, the real-gated LRU, diagonal state-space models). Then
h(1..T) is a prefix scan of the pairs (a(t), b(t)) under the associative operator
(a₁, b₁) • (a₂, b₂) = (a₂ ∘ a₁, a₂ ∘ b₁ + b₂), and so is its adjoint recurrence,
∇_{h(t)}L = c(t) + a(t+1) ∘ ∇_{h(t+1)}L, run backwards in t.

The decision is symbolic and exact. The coefficient is read off the tangent of the update in
the direction δ of h(t−1) (the JVP rules of :mod:`rnnsym.ir.jvp`): the update is affine with a
diagonal coefficient exactly when that tangent is a ∘ δ with a free of h(t−1) (and of δ); the
offset is the update with h(t−1) set to zero. When a state is not linear, the reason names the
sub-expression that breaks it: h(t−1) inside a nonlinear function (the coefficient then depends
on h(t−1)), h(t−1) multiplied by a matrix (the coefficient is not diagonal), or a coefficient
or offset that reads a state that is not linear.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp
from sympy import HadamardProduct, MatAdd, MatMul, MatrixExpr, MatrixSymbol

from .cell import Cell
from .ir.jvp import tangent
from .ir.ops import (
    Apply,
    Concat,
    add,
    coeff_and_factors,
    hadamard,
    is_zero,
    leaves,
    mul,
    ones,
    postorder,
    transpose,
)

__all__ = ["LinearState", "Linearity", "linearity"]


@dataclass(frozen=True)
class LinearState:
    """h(t) = ``coefficient`` ∘ h(t−1) + ``offset``; ``reads``: the other states the two read
    (all linear, computed before this one)."""

    name: str
    coefficient: MatrixExpr
    offset: MatrixExpr
    reads: tuple[str, ...] = ()


@dataclass
class Linearity:
    """The linear states of a cell (in the order a scan computes them) and, for every other
    state, why it is not linear."""

    cell: Cell
    linear: dict[str, LinearState] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    # the linear states that read a state computed step by step (which reads none of them):
    # scanned after the loop over t instead of before it
    after: tuple[str, ...] = ()
    # for printing: the values the cell named with cell.define, written out -> their names
    named: dict = field(default_factory=dict)

    @property
    def _letters(self) -> tuple[str, str, str]:
        """The names of the coefficient, the offset and the rest of the adjoint in the text:
        a, b, c, or α, β, γ where the cell has a quantity of each step named a, b or c (a
        parameter prints without the step, so it does not clash)."""
        taken = {var.name for var in self.cell._vars.values() if var.kind != "param"}
        taken |= {symbol.name for symbol in self.named.values()}
        return ("α", "β", "γ") if taken & {"a", "b", "c"} else ("a", "b", "c")

    def _shown(self, expr: MatrixExpr) -> MatrixExpr:
        """``expr`` with the values the cell named (``cell.define``) under their names."""
        return expr.xreplace(self.named) if self.named else expr

    @property
    def all_linear(self) -> bool:
        """Every state is linear (and the cell has a state): the whole recurrence is a scan."""
        return bool(self.cell.states) and not self.reasons

    @property
    def order(self) -> list[str]:
        """The linear states in the order they are computed (each after the states it reads)."""
        return list(self.linear)

    def text(self) -> str:
        """Which states are linear, their coefficient and offset, and why the others are not."""
        from .printing import TextPrinter, _time_tables

        names, _ = _time_tables(self.cell)
        printer = TextPrinter(names)
        lines = []
        if not self.cell.states:
            return "The cell has no state: nothing recurs, every step is computed at once."
        a, b, c = self._letters
        for name in self.cell.states:
            if name in self.linear:
                state = self.linear[name]
                var = self.cell.states[name]
                now, before = printer.doprint(var.symbol), printer.doprint(var.prev.symbol)
                lines.append(
                    f"{name}: linear, {now} = {a}⁽ᵗ⁾ ∘ {before} + {b}⁽ᵗ⁾, with a diagonal "
                    f"coefficient {a}⁽ᵗ⁾ and an offset {b}⁽ᵗ⁾ free of {before}:"
                )
                shown = [self._shown(state.coefficient), self._shown(state.offset)]
                lines.append(f"    {a}⁽ᵗ⁾ = {printer.doprint(shown[0])}")
                lines.append(f"    {b}⁽ᵗ⁾ = {printer.doprint(shown[1])}")
                lead = "    where "
                for expr, symbol in self.named.items():  # the named values, written out
                    if symbol in leaves(shown[0]) | leaves(shown[1]):
                        lines.append(f"{lead}{printer.doprint(symbol)} = {printer.doprint(expr)}")
                        lead = " " * len(lead)
                if name in self.after:
                    looped = [r for r in state.reads if r not in self.linear]
                    lines.append(
                        f"    (reads {', '.join(state.reads)}; {', '.join(looped)} "
                        f"{'is' if len(looped) == 1 else 'are'} computed step by step and "
                        f"{'does' if len(looped) == 1 else 'do'} not read {name}, so {name} is "
                        "scanned after that loop)"
                    )
                elif state.reads:
                    lines.append(f"    (reads {', '.join(state.reads)}, linear and computed first)")
            else:
                lines.append(f"{name}: not linear: {self.reasons[name]}")
        if self.all_linear:
            lines.append(
                "Every state is linear: the forward recurrence and the adjoint recurrence "
                f"(∇_{{h⁽ᵗ⁾}}L = {c}⁽ᵗ⁾ + {a}⁽ᵗ⁺¹⁾ ∘ ∇_{{h⁽ᵗ⁺¹⁾}}L) are parallel scans over t "
                "(schedule 'scan')."
            )
        elif self.linear:
            lines.append(
                f"Some states are not linear: the kernel computes {', '.join(self.linear)} by "
                "parallel scans over t and the others step by step (schedule 'scan')."
            )
        else:
            lines.append("No state is linear: the recurrence runs step by step.")
        return "\n".join(lines)

    def latex(self, notation: str = "plain") -> str:
        """The same as :meth:`text`, as LaTeX paragraphs (for ``rnnsym paper``): each linear
        state's coefficient and offset, and which states are computed step by step."""
        from .printing import latex_printer

        printer = latex_printer(self.cell, notation)
        show = printer.doprint
        a, b, c = {"a": ("a", "b", "c"), "α": ("\\alpha", "\\beta", "\\gamma")}[self._letters[0]]
        parts = []
        for name, state in self.linear.items():
            var = self.cell.states[name]
            now, before = show(var.symbol), show(var.prev.symbol)
            shown = [self._shown(state.coefficient), self._shown(state.offset)]
            named = [
                f"${show(symbol)}$"
                for symbol in self.named.values()
                if symbol in leaves(shown[0]) | leaves(shown[1])
            ]
            parts.append(
                f"The state ${show(var.symbol)}$ is linear: ${now} = {a}^{{(t)}} \\circ {before} "
                f"+ {b}^{{(t)}}$ with the diagonal coefficient and the offset\n"
                f"\\[ {a}^{{(t)}} = {show(shown[0])}, \\qquad "
                f"{b}^{{(t)}} = {show(shown[1])}, \\]\n"
                + (f"with {', '.join(named)} as defined above, " if named else "")
                + f"free of ${before}$ and of every state computed step by step."
            )
        looped = [n for n in self.cell.states if n not in self.linear]
        if looped:
            names = ", ".join(f"${show(self.cell.states[n].symbol)}$" for n in looped)
            parts.append(
                f"Not linear, and computed step by step: {names} (the tangent of each update "
                "in the direction of its own previous value is not a diagonal product with a "
                "coefficient free of that value)."
            )
        parts.append(
            "A linear state and its adjoint recurrence, "
            f"$\\nabla_{{h^{{(t)}}}}L = {c}^{{(t)}} + {a}^{{(t+1)}} \\circ "
            "\\nabla_{h^{(t+1)}}L$ "
            f"with ${c}^{{(t)}}$ the rest of the adjoint, are prefix scans under the associative "
            "composition of affine maps $(a_1, b_1) \\bullet (a_2, b_2) = "
            "(a_2 \\circ a_1,\\; a_2 \\circ b_1 + b_2)$, computed in $O(\\log T)$ "
            "parallel depth instead of $T$ sequential steps."
        )
        return "\n\n".join(parts)

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        linear = ", ".join(self.linear) or "none"
        return f"<Linearity of cell {self.cell.name!r}: linear states {linear}>"


class _NotDiagonal(Exception):
    """The tangent has a term that is not (something free of δ) ∘ δ."""


def _diagonal_coefficient(jvp: MatrixExpr, direction: MatrixSymbol) -> MatrixExpr:
    """a such that ``jvp`` = a ∘ δ, a free of δ; raises _NotDiagonal otherwise."""
    if jvp == direction:
        return ones(*direction.shape)
    if isinstance(jvp, MatAdd):
        return add(*[_diagonal_coefficient(term, direction) for term in jvp.args])
    coeff, factors = coeff_and_factors(jvp)
    if coeff != 1 or len(factors) != 1:
        if len(factors) == 1 and not (coeff.free_symbols & {direction}):
            return mul(coeff, _diagonal_coefficient(factors[0], direction))
        raise _NotDiagonal(jvp)
    if isinstance(jvp, HadamardProduct):
        with_direction = [f for f in jvp.args if direction in leaves(f)]
        if len(with_direction) == 1 and with_direction[0] == direction:
            return hadamard(*[f for f in jvp.args if f is not with_direction[0]])
        if len(with_direction) == 1:
            inner = _diagonal_coefficient(with_direction[0], direction)
            return hadamard(*[f for f in jvp.args if f is not with_direction[0]], inner)
    raise _NotDiagonal(jvp)


def _at_zero(expr: MatrixExpr, symbol: MatrixSymbol) -> MatrixExpr:
    """``expr`` with ``symbol`` set to zero, rebuilt with the IR's canonical constructors."""
    if expr == symbol:
        return sp.ZeroMatrix(*symbol.shape)
    if isinstance(expr, MatrixSymbol) or symbol not in leaves(expr):
        return expr
    args = [_at_zero(a, symbol) if isinstance(a, MatrixExpr) else a for a in expr.args]
    if isinstance(expr, MatAdd):
        return add(*args)
    if isinstance(expr, MatMul):
        return mul(*args)
    if isinstance(expr, HadamardProduct):
        return hadamard(*args)
    if type(expr).__name__ == "Transpose":
        return transpose(args[0])
    return expr.func(*args)


def _smallest(expr: MatrixExpr, symbol: MatrixSymbol, kind) -> MatrixExpr | None:
    """The innermost node of ``kind`` in ``expr`` that contains ``symbol``."""
    for node in postorder([expr]):
        if isinstance(node, kind) and symbol in leaves(node):
            return node
    return None


def _not_linear_reason(name: str, update: MatrixExpr, prev: MatrixSymbol, printer) -> str:
    """Why ``update`` is not affine in ``prev`` with a diagonal coefficient."""
    show = printer.doprint
    step = show(prev)
    for node in postorder([update]):
        if prev not in leaves(node):
            continue
        if isinstance(node, Apply):
            return (
                f"the coefficient of {step} in {name} depends on {step} through "
                f"{show(node)}: {name} is not affine in {step}"
            )
        if isinstance(node, HadamardProduct):
            carrying = [f for f in node.args if prev in leaves(f)]
            if len(carrying) > 1:
                return (
                    f"the coefficient of {step} in {name} depends on {step} through "
                    f"the product {show(node)}: {name} is not affine in {step}"
                )
    product = _smallest(update, prev, MatMul)
    if product is not None and any(
        isinstance(f, MatrixExpr) and f.shape != (1, 1) and prev not in leaves(f)
        for f in coeff_and_factors(product)[1]
    ):
        return (
            f"{step} reaches {name} through the matrix product {show(product)}: its "
            f"coefficient is a full matrix, not diagonal"
        )
    concat = _smallest(update, prev, Concat)
    if concat is not None:
        return (
            f"{step} reaches {name} through the concatenation {show(concat)} "
            f"mixed with other rows: its coefficient is not diagonal"
        )
    return f"the tangent of {name} in the direction of {step} is not a diagonal product"


def linearity(cell: Cell, updates: dict[str, MatrixExpr], named: dict | None = None) -> Linearity:
    """Decide which states of ``cell`` are linear; ``updates`` are the state updates with
    named intermediates written out (``Derivation.update_expr``); ``named`` maps such a
    written-out value to its name, for printing only."""
    from .printing import TextPrinter, _time_tables

    names, _ = _time_tables(cell)
    printer = TextPrinter(names)
    state_of = {}
    for n, s in cell.states.items():
        state_of[s.symbol] = n
        state_of[s.prev.symbol] = n
    found: dict[str, LinearState] = {}
    reasons: dict[str, str] = {}
    for name, state in cell.states.items():
        update = updates[name]
        prev = state.prev.symbol
        direction = MatrixSymbol(f"_delta_{name}", *prev.shape)
        # ans = the update written out (not the symbol h), so that a rule such as
        # tanh' = 1 − ans ∘ ans shows its dependence on h(t−1)
        jvp = tangent(update, update, {prev: direction})
        try:
            coefficient = (
                sp.ZeroMatrix(*prev.shape)
                if is_zero(jvp)
                else _diagonal_coefficient(jvp, direction)
            )
        except _NotDiagonal:
            reasons[name] = _not_linear_reason(name, update, prev, printer)
            continue
        if leaves(coefficient) & {prev, direction, state.symbol}:
            reasons[name] = _not_linear_reason(name, update, prev, printer)
            continue
        offset = _at_zero(update, prev)
        reads = sorted(
            {state_of[s] for s in leaves(coefficient) | leaves(offset) if s in state_of} - {name},
            key=list(cell.states).index,
        )
        found[name] = LinearState(name, coefficient, offset, tuple(reads))
    affine = dict(found)
    # scanned before the loop: a linear state that reads only such states
    changed = True
    while changed:
        changed = False
        for name, state in list(found.items()):
            if any(r not in found for r in state.reads):
                del found[name]
                changed = True
    before = _in_order(found, set(), reasons)
    # scanned after the loop: one that reads a state computed step by step, when no state of
    # the loop reads it (the loop then never waits for it)
    reads_of = {
        n: {state_of[s] for s in leaves(updates[n]) if s in state_of} - {n} for n in updates
    }
    later = {n: s for n, s in affine.items() if n not in before and n not in reasons}
    changed = True
    while changed:
        changed = False
        looped = set(cell.states) - set(before) - set(later)
        for name in list(later):
            readers = sorted(q for q in looped if name in reads_of[q])
            if readers:
                del later[name]
                changed = True
                prev = printer.doprint(cell.states[name].prev.symbol)
                bad = [r for r in affine[name].reads if r not in before]
                reasons[name] = (
                    f"{name} is affine in {prev} with a diagonal coefficient, but its "
                    f"coefficient or offset reads {', '.join(bad)}, which is not linear "
                    f"(computed step by step), and {', '.join(readers)} "
                    f"read{'s' if len(readers) == 1 else ''} {name} in turn"
                )
    after = _in_order(later, set(before) | (set(cell.states) - set(later)), reasons)
    reasons = {n: reasons[n] for n in cell.states if n in reasons}
    return Linearity(
        cell, {**before, **after}, reasons, after=tuple(after), named=dict(named or {})
    )


def _in_order(pending: dict, known: set, reasons: dict) -> dict[str, LinearState]:
    """``pending`` ordered so that each state comes after the ones it reads (``known`` are
    computed already); states that read each other across steps get a reason instead."""
    pending = dict(pending)
    ordered: dict[str, LinearState] = {}
    while pending:
        ready = [n for n, s in pending.items() if all(r in ordered or r in known for r in s.reads)]
        if not ready:  # the rest read each other across steps: a coupled, non-diagonal system
            for name in pending:
                others = ", ".join(r for r in pending[name].reads if r in pending)
                reasons[name] = (
                    f"{name} and {others} read each other: together their coefficient is a "
                    "full matrix, not diagonal"
                )
            break
        for name in ready:
            ordered[name] = pending.pop(name)
    return ordered
