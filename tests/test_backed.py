"""Counts read block by block: an AnnData opened with backed="r" gives what the same data in memory gives."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scn2s
from scn2s import _blocks
from scn2s._blocks import RowBlocks, block_slices
from scn2s.select import Splits


def _denoise(adata, **kwargs):
    scn2s.pp.denoise(
        adata, **{"method": "lowrank", "lowrank_kwds": {"max_rank": 8}, "progress": False, "rng": 3, **kwargs}
    )
    return adata


def _compare(backed: ad.AnnData, memory: ad.AnnData, key: str = "denoised") -> None:
    np.testing.assert_array_equal(backed.layers[key], memory.layers[key])
    a, b = backed.uns[key]["selection"]["lowrank"], memory.uns[key]["selection"]["lowrank"]
    assert a["rank"] == b["rank"]
    np.testing.assert_array_equal(a["loss_per_split"], b["loss_per_split"])


def test_block_slices_cover_the_rows_in_order():
    assert block_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert block_slices(4, 4) == [slice(0, 4)]


def test_splits_of_blocks_are_the_splits_of_the_matrix(small_blocks, blocked_counts):
    splits = Splits.draw(np.random.default_rng(0), 2, 0.5)
    whole = splits.get(1, blocked_counts.X)
    blocks = RowBlocks(blocked_counts.X)
    assert len(blocks) == 4
    parts = [splits.get_block(1, b, block) for b, _, block in blocks]
    for half, pieces in zip(whole, zip(*parts, strict=True), strict=True):
        assert (half != sparse.vstack(pieces, format="csr")).nnz == 0
    train, heldout = whole
    assert (train + heldout != blocked_counts.X).nnz == 0


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
@pytest.mark.parametrize("mask", [False, True], ids=["all-genes", "mask_var"])
def test_backed_input_gives_the_in_memory_result(small_blocks, blocked_counts, tmp_path, dense, mask):
    memory = blocked_counts.copy()
    if dense:
        memory.X = memory.X.toarray()
    memory.var["highly_variable"] = np.arange(memory.n_vars) % 3 != 0
    path = tmp_path / "counts.h5ad"
    memory.write_h5ad(path)
    kwargs = {"mask_var": "highly_variable"} if mask else {}
    backed = ad.read_h5ad(path, backed="r")
    try:
        _denoise(backed, **kwargs)
        _compare(backed, _denoise(memory, **kwargs))
        assert set(backed.uns["denoised"]["timings"]) >= {"read", "split", "selection", "fit", "output"}
    finally:
        backed.file.close()


def test_backed_input_is_checked_before_any_work(small_blocks, blocked_counts, tmp_path):
    bad = blocked_counts.copy()
    bad.X = bad.X.astype(np.float32)
    bad.X[200, 3] = 0.5  # in the last block
    path = tmp_path / "bad.h5ad"
    bad.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(ValueError, match=r"adata.X holds non-integer values \(e.g. 0.5\)"):
            _denoise(backed)
        assert "denoised" not in backed.layers
        assert "denoised" not in backed.uns
    finally:
        backed.file.close()


def test_many_blocks_in_memory_match_one_block_factorisation(monkeypatch, blocked_counts):
    """The blocked products of the SVD equal the whole-matrix products: same rank, close losses."""
    one = _denoise(blocked_counts.copy())
    monkeypatch.setattr(_blocks, "BLOCK_ROWS", 70)
    many = _denoise(blocked_counts.copy())
    a, b = one.uns["denoised"]["selection"]["lowrank"], many.uns["denoised"]["selection"]["lowrank"]
    # the splits are drawn per block, so they differ; both must find the structure of the same data
    assert abs(a["rank"] - b["rank"]) <= 1
    np.testing.assert_allclose(one.layers["denoised"], many.layers["denoised"], rtol=0.05, atol=0.05)


def test_backed_input_with_factors_reconstructs_the_in_memory_layer(small_blocks, blocked_counts, tmp_path):
    memory = blocked_counts.copy()
    memory.var["highly_variable"] = np.arange(memory.n_vars) % 3 != 0
    path = tmp_path / "counts.h5ad"
    memory.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        _denoise(backed, mask_var="highly_variable", output="factors")
        assert "denoised" not in backed.layers
        _denoise(memory, mask_var="highly_variable")
        values = scn2s.tl.reconstruct(backed, key="denoised")
        np.testing.assert_array_equal(values, memory.layers["denoised"])
    finally:
        backed.file.close()


def test_backed_input_for_the_autoencoder_and_split_counts_is_read_into_memory(blocked_counts, tmp_path):
    path = tmp_path / "counts.h5ad"
    blocked_counts.write_h5ad(path)
    configs = [{"hidden": 16, "bottleneck": 4, "dropout": 0.0, "max_epochs": 3, "batch_size": 64}]
    kwargs = {
        "method": "auto",
        "autoencoder_kwds": {"configs": configs},
        "lowrank_kwds": {"max_rank": 5},
        "n_splits": 1,
    }
    backed = ad.read_h5ad(path, backed="r")
    try:
        _denoise(backed, **kwargs)
        memory = _denoise(blocked_counts.copy(), **kwargs)
        np.testing.assert_array_equal(backed.layers["denoised"], memory.layers["denoised"])
        assert backed.uns["denoised"]["comparison"] == memory.uns["denoised"]["comparison"]
        scn2s.pp.split_counts(backed, rng=4)
        in_memory = blocked_counts.copy()
        scn2s.pp.split_counts(in_memory, rng=4)
        for key in ("counts_a", "counts_b"):
            assert (backed.layers[key] != in_memory.layers[key]).nnz == 0
        assert "denoised" in backed.layers
    finally:
        backed.file.close()
