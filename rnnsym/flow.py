"""Gradient flow through time: how far a perturbation of the state, or an error, travels.

``gradient_flow(cell, params, inputs)`` measures, along the actual trajectory of a cell, the
norm of the Jacobian ∂h(t)/∂h(τ) for every pair τ ≤ t and, given targets, the norm of the
error bra ⟨δ_t(τ)| = ∂L(t)/∂h(τ) (the slides' bra is this times G(τ)); it fits the rate per
step at which the Jacobian shrinks (vanishing gradients) or grows (exploding gradients).
Every number is a gradient computed by a generated kernel: no finite differences, no Jacobian
written for a cell. ``rnnsym flow CELL`` draws the map (``register_cli``). See docs/flow.md.
"""

from __future__ import annotations

import argparse
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sympy as sp

from .cell import Cell
from .errors import RnnsymError
from .ir.ops import add, hadamard
from .kernel import compile_cell
from .losses import linear_loss
from .transform import fresh_name, replay, vjp_cell

__all__ = [
    "GradientFlow",
    "gradient_flow",
    "FlowCell",
    "flow_cell",
    "RECURRENT_WEIGHTS",
    "rescale_recurrent",
    "register_cli",
]

REDUCTIONS = ("mean", "max", "none")

# the recurrent weight of each built-in cell that has one: the matrix (or the stack of one
# n × n block per gate, or the diagonal of a vector) that multiplies the state h(t − 1)
RECURRENT_WEIGHTS = {
    "elman": "W",
    "elman_relu": "W",
    "slides": "J_h",
    "indrnn": "u",
    "lstm": "W_hh",
    "lstm_peephole": "W_hh",
    "gru": "W_hh",
}


@dataclass(frozen=True)
class FlowCell:
    """The analysis cell of :func:`flow_cell` and the names of what it adds to the cell."""

    cell: Cell
    weight: str  # input of size 1: the weight w(t) of the step's loss L(t) (unread without one)
    probes: dict[str, str]  # state -> input z_s(t) added to the state where L(t) reads it
    seeds: dict[str, str]  # state -> target d_s(t) of the term ⟨d_s(t)|s(t)⟩


def flow_cell(cell: Cell) -> FlowCell:
    """``cell`` with its loss replaced by w(t) L(t)|_{s(t) → s(t) + z_s(t)} + Σ_s ⟨d_s(t)|s(t)⟩.

    The updates are the cell's own, so the trajectory and its sensitivities are those of the
    cell. With w = 0, z = 0 and d_s(t) = e_i at one step t, the gradient of h(0) that the
    generated ``vjp`` returns is row i of ∂s(t)/∂s(0); with d = 0 and w = 1 at step t only, it
    is ∂L(t)/∂s(0); with z = 0 the gradient of the input z_s(t) is ∂L(t)/∂s(t), the partial
    derivative of the step's loss in the state it reads (the other states held fixed).
    """
    if not cell.states:
        raise RnnsymError(
            f"cell {cell.name!r} has no state (its steps decouple, e.g. teacher forcing): "
            f"there is no h(t) for the gradient to flow through"
        )
    out = Cell(f"{cell.name}_flow")
    mapping = replay(cell, out, loss=False, outputs=False)
    weight = out.input(fresh_name(out, "w"), 1).symbol
    probes, seeds, probed = {}, {}, dict(mapping)
    for name, state in cell.states.items():
        new = mapping[state.symbol]
        probes[name] = fresh_name(out, f"z_{name}")
        z = out.input(probes[name], new.shape[0]).symbol
        probed[state.symbol] = add(new, z)
    for name, term in cell.output_defs.items():
        symbol = out.output(name, term.expr.xreplace(probed)).symbol
        probed[cell._vars[name].symbol] = symbol
    for term in cell._loss_terms:
        out.loss(hadamard(weight, term.expr.xreplace(probed)))
    for name, state in cell.states.items():
        seeds[name] = fresh_name(out, f"d_{name}")
        d = out.target(seeds[name], mapping[state.symbol].shape[0])
        out.loss(linear_loss(d, out.states[name]))
    out.check()
    return FlowCell(out, weight.name, probes, seeds)


_KERNELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _flow_kernel(cell: Cell):
    """(:func:`flow_cell` of ``cell``, its kernel, the kernel of the cell's forward pass, which
    has no loss to need), built once per cell object."""
    entry = _KERNELS.get(cell)
    if entry is None:
        fc = flow_cell(cell)
        entry = (fc, compile_cell(fc.cell), compile_cell(vjp_cell(cell)[0]))
        _KERNELS[cell] = entry
    return entry


@dataclass(frozen=True)
class GradientFlow:
    """The result of :func:`gradient_flow`.

    ``jacobian_norms[t, τ] = ‖∂h(t)/∂h(τ)‖₂`` (spectral norm) and ``error_norms[t, τ] =
    ‖∂L(t)/∂h(τ)‖₂`` for 0 ≤ τ ≤ t ≤ T, h(0) the initial state; NaN above the diagonal, and
    in row 0 of ``error_norms`` (there is no L(0)). Reduced over the batch by ``reduce``
    (``"mean"`` or ``"max"``), or with a leading batch axis (B, T + 1, T + 1) for ``"none"``.
    ``error_norms`` is None without targets. ``rate`` is the growth factor per step ρ fitted
    to log ‖∂h(t)/∂h(τ)‖ against t − τ over all τ < t and every batch element; ``verdict`` is
    ``"vanishing"`` (ρ < 1), ``"exploding"`` (ρ > 1) or ``"neutral"`` (ρ = 1).
    """

    cell_name: str
    states: tuple[str, ...]  # the states that make up h, in order
    jacobian_norms: np.ndarray
    error_norms: np.ndarray | None
    rate: float
    verdict: str
    reduce: str

    @property
    def T(self) -> int:
        return self.jacobian_norms.shape[-1] - 1

    def summary(self) -> str:
        """One line: the cell, the state, the rate per step and the verdict."""
        state = "(" + ", ".join(self.states) + ")" if len(self.states) > 1 else self.states[0]
        if self.rate > 0 and self.rate != 1:
            steps = 1 / abs(math.log(self.rate))
            change = "shrinks" if self.rate < 1 else "grows"
            scale = f": ‖∂h(t)/∂h(τ)‖ {change} by a factor e every {steps:.3g} steps"
        else:
            scale = ""
        return (
            f"{self.cell_name}: h = {state}, T = {self.T}, rate per step ρ = {self.rate:.4f} "
            f"({self.verdict}){scale}"
        )

    def plot(self, path: str | Path) -> Path:
        """Draw the Jacobian map (and the error map, if computed) as heatmaps of log10 norms
        over (τ, t); needs matplotlib (``pip install 'rnnsym[plot]'``)."""
        plt = _pyplot()
        maps = [("‖∂h(t)/∂h(τ)‖₂", self.jacobian_norms)]
        if self.error_norms is not None:
            maps.append(("‖⟨δ_t(τ)|‖ = ‖∂L(t)/∂h(τ)‖₂", self.error_norms))
        fig, axes = plt.subplots(1, len(maps), figsize=(5.2 * len(maps), 4.4), squeeze=False)
        for ax, (title, norms) in zip(axes[0], maps, strict=True):
            if norms.ndim == 3:  # reduce="none": the batch mean
                norms = np.mean(norms, axis=0)
            with np.errstate(divide="ignore"):
                shown = np.log10(norms)
            image = ax.imshow(shown, origin="lower", cmap="viridis", interpolation="nearest")
            ax.set_xlabel("τ (the state perturbed)")
            ax.set_ylabel("t (the state observed)")
            ax.set_title(f"log10 {title}", fontsize=10)
            fig.colorbar(image, ax=ax, shrink=0.85)
        fig.suptitle(
            f"{self.cell_name}: ρ = {self.rate:.3f} per step ({self.verdict})", fontsize=11
        )
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "drawing the gradient-flow map needs matplotlib, which is not installed: "
            "pip install 'rnnsym[plot]'",
            name="matplotlib",
        ) from None
    return plt


