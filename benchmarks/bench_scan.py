"""Scan against sequential schedule for a user's minGRU, and against hand-written PyTorch minGRUs.

Run from the repository root (one thread each; see ``benchmarks/README.md``)::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false \\
    python benchmarks/bench_scan.py --torch-threads 1                 # part 1: T = 4096
    python benchmarks/bench_scan.py --torch-threads 1 --part scaling  # part 2: T = 256..65536

The cell is a minGRU (Feng et al., "Were RNNs All We Needed?", 2024) written through the public
API, in the 8 lines of ``build_cell``. For each backend whose ``rs.compile(cell,
schedule="scan")`` compiles, the scan and the sequential kernels' ``loss_and_grad`` are timed,
together with two hand-written PyTorch minGRUs with ``loss.backward()`` on the CPU: the paper's
parallel log-space version (``torch.logcumsumexp``, Heinsen 2023; it needs h̃ > 0, so h̃ = g(W_h x
+ b_h) with the paper's g, a different model) and a plain loop over t of the same model as the
cell. Before timing, every implementation's loss and gradients are checked against the NumPy
sequential kernel (the log-space model against its own loop over t): exit status 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
from bench_backends import _converters, _jax, machine, table
from bench_elman import import_rnnsym, sample

BACKENDS = ("numpy", "torch", "jax")
REFERENCE = "rnnsym numpy sequential"
LOG_SPACE = "torch log-space minGRU (g(h̃) model)"
LOG_SPACE_LOOP = "torch loop of the g(h̃) model"
# float64 agreement: the scan sums the same products in another order (blocks of ~√T steps),
# the torch/JAX kernels use other elementwise routines, the log-space form computes h as
# exp(a* + logcumsumexp(·)), checked at log_space_rtol(T) instead. Every term is off by ~1e-16
# relative, so sums of T·B·k terms stay far below 1e-10 of the largest entry; a wrong term or
# gate gives differences of order 1.
RTOL64 = 1e-10
# float32 results are compared with the float64 reference: float32 rounding (6e-8) grows through
# sums of up to T·B·k ≈ 2e6 terms to ~1e-5 of the largest entry in the worst case; 1e-3 leaves
# margin while a wrong kernel is off by order 1.
RTOL32 = 1e-3


def log_space_rtol(T: int) -> float:
    """Float64 tolerance of the log-space minGRU against its own loop over t.

    Not the same arithmetic: h = exp(a* + logcumsumexp(·)) with a* a cumulative sum of T terms
    of size ~0.7, so log h is the difference of numbers of size |a*| ~ 0.7·T, each carrying the
    rounding error of a running sum (bounded by ε·Σ_t|a*(t)| ~ ε·T²). Measured here: 1.4e-12
    of the largest gradient entry at T = 256 and 1.6e-10 at T = 4096 (growth ~T^1.7).
    RTOL64·(T/256)² stays >= 100 times above that, while a wrong term is off by order 1.
    """
    return RTOL64 * max(1.0, (T / 256) ** 2)


SCALING_T = (256, 1024, 4096, 16384, 65536)


def build_cell(rs: ModuleType) -> Any:
    """A minGRU as a user writes it: the 8 lines of the issue, through the public API only."""
    cell = rs.Cell("min_gru")
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("h", n)
    W_z, b_z, W_h, b_h = (
        cell.param("W_z", n, m),
        cell.param("b_z", n),
        cell.param("W_h", n, m),
        cell.param("b_h", n),
    )  # noqa: E501
    z = cell.define("z", rs.sigmoid(W_z @ x + b_z))
    cell.update(h, (1 - z) * h.prev + z * (W_h @ x + b_h))
    V, c = cell.param("V", k, n), cell.param("c", k)
    cell.loss(rs.squared_error(cell.output("o", V @ h + c), cell.target("y", k)))
    return cell


# ------------------------------------------------------------------------------ implementations


class Unavailable(Exception):
    """An implementation that cannot run here; the message says why."""


@dataclass
class Problem:
    """Parameters, inputs x (T, B, m) and targets y (T, B, k) in one dtype."""

    T: int
    B: int
    m: int
    k: int
    dtype: str
    params: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray


@dataclass
class Impl:
    """A timed implementation: ``run`` is timed, ``result`` gives (loss, grads) as NumPy."""

    name: str
    run: Callable[[], object]
    result: Callable[[], tuple[float, dict[str, np.ndarray]]]
    model: str = "cell"  # "cell" (the rnnsym minGRU) or "g" (the log-space model)
    samples: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    peak_mib: float = float("nan")

    @property
    def ms(self) -> float:
        return 1e3 * statistics.median(self.samples)


def kernel_impl(kernel: Any, backend: str, problem: Problem, name: str) -> Impl:
    """A generated kernel's ``loss_and_grad`` on the backend's own arrays (converted once)."""
    to, back, wait = _converters(backend)
    params = {key: to(value) for key, value in problem.params.items()}
    inputs, targets = {"x": to(problem.x)}, {"y": to(problem.y)}

    def run() -> object:
        return wait(kernel.loss_and_grad(params, inputs, targets))

    def result() -> tuple[float, dict[str, np.ndarray]]:
        loss, grads = run()
        return float(back(loss)), {key: np.asarray(back(v), np.float64) for key, v in grads.items()}

    return Impl(name, run, result)


def torch_impls(problem: Problem) -> list[Impl]:
    """Hand-written PyTorch minGRUs with autograd: the loop (same model), log-space and its loop.

    Time-major (T, B, ·) like the kernels; h(0) = 0 like the cell. The log-space version is
    Feng et al.'s appendix (parallel_scan_log with Heinsen's logcumsumexp): with a = 1 − z,
    h(t) = Σ_{s≤t} (Π_{r=s+1..t} a(r)) z(s) h̃(s) = exp(a*(t)) Σ_{s≤t} exp(log z(s) + log h̃(s) −
    a*(s)), a*(t) = Σ_{r≤t} log a(r); it needs h̃ > 0, so h̃ = g(W_h x + b_h) with g(v) = v + ½
    for v ≥ 0, σ(v) otherwise, and log g computed directly.
    """
    torch = importlib.import_module("torch")
    F = torch.nn.functional
    p = {
        key: torch.from_numpy(value).clone().requires_grad_(True)
        for key, value in problem.params.items()
    }  # noqa: E501
    x, y = torch.from_numpy(problem.x), torch.from_numpy(problem.y)

    def zero() -> None:
        for t in p.values():
            t.grad = None

    def loss_of(hs: Any) -> Any:
        return 0.5 * ((hs @ p["V"].T + p["c"] - y) ** 2).sum()

    def log_g(v: Any) -> Any:
        return torch.where(v >= 0, (F.relu(v) + 0.5).log(), -F.softplus(-v))

    def g(v: Any) -> Any:
        return torch.where(v >= 0, F.relu(v) + 0.5, torch.sigmoid(v))

    def loop(model: str) -> Any:
        zt = torch.sigmoid(x @ p["W_z"].T + p["b_z"])
        pre = x @ p["W_h"].T + p["b_h"]
        ht = g(pre) if model == "g" else pre
        h = x.new_zeros(problem.B, p["b_h"].shape[0])
        hs = []
        # unbind, not zt[t]: the backward of each zt[t] would fill a whole (T, B, n) gradient
        for z_t, ht_t in zip(zt.unbind(0), ht.unbind(0), strict=True):
            h = (1 - z_t) * h + z_t * ht_t
            hs.append(h)
        return loss_of(torch.stack(hs))

    def log_space() -> Any:
        k = x @ p["W_z"].T + p["b_z"]
        log_z, log_coeffs = -F.softplus(-k), -F.softplus(k)  # log z, log(1 − z)
        log_tilde_h = log_g(x @ p["W_h"].T + p["b_h"])
        a_star = torch.cumsum(log_coeffs, dim=0)
        log_h = a_star + torch.logcumsumexp(log_z + log_tilde_h - a_star, dim=0)
        return loss_of(torch.exp(log_h))

    def make(name: str, fn: Callable[[], Any], model: str) -> Impl:
        def run() -> object:
            zero()
            loss = fn()
            loss.backward()
            return loss

        def result() -> tuple[float, dict[str, np.ndarray]]:
            loss = run()
            return float(loss.detach()), {
                key: t.grad.numpy().astype(np.float64) for key, t in p.items()
            }

        return Impl(name, run, result, model)

    return [
        make("torch minGRU loop (same model)", lambda: loop("cell"), "cell"),
        make(LOG_SPACE, log_space, "g"),
        make(LOG_SPACE_LOOP, lambda: loop("g"), "g"),
    ]


def kernels(rs: ModuleType, cell: Any, backends: list[str]) -> dict[tuple[str, str], Any]:
    """(backend, schedule) -> kernel, for each backend whose scan schedule compiles."""
    out = {}
    for backend in backends:
        try:
            if backend != "numpy":
                importlib.import_module(backend)
            scan = rs.compile(cell, backend=backend, schedule="scan")
        except (ImportError, NotImplementedError, TypeError, ValueError) as exc:
            print(
                f"note: {backend}: schedule='scan' does not compile here "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:100]}); backend skipped",
                file=sys.stderr,
            )
            continue
        if scan.schedule != "scan":
            print(
                f"note: {backend}: kernel.schedule is {scan.schedule!r}; skipped", file=sys.stderr
            )
            continue
        out[(backend, "sequential")] = rs.compile(cell, backend=backend, schedule="sequential")
        out[(backend, "scan")] = scan
    return out


# ---------------------------------------------------------------------- checks, memory, timing


def peak_rss_mib(fn: Callable[[], object]) -> float:
    """Peak resident memory while ``fn`` runs, above the resident memory before it, in MiB.

    Sampled every 2 ms from /proc/self/statm (all allocators: NumPy, torch, XLA); NaN where
    /proc is missing. glibc's freed heap is returned first (malloc_trim), else memory kept from
    the warm-up call would hide the call's own use; allocator caches that are not trimmed
    (torch's, XLA's) can still make this an underestimate.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")

        def rss() -> int:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * page

        base = rss()
    except (OSError, ValueError):
        fn()
        return float("nan")
    peak = [base]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return (max(peak[0], rss()) - base) / 2**20


