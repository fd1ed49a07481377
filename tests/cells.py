"""A catalogue of cells beyond Elman that exercise the engine: several states, a state update
using a state of the same step, gates, interpolation 1 - z, linear loss, user activations.

These are test fixtures defined with the public API only (the built-in gated cells are a
later issue).
"""

from __future__ import annotations

import sympy as sp

import rnnsym as rs


def lstm_like() -> rs.Cell:
    """Two states; h(t) uses c(t) of the same step."""
    cell = rs.Cell("lstm_like")
    n, m, k = cell.dims("n m k")
    x = cell.input("x", m)
    h, c = cell.state("h", n), cell.state("c", n)
    gates = {}
    for g, act in (("i", rs.sigmoid), ("f", rs.sigmoid), ("o", rs.sigmoid), ("z", rs.tanh)):
        W, U, b = cell.param(f"W{g}", n, n), cell.param(f"U{g}", n, m), cell.param(f"b{g}", n)
        gates[g] = act(b + W @ h.prev + U @ x)
    cell.update(c, gates["f"] * c.prev + gates["i"] * gates["z"])
    cell.update(h, gates["o"] * rs.tanh(c))
    V = cell.param("V", k, n)
    cell.loss(rs.squared_error(cell.output("out", V @ h), cell.target("y", k)))
    return cell


def gru_like() -> rs.Cell:
    """Reset gate inside the matrix product, interpolation (1 - z) h(t-1) + z ĥ, linear loss."""
    cell = rs.Cell("gru_like")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    Wz, Uz, Wr, Ur, Wh, Uh = (
        cell.param(name, n, size)
        for name, size in (("Wz", n), ("Uz", m), ("Wr", n), ("Ur", m), ("Wh", n), ("Uh", m))
    )
    z = rs.sigmoid(Wz @ h.prev + Uz @ x)
    r = rs.sigmoid(Wr @ h.prev + Ur @ x)
    candidate = rs.tanh(Wh @ (r * h.prev) + Uh @ x)
    cell.update(h, (1 - z) * h.prev + z * candidate)
    cell.loss(rs.linear_loss(cell.target("d", n), h))
    return cell


smooth_softsign = rs.elementwise("smooth_softsign_catalogue", lambda z: z / sp.sqrt(1 + z**2))


def leaky_user_activation() -> rs.Cell:
    """A user activation, a float literal and relu in one update."""
    cell = rs.Cell("leaky")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U = cell.param("W", n, n), cell.param("U", n, m)
    cell.update(h, 0.5 * h.prev + smooth_softsign(W @ h.prev + U @ x) + 0.1 * rs.relu(U @ x))
    cell.loss(rs.squared_error(h, cell.target("y", n)))
    return cell


CATALOGUE = {f.__name__: f for f in (lstm_like, gru_like, leaky_user_activation)}
