"""A recurrent cell: sizes, inputs, states, parameters, targets, the step and the loss.

One step of the cell maps the previous states, the inputs x(t) and the parameters to the new
states (eqs. (2)–(3) for the Elman cell), the outputs (eq. (4)) and the per-step loss (eq. (5));
the total loss is the sum over t. A state's update may use states updated before it in the same
step (an LSTM's h(t) uses c(t)); ``h.prev`` is h(t−1).
"""

from __future__ import annotations

import keyword
import unicodedata

import sympy as sp
from sympy import MatrixSymbol

from .errors import CellError, ShapeError
from .ir.expr import State, Target, Term, Variable, as_term
from .ir.ops import add, leaves, shape_str

__all__ = ["Cell", "python_name"]

# Names the generated code uses for itself (and the builtins it calls).
RESERVED = frozenset(
    {
        "np",
        "numpy",
        "t",
        "T",
        "B",
        "L",
        "loss",
        "grads",
        "params",
        "inputs",
        "targets",
        "h0",
        "sizes",
        "states",
        "dtype",
        "range",
        "dict",
        "float",
        "int",
        "len",
        "SPEC",
        "forward",
        "loss_and_grad",
    }
)


def python_name(name: str) -> str:
    """The identifier Python reads for ``name``: NFKC-normalised, as the parser does.

    ``ﬁ`` and ``fi`` are one variable to Python, and ``Ｔ`` is ``T``; names are compared in
    this form so that two names a user wrote differently can never become one variable.
    """
    return unicodedata.normalize("NFKC", name)


def _check_name(name, what: str) -> None:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise CellError(f"{what} name must be a Python identifier, got {name!r}")
    key = python_name(name)
    read_as = f" (Python reads {name!r} as {key!r})" if key != name else ""
    if keyword.iskeyword(key):
        raise CellError(f"{what} name {name!r} is a Python keyword{read_as}")
    if key.startswith("_") or key.startswith("g_") or key in RESERVED:
        raise CellError(
            f"{what} name {name!r}{read_as} is reserved for generated code (names starting with "
            f"'_' or 'g_', or one of {', '.join(sorted(RESERVED))})"
        )


def _sstr(expr) -> str:
    return sp.sstr(expr)


