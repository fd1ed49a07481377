"""Cells composed into the architectures of the report (§3–§4, Figures 5, 7, 8 and 9).

Composition adds no derivative rule of its own. A stacked RNN (Fig. 9) is one cell whose
states are the layers' states, so the one-cell derivation covers it. The other architectures
run cells over different time axes (a backward RNN, an encoder then a decoder, a head at the
last step only); they are chained by the slides' linear loss: a layer whose states h(t) feed
the rest of the model gets the extra loss Σ_t ⟨d_h(t)|h(t)⟩, and the adjoint ∇_{h(t)}L that
the rest of the model hands back is put in for d_h(t). The seeded layer's derivation is then
exactly BPTT of the layer with ∇_{h(t)}L coming from outside (eq. (9) with the seed as its
local term), and its generated kernel returns the layer's gradients, the adjoints of its
inputs and of h(0). Every gradient comes from derived, generated kernels.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from .. import display as _display
from ..backends import lengths as _lengths
from ..cell import Cell
from ..derive import Derivation, Equation, derive
from ..errors import CellError, ShapeError
from ..problems import random_problem
from ..transform import replay, seeded_cell, suffixed
from . import nested
from .nested import reverse_each

__all__ = [
    "stack",
    "bidirectional",
    "seq2seq",
    "last_output",
    "Model",
    "ModelKernel",
    "generate",
]


def _require_cell(value, what: str) -> Cell:
    if not isinstance(value, Cell):
        raise CellError(f"{what} must be an rnnsym.Cell, got {type(value).__name__} {value!r}")
    return value


def _require_layer(cell: Cell, what: str) -> None:
    """A layer maps an input sequence to state sequences: no outputs, targets or loss."""
    if cell._loss_terms or cell.output_defs or cell.targets:
        kept = [f"output {n}" for n in cell.output_defs] + [f"target {n}" for n in cell.targets]
        if cell._loss_terms:
            kept.append("a loss")
        raise CellError(
            f"{what} {cell.name!r} has {', '.join(kept)}; a layer of a composed model has only "
            f"inputs, states and parameters (the model's loss belongs to its last cell or head)"
        )
    if not cell.states:
        raise CellError(f"{what} {cell.name!r} has no state; a layer needs cell.state(...)")
    cell.check(loss=False)


def _feeding_state(cell: Cell, what: str) -> str:
    if len(cell.states) == 1:
        return next(iter(cell.states))
    if "h" in cell.states:
        return "h"
    raise CellError(
        f"{what} {cell.name!r} has states {', '.join(cell.states)}; the state passed on must be "
        f"the only one or be called 'h'"
    )


# ----- Fig. 9: stacked layers, one cell -----


def stack(*cells, head: Cell | None = None, name: str | None = None):
    """Stacked recurrent layers (Fig. 9).

    Cells only, no ``head``: one cell. Every cell but the last is a layer (inputs, states,
    parameters); the last one also has the outputs and the loss. Layer ℓ's one input x(t) is
    replaced by the state h(t) of layer ℓ − 1 at the same step, and every name of layer ℓ gets
    the suffix ``_ℓ`` (h_1, W_2, ...). The result is an ordinary cell: derived, compiled and
    verified like any other.

    With a ``head`` (a cell without state, with the outputs and the loss, reading the top
    layer's output), or with a layer that is itself a model (``rs.bidirectional(gru, gru)``,
    another stack): a nested model (:class:`~rnnsym.models.nested.NestedModel`). Without a
    head, and with no loss in the last cell: a layer to nest in another model. Names are
    suffixed ``_ℓ`` by layer in both.
    """
    last_is_layer = bool(cells) and isinstance(cells[-1], Cell) and not cells[-1]._loss_terms
    if head is not None or last_is_layer or not all(isinstance(c, Cell) for c in cells):
        if not cells:
            raise CellError("stack() needs at least one layer")
        return nested.stacked(cells, head, name)
    if len(cells) < 2:
        raise CellError(f"stack() needs at least two cells, got {len(cells)}")
    for i, cell in enumerate(cells, 1):
        _require_cell(cell, f"stack(): layer {i}")
        if i < len(cells):
            _require_layer(cell, f"stack(): layer {i}")
    merged = Cell(name or "stack_" + "_".join(c.name for c in cells))
    below = None  # the state of the layer below, in merged
    for i, cell in enumerate(cells, 1):
        bound, dim_map = {}, {}
        if below is not None:
            per_step = [v for n, v in cell.inputs.items() if n not in cell.context_inputs]
            per_step = [v for v in per_step if v.name not in cell.fed_back]
            if len(per_step) != 1:
                raise CellError(
                    f"stack(): layer {i} {cell.name!r} has inputs "
                    f"{', '.join(cell.inputs) or 'none'}; a stacked layer reads exactly one "
                    f"input per step, the state of layer {i - 1}"
                )
            x = per_step[0].symbol
            size = x.shape[0]
            if not isinstance(size, sp.Symbol):
                if size != below.shape[0]:
                    raise ShapeError(
                        f"stack(): layer {i} {cell.name!r} reads input {x.name} of size {size}, "
                        f"but layer {i - 1}'s state {below.name} has size {below.shape[0]}"
                    )
            else:
                dim_map[size] = below.shape[0]
            bound[x] = below

        def rename(old, i=i):
            return suffixed(old, f"_{i}")

        last = i == len(cells)
        mapping = replay(cell, merged, rename, dim_map, bound, loss=last)
        if not last:
            state = cell.states[_feeding_state(cell, f"stack(): layer {i}")]
            below = mapping[state.symbol]
    merged.check()
    return merged


# ----- models over several time axes -----


@dataclass
class Part:
    """One cell of a model: its role, the cell as given, and how it runs."""

    role: str  # "forward", "backward", "encoder", "decoder", "head", "layer"
    cell: Cell
    reverse: bool = False  # runs from t = T down to 1
    seeded: Cell | None = None  # the layer with Σ⟨d_h|h⟩ added, for its gradients
    seeds: dict[str, str] = field(default_factory=dict)  # state -> seed target name


@dataclass
class Model:
    """A model made of several cells; see :func:`bidirectional`, :func:`seq2seq`,
    :func:`last_output`. ``compile()`` builds its kernel, ``derive()`` its derivation."""

    name: str
    kind: str
    parts: dict[str, Part]
    wiring: dict[str, str]  # head input or decoder slot -> state it reads

    def derive(self) -> ModelDerivation:
        parts = {}
        for role, part in self.parts.items():
            d = derive(part.seeded or part.cell)
            if part.reverse:
                # Shown in the model's time, the update reads g(t+1): not the report's eq. (2),
                # which reads h(t-1); so no line of a reversed part carries a report number.
                d = dataclasses.replace(
                    d,
                    forward=[Equation(eq.lhs, eq.rhs, "") for eq in d.forward],
                    labels=dict.fromkeys(d.labels, ""),
                )
            parts[role] = d
        return ModelDerivation(self, parts)

    def compile(self) -> ModelKernel:
        from ..kernel import compile_cell

        return ModelKernel(
            self, {r: compile_cell(p.seeded or p.cell) for r, p in self.parts.items()}
        )

    @property
    def context_slot(self) -> tuple[str, str, str]:
        """seq2seq: ``(where, decoder name, encoder state)``; C = the encoder state at T_x goes
        to the decoder's initial state (``where == "h0"``) or to its context input."""
        if self.kind != "seq2seq":
            raise CellError(f"model {self.name!r} is {self.kind}; only seq2seq has a context C")
        ((slot, state),) = self.wiring.items()
        where, target = slot.split(":")
        return where, target, state

    @property
    def params(self) -> dict:
        out = {}
        for part in self.parts.values():
            out.update(part.cell.params)
        return out

    def __repr__(self) -> str:
        parts = ", ".join(f"{r}={p.cell.name!r}" for r, p in self.parts.items())
        return f"Model({self.name!r}, {self.kind}: {parts})"


