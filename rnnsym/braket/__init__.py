"""The slides' bra-ket form of back-propagation through time.

* :mod:`~rnnsym.braket.form`: ``braket(cell, T)``, the :class:`SequenceForm` (J_x, J_h, G(t),
  the recurrence of the bra-ket rows and its closed form) and :func:`monomials`;
* :mod:`~rnnsym.braket.printing`: its text and LaTeX;
* :mod:`~rnnsym.braket.symbols`: the ε of the slides' perturbation.
"""

from .form import SequenceForm, braket, monomials
from .symbols import EPSILON

__all__ = ["SequenceForm", "braket", "monomials", "EPSILON"]
