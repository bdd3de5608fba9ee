from __future__ import annotations

import numpy as np
from scipy import sparse

from scn2s.datasets import simulate


def test_simulate_shapes_and_truth():
    adata = simulate(400, 150, n_types=4, rank=3, depth=1000, rng=0)
    assert adata.shape == (400, 150)
    assert sparse.isspmatrix_csr(adata.X)
    assert adata.X.dtype == np.int32
    rates = adata.layers["rates"]
    assert rates.shape == adata.shape
    assert np.all(rates > 0)
    np.testing.assert_allclose(rates.sum(axis=1), adata.obs["library_size"], rtol=1e-4)
    assert adata.obs["cell_type"].nunique() == 4
    # counts are Poisson draws of the rates: mean matches, library sizes spread
    assert abs(adata.X.sum() / rates.sum() - 1) < 0.01
    library = np.asarray(adata.X.sum(axis=1)).ravel()
    assert np.median(library) == np.clip(np.median(library), 700, 1400)
    assert library.max() / library.min() > 4


def test_simulate_is_reproducible():
    a = simulate(50, 20, rng=3)
    b = simulate(50, 20, rng=3)
    c = simulate(50, 20, rng=4)
    assert (a.X != b.X).nnz == 0
    assert (a.X != c.X).nnz > 0
