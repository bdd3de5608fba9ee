from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection

import scn2s
from scn2s.datasets import simulate

pytestmark = pytest.mark.usefixtures("close_figures")


@pytest.fixture(scope="module")
def denoised():
    adata = simulate(300, 120, n_types=3, rank=2, depth=800, rng=5)
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 15}, progress=False)
    return adata


def _colours(axis: Axes) -> np.ndarray:
    (points,) = [c for c in axis.collections if isinstance(c, PathCollection)]
    return np.asarray(points.get_array())


def test_raw_and_denoised_side_by_side(denoised):
    axes = scn2s.pl.embedding(denoised, ["gene_0", "gene_3"], basis="X_denoised", show=False)
    assert len(axes) == 4
    assert all(isinstance(axis, Axes) for axis in axes)
    assert [axis.get_title() for axis in axes] == [
        "gene_0 (raw)",
        "gene_0 (denoised)",
        "gene_3 (raw)",
        "gene_3 (denoised)",
    ]
    # the colours are log1p of each matrix normalised to the median raw library size, sorted for drawing
    raw = denoised.X.toarray().astype(np.float64)
    target = np.median(raw.sum(axis=1))
    expected_raw = np.sort(np.log1p(raw[:, 0] * target / raw.sum(axis=1)))
    layer = np.asarray(denoised.layers["denoised"], dtype=np.float64)
    expected_denoised = np.sort(np.log1p(layer[:, 0] * target / layer.sum(axis=1)))
    np.testing.assert_allclose(_colours(axes[0]), expected_raw)
    np.testing.assert_allclose(_colours(axes[1]), expected_denoised, rtol=1e-6)
    # one colour scale per gene
    (raw_points,) = [c for c in axes[0].collections if isinstance(c, PathCollection)]
    (denoised_points,) = [c for c in axes[1].collections if isinstance(c, PathCollection)]
    assert raw_points.get_clim() == denoised_points.get_clim()
    assert raw_points.get_clim() == (
        min(expected_raw.min(), expected_denoised.min()),
        max(expected_raw.max(), expected_denoised.max()),
    )
    # the points are the embedding's first two columns
    offsets = raw_points.get_offsets()
    coordinates = denoised.obsm["X_denoised"][:, :2]
    np.testing.assert_allclose(np.sort(offsets[:, 0]), np.sort(coordinates[:, 0]))


def test_components_and_given_axes(denoised):
    _fig, given = plt.subplots(1, 2)
    axes = scn2s.pl.embedding(denoised, "gene_1", basis="X_denoised", components=(1, 0), ax=given, show=False)
    assert axes == list(given)
    offsets = next(c for c in axes[0].collections if isinstance(c, PathCollection)).get_offsets()
    np.testing.assert_allclose(np.sort(offsets[:, 0]), np.sort(denoised.obsm["X_denoised"][:, 1]))


def test_save(denoised, tmp_path):
    path = tmp_path / "embedding.png"
    scn2s.pl.embedding(denoised, "gene_2", basis="X_denoised", show=False, save=path)
    assert path.stat().st_size > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"genes": "nope"}, KeyError, "not in adata.var_names"),
        ({"genes": "gene_0", "basis": "X_umap"}, KeyError, "sc.tl.umap"),
        ({"genes": "gene_0", "key": "other"}, KeyError, "run scn2s.pp.denoise"),
        ({"genes": "gene_0", "components": (0, 99)}, ValueError, "needs more columns"),
        ({"genes": []}, ValueError, "genes is empty"),
    ],
)
def test_errors(denoised, kwargs, error, match):
    kwargs = {"basis": "X_denoised", **kwargs}
    with pytest.raises(error, match=match):
        scn2s.pl.embedding(denoised, show=False, **kwargs)
