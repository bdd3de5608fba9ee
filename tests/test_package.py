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


def _relative_imports() -> dict[str, list[tuple[str, str]]]:
    """``{module: [(imported module, imported name), ...]}`` for every relative import in ``scn2s``.

    Imports anywhere in a file count (under ``TYPE_CHECKING`` and inside functions too); ``from . import x``
    imports the module ``x`` when it is one, the package's ``__init__`` otherwise.
    """
    import ast

    root = Path(scn2s.__file__).parent
    files = {
        ".".join(f.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): f
        for f in root.rglob("*.py")
    }
    imports = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        found = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    found.append((target, "") if target in files else (base, alias.name))
        imports[module] = [(target, name) for target, name in found if target in files]
    return imports


def test_no_import_circle():
    imports = _relative_imports()
    graph = {
        module: {target for target, _ in deps if target != module and not module.startswith(target + ".")}
        for module, deps in imports.items()
    }

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current not in seen:
                seen.add(current)
                todo += graph.get(current, ())
        return False

    circles = sorted(module for module, deps in graph.items() if any(reaches(dep, module) for dep in deps))
    assert not circles, f"modules on import circles: {circles}"


def test_no_private_name_crosses_packages():
    """A module of a subpackage is imported from outside it only by its public names; ``scn2s._x`` is shared."""
    crossings = []
    for module, deps in _relative_imports().items():
        home = module.split(".")[:2]
        for target, name in deps:
            parts = target.split(".")
            if parts[:2] == home:
                continue
            private_module = any(part.startswith("_") for part in parts[2:])
            if private_module or (name.startswith("_") and not name.startswith("__")):
                crossings.append(f"{module} imports {target}{'.' + name if name else ''}")
    assert not crossings, crossings