def _seed(layer: Cell, states: list[str]) -> tuple[Cell, dict[str, str]]:
    """The layer with the loss Σ_t ⟨d_h(t)|h(t)⟩ for each state h passed on (the slides' loss)."""
    return seeded_cell(layer, states)


def _check_unique_params(parts: dict[str, Part]) -> None:
    seen: dict[str, str] = {}
    for role, part in parts.items():
        for name in part.cell.params:
            if name in seen:
                raise CellError(
                    f"parameter {name!r} is declared by both the {seen[name]} cell "
                    f"{parts[seen[name]].cell.name!r} and the {role} cell {part.cell.name!r}; "
                    f"give the parameters of each cell their own names"
                )
            seen[name] = role


def _check_head(head: Cell, readable: dict[str, Cell], what: str) -> dict[str, str]:
    """The head is a stateless cell with a loss reading states of the layers by name."""
    if head.states:
        raise CellError(
            f"{what} {head.name!r} has state(s) {', '.join(head.states)}; a head is applied "
            f"at each step on its own and has none"
        )
    head.check()
    wiring = {}
    for name, var in head.inputs.items():
        if name in head.fed_back or name in head.context_inputs:
            raise CellError(f"{what} {head.name!r}: input {name!r} must be a per-step input")
        if name not in readable:
            options = ", ".join(f"{s} ({c.name})" for s, c in readable.items())
            raise CellError(
                f"{what} {head.name!r} reads input {name!r}, which is not a state of the model's "
                f"layers; its inputs must be named after the states it reads: {options}"
            )
        state = readable[name].states[name]
        if var.shape[0] != state.shape[0] and not (
            isinstance(var.shape[0], sp.Symbol) or isinstance(state.shape[0], sp.Symbol)
        ):
            raise ShapeError(
                f"{what} {head.name!r}: input {name} has size {var.shape[0]}, but state {name} of "
                f"{readable[name].name!r} has size {state.shape[0]}"
            )
        wiring[name] = name
    return wiring


def _renamed(cell: Cell, suffix: str) -> Cell:
    copy = Cell(f"{cell.name}{suffix}")
    replay(
        cell,
        copy,
        lambda n: n if n in cell.inputs or n in cell.size_symbols else suffixed(n, suffix),
    )
    return copy


def bidirectional(forward, backward=None, head: Cell | None = None, name: str | None = None):
    """A bidirectional RNN (Fig. 7): h(t) runs forward in time, g(t) backward, and the head
    combines them at each step, o(t) = c + V h(t) + V′ g(t) for the report's model.

    ``forward`` and ``backward`` are layers (inputs, states, parameters); ``backward=None``
    uses a copy of ``forward`` with its states and parameters suffixed ``_b``. ``head`` is a
    cell without state whose inputs are named after the states it reads, with the outputs and
    the per-step loss. The two layers read the same model inputs.

    Without a ``head``, or when a direction is itself a model: a bidirectional *layer*, whose
    output at each step is [forward; backward] concatenated, as ``torch.nn.GRU(...,
    bidirectional=True)``, to stack (``rs.stack``) or to give a head; the backward direction
    starts at each sequence's own end (``lengths=``). See :mod:`rnnsym.models.nested`.
    """
    if head is None or not all(isinstance(c, Cell) for c in (forward, backward or forward)):
        layer = nested.both_ways(forward, backward)
        if head is None:
            return layer
        return nested.NestedModel(
            name or f"bidirectional_{layer.cells()[0].cell.name}", layer, head
        )
    _require_cell(forward, "bidirectional(): forward")
    _require_layer(forward, "bidirectional(): forward layer")
    if backward is None:
        backward = _renamed(forward, "_b")
    _require_cell(backward, "bidirectional(): backward")
    _require_layer(backward, "bidirectional(): backward layer")
    _require_cell(head, "bidirectional(): head")
    clash = set(forward.states) & set(backward.states)
    if clash:
        raise CellError(
            f"bidirectional(): the forward and backward layers both have state(s) "
            f"{', '.join(sorted(clash))}; name them apart (h and g in the report)"
        )
    readable = {s: forward for s in forward.states} | {s: backward for s in backward.states}
    wiring = _check_head(head, readable, "bidirectional(): head")
    parts = {"forward": Part("forward", forward), "backward": Part("backward", backward, True)}
    parts["head"] = Part("head", head)
    _check_unique_params(parts)
    for role in ("forward", "backward"):
        part = parts[role]
        read = [s for s in part.cell.states if s in wiring]
        if not read:
            raise CellError(
                f"bidirectional(): the head reads no state of the {role} layer "
                f"{part.cell.name!r}; its inputs should include {', '.join(part.cell.states)}"
            )
        part.seeded, part.seeds = _seed(part.cell, read)
    return Model(name or f"bidirectional_{forward.name}", "bidirectional", parts, wiring)


