"""The scalar oracle of a nested model: ``sympy.diff`` node by node over the whole model
unrolled, in exact arithmetic, against the model's generated kernel.

Every cell of the model (each direction of a bidirectional layer in its own time order, the
head at every step) is unrolled into one :class:`~rnnsym.verify.scalar_graph.ScalarGraph` from
its own equations; a bidirectional layer's concatenation is a node of its own. The gradient of
the total loss is then evaluated in mpmath at a random rational point. Nothing of rnnsym's
derivation, its rules or its kernels is used by the oracle.
"""

from __future__ import annotations

import random
import time

import numpy as np
import sympy as sp
from sympy import ImmutableMatrix, MatrixSymbol

from ..ir.explicit import concrete_shape
from ..ir.ops import concat
from ..models.nested import Both, CellLayer, Chain, NestedModel, NestedSeq2Seq, Reversed
from .models import ModelOracleReport
from .scalar_graph import ScalarGraph, _compile, compile_cell_steps
from .symbolic import _random_matrix, _scalar_data

__all__ = ["nested_oracle", "nested_finite_differences"]


def nested_oracle(
    model: NestedModel,
    T: int = 3,
    size: int = 2,
    inputs: int = 2,
    seed: int = 0,
    digits: int = 60,
    required: float = 10.0,
) -> ModelOracleReport:
    """Check a nested model's kernel against the exact gradient of its unrolled loss.

    Every size of every cell is ``size``, the bottom input ``inputs`` wide (each layer's input
    the width of the output below it), T steps, batch 1. ``required`` digits must agree,
    norm-wise per parameter, between the oracle and the float64 kernel: float64 carries about
    16 and a few steps of rounding cost one or two, so 10 flags any wrong term.
    """
    if not isinstance(model, NestedModel | NestedSeq2Seq):
        raise TypeError(f"nested_oracle needs a nested model, got {type(model).__name__}")
    start = time.perf_counter()
    rng = random.Random(seed)
    graph = ScalarGraph()
    values: dict[str, ImmutableMatrix] = {}
    keys: dict = {}

    def declare(cell, dims) -> None:
        for name, p in cell.params.items():
            values[name] = _random_matrix(rng, *concrete_shape(p.symbol, dims))
            keys[name] = graph.source(values[name], ("param", name))

    def run(layer, xs: list, width: int) -> tuple[list, int]:
        """The output nodes of ``layer`` at every step for input nodes ``xs``, and its width."""
        if isinstance(layer, CellLayer):
            cell = layer.cell
            dims = dict.fromkeys(cell.size_symbols.values(), size)
            dims[cell.inputs[layer.input].symbol.shape[0]] = width
            declare(cell, dims)
            steps = compile_cell_steps(cell, dims)
            data = [{layer.input: x} for x in xs]
            nodes = graph.steps(cell, steps, dims, [keys] * len(xs), data, prefix=cell.name)
            out_rows = int(sp.sympify(cell.states[layer.state].symbol.shape[0]).xreplace(dims))
            return [step[layer.state] for step in nodes], out_rows
        if isinstance(layer, Reversed):  # batch 1: the sequence reversed as a whole
            ys, rows = run(layer.layer, xs[::-1], width)
            return ys[::-1], rows
        if isinstance(layer, Both):
            forward, rows_f = run(layer.forward_layer, xs, width)
            backward, rows_b = run(layer.backward_layer, xs, width)
            a, b = MatrixSymbol("a", rows_f, 1), MatrixSymbol("b", rows_b, 1)
            both = MatrixSymbol("ab", rows_f + rows_b, 1)
            step = _compile("ab", "define", both, concat(a, b), {})
            out = [
                graph.apply(step, [f, g], ("concat", id(layer), t))
                for t, (f, g) in enumerate(zip(forward, backward, strict=True))
            ]
            return out, rows_f + rows_b
        assert isinstance(layer, Chain)
        for inner in layer.layers:
            xs, width = run(inner, xs, width)
        return xs, width

    x = [_random_matrix(rng, inputs, 1) for _ in range(T)]
    x_nodes = [graph.source(v, ("input", model.input, t)) for t, v in enumerate(x)]
    extra_inputs = {}
    if isinstance(model, NestedSeq2Seq) and model.slot[0] == "input":
        # a decoder model reads [y(t-1); C] at every step: concatenation nodes
        top, width = run(model.encoder, x_nodes, inputs)
        context, steps_out, name = top[-1], T + 1, model.slot[1]
        ys = [_random_matrix(rng, size, 1) for _ in range(steps_out)]
        a, b = MatrixSymbol("a", size, 1), MatrixSymbol("b", width, 1)
        join = _compile("ab", "define", MatrixSymbol("ab", size + width, 1), concat(a, b), {})
        previous = [graph.source(ImmutableMatrix.zeros(size, 1), ("y", "initial"))]
        previous += [graph.source(v, ("y", t)) for t, v in enumerate(ys[:-1])]
        dec_x = [graph.apply(join, [p, context], ("dec_x", t)) for t, p in enumerate(previous)]
        dec_top, dec_width = run(model.decoder.body, dec_x, size + width)
        head = model.decoder.head
        head_dims = dict.fromkeys(head.size_symbols.values(), size)
        head_dims[head.inputs[model.decoder.head_input].symbol.shape[0]] = dec_width
        declare(head, head_dims)
        head_data = _scalar_data(
            head, head_dims, steps_out, rng, {model.decoder.head_input: dec_top, name: ys}
        )
        head_steps = compile_cell_steps(head, head_dims)
        graph.steps(head, head_steps, head_dims, [keys] * steps_out, head_data, prefix="dec")
    elif isinstance(model, NestedSeq2Seq):  # the encoder's last output is C; T_y = T + 1
        top, width = run(model.encoder, x_nodes, inputs)
        head, steps_out = model.decoder, T + 1
        where, slot = model.slot
        variable = head.inputs[slot] if where == "context" else head.states[slot]
        head_dims = dict.fromkeys(head.size_symbols.values(), size)
        head_dims[variable.symbol.shape[0]] = width
        declare(head, head_dims)
        given = {slot: [top[-1]] * steps_out} if where == "context" else {}
        h0 = {slot: top[-1]} if where == "h0" else None
        head_data = _scalar_data(head, head_dims, steps_out, rng, given)
        head_steps = compile_cell_steps(head, head_dims)
        graph.steps(head, head_steps, head_dims, [keys] * steps_out, head_data, h0, prefix="dec")
        for name in head.inputs:
            if name not in given and name not in head.fed_back:
                extra_inputs[name] = np.array(
                    [[[float(v) for v in step[name]]] for step in head_data]
                )
    else:
        top, width = run(model.body, x_nodes, inputs)
        head = model.head
        head_dims = dict.fromkeys(head.size_symbols.values(), size)
        head_dims[head.inputs[model.head_input].symbol.shape[0]] = width
        declare(head, head_dims)
        reads = [top[-1]] if model.last_only else top  # Fig. 5: the head at T only
        head_data = _scalar_data(head, head_dims, len(reads), rng, {model.head_input: reads})
        head_steps = compile_cell_steps(head, head_dims)
        graph.steps(head, head_steps, head_dims, [keys] * len(reads), head_data, prefix="head")
    oracle_start = time.perf_counter()
    _, grads = graph.gradients(list(keys.values()), digits)
    oracle_seconds = time.perf_counter() - oracle_start

    # the same point in float64 for the kernel (batch 1)
    params = {}
    for name, value in values.items():
        array = np.array(value, dtype=np.float64)
        params[name] = (
            array.reshape(-1) if value.shape[1] == 1 and _is_vector(model, name) else array
        )
    targets = {}
    for name in head.targets:
        if name in head.class_targets:
            targets[name] = np.array([[list(step[name]).index(1)] for step in head_data])
        else:
            targets[name] = np.array([[[float(v) for v in step[name]]] for step in head_data])
    if isinstance(model, NestedModel) and model.last_only:  # one target per sequence
        targets = {n: a[0] for n, a in targets.items()}
    x_array = np.array([[[float(v) for v in step]] for step in x])
    model_inputs = {model.input: x_array, **extra_inputs}
    _, kernel_grads = model.compile().loss_and_grad(params, model_inputs, targets)
    agreement = {}
    for name in values:
        exact = np.array([float(v) for v in grads[keys[name]]]).reshape(kernel_grads[name].shape)
        scale = max(np.linalg.norm(exact), 1e-300)
        error = np.linalg.norm(exact - kernel_grads[name]) / scale
        agreement[name] = float("inf") if error == 0 else float(-np.log10(error))
    return ModelOracleReport(
        model.name,
        {"size": size, "inputs": inputs},
        T,
        agreement,
        required,
        time.perf_counter() - start,
        digits=digits,
        oracle_seconds=oracle_seconds,
    )


def _is_vector(model, name: str) -> bool:
    """Whether the parameter ``name`` is declared as a vector (its array is 1-D)."""
    for cell in model.cells():
        if name in cell.params:
            return cell.params[name].symbol.shape[1] == 1
    return False


def nested_finite_differences(model, T: int = 4) -> list[tuple[object, object]]:
    """Central finite differences of a nested model's kernel on a random problem (batch 2),
    on a full batch and on a padded one: ``[(None, report), (lengths, report)]``. The padded
    batch's second sequence is two steps short (a seq2seq model: a pair of lengths, the
    outputs one step longer than the inputs, as its random problem)."""
    from .finite_differences import check_gradients

    kernel = model.compile()
    params, inputs, targets = model.random_problem(T=T, B=2, seed=0)
    padded = [T, max(1, T - 2)]
    if isinstance(model, NestedSeq2Seq):  # the inputs' lengths and the outputs'
        padded = (padded, [T + 1, max(1, T - 1)])
    return [
        (lengths, check_gradients(kernel, params, inputs, targets, lengths=lengths))
        for lengths in (None, padded)
    ]
