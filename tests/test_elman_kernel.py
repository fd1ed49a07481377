"""Property tests of the generated Elman kernel against the hand-written oracle.

The kernel comes from the session fixture ``elman_kernel`` (``rs.compile(rs.cells.elman())``);
the oracle is ``reference_elman.elman_reference``, the report's eqs. (2)-(9) written out per
time step. Kernel contract exercised here:

- ``kernel.loss_and_grad(params, {"x": x}, {"y": y}, h0=None) -> (loss, grads)``
- ``kernel.forward(params, {"x": x}, h0=None) -> {"h": (T, B, n), "o": (T, B, k)}``
- float32 and float64 inputs, outputs in the input dtype;
- ``kernel.source``: the generated module's text, importing only numpy, defining the same
  ``loss_and_grad`` / ``forward`` at module level.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import example, given, note
from hypothesis import strategies as st
from reference_elman import (
    PARAM_NAMES,
    central_differences,
    elman_reference,
    random_problem,
    rel_err,
)

Problem = tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray | None]


@dataclasses.dataclass(frozen=True)
class Case:
    """Sizes and seed of one random problem; arrays are built from ``default_rng(seed)``."""

    n: int
    m: int
    k: int
    T: int
    B: int
    seed: int
    scale: float = 1.0
    with_h0: bool = False

    def problem(self, dtype: type[np.floating] = np.float64) -> Problem:
        """``(params, x, y, h0)`` in ``dtype``; weights ~ N(0, scale^2 / fan_in)."""
        return random_problem(
            self.n, self.m, self.k, self.T, self.B, self.seed, self.scale, self.with_h0, dtype
        )


def cases(max_dim: int = 8, max_T: int = 12, max_B: int = 4) -> st.SearchStrategy[Case]:
    """Sizes n, m, k in 1..max_dim, T in 1..max_T, B in 1..max_B, a seed and a weight scale."""
    dim = st.integers(1, max_dim)
    return st.builds(
        Case,
        n=dim,
        m=dim,
        k=dim,
        T=st.integers(1, max_T),
        B=st.integers(1, max_B),
        seed=st.integers(0, 2**32 - 1),
        scale=st.floats(0.1, 2.0, allow_nan=False, allow_infinity=False),
        with_h0=st.booleans(),
    )


# Edge cases pinned with @example: a single step of a single sequence of scalars (T = B = 1,
# n = m = k = 1: eq. (9) then has no recurrent term), with and without h0; and the longest
# scalar sequence at the largest weight scale.
EDGE = Case(n=1, m=1, k=1, T=1, B=1, seed=0, scale=1.0, with_h0=False)
EDGE_H0 = dataclasses.replace(EDGE, with_h0=True)
EDGE_LONG = Case(n=1, m=1, k=1, T=12, B=1, seed=1, scale=2.0, with_h0=True)


def run_kernel(
    kernel: Any, problem: Problem
) -> tuple[Any, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(loss, grads, states)`` from the kernel's ``loss_and_grad`` and ``forward``."""
    params, x, y, h0 = problem
    loss, grads = kernel.loss_and_grad(params, {"x": x}, {"y": y}, h0=h0)
    states = kernel.forward(params, {"x": x}, h0=h0)
    return loss, grads, states


def assert_array_close(
    actual: Any,
    expected: np.ndarray,
    dtype: np.dtype,
    rtol: float,
    atol_rel: float,
    label: str,
    slack: float = 0.0,
) -> None:
    """Shape and dtype as ``expected`` / ``dtype``; |a - e| <= atol + rtol |e| elementwise.

    ``atol = atol_rel * max(1, max|expected|) + slack`` so near-zero entries of a large array are
    judged on the array's scale rather than on their own.
    """
    assert isinstance(actual, np.ndarray), f"{label}: expected ndarray, got {type(actual)}"
    assert actual.shape == expected.shape, f"{label}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == dtype, f"{label}: dtype {actual.dtype} != {dtype}"
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(
        actual, expected, rtol=rtol, atol=atol_rel * scale + slack, err_msg=label
    )


