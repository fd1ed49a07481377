"""Mutation test of ``rs.verify``: wrong kernels for elman, lstm and gru, every one rejected.

Each mutant is an object with the kernel interface around a true kernel (or a true kernel of a
*different* model presented as the cell's), wrong in one way that the finite differences of
rnnsym 0.1's ``verify`` (sizes 3/4/5, T = 5, B = 2, h(0) = 0, float64, ``loss_and_grad`` only)
could not see. Before asserting that ``rs.verify`` rejects a mutant, the test confirms that it
is wrong: on ``verify``'s own random problem, some output (loss, ``forward()``, a gradient or a
``vjp()`` adjoint, in the dtype the mutant corrupts) differs from the true kernel's by more than
1e-6 relative, far above float64 rounding (1e-16) and float32 rounding of a correct kernel
(measured ≤ 5e-7 relative, so that comparison is done against the true float32 kernel).
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnsym as rs
from rnnsym.ir import expr as rx
from rnnsym.losses import squared_error
from rnnsym.verify import kernel_problem

CELLS = {"elman": rs.cells.elman, "lstm": rs.cells.lstm, "gru": rs.cells.gru}
SEED = 0  # verify's default seed: the mutants are confirmed wrong on the problem it draws
_KERNELS: dict = {}


def true_kernel(name: str):
    if name not in _KERNELS:
        _KERNELS[name] = rs.compile(CELLS[name]())
    return _KERNELS[name]


# ----- wrapper mutants: a true kernel with one thing wrong -----


def _copy(d):
    return {k: np.array(v, copy=True) for k, v in d.items()}


class Mutant:
    """A true kernel, passed through; subclasses corrupt one result."""

    def __init__(self, kernel):
        self.kernel = kernel

    def forward(self, params, inputs, h0=None):
        return self.kernel.forward(params, inputs, h0)

    def loss_and_grad(self, params, inputs, targets, h0=None):
        loss, grads = self.kernel.loss_and_grad(params, inputs, targets, h0)
        return loss, self.grads(grads, params, inputs, targets, h0)

    def vjp(self, params, inputs, targets, h0=None):
        loss, grads, input_grads, h0_grads = self.kernel.vjp(params, inputs, targets, h0)
        return loss, self.grads(grads, params, inputs, targets, h0), input_grads, h0_grads

    def grads(self, grads, params, inputs, targets, h0):
        return grads


def _first(grads):
    return next(iter(grads))


class LateSteps(Mutant):
    """The gradient contributions of steps t >= 6 are 5% too large (e.g. a wrong factor in a
    loop branch taken only for long sequences)."""

    def grads(self, grads, params, inputs, targets, h0):
        T = next(iter(inputs.values())).shape[0]
        if T <= 6:
            return grads
        early = self.kernel.loss_and_grad(
            params,
            {n: v[:6] for n, v in inputs.items()},
            {n: v[:6] for n, v in targets.items()},
            h0,
        )[1]
        return {n: g + 0.05 * (g - early[n]) for n, g in grads.items()}


class LateRows(Mutant):
    """Rows >= 7 of every matrix gradient are 1% too large (e.g. a wrong slice bound)."""

    def grads(self, grads, params, inputs, targets, h0):
        out = _copy(grads)
        for g in out.values():
            if g.ndim == 2:
                g[7:] *= 1.01
        return out


class LateBatch(Mutant):
    """Batch entries b >= 2 contribute 1% too much to the gradient."""

    def grads(self, grads, params, inputs, targets, h0):
        B = next(iter(inputs.values())).shape[1]
        if B <= 2:
            return grads
        head = {n: v[:2] for n, v in (h0 or {}).items()} or None
        first = self.kernel.loss_and_grad(
            params,
            {n: v[:, :2] for n, v in inputs.items()},
            {n: v[:, :2] for n, v in targets.items()},
            head,
        )[1]
        return {n: g + 0.01 * (g - first[n]) for n, g in grads.items()}


class IgnoresH0InBackward(Mutant):
    """The loss uses h(0), the gradient is computed as if h(0) were zero."""

    def grads(self, grads, params, inputs, targets, h0):
        if h0 is None:
            return grads
        return self.kernel.loss_and_grad(params, inputs, targets, None)[1]


class Float32Only(Mutant):
    """In float32 the gradient of the first parameter is 0.2% too large (a wrong constant in a
    float32 code path); float64 is exact."""

    def grads(self, grads, params, inputs, targets, h0):
        name = _first(grads)
        if grads[name].dtype != np.float32:
            return grads
        return {**grads, name: grads[name] * np.float32(1.002)}


class WrongSign(Mutant):
    """The gradient of the last parameter has the wrong sign."""

    def grads(self, grads, params, inputs, targets, h0):
        name = list(grads)[-1]
        return {**grads, name: -grads[name]}


class ShiftedTargets(Mutant):
    """Off by one in time: the gradient pairs step t's output with the target of step t + 1."""

    def grads(self, grads, params, inputs, targets, h0):
        shifted = {n: np.concatenate([v[1:], v[-1:]]) for n, v in targets.items()}
        return self.kernel.loss_and_grad(params, inputs, shifted, h0)[1]


