"""The scalar oracle of a composed model, and ``verify_model``."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
from sympy import ImmutableMatrix

from ..derive import Derivation, derive
from ..display import attach_certificate
from ..ir.explicit import concrete, concrete_shape, forward_envs
from ..models.compose import model_sizes, random_model_problem
from .finite_differences import check_gradients
from .report import VerificationReport
from .scalar_graph import ScalarGraph, compile_cell_steps
from .symbolic import (
    _as_matrices,
    _bptt,
    _BpttRun,
    _random_matrix,
    _scalar_data,
    _scalar_oracle_size,
    _sum,
    _to_array,
    agreement_digits,
)


@dataclass
class ModelOracleReport:
    """The exact gradient of a model's unrolled loss (node-by-node ``sympy.diff``) against the
    model's derivation chained at high precision and against its generated float64 kernel."""

    model: str
    sizes: dict[str, int]
    T: int
    agreement: dict[str, float]  # vs the float64 kernel: agreeing digits (whole gradient)
    required: float
    seconds: float
    digits: int = 60
    # vs rnnsym's derivation of each part, chained as the model kernel chains them and
    # evaluated at ``digits`` digits: agreeing significant digits (worst entry)
    derivation_agreement: dict[str, float] = field(default_factory=dict)
    derivation_required: float = 40.0
    oracle_seconds: float | None = None

    @property
    def ok(self) -> bool:
        kernel = all(d >= self.required for d in self.agreement.values())
        chained = all(d >= self.derivation_required for d in self.derivation_agreement.values())
        return kernel and chained

    def __str__(self) -> str:
        def worst(values: dict[str, float]) -> str:
            low = min(values.values())
            return "exact" if math.isinf(low) else f"{low:.1f} digits"

        verdict = "ok" if self.ok else "FAILED"
        timing = f"{self.seconds:.1f} s"
        if self.oracle_seconds is not None:
            timing += f", oracle {self.oracle_seconds:.1f} s"
        chained = ""
        if self.derivation_agreement:
            chained = (
                f"the derivation chained at {self.digits} digits: worst "
                f"{worst(self.derivation_agreement)}, {self.derivation_required:.0f} "
                f"required; "
            )
        return (
            f"scalar oracle (sympy.diff node by node over the unrolled model {self.model!r}, "
            f"sizes {self.sizes}, T = {self.T}) vs {chained}{'vs ' if chained else ''}the "
            f"float64 kernel: worst "
            f"{worst(self.agreement)}, {self.required:.0f} required: {verdict} ({timing})"
        )


