"""Random valid cells: every one compiles, and both kernels are right (issue 10 §1).

A Hypothesis strategy draws a *recipe*, a small tree of the constructs a researcher writes:
``@``, ``*``, ``+``, ``-``, scalar coefficients (ints, fractions, floats, NumPy scalars),
tanh/sigmoid/relu/softplus/exp/log of positive values, user functions from ``rs.elementwise``,
``cell.define``, ``rs.concat`` and row slices, 1–3 states (a later state may read one updated
earlier in the same step), parameter-only subexpressions, products of parameters, and one to
three losses (squared error, linear loss, scaled softmax cross-entropy). :func:`build` turns a
recipe into a cell; :func:`source` prints it as the Python a user would have written, which
Hypothesis shows for a failing example.

Every drawn cell is valid, so a refusal (CellError, DerivationError) counts as a failure.
Checks: the reverse kernel against central finite differences, the forward-mode kernel against
the reverse one, both derivation printers, and (on fewer examples: it is the slow part) the
derivation against the exact scalar oracle.

Examples: ``RNNSYM_FUZZ_EXAMPLES`` (default 300; 100 under the ``ci`` Hypothesis profile, which
CI uses, to keep the suite within its time budget) for the main property and
``RNNSYM_FUZZ_ORACLE_EXAMPLES`` (default 30) for the oracle; e.g.
``RNNSYM_FUZZ_EXAMPLES=2000 .venv/bin/pytest -q tests/test_fuzz_cells.py``.
"""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

import rnnsym as rs
from rnnsym.verify import check_gradients, random_problem, scalar_oracle


def _ci_profile() -> bool:
    """Whether the suite runs under the ``ci`` Hypothesis profile (see tests/conftest.py)."""
    explicit = os.environ.get("HYPOTHESIS_PROFILE", "").strip()
    if explicit:
        return explicit == "ci"
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no", "off"}


FUZZ_EXAMPLES = int(os.environ.get("RNNSYM_FUZZ_EXAMPLES", "100" if _ci_profile() else "300"))
ORACLE_EXAMPLES = int(os.environ.get("RNNSYM_FUZZ_ORACLE_EXAMPLES", "30"))

# distinct sizes, so that a transposed or mis-sliced array cannot go unnoticed
SIZES = {"n": 3, "m": 2, "r": 4, "k": 2}
ORACLE_SIZES = {"n": 2, "m": 3, "r": 1, "k": 2}

# user elementwise functions: smooth, piecewise (Max, Piecewise) and one needing a helper (erf)
USER = {
    "fz_softsign": rs.elementwise("fz_softsign", lambda z: z / (1 + sp.Abs(z))),
    "fz_max": rs.elementwise("fz_max", lambda z: sp.Max(z, 0)),
    "fz_erf": rs.elementwise("fz_erf", lambda z: sp.erf(z)),
    "fz_elu": rs.elementwise("fz_elu", lambda z: sp.Piecewise((z, z > 0), (sp.exp(z) - 1, True))),
}
ACTS = {
    "tanh": rs.tanh,
    "sigmoid": rs.sigmoid,
    "relu": rs.relu,
    "softplus": rs.softplus,
    "exp": rs.exp,
    **USER,
}

STATE_NAMES = ["h", "c", "s"]

# scalar coefficients as a user writes them: (how it is written, the value)
COEFFS = [
    ("2", 2),
    ("-3", -3),
    ("Fraction(1, 3)", Fraction(1, 3)),
    ("0.5", 0.5),
    ("-0.1", -0.1),
    ("2.5", 2.5),
    ("np.float64(0.5)", np.float64(0.5)),
    ("np.float32(-1.5)", np.float32(-1.5)),
    ("np.int64(2)", np.int64(2)),
]


# ----- the recipe grammar -----
#
# A vector expression (size n) is a tuple:
#   ("mm", src)           P @ src, a fresh parameter P
#   ("mm2", src)          A @ B @ src (a product of two parameters, A n×r)
#   ("slice", src, half)  (P @ src)[0:n] or [n:2n], P stacked (2n × ·)
#   ("raw", src)          a state itself (h.prev or a state of this step)
#   ("bias",)             b
#   ("lowrank",)          A @ z, A (n×r), z (r): parameters only
#   ("pfun", f)           f(b) with a parameter b: parameters only
#   ("pprod",)            b * c, two parameters
#   ("act", f, e) ("log", kind, e) ("add", e, e) ("sub", e, e) ("had", e, e) ("sq", e)
#   ("scale", c, e) ("neg", e) ("rsub", c, e) ("addc", e, c) ("div", e, c) ("define", e)
# A source: ("x",), ("prev", j), ("cur", j), ("concat", src, src).


