"""Forward mode: the gradient by forward sensitivity propagation (real-time recurrent learning).

Alongside each state q(t) the kernel carries its sensitivities ∂q(t)/∂θ to the D entries of the
parameters θ that the state updates use (the recurrent-path parameters), one step at a time:

    ∂q(t)/∂θ = (tangent of q's update)(∂q′(t−1)/∂θ, ∂q″(t)/∂θ of states updated earlier, δθ)

with ∂q(0)/∂θ = 0, since q(0) is given. Over the whole sequence this is the right action of
(𝕀 − 𝔾𝕁_h𝕊)⁻¹ of the slides' bra-ket form, applied one block row at a time. The gradient is
summed as it goes:

    ∇_θ L = Σ_t Σ_q (∂L(t)/∂q(t))ᵀ ∂q(t)/∂θ  (+ the terms of parameters used by the outputs)

where ∂L(t)/∂q(t) is the adjoint through the outputs and the loss of step t only: reverse mode
over the outputs and the loss of one step, with no recurrence backwards in time. Memory does
not depend on T; a step costs about D times as much as the step itself (O(n⁴) for an Elman cell
of size n, where BPTT costs O(n²) per step).

The module docstring lists these equations, numbered (:func:`sensitivity_rows`); the kernel's
comments cite those numbers, and the report's equation number only where a line is that equation.

In code a sensitivity is an array (D, B, size): the printer's row layout (B, size) with one more
leading axis, so that per-step arrays (B, size) broadcast against it. Each parameter owns a block
of the D axis: its entries, row by row, from an offset. The tangent of an update splits by
linearity into the part carried from earlier sensitivities (one product with the Jacobian per
step) and one part per parameter seed, which is zero outside that parameter's block and is added
there in place.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import sympy as sp
from sympy import (
    HadamardProduct,
    Identity,
    MatAdd,
    MatMul,
    MatrixExpr,
    MatrixSymbol,
    Transpose,
    ZeroMatrix,
)

from ..derive import Derivation, adjoint_symbol, backprop
from ..errors import DerivationError
from ..ir.jvp import Seed, param_tangent, seed_terms, tangent
from ..ir.ops import Concat, add, coeff_and_factors, hadamard, is_zero, leaves, mul, postorder
from ..printing import TextPrinter, _time_tables
from .numpy import (
    KernelGenerator,
    Namer,
    Phase,
    _allocates,
    _assemble,
    _indent_doc,
    _is_worth_binding,
    _parent_counts,
    batch_sum,
    cite_lines,
)
from .numpy_printer import Assign, Comment, Function, Line, Loop, RowPrinter, TotalLoss

__all__ = ["Sensitivities", "sensitivities", "TangentPrinter", "generate_forward_module"]


def tangent_symbol(name: str, shape: tuple, prev: bool = False) -> MatrixSymbol:
    """The symbol of ∂q(t)/∂θ (or ∂q(t−1)/∂θ); its name cannot clash with a cell's names."""
    return MatrixSymbol(f"∂{name}{'_prev' if prev else ''}/∂θ", *shape)


@dataclass
class Sensitivities:
    """The forward-mode equations of one step of a cell, intermediates written out.

    ``carried[q] + Σ_P seeded[q][P]`` is ∂q(t)/∂θ: the part from earlier sensitivities and the
    part seeded by each recurrent-path parameter P. ``direct[q]`` (``direct_prev[q]``) is
    ∂L(t)/∂q(t) (∂L(t)/∂q(t−1)) through the outputs and the loss of step t only, in terms of the
    output adjoints; ``output_terms[P]`` is the per-step term of ∇_P L through them.
    """

    derivation: Derivation
    params: list[str]
    varying: list[str]
    symbols: dict[str, MatrixSymbol]
    prev_symbols: dict[str, MatrixSymbol]
    carried: dict[str, MatrixExpr]
    seeded: dict[str, dict[str, MatrixExpr]]
    output_adjoints: dict[str, MatrixExpr]
    direct: dict[str, MatrixExpr]
    direct_prev: dict[str, MatrixExpr]
    output_terms: dict[str, MatrixExpr]
    display: list[tuple[str, MatrixExpr]] = field(default_factory=list)

    def blocks(self) -> dict[str, tuple[sp.Expr, sp.Expr]]:
        """The rows [start, stop) of the D axis that hold each recurrent-path parameter."""
        out, start = {}, sp.S.Zero
        for name in self.params:
            rows, cols = self.derivation.cell.params[name].symbol.shape
            out[name] = (start, start + rows * cols)
            start = start + rows * cols
        return out

    @property
    def size(self) -> sp.Expr:
        """D, the number of recurrent-path parameter entries."""
        blocks = self.blocks()
        return blocks[self.params[-1]][1] if self.params else sp.S.Zero


