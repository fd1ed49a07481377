"""Truncated back-propagation through time: each step's loss back-propagates at most k steps.

``compile_truncated(cell, k)`` (``rs.compile(cell, truncate=k)``) gives a kernel whose gradient
is Williams & Peng's BPTT(k) with per-loss truncation: the gradient of the loss term L(s) of
step s flows back through steps s − k + 1 .. s only, the state h(s − k) held constant, and the
truncated gradient is the sum of these over s. With k ≥ T nothing is cut and the result is the
full kernel's, bit for bit. ``tbptt_bias`` measures how far the truncated gradient is from the
full one (cosine and relative error), and ``rnnsym tbptt CELL --k 1,2,5,10`` prints it as a table
and draws it (``register_cli``). Every gradient is computed by the cell's generated kernel, on
windows of the sequence; none is written for a cell here. See docs/tbptt.md.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sympy as sp

from . import cells
from .backends.lengths import masked_call
from .cell import Cell
from .derive import derive
from .errors import RnnsymError
from .kernel import compile_cell
from .printing import _latex_name, label_key, latex_text
from .problems import random_problem

__all__ = [
    "TruncatedKernel",
    "TBPTTBias",
    "compile_truncated",
    "check_truncation",
    "tbptt_bias",
    "format_table",
    "plot_bias",
    "truncated_derivation_text",
    "register_cli",
]

# backends whose kernels take and return NumPy arrays, which the windows are cut from
_NUMPY_BACKENDS = ("numpy", "numba")


def check_truncation(k) -> int:
    """``k`` as a number of steps: a positive integer (a Python or NumPy integer, not a bool, a
    float or a string); a clear ValueError naming the value otherwise."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(
            f"truncate={k!r} ({type(k).__name__}): the truncation length must be a positive "
            f"integer number of steps k (each step's loss back-propagates at most k steps)"
        )
    if k < 1:
        raise ValueError(
            f"truncate={int(k)}: the truncation length must be at least 1 (k = 1 keeps each "
            f"loss's own step only); k >= T is full BPTT"
        )
    return int(k)


class TruncatedKernel:
    """A kernel of truncated BPTT: ``loss_and_grad`` returns the full loss and the truncated
    gradient Σ_s ∇θ L(s), each L(s) back-propagated through at most ``truncate`` steps
    (h(s − k) held constant); ``forward`` is the full forward pass. ``vjp`` is refused: the
    gradient of an input or of h(0) has no agreed meaning under truncation. ``kernel`` is the
    cell's own generated kernel, which computes every gradient (``source``, ``spec``,
    ``derivation`` and ``cell`` are its); ``derivation_text()`` prints the derivation with
    the truncation made explicit.
    """

    def __init__(self, kernel, k: int):
        self.kernel = kernel
        self.truncate = check_truncation(k)
        self.cell = kernel.cell
        self.derivation = kernel.derivation
        self.source = kernel.source
        self.spec = kernel.spec
        self.module = kernel.module
        self.mode = kernel.mode
        self.backend = getattr(kernel, "backend", "numpy")

    def forward(self, params: dict, inputs: dict, h0=None) -> dict:
        """States and outputs for all t, each an array (T, B, size): the full forward pass."""
        return self.kernel.forward(params, inputs, h0)

    def loss_and_grad(self, params: dict, inputs: dict, targets: dict, h0=None, lengths=None):
        """``(loss, grads)``: the full loss Σ_s L(s) and the truncated gradient of every
        parameter, with the keys, shapes and dtype of the full kernel's. With ``lengths`` (a
        padded batch), the steps past each sequence's end add nothing (their loss is masked
        as in the full kernel, window by window)."""
        kernel = self.kernel
        if lengths is not None:
            kernel, inputs, targets = masked_call(kernel, params, inputs, targets, lengths)
        loss, grads, _ = _full_and_truncated(kernel, self.truncate, params, inputs, targets, h0)
        return loss, grads

    def vjp(self, params: dict, inputs: dict, targets: dict, h0=None):
        """Refused: a truncated gradient of the inputs or of h(0) is not defined here."""
        raise ValueError(
            f"vjp() of a truncated kernel (truncate={self.truncate}) is not defined: truncation "
            f"cuts the gradient of each loss at h(s - {self.truncate}), so the gradients of the "
            f"inputs and of h(0) have no agreed meaning; use rs.compile(cell) (full BPTT) for "
            f"vjp() or composition"
        )

    def derivation_text(self, latex: bool = False) -> str:
        """The cell's derivation followed by its truncated adjoint recurrence."""
        return truncated_derivation_text(self.cell, self.truncate, latex=latex)

    def clear_workspaces(self) -> None:
        """Free the arrays the underlying kernel keeps between calls (see ``Kernel``)."""
        self.kernel.clear_workspaces()

    def write(self, path: str | Path) -> Path:
        """Write the underlying full kernel's module (the truncation is a way of calling it)."""
        return self.kernel.write(path)

    def __repr__(self) -> str:
        lines = len(self.source.splitlines())
        mode = "" if self.mode == "reverse" else f", {self.mode} mode"
        return (
            f"<Kernel {self.cell.name!r} (truncated BPTT, k = {self.truncate}{mode}): "
            f"{lines} lines of {getattr(self.kernel, 'language', 'NumPy')}>"
        )


