"""Generate the JAX kernel module of a derived cell.

The lowering is NumPy's (:class:`~rnnsym.backends.numpy.KernelGenerator` with
``inplace=False``: no ``out=`` arguments, no recycled buffers); this module prints it for JAX:

* expressions as ``jnp`` code (:class:`JaxPrinter`);
* a write into one step of a sequence, ``Store(a, i, v)``, as ``a = a.at[i].set(v)``;
* each loop over t as a ``jax.lax.scan`` over ``jnp.arange(T)`` (the adjoint loop with
  ``reverse=True``), its body a local function of ``(carry, t)`` (:class:`JaxStatementPrinter`).

The module also holds the adjoint recurrence of :func:`rnnsym.transform.vjp_cell` (the cell
whose gradient is the vector-Jacobian product of the forward pass), and its ``forward`` is a
``jax.custom_vjp`` function whose backward pass is that generated recurrence, so ``jax.grad`` of
any loss of ``forward``'s outputs runs the derived adjoints rather than JAX's own.

The module imports JAX only (``jax``, ``jax.numpy``). Its public functions check names, shapes
and dtypes in Python (static under ``jax.jit``, so the same errors are raised while tracing),
once per shape signature, and run the rest as a ``jax.jit`` program.
"""

from __future__ import annotations

import ast
import dataclasses
import pprint
import re

from sympy import MatrixSymbol

from ..derive import Derivation, derive
from ..errors import DerivationError
from ..transform import vjp_cell
from .base import Kernel
from .numpy import (
    _HELPER_ORDER,
    SHAPE_CHECK,
    Backend,
    KernelGenerator,
    _helper_source,
    _indent_doc,
    _spec,
    check_namespace,
    docstring_text,
)
from .numpy_printer import Assign, Function, Line, Loop, RowPrinter, Store, comment_text
from .scan import generator_for

__all__ = [
    "JaxPrinter",
    "JaxStatementPrinter",
    "JAX",
    "loop_carry",
    "generate_module",
    "compile_derivation",
    "load",
    "JaxKernel",
]


class JaxPrinter(RowPrinter):
    """Print IR expressions as ``jax.numpy`` code (NumPy's names under ``jnp``: every array
    function the lowering uses, ``tanh``, ``exp``, ``log``, ``vdot``, ``concatenate``, ``sum``,
    ``outer``, ``zeros_like``, ``empty``, is spelled the same in ``jax.numpy``)."""

    module = "jnp"


_ASSIGNED = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:[-+*/@]|//|\*\*)?=(?!=)")
_RANGE = re.compile(r"^range\((?P<stop>[^,()]+)\)$")
_REVERSED_RANGE = re.compile(r"^range\((?P<stop>[^,()]+?) - 1, -1, -1\)$")


def _line_targets(code: str) -> list[str]:
    """The names a code line binds (``x = ...``, ``x += ...``, ``a, b = ...``); an error for a
    write into an array in place (``x[i] = ...``), which JAX arrays do not support."""
    try:
        tree = ast.parse(code.strip())
    except SyntaxError:  # a fragment such as "if not full:" or its indented return
        match = _ASSIGNED.match(code)
        return [match.group(1)] if match else []
    names = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Subscript) and isinstance(leaf.ctx, ast.Store):
                    raise DerivationError(
                        f"internal error: the JAX kernel cannot write into an array in place: "
                        f"{code.strip()!r}"
                    )
                if isinstance(leaf, ast.Name) and isinstance(leaf.ctx, ast.Store):
                    names.append(leaf.id)
    return names


def assigned_names(statements) -> list[str]:
    """The names ``statements`` bind, in the order of their first binding: assignment targets,
    arrays stored into, names defined or updated (``x += y``) by code lines; loops included."""
    names: list[str] = []
    for stmt in statements:
        if isinstance(stmt, Assign):
            found = [stmt.target]
        elif isinstance(stmt, Store):
            found = [stmt.array]
        elif isinstance(stmt, Line):
            found = ([stmt.defines] if stmt.defines else []) + _line_targets(stmt.code)
        elif isinstance(stmt, Loop):
            found = assigned_names(stmt.body)
        else:
            found = []
        names.extend(n for n in found if n not in names)
    return names


