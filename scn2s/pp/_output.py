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
from scipy import sparse
from tqdm.auto import tqdm

from .. import _memory
from .._blocks import RowBlocks, block_slices
from .._validate import DELETE
from ..models.lowrank import cell_scale

if TYPE_CHECKING:
    from ..select import AutoencoderSelection, LowRankSelection

__all__ = [
    "OUTPUTS",
    "check_layer_fits",
    "check_uncertainty",
    "dense_layer",
    "embedding_entries",
    "factor_entries",
    "factor_keys",
    "lazy_layer",
    "merge_entries",
    "sd_entries",
    "stale_entries",
]

logger = logging.getLogger(__name__)

OUTPUTS = ("layer", "factors")
_CHUNK = 1024

PYTHON_ALTERNATIVES = (
    'Store the low-rank model instead with method="lowrank", output="factors", then compute denoised values for '
    "slices with scn2s.tl.reconstruct, or write the whole layer to an .h5ad or .zarr file chunk by chunk with "
    "scn2s.tl.write_denoised. Or denoise fewer cells or genes, e.g. adata[:, adata.var['highly_variable']].copy(): "
    "mask_var= alone does not shrink the layer, which keeps the raw counts of the genes it leaves out."
)


def check_layer_fits(shape: tuple[int, int], *, key_added: str, alternatives: str = PYTHON_ALTERNATIVES) -> None:
    """Raise :class:`MemoryError` if a ``float32`` layer of ``shape`` is larger than the memory available.

    Does nothing when the available memory is unknown (:func:`scn2s._memory.available_memory`).
    """
    n_obs, n_vars = shape
    size = n_obs * n_vars * np.dtype(np.float32).itemsize
    available = _memory.available_memory()
    if available is None:
        return
    logger.debug("dense layer %.3g GiB, %.3g GiB available", size / _memory.GIB, available / _memory.GIB)
    if size > available:
        msg = (
            f"The denoised layer adata.layers[{key_added!r}] would take {size / _memory.GIB:.3g} GiB ({n_obs} cells "
            f"x {n_vars} genes x 4 bytes), more than the {available / _memory.GIB:.3g} GiB of memory available; "
            f"nothing was computed. {alternatives}"
        )
        raise MemoryError(msg)


def dense_layer(
    fit, modelled: sparse.csr_matrix | None, counts, genes: np.ndarray | None, *, progress: bool
) -> np.ndarray:
    """The ``float32`` output layer: the fit's reconstruction of the modelled genes, the raw counts elsewhere.

    The raw counts are read block by block, so ``counts`` may be on disk (a backed AnnData's ``X``).
    """
    n_cells, n_genes = counts.shape
    output = np.empty((n_cells, n_genes), dtype=np.float32)
    if genes is not None:
        rest = np.setdiff1d(np.arange(n_genes), genes)
        raw = RowBlocks(counts, genes=rest, checked=True, block_rows=_CHUNK)
    for b, rows in enumerate(tqdm(block_slices(n_cells, _CHUNK), desc="writing", disable=not progress)):
        block = fit.reconstruct(modelled, rows)
        if genes is None:
            output[rows] = block
        else:
            output[rows, genes] = block
            output[rows, rest] = raw.block(b).toarray()
    return output


def factor_keys(key_added: str) -> dict[str, tuple[str, str]]:
    """Where each stored factor lives: ``{factor: (attribute, key)}``."""
    return {
        "scores": ("obsm", f"X_{key_added}"),
        "loadings": ("varm", f"{key_added}_loadings"),
        "mean": ("var", f"{key_added}_mean"),
        "modelled": ("var", f"{key_added}_modelled"),
        "library_size": ("obs", f"{key_added}_library_size"),
        "scale": ("obs", f"{key_added}_scale"),
    }


def _scaled_factors(fit: LowRankSelection, row_chunks: tuple[int, ...] | None):
    """The chosen rank's scores and loadings and the per-cell scale (on dask's workers with ``row_chunks``)."""
    scores, loadings = fit.embedding(), fit.loadings
    args = (fit.factors.mean, scores, loadings, fit.library_size, fit.target_sum)
    if row_chunks is None:
        scale = cell_scale(*args, chunk_size=_CHUNK)
    else:
        from .._dask import cell_scale_chunks

        scale = cell_scale_chunks(*args, rows=row_chunks, chunk_size=_CHUNK)
    return scores, loadings, scale


def lazy_layer(fit: LowRankSelection, raw, genes: np.ndarray | None):
    """The ``float32`` output layer as a lazy dask array, chunked like ``raw`` (the counts, a dask array of CSR chunks).

    The per-cell scale is computed on dask's workers now; the layer's chunks when the array is computed (by
    :meth:`dask.array.Array.compute`, or chunk by chunk by anndata's writers).
    """
    from .._dask import denoised_layer

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


