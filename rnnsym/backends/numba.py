"""Generate the Numba kernel module of a derived cell: the step loops compiled as one function.

The lowering is NumPy's (:class:`~rnnsym.backends.numpy.KernelGenerator`); this module prints it
so that Numba compiles each generated function in nopython mode, where a step of the recurrence
costs no Python interpreter time. That pays at small sizes, where NumPy's per-step call overhead
dominates. The printed code keeps NumPy's row layout and statements, with these changes:

* the compiled functions take positional arrays and sizes (Numba passes no dicts); plain-Python
  wrappers ``forward``, ``loss_and_grad`` and ``vjp`` keep the NumPy kernel's dict contract;
* ufunc outputs positional (``np.tanh(a, d)``), a concatenation assigned into its array, sums
  over the last axis without ``keepdims``, ``np.sum(a * b)`` for a dot product of sequences,
  tuples for ``np.concatenate``;
* matrix products of sequences go through helpers that reshape C-contiguous arrays to 2-D;
* float literals are cast to the arrays' dtype (``dtype.type(0.5)``), so float32 stays float32;
* ``_loss_and_grad`` always returns the gradients of the inputs and of h(0) too (one compiled
  function serves ``loss_and_grad`` and ``vjp``).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import math
import os
import pprint
import re
import sys
from pathlib import Path

import numpy as np
import sympy as sp

from ..derive import Derivation
from ..ir.ops import coeff_and_factors
from .base import Kernel
from .numpy import (
    Backend,
    KernelGenerator,
    _runtime_source,
    _spec,
    check_namespace,
    docstring_text,
)
from .numpy_printer import Function, Line, Loop, RowPrinter, Store

__all__ = ["NumbaPrinter", "NUMBA", "generate_module", "compile_derivation", "NumbaKernel"]

# fast-math flags that keep NaN and inf semantics (no "nnan", "ninf"): a NaN in the data still
# reaches the loss and the gradients
FASTMATH = '{"reassoc", "contract", "arcp", "nsz", "afn"}'


class NumbaPrinter(RowPrinter):
    """Print IR expressions as NumPy code that Numba compiles in nopython mode."""

    printmethod = "_rnnsym_numba"

    def _number(self, c) -> str:
        # a Python float is float64 in Numba and would turn float32 arrays into float64 ones;
        # integers keep the array's dtype
        text = super()._number(c)
        if sp.sympify(c).is_Integer:
            return text
        return f"dtype.type({text})"

    def _print_OneMatrix(self, expr) -> str:
        return "1"

    def _print_ZeroMatrix(self, expr) -> str:
        return "0"

    def _print_Apply(self, expr) -> str:
        text = super()._print_Apply(expr)
        if expr.activation.numpy is None:
            # inlined scalar code may hold float literals (float64 in Numba)
            return f"{text}.astype(dtype)"
        return text

    def _print_MatMul(self, expr) -> str:
        coeff, factors = coeff_and_factors(expr)
        if (
            self.is_batch(expr)
            and len(factors) == 2
            and isinstance(factors[0], sp.Transpose)
            and factors[0].shape[0] == 1
            and factors[1].shape[1] == 1
        ):
            # uᵀ v, one number per row: Numba's np.sum has no keepdims
            self.used_helpers.add("_sum_last")
            u, v = factors[0].arg, factors[1]
            return self._scaled(coeff, f"_sum_last({self.paren(u)} * {self.paren(v)})")
        return super()._print_MatMul(expr)

    def _print_Concat(self, expr) -> str:
        text = super()._print_Concat(expr)
        head, tail = f"{self.module}.concatenate([", "], axis=-1)"
        if not (text.startswith(head) and text.endswith(tail)):
            raise AssertionError(f"unexpected concatenation text {text!r}")
        # Numba concatenates a tuple of arrays, not a list
        return f"{self.module}.concatenate(({text[len(head) : -len(tail)]},), axis=-1)"

    def _print_TotalLoss(self, expr) -> str:
        inner = expr.args[0]
        parts = []
        for term in inner.args if isinstance(inner, sp.MatAdd) else (inner,):
            coeff, factors = coeff_and_factors(term)
            if (
                len(factors) == 2
                and isinstance(factors[0], sp.Transpose)
                and factors[1].shape[1] == 1
                and self.is_batch(factors[0])
                and self.is_batch(factors[1])
            ):
                # Numba's np.vdot takes 1-D arrays only
                u, v = self.paren(factors[0].arg), self.paren(factors[1])
                text = f"{self.module}.sum({u} * {v})"
            else:
                text, coeff = f"{self.module}.sum({self._print(term)})", sp.S.One
            parts.append(self._scaled(coeff, text))
        out = parts[0]
        for part in parts[1:]:
            out += f" - {part[1:]}" if part.startswith("-") else f" + {part}"
        return out


# in place: the lowering writes results into kept arrays with ``out=``, which
# :func:`_positional_out` rewrites into the forms Numba compiles
NUMBA = Backend(name="numba", printer=NumbaPrinter, inplace=True)


# ----- runtime helpers, compiled with the kernel (their source is copied into the module) -----


def _sigmoid(a):
    # 1 / (1 + exp(-a)) without overflow for large |a|
    return np.exp(-np.logaddexp(a.dtype.type(0.0), -a))


def _softplus(a):
    # log(1 + exp(a)) without overflow for large a
    return np.logaddexp(a.dtype.type(0.0), a)


def _log_sigmoid(a):
    # log(1 / (1 + exp(-a))) = -softplus(-a), finite for large |a|
    return -np.logaddexp(a.dtype.type(0.0), -a)


def _rows2(a):
    # a (any leading axes, C order) as a 2-D array of rows
    a = np.ascontiguousarray(a)
    return a.reshape(-1, a.shape[-1])


def _logsumexp(a):
    # log(sum(exp(a))) over the last axis, kept as an axis of length 1, the maximum subtracted
    rows = _rows2(a)
    out = np.empty((rows.shape[0], 1), dtype=rows.dtype)
    for r in range(rows.shape[0]):
        top = rows[r].max()
        out[r, 0] = top + np.log(np.sum(np.exp(rows[r] - top)))
    return out.reshape(a.shape[:-1] + (1,))


def _softmax(a):
    # exp(a) / sum(exp(a)) over the last axis, the maximum subtracted first (no overflow)
    rows = _rows2(a)
    out = np.empty_like(rows)
    for r in range(rows.shape[0]):
        e = np.exp(rows[r] - rows[r].max())
        out[r] = e / np.sum(e)
    return out.reshape(a.shape)


def _relu(a):
    return np.maximum(a, a.dtype.type(0.0))


def _step(a):
    # Heaviside step, the derivative of relu (0 at a = 0)
    return (a > 0).astype(a.dtype)


def _mm(v, a):
    # rows of v (any leading axes) times the matrix a, as one 2-D matrix product
    return (_rows2(v) @ a).reshape(v.shape[:-1] + (a.shape[-1],))


def _zeros(like, size):
    # zeros with the leading (time, batch) axes of like and size columns
    return np.zeros(like.shape[:-1] + (size,), dtype=like.dtype)


def _rows(like, p):
    # the vector p repeated in every row of like's leading (time, batch) axes
    return np.broadcast_to(p, like.shape[:-1] + p.shape[-1:]).copy()


def _pad(g, start, total):
    # g placed at rows start.. of a zero vector of total rows (the adjoint of a slice)
    out = np.zeros(g.shape[:-1] + (total,), dtype=g.dtype)
    out[..., start : start + g.shape[-1]] = g
    return out


def _sum_outer(u, v):
    # sum over time and batch of the outer products u(t, b) v(t, b)^T: one matrix product
    return _rows2(u).T @ _rows2(v)


def _sum_rows(u):
    # sum over time and batch of the vectors u(t, b)
    return _rows2(u).sum(axis=0)


def _sum_last(a):
    # the sum over the last axis, kept as an axis of length 1
    return np.sum(a, axis=a.ndim - 1).reshape(a.shape[:-1] + (1,))


def _erf(a):
    # the error function entry by entry
    rows = np.ascontiguousarray(a)
    out = np.empty_like(rows)
    flat, into = rows.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        into[i] = math.erf(flat[i])
    return out


def _erfc(a):
    # the complementary error function 1 - erf(a), entry by entry, accurate for large a
    rows = np.ascontiguousarray(a)
    out = np.empty_like(rows)
    flat, into = rows.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        into[i] = math.erfc(flat[i])
    return out


_HELPERS = {
    "_sigmoid": _sigmoid,
    "_softplus": _softplus,
    "_log_sigmoid": _log_sigmoid,
    "_logsumexp": _logsumexp,
    "_softmax": _softmax,
    "_relu": _relu,
    "_step": _step,
    "_mm": _mm,
    "_zeros": _zeros,
    "_rows": _rows,
    "_pad": _pad,
    "_sum_outer": _sum_outer,
    "_sum_rows": _sum_rows,
    "_sum_last": _sum_last,
    "_erf": _erf,
    "_erfc": _erfc,
}
_NEEDS = {"_logsumexp": "_rows2", "_softmax": "_rows2", "_mm": "_rows2", "_sum_outer": "_rows2"}
_NEEDS["_sum_rows"] = "_rows2"


def _helpers_source(used: set[str]) -> str:
    """The compiled helpers the kernel calls, each ``@njit(cache=True)``."""
    unknown = sorted(used - set(_HELPERS))
    if unknown:
        raise AssertionError(f"no Numba runtime helper for {unknown}")
    wanted = set(used) | {_NEEDS[n] for n in used if n in _NEEDS}
    order = ["_rows2", *_HELPERS]
    pieces = []
    for name in order:
        if name in wanted:
            function = _rows2 if name == "_rows2" else _HELPERS[name]
            pieces.append("@njit(cache=True)\n" + inspect.getsource(function).rstrip())
    return "\n\n\n".join(pieces)


# ----- the statement tree, rewritten for positional arguments -----


class _Rewriter:
    """Rewrites the lowered functions' dict plumbing (unpacking, returns) into positional
    arguments and tuples. Every statement it changes is recognised by its whole text, which it
    rebuilds from the cell's names exactly as the lowering wrote it."""

    def __init__(self, gen: KernelGenerator, printer: RowPrinter):
        cell = gen.cell
        self.gen = gen
        self.printer = printer
        self.params = list(cell.params)
        self.inputs = list(cell.inputs)
        self.targets = list(cell.targets)
        self.states = list(cell.states)
        self.sizes = [str(d) for d in sorted(cell._dims)]
        # names for the initial states: user names never start with "_", the generator's own
        # "_"-names end in "_t" or are "_full"
        self.state_args = [f"_state{i}" for i in range(len(self.states))]
        first = self.inputs[0]
        self.drop = {f"{n} = {g}[{n!r}]" for g, names in self._groups() for n in names}
        self.replace = {
            f"T, B = inputs[{first!r}].shape[:2]": f"T, B = {first}.shape[:2]",
            f"dtype = inputs[{first!r}].dtype": f"dtype = {first}.dtype",
        }
        pairs = zip(self.states, self.state_args, strict=True)
        self.state_store = {f"states[{n!r}]": a for n, a in pairs}
        self.size_lines = {f"{n} = sizes[{n!r}]": n for n in self.sizes}

    def _groups(self):
        return [("params", self.params), ("inputs", self.inputs), ("targets", self.targets)]

    def used_sizes(self, function: Function) -> list[str]:
        """The sizes the function reads (the lowering leaves out the others' lines)."""
        kept = set(self.printer._kept(function.body))
        return [n for line, n in self.size_lines.items() if line in kept]

    def body(self, statements) -> list:
        out = []
        for s in statements:
            if isinstance(s, Line):
                if s.code in self.drop or s.code in self.size_lines:
                    continue
                if s.code in self.replace:
                    s = Line(self.replace[s.code], s.defines)
                else:
                    s = Line(_positional_out(s.code), s.defines)
            elif isinstance(s, Store) and s.value in self.state_store:
                s = Store(s.array, s.index, self.state_store[s.value], s.comment)
            elif isinstance(s, Loop):
                s = Loop(s.index, s.iterable, tuple(self.body(s.body)))
            out.append(s)
        return out

    def forward(self, fwd: Function) -> tuple[Function, list[str]]:
        cell = self.gen.cell
        names = [*cell.states, *cell.outputs]
        result = ", ".join(f"{n!r}: {n}" for n in names)
        body = self.body(fwd.body)
        ret = f"return {{{result}}}"
        if not isinstance(body[-1], Line) or body[-1].code != ret:
            raise AssertionError(f"unexpected end of _forward: {body[-1]!r}")
        body[-1] = Line(f"return {_tuple(names)}")
        sizes = self.used_sizes(fwd)
        args = (*self.params, *self.inputs, *self.state_args, *sizes)
        return Function(fwd.name, args, fwd.doc, tuple(body)), sizes

    def loss_and_grad(self, grad: Function) -> tuple[Function, list[str]]:
        full = self.gen.full_name
        grad_dict = ", ".join(f"{n!r}: g_{n}" for n in self.params)
        early = [f"if not {full}:", f"    return loss, {{{grad_dict}}}"]
        body = self.body(grad.body)
        codes = [s.code if isinstance(s, Line) else None for s in body]
        at = next((i for i in range(len(codes) - 1) if codes[i : i + 2] == early), None)
        if at is None:
            raise AssertionError("unexpected _loss_and_grad: no early return")
        del body[at : at + 2]
        code, self.returned = _tuple_return(body[-1])
        body[-1] = Line(code)
        sizes = self.used_sizes(grad)
        args = (*self.params, *self.inputs, *self.targets, *self.state_args, *sizes)
        doc = f"{grad.doc}\n    Also the gradients of the inputs and of h(0), for vjp()."
        return Function(grad.name, args, doc, tuple(body)), sizes


