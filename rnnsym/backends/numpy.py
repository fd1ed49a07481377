"""Generate the NumPy kernel module of a derived cell.

The kernel is laid out in five phases, each a list of statements printed by
:class:`~rnnsym.backends.numpy_printer.RowPrinter`:

1. forward recurrence: a loop over t for the states; everything in the update that does not
   depend on the previous states (``b + U x(t)``) is computed for all t at once first;
2. outputs, loss and the loss-local adjoints (the parts of ∇_{h(t)}L arising within step t):
   all t at once;
3. adjoint recurrence: the only sequential part of the backward pass;
4. parameter gradients: for each parameter one contraction over time and batch,
   Σ_t u(t) v(t)ᵀ, computed as one matrix product.

The module docstring holds the derivation, its lines numbered; the comments cite those numbers
(:func:`cite`), and the report's equation number only where the line is that equation.

Names come from the cell; generated temporaries are numbered (``v0``, ``d0``), never random, so the
same cell gives the same bytes.
"""

from __future__ import annotations

import ast
import functools
import inspect
import pprint
import re
from dataclasses import dataclass

import sympy as sp
from sympy import HadamardProduct, MatAdd, MatMul, MatrixExpr, MatrixSymbol, OneMatrix, Transpose
from sympy.core.basic import Basic

from ..cell import python_name
from ..derive import Derivation, adjoint_symbol
from ..errors import DerivationError
from ..ir.ops import (
    Apply,
    Concat,
    Slice,
    add,
    coeff_and_factors,
    hadamard,
    leaves,
    mul,
    postorder,
    signed_terms,
    transpose,
)
from . import numpy_runtime as _runtime
from .numpy_printer import (
    Assign,
    Comment,
    Function,
    Line,
    Loop,
    RowPrinter,
    Store,
    SumOuter,
    SumRows,
    TotalLoss,
    batch_leaves,
)

__all__ = ["generate_module", "KernelGenerator", "Backend", "NUMPY"]


@dataclass(frozen=True)
class Backend:
    """What the lowering asks of a backend: its expression printer and the few statements it
    writes as code (allocation, copies). A backend that cannot write into arrays in place
    (``inplace=False``, JAX) gets no ``out=`` arguments and no recycled buffers."""

    name: str = "numpy"
    printer: type = RowPrinter
    inplace: bool = True

    @property
    def module(self) -> str:
        return self.printer.module

    def empty(self, shape: str) -> str:
        return f"{self.module}.empty({shape}, dtype=dtype)"

    def zeros(self, shape: str) -> str:
        return f"{self.module}.zeros({shape}, dtype=dtype)"

    def empty_like(self, array: str) -> str:
        return f"{self.module}.empty_like({array})"

    def zeros_like(self, array: str) -> str:
        return f"{self.module}.zeros_like({array})"

    def copy(self, array: str) -> str:
        return f"{array}.copy()"


NUMPY = Backend()


class Namer:
    """Deterministic fresh names that avoid every name already taken."""

    def __init__(self, taken):
        self.taken = set(taken)

    def fresh(self, base: str) -> str:
        """``base`` itself if free, else ``base0``, ``base1``, ..."""
        if base not in self.taken:
            self.taken.add(base)
            return base
        return self.numbered(base)

    def numbered(self, prefix: str) -> str:
        i = 0
        while f"{prefix}{i}" in self.taken:
            i += 1
        self.taken.add(f"{prefix}{i}")
        return f"{prefix}{i}"


def _is_worth_binding(expr) -> bool:
    if isinstance(expr, (MatrixSymbol, OneMatrix)):
        return False
    if isinstance(expr, Transpose) and isinstance(expr.arg, MatrixSymbol):
        return False
    if isinstance(expr, MatMul):
        _, factors = coeff_and_factors(expr)
        return len(factors) > 1 or _is_worth_binding(factors[0])
    return True


_UFUNCS = {"np.tanh", "np.exp", "np.log", "np.reciprocal"}


_SEQUENCE_ALLOC = re.compile(r"^np\.empty\(\(T, B, (\w+)\), dtype=dtype\)$")
_SEQUENCE_MM = re.compile(r"^_mm\(.*\)$")
_SEQUENCE_SUM = re.compile(r"^(\w+) ([+-]) (\w+)$")


def _recycle_buffers(statements: list) -> list:
    """Reuse whole-sequence arrays that nothing reads any more for later ones of equal shape.

    A fresh (T, B, size) array is page-faulted in on every call, which costs more than the
    arithmetic on it. Only arrays this function allocated (``np.empty`` and ``_mm`` results)
    are recycled, and only when no name bound to them (aliases included) appears later.
    """
    printer = RowPrinter({}, set())
    texts = [printer.doprint(s) for s in statements]
    buffer_of: dict[str, int] = {}  # name -> buffer id
    size_of: dict[int, str] = {}  # buffer id -> size name
    out = list(statements)

    def used_after(i: int, buffer: int) -> bool:
        names = [n for n, b in buffer_of.items() if b == buffer]
        rest = "\n".join(texts[i:])
        return any(re.search(rf"\b{re.escape(n)}\b", rest) for n in names)

    def free_buffer(i: int, size: str) -> tuple[int, str] | None:
        # a buffer is free at statement i if nothing from statement i on reads any of its names
        for buffer, buffer_size in size_of.items():
            if buffer_size == size and not used_after(i, buffer):
                return buffer, next(n for n, b in buffer_of.items() if b == buffer)
        return None

    def new_buffer(name: str, size: str) -> None:
        buffer_of[name] = len(size_of)
        size_of[len(size_of)] = size

    for i, stmt in enumerate(statements):
        if isinstance(stmt, Line) and " = " in stmt.code:
            target, value = stmt.code.split(" = ", 1)
            match = _SEQUENCE_ALLOC.match(value)
            if match and target.isidentifier():
                free = free_buffer(i, match.group(1))
                if free is None:
                    new_buffer(target, match.group(1))
                else:
                    out[i] = Line(f"{target} = {free[1]}  # reuses a finished array")
                    buffer_of[target] = free[0]
            elif value in buffer_of:  # an alias
                buffer_of[target] = buffer_of[value]
        elif isinstance(stmt, Assign) and isinstance(stmt.value, str):
            if stmt.value in buffer_of:  # an alias
                buffer_of[stmt.target] = buffer_of[stmt.value]
            elif not stmt.size:
                continue
            elif _SEQUENCE_MM.match(stmt.value):
                free = free_buffer(i, stmt.size)
                if free is None:
                    new_buffer(stmt.target, stmt.size)
                else:
                    value = f"{stmt.value[:-1]}, out={free[1]})"
                    out[i] = Assign(stmt.target, value, stmt.comment, stmt.size)
                    buffer_of[stmt.target] = free[0]
            elif (m := _SEQUENCE_SUM.match(stmt.value)) and m.group(1) in buffer_of:
                first, op, second = m.groups()
                buffer = buffer_of[first]
                if first != second and not used_after(i + 1, buffer):
                    ufunc = "np.add" if op == "+" else "np.subtract"
                    value = f"{ufunc}({first}, {second}, out={first})"
                    out[i] = Assign(stmt.target, value, stmt.comment, stmt.size)
                    buffer_of[stmt.target] = buffer
    return out


_ANY_ALLOC = re.compile(r"^np\.empty\((\(T(?: \+ 1)?, B, .+\)), dtype=dtype\)$")
_NAME_OR_VIEW = re.compile(r"^(\w+)(?:\[.*\])?$")
_WRITTEN_INTO = re.compile(r"\bout=(\w+)\)$")
_RETURNED = re.compile(r"\breturn\b(.*)$")


def _use_workspaces(statements: list) -> list:
    """Take the whole-sequence arrays of ``_loss_and_grad`` (``np.empty`` of (T, B, size) or
    (T + 1, B, size), and sized ``_mm`` results) from the module's workspace, reused across
    calls of the same shapes: a fresh array of a few MB is page-faulted in on every call, which
    costs more than the arithmetic on it. An array the function returns, or that a returned
    name aliases or views, is left a fresh allocation."""
    alias: dict[str, str] = {}  # name -> the name it aliases or views

    def walk(stmts):
        for stmt in stmts:
            if isinstance(stmt, Loop):
                walk(stmt.body)
                continue
            if isinstance(stmt, Line) and " = " in stmt.code:
                target, value = stmt.code.split(" = ", 1)
            elif isinstance(stmt, Assign) and isinstance(stmt.value, str):
                target, value = stmt.target, stmt.value
            else:
                continue
            value = value.split("  #")[0].strip()
            # a name bound to another's array: an alias, a view, or a result written out= it
            match = _NAME_OR_VIEW.match(value) or _WRITTEN_INTO.search(value)
            if target.isidentifier() and match:
                alias[target] = match.group(1)

    walk(statements)
    returned: set[str] = set()
    for stmt in statements:
        text = stmt.code if isinstance(stmt, Line) else ""
        found = _RETURNED.search(text)
        if found:
            names = re.sub(r"'[^']*'", "", found.group(1))  # the keys are not names
            returned |= set(re.findall(r"\b[A-Za-z_]\w*\b", names))
    kept = set()
    for name in returned:
        seen = set()
        while name not in seen:  # the chain of aliases down to the allocated array
            seen.add(name)
            kept.add(name)
            name = alias.get(name, name)
    out = []
    for stmt in statements:
        if isinstance(stmt, Line) and " = " in stmt.code:
            target, value = stmt.code.split(" = ", 1)
            match = _ANY_ALLOC.match(value)
            if match and target.isidentifier() and target not in kept:
                stmt = Line(f"{target} = _workspace(_ws, {target!r}, {match.group(1)}, dtype)")
        elif (
            isinstance(stmt, Assign)
            and isinstance(stmt.value, str)
            and stmt.size
            and _SEQUENCE_MM.match(stmt.value)
            and "out=" not in stmt.value
            and stmt.target not in kept
        ):
            shape = f"(T, B, {stmt.size})"
            value = f"{stmt.value[:-1]}, out=_workspace(_ws, {stmt.target!r}, {shape}, dtype))"
            stmt = Assign(stmt.target, value, stmt.comment, stmt.size)
        out.append(stmt)
    return out


