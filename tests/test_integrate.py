"""``integrate=True``: the cells' embedding with the batches removed (Harmony), beside the unchanged outputs."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
from scipy.spatial.distance import cdist

import scn2s
from scn2s.integrate import _correct, harmonize


def batch_entropy(embedding: np.ndarray, groups: np.ndarray, k: int = 15) -> float:
    """Mean entropy of the batches among each cell's ``k`` nearest neighbours, 1 for perfect mixing."""
    neighbours = np.argsort(cdist(embedding, embedding), axis=1)[:, 1 : k + 1]
    n_groups = groups.max() + 1
    shares = np.stack([(groups[neighbours] == g).mean(axis=1) for g in range(n_groups)], axis=1)
    entropy = -np.where(shares > 0, shares * np.log(np.where(shares > 0, shares, 1)), 0).sum(axis=1)
    return float(entropy.mean() / np.log(n_groups))


def neighbour_purity(embedding: np.ndarray, labels: np.ndarray, k: int = 15) -> float:
    """Share of each cell's ``k`` nearest neighbours with its own label."""
    neighbours = np.argsort(cdist(embedding, embedding), axis=1)[:, 1 : k + 1]
    return float((labels[neighbours] == labels[:, None]).mean())


@pytest.fixture(scope="module")
def shifted():
    """Three cell types in three batches; each batch moves each type by its own offset, larger than its spread."""
    rng = np.random.default_rng(0)
    n, d = 600, 8
    types = rng.integers(0, 3, n)
    groups = rng.integers(0, 3, n)
    centres = rng.normal(0, 6, (3, d))
    offsets = rng.normal(0, 1.5, (3, 3, d))  # batch x type x dimension
    embedding = centres[types] + offsets[groups, types] + rng.normal(0, 0.5, (n, d))
    return embedding, groups, types


def test_the_batches_mix_and_the_types_stay_apart(shifted):
    embedding, groups, types = shifted
    result = harmonize(embedding, groups, rng=np.random.default_rng(0))
    assert result.embedding.shape == embedding.shape
    assert batch_entropy(embedding, groups) < 0.2
    assert batch_entropy(result.embedding, groups) > 0.8
    assert neighbour_purity(result.embedding, types) > 0.99
    assert result.converged
    assert 1 <= result.rounds <= 10
    assert result.n_clusters == 20
    assert result.objective[-1] < result.objective[0]
    assert result.params == {"theta": 2.0, "ridge": 1.0, "sigma": 0.1}


def test_without_the_diversity_penalty_and_the_correction_nothing_moves(shifted):
    embedding, groups, _ = shifted
    result = harmonize(embedding, groups, rng=np.random.default_rng(0), ridge=1e12)
    np.testing.assert_allclose(result.embedding, embedding, atol=1e-6)


def test_the_same_seed_gives_the_same_embedding(shifted):
    embedding, groups, _ = shifted
    first = harmonize(embedding, groups, rng=np.random.default_rng(3)).embedding
    again = harmonize(embedding, groups, rng=np.random.default_rng(3)).embedding
    np.testing.assert_array_equal(first, again)


def test_the_correction_is_each_clusters_weighted_ridge_regression():
    rng = np.random.default_rng(1)
    n, d, k, b, ridge = 90, 4, 5, 3, 0.7
    z = rng.normal(size=(n, d))
    groups = rng.integers(0, b, n)
    assign = rng.dirichlet(np.ones(k), n)
    design = np.concatenate([np.ones((n, 1)), np.eye(b)[groups]], axis=1)
    expected = z.copy()
    for cluster in range(k):
        weights = np.diag(assign[:, cluster])
        penalty = np.diag(np.r_[0.0, np.full(b, ridge)])
        beta = np.linalg.solve(design.T @ weights @ design + penalty, design.T @ weights @ z)
        beta[0] = 0.0
        expected -= weights @ design @ beta
    np.testing.assert_allclose(_correct(z, groups, assign, ridge, n_groups=b), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("embedding", "groups", "match"),
    [
        (np.ones(10), np.zeros(10, dtype=int), "cells x dimensions"),
        (np.ones((10, 2)), np.zeros(9, dtype=int), "cells x dimensions"),
        (np.full((10, 2), np.nan), np.zeros(10, dtype=int), "NaN"),
        (np.ones((10, 2)), np.full(10, -1), "integer codes"),
        (np.ones((10, 2)), np.zeros(10), "integer codes"),
    ],
)
def test_bad_input_is_refused(embedding, groups, match):
    with pytest.raises(ValueError, match=match):
        harmonize(embedding, groups, rng=np.random.default_rng(0))


