"""A cell embedding with the batches removed: Harmony's soft clustering and per-cluster linear correction.

Array level, no AnnData. Korsunsky et al., *Fast, sensitive and accurate integration of single-cell data with
Harmony*, Nature Methods 16, 1289 (2019): cells are clustered softly on the unit sphere with a penalty that favours
clusters holding every batch in its overall share; then, within each cluster, a ridge regression of the embedding
on the batches is removed, weighted by the cells' memberships. The two steps alternate until the objective settles.

The denoised layer never passes through here: only the embedding, for users who integrate (``sc.pp.neighbors``,
UMAP, clustering across samples).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.special import xlogy

__all__ = ["HarmonyResult", "harmonize"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HarmonyResult:
    """The corrected embedding and how the correction went.

    Attributes
    ----------
    embedding
        Cells x dimensions, the input's units (the correction is subtracted from the input embedding).
    n_clusters
        The soft clusters used.
    rounds
        Rounds of clustering and correction run.
    converged
        Whether the objective stopped falling (a relative decrease below ``tol``) within ``max_rounds``.
    objective
        The objective before the first round and after each round.
    params
        The run's ``theta``, ``ridge`` and ``sigma``.
    """

    embedding: np.ndarray
    n_clusters: int
    rounds: int
    converged: bool
    objective: list[float]
    params: dict


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _init_centroids(z: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 25) -> np.ndarray:
    """k-means++ seeds refined by spherical k-means on the unit rows ``z``: ``k x d`` unit centroids."""
    n = z.shape[0]
    centroids = np.empty((k, z.shape[1]))
    centroids[0] = z[rng.integers(n)]
    closest = 2.0 - 2.0 * z @ centroids[0]
    for j in range(1, k):
        weights = np.maximum(closest, 0.0)
        total = weights.sum()
        index = rng.choice(n, p=weights / total) if total > 0 else rng.integers(n)
        centroids[j] = z[index]
        closest = np.minimum(closest, 2.0 - 2.0 * z @ centroids[j])
    for _ in range(iterations):
        nearest = np.argmax(z @ centroids.T, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, nearest, z)
        empty = np.bincount(nearest, minlength=k) == 0
        sums[empty] = centroids[empty]
        centroids = _unit_rows(sums)
    return centroids


def harmonize(
    embedding: np.ndarray,
    groups: np.ndarray,
    *,
    n_groups: int | None = None,
    rng: np.random.Generator,
    n_clusters: int | None = None,
    theta: float = 2.0,
    ridge: float = 1.0,
    sigma: float = 0.1,
    max_rounds: int = 10,
    cluster_iterations: int = 20,
    block_size: float = 0.05,
    tol: float = 1e-4,
    cluster_tol: float = 1e-5,
) -> HarmonyResult:
    """Remove the batches ``groups`` from a cell ``embedding`` (Harmony).

    Parameters
    ----------
    embedding
        Cells x dimensions (a PCA, the low-rank scores, an autoencoder's code).
    groups
        Each cell's batch, codes ``0..n_groups-1``.
    n_groups
        The number of batches; ``groups.max() + 1`` if None.
    rng
        The random source of the cluster seeds and the order of the cell blocks.
    n_clusters
        Soft clusters; ``min(100, round(n_cells / 30))`` (at least 2) if None.
    theta
        The diversity penalty: 0 is plain soft k-means; larger values push every cluster towards each batch's share.
    ridge
        The ridge penalty of the batch coefficients of each cluster's regression (the intercept is not penalised).
    sigma
        The width of the soft assignment on the unit sphere.
    max_rounds
        Rounds of clustering and correction at most.
    cluster_iterations
        Centroid and assignment updates per round at most.
    block_size
        The share of cells whose assignments are updated at once.
    tol, cluster_tol
        The objective's relative decrease below which the rounds end, and the clustering within a round ends.

    Returns
    -------
    The corrected embedding (``float64``, same shape) and a summary of the run.
    """
    z = np.asarray(embedding, dtype=np.float64)
    groups = np.asarray(groups)
    if z.ndim != 2 or groups.shape != (z.shape[0],):
        msg = f"embedding must be cells x dimensions and groups one code per cell; got {z.shape} and {groups.shape}."
        raise ValueError(msg)
    if not np.isfinite(z).all():
        msg = "the embedding holds NaN or infinite values; Harmony needs finite coordinates."
        raise ValueError(msg)
    n = z.shape[0]
    b = int(groups.max()) + 1 if n_groups is None else int(n_groups)
    if not np.issubdtype(groups.dtype, np.integer) or groups.min() < 0 or groups.max() >= b:
        msg = f"groups must be integer codes 0..{b - 1} (n_groups={b}); got values {np.unique(groups)[:5]}."
        raise ValueError(msg)
    k = max(2, min(100, round(n / 30))) if n_clusters is None else int(n_clusters)
    k = min(k, n)
    phi = np.zeros((n, b))
    phi[np.arange(n), groups] = 1.0
    share = phi.mean(axis=0)  # each batch's share of the cells

    corrected = z.copy()
    unit = _unit_rows(corrected)
    centroids = _init_centroids(unit, k, rng)
    distance = 2.0 * (1.0 - unit @ centroids.T)  # n x k
    assign = _softmax_rows(-distance / sigma)
    expected = assign.sum(axis=0)[:, None] * share[None, :]  # k x b
    observed = assign.T @ phi  # k x b
    objective = [_objective(assign, distance, observed, expected, sigma, theta)]
    converged = False
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        assign, observed, expected, centroids, distance = _cluster(
            unit, phi, assign, observed, expected, share, sigma, theta, cluster_iterations, block_size, cluster_tol, rng
        )
        corrected = _correct(z, groups, assign, ridge, n_groups=b)
        unit = _unit_rows(corrected)
        distance = 2.0 * (1.0 - unit @ centroids.T)
        objective.append(_objective(assign, distance, observed, expected, sigma, theta))
        change = (objective[-2] - objective[-1]) / max(abs(objective[-2]), 1e-12)
        logger.debug("harmony round %d: objective %.6g (decrease %.2g)", rounds, objective[-1], change)
        if change < tol:  # the objective no longer falls
            converged = True
            break
    params = {"theta": theta, "ridge": ridge, "sigma": sigma}
    return HarmonyResult(corrected, k, rounds, converged, objective, params)


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def _objective(assign, distance, observed, expected, sigma: float, theta: float) -> float:
    """Harmony's objective: the soft k-means cost, the assignments' entropy and the diversity penalty."""
    kmeans = float(np.einsum("ij,ij->", assign, distance))
    entropy = float(sigma * xlogy(assign, assign).sum())
    diversity = float(sigma * theta * (observed * np.log((observed + 1.0) / (expected + 1.0))).sum())
    return kmeans + entropy + diversity


def _cluster(unit, phi, assign, observed, expected, share, sigma, theta, iterations, block_size, tol, rng):
    """One round of Harmony's clustering: centroids, then each block of cells' assignments with the penalty."""
    n = unit.shape[0]
    size = max(1, int(np.ceil(n * block_size)))
    previous = None
    for _ in range(iterations):
        centroids = _unit_rows(assign.T @ unit)  # k x d
        distance = 2.0 * (1.0 - unit @ centroids.T)
        plain = distance - distance.min(axis=1, keepdims=True)  # n x k, up to a row scale: exp(-distance / sigma)
        plain *= -1.0 / sigma
        np.exp(plain, out=plain)
        order = rng.permutation(n)
        for start in range(0, n, size):
            cells = order[start : start + size]
            batch = phi[cells]
            old = assign[cells]
            expected -= old.sum(axis=0)[:, None] * share[None, :]
            observed -= old.T @ batch
            weights = plain[cells] * (_diversity_factor(expected, observed, theta) @ batch.T).T
            new = weights / weights.sum(axis=1, keepdims=True)
            assign[cells] = new
            expected += new.sum(axis=0)[:, None] * share[None, :]
            observed += new.T @ batch
        value = _objective(assign, distance, observed, expected, sigma, theta)
        if previous is not None and (previous - value) / max(abs(previous), 1e-12) < tol:
            break
        previous = value
    return assign, observed, expected, centroids, distance


def _diversity_factor(expected: np.ndarray, observed: np.ndarray, theta: float) -> np.ndarray:
    """Harmony's diversity factor of each cluster and batch, ``((E + 1) / (O + 1)) ** theta`` (clusters x batches)."""
    return ((expected + 1.0) / (observed + 1.0)) ** theta


def _correct(z: np.ndarray, groups: np.ndarray, assign: np.ndarray, ridge: float, *, n_groups: int) -> np.ndarray:
    """The input embedding less each cluster's batch terms, weighted by the memberships (a mixture of experts).

    For each cluster, a weighted ridge regression of ``z`` on an intercept and the batches' indicators (weights: the
    memberships; the intercept unpenalised); each cell loses its own batch's coefficient of every cluster, weighted by
    its membership. The normal equations are assembled from per-batch sums, all clusters at once.
    """
    k, d = assign.shape[1], z.shape[1]
    mass = np.zeros((n_groups, k))  # each batch's membership in each cluster
    moment = np.zeros((n_groups, k, d))  # each batch's membership-weighted sum of z in each cluster
    for group in range(n_groups):
        cells = groups == group
        mass[group] = assign[cells].sum(axis=0)
        moment[group] = assign[cells].T @ z[cells]
    gram = np.zeros((k, n_groups + 1, n_groups + 1))
    gram[:, 0, 0] = mass.sum(axis=0)
    gram[:, 0, 1:] = gram[:, 1:, 0] = mass.T
    diagonal = np.arange(1, n_groups + 1)
    gram[:, diagonal, diagonal] = mass.T + ridge
    right = np.concatenate([moment.sum(axis=0)[:, None], moment.transpose(1, 0, 2)], axis=1)  # k x (1 + b) x d
    coefficients = np.linalg.solve(gram, right)[:, 1:]  # k x b x d: the batch terms, the intercept kept
    corrected = z.copy()
    for group in range(n_groups):
        cells = groups == group
        corrected[cells] -= assign[cells] @ coefficients[:, group]
    return corrected
