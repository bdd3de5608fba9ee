"""Documentation and logging conventions: numpydoc docstrings, the API page, loggers and handlers."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import anndata as ad
import pytest

import scn2s
from scn2s.cli import main
from scn2s.datasets import simulate

DATA_DEPENDENT = re.compile(r"(autoencoder\.)?h\d+-b\d+-d[\d.]+(-noposterior)?(\.(steps|heldout|scoring))?|split_\d+")
TINY_AE = {"hidden": 16, "bottleneck": 4, "max_epochs": 3, "patience": 2}

ROOT = Path(__file__).resolve().parents[1]
MODULES = (scn2s.pp, scn2s.tl, scn2s.pl, scn2s.datasets)
PUBLIC = [getattr(module, name) for module in MODULES for name in module.__all__]
PUBLIC.append(main)
SECTION = re.compile(r"^(\w[\w ]*)\n-{3,}\n", re.MULTILINE)


def _sections(func) -> dict[str, str]:
    doc = inspect.cleandoc(func.__doc__ or "")
    parts = SECTION.split(doc)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


@pytest.mark.parametrize("func", PUBLIC, ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_public_functions_have_numpydoc_parameters_and_returns(func):
    sections = _sections(func)
    assert {"Parameters", "Returns"} <= set(sections), list(sections)
    assert sections["Returns"].strip()
    documented = set()
    for line in sections["Parameters"].splitlines():
        if line and not line.startswith(" "):
            documented |= {name.strip() for name in line.split(",")}
    assert documented == set(inspect.signature(func).parameters)


def _keys(value, parent: str | None = None) -> set[str]:
    """Keys of nested dicts, less records of the arguments and the family names under ``selection``."""
    if not isinstance(value, dict):
        return set()
    keys = set()
    for key, item in value.items():
        if key in {"params", "simulation"}:
            continue
        if parent != "selection":
            keys.add(key)
        keys |= _keys(item, key)
    return keys


def _written(before: ad.AnnData, after: ad.AnnData) -> set[str]:
    fields = set()
    for attr in ("layers", "obsm", "varm", "obsp", "uns"):
        new = set(getattr(after, attr)) - set(getattr(before, attr))
        fields |= new
        if attr == "uns":
            fields |= _keys({key: after.uns[key] for key in new})
    fields |= set(after.obs.columns) - set(before.obs.columns)
    fields |= set(after.var.columns) - set(before.var.columns)
    if before.X is None and after.X is not None:
        fields.add("X")
    return fields


def _calls():
    small = simulate(80, 30, rng=0)
    yield (
        scn2s.pp.denoise,
        lambda: scn2s.pp.denoise(
            small, lowrank_kwds={"max_rank": 5}, autoencoder_kwds={"configs": [TINY_AE]}, progress=False, copy=True
        ),
        small,
    )
    yield (
        scn2s.pp.denoise,
        lambda: scn2s.pp.denoise(
            small, method="lowrank", lowrank_kwds={"max_rank": 5}, output="factors", progress=False, copy=True
        ),
        small,
    )
    yield scn2s.pp.split_counts, lambda: scn2s.pp.split_counts(small, copy=True), small
    yield scn2s.datasets.simulate, lambda: simulate(40, 20, rng=0), ad.AnnData()


@pytest.mark.parametrize(
    ("func", "call", "before"), list(_calls()), ids=["denoise", "denoise factors", "split_counts", "simulate"]
)
def test_returns_section_names_every_field_written(func, call, before):
    """Every field written is named in the Returns section or, for the record's entries, the user guide it points to."""
    returns = _sections(func)["Returns"]
    if "docs/usage.rst" in (func.__doc__ or ""):
        returns += (ROOT / "docs" / "usage.rst").read_text()
    after = call()
    key_added = inspect.signature(func).parameters.get("key_added")
    default = () if key_added is None else key_added.default
    named_by_key_added = {default} if isinstance(default, str) else set(default)
    missing = []
    for field in sorted(_written(before, after)):
        if DATA_DEPENDENT.fullmatch(field):  # keys named after the candidates and splits of this run
            continue
        if field in named_by_key_added and "key_added" in returns:
            continue
        # fields named after key_added, documented as f"X_{key_added}" and the like
        if any(key in field and field.replace(key, "{key_added}") in returns for key in named_by_key_added):
            continue
        if f"``{field}``" not in returns and f'["{field}"]' not in returns:
            missing.append(field)
    assert not missing, f"{func.__name__}'s Returns section does not name {missing}"


