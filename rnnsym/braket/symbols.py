"""Symbols of the bra-ket form."""

import sympy as sp

__all__ = ["EPSILON"]

# the infinitesimal of the slides' perturbation h -> h + ε|e_i>, ε -> 0
EPSILON = sp.Symbol("epsilon", positive=True)
