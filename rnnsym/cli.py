"""The ``rnnsym`` command: derive, generate and verify a cell from the terminal."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
from pathlib import Path

from . import cells
from ._version import __version__
from .cell import Cell
from .errors import RnnsymError
from .printing import breakable

__all__ = ["main"]


def _load_module(path: Path, prefix: str, what: str):
    """The user's own Python file at ``path``, run as a module (its folder importable while it
    loads, so it may import its neighbours); ``what`` starts the error messages."""
    if not path.is_file():
        raise RnnsymError(f"{what}no such file: {path}")
    module_spec = importlib.util.spec_from_file_location(f"{prefix}_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise RnnsymError(f"{what}{path} is not a Python module (expected a .py file)")
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module


def _target(name: str, command: str = ""):
    """A built-in cell or model by name, or the cell a user's ``PATH.py:FUNC`` returns."""
    if ":" in name:
        from .models.nested import NestedModel, NestedSeq2Seq

        target = _load_user_cell(name)
        if command and isinstance(target, NestedModel | NestedSeq2Seq):
            raise RnnsymError(
                f"rnnsym {command} does not handle nested models ({target.name!r}) yet; "
                f"`rnnsym derive {name}` derives and checks it"
            )
        return target
    if name.endswith(".py"):
        raise RnnsymError(
            f"{name!r}: name the function that returns the cell, as {name}:FUNC "
            f"(e.g. {name}:make_cell)"
        )
    return cells.get(name)


def _load_user_cell(spec: str) -> Cell:
    """``path/to/file.py:function`` -> the Cell that function returns."""
    path_text, sep, func_name = spec.rpartition(":")
    if not sep or not path_text or not func_name:
        raise RnnsymError(f"expected PATH.py:FUNCTION, got {spec!r}")
    path = Path(path_text)
    module = _load_module(path, "rnnsym_user", "")
    func = getattr(module, func_name, None)
    if func is None or not callable(func):
        raise RnnsymError(f"{path} defines no function {func_name!r}")
    try:
        inspect.signature(func).bind()
    except TypeError:
        raise RnnsymError(
            f"{spec}: {func_name}{inspect.signature(func)} needs arguments; point at a function "
            f"that takes none and returns an rnnsym.Cell"
        ) from None
    except ValueError:  # no signature to inspect (a builtin): calling it will tell
        pass
    cell = func()
    from .models.compose import Model
    from .models.nested import NestedModel, NestedSeq2Seq

    if not isinstance(cell, Cell | Model | NestedModel | NestedSeq2Seq):
        raise RnnsymError(
            f"{spec} returned {type(cell).__name__}; it must return an rnnsym.Cell or a model "
            f"(rs.stack, rs.bidirectional, rs.seq2seq, rs.last_output)"
        )
    return cell


class _ModuleKernel:
    """An emitted kernel module loaded from a file, called through the kernel interface."""

    def __init__(self, module, path: Path):
        self.module, self.path = module, path
        # without vjp() (a forward-mode kernel) the vjp checks are reported as skipped
        self.mode = "reverse" if callable(getattr(module, "vjp", None)) else "forward"

    def forward(self, params, inputs, h0=None):
        return self.module.forward(params, inputs, h0)

    def loss_and_grad(self, params, inputs, targets, h0=None):
        return self.module.loss_and_grad(params, inputs, targets, h0)

    def vjp(self, params, inputs, targets, h0=None):
        return self.module.vjp(params, inputs, targets, h0)


def _load_kernel(path_text: str, cell: Cell) -> _ModuleKernel:
    """The kernel module ``rnnsym derive --emit`` (or ``Kernel.write``) wrote, loaded by path:
    it is the user's own file, like the cell's."""
    path = Path(path_text)
    module = _load_module(path, "rnnsym_kernel", "--kernel: ")
    missing = [f for f in ("loss_and_grad", "forward") if not callable(getattr(module, f, None))]
    if missing:
        raise RnnsymError(
            f"--kernel: {path} defines no {' or '.join(missing)}(); expected a kernel module "
            f"written by rnnsym derive --emit"
        )
    spec = getattr(module, "SPEC", None)
    if isinstance(spec, dict) and isinstance(spec.get("params"), dict):
        if sorted(spec["params"]) != sorted(cell.params):
            raise RnnsymError(
                f"--kernel: {path} is a kernel for parameters {sorted(spec['params'])}, but cell "
                f"{cell.name!r} has parameters {sorted(cell.params)}"
            )
    return _ModuleKernel(module, path)