def _sources(state: int, states: int):
    simple = [("x",)] + [("prev", j) for j in range(states)] + [("cur", j) for j in range(state)]
    base = st.sampled_from(simple)
    return st.one_of(base, st.tuples(st.just("concat"), base, base))


def _raw_sources(state: int, states: int):
    return st.sampled_from(
        [("prev", j) for j in range(states)] + [("cur", j) for j in range(state)]
    )


def _expressions(state: int, states: int):
    src = _sources(state, states)
    batch_leaf = st.one_of(
        st.tuples(st.just("mm"), src),
        st.tuples(st.just("mm2"), src),
        st.tuples(st.just("slice"), src, st.sampled_from([0, 1])),
        st.tuples(st.just("raw"), _raw_sources(state, states)),
    )
    param_leaf = st.one_of(
        st.just(("bias",)),
        st.just(("lowrank",)),
        st.tuples(st.just("pfun"), st.sampled_from(["softplus", "relu", "tanh"])),
        st.just(("pprod",)),
    )
    coeff = st.integers(0, len(COEFFS) - 1)

    def extend(inner):
        return st.one_of(
            st.tuples(st.just("act"), st.sampled_from(sorted(ACTS)), inner),
            st.tuples(
                st.just("log"), st.sampled_from(["sigmoid", "1-sigmoid", "1+softplus"]), inner
            ),
            st.tuples(st.just("add"), inner, inner),
            st.tuples(st.just("sub"), inner, inner),
            st.tuples(st.just("had"), inner, inner),
            st.tuples(st.just("sq"), inner),
            st.tuples(st.just("scale"), coeff, inner),
            st.tuples(st.just("neg"), inner),
            st.tuples(st.just("rsub"), coeff, inner),
            st.tuples(st.just("addc"), inner, coeff),
            st.tuples(st.just("div"), inner, coeff),
            st.tuples(st.just("define"), inner),
        )

    expr = st.recursive(st.one_of(batch_leaf, param_leaf), extend, max_leaves=5)
    # every update reads the data or a state: batch part + optional rest, under an activation
    return st.tuples(
        st.sampled_from(["tanh", "sigmoid", "fz_softsign", "none"]),
        st.recursive(batch_leaf, extend, max_leaves=3),
        st.none() | expr,
    )


@st.composite
def recipes(draw):
    states = draw(st.integers(1, 3))
    updates = [draw(_expressions(i, states)) for i in range(states)]
    losses = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["squared", "linear", "softmax"]),
                st.integers(0, len(COEFFS) - 1),
                st.integers(0, states - 1),
            ),
            min_size=1,
            max_size=3,
        )
    )
    return (states, tuple(updates), tuple(losses))


# ----- building a cell from a recipe (and printing the same program) -----


