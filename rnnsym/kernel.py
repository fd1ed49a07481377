"""Compile a cell to a NumPy kernel: derive, generate the module source, import it."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import linecache
import types
from pathlib import Path

from . import display
from .backends.numpy import generate_module
from .cell import Cell
from .derive import Derivation, derive

__all__ = ["Kernel", "compile_cell", "MODES", "BACKENDS"]

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


class Kernel:
    """A generated NumPy kernel.

    ``forward(params, inputs, h0=None)`` returns a dict of state and output sequences;
    ``loss_and_grad(params, inputs, targets, h0=None)`` returns ``(loss, grads)``. Sequences are
    ``(T, B, size)`` arrays; ``grads`` has the keys and shapes of ``params``, summed over time and
    batch, in the input dtype. ``source`` is the module text, runnable with NumPy alone.
    ``mode`` says how ``loss_and_grad`` gets the gradient: ``"reverse"`` (BPTT) or
    ``"forward"`` (forward sensitivity propagation, memory independent of T).
    ``certificate`` is the report of the last ``rs.verify`` or ``check_kernel`` run on this
    kernel (``None`` until one has run) and ``certificate_cell`` the cell it was checked
    against; in Jupyter the kernel shows both, and its source.
    """

    def __init__(self, derivation: Derivation, source: str, mode: str = "reverse"):
        self.derivation = derivation
        self.cell = derivation.cell
        self.source = source
        self.mode = mode
        self.certificate = None  # set by rs.verify / check_kernel (display.attach_certificate)
        self.certificate_cell: Cell | None = None
        digest = hashlib.sha256(source.encode()).hexdigest()[:12]
        filename = f"<rnnsym kernel {ascii(self.cell.name)} {digest}>"  # one line, any name
        module = types.ModuleType(f"rnnsym_kernel_{digest}")
        module.__file__ = filename
        # registered with linecache so tracebacks and inspect show the generated lines
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - our own source
        self.module = module
        self.spec = module.SPEC

    def forward(self, params: dict, inputs: dict, h0=None) -> dict:
        """States and outputs for all t, each an array (T, B, size)."""
        return self.module.forward(params, inputs, h0)

    def loss_and_grad(self, params: dict, inputs: dict, targets: dict, h0=None):
        """The total loss and the gradient of every parameter."""
        return self.module.loss_and_grad(params, inputs, targets, h0)

    def vjp(self, params: dict, inputs: dict, targets: dict, h0=None):
        """``(loss, grads, input_grads, h0_grads)``: also ∇ of every input sequence (T, B, size)
        and of every initial state (B, size), what a cell hands to the cells it is composed with.
        """
        if not hasattr(self.module, "vjp"):
            raise ValueError(
                f"vjp() is generated for reverse mode; this kernel is in {self.mode} mode"
            )
        return self.module.vjp(params, inputs, targets, h0)

    def write(self, path: str | Path) -> Path:
        """Write the module source to ``path`` (importable without rnnsym)."""
        path = Path(path)
        path.write_text(self.source, encoding="utf-8")
        return path

    def __repr__(self) -> str:
        lines = len(self.source.splitlines())
        mode = "" if self.mode == "reverse" else f" ({self.mode} mode)"
        return f"<Kernel {self.cell.name!r}{mode}: {lines} lines of NumPy>"

    _repr_html_ = display.kernel_html


def compile_cell(cell: Cell, mode: str = "reverse", backend: str = "numpy"):
    """Derive ``cell`` and build its kernel; ``mode`` is ``"reverse"`` or ``"forward"``,
    ``backend`` one of :data:`BACKENDS` (``"numpy"``, ``"torch"``, ``"jax"``, ``"numba"``)."""
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
    if backend != "numpy":
        return module.compile_derivation(derivation)
    if mode == "forward":
        from .backends.numpy_forward import generate_forward_module

        return Kernel(derivation, generate_forward_module(derivation), mode)
    return Kernel(derivation, generate_module(derivation), mode)
