"""output="factors", scn2s.tl.reconstruct and scn2s.tl.write_denoised, and the memory guard of the dense layer."""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scn2s
import scn2s._memory
from scn2s.datasets import simulate


@pytest.fixture(scope="module")
def small() -> ad.AnnData:
    adata = simulate(300, 120, n_types=3, rank=2, depth=800, rng=5)
    adata.layers["counts"] = adata.X.copy()
    adata.var["highly_variable"] = np.arange(adata.n_vars) % 3 != 0
    return adata


def _pair(small, **kwargs) -> tuple[ad.AnnData, ad.AnnData]:
    """The same denoising written as a layer and as factors."""
    layer, factors = small.copy(), small.copy()
    options = {"method": "lowrank", "lowrank_kwds": {"max_rank": 12}, "progress": False} | kwargs
    scn2s.pp.denoise(layer, **options)
    scn2s.pp.denoise(factors, output="factors", **options)
    return layer, factors


@pytest.fixture(scope="module", params=[None, "highly_variable"], ids=["all genes", "mask_var"])
def pair(small, request):
    return _pair(small, mask_var=request.param, layer="counts")


def test_factors_are_written_instead_of_the_layer(pair, small):
    layer, factors = pair
    record = factors.uns["denoised"]
    rank = record["best_params"]["rank"]
    assert "denoised" not in factors.layers
    assert record["output"] == "factors"
    assert layer.uns["denoised"]["output"] == "layer"
    assert record["factors"]["family"] == "lowrank"
    assert record["factors"]["rank"] == rank
    assert record["factors"]["target_sum"] > 0
    assert factors.obsm["X_denoised"].shape == (small.n_obs, rank)
    assert factors.obsm["X_denoised"].dtype == np.float64
    assert factors.varm["denoised_loadings"].shape == (small.n_vars, rank)
    modelled = factors.var["denoised_modelled"].to_numpy()
    masked = layer.uns["denoised"]["params"]["mask_var"] != "all"
    np.testing.assert_array_equal(modelled, small.var["highly_variable"].to_numpy() if masked else True)
    assert np.isnan(factors.var["denoised_mean"].to_numpy()[~modelled]).all()
    assert not np.isnan(factors.var["denoised_mean"].to_numpy()[modelled]).any()
    np.testing.assert_array_equal(factors.varm["denoised_loadings"][~modelled], 0)
    library = np.asarray(small.X[:, modelled].sum(axis=1)).ravel()
    np.testing.assert_array_equal(factors.obs["denoised_library_size"].to_numpy(), library)
    assert (factors.obs["denoised_scale"].to_numpy() > 0).all()


def test_reconstruct_equals_the_layer(pair):
    layer, factors = pair
    expected = layer.layers["denoised"]
    out = scn2s.tl.reconstruct(factors, chunk_size=70)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


ALL_GENES, ALL_CELLS = np.arange(120), np.arange(300)


@pytest.mark.parametrize(
    ("genes", "cells", "gene_positions", "cell_positions"),
    [
        (slice(10, 40), None, ALL_GENES[10:40], ALL_CELLS),
        (None, slice(100, 130), ALL_GENES, ALL_CELLS[100:130]),
        (["gene_5", "gene_0", "gene_7"], [3, 299, 0], [5, 0, 7], [3, 299, 0]),
        (ALL_GENES % 5 == 1, ALL_CELLS % 7 == 2, ALL_GENES[1::5], ALL_CELLS[2::7]),
        ("gene_9", [-1], [9], [299]),
        ([4], slice(None, None, 11), [4], ALL_CELLS[::11]),
    ],
    ids=["gene slice", "cell slice", "names and positions", "masks", "one name", "one gene"],
)
def test_reconstruct_slices_equal_the_layer(pair, genes, cells, gene_positions, cell_positions):
    layer, factors = pair
    expected = layer.layers["denoised"][np.ix_(cell_positions, gene_positions)]
    np.testing.assert_array_equal(scn2s.tl.reconstruct(factors, genes=genes, cells=cells, chunk_size=9), expected)


