from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from .._blocks import RowBlocks
from .._names import split_ownership
from .._sparse import is_dask_array
from .._validate import (
    boundary_rng,
    check_fraction,
    check_key,
    check_sample_ratio,
    check_writable,
    describe_source,
    get_counts,
    versions,
    write_results,
)
from ..split import binomial_split

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)


def split_counts(
    adata: AnnData,
    *,
    p: float = 0.5,
    layer: str | None = None,
    key_added: tuple[str, str] = ("counts_a", "counts_b"),
    sample_ratio: float | None = None,
    rng: int | np.random.Generator | np.random.RandomState | None = 0,
    copy: bool = False,
) -> AnnData | None:
    """Split each cell's molecules into two halves by binomial thinning.

    ``X_a ~ Binomial(X, p)`` and ``X_b = X - X_a``: given the true expression, the halves are independent
    Poisson samples at depths ``p`` and ``1 - p`` of the original, which is what molecular cross-validation
    and Noise2Self need. Sparse counts stay sparse.

    The writes are all or nothing: after an error or an interrupt ``adata`` is as it was.

    Parameters
    ----------
    adata
        Annotated data with raw UMI counts: dense, CSR or CSC, of any integer dtype or a float dtype holding
        integers (as for :func:`scn2s.pp.denoise`). A view is accepted.
    p
        Expected fraction of each count in the first half.
    layer
        Layer holding the counts; ``None`` uses ``adata.X``.
    key_added
        Names of the two layers written; two different names, neither of them ``layer``.
    sample_ratio
        Fraction of the library's molecules observed, for the finite-pool overlap correction of molecular
        cross-validation (:func:`scn2s.split.overlap_probabilities` gives the formula). The halves then share
        some molecules and sum to more than the counts. ``None``: plain thinning.
    rng
        Integer seed (any size), ``None``, :class:`numpy.random.Generator` or :class:`numpy.random.RandomState`;
        the integer the run is seeded by is recorded.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` if ``copy=True``, with

    ``adata.layers[key_added[0]]``, ``adata.layers[key_added[1]]``
        The two halves, of the input's kind (dense, CSR or CSC) and dtype (int64 for float counts beyond their
        dtype's exact integers, :func:`scn2s.split.binomial_split`).
    ``adata.uns["split_counts"]``
        ``params`` (``p``, ``layer``, ``key_added``, ``sample_ratio`` and the seed), ``versions``
        (``python``, ``scn2s``, ``numpy``, ``scipy``, ``anndata``) and ``keys`` (``layers``: the layers written). The
        layers of an earlier split that this record replaces are removed (the input layer excepted); a layer
        ``key_added`` names that no earlier split wrote is refused before any work.
    """
    if not isinstance(key_added, (tuple, list)) or len(key_added) != 2 or key_added[0] == key_added[1]:
        msg = f"key_added must be two different layer names, got {key_added!r}."
        raise ValueError(msg)
    key_a, key_b = key_added
    check_key("key_added[0]", key_a, layer=layer)
    check_key("key_added[1]", key_b, layer=layer)
    check_fraction("p", p)
    check_sample_ratio(sample_ratio, held_out=False)
    owner = split_ownership(layer)
    check_writable(adata, {"layers": [key_a, key_b]}, **owner)  # before any work: write only keys scn2s owns
    generator, seed = boundary_rng(rng)
    counts = get_counts(adata, layer)
    if is_dask_array(counts):
        msg = (
            f"{describe_source(layer)} is a dask array; split_counts writes the halves as layers in memory. Compute "
            "the counts first (e.g. adata.X = adata.X.compute()), or denoise them where they are with "
            'scn2s.pp.denoise(adata, method="lowrank").'
        )
        raise ValueError(msg)
    if adata.isbacked and layer is None:  # the halves are layers in memory: read X block by block
        counts = RowBlocks(counts, source=describe_source(layer)).to_csr()
    halves = binomial_split(counts, p, rng=generator, sample_ratio=sample_ratio)
    params = {"p": p, "layer": layer or "X", "key_added": [key_a, key_b], "seed": seed}
    if sample_ratio is not None:
        params["sample_ratio"] = sample_ratio
    if copy:
        adata = adata.copy()
    write_results(
        adata,
        record={"params": params, "versions": versions()},
        layers={key_a: halves[0], key_b: halves[1]},
        **owner,
    )
    logger.info("split %s into layers %r and %r (p=%.2f)", describe_source(layer), key_a, key_b, p)
    return adata if copy else None
