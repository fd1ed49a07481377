"""The JAX backend: the generated module against the NumPy kernel, jax.grad through its
custom_vjp against JAX's own autodiff, jit, vmap, float32, bad input and its imports."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the JAX backend needs jax: pip install 'rnnsym[jax]'")
jax.config.update("jax_enable_x64", True)  # float64: the comparisons to 1e-10 below need it
import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import rnnsym as rs  # noqa: E402
from rnnsym import cells  # noqa: E402
from rnnsym.backends.jax import (  # noqa: E402
    JaxStatementPrinter,
    generate_module,
    loop_carry,
)
from rnnsym.backends.numpy_printer import Assign, Line, Loop, Store  # noqa: E402
from rnnsym.derive import derive  # noqa: E402
from rnnsym.kernel import compile_cell  # noqa: E402
from rnnsym.problems import random_problem  # noqa: E402


def held_out() -> rs.Cell:
    """A cell written for this test only: two states (h reads c of the same step), a gate that
    sees c(t-1) through a vector parameter, a context input given once per sequence, softplus,
    a parameter used in two updates and softmax cross-entropy over class indices."""
    cell = rs.Cell("held_out_jax")
    n, m, k = cell.dims("n m k")
    x, s = cell.input("x", m), cell.context("s", k)
    h, c = cell.state("h", n), cell.state("c", n)
    W, U, P = cell.param("W", n, n), cell.param("U", n, m), cell.param("P", n, k)
    d = cell.param("d", n)
    gate = rs.sigmoid(W @ h.prev + P @ s + d * c.prev)
    cell.update(c, gate * c.prev + (1 - gate) * rs.softplus(U @ x))
    cell.update(h, rs.tanh(W @ h.prev + c))
    V = cell.param("V", k, n)
    cell.loss(rs.softmax_cross_entropy(cell.output("o", V @ h), cell.target("y", k, classes=True)))
    return cell


MAKERS = {"elman": cells.elman, "lstm": cells.lstm, "gru": cells.gru, "held_out": held_out}
SIZES = {"n": 3, "m": 2, "k": 4}  # distinct sizes: a transposed product fails
T, B = 5, 2


@functools.cache
def kernels(name: str):
    cell = MAKERS[name]()
    return compile_cell(cell), compile_cell(cell, backend="jax")


def problem(name: str, seed: int = 0):
    cell = kernels(name)[0].cell
    return random_problem(cell, sizes=SIZES, T=T, B=B, seed=seed)


def h0_of(name: str, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    cell = kernels(name)[0].cell
    return {s: rng.normal(size=(B, SIZES["n"])) for s in cell.states}


def relative_error(got, want) -> float:
    got, want = np.asarray(got), np.asarray(want)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300))


# float64: both kernels run the same derived arithmetic, in a different order of summation
# (XLA's matrix products and reductions), so they agree to a few ulps (measured: <= 2e-15
# relative); 1e-10 is the bar and would still catch any wrong term, whose effect is O(1).
TOL64 = 1e-10


@pytest.mark.parametrize("name", MAKERS)
def test_loss_and_grads_match_numpy(name: str) -> None:
    numpy_kernel, jax_kernel = kernels(name)
    params, inputs, targets = problem(name)
    h0 = h0_of(name)
    loss, grads = numpy_kernel.loss_and_grad(params, inputs, targets, h0)
    jloss, jgrads = jax_kernel.loss_and_grad(params, inputs, targets, h0)
    assert isinstance(jloss, jax.Array) and jloss.dtype == jnp.float64
    assert relative_error(jloss, loss) < TOL64
    assert set(jgrads) == set(grads)
    for key in grads:
        assert jgrads[key].shape == grads[key].shape, key
        assert relative_error(jgrads[key], grads[key]) < TOL64, key
    # forward: the states and outputs
    states = numpy_kernel.forward(params, inputs, h0)
    jstates = jax_kernel.forward(params, inputs, h0)
    assert list(jstates) == list(states)  # the same keys in the same order
    for key in states:
        assert relative_error(jstates[key], states[key]) < TOL64, key
    if name in ("elman", "gru"):
        return  # vjp is the same generated function with full=True: two cells cover it
    # vjp: also the gradients of the inputs and of h(0)
    want = numpy_kernel.vjp(params, inputs, targets, h0)
    got = jax_kernel.vjp(params, inputs, targets, h0)
    for want_group, got_group in zip(want[1:], got[1:], strict=True):
        assert set(got_group) == set(want_group)
        for key in want_group:
            assert got_group[key].shape == want_group[key].shape, key
            assert relative_error(got_group[key], want_group[key]) < TOL64, key


def _plain_loss(out: dict) -> jax.Array:
    # an arbitrary nonlinear loss of every state and output, so every cotangent is nonzero
    return sum(jnp.sum(jnp.sin(out[k]) * (1.0 + 0.1 * i)) for i, k in enumerate(sorted(out)))


# elman: test_elman_grad_matches_hand_written_forward
@pytest.mark.parametrize("name", ["lstm", "gru", "held_out"])
def test_jax_grad_through_generated_backward(name: str) -> None:
    """jax.grad of a loss of forward's outputs (the custom_vjp, whose backward pass is the
    generated adjoint recurrence) equals jax.grad of the same loss through the generated
    forward with JAX's own autodiff (no custom_vjp): parameters, inputs and h(0)."""
    _, kernel = kernels(name)
    module = kernel.module
    params, inputs, _ = problem(name)
    h0 = h0_of(name)
    assert hasattr(module, "_seeded_loss_and_grad")

    def through_kernel(params, inputs, h0):
        return _plain_loss(kernel.forward(params, inputs, h0))

    def through_autodiff(params, inputs, h0):
        dims = module._check_arrays(module.SPEC, params, inputs, None, h0, False)
        params, states, full, _ = module._prepare(dims, params, inputs, None, h0, False)
        if hasattr(module, "_full_inputs"):
            full = module._full_inputs(full)
        return _plain_loss(module._forward(params, full, states, dict(dims[2])))

    got = jax.grad(through_kernel, argnums=(0, 1, 2))(params, inputs, h0)
    want = jax.jit(jax.grad(through_autodiff, argnums=(0, 1, 2)))(params, inputs, h0)
    # the same float64 arithmetic in another order (JAX's transposed scan vs the derived
    # recurrence): a few ulps apart; 1e-10 as above
    for got_group, want_group in zip(got, want, strict=True):
        for key in want_group:
            assert relative_error(got_group[key], want_group[key]) < TOL64, key


