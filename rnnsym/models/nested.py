"""Models that nest: layers, themselves cells or models, stacked and run both ways, with a head.

A *sequence layer* maps one input sequence x(1..T) to one output sequence: a cell run over
time (its output is its state ``h``, or its only state), a cell or a model run backwards
(:func:`reversed_layer`), two layers side by side reading the same input, their outputs
concatenated (a bidirectional layer, as ``torch.nn.GRU(bidirectional=True)``), or layers in
a chain (a stack). A :class:`NestedModel` is such a layer with a *head* on top: a cell without
state, with the outputs and the per-step loss, reading the top layer's output at every step.

Nothing here differentiates: every gradient comes from generated kernels. Each cell of the
tree gets the slides' linear loss Σ_t ⟨d_h(t)|h(t)⟩ on its output state (``_seed``), and its
kernel's ``vjp`` turns the adjoint ∇_{h(t)}L handed down from above into the gradients of its
parameters and the adjoint of its input, which is handed on below: the chain rule across
layers is the order in which :class:`NestedKernel` calls the kernels.

With ``lengths`` (one per sequence of a padded batch) a reversed layer starts at each
sequence's own end, and the head's loss counts the real steps only (:mod:`rnnsym.backends.lengths`),
so the padding reaches nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from ..backends import lengths as _lengths
from ..cell import Cell
from ..errors import CellError
from ..transform import replay, seeded_cell, suffixed

__all__ = [
    "SequenceLayer",
    "CellLayer",
    "Reversed",
    "Both",
    "Chain",
    "NestedModel",
    "NestedKernel",
    "reverse_each",
]


def reverse_each(a: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """Each sequence of the batch reversed within its own length (steps past it stay put)."""
    if lengths is None:
        return a[::-1]
    T, B = a.shape[:2]
    t = np.arange(T)[:, None]
    index = np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
    return a[index, np.arange(B)[None, :]]


class SequenceLayer:
    """One input sequence in, one output sequence out; parameters from its cells."""

    def cells(self) -> list[CellLayer]:
        raise NotImplementedError

    @property
    def params(self) -> dict:
        out: dict = {}
        for leaf in self.cells():
            out.update(leaf.cell.params)
        return out

    def renamed(self, suffix: str) -> SequenceLayer:
        """A copy whose cells' states and parameters end in ``suffix``."""
        raise NotImplementedError

    def forward(self, params: dict, x: np.ndarray, lengths) -> tuple[np.ndarray, object]:
        raise NotImplementedError

    def backward(self, params: dict, cache, g_y: np.ndarray, lengths) -> tuple[dict, np.ndarray]:
        """(parameter gradients, adjoint of the input sequence) for the adjoint ``g_y`` of the
        output sequence."""
        raise NotImplementedError

    def describe(self, indent: str = "") -> list[str]:
        raise NotImplementedError