def gradient_flow(
    cell_or_kernel,
    params: dict,
    inputs: dict,
    h0=None,
    targets: dict | None = None,
    *,
    state: str | None = None,
    reduce: str = "mean",
) -> GradientFlow:
    """The norms of ∂h(t)/∂h(τ) and of the error bra ∂L(t)/∂h(τ) for all τ ≤ t, and the rate.

    ``cell_or_kernel`` is an :class:`~rnnsym.Cell` or a kernel of one (its cell is used);
    ``params``, ``inputs`` and ``h0`` are as for ``kernel.forward``. h is the concatenation of
    all states in the cell's order (an LSTM's (h, c)), or the one named by ``state``, in which
    case the Jacobian is that state's block (the other states at τ held fixed). ``targets``
    (as for ``loss_and_grad``) give ``error_norms``; without them it is None. ``reduce`` is
    ``"mean"``, ``"max"`` (over the batch) or ``"none"`` (a leading batch axis).
    The kernel work is O(T²) steps: T calls of the generated kernel, one per lag t − τ.
    """
    cell = getattr(cell_or_kernel, "cell", cell_or_kernel)
    if not isinstance(cell, Cell):
        kind = getattr(cell_or_kernel, "kind", None)
        what = f"a composed model ({kind})" if kind else type(cell_or_kernel).__name__
        raise RnnsymError(
            f"gradient_flow takes an rnnsym.Cell or a kernel of one, got {what}; the flow "
            f"through time is measured for one cell"
        )
    if reduce not in REDUCTIONS:
        raise ValueError(
            f"reduce={reduce!r} is not a reduction over the batch; use one of "
            f"{', '.join(repr(r) for r in REDUCTIONS)}"
        )
    fc, kernel, own = _flow_kernel(cell)
    if state is None:
        chosen = list(cell.states)
    elif state in cell.states:
        chosen = [state]
    else:
        raise ValueError(
            f"state={state!r} is not a state of cell {cell.name!r}; its states are "
            f"{', '.join(repr(s) for s in cell.states)}"
        )
    if not isinstance(inputs, dict):
        raise ValueError(
            f"inputs must be a dict mapping names to arrays, got {type(inputs).__name__}"
        )
    inputs = _with_fed_back(cell, kernel.spec, inputs, targets, params)
    if targets is not None and not cell._loss_terms:
        raise ValueError(
            f"targets given, but cell {cell.name!r} has no loss: there is no error bra "
            f"∂L(t)/∂h(τ) to measure; leave targets out for the Jacobian norms"
        )
    # the forward pass checks the arrays (errors name them) and gives the trajectory
    run = own.forward(params, inputs, h0)
    sizes = {s: np.shape(run[s])[-1] for s in cell.states}
    T, B = np.shape(run[next(iter(cell.states))])[:2]
    dtype = np.asarray(run[next(iter(cell.states))]).dtype
    start = _initial(cell, h0, B, sizes, dtype)
    path = {}  # s(0..T) of every state, (T + 1, B, n)
    for s in cell.states:
        path[s] = np.concatenate([start[s][None], np.asarray(run[s])], axis=0)
    seeds = {fc.seeds[s]: np.zeros((T, B, n), dtype) for s, n in sizes.items()}
    full_targets = _targets_or_zeros(cell, kernel.spec, targets, params, sizes, T, B, dtype)

    with_errors = targets is not None
    jac = np.full((B, T + 1, T + 1), np.nan)
    err = np.full((B, T + 1, T + 1), np.nan) if with_errors else None
    for b in range(B):
        np.fill_diagonal(jac[b], 1.0)  # τ = t: ∂h(t)/∂h(t) is the identity
    problem = _Problem(fc, kernel, params, inputs, full_targets, path, sizes, chosen, cell)
    for lag in range(1, T + 1):
        norms, errors = problem.lag(lag, with_errors)
        tau = np.arange(T - lag + 1)
        jac[:, tau + lag, tau] = norms.T
        if with_errors:
            err[:, tau + lag, tau] = errors.T
    if with_errors:
        # τ = t: ∂L(t)/∂h(t), the gradient of the probes z_s(t), one run over the whole sequence
        probes = {fc.weight: np.ones((T, B, 1), dtype)}
        probes |= {fc.probes[s]: np.zeros((T, B, n), dtype) for s, n in sizes.items()}
        targets_all = {**full_targets, **seeds}
        _, _, input_grads, _ = kernel.vjp(params, {**inputs, **probes}, targets_all, h0)
        local = np.concatenate([np.asarray(input_grads[fc.probes[s]]) for s in chosen], axis=-1)
        steps = np.arange(1, T + 1)
        err[:, steps, steps] = np.linalg.norm(local, axis=-1).T
    rate = _rate(jac)
    verdict = "vanishing" if rate < 1 else "exploding" if rate > 1 else "neutral"
    return GradientFlow(
        cell.name,
        tuple(chosen),
        _reduce(jac, reduce),
        None if err is None else _reduce(err, reduce),
        rate,
        verdict,
        reduce,
    )


