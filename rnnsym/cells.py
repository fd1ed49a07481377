"""Built-in cells, each defined with the public :class:`~rnnsym.Cell` API only.

The gated cells use PyTorch's parameter layout where PyTorch has the cell (stacked gate weights
``W_ih``, ``W_hh`` and two biases, gates in PyTorch's order), so weights move between the two
unchanged. Every cell ends in a linear output ``V h + b_V`` (``c + V h`` for the report's Elman
cell) and the squared-error loss of eq. (5), except ``slides``: the lecture slides' model with
the loss Σ_t ⟨d(t)|h(t)⟩ linear in the states.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .cell import Cell
from .errors import CellError
from .ir import expr as rx
from .losses import linear_loss, squared_error

__all__ = [
    "elman",
    "elman_relu",
    "slides",
    "lstm",
    "lstm_peephole",
    "gru",
    "gru_original",
    "mgu",
    "indrnn",
    "min_gru",
    "min_lstm",
    "rg_lru",
    "BUILTIN",
    "MODELS",
    "get",
]


def elman(output: bool = True) -> Cell:
    """The Elman RNN of the report, eqs. (2)–(5), with the squared-error loss.

    ``output=False``: the recurrent layer alone, eqs. (2)–(3) (no output, target or loss), a
    layer for ``rs.stack`` and ``rs.bidirectional``; so for every built-in cell below.
    """
    cell = Cell("elman" if output else "elman_layer")
    n, m = cell.dims("n m")
    x = cell.input("x", m)
    h = cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    cell.update(h, rx.tanh(b + W @ h.prev + U @ x))  # eqs. (2)-(3)
    if output:
        k = cell.dims("k")
        V, c = cell.param("V", k, n), cell.param("c", k)
        o = cell.output("o", c + V @ h)  # eq. (4)
        cell.loss(squared_error(o, cell.target("y", k)))  # eq. (5), summed over t
    return cell


def elman_relu() -> Cell:
    """The Elman RNN with ReLU, as torch.nn.RNN(nonlinearity="relu")."""
    cell = Cell("elman_relu")
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    V, c = cell.param("V", k, n), cell.param("c", k)
    cell.update(h, rx.relu(b + W @ h.prev + U @ x))
    cell.loss(squared_error(cell.output("o", c + V @ h), cell.target("y", k)))
    return cell


def slides() -> Cell:
    """The lecture slides' RNN: h = tanh(J_x x + J_h h(t-1)), loss Σ_t ⟨d(t)|h(t)⟩."""
    cell = Cell("slides")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    J_x, J_h = cell.param("J_x", n, m), cell.param("J_h", n, n)
    cell.update(h, rx.tanh(J_x @ x + J_h @ h.prev))  # |h(t)⟩ = σ(𝕁_x|x(t)⟩ + 𝕁_h|h(t−1)⟩)
    cell.loss(linear_loss(cell.target("d", n), h))  # L = Σ_t ⟨d(t)|h(t)⟩
    return cell


def _output_layer(cell: Cell, h, n, output: bool) -> None:
    if not output:
        return
    k = cell.dims("k")
    V, b_V = cell.param("V", k, n), cell.param("b_V", k)
    out = cell.output("out", V @ h + b_V)
    cell.loss(squared_error(out, cell.target("y", k)))


def _lstm(name: str, peepholes: bool, output: bool = True) -> Cell:
    cell = Cell(name if output else f"{name}_layer")
    n, m = cell.dims("n m")
    x = cell.input("x", m)
    h, c = cell.state("h", n), cell.state("c", n)
    W_ih, W_hh = cell.param("W_ih", 4 * n, m), cell.param("W_hh", 4 * n, n)
    b_ih, b_hh = cell.param("b_ih", 4 * n), cell.param("b_hh", 4 * n)
    # gates stacked as in torch.nn.LSTM: input, forget, cell candidate, output
    a = cell.define("a", W_ih @ x + b_ih + W_hh @ h.prev + b_hh)
    a_i, a_f, a_g, a_o = a[0:n], a[n : 2 * n], a[2 * n : 3 * n], a[3 * n : 4 * n]
    if peepholes:  # Gers & Schmidhuber: the gates also see the cell state
        p_i, p_f, p_o = cell.param("p_i", n), cell.param("p_f", n), cell.param("p_o", n)
        i = cell.define("i", rx.sigmoid(a_i + p_i * c.prev))
        f = cell.define("f", rx.sigmoid(a_f + p_f * c.prev))
    else:
        i = cell.define("i", rx.sigmoid(a_i))
        f = cell.define("f", rx.sigmoid(a_f))
    g = cell.define("g", rx.tanh(a_g))
    cell.update(c, f * c.prev + i * g)
    o = cell.define("o", rx.sigmoid(a_o + p_o * c if peepholes else a_o))
    cell.update(h, o * rx.tanh(c))
    _output_layer(cell, h, n, output)
    return cell


def lstm(output: bool = True) -> Cell:
    """LSTM with torch.nn.LSTM's layout: W_ih (4n, m), W_hh (4n, n), gates i, f, g, o."""
    return _lstm("lstm", peepholes=False, output=output)


