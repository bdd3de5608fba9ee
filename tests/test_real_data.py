"""End to end on the 10x pbmc3k counts (../shared/data)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

import scn2s


def _silhouette(values: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    adata = ad.AnnData(values.astype(np.float32))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=30, random_state=0)
    return float(silhouette_score(adata.obsm["X_pca"], labels))


@pytest.fixture(scope="module")
def pbmc3k(request):
    path = request.getfixturevalue("data_file")("pbmc3k_10x_hg19.h5ad")
    adata = ad.read_h5ad(path)
    scn2s.pp.denoise(adata, method="lowrank", progress=False)
    return adata


@pytest.mark.data
def test_pbmc3k_layer(pbmc3k):
    out = pbmc3k.layers["denoised"]
    assert out.shape == pbmc3k.shape
    assert out.dtype == np.float32
    assert np.all(out >= 0)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out.sum(axis=1), np.asarray(pbmc3k.X.sum(axis=1)).ravel(), rtol=1e-4)
    rank = pbmc3k.uns["denoised"]["best_params"]["rank"]
    assert 5 <= rank < 50
    unexpressed = np.asarray(pbmc3k.X.sum(axis=0)).ravel() == 0
    assert unexpressed.sum() > 1000
    assert np.all(out[:, unexpressed] == 0)


@pytest.mark.data
def test_pbmc3k_cell_types_separate_better(pbmc3k):
    labelled = pbmc3k.obs["seurat_annotation"].notna().to_numpy()
    labels = pbmc3k.obs["seurat_annotation"][labelled].astype(str).to_numpy()
    detected = np.asarray((pbmc3k.X > 0).sum(axis=0)).ravel() >= 10  # same genes for both
    raw = _silhouette(pbmc3k.X[labelled][:, detected].toarray(), labels)
    denoised = _silhouette(pbmc3k.layers["denoised"][labelled][:, detected], labels)
    assert denoised > raw + 0.02, (raw, denoised)
