"""The Numba backend: ``rs.compile(cell, backend="numba")`` against the NumPy kernel.

Compile cost: Numba compiles each generated function on its first call per dtype, about
12-30 s on an idle core (twice that on a loaded one). This module compiles four
(``_loss_and_grad`` of two cells in float64, Elman's in float32, Elman's ``_forward``). The
kernels are compiled once per test module (module-scoped fixtures) and Numba's on-disk cache
lives in pytest's cache folder, so a second run loads them instead. Cells: Elman (built in) and
a held-out cell written here (a context input, a concatenation, a user activation with a
rational coefficient, relu and softplus, two states, one updated from the other in the same
step). The gated built-ins (LSTM, GRU) are left out for the suite's time budget: each cold
compile costs 25-50 s, they add no node type beyond slices of a stacked pre-activation, which
the printer shares with the other backends, and the NumPy, torch and JAX backends' tests cover
them; `benchmarks/bench_backends.py` runs the Numba LSTM against them.
"""

from __future__ import annotations

import ast

import numpy as np
import pytest
import sympy as sp

import rnnsym as rs

pytest.importorskip("numba")

SIZES = {"n": 5, "m": 4, "k": 3}
T, B = 6, 3

# why 1e-10: both kernels evaluate the same derived formulas in float64 with the same matrix
# products; they differ only in summation order (Numba's fast-math "reassoc", BLAS vs loops) and
# in libm, i.e. by a few ulp per operation, ~1e-15 relative after T = 6 steps. 1e-10 leaves
# five orders of magnitude for that and still catches any wrong term of a gradient.
RTOL64 = 1e-10


def held_out() -> rs.Cell:
    """A cell written for this test only: nothing in rnnsym was tuned on it."""
    cell = rs.Cell("held_out_numba")
    n, m, k = cell.dims("n m k")
    x = cell.input("x", m)
    z = cell.context("z", k)  # given once per sequence
    h, s = cell.state("h", n), cell.state("s", n)
    bump = rs.elementwise("bump_numba_test", lambda a: a / (1 + sp.Rational(3, 10) * a**2))
    W = cell.param("W", n, n + m)
    Q = cell.param("Q", n, k)
    b = cell.param("b", n)
    cell.update(h, bump(W @ rs.concat(h.prev, x) + Q @ z + b) + 0.25 * s.prev)
    cell.update(s, rs.relu(h) * 0.5 + rs.softplus(b) * s.prev)
    V = cell.param("V", k, n)
    cell.loss(rs.squared_error(cell.output("o", V @ (h + s)), cell.target("y", k)))
    return cell


