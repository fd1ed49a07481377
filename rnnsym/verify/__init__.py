"""Independent checks of a derivation and of a generated kernel.

* :func:`scalar_oracle` unrolls the cell for small concrete sizes and T into a graph of scalar
  SymPy nodes, differentiates it node by node with ``sympy.diff`` of each local scalar function
  (:mod:`rnnsym.verify.scalar_graph`; nothing of rnnsym's derivation or derivative rules is used),
  and compares with the matrix-form derivation evaluated step by step; both are evaluated with
  mpmath at ``digits`` significant digits at a random rational point. * :func:`check_kernel` checks
  a kernel (any object with ``loss_and_grad``, ``forward`` and ``vjp``) against a NumPy interpreter
  of the cell's own equations: loss, states and outputs, every gradient entry (complex-step
  derivatives of the interpreter) and ``vjp()``'s adjoints, at random distinct sizes ≥ 7, T ≥ 8, B ≥
  3 and nonzero h(0), in float64 and float32. * :func:`check_gradients` compares a kernel's
  gradients with central finite differences at data you give it. * :func:`verify` runs the scalar
  oracle and :func:`check_kernel`: the report ``rnnsym derive`` and ``rnnsym verify`` print.

The oracle is exact arithmetic's stand-in at small sizes (3, 4, 5, ..., T = 6 by default);
the kernel checks cover realistic sizes and lengths.

Modules: :mod:`~rnnsym.verify.symbolic` (the scalar oracle, BPTT in exact arithmetic),
:mod:`~rnnsym.verify.scalar_graph` (the unrolled graph of scalar nodes),
:mod:`~rnnsym.verify.kernel_check`, :mod:`~rnnsym.verify.finite_differences`,
:mod:`~rnnsym.verify.braket_check`, :mod:`~rnnsym.verify.models` (composed models),
:mod:`~rnnsym.verify.torch_compare` (PyTorch's modules), :mod:`~rnnsym.verify.report` and
:mod:`~rnnsym.verify.api` (``verify``).
"""

from ..problems import random_problem
from .api import LONG_ORACLE_T, verify
from .braket_check import BraketReport, braket_report
from .finite_differences import GradientReport, check_gradients
from .kernel_check import Check, KernelProblem, KernelReport, check_kernel, kernel_problem
from .models import ModelOracleReport, model_oracle, verify_model
from .report import VerificationReport
from .symbolic import (
    ORACLE_T,
    OracleReport,
    UnrolledPoint,
    agreement_digits,
    bptt_gradients,
    oracle_gradients,
    scalar_oracle,
    unrolled_point,
)

__all__ = [
    "OracleReport",
    "GradientReport",
    "VerificationReport",
    "ModelOracleReport",
    "BraketReport",
    "UnrolledPoint",
    "unrolled_point",
    "oracle_gradients",
    "bptt_gradients",
    "agreement_digits",
    "scalar_oracle",
    "model_oracle",
    "check_gradients",
    "random_problem",
    "verify",
    "verify_model",
    "braket_report",
    "check_kernel",
    "kernel_problem",
    "KernelProblem",
    "KernelReport",
    "Check",
    "ORACLE_T",
    "LONG_ORACLE_T",
]
