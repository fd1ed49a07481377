"""Every backend's generated kernel against hand-hoisted NumPy, torch.nn and JAX, in one run.

Run from the repository root::

    python benchmarks/bench_backends.py                        # full run, all sizes, both cells
    python benchmarks/bench_backends.py --quick                # smoke run, a few repeats
    python benchmarks/bench_backends.py --sizes tiny,medium --cells elman --markdown out.md

For each cell (Elman, LSTM) and size (B, m, n, k, T) it builds every implementation of the loss
and all parameter gradients, checks that each agrees with the baseline (``hoisted.py``, float64,
``rtol=1e-9``; exit status 1 otherwise), then times them round-robin (one sample of each per
round, the starting implementation rotating) and reports the median time per call and the
ratio to the baseline. It also measures the peak memory of the reverse- and forward-mode NumPy
kernels and this machine's float64 GEMM rate, to give each kernel's share of it. torch, jax and
numba are optional: what is missing is reported as "n/a (why)". See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from bench_elman import calibrate, import_rnnsym, sample
from bench_forward_mode import peak_kib
from hoisted import LOSS_AND_GRAD

SEED = 20261126
# Agreement tolerance (float64). Every implementation computes the same arithmetic in another
# order (BLAS blocking, per-step vs all-rows gradient sums, XLA fusion) and with other
# elementwise routines (sigmoid as exp, logaddexp or tanh): each op is off by ~1e-16 relative,
# and through T <= 100 steps and sums of <= T·B = 6400 terms that stays below ~1e-12 of the
# array's largest entry (measured: < 1e-14 at the sizes here). 1e-9 leaves a wide margin,
# while a wrong term, gate order or bias mapping gives differences of order 1.
RTOL = 1e-9
BASELINE = "hand-hoisted NumPy"
BACKENDS = ("numpy", "torch", "jax", "numba")
MEMORY_LENGTHS = (100, 1000)
CALIBRATE_S = 2e-3  # a sample lasts at least this long


@dataclass(frozen=True)
class Size:
    """Batch B, input m, hidden n, output k, length T, and the default samples per timing."""

    name: str
    B: int
    m: int
    n: int
    k: int
    T: int
    repeats: int

    @property
    def label(self) -> str:
        """Short name for tables."""
        return f"{self.name} ({self.B}, {self.m}, {self.n}, {self.k}, {self.T})"


SIZES = {
    "tiny": Size("tiny", B=1, m=8, n=16, k=8, T=50, repeats=100),
    "medium": Size("medium", B=32, m=64, n=128, k=64, T=100, repeats=30),
    "large": Size("large", B=64, m=256, n=512, k=256, T=100, repeats=10),
}
CELLS = ("elman", "lstm")


def flops(cell: str, s: Size) -> int:
    """Floating-point operations of one loss_and_grad, counting the matrix products only.

    A product of a (p, q) by a (q, r) matrix is 2·p·q·r flops; every product here has T·B rows
    in all (elementwise work is O(T·B·n), negligible at the large size). Elman: forward U x,
    W h(t-1), V h; backward Vᵀ(o−y), Wᵀ ∇a; gradients ∇W, ∇U, ∇V, so
    2·T·B·(3n² + 2nm + 3kn). LSTM: the same with 4n gate rows for W_ih, W_hh, so
    2·T·B·(12n² + 8nm + 3kn).
    """
    TB = s.T * s.B
    if cell == "elman":
        return 2 * TB * (3 * s.n * s.n + 2 * s.n * s.m + 3 * s.k * s.n)
    return 2 * TB * (12 * s.n * s.n + 8 * s.n * s.m + 3 * s.k * s.n)


# ------------------------------------------------------------------------------------ problems


@dataclass
class Problem:
    """Float64 parameters, inputs (T, B, m) and targets (T, B, k) for one cell and size."""

    cell: str
    size: Size
    params: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray


def make_problem(cell: str, s: Size, rng: np.random.Generator) -> Problem:
    """Random parameters scaled so that tanh and sigmoid do not saturate."""
    n, m, k = s.n, s.m, s.k
    rows = 4 * n if cell == "lstm" else n
    w_in = rng.standard_normal((rows, m)) / np.sqrt(m)
    w_rec = rng.standard_normal((rows, n)) / np.sqrt(n)
    V = rng.standard_normal((k, n)) / np.sqrt(n)
    if cell == "elman":
        params = {"W": w_rec, "U": w_in, "b": 0.1 * rng.standard_normal(n)}
        params |= {"V": V, "c": 0.1 * rng.standard_normal(k)}
    else:
        params = {"W_ih": w_in, "W_hh": w_rec}
        params |= {"b_ih": 0.1 * rng.standard_normal(rows), "b_hh": 0.1 * rng.standard_normal(rows)}
        params |= {"V": V, "b_V": 0.1 * rng.standard_normal(k)}
    x = rng.standard_normal((s.T, s.B, m))
    y = rng.standard_normal((s.T, s.B, k))
    return Problem(cell, s, params, x, y)


# ------------------------------------------------------------------------------ implementations


class Unavailable(Exception):
    """An implementation that cannot run here; the message says why."""


@dataclass
class Prepared:
    """A ready implementation: ``run`` is timed; ``result`` gives (loss, grads) as NumPy."""

    run: Callable[[], object]
    result: Callable[[], tuple[float, dict[str, np.ndarray]]]


@dataclass
class Implementation:
    """A named way to compute the loss and all gradients; ``prepare`` may raise Unavailable."""

    name: str
    prepare: Callable[[Problem], Prepared]


def _reason(exc: BaseException) -> str:
    """One short line saying why something is unavailable."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 90 else text[:87] + "..."