@dataclass(eq=False)
class CellLayer(SequenceLayer):
    """A cell run forward in time: its one per-step input in, its state ``h`` (or its only
    state) out."""

    cell: Cell
    input: str = ""
    state: str = ""
    _kernel: object = field(default=None, repr=False)
    _seed: str = ""

    def __post_init__(self):
        cell = self.cell
        if cell._loss_terms or cell.output_defs or cell.targets:
            raise CellError(
                f"layer {cell.name!r} has outputs, targets or a loss; a layer of a nested model "
                f"has only inputs, states and parameters (built-ins: output=False, e.g. "
                f"rs.cells.gru(output=False)); the loss belongs to the model's head"
            )
        cell.check(loss=False)
        per_step = [n for n in cell.inputs if n not in cell.context_inputs]
        if len(per_step) != 1 or cell.context_inputs or cell.fed_back:
            raise CellError(
                f"layer {cell.name!r} has inputs {', '.join(cell.inputs) or 'none'}; a layer of "
                f"a nested model reads exactly one per-step input, the sequence below it"
            )
        if not cell.states:
            raise CellError(f"layer {cell.name!r} has no state; a layer needs cell.state(...)")
        if self.state in cell.states:  # named by the layer this one is a renamed copy of
            state = self.state
        elif len(cell.states) == 1:
            state = next(iter(cell.states))
        elif "h" in cell.states:
            state = "h"
        else:
            raise CellError(
                f"layer {cell.name!r} has states {', '.join(cell.states)}; the state passed on "
                f"must be the only one or be called 'h'"
            )
        self.input, self.state = per_step[0], state

    def cells(self) -> list[CellLayer]:
        return [self]

    def renamed(self, suffix: str) -> CellLayer:
        cell = self.cell
        copy = Cell(f"{cell.name}{suffix}")
        keep = set(cell.inputs) | set(cell.size_symbols)
        replay(cell, copy, lambda n: n if n in keep else suffixed(n, suffix))
        return CellLayer(copy, state=suffixed(self.state, suffix))

    @property
    def kernel(self):
        """The generated kernel of the cell with the loss Σ_t ⟨d_h(t)|h(t)⟩ on its output."""
        if self._kernel is None:
            from ..kernel import compile_cell

            seeded, seeds = seeded_cell(self.cell, [self.state])
            self._kernel, self._seed = compile_cell(seeded), seeds[self.state]
        return self._kernel

    def _params(self, params: dict) -> dict:
        return {n: params[n] for n in self.cell.params if n in params}

    def forward(self, params, x, lengths):
        states = self.kernel.forward(self._params(params), {self.input: x})
        return np.ascontiguousarray(states[self.state]), x

    def backward(self, params, cache, g_y, lengths):
        _, grads, g_in, _ = self.kernel.vjp(
            self._params(params), {self.input: cache}, {self._seed: np.ascontiguousarray(g_y)}
        )
        return grads, g_in[self.input]

    def describe(self, indent: str = "") -> list[str]:
        params = ", ".join(self.cell.params)
        return [f"{indent}{self.cell.name}: {self.input}(t) → {self.state}(t)  [{params}]"]


@dataclass(eq=False)
class Reversed(SequenceLayer):
    """A layer run from each sequence's end to its start."""

    layer: SequenceLayer

    def cells(self) -> list[CellLayer]:
        return self.layer.cells()

    def renamed(self, suffix: str) -> Reversed:
        return Reversed(self.layer.renamed(suffix))

    def forward(self, params, x, lengths):
        y, cache = self.layer.forward(params, reverse_each(x, lengths), lengths)
        return reverse_each(y, lengths), cache

    def backward(self, params, cache, g_y, lengths):
        grads, g_x = self.layer.backward(params, cache, reverse_each(g_y, lengths), lengths)
        return grads, reverse_each(g_x, lengths)

    def describe(self, indent: str = "") -> list[str]:
        return [f"{indent}run backwards in time (t = T..1, from each sequence's end):"] + (
            self.layer.describe(indent + "  ")
        )


@dataclass(eq=False)
class Both(SequenceLayer):
    """Two layers reading the same input; their outputs concatenated, [forward; backward]."""

    forward_layer: SequenceLayer
    backward_layer: SequenceLayer

    def cells(self) -> list[CellLayer]:
        return self.forward_layer.cells() + self.backward_layer.cells()

    def renamed(self, suffix: str) -> Both:
        return Both(self.forward_layer.renamed(suffix), self.backward_layer.renamed(suffix))

    def forward(self, params, x, lengths):
        y_f, cache_f = self.forward_layer.forward(params, x, lengths)
        y_b, cache_b = self.backward_layer.forward(params, x, lengths)
        return np.concatenate([y_f, y_b], axis=-1), (cache_f, cache_b, y_f.shape[-1])

    def backward(self, params, cache, g_y, lengths):
        cache_f, cache_b, split = cache
        grads, g_x = self.forward_layer.backward(params, cache_f, g_y[..., :split], lengths)
        grads_b, g_x_b = self.backward_layer.backward(params, cache_b, g_y[..., split:], lengths)
        return {**grads, **grads_b}, g_x + g_x_b

    def describe(self, indent: str = "") -> list[str]:
        return (
            [f"{indent}both ways, outputs concatenated [forward; backward]:"]
            + self.forward_layer.describe(indent + "  ")
            + self.backward_layer.describe(indent + "  ")
        )