@dataclass(frozen=True)
class _Problem:
    """What the windows of every lag are cut from: the flow kernel, the arrays, the trajectory
    s(0..T) (``path``) and the states that make up h (``chosen``)."""

    fc: FlowCell
    kernel: object
    params: dict
    inputs: dict
    targets: dict
    path: dict
    sizes: dict
    chosen: list
    cell: Cell

    def lag(self, lag: int, with_errors: bool):
        """‖∂h(τ + lag)/∂h(τ)‖₂ and (with errors) ‖∂L(τ + lag)/∂h(τ)‖, each (P, B) for τ = 0 ..
        P − 1 = T − lag, from one call of the kernel on the P windows τ + 1 .. τ + lag,
        batched with one row per unit seed e_i (N rows) and one for the error."""
        fc, sizes, chosen = self.fc, self.sizes, self.chosen
        T, B = self.path[chosen[0]].shape[0] - 1, self.path[chosen[0]].shape[1]
        dtype = self.path[chosen[0]].dtype
        N = sum(sizes[s] for s in chosen)
        P, K = T - lag + 1, N + (1 if with_errors else 0)
        rows = (lag, P, K, B)  # window step, τ, row kind, batch element
        inputs = {}
        for name, array in self.inputs.items():
            if name in self.cell.context_inputs:
                per_sequence = np.broadcast_to(array, (B, np.shape(array)[-1]))
                inputs[name] = _per_window(per_sequence, rows)
            else:
                inputs[name] = _window(array, rows)
        weight = np.zeros((lag, P, K, B, 1), dtype)
        if with_errors:
            weight[lag - 1, :, N] = 1.0  # row N: the loss of the window's last step only
        inputs[fc.weight] = weight.reshape(lag, P * K * B, 1)
        targets = {name: _window(array, rows) for name, array in self.targets.items()}
        offset = 0
        for s, n in sizes.items():
            inputs[fc.probes[s]] = np.zeros((lag, P * K * B, n), dtype)
            d = np.zeros((lag, P, K, B, n), dtype)
            if s in chosen:
                for j in range(n):  # row offset + j: e_j of state s at the window's last step
                    d[lag - 1, :, offset + j, :, j] = 1.0
                offset += n
            targets[fc.seeds[s]] = d.reshape(lag, P * K * B, n)
        # h(0) of the window from τ is s(τ): (P, B, n) -> (P, K, B, n) -> (P K B, n)
        h0 = {s: _window(self.path[s], (1,) + rows[1:])[0] for s in self.cell.states}
        _, _, _, grads0 = self.kernel.vjp(self.params, inputs, targets, h0)
        g = np.concatenate([np.asarray(grads0[s]) for s in chosen], axis=-1)
        g = g.reshape(P, K, B, N)
        J = g[:, :N].transpose(0, 2, 1, 3)  # (P, B, N, N): row i is e_iᵀ ∂h(τ + lag)/∂h(τ)
        norms = np.linalg.norm(J, ord=2, axis=(-2, -1))
        return norms, np.linalg.norm(g[:, N], axis=-1) if with_errors else None


