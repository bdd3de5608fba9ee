from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import numpy as np
import pytest
from matplotlib.axes import Axes
from scipy import sparse

import scn2s
from scn2s._validate import make_rng
from scn2s.cli._report import selection_summary
from scn2s.datasets import simulate
from scn2s.loss import sqrt_poisson_mean
from scn2s.select import Splits
from scn2s.select.calibrate import DenoiserError, expand_grid, scale_to_library

pytestmark = pytest.mark.usefixtures("close_figures")


@pytest.fixture(scope="module")
def sim():
    return simulate(400, 200, n_types=4, rank=3, depth=800, rng=3)


def _true_error(estimate, rates: np.ndarray) -> float:
    """MSE of expected square roots against the truth's, the estimate on each cell's true library size."""
    estimate = estimate.toarray() if sparse.issparse(estimate) else estimate
    scaled = scale_to_library(np.array(estimate, dtype=np.float64), rates.sum(axis=1))
    return float(np.mean((sqrt_poisson_mean(scaled) - sqrt_poisson_mean(rates)) ** 2))


def _frequencies(counts, **params):
    """A denoiser without smoothing: each cell's own frequencies, times a factor (any scale is allowed)."""
    counts = sparse.csr_matrix(counts, dtype=np.float64)
    library = np.asarray(counts.sum(axis=1)).ravel()
    inverse = np.divide(1.0, library, out=np.zeros_like(library), where=library > 0)
    return (sparse.diags(inverse) @ counts) * params.get("factor", 1.0)


# --- the grid ------------------------------------------------------------------------------------------------


def test_dict_grid_is_every_combination_and_list_grid_as_given():
    assert expand_grid({"a": [1, 2], "b": ["x", "y", "z"]}) == [
        {"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")
    ]
    assert expand_grid([{"a": 1}, {"b": 2}]) == [{"a": 1}, {"b": 2}]
    assert expand_grid({"k": np.array([3, 5])}) == [{"k": 3}, {"k": 5}]
    assert type(expand_grid({"k": np.array([3])})[0]["k"]) is int


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ({}, "no candidate"),
        ([], "no candidate"),
        ({"k": []}, "non-empty list"),
        ({"k": 3}, "non-empty list"),
        ({"k": "abc"}, "non-empty list"),
        ([3], "dicts of parameters"),
        ("k", "dict of lists"),
    ],
)
def test_bad_grid_is_refused(grid, match):
    with pytest.raises(ValueError, match=match):
        expand_grid(grid)


# --- choice on a simulation with known rates -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("denoiser", "grid"),
    [
        (scn2s.denoisers.knn_smoothing, {"k": [1, 2, 3, 5, 8, 12, 20, 30, 50]}),
        (scn2s.denoisers.pca, {"n_comps": [0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 24]}),
    ],
    ids=["knn", "pca"],
)
def test_chosen_parameter_is_within_2_percent_of_the_best_grid_point(sim, denoiser, grid):
    adata = sim.copy()
    scn2s.pp.calibrate(adata, denoiser, grid, progress=False)
    rates = np.asarray(adata.layers["rates"], dtype=np.float64)
    ((name, values),) = grid.items()
    errors = {v: _true_error(denoiser(adata.X, **{name: v}), rates) for v in values}
    applied = adata.uns["denoised"]["best_params"][name]
    error = _true_error(adata.layers["denoised"], rates)
    assert error == pytest.approx(_true_error(denoiser(adata.X, **{name: applied}), rates), rel=1e-5)
    best = min(errors.values())
    assert error <= 1.02 * best, (applied, errors)
    # the search did not just pick an end of the grid: the ends are clearly worse
    assert max(errors[values[0]], errors[values[-1]]) > 1.1 * best


def test_layer_is_the_denoiser_output_on_each_cells_library_size(sim):
    adata = sim.copy()
    scn2s.pp.calibrate(adata, scn2s.denoisers.knn_smoothing, {"k": [5]}, progress=False)
    layer = adata.layers["denoised"]
    assert layer.dtype == np.float32
    assert layer.shape == adata.shape
    library = np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()
    np.testing.assert_allclose(layer.sum(axis=1), library, rtol=1e-5)
    expected = scale_to_library(scn2s.denoisers.knn_smoothing(adata.X, k=5).toarray(), library)
    np.testing.assert_allclose(layer, expected, rtol=1e-5, atol=1e-5)