def _varying(order: list[tuple[str, MatrixSymbol, MatrixExpr]], sources: set) -> set[str]:
    """The names whose value depends on ``sources`` (parameters, earlier sensitivities)."""
    found: set[str] = set()
    symbols = set(sources)
    for name, symbol, expr in order:
        if leaves(expr) & symbols:
            found.add(name)
            symbols.add(symbol)
    return found


def _distribute(expr: MatrixExpr, params: set) -> MatrixExpr:
    """``expr`` with every matrix product over a sum that holds a parameter multiplied out:
    (P1 − P2) x = P1 x − P2 x, so each parameter is a factor of a product with a vector.

    The sum is built as a plain ``MatAdd``: :func:`~rnnsym.ir.ops.add` would factor it again.
    """
    if isinstance(expr, MatrixSymbol) or not (leaves(expr) & params):
        return expr
    args = [_distribute(a, params) if isinstance(a, MatrixExpr) else a for a in expr.args]
    if isinstance(expr, MatMul):
        coeff, factors = coeff_and_factors(mul(*args))
        products = [[]]
        for factor in factors:
            terms = (
                factor.args if isinstance(factor, MatAdd) and leaves(factor) & params else [factor]
            )
            products = [p + [term] for p in products for term in terms]
        if len(products) == 1:
            return mul(coeff, *products[0])
        return MatAdd(*[mul(coeff, *p) for p in products])
    if isinstance(expr, MatAdd):
        flat = []
        for a in args:
            flat.extend(a.args if isinstance(a, MatAdd) else [a])
        return MatAdd(*flat)
    return expr.func(*args)


def sensitivities(derivation: Derivation) -> Sensitivities:
    """Derive the forward-mode (RTRL) equations of a cell's step."""
    cell = derivation.cell
    states = cell.states
    order = list(cell.updates)
    updates = {n: derivation.update_expr(n) for n in order}
    used = set().union(*(leaves(e) for e in updates.values()))
    params = [n for n, p in cell.params.items() if p.symbol in used]
    param_symbols = {cell.params[p].symbol for p in params}
    # (P1 − P2) x and (A B + C D) v, as the sums of P v products that seeding needs
    updates = {n: _distribute(e, param_symbols) for n, e in updates.items()}

    # a state varies if its update uses a parameter, or a state that varies (at t − 1 or t)
    varying: set[str] = set()
    while True:
        sources = param_symbols | {states[s].prev.symbol for s in varying}
        found = _varying([(n, states[n].symbol, updates[n]) for n in order], sources)
        if found == varying:
            break
        varying = found
    ordered = [n for n in order if n in varying]
    symbols = {n: tangent_symbol(n, states[n].shape) for n in ordered}
    prev_symbols = {n: tangent_symbol(n, states[n].shape, prev=True) for n in ordered}

    carried, seeded = {}, {}
    for n in ordered:
        ans = states[n].symbol
        leaf = {states[s].prev.symbol: prev_symbols[s] for s in ordered}
        leaf |= {states[s].symbol: symbols[s] for s in ordered}
        try:
            carried[n] = tangent(updates[n], ans, leaf)
            seeded[n] = {}
            for p in params:
                symbol = cell.params[p].symbol
                part = tangent(updates[n], ans, {symbol: param_tangent(symbol)})
                if not is_zero(part):
                    seeded[n][p] = part
        except DerivationError as exc:
            raise DerivationError(f"update of {n} = {sp.sstr(updates[n])}: {exc}") from None

    output_adjoints, direct, direct_prev, output_terms = _step_adjoints(derivation)
    sens = Sensitivities(
        derivation=derivation,
        params=params,
        varying=ordered,
        symbols=symbols,
        prev_symbols=prev_symbols,
        carried=carried,
        seeded=seeded,
        output_adjoints=output_adjoints,
        direct={n: direct[n] for n in ordered if n in direct},
        direct_prev={n: direct_prev[n] for n in ordered if n in direct_prev},
        output_terms=output_terms,
    )
    sens.display = _display(sens)
    return sens


