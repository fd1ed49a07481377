"""Forward mode (RTRL) against reverse mode (BPTT) for the Elman cell: time and memory.

Run from the repository root::

    python benchmarks/bench_forward_mode.py            # full run
    python benchmarks/bench_forward_mode.py --quick    # smoke run
    python benchmarks/bench_forward_mode.py --markdown out.md

Both kernels come from ``rs.compile(rs.cells.elman(), mode=...)``; they are first checked to agree
(loss and every gradient, float64, ``rtol=1e-9``), else the script exits with status 1. Then:

1. time per call of ``loss_and_grad`` (median of several samples) for hidden sizes n at fixed
   batch B and length T, with inputs and outputs of size n too, and the slope of log(time)
   against log(n) between neighbouring sizes: forward mode carries D = 2n² + n sensitivities of n
   numbers each, one n×n product per step for each, so its time per step grows like n⁴ once the
   products dominate; reverse mode's like n²;
2. peak memory (``tracemalloc``, which sees NumPy's buffers) of each for several T at fixed n:
   flat in T for forward mode, linear in T for reverse mode.

See ``benchmarks/README.md`` and ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bench_elman import calibrate, import_rnnsym, thread_report, time_median_ms

RTOL = 1e-9
SEED = 20240602


@dataclass(frozen=True)
class Timing:
    """Median milliseconds per call of each mode at one size."""

    n: int
    D: int
    reverse_ms: float
    forward_ms: float


def make_problem(n: int, T: int, B: int, rng: np.random.Generator) -> tuple[dict, dict, dict]:
    """Elman parameters (tanh not saturated), inputs and targets; m = k = n."""
    params = {
        "W": rng.standard_normal((n, n)) / np.sqrt(n),
        "U": rng.standard_normal((n, n)) / np.sqrt(n),
        "b": 0.1 * rng.standard_normal(n),
        "V": rng.standard_normal((n, n)) / np.sqrt(n),
        "c": 0.1 * rng.standard_normal(n),
    }
    return params, {"x": rng.standard_normal((T, B, n))}, {"y": rng.standard_normal((T, B, n))}


def check_agreement(forward: tuple, reverse: tuple, label: str) -> None:
    """Exit 1 unless both modes give the same loss and gradients."""
    pairs = [("loss", np.asarray(float(forward[0])), np.asarray(float(reverse[0])))]
    pairs += [(f"grad_{k}", forward[1][k], v) for k, v in reverse[1].items()]
    for name, a, b in pairs:
        scale = max(1.0, float(np.max(np.abs(b))))
        if a.shape != b.shape or not np.allclose(a, b, rtol=RTOL, atol=RTOL * scale):
            print(f"error [{label}]: forward and reverse {name} disagree", file=sys.stderr)
            raise SystemExit(1)


def time_modes(kernels: dict, n: int, T: int, B: int, repeats: int, rng) -> Timing:
    """Check agreement, then time both modes at hidden size n."""
    params, inputs, targets = make_problem(n, T, B, rng)
    calls: dict[str, Callable[[], object]] = {
        mode: (lambda k=k: k.loss_and_grad(params, inputs, targets)) for mode, k in kernels.items()
    }
    check_agreement(calls["forward"](), calls["reverse"](), f"n={n}")
    ms = {}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for mode, call in calls.items():
            call()  # warm-up
            ms[mode] = time_median_ms(call, calibrate(call), repeats)
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(n, 2 * n * n + n, ms["reverse"], ms["forward"])


def peak_kib(call: Callable[[], object]) -> float:
    """Peak KiB traced during one call (after a warm-up call)."""
    call()
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1] / 1024
    finally:
        tracemalloc.stop()


def slope(a: Timing, b: Timing, mode: str) -> float:
    """d log(time) / d log(n) between two sizes."""
    ta, tb = getattr(a, f"{mode}_ms"), getattr(b, f"{mode}_ms")
    return math.log(tb / ta) / math.log(b.n / a.n)


def timing_table(rows: list[Timing], T: int, B: int) -> str:
    """The timings as a Markdown table."""
    lines = [
        "| n (m = k = n) | D | reverse (ms/call) | forward (ms/call) | forward / reverse "
        "| forward (ms/step) | slope reverse | slope forward |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(rows):
        slopes = (
            (f"{slope(rows[i - 1], r, 'reverse'):.1f}", f"{slope(rows[i - 1], r, 'forward'):.1f}")
            if i
            else ("", "")
        )
        lines.append(
            f"| {r.n} | {r.D} | {r.reverse_ms:.3f} | {r.forward_ms:.2f} "
            f"| {r.forward_ms / r.reverse_ms:.0f} | {r.forward_ms / T:.3f} "
            f"| {slopes[0]} | {slopes[1]} |"
        )
    return "\n".join(lines) + f"\n\nB = {B}, T = {T}, float64; slopes from the previous row.\n"


def memory_table(rows: list[tuple[int, float, float]], n: int, B: int) -> str:
    """The peak memory per T as a Markdown table."""
    lines = [
        "| T | reverse peak (KiB) | forward peak (KiB) |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {T} | {rev:.0f} | {fwd:.0f} |" for T, rev, fwd in rows]
    return "\n".join(lines) + f"\n\nn = m = k = {n}, B = {B}, float64; tracemalloc peak.\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, 3 samples")
    parser.add_argument("--repeats", type=int, default=None, help="samples per timing (7)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Check, time, measure memory and print the Markdown tables."""
    args = parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    rs = import_rnnsym()
    cell = rs.cells.elman()
    kernels: dict[str, Any] = {
        "reverse": rs.compile(cell),
        "forward": rs.compile(cell, mode="forward"),
    }
    sizes = (4, 8) if args.quick else (8, 16, 32, 64)
    lengths = (10, 20, 40) if args.quick else (50, 200, 800)
    repeats = args.repeats or (3 if args.quick else 7)
    B, T, memory_n = 4, (10 if args.quick else 50), (4 if args.quick else 16)
    rng = np.random.default_rng(SEED)
    print(thread_report())

    timings = []
    for n in sizes:
        timings.append(time_modes(kernels, n, T, B, repeats, rng))
        print(f"n={n}: forward and reverse agree; {repeats} samples each", file=sys.stderr)
    memory = []
    for length in lengths:
        params, inputs, targets = make_problem(memory_n, length, B, rng)
        peaks = [
            peak_kib(functools.partial(kernels[mode].loss_and_grad, params, inputs, targets))
            for mode in ("reverse", "forward")
        ]
        memory.append((length, *peaks))

    text = (
        "### Time per call\n\n"
        + timing_table(timings, T, B)
        + "\n### Peak memory\n\n"
        + memory_table(memory, memory_n, B)
    )
    print()
    print(text, end="")
    if args.markdown is not None:
        args.markdown.write_text(text)
        print(f"\nwrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