def seq2seq(encoder, decoder: Cell, name: str | None = None):
    """An encoder–decoder (Fig. 8): the encoder reads x(1..T_x); its final state is the
    context C; the decoder, a cell with its own outputs and loss, runs T_y steps (T_y may
    differ from T_x) from h(0) = C, or reads C at every step if it declares a
    ``cell.context`` input (the report's version). The decoder's inputs are typically its
    fed-back targets y.prev.

    The encoder may be a model (a stack, a bidirectional layer): C is then its output at each
    input's own last step. The decoder may be a model with a head (``rs.stack(..., head=)``):
    its bottom layer then reads [y(t−1); C] at every step, the target one step late and the
    context, as the report gives C to the decoder as an input
    (:class:`~rnnsym.models.nested.NestedSeq2Seq`).
    """
    if not isinstance(decoder, Cell | nested.NestedModel):
        raise CellError(
            f"seq2seq(): the decoder must be an rnnsym.Cell or a model with a head (the outputs "
            f"and the loss), got {type(decoder).__name__}"
        )
    if not isinstance(encoder, Cell) or isinstance(decoder, nested.NestedModel):
        layer = nested.as_layer(encoder, "seq2seq(): encoder")
        label = nested._label(layer)
        return nested.NestedSeq2Seq(name or f"seq2seq_{label}_{_short(decoder)}", layer, decoder)
    _require_cell(encoder, "seq2seq(): encoder")
    _require_layer(encoder, "seq2seq(): encoder")
    _require_cell(decoder, "seq2seq(): decoder")
    decoder.check()
    if not decoder.states:
        raise CellError(f"seq2seq(): the decoder {decoder.name!r} has no state")
    context_state = _feeding_state(encoder, "seq2seq(): encoder")
    clash = set(encoder.inputs) & set(decoder.inputs)
    if clash:
        raise CellError(
            f"seq2seq(): encoder and decoder both have input(s) {', '.join(sorted(clash))}; "
            f"their sequences have different lengths, so name them apart"
        )
    if len(decoder.context_inputs) > 1:
        raise CellError(
            f"seq2seq(): the decoder has context inputs {', '.join(decoder.context_inputs)}; "
            f"the context C goes to one of them"
        )
    if decoder.context_inputs:
        slot = f"context:{decoder.context_inputs[0]}"
    else:
        slot = f"h0:{_feeding_state(decoder, 'seq2seq(): decoder')}"
    parts = {"encoder": Part("encoder", encoder), "decoder": Part("decoder", decoder)}
    _check_unique_params(parts)
    parts["encoder"].seeded, parts["encoder"].seeds = _seed(encoder, [context_state])
    return Model(
        name or f"seq2seq_{encoder.name}_{decoder.name}", "seq2seq", parts, {slot: context_state}
    )


def last_output(layer: Cell, head: Cell, name: str | None = None) -> Model:
    """One output at the end (Fig. 5): the layer reads the whole sequence, and the head (a
    cell without state, with the loss) is applied once to the final state.

    ``loss_and_grad(..., lengths=...)`` takes sequences of different lengths in one batch: the
    head reads each sequence's state at its own last step, so the padding after it has no
    effect and the gradients equal those of each sequence run alone. Targets are per
    sequence: (B, size), or class indices (B,).
    """
    if not isinstance(layer, Cell):  # a stack, a bidirectional layer: a nested model
        body = nested.as_layer(layer, "last_output(): layer")
        _require_cell(head, "last_output(): head")
        label = nested._label(body)
        return nested.NestedModel(name or f"last_output_{label}", body, head, last_only=True)
    _require_cell(layer, "last_output(): layer")
    _require_layer(layer, "last_output(): layer")
    _require_cell(head, "last_output(): head")
    readable = {s: layer for s in layer.states}
    wiring = _check_head(head, readable, "last_output(): head")
    parts = {"layer": Part("layer", layer), "head": Part("head", head)}
    _check_unique_params(parts)
    parts["layer"].seeded, parts["layer"].seeds = _seed(layer, list(wiring.values()))
    return Model(name or f"last_output_{layer.name}", "last_output", parts, wiring)


# ----- the derivation of a model -----


# the letter before a model part's equation numbers: (F3) is equation 3 of the forward layer
TAG_PREFIX = {
    "forward": "F",
    "backward": "B",
    "head": "H",
    "encoder": "E",
    "decoder": "D",
    "layer": "L",
}