def _drop_unused_aliases(statements: list, keep: set) -> list:
    """Leave out ``a = b`` (a name bound to an existing array) where nothing later reads a,
    unless a is in ``keep`` (returned)."""
    printer = RowPrinter({}, set())
    texts = [printer.doprint(s) for s in statements]
    kept = []
    for i, stmt in enumerate(statements):
        alias = isinstance(stmt, Assign) and isinstance(stmt.value, str)
        if alias and stmt.value.isidentifier() and stmt.target not in keep:
            rest = "\n".join(texts[i + 1 :])
            if not re.search(rf"\b{re.escape(stmt.target)}\b", rest):
                continue
        kept.append(stmt)
    return kept


def _allocates(expr) -> bool:
    """Whether the printed expression yields a new array (not a name or a view)."""
    if isinstance(expr, (MatrixSymbol, OneMatrix, Slice)):
        return False
    if isinstance(expr, Transpose):
        return _allocates(expr.arg)
    return True


def _gemm_rooted(expr, is_batch) -> bool:
    """A batched matrix product, possibly plus terms or under an activation: worth hoisting."""
    if isinstance(expr, MatMul):
        _, factors = coeff_and_factors(expr)
        return len(factors) > 1 and is_batch(expr)
    if isinstance(expr, MatAdd):
        return any(_gemm_rooted(a, is_batch) for a in expr.args)
    if isinstance(expr, Apply):
        return _gemm_rooted(expr.arg, is_batch)
    return False


def _structure(expr) -> tuple | str:
    """A key equal for expressions that differ only in the order of the terms of their sums
    (hoisting moves the loop-invariant terms of a sum first)."""
    if isinstance(expr, MatrixSymbol):
        return expr.name
    if not isinstance(expr, Basic) or not expr.args:
        return sp.srepr(expr)
    if isinstance(expr, MatAdd):  # nested sums (a placeholder written out) flattened, sorted
        terms = list(expr.args)
        while any(isinstance(t, MatAdd) for t in terms):
            terms = [a for t in terms for a in (t.args if isinstance(t, MatAdd) else (t,))]
        return ("MatAdd", *sorted((_structure(t) for t in terms), key=repr))
    return (type(expr).__name__, *(_structure(a) for a in expr.args))


def _backward_values(d: Derivation, is_batch) -> set:
    """Keys (:func:`_key`) of the forward values the adjoint recurrence of ``d`` evaluates:
    its activations and its matrix products of the data (a GRU's W_hh h(t−1) + b_hh), each
    the largest such value at its place (the parts of a kept value are not kept again)."""
    adjoints = {adjoint_symbol(v.symbol) for v in d.cell._vars.values()}
    exprs = [*d.carry.values(), *[e for terms in d.state_local.values() for e in terms]]

    def kept(node) -> bool:
        if isinstance(node, MatrixSymbol) or leaves(node) & adjoints or not is_batch(node):
            return False
        if isinstance(node, Apply):
            return True
        return isinstance(node, (MatAdd, MatMul)) and _gemm_rooted(node, is_batch)

    needed: set = set()
    seen: set = set()

    def visit(node) -> None:
        if node in seen:
            return
        seen.add(node)
        if kept(node):
            needed.add(_key(node))
            return
        for arg in node.args:
            if isinstance(arg, MatrixExpr):
                visit(arg)

    for expr in exprs:
        visit(expr)
    return needed


def _key(expr):
    """``expr`` as a hashable key that does not depend on the order or the grouping of the
    terms of a sum or the factors of a Hadamard product."""
    if isinstance(expr, (MatAdd, HadamardProduct)):
        args = list(expr.args)
        while any(type(a) is type(expr) for a in args):
            args = [b for a in args for b in (a.args if type(a) is type(expr) else (a,))]
        return (type(expr).__name__, tuple(sorted((_key(a) for a in args), key=str)))
    if isinstance(expr, Basic) and expr.args and not isinstance(expr, MatrixSymbol):
        return (type(expr).__name__, tuple(_key(a) for a in expr.args))
    return expr


def _contains(expr, node) -> bool:
    return any(n == node for n in postorder([expr]))


def _parent_counts(roots) -> dict:
    counts: dict = {}
    for node in postorder(roots):
        if isinstance(node, MatrixSymbol):
            continue
        for arg in set(a for a in node.args if isinstance(a, MatrixExpr)):
            counts[arg] = counts.get(arg, 0) + 1
    for root in roots:
        counts[root] = counts.get(root, 0) + 1
    return counts