class LossOffByConstant(Mutant):
    """The loss is 0.5 too large (a constant term kept); its gradient is right."""

    def loss_and_grad(self, params, inputs, targets, h0=None):
        loss, grads = self.kernel.loss_and_grad(params, inputs, targets, h0)
        return loss + 0.5, grads


class ForwardOffByOne(Mutant):
    """forward() returns every sequence one step late (h(t-1) labelled h(t))."""

    def forward(self, params, inputs, h0=None):
        out = self.kernel.forward(params, inputs, h0)
        return {n: np.concatenate([np.zeros_like(v[:1]), v[:-1]]) for n, v in out.items()}


class ForwardIgnoresH0(Mutant):
    """forward() starts from h(0) = 0 whatever h0 is given; loss_and_grad is right."""

    def forward(self, params, inputs, h0=None):
        return self.kernel.forward(params, inputs, None)


class WrongInputAdjoint(Mutant):
    """vjp(): the input adjoint of the first step is dropped (zero)."""

    def vjp(self, params, inputs, targets, h0=None):
        loss, grads, input_grads, h0_grads = self.kernel.vjp(params, inputs, targets, h0)
        input_grads = _copy(input_grads)
        for g in input_grads.values():
            g[0] = 0.0
        return loss, grads, input_grads, h0_grads


class WrongH0Adjoint(Mutant):
    """vjp(): the h(0) adjoint is 2% too large."""

    def vjp(self, params, inputs, targets, h0=None):
        loss, grads, input_grads, h0_grads = self.kernel.vjp(params, inputs, targets, h0)
        return loss, grads, input_grads, {n: 1.02 * g for n, g in h0_grads.items()}


WRAPPERS = [
    LateSteps,
    LateRows,
    LateBatch,
    IgnoresH0InBackward,
    Float32Only,
    WrongSign,
    ShiftedTargets,
    LossOffByConstant,
    ForwardOffByOne,
    ForwardIgnoresH0,
    WrongInputAdjoint,
    WrongH0Adjoint,
]


# ----- kernels of a different model, loss and gradient consistent with each other -----


def elman_sigmoid():
    """elman with sigmoid instead of tanh (forward and backward agree)."""
    cell = rs.Cell("elman")
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    V, c = cell.param("V", k, n), cell.param("c", k)
    cell.update(h, rx.sigmoid(b + W @ h.prev + U @ x))
    cell.loss(squared_error(cell.output("o", c + V @ h), cell.target("y", k)))
    return cell


def elman_transposed():
    """elman with W transposed in both forward and backward."""
    cell = rs.Cell("elman")
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U, b = cell.param("W", n, n), cell.param("U", n, m), cell.param("b", n)
    V, c = cell.param("V", k, n), cell.param("c", k)
    cell.update(h, rx.tanh(b + W.T @ h.prev + U @ x))
    cell.loss(squared_error(cell.output("o", c + V @ h), cell.target("y", k)))
    return cell


