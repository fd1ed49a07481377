#!/usr/bin/env python
"""Mutation testing of rnnsym's derivative rules: do the tests notice a wrong rule?

Mutants are made by rewriting the syntax tree (``ast``) of the rule tables:

* ``rnnsym/rules.py``: every vector-Jacobian product rule and its dispatch;
* ``rnnsym/jvp.py``: every Jacobian-vector product rule, the seeds and their helpers (not the
  ``_sympystr``/``_paren`` display code);
* ``rnnsym/activations.py``: the derivative code only: the ``derivative`` argument of each
  built-in ``Activation``, ``_one_minus``, ``_scalar_derivative`` and ``_LazyDerivative``.

Operators: ``+``/``-`` and ``*``/``/`` swapped, a unary minus or ``not`` dropped, integer
constants changed (k -> k + 1, k -> -k, -k -> -(k + 1)), ``True``/``False`` flipped (not in
keyword arguments such as ``strict=``), ``reversed(x)`` and ``transpose(x)`` replaced by
``x``, one argument dropped from ``mul``/``hadamard``/``add``/``concat`` (a dropped factor, term
or cotangent ``g``), adjacent positional arguments swapped (not for the commutative ``add`` and
``hadamard``), list elements swapped, comparisons negated (``==``/``!=``, ``is``/``is not``,
``in``/``not in``, ``<``/``<=``), ``and``/``or`` swapped, ``if`` conditions negated, and
``continue``, ``+=`` and expression statements (``terms.append(...)``) deleted; in a built-in
activation's derivative ``lambda x, ans: ...`` also ``x``/``ans`` swapped and the function it
applies replaced (``reciprocal`` -> ``exp``, ``step`` -> ``sigmoid``, ``sigmoid`` -> ``tanh``).
Docstrings, error messages and ``raise`` statements are not mutated.

Each mutant is run in its own copy of ``rnnsym/`` and ``tests/`` in a temporary directory (the
working tree is never modified), in a forked interpreter that already has SymPy, NumPy, pytest
and Hypothesis imported, with ``-x`` and a per-mutant timeout. A mutant is *killed* when the
tests fail (or time out), *survives* when they pass. Hypothesis runs derandomised, with
``--examples`` examples per test (default 10; the CI profile has 30) and no shrinking.
Known-equivalent mutants (no input can tell them apart from the original) are listed in
``EQUIVALENT`` with the reason, and left out of the score.

Usage::

    python tools/mutate_rules.py                 # run all, print the score and each survivor
    python tools/mutate_rules.py --list          # list the mutants with their numbers
    python tools/mutate_rules.py --only 12 40    # run some mutants (numbers from --list)
    python tools/mutate_rules.py -j 2 --tests tests/test_rules.py tests/test_forward_mode.py

Exit status 0 when every non-equivalent mutant is killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TESTS = ["tests/test_rules.py"]
DEFAULT_TIMEOUT = 180.0  # seconds per mutant; the unmutated selection takes well under that

# Which parts of each file are mutated: None = the whole module except the excluded functions;
# otherwise only these function/method names and the derivative lambdas of built-in activations.
TARGETS: dict[str, dict] = {
    "rnnsym/rules.py": {"only": None, "exclude": set()},
    "rnnsym/jvp.py": {"only": None, "exclude": {"_sympystr", "_paren"}},
    "rnnsym/activations.py": {
        "only": {"_one_minus", "_scalar_derivative", "__call__"},
        "exclude": set(),
        "activation_derivatives": True,
    },
}

# Functions whose positional arguments may be dropped (variadic products and sums).
VARIADIC = {"mul", "hadamard", "add", "concat"}
# Calls whose arguments are never swapped: commutative, or swapping only breaks Python itself.
NO_SWAP = {"add", "hadamard", "isinstance", "zip", "getattr", "enumerate", "range", "len"}
# Calls replaced by their (single) argument.
UNWRAP = {"reversed", "transpose"}

# Known-equivalent mutants: description (as printed by --list) -> why no input tells them apart.
_SCALAR_FIRST = (
    "coeff is a scalar: mul() collects scalar factors into one coefficient wherever they are"
)
_TERM_ORDER = (
    "terms.insert(1, ...) instead of insert(0, ...) only changes the order of the terms of a sum"
)
_ZERO_TERM = (
    "a zero tangent is no longer skipped: its term is a ZeroMatrix, which add() drops (and a "
    "tangent is never None there: tangent() gives ZeroMatrix to every matrix argument)"
)
EQUIVALENT: dict[str, str] = {
    "rnnsym/activations.py:relu': x -> ans in Apply('step', x)": (
        "step(relu(x)) = step(x) for every x, 0 included (relu(x) > 0 exactly when x > 0)"
    ),
    "rnnsym/activations.py:log_sigmoid': mul(-1, x) -> mul(x, -1)": _SCALAR_FIRST,
    "rnnsym/activations.py:_one_minus: mul(-1, ans) -> mul(ans, -1)": _SCALAR_FIRST,
    "rnnsym/rules.py:_matmul_vjp: mul(coeff, *left, g, *right) -> mul(*left, coeff, g, *right)": (
        _SCALAR_FIRST
    ),
    "rnnsym/jvp.py:_matmul_jvp: mul(coeff, *left, t, *right) -> mul(*left, coeff, t, *right)": (
        _SCALAR_FIRST
    ),
    "rnnsym/jvp.py:_matmul_jvp: mul(coeff, *left, Seed(t.param, r, ones(rows, 1), 0, rows)) -> "
    "mul(*left, coeff, Seed(t.param, r, ones(rows, 1), 0, rows))": _SCALAR_FIRST,
    "rnnsym/jvp.py:seed_terms: mul(coeff, t) -> mul(t, coeff)": _SCALAR_FIRST,
    "rnnsym/jvp.py:_scaled: mul(c, seed.scaled(hadamard(*factors))) -> "
    "mul(seed.scaled(hadamard(*factors)), c)": _SCALAR_FIRST,
    "rnnsym/jvp.py:_sliced: mul(c, seed.sliced(start, stop)) -> mul(seed.sliced(start, stop), c)": (
        _SCALAR_FIRST
    ),
    "rnnsym/jvp.py:_scaled: 0 -> 1 in terms.insert(0, hadamard(*factors, add(*others)))": (
        _TERM_ORDER
    ),
    "rnnsym/jvp.py:_sliced: 0 -> 1 in terms.insert(0, slice_rows(add(*others), start, stop))": (
        _TERM_ORDER
    ),
    "rnnsym/jvp.py:_matmul_jvp: 1 -> -1 in r.shape[1]": (
        "r.shape[-1] is r.shape[1]: matrix shapes are pairs"
    ),
    "rnnsym/jvp.py:_apply_jvp: 1 -> -1 in ts[1]": (
        "ts[-1] is ts[1]: an Apply node has two arguments, its name and its matrix"
    ),
    "rnnsym/jvp.py:_matmul_jvp: continue -> <deleted>": _ZERO_TERM,
    "rnnsym/jvp.py:_matmul_jvp: t is None or is_zero(t) -> t is None and is_zero(t)": _ZERO_TERM,
    "rnnsym/jvp.py:_hadamard_jvp: t is not None and (not is_zero(t)) -> "
    "t is not None or not is_zero(t)": _ZERO_TERM,
}


# ----- mutant generation -----


@dataclass(frozen=True)
class Mutant:
    number: int
    path: str  # relative to the repository root
    where: str  # enclosing function (or the activation whose derivative it is)
    before: str  # the mutated node, unparsed
    after: str
    source: str  # the whole mutated file
    context: str = ""  # for a constant or a name: the expression it is part of
    occurrence: int = 0  # k-th of several mutants that would print alike (k >= 1), else 0

    @property
    def description(self) -> str:
        where = f" in {self.context}" if self.context else ""
        nth = f" (occurrence {self.occurrence})" if self.occurrence else ""
        return f"{self.path}:{self.where}: {self.before} -> {self.after}{where}{nth}"

    def diff(self, original: str) -> str:
        lines = difflib.unified_diff(
            original.splitlines(True),
            self.source.splitlines(True),
            f"a/{self.path}",
            f"b/{self.path}",
            n=1,
        )
        return "".join(lines)


def _is_docstring(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return None


class _Regions(ast.NodeVisitor):
    """Find the subtrees to mutate, each with a label saying where it is."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.regions: list[tuple[str, ast.AST]] = []
        self.stack: list[str] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        only, exclude = self.spec["only"], self.spec["exclude"]
        if node.name in exclude:
            return
        if only is None and not self.stack:
            if node.name not in ("defvjp", "defjvp"):  # registration itself is bookkeeping
                self.regions.append((node.name, node))
            return
        if only is not None and node.name in only:
            self.regions.append((node.name, node))
            return
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.stack.append(node.name)
        for item in node.body:
            if isinstance(item, ast.FunctionDef):
                only, exclude = self.spec["only"], self.spec["exclude"]
                if item.name in exclude:
                    continue
                if only is None or item.name in only:
                    self.regions.append((f"{node.name}.{item.name}", item))
        self.stack.pop()

    def visit_Expr(self, node: ast.Expr) -> None:
        if self.stack or not isinstance(node.value, ast.Call):
            return
        call = node.value
        name = _call_name(call)
        if self.spec["only"] is None and name in ("defvjp", "defjvp") and len(call.args) == 2:
            kind = call.args[0]
            label = kind.id if isinstance(kind, ast.Name) else ast.unparse(kind)
            self.regions.append((f"{name}({label})", call.args[1]))
        if self.spec.get("activation_derivatives") and name == "register":
            (activation,) = call.args
            if isinstance(activation, ast.Call) and len(activation.args) >= 3:
                act_name = ast.literal_eval(activation.args[0])
                if not (isinstance(activation.args[2], ast.Constant)):  # None: no derivative
                    self.regions.append((f"{act_name}'", activation.args[2]))


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Nodes of a region, skipping docstrings, raise statements and string constants."""
    if isinstance(node, ast.Raise) or _is_docstring(node):
        return
    if isinstance(node, (ast.JoinedStr, ast.keyword)):
        return
    yield node
    if isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant):
        return  # -k is mutated as a whole (to k, and to -(k + 1))
    for child in ast.iter_child_nodes(node):
        yield from _walk(child)


# In an activation's derivative ``lambda x, ans: ...``: the argument and the forward value
# swapped, and the elementwise function applied replaced by another one.
_SWAPPED_NAMES = {"x": "ans", "ans": "x"}
_OTHER_ACTIVATION = {"reciprocal": "exp", "step": "sigmoid", "sigmoid": "tanh"}


def _derivative_replacements(node: ast.AST) -> Iterator[ast.AST]:
    if isinstance(node, ast.Name) and node.id in _SWAPPED_NAMES:
        yield ast.Name(_SWAPPED_NAMES[node.id], node.ctx)
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in _OTHER_ACTIVATION
    ):
        yield ast.Constant(_OTHER_ACTIVATION[node.value])


_BINOPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
_CMPOPS = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
}


def _replacements(node: ast.AST) -> Iterator[ast.AST | None]:
    """Mutated copies of ``node`` (``None`` deletes a statement)."""
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        yield ast.BinOp(node.left, _BINOPS[type(node.op)](), node.right)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
        yield node.operand
        if isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, int):
            yield ast.UnaryOp(ast.USub(), ast.Constant(node.operand.value + 1))
    elif (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int)
        and not isinstance(node.value, bool)
    ):
        yield ast.Constant(node.value + 1)
        if node.value != 0:
            yield ast.UnaryOp(ast.USub(), ast.Constant(node.value))
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        yield ast.Constant(not node.value)
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMPOPS:
        yield ast.Compare(node.left, [_CMPOPS[type(node.ops[0])]()], node.comparators)
    elif isinstance(node, ast.BoolOp):
        yield ast.BoolOp(ast.Or() if isinstance(node.op, ast.And) else ast.And(), node.values)
    elif isinstance(node, ast.Call):
        name = _call_name(node)
        if name in UNWRAP and len(node.args) == 1 and not node.keywords:
            yield node.args[0]
        if name in VARIADIC and len(node.args) >= 2:
            for i in range(len(node.args)):
                yield ast.Call(node.func, node.args[:i] + node.args[i + 1 :], node.keywords)
        if name not in NO_SWAP and name is not None:
            for i in range(len(node.args) - 1):
                args = list(node.args)
                args[i], args[i + 1] = args[i + 1], args[i]
                if ast.dump(args[i]) != ast.dump(args[i + 1]):
                    yield ast.Call(node.func, args, node.keywords)
    elif isinstance(node, ast.List) and len(node.elts) >= 2:
        for i in range(len(node.elts) - 1):
            elts = list(node.elts)
            elts[i], elts[i + 1] = elts[i + 1], elts[i]
            if ast.dump(elts[i]) != ast.dump(elts[i + 1]):
                yield ast.List(elts, node.ctx)
    elif isinstance(node, ast.If):
        yield ast.If(ast.UnaryOp(ast.Not(), node.test), node.body, node.orelse)
    elif isinstance(node, (ast.Continue, ast.AugAssign)):
        yield None
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        yield None


def _parents(tree: ast.AST) -> dict[int, tuple[ast.AST, str, int | None]]:
    """id(node) -> (parent, field, index in the field's list or None)."""
    out = {}
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, ast.AST):
                        out[id(item)] = (parent, field, i)
            elif isinstance(value, ast.AST):
                out[id(value)] = (parent, field, None)
    return out


