from __future__ import annotations

import hashlib

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scn2s
from scn2s.datasets import simulate


@pytest.fixture(scope="module")
def small():
    return simulate(300, 120, n_types=3, rank=2, depth=800, rng=5)


def _digest(X) -> str:
    h = hashlib.sha256()
    if sparse.issparse(X):
        for part in (X.data, X.indices, X.indptr):
            h.update(np.ascontiguousarray(part).tobytes())
    else:
        h.update(np.ascontiguousarray(X).tobytes())
    return h.hexdigest()


def test_writes_layer_and_record(small):
    adata = small.copy()
    result = scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 15}, progress=False)
    assert result is None
    out = adata.layers["denoised"]
    assert out.shape == adata.shape
    assert out.dtype == np.float32
    assert np.all(out >= 0)
    np.testing.assert_allclose(out.sum(axis=1), np.asarray(adata.X.sum(axis=1)).ravel(), rtol=1e-4)
    record = adata.uns["denoised"]
    assert record["method"] == "lowrank"
    assert record["version"] == scn2s.__version__
    assert record["elapsed_seconds"] > 0
    assert record["params"]["p"] == 0.5
    assert record["params"]["seed"] == 0
    selection = record["selection"]["lowrank"]
    np.testing.assert_array_equal(selection["grid"]["rank"], np.arange(16))
    assert selection["loss_mean"].shape == selection["loss_std"].shape == (16,)
    assert selection["loss_per_split"].shape == (3, 16)
    assert record["best_params"]["rank"] == selection["rank"]
    assert selection["split_rank"] == int(np.argmin(selection["loss_mean"]))


def test_denoising_beats_raw_counts_against_the_truth(small):
    adata = small.copy()
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 15}, progress=False)
    truth = adata.layers["rates"]
    raw_error = np.mean((np.sqrt(adata.X.toarray()) - np.sqrt(truth)) ** 2)
    denoised_error = np.mean((np.sqrt(adata.layers["denoised"]) - np.sqrt(truth)) ** 2)
    assert denoised_error < 0.5 * raw_error


def test_record_survives_h5ad_round_trip(small, tmp_path):
    adata = small.copy()
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 10}, progress=False)
    path = tmp_path / "out.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.layers["denoised"], adata.layers["denoised"])
    np.testing.assert_array_equal(
        back.uns["denoised"]["selection"]["lowrank"]["loss_mean"],
        adata.uns["denoised"]["selection"]["lowrank"]["loss_mean"],
    )


def test_copy_returns_new_object_and_leaves_input_untouched(small):
    adata = small.copy()
    digest = _digest(adata.X)
    out = scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 10}, copy=True, progress=False)
    assert isinstance(out, ad.AnnData)
    assert "denoised" in out.layers
    assert "denoised" not in adata.layers
    assert "denoised" not in adata.uns
    assert _digest(adata.X) == digest


def test_counts_not_mutated_in_place(small):
    adata = small.copy()
    digest = _digest(adata.X)
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 10}, progress=False)
    assert _digest(adata.X) == digest


def test_same_seed_is_bit_identical_and_seeds_differ(small):
    a, b, c = small.copy(), small.copy(), small.copy()
    for adata, seed in ((a, 3), (b, 3), (c, 4)):
        scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 10}, rng=seed, progress=False)
    np.testing.assert_array_equal(a.layers["denoised"], b.layers["denoised"])
    assert not np.array_equal(
        a.uns["denoised"]["selection"]["lowrank"]["loss_per_split"],
        c.uns["denoised"]["selection"]["lowrank"]["loss_per_split"],
    )


def test_generator_seed_is_recorded(small):
    adata = small.copy()
    scn2s.pp.denoise(
        adata, method="lowrank", lowrank_kwds={"max_rank": 5}, rng=np.random.default_rng(9), progress=False
    )
    # the integer drawn from the generator, which seeds the run
    assert adata.uns["denoised"]["params"]["seed"] == int(np.random.default_rng(9).integers(2**63))


@pytest.mark.parametrize("kind", ["dense", "csr", "csc"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
def test_array_types_give_the_same_output(small, kind, dtype):
    convert = {"dense": lambda m: m.toarray(), "csr": sparse.csr_matrix, "csc": sparse.csc_matrix}[kind]
    reference = small.copy()
    scn2s.pp.denoise(reference, method="lowrank", lowrank_kwds={"max_rank": 10}, progress=False)
    adata = small.copy()
    adata.X = convert(small.X.astype(dtype))
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 10}, progress=False)
    np.testing.assert_array_equal(adata.layers["denoised"], reference.layers["denoised"])


