"""The package's layout: layers that follow the pipeline cell → derive → lower → print → verify.

Every import inside ``rnnsym`` (at module level or inside a function) goes to the same layer or
a lower one, so the import graph has no circles; the only exceptions are the convenience methods
listed in ``UPWARD``, where a low-level object hands itself to a higher layer on request
(``derive(cell).paper()``), each with its reason. The public names of ``rnnsym`` stay as they
were.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rnnsym

PACKAGE = Path(rnnsym.__file__).parent

# lowest first; a module may import from its own layer or any layer before it
LAYERS = [
    ("base", ["rnnsym._version", "rnnsym.errors"]),
    ("ir", ["rnnsym.ir"]),
    (
        "cell",
        ["rnnsym.cell", "rnnsym.losses", "rnnsym.problems", "rnnsym.transform", "rnnsym.tangent"],
    ),
    (
        "derive",
        ["rnnsym.derive", "rnnsym.labels", "rnnsym.printing", "rnnsym.display", "rnnsym.linear"],
    ),
    ("lower and print", ["rnnsym.backends", "rnnsym.kernel", "rnnsym.braket"]),
    ("models", ["rnnsym.models", "rnnsym.cells"]),
    # analysis on generated kernels: truncated BPTT, gradient flow, second order
    ("analysis", ["rnnsym.truncate", "rnnsym.flow", "rnnsym.second_order"]),
    ("verify", ["rnnsym.verify"]),
    ("tools", ["rnnsym.paper", "rnnsym.unroll", "rnnsym.demo", "rnnsym.cli", "rnnsym.__main__"]),
    ("package", ["rnnsym"]),
]

# (importer, imported): why a lower layer may import a higher one, inside one method
UPWARD = {
    ("rnnsym.derive", "rnnsym.paper"): "Derivation.paper() writes the derivation's document",
    ("rnnsym.models.compose", "rnnsym.paper"): "ModelDerivation.paper(), the same for a model",
}

PUBLIC = [
    "Cell", "Term", "Derivation", "derive", "unroll", "paper_document", "braket",
    "SequenceForm", "stack", "bidirectional", "seq2seq", "last_output", "generate", "Model",
    "ModelKernel", "compile", "check_gradients", "verify", "gradient_flow", "cells",
    "elementwise", "concat",
    "tanh", "sigmoid", "relu", "softplus", "exp", "log", "log_sigmoid", "squared_error",
    "linear_loss", "softmax_cross_entropy", "sqrt", "RnnsymError", "CellError", "ShapeError",
    "DerivationError",
]  # fmt: skip


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("rnnsym",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer of tests/test_layout.py"
    return best[0]


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported rnnsym module, line, inside a function) for every import of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
        else:
            target = node.names[0].name
        if not target.startswith("rnnsym"):
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
        targets = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES] or [target]
        for t in targets:
            if t in MODULES and t != module:
                found.append((t, node.lineno, node not in tree.body))
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    for target, line, lazy in _imports(module):
        if _layer(target) <= _layer(module):
            continue
        reason = UPWARD.get((module, target))
        where = f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}"
        assert reason is not None, (
            f"{where}: {module} ({LAYERS[_layer(module)][0]}) imports {target} "
            f"({LAYERS[_layer(target)][0]}), a higher layer"
        )
        assert lazy, f"{where}: the upward import of {target} ({reason}) must be inside its method"


def test_the_import_graph_has_no_circles_but_the_listed_methods():
    graph = {
        m: {t for t, _, _ in _imports(m) if (m, t) not in UPWARD and t != "rnnsym"} for m in MODULES
    }
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                raise AssertionError(f"import circle: {' -> '.join(circle)}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_every_upward_import_listed_is_still_there():
    found = {(m, t) for m in MODULES for t, _, _ in _imports(m)}
    assert set(UPWARD) <= found, set(UPWARD) - found


def test_the_public_names_are_unchanged():
    assert sorted(rnnsym.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert hasattr(rnnsym, name), name
