"""Denoised values for any slice of cells and genes, from the factors of ``pp.denoise(output="factors")``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from ._factors import check_chunk_size, load_factors, positions

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["reconstruct"]

logger = logging.getLogger(__name__)


def reconstruct(
    adata: AnnData,
    *,
    key: str = "denoised",
    genes=None,
    cells=None,
    chunk_size: int = 10_000,
) -> np.ndarray:
    """Denoised values of a slice of cells and genes, from the low-rank factors stored by denoise.

    Computed in chunks of ``chunk_size`` cells from the factors that ``scn2s.pp.denoise(adata,
    method="lowrank", output="factors")`` stored, without the other cells or genes; the values are those
    ``output="layer"`` would have written in ``adata.layers[key]`` for the same cells and genes. Genes outside
    ``mask_var`` take their raw counts from the layer recorded in ``adata.uns[key]["params"]["layer"]``. A
    subset of ``adata`` (``adata[cells, genes]``) gives the values of those cells and genes.

    Parameters
    ----------
    adata
        Annotated data holding the factors.
    key
        The ``key_added`` of :func:`scn2s.pp.denoise`.
    genes
        Genes to compute: names, a boolean mask, integer positions or a slice; ``None`` for all.
    cells
        Cells to compute, selected like ``genes``; ``None`` for all.
    chunk_size
        Cells per chunk (memory: ``chunk_size`` x the modelled genes requested x 8 bytes).

    Returns
    -------
    ``float32`` array, the selected cells x the selected genes, in the order given. ``adata`` is not modified.

    Raises
    ------
    KeyError
        If ``adata.uns[key]`` or a stored factor is missing, or a name is not found.
    ValueError
        If ``adata.uns[key]`` holds no factors (written with ``output="layer"``: the values are in
        ``adata.layers[key]``).
    """
    check_chunk_size(chunk_size)
    factors = load_factors(adata, key)
    rows = positions(cells, adata.obs_names, "cells")
    columns = positions(genes, adata.var_names, "genes")
    out = np.empty((len(rows), len(columns)), dtype=np.float32)
    for start in range(0, len(rows), chunk_size):
        block = slice(start, start + chunk_size)
        out[block] = factors.block(rows[block], columns)
    logger.info("reconstructed %d cells x %d genes from the factors of uns[%r]", len(rows), len(columns), key)
    return out