def _optional(name: str) -> ModuleType:
    """Import an optional framework, or raise Unavailable."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise Unavailable(f"{name} not installed") from exc


_JAX_READY = False


def _jax() -> ModuleType:
    """jax with float64 enabled (before any jax array is made)."""
    global _JAX_READY
    jax = _optional("jax")
    if not _JAX_READY:
        jax.config.update("jax_enable_x64", True)
        _JAX_READY = True
    return jax


def baseline(problem: Problem) -> Prepared:
    """hoisted.py: U x and every gradient as one GEMM over all T·B rows."""
    fn = functools.partial(LOSS_AND_GRAD[problem.cell], problem.params, problem.x, problem.y)
    return Prepared(fn, fn)


def _converters(backend: str | None) -> tuple[Callable, Callable, Callable]:
    """(to the backend's arrays, back to NumPy, wait for an asynchronous result)."""
    if backend == "torch":
        torch = _optional("torch")
        return torch.from_numpy, lambda t: t.detach().cpu().numpy(), lambda r: r
    if backend == "jax":
        jax = _jax()
        return jax.numpy.asarray, np.asarray, jax.block_until_ready
    return (lambda a: a), np.asarray, (lambda r: r)


def generated(rs: ModuleType, backend: str | None) -> Callable[[Problem], Prepared]:
    """The kernel of ``rs.compile(cell)`` (backend None) or ``rs.compile(cell, backend=...)``."""
    cache: dict[str, Any] = {}

    def prepare(problem: Problem) -> Prepared:
        if problem.cell not in cache:
            cell = getattr(rs.cells, problem.cell)()
            try:
                if backend is None:
                    cache[problem.cell] = rs.compile(cell)
                else:
                    cache[problem.cell] = rs.compile(cell, backend=backend)
            except (TypeError, ValueError, NotImplementedError, ImportError) as exc:
                cache[problem.cell] = Unavailable(_reason(exc))
        kernel = cache[problem.cell]
        if isinstance(kernel, Unavailable):
            raise kernel
        to, back, wait = _converters(backend)
        params = {key: to(value) for key, value in problem.params.items()}
        inputs, targets = {"x": to(problem.x)}, {"y": to(problem.y)}

        def run() -> object:
            return wait(kernel.loss_and_grad(params, inputs, targets))

        def result() -> tuple[float, dict[str, np.ndarray]]:
            loss, grads = run()
            return float(back(loss)), {key: back(value) for key, value in grads.items()}

        return Prepared(run, result)

    return prepare


def torch_nn(problem: Problem) -> Prepared:
    """torch.nn.RNN(tanh) or nn.LSTM, then nn.Linear; loss and backward() (autograd)."""
    torch = _optional("torch")
    s, p = problem.size, problem.params
    if problem.cell == "elman":
        rnn = torch.nn.RNN(s.m, s.n, nonlinearity="tanh").double()
        weights = {"weight_hh_l0": p["W"], "weight_ih_l0": p["U"], "bias_ih_l0": p["b"]}
        weights["bias_hh_l0"] = np.zeros_like(p["b"])  # torch's second bias; b = b_ih + b_hh
        names = {"W": "weight_hh_l0", "U": "weight_ih_l0", "b": "bias_ih_l0"}
        out_names = ("V", "c")
    else:
        rnn = torch.nn.LSTM(s.m, s.n).double()
        names = {"W_ih": "weight_ih_l0", "W_hh": "weight_hh_l0"}
        names |= {"b_ih": "bias_ih_l0", "b_hh": "bias_hh_l0"}
        weights = {torch_name: p[ours] for ours, torch_name in names.items()}
        out_names = ("V", "b_V")
    linear = torch.nn.Linear(s.n, s.k).double()
    with torch.no_grad():
        for torch_name, value in weights.items():
            getattr(rnn, torch_name).copy_(torch.from_numpy(value))
        linear.weight.copy_(torch.from_numpy(p[out_names[0]]))
        linear.bias.copy_(torch.from_numpy(p[out_names[1]]))
    tensors = {ours: getattr(rnn, torch_name) for ours, torch_name in names.items()}
    tensors |= {out_names[0]: linear.weight, out_names[1]: linear.bias}
    every = list(rnn.parameters()) + list(linear.parameters())
    x, y = torch.from_numpy(problem.x), torch.from_numpy(problem.y)

    def run() -> object:
        for tensor in every:
            tensor.grad = None
        seq, _ = rnn(x)
        loss = 0.5 * (linear(seq) - y).pow(2).sum()
        loss.backward()
        return loss

    def result() -> tuple[float, dict[str, np.ndarray]]:
        loss = run()
        return float(loss.detach()), {key: t.grad.numpy().copy() for key, t in tensors.items()}

    return Prepared(run, result)


def _jax_loss(cell: str) -> Callable:
    """The loss as a JAX user writes it: the cell's step in lax.scan over t."""
    jax = _jax()
    jnp = jax.numpy

    if cell == "elman":

        def loss(p: dict, x: Any, y: Any) -> Any:
            def step(h: Any, xt: Any) -> tuple[Any, Any]:
                h = jnp.tanh(p["b"] + h @ p["W"].T + xt @ p["U"].T)
                return h, h

            h0 = jnp.zeros((x.shape[1], p["W"].shape[0]), x.dtype)
            _, hs = jax.lax.scan(step, h0, x)
            return 0.5 * jnp.sum((hs @ p["V"].T + p["c"] - y) ** 2)

        return loss

    def loss(p: dict, x: Any, y: Any) -> Any:
        def step(carry: tuple, xt: Any) -> tuple[tuple, Any]:
            h, c = carry
            a = xt @ p["W_ih"].T + p["b_ih"] + h @ p["W_hh"].T + p["b_hh"]
            a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=-1)
            c = jax.nn.sigmoid(a_f) * c + jax.nn.sigmoid(a_i) * jnp.tanh(a_g)
            h = jax.nn.sigmoid(a_o) * jnp.tanh(c)
            return (h, c), h

        zeros = jnp.zeros((x.shape[1], p["W_hh"].shape[1]), x.dtype)
        _, hs = jax.lax.scan(step, (zeros, zeros), x)
        return 0.5 * jnp.sum((hs @ p["V"].T + p["b_V"] - y) ** 2)

    return loss