def lstm_peephole(output: bool = True) -> Cell:
    """LSTM with peephole connections p_i, p_f (to c(t-1)) and p_o (to c(t))."""
    return _lstm("lstm_peephole", peepholes=True, output=output)


def gru(output: bool = True) -> Cell:
    """GRU as torch.nn.GRU and cuDNN: the reset gate applied after the matrix product."""
    cell = Cell("gru" if output else "gru_layer")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W_ih, W_hh = cell.param("W_ih", 3 * n, m), cell.param("W_hh", 3 * n, n)
    b_ih, b_hh = cell.param("b_ih", 3 * n), cell.param("b_hh", 3 * n)
    # gates stacked as in torch.nn.GRU: reset, update, new
    a_x = cell.define("a_x", W_ih @ x + b_ih)
    a_h = cell.define("a_h", W_hh @ h.prev + b_hh)
    r = cell.define("r", rx.sigmoid(a_x[0:n] + a_h[0:n]))
    z = cell.define("z", rx.sigmoid(a_x[n : 2 * n] + a_h[n : 2 * n]))
    g = cell.define("g", rx.tanh(a_x[2 * n : 3 * n] + r * a_h[2 * n : 3 * n]))
    cell.update(h, (1 - z) * g + z * h.prev)
    _output_layer(cell, h, n, output)
    return cell


def gru_original(output: bool = True) -> Cell:
    """GRU of Cho et al. (2014): the reset gate applied to h(t-1) before the product."""
    cell = Cell("gru_original" if output else "gru_original_layer")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W_r, W_z, W_g = (cell.param(f"W_{s}", n, n + m) for s in "rzg")
    b_r, b_z, b_g = (cell.param(f"b_{s}", n) for s in "rzg")
    r = cell.define("r", rx.sigmoid(W_r @ rx.concat(h.prev, x) + b_r))
    z = cell.define("z", rx.sigmoid(W_z @ rx.concat(h.prev, x) + b_z))
    g = cell.define("g", rx.tanh(W_g @ rx.concat(r * h.prev, x) + b_g))
    cell.update(h, (1 - z) * g + z * h.prev)
    _output_layer(cell, h, n, output)
    return cell


def mgu(output: bool = True) -> Cell:
    """Minimal gated unit (Zhou et al. 2016): one forget gate f."""
    cell = Cell("mgu" if output else "mgu_layer")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W_f, W_g = cell.param("W_f", n, n + m), cell.param("W_g", n, n + m)
    b_f, b_g = cell.param("b_f", n), cell.param("b_g", n)
    f = cell.define("f", rx.sigmoid(W_f @ rx.concat(h.prev, x) + b_f))
    g = cell.define("g", rx.tanh(W_g @ rx.concat(f * h.prev, x) + b_g))
    cell.update(h, (1 - f) * h.prev + f * g)
    _output_layer(cell, h, n, output)
    return cell


def indrnn(output: bool = True) -> Cell:
    """IndRNN (Li et al. 2018): each unit sees only its own past, h = relu(W x + u ∘ h(t-1) + b)."""
    cell = Cell("indrnn" if output else "indrnn_layer")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W, u, b = cell.param("W", n, m), cell.param("u", n), cell.param("b", n)
    cell.update(h, rx.relu(W @ x + u * h.prev + b))
    _output_layer(cell, h, n, output)
    return cell


def min_gru(output: bool = True) -> Cell:
    """minGRU (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, "Were RNNs All We Needed?",
    arXiv:2410.01201, 2024): the GRU with gates and candidate read from x(t) alone.

    z = σ(W_z x + b_z), h̃ = W_h x + b_h, h(t) = (1 − z) ∘ h(t−1) + z ∘ h̃: linear in h(t−1)
    with a coefficient free of any state, so its kernel is a scan over t.
    """
    cell = Cell("min_gru" if output else "min_gru_layer")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W_z, W_h = cell.param("W_z", n, m), cell.param("W_h", n, m)
    b_z, b_h = cell.param("b_z", n), cell.param("b_h", n)
    z = cell.define("z", rx.sigmoid(W_z @ x + b_z))
    h_tilde = cell.define("h_tilde", W_h @ x + b_h)
    cell.update(h, (1 - z) * h.prev + z * h_tilde)
    _output_layer(cell, h, n, output)
    return cell


