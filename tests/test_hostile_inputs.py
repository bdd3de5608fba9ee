"""Seeds, float counts beyond float precision, autoencoder settings and messages, as a hostile user tries them."""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scn2s
import scn2s.pp._denoise
from scn2s._validate import check_counts
from scn2s.datasets import simulate
from scn2s.split import binomial_split


@pytest.fixture(scope="module")
def base() -> ad.AnnData:
    adata = simulate(50, 20, n_types=2, rank=2, depth=300, rng=3)
    del adata.layers["rates"]
    return adata


def _denoise(adata, **kwargs):
    return scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 3}, progress=False, **kwargs)


# --- seeds ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [2**64, 2**64 + 12345, 10**40])
def test_an_integer_seed_of_any_size_is_recorded_and_written(base, tmp_path, seed):
    adata = base.copy()
    _denoise(adata, rng=seed)
    assert adata.uns["denoised"]["params"]["seed"] == str(seed)
    adata.write_h5ad(tmp_path / "a.h5ad")  # nothing of object dtype
    again = base.copy()
    _denoise(again, rng=int(ad.read_h5ad(tmp_path / "a.h5ad").uns["denoised"]["params"]["seed"]))
    np.testing.assert_array_equal(again.layers["denoised"], adata.layers["denoised"])


@pytest.mark.parametrize(
    "make", [np.random.default_rng, np.random.RandomState, lambda seed: None], ids=["Generator", "RandomState", "None"]
)
def test_generators_and_none_record_the_integer_that_repeats_the_run(base, tmp_path, make):
    generator = make(7)
    records = []
    for _ in range(2):  # a generator reused: two runs that differ, and records that tell them apart
        adata = base.copy()
        _denoise(adata, rng=generator)
        seed = adata.uns["denoised"]["params"]["seed"]
        assert isinstance(seed, int)
        assert "0x" not in repr(adata.uns["denoised"])  # no memory address
        adata.write_h5ad(tmp_path / "a.h5ad")
        again = base.copy()
        _denoise(again, rng=seed)
        np.testing.assert_array_equal(again.layers["denoised"], adata.layers["denoised"])
        records.append(seed)
    assert records[0] != records[1]


def test_split_counts_takes_a_random_state_and_records_the_seed(base):
    a, b = base.copy(), base.copy()
    scn2s.pp.split_counts(a, rng=np.random.RandomState(0))
    scn2s.pp.split_counts(b, rng=a.uns["split_counts"]["params"]["seed"])
    assert (a.layers["counts_a"] != b.layers["counts_a"]).nnz == 0


@pytest.mark.parametrize("rng", [-1, 1.5, "0", True, np.random.SeedSequence(0)])
def test_other_seeds_are_refused_before_any_work(base, monkeypatch, rng):
    monkeypatch.setattr(scn2s.lowrank, "select", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match=r"^rng must be a non-negative integer seed, a numpy.random.Generator"):
        _denoise(base.copy(), rng=rng)


@pytest.mark.parametrize("rng", [0, 2**70, None, np.random.default_rng(0), np.random.RandomState(0)])
def test_binomial_split_takes_any_seed(rng):
    X = sparse.random(30, 20, density=0.3, format="csr", random_state=1, data_rvs=lambda n: np.arange(1, n + 1))
    a, b = binomial_split(X, 0.5, rng=rng)
    assert ((a + b) != X).nnz == 0


def test_binomial_split_with_an_integer_seed_repeats():
    X = np.arange(200).reshape(20, 10)
    for first, second in zip(binomial_split(X, 0.3, rng=5), binomial_split(X, 0.3, rng=5), strict=True):
        np.testing.assert_array_equal(first, second)


# --- float counts beyond float precision --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "low", "kind"),
    [
        (np.float32, 2**24, "dense"),
        (np.float32, 2**24, "csr"),
        (np.float16, 2048, "dense"),  # scipy.sparse holds no float16
        (np.float64, 2**52, "dense"),
        (np.float64, 2**52, "csr"),
    ],
)
@pytest.mark.parametrize("sample_ratio", [None, 0.5])
def test_halves_of_float_counts_above_float_precision_are_exact(dtype, low, kind, sample_ratio):
    rng = np.random.default_rng(0)
    # even values above the limit (which the dtype holds), whose halves are mostly odd (which it may not)
    values = np.asarray(low + 2 * rng.integers(1, 200, 400), dtype=dtype)
    assert np.all(values.astype(np.int64) > low)
    X = values.reshape(20, 20) if kind == "dense" else sparse.csr_matrix(values.reshape(20, 20))
    a, b = binomial_split(X, 0.5, rng=1, sample_ratio=sample_ratio)
    if dtype is not np.float64:
        assert a.dtype == b.dtype == np.int64
    dense = [np.asarray(h.toarray() if sparse.issparse(h) else h).astype(np.int64) for h in (a, b)]
    exact = values.reshape(20, 20).astype(np.int64)
    if sample_ratio is None:
        np.testing.assert_array_equal(dense[0] + dense[1], exact)
    else:  # the halves share molecules: each is at most X, and they cover it
        assert np.all(dense[0] <= exact)
        assert np.all(dense[1] <= exact)
        assert np.all(dense[0] + dense[1] >= exact)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_float_counts_within_precision_keep_their_dtype(dtype):
    X = np.array([[2048, 1, 0], [3, 0, 7]], dtype=dtype)
    a, b = binomial_split(X, 0.5, rng=0)
    assert a.dtype == b.dtype == dtype
    np.testing.assert_array_equal(a + b, X)


def test_split_counts_of_large_float32_counts_sum_to_the_counts(base):
    adata = base.copy()
    adata.X = (sparse.csr_matrix(adata.X, dtype=np.float32) * 2**20).astype(np.float32)
    scn2s.pp.split_counts(adata)
    total = adata.layers["counts_a"].astype(np.int64) + adata.layers["counts_b"].astype(np.int64)
    assert (total != adata.X.astype(np.int64)).nnz == 0


# --- autoencoder settings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("hidden", 0),
        ("hidden", (16,)),
        ("hidden", 2.5),
        ("bottleneck", 0),
        ("max_epochs", 0),
        ("patience", 0),
        ("batch_size", 0),
        ("n_replicas", 0),
        ("likelihood", "gauss"),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("learning_rate", 0),
        ("learning_rate", float("nan")),
        ("weight_decay", -1.0),
        ("input_fraction", 1.0),
        ("posterior", "yes"),
        ("input_range", (0.5,)),
    ],
)
def test_autoencoder_settings_are_refused_by_name_before_any_work(base, monkeypatch, setting, value):
    from scn2s.autoencoder.train import TrainConfig

    with pytest.raises(
        ValueError, match=rf"^(autoencoder setting )?{setting} must be .*, got {re.escape(repr(value))}"
    ):
        TrainConfig(**{setting: value})
    monkeypatch.setattr(scn2s.lowrank, "select", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match=rf"{setting} must be"):
        scn2s.pp.denoise(base.copy(), method="auto", autoencoder_kwds={"configs": [{setting: value}]}, progress=False)


# --- messages -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "shown"), [(3.0000001, "3.0000001"), (1 + 2**-40, repr(1 + 2**-40)), (0.5, "0.5")])
def test_a_non_integer_count_is_shown_with_all_its_digits(value, shown):
    X = np.array([[1.0, value], [2.0, 0.0]])
    with pytest.raises(ValueError, match=rf"non-integer values \(e\.g\. {re.escape(shown)}\)"):
        check_counts(X, "adata.X")
