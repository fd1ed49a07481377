"""New cells from a cell: its declarations and equations replayed into another cell.

``replay`` is how a stack joins layers and a model seeds its parts; ``vjp_cell`` is the cell
whose gradient is the vector-Jacobian product of a cell's forward pass, which the autograd
wrappers of the torch and JAX backends run as their backward pass.
"""

from __future__ import annotations

from .cell import Cell, _check_name
from .errors import CellError
from .ir.ops import hadamard
from .losses import linear_loss

__all__ = ["replay", "fresh_name", "suffixed", "vjp_cell", "masked_cell", "seeded_cell"]


def replay(
    src: Cell,
    dst: Cell,
    rename=lambda name: name,
    dim_map: dict | None = None,
    bound: dict | None = None,
    loss: bool = True,
    outputs: bool | None = None,
    targets: bool = True,
) -> dict:
    """Declare everything of ``src`` in ``dst`` under new names and re-state its equations.

    ``dim_map`` maps some of src's size symbols to sizes of dst (the others are declared
    anew, renamed); ``bound`` maps some of src's inputs to expressions of dst (a stacked layer
    reads the state of the layer below). ``loss=False`` leaves out the loss terms and, unless
    ``outputs=True``, the outputs; ``targets=False`` leaves out the targets but those fed back
    as inputs. Returns src's symbols mapped to dst's expressions.
    """
    dim_map = dict(dim_map or {})
    bound = dict(bound or {})
    for dim_name, symbol in src.size_symbols.items():
        if symbol not in dim_map:
            dim_map[symbol] = dst.dims(rename(dim_name))
    mapping: dict = {}

    def size(value):
        return value.xreplace(dim_map)

    def sub(expr):
        return expr.xreplace({**mapping, **dim_map})

    for name, var in src._vars.items():
        symbol = var.symbol
        if var.kind == "input":
            if symbol in bound:
                mapping[symbol] = bound[symbol]
                continue
            if name in src.fed_back:
                target = dst._vars[rename(src.fed_back[name])]
                mapping[symbol] = target.prev.symbol
            elif name in src.context_inputs:
                mapping[symbol] = dst.context(rename(name), size(symbol.shape[0])).symbol
            else:
                mapping[symbol] = dst.input(rename(name), size(symbol.shape[0])).symbol
        elif var.kind == "state":
            state = dst.state(rename(name), size(symbol.shape[0]))
            mapping[symbol] = state.symbol
            mapping[var.prev.symbol] = state.prev.symbol
        elif var.kind == "param":
            rows, cols = symbol.shape
            new = dst.param(rename(name), size(rows), None if cols == 1 else size(cols))
            mapping[symbol] = new.symbol
        elif var.kind == "target":
            if not targets and name not in src.fed_back.values():
                continue
            classes = name in src.class_targets
            mapping[symbol] = dst.target(rename(name), size(symbol.shape[0]), classes).symbol
    for kind, name in src.order:
        if kind == "define":
            mapping[src._vars[name].symbol] = dst.define(
                rename(name), sub(src.definitions[name].expr)
            ).symbol
        else:
            dst.update(dst._vars[rename(name)], sub(src.updates[name].expr))
    if loss if outputs is None else outputs:
        for name, term in src.output_defs.items():
            mapping[src._vars[name].symbol] = dst.output(rename(name), sub(term.expr)).symbol
    if loss:
        for term in src._loss_terms:
            dst.loss(sub(term.expr))
    return mapping


def suffixed(name: str, suffix: str) -> str:
    """``name + suffix``, or without the suffix's underscores where that is a name reserved for
    generated code: a state ``g`` of layer 1 becomes ``g1``, as ``g_1`` reads as an adjoint."""
    candidate = name + suffix
    try:
        _check_name(candidate, "")
    except CellError:
        return name + suffix.replace("_", "")
    return candidate


def fresh_name(cell: Cell, base: str) -> str:
    """``base``, or ``base`` with underscores appended, free in ``cell``."""
    name = base
    while name in cell._vars or name in cell.size_symbols:
        name += "_"
    return name


def vjp_cell(cell: Cell) -> tuple[Cell, dict[str, str]]:
    """``cell`` with its loss replaced by Σ_t ⟨d_q(t)|q(t)⟩ over every output and state q.

    Its gradients are the vector-Jacobian product of ``cell``'s forward pass with the
    cotangents d_q: the kernel's ``vjp(params, inputs, targets=cotangents, h0)`` gives ∇ of
    the parameters, the inputs and h(0) of any loss whose adjoints of the outputs and states
    are d_q. Returns the cell and {output or state name: name of its cotangent target}.
    """
    out = Cell(f"{cell.name}_vjp")
    mapping = replay(cell, out, loss=False, outputs=True, targets=False)
    seeds = {}
    for name in [*cell.outputs, *cell.states]:
        seeds[name] = fresh_name(out, f"d_{name}")
        rows = mapping[cell._vars[name].symbol].shape[0]
        d = out.target(seeds[name], rows)
        quantity = out.outputs[name] if name in cell.outputs else out.states[name]
        out.loss(linear_loss(d, quantity))
    out.check()
    return out, seeds


def masked_cell(cell: Cell) -> tuple[Cell, str]:
    """``cell`` with each step's loss L(t) weighted by a new per-step input m(t) of size 1.

    With m(t) = 1 up to a sequence's length and 0 after it, the steps past the end add nothing
    to the loss, and so nothing to any gradient: their adjoints vanish, and the forward
    recurrence never reads a later step. Returns the cell and the name of the weight input.
    """
    out = Cell(f"{cell.name}_masked")
    mapping = replay(cell, out, loss=False, outputs=True)
    name = fresh_name(out, "mask")
    weight = out.input(name, 1).symbol
    for term in cell._loss_terms:
        out.loss(hadamard(weight, term.expr.xreplace(mapping)))
    out.check()
    return out, name


def seeded_cell(layer: Cell, states: list[str]) -> tuple[Cell, dict[str, str]]:
    """The layer with the loss Σ_t ⟨d_h(t)|h(t)⟩ for each state h passed on (the slides' loss):
    its gradient kernel turns the adjoints d_h handed back by the rest of a model into the
    layer's gradients. Returns the cell and {state: name of its seed target}."""
    seeded = Cell(f"{layer.name}_seeded")
    mapping = replay(layer, seeded)
    names = {}
    for state in states:
        names[state] = fresh_name(seeded, f"d_{state}")
        d = seeded.target(names[state], mapping[layer.states[state].symbol].shape[0])
        seeded.loss(linear_loss(d, seeded.states[state]))
    seeded.check()
    return seeded, names