CELLS = {
    "elman": rs.cells.elman,
    "held_out": held_out,
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory, request) -> None:
    """The Numba cache of this module's kernels: pytest's cache folder (.pytest_cache), so a
    second run loads the compiled kernels (seconds) instead of compiling them again; a
    temporary folder when pytest runs without its cache (``-p no:cacheprovider``)."""
    config_cache = getattr(request.config, "cache", None)
    if config_cache is not None:
        folder = config_cache.mkdir("rnnsym_numba")
    else:
        folder = tmp_path_factory.mktemp("numba_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("RNNSYM_NUMBA_CACHE", str(folder))
    request.addfinalizer(mp.undo)


@pytest.fixture(scope="module")
def kernels(cache) -> dict:
    """(numba kernel, numpy kernel) per cell, compiled once."""
    out = {}
    for name, make in CELLS.items():
        out[name] = (rs.compile(make(), backend="numba"), rs.compile(make()))
    return out


def _size(dim) -> int:
    return dim if isinstance(dim, int) else int(sp.sympify(dim).subs(SIZES))


def problem(spec: dict, seed: int, dtype=np.float64, h0: bool = True):
    """Random params, inputs, targets and h0 (B, size) for ``spec``."""
    rng = np.random.default_rng(seed)

    def draw(shape):
        return (0.5 * rng.standard_normal(shape)).astype(dtype)

    params = {n: draw(tuple(_size(d) for d in dims)) for n, dims in spec["params"].items()}
    context = spec.get("context", ())
    inputs = {
        n: draw(((B,) if n in context else (T, B)) + (_size(dims[0]),))
        for n, dims in spec["inputs"].items()
    }
    targets = {n: draw((T, B, _size(dims[0]))) for n, dims in spec["targets"].items()}
    initial = {n: draw((B, _size(dims[0]))) for n, dims in spec["states"].items()} if h0 else None
    return params, inputs, targets, initial


def assert_close(got: dict, want: dict, rtol: float, what: str) -> None:
    assert list(got) == list(want), f"{what}: keys {list(got)} != {list(want)}"
    for name in want:
        g, w = np.asarray(got[name]), np.asarray(want[name])
        assert g.shape == w.shape and g.dtype == w.dtype, f"{what}[{name!r}]"
        scale = max(np.max(np.abs(w)), 1e-300)
        err = np.max(np.abs(g - w)) / scale
        assert err <= rtol, f"{what}[{name!r}]: relative error {err:.2e} > {rtol:g}"


@pytest.mark.parametrize("name", list(CELLS))
def test_loss_and_grads_match_numpy(kernels, name):
    nb, ref = kernels[name]
    assert nb.backend == "numba"
    for seed in (0, 1):
        params, inputs, targets, h0 = problem(ref.spec, seed, h0=bool(seed))
        loss, grads = nb.loss_and_grad(params, inputs, targets, h0)
        want_loss, want_grads = ref.loss_and_grad(params, inputs, targets, h0)
        assert isinstance(loss, np.float64)
        assert abs(loss - want_loss) <= RTOL64 * abs(want_loss), (loss, want_loss)
        assert_close(grads, want_grads, RTOL64, f"{name} grads")


@pytest.mark.parametrize("name", list(CELLS))
def test_vjp_matches_numpy(kernels, name):
    nb, ref = kernels[name]
    params, inputs, targets, h0 = problem(ref.spec, 2)
    got = nb.vjp(params, inputs, targets, h0)
    want = ref.vjp(params, inputs, targets, h0)
    assert abs(got[0] - want[0]) <= RTOL64 * abs(want[0])
    for i, what in ((1, "grads"), (2, "input grads"), (3, "h0 grads")):
        assert_close(got[i], want[i], RTOL64, f"{name} {what}")


def test_forward_matches_numpy(kernels):
    nb, ref = kernels["elman"]
    params, inputs, _, h0 = problem(ref.spec, 3)
    got, want = nb.forward(params, inputs, h0["h"][0]), ref.forward(params, inputs, h0["h"][0])
    assert_close(got, want, RTOL64, "elman forward")


def test_float32(kernels):
    nb, ref = kernels["elman"]
    params, inputs, targets, h0 = problem(ref.spec, 4, np.float32)
    loss, grads = nb.loss_and_grad(params, inputs, targets, h0)
    want_loss, want_grads = ref.loss_and_grad(params, inputs, targets, h0)
    assert isinstance(loss, np.float32)
    # float32 in both kernels, summed in different orders: a few hundred ulp (1.2e-7 each)
    # of the largest entry after T = 6 steps; 1e-4 is far below any wrong term
    assert abs(loss - want_loss) <= 1e-4 * abs(want_loss)
    assert_close(grads, want_grads, 1e-4, "elman float32 grads")


def test_repeated_signature_still_checks_values_and_errors(kernels):
    """The second call with the same shapes skips the checks; a bad call still gets the
    NumPy kernel's message, before and after a good call of the same signature."""
    nb, ref = kernels["elman"]
    params, inputs, targets, _ = problem(ref.spec, 5)
    first = nb.loss_and_grad(params, inputs, targets)
    params2, inputs2, targets2, _ = problem(ref.spec, 6)
    second = nb.loss_and_grad(params2, inputs2, targets2)
    assert second[0] == pytest.approx(ref.loss_and_grad(params2, inputs2, targets2)[0], rel=1e-10)
    assert first[0] != second[0]
    bad_inputs = [
        {"x": inputs["x"][:, :, :-1]},  # wrong size m
        {"x": inputs["x"].astype(np.float32)},  # wrong dtype
        {"x": inputs["x"][0]},  # not a sequence
        {"z": inputs["x"]},  # wrong name
    ]
    for bad in bad_inputs:
        with pytest.raises(ValueError) as want:
            ref.loss_and_grad(params, bad, targets)
        with pytest.raises(ValueError) as got:
            nb.loss_and_grad(params, bad, targets)
        assert str(got.value) == str(want.value)
    with pytest.raises(ValueError) as want:
        ref.loss_and_grad(params, inputs, targets, np.zeros((B + 1, 5)))
    with pytest.raises(ValueError) as got:
        nb.loss_and_grad(params, inputs, targets, np.zeros((B + 1, 5)))
    assert str(got.value) == str(want.value)


def test_h0_forms_agree(kernels):
    """h0 as None, (size,), (B, size) and a dict give the NumPy kernel's results, on the
    checked path and on the cached path (second call)."""
    nb, ref = kernels["held_out"]  # two states, h and s
    params, inputs, targets, h0 = problem(ref.spec, 7)
    for initial in (None, {"h": h0["h"][0]}, h0, {"s": h0["s"]}):
        for _ in range(2):
            got = nb.loss_and_grad(params, inputs, targets, initial)
            want = ref.loss_and_grad(params, inputs, targets, initial)
            assert abs(got[0] - want[0]) <= RTOL64 * abs(want[0])


def test_module_imports_numpy_and_numba_only(kernels):
    for name, (nb, _) in kernels.items():
        tree = ast.parse(nb.source)
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module.split(".")[0])
        assert imported == {"numpy", "numba"}, (name, imported)
        assert "Numba kernel for the recurrent cell" in ast.get_docstring(tree)


