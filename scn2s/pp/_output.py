"""What :func:`~scn2s.pp.denoise` writes: the layer or the low-rank factors, the cells' embedding, the posterior sd.

The factors are the cells' scores and the genes' loadings and means of the chosen rank, the cells' library
sizes, and a per-cell scale computed once over all modelled genes, so that :func:`scn2s.tl.reconstruct`
computes a block of cells and genes from that block alone, equal to the same block of the dense layer.
Whatever the output, the chosen family's cell embedding goes to ``obsm`` (:func:`embedding_entries`).
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from .._blocks import RowBlocks, block_slices
from .._names import factor_keys
from ..lowrank.model import cell_scale

if TYPE_CHECKING:
    from ..lowrank import LowRankSelection
    from ..select import Selection

__all__ = [
    "check_uncertainty",
    "dense_layer",
    "embedding_entries",
    "factor_entries",
    "lazy_layer",
    "output_entries",
    "sd_entries",
]

logger = logging.getLogger(__name__)

_CHUNK = 1024


def output_entries(
    fit: Selection,
    output: str,
    counts,
    genes: np.ndarray | None,
    *,
    key_added: str,
    lazy,
    uncertainty: bool,
    progress: bool,
) -> tuple[dict[str, dict], dict]:
    """What ``denoise`` writes for ``output`` (entries for :func:`scn2s._validate.write_results`), and its record.

    ``lazy`` is the data path of counts in a dask array (:class:`scn2s.lowrank.dask.DaskRowBlocks`), or ``None``.
    The layer comes with the chosen family's embedding (:func:`embedding_entries`) and, with ``uncertainty``, the
    posterior standard deviations (:func:`sd_entries`). The record is ``{"output": output}``, with ``factors`` for
    ``output="factors"``.
    """
    if output == "layer":
        layer = (
            lazy_layer(fit, lazy.raw, genes) if lazy is not None else dense_layer(fit, counts, genes, progress=progress)
        )
        entries = {"layers": {key_added: layer}} | embedding_entries(fit, counts.shape[1], genes, key_added=key_added)
        if uncertainty:
            entries["layers"] |= sd_entries(fit, counts.shape, genes, key_added=key_added, progress=progress)
        return entries, {"output": output}
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
    scores, loadings = fit.embedding(), fit.loadings
    args = (fit.factors.mean, scores, loadings, fit.library_size, fit.target_sum)
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


def embedding_entries(fit: Selection, n_vars: int, genes: np.ndarray | None, *, key_added: str) -> dict[str, dict]:
    """The cells' embedding ``obsm[f"X_{key_added}"]`` of the chosen family (and its loadings), for the layer output.

    Low-rank: the cells' scores of the applied rank (:meth:`scn2s.lowrank.LowRankSelection.embedding`) and the
    genes' loadings in ``varm[f"{key_added}_loadings"]`` (zero outside ``mask_var``), the same as
    ``output="factors"`` stores. Autoencoder: the network's code of each cell's counts of the modelled genes
    (:meth:`scn2s.autoencoder.AutoencoderSelection.embedding`). Either is for ``sc.pp.neighbors(use_rep=...)``.
    """
    keys = factor_keys(key_added)
    embedding = fit.embedding()
    if embedding is None:  # a denoiser calibrated beside the families
        return {}
    entries = {"obsm": {keys["scores"][1]: embedding}}
    if hasattr(fit, "loadings"):
        loadings = np.zeros((n_vars, fit.rank), dtype=np.float64)
        loadings[slice(None) if genes is None else genes] = fit.loadings
        entries["varm"] = {keys["loadings"][1]: loadings}
    return entries


def check_uncertainty(uncertainty: bool, method: str, output: str) -> None:
    """Raise, before any work, if ``uncertainty=True`` cannot be honoured."""
    if not isinstance(uncertainty, bool):
        msg = f"uncertainty must be True or False, got {uncertainty!r}."
        raise TypeError(msg)
    if uncertainty and (method == "lowrank" or output != "layer"):
        msg = (
            "uncertainty=True writes the posterior standard deviations of the autoencoder's gamma-Poisson posterior; "
            f"the low-rank family has no posterior (got method={method!r}, output={output!r}). Pass "
            'method="autoencoder" (or "auto") with output="layer", or uncertainty=False.'
        )
        raise ValueError(msg)


def sd_entries(
    fit: Selection, shape: tuple[int, int], genes: np.ndarray | None, *, key_added: str, progress: bool
) -> dict[str, np.ndarray]:
    """The posterior standard deviations ``{f"{key_added}_sd": ...}`` (``float32``, cells x genes), if the fit has any.

    Computed block by block (:meth:`scn2s.autoencoder.AutoencoderSelection.posterior_sd`); ``NaN`` for genes outside
    ``mask_var`` (their raw counts are kept, with no posterior). A fit without a posterior (the low-rank family
    chosen by ``method="auto"``, or an autoencoder without ``posterior``) gives nothing, with a
    :class:`UserWarning`.
    """
    key = f"{key_added}_sd"
    if not getattr(fit, "has_posterior", False):
        if hasattr(fit, "loadings"):
            what = "the low-rank family was chosen"
        elif fit.family == "autoencoder":
            what = "the chosen network has no posterior"
        else:
            what = f"the denoiser {fit.family!r} was chosen"
        msg = (
            f"uncertainty=True: {what}, so there is no posterior standard deviation and layers[{key!r}] is not "
            'written. Fix the family with method="autoencoder" and posterior=True in the autoencoder\'s configs to '
            "have it."
        )
        warnings.warn(msg, UserWarning, stacklevel=4)
        return {}
    n_cells, n_vars = shape
    output = np.full((n_cells, n_vars), np.nan, dtype=np.float32)
    for rows in tqdm(block_slices(n_cells, _CHUNK), desc="posterior sd", disable=not progress):
        block = fit.posterior_sd(rows)
        if genes is None:
            output[rows] = block
        else:
            output[rows, genes] = block
    return {key: output}
