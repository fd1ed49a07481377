"""Execute docs/notebook.ipynb in place, so that it is stored with fresh outputs.

Run it from the repository root after changing the notebook or what it displays:
``python docs/execute_notebook.py`` (needs the ``docs`` extra: nbclient, nbformat,
ipykernel). The docs site renders the stored outputs without executing anything;
tests/test_notebook.py executes a copy and checks it.
"""

from __future__ import annotations

import sys
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parent / "notebook.ipynb"
TIMEOUT_S = 600  # per cell; rs.verify with the scalar oracle takes a few seconds


def execute(path: Path = NOTEBOOK):
    """The notebook at ``path``, executed in a fresh kernel (raises on the first cell error)."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        record_timing=False,  # no timestamps: re-running changes only what the cells print
        resources={"metadata": {"path": str(NOTEBOOK.parent.parent)}},  # in the repo root
    )
    client.execute()
    return notebook


def main() -> int:
    import nbformat

    notebook = execute()
    nbformat.write(notebook, NOTEBOOK)
    print(f"executed and wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
