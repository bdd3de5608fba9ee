from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from scn2s.loss import convert_sqrt_mean, heldout_sqrt_mse, sqrt_poisson_mean_inverse
from scn2s.lowrank.model import (
    cell_scale,
    heldout_loss_per_rank,
    library_scale,
    randomized_svd,
    reconstruct_counts,
    sqrt_normalize,
    transfer_rank,
    unscaled_counts,
)
from scn2s.split import binomial_split


@pytest.fixture
def split_fit(poisson_counts):
    _, counts = poisson_counts
    rng = np.random.default_rng(0)
    train, heldout = binomial_split(sparse.csr_matrix(counts), 0.5, rng=rng)
    library = np.asarray(train.sum(axis=1), dtype=float).ravel()
    target = float(np.median(library)) / 0.5
    factors = randomized_svd(sqrt_normalize(train, library, target), 12, rng=rng)
    return factors, np.sqrt(library / target), heldout


def test_sqrt_normalize_keeps_sparsity_and_zero_rows():
    counts = sparse.csr_matrix(np.array([[4, 0, 0], [0, 0, 0], [1, 3, 0]]))
    library = np.asarray(counts.sum(axis=1), dtype=float).ravel()
    Y = sqrt_normalize(counts, library, 4.0)
    assert Y.nnz == counts.nnz
    np.testing.assert_allclose(Y.toarray(), [[2, 0, 0], [0, 0, 0], [1, np.sqrt(3), 0]])


def test_randomized_svd_matches_exact_svd_of_centred_matrix(poisson_counts):
    _, counts = poisson_counts
    Y = sparse.csr_matrix(np.sqrt(counts.astype(float)))
    factors = randomized_svd(Y, 5, rng=np.random.default_rng(0))
    dense = Y.toarray()
    centred = dense - dense.mean(axis=0)
    exact = np.linalg.svd(centred, compute_uv=False)[:5]
    np.testing.assert_allclose(factors.s[:3], exact[:3], rtol=1e-5)  # the rank-3 signal
    np.testing.assert_allclose(factors.s, exact, rtol=1e-2)  # noise components converge more slowly
    np.testing.assert_allclose(factors.mean, dense.mean(axis=0))
    np.testing.assert_allclose(factors.U.T @ factors.U, np.eye(5), atol=1e-10)
    np.testing.assert_allclose(factors.Vt @ factors.Vt.T, np.eye(5), atol=1e-10)


def test_randomized_svd_never_densifies_sparse_input(poisson_counts, monkeypatch):
    _, counts = poisson_counts
    Y = sparse.csr_matrix(np.sqrt(counts.astype(float)))

    def refuse(*args, **kwargs):
        raise AssertionError("densified")

    monkeypatch.setattr(sparse.csr_matrix, "toarray", refuse)
    monkeypatch.setattr(sparse.csr_matrix, "todense", refuse)
    randomized_svd(Y, 4, rng=np.random.default_rng(0))


def _brute_force_losses(factors, scale, heldout, ratio):
    losses = []
    for k in range(factors.max_rank + 1):
        y_hat = factors.mean + (factors.U[:, :k] * factors.s[:k]) @ factors.Vt[:k]
        pred = scale[:, None] * y_hat
        if ratio != 1:
            pred = convert_sqrt_mean(pred, ratio)
        losses.append(heldout_sqrt_mse(heldout, pred))
    return np.array(losses)


def test_all_rank_losses_equal_one_refit_per_rank(split_fit):
    factors, scale, heldout = split_fit
    fast = heldout_loss_per_rank(factors, scale, heldout)
    np.testing.assert_allclose(fast, _brute_force_losses(factors, scale, heldout, 1.0), rtol=1e-9)


@pytest.mark.parametrize("ratio", [0.5, 3.0])
def test_converted_losses_for_unequal_halves(split_fit, ratio):
    factors, scale, heldout = split_fit
    chunked = heldout_loss_per_rank(factors, scale, heldout, depth_ratio=ratio, chunk_size=37)
    np.testing.assert_allclose(chunked, _brute_force_losses(factors, scale, heldout, ratio), rtol=1e-9)


def test_held_out_loss_has_an_interior_minimum(split_fit):
    factors, scale, heldout = split_fit
    losses = heldout_loss_per_rank(factors, scale, heldout)
    best = int(np.argmin(losses))
    assert 1 <= best < factors.max_rank  # rank-3 truth: neither the means alone nor everything


@pytest.fixture
def full_fit(poisson_counts):
    _, counts = poisson_counts
    X = sparse.csr_matrix(counts)
    library = np.asarray(X.sum(axis=1), dtype=float).ravel()
    target = float(np.median(library))
    return randomized_svd(sqrt_normalize(X, library, target), 6, rng=np.random.default_rng(0)), library, target


