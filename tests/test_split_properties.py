"""Property-based tests of the binomial split (hypothesis): exact sums, integers, sparsity, means."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse, stats

from scn2s.split import binomial_split, overlap_probabilities

# deterministic (derandomize) and bounded, so that CI runs the same examples every time
PROPERTY = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
STATISTICAL = settings(PROPERTY, max_examples=30)

INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
FLOAT_DTYPES = [np.float32, np.float64]
FAMILY_ALPHA = 1e-6  # chance that the means test fails on a correct split, per example


def _largest_count(dtype) -> int:
    """Largest count the dtype holds exactly, capped at 2**53 (the accepted maximum)."""
    if np.issubdtype(dtype, np.integer):
        return int(min(np.iinfo(dtype).max, 2**53))
    return 2 ** (np.finfo(dtype).nmant + 1)


@st.composite
def counts(draw, *, max_side: int = 10, max_value: int | None = None):
    """A count matrix: any accepted dtype, dense / CSR / CSC (optionally holding explicit zeros)."""
    dtype = np.dtype(draw(st.sampled_from(INT_DTYPES + FLOAT_DTYPES)))
    high = _largest_count(dtype) if max_value is None else min(max_value, _largest_count(dtype))
    values = st.one_of(st.just(0), st.integers(0, min(high, 6)), st.integers(0, high))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=max_side))
    dense = draw(hnp.arrays(dtype, shape, elements=values))
    kind = draw(st.sampled_from(["dense", "csr", "csc", "csr with explicit zeros"]))
    if kind == "dense":
        return dense
    if kind == "csc":
        return sparse.csc_matrix(dense)
    X = sparse.csr_matrix(dense)
    if kind == "csr with explicit zeros" and X.nnz:
        X.data[::2] = 0
    return X


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


def _exact(X) -> np.ndarray:
    """Values as Python-exact integers (object dtype), so that sums cannot overflow or round."""
    return _dense(X).astype(np.uint64).astype(object)


fractions = st.floats(min_value=0.0, max_value=1.0, exclude_min=True, exclude_max=True)
seeds = st.integers(0, 2**32 - 1)


@PROPERTY
@given(X=counts(), p=fractions, seed=seeds)
def test_halves_are_integers_that_sum_exactly_to_the_input(X, p, seed):
    before = X.copy()
    a, b = binomial_split(X, p, rng=np.random.default_rng(seed))
    for half in (a, b):
        assert type(half) is type(X)
        assert half.dtype == X.dtype
        assert half.shape == X.shape
        values = _dense(half)
        assert np.all(values >= 0)
        assert np.all(values == np.round(values))
    assert np.array_equal(_exact(a) + _exact(b), _exact(X))
    # the input is untouched
    if sparse.issparse(X):
        assert np.array_equal(X.data, before.data)
        assert np.array_equal(X.indices, before.indices)
        assert np.array_equal(X.indptr, before.indptr)
    else:
        assert np.array_equal(X, before)


@PROPERTY
@given(X=counts(), p=fractions, seed=seeds)
def test_halves_keep_the_sparsity_pattern_as_a_subset(X, p, seed):
    a, b = binomial_split(X, p, rng=np.random.default_rng(seed))
    zero = _dense(X) == 0
    for half in (a, b):
        assert np.all(_dense(half)[zero] == 0)
        if sparse.issparse(half):
            assert half.format == X.format
            assert np.all(half.data != 0)  # no explicit zeros, even where X had some
            stored = set(zip(*X.nonzero(), strict=True))
            assert set(zip(*half.nonzero(), strict=True)) <= stored


@PROPERTY
@given(X=counts(), p=fractions, ratio=st.floats(min_value=1e-6, max_value=1.0), seed=seeds)
def test_overlapping_halves_each_fit_in_the_input_and_share_the_excess(X, p, ratio, seed):
    a, b = binomial_split(X, p, rng=np.random.default_rng(seed), sample_ratio=ratio)
    A, B, N = _exact(a), _exact(b), _exact(X)
    assert np.all(A <= N)
    assert np.all(B <= N)
    shared = A + B - N  # molecules in both halves
    assert np.all(shared >= 0)
    assert np.all(shared <= np.minimum(A, B))


def _binomial_tail(successes: np.ndarray, trials: np.ndarray, prob: float) -> np.ndarray:
    """Exact two-sided p-values of ``successes ~ Binomial(trials, prob)``."""
    lower = stats.binom.cdf(successes, trials, prob)
    upper = stats.binom.sf(successes - 1, trials, prob)
    return np.minimum(1.0, 2 * np.minimum(lower, upper))


def _means_are_right(X: np.ndarray, draws: tuple[int, np.ndarray], prob: float) -> bool:
    """Whether the halves summed over many splits fit ``Binomial(n_draws * X, prob)``, entry by entry and in all.

    Each molecule goes to the half independently, so the sum over ``n`` splits of an entry with count ``x`` is
    exactly ``Binomial(n x, prob)``, and the grand total is ``Binomial(n sum(X), prob)``. Each entry and the
    total get an exact two-sided test, Bonferroni-corrected so that a correct split fails with probability at
    most ``FAMILY_ALPHA``: the tolerance follows from the binomial variance, not from a fixed number. The
    entries catch a bias in some entries, the total has the power to catch a small bias everywhere.
    """
    n_draws, summed = draws
    observed = X > 0
    successes = np.append(summed[observed], summed.sum())
    trials = np.append(n_draws * X[observed], n_draws * X.sum())
    p_values = _binomial_tail(successes, trials, prob)
    return bool(p_values.min() >= FAMILY_ALPHA / len(p_values))


def _sum_over_draws(X, p, n_draws, seed, sample_ratio=None, kind="dense"):
    """Split ``n_draws`` stacked copies of ``X`` at once; sum each entry's first and second halves."""
    stacked = np.tile(X, (n_draws, 1))
    if kind != "dense":
        stacked = {"csr": sparse.csr_matrix, "csc": sparse.csc_matrix}[kind](stacked)
    a, b = binomial_split(stacked, p, rng=np.random.default_rng(seed), sample_ratio=sample_ratio)
    shape = (n_draws, *X.shape)
    return _dense(a).astype(np.int64).reshape(shape).sum(axis=0), _dense(b).astype(np.int64).reshape(shape).sum(axis=0)