def _lstm_variant(swap_gates=False, candidate=rx.tanh, forget_term=True):
    cell = rs.Cell("lstm")
    n, m, k = cell.dims("n m k")
    x = cell.input("x", m)
    h, c = cell.state("h", n), cell.state("c", n)
    W_ih, W_hh = cell.param("W_ih", 4 * n, m), cell.param("W_hh", 4 * n, n)
    b_ih, b_hh = cell.param("b_ih", 4 * n), cell.param("b_hh", 4 * n)
    a = cell.define("a", W_ih @ x + b_ih + W_hh @ h.prev + b_hh)
    first, second = (a[n : 2 * n], a[0:n]) if swap_gates else (a[0:n], a[n : 2 * n])
    i = cell.define("i", rx.sigmoid(first))
    f = cell.define("f", rx.sigmoid(second))
    g = cell.define("g", candidate(a[2 * n : 3 * n]))
    cell.update(c, f * c.prev + i * g if forget_term else i * g)
    o = cell.define("o", rx.sigmoid(a[3 * n : 4 * n]))
    cell.update(h, o * rx.tanh(c))
    V, b_V = cell.param("V", k, n), cell.param("b_V", k)
    cell.loss(squared_error(cell.output("out", V @ h + b_V), cell.target("y", k)))
    return cell


def lstm_swapped_gates():
    """lstm with the input and forget gates swapped (rows 0:n and n:2n)."""
    return _lstm_variant(swap_gates=True)


def lstm_sigmoid_candidate():
    """lstm with a sigmoid cell candidate g instead of tanh."""
    return _lstm_variant(candidate=rx.sigmoid)


def lstm_dropped_forget_term():
    """lstm without the f ∘ c(t-1) term: c = i ∘ g."""
    return _lstm_variant(forget_term=False)


def _gru_variant(swap_gates=False, flip_interpolation=False):
    cell = rs.Cell("gru")
    n, m, k = cell.dims("n m k")
    x, h = cell.input("x", m), cell.state("h", n)
    W_ih, W_hh = cell.param("W_ih", 3 * n, m), cell.param("W_hh", 3 * n, n)
    b_ih, b_hh = cell.param("b_ih", 3 * n), cell.param("b_hh", 3 * n)
    a_x = cell.define("a_x", W_ih @ x + b_ih)
    a_h = cell.define("a_h", W_hh @ h.prev + b_hh)
    rows_r, rows_z = ((n, 2 * n), (0, n)) if swap_gates else ((0, n), (n, 2 * n))
    r = cell.define("r", rx.sigmoid(a_x[rows_r[0] : rows_r[1]] + a_h[rows_r[0] : rows_r[1]]))
    z = cell.define("z", rx.sigmoid(a_x[rows_z[0] : rows_z[1]] + a_h[rows_z[0] : rows_z[1]]))
    g = cell.define("g", rx.tanh(a_x[2 * n : 3 * n] + r * a_h[2 * n : 3 * n]))
    if flip_interpolation:
        cell.update(h, z * g + (1 - z) * h.prev)
    else:
        cell.update(h, (1 - z) * g + z * h.prev)
    V, b_V = cell.param("V", k, n), cell.param("b_V", k)
    cell.loss(squared_error(cell.output("out", V @ h + b_V), cell.target("y", k)))
    return cell


def gru_swapped_gates():
    """gru with the reset and update gates swapped."""
    return _gru_variant(swap_gates=True)


def gru_flipped_interpolation():
    """gru with h = z ∘ g + (1 − z) ∘ h(t-1) (the other convention)."""
    return _gru_variant(flip_interpolation=True)


class OtherModel:
    """The true kernel of another model, presented as the cell's kernel."""

    def __init__(self, make):
        self.kernel = rs.compile(make())

    def forward(self, params, inputs, h0=None):
        return self.kernel.forward(params, inputs, h0)

    def loss_and_grad(self, params, inputs, targets, h0=None):
        return self.kernel.loss_and_grad(params, inputs, targets, h0)

    def vjp(self, params, inputs, targets, h0=None):
        return self.kernel.vjp(params, inputs, targets, h0)


OTHER_MODELS = [
    ("elman", elman_sigmoid),
    ("elman", elman_transposed),
    ("lstm", lstm_swapped_gates),
    ("lstm", lstm_sigmoid_candidate),
    ("lstm", lstm_dropped_forget_term),
    ("gru", gru_swapped_gates),
    ("gru", gru_flipped_interpolation),
]

