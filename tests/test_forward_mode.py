"""Forward mode (real-time recurrent learning): ``rs.compile(cell, mode="forward")``.

The forward-mode kernel has the reverse-mode kernel's API and must give the same loss and
gradients for every cell, computed by propagating the sensitivities ∂q(t)/∂θ forward in time
(in the slides' bra-ket form, the right action of (𝕀 − 𝔾𝕁_h𝕊)⁻¹) with memory independent of T.
Checked here: equality with reverse mode over random sizes, lengths, batches, weights and initial
states; central finite differences; peak memory against T; the generated source (deterministic,
NumPy only); and the errors for a bad mode and for expressions forward mode cannot seed.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sympy as sp
from cells import CATALOGUE
from hypothesis import given, note
from hypothesis import strategies as st

import rnnsym as rs
from rnnsym.ir.expr import Term
from rnnsym.ir.jvp import param_tangent, tangent
from rnnsym.ir.ops import Apply, LogSumExp, Softmax, mul
from rnnsym.verify import random_problem

# ----- cells -----


def exotic() -> rs.Cell:
    """What the built-ins do not have: a state without parameters (zero sensitivity), a state
    using another state of the same step, an output reading a gate of h(t-1) (a direct path
    from L(t) to h(t-1)), a parameter used by an update and by an output, a vector parameter
    multiplying a state elementwise, two losses."""
    cell = rs.Cell("exotic")
    n, m, k = cell.dims("n m k")
    x = cell.input("x", m)
    h, s, z = cell.state("h", n), cell.state("s", n), cell.state("z", m)
    W, U, Wq = cell.param("W", n, n), cell.param("U", n, m), cell.param("Wq", n, n)
    bq, p, V = cell.param("bq", n), cell.param("p", n), cell.param("V", k, n)
    q = cell.define("q", rs.sigmoid(Wq @ h.prev + bq))
    cell.update(z, 0.5 * z.prev + x)
    cell.update(h, q * rs.tanh(W @ h.prev + U @ z) + 0.5 * h.prev)
    cell.update(s, s.prev * p + 0.1 * h)
    o = cell.output("o", V @ (s + q))
    r = cell.output("r", Wq @ h)
    cell.loss(rs.squared_error(o, cell.target("y", k)))
    cell.loss(rs.softmax_cross_entropy(r, cell.target("c", n)))
    return cell


def logsumexp_gate() -> rs.Cell:
    """An update scaled by a logsumexp: a 1×1 factor per row (reverse mode cannot print it)."""
    cell = rs.Cell("logsumexp_gate")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U = cell.param("W", n, n), cell.param("U", n, m)
    gate = LogSumExp((U @ x).expr + h.prev.expr)
    cell.update(h, 0.5 * Term(mul(rs.tanh(W @ h.prev + U @ x).expr, gate), cell))
    cell.loss(rs.squared_error(h, cell.target("y", n)))
    return cell


CELLS = {
    **{n: b.make for n, b in rs.cells.BUILTIN.items()},
    **CATALOGUE,
    "exotic": exotic,
}


@functools.cache
def kernels(name: str) -> tuple[rs.Cell, Any, Any]:
    """(cell, reverse-mode kernel, forward-mode kernel), compiled once per test session."""
    cell = CELLS[name]()
    # the loop, as forward mode runs it: the scan of a linear cell (the default schedule)
    # rounds differently, and the states are compared bit for bit below
    return cell, rs.compile(cell, schedule="sequential"), rs.compile(cell, mode="forward")


# ----- random problems -----


@dataclasses.dataclass(frozen=True)
class Case:
    """Sizes, length, batch, seed, weight scale and whether h0 is given: one random problem."""

    sizes: tuple[tuple[str, int], ...]
    T: int
    B: int
    seed: int
    scale: float
    with_h0: bool

    def problem(self, cell: rs.Cell, dtype=np.float64) -> tuple[dict, dict, dict, dict | None]:
        """(params, inputs, targets, h0); weights ~ N(0, (0.8 scale)² / fan_in), vectors 1-D."""
        rng = np.random.default_rng(self.seed)
        symbols = {cell.size_symbols[n]: v for n, v in self.sizes}

        def size(expr) -> int:
            return int(sp.sympify(expr).subs(symbols))

        params = {}
        for name, p in cell.params.items():
            rows, cols = p.symbol.shape
            if cols == 1:  # a vector parameter, even where its size is 1
                params[name] = rng.normal(0.0, 0.3 * self.scale, size=size(rows))
            else:
                std = 0.8 * self.scale / np.sqrt(size(cols))
                params[name] = rng.normal(0.0, std, size=(size(rows), size(cols)))

        def sequences(group: dict) -> dict:
            arrays = {}
            for n, v in group.items():
                if n in cell.fed_back:
                    continue  # y(t-1): filled from the targets by the kernel
                if n in cell.class_targets:  # class indices (T, B)
                    arrays[n] = rng.integers(0, size(v.shape[0]), size=(self.T, self.B))
                elif n in cell.context_inputs:  # once per sequence (B, size)
                    arrays[n] = rng.normal(size=(self.B, size(v.shape[0])))
                else:
                    arrays[n] = rng.normal(size=(self.T, self.B, size(v.shape[0])))
            return arrays

        inputs, targets = sequences(cell.inputs), sequences(cell.targets)
        h0 = None
        if self.with_h0:
            h0 = {n: rng.normal(size=(self.B, size(s.shape[0]))) for n, s in cell.states.items()}

        def cast(group: dict | None) -> dict | None:
            if group is None:
                return None
            return {n: v if v.dtype.kind in "iu" else v.astype(dtype) for n, v in group.items()}

        return cast(params), cast(inputs), cast(targets), cast(h0)


def cases(cell: rs.Cell) -> st.SearchStrategy[Case]:
    """Every size of the cell in 1..5, T in 1..8, B in 1..4, weight scale in [0.5, 1.5]."""
    sizes = st.tuples(
        *[st.tuples(st.just(n), st.integers(1, 5)) for n in sorted(cell.size_symbols)]
    )
    return st.builds(
        Case,
        sizes=sizes,
        T=st.integers(1, 8),
        B=st.integers(1, 4),
        seed=st.integers(0, 2**32 - 2),
        scale=st.floats(0.5, 1.5, allow_nan=False),
        with_h0=st.booleans(),
    )


# Forward and reverse mode compute the same sums of the same products, in a different order
# (forward: Σ_t dᵀ(t) ∂q(t)/∂θ accumulated step by step; reverse: adjoints accumulated backwards
# and contracted once). In float64 they differ by rounding only, ~1e-16 per operation, amplified
# over T <= 8 steps of O(1) weights by at most a few orders of magnitude; rtol 1e-10 leaves a wide
# margin and still catches any missing or wrong term. atol = 1e-12 * max(1, max|reverse|) covers
# entries that cancel to ~0, judged at the array's own scale.
RTOL, ATOL = 1e-10, 1e-12


def assert_same(forward: tuple, reverse: tuple, label: str) -> None:
    (loss_f, grads_f), (loss_r, grads_r) = forward, reverse
    assert np.ndim(loss_f) == 0 and np.asarray(loss_f).dtype == np.asarray(loss_r).dtype
    scale = max(1.0, abs(float(loss_r)))
    np.testing.assert_allclose(float(loss_f), float(loss_r), rtol=RTOL, atol=ATOL * scale)
    assert list(grads_f) == list(grads_r), label
    for name, expected in grads_r.items():
        got = grads_f[name]
        assert got.shape == expected.shape and got.dtype == expected.dtype, (label, name)
        scale = max(1.0, float(np.max(np.abs(expected))))
        np.testing.assert_allclose(
            got, expected, rtol=RTOL, atol=ATOL * scale, err_msg=f"{label}: {name}"
        )


@pytest.mark.parametrize("name", sorted(CELLS))
@given(data=st.data())
def test_forward_mode_equals_reverse_mode(name: str, data: st.DataObject) -> None:
    """Loss and every gradient agree with BPTT; inputs are left unchanged; forward() agrees."""
    cell, reverse, forward = kernels(name)
    case = data.draw(cases(cell), label="case")
    note(repr(case))
    params, inputs, targets, h0 = case.problem(cell)
    saved = {k: v.copy() for group in (params, inputs, targets) for k, v in group.items()}
    result = forward.loss_and_grad(params, inputs, targets, h0)
    for group in (params, inputs, targets):
        for k, v in group.items():
            np.testing.assert_array_equal(v, saved[k], strict=True)
    assert_same(result, reverse.loss_and_grad(params, inputs, targets, h0), name)
    for fed, target in cell.fed_back.items():  # forward() is given y(t-1) explicitly
        y = targets[target]
        if target in cell.class_targets:
            y = np.eye(params["V"].shape[0])[y]
        inputs = {**inputs, fed: np.concatenate([np.zeros_like(y[:1]), y[:-1]])}
    states_f, states_r = forward.forward(params, inputs, h0), reverse.forward(params, inputs, h0)
    for key, value in states_r.items():
        np.testing.assert_array_equal(states_f[key], value)


@pytest.mark.parametrize("name", ["elman", "gru", "lstm_peephole", "exotic"])
def test_forward_mode_matches_finite_differences(name: str) -> None:
    cell, _, forward = kernels(name)
    params, inputs, targets = random_problem(cell, T=5, B=2, seed=3)
    report = rs.check_gradients(forward, params, inputs, targets)
    # central differences at eps = 1e-6 are accurate to ~1e-8 relative for these smooth cells
    assert report.ok, str(report)


def test_logsumexp_in_an_update_matches_finite_differences() -> None:
    """The JVP of logsumexp (a 1×1 factor per batch row), which reverse mode cannot print."""
    cell = logsumexp_gate()
    kernel = rs.compile(cell, mode="forward")
    params, inputs, targets = random_problem(cell, T=4, B=3, seed=0)
    report = rs.check_gradients(kernel, params, inputs, targets)
    assert report.ok, str(report)


@pytest.mark.parametrize("name", ["elman", "lstm", "gru_original"])
def test_float32_stays_float32_and_follows_float64(name: str) -> None:
    cell, _, forward = kernels(name)
    params, inputs, targets = random_problem(cell, T=6, B=3, seed=2)
    loss64, grads64 = forward.loss_and_grad(params, inputs, targets)

    def f32(d: dict) -> dict:
        return {k: v.astype(np.float32) for k, v in d.items()}

    loss32, grads32 = forward.loss_and_grad(f32(params), f32(inputs), f32(targets))
    assert np.asarray(loss32).dtype == np.float32
    # float32 rounding (1.2e-7) through 6 steps of O(1) weights: 1e-4 of the largest entry
    assert abs(loss32 - loss64) <= 1e-4 * max(1.0, abs(loss64))
    for key, g in grads64.items():
        assert grads32[key].dtype == np.float32
        np.testing.assert_allclose(grads32[key], g, rtol=0, atol=1e-4 * max(1.0, np.abs(g).max()))


# ----- memory: nothing with a T axis -----


def peak_bytes(fn, *args) -> int:
    """Peak bytes traced during ``fn(*args)`` (NumPy's array buffers are traced)."""
    fn(*args)  # warm-up: anything cached on the first call is not counted
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_forward_mode_memory_does_not_grow_with_T() -> None:
    """Peak memory at T = 400 is within 1.5x of T = 50 (reverse mode: more than 4x)."""
    cell, reverse, forward = kernels("elman")
    sizes = {"n": 8, "m": 4, "k": 3}
    peaks = {}
    for T in (50, 400):
        params, inputs, targets = random_problem(cell, sizes, T=T, B=2, seed=0)
        for label, kernel in (("forward", forward), ("reverse", reverse)):
            peaks[label, T] = peak_bytes(kernel.loss_and_grad, params, inputs, targets)
    assert peaks["forward", 400] <= 1.5 * peaks["forward", 50], peaks
    assert peaks["reverse", 400] >= 4 * peaks["reverse", 50], peaks


# ----- the kernel object and its source -----


def test_kernel_api() -> None:
    cell, _, forward = kernels("elman")
    assert forward.mode == "forward" and rs.compile(rs.cells.elman()).mode == "reverse"
    assert "forward mode" in repr(forward)
    assert forward.cell is cell and forward.spec["params"]["W"] == ("n", "n")
    for text in ("(𝕀 − 𝔾𝕁_h𝕊)⁻¹", "the slides", "eq. (4)", "eq. (5)", "S_h_prev"):
        assert text in forward.source, text


def test_source_is_deterministic() -> None:
    for name in ("elman", "lstm", "gru_original"):
        first = rs.compile(CELLS[name](), mode="forward").source
        assert first.encode() == rs.compile(CELLS[name](), mode="forward").source.encode()
        assert first.encode() == kernels(name)[2].source.encode()


# Determinism across PYTHONHASHSEED of every built-in cell's forward-mode source (and reverse
# mode's) is checked in one subprocess batch: test_elman_kernel.py,
# test_source_is_deterministic_across_hash_seeds.


def test_source_imports_only_numpy() -> None:
    for name in ("elman", "lstm"):
        imported = set()
        for node in ast.walk(ast.parse(kernels(name)[2].source)):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add((node.module or "").split(".")[0])
        assert imported == {"numpy"}, imported


_STANDALONE_SCRIPT = textwrap.dedent(
    """
    import importlib
    import sys

    module_dir, data_path, out_path = sys.argv[1:4]
    sys.modules["rnnsym"] = None  # any `import rnnsym[.x]` now raises ImportError
    sys.modules["sympy"] = None
    sys.path.insert(0, module_dir)
    import numpy as np

    mod = importlib.import_module("lstm_forward_mode")
    data = np.load(data_path)
    params = {k[2:]: data[k] for k in data.files if k.startswith("p_")}
    h0 = {"h": data["h0_h"], "c": data["h0_c"]}
    loss, grads = mod.loss_and_grad(params, {"x": data["x"]}, {"y": data["y"]}, h0=h0)
    np.savez(out_path, loss=np.asarray(loss), **grads)
    """
)


def test_written_source_runs_without_rnnsym_or_sympy(tmp_path: Path) -> None:
    cell, _, forward = kernels("lstm")
    forward.write(tmp_path / "lstm_forward_mode.py")
    case = Case(sizes=(("k", 2), ("m", 3), ("n", 2)), T=4, B=2, seed=7, scale=1.0, with_h0=True)
    params, inputs, targets, h0 = case.problem(cell)
    data_path, out_path = tmp_path / "data.npz", tmp_path / "out.npz"
    np.savez(
        data_path,
        x=inputs["x"],
        y=targets["y"],
        **{f"p_{k}": v for k, v in params.items()},
        **{f"h0_{k}": v for k, v in h0.items()},
    )
    env = {"PYTHONPATH": str(tmp_path), "PATH": os.environ.get("PATH", "")}
    for var in ("HOME", "SYSTEMROOT"):
        if var in os.environ:
            env[var] = os.environ[var]
    result = subprocess.run(
        [sys.executable, "-c", _STANDALONE_SCRIPT, str(tmp_path), str(data_path), str(out_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    loss, grads = forward.loss_and_grad(params, inputs, targets, h0)
    with np.load(out_path) as out:
        assert float(out["loss"]) == float(loss)
        for key, value in grads.items():
            np.testing.assert_array_equal(out[key], value)


# ----- errors -----


def test_bad_arrays_get_the_same_errors_as_in_reverse_mode() -> None:
    cell, reverse, forward = kernels("elman")
    params, inputs, targets = random_problem(cell, T=3, B=2, seed=0)
    bad_calls = [
        (dict(params, W=params["W"][:, :1]), inputs, targets),
        (params, {"x": inputs["x"].astype(np.float32)}, targets),
        (params, inputs, {"y": targets["y"][:2]}),
    ]
    for args in bad_calls:
        messages = []
        for kernel in (reverse, forward):
            with pytest.raises(ValueError) as info:
                kernel.loss_and_grad(*args)
            messages.append(str(info.value))
        assert messages[0] == messages[1]


@pytest.mark.parametrize("mode", ["sideways", "Forward", None, 1])
def test_an_unknown_mode_is_a_value_error_naming_it(mode: object) -> None:
    with pytest.raises(
        ValueError, match=r"mode=.*not a differentiation mode.*'reverse'.*'forward'"
    ):
        rs.compile(rs.cells.elman(), mode=mode)


def test_a_transposed_parameter_in_an_update_is_named() -> None:
    cell = rs.Cell("transposed")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U = cell.param("W", n, n), cell.param("U", n, m)
    cell.update(h, rs.tanh(W.T @ h.prev + U @ x))
    cell.loss(rs.squared_error(h, cell.target("y", n)))
    rs.compile(cell)  # reverse mode has no problem with Wᵀ
    with pytest.raises(rs.DerivationError, match=r"update of h = .*W\.T.*transposed parameter W"):
        rs.compile(cell, mode="forward")


def test_softmax_and_unknown_nodes_have_no_forward_rule() -> None:
    n = sp.Symbol("n", integer=True, positive=True)
    W, h = sp.MatrixSymbol("W", n, n), sp.MatrixSymbol("h", n, 1)
    with pytest.raises(rs.DerivationError, match=r"softmax inside a cell \(softmax\(W\*h\)\)"):
        tangent(Softmax(mul(W, h)), h, {W: param_tangent(W)})

    class Mystery(sp.MatrixExpr):
        shape = (n, 1)

    with pytest.raises(rs.DerivationError, match="no forward-mode rule for Mystery"):
        tangent(Apply("tanh", Mystery(h)), h, {h: h})