def jax_scan(problem: Problem) -> Prepared:
    """jax.jit(jax.value_and_grad(loss)), loss a lax.scan over t; float64."""
    jax = _jax()
    fn = jax.jit(jax.value_and_grad(_jax_loss(problem.cell)))
    params = {key: jax.numpy.asarray(value) for key, value in problem.params.items()}
    x, y = jax.numpy.asarray(problem.x), jax.numpy.asarray(problem.y)

    def run() -> object:
        return jax.block_until_ready(fn(params, x, y))

    def result() -> tuple[float, dict[str, np.ndarray]]:
        loss, grads = run()
        return float(loss), {key: np.asarray(value) for key, value in grads.items()}

    return Prepared(run, result)


def implementations(rs: ModuleType) -> list[Implementation]:
    """Baseline first, then every generated backend, then the frameworks' own RNNs."""
    impls = [Implementation(BASELINE, baseline)]
    impls.append(Implementation("generated rs.compile", generated(rs, None)))
    impls += [Implementation(f"generated {b}", generated(rs, b)) for b in BACKENDS]
    impls.append(Implementation("torch.nn + autograd", torch_nn))
    impls.append(Implementation("JAX jit(value_and_grad(scan))", jax_scan))
    return impls


# ------------------------------------------------------------------------- agreement, timing