class Phase:
    """Statements of one phase, printed with the names its expressions have there."""

    def __init__(self, gen: KernelGenerator, names: dict, temp_prefix: str, sequence: bool = True):
        self.gen = gen
        self.names = dict(names)
        self.temp_prefix = temp_prefix
        self.sequence = sequence  # whole (T, B, size) arrays rather than one step
        self.stmts: list = []
        self.bound: dict = {}  # subexpression -> placeholder symbol
        self.values: dict = {}  # name -> the expression assigned to it
        # elementwise values for all t computed by ufuncs in their own array, no temporaries
        self.in_place = False

    def print(self, expr: MatrixExpr) -> str:
        printer = self.gen.backend.printer(self.names, self.gen.batch, self.sequence)
        text = printer.doprint(expr)
        self.gen.helpers |= printer.used_helpers
        return text

    def name(self, symbol: MatrixSymbol, text: str, batch: bool) -> MatrixSymbol:
        self.names[symbol] = text
        if batch:
            self.gen.batch.add(symbol)
        return symbol

    def print_into(self, expr: MatrixExpr, dest: str, substitute: bool = True) -> str | None:
        """``expr`` computed straight into the array ``dest`` (NumPy's ``out=``), if possible."""
        if not self.gen.backend.inplace:
            return None
        if substitute:
            expr = expr.xreplace(self.bound)
        module = self.gen.backend.module
        if isinstance(expr, Apply) and expr.activation.numpy in _UFUNCS:
            name = self.gen.backend.printer.function(expr.activation.numpy)
            return f"{name}({self.print(expr.arg)}, out={dest})"
        if isinstance(expr, Concat):
            return f"{self.print(expr)[:-1]}, out={dest})"  # np.concatenate(..., out=dest)
        if isinstance(expr, HadamardProduct) and len(expr.args) == 2:
            a, b = (self.print(x) for x in expr.args)
            return f"{module}.multiply({a}, {b}, out={dest})"
        if isinstance(expr, MatAdd) and len(expr.args) == 2:
            (a_negative, a), (b_negative, b) = signed_terms(expr)
            if not a_negative:
                ufunc = "subtract" if b_negative else "add"
                return f"{module}.{ufunc}({self.print(a)}, {self.print(b)}, out={dest})"
        return None

    def lines_into(self, expr: MatrixExpr, dest: str) -> list[str] | None:
        """Statements that compute the elementwise ``expr`` in the array ``dest`` with ufuncs
        writing ``out=dest``, so no temporary as large as ``dest`` is made; ``None`` where the
        expression has more than one compound operand at some node, or is not elementwise."""
        np_ = self.gen.backend.module

        def atomic(e) -> bool:
            return not _allocates(e)

        def number(c) -> str:
            return repr(float(c))

        def go(e) -> list[str] | None:
            if isinstance(e, Apply) and e.activation.numpy in _UFUNCS:
                ufunc = self.gen.backend.printer.function(e.activation.numpy)
                if atomic(e.arg):
                    return [f"{ufunc}({self.print(e.arg)}, out={dest})"]
                inner = go(e.arg)
                return None if inner is None else [*inner, f"{ufunc}({dest}, out={dest})"]
            if isinstance(e, MatMul):
                coeff, factors = coeff_and_factors(e)
                if len(factors) != 1 or not coeff.is_number:
                    return None
                (factor,) = factors
                if atomic(factor):
                    return [f"{np_}.multiply({self.print(factor)}, {number(coeff)}, out={dest})"]
                inner = go(factor)
                if inner is None:
                    return None
                return [*inner, f"{np_}.multiply({dest}, {number(coeff)}, out={dest})"]
            if isinstance(e, HadamardProduct):
                compound = [a for a in e.args if not atomic(a)]
                atoms = [self.print(a) for a in e.args if atomic(a)]
                if len(compound) > 1:
                    return None
                if compound:
                    lines = go(compound[0])
                    if lines is None:
                        return None
                else:
                    lines = [f"{np_}.multiply({atoms[0]}, {atoms[1]}, out={dest})"]
                    atoms = atoms[2:]
                return lines + [f"{np_}.multiply({dest}, {a}, out={dest})" for a in atoms]
            if isinstance(e, MatAdd):
                terms = signed_terms(e)
                compound = [(neg, m) for neg, m in terms if not atomic(m)]
                atoms = [(neg, self.print(m)) for neg, m in terms if atomic(m)]
                if len(compound) > 1:
                    return None
                if compound:
                    negative, magnitude = compound[0]
                    lines = go(magnitude)
                    if lines is None:
                        return None
                    if negative:
                        plus = next((a for a in atoms if not a[0]), None)
                        if plus is None:
                            lines.append(f"{np_}.negative({dest}, out={dest})")
                        else:
                            atoms.remove(plus)
                            lines.append(f"{np_}.subtract({plus[1]}, {dest}, out={dest})")
                else:
                    (first_negative, first), (negative, second) = atoms[:2]
                    if first_negative:
                        return None
                    ufunc = "subtract" if negative else "add"
                    lines = [f"{np_}.{ufunc}({first}, {second}, out={dest})"]
                    atoms = atoms[2:]
                for negative, atom in atoms:
                    ufunc = "subtract" if negative else "add"
                    lines.append(f"{np_}.{ufunc}({dest}, {atom}, out={dest})")
                return lines
            return None

        return None if atomic(expr) else go(expr)

    def assign_into(self, name: str, expr: MatrixExpr, dest: str, comment: str = "") -> None:
        """``name = expr`` kept in ``dest`` too, written there directly where NumPy allows."""
        text = self.print_into(expr, dest)
        if text is None:
            self.assign(name, expr, comment)
            array, index = dest[:-1].split("[", 1)
            self.stmts.append(Store(array, index, name))
        else:
            self.stmts.append(Line(f"{text}" + (f"  # {comment}" if comment else "")))
            self.stmts.append(Line(f"{name} = {dest}", defines=name))

    def assign(self, name: str, expr: MatrixExpr, comment: str = "") -> None:
        expr = expr.xreplace(self.bound)
        self.values[name] = expr
        if self.in_place and self.sequence and self.gen.is_batch(expr):
            lines = self.lines_into(expr, name) if expr.shape[1] == 1 else None
            if lines:
                size = self.gen.size_text(expr.shape[0])
                self.stmts.append(Line(f"{name} = {self.gen.backend.empty(f'(T, B, {size})')}"))
                self.stmts.extend(Line(line) for line in lines)
                return
        if self.sequence and isinstance(expr, MatAdd) and self.gen.is_batch(expr):
            # a sum over whole sequences: one new array, the other terms added in place
            # (a fresh large temporary per term costs more than the arithmetic)
            terms = list(expr.args)
            # the first array must have the whole (T, B, size) shape: a parameter-only term
            # (softplus(b)) broadcasts when added, but cannot hold the sum
            fresh = [
                t
                for t in terms
                if _allocates(t)
                and t.shape == expr.shape
                and self.gen.is_batch(t)
                and coeff_and_factors(t)[0] > 0
            ]
            if fresh:
                first = fresh[0]
                size = self.gen.size_text(expr.shape[0]) if expr.shape[1] == 1 else ""
                self.stmts.append(Assign(name, self.print(first), comment, size))
                for term, (negative, magnitude) in zip(terms, signed_terms(expr), strict=True):
                    if term is not first:
                        op = "-=" if negative else "+="
                        self.stmts.append(Line(f"{name} {op} {self.print(magnitude)}"))
                return
        size = ""
        if self.sequence and expr.shape[1] == 1 and self.gen.is_batch(expr):
            size = self.gen.size_text(expr.shape[0])
        self.stmts.append(Assign(name, self.print(expr), comment, size))

    def bind(self, node: MatrixExpr, name: str, comment: str = "") -> MatrixSymbol:
        """Assign ``node`` to ``name`` and use the name wherever ``node`` occurs from now on."""
        self.assign(name, node, comment)
        self.bound[node] = self.name(MatrixSymbol(name, *node.shape), name, self.gen.is_batch(node))
        return self.bound[node]

    def emit_shared(self, exprs: list[MatrixExpr], avoid: set = frozenset()) -> list[MatrixExpr]:
        """Bind the subexpressions shared by ``exprs``; return them with the bindings used.

        Subexpressions that use a symbol in ``avoid`` (not yet computed) are left alone.
        """
        roots = [e.xreplace(self.bound) for e in exprs]
        counts = _parent_counts(roots)
        for node in postorder(roots):
            if node in roots or isinstance(node, MatrixSymbol) or not _is_worth_binding(node):
                continue
            if avoid and leaves(node) & avoid:
                continue
            if counts.get(node, 0) >= 2:
                self.bind(node, self.temp_name(node))
        return [r.xreplace(self.bound) for r in roots]

    def temp_name(self, node: MatrixExpr) -> str:
        """A name for a temporary: the cell's own name for a value it named, else numbered."""
        return self.gen.temp_name(self.gen.original(node, self.bound), self.temp_prefix)

    def emit(self, targets: list[tuple[str, MatrixExpr, str]], force=frozenset()) -> dict:
        """Assign each (name, expr, comment), binding shared and forced subexpressions first.

        Returns the temporaries bound for ``force`` as {subexpression: name}.
        """
        roots = [e.xreplace(self.bound) for _, e, _ in targets]
        counts = _parent_counts(roots)
        root_name = {}
        for (name, _, _), root in zip(targets, roots, strict=True):
            root_name.setdefault(root, name)
        done = set()
        forced = {}
        for node in postorder(roots):
            if not _is_worth_binding(node) or isinstance(node, MatrixSymbol):
                continue
            if node in root_name and counts.get(node, 0) >= 2:
                # a result that other results use: compute it once, under its own name
                name = root_name[node]
                self.bind(node, name, next(c for n, _, c in targets if n == name))
                done.add(name)
                continue
            if node in root_name:
                continue
            if counts.get(node, 0) >= 2 or node in force:
                name = self.temp_name(node)
                self.bind(node, name)
                if node in force:
                    forced[node] = name
        for (name, _, comment), root in zip(targets, roots, strict=True):
            if name not in done:
                self.assign(name, root, comment)
        return forced


def _number_ranges(numbers: list[int]) -> str:
    """``[5, 6, 7, 9]`` -> ``"(5)-(7), (9)"``."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"({r[0]})" if len(r) == 1 else f"({r[0]})-({r[-1]})" for r in runs)


def cite(derivation: Derivation, keys) -> str:
    """How a kernel comment cites lines of the derivation in its docstring: their numbers
    (:meth:`~rnnsym.derive.Derivation.number_of`) and, for those that are one of the report's
    equations, the report's numbers: ``"(1) above, report eqs. (2)-(3)"``, ``"(9)-(10) above"``,
    ``"(3)-(10) above, report eqs. (5)-(9)"`` (the numbers of the lines that are its equations)."""
    numbers = {k: derivation.number_of(k) for k in keys if k in derivation.labels}
    return cite_lines(numbers, derivation.labels, keys)


def cite_lines(numbers: dict[str, int], labels: dict[str, str], keys) -> str:
    """:func:`cite` for any numbered list of lines: ``numbers[key]`` is a line's number and
    ``labels[key]`` its report label (or ""); keys without a number are left out."""
    keys = [k for k in keys if k in numbers]
    if not keys:
        return ""
    text = _number_ranges([numbers[k] for k in keys]) + " above"
    report = _report_numbers([labels.get(k, "") for k in keys])
    if not report:
        return text
    return f"{text}, report eq{'s' if len(report) > 1 else ''}. {_number_ranges(report)}"


def _report_numbers(labels) -> list[int]:
    """The report's equation numbers in labels such as "eq. (4)" and "eqs. (2)-(3)"."""
    numbers = set()
    for label in labels:
        found = [int(n) for n in re.findall(r"\((\d+)\)", label)]
        if "-" in label and len(found) == 2:
            found = list(range(found[0], found[1] + 1))
        numbers.update(found)
    return sorted(numbers)