def min_lstm(output: bool = True) -> Cell:
    """minLSTM (Feng et al., "Were RNNs All We Needed?", arXiv:2410.01201, 2024): forget and
    input gates from x(t) alone, normalised to sum to one.

    f = σ(a_f), i = σ(a_i) with a_f = W_f x + b_f, a_i = W_i x + b_i; h̃ = W_h x + b_h;
    h(t) = f′ ∘ h(t−1) + i′ ∘ h̃ with f′ = f / (f + i), i′ = i / (f + i). Cell terms divide
    by scalars only, so the normalised gates are written with the exact identity
    f / (f + i) = 1 / (1 + i / f) = σ(log f − log i): with d = log σ(a_f) − log σ(a_i),
    f′ = σ(d) and i′ = σ(−d) (log σ computed as −softplus(−a), finite for any a).
    """
    cell = Cell("min_lstm" if output else "min_lstm_layer")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W_f, W_i, W_h = (cell.param(f"W_{s}", n, m) for s in "fih")
    b_f, b_i, b_h = (cell.param(f"b_{s}", n) for s in "fih")
    a_f = cell.define("a_f", W_f @ x + b_f)
    a_i = cell.define("a_i", W_i @ x + b_i)
    d = cell.define("d", rx.log_sigmoid(a_f) - rx.log_sigmoid(a_i))  # log f − log i
    f_prime = cell.define("f_prime", rx.sigmoid(d))  # f / (f + i)
    i_prime = cell.define("i_prime", rx.sigmoid(-d))  # i / (f + i)
    h_tilde = cell.define("h_tilde", W_h @ x + b_h)
    cell.update(h, f_prime * h.prev + i_prime * h_tilde)
    _output_layer(cell, h, n, output)
    return cell


def rg_lru(output: bool = True) -> Cell:
    """The real-gated linear recurrent unit (RG-LRU) of Griffin and Hawk (De et al., "Griffin:
    Mixing Gated Linear Recurrences with Local Attention for Efficient Language Models",
    arXiv:2402.19427, 2024), eqs. (1)–(4).

    r = σ(W_a x + b_a), i = σ(W_x x + b_x), log a(t) = −c r ∘ softplus(−Λ) with c = 8 (so
    a(t) = σ(Λ)^(c r), computed in log space as the paper does), h(t) = a ∘ h(t−1) +
    sqrt(1 − a ∘ a) ∘ (i ∘ x). The input x has the state's size n.
    """
    cell = Cell("rg_lru" if output else "rg_lru_layer")
    n = cell.dims("n")
    x, h = cell.input("x", n), cell.state("h", n)
    W_a, W_x = cell.param("W_a", n, n), cell.param("W_x", n, n)
    b_a, b_x = cell.param("b_a", n), cell.param("b_x", n)
    Lambda = cell.param("Lambda", n)
    r = cell.define("r", rx.sigmoid(W_a @ x + b_a))  # recurrence gate
    i = cell.define("i", rx.sigmoid(W_x @ x + b_x))  # input gate
    log_a = cell.define("log_a", -8 * (r * rx.softplus(-Lambda)))  # c = 8
    a = cell.define("a", rx.exp(log_a))
    cell.update(h, a * h.prev + rx.sqrt(1 - a * a) * (i * x))
    _output_layer(cell, h, n, output)
    return cell


@dataclass(frozen=True)
class Builtin:
    """A built-in cell (or model) and the report's figure it draws, if any."""

    make: Callable[[], Cell]
    figure: str = ""  # the report's figure, for the architectures


BUILTIN: dict[str, Builtin] = {
    "elman": Builtin(elman),
    "elman_relu": Builtin(elman_relu),
    "slides": Builtin(slides),
    "indrnn": Builtin(indrnn),
    "min_gru": Builtin(min_gru),
    "min_lstm": Builtin(min_lstm),
    "rg_lru": Builtin(rg_lru),
    "mgu": Builtin(mgu),
    "gru": Builtin(gru),
    "gru_original": Builtin(gru_original),
    "lstm": Builtin(lstm),
    "lstm_peephole": Builtin(lstm_peephole),
}


def _architectures() -> None:
    from .models import architectures as a

    BUILTIN.update(
        {
            "teacher_forcing": Builtin(a.teacher_forcing, "Fig. 4, teacher forcing"),
            "output_feedback": Builtin(a.output_feedback, "Fig. 4, free-running"),
            "fixed_input": Builtin(a.fixed_input, "Fig. 6"),
            "stacked": Builtin(a.stacked, "Fig. 9"),
            "deep_transition": Builtin(a.deep_transition, "Fig. 10"),
            "elman_softmax": Builtin(a.elman_softmax, "rnnsym demo apple"),
        }
    )
    MODELS.update(
        {
            "last_output": Builtin(a.last_output_model, "Fig. 5"),
            "bidirectional": Builtin(a.bidirectional_model, "Fig. 7"),
            "seq2seq": Builtin(a.seq2seq_model, "Fig. 8, as in the report: C read at every step"),
            "seq2seq_init": Builtin(a.seq2seq_init_model, "Fig. 8 with C as the decoder's s(0)"),
        }
    )


# the architectures made of several cells (rs.Model), by name
MODELS: dict[str, Builtin] = {}


def get(name: str):
    """A fresh instance of the built-in cell ``name``, or of the built-in model (``MODELS``)."""
    entry = builtin(name)
    if entry is None:
        raise CellError(
            f"unknown built-in cell {name!r}; available: {', '.join(sorted([*BUILTIN, *MODELS]))}"
        )
    return entry.make()


def builtin(name: str) -> Builtin | None:
    """The registry entry of a built-in cell or model."""
    return BUILTIN.get(name) or MODELS.get(name)


_architectures()