def assert_loss_close(
    actual: Any, expected: float, dtype: np.dtype, rtol: float, atol_rel: float, slack: float = 0.0
) -> None:
    """A 0-d numpy float (or, for float64, a Python float) in ``dtype``, close to ``expected``."""
    assert np.ndim(actual) == 0, f"loss must be 0-d, got shape {np.shape(actual)}"
    if not (dtype == np.float64 and isinstance(actual, float)):  # a Python float is a float64
        assert isinstance(actual, (np.ndarray, np.generic)), f"loss type {type(actual)}"
        assert actual.dtype == dtype, f"loss dtype {actual.dtype} != {dtype}"
    value = float(actual)
    tol = atol_rel * max(1.0, abs(expected)) + rtol * abs(expected) + slack
    assert abs(value - expected) <= tol, f"loss {value!r} != reference {expected!r} (tol {tol:.2e})"


def _max_abs_diff(a: Any, b: Any) -> float:
    """max |a - b| in float64 (0 for empty arrays)."""
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return float(np.max(diff)) if diff.size else 0.0


def compare_with_reference(
    kernel: Any,
    case: Case,
    dtype: type[np.floating],
    rtol: float,
    atol_rel: float,
    cond_factor: float = 0.0,
) -> None:
    """Kernel in ``dtype`` vs the float64 oracle on the same (dtype-rounded) numbers.

    With ``cond_factor > 0`` each tolerance also gets ``cond_factor * max|oracle_dtype -
    oracle_float64|``: the oracle's own error when run in ``dtype`` measures how ill-conditioned
    this particular draw is.
    """
    problem = case.problem(dtype)
    params, x, y, h0 = problem
    up = {name: value.astype(np.float64) for name, value in params.items()}
    h0_64 = None if h0 is None else h0.astype(np.float64)
    ref_loss, ref_grads, ref_states = elman_reference(
        up, x.astype(np.float64), y.astype(np.float64), h0_64
    )
    slack: dict[str, float] = dict.fromkeys([*PARAM_NAMES, "h", "o", "loss"], 0.0)
    if cond_factor:
        low_loss, low_grads, low_states = elman_reference(params, x, y, h0)  # in ``dtype``
        slack["loss"] = cond_factor * abs(low_loss - ref_loss)
        for name in PARAM_NAMES:
            slack[name] = cond_factor * _max_abs_diff(low_grads[name], ref_grads[name])
        for key in ("h", "o"):
            slack[key] = cond_factor * _max_abs_diff(low_states[key], ref_states[key])
    loss, grads, states = run_kernel(kernel, problem)
    out = np.dtype(dtype)
    note(f"reference loss = {ref_loss!r}, kernel loss = {loss!r}")
    assert_loss_close(loss, ref_loss, out, rtol, atol_rel, slack["loss"])
    assert isinstance(grads, dict) and set(grads) == set(PARAM_NAMES), sorted(grads)
    for name, expected in ref_grads.items():
        assert_array_close(grads[name], expected, out, rtol, atol_rel, f"grad_{name}", slack[name])
    assert isinstance(states, dict) and {"h", "o"} <= set(states), sorted(states)
    for key in ("h", "o"):
        assert_array_close(
            states[key], ref_states[key], out, rtol, atol_rel, f"states[{key!r}]", slack[key]
        )


# (a) float64. Kernel and oracle both run in float64 and do O(T * n) dependent operations per
# entry (T <= 12 steps of n <= 8 sized products); their rounding errors differ only by operation
# order, ~1e-16 per operation, and the tanh recurrence with weight scale <= 2 amplifies that by
# at most a few orders of magnitude, so ~1e-13 relative is typical; rtol = 1e-10 leaves a wide
# margin while still catching any wrong term. atol = 1e-12 * max(1, max|ref|) covers entries
# that cancel to ~0. (A stand-in vectorised kernel over 24,000 draws at scale in [1, 2] used at
# most 1% of this tolerance.)
RTOL64, ATOL64 = 1e-10, 1e-12


@given(case=cases())
@example(case=EDGE)
@example(case=EDGE_H0)
@example(case=EDGE_LONG)
def test_float64_matches_reference(elman_kernel: Any, case: Case) -> None:
    """Loss (5), gradients (6)-(9) + grad_b, grad_c, and states (2)-(4) match the oracle."""
    note(repr(case))
    compare_with_reference(elman_kernel, case, np.float64, RTOL64, ATOL64)