class KernelGenerator:
    """Builds the kernel module of one derivation."""

    def __init__(self, derivation: Derivation, backend: Backend = NUMPY):
        self.backend = backend
        self.stored: dict = {}  # key of a value the forward loop keeps -> its placeholder
        self.needed: set = set()
        self.display = derivation  # named intermediates kept, for the module docstring
        self.cite = functools.partial(cite, derivation)  # its line numbers, for the comments
        derivation = derivation.inlined()
        self.d = derivation
        cell = derivation.cell
        self.cell = cell
        self.state_order = list(cell.updates)
        # the states the loops over t compute (all of them here; the scan schedule computes
        # its linear states by scans and loops over the others) and what names the forward
        # loop gives to the states computed before it ({symbol: "s[t]"})
        self.loop_states = self.state_order
        self.loop_sequences: dict = {}
        # and what names the adjoint loop gives to adjoints computed before it ({g: "g_s[t]"})
        self.loop_adjoints: dict = {}
        taken = set(cell._vars) | set(cell._dims) | {"np", "t", "T", "B", "dtype", "loss"}
        taken |= {s.prev.name for s in cell.states.values()}
        taken |= {name for name in dir(_runtime) if not name.startswith("__")}
        taken |= {"params", "inputs", "targets", "h0", "sizes", "grads", "states", "SPEC"}
        taken |= {"forward", "loss_and_grad", "_forward", "_loss_and_grad"}
        taken |= {f"g_{n}" for n in list(cell.states) + list(cell.outputs) + list(cell.params)}
        # the names of the user's quantities, as Python reads them (NFKC): generated code binds
        # nothing else under these names
        self.user_names = user_names(cell)
        taken |= self.user_names

        def own(base: str) -> str:
            # a name of the generator's: ``base``, or ``_base`` where the user has ``base``
            # (user names never start with '_')
            return f"_{base}" if python_name(base) in self.user_names else base

        self.step_name = {n: own(f"{n}_t") for n in cell.states}
        self.prev_step_name = {n: own(f"{s.prev.name}_t") for n, s in cell.states.items()}
        self.adjoint_step_name = {n: own(f"g_{n}_t") for n in cell.states}
        self.full_name = own("full")
        taken |= set(self.step_name.values()) | set(self.prev_step_name.values())
        taken |= set(self.adjoint_step_name.values()) | {self.full_name}
        self.namer = Namer(taken)
        self.all_name = {n: self.namer.fresh(f"{n}_all") for n in self.state_order}
        self.batch: set = set()
        for var in cell._vars.values():
            if var.kind != "param":
                self.batch.add(var.symbol)
                self.batch.add(adjoint_symbol(var.symbol))
        for state in cell.states.values():
            self.batch.add(state.prev.symbol)
        self.helpers: set[str] = set()
        self.hoisted_seq: dict = {}  # subexpression -> name of its array for all t
        self.unhoist: dict = {}  # placeholder "v0[t]" -> the subexpression it stands for
        self.carry_names: dict = {}  # state -> the name of what step 1 hands back to h(0)
        self.forward_hoisted: dict = {}  # subexpression -> its placeholder "v0[t]" in the loop
        # the values the cell named with cell.define, written out, by structure -> their name;
        # each name is bound at most once per generated function, for that value only
        self.define_names = {
            _structure(expr): symbol.name for symbol, expr in self.display._inline_maps()[0].items()
        }
        self.unnamed_defines = set(self.define_names.values())

    def is_batch(self, expr) -> bool:
        return bool(batch_leaves(expr) & self.batch)

    def temp_name(self, expr: MatrixExpr, prefix: str) -> str:
        """The name the cell gave ``expr`` with ``cell.define`` (``z``, ``u``) the first time it
        is bound in a function; otherwise a numbered ``prefix`` (``v0``)."""
        name = self.define_names.get(_structure(expr))
        if name in self.unnamed_defines:
            self.unnamed_defines.discard(name)
            return name
        return self.namer.numbered(prefix)

    def size_text(self, size) -> str:
        size = sp.sympify(size)
        if size.is_Integer:
            return str(int(size))
        return size.name if size.is_Symbol else f"({sp.pycode(size)})"

    def sequence_names(self) -> dict:
        """Names of whole-sequence arrays (T, B, size) and of the parameters."""
        cell = self.cell
        names = {p.symbol: n for n, p in cell.params.items()}
        for group in (cell.inputs, cell.targets, cell.outputs):
            names |= {v.symbol: n for n, v in group.items()}
        for n, s in cell.states.items():
            names[s.symbol] = n
            names[s.prev.symbol] = s.prev.name
        return names

    # ----- hoisting loop-invariant work out of a loop -----

    def hoist(self, expr, variant: set, loop_names: dict, hoisted: dict, elementwise: bool = False):
        """Replace the parts of ``expr`` free of ``variant`` by arrays computed for all t: the
        matrix products only, or with ``elementwise`` every part that computes something."""
        if self.stored and isinstance(expr, (Apply, MatAdd, MatMul)):
            kept = self.stored.get(_key(expr))  # computed by the forward loop for all t
            if kept is not None:
                return kept
        if elementwise and not (leaves(expr) & variant):
            if isinstance(expr, MatrixSymbol) or not self.is_batch(expr):
                return expr
        elif not (leaves(expr) & variant) and not _gemm_rooted(expr, self.is_batch):
            # elementwise work stays in the loop, on arrays that fit in cache;
            # only the matrix products inside it are worth doing for all t at once
            if isinstance(expr, MatrixSymbol) or not self.is_batch(expr):
                return expr
            args = [
                self.hoist(a, variant, loop_names, hoisted) if isinstance(a, MatrixExpr) else a
                for a in expr.args
            ]
            return expr.func(*args)
        if not (leaves(expr) & variant):
            if expr not in hoisted:
                name = self.temp_name(expr, "v")
                # an elementwise factor reads the values the forward loop kept for all t
                whole = self.read_whole(expr) if elementwise else expr
                self.pending.append((name, whole, ""))
                self.hoisted_seq[expr] = name
                symbol = MatrixSymbol(f"{name}[t]", *expr.shape)
                self.batch.add(symbol)
                loop_names[symbol] = f"{name}[t]"
                self.unhoist[symbol] = expr
                hoisted[expr] = symbol
            return hoisted[expr]
        if isinstance(expr, MatrixSymbol):
            return expr
        if isinstance(expr, MatAdd):
            invariant = [a for a in expr.args if not (leaves(a) & variant)]
            rest = [
                self.hoist(a, variant, loop_names, hoisted, elementwise)
                for a in expr.args
                if leaves(a) & variant
            ]
            if invariant:
                whole = add(*invariant)
                rest.insert(0, self.hoist(whole, variant, loop_names, hoisted, elementwise))
            return add(*rest)
        if elementwise and isinstance(expr, HadamardProduct):
            # the forward-only factors (σ and 1 − σ of a gate) as one array for all t
            factors = list(expr.args)
            while any(isinstance(a, HadamardProduct) for a in factors):
                factors = [
                    b for a in factors for b in (a.args if isinstance(a, HadamardProduct) else (a,))
                ]
            invariant = [a for a in factors if not (leaves(a) & variant)]
            rest = [
                self.hoist(a, variant, loop_names, hoisted, elementwise)
                for a in factors
                if leaves(a) & variant
            ]
            if invariant:
                whole = hadamard(*invariant)
                rest.insert(0, self.hoist(whole, variant, loop_names, hoisted, elementwise))
            return hadamard(*rest)
        args = [
            self.hoist(a, variant, loop_names, hoisted, elementwise)
            if isinstance(a, MatrixExpr)
            else a
            for a in expr.args
        ]
        return expr.func(*args)

    def read_whole(self, expr):
        """``expr`` (of one step) with every value the forward loop kept for all t (a gate,
        a pre-activation, W_hh h(t-1) + b_hh) replaced by its whole (T, B, size) array."""
        whole = getattr(self, "whole_by_key", {})

        def walk(node):
            if isinstance(node, (Apply, MatAdd, MatMul)):
                kept = whole.get(_key(node))
                if kept is not None:
                    return kept
            if isinstance(node, MatrixSymbol) or not node.args:
                return node
            return node.func(*[walk(a) if isinstance(a, MatrixExpr) else a for a in node.args])

        return walk(expr) if whole else expr

    def accumulations(self, body: list, hoisted: dict) -> dict:
        """{placeholder v[t]: (the sum v[t] + rest it occurs in, rest)} for each all-t array
        that the loop reads inside one sum only: the loop adds the rest into v[t] in place
        (before the first update that needs the sum), so v holds the whole sum for all t when
        the loop ends."""
        found = {}
        for placeholder in hoisted.values():
            parents = set()
            for node in postorder(body):
                if isinstance(node, MatrixExpr) and placeholder in node.args:
                    parents.add(node)
            if len(parents) != 1:
                continue
            (node,) = parents
            if not isinstance(node, MatAdd) or node.shape != placeholder.shape:
                continue
            rest = add(*[a for a in node.args if a != placeholder])
            found[placeholder] = (node, rest)
        return found

    def store_activations(self, expr, loop: Phase, allocations: list):
        """``expr`` with each value the backward pass needs (a gate, a matrix product of the
        state) computed into an array for all t (``i_all[t]``, ``act0[t]``), allocated by
        ``allocations`` and recorded in ``forward_hoisted``, so the backward pass reads it."""
        while self.needed:
            # innermost first: a kept value is read by the values around it; the expression
            # changes with each one kept, so its nodes are walked again
            for node in postorder([expr]):
                if isinstance(node, MatrixSymbol) or not self.is_batch(node):
                    continue
                original = self.original(node, loop.bound)
                key = _key(original)
                if key in self.needed and key not in self.stored:
                    expr = self.keep(node, original, key, expr, loop, allocations)
                    break
            else:
                break
        return expr

    def read_stored(self, expr, phase: Phase):
        """``expr`` (for all t) with what ``phase`` has bound substituted and the values the
        forward loop kept read from their arrays instead of computed again."""
        expr = expr.xreplace(phase.bound)
        if not self.stored:
            return expr
        whole = {
            key: MatrixSymbol(self.hoisted_seq[self.unhoist[symbol]], *symbol.shape)
            for key, symbol in self.stored.items()
        }

        unbound = {symbol: e for e, symbol in phase.bound.items()}

        def walk(node):
            if isinstance(node, (Apply, MatAdd, MatMul)):
                kept = whole.get(_key(node.xreplace(unbound)))
                if kept is not None:
                    return kept
            if isinstance(node, MatrixSymbol) or not node.args:
                return node
            args = [walk(a) if isinstance(a, MatrixExpr) else a for a in node.args]
            return node.func(*args)

        return walk(expr)

    def keep(self, node, original, key, expr, loop: Phase, allocations: list):
        """Compute ``node`` into an array for all t and read it from there in ``expr``."""
        define = self.define_names.get(_structure(original))
        name = self.namer.fresh(f"{define}_all") if define else self.namer.numbered("act")
        size = self.size_text(node.shape[0])
        allocations.append(Line(f"{name} = {self.backend.empty(f'(T, B, {size})')}"))
        dest = f"{name}[t]"
        into = loop.print_into(node, dest)
        if into is None:
            loop.stmts.append(Store(name, "t", loop.print(node.xreplace(loop.bound))))
        else:
            loop.stmts.append(Line(into))
        symbol = loop.name(MatrixSymbol(dest, *node.shape), dest, True)
        self.stored[key] = symbol
        self.forward_hoisted[original] = symbol
        self.hoisted_seq[original] = name
        self.unhoist[symbol] = original
        return expr.xreplace({node: symbol})

    # ----- phase 1: forward recurrence -----

    def forward_phase(self, store: bool = False) -> tuple[list, dict]:
        """The forward recurrence; with ``store``, the activations the backward pass needs
        (gate values) are kept for all t instead of being computed again there."""
        cell = self.cell
        seq = self.sequence_names()
        self.stored = {}
        if not cell.states:  # no recurrence: every step is computed at once, all t
            return [], seq
        steps = self.cite([name for _, name in cell.order])
        stmts: list = [Comment(f"forward recurrence, {steps}: the states for t = 1..T")]
        for n in self.loop_states:
            size = self.size_text(cell.states[n].shape[0])
            empty = self.backend.empty(f"(T + 1, B, {size})")
            stmts.append(Line(f"{self.all_name[n]} = {empty}"))
            stmts.append(Store(self.all_name[n], "0", f"states[{n!r}]"))
        looped = [cell.states[n] for n in self.loop_states]
        variant = {s.prev.symbol for s in looped} | {s.symbol for s in looped}
        pre = Phase(self, seq, "v")
        loop_names = {p.symbol: n for n, p in cell.params.items()}
        hoisted: dict = {}
        self.pending = []
        body = [
            self.hoist(self.d.update_expr(n), variant, loop_names, hoisted)
            for n in self.loop_states
        ]
        pre.emit(self.pending)
        accumulated = self.accumulations(body, hoisted) if self.backend.inplace else {}
        self.forward_hoisted = dict(hoisted)  # arrays for all t that the backward pass reuses
        for placeholder, (node, _) in accumulated.items():
            # after the loop the array holds the whole sum (the pre-activation), not its part
            part = self.unhoist[placeholder]
            del self.forward_hoisted[part]
            full = add(part, *[self.original(a) for a in node.args if a != placeholder])
            # the same sum as the derivation writes it (its terms in the derivation's order),
            # which is how the backward pass meets it
            written = [
                e
                for e in postorder([self.d.update_expr(m) for m in self.loop_states])
                if isinstance(e, MatAdd) and set(e.args) == set(full.args)
            ]
            full = written[0] if written else full
            self.forward_hoisted[full] = placeholder
            self.hoisted_seq[full] = self.hoisted_seq.pop(part)
            self.unhoist[placeholder] = full
        if pre.stmts:
            stmts.append(Comment("the part of each update that does not depend on t - 1, all t"))
            stmts.extend(pre.stmts)
        loop = Phase(self, loop_names, "a", sequence=False)
        loop.names.update(self.loop_sequences)
        for var in cell.inputs.values():
            loop.names[var.symbol] = f"{var.name}[t]"
        used = set().union(*(leaves(e) for e in body))
        for n, state in cell.states.items():
            if state.prev.symbol in used:
                prev_t = self.prev_step_name[n]
                loop.stmts.append(Line(f"{prev_t} = {self.all_name[n]}[t]"))
                loop.names[state.prev.symbol] = prev_t
        # a later update may use a state updated earlier in the same step: emit in order
        added: set = set()
        allocations: list = []
        self.needed = _backward_values(self.d, self.is_batch) if store else set()
        for n, expr in zip(self.loop_states, body, strict=True):
            for placeholder, (node, rest) in accumulated.items():
                if not _contains(expr, node):
                    continue
                if placeholder not in added:
                    # the rest of the sum added into the all-t array in place: the backward
                    # pass reads the whole pre-activation back instead of recomputing it
                    rest = rest.xreplace(loop.bound)
                    loop.stmts.append(Line(f"{loop.print(placeholder)} += {loop.print(rest)}"))
                    added.add(placeholder)
                expr = expr.xreplace({node: placeholder})
            if store and self.backend.inplace:
                expr = self.store_activations(expr, loop, allocations)
            root = loop.emit_shared([expr])[0]
            step, dest = self.step_name[n], f"{self.all_name[n]}[t + 1]"
            if self.is_batch(root):
                loop.assign_into(step, root, dest, self.cite([n]))
            else:  # free of the data and of the past: one value, stored in every row
                all_name = self.all_name[n]
                loop.stmts.append(Store(all_name, "t + 1", loop.print(root), self.cite([n])))
                loop.stmts.append(Line(f"{step} = {dest}", defines=step))
            loop.names[cell.states[n].symbol] = step
        if allocations:
            stmts.append(
                Comment("values of each step that the backward pass reads, kept for all t")
            )
            stmts.extend(allocations)
        stmts.append(Loop("t", "range(T)", tuple(loop.stmts)))
        for n, state in cell.states.items():
            if n not in self.loop_states:
                continue
            stmts.append(Line(f"{n} = {self.all_name[n]}[1:]", defines=n))
            stmts.append(
                Line(f"{state.prev.name} = {self.all_name[n]}[:-1]", defines=state.prev.name)
            )
        return stmts, seq

    # ----- phase 2: outputs, loss and loss-local adjoints, all t at once -----

    def output_phase(self, seq: dict) -> Phase:
        cell = self.cell
        phase = Phase(self, seq, "e")
        if cell.output_defs:
            outputs = self.cite(list(cell.output_defs))
            phase.stmts.append(Comment(f"outputs, {outputs}, all t at once"))
        for name in cell.output_defs:
            phase.emit([(name, self.d.output_expr(name), self.cite([name]))])
        return phase

    def loss_phase(self, phase: Phase) -> dict:
        cell, d = self.cell, self.d
        targets = [("loss", TotalLoss(d.loss_expr), f"{self.cite(['L'])}, summed over t and batch")]
        for name, expr in d.output_adjoints.items():
            targets.append(
                (f"g_{name}", expr, f"gradient w.r.t. {name}(t), {self.cite([f'g_{name}'])}")
            )
        loss_lines = self.cite(["L", *(f"g_{n}" for n in d.output_adjoints)])
        phase.stmts.append(Comment(f"loss and the adjoints of the outputs, {loss_lines}"))
        phase.emit(targets)
        for name in d.output_adjoints:
            phase.name(adjoint_symbol(cell.outputs[name].symbol), f"g_{name}", True)
        adjoint_syms = {adjoint_symbol(s.symbol) for s in cell.states.values()}
        local_names, local_targets = {}, []
        self.loop_local = {}
        self.local_per_step = {}
        for n in self.state_order:
            invariant = [e for e in d.state_local[n] if not (leaves(e) & adjoint_syms)]
            self.loop_local[n] = [e for e in d.state_local[n] if leaves(e) & adjoint_syms]
            if invariant:
                # a parameter-only part (a linear loss dᵀh) is one vector, not one per step
                self.local_per_step[n] = self.is_batch(add(*invariant))
                local_names[n] = self.namer.fresh(f"l_{n}")
                local_targets.append((local_names[n], add(*invariant), ""))
        if local_targets:
            phase.stmts.append(
                Comment(
                    "the part of each state adjoint that arises within step t, "
                    + self.cite([f"g_{n}" for n in local_names])
                )
            )
            phase.emit(local_targets)
        return local_names

    # ----- phase 3: the adjoint recurrence -----

    def backward_phase(self, phase: Phase, local_names: dict, wanted: set) -> dict:
        """Emit the backward loop; returns {vector needed later: name of its stored sequence}."""
        cell, d = self.cell, self.d
        states = cell.states
        adjoint_syms = {adjoint_symbol(states[n].symbol) for n in self.loop_states}
        carries = {n: e for n, e in d.carry.items() if n in self.loop_states}
        carry_names = {n: self.namer.fresh(f"carry_{n}") for n in carries}
        self.carry_names = carry_names
        if not states:  # no recurrence: the steps decouple, nothing runs backwards in time
            return {}
        stmts = phase.stmts
        recurrence = self.cite([f"g_{name}" for _, name in cell.order])
        stmts.append(Comment(f"adjoint recurrence, {recurrence}: the only sequential part"))
        for n in self.loop_states:
            stmts.append(Line(f"g_{n} = {self.backend.empty_like(n)}"))
        for n in carries:
            zeros = self.backend.zeros_like(f"{self.all_name[n]}[0]")
            stmts.append(Line(f"{carry_names[n]} = {zeros}"))
        pre = Phase(self, phase.names, "v")
        pre.in_place = self.backend.name == "numpy"
        pre.bound = dict(phase.bound)
        loop_names = {p.symbol: n for n, p in cell.params.items()}
        # what the forward pass already computed for all t (W_x x(t)) is read, not recomputed
        hoisted: dict = dict(self.forward_hoisted)
        for expr, placeholder in hoisted.items():
            loop_names[placeholder] = placeholder.name
            whole = self.hoisted_seq[expr]
            pre.bound[expr] = pre.name(MatrixSymbol(whole, *expr.shape), whole, True)
        self.whole_by_key = {_key(expr): pre.bound[expr] for expr in hoisted}
        self.pending = []
        order = list(reversed(self.loop_states))
        # every forward-only factor of the adjoint step (a gate, 1 - h∘h) is computed for all
        # t before the loop, one array operation instead of T; the loop keeps only what reads
        # an adjoint
        local_exprs = {
            n: [self.hoist(e, adjoint_syms, loop_names, hoisted, True) for e in self.loop_local[n]]
            for n in order
        }
        carry_exprs = {
            n: self.hoist(e, adjoint_syms, loop_names, hoisted, True) for n, e in carries.items()
        }
        pre.emit(self.pending)
        if pre.stmts:
            stmts.append(Comment("forward-only factors of the recurrence, all t at once"))
            stmts.extend(pre.stmts)
        loop = Phase(self, loop_names, "d", sequence=False)
        loop.names.update(self.loop_adjoints)
        for n, state in states.items():
            loop.names[state.symbol] = f"{n}[t]"
            loop.names[state.prev.symbol] = f"{state.prev.name}[t]"
        for var in [*cell.inputs.values(), *cell.targets.values(), *cell.outputs.values()]:
            loop.names[var.symbol] = f"{var.name}[t]"
        for var in cell.outputs.values():
            loop.names[adjoint_symbol(var.symbol)] = f"g_{var.name}[t]"
        # forward-only values used by several adjoint statements (a gate in ∇c and in the
        # carry): computed once per step
        loop.emit_shared(
            [e for n in order for e in local_exprs[n]] + list(carry_exprs.values()),
            avoid=adjoint_syms,
        )
        for n in order:
            terms = []
            shape = states[n].shape
            if n in local_names:
                per_step = self.local_per_step[n]
                local = f"{local_names[n]}[t]" if per_step else local_names[n]
                terms.append(loop.name(MatrixSymbol(local, *shape), local, per_step))
            terms.extend(local_exprs[n])
            if n in carries:
                terms.append(loop.name(MatrixSymbol(carry_names[n], *shape), carry_names[n], True))
            value = add(*terms) if terms else sp.ZeroMatrix(*shape)
            g_t = self.adjoint_step_name[n]
            loop.emit([(g_t, value, self.cite([f"g_{n}"]))])
            loop.name(adjoint_symbol(states[n].symbol), g_t, True)
            loop.stmts.append(Store(f"g_{n}", "t", g_t))
        # products the parameter gradients need are kept for all t
        force = set()
        # matched as keys: the hoisting may have grouped a product's factors differently
        wanted_by_key = {_key(w): w for w in wanted}
        for expr in carry_exprs.values():
            for node in postorder([expr]):
                if _key(self.original(node)) in wanted_by_key and _is_worth_binding(node):
                    force.add(node.xreplace(loop.bound))
        first = len(loop.stmts)
        forced = loop.emit([(carry_names[n], e, "") for n, e in carry_exprs.items()], force)
        stored = {}
        store_after = {}
        for node, temp in forced.items():
            seq_name = self.namer.fresh(f"{temp}_seq")
            size = self.size_text(node.shape[0])
            stmts.append(Line(f"{seq_name} = {self.backend.empty(f'(T, B, {size})')}"))
            stored[wanted_by_key[_key(self.original(node, loop.bound))]] = seq_name
            store_after[temp] = Store(seq_name, "t", temp)
        body = loop.stmts[:first]
        for stmt in loop.stmts[first:]:
            if isinstance(stmt, Assign) and stmt.target in store_after:
                dest = f"{store_after[stmt.target].array}[t]"
                into = loop.print_into(loop.values[stmt.target], dest, substitute=False)
                if into is not None:  # computed in place in its sequence: no copy
                    body.extend([Line(into), Line(f"{stmt.target} = {dest}")])
                    continue
                body.extend([stmt, store_after[stmt.target]])
                continue
            body.append(stmt)
        stmts.append(Loop("t", "range(T - 1, -1, -1)", tuple(body)))
        return stored

    def original(self, node, bound: dict | None = None):
        """A loop expression with its temporaries and hoisted placeholders written out."""
        if bound:
            unbind = {symbol: expr for expr, symbol in bound.items()}
            while leaves(node) & set(unbind):
                node = node.xreplace(unbind)
        rule = {s: self.unhoist[s] for s in leaves(node) if s in self.unhoist}
        return node.xreplace(rule) if rule else node

    # ----- the whole module -----

    def generate(self) -> str:
        """The NumPy module's source."""
        fwd, grad = self.functions()
        printer = self.backend.printer({}, self.batch)
        return _assemble(
            self, printer.doprint(fwd), printer.doprint(grad), self.helpers, with_vjp=True
        )

    def functions(self) -> tuple[Function, Function]:
        """The lowered program: the statements of ``_forward`` and ``_loss_and_grad``, with
        every expression already printed by the backend's printer."""
        cell, d = self.cell, self.d
        base_names = set(self.namer.taken)
        fwd_stmts, seq = self.forward_phase()
        out = self.output_phase(seq)
        result = ", ".join(f"{n!r}: {n}" for n in [*cell.states, *cell.outputs])
        forward_body = [*fwd_stmts, *out.stmts, Line(f"return {{{result}}}")]

        self.namer = Namer(base_names)  # each function is its own namespace
        self.unnamed_defines = set(self.define_names.values())
        self.hoisted_seq = {}
        fwd_stmts, seq = self.forward_phase(store=True)
        phase = self.output_phase(seq)
        local_names = self.loss_phase(phase)
        sums = {n: batch_sum(t, self.is_batch) for n, t in d.param_terms.items()}
        wanted = {vector for total in sums.values() for vector in _sum_vectors(total)}
        for term in d.input_terms.values():  # Wᵀ v: keep v for all t, as for ∇W
            for part in term.args if isinstance(term, MatAdd) else [term]:
                factors = coeff_and_factors(part)[1]
                if isinstance(part, MatMul) and len(factors) > 1:
                    wanted.add(factors[-1])
        stored = self.backward_phase(phase, local_names, wanted)
        grads = Phase(self, phase.names, "s")
        grads.bound = dict(phase.bound)
        for expr, name in self.hoisted_seq.items():
            grads.bound[expr] = grads.name(MatrixSymbol(name, *expr.shape), name, True)
        for original, seq_name in stored.items():
            grads.bound[original] = grads.name(
                MatrixSymbol(seq_name, *original.shape), seq_name, True
            )
        for n in self.state_order:
            grads.name(adjoint_symbol(cell.states[n].symbol), f"g_{n}", True)
        gradients = self.cite(list(cell.params))
        grads.stmts.append(Comment(f"parameter gradients, {gradients}: one contraction each"))
        grads.emit(
            [(f"g_{n}", self.read_stored(s, grads), self.cite([n])) for n, s in sums.items()]
        )
        grad_dict = ", ".join(f"{n!r}: g_{n}" for n in cell.params)
        tail = self.composition_tail(grads, grad_dict)
        self._drop_unused_adjoint_sequences(phase, grads, tail)
        # parameters with equal gradients (b_ih and b_hh of an LSTM) get arrays of their own
        grad_names = {f"g_{n}" for n in cell.params}
        grads.stmts[:] = [
            Assign(s.target, self.backend.copy(s.value), s.comment, s.size)
            if isinstance(s, Assign) and s.target in grad_names and s.value in grad_names
            else s
            for s in grads.stmts
        ]
        grad_body = [*fwd_stmts, *phase.stmts, *grads.stmts, *tail]
        if self.backend.name == "numpy":  # the recycling rewrites NumPy's own calls
            grad_body = _use_workspaces(_recycle_buffers(grad_body))
            self.uses_workspace = any(
                "_workspace(" in (s.code if isinstance(s, Line) else str(s.value))
                for s in grad_body
                if isinstance(s, (Line, Assign))
            )
        return self.function_statements(forward_body, grad_body)

    def composition_tail(self, grads: Phase, grad_dict: str) -> list:
        """Return the gradients; with ``full``, also ∇ of the inputs and of h(0).

        ∇_{x(t)} L (for every t) and ∇_{h(0)} L are what a cell hands to the cells it is
        composed with: the layer below in a stack, the encoder of a sequence-to-sequence model.
        """
        cell, d = self.cell, self.d
        stmts = [Line(f"if not {self.full_name}:"), Line(f"    return loss, {{{grad_dict}}}")]
        tail = Phase(self, grads.names, "i")
        tail.bound = dict(grads.bound)
        names = {}
        context = set(cell.context_inputs)
        for name, var in cell.inputs.items():
            names[name] = self.namer.fresh(f"g_in_{name}")
            term = d.input_terms.get(name)
            if term is None:
                size = self.size_text(var.shape[0])
                shape = f"(B, {size})" if name in context else f"(T, B, {size})"
                tail.stmts.append(Line(f"{names[name]} = {self.backend.zeros(shape)}"))
            elif name in context:
                temp = self.namer.fresh(f"g_in_{name}_t")
                tail.emit([(temp, self.read_stored(term, tail), "")])
                tail.stmts.append(Line(f"{names[name]} = {temp}.sum(axis=0)  # summed over t"))
            else:
                tail.emit([(names[name], self.read_stored(term, tail), "")])
        tail.stmts[:] = _drop_unused_aliases(tail.stmts, keep=set(names.values()))
        if tail.stmts:
            stmts.append(Comment("for composing cells: the adjoints of the inputs, all t"))
            stmts.extend(tail.stmts)
        carry = self.carry_names
        initial = []
        for name in self.state_order:
            if name in carry:
                initial.append(f"{name!r}: {carry[name]}")
            else:  # h(0) reaches nothing
                initial.append(f"{name!r}: {self.backend.zeros_like(f'{self.all_name[name]}[0]')}")
        input_dict = ", ".join(f"{n!r}: {names[n]}" for n in cell.inputs)
        stmts.append(Comment("and of the initial states: what step 1 hands back to h(0)"))
        stmts.append(
            Line(f"return loss, {{{grad_dict}}}, {{{input_dict}}}, {{{', '.join(initial)}}}")
        )
        return stmts

    def _drop_unused_adjoint_sequences(self, phase: Phase, grads: Phase, tail: list) -> None:
        """Keep ∇h(t) for all t only where a parameter or input gradient reads it."""
        used = " ".join(
            s.value if isinstance(s, Assign) else s.code
            for s in [*grads.stmts, *tail]
            if isinstance(s, (Assign, Line))
        )
        unused = {n for n in self.state_order if not re.search(rf"\bg_{n}\b", used)}
        drop = {f"g_{n} = {self.backend.empty_like(n)}" for n in unused}
        drop_stores = {(f"g_{n}", "t", self.adjoint_step_name[n]) for n in unused}
        kept = []
        for stmt in phase.stmts:
            if isinstance(stmt, Loop):
                stmt = Loop(
                    stmt.index,
                    stmt.iterable,
                    tuple(
                        s
                        for s in stmt.body
                        if not (isinstance(s, Line) and s.code in drop)
                        and not (
                            isinstance(s, Store) and (s.array, s.index, s.value) in drop_stores
                        )
                    ),
                )
            if not (isinstance(stmt, Line) and stmt.code in drop):
                kept.append(stmt)
        phase.stmts[:] = kept

    def unpack(self, groups) -> list:
        return [Line(f"{n} = {group}[{n!r}]") for group, names in groups for n in names]

    def function_statements(self, forward_body: list, grad_body: list) -> tuple[Function, Function]:
        cell = self.cell
        first_input = next(iter(cell.inputs))
        header = [
            Line(f"T, B = inputs[{first_input!r}].shape[:2]"),
            Line(f"dtype = inputs[{first_input!r}].dtype"),
            *[Line(f"{n} = sizes[{n!r}]", defines=n) for n in sorted(cell._dims)],
        ]
        forward_keys = [e.key for e in self.display.forward if e.key != "L"]
        backward_keys = ["L"] + [e.key for e in self.display.equations()[len(forward_keys) + 1 :]]
        fwd = Function(
            "_forward",
            ("params", "inputs", "states", "sizes"),
            f"States and outputs for all t, {self.cite(forward_keys)}.",
            tuple(
                self.unpack([("params", cell.params), ("inputs", cell.inputs)])
                + header
                + forward_body
            ),
        )
        grad = Function(
            "_loss_and_grad",
            ("params", "inputs", "targets", "states", "sizes", f"{self.full_name}=False")
            + (("_ws=None",) if getattr(self, "uses_workspace", False) else ()),
            f"Loss and the gradient of every parameter, {self.cite(backward_keys)}.",
            tuple(
                self.unpack(
                    [("params", cell.params), ("inputs", cell.inputs), ("targets", cell.targets)]
                )
                + header
                + grad_body
            ),
        )
        return fwd, grad


