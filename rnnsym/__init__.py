"""rnnsym: derive, generate and verify back-propagation through time for recurrent cells."""

from __future__ import annotations

from . import cells
from ._version import __version__  # noqa: F401 - rnnsym.__version__
from .braket import SequenceForm, braket
from .cell import Cell
from .derive import Derivation, derive
from .errors import CellError, DerivationError, RnnsymError, ShapeError
from .flow import gradient_flow
from .ir.expr import (
    Term,
    concat,
    elementwise,
    exp,
    log,
    log_sigmoid,
    relu,
    sigmoid,
    softplus,
    sqrt,
    tanh,
)
from .losses import linear_loss, softmax_cross_entropy, squared_error
from .models.compose import Model, ModelKernel, bidirectional, generate, last_output, seq2seq, stack
from .models.nested import NestedModel, NestedSeq2Seq, SequenceLayer
from .paper import paper_document
from .unroll import unroll

# after this import the name `verify` is the function, not the submodule rnnsym.verify
from .verify import verify

__all__ = [
    "Cell",
    "Term",
    "Derivation",
    "derive",
    "unroll",
    "paper_document",
    "braket",
    "SequenceForm",
    "stack",
    "bidirectional",
    "seq2seq",
    "last_output",
    "generate",
    "Model",
    "ModelKernel",
    "compile",
    "check_gradients",
    "verify",
    "gradient_flow",
    "cells",
    "elementwise",
    "concat",
    "tanh",
    "sigmoid",
    "relu",
    "softplus",
    "exp",
    "log",
    "log_sigmoid",
    "sqrt",
    "squared_error",
    "linear_loss",
    "softmax_cross_entropy",
    "RnnsymError",
    "CellError",
    "ShapeError",
    "DerivationError",
]


def compile(  # noqa: A001 - the public name
    cell: Cell | Model,
    mode: str = "reverse",
    backend: str = "numpy",
    truncate: int | None = None,
    schedule: str = "auto",
):
    """Derive ``cell`` (or a composed model) and generate, import and return its kernel.

    ``mode="reverse"`` (the default) computes gradients by back-propagation through time;
    ``mode="forward"`` by forward sensitivity propagation (real-time recurrent learning), whose
    memory does not grow with the sequence length. ``backend`` is ``"numpy"`` (the default),
    ``"torch"``, ``"jax"`` or ``"numba"``: the same kernel printed for that framework, with
    the same functions and the same (T, B, size) layout. ``truncate=k`` gives truncated BPTT:
    each step's loss back-propagates through at most k steps (k ≥ T is full BPTT exactly).
    ``schedule="auto"`` (the default) computes the recurrences of the linear states,
    h(t) = a(t) ∘ h(t−1) + b(t) (``derive(cell).linear_states``), by parallel scans over t and
    the others by a loop over t; ``"scan"`` insists on a scan (an error says why no state is
    linear), ``"sequential"`` forces the loop for every state. ``kernel.schedule`` says which
    one was taken and ``kernel.scanned`` which states the scans compute.
    """
    from .kernel import compile_cell

    if schedule != "auto" and (truncate is not None or not isinstance(cell, Cell)):
        raise ValueError(
            f"schedule={schedule!r} is for a cell compiled whole; truncated BPTT and composed "
            "models choose the schedule of each cell themselves (schedule='auto')"
        )

    if truncate is not None:
        if isinstance(cell, Model):
            raise ValueError(
                f"truncate={truncate!r}: truncated BPTT is for a cell; {cell.name!r} is a "
                f"composed model ({cell.kind})"
            )
        from .truncate import compile_truncated

        return compile_truncated(cell, truncate, mode=mode, backend=backend)
    if isinstance(cell, NestedModel | NestedSeq2Seq | SequenceLayer):
        if isinstance(cell, SequenceLayer):
            raise ValueError(
                "this is a layer without a head; give it one to compile it: "
                "rs.stack(layer, ..., head=cell) or rs.bidirectional(f, b, head=cell)"
            )
        if mode != "reverse" or backend != "numpy":
            raise ValueError(
                f"mode={mode!r}, backend={backend!r}: a nested model is compiled for NumPy in "
                f"reverse mode only"
            )
        return cell.compile()
    if isinstance(cell, Model):
        if mode != "reverse" or backend != "numpy":
            raise ValueError(
                f"mode={mode!r}, backend={backend!r}: a composed model ({cell.kind}) is "
                f"compiled for NumPy in reverse mode only"
            )
        return cell.compile()
    return compile_cell(cell, mode=mode, backend=backend, schedule=schedule)


def check_gradients(kernel, params, inputs, targets, h0=None, **options):
    """Central finite differences of ``kernel``'s loss against its gradients, per parameter."""
    from .verify import check_gradients as _check

    return _check(kernel, params, inputs, targets, h0=h0, **options)
