"""The several-samples notebook runs top to bottom: on the four PBMC samples when present, on a simulation otherwise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _notebooks import assert_stored_without_outputs, run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "several_samples_integrate.ipynb"
TIME_LIMIT_S = 600


def _execute(data_dir: Path, monkeypatch) -> tuple[str, int, float]:
    return run_notebook(NOTEBOOK, data_dir, monkeypatch, timeout=TIME_LIMIT_S)


def test_notebook_is_stored_without_outputs():
    assert_stored_without_outputs(NOTEBOOK)


def _check(text: str, figures: int) -> None:
    assert "batches' means used" in text
    assert "'X_denoised_integrated'" in text
    assert "integration: harmony" in text
    plain = float(re.search(r"X_denoised: batch entropy ([\d.]+)", text).group(1))
    integrated = float(re.search(r"X_denoised_integrated: batch entropy ([\d.]+)", text).group(1))
    assert integrated > plain + 0.2
    assert figures == 2  # the two UMAPs


@pytest.mark.data
def test_notebook_runs_on_four_pbmc_samples(data_file, monkeypatch):
    path = data_file("pbmc_4batches_3chemistries.h5ad")
    text, figures, elapsed = _execute(path.parent, monkeypatch)
    assert "data: pbmc_4batches_3chemistries.h5ad" in text
    assert "7498 cells x 2000 genes" in text
    _check(text, figures)
    assert elapsed < TIME_LIMIT_S


def test_notebook_falls_back_to_a_simulation(tmp_path, monkeypatch):
    text, figures, _ = _execute(tmp_path, monkeypatch)
    assert "counts simulated by scn2s.datasets.simulate" in text
    _check(text, figures)