def check_agreement(
    got: tuple[float, dict[str, np.ndarray]],
    want: tuple[float, dict[str, np.ndarray]],
    label: str,
) -> float:
    """Exit 1 unless loss and every gradient agree; return the worst scaled difference.

    ``atol`` is RTOL times the reference array's largest magnitude (rounding error of a sum
    scales with its largest terms), so near-zero entries do not trip the relative test.
    """
    if set(got[1]) != set(want[1]):
        print(
            f"error [{label}]: gradients for {sorted(got[1])}, "
            f"expected {sorted(want[1])}; aborting.",
            file=sys.stderr,
        )
        raise SystemExit(1)
    pairs = [("loss", np.asarray(got[0]), np.asarray(want[0]))]
    pairs += [(f"grad_{key}", np.asarray(got[1][key]), want[1][key]) for key in want[1]]
    worst = 0.0
    for name, a, b in pairs:
        scale = max(1.0, float(np.max(np.abs(b))))
        if a.shape != b.shape or not np.allclose(a, b, rtol=RTOL, atol=RTOL * scale):
            diff = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("nan")
            print(
                f"error [{label}]: {name} disagrees with the {BASELINE} baseline (shapes "
                f"{a.shape} vs {b.shape}, max abs diff {diff:.3e}, rtol {RTOL:.0e}); aborting.",
                file=sys.stderr,
            )
            raise SystemExit(1)
        worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst


@dataclass
class Row:
    """One implementation at one cell and size: timings, or why it did not run."""

    name: str
    note: str = ""  # "n/a (...)" when unavailable
    samples: list[float] = field(default_factory=list)  # seconds per call, one per round
    ratios: list[float] = field(default_factory=list)  # per round: this / baseline
    max_diff: float = 0.0

    @property
    def ms(self) -> float:
        return 1e3 * statistics.median(self.samples)


def bench(problem: Problem, impls: list[Implementation], repeats: int, warmup: int) -> list[Row]:
    """Check every implementation against the baseline, then time them round-robin."""
    label = f"{problem.cell} {problem.size.label}"
    rows, ready = [], []
    reference = None
    for impl in impls:
        try:
            prepared = impl.prepare(problem)
        except Unavailable as exc:
            rows.append(Row(impl.name, note=f"n/a ({exc})"))
            continue
        try:
            last = 0.0
            for _ in range(warmup):  # compilation / jit / caches, outside the timing
                start = time.perf_counter()
                prepared.run()
                last = time.perf_counter() - start
            got = prepared.result()
        except Exception as exc:
            print(
                f"error [{label}]: {impl.name} failed: {_reason(exc)}; aborting.", file=sys.stderr
            )
            raise SystemExit(1) from exc
        if reference is None:
            reference = got
        row = Row(impl.name, max_diff=check_agreement(got, reference, f"{label}, {impl.name}"))
        rows.append(row)
        # calls per sample: one if a call lasts 2 ms or more, else as bench_elman.calibrate says
        number = 1 if last >= CALIBRATE_S else calibrate(prepared.run, CALIBRATE_S)
        ready.append((row, prepared.run, number))
    print(
        f"{label}: {len(ready)} implementations agree with the baseline "
        f"(worst scaled diff {max(r.max_diff for r, _, _ in ready):.1e}); timing, {repeats} rounds",
        file=sys.stderr,
    )
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            start = r % len(ready)
            for j in list(range(start, len(ready))) + list(range(start)):
                row, run, number = ready[j]
                row.samples.append(sample(run, number))
            gc.collect()  # between rounds, not inside a sample
    finally:
        if gc_was_enabled:
            gc.enable()
    base = ready[0][0]
    for row, _, _ in ready:
        row.ratios = [t / b for t, b in zip(row.samples, base.samples, strict=True)]
    return rows


# ---------------------------------------------------------------------- memory and GEMM peak


def gemm_peak_gflops(N: int, repeats: int) -> float:
    """Best float64 np.matmul rate of two (N, N) matrices, GFLOP/s (2·N³ flops per product)."""
    rng = np.random.default_rng(SEED)
    a, b = rng.standard_normal((N, N)), rng.standard_normal((N, N))
    out = np.empty((N, N))
    np.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * N**3 / best / 1e9