def test_grad_runs_the_seeded_adjoint_recurrence() -> None:
    """jax.grad of forward calls the generated _seeded_loss_and_grad (a fresh kernel: its
    compiled programs are traced here for the first time)."""
    kernel = compile_cell(cells.elman(), backend="jax")
    params, inputs, _ = problem("elman")
    calls = []
    original = kernel.module._seeded_loss_and_grad
    kernel.module._seeded_loss_and_grad = lambda *a: calls.append(1) or original(*a)
    jax.grad(lambda p: _plain_loss(kernel.forward(p, inputs)))(params)
    assert calls


def elman_forward_by_hand(params: dict, x: jax.Array, h0: jax.Array) -> dict:
    """Elman's forward pass, eqs. (2)-(4) of the report, written in plain jnp (independent of
    rnnsym's code generation)."""

    def step(h, x_t):
        h = jnp.tanh(params["b"] + h @ params["W"].T + x_t @ params["U"].T)
        return h, h

    _, h = jax.lax.scan(step, h0, x)
    return {"h": h, "o": h @ params["V"].T + params["c"]}


def test_elman_grad_matches_hand_written_forward() -> None:
    _, kernel = kernels("elman")
    params, inputs, _ = problem("elman")
    h0 = h0_of("elman")["h"]
    want_out = elman_forward_by_hand(params, inputs["x"], h0)
    got_out = kernel.forward(params, inputs, h0)
    for key in want_out:  # float64, a few ulps apart: 1e-10 as above
        assert relative_error(got_out[key], want_out[key]) < TOL64

    def by_kernel(params, x, h0):
        return _plain_loss(kernel.forward(params, {"x": x}, h0))

    def by_hand(params, x, h0):
        return _plain_loss(elman_forward_by_hand(params, x, h0))

    got = jax.grad(by_kernel, argnums=(0, 1, 2))(params, inputs["x"], h0)
    want = jax.grad(by_hand, argnums=(0, 1, 2))(params, inputs["x"], h0)
    for key in want[0]:
        assert relative_error(got[0][key], want[0][key]) < TOL64, key
    assert relative_error(got[1], want[1]) < TOL64
    assert relative_error(got[2], want[2]) < TOL64