def model_oracle(
    model,
    sizes: dict[str, int] | None = None,
    T: int = 4,
    T_out: int | None = None,
    seed: int = 0,
    required: float = 10.0,
    digits: int = 60,
    derivation_required: float = 40.0,
    chain: bool = True,
) -> ModelOracleReport:
    """Check a composed model against the exact gradient of its unrolled loss.

    The oracle unrolls every cell in its own time direction (the backward layer from T down to 1,
    the decoder from the encoder's last state, the head at T only) into one graph and differentiates
    it node by node with ``sympy.diff`` (:mod:`rnnsym.verify.scalar_graph`), evaluated in mpmath at
    ``digits`` digits at a random rational point; nothing of rnnsym's derivation is used. It is
    compared with

    * rnnsym's derivation of each part (``chain=True``), evaluated at ``digits`` digits and
      chained as :class:`~rnnsym.models.compose.ModelKernel` chains the kernels: the head's (or
      decoder's) input or h(0) adjoints passed to each layer as the slides' d_h(t);
      ``derivation_required`` digits must agree per entry;
    * the model's generated kernel in float64 (batch 1): ``required`` digits, norm-wise.
      float64 carries about 16; the kernel's rounding over a few steps costs one to two, so 10
      flags any wrong term and no rounding.

    Defaults: sizes 3, 4, 5, ... (distinct), T = 4 (seq2seq: T_y = T + 1).
    """

    start = time.perf_counter()
    names = {**model_sizes(model, _scalar_oracle_size), **(sizes or {})}
    rng = random.Random(seed)
    parts = model.parts
    dims = {}
    for part in parts.values():
        for n, s in part.cell.size_symbols.items():
            dims[s] = names[n]
    values = {}  # exact rational parameter values, drawn in declaration order
    for part in parts.values():
        for n, p in part.cell.params.items():
            values[n] = _random_matrix(rng, *concrete_shape(p.symbol, dims))
    oracle_start = time.perf_counter()
    graph = ScalarGraph()
    keys = {n: graph.source(v, ("param", n)) for n, v in values.items()}

    def run(role: str, data: list[dict], h0: dict | None = None) -> list[dict]:
        cell = parts[role].cell
        steps = compile_cell_steps(cell, dims)
        return graph.steps(cell, steps, dims, [keys] * len(data), data, h0, prefix=role)

    inputs, targets, lengths = {}, {}, None
    datasets: dict[str, list[dict]] = {}
    if model.kind == "bidirectional":
        fwd, bwd, head = (parts[r].cell for r in ("forward", "backward", "head"))
        data = _scalar_data(fwd, dims, T, rng, {})
        nodes_f = run("forward", data)
        nodes_b = run("backward", data[::-1])[::-1]
        states = {n: [step[n] for step in nodes_f] for n in fwd.states}
        states |= {n: [step[n] for step in nodes_b] for n in bwd.states}
        head_data = _scalar_data(head, dims, T, rng, {n: states[n] for n in head.inputs})
        run("head", head_data)
        datasets = {"forward": data, "backward": data[::-1], "head": head_data}
        inputs = {n: _to_array(data, n) for n in fwd.inputs}
        targets = {n: head_data for n in head.targets}
    elif model.kind == "seq2seq":
        enc, dec = parts["encoder"].cell, parts["decoder"].cell
        T_y = T_out if T_out is not None else T + 1
        data_e = _scalar_data(enc, dims, T, rng, {})
        nodes_e = run("encoder", data_e)
        where, target, state = model.context_slot
        context = nodes_e[-1][state]
        h0, given = {}, {}
        if where == "h0":
            h0[target] = context
        else:
            given[target] = [context] * T_y
        data_d = _scalar_data(dec, dims, T_y, rng, given)
        run("decoder", data_d, h0)
        datasets = {"encoder": data_e, "decoder": data_d}
        inputs = {n: _to_array(data_e, n) for n in enc.inputs}
        inputs |= {
            n: _to_array(data_d, n) for n in dec.inputs if n not in dec.fed_back and n not in given
        }
        targets = {n: data_d for n in dec.targets}
    else:  # last_output
        layer, head = parts["layer"].cell, parts["head"].cell
        data = _scalar_data(layer, dims, T, rng, {})
        nodes = run("layer", data)
        final = {n: [nodes[-1][n]] for n in layer.states}
        head_data = _scalar_data(head, dims, 1, rng, {n: final[n] for n in head.inputs})
        run("head", head_data)
        datasets = {"layer": data, "head": head_data}
        inputs = {n: _to_array(data, n) for n in layer.inputs}
        targets = {n: head_data for n in head.targets}
        lengths = np.array([T])
    shapes = {keys[n]: v.shape for n, v in values.items()}
    _, grads = graph.gradients(list(keys.values()), digits)
    exact = _as_matrices(grads, shapes, digits)
    oracle = {n: exact[keys[n]] for n in values}
    oracle_seconds = time.perf_counter() - oracle_start
    chained_agreement = {}
    if chain:
        chained = _chained_derivation(model, dims, values, datasets, digits)
        chained_agreement = {n: agreement_digits(oracle[n], chained[n], digits) for n in values}
    # the same point in float64 for the kernel (batch 1)
    params = {}
    for part in parts.values():
        for n, p in part.cell.params.items():
            value = np.array(values[n], dtype=np.float64)
            params[n] = value.reshape(-1) if p.symbol.shape[1] == 1 else value
    target_arrays = {}
    for n, steps in targets.items():
        cell = next(p.cell for p in parts.values() if n in p.cell.targets)
        if n in cell.class_targets:
            index = np.array([[list(step[n]).index(1)] for step in steps])
            target_arrays[n] = index[0] if model.kind == "last_output" else index
        else:
            array = _to_array(steps, n)
            target_arrays[n] = array[0] if model.kind == "last_output" else array
    kernel = model.compile()
    options = {"lengths": lengths} if lengths is not None else {}
    _, kernel_grads = kernel.loss_and_grad(params, inputs, target_arrays, **options)
    agreement = {}
    for n, want in oracle.items():
        a = np.array(want, dtype=np.float64).reshape(kernel_grads[n].shape)
        scale = max(np.linalg.norm(a), 1e-300)
        error = np.linalg.norm(a - kernel_grads[n]) / scale
        agreement[n] = float("inf") if error == 0 else float(-np.log10(error))
    return ModelOracleReport(
        model.name,
        names,
        T,
        agreement,
        required,
        time.perf_counter() - start,
        digits=digits,
        derivation_agreement=chained_agreement,
        derivation_required=derivation_required,
        oracle_seconds=oracle_seconds,
    )


