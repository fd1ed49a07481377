"""The intermediate representation: matrix expressions over a cell's quantities and their rules.

* :mod:`~rnnsym.ir.ops`: the nodes (SymPy matrix expressions, plus ``Apply``, ``Concat``,
  ``Slice``, ``Pad``, ``LogSumExp``, ``Softmax``), their constructors and the table of
  elementwise functions;
* :mod:`~rnnsym.ir.activations`: the elementwise functions and their derivatives;
* :mod:`~rnnsym.ir.scalar`: the code of an elementwise function's scalar body;
* :mod:`~rnnsym.ir.expr`: ``Term``, the cell-building expressions a user writes;
* :mod:`~rnnsym.ir.rules`: the reverse-mode (VJP) rule of every node;
* :mod:`~rnnsym.ir.jvp`: the forward-mode (JVP) rule of every node.
"""

from . import activations  # noqa: F401 - fills the table of built-in elementwise functions