def agree(
    got: tuple[float, dict[str, np.ndarray]],
    want: tuple[float, dict[str, np.ndarray]],
    rtol: float,
    label: str,
) -> float:
    """Exit 1 unless loss (relative) and every gradient (relative to its largest entry) agree."""
    loss_rel = abs(got[0] - want[0]) / abs(want[0])
    worst = loss_rel
    bad = [f"loss {got[0]!r} vs {want[0]!r} (rel {loss_rel:.2e})"] if loss_rel > rtol else []
    for key, b in want[1].items():
        a = got[1].get(key)
        if a is None or a.shape != b.shape:
            bad.append(f"grad_{key}: shape {None if a is None else a.shape} vs {b.shape}")
            continue
        rel = float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), 1e-300)
        worst = max(worst, rel)
        if rel > rtol:
            bad.append(f"grad_{key}: max diff / max |entry| = {rel:.2e}")
    if bad:
        print(f"error [{label}]: disagrees (rtol {rtol:.0e}): " + "; ".join(bad), file=sys.stderr)
        raise SystemExit(1)
    return worst


def make_problem(rs: ModuleType, cell: Any, T: int, B: int, m: int, k: int, dtype: str) -> Problem:
    """rnnsym.problems.random_problem at n = 64 (float64), cast to ``dtype``."""
    from rnnsym.problems import random_problem

    params, inputs, targets = random_problem(cell, T=T, B=B, sizes={"n": 64, "m": m, "k": k})
    cast = {key: value.astype(dtype) for key, value in params.items()}
    return Problem(T, B, m, k, dtype, cast, inputs["x"].astype(dtype), targets["y"].astype(dtype))


