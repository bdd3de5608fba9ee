"""The low-rank family: a truncated SVD in square-root space whose rank is chosen by held-out molecules.

Array level, no AnnData, no torch. ``model`` holds the maths (randomized SVD, the held-out loss of every rank from
one factorisation, reconstruction, rank transfer), ``search`` the rank search and the family interface of
:mod:`scn2s.select.family` (:class:`LowRankOptions`, :func:`select`, :class:`LowRankSelection`), ``blocks`` the data
path of counts in memory or on disk, and ``dask`` (a leaf, imported only for counts in a dask array) that of
counts on dask's workers.
"""

from .search import (
    Batches,
    LowRankOptions,
    LowRankSelection,
    clamp_rank,
    fit_lowrank,
    rank_limit,
    search_lowrank,
    select,
)

__all__ = [
    "Batches",
    "LowRankOptions",
    "LowRankSelection",
    "clamp_rank",
    "fit_lowrank",
    "rank_limit",
    "search_lowrank",
    "select",
]