def test_a_subset_of_the_anndata_reconstructs_its_cells_and_genes(pair):
    layer, factors = pair
    subset = factors[50:90, 20:60]
    np.testing.assert_array_equal(scn2s.tl.reconstruct(subset), layer.layers["denoised"][50:90, 20:60])


def test_factors_survive_an_h5ad_round_trip(pair, tmp_path):
    layer, factors = pair
    factors.write_h5ad(tmp_path / "factors.h5ad")
    back = ad.read_h5ad(tmp_path / "factors.h5ad")
    assert back.uns["denoised"]["factors"]["rank"] == factors.uns["denoised"]["factors"]["rank"]
    np.testing.assert_array_equal(scn2s.tl.reconstruct(back, genes=slice(0, 30)), layer.layers["denoised"][:, :30])


def test_write_denoised_h5ad_equals_the_layer(pair, tmp_path):
    layer, factors = pair
    path = tmp_path / "out.h5ad"
    scn2s.tl.write_denoised(factors, path, chunk_size=64)
    back = ad.read_h5ad(path)
    assert back.layers["denoised"].dtype == np.float32
    np.testing.assert_array_equal(back.layers["denoised"], layer.layers["denoised"])
    np.testing.assert_array_equal(back.obsm["X_denoised"], factors.obsm["X_denoised"])
    assert "denoised" not in factors.layers  # adata itself is not modified
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_write_denoised_zarr_equals_the_layer(pair, tmp_path, zarr_format):
    layer, factors = pair
    path = tmp_path / "out.zarr"
    settings = {"zarr_write_format": zarr_format} | ({"auto_shard_zarr_v3": False} if zarr_format == 3 else {})
    with ad.settings.override(**settings):
        # anndata 0.12 warns that v2 will stop being its default; zarr, that v3 has no consolidated metadata
        warning = "zarr v2" if zarr_format == 2 else "Consolidated metadata is currently not part"
        with pytest.warns(UserWarning, match=warning):
            scn2s.tl.write_denoised(factors, path, chunk_size=50)
    back = ad.read_zarr(path)
    np.testing.assert_array_equal(back.layers["denoised"], layer.layers["denoised"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_write_denoised_replaces_an_existing_file_and_leaves_none_on_failure(pair, tmp_path, monkeypatch):
    layer, factors = pair
    path = tmp_path / "out.h5ad"
    path.write_bytes(b"previous")
    scn2s.tl.write_denoised(factors, path)
    np.testing.assert_array_equal(ad.read_h5ad(path).layers["denoised"], layer.layers["denoised"])
    before = path.read_bytes()

    def fail(self, rows, genes):
        raise KeyboardInterrupt

    monkeypatch.setattr(scn2s.tl._factors.StoredFactors, "block", fail)
    for target in (path, tmp_path / "new.h5ad"):
        with pytest.raises(KeyboardInterrupt):
            scn2s.tl.write_denoised(factors, target)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]


def test_write_denoised_refuses_other_suffixes_and_an_existing_layer(pair, tmp_path):
    _, factors = pair
    with pytest.raises(ValueError, match=r"filename must end in \.h5ad or \.zarr"):
        scn2s.tl.write_denoised(factors, tmp_path / "out.csv")
    with_layer = factors.copy()
    with_layer.layers["denoised"] = np.zeros(factors.shape, dtype=np.float32)
    with pytest.raises(ValueError, match=r"adata.layers\['denoised'\] exists already"):
        scn2s.tl.write_denoised(with_layer, tmp_path / "out.h5ad")
    assert not list(tmp_path.iterdir())


def test_reconstruct_explains_a_layer_record_and_a_missing_record(pair):
    layer, factors = pair
    with pytest.raises(ValueError, match=r"written with output='layer': the denoised values are already in "):
        scn2s.tl.reconstruct(layer)
    with pytest.raises(KeyError, match=r"adata.uns has no 'smooth' entry; run scn2s.pp.denoise"):
        scn2s.tl.reconstruct(factors, key="smooth")
    broken = factors.copy()
    del broken.obs["denoised_scale"]
    with pytest.raises(KeyError, match=r"adata.obs\['denoised_scale'\] is missing"):
        scn2s.tl.reconstruct(broken)
    with pytest.raises(KeyError, match=r"1 genes not found, e.g. \['nope'\]"):
        scn2s.tl.reconstruct(factors, genes=["gene_1", "nope"])
    with pytest.raises(ValueError, match="a boolean mask of cells must have length 300"):
        scn2s.tl.reconstruct(factors, cells=np.ones(5, dtype=bool))
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        scn2s.tl.reconstruct(factors, chunk_size=0)


@pytest.mark.parametrize("method", ["auto", "autoencoder"])
def test_factors_need_the_lowrank_method(small, method):
    with pytest.raises(ValueError, match=r'output="factors" stores the factors of a low-rank model and needs '):
        scn2s.pp.denoise(small.copy(), method=method, output="factors", progress=False)
    with pytest.raises(ValueError, match=r"output must be one of \('layer', 'factors'\), got 'dense'"):
        scn2s.pp.denoise(small.copy(), method="lowrank", output="dense", progress=False)


def test_one_output_replaces_the_other(small):
    adata = small.copy()
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 8}, progress=False)
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 8}, output="factors", progress=False)
    assert "denoised" not in adata.layers
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 8}, progress=False)
    assert "denoised" in adata.layers
    # the embedding and loadings stay (every output writes them); the other factors go
    rank = adata.uns["denoised"]["best_params"]["rank"]
    assert adata.obsm["X_denoised"].shape == (adata.n_obs, rank)
    assert adata.varm["denoised_loadings"].shape == (adata.n_vars, rank)
    assert list(adata.obs.columns) == list(small.obs.columns)
    assert list(adata.var.columns) == list(small.var.columns)


