"""Running the notebooks in tests: execute one top to bottom with this checkout's scn2s, and read its outputs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def execute_notebook(path: Path, data_dir: Path, monkeypatch, *, timeout: int) -> tuple[nbformat.NotebookNode, float]:
    """The notebook at ``path`` executed with ``SCN2S_DATA_DIR=data_dir``, and the seconds it took."""
    monkeypatch.setenv("SCN2S_DATA_DIR", str(data_dir))
    # the kernel imports this checkout's scn2s, whatever is installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    start = time.perf_counter()
    client.execute()
    return notebook, time.perf_counter() - start


def notebook_outputs(notebook: nbformat.NotebookNode) -> tuple[str, int]:
    """The text printed by the code cells, and the number of figures they showed."""
    text, figures = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stdout":
                text.append(output.text)
            figures += "image/png" in output.get("data", {})
    return "".join(text), figures


def run_notebook(path: Path, data_dir: Path, monkeypatch, *, timeout: int) -> tuple[str, int, float]:
    """The text printed by the code cells of the executed notebook, the number of figures shown, and the time."""
    notebook, elapsed = execute_notebook(path, data_dir, monkeypatch, timeout=timeout)
    return (*notebook_outputs(notebook), elapsed)


def assert_stored_without_outputs(path: Path) -> None:
    """The notebook at ``path`` is valid, has code, and is stored unexecuted."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
