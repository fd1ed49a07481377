"""Time the rnnsym-generated Elman BPTT kernel against the hand-written NumPy baseline.

Run from the repository root::

    python benchmarks/bench_elman.py                 # full run
    python benchmarks/bench_elman.py --quick         # smoke run, a few repeats
    python benchmarks/bench_elman.py --markdown out.md --repeats 50

Both implementations are first checked to agree (loss and every gradient, float64,
``rtol=1e-9``); the script aborts with exit status 1 if they do not, and with exit status 2
if ``rnnsym`` cannot be imported.  See ``benchmarks/README.md`` for what is measured.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import numpy as np
from handwritten_elman import loss_and_grad as handwritten_loss_and_grad

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAM_KEYS = ("W", "U", "b", "V", "c")
RTOL = 1e-9
SEED = 20240601


@dataclass(frozen=True)
class Config:
    """One benchmark configuration: batch B, input m, hidden n, output k, length T."""

    B: int
    m: int
    n: int
    k: int
    T: int
    repeats: int

    @property
    def label(self) -> str:
        """Short human-readable name used in the table."""
        return f"B={self.B}, m={self.m}, n={self.n}, k={self.k}, T={self.T}"


CONFIGS = (
    Config(B=32, m=64, n=128, k=64, T=100, repeats=30),
    Config(B=1, m=16, n=16, k=16, T=50, repeats=200),
)


@dataclass(frozen=True)
class Result:
    """Timings for one configuration (milliseconds per call)."""

    config: Config
    generated_ms: float
    handwritten_ms: float
    interleaved_ratio: float
    max_rel_diff: float


def _fail_import(reason: str) -> NoReturn:
    """Print why the generated kernel is unavailable and exit with status 2."""
    print(
        f"error: cannot use rnnsym: {reason}.\n"
        "The generated kernel is needed for this benchmark: install the package "
        "(pip install -e .) or run from a complete checkout.",
        file=sys.stderr,
    )
    raise SystemExit(2)


def import_rnnsym() -> ModuleType:
    """Import ``rnnsym`` (falling back to the repository checkout); exit 2 if unusable."""
    try:
        try:
            rs = importlib.import_module("rnnsym")
        except ImportError:
            if str(REPO_ROOT) not in sys.path:
                sys.path.insert(0, str(REPO_ROOT))
            rs = importlib.import_module("rnnsym")
    except Exception as exc:  # ImportError, or a package that is still half-written
        _fail_import(f"import failed ({type(exc).__name__}: {exc})")
    missing = [name for name in ("compile", "cells") if not hasattr(rs, name)]
    if missing:
        where = getattr(rs, "__file__", None) or list(getattr(rs, "__path__", []))
        _fail_import(f"module {where} has no attribute(s) {', '.join(missing)}")
    return rs


def thread_report() -> str:
    """Describe the BLAS/OpenMP thread pools numpy uses (threadpoolctl, if installed)."""
    lines = [f"numpy {np.__version__}"]
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        env = {
            name: os.environ[name]
            for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            if name in os.environ
        }
        lines.append(
            "threadpoolctl not installed: BLAS thread count unknown"
            + (f" (env: {env})" if env else " (no *_NUM_THREADS set)")
        )
    else:
        for pool in threadpool_info():
            lines.append(
                f"{pool.get('user_api')}/{pool.get('internal_api')}: "
                f"{pool.get('num_threads')} threads ({pool.get('filepath')})"
            )
    return "; ".join(lines)


def make_problem(
    cfg: Config, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Random float64 parameters (scaled so tanh does not saturate), inputs and targets."""
    params = {
        "W": rng.standard_normal((cfg.n, cfg.n)) / np.sqrt(cfg.n),
        "U": rng.standard_normal((cfg.n, cfg.m)) / np.sqrt(cfg.m),
        "b": 0.1 * rng.standard_normal(cfg.n),
        "V": rng.standard_normal((cfg.k, cfg.n)) / np.sqrt(cfg.n),
        "c": 0.1 * rng.standard_normal(cfg.k),
    }
    x = rng.standard_normal((cfg.T, cfg.B, cfg.m))
    y = rng.standard_normal((cfg.T, cfg.B, cfg.k))
    return params, x, y