def compile_truncated(
    cell: Cell, k: int, mode: str = "reverse", backend: str = "numpy"
) -> TruncatedKernel:
    """Derive ``cell`` and return its kernel of truncated BPTT with truncation length ``k``
    (``rs.compile(cell, truncate=k)``): each step's loss back-propagates at most k steps; with
    k ≥ T the gradients are the full kernel's exactly. ``mode`` and ``backend`` choose the
    generated kernel that computes the gradients (``backend`` ``"numpy"`` or ``"numba"``)."""
    k = check_truncation(k)
    if not isinstance(cell, Cell):
        raise ValueError(
            f"truncate={k}: truncated BPTT is for an rnnsym.Cell, got {type(cell).__name__}"
        )
    if backend not in _NUMPY_BACKENDS:
        raise ValueError(
            f"truncate={k} with backend={backend!r}: truncated BPTT cuts NumPy arrays into "
            f"windows; use backend 'numpy' or 'numba'"
        )
    if not cell._loss_terms:
        raise ValueError(
            f"truncate={k}: cell {cell.name!r} has no loss, so there is no gradient to truncate"
        )
    return TruncatedKernel(compile_cell(cell, mode=mode, backend=backend), k)


# ----- the computation: windows of the generated kernel -----


def _full_and_truncated(kernel, k: int, params, inputs, targets, h0):
    """(full loss, truncated grads, full grads). The full kernel runs first on the whole
    sequence: it checks every array (its errors name them) and gives the loss."""
    loss, full = kernel.loss_and_grad(params, inputs, targets, h0)
    T = _steps(targets)
    if k >= T or not kernel.spec["states"]:
        # nothing is cut (or there is no state for a gradient to flow through)
        return loss, full, full
    return loss, _truncated(kernel, k, _Prepared.of(kernel, params, inputs, targets, h0)), full


def _steps(targets: dict) -> int:
    return int(np.shape(next(iter(targets.values())))[0])


