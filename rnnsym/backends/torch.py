"""Generate the PyTorch kernel module of a derived cell.

The lowering is NumPy's (:class:`~rnnsym.backends.numpy.KernelGenerator`) with a
:class:`TorchPrinter` and the :data:`TORCH` backend; this file adds what the module around the
two generated functions needs in torch: the runtime helpers, the argument check, and the autograd
wrappers. ``forward`` is differentiable by ``torch.autograd`` through a
``torch.autograd.Function`` whose ``backward`` is the generated adjoint recurrence of the cell
:func:`~rnnsym.transform.vjp_cell` builds (the VJP of the forward pass), never autograd through
the forward loop. The module imports only torch and runs on any device and in float32 or float64.
"""

from __future__ import annotations

import dataclasses
import pprint
import re

import sympy as sp
from sympy import MatrixSymbol, Transpose

from ..derive import Derivation, derive
from ..errors import DerivationError
from ..ir.scalar import scalar_code
from ..printing import derivation_text
from ..transform import vjp_cell
from .base import Kernel
from .numpy import (
    _HELPER_ORDER,
    SHAPE_CHECK,
    Backend,
    _helper_source,
    _indent_doc,
    _spec,
    check_namespace,
    docstring_text,
    user_names,
)
from .numpy_printer import Line, RowPrinter
from .scan import generator_for

__all__ = ["TorchPrinter", "TORCH", "TorchKernel", "generate_module", "compile_derivation", "load"]


# NumPy's names (as the printers and rnnsym.ir.scalar write them) -> torch's, where they differ
_RENAMED = {
    "np.concatenate": "torch.cat",
    "np.maximum": "_maximum",
    "np.minimum": "_minimum",
    "np.arctan2": "torch.atan2",
    "np.power": "torch.pow",
    "np.heaviside": "_heaviside",
    "np.equal": "torch.eq",  # torch.equal compares whole tensors
    "np.not_equal": "torch.ne",
}
# helpers of the torch module for NumPy functions of a user's scalar function
_SCALAR_HELPERS = ("_maximum", "_minimum", "_select", "_heaviside")


class TorchPrinter(RowPrinter):
    """Print IR expressions as torch code in the row layout of
    :class:`~rnnsym.backends.numpy_printer.RowPrinter`: tensors (..., B, size)."""

    printmethod = "_rnnsym_torch"
    module = "torch"

    @classmethod
    def function(cls, name: str) -> str:
        """torch's name of the NumPy function ``name``; a :class:`DerivationError` where torch
        has none that rnnsym knows to be the same function."""
        import torch

        if name in _RENAMED:
            return _RENAMED[name]
        if not name.startswith("np."):
            return name
        short = name[3:]
        value = getattr(torch, short, None)
        if not (callable(value) or isinstance(value, float)):  # a function, or torch.pi
            raise DerivationError(f"{name} has no torch equivalent that rnnsym can print")
        return f"torch.{short}"

    def _print_Apply(self, expr) -> str:
        act = expr.activation
        if act.numpy is not None:
            text = super()._print_Apply(expr)
        else:  # a user's function: its scalar body printed entry by entry, as NumPy's printer
            d = sp.Dummy("d", real=True)
            body = act.scalar(d)
            # numbers such as sqrt(2) or pi as float literals: torch.sqrt takes tensors only
            body = body.xreplace(
                {
                    e: sp.Float(e.evalf(20), 20)
                    for e in sp.preorder_traversal(body)
                    if isinstance(e, sp.Expr) and e.is_number and not e.is_Rational
                }
            )
            argument = f"({self._print(expr.arg)})"
            code, helpers = scalar_code(body, d, argument)
            self.used_helpers |= helpers
            if "np.select(" in code:  # a piecewise function: in the argument's dtype and device
                code = code.replace("np.select(", f"_select({argument}, ")
            code = re.sub(r"\bnp\.(\w+)", lambda m: self.function(m.group(0)), code)
            text = f"({code})"
        self.used_helpers |= {h for h in _SCALAR_HELPERS if f"{h}(" in text}
        return text

    def _print_MatMul(self, expr) -> str:
        # uᵀ v per row: NumPy's keyword names spelled as torch's
        return (
            super()
            ._print_MatMul(expr)
            .replace(", axis=-1, keepdims=True)", ", dim=-1, keepdim=True)")
        )

    def _print_Concat(self, expr) -> str:
        text = super()._print_Concat(expr)
        return text.replace("torch.concatenate([", "torch.cat([").replace(
            "], axis=-1)", "], dim=-1)"
        )

    def _literal(self, expr) -> str:
        # a vector parameter is a 1-D tensor: its transpose is itself (torch warns on .T)
        if (
            isinstance(expr, Transpose)
            and isinstance(expr.arg, MatrixSymbol)
            and 1 in expr.arg.shape
        ):
            return self._print(expr.arg)
        return super()._literal(expr)

    def _print_TotalLoss(self, expr) -> str:
        text = super()._print_TotalLoss(expr)
        # Σ over t and batch of uᵀ v: NumPy's vdot of the flattened sequences
        return _replace_calls(text, "torch.vdot", lambda a, b: f"torch.sum({a} * {b})")