def _positional_out(code: str) -> str:
    """A call written with ``out=`` (Numba has no such keyword) as Numba compiles it: a ufunc
    takes its output as the last positional argument (``np.tanh(a, out=d)`` becomes
    ``np.tanh(a, d)``), a concatenation is assigned (``d = np.concatenate(...)``, ``d`` an
    element or slice of an array). Any other code is returned unchanged."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code  # a fragment such as "if not full:"
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr):
        return code
    call = tree.body[0].value
    if not isinstance(call, ast.Call):
        return code
    outs = [k for k in call.keywords if k.arg == "out"]
    if not outs:
        return code
    text = code.encode()

    def segment(node) -> str:
        return ast.get_source_segment(code, node)

    rest = text[call.end_col_offset :].decode()  # a trailing comment
    dest = segment(outs[0].value)
    func = segment(call.func)
    args = [segment(a) for a in call.args]
    others = [f"{k.arg}={segment(k.value)}" for k in call.keywords if k.arg != "out"]
    if func == "np.concatenate":
        return f"{dest} = {func}({', '.join(args + others)}){rest}"
    numpy_function = (
        isinstance(call.func, ast.Attribute)
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == "np"
    )
    if others or not numpy_function:
        raise AssertionError(f"cannot write {code!r} without out= for Numba")
    return f"{func}({', '.join([*args, dest])}){rest}"


def _tuple(items) -> str:
    items = list(items)
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


def _tuple_return(stmt) -> tuple[str, list[list[str]]]:
    """``return loss, {'W': g_W}, {'x': g_in_x}, {'h': carry_h}`` as
    ``return loss, (g_W,), (g_in_x,), (carry_h,)``, the values of each dict in its order; and
    the keys of each dict, in that order."""
    if not isinstance(stmt, Line):
        raise AssertionError(f"unexpected end of _loss_and_grad: {stmt!r}")
    tree = ast.parse(stmt.code)
    ret = tree.body[0]
    if not (isinstance(ret, ast.Return) and isinstance(ret.value, ast.Tuple)):
        raise AssertionError(f"unexpected end of _loss_and_grad: {stmt.code!r}")
    parts, keys = [], []
    for element in ret.value.elts:
        if isinstance(element, ast.Dict):
            values = [ast.get_source_segment(stmt.code, v) for v in element.values]
            parts.append(_tuple(values) if values else "()")
            keys.append([ast.literal_eval(k) for k in element.keys])
        else:
            parts.append(ast.get_source_segment(stmt.code, element))
    return "return " + ", ".join(parts), keys


# ----- the module -----


def _api_source(cell, fwd_sizes: list[str], grad_sizes: list[str], returned) -> str:
    """The plain-Python functions with the NumPy kernel's contract around the compiled ones."""
    params = [f"_c(params[{n!r}])" for n in cell.params]
    inputs = [f"_c(inputs[{n!r}])" for n in cell.inputs]
    targets = [f"_c(targets[{n!r}])" for n in cell.targets]
    fwd_sizes_args = [f"sizes[{n!r}]" for n in fwd_sizes]
    grad_sizes_args = [f"sizes[{n!r}]" for n in grad_sizes]
    fwd_args = ",\n        ".join([*params, *inputs, "*states", *fwd_sizes_args])
    grad_args = ",\n        ".join([*params, *inputs, *targets, "*states", *grad_sizes_args])
    outs = [*cell.states, *cell.outputs]
    fwd_dict = ", ".join(f"{n!r}: result[{i}]" for i, n in enumerate(outs))

    def as_dict(names, index):
        return "{" + ", ".join(f"{n!r}: {index}[{i}]" for i, n in enumerate(names)) + "}"

    # the keys in the order the compiled function returns the values
    grads = as_dict(returned[0], "grads")
    input_grads = as_dict(returned[1], "input_grads")
    h0_grads = as_dict(returned[2], "h0_grads")
    return (
        "def forward(params, inputs, h0=None):\n"
        '    """States and outputs for all t: dict of (T, B, size) arrays."""\n'
        "    sizes, dtype, states, inputs, _ = _prepare(params, inputs, None, h0, False)\n"
        "    result = _forward(\n"
        f"        {fwd_args},\n"
        "    )\n"
        f"    return {{{fwd_dict}}}\n"
        "\n\n"
        "def _run(params, inputs, targets, h0):\n"
        '    """The compiled loss, gradients and adjoints of the inputs and h(0)."""\n'
        "    sizes, dtype, states, inputs, targets = _prepare(params, inputs, targets, h0, True)\n"
        "    loss, grads, input_grads, h0_grads = _loss_and_grad(\n"
        f"        {grad_args},\n"
        "    )\n"
        "    return dtype.type(loss), grads, input_grads, h0_grads\n"
        "\n\n"
        "def loss_and_grad(params, inputs, targets, h0=None):\n"
        '    """(loss, grads): the total loss and its gradient for every parameter."""\n'
        "    loss, grads, _, _ = _run(params, inputs, targets, h0)\n"
        f"    return loss, {grads}\n"
        "\n\n"
        "def vjp(params, inputs, targets, h0=None):\n"
        '    """(loss, grads, input_grads, h0_grads): also the gradient of every input\n'
        "    sequence, (T, B, size), and of every initial state, (B, size), for composing cells.\n"
        '    """\n'
        "    loss, grads, input_grads, h0_grads = _run(params, inputs, targets, h0)\n"
        f"    return loss, {grads}, {input_grads}, {h0_grads}"
    )