def loop_carry(loop: Loop, bound: set[str]) -> list[str]:
    """The carry of ``loop`` as a ``lax.scan``: every name its body binds that was bound before
    the loop (``bound``), in the order the body first binds them.

    Those are the values one step hands to the next and the loop hands to the code after it:
    the sequences written step by step (``h_all``, ``d0_seq``, ``g_h``: a ``Store`` rebinds the
    array) and the running adjoints (``carry_h``). Every other name the body binds is local to
    one step (``h_t``, ``g_h_t``, ``d0``) and must not be read after the loop; in a scan it no
    longer exists there (:class:`JaxStatementPrinter` checks this).
    """
    return [n for n in assigned_names(loop.body) if n in bound]


def _names_in(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_]\w*", re.sub(r"#.*$", "", text, flags=re.MULTILINE)))


class JaxStatementPrinter(JaxPrinter):
    """Print the lowered statements as JAX code: ``Store`` as a functional update, each
    ``Loop`` as a ``jax.lax.scan`` whose carry is :func:`loop_carry`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._bound: set[str] = set()  # the names bound so far in the function being printed
        self._after: list = []  # the statements after the one being printed, for the checks
        self._loops = 0  # the loops printed so far in this function: names their bodies

    def _print_Store(self, stmt: Store) -> str:
        tail = f"  # {comment_text(stmt.comment)}" if stmt.comment else ""
        return f"{stmt.array} = {stmt.array}.at[{stmt.index}].set({stmt.value}){tail}"

    def _print_Loop(self, stmt: Loop) -> str:
        if match := _REVERSED_RANGE.match(stmt.iterable):
            reverse = True
        elif match := _RANGE.match(stmt.iterable):
            reverse = False
        else:
            raise DerivationError(
                f"internal error: the JAX kernel prints loops over range(T) and "
                f"range(T - 1, -1, -1), not over {stmt.iterable}"
            )
        carry = loop_carry(stmt, self._bound)
        local = [n for n in assigned_names(stmt.body) if n not in carry]
        leaked = self._read_before_bound(local, self._after)
        if leaked:
            raise DerivationError(
                f"internal error: the JAX kernel's loop over {stmt.index} binds {leaked!r} "
                f"for one step only, but the code after the loop reads it"
            )
        name = f"_step{self._loops}"
        self._loops += 1
        outer = set(self._bound)
        self._bound = outer | {stmt.index, *carry}
        try:
            body = self._block(stmt.body)
        finally:
            self._bound = outer
        if not carry:  # the loop changes nothing that outlives it
            return f"# the loop over {stmt.index} has no effect and is left out"
        packed = f"({carry[0]},)" if len(carry) == 1 else f"({', '.join(carry)})"
        lines = [f"def {name}(carry, {stmt.index}):", f"    {packed} = carry"]
        lines += [("    " + line) if line else line for line in body.splitlines()]
        lines.append(f"    return {packed}, None")
        order = ", reverse=True" if reverse else ""
        direction = "backwards in time" if reverse else "forwards in time"
        lines.append(
            f"{packed} = jax.lax.scan({name}, {packed}, jnp.arange({match.group('stop')})"
            f"{order})[0]  # {direction}"
        )
        return "\n".join(lines)

    def _block(self, statements) -> str:
        """Print a sequence of statements, tracking the names bound before each loop."""
        kept = self._kept_statements(statements)
        texts = []
        for i, stmt in enumerate(kept):
            outer_after = self._after
            self._after = [*kept[i + 1 :], *outer_after]
            try:
                texts.append(self._print(stmt))
            finally:
                self._after = outer_after
            self._bound |= set(assigned_names([stmt]))
        return "\n".join(texts)

    def _read_before_bound(self, names, statements) -> str | None:
        """The first of ``names`` that ``statements`` read before binding it anew, if any."""
        pending = set(names)
        for stmt in statements:
            if isinstance(stmt, Assign):
                value = stmt.value if isinstance(stmt.value, str) else self._print(stmt.value)
                reads, binds = _names_in(value), {stmt.target}
            elif isinstance(stmt, Line) and (m := re.match(r"^(\w+) = (.*)$", stmt.code)):
                reads, binds = _names_in(m.group(2)), {m.group(1)}
            else:  # a store, an update in place, a loop, a return: everything it names
                reads, binds = _names_in(self._plain(stmt)), set()
            if pending & reads:
                return sorted(pending & reads)[0]
            pending -= binds
        return None

    def _plain(self, stmt) -> str:
        """Code-like text of a statement, only for finding which names it reads."""
        if isinstance(stmt, Loop):
            return "\n".join(self._plain(s) for s in stmt.body)
        if isinstance(stmt, Store):
            return f"{stmt.array}[{stmt.index}] = {stmt.value}"
        return RowPrinter._print(self, stmt)

    def _kept_statements(self, statements) -> list:
        """The statements, without the optional lines whose name nothing later reads (as
        :meth:`RowPrinter._kept` does for the printed text)."""
        plain = [self._plain(s) for s in statements]
        kept = []
        for i, stmt in enumerate(statements):
            if isinstance(stmt, Line) and stmt.defines:
                if stmt.defines not in _names_in("\n".join(plain[i + 1 :])):
                    continue
            kept.append(stmt)
        return kept

    def _print_Function(self, stmt: Function) -> str:
        self._bound = {a.split("=")[0] for a in stmt.args}
        self._after = []
        self._loops = 0
        body = self._block(stmt.body)
        doc = f'"""{stmt.doc}"""'
        lines = [doc] + body.splitlines()
        indented = "\n".join(("    " + line) if line else line for line in lines)
        return f"def {stmt.name}({', '.join(stmt.args)}):\n{indented}"


JAX = Backend(name="jax", printer=JaxPrinter, inplace=False)


# ----- the runtime: jnp versions of the NumPy kernel's helpers -----

_JAX_HELPERS = {
    "_sigmoid": """