def _with_fed_back(cell: Cell, spec: dict, inputs: dict, targets: dict | None, params) -> dict:
    """``inputs`` with every fed-back input y(t − 1) given: windows that start at τ > 0 need
    y(τ), which the kernel would replace by y(0) = 0 if left to fill it from the targets.
    Class indices become 1-of-K rows, as the kernel makes them."""
    inputs = dict(inputs)
    for name, target in cell.fed_back.items():
        if name in inputs:
            continue
        if targets is None or target not in targets:
            raise ValueError(
                f"inputs[{name!r}] is missing: it is the fed-back {target}(t-1); give it, or "
                f"give targets[{target!r}] to fill it from"
            )
        y = np.asarray(targets[target])
        if target in cell.class_targets and y.ndim == 2 and y.dtype.kind in "iu":
            y = np.eye(_size(spec, params, spec["targets"][target][0]))[y]
        if y.ndim != 3:
            raise ValueError(
                f"targets[{target!r}] has shape {y.shape}; expected (T, B, size) to fill the "
                f"fed-back input {name!r} from"
            )
        shifted = np.zeros_like(y)
        shifted[1:] = y[:-1]  # y(t - 1), with y(0) = 0, as the kernel fills it
        inputs[name] = shifted
    return inputs


def _size(spec: dict, params: dict, dim: str, states: dict | None = None) -> int:
    """The value of the size expression ``dim``, read off the parameters' (and the states')
    shapes."""
    known = {}
    for name, dims in spec["params"].items():
        if name in params:
            for d, value in zip(dims, np.shape(params[name]), strict=False):
                known[sp.Symbol(d)] = value
    for name, value in (states or {}).items():
        known[sp.Symbol(spec["states"][name][0])] = value
    size = sp.sympify(sp.sympify(dim).xreplace(known))
    if not size.is_Integer:
        raise ValueError(f"the size {dim} is not fixed by the parameters' shapes; give targets")
    return int(size)


def _initial(cell: Cell, h0, B: int, sizes: dict, dtype) -> dict[str, np.ndarray]:
    """h(0) of every state as (B, n), from ``h0`` as the kernel took it (None: zeros)."""
    if h0 is None:
        given = {}
    elif isinstance(h0, dict):
        given = h0
    else:
        given = {next(iter(cell.states)): h0}
    out = {}
    for s, n in sizes.items():
        value = given.get(s)
        if value is None:
            out[s] = np.zeros((B, n), dtype)
        else:
            out[s] = np.array(np.broadcast_to(np.asarray(value), (B, n)), dtype=dtype)
    return out


def _targets_or_zeros(cell: Cell, spec: dict, targets, params, sizes, T, B, dtype) -> dict:
    """The cell's targets, or zeros of their shapes where none are given (their loss is then
    weighted by w = 0 and reaches no gradient)."""
    if targets is not None:
        if not isinstance(targets, dict):
            raise ValueError(
                f"targets must be a dict mapping names to arrays, got {type(targets).__name__}"
            )
        return dict(targets)
    out = {}
    for name in cell.targets:
        if name in cell.class_targets:
            out[name] = np.zeros((T, B), dtype=np.int64)
        else:
            size = _size(spec, params, spec["targets"][name][0], sizes)
            out[name] = np.zeros((T, B, size), dtype)
    return out


