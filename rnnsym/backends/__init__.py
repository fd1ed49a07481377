"""Backends: the derivation lowered to loops and contractions, printed as a kernel module.

* :mod:`~rnnsym.backends.numpy`: the reverse-mode (BPTT) kernel module;
* :mod:`~rnnsym.backends.numpy_forward`: the forward-mode (RTRL) kernel module;
* :mod:`~rnnsym.backends.numpy_printer`: the printer of expressions and statements as NumPy;
* :mod:`~rnnsym.backends.numpy_runtime`: the helpers copied into every generated module
  (argument checks, row-layout matrix products).
"""
