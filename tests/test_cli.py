"""The ``rnnsym`` command: ``derive`` a built-in cell, ``verify`` a cell from a file, ``cells``.

Most tests call :func:`rnnsym.cli.main` in-process (output captured with ``capsys``); one runs
``python -m rnnsym derive elman`` in a subprocess with ``PYTHONPATH`` set to this checkout, so
it works from a fresh clone without installing the package. Exit codes: 0 when everything
passed, 1 when a verification check failed, 2 for a usage or cell error, reported on stderr as
``rnnsym: error: ...`` without a traceback.

A comment "Regression (bug at commit b5faf93): ..." above a test says what went wrong there
when the test was written; those bugs are fixed in the package now.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rnnsym as rs
from rnnsym.cli import main
from rnnsym.verify import random_problem

ROOT = Path(__file__).resolve().parents[1]

# The registry of rs.elementwise names is global to the process, so every user file written
# here gets names of its own.
_counter = itertools.count()

USER_CELLS = '''\
"""User cells for the rnnsym CLI tests."""

import sympy

import rnnsym as rs


def _elman_variant(state_act, output_act):
    cell = rs.Cell("variant")
    n, m, k = cell.dims("n m k")
    x = cell.input("x", m)
    h = cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    V, c = cell.param("V", k, n), cell.param("c", k)
    cell.update(h, state_act(b + W @ h.prev + U @ x))
    o = cell.output("o", output_act(c + V @ h))
    cell.loss(rs.squared_error(o, cell.target("y", k)))
    return cell


def make_cell():
    """Elman with a smooth softsign z / sqrt(1 + z^2) for h and a sigmoid output."""
    softsign = rs.elementwise("smooth_softsign_{tag}", lambda z: z / sympy.sqrt(1 + z**2))
    return _elman_variant(softsign, rs.sigmoid)


def make_softsign_cell():
    """Elman with the softsign z / (1 + |z|) of the issue for h and a sigmoid output."""
    softsign = rs.elementwise("softsign_{tag}", lambda z: z / (1 + sympy.Abs(z)))
    return _elman_variant(softsign, rs.sigmoid)


def make_rational_output_cell():
    """Elman with a sigmoid state and the output activation z / (1 + z^2)."""
    rational = rs.elementwise("rational_{tag}", lambda z: z / (1 + z**2))
    return _elman_variant(rs.sigmoid, rational)


def not_a_cell():
    return 42


def without_loss():
    cell = rs.Cell("lossless")
    n = cell.dims("n")
    x, h, W = cell.input("x", n), cell.state("h", n), cell.param("W", n, n)
    cell.update(h, rs.tanh(W @ h.prev + x))
    return cell


NOT_CALLABLE = 3
'''


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    """A file of user cells, with elementwise names no other test uses."""
    path = tmp_path / "my_cells.py"
    path.write_text(USER_CELLS.replace("{tag}", f"cli{next(_counter)}"), encoding="utf-8")
    return path


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_error(code: int, out: str, err: str, *fragments: str) -> None:
    """Exit code 2, one ``rnnsym: error:`` line on stderr naming ``fragments``, no traceback."""
    assert code == 2
    assert err.startswith("rnnsym: error: ")
    assert err.count("\n") == 1
    for fragment in fragments:
        assert fragment in err
    assert "Traceback" not in err + out


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----- rnnsym derive -----


DERIVATION_LINES = [
    "Cell 'elman'",
    "[report eqs. (2)-(3)]",
    "∇_W L = Σ_t",
    "[report eq. (7)]",
    "∇_U L",
    "[report eq. (8)]",
    "∇_V L",
    "[report eq. (6)]",
    "[report eq. (9)]",
]


def test_derive_elman_prints_derivation_and_verification(capsys):
    # --T 2 keeps the scalar oracle under a second; the default T=3 runs in the subprocess test
    code, out, err = run_main(capsys, "derive", "elman", "--T", "2")
    assert code == 0, out + err
    assert err == ""
    for line in DERIVATION_LINES:
        assert line in out
    assert "Verification" in out
    assert "scalar oracle (" in out and "T=2" in out and "— ok" in out
    assert "kernel checks (" in out and "float32" in out and "finite differences W" in out
    assert "FAILED" not in out
    assert out.rstrip().endswith("result: all checks passed")
    # the derivation comes before the report
    assert out.index("∇_W L") < out.index("scalar oracle")


def test_python_dash_m_rnnsym_from_a_fresh_checkout(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    result = subprocess.run(
        [sys.executable, "-m", "rnnsym", "derive", "elman"],
        cwd=tmp_path,  # not the checkout: the package must come from PYTHONPATH
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "∇_W L" in result.stdout and "[report eq. (7)]" in result.stdout
    assert "scalar oracle" in result.stdout
    assert "all checks passed" in result.stdout
    assert "Traceback" not in result.stderr


def test_derive_defaults_to_elman_and_no_verify_skips_the_report(capsys):
    code, out, err = run_main(capsys, "derive", "--no-verify")
    assert code == 0 and err == ""
    for line in DERIVATION_LINES:
        assert line in out
    assert "Verification" not in out and "scalar oracle" not in out


def test_latex(capsys):
    code, out, err = run_main(capsys, "derive", "elman", "--latex", "--no-verify")
    assert code == 0 and err == ""
    assert "\\begin{align}" in out
    assert "\\end{align}" in out
    assert out.index("\\begin{align}") < out.index("\\end{align}")
    assert "\\tag{1}\\label{eq:elman:1}" in out
    assert "∇_W L" not in out  # LaTeX, not the Unicode text
    assert "scalar oracle" not in out


def test_emit_writes_an_importable_kernel(capsys, tmp_path):
    path = tmp_path / "elman_kernel.py"
    code, out, err = run_main(capsys, "derive", "elman", "--no-verify", "--emit", str(path))
    assert code == 0 and err == ""
    assert f"Kernel written to {path}" in out
    source = path.read_text(encoding="utf-8")
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported == {"numpy"}

    module = load_module(path, "emitted_elman_kernel")
    assert callable(module.loss_and_grad) and callable(module.forward)
    cell = rs.cells.elman()
    params, inputs, targets = random_problem(cell, T=4, B=3, seed=1)
    loss, grads = module.loss_and_grad(params, inputs, targets)
    expected_loss, expected = rs.compile(cell).loss_and_grad(params, inputs, targets)
    assert loss == expected_loss
    assert grads.keys() == expected.keys() == params.keys()
    for name in params:
        np.testing.assert_array_equal(grads[name], expected[name])
    assert rs.check_gradients(module, params, inputs, targets).ok


# Regression (bug at commit b5faf93): --emit into a directory that does not exist ends in a
# FileNotFoundError traceback (exit 1) instead of 'rnnsym: error: ...' and exit 2
def test_emit_into_a_missing_directory(capsys, tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "kernel.py"
    code, out, err = run_main(capsys, "derive", "elman", "--no-verify", "--emit", str(target))
    assert_clean_error(code, out, err, str(target))


def test_derive_unknown_cell_names_the_available_cells(capsys):
    code, out, err = run_main(capsys, "derive", "nosuchcell")
    assert_clean_error(code, out, err, "'nosuchcell'", "available: ", "elman, elman_relu")
    assert out == ""


def test_cells_lists_the_builtin_cells(capsys):
    code, out, err = run_main(capsys, "cells")
    assert code == 0 and err == ""
    names = [line.split()[0] for line in out.splitlines()]
    assert names == sorted(names)
    assert {"elman", "lstm", "bidirectional", "seq2seq", "teacher_forcing"} <= set(names)
    assert "Elman RNN" in out and "Fig. 7" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rnnsym {rs.__version__}"


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage: rnnsym" in capsys.readouterr().err


# ----- rnnsym verify PATH.py:FUNC -----


def test_verify_user_cell(capsys, user_file):
    # T=2 keeps the scalar oracle of this cell (sqrt and exp in every entry) to a few seconds
    code, out, err = run_main(capsys, "verify", f"{user_file}:make_cell", "--T", "2")
    assert code == 0, out + err
    assert err == ""
    assert "Cell 'variant'" in out
    assert "smooth_softsign_cli" in out and "sigmoid(" in out
    assert "scalar oracle" in out and "T=2" in out
    assert out.rstrip().endswith("result: all checks passed")


def test_verify_user_cell_relative_path(capsys, user_file, monkeypatch):
    monkeypatch.chdir(user_file.parent)
    code, out, err = run_main(capsys, "verify", f"{user_file.name}:make_cell", "--no-verify")
    assert code == 0 and err == ""
    assert "Cell 'variant'" in out


# Regression (bug at commit b5faf93): the softsign z/(1+Abs(z)) of the issue cannot be compiled:
# rs.compile raises sympy's PrintMethodNotImplementedError (Derivative(re(z), z) in its derivative),
# and the CLI shows a traceback and exits 1 (then the scalar oracle failed with 'Can't calculate
# derivative wrt 101/370', its symbols not being real)
def test_verify_user_cell_with_abs_softsign(capsys, user_file):
    code, out, err = run_main(capsys, "verify", f"{user_file}:make_softsign_cell", "--T", "2")
    assert code == 0, out + err
    assert out.rstrip().endswith("result: all checks passed")


# Regression (bug at commit b5faf93): a user activation whose derivative prints as a sum is inlined
# without parentheses in a Hadamard product: for o = f(c + V h) with f(z) = z/(1+z^2) the kernel
# computes '-2*a**2/(a**2+1)**2 + (a**2+1)**(-1.0) * g_o' instead of '(f'(a)) * g_o', so every
# gradient is wrong (relative error ~0.5-0.9) while the symbolic derivation is right
def test_user_activation_with_a_sum_as_derivative_gives_correct_gradients(capsys, user_file):
    path = user_file.parent / "rational_kernel.py"
    spec = f"{user_file}:make_rational_output_cell"
    code, out, err = run_main(capsys, "verify", spec, "--no-verify", "--emit", str(path))
    assert code == 0 and err == ""
    module = load_module(path, "emitted_rational_kernel")
    # arrays from the emitted module's SPEC: the kernel alone, without rnnsym's cell
    sizes = {"n": 5, "m": 4, "k": 3}
    rng = np.random.default_rng(0)
    params = {
        name: rng.normal(0.0, 0.4, size=tuple(sizes[d] for d in dims))
        for name, dims in module.SPEC["params"].items()
    }
    inputs = {"x": rng.normal(size=(5, 2, sizes["m"]))}
    targets = {"y": rng.normal(size=(5, 2, sizes["k"]))}
    report = rs.check_gradients(module, params, inputs, targets)
    assert report.ok, str(report)


# Regression (bug at commit b5faf93): rs.elementwise refuses to define a name again with the same
# function, so a file whose make_cell calls rs.elementwise cannot be loaded twice in one process
# ('elementwise function ... is already defined as ...')
def test_verify_the_same_file_twice_in_one_process(capsys, user_file):
    for _ in range(2):
        code, out, err = run_main(capsys, "verify", f"{user_file}:make_cell", "--no-verify")
        assert code == 0, err


def test_verify_missing_function(capsys, user_file):
    code, out, err = run_main(capsys, "verify", f"{user_file}:nosuch")
    assert_clean_error(code, out, err, str(user_file), "no function 'nosuch'")


def test_verify_name_that_is_not_a_function(capsys, user_file):
    code, out, err = run_main(capsys, "verify", f"{user_file}:NOT_CALLABLE")
    assert_clean_error(code, out, err, "'NOT_CALLABLE'")


def test_verify_function_returning_a_non_cell(capsys, user_file):
    code, out, err = run_main(capsys, "verify", f"{user_file}:not_a_cell")
    assert_clean_error(code, out, err, "not_a_cell", "returned int", "rnnsym.Cell")


def test_verify_function_that_needs_arguments(capsys, user_file):
    """_elman_variant(state_act, output_act) builds a cell but needs its arguments."""
    code, out, err = run_main(capsys, "paper", f"{user_file}:_elman_variant")
    assert_clean_error(code, out, err, "_elman_variant(state_act, output_act) needs arguments")


def test_a_cell_file_without_its_function(capsys, user_file):
    code, out, err = run_main(capsys, "paper", str(user_file))
    assert_clean_error(code, out, err, f"{user_file}:FUNC")


def test_verify_invalid_user_cell(capsys, user_file):
    code, out, err = run_main(capsys, "verify", f"{user_file}:without_loss")
    assert_clean_error(code, out, err, "cell 'lossless' has no loss")


def test_verify_missing_file(capsys, tmp_path):
    missing = tmp_path / "nowhere.py"
    code, out, err = run_main(capsys, "verify", f"{missing}:make_cell")
    assert_clean_error(code, out, err, "no such file", str(missing))


@pytest.mark.parametrize("spec", ["cells.py", "cells.py:", ":make_cell"])
def test_verify_malformed_target(capsys, spec):
    code, out, err = run_main(capsys, "verify", spec)
    assert_clean_error(code, out, err, "PATH.py:FUNCTION", repr(spec))


def test_errors_have_no_traceback_in_a_subprocess(tmp_path, user_file):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "rnnsym", "verify", f"{user_file}:not_a_cell"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("rnnsym: error: ")
    assert "returned int" in result.stderr
    assert "Traceback" not in result.stderr


# ----- rnnsym verify --kernel, derive PATH.py:FUNC, --T (issue 10) -----


def test_derive_accepts_a_user_cell_like_verify(capsys, user_file):
    # Regression: "unknown built-in cell" for PATH.py:FUNC
    code, out, err = run_main(capsys, "derive", f"{user_file}:make_cell", "--no-verify")
    assert code == 0 and err == ""
    assert "Cell 'variant'" in out


def test_verify_kernel_rechecks_an_emitted_kernel(capsys, tmp_path):
    cell_file = tmp_path / "cells_lstm.py"
    cell_file.write_text("import rnnsym as rs\n\n\ndef make():\n    return rs.cells.lstm()\n")
    emitted = tmp_path / "lstm_kernel.py"
    target = f"{cell_file}:make"
    code, _, _ = run_main(capsys, "derive", target, "--no-verify", "--emit", str(emitted))
    assert code == 0
    code, out, err = run_main(capsys, "verify", target, "--T", "2", "--kernel", str(emitted))
    assert code == 0, out + err
    assert f"Checking the kernel in {emitted}" in out
    assert out.rstrip().endswith("result: all checks passed")

    # a hand edit: the forget gate's carry 0.1% short. The derivation (oracle) is still right;
    # the edited kernel fails, and the exit code says so
    source = emitted.read_text(encoding="utf-8")
    lines = [
        line
        for line in source.splitlines()
        if line.strip().startswith("carry_c = ") and "zeros" not in line
    ]
    assert len(lines) == 1
    edited = tmp_path / "lstm_kernel_edited.py"
    edited.write_text(source.replace(lines[0], lines[0] + " * 0.999"), encoding="utf-8")
    code, out, err = run_main(capsys, "verify", target, "--T", "2", "--kernel", str(edited))
    assert code == 1
    assert "— ok" in out  # the oracle of the derivation
    failed = [line.split()[:2] for line in out.splitlines() if line.rstrip().endswith("FAILED")]
    assert ["gradient", "W_hh"] in failed and ["gradient", "V"] not in failed
    assert out.rstrip().endswith("result: CHECKS FAILED")


def test_verify_kernel_of_another_cell_is_a_clear_error(capsys, tmp_path, user_file):
    emitted = tmp_path / "slides_kernel.py"
    assert run_main(capsys, "derive", "slides", "--no-verify", "--emit", str(emitted))[0] == 0
    code, out, err = run_main(capsys, "verify", f"{user_file}:make_cell", "--kernel", str(emitted))
    assert_clean_error(code, out, err, "--kernel", "J_h", "'W'")


def test_verify_kernel_missing_file(capsys, user_file, tmp_path):
    code, out, err = run_main(
        capsys, "verify", f"{user_file}:make_cell", "--kernel", str(tmp_path / "none.py")
    )
    assert_clean_error(code, out, err, "--kernel: no such file")


@pytest.mark.parametrize("T", ["0", "-2"])
def test_T_below_one_is_a_clear_error(capsys, T):
    # Regression: IndexError in oracle_gradients
    code, out, err = run_main(capsys, "derive", "elman", "--T", T)
    assert_clean_error(code, out, err, f"--T {T}", "at least 1")


def test_a_huge_T_warns(capsys):
    code, out, err = run_main(capsys, "derive", "elman", "--T", "500", "--no-verify")
    assert code == 0
    assert err.startswith("rnnsym: warning: --T 500")


# ----- rnnsym paper -----


def test_paper_to_stdout_and_its_errors(capsys, tmp_path):
    code, out, err = run_main(capsys, "paper", "elman", "--no-verify")
    assert code == 0 and err == ""
    assert out.startswith(f"% Generated by rnnsym {rs.__version__}")
    assert "\\begin{document}" in out and out.rstrip().endswith("\\end{document}")
    code, out, err = run_main(capsys, "paper", "no_such_cell", "--no-verify")
    assert_clean_error(code, out, err, "unknown built-in cell 'no_such_cell'")
    code, out, err = run_main(capsys, "paper", f"{tmp_path / 'missing.py'}:make")
    assert_clean_error(code, out, err, "no such file", "missing.py")
    with pytest.raises(SystemExit) as exc:
        main(["paper", "elman", "--notation", "dirac"])
    assert exc.value.code == 2
    assert "invalid choice: 'dirac'" in capsys.readouterr().err