@STATISTICAL
@given(
    X=hnp.arrays(np.int64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6), elements=st.integers(0, 40)),
    p=st.floats(min_value=0.02, max_value=0.98),
    sample_ratio=st.one_of(st.none(), st.floats(min_value=0.01, max_value=1.0)),
    kind=st.sampled_from(["dense", "csr", "csc"]),
    seed=seeds,
)
def test_halves_have_the_right_means_over_many_draws(X, p, sample_ratio, kind, seed):
    n_draws = 400
    first, second = _sum_over_draws(X, p, n_draws, seed, sample_ratio, kind)
    if sample_ratio is None:
        prob_a, prob_b = p, 1 - p
    else:
        both, only_a, only_b = overlap_probabilities(p, sample_ratio)
        prob_a, prob_b = only_a + both, only_b + both
    assert _means_are_right(X, (n_draws, first), prob_a)
    assert _means_are_right(X, (n_draws, second), prob_b)


@pytest.mark.parametrize("shift", [0.01, -0.01])
def test_the_means_test_detects_a_slightly_wrong_fraction(shift):
    """Control: the statistical test above has the power to catch a split whose fraction is 0.01 off."""
    X = np.full((6, 6), 40)
    first, _ = _sum_over_draws(X, 0.3, 400, seed=0)
    assert _means_are_right(X, (400, first), 0.3)
    assert not _means_are_right(X, (400, first), 0.3 + shift)