def _generated(name: str, what: str = "derivation") -> str:
    """The first line of LaTeX output: a comment naming rnnsym's version."""
    return _comment(f"Generated by rnnsym {__version__}: the {what} of {name!r}", True) + "\n"


def _latex_output(name: str, body: str, what: str = "derivation") -> str:
    """LaTeX output that pastes as is: the version comment, then the displays in a group that
    lets them break across pages (a derivation can be taller than a page)."""
    return _generated(name, what) + breakable(body)


def _comment(text: str, latex: bool) -> str:
    """``text`` as LaTeX comments (``% `` before every line) when the output is LaTeX, so that
    it pastes into a document as is."""
    if not latex:
        return text
    return "\n".join(f"% {line}" if line else "%" for line in text.splitlines())


def _check_T(args: argparse.Namespace) -> None:
    """--T must be a positive number of steps; a large one only warns (it is slow)."""
    from .verify import LONG_ORACLE_T

    if args.T is None:
        return
    if args.T < 1:
        raise RnnsymError(f"--T {args.T}: the number of steps must be at least 1")
    if args.command in ("derive", "verify", "paper") and args.T > LONG_ORACLE_T:
        print(
            f"rnnsym: warning: --T {args.T} is the scalar oracle's number of steps; its cost "
            f"grows with T (above {LONG_ORACLE_T} expect a long run). The kernel itself is "
            f"checked at random T of 8 to 11 regardless",
            file=sys.stderr,
        )


def _run_model(model, args: argparse.Namespace) -> int:
    from .verify import verify_model

    if args.backend != "numpy":
        raise RnnsymError(
            f"--backend {args.backend}: a composed model ({model.kind}) is compiled for NumPy only"
        )
    kernel = model.compile()
    derivation = model.derive()
    out = sys.stdout
    if args.latex:
        out.write(_latex_output(model.name, derivation.latex()))
    else:
        out.write(derivation.pretty() + "\n")
    if args.emit:
        base = Path(args.emit)
        for role, part_kernel in kernel.kernels.items():
            path = part_kernel.write(base.with_name(f"{base.stem}_{role}{base.suffix or '.py'}"))
            line = f"Kernel of the {role} written to {path} (needs only NumPy)"
            out.write("\n" + _comment(line, args.latex))
        out.write("\n")
    if args.no_verify:
        return 0
    out.write("\n")
    out.flush()
    report = verify_model(model, kernel=kernel, T=args.T)
    out.write(_comment(str(report), args.latex) + "\n")
    return 0 if report.ok else 1


def _run_nested(model, args: argparse.Namespace) -> int:
    """A nested model: its structure, each cell's derivation, and finite differences of its
    kernel, on a full batch and on a padded one."""
    if args.backend != "numpy" or args.kernel or args.emit or args.order != 1:
        raise RnnsymError(
            "a nested model is compiled for NumPy and checked as a whole: --backend, --kernel, "
            "--emit and --order 2 are for one cell"
        )
    out = sys.stdout
    out.write(_comment(model.describe(), args.latex) + "\n")
    for name, derivation in model.derive().items():
        if args.latex:
            out.write(_comment(f"\ncell {name}", True) + "\n" + derivation.latex() + "\n")
        else:
            out.write(f"\n== {name} ==\n{derivation.pretty()}\n")
    if args.no_verify:
        return 0
    from .verify.nested import nested_finite_differences, nested_oracle

    T = args.T or 4
    oracle = nested_oracle(model, T=min(T, 3))
    out.write(_comment(f"\n{oracle}", args.latex) + "\n")
    ok = oracle.ok
    for lengths, report in nested_finite_differences(model, T):
        what = "full batch" if lengths is None else f"padded batch, lengths {lengths}"
        out.write(_comment(f"\nfinite differences, {what}:\n{report}", args.latex) + "\n")
        ok = ok and report.ok
    out.write(_comment(f"result: {'all checks passed' if ok else 'FAILED'}", args.latex) + "\n")
    return 0 if ok else 1


