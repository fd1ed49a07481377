"""``lengths=`` on every cell kernel (issue 13 §1): a padded batch of sequences of different
lengths gives the loss and gradients of each sequence run alone at its own length.

The reference is independent of the masking: each sequence cut to its length and run through
the plain kernel, the results summed. The padding is NaN, which would poison any sum it
reached.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnsym as rs
from rnnsym.verify import random_problem

try:  # imported here, not in a test: a first import of jax touches numpy's global RNG
    import jax

    jax.config.update("jax_enable_x64", True)  # float64: the comparison to 1e-10 needs it
except ImportError:
    jax = None

T, B = 6, 3
LENGTHS = np.array([6, 2, 4])
CELLS = sorted(rs.cells.BUILTIN)


def _cut(a, b: int, length: int, per_sequence: bool):
    """Sequence b of a batch array, cut to its length (a context input: its row b)."""
    if per_sequence:
        return a[b : b + 1] if a.ndim == 2 else a
    return a[:length, b : b + 1]


def _alone(kernel, params, inputs, targets, context):
    """The summed loss and gradients of each sequence cut to its length, run alone."""
    loss, grads = 0.0, None
    for b, length in enumerate(LENGTHS):
        one = kernel.loss_and_grad(
            params,
            {n: _cut(a, b, length, n in context) for n, a in inputs.items()},
            {n: _cut(a, b, length, False) for n, a in targets.items()},
        )
        loss += one[0]
        grads = one[1] if grads is None else {n: grads[n] + one[1][n] for n in grads}
    return loss, grads


def _padded_with_nan(inputs, targets, context, classes):
    inputs, targets = dict(inputs), dict(targets)
    for group in (inputs, targets):
        for name, a in group.items():
            if name in context or a.ndim < 2:
                continue
            a = a.copy()
            for b, length in enumerate(LENGTHS):
                a[length:, b] = -1 if name in classes else np.nan
            group[name] = a
    return inputs, targets


@pytest.mark.parametrize("name", CELLS)
def test_a_padded_batch_equals_each_sequence_alone(name):
    cell = rs.cells.get(name)
    kernel = rs.compile(cell)
    params, inputs, targets = random_problem(cell, T=T, B=B, seed=4)
    context, classes = set(cell.context_inputs), set(cell.class_targets)
    padded_inputs, padded_targets = _padded_with_nan(inputs, targets, context, classes)
    loss, grads, input_grads, _ = kernel.vjp(params, padded_inputs, padded_targets, lengths=LENGTHS)
    want_loss, want = _alone(kernel, params, inputs, targets, context)
    # the same terms summed in another order: rounding only (1e-12 relative)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for n, g in grads.items():
        np.testing.assert_allclose(g, want[n], rtol=1e-10, atol=1e-12, err_msg=n)
    for n, g in input_grads.items():
        if n not in context:
            for b, length in enumerate(LENGTHS):
                assert np.all(g[length:, b] == 0), n  # past the end: no gradient
    if cell.fed_back:  # forward reads the fed-back target, which loss_and_grad fills in
        return
    states = kernel.forward(params, padded_inputs, lengths=LENGTHS)
    for n, a in states.items():
        assert np.all(np.isfinite(a)), n
        assert np.all(a[LENGTHS[1] :, 1] == 0), n  # zero past the end


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_other_backends_take_lengths_too(backend):
    pytest.importorskip(backend)
    cell = rs.cells.lstm()
    params, inputs, targets = random_problem(cell, T=T, B=B, seed=5)
    want = rs.compile(cell).loss_and_grad(params, inputs, targets, lengths=LENGTHS)
    kernel = rs.compile(cell, backend=backend)
    if backend == "torch":
        import torch

        def convert(d):
            return {n: torch.tensor(a) for n, a in d.items()}
    else:
        import jax.numpy as jnp

        def convert(d):
            return {n: jnp.asarray(a) for n, a in d.items()}

    loss, grads = kernel.loss_and_grad(
        convert(params), convert(inputs), convert(targets), lengths=LENGTHS
    )
    # the same float64 computation printed for another framework: rounding only
    assert float(loss) == pytest.approx(want[0], rel=1e-10)
    for n, g in want[1].items():
        np.testing.assert_allclose(np.asarray(grads[n]), g, rtol=1e-10, atol=1e-12, err_msg=n)


@pytest.mark.parametrize(
    "lengths, message",
    [
        (np.array([6, 0, 4]), r"lengths\[1\] = 0; a length must be in 1..6"),
        (np.array([6, 2]), r"lengths has shape \(2,\); expected integers of shape \(3,\)"),
        (
            np.array([6.0, 2.0, 4.0]),
            r"lengths has dtype float64; expected integers of shape \(3,\)",
        ),
        (np.array([[6, 2, 4]]), r"lengths has shape \(1, 3\)"),
    ],
    ids=["zero", "wrong_batch", "float", "two_dimensional"],
)
def test_bad_lengths_are_named(lengths, message):
    cell = rs.cells.elman()
    params, inputs, targets = random_problem(cell, T=T, B=B)
    with pytest.raises(ValueError, match=message):
        rs.compile(cell).loss_and_grad(params, inputs, targets, lengths=lengths)


@pytest.mark.parametrize("k", [1, 2, T])
def test_truncated_bptt_takes_lengths(k):
    # each sequence of a padded batch truncated on its own, summed: the same, padding NaN
    cell = rs.cells.gru()
    kernel = rs.compile(cell, truncate=k)
    params, inputs, targets = random_problem(cell, T=T, B=B, seed=6)
    padded_inputs, padded_targets = _padded_with_nan(inputs, targets, set(), set())
    loss, grads = kernel.loss_and_grad(params, padded_inputs, padded_targets, lengths=LENGTHS)
    want_loss, want = _alone(kernel, params, inputs, targets, set())
    # the same terms summed in another order: rounding only
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for n, g in grads.items():
        np.testing.assert_allclose(g, want[n], rtol=1e-10, atol=1e-12, err_msg=n)


def test_the_torch_loss_of_a_padded_batch_is_differentiable_by_autograd():
    torch = pytest.importorskip("torch")
    cell = rs.cells.gru()
    params, inputs, targets = random_problem(cell, T=T, B=B, seed=7)
    _, want = rs.compile(cell).loss_and_grad(params, inputs, targets, lengths=LENGTHS)
    kernel = rs.compile(cell, backend="torch")
    tensors = {n: torch.tensor(a, requires_grad=True) for n, a in params.items()}
    loss = kernel.loss(
        tensors,
        {n: torch.tensor(a) for n, a in inputs.items()},
        {n: torch.tensor(a) for n, a in targets.items()},
        lengths=LENGTHS,
    )
    loss.backward()
    # the generated backward pass through autograd against the NumPy kernel: rounding only
    for n, g in want.items():
        np.testing.assert_allclose(tensors[n].grad.numpy(), g, rtol=1e-10, atol=1e-12, err_msg=n)