def _unparse_with(tree: ast.AST, parents: dict, node: ast.AST, new: ast.AST | None) -> str:
    """The source of ``tree`` with ``node`` replaced by ``new`` (``None``: ``pass``)."""
    parent, field, index = parents[id(node)]
    replacement = ast.Pass() if new is None else new
    if index is None:
        setattr(parent, field, replacement)
    else:
        getattr(parent, field)[index] = replacement
    try:
        return ast.unparse(tree) + "\n"
    finally:
        if index is None:
            setattr(parent, field, node)
        else:
            getattr(parent, field)[index] = node


def _short(node: ast.AST | None, limit: int = 200) -> str:
    if node is None:
        return "<deleted>"
    if isinstance(node, ast.If):
        text = f"if {ast.unparse(node.test)}: ..."
    else:
        text = ast.unparse(node).split("\n")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def generate_mutants(root: Path) -> tuple[list[Mutant], dict[str, str]]:
    """All mutants of the target files under ``root``, numbered from 1, and the originals."""
    mutants: list[Mutant] = []
    originals: dict[str, str] = {}
    for rel, spec in TARGETS.items():
        original = (root / rel).read_text(encoding="utf-8")
        tree = ast.parse(original)
        normalised = ast.unparse(tree) + "\n"
        originals[rel] = normalised  # mutants are written by ast.unparse too: diffs stay small
        finder = _Regions(spec)
        finder.visit(tree)
        parents = _parents(tree)
        seen = {normalised}
        for where, region in finder.regions:
            derivative = where.endswith("'")
            for node in list(_walk(region)):
                news = list(_replacements(node))
                if derivative:
                    news += list(_derivative_replacements(node))
                for new in news:
                    source = _unparse_with(tree, parents, node, new)
                    if source in seen:
                        continue
                    seen.add(source)
                    number = len(mutants) + 1
                    context = ""
                    if isinstance(node, (ast.Constant, ast.Name, ast.UnaryOp)):
                        context = _short(parents[id(node)][0], 80)  # which 1 became 2
                    mutants.append(
                        Mutant(number, rel, where, _short(node), _short(new), source, context)
                    )
    counts: dict[str, int] = {}
    for m in mutants:
        counts[m.description] = counts.get(m.description, 0) + 1
    seen_count: dict[str, int] = {}
    for i, m in enumerate(mutants):
        if counts[m.description] > 1:
            seen_count[m.description] = seen_count.get(m.description, 0) + 1
            mutants[i] = dataclasses.replace(m, occurrence=seen_count[m.description])
    return mutants, originals