def _replace_calls(text: str, name: str, rewrite) -> str:
    """Every ``name(a, b)`` in ``text`` replaced by ``rewrite(a, b)`` (brackets matched)."""
    out, i = [], 0
    while (j := text.find(f"{name}(", i)) >= 0:
        out.append(text[i:j])
        k, depth, args, start = j + len(name) + 1, 1, [], j + len(name) + 1
        while depth:
            c = text[k]
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            elif c == "," and depth == 1:
                args.append(text[start:k].strip())
                start = k + 1
            k += 1
        args.append(text[start : k - 1].strip())
        out.append(rewrite(*args))
        i = k
    out.append(text[i:])
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class TorchBackend(Backend):
    """torch's allocation text: on the inputs' device (the name ``device`` in the function,
    ``_device`` where the cell has a quantity called device)."""

    device: str = "device"

    def empty(self, shape: str) -> str:
        return f"torch.empty({shape}, dtype=dtype, device={self.device})"

    def zeros(self, shape: str) -> str:
        return f"torch.zeros({shape}, dtype=dtype, device={self.device})"

    def copy(self, array: str) -> str:
        return f"{array}.clone()"


TORCH = TorchBackend(name="torch", printer=TorchPrinter, inplace=True)


# ----- the runtime: helpers copied into every generated module, as torch source -----

