"""Counts in a dask array of sparse row chunks: the low-rank pipeline run chunk by chunk on dask's workers.

The counts are rechunked to :data:`scn2s._blocks.BLOCK_ROWS` cells (all genes) per chunk, so chunk ``b`` is block
``b`` of :class:`~scn2s._blocks.RowBlocks` and its split (:meth:`scn2s.select.Splits.get_block`, seeded by the
split and ``b``) holds the very molecules it holds in memory. Each step is a per-chunk function of the array
level (:func:`~scn2s.lowrank.model.sqrt_normalize`, :func:`~scn2s.lowrank.model.block_loss_per_rank`,
:func:`~scn2s.lowrank.model.unscaled_counts`, ...) mapped over the chunks; reductions (column sums, the products
``Y.T @ Q``, Gram matrices, held-out losses) are summed from per-chunk partials on the cluster. Only arrays of
cells x rank, genes x rank or smaller come back to the client. The algorithm itself is not here:
:func:`~scn2s.lowrank.model.randomized_svd` drives :class:`DaskOperator` exactly as it drives the blocks in
memory, and :func:`~scn2s.lowrank.search.search_lowrank` drives :class:`DaskRowBlocks` as it drives
:class:`~scn2s.lowrank.blocks.BlockCounts`: :meth:`DaskRowBlocks.operator` and
:meth:`DaskRowBlocks.heldout_loss_per_rank` hand the maths the dask operator and the chunked held-out loss.

A leaf: this module imports dask and the maths of :mod:`scn2s.lowrank.model`; nothing of the maths imports it,
and nothing imports it unless the counts are a dask array.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dask
import dask.array as da
import numpy as np
from scipy import linalg, sparse

from .. import _blocks
from .._blocks import block_slices
from .._sparse import canonical_csr, rows_only
from .._validate import check_counts
from .blocks import SplitHalves
from .model import LowRankFactors, block_loss_per_rank, cell_scale, sqrt_normalize, unscaled_counts

if TYPE_CHECKING:
    from ..select.splits import Splits

__all__ = ["DaskOperator", "DaskRowBlocks", "DaskTall", "cell_scale_chunks", "denoised_layer"]


def _csr_meta(dtype) -> sparse.csr_matrix:
    return sparse.csr_matrix((0, 0), dtype=dtype)


def _prepare_chunk(block, *, source: str, checked: bool, genes: np.ndarray | None) -> sparse.csr_matrix:
    if not checked:
        check_counts(block, source)
    block = canonical_csr(block)
    return block if genes is None else block[:, genes]


def _row_sums(block) -> np.ndarray:
    return np.asarray(block.sum(axis=1, dtype=np.float64)).ravel()


def _has_molecule(block) -> np.ndarray:
    return np.array([bool(block.data.any())])


def _split_chunk(block, keep=None, *, splits: Splits, i: int, block_id=None) -> sparse.csr_matrix:
    train, heldout = splits.get_block(i, block_id[0], block)
    if keep is not None:  # the held-out molecules of the cells that score the split only
        heldout = rows_only(heldout, np.asarray(keep).ravel())
    return sparse.hstack([train, heldout], format="csr")


def _columns(block, *, start: int, stop: int) -> sparse.csr_matrix:
    return block[:, start:stop]


def _half_row_sums(block, *, n_genes: int) -> np.ndarray:
    return _row_sums(block[:, :n_genes])


def _normalise_chunk(block, library: np.ndarray, *, target_sum: float) -> sparse.csr_matrix:
    return sqrt_normalize(block, library, target_sum)


class DaskRowBlocks:
    """Cells x genes counts in a dask array, as blocks of :data:`~scn2s._blocks.BLOCK_ROWS` cells on the workers.

    The counterpart of :class:`~scn2s._blocks.RowBlocks` (the same methods, the same splits), for a dask array
    whose chunks are scipy sparse (or dense) matrices. Nothing is computed until a method asks for a result;
    each pass reads the chunks from where the array's graph reads them (a file, for a lazily opened AnnData).

    Parameters
    ----------
    X
        The counts, a dask array; rechunked to whole genes and ``BLOCK_ROWS`` cells per chunk.
    genes
        Column indices to keep (``None``: all).
    source
        Where ``X`` was read from, for error messages.
    checked
        ``X`` is known to hold raw counts; otherwise each chunk is checked by
        :func:`scn2s._validate.check_counts` on its worker whenever it is read.
    """

    def __init__(self, X, *, genes: np.ndarray | None = None, source: str = "X", checked: bool = False) -> None:
        rows = _blocks.BLOCK_ROWS
        blocks = tuple(s.stop - s.start for s in block_slices(X.shape[0], rows))
        if X.chunks != (blocks, (X.shape[1],)):
            X = X.rechunk((blocks, (X.shape[1],)))
        self._X = X
        self._genes = genes
        self._source = source
        self.dtype = np.dtype(X.dtype)
        self._build(checked)
        self.shape = self.array.shape
        self.slices = block_slices(self.shape[0], rows)
        self.chunks = self.array.chunks[0]

    def _build(self, checked: bool) -> None:
        self.checked = checked
        X, genes = self._X, self._genes
        meta = _csr_meta(self.dtype)
        kwargs = {"source": self._source, "checked": checked, "dtype": self.dtype, "meta": meta}
        self.raw = X.map_blocks(_prepare_chunk, genes=None, **kwargs)
        if genes is None:
            self.array = self.raw
        else:
            self.array = X.map_blocks(_prepare_chunk, genes=genes, chunks=(X.chunks[0], (len(genes),)), **kwargs)

    def __len__(self) -> int:
        return len(self.slices)

    def has_molecule(self) -> bool:
        """Whether any count is non-zero; checks every chunk (on the workers) when ``checked`` is false."""
        found = self.array.map_blocks(
            _has_molecule, drop_axis=1, chunks=((1,) * len(self),), dtype=bool, meta=np.empty(0, dtype=bool)
        )
        found = bool(found.any().compute())
        self._build(True)  # every chunk passed its check: later passes skip it
        return found

    def library_sizes(self) -> np.ndarray:
        """Each cell's total count (float64), computed chunk by chunk on the workers."""
        return self.array.map_blocks(_row_sums, drop_axis=1, dtype=np.float64, meta=np.empty(0)).compute()

    def split(self, splits: Splits, i: int) -> SplitHalves:
        """Split ``i`` of every chunk on its worker: ``(training half, held-out half, training library sizes)``.

        The halves are dask arrays of CSR chunks over the split computed once and held on the workers; the
        library sizes come back to the client. The held-out chunks keep the molecules of the cells that score the
        split (:meth:`Splits.scored_mask`) only: the rows of the others are empty.
        """
        g = self.shape[1]
        keep = splits.scored_mask(i, self.shape[0])
        masks = () if keep is None else (da.from_array(keep[:, None], chunks=(self.chunks, (1,))),)
        pairs = self.array.map_blocks(
            _split_chunk,
            *masks,
            splits=splits,
            i=i,
            chunks=(self.chunks, (2 * g,)),
            dtype=self.dtype,
            meta=_csr_meta(self.dtype),
        ).persist()
        library = pairs.map_blocks(_half_row_sums, n_genes=g, drop_axis=1, dtype=np.float64, meta=np.empty(0))
        halves = [
            pairs.map_blocks(
                _columns, start=a, stop=b, chunks=(self.chunks, (g,)), dtype=self.dtype, meta=_csr_meta(self.dtype)
            )
            for a, b in ((0, g), (g, 2 * g))
        ]
        return SplitHalves(halves[0], halves[1], library.compute())

    def normalised(self, library: np.ndarray, target_sum: float, parts=None):
        """:func:`~scn2s.lowrank.model.sqrt_normalize` of each chunk of ``parts`` (default: the counts), persisted."""
        parts = self.array if parts is None else parts
        library = da.from_array(library, chunks=(self.chunks,))
        return da.blockwise(
            _normalise_chunk,
            "ij",
            parts,
            "ij",
            library,
            "i",
            target_sum=target_sum,
            dtype=np.float32,
            meta=_csr_meta(np.float32),
        ).persist()

    @staticmethod
    def operator(parts) -> DaskOperator:
        """The centred operator of normalised chunks, for :func:`~scn2s.lowrank.model.randomized_svd`."""
        return DaskOperator(parts)

    @staticmethod
    def heldout_loss_per_rank(
        factors: LowRankFactors, cell_scale: np.ndarray, heldout, *, depth_ratio: float, keep: np.ndarray | None = None
    ) -> np.ndarray:
        """:func:`heldout_loss_per_rank_chunks` of the held-out chunks (``keep``: the cells that score)."""
        return heldout_loss_per_rank_chunks(
            factors, cell_scale, heldout, depth_ratio=depth_ratio, chunk_size=2048, keep=keep
        )


