"""Linear recurrences and the scan schedule (issue 14).

* ``derive(cell).linear_states`` classifies random cells correctly: every state of a random
  linear cell is linear, and a random perturbation that breaks linearity (a nonlinearity around
  the update, a matrix product with h(t−1), h(t−1) ∘ h(t−1), a coefficient that reads a state
  that is not linear) is named, with its cause;
* the scan kernel equals the sequential kernel of the same cell (loss, every gradient, the
  adjoints of the inputs and of h(0), the forward states), for random linear cells and random
  lengths T, including T = 1 and T not a square;
* the scan itself is exact for coefficients 0 and 1, near 0 and near 1, of any sign, and stays
  finite for T = 10⁶ (float64 and float32);
* ``rs.verify`` (oracle, finite differences) applies unchanged, and rejects a wrong scan kernel;
* the torch and JAX backends' scans equal the NumPy kernel.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rnnsym as rs
from rnnsym.backends.numpy_runtime import _linear_scan, _linear_scan_reverse
from rnnsym.errors import DerivationError
from rnnsym.problems import random_problem

try:  # imported here, not in a test: importing JAX touches NumPy's global random state once
    import jax

    jax.config.update("jax_enable_x64", True)  # float64: the comparisons to 1e-10 need it
except ImportError:  # the JAX test skips with a message
    jax = None

# why 1e-10: the scan and the loop evaluate the same derived formulas; they differ only in the
# order of the products and sums of the recurrence (the scan joins blocks of about sqrt(T)
# steps), a few ulp per step, ~1e-14 relative at these T. 1e-10 still catches any wrong term.
RTOL = 1e-10


# ----- random linear cells -----

COEFFICIENTS = ["one_minus_gate", "gate", "tanh_gate", "param", "constant", "zero", "one"]


@st.composite
def linear_cells(draw, mixed: bool = False) -> rs.Cell:
    """A random cell whose every state is h(t) = a(t) ∘ h(t−1) + b(t), a and b read x, the
    parameters and the states before it (current or previous value); with ``mixed``, one more
    state q = tanh(R q(t−1) + ...) that reads them, and perhaps a linear state p that reads q
    (scanned after q's loop)."""
    cell = rs.Cell("random_linear")
    n, m, k = cell.dims("n m k")
    x = cell.input("x", m)
    count = draw(st.integers(1, 3))
    states = [cell.state(f"s{i}", n) for i in range(count)]
    ids = iter(range(1000))

    def gate(kind: str):
        i = next(ids)
        pre = cell.param(f"W{i}", n, m) @ x + cell.param(f"b{i}", n)
        return {"sigmoid": rs.sigmoid, "tanh": rs.tanh}[kind](pre)

    for i, s in enumerate(states):
        kind = draw(st.sampled_from(COEFFICIENTS))
        coefficient = {
            "one_minus_gate": lambda: 1 - gate("sigmoid"),
            "gate": lambda: gate("sigmoid"),
            "tanh_gate": lambda: 0.9 * gate("tanh"),
            "param": lambda i=i: rs.sigmoid(cell.param(f"lam{i}", n)),
            "constant": lambda: 0.5,
            "zero": lambda: 0,
            "one": lambda: 1,
        }[kind]()
        j = next(ids)
        offset = cell.param(f"U{j}", n, m) @ x
        if draw(st.booleans()):
            offset = gate("sigmoid") * offset
        for earlier in states[:i]:  # read a state scanned before this one
            how = draw(st.sampled_from(["none", "now", "prev", "matrix_prev"]))
            if how == "now":
                offset = offset + gate("sigmoid") * earlier
            elif how == "prev":
                offset = offset + 0.5 * earlier.prev
            elif how == "matrix_prev":
                offset = offset + cell.param(f"P{next(ids)}", n, n) @ earlier.prev
        cell.update(s, coefficient * s.prev + offset if kind != "zero" else offset)
    total = states[0]
    for s in states[1:]:
        total = total + s
    if mixed:  # and a state that is not linear, reading the linear ones
        q = cell.state("q", n)
        update = cell.param("R", n, n) @ q.prev + cell.param("U_q", n, m) @ x
        for s in states:
            how = draw(st.sampled_from(["now", "prev", "matrix"]))
            if how == "now":
                update = update + gate("sigmoid") * s
            elif how == "prev":
                update = update + s.prev
            else:
                update = update + cell.param(f"Q{next(ids)}", n, n) @ s
        cell.update(q, rs.tanh(update))
        total = total + q
        if draw(st.booleans()):  # a linear state that reads q: scanned after the loop
            p = cell.state("p", n)
            gate_q = rs.sigmoid(cell.param("W_p", n, n) @ q + cell.param("b_p", n))
            offset = cell.param("U_p", n, n) @ draw(st.sampled_from([q, q.prev]))
            cell.update(p, gate_q * p.prev + offset + 0.5 * states[0].prev)
            total = total + p
    V = cell.param("V", k, n)
    cell.loss(rs.squared_error(cell.output("o", V @ total), cell.target("y", k)))
    return cell


def _close(a, b, what: str) -> None:
    a, b = np.asarray(a), np.asarray(b)
    scale = max(float(np.max(np.abs(b))), 1e-300)
    assert np.max(np.abs(a - b)) <= RTOL * scale, f"{what}: {np.max(np.abs(a - b))} vs {scale}"


def _agree(scan, sequential, params, inputs, targets) -> None:
    loss, grads, g_in, g_h0 = scan.vjp(params, inputs, targets)
    loss0, grads0, g_in0, g_h00 = sequential.vjp(params, inputs, targets)
    _close(loss, loss0, "loss")
    for group, group0, label in ((grads, grads0, "∇"), (g_in, g_in0, "∇x"), (g_h0, g_h00, "∇h0")):
        assert set(group) == set(group0)
        for name in group0:
            _close(group[name], group0[name], f"{label} {name}")
    states, states0 = scan.forward(params, inputs), sequential.forward(params, inputs)
    for name in states0:
        _close(states[name], states0[name], f"forward {name}")


@given(cell=linear_cells(), T=st.sampled_from([1, 2, 3, 7, 16, 17, 50]), B=st.sampled_from([1, 3]))
def test_random_linear_cells_scan_equals_loop(cell, T, B):
    linearity = rs.derive(cell).linear_states
    assert linearity.all_linear, linearity.text()
    scan = rs.compile(cell)
    assert scan.schedule == "scan"
    assert not re.search(r"for t in range\(T", scan.source)  # no loop over t in the kernel
    sequential = rs.compile(cell, schedule="sequential")
    assert sequential.schedule == "sequential"
    params, inputs, targets = random_problem(cell, T=T, B=B, seed=T + B)
    _agree(scan, sequential, params, inputs, targets)


@given(cell=linear_cells(mixed=True), T=st.sampled_from([1, 5, 17]))
def test_mixed_cells_scan_the_linear_states_and_loop_over_the_others(cell, T):
    linearity = rs.derive(cell).linear_states
    assert set(linearity.reasons) == {"q"} and "depends on" in linearity.reasons["q"]
    assert set(linearity.after) == ({"p"} & set(cell.states))  # p reads q: after the loop
    kernel = rs.compile(cell)
    assert kernel.schedule == "scan"
    assert set(kernel.scanned) == set(cell.states) - {"q"}
    assert re.search(r"for t in range\(T\)", kernel.source)  # the loop for q
    assert "_linear_scan(" in kernel.source
    sequential = rs.compile(cell, schedule="sequential")
    params, inputs, targets = random_problem(cell, T=T, B=2, seed=T)
    _agree(kernel, sequential, params, inputs, targets)


def test_a_state_scanned_after_the_loop_that_is_a_copy_of_a_looped_state():
    """h(t) = c(t−1) (coefficient 0, offset a looped state's past): the loop's carry of c is
    h's adjoint itself, read by the adjoint loop from h's reverse scan (the fuzzer found the
    adjoint loop without a name for it)."""
    cell = rs.Cell("copy_of_looped")
    n, m, k = cell.dims("n m k")
    x = cell.input("x", m)
    h, c = cell.state("h", n), cell.state("c", n)
    cell.update(h, c.prev)
    cell.update(c, rs.tanh(cell.param("P1", n, m) @ x + cell.param("P2", n, n) @ c.prev))
    cell.loss(rs.squared_error(cell.output("o0", cell.param("V3", k, n) @ h), cell.target("y0", k)))
    cell.loss(rs.squared_error(cell.output("o1", cell.param("V4", k, n) @ c), cell.target("y1", k)))
    assert rs.derive(cell).linear_states.after == ("h",)
    kernel = rs.compile(cell)
    params, inputs, targets = random_problem(cell, T=6, B=2, seed=4)
    _agree(kernel, rs.compile(cell, schedule="sequential"), params, inputs, targets)


# ----- cells that are not linear, and why -----

BREAKS = {
    "tanh": "depends on",  # tanh(a ∘ h(t−1) + b): the coefficient depends on h(t−1)
    "matrix": "matrix product",  # W h(t−1): not diagonal
    "square": "depends on",  # h(t−1) ∘ h(t−1)
    "reads_nonlinear": "not linear",  # the coefficient reads a state that is not linear
}


def _broken(kind: str) -> tuple[rs.Cell, str]:
    cell = rs.Cell(f"broken_{kind}")
    n, m = cell.dims("n m")
    x = cell.input("x", m)
    h = cell.state("h", n)
    z = rs.sigmoid(cell.param("W_z", n, m) @ x + cell.param("b_z", n))
    offset = z * (cell.param("U", n, m) @ x)
    target = "h"
    if kind == "tanh":
        cell.update(h, rs.tanh(0.5 * h.prev + offset))
    elif kind == "matrix":
        cell.update(h, cell.param("W", n, n) @ h.prev + offset)
    elif kind == "square":
        cell.update(h, 0.5 * h.prev * h.prev + offset)
    else:
        # q reads h(t−1) and h reads q: h can be scanned neither before nor after q's loop
        q = cell.state("q", n)
        cell.update(q, rs.tanh(cell.param("R", n, n) @ q.prev + offset + h.prev))
        cell.update(h, rs.sigmoid(q) * h.prev + offset)
        target = "h"
    cell.loss(rs.squared_error(cell.output("o", h), cell.target("y", n)))
    return cell, target


@pytest.mark.parametrize("kind", sorted(BREAKS))
def test_a_state_that_is_not_linear_is_named_with_its_cause(kind):
    cell, name = _broken(kind)
    linearity = rs.derive(cell).linear_states
    assert not linearity.all_linear
    assert BREAKS[kind] in linearity.reasons[name], linearity.reasons[name]
    assert f"{name}: not linear" in linearity.text()
    with pytest.raises(DerivationError, match=rf"schedule='scan'.*{name}: .*{BREAKS[kind]}"):
        rs.compile(cell, schedule="scan")
    kernel = rs.compile(cell)  # auto: the loop, still correct
    assert kernel.schedule == "sequential"
    assert re.search(r"for t in range\(T", kernel.source)


def test_built_in_nonlinear_cells_say_why():
    elman = rs.derive(rs.cells.elman()).linear_states
    assert "depends on h⁽ᵗ⁻¹⁾ through tanh(" in elman.reasons["h"]
    lstm = rs.derive(rs.cells.get("lstm")).linear_states
    # c(t) = f ∘ c(t−1) + i ∘ g is affine in c(t−1), but f, i and g read h(t−1)
    assert "affine in c⁽ᵗ⁻¹⁾" in lstm.reasons["c"] and "reads h" in lstm.reasons["c"]


def test_bad_schedule_option():
    with pytest.raises(ValueError, match="schedule='fast' is not a schedule; use one of"):
        rs.compile(rs.cells.elman(), schedule="fast")
    with pytest.raises(ValueError, match="forward"):
        rs.compile(_user_min_gru(), mode="forward", schedule="scan")


# ----- the scan itself: numerics -----


def _loop(a, b, h0):
    out = np.empty((len(b) + 1,) + b.shape[1:], dtype=b.dtype)
    out[0] = h0
    for t in range(len(b)):
        out[t + 1] = a[t] * out[t] + b[t]
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "coefficients",
    ["zero", "one", "near_zero", "near_one", "signed", "mixed"],
)
def test_scan_numerics(dtype, coefficients):
    rng = np.random.default_rng(7)
    T, shape = 5000, (2, 3)
    a = {
        "zero": np.zeros((T, *shape)),
        "one": np.ones((T, *shape)),
        "near_zero": rng.uniform(0, 1e-6, (T, *shape)),
        "near_one": 1 - rng.uniform(0, 1e-6, (T, *shape)),
        "signed": rng.uniform(-1, 1, (T, *shape)),
        "mixed": rng.choice([0.0, 1.0, 0.5, -1.0, 1 - 1e-7], (T, *shape)),
    }[coefficients].astype(dtype)
    b = rng.normal(size=(T, *shape)).astype(dtype)
    h0 = rng.normal(size=shape).astype(dtype)
    scanned = _linear_scan(a, b, h0, np.empty((T + 1, *shape), dtype=dtype))
    looped = _loop(a, b, h0)
    # why: float64 1e-10 as above; float32 4e-3, the loop's own rounding over T = 5000 steps
    # with |a| = 1 (h a random walk of ~70 steps' size) is ~T * 6e-8 relative per unit step
    tol = 1e-10 if dtype == np.float64 else 4e-3
    assert scanned.dtype == dtype
    assert np.all(np.isfinite(scanned))
    scale = np.max(np.abs(looped))
    assert np.max(np.abs(scanned - looped)) <= tol * scale
    c = rng.normal(size=(T, *shape)).astype(dtype)
    g = _linear_scan_reverse(a, c, np.empty((T, *shape), dtype=dtype))
    g_loop = _loop(a[1:][::-1], c[:-1][::-1], c[-1])[::-1]
    assert np.max(np.abs(g - g_loop)) <= tol * np.max(np.abs(g_loop))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scan_of_a_million_steps(dtype):
    """T = 10⁶ with coefficients in (0, 1) near 1 (long memory) and near 0: finite, and equal to
    the loop in float64. The scan forms no ratio or logarithm, so nothing can overflow."""
    rng = np.random.default_rng(0)
    T = 10**6
    a = np.where(rng.random((T, 1, 2)) < 0.5, 1 - 1e-6, 1e-3).astype(dtype)
    b = rng.normal(size=(T, 1, 2)).astype(dtype)
    h0 = np.ones((1, 2), dtype=dtype)
    scanned = _linear_scan(a, b, h0, np.empty((T + 1, 1, 2), dtype=dtype))
    assert np.all(np.isfinite(scanned))
    if dtype == np.float64:
        looped = _loop(a, b, h0)
        # why 1e-10: as above; ~1e-13 measured after 10⁶ steps
        assert np.max(np.abs(scanned - looped)) <= 1e-10 * np.max(np.abs(looped))