def _schedule_text(kernel) -> str:
    """Which states are linear (and why the others are not), and how the kernel runs."""
    linearity = kernel.derivation.linear_states
    if kernel.schedule == "scan":
        how = f"parallel scans over t for {', '.join(kernel.scanned)}" + (
            ", a loop over t for the others" if linearity.reasons else ""
        )
    else:
        how = "a loop over t"
    return (
        f"\nLinear recurrences (derivation.linear_states):\n{linearity.text()}\n"
        f"Kernel schedule: {kernel.schedule} ({how})"
    )


def _run(cell: Cell, args: argparse.Namespace) -> int:
    from .kernel import compile_cell
    from .models.compose import Model
    from .models.nested import NestedModel, NestedSeq2Seq
    from .verify import verify

    if isinstance(cell, NestedModel | NestedSeq2Seq):
        return _run_nested(cell, args)

    if isinstance(cell, Model):
        if args.kernel:
            raise RnnsymError("--kernel checks the kernel of one cell, not of a composed model")
        if args.order != 1:
            raise RnnsymError("--order 2 derives the second order of one cell, not of a model")
        return _run_model(cell, args)
    if args.order == 2:
        if args.kernel or args.emit:
            raise RnnsymError("--order 2 prints and checks the second-order recurrence only")
        from .second_order import cli_order2

        return cli_order2(cell, args)

    kernel = compile_cell(cell, schedule=args.schedule)
    checked = _load_kernel(args.kernel, cell) if args.kernel else kernel
    out = sys.stdout
    if args.latex:
        out.write(_latex_output(cell.name, kernel.derivation.latex()))
    else:
        out.write(kernel.derivation.pretty() + "\n")
    out.write(_comment(_schedule_text(kernel), args.latex) + "\n")
    if args.emit:
        emitted = (
            kernel
            if args.backend == "numpy"
            else compile_cell(cell, backend=args.backend, schedule=args.schedule)
        )
        path = emitted.write(args.emit)
        framework = {"numpy": "NumPy", "torch": "PyTorch", "jax": "JAX", "numba": "NumPy and Numba"}
        out.write(
            _comment(
                f"\nKernel written to {path} ({len(emitted.source.splitlines())} lines, "
                f"needs only {framework[args.backend]})",
                args.latex,
            )
            + "\n"
        )
    if args.no_verify:
        return 0
    out.write("\n")
    out.flush()
    if args.kernel:
        out.write(_comment(f"Checking the kernel in {args.kernel} against the cell", args.latex))
        out.write("\n")
    report = verify(cell, kernel=checked, T=args.T)
    out.write(_comment(str(report), args.latex) + "\n")
    return 0 if report.ok else 1


def _braket(args: argparse.Namespace) -> int:
    from .braket.form import braket
    from .verify import braket_report

    cell = _target(args.cell, "braket")
    if not isinstance(cell, Cell):
        raise RnnsymError(
            f"braket: {args.cell!r} is a model of several cells ({cell.kind}); the bra-ket form "
            f"is derived for one cell"
        )
    form = braket(cell, args.T, tied=not args.untied)
    if args.latex:
        sys.stdout.write(_latex_output(form.cell.name, form.latex(), "bra-ket form"))
    else:
        sys.stdout.write(form.pretty() + "\n")
    if args.no_verify:
        return 0
    sys.stdout.flush()
    report = braket_report(form)
    sys.stdout.write("\n" + _comment(str(report), args.latex) + "\n")
    return 0 if report.ok else 1


def _paper(args: argparse.Namespace) -> int:
    from .paper import make_paper

    target = args.cell
    obj = _target(target)
    paper = make_paper(
        obj, notation=args.notation, body_only=args.body_only, verify=not args.no_verify, T=args.T
    )
    if args.output in (None, "-"):
        sys.stdout.write(paper.tex)
    else:
        path = Path(args.output)
        path.write_text(paper.tex, encoding="utf-8")
        verdict = (
            ""
            if args.no_verify
            else (", every check of its certificate passed" if paper.ok else ", SOME CHECKS FAILED")
        )
        print(f"LaTeX document for {obj.name!r} written to {path}{verdict}")
    return 0 if paper.ok else 1