def _step_adjoints(derivation: Derivation) -> tuple[dict, dict, dict, dict]:
    """Reverse mode over the outputs and the loss of one step only.

    Returns the output adjoints (in the order they are computed), ∂L(t)/∂q(t) and ∂L(t)/∂q(t−1)
    of the states, and the per-step gradient terms of the parameters, all through the outputs
    and the loss of step t alone.
    """
    cell = derivation.cell
    loss_symbol = MatrixSymbol("L", 1, 1)
    eqs = [(cell.outputs[n].symbol, derivation.output_expr(n)) for n in cell.output_defs]
    eqs.append((loss_symbol, derivation.loss_expr))
    states = cell.states.values()
    differentiable = {symbol for symbol, _ in eqs}
    differentiable |= {s.symbol for s in states} | {s.prev.symbol for s in states}
    differentiable |= {p.symbol for p in cell.params.values()}
    pending: dict[MatrixSymbol, list[MatrixExpr]] = {}
    output_adjoints: dict[str, MatrixExpr] = {}
    for symbol, expr in reversed(eqs):
        if symbol == loss_symbol:
            g = Identity(1)
        else:
            parts = pending.pop(symbol, [])
            if not parts:
                continue  # an output the loss does not use
            output_adjoints[cell.variable(symbol).name] = add(*parts)
            g = adjoint_symbol(symbol)
        for leaf, ct in backprop(expr, symbol, g, differentiable).items():
            pending.setdefault(leaf, []).append(ct)

    def total(symbol) -> MatrixExpr | None:
        value = add(*pending[symbol]) if symbol in pending else None
        return None if value is None or is_zero(value) else value

    direct = {n: total(s.symbol) for n, s in cell.states.items()}
    direct_prev = {n: total(s.prev.symbol) for n, s in cell.states.items()}
    terms = {n: total(p.symbol) for n, p in cell.params.items()}
    return (
        output_adjoints,
        {n: e for n, e in direct.items() if e is not None},
        {n: e for n, e in direct_prev.items() if e is not None},
        {n: e for n, e in terms.items() if e is not None},
    )


def _display(sens: Sensitivities) -> list[tuple[str, MatrixExpr]]:
    """∂q(t)/∂θ for every named quantity of the step that varies, intermediates kept by name."""
    cell = sens.derivation.cell
    leaf = {cell.params[p].symbol: param_tangent(cell.params[p].symbol) for p in sens.params}
    leaf |= {cell.states[n].prev.symbol: sens.prev_symbols[n] for n in sens.varying}
    rows = []
    for kind, name in cell.order:
        var = cell._vars[name]
        params = {cell.params[p].symbol for p in sens.params}
        value = tangent(_distribute(cell.step_term(kind, name).expr, params), var.symbol, leaf)
        if is_zero(value):
            continue
        leaf[var.symbol] = (
            sens.symbols[name] if name in sens.symbols else tangent_symbol(name, var.shape)
        )
        rows.append((name, value))
    return rows


# ----- printing -----


def _bindable(node) -> bool:
    """Whether a subexpression is worth an array of its own: a vector, not a name or a constant.

    (Rows uᵀ of the row layout print only inside their product uᵀ v.)
    """
    if isinstance(node, (MatrixSymbol, ZeroMatrix, Identity)) or node.shape[1] != 1:
        return False
    return _is_worth_binding(node)


def _is_seed(expr) -> bool:
    return isinstance(expr, Seed)


def _has_seed(expr) -> bool:
    return any(isinstance(node, Seed) for node in sp.preorder_traversal(expr))


class TangentPrinter(RowPrinter):
    """RowPrinter for expressions with sensitivities: arrays (D, B, size), seeds via ``_add_seed``.

    ``tangents`` holds the symbols of sensitivity arrays; their matrix products go through
    ``_mm`` (one 2-D product for all D·B rows).
    """

    def __init__(self, names, batch, sequence=False, tangents=frozenset()):
        super().__init__(names, batch, sequence)
        self.tangents = tangents

    def is_tangent(self, expr) -> bool:
        return bool(leaves(expr) & self.tangents) or _has_seed(expr)

    def is_batch(self, expr) -> bool:
        return super().is_batch(expr) or self.is_tangent(expr)

    def _print_MatMul(self, expr) -> str:
        coeff, factors = coeff_and_factors(expr)
        for i, u in enumerate(factors[:-1] if len(factors) > 2 else ()):
            if isinstance(u, Transpose) and u.shape[0] == 1:
                # a per-row number uᵀ w inside a longer product (a tangent of logsumexp):
                # A (uᵀ w) B = (uᵀ w) (A B)
                rest = mul(coeff, *factors[:i], *factors[i + 2 :])
                return f"{self.paren(rest)} * {self._print(mul(u, factors[i + 1]))}"
        if self.sequence or not self.is_tangent(expr):
            return super()._print_MatMul(expr)
        self.sequence = True
        try:
            return super()._print_MatMul(expr)
        finally:
            self.sequence = False

    def _print_Seed(self, expr: Seed) -> str:
        # the seed on its parameter's block of the D axis only
        param, r, z, start, stop = expr.args
        rows, cols = param.shape
        self.used_helpers.add("_add_seed")
        block = (
            f"np.zeros(({self._index(rows * cols)}, B, {self._index(stop - start)}), dtype=dtype)"
        )
        return f"_add_seed({block}, {self._print(z)}, {self._print(r)}, {self._index(start)})"


