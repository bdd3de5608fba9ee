"""The cell embedding in obsm (both families) and the autoencoder's posterior standard deviations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import scn2s

TINY = {"hidden": 32, "bottleneck": 4, "dropout": 0.0, "max_epochs": 4, "patience": 4, "batch_size": 64}


@pytest.fixture(scope="module")
def counts_adata():
    adata = scn2s.datasets.simulate(240, 60, n_types=3, rank=2, depth=600, rng=3)
    adata.var["highly_variable"] = np.arange(adata.n_vars) % 4 != 0
    return adata


@pytest.fixture(scope="module")
def autoencoder_fit(counts_adata):
    """One autoencoder run with uncertainty, on every gene but those outside highly_variable."""
    config = {**TINY, "posterior": True}
    return scn2s.pp.denoise(
        counts_adata,
        method="autoencoder",
        mask_var="highly_variable",
        autoencoder_kwds={"configs": [config]},
        uncertainty=True,
        progress=False,
        copy=True,
    )


@pytest.mark.parametrize("output", ["layer", "factors"])
def test_lowrank_writes_scores_and_loadings(counts_adata, output):
    adata = scn2s.pp.denoise(
        counts_adata, method="lowrank", lowrank_kwds={"max_rank": 20}, output=output, progress=False, copy=True
    )
    rank = adata.uns["denoised"]["best_params"]["rank"]
    scores, loadings = adata.obsm["X_denoised"], adata.varm["denoised_loadings"]
    assert rank > 0
    assert scores.shape == (adata.n_obs, rank)
    assert loadings.shape == (adata.n_vars, rank)
    assert np.all(np.isfinite(scores))
    # the scores are U * s: orthogonal columns of decreasing norm
    gram = scores.T @ scores
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-6 * gram.max())
    assert np.all(np.diff(np.diag(gram)) <= 0)
    # loadings are orthonormal columns
    np.testing.assert_allclose(loadings.T @ loadings, np.eye(rank), atol=1e-8)


def test_layer_and_factors_write_the_same_embedding(counts_adata):
    kwargs = {
        "method": "lowrank",
        "lowrank_kwds": {"max_rank": 20},
        "mask_var": "highly_variable",
        "progress": False,
        "copy": True,
    }
    layer = scn2s.pp.denoise(counts_adata, output="layer", **kwargs)
    factors = scn2s.pp.denoise(counts_adata, output="factors", **kwargs)
    np.testing.assert_array_equal(layer.obsm["X_denoised"], factors.obsm["X_denoised"])
    np.testing.assert_array_equal(layer.varm["denoised_loadings"], factors.varm["denoised_loadings"])
    outside = ~counts_adata.var["highly_variable"].to_numpy()
    assert np.all(layer.varm["denoised_loadings"][outside] == 0)
    # the layer output keeps none of the other factors
    assert "denoised_mean" not in layer.var
    assert "denoised_scale" not in layer.obs


def test_autoencoder_writes_its_code(counts_adata, autoencoder_fit):
    adata = autoencoder_fit
    code = adata.obsm["X_denoised"]
    assert code.shape == (adata.n_obs, TINY["bottleneck"])
    assert code.dtype == np.float32
    assert np.all(np.isfinite(code))
    assert code.std(axis=0).min() > 0  # every unit varies between cells
    assert "denoised_loadings" not in adata.varm
    again = scn2s.pp.denoise(
        counts_adata,
        method="autoencoder",
        mask_var="highly_variable",
        autoencoder_kwds={"configs": [{**TINY, "posterior": True}]},
        uncertainty=True,
        progress=False,
        copy=True,
    )
    np.testing.assert_array_equal(again.obsm["X_denoised"], code)  # the same seed, the same code


def test_autoencoder_replaces_an_earlier_lowrank_embedding(counts_adata):
    adata = scn2s.pp.denoise(
        counts_adata, method="lowrank", lowrank_kwds={"max_rank": 20}, output="factors", progress=False, copy=True
    )
    scn2s.pp.denoise(adata, method="autoencoder", autoencoder_kwds={"configs": [TINY]}, progress=False)
    assert adata.obsm["X_denoised"].shape == (adata.n_obs, TINY["bottleneck"])
    assert "denoised_loadings" not in adata.varm
    assert "denoised_mean" not in adata.var
    assert "denoised" in adata.layers


def test_embedding_feeds_neighbors(counts_adata):
    import scanpy as sc

    adata = scn2s.pp.denoise(counts_adata, method="lowrank", lowrank_kwds={"max_rank": 20}, progress=False, copy=True)
    sc.pp.neighbors(adata, use_rep="X_denoised", n_neighbors=10)
    assert adata.obsp["connectivities"].shape == (adata.n_obs, adata.n_obs)


def test_posterior_sd_is_written_for_the_modelled_genes(counts_adata, autoencoder_fit):
    adata = autoencoder_fit
    sd = adata.layers["denoised_sd"]
    assert sd.shape == adata.shape
    assert sd.dtype == np.float32
    modelled = counts_adata.var["highly_variable"].to_numpy()
    assert np.all(np.isnan(sd[:, ~modelled]))
    assert np.all(sd[:, modelled] >= 0)
    assert adata.uns["denoised"]["params"]["uncertainty"] is True


def test_posterior_sd_of_one_replica_is_the_gamma_posterior(counts_adata):
    """With one thinned replica there is no spread to add: sd = mean / sqrt(x + a), a one shape per gene."""
    adata = scn2s.pp.denoise(
        counts_adata,
        method="autoencoder",
        mask_var="highly_variable",
        autoencoder_kwds={"configs": [{**TINY, "posterior": True, "n_replicas": 1}]},
        uncertainty=True,
        progress=False,
        copy=True,
    )
    modelled = counts_adata.var["highly_variable"].to_numpy()
    mean, inside = adata.layers["denoised"][:, modelled], adata.layers["denoised_sd"][:, modelled]
    # the shape (mean / sd)^2 minus the count is one number per gene, the prior's shape
    counts = counts_adata.X[:, modelled].toarray()
    positive = inside > 0
    shape = np.where(positive, (mean / np.where(positive, inside, 1)) ** 2, np.nan) - counts
    per_gene = np.nanmedian(shape, axis=0)
    assert np.all(per_gene > 0)
    np.testing.assert_allclose(
        shape, np.broadcast_to(per_gene, shape.shape)[...], rtol=2e-3, atol=2e-3 * per_gene.max()
    )


def test_uncertainty_is_autoencoder_only(counts_adata):
    for kwargs in ({"method": "lowrank"}, {"method": "lowrank", "output": "factors"}):
        with pytest.raises(ValueError, match="low-rank family has no posterior"):
            scn2s.pp.denoise(counts_adata, uncertainty=True, progress=False, copy=True, **kwargs)
    with pytest.raises(TypeError, match="uncertainty must be True or False"):
        scn2s.pp.denoise(counts_adata, method="autoencoder", uncertainty="yes", progress=False, copy=True)


def test_uncertainty_without_posterior_warns(counts_adata):
    with pytest.warns(UserWarning, match="no posterior standard deviation"):
        adata = scn2s.pp.denoise(
            counts_adata,
            method="autoencoder",
            autoencoder_kwds={"configs": [{**TINY, "posterior": False}]},
            uncertainty=True,
            progress=False,
            copy=True,
        )
    assert "denoised_sd" not in adata.layers
    assert "denoised" in adata.layers


def test_a_run_without_uncertainty_removes_an_earlier_sd(autoencoder_fit):
    adata = autoencoder_fit.copy()
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 20}, progress=False)
    assert "denoised_sd" not in adata.layers


@pytest.mark.xfail(
    strict=True,
    reason="the target is not met: the intervals are too narrow in the tails (coverage 50/77/90% at 50/80/95% here), "
    "benchmarks/RESULTS.md, 'The spread of the thinned replicas'",
)
def test_posterior_intervals_cover_the_truth():
    """The share of true expected counts inside the central 50/80/95% posterior intervals, within 3 points."""
    adata = scn2s.datasets.simulate(800, 300, depth=1000, rng=1)
    config = {"hidden": 128, "bottleneck": 16, "dropout": 0.0, "max_epochs": 40, "posterior": True}
    scn2s.pp.denoise(
        adata, method="autoencoder", autoencoder_kwds={"configs": [config]}, uncertainty=True, progress=False
    )
    mean = adata.layers["denoised"].astype(np.float64)
    sd = adata.layers["denoised_sd"].astype(np.float64)
    rates = adata.layers["rates"].astype(np.float64)
    library = np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()
    # the layer's counts are on each cell's observed library size: so is the truth compared with
    truth = rates / rates.sum(axis=1, keepdims=True) * library[:, None]
    has = sd > 0
    assert has.mean() > 0.99
    shape, scale = (mean[has] / sd[has]) ** 2, sd[has] ** 2 / mean[has]
    for level in (0.5, 0.8, 0.95):
        low = stats.gamma.ppf((1 - level) / 2, shape, scale=scale)
        high = stats.gamma.ppf((1 + level) / 2, shape, scale=scale)
        coverage = np.mean((truth[has] >= low) & (truth[has] <= high))
        assert abs(coverage - level) < 0.03, (level, coverage)