_HELPERS = {
    "_sigmoid": """
def _sigmoid(a):
    return torch.sigmoid(a)""",
    "_softplus": """
def _softplus(a):
    # log(1 + exp(a)) without overflow for large a (exact, unlike F.softplus's threshold)
    return torch.logaddexp(a, torch.zeros((), dtype=a.dtype, device=a.device))""",
    "_log_sigmoid": """
def _log_sigmoid(a):
    # log(1 / (1 + exp(-a))) = -softplus(-a), finite for large |a|
    return -torch.logaddexp(-a, torch.zeros((), dtype=a.dtype, device=a.device))""",
    "_logsumexp": """
def _logsumexp(a):
    return torch.logsumexp(a, dim=-1, keepdim=True)""",
    "_softmax": """
def _softmax(a):
    return torch.softmax(a, dim=-1)""",
    "_relu": """
def _relu(a):
    return torch.relu(a)""",
    "_step": """
def _step(a):
    # Heaviside step, the derivative of relu (0 at a = 0)
    return (a > 0).to(a.dtype)""",
    "_mm": """
def _mm(v, a, out=None):
    # rows of v (any leading axes) times the matrix a, as one 2-D matrix product
    rows = v.reshape(-1, v.shape[-1])
    if out is None:
        return (rows @ a).reshape(v.shape[:-1] + (a.shape[-1],))
    torch.matmul(rows, a, out=out.view(-1, a.shape[-1]))
    return out""",
    "_zeros": """
def _zeros(like, size):
    # zeros with the leading (time, batch) axes of like and size columns
    return torch.zeros(like.shape[:-1] + (size,), dtype=like.dtype, device=like.device)""",
    "_rows": """
def _rows(like, p):
    # the vector p repeated in every row of like's leading (time, batch) axes
    return p.expand(like.shape[:-1] + p.shape[-1:])""",
    "_pad": """
def _pad(g, start, total):
    # g placed at rows start.. of a zero vector of total rows (the adjoint of a slice)
    out = torch.zeros(g.shape[:-1] + (total,), dtype=g.dtype, device=g.device)
    out[..., start : start + g.shape[-1]] = g
    return out""",
    "_sum_outer": """
def _sum_outer(u, v):
    # sum over time and batch of the outer products u(t, b) v(t, b)^T: one matrix product
    return u.reshape(-1, u.shape[-1]).T @ v.reshape(-1, v.shape[-1])""",
    "_sum_rows": """
def _sum_rows(u):
    # sum over time and batch of the vectors u(t, b)
    return u.reshape(-1, u.shape[-1]).sum(dim=0)""",
    "_linear_scan": """
def _linear_scan(a, b, h0, out):
    # out[0] = h0, out[t + 1] = a[t] * out[t] + b[t]: the linear recurrence
    # h(t) = a(t) h(t-1) + b(t) as the NumPy kernel's two-level scan (blocks of about sqrt(T)
    # steps: each block scanned from zero, all blocks at once; the values entering the blocks;
    # each block again from its entering value), about 5 sqrt(T) tensor operations instead of T
    T = out.shape[0] - 1
    shape = (T,) + tuple(out.shape[1:])
    a = torch.as_tensor(a, dtype=out.dtype, device=out.device).expand(shape)
    b = torch.as_tensor(b, dtype=out.dtype, device=out.device).expand(shape)
    out[0] = h0
    size = max(1, int(T**0.5))  # steps per block
    blocks = T // size
    full = blocks * size if blocks > 1 else 0
    if full:
        split = (blocks, size) + shape[1:]
        A, Bs = a[:full].reshape(split), b[:full].reshape(split)
        H = out[1 : full + 1].view(split)
        last, product = Bs[:, 0].clone(), A[:, 0].clone()
        for j in range(1, size):
            last = torch.addcmul(Bs[:, j], A[:, j], last)
            product = product * A[:, j]
        entering = torch.empty_like(last)
        entering[0] = out[0]
        for k in range(1, blocks):
            entering[k] = torch.addcmul(last[k - 1], product[k - 1], entering[k - 1])
        H[:, 0] = torch.addcmul(Bs[:, 0], A[:, 0], entering)
        for j in range(1, size):
            H[:, j] = torch.addcmul(Bs[:, j], A[:, j], H[:, j - 1])
    for t in range(full, T):
        out[t + 1] = torch.addcmul(b[t], a[t], out[t])
    return out""",
    "_linear_scan_reverse": """
def _linear_scan_reverse(a, c, out):
    # out[t] = c[t] + a[t + 1] * out[t + 1], out[T-1] = c[T-1]: the adjoint recurrence of
    # h(t) = a(t) h(t-1) + b(t), the two-level scan of _linear_scan run from the last step
    # (torch has no reversed views: the blocks are walked backwards instead)
    T = c.shape[0]
    a = torch.as_tensor(a, dtype=c.dtype, device=c.device).expand(c.shape)
    following = torch.cat([a[1:], torch.zeros_like(a[:1])])  # a(t + 1); 0 after the end
    out[T - 1] = c[T - 1]
    size = max(1, int(T**0.5))
    blocks = (T - 1) // size
    start = T - 1 - blocks * size if blocks > 1 else T - 1  # blocks cover [start, T - 1)
    if blocks > 1:
        split = (blocks, size) + tuple(c.shape[1:])
        A = following[start : T - 1].reshape(split)
        C = c[start : T - 1].reshape(split)
        G = out[start : T - 1].view(split)
        last, product = C[:, -1].clone(), A[:, -1].clone()
        for j in range(size - 2, -1, -1):
            last = torch.addcmul(C[:, j], A[:, j], last)
            product = product * A[:, j]
        entering = torch.empty_like(last)  # the adjoint just after each block
        entering[-1] = out[T - 1]
        for k in range(blocks - 2, -1, -1):
            entering[k] = torch.addcmul(last[k + 1], product[k + 1], entering[k + 1])
        G[:, -1] = torch.addcmul(C[:, -1], A[:, -1], entering)
        for j in range(size - 2, -1, -1):
            G[:, j] = torch.addcmul(C[:, j], A[:, j], G[:, j + 1])
    for t in range(start - 1, -1, -1):
        out[t] = torch.addcmul(c[t], following[t], out[t + 1])
    return out""",
    "_erf": """
def _erf(a):
    return torch.erf(a)""",
    "_erfc": """
def _erfc(a):
    return torch.erfc(a)""",
    "_maximum": """
def _maximum(a, b):
    # NumPy's maximum: either argument may be a number
    return torch.where(a >= b, a, b)""",
    "_minimum": """
def _minimum(a, b):
    return torch.where(a <= b, a, b)""",
    "_select": """
def _select(like, conditions, choices, default):
    # NumPy's select: entry by entry the choice of the first true condition, in like's dtype
    out = torch.full_like(like, default)
    for condition, choice in reversed(list(zip(conditions, choices))):
        condition = torch.as_tensor(condition, device=like.device)
        choice = torch.as_tensor(choice, dtype=like.dtype, device=like.device)
        out = torch.where(condition, choice, out)
    return out""",
    "_heaviside": """
def _heaviside(a, at_zero):
    return torch.heaviside(a, torch.as_tensor(at_zero, dtype=a.dtype, device=a.device))""",
}
_TORCH_HELPER_ORDER = [*_HELPER_ORDER, *_SCALAR_HELPERS]

