"""Low-rank denoising in square-root space: one truncated SVD scores every rank (array level).

Counts are library-normalised and square-root transformed, ``Y = sqrt(X * c / s)`` with ``s`` the cell's
library size and ``c`` a common target, which keeps zeros as zeros and stabilises the Poisson variance. A
rank-``k`` reconstruction of the column-centred ``Y`` estimates ``E[Y]``; mapped back to a cell's own depth,
``sqrt(s / c) * Y_hat`` estimates ``m(lambda)``, the expected square root of its Poisson counts, so the
denoised expected counts are ``m^{-1}(sqrt(s / c) * Y_hat)`` (see :mod:`scn2s.loss`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol

import numpy as np
from scipy import linalg, sparse
from threadpoolctl import threadpool_limits

from .._sparse import canonical_csr
from ..loss import convert_sqrt_mean, sqrt_poisson_mean_inverse

__all__ = [
    "BlockOperator",
    "CentredOperator",
    "LowRankFactors",
    "NumpyTall",
    "block_loss_per_rank",
    "cell_scale",
    "centred_operator",
    "heldout_loss_per_rank",
    "library_scale",
    "orthonormalize",
    "randomized_svd",
    "reconstruct_counts",
    "sqrt_normalize",
    "transfer_rank",
    "unscaled_counts",
]


@dataclass
class LowRankFactors:
    """A centred truncated SVD, ``Y ~ 1 mean^T + U diag(s) Vt``.

    With ``groups`` (each cell's batch, codes ``0..b-1``), ``mean`` holds one row per batch and each cell is
    centred on its batch's means: ``Y ~ G mean + U diag(s) Vt`` (``G`` the cells' one-hot batches).
    """

    mean: np.ndarray  # (n_genes,), or (n_batches, n_genes) with groups
    U: np.ndarray  # (n_cells, k), orthonormal columns
    s: np.ndarray  # (k,), descending
    Vt: np.ndarray  # (k, n_genes), orthonormal rows
    groups: np.ndarray | None = None  # (n_cells,) each cell's batch code, or None: one mean for all cells

    @property
    def max_rank(self) -> int:
        """Number of components."""
        return len(self.s)

    def row_means(self, rows: slice | np.ndarray = slice(None), groups: np.ndarray | None = None) -> np.ndarray:
        """The centre of the cells ``rows``: ``mean`` itself ``(genes,)``, or each cell's batch means.

        ``groups`` (codes of the cells ``rows``) replaces their own batches, e.g. one reference batch for all.
        """
        if self.groups is None:
            return self.mean
        return self.mean[self.groups[rows] if groups is None else groups]


Blocks = Sequence[sparse.csr_matrix]
"""A matrix as a sequence of CSR blocks of consecutive rows (:class:`scn2s._blocks.RowBlocks` order)."""


def sqrt_normalize(
    counts: sparse.csr_matrix, library_size: np.ndarray, target_sum: float, *, dtype=np.float32
) -> sparse.csr_matrix:
    """``sqrt(counts * target_sum / library_size)`` per cell, as a new CSR matrix (zero rows stay zero).

    Duplicate entries of ``counts`` are summed before the square root. The values are stored as ``dtype``
    (``float32`` by default: they feed the products of :func:`randomized_svd`, which accumulate in float64).
    """
    counts = canonical_csr(counts)
    scale = np.divide(target_sum, library_size, out=np.zeros(len(library_size)), where=library_size > 0)
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    data = np.sqrt(counts.data * scale[rows]).astype(dtype, copy=False)
    return sparse.csr_matrix((data, counts.indices.copy(), counts.indptr.copy()), shape=counts.shape)


def _as_blocks(Y) -> list:
    """``Y`` as a list of row blocks: a single matrix is one block."""
    if isinstance(Y, np.ndarray) or sparse.issparse(Y):
        return [Y]
    return list(Y)


def _block_rows(blocks: list) -> list[slice]:
    bounds = np.cumsum([0] + [block.shape[0] for block in blocks])
    return [slice(int(a), int(b)) for a, b in pairwise(bounds)]


class NumpyTall:
    """The operations :func:`orthonormalize` and :func:`randomized_svd` need, on a tall numpy array.

    :class:`scn2s.lowrank.dask.DaskTall` has the same, on a dask array chunked by rows.
    """

    @staticmethod
    def gram(A: np.ndarray) -> np.ndarray:
        """``A.T @ A``."""
        return A.T @ A

    @staticmethod
    def solve(A: np.ndarray, R: np.ndarray) -> np.ndarray:
        """``A @ inv(R)`` for an upper triangular ``R``, in ``A``'s memory."""
        # A.T is a Fortran-ordered view of a C-ordered A: the solve writes into A's memory
        return linalg.solve_triangular(R, A.T, trans="T", lower=False, overwrite_b=True, check_finite=False).T

    @staticmethod
    def qr(A: np.ndarray) -> np.ndarray:
        """The ``Q`` of Householder QR."""
        return np.linalg.qr(A)[0]

    @staticmethod
    def gather(A: np.ndarray) -> np.ndarray:
        """``A`` as a numpy array (it is one)."""
        return A


