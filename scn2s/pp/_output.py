"""What :func:`~scn2s.pp.denoise` writes: the dense layer, or the low-rank factors that give any slice of it.

The factors are the cells' scores and the genes' loadings and means of the chosen rank, the cells' library
sizes, and a per-cell scale computed once over all modelled genes, so that :func:`scn2s.tl.reconstruct`
computes a block of cells and genes from that block alone, equal to the same block of the dense layer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from .. import _memory
from .._blocks import RowBlocks, block_slices
from ..models.lowrank import cell_scale

if TYPE_CHECKING:
    from ..select import LowRankSelection

__all__ = [
    "OUTPUTS",
    "check_layer_fits",
    "dense_layer",
    "factor_entries",
    "factor_keys",
    "lazy_layer",
    "output_keys",
    "ownership",
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
    rank, factors = fit.rank, fit.factors
    scores = factors.U[:, :rank] * factors.s[:rank]
    loadings = factors.Vt[:rank].T
    args = (factors.mean, scores, loadings, fit.library_size, fit.target_sum)
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


def output_keys(key_added: str, output: str) -> dict[str, list[str]]:
    """The keys an output of kind ``output`` under ``key_added`` writes, by attribute (the ``uns`` record too)."""
    keys: dict[str, list[str]] = {"uns": [key_added]}
    if output == "layer":
        keys["layers"] = [key_added]
        return keys
    for attribute, key in factor_keys(key_added).values():
        keys.setdefault(attribute, []).append(key)
    return keys


def ownership(key_added: str, layer: str | None) -> dict:
    """The ownership arguments of :func:`~scn2s._validate.check_writable` and :func:`~scn2s._validate.write_results`.

    For a :func:`~scn2s.pp.denoise` run: its record, the input layer (never written), and the keys written by a
    record of an earlier version, which lists none (the layer or the factors, after its ``output``).
    """

    def legacy(record) -> dict[str, list[str]] | None:
        if "params" not in record or "version" not in record:
            return None
        keys = output_keys(key_added, str(record.get("output", "layer")))
        del keys["uns"]
        return keys

    protected = () if layer is None else (("layers", layer),)
    return {"record_key": key_added, "protected": protected, "legacy": legacy}