# ----- the verifier applies unchanged, and is not fooled -----


def _user_min_gru() -> rs.Cell:
    """minGRU (Feng et al., "Were RNNs All We Needed?", 2024) written through the public API."""
    cell = rs.Cell("user_min_gru")
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("h", n)
    W_z, b_z = cell.param("W_z", n, m), cell.param("b_z", n)
    W_h, b_h = cell.param("W_h", n, m), cell.param("b_h", n)
    z = cell.define("z", rs.sigmoid(W_z @ x + b_z))
    cell.update(h, (1 - z) * h.prev + z * (W_h @ x + b_h))
    V, c = cell.param("V", k, n), cell.param("c", k)
    cell.loss(rs.squared_error(cell.output("o", V @ h + c), cell.target("y", k)))
    return cell


def test_user_min_gru_compiles_to_a_verified_scan():
    cell = _user_min_gru()
    derivation = rs.derive(cell)
    assert list(derivation.linear_states.linear) == ["h"]
    text = derivation.linear_states.text()
    assert "h: linear" in text and "a⁽ᵗ⁾ = 1 − z⁽ᵗ⁾" in text
    assert "where z⁽ᵗ⁾ = sigmoid(W_z x⁽ᵗ⁾ + b_z)" in text
    kernel = rs.compile(cell)
    assert kernel.schedule == "scan"
    report = rs.verify(cell, kernel)
    assert report.ok, report
    # and central finite differences of the scan kernel's own loss, at a length with blocks
    # and a remainder (T = 40: blocks of 6 steps and 4 more), the check_gradients default
    # tolerance (1e-6 relative plus the rounding floor it reports)
    params, inputs, targets = random_problem(cell, T=40, B=2, seed=3)
    gradients = rs.check_gradients(kernel, params, inputs, targets)
    assert gradients.ok, gradients


