"""The scan schedule: the linear states of a cell by parallel scans over t.

For a cell where every state follows h(t) = a(t) ∘ h(t−1) + b(t) with a(t), b(t) free of the
states computed step by step (:mod:`rnnsym.linear`), nothing in the kernel needs a Python loop
over t:

1. forward: a(t) and b(t) for all t at once (matrix products over all T·B rows and elementwise
   functions), then h(1..T) by a parallel scan (``_linear_scan``);
2. outputs, loss and the loss-local adjoints: all t at once, as in the sequential schedule;
3. the adjoint recurrence ∇_{h(t)}L = c(t) + a(t+1) ∘ ∇_{h(t+1)}L, where c(t) is everything
   but the state's own carry (the loss-local part, the adjoints of states that read h(t) or
   h(t−1)): the same scan run backwards (``_linear_scan_reverse``);
4. parameter gradients: one contraction each over T·B, as in the sequential schedule.

States are scanned in the order :class:`~rnnsym.linear.Linearity` gives (each after the states
it reads) and their adjoints in the reverse order. The generator is the sequential one
(:class:`~rnnsym.backends.numpy.KernelGenerator`) with phases 1 and 3 replaced, so the module
around the functions, its argument checks and its comments are the same. A cell with some
linear states and some that are not gets the scans for the linear ones and the sequential
loops for the others, which read the scanned states as sequences.
"""

from __future__ import annotations

import sympy as sp
from sympy import Identity, MatAdd, MatMul, MatrixSymbol

from ..derive import Derivation, adjoint_symbol, backprop
from ..errors import DerivationError
from ..ir.ops import Apply, add, is_zero, postorder
from .numpy import NUMPY, Backend, KernelGenerator, Phase, _gemm_rooted, _key
from .numpy_printer import Assign, Comment, Line

__all__ = [
    "ScanGenerator",
    "generate_scan_module",
    "generator_for",
    "SCHEDULES",
    "choose_schedule",
]

SCHEDULES = ("auto", "scan", "sequential")


def choose_schedule(derivation: Derivation, schedule: str) -> str:
    """``"scan"`` or ``"sequential"`` for ``schedule`` (one of :data:`SCHEDULES`): ``"auto"``
    takes the scan when some state is linear; ``"scan"`` on a cell with no linear state is
    refused with the reasons."""
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(
            f"schedule={schedule!r} is not a schedule; use one of "
            f"{', '.join(repr(s) for s in SCHEDULES)}"
        )
    linearity = derivation.linear_states
    if schedule == "auto":
        return "scan" if linearity.linear else "sequential"
    if schedule == "scan" and not linearity.linear:
        if not derivation.cell.states:
            why = "it has no state (every step is computed at once already)"
        else:
            why = "; ".join(f"{n}: {r}" for n, r in linearity.reasons.items())
        raise DerivationError(
            f"schedule='scan': cell {derivation.cell.name!r} has no linear state, so no part "
            f"of its recurrence is a scan: {why}. Use schedule='sequential' (or 'auto')."
        )
    return schedule


