"""The factors stored by ``pp.denoise(output="factors")``, read back and checked, and blocks of values from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from .._names import factor_keys
from .._sparse import is_dask_array
from .._validate import check_integer
from ..lowrank.model import unscaled_counts

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

__all__ = ["StoredFactors", "load_factors", "positions"]


@dataclass
class StoredFactors:
    """What a block of the denoised layer is computed from (all arrays over the AnnData's cells or genes)."""

    scores: np.ndarray  # (cells, rank)
    loadings: np.ndarray  # (genes, rank)
    mean: np.ndarray  # (genes,)
    modelled: np.ndarray  # (genes,) bool
    library_size: np.ndarray  # (cells,)
    scale: np.ndarray  # (cells,)
    target_sum: float
    raw: Any  # the counts of the genes that are not modelled (None if every gene is modelled)
    source: str

    def block(self, rows: np.ndarray, genes: np.ndarray) -> np.ndarray:
        """``float32`` denoised values of cells ``rows`` and genes ``genes`` (integer positions)."""
        out = np.empty((len(rows), len(genes)), dtype=np.float32)
        modelled = self.modelled[genes]
        if modelled.any():
            picked = genes[modelled]
            # the loadings' transpose as a C-ordered (rank, genes) array: the layout of the fit's Vt
            loadings = np.ascontiguousarray(self.loadings[picked].T).T
            counts = unscaled_counts(
                self.mean[picked], self.scores[rows], loadings, self.library_size[rows], self.target_sum
            )
            counts *= self.scale[rows][:, None]
            out[:, modelled] = counts
        if not modelled.all():
            out[:, ~modelled] = self._raw_block(rows, genes[~modelled])
        return out

    def _raw_block(self, rows: np.ndarray, genes: np.ndarray) -> np.ndarray:
        raw = self.raw
        if len(rows) == 0:
            return np.empty((0, len(genes)), dtype=np.float32)
        if not (sparse.issparse(raw) or isinstance(raw, np.ndarray)):
            # on disk (a backed AnnData's X) or in a dask array: read the range of rows that covers the block
            start = int(rows.min())
            raw, rows = raw[start : int(rows.max()) + 1], rows - start
            if is_dask_array(raw):
                raw = raw.compute()
        if sparse.issparse(raw):
            return sparse.csr_matrix(raw[rows])[:, genes].toarray()
        return np.asarray(raw)[np.ix_(rows, genes)]


def load_factors(adata: AnnData, key: str) -> StoredFactors:
    """The factors of ``uns[key]``, checked against ``adata``'s shape.

    Raises
    ------
    KeyError
        If ``uns[key]``, a stored factor or the layer of the raw counts is missing.
    ValueError
        If ``uns[key]`` holds no factors (written with ``output="layer"``) or a factor has the wrong shape.
    """
    if not isinstance(key, str) or key not in adata.uns:
        msg = (
            f"adata.uns has no {key!r} entry; run scn2s.pp.denoise(adata, method='lowrank', output='factors', "
            f"key_added={key!r}) first."
        )
        raise KeyError(msg)
    record = adata.uns[key]
    if not isinstance(record, dict) or "factors" not in record:
        if isinstance(record, dict) and record.get("output", "layer") == "layer" and key in adata.layers:
            msg = (
                f"adata.uns[{key!r}] was written with output='layer': the denoised values are already in "
                f"adata.layers[{key!r}]; slice that layer instead."
            )
        else:
            msg = (
                f"adata.uns[{key!r}] holds no factors; run scn2s.pp.denoise(adata, method='lowrank', "
                f"output='factors', key_added={key!r}) first."
            )
        raise ValueError(msg)
    arrays = {}
    for name, (attribute, entry) in factor_keys(key).items():
        mapping = getattr(adata, attribute)
        if entry not in mapping:
            msg = (
                f"adata.{attribute}[{entry!r}] is missing: the factors of adata.uns[{key!r}] are incomplete; run "
                f"scn2s.pp.denoise(..., output='factors', key_added={key!r}) again."
            )
            raise KeyError(msg)
        arrays[name] = np.asarray(mapping[entry])
    rank = int(record["factors"]["rank"])
    expected = {
        "scores": (adata.n_obs, rank),
        "loadings": (adata.n_vars, rank),
        "mean": (adata.n_vars,),
        "modelled": (adata.n_vars,),
        "library_size": (adata.n_obs,),
        "scale": (adata.n_obs,),
    }
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            attribute, entry = factor_keys(key)[name]
            msg = f"adata.{attribute}[{entry!r}] has shape {arrays[name].shape}, expected {shape} (rank {rank})."
            raise ValueError(msg)
    modelled = arrays["modelled"].astype(bool)
    layer = record.get("params", {}).get("layer", "X")
    raw, source = None, "adata.X" if layer == "X" else f"adata.layers[{layer!r}]"
    if not modelled.all():
        if layer == "X":
            raw = adata.X
        elif layer in adata.layers:
            raw = adata.layers[layer]
        if raw is None:
            msg = f"{source} is missing: the genes outside the modelled ones take their raw counts from it."
            raise KeyError(msg)
    return StoredFactors(
        scores=arrays["scores"].astype(np.float64, copy=False),
        loadings=arrays["loadings"].astype(np.float64, copy=False),
        mean=arrays["mean"].astype(np.float64, copy=False),
        modelled=modelled,
        library_size=arrays["library_size"].astype(np.float64, copy=False),
        scale=arrays["scale"].astype(np.float64, copy=False),
        target_sum=float(record["factors"]["target_sum"]),
        raw=raw,
        source=source,
    )


def positions(selector, names: pd.Index, what: str) -> np.ndarray:
    """Integer positions of ``selector`` (None, names, a boolean mask, integer positions or a slice) in ``names``."""
    n = len(names)
    if selector is None:
        return np.arange(n)
    if isinstance(selector, slice):
        return np.arange(n)[selector]
    if isinstance(selector, str):
        selector = [selector]
    values = np.atleast_1d(np.asarray(selector))
    if values.size == 0:
        return np.arange(0)
    if values.ndim != 1:
        msg = f"{what} must be one-dimensional, got shape {values.shape}."
        raise ValueError(msg)
    if values.dtype == bool:
        if values.shape != (n,):
            msg = f"a boolean mask of {what} must have length {n}, got {len(values)}."
            raise ValueError(msg)
        return np.flatnonzero(values)
    if values.dtype.kind in "iu":
        if values.max() >= n or values.min() < -n:
            msg = f"{what} positions must lie in [-{n}, {n}), got values from {values.min()} to {values.max()}."
            raise IndexError(msg)
        return np.arange(n)[values]
    if values.dtype.kind in "OUS":
        if not names.is_unique:
            msg = f"the {what} names are not unique; select by position or boolean mask, or make the names unique."
            raise ValueError(msg)
        found = names.get_indexer(values)
        if (found < 0).any():
            missing = [str(v) for v in values[found < 0][:5]]
            msg = f"{int((found < 0).sum())} {what} not found, e.g. {missing}."
            raise KeyError(msg)
        return found
    msg = f"{what} must be names, a boolean mask, integer positions or a slice, got dtype {values.dtype}."
    raise TypeError(msg)


def check_chunk_size(chunk_size) -> None:
    """Raise unless ``chunk_size`` is a positive integer."""
    check_integer("chunk_size", chunk_size, minimum=1)