@pytest.mark.parametrize("name", ["elman", "held_out"])
def test_check_grads(name: str) -> None:
    """jax.test_util.check_grads of forward (reverse mode, first order): the custom_vjp's
    backward against finite differences of the forward."""
    _, kernel = kernels(name)
    params, inputs, _ = problem(name)
    h0 = h0_of(name)

    def f(params, inputs, h0):
        return kernel.forward(params, inputs, h0)

    # check_grads' own float64 tolerance (atol = rtol = 1e-5 around central differences of
    # step 1e-4 in float64): a wrong adjoint term is off by O(1)
    check_grads(f, (params, inputs, h0), order=1, modes=["rev"])


@pytest.mark.parametrize("name", ["held_out"])
def test_jit_and_vmap(name: str) -> None:
    numpy_kernel, kernel = kernels(name)
    params, inputs, targets = problem(name)
    loss, grads = kernel.loss_and_grad(params, inputs, targets)
    jloss, jgrads = jax.jit(kernel.loss_and_grad)(params, inputs, targets)
    # jit compiles the same program: agreement to float64 rounding (1e-10 as above)
    assert relative_error(jloss, loss) < TOL64
    for key in grads:
        assert relative_error(jgrads[key], grads[key]) < TOL64, key
    jit_forward_grad = jax.jit(jax.grad(lambda p: _plain_loss(kernel.forward(p, inputs))))
    assert set(jit_forward_grad(params)) == set(params)
    # vmap over a leading axis of 3 problems: each equals the NumPy kernel on its own
    problems = [problem(name, seed=s) for s in range(3)]

    def stack(group):
        return {k: jnp.stack([p[group][k] for p in problems]) for k in problems[0][group]}

    batched = {g: stack(i) for i, g in enumerate(("params", "inputs", "targets"))}
    losses, batched_grads = jax.vmap(kernel.loss_and_grad)(
        batched["params"], batched["inputs"], batched["targets"]
    )
    for s, (p, i, t) in enumerate(problems):
        want_loss, want_grads = numpy_kernel.loss_and_grad(p, i, t)
        assert relative_error(losses[s], want_loss) < TOL64
        for key in want_grads:
            assert relative_error(batched_grads[key][s], want_grads[key]) < TOL64, key

    # vmap of jax.grad through forward's custom_vjp: each equals the unbatched gradient
    def plain(p, i):
        return _plain_loss(kernel.forward(p, i))

    vmapped = jax.vmap(jax.grad(plain))(batched["params"], batched["inputs"])
    for s, (p, i, _) in enumerate(problems):
        single = jax.grad(plain)(p, i)
        for key in single:  # the same program per problem: float64 rounding, 1e-10 as above
            assert relative_error(vmapped[key][s], single[key]) < TOL64, key


