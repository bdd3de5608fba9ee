from __future__ import annotations

import subprocess
import sys

import pytest

import scn2s
from scn2s.cli import main


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


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert scn2s.__version__ in capsys.readouterr().out


def test_cli_demo(capsys, tmp_path):
    out = tmp_path / "demo.h5ad"
    assert main(["-q", "demo", "--cells", "300", "--genes", "100", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rank chosen by held-out molecules" in text
    assert "x lower" in text
    assert out.exists()


def test_ci_runs_the_readme_test_command():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    command = readme.split("Install and run the tests:")[1].split("```bash\n")[1].split("\n")[0]
    assert command in (root / ".ci" / "run").read_text()