MUTANTS = {
    # the carry into h(0) with the last coefficient instead of the first
    "carry_from_last_step": ("coef_h[0] * g_h[0]", "coef_h[-1] * g_h[0]"),
    # the adjoint scan with a(t) where a(t + 1) belongs
    "unshifted_coefficient": (
        "_linear_scan(a[1:][::-1], c[:-1][::-1], c[-1], out[::-1])",
        "_linear_scan(a[:-1][::-1], c[:-1][::-1], c[-1], out[::-1])",
    ),
    # the forward scan started from zero instead of h(0)
    "ignores_h0": ("    out[0] = h0\n", "    out[0] = 0\n"),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_verify_rejects_a_wrong_scan_kernel(mutant):
    from rnnsym.backends.base import Kernel

    cell = _user_min_gru()
    kernel = rs.compile(cell)
    old, new = MUTANTS[mutant]
    assert old in kernel.source, mutant
    wrong = Kernel(kernel.derivation, kernel.source.replace(old, new), kernel.mode)
    report = rs.verify(cell, wrong, oracle=False)
    assert not report.ok, mutant


# ----- torch and JAX -----


def test_torch_scan_equals_numpy():
    torch = pytest.importorskip("torch")
    cell = _user_min_gru()
    kernel = rs.compile(cell, backend="torch")
    assert kernel.schedule == "scan"
    reference = rs.compile(cell, schedule="sequential")
    params, inputs, targets = random_problem(cell, T=23, B=2)

    def tensors(d):
        return {k: torch.as_tensor(v) for k, v in d.items()}

    loss, grads = kernel.loss_and_grad(tensors(params), tensors(inputs), tensors(targets))
    loss0, grads0 = reference.loss_and_grad(params, inputs, targets)
    _close(float(loss), loss0, "loss")
    for name in grads0:
        _close(grads[name].numpy(), grads0[name], name)
    # forward() is differentiable by autograd through the generated (scan) backward pass
    p = {k: v.requires_grad_() for k, v in tensors(params).items()}
    x = tensors(inputs)["x"].requires_grad_()
    assert torch.autograd.gradcheck(
        lambda W_z, x: kernel.forward({**p, "W_z": W_z}, {"x": x})["h"].sum(),
        (p["W_z"], x),
    )


@pytest.mark.skipif(jax is None, reason="the JAX backend needs jax: pip install 'rnnsym[jax]'")
def test_jax_scan_equals_numpy():
    cell = _user_min_gru()
    kernel = rs.compile(cell, backend="jax")
    assert kernel.schedule == "scan"
    assert "jax.lax.associative_scan" in kernel.source
    reference = rs.compile(cell, schedule="sequential")
    params, inputs, targets = random_problem(cell, T=23, B=2)
    loss, grads = kernel.loss_and_grad(params, inputs, targets)
    loss0, grads0, g_in0, g_h00 = reference.vjp(params, inputs, targets)
    _close(float(loss), loss0, "loss")
    for name in grads0:
        _close(grads[name], grads0[name], name)
    _, _, g_in, g_h0 = kernel.vjp(params, inputs, targets)
    _close(g_in["x"], g_in0["x"], "∇x")
    _close(g_h0["h"], g_h00["h"], "∇h0")


# ----- the documentation page runs as written, and prints what it shows -----


def test_scan_page_runs_and_prints_what_it_shows(capsys):
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "scan.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```(?:\n\n```text\n(.*?)```)?", text, re.S)
    namespace = {"__name__": "__scan_doc__"}
    for i, (code, shown) in enumerate(blocks):
        exec(compile(code, f"scan-doc-block-{i}", "exec"), namespace)
        out = capsys.readouterr().out
        if shown:
            assert out == shown, f"block {i} prints\n{out}"
    assert namespace["kernel"].schedule == "scan" and namespace["kernel"].scanned == ("h",)