@dataclass
class _Prepared:
    """What the windows are cut from: the arrays with every fed-back input given, and the
    trajectory s(0..T) of every state, (T + 1, B, n)."""

    params: dict
    inputs: dict
    targets: dict
    path: dict
    context: tuple
    T: int
    B: int

    @classmethod
    def of(cls, kernel, params, inputs, targets, h0) -> _Prepared:
        spec = kernel.spec
        inputs = _with_fed_back(spec, params, inputs, targets)
        run = kernel.forward(params, inputs, h0)
        first = next(iter(spec["states"]))
        T, B = np.shape(run[first])[:2]
        path = {}
        start = _initial(spec, h0, B, {s: np.shape(run[s])[-1] for s in spec["states"]})
        for s in spec["states"]:
            states = np.asarray(run[s])
            path[s] = np.concatenate([start[s].astype(states.dtype)[None], states], axis=0)
        context = tuple(spec.get("context", ()))
        return cls(params, inputs, dict(targets), path, context, int(T), int(B))

    def windows(self, length: int, starts: np.ndarray):
        """(inputs, targets, h0) of the windows p + 1 .. p + length (1-based steps) for every
        p in ``starts``, stacked along the batch: element b of window j is row j B + b."""
        index = starts[None, :] + np.arange(length)[:, None]  # (length, P): 0-based steps
        P, B = len(starts), self.B

        def cut(array):
            a = np.asarray(array)[index]  # (length, P, B, ...)
            return a.reshape((length, P * B) + a.shape[3:])

        inputs = {}
        for name, array in self.inputs.items():
            if name in self.context:  # once per sequence: repeated for every window
                a = np.asarray(array)
                a = np.broadcast_to(a, (B, a.shape[-1]))
                inputs[name] = np.broadcast_to(a[None], (P,) + a.shape).reshape(P * B, -1)
            else:
                inputs[name] = cut(array)
        targets = {name: cut(array) for name, array in self.targets.items()}
        h0 = {s: path[starts].reshape((P * B,) + path.shape[2:]) for s, path in self.path.items()}
        return inputs, targets, h0


def _truncated(kernel, k: int, prepared: _Prepared) -> dict:
    """Σ_s ∇θ L(s) cut at h(s − k), for k < T.

    For s ≥ k, the window of steps s − k + 1 .. s started from the full run's h(s − k) has
    gradient ∇θ [L(s − k + 1) + … + L(s)], each term cut at h(s − k); the window s − k + 1 ..
    s − 1 from the same state has the same without L(s). Their difference is L(s)'s truncated
    gradient. Summed over s = k .. T, the first window (s = k, steps 1 .. k from h(0)) also
    holds L(1) .. L(k − 1), which nothing cuts. So the truncated gradient is one call on the
    T − k + 1 windows of length k minus one call on the T − k windows of length k − 1.
    """
    T = prepared.T
    long = prepared.windows(k, np.arange(0, T - k + 1))
    _, grads = kernel.loss_and_grad(prepared.params, *long)
    grads = {name: np.array(g, copy=True) for name, g in grads.items()}
    if k > 1:
        short = prepared.windows(k - 1, np.arange(1, T - k + 1))
        _, minus = kernel.loss_and_grad(prepared.params, *short)
        for name in grads:
            grads[name] -= np.asarray(minus[name])
    return grads


def _with_fed_back(spec: dict, params: dict, inputs: dict, targets: dict) -> dict:
    """``inputs`` with every fed-back input y(t − 1) given, computed on the whole sequence (a
    window starting at step p + 1 > 1 reads y(p), not the kernel's y(0) = 0); class indices
    become 1-of-K rows, as the kernel makes them."""
    inputs = dict(inputs)
    for name, target in spec.get("fed_back", {}).items():
        if name in inputs:
            continue
        y = np.asarray(targets[target])
        if target in spec.get("classes", ()) and y.ndim == 2 and y.dtype.kind in "iu":
            size = _size(spec, params, spec["targets"][target][0])
            dtype = np.result_type(*[np.asarray(p).dtype for p in params.values()])
            y = np.eye(size, dtype=dtype)[y]
        shifted = np.zeros_like(y)
        shifted[1:] = y[:-1]  # y(t - 1), y(0) = 0: what the kernel fills in
        inputs[name] = shifted
    return inputs


def _size(spec: dict, params: dict, dim: str) -> int:
    """The value of the size expression ``dim`` read off the parameters' shapes."""
    known = {}
    for name, dims in spec["params"].items():
        for d, value in zip(dims, np.shape(params[name]), strict=False):
            symbol = sp.sympify(d)
            if isinstance(symbol, sp.Symbol):
                known[symbol] = value
    size = sp.sympify(sp.sympify(dim).xreplace(known))
    if not size.is_Integer:
        raise ValueError(
            f"the number of classes {dim} is not fixed by the parameters' shapes; give the "
            f"fed-back input explicitly"
        )
    return int(size)


