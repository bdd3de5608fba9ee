"""The same rng gives the same answer, bit for bit; the seed and the versions are recorded."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scn2s
from scn2s.datasets import simulate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small() -> ad.AnnData:
    return simulate(150, 60, n_types=3, rank=2, depth=500, rng=8)


def _denoise(adata, **kwargs):
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 8}, progress=False, **kwargs)
    return adata


def _without_timing(record: dict) -> dict:
    return {key: value for key, value in record.items() if key not in {"elapsed_seconds", "timings"}}


def _assert_records_equal(a, b):
    if isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            _assert_records_equal(a[key], b[key])
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    else:
        assert a == b or (a != a and b != b)  # NaN equals NaN here


@pytest.mark.parametrize("kind", ["dense", "csr", "csc"])
@pytest.mark.parametrize("seed", [0, 12345])
def test_same_seed_gives_bit_identical_output_and_record(small, kind, seed):
    convert = {"dense": lambda X: X.toarray(), "csr": sparse.csr_matrix, "csc": sparse.csc_matrix}[kind]
    a, b = small.copy(), small.copy()
    a.X = b.X = convert(small.X)
    _denoise(a, rng=seed)
    _denoise(b, rng=seed)
    assert a.layers["denoised"].tobytes() == b.layers["denoised"].tobytes()
    _assert_records_equal(_without_timing(a.uns["denoised"]), _without_timing(b.uns["denoised"]))


def test_fresh_generators_with_the_same_seed_agree_and_a_used_one_moves_on(small):
    a = _denoise(small.copy(), rng=np.random.default_rng(5))
    b = _denoise(small.copy(), rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a.layers["denoised"], b.layers["denoised"])
    generator = np.random.default_rng(5)
    first = _denoise(small.copy(), rng=generator)
    second = _denoise(small.copy(), rng=generator)  # the generator was advanced by the first call
    np.testing.assert_array_equal(first.layers["denoised"], a.layers["denoised"])
    losses = [x.uns["denoised"]["selection"]["lowrank"]["loss_per_split"] for x in (first, second)]
    assert not np.array_equal(*losses)


def test_different_seeds_give_different_splits(small):
    a = _denoise(small.copy(), rng=1)
    b = _denoise(small.copy(), rng=2)
    losses = [x.uns["denoised"]["selection"]["lowrank"]["loss_per_split"] for x in (a, b)]
    assert not np.array_equal(*losses)
    halves = []
    for seed in (1, 2):
        adata = small.copy()
        scn2s.pp.split_counts(adata, rng=seed)
        halves.append(adata.layers["counts_a"])
    assert (halves[0] != halves[1]).nnz > 0.1 * small.X.nnz


@pytest.mark.parametrize("kind", ["dense", "csr", "csc"])
def test_split_counts_is_reproducible(small, kind):
    convert = {"dense": lambda X: X.toarray(), "csr": sparse.csr_matrix, "csc": sparse.csc_matrix}[kind]
    out = []
    for _ in range(2):
        adata = small.copy()
        adata.X = convert(small.X)
        scn2s.pp.split_counts(adata, p=0.3, rng=4)
        out.append(adata)
    for key in ("counts_a", "counts_b"):
        a, b = (x.layers[key] for x in out)
        if sparse.issparse(a):
            assert (a != b).nnz == 0
        else:
            np.testing.assert_array_equal(a, b)


def test_output_does_not_depend_on_the_storage(small):
    outputs = []
    for convert in (lambda X: X.toarray(), sparse.csr_matrix, sparse.csc_matrix, sparse.csr_array):
        adata = small.copy()
        adata.X = convert(small.X)
        outputs.append(_denoise(adata, rng=3).layers["denoised"])
    for out in outputs[1:]:
        assert out.tobytes() == outputs[0].tobytes()


def test_seed_and_versions_are_recorded(small, tmp_path):
    adata = _denoise(small.copy(), rng=77)
    scn2s.pp.split_counts(adata, rng=78)
    expected = {
        "python": platform.python_version(),
        "scn2s": scn2s.__version__,
        "numpy": np.__version__,
        "scipy": version("scipy"),
        "anndata": version("anndata"),
    }
    record = adata.uns["denoised"]
    assert record["params"]["seed"] == 77
    assert record["selection"]["lowrank"]["seed"] == 77
    assert record["versions"] == expected
    assert record["version"] == scn2s.__version__
    assert adata.uns["split_counts"]["params"]["seed"] == 78
    assert adata.uns["split_counts"]["versions"] == expected
    path = tmp_path / "out.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert back.uns["denoised"]["versions"] == expected
    assert back.uns["denoised"]["params"]["seed"] == 77


_RUN = """
import hashlib, scn2s
adata = scn2s.datasets.simulate(120, 50, rng=1)
scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 6}, rng=9, progress=False)
print(hashlib.sha256(adata.layers["denoised"].tobytes()).hexdigest())
"""


def test_fresh_processes_agree():
    """No hidden state: two interpreters with different hash seeds write the same bytes."""
    digests = set()
    for hash_seed in ("1", "2"):
        env = os.environ | {"PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            [sys.executable, "-c", _RUN], env=env, cwd=ROOT, capture_output=True, text=True, check=True
        )
        digests.add(result.stdout.strip())
    adata = simulate(120, 50, rng=1)
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 6}, rng=9, progress=False)
    digests.add(hashlib.sha256(adata.layers["denoised"].tobytes()).hexdigest())
    assert len(digests) == 1
