"""The whole sequence at once: the lecture slides' bra-ket form, completed.

For a concrete number of steps T the states of a one-state cell form one ket
|h⟩ = (h(1), …, h(T))ᵀ and the inputs |x⟩ = (x(1), …, x(T))ᵀ; the shifted ket
|h(t−1)⟩ = 𝕊|h⟩ = (h(0), …, h(T−1))ᵀ. :func:`braket` builds these and the operators over time as
SymPy block matrices, with symbolic (or concrete) sizes:

* **slides form**, for a cell h(t) = σ(J_x x(t) + J_h h(t−1) [+ b]) with σ elementwise (the
  slides' model, the Elman cell of eqs. (2)–(3)): 𝕁_x = diag(J_x(1), …, J_x(T)),
  𝕁_h = diag(J_h(1), …, J_h(T)), G(t) = diag(σ′(a(t))), 𝔾 = diag(G(1), …, G(T)), the block shift
  𝕊 and the error bras ⟨δ_t(τ)| = ⟨d(t)|G(t)J_h(t)G(t−1)⋯J_h(τ+1)G(τ);
* **general form**, for any other one-state cell (GRU, MGU, IndRNN, …): the per-step transition
  A(t) = ∂h(t)/∂h(t−1), known by its action on a bra (the ``carry`` of :func:`rnnsym.derive`),
  𝔸 = diag(A(1), …, A(T)) and ⟨δ_t(τ)| = ⟨d(t)|A(t)⋯A(τ+1). For the slides form A(t) = G(t)J_h(t).

In both, ⟨d(t)| = ∂L(t)/∂h(t) is the loss's direct dependence on h(t): the weights of the
linear loss Σ_t⟨d(t)|h(t)⟩ of the slides, or Vᵀ(o(t) − y(t)) for eq. (5). The whole-sequence
adjoint is ⟨δ| = ⟨d|(𝕀 − 𝔾𝕁_h𝕊)⁻¹𝔾 (general form: ⟨d|(𝕀 − 𝔸𝕊)⁻¹), where 𝕊 is nilpotent, so the
inverse is the finite Neumann sum Σ_{k<T}(𝔾𝕁_h𝕊)ᵏ. Its blocks are the sums Σ_{t≥τ}⟨δ_t(τ)|, and
stepping τ down is the BPTT recurrence (for the Elman cell, the report's eq. (9) times G(τ):
⟨δ(τ)| = ∇_{a(τ)}L is the adjoint of the pre-activation).

A cell with several states (LSTM: h and c) is written with the stacked state
s(t) = (h(t); c(t)) and the block Jacobian A(t) = ∂s(t)/∂s(t−1); ⟨d(t)| = ∂L(t)/∂s(t) holds the
other states of the step fixed.

Weights are shared over time by default (``tied=True``: J_h(t) = W for every t, and a weight's
gradient is the sum of the per-step terms); ``tied=False`` gives every step its own symbols.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import sympy as sp
from sympy import (
    BlockDiagMatrix,
    BlockMatrix,
    Identity,
    ImmutableMatrix,
    MatAdd,
    MatMul,
    MatrixExpr,
    MatrixSymbol,
    Transpose,
    ZeroMatrix,
)

from ..cell import Cell
from ..derive import Derivation, adjoint_symbol, backprop, derive
from ..errors import CellError, RnnsymError
from ..ir.explicit import concrete, explicit, forward_envs
from ..ir.ops import Apply, Concat, Pad, Slice, add, coeff_and_factors, hadamard, mul, transpose
from .printing import BraketText, braket_latex, braket_text
from .symbols import EPSILON

__all__ = ["SequenceForm", "braket", "monomials"]


@dataclass(frozen=True)
class SlidesForm:
    """Which parameters play J_x, J_h and the biases in h = σ(J_x x + J_h h(t−1) + b)."""

    activation: str
    J_x: str
    J_h: str
    input: str
    biases: tuple[str, ...]


def _slides_form(cell: Cell) -> SlidesForm | None:
    ((name, state),) = cell.states.items()
    expr = cell.updates[name].expr
    if cell.definitions or not isinstance(expr, Apply):
        return None
    if expr.activation.derivative is None:
        return None
    terms = expr.arg.args if isinstance(expr.arg, MatAdd) else (expr.arg,)
    params = {p.symbol: n for n, p in cell.params.items()}
    inputs = {v.symbol: n for n, v in cell.inputs.items()}
    J_x = J_h = source = None
    biases = []
    for term in terms:
        coeff, factors = coeff_and_factors(term)
        if coeff != 1:
            return None
        if len(factors) == 2 and factors[0] in params:
            if factors[1] in inputs and J_x is None:
                J_x, source = params[factors[0]], inputs[factors[1]]
                continue
            if factors[1] == state.prev.symbol and J_h is None:
                J_h = params[factors[0]]
                continue
        if len(factors) == 1 and factors[0] in params and factors[0].shape[1] == 1:
            biases.append(params[factors[0]])
            continue
        return None
    if J_x is None or J_h is None or len({J_x, J_h, *biases}) != 2 + len(biases):
        return None
    return SlidesForm(expr.name, J_x, J_h, source, tuple(biases))


# ----- block matrices as nested lists (every block a canonical IR expression) -----


def _bmul(a: list[list], b: list[list]) -> list[list]:
    rows, inner, cols = len(a), len(b), len(b[0])
    out = []
    for i in range(rows):
        row = []
        for j in range(cols):
            terms = [mul(a[i][k], b[k][j]) for k in range(inner)]
            row.append(add(*terms))
        out.append(row)
    return out


def _badd(a: list[list], b: list[list], sign: int = 1) -> list[list]:
    return [
        [add(x, mul(sign, y)) for x, y in zip(ra, rb, strict=True)]
        for ra, rb in zip(a, b, strict=True)
    ]


def _bdiag(blocks: list[MatrixExpr]) -> list[list]:
    T = len(blocks)
    return [
        [
            blocks[i] if i == j else ZeroMatrix(blocks[i].shape[0], blocks[j].shape[1])
            for j in range(T)
        ]
        for i in range(T)
    ]


def monomials(expr: MatrixExpr) -> Counter:
    """A matrix expression fully expanded: {(factor, ...): coefficient}, products of leaves.

    Two expressions are equal as polynomials in non-commuting matrices exactly when their
    monomials are equal; this is the symbolic-zero test of the bra-ket identities.
    """
    out: Counter = Counter()
    if isinstance(expr, ZeroMatrix):
        return out
    if isinstance(expr, MatAdd):
        for arg in expr.args:
            out.update(monomials(arg))
        return Counter({k: v for k, v in out.items() if v != 0})
    if isinstance(expr, MatMul):
        coeff, factors = coeff_and_factors(expr)
        product = Counter({(): coeff})
        for factor in factors:
            nxt: Counter = Counter()
            for left, c in product.items():
                for right, d in monomials(factor).items():
                    nxt[left + right] += c * d
            product = nxt
        return Counter({k: v for k, v in product.items() if v != 0})
    if isinstance(expr, Transpose) and not isinstance(expr.arg, MatrixSymbol):
        pushed = transpose(expr.arg)
        if not (isinstance(pushed, Transpose) and pushed.arg == expr.arg):
            return monomials(pushed)
    if isinstance(expr, Identity):
        return Counter({(): 1})
    return Counter({(expr,): 1})


def _zeroed(expr: MatrixExpr, zero: set) -> MatrixExpr:
    """``expr`` with the symbols in ``zero`` set to zero, rebuilt so that zeros vanish.

    Used on expressions linear in those symbols (adjoints), where a zero factor of a product,
    an elementwise product, a slice, a padding or a stacking makes the whole term zero.
    """
    if isinstance(expr, MatrixSymbol):
        return ZeroMatrix(*expr.shape) if expr in zero else expr
    if not isinstance(expr, MatrixExpr) or not expr.args:
        return expr
    args = [_zeroed(a, zero) if isinstance(a, MatrixExpr) else a for a in expr.args]
    if isinstance(expr, MatAdd):
        return add(*args)
    if isinstance(expr, MatMul):
        return mul(*args)
    if isinstance(expr, sp.HadamardProduct):
        return hadamard(*args)
    if isinstance(expr, Transpose):
        return transpose(args[0])
    if isinstance(expr, (Slice, Pad, Concat)):
        matrices = [a for a in args if isinstance(a, MatrixExpr)]
        if all(isinstance(a, ZeroMatrix) for a in matrices):
            return ZeroMatrix(*expr.shape)
    return expr.func(*args)


# ----- the sequence-space form -----


class SequenceForm:
    """The bra-ket form of a cell over T steps (see the module docstring).

    SymPy objects: ``x``, ``h``, ``h_shifted`` (kets, T×1 block matrices), ``S`` (𝕊), ``I`` (𝕀)
    and, in the slides form, ``J_x``, ``J_h``, ``G`` (𝔾) — in the general form ``A`` (𝔸) — as
    block matrices. Step symbols are named ``h(2)``, ``G(3)``, ``W(1)`` (untied) or ``W``. A cell
    with several states has one stacked ket per step, named ``ket_name`` (``s(t)``), of size
    ``n`` (the sum of the states' sizes).
    """

    def __init__(self, cell: Cell, T: int, tied: bool = True, sizes: dict | None = None):
        if not isinstance(cell, Cell):
            raise TypeError(f"braket() needs an rnnsym.Cell, got {type(cell).__name__}")
        if not isinstance(T, int) or isinstance(T, bool) or T < 1:
            raise RnnsymError(f"braket needs a number of steps T >= 1, got {T!r}")
        cell.check()
        self.cell = cell
        self.T = T
        self.tied = tied
        self.derivation: Derivation = derive(cell)
        if not cell.states:
            raise CellError(
                f"braket: cell {cell.name!r} has no state: its steps decouple, so there is no "
                f"recurrence over the sequence to write in bra-ket form"
            )
        self.states = list(cell.states.items())
        self.state_name, self.state = self.states[0]
        self.multi = len(self.states) > 1
        # the ket of the whole sequence: the state itself, or the stacked s(t) = (h(t); c(t))
        self.ket_name = self.state_name
        if self.multi:  # a name the cell does not use
            self.ket_name = next(n for n in ("s", "S", "s_t", "state") if n not in cell._vars)
        self.slides = None if self.multi else _slides_form(cell)
        self.dims = {}
        if sizes:
            symbols = cell.size_symbols
            unknown = sorted(set(sizes) - set(symbols))
            if unknown:
                raise CellError(
                    f"braket: size {unknown[0]!r} is not a size of cell {cell.name!r}; its "
                    f"sizes are {', '.join(sorted(symbols))}"
                )
            self.dims = {symbols[k]: sp.Integer(v) for k, v in sizes.items()}
        self._build()

    # ----- symbols -----

    def _shape(self, symbol: MatrixSymbol) -> tuple:
        return tuple(sp.sympify(s).xreplace(self.dims) for s in symbol.shape)

    def step(self, name: str, t, shape: tuple) -> MatrixSymbol:
        """The symbol of quantity ``name`` at step t (an integer or a symbol): ``h(2)``."""
        return MatrixSymbol(f"{name}({str(t).replace(' ', '')})", *shape)

    def param(self, name: str, t) -> MatrixSymbol:
        """Parameter ``name`` as used at step t: itself when tied, ``W(t)`` when untied."""
        shape = self._shape(self.cell.params[name].symbol)
        return MatrixSymbol(name, *shape) if self.tied else self.step(name, t, shape)

    def at(self, expr: MatrixExpr, t) -> MatrixExpr:
        """A one-step expression of the cell written at step t in step symbols."""
        cell = self.cell
        rule: dict = {}
        for name, var in cell._vars.items():
            shape = self._shape(var.symbol)
            if var.kind == "param":
                rule[var.symbol] = self.param(name, t)
            else:
                rule[var.symbol] = self.step(name, t, shape)
                if var.kind in ("output", "state", "intermediate"):
                    rule[adjoint_symbol(var.symbol)] = self.step(f"g_{name}", t, shape)
        for name, state in self.states:
            rule[state.prev.symbol] = self.step(name, t - 1, self._shape(state.symbol))
        for seed in [*self.seeds.values(), *self.totals.values()]:
            rule[seed] = self.step(seed.name, t, self._shape(seed))
        return expr.xreplace(rule)

    def _build(self) -> None:
        T, cell = self.T, self.cell
        self.state_sizes = {name: self._shape(st.symbol)[0] for name, st in self.states}
        n = sp.Add(*self.state_sizes.values())
        n_shape = (n, sp.Integer(1))
        self.n = n
        self._stacked_pass()
        self.h_steps = [self.step(self.ket_name, t, n_shape) for t in range(T + 1)]
        self.d_steps = [self.step("d", t, n_shape) for t in range(1, T + 1)]
        self.d_bras = [transpose(d) for d in self.d_steps]
        identity = Identity(n)
        self.shift_blocks = [
            [identity if i == j + 1 else ZeroMatrix(n, n) for j in range(T)] for i in range(T)
        ]
        self.identity_blocks = _bdiag([identity] * T)
        if self.slides:
            s = self.slides
            x_shape = self._shape(cell.inputs[s.input].symbol)
            self.x_steps = [self.step(s.input, t, x_shape) for t in range(1, T + 1)]
            self.Jx_steps = [self.param(s.J_x, t) for t in range(1, T + 1)]
            self.Jh_steps = [self.param(s.J_h, t) for t in range(1, T + 1)]
            self.G_steps = [self.step("G", t, (n, n)) for t in range(1, T + 1)]
            self.transition_steps = [
                mul(G, J) for G, J in zip(self.G_steps, self.Jh_steps, strict=True)
            ]
            # 𝔾𝕁_h𝕊, built by block multiplication
            self.M_blocks = _bmul(
                _bmul(_bdiag(self.G_steps), _bdiag(self.Jh_steps)), self.shift_blocks
            )
        else:
            self.A_steps = [self.step("A", t, (n, n)) for t in range(1, T + 1)]
            self.transition_steps = list(self.A_steps)
            self.M_blocks = _bmul(_bdiag(self.A_steps), self.shift_blocks)

    def _stacked_pass(self) -> None:
        """One step backwards without the loss: the action of A(t)ᵀ and of ∂s(t)/∂θ.

        Seeds: a ket |u⟩ = (|u_h⟩; |u_c⟩; …) on the stacked state s(t), its components taken as
        independent (∂/∂c(t) holds h(t) fixed); each state's total adjoint within the step is
        its seed plus what the states updated later in the step send back. The results, in the
        cell's own one-step symbols: ``carry_exprs[s]`` = [A(t)ᵀ|u⟩]_s (the part of the seed
        handed to s(t−1)) and ``param_exprs[θ]`` = the step's term of ⟨u|∂s(t)/∂θ.
        """
        cell = self.cell
        if self.multi:
            self.seeds = {
                name: MatrixSymbol(f"u_{name}", *st.symbol.shape) for name, st in self.states
            }
        else:  # one state: the seed is ∇_{h(t)}L itself, as in the derivation
            self.seeds = {self.state_name: adjoint_symbol(self.state.symbol)}
        states = dict(self.states)
        prev_of = {st.prev.symbol: name for name, st in self.states}
        named = {cell._vars[name].symbol: name for _, name in cell.order}
        params = {p.symbol: name for name, p in cell.params.items()}
        differentiable = set(named) | set(prev_of) | set(params)
        pending: dict = {}
        carry: dict[str, list] = {name: [] for name in states}
        param_terms: dict[str, list] = {name: [] for name in cell.params}
        # named totals, as the derivation names its adjoints: ū_c = u_c + what the states
        # updated later in the step send back to c(t); ū_q = what reaches an intermediate q
        self.totals: dict[str, MatrixSymbol] = {}
        self.total_defs: dict[str, MatrixExpr] = {}
        for kind, name in reversed(cell.order):
            symbol = cell._vars[name].symbol
            incoming = pending.pop(symbol, [])
            if kind == "update":
                incoming = [self.seeds[name], *incoming]
            if not incoming:
                continue
            if len(incoming) > 1 or kind == "define":
                total = MatrixSymbol(f"ū_{name}", *symbol.shape)
                self.totals[name] = total
                self.total_defs[name] = add(*incoming)
                incoming = [total]
            g = add(*incoming)
            expr = cell.step_term(kind, name).expr
            for leaf, ct in backprop(expr, symbol, g, differentiable).items():
                if leaf in named:
                    pending.setdefault(leaf, []).append(ct)
                elif leaf in prev_of:
                    carry[prev_of[leaf]].append(ct)
                elif leaf in params:
                    param_terms[params[leaf]].append(ct)
        self.carry_exprs = {
            name: add(*terms) if terms else ZeroMatrix(*states[name].symbol.shape)
            for name, terms in carry.items()
        }
        self.param_exprs = {
            name: add(*terms) if terms else ZeroMatrix(*cell.params[name].symbol.shape)
            for name, terms in param_terms.items()
        }
        # the loss of step t must read the states s(t) only, not s(t−1) behind them
        d = self.derivation
        state_adjoints = {adjoint_symbol(st.symbol) for _, st in self.states}
        for name, expr in d.carry.items():
            direct = _zeroed(self._adjoints_inlined(expr), state_adjoints)
            if not isinstance(direct, ZeroMatrix):
                raise CellError(
                    f"braket: the loss of step t of cell {self.cell.name!r} reads the previous "
                    f"state {name}(t−1) directly (its part of ∇_{{{name}(t−1)}}L is "
                    f"{sp.sstr(direct)}); the bra-ket form needs L(t) to depend on the states "
                    f"of step t only"
                )

    # ----- the SymPy objects of the slides -----

    @staticmethod
    def _ket(blocks: list[MatrixExpr]) -> BlockMatrix:
        return BlockMatrix([[b] for b in blocks])

    @property
    def x(self) -> BlockMatrix:
        """|x⟩ = (x(1), …, x(T))ᵀ (slides form)."""
        return self._ket(self._need_slides("x").x_steps)

    @property
    def h(self) -> BlockMatrix:
        """|h⟩ = (h(1), …, h(T))ᵀ."""
        return self._ket(self.h_steps[1:])

    @property
    def h_shifted(self) -> BlockMatrix:
        """|h(t−1)⟩ = 𝕊|h⟩ + h(0) = (h(0), …, h(T−1))ᵀ."""
        return self._ket(self.h_steps[:-1])

    @property
    def S(self) -> BlockMatrix:
        """The block shift 𝕊: 𝕊|h⟩ = (0, h(1), …, h(T−1))ᵀ; 𝕊ᵀ = 0."""
        return BlockMatrix(self.shift_blocks)

    @property
    def I(self) -> BlockMatrix:  # noqa: E743 - the slides' name
        """𝕀, the identity over the whole sequence."""
        return BlockMatrix(self.identity_blocks)

    @property
    def J_x(self) -> BlockDiagMatrix:
        """𝕁_x = diag(J_x(1), …, J_x(T)) (slides form)."""
        return BlockDiagMatrix(*self._need_slides("J_x").Jx_steps)

    @property
    def J_h(self) -> BlockDiagMatrix:
        """𝕁_h = diag(J_h(1), …, J_h(T)) (slides form)."""
        return BlockDiagMatrix(*self._need_slides("J_h").Jh_steps)

    @property
    def G(self) -> BlockDiagMatrix:
        """𝔾 = diag(G(1), …, G(T)), G(t) = diag(σ′(a(t))) (slides form)."""
        return BlockDiagMatrix(*self._need_slides("G").G_steps)

    @property
    def A(self) -> BlockDiagMatrix:
        """𝔸 = diag(A(1), …, A(T)), A(t) = ∂h(t)/∂h(t−1) (= G(t)J_h(t) in the slides form)."""
        return BlockDiagMatrix(*self.transition_steps)

    def _need_slides(self, what: str) -> SequenceForm:
        if self.slides is None:
            raise CellError(
                f"{what} belongs to the slides form h = σ(J_x x + J_h h(t−1) + b); cell "
                f"{self.cell.name!r} is not of that form: use A (𝔸, the transition operator)"
            )
        return self

    # ----- definitions of G(t), d(t), A(t) -----

    def pre_activation(self) -> MatrixExpr:
        """a = J_x x + J_h h(t−1) + b of the slides form, one step."""
        expr = self.cell.updates[self.state_name].expr
        return expr.arg

    def G_definition(self, t: int) -> MatrixExpr:
        """The diagonal of G(t): σ′(a(t)), written with h(t) where the rule allows (1 − h∘h)."""
        self._need_slides("G")
        return self.at(self.G_definition_one_step(), t)

    def d_definition(self, t, state: str | None = None) -> MatrixExpr:
        """|d(t)⟩ = ∂L(t)/∂h(t) through the outputs and the loss of step t; with several
        states, the component ``state`` of |d(t)⟩ = ∂L(t)/∂s(t) (the other states held)."""
        d = self.derivation
        name = self._state_arg(state)
        symbol = self.cell.states[name].symbol
        local = d.state_local[name]
        expr = add(*local) if local else ZeroMatrix(*symbol.shape)
        rule = {
            adjoint_symbol(self.cell.outputs[o].symbol): e for o, e in d.output_adjoints.items()
        }
        state_adjoints = {adjoint_symbol(st.symbol) for _, st in self.states}
        expr = _zeroed(self._adjoints_inlined(expr), state_adjoints)
        return self.at(expr.xreplace(rule), t)

    def transition_action(self, t, state: str | None = None) -> MatrixExpr:
        """[A(t)ᵀ|u⟩]_state: what step t hands back to state(t−1) from a ket |u⟩ on s(t)
        (one state: (⟨g|A(t))ᵀ with g = ∇_{h(t)}L, the carry of the derivation)."""
        return self.at(self.carry_exprs[self._state_arg(state)], t)

    def inline_totals(self, expr: MatrixExpr) -> MatrixExpr:
        """``expr`` of the step's pass with the totals ū_c written out in the seeds u."""
        rule = {self.totals[n]: e for n, e in self.total_defs.items()}
        for _ in rule:
            expr = expr.xreplace(rule)
        return expr

    def _state_arg(self, state: str | None) -> str:
        if state is None:
            if self.multi:
                raise RnnsymError(
                    f"cell {self.cell.name!r} has the states {', '.join(self.cell.states)}: "
                    f"name one (state='{self.state_name}')"
                )
            return self.state_name
        if state not in self.cell.states:
            raise RnnsymError(
                f"{state!r} is not a state of cell {self.cell.name!r}; its states are "
                f"{', '.join(self.cell.states)}"
            )
        return state

    def _adjoints_inlined(self, expr: MatrixExpr) -> MatrixExpr:
        cell, d = self.cell, self.derivation
        rule: dict = {}
        for kind, name in reversed(cell.order):
            if kind == "define":
                rule[adjoint_symbol(cell._vars[name].symbol)] = d.intermediate_adjoints[
                    name
                ].xreplace(rule)
        return expr.xreplace(rule) if rule else expr

    # ----- the slides' component form (concrete sizes) -----

    def _basis(self, what: str) -> list[ImmutableMatrix]:
        """The kets |m⟩, m = 1…nT, of the whole sequence (needs concrete sizes)."""
        self._need_slides(what)
        size = sp.sympify(self.n * self.T)
        if not size.is_Integer:
            raise RnnsymError(
                f"{what} sums over the components m = 1…nT: build the form with concrete sizes, "
                f"e.g. rs.braket(cell, {self.T}, sizes={{'n': 2, ...}}) (n is {self.n})"
            )
        return [ImmutableMatrix.eye(int(size))[:, m] for m in range(int(size))]

    def _bias_ket(self) -> MatrixExpr | None:
        biases = [
            self._ket([self.param(b, t) for t in range(1, self.T + 1)]) for b in self.slides.biases
        ]
        return add(*biases) if biases else None

    def _component_argument(self, ket_m: ImmutableMatrix) -> MatrixExpr:
        """⟨m|𝕁_x|x⟩ + ⟨m|𝕁_h|h(t−1)⟩ (+ ⟨m|b⟩), a 1 × 1 expression."""
        bra = ket_m.T
        terms = [MatMul(bra, self.J_x, self.x), MatMul(bra, self.J_h, self.h_shifted)]
        bias = self._bias_ket()
        if bias is not None:
            terms.append(MatMul(bra, bias))
        return MatAdd(*terms)

    def component_form(self) -> MatrixExpr:
        """|h⟩ = Σ_m |m⟩ σ(⟨m|𝕁_x|x⟩ + ⟨m|𝕁_h|h(t−1)⟩ + ⟨m|b⟩), m over the nT components of
        the whole sequence (the slides' component form; concrete sizes, slides form)."""
        act = self.cell.updates[self.state_name].expr.activation
        terms = [
            MatMul(m, Apply(act.name, self._component_argument(m)))
            for m in self._basis("component_form")
        ]
        return MatAdd(*terms)

    def G_component_form(self) -> MatrixExpr:
        """𝔾 = Σ_m |m⟩ σ′(⟨m|𝕁_x|x⟩ + ⟨m|𝕁_h|h(t−1)⟩ + ⟨m|b⟩) ⟨m| (concrete sizes, slides form):
        the slides' G(t) over the whole sequence, diagonal."""
        act = self.cell.updates[self.state_name].expr.activation
        terms = []
        for m in self._basis("G_component_form"):
            out = MatMul(m.T, self.h)  # ⟨m|h⟩, which σ′ may be written with
            deriv = act.derivative(self._component_argument(m), out)
            terms.append(MatMul(m, deriv, m.T))
        return MatAdd(*terms)

    def chain(self, t: int) -> MatrixExpr:
        """δ⟨d(t)|h(t)⟩ = Σ_{τ≤t}(⟨δ_t(τ)|δJ_x|x(τ)⟩ + ⟨δ_t(τ)|δJ_h|h(τ−1)⟩ + ⟨δ_t(τ)|δb⟩)
        (slides form; δJ the variations of the step's weights), or Σ_{τ≤t}⟨δ_t(τ)|δ_θs(τ)⟩
        (general form). A 1 × 1 expression in the step symbols."""
        self._check_steps(t, t)
        terms = []
        for tau in range(1, t + 1):
            bra = self.error_bra(t, tau)
            if self.slides:
                s = self.slides
                terms.append(mul(bra, self._delta(s.J_x, tau), self.x_steps[tau - 1]))
                terms.append(mul(bra, self._delta(s.J_h, tau), self.h_steps[tau - 1]))
                terms.extend(mul(bra, self._delta(b, tau)) for b in s.biases)
            else:
                source = self.step(f"δ_θ{self.ket_name}", tau, (self.n, 1))
                terms.append(mul(bra, source))
        return add(*terms)

    def is_linear_loss(self) -> bool:
        """Whether the loss is the slides' L = Σ_t⟨d(t)|h(t)⟩ with the weights d(t) a target."""
        if self.multi:
            return False
        d = self.d_definition(1)
        return isinstance(d, MatrixSymbol) and any(
            d == self.step(name, 1, self._shape(v.symbol)) for name, v in self.cell.targets.items()
        )

    # ----- derived results -----

    def error_bra(self, t: int, tau: int) -> MatrixExpr:
        """⟨δ_t(τ)| for 1 ≤ τ ≤ t ≤ T: ⟨d(t)|G(t)J_h(t)⋯J_h(τ+1)G(τ) (slides form), or
        ⟨d(t)|A(t)⋯A(τ+1) (general form)."""
        self._check_steps(t, tau)
        factors = [self.d_bras[t - 1]]
        for s in range(t, tau, -1):
            factors.append(self.transition_steps[s - 1])
        if self.slides:
            factors.append(self.G_steps[tau - 1])
        return mul(*factors)

    def _check_steps(self, t: int, tau: int) -> None:
        if not (1 <= tau <= t <= self.T):
            raise RnnsymError(
                f"error bras need 1 <= tau <= t <= T = {self.T}, got t={t}, tau={tau}"
            )

    def error_ket(self, t: int, tau: int) -> MatrixSymbol:
        """|δ_t(τ)⟩ as a symbol (its value is ``transpose(error_bra(t, τ))``)."""
        self._check_steps(t, tau)
        return MatrixSymbol(f"δ_{t}({tau})", self.n, 1)

    def adjoint_bra(self, tau: int) -> MatrixExpr:
        """⟨δ(τ)| = Σ_{t≥τ} ⟨δ_t(τ)|: the block τ of ⟨δ|."""
        return add(*[self.error_bra(t, tau) for t in range(tau, self.T + 1)])

    def neumann_blocks(self) -> list[list]:
        """(𝕀 − M)⁻¹ = Σ_{k<T} Mᵏ as blocks, M = 𝔾𝕁_h𝕊 (general form: 𝔸𝕊); Mᵀ = 0 (nilpotent)."""
        total = self.identity_blocks
        power = self.identity_blocks
        for _ in range(1, self.T):
            power = _bmul(power, self.M_blocks)
            total = _badd(total, power)
        return total

    def inverse_check_blocks(self) -> list[list]:
        """(𝕀 − M) Σ_{k<T} Mᵏ, which must be 𝕀 (because M^T = 0)."""
        return _bmul(_badd(self.identity_blocks, self.M_blocks, -1), self.neumann_blocks())

    def closed_form(self) -> list[MatrixExpr]:
        """The blocks ⟨δ(τ)| of ⟨δ| = ⟨d|(𝕀 − 𝔾𝕁_h𝕊)⁻¹𝔾 (general form: ⟨d|(𝕀 − 𝔸𝕊)⁻¹)."""
        row = _bmul([self.d_bras], self.neumann_blocks())
        if self.slides:
            row = _bmul(row, _bdiag(self.G_steps))
        return row[0]

    def bptt_bra(self, tau: int) -> MatrixExpr:
        """⟨δ(τ)| by the backward recurrence: ⟨δ(T)| = ⟨d(T)|G(T); ⟨δ(τ)| = (⟨d(τ)| +
        ⟨δ(τ+1)|J_h(τ+1)) G(τ) — eq. (9) times G(τ) — or ⟨d(τ)| + ⟨δ(τ+1)|A(τ+1) in the general
        form."""
        bra = None
        for s in range(self.T, tau - 1, -1):
            state_bra = self.d_bras[s - 1]
            if bra is not None:
                nxt = self.Jh_steps[s] if self.slides else self.transition_steps[s]
                state_bra = add(state_bra, mul(bra, nxt))
            bra = mul(state_bra, self.G_steps[s - 1]) if self.slides else state_bra
        return bra

    def variation(self, t: int) -> MatrixExpr:
        """δ|h(t)⟩ = G(t)(δJ_x|x(t)⟩ + δJ_h|h(t−1)⟩ + δb + J_h δ|h(t−1)⟩) (slides form), or
        δ_θ|h(t)⟩ + A(t)δ|h(t−1)⟩ (general form; δ_θ is the step's own dependence)."""
        n_shape = (self.n, 1)
        k = self.ket_name
        prev = ZeroMatrix(*n_shape) if t == 1 else self.step(f"δ{k}", t - 1, n_shape)
        if not self.slides:
            local = self.step(f"δ_θ{k}", t, n_shape)
            return add(local, mul(self.transition_steps[t - 1], prev))
        s = self.slides
        terms = [
            mul(self._delta(s.J_x, t), self.x_steps[t - 1]),
            mul(self._delta(s.J_h, t), self.h_steps[t - 1]),
            *[self._delta(b, t) for b in s.biases],
            mul(self.Jh_steps[t - 1], prev),
        ]
        return mul(self.G_steps[t - 1], add(*terms))

    def _delta(self, name: str, t: int) -> MatrixSymbol:
        shape = self._shape(self.cell.params[name].symbol)
        return MatrixSymbol(f"δ{name}", *shape) if self.tied else self.step(f"δ{name}", t, shape)

    def update_rules(self) -> dict[str, MatrixExpr | list[MatrixExpr]]:
        """The gradient-descent update δθ = −ε ∇_θ L of every parameter, in bra-ket form.

        Slides form: δJ = −ε Σ_t Σ_{τ≤t} |δ_t(τ)⟩⟨v(τ)| for J_x (v = x), J_h (v = h(τ−1)) and
        the biases (v = 1), written with the error kets |δ_t(τ)⟩ (:meth:`error_ket`); the output
        layer's rule is its step-local term. General form: the derivation's per-step term with
        ∇_{h(τ)}L = |δ(τ)⟩ = Σ_{t≥τ}|δ_t(τ)⟩. One expression per parameter (tied weights, summed
        over τ) or a list with one per step (untied).
        """
        rules: dict = {}
        vectors = {}
        if self.slides:
            s = self.slides
            vectors = {s.J_x: self.x_steps, s.J_h: self.h_steps[:-1]}
            vectors |= {b: None for b in s.biases}
        for name in self.derivation.param_terms:
            per_step = []
            for tau in range(1, self.T + 1):
                if name in vectors:
                    kets = add(*[self.error_ket(t, tau) for t in range(tau, self.T + 1)])
                    v = vectors[name]
                    per_step.append(mul(kets, transpose(v[tau - 1])) if v else kets)
                else:
                    # slides form: a parameter outside the recurrence (the output layer),
                    # step-local; general form: ∂L(τ)/∂θ + ⟨δ(τ)|∂s(τ)/∂θ, the seed of the
                    # step's pass read as |δ(τ)⟩ (several states: its components |δ_h(τ)⟩, …)
                    per_step.append(self.step_term(name, tau))
            if self.tied:
                rules[name] = mul(-EPSILON, add(*per_step))
            else:
                rules[name] = [mul(-EPSILON, e) for e in per_step]
        return rules

    def _seed_rule(self, tau) -> dict:
        """The seeds u(τ) of the step's pass read as the adjoint ket |δ(τ)⟩ (several states:
        its parts |δ_h(τ)⟩, …); the totals ū(τ) keep their names."""
        if not self.multi:
            ((name, seed),) = self.seeds.items()
            return {self.step(seed.name, tau, self._shape(seed)): self.step("δ", tau, (self.n, 1))}
        return {
            self.step(seed.name, tau, self._shape(seed)): self.step(
                f"δ_{name}", tau, self._shape(seed)
            )
            for name, seed in self.seeds.items()
        }

    def total(self, tau, name: str) -> MatrixExpr:
        """ū_q(τ) for a state or intermediate q of the step's pass, with |u(τ)⟩ = |δ(τ)⟩: for a
        state, ∇_{q(τ)}L of the derivation (|δ_q(τ)⟩ plus what states updated later in the step
        send back); for an intermediate, what reaches it through the states."""
        if name not in self.totals:
            raise RnnsymError(
                f"{name!r} has no total in the step of cell {self.cell.name!r}; the totals are "
                f"{', '.join(self.totals) or 'none'}"
            )
        return self.at(self.total_defs[name], tau).xreplace(self._seed_rule(tau))

    def step_term(self, name: str, tau) -> MatrixExpr:
        """The step-τ term of ∇_θ L in bra-ket form (τ an integer or a symbol).

        Slides form: |δ(τ)⟩⟨v(τ)| with v = x, h(τ−1) or 1 (biases), |δ(τ)⟩ = Σ_{t≥τ}|δ_t(τ)⟩;
        otherwise ∂L(τ)/∂θ (states held) plus ⟨δ(τ)|∂s(τ)/∂θ, the step's pass seeded with |δ(τ)⟩.
        """
        if name not in self.cell.params:
            raise RnnsymError(
                f"{name!r} is not a parameter of cell {self.cell.name!r}; its parameters are "
                f"{', '.join(self.cell.params)}"
            )
        state_adjoints = {adjoint_symbol(st.symbol) for _, st in self.states}
        term = self.derivation.param_terms[name]
        direct = self.at(_zeroed(self._adjoints_inlined(term), state_adjoints), tau)
        if self.slides:
            s = self.slides
            ket = self.step("δ", tau, (self.n, 1))
            if name == s.J_x:
                return mul(ket, transpose(self.step(s.input, tau, self.x_steps[0].shape)))
            if name == s.J_h:
                return mul(ket, transpose(self.step(self.ket_name, tau - 1, (self.n, 1))))
            if name in s.biases:
                return ket
            return direct
        pass_term = self.at(self.param_exprs[name], tau).xreplace(self._seed_rule(tau))
        return add(direct, pass_term)

    def adjoint_ket(self, tau: int) -> MatrixSymbol:
        """|δ(τ)⟩ = Σ_{t≥τ}|δ_t(τ)⟩ as a symbol (its value is ``transpose(adjoint_bra(τ))``)."""
        self._check_steps(self.T, tau)
        return MatrixSymbol(f"δ({tau})", self.n, 1)

    # ----- numbers -----

    def gradients(self, problem, digits: int = 60, route: str = "update_rule") -> dict:
        """The gradient at an :class:`~rnnsym.verify.UnrolledPoint`, computed the bra-ket way.

        ``route="update_rule"`` sums the error bras as the update rules do;
        ``route="closed_form"`` forms ⟨d|(𝕀 − 𝔾𝕁_h𝕊)⁻¹𝔾 with explicit nT × nT matrices. Returns
        {name: matrix} (tied) or {name: [matrix per step]} (untied). Parameters outside the
        recurrence (the output layer) get their step-local terms.
        """

        if route not in ("update_rule", "closed_form"):
            raise ValueError(f"route must be 'update_rule' or 'closed_form', got {route!r}")
        if problem.untied == self.tied or problem.T != self.T or problem.cell is not self.cell:
            raise RnnsymError(
                "gradients(): the point must be drawn for this cell, T and tying "
                f"(cell {self.cell.name!r}, T={self.T}, tied={self.tied})"
            )
        cell, dims, T = self.cell, problem.dims, self.T

        def num(m):
            return ImmutableMatrix(m).evalf(digits)

        di = self.derivation.inlined()
        values = problem.values(digits)
        envs = forward_envs(di, problem.dims, values, problem.data, {}, num)
        sizes = {name: concrete(st.symbol, dims).shape[0] for name, st in self.states}
        n = sum(sizes.values())
        offsets, start = {}, 0
        for name, size in sizes.items():
            offsets[name] = (start, start + size)
            start += size

        def parts(ket: ImmutableMatrix) -> dict:  # a stacked ket split into its states
            return {name: ket[a:b, :] for name, (a, b) in offsets.items()}

        state_adjoints = {
            name: concrete(adjoint_symbol(st.symbol), dims) for name, st in self.states
        }
        seeds = {name: concrete(seed, dims) for name, seed in self.seeds.items()}
        carry = {
            name: self.derivation.inline(self.inline_totals(e))
            for name, e in self.carry_exprs.items()
        }
        param_exprs = {
            name: self.derivation.inline(self.inline_totals(e))
            for name, e in self.param_exprs.items()
        }
        h = [ImmutableMatrix.zeros(n, 1)] + [
            ImmutableMatrix.vstack(*[env[concrete(st.symbol, dims)] for _, st in self.states])
            for env in envs
        ]
        d_vec, G_mat, A_mat = [], [], []
        for t, env in enumerate(envs):
            for o, expr in di.output_adjoints.items():
                env[concrete(adjoint_symbol(cell.outputs[o].symbol), dims)] = num(
                    explicit(expr, dims, env)
                )
            # ⟨d(t)| = ∂L(t)/∂s(t): the loss's part of the step's state adjoints, every state
            # adjoint read as zero (what a state sends back within the step is not part of it)
            for name, symbol in state_adjoints.items():
                env[symbol] = ImmutableMatrix.zeros(sizes[name], 1)
            d = []
            for name, _ in self.states:
                value = ImmutableMatrix.zeros(sizes[name], 1)
                for term in di.state_local[name]:
                    value = value + explicit(term, dims, env)
                d.append(value)
            d_vec.append(num(ImmutableMatrix.vstack(*d)))
            if self.slides:
                diag = explicit(self.G_definition_one_step(), dims, env)
                G_mat.append(num(ImmutableMatrix.diag(*list(diag))))
                A_mat.append(num(G_mat[-1] * values[t][self.slides.J_h]))
            else:  # A(t) row by row: the row i of A(t) is (A(t)ᵀ|e_i⟩)ᵀ
                rows = []
                for i in range(n):
                    for name, part in parts(ImmutableMatrix.eye(n)[:, i]).items():
                        env[seeds[name]] = part
                    column = [explicit(carry[name], dims, env) for name, _ in self.states]
                    rows.append(list(ImmutableMatrix.vstack(*column)))
                A_mat.append(num(ImmutableMatrix(rows)))
        # the adjoint bras ⟨δ(τ)| (slides form: at the pre-activation, with G(τ))
        if route == "update_rule":
            bras = []
            for tau in range(1, T + 1):
                total = ImmutableMatrix.zeros(1, n)
                for t in range(tau, T + 1):
                    bra = d_vec[t - 1].T
                    for s in range(t, tau, -1):
                        bra = bra * A_mat[s - 1]
                    if self.slides:
                        bra = bra * G_mat[tau - 1]
                    total = total + bra
                bras.append(num(total))
        else:
            zero = ImmutableMatrix.zeros(n, n)
            blocks = [[zero] * T for _ in range(T)]
            for t in range(1, T):
                blocks[t][t - 1] = A_mat[t]  # (𝔾𝕁_h𝕊) or (𝔸𝕊): step t+1 reads step t
            M = ImmutableMatrix(sp.BlockMatrix(blocks).as_explicit()) if T > 1 else zero
            N = ImmutableMatrix.eye(n * T)
            power = ImmutableMatrix.eye(n * T)
            for _ in range(1, T):
                power = num(power * M)
                N = N + power
            row = ImmutableMatrix.hstack(*[d.T for d in d_vec]) * N
            if self.slides:
                row = row * ImmutableMatrix(sp.BlockDiagMatrix(*G_mat).as_explicit())
            row = num(row)
            bras = [row[:, i * n : (i + 1) * n] for i in range(T)]
        per_step: dict[str, list] = {name: [] for name in cell.params}
        for tau in range(1, T + 1):
            env = envs[tau - 1]
            bra = bras[tau - 1]
            for symbol in state_adjoints.values():  # the step-local (direct) terms read these
                env[symbol] = ImmutableMatrix.zeros(*symbol.shape)
            if self.slides:
                s = self.slides
                x = problem.data[tau - 1][s.input]
                per_step[s.J_x].append(num(bra.T * x.T))
                per_step[s.J_h].append(num(bra.T * h[tau - 1].T))
                for b in s.biases:
                    per_step[b].append(num(bra.T))
                for name, term in di.param_terms.items():  # the output layer: step-local
                    if name not in (s.J_x, s.J_h, *s.biases):
                        per_step[name].append(num(explicit(term, dims, env)))
            else:
                # ∂L(τ)/∂θ (states held) + ⟨δ(τ)|∂s(τ)/∂θ, the step's pass seeded with |δ(τ)⟩
                direct = {name: explicit(e, dims, env) for name, e in di.param_terms.items()}
                for name, part in parts(bra.T).items():
                    env[seeds[name]] = part
                for name, value in direct.items():
                    per_step[name].append(num(value + explicit(param_exprs[name], dims, env)))
        if problem.untied:
            return per_step
        return {name: num(sum(terms[1:], terms[0])) for name, terms in per_step.items()}

    def G_definition_one_step(self) -> MatrixExpr:
        """σ′(a) of one step, in the cell's own symbols."""
        act = self.cell.updates[self.state_name].expr.activation
        return act.derivative(self.pre_activation(), self.state.symbol)

    def update(self, problem, eps, digits: int = 60) -> list[dict]:
        """The parameters after one update δθ = −ε ∇θ L of the slides' rules, per step."""
        grads = self.gradients(problem, digits)
        eps = sp.sympify(eps)
        out = []
        for t, values in enumerate(problem.values(digits)):
            step = {}
            for name, value in values.items():
                g = grads[name][t] if problem.untied else grads[name]
                step[name] = (value - eps * g).evalf(digits)
            out.append(step)
        return out

    # ----- printing -----

    def text(self, expr: MatrixExpr) -> str:
        """One expression of this form as bra-ket text: ``⟨d(3)| G(3) W G(2)``."""

        return BraketText().term(expr)

    def pretty(self) -> str:
        """The sequence-space derivation as Unicode text."""

        return braket_text(self)

    def latex(self) -> str:
        """The sequence-space derivation as LaTeX in the slides' notation."""

        return braket_latex(self)

    def __str__(self) -> str:
        return self.pretty()

    def _repr_latex_(self) -> str:
        """Jupyter: the derivation as LaTeX displays (MathJax)."""
        return self.latex()

    def __repr__(self) -> str:
        form = "slides form" if self.slides else "general form"
        return f"<SequenceForm {self.cell.name!r}, T={self.T}, {form}, tied={self.tied}>"


def braket(cell: Cell, T: int, tied: bool = True, sizes: dict | None = None) -> SequenceForm:
    """The whole-sequence bra-ket form of ``cell`` over ``T`` steps (the slides', completed).

    A cell of the slides' form h = σ(J_x x + J_h h(t−1) + b) gets their operators 𝕁_x, 𝕁_h, 𝔾;
    any other cell, one state or several (stacked into s(t) = (h(t); c(t))), the transition
    A(t) = ∂s(t)/∂s(t−1). ``tied=False`` gives every step its own weights; ``sizes`` fixes the
    sizes (``{"n": 2, "m": 3}``), needed for the component form.
    """
    return SequenceForm(cell, T, tied=tied, sizes=sizes)
