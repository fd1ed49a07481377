"""A SymPy printer from the IR to NumPy source in the row (batch-major) layout.

A column-vector quantity v (size, 1) of the IR is, in code, an array of shape (..., B, size): one
row per batch element, with any number of leading axes (one step, or all T steps at once). Hence
``W @ v`` prints as ``v @ W.T``, ``uᵀ v`` as a row-wise dot product and ``u ∘ v`` as ``u * v``.
Expressions free of batch data (parameters only) print literally (``W @ V``). Statements are
small dataclasses printed by ``_print_<Class>`` methods, like SymPy's ``codegen.ast``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sympy as sp
from sympy import (
    HadamardProduct,
    MatAdd,
    MatMul,
    MatrixExpr,
    MatrixSymbol,
    OneMatrix,
    Transpose,
    ZeroMatrix,
)
from sympy.core.basic import Basic
from sympy.printing.printer import Printer

from ..errors import DerivationError
from ..ir.ops import (
    Apply,
    Concat,
    LogSumExp,
    Pad,
    Slice,
    Softmax,
    coeff_and_factors,
    signed_terms,
    transpose,
)
from ..ir.scalar import scalar_code

__all__ = [
    "SumOuter",
    "SumRows",
    "TotalLoss",
    "Assign",
    "Comment",
    "Loop",
    "Line",
    "Function",
    "RowPrinter",
    "batch_leaves",
    "comment_text",
]


class SumOuter(MatrixExpr):
    """Σ over time and batch of u vᵀ (both vectors): one matrix product in code."""

    def __new__(cls, u: MatrixExpr, v: MatrixExpr):
        return Basic.__new__(cls, u, v)

    @property
    def shape(self):
        return (self.args[0].shape[0], self.args[1].shape[0])


class SumRows(MatrixExpr):
    """Σ over time and batch of a vector u."""

    def __new__(cls, u: MatrixExpr):
        return Basic.__new__(cls, u)

    @property
    def shape(self):
        return self.args[0].shape


class TotalLoss(MatrixExpr):
    """Σ over time and batch of a 1×1 per-step loss."""

    def __new__(cls, expr: MatrixExpr):
        return Basic.__new__(cls, expr)

    @property
    def shape(self):
        return (1, 1)


_REDUCTIONS = (SumOuter, SumRows, TotalLoss)
_COMMENT = re.compile(r"#.*$", re.MULTILINE)  # generated statements hold no '#' in strings


def batch_leaves(expr: Basic) -> set[MatrixSymbol]:
    """The matrix symbols ``expr`` depends on per row, not counting those under a sum over
    time and batch (``SumOuter``, ``SumRows``, ``TotalLoss``), whose results are parameter-shaped.
    """
    found: set[MatrixSymbol] = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, MatrixSymbol):
            found.add(node)
        elif not isinstance(node, _REDUCTIONS):
            stack.extend(a for a in node.args if isinstance(a, Basic))
    return found


def _needs_paren(text: str) -> bool:
    """Whether printed code must be bracketed before a coefficient or a minus sign: a sum or a
    difference outside any brackets (``-(a + b)``, never ``-a + b``).

    The printers write every binary ``+`` and ``-`` with a space on each side, so a scan of the
    top level for " + " and " - " finds them; a unary minus binds tighter than ``*``.
    """
    depth = 0
    for i, c in enumerate(text):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and c in "+-" and text[i - 1 : i + 2] in (" + ", " - "):
            return True
    return False


def comment_text(text: str) -> str:
    """``text`` safe on one comment line: line breaks and other control characters escaped."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


# ----- statements -----


@dataclass(frozen=True)
class Comment:
    text: str


@dataclass(frozen=True)
class Assign:
    target: str
    value: object  # a MatrixExpr, or a str for bookkeeping code
    comment: str = ""
    size: str = ""  # for a (T, B, size) array: its size, so the buffer can be recycled


@dataclass(frozen=True)
class Line:
    """A statement given as code (array allocation, indexing, return).

    With ``defines``, the line is left out when nothing after it uses that name.
    """

    code: str
    defines: str = ""


@dataclass(frozen=True)
class Store:
    """``array[index] = value``: a value written into one step of a sequence (or its h(0))."""

    array: str
    index: str
    value: str
    comment: str = ""


@dataclass(frozen=True)
class Loop:
    index: str
    iterable: str
    body: tuple


@dataclass(frozen=True)
class Function:
    name: str
    args: tuple[str, ...]
    doc: str
    body: tuple = field(default_factory=tuple)


