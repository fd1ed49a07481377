"""The architectures of the report (§3, Figures 4–8; §4, Figures 9–10) as built-in models.

Each is written with the public API only: cells (``rs.Cell``) and, where the architecture runs
cells over different time axes, the composition functions of :mod:`rnnsym.models.compose`. The
figure each one implements is in its docstring; ``rnnsym derive NAME`` derives and verifies it.
"""

from __future__ import annotations

from ..cell import Cell
from ..ir import expr as rx
from ..losses import softmax_cross_entropy, squared_error
from .compose import Model, bidirectional, last_output, seq2seq, stack

__all__ = [
    "teacher_forcing",
    "output_feedback",
    "last_output_model",
    "fixed_input",
    "bidirectional_model",
    "seq2seq_model",
    "seq2seq_init_model",
    "stacked",
    "deep_transition",
    "elman_softmax",
    "elman_layer",
]


def elman_layer(name: str = "elman_layer", state: str = "h", suffix: str = "") -> Cell:
    """The recurrence of eqs. (2)–(3) alone, h(t) = tanh(b + W h(t−1) + U x(t)): a layer."""
    cell = Cell(name)
    n, m = cell.dims("n m")
    x = cell.input("x", m)
    h = cell.state(state, n)
    W = cell.param(f"W{suffix}", n, n)
    U = cell.param(f"U{suffix}", n, m)
    b = cell.param(f"b{suffix}", n)
    cell.update(h, rx.tanh(b + W @ h.prev + U @ x))  # eqs. (2)-(3)
    return cell


def teacher_forcing() -> Cell:
    """Fig. 4 trained with teacher forcing: h(t) = tanh(b + W y(t−1) + U x(t)), o = c + V h.

    The true target y(t−1) is fed where the output o(t−1) would be: the cell has no state, so
    its steps decouple and the kernel computes every step at once, with no backward recurrence.
    """
    cell = Cell("teacher_forcing")
    n, m, k = cell.dims("n m k")
    x, y = cell.input("x", m), cell.target("y", k)
    W, U, b = cell.param("W", n, k), cell.param("U", n, m), cell.param("b", n)
    V, c = cell.param("V", k, n), cell.param("c", k)
    # not eqs. (2)-(3): W reads the target y(t-1) where eq. (2) reads h(t-1)
    h = cell.define("h", rx.tanh(b + W @ y.prev + U @ x))
    o = cell.output("o", c + V @ h)  # eq. (4)
    cell.loss(squared_error(o, y))  # eq. (5)
    return cell


def output_feedback() -> Cell:
    """Fig. 4 free-running: h(t) = tanh(b + W o(t−1) + U x(t)), o(t) = c + V h(t).

    The model's own output is fed back, so o is the recurrent state and training is full BPTT.
    Same parameters as :func:`teacher_forcing`; the gradients differ.
    """
    cell = Cell("output_feedback")
    n, m, k = cell.dims("n m k")
    x = cell.input("x", m)
    o = cell.state("o", k)
    W, U, b = cell.param("W", n, k), cell.param("U", n, m), cell.param("b", n)
    V, c = cell.param("V", k, n), cell.param("c", k)
    # not eqs. (2)-(3): W reads the output o(t-1) where eq. (2) reads h(t-1)
    h = cell.define("h", rx.tanh(b + W @ o.prev + U @ x))
    cell.update(o, c + V @ h)  # eq. (4), the recurrent quantity
    cell.loss(squared_error(o, cell.target("y", k)))  # eq. (5)
    return cell


def fixed_input() -> Cell:
    """Fig. 6: a fixed vector x enters every step through R,
    h(t) = tanh(b + W h(t−1) + R x + U y(t−1)); y(t) is the target at t and the input at t+1.

    Tokens are 1-of-K: y is given as class indices, the loss is softmax cross-entropy
    (*Deep Learning* eqs. 10.18–10.28), as for image captioning.
    """
    cell = Cell("fixed_input")
    n, m, k = cell.dims("n m k")
    x = cell.context("x", m)  # once per sequence (an image's features)
    y = cell.target("y", k, classes=True)
    h = cell.state("h", n)
    W, R, U = cell.param("W", n, n), cell.param("R", n, m), cell.param("U", n, k)
    b, V, c = cell.param("b", n), cell.param("V", k, n), cell.param("c", k)
    cell.update(h, rx.tanh(b + W @ h.prev + R @ x + U @ y.prev))
    o = cell.output("o", c + V @ h)
    cell.loss(softmax_cross_entropy(o, y))
    return cell


def _head(name: str, reads: dict[str, str], classes: bool = False) -> Cell:
    """o(t) = c + Σ V_s s(t) over the states s read, with squared error or softmax CE."""
    head = Cell(name)
    dims = head.dims("n k")
    n, k = dims
    o = head.param("c", k)
    for state, weight in reads.items():
        o = o + head.param(weight, k, n) @ head.input(state, n)
    out = head.output("o", o)
    y = head.target("y", k, classes=classes)
    head.loss(softmax_cross_entropy(out, y) if classes else squared_error(out, y))
    return head


