"""Binomial thinning of molecule counts into two halves (array level).

A UMI count is modelled as a Poisson sample of a cell's expression. Thinning each count
``X' ~ Binomial(X, p)``, ``X'' = X - X'`` gives two matrices that, given the truth, are independent
Poisson samples at depths ``p`` and ``1 - p`` (Noise2Self; molecular cross-validation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from ._validate import check_counts, check_fraction, make_rng

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["binomial_split", "overlap_probabilities"]


def overlap_probabilities(p: float, sample_ratio: float) -> tuple[float, float, float]:
    """Per-molecule probabilities of the finite-pool split.

    When the observed molecules ``X ~ Binomial(M, a)`` are a sample, at ratio ``a = sample_ratio``, of a
    finite pool ``M`` (a sequenced library), two independent samples of that pool at ratios ``p t`` and
    ``(1 - p) t`` overlap. Choosing ``t`` so that their union is the observed sample,
    ``t - p (1 - p) t**2 = a``, that is ``t = (1 - sqrt(1 - 4 p (1 - p) a)) / (2 p (1 - p))``, each
    observed molecule goes to

    * both halves with probability ``p (1 - p) t**2 / a``,
    * the first half only with probability ``p t (1 - (1 - p) t) / a``,
    * the second half only with probability ``(1 - p) t (1 - p t) / a``.

    As ``a -> 0`` (a pool much larger than the sample) this is plain thinning: ``(0, p, 1 - p)``.

    Parameters
    ----------
    p
        Fraction of the molecules for the first half, in (0, 1).
    sample_ratio
        Fraction of the library's molecules observed in the counts, in (0, 1].

    Returns
    -------
    ``(both, first_only, second_only)``, which sum to one.
    """
    check_fraction("p", p)
    check_fraction("sample_ratio", sample_ratio, closed_right=True)
    q = p * (1 - p)
    t = (1 - np.sqrt(max(1 - 4 * q * sample_ratio, 0.0))) / (2 * q)
    both = q * t**2 / sample_ratio
    first = p * t * (1 - (1 - p) * t) / sample_ratio
    second = (1 - p) * t * (1 - p * t) / sample_ratio
    # near sample_ratio = 1 a probability that is exactly 0 can come out as -1e-19
    return tuple(float(np.clip(value, 0.0, 1.0)) for value in (both, first, second))


def binomial_split(
    X: ArrayLike | sparse.spmatrix | sparse.sparray,
    p: float = 0.5,
    *,
    rng: int | np.random.Generator | np.random.RandomState | None,
    sample_ratio: float | None = None,
) -> tuple:
    """Split molecule counts into two halves by binomial thinning.

    Parameters
    ----------
    X
        Non-negative integer counts, dense or CSR/CSC, of any integer dtype (signed or unsigned, 8 to 64 bits)
        or a float dtype holding integers, finite and at most ``2**53``; anything else raises an error that
        says what is wrong. Never modified: the thinning is done in int64 and the halves are cast back to
        ``X``'s dtype, which holds them since neither half exceeds ``X``; except float counts above the largest
        integer up to which the float dtype holds every integer (``2**24`` for float32, ``2048`` for float16),
        whose halves that dtype may not hold: their halves are int64, exact.
    p
        Expected fraction of each count that goes to the first half.
    rng
        Source of randomness: a :class:`numpy.random.Generator` (used as it is), an integer seed, ``None`` or a
        :class:`numpy.random.RandomState` (:func:`scn2s._validate.make_rng`).
    sample_ratio
        If given, the finite-pool overlap correction of molecular cross-validation
        (see :func:`overlap_probabilities`): molecules are shared between the halves so that they
        behave as two independent samples of the library. The halves then sum to more than ``X``.

    Returns
    -------
    ``(X_a, X_b)`` of the same kind (dense, CSR or CSC), shape and dtype as ``X`` (int64 for float counts beyond
    their dtype's exact integers, above), integer valued.
    Without ``sample_ratio``, ``X_a + X_b == X`` exactly. Sparse halves hold no explicit zeros, so their
    sparsity patterns are subsets of ``X``'s; a sparse input is never densified.
    """
    check_fraction("p", p)
    if sample_ratio is not None:
        check_fraction("sample_ratio", sample_ratio, closed_right=True)
    rng = make_rng(rng)
    check_counts(X)
    if sparse.issparse(X):
        if X.format not in {"csr", "csc"}:
            X = X.tocsr()
        a_data, b_data = _split_values(X.data, p, rng, sample_ratio)
        return tuple(_compact(X, data) for data in (a_data, b_data))
    X = np.asarray(X)
    return _split_values(X, p, rng, sample_ratio)


def _compact(X: sparse.spmatrix, data: np.ndarray) -> sparse.spmatrix:
    """A matrix of ``X``'s kind with values ``data`` on ``X``'s pattern, zeros dropped, in arrays of its own size."""
    keep = data != 0
    positions = np.zeros(len(keep) + 1, dtype=X.indptr.dtype)
    np.cumsum(keep, out=positions[1:])
    return type(X)((data[keep], X.indices[keep], positions[X.indptr]), shape=X.shape)


def _split_values(
    values: np.ndarray, p: float, rng: np.random.Generator, sample_ratio: float | None
) -> tuple[np.ndarray, np.ndarray]:
    # integer counts are thinned in their own dtype (neither half exceeds them); float counts as int64
    n = values if values.dtype.kind in "iu" else values.astype(np.int64)
    if sample_ratio is None:
        a = _thin(n, p, rng)
        b = n - a
    else:
        both_p, first_p, second_p = overlap_probabilities(p, sample_ratio)
        first = _thin(n, first_p, rng)
        rest = n - first
        # given not first-only: second-only vs both
        rest_p = second_p + both_p
        second = _thin(rest, second_p / rest_p, rng) if rest_p > 0 else np.zeros_like(rest)
        both = rest - second
        a = first + both
        b = second + both
    dtype = values.dtype if _holds_every_integer(values.dtype, n) else np.dtype(np.int64)
    return a.astype(dtype, copy=False), b.astype(dtype, copy=False)


def _holds_every_integer(dtype: np.dtype, n: np.ndarray) -> bool:
    """Whether ``dtype`` holds every integer from 0 to the largest of ``n``: any half of ``n`` cast to it is exact."""
    if dtype.kind in "iu" or n.size == 0:
        return True
    return int(n.max()) <= 2 ** (np.finfo(dtype).nmant + 1)


_LOW_BITS = (np.left_shift(np.uint64(1), np.arange(64, dtype=np.uint64)) - np.uint64(1)).astype(np.uint64)
"""``_LOW_BITS[n]``: a 64-bit word whose ``n`` low bits are set (``n < 64``)."""


def _thin(n: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """``Binomial(n, p)`` element-wise, in ``n``'s dtype.

    For ``p = 0.5`` a count ``n < 64`` is thinned by counting the set bits among ``n`` random bits (each bit of
    the generator's raw 64-bit output is a fair coin), several times faster than a binomial draw per count.
    Otherwise counts of one (most UMI counts) are thinned by a uniform draw, and larger counts by
    :meth:`numpy.random.Generator.binomial`.
    """
    out = np.zeros(n.shape, dtype=n.dtype)
    if p == 0.5:
        small = (n > 0) & (n < 64)
        bits = rng.bit_generator.random_raw(int(np.count_nonzero(small)))
        out[small] = np.bitwise_count(bits & _LOW_BITS[n[small]])
        many = n >= 64
    else:
        ones = n == 1
        out[ones] = rng.random(int(np.count_nonzero(ones))) < p
        many = n > 1
    if many.any():
        out[many] = rng.binomial(n[many].astype(np.int64), p)
    return out
