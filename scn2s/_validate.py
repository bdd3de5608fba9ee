"""Checks and fetches shared by the AnnData-level functions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["check_counts", "describe_source", "get_counts", "seed_record"]


def describe_source(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def get_counts(adata: AnnData, layer: str | None):
    """The count matrix of ``adata`` (``X`` or a layer), checked to be non-negative integers."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        msg = f"adata is empty ({adata.n_obs} cells x {adata.n_vars} genes)."
        raise ValueError(msg)
    if layer is None:
        X = adata.X
    elif layer in adata.layers:
        X = adata.layers[layer]
    else:
        available = ", ".join(repr(k) for k in adata.layers) or "none"
        msg = f"Layer {layer!r} not found in adata.layers (available: {available})."
        raise KeyError(msg)
    if X is None:
        msg = "adata.X is None; pass layer= naming the raw counts."
        raise ValueError(msg)
    check_counts(X, describe_source(layer))
    return X


def check_counts(X, source: str) -> None:
    """Raise if ``X`` is not a matrix of finite, non-negative integer counts."""
    values = X.data if sparse.issparse(X) else np.asarray(X)
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        msg = f"{source} has dtype {values.dtype}; expected integer or float counts."
        raise TypeError(msg)
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)):
            msg = f"{source} contains NaN or infinite values; expected raw counts."
            raise ValueError(msg)
        if np.any(values != np.round(values)):
            msg = (
                f"{source} holds non-integer values, so it looks normalised or log-transformed; "
                'scn2s needs raw UMI counts. If they are in a layer, pass layer="counts" (or its name).'
            )
            raise ValueError(msg)
    if values.size and values.min() < 0:
        msg = f"{source} contains negative values; expected raw counts."
        raise ValueError(msg)


def seed_record(seed) -> int | str:
    """A storable description of the ``rng`` argument."""
    if seed is None:
        return "none"
    if isinstance(seed, (int, np.integer)):
        return int(seed)
    if isinstance(seed, np.random.Generator):
        seq = seed.bit_generator.seed_seq
        entropy = getattr(seq, "entropy", None)
        spawn_key = getattr(seq, "spawn_key", ())
        return f"Generator(entropy={entropy}, spawn_key={tuple(spawn_key)})"
    return repr(seed)