# (b) float32. Inputs are rounded to float32 (eps 1.2e-7) and the kernel computes in float32; the
# oracle runs in float64 on the same rounded numbers, so the difference is the kernel's float32
# rounding, ~1e-7 per operation, carried through T <= 12 steps of the tanh recurrence and sums of
# T * B <= 48 terms: typically 1e-7..1e-5 of the array's scale, and rtol 1e-3 / atol 5e-4 * scale
# covers that with a wide margin. The tail is heavier: with saturated units, 1 - h(t)^2 in eqs.
# (7)-(9) computed from a float32 h near +-1 loses most of its digits, and for n = 1 the recurrent
# weight (std = scale) can reach ~5, so a rare draw reaches ~2e-3 of scale in ANY float32
# implementation of the formulas. Such draws are ill-conditioned, not wrong, so the tolerance also
# gets 10x the error of the oracle itself run in float32 on the same draw (a per-draw measure of
# conditioning). A stand-in kernel over 24,000 adversarial draws (scale in [1, 2], half with n = 1)
# used at most ~4% of this tolerance. Formula errors are O(1) and still fail by orders of magnitude.
RTOL32, ATOL32, COND32 = 1e-3, 5e-4, 10.0


@given(case=cases())
@example(case=EDGE)
@example(case=EDGE_H0)
@example(case=EDGE_LONG)
def test_float32_matches_reference(elman_kernel: Any, case: Case) -> None:
    """float32 in, float32 out (loss, grads, states), close to the float64 oracle."""
    note(repr(case))
    compare_with_reference(elman_kernel, case, np.float32, RTOL32, ATOL32, COND32)


# (c) Central differences (eps = 1e-6, float64): truncation O(eps^2) ~ 1e-12 plus rounding
# O(1e-16 |L| / eps) ~ 1e-10 |L|; with these small sizes |L| <= ~1e2, so 1e-7 relative (floored at
# 1) has two orders of margin. This check owes nothing to either rnnsym or the oracle's formulas.
CD_EPS, CD_RTOL = 1e-6, 1e-7


@given(case=cases(max_dim=4, max_T=5, max_B=2))
@example(case=EDGE)
@example(case=EDGE_H0)
def test_gradients_match_central_differences(elman_kernel: Any, case: Case) -> None:
    """Kernel gradients vs central differences of the kernel's own loss."""
    note(repr(case))
    params, x, y, h0 = case.problem(np.float64)
    _, grads = elman_kernel.loss_and_grad(params, {"x": x}, {"y": y}, h0=h0)

    def loss_of(p: dict[str, np.ndarray]) -> float:
        return float(elman_kernel.loss_and_grad(p, {"x": x}, {"y": y}, h0=h0)[0])

    numeric = central_differences(loss_of, params, CD_EPS)
    for name in PARAM_NAMES:
        err = rel_err(grads[name], numeric[name])
        note(f"grad_{name}: relative error {err:.3e}")
        assert err < CD_RTOL, f"grad_{name}: relative error {err:.3e} vs central differences"


# (d) h0, purity, determinism and a standalone generated module.


@given(case=cases())
@example(case=EDGE)
def test_h0_none_equals_zeros_and_given_h0_is_used(elman_kernel: Any, case: Case) -> None:
    """h0 omitted == h0=None == zeros; a nonzero h0 changes h(1) per eq. (2) like the oracle."""
    note(repr(case))
    params, x, y, _ = case.problem(np.float64)
    zeros = np.zeros((case.B, case.n))
    inputs, targets = {"x": x}, {"y": y}
    base_loss, base_grads = elman_kernel.loss_and_grad(params, inputs, targets)
    base_states = elman_kernel.forward(params, inputs)
    f64 = np.dtype(np.float64)
    for h0 in (None, zeros):
        loss, grads = elman_kernel.loss_and_grad(params, inputs, targets, h0=h0)
        states = elman_kernel.forward(params, inputs, h0=h0)
        # W h(0) = 0 exactly, so only operation order may differ: near-bitwise agreement.
        assert_loss_close(loss, float(base_loss), f64, 1e-13, 1e-15)
        for name in PARAM_NAMES:
            assert_array_close(grads[name], base_grads[name], f64, 1e-13, 1e-15, f"grad_{name}")
        for key in ("h", "o"):
            assert_array_close(states[key], base_states[key], f64, 1e-13, 1e-15, key)

    with_h0 = dataclasses.replace(case, with_h0=True)
    params, x, y, h0 = with_h0.problem(np.float64)
    assert h0 is not None
    states = elman_kernel.forward(params, {"x": x}, h0=h0)
    a1 = params["b"] + h0 @ params["W"].T + x[0] @ params["U"].T  # (2) at t = 1
    np.testing.assert_allclose(states["h"][0], np.tanh(a1), rtol=1e-12, atol=1e-14)
    compare_with_reference(elman_kernel, with_h0, np.float64, RTOL64, ATOL64)


