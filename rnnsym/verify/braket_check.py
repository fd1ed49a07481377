"""The bra-ket form's numbers against BPTT and the scalar oracle."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from .symbolic import agreement_digits, bptt_gradients, oracle_gradients, unrolled_point


@dataclass
class BraketReport:
    """Agreeing digits of the bra-ket gradient (two routes) with BPTT and with ``sympy.diff``."""

    sizes: dict[str, int]
    T: int
    tied: bool
    digits: int
    required: int
    columns: dict[str, dict[str, float]]  # column title -> {parameter: agreeing digits}
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(d >= self.required for col in self.columns.values() for d in col.values())

    def __str__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        tying = "tied" if self.tied else "untied (each step's weights separately)"
        lines = [
            "Verification of the bra-ket form",
            f"  at a random rational point ({sizes}, T={self.T}, weights {tying}), evaluated "
            f"with {self.digits} digits; agreeing significant digits (worst entry), need "
            f"{self.required}:",
        ]
        titles = list(self.columns)
        params = list(next(iter(self.columns.values()))) if self.columns else []
        width = max([len(p) for p in params] + [9])
        lines.append("    " + "parameter".ljust(width) + "".join(f"  {t:>26}" for t in titles))
        for p in params:
            cells = []
            for t in titles:
                d = self.columns[t][p]
                cells.append(f"  {'exact' if math.isinf(d) else f'{d:.0f}':>26}")
            lines.append("    " + p.ljust(width) + "".join(cells))
        lines.extend(f"  {note}" for note in self.notes)
        status = "all checks passed" if self.ok else "CHECKS FAILED"
        lines.append(f"  result: {status} [{self.seconds:.1f} s]")
        return "\n".join(lines)


def braket_report(
    form,
    seed: int = 0,
    digits: int = 60,
    required: int = 40,
    oracle: bool = True,
    sizes: dict[str, int] | None = None,
) -> BraketReport:
    """Check a :class:`~rnnsym.braket.SequenceForm`: its update rules and its closed form
    ⟨d|(𝕀 − 𝔾𝕁_h𝕊)⁻¹𝔾 against the core's BPTT (eqs. (6)–(9)) and ``sympy.diff``."""
    start = time.perf_counter()
    problem = unrolled_point(form.cell, form.T, sizes, seed, untied=not form.tied)
    bptt = bptt_gradients(problem, digits, form.derivation)
    routes = {
        "update rule": form.gradients(problem, digits, "update_rule"),
        "closed form": form.gradients(problem, digits, "closed_form"),
    }
    columns = {
        f"{name} vs BPTT": {p: agreement_digits(g[p], bptt[p], digits) for p in g}
        for name, g in routes.items()
    }
    notes = []
    if oracle:
        reference = oracle_gradients(problem, digits, form.derivation)
        g = routes["closed form"]
        columns["closed form vs sympy.diff"] = {
            p: agreement_digits(g[p], reference[p], digits) for p in g
        }
    else:
        notes.append("(sympy.diff oracle skipped at this T: it grows fast; pass a smaller --T)")
    return BraketReport(
        sizes={s.name: v for s, v in problem.dims.items()},
        T=form.T,
        tied=form.tied,
        digits=digits,
        required=required,
        columns=columns,
        seconds=time.perf_counter() - start,
        notes=notes,
    )
