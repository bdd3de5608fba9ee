"""The tutorial notebook runs top to bottom: on pbmc3k when the data are present, on a simulation otherwise."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from _notebooks import execute_notebook, notebook_outputs

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "pbmc3k_denoising.ipynb"
TIME_LIMIT_S = 180


def test_notebook_is_stored_with_its_outputs():
    """Stored executed on pbmc3k (``python notebooks/execute.py``), so that it reads with its figures unrun."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    text, figures = notebook_outputs(notebook)
    assert "data: pbmc3k_10x_hg19.h5ad" in text
    assert "2638 cells x 13714 genes after QC" in text
    assert "silhouette of seurat_annotation in PCA of denoised counts" in text
    assert figures == 5  # selection, two UMAPs, marker violins, markers on the UMAP (raw, denoised)
    # no progress bars or warnings, no error; small enough to open in a browser
    outputs = [output for cell in code for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert not [output for output in outputs if output.output_type == "stream" and output.name == "stderr"]
    assert NOTEBOOK.stat().st_size < 2_000_000


@pytest.mark.data
def test_notebook_runs_on_pbmc3k(data_file, monkeypatch):
    path = data_file("pbmc3k_10x_hg19.h5ad")
    notebook, elapsed = execute_notebook(NOTEBOOK, path.parent, monkeypatch, timeout=TIME_LIMIT_S)
    text, figures = notebook_outputs(notebook)
    assert "data: pbmc3k_10x_hg19.h5ad" in text
    assert "2638 cells x 13714 genes after QC" in text
    assert "silhouette of seurat_annotation in PCA of denoised counts" in text
    assert "silhouette of seurat_annotation in the embedding X_denoised" in text
    assert "CD14+ Mono vs FCGR3A+ Mono" in text
    assert figures == 4  # selection, three UMAPs, marker violins, markers on the UMAP (raw and denoised side by side)
    assert elapsed < TIME_LIMIT_S


def test_notebook_falls_back_to_a_simulation(tmp_path, monkeypatch):
    notebook, _ = execute_notebook(NOTEBOOK, tmp_path, monkeypatch, timeout=TIME_LIMIT_S)
    text, figures = notebook_outputs(notebook)
    assert "counts simulated by scn2s.datasets.simulate" in text
    assert "silhouette of cell_type in PCA of denoised counts" in text
    assert "silhouette of cell_type in the embedding X_denoised" in text
    assert figures == 4  # selection, three UMAPs, marker violins, markers on the UMAP (raw and denoised side by side)