@given(case=cases(), dtype=st.sampled_from([np.float64, np.float32]))
@example(case=EDGE_H0, dtype=np.float64)
def test_inputs_are_not_mutated(elman_kernel: Any, case: Case, dtype: type[np.floating]) -> None:
    """The kernel leaves params, inputs, targets and h0 (arrays and dicts) untouched."""
    note(repr(case))
    params, x, y, h0 = case.problem(dtype)
    inputs, targets = {"x": x}, {"y": y}
    saved_params = {name: value.copy() for name, value in params.items()}
    saved_x, saved_y = x.copy(), y.copy()
    saved_h0 = None if h0 is None else h0.copy()

    elman_kernel.loss_and_grad(params, inputs, targets, h0=h0)
    elman_kernel.forward(params, inputs, h0=h0)

    assert set(params) == set(saved_params), "params dict was modified"
    assert set(inputs) == {"x"} and inputs["x"] is x, "inputs dict was modified"
    assert set(targets) == {"y"} and targets["y"] is y, "targets dict was modified"
    for name, value in saved_params.items():
        assert params[name].dtype == value.dtype
        np.testing.assert_array_equal(params[name], value, err_msg=name, strict=True)
    np.testing.assert_array_equal(x, saved_x, strict=True)
    np.testing.assert_array_equal(y, saved_y, strict=True)
    if h0 is not None:
        np.testing.assert_array_equal(h0, saved_h0, strict=True)