def prepare(
    rs: ModuleType,
    cell: Any,
    problem: Problem,
    compiled: dict[tuple[str, str], Any],
    want_torch: bool,
    skip_sequential: bool,
    label: str,
    check_g: bool = True,
) -> list[Impl]:
    """Build, warm up, check and measure the memory of every implementation; reference first."""
    impls = []
    for (backend, schedule), kernel in sorted(
        compiled.items(), key=lambda kv: kv[0][1] != "sequential" or kv[0][0] != "numpy"
    ):  # noqa: E501
        if (
            skip_sequential
            and schedule == "sequential"
            and (backend, schedule) != ("numpy", "sequential")
        ):  # noqa: E501
            continue
        impls.append(kernel_impl(kernel, backend, problem, f"rnnsym {backend} {schedule}"))
    check_g = check_g and want_torch
    if want_torch:
        impls += [
            i
            for i in torch_impls(problem)
            if i.name != LOG_SPACE_LOOP and not (skip_sequential and "loop" in i.name)
        ]
    # The reference (float64 NumPy sequential) and the log-space model's reference (its loop).
    ref64 = (
        problem
        if problem.dtype == "float64"
        else make_problem(rs, cell, problem.T, problem.B, problem.m, problem.k, "float64")
    )
    want = kernel_impl(compiled[("numpy", "sequential")], "numpy", ref64, REFERENCE).result()
    want_g = None
    g_loop = [i for i in torch_impls(ref64) if i.name == LOG_SPACE_LOOP] if check_g else []
    if g_loop:
        want_g = g_loop[0].result()
    rtol = RTOL64 if problem.dtype == "float64" else RTOL32
    for impl in impls:
        started = time.perf_counter()
        impl.run()  # warm-up: jit, caches
        box: list = []
        impl.peak_mib = peak_rss_mib(lambda impl=impl, box=box: box.append(impl.result()))
        got = box[0]
        if impl.model == "g" and problem.dtype != "float64":
            # Not checked in float32: the log-space form loses about |a*|·2⁻²⁴ relative where
            # |a*| grows like T (measured 6.5e-4 at T = 256). The same torch code is checked in
            # float64 (RTOL64) in this run, which is what rules out a wrong implementation.
            worst = agree(got, want_g, float("inf"), label)
            print(
                f"  {label}: {impl.name}: float32 vs float64 worst rel diff {worst:.1e} "
                "(reported, not checked: log-space rounding)",
                file=sys.stderr,
            )
            continue
        if impl.model == "g" and want_g is None:
            print(
                f"  {label}: {impl.name}: not checked at this T (its torch loop is skipped, "
                "--max-sequential-T); the same code was checked at a smaller T in this run",
                file=sys.stderr,
            )
            continue
        if impl.model == "g":
            rtol_g = log_space_rtol(problem.T)
            worst = agree(
                got, want_g, rtol_g, f"{label}, {impl.name} vs {LOG_SPACE_LOOP} (float64)"
            )
        else:
            worst = agree(got, want, rtol, f"{label}, {impl.name} vs {REFERENCE} (float64)")
        print(
            f"  {label}: {impl.name}: agrees (worst rel diff {worst:.1e}; "
            f"warm-up and check {time.perf_counter() - started:.1f} s)",
            file=sys.stderr,
        )
    return impls


