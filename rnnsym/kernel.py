"""Compile a cell to a kernel: derive, generate the module source for a backend, import it."""

from __future__ import annotations

import importlib
import importlib.util

from .backends.base import Kernel
from .backends.numpy import generate_module
from .backends.scan import SCHEDULES, choose_schedule, generate_scan_module
from .cell import Cell
from .derive import derive

__all__ = ["Kernel", "compile_cell", "MODES", "BACKENDS", "SCHEDULES", "SCAN_BACKENDS"]

# the backends that generate the scan schedule
SCAN_BACKENDS = ("numpy", "torch", "jax")

MODES = ("reverse", "forward")

# backend -> (module that prints and loads its kernels, the framework it needs, the extra)
BACKENDS = {
    "numpy": ("rnnsym.backends.numpy", "numpy", None),
    "torch": ("rnnsym.backends.torch", "torch", "torch"),
    "jax": ("rnnsym.backends.jax", "jax", "jax"),
    "numba": ("rnnsym.backends.numba", "numba", "numba"),
}


def backend_module(backend: str):
    """The module of ``backend`` (one of :data:`BACKENDS`), its framework imported; a clear
    error when the name is unknown or the framework is not installed."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(
            f"backend={backend!r} is not a backend; use one of "
            f"{', '.join(repr(b) for b in BACKENDS)}"
        )
    module, framework, extra = BACKENDS[backend]
    if importlib.util.find_spec(framework) is None:
        raise ModuleNotFoundError(
            f"backend={backend!r} needs {framework}, which is not installed: "
            f"pip install 'rnnsym[{extra}]'",
            name=framework,
        )
    return importlib.import_module(module)


def compile_cell(cell: Cell, mode: str = "reverse", backend: str = "numpy", schedule: str = "auto"):
    """Derive ``cell`` and build its kernel; ``mode`` is ``"reverse"`` or ``"forward"``,
    ``backend`` one of :data:`BACKENDS` (``"numpy"``, ``"torch"``, ``"jax"``, ``"numba"``),
    ``schedule`` one of :data:`~rnnsym.backends.scan.SCHEDULES`: ``"scan"`` computes the
    recurrences of the linear states by parallel scans (and of the others by a loop over t),
    ``"sequential"`` all of them by a loop over t, ``"auto"`` takes the scan where a state is
    linear."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(
            f"mode={mode!r} is not a differentiation mode; use one of "
            f"{', '.join(repr(m) for m in MODES)}"
        )
    module = backend_module(backend)
    if backend != "numpy" and mode != "reverse":
        raise ValueError(
            f"mode={mode!r}: the {backend} backend generates reverse mode (BPTT) only; "
            f"forward mode is NumPy's"
        )
    derivation = derive(cell)  # checks the cell first
    chosen = choose_schedule(derivation, schedule)
    if chosen == "scan" and (backend not in SCAN_BACKENDS or mode != "reverse"):
        if schedule == "scan":
            raise ValueError(
                f"schedule='scan' is generated for reverse mode with the "
                f"{' and '.join(SCAN_BACKENDS)} backend(s); got mode={mode!r}, "
                f"backend={backend!r} (use schedule='sequential')"
            )
        chosen = "sequential"
    if backend in SCAN_BACKENDS and backend != "numpy":
        kernel = module.compile_derivation(derivation, chosen)
    elif backend != "numpy":
        kernel = module.compile_derivation(derivation)
    elif mode == "forward":
        from .backends.numpy_forward import generate_forward_module

        kernel = Kernel(derivation, generate_forward_module(derivation), mode)
    elif chosen == "scan":
        kernel = Kernel(derivation, generate_scan_module(derivation), mode)
    else:
        kernel = Kernel(derivation, generate_module(derivation), mode)
    kernel.schedule = chosen
    # the states computed by parallel scans: every linear state under the scan schedule
    kernel.scanned = tuple(derivation.linear_states.order) if chosen == "scan" else ()
    return kernel