def _sigmoid(a):
    # 1 / (1 + exp(-a)) without overflow for large |a|
    return jnp.exp(-jnp.logaddexp(0.0, -a))""",
    "_softplus": """
def _softplus(a):
    # log(1 + exp(a)) without overflow for large a
    return jnp.logaddexp(0.0, a)""",
    "_log_sigmoid": """
def _log_sigmoid(a):
    # log(1 / (1 + exp(-a))) = -softplus(-a), finite for large |a|
    return -jnp.logaddexp(0.0, -a)""",
    "_logsumexp": """
def _logsumexp(a):
    # log(sum(exp(a))) over the last axis, the maximum subtracted first (no overflow)
    top = jax.lax.stop_gradient(jnp.max(a, axis=-1, keepdims=True))
    return top + jnp.log(jnp.sum(jnp.exp(a - top), axis=-1, keepdims=True))""",
    "_softmax": """
def _softmax(a):
    # exp(a) / sum(exp(a)) over the last axis, the maximum subtracted first (no overflow)
    e = jnp.exp(a - jax.lax.stop_gradient(jnp.max(a, axis=-1, keepdims=True)))
    return e / jnp.sum(e, axis=-1, keepdims=True)""",
    "_relu": """
def _relu(a):
    return jnp.maximum(a, 0.0)""",
    "_step": """
def _step(a):
    # Heaviside step, the derivative of relu (0 at a = 0)
    return (a > 0).astype(a.dtype)""",
    "_mm": """
def _mm(v, a):
    # rows of v (any leading axes) times the matrix a, as one 2-D matrix product
    return (v.reshape(-1, v.shape[-1]) @ a).reshape(v.shape[:-1] + (a.shape[-1],))""",
    "_zeros": """
def _zeros(like, size):
    # zeros with the leading (time, batch) axes of like and size columns
    return jnp.zeros(like.shape[:-1] + (size,), dtype=like.dtype)""",
    "_rows": """