def _swap_tex(text: str) -> str:
    """LaTeX of a layer run backwards in time: steps t−1 and t+1 trade places."""
    return text.replace("^{(t-1)}", "\0").replace("^{(t+1)}", "^{(t-1)}").replace("\0", "^{(t+1)}")


def _swap_time(text: str) -> str:
    """A layer run backwards in time: its step t−1 is step t+1 of the sequence, and back."""
    marks = [("⁽ᵗ⁻¹⁾", "⁽ᵗ⁺¹⁾"), ("(t-1)", "(t+1)"), ("t = T..1", "t = 1..T")]
    for a, b in marks:
        text = text.replace(a, "\0").replace(b, a).replace("\0", b)
    return text


@dataclass
class ModelDerivation:
    """The derivations of a model's cells and how their adjoints are chained."""

    __repr__ = _display.model_derivation_repr
    _repr_markdown_ = _display.model_derivation_markdown

    model: Model
    parts: dict[str, Derivation]

    def _coupling(self) -> list[str]:
        m = self.model
        lines = []
        if m.kind in ("bidirectional", "last_output"):
            head = self.parts["head"]
            from ..printing import TextPrinter, _time_tables

            names, _ = _time_tables(head.cell)
            printer = TextPrinter(names)
            for state in m.wiring.values():
                term = head.input_terms.get(state)
                shown = printer.doprint(term) if term is not None else "0"
                lines.append(f"  ∇_{{{state}⁽ᵗ⁾}}L (from the head) = {shown}")
        if m.kind == "bidirectional":
            fwd, bwd = m.parts["forward"], m.parts["backward"]
            for part in (fwd, bwd):
                for state, seed in part.seeds.items():
                    lines.append(f"  {seed}⁽ᵗ⁾ := ∇_{{{state}⁽ᵗ⁾}}L from the head, for all t")
            lines.append(
                "  The forward layer's adjoint recurrence runs t = T..1 (it needs step t+1);"
            )
            lines.append(
                "  the backward layer's runs t = 1..T (it needs step t−1): opposite directions."
            )
        elif m.kind == "last_output":
            ((state, seed),) = m.parts["layer"].seeds.items()
            lines.append(
                f"  {seed}⁽ᵗ⁾ := ∇_{{{state}⁽ᵀ⁾}}L from the head at t = T (each sequence's own "
                f"length), 0 elsewhere"
            )
        else:
            where, target, state = m.context_slot
            (seed,) = m.parts["encoder"].seeds.values()
            if where == "h0":
                lines.append(f"  C = {state}_enc⁽ᵀˣ⁾ → decoder {target}⁽⁰⁾")
                lines.append(
                    f"  {seed}⁽ᵗ⁾ := ∇_{{{target}⁽⁰⁾}}L (the decoder's carry out of its step 1) "
                    f"at t = T_x, 0 elsewhere"
                )
            else:
                lines.append(f"  C = {state}_enc⁽ᵀˣ⁾ → decoder context {target}, every step")
                lines.append(
                    f"  {seed}⁽ᵗ⁾ := Σ_t ∇_{{{target}}}L(t) over the decoder's steps at t = T_x, "
                    f"0 elsewhere"
                )
        return lines

    def _in_model_time(self, role: str, text: str) -> str:
        """A part's derivation text with the model's time axis and initial states."""
        m = self.model
        part = m.parts[role]
        states = list(part.cell.states)
        if part.reverse:  # runs from T down to 1: it starts from g(T+1), and t+1 <-> t-1
            text = _swap_time(text)
            for s in states:
                text = text.replace(f"{s}(0) given", f"{s}(T+1) given")
            text = text.replace("step T+1 terms are zero", "step 0 terms are zero")
        if role in ("encoder", "decoder"):
            length = "T_x" if role == "encoder" else "T_y"
            text = text.replace("t = 1..T ", f"t = 1..{length} ").replace(
                "t = T..1 ", f"t = {length}..1 "
            )
            text = text.replace("step T+1 terms", f"step {length}+1 terms")
        if role == "decoder":
            where, target, state = m.context_slot
            if where == "h0":
                text = text.replace(
                    f"({target}(0) given, zero by default)",
                    f"({target}(0) = C = {state}(T_x), the encoder's last state)",
                )
        return text

    def pretty(self) -> str:
        from ..printing import derivation_text

        m = self.model
        out = [f"Model {m.name!r} ({m.kind.replace('_', ' ')})", ""]
        for role, d in self.parts.items():
            title = {
                "forward": "Forward layer, runs t = 1..T",
                "backward": "Backward layer, runs t = T..1 (written in sequence time)",
                "head": "Head, at every step" if m.kind != "last_output" else "Head, at t = T",
                "encoder": "Encoder, t = 1..T_x",
                "decoder": "Decoder, t = 1..T_y",
                "layer": "Layer, t = 1..T",
            }[role]
            text = self._in_model_time(role, derivation_text(d, tag_prefix=TAG_PREFIX[role]))
            out.append(f"== {title} ==")
            out.append(text)
            out.append("")
        out.append("== How the adjoints are chained ==")
        out.extend(self._coupling())
        return "\n".join(out)

    # ----- LaTeX -----

    def _part_titles(self, role: str, notation: str = "plain") -> tuple[str, dict[str, str]]:
        """The part's heading and its section titles, LaTeX math with text in ``\\text``."""
        from ..printing import latex_step, latex_titles

        m = self.model
        part = m.parts[role]
        d = self.parts[role]
        titles = latex_titles(d, notation)
        length = {"encoder": "T_x", "decoder": "T_y"}.get(role, "T")
        heading = {
            "forward": r"\text{Forward layer, runs } t = 1, \dots, T",
            "backward": r"\text{Backward layer, runs } t = T, \dots, 1 \text{ (in sequence time)}",
            "head": r"\text{Head, at every step } t"
            if m.kind != "last_output"
            else r"\text{Head, at } t = T \text{ only}",
            "encoder": r"\text{Encoder, } t = 1, \dots, T_x",
            "decoder": r"\text{Decoder, } t = 1, \dots, T_y",
            "layer": r"\text{Layer, } t = 1, \dots, T",
        }[role]
        if part.cell.states:
            initial = ", ".join(latex_step(s, "0", notation) for s in part.cell.states)
            given = rf"{initial} \text{{ given}}"
            if part.reverse:
                initial = ", ".join(latex_step(s, "T+1", notation) for s in part.cell.states)
                given = rf"{initial} \text{{ given}}"
            if role == "decoder" and m.context_slot[0] == "h0":
                _, target, state = m.context_slot
                first, last = latex_step(target, "0", notation), latex_step(state, "T_x", notation)
                given = rf"{first} = C = {last}"  # C: the encoder's last state
            steps = r"t = T, \dots, 1" if part.reverse else rf"t = 1, \dots, {length}"
            back = rf"t = 1, \dots, {length}" if part.reverse else rf"t = {length}, \dots, 1"
            edge = "0" if part.reverse else f"{length}+1"
            titles["forward"] = rf"\text{{Forward step, }} {steps} \text{{; }} {given}"
            titles["backward"] = (
                rf"\text{{Backward recurrence, }} {back} \text{{; terms of step }} {edge} "
                r"\text{ are zero}"
            )
        return heading, titles

    def latex_parts(
        self, notation: str = "plain", key: str | None = None, labels: bool = True
    ) -> list[tuple[str, str]]:
        """``(role, align block)`` for each cell of the model, then ``("coupling", block)``.

        Equation N of a part is tagged with the part's letter (F, B, H, E, D, L) before N,
        and labelled ``<key>:<role>:N`` (key default ``eq:<model name>``).
        """
        from ..printing import align_block, label_key, latex_rows

        key = key or label_key("eq", self.model.name)
        out = []
        for role, d in self.parts.items():
            prefix = TAG_PREFIX[role]
            rows = latex_rows(
                d, notation=notation, key=f"{key}:{label_key(role)}", tag_prefix=prefix
            )
            if self.model.parts[role].reverse:
                for row in rows:
                    row.lhs = _swap_tex(row.lhs)
                    row.lines = [_swap_tex(line) for line in row.lines]
            heading, titles = self._part_titles(role, notation)
            block = align_block(rows, prefix, labels=labels, titles=titles, heading=heading)
            out.append((role, block))
        out.append(("coupling", self._coupling_latex(notation, key, labels)))
        return out

    def _coupling_latex(self, notation: str, key: str, labels: bool) -> str:
        """How the adjoints are chained, as an ``align`` (equations tagged C1, C2, ...)."""
        from ..printing import LatexRow, _latex_name, align_block, latex_printer, latex_step

        m = self.model
        rows: list[LatexRow] = []

        def add(lhs: str, rhs: str) -> None:
            n = len(rows) + 1
            rows.append(LatexRow("coupling", n, lhs, [rhs], "", f"{key}:coupling:{n}"))

        def vec(name: str, step: str) -> str:
            return latex_step(name, step, notation)

        if m.kind in ("bidirectional", "last_output"):
            head = self.parts["head"]
            printer = latex_printer(head.cell, notation)
            for state in m.wiring.values():
                term = head.input_terms.get(state)
                shown = printer.doprint(term) if term is not None else r"\mathbf{0}"
                step = "T" if m.kind == "last_output" else "t"
                shown = shown.replace("^{(t)}", f"^{{({step})}}").replace("(t)", f"({step})")
                add(rf"\nabla_{{{vec(state, step)}}} L", shown + r" \quad \text{(from the head)}")
        parts = [p for p in m.parts.values() if p.seeds]
        for part in parts:
            for state, seed in part.seeds.items():
                if m.kind == "bidirectional":
                    add(
                        vec(seed, "t"), rf"\nabla_{{{vec(state, 't')}}} L \quad \text{{for all }} t"
                    )
                elif m.kind == "last_output":
                    add(
                        vec(seed, "t"),
                        rf"\nabla_{{{vec(state, 'T')}}} L \text{{ at }} t = T"
                        r"\text{, } \mathbf{0} \text{ elsewhere}",
                    )
        if m.kind == "seq2seq":
            where, target, state = m.context_slot
            (seed,) = m.parts["encoder"].seeds.values()
            add("C", vec(state, "T_x"))
            if where == "h0":
                add(vec(target, "0"), "C")
                add(
                    vec(seed, "t"),
                    rf"\nabla_{{{vec(target, '0')}}} L \text{{ at }} t = T_x"
                    r"\text{, } \mathbf{0} \text{ elsewhere}",
                )
            else:
                add(
                    vec(seed, "t"),
                    rf"\sum_{{t'}} \nabla_{{{_latex_name(target)}}} L^{{(t')}} \text{{ at }} "
                    r"t = T_x\text{, } \mathbf{0} \text{ elsewhere}",
                )
        titles = {"coupling": r"\text{How the adjoints are chained}"}
        block = align_block(rows, "C", labels=labels, titles=titles)
        if m.kind == "bidirectional":
            note = (
                r"  & \text{The adjoint recurrences run in opposite directions: the forward "
                r"layer's} \notag \\" + "\n"
                r"  & t = T, \dots, 1 \text{, the backward layer's } t = 1, \dots, T \notag \\"
            )
            block = block.replace("\n\\end{align}", " \\\\\n" + note[:-3] + "\n\\end{align}")
        return block

    def paper(self, **options) -> str:
        """This derivation as a standalone LaTeX document with its verification certificate;
        see :func:`rnnsym.paper.paper_document` for the options."""
        from ..paper import paper_document

        return paper_document(self, **options)

    def latex(self, notation: str = "plain", key: str | None = None, labels: bool = True) -> str:
        """The model's derivation as LaTeX: one ``align`` per cell and one for the chaining,
        each headed by an unnumbered line (see :meth:`latex_parts`)."""
        m = self.model
        out = [f"% Model {m.name!r} ({m.kind.replace('_', ' ')})".replace("\n", " ")]
        for role, block in self.latex_parts(notation=notation, key=key, labels=labels):
            out.append(f"% {role}")
            out.append(block)
        return "\n".join(out)

    def __str__(self) -> str:
        return self.pretty()


