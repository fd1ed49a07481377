"""The PyTorch backend: the generated torch kernel against the NumPy kernel, finite differences
(``torch.autograd.gradcheck``) and autograd of plain torch re-implementations written here.

Tolerances: in float64 the torch and NumPy kernels (and the hand-written torch references)
compute the same arithmetic with matrix products summed in a different order; the rounding,
~1e-16 per operation and grown by at most the conditioning of a five-step recurrence, stays
far below 1e-10 relative, while a wrong or missing term is off by O(1) relative. gradcheck runs
with its float64 defaults (eps 1e-6, atol 1e-5, rtol 1e-3): its central differences are exact to
O(eps²) plus rounding O(1e-16 / eps) = 1e-10, well inside, and a wrong adjoint is off by O(1).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rnnsym as rs
from rnnsym.problems import random_problem

torch = pytest.importorskip(
    "torch",
    reason="PyTorch not installed: pip install '.[torch]' to test the torch backend",
)

RTOL = 1e-10  # float64, see the module docstring


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """torch on one thread: these problems are tiny, and on a shared machine torch's thread
    pool waits on busy cores (0.4 s instead of 2 ms a call)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def held_out() -> rs.Cell:
    """A minimal gated cell written here (not a built-in): a forget gate f that also gates the
    state inside the candidate's product, a context input c read at every step, a linear
    output and the squared error."""
    cell = rs.Cell("held_out")
    n, m, q, k = cell.dims("n m q k")
    x, c, h = cell.input("x", m), cell.context("c", q), cell.state("h", n)
    Wf, Uf, bf = cell.param("Wf", n, n), cell.param("Uf", n, m), cell.param("bf", n)
    W, U, Q = cell.param("W", n, n), cell.param("U", n, m), cell.param("Q", n, q)
    f = rs.sigmoid(Wf @ h.prev + Uf @ x + bf)
    cell.update(h, (1 - f) * h.prev + f * rs.tanh(W @ (f * h.prev) + U @ x + Q @ c))
    V = cell.param("V", k, n)
    cell.loss(rs.squared_error(cell.output("out", V @ h), cell.target("y", k)))
    return cell


CELLS = {"elman": rs.cells.elman, "lstm": rs.cells.lstm, "gru": rs.cells.gru, "held_out": held_out}
_KERNELS: dict = {}


def kernels(name: str):
    """(cell, NumPy kernel, torch kernel), compiled once per test session."""
    if name not in _KERNELS:
        cell = CELLS[name]()
        _KERNELS[name] = (cell, rs.compile(cell), rs.compile(cell, backend="torch"))
    return _KERNELS[name]


def tensors(arrays: dict, dtype=torch.float64, grad: bool = False) -> dict:
    out = {}
    for name, a in arrays.items():
        t = torch.tensor(a)
        t = t.to(dtype) if t.is_floating_point() else t
        out[name] = t.requires_grad_() if grad and t.is_floating_point() else t
    return out


def problem(cell, seed: int = 0, T: int = 5, B: int = 2, sizes: dict | None = None):
    """Random float64 params, inputs, targets and a nonzero h(0) for every state."""
    params, inputs, targets = random_problem(cell, sizes, T=T, B=B, seed=seed)
    rng = np.random.default_rng(seed + 100)
    values = _size_values(cell, params, inputs)
    h0 = {
        name: 0.5 * rng.normal(size=(B, int(var.shape[0].subs(values))))
        for name, var in cell.states.items()
    }
    return params, inputs, targets, h0


def _size_values(cell, params, inputs) -> dict:
    """The concrete value of every size symbol, read off the random arrays."""
    values = {}
    for group in (params, inputs):
        for name, a in group.items():
            var = cell._vars[name]
            rows, cols = var.symbol.shape
            shape = a.shape if group is params else a.shape[-1:]
            for dim, got in zip((rows, cols), shape, strict=False):
                if dim.is_Symbol:
                    values[dim] = got
    return values


def relative(got, want) -> float:
    got, want = (
        x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in (got, want)
    )
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300))


# ----- the torch kernel gives the NumPy kernel's loss and gradients -----


