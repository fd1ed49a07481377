"""Second order: Hessian- and Gauss–Newton-vector products of a cell's total loss.

``hvp(cell_or_kernel, params, inputs, targets, v)`` returns H v, the Hessian of the total loss
L(θ) = Σ_t ℓ(t) w.r.t. the parameters applied to a direction v (a dict with the parameters'
keys and shapes); ``gnvp`` returns G v = Σ_t J_tᵀ H_ℓ(t) J_t v, the Gauss–Newton matrix (J_t:
the Jacobian of what ℓ(t) reads w.r.t. θ, H_ℓ(t): ℓ's Hessian in those quantities), positive
semi-definite when ℓ is convex in them. Both are the generated NumPy kernels of the tangent
cell (:mod:`rnnsym.tangent`): its forward pass carries ḣ = Dh[v] (the second-order
recurrence), and reverse mode over it gives H v (w.r.t. θ) or G v (w.r.t. v).
``second_order_derivation(cell)`` is the derivation of that cell, printable as text and LaTeX;
``cli_order2`` is ``rnnsym derive CELL --order 2``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import weakref

import numpy as np

from .backends.base import Kernel
from .cell import Cell
from .derive import Derivation
from .errors import CellError
from .kernel import compile_cell
from .problems import random_problem

__all__ = [
    "hvp",
    "gnvp",
    "second_order_derivation",
    "finite_difference_hvp",
    "hvp_error",
    "cli_order2",
]

_KERNELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _kernel(cell_or_kernel) -> Kernel:
    if isinstance(cell_or_kernel, Kernel):
        return cell_or_kernel
    if isinstance(cell_or_kernel, Cell):
        kernel = _KERNELS.get(cell_or_kernel)
        if kernel is None:
            kernel = _KERNELS[cell_or_kernel] = compile_cell(cell_or_kernel)
        return kernel
    raise TypeError(
        f"expected an rnnsym.Cell or a kernel from rs.compile, got "
        f"{type(cell_or_kernel).__name__} {cell_or_kernel!r}"
    )


def hvp(
    cell_or_kernel, params: dict, inputs: dict, targets: dict, v: dict, h0=None, lengths=None
) -> dict:
    """H v: the Hessian of the total loss w.r.t. the parameters times the direction ``v``
    (keys and shapes of ``params``); see :meth:`rnnsym.backends.base.Kernel.hvp`."""
    return _kernel(cell_or_kernel).hvp(params, inputs, targets, v, h0, lengths)


def gnvp(
    cell_or_kernel, params: dict, inputs: dict, targets: dict, v: dict, h0=None, lengths=None
) -> dict:
    """G v: the Gauss–Newton matrix of the total loss times the direction ``v``; see
    :meth:`rnnsym.backends.base.Kernel.gnvp`."""
    return _kernel(cell_or_kernel).gnvp(params, inputs, targets, v, h0, lengths)


def second_order_derivation(cell_or_kernel, kind: str = "hvp") -> Derivation:
    """The derivation of the tangent cell: the forward recurrence of h and ḣ = Dh[v] (the
    second-order recurrence), the loss's derivative along v (``kind="hvp"``) or half its
    second derivative (``"gnvp"``), and the BPTT of that loss, whose parameter gradients are
    H v (or whose direction gradients are G v). ``.pretty()`` is text, ``.latex()`` LaTeX."""
    kernel, made = _kernel(cell_or_kernel).second_order_kernel(kind)
    if kernel is None:
        raise ValueError(
            f"the loss of cell {made.source.name!r} is linear in what it reads: its "
            f"Gauss–Newton matrix is zero and has no derivation"
        )
    d = kernel.derivation
    # the cell's own updates and outputs are the report's equations where they were; the
    # gradients of the tangent cell's loss (the derivative of L along v) are not eqs. (6)-(9)
    forward = {eq.key for eq in d.forward if eq.key != "L"}
    labels = {key: (label if key in forward else "") for key, label in d.labels.items()}
    return dataclasses.replace(d, labels=labels)


def finite_difference_hvp(
    kernel: Kernel,
    params: dict,
    inputs: dict,
    targets: dict,
    v: dict,
    eps: float,
    h0=None,
    lengths=None,
) -> dict:
    """(∇L(θ + εv) − ∇L(θ − εv)) / (2ε): the central difference of the generated gradient
    along v, which approximates H v with an error O(ε²) (and roundoff O(|∇L| u / ε))."""
    plus = {n: np.asarray(p) + eps * np.asarray(v[n]) for n, p in params.items()}
    minus = {n: np.asarray(p) - eps * np.asarray(v[n]) for n, p in params.items()}
    _, g_plus = kernel.loss_and_grad(plus, inputs, targets, h0, lengths)
    _, g_minus = kernel.loss_and_grad(minus, inputs, targets, h0, lengths)
    return {n: (g_plus[n] - g_minus[n]) / (2 * eps) for n in params}


def hvp_error(reference: dict, value: dict) -> float:
    """max over parameters of ‖value − reference‖_∞ / max(‖reference‖_∞ over all, 1e-300)."""
    scale = max(max(float(np.max(np.abs(a))) for a in reference.values()), 1e-300)
    return max(float(np.max(np.abs(value[n] - reference[n]))) for n in reference) / scale


# ε = 1e-5: the central difference's truncation error is ~ε²‖∂³L‖ ≈ 1e-10 and its roundoff
# ~u‖∇L‖/ε ≈ 1e-11 for the O(1) losses of random_problem (u = 2.2e-16), both far below 1e-6
FD_EPS = 1e-5
FD_TOLERANCE = 1e-6


def cli_order2(cell: Cell, args: argparse.Namespace) -> int:
    """``rnnsym derive CELL --order 2``: print the derivation of the tangent cell (LaTeX with
    ``args.latex``), then check H v against finite differences of the gradient along a random
    v on a random problem (sizes 2, 3, ..., T = ``args.T`` or 4, B = 2); 0 if it agrees to
    1e-6 relative, else 1."""
    if not isinstance(cell, Cell):
        raise CellError(
            f"--order 2 derives the second order of a cell; {getattr(cell, 'name', cell)!r} is "
            f"a {type(cell).__name__} (composed models have no tangent cell yet)"
        )
    latex = bool(getattr(args, "latex", False))
    out = sys.stdout
    kernel = _kernel(cell)
    derivation = second_order_derivation(kernel, "hvp")
    made = kernel.second_order_kernel("hvp")[1]
    directions = ", ".join(f"{p} → {d}" for p, d in made.directions.items())
    tangents = ", ".join(f"{q} → {d}" for q, d in made.tangents.items())
    intro = [
        f"Second order of cell {cell.name!r}: the tangent cell {made.cell.name!r}.",
        f"Directions: {directions}.",
        f"Tangents (ḣ = Dh[v], zero at t = 0): {tangents}.",
        "Its loss is the derivative of the loss along v; its parameter gradients are H v.",
    ]
    comment = "% " if latex else ""
    out.write("".join(f"{comment}{line}\n" for line in intro) + "\n")
    out.write((derivation.latex() if latex else derivation.pretty()) + "\n\n")
    T = int(getattr(args, "T", None) or 4)
    params, inputs, targets = random_problem(
        cell, {name: 2 + i for i, name in enumerate(sorted(cell.size_symbols))}, T=T, B=2
    )
    rng = np.random.default_rng(1)
    v = {n: rng.normal(size=np.shape(p)) for n, p in params.items()}
    value = kernel.hvp(params, inputs, targets, v)
    reference = finite_difference_hvp(kernel, params, inputs, targets, v, FD_EPS)
    error = hvp_error(reference, value)
    ok = error <= FD_TOLERANCE
    verdict = "agrees with" if ok else "DIFFERS from"
    out.write(
        f"{comment}H v {verdict} central differences of the gradient along v "
        f"(eps = {FD_EPS:g}, T = {T}, B = 2): relative error {error:.1e} "
        f"(tolerance {FD_TOLERANCE:g})\n"
    )
    return 0 if ok else 1