_CHECK = '''
def _require_array(label, array):
    if not isinstance(array, torch.Tensor):
        raise ValueError(f"{label} must be a torch.Tensor, got {type(array).__name__}")


def _is_integer(array):
    return not (array.is_floating_point() or array.is_complex() or array.dtype == torch.bool)


def _is_float(array):
    return array.dtype in (torch.float32, torch.float64)


def _check(params, inputs, targets, h0, with_targets=True):
    """Validate the tensors against SPEC; return (sizes, T, params, inputs, targets, states),
    each dict in SPEC's order. A context input comes back (B, size); class indices (T, B)
    become 1-of-K rows; a fed-back input missing from inputs is the target one step late, with
    y(0) = 0. Every failure raises ValueError naming the tensor, its shape or dtype and what was
    expected."""
    sizes, T, B, dtype = _check_shapes(SPEC, params, inputs, targets, h0, with_targets)
    classes = SPEC.get("classes", ())
    given = [(f"params[{n!r}]", a) for n, a in params.items()]
    given += [(f"inputs[{n!r}]", a) for n, a in inputs.items()]
    if with_targets:
        given += [(f"targets[{n!r}]", a) for n, a in targets.items() if n not in classes]
    given += [(f"h0[{n!r}]", a) for n, a in _given_states(SPEC, h0).items() if a is not None]
    first, device = given[0][0], given[0][1].device
    for label, a in given:
        if a.device != device:
            raise ValueError(
                f"{label} is on device {a.device}, but {first} is on {device}; all tensors "
                f"must be on one device"
            )
    params = {name: params[name] for name in SPEC["params"]}
    context = SPEC.get("context", ())
    given_inputs, inputs = inputs, {}
    for name, dims in SPEC["inputs"].items():
        if name in context:
            inputs[name] = given_inputs[name].expand(B, _resolve(dims[0], sizes))
        elif name in given_inputs:
            inputs[name] = given_inputs[name]
    if with_targets:
        given_targets, targets = targets, {}
        for name, dims in SPEC["targets"].items():
            target = given_targets[name]
            if name in classes:
                size = _resolve(dims[0], sizes)
                bad = ((target < 0) | (target >= size)).nonzero()
                if len(bad):
                    t, b = (int(i) for i in bad[0])
                    raise ValueError(
                        f"targets[{name!r}][{t}, {b}] = {int(target[t, b])} is not a class "
                        f"index; expected 0..{size - 1} ({dims[0]} = {size} classes)"
                    )
                target = torch.nn.functional.one_hot(target.long(), size).to(dtype)
            targets[name] = target
        for name, target in SPEC.get("fed_back", {}).items():
            if name not in inputs:  # y(t-1), with y(0) = 0
                y = targets[target]
                inputs[name] = torch.cat([torch.zeros_like(y[:1]), y[:-1]])
        inputs = {name: inputs[name] for name in SPEC["inputs"]}
    given_states = _given_states(SPEC, h0)
    states = {}
    for name, dims in SPEC["states"].items():
        size = _resolve(dims[0], sizes)
        value = given_states.get(name)
        if value is None:
            states[name] = torch.zeros((B, size), dtype=dtype, device=device)
        else:
            states[name] = value.expand(B, size)
    return sizes, T, params, inputs, (targets if with_targets else None), states


def _sequences(inputs, T):
    # the inputs as the kernel reads them: a context input (B, size) repeated over time
    context = SPEC.get("context", ())
    return {n: a.expand(T, *a.shape) if n in context else a for n, a in inputs.items()}


def _split(tensors):
    # the flat tuple of an autograd Function back into params, inputs and initial states
    names = [SPEC["params"], SPEC["inputs"], SPEC["states"]]
    out, i = [], 0
    for group in names:
        out.append(dict(zip(group, tensors[i : i + len(group)])))
        i += len(group)
    return out'''