def _rows(like, p):
    # the vector p repeated in every row of like's leading (time, batch) axes, to be stacked
    # with per-step data
    return jnp.broadcast_to(p, like.shape[:-1] + p.shape[-1:])""",
    "_pad": """
def _pad(g, start, total):
    # g placed at rows start.. of a zero vector of total rows (the adjoint of a slice)
    widths = [(0, 0)] * (g.ndim - 1) + [(start, total - start - g.shape[-1])]
    return jnp.pad(g, widths)""",
    "_sum_outer": """
def _sum_outer(u, v):
    # sum over time and batch of the outer products u(t, b) v(t, b)^T: one matrix product
    return u.reshape(-1, u.shape[-1]).T @ v.reshape(-1, v.shape[-1])""",
    "_sum_rows": """
def _sum_rows(u):
    # sum over time and batch of the vectors u(t, b)
    return u.reshape(-1, u.shape[-1]).sum(axis=0)""",
    "_linear_scan": """
def _linear_scan(a, b, h0, out):
    # h(t) = a(t) h(t-1) + b(t) for t = 1..T from h(0) = h0, as (T + 1, B, size) like out: on
    # a GPU or TPU jax.lax.associative_scan over the pairs (a(t), b(t)) under the associative
    # composition of affine maps (a1, b1) . (a2, b2) = (a2 a1, a2 b1 + b2), log2(T) deep; on a
    # CPU, where XLA runs a loop step in about a microsecond and the log-depth passes are bound
    # by memory, the same recurrence as a jax.lax.scan over t
    shape = (out.shape[0] - 1,) + out.shape[1:]
    a = jnp.broadcast_to(a, shape).astype(out.dtype)
    b = jnp.broadcast_to(b, shape).astype(out.dtype)
    h0 = jnp.broadcast_to(h0, shape[1:]).astype(out.dtype)
    if jax.default_backend() == "cpu":

        def step(h, pair):
            h = pair[0] * h + pair[1]
            return h, h

        h = jax.lax.scan(step, h0, (a, b))[1]
    else:

        def compose(first, then):
            return then[0] * first[0], then[0] * first[1] + then[1]

        h = jax.lax.associative_scan(compose, (a, b.at[0].add(a[0] * h0)))[1]
    return jnp.concatenate([h0[None], h])""",
    "_linear_scan_reverse": """
def _linear_scan_reverse(a, c, out):
    # g(t) = c(t) + a(t + 1) g(t + 1), g(T) = c(T): the adjoint recurrence of
    # h(t) = a(t) h(t-1) + b(t), the same scan run from the last step (as _linear_scan: an
    # associative scan on a GPU or TPU, a jax.lax.scan on a CPU)
    a = jnp.broadcast_to(a, c.shape).astype(c.dtype)
    following = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])])  # a(t + 1), 0 after the end
    if jax.default_backend() == "cpu":

        def step(g, pair):
            g = pair[0] * g + pair[1]
            return g, g

        return jax.lax.scan(step, jnp.zeros_like(c[0]), (following, c), reverse=True)[1]

    def compose(first, then):
        return then[0] * first[0], then[0] * first[1] + then[1]

    return jax.lax.associative_scan(compose, (following, c), reverse=True)[1]""",
    "_erf": """
def _erf(a):
    # the error function entry by entry
    return jax.scipy.special.erf(a)""",
    "_erfc": """