def memory_rows(
    rs: ModuleType, cell: str, s: Size, lengths: list[int], budget_mib: float
) -> list[list[str]]:
    """Peak KiB of reverse- and forward-mode loss_and_grad for each T in ``lengths``.

    Forward mode carries one sensitivity per (parameter entry, state entry): an array of about
    8·B·S·P bytes (S the states' total size, P the parameters' total size, an upper bound on
    the entries that need one), and costs ~P times the reverse kernel's time. Above
    ``budget_mib`` it is skipped with the estimate.
    """
    c = getattr(rs.cells, cell)()
    kernels = {"reverse": rs.compile(c, mode="reverse"), "forward": rs.compile(c, mode="forward")}
    rng = np.random.default_rng(SEED)
    rows = []
    for T in lengths:
        sT = Size(s.name, s.B, s.m, s.n, s.k, T, 1)
        problem = make_problem(cell, sT, rng)
        states = 2 * s.n if cell == "lstm" else s.n
        P = sum(a.size for a in problem.params.values())
        est_mib = 8 * s.B * states * P / 2**20
        peaks = []
        for mode in ("reverse", "forward"):
            if mode == "forward" and est_mib > budget_mib:
                peaks.append(f"skipped (≈{est_mib:,.0f} MiB per sensitivity array)")
                continue
            call = functools.partial(
                kernels[mode].loss_and_grad, problem.params, {"x": problem.x}, {"y": problem.y}
            )
            peaks.append(f"{peak_kib(call):,.0f}")
        rows.append([cell, sT.label, *peaks])
    return rows


# ----------------------------------------------------------------------------------- machine


def machine() -> list[str]:
    """CPU, cores, load, library versions, BLAS."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"CPU: {model}; {os.cpu_count()} logical CPUs, {usable} usable by this process",
        f"load average at start (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"OS: {platform.platform()}; Python {platform.python_version()}",
    ]
    versions = [f"numpy {np.__version__}"]
    for name in ("torch", "jax", "jaxlib", "numba"):
        try:
            versions.append(f"{name} {importlib.import_module(name).__version__}")
        except ImportError:
            versions.append(f"{name} not installed")
    lines.append("versions: " + ", ".join(versions))
    try:
        from threadpoolctl import threadpool_info

        pools = [
            f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads)"
            for p in threadpool_info()
        ]
        lines.append("BLAS (threadpoolctl): " + "; ".join(pools))
    except ImportError:
        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            lines.append(
                f"BLAS (np.show_config): {blas.get('name')} {blas.get('version')}"
                + (
                    f" [{blas['openblas configuration']}]"
                    if "openblas configuration" in blas
                    else ""
                )
            )
        except (TypeError, KeyError):
            lines.append("BLAS: unknown (no threadpoolctl, old numpy)")
    env = {
        k: os.environ[k]
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")
        if k in os.environ
    }
    lines.append(f"thread env: {env or 'none set (BLAS default threads)'}")
    return lines


# ------------------------------------------------------------------------------------ tables


def table(header: list[str], rows: list[list[str]], align: str) -> str:
    """A Markdown table; ``align`` has one letter per column (l or r)."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if a == "l" else "---:" for a in align) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def result_table(cell: str, s: Size, rows: list[Row], peak: float) -> str:
    """Time per call, ratios to the baseline, GFLOP/s and % of the GEMM peak."""
    gflop = flops(cell, s) / 1e9
    out = []
    for r in rows:
        if r.note:
            out.append([r.name, r.note, "", "", "", ""])
            continue
        base_ms = rows[0].ms
        rate = gflop / (r.ms / 1e3)
        out.append(
            [
                r.name,
                f"{r.ms:.3f}",
                f"{r.ms / base_ms:.2f}×",
                f"{statistics.median(r.ratios):.2f}×",
                f"{rate:.3g}",
                f"{100 * rate / peak:.0f}%",
            ]
        )
    header = [
        "implementation",
        "ms/call (median)",
        "ratio of medians",
        "ratio, interleaved",
        "GFLOP/s",
        "% GEMM peak",
    ]
    return table(header, out, "lrrrrr")


def summary_table(cell: str, results: dict[str, list[Row]]) -> str:
    """Interleaved ratio to the baseline, one row per size, one column per implementation."""
    names = [r.name for r in next(iter(results.values()))]
    body = []
    for label, rows in results.items():
        cells = ["n/a" if r.note else f"{statistics.median(r.ratios):.2f}×" for r in rows]
        body.append([label, *cells])
    return table(["size (B, m, n, k, T)", *names], body, "l" + "r" * len(names))