class TangentPhase(Phase):
    """The statements of one step: per-step arrays (B, size) and sensitivities (D, B, size)."""

    def print(self, expr: MatrixExpr) -> str:
        printer = TangentPrinter(self.names, self.gen.batch, self.sequence, self.gen.tangents)
        text = printer.doprint(expr)
        self.gen.helpers |= printer.used_helpers
        return text

    def bind(self, node: MatrixExpr, name: str, comment: str = "") -> MatrixSymbol:
        symbol = super().bind(node, name, comment)
        if self.gen.is_tangent(node):
            self.gen.tangents.add(symbol)
        return symbol

    def assign(self, name: str, expr: MatrixExpr, comment: str = "") -> None:
        expr = expr.xreplace(self.bound)
        if not self.gen.is_tangent(expr):
            super().assign(name, expr, comment)
            return
        coeff, factors = coeff_and_factors(expr)
        body = factors[0] if len(factors) == 1 else None
        if isinstance(body, HadamardProduct):
            # per-step factors times one new sensitivity array: scaled in place
            varying = [a for a in body.args if self.gen.is_tangent(a)]
            others = [a for a in body.args if not self.gen.is_tangent(a)]
            if len(varying) == 1 and _allocates(varying[0]) and others:
                self.values[name] = expr
                self.stmts.append(Assign(name, self.print(varying[0]), comment))
                self.stmts.append(Line(f"{name} *= {self.print(mul(coeff, hadamard(*others)))}"))
                return
        # a sum of sensitivities: one new array, the other terms added in place
        self.sequence = True
        try:
            super().assign(name, expr, comment)
        finally:
            self.sequence = False


def _merged_seeds(expr: MatrixExpr) -> tuple[list[Seed], MatrixExpr | None]:
    """The seeds among the terms of ``expr`` (one per parameter row range) and the rest."""
    seeds, others = seed_terms(expr)
    merged: dict[tuple, list[MatrixExpr]] = {}
    for coeff, seed in seeds:
        param, r, z, start, stop = seed.args
        merged.setdefault((param, r, start, stop), []).append(mul(coeff, z))
    out = [Seed(param, r, add(*zs), start, stop) for (param, r, start, stop), zs in merged.items()]
    return [s for s in out if not is_zero(s.args[2])], (add(*others) if others else None)


