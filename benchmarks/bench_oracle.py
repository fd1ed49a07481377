"""The scalar oracle's cost: node-by-node ``sympy.diff`` against ``sympy.diff`` of the whole loss.

Run from the repository root::

    python benchmarks/bench_oracle.py                 # the oracle at its defaults, every cell
    python benchmarks/bench_oracle.py --whole-loss    # also the old whole-loss oracle (slow)
    python benchmarks/bench_oracle.py --cells lstm gru user

For every built-in cell, the user cell below (``user``) and the composed models it times
``rnnsym.verify.scalar_oracle`` (``model_oracle`` for models) at their default settings: the
oracle alone (``oracle s``) and the whole check including rnnsym's derivation evaluated at 60
digits (``total s``; ``total CPU s`` is its CPU time, steadier on a shared machine), with the
worst number of agreeing digits. ``--whole-loss`` adds the old
oracle (``sympy.diff`` of the whole scalar-unrolled loss) at its old settings, sizes 2 and 3
and the built-in's ``oracle_T`` (3 for the user cell). No test asserts any timing; the results
are in docs/benchmarks.md.

This file is also a user cell file: ``rnnsym verify benchmarks/bench_oracle.py:make_cell``
verifies the two-state, three-gate cell of :func:`make_cell`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def make_cell():
    """A two-state, three-gate user cell: the LSTM with peepholes (Gers & Schmidhuber 2000),
    written with the public API as a user would (its own names and parameter layout)."""
    import rnnsym as rs

    cell = rs.Cell("user_peephole")
    n, m, k = cell.dims("n m k")
    x = cell.input("x", m)
    h, c = cell.state("h", n), cell.state("c", n)
    W, U, b = cell.param("W", 4 * n, m), cell.param("U", 4 * n, n), cell.param("b", 4 * n)
    p_i, p_f, p_o = cell.param("p_i", n), cell.param("p_f", n), cell.param("p_o", n)
    a = cell.define("a", W @ x + U @ h.prev + b)
    i = cell.define("i", rs.sigmoid(a[0:n] + p_i * c.prev))  # input gate
    f = cell.define("f", rs.sigmoid(a[n : 2 * n] + p_f * c.prev))  # forget gate
    g = cell.define("g", rs.tanh(a[2 * n : 3 * n]))
    cell.update(c, f * c.prev + i * g)
    o = cell.define("o", rs.sigmoid(a[3 * n : 4 * n] + p_o * c))  # output gate
    cell.update(h, o * rs.tanh(c))
    V, c_V = cell.param("V", k, n), cell.param("c_V", k)
    cell.loss(rs.squared_error(cell.output("out", V @ h + c_V), cell.target("y", k)))
    return cell


def _worst(values) -> str:
    low = min(values)
    return "exact" if low == float("inf") else f"{low:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--whole-loss", action="store_true", help="also the old oracle (slow)")
    parser.add_argument("--cells", nargs="*", help="names of built-ins, 'user', or models")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import rnnsym as rs
    from rnnsym.cells import BUILTIN, MODELS
    from rnnsym.verify import model_oracle, scalar_oracle

    names = args.cells or [*BUILTIN, "user", *MODELS]
    header = "| cell | sizes, T | oracle s | total s | total CPU s | worst digits |"
    if args.whole_loss:
        header += " whole-loss oracle: sizes, T | oracle s | total s | total CPU s |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in names:
        if name in MODELS:
            cpu = time.process_time()
            report = model_oracle(rs.cells.get(name))
            cpu = time.process_time() - cpu
            worst = [*report.derivation_agreement.values()]
            row = (
                f"| {name} (model) | {report.sizes}, T={report.T} | {report.oracle_seconds:.2f} "
                f"| {report.seconds:.2f} | {cpu:.2f} | {_worst(worst)} (vs chained derivation), "
                f"{min(report.agreement.values()):.1f} (vs float64 kernel) |"
            )
            print(row + (" |  |  |  |" if args.whole_loss else ""), flush=True)
            continue
        cell = make_cell() if name == "user" else rs.cells.get(name)
        cpu = time.process_time()
        report = scalar_oracle(cell)
        cpu = time.process_time() - cpu
        sizes = ", ".join(f"{k}={v}" for k, v in report.sizes.items())
        row = (
            f"| {name} | {sizes}, T={report.T} | {report.oracle_seconds:.2f} | "
            f"{report.seconds:.2f} | {cpu:.2f} | {_worst(report.agreement.values())} |"
        )
        if args.whole_loss:
            T = 2 if any(w in name for w in ("gru", "lstm", "mgu")) else 3  # the old defaults
            old_sizes = {s: 2 + i % 2 for i, s in enumerate(sorted(cell.size_symbols))}
            cpu = time.process_time()
            old = scalar_oracle(cell, sizes=old_sizes, T=T, method="whole-loss")
            cpu = time.process_time() - cpu
            shown = ", ".join(f"{k}={v}" for k, v in old.sizes.items())
            row += f" {shown}, T={T} | {old.oracle_seconds:.2f} | {old.seconds:.2f} | {cpu:.2f} |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