MUTANTS = [
    pytest.param(cell, lambda name, w=w: w(true_kernel(name)), w.__doc__, id=f"{cell}-{w.__name__}")
    for cell in CELLS
    for w in WRAPPERS
] + [
    pytest.param(cell, lambda name, m=m: OtherModel(m), m.__doc__, id=f"{cell}-{m.__name__}")
    for cell, m in OTHER_MODELS
]


def test_at_least_30_mutants_of_every_kind_the_issue_lists():
    assert len(MUTANTS) >= 30
    for cell in CELLS:
        assert sum(1 for m in MUTANTS if m.values[0] == cell) >= 10


# ----- confirming that a mutant is wrong -----


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _outputs(kernel, problem, cell, dtype) -> dict:
    """Everything a kernel returns on verify's problem, flattened to {label: array}."""

    def cast(d):
        return {n: v if v.dtype.kind in "iu" else v.astype(dtype) for n, v in d.items()}

    params, inputs, targets = cast(problem.params), cast(problem.inputs), cast(problem.targets)
    h0 = cast(problem.h0)
    fed = {n: v for n, v in problem.prepared_inputs.items() if n in cell.fed_back}
    out = {}
    loss, grads = kernel.loss_and_grad(params, inputs, targets, h0)
    out["loss"] = np.asarray(loss)
    out |= {f"grad {n}": g for n, g in grads.items()}
    out |= {
        f"forward {n}": v for n, v in kernel.forward(params, {**inputs, **cast(fed)}, h0).items()
    }
    _, _, input_grads, h0_grads = kernel.vjp(params, inputs, targets, h0)
    out |= {f"vjp x {n}": v for n, v in input_grads.items()}
    out |= {f"vjp h0 {n}": v for n, v in h0_grads.items()}
    return out


_TRUE_OUTPUTS: dict = {}


def _confirmed_wrong(mutant, kernel, cell) -> list[str]:
    """What the mutant gets wrong on verify's problem, by more than 1e-6 relative."""
    problem = kernel_problem(cell, SEED)
    wrong = []
    for dtype in (np.float64, np.float32):
        key = (cell.name, dtype)
        if key not in _TRUE_OUTPUTS:
            _TRUE_OUTPUTS[key] = _outputs(kernel, problem, cell, dtype)
        got, want = _outputs(mutant, problem, cell, dtype), _TRUE_OUTPUTS[key]
        wrong += [f"{k} ({np.dtype(dtype).name})" for k in want if _rel(got[k], want[k]) > 1e-6]
    return wrong


@pytest.mark.parametrize(("cell_name", "make", "doc"), MUTANTS)
def test_every_wrong_kernel_is_rejected(cell_name, make, doc):
    cell = CELLS[cell_name]()
    mutant = make(cell_name)
    assert doc and doc.strip()  # every mutant says what is wrong with it
    assert _confirmed_wrong(mutant, true_kernel(cell_name), cell), f"not wrong: {doc}"
    report = rs.verify(cell, mutant, oracle=False)
    assert not report.ok, f"accepted a wrong kernel ({doc}):\n{report}"


def test_the_subtle_mutants_pass_the_old_checks():
    """The gaps were real: rnnsym 0.1's finite differences (sizes 3/4/5, T = 5, B = 2,
    h(0) = 0, float64, loss_and_grad only) accept these wrong kernels."""
    from rnnsym.verify import check_gradients, random_problem

    cell = rs.cells.elman()
    kernel = true_kernel("elman")
    params, inputs, targets = random_problem(cell, T=5, B=2)
    for wrap in (LateSteps, LateRows, LateBatch, IgnoresH0InBackward, Float32Only):
        assert check_gradients(wrap(kernel), params, inputs, targets).ok, wrap.__name__
    assert check_gradients(OtherModel(elman_sigmoid), params, inputs, targets).ok


@pytest.mark.parametrize(
    ("name", "mode"),
    # forward mode is slow to check (each loss evaluation carries every parameter's
    # sensitivities, ~4 s for the lstm): elman stands for it here
    [("elman", "reverse"), ("lstm", "reverse"), ("gru", "reverse"), ("elman", "forward")],
)
def test_the_true_kernels_are_accepted(name, mode):
    cell = CELLS[name]()
    kernel = true_kernel(name) if mode == "reverse" else rs.compile(cell, mode="forward")
    report = rs.verify(cell, kernel, oracle=False)
    assert report.ok, str(report)