class Cell:
    """A recurrent cell defined with SymPy matrix expressions; see the README for an example."""

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise CellError(f"a cell needs a non-empty name, got {name!r}")
        self.name = name
        self._dims: dict[str, sp.Symbol] = {}
        self._vars: dict[str, Variable] = {}
        self._by_symbol: dict[MatrixSymbol, Variable] = {}
        self.updates: dict[str, Term] = {}
        self.definitions: dict[str, Term] = {}
        self.order: list[tuple[str, str]] = []  # ("update" | "define", name), as written
        self.output_defs: dict[str, Term] = {}
        self._loss_terms: list[Term] = []
        self.context_inputs: list[str] = []  # inputs given once per sequence
        self.class_targets: list[str] = []  # targets given as class indices
        self.fed_back: dict[str, str] = {}  # input y_prev -> target y (teacher forcing)

    # ----- declarations -----

    def dims(self, names: str):
        """Symbolic sizes (positive integers); ``n, m = cell.dims("n m")``."""
        if not isinstance(names, str) or not names.strip():
            raise CellError(f"dims() takes the size names in one string, got {names!r}")
        syms = sp.symbols(names, integer=True, positive=True)
        group = syms if isinstance(syms, tuple) else (syms,)
        claimed: dict[str, str] = {}
        for s in group:  # check every name before declaring any
            _check_name(s.name, "size")
            self._check_free(s.name, "size")
            key = python_name(s.name)
            if key in claimed:
                raise CellError(
                    f"size names {claimed[key]!r} and {s.name!r} are the same name to Python "
                    f"({key!r}); choose distinct names"
                )
            claimed[key] = s.name
        for s in group:
            self._dims[s.name] = s
        return syms

    def _size(self, size, what: str):
        if isinstance(size, bool):
            raise CellError(f"{what}: size must be a positive integer or a size symbol, got {size}")
        if isinstance(size, int):
            if size < 1:
                raise CellError(f"{what}: size must be positive, got {size}")
            return sp.Integer(size)
        if isinstance(size, sp.Symbol):
            known = self._dims.get(size.name)
            if known is None:
                raise CellError(
                    f"{what}: size {size} is not declared in cell {self.name!r}; declare it "
                    f"with cell.dims({size.name!r})"
                )
            if known != size:
                raise CellError(
                    f"{what}: size {size} is a different symbol from the size {size.name!r} "
                    f"returned by cell.dims(); use that one"
                )
            return size
        if isinstance(size, sp.Integer) and size > 0:
            return size
        if isinstance(size, sp.Expr) and size.free_symbols:
            # an integer combination of sizes, such as 4*n (stacked gates) or n + m ([h; x])
            for symbol in size.free_symbols:
                self._size(symbol, what)
            if size.is_integer and size.is_positive:
                return size
        raise CellError(
            f"{what}: size must be a positive integer or a symbol from cell.dims(), got {size!r}"
        )

    def _names(self) -> dict[str, tuple[str, str]]:
        """Every name the cell uses, by its Python form: {key: (name as written, what it is)}."""
        names = {python_name(n): (n, "size") for n in self._dims}
        for var in self._vars.values():
            names[python_name(var.name)] = (var.name, var.kind)
            if isinstance(var, State):
                names[python_name(var.prev.name)] = (var.prev.name, f"{var.name}.prev")
        return names

    def _check_free(self, name: str, what: str) -> None:
        """Refuse a name that is, to Python, one the cell already uses or one the generated
        code derives from a state's name (``h_t``, ``h_prev_t``)."""
        key = python_name(name)
        taken = self._names()
        if key in taken:
            other, kind = taken[key]
            if kind.endswith(".prev"):
                raise CellError(f"{what} name {name!r} clashes with {kind}")
            same = (
                f"already used in cell {self.name!r}"
                if other == name
                else f"the same name to Python ({key!r}) as the {kind} {other!r}"
            )
            raise CellError(f"{what} name {name!r} is {same}; choose another name")
        for var in self.states.values():
            if key in (python_name(f"{var.name}_t"), python_name(f"{var.name}_prev_t")):
                raise CellError(
                    f"{what} name {name!r} clashes with the generated code of state {var.name}"
                )
        if what == "state":
            generated = {python_name(f"{name}{suffix}") for suffix in ("_prev", "_t", "_prev_t")}
            for other_key, (other, kind) in taken.items():
                if other_key in generated:
                    clash = f"{name}.prev" if other_key == python_name(f"{name}_prev") else ""
                    raise CellError(
                        f"state name {name!r}: "
                        + (
                            f"{clash} would clash with the {kind} {other!r}"
                            if clash
                            else f"clashes with the {kind} {other!r} in the generated code"
                        )
                    )

    def _new_symbol(self, name: str, rows, cols, what: str) -> MatrixSymbol:
        _check_name(name, what)
        self._check_free(name, what)
        if name.endswith("_prev") and name[:-5] in self._vars:
            raise CellError(f"{what} name {name!r} clashes with {name[:-5]}.prev")
        return MatrixSymbol(
            name, self._size(rows, f"{what} {name!r}"), self._size(cols, f"{what} {name!r}")
        )

    def _add(self, var: Variable) -> Variable:
        self._vars[var.name] = var
        self._by_symbol[var.symbol] = var
        if isinstance(var, State):
            self._by_symbol[var.prev.symbol] = var.prev
        return var

    def input(self, name: str, size) -> Variable:
        """A per-step input x(t), a column vector of the given size."""
        return self._add(Variable(self._new_symbol(name, size, 1, "input"), self, "input"))

    def context(self, name: str, size) -> Variable:
        """An input given once per sequence and read at every step (Fig. 6's fixed vector x).

        The kernel takes it as a (B, size) or (size,) array; its gradient sums over t.
        """
        var = self.input(name, size)
        self.context_inputs.append(name)
        return var

    def _fed_back_input(self, target: Variable) -> Variable:
        name = f"{target.name}_prev"
        existing = self._vars.get(name)
        if existing is not None and self.fed_back.get(name) == target.name:
            return existing
        if existing is not None or python_name(name) in self._names():
            raise CellError(
                f"{target.name}.prev would be the input {name!r}, but that name is already "
                f"used in cell {self.name!r}"
            )
        symbol = MatrixSymbol(name, *target.shape)
        var = self._add(Variable(symbol, self, "input"))
        self.fed_back[name] = target.name
        return var

    def state(self, name: str, size) -> State:
        """A recurrent state h(t); ``.prev`` is h(t−1), and h(0) is zero unless given."""
        return self._add(State(self._new_symbol(name, size, 1, "state"), self))

    def param(self, name: str, rows, cols=None) -> Variable:
        """A parameter shared over time: a matrix ``(rows, cols)`` or a vector ``(rows,)``."""
        symbol = self._new_symbol(name, rows, 1 if cols is None else cols, "parameter")
        return self._add(Variable(symbol, self, "param"))

    def target(self, name: str, size, classes: bool = False) -> Target:
        """A per-step target y(t) used by the loss; ``y.prev`` is y(t−1), fed back as an input.

        With ``classes=True`` the kernel takes y as integer class indices (T, B) in
        0..size−1 and uses their 1-of-K vectors, as softmax cross-entropy expects.
        """
        if not isinstance(classes, bool):
            raise CellError(f"target {name!r}: classes must be True or False, got {classes!r}")
        var = self._add(Target(self._new_symbol(name, size, 1, "target"), self, "target"))
        if classes:
            self.class_targets.append(name)
        return var

    # ----- the step -----

    def _term(self, expr, what: str) -> Term:
        try:
            term = as_term(expr, self)
        except CellError as exc:
            raise CellError(f"{what}: {exc}") from None
        foreign = sorted(
            f"{sym.name} {shape_str(sym)}"
            for sym in leaves(term.expr)
            if self._by_symbol.get(sym) is None
        )
        if term.cell is not None and term.cell is not self:
            raise CellError(
                f"{what}: {_sstr(term.expr)} {shape_str(term.expr)} belongs to cell "
                f"{term.cell.name!r}"
                + (f" ({', '.join(foreign)} not declared in {self.name!r})" if foreign else "")
            )
        unknown = sorted(s.name for s in leaves(term.expr) if self._by_symbol.get(s) is None)
        if unknown:
            raise CellError(
                f"{what}: {_sstr(term.expr)} uses {', '.join(unknown)}, which "
                f"{'is' if len(unknown) == 1 else 'are'} not declared in cell {self.name!r}"
            )
        return term

    def update(self, state: State, expr) -> None:
        """Set the update of ``state``: state(t) = expr (eqs. (2)–(3) for the Elman cell)."""
        if not isinstance(state, State) or self._vars.get(state.name) is not state:
            raise CellError(
                f"update: {state!r} is not a state of cell {self.name!r}; declare it with "
                f"cell.state(name, size)"
            )
        if state.name in self.updates:
            raise CellError(f"update: state {state.name!r} already has an update")
        term = self._term(expr, f"update of {state.name}")
        if term.shape != state.shape:
            raise ShapeError(
                f"update of {state.name}: {_sstr(term.expr)} has shape {shape_str(term.expr)}, "
                f"but state {state.name} has shape {shape_str(state.expr)}"
            )
        self.updates[state.name] = term
        self.order.append(("update", state.name))

    def define(self, name: str, expr) -> Variable:
        """Name an intermediate of the step, such as a gate: i(t) = expr.

        The derivation then shows i(t) and its adjoint ∇_{i(t)}L by name; the generated code
        is the same as with the expression written out.
        """
        term = self._term(expr, f"intermediate {name!r}")
        if term.shape[1] != 1:
            raise ShapeError(
                f"intermediate {name!r}: {_sstr(term.expr)} has shape {shape_str(term.expr)}; "
                f"intermediates are column vectors (size, 1)"
            )
        var = self._add(
            Variable(self._new_symbol(name, term.shape[0], 1, "intermediate"), self, "intermediate")
        )
        self.definitions[name] = term
        self.order.append(("define", name))
        return var

    def output(self, name: str, expr) -> Variable:
        """A named per-step output o(t) = expr (eq. (4) for the Elman cell)."""
        term = self._term(expr, f"output {name!r}")
        rows, cols = term.shape
        if cols != 1:
            raise ShapeError(
                f"output {name!r}: {_sstr(term.expr)} has shape {shape_str(term.expr)}; "
                f"outputs are column vectors (size, 1)"
            )
        var = self._add(Variable(self._new_symbol(name, rows, 1, "output"), self, "output"))
        self.output_defs[name] = term
        return var

    def loss(self, expr) -> None:
        """Add a per-step loss term L(t) (a 1×1 expression); the total is summed over t."""
        term = self._term(expr, "loss")
        if term.shape != (1, 1):
            raise ShapeError(
                f"loss: {_sstr(term.expr)} has shape {shape_str(term.expr)}; a loss must be a "
                f"scalar (1, 1), e.g. rs.squared_error(o, y)"
            )
        self._loss_terms.append(term)

    # ----- views -----

    def _of_kind(self, kind: str) -> dict[str, Variable]:
        return {n: v for n, v in self._vars.items() if v.kind == kind}

    @property
    def inputs(self) -> dict[str, Variable]:
        return self._of_kind("input")

    @property
    def states(self) -> dict[str, State]:
        return self._of_kind("state")

    @property
    def params(self) -> dict[str, Variable]:
        return self._of_kind("param")

    @property
    def targets(self) -> dict[str, Variable]:
        return self._of_kind("target")

    @property
    def outputs(self) -> dict[str, Variable]:
        return self._of_kind("output")

    @property
    def intermediates(self) -> dict[str, Variable]:
        return self._of_kind("intermediate")

    def step_term(self, kind: str, name: str) -> Term:
        """The expression of an update or a definition of the step."""
        return self.updates[name] if kind == "update" else self.definitions[name]

    @property
    def size_symbols(self) -> dict[str, sp.Symbol]:
        return dict(self._dims)

    def variable(self, symbol: MatrixSymbol) -> Variable | None:
        """The declared variable (or ``h.prev``) whose symbol this is."""
        return self._by_symbol.get(symbol)

    @property
    def loss_expr(self):
        """The per-step loss L(t) as one SymPy expression (sum of the ``loss`` terms)."""
        if not self._loss_terms:
            raise CellError(
                f"cell {self.name!r} has no loss; add one with cell.loss(rs.squared_error(o, y))"
            )
        return add(*[t.expr for t in self._loss_terms])

    # ----- whole-cell checks -----

    def check(self, loss: bool = True) -> None:
        """Check what needs the whole cell; raises :class:`CellError` naming the problem.

        A cell without a state is allowed: its steps decouple (teacher forcing, Fig. 4, or the
        output layer of a composed model). ``loss=False`` checks a layer of a composed model,
        whose loss is added by the composition.
        """
        if not self._vars:
            raise CellError(f"cell {self.name!r} declares nothing")
        if not self.inputs:
            raise CellError(
                f"cell {self.name!r} has no input; declare x(t) with cell.input(name, size)"
            )
        for name in self.states:
            if name not in self.updates:
                raise CellError(
                    f"state {name!r} has no update; call cell.update({name}, expression)"
                )
        loss_expr = self.loss_expr if loss else None
        allowed = {v.symbol for v in self._vars.values() if v.kind in ("input", "param")}
        allowed |= {s.prev.symbol for s in self.states.values()}
        for kind, name in self.order:
            term = self.step_term(kind, name)
            bad = sorted(s.name for s in leaves(term.expr) if s not in allowed)
            if bad:
                later = [b for b in bad if b in self.states or b in self.definitions]
                reason = (
                    f"{', '.join(later)} defined or updated later in the step (use .prev for "
                    f"a state's previous value, or define it first)"
                    if later
                    else "targets and outputs, which a state update cannot use"
                )
                what = "update of" if kind == "update" else "intermediate"
                raise CellError(
                    f"{what} {name}: {_sstr(term.expr)} uses {', '.join(bad)}: {reason}"
                )
            allowed.add(self._vars[name].symbol)
        allowed |= {v.symbol for v in self.targets.values()}
        for name, term in self.output_defs.items():
            bad = sorted(s.name for s in leaves(term.expr) if s not in allowed)
            if bad:
                raise CellError(
                    f"output {name}: {_sstr(term.expr)} uses {', '.join(bad)}, defined after it"
                )
            allowed.add(self._vars[name].symbol)
        if loss_expr is not None:
            self._check_params_reach_loss(loss_expr)

    def _check_params_reach_loss(self, loss) -> None:
        definitions = {self._vars[n].symbol: t.expr for n, t in self.updates.items()}
        definitions |= {self._vars[n].symbol: t.expr for n, t in self.definitions.items()}
        definitions |= {self._vars[n].symbol: t.expr for n, t in self.output_defs.items()}
        for state in self.states.values():
            definitions[state.prev.symbol] = definitions[state.symbol]
        reached: set[MatrixSymbol] = set()
        frontier = set(leaves(loss))
        while frontier:
            symbol = frontier.pop()
            if symbol in reached:
                continue
            reached.add(symbol)
            if symbol in definitions:
                frontier |= leaves(definitions[symbol]) - reached
        unused = [name for name, p in self.params.items() if p.symbol not in reached]
        if unused:
            raise CellError(
                f"the loss of cell {self.name!r} does not depend on parameter(s) "
                f"{', '.join(unused)}; their gradient would be identically zero. Remove them "
                f"or use them in an update or output"
            )

    def __repr__(self) -> str:
        parts = [f"Cell({self.name!r}"]
        for kind in ("inputs", "states", "params", "targets", "outputs"):
            group = getattr(self, kind)
            if group:
                parts.append(
                    f"{kind}=" + ",".join(f"{n}{shape_str(v.expr)}" for n, v in group.items())
                )
        return " ".join(parts) + ")"