def _window(array, rows: tuple) -> np.ndarray:
    """A sequence (T, B, ...) cut into the windows of ``rows`` = (lag, P, K, B): window p is
    steps p + 1 .. p + lag, repeated for the K row kinds, as (lag, P K B, ...)."""
    lag, P, K, B = rows
    index = np.arange(lag)[:, None] + np.arange(P)[None, :]  # (lag, P): 0-based step index
    a = np.asarray(array)[index]  # (lag, P, B, ...)
    a = np.broadcast_to(a[:, :, None], (lag, P, K) + a.shape[2:])
    return a.reshape((lag, P * K * B) + a.shape[4:])


def _per_window(array, rows: tuple) -> np.ndarray:
    """A per-sequence array (B, ...) repeated for every window: (P K B, ...)."""
    _, P, K, B = rows
    a = np.broadcast_to(np.asarray(array)[None, None], (P, K) + np.shape(array))
    return a.reshape((P * K * B,) + a.shape[3:])


def _reduce(norms: np.ndarray, reduce: str) -> np.ndarray:
    if reduce == "none":
        return norms
    return np.mean(norms, axis=0) if reduce == "mean" else np.max(norms, axis=0)


def _rate(norms: np.ndarray) -> float:
    """ρ = exp(k) of the least-squares line log ‖∂h(t)/∂h(τ)‖ = a + k (t − τ) over τ < t and
    the batch (through the origin, a = 0, when T = 1 gives one lag only); a zero norm counts
    as the smallest positive float."""
    B, size, _ = norms.shape
    t, tau = np.tril_indices(size, -1)
    lags = np.broadcast_to((t - tau).astype(float), (B, len(t))).ravel()
    logs = np.log(np.maximum(norms[:, t, tau], np.finfo(float).tiny)).ravel()
    if np.ptp(lags) == 0:
        return float(np.exp(np.sum(lags * logs) / np.sum(lags * lags)))
    slope = np.sum((lags - lags.mean()) * (logs - logs.mean())) / np.sum((lags - lags.mean()) ** 2)
    return float(np.exp(slope))


# ----- the command line: rnnsym flow CELL -----


def rescale_recurrent(params: dict, weight: str, radius: float) -> dict:
    """``params`` with the recurrent weight ``weight`` rescaled to spectral radius ``radius``:
    a square matrix as a whole, a stack of square blocks (k n × n, one per gate) block by block,
    a vector (a diagonal recurrence, IndRNN) by its largest magnitude."""
    if not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius={radius!r}: the spectral radius must be a positive number")
    if weight not in params:
        raise ValueError(
            f"recurrent weight {weight!r} is not a parameter; the parameters are "
            f"{', '.join(params)}"
        )
    W = np.asarray(params[weight], dtype=float)
    if W.ndim == 1:
        blocks = [np.diag(W)]
    elif W.ndim == 2 and W.shape[0] % W.shape[1] == 0:
        n = W.shape[1]
        blocks = [W[i : i + n] for i in range(0, W.shape[0], n)]
    else:
        raise ValueError(
            f"recurrent weight {weight!r} has shape {W.shape}; expected a square matrix "
            f"(n, n), a stack of square blocks (k n, n) or a vector (n,) (a diagonal)"
        )
    scaled = []
    for i, block in enumerate(blocks):
        current = float(np.max(np.abs(np.linalg.eigvals(block))))
        if current == 0:
            raise ValueError(
                f"radius: block {i} of {weight!r} has spectral radius 0 and cannot be "
                f"rescaled to {radius}"
            )
        scaled.append(block * (radius / current))
    new = np.diag(scaled[0]) if W.ndim == 1 else np.concatenate(scaled, axis=0)
    return {**params, weight: new.astype(np.asarray(params[weight]).dtype)}