def test_scale_of_the_output_does_not_matter(sim):
    a, b = sim.copy(), sim.copy()
    scn2s.pp.calibrate(a, _frequencies, {"factor": [1.0]}, progress=False)
    scn2s.pp.calibrate(b, _frequencies, {"factor": [1e4]}, progress=False)
    sa, sb = a.uns["denoised"]["selection"]["_frequencies"], b.uns["denoised"]["selection"]["_frequencies"]
    np.testing.assert_allclose(sa["loss_per_split"], sb["loss_per_split"], rtol=1e-10)
    np.testing.assert_allclose(a.layers["denoised"], b.layers["denoised"], rtol=1e-6)


# --- validity and the one currency ---------------------------------------------------------------------------


def test_denoiser_sees_only_training_halves_of_denoises_splits(sim):
    """The candidates see the training halves of the very splits denoise draws from the same rng, then the
    full counts once; the held-out halves never."""
    seen = []

    def recording(counts, **params):
        seen.append(sparse.csr_matrix(counts, copy=True))
        return _frequencies(counts)

    counts = sparse.csr_matrix(sim.X)
    scn2s.pp.calibrate(sim.copy(), recording, {"factor": [1.0, 2.0]}, n_splits=2, rng=7, progress=False)
    # denoise: split_rng, lowrank_rng, autoencoder_rng = make_rng(rng).spawn(3)
    splits = Splits.draw(make_rng(7).spawn(3)[0], 2, 0.5)
    assert len(seen) == 2 * 2 + 1
    for i in range(2):
        train, _ = splits.get(i, counts)
        for call in seen[2 * i : 2 * i + 2]:
            assert (call != train).nnz == 0
    assert (seen[-1] != counts).nnz == 0


def test_loss_is_the_lowrank_familys_loss(sim):
    """A denoiser that returns the low-rank model's prediction gets the loss denoise records for that rank."""
    adata = sim.copy()
    options = {"max_rank": 6, "depth_correction": False}
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds=options, progress=False, key_added="lr")
    reference = adata.uns["lr"]["selection"]["lowrank"]["loss_mean"]
    scn2s.pp.calibrate(adata, scn2s.denoisers.lowrank, {"rank": [0, 3, 6]}, progress=False, key_added="cal")
    losses = adata.uns["cal"]["selection"]["lowrank"]["loss_mean"]
    # the same loss on the same molecules; the adapter rescales each cell to its library, the search does not
    np.testing.assert_allclose(losses, reference[[0, 3, 6]], rtol=0.03)
    assert np.argmin(losses) == 2


@pytest.fixture(scope="module")
def small():
    return simulate(120, 40, n_types=3, rank=2, depth=400, rng=4)


@pytest.mark.parametrize("kind", ["dense", "csr", "csc"])
@pytest.mark.parametrize("dtype", [np.int32, np.float32])
def test_array_types_give_the_same_result(small, kind, dtype):
    sim = small
    convert = {"dense": np.asarray, "csr": sparse.csr_matrix, "csc": sparse.csc_matrix}[kind]
    adata = ad.AnnData(X=convert(np.asarray(sim.X.toarray() if sparse.issparse(sim.X) else sim.X, dtype=dtype)))
    before = adata.X.copy()
    scn2s.pp.calibrate(adata, scn2s.denoisers.knn_smoothing, {"k": [2, 6]}, progress=False)
    reference = sim.copy()
    scn2s.pp.calibrate(reference, scn2s.denoisers.knn_smoothing, {"k": [2, 6]}, progress=False)
    np.testing.assert_allclose(adata.layers["denoised"], reference.layers["denoised"], rtol=1e-5, atol=1e-6)
    assert type(adata.X) is type(before)
    assert (abs(adata.X - before)).sum() == 0


def test_copy_leaves_the_input_alone(sim):
    adata = sim.copy()
    out = scn2s.pp.calibrate(adata, _frequencies, {"factor": [1.0]}, copy=True, progress=False)
    assert "denoised" not in adata.layers
    assert "denoised" not in adata.uns
    assert "denoised" in out.layers


def test_layer_argument_and_key_added(sim):
    adata = ad.AnnData(X=np.zeros(sim.shape), layers={"counts": sim.X.copy()})
    scn2s.pp.calibrate(adata, _frequencies, {"factor": [1.0]}, layer="counts", key_added="freq", progress=False)
    assert adata.uns["freq"]["params"]["layer"] == "counts"
    with pytest.raises(ValueError, match="overwrite the input counts"):
        scn2s.pp.calibrate(adata, _frequencies, {"factor": [1.0]}, layer="counts", key_added="counts")


