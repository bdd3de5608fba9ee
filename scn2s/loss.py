r"""Cross-molecule losses (array level).

Every candidate denoiser, of every family, predicts the Poisson rate of each held-out count. It is scored
by the mean squared error, in square-root space, between the held-out counts and the expected square root
of a Poisson variable with the predicted rate:

.. math::

    L = \frac{1}{n g} \sum_{ij} \left(\sqrt{x''_{ij}} - m(\hat\lambda''_{ij})\right)^2,
    \qquad m(\lambda) = \mathbb{E}\sqrt{\mathrm{Poisson}(\lambda)}.

Given the truth, the held-out counts are independent of the prediction, so the expected loss equals the
error of :math:`m(\hat\lambda'')` against :math:`m(\lambda'')` plus a constant that does not depend on the
candidate. The square root stabilises the Poisson variance (close to 1/4 per entry), so every entry counts
about equally. :math:`m` is not :math:`\sqrt{\lambda}`: at low counts the two differ by a large factor
(``m(0.1) ~ 0.095`` while ``sqrt(0.1) ~ 0.32``), which is why a linear rescaling of square-root values
between depths is biased and :func:`convert_sqrt_mean` is used instead.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from scipy import sparse, special

__all__ = [
    "convert_sqrt_mean",
    "heldout_sqrt_mse",
    "poisson_nll",
    "sqrt_mean_table",
    "sqrt_poisson_mean",
    "sqrt_poisson_mean_inverse",
]

_LAM_MIN = 1e-6
_LAM_MAX = 1e4


@cache
def sqrt_mean_table() -> tuple[np.ndarray, np.ndarray]:
    """log(lambda) and log(m(lambda)) on a grid, computed once by direct summation."""
    lam = np.geomspace(_LAM_MIN, _LAM_MAX, 1200)
    k_max = int(_LAM_MAX + 12 * np.sqrt(_LAM_MAX) + 50)
    k = np.arange(k_max + 1, dtype=np.float64)
    sqrt_k = np.sqrt(k)
    log_k_fact = special.gammaln(k + 1)
    m = np.empty_like(lam)
    for i, value in enumerate(lam):
        lo = int(max(0.0, value - 12 * np.sqrt(value) - 20))
        hi = int(value + 12 * np.sqrt(value) + 30)
        kk = slice(lo, hi + 1)
        log_pmf = k[kk] * np.log(value) - value - log_k_fact[kk]
        m[i] = np.dot(np.exp(log_pmf), sqrt_k[kk])
    return np.log(lam), np.log(m)


def sqrt_poisson_mean(lam: np.ndarray | float) -> np.ndarray:
    r""":math:`m(\lambda) = \mathbb{E}\sqrt{X}` for :math:`X \sim \mathrm{Poisson}(\lambda)`.

    Exact (to ~1e-6 relative) for all :math:`\lambda \ge 0`: tabulated by summation, ``lambda`` itself below
    ``1e-6`` (where :math:`m(\lambda) = \lambda + O(\lambda^2)`) and the asymptotic series
    :math:`\sqrt\lambda - 1/(8\sqrt\lambda)` above ``1e4``.
    """
    lam = np.asarray(lam, dtype=np.float64)
    log_lam, log_m = sqrt_mean_table()
    out = np.empty_like(lam)
    low = lam < _LAM_MIN
    high = lam > _LAM_MAX
    mid = ~(low | high)
    out[low] = np.maximum(lam[low], 0.0)
    out[mid] = np.exp(np.interp(np.log(lam[mid]), log_lam, log_m))
    out[high] = np.sqrt(lam[high]) - 1 / (8 * np.sqrt(lam[high]))
    return out


@cache
def _inverse_table() -> tuple[float, float, np.ndarray]:
    """``log(lambda)`` on a uniform grid of ``log(m)``: start, step and values (2**16 points)."""
    log_lam, log_m = sqrt_mean_table()
    grid = np.linspace(log_m[0], log_m[-1], 1 << 16)
    return float(grid[0]), float(grid[1] - grid[0]), np.interp(grid, log_m, log_lam)


def sqrt_poisson_mean_inverse(y: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`sqrt_poisson_mean`: the Poisson rate whose square root has mean ``y``.

    Non-positive ``y`` maps to rate 0. Between the ends of the table, ``log(lambda)`` is interpolated on a
    uniform grid of ``log(m)``, so a value costs an index computation rather than a search (this runs on every
    entry of the output).
    """
    y = np.asarray(y, dtype=np.float64)
    shape = y.shape
    y = y.reshape(-1)
    _, log_m = sqrt_mean_table()
    y_min, y_max = np.exp(log_m[0]), np.exp(log_m[-1])
    start, step, values = _inverse_table()
    # position on the grid, clipped to its ends (values outside are replaced below)
    position = np.log(np.clip(y, y_min, y_max))
    position -= start
    position /= step
    np.clip(position, 0, len(values) - 1.000001, out=position)
    index = position.astype(np.intp)
    position -= index
    out = np.take(values, index)
    out += position * (np.take(values, index + 1) - out)
    np.exp(out, out=out)
    low = y < y_min
    if low.any():
        out[low] = np.maximum(y[low], 0.0)
    high = y > y_max
    if high.any():
        # sqrt(l) - 1 / (8 sqrt(l)) = y  <=>  sqrt(l) = (y + sqrt(y**2 + 1/2)) / 2
        out[high] = ((y[high] + np.sqrt(y[high] ** 2 + 0.5)) / 2) ** 2
    return out.reshape(shape)


def convert_sqrt_mean(y: np.ndarray, ratio: float) -> np.ndarray:
    """Carry an expected square-root count from one depth to another.

    ``m(ratio * m^{-1}(y))``: the expected square root at depth ``ratio`` times the depth at which ``y`` is
    the expected square root. Identity for ``ratio == 1``.
    """
    if ratio == 1:
        return np.asarray(y, dtype=np.float64)
    return sqrt_poisson_mean(ratio * sqrt_poisson_mean_inverse(y))


def heldout_sqrt_mse(heldout: np.ndarray | sparse.spmatrix, predicted_sqrt_mean: np.ndarray) -> float:
    """Summed squared error between ``sqrt(heldout)`` and a predicted ``m(rate)`` (dense, same shape).

    Divide by the number of entries for the per-entry loss of the module docstring.
    """
    target = heldout.toarray() if sparse.issparse(heldout) else np.asarray(heldout)
    diff = np.sqrt(target, dtype=np.float64) - predicted_sqrt_mean
    return float(np.einsum("ij,ij->", diff, diff))


def poisson_nll(counts: np.ndarray | sparse.spmatrix, rates: np.ndarray, *, floor: float = 1e-4) -> float:
    """Mean Poisson negative log-likelihood per entry, ``rate - x log(rate) + log(x!)``.

    ``rates`` are floored at ``floor`` so that a zero prediction for an observed molecule stays finite.
    """
    rates = np.maximum(np.asarray(rates, dtype=np.float64), floor)
    if sparse.issparse(counts):
        counts = sparse.csr_matrix(counts)
        rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
        x = counts.data.astype(np.float64)
        data_term = np.sum(x * np.log(rates[rows, counts.indices]) - special.gammaln(x + 1))
    else:
        x = np.asarray(counts, dtype=np.float64)
        data_term = np.sum(x * np.log(rates) - special.gammaln(x + 1))
    return float((rates.sum() - data_term) / rates.size)
