"""Simulated counts with known truth."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse, special

__all__ = ["simulate"]


def simulate(
    n_cells: int = 2000,
    n_genes: int = 1000,
    *,
    n_types: int = 6,
    rank: int = 4,
    depth: float = 2000.0,
    depth_spread: float = 0.5,
    structure: Literal["types", "trajectory", "sqrt_linear"] = "types",
    rng: int | np.random.Generator | None = 0,
) -> AnnData:
    """Simulate Poisson UMI counts from a known expression truth.

    Expression frequencies (summing to one per cell) follow one of three structures:

    ``"types"``
        Each cell's log expression is a gene baseline (log-normal spread over four orders of magnitude) plus
        its cell type's effect (each type shifts about 10% of genes) plus ``rank`` continuous programs (cell
        scores times gene loadings), through a softmax over genes.
    ``"trajectory"``
        Cells lie on a one-dimensional path; each gene's log expression is its baseline plus a bump of width
        0.05 centred at a random point of the path (``n_types`` and ``rank`` unused). A smooth non-linear
        manifold that a linear model needs many components for.
    ``"sqrt_linear"``
        The square roots of the frequencies are exactly of rank ``rank``: non-negative cell scores times
        non-negative gene profiles (``n_types`` unused). The structure a low-rank model in square-root space
        fits exactly.

    A log-normal library size around ``depth`` gives the true rates, and counts are Poisson draws of them.

    Parameters
    ----------
    n_cells, n_genes
        Shape of the count matrix.
    n_types
        Number of discrete cell types (unequal sizes), for ``"types"``.
    rank
        Number of continuous expression programs, or the rank for ``"sqrt_linear"``.
    depth
        Median expected molecules per cell.
    depth_spread
        Standard deviation of the log library size.
    structure
        Structure of the truth, see above.
    rng
        Seed or generator.

    Returns
    -------
    AnnData with

    ``X``
        CSR ``int32`` Poisson counts.
    ``layers["rates"]``
        ``float32`` true rates (expected counts), the truth a denoiser estimates.
    ``obs["cell_type"]`` (``"types"``), ``obs["pseudotime"]`` (``"trajectory"``), ``obs["library_size"]``
        True type or position, and expected library size of each cell.
    ``uns["simulation"]``
        The parameters.
    """
    rng = np.random.default_rng(rng)
    if structure not in ("types", "trajectory", "sqrt_linear"):
        msg = f"structure must be 'types', 'trajectory' or 'sqrt_linear', got {structure!r}."
        raise ValueError(msg)
    baseline = rng.normal(0.0, 1.5, n_genes)
    obs = pd.DataFrame(index=[f"cell_{i}" for i in range(n_cells)])
    if structure == "types":
        type_weights = rng.dirichlet(np.full(n_types, 2.0))
        cell_type = rng.choice(n_types, size=n_cells, p=type_weights)
        markers = rng.random((n_types, n_genes)) < 0.1
        type_effect = markers * rng.normal(0.0, 1.2, (n_types, n_genes))
        scores = rng.normal(0.0, 1.0, (n_cells, rank))
        loadings = rng.normal(0.0, 0.4, (rank, n_genes)) * (rng.random((rank, n_genes)) < 0.3)
        frequencies = special.softmax(baseline[None, :] + type_effect[cell_type] + scores @ loadings, axis=1)
        obs["cell_type"] = pd.Categorical([f"type_{t}" for t in cell_type])
    elif structure == "trajectory":
        time = rng.random(n_cells)
        centre = rng.random(n_genes)
        amplitude = rng.gamma(4.0, 0.6, n_genes)
        bumps = amplitude * np.exp(-((time[:, None] - centre[None, :]) ** 2) / (2 * 0.05**2))
        frequencies = special.softmax(baseline[None, :] + bumps, axis=1)
        obs["pseudotime"] = time
    else:
        scores = rng.gamma(1.0, 1.0, (n_cells, rank))
        profiles = rng.gamma(0.5, 1.0, (rank, n_genes)) * np.exp(baseline / 2)[None, :]
        root = scores @ profiles
        frequencies = root**2 / np.sum(root**2, axis=1, keepdims=True)
    library_size = depth * np.exp(rng.normal(0.0, depth_spread, n_cells))
    rates = library_size[:, None] * frequencies
    counts = sparse.csr_matrix(rng.poisson(rates).astype(np.int32))
    obs["library_size"] = library_size
    var = pd.DataFrame(index=[f"gene_{j}" for j in range(n_genes)])
    adata = AnnData(X=counts, obs=obs, var=var, layers={"rates": rates.astype(np.float32)})
    adata.uns["simulation"] = {
        "n_types": n_types,
        "rank": rank,
        "depth": depth,
        "depth_spread": depth_spread,
        "structure": structure,
    }
    return adata
