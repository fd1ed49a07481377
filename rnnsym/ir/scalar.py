"""The NumPy code of the scalar body of an elementwise function, entry by entry.

The canonical text of an elementwise function for every backend: NumPy ufunc names
(``np.tanh``), ``np.maximum``/``np.minimum``/``np.abs``, and the runtime helpers ``_erf`` and
``_erfc``; a backend renames the module prefix. Used when a user defines a function (anything
with no such text is refused there) and by the printers.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.numpy import NumPyPrinter

from ..errors import DerivationError

__all__ = ["scalar_code"]


class _ScalarPrinter(NumPyPrinter):
    """Prints the scalar body of a user activation with its argument already printed.

    Only NumPy (and the vectorised helpers of :mod:`rnnsym.backends.numpy_runtime`) may
    appear in the result: anything that would need another module raises :class:`DerivationError`.
    """

    def __init__(self, argument: sp.Dummy, text: str):
        super().__init__({"fully_qualified_modules": False, "inline": True})
        self._argument, self._text = argument, text
        self.used_helpers: set[str] = set()

    def _print_Dummy(self, expr):
        if expr == self._argument:
            return self._text
        return super()._print_Dummy(expr)

    def _module_format(self, fqn, register=True):
        # numpy.exp -> np.exp: the generated module imports numpy as np, and nothing else
        if fqn.startswith("numpy."):
            return "np." + fqn.split(".")[-1]
        raise DerivationError(f"{fqn} has no NumPy equivalent that rnnsym can print")

    def _nested(self, ufunc: str, args) -> str:
        text = self._print(args[0])
        for arg in args[1:]:
            text = f"{ufunc}({text}, {self._print(arg)})"
        return text

    def _print_Max(self, expr) -> str:
        return self._nested("np.maximum", expr.args)

    def _print_Min(self, expr) -> str:
        return self._nested("np.minimum", expr.args)

    def _print_Abs(self, expr) -> str:
        return f"np.abs({self._print(expr.args[0])})"

    def _helper(self, name: str, expr) -> str:
        self.used_helpers.add(name)
        return f"{name}({self._print(expr.args[0])})"

    def _print_erf(self, expr) -> str:
        return self._helper("_erf", expr)

    def _print_erfc(self, expr) -> str:
        return self._helper("_erfc", expr)


def scalar_code(expr: sp.Expr, argument: sp.Dummy, text: str) -> tuple[str, set[str]]:
    """The NumPy code of a scalar function of ``argument`` (printed as ``text``), entry by
    entry, and the runtime helpers it calls; :class:`DerivationError` if it has none."""
    printer = _ScalarPrinter(argument, text)
    try:
        code = printer.doprint(expr)
    except DerivationError:
        raise
    except Exception as exc:  # SymPy's PrintMethodNotImplementedError and the like
        raise DerivationError(f"{sp.sstr(expr)} cannot be printed as NumPy code ({exc})") from None
    return code, printer.used_helpers