def test_the_api_page_lists_every_public_function():
    api = (ROOT / "docs" / "api.rst").read_text()
    for module in MODULES:
        short = module.__name__.removeprefix("scn2s.")
        for name in module.__all__:
            assert f"   {short}.{name}\n" in api, f"{short}.{name} missing from docs/api.rst"


def _modules() -> list[Path]:
    return sorted((ROOT / "scn2s").rglob("*.py"))


CLI_MAIN = ROOT / "scn2s" / "cli" / "_main.py"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_log_through_their_own_logger(path):
    """Loggers are ``logging.getLogger(__name__)``; handlers belong to the command line; no root-logger calls."""
    tree = ast.parse(path.read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)]
    names, uses_logger = [], False
    for call in calls:
        owner, attr = call.func.value, call.func.attr
        on_logging = isinstance(owner, ast.Name) and owner.id == "logging"
        uses_logger |= isinstance(owner, ast.Name) and owner.id == "logger"
        if on_logging and attr == "getLogger":
            names.append(ast.unparse(call.args[0]) if call.args else "root")
        elif on_logging or attr in {"addHandler", "basicConfig"}:
            assert path == CLI_MAIN, f"{ast.unparse(call.func)}() outside the command line, in {path.name}"
            assert attr in {"StreamHandler", "Formatter", "addHandler"}, ast.unparse(call.func)
    if path == CLI_MAIN:
        names.remove("'scn2s'")  # the package logger, which the command line gives a handler while it runs
    assert set(names) <= {"__name__"}, names
    assert not uses_logger or names == ["__name__"]


def test_the_readme_table_of_outputs_names_every_record_key():
    readme = (ROOT / "README.md").read_text()
    small = simulate(80, 30, rng=0)
    keys = set()
    for kwargs in ({"autoencoder_kwds": {"configs": [TINY_AE]}}, {"method": "lowrank", "output": "factors"}):
        fitted = scn2s.pp.denoise(small, lowrank_kwds={"max_rank": 5}, progress=False, copy=True, **kwargs)
        keys |= set(fitted.uns["denoised"])
    missing = [
        key for key in sorted(keys) if f'`adata.uns["denoised"]["{key}"]' not in readme and f'`["{key}"]`' not in readme
    ]
    assert not missing, f"README's table of outputs lacks {missing}"


def _readme_block(language: str, containing: str) -> str:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(rf"```{language}\n(.*?)```", readme, flags=re.DOTALL)
    (block,) = [block for block in blocks if containing in block]
    return block


@pytest.mark.data
def test_the_readme_command_line_example_with_a_layer_runs_as_written(data_file, tmp_path, monkeypatch, capsys):
    """The README's preparation in scanpy, then its ``--layer counts --genes highly_variable`` command."""
    import shlex

    data = data_file("pbmc3k_10x_hg19.h5ad").parent
    monkeypatch.chdir(tmp_path)
    prepare = _readme_block("python", "pbmc3k_prepared.h5ad").replace("../shared/data/", f"{data}/")
    exec(compile(prepare, "README.md", "exec"), {})
    (command,) = [line for line in _readme_block("bash", "--layer counts").splitlines() if line.strip()]
    argv = shlex.split(command)
    assert argv[0] == "scn2s"
    assert main(["-q", *argv[1:]]) == 0
    out = capsys.readouterr().out
    assert "counts in adata.layers['counts'], modelled: genes in var['highly_variable']" in out
    assert "written: lowrank, rank" in out
