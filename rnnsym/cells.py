"""Built-in cells, each defined with the public :class:`~rnnsym.Cell` API only."""

from __future__ import annotations

from collections.abc import Callable

from . import expr as rx
from .cell import Cell
from .errors import CellError
from .losses import squared_error

__all__ = ["elman", "BUILTIN", "get"]


def elman() -> Cell:
    """The Elman RNN of the report, eqs. (2)–(5), with the squared-error loss."""
    cell = Cell("elman")
    n, m, k = cell.dims("n m k")
    x = cell.input("x", m)
    h = cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    V, c = cell.param("V", k, n), cell.param("c", k)
    cell.update(h, rx.tanh(b + W @ h.prev + U @ x))  # eqs. (2)-(3)
    o = cell.output("o", c + V @ h)  # eq. (4)
    cell.loss(squared_error(o, cell.target("y", k)))  # eq. (5), summed over t
    return cell


BUILTIN: dict[str, Callable[[], Cell]] = {"elman": elman}


def get(name: str) -> Cell:
    """A fresh instance of the built-in cell ``name``."""
    try:
        return BUILTIN[name]()
    except KeyError:
        raise CellError(
            f"unknown built-in cell {name!r}; available: {', '.join(sorted(BUILTIN))}"
        ) from None
