"""The calibration notebook runs top to bottom: on pbmc3k when the data are present, on a simulation otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from _notebooks import assert_stored_without_outputs, run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "pbmc3k_calibrate_magic.ipynb"
TIME_LIMIT_S = 600

pytest.importorskip("magic")


def _execute(data_dir: Path, monkeypatch) -> tuple[str, int, float]:
    return run_notebook(NOTEBOOK, data_dir, monkeypatch, timeout=TIME_LIMIT_S)


def test_notebook_is_stored_without_outputs():
    assert_stored_without_outputs(NOTEBOOK)


def _check(text: str, figures: int) -> None:
    assert "chosen t=" in text
    assert "t=8: held-out loss" in text
    assert "lower held-out loss: " in text
    assert "chosen alpha=" in text
    assert figures == 2  # the two selection plots


@pytest.mark.data
def test_notebook_runs_on_pbmc3k(data_file, monkeypatch):
    path = data_file("pbmc3k_10x_hg19.h5ad")
    text, figures, elapsed = _execute(path.parent, monkeypatch)
    assert "data: pbmc3k_10x_hg19.h5ad" in text
    assert "2700 cells x 2000 genes" in text
    _check(text, figures)
    assert elapsed < TIME_LIMIT_S


def test_notebook_falls_back_to_a_simulation(tmp_path, monkeypatch):
    text, figures, _ = _execute(tmp_path, monkeypatch)
    assert "counts simulated by scn2s.datasets.simulate" in text
    _check(text, figures)
