"""Sequences of different lengths in one padded batch: ``lengths=`` for every kernel.

A batch of B sequences is padded to T steps; ``lengths[b]`` says how many steps of sequence b
are real. The kernel of :func:`rnnsym.transform.masked_cell` weights each step's loss by
m(t, b) = 1 for t < lengths[b] and 0 after, so the padded steps add nothing to the loss and,
their adjoints being zero, carry no gradient: the result equals running each sequence alone at
its own length. The forward recurrence never reads a later step, so states up to a sequence's
end are untouched by its padding. The padding itself is set to zero before the kernel runs
(NaN padding would otherwise give 0 · NaN = NaN), and ``forward`` returns zeros past each end.
"""

from __future__ import annotations

import importlib

import numpy as np

from ..derive import derive
from ..transform import masked_cell

__all__ = [
    "check_lengths",
    "zero_past",
    "masked_kernel",
    "masked_call",
    "forward",
    "loss_and_grad",
    "vjp",
]


def check_lengths(lengths, T: int, B: int) -> np.ndarray:
    """``lengths`` as an integer array (B,) with every entry in 1..T; a clear error otherwise."""
    array = np.asarray(lengths)
    if array.dtype.kind not in "iu":
        raise ValueError(
            f"lengths has dtype {array.dtype}; expected integers of shape ({B},), one per sequence"
        )
    if array.shape != (B,):
        shape = "(" + ", ".join(map(str, array.shape)) + ("," if array.ndim == 1 else "") + ")"
        raise ValueError(
            f"lengths has shape {shape}; expected integers of shape ({B},), one per sequence"
        )
    bad = np.flatnonzero((array < 1) | (array > T))
    if len(bad):
        b = int(bad[0])
        raise ValueError(
            f"lengths[{b}] = {int(array[b])}; a length must be in 1..{T} (the inputs have {T} "
            f"steps)"
        )
    return array


