from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse, stats

from scn2s.loss import (
    convert_sqrt_mean,
    heldout_sqrt_mse,
    poisson_nll,
    sqrt_poisson_mean,
    sqrt_poisson_mean_inverse,
)


@pytest.mark.parametrize("lam", [1e-8, 1e-3, 0.1, 0.7, 3.0, 25.0, 400.0, 5e4])
def test_sqrt_poisson_mean_matches_direct_sum(lam):
    k = np.arange(int(lam + 20 * np.sqrt(lam) + 50))
    expected = np.sum(stats.poisson.pmf(k, lam) * np.sqrt(k))
    assert sqrt_poisson_mean(lam) == pytest.approx(expected, rel=1e-5)


def test_sqrt_poisson_mean_is_not_the_square_root_at_low_counts():
    assert sqrt_poisson_mean(0.1) == pytest.approx(0.0972, abs=1e-3)
    assert sqrt_poisson_mean(0.1) < 0.35 * np.sqrt(0.1)
    assert sqrt_poisson_mean(0.0) == 0.0


def test_inverse_round_trips_and_maps_non_positive_to_zero():
    lam = np.geomspace(1e-7, 1e6, 200)
    np.testing.assert_allclose(sqrt_poisson_mean_inverse(sqrt_poisson_mean(lam)), lam, rtol=1e-5)
    np.testing.assert_array_equal(sqrt_poisson_mean_inverse(np.array([-1.0, 0.0])), [0.0, 0.0])


def test_conversion_between_depths_is_unbiased():
    rng = np.random.default_rng(0)
    for lam in (0.05, 0.5, 4.0):
        at_half = np.sqrt(rng.poisson(lam / 2, 1_000_000)).mean()
        at_full = np.sqrt(rng.poisson(lam, 1_000_000)).mean()
        assert convert_sqrt_mean(np.array(at_half), 2.0) == pytest.approx(at_full, rel=0.01)
        # the linear rescaling is biased at low counts
        if lam < 1:
            assert abs(np.sqrt(2.0) * at_half - at_full) > 0.1 * at_full
    np.testing.assert_array_equal(convert_sqrt_mean(np.array([0.3, 2.0]), 1.0), [0.3, 2.0])


def test_heldout_sqrt_mse_dense_and_sparse_agree():
    rng = np.random.default_rng(1)
    counts = rng.poisson(0.8, (30, 20))
    pred = rng.random((30, 20))
    expected = np.sum((np.sqrt(counts) - pred) ** 2)
    assert heldout_sqrt_mse(counts, pred) == pytest.approx(expected)
    assert heldout_sqrt_mse(sparse.csr_matrix(counts), pred) == pytest.approx(expected)


def test_poisson_nll_matches_scipy():
    rng = np.random.default_rng(2)
    rates = rng.gamma(1.0, 2.0, (25, 10))
    counts = rng.poisson(rates)
    expected = -stats.poisson.logpmf(counts, rates).mean()
    assert poisson_nll(counts, rates) == pytest.approx(expected)
    assert poisson_nll(sparse.csr_matrix(counts), rates) == pytest.approx(expected)


def test_poisson_nll_floors_zero_rates():
    assert np.isfinite(poisson_nll(np.array([[3, 0]]), np.array([[0.0, 0.0]])))


def test_heldout_loss_is_minimised_by_the_truth():
    """Expected held-out loss = error vs the truth + constant: the true rate beats a biased one."""
    rng = np.random.default_rng(3)
    lam = rng.gamma(0.5, 2.0, (400, 50))
    heldout = rng.poisson(lam)
    truth_loss = heldout_sqrt_mse(heldout, sqrt_poisson_mean(lam))
    for factor in (0.8, 1.25):
        assert heldout_sqrt_mse(heldout, sqrt_poisson_mean(factor * lam)) > truth_loss
    # squaring instead of E[sqrt] is worse too
    assert heldout_sqrt_mse(heldout, np.sqrt(lam)) > truth_loss
