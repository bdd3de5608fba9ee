"""Seeded runs of ``denoise`` write the same bytes as the recorded ones.

Each case runs ``scn2s.pp.denoise`` on small simulated counts with a fixed seed and hashes what it wrote: the
layer (or the factors of ``output="factors"``) and the record in ``uns``, without the entries that depend on the
clock or the installed versions (``elapsed_seconds``, ``timings``, ``version``, ``versions``). The hashes in
``golden.json`` were recorded at the last deliberate change of output (the autoencoder's network for the full
counts continued from the split's, and its fused optimiser), so any other change of an output or record entry, of
its dtype or of its type, fails here.

Floating-point results depend on the platform (the CPU's vector instructions, the BLAS and torch builds and their
thread counts), so the hashes are compared only where ``golden.json`` was recorded: the same machine type, CPU
model, core count, torch's thread count and versions of Python, numpy, scipy, anndata, torch and dask. ``golden.json``
holds one set of hashes per platform; elsewhere the test skips and says so. After a deliberate change of output,
record again with ``python tests/test_golden.py`` (which drops the other platforms' hashes, now stale) and say why
in the commit. ``python tests/test_golden.py --add`` records this platform beside the others, for a checkout whose
output has not changed since they were recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from scipy import sparse

import scn2s
from scn2s.datasets import simulate

GOLDEN = Path(__file__).with_name("golden.json")
UNSTABLE = {"elapsed_seconds", "timings", "version", "versions"}
TINY = {"hidden": 16, "bottleneck": 4, "dropout": 0.0, "max_epochs": 3, "patience": 2, "batch_size": 64}


def _fingerprint() -> dict:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    names = ("numpy", "scipy", "anndata", "torch", "dask")
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),  # reductions are summed in another order with other thread counts
        **{name: version(name) for name in names},
    }


def _counts(kind: str = "csr", n_cells: int = 160, n_genes: int = 40, rng: int = 11) -> ad.AnnData:
    adata = simulate(n_cells, n_genes, n_types=3, rank=3, depth=400, rng=rng)
    del adata.layers["rates"]
    adata.X = {"csr": sparse.csr_matrix, "csc": sparse.csc_matrix, "dense": np.asarray}[kind](
        adata.X.toarray() if kind == "dense" else adata.X
    )
    adata.var["highly_variable"] = np.arange(adata.n_vars) % 4 != 0
    return adata


def _lowrank(kind: str = "csr", lowrank_kwds: dict | None = None, **kwargs):
    lowrank_kwds = {"max_rank": 8, **(lowrank_kwds or {})}
    return _counts(kind), {"method": "lowrank", "lowrank_kwds": lowrank_kwds, "n_splits": 2, **kwargs}


def _autoencoder(method: str, autoencoder_splits: int = 1, **kwargs):
    configs = [TINY] if method == "auto" else [TINY, {**TINY, "bottleneck": 2, "posterior": False, "input_range": None}]
    adata = _counts(n_cells=120)
    autoencoder_kwds = {"configs": configs, "n_splits": autoencoder_splits}
    lowrank_kwds = {"max_rank": 6}  # recorded in params even when the low-rank family does not run
    return adata, {
        "method": method,
        "autoencoder_kwds": autoencoder_kwds,
        "lowrank_kwds": lowrank_kwds,
        "n_splits": 2,
        **kwargs,
    }


def _backed(tmp_path: Path, method: str):
    path = tmp_path / "counts.h5ad"
    _counts().write_h5ad(path)
    adata = ad.read_h5ad(path, backed="r")
    kwargs = {"method": method, "lowrank_kwds": {"max_rank": 6}, "n_splits": 2, "mask_var": "highly_variable"}
    if method != "lowrank":
        kwargs["autoencoder_kwds"] = {"configs": [TINY]}
    return adata, kwargs


def _dask(output: str):
    da = pytest.importorskip("dask.array")
    adata = _counts()
    adata.X = da.from_array(adata.X, chunks=(50, 40), asarray=False)
    return adata, {"method": "lowrank", "lowrank_kwds": {"max_rank": 8}, "n_splits": 2, "output": output}


CASES = {
    "lowrank-csr": lambda tmp: _lowrank(),
    "lowrank-dense-mask": lambda tmp: _lowrank(kind="dense", mask_var="highly_variable", p=0.4),
    "lowrank-csc-sample-ratio": lambda tmp: _lowrank("csc", {"depth_correction": False}, sample_ratio=0.5),
    "lowrank-fixed-rank": lambda tmp: _lowrank(lowrank_kwds={"rank": 3}, n_splits=1),
    "lowrank-factors": lambda tmp: _lowrank(output="factors", mask_var="highly_variable"),
    "autoencoder": lambda tmp: _autoencoder("autoencoder", autoencoder_splits=2),
    "auto": lambda tmp: _autoencoder("auto", mask_var="highly_variable"),
    "backed-lowrank": lambda tmp: _backed(tmp, "lowrank"),
    "backed-auto": lambda tmp: _backed(tmp, "auto"),
    "dask-layer": lambda tmp: _dask("layer"),
    "dask-factors": lambda tmp: _dask("factors"),
}


def _update(digest, value) -> None:
    """Feed ``value`` to ``digest`` with its type, shape and dtype, dicts in key order."""
    if isinstance(value, dict):
        digest.update(f"dict{len(value)}(".encode())
        for key in sorted(value):
            digest.update(f"{key!r}:".encode())
            _update(digest, value[key])
        digest.update(b")")
    elif isinstance(value, list | tuple):
        digest.update(f"{type(value).__name__}{len(value)}(".encode())
        for item in value:
            _update(digest, item)
        digest.update(b")")
    elif hasattr(value, "compute"):  # a lazy dask array
        _update(digest, value.compute())
    elif sparse.issparse(value):
        _update(digest, {"format": value.format, "shape": value.shape, "dense": value.toarray()})
    elif isinstance(value, np.ndarray):
        if value.dtype == object:
            digest.update(f"object{value.shape}".encode())
            for item in value.ravel():
                _update(digest, item)
        else:
            digest.update(f"{value.dtype.str}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
    elif hasattr(value, "to_numpy"):  # a pandas column
        _update(digest, {"name": str(value.name), "values": value.to_numpy()})
    else:
        digest.update(f"{type(value).__name__}:{value!r};".encode())


def _hashes(adata: ad.AnnData, key: str = "denoised") -> dict[str, str]:
    """One hash per thing ``denoise`` wrote under ``key``, and one for its record."""
    written = {
        f"layers/{key}": adata.layers[key] if key in adata.layers else None,
        f"obsm/X_{key}": adata.obsm.get(f"X_{key}"),
        f"varm/{key}_loadings": adata.varm.get(f"{key}_loadings"),
        **{f"obs/{c}": adata.obs[c] for c in adata.obs.columns if c.startswith(f"{key}_")},
        **{f"var/{c}": adata.var[c] for c in adata.var.columns if c.startswith(f"{key}_")},
        "record": {k: v for k, v in adata.uns[key].items() if k not in UNSTABLE},
    }
    out = {}
    for name, value in written.items():
        if value is not None:
            digest = hashlib.sha256()
            _update(digest, value)
            out[name] = digest.hexdigest()
    return out


def _run(name: str, tmp_path: Path) -> dict[str, str]:
    import dask

    adata, kwargs = CASES[name](tmp_path)
    with dask.config.set(scheduler="synchronous"):
        scn2s.pp.denoise(adata, rng=7, progress=False, **kwargs)
        return _hashes(adata)


@pytest.fixture(scope="module")
def golden() -> dict:
    platforms = json.loads(GOLDEN.read_text())["platforms"]
    here = _fingerprint()
    for recorded in platforms:
        if recorded["fingerprint"] == here:
            return recorded["cases"]
    differ = sorted({k for recorded in platforms for k in here if recorded["fingerprint"].get(k) != here[k]})
    pytest.skip(f"golden hashes were recorded on other platforms (differs in {differ}); they hold only there")


def test_every_case_is_recorded(golden):
    assert set(golden) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_seeded_output_and_record_are_unchanged(golden, name, tmp_path):
    assert _run(name, tmp_path) == golden[name]


def test_recording_keeps_other_platforms_only_when_adding():
    intel, amd = {"cpu": "Intel"}, {"cpu": "AMD"}
    platforms = [{"fingerprint": intel, "cases": {"a": "1"}}, {"fingerprint": amd, "cases": {"a": "2"}}]
    added = _recorded(platforms, amd, {"a": "3"}, add=True)
    assert added == [{"fingerprint": intel, "cases": {"a": "1"}}, {"fingerprint": amd, "cases": {"a": "3"}}]
    assert _recorded(platforms, amd, {"a": "3"}, add=False) == [{"fingerprint": amd, "cases": {"a": "3"}}]


def _recorded(platforms: list[dict], here: dict, cases: dict, *, add: bool) -> list[dict]:
    """The platforms' records with this one's ``cases``: beside the others' (``add``), or alone."""
    others = [p for p in platforms if p["fingerprint"] != here] if add else []
    return [*others, {"fingerprint": here, "cases": cases}]


if __name__ == "__main__":  # record: python tests/test_golden.py [--add]
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="Record the golden hashes of this platform.")
    parser.add_argument("--add", action="store_true", help="keep the other platforms' hashes (output unchanged)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = {}
        for name in sorted(CASES):
            (Path(tmp) / name).mkdir()
            cases[name] = _run(name, Path(tmp) / name)
    platforms = json.loads(GOLDEN.read_text())["platforms"] if GOLDEN.exists() else []
    platforms = _recorded(platforms, _fingerprint(), cases, add=args.add)
    GOLDEN.write_text(json.dumps({"platforms": platforms}, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(cases)} cases in {GOLDEN} ({len(platforms)} platforms)", file=sys.stderr)