@pytest.mark.parametrize("name", CELLS)
def test_loss_and_every_gradient_equal_numpy_kernel(name):
    cell, numpy_kernel, torch_kernel = kernels(name)
    params, inputs, targets, h0 = problem(cell)
    want = numpy_kernel.vjp(params, inputs, targets, h0)
    got = torch_kernel.vjp(tensors(params), tensors(inputs), tensors(targets), tensors(h0))
    assert relative(got[0], want[0]) <= RTOL  # float64: see the module docstring
    for gots, wants in zip(got[1:], want[1:], strict=True):
        assert set(gots) == set(wants)
        for key in wants:
            assert gots[key].dtype == torch.float64
            assert relative(gots[key], wants[key]) <= RTOL, key
    loss, grads = torch_kernel.loss_and_grad(tensors(params), tensors(inputs), tensors(targets))
    want_loss, want_grads = numpy_kernel.loss_and_grad(params, inputs, targets)
    assert relative(loss, want_loss) <= RTOL
    for key in want_grads:
        assert relative(grads[key], want_grads[key]) <= RTOL, key
    states = torch_kernel.forward(tensors(params), tensors(inputs), tensors(h0))
    want_states = numpy_kernel.forward(params, inputs, h0)
    assert set(states) == set(want_states)
    for key in want_states:
        assert relative(states[key], want_states[key]) <= RTOL, key


@pytest.mark.parametrize("name", ["lstm", "held_out"])
def test_float32_stays_float32_and_agrees(name):
    cell, numpy_kernel, torch_kernel = kernels(name)
    params, inputs, targets, _ = problem(cell, seed=3)
    loss, grads = torch_kernel.loss_and_grad(
        tensors(params, torch.float32),
        tensors(inputs, torch.float32),
        tensors(targets, torch.float32),
    )
    want_loss, want_grads = numpy_kernel.loss_and_grad(params, inputs, targets)
    assert loss.dtype == torch.float32
    # float32 rounds at 6e-8 per operation; over five steps and sums of a few hundred terms
    # the error stays below ~1e-5 relative, so 1e-4 catches any wrong term (off by O(1))
    assert relative(loss, want_loss) <= 1e-4
    for key, want in want_grads.items():
        assert grads[key].dtype == torch.float32
        assert relative(grads[key].double(), want) <= 1e-4, key


# ----- forward is differentiable through the generated backward pass -----


@pytest.mark.parametrize("name", CELLS)
def test_gradcheck_of_forward(name):
    cell, _, torch_kernel = kernels(name)
    # small sizes: gradcheck takes two forward passes per entry and a backward pass per output
    small = {"n": 2, "m": 2, "k": 2, "q": 2}
    params, inputs, _, h0 = problem(cell, seed=1, T=3, B=2, sizes=small)
    P, X, H = tensors(params, grad=True), tensors(inputs, grad=True), tensors(h0, grad=True)
    leaves = [*P.values(), *X.values(), *H.values()]

    def run(*values):
        it = iter(values)
        p = {k: next(it) for k in P}
        x = {k: next(it) for k in X}
        h = {k: next(it) for k in H}
        return tuple(torch_kernel.forward(p, x, h).values())

    # float64 defaults (eps 1e-6, atol 1e-5, rtol 1e-3): see the module docstring
    assert torch.autograd.gradcheck(run, tuple(leaves))


def test_forward_backward_is_the_generated_adjoint_not_autograd_of_the_loop():
    _, _, torch_kernel = kernels("elman")
    cell = kernels("elman")[0]
    params, inputs, _, h0 = problem(cell)
    out = torch_kernel.forward(tensors(params, grad=True), tensors(inputs), tensors(h0))
    # one node: the autograd.Function whose backward runs _seeded_loss_and_grad
    assert type(out["h"].grad_fn).__name__ == "_ForwardBackward"
    assert "_seeded_loss_and_grad(" in torch_kernel.source