def test_layer_and_key_added(small):
    adata = small.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = sparse.csr_matrix(np.log1p(adata.X.toarray()))
    scn2s.pp.denoise(
        adata, method="lowrank", layer="counts", key_added="smooth", lowrank_kwds={"max_rank": 10}, progress=False
    )
    assert "smooth" in adata.layers
    assert adata.uns["smooth"]["params"]["layer"] == "counts"


def test_fixed_rank(small):
    adata = small.copy()
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"rank": 4}, progress=False)
    assert adata.uns["denoised"]["best_params"]["rank"] == 4
    assert "loss_mean" not in adata.uns["denoised"]["selection"]["lowrank"]


def test_mask_var_models_selected_genes_and_keeps_the_rest(small):
    adata = small.copy()
    mask = np.zeros(adata.n_vars, dtype=bool)
    mask[:60] = True
    adata.var["highly_variable"] = mask
    scn2s.pp.denoise(adata, method="lowrank", mask_var="highly_variable", lowrank_kwds={"max_rank": 10}, progress=False)
    out = adata.layers["denoised"]
    raw = adata.X.toarray()
    np.testing.assert_array_equal(out[:, 60:], raw[:, 60:])
    np.testing.assert_allclose(out[:, :60].sum(axis=1), raw[:, :60].sum(axis=1), rtol=1e-4)
    assert adata.uns["denoised"]["params"]["mask_var"] == "highly_variable"
    # same as denoising the subset alone
    subset = small[:, :60].copy()
    scn2s.pp.denoise(subset, method="lowrank", lowrank_kwds={"max_rank": 10}, progress=False)
    np.testing.assert_allclose(out[:, :60], subset.layers["denoised"], rtol=1e-5)


def test_all_zero_genes_and_cells_stay_zero():
    adata = simulate(200, 50, rng=1)
    X = adata.X.toarray()
    X[:, [3, 17]] = 0
    X[[5, 9]] = 0
    adata.X = sparse.csr_matrix(X)
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 8}, progress=False)
    out = adata.layers["denoised"]
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[:, [3, 17]], 0)
    np.testing.assert_array_equal(out[[5, 9]], 0)


def test_view_input(small):
    view = small[:150]
    out = scn2s.pp.denoise(view, method="lowrank", lowrank_kwds={"max_rank": 8}, copy=True, progress=False)
    assert out.layers["denoised"].shape == (150, small.n_vars)


def test_unknown_method(small):
    with pytest.raises(ValueError, match="method must be one of"):
        scn2s.pp.denoise(small.copy(), method="magic", progress=False)


def test_missing_layer_lists_available(small):
    adata = small.copy()
    with pytest.raises(KeyError, match=r"Layer 'counts' not found in adata.layers \(available: 'rates'\)"):
        scn2s.pp.denoise(adata, layer="counts", progress=False)


def test_normalised_input_is_refused(small):
    adata = small.copy()
    adata.X = sparse.csr_matrix(np.log1p(adata.X.toarray()))
    with pytest.raises(ValueError, match=r'adata.X holds non-integer values.*layer="counts"'):
        scn2s.pp.denoise(adata, progress=False)


def test_split_counts_writes_two_layers(small):
    adata = small.copy()
    digest = _digest(adata.X)
    scn2s.pp.split_counts(adata, p=0.4, rng=1)
    a, b = adata.layers["counts_a"], adata.layers["counts_b"]
    assert sparse.issparse(a)
    assert (a + b != adata.X).nnz == 0
    assert adata.uns["split_counts"]["params"]["p"] == 0.4
    assert _digest(adata.X) == digest
    copy = scn2s.pp.split_counts(small, key_added=("x", "y"), copy=True)
    assert {"x", "y"} <= set(copy.layers)
    assert "x" not in small.layers


def _with_duplicates(X: sparse.csr_matrix) -> sparse.csr_matrix:
    """The same counts with every stored entry split into two duplicate entries (unsorted)."""
    X = sparse.csr_matrix(X)
    first = X.data // 2
    data = np.empty(2 * X.nnz, dtype=X.data.dtype)
    indices = np.empty(2 * X.nnz, dtype=X.indices.dtype)
    data[0::2], data[1::2] = X.data - first, first
    indices[0::2] = indices[1::2] = X.indices
    out = sparse.csr_matrix((data, indices, 2 * X.indptr), shape=X.shape)
    assert not out.has_canonical_format
    return out


def test_duplicate_entries_count_as_their_sum(small):
    """Regression: a CSR matrix with duplicate entries was square-rooted entry by entry."""
    reference = small.copy()
    scn2s.pp.denoise(reference, method="lowrank", lowrank_kwds={"max_rank": 10}, progress=False)
    adata = small.copy()
    adata.X = _with_duplicates(small.X)
    digest = _digest(adata.X)
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 10}, progress=False)
    np.testing.assert_array_equal(adata.layers["denoised"], reference.layers["denoised"])
    assert _digest(adata.X) == digest