@dataclass(eq=False)
class Chain(SequenceLayer):
    """Layers stacked: each reads the output sequence of the one below."""

    layers: list[SequenceLayer]

    def cells(self) -> list[CellLayer]:
        return [leaf for layer in self.layers for leaf in layer.cells()]

    def renamed(self, suffix: str) -> Chain:
        return Chain([layer.renamed(suffix) for layer in self.layers])

    def forward(self, params, x, lengths):
        caches = []
        for layer in self.layers:
            x, cache = layer.forward(params, x, lengths)
            caches.append(cache)
        return x, caches

    def backward(self, params, cache, g_y, lengths):
        grads: dict = {}
        for layer, layer_cache in zip(reversed(self.layers), reversed(cache), strict=True):
            layer_grads, g_y = layer.backward(params, layer_cache, g_y, lengths)
            grads.update(layer_grads)
        return grads, g_y

    def describe(self, indent: str = "") -> list[str]:
        lines = [f"{indent}stacked, bottom first:"]
        for i, layer in enumerate(self.layers, 1):
            lines += [f"{indent}  layer {i}:"] + layer.describe(indent + "    ")
        return lines


def _unique_params(cells: list[Cell], what: str) -> None:
    """Refuse a parameter name declared by two of ``cells`` (the kernels share one dict)."""
    seen: dict[str, str] = {}
    for cell in cells:
        for name in cell.params:
            if name in seen:
                raise CellError(
                    f"{what}: parameter {name!r} is declared by both {seen[name]!r} and "
                    f"{cell.name!r}; give each cell's parameters their own names"
                )
            seen[name] = cell.name


@dataclass(eq=False)
class NestedModel:
    """A sequence layer (a stack, a bidirectional layer, ...) with a head: a cell without state
    that reads the top layer's output at each step and has the outputs and the loss."""

    name: str
    body: SequenceLayer
    head: Cell
    head_input: str = ""
    kind: str = "nested"
    # Fig. 5: the head reads the top output at each sequence's own last step only, and the
    # targets are one per sequence, (B, size) or class indices (B,)
    last_only: bool = False

    def __post_init__(self):
        head = self.head
        if head.states:
            raise CellError(
                f"head {head.name!r} has state(s) {', '.join(head.states)}; a head is applied at "
                f"each step on its own and has none"
            )
        head.check()
        per_step = [
            n for n in head.inputs if n not in head.context_inputs and n not in head.fed_back
        ]
        if len(per_step) != 1 or len(head.inputs) != 1:
            raise CellError(
                f"head {head.name!r} has inputs {', '.join(head.inputs) or 'none'}; the head of "
                f"a nested model reads one per-step input, the top layer's output"
            )
        self.head_input = per_step[0]
        bottom = self.body.cells()[0]
        self.input = bottom.input
        _unique_params(self.cells(), f"model {self.name!r}")

    def cells(self) -> list[Cell]:
        """Every cell of the model, bottom first, the head last."""
        return [leaf.cell for leaf in self.body.cells()] + [self.head]

    @property
    def params(self) -> dict:
        return {**self.body.params, **self.head.params}

    def describe(self) -> str:
        """The model's structure: its layers, bottom first, and the head."""
        lines = [f"model {self.name!r}: input {self.input}(t)"]
        lines += self.body.describe("  ")
        params = ", ".join(self.head.params)
        when = "at each sequence's last step" if self.last_only else "at every step"
        lines.append(
            f"  head {self.head.name}: reads {self.head_input}(t), the top output, {when} "
            f"[{params}]"
        )
        return "\n".join(lines)

    def derive(self):
        """The derivations of every cell of the model, each seeded by the adjoint of its output
        (or, for the head, with the model's loss)."""
        from ..derive import derive

        parts = {}
        for leaf in self.body.cells():
            seeded, _ = seeded_cell(leaf.cell, [leaf.state])
            parts[leaf.cell.name] = derive(seeded)
        parts[self.head.name] = derive(self.head)
        return parts

    def compile(self) -> NestedKernel:
        return NestedKernel(self)

    def random_problem(self, T: int = 5, B: int = 2, seed: int = 0, size: int = 3, inputs: int = 4):
        """Random float64 ``(params, inputs, targets)``: every size of every cell ``size``,
        the bottom layer's input of size ``inputs``, each layer's input the width of the
        output below it (twice a direction's for a bidirectional layer)."""
        rng = np.random.default_rng(seed)
        params: dict = {}
        top = _random_layer_params(self.body, inputs, size, rng, params)
        sizes = dict.fromkeys(self.head.size_symbols.values(), size)
        sizes[self.head.inputs[self.head_input].symbol.shape[0]] = top
        for name, var in self.head.params.items():
            shape = tuple(int(sp.sympify(d).subs(sizes)) for d in var.symbol.shape)
            params[name] = rng.normal(scale=0.5, size=shape[:1] if shape[1:] == (1,) else shape)
        x = rng.normal(size=(T, B, inputs))
        targets = {}
        steps = () if self.last_only else (T,)  # Fig. 5: one target per sequence
        for name, var in self.head.targets.items():
            k = int(sp.sympify(var.symbol.shape[0]).subs(sizes))
            if name in self.head.class_targets:
                targets[name] = rng.integers(0, k, size=(*steps, B))
            else:
                targets[name] = rng.normal(size=(*steps, B, k))
        return params, {self.input: x}, targets

    def __repr__(self) -> str:
        return f"NestedModel({self.name!r}: {len(self.body.cells())} cells and a head)"