# -------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 rounds, small GEMM")
    parser.add_argument(
        "--sizes", default="tiny,medium,large", help="comma list of " + ",".join(SIZES)
    )
    parser.add_argument("--cells", default="elman,lstm", help="comma list of " + ",".join(CELLS))
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 100/30/10)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    parser.add_argument(
        "--forward-budget-mib",
        type=float,
        default=256.0,
        help="skip forward mode where one sensitivity array would exceed this (default 256)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument(
        "--memory-lengths",
        default=",".join(map(str, MEMORY_LENGTHS)),
        help="comma list of T for the memory table (default 100,1000)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: the CPUs this process may use)",
    )
    args = parser.parse_args(argv)
    args.sizes = [x.strip() for x in args.sizes.split(",") if x.strip()]
    args.cells = [x.strip() for x in args.cells.split(",") if x.strip()]
    for option, given, known in (("--sizes", args.sizes, SIZES), ("--cells", args.cells, CELLS)):
        bad = [x for x in given if x not in known]
        if bad or not given:
            parser.error(
                f"{option}: unknown {bad or 'empty list'}; expected some of {', '.join(known)}"
            )
    try:
        args.memory_lengths = [int(x) for x in args.memory_lengths.split(",") if x.strip()]
    except ValueError:
        parser.error(
            f"--memory-lengths: expected integers like 100,1000, got {args.memory_lengths!r}"
        )
    if not args.memory_lengths or min(args.memory_lengths) < 1:
        parser.error(f"--memory-lengths: expected lengths >= 1, got {args.memory_lengths}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Describe the machine, check agreement, time, measure memory; print the tables."""
    args = parse_args(argv)
    rs = import_rnnsym()
    try:
        torch = importlib.import_module("torch")
        torch.set_num_threads(args.torch_threads or len(os.sched_getaffinity(0)))
    except ImportError:
        print("torch not installed: torch.nn and the torch backend are skipped", file=sys.stderr)
    try:
        _jax()
    except Unavailable:
        print("jax not installed: JAX scan and the jax backend are skipped", file=sys.stderr)

    description = machine()
    if "torch" in sys.modules and sys.modules["torch"] is not None:
        description.append(f"torch threads: {sys.modules['torch'].get_num_threads()}")
    print("\n".join(description), file=sys.stderr)
    gemm_n = 1024 if args.quick else 2048
    peak = gemm_peak_gflops(gemm_n, 3 if args.quick else 5)
    description.append(
        f"float64 GEMM peak: {peak:.1f} GFLOP/s (np.matmul, {gemm_n}², best of runs)"
    )
    print(description[-1], file=sys.stderr)

    impls = implementations(rs)
    rng = np.random.default_rng(SEED)
    warmup = 1 if args.quick else 3
    sections = []
    for cell in args.cells:
        results: dict[str, list[Row]] = {}
        details = []
        for name in args.sizes:
            s = SIZES[name]
            repeats = args.repeats or (3 if args.quick else s.repeats)
            rows = bench(make_problem(cell, s, rng), impls, repeats, warmup)
            results[s.label] = rows
            details.append(
                f"#### {cell}, {s.label}, {repeats} rounds, "
                f"{flops(cell, s) / 1e9:.3g} GFLOP per call\n\n" + result_table(cell, s, rows, peak)
            )
        sections.append(
            f"### {cell}: time / baseline time (interleaved; below 1 is faster)\n\n"
            + summary_table(cell, results)
            + "\n"
            + "\n".join(details)
        )

    if not args.no_memory:
        mem = []
        for cell in args.cells:
            for name in ("tiny", "medium"):
                mem += memory_rows(
                    rs, cell, SIZES[name], args.memory_lengths, args.forward_budget_mib
                )
        sections.append(
            "### Peak memory of loss_and_grad, reverse vs forward mode (tracemalloc, KiB)\n\n"
            + table(["cell", "size (B, m, n, k, T)", "reverse", "forward"], mem, "llrr")
        )

    description.append(
        "load average at end (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    )
    text = (
        "### Machine\n\n"
        + "".join(f"- {line}\n" for line in description)
        + "\nRatios: time / time of the "
        + f"{BASELINE} baseline; 'interleaved' is the median of per-round ratios.\n\n"
        + "\n".join(sections)
    )
    print()
    print(text, end="")
    if args.markdown is not None:
        args.markdown.write_text(text)
        print(f"\nwrote {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