def _demo(args: argparse.Namespace) -> int:
    from .demo import SENTENCE, apple, save_plot

    out = sys.stdout
    out.write(
        f'Learning "{" ".join(SENTENCE)}" (1-of-K, K = {len(SENTENCE)}) with an Elman cell, '
        f"softmax cross-entropy and plain gradient descent (eps = {args.lr}, "
        f"{args.steps} steps, n = {args.hidden}); gradients from the generated kernel.\n\n"
    )
    result = apple(steps=args.steps, lr=args.lr, hidden=args.hidden, seed=args.seed)
    every = max(1, args.steps // 10)
    out.write("  step   loss\n")
    for i, loss in enumerate(result.losses, 1):
        if i == 1 or i % every == 0 or i == len(result.losses):
            out.write(f"  {i:4d}   {loss:.6f}\n")
    out.write("\n" + result.curve() + "\n\n")
    if not args.no_plot:
        plot = save_plot(result, args.plot)
        out.write(plot.note + "\n")
    out.write(f"predicted: {' '.join(result.predicted)}\n")
    if result.learned:
        out.write("learned the sentence exactly\n")
        return 0
    out.write(f"did NOT learn the sentence (expected: {' '.join(SENTENCE)})\n")
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnsym",
        description="Derive back-propagation through time for a recurrent cell, generate a "
        "NumPy kernel for it and verify both.",
    )
    parser.add_argument("--version", action="version", version=f"rnnsym {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--latex", action="store_true", help="print the derivation as LaTeX")
        p.add_argument("--emit", metavar="PATH", help="write the generated kernel module here")
        p.add_argument(
            "--backend",
            default="numpy",
            choices=["numpy", "torch", "jax", "numba"],
            help="the framework of the kernel --emit writes (default numpy; the report "
            "verifies the NumPy kernel and compares this one with it)",
        )
        p.add_argument("--no-verify", action="store_true", help="skip the verification report")
        p.add_argument(
            "--schedule",
            default="auto",
            choices=["auto", "scan", "sequential"],
            help="scan: the recurrences of the linear states (h(t) = a(t) ∘ h(t-1) + b(t)) by "
            "parallel scans over t; sequential: a loop over t; auto (default): scan where a "
            "state is linear",
        )
        p.add_argument(
            "--order",
            type=int,
            choices=[1, 2],
            default=1,
            help="2: the second-order recurrence (Hessian-vector products, forward over "
            "reverse) and its check against finite differences of the gradient",
        )
        p.add_argument(
            "--T",
            type=int,
            default=None,
            help="steps for the scalar oracle (default 6 for a cell, 4 for a composed model)",
        )
        p.add_argument(
            "--kernel",
            metavar="PATH.py",
            help="check this kernel module (written by --emit, perhaps edited) instead of a "
            "freshly generated one",
        )

    derive_p = sub.add_parser("derive", help="derive a built-in cell and verify it")
    derive_p.add_argument(
        "cell",
        nargs="?",
        default="elman",
        help=f"built-in cell or model: {', '.join(sorted([*cells.BUILTIN, *cells.MODELS]))} "
        "(default elman), or PATH.py:FUNC for your own cell",
    )
    common(derive_p)
    verify_p = sub.add_parser("verify", help="derive and verify a cell defined in a file")
    verify_p.add_argument(
        "target",
        metavar="PATH.py:FUNC",
        help="a file and the function in it that returns an rnnsym.Cell",
    )
    common(verify_p)
    graph_p = sub.add_parser("graph", help="draw the unrolled computation graph")
    graph_p.add_argument(
        "cell", help="a built-in cell or model name, or PATH.py:FUNC for your own cell"
    )
    graph_p.add_argument("--T", type=int, default=4, help="number of steps (default 4)")
    graph_p.add_argument(
        "--T-out",
        type=int,
        default=None,
        help="decoder steps of a seq2seq model (default T + 1)",
    )
    graph_p.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="write .dot, or .svg/.png/.pdf with Graphviz installed (default: DOT to stdout)",
    )
    braket_p = sub.add_parser(
        "braket", help="the whole-sequence bra-ket derivation of the lecture slides"
    )
    braket_p.add_argument("cell", help="a built-in cell name, or PATH.py:FUNC for your own")
    braket_p.add_argument("--T", type=int, default=3, help="number of steps (default 3)")
    braket_p.add_argument("--latex", action="store_true", help="print it as LaTeX (align*)")
    braket_p.add_argument(
        "--untied", action="store_true", help="every step its own weights J(t) (default: tied)"
    )
    braket_p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the check against BPTT and sympy.diff at a random point",
    )
    paper_p = sub.add_parser(
        "paper", help="a standalone LaTeX document: the derivation and its verification"
    )
    paper_p.add_argument(
        "cell", help="a built-in cell or model name, or PATH.py:FUNC for your own cell"
    )
    paper_p.add_argument(
        "-o", "--output", metavar="PATH.tex", help="write the document here (default: stdout)"
    )
    paper_p.add_argument(
        "--notation",
        choices=["report", "braket"],
        default="report",
        help="report: bold vectors and ∇ as in the report (default); braket: the slides' kets",
    )
    paper_p.add_argument(
        "--body-only",
        action="store_true",
        help="no preamble, for pasting into a document that loads amsmath and amssymb",
    )
    paper_p.add_argument(
        "--no-verify", action="store_true", help="leave out the verification certificate"
    )
    paper_p.add_argument(
        "--T",
        type=int,
        default=None,
        help="steps for the scalar oracle (default 6 for a cell, 4 for a composed model)",
    )
    demo_p = sub.add_parser("demo", help="worked examples trained with generated kernels")
    demo_p.add_argument("example", choices=["apple"], help='apple: learn "This is an apple ."')
    demo_p.add_argument("--steps", type=int, default=400, help="gradient-descent steps (400)")
    demo_p.add_argument("--lr", type=float, default=0.5, help="learning rate eps (0.5)")
    demo_p.add_argument("--hidden", type=int, default=8, help="state size n (8)")
    demo_p.add_argument("--seed", type=int, default=0, help="seed of the initial weights (0)")
    demo_p.add_argument(
        "--plot",
        default="apple_loss.png",
        metavar="PATH",
        help="where to save the loss curve when matplotlib is installed (apple_loss.png)",
    )
    demo_p.add_argument("--no-plot", action="store_true", help="do not save a plot")
    sub.add_parser("cells", help="list the built-in cells")
    # analysis on generated kernels, each command registered by the module that implements it
    from .flow import register_cli as _flow
    from .truncate import register_cli as _tbptt

    _tbptt(sub, lambda name: _target(name, "tbptt"))
    _flow(sub, lambda name: _target(name, "flow"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "T"):
            _check_T(args)
        if getattr(args, "handler", None):  # a command registered by its module (tbptt, flow)
            return args.handler(args)
        if args.command == "cells":
            for name, builtin in sorted({**cells.BUILTIN, **cells.MODELS}.items()):
                print(f"{name:16s} {(builtin.make.__doc__ or '').strip().splitlines()[0]}")
            return 0
        if args.command == "graph":
            from .unroll import unroll

            target = args.cell
            cell = _target(target)
            options = {} if args.T_out is None else {"T_out": args.T_out}
            graph = unroll(cell, args.T, **options)
            if args.output:
                path = graph.write(args.output)
                print(f"unrolled graph of {cell.name!r} (T = {args.T}) written to {path}")
            else:
                sys.stdout.write(graph.to_dot())
            return 0
        if args.command == "braket":
            return _braket(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "paper":
            return _paper(args)
        if args.command == "derive" and ":" not in args.cell:
            cell = cells.get(args.cell)
        else:
            cell = _load_user_cell(args.cell if args.command == "derive" else args.target)
        return _run(cell, args)
    except (RnnsymError, ValueError, OSError) as exc:
        print(f"rnnsym: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