@pytest.mark.parametrize("name", CELLS)
def test_own_loss_on_forward_backpropagates_to_loss_and_grad(name):
    """The cell's squared error written in torch on forward()'s outputs: autograd through the
    generated backward gives loss_and_grad's gradients (and vjp's of the inputs and h(0))."""
    cell, _, torch_kernel = kernels(name)
    params, inputs, targets, h0 = problem(cell, seed=2)
    P, X, H = tensors(params, grad=True), tensors(inputs, grad=True), tensors(h0, grad=True)
    out = torch_kernel.forward(P, X, H)
    output = next(iter(cell.outputs))
    y = torch.tensor(targets["y"])
    loss = 0.5 * ((out[output] - y) ** 2).sum()
    loss.backward()
    want = torch_kernel.vjp(tensors(params), tensors(inputs), tensors(targets), tensors(h0))
    assert relative(loss, want[0]) <= RTOL
    for group, grads in ((P, want[1]), (X, want[2]), (H, want[3])):
        for key, value in group.items():
            assert relative(value.grad, grads[key]) <= RTOL, key


def _elman_reference(p, x, h0):
    """The Elman cell (report eqs. (2)-(4)) in plain torch, for autograd."""
    h, hs = h0, []
    for t in range(x.shape[0]):
        h = torch.tanh(p["b"] + h @ p["W"].T + x[t] @ p["U"].T)
        hs.append(h)
    h = torch.stack(hs)
    return {"h": h, "o": p["c"] + h @ p["V"].T}


def _held_out_reference(p, x, c, h0):
    """held_out() in plain torch, for autograd."""
    h, hs = h0, []
    for t in range(x.shape[0]):
        f = torch.sigmoid(h @ p["Wf"].T + x[t] @ p["Uf"].T + p["bf"])
        candidate = torch.tanh((f * h) @ p["W"].T + x[t] @ p["U"].T + c @ p["Q"].T)
        h = (1 - f) * h + f * candidate
        hs.append(h)
    h = torch.stack(hs)
    return {"h": h, "out": h @ p["V"].T}


@pytest.mark.parametrize("name", ["elman", "held_out"])
def test_vjp_equals_autograd_of_a_plain_torch_reimplementation(name):
    cell, _, torch_kernel = kernels(name)
    params, inputs, targets, h0 = problem(cell, seed=4)
    P, X, H = tensors(params, grad=True), tensors(inputs, grad=True), tensors(h0, grad=True)
    if name == "elman":
        out = _elman_reference(P, X["x"], H["h"])
    else:
        out = _held_out_reference(P, X["x"], X["c"], H["h"])
    output = next(iter(cell.outputs))
    loss = 0.5 * ((out[output] - torch.tensor(targets["y"])) ** 2).sum()
    loss.backward()
    got = torch_kernel.vjp(tensors(params), tensors(inputs), tensors(targets), tensors(h0))
    assert relative(got[0], loss) <= RTOL
    for group, grads in ((P, got[1]), (X, got[2]), (H, got[3])):
        for key, value in group.items():
            assert relative(grads[key], value.grad) <= RTOL, key


# ----- the nn.Module wrapper -----


def test_module_trains_with_the_generated_gradients():
    cell, _, torch_kernel = kernels("lstm")
    params, inputs, targets, _ = problem(cell, seed=5)
    module = torch_kernel.Module(params)
    assert {n for n, _ in module.named_parameters()} == {f"params.{n}" for n in params}
    X, Y = tensors(inputs), tensors(targets)
    loss = module.loss(X, Y)
    loss.backward()
    want_loss, want = torch_kernel.loss_and_grad(tensors(params), X, Y)
    assert relative(loss, want_loss) <= RTOL
    for key, value in module.params.items():
        assert relative(value.grad, want[key]) <= RTOL, key
    # a few optimiser steps on the generated gradients lower the loss
    optimiser = torch.optim.Adam(module.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        optimiser.zero_grad()
        loss = module.loss(X, Y)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]
    # forward() through the module is differentiable in the parameters too
    module.zero_grad()
    out = module(X)["out"]
    (0.5 * ((out - Y["y"]) ** 2).sum()).backward()
    _, want = torch_kernel.loss_and_grad({k: v.detach() for k, v in module.params.items()}, X, Y)
    for key, value in module.params.items():
        assert relative(value.grad, want[key]) <= RTOL, key