def _column_sums(block) -> np.ndarray:
    return np.asarray(block.sum(axis=0, dtype=np.float64))


def _right_chunk(block, M: np.ndarray, shift: np.ndarray) -> np.ndarray:
    out = np.asarray(block @ M.astype(block.dtype, copy=False), dtype=np.float64)
    out -= shift
    return out


def _left_chunk(block, Q: np.ndarray) -> np.ndarray:
    return np.asarray(block.T @ Q.astype(block.dtype, copy=False), dtype=np.float64)[None]


class DaskOperator:
    """:class:`~scn2s.lowrank.model.CentredOperator` of a dask array ``Y`` of CSR row chunks (whole genes).

    :meth:`right` is a tall dask array chunked like ``Y``'s rows, persisted on the workers; :meth:`left` sums
    per-chunk ``Y_b.T @ Q_b`` on the cluster and returns genes x ``w``. The per-chunk products are those of
    :class:`~scn2s.lowrank.model.BlockOperator` (in ``Y``'s precision, accumulated in float64).
    """

    def __init__(self, Y) -> None:
        if len(Y.chunks[1]) != 1:
            Y = Y.rechunk({1: -1})
        self.Y = Y
        self.shape = Y.shape
        self.tall = DaskTall  # the operations on the tall matrices of right()
        n = Y.shape[0]
        sums = da.blockwise(
            _column_sums, "bj", Y, "bj", adjust_chunks={"b": 1}, dtype=np.float64, meta=np.empty((0, 0))
        )
        self.mean = sums.sum(axis=0).compute() / max(n, 1)

    def right(self, M: np.ndarray):
        """``(Y - 1 mean^T) @ M``: a tall dask array chunked like ``Y``'s rows, persisted on the workers."""
        M_d = da.from_array(M, chunks=M.shape)
        w = M.shape[1]
        out = da.blockwise(
            _right_chunk,
            "iw",
            self.Y,
            "ij",
            M_d,
            "jw",
            shift=self.mean @ M,
            concatenate=True,
            dtype=np.float64,
            meta=np.empty((0, 0)),
        )
        assert out.chunks[1] == (w,)
        return out.persist()

    def left(self, Q) -> np.ndarray:
        """``(Y - 1 mean^T).T @ Q`` for a tall dask ``Q``: per-chunk partials summed on the cluster, genes x ``w``."""
        parts = da.blockwise(
            _left_chunk,
            "bjw",
            self.Y,
            "bj",
            Q,
            "bw",
            adjust_chunks={"b": 1},
            concatenate=True,
            dtype=np.float64,
            meta=np.empty((0, 0, 0)),
        )
        out, total = dask.compute(parts.sum(axis=0), Q.sum(axis=0))
        out -= np.outer(self.mean, total)
        return out