# --- the record ----------------------------------------------------------------------------------------------


def test_record_plots_summarises_and_writes_to_h5ad(sim, tmp_path):
    adata = sim.copy()
    scn2s.pp.calibrate(adata, scn2s.denoisers.knn_smoothing, {"k": [1, 4, 10, 25]}, progress=False)
    record = adata.uns["denoised"]
    entry = record["selection"]["knn_smoothing"]
    assert record["method"] == "knn_smoothing"
    assert list(entry["grid"]) == ["k"]
    assert entry["loss_per_split"].shape == (3, 4)
    assert entry["nll_per_split"].shape == (3, 4)
    assert entry["split_k"] == entry["grid"]["k"][np.argmin(entry["loss_mean"])]
    assert record["best_params"]["k"] == entry["k"]
    assert np.all(np.isfinite(entry["nll_mean"]))
    ax = scn2s.pl.selection(adata, show=False)
    assert isinstance(ax, Axes)
    assert ax.get_xlabel() == "k"
    lines = selection_summary(record, key="denoised")
    assert lines[0].startswith("written: knn_smoothing, k ")
    adata.write_h5ad(tmp_path / "out.h5ad")
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_allclose(back.uns["denoised"]["selection"]["knn_smoothing"]["loss_mean"], entry["loss_mean"])


def test_grid_over_several_parameters_is_recorded_by_label(sim, tmp_path):
    adata = sim.copy()
    grid = {"k": [3, 8], "n_pcs": [5, 20], "random_state": [0]}
    scn2s.pp.calibrate(adata, scn2s.denoisers.knn_smoothing, grid, depth_correction=False, progress=False)
    entry = adata.uns["denoised"]["selection"]["knn_smoothing"]
    assert list(entry["grid"]) == ["candidate"]
    assert list(entry["grid"]["candidate"]) == ["k=3, n_pcs=5", "k=3, n_pcs=20", "k=8, n_pcs=5", "k=8, n_pcs=20"]
    np.testing.assert_array_equal(entry["candidates"]["n_pcs"], [5, 20, 5, 20])
    assert entry["candidate"] == entry["split_candidate"] == entry["grid"]["candidate"][np.argmin(entry["loss_mean"])]
    assert isinstance(scn2s.pl.selection(adata, show=False), Axes)
    adata.write_h5ad(tmp_path / "out.h5ad")


def test_depth_transfer_is_applied_and_recorded(sim):
    """A denoiser with a transfer rule gets the parameters it gives for the full depth (1 / p of the half's)."""
    ratios = []

    def halve_factor(params, ratio):
        ratios.append(ratio)
        return params | {"factor": params["factor"] / ratio}

    denoiser = scn2s.denoisers.Denoiser(_frequencies, name="freq", defaults={}, transfer=halve_factor)
    adata = sim.copy()
    scn2s.pp.calibrate(adata, denoiser, {"factor": [8.0]}, p=0.25, progress=False)
    entry = adata.uns["denoised"]["selection"]["freq"]
    assert ratios == [4.0]
    assert (entry["split_factor"], entry["factor"], entry["transferred"]) == (8.0, 2.0, True)
    assert entry["depth_ratio"] == 4.0
    assert adata.uns["denoised"]["best_params"] == {"factor": 2.0}
    scn2s.pp.calibrate(adata, denoiser, {"factor": [8.0]}, depth_correction=False, progress=False)
    assert adata.uns["denoised"]["best_params"] == {"factor": 8.0}
    assert not adata.uns["denoised"]["selection"]["freq"]["transferred"]


# --- bad denoisers -------------------------------------------------------------------------------------------


def _wrong_shape(counts, **params):
    return np.ones((counts.shape[0], counts.shape[1] + 1))


def _negative(counts, **params):
    return np.asarray(counts.toarray()) - 0.5


def _nan(counts, **params):
    out = np.asarray(counts.toarray(), dtype=np.float64)
    out[0, 0] = np.nan
    return out


def _raises(counts, **params):
    msg = "out of cheese"
    raise RuntimeError(msg)


def _not_an_array(counts, **params):
    return "denoised"


def _fails_on_full_counts(counts, **params):
    if counts.shape[0] and counts.sum() > _fails_on_full_counts.limit:
        return np.full(counts.shape, -1.0)
    return counts