_API = '''
def forward(params, inputs, h0=None):
    """States and outputs for all t: dict of (T, B, size) tensors. Differentiable by
    torch.autograd (through the generated adjoint recurrence) when any tensor requires grad."""
    sizes, T, params, inputs, _, states = _check(params, inputs, None, h0, False)
    tensors = (*params.values(), *inputs.values(), *states.values())
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        {differentiable}
    with torch.no_grad():
        return _forward(params, _sequences(inputs, T), states, sizes)


def loss_and_grad(params, inputs, targets, h0=None):
    """(loss, grads): the total loss and its gradient for every parameter, as tensors."""
    sizes, T, params, inputs, targets, states = _check(params, inputs, targets, h0)
    with torch.no_grad():
        return _loss_and_grad(params, _sequences(inputs, T), targets, states, sizes)


def vjp(params, inputs, targets, h0=None):
    """(loss, grads, input_grads, h0_grads): also the gradient of every input sequence,
    (T, B, size), and of every initial state, (B, size), for composing cells."""
    sizes, T, params, inputs, targets, states = _check(params, inputs, targets, h0)
    with torch.no_grad():
        return _loss_and_grad(params, _sequences(inputs, T), targets, states, sizes, True)


def loss(params, inputs, targets, h0=None):
    """The total loss as a tensor that torch.autograd differentiates with the generated
    gradients (of the parameters, the inputs and h0; targets are constants)."""
    sizes, T, params, inputs, targets, states = _check(params, inputs, targets, h0)
    return _Loss.apply(sizes, T, targets, *params.values(), *inputs.values(), *states.values())


class _Loss(torch.autograd.Function):
    """The cell's own loss; backward scales the gradients the forward pass computed."""

    @staticmethod
    def forward(ctx, sizes, T, targets, *tensors):
        params, inputs, states = _split(tensors)
        full = any(ctx.needs_input_grad[3 + len(params) :])
        result = _loss_and_grad(params, _sequences(inputs, T), targets, states, sizes, full)
        grads = [*result[1].values()]
        if full:
            grads += [result[2][n] for n in inputs] + [result[3][n] for n in states]
        ctx.save_for_backward(*grads)
        return result[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        grads = [g * x for x in ctx.saved_tensors]
        return (None, None, None, *grads, *[None] * (len(ctx.needs_input_grad) - 3 - len(grads)))'''

