"""Models: the built-in architectures and the composition of cells into models.

* :mod:`~rnnsym.models.compose`: ``stack``, ``bidirectional``, ``seq2seq``, ``last_output``,
  ``generate``; a :class:`Model`'s derivation and kernel, chained from its cells';
* :mod:`~rnnsym.models.architectures`: the architectures of the report's figures, built from
  them.

The catalogue of built-in cells and models, by name, is :mod:`rnnsym.cells`.
"""

from .compose import (
    Model,
    ModelDerivation,
    ModelKernel,
    bidirectional,
    generate,
    last_output,
    model_sizes,
    random_model_problem,
    seq2seq,
    stack,
)

__all__ = [
    "Model",
    "ModelDerivation",
    "ModelKernel",
    "bidirectional",
    "generate",
    "last_output",
    "model_sizes",
    "random_model_problem",
    "seq2seq",
    "stack",
]