def _chained_derivation(model, dims: dict, values: dict, datasets: dict, digits: int) -> dict:
    """The model's gradient from rnnsym's derivation of each part, evaluated at ``digits``
    digits and chained as :class:`~rnnsym.models.compose.ModelKernel` chains the parts' kernels.

    ``datasets[role]`` is the data of each part in the order it runs; entries that are not
    matrices (nodes of the oracle's graph: another part's states, seq2seq's context) are
    replaced by this function's own values of those states.
    """
    parts = model.parts
    point = {n: v.evalf(digits) for n, v in values.items()}

    def derivation(role: str) -> Derivation:
        part = parts[role]
        return derive(part.seeded or part.cell).inlined()

    def params_of(d: Derivation, T: int) -> list[dict]:
        return [{n: point[n] for n in d.cell.params}] * T

    def state_values(d: Derivation, data: list[dict], h0: dict | None = None) -> dict:
        envs = forward_envs(d, dims, params_of(d, len(data)), data, h0 or {}, lambda m: m)
        return {
            n: [env[concrete(s.symbol, dims)] for env in envs] for n, s in d.cell.states.items()
        }

    def with_values(data: list[dict], given: dict) -> list[dict]:
        return [
            {n: (given[n][t] if n in given else v) for n, v in step.items()}
            for t, step in enumerate(data)
        ]

    def zeros_like(matrix) -> ImmutableMatrix:
        return ImmutableMatrix.zeros(*matrix.shape)

    def seeded_run(role: str, data: list[dict], adjoints: dict, h0=None) -> dict:
        """The layer with the loss Σ_t ⟨d_h(t)|h(t)⟩, d_h the adjoints passed in."""
        d = derivation(role)
        seeds = parts[role].seeds
        data = [
            {**step, **{seeds[n]: adjoints[n][t] for n in seeds}} for t, step in enumerate(data)
        ]
        run = _bptt(d, dims, params_of(d, len(data)), data, h0 or {}, digits)
        return {n: _sum(terms, digits) for n, terms in run.params.items()}

    def input_adjoints(run: _BpttRun, name: str, like: list) -> list:
        terms = run.inputs.get(name)
        return terms if terms is not None else [zeros_like(v) for v in like]

    grads: dict = {}
    if model.kind == "bidirectional":
        fwd_data, bwd_data = datasets["forward"], datasets["backward"]
        states = state_values(derivation("forward"), fwd_data)
        back = state_values(derivation("backward"), bwd_data)
        states |= {n: v[::-1] for n, v in back.items()}
        head_data = with_values(datasets["head"], states)
        d_head = derive(parts["head"].cell).inlined()
        run = _bptt(d_head, dims, params_of(d_head, len(head_data)), head_data, {}, digits)
        grads |= {n: _sum(terms, digits) for n, terms in run.params.items()}
        for role, data, order in (("forward", fwd_data, 1), ("backward", bwd_data, -1)):
            adjoints = {n: input_adjoints(run, n, states[n])[::order] for n in parts[role].seeds}
            grads |= seeded_run(role, data, adjoints)
    elif model.kind == "seq2seq":
        where, target, state = model.context_slot
        enc_data = datasets["encoder"]
        context = state_values(derivation("encoder"), enc_data)[state][-1]
        dec_data, h0 = datasets["decoder"], {}
        if where == "h0":
            h0[target] = context
        else:  # the context input reads C at every step
            dec_data = with_values(dec_data, {target: [context] * len(dec_data)})
        d_dec = derive(parts["decoder"].cell).inlined()
        run = _bptt(d_dec, dims, params_of(d_dec, len(dec_data)), dec_data, h0, digits)
        grads |= {n: _sum(terms, digits) for n, terms in run.params.items()}
        if where == "h0":
            g_context = run.h0.get(target, zeros_like(context))
        else:
            g_context = _sum(input_adjoints(run, target, [context] * len(dec_data)), digits)
        ((seeded_state, _),) = parts["encoder"].seeds.items()
        adjoint = [zeros_like(context)] * (len(enc_data) - 1) + [g_context]
        grads |= seeded_run("encoder", enc_data, {seeded_state: adjoint})
    else:  # last_output
        data = datasets["layer"]
        states = state_values(derivation("layer"), data)
        final = {n: [v[-1]] for n, v in states.items()}
        head_data = with_values(datasets["head"], final)
        d_head = derive(parts["head"].cell).inlined()
        run = _bptt(d_head, dims, params_of(d_head, 1), head_data, {}, digits)
        grads |= {n: _sum(terms, digits) for n, terms in run.params.items()}
        adjoints = {}
        for n in parts["layer"].seeds:
            (last,) = input_adjoints(run, n, final[n])
            adjoints[n] = [zeros_like(last)] * (len(data) - 1) + [last]
        grads |= seeded_run("layer", data, adjoints)
    return grads


def verify_model(model, kernel=None, T: int | None = None, seed: int = 0) -> VerificationReport:
    """The scalar oracle and finite differences of a composed model (``rnnsym derive``).

    ``T`` is the oracle's number of steps (default: :func:`model_oracle`'s).
    """

    kernel = kernel or model.compile()
    oracle = model_oracle(model, seed=seed, **({} if T is None else {"T": T}))
    params, inputs, targets = random_model_problem(model, T=5, B=3, seed=seed)
    options, notes = {}, []
    if model.kind == "last_output":
        options["lengths"] = np.array([5, 3, 1])
        notes.append("(lengths 5, 3, 1 in one padded batch)")
    grads = check_gradients(kernel, params, inputs, targets, **options)
    sizes = ", ".join(f"{n}={v}" for n, v in model_sizes(model).items())
    length = "T_x=5, T_y=6" if model.kind == "seq2seq" else "T=5"
    notes.insert(0, f"(finite differences at {sizes}, {length}, B=3)")
    report = VerificationReport(oracle=oracle, gradients=grads, notes=notes)
    attach_certificate(kernel, model, report)  # a ModelKernel shows it in Jupyter
    return report