# ----- the kernel of a model -----


def _array_error(label: str, array, expected: str) -> ValueError:
    shape = getattr(array, "shape", None)
    got = f"shape {shape}" if shape is not None else f"a {type(array).__name__}"
    return ValueError(f"{label} has {got}; expected {expected}")


class ModelKernel:
    """The generated kernels of a model's cells, chained.

    ``loss_and_grad(params, inputs, targets)`` returns ``(loss, grads)`` like a cell kernel;
    ``forward(params, inputs)`` returns the states and outputs of every cell. Each cell's
    kernel (``kernels[role].source``) is generated NumPy code; this class only passes arrays
    between them in the order of the chain rule.
    """

    _repr_html_ = _display.model_kernel_html

    def __init__(self, model: Model, kernels: dict):
        self.model = model
        self.kernels = kernels
        self.certificate = None  # the report of the last rs.verify_model run on it, if any
        self.certificate_cell = None

    def __repr__(self) -> str:
        return f"<ModelKernel {self.model.name!r}: {', '.join(self.kernels)}>"

    def _params(self, params: dict, role: str) -> dict:
        if not isinstance(params, dict):
            raise ValueError(f"params must be a dict, got {type(params).__name__}")
        known = self.model.params
        extra = [n for n in params if n not in known]
        if extra:
            raise ValueError(
                f"params[{extra[0]!r}] is not a parameter of model {self.model.name!r}; "
                f"expected {sorted(known)}"
            )
        return {n: params[n] for n in self.model.parts[role].cell.params if n in params}

    def _inputs(self, inputs: dict, role: str) -> dict:
        cell = self.model.parts[role].cell
        if not isinstance(inputs, dict):
            raise ValueError(f"inputs must be a dict, got {type(inputs).__name__}")
        known = set()
        for part in self.model.parts.values():
            if part.role != "head":
                known |= set(part.cell.inputs)
        extra = [n for n in inputs if n not in known]
        if extra:
            fed = {n for p in self.model.parts.values() for n in p.cell.fed_back}
            raise ValueError(
                f"inputs[{extra[0]!r}] is not an input of model {self.model.name!r}; "
                f"expected {sorted(known - fed)}"
            )
        return {n: inputs[n] for n in cell.inputs if n in inputs}

    # -- bidirectional --

    def _bi(self, params, inputs, targets, grad: bool, lengths=None):
        m = self.model
        fwd_in = self._inputs(inputs, "forward")
        if lengths is not None:  # the padding zeroed (NaN would reach the sums as 0 · NaN)
            context = {n for p in m.parts.values() for n in p.cell.context_inputs}
            inputs, lengths = _padded(inputs, lengths, context)
            fwd_in = self._inputs(inputs, "forward")
        # the backward layer starts at each sequence's own end
        bwd_in = {n: reverse_each(a, lengths) for n, a in self._inputs(inputs, "backward").items()}
        states = dict(self.kernels["forward"].forward(self._params(params, "forward"), fwd_in))
        back = self.kernels["backward"].forward(self._params(params, "backward"), bwd_in)
        states |= {n: reverse_each(a, lengths) for n, a in back.items()}
        head_in = {name: np.ascontiguousarray(states[state]) for name, state in m.wiring.items()}
        if not grad:
            out = self.kernels["head"].forward(self._params(params, "head"), head_in)
            return {**states, **out}
        head = self.kernels["head"]
        if lengths is None:
            loss, grads, g_in, _ = head.vjp(self._params(params, "head"), head_in, targets)
        else:  # the loss of the real steps only
            loss, grads, g_in, _ = _lengths.vjp(
                head, self._params(params, "head"), head_in, targets, lengths=lengths
            )
        for role, data in (("forward", fwd_in), ("backward", bwd_in)):
            part = m.parts[role]
            seeds = {}
            for state, seed in part.seeds.items():
                g = g_in[state]
                seeds[seed] = np.ascontiguousarray(reverse_each(g, lengths) if part.reverse else g)
            _, g_layer = self.kernels[role].loss_and_grad(self._params(params, role), data, seeds)
            grads.update(g_layer)
        return loss, grads

    # -- sequence to sequence --

    def _s2s(self, params, inputs, targets, grad: bool, lengths=None):
        m = self.model
        where, target, state = m.context_slot
        enc_in = self._inputs(inputs, "encoder")
        dec_in = self._inputs(inputs, "decoder")
        enc_lengths = dec_lengths = None
        if lengths is not None:
            if not isinstance(lengths, tuple | list) or len(lengths) != 2:
                raise ValueError(
                    f"lengths of a seq2seq model is a pair (input lengths, output lengths), "
                    f"one integer array (B,) each; got {type(lengths).__name__}"
                )
            enc_lengths, dec_lengths = lengths
            context_names = set(m.parts["encoder"].cell.context_inputs)
            if enc_lengths is not None:
                enc_in, enc_lengths = _padded(enc_in, enc_lengths, context_names)
        enc = self.kernels["encoder"].forward(self._params(params, "encoder"), enc_in)
        T_x, B_x = enc[state].shape[:2]
        # C = the encoder's state at each input sequence's own last step
        last = np.full(B_x, T_x - 1) if enc_lengths is None else enc_lengths - 1
        context = np.ascontiguousarray(enc[state][last, np.arange(B_x)])
        batch = context.shape[0]
        for group, arrays in (("inputs", dec_in), ("targets", targets or {})):
            for name, array in arrays.items():
                shape = np.shape(array)
                if len(shape) >= 2 and shape[1] != batch:
                    raise ValueError(
                        f"{group}[{name!r}] of the decoder has shape {shape}, batch {shape[1]}, "
                        f"but the encoder's inputs have batch {batch}; both halves of a "
                        f"sequence-to-sequence model see the same batch"
                    )
        h0 = None
        if where == "h0":
            h0 = {target: context}
        else:
            dec_in = {**dec_in, target: context}
        dec_params = self._params(params, "decoder")
        try:
            if not grad:
                out = self.kernels["decoder"].forward(dec_params, dec_in, h0)
                return {**{f"encoder.{n}": a for n, a in enc.items()}, **out}
            loss, grads, g_in, g_h0 = self.kernels["decoder"].vjp(
                dec_params, dec_in, targets, h0, lengths=dec_lengths
            )
        except ValueError as exc:
            raise ValueError(
                f"decoder {m.parts['decoder'].cell.name!r} with the context C = "
                f"{state}(T_x) of shape {context.shape}: {exc}"
            ) from None
        g_context = g_h0[target] if where == "h0" else g_in[target]
        (seed,) = m.parts["encoder"].seeds.values()
        seeds = np.zeros_like(enc[state])
        seeds[last, np.arange(B_x)] = g_context
        _, g_enc = self.kernels["encoder"].loss_and_grad(
            self._params(params, "encoder"), enc_in, {seed: seeds}
        )
        grads.update(g_enc)
        return loss, grads

    # -- one output at the end --

    def _last(self, params, inputs, targets, lengths, grad: bool):
        m = self.model
        data = self._inputs(inputs, "layer")
        states = self.kernels["layer"].forward(self._params(params, "layer"), data)
        some = next(iter(states.values()))
        T, B = some.shape[:2]
        if lengths is None:
            last = np.full(B, T - 1)
        else:
            lengths = _lengths.check_lengths(lengths, T, B)
            last = lengths - 1
            # zero the padding: it reaches nothing, but NaN padding would give 0 · NaN = NaN
            # in the layer's gradient kernel
            context = self.model.parts["layer"].cell.context_inputs
            data = {
                n: a if n in context else _lengths.zero_past(a, lengths) for n, a in data.items()
            }
        batch = np.arange(B)
        head_in = {name: states[state][last, batch][None] for name, state in m.wiring.items()}
        if not grad:
            out = self.kernels["head"].forward(self._params(params, "head"), head_in)
            return {**states, **{n: a[0] for n, a in out.items()}}
        head_targets = {}
        head_cell = m.parts["head"].cell
        for name in head_cell.targets:
            if not isinstance(targets, dict) or name not in targets:
                raise ValueError(f"targets[{name!r}] is missing; expected one target per sequence")
            value = np.asarray(targets[name])
            want = (B,) if name in head_cell.class_targets else None
            if want is not None and value.dtype.kind not in "iu":
                raise ValueError(
                    f"targets[{name!r}] holds class indices: expected an integer array ({B},), "
                    f"one per sequence, got dtype {value.dtype}"
                )
            if want is not None and value.shape != want:
                raise _array_error(f"targets[{name!r}]", value, f"class indices of shape ({B},)")
            if want is None and (value.ndim != 2 or value.shape[0] != B):
                raise _array_error(
                    f"targets[{name!r}]", value, f"(B, size) = ({B}, size): one per sequence"
                )
            head_targets[name] = value[None]
        try:
            loss, grads, g_in, _ = self.kernels["head"].module.vjp(
                self._params(params, "head"), head_in, head_targets
            )
        except ValueError as exc:  # the head sees one step: point at the caller's arrays
            text = re.sub(r"(targets\['\w+'\])\[0, (\d+)\]", r"\1[\2]", str(exc))
            raise ValueError(text) from None
        part = m.parts["layer"]
        seeds = {}
        for state, seed in part.seeds.items():
            s = np.zeros_like(states[state])
            s[last, batch] = g_in[state][0]
            seeds[seed] = s
        _, g_layer = self.kernels["layer"].loss_and_grad(self._params(params, "layer"), data, seeds)
        grads.update(g_layer)
        return loss, grads

    def _run(self, params, inputs, targets, grad, lengths=None):
        kind = self.model.kind
        missing = [n for n in self.model.params if n not in params]
        if missing:
            raise ValueError(f"params[{missing[0]!r}] is missing from the model's parameters")
        if kind == "bidirectional":
            return self._bi(params, inputs, targets, grad, lengths)
        if kind == "seq2seq":
            return self._s2s(params, inputs, targets, grad, lengths)
        return self._last(params, inputs, targets, lengths, grad)

    def forward(self, params: dict, inputs: dict, lengths=None) -> dict:
        """The states of every layer and the outputs of the head or decoder."""
        return self._run(params, inputs, None, False, lengths)

    def loss_and_grad(self, params: dict, inputs: dict, targets: dict, lengths=None, h0=None):
        """The total loss and the gradient of every parameter of the model."""
        if h0 is not None:
            raise ValueError("h0 is not an option of a model: its layers start from zero")
        loss, grads = self._run(params, inputs, targets, True, lengths)
        return loss, {n: grads[n] for n in self.model.params}


