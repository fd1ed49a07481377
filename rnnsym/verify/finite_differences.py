"""Central finite differences of a kernel's loss against its gradients, per parameter."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class GradientReport:
    """Relative error ‖g_fd − g‖ / max(‖g_fd‖, ‖g‖) of each parameter's gradient.

    ``floors[name]`` is the rounding noise of the differences relative to that scale
    (|L| ε / eps per entry): a parameter passes when its error is within ``tolerance`` plus
    its floor, so a gradient tiny relative to the loss raises no false alarm.
    """

    errors: dict[str, float]
    eps: float
    tolerance: float
    floors: dict[str, float] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max(self.errors.values()) if self.errors else 0.0

    def passes(self, name: str) -> bool:
        error = self.errors[name]
        return bool(np.isfinite(error)) and error <= self.tolerance + self.floors.get(name, 0.0)

    @property
    def ok(self) -> bool:
        return all(self.passes(n) for n in self.errors)

    def __getitem__(self, name: str) -> float:
        return self.errors[name]

    def __str__(self) -> str:
        width = max((len(n) for n in self.errors), default=4)
        lines = [
            f"central finite differences (eps={self.eps:g}, float64), relative error per "
            f"parameter (tolerance {self.tolerance:g}):"
        ]
        for name, err in self.errors.items():
            mark = "ok" if self.passes(name) else "FAILED"
            floor = self.floors.get(name, 0.0)
            note = f"  (rounding floor {floor:.1e} added)" if floor > 0.01 * self.tolerance else ""
            lines.append(f"  {name.ljust(width)}  {err:9.2e}  {mark}{note}")
        return "\n".join(lines)


# rounding noise of one central difference: each loss carries about |L| ε of rounding
# (measured ≤ 1 |L| ε / eps per entry on a loss of 20 with gradients of 1e-6); 8 is the margin
_NOISE_MARGIN = 8.0


def check_gradients(
    kernel,
    params: dict,
    inputs: dict,
    targets: dict,
    h0=None,
    eps: float = 1e-6,
    tolerance: float = 1e-6,
    **options,
) -> GradientReport:
    """Central finite differences of the kernel's loss against its gradients, in float64.

    The tolerance is relative: central differences have truncation error O(eps²), about 1e-12
    here, and rounding error |L| ε / eps per entry, which is large relative to a gradient that
    is tiny relative to the loss. That rounding floor (times a margin of 8, times √entries for
    the norm) is added to ``tolerance`` per parameter and shown in the report.
    """

    def as64(v):  # class indices stay integers
        v = np.asarray(v)
        return v if v.dtype.kind in "iu" else v.astype(np.float64)

    params64 = {n: as64(v) for n, v in params.items()}
    inputs64 = {n: as64(v) for n, v in inputs.items()}
    targets64 = {n: as64(v) for n, v in targets.items()}
    if h0 is not None:
        options["h0"] = {n: as64(v) for n, v in h0.items()} if isinstance(h0, dict) else as64(h0)

    def loss_and_grad():
        return kernel.loss_and_grad(params64, inputs64, targets64, **options)

    loss, grads = loss_and_grad()
    epsilon = np.finfo(np.float64).eps
    errors, floors = {}, {}
    for name, value in params64.items():
        numeric = np.zeros_like(value)
        flat = value.reshape(-1)
        out = numeric.reshape(-1)
        largest = abs(float(loss))
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + eps
            plus = float(loss_and_grad()[0])
            flat[i] = saved - eps
            minus = float(loss_and_grad()[0])
            flat[i] = saved
            out[i] = (plus - minus) / (2 * eps)
            largest = max(largest, abs(plus), abs(minus))
        scale = max(np.linalg.norm(numeric), np.linalg.norm(grads[name]), 1e-300)
        errors[name] = float(np.linalg.norm(numeric - grads[name]) / scale)
        noise = _NOISE_MARGIN * largest * epsilon / eps * math.sqrt(flat.size)
        floors[name] = float(noise / scale)
    return GradientReport(errors=errors, eps=eps, tolerance=tolerance, floors=floors)
