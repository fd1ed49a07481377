"""Random data for a cell at concrete sizes: what the checks, the paper's certificate and the
composed models' checks run a kernel on."""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from .cell import Cell
from .ir.explicit import concrete_shape

__all__ = ["random_problem", "concrete_sizes"]


def concrete_sizes(cell: Cell, sizes: dict | None, default) -> dict[sp.Symbol, int]:
    """A value for every size symbol: ``sizes[name]`` if given, else ``default(i)`` for the
    i-th size in name order (distinct sizes catch transposition mistakes)."""
    chosen = {}
    for i, (name, symbol) in enumerate(sorted(cell.size_symbols.items())):
        chosen[symbol] = int((sizes or {}).get(name, default(i)))
    return chosen


def _problem_size(i: int) -> int:
    return 3 + i


def random_problem(
    cell: Cell, sizes: dict[str, int] | None = None, T: int = 5, B: int = 2, seed: int = 0
):
    """Random float64 (params, inputs, targets) for a cell at concrete sizes."""
    rng = np.random.default_rng(seed)
    dims = concrete_sizes(cell, sizes, _problem_size)

    def shape(var):
        return concrete_shape(var.symbol, dims)

    params = {}
    for n, p in cell.params.items():
        rows, cols = shape(p)
        scale = 0.8 / math.sqrt(cols) if cols > 1 else 0.3
        vector = p.symbol.shape[1] == 1  # a vector parameter, not a matrix that has 1 column
        params[n] = rng.normal(0.0, scale, size=(rows,) if vector else (rows, cols))
    inputs = {}
    for n, v in cell.inputs.items():
        if n in cell.fed_back:
            continue  # filled from the targets by the kernel (teacher forcing)
        size = (B, shape(v)[0]) if n in cell.context_inputs else (T, B, shape(v)[0])
        inputs[n] = rng.normal(size=size)
    targets = {}
    for n, v in cell.targets.items():
        if n in cell.class_targets:
            targets[n] = rng.integers(0, shape(v)[0], size=(T, B))
        else:
            targets[n] = rng.normal(size=(T, B, shape(v)[0]))
    return params, inputs, targets