def _initial(spec: dict, h0, B: int, sizes: dict) -> dict:
    """h(0) of every state as (B, n), as the kernel reads ``h0`` (None: zeros); the kernel has
    already checked it."""
    if h0 is None:
        given = {}
    elif isinstance(h0, dict):
        given = h0
    else:
        given = {next(iter(spec["states"])): h0}
    out = {}
    for s, n in sizes.items():
        value = given.get(s)
        if value is None:
            out[s] = np.zeros((B, n))
        else:
            out[s] = np.array(np.broadcast_to(np.asarray(value), (B, n)))
    return out


# ----- the bias of the truncated gradient -----


@dataclass(frozen=True)
class BiasRow:
    """One truncation length: the cosine and the relative error ‖g_k − g‖ / ‖g‖ of the
    flattened gradient of all parameters, and the same per parameter (name -> (cos, rel))."""

    k: int
    cosine: float
    relative_error: float
    per_param: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TBPTTBias:
    """The result of :func:`tbptt_bias`: one :class:`BiasRow` per truncation length, on a
    problem of ``T`` steps and batch ``B``; ``full_norm`` is ‖g‖, the full gradient's norm."""

    cell_name: str
    T: int
    B: int
    rows: tuple
    params: tuple
    full_norm: float

    def table(self, per_param: bool = True) -> str:
        """The rows as a text table (:func:`format_table`)."""
        return format_table(self, per_param=per_param)

    def plot(self, path: str | Path) -> Path:
        """Draw cosine and relative error against k (:func:`plot_bias`)."""
        return plot_bias(self, path)

    def __str__(self) -> str:
        return self.table()


def _compare(g: np.ndarray, gk: np.ndarray) -> tuple[float, float]:
    if np.array_equal(g, gk):
        return 1.0, 0.0  # nothing cut: exactly, not to the rounding of the dot product
    norm, norm_k = float(np.linalg.norm(g)), float(np.linalg.norm(gk))
    if norm == 0.0:
        same = norm_k == 0.0
        return (1.0, 0.0) if same else (math.nan, math.inf)
    cosine = float(np.clip(np.dot(g, gk) / (norm * norm_k), -1.0, 1.0)) if norm_k else 0.0
    return cosine, float(np.linalg.norm(gk - g) / norm)


def _parse_ks(ks) -> list[int]:
    if isinstance(ks, str | bytes) or not hasattr(ks, "__iter__"):
        ks = [ks]
    out = []
    for k in ks:
        out.append(check_truncation(k))
    if not out:
        raise ValueError("ks is empty: give at least one truncation length k")
    return out


def tbptt_bias(
    cell: Cell,
    ks,
    params: dict | None = None,
    inputs: dict | None = None,
    targets: dict | None = None,
    h0=None,
    T: int = 20,
    B: int = 4,
    seed: int = 0,
) -> TBPTTBias:
    """How far truncated BPTT's gradient g_k is from the full gradient g, for each k in ``ks``.

    On the given arrays, or on a random problem (``rnnsym.problems.random_problem`` with ``T``,
    ``B`` and ``seed``) for whichever of ``params``, ``inputs`` and ``targets`` is None (given
    inputs and targets fix T and B). Per k: the cosine ⟨g_k, g⟩ / (‖g_k‖ ‖g‖) and the relative
    error ‖g_k − g‖ / ‖g‖ of all parameters' gradients flattened into one vector, and the same
    per parameter. The full forward pass and the full gradient are computed once.
    """
    if not isinstance(cell, Cell):
        raise ValueError(f"tbptt_bias takes an rnnsym.Cell, got {type(cell).__name__}")
    ks = _parse_ks(ks)
    if params is None or inputs is None or targets is None:
        if (inputs is None) != (targets is None):
            raise ValueError(
                "give both inputs and targets, or neither (then both are random, with T and B)"
            )
        sizes = _sizes_of(cell, params) if params is not None else None
        rp, ri, rt = random_problem(cell, sizes=sizes, T=T, B=B, seed=seed)
        params = rp if params is None else params
        inputs = ri if inputs is None else inputs
        targets = rt if targets is None else targets
    kernel = compile_cell(cell)
    loss, full = kernel.loss_and_grad(params, inputs, targets, h0)
    T = _steps(targets)
    B = int(np.shape(next(iter(targets.values())))[1])
    names = tuple(full)
    g = np.concatenate([np.ravel(full[n]) for n in names]).astype(float)
    prepared = None
    rows = []
    for k in ks:
        if k >= T or not kernel.spec["states"]:
            grads = full
        else:
            if prepared is None:
                prepared = _Prepared.of(kernel, params, inputs, targets, h0)
            grads = _truncated(kernel, k, prepared)
        gk = np.concatenate([np.ravel(grads[n]) for n in names]).astype(float)
        cosine, rel = _compare(g, gk)
        per = {
            n: _compare(np.ravel(full[n]).astype(float), np.ravel(grads[n]).astype(float))
            for n in names
        }
        rows.append(BiasRow(k, cosine, rel, per))
    return TBPTTBias(cell.name, T, B, tuple(rows), names, float(np.linalg.norm(g)))


