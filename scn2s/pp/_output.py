"""What :func:`~scn2s.pp.denoise` writes: the dense layer, or the low-rank factors that give any slice of it.

The factors are the cells' scores and the genes' loadings and means of the chosen rank, the cells' library
sizes, and a per-cell scale computed once over all modelled genes, so that :func:`scn2s.tl.reconstruct`
computes a block of cells and genes from that block alone, equal to the same block of the dense layer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from .._blocks import RowBlocks, block_slices
from .._names import factor_keys
from ..lowrank.model import cell_scale

if TYPE_CHECKING:
    from ..lowrank import LowRankSelection
    from ..select import Selection

__all__ = ["dense_layer", "factor_entries", "lazy_layer", "output_entries"]

logger = logging.getLogger(__name__)

_CHUNK = 1024


def output_entries(
    fit: Selection, output: str, counts, genes: np.ndarray | None, *, key_added: str, lazy, progress: bool
) -> tuple[dict[str, dict], dict]:
    """What ``denoise`` writes for ``output`` (entries for :func:`scn2s._validate.write_results`), and its record.

    ``lazy`` is the data path of counts in a dask array (:class:`scn2s.lowrank.dask.DaskRowBlocks`), or ``None``.
    The record is ``{"output": output}``, with ``factors`` for ``output="factors"``.
    """
    if output == "layer":
        layer = (
            lazy_layer(fit, lazy.raw, genes) if lazy is not None else dense_layer(fit, counts, genes, progress=progress)
        )
        return {"layers": {key_added: layer}}, {"output": output}
    row_chunks = lazy.chunks if lazy is not None else None
    entries, factors = factor_entries(fit, counts.shape[1], genes, key_added=key_added, row_chunks=row_chunks)
    return entries, {"output": output, "factors": factors}


def dense_layer(fit: Selection, counts, genes: np.ndarray | None, *, progress: bool) -> np.ndarray:
    """The ``float32`` output layer: the fit's reconstruction of the modelled genes, the raw counts elsewhere.

    The raw counts are read block by block, so ``counts`` may be on disk (a backed AnnData's ``X``).
    """
    n_cells, n_genes = counts.shape
    output = np.empty((n_cells, n_genes), dtype=np.float32)
    if genes is not None:
        rest = np.setdiff1d(np.arange(n_genes), genes)
        raw = RowBlocks(counts, genes=rest, checked=True, block_rows=_CHUNK)
    for b, rows in enumerate(tqdm(block_slices(n_cells, _CHUNK), desc="writing", disable=not progress)):
        block = fit.reconstruct(rows)
        if genes is None:
            output[rows] = block
        else:
            output[rows, genes] = block
            output[rows, rest] = raw.block(b).toarray()
    return output


def _scaled_factors(fit: LowRankSelection, row_chunks: tuple[int, ...] | None):
    """The chosen rank's scores and loadings and the per-cell scale (on dask's workers with ``row_chunks``)."""
    rank, factors = fit.rank, fit.factors
    scores = factors.U[:, :rank] * factors.s[:rank]
    loadings = factors.Vt[:rank].T
    args = (factors.mean, scores, loadings, fit.library_size, fit.target_sum)
    if row_chunks is None:
        scale = cell_scale(*args, chunk_size=_CHUNK)
    else:
        from ..lowrank.dask import cell_scale_chunks

        scale = cell_scale_chunks(*args, rows=row_chunks, chunk_size=_CHUNK)
    return scores, loadings, scale


def lazy_layer(fit: LowRankSelection, raw, genes: np.ndarray | None):
    """The ``float32`` output layer as a lazy dask array, chunked like ``raw`` (the counts, a dask array of CSR chunks).

    The per-cell scale is computed on dask's workers now; the layer's chunks when the array is computed (by
    :meth:`dask.array.Array.compute`, or chunk by chunk by anndata's writers).
    """
    from ..lowrank.dask import denoised_layer

    scores, loadings, scale = _scaled_factors(fit, raw.chunks[0])
    return denoised_layer(
        fit.factors.mean, scores, loadings, fit.library_size, scale, fit.target_sum, raw=raw, genes=genes
    )


def factor_entries(
    fit: LowRankSelection,
    n_vars: int,
    genes: np.ndarray | None,
    *,
    key_added: str,
    row_chunks: tuple[int, ...] | None = None,
) -> tuple[dict[str, dict], dict]:
    """The entries of ``output="factors"`` for :func:`scn2s._validate.write_results`, and the ``factors`` record.

    The per-cell scale is computed here, in row chunks over all modelled genes, by the same operations as the
    dense layer's per-chunk rescaling; on dask's workers, a task per chunk of ``row_chunks`` cells, if given.
    """
    rank, factors = fit.rank, fit.factors
    scores, modelled_loadings, scale = _scaled_factors(fit, row_chunks)
    columns = slice(None) if genes is None else genes
    loadings = np.zeros((n_vars, rank), dtype=np.float64)
    loadings[columns] = modelled_loadings
    mean = np.full(n_vars, np.nan)
    mean[columns] = factors.mean
    modelled = np.zeros(n_vars, dtype=bool)
    modelled[columns] = True
    values = {
        "scores": scores,
        "loadings": loadings,
        "mean": mean,
        "modelled": modelled,
        "library_size": fit.library_size,
        "scale": scale,
    }
    entries: dict[str, dict] = {"obs": {}, "var": {}, "obsm": {}, "varm": {}}
    for name, (attribute, key) in factor_keys(key_added).items():
        entries[attribute][key] = values[name]
    record = {"family": "lowrank", "rank": int(rank), "target_sum": float(fit.target_sum)}
    return entries, record