_DIFFERENTIABLE = '''
class _Forward(torch.autograd.Function):
    """forward() for torch.autograd: backward is the generated adjoint recurrence of the cell
    whose loss is the sum over t of <d_q(t)|q(t)> for every state and output q (SEEDS names
    the cotangent d_q of each), so its gradients are the vector-Jacobian product."""

    @staticmethod
    def forward(ctx, sizes, T, *tensors):
        params, inputs, states = _split(tensors)
        ctx.sizes, ctx.T = sizes, T
        ctx.save_for_backward(*tensors)
        result = _forward(params, _sequences(inputs, T), states, sizes)
        return tuple(result[name] for name in SEEDS)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *cotangents):
        params, inputs, states = _split(ctx.saved_tensors)
        targets = {SEEDS[name]: d for name, d in zip(SEEDS, cotangents)}
        _, g_params, g_inputs, g_states = _seeded_loss_and_grad(
            params, _sequences(inputs, ctx.T), targets, states, ctx.sizes, True
        )
        return (
            None,
            None,
            *[g_params.get(n) for n in params],
            *[g_inputs[n] for n in inputs],
            *[g_states[n] for n in states],
        )'''

_MODULE = '''
def _size_names():
    # the size names in the parameters' shapes (n of 4*n too)
    names = set()
    for dims in SPEC["params"].values():
        for dim in dims:
            text = "".join(c if c.isalnum() or c == "_" else " " for c in str(dim))
            names |= {word for word in text.split() if word.isidentifier()}
    return sorted(names)


class Module(torch.nn.Module):
    """The cell's parameters (params, a torch.nn.ParameterDict) with forward(inputs, h0) and
    loss(inputs, targets, h0), both differentiated through the generated backward pass.

    Give either params (a dict of tensors or arrays, copied) or sizes (a dict of the size
    names of SPEC; each parameter then drawn uniformly from +-1/sqrt(its last axis)).
    """

    def __init__(self, params=None, sizes=None, dtype=None, device=None):
        super().__init__()
        if (params is None) == (sizes is None):
            raise ValueError("give params (a dict of tensors) or sizes (a dict of ints), one")
        self.params = torch.nn.ParameterDict()
        given = params if params is not None else sizes
        if not isinstance(given, dict):
            what = "params" if params is not None else "sizes"
            raise ValueError(f"{what} must be a dict, got {type(given).__name__}")
        for name, dims in SPEC["params"].items():
            if params is not None:
                if name not in params:
                    raise ValueError(f"params[{name!r}] is missing; expected {dims}")
                value = torch.as_tensor(params[name], dtype=dtype, device=device).clone()
            else:
                try:
                    shape = tuple(_resolve(d, sizes) for d in dims)
                except (KeyError, NameError):
                    raise ValueError(
                        f"sizes has no value for a size of params[{name!r}] {dims}; sizes "
                        f"needed: {_size_names()}"
                    ) from None
                bound = shape[-1] ** -0.5
                value = torch.empty(shape, dtype=dtype or torch.float32, device=device)
                value.uniform_(-bound, bound)
            if hasattr(self.params, name):
                raise ValueError(
                    f"the parameter name {name!r} is taken by torch.nn.ParameterDict; rename it"
                )
            self.params[name] = torch.nn.Parameter(value)
        extra = [n for n in given if params is not None and n not in SPEC["params"]]
        if extra:
            raise ValueError(f"params[{extra[0]!r}] is not a parameter of this kernel")

    def forward(self, inputs, h0=None):
        """States and outputs for all t, differentiable with respect to the parameters."""
        return forward(dict(self.params), inputs, h0)

    def loss(self, inputs, targets, h0=None):
        """The cell's total loss, differentiable with respect to the parameters."""
        return loss(dict(self.params), inputs, targets, h0)'''

# what the generated functions may read from the module around them: torch and the helpers
# (the module's other names, Module, SEEDS, loss, ..., they never read, so a cell may use them)
_READ_NAMES = {"torch", *_TORCH_HELPER_ORDER}


