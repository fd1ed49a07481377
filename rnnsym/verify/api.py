"""``rs.verify``: the scalar oracle and the kernel checks of a cell (or a model), as one report."""

from __future__ import annotations

from ..cell import Cell
from ..derive import Derivation, derive
from ..display import attach_certificate
from ..kernel import compile_cell
from ..models.compose import Model
from .kernel_check import check_kernel
from .models import verify_model
from .report import VerificationReport
from .symbolic import ORACLE_T, scalar_oracle

LONG_ORACLE_T = 8  # the scalar oracle's cost grows with T; warn above this


def verify(
    cell: Cell,
    kernel=None,
    T: int | None = None,
    seed: int = 0,
    oracle: bool = True,
    directions: int = 2,
    input_scale: float = 1.0,
) -> VerificationReport:
    """Check a cell's derivation and a kernel for it; the report ``rnnsym verify`` prints.

    ``kernel`` is a compiled kernel or any object with ``loss_and_grad(params, inputs,
    targets, h0)``, ``forward(params, inputs, h0)`` and (optionally) ``vjp(...)``; it is only
    called through them. Default: ``rs.compile(cell)``. ``T`` is the scalar oracle's number of
    steps (default ``ORACLE_T``; ``oracle=False`` skips the oracle); the kernel is checked at
    random distinct sizes ≥ 7, T in 8..11, B in 3..4 and a random nonzero h(0), in float64 and
    float32 (drawn from ``seed``), see docs/verification.md.

    A composed model (``rs.bidirectional``, ``rs.seq2seq``, ``rs.last_output``) is checked by
    :func:`verify_model` (``T`` and ``seed`` passed on).
    """

    if isinstance(cell, Model):
        return verify_model(cell, kernel=kernel, T=T, seed=seed)
    if not isinstance(cell, Cell):
        raise TypeError(f"verify: expected an rnnsym.Cell, got {type(cell).__name__}")
    if T is None:
        T = ORACLE_T
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"verify: T={T!r} steps for the scalar oracle; expected an integer ≥ 1")
    if kernel is None:
        kernel = compile_cell(cell)
    missing = [m for m in ("loss_and_grad", "forward") if not callable(getattr(kernel, m, None))]
    if missing:
        raise TypeError(
            f"verify: the kernel {type(kernel).__name__} has no {', '.join(missing)}(); expected "
            f"loss_and_grad(params, inputs, targets, h0) and forward(params, inputs, h0)"
        )
    notes = []
    oracle_report = None
    if oracle:
        derivation = getattr(kernel, "derivation", None)
        if not isinstance(derivation, Derivation) or derivation.cell is not cell:
            derivation = derive(cell)
        oracle_report = scalar_oracle(cell, T=T, seed=seed, derivation=derivation)
        if T > LONG_ORACLE_T:
            notes.append(f"(the scalar oracle ran at T={T}; its cost grows fast with T)")
    kernel_report = check_kernel(
        cell, kernel, seed=seed, directions=directions, input_scale=input_scale
    )
    report = VerificationReport(oracle=oracle_report, notes=notes, kernel=kernel_report)
    attach_certificate(kernel, cell, report)  # replaces check_kernel's with the whole report
    return report