def test_float32() -> None:
    numpy_kernel, kernel = kernels("gru")
    params, inputs, targets = problem("gru")
    as32 = [{k: np.asarray(v, np.float32) for k, v in g.items()} for g in (params, inputs, targets)]
    loss, grads = numpy_kernel.loss_and_grad(params, inputs, targets)
    jloss, jgrads = jax.jit(kernel.loss_and_grad)(*as32)
    assert jloss.dtype == jnp.float32
    # float32 (eps 1.2e-7) against float64, T = 5 steps of O(1) values: 1e-4 relative allows
    # ~1000 ulps of accumulated rounding and still catches a wrong term
    assert relative_error(jloss, loss) < 1e-4
    for key in grads:
        assert jgrads[key].dtype == jnp.float32, key
        assert relative_error(jgrads[key], grads[key]) < 1e-4, key
    out = kernel.forward(as32[0], as32[1])
    g = jax.grad(lambda p: _plain_loss(kernel.forward(p, as32[1])))(as32[0])
    assert all(v.dtype == jnp.float32 for v in [*out.values(), *g.values()])


def test_bad_input_names_the_array() -> None:
    _, kernel = kernels("elman")
    params, inputs, targets = problem("elman")
    with pytest.raises(ValueError, match=r"inputs\['x'\] has shape \(5, 2\); expected \(T, B, m\)"):
        kernel.loss_and_grad(params, {"x": inputs["x"][:, :, 0]}, targets)
    bad = dict(params, W=params["W"][:, :2])
    with pytest.raises(ValueError, match=r"params\['W'\] has shape \(3, 2\); expected \(n, n\)"):
        kernel.forward(bad, inputs)
    with pytest.raises(ValueError, match=r"targets\['y'\] is missing"):
        kernel.loss_and_grad(params, inputs, {})
    with pytest.raises(ValueError, match=r"params\['Q'\] is not a name of this kernel"):
        kernel.forward(dict(params, Q=params["W"]), inputs)
    with pytest.raises(ValueError, match=r"inputs\['x'\] has dtype int64; expected float32"):
        kernel.forward(params, {"x": np.ones((T, B, 2), np.int64)})
    with pytest.raises(ValueError, match=r"h0\['h'\] has shape \(7,\); expected \(2, 3\)"):
        kernel.forward(params, inputs, np.zeros(7))
    # the checks read shapes only: under jit the same errors are raised while tracing
    with pytest.raises(ValueError, match=r"params\['W'\] has shape \(3, 2\)"):
        jax.jit(kernel.loss_and_grad)(bad, inputs, targets)
    # class indices are range-checked where their values are known
    held, held_kernel = kernels("held_out")
    params, inputs, targets = problem("held_out")
    targets = dict(targets, y=np.full((T, B), 9))
    with pytest.raises(ValueError, match=r"targets\['y'\] holds 9..9, not class indices"):
        held_kernel.loss_and_grad(params, inputs, targets)