class NestedKernel:
    """The generated kernels of a nested model's cells, chained by the chain rule.

    ``loss_and_grad(params, inputs, targets, lengths=None)`` returns ``(loss, grads)``;
    ``vjp`` also the adjoint of the input sequence; ``forward`` the top layer's output and the
    head's outputs. ``inputs`` has one sequence (T, B, size), under the bottom layer's input
    name; ``lengths`` (B,) integers, one per sequence of a padded batch.
    """

    def __init__(self, model: NestedModel):
        from ..kernel import compile_cell

        self.model = model
        self.head = compile_cell(model.head)
        for leaf in model.body.cells():
            leaf.kernel  # noqa: B018 - compiled now, so errors show at compile time

    def __repr__(self) -> str:
        return f"<NestedKernel {self.model.name!r}: {len(self.model.body.cells())} cells + head>"

    def _last(self, y, lengths) -> np.ndarray:
        """The step of each sequence's end: T − 1, or its length − 1."""
        T, B = y.shape[:2]
        return np.full(B, T - 1) if lengths is None else lengths - 1

    def _head(self, params, y, targets, lengths, full: bool):
        head_params = {n: params[n] for n in self.model.head.params}
        if self.model.last_only:  # one step: the top output at each sequence's end
            last = self._last(y, lengths)
            data = {self.model.head_input: y[last, np.arange(y.shape[1])][None]}
            if not isinstance(targets, dict):
                raise ValueError("targets must be a dict: one target per sequence")
            per_step = {n: np.asarray(a)[None] for n, a in targets.items()}
            loss, grads, g_in, h0 = self.head.vjp(head_params, data, per_step)
            g_y = np.zeros_like(y)
            g_y[last, np.arange(y.shape[1])] = g_in[self.model.head_input][0]
            return loss, grads, {self.model.head_input: g_y}, h0
        data = {self.model.head_input: y}
        if lengths is None:
            return self.head.vjp(head_params, data, targets)
        return _lengths.vjp(self.head, head_params, data, targets, lengths=lengths)

    def forward(self, params: dict, inputs: dict, lengths=None) -> dict:
        """The top layer's output sequence (``"output"``) and the head's outputs."""
        x, lengths = _model_input(self.model, params, inputs, lengths, only=True)
        y, _ = self.model.body.forward(params, x, lengths)
        head_params = {n: params[n] for n in self.model.head.params}
        if self.model.last_only:
            last = self._last(y, lengths)
            top = y[last, np.arange(y.shape[1])][None]
            out = self.head.forward(head_params, {self.model.head_input: top})
            return {"output": y, **{n: a[0] for n, a in out.items()}}
        out = self.head.forward(head_params, {self.model.head_input: y})
        return {"output": y, **out}

    def vjp(self, params: dict, inputs: dict, targets: dict, lengths=None):
        """``(loss, grads, input_grads)``: the loss, every parameter's gradient and the adjoint
        of the input sequence."""
        x, lengths = _model_input(self.model, params, inputs, lengths, only=True)
        y, cache = self.model.body.forward(params, x, lengths)
        loss, grads, g_head, _ = self._head(params, y, targets, lengths, True)
        body_grads, g_x = self.model.body.backward(
            params, cache, g_head[self.model.head_input], lengths
        )
        return loss, {**body_grads, **grads}, {self.model.input: g_x}

    def loss_and_grad(self, params: dict, inputs: dict, targets: dict, lengths=None):
        """The total loss and the gradient of every parameter."""
        loss, grads, _ = self.vjp(params, inputs, targets, lengths)
        return loss, {n: grads[n] for n in self.model.params}