class ForwardModeGenerator(KernelGenerator):
    """Builds the forward-mode (RTRL) kernel module of one derivation."""

    def __init__(self, derivation: Derivation):
        super().__init__(derivation)
        self.s = sensitivities(derivation)
        rows = sensitivity_rows(self.s)
        numbers = {row[0]: i for i, row in enumerate(rows, 1)}
        labels = {row[0]: row[4] for row in rows}
        # the comments cite the numbered equations of this module's docstring
        self.cite = functools.partial(cite_lines, numbers, labels)
        self.tangents: set = set(self.s.symbols.values()) | set(self.s.prev_symbols.values())
        self.batch |= self.tangents

    def is_tangent(self, expr) -> bool:
        return bool(leaves(expr) & self.tangents) or _has_seed(expr)

    def is_batch(self, expr) -> bool:
        return super().is_batch(expr) or self.is_tangent(expr)

    # ----- shared subexpressions over the whole step -----

    def _substituted(self, phase: Phase, expr: MatrixExpr) -> MatrixExpr:
        """``expr`` with every temporary bound so far used, to a fixed point."""
        while True:
            new = expr.xreplace(phase.bound)
            if new == expr:
                return expr
            expr = new

    def prebind(self, phase: Phase, exprs: list, assigned: int = 0) -> list:
        """Bind the subexpressions of ``exprs`` that the step uses more than once.

        The first ``assigned`` expressions are assigned to names of their own by the caller, so
        they are not bound themselves.
        """
        roots = [self._substituted(phase, e) for e in exprs]
        shared = {self._substituted(phase, e) for e in self.shared}
        counts = _parent_counts(roots)
        kept = set(roots[:assigned])
        order = postorder(roots)
        # the zero block of [a; 0] is printed shaped like a: a is computed once, by name
        padded = {
            part
            for node in order
            if isinstance(node, Concat) and any(isinstance(a, ZeroMatrix) for a in node.args)
            for part in node.args
        }
        for node in order:
            if not _bindable(node) or node in kept:
                continue
            # a seed inside a product is a block array of its own: named, for readability
            if node in shared or node in padded or counts.get(node, 0) >= 2 or _is_seed(node):
                # bound in its fully substituted form too, which later pieces reach
                value = self._substituted(phase, node)
                phase.bound[node] = phase.bind(value, self.namer.numbered(phase.temp_prefix))
        return [self._substituted(phase, r) for r in roots]

    # ----- the loss and gradient function -----

    def sensitivity_body(self) -> list:
        cell, s = self.cell, self.s
        fresh = self.namer.fresh
        states = cell.states
        blocks = s.blocks()
        at = {p: fresh(f"at_{p}") for p in s.params}
        D, grad = fresh("D"), fresh("grad")
        S = {n: fresh(f"S_{n}") for n in s.varying}
        S_prev = {n: fresh(f"S_{n}_prev") for n in s.varying}
        out_t = {o: fresh(f"{o}_t") for o in cell.output_defs}
        prev_t, step_t = self.prev_step_name, self.step_name
        size = {n: self.size_text(states[n].shape[0]) for n in states}

        # pieces of the step, to find what is used more than once
        seeds = {n: {p: _merged_seeds(e) for p, e in s.seeded[n].items()} for n in s.varying}
        terms = {p: batch_sum(t, self.is_batch) for p, t in s.output_terms.items()}
        pieces = [self.d.update_expr(n) for n in states]
        for n in s.varying:
            pieces.append(s.carried[n])
            for top, rest in seeds[n].values():
                pieces.extend(x for seed in top for x in seed.args[1:3])
                pieces.extend([rest] if rest is not None else [])
        pieces += [self.d.output_expr(o) for o in cell.output_defs]
        pieces += list(s.output_adjoints.values()) + [TotalLoss(self.d.loss_expr)]
        pieces += [*s.direct.values(), *s.direct_prev.values(), *terms.values()]
        self.shared = {
            node for node, count in _parent_counts(pieces).items() if count >= 2 and _bindable(node)
        }

        stmts: list = []

        # the builtin slice, or np.s_ where the cell names something slice
        def slice_of(start, stop) -> str:
            start, stop = sp.pycode(start), sp.pycode(stop)
            if "slice" in self.user_names:
                return f"np.s_[{start}:{stop}]"
            return f"slice({start}, {stop})"

        if s.params:
            stmts.append(
                Comment(
                    "the D entries of the parameters the state updates use, row by row: "
                    "each parameter's block"
                )
            )
            for p in s.params:
                start, stop = blocks[p]
                stmts.append(Line(f"{at[p]} = {slice_of(start, stop)}"))
            stmts.append(Line(f"{D} = {sp.pycode(s.size)}"))
            stmts.append(Line(f"{grad} = np.zeros({D}, dtype=dtype)"))
        for p in terms:
            stmts.append(Line(f"g_{p} = np.zeros_like({p})"))
        stmts.append(Line("loss = dtype.type(0)"))
        for n in states:
            stmts.append(Line(f"{prev_t[n]} = states[{n!r}]", defines=prev_t[n]))
        for n in s.varying:
            zeros = f"np.zeros(({D}, B, {size[n]}), dtype=dtype)"
            comment = f"∂{n}(0)/∂θ = 0: {n}(0) is given"
            stmts.append(Line(f"{S_prev[n]} = {zeros}  # {comment}", defines=S_prev[n]))

        names = {p.symbol: n for n, p in cell.params.items()}
        phase = TangentPhase(self, names, "a", sequence=False)
        for var in [*cell.inputs.values(), *cell.targets.values()]:
            phase.names[var.symbol] = f"{var.name}[t]"
        for n, state in states.items():
            phase.names[state.prev.symbol] = prev_t[n]
        for n in s.varying:
            phase.name(s.prev_symbols[n], S_prev[n], True)
        body = phase.stmts

        for n in self.state_order:  # a later update may use a state updated earlier
            state = states[n]
            (update,) = self.prebind(phase, [self.d.update_expr(n)], assigned=1)
            if self.is_batch(update):
                phase.assign(step_t[n], update, self.cite([n]))
            else:  # free of the data and of the past: one value for every row
                value = f"np.broadcast_to({phase.print(update)}, (B, {size[n]}))"
                body.append(Line(f"{step_t[n]} = {value}  # {self.cite([n])}"))
            phase.name(state.symbol, step_t[n], True)
            if n not in s.varying:
                continue
            body.append(
                Comment(
                    f"∂{n}(t)/∂θ, {self.cite([f'∂{n}'])}: the right action of (𝕀 − 𝔾𝕁_h𝕊)⁻¹ "
                    f"(the slides), one step"
                )
            )
            exprs = [s.carried[n]]
            for top, rest in seeds[n].values():
                exprs.extend(x for seed in top for x in seed.args[1:3])
                exprs.append(rest if rest is not None else ZeroMatrix(1, 1))
            carried, *parts = self.prebind(phase, exprs, assigned=1)
            if is_zero(carried):
                body.append(Line(f"{S[n]} = np.zeros(({D}, B, {size[n]}), dtype=dtype)"))
            elif not _allocates(carried) or carried in phase.bound.values():
                body.append(Line(f"{S[n]} = {phase.print(carried)}.copy()"))
            else:
                phase.assign(S[n], carried, "carried from the sensitivities of step t - 1")
            for p, (top, rest) in seeds[n].items():
                for seed in top:
                    r, z = parts.pop(0), parts.pop(0)
                    self.helpers.add("_add_seed")
                    body.append(
                        Line(
                            f"_add_seed({S[n]}[{at[p]}], {phase.print(z)}, {phase.print(r)}, "
                            f"{sp.pycode(seed.args[3])})  # seeded by {p}"
                        )
                    )
                rest = parts.pop(0)
                if not is_zero(rest):
                    body.append(Line(f"{S[n]}[{at[p]}] += {phase.print(rest)}  # seeded by {p}"))
            phase.name(s.symbols[n], S[n], True)

        step_lines = self.cite([*cell.output_defs, "L", *(f"g_{o}" for o in s.output_adjoints)])
        body.append(Comment(f"outputs and the loss of step t, {step_lines}"))
        for o, var in cell.outputs.items():
            (expr,) = self.prebind(phase, [self.d.output_expr(o)], assigned=1)
            phase.assign(out_t[o], expr)
            phase.name(var.symbol, out_t[o], True)
        for o, expr in s.output_adjoints.items():
            (expr,) = self.prebind(phase, [expr], assigned=1)
            name = f"g_{o}"
            comment = f"gradient w.r.t. {o}(t), {self.cite([name])}"
            if _is_worth_binding(expr):
                phase.bind(expr, name, comment)
            else:
                phase.assign(name, expr, comment)
            phase.name(adjoint_symbol(cell.outputs[o].symbol), name, True)
        (loss,) = self.prebind(phase, [TotalLoss(self.d.loss_expr)])
        body.append(Line(f"loss += {phase.print(loss)}"))

        if s.direct or s.direct_prev:
            body.append(
                Comment(
                    "the gradient through the sensitivities: ∂L(t)/∂q weighs ∂q/∂θ, the "
                    "adjoint through\nthe outputs and the loss of step t only (nothing "
                    "flows back in time), "
                    + self.cite(
                        [*(f"∂L/∂{n}" for n in s.direct), *(f"∂L/∂{n}_prev" for n in s.direct_prev)]
                        + ["∇θ"]
                    )
                )
            )
        adjoints = [(S[n], e) for n, e in s.direct.items()]
        adjoints += [(S_prev[n], e) for n, e in s.direct_prev.items()]
        values = self.prebind(phase, [e for _, e in adjoints])
        for (array, _), value in zip(adjoints, values, strict=True):
            text = phase.print(value)
            if not self.is_batch(value):  # a parameter-only adjoint (a linear loss dᵀh)
                text = f"np.broadcast_to({text}, {array}.shape[1:])"
            body.append(Line(f"{grad} += np.tensordot({array}, {text}, axes=2)"))
        if terms:
            body.append(
                Comment(
                    "the terms of step t of the parameters the outputs use, "
                    + self.cite(list(terms))
                )
            )
        values = self.prebind(phase, list(terms.values()))
        for p, value in zip(terms, values, strict=True):
            body.append(Line(f"g_{p} += {phase.print(value)}  # {self.cite([p])}"))

        # the values of step t are those of t - 1 in the next step, where it reads them
        printed = RowPrinter({}, self.batch).doprint(Loop("t", "range(T)", tuple(body)))
        for n in states:
            if re.search(rf"\b{prev_t[n]}\b", printed):
                body.append(Line(f"{prev_t[n]} = {step_t[n]}"))
        for n in s.varying:
            if re.search(rf"\b{S_prev[n]}\b", printed):
                body.append(Line(f"{S_prev[n]} = {S[n]}"))
        stmts.append(Loop("t", "range(T)", tuple(body)))

        if s.params:
            stmts.append(Comment("each parameter's gradient: its block of D and its output terms"))
        for p in cell.params:
            if p in at:
                flat = f"{grad}[{at[p]}].reshape({p}.shape)"
                stmts.append(Line(f"g_{p} {'+' if p in terms else ''}= {flat}"))
        grads = ", ".join(f"{p!r}: g_{p}" for p in cell.params)
        stmts.append(Line(f"return loss, {{{grads}}}"))
        return stmts

    # ----- the whole module -----

    def generate(self) -> str:
        cell = self.cell
        base_names = set(self.namer.taken)
        fwd_stmts, seq = self.forward_phase()
        out = self.output_phase(seq)
        result = ", ".join(f"{n!r}: {n}" for n in [*cell.states, *cell.outputs])
        forward_body = [*fwd_stmts, *out.stmts, Line(f"return {{{result}}}")]
        self.namer = Namer(base_names)  # each function is its own namespace
        return self.module(forward_body, self.sensitivity_body())

    def module(self, forward_body: list, grad_body: list) -> str:
        cell = self.cell
        first_input = next(iter(cell.inputs))
        header = [
            Line(f"T, B = inputs[{first_input!r}].shape[:2]"),
            Line(f"dtype = inputs[{first_input!r}].dtype"),
            *[Line(f"{n} = sizes[{n!r}]", defines=n) for n in sorted(cell._dims)],
        ]

        def unpack(groups) -> list:
            return [Line(f"{n} = {group}[{n!r}]") for group, names in groups for n in names]

        keys = [row[0] for row in sensitivity_rows(self.s)]
        forward_keys = [e.key for e in self.display.forward if e.key != "L"]
        other_keys = ["L"] + keys[len(forward_keys) + 1 :]

        fwd = Function(
            "_forward",
            ("params", "inputs", "states", "sizes"),
            f"States and outputs for all t, {self.cite(forward_keys)}.",
            tuple(
                unpack([("params", cell.params), ("inputs", cell.inputs)]) + header + forward_body
            ),
        )
        grad = Function(
            "_loss_and_grad",
            ("params", "inputs", "targets", "states", "sizes"),
            f"Loss and its gradient by forward sensitivity propagation, one step at a time, "
            f"{self.cite(other_keys)}.",
            tuple(
                unpack(
                    [("params", cell.params), ("inputs", cell.inputs), ("targets", cell.targets)]
                )
                + header
                + grad_body
            ),
        )
        printer = RowPrinter({}, self.batch)
        about = sensitivity_text(self.s)
        return _assemble(
            self, printer.doprint(fwd), printer.doprint(grad), self.helpers, about=about
        )


