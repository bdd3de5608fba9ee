"""Each cell's batch (``batch_key``), read from ``obs`` and checked before any work."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["Batches", "read_batches"]


class Batches(NamedTuple):
    """Each cell's batch for the families' ``select``: codes ``0..b-1``, names, and a reference batch or None."""

    key: str
    codes: np.ndarray
    levels: list
    reference: int | None = None


def read_batches(
    adata: AnnData,
    batch_key: str | None,
    transform_batch: str | None,
    *,
    output: str,
    lazy: bool,
    stacklevel: int,
) -> Batches | None:
    """Each cell's batch from ``adata.obs[batch_key]``, checked before any work; ``None`` without a key.

    Raises if the column is missing or has missing values, a batch has a single cell, ``output="factors"`` or counts
    in a dask array (both families model batches in memory), or
    ``transform_batch`` is not one of the batches. A column with one batch changes nothing: a warning, and ``None``.
    """
    if batch_key is None:
        if transform_batch is not None:
            msg = f"transform_batch={transform_batch!r} needs batch_key: the name of the obs column of the batches."
            raise ValueError(msg)
        return None
    if not isinstance(batch_key, str):
        msg = f"batch_key must be the name of an obs column, got {batch_key!r}."
        raise TypeError(msg)
    if batch_key not in adata.obs:
        msg = f"batch_key={batch_key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)[:10]})."
        raise KeyError(msg)
    if output == "factors" or lazy:
        what = "output='factors'" if output == "factors" else "counts in a dask array"
        msg = f"batch_key needs the counts in memory and output='layer'; got {what}."
        raise ValueError(msg)
    column = adata.obs[batch_key]
    missing = int(column.isna().sum())
    if missing:
        msg = f"adata.obs[{batch_key!r}] has {missing} missing values; give every cell a batch (or drop those cells)."
        raise ValueError(msg)
    levels, codes = np.unique(column.astype(str).to_numpy(), return_inverse=True)
    sizes = np.bincount(codes, minlength=len(levels))
    if (sizes < 2).any():
        alone = [str(level) for level, size in zip(levels, sizes, strict=True) if size < 2]
        msg = (
            f"adata.obs[{batch_key!r}] has batches of a single cell ({alone[:5]}): a batch's gene means need at least "
            "2 cells. Merge or drop them."
        )
        raise ValueError(msg)
    reference = None
    if transform_batch is not None:
        if str(transform_batch) not in levels:
            msg = f"transform_batch={transform_batch!r} is not a batch of adata.obs[{batch_key!r}]: {list(levels)[:9]}."
            raise ValueError(msg)
        reference = int(np.flatnonzero(levels == str(transform_batch))[0])
    if len(levels) == 1:
        msg = f"adata.obs[{batch_key!r}] holds one batch ({levels[0]!r}): batch_key changes nothing."
        warnings.warn(msg, UserWarning, stacklevel=stacklevel)
        return None
    return Batches(batch_key, codes.astype(np.intp), [str(level) for level in levels], reference)