def _sizes_of(cell: Cell, params: dict) -> dict[str, int]:
    """The sizes that the parameters' shapes fix, by name, for a random problem around them."""
    sizes = {}
    for name, var in cell.params.items():
        if name not in params:
            raise ValueError(
                f"params has no {name!r}; cell {cell.name!r} needs {', '.join(cell.params)}"
            )
        shape = var.symbol.shape if var.symbol.shape[1] != 1 else var.symbol.shape[:1]
        for dim, value in zip(shape, np.shape(params[name]), strict=False):
            if isinstance(dim, sp.Symbol):
                sizes.setdefault(str(dim), int(value))
    return sizes


def format_table(result: TBPTTBias, per_param: bool = True) -> str:
    """A text table: per k, the cosine and relative error of all parameters' gradient and, with
    ``per_param``, the relative error of each parameter's."""
    head = (
        f"truncated BPTT against full BPTT: cell {result.cell_name!r}, T = {result.T}, "
        f"B = {result.B}, ‖g‖ = {result.full_norm:.4g}"
    )
    columns = ["k", "cosine", "rel. error"]
    if per_param:
        columns += [f"rel({n})" for n in result.params]
    body = []
    for row in result.rows:
        k = f"{row.k}" + ("*" if row.k >= result.T else "")
        cells = [k, f"{row.cosine:.6f}", f"{row.relative_error:.3e}"]
        if per_param:
            cells += [f"{row.per_param[n][1]:.3e}" for n in result.params]
        body.append(cells)
    widths = [max(len(c) for c in column) for column in zip(columns, *body, strict=True)]
    lines = [head] + [
        "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
        for cells in [columns, *body]
    ]
    if any(row.k >= result.T for row in result.rows):
        lines.append("* k >= T: nothing is cut, full BPTT exactly")
    lines.append(
        "cosine = <g_k, g> / (|g_k| |g|), rel. error = |g_k - g| / |g|, g the full gradient "
        "and g_k the truncated one, all parameters flattened"
    )
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "drawing the truncation bias needs matplotlib, which is not installed: "
            "pip install 'rnnsym[plot]'",
            name="matplotlib",
        ) from None
    return plt