@pytest.mark.parametrize(
    ("denoiser", "match"),
    [
        (_wrong_shape, r"shape \(400, 201\).*expected \(400, 200\)"),
        (_negative, "negative values"),
        (_nan, "NaN or infinite"),
        (_raises, "raised RuntimeError.*out of cheese"),
        (_not_an_array, "not an array of numbers"),
    ],
)
def test_bad_denoiser_names_the_candidate_and_writes_nothing(sim, denoiser, match):
    adata = sim.copy()
    adata.layers["kept"] = np.zeros(adata.shape)
    before = adata.layers["kept"].copy()
    with pytest.raises(DenoiserError, match=match) as error:
        scn2s.pp.calibrate(adata, denoiser, {"alpha": [0.25], "mode": ["fast"]}, progress=False)
    assert "alpha=0.25, mode='fast'" in str(error.value)
    assert isinstance(error.value, ValueError)
    np.testing.assert_array_equal(adata.layers["kept"], before)
    assert "denoised" not in adata.layers
    assert "denoised" not in adata.uns


def test_failure_on_the_full_counts_writes_nothing(sim):
    adata = sim.copy()
    _fails_on_full_counts.limit = 0.75 * float(adata.X.sum())
    with pytest.raises(DenoiserError, match=r"negative values.*candidate defaults"):
        scn2s.pp.calibrate(adata, _fails_on_full_counts, [{}], progress=False)
    assert "denoised" not in adata.layers
    assert "denoised" not in adata.uns


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"denoiser": 3}, TypeError, "must be a function"),
        ({"p": 1.5}, ValueError, "p"),
        ({"n_splits": 0}, ValueError, "n_splits"),
        ({"name": "a/b"}, ValueError, "without '/'"),
    ],
)
def test_bad_arguments_are_refused(sim, kwargs, error, match):
    arguments = {"denoiser": _frequencies, "grid": {"factor": [1.0]}, "progress": False} | kwargs
    with pytest.raises(error, match=match):
        scn2s.pp.calibrate(sim.copy(), **arguments)


# --- adapters ------------------------------------------------------------------------------------------------


def test_knn_smoothing_averages_each_cell_with_its_neighbours(sim):
    counts = sparse.csr_matrix(sim.X, dtype=np.float64)
    library = np.asarray(counts.sum(axis=1)).ravel()
    frequencies = counts.toarray() / library[:, None]
    np.testing.assert_allclose(scn2s.denoisers.knn_smoothing(counts, k=1).toarray(), frequencies)
    everything = scn2s.denoisers.knn_smoothing(counts, k=10_000).toarray()
    np.testing.assert_allclose(everything, np.broadcast_to(frequencies.mean(axis=0), counts.shape))
    smoothed = scn2s.denoisers.knn_smoothing(counts, k=5).toarray()
    np.testing.assert_allclose(smoothed.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="k must be at least 1"):
        scn2s.denoisers.knn_smoothing(counts, k=0)


def test_pca_with_no_component_gives_the_gene_means(sim):
    out = scn2s.denoisers.pca(sim.X, n_comps=0)
    assert np.allclose(out, out[0])
    assert np.all(out >= 0)


def test_missing_package_names_the_extra(monkeypatch, sim):
    monkeypatch.setitem(sys.modules, "magic", None)
    monkeypatch.setitem(sys.modules, "scvi", None)
    with pytest.raises(ImportError, match=r'pip install "scn2s\[magic\]".*magic-impute'):
        scn2s.denoisers.magic(sim.X)
    with pytest.raises(ImportError, match=r'pip install "scn2s\[scvi\]".*scvi-tools'):
        scn2s.denoisers.scvi(sim.X)
    adata = sim.copy()
    with pytest.raises(DenoiserError, match=r"ImportError.*magic-impute"):
        scn2s.pp.calibrate(adata, scn2s.denoisers.magic, {"t": [1, 2]}, progress=False)
    assert "denoised" not in adata.uns