@given(case=cases(max_dim=4, max_T=6, max_B=4))
@example(case=dataclasses.replace(EDGE, B=2))
def test_batch_is_a_sum_of_sequences_and_time_is_causal(elman_kernel: Any, case: Case) -> None:
    """Metamorphic checks needing no oracle: batch gradients are sums over sequences, and the
    states of a prefix x[:t] are the first t states of x."""
    note(repr(case))
    params, x, y, h0 = case.problem(np.float64)
    loss, grads = elman_kernel.loss_and_grad(params, {"x": x}, {"y": y}, h0=h0)
    total_loss = 0.0
    total = {name: np.zeros_like(value) for name, value in params.items()}
    for i in range(case.B):
        h0_i = None if h0 is None else h0[i : i + 1]
        loss_i, grads_i = elman_kernel.loss_and_grad(
            params, {"x": x[:, i : i + 1]}, {"y": y[:, i : i + 1]}, h0=h0_i
        )
        total_loss += float(loss_i)
        for name in PARAM_NAMES:
            total[name] += grads_i[name]
    scale = max(1.0, abs(float(loss)))
    np.testing.assert_allclose(float(loss), total_loss, rtol=RTOL64, atol=ATOL64 * scale)
    for name in PARAM_NAMES:
        scale = max(1.0, float(np.max(np.abs(total[name]))))
        np.testing.assert_allclose(grads[name], total[name], rtol=RTOL64, atol=ATOL64 * scale)

    states = elman_kernel.forward(params, {"x": x}, h0=h0)
    t = max(1, case.T // 2)
    prefix = elman_kernel.forward(params, {"x": x[:t]}, h0=h0)
    for key in ("h", "o"):
        np.testing.assert_allclose(prefix[key], states[key][:t], rtol=RTOL64, atol=ATOL64)


def _imported_top_level_modules(source: str) -> set[str]:
    """Top-level names of every module imported anywhere in ``source``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "generated module must not use relative imports"
            names.add((node.module or "").split(".")[0])
    return names


def test_source_is_a_python_module_importing_only_numpy(elman_kernel: Any) -> None:
    """``kernel.source`` is Python text whose only import (besides __future__) is numpy."""
    source = elman_kernel.source
    assert isinstance(source, str) and source.strip()
    compile(source, "<elman kernel>", "exec")
    imported = _imported_top_level_modules(source)
    assert imported - {"__future__"} <= {"numpy"}, f"unexpected imports: {sorted(imported)}"
    assert "numpy" in imported


def test_source_is_deterministic(elman_kernel: Any) -> None:
    """Compiling the Elman cell again gives byte-identical source."""
    import rnnsym as rs

    first = rs.compile(rs.cells.elman()).source
    second = rs.compile(rs.cells.elman()).source
    assert first.encode("utf-8") == second.encode("utf-8")
    assert first.encode("utf-8") == elman_kernel.source.encode("utf-8")


def test_source_is_deterministic_across_hash_seeds(elman_kernel: Any, tmp_path: Path) -> None:
    """Fresh interpreters with different PYTHONHASHSEED generate the same source for every
    built-in cell in both modes (no dependence on set/dict iteration order), and the same as
    this process. One subprocess per hash seed compiles them all."""
    import json

    import rnnsym as rs

    package_root = str(Path(next(iter(rs.__path__))).resolve().parent)
    script = textwrap.dedent(
        """
        import json
        import sys
        import rnnsym as rs
        sources = {
            f"{name} {mode}": rs.compile(rs.cells.get(name), mode=mode).source
            for name in sorted(rs.cells.BUILTIN)
            for mode in ("reverse", "forward")
        }
        with open(sys.argv[1], "w", encoding="utf-8") as fh:
            json.dump(sources, fh)
        """
    )
    sources: dict[str, dict[str, str]] = {}
    for hash_seed in ("0", "12345"):
        env = dict(os.environ)
        env["PYTHONHASHSEED"] = hash_seed
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        out = tmp_path / f"sources_{hash_seed}.json"
        subprocess.run([sys.executable, "-c", script, str(out)], env=env, check=True, timeout=600)
        sources[hash_seed] = json.loads(out.read_text(encoding="utf-8"))
    expected = {f"{name} {mode}" for name in rs.cells.BUILTIN for mode in ("reverse", "forward")}
    assert set(sources["0"]) == expected
    for key, text in sources["0"].items():
        assert text == sources["12345"][key], f"{key}: source depends on PYTHONHASHSEED"
        name, mode = key.split()
        here = rs.compile(rs.cells.get(name), mode=mode).source
        assert text == here, f"{key}: subprocess != in-process source"
    assert sources["0"]["elman reverse"] == elman_kernel.source


_STANDALONE_SCRIPT = textwrap.dedent(
    """
    import importlib
    import sys

    module_dir, data_path, out_path = sys.argv[1:4]
    sys.modules["rnnsym"] = None  # any `import rnnsym[.x]` now raises ImportError
    sys.path.insert(0, module_dir)
    import numpy as np

    mod = importlib.import_module("elman_generated")
    data = np.load(data_path)
    params = {name: data[name] for name in ("W", "U", "b", "V", "c")}
    loss, grads = mod.loss_and_grad(params, {"x": data["x"]}, {"y": data["y"]}, h0=data["h0"])
    states = mod.forward(params, {"x": data["x"]}, h0=data["h0"])
    leaked = sorted(
        name for name, m in sys.modules.items()
        if m is not None and name.split(".")[0] in ("rnnsym", "sympy")
    )
    assert not leaked, leaked
    np.savez(out_path, loss=np.asarray(loss), h=states["h"], o=states["o"],
             **{"grad_" + k: v for k, v in grads.items()})
    print(repr(float(loss)))
    """
)


def test_source_runs_standalone_without_rnnsym(elman_kernel: Any, tmp_path: Path) -> None:
    """The generated text, written to a file, imports and runs in a process where rnnsym cannot
    be imported, and gives the same results as the in-process kernel."""
    module_path = tmp_path / "elman_generated.py"
    module_path.write_text(elman_kernel.source, encoding="utf-8")
    case = Case(n=3, m=2, k=2, T=5, B=2, seed=2024, scale=1.0, with_h0=True)
    params, x, y, h0 = case.problem(np.float64)
    data_path, out_path = tmp_path / "data.npz", tmp_path / "out.npz"
    np.savez(data_path, x=x, y=y, h0=h0, **params)

    env = {"PYTHONPATH": str(tmp_path), "PATH": os.environ.get("PATH", "")}
    for var in ("HOME", "SYSTEMROOT"):  # user site-packages / Windows need these
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

    loss, grads, states = run_kernel(elman_kernel, (params, x, y, h0))
    with np.load(out_path) as out:
        assert float(result.stdout.strip()) == float(out["loss"])
        np.testing.assert_allclose(float(out["loss"]), float(loss), rtol=1e-12)
        for name in PARAM_NAMES:
            np.testing.assert_allclose(out[f"grad_{name}"], grads[name], rtol=1e-12, atol=1e-14)
        for key in ("h", "o"):
            np.testing.assert_allclose(out[key], states[key], rtol=1e-12, atol=1e-14)
    ref_loss, _, _ = elman_reference(params, x, y, h0)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=RTOL64)