# ----- the equations as text, for the module docstring -----


class _SensitivityText(TextPrinter):
    """TextPrinter that brackets sensitivities, ∂a/∂θ: (∂a⁽ᵗ⁾/∂θ)[0:n]."""

    def _paren(self, expr) -> str:
        text = super()._paren(expr)
        if isinstance(expr, MatrixSymbol) and "/" in text:
            return f"({text})"
        return text


def sensitivity_rows(sens: Sensitivities) -> list[tuple[str, str, str, str, str]]:
    """The forward-mode equations in order, numbered by position (1-based) in this list:
    ``(key, section, left side, right side, report label)`` as readable Unicode text.

    Keys: a forward line's :attr:`~rnnsym.derive.Equation.key`; ``"∂q"`` for ∂q(t)/∂θ;
    ``"g_o"`` for ∇_{o(t)}L; ``"∂L/∂q"`` and ``"∂L/∂q_prev"`` for the adjoints of step t;
    ``"∇θ"`` for the sum over the sensitivities; a parameter's name for its output terms.
    """
    from ..labels import same_expression

    derivation = sens.derivation
    cell = derivation.cell
    names, _ = _time_tables(cell)
    for name, var in cell._vars.items():
        timed = names.get(name, name)
        names[f"∂{name}/∂θ"] = f"∂{timed}/∂θ"
        if var.kind == "state":
            names[f"∂{name}_prev/∂θ"] = f"∂{names[var.prev.name]}/∂θ"
    printer = _SensitivityText(names)
    params = ", ".join(sens.params)
    rows: list[tuple[str, str, str, str, str]] = []
    for eq in derivation.forward:
        rows.append((eq.key, "forward", printer.doprint(eq.lhs), printer.doprint(eq.rhs), eq.label))
    for name, value in sens.display:
        rows.append((f"∂{name}", "sensitivity", f"∂{names[name]}/∂θ", printer.doprint(value), ""))
    for o, expr in sens.output_adjoints.items():
        # ∇_{o(t)}L, the same line as the derivation's (which has no report number)
        rows.append((f"g_{o}", "gradient", f"∇_{{{names[o]}}}L", printer.doprint(expr), ""))
    for n, expr in sens.direct.items():
        rows.append((f"∂L/∂{n}", "gradient", f"∂L⁽ᵗ⁾/∂{names[n]}", printer.doprint(expr), ""))
    for n, expr in sens.direct_prev.items():
        prev = names[cell.states[n].prev.name]
        rows.append((f"∂L/∂{n}_prev", "gradient", f"∂L⁽ᵗ⁾/∂{prev}", printer.doprint(expr), ""))
    if sens.params:
        weighted = [f"(∂L⁽ᵗ⁾/∂{names[n]})ᵀ ∂{names[n]}/∂θ" for n in sens.direct]
        weighted += [
            f"(∂L⁽ᵗ⁾/∂{names[cell.states[n].prev.name]})ᵀ ∂{names[cell.states[n].prev.name]}/∂θ"
            for n in sens.direct_prev
        ]
        total = " + ".join(weighted) if weighted else "0"
        rows.append(("∇θ", "gradient", "∇_θ L", f"Σ_t {total}  (θ = {params})", ""))
    for p, expr in sens.output_terms.items():
        extra = " (added to its part of ∇_θ L)" if p in sens.params else ""
        # the whole gradient of a parameter only the outputs use: the report's number where
        # the derivation's line for it is that equation and this line is the same expression
        label = ""
        if not extra and derivation.labels.get(p):
            whole = derivation.inline(derivation.param_terms[p])
            if same_expression(derivation.inline(expr), whole):
                label = derivation.labels[p]
        rows.append((p, "gradient", f"∇_{p} L", f"Σ_t {printer.doprint(expr)}{extra}", label))
    return rows