def test_module_from_sizes_has_the_spec_shapes():
    _, _, torch_kernel = kernels("gru")
    torch.manual_seed(0)
    module = torch_kernel.Module(sizes={"n": 4, "m": 3, "k": 2}, dtype=torch.float64)
    shapes = {n: tuple(p.shape) for n, p in module.params.items()}
    assert shapes == {
        "W_ih": (12, 3), "W_hh": (12, 4), "b_ih": (12,), "b_hh": (12,), "V": (2, 4), "b_V": (2,)
    }  # fmt: skip
    assert all(p.dtype == torch.float64 for p in module.parameters())
    with pytest.raises(ValueError, match=r"sizes has no value .*W_ih.*\['k', 'm', 'n'\]"):
        torch_kernel.Module(sizes={"n": 4})
    with pytest.raises(ValueError, match=r"params\['W_hh'\] is missing"):
        torch_kernel.Module(params={"W_ih": np.zeros((12, 3))})


# ----- teacher forcing and class targets -----


@pytest.mark.parametrize("name", ["teacher_forcing", "fixed_input", "elman_softmax"])
def test_fed_back_context_and_class_targets(name):
    cell = rs.cells.get(name)
    numpy_kernel, torch_kernel = rs.compile(cell), rs.compile(cell, backend="torch")
    params, inputs, targets = random_problem(cell, seed=6)
    want = numpy_kernel.vjp(params, inputs, targets)
    got = torch_kernel.vjp(tensors(params), tensors(inputs), tensors(targets))
    assert relative(got[0], want[0]) <= RTOL
    for key in want[1]:
        assert relative(got[1][key], want[1][key]) <= RTOL, key
    P = tensors(params, grad=True)
    torch_kernel.loss(P, tensors(inputs), tensors(targets)).backward()
    for key, value in P.items():
        assert relative(value.grad, want[1][key]) <= RTOL, key
    if cell.fed_back:
        full = dict(inputs)
        for fed, target in cell.fed_back.items():
            full[fed] = np.zeros((*targets[target].shape[:2], params["V"].shape[0]))
        with pytest.raises(ValueError, match=r"not differentiable .*fed back.*loss\(\)"):
            torch_kernel.forward(P, tensors(full))


# ----- errors name the tensor -----


