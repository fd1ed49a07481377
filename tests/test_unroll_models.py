"""Unrolled graphs of the new cell features and of composed models (Figures 4–8).

Cells: a stateless cell (teacher forcing, Fig. 4) has no initial-state node and its steps are
not linked; a fed-back target y.prev is an edge y(t−1) → h(t); a context input (Fig. 6's fixed
x) is one node with an edge to every step. Models: a bidirectional RNN's backward chain runs
from g(T+1) down to g(1) (Fig. 7); a seq2seq model's encoder hands its last state to the
decoder through the context node C (Fig. 8); a last-output model has its head at t = T only
(Fig. 5). Every drawing is valid DOT.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import sympy as sp

import rnnsym as rs
from rnnsym.models.architectures import elman_layer
from rnnsym.unroll import UnrolledGraph

# ----- helpers -----


def edges(graph) -> dict[tuple[str, str], tuple[str, ...]]:
    return {(e.source, e.target): e.params for e in graph.edges}


def names(graph, quantity: str | None = None, kind: str | None = None) -> list[str]:
    return [
        n.name
        for n in graph.nodes
        if (quantity is None or n.quantity == quantity) and (kind is None or n.kind == kind)
    ]


def expr_symbols(graph, name: str) -> set[str]:
    return {s.name for s in graph.node(name).expr.atoms(sp.MatrixSymbol)}


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_NODE = re.compile(r'^\s*"([^"]+)" \[label=')
_EDGE = re.compile(r'^\s*"([^"]+)" -> "([^"]+)"(?: \[(.*)\])?;$')


def check_dot(text: str) -> tuple[set[str], list[tuple[str, str, str]]]:
    """Checks DOT text and returns its declared nodes and its edges (tail, head, attributes).

    Braces balance outside quoted strings and never close more than they opened; every line
    is a declaration, an attribute statement, a rank group, an edge or a brace; every edge
    endpoint and every node of a rank group is declared; no node is declared twice.
    """
    assert text.startswith("digraph ") and text.endswith("}\n")
    depth = 0
    for char in _QUOTED.sub('""', text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0
    declared: list[str] = []
    found_edges, grouped = [], []
    for line in text.splitlines()[1:-1]:
        if m := _NODE.match(line):
            declared.append(m.group(1))
        elif m := _EDGE.match(line):
            found_edges.append((m.group(1), m.group(2), m.group(3) or ""))
        elif "rank=same" in line:
            grouped += re.findall(r'"([^"]+)";', line)
        else:
            statement = r'^\s*(\}|subgraph "cluster_\w+" \{|(node|edge) \[.*\];|[\w ]+=.*;)$'
            assert re.match(statement, line), line
    assert len(declared) == len(set(declared)), "a node is declared twice"
    nodes = set(declared)
    for tail, head, _ in found_edges:
        assert tail in nodes and head in nodes, (tail, head)
    assert set(grouped) <= nodes
    return nodes, found_edges


def drawn_direction(dot_edges, source: str, target: str) -> str:
    """How the edge source → target is written: "forward" or "back" (dir=back, reversed)."""
    for tail, head, attrs in dot_edges:
        if (tail, head) == (source, target) and "dir=back" not in attrs:
            return "forward"
        if (tail, head) == (target, source) and "dir=back" in attrs:
            return "back"
    raise AssertionError(f"no edge {source} -> {target} in the DOT text")


# ----- the new cell features -----


def test_teacher_forcing_has_no_state_and_feeds_y_prev_from_the_target():
    """Fig. 4 with teacher forcing: y(t−1) → h(t) through W; steps otherwise decoupled."""
    T = 3
    graph = rs.unroll(rs.cells.get("teacher_forcing"), T)
    assert names(graph, kind="initial") == ["y_0"]  # y(0) = 0, no h(0): there is no state
    assert not [n for n in graph.nodes if n.quantity == "y_prev"]  # not a free input node
    e = edges(graph)
    for t in range(1, T + 1):
        assert e[(f"y_{t - 1}", f"h_{t}")] == ("W",)  # W reads y(t−1) where eq. (2) has h(t−1)
        assert e[(f"x_{t}", f"h_{t}")] == ("U",)
        assert expr_symbols(graph, f"h_{t}") == {"b", "W", f"y_{t - 1}", "U", f"x_{t}"}
    fed = [(x.source, x.target) for x in graph.edges if x.fed_back]
    assert fed == [(f"y_{t - 1}", f"h_{t}") for t in range(1, T + 1)]
    # the only links between steps are the fed-back targets
    step = {n.name: n.t for n in graph.nodes}
    across = [x for x in graph.edges if step[x.source] != step[x.target]]
    assert all(x.fed_back for x in across)
    nodes, dot_edges = check_dot(graph.to_dot())
    assert '"y_1" -> "h_2" [label="W", style=dashed];' in graph.to_dot()
    assert len(nodes) == len(graph.nodes) and len(dot_edges) >= len(graph.edges)


def test_fixed_input_is_one_context_node_read_at_every_step():
    """Fig. 6: h(t) = tanh(b + W h(t−1) + R x + U y(t−1)): one node x, edges R to each h(t)."""
    T = 4
    graph = rs.unroll(rs.cells.get("fixed_input"), T)
    assert names(graph, "x") == ["x"] and graph.node("x").kind == "context"
    assert names(graph, kind="initial") == ["h_0", "y_0"]
    e = edges(graph)
    for t in range(1, T + 1):
        assert e[("x", f"h_{t}")] == ("R",)
        assert e[(f"y_{t - 1}", f"h_{t}")] == ("U",)
        assert e[(f"h_{t - 1}", f"h_{t}")] == ("W",)
        assert "x" in expr_symbols(graph, f"h_{t}")
    assert [x.target for x in graph.edges if x.source == "x"] == [f"h_{t}" for t in range(1, 5)]
    text = graph.to_dot()
    check_dot(text)
    assert '"x" [label="x", shape=circle];' in text  # no time index on a context


def test_context_name_that_looks_like_a_step_node_stays_unique():
    cell = rs.Cell("ctx_clash")
    n = cell.dims("n")
    h = cell.state("h", n)
    ctx = cell.context("h_1", n)  # would be the name of h at step 1
    cell.update(h, rs.tanh(cell.param("W", n, n) @ h.prev + ctx))
    cell.loss(rs.squared_error(cell.output("o", h), cell.target("y", n)))
    graph = rs.unroll(cell, 2)
    assert len({n.name for n in graph.nodes}) == len(graph.nodes)
    context = next(n for n in graph.nodes if n.kind == "context")
    assert context.name != "h_1" and ("h_1", "h_2") in edges(graph)
    check_dot(graph.to_dot())


def test_output_feedback_recurrence_runs_through_o():
    """Fig. 4 free-running: the state is o, o(t−1) → h(t) through W."""
    graph = rs.unroll(rs.cells.get("output_feedback"), 3)
    assert names(graph, kind="initial") == ["o_0"]
    e = edges(graph)
    assert e[("o_1", "h_2")] == ("W",) and e[("h_2", "o_2")] == ("V",)
    assert not any(x.fed_back for x in graph.edges)
    check_dot(graph.to_dot())


@pytest.mark.parametrize("name", sorted(rs.cells.BUILTIN))
def test_every_builtin_draws_valid_dot(name):
    thing = rs.cells.get(name)
    graph = rs.unroll(thing, 3)
    nodes, dot_edges = check_dot(graph.to_dot())
    assert nodes == {n.name for n in graph.nodes}
    assert {(e.source, e.target) for e in graph.edges} <= {
        (a, b) if "dir=back" not in attrs else (b, a) for a, b, attrs in dot_edges
    }
    assert len({n.name for n in graph.nodes}) == len(graph.nodes)


# ----- Fig. 7: bidirectional -----


def test_bidirectional_chains_run_in_opposite_directions():
    T = 4
    model = rs.cells.get("bidirectional")
    graph = rs.unroll(model, T)
    assert isinstance(graph, UnrolledGraph)
    assert names(graph, "h") == [f"h_{t}" for t in range(0, T + 1)]
    assert sorted(names(graph, "g"), key=lambda s: int(s[2:])) == [
        f"g_{t}" for t in range(1, T + 2)
    ]
    assert graph.node("g_5").kind == "initial"  # the backward RNN starts after the end
    assert len(names(graph, "x")) == T  # the two layers read the same x(t)
    assert len(names(graph, "o")) == len(names(graph, "L")) == T
    e = edges(graph)
    for t in range(1, T + 1):
        assert e[(f"h_{t - 1}", f"h_{t}")] == ("W",)  # forward: t−1 → t
        assert e[(f"g_{t + 1}", f"g_{t}")] == ("W_g",)  # backward: t+1 → t
        assert (f"g_{t}", f"g_{t + 1}") not in e
        assert e[(f"x_{t}", f"h_{t}")] == ("U",) and e[(f"x_{t}", f"g_{t}")] == ("U_g",)
        assert e[(f"h_{t}", f"o_{t}")] == ("V",) and e[(f"g_{t}", f"o_{t}")] == ("V_g",)
        assert e[(f"o_{t}", f"L_{t}")] == () and e[(f"y_{t}", f"L_{t}")] == ()
    assert expr_symbols(graph, "g_2") == {"b_g", "W_g", "g_3", "U_g", "x_2"}
    assert expr_symbols(graph, "o_2") == {"c", "V", "h_2", "V_g", "g_2"}
    parts = {n.name: n.part for n in graph.nodes}
    assert parts["h_1"] == "forward" and parts["g_1"] == "backward" and parts["o_1"] == "head"
    assert parts["x_1"] == ""  # shared by both layers
    text = graph.to_dot()
    _, dot_edges = check_dot(text)
    # the backward chain is drawn right to left: arrows point backwards in time
    assert drawn_direction(dot_edges, "g_3", "g_2") == "back"
    assert drawn_direction(dot_edges, "h_2", "h_3") == "forward"
    for role in ("forward", "backward", "head"):
        assert f'subgraph "cluster_{role}"' in text
    assert graph.loss() == sp.MatAdd(*[sp.MatrixSymbol(f"L_{t}", 1, 1) for t in range(1, 5)])


def test_bidirectional_prefixes_names_two_parts_share():
    def layer(name, state, suffix):
        cell = rs.Cell(name)
        n, m = cell.dims("n m")
        x, h = cell.input("x", m), cell.state(state, n)
        a = cell.define(
            "a", cell.param("W" + suffix, n, n) @ h.prev + cell.param("U" + suffix, n, m) @ x
        )
        cell.update(h, rs.tanh(a))
        return cell

    head = rs.Cell("head")
    n, k = head.dims("n k")
    o = head.output(
        "o",
        head.param("V", k, n) @ head.input("h", n) + head.param("V_g", k, n) @ head.input("g", n),
    )
    head.loss(rs.squared_error(o, head.target("y", k)))
    graph = rs.unroll(rs.bidirectional(layer("f", "h", ""), layer("b", "g", "_g"), head), 2)
    all_names = [n.name for n in graph.nodes]
    assert len(set(all_names)) == len(all_names)
    assert {"forward.a_1", "forward.a_2", "backward.a_1", "backward.a_2"} <= set(all_names)
    e = edges(graph)
    assert e[("g_3", "backward.a_2")] == ("W_g",) and ("backward.a_2", "g_2") in e
    assert e[("h_0", "forward.a_1")] == ("W",) and ("x_1", "backward.a_1") in e
    label = re.search(r'"backward.a_1" \[label="([^"]+)"', graph.to_dot()).group(1)
    assert label == "a(1)"
    check_dot(graph.to_dot())


def test_bidirectional_with_a_copied_backward_layer():
    head = rs.Cell("head")
    n, k = head.dims("n k")
    o = head.param("V", k, n) @ head.input("h", n) + head.param("V_b", k, n) @ head.input("h_b", n)
    head.loss(rs.squared_error(head.output("o", o), head.target("y", k)))
    graph = rs.unroll(rs.bidirectional(elman_layer(), None, head), 3)
    assert ("h_b_3", "h_b_2") in edges(graph) and graph.node("h_b_4").kind == "initial"
    check_dot(graph.to_dot())


# ----- Fig. 8: sequence to sequence -----


def test_seq2seq_context_links_the_encoder_to_the_decoder():
    T_x, T_y = 3, 5
    graph = rs.unroll(rs.cells.get("seq2seq_init"), T_x, T_out=T_y)
    assert graph.T == T_x and graph.T_out == T_y
    assert names(graph, "h") == [f"h_{t}" for t in range(0, T_x + 1)]  # encoder
    assert names(graph, "x") == [f"x_{t}" for t in range(1, T_x + 1)]
    assert names(graph, "s") == [f"s_{t}" for t in range(1, T_y + 1)]  # decoder, no s(0): C
    assert names(graph, "o") == [f"o_{t}" for t in range(1, T_y + 1)]
    assert names(graph, "L") == [f"L_{t}" for t in range(1, T_y + 1)]
    assert names(graph, "C") == ["C"] and graph.node("C").kind == "context"
    e = edges(graph)
    assert e[(f"h_{T_x}", "C")] == ()  # C = h(T_x)
    assert [x.source for x in graph.edges if x.target == "C"] == [f"h_{T_x}"]
    assert e[("C", "s_1")] == ("W_d",)  # C is the decoder's initial state
    assert expr_symbols(graph, "s_1") == {"b_d", "W_d", "C", "U_d", "y_0"}
    for t in range(1, T_y + 1):
        assert e[(f"y_{t - 1}", f"s_{t}")] == ("U_d",)  # the fed-back target
    for t in range(2, T_y + 1):
        assert e[(f"s_{t - 1}", f"s_{t}")] == ("W_d",)
    assert not [x for x in graph.edges if x.source.startswith("h_") and x.target.startswith("s_")]
    text = graph.to_dot()
    nodes, dot_edges = check_dot(text)
    assert "C" in nodes and drawn_direction(dot_edges, "h_3", "C") == "forward"
    assert "T_x = 3, T_y = 5" in text
    # the default decoder length is T + 1
    assert rs.unroll(rs.cells.get("seq2seq_init"), 2).T_out == 3


def test_seq2seq_context_read_at_every_decoder_step_and_clashing_names():
    decoder = rs.Cell("dec")
    n, k = decoder.dims("n k")
    y = decoder.target("y", k)
    h = decoder.state("h", n)  # same name as the encoder's state
    ctx = decoder.context("ctx", n)
    W, U, R = decoder.param("W_d", n, n), decoder.param("U_d", n, k), decoder.param("R", n, n)
    decoder.update(h, rs.tanh(W @ h.prev + U @ y.prev + R @ ctx))
    decoder.loss(rs.squared_error(decoder.output("o", decoder.param("V", k, n) @ h), y))
    model = rs.seq2seq(elman_layer("enc", "h", "_e"), decoder)
    graph = rs.unroll(model, 2, T_out=3)
    all_names = [n.name for n in graph.nodes]
    assert len(set(all_names)) == len(all_names)
    assert "encoder.h_2" in all_names and "decoder.h_0" in all_names  # h(0) = 0 here
    e = edges(graph)
    assert e[("encoder.h_2", "C")] == ()
    for t in (1, 2, 3):
        assert e[("C", f"decoder.h_{t}")] == ("R",)
    check_dot(graph.to_dot())


# ----- Fig. 5: one output at the end -----


def test_last_output_has_its_head_at_T_only():
    T = 4
    graph = rs.unroll(rs.cells.get("last_output"), T)
    assert names(graph, "h") == [f"h_{t}" for t in range(0, T + 1)]
    assert names(graph, "x") == [f"x_{t}" for t in range(1, T + 1)]
    assert names(graph, "o") == [f"o_{T}"] and names(graph, "L") == [f"L_{T}"]
    assert names(graph, "y") == [f"y_{T}"]
    e = edges(graph)
    assert e[(f"h_{T}", f"o_{T}")] == ("V",)
    assert [x for x in graph.edges if x.target == f"o_{T}"] == [graph.edges[-3]]
    for t in range(1, T):
        assert not [x for x in graph.edges if x.source == f"h_{t}" and x.target.startswith("o")]
    text = graph.to_dot()
    check_dot(text)
    assert "at t = 4 only" in text


# ----- errors -----


def test_bad_steps_and_misplaced_T_out():
    with pytest.raises(rs.RnnsymError, match="T_out"):
        rs.unroll(rs.cells.elman(), 2, T_out=3)
    with pytest.raises(rs.RnnsymError, match="T_out"):
        rs.unroll(rs.cells.get("bidirectional"), 2, T_out=3)
    with pytest.raises(rs.RnnsymError, match="T_out >= 1"):
        rs.unroll(rs.cells.get("seq2seq_init"), 2, T_out=0)
    with pytest.raises(rs.RnnsymError, match="T >= 1"):
        rs.unroll(rs.cells.get("last_output"), 0)
    with pytest.raises(rs.RnnsymError, match="Cell or rnnsym.Model"):
        rs.unroll("elman", 2)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
@pytest.mark.parametrize(
    "name", ["bidirectional", "seq2seq", "seq2seq_init", "last_output", "fixed_input"]
)
def test_graphviz_accepts_the_drawings(name, tmp_path):
    out = rs.unroll(rs.cells.get(name), 3).write(tmp_path / f"{name}.svg")
    assert "<svg" in out.read_text()
    run = subprocess.run(
        ["dot", "-Tcanon"],
        input=rs.unroll(rs.cells.get(name), 2).to_dot(),
        text=True,
        capture_output=True,
        check=True,
    )
    assert "Warning" not in run.stderr


def test_the_dot_checker_itself_rejects_broken_text():
    good = rs.unroll(rs.cells.get("last_output"), 2).to_dot()
    check_dot(good)
    with pytest.raises(AssertionError):
        check_dot(good.replace("  }\n", "", 1))  # unbalanced braces
    with pytest.raises(AssertionError):
        check_dot(good.replace('"h_2" -> "o_2"', '"h_9" -> "o_2"'))  # undeclared endpoint
