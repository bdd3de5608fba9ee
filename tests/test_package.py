from __future__ import annotations

import subprocess
import sys

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
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    command = readme.split("Install and run the tests:")[1].split("```bash\n")[1].split("\n")[0]
    assert command in (root / ".ci" / "run").read_text()