def _short(decoder) -> str:
    return decoder.head.name if isinstance(decoder, nested.NestedModel) else decoder.name


def _padded(inputs: dict, lengths, context) -> tuple[dict, np.ndarray]:
    """The per-step inputs with the steps past each sequence's length set to zero, and the
    checked lengths."""
    first = next((a for n, a in inputs.items() if n not in context and np.ndim(a) == 3), None)
    if first is None:
        raise ValueError("lengths= needs a per-step input (T, B, size) to take T and B from")
    T, B = np.shape(first)[:2]
    lengths = _lengths.check_lengths(lengths, T, B)
    zeroed = {
        n: a if n in context or np.ndim(a) != 3 else _lengths.zero_past(a, lengths)
        for n, a in inputs.items()
    }
    return zeroed, lengths


# ----- running a cell on its own outputs -----


def generate(
    kernel,
    params: dict,
    steps: int,
    feed: dict,
    inputs: dict | None = None,
    start: dict | None = None,
    h0=None,
) -> dict:
    """Run a compiled cell for ``steps`` steps, feeding outputs back as inputs (test time).

    ``feed`` maps an input to ``(output, how)``: after each step the output (B, size) is turned
    into the next step's input by ``how``: ``"identity"`` (Fig. 4 at test time: o(t) in place
    of y(t)), ``"argmax"`` (the 1-of-K vector of the most likely class, for text), or a
    function. ``start`` gives each fed input at step 1 (zeros by default); ``inputs`` the other
    inputs, (steps, B, size) or (B, size) for a context. Returns the sequences (steps, B, size)
    of the states, outputs and fed inputs.
    """
    cell = kernel.cell
    inputs = dict(inputs or {})
    start = dict(start or {})
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    for name, rule in feed.items():
        if name not in cell.inputs:
            raise ValueError(f"feed[{name!r}]: {cell.name!r} has no input {name!r}")
        if not (isinstance(rule, tuple) and len(rule) == 2) or rule[0] not in cell.outputs:
            raise ValueError(
                f"feed[{name!r}] = {rule!r}; expected (output, how) with output one of "
                f"{sorted(cell.outputs)}"
            )
        how = rule[1]
        if not callable(how) and how not in ("identity", "argmax"):
            raise ValueError(
                f"feed[{name!r}]: how = {how!r}; use 'identity', 'argmax' or a function"
            )
    missing = [n for n in cell.inputs if n not in feed and n not in inputs]
    if missing:
        raise ValueError(f"inputs[{missing[0]!r}] is missing: it is neither given nor fed back")
    batch = None
    for array in [*inputs.values(), *start.values()]:
        batch = np.shape(array)[-2] if np.ndim(array) >= 2 else batch
    dtype = next(iter(params.values())).dtype
    batch = batch or 1
    known = {}  # sizes read off the parameters' shapes
    for pname, dims in kernel.spec["params"].items():
        if pname in params:
            for dim, got in zip(dims, np.shape(params[pname]), strict=False):
                if isinstance(dim, str) and dim.isidentifier():
                    known[dim] = got
    current = {}
    for name in feed:
        if name in start:
            current[name] = np.asarray(start[name], dtype=dtype).reshape(batch, -1)
            continue
        dim = kernel.spec["inputs"][name][0]
        size = dim if isinstance(dim, int) else known.get(dim)
        if size is None:
            raise ValueError(
                f"start[{name!r}] is needed: the size {dim} of {name} is not the size of a "
                f"parameter"
            )
        current[name] = np.zeros((batch, size), dtype=dtype)
    states = h0
    record: dict[str, list] = {}
    for t in range(steps):
        step = {n: current[n][None] for n in feed}
        for name, array in inputs.items():
            if name in cell.context_inputs:
                step[name] = array
            else:
                step[name] = np.asarray(array)[t : t + 1]
        out = kernel.forward(params, step, states)
        states = {n: out[n][0] for n in cell.states} or None
        for name, array in {**out, **{n: s for n, s in step.items() if n in feed}}.items():
            record.setdefault(name, []).append(array[0])
        for name, (output, how) in feed.items():
            value = out[output][0]
            if how == "identity":
                current[name] = value
            elif how == "argmax":
                current[name] = np.eye(value.shape[-1], dtype=dtype)[np.argmax(value, axis=-1)]
            else:
                current[name] = np.asarray(how(value), dtype=dtype)
    return {n: np.stack(a) for n, a in record.items()}


