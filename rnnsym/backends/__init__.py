"""Backends: the derivation lowered once to loops and contractions, printed for a framework.

The lowering is :class:`~rnnsym.backends.numpy.KernelGenerator` (hoisting, common
subexpressions, the forward loop, the adjoint loop, the gradient contractions); a backend is a
:class:`~rnnsym.backends.numpy.Backend` (its expression printer and the few statements it
writes as code) plus the module around the two generated functions:

* :mod:`~rnnsym.backends.numpy`: the reverse-mode (BPTT) NumPy module, and the lowering;
* :mod:`~rnnsym.backends.numpy_forward`: the forward-mode (RTRL) NumPy module;
* :mod:`~rnnsym.backends.numpy_printer`: the printer of expressions and statements as NumPy;
* :mod:`~rnnsym.backends.numpy_runtime`: the helpers copied into every NumPy module;
* :mod:`~rnnsym.backends.torch`: PyTorch, with an ``autograd.Function`` whose backward pass is
  the generated adjoint recurrence, and an ``nn.Module``;
* :mod:`~rnnsym.backends.jax`: JAX, ``lax.scan`` loops and a ``jax.custom_vjp`` forward;
* :mod:`~rnnsym.backends.numba`: the step loops compiled by Numba, for small sizes.
"""
