"""Count how many random valid cells compile to a correct kernel: the fuzzer's long run.

``python tools/fuzz_count.py 2000`` draws N cells from the strategy of
``tests/test_fuzz_cells.py`` (seeded, so a run is repeatable) and applies the same checks as its
main property: both modes compile, the derivation prints, the reverse kernel matches central
finite differences and the forward-mode kernel matches the reverse one. Unlike pytest, it does
not stop at the first failure: it prints the counts (compiled-correct / refused / failed) and
then every refused or failed cell as the Python a user would write. Exits 1 if any cell was
refused or failed.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_fuzz_cells as fuzz  # noqa: E402 - the tests folder is put on the path first

from rnnsym.errors import CellError, DerivationError  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("examples", type=int, nargs="?", default=2000)
    parser.add_argument("--seed", type=int, default=20261126)
    args = parser.parse_args()
    counts: collections.Counter = collections.Counter()
    problems: list[tuple[str, str, str]] = []

    @settings(
        max_examples=args.examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @seed(args.seed)
    @given(fuzz.recipes())
    def run(recipe) -> None:
        try:
            fuzz._check_kernels(recipe, notes=False)
            counts["compiled-correct"] += 1
        except (CellError, DerivationError) as exc:
            counts["refused"] += 1
            problems.append(("refused", repr(recipe), str(exc)[:300]))
        except Exception as exc:  # a failed check or a crash: both are counted and shown
            counts["failed"] += 1
            problems.append((type(exc).__name__, repr(recipe), str(exc)[-1500:]))

    run()
    total = sum(counts.values())
    print(
        f"{total} cells: {counts['compiled-correct']} compiled-correct, "
        f"{counts['refused']} refused, {counts['failed']} failed"
    )
    for kind, recipe, message in problems:
        print(f"===== {kind}\n{recipe}\n{message}")
    return 0 if counts["compiled-correct"] == total else 1


if __name__ == "__main__":
    sys.exit(main())
