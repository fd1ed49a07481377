"""Exceptions raised by rnnsym; each message names the offending expression or array."""

from __future__ import annotations

__all__ = ["RnnsymError", "CellError", "ShapeError", "DerivationError"]


class RnnsymError(Exception):
    """Base class of rnnsym's errors."""


class CellError(RnnsymError, ValueError):
    """A cell definition is invalid (unknown variable, missing loss, bad name, ...)."""


class ShapeError(CellError):
    """Two operands of an expression have incompatible shapes."""


class DerivationError(RnnsymError):
    """The cell uses an expression that rnnsym cannot differentiate or print."""