def test_source_is_deterministic(kernels):
    from rnnsym.backends.numba import generate_module

    for name, make in CELLS.items():
        assert generate_module(rs.derive(make())) == kernels[name][0].source, name


def test_kernel_object(kernels, tmp_path):
    nb, _ = kernels["elman"]
    assert nb.cell.name == "elman" and nb.mode == "reverse"
    assert nb.spec == kernels["elman"][1].spec
    assert repr(nb).endswith("lines of Numba>")
    assert "Numba kernel for the recurrent cell" in nb._repr_html_()
    assert nb.write(tmp_path / "k.py").read_text(encoding="utf-8") == nb.source
    # the same source compiled again reuses the loaded module (and its compiled functions)
    again = rs.compile(rs.cells.elman(), backend="numba")
    assert again.module is nb.module


def test_unwritable_cache_folder(tmp_path, monkeypatch):
    from rnnsym.backends.numba import load_source

    blocker = tmp_path / "a_file"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("RNNSYM_NUMBA_CACHE", str(blocker / "kernels"))
    with pytest.raises(OSError, match="set RNNSYM_NUMBA_CACHE to a writable folder"):
        load_source("VALUE = 'test_unwritable_cache_folder'\n")


def test_source_file_named_by_content(tmp_path, monkeypatch):
    import sys

    from rnnsym.backends.numba import load_source

    monkeypatch.setenv("RNNSYM_NUMBA_CACHE", str(tmp_path))
    source = "VALUE = 'test_source_file_named_by_content'\n"
    module = load_source(source)
    try:
        assert module.VALUE == "test_source_file_named_by_content"
        assert sys.modules[module.__name__] is module  # Numba's cache finds it by name
        (path,) = tmp_path.glob("rnnsym_numba_*.py")
        assert path.stem == module.__name__
        assert path.read_text(encoding="utf-8") == source
        assert load_source(source) is module
    finally:
        del sys.modules[module.__name__]