@pytest.mark.parametrize("T", [1, 2, 3, 5, 16, 17, 101])
def test_torch_scans_equal_the_loop(T):
    """The torch module's own scans (its helpers, copied into every module) for lengths with
    and without a remainder after the blocks; the adjoint scan walks its blocks backwards."""
    torch = pytest.importorskip("torch")
    from rnnsym.backends import torch as torch_backend

    namespace = {"torch": torch}
    for name in ("_linear_scan", "_linear_scan_reverse"):
        exec(torch_backend._HELPERS[name], namespace)
    rng = np.random.default_rng(T)
    a, b, c = rng.uniform(-1, 1, (T, 2, 3)), rng.normal(size=(T, 2, 3)), rng.normal(size=(T, 2, 3))
    h0 = rng.normal(size=(2, 3))
    out = namespace["_linear_scan"](
        torch.as_tensor(a),
        torch.as_tensor(b),
        torch.as_tensor(h0),
        torch.empty(T + 1, 2, 3, dtype=torch.float64),
    )
    _close(out.numpy(), _loop(a, b, h0), "torch scan")
    g = namespace["_linear_scan_reverse"](
        torch.as_tensor(a), torch.as_tensor(c), torch.empty(T, 2, 3, dtype=torch.float64)
    )
    _close(g.numpy(), _loop(a[1:][::-1], c[:-1][::-1], c[-1])[::-1], "torch adjoint scan")