def plot_bias(result: TBPTTBias, path: str | Path) -> Path:
    """Draw the cosine and the relative error (log scale) against k, for all parameters and
    per parameter, to ``path``; needs matplotlib (``pip install 'rnnsym[plot]'``)."""
    plt = _pyplot()
    ks = [row.k for row in result.rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    left.plot(ks, [row.cosine for row in result.rows], "o-", color="k", label="all parameters")
    for name in result.params:
        left.plot(ks, [row.per_param[name][0] for row in result.rows], ".--", label=name, lw=0.8)
    left.set_xlabel("truncation length k")
    left.set_ylabel("cosine(g_k, g)")
    left.set_title("cosine with the full gradient", fontsize=10)
    floor = np.finfo(float).eps
    rel = [max(row.relative_error, floor) for row in result.rows]
    right.semilogy(ks, rel, "o-", color="k", label="all parameters")
    for name in result.params:
        values = [max(row.per_param[name][1], floor) for row in result.rows]
        right.semilogy(ks, values, ".--", label=name, lw=0.8)
    right.set_xlabel("truncation length k")
    right.set_ylabel("‖g_k − g‖ / ‖g‖")
    right.set_title("relative error (ε where exact)", fontsize=10)
    right.legend(fontsize=7, loc="best")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        if len(ks) > 1 and min(ks) > 0 and max(ks) / min(ks) >= 8:
            ax.set_xscale("log")
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.minorticks_off()
    fig.suptitle(f"truncated BPTT: {result.cell_name}, T = {result.T}, B = {result.B}", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----- the derivation with the truncation made explicit -----


def truncated_derivation_text(cell: Cell, k: int, latex: bool = False) -> str:
    """The cell's derivation (``rs.derive(cell).pretty()`` or ``.latex()``) followed by its
    truncated form: the same backward recurrence seeded by each step's loss L(s) alone and cut
    after k steps, and the gradients summed over the losses and the steps each one reaches."""
    k = check_truncation(k)
    derivation = derive(cell)
    states = list(cell.states)
    numbers_ = {s: derivation.number_of(f"g_{s}") for s in states}
    grads = [derivation.number_of(p) for p in cell.params]
    first_grad, last_grad = min(grads), max(grads)
    backward = sorted(numbers_.values())
    if not latex:
        return (
            derivation.pretty()
            + "\n\n"
            + _text_section(cell, k, states, numbers_, (first_grad, last_grad), backward)
        )
    return (
        derivation.latex()
        + "\n"
        + _latex_section(cell, k, states, numbers_, (first_grad, last_grad))
    )


def _text_section(cell, k, states, numbers_, grads, backward) -> str:
    def sup(text: str) -> str:
        table = str.maketrans("0123456789tsk+−-()", "⁰¹²³⁴⁵⁶⁷⁸⁹ᵗˢᵏ⁺⁻⁻⁽⁾")
        return text.translate(table)

    state_list = ", ".join(f"{s}" for s in states)
    cut = ", ".join(f"{s}{sup('(s−k)')}" for s in states)
    lines = [
        f"Truncated BPTT, k = {k} (Williams & Peng's BPTT(k): each step's loss back-propagates "
        f"through at most k steps)",
        "Per-loss adjoints, for each s = 1..T and t = s..max(1, s−k+1)",
    ]
    for s in states:
        n = numbers_[s]
        lines.append(
            f"  ∇_{{{s}⁽ᵗ⁾}}L⁽ˢ⁾ = ({n}) with L replaced by L⁽ˢ⁾ alone: its local terms "
            f"at t = s only, zero for t > s"
        )
    lines.append(
        f"  cut: ∇_{{{cut}}}L⁽ˢ⁾ := 0, i.e. {cut} held constant (only for s > k; for s ≤ k the cut "
        f"falls at h⁽⁰⁾, which is given)"
    )
    lines.append("Truncated adjoints, t = T..1: each step's loss within k − 1 steps ahead")
    for s in states:
        lines.append(f"  ∇⁽ᵏ⁾_{{{s}⁽ᵗ⁾}}L = Σ_{{s=t}}^{{min(T, t+k−1)}} ∇_{{{s}⁽ᵗ⁾}}L⁽ˢ⁾")
    first, last = grads
    span = f"({first})" if first == last else f"({first})–({last})"
    lines.append("Truncated gradients, summed over the losses and the steps each one reaches")
    lines.append(
        f"  ∇⁽ᵏ⁾_θ L = Σ_{{s=1}}^{{T}} Σ_{{t=max(1, s−k+1)}}^{{s}} (∂L⁽ˢ⁾/∂θ)⁽ᵗ⁾ "
        f"= {span} with every adjoint ∇_{{q⁽ᵗ⁾}}L of the step replaced by its truncated "
        f"∇⁽ᵏ⁾ (the adjoints are linear in the state adjoints of {state_list})"
    )
    lines.append("  k ≥ T: nothing is cut, and these are the full gradients above, exactly")
    return "\n".join(lines)


def _latex_section(cell, k, states, numbers_, grads) -> str:
    label = label_key("eq", cell.name)
    names = [_latex_name(s) for s in states]
    cut = ", ".join(f"{n}^{{(s-k)}}" for n in names)
    first, last = grads
    span = (
        rf"\eqref{{{label}:{first}}}"
        if first == last
        else rf"\eqref{{{label}:{first}}}--\eqref{{{label}:{last}}}"
    )
    rows = [
        rf"  & \text{{Truncated BPTT, }} k = {k} \text{{: each step's loss back-propagates "
        r"through at most } k \text{ steps} \notag \\",
    ]
    for s, n in zip(states, names, strict=True):
        rows.append(
            rf"  \nabla_{{{n}^{{(t)}}}} L^{{(s)}} &= \eqref{{{label}:{numbers_[s]}}} \text{{ "
            r"with } L \to L^{(s)} \text{ alone, } s - k + 1 \le t \le s \notag \\"
        )
    rows.append(
        rf"  \nabla_{{{cut}}} L^{{(s)}} &:= 0 \quad \text{{(held constant; for }} s \le k "
        r"\text{ the cut falls at the given } h^{(0)}) \notag \\"
    )
    for n in names:
        rows.append(
            rf"  \nabla^{{(k)}}_{{{n}^{{(t)}}}} L &= \sum_{{s=t}}^{{\min(T,\, t+k-1)}} "
            rf"\nabla_{{{n}^{{(t)}}}} L^{{(s)}} \notag \\"
        )
    rows.append(
        r"  \nabla^{(k)}_{\theta} L &= \sum_{s=1}^{T} \sum_{t=\max(1,\, s-k+1)}^{s} "
        r"\left(\frac{\partial L^{(s)}}{\partial \theta}\right)^{(t)} \notag \\"
    )
    rows.append(
        rf"  &= {span} \text{{ with every adjoint replaced by its truncated }} "
        r"\nabla^{(k)}; \ k \ge T \text{: the full gradients} \notag"
    )
    head = "% truncated BPTT, cell " + latex_text(cell.name).replace("\n", " ")
    return head + "\n\\begin{align}\n" + "\n".join(rows) + "\n\\end{align}"


# ----- the command line: rnnsym tbptt CELL --k 1,2,5,10 -----


def parse_ks(text: str) -> list[int]:
    """``--k 1,2,5,10`` as a list of truncation lengths; a clear error naming a bad value."""
    out = []
    for part in str(text).split(","):
        item = part.strip()
        try:
            value = int(item)
        except ValueError:
            raise ValueError(
                f"--k {text!r}: {item!r} is not an integer; give positive integers separated "
                f"by commas, e.g. --k 1,2,5,10"
            ) from None
        if value < 1:
            raise ValueError(
                f"--k {text!r}: {value} is not a truncation length; each k must be at least 1 "
                f"(k = 1 keeps each loss's own step only)"
            )
        out.append(value)
    return out


def _load_data(path: str, cell: Cell) -> tuple[dict | None, dict | None, dict | None, dict]:
    """(params, inputs, targets, h0) from an .npz file whose arrays are named as the cell's
    parameters, inputs, targets and states (a state's array is its h(0)); None for a group
    the file does not hold. A group is given whole or not at all."""
    try:
        with np.load(path) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError) as exc:
        raise RnnsymError(f"--data {path}: cannot read it as an .npz file ({exc})") from None
    groups = {
        "parameter": list(cell.params),
        "input": [n for n in cell.inputs if n not in cell.fed_back],
        "target": list(cell.targets),
    }
    known = {*cell.params, *cell.inputs, *cell.targets, *cell.states}
    extra = [name for name in arrays if name not in known]
    if extra:
        raise RnnsymError(
            f"--data {path}: {extra[0]!r} is not a parameter, input, target or state of cell "
            f"{cell.name!r} (its names: {', '.join(sorted(known))})"
        )
    found = []
    for what, names in groups.items():
        present = [n for n in names if n in arrays]
        if present and len(present) != len(names):
            missing = [n for n in names if n not in arrays]
            raise RnnsymError(
                f"--data {path}: has {what} {present[0]!r} but not {missing[0]!r}; give every "
                f"{what} of cell {cell.name!r} ({', '.join(names)}) or none (then random)"
            )
        found.append({n: arrays[n] for n in names} if present else None)
    params, inputs, targets = found
    if (inputs is None) != (targets is None):
        raise RnnsymError(
            f"--data {path}: give the inputs and the targets together, or neither (then "
            f"both are random)"
        )
    h0 = {n: arrays[n] for n in cell.states if n in arrays}
    return params, inputs, targets, h0


def register_cli(subparsers, load_target: Callable[[str], object] | None = None):
    """Add ``rnnsym tbptt CELL --k 1,2,5,10`` to the ``rnnsym`` command's subparsers and return
    its parser. ``load_target`` turns the CELL argument (a built-in name or PATH.py:FUNC) into
    a cell: the CLI's own loader; without it CELL is a built-in name only."""
    p = subparsers.add_parser(
        "tbptt",
        help="truncated BPTT: cosine and relative error of the truncated gradient per k",
        description="Compare the gradient of truncated BPTT (each step's loss back-propagates "
        "at most k steps) with the full gradient, on a random problem or your data: the cosine "
        "and the relative error |g_k - g| / |g| of all parameters and of each, per k.",
    )
    p.add_argument("cell", help="a built-in cell name, or PATH.py:FUNC for your own cell")
    p.add_argument(
        "--k",
        default="1,2,5,10",
        metavar="K1,K2,...",
        help="truncation lengths, comma-separated positive integers (default 1,2,5,10)",
    )
    p.add_argument("--T", type=int, default=20, help="steps of the random problem (default 20)")
    p.add_argument("--B", type=int, default=4, help="batch of the random problem (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random problem (default 0)")
    p.add_argument(
        "--data",
        metavar="FILE.npz",
        help="arrays named as the cell's parameters, inputs and targets (and states: h(0)); "
        "what the file leaves out is random",
    )
    p.add_argument("--latex", action="store_true", help="print the truncated derivation as LaTeX")
    p.add_argument(
        "--derivation",
        action="store_true",
        help="also print the derivation with the truncation made explicit (for the largest k)",
    )
    p.add_argument("-o", "--output", metavar="PATH.png", help="draw the bias against k here")

    def handler(args: argparse.Namespace) -> int:
        return run_cli(args, load_target)

    p.set_defaults(handler=handler)
    return p


def _builtin_only(name: str):
    if ":" in name or name.endswith(".py"):
        raise RnnsymError(
            f"{name!r}: this tbptt command was registered without a loader of PATH.py:FUNC; "
            f"name a built-in cell ({', '.join(sorted(cells.BUILTIN))})"
        )
    return cells.get(name)


def run_cli(args: argparse.Namespace, load_target: Callable[[str], object] | None = None) -> int:
    """``rnnsym tbptt``: print the table (and the derivation), draw the plot; 0 on success.
    ``load_target`` loads CELL (default: built-in names only)."""
    ks = parse_ks(args.k)
    for option in ("T", "B"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise RnnsymError(f"--{option} {value}: must be at least 1")
    cell = (load_target or _builtin_only)(args.cell)
    if not isinstance(cell, Cell):
        raise RnnsymError(
            f"tbptt: {args.cell!r} is a model of several cells; truncated BPTT is for one cell"
        )
    params = inputs = targets = None
    h0 = None
    if args.data:
        params, inputs, targets, given = _load_data(args.data, cell)
        h0 = given or None
    result = tbptt_bias(
        cell, ks, params, inputs, targets, h0=h0, T=args.T, B=args.B, seed=args.seed
    )
    print(result.table())
    if args.derivation or args.latex:
        print()
        print(truncated_derivation_text(cell, max(ks), latex=args.latex))
    if args.output:
        try:
            path = result.plot(args.output)
        except ModuleNotFoundError as exc:
            raise RnnsymError(str(exc)) from None
        print(f"plot written to {path}")
    return 0