def _torch_functions(
    derivation: Derivation, rename: str = "", schedule: str = "sequential"
) -> tuple[list[str], set[str]]:
    """The printed ``_forward`` and ``_loss_and_grad`` of ``derivation`` (with ``rename``,
    only ``_loss_and_grad``, renamed ``_{rename}_loss_and_grad``) and the helpers they call."""
    cell = derivation.cell
    device = "_device" if "device" in user_names(cell) else "device"
    gen = generator_for(schedule)(derivation, dataclasses.replace(TORCH, device=device))
    functions = []
    for function in gen.functions():
        first = next(iter(cell.inputs))
        body = []
        for stmt in function.body:
            body.append(stmt)
            if isinstance(stmt, Line) and stmt.code == f"dtype = inputs[{first!r}].dtype":
                body.append(Line(f"{device} = inputs[{first!r}].device"))
        functions.append(dataclasses.replace(function, body=tuple(body)))
    printer = TorchPrinter({}, gen.batch)
    fwd, grad = (printer.doprint(f) for f in functions)
    check_namespace(f"{fwd}\n\n\n{grad}\n", cell, _READ_NAMES)
    if rename:
        renamed = dataclasses.replace(functions[1], name=f"_{rename}_loss_and_grad")
        return [_prefix_citations(printer.doprint(renamed), "S")], gen.helpers
    return [fwd, grad], gen.helpers


_CITED = re.compile(r"((?:\(\d+\)(?:-\(\d+\))?, )*\(\d+\)(?:-\(\d+\))?) above")


def _prefix_citations(text: str, prefix: str) -> str:
    """``text`` with the line numbers it cites ("(8)-(21) above") written "(S8)-(S21) above":
    the seeded derivation's lines, numbered with ``prefix`` in the module docstring."""
    return _CITED.sub(lambda m: re.sub(r"\((\d+)\)", rf"({prefix}\1)", m.group(1)) + " above", text)


def _helpers_text(used: set[str]) -> str:
    return "\n\n\n".join(_HELPERS[n].strip() for n in _TORCH_HELPER_ORDER if n in used)


def _not_differentiable(cell) -> str:
    """Why forward() of ``cell`` gets no autograd backward pass, or "" when it does."""
    if cell.fed_back:  # the seeded cell would read the target in the input's place
        fed = ", ".join(f"{i!r} (from targets[{t!r}])" for i, t in cell.fed_back.items())
        return (
            f"forward() is not differentiable for this cell: its inputs {fed} are fed back "
            f"from targets (teacher forcing); differentiate loss() instead"
        )
    used = set()
    for term in [*cell.updates.values(), *cell.definitions.values(), *cell.output_defs.values()]:
        used |= term.expr.atoms(MatrixSymbol)
    loss_only = [n for n, p in cell.params.items() if p.symbol not in used]
    if loss_only:  # vjp_cell declares them but nothing it computes reads them
        return (
            f"forward() is not differentiable for this cell: its parameters {loss_only} enter "
            f"only the loss, not an update or output, which the backward pass of forward() "
            f"cannot take yet; differentiate loss() instead"
        )
    return ""