def _solve_chunk(A: np.ndarray, R: np.ndarray) -> np.ndarray:
    return linalg.solve_triangular(R, A.T, trans="T", lower=False, check_finite=False).T


class DaskTall:
    """The operations :func:`~scn2s.lowrank.model.orthonormalize` needs, on a tall dask array chunked by rows."""

    @staticmethod
    def gram(A) -> np.ndarray:
        """``A.T @ A``, summed from the chunks on the cluster."""
        return da.dot(A.T, A).compute()

    @staticmethod
    def solve(A, R: np.ndarray):
        """``A @ inv(R)`` for an upper triangular ``R``, chunk by chunk, persisted."""
        return A.map_blocks(_solve_chunk, R=R, dtype=np.float64, meta=np.empty((0, 0))).persist()

    @staticmethod
    def qr(A):
        """The ``Q`` of dask's tall-and-skinny QR, persisted."""
        return da.linalg.qr(A)[0].persist()

    @staticmethod
    def gather(A) -> np.ndarray:
        """``A`` computed into a numpy array."""
        return A.compute()


def _loss_chunk(
    heldout, a: np.ndarray, U: np.ndarray, keep: np.ndarray, *, factors: LowRankFactors, depth_ratio: float, chunk_size
):
    return block_loss_per_rank(factors, a, U, heldout, depth_ratio, chunk_size, keep=keep)[None]