def _erfc(a):
    # the complementary error function 1 - erf(a), entry by entry, accurate for large a
    return jax.scipy.special.erfc(a)""",
}

# the argument check: names, shapes and dtypes only, all static under jax.jit; class indices
# are range-checked where their values are known (outside jit)
_CHECK = '''
def _require_array(label, array):
    # a jax or NumPy array, or anything with a shape and a dtype (as jit's tracers have)
    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        raise ValueError(f"{label} must be a jax or NumPy array, got {type(array).__name__}")


def _is_integer(array):
    return jnp.issubdtype(array.dtype, jnp.integer)


def _is_float(array):
    return array.dtype in (jnp.float32, jnp.float64)


def _signature(group):
    # what the checks read of a dict of arrays (or of h0): names, types, shapes, dtypes
    if not isinstance(group, dict):
        group = {None: group}
    return tuple(
        (name, type(a).__name__, getattr(a, "shape", None), str(getattr(a, "dtype", None)))
        for name, a in group.items()
    )


_CHECKED = {}  # shape signature -> (T, B, sizes): each signature is checked once


def _check_arrays(spec, params, inputs, targets, initial, with_targets=True):
    """(T, B, sizes), sizes a sorted tuple of (name, value): the names, shapes and dtypes of
    the arrays checked against spec (static under jax.jit: no value is read)."""
    sizes, T, B, _ = _check_shapes(spec, params, inputs, targets, initial, with_targets)
    return T, B, tuple(sorted(sizes.items()))


def _checked(params, inputs, targets, initial, with_targets=True):
    """_check_arrays, once per shape signature; the class indices' values on every call."""
    groups = (params, inputs, targets if with_targets else None, initial)
    if not all(isinstance(g, dict) or g is None for g in groups[:3]):
        return _check_arrays(SPEC, params, inputs, targets, initial, with_targets)
    key = (with_targets, *(_signature(g) for g in groups))
    dims = _CHECKED.get(key)
    if dims is None:
        dims = _check_arrays(SPEC, params, inputs, targets, initial, with_targets)
        if len(_CHECKED) > 256:
            _CHECKED.clear()
        _CHECKED[key] = dims
    if with_targets:
        sizes = dict(dims[2])
        for name in SPEC.get("classes", ()):
            size = _resolve(SPEC["targets"][name][0], sizes)
            index = targets[name]
            try:
                bad = bool(jnp.any((index < 0) | (index >= size)))
            except jax.errors.ConcretizationTypeError:
                bad = False  # traced (under jit): the values are not known here
            if bad:
                raise ValueError(
                    f"targets[{name!r}] holds {int(jnp.min(index))}..{int(jnp.max(index))}, "
                    f"not class indices; expected 0..{size - 1}"
                )
    return dims