def batch_sum(term: MatrixExpr, is_batch) -> MatrixExpr:
    """Σ over time and batch of a per-step gradient term, as SumOuter / SumRows nodes."""
    if not is_batch(term):
        raise DerivationError(
            f"the gradient term {sp.sstr(term)} does not depend on the data; rnnsym cannot "
            f"sum it over time and batch"
        )
    if isinstance(term, MatAdd):
        return add(*[batch_sum(t, is_batch) for t in term.args])
    if term.shape[1] == 1:
        return SumRows(term)
    coeff, factors = coeff_and_factors(term)
    if isinstance(term, MatMul):
        # Σ_t P M(t) S = P (Σ_t M(t)) S: parameter factors on either side stay outside the sum
        first = next(i for i, f in enumerate(factors) if is_batch(f))
        last = max(i for i, f in enumerate(factors) if is_batch(f))
        prefix, middle, suffix = factors[:first], factors[first : last + 1], factors[last + 1 :]
        if prefix or suffix or coeff != 1:
            inner = batch_sum(middle[0] if len(middle) == 1 else MatMul(*middle), is_batch)
            return mul(coeff, *prefix, inner, *suffix)
        for j in range(1, len(factors)):
            left, right = factors[:j], factors[j:]
            if left[-1].shape[1] != 1:
                continue
            u, v = mul(*left), transpose(mul(*right))
            if is_batch(u) and is_batch(v):
                return SumOuter(u, v)
    if isinstance(term, Transpose):
        inner = batch_sum(term.arg, is_batch)
        if isinstance(inner, SumOuter):
            return SumOuter(inner.args[1], inner.args[0])
    if isinstance(term, sp.HadamardProduct):
        const = [f for f in term.args if not is_batch(f)]
        data = [f for f in term.args if is_batch(f)]
        if len(data) == 1:
            return hadamard(*const, batch_sum(data[0], is_batch))
    raise DerivationError(
        f"cannot sum the gradient term {sp.sstr(term)} over time and batch as a contraction "
        f"of vectors"
    )


