"""``rs.verify``: the scalar oracle and the kernel checks, as one report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .finite_differences import GradientReport
from .kernel_check import KernelReport
from .symbolic import OracleReport

if TYPE_CHECKING:
    from .models import ModelOracleReport


@dataclass
class VerificationReport:
    """The oracle's check of the derivation and the checks of the kernel.

    ``kernel`` holds :func:`check_kernel`'s checks (cells); ``gradients`` the finite
    differences of a composed model (``verify_model``).
    """

    oracle: OracleReport | ModelOracleReport | None
    gradients: GradientReport | None = None
    notes: list[str] = field(default_factory=list)
    kernel: KernelReport | None = None

    @property
    def ok(self) -> bool:
        parts = [self.oracle, self.gradients, self.kernel]
        return all(p.ok for p in parts if p is not None)

    def __str__(self) -> str:
        lines = ["Verification"]
        if self.oracle is not None:
            lines.append(f"  {self.oracle}")
            if isinstance(self.oracle, OracleReport):
                for name, digits in self.oracle.agreement.items():
                    shown = "exact" if math.isinf(digits) else f"{digits:.0f} digits"
                    lines.append(f"    {name}: {shown}")
        for part in (self.kernel, self.gradients):
            if part is not None:
                lines.append("  " + str(part).replace("\n", "\n  "))
        lines.extend(f"  {note}" for note in self.notes)
        lines.append(f"  result: {'all checks passed' if self.ok else 'CHECKS FAILED'}")
        return "\n".join(lines)