def stale_entries(key_added: str, output: str) -> dict[str, dict]:
    """Removals of an earlier output under ``key_added`` that the new record replaces.

    The other kind of output, and the posterior standard deviations (:func:`sd_entries`); an entry the new run
    writes again overrides its removal in :func:`merge_entries`.
    """
    sd_key = f"{key_added}_sd"
    if output == "factors":
        return {"layers": {key_added: DELETE, sd_key: DELETE}}
    entries: dict[str, dict] = {"obs": {}, "var": {}, "obsm": {}, "varm": {}, "layers": {sd_key: DELETE}}
    for attribute, key in factor_keys(key_added).values():
        entries[attribute][key] = DELETE
    return entries


def merge_entries(*parts: dict[str, dict]) -> dict[str, dict]:
    """Entries for :func:`scn2s._validate.write_results` from several parts: ``{attribute: {key: value}}``.

    A later part's value of a key replaces an earlier one's (a write replaces a removal by :func:`stale_entries`).
    """
    merged: dict[str, dict] = {}
    for part in parts:
        for attribute, entries in part.items():
            merged.setdefault(attribute, {}).update(entries)
    return merged


def embedding_entries(
    fit: LowRankSelection | AutoencoderSelection,
    modelled: sparse.csr_matrix | None,
    n_vars: int,
    genes: np.ndarray | None,
    *,
    key_added: str,
) -> dict[str, dict]:
    """The cells' embedding ``obsm[f"X_{key_added}"]`` of the chosen family (and its loadings), for any output.

    Low-rank: the cells' scores of the applied rank (:meth:`~scn2s.select.LowRankSelection.embedding`) and the
    genes' loadings in ``varm[f"{key_added}_loadings"]`` (zero outside ``mask_var``), the same as
    ``output="factors"`` stores. Autoencoder: the network's code of each cell's counts of the modelled genes
    (``modelled``; :meth:`~scn2s.select.AutoencoderSelection.embedding`), and the removal of loadings of an
    earlier low-rank run under the same key. Either embedding is for ``sc.pp.neighbors(use_rep=...)``.
    """
    obsm_key, varm_key = factor_keys(key_added)["scores"][1], factor_keys(key_added)["loadings"][1]
    if not hasattr(fit, "loadings"):
        return {"obsm": {obsm_key: fit.embedding(modelled)}, "varm": {varm_key: DELETE}}
    loadings = np.zeros((n_vars, fit.rank), dtype=np.float64)
    loadings[slice(None) if genes is None else genes] = fit.loadings
    return {"obsm": {obsm_key: fit.embedding()}, "varm": {varm_key: loadings}}


def check_uncertainty(uncertainty: bool, method: str, output: str) -> None:
    """Raise :class:`ValueError`, before any work, if ``uncertainty=True`` cannot be honoured."""
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
    fit: LowRankSelection | AutoencoderSelection,
    modelled: sparse.csr_matrix | None,
    n_vars: int,
    genes: np.ndarray | None,
    *,
    key_added: str,
    progress: bool,
) -> dict[str, dict]:
    """The posterior standard deviations ``layers[f"{key_added}_sd"]`` (``float32``, cells x genes), if the fit has any.

    Computed block by block (:meth:`~scn2s.select.AutoencoderSelection.posterior_sd`); ``NaN`` for genes outside
    ``mask_var`` (their raw counts are kept, with no posterior). A fit without a posterior (the low-rank family
    chosen by ``method="auto"``, or an autoencoder without ``posterior``) writes nothing, with a
    :class:`UserWarning`.
    """
    key = f"{key_added}_sd"
    if not getattr(fit, "has_posterior", False):
        what = "the low-rank family was chosen" if hasattr(fit, "loadings") else "the chosen network has no posterior"
        msg = (
            f"uncertainty=True: {what}, so there is no posterior standard deviation and layers[{key!r}] is not "
            'written. Fix the family with method="autoencoder" and posterior=True in autoencoder_configs to have it.'
        )
        warnings.warn(msg, UserWarning, stacklevel=3)
        return {}
    n_cells = modelled.shape[0]
    output = np.full((n_cells, n_vars), np.nan, dtype=np.float32)
    for rows in tqdm(block_slices(n_cells, _CHUNK), desc="posterior sd", disable=not progress):
        block = fit.posterior_sd(modelled, rows)
        if genes is None:
            output[rows] = block
        else:
            output[rows, genes] = block
    return {"layers": {key: output}}