def test_bad_input_names_the_tensor():
    cell, _, torch_kernel = kernels("elman")
    params, inputs, targets, _ = problem(cell)
    P, X, Y = tensors(params), tensors(inputs), tensors(targets)
    bad = dict(P, W=torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"params\['W'\] has shape \(3, 4\); expected \(n, n\)"):
        torch_kernel.loss_and_grad(bad, X, Y)
    with pytest.raises(ValueError, match=r"inputs\['x'\] has shape \(2, 4\); expected \(T, B, m\)"):
        torch_kernel.loss_and_grad(P, {"x": X["x"][0]}, Y)
    with pytest.raises(ValueError, match=r"inputs\['x'\] must be a torch.Tensor, got ndarray"):
        torch_kernel.loss_and_grad(P, inputs, Y)
    with pytest.raises(ValueError, match=r"targets\['y'\] has dtype torch.float32, but"):
        torch_kernel.loss_and_grad(P, X, {"y": Y["y"].float()})
    with pytest.raises(ValueError, match=r"inputs\['x'\] has dtype torch.int64; expected float"):
        torch_kernel.forward(P, {"x": X["x"].long()})
    with pytest.raises(ValueError, match=r"targets\['y'\] has 4 steps .* must not be ragged"):
        torch_kernel.loss_and_grad(P, X, {"y": Y["y"][:4]})
    with pytest.raises(ValueError, match=r"h0\['h'\] has shape \(7,\); expected \(2, 5\)"):
        torch_kernel.forward(P, X, torch.zeros(7, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"params\['U'\] is missing"):
        torch_kernel.forward({k: v for k, v in P.items() if k != "U"}, X)
    with pytest.raises(ValueError, match=r"inputs\['z'\] is not a name of this kernel"):
        torch_kernel.forward(P, dict(X, z=X["x"]))


# ----- the emitted module -----


def test_module_is_deterministic_and_imports_only_torch():
    cell, _, torch_kernel = kernels("held_out")
    from rnnsym.backends.torch import generate_module

    assert generate_module(rs.derive(cell)) == torch_kernel.source
    tree = ast.parse(torch_kernel.source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported == {"torch"}


def test_written_module_runs_without_numpy_or_rnnsym(tmp_path):
    cell, numpy_kernel, torch_kernel = kernels("held_out")
    torch_kernel.write(tmp_path / "held_out_kernel.py")
    params, inputs, targets, h0 = problem(cell, seed=7)
    want_loss, want = numpy_kernel.loss_and_grad(params, inputs, targets, h0)
    data = {k: v.tolist() for k, v in {**params, **inputs, **targets, **h0}.items()}
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["numpy"] = None  # the generated module must not need NumPy
        sys.modules["rnnsym"] = None
        import torch
        import held_out_kernel as k
        data = {{n: torch.tensor(v, dtype=torch.float64) for n, v in {data!r}.items()}}
        params = {{n: data[n].requires_grad_() for n in k.SPEC["params"]}}
        inputs = {{n: data[n] for n in k.SPEC["inputs"]}}
        targets = {{n: data[n] for n in k.SPEC["targets"]}}
        module = k.Module(params)
        loss = module.loss(inputs, targets, data["h"])
        loss.backward()
        print(repr(float(loss)))
        for name in k.SPEC["params"]:
            print(name, repr(module.params[name].grad.flatten().tolist()))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert relative(float(lines[0]), want_loss) <= RTOL
    for line in lines[1:]:
        name, values = line.split(" ", 1)
        assert relative(np.array(ast.literal_eval(values)), want[name].ravel()) <= RTOL, name


# ----- agreement with torch.nn -----


def _torch_nn_params(name: str, module, V, bias) -> dict:
    """rnnsym's parameters as the torch.nn module's own tensors, in the layout of
    rnnsym/verify/torch_compare.py (an Elman cell's one bias is torch's two added)."""
    if name in ("lstm", "gru"):
        return {
            "W_ih": module.weight_ih_l0,
            "W_hh": module.weight_hh_l0,
            "b_ih": module.bias_ih_l0,
            "b_hh": module.bias_hh_l0,
            "V": V,
            "b_V": bias,
        }
    return {
        "W": module.weight_hh_l0,
        "U": module.weight_ih_l0,
        "b": module.bias_ih_l0 + module.bias_hh_l0,
        "V": V,
        "c": bias,
    }


@pytest.mark.parametrize("name", ["elman", "elman_relu", "lstm", "gru"])
def test_forward_and_its_gradients_equal_torch_nn(name):
    """forward() on torch.nn's own parameter tensors: the same state sequence, and autograd
    through the generated backward gives torch's gradients of the weights, inputs and h(0)."""
    torch.manual_seed(0)
    n, m, k, T, B = 4, 3, 2, 5, 2
    if name == "lstm":
        module = torch.nn.LSTM(m, n).double()
    elif name == "gru":
        module = torch.nn.GRU(m, n).double()
    else:
        nonlinearity = "relu" if name == "elman_relu" else "tanh"
        module = torch.nn.RNN(m, n, nonlinearity=nonlinearity).double()
    kernel = rs.compile(rs.cells.get(name), backend="torch")
    V = torch.randn(k, n, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(k, dtype=torch.float64, requires_grad=True)
    x = torch.randn(T, B, m, dtype=torch.float64, requires_grad=True)
    h0 = {"h": torch.randn(B, n, dtype=torch.float64, requires_grad=True)}
    if name == "lstm":
        h0["c"] = torch.randn(B, n, dtype=torch.float64, requires_grad=True)
        want, _ = module(x, (h0["h"][None], h0["c"][None]))
    else:
        want, _ = module(x, h0["h"][None])
    got = kernel.forward(_torch_nn_params(name, module, V, bias), {"x": x}, h0)["h"]
    assert relative(got, want) <= RTOL  # float64, see the module docstring
    weights = torch.randn(T, B, n, dtype=torch.float64)
    leaves = [*module.parameters(), x, *h0.values()]
    want_grads = torch.autograd.grad((want * weights).sum(), leaves)
    got_grads = torch.autograd.grad((got * weights).sum(), leaves)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        assert relative(got_grad, want_grad) <= RTOL


# ----- torch.distributed -----

_WORKER = '''
import torch
import torch.distributed as dist

import held_out_kernel as kernel


def run(rank, world, folder):
    """One of ``world`` processes: its shard of the batch through DistributedDataParallel."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                            world_size=world)
    data = torch.load(f"{folder}/data.pt")
    model = torch.nn.parallel.DistributedDataParallel(kernel.Module(data["params"]))
    shard = slice(rank * data["B"] // world, (rank + 1) * data["B"] // world)
    inputs = {n: a[:, shard] if a.dim() == 3 else a[shard] for n, a in data["inputs"].items()}
    out = model(inputs)["out"]
    loss = 0.5 * ((out - data["y"][:, shard]) ** 2).sum()
    loss.backward()  # DDP all-reduces the gradients: their mean over the processes
    loss = loss.detach()
    dist.all_reduce(loss)
    if rank == 0:
        grads = {n: p.grad for n, p in model.module.params.items()}
        torch.save({"loss": loss, "grads": grads}, f"{folder}/result.pt")
    dist.destroy_process_group()
'''


def test_distributed_data_parallel_gives_the_single_process_gradients(tmp_path):
    """Two processes on localhost (gloo), each with half the batch: the all-reduced gradients
    of DistributedDataParallel over the torch Module are the single-process gradients / 2."""
    import torch.multiprocessing as mp

    cell, _, torch_kernel = kernels("held_out")
    torch_kernel.write(tmp_path / "held_out_kernel.py")
    (tmp_path / "held_out_worker.py").write_text(_WORKER)
    params, inputs, targets, _ = problem(cell, seed=8, B=4)
    P, X, Y = tensors(params), tensors(inputs), tensors(targets)
    torch.save({"params": P, "inputs": X, "y": Y["y"], "B": 4}, tmp_path / "data.pt")
    sys.path.insert(0, str(tmp_path))
    try:
        import held_out_worker

        # spawned, not forked: forking a process that has started JAX's or torch's threads
        # (other test files run first in the same session) can deadlock the children
        mp.start_processes(
            held_out_worker.run, args=(2, str(tmp_path)), nprocs=2, start_method="spawn"
        )
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("held_out_worker", None)
        sys.modules.pop("held_out_kernel", None)
    result = torch.load(tmp_path / "result.pt")
    want_loss, want = torch_kernel.loss_and_grad(P, X, Y)
    assert relative(result["loss"], want_loss) <= RTOL  # float64, see the module docstring
    for key, value in want.items():
        assert relative(2 * result["grads"][key], value) <= RTOL, key


# ----- the apple demo, trained with the torch Module -----


def test_apple_demo_trains_with_the_torch_module():
    """rnnsym demo apple (Elman cell, softmax cross-entropy, class targets, plain gradient
    descent ε = 0.5, 400 steps) with torch.optim.SGD on the torch Module: the NumPy demo's loss
    curve, and the trained cell generates the sentence from "This"."""
    from rnnsym.demo import SENTENCE, apple
    from rnnsym.models.architectures import elman_softmax

    K, hidden, steps = len(SENTENCE), 8, 400
    kernel = rs.compile(elman_softmax(), backend="torch")
    # the initial weights of rnnsym.demo.apple(seed=0), drawn the same way
    rng = np.random.default_rng(0)
    params = {
        "W": rng.normal(0, 0.5 / np.sqrt(hidden), (hidden, hidden)),
        "U": rng.normal(0, 0.5, (hidden, K)),
        "b": np.zeros(hidden),
        "V": rng.normal(0, 0.5 / np.sqrt(hidden), (K, hidden)),
        "c": np.zeros(K),
    }
    module = kernel.Module(params)
    eye = torch.eye(K, dtype=torch.float64)
    inputs = {"x": eye[:-1, None, :]}  # (T=4, B=1, K): This, is, an, apple
    targets = {"y": torch.arange(1, K)[:, None]}  # the index of the next token
    optimiser = torch.optim.SGD(module.parameters(), lr=0.5)
    losses = []
    for _ in range(steps):
        optimiser.zero_grad()
        loss = module.loss(inputs, targets)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    want = apple(steps=steps).losses
    # 400 gradient steps from one start: the rounding differences of torch and NumPy (1e-16)
    # grow little on this smooth descent; 1e-9 relative catches any wrong gradient at once
    assert np.max(np.abs(np.array(losses) - want) / np.array(want)) <= 1e-9
    assert losses[-1] < 0.01 * losses[0]
    # greedy generation from "This" with forward(), one step at a time
    words, x, h = [SENTENCE[0]], eye[0], None
    params = {k: v.detach() for k, v in module.params.items()}
    for _ in range(K - 1):
        out = kernel.forward(params, {"x": x[None, None]}, h)
        token = int(out["o"][0, 0].argmax())
        words.append(SENTENCE[token])
        x, h = eye[token], out["h"][0]
    assert tuple(words) == SENTENCE


# ----- the cell's names -----


def _named_cell(param: str, input_name: str = "x") -> rs.Cell:
    cell = rs.Cell("named")
    n, m = cell.dims("n m")
    x, h = cell.input(input_name, m), cell.state("h", n)
    W, U = cell.param(param, n, n), cell.param("U", n, m)
    cell.update(h, rs.tanh(W @ h.prev + U @ x))
    cell.loss(rs.squared_error(cell.output("o", h), cell.target("y", n)))
    return cell


@pytest.mark.parametrize(("param", "input_name"), [("device", "x"), ("Module", "SEEDS")])
def test_names_of_the_torch_module_are_free_for_the_cell(param, input_name):
    cell = _named_cell(param, input_name)
    numpy_kernel, torch_kernel = rs.compile(cell), rs.compile(cell, backend="torch")
    params, inputs, targets = random_problem(cell, seed=9)
    want_loss, want = numpy_kernel.loss_and_grad(params, inputs, targets)
    loss, grads = torch_kernel.loss_and_grad(tensors(params), tensors(inputs), tensors(targets))
    assert relative(loss, want_loss) <= RTOL  # float64, see the module docstring
    for key in want:
        assert relative(grads[key], want[key]) <= RTOL, key


def test_a_quantity_named_torch_is_refused_clearly():
    with pytest.raises(rs.DerivationError, match=r"names a quantity 'torch'.*rename"):
        rs.compile(_named_cell("torch"), backend="torch")


def _user_function_cell() -> rs.Cell:
    """A user activation with irrational constants and a maximum, and a parameter d that
    enters only the loss (forward() does not depend on it)."""
    import sympy as sp

    bent = rs.elementwise(
        "bent_torch_test", lambda z: sp.Max(z, z / 10) + sp.sqrt(2) * sp.pi * z / (4 + z**2)
    )
    cell = rs.Cell("user_function")
    n, m = cell.dims("n m")
    x, h = cell.input("x", m), cell.state("h", n)
    W, U = cell.param("W", n, n), cell.param("U", n, m)
    cell.update(h, 0.5 * rs.tanh(bent(W @ h.prev + U @ x)))
    cell.loss(rs.squared_error(h, cell.target("y", n)))
    cell.loss(rs.linear_loss(cell.param("d", n), h))
    return cell


def test_user_function_and_a_parameter_only_in_the_loss():
    cell = _user_function_cell()
    numpy_kernel, torch_kernel = rs.compile(cell), rs.compile(cell, backend="torch")
    params, inputs, targets = random_problem(cell, seed=10)
    want = numpy_kernel.vjp(params, inputs, targets)
    got = torch_kernel.vjp(tensors(params), tensors(inputs), tensors(targets))
    assert relative(got[0], want[0]) <= RTOL  # float64, see the module docstring
    for key in want[1]:
        assert relative(got[1][key], want[1][key]) <= RTOL, key
    P = tensors(params, grad=True)
    torch_kernel.loss(P, tensors(inputs), tensors(targets)).backward()
    for key, value in P.items():
        assert relative(value.grad, want[1][key]) <= RTOL, key
    with pytest.raises(ValueError, match=r"not differentiable .*\['d'\] enter only the loss"):
        torch_kernel.forward(P, tensors(inputs))
