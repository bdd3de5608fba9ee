from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from .._sparse import canonical_csr
from .._validate import (
    check_fraction,
    check_integer,
    check_key,
    check_sample_ratio,
    describe_source,
    get_counts,
    make_rng,
    seed_record,
    versions,
    write_results,
)
from ..models.lowrank import reconstruct_counts
from ..select import LowRankSelection, clamp_rank, fit_lowrank

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

_METHODS = ("lowrank",)
_CHUNK = 1024


def denoise(
    adata: AnnData,
    *,
    method: Literal["lowrank"] = "lowrank",
    layer: str | None = None,
    key_added: str = "denoised",
    mask_var: str | np.ndarray | None = None,
    p: float = 0.5,
    n_splits: int = 3,
    max_rank: int = 50,
    rank: int | None = None,
    depth_correction: bool = True,
    sample_ratio: float | None = None,
    rng: int | np.random.Generator | None = 0,
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Denoise UMI counts with a model chosen by held-out molecules.

    The counts are split by binomial thinning into a training half (fraction ``p``) and a held-out half,
    ``n_splits`` times. For ``method="lowrank"`` the library-normalised square-root counts of the training half
    are factorised once by a randomized truncated SVD, and every rank ``0..max_rank`` is scored on the
    held-out molecules (:mod:`scn2s.loss`). The rank with the lowest mean held-out loss, carried from depth
    ``p N`` to the full depth ``N`` (``depth_correction``), is refit on the full counts, and its expected
    counts are written back.

    Parameters
    ----------
    adata
        Annotated data with raw UMI counts (cells x genes, at least 2 cells): dense, CSR or CSC, of any integer
        dtype (signed or unsigned, 8 to 64 bits; arithmetic is done in int64 / float64, so small types cannot
        overflow) or a float dtype holding integers. A view is accepted. Never modified except for the keys
        written.
    method
        Denoising family.
    layer
        Layer holding the raw counts; ``None`` uses ``adata.X``.
    key_added
        Name of the layer and ``uns`` entry written; not ``layer``, whose counts it would overwrite.
    mask_var
        Genes to model: a boolean array, or the name of a boolean ``var`` column such as
        ``"highly_variable"``. ``None`` models every gene. Genes outside the mask keep their raw counts in the
        output layer.
    p
        Fraction of the molecules in each split's training half.
    n_splits
        Number of independent splits whose held-out losses are averaged.
    max_rank
        Largest rank searched. Above ``min(n_cells - 1, n_genes)`` (the modelled genes) it is lowered to that,
        with a :class:`UserWarning`.
    rank
        Fit this rank without a search (``0``: the gene means alone); lowered like ``max_rank``. With a single
        modelled gene the output equals the counts, and rank 0 is used with a :class:`UserWarning`.
    depth_correction
        Carry the rank chosen at depth ``p N`` to the full depth (:func:`scn2s.models.lowrank.transfer_rank`).
    sample_ratio
        Fraction of the library's molecules observed, for the finite-pool overlap correction
        (:func:`scn2s.split.overlap_probabilities`), in ``(0, 1)``: at 1 nothing would be held out. ``None``:
        plain thinning.
    rng
        Seed or :class:`numpy.random.Generator`; the same seed gives bit-identical output. A Generator is
        advanced, so passing the same one twice gives two different splits.
    progress
        Show progress bars.
    copy
        Return a modified copy instead of writing to ``adata``.

    Everything is computed before anything is written, and the writes are all or nothing: after an error or
    an interrupt (``KeyboardInterrupt``) ``adata`` is as it was. Writing to a view makes it an actual AnnData
    (anndata warns); its parent is not changed.

    Returns
    -------
    ``None``, or a copy of ``adata`` if ``copy=True``, with

    ``adata.layers[key_added]``
        ``float32`` denoised expected counts, cells x genes: each cell on its own library size (its modelled
        genes sum to its observed count over them), non-negative, zero for genes with no molecule. Normalise
        and log it as you would counts.
    ``adata.uns[key_added]``
        ``method``; ``params`` (the arguments); ``best_params`` (``{"rank": k}``); ``selection``, per family,
        with ``grid`` (the ranks), ``loss_mean``, ``loss_std`` and ``loss_per_split`` (held-out loss per entry,
        see :mod:`scn2s.loss`), ``split_rank`` (chosen at depth ``p N``), ``rank`` (applied at full depth),
        ``noise_ratio``, the singular values of the splits and of the full fit, ``p``, ``n_splits`` and
        ``seed``; ``version``; ``versions`` (of Python, scn2s, numpy, scipy and anndata); ``elapsed_seconds``.

    Raises
    ------
    TypeError
        If the counts have a boolean or non-numeric dtype, or ``layer`` is not a string.
    KeyError
        If ``layer`` or the ``mask_var`` column does not exist (the message lists the layers).
    ValueError
        If the counts are not raw UMI counts (non-integer, negative, NaN, infinite, above ``2**53``) or hold no
        molecule; if ``adata`` is empty, backed, or has a single cell; or if an argument is out of range. Each
        message names where the counts were read (``adata.X`` or ``adata.layers[...]``) and what to do.
    """
    start = time.perf_counter()
    if method not in _METHODS:
        msg = f"method must be one of {_METHODS}, got {method!r}."
        raise ValueError(msg)
    check_key("key_added", key_added, layer=layer)
    check_fraction("p", p)
    check_integer("n_splits", n_splits, minimum=1)
    check_integer("max_rank", max_rank, minimum=1)
    check_integer("rank", rank, minimum=0, allow_none=True)
    check_sample_ratio(sample_ratio, held_out=True)
    seed = seed_record(rng)
    generator = make_rng(rng)
    counts = get_counts(adata, layer)
    genes = _gene_mask(adata, mask_var)

    source = describe_source(layer)
    counts = canonical_csr(counts)  # a copy only if X holds duplicate entries; never modified
    modelled = counts[:, genes] if genes is not None else counts
    if not modelled.data.any():
        where = " in the genes selected by mask_var" if genes is not None else ""
        msg = (
            f"{source} holds no molecule{where} (every count is zero); there is nothing to denoise. Check that "
            "layer= names the raw counts."
        )
        raise ValueError(msg)
    n_cells, n_genes = modelled.shape
    if n_cells < 2:
        msg = f"denoise needs at least 2 cells to fit a model across cells; {source} has {n_cells}."
        raise ValueError(msg)
    if n_genes == 1 and rank != 0:
        msg = (
            "Only 1 gene is modelled: each cell's denoised count is its own count of that gene (the library size), "
            "so the output equals the counts; using rank 0."
        )
        warnings.warn(msg, UserWarning, stacklevel=2)
        rank = 0
    elif rank is None:
        max_rank = clamp_rank("max_rank", max_rank, modelled.shape, stacklevel=3)
    else:
        rank = clamp_rank("rank", rank, modelled.shape, stacklevel=3)
    logger.info("denoising %s: %d cells x %d genes, %d non-zeros", source, n_cells, n_genes, modelled.nnz)
    fit = fit_lowrank(
        modelled,
        max_rank=max_rank,
        rank=rank,
        p=p,
        n_splits=n_splits,
        sample_ratio=sample_ratio,
        depth_correction=depth_correction,
        rng=generator,
        progress=progress,
    )
    output = _write_dense(fit, counts, genes, progress=progress)

    params = {
        "method": method,
        "layer": layer or "X",
        "mask_var": mask_var if isinstance(mask_var, str) else ("custom" if mask_var is not None else "all"),
        "p": p,
        "n_splits": n_splits,
        "max_rank": max_rank,
        "depth_correction": depth_correction,
        "seed": seed,
    }
    if rank is not None:
        params["rank"] = rank
    if sample_ratio is not None:
        params["sample_ratio"] = sample_ratio
    record = {
        "method": method,
        "params": params,
        "best_params": {"rank": fit.rank},
        "selection": {"lowrank": _selection_record(fit, p=p, n_splits=n_splits, seed=seed)},
        "version": _version(),
        "versions": versions(),
        "elapsed_seconds": time.perf_counter() - start,
    }
    # everything is computed: write all or nothing
    if copy:
        adata = adata.copy()
    write_results(adata, layers={key_added: output}, uns={key_added: record})
    logger.info("wrote layers[%r]: rank %d in %.1f s", key_added, fit.rank, record["elapsed_seconds"])
    return adata if copy else None


def _gene_mask(adata: AnnData, mask_var) -> np.ndarray | None:
    if mask_var is None:
        return None
    if isinstance(mask_var, str):
        if mask_var not in adata.var:
            msg = f"mask_var={mask_var!r} is not a column of adata.var (run sc.pp.highly_variable_genes first?)."
            raise KeyError(msg)
        mask = adata.var[mask_var].to_numpy()
    else:
        mask = np.asarray(mask_var)
    if mask.dtype != bool or mask.shape != (adata.n_vars,):
        msg = (
            f"mask_var must be a boolean mask over the {adata.n_vars} genes, got dtype {mask.dtype} and shape "
            f"{mask.shape}."
        )
        raise ValueError(msg)
    if not mask.any():
        msg = "mask_var selects no gene; select at least one, or pass mask_var=None to model every gene."
        raise ValueError(msg)
    return np.flatnonzero(mask)


def _write_dense(fit: LowRankSelection, counts, genes: np.ndarray | None, *, progress: bool) -> np.ndarray:
    n_cells, n_genes = counts.shape
    output = np.empty((n_cells, n_genes), dtype=np.float32)
    if genes is not None:
        raw = sparse.csr_matrix(counts)
        rest = np.setdiff1d(np.arange(n_genes), genes)
    for start in tqdm(range(0, n_cells, _CHUNK), desc="writing", disable=not progress):
        rows = slice(start, min(start + _CHUNK, n_cells))
        block = reconstruct_counts(fit.factors, fit.rank, fit.library_size, fit.target_sum, rows=rows)
        if genes is None:
            output[rows] = block
        else:
            output[rows, genes] = block
            output[rows, rest] = raw[rows][:, rest].toarray()
    return output


def _selection_record(fit: LowRankSelection, *, p: float, n_splits: int, seed) -> dict:
    record = {
        "loss": "heldout_sqrt_mse",
        "split_rank": fit.split_rank,
        "rank": fit.rank,
        "singular_values": fit.factors.s,
        "p": p,
        "n_splits": n_splits,
        "seed": seed,
    }
    if len(fit.ranks):
        record |= {
            "grid": {"rank": fit.ranks},
            "loss_mean": fit.loss_mean,
            "loss_std": fit.loss_std,
            "loss_per_split": fit.losses,
            "split_singular_values": fit.split_singular_values,
        }
        if np.isfinite(fit.noise_ratio):
            record["noise_ratio"] = fit.noise_ratio
    return record


def _version() -> str:
    from .. import __version__

    return __version__