class _Builder:
    def __init__(self, states: int):
        self.cell = rs.Cell("fuzz")
        self.n, self.m, self.r, self.k = self.cell.dims("n m r k")
        self.x = self.cell.input("x", self.m)
        self.names = STATE_NAMES[:states]
        self.h = [self.cell.state(name, self.n) for name in self.names]
        self.counter = 0
        self.lines: list[str] = [
            'cell = rs.Cell("fuzz")',
            'n, m, r, k = cell.dims("n m r k")',
            'x = cell.input("x", m)',
            *[f'{s} = cell.state("{s}", n)' for s in STATE_NAMES[:states]],
        ]

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def param(self, prefix: str, rows, cols=None):
        name = self.fresh(prefix)
        shape = f"{rows}" if cols is None else f"{rows}, {cols}"
        self.lines.append(f'{name} = cell.param("{name}", {shape})')
        return self.cell.param(name, rows, cols), name

    def source(self, src):
        kind = src[0]
        if kind == "x":
            return self.x, "x"
        if kind == "prev":
            return self.h[src[1]].prev, f"{self.names[src[1]]}.prev"
        if kind == "cur":
            return self.h[src[1]], self.names[src[1]]
        (a, ta), (b, tb) = self.source(src[1]), self.source(src[2])
        return rs.concat(a, b), f"rs.concat({ta}, {tb})"

    def expr(self, e):  # noqa: C901 - one branch per construct of the grammar
        kind = e[0]
        if kind == "mm":
            v, tv = self.source(e[1])
            P, tp = self.param("P", self.n, v.shape[0])
            return P @ v, f"({tp} @ {tv})"
        if kind == "mm2":
            v, tv = self.source(e[1])
            A, ta = self.param("A", self.n, self.r)
            B, tb = self.param("B", self.r, v.shape[0])
            return A @ B @ v, f"({ta} @ {tb} @ {tv})"
        if kind == "slice":
            v, tv = self.source(e[1])
            S, ts = self.param("S", 2 * self.n, v.shape[0])
            lo, hi = (0, self.n) if e[2] == 0 else (self.n, 2 * self.n)
            text = "[0:n]" if e[2] == 0 else "[n:2 * n]"
            return (S @ v)[lo:hi], f"({ts} @ {tv}){text}"
        if kind == "raw":
            return self.source(e[1])
        if kind == "bias":
            b, tb = self.param("b", self.n)
            return b, tb
        if kind == "lowrank":
            A, ta = self.param("A", self.n, self.r)
            z, tz = self.param("z", self.r)
            return A @ z, f"({ta} @ {tz})"
        if kind == "pfun":
            b, tb = self.param("b", self.n)
            return ACTS[e[1]](b), f"rs.{e[1]}({tb})"
        if kind == "pprod":
            b, tb = self.param("b", self.n)
            c, tc = self.param("c", self.n)
            return b * c, f"({tb} * {tc})"
        if kind == "act":
            a, ta = self.expr(e[2])
            return ACTS[e[1]](a), f"{'rs.' if e[1] not in USER else ''}{e[1]}({ta})"
        if kind == "log":
            a, ta = self.expr(e[2])
            if e[1] == "sigmoid":
                return rs.log(rs.sigmoid(a)), f"rs.log(rs.sigmoid({ta}))"
            if e[1] == "1-sigmoid":
                return rs.log(1 - rs.sigmoid(a)), f"rs.log(1 - rs.sigmoid({ta}))"
            return rs.log(1 + rs.softplus(a)), f"rs.log(1 + rs.softplus({ta}))"
        if kind in ("add", "sub", "had"):
            (a, ta), (b, tb) = self.expr(e[1]), self.expr(e[2])
            op = {"add": "+", "sub": "-", "had": "*"}[kind]
            value = a + b if kind == "add" else a - b if kind == "sub" else a * b
            return value, f"({ta} {op} {tb})"
        if kind == "sq":
            a, ta = self.expr(e[1])
            return a * a, f"({ta} * {ta})"
        if kind == "neg":
            a, ta = self.expr(e[1])
            return -a, f"(-{ta})"
        if kind in ("scale", "rsub"):
            text, c = COEFFS[e[1]]
            a, ta = self.expr(e[2])
            if kind == "scale":
                return c * a, f"({text} * {ta})"
            return c - a, f"({text} - {ta})"
        if kind in ("addc", "div"):
            text, c = COEFFS[e[2]]
            a, ta = self.expr(e[1])
            if kind == "addc":
                return a + c, f"({ta} + {text})"
            return a / c, f"({ta} / {text})"
        if kind == "define":
            a, ta = self.expr(e[1])
            name = self.fresh("q")
            self.lines.append(f'{name} = cell.define("{name}", {ta})')
            return self.cell.define(name, a), name
        raise AssertionError(f"unknown recipe node {e!r}")

    def update(self, i: int, recipe) -> None:
        act, batch, rest = recipe
        value, text = self.expr(batch)
        if rest is not None:
            other, other_text = self.expr(rest)
            value, text = value + other, f"{text} + {other_text}"
        if act != "none":
            value = ACTS[act](value)
            text = f"{'rs.' if act not in USER else ''}{act}({text})"
        self.lines.append(f"cell.update({self.names[i]}, {text})")
        self.cell.update(self.h[i], value)

    def losses(self, losses) -> None:
        for j, (kind, c, i) in enumerate(losses):
            h, th = self.h[i], self.names[i]
            ctext, coeff = COEFFS[c]
            if kind == "linear":
                d, td = self.param("d", self.n)
                self.lines.append(f"cell.loss({ctext} * rs.linear_loss({td}, {th}))")
                self.cell.loss(coeff * rs.linear_loss(d, h))
                continue
            V, tv = self.param("V", self.k, self.n)
            o = self.cell.output(f"o{j}", V @ h)
            y = self.cell.target(f"y{j}", self.k)
            self.lines.append(f'o{j} = cell.output("o{j}", {tv} @ {th})')
            self.lines.append(f'y{j} = cell.target("y{j}", k)')
            if kind == "squared":
                self.lines.append(f"cell.loss(rs.squared_error(o{j}, y{j}))")
                self.cell.loss(rs.squared_error(o, y))
            else:
                self.lines.append(f"cell.loss({ctext} * rs.softmax_cross_entropy(o{j}, y{j}))")
                self.cell.loss(coeff * rs.softmax_cross_entropy(o, y))