_ATOMS = (
    MatrixSymbol,
    Apply,
    OneMatrix,
    SumOuter,
    SumRows,
    TotalLoss,
    Slice,
    Concat,
    Pad,
    LogSumExp,
    Softmax,
)


class RowPrinter(Printer):
    """Print IR expressions as NumPy code; ``names`` maps each leaf symbol to a Python name.

    ``batch`` is the set of symbols that carry batch data; everything else is a parameter.
    Unknown node types and unnamed symbols raise :class:`DerivationError` (strict printing).
    """

    printmethod = "_rnnsym_numpy"
    # the name the generated module imports its array library under; a backend's printer
    # (torch, jax) sets its own and maps NumPy's function names in ``function``
    module = "np"

    def __init__(
        self, names: dict[MatrixSymbol, str], batch: set[MatrixSymbol], sequence: bool = False
    ):
        super().__init__()
        self.names = names
        self.batch = batch
        self.sequence = sequence  # arrays have a time axis: products go through _mm
        self.used_helpers: set[str] = set()

    # ----- helpers -----

    @classmethod
    def function(cls, name: str) -> str:
        """The name of the array function NumPy calls ``name`` (``np.tanh``) in this backend;
        runtime helpers (``_sigmoid``) keep their names."""
        if name.startswith("np.") and cls.module != "np":
            return f"{cls.module}.{name[3:]}"
        return name

    def is_batch(self, expr) -> bool:
        return bool(batch_leaves(expr) & self.batch)

    def paren(self, expr) -> str:
        text = self._print(expr)
        if isinstance(expr, _ATOMS):
            return text
        return f"({text})"

    def _number(self, c) -> str:
        c = sp.sympify(c)
        if c.is_Integer:
            return str(int(c))
        if c.is_Rational:
            value = float(c)
            return repr(value) if sp.Rational(value) == c else f"({c.p} / {c.q})"
        if c.is_number and c.is_real:
            return repr(float(c))
        raise DerivationError(
            f"cannot print the coefficient {c} of a matrix product: coefficients must be real "
            f"numbers"
        )

    def _scaled(self, coeff, text: str) -> str:
        """``coeff * text``; ``text`` is bracketed where the coefficient would bind to its first
        term only."""
        if coeff == 1:
            return text
        if _needs_paren(text):
            text = f"({text})"
        if coeff == -1:
            return f"-{text}"
        return f"{self._number(coeff)} * {text}"

    def _print_not_supported(self, expr):
        raise DerivationError(f"cannot print {type(expr).__name__} as NumPy code: {sp.sstr(expr)}")

    emptyPrinter = _print_not_supported

    # ----- leaves -----

    def _print_MatrixSymbol(self, expr) -> str:
        try:
            return self.names[expr]
        except KeyError:
            raise DerivationError(
                f"internal error: no array is bound to {expr.name} at this point"
            ) from None

    def _print_OneMatrix(self, expr) -> str:
        return "1.0"

    def _print_ZeroMatrix(self, expr) -> str:
        return "0.0"

    # ----- nodes -----

    def _print_MatAdd(self, expr: MatAdd) -> str:
        parts: list[str] = []
        for i, (negative, term) in enumerate(signed_terms(expr)):
            text = self.paren_sum(term) if negative else self._print(term)
            sign = " - " if negative else " + "
            parts.append(f"{sign}{text}" if i else ("-" if negative else "") + text)
        return "".join(parts)

    def paren_sum(self, expr) -> str:
        text = self._print(expr)
        return f"({text})" if isinstance(expr, MatAdd) else text

    def _print_HadamardProduct(self, expr: HadamardProduct) -> str:
        return " * ".join(self.paren(arg) for arg in expr.args)

    def _print_Apply(self, expr: Apply) -> str:
        act = expr.activation
        argument = self._print(expr.arg)
        if act.numpy is not None:
            if act.numpy.startswith("_"):
                self.used_helpers.add(act.numpy)
            return f"{self.function(act.numpy)}({argument})"
        d = sp.Dummy("d", real=True)
        value = act.scalar(d)
        code, helpers = scalar_code(value, d, f"({argument})")
        self.used_helpers |= helpers
        if self.module != "np":  # the scalar code is written with NumPy's names
            code = re.sub(r"\bnp\.(\w+)", lambda m: self.function(m.group(0)), code)
        if d not in value.free_symbols:  # a constant (the derivative of 3 z + 1): one per entry
            return f"{self.function('np.full_like')}({argument}, {code})"
        # parenthesised: the inlined body may be a sum, and the caller treats Apply as atomic
        return f"({code})"

    def _literal(self, expr) -> str:
        """Parameter-only expressions print as written."""
        if isinstance(expr, MatrixSymbol):
            return self._print(expr)
        if isinstance(expr, Transpose):
            inner = expr.arg
            return (
                f"{self._literal(inner)}.T"
                if isinstance(inner, MatrixSymbol)
                else (f"({self._literal(inner)}).T")
            )
        if isinstance(expr, MatMul):
            coeff, factors = coeff_and_factors(expr)
            for j in range(1, len(factors)):
                left, right = factors[:j], factors[j:]
                if (
                    left[-1].shape[1] == 1
                    and right[0].shape[0] == 1
                    and (expr.shape[0] != 1 or expr.shape[1] != 1)
                ):
                    # a column times a row: vectors are 1-D arrays, so this is np.outer
                    u = self._literal(left[0] if j == 1 else MatMul(*left))
                    v = self._literal(right[0] if len(right) == 1 else MatMul(*right))
                    return self._scaled(coeff, f"{self.module}.outer({u}, {v})")
            text = " @ ".join(self._literal_factor(f) for f in factors)
            return self._scaled(coeff, text)
        return self._print(expr)

    def _literal_factor(self, factor) -> str:
        text = self._literal(factor)
        if isinstance(factor, (MatrixSymbol, Transpose, *_REDUCTIONS)):
            return text
        return f"({text})"

    def _right_factor(self, factor) -> str:
        """The array that multiplies a row from the right for the column factor ``factor``."""
        if factor.shape[0] == 1 and factor.shape[1] != 1 and not isinstance(factor, MatrixSymbol):
            # a row vector dᵀ: vector parameters are 1-D arrays, made a one-column matrix here
            # (a parameter declared (1, m) is a 2-D array already: the general case below)
            column = transpose(factor)
            text = self._literal(column)
            return f"{text}[:, None]" if isinstance(column, MatrixSymbol) else f"({text})[:, None]"
        if isinstance(factor, Transpose):
            return self._literal(factor.arg)
        text = self._literal(factor)
        return f"{text}.T" if isinstance(factor, MatrixSymbol) else f"({text}).T"

    def _print_MatMul(self, expr: MatMul) -> str:
        coeff, factors = coeff_and_factors(expr)
        if not self.is_batch(expr):
            return self._literal(expr)
        batch_positions = [i for i, f in enumerate(factors) if self.is_batch(f)]
        last = factors[-1]
        # W1 ⋯ Wk v (params, then one batch vector): rows times the transposed chain
        if batch_positions == [len(factors) - 1] and last.shape[1] == 1:
            if self.sequence:
                # (T, B, size) arrays: one 2-D matrix product instead of T stacked ones
                self.used_helpers.add("_mm")
                text = self._print(last)
                for f in reversed(factors[:-1]):
                    text = f"_mm({text}, {self._right_factor(f)})"
                return self._scaled(coeff, text)
            text = self.paren(last) + "".join(
                f" @ {self._right_factor(f)}" for f in reversed(factors[:-1])
            )
            return self._scaled(coeff, text)
        # uᵀ v: one number per row
        if (
            len(factors) == 2
            and isinstance(factors[0], Transpose)
            and factors[0].shape[0] == 1
            and factors[1].shape[1] == 1
        ):
            u, v = factors[0].arg, factors[1]
            return self._scaled(
                coeff,
                f"{self.module}.sum({self.paren(u)} * {self.paren(v)}, axis=-1, keepdims=True)",
            )
        # v s with s a 1×1 per-row quantity
        if len(factors) == 2 and factors[1].shape == (1, 1):
            return self._scaled(coeff, f"{self.paren(factors[0])} * {self.paren(factors[1])}")
        raise DerivationError(
            f"cannot print the batched matrix product {sp.sstr(expr)} in row layout"
        )

    def _print_Transpose(self, expr: Transpose) -> str:
        if not self.is_batch(expr):
            return self._literal(expr)
        if isinstance(expr.arg, SumOuter):
            return f"{self._print(expr.arg)}.T"
        if expr.shape == (1, 1):  # one number per row (a per-step weight): its own transpose
            return self._print(expr.arg)
        raise DerivationError(f"cannot print the batched transpose {sp.sstr(expr)}")

    def _print_LogSumExp(self, expr) -> str:
        self.used_helpers.add("_logsumexp")
        return f"_logsumexp({self._print(expr.args[0])})"

    def _print_Softmax(self, expr) -> str:
        self.used_helpers.add("_softmax")
        return f"_softmax({self._print(expr.args[0])})"

    def _print_Concat(self, expr) -> str:
        parts = expr.args
        data = [p for p in parts if self.is_batch(p)]
        like = next((p for p in data if isinstance(p, MatrixSymbol)), data[0] if data else None)
        texts = []
        for part in parts:
            if isinstance(part, ZeroMatrix) and like is not None:
                # a block of zeros shaped like the per-step rows of its neighbours
                self.used_helpers.add("_zeros")
                texts.append(f"_zeros({self._print(like)}, {self._index(part.shape[0])})")
            elif like is not None and not self.is_batch(part):
                # a parameter vector stacked with per-step data: repeated in every row
                self.used_helpers.add("_rows")
                texts.append(f"_rows({self._print(like)}, {self._print(part)})")
            else:
                texts.append(self._print(part))
        return f"{self.module}.concatenate([" + ", ".join(texts) + "], axis=-1)"

    def _print_Slice(self, expr) -> str:
        arg, start, stop = expr.args
        return f"{self.paren(arg)}[..., {self._index(start)}:{self._index(stop)}]"

    def _print_Pad(self, expr) -> str:
        self.used_helpers.add("_pad")
        arg, start, total = expr.args
        return f"_pad({self._print(arg)}, {self._index(start)}, {self._index(total)})"

    def _index(self, value) -> str:
        # sizes are variables of the generated function, named like the cell's sizes
        return sp.pycode(value) if not value.is_Integer else str(int(value))

    def _print_SumOuter(self, expr: SumOuter) -> str:
        self.used_helpers.add("_sum_outer")
        u, v = expr.args
        return f"_sum_outer({self._print(u)}, {self._print(v)})"

    def _print_SumRows(self, expr: SumRows) -> str:
        self.used_helpers.add("_sum_rows")
        return f"_sum_rows({self._print(expr.args[0])})"

    def _print_TotalLoss(self, expr: TotalLoss) -> str:
        inner = expr.args[0]
        parts = []
        for term in inner.args if isinstance(inner, MatAdd) else (inner,):
            coeff, factors = coeff_and_factors(term)
            if (
                len(factors) == 2
                and isinstance(factors[0], Transpose)
                and factors[1].shape[1] == 1
                and self.is_batch(factors[0])
                and self.is_batch(factors[1])
            ):
                # the sum over t and batch of uᵀv is one dot product of the flattened sequences
                text = (
                    f"{self.module}.vdot({self._print(factors[0].arg)}, {self._print(factors[1])})"
                )
            else:
                text, coeff = f"{self.module}.sum({self._print(term)})", sp.S.One
            parts.append(self._scaled(coeff, text))
        out = parts[0]
        for part in parts[1:]:
            out += f" - {part[1:]}" if part.startswith("-") else f" + {part}"
        return out

    # ----- statements -----

    def _print_Comment(self, stmt: Comment) -> str:
        lines = stmt.text.split("\n")
        return "\n".join(f"# {comment_text(line)}".rstrip() for line in lines)

    def _print_Line(self, stmt: Line) -> str:
        return stmt.code

    def _print_Store(self, stmt: Store) -> str:
        tail = f"  # {comment_text(stmt.comment)}" if stmt.comment else ""
        return f"{stmt.array}[{stmt.index}] = {stmt.value}{tail}"

    def _print_Assign(self, stmt: Assign) -> str:
        value = stmt.value if isinstance(stmt.value, str) else self._print(stmt.value)
        tail = f"  # {comment_text(stmt.comment)}" if stmt.comment else ""
        return f"{stmt.target} = {value}{tail}"

    def _print_Loop(self, stmt: Loop) -> str:
        body = "\n".join(self._kept(stmt.body))
        indented = "\n".join(("    " + line) if line else line for line in body.splitlines())
        return f"for {stmt.index} in {stmt.iterable}:\n{indented}"

    def _kept(self, statements) -> list[str]:
        """Printed statements, without the optional lines whose name nothing later reads."""
        texts = [self._print(s) for s in statements]
        code = [_COMMENT.sub("", text) for text in texts]  # "w.r.t." does not read r
        kept = []
        for i, (s, text) in enumerate(zip(statements, texts, strict=True)):
            if isinstance(s, Line) and s.defines:
                later = "\n".join(code[i + 1 :])
                if not re.search(rf"\b{re.escape(s.defines)}\b", later):
                    continue
            kept.append(text)
        return kept

    def _print_Function(self, stmt: Function) -> str:
        body = "\n".join(self._kept(stmt.body))
        doc = f'"""{stmt.doc}"""'
        lines = [doc] + body.splitlines()
        indented = "\n".join(("    " + line) if line else line for line in lines)
        return f"def {stmt.name}({', '.join(stmt.args)}):\n{indented}"