def test_denoise_writes_the_integrated_embedding_and_changes_nothing_else(batched):
    adata = batched.copy()
    scn2s.pp.denoise(adata, method="lowrank", batch_key="batch", integrate=True, progress=False)
    plain = batched.copy()
    scn2s.pp.denoise(plain, method="lowrank", batch_key="batch", progress=False)
    np.testing.assert_array_equal(adata.layers["denoised"], plain.layers["denoised"])
    np.testing.assert_array_equal(adata.obsm["X_denoised"], plain.obsm["X_denoised"])
    assert "X_denoised_integrated" not in plain.obsm
    record = adata.uns["denoised"]
    assert "X_denoised_integrated" in list(record["keys"]["obsm"])
    assert record["params"]["integrate"] is True
    integration = record["integration"]
    assert integration["method"] == "harmony"
    assert integration["batch_key"] == "batch"
    assert integration["rounds"] >= 1
    groups = adata.obs["batch"].cat.codes.to_numpy()
    types = adata.obs["cell_type"].astype("category").cat.codes.to_numpy()
    integrated = adata.obsm["X_denoised_integrated"]
    assert integrated.shape == adata.obsm["X_denoised"].shape
    assert batch_entropy(integrated, groups) > batch_entropy(adata.obsm["X_denoised"], groups) + 0.1
    assert neighbour_purity(integrated, types) > 0.95
    assert "integrate" in record["timings"]
    # a run without integrate removes what the first wrote under its record
    scn2s.pp.denoise(adata, method="lowrank", batch_key="batch", progress=False)
    assert "X_denoised_integrated" not in adata.obsm
    assert "integration" not in adata.uns["denoised"]


def test_the_autoencoders_embedding_is_integrated_too(batched):
    adata = batched.copy()
    configs = [{"hidden": 16, "bottleneck": 8, "max_epochs": 3}]
    scn2s.pp.denoise(
        adata,
        method="autoencoder",
        batch_key="batch",
        integrate=True,
        autoencoder_kwds={"configs": configs},
        progress=False,
    )
    assert adata.obsm["X_denoised_integrated"].shape == (adata.n_obs, 8)
    assert adata.obsm["X_denoised_integrated"].dtype == adata.obsm["X_denoised"].dtype
    assert adata.uns["denoised"]["integration"]["method"] == "harmony"


def test_integrate_needs_a_batch_key_and_a_bool(batched):
    adata = batched.copy()
    with pytest.raises(ValueError, match="needs batch_key"):
        scn2s.pp.denoise(adata, method="lowrank", integrate=True, progress=False)
    with pytest.raises(TypeError, match="True or False"):
        scn2s.pp.denoise(adata, method="lowrank", batch_key="batch", integrate="yes", progress=False)
    assert "denoised" not in adata.uns


def test_a_users_key_is_not_overwritten(batched):
    adata = batched.copy()
    adata.obsm["X_denoised_integrated"] = np.zeros((adata.n_obs, 2))
    with pytest.raises(ValueError, match="X_denoised_integrated"):
        scn2s.pp.denoise(adata, method="lowrank", batch_key="batch", integrate=True, progress=False)
    np.testing.assert_array_equal(adata.obsm["X_denoised_integrated"], 0)


def test_one_batch_writes_the_embedding_as_it_is(batched):
    adata = batched.copy()
    adata.obs["one"] = "all"
    with pytest.warns(UserWarning, match="one batch"):
        scn2s.pp.denoise(adata, method="lowrank", batch_key="one", integrate=True, progress=False)
    np.testing.assert_array_equal(adata.obsm["X_denoised_integrated"], adata.obsm["X_denoised"])
    assert adata.uns["denoised"]["integration"]["method"] == "none"


def test_a_calibrated_denoiser_has_no_embedding_to_integrate(batched):
    adata = batched.copy()
    rates = adata.layers["rates"]
    codes = adata.obs["batch"].cat.codes.to_numpy()
    cells_of_size = {int((codes == b).sum()): codes == b for b in range(3)}
    assert len(cells_of_size) == 3  # each batch's size tells its cells apart when it is denoised alone
    cells_of_size[adata.n_obs] = slice(None)

    def truth(counts, *, scale: float = 1.0):  # the simulated rates: no model of the counts does better
        return rates[cells_of_size[counts.shape[0]]] * scale

    with pytest.warns(UserWarning, match="no cell embedding"):
        scn2s.pp.denoise(
            adata,
            method="lowrank",
            batch_key="batch",
            integrate=True,
            denoisers={"truth": (truth, {"scale": [1.0]})},
            progress=False,
        )
    assert adata.uns["denoised"]["method"] == "truth"
    assert "X_denoised_integrated" not in adata.obsm
    assert adata.uns["denoised"]["integration"]["method"] == "none"


def test_the_command_line_writes_it(batched, tmp_path):
    source = tmp_path / "in.h5ad"
    batched.write_h5ad(source)
    out = tmp_path / "out.h5ad"
    command = [sys.executable, "-m", "scn2s", "denoise", str(source), "-o", str(out), "--method", "lowrank"]
    done = subprocess.run([*command, "--integrate"], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "--integrate" in done.stderr
    assert "--batch-key" in done.stderr
    assert not out.exists()
    done = subprocess.run(
        [*command, "--batch-key", "batch", "--integrate", "--quiet"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "obsm['X_denoised_integrated']" in done.stdout
    written = ad.read_h5ad(out)
    assert written.obsm["X_denoised_integrated"].shape == written.obsm["X_denoised"].shape