class CentredOperator(Protocol):
    """The column-centred ``Y - 1 mean^T`` of a cells x genes ``Y``, seen only through products.

    :func:`randomized_svd` needs nothing else, so one implementation serves every place ``Y`` may live:
    :class:`BlockOperator` (row blocks in memory) and :class:`scn2s.lowrank.dask.DaskOperator` (the chunks of a
    dask array, on the workers of a cluster). A *tall* matrix (cells x ``w``) is whatever :meth:`right` returns: a
    numpy array, or a dask array chunked like ``Y``'s rows; ``tall`` holds the operations on it that
    :func:`orthonormalize` needs (:class:`NumpyTall` for numpy arrays). Everything genes x ``w`` or smaller is a
    numpy array.
    """

    shape: tuple[int, int]
    mean: np.ndarray  # (genes,) float64: the column means of Y
    tall: type  # the operations on the tall matrices of right(): NumpyTall, or the dask counterpart

    def right(self, M: np.ndarray):
        """``(Y - 1 mean^T) @ M`` for a genes x ``w`` ``M``: a tall matrix."""

    def left(self, Q) -> np.ndarray:
        """``(Y - 1 mean^T).T @ Q`` for a tall ``Q``: a genes x ``w`` numpy array."""


class BlockOperator:
    """:class:`CentredOperator` of ``Y`` given as CSR (or dense) row blocks in memory, multiplied one at a time.

    The products run in the blocks' precision (float32 halves their memory traffic) and accumulate in float64.
    """

    tall = NumpyTall

    def __init__(self, blocks: Sequence, groups: np.ndarray | None = None) -> None:
        self.blocks = list(blocks)
        self.rows = _block_rows(self.blocks)
        n = self.rows[-1].stop
        self.shape = (n, self.blocks[0].shape[1])
        self.groups = None if groups is None else np.asarray(groups, dtype=np.intp)
        if self.groups is None:
            sums = sum(np.asarray(block.sum(axis=0, dtype=np.float64)).ravel() for block in self.blocks)
            self.mean = sums / max(n, 1)
        else:
            indicator = _indicator(self.groups)  # batches x cells
            sums = np.zeros((indicator.shape[0], self.shape[1]))
            for r, block in zip(self.rows, self.blocks, strict=True):
                part = indicator[:, r] @ block
                sums += part.toarray() if sparse.issparse(part) else np.asarray(part)
            self.mean = sums / np.maximum(np.bincount(self.groups, minlength=indicator.shape[0]), 1)[:, None]
            self._indicator = indicator

    def right(self, M: np.ndarray) -> np.ndarray:
        """``(Y - 1 mean^T) @ M`` (each cell less its batch's means, with groups), block by block."""
        out = np.empty((self.shape[0], M.shape[1]))
        for r, block in zip(self.rows, self.blocks, strict=True):
            out[r] = block @ M.astype(block.dtype, copy=False)
        if self.groups is None:
            out -= self.mean @ M
        else:
            out -= (self.mean @ M)[self.groups]
        return out

    def left(self, Q: np.ndarray) -> np.ndarray:
        """``(Y - 1 mean^T).T @ Q`` (each cell less its batch's means, with groups), accumulated over the blocks."""
        out = np.zeros((self.shape[1], Q.shape[1]))
        for r, block in zip(self.rows, self.blocks, strict=True):
            out += block.T @ Q[r].astype(block.dtype, copy=False)
        if self.groups is None:
            out -= np.outer(self.mean, Q.sum(axis=0))
        else:
            out -= self.mean.T @ (self._indicator @ Q)
        return out