def _model_input(model, params, inputs, lengths, only: bool):
    """The checked input sequence of a nested model (its padding zeroed) and lengths: every
    parameter of the model given and no other, and ``inputs[model.input]`` a (T, B, size)
    array (``only``: the one input; a seq2seq model's decoder may have inputs of its own)."""
    if not isinstance(params, dict):
        raise ValueError(
            f"params must be a dict mapping names to arrays, got {type(params).__name__}"
        )
    known = model.params
    extra = [n for n in params if n not in known]
    missing = [n for n in known if n not in params]
    if extra or missing:
        name = (extra or missing)[0]
        what = "is not a parameter of" if extra else "is missing, a parameter of"
        raise ValueError(f"params[{name!r}] {what} model {model.name!r}; expected {sorted(known)}")
    wrong = not isinstance(inputs, dict) or model.input not in inputs
    if wrong or (only and set(inputs) != {model.input}):
        got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
        raise ValueError(f"inputs must hold {{{model.input!r}: (T, B, size) array}}, got {got}")
    x = inputs[model.input]
    if not isinstance(x, np.ndarray) or x.ndim != 3:
        shape = getattr(x, "shape", type(x).__name__)
        raise ValueError(f"inputs[{model.input!r}] has shape {shape}; expected (T, B, size)")
    if lengths is not None:
        lengths = _lengths.check_lengths(lengths, x.shape[0], x.shape[1])
        x = _lengths.zero_past(x, lengths)  # NaN padding reaches nothing
    return x, lengths


def as_layer(value, what: str) -> SequenceLayer:
    """A cell or a sequence layer as a sequence layer; a clear error for anything else."""
    if isinstance(value, Cell):
        return CellLayer(value)
    if isinstance(value, SequenceLayer):
        return value
    if isinstance(value, NestedModel) or hasattr(value, "parts"):
        raise CellError(
            f"{what} is the model {value.name!r}, which has a head (outputs and a loss); a layer "
            f"has none: build it without head= and put the head on the outermost model"
        )
    raise CellError(f"{what} must be an rnnsym.Cell or a layer, got {type(value).__name__}")


def both_ways(forward, backward=None) -> Both:
    """A bidirectional layer: ``forward`` run forward in time, ``backward`` (default: a copy of
    ``forward``) from each sequence's end; outputs concatenated [forward; backward]. Where the
    two directions' states or parameters share names (the same cell given twice), the backward
    copy's end in ``_b``."""
    f = as_layer(forward, "bidirectional(): forward")
    b = as_layer(forward if backward is None else backward, "bidirectional(): backward")
    names = {n for leaf in f.cells() for n in [*leaf.cell.params, *leaf.cell.states]}
    if backward is None or any(
        n in names for leaf in b.cells() for n in [*leaf.cell.params, *leaf.cell.states]
    ):
        b = b.renamed("_b")
    return Both(f, Reversed(b))


def stacked(layers, head: Cell | None = None, name: str | None = None):
    """Layers (cells or layers) stacked bottom first, their names suffixed _1, _2, ... by
    layer; with ``head``, the :class:`NestedModel` that reads the top layer."""
    given = [as_layer(layer, f"stack(): layer {i}") for i, layer in enumerate(layers, 1)]
    body = Chain([layer.renamed(f"_{i}") for i, layer in enumerate(given, 1)])
    if head is None:
        return body
    if not isinstance(head, Cell):
        raise CellError(f"stack(): head must be an rnnsym.Cell, got {type(head).__name__}")
    return NestedModel(name or "stack_" + "_".join(_label(layer) for layer in given), body, head)