def _sum_vectors(expr) -> list:
    found = []
    for node in sp.preorder_traversal(expr):
        if isinstance(node, SumOuter):
            found.extend(node.args)
        elif isinstance(node, SumRows):
            found.append(node.args[0])
    return found


_HELPER_ORDER = [
    "_sigmoid",
    "_softplus",
    "_log_sigmoid",
    "_logsumexp",
    "_softmax",
    "_relu",
    "_step",
    "_mm",
    "_zeros",
    "_rows",
    "_pad",
    "_sum_outer",
    "_sum_rows",
    "_add_seed",
    "_linear_scan",
    "_linear_scan_reverse",
    "_erf",
    "_erfc",
]


# the argument check every backend's module carries: SHAPE_CHECK reads only names, shapes and
# dtypes (no values), through the three ARRAY_HOOKS each backend writes for its array type
SHAPE_CHECK = [
    "_given_states",
    "_check_shapes",
    "_same_steps",
    "_resolve",
    "_expected_text",
    "_match",
    "_shape_text",
]
ARRAY_HOOKS = ["_require_array", "_is_integer", "_is_float"]


@functools.cache
def _helper_source(name: str) -> str:
    return inspect.getsource(getattr(_runtime, name)).rstrip()


_WORKSPACE_COMMENT = "(array name, shape, dtype) -> the array, for the next call"
_OWNER_COMMENT = '"call": the token of the call that holds the workspace, while it runs'
_WORKSPACE_HELPERS = ("_claim", "_release", "_workspace", "clear_workspaces")
_CHECKED_COMMENT = "shape signature of a call whose arrays passed -> (sizes, T, B, dtype)"


