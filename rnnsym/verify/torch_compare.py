"""rnnsym's built-in cells against the ``torch.nn`` modules they match (optional: needs torch).

The weights of ``torch.nn.RNN`` (tanh and relu), ``torch.nn.LSTM`` and ``torch.nn.GRU`` map to
rnnsym's parameters in the layout PyTorch documents (one layer, unidirectional,
``batch_first=False``):

- ``lstm``: ``W_ih = weight_ih_l0`` (4n, m), ``W_hh = weight_hh_l0`` (4n, n), ``b_ih =
  bias_ih_l0``, ``b_hh = bias_hh_l0``; gates stacked i, f, g, o.
- ``gru``: the same names with 3n rows, gates r, z, n, the reset gate applied after the product.
- ``elman`` / ``elman_relu``: ``W = weight_hh_l0``, ``U = weight_ih_l0``, ``b = bias_ih_l0 +
  bias_hh_l0`` (torch's two biases each get rnnsym's gradient of ``b``).

The output layer and the squared-error loss are written out in torch, autograd gives the
reference gradients, and everything runs in float64. torch is imported only when a comparison
is asked for; without it the result says "torch not installed".
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from .. import cells
from ..cell import Cell
from ..kernel import compile_cell

__all__ = ["TORCH_MODULES", "TorchComparison", "torch_builtin", "compare_with_torch"]

# rnnsym's built-in cell -> the torch.nn module it matches
TORCH_MODULES = {
    "elman": 'torch.nn.RNN(nonlinearity="tanh")',
    "elman_relu": 'torch.nn.RNN(nonlinearity="relu")',
    "lstm": "torch.nn.LSTM",
    "gru": "torch.nn.GRU",
}

# rnnsym and torch compute the same float64 arithmetic in a different order (torch adds the two
# biases separately, uses BLAS and its own sigmoid/tanh), so they differ by rounding alone:
# ~1e-16 per operation through T = 5 steps of size-3 products, ~1e-14 relative at most. 1e-10
# leaves a wide margin; a wrong term, gate order or bias mapping gives O(1) errors.
TOLERANCE = 1e-10


@dataclass
class TorchComparison:
    """Relative error of the loss and of each parameter's gradient against torch autograd.

    ``available`` is False (and ``note`` says why) when torch is not installed.
    """

    cell: str
    module: str
    available: bool
    torch_version: str = ""
    errors: dict[str, float] = field(default_factory=dict)  # "loss" and each parameter
    tolerance: float = TOLERANCE
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.available and all(
            np.isfinite(e) and e <= self.tolerance for e in self.errors.values()
        )

    def __str__(self) -> str:
        if not self.available:
            return f"PyTorch ({self.module}): {self.note}"
        worst = max(self.errors.values())
        verdict = "ok" if self.ok else "FAILED"
        return (
            f"PyTorch {self.torch_version} ({self.module}): worst relative error {worst:.1e} "
            f"(tolerance {self.tolerance:.0e}) — {verdict}"
        )


def _signature(cell: Cell) -> tuple:
    """What a cell computes: its declarations and equations, exactly."""
    return (
        tuple(cell.order),
        tuple((n, sp.srepr(v.symbol)) for n, v in cell._vars.items()),
        tuple((n, sp.srepr(t.expr)) for n, t in cell.updates.items()),
        tuple((n, sp.srepr(t.expr)) for n, t in cell.definitions.items()),
        tuple((n, sp.srepr(t.expr)) for n, t in cell.output_defs.items()),
        sp.srepr(cell.loss_expr),
    )


def torch_builtin(cell: Cell) -> str | None:
    """The name of the built-in cell that ``cell`` is, if a torch module matches it."""

    if not isinstance(cell, Cell) or cell.name not in TORCH_MODULES:
        return None
    return cell.name if _signature(cell) == _signature(cells.get(cell.name)) else None


def _relative(got, want) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = max(float(np.linalg.norm(want)), float(np.linalg.norm(got)), 1e-300)
    return float(np.linalg.norm(got - want) / scale)


def compare_with_torch(
    name: str, n: int = 3, m: int = 2, k: int = 2, T: int = 5, B: int = 2, seed: int = 0
) -> TorchComparison:
    """Loss and gradients of rnnsym's generated kernel for the built-in cell ``name`` against
    the matching ``torch.nn`` module, at random float64 weights and data from ``seed``."""
    if name not in TORCH_MODULES:
        raise ValueError(
            f"compare_with_torch: no torch module matches cell {name!r}; expected one of "
            f"{', '.join(TORCH_MODULES)}"
        )
    module_name = TORCH_MODULES[name]
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return TorchComparison(name, module_name, False, note="torch not installed")

    rng = np.random.default_rng(seed)
    gates = {"lstm": 4, "gru": 3}.get(name, 1)
    w_ih = rng.normal(0.0, 1.0 / np.sqrt(m), (gates * n, m))
    w_hh = rng.normal(0.0, 1.0 / np.sqrt(n), (gates * n, n))
    b_ih = rng.normal(0.0, 0.5, gates * n)
    b_hh = rng.normal(0.0, 0.5, gates * n)
    V = rng.normal(0.0, 1.0 / np.sqrt(n), (k, n))
    bias_out = rng.normal(0.0, 1.0, k)
    x = rng.normal(0.0, 1.0, (T, B, m))
    y = rng.normal(0.0, 1.0, (T, B, k))

    if name == "lstm":
        module = torch.nn.LSTM(m, n).double()
    elif name == "gru":
        module = torch.nn.GRU(m, n).double()
    else:
        nonlinearity = "relu" if name == "elman_relu" else "tanh"
        module = torch.nn.RNN(m, n, nonlinearity=nonlinearity).double()
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.from_numpy(w_ih))
        module.weight_hh_l0.copy_(torch.from_numpy(w_hh))
        module.bias_ih_l0.copy_(torch.from_numpy(b_ih))
        module.bias_hh_l0.copy_(torch.from_numpy(b_hh))
    V_t = torch.from_numpy(V.copy()).requires_grad_()
    bias_t = torch.from_numpy(bias_out.copy()).requires_grad_()
    h_seq, _ = module(torch.from_numpy(x))
    out = h_seq @ V_t.T + bias_t
    loss_t = 0.5 * ((out - torch.from_numpy(y)) ** 2).sum()
    loss_t.backward()

    def g(tensor) -> np.ndarray:
        return tensor.grad.detach().numpy().copy()

    if name in ("lstm", "gru"):
        params = {"W_ih": w_ih, "W_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh, "V": V, "b_V": bias_out}
        ref = {
            "W_ih": g(module.weight_ih_l0),
            "W_hh": g(module.weight_hh_l0),
            "b_ih": g(module.bias_ih_l0),
            "b_hh": g(module.bias_hh_l0),
            "V": g(V_t),
            "b_V": g(bias_t),
        }
    else:
        params = {"W": w_hh, "U": w_ih, "b": b_ih + b_hh, "V": V, "c": bias_out}
        ref = {
            "W": g(module.weight_hh_l0),
            "U": g(module.weight_ih_l0),
            "b": g(module.bias_ih_l0),
            "V": g(V_t),
            "c": g(bias_t),
        }
    kernel = compile_cell(cells.get(name))
    loss, grads = kernel.loss_and_grad(params, {"x": x}, {"y": y})
    errors = {"loss": _relative(float(loss), float(loss_t.item()))}
    errors |= {p: _relative(grads[p], ref[p]) for p in ref}
    if name not in ("lstm", "gru"):  # torch's second bias has the gradient of rnnsym's b too
        errors["b (bias_hh_l0)"] = _relative(grads["b"], g(module.bias_hh_l0))
    return TorchComparison(name, module_name, True, str(torch.__version__), errors)