def bidirectional_model() -> Model:
    """Fig. 7: h(t) forward, g(t) backward, o(t) = c + V h(t) + V_g g(t), eq. (5) loss."""
    forward = elman_layer("forward_rnn", "h")
    backward = elman_layer("backward_rnn", "g", "_g")
    head = _head("bidirectional_head", {"h": "V", "g": "V_g"})
    return bidirectional(forward, backward, head, name="bidirectional")


def _decoder(context: bool) -> Cell:
    """s(t) = tanh(b_d + W_d s(t−1) + U_d y(t−1) [+ R_d C]), o(t) = c + V s(t), eq. (5) loss."""
    decoder = Cell("decoder")
    n, k = decoder.dims("n k")
    y = decoder.target("y", k)
    s = decoder.state("s", n)
    W, U, b = decoder.param("W_d", n, n), decoder.param("U_d", n, k), decoder.param("b_d", n)
    V, c = decoder.param("V", k, n), decoder.param("c", k)
    a = b + W @ s.prev + U @ y.prev
    if context:
        a = a + decoder.param("R_d", n, n) @ decoder.context("C", n)
    decoder.update(s, rx.tanh(a))
    o = decoder.output("o", c + V @ s)
    decoder.loss(squared_error(o, y))
    return decoder


def seq2seq_model() -> Model:
    """Fig. 8, seq2seq as in the report: the encoder reads x(1..T_x); its final state is the
    context C, which the decoder reads at every step, s(t) = tanh(b_d + W_d s(t−1) +
    U_d y(t−1) + R_d C), o = c + V s, for T_y ≠ T_x steps from s(0) = 0."""
    return seq2seq(elman_layer("encoder", "h", "_e"), _decoder(True), name="seq2seq")


def seq2seq_init_model() -> Model:
    """Fig. 8 with C as the decoder's initial state s(0) = C (Sutskever et al., 2014) instead of
    an input: s(t) = tanh(b_d + W_d s(t−1) + U_d y(t−1)), o = c + V s."""
    return seq2seq(elman_layer("encoder", "h", "_e"), _decoder(False), name="seq2seq_init")


def last_output_model() -> Model:
    """Fig. 5: an Elman layer reads the sequence; one output o = c + V h(T) at the end, with
    softmax cross-entropy over classes (sentiment analysis)."""
    return last_output(
        elman_layer(), _head("final_head", {"h": "V"}, classes=True), name="last_output"
    )


def stacked() -> Cell:
    """Fig. 9: two Elman layers, h_1 = tanh(b_1 + W_1 h_1(t−1) + U_1 x) and
    h_2 = tanh(b_2 + W_2 h_2(t−1) + U_2 h_1(t)), output o = c + V h_2, eq. (5) loss."""
    top = Cell("elman_top")
    n, m, k = top.dims("n m k")
    x, h = top.input("x", m), top.state("h", n)
    W, U, b = top.param("W", n, n), top.param("U", n, m), top.param("b", n)
    V, c = top.param("V", k, n), top.param("c", k)
    top.update(h, rx.tanh(b + W @ h.prev + U @ x))
    top.loss(squared_error(top.output("o", c + V @ h), top.target("y", k)))
    return stack(elman_layer(), top, name="stacked")


def deep_transition() -> Cell:
    """Fig. 10: input→hidden, hidden→hidden and hidden→output are each a small MLP,
    a(t) = tanh(A x + a_b), r(t) = tanh(W h(t−1) + r_b), h(t) = tanh(P r(t) + Q a(t) + b),
    z(t) = tanh(Z h(t) + z_b), o(t) = c + V z(t)."""
    cell = Cell("deep_transition")
    n, m, k, p = cell.dims("n m k p")
    x, h = cell.input("x", m), cell.state("h", n)
    A, a_b = cell.param("A", p, m), cell.param("a_b", p)
    W, r_b = cell.param("W", p, n), cell.param("r_b", p)
    P, Q, b = cell.param("P", n, p), cell.param("Q", n, p), cell.param("b", n)
    Z, z_b = cell.param("Z", p, n), cell.param("z_b", p)
    V, c = cell.param("V", k, p), cell.param("c", k)
    a = cell.define("a", rx.tanh(A @ x + a_b))  # input -> hidden MLP, first layer
    r = cell.define("r", rx.tanh(W @ h.prev + r_b))  # hidden -> hidden MLP, first layer
    cell.update(h, rx.tanh(P @ r + Q @ a + b))
    z = cell.define("z", rx.tanh(Z @ h + z_b))  # hidden -> output MLP, first layer
    cell.loss(squared_error(cell.output("o", c + V @ z), cell.target("y", k)))
    return cell


def elman_softmax() -> Cell:
    """The Elman cell with softmax cross-entropy over K classes (*Deep Learning* eqs.
    10.18–10.28): next-token prediction on 1-of-K vectors, as in ``rnnsym demo apple``."""
    cell = Cell("elman_softmax")
    n, k = cell.dims("n k")
    x, h = cell.input("x", k), cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, k), cell.param("b", n)
    V, c = cell.param("V", k, n), cell.param("c", k)
    cell.update(h, rx.tanh(b + W @ h.prev + U @ x))  # eqs. (2)-(3)
    o = cell.output("o", c + V @ h)  # eq. (4)
    cell.loss(softmax_cross_entropy(o, cell.target("y", k, classes=True)))
    return cell