# ----- running -----

_PRELOAD = ("numpy", "sympy", "mpmath", "pytest", "hypothesis", "_pytest.main")
_COPIED = ("rnnsym", "tests", "pyproject.toml")


def _snapshot(root: Path, dest: Path) -> None:
    """Copy the package, the tests and the pytest configuration (no caches)."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
    for name in _COPIED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / name)


def _child(tree: Path, tests: list[str], log: Path) -> None:
    """In a forked interpreter: run pytest on the copy at ``tree``; never returns."""
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(tree)
        sys.path[:0] = [str(tree), str(tree / "tests")]
        os.environ["CI"] = "true"
        os.environ["HYPOTHESIS_PROFILE"] = "mutation"  # registered in main(), see there
        import rnnsym

        where = Path(rnnsym.__file__).resolve().parent
        if where != (tree / "rnnsym").resolve():
            print(f"rnnsym imported from {where}, not from the copy", flush=True)
            os._exit(3)
        import pytest

        args = ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests]
        code = int(pytest.main(args))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    except BaseException as exc:  # noqa: BLE001 - report anything and leave the fork
        print(f"mutant harness error: {exc!r}", flush=True)
        os._exit(4)


def _run_tree(tree: Path, tests: list[str], timeout: float, log: Path) -> tuple[str, float]:
    """('passed' | 'failed' | 'timeout' | 'error', seconds) for the tests on one tree."""
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _child(tree, tests, log)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - start > timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "timeout", time.monotonic() - start
            time.sleep(0.05)
    except BaseException:  # interrupted: take the running tests down too
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    seconds = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return "passed", seconds
    if code in (1,):  # pytest: tests failed
        return "failed", seconds
    return f"error (exit {code})", seconds


def _run_mutant(args: tuple) -> tuple[int, str, float, str]:
    mutant, snapshot, tests, timeout, workdir = args
    tree = Path(workdir) / f"mutant_{mutant.number}"
    shutil.copytree(snapshot, tree)
    (tree / mutant.path).write_text(mutant.source, encoding="utf-8")
    log = Path(workdir) / f"mutant_{mutant.number}.log"
    outcome, seconds = _run_tree(tree, tests, timeout, log)
    tail = ""
    if outcome.startswith("error"):
        tail = log.read_text(errors="replace")[-2000:]
    shutil.rmtree(tree, ignore_errors=True)
    return mutant.number, outcome, seconds, tail


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", type=int, nargs="+", metavar="N", help="run these mutants")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="mutants run at once")
    parser.add_argument("--tests", nargs="+", default=DEFAULT_TESTS, help="pytest selection")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="s per mutant")
    parser.add_argument(
        "--examples",
        type=int,
        default=10,
        help="Hypothesis examples per test (derandomised, no shrinking; the CI profile has 30)",
    )
    parser.add_argument(
        "--include-equivalent", action="store_true", help="also run the known-equivalent ones"
    )
    options = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the copies on kill

    with tempfile.TemporaryDirectory(prefix="rnnsym_mutants_") as workdir:
        snapshot = Path(workdir) / "snapshot"
        _snapshot(ROOT, snapshot)  # one moment of the working tree, used for every mutant
        mutants, originals = generate_mutants(snapshot)
        unknown = set(EQUIVALENT) - {m.description for m in mutants}
        if options.list:
            for m in mutants:
                mark = "  [equivalent]" if m.description in EQUIVALENT else ""
                print(f"{m.number:4d}  {m.description}{mark}")
            for d in sorted(unknown):
                print(f"note: EQUIVALENT entry matches no mutant: {d}")
            return 0
        chosen = mutants
        if options.only:
            wanted = set(options.only)
            chosen = [m for m in mutants if m.number in wanted]
        elif not options.include_equivalent:
            chosen = [m for m in mutants if m.description not in EQUIVALENT]
        dirty = _git("status", "--porcelain", "--", "rnnsym")
        print(
            f"commit {_git('rev-parse', '--short', 'HEAD')}; rnnsym/ "
            f"{'has uncommitted changes:' if dirty else 'unchanged relative to HEAD'}"
        )
        if dirty:
            print("  " + dirty.replace("\n", "\n  "))
        print(
            f"tests: {' '.join(options.tests)}; timeout {options.timeout:g} s per mutant; "
            f"{options.examples} Hypothesis examples per test"
        )
        for name in _PRELOAD:  # imported once here, inherited by every forked run
            __import__(name)
        from hypothesis import HealthCheck, Phase, settings

        # like the suite's "ci" profile (tests/conftest.py: derandomised), with --examples
        # examples and without shrinking: a failing example kills the mutant, its smallest form
        # does not matter. Fewer examples can only let more mutants survive.
        settings.register_profile(
            "mutation",
            deadline=None,
            max_examples=options.examples,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow],
        )

        outcome, seconds = _run_tree(
            snapshot, options.tests, options.timeout * 2, Path(workdir) / "baseline.log"
        )
        print(f"unmutated tree: {outcome} in {seconds:.1f} s", flush=True)
        if outcome != "passed":
            print((Path(workdir) / "baseline.log").read_text(errors="replace")[-4000:])
            print("the tests must pass on the unmutated tree first")
            return 2

        jobs = [(m, snapshot, options.tests, options.timeout, workdir) for m in chosen]
        by_number = {m.number: m for m in mutants}
        results: dict[int, tuple[str, float, str]] = {}
        start = time.monotonic()

        def record(result: tuple[int, str, float, str]) -> None:
            number, outcome, seconds, tail = result
            results[number] = (outcome, seconds, tail)
            verdict = "survived" if outcome == "passed" else f"killed ({outcome})"
            m = by_number[number]
            print(
                f"[{len(results)}/{len(jobs)}] #{number} {verdict} {seconds:.1f} s  "
                f"{m.description}",
                flush=True,
            )
            if tail:
                print("    " + tail.strip().replace("\n", "\n    "), flush=True)

        if options.jobs > 1:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(options.jobs) as pool:
                for result in pool.imap_unordered(_run_mutant, jobs):
                    record(result)
        else:
            for job in jobs:
                record(_run_mutant(job))

        survivors = [by_number[n] for n, r in sorted(results.items()) if r[0] == "passed"]
        errors = [by_number[n] for n, r in sorted(results.items()) if r[0].startswith("error")]
        counted = [m for m in chosen if m.description not in EQUIVALENT]
        killed = [m for m in counted if results[m.number][0] != "passed"]
        print()
        for m in survivors:
            print(f"SURVIVED #{m.number}: {m.description}")
            print(m.diff(originals[m.path]))
        for d in sorted(unknown):
            print(f"note: EQUIVALENT entry matches no mutant: {d}")
        equivalent = [m for m in mutants if m.description in EQUIVALENT]
        print(f"{len(mutants)} mutants, {len(equivalent)} known equivalent")
        for m in equivalent:
            print(f"  equivalent #{m.number}: {m.description}")
            print(f"    because {EQUIVALENT[m.description]}")
        if errors:
            print(
                f"{len(errors)} mutants killed by an error of the harness or an import "
                f"(counted as killed): {', '.join(f'#{m.number}' for m in errors)}"
            )
        score = 100.0 * len(killed) / len(counted) if counted else 100.0
        print(
            f"mutation score: {len(killed)} / {len(counted)} non-equivalent mutants killed "
            f"({score:.1f}%) in {time.monotonic() - start:.0f} s"
        )
        return 0 if len(killed) == len(counted) else 1


if __name__ == "__main__":
    sys.exit(main())
