from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from .._validate import describe_source, get_counts, seed_record
from ..models.lowrank import reconstruct_counts
from ..select import LowRankSelection, fit_lowrank

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
        Annotated data with raw UMI counts (cells x genes), dense or sparse; never modified except for the
        keys written.
    method
        Denoising family.
    layer
        Layer holding the raw counts; ``None`` uses ``adata.X``.
    key_added
        Name of the layer and ``uns`` entry written.
    mask_var
        Genes to model: a boolean array, or the name of a boolean ``var`` column such as
        ``"highly_variable"``. ``None`` models every gene. Genes outside the mask keep their raw counts in the
        output layer.
    p
        Fraction of the molecules in each split's training half.
    n_splits
        Number of independent splits whose held-out losses are averaged.
    max_rank
        Largest rank searched.
    rank
        Fit this rank without a search.
    depth_correction
        Carry the rank chosen at depth ``p N`` to the full depth (:func:`scn2s.models.lowrank.transfer_rank`).
    sample_ratio
        Fraction of the library's molecules observed, for the finite-pool overlap correction
        (:func:`scn2s.split.overlap_probabilities`). ``None``: plain thinning.
    rng
        Seed or :class:`numpy.random.Generator`; the same seed gives the same output.
    progress
        Show progress bars.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` if ``copy=True``, with

    ``adata.layers[key_added]``
        ``float32`` denoised expected counts, cells x genes: each cell on its own library size (its modelled
        genes sum to its observed count over them), non-negative, zero for genes with no molecule. Normalise
        and log it as you would counts.
    ``adata.uns[key_added]``
        ``method``; ``params`` (the arguments); ``best_params`` (``{"rank": k}``); ``selection``, per family,
        with ``grid`` (the ranks), ``loss`` (the loss's name), ``loss_mean``, ``loss_std`` and
        ``loss_per_split`` (held-out loss per entry, see :mod:`scn2s.loss`), ``split_rank`` (chosen at depth
        ``p N``), ``rank`` (applied at full depth), ``noise_ratio``, ``split_singular_values`` and
        ``singular_values`` (the spectra of the splits and of the full fit), ``p``, ``n_splits`` and ``seed``;
        ``version``; ``elapsed_seconds``. :func:`scn2s.pl.selection` plots ``selection``.
    """
    start = time.perf_counter()
    if method not in _METHODS:
        msg = f"method must be one of {_METHODS}, got {method!r}."
        raise ValueError(msg)
    counts = get_counts(adata, layer)
    genes = _gene_mask(adata, mask_var)
    seed = seed_record(rng)
    generator = np.random.default_rng(rng)

    modelled = sparse.csr_matrix(counts[:, genes] if genes is not None else counts)
    logger.info(
        "denoising %s: %d cells x %d genes, %d non-zeros", describe_source(layer), *modelled.shape, modelled.nnz
    )
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

    if copy:
        adata = adata.copy()
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
        "elapsed_seconds": time.perf_counter() - start,
    }
    adata.layers[key_added] = output
    adata.uns[key_added] = record
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
        msg = f"mask_var must be a boolean mask over the {adata.n_vars} genes."
        raise ValueError(msg)
    if not mask.any():
        msg = "mask_var selects no gene."
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