def test_factors_of_a_view(small):
    view = small[:150]
    out = scn2s.pp.denoise(
        view, method="lowrank", lowrank_kwds={"max_rank": 8}, output="factors", copy=True, progress=False
    )
    assert out.obsm["X_denoised"].shape[0] == 150
    assert view.is_view


def _layer_message(n_obs: int, n_vars: int, size: float, available: float) -> str:
    return (
        f"The denoised layer adata.layers['denoised'] would take {size:.3g} GiB ({n_obs} cells x {n_vars} genes x "
        f"4 bytes), more than the {available:.3g} GiB of memory available; nothing was computed. Store the low-rank "
        'model instead with method="lowrank", output="factors", then compute denoised values for slices with '
        "scn2s.tl.reconstruct, or write the whole layer to an .h5ad or .zarr file chunk by chunk with "
        "scn2s.tl.write_denoised. Or denoise fewer cells or genes, e.g. adata[:, adata.var['highly_variable']]"
        ".copy(): mask_var= alone does not shrink the layer, which keeps the raw counts of the genes it leaves out."
    )


def test_memory_guard_refuses_a_layer_that_does_not_fit(small, monkeypatch):
    size = small.n_obs * small.n_vars * 4
    monkeypatch.setattr(scn2s._memory, "available_memory", lambda: size - 1)

    def never(*args, **kwargs):  # the guard runs before any work
        raise AssertionError("work started")

    monkeypatch.setattr(scn2s.pp._denoise, "get_counts", never)
    adata = small.copy()
    message = _layer_message(300, 120, size / 2**30, (size - 1) / 2**30)
    with pytest.raises(MemoryError) as info:
        scn2s.pp.denoise(adata, method="lowrank", progress=False)
    assert str(info.value) == message
    assert "denoised" not in adata.layers
    assert "denoised" not in adata.uns