def test_reconstruction_keeps_library_sizes_and_zero_genes(poisson_counts, full_fit):
    _, counts = poisson_counts
    factors, library, target = full_fit
    out = reconstruct_counts(factors, 3, library, target)
    assert out.shape == counts.shape
    assert np.all(out >= 0)
    np.testing.assert_allclose(out.sum(axis=1), library)
    np.testing.assert_array_equal(out[:, :5], 0.0)
    block = reconstruct_counts(factors, 3, library, target, rows=slice(10, 20), genes=np.array([7, 9]))
    np.testing.assert_allclose(block, out[10:20][:, [7, 9]])


def test_reconstruction_inverts_expected_square_root(full_fit):
    """Rank-k output is m^{-1} of the rescaled reconstruction, before the library rescaling."""
    factors, library, target = full_fit
    y_hat = factors.mean + (factors.U[:, :4] * factors.s[:4]) @ factors.Vt[:4]
    raw = sqrt_poisson_mean_inverse(np.sqrt(library / target)[:, None] * y_hat)
    raw[:, factors.mean == 0] = 0
    expected = raw * (library / raw.sum(axis=1))[:, None]
    np.testing.assert_allclose(reconstruct_counts(factors, 4, library, target), expected)


def test_transfer_rank_adds_components_the_lower_noise_reveals():
    signal = np.array([100.0, 60, 40, 32, 29])
    noise = np.linspace(20, 15, 25)
    half = np.concatenate([signal, noise])  # at depth p N the weaker signal sinks into the noise
    half[3:5] = [22.0, 21.0]  # noise-dominated at the lower depth: rank 3 is chosen there
    full = np.concatenate([signal, noise / np.sqrt(2)])
    rank, ratio = transfer_rank(half, full, 3, max_noise_ratio=np.sqrt(2))
    assert ratio == pytest.approx(np.sqrt(2), rel=0.05)
    assert rank == 5


def test_transfer_rank_keeps_the_split_rank_without_new_components():
    half = np.concatenate([[100.0, 60, 40], np.linspace(20, 15, 27)])
    full = np.concatenate([[100.0, 60, 40], np.linspace(20, 15, 27) / 1.2])
    assert transfer_rank(half, full, 3, max_noise_ratio=np.sqrt(2))[0] == 3
    assert transfer_rank(half, full, 0, max_noise_ratio=np.sqrt(2))[0] == 0
    assert transfer_rank(half, full, 30, max_noise_ratio=np.sqrt(2))[0] == 30


def test_transfer_rank_with_a_rank_deficient_full_spectrum():
    """Regression: zero full-depth singular values past the kept ones divided by zero."""
    half = np.array([50.0, 30.0, 4.0, 3.0, 2.0])
    full = np.array([50.0, 30.0, 0.0, 0.0, 0.0])  # the full counts have rank 2
    rank, ratio = transfer_rank(half, full, 2, max_noise_ratio=np.sqrt(2))
    assert rank == 2
    assert np.isnan(ratio)
    # zeros among positive values are left out of the ratio
    full[2] = 2.0
    rank, ratio = transfer_rank(half, full, 2, max_noise_ratio=np.sqrt(2))
    assert ratio == pytest.approx(np.sqrt(2))
    assert rank == 2


def test_sqrt_normalize_sums_duplicate_entries():
    duplicated = sparse.csr_matrix((np.array([1, 3, 4]), np.array([0, 0, 1]), np.array([0, 2, 3])), shape=(2, 2))
    library = np.array([4.0, 4.0])
    Y = sqrt_normalize(duplicated, library, 4.0)
    np.testing.assert_allclose(Y.toarray(), [[2, 0], [0, 2]])
    np.testing.assert_array_equal(duplicated.data, [1, 3, 4])  # input untouched


def test_reconstruction_from_blocks_of_scores_and_loadings(full_fit):
    """unscaled_counts times cell_scale gives any block of reconstruct_counts from that block alone."""
    factors, library, target = full_fit
    k = 3
    scores, loadings = factors.U[:, :k] * factors.s[:k], factors.Vt[:k].T
    scale = cell_scale(factors.mean, scores, loadings, library, target, chunk_size=7)
    full = reconstruct_counts(factors, k, library, target)
    rows, genes = np.array([3, 50, 11]), np.array([0, 9, 4, 30])
    block = unscaled_counts(factors.mean[genes], scores[rows], loadings[genes], library[rows], target)
    np.testing.assert_allclose(block * scale[rows, None], full[np.ix_(rows, genes)], rtol=1e-12)
    np.testing.assert_array_equal(library_scale(np.array([2.0, 0.0]), np.array([4.0, 5.0])), [2.0, 0.0])
