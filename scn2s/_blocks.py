"""Count matrices read in blocks of consecutive cells (array level), shared by every family.

The molecule splits are drawn block by block (:class:`scn2s.select.Splits`), the low-rank family makes every pass
over the cells block by block (:mod:`scn2s.lowrank.blocks`), and the output layer is written block by block, so
an input is never converted or densified whole, and an input on disk (an h5py dataset or anndata's backed sparse
dataset) is streamed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import sparse

from ._sparse import canonical_csr, int32_indices
from ._validate import check_counts

__all__ = ["BLOCK_ROWS", "RowBlocks", "block_slices"]

BLOCK_ROWS = 16384
"""Cells per block. The molecule splits are drawn per block (:class:`scn2s.select.Splits`), so this is part
of what a seed means: changing it changes the splits."""


def block_slices(n_rows: int, block_rows: int | None = None) -> list[slice]:
    """Consecutive row slices of at most ``block_rows`` (default :data:`BLOCK_ROWS`) rows covering ``range(n_rows)``."""
    block_rows = BLOCK_ROWS if block_rows is None else block_rows
    return [slice(start, min(start + block_rows, n_rows)) for start in range(0, n_rows, block_rows)]


class RowBlocks:
    """Cells x genes counts as canonical CSR blocks of consecutive cells.

    Parameters
    ----------
    X
        The counts: a dense or sparse matrix in memory, an :class:`h5py.Dataset`, or an anndata backed
        sparse dataset; anything whose row slices ``X[a:b]`` give a matrix.
    genes
        Column indices to keep (``None``: all).
    source
        Where ``X`` was read from, for error messages.
    checked
        ``X`` is known to hold raw counts; otherwise each block is checked by
        :func:`scn2s._validate.check_counts` the first time it is read.
    block_rows
        Cells per block (default :data:`BLOCK_ROWS`).
    """

    def __init__(
        self,
        X,
        *,
        genes: np.ndarray | None = None,
        source: str = "X",
        checked: bool = False,
        block_rows: int | None = None,
    ) -> None:
        if sparse.issparse(X):
            if X.format != "csr":
                X = X.tocsr()  # row slices of CSC or COO would convert the whole matrix each time
            # with index arrays of two dtypes (an int64 indptr from a file), scipy would copy all the indices
            # to int64 at every slice; one dtype makes slices cheap (int32 needs no copy of the indices)
            X = int32_indices(X)
            if X.indices.dtype != X.indptr.dtype:
                X = type(X)((X.data, X.indices.astype(np.int64), X.indptr.astype(np.int64)), shape=X.shape)
        self._X = X
        self._genes = genes
        self._source = source
        self._checked = checked
        self.slices = block_slices(X.shape[0], block_rows)
        self.shape = (X.shape[0], X.shape[1] if genes is None else len(genes))

    def __len__(self) -> int:
        return len(self.slices)

    def __iter__(self) -> Iterator[tuple[int, slice, sparse.csr_matrix]]:
        """Yield ``(block index, rows, block)`` in order."""
        for b, rows in enumerate(self.slices):
            yield b, rows, self.block(b)
        self._checked = True

    def to_csr(self) -> sparse.csr_matrix:
        """All blocks stacked into one CSR matrix in memory (each checked as it is read)."""
        parts = [block for _, _, block in self]
        return parts[0] if len(parts) == 1 else sparse.vstack(parts, format="csr")

    def block(self, b: int) -> sparse.csr_matrix:
        """Block ``b`` as a canonical CSR matrix (a new matrix; the input is never modified)."""
        rows = self.slices[b]
        block = self._X[rows]
        if not self._checked:
            check_counts(block, self._source)
        block = canonical_csr(int32_indices(sparse.csr_matrix(block) if not sparse.issparse(block) else block))
        if self._genes is not None:
            block = int32_indices(block[:, self._genes])
        return block

    def library_sizes(self) -> np.ndarray:
        """Each cell's total count (float64), one pass over the blocks."""
        library = np.empty(self.shape[0])
        for _, rows, block in self:
            library[rows] = np.asarray(block.sum(axis=1, dtype=np.float64)).ravel()
        return library