def time_round_robin(impls: list[Impl], repeats: int) -> None:
    """One call of each per round, the first rotating; ratios to impls[0] per round."""
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            start = r % len(impls)
            for j in list(range(start, len(impls))) + list(range(start)):
                impls[j].samples.append(sample(impls[j].run, 1))
            gc.collect()
    finally:
        if gc_was:
            gc.enable()
    for impl in impls:
        impl.ratios = [a / b for a, b in zip(impl.samples, impls[0].samples, strict=True)]


# ------------------------------------------------------------------------------------- parts


def part_ratio(rs: ModuleType, cell: Any, args: argparse.Namespace, compiled: dict) -> str:
    """Part 1: scan / sequential per backend, and every implementation / NumPy sequential."""
    out = []
    for dtype in args.dtypes:
        for m, k in args.io:
            label = f"T={args.T}, B={args.B}, n=64, m={m}, k={k}, {dtype}"
            print(f"{label}: checking", file=sys.stderr)
            problem = make_problem(rs, cell, args.T, args.B, m, k, dtype)
            impls = prepare(rs, cell, problem, compiled, args.torch, False, label)
            print(f"{label}: timing {args.repeats} rounds", file=sys.stderr)
            time_round_robin(impls, args.repeats)
            by = {i.name: i for i in impls}
            rows = []
            for backend in BACKENDS:
                seq, scan = by.get(f"rnnsym {backend} sequential"), by.get(f"rnnsym {backend} scan")
                if seq is None or scan is None:
                    rows.append([backend, "n/a (scan does not compile)", "", "", ""])
                    continue
                per_round = [a / b for a, b in zip(scan.samples, seq.samples, strict=True)]
                rows.append(
                    [
                        backend,
                        f"{scan.ms:.1f}",
                        f"{seq.ms:.1f}",
                        f"{statistics.median(per_round):.3f}",
                        f"{min(per_round):.3f} – {max(per_round):.3f}",
                    ]
                )
            head = [
                "backend",
                "scan ms",
                "sequential ms",
                "scan / sequential (interleaved)",
                "range",
            ]
            out.append(f"#### {label}, {args.repeats} rounds\n\n" + table(head, rows, "lrrrr"))
            rows = [
                [
                    i.name,
                    f"{i.ms:.1f}",
                    f"{1e3 * i.ms / args.T:.1f}",
                    f"{statistics.median(i.ratios):.3f}",
                    f"{i.peak_mib:,.0f}",
                ]
                for i in impls
            ]
            head = ["implementation", "ms/call", "µs/step", f"/ {REFERENCE}", "peak RSS growth MiB"]
            out.append(table(head, rows, "lrrrr"))
    return "### Scan / sequential, loss_and_grad (median of per-round ratios)\n\n" + "\n".join(out)


