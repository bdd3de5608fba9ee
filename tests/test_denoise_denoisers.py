"""``denoise(denoisers=...)``: other denoisers calibrated beside scn2s's families, in the same currency."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import numpy as np
import pytest

import scn2s
from scn2s.cli._report import selection_summary
from scn2s.datasets import simulate
from scn2s.select.calibrate import DenoiserError, scale_to_library

GRID = {"k": [1, 5, 20]}


pytestmark = pytest.mark.usefixtures("close_figures")


@pytest.fixture(scope="module")
def sim():
    return simulate(300, 120, n_types=3, rank=3, depth=600, rng=4)


def _oracle(rates: np.ndarray):
    """A denoiser that knows the truth: no family can beat it on held-out molecules."""

    def oracle(counts, scale=1.0):
        assert counts.shape == rates.shape
        return rates * scale

    return oracle


def test_a_denoiser_scored_beside_the_families_gets_calibrates_losses(sim):
    adata = sim.copy()
    knn = scn2s.denoisers.knn_smoothing
    scn2s.pp.denoise(adata, method="lowrank", denoisers={"knn_smoothing": (knn, GRID)}, progress=False)
    record = adata.uns["denoised"]
    scn2s.pp.calibrate(adata, knn, GRID, key_added="cal", progress=False)
    alone = adata.uns["cal"]["selection"]["knn_smoothing"]
    beside = record["selection"]["knn_smoothing"]
    # the same splits from the same rng, the same loss: the same numbers
    np.testing.assert_array_equal(beside["loss_per_split"], alone["loss_per_split"])
    assert beside["chosen"] == alone["chosen"]
    comparison = record["comparison"]
    assert set(comparison["loss"]) == {"lowrank", "knn_smoothing"}
    assert comparison["n_splits"] == 3
    best = int(np.argmin(beside["loss_mean"]))
    np.testing.assert_allclose(comparison["loss"]["knn_smoothing"], beside["loss_mean"][best])
    np.testing.assert_allclose(comparison["loss"]["lowrank"], min(record["selection"]["lowrank"]["loss_mean"]))
    assert comparison["chosen"] == min(comparison["loss"], key=comparison["loss"].get) == record["method"]
    assert record["params"]["denoisers"]["knn_smoothing"]["k"].tolist() == GRID["k"]
    assert {"knn_smoothing.selection", "knn_smoothing.fit"} <= set(record["timings"])


def test_a_better_denoiser_is_written_without_an_embedding(sim, tmp_path):
    adata = sim.copy()
    scn2s.pp.denoise(adata, method="lowrank", progress=False)  # an earlier result under the same key
    assert "X_denoised" in adata.obsm
    rates = np.asarray(adata.layers["rates"], dtype=np.float64)
    denoisers = {"oracle": (_oracle(rates), {"scale": [1.0, 3.0]}), "knn": scn2s.denoisers.knn_smoothing}
    scn2s.pp.denoise(adata, method="lowrank", denoisers=denoisers, progress=False)
    record = adata.uns["denoised"]
    assert record["method"] == record["comparison"]["chosen"] == "oracle"
    assert record["best_params"] == {"scale": 1.0}  # both scales score alike: each cell is brought to its library
    library = np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()
    expected = scale_to_library(rates.copy(), library).astype(np.float32)
    np.testing.assert_allclose(adata.layers["denoised"], expected, rtol=1e-6)
    # the earlier run's embedding and loadings were its own: removed, as the new record does not list them
    assert "X_denoised" not in adata.obsm
    assert "denoised_loadings" not in adata.varm
    assert dict(record["keys"]) == {"layers": ["denoised"]}
    lines = selection_summary(record, key="denoised")
    assert lines[0].startswith("written: oracle")
    assert "the lowest held-out loss of the 3 families" in lines[1]
    assert len(scn2s.pl.selection(adata, show=False)) == 4  # three families and the comparison
    adata.write_h5ad(tmp_path / "out.h5ad")
    assert ad.read_h5ad(tmp_path / "out.h5ad").uns["denoised"]["method"] == "oracle"


def test_uncertainty_warns_when_a_denoiser_is_chosen(sim):
    adata = sim.copy()
    rates = np.asarray(adata.layers["rates"], dtype=np.float64)
    config = {"hidden": 16, "bottleneck": 4, "max_epochs": 2}
    with pytest.warns(UserWarning, match="the denoiser 'oracle' was chosen"):
        scn2s.pp.denoise(
            adata,
            method="autoencoder",
            autoencoder_kwds={"configs": [config]},
            denoisers={"oracle": _oracle(rates)},
            uncertainty=True,
            progress=False,
        )
    assert adata.uns["denoised"]["method"] == "oracle"
    assert "denoised_sd" not in adata.layers


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"denoisers": [scn2s.denoisers.pca]}, TypeError, "denoisers must be a mapping"),
        ({"denoisers": {"lowrank": scn2s.denoisers.pca}}, ValueError, "cannot name a denoiser"),
        ({"denoisers": {"my pca": scn2s.denoisers.pca}}, ValueError, "cannot name a denoiser"),
        ({"denoisers": {"pca": "pca"}}, TypeError, r"denoisers\['pca'\] must be a function"),
        ({"denoisers": {"pca": (scn2s.denoisers.pca, {"n_comps": 3})}}, ValueError, "must be a non-empty list"),
        (
            {"denoisers": {"pca": scn2s.denoisers.pca}, "method": "lowrank", "output": "factors"},
            ValueError,
            'needs output="layer"',
        ),
    ],
)
def test_bad_denoisers_are_refused_before_any_work(sim, kwargs, error, match):
    adata = sim.copy()
    before = set(adata.layers), set(adata.uns)
    with pytest.raises(error, match=match):
        scn2s.pp.denoise(adata, progress=False, **kwargs)
    assert (set(adata.layers), set(adata.uns)) == before


def test_a_failing_denoiser_names_itself_and_writes_nothing(sim):
    adata = sim.copy()

    def broken(counts, k):
        raise RuntimeError("no such thing")

    with pytest.raises(DenoiserError, match=r"RuntimeError for the candidate k=2 .*no such thing"):
        scn2s.pp.denoise(adata, method="lowrank", denoisers={"broken": (broken, {"k": [2]})}, progress=False)
    assert "denoised" not in adata.layers
    assert "denoised" not in adata.uns


def test_the_readmes_example_runs(monkeypatch):
    """The README's line that compares MAGIC and the user's function with the families (low-rank only, for time)."""
    from pathlib import Path

    import scanpy as sc

    pytest.importorskip("magic")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Calibrate any denoiser")[1]
    blocks = [block.split("```")[0] for block in section.split("```python\n")[1:]]
    five, example = blocks[0], next(block for block in blocks if "denoisers={" in block)
    monkeypatch.setattr(sc, "read_h5ad", lambda path: simulate(150, 60, rng=1))
    namespace = {}
    exec(compile(five, "README.md", "exec"), namespace)
    example = example.replace("scn2s.pp.denoise(adata, ", 'scn2s.pp.denoise(adata, method="lowrank", progress=False, ')
    exec(compile(example, "README.md", "exec"), namespace)
    record = namespace["adata"].uns["denoised"]
    assert set(record["comparison"]["loss"]) == {"lowrank", "magic", "mine"}
    assert record["method"] in record["comparison"]["loss"]
