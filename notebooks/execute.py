"""Run the tutorial notebook top to bottom and store it with its outputs: ``python notebooks/execute.py``.

Run from anywhere, with the shared data folder in place (``../shared/data`` from the repository root, or the
folder named by ``SCN2S_DATA_DIR``), so that the stored figures are those of pbmc3k.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent / "pbmc3k_denoising.ipynb"


def main() -> int:
    """Execute the notebook in place; return the exit code."""
    root = NOTEBOOK.parents[1]
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    start = time.perf_counter()
    client.execute()
    for cell in notebook.cells:  # progress bars and warnings are not part of the tutorial's outputs
        if cell.cell_type == "code":
            cell.outputs = [out for out in cell.outputs if not (out.output_type == "stream" and out.name == "stderr")]
    nbformat.write(notebook, NOTEBOOK)
    size = NOTEBOOK.stat().st_size
    print(f"executed {NOTEBOOK.name} in {time.perf_counter() - start:.0f} s; stored with outputs, {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