def build(recipe) -> tuple[rs.Cell, str]:
    """The cell of a recipe, and the Python source that defines it."""
    states, updates, losses = recipe
    b = _Builder(states)
    for i, update in enumerate(updates):
        b.update(i, update)
    # every state reaches the loss: a state no loss reads gets a squared-error output
    read = {i for _, _, i in losses}
    extra = tuple(("squared", 0, i) for i in range(states) if i not in read)
    b.losses(losses + extra)
    return b.cell, "\n".join(b.lines)


# ----- the checks -----


def _check_kernels(recipe, T: int = 3, B: int = 2, seed: int = 0, notes: bool = True) -> None:
    cell, text = build(recipe)
    if notes:  # Hypothesis shows the cell's source with a failing example
        note(text)
    reverse = rs.compile(cell)
    derivation = reverse.derivation  # the derived cell prints, as text and as LaTeX
    assert derivation.pretty().strip() and derivation.latex().strip()
    forward = rs.compile(cell, mode="forward")
    params, inputs, targets = random_problem(cell, sizes=SIZES, T=T, B=B, seed=seed)
    # finite differences: central, eps = 1e-6, relative tolerance 1e-6 plus the rounding floor
    # (check_gradients' own documented rule); truncation error is ~1e-12 for these smooth
    # cells, far below it, while a wrong term or sign moves a gradient by O(1) relative
    report = check_gradients(reverse, params, inputs, targets)
    assert report.ok, f"{text}\n{report}"
    loss_r, grads_r = reverse.loss_and_grad(params, inputs, targets)
    loss_f, grads_f = forward.loss_and_grad(params, inputs, targets)
    # two independently generated float64 computations of the same numbers: they differ
    # only by rounding, accumulated over a few steps (1e-9 relative leaves 10^6 ulps of room)
    assert np.isfinite(loss_r)
    np.testing.assert_allclose(loss_f, loss_r, rtol=1e-9, atol=1e-12, err_msg=text)
    for name, g in grads_r.items():
        scale = max(1.0, float(np.abs(g).max()))
        np.testing.assert_allclose(
            grads_f[name], g, rtol=0, atol=1e-9 * scale, err_msg=f"{name}\n{text}"
        )
    # what a call returns is its own: the next calls (same shapes, other data), which reuse
    # the kernel's workspaces, leave every returned array as it was
    returned = reverse.vjp(params, inputs, targets)
    arrays = [a for group in returned[1:] for a in group.values()]
    before = [a.copy() for a in arrays]
    other = random_problem(cell, sizes=SIZES, T=T, B=B, seed=seed + 1)
    reverse.vjp(*other)
    reverse.loss_and_grad(*other)
    for got, want in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(got, want, err_msg=text)


