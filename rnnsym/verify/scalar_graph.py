"""The node-by-node scalar oracle: exact local derivatives, chained at high precision.

A cell (or a composed model) unrolled over T steps is a graph whose nodes are the named
quantities of each step: the states h(t), the intermediates of ``cell.define``, the outputs and
the per-step losses L(t), plus the parameters, inputs, targets and initial states they read.
Each node is a function of its *direct* inputs only (h(t) = tanh(b + W h(t−1) + U x(t)), with
h(t−1) a node of its own, not written out); each equation is cut further at its elementwise
functions, softmax and log-sum-exp, whose argument and value get nodes of their own, so every
local expression stays small. For every such equation of the step, at concrete sizes, this
module

1. writes its entries as scalar SymPy expressions in the scalar entries of its direct inputs
   (activations by their scalar definition ``Activation.scalar``, never their ``derivative``);
2. differentiates each entry with ``sympy.diff`` with respect to each entry it depends on:
   the local Jacobian, exact;
3. compiles values and local Jacobian once per equation with ``lambdify`` to mpmath.

The forward pass then runs in mpmath at high precision, and the adjoints are accumulated in
reverse over the unrolled graph with the plain chain rule: adj(input) += Σ_k adj(out)_k ·
∂out_k/∂input. Nothing of rnnsym's derivation (``rules.py``, ``jvp.py``, the activations'
``derivative``) is used: only the cell's forward definition and SymPy's own ``diff``. The only
error is mpmath's rounding at the working precision (``digits`` + 20), far below the digits
compared. The cost grows linearly in T, unlike ``sympy.diff`` of the whole unrolled loss.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import mpmath
import sympy as sp
from sympy import ImmutableMatrix, MatrixSymbol

from ..cell import Cell
from ..ir.explicit import explicit
from ..ir.ops import Apply, LogSumExp, Softmax, leaves, postorder

__all__ = ["LocalStep", "compile_cell_steps", "ScalarGraph", "GUARD_DIGITS"]

# extra working digits of the mpmath evaluation beyond those reported
GUARD_DIGITS = 20

Key = Hashable


@dataclass
class LocalStep:
    """One named equation of a cell at concrete sizes, compiled to mpmath.

    ``name`` is the quantity it defines (``"L"`` for the per-step loss), ``leaves`` the
    concrete matrix symbols of its direct inputs in a fixed order; ``function(*entries)``
    takes the entries of the leaves (row by row, leaf after leaf) and returns the ``size``
    entries of the result followed by the nonzero local partial derivatives, one per
    ``pairs`` item ``(result entry, leaf number, entry of the leaf)``.
    """

    name: str
    kind: str
    symbol: MatrixSymbol
    size: int
    leaves: list[MatrixSymbol]
    pairs: list[tuple[int, int, int]]
    function: object


def _entry_symbols(symbol: MatrixSymbol) -> ImmutableMatrix:
    rows, cols = (int(s) for s in symbol.shape)
    return ImmutableMatrix(rows, cols, lambda i, j: sp.Symbol(f"{symbol.name}__{i}_{j}", real=True))


def _compile(name: str, kind: str, symbol: MatrixSymbol, expr, dims: dict) -> LocalStep:

    concrete = sorted((leaf.xreplace(dims) for leaf in leaves(expr)), key=lambda s: s.name)
    env = {leaf: _entry_symbols(leaf) for leaf in concrete}
    value = explicit(expr, dims, env)
    position = {}
    for number, leaf in enumerate(concrete):
        for at, s in enumerate(env[leaf]):
            position[s] = (number, at)
    entries = list(value)
    partials, pairs = [], []
    for k, entry in enumerate(entries):
        entry = sp.sympify(entry)
        for s in sorted(entry.free_symbols & set(position), key=lambda s: s.name):
            partial = sp.diff(entry, s)
            if partial != 0:
                partials.append(partial)
                pairs.append((k, *position[s]))
    arguments = [s for leaf in concrete for s in env[leaf]]
    function = sp.lambdify(arguments, [*entries, *partials], modules="mpmath", cse=True)
    return LocalStep(name, kind, symbol.xreplace(dims), len(entries), concrete, pairs, function)


def _split(name: str, symbol: MatrixSymbol, expr) -> list[tuple[str, MatrixSymbol, object]]:
    """One named equation as a chain of smaller ones: every elementwise function, softmax and
    log-sum-exp gets a node of its own for its argument and one for its value, so each local
    expression stays small (a sum of products, or one function of one entry) and its
    ``sympy.diff`` cheap however many gates the user wrote inline. Returns
    ``(name, symbol, expr)`` of the pieces in evaluation order, the equation itself last."""
    pieces = []
    replaced: dict = {}
    for node in postorder([expr]):
        if not isinstance(node, (Apply, Softmax, LogSumExp)):
            continue
        current = node.xreplace(replaced)
        arg = current.args[-1]
        if not isinstance(arg, MatrixSymbol):
            inner = MatrixSymbol(f"_{name}_{len(pieces)}", *arg.shape)
            pieces.append((inner.name, inner, arg))
            current = current.xreplace({arg: inner})
        value = MatrixSymbol(f"_{name}_{len(pieces)}", *current.shape)
        pieces.append((value.name, value, current))
        replaced[node] = value
    pieces.append((name, symbol, expr.xreplace(replaced)))
    return pieces


def compile_cell_steps(cell: Cell, dims: dict) -> list[LocalStep]:
    """The named equations of one step of ``cell``, in order, compiled at the sizes ``dims``:
    updates and definitions as written, then the outputs, then the loss (if the cell has one).
    Each is preceded by the pieces :func:`_split` cuts it into (kind ``"piece"``)."""
    equations = []
    for kind, name in cell.order:
        equations.append((name, kind, cell._vars[name].symbol, cell.step_term(kind, name).expr))
    for name, term in cell.output_defs.items():
        equations.append((name, "output", cell.outputs[name].symbol, term.expr))
    if cell._loss_terms:
        equations.append(("L", "loss", MatrixSymbol("L", 1, 1), cell.loss_expr))
    steps = []
    for name, kind, symbol, expr in equations:
        pieces = _split(name, symbol, expr)
        for piece, piece_symbol, piece_expr in pieces[:-1]:
            steps.append(_compile(piece, "piece", piece_symbol, piece_expr, dims))
        steps.append(_compile(name, kind, symbol, pieces[-1][2], dims))
    return steps


def _number(value) -> mpmath.mpf:
    value = sp.sympify(value)
    if isinstance(value, sp.Rational):
        return mpmath.mpf(value.p) / value.q
    return mpmath.mpf(sp.Float(value, mpmath.mp.dps)._mpf_)


@dataclass
class ScalarGraph:
    """An unrolled graph: source nodes with given values and compiled equations applied to
    nodes, in evaluation order. Keys are any hashable names of nodes."""

    sources: dict[Key, ImmutableMatrix] = field(default_factory=dict)
    applications: list[tuple[LocalStep, tuple[Key, ...], Key]] = field(default_factory=list)
    losses: list[Key] = field(default_factory=list)
    _fresh: int = 0

    def source(self, value: ImmutableMatrix, key: Key | None = None) -> Key:
        """A node holding a given (exact) matrix; a fresh key unless ``key`` is given."""
        if key is None:
            self._fresh += 1
            key = ("const", self._fresh)
        self.sources[key] = ImmutableMatrix(value)
        return key

    def apply(self, step: LocalStep, inputs: Sequence[Key], out: Key) -> Key:
        self.applications.append((step, tuple(inputs), out))
        if step.kind == "loss":
            self.losses.append(out)
        return out

    def steps(
        self,
        cell: Cell,
        compiled: list[LocalStep],
        dims: dict,
        params: Sequence[dict[str, Key]],
        data: Sequence[dict],
        h0: dict[str, Key] | None = None,
        prefix: Hashable = "",
    ) -> list[dict[str, Key]]:
        """Add ``len(data)`` steps of ``cell``, in the order given.

        ``params[t]`` maps parameter names to nodes; ``data[t]`` maps input and target names
        to an exact matrix or to a node (another part's state); ``h0`` maps states to their
        initial nodes (zeros if missing). Returns the nodes of every named quantity per step,
        keyed ``(prefix, name, step)``.
        """
        h0 = dict(h0 or {})
        prev = {}
        for n, s in cell.states.items():
            if n not in h0:
                rows = int(s.symbol.shape[0].xreplace(dims))
                h0[n] = self.source(ImmutableMatrix.zeros(rows, 1), (prefix, n, "initial"))
            prev[n] = h0[n]
        out = []
        by_symbol = {}
        for n, s in cell.states.items():
            by_symbol[s.prev.symbol.xreplace(dims)] = ("prev", n)
        for var in [*cell.params.values(), *cell.inputs.values(), *cell.targets.values()]:
            by_symbol[var.symbol.xreplace(dims)] = (var.kind, var.name)
        for step in compiled:
            if step.kind != "loss":
                by_symbol[step.symbol] = ("named", step.name)
        for t, step_data in enumerate(data):
            nodes: dict[str, Key] = {}
            for var in [*cell.inputs.values(), *cell.targets.values()]:
                if var.name not in step_data:
                    continue
                value = step_data[var.name]
                if isinstance(value, sp.MatrixBase):
                    value = self.source(value, (prefix, var.name, t))
                nodes[var.name] = value
            for step in compiled:
                inputs = []
                for leaf in step.leaves:
                    kind, name = by_symbol[leaf]
                    if kind == "prev":
                        inputs.append(prev[name])
                    elif kind == "param":
                        inputs.append(params[t][name])
                    elif kind in ("input", "target"):
                        inputs.append(nodes[name])
                    else:  # a quantity named earlier in the same step
                        inputs.append(nodes[name])
                nodes[step.name] = self.apply(step, inputs, (prefix, step.name, t))
            prev = {n: nodes[n] for n in cell.states}
            out.append(nodes)
        return out

    def gradients(self, wrt: Sequence[Key], digits: int) -> tuple[mpmath.mpf, dict]:
        """The total loss and its gradient with respect to the nodes ``wrt``, evaluated at
        ``digits`` + GUARD_DIGITS working digits; returns (loss, {key: [entries]})."""
        with mpmath.workdps(digits + GUARD_DIGITS):
            values = {k: [_number(v) for v in m] for k, m in self.sources.items()}
            # only nodes that depend on ``wrt`` need adjoints
            active = set(wrt)
            partials = []
            for step, inputs, out in self.applications:
                arguments = [v for k in inputs for v in values[k]]
                result = step.function(*arguments)
                values[out] = result[: step.size]
                if any(k in active for k in inputs):
                    active.add(out)
                    partials.append(result[step.size :])
                else:
                    partials.append(None)
            adjoint: dict[Key, list] = {k: [mpmath.mpf(1)] for k in self.losses}
            for (step, inputs, out), local in zip(
                reversed(self.applications), reversed(partials), strict=True
            ):
                g = adjoint.get(out)
                if local is None or g is None:
                    continue
                targets = [
                    adjoint.setdefault(k, [mpmath.mpf(0)] * len(values[k])) if k in active else None
                    for k in inputs
                ]
                for (k, number, at), p in zip(step.pairs, local, strict=True):
                    into = targets[number]
                    if into is not None and g[k]:
                        into[at] += g[k] * p
            loss = mpmath.fsum(values[k][0] for k in self.losses)
            zero = mpmath.mpf(0)
            grads = {k: adjoint.get(k, [zero] * len(values[k])) for k in wrt}
            return loss, grads
