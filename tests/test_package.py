from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import scn2s


def test_import_does_not_import_torch():
    code = "import sys, scn2s; scn2s.pp.denoise; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_does_not_import_matplotlib():
    code = "import sys, scn2s; scn2s.pl.selection; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_api():
    assert callable(scn2s.pp.denoise)
    assert callable(scn2s.pp.split_counts)
    assert callable(scn2s.datasets.simulate)
    assert callable(scn2s.pl.selection)
    assert callable(scn2s.pl.genes)
    assert scn2s.__version__ != "0+unknown"


def test_ci_runs_the_readme_test_command():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    command = readme.split("Install and run the tests:")[1].split("```bash\n")[1].split("\n")[0]
    assert command in (root / ".ci" / "run").read_text()


@pytest.mark.data
def test_readme_denoises_and_plots_pbmc3k(data_file, tmp_path, monkeypatch):
    """The README's pbmc3k walkthrough runs as written and saves its two figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    code = readme.split("## Denoise and plot pbmc3k")[1].split("```python\n")[1].split("```")[0]
    path = "../shared/data/pbmc3k_10x_hg19.h5ad"
    assert path in code
    code = code.replace(path, str(data_file("pbmc3k_10x_hg19.h5ad")))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    try:
        exec(compile(code, "README.md", "exec"), namespace)
    finally:
        plt.close("all")
    assert 5 <= namespace["adata"].uns["denoised"]["best_params"]["rank"] < 50
    for name in ("pbmc3k_selection.png", "pbmc3k_markers.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
