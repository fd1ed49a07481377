"""The kernel object every backend returns: a generated module, loaded, behind one contract."""

from __future__ import annotations

import hashlib
import linecache
import types
from pathlib import Path

import numpy as np

from .. import display
from ..derive import Derivation

__all__ = ["Kernel", "exec_source"]


def exec_source(source: str, label: str, cell_name: str) -> types.ModuleType:
    """Execute generated ``source`` as a new module; its file name (one line, naming the
    ``label`` and the cell) is registered with ``linecache`` so that tracebacks and ``inspect``
    show the generated lines."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    filename = f"<rnnsym {label} {ascii(cell_name)} {digest}>"
    module = types.ModuleType(f"rnnsym_{label.replace(' ', '_')}_{digest}")
    module.__file__ = filename
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - our own source
    return module


def _check_direction(cell, params, v) -> None:
    """``v`` has exactly the parameters of ``cell``, each an array shaped as in ``params``."""
    if not isinstance(v, dict):
        raise ValueError(
            f"v must be a dict of arrays, one per parameter ({', '.join(cell.params)}), "
            f"got {type(v).__name__}"
        )
    if not isinstance(params, dict):
        raise ValueError(f"params must be a dict of arrays, got {type(params).__name__}")
    missing = [n for n in cell.params if n not in v]
    extra = sorted(str(n) for n in v if n not in cell.params)
    if missing or extra:
        raise ValueError(
            "v must have one array per parameter of cell "
            f"{cell.name!r} ({', '.join(cell.params)})"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; not a parameter: {', '.join(extra)}" if extra else "")
        )
    for name in cell.params:
        if name not in params:
            raise ValueError(f"params has no array for the parameter {name!r}")
        expected, got = np.shape(params[name]), np.shape(v[name])
        if tuple(got) != tuple(expected):
            raise ValueError(
                f"v[{name!r}] has shape {tuple(got)}, but params[{name!r}] has shape "
                f"{tuple(expected)}; a direction has the shape of its parameter"
            )


class Kernel:
    """A generated kernel.

    ``forward(params, inputs, h0=None)`` returns a dict of state and output sequences;
    ``loss_and_grad(params, inputs, targets, h0=None)`` returns ``(loss, grads)``;
    ``vjp(...)`` also the gradients of the inputs and of h(0). Sequences are ``(T, B, size)``
    arrays; ``grads`` has the keys and shapes of ``params``, summed over time and batch, in the
    input dtype. ``source`` is the module text, runnable with its framework alone (``backend``
    names it). ``mode`` says how ``loss_and_grad`` gets the gradient: ``"reverse"`` (BPTT) or
    ``"forward"`` (forward sensitivity propagation, memory independent of T; NumPy only).
    ``certificate`` is the report of the last ``rs.verify`` or ``check_kernel`` run on this
    kernel (``None`` until one has run) and ``certificate_cell`` the cell it was checked
    against; in Jupyter the kernel shows both, and its source.
    """

    backend = "numpy"
    language = "NumPy"  # in repr
    # "sequential" (a loop over t) or "scan" (every state linear: parallel scans over t)
    schedule = "sequential"
    scanned: tuple[str, ...] = ()  # the states computed by scans under schedule "scan"

    def __init__(self, derivation: Derivation, source: str, mode: str = "reverse"):
        self.derivation = derivation
        self.cell = derivation.cell
        self.source = source
        self.mode = mode
        self.certificate = None  # set by rs.verify / check_kernel (display.attach_certificate)
        self.certificate_cell = None
        self.module = self._load(source)
        self.spec = self.module.SPEC

    def _load(self, source: str) -> types.ModuleType:
        label = "kernel" if self.backend == "numpy" else f"{self.backend} kernel"
        return exec_source(source, label, self.cell.name)

    def forward(self, params: dict, inputs: dict, h0=None, lengths=None) -> dict:
        """States and outputs for all t, each an array (T, B, size). With ``lengths`` (one
        integer per sequence of a padded batch), zero past each sequence's end."""
        if lengths is not None:
            from . import lengths as _lengths

            return _lengths.forward(self, params, inputs, h0, lengths)
        return self.module.forward(params, inputs, h0)

    def loss_and_grad(self, params: dict, inputs: dict, targets: dict, h0=None, lengths=None):
        """The total loss and the gradient of every parameter. With ``lengths`` (a (B,) integer
        array), a padded batch: the steps past each sequence's length add nothing to the loss
        and carry no gradient (:mod:`rnnsym.backends.lengths`)."""
        if lengths is not None:
            from . import lengths as _lengths

            return _lengths.loss_and_grad(self, params, inputs, targets, h0, lengths)
        return self.module.loss_and_grad(params, inputs, targets, h0)

    def vjp(self, params: dict, inputs: dict, targets: dict, h0=None, lengths=None):
        """``(loss, grads, input_grads, h0_grads)``: also ∇ of every input sequence (T, B, size)
        and of every initial state (B, size), what a cell hands to the cells it is composed with.
        ``lengths`` as for :meth:`loss_and_grad`; the input adjoints are zero past each end.
        """
        if not hasattr(self.module, "vjp"):
            raise ValueError(
                f"vjp() is generated for reverse mode; this kernel is in {self.mode} mode"
            )
        if lengths is not None:
            from . import lengths as _lengths

            return _lengths.vjp(self, params, inputs, targets, h0, lengths)
        return self.module.vjp(params, inputs, targets, h0)

    def hvp(
        self, params: dict, inputs: dict, targets: dict, v: dict, h0=None, lengths=None
    ) -> dict:
        """The Hessian-vector product H v of the total loss w.r.t. the parameters: a dict with
        the keys and shapes of ``params``. ``v`` is a direction with those keys and shapes.

        Computed by the NumPy kernel of the tangent cell (:mod:`rnnsym.tangent`), derived and
        generated on first use and kept on this kernel: reverse mode over the loss's
        derivative along v. ``lengths`` as for :meth:`loss_and_grad`."""
        return self._second_order("hvp", params, inputs, targets, v, h0, lengths)

    def gnvp(
        self, params: dict, inputs: dict, targets: dict, v: dict, h0=None, lengths=None
    ) -> dict:
        """The Gauss–Newton-vector product G v = Jᵀ H_ℓ J v (J: the Jacobian of what each
        step's loss reads w.r.t. the parameters; H_ℓ: that loss's Hessian), as :meth:`hvp`."""
        return self._second_order("gnvp", params, inputs, targets, v, h0, lengths)

    def second_order_kernel(self, kind: str):
        """The NumPy kernel of the tangent cell for ``kind`` ("hvp" or "gnvp") and the
        :class:`~rnnsym.tangent.TangentCell`, built once per kernel (the kernel is ``None``
        where G = 0: a loss linear in what it reads)."""
        from ..derive import derive
        from ..tangent import tangent_cell
        from .numpy import generate_module

        cache = self.__dict__.setdefault("_second_order_kernels", {})
        if kind not in cache:
            made = tangent_cell(self.cell, kind)
            kernel = None
            if made.cell is not None:
                derivation = derive(made.cell)
                kernel = Kernel(derivation, generate_module(derivation))
            cache[kind] = (kernel, made)
        return cache[kind]

    def _second_order(self, kind, params, inputs, targets, v, h0, lengths) -> dict:
        _check_direction(self.cell, params, v)
        kernel, made = self.second_order_kernel(kind)
        if kernel is None:  # a loss linear in what it reads has G = 0
            return {name: 0.0 * v[name] for name in self.cell.params}
        merged = dict(params)
        merged.update({made.directions[name]: v[name] for name in self.cell.params})
        # with lengths, each step past a sequence's end is masked out of the tangent cell's
        # loss, as out of the cell's: its H v and G v are those of the padded batch's loss
        _, grads = kernel.loss_and_grad(merged, inputs, targets, h0, lengths)
        if kind == "hvp":  # reverse over forward: the θ-gradient of the loss's derivative
            return {name: grads[name] for name in self.cell.params}
        # ½ vᵀ G v has the v-gradient G v
        return {name: grads[made.directions[name]] for name in self.cell.params}

    def clear_workspaces(self) -> None:
        """Free the sequence arrays the NumPy kernel keeps between calls of ``loss_and_grad``
        and ``vjp`` (reused by the next call of the same shapes, to spare their page faults);
        the next call allocates them again. Other backends keep none."""
        clear = getattr(self.module, "clear_workspaces", None)
        if clear is not None:
            clear()

    def write(self, path: str | Path) -> Path:
        """Write the module source to ``path`` (importable without rnnsym, with its framework)."""
        path = Path(path)
        path.write_text(self.source, encoding="utf-8")
        return path

    def __repr__(self) -> str:
        lines = len(self.source.splitlines())
        mode = "" if self.mode == "reverse" else f" ({self.mode} mode)"
        return f"<Kernel {self.cell.name!r}{mode}: {lines} lines of {self.language}>"

    _repr_html_ = display.kernel_html