def _label(layer: SequenceLayer) -> str:
    """A short name of a layer, for a model's default name: gru_layer, bi_gru_layer, ..."""
    if isinstance(layer, CellLayer):
        return layer.cell.name
    if isinstance(layer, Reversed):
        return f"reversed_{_label(layer.layer)}"
    if isinstance(layer, Both):
        return f"bi_{_label(layer.forward_layer)}"
    return "stack"


@dataclass(eq=False)
class NestedSeq2Seq:
    """Fig. 8 with models: the encoder, a sequence layer (a cell, a stack, a bidirectional
    layer), reads x(1..T_x), and its output at each input's own last step is the context C.

    The decoder is a cell with its outputs and loss, which reads C at every step (a
    ``cell.context`` input, as in the report) or starts from it (s(0) = C); or a
    :class:`NestedModel` (layers and a head), whose bottom layer reads [y(t−1); C] at every
    step, the target one step late (y(0) = 0) and the context: the report's "C given to the
    decoder as an input", for a stacked decoder."""

    name: str
    encoder: SequenceLayer
    decoder: Cell | NestedModel
    kind: str = "nested_seq2seq"
    # ("context", input) or ("h0", state) of a decoder cell; ("input", target) of a decoder
    # model: [target(t−1); C] is its input at step t
    slot: tuple[str, str] = ("", "")

    def __post_init__(self):
        decoder = self.decoder
        self.input = self.encoder.cells()[0].input
        encoder = [leaf.cell for leaf in self.encoder.cells()]
        seen = {n for cell in encoder for n in cell.params}
        if isinstance(decoder, NestedModel):
            targets = list(decoder.head.targets)
            if len(targets) != 1 or decoder.head.class_targets:
                raise CellError(
                    f"seq2seq(): the decoder {decoder.name!r} reads its target one step late; its "
                    f"head needs exactly one target of real values, has {targets}"
                )
            self.slot = ("input", targets[0])
            if any(name in seen for name in decoder.params):
                # the same cells in both halves (a GRU stack and a GRU stack): the decoder's
                # states and parameters end in _dec, as a backward direction's end in _b
                self.decoder = decoder = _renamed_model(decoder, "_dec")
            _unique_params([*encoder, *decoder.cells()], f"seq2seq {self.name!r}")
            return
        decoder.check()
        if not decoder.states:
            raise CellError(f"seq2seq(): the decoder {decoder.name!r} has no state")
        if len(decoder.context_inputs) > 1:
            raise CellError(
                f"seq2seq(): the decoder has context inputs {', '.join(decoder.context_inputs)}; "
                f"the context C goes to one of them"
            )
        if decoder.context_inputs:
            self.slot = ("context", decoder.context_inputs[0])
        elif len(decoder.states) == 1 or "h" in decoder.states:
            self.slot = ("h0", "h" if "h" in decoder.states else next(iter(decoder.states)))
        else:
            raise CellError(
                f"seq2seq(): the decoder {decoder.name!r} has states {', '.join(decoder.states)} "
                f"and no context input; C goes to a context input, the only state or 'h'"
            )
        if self.input in decoder.inputs:
            raise CellError(
                f"seq2seq(): the encoder and the decoder both have an input {self.input!r}; "
                f"their sequences have different lengths, so name them apart"
            )
        _unique_params([*encoder, decoder], f"seq2seq {self.name!r}")

    def cells(self) -> list[Cell]:
        """Every cell of the model: the encoder's, bottom first, then the decoder's."""
        decoder = self.decoder
        decoded = decoder.cells() if isinstance(decoder, NestedModel) else [decoder]
        return [leaf.cell for leaf in self.encoder.cells()] + decoded

    @property
    def params(self) -> dict:
        return {**self.encoder.params, **self.decoder.params}

    def describe(self) -> str:
        """The model's structure: the encoder's layers, bottom first, and the decoder."""
        where, name = self.slot
        lines = [f"model {self.name!r}: sequence to sequence, input {self.input}(t)", "  encoder:"]
        lines += self.encoder.describe("    ")
        if where == "input":
            lines.append(
                f"  C = the encoder's output at each input's own last step; the decoder reads "
                f"[{name}(t-1); C] at every step:"
            )
            lines += ["  " + line for line in self.decoder.describe().splitlines()[1:]]
            return "\n".join(lines)
        how = f"starts from {name}(0) = C"
        if where == "context":
            how = f"reads C at every step as {name}"
        lines.append(
            f"  C = the encoder's output at each input's own last step; the decoder "
            f"{self.decoder.name} {how} [{', '.join(self.decoder.params)}]"
        )
        return "\n".join(lines)

    def derive(self):
        """The derivations of every cell: the encoder's, each seeded by the adjoint of its
        output, and the decoder's."""
        from ..derive import derive

        parts = {}
        for leaf in self.encoder.cells():
            seeded, _ = seeded_cell(leaf.cell, [leaf.state])
            parts[leaf.cell.name] = derive(seeded)
        if isinstance(self.decoder, NestedModel):
            return {**parts, **self.decoder.derive()}
        parts[self.decoder.name] = derive(self.decoder)
        return parts

    def compile(self) -> NestedSeq2SeqKernel:
        return NestedSeq2SeqKernel(self)

    def random_problem(
        self, T: int = 5, B: int = 2, seed: int = 0, size: int = 3, inputs: int = 4, T_out=None
    ):
        """Random float64 ``(params, inputs, targets)``: every size ``size``, the encoder's
        input ``inputs`` wide, the decoder ``T_out`` steps long (default T + 1)."""
        from ..problems import random_problem as cell_problem

        rng = np.random.default_rng(seed)
        params: dict = {}
        width = _random_layer_params(self.encoder, inputs, size, rng, params)
        x = rng.normal(size=(T, B, inputs))
        decoder = self.decoder
        if isinstance(decoder, NestedModel):  # its input [y(t-1); C]: every size is `size`
            p, _, t = decoder.random_problem(T_out or T + 1, B, seed + 7, size, size + width)
            return {**params, **p}, {self.input: x}, t
        sizes = {str(s): size for s in decoder.size_symbols.values()}
        where, name = self.slot
        slot_size = (
            decoder.inputs[name].symbol.shape[0]
            if where == "context"
            else decoder.states[name].shape[0]
        )
        sizes[str(slot_size)] = width
        p, i, t = cell_problem(decoder, sizes, T=T_out or T + 1, B=B, seed=seed + 7)
        i.pop(name, None)
        return {**params, **p}, {self.input: x, **i}, t

    def __repr__(self) -> str:
        return f"NestedSeq2Seq({self.name!r}: {len(self.encoder.cells())} encoder cells)"