@pytest.mark.skipif(jax is None, reason="the JAX backend needs jax: pip install 'rnnsym[jax]'")
@pytest.mark.parametrize("platform", ["cpu", "gpu"])
@pytest.mark.parametrize("T", [1, 2, 3, 17, 100])
def test_jax_scans_equal_the_loop_on_each_platform(platform, T):
    """The JAX module's scans take jax.lax.scan on a CPU and jax.lax.associative_scan on a GPU
    or TPU; both branches run here (the platform faked for the branch), against the loop."""
    import types

    from rnnsym.backends import jax as jax_backend

    fake = types.SimpleNamespace(lax=jax.lax, default_backend=lambda: platform)
    namespace = {"jax": fake, "jnp": jax.numpy}
    for name in ("_linear_scan", "_linear_scan_reverse"):
        exec(jax_backend._JAX_HELPERS[name], namespace)
    rng = np.random.default_rng(T)
    a, b, c = rng.uniform(-1, 1, (T, 2, 3)), rng.normal(size=(T, 2, 3)), rng.normal(size=(T, 2, 3))
    h0 = rng.normal(size=(2, 3))
    out = namespace["_linear_scan"](a, b, h0, np.empty((T + 1, 2, 3)))
    _close(np.asarray(out), _loop(a, b, h0), f"jax scan ({platform})")
    g = namespace["_linear_scan_reverse"](a, c, np.empty((T, 2, 3)))
    _close(
        np.asarray(g), _loop(a[1:][::-1], c[:-1][::-1], c[-1])[::-1], f"jax adjoint ({platform})"
    )


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_padded_batches_keep_the_scan(backend):
    """lengths=: the masked cell (each step's loss weighted by a mask input) of a linear cell
    is linear too, so a padded batch runs the scan as well (a review found it running the
    loop), and equals the loop's result."""
    if backend == "torch":
        torch = pytest.importorskip("torch")
    if backend == "jax" and jax is None:
        pytest.skip("the JAX backend needs jax: pip install 'rnnsym[jax]'")
    from rnnsym.backends.lengths import masked_kernel

    cell = _user_min_gru()
    scan = rs.compile(cell, backend=backend)
    loop = rs.compile(cell, schedule="sequential")
    params, inputs, targets = random_problem(cell, T=12, B=3, seed=5)
    lengths = [12, 7, 1]
    loss0, grads0 = loop.loss_and_grad(params, inputs, targets, lengths=lengths)
    if backend == "torch":
        as_tensors = (
            {k: torch.as_tensor(v) for k, v in params.items()},
            {"x": torch.as_tensor(inputs["x"])},
            {"y": torch.as_tensor(targets["y"])},
        )
        loss, grads = scan.loss_and_grad(*as_tensors, lengths=lengths)
        grads = {k: v.numpy() for k, v in grads.items()}
    else:
        loss, grads = scan.loss_and_grad(params, inputs, targets, lengths=lengths)
    _close(float(loss), loss0, "loss")
    for name in grads0:
        _close(np.asarray(grads[name]), grads0[name], name)
    masked, _ = masked_kernel(scan)
    assert masked.schedule == "scan" and "_linear_scan(" in masked.source


