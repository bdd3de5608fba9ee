"""Simulated counts with known truth."""

from __future__ import annotations

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
    rng: int | np.random.Generator | None = 0,
) -> AnnData:
    """Simulate Poisson UMI counts from a known expression truth.

    Each cell's log expression is a gene baseline (log-normal spread over four orders of magnitude) plus
    its cell type's effect (each type shifts about 10% of genes) plus ``rank`` continuous programs (cell
    scores times gene loadings). A softmax over genes gives expression frequencies, a log-normal library
    size around ``depth`` gives the true rates, and counts are Poisson draws of those rates.

    Parameters
    ----------
    n_cells, n_genes
        Shape of the count matrix.
    n_types
        Number of discrete cell types (unequal sizes).
    rank
        Number of continuous expression programs.
    depth
        Median expected molecules per cell.
    depth_spread
        Standard deviation of the log library size.
    rng
        Seed or generator.

    Returns
    -------
    AnnData with

    ``X``
        CSR ``int32`` Poisson counts.
    ``layers["rates"]``
        ``float32`` true rates (expected counts), the truth a denoiser estimates.
    ``obs["cell_type"]``, ``obs["library_size"]``
        True type and expected library size of each cell.
    ``uns["simulation"]``
        The parameters.
    """
    rng = np.random.default_rng(rng)
    baseline = rng.normal(0.0, 1.5, n_genes)
    type_weights = rng.dirichlet(np.full(n_types, 2.0))
    cell_type = rng.choice(n_types, size=n_cells, p=type_weights)
    markers = rng.random((n_types, n_genes)) < 0.1
    type_effect = markers * rng.normal(0.0, 1.2, (n_types, n_genes))
    scores = rng.normal(0.0, 1.0, (n_cells, rank))
    loadings = rng.normal(0.0, 0.4, (rank, n_genes)) * (rng.random((rank, n_genes)) < 0.3)
    log_expr = baseline[None, :] + type_effect[cell_type] + scores @ loadings
    frequencies = special.softmax(log_expr, axis=1)
    library_size = depth * np.exp(rng.normal(0.0, depth_spread, n_cells))
    rates = library_size[:, None] * frequencies
    counts = sparse.csr_matrix(rng.poisson(rates).astype(np.int32))
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type_{t}" for t in cell_type]),
            "library_size": library_size,
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene_{j}" for j in range(n_genes)])
    adata = AnnData(X=counts, obs=obs, var=var, layers={"rates": rates.astype(np.float32)})
    adata.uns["simulation"] = {
        "n_types": n_types,
        "rank": rank,
        "depth": depth,
        "depth_spread": depth_spread,
    }
    return adata
