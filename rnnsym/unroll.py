"""The unrolled computation graph of a cell for a concrete number of steps T.

One node per quantity per step: inputs x(t), targets y(t), intermediates, states h(t) (and the
initial states h(0)), outputs o(t) and losses L(t). Each node holds its SymPy expression in
time-indexed symbols (h(2) = tanh(b + W h_1 + U x_2)). An edge runs from every quantity a node's
expression uses to that node, labelled with the parameters through which it enters (W on
h(t−1) → h(t), U on x(t) → h(t)): the parameters are shared by all steps, which is what
back-propagation through time sums over. :meth:`UnrolledGraph.to_dot` draws the graph with
time running left to right, as in the report's figures.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import sympy as sp
from sympy import HadamardProduct, MatMul, MatrixExpr, MatrixSymbol

from .cell import Cell
from .errors import RnnsymError
from .ops import leaves

__all__ = ["Node", "Edge", "UnrolledGraph", "unroll"]


@dataclass(frozen=True)
class Node:
    """One quantity at one step; ``expr`` is None for inputs, targets and initial states."""

    name: str  # "h_2"
    quantity: str  # "h"
    kind: str  # input, target, state, initial, intermediate, output, loss
    t: int
    expr: MatrixExpr | None = None


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    params: tuple[str, ...] = ()


@dataclass
class UnrolledGraph:
    """Nodes in time order and the edges between them."""

    cell: Cell
    T: int
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def loss(self) -> sp.Expr:
        """The total loss Σ_t L(t) as one 1×1 SymPy matrix expression in the step symbols."""
        return sp.MatAdd(*[MatrixSymbol(n.name, 1, 1) for n in self.nodes if n.kind == "loss"])

    def to_dot(self) -> str:
        """Graphviz DOT source drawn like the report's figures.

        Time runs left to right; each quantity is one row (x(t) at the bottom, then the
        intermediates and states, outputs and losses on top), so the recurrence h(t−1) → h(t)
        is a horizontal chain. Edges carry the parameters they multiply by.
        """
        lines = [
            f'digraph "{self.cell.name}" {{',
            "  rankdir=BT; newrank=true;",
            '  node [shape=circle, fontname="Helvetica"];',
            '  edge [fontname="Helvetica", fontsize=10];',
        ]
        shapes = {"target": "plaintext", "loss": "box", "initial": "doublecircle"}
        for n in self.nodes:
            label = f"{n.quantity}({n.t})"
            lines.append(f'  "{n.name}" [label="{label}", shape={shapes.get(n.kind, "circle")}];')
        rows: dict[str, list[str]] = {}
        for n in self.nodes:
            rows.setdefault(n.quantity, []).append(n.name)
        for members in rows.values():
            lines.append("  { rank=same; " + " ".join(f'"{m}";' for m in members) + " }")
            # keep each row in time order, left to right
            for left, right in zip(members, members[1:], strict=False):
                if not any(e.source == left and e.target == right for e in self.edges):
                    lines.append(f'  "{left}" -> "{right}" [style=invis];')
        for e in self.edges:
            attrs = f' [label="{", ".join(e.params)}"]' if e.params else ""
            lines.append(f'  "{e.source}" -> "{e.target}"{attrs};')
        shared = ", ".join(sorted(self.cell.params))
        lines.append(f'  label="{self.cell.name}, T = {self.T}; shared over t: {shared}";')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path) -> Path:
        """Write DOT (``.dot``, ``.gv``) or render with Graphviz (``.svg``, ``.png``, ``.pdf``)."""
        path = Path(path)
        suffix = path.suffix.lower().lstrip(".")
        if suffix in ("dot", "gv"):
            path.write_text(self.to_dot(), encoding="utf-8")
            return path
        if suffix not in ("svg", "png", "pdf"):
            raise RnnsymError(
                f"{path}: unknown graph format {suffix!r}; use .dot, .svg, .png, .pdf"
            )
        dot = shutil.which("dot")
        if dot is None:
            fallback = path.with_suffix(".dot")
            fallback.write_text(self.to_dot(), encoding="utf-8")
            raise RnnsymError(
                f"rendering {path.name} needs Graphviz's 'dot' program, which is not installed "
                f"(e.g. apt-get install graphviz); the DOT source was written to {fallback}"
            )
        subprocess.run(
            [dot, f"-T{suffix}", "-o", str(path)], input=self.to_dot(), text=True, check=True
        )
        return path


def _edge_params(expr: MatrixExpr, leaf: MatrixSymbol, params: set) -> tuple[str, ...]:
    """The parameters that multiply ``leaf`` in ``expr`` (W in W h, u in u ∘ h)."""
    found: set[str] = set()
    for node in sp.preorder_traversal(expr):
        if isinstance(node, (MatMul, HadamardProduct)) and leaf in leaves(node):
            for arg in node.args:
                base = arg.arg if isinstance(arg, sp.Transpose) else arg
                if isinstance(base, MatrixSymbol) and base in params and leaf not in leaves(arg):
                    found.add(base.name)
    return tuple(sorted(found))


def unroll(cell: Cell, T: int) -> UnrolledGraph:
    """The computation graph of ``cell`` unrolled over ``T`` steps."""
    if not isinstance(T, int) or T < 1:
        raise RnnsymError(f"unroll needs a number of steps T >= 1, got {T!r}")
    cell.check()
    graph = UnrolledGraph(cell, T)
    params = {p.symbol for p in cell.params.values()}

    def step_symbol(symbol: MatrixSymbol, t: int) -> MatrixSymbol:
        return MatrixSymbol(f"{symbol.name}_{t}", *symbol.shape)

    for name in cell.states:
        graph.nodes.append(Node(f"{name}_0", name, "initial", 0))
    for t in range(1, T + 1):
        rule: dict = {}
        for state in cell.states.values():
            rule[state.prev.symbol] = step_symbol(state.symbol, t - 1)
        for var in [*cell.inputs.values(), *cell.targets.values()]:
            rule[var.symbol] = step_symbol(var.symbol, t)
            graph.nodes.append(Node(f"{var.name}_{t}", var.name, var.kind, t))
        steps = [(kind, name, cell.step_term(kind, name).expr) for kind, name in cell.order]
        steps += [("output", n, term.expr) for n, term in cell.output_defs.items()]
        steps += [("loss", "L", cell.loss_expr)]
        for kind, name, expr in steps:
            symbol = MatrixSymbol(name, *expr.shape) if kind == "loss" else cell._vars[name].symbol
            node_name = f"{name}_{t}"
            node_kind = {"update": "state", "define": "intermediate"}.get(kind, kind)
            graph.nodes.append(Node(node_name, name, node_kind, t, expr.xreplace(rule)))
            for leaf in sorted(leaves(expr) - params, key=lambda s: s.name):
                source = rule[leaf] if leaf in rule else step_symbol(leaf, t)
                graph.edges.append(Edge(source.name, node_name, _edge_params(expr, leaf, params)))
            rule[symbol] = step_symbol(symbol, t)
    return graph
