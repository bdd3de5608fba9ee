from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from scn2s.split import binomial_split, overlap_probabilities


def _dense(X):
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
def test_halves_sum_to_input_and_keep_kind(poisson_counts, array_type, dtype):
    _, counts = poisson_counts
    X = array_type(counts.astype(dtype))
    a, b = binomial_split(X, 0.3, rng=np.random.default_rng(0))
    for half in (a, b):
        assert type(half) is type(X)
        assert half.dtype == X.dtype
        assert half.shape == X.shape
        values = _dense(half)
        assert np.all(values >= 0)
        np.testing.assert_array_equal(values, np.round(values))
    np.testing.assert_array_equal(_dense(a) + _dense(b), counts)


def test_sparse_halves_are_subsets_without_explicit_zeros(poisson_counts):
    _, counts = poisson_counts
    X = sparse.csr_matrix(counts)
    a, b = binomial_split(X, 0.5, rng=np.random.default_rng(1))
    for half in (a, b):
        assert np.all(half.data != 0)
        pattern = set(zip(*X.nonzero(), strict=True))
        assert set(zip(*half.nonzero(), strict=True)) <= pattern
    assert a.nnz < X.nnz
    assert b.nnz < X.nnz


def test_sparse_input_is_not_modified(poisson_counts):
    _, counts = poisson_counts
    X = sparse.csr_matrix(counts)
    before = X.copy()
    binomial_split(X, 0.5, rng=np.random.default_rng(1))
    assert (X != before).nnz == 0


def test_halves_have_thinned_means_and_no_covariance():
    rng = np.random.default_rng(3)
    lam = np.array([0.2, 1.0, 5.0, 30.0])
    counts = rng.poisson(lam, size=(100_000, 4))
    p = 0.3
    a, b = binomial_split(counts, p, rng=rng)
    n = counts.shape[0]
    # within 5 standard errors of the thinned Poisson means
    assert np.all(np.abs(a.mean(axis=0) - p * lam) < 5 * np.sqrt(p * lam / n))
    assert np.all(np.abs(b.mean(axis=0) - (1 - p) * lam) < 5 * np.sqrt((1 - p) * lam / n))
    for j in range(4):
        corr = np.corrcoef(a[:, j], b[:, j])[0, 1]
        assert abs(corr) < 0.015, corr
    # the unsplit counts are correlated with each half, as a control
    assert np.corrcoef(counts[:, 3], a[:, 3])[0, 1] > 0.3


def test_same_seed_same_split_different_seed_different_split(poisson_counts):
    _, counts = poisson_counts
    a1, _ = binomial_split(counts, 0.5, rng=np.random.default_rng(7))
    a2, _ = binomial_split(counts, 0.5, rng=np.random.default_rng(7))
    a3, _ = binomial_split(counts, 0.5, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a1, a2)
    assert np.any(a1 != a3)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5])
def test_p_out_of_range(p):
    with pytest.raises(ValueError, match="p must be strictly between 0 and 1"):
        binomial_split(np.ones((2, 2), dtype=int), p, rng=np.random.default_rng(0))


@pytest.mark.parametrize(("p", "ratio"), [(0.5, 0.3), (0.2, 0.9), (0.7, 1.0)])
def test_overlap_probabilities_sum_to_one_and_match_independent_samples(p, ratio):
    both, first, second = overlap_probabilities(p, ratio)
    assert both + first + second == pytest.approx(1.0)
    # Simulate the finite pool: two independent samples of it, at ratios p t and (1 - p) t, whose union has
    # ratio `ratio`; the shares of molecules in both / one only must match the formula.
    q = p * (1 - p)
    t = (1 - np.sqrt(1 - 4 * q * ratio)) / (2 * q)
    rng = np.random.default_rng(0)
    in_a = rng.random(2_000_000) < p * t
    in_b = rng.random(2_000_000) < (1 - p) * t
    union = in_a | in_b
    assert union.mean() == pytest.approx(ratio, rel=0.01)
    assert (in_a & in_b)[union].mean() == pytest.approx(both, abs=0.003)
    assert (in_a & ~in_b)[union].mean() == pytest.approx(first, abs=0.003)


def test_overlap_vanishes_for_a_large_pool():
    both, first, second = overlap_probabilities(0.3, 1e-9)
    assert both == pytest.approx(0.0, abs=1e-8)
    assert first == pytest.approx(0.3)
    assert second == pytest.approx(0.7)


def test_split_with_sample_ratio_shares_molecules(poisson_counts):
    _, counts = poisson_counts
    X = sparse.csr_matrix(counts)
    a, b = binomial_split(X, 0.5, rng=np.random.default_rng(0), sample_ratio=0.5)
    both, first, _ = overlap_probabilities(0.5, 0.5)
    shared = (a + b - X).toarray()
    assert np.all(shared >= 0)
    assert np.all(shared <= np.minimum(a.toarray(), b.toarray()))
    assert shared.sum() / counts.sum() == pytest.approx(both, rel=0.05)
    assert a.sum() / counts.sum() == pytest.approx(first + both, rel=0.05)


def test_sample_ratio_out_of_range():
    with pytest.raises(ValueError, match="sample_ratio must be in"):
        overlap_probabilities(0.5, 0.0)


@pytest.mark.parametrize("p", [0.001, 0.2, 0.5, 0.8])
@pytest.mark.parametrize("ratio", [1.0, 1 - 1e-12])
def test_split_at_sample_ratio_one(poisson_counts, p, ratio):
    """Regression: rounding made a zero probability -1e-19 near sample_ratio=1, and numpy refused it."""
    probabilities = overlap_probabilities(p, ratio)
    assert all(0 <= value <= 1 for value in probabilities)
    _, counts = poisson_counts
    a, b = binomial_split(counts, p, rng=np.random.default_rng(0), sample_ratio=ratio)
    assert np.all(a <= counts)
    assert np.all(b <= counts)
    if ratio == 1.0:  # the whole library is observed: one sample of it at ratio 1 is all of it
        larger = a if p >= 0.5 else b
        np.testing.assert_array_equal(larger, counts)