def part_scaling(rs: ModuleType, cell: Any, args: argparse.Namespace, compiled: dict) -> str:
    """Part 2: time per step (µs) of every implementation as T grows."""
    m, k = args.io[0]
    dtype = args.dtypes[0]
    columns: list[str] = []
    table_rows: dict[str, dict[int, str]] = {}
    notes = []
    g_checked = False  # log-space minGRU checked against its loop at some T of this run
    for T in sorted(args.lengths):
        B = args.B
        skip_seq = args.max_sequential_T is not None and T > args.max_sequential_T
        if args.max_TB is not None and T * B > args.max_TB:
            B = max(1, args.max_TB // T)
            notes.append(f"T={T}: B lowered from {args.B} to {B} (--max-TB {args.max_TB})")
        if skip_seq:
            notes.append(
                f"T={T}: sequential kernels and torch loops other than the reference skipped "
                f"(--max-sequential-T {args.max_sequential_T})"
            )
        label = f"T={T}, B={B}, m={m}, k={k}, {dtype}"
        print(f"{label}: checking", file=sys.stderr)
        problem = make_problem(rs, cell, T, B, m, k, dtype)
        check_g = not skip_seq or not g_checked  # its loop costs a sequential run
        impls = prepare(rs, cell, problem, compiled, args.torch, skip_seq, label, check_g)
        g_checked = True
        repeats = args.scaling_repeats if T < 16384 else max(1, args.scaling_repeats // 2)
        print(f"{label}: timing {repeats} rounds", file=sys.stderr)
        time_round_robin(impls, repeats)
        col = f"T={T}" + (f" (B={B})" if B != args.B else "")
        columns.append(col)
        for i in impls:
            table_rows.setdefault(i.name, {})[col] = f"{1e3 * i.ms / T:.1f} ({i.peak_mib:,.0f})"
        del impls, problem
        gc.collect()
    rows = [
        [name, *(cells.get(c, "skipped") for c in columns)] for name, cells in table_rows.items()
    ]
    text = (
        "### Time per step as T grows: µs per step (median ms / T), peak RSS growth of one call "
        f"in MiB in brackets; "
        f"B={args.B}, n=64, m={m}, k={k}, {dtype}\n\n"
        + table(["implementation", *columns], rows, "l" + "r" * len(columns))
    )
    return text + "".join(f"\n- {note}" for note in notes) + ("\n" if notes else "")


# -------------------------------------------------------------------------------------- main


def _ints(option: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{option}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"{option}: expected integers >= 1, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("ratio", "scaling", "both"), default="ratio")
    parser.add_argument("--T", type=int, default=4096, help="length for part 1 (default 4096)")
    parser.add_argument("--B", type=int, default=8, help="batch (default 8)")
    parser.add_argument("--m", type=int, default=64, help="input size m (default 64)")
    parser.add_argument("--k", type=int, default=64, help="output size k (default 64)")
    parser.add_argument(
        "--no-univariate", action="store_true", help="do not also report m = k = 1 in part 1"
    )
    parser.add_argument("--float32", action="store_true", help="also time float32 (part 1)")
    parser.add_argument("--repeats", type=int, default=11, help="rounds in part 1 (default 11)")
    parser.add_argument(
        "--lengths", default=",".join(map(str, SCALING_T)), help="T for part 2 (comma list)"
    )
    parser.add_argument(
        "--scaling-repeats", type=int, default=5, help="rounds in part 2 (halved from T=16384)"
    )
    parser.add_argument(
        "--max-sequential-T",
        type=int,
        default=None,
        help="in part 2, skip the sequential kernels (but the NumPy reference) above this T",
    )
    parser.add_argument(
        "--max-TB", type=int, default=None, help="in part 2, lower B so that T·B <= this"
    )
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma list of backends")
    parser.add_argument("--no-torch", action="store_true", help="skip the hand-written torch")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    for option in ("T", "B", "m", "k", "repeats", "scaling_repeats"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    args.lengths = _ints("--lengths", args.lengths)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in args.backends if b not in BACKENDS]
    if bad or "numpy" not in args.backends:
        parser.error(f"--backends: got {args.backends}; expected numpy and some of {BACKENDS}")
    args.io = [(args.m, args.k)] + (
        [] if args.no_univariate or (args.m, args.k) == (1, 1) else [(1, 1)]
    )  # noqa: E501
    args.dtypes = ["float64"] + (["float32"] if args.float32 else [])
    args.torch = not args.no_torch
    return args


def main(argv: list[str] | None = None) -> int:
    """Describe the machine, check every implementation, time, print Markdown tables."""
    args = parse_args(argv)
    rs = import_rnnsym()
    if args.torch or "torch" in args.backends:
        try:
            torch = importlib.import_module("torch")
            torch.set_num_threads(args.torch_threads or len(os.sched_getaffinity(0)))
        except ImportError:
            print("note: torch not installed: hand-written torch minGRUs skipped", file=sys.stderr)
            args.torch = False
    if "jax" in args.backends:
        try:
            _jax()
        except ImportError:
            pass  # reported by kernels()
    description = machine()
    if "torch" in sys.modules:
        description.append(f"torch threads: {sys.modules['torch'].get_num_threads()}")
    print("\n".join(description), file=sys.stderr)
    cell = build_cell(rs)
    compiled = kernels(rs, cell, args.backends)
    sections = []
    if args.part in ("ratio", "both"):
        sections.append(part_ratio(rs, cell, args, compiled))
    if args.part in ("scaling", "both"):
        sections.append(part_scaling(rs, cell, args, compiled))
    description.append(
        "load average at end (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    )
    import resource

    description.append(
        f"peak resident memory of this process: "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:,.0f} MiB"
    )
    print()
    print("### Machine\n\n" + "".join(f"- {line}\n" for line in description) + "\n")
    print("\n".join(sections), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