# regressions: the cells of issue 10 §1, as recipes
MM_X, MM_H = ("mm", ("x",)), ("mm", ("prev", 0))
REGRESSIONS = [
    # rs.tanh(U @ x) * rs.sigmoid(-(h.prev + b)): printed -h_prev + b (wrong gradient)
    (1, (("none", ("had", ("act", "tanh", MM_X), ("act", "sigmoid", ("neg", ("add", ("raw", ("prev", 0)), ("bias",))))), None),), (("squared", 0, 0),)),  # noqa: E501
    # - U @ x + W @ h.prev
    (1, (("tanh", ("neg", MM_X), MM_H),), (("squared", 0, 0),)),
    # 0.5 * rs.tanh(...)
    (1, (("none", ("scale", 3, ("act", "tanh", ("add", MM_X, MM_H))), None),), (("squared", 0, 0),)),  # noqa: E501
    # 1 - rs.tanh(...)
    (1, (("none", ("rsub", 0, ("act", "tanh", ("add", MM_X, MM_H))), None),), (("squared", 0, 0),)),
    # 2 * (W @ h.prev)
    (1, (("tanh", MM_X, ("scale", 0, MM_H)),), (("squared", 0, 0),)),
    # (U @ x) * (U @ x)
    (1, (("tanh", ("sq", MM_X), MM_H),), (("squared", 0, 0),)),
    # rs.log(1 - rs.sigmoid(a))
    (1, (("none", ("log", "1-sigmoid", ("add", MM_X, MM_H)), None),), (("squared", 0, 0),)),
    # a low-rank bias A @ z, and A @ B @ h.prev
    (1, (("tanh", ("mm2", ("prev", 0)), ("lowrank",)),), (("squared", 0, 0),)),
    # parameter-only terms first in a sum: softplus(b), 2 * b, relu(b), b * b
    (1, (("tanh", MM_X, ("add", ("pfun", "softplus"), MM_H)),), (("squared", 0, 0),)),
    (1, (("tanh", MM_X, ("add", ("scale", 0, ("bias",)), MM_H)),), (("squared", 0, 0),)),
    (1, (("tanh", MM_X, ("add", ("pfun", "relu"), MM_H)),), (("squared", 0, 0),)),
    (1, (("tanh", MM_X, ("add", ("pprod",), MM_H)),), (("squared", 0, 0),)),
    # user functions Max(z, 0) (needed functools) and erf (needed math)
    (1, (("tanh", ("act", "fz_max", MM_X), MM_H),), (("squared", 0, 0),)),
    (1, (("none", ("act", "fz_erf", ("add", MM_X, MM_H)), None),), (("squared", 0, 0),)),
    # 2 * rs.softmax_cross_entropy(o, y): the loss value lost its brackets
    (1, (("tanh", MM_X, MM_H),), (("softmax", 0, 0),)),
    # np.float64(0.5) * term and np.float32 / np.int64 scalars
    (1, (("tanh", ("scale", 6, MM_X), ("scale", 8, MM_H)),), (("softmax", 7, 0),)),
    # found by this fuzzer: P1 @ x - P2 @ x is factored to (P1 - P2) x, which forward mode
    # refused; rs.linear_loss(d, h) with a parameter d (a parameter-only adjoint, read as
    # d[t]); a size no array has, read because a comment said "w.r.t."
    (1, (("tanh", ("sub", MM_X, MM_X), ("mm2", ("prev", 0))),), (("linear", 1, 0),)),
    (2, (("tanh", MM_X, None), ("sigmoid", ("add", ("mm2", ("x",)), ("mm2", ("x",))), ("mm", ("cur", 0)))), (("linear", 3, 1), ("softmax", 4, 0))),  # noqa: E501
    # a state free of the data and of the past (h.prev - h.prev cancels): one value per row
    (1, (("tanh", ("sub", ("raw", ("prev", 0)), ("raw", ("prev", 0))), ("act", "exp", ("add", ("lowrank",), ("bias",)))),), (("linear", 8, 0),)),  # noqa: E501
    (1, (("tanh", ("addc", ("sub", ("raw", ("prev", 0)), ("raw", ("prev", 0))), 3), None),), (("squared", 0, 0),)),  # noqa: E501
    # found by the 2,000-example run: log(1 - sigmoid(c * c)) with a growing c; 1 - σ rounded
    # to 0 (log 0, then inf * 0 in the gradient) before log(1 - σ(a)) became log σ(-a)
    (2, (("sigmoid", ("log", "1-sigmoid", ("sq", ("raw", ("prev", 1)))), None), ("none", ("sub", ("scale", 0, ("slice", ("concat", ("cur", 0), ("prev", 1)), 0)), ("mm", ("x",))), ("addc", ("slice", ("concat", ("x",), ("cur", 0)), 0), 1))), (("squared", 0, 0), ("linear", 4, 1))),  # noqa: E501
    # three states, later ones reading earlier ones of the same step, defines and slices
    (3, (("sigmoid", ("define", ("slice", ("concat", ("x",), ("prev", 2)), 1)), None), ("tanh", ("mm", ("cur", 0)), ("define", ("bias",))), ("none", ("had", ("raw", ("cur", 1)), ("act", "fz_elu", ("mm", ("prev", 0)))), None)), (("linear", 5, 2), ("squared", 0, 1))),  # noqa: E501
]  # fmt: skip


def _with_regressions(test):
    for recipe in REGRESSIONS:
        test = example(recipe)(test)
    return test


@pytest.mark.parametrize(
    "recipe", REGRESSIONS, ids=[f"issue10_{i}" for i in range(len(REGRESSIONS))]
)
def test_issue10_cells_compile_correctly(recipe):
    """Each construct of issue 10 §1 that failed or gave wrong numbers, alone."""
    _check_kernels(recipe, notes=False)


@_with_regressions
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(recipes())
def test_random_cells_compile_and_match_finite_differences(recipe):
    _check_kernels(recipe)


@settings(
    max_examples=ORACLE_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(recipes())
def test_random_cells_match_the_scalar_oracle(recipe):
    cell, text = build(recipe)
    note(text)
    # the exact oracle: 60-digit evaluation, 40 digits must agree per parameter (its default)
    report = scalar_oracle(cell, sizes=ORACLE_SIZES, T=2)
    assert report.ok, f"{text}\n{report}"