def generate_module(derivation: Derivation, schedule: str = "sequential") -> str:
    """The source of the PyTorch kernel module of a derived cell; it imports only torch.
    ``schedule="scan"`` (every state linear) computes the recurrences by parallel scans."""
    from .._version import __version__

    cell = derivation.cell
    if "torch" in user_names(cell):
        raise DerivationError(
            f"cell {cell.name!r} names a quantity 'torch', the name under which its PyTorch "
            f"kernel module imports torch; rename that quantity for the torch backend"
        )
    functions, helpers = _torch_functions(derivation, schedule=schedule)
    spec = _spec(cell)
    why_not = _not_differentiable(cell)
    seeds: dict = {}
    seeded: list[str] = []
    seeded_doc = ""
    why = pprint.pformat(why_not, width=96)  # a string literal, split over lines
    if why_not:
        differentiable = "raise ValueError(NOT_DIFFERENTIABLE)"
    else:
        seeded_cell, seeds = vjp_cell(cell)
        seeded_derivation = derive(seeded_cell)
        seeded, more = _torch_functions(seeded_derivation, rename="seeded", schedule=schedule)
        helpers |= more
        seeded_doc = (
            f"\nThe backward pass of forward() is the gradient of this derivation, its lines "
            f"numbered (S1),\n(S2), ...: the cell with the loss replaced by sum_t <d_q(t)|q(t)>, "
            f"whose gradients are\nthe vector-Jacobian product of the forward pass.\n\n"
            f"{_indent_doc(derivation_text(seeded_derivation, tag_prefix='S'))}\n"
        )
        differentiable = "return dict(zip(SEEDS, _Forward.apply(sizes, T, *tensors)))"
    equations = derivation_text(derivation)
    doc = (
        f"PyTorch kernel for the recurrent cell {cell.name!r}, generated by rnnsym "
        f"{__version__}.\n\nDo not edit: regenerate with rnnsym. Needs only PyTorch.\n\n"
        f"Tensors: params[name] has the parameter's shape (vectors 1-D); inputs and targets "
        f"are\n(T, B, size) tensors (time, batch, size); h0 is None (zeros), a tensor (B, size) "
        f"or (size,),\nor a dict of them by state name. float32 and float64, any one device.\n\n"
        f"forward() is differentiable by torch.autograd: its backward pass is the generated\n"
        f"adjoint recurrence of the loss sum_t <d_q(t)|q(t)> over the states and outputs q "
        f"(SEEDS\nnames each cotangent d_q), not autograd through the forward loop. loss() is "
        f"the cell's\nown loss, differentiated by loss_and_grad's gradients; Module holds the "
        f"parameters.\n\n"
        f"The derivation this kernel implements. The comments below cite its lines by\n"
        f"number; a line that is one of the equations (2)-(9) of the report (after\n"
        f"Goodfellow, Bengio & Courville, Deep Learning, MIT Press 2016, ch. 10) says\n"
        f"which in brackets.\n\n{_indent_doc(equations)}\n{seeded_doc}"
    )
    parts = [
        '"""' + docstring_text(doc) + '"""',
        "import torch",
        "SPEC = " + pprint.pformat(spec, width=96, sort_dicts=False),
        "# each state and output -> the target of _seeded_loss_and_grad holding its cotangent\n"
        "SEEDS = " + pprint.pformat(seeds, width=96, sort_dicts=False),
        *(
            [f"# why forward() has no autograd backward\nNOT_DIFFERENTIABLE = {why}"]
            if why_not
            else []
        ),
        _helpers_text(helpers),
        _CHECK.strip(),
        *(_helper_source(n) for n in SHAPE_CHECK),  # the NumPy kernel's, no NumPy in them
        _API.strip().replace("{differentiable}", differentiable),
        *([_DIFFERENTIABLE.strip()] if seeds else []),
        _MODULE.strip(),
        *functions,
        *seeded,
    ]
    text = "\n\n\n".join(p for p in parts if p) + "\n"
    return re.sub(r"[ \t]+\n", "\n", text)


class TorchKernel(Kernel):
    """A generated PyTorch kernel: the contract of :class:`~rnnsym.backends.base.Kernel` with
    tensors.

    ``forward(params, inputs, h0=None)`` returns a dict of state and output sequences (T, B,
    size), differentiable by ``torch.autograd``; ``loss_and_grad`` returns ``(loss, grads)``,
    ``vjp`` also the input and h(0) gradients, ``loss`` the differentiable loss; ``Module`` is
    the ``torch.nn.Module`` holding the parameters. ``source`` is the module text, runnable
    with torch alone.
    """

    backend = "torch"
    language = "PyTorch"

    def __init__(self, derivation: Derivation, source: str):
        super().__init__(derivation, source)
        self.Module = self.module.Module

    def loss(self, params: dict, inputs: dict, targets: dict, h0=None, lengths=None):
        """The total loss, a tensor differentiable by ``torch.autograd``; with ``lengths`` (a
        padded batch), the loss of the real steps only."""
        if lengths is not None:
            from .lengths import masked_call

            masked, inputs, targets = masked_call(self, params, inputs, targets, lengths)
            return masked.module.loss(params, inputs, targets, h0)
        return self.module.loss(params, inputs, targets, h0)


def load(source: str, cell) -> TorchKernel:
    """The kernel of ``source`` (a module from :func:`generate_module` for ``cell``)."""
    return TorchKernel(derive(cell), source)


def compile_derivation(derivation: Derivation, schedule: str = "sequential") -> TorchKernel:
    """Generate and load the PyTorch kernel of a derived cell."""
    return TorchKernel(derivation, generate_module(derivation, schedule))
