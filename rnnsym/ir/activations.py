"""Elementwise functions: their scalar definition, derivative, NumPy name and LaTeX.

An :class:`Activation` is data, as in autograd's ``defvjp`` tables. Its ``derivative`` receives
the argument ``x`` *and* the forward result ``ans`` (both matrix expressions) so that rules reuse
forward values: tanh′ = 1 − ans∘ans, σ′ = ans∘(1 − ans), exp′ = ans. An activation made by
:func:`elementwise` from a scalar SymPy function gets its derivative from ``sympy.diff``.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp

from ..errors import CellError, DerivationError
from .ops import ACTIVATIONS, Apply, add, get_activation, hadamard, mul, ones
from .scalar import scalar_code

__all__ = ["Activation", "get_activation", "register", "define", "ACTIVATIONS"]

Derivative = Callable[[sp.MatrixExpr, sp.MatrixExpr], sp.MatrixExpr]


@dataclass(frozen=True)
class Activation:
    """A scalar function applied elementwise.

    ``scalar`` maps a SymPy scalar to a SymPy scalar (used by the oracle and for user
    functions); ``derivative(x, ans)`` gives f′(x) as a matrix expression; ``numpy`` names a
    one-argument NumPy callable (``np.tanh``, or a helper of the generated module such as
    ``_sigmoid``) or is ``None`` to print ``scalar`` itself.
    """

    name: str
    scalar: Callable[[sp.Expr], sp.Expr]
    derivative: Derivative
    latex: str
    numpy: str | None = None


_USER_DEFINITIONS: dict[str, sp.Expr] = {}


def register(activation: Activation) -> Activation:
    """Add an activation to the table; a name is never silently redefined."""
    old = ACTIVATIONS.get(activation.name)
    if old is not None and old is not activation:
        raise CellError(f"an elementwise function named {activation.name!r} already exists")
    ACTIVATIONS[activation.name] = activation
    return activation


def _scalar_derivative(name: str, scalar: Callable[[sp.Expr], sp.Expr]) -> Derivative:
    """f′ as a new activation named ``f'`` derived by SymPy, applied to the argument.

    The apostrophe keeps derivative names apart from anything a user can name.
    """
    d = sp.Dummy("d", real=True)
    expr = sp.diff(scalar(d), d)
    prime_name = f"{name}'"
    if prime_name not in ACTIVATIONS:
        latex = get_activation(name).latex + "'"
        _register_scalar(prime_name, sp.Lambda(d, expr), latex)
    return lambda x, ans: Apply(prime_name, x)


def _register_scalar(name: str, fn: sp.Lambda, latex: str) -> Activation:
    act = Activation(
        name=name,
        scalar=lambda z, fn=fn: fn(z),
        derivative=_LazyDerivative(name, fn),
        latex=latex,
    )
    _USER_DEFINITIONS[name] = fn
    return register(act)


class _LazyDerivative:
    """Derive f′ only when first needed (user functions may have piecewise derivatives)."""

    def __init__(self, name: str, fn: sp.Lambda):
        self.name, self.fn, self._rule = name, fn, None

    def __call__(self, x, ans):
        if self._rule is None:
            self._rule = _scalar_derivative(self.name, self.fn)
        return self._rule(x, ans)


_SUPPORTED = (
    "arithmetic and powers, exp, log, sqrt, trigonometric and hyperbolic functions, Abs, "
    "Max, Min, Piecewise, erf and erfc"
)


def _as_scalar_expr(name: str, raw, d: sp.Dummy) -> sp.Expr:
    """What a user's scalar function returned, if it is a real SymPy expression of ``d``.

    Only SymPy objects and plain numbers are accepted: a string is never parsed (that would run
    it as code).
    """
    if isinstance(raw, bool) or not isinstance(raw, (sp.Basic, int, float)):
        raise CellError(
            f"elementwise({name!r}): the function must return a scalar SymPy expression of "
            f"its argument, got {raw!r} of type {type(raw).__name__}"
        )
    body = sp.sympify(raw, strict=True) if not isinstance(raw, sp.Basic) else raw
    if not isinstance(body, sp.Expr) or body.is_Matrix or body.free_symbols - {d}:
        raise CellError(
            f"elementwise({name!r}): the function must return a scalar SymPy expression of its "
            f"one argument, got {body!r}"
        )
    if body.has(sp.I) or body.is_real is False:
        raise CellError(f"elementwise({name!r}): {body} is not real; cells are real-valued")
    return body


def _check_supported(name: str, body: sp.Expr, d: sp.Dummy) -> None:
    """Refuse, when the function is defined, what a kernel could not compute or differentiate."""
    from sympy.core.function import AppliedUndef

    z = sp.Symbol("z")
    shown = body.xreplace({d: z})
    undefined = sorted({str(f.func) for f in body.atoms(AppliedUndef)})
    if undefined:
        raise CellError(
            f"elementwise({name!r}): {shown} uses the undefined function(s) "
            f"{', '.join(undefined)}; give the function's formula (supported: {_SUPPORTED})"
        )
    derivative = sp.diff(body, d)
    if derivative.has(sp.DiracDelta, sp.Derivative, sp.Subs):
        raise CellError(
            f"elementwise({name!r}): the derivative of {shown} is not a function "
            f"({derivative.xreplace({d: z})}): floor, sign, Heaviside and other steps have a "
            f"distribution or no derivative; use a smooth or piecewise-linear function instead "
            f"(relu = Max(z, 0) has the derivative Heaviside(z))"
        )
    for what, expr in (("", body), ("the derivative ", derivative)):
        try:
            scalar_code(expr, d, "z")
        except DerivationError as exc:
            raise CellError(
                f"elementwise({name!r}): {what}{expr.xreplace({d: z})} cannot be computed with "
                f"NumPy: {exc}. Supported: {_SUPPORTED}"
            ) from None


def define(name: str, function) -> sp.Lambda:
    """Register the user's elementwise function ``name`` from a scalar SymPy function (see
    :func:`rnnsym.elementwise`); return it as a ``sympy.Lambda``."""
    if not (isinstance(name, str) and name.isidentifier()) or keyword.iskeyword(name):
        raise CellError(f"elementwise name must be a Python identifier, got {name!r}")
    d = sp.Dummy("d", real=True)
    try:
        raw = function(d)
    except Exception as exc:  # the user's function could raise anything
        raise CellError(
            f"elementwise({name!r}): calling the function on a SymPy symbol failed: {exc}"
        ) from exc
    body = _as_scalar_expr(name, raw, d)
    _check_supported(name, body, d)
    lam = sp.Lambda(d, body)
    existing = _USER_DEFINITIONS.get(name)
    if existing is not None:
        if sp.simplify(existing(d) - body) != 0:
            raise CellError(
                f"elementwise function {name!r} is already defined as {existing.expr} "
                f"(argument {existing.variables[0]}); choose another name"
            )
    elif name in ACTIVATIONS:
        raise CellError(f"{name!r} is a built-in elementwise function; choose another name")
    else:
        _register_scalar(name, lam, rf"\operatorname{{{name}}}")
    return lam


# ----- Built-in activations; derivatives reuse the forward value ``ans`` -----


def _one_minus(ans):
    return add(ones(*ans.shape), mul(-1, ans))


register(
    Activation(
        "tanh",
        sp.tanh,
        lambda x, ans: _one_minus(hadamard(ans, ans)),
        r"\tanh",
        "np.tanh",
    )
)
register(
    Activation(
        "sigmoid",
        lambda z: 1 / (1 + sp.exp(-z)),
        lambda x, ans: hadamard(ans, _one_minus(ans)),
        r"\sigma",
        "_sigmoid",
    )
)
register(Activation("exp", sp.exp, lambda x, ans: ans, r"\exp", "np.exp"))
register(Activation("reciprocal", lambda z: 1 / z, None, r"\operatorname{inv}", "np.reciprocal"))
register(Activation("log", sp.log, lambda x, ans: Apply("reciprocal", x), r"\log", "np.log"))
register(Activation("step", sp.Heaviside, None, r"\operatorname{step}", "_step"))
register(
    Activation(
        "relu",
        lambda z: sp.Max(0, z),
        lambda x, ans: Apply("step", x),
        r"\operatorname{relu}",
        "_relu",
    )
)
register(
    Activation(
        "log_sigmoid",
        lambda z: -sp.log(1 + sp.exp(-z)),
        lambda x, ans: Apply("sigmoid", mul(-1, x)),
        r"\log\sigma",
        "_log_sigmoid",
    )
)
register(
    Activation(
        "softplus",
        lambda z: sp.log(1 + sp.exp(z)),
        lambda x, ans: Apply("sigmoid", x),
        r"\operatorname{softplus}",
        "_softplus",
    )
)
register(
    Activation(
        "sqrt",
        sp.sqrt,
        # sqrt′(z) = 1 / (2 sqrt(z)), from the forward value
        lambda x, ans: mul(sp.Rational(1, 2), Apply("reciprocal", ans)),
        r"\operatorname{sqrt}",
        "np.sqrt",
    )
)