def _runtime_source(used: set[str]) -> str:
    """The runtime helpers the module needs, copied from rnnsym/backends/numpy_runtime.py."""
    pieces = []
    for name in _HELPER_ORDER:
        if name in used:
            pieces.append(_helper_source(name))
    checks = ["_check_arrays", "_signature", "_check_all", "_initial_states", *ARRAY_HOOKS]
    pieces.extend(_helper_source(n) for n in checks)
    pieces.append(f"_CHECKED = {{}}  # {_CHECKED_COMMENT}")
    pieces.extend(_helper_source(n) for n in SHAPE_CHECK)
    return "\n\n\n".join(pieces)


def _assemble(
    gen: KernelGenerator,
    fwd: str,
    grad: str,
    helpers: set[str],
    about: str | None = None,
    with_vjp: bool = False,
) -> str:
    """The module text; ``about`` (default: the BPTT derivation) ends its docstring."""
    from .._version import __version__
    from ..printing import derivation_text

    cell = gen.cell
    spec = _spec(cell)
    if about is None:
        equations = derivation_text(gen.display)
        about = (
            f"The derivation this kernel implements. The comments below cite its lines by\n"
            f"number; a line that is one of the equations (2)-(9) of the report (after\n"
            f"Goodfellow, Bengio & Courville, Deep Learning, MIT Press 2016, ch. 10) says\n"
            f"which in brackets.\n\n"
            f"{_indent_doc(equations)}\n"
        )
    doc = (
        f"NumPy kernel for the recurrent cell {cell.name!r}, generated by rnnsym "
        f"{__version__}.\n\nDo not edit: regenerate with rnnsym. Needs only NumPy.\n\n"
        f"Arrays: params[name] has the parameter's shape (vectors 1-D); inputs and targets "
        f"are\n(T, B, size) arrays (time, batch, size); h0 is None (zeros), an array (B, size) "
        f"or (size,),\nor a dict of them by state name. float32 and float64 are supported.\n\n"
        f"{about}"
    )
    doc = '"""' + docstring_text(doc) + '"""'
    forward_api = (
        "def forward(params, inputs, h0=None):\n"
        '    """States and outputs for all t: dict of (T, B, size) arrays."""\n'
        "    sizes, _, _, _, states, inputs, _ = _check_arrays(\n"
        "        SPEC, params, inputs, None, h0, False\n"
        "    )\n"
        "    return _forward(params, inputs, states, sizes)"
    )
    grad_api = (
        "def loss_and_grad(params, inputs, targets, h0=None):\n"
        '    """(loss, grads): the total loss and its gradient for every parameter."""\n'
        "    sizes, _, _, _, states, inputs, targets = _check_arrays(\n"
        "        SPEC, params, inputs, targets, h0\n"
        "    )\n"
        "    return _loss_and_grad(params, inputs, targets, states, sizes)"
    )
    vjp_api = (
        "def vjp(params, inputs, targets, h0=None):\n"
        '    """(loss, grads, input_grads, h0_grads): also the gradient of every input\n'
        "    sequence, (T, B, size), and of every initial state, (B, size), for composing cells.\n"
        '    """\n'
        "    sizes, _, _, _, states, inputs, targets = _check_arrays(\n"
        "        SPEC, params, inputs, targets, h0\n"
        "    )\n"
        "    return _loss_and_grad(params, inputs, targets, states, sizes, True)"
    )
    # the safety net: the generated functions use the cell's names for its quantities only
    module_level = {"np", "SPEC", "forward", "loss_and_grad", "vjp", *_HELPER_ORDER}
    module_level |= {"_WORKSPACE", "_OWNER", *_WORKSPACE_HELPERS}
    check_namespace(f"{fwd}\n\n\n{grad}\n", cell, module_level)
    workspace = "_workspace(" in grad
    if workspace:  # the call holds the workspace while it runs (see _claim)
        for api in ("grad_api", "vjp_api"):
            text = locals()[api]
            head, call = text.rsplit("\n    return ", 1)
            call = call[:-1] + ", _ws=_ws)"
            text = f"{head}\n    _ws = _claim()\n    try:\n        return {call}\n"
            text += "    finally:\n        _release(_ws)"
            if api == "grad_api":
                grad_api = text
            else:
                vjp_api = text
    parts = [
        doc,
        "import numpy as np",
        "SPEC = " + pprint.pformat(spec, width=96, sort_dicts=False),
        _runtime_source(helpers),
        *(
            [f"_WORKSPACE = {{}}  # {_WORKSPACE_COMMENT}", f"_OWNER = {{}}  # {_OWNER_COMMENT}"]
            + [_helper_source(n) for n in _WORKSPACE_HELPERS]
            if workspace
            else []
        ),
        forward_api,
        grad_api,
        *([vjp_api] if with_vjp else []),
        fwd,
        grad,
    ]
    text = "\n\n\n".join(parts) + "\n"
    return re.sub(r"[ \t]+\n", "\n", text)