def test_torch_module_trains_through_the_scan():
    """The nn.Module of a scan kernel: loss.backward() runs the generated scan backward and
    gives the NumPy kernel's gradients; Adam steps on them lower the loss."""
    torch = pytest.importorskip("torch")
    cell = _user_min_gru()
    kernel = rs.compile(cell, backend="torch")
    params, inputs, targets = random_problem(cell, T=30, B=4, seed=1)
    module = kernel.Module(params=params, dtype=torch.float64)
    x = {"x": torch.as_tensor(inputs["x"])}
    y = {"y": torch.as_tensor(targets["y"])}
    loss = module.loss(x, y)
    loss.backward()
    _, grads0 = rs.compile(cell, schedule="sequential").loss_and_grad(params, inputs, targets)
    for name, parameter in module.params.items():
        _close(parameter.grad.numpy(), grads0[name], name)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    first = float(loss.detach())
    for _ in range(20):
        optimizer.zero_grad()
        loss = module.loss(x, y)
        loss.backward()
        optimizer.step()
    # the targets are random, so part of the loss cannot be fitted: 20 steps lower it by 18%
    # (measured); by 10% is a margin that a gradient of the wrong sign or size cannot reach
    assert float(loss.detach()) < 0.9 * first


def test_a_constant_term_in_the_coefficient_on_every_backend():
    """a(t) = σ(W_a x + b_a) − 0.3: the coefficient has a constant part, which the NumPy kernel
    writes into its array with a ufunc and the torch kernel must broadcast itself (a review
    found the torch scan kernel failing on it)."""
    torch = pytest.importorskip("torch")
    cell = rs.Cell("constant_in_coefficient")
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("h", n)
    a = rs.sigmoid(cell.param("W_a", n, m) @ x + cell.param("b_a", n))
    cell.update(h, a * h.prev - 0.3 * h.prev + cell.param("U", n, m) @ x)
    cell.loss(rs.squared_error(cell.output("o", cell.param("V", k, n) @ h), cell.target("y", k)))
    params, inputs, targets = random_problem(cell, T=9, B=3, seed=2)
    loss0, grads0 = rs.compile(cell, schedule="sequential").loss_and_grad(params, inputs, targets)

    def tensors(d):
        return {name: torch.as_tensor(v) for name, v in d.items()}

    results = {"numpy": rs.compile(cell).loss_and_grad(params, inputs, targets)}
    kernel = rs.compile(cell, backend="torch")
    loss, grads = kernel.loss_and_grad(tensors(params), tensors(inputs), tensors(targets))
    results["torch"] = float(loss), {name: g.numpy() for name, g in grads.items()}
    if jax is not None:
        results["jax"] = rs.compile(cell, backend="jax").loss_and_grad(params, inputs, targets)
    for backend, (loss, grads) in results.items():
        _close(float(loss), loss0, f"{backend} loss")
        for name in grads0:
            _close(np.asarray(grads[name]), grads0[name], f"{backend} {name}")