_PREPARE = """_c = np.ascontiguousarray


def _prepare(params, inputs, targets, h0, with_targets):
    # (sizes, dtype, initial states, inputs, targets), the arrays C-contiguous; the checks are
    # the NumPy kernel's (in full once per shape signature), so is every error message
    sizes, T, B, dtype, states, inputs, targets = _check_arrays(
        SPEC, params, inputs, targets, h0, with_targets
    )
    return sizes, dtype, [_c(states[n]) for n in SPEC["states"]], inputs, targets"""


def _defined(source: str) -> set[str]:
    """The names a module's text defines at its top level."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _indent_doc(text: str) -> str:
    return "\n".join(("    " + line) if line else "" for line in text.split("\n"))


def generate_module(derivation: Derivation) -> str:
    """The source of the Numba kernel module of a derived cell (imports NumPy and Numba)."""
    from .._version import __version__
    from ..printing import derivation_text

    gen = KernelGenerator(derivation, NUMBA)
    fwd, grad = gen.functions()
    printer = NumbaPrinter({}, gen.batch)
    rewriter = _Rewriter(gen, printer)
    fwd, fwd_sizes = rewriter.forward(fwd)
    grad, grad_sizes = rewriter.loss_and_grad(grad)
    decorator = f"@njit(cache=True, fastmath={FASTMATH})\n"
    fwd_text, grad_text = printer.doprint(fwd), printer.doprint(grad)
    cell = gen.cell
    module_level = {"np", "njit", "SPEC", "forward", "loss_and_grad", "vjp", "math"}
    module_level |= {"_c", "_KNOWN_CALLS", "_call_key", "_prepare", "_run", "_rows2", *_HELPERS}
    check_namespace(f"{fwd_text}\n\n\n{grad_text}\n", cell, module_level)
    equations = derivation_text(gen.display)
    doc = (
        f"Numba kernel for the recurrent cell {cell.name!r}, generated by rnnsym "
        f"{__version__}.\n\nDo not edit: regenerate with rnnsym. Needs only NumPy and Numba.\n\n"
        f"The step loops of _forward and _loss_and_grad are compiled by Numba (nopython mode,\n"
        f"cached on disk next to this file); forward, loss_and_grad and vjp are plain Python\n"
        f"with the NumPy kernel's contract. The first call for each dtype compiles (seconds).\n\n"
        f"Arrays: params[name] has the parameter's shape (vectors 1-D); inputs and targets "
        f"are\n(T, B, size) arrays (time, batch, size); h0 is None (zeros), an array (B, size) "
        f"or (size,),\nor a dict of them by state name. float32 and float64 are supported.\n\n"
        f"The derivation this kernel implements. The comments below cite its lines by\n"
        f"number; a line that is one of the equations (2)-(9) of the report (after\n"
        f"Goodfellow, Bengio & Courville, Deep Learning, MIT Press 2016, ch. 10) says\n"
        f"which in brackets.\n\n"
        f"{_indent_doc(equations)}\n"
    )
    imports = "import numpy as np\nfrom numba import njit"
    if gen.helpers & {"_erf", "_erfc"}:
        imports = "import math\n\n" + imports
    checks = _runtime_source(set())  # the NumPy kernel's argument checks, every message
    clash = _defined(checks) & (_defined(_PREPARE) | set(_HELPERS) | {"_rows2"})
    if clash:
        raise AssertionError(f"the NumPy runtime now defines {sorted(clash)} too")
    parts = [
        '"""' + docstring_text(doc) + '"""',
        imports,
        "SPEC = " + pprint.pformat(_spec(cell), width=96, sort_dicts=False),
        checks,
        _PREPARE,
        _helpers_source(gen.helpers),
        _api_source(cell, fwd_sizes, grad_sizes, rewriter.returned),
        decorator + fwd_text,
        decorator + grad_text,
    ]
    text = "\n\n\n".join(parts) + "\n"
    return re.sub(r"[ \t]+\n", "\n", text)


# ----- loading -----


def cache_dir() -> Path:
    """Where compiled kernels' sources live (Numba caches next to them):
    ``$RNNSYM_NUMBA_CACHE`` if set, else ``~/.cache/rnnsym/numba``."""
    given = os.environ.get("RNNSYM_NUMBA_CACHE")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnnsym" / "numba"


def _write_once(folder: Path, name: str, source: str) -> Path:
    """``folder/name.py`` holding ``source``, written unless it already does."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    if not path.exists() or path.read_text(encoding="utf-8") != source:
        partial = folder / f"{name}.{os.getpid()}.tmp"
        partial.write_text(source, encoding="utf-8")
        os.replace(partial, path)  # atomic: a concurrent reader sees all of it or nothing
    return path