def _load_params(path: str, cell: Cell) -> tuple[dict, dict[str, int]]:
    """The parameters of ``cell`` from an .npz file, each checked against the cell's shapes,
    and the sizes they fix."""
    try:
        with np.load(path) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError) as exc:
        raise RnnsymError(f"--params {path}: cannot read it as an .npz file ({exc})") from None
    missing = [name for name in cell.params if name not in arrays]
    if missing:
        raise RnnsymError(
            f"--params {path}: no array {missing[0]!r}; cell {cell.name!r} needs "
            f"{', '.join(cell.params)}"
        )
    extra = [name for name in arrays if name not in cell.params]
    if extra:
        raise RnnsymError(
            f"--params {path}: {extra[0]!r} is not a parameter of cell {cell.name!r} "
            f"(its parameters: {', '.join(cell.params)})"
        )
    sizes = {}  # size symbol -> value, from the dimensions that are a size alone
    for name, var in cell.params.items():
        expected = var.symbol.shape if var.symbol.shape[1] != 1 else var.symbol.shape[:1]
        for dim, value in zip(expected, arrays[name].shape, strict=False):
            if isinstance(dim, sp.Symbol):
                sizes.setdefault(dim, value)
    for name, var in cell.params.items():
        expected = var.symbol.shape if var.symbol.shape[1] != 1 else var.symbol.shape[:1]
        want = tuple(sp.sympify(d).xreplace(sizes) for d in expected)
        if arrays[name].shape != want:
            raise RnnsymError(
                f"--params {path}: {name!r} has shape {arrays[name].shape}; expected "
                f"{_tuple_text(expected)} = {_tuple_text(want)} (sizes "
                f"{', '.join(f'{k} = {v}' for k, v in sizes.items())})"
            )
        if arrays[name].dtype.kind != "f":
            raise RnnsymError(
                f"--params {path}: {name!r} has dtype {arrays[name].dtype}; expected float"
            )
    return {name: arrays[name].astype(np.float64) for name in cell.params}, {
        str(k): int(v) for k, v in sizes.items()
    }


def _sizes(options: list[str], cell: Cell) -> dict[str, int]:
    """``--size NAME=VALUE`` options as {size name: value}, each checked."""
    sizes = {}
    for option in options:
        name, sep, value = option.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise RnnsymError(f"--size {option!r}: expected NAME=VALUE, VALUE a positive integer")
        if name not in cell.size_symbols:
            raise RnnsymError(
                f"--size {option!r}: {name!r} is not a size of cell {cell.name!r}; its sizes "
                f"are {', '.join(sorted(cell.size_symbols))}"
            )
        sizes[name] = int(value)
    return sizes


def _tuple_text(dims) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value < 1:
            raise ValueError(text)
        return value

    parse.__name__ = "positive integer"
    return parse


def register_cli(subparsers, load_target: Callable[[str], object]) -> argparse.ArgumentParser:
    """Add ``rnnsym flow CELL`` to the ``rnnsym`` command's subparsers. ``load_target`` turns
    the CELL argument (a built-in name or PATH.py:FUNC) into a cell: the CLI's own loader."""
    p = subparsers.add_parser(
        "flow",
        help="gradient flow: ‖∂h(t)/∂h(τ)‖ and the error bra over (τ, t), vanishing or exploding",
        description="Measure how the Jacobian ∂h(t)/∂h(τ) and the error bra ∂L(t)/∂h(τ) "
        "shrink or grow with t - τ, from the generated kernel's sensitivities on a random "
        "problem (or your parameters), and fit the rate per step.",
    )
    p.add_argument("cell", help="a built-in cell name, or PATH.py:FUNC for your own cell")
    p.add_argument(
        "--params",
        metavar="FILE.npz",
        help="the cell's parameters (one array per name); default: random, as rs.verify",
    )
    p.add_argument("--T", type=_positive(int), default=30, help="number of steps (default 30)")
    p.add_argument("--B", type=_positive(int), default=1, help="batch size (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random problem (default 0)")
    p.add_argument(
        "--radius",
        type=float,
        metavar="R",
        help="rescale the recurrent weight to this spectral radius (per n × n gate block)",
    )
    p.add_argument(
        "--weight",
        metavar="NAME",
        help="the recurrent weight --radius rescales (default: W for elman, W_hh for lstm and "
        "gru, ...; required for other cells)",
    )
    p.add_argument(
        "--state",
        metavar="NAME",
        help="measure one state (default: all states concatenated, an LSTM's (h, c))",
    )
    p.add_argument(
        "--input-scale",
        type=float,
        metavar="S",
        default=1.0,
        help="multiply the random inputs by this (0: zero inputs, the near-linear regime)",
    )
    p.add_argument(
        "--bias-scale",
        type=float,
        metavar="S",
        default=1.0,
        help="multiply every vector parameter but the recurrent weight (the biases) by this; "
        "with --input-scale 0 and --bias-scale 0, h stays at 0 and the map is ‖A^(t-τ)‖",
    )
    p.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a size of the random problem, e.g. --size n=32 (default n = 5, m = 4, k = 3)",
    )
    p.add_argument(
        "--reduce",
        choices=["mean", "max"],
        default="mean",
        help="how the map reduces over the batch (default mean)",
    )
    p.add_argument("-o", "--output", metavar="PATH.png", help="draw the heatmap here (matplotlib)")

    def handler(args: argparse.Namespace) -> int:
        return _run_flow(args, load_target)

    p.set_defaults(handler=handler)
    return p