def zero_past(array: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A (T, B, ...) NumPy array with the steps past each sequence's length set to 0, so that
    NaN padding reaches no sum (0 · NaN would be NaN)."""
    pad = np.arange(array.shape[0])[:, None] >= lengths[None, :]
    pad = pad.reshape(pad.shape + (1,) * (array.ndim - 2))
    return np.where(pad, np.zeros((), array.dtype), array)


def masked_kernel(kernel):
    """The kernel of ``kernel``'s cell with each step's loss weighted by a mask input, built
    once per kernel for its backend; returns ``(masked kernel, name of the mask input)``."""
    cached = getattr(kernel, "_masked", None)
    if cached is None:
        cell, name = masked_cell(kernel.cell)
        derivation = derive(cell)
        # the same schedule as the kernel's: weighting the loss keeps a linear state linear
        scan = getattr(kernel, "schedule", "sequential") == "scan"
        if kernel.backend == "numpy":
            from .numpy import generate_module
            from .scan import generate_scan_module

            generate = generate_scan_module if scan else generate_module
            compiled = type(kernel)(derivation, generate(derivation))
        else:
            backend = importlib.import_module(f"rnnsym.backends.{kernel.backend}")
            if scan:
                compiled = backend.compile_derivation(derivation, "scan")
            else:
                compiled = backend.compile_derivation(derivation)
        compiled.schedule = kernel.schedule
        compiled.scanned = kernel.scanned
        cached = kernel._masked = (compiled, name)
    return cached


def _where(kernel, condition: np.ndarray, a):
    """``a`` where ``condition`` (a NumPy boolean array that broadcasts), else 0, in a's own
    array type, dtype and device."""
    if kernel.backend == "torch":
        import torch

        keep = torch.as_tensor(condition, device=a.device)
        return torch.where(keep, a, torch.zeros((), dtype=a.dtype, device=a.device))
    if kernel.backend == "jax":
        import jax.numpy as jnp

        return jnp.where(condition, a, jnp.zeros((), dtype=a.dtype))
    return np.where(condition, a, np.zeros((), dtype=a.dtype))


def _as_array(kernel, array: np.ndarray, like):
    """A NumPy array as an array of ``like``'s type, dtype and device."""
    if kernel.backend == "torch":
        import torch

        return torch.as_tensor(array, dtype=like.dtype, device=like.device)
    if kernel.backend == "jax":
        import jax.numpy as jnp

        return jnp.asarray(array, dtype=like.dtype)
    return array.astype(like.dtype)


def _steps(kernel, inputs, targets) -> tuple[int, int]:
    """T and B of the padded batch, from the first per-step input or target."""
    context = kernel.spec.get("context", ())
    if not isinstance(inputs, dict):
        got = type(inputs).__name__
        raise ValueError(f"inputs must be a dict mapping names to arrays, got {got}")
    groups = [(inputs, kernel.spec["inputs"])]
    if isinstance(targets, dict):
        groups.append((targets, kernel.spec["targets"]))
    for given, names in groups:
        for name in names:
            if name in given and name not in context and hasattr(given[name], "shape"):
                shape = given[name].shape
                if len(shape) >= 2:
                    return int(shape[0]), int(shape[1])
    raise ValueError("lengths= needs a per-step input or target (T, B, ...) to take T and B from")


def _padded(kernel, inputs, targets, lengths):
    """(valid (T, B) boolean array, inputs and targets with their padding set to zero)."""
    T, B = _steps(kernel, inputs, targets)
    lengths = check_lengths(lengths, T, B)
    valid = np.arange(T)[:, None] < lengths[None, :]
    context = kernel.spec.get("context", ())
    classes = kernel.spec.get("classes", ())

    def zeroed(group, name, a):
        if name in context or not hasattr(a, "shape") or tuple(a.shape[:2]) != (T, B):
            return a  # given once per sequence, or malformed: the kernel's check names it
        if group == "targets" and name in classes:
            return _where(kernel, valid, a)
        return _where(kernel, valid[..., None], a)

    inputs = {n: zeroed("inputs", n, a) for n, a in inputs.items()}
    if isinstance(targets, dict):
        targets = {n: zeroed("targets", n, a) for n, a in targets.items()}
    return valid, inputs, targets


def _with_mask(kernel, inputs, valid, name, params, targets=None):
    # the mask in the arrays' own type and float dtype: an input's, else a target's or a
    # parameter's (a cell whose only input is fed back from its targets)
    arrays = [*inputs.values(), *(targets or {}).values(), *params.values()]
    floats = [a for a in arrays if hasattr(a, "dtype") and "float" in str(a.dtype)]
    if not floats:
        raise ValueError("lengths= needs float arrays to take the mask's dtype from")
    like = floats[0]
    mask = _as_array(kernel, valid[..., None].astype(np.float64), like)
    return {**inputs, name: mask}


def masked_call(kernel, params, inputs, targets, lengths):
    """``(masked kernel, inputs, targets)``: the arguments of the masked kernel for a padded
    batch, the padding zeroed and the mask added to the inputs (for callers that run the
    masked kernel their own way, as truncated BPTT does on windows)."""
    masked, name = masked_kernel(kernel)
    valid, inputs, targets = _padded(kernel, inputs, targets, lengths)
    return masked, _with_mask(kernel, inputs, valid, name, params, targets), targets


def forward(kernel, params, inputs, h0=None, lengths=None) -> dict:
    """``kernel.forward`` of a padded batch: states and outputs, zero past each sequence's end."""
    valid, inputs, _ = _padded(kernel, inputs, None, lengths)
    out = kernel.forward(params, inputs, h0)
    return {n: _where(kernel, valid[..., None], a) for n, a in out.items()}


def loss_and_grad(kernel, params, inputs, targets, h0=None, lengths=None):
    """``kernel.loss_and_grad`` of a padded batch: the loss of the real steps only."""
    masked, name = masked_kernel(kernel)
    valid, inputs, targets = _padded(kernel, inputs, targets, lengths)
    inputs = _with_mask(kernel, inputs, valid, name, params, targets)
    return masked.loss_and_grad(params, inputs, targets, h0)


def vjp(kernel, params, inputs, targets, h0=None, lengths=None):
    """``kernel.vjp`` of a padded batch; the input adjoints are zero past each sequence's end."""
    masked, name = masked_kernel(kernel)
    valid, inputs, targets = _padded(kernel, inputs, targets, lengths)
    loss, grads, input_grads, h0_grads = masked.vjp(
        params, _with_mask(kernel, inputs, valid, name, params, targets), targets, h0
    )
    input_grads = {n: a for n, a in input_grads.items() if n != name}
    return loss, grads, input_grads, h0_grads