def _prepare(dims, params, inputs, targets, initial, with_targets=True):
    """The checked arrays ready for the kernel, as jax arrays: h0 (B, size) per state (zeros
    where not given), context inputs (B, size), class indices 1-of-K rows, an input fed back
    from a target filled with y(t-1), y(0) = 0."""
    T, B, sizes = dims[0], dims[1], dict(dims[2])
    params = {name: jnp.asarray(a) for name, a in params.items()}
    inputs = {name: jnp.asarray(a) for name, a in inputs.items()}
    dtype = next(iter(params.values()), next(iter(inputs.values()))).dtype
    for name in SPEC.get("context", ()):
        if name in inputs:
            inputs[name] = jnp.broadcast_to(inputs[name], (B, inputs[name].shape[-1]))
    if with_targets:
        targets = {name: jnp.asarray(a) for name, a in targets.items()}
        for name in SPEC.get("classes", ()):
            size = _resolve(SPEC["targets"][name][0], sizes)
            targets[name] = jnp.eye(size, dtype=dtype)[targets[name]]
        for name, target in SPEC.get("fed_back", {}).items():
            if name not in inputs:
                y = targets[target]
                inputs[name] = jnp.concatenate([jnp.zeros_like(y[:1]), y[:-1]])
    if not isinstance(initial, dict):
        initial = {} if initial is None else {next(iter(SPEC["states"])): initial}
    states = {}
    for name, dims_ in SPEC["states"].items():
        size = _resolve(dims_[0], sizes)
        value = initial.get(name)
        if value is None:
            states[name] = jnp.zeros((B, size), dtype=dtype)
        else:
            states[name] = jnp.broadcast_to(jnp.asarray(value), (B, size))
    return params, states, inputs, targets'''


def _runtime_source(used: set[str]) -> str:
    """The jnp helpers the module needs and the argument check."""
    missing = sorted(used - set(_JAX_HELPERS))
    if missing:
        raise DerivationError(
            f"internal error: the JAX kernel has no jnp version of the helper {missing[0]}"
        )
    pieces = [_JAX_HELPERS[n].strip() for n in _HELPER_ORDER if n in used]
    pieces.append(_CHECK.strip())
    pieces.extend(_helper_source(n) for n in SHAPE_CHECK)  # the NumPy kernel's, no NumPy in them
    return "\n\n\n".join(pieces)


def _api(cell, seeded: bool) -> str:
    """The public functions: the argument check, then the generated ones."""
    context = list(cell.context_inputs)
    if context:
        full_inputs = (
            "def _full_inputs(inputs):\n"
            '    """The inputs with each context input (B, size) repeated over time."""\n'
            f"    T = inputs[{next(n for n in cell.inputs if n not in context)!r}].shape[0]\n"
            "    inputs = dict(inputs)\n"
            f"    for name in {context!r}:\n"
            "        inputs[name] = jnp.broadcast_to(inputs[name], (T,) + inputs[name].shape)\n"
            "    return inputs\n\n\n"
        )
        full = "_full_inputs(inputs)"
    else:
        full_inputs, full = "", "inputs"
    impl = (
        "def _forward_impl(sizes, params, inputs, states):\n"
        f"    return _forward(params, {full}, states, dict(sizes))\n\n\n"
    )
    if seeded:
        impl += (
            "def _forward_fwd(sizes, params, inputs, states):\n"
            "    # residuals: the arguments; the backward pass recomputes the states\n"
            f"    return _forward(params, {full}, states, dict(sizes)), (params, inputs, states)\n"
            "\n\n"
            "def _forward_bwd(sizes, residuals, cotangents):\n"
            '    """The generated adjoint recurrence, seeded with the cotangents of the states\n'
            '    and outputs (the loss sum_t <d_q(t)|q(t)> over every state and output q)."""\n'
            "    params, inputs, states = residuals\n"
            "    seeds = {_SEEDS[name]: jnp.asarray(cotangents[name]) for name in _SEEDS}\n"
            "    _, grads, input_grads, state_grads = _seeded_loss_and_grad(\n"
            f"        params, {full}, seeds, states, dict(sizes), True\n"
            "    )\n"
            "    return grads, input_grads, state_grads\n\n\n"
            "# forward as a jax.custom_vjp function: jax.grad runs the generated backward pass\n"
            "_differentiable_forward = jax.custom_vjp(_forward_impl, nondiff_argnums=(0,))\n"
            "_differentiable_forward.defvjp(_forward_fwd, _forward_bwd)\n"
        )
        compiled_forward = "_differentiable_forward"
        note = "differentiable by jax.grad\n    through the generated adjoint recurrence"
    else:
        compiled_forward = "_forward_impl"
        note = "differentiated by JAX's own\n    autodiff through the scans"
    return (
        full_inputs + impl + "\n\ndef _forward_entry(dims, params, inputs, h0):\n"
        "    params, states, inputs, _ = _prepare(dims, params, inputs, None, h0, False)\n"
        f"    return {compiled_forward}(dims[2], params, inputs, states)\n\n\n"
        "def _loss_and_grad_entry(dims, full, params, inputs, targets, h0):\n"
        "    params, states, inputs, targets = _prepare(dims, params, inputs, targets, h0)\n"
        f"    return _loss_and_grad(params, {full}, targets, states, dict(dims[2]), full)\n\n\n"
        "# compiled once per shape signature (dims = (T, B, sizes) is static); the arguments are\n"
        "# checked before, in Python\n"
        "_forward_compiled = jax.jit(_forward_entry, static_argnums=(0,))\n"
        "_loss_and_grad_compiled = jax.jit(_loss_and_grad_entry, static_argnums=(0, 1))\n\n\n"
        "def forward(params, inputs, h0=None):\n"
        f'    """States and outputs for all t: dict of (T, B, size) arrays; {note}."""\n'
        "    dims = _checked(params, inputs, None, h0, False)\n"
        "    out = _forward_compiled(dims, params, inputs, h0)\n"
        "    # in the NumPy kernel's order (a compiled function returns its dict sorted)\n"
        "    return {name: out[name] for name in [*SPEC['states'], *SPEC['outputs']]}\n\n\n"
        "def loss_and_grad(params, inputs, targets, h0=None):\n"
        '    """(loss, grads): the total loss and its gradient for every parameter."""\n'
        "    dims = _checked(params, inputs, targets, h0)\n"
        "    return _loss_and_grad_compiled(dims, False, params, inputs, targets, h0)\n\n\n"
        "def vjp(params, inputs, targets, h0=None):\n"
        '    """(loss, grads, input_grads, h0_grads): also the gradient of every input\n'
        "    sequence, (T, B, size), and of every initial state, (B, size), for composing cells.\n"
        '    """\n'
        "    dims = _checked(params, inputs, targets, h0)\n"
        "    return _loss_and_grad_compiled(dims, True, params, inputs, targets, h0)"
    )


_NUMBERS = r"\(\d+\)(?:-\(\d+\))?(?:, \(\d+\)(?:-\(\d+\))?)*"
_CITATION = re.compile(rf"(?:, )?{_NUMBERS} above(?:, report eqs?\. {_NUMBERS})?(?:, )?")


def _without_citations(code: str) -> str:
    """``code`` with the comments' citations of derivation lines removed: the seeded function's
    comments would cite the lines of the vjp cell's derivation, which the module does not hold.
    Generated statements hold no '#' in strings, so a line's comment starts at its first '#'."""

    def clean(match: re.Match) -> str:
        # "x, (5) above, y" -> "x, y"; "x, (5) above: y" -> "x: y"; "(5) above" -> ""
        text = match.group(0)
        return ", " if text.startswith(", ") and text.endswith(", ") else ""

    lines = []
    for line in code.split("\n"):
        code_part, hash_, comment = line.partition("#")
        if hash_:
            comment = _CITATION.sub(clean, comment).rstrip()
            if not comment.strip():
                line = code_part.rstrip()
            else:
                line = f"{code_part}#{comment}"
        lines.append(line)
    return "\n".join(lines)


def _seeded(cell, schedule: str = "sequential") -> tuple[Function, dict, KernelGenerator] | None:
    """The lowered loss-and-gradient function of vjp_cell(cell), or None where its gradients
    are not the VJP ``forward`` needs (an input fed back from a target is a target there) or it
    has none (a parameter read only by the loss); ``forward`` is then differentiated by JAX."""
    if cell.fed_back or not cell.states and not cell.outputs:
        return None
    read = set()
    for term in [*cell.updates.values(), *cell.definitions.values(), *cell.output_defs.values()]:
        read |= term.expr.atoms(MatrixSymbol)
    if any(p.symbol not in read for p in cell.params.values()):
        return None  # a parameter only the loss reads: vjp_cell has no use for it
    cell2, seeds = vjp_cell(cell)
    gen2 = generator_for(schedule)(derive(cell2), JAX)
    _, grad2 = gen2.functions()
    return grad2, seeds, gen2


def generate_module(derivation: Derivation, schedule: str = "sequential") -> str:
    """The source of the JAX kernel module of a derived cell (deterministic text);
    ``schedule="scan"`` (every state linear) computes the recurrences by
    ``jax.lax.associative_scan``."""
    from .._version import __version__
    from ..printing import derivation_text

    gen = generator_for(schedule)(derivation, JAX)
    fwd, grad = gen.functions()
    cell = gen.cell
    printer = JaxStatementPrinter({}, gen.batch)
    fwd_text, grad_text = printer.doprint(fwd), printer.doprint(grad)
    helpers = set(gen.helpers)
    module_level = {"jax", "jnp", "SPEC", "forward", "loss_and_grad", "vjp", *_HELPER_ORDER}
    check_namespace(f"{fwd_text}\n\n\n{grad_text}\n", cell, module_level)
    seeded = _seeded(cell, schedule)
    seeded_parts = []
    if seeded is not None:
        grad2, seeds, gen2 = seeded
        text = JaxStatementPrinter({}, gen2.batch).doprint(grad2)
        check_namespace(text + "\n", gen2.cell, module_level)
        renamed = dataclasses.replace(
            grad2,
            name="_seeded_loss_and_grad",
            doc="The vector-Jacobian product of _forward: the loss and gradients of the\n    "
            "cell whose loss is sum_t <d_q(t)|q(t)> over every state and output q.",
        )
        seeded_parts = [
            "# the adjoint recurrence of forward's backward pass: targets[_SEEDS[q]] is the\n"
            "# cotangent of the state or output q\n"
            "_SEEDS = " + pprint.pformat(seeds, width=96, sort_dicts=False),
            _without_citations(JaxStatementPrinter({}, gen2.batch).doprint(renamed)),
        ]
        helpers |= gen2.helpers
    equations = derivation_text(gen.display)
    doc = (
        f"JAX kernel for the recurrent cell {cell.name!r}, generated by rnnsym "
        f"{__version__}.\n\nDo not edit: regenerate with rnnsym. Needs only JAX.\n\n"
        f"Arrays: params[name] has the parameter's shape (vectors 1-D); inputs and targets "
        f"are\n(T, B, size) arrays (time, batch, size); h0 is None (zeros), an array (B, size) "
        f"or (size,),\nor a dict of them by state name. float32 and float64 are supported "
        f"(float64 needs\njax.config.update('jax_enable_x64', True)). Loops over t are "
        f"jax.lax.scan. Each public\nfunction checks the names, shapes and dtypes of its "
        f"arguments in Python (once per shape\nsignature), then runs a program compiled by "
        f"jax.jit (once per shape signature);\nit is itself jittable and vmappable.\n\n"
        + (
            "forward is a jax.custom_vjp function: jax.grad of any loss of its outputs runs\n"
            "the generated adjoint recurrence (_seeded_loss_and_grad).\n\n"
            if seeded is not None
            else "jax.grad of forward's outputs goes through JAX's own autodiff.\n\n"
        )
        + "The derivation this kernel implements. The comments below cite its lines by\n"
        "number; a line that is one of the equations (2)-(9) of the report (after\n"
        "Goodfellow, Bengio & Courville, Deep Learning, MIT Press 2016, ch. 10) says\n"
        f"which in brackets.\n\n{_indent_doc(equations)}\n"
    )
    parts = [
        '"""' + docstring_text(doc) + '"""',
        "import jax\nimport jax.numpy as jnp"
        + ("\nimport jax.scipy.special" if helpers & {"_erf", "_erfc"} else ""),
        "SPEC = " + pprint.pformat(_spec(cell), width=96, sort_dicts=False),
        _runtime_source(helpers),
        _api(cell, seeded is not None),
        fwd_text,
        grad_text,
        *seeded_parts,
    ]
    text = "\n\n\n".join(parts) + "\n"
    return re.sub(r"[ \t]+\n", "\n", text)


class JaxKernel(Kernel):
    """A generated JAX kernel, with the contract of :class:`~rnnsym.backends.base.Kernel`.

    ``forward(params, inputs, h0=None)`` returns a dict of state and output sequences
    (T, B, size) and is differentiable by ``jax.grad`` through the generated adjoint recurrence;
    ``loss_and_grad`` returns ``(loss, grads)`` and ``vjp`` also the gradients of the inputs and
    of h(0); all take and return jax arrays and are jittable. ``source`` is the module text,
    runnable with JAX alone.
    """

    backend = "jax"
    language = "JAX"


def load(source: str, cell) -> JaxKernel:
    """The kernel of ``source`` (a module from :func:`generate_module` for ``cell``)."""
    return JaxKernel(derive(cell), source)


def compile_derivation(derivation: Derivation, schedule: str = "sequential") -> JaxKernel:
    """Generate and load the JAX kernel of a derived cell."""
    return JaxKernel(derivation, generate_module(derivation, schedule))