# ----- random problems for a model (tests, finite differences, the CLI) -----


def model_sizes(model: Model, default=lambda i: 3 + i) -> dict[str, int]:
    """One concrete value per size name over all the model's cells (shared names agree)."""
    names = sorted({n for p in model.parts.values() for n in p.cell.size_symbols})
    return {name: default(i) for i, name in enumerate(names)}


def random_model_problem(
    model: Model,
    sizes: dict[str, int] | None = None,
    T: int = 5,
    B: int = 2,
    seed: int = 0,
    T_out: int | None = None,
):
    """Random float64 (params, inputs, targets) for a model; ``T_out`` is the decoder's length
    (default T + 1, so the encoder and decoder lengths differ)."""

    sizes = {**model_sizes(model), **(sizes or {})}
    rng = np.random.default_rng(seed)
    params, inputs, targets = {}, {}, {}
    for i, (role, part) in enumerate(model.parts.items()):
        steps = T
        if role == "decoder":
            steps = T_out if T_out is not None else T + 1
        p, x, y = random_problem(part.cell, sizes, T=steps, B=B, seed=seed + 101 * i)
        params |= p
        if role == "decoder" and model.context_slot[0] == "context":
            del x[model.context_slot[1]]  # C, which the model fills from the encoder
        if role != "head":
            inputs |= x
        targets |= y
    if model.kind == "last_output":  # one target per sequence
        head = model.parts["head"].cell
        for name, var in head.targets.items():
            k = sizes[str(var.shape[0])] if str(var.shape[0]) in sizes else int(var.shape[0])
            if name in head.class_targets:
                targets[name] = rng.integers(0, k, size=B)
            else:
                targets[name] = rng.normal(size=(B, k))
    return params, inputs, targets