def _renamed_model(model: NestedModel, suffix: str) -> NestedModel:
    """A copy of ``model`` whose cells' states and parameters (the head's too) end in
    ``suffix``; inputs, targets and sizes keep their names."""
    head = model.head
    copy = Cell(f"{head.name}{suffix}")
    keep = set(head.inputs) | set(head.targets) | set(head.size_symbols)
    replay(head, copy, lambda n: n if n in keep else suffixed(n, suffix))
    return NestedModel(f"{model.name}{suffix}", model.body.renamed(suffix), copy)


def _random_layer_params(layer, width: int, size: int, rng, params: dict) -> int:
    """Random parameters of every cell of ``layer`` into ``params`` (every size ``size``, the
    input ``width`` wide); returns the width of the layer's output."""
    if isinstance(layer, CellLayer):
        sizes = dict.fromkeys(layer.cell.size_symbols.values(), size)
        sizes[layer.cell.inputs[layer.input].symbol.shape[0]] = width
        for name, var in layer.cell.params.items():
            shape = tuple(int(sp.sympify(d).subs(sizes)) for d in var.symbol.shape)
            params[name] = rng.normal(scale=0.5, size=shape[:1] if shape[1:] == (1,) else shape)
        return int(sp.sympify(layer.cell.states[layer.state].symbol.shape[0]).subs(sizes))
    if isinstance(layer, Reversed):
        return _random_layer_params(layer.layer, width, size, rng, params)
    if isinstance(layer, Both):
        forward = _random_layer_params(layer.forward_layer, width, size, rng, params)
        return forward + _random_layer_params(layer.backward_layer, width, size, rng, params)
    for inner in layer.layers:
        width = _random_layer_params(inner, width, size, rng, params)
    return width