def check_agreement(
    gen: tuple[Any, dict[str, np.ndarray]], hand: tuple[float, dict[str, np.ndarray]], label: str
) -> float:
    """Compare loss and gradients; exit 1 on mismatch, else return the max relative diff.

    ``atol`` is scaled by the largest reference magnitude (rounding error in a sum scales
    with its largest terms), so near-zero entries do not trip the ``rtol`` test.
    """
    gen_loss, gen_grads = gen
    hand_loss, hand_grads = hand
    pairs = [("loss", np.asarray(float(gen_loss)), np.asarray(hand_loss))]
    if set(gen_grads) != set(PARAM_KEYS):
        print(f"error [{label}]: generated grads have keys {sorted(gen_grads)}", file=sys.stderr)
        raise SystemExit(1)
    pairs += [(f"grad_{key}", np.asarray(gen_grads[key]), hand_grads[key]) for key in PARAM_KEYS]
    worst = 0.0
    for name, a, b in pairs:
        scale = max(1.0, float(np.max(np.abs(b))))
        if a.shape != b.shape or not np.allclose(a, b, rtol=RTOL, atol=RTOL * scale):
            diff = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("nan")
            print(
                f"error [{label}]: generated and hand-written {name} disagree "
                f"(shapes {a.shape} vs {b.shape}, max abs diff {diff:.3e}); aborting.",
                file=sys.stderr,
            )
            raise SystemExit(1)
        worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst


def calibrate(fn: Callable[[], object], target_s: float = 2e-3) -> int:
    """Number of calls per sample so a sample lasts at least ``target_s`` (timeit-style)."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        if time.perf_counter() - start >= target_s or number >= 1 << 16:
            return number
        number *= 2


def sample(fn: Callable[[], object], number: int) -> float:
    """Seconds per call, averaged over ``number`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def time_median_ms(fn: Callable[[], object], number: int, repeats: int) -> float:
    """Median over ``repeats`` samples, in milliseconds per call."""
    return 1e3 * statistics.median(sample(fn, number) for _ in range(repeats))


def interleaved_ratio(
    gen: Callable[[], object], hand: Callable[[], object], number: int, repeats: int
) -> float:
    """Median of per-pair ratios hand/generated, alternating which goes first."""
    ratios = []
    for i in range(repeats):
        if i % 2 == 0:
            t_gen = sample(gen, number)
            t_hand = sample(hand, number)
        else:
            t_hand = sample(hand, number)
            t_gen = sample(gen, number)
        ratios.append(t_hand / t_gen)
    return statistics.median(ratios)


def bench_config(
    kernel: Any, cfg: Config, repeats: int, warmup: int, rng: np.random.Generator
) -> Result:
    """Check agreement, then time both implementations for one configuration."""
    params, x, y = make_problem(cfg, rng)

    def gen() -> object:
        return kernel.loss_and_grad(params, {"x": x}, {"y": y})

    def hand() -> object:
        return handwritten_loss_and_grad(params, x, y)

    max_rel = check_agreement(gen(), handwritten_loss_and_grad(params, x, y), cfg.label)
    for _ in range(warmup):
        gen()
        hand()
    number = max(calibrate(gen), calibrate(hand))
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        gen_ms = time_median_ms(gen, number, repeats)
        hand_ms = time_median_ms(hand, number, repeats)
        ratio = interleaved_ratio(gen, hand, number, repeats)
    finally:
        if gc_was_enabled:
            gc.enable()
    return Result(cfg, gen_ms, hand_ms, ratio, max_rel)


def markdown_table(results: list[Result]) -> str:
    """The results as a Markdown table."""
    rows = [
        "| config | generated (ms, median) | hand-written (ms, median) "
        "| ratio hand/generated | ratio, interleaved (median of pairs) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r.config.label} | {r.generated_ms:.3f} | {r.handwritten_ms:.3f} "
            f"| {r.handwritten_ms / r.generated_ms:.2f} | {r.interleaved_ratio:.2f} |"
        )
    return "\n".join(rows) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=None, help="samples per timing (default: 30 / 200)"
    )
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument("--quick", action="store_true", help="smoke run with a few repeats")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: check, time and print the table."""
    args = parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    rs = import_rnnsym()
    kernel = rs.compile(rs.cells.elman())
    warmup = 1 if args.quick else 5
    rng = np.random.default_rng(SEED)

    print(thread_report())
    results = []
    for cfg in CONFIGS:
        repeats = args.repeats or (3 if args.quick else cfg.repeats)
        result = bench_config(kernel, cfg, repeats, warmup, rng)
        print(
            f"{cfg.label}: loss and gradients agree (max rel diff {result.max_rel_diff:.1e}); "
            f"{repeats} samples"
        )
        results.append(result)

    table = markdown_table(results)
    print()
    print(table, end="")
    if args.markdown is not None:
        args.markdown.write_text(table)
        print(f"\nwrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
