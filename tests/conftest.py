from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _data_file(name: str) -> Path:
    path = DATA_DIR / name
    if not path.exists():
        if os.environ.get("SCN2S_REQUIRE_DATA") == "1":
            pytest.fail(f"SCN2S_REQUIRE_DATA=1 but {path} is missing")
        pytest.skip(f"real data not available: {path}")
    return path


@pytest.fixture
def close_figures():
    """Close every matplotlib figure after the test (``pytestmark = pytest.mark.usefixtures("close_figures")``)."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="session")
def data_file():
    """Path to a file of ../shared/data: skips when absent, fails when SCN2S_REQUIRE_DATA=1."""
    return _data_file


@pytest.fixture(scope="module")
def batched():
    """A simulation measured in three batches whose capture efficiency differs by gene (``obs["batch"]``: b0-b2).

    One per test module: copy it before changing it.
    """
    import pandas as pd

    import scn2s

    adata = scn2s.datasets.simulate(600, 200, n_types=3, rank=3, depth=800, rng=0)
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 3, adata.n_obs)
    efficiency = rng.lognormal(0, 0.8, (3, adata.n_vars))
    adata.layers["rates"] = adata.layers["rates"] * efficiency[batch]
    adata.X = sparse.csr_matrix(rng.poisson(adata.layers["rates"]).astype(np.float32))
    adata.obs["batch"] = pd.Categorical([f"b{b}" for b in batch])
    return adata


@pytest.fixture(scope="session")
def poisson_counts() -> tuple[np.ndarray, np.ndarray]:
    """(rates, counts): a small low-rank Poisson matrix, 200 cells x 60 genes."""
    rng = np.random.default_rng(42)
    rates = rng.gamma(2.0, 1.0, (200, 3)) @ rng.gamma(1.0, 0.5, (3, 60))
    rates[:, :5] = 0.0  # genes without molecules
    return rates, rng.poisson(rates)


@pytest.fixture(params=["dense", "csr", "csc"])
def array_type(request):
    return {"dense": np.asarray, "csr": sparse.csr_matrix, "csc": sparse.csc_matrix}[request.param]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 70 cells (``scn2s._blocks.BLOCK_ROWS``), so that the 230 cells of ``blocked_counts`` span four."""
    from scn2s import _blocks

    monkeypatch.setattr(_blocks, "BLOCK_ROWS", 70)


@pytest.fixture(scope="module")
def blocked_counts():
    """230 cells x 50 genes of int32 CSR counts, with a ``highly_variable`` mask of two genes in three."""
    from scn2s.datasets import simulate

    adata = simulate(230, 50, n_types=3, rank=3, depth=400, rng=5)
    adata.X = sparse.csr_matrix(adata.X, dtype=np.int32)
    adata.var["highly_variable"] = np.arange(adata.n_vars) % 3 != 0
    return adata