def test_magic_is_calibrated_and_its_kept_graph_changes_nothing(sim):
    pytest.importorskip("magic")
    from scn2s import denoisers

    counts = sparse.csr_matrix(sim.X, dtype=np.float64)
    denoisers._CACHE.clear()
    fresh = denoisers.magic(counts, t=2)
    denoisers.magic(counts, t=5)
    again = denoisers.magic(counts, t=2)  # from the kept graph
    np.testing.assert_allclose(again, fresh, rtol=1e-10)
    adata = sim.copy()
    scn2s.pp.calibrate(adata, denoisers.magic, {"t": [1, 2, 4, 8]}, progress=False)
    assert "magic" not in denoisers._CACHE  # the graph is not kept once calibrate is done
    entry = adata.uns["denoised"]["selection"]["magic"]
    assert entry["loss_per_split"].shape == (3, 4)
    assert adata.uns["denoised"]["best_params"]["t"] >= 1
    assert np.all(np.isfinite(adata.layers["denoised"]))


def test_readme_calibrates_a_users_function_in_five_lines(monkeypatch):
    """The README's five lines run as written (on a simulation instead of the file) and write the layer."""
    from pathlib import Path

    import scanpy as sc

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("## Calibrate any denoiser")[1].split("```python\n")[1].split("```")[0]
    assert len(code.strip().splitlines()) == 5
    monkeypatch.setattr(sc, "read_h5ad", lambda path: simulate(150, 60, rng=1))
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    adata = namespace["adata"]
    assert adata.uns["denoised"]["best_params"]["alpha"] in (0.1, 1, 10, 100)
    assert adata.layers["denoised"].shape == adata.shape


def test_scn2s_autoencoder_adapter_is_calibrated(small):
    pytest.importorskip("torch")
    adata = small.copy()
    tiny = {"hidden": 16, "bottleneck": 4, "max_epochs": 3, "patience": 2, "device": "cpu"}
    scn2s.pp.calibrate(adata, scn2s.denoisers.autoencoder, [tiny], n_splits=1, progress=False)
    entry = adata.uns["denoised"]["selection"]["autoencoder"]
    assert list(entry["grid"]) == ["candidate"]
    assert entry["loss_per_split"].shape == (1, 1)
    assert np.isfinite(entry["loss_mean"][0])
    assert np.all(np.isfinite(adata.layers["denoised"]))
    library = np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()
    np.testing.assert_allclose(adata.layers["denoised"].sum(axis=1), library, rtol=1e-4)


def test_magic_back_transform_by_the_poisson_mean_beats_squaring(sim):
    """Squaring an average of square roots underestimates genes of a few molecules; the held-out loss sees it."""
    pytest.importorskip("magic")
    adata = sim.copy()
    grid = {"t": [2], "back": ["square", "poisson_mean"]}
    scn2s.pp.calibrate(adata, scn2s.denoisers.magic, grid, n_splits=1, progress=False)
    entry = adata.uns["denoised"]["selection"]["magic"]
    assert list(entry["grid"]["back"]) == ["square", "poisson_mean"]
    assert entry["loss_mean"][1] < entry["loss_mean"][0]
    assert adata.uns["denoised"]["best_params"]["back"] == "poisson_mean"
    with pytest.raises(ValueError, match="back must be"):
        scn2s.denoisers.magic(sim.X, back="cube")


def test_a_calibration_scores_the_held_out_molecules_of_the_scored_cells_alone():
    """Above ``Splits.scored_cells`` the denoiser still sees every cell's training molecules; the scored cells'
    held-out molecules alone score it, as they score every family."""
    from scn2s.datasets import simulate
    from scn2s.select import Splits
    from scn2s.select.calibrate import score_estimate, search_denoiser

    counts = sparse.csr_matrix(simulate(200, 40, n_types=2, rank=2, depth=300, rng=3).X)

    def shrink(x, *, weight):
        dense = x.toarray().astype(np.float64)
        return dense + weight * dense.mean(axis=0)

    splits = Splits(p=0.5, seeds=(5,), scored_cells=70)
    selection = search_denoiser(shrink, counts, [{"weight": 0.5}, {"weight": 4.0}], splits=splits)
    train, heldout = splits.get(0, counts)
    rows = splits.scored_rows(0, 200)
    for j, weight in enumerate((0.5, 4.0)):
        on_all = shrink(train, weight=weight)  # made from every cell's training molecules
        loss, nll = score_estimate(on_all[rows], train[rows], heldout[rows], 1.0)
        assert selection.losses[0, j] == pytest.approx(loss, rel=1e-12)
        assert selection.nll[0, j] == pytest.approx(nll, rel=1e-12)
    every = search_denoiser(shrink, counts, [{"weight": 0.5}], splits=Splits(p=0.5, seeds=(5,)))
    assert every.losses[0, 0] != pytest.approx(selection.losses[0, 0], rel=1e-9)