def _run_flow(args: argparse.Namespace, load_target) -> int:
    from .problems import random_problem

    cell = load_target(args.cell)
    if not isinstance(cell, Cell):
        raise RnnsymError(
            f"flow: {args.cell!r} is a model of several cells; the flow through time is "
            f"measured for one cell"
        )
    if args.radius is not None and not (math.isfinite(args.radius) and args.radius > 0):
        raise RnnsymError(f"--radius {args.radius}: the spectral radius must be positive")
    if args.state is not None and args.state not in cell.states:
        raise RnnsymError(
            f"--state {args.state!r} is not a state of cell {cell.name!r}; its states are "
            f"{', '.join(cell.states)}"
        )
    sizes = _sizes(args.size, cell)
    params = None
    if args.params:
        params, fixed = _load_params(args.params, cell)
        sizes = {**sizes, **fixed}
    problem = random_problem(cell, sizes=sizes, T=args.T, B=args.B, seed=args.seed)
    params = problem[0] if params is None else params
    inputs = problem[1]
    targets = problem[2] if cell._loss_terms else None  # no loss: the Jacobians alone
    inputs = {name: array * args.input_scale for name, array in inputs.items()}
    weight = args.weight
    if weight is None and ":" not in args.cell:
        weight = RECURRENT_WEIGHTS.get(args.cell)
    if args.radius is not None:
        if weight is None:
            raise RnnsymError(
                f"--radius: which parameter of cell {cell.name!r} is its recurrent weight? "
                f"Name it with --weight NAME (parameters: {', '.join(cell.params)})"
            )
        params = rescale_recurrent(params, weight, args.radius)
    params = {
        name: value * args.bias_scale if value.ndim == 1 and name != weight else value
        for name, value in params.items()
    }
    result = gradient_flow(
        cell, params, inputs, targets=targets, state=args.state, reduce=args.reduce
    )
    print(result.summary())
    errors = result.error_norms
    print(f"  t - τ   ‖∂h(t)/∂h(τ)‖₂{'   ‖∂L(t)/∂h(τ)‖₂' if errors is not None else ''}")
    print(f"         (the {args.reduce} over the batch, averaged over τ)")
    for lag in sorted({1, 2, 5, 10, 20, result.T} & set(range(1, result.T + 1))):
        line = f"{lag:7d}   {np.mean(np.diagonal(result.jacobian_norms, -lag)):14.4g}"
        if errors is not None:
            line += f"   {np.mean(np.diagonal(errors, -lag)):14.4g}"
        print(line)
    if args.output:
        try:
            path = result.plot(args.output)
        except ModuleNotFoundError as exc:
            raise RnnsymError(str(exc)) from None
        print(f"heatmap written to {path}")
    return 0
