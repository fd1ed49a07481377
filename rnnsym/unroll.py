"""The unrolled computation graph of a cell, or of a composed model, for a concrete T.

One node per quantity per step: inputs x(t), targets y(t), intermediates, states h(t) (and the
initial states h(0)), outputs o(t) and losses L(t). Each node holds its SymPy expression in
time-indexed symbols (h(2) = tanh(b + W h_1 + U x_2)). An edge runs from every quantity a node's
expression uses to that node, labelled with the parameters through which it enters (W on
h(t−1) → h(t), U on x(t) → h(t)): the parameters are shared by all steps, which is what
back-propagation through time sums over. :meth:`UnrolledGraph.to_dot` draws the graph with
time running left to right, as in the report's figures.

The newer cell features are drawn as in the report: a fed-back target input ``y.prev``
(teacher forcing, Fig. 4; Fig. 6) is an edge from the target node y(t−1) to where it is used at
step t (y(0), the zero start value, is an initial node); a context input given once per
sequence (Fig. 6's fixed x) is one node with an edge to every step; a cell without state has no
initial-state node, and its steps are not linked.

A composed model (:class:`~rnnsym.models.compose.Model`) is drawn part by part, each part a cluster:
a bidirectional RNN (Fig. 7) has the forward chain h(1) → … → h(T), the backward chain
g(T+1) → g(T) → … → g(1) (its edges point backwards in time) and the head reading h(t), g(t);
a sequence-to-sequence model (Fig. 8) has the encoder's steps 1..T_x, the context node C fed by
the encoder's last state and starting the decoder, and the decoder's steps 1..T_y; a model with
one output at the end (Fig. 5) has the layer's chain and the head at t = T only. Node names are
prefixed with the part's role (``backward.a_3``) where two parts use the same name.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import sympy as sp
from sympy import HadamardProduct, MatMul, MatrixExpr, MatrixSymbol

from .cell import Cell
from .errors import RnnsymError
from .ir.ops import leaves
from .models.compose import Model
from .models.nested import Both, CellLayer, NestedModel, NestedSeq2Seq, Reversed

__all__ = ["Node", "Edge", "UnrolledGraph", "unroll"]


@dataclass(frozen=True)
class Node:
    """One quantity at one step; ``expr`` is None for inputs, targets and initial states.

    ``kind`` is one of input, target, state, initial, intermediate, output, loss, or context
    (an input given once per sequence, or a seq2seq model's context C). ``part`` is the role
    of the model part the node belongs to ("forward", "decoder", ...), "" for a single cell
    and for the nodes a model's parts share (a bidirectional RNN's inputs, seq2seq's C).
    """

    name: str  # "h_2"
    quantity: str  # "h"
    kind: str  # input, target, state, initial, intermediate, output, loss, context
    t: int
    expr: MatrixExpr | None = None
    part: str = ""


@dataclass(frozen=True)
class Edge:
    """``source`` is used by ``target``'s expression, through the parameters ``params``.

    ``fed_back`` marks a target y(t−1) fed back as an input at step t (``y.prev``).
    """

    source: str
    target: str
    params: tuple[str, ...] = ()
    fed_back: bool = False


@dataclass
class UnrolledGraph:
    """Nodes in time order and the edges between them.

    ``cell`` is the unrolled :class:`~rnnsym.Cell` or :class:`~rnnsym.models.compose.Model`;
    ``T_out`` is a seq2seq model's decoder length T_y (None otherwise).
    """

    cell: Cell | Model
    T: int
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    T_out: int | None = None
    titles: dict[str, str] = field(default_factory=dict)  # a nested model's boxes

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def loss(self) -> sp.Expr:
        """The total loss Σ_t L(t) as one 1×1 SymPy matrix expression in the step symbols."""
        return sp.MatAdd(*[MatrixSymbol(n.name, 1, 1) for n in self.nodes if n.kind == "loss"])

    def to_dot(self) -> str:
        """Graphviz DOT source drawn like the report's figures.

        Time runs left to right; each quantity is one row (x(t) at the bottom, then the
        intermediates and states, outputs and losses on top), so the recurrence h(t−1) → h(t)
        is a horizontal chain. Edges carry the parameters they multiply by. A model's parts
        are drawn as clusters.
        """
        if isinstance(self.cell, Model):
            return self._model_dot()
        if isinstance(self.cell, NestedModel | NestedSeq2Seq):
            return self._nested_dot()
        lines = _dot_opening(self.cell.name)
        for n in self.nodes:
            lines.append(_node_line(n, "  "))
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
            lines.append(_edge_line(e, reverse=False))
        shared = ", ".join(sorted(self.cell.params))
        lines.append(f'  label="{self.cell.name}, T = {self.T}; shared over t: {shared}";')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _model_dot(self) -> str:
        model: Model = self.cell
        by_name = {n.name: n for n in self.nodes}
        lines = _dot_opening(model.name)
        rows = self._part_rows()
        # seq2seq: the encoder's last state, C and the decoder's first state in one row, so
        # that the figure reads left to right, encoder then decoder (Fig. 8)
        joined: list[tuple[str, str]] = []
        if model.kind == "seq2seq":
            where, target, state = model.context_slot
            joined = [("encoder", state), ("", "C")]
            if where == "h0":
                joined.append(("decoder", target))
        titles = _cluster_titles(model, self.T, self.T_out)
        roles = [*model.parts, ""]
        if model.kind == "seq2seq":  # C drawn between the encoder and the decoder
            roles = ["encoder", "", "decoder"]
        for role in roles:
            boxed = bool(role) or model.kind == "seq2seq"
            indent = "    " if boxed else "  "
            if role:
                lines += _cluster_opening(role, titles[role])
            elif boxed:  # C between the encoder's and the decoder's boxes
                lines.append('  subgraph "cluster_context" {')
                lines.append("    style=invis;")
            for n in self.nodes:
                if n.part == role:
                    lines.append(_node_line(n, indent))
            for key, members in rows.items():
                if key[0] == role and key not in joined:
                    names = " ".join(f'"{m.name}";' for m in members)
                    lines.append(f"{indent}{{ rank=same; {names} }}")
            if boxed:
                lines.append("  }")
        if joined:
            names = [m.name for key in joined for m in rows.get(key, [])]
            lines.append("  { rank=same; " + " ".join(f'"{m}";' for m in names) + " }")
        linked = {(e.source, e.target) for e in self.edges}
        linked |= {(b, a) for a, b in linked}
        for key, members in rows.items():
            order = [m.name for m in members]
            if key in joined:
                continue
            for left, right in zip(order, order[1:], strict=False):
                if (left, right) not in linked:
                    lines.append(f'  "{left}" -> "{right}" [style=invis];')
        if joined:
            names = [m.name for key in joined for m in rows.get(key, [])]
            for left, right in zip(names, names[1:], strict=False):
                if (left, right) not in linked:
                    lines.append(f'  "{left}" -> "{right}" [style=invis];')
        if model.kind == "bidirectional":
            # the backward layer's row above the forward layer's, as in Fig. 7
            fwd, bwd = model.parts["forward"].cell, model.parts["backward"].cell
            below = next(iter(fwd.states))
            above = next(iter(bwd.states))
            lower = {m.t: m.name for m in rows.get(("forward", below), [])}
            upper = {m.t: m.name for m in rows.get(("backward", above), [])}
            for t in range(1, self.T + 1):
                if t in lower and t in upper:
                    lines.append(f'  "{lower[t]}" -> "{upper[t]}" [style=invis];')
        in_joined = {m.name for key in joined for m in rows.get(key, [])}
        for e in self.edges:
            source, target = by_name[e.source], by_name[e.target]
            same_row = (source.part, source.quantity) == (target.part, target.quantity)
            # a flat edge from one box to the next leaves and enters sideways
            across = e.source in in_joined and e.target in in_joined and not same_row
            lines.append(_edge_line(e, reverse=same_row and source.t > target.t, across=across))
        shared = ", ".join(sorted(model.params))
        steps = f"T = {self.T}"
        if self.T_out is not None:
            steps = f"T_x = {self.T}, T_y = {self.T_out}"
        kind = model.kind.replace("_", " ")
        lines.append(f'  label="{model.name} ({kind}), {steps}; shared over t: {shared}";')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _part_rows(self) -> dict[tuple[str, str], list[Node]]:
        """The nodes of each (part, quantity) row, in time order."""
        rows: dict[tuple[str, str], list[Node]] = {}
        for n in self.nodes:
            rows.setdefault((n.part, n.quantity), []).append(n)
        for members in rows.values():
            members.sort(key=lambda n: n.t)
        return rows

    def _nested_dot(self) -> str:
        """A nested model: one box per cell, its rows in time order (a reversed cell's chain
        drawn right to left), the shared input and the concatenations between the boxes."""
        model = self.cell
        by_name = {n.name: n for n in self.nodes}
        lines = _dot_opening(model.name)
        rows = self._part_rows()
        parts = list(dict.fromkeys(n.part for n in self.nodes))
        for part in parts:
            indent = "    " if part else "  "
            if part:
                lines += _cluster_opening(part, self.titles.get(part, part))
            for n in self.nodes:
                if n.part == part:
                    lines.append(_node_line(n, indent))
            for key, members in rows.items():
                if key[0] == part:
                    names = " ".join(f'"{m.name}";' for m in members)
                    lines.append(f"{indent}{{ rank=same; {names} }}")
            if part:
                lines.append("  }")
        linked = {(e.source, e.target) for e in self.edges}
        linked |= {(b, a) for a, b in linked}
        for members in rows.values():
            order = [m.name for m in members]
            for left, right in zip(order, order[1:], strict=False):
                if (left, right) not in linked:
                    lines.append(f'  "{left}" -> "{right}" [style=invis];')
        for e in self.edges:
            source, target = by_name[e.source], by_name[e.target]
            same_row = (source.part, source.quantity) == (target.part, target.quantity)
            lines.append(_edge_line(e, reverse=same_row and source.t > target.t))
        shared = ", ".join(sorted(model.params))
        lines.append(f'  label="{model.name} (nested), T = {self.T}; shared over t: {shared}";')
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


_SHAPES = {"target": "plaintext", "loss": "box", "initial": "doublecircle"}


def _cluster_opening(name: str, title: str) -> list[str]:
    """The first lines of one part's dashed box."""
    return [
        f'  subgraph "cluster_{name}" {{',
        f'    label="{title}"; style="rounded,dashed"; color=gray40; fontname="Helvetica"; '
        f"fontsize=11;",
    ]


def _dot_opening(name: str) -> list[str]:
    """The first lines of a graph: time runs left to right, quantities stack bottom to top."""
    return [
        f'digraph "{name}" {{',
        "  rankdir=BT; newrank=true;",
        '  node [shape=circle, fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]


def _node_line(n: Node, indent: str) -> str:
    label = n.quantity if n.kind == "context" else f"{n.quantity}({n.t})"
    return f'{indent}"{n.name}" [label="{label}", shape={_SHAPES.get(n.kind, "circle")}];'


def _edge_line(e: Edge, reverse: bool, across: bool = False) -> str:
    """One edge; ``reverse`` draws it from right to left (a chain running backwards in time)
    by writing it the other way round with ``dir=back``, so the arrow still points at the
    edge's target. A fed-back target y(t−1) → h(t) is dashed.
    """
    attrs = [f'label="{", ".join(e.params)}"'] if e.params else []
    if e.fed_back:
        attrs.append("style=dashed")
    if across:
        attrs += ["tailport=e", "headport=w"]
    if reverse:
        attrs.append("dir=back")
        tail, head = e.target, e.source
    else:
        tail, head = e.source, e.target
    shown = f" [{', '.join(attrs)}]" if attrs else ""
    return f'  "{tail}" -> "{head}"{shown};'


def _cluster_titles(model: Model, T: int, T_out: int | None) -> dict[str, str]:
    titles = {}
    for role, part in model.parts.items():
        name = part.cell.name
        titles[role] = {
            "forward": f"forward layer {name}: t = 1..{T}",
            "backward": f"backward layer {name}: runs t = {T}..1",
            "head": f"head {name}: "
            + (f"at t = {T} only" if model.kind == "last_output" else "at every t"),
            "encoder": f"encoder {name}: t = 1..{T}",
            "decoder": f"decoder {name}: t = 1..{T_out}",
            "layer": f"layer {name}: t = 1..{T}",
        }.get(role, f"{role} {name}")
    return titles


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


class _Builder:
    """Adds the nodes and edges of one cell's steps to a graph."""

    def __init__(self, graph: UnrolledGraph):
        self.graph = graph
        self.names: set[str] = set()

    def add(self, node: Node, reuse: bool = False) -> str:
        if node.name in self.names:
            if reuse:
                return node.name
            raise RnnsymError(
                f"unroll: two nodes of {self.graph.cell.name!r} are both named {node.name!r}; "
                f"rename one of the quantities"
            )
        self.names.add(node.name)
        self.graph.nodes.append(node)
        return node.name

    def steps(
        self,
        cell: Cell,
        times: Iterable[int],
        *,
        start: int = 0,
        part: str = "",
        qname: Callable[[str], str] = lambda q: q,
        context_name: Callable[[str], str] | None = None,
        bound: dict[str, Callable[[int], str]] | None = None,
        initial: dict[str, str] | None = None,
        shared: Iterable[str] = (),
    ) -> dict[str, str]:
        """Unroll ``cell`` over ``times`` (in the order it runs; the previous step of each is
        the one before it in the list, the first one's is ``start``).

        ``bound`` maps inputs to the node they read at step t (a head reading a layer's
        state); ``initial`` maps states to the node of their initial value (seq2seq's C);
        ``shared`` names inputs whose nodes other parts use too. Returns the node of each
        state after the last step.
        """
        bound = dict(bound or {})
        initial = dict(initial or {})
        shared = set(shared)
        context_name = context_name or qname
        params = {p.symbol for p in cell.params.values()}
        current: dict[str, str] = {}
        for name in cell.states:
            if name in initial:
                current[name] = initial[name]
            else:
                node = Node(f"{qname(name)}_{start}", name, "initial", start, part=part)
                current[name] = self.add(node)
        fed: dict[str, str] = {}  # fed-back input -> the target node it reads next step
        for name, target in cell.fed_back.items():
            if name not in bound:
                node = Node(f"{qname(target)}_{start}", target, "initial", start, part=part)
                fed[name] = self.add(node)
        contexts: dict[str, str] = {}
        for name in cell.context_inputs:
            if name not in bound:
                owner = "" if name in shared else part
                node = Node(context_name(name), name, "context", 0, part=owner)
                contexts[name] = self.add(node, reuse=name in shared)
        steps = [(kind, name, cell.step_term(kind, name).expr) for kind, name in cell.order]
        steps += [("output", n, term.expr) for n, term in cell.output_defs.items()]
        if cell._loss_terms:
            steps += [("loss", "L", cell.loss_expr)]
        for t in times:
            rule: dict = {}
            for name, state in cell.states.items():
                rule[state.prev.symbol] = MatrixSymbol(current[name], *state.shape)
            for var in [*cell.inputs.values(), *cell.targets.values()]:
                name = var.name
                if name in bound:
                    source = bound[name](t)
                elif name in fed:
                    source = fed[name]
                elif name in contexts:
                    source = contexts[name]
                else:
                    owner = "" if name in shared else part  # a node of the whole model
                    node = Node(f"{qname(name)}_{t}", name, var.kind, t, part=owner)
                    source = self.add(node, reuse=name in shared)
                rule[var.symbol] = MatrixSymbol(source, *var.shape)
            for kind, name, expr in steps:
                symbol = (
                    MatrixSymbol(name, *expr.shape) if kind == "loss" else cell._vars[name].symbol
                )
                node_name = f"{qname(name)}_{t}"
                node_kind = {"update": "state", "define": "intermediate"}.get(kind, kind)
                self.add(Node(node_name, name, node_kind, t, expr.xreplace(rule), part))
                for leaf in sorted(leaves(expr) - params, key=lambda s: s.name):
                    source = rule[leaf] if leaf in rule else MatrixSymbol(f"{leaf.name}_{t}", 1, 1)
                    edge = Edge(
                        source.name,
                        node_name,
                        _edge_params(expr, leaf, params),
                        fed_back=leaf.name in fed,
                    )
                    self.graph.edges.append(edge)
                rule[symbol] = MatrixSymbol(node_name, *symbol.shape)
                if kind == "update":
                    current[name] = node_name
            for name, target in cell.fed_back.items():
                if name in fed:
                    fed[name] = rule[cell._vars[target].symbol].name
        return current


def _check_steps(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RnnsymError(f"unroll needs a number of steps {what} >= 1, got {value!r}")
    return value


def _bare_name(base: str, quantities: set[str], taken: set[str]) -> str:
    """A node name without a step for ``base`` that no step node ``q_t`` can take."""
    name = base
    while name in taken or (
        (m := re.fullmatch(r"(.+)_(\d+)", name)) is not None and m.group(1) in quantities
    ):
        name += "_"
    return name


def unroll(cell: Cell | Model, T: int, T_out: int | None = None) -> UnrolledGraph:
    """The computation graph of ``cell`` unrolled over ``T`` steps.

    ``cell`` may be a composed model (:func:`rnnsym.bidirectional`, :func:`rnnsym.seq2seq`,
    :func:`rnnsym.last_output`); for a seq2seq model ``T`` is the encoder's length T_x and
    ``T_out`` the decoder's T_y (default T + 1).
    """
    _check_steps(T, "T")
    if isinstance(cell, Model):
        return _unroll_model(cell, T, T_out)
    if isinstance(cell, NestedSeq2Seq):
        return _unroll_nested(cell, T, T + 1 if T_out is None else _check_steps(T_out, "T_out"))
    if isinstance(cell, NestedModel):
        if T_out is not None:
            raise RnnsymError(
                f"unroll: T_out is the decoder length of a seq2seq model; {cell.name!r} is a "
                f"nested model"
            )
        return _unroll_nested(cell, T)
    if T_out is not None:
        raise RnnsymError(
            f"unroll: T_out is the decoder length of a seq2seq model; {cell.name!r} is a cell"
        )
    if not isinstance(cell, Cell):
        raise RnnsymError(
            f"unroll needs an rnnsym.Cell or rnnsym.Model, got {type(cell).__name__} {cell!r}"
        )
    cell.check()
    graph = UnrolledGraph(cell, T)
    quantities = set(cell._vars) | {"L"}
    contexts: dict[str, str] = {}
    for name in cell.context_inputs:
        contexts[name] = _bare_name(name, quantities, set(contexts.values()))
    _Builder(graph).steps(cell, range(1, T + 1), context_name=contexts.__getitem__)
    return graph


def _unroll_nested(model, T: int, T_out: int | None = None) -> UnrolledGraph:
    """A nested model unrolled: every cell in its own time order (a reversed one from T down
    to 1), each layer reading the output of the one below at the same step, a bidirectional
    layer's two outputs joined in a concatenation node, the head at every step (a seq2seq
    model: C, the encoder's last output, then the decoder for T_out steps)."""
    graph = UnrolledGraph(model, T, T_out=T_out)
    build = _Builder(graph)
    x = {t: build.add(Node(f"{model.input}_{t}", model.input, "input", t)) for t in range(1, T + 1)}
    joins = [0]

    def run(
        layer, source: Callable[[int], str], backwards: bool, steps: int = T
    ) -> Callable[[int], str]:
        if isinstance(layer, CellLayer):
            cell = layer.cell
            name = cell.name
            times = range(steps, 0, -1) if backwards else range(1, steps + 1)
            direction = f"runs t = {steps}..1" if backwards else f"t = 1..{steps}"
            graph.titles[name] = f"{name}: {direction}"
            build.steps(
                cell,
                times,
                start=steps + 1 if backwards else 0,
                part=name,
                qname=lambda q, name=name: f"{name}.{q}",
                bound={layer.input: source},
            )
            return lambda t, name=name, state=layer.state: f"{name}.{state}_{t}"
        if isinstance(layer, Reversed):
            return run(layer.layer, source, not backwards, steps)
        if isinstance(layer, Both):
            forward = run(layer.forward_layer, source, backwards, steps)
            backward = run(layer.backward_layer, source, backwards, steps)
            joins[0] += 1
            label = f"z{joins[0]}"
            for t in range(1, steps + 1):
                a, b = forward(t), backward(t)
                build.add(Node(f"{label}_{t}", label, "intermediate", t))
                graph.edges += [Edge(a, f"{label}_{t}"), Edge(b, f"{label}_{t}")]
            return lambda t, label=label: f"{label}_{t}"
        for inner in layer.layers:
            source = run(inner, source, backwards, steps)
        return source

    if isinstance(model, NestedSeq2Seq) and model.slot[0] == "input":
        # a decoder model reads u(t) = [y(t-1); C]: its input nodes join C and the target
        top = run(model.encoder, x.__getitem__, False)
        context = build.add(Node("C", "C", "context", T))
        graph.edges.append(Edge(top(T), context))
        decoder, target = model.decoder, model.slot[1]
        joined = {}
        for t in range(1, T_out + 1):
            joined[t] = build.add(Node(f"u_{t}", "u", "input", t))
            graph.edges.append(Edge(context, joined[t]))
        top = run(decoder.body, joined.__getitem__, False, T_out)
        head = decoder.head
        graph.titles[head.name] = f"head {head.name}: at every t"
        build.steps(
            head,
            range(1, T_out + 1),
            part=head.name,
            qname=lambda q: f"{head.name}.{q}",
            bound={decoder.head_input: top},
        )
        for t in range(2, T_out + 1):  # y(t - 1) fed back, as a decoder's target is
            graph.edges.append(Edge(f"{head.name}.{target}_{t - 1}", joined[t], fed_back=True))
        return graph
    if isinstance(model, NestedSeq2Seq):
        top = run(model.encoder, x.__getitem__, False)
        context = build.add(Node("C", "C", "context", T))
        graph.edges.append(Edge(top(T), context))
        decoder = model.decoder
        where, slot = model.slot
        graph.titles[decoder.name] = f"decoder {decoder.name}: t = 1..{T_out}"
        extra = {"bound": {slot: lambda t: context}} if where == "context" else {}
        build.steps(
            decoder,
            range(1, T_out + 1),
            part=decoder.name,
            qname=lambda q: f"{decoder.name}.{q}",
            initial={slot: context} if where == "h0" else None,
            **extra,
        )
        return graph
    top = run(model.body, x.__getitem__, False)
    head = model.head
    when = f"at t = {T} only" if model.last_only else "at every t"
    graph.titles[head.name] = f"head {head.name}: {when}"
    build.steps(
        head,
        [T] if model.last_only else range(1, T + 1),
        part=head.name,
        qname=lambda q: f"{head.name}.{q}",
        bound={model.head_input: top},
    )
    return graph


def _node_quantities(cell: Cell, bound: Iterable[str] = ()) -> set[str]:
    """The names a cell's nodes are made of (not its bound or fed-back inputs)."""
    names = set(cell.states) | set(cell.intermediates) | set(cell.outputs) | set(cell.targets)
    names |= {n for n in cell.inputs if n not in bound and n not in cell.fed_back}
    if cell._loss_terms:
        names.add("L")
    return names


def _unroll_model(model: Model, T: int, T_out: int | None) -> UnrolledGraph:
    parts = model.parts
    if model.kind == "seq2seq":
        T_out = T + 1 if T_out is None else _check_steps(T_out, "T_out")
    elif T_out is not None:
        raise RnnsymError(
            f"unroll: T_out is the decoder length of a seq2seq model; {model.name!r} is "
            f"{model.kind.replace('_', ' ')}"
        )
    graph = UnrolledGraph(model, T, T_out=T_out)
    build = _Builder(graph)
    heads = {"head"} if "head" in parts else set()
    shared: set[str] = set()  # inputs both layers of a bidirectional RNN read
    sharing = {"forward", "backward"} if model.kind == "bidirectional" else set()
    if sharing:
        shared = set(parts["forward"].cell.inputs) & set(parts["backward"].cell.inputs)
    # names used by more than one part are prefixed with the part's role
    owners: dict[str, set[str]] = {}
    for role, part in parts.items():
        bound = set(part.cell.inputs) if role in heads else set()
        for name in _node_quantities(part.cell, bound):
            owners.setdefault(name, set()).add("" if name in shared and role in sharing else role)
    clash = {name for name, roles in owners.items() if len(roles) > 1}

    def qname(role: str) -> Callable[[str], str]:
        def name(q: str) -> str:
            if q in clash and not (q in shared and role in sharing):
                return f"{role}.{q}"
            return q

        return name

    quantities = set(owners)
    taken: set[str] = set()
    context_names: dict[str, dict[str, str]] = {}
    for role, part in parts.items():
        names = context_names.setdefault(role, {})
        for name in part.cell.context_inputs:
            prior = next((n[name] for n in context_names.values() if name in n), None)
            if name in shared and role in sharing and prior is not None:
                names[name] = prior
            else:
                names[name] = _bare_name(qname(role)(name), quantities, taken)
                taken.add(names[name])

    def options(role: str) -> dict:
        return {
            "part": role,
            "qname": qname(role),
            "context_name": context_names[role].__getitem__,
        }

    if model.kind == "bidirectional":
        fwd, bwd = parts["forward"].cell, parts["backward"].cell
        both = {"shared": shared}
        build.steps(fwd, range(1, T + 1), start=0, **options("forward"), **both)
        build.steps(bwd, range(T, 0, -1), start=T + 1, **options("backward"), **both)
        owner = {s: "forward" for s in fwd.states} | {s: "backward" for s in bwd.states}
        bound = {
            name: (lambda t, s=state: f"{qname(owner[s])(s)}_{t}")
            for name, state in model.wiring.items()
        }
        build.steps(parts["head"].cell, range(1, T + 1), **options("head"), bound=bound)
    elif model.kind == "seq2seq":
        enc, dec = parts["encoder"].cell, parts["decoder"].cell
        last = build.steps(enc, range(1, T + 1), **options("encoder"))
        where, target, state = model.context_slot
        source = last[state]
        name = _bare_name("C", quantities, taken)
        expr = MatrixSymbol(source, *enc.states[state].shape)
        context = build.add(Node(name, "C", "context", T, expr))
        graph.edges.append(Edge(source, context))
        if where == "h0":
            extra = {"initial": {target: context}}
        else:
            extra = {"bound": {target: lambda t: context}}
        build.steps(dec, range(1, T_out + 1), **options("decoder"), **extra)
    else:  # last_output
        layer = parts["layer"].cell
        build.steps(layer, range(1, T + 1), **options("layer"))
        bound = {
            name: (lambda t, s=state: f"{qname('layer')(s)}_{t}")
            for name, state in model.wiring.items()
        }
        build.steps(parts["head"].cell, [T], **options("head"), bound=bound)
    return graph
