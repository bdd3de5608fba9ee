"""Counts in a dask array of sparse chunks: the dask path gives what the same counts in memory give.

The products of the randomized SVD run in float32 (the normalised counts' precision) and the cluster sums
per-chunk partials in another order than the loop in memory, so the two paths agree to rounding, not bit for
bit: a difference of one float64 ulp in the sketch can round a float32 input the other way, and the power
iterations carry that into the weakest components. Measured on these data (230 cells, 50 genes, chunks of 70
cells; every case below, with and without ``mask_var``, ``p`` 0.5 and 0.4): the same ranks; library sizes equal;
held-out losses within a relative 2.2e-8, singular values 4.7e-8, per-cell scales 4.4e-8; scores within 1.9e-6
(of values up to 9), loadings 1.1e-7 (of values up to 0.8); the float32 layer within an absolute 3.1e-5
everywhere and a relative 1.3e-5 where it exceeds 1e-2 (the inverse of the square-root transform steepens the
differences of small values). The assertions use ``rtol=1e-5`` (with an ``atol`` of 1e-5 times the values'
scale) for the factors, ``rtol=1e-6`` for the losses and ``rtol=1e-4, atol=1e-5`` for the layer, whose small
entries do not all meet ``rtol=1e-5``.

The cluster is a ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``: worker processes, so that
every task and its arguments are pickled as on a real cluster (it starts in about 2 s here and has been
reliable).
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scn2s

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("dask.distributed")

LAYER_TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _lazy(adata: ad.AnnData, chunks=(50, 50)) -> ad.AnnData:
    """``adata`` with ``X`` as a dask array of CSR chunks (chunked unlike the blocks: the path rechunks)."""
    lazy = adata.copy()
    lazy.X = da.from_array(adata.X, chunks=chunks, asarray=False)
    return lazy


def _denoise(adata, **kwargs):
    scn2s.pp.denoise(
        adata, **{"method": "lowrank", "lowrank_kwds": {"max_rank": 8}, "progress": False, "rng": 3, **kwargs}
    )
    return adata


def _compare_selection(lazy: ad.AnnData, memory: ad.AnnData) -> None:
    a, b = lazy.uns["denoised"]["selection"]["lowrank"], memory.uns["denoised"]["selection"]["lowrank"]
    assert a["rank"] == b["rank"]
    assert a["split_rank"] == b["split_rank"]
    np.testing.assert_allclose(a["loss_per_split"], b["loss_per_split"], rtol=1e-6)
    np.testing.assert_allclose(a["singular_values"], b["singular_values"], rtol=1e-5)


@pytest.mark.parametrize("mask", [False, True], ids=["all-genes", "mask_var"])
def test_dask_layer_equals_the_in_memory_layer(client, small_blocks, blocked_counts, mask):
    kwargs = {"mask_var": "highly_variable"} if mask else {}
    memory = _denoise(blocked_counts.copy(), **kwargs)
    lazy = _denoise(_lazy(blocked_counts), **kwargs)
    _compare_selection(lazy, memory)
    layer = lazy.layers["denoised"]
    assert isinstance(layer, da.Array)  # lazy: computed chunk by chunk when asked
    assert layer.dtype == np.float32
    assert layer.chunks[0] == (70, 70, 70, 20)
    values = layer.compute()
    np.testing.assert_allclose(values, memory.layers["denoised"], **LAYER_TOL)
    if mask:  # the genes outside the mask keep their raw counts, exactly
        rest = ~blocked_counts.var["highly_variable"].to_numpy()
        np.testing.assert_array_equal(values[:, rest], blocked_counts.X[:, rest].toarray())
    assert isinstance(lazy.X, da.Array)  # the counts are not gathered into memory


def test_dask_factors_equal_the_in_memory_factors(client, small_blocks, blocked_counts, tmp_path):
    memory = _denoise(blocked_counts.copy(), output="factors", mask_var="highly_variable")
    lazy = _denoise(_lazy(blocked_counts), output="factors", mask_var="highly_variable")
    _compare_selection(lazy, memory)
    scores = memory.obsm["X_denoised"]
    np.testing.assert_allclose(lazy.obsm["X_denoised"], scores, rtol=1e-5, atol=1e-5 * np.abs(scores).max())
    loadings = memory.varm["denoised_loadings"]
    np.testing.assert_allclose(lazy.varm["denoised_loadings"], loadings, rtol=1e-5, atol=1e-5 * np.abs(loadings).max())
    for column in ("denoised_library_size", "denoised_scale"):
        np.testing.assert_allclose(lazy.obs[column], memory.obs[column], rtol=1e-5)
    # the file: the raw counts of the genes outside the mask are read from the dask array chunk by chunk
    path = tmp_path / "out.h5ad"
    scn2s.tl.write_denoised(lazy, path, chunk_size=60)
    back = ad.read_h5ad(path)
    np.testing.assert_allclose(back.layers["denoised"], scn2s.tl.reconstruct(memory), **LAYER_TOL)
    assert (back.X != blocked_counts.X).nnz == 0


def test_write_denoised_writes_the_lazy_layer(client, small_blocks, blocked_counts, tmp_path):
    lazy = _denoise(_lazy(blocked_counts))
    path = tmp_path / "out.h5ad"
    scn2s.tl.write_denoised(lazy, path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.layers["denoised"], lazy.layers["denoised"].compute())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]


def test_read_elem_lazy_counts(client, small_blocks, blocked_counts, tmp_path):
    zarr = pytest.importorskip("zarr")
    from anndata.experimental import read_elem_lazy

    path = tmp_path / "counts.zarr"
    with (
        ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False),
        pytest.warns(UserWarning, match="Consolidated metadata is currently not part"),  # zarr's, on v3
    ):
        blocked_counts.write_zarr(path)
    group = zarr.open_group(path, mode="r")
    lazy = ad.AnnData(X=read_elem_lazy(group["X"]), obs=blocked_counts.obs.copy(), var=blocked_counts.var.copy())
    assert isinstance(lazy.X, da.Array)
    _denoise(lazy, output="factors")
    memory = _denoise(blocked_counts.copy(), output="factors")
    _compare_selection(lazy, memory)


def test_no_chunk_task_sees_more_than_one_block(small_blocks, blocked_counts, monkeypatch):
    """Every per-chunk function of the dask path gets at most one block of cells, and block ``b`` of the split."""
    from scn2s.lowrank import dask as _dask

    seen = []

    def spy(name, function):
        def wrapper(first, *args, **kwargs):
            seen.append((name, first.shape[0], kwargs.get("block_id")))
            return function(first, *args, **kwargs)

        wrapper.__signature__ = inspect.signature(function)  # dask passes block_id by signature
        return wrapper

    names = [
        "_prepare_chunk",
        "_has_molecule",
        "_row_sums",
        "_split_chunk",
        "_half_row_sums",
        "_normalise_chunk",
        "_column_sums",
        "_right_chunk",
        "_left_chunk",
        "_solve_chunk",
        "_loss_chunk",
        "_scale_chunk",
        "_layer_chunk",
    ]
    for name in names:
        monkeypatch.setattr(_dask, name, spy(name, getattr(_dask, name)))
    with dask.config.set(scheduler="sync"):
        lazy = _denoise(_lazy(blocked_counts, chunks=(115, 25)), mask_var="highly_variable")
        lazy.layers["denoised"].compute()
    called = {name for name, _, _ in seen}
    assert called == set(names)
    sizes = (70, 70, 70, 20)
    assert {rows for _, rows, _ in seen} <= set(sizes), [x for x in seen if x[1] not in sizes][:3]
    splits = [(rows, block_id) for name, rows, block_id in seen if name == "_split_chunk"]
    assert len(splits) == 3 * len(sizes)  # three splits, every block once
    assert all(rows == sizes[block_id[0]] for rows, block_id in splits)


@pytest.mark.parametrize("method", ["auto", "autoencoder"])
def test_other_methods_refuse_dask_counts_up_front(blocked_counts, method, monkeypatch):
    lazy = _lazy(blocked_counts)

    def fail(*args, **kwargs):
        raise AssertionError("nothing may be computed")

    monkeypatch.setattr(da.Array, "compute", fail)
    with pytest.raises(ValueError, match='method="lowrank"'):
        scn2s.pp.denoise(lazy, method=method, progress=False)
    assert "denoised" not in lazy.uns


def test_dask_counts_are_checked_on_the_workers(client, small_blocks, blocked_counts):
    bad = blocked_counts.copy()
    bad.X = bad.X.astype(np.float32)
    bad.X.data[-1] = 0.5  # in the last chunk
    with pytest.raises(ValueError, match=r"adata.X holds non-integer values"):
        _denoise(_lazy(bad))


def test_scn2s_works_without_dask():
    """scn2s never imports dask itself (anndata may, when it is installed): with dask unimportable, it still runs."""
    code = (
        "import sys; sys.modules['dask'] = None; sys.modules['distributed'] = None\n"
        "import scn2s; from scn2s.datasets import simulate\n"
        "adata = simulate(60, 20, rng=0)\n"
        "scn2s.pp.denoise(adata, method='lowrank', lowrank_kwds={'max_rank': 3}, progress=False)\n"
        "assert 'scn2s.lowrank.dask' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True)


def test_dask_selection_with_unequal_halves(client, small_blocks, blocked_counts):
    """p != 0.5: the held-out half is scored on dense row chunks after the depth conversion, per dask chunk too."""
    memory = _denoise(blocked_counts.copy(), output="factors", p=0.4, n_splits=2)
    lazy = _denoise(_lazy(blocked_counts), output="factors", p=0.4, n_splits=2)
    _compare_selection(lazy, memory)


def test_dask_counts_in_a_layer(client, small_blocks, blocked_counts):
    memory = blocked_counts.copy()
    memory.layers["counts"] = memory.X
    lazy = blocked_counts.copy()
    lazy.layers["counts"] = da.from_array(blocked_counts.X, chunks=(50, 50), asarray=False)
    kwargs = {"layer": "counts", "mask_var": "highly_variable", "output": "factors"}
    _compare_selection(_denoise(lazy, **kwargs), _denoise(memory, **kwargs))
    # the genes outside the mask: raw counts read from the dask layer, one range of cells at a time
    values = scn2s.tl.reconstruct(lazy, chunk_size=90)
    np.testing.assert_allclose(values, scn2s.tl.reconstruct(memory), **LAYER_TOL)
    rest = ~blocked_counts.var["highly_variable"].to_numpy()
    np.testing.assert_array_equal(values[:, rest], blocked_counts.X[:, rest].toarray())


@pytest.mark.parametrize("p", [0.5, 0.4])
def test_dask_rank_search_scores_the_same_cells(client, small_blocks, blocked_counts, p):
    """Above ``Splits.scored_cells``, each chunk scores its own scored cells: the losses are those in memory."""
    from scn2s.lowrank import search_lowrank
    from scn2s.select import Splits

    splits = Splits(p=p, seeds=(11, 12), scored_cells=90)
    assert len(splits.scored_rows(0, blocked_counts.n_obs)) == 90
    counts = blocked_counts.X
    lazy = da.from_array(counts, chunks=(50, 50), asarray=False)
    memory = search_lowrank(counts, max_rank=6, splits=splits, rng=np.random.default_rng(0)).losses
    chunked = search_lowrank(lazy, max_rank=6, splits=splits, rng=np.random.default_rng(0)).losses
    np.testing.assert_allclose(chunked, memory, rtol=1e-6)
    every = search_lowrank(counts, max_rank=6, splits=Splits(p=p, seeds=(11, 12)), rng=np.random.default_rng(0))
    assert not np.allclose(every.losses, memory, rtol=1e-6)


def test_dask_split_keeps_the_scored_cells_heldout_molecules_only(client, small_blocks, blocked_counts):
    """Each chunk's held-out half holds the scored cells' molecules alone, those the blocks in memory hold."""
    from scn2s._blocks import RowBlocks
    from scn2s.lowrank.blocks import BlockCounts
    from scn2s.lowrank.dask import DaskRowBlocks
    from scn2s.select import Splits

    counts = blocked_counts.X
    splits = Splits(p=0.5, seeds=(11,), scored_cells=90)
    keep = splits.scored_mask(0, counts.shape[0])
    lazy = DaskRowBlocks(da.from_array(counts, chunks=(50, 50), asarray=False)).split(splits, 0)
    chunked = sparse.csr_matrix(lazy.heldout.compute())
    memory = sparse.vstack(BlockCounts(RowBlocks(counts)).split(splits, 0).heldout, format="csr")
    assert chunked.shape == memory.shape == counts.shape
    assert (chunked != memory).nnz == 0
    assert chunked[~keep].nnz == 0
    assert chunked[keep].nnz > 0
    np.testing.assert_array_equal(lazy.library, BlockCounts(RowBlocks(counts)).split(splits, 0).library)
