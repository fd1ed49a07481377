"""Teacher forcing against free-running (report Fig. 4), and the cost of composing cells.

Run from the repository root::

    python benchmarks/bench_architectures.py            # full run
    python benchmarks/bench_architectures.py --quick    # smoke run

1. Fig. 4 with the same weights: the teacher-forced kernel (no state, every step at once, no
   loop over t) against the free-running one (full BPTT, two loops over t), for growing T. The
   teacher-forced time per step should fall as T grows, because the work is in a few GEMMs over
   all T·B rows. The free-running time per step should stay flat, because the per-step loop
   dominates.
2. A bidirectional model (two Elman layers and a head) against twice the cost of one Elman
   cell of the same sizes: the overhead of chaining generated kernels. Each layer's forward pass
   runs twice (once for the head, once in its gradient kernel).

No test asserts any timing; the results are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from bench_elman import calibrate, import_rnnsym, thread_report, time_median_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 samples per figure")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 15
    rs = import_rnnsym()
    from rnnsym.models import random_model_problem
    from rnnsym.verify import random_problem

    print(f"threads: {thread_report()}")
    tf = rs.compile(rs.cells.get("teacher_forcing"))
    fr = rs.compile(rs.cells.get("output_feedback"))
    configs = [(16, {"n": 64, "m": 32, "k": 32}), (1, {"n": 16, "m": 8, "k": 8})]
    print("\nFig. 4: ms per call (µs per step in brackets)")
    print("| B, n, m = k | T | teacher forcing | free-running | ratio |")
    print("|---|---:|---:|---:|---:|")
    for (B, sizes), T in [(c, T) for c in configs for T in (25, 100, 400)]:
        label = f"{B}, {sizes['n']}, {sizes['m']}"
        params, inputs, targets = random_problem(tf.cell, sizes, T=T, B=B, seed=1)

        def run_tf(p=params, i=inputs, t=targets):
            return tf.loss_and_grad(p, i, t)

        def run_fr(p=params, i=inputs, t=targets):
            return fr.loss_and_grad(p, i, t)

        run_tf(), run_fr()  # warm-up: first calls pay for BLAS start-up and page faults
        a = time_median_ms(run_tf, calibrate(run_tf), repeats)
        b = time_median_ms(run_fr, calibrate(run_fr), repeats)
        print(
            f"| {label} | {T} | {a:.2f} ({1e3 * a / T:.0f}) | {b:.2f} ({1e3 * b / T:.0f}) "
            f"| {b / a:.1f} |"
        )
    model = rs.cells.get("bidirectional")
    bi = model.compile()
    elman = rs.compile(rs.cells.get("elman"))
    sizes = configs[0][1]
    print("\nBidirectional vs 2 x Elman, B = 16, n = 64, m = k = 32, T = 100 (ms per call)")
    params, inputs, targets = random_model_problem(model, sizes, T=100, B=16, seed=2)
    e_params, e_inputs, e_targets = random_problem(elman.cell, sizes, T=100, B=16, seed=2)

    def run_bi():
        return bi.loss_and_grad(params, inputs, targets)

    def run_elman():
        return elman.loss_and_grad(e_params, e_inputs, e_targets)

    run_bi(), run_elman()
    a = time_median_ms(run_bi, calibrate(run_bi), repeats)
    b = time_median_ms(run_elman, calibrate(run_elman), repeats)
    print(
        f"| bidirectional | {a:.2f} |\n| 2 x elman | {2 * b:.2f} |\n| ratio | {a / (2 * b):.2f} |"
    )
    return 0


if __name__ == "__main__":
    np.seterr(all="raise")
    sys.exit(main())