class NestedSeq2SeqKernel:
    """The generated kernels of a :class:`NestedSeq2Seq`, chained: ``loss_and_grad(params,
    inputs, targets, lengths=None)`` with ``lengths`` a pair (input lengths, output lengths)."""

    def __init__(self, model: NestedSeq2Seq):
        from ..kernel import compile_cell

        self.model = model
        if isinstance(model.decoder, NestedModel):
            self.decoder = model.decoder.compile()
        else:
            self.decoder = compile_cell(model.decoder)
        for leaf in model.encoder.cells():
            leaf.kernel  # noqa: B018 - compiled now, so errors show at compile time

    def __repr__(self) -> str:
        return f"<NestedSeq2SeqKernel {self.model.name!r}>"

    def loss_and_grad(self, params: dict, inputs: dict, targets: dict, lengths=None):
        """The total loss and the gradient of every parameter."""
        m = self.model
        enc_lengths = dec_lengths = None
        if lengths is not None:
            if not isinstance(lengths, tuple | list) or len(lengths) != 2:
                raise ValueError(
                    "lengths of a seq2seq model is a pair (input lengths, output lengths), one "
                    f"integer array (B,) each; got {type(lengths).__name__}"
                )
            enc_lengths, dec_lengths = lengths
        x, enc_lengths = _model_input(m, params, inputs, enc_lengths, only=False)
        T_x, B = x.shape[:2]
        y, cache = m.encoder.forward(params, x, enc_lengths)
        last = np.full(B, T_x - 1) if enc_lengths is None else enc_lengths - 1
        context = np.ascontiguousarray(y[last, np.arange(B)])
        where, name = m.slot
        dec_in = {n: a for n, a in inputs.items() if n != m.input}
        if where == "input":  # a decoder model reads [y(t-1); C], y(0) = 0
            loss, grads, g_context = self._decoder_model(params, context, targets, dec_lengths)
            g_y = np.zeros_like(y)
            g_y[last, np.arange(B)] = g_context
            enc_grads, _ = m.encoder.backward(params, cache, g_y, enc_lengths)
            grads = {**enc_grads, **grads}
            return loss, {n: grads[n] for n in m.params}
        h0 = None
        if where == "context":
            dec_in[name] = context
        else:
            h0 = {name: context}
        dec_params = {n: params[n] for n in m.decoder.params}
        loss, grads, g_in, g_h0 = self.decoder.vjp(
            dec_params, dec_in, targets, h0, lengths=dec_lengths
        )
        g_context = g_in[name] if where == "context" else g_h0[name]
        g_y = np.zeros_like(y)
        g_y[last, np.arange(B)] = g_context
        enc_grads, _ = m.encoder.backward(params, cache, g_y, enc_lengths)
        grads = {**enc_grads, **grads}
        return loss, {n: grads[n] for n in m.params}

    def _decoder_model(self, params, context, targets, lengths):
        """(loss, the decoder's gradients, ∇C) for a decoder model reading [y(t−1); C]."""
        m = self.model
        name = m.slot[1]
        if not isinstance(targets, dict) or name not in targets:
            raise ValueError(f"targets[{name!r}] is missing: the decoder's outputs (T_y, B, k)")
        y = np.asarray(targets[name])
        if y.ndim != 3 or y.shape[1] != context.shape[0]:
            raise ValueError(
                f"targets[{name!r}] has shape {y.shape}; expected (T_y, {context.shape[0]}, k), "
                f"the batch of the encoder's inputs"
            )
        if lengths is not None:  # NaN padding must not reach y(t - 1)
            lengths = _lengths.check_lengths(lengths, y.shape[0], y.shape[1])
            y = _lengths.zero_past(y, lengths)
        shifted = np.concatenate([np.zeros_like(y[:1]), y[:-1]])
        repeated = np.broadcast_to(context, (y.shape[0], *context.shape))
        x = np.concatenate([shifted, repeated], axis=-1)
        dec_params = {n: params[n] for n in m.decoder.params}
        loss, grads, g_in = self.decoder.vjp(
            dec_params, {m.decoder.input: x}, {**targets, name: y}, lengths=lengths
        )
        return loss, grads, g_in[m.decoder.input][..., y.shape[-1] :].sum(axis=0)