@pytest.mark.parametrize("name", MAKERS)
def test_module_imports_only_jax(name: str, tmp_path) -> None:
    _, kernel = kernels(name)
    tree = ast.parse(kernel.source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported and all(m == "jax" or m.startswith("jax.") for m in imported), imported
    assert "JAX kernel" in ast.get_docstring(tree)
    # deterministic text: generated twice, byte for byte the same
    assert generate_module(derive(MAKERS[name]())) == kernel.source
    path = kernel.write(tmp_path / f"{name}.py")
    assert path.read_text(encoding="utf-8") == kernel.source
    assert kernel.backend == "jax" and kernel.spec == kernel.module.SPEC


def test_written_module_runs_without_rnnsym(tmp_path) -> None:
    """The written module, imported in a fresh interpreter where rnnsym cannot be imported,
    gives the loss of the kernel loaded here."""
    _, kernel = kernels("elman")
    path = kernel.write(tmp_path / "elman_jax.py")
    params, inputs, targets = problem("elman")
    np.savez(tmp_path / "data.npz", *[params[k] for k in params], inputs["x"], targets["y"])
    script = f"""
import sys
sys.modules["rnnsym"] = None  # any import of rnnsym fails
import importlib.util, jax, numpy as np
jax.config.update("jax_enable_x64", True)
spec = importlib.util.spec_from_file_location("k", {str(path)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
data = np.load({str(tmp_path / "data.npz")!r})
arrays = [data[f"arr_{{i}}"] for i in range(len(data.files))]
params = dict(zip({list(params)!r}, arrays))
loss, _ = module.loss_and_grad(params, {{"x": arrays[-2]}}, {{"y": arrays[-1]}})
print(repr(float(loss)))
"""
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    want = float(kernel.loss_and_grad(params, inputs, targets)[0])
    assert float(run.stdout.strip()) == want  # the same program on the same data: bit for bit


def test_carry_is_what_the_body_rebinds_of_the_names_bound_before() -> None:
    body = (
        Line("h_prev_t = h_all[t]"),
        Assign("h_t", "jnp.tanh(h_prev_t)"),
        Store("h_all", "t + 1", "h_t"),
        Line("acc += h_t"),
        Line("unused = h_t", defines="unused"),
    )
    loop = Loop("t", "range(T)", body)
    assert loop_carry(loop, {"h_all", "acc", "W"}) == ["h_all", "acc"]
    printer = JaxStatementPrinter({}, set())
    printer._bound = {"h_all", "acc"}
    text = printer.doprint(Loop("t", "range(T - 1, -1, -1)", body))
    assert "def _step0(carry, t):" in text
    assert "h_all = h_all.at[t + 1].set(h_t)" in text
    assert "(h_all, acc) = jax.lax.scan(_step0, (h_all, acc), jnp.arange(T), reverse=True)[0]" in (
        text
    )
    assert "unused" not in text  # an optional line nothing reads is left out
    # a write into an array in place would fail on a jax array: refused with the line named
    with pytest.raises(
        rs.DerivationError, match=r"cannot write into an array in place: 'g\[t\] = d'"
    ):
        loop_carry(Loop("t", "range(T)", (Line("g[t] = d"),)), {"g"})


def test_compile_dispatch_and_forward_mode_refused() -> None:
    kernel = rs.compile(cells.elman(), backend="jax")
    assert kernel.backend == "jax" and "jax.lax.scan" in kernel.source
    with pytest.raises(ValueError, match=r"mode='forward'.*jax backend"):
        compile_cell(cells.elman(), mode="forward", backend="jax")


def test_fed_back_cell_forward_uses_jax_autodiff() -> None:
    """An input fed back from a target (teacher forcing) is a target in vjp_cell, so forward is
    not a custom_vjp there: it is the generated scan, differentiated by JAX itself. loss_and_grad
    (which fills y(t-1) from the targets) still equals the NumPy kernel's."""
    cell = cells.get("teacher_forcing")
    numpy_kernel, kernel = compile_cell(cell), compile_cell(cell, backend="jax")
    assert not hasattr(kernel.module, "_seeded_loss_and_grad")
    params, inputs, targets = random_problem(cell, T=4, B=2)
    loss, grads = numpy_kernel.loss_and_grad(params, inputs, targets)
    jloss, jgrads = kernel.loss_and_grad(params, inputs, targets)
    assert relative_error(jloss, loss) < TOL64  # float64, a few ulps apart: 1e-10 as above
    for key in grads:
        assert relative_error(jgrads[key], grads[key]) < TOL64, key
    fed = dict(inputs)
    for name, target in cell.fed_back.items():
        y = targets[target]
        fed[name] = np.concatenate([np.zeros_like(y[:1]), y[:-1]])
    # the fed-back input given: forward's gradient by JAX, against finite differences
    check_grads(lambda p: kernel.forward(p, fed), (params,), order=1, modes=["rev"])


def test_user_names_never_become_code() -> None:
    """A cell name with quotes, a backslash, '#' and a line break stays inside the docstring;
    a quantity named like the module's jnp is refused with the clash named."""
    cell = rs.Cell('odd"""\\ #(1) above\nimport os')
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U = cell.param("W", n, n), cell.param("U", n, m)
    cell.update(h, rs.tanh(W @ h.prev + U @ x))
    cell.loss(rs.squared_error(h, cell.target("y", n)))
    tree = ast.parse(generate_module(derive(cell)))
    assert repr(cell.name) in ast.get_docstring(tree)  # the name as written, quoted
    assert not any(
        isinstance(node, ast.Import) and any(a.name == "os" for a in node.names)
        for node in ast.walk(tree)
    )
    clash = rs.Cell("clash")
    n, m = clash.dims("n m")
    x, h = clash.input("x", m), clash.state("h", n)
    W, U = clash.param("jnp", n, n), clash.param("U", n, m)
    clash.update(h, rs.tanh(W @ h.prev + U @ x))
    clash.loss(rs.squared_error(h, clash.target("y", n)))
    with pytest.raises(rs.DerivationError, match=r"reads the module's 'jnp'"):
        generate_module(derive(clash))


def test_a_step_local_name_read_after_the_loop_is_refused() -> None:
    """In a scan a name bound in the body exists for one step only: code after the loop that
    reads it is an error of the lowering, reported; binding it anew first is fine."""
    from rnnsym.backends.numpy_printer import Function

    body = (Assign("h_t", "h_all[t] * 2.0"), Store("h_all", "t + 1", "h_t"))
    head = (Line("h_all = jnp.zeros((T + 1, B, n), dtype=dtype)"), Loop("t", "range(T)", body))
    printer = JaxStatementPrinter({}, set())
    rebound = Function("f", ("T", "B", "n", "dtype"), "", (*head, Assign("h_t", "h_all[0]")))
    text = printer.doprint(rebound)  # no error: h_t is bound anew before it is read
    assert "(h_all,) = jax.lax.scan(_step0, (h_all,), jnp.arange(T))[0]" in text
    assert text.rstrip().endswith("h_t = h_all[0]")
    leaky = Function("f", ("T", "B", "n", "dtype"), "", (*head, Line("return h_t")))
    with pytest.raises(rs.DerivationError, match=r"binds 'h_t' for one step only"):
        JaxStatementPrinter({}, set()).doprint(leaky)


def test_a_parameter_only_the_loss_reads():
    # d enters only the loss ⟨d|h⟩: forward has no custom_vjp then (vjp_cell has no use for d)
    # and is differentiated by JAX itself; loss_and_grad is the generated one. 1e-10 relative:
    # float64 round-off of two evaluation orders of the same sums.
    cell = rs.Cell("loss_only_param")
    n, m = cell.dims("n"), cell.dims("m")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, d = cell.param("W", n, n), cell.param("U", n, m), cell.param("d", n)
    cell.update(h, rs.tanh(W @ h.prev + U @ x))
    cell.loss(rs.linear_loss(d, h))
    params, inputs, targets = random_problem(cell, T=3, B=2)
    want_loss, want = rs.compile(cell).loss_and_grad(params, inputs, targets)
    kernel = rs.compile(cell, backend="jax")
    loss, grads = kernel.loss_and_grad(params, inputs, targets)
    assert abs(float(loss) - want_loss) <= 1e-10 * abs(want_loss)
    for name, g in want.items():
        np.testing.assert_allclose(np.asarray(grads[name]), g, rtol=1e-10, atol=1e-12)
    by_jax = jax.grad(
        lambda W_: jnp.vdot(
            params["d"], kernel.forward({**params, "W": W_}, inputs)["h"].sum(axis=(0, 1))
        )
    )
    np.testing.assert_allclose(np.asarray(by_jax(params["W"])), want["W"], rtol=1e-10, atol=1e-12)