class ScanGenerator(KernelGenerator):
    """The kernel of a cell with linear states: those by parallel scans (phases 1 and 3), the
    others, if any, by the loops over t of the sequential schedule, which read the scanned
    states as sequences (a linear state never reads a state that is not linear)."""

    def __init__(self, derivation: Derivation, backend: Backend = NUMPY):
        super().__init__(derivation, backend)
        self.linearity = self.d.linear_states
        if not self.linearity.linear:  # choose_schedule says why before this point
            raise DerivationError(f"cell {self.cell.name!r}: no state is linear")
        self.scanned = self.linearity.order
        # scanned after the loop over t: linear states that read looped ones (no looped state
        # reads them); before it, the others
        self.after = [n for n in self.scanned if n in self.linearity.after]
        self.before = [n for n in self.scanned if n not in self.linearity.after]
        self.loop_states = [n for n in self.state_order if n not in self.linearity.linear]
        self.state_order = [*self.before, *self.loop_states, *self.after]
        self.all_name = {n: self.all_name[n] for n in self.state_order}
        # the loops read a scanned state s(t) from its sequence, and the adjoint loop the
        # adjoint of a state scanned after the forward loop (its reverse scan runs first)
        self.loop_sequences = {self.cell.states[n].symbol: f"{n}[t]" for n in self.scanned}
        self.loop_adjoints = {
            adjoint_symbol(self.cell.states[n].symbol): f"g_{n}[t]" for n in self.after
        }
        self.scan_lines: list = []

    # ----- phase 1: the forward recurrence, a scan per state -----

    def forward_phase(self, store: bool = False) -> tuple[list, dict]:
        loop_stmts: list = []
        if self.loop_states:  # the states that are not linear: a loop over t, between the scans
            loop_stmts, _ = super().forward_phase(store)
        else:
            self.stored = {}
        seq = self.sequence_names()
        self.coefficient_names: dict = {}
        phase = Phase(self, seq, "v")
        phase.in_place = self.backend.name == "numpy"  # ufuncs with out=, as the loop schedule
        before = self._scans(self.before, phase, store)
        after = self._scans(self.after, phase, store, "after the loop, ")
        # the values computed here for all t (a gate, a(t), b(t)) are read again, not recomputed
        for expr, symbol in phase.bound.items():
            if self.is_batch(expr):
                original = self.original(expr, phase.bound)
                self.hoisted_seq[original] = symbol.name
                self.unhoist[symbol] = original
                self.stored[_key(original)] = symbol
        return [*before, *loop_stmts, *after], seq

    def _scans(self, names: list, phase: Phase, store: bool, when: str = "") -> list:
        """The statements of the forward scans of the states ``names``, in order."""
        if not names:
            return []
        cell = self.cell
        stmts: list = [
            Comment(
                f"forward recurrence, {self.cite(names)}: {', '.join(names)} linear, "
                f"h(t) = a(t) ∘ h(t-1) + b(t), so {when}its states for t = 1..T are a parallel "
                "scan"
            )
        ]
        for n in names:
            state = self.linearity.linear[n]
            a_name = self.namer.fresh(f"coef_{n}")
            b_name = self.namer.fresh(f"offset_{n}")
            comment = self.cite([n])
            phase.stmts.append(Comment(f"coefficient a(t) and offset b(t) of {comment}, all t"))
            targets = []
            if is_zero(state.coefficient):
                a_text = "0.0"
            else:
                targets.append((a_name, state.coefficient, ""))
                a_text = a_name
            targets.append((b_name, state.offset, ""))
            force = set()
            if store:  # the gates and matrix products the backward pass reads: kept for all t
                for node in postorder([e.xreplace(phase.bound) for _, e, _ in targets]):
                    if self.is_batch(node) and (
                        isinstance(node, Apply)
                        or (
                            isinstance(node, (MatAdd, MatMul)) and _gemm_rooted(node, self.is_batch)
                        )
                    ):
                        force.add(node)
            phase.emit(targets, force)
            for name, expr, _ in targets:
                phase.bound[expr] = phase.name(
                    MatrixSymbol(name, *expr.shape), name, self.is_batch(expr)
                )
            stmts.extend(phase.stmts)
            phase.stmts = []
            self.coefficient_names[n] = (a_text, self.is_batch(state.coefficient))
            size = self.size_text(cell.states[n].shape[0])
            all_name = self.all_name[n]
            empty = self.backend.empty(f"(T + 1, B, {size})")
            stmts.append(Line(f"{all_name} = {empty}"))
            scan = f"_linear_scan({a_text}, {b_name}, states[{n!r}], {all_name})"
            stmts.append(Line(f"{all_name} = {scan}  # {comment}"))
            self.helpers.add("_linear_scan")
            stmts.append(Line(f"{n} = {all_name}[1:]", defines=n))
            prev = cell.states[n].prev.name
            stmts.append(Line(f"{prev} = {all_name}[:-1]", defines=prev))
        return stmts

    # ----- phase 3: the adjoint recurrence, a reverse scan per state -----

    def _cross_carry(self, name: str):
        """What step t hands back to h(t−1) through everything but h's own update (states
        that read h(t−1), an output that reads it): zero for most cells."""
        d, cell = self.d, self.cell
        prev = cell.states[name].prev.symbol
        own = cell.states[name].symbol
        terms = []
        for eq in d.forward:
            if eq.lhs == own or prev not in eq.rhs.free_symbols:
                continue
            if isinstance(eq.lhs, MatrixSymbol) and eq.lhs.name == "L":
                g = Identity(1)
            else:
                g = adjoint_symbol(eq.lhs)
            terms.extend(backprop(eq.rhs, eq.lhs, g, {prev}).values())
        return add(*terms) if terms else None

    def backward_phase(self, phase: Phase, local_names: dict, wanted: set) -> dict:
        cell, d = self.cell, self.d
        states = cell.states
        scan_carries = {
            n: self.namer.fresh(f"carry_{n}") for n in d.carry if n in self.linearity.linear
        }
        self.scan_lines = []
        for expr, name in self.hoisted_seq.items():
            phase.bound.setdefault(expr, phase.name(MatrixSymbol(name, *expr.shape), name, True))
        # backwards: the states scanned after the loop first (the loop's states read them), then
        # the loop, then the states scanned before it
        self._reverse_scans(self.after, phase, local_names, scan_carries)
        stored: dict = {}
        loop_carries: dict = {}
        if self.loop_states:
            stored = super().backward_phase(phase, local_names, wanted)
            loop_carries = dict(self.carry_names)
            for n in self.loop_states:  # computed for all t by the loop above
                phase.name(adjoint_symbol(states[n].symbol), f"g_{n}", True)
            for expr, name in self.hoisted_seq.items():
                phase.bound.setdefault(
                    expr, phase.name(MatrixSymbol(name, *expr.shape), name, True)
                )
        self._reverse_scans(self.before, phase, local_names, scan_carries)
        self.carry_names = {**loop_carries, **scan_carries}
        return stored

    def _reverse_scans(self, names: list, phase: Phase, local_names: dict, carries: dict) -> None:
        """The adjoint recurrences of the scanned states ``names``, last first."""
        if not names:
            return
        cell, d = self.cell, self.d
        states = cell.states
        stmts = phase.stmts
        first = len(stmts)
        recurrence = self.cite([f"g_{name}" for name in names])
        stmts.append(
            Comment(
                f"adjoint recurrence, {recurrence}: ∇h(t) = c(t) + a(t+1) ∘ ∇h(t+1), a parallel "
                "scan backwards in t"
            )
        )
        for n in reversed(names):
            shape = states[n].shape
            size = self.size_text(shape[0])
            terms = []
            if n in local_names:
                per_step = self.local_per_step[n]
                local = local_names[n]
                terms.append(phase.name(MatrixSymbol(local, *shape), local, per_step))
            terms.extend(self.loop_local[n])
            cross = self._cross_carry(n)
            c_name = self.namer.fresh(f"c_{n}")
            value = add(*terms) if terms else sp.ZeroMatrix(*shape)
            if is_zero(value) or not self.is_batch(value) or cross is not None:
                # a fresh (T, B, size) array: the cross carry is added into it
                zeros = self.backend.zeros(f"(T, B, {size})")
                stmts.append(Line(f"{c_name} = {zeros}"))
                if not is_zero(value):
                    text = phase.print(self.read_stored(value, phase))
                    stmts.append(Line(f"{c_name} = {c_name} + {text}"))
            else:
                phase.emit([(c_name, self.read_stored(value, phase), "")])
            cross_name = None
            if cross is not None:
                cross_name = self.namer.fresh(f"r_{n}")
                phase.emit([(cross_name, self.read_stored(cross, phase), "")])
                if self.backend.inplace:
                    stmts.append(Line(f"{c_name}[:-1] += {cross_name}[1:]"))
                else:
                    stmts.append(Line(f"{c_name} = {c_name}.at[:-1].add({cross_name}[1:])"))
            a_text, a_batch = self.coefficient_names[n]
            g = f"g_{n}"
            stmts.append(
                Line(
                    f"{g} = _linear_scan_reverse({a_text}, {c_name}, "
                    f"{self.backend.empty_like(n)})  # {self.cite([f'g_{n}'])}"
                )
            )
            self.helpers.add("_linear_scan_reverse")
            self.helpers.add("_linear_scan")
            phase.name(adjoint_symbol(states[n].symbol), g, True)
            if n in d.carry:
                a_first = f"{a_text}[0]" if a_batch else a_text
                carry = f"{a_first} * {g}[0]"
                if cross_name is not None:
                    carry += f" + {cross_name}[0]"
                stmts.append(Line(f"{carries[n]} = {carry}"))
        self.scan_lines += [s for s in stmts[first:] if isinstance(s, (Assign, Line))]

    def _drop_unused_adjoint_sequences(self, phase: Phase, grads: Phase, tail: list) -> None:
        # a looped state's ∇ for all t that only a scanned state's adjoint reads is kept too
        super()._drop_unused_adjoint_sequences(phase, grads, [*tail, *self.scan_lines])


def generator_for(schedule: str) -> type[KernelGenerator]:
    """The lowering of a schedule, ``"scan"`` or ``"sequential"``."""
    return ScanGenerator if schedule == "scan" else KernelGenerator


def generate_scan_module(derivation: Derivation) -> str:
    """The NumPy module of a cell with a linear state, with the scan schedule."""
    return ScanGenerator(derivation).generate()
