"""Reading the counts that :func:`~scn2s.pp.denoise` models: checked, in the form each family reads them."""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from scipy import sparse

from .._blocks import RowBlocks
from .._sparse import canonical_csr, is_dask_array
from .._validate import describe_source
from ..lowrank import LowRankOptions, clamp_rank

if TYPE_CHECKING:
    from anndata import AnnData

    from ..lowrank.dask import DaskRowBlocks

__all__ = ["ModelledCounts", "check_modelled", "is_lazy", "read_counts"]

logger = logging.getLogger(__name__)


class ModelledCounts(NamedTuple):
    """The counts of a run, as each family reads them."""

    counts: object  # the whole counts (every gene): a matrix in memory, a backed dataset or a dask array
    blocks: RowBlocks | DaskRowBlocks  # the modelled genes block by block: the low-rank family's input
    modelled: sparse.csr_matrix | None  # the modelled genes in memory (the autoencoder's input), or None
    lazy: DaskRowBlocks | None  # the data path of counts in a dask array, or None


def is_lazy(adata: AnnData, layer: str | None, method: str) -> bool:
    """Whether the counts are a dask array; raises unless ``method="lowrank"``, the family that runs on dask."""
    if layer is None:
        counts = None if adata.isbacked else adata.X
    else:
        counts = adata.layers[layer] if isinstance(layer, str) and layer in adata.layers else None
    if not is_dask_array(counts):
        return False
    if method != "lowrank":
        msg = (
            f'{describe_source(layer)} is a dask array; only method="lowrank" runs chunk by chunk on dask\'s '
            f'workers, got method={method!r}. Pass method="lowrank", or compute the counts into memory first '
            "(e.g. adata.X = adata.X.compute()) for the autoencoder."
        )
        raise ValueError(msg)
    return True


def read_counts(
    adata: AnnData, counts, genes: np.ndarray | None, *, layer: str | None, method: str, lazy: bool
) -> ModelledCounts:
    """The counts in the form ``method``'s families read them, every block checked; raises if there is no molecule.

    Counts in a dask array are checked chunk by chunk on dask's workers. The low-rank family reads the counts block
    by block (streamed from the file if backed; a dense matrix in memory is made sparse once). The autoencoder trains
    on the modelled genes in memory (read block by block from the file if backed).
    """
    source = describe_source(layer)
    backed = adata.isbacked and layer is None
    modelled = None
    if lazy:
        from ..lowrank.dask import DaskRowBlocks

        blocks = DaskRowBlocks(counts, genes=genes, source=source)
        has_molecule = blocks.has_molecule()
    elif method == "lowrank":
        if not backed and not sparse.issparse(counts):
            counts = canonical_csr(counts)
        blocks = RowBlocks(counts, genes=genes, source=source, checked=not backed)
        if backed or genes is not None:
            # one pass, which also checks every block of a backed X before any work
            has_molecule = any([bool(block.data.any()) for _, _, block in blocks])
        else:
            has_molecule = bool(counts.data.any())
    else:
        if backed:
            logger.info("reading the modelled counts of %s from %s into memory", source, adata.filename)
            modelled = RowBlocks(counts, genes=genes, source=source).to_csr()
        else:
            counts = canonical_csr(counts)  # a copy only if X holds duplicate entries; never modified
            modelled = counts[:, genes] if genes is not None else counts
        blocks = RowBlocks(modelled, checked=True)
        has_molecule = bool(modelled.data.any())
    if not has_molecule:
        where = " in the genes selected by mask_var" if genes is not None else ""
        msg = (
            f"{source} holds no molecule{where} (every count is zero); there is nothing to denoise. Check that "
            "layer= names the raw counts."
        )
        raise ValueError(msg)
    return ModelledCounts(counts, blocks, modelled, blocks if lazy else None)


def check_modelled(
    shape: tuple[int, int], method: str, options: LowRankOptions, *, source: str, stacklevel: int
) -> tuple[str, LowRankOptions]:
    """``method`` and the low-rank options that ``shape`` (cells x modelled genes) allows, with a warning if changed.

    A single modelled gene is its cells' library sizes: rank 0 of the low-rank family. A rank or largest rank
    beyond what the shape allows is lowered (:func:`~scn2s.lowrank.clamp_rank`). ``stacklevel`` is that of the
    public function's caller for a call from it.
    """
    n_cells, n_genes = shape
    if n_cells < 2:
        msg = f"denoise needs at least 2 cells to fit a model across cells; {source} has {n_cells}."
        raise ValueError(msg)
    if n_genes == 1 and options.rank != 0:
        msg = (
            "Only 1 gene is modelled: each cell's denoised count is its own count of that gene (the library size), "
            "so the output equals the counts; using rank 0."
        )
        warnings.warn(msg, UserWarning, stacklevel=stacklevel)
        return "lowrank", replace(options, rank=0)
    if options.rank is not None:
        return method, replace(options, rank=clamp_rank("rank", options.rank, shape, stacklevel=stacklevel + 1))
    if method != "autoencoder":  # the autoencoder searches no rank
        max_rank = clamp_rank("max_rank", options.max_rank, shape, stacklevel=stacklevel + 1)
        return method, replace(options, max_rank=max_rank)
    return method, options