def _indicator(groups: np.ndarray) -> sparse.csr_matrix:
    """The batches x cells one-hot matrix of the cells' batch codes."""
    n = len(groups)
    return sparse.csr_matrix((np.ones(n), (groups, np.arange(n))), shape=(int(groups.max()) + 1, n))


def centred_operator(Y, groups: np.ndarray | None = None) -> CentredOperator:
    """``Y`` (a matrix, a sequence of row blocks or already an operator) as a :class:`CentredOperator`.

    ``groups``: each cell's batch code, to centre each cell on its batch's means (not with an operator).
    """
    if hasattr(Y, "right") and hasattr(Y, "left"):
        return Y
    return BlockOperator(_as_blocks(Y), groups)


def randomized_svd(
    Y: sparse.spmatrix | np.ndarray | Blocks | CentredOperator,
    rank: int,
    *,
    rng: np.random.Generator,
    n_oversamples: int = 10,
    n_iter: int = 4,
) -> LowRankFactors:
    """Truncated SVD of the column-centred ``Y`` without forming it (Halko, Martinsson & Tropp 2011).

    Centring is implicit: products with ``Y - 1 mean^T`` are computed as products with ``Y`` minus a rank-one
    correction, so a sparse ``Y`` stays sparse. ``Y`` may be given as a sequence of row blocks, which are
    multiplied one at a time, or as any :class:`CentredOperator`, such as
    :class:`scn2s.lowrank.dask.DaskOperator`, whose products run chunk by chunk on the workers of a
    cluster. The products with ``Y`` run
    in ``Y``'s precision (float32 halves their memory traffic) and accumulate in float64; everything dense is
    float64. Cost ``O(nnz * (rank + n_oversamples) * n_iter)``. The dense steps are tall and thin (QR of
    ``cells x width``), where BLAS threads gain little and, on a busy machine, lose a lot to spinning; they run
    on one BLAS thread.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _randomized_svd(centred_operator(Y), rank, rng=rng, n_oversamples=n_oversamples, n_iter=n_iter)


def _randomized_svd(
    op: CentredOperator, rank: int, *, rng: np.random.Generator, n_oversamples: int, n_iter: int
) -> LowRankFactors:
    n, g = op.shape
    rank = int(min(rank, n - 1, g))
    if rank < 1:
        msg = f"Need at least 2 cells and 1 gene for a rank-1 fit, got shape {(n, g)}."
        raise ValueError(msg)
    # a sketch of at least 40 columns: small ranks of a flat noise spectrum converge poorly otherwise
    width = min(max(rank + n_oversamples, 40), n, g)
    tall = op.tall
    Q = orthonormalize(op.right(rng.standard_normal((g, width))), overwrite=True, ops=tall)
    for _ in range(n_iter):
        Z = orthonormalize(op.left(Q), overwrite=True)
        del Q  # a cells x width array: free it before the next one is made
        Q = orthonormalize(op.right(Z), overwrite=True, ops=tall)
    B = op.left(Q).T  # (width, g) = Q^T (Y - 1 mean^T)
    Ub, s, Vt = np.linalg.svd(B, full_matrices=False)
    U = tall.gather(Q @ Ub[:, :rank])
    return LowRankFactors(mean=op.mean, U=U, s=s[:rank], Vt=Vt[:rank], groups=getattr(op, "groups", None))


def orthonormalize(A, *, overwrite: bool = False, ops: type = NumpyTall):
    """An orthonormal basis of the columns of a tall ``A`` (``n x w``, full column rank), same shape.

    CholeskyQR2 (Fukaya et al. 2014): ``Q = A R^{-1}`` with ``R^T R = A^T A``, twice. It costs two Gram
    matrices and two triangular solves, an order of magnitude less than Householder QR on a million rows, and
    the second pass restores orthogonality to working precision while the columns' condition number stays
    below about ``1e7``. Householder QR of the current basis (the same column space) is used when it does not
    (a Cholesky failure, or a second pass that still changes the basis). ``A`` may be a numpy array or a dask
    array chunked by rows (whole columns per chunk): then the ``w x w`` Gram matrices are summed from the chunks on
    the cluster, the solves run chunk by chunk, and the result stays on the workers: pass
    ``ops=``:class:`scn2s.lowrank.dask.DaskTall`. With ``overwrite``, a numpy ``A`` (C-ordered float64) is
    overwritten by the solves, so no other ``n x w`` array is allocated.
    """
    Q = A if overwrite or ops is not NumpyTall else A.copy()
    try:
        for _ in range(2):
            R = linalg.cholesky(ops.gram(Q), lower=False, check_finite=False)
            Q = ops.solve(Q, R)
        # a numpy Q is checked to be finite; a dask Q is not (each pass is a round trip to the cluster): it is
        # CholeskyQR2's second pass, whose Gram matrix was finite for R to exist, and a non-finite or singular R
        # fails the check that diag(R) is close to 1, which sends it to Householder QR as a non-finite Q would
        finite = not isinstance(Q, np.ndarray) or bool(np.isfinite(Q).all())
        if finite and np.allclose(np.diag(R), 1.0, atol=1e-3):
            return Q
    except linalg.LinAlgError:
        pass
    return ops.qr(Q)


def heldout_loss_per_rank(
    factors: LowRankFactors,
    cell_scale: np.ndarray,
    heldout: sparse.csr_matrix | Blocks,
    *,
    depth_ratio: float = 1.0,
    chunk_size: int = 2048,
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """Summed held-out loss of every rank ``0..K`` (0: the gene means alone) from one factorisation.

    The prediction of rank ``k`` for ``E[sqrt(heldout)]`` is
    ``convert_sqrt_mean(cell_scale * (mean + U_k diag(s_k) Vt_k), depth_ratio)``, scored by
    :func:`scn2s.loss.heldout_sqrt_mse`. With ``depth_ratio == 1`` (equal-depth halves, ``p = 0.5``) the
    prediction is linear in the components and all ranks are scored exactly in ``O(nnz * K + n * K)``
    from the expansion ``|T - P_k|^2 = |T|^2 - 2 <T, P_k> + |P_k|^2``. Otherwise the depth conversion is
    non-linear and ranks are scored on dense row chunks, ``O(n * g * K)``.

    Parameters
    ----------
    factors
        Centred truncated SVD of the normalised training half.
    cell_scale
        Per-cell factor from normalised square-root space back to the training half's counts.
    heldout
        Held-out counts (CSR), or a sequence of CSR blocks of consecutive cells
        (:func:`scn2s.lowrank.dask.heldout_loss_per_rank_chunks` scores a dask array of them on its workers).
    depth_ratio
        Expected depth of the held-out half over that of the training half, ``(1 - p) / p``.
    chunk_size
        Rows per dense chunk on the non-linear path.
    keep
        Which cells score (a boolean mask, :meth:`scn2s.select.Splits.scored_mask`); ``None``: all.

    Returns
    -------
    Array of length ``K + 1``: the summed squared error of each rank.
    """
    blocks = _as_blocks(heldout)
    loss = np.zeros(factors.max_rank + 1)
    for rows, block in zip(_block_rows(blocks), blocks, strict=True):
        groups = None if factors.groups is None else factors.groups[rows]
        loss += block_loss_per_rank(
            factors,
            cell_scale[rows],
            factors.U[rows],
            block,
            depth_ratio,
            chunk_size,
            groups=groups,
            keep=None if keep is None else keep[rows],
        )
    return loss


def block_loss_per_rank(
    factors: LowRankFactors,
    a: np.ndarray,
    U: np.ndarray,
    heldout: sparse.csr_matrix,
    depth_ratio: float = 1.0,
    chunk_size: int = 2048,
    *,
    groups: np.ndarray | None = None,
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """The summed held-out loss of every rank on one block of cells (:func:`heldout_loss_per_rank`'s terms).

    ``a`` and ``U`` are the block's rows of the cell scale and of ``factors.U`` (whose own ``U`` is not read), and
    ``groups`` its rows of ``factors.groups`` (with batches), so a block is scored from its own rows alone,
    wherever it lives. ``keep``: the block's rows that score (a boolean mask; ``None``: all).
    """
    heldout = canonical_csr(heldout)
    if keep is not None and not keep.all():
        kept = np.flatnonzero(keep)
        heldout, a, U = heldout[kept], a[kept], U[kept]
        groups = None if groups is None else groups[kept]
    if depth_ratio == 1.0:
        return _loss_per_rank_linear(factors, a, U, heldout, groups)
    return _loss_per_rank_converted(factors, a, U, heldout, depth_ratio, chunk_size, groups)


def _loss_per_rank_linear(
    factors: LowRankFactors, a: np.ndarray, U: np.ndarray, heldout: sparse.csr_matrix, groups: np.ndarray | None
) -> np.ndarray:
    mean, s, Vt = factors.mean, factors.s, factors.Vt
    T = heldout.astype(np.float64)
    T.data = np.sqrt(T.data)
    target_sq = float(np.sum(T.data**2))
    a2 = a**2
    cross = s * np.einsum("i,ij,ij->j", a, U, np.asarray(T @ Vt.T))
    if groups is None:
        # <T, P_k> = sum_i a_i (T mean)_i + sum_{j<=k} s_j sum_i a_i U_ij (T V)_ij
        cross0 = float(a @ (T @ mean))
        # |P_k|^2 = sum_i a_i^2 (|mean|^2 + 2 sum_{j<=k} s_j U_ij (Vt mean)_j + sum_{j<=k} s_j^2 U_ij^2)
        pred0 = float(a2.sum() * (mean @ mean))
        pred = 2 * s * (Vt @ mean) * (a2 @ U) + s**2 * (a2 @ U**2)
    else:  # the same with each cell's batch means m_i = mean[groups[i]]
        cells = np.arange(len(groups))
        cross0 = float(a @ np.asarray(T @ mean.T)[cells, groups])
        pred0 = float(a2 @ np.einsum("bg,bg->b", mean, mean)[groups])
        pred = 2 * s * np.einsum("i,ij,ij->j", a2, U, (Vt @ mean.T).T[groups]) + s**2 * (a2 @ U**2)
    loss = target_sq - 2 * np.concatenate([[cross0], cross0 + np.cumsum(cross)])
    return loss + np.concatenate([[pred0], pred0 + np.cumsum(pred)])


def _loss_per_rank_converted(
    factors: LowRankFactors,
    a: np.ndarray,
    U: np.ndarray,
    heldout: sparse.csr_matrix,
    ratio: float,
    chunk_size: int,
    groups: np.ndarray | None,
) -> np.ndarray:
    mean, s, Vt = factors.mean, factors.s, factors.Vt
    loss = np.zeros(len(s) + 1)
    for start in range(0, heldout.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        target = np.sqrt(heldout[rows].toarray().astype(np.float64))
        pred = a[rows, None] * (mean[None, :] if groups is None else mean[groups[rows]])
        for k in range(len(s) + 1):
            if k > 0:
                pred += np.outer(a[rows] * U[rows, k - 1] * s[k - 1], Vt[k - 1])
            diff = target - convert_sqrt_mean(pred, ratio)
            loss[k] += np.einsum("ij,ij->", diff, diff)
    return loss


def reconstruct_counts(
    factors: LowRankFactors,
    rank: int,
    library_size: np.ndarray,
    target_sum: float,
    *,
    rows: slice | np.ndarray = slice(None),
    genes: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Denoised expected counts of the rank-``rank`` reconstruction for a block of cells.

    Each cell's values are rescaled to sum to its own library size (over all modelled genes), and genes
    whose mean is zero (no molecule in any cell) stay exactly zero. The same as :func:`unscaled_counts` of
    the scores ``U[:, :rank] * s[:rank]`` and loadings ``Vt[:rank].T``, times :func:`library_scale` of its row
    sums.

    Parameters
    ----------
    factors
        Centred truncated SVD of ``sqrt_normalize(counts, library_size, target_sum)``.
    rank
        Number of components to keep (``0``: gene means only).
    library_size
        All cells' library sizes.
    target_sum
        The normalisation target used for the factorisation.
    rows
        Which cells to reconstruct.
    genes
        Optional gene indices to return (the rescaling still uses all genes).
    groups
        With batches: the batch codes to centre the cells ``rows`` on, instead of their own (e.g. one reference
        batch for every cell).

    Returns
    -------
    Dense float64 array of expected counts, ``cells x genes``.
    """
    scores = factors.U[rows, :rank] * factors.s[:rank]
    s = library_size[rows]
    counts = unscaled_counts(factors.row_means(rows, groups), scores, factors.Vt[:rank].T, s, target_sum)
    counts *= library_scale(counts.sum(axis=1), s)[:, None]
    return counts if genes is None else counts[:, genes]


def unscaled_counts(
    mean: np.ndarray, scores: np.ndarray, loadings: np.ndarray, library_size: np.ndarray, target_sum: float
) -> np.ndarray:
    """Expected counts of a block of cells and genes before the per-cell rescaling.

    ``m^{-1}(sqrt(library_size / target_sum) * (mean + scores @ loadings.T))``
    (:func:`scn2s.loss.sqrt_poisson_mean_inverse`), and exactly zero for genes whose mean is zero. Each entry
    depends only on its cell's row and its gene's row, so any block of cells and genes can be computed alone.

    Parameters
    ----------
    mean
        The genes' means in normalised square-root space, ``(genes,)``, or each cell's own (its batch's),
        ``(cells, genes)``; a gene whose mean is zero for a cell (no molecule in its batch) stays zero there.
    scores
        The cells' scores ``U[:, :k] * s[:k]``, ``(cells, k)``.
    loadings
        The genes' loadings ``Vt[:k].T``, ``(genes, k)``.
    library_size
        The cells' library sizes, ``(cells,)``.
    target_sum
        The normalisation target of the factorisation.

    Returns
    -------
    Dense float64 array, ``cells x genes``.
    """
    y_hat = (mean[None, :] if mean.ndim == 1 else mean) + scores @ loadings.T
    y_hat *= np.sqrt(library_size / target_sum)[:, None]
    counts = sqrt_poisson_mean_inverse(y_hat)
    if mean.ndim == 1:
        counts[:, mean == 0] = 0.0
    else:
        counts[mean == 0] = 0.0
    return counts


def library_scale(totals: np.ndarray, library_size: np.ndarray) -> np.ndarray:
    """``library_size / totals`` per cell, and 0 where ``totals`` is 0: rescales a cell's values to its library size."""
    return np.divide(library_size, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0)


def cell_scale(
    mean: np.ndarray,
    scores: np.ndarray,
    loadings: np.ndarray,
    library_size: np.ndarray,
    target_sum: float,
    *,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Per-cell factor that makes each cell's modelled genes sum to its library size.

    :func:`library_scale` of the row sums of :func:`unscaled_counts` over every modelled gene, computed in row
    chunks of ``chunk_size`` cells (memory ``chunk_size x genes``). With it, a block of cells and genes is
    ``unscaled_counts(...) * scale[:, None]`` without the other genes.

    A cell without molecules (``library_size`` 0) has expected counts of exactly zero and scale 0: only the cells
    with molecules are computed, so the cost is (cells with molecules) x genes x rank, at most the non-zeros times
    the genes, not cells x genes. The values are those of the row sums over all cells, bit for bit.

    Parameters
    ----------
    mean, scores, loadings, library_size, target_sum
        As for :func:`unscaled_counts`, over all cells and all modelled genes.
    chunk_size
        Cells per chunk.

    Returns
    -------
    Float64 array, ``(cells,)``.
    """
    scale = np.zeros(len(library_size), dtype=np.float64)
    cells = np.flatnonzero(library_size > 0)
    for start in range(0, len(cells), chunk_size):
        rows = cells[start : start + chunk_size]
        s = library_size[rows]
        scale[rows] = library_scale(unscaled_counts(mean, scores[rows], loadings, s, target_sum).sum(axis=1), s)
    return scale


def transfer_rank(
    split_singular_values: np.ndarray,
    full_singular_values: np.ndarray,
    split_rank: int,
    *,
    max_noise_ratio: float,
    window: int = 10,
) -> tuple[int, float]:
    """Carry a rank chosen on a thinned half (depth ``p N``) to the full counts (depth ``N``).

    In normalised square-root space the signal barely depends on depth while the noise shrinks with it, so
    a component is worth keeping when its singular value clears a threshold measured in units of the noise
    level. On the half, the weakest kept component (singular value ``s'_k``) still lowered the held-out
    loss, so the threshold is taken there. The noise ratio between the depths, ``r``, is the median ratio of
    the two spectra over the ``window`` singular values just past the kept ones (the top of the noise bulk,
    where the threshold lies), bounded to ``[1, max_noise_ratio]``. The full-depth rank is the number of
    full-depth singular values above ``s'_k / r``, and never below ``k``.

    Parameters
    ----------
    split_singular_values
        Singular values of the normalised training half (averaged over splits), length ``K``.
    full_singular_values
        Singular values of the normalised full counts, length ``K``.
    split_rank
        Rank ``k`` chosen by held-out loss on the half.
    max_noise_ratio
        Upper bound of the noise ratio, ``1 / sqrt(p)`` (the high-count limit).
    window
        Number of singular values past the kept ones used to estimate the noise ratio.

    Returns
    -------
    ``(rank, noise_ratio)``; the ratio is NaN when no correction applies (``k`` is 0 or the largest rank, or
    the full counts have no non-zero singular value past ``k``).
    """
    K = min(len(split_singular_values), len(full_singular_values))
    if split_rank == 0 or split_rank >= K:
        return min(split_rank, K), float("nan")
    bulk = slice(split_rank, min(split_rank + window, K))
    positive = full_singular_values[bulk] > 0  # exact zeros: the full counts have fewer components
    if not positive.any():
        return split_rank, float("nan")
    ratio = float(np.median(split_singular_values[bulk][positive] / full_singular_values[bulk][positive]))
    ratio = float(np.clip(ratio, 1.0, max_noise_ratio))
    threshold = split_singular_values[split_rank - 1] / ratio
    rank = int(np.sum(full_singular_values[:K] >= threshold))
    return max(rank, split_rank), ratio