def heldout_loss_per_rank_chunks(
    factors: LowRankFactors,
    cell_scale: np.ndarray,
    heldout,
    *,
    depth_ratio: float,
    chunk_size: int,
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`~scn2s.lowrank.model.heldout_loss_per_rank` of a dask array of held-out CSR row chunks.

    Each chunk is scored by :func:`~scn2s.lowrank.model.block_loss_per_rank` on its worker from its own rows of
    ``U``, ``cell_scale`` and ``keep`` (the cells that score; ``None``: all); the per-chunk vectors are summed on
    the cluster.
    """
    if len(heldout.chunks[1]) != 1:
        heldout = heldout.rechunk({1: -1})
    rows = heldout.chunks[0]
    K = factors.max_rank
    shared = LowRankFactors(mean=factors.mean, U=np.empty((0, K)), s=factors.s, Vt=factors.Vt)
    keep = np.ones(heldout.shape[0], dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    parts = da.blockwise(
        _loss_chunk,
        "bk",
        heldout,
        "bj",
        da.from_array(cell_scale, chunks=(rows,)),
        "b",
        da.from_array(factors.U, chunks=(rows, K)),
        "bl",
        da.from_array(keep, chunks=(rows,)),
        "b",
        new_axes={"k": K + 1},
        adjust_chunks={"b": 1},
        concatenate=True,
        factors=shared,
        depth_ratio=depth_ratio,
        chunk_size=chunk_size,
        dtype=np.float64,
        meta=np.empty((0, 0)),
    )
    return parts.sum(axis=0).compute()


def _scale_chunk(scores, library, *, mean, loadings, target_sum, chunk_size) -> np.ndarray:
    return cell_scale(mean, scores, loadings, library, target_sum, chunk_size=chunk_size)


def cell_scale_chunks(
    mean: np.ndarray,
    scores: np.ndarray,
    loadings: np.ndarray,
    library_size: np.ndarray,
    target_sum: float,
    *,
    rows: tuple[int, ...],
    chunk_size: int = 1024,
) -> np.ndarray:
    """:func:`~scn2s.lowrank.model.cell_scale` computed on the workers, a chunk of ``rows`` cells per task."""
    parts = da.blockwise(
        _scale_chunk,
        "i",
        da.from_array(scores, chunks=(rows, scores.shape[1])),
        "ik",
        da.from_array(library_size, chunks=(rows,)),
        "i",
        concatenate=True,
        mean=mean,
        loadings=loadings,
        target_sum=target_sum,
        chunk_size=chunk_size,
        dtype=np.float64,
        meta=np.empty(0),
    )
    return parts.compute()


def _layer_chunk(scores, library, scale, raw=None, *, mean, loadings, target_sum, genes, n_vars) -> np.ndarray:
    counts = unscaled_counts(mean, scores, loadings, library, target_sum)
    counts *= scale[:, None]
    if genes is None:
        return counts.astype(np.float32)
    out = np.empty((len(library), n_vars), dtype=np.float32)
    out[:, genes] = counts
    rest = np.setdiff1d(np.arange(n_vars), genes)
    out[:, rest] = raw[:, rest].toarray()
    return out


def denoised_layer(
    mean: np.ndarray,
    scores: np.ndarray,
    loadings: np.ndarray,
    library_size: np.ndarray,
    scale: np.ndarray,
    target_sum: float,
    *,
    raw,
    genes: np.ndarray | None,
):
    """The ``float32`` denoised layer as a lazy dask array chunked like ``raw``'s rows (cells x all genes).

    Each chunk is :func:`~scn2s.lowrank.model.unscaled_counts` times ``scale`` of its cells for the modelled
    ``genes`` and the raw counts (the same chunk of ``raw``, CSR) elsewhere; nothing is computed here.
    """
    rows = raw.chunks[0]
    n_vars = raw.shape[1]
    args = [
        da.from_array(scores, chunks=(rows, scores.shape[1])),
        "ik",
        da.from_array(library_size, chunks=(rows,)),
        "i",
        da.from_array(scale, chunks=(rows,)),
        "i",
    ]
    if genes is not None:
        args += [raw, "ij"]
    return da.blockwise(
        _layer_chunk,
        "ij",
        *args,
        new_axes={"j": n_vars} if genes is None else {},
        concatenate=True,
        mean=mean,
        loadings=loadings,
        target_sum=target_sum,
        genes=genes,
        n_vars=n_vars,
        dtype=np.float32,
        meta=np.empty((0, 0), dtype=np.float32),
    )
