"""The unrolled computation graph (issue 4, first part): nodes, edges, DOT, CLI."""

from __future__ import annotations

import shutil

import pytest
import sympy as sp

import rnnsym as rs
from rnnsym.cli import main


def test_elman_unrolled_nodes_and_labelled_edges():
    graph = rs.unroll(rs.cells.elman(), 3)
    names = [n.name for n in graph.nodes]
    assert names[0] == "h_0"
    for t in (1, 2, 3):
        assert {f"x_{t}", f"h_{t}", f"o_{t}", f"y_{t}", f"L_{t}"} <= set(names)
    edges = {(e.source, e.target): e.params for e in graph.edges}
    assert edges[("h_1", "h_2")] == ("W",)  # eq. (2): W h(t-1)
    assert edges[("x_2", "h_2")] == ("U",)  # eq. (2): U x(t)
    assert edges[("h_2", "o_2")] == ("V",)  # eq. (4)
    assert edges[("o_3", "L_3")] == () and edges[("y_3", "L_3")] == ()  # eq. (5)
    assert ("h_3", "h_4") not in edges and len(graph.edges) == 3 * 5


def test_node_expressions_are_the_step_in_time_indexed_symbols():
    graph = rs.unroll(rs.cells.elman(), 2)
    h2 = graph.node("h_2").expr
    assert {s.name for s in h2.atoms(sp.MatrixSymbol)} == {"b", "W", "h_1", "U", "x_2"}
    assert "tanh" in sp.sstr(h2)
    assert graph.node("x_1").expr is None


def test_gated_cell_edges_through_concatenation_and_hadamard():
    graph = rs.unroll(rs.cells.mgu(), 1)
    edges = {(e.source, e.target): e.params for e in graph.edges}
    assert edges[("h_0", "f_1")] == ("W_f",)  # W_f [h(t-1); x(t)]
    assert edges[("f_1", "h_1")] == ()  # (1 - f) ∘ h(t-1) + f ∘ g
    indrnn = {(e.source, e.target): e.params for e in rs.unroll(rs.cells.indrnn(), 1).edges}
    assert indrnn[("h_0", "h_1")] == ("u",)  # u ∘ h(t-1)


def test_dot_is_deterministic_and_runs_left_to_right():
    first = rs.unroll(rs.cells.lstm(), 3).to_dot()
    assert first == rs.unroll(rs.cells.lstm(), 3).to_dot()
    assert "rankdir=BT" in first and '{ rank=same; "h_0"; "h_1"; "h_2"; "h_3"; }' in first
    assert '"c_2" -> "c_3"' in first


def test_bad_T_is_rejected():
    with pytest.raises(rs.RnnsymError, match="T >= 1"):
        rs.unroll(rs.cells.elman(), 0)


def test_cli_writes_dot(tmp_path, capsys):
    out = tmp_path / "elman.dot"
    assert main(["graph", "elman", "--T", "4", "-o", str(out)]) == 0
    assert out.read_text().startswith('digraph "elman"')
    assert main(["graph", "elman", "--T", "2"]) == 0
    assert "h_1" in capsys.readouterr().out


def test_cli_svg_without_graphviz_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    code = main(["graph", "elman", "-o", str(tmp_path / "elman.svg")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Graphviz" in err and "elman.dot" in err
    assert (tmp_path / "elman.dot").is_file()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_cli_renders_svg_with_graphviz(tmp_path):
    out = tmp_path / "elman.svg"
    assert main(["graph", "elman", "--T", "3", "-o", str(out)]) == 0
    assert "<svg" in out.read_text()