def load_source(source: str):
    """Import ``source`` from a file named by its hash in :func:`cache_dir` (Numba's on-disk
    cache needs a real file); the module is registered in ``sys.modules`` first, as Numba's
    cache requires to rebuild a function's globals."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    name = f"rnnsym_numba_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    folder = cache_dir()
    try:
        path = _write_once(folder, name, source)
    except OSError as error:
        raise OSError(
            f"cannot write the Numba kernel's source to {str(folder)!r} ({error}); set "
            f"RNNSYM_NUMBA_CACHE to a writable folder"
        ) from error
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class NumbaKernel(Kernel):
    """A generated Numba kernel, with the contract of :class:`~rnnsym.backends.base.Kernel`;
    ``source`` needs NumPy and Numba only. The first call per dtype compiles (seconds; cached
    on disk, see :func:`cache_dir`)."""

    backend = "numba"
    language = "Numba"

    def _load(self, source: str):
        return load_source(source)


def load(source: str, cell) -> NumbaKernel:
    """The kernel of ``source`` (from :func:`generate_module`) for ``cell``."""
    from ..derive import derive

    return NumbaKernel(derive(cell), source)


def compile_derivation(derivation: Derivation) -> NumbaKernel:
    """The Numba kernel of a derived cell."""
    return NumbaKernel(derivation, generate_module(derivation))