def sensitivity_text(sens: Sensitivities) -> str:
    """The forward-mode equations a kernel implements, numbered, as readable Unicode text."""
    cell = sens.derivation.cell
    rows = sensitivity_rows(sens)
    titles = {
        "forward": "Forward step, t = 1..T (h(0) given, zero by default)",
        "sensitivity": (
            "Sensitivities, t = 1..T, zero at t = 0: the right action of (𝕀 − 𝔾𝕁_h𝕊)⁻¹, "
            "the slides' form\n(δP: the variation of P along each of its entries)"
        ),
        "gradient": (
            "Gradient, summed over t and the batch; ∂L⁽ᵗ⁾/∂q only through the outputs and the "
            "loss of step t"
        ),
    }
    width = max(len(left) for _, _, left, _, _ in rows)
    tag_width = len(f"({len(rows)})")
    lines = [f"Cell {cell.name!r}"]
    section = None
    for i, (_, sect, left, right, label) in enumerate(rows, 1):
        if sect != section:
            lines += ["", titles[sect]]
            section = sect
        tag = f"    [report {label}]" if label else ""
        lines.append(f"  {f'({i})'.rjust(tag_width)} {left.rjust(width)} = {right}{tag}")
    intro = (
        "Forward mode (real-time recurrent learning): loss_and_grad carries the sensitivities of "
        "the\nstates to the D entries of the parameters that the updates use, one step at a "
        "time, and adds\ntheir part of the gradient as it goes: its memory does not grow with "
        "T. The equations it\nimplements, numbered as the comments below cite them (in "
        "brackets: the equation of the report\nafter Goodfellow, Bengio & Courville, Deep "
        "Learning, MIT Press 2016, ch. 10, that a line is;\nthe sensitivities follow the "
        "slides' bra-ket form):\n\n"
    )
    return f"{intro}{_indent_doc(chr(10).join(lines))}\n"


def generate_forward_module(derivation: Derivation) -> str:
    """The source of the forward-mode kernel module of a derived cell."""
    return ForwardModeGenerator(derivation).generate()  # checked by check_namespace
