"""Sparse-matrix helpers shared by the array-level modules."""

from __future__ import annotations

import numpy as np
from scipy import sparse

__all__ = ["canonical_csr", "int32_indices", "is_dask_array", "rows_only"]


def canonical_csr(X) -> sparse.csr_matrix:
    """``X`` as a CSR matrix in canonical format (sorted indices, no duplicate entries), never modifying ``X``.

    A CSR input already in canonical format is wrapped without copying its arrays; one with duplicate entries
    (which a CSR matrix may hold, and which stand for their sum) or unsorted indices is copied and
    canonicalised, so that element-wise transforms such as the square root act on each entry's total. Dense
    ``float16`` input, which :mod:`scipy.sparse` cannot hold, is converted to ``float32`` (exact).
    """
    if not sparse.issparse(X):
        X = np.asarray(X)
        if X.dtype == np.float16:
            X = X.astype(np.float32)
        return sparse.csr_matrix(X)
    if X.format != "csr":
        X = sparse.csr_matrix(X)
    # a CSR matrix or array is kept as it is: re-wrapping it would copy its index arrays to a common dtype
    if not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()
    return X


def int32_indices(X: sparse.csr_matrix) -> sparse.csr_matrix:
    """``X`` with ``int32`` index arrays when its size allows, sharing its data.

    Files often store ``indptr`` as ``int64`` beside ``int32`` indices; scipy then upcasts the indices of every
    matrix built from them to ``int64``, which costs memory and time in every product. A block of cells always
    fits ``int32``.
    """
    if X.indices.dtype == np.int32 and X.indptr.dtype == np.int32:
        return X
    if X.nnz >= np.iinfo(np.int32).max or max(X.shape) >= np.iinfo(np.int32).max:
        return X
    indices = X.indices.astype(np.int32, copy=False)
    indptr = X.indptr.astype(np.int32, copy=False)
    return type(X)((X.data, indices, indptr), shape=X.shape, copy=False)


def rows_only(X: sparse.csr_matrix, keep: np.ndarray) -> sparse.csr_matrix:
    """``X`` with the rows outside ``keep`` (a boolean mask over its rows) emptied: the same shape, fewer entries."""
    lengths = np.diff(X.indptr)
    entries = np.repeat(keep, lengths)
    indptr = np.zeros_like(X.indptr)
    np.cumsum(np.where(keep, lengths, 0), out=indptr[1:])
    return sparse.csr_matrix((X.data[entries], X.indices[entries], indptr), shape=X.shape)


def is_dask_array(X) -> bool:
    """Whether ``X`` is a :class:`dask.array.Array`, told by its type's module so that dask is never imported."""
    kind = type(X)
    return kind.__name__ == "Array" and kind.__module__.split(".")[:2] == ["dask", "array"]