def _indent_doc(text: str) -> str:
    return "\n".join(("    " + line) if line else "" for line in text.split("\n"))


def docstring_text(text: str) -> str:
    """``text`` safe inside a triple-quoted docstring, reading the same: backslashes and
    double quotes escaped (no user string can end the docstring) and so is every control
    character but the line break."""
    out = []
    for c in text:
        if c == "\\":
            out.append("\\\\")
        elif c == '"':
            out.append('\\"')
        elif c == "\n" or c.isprintable():
            out.append(c)
        else:
            out.append(c.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _spec(cell) -> dict:
    def dim(size):
        if size.is_Integer:
            return int(size)
        return size.name if size.is_Symbol else sp.pycode(size)

    def dims(symbol):
        rows, cols = symbol.shape
        return (dim(rows),) if cols == 1 else (dim(rows), dim(cols))

    spec = {
        "params": {n: dims(v.symbol) for n, v in cell.params.items()},
        "inputs": {n: dims(v.symbol) for n, v in cell.inputs.items()},
        "targets": {n: dims(v.symbol) for n, v in cell.targets.items()},
        "states": {n: dims(v.symbol) for n, v in cell.states.items()},
        "outputs": {n: dims(v.symbol) for n, v in cell.outputs.items()},
    }
    # only where used, so the SPEC of a plain cell reads as before
    if cell.context_inputs:
        spec["context"] = list(cell.context_inputs)
    if cell.class_targets:
        spec["classes"] = list(cell.class_targets)
    if cell.fed_back:
        spec["fed_back"] = dict(cell.fed_back)
    return spec


def user_names(cell) -> set[str]:
    """The names a cell's author chose (quantities, sizes, previous states), as Python reads
    them (NFKC-normalised)."""
    names = set(cell._vars) | {str(d) for d in cell._dims}
    names |= {s.prev.name for s in cell.states.values()}
    return {python_name(n) for n in names}


_GENERATED = ("_forward", "_loss_and_grad")  # the functions written per cell


def _user_bindings(source: str, names: set[str], module_level: set[str] = frozenset()) -> list:
    """Where generated code uses a user's name for something else: the clashes found.

    ``source`` is a module, or the generated functions alone with the names of the module
    around them in ``module_level``.
    """
    tree = ast.parse(source)
    clashes: list[str] = []
    module_level = set(module_level) | {
        t.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    module_level |= {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    module_level |= {
        a.asname or a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names
    }
    for func in tree.body:
        if not isinstance(func, ast.FunctionDef) or func.name not in _GENERATED:
            continue
        bound: dict[str, int] = {}
        called: set[str] = set()
        loads: set[str] = set()
        for arg in func.args.args:
            bound[arg.arg] = bound.get(arg.arg, 0) + 1
        for node in ast.walk(func):
            if isinstance(node, ast.Name):
                if isinstance(node.ctx, ast.Load):
                    loads.add(node.id)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                # the cell's quantities are arrays, never called: a call by one of their
                # names means generated code wanted a builtin or helper of that name
                called.add(node.func.id)
            elif isinstance(node, (ast.Assign, ast.For)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for leaf in ast.walk(target):
                        if isinstance(leaf, ast.Name) and isinstance(leaf.ctx, ast.Store):
                            bound[leaf.id] = bound.get(leaf.id, 0) + 1
        for name, count in sorted(bound.items()):
            if name in names and count > 1:
                clashes.append(f"{name!r} is bound {count} times in {func.name}()")
        for name in sorted(called & names):
            clashes.append(f"{func.name}() calls {name!r}, which the cell names")
        for name in sorted(loads & module_level & names & set(bound)):
            clashes.append(f"{func.name}() reads the module's {name!r}, which the cell names")
    return clashes


def check_namespace(source: str, cell, module_level: set[str] = frozenset()) -> str:
    """``source`` unchanged if it uses the cell's names only for the cell's quantities; a
    :class:`DerivationError` naming the clash otherwise (a safety net behind the renaming)."""
    clashes = _user_bindings(source, user_names(cell), module_level)
    if clashes:
        raise DerivationError(
            f"internal error: the kernel of cell {cell.name!r} would use a name of the cell for "
            f"its own: {'; '.join(clashes)}. Rename that quantity or size."
        )
    return source


def generate_module(derivation: Derivation) -> str:
    """The source of the kernel module of a derived cell."""
    return KernelGenerator(derivation).generate()  # checked by check_namespace