def test_memory_guard_passes_when_the_layer_fits_and_for_factors(small, monkeypatch):
    size = small.n_obs * small.n_vars * 4
    monkeypatch.setattr(scn2s._memory, "available_memory", lambda: size)
    adata = small.copy()
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 5}, progress=False)
    assert adata.layers["denoised"].shape == small.shape
    monkeypatch.setattr(scn2s._memory, "available_memory", lambda: 1)
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 5}, output="factors", progress=False)
    assert "X_denoised" in adata.obsm
    monkeypatch.setattr(scn2s._memory, "available_memory", lambda: None)  # unknown: no check
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 5}, progress=False)


def test_available_memory_reads_proc_meminfo_or_sysconf(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000 kB\nMemAvailable:    2048 kB\n")
    monkeypatch.setattr(scn2s._memory, "_MEMINFO", meminfo)
    assert scn2s._memory.available_memory() == 2048 * 1024
    monkeypatch.setattr(scn2s._memory, "_MEMINFO", tmp_path / "absent")
    available = scn2s._memory.available_memory()
    assert available is None or available > 0


def test_genes_outside_the_mask_come_from_the_recorded_layer(small):
    adata = small.copy()
    adata.X = sparse.csr_matrix(np.log1p(small.X.toarray()))  # X is not the counts
    mask = small.var["highly_variable"].to_numpy()
    scn2s.pp.denoise(
        adata,
        method="lowrank",
        layer="counts",
        mask_var=mask,
        lowrank_kwds={"max_rank": 6},
        output="factors",
        progress=False,
    )
    out = scn2s.tl.reconstruct(adata, genes=~mask)
    np.testing.assert_array_equal(out, small.X[:, ~mask].toarray().astype(np.float32))


def test_the_message_of_a_record_without_factors(small):
    adata = small.copy()
    adata.uns["denoised"] = {"method": "lowrank"}
    with pytest.raises(ValueError, match=re.escape("adata.uns['denoised'] holds no factors; run scn2s.pp.denoise")):
        scn2s.tl.reconstruct(adata)


def test_factors_written_to_a_view_in_place_leave_the_parent(small):
    parent = small.copy()
    view = parent[:150]
    scn2s.pp.denoise(view, method="lowrank", lowrank_kwds={"max_rank": 8}, output="factors", progress=False)
    assert not view.is_view
    assert view.obsm["X_denoised"].shape[0] == 150
    assert "X_denoised" not in parent.obsm
    assert list(parent.obs.columns) == list(small.obs.columns)


def test_factors_cost_follows_the_non_zeros_not_cells_x_genes(monkeypatch):
    """4,000 cells x 5,000 genes with 10 non-zeros: the non-linear steps (the cell scale) see only the cells
    with molecules, at most 10 x 5,000 entries; a pass over cells x genes (2e7 entries) would be counted here."""
    from scn2s.lowrank import model as lowrank

    n_cells, n_genes, nnz = 4_000, 5_000, 10
    rng = np.random.default_rng(0)
    rows, cols = rng.choice(n_cells, nnz, replace=False), rng.choice(n_genes, nnz, replace=False)
    adata = ad.AnnData(sparse.csr_matrix((np.ones(nnz, np.float32), (rows, cols)), shape=(n_cells, n_genes)))
    entries = []
    real = lowrank.sqrt_poisson_mean_inverse

    def counted(y):
        entries.append(np.size(y))
        return real(y)

    monkeypatch.setattr(lowrank, "sqrt_poisson_mean_inverse", counted)
    scn2s.pp.denoise(adata, method="lowrank", output="factors", progress=False)
    assert sum(entries) <= nnz * n_genes
    scale = adata.obs["denoised_scale"].to_numpy()
    assert np.count_nonzero(scale) <= nnz
    assert np.all(scale[rows] > 0)
    np.testing.assert_allclose(scn2s.tl.reconstruct(adata, cells=np.sort(rows)).sum(axis=1), 1.0, rtol=1e-5)
