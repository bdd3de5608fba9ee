from __future__ import annotations

import copy
import itertools

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PolyCollection

import scn2s
from scn2s.datasets import simulate

pytestmark = pytest.mark.usefixtures("close_figures")


@pytest.fixture(scope="module")
def denoised():
    adata = simulate(300, 120, n_types=3, rank=2, depth=800, rng=5)
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 15}, progress=False)
    return adata


def _with_selection(adata, **changes):
    out = adata.copy()
    out.uns["denoised"] = copy.deepcopy(adata.uns["denoised"])
    out.uns["denoised"]["selection"]["lowrank"].update(changes)
    return out


def _line_through(ax: Axes, x, y):
    return [
        line
        for line in ax.get_lines()
        if len(line.get_xdata()) == len(x) and np.allclose(line.get_xdata(), x) and np.allclose(line.get_ydata(), y)
    ]


def test_selection_draws_the_mean_band_splits_and_choice(denoised):
    adata = _with_selection(denoised, split_rank=6, rank=9)
    record = adata.uns["denoised"]["selection"]["lowrank"]
    ax = scn2s.pl.selection(adata, show=False)
    assert isinstance(ax, Axes)
    grid, mean = record["grid"]["rank"], record["loss_mean"]
    assert len(_line_through(ax, grid, mean)) == 1
    for losses in record["loss_per_split"]:
        assert len(_line_through(ax, grid, losses)) == 1
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    lower, upper = (mean - record["loss_std"]).min(), (mean + record["loss_std"]).max()
    assert band.get_paths()[0].vertices[:, 1].min() == pytest.approx(lower)
    assert band.get_paths()[0].vertices[:, 1].max() == pytest.approx(upper)
    (chosen,) = _line_through(ax, [6], [mean[6]])
    assert chosen.get_marker() == "o"
    (applied,) = [line for line in ax.get_lines() if np.array_equal(line.get_xdata(), [9, 9])]
    assert applied.get_linestyle() == "--"
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "chosen at depth 0.5·N: rank 6" in labels
    assert "applied at full depth: rank 9" in labels
    assert ax.get_xlabel() == "rank"
    assert "held-out loss" in ax.get_ylabel()


def test_selection_without_depth_change_marks_one_choice(denoised):
    record = denoised.uns["denoised"]["selection"]["lowrank"]
    adata = _with_selection(denoised, rank=record["split_rank"])
    ax = scn2s.pl.selection(adata, show=False)
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert f"chosen: rank {record['split_rank']}" in labels
    assert not any("applied" in label for label in labels)


def test_selection_reads_a_record_from_h5ad(denoised, tmp_path):
    denoised.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    ax = scn2s.pl.selection(back, show=False)
    split_rank = int(back.uns["denoised"]["selection"]["lowrank"]["split_rank"])
    assert any(f"rank {split_rank}" in text.get_text() for text in ax.get_legend().get_texts())


def test_selection_of_a_fixed_rank_fit_is_an_error():
    adata = simulate(100, 40, rng=0)
    scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"rank": 4}, progress=False)
    with pytest.raises(ValueError, match=r"fixed hyperparameters \(rank=4\), so nothing was selected"):
        scn2s.pl.selection(adata, show=False)


def test_selection_without_a_record_is_an_error(denoised):
    with pytest.raises(KeyError, match=r"adata.uns\['smooth'\] holds no denoising record"):
        scn2s.pl.selection(denoised, key="smooth", show=False)
    with pytest.raises(KeyError, match="No selection for"):
        scn2s.pl.selection(denoised, families="autoencoder", show=False)


def _two_families(adata):
    out = _with_selection(adata)
    out.uns["denoised"]["selection"]["smoother"] = {
        "loss": "heldout_sqrt_mse",
        "grid": {"bandwidth": np.array([0.5, 1.0, 2.0, 4.0])},
        "loss_mean": np.array([0.9, 0.7, 0.75, 0.8]),
        "loss_std": np.array([0.01, 0.01, 0.02, 0.01]),
        "loss_per_split": np.array([[0.89, 0.69, 0.74, 0.79], [0.91, 0.71, 0.76, 0.81]]),
        "bandwidth": 1.0,
    }
    return out


def test_selection_draws_each_family_on_a_shared_loss_axis(denoised):
    axes = scn2s.pl.selection(_two_families(denoised), show=False)
    assert isinstance(axes, list)
    assert len(axes) == 2
    assert [ax.get_xlabel() for ax in axes] == ["rank", "bandwidth"]
    assert [ax.get_title() for ax in axes] == ["lowrank (written)", "smoother (not written)"]
    assert axes[0].get_shared_y_axes().joined(axes[0], axes[1])
    (chosen,) = _line_through(axes[1], [1.0], [0.7])
    assert chosen.get_marker() == "o"
    # "chosen" only for the family written; the other's best is the best of its family
    assert "best of its family: bandwidth 1" in [t.get_text() for t in axes[1].get_legend().get_texts()]
    assert not any("chosen" in t.get_text() for t in axes[1].get_legend().get_texts())
    only = scn2s.pl.selection(_two_families(denoised), families="smoother", show=False)
    assert isinstance(only, Axes)


def test_selection_marks_the_choice_on_a_descending_grid(denoised):
    adata = _two_families(denoised)
    entry = adata.uns["denoised"]["selection"]["smoother"]
    entry["grid"]["bandwidth"] = entry["grid"]["bandwidth"][::-1].copy()  # 4, 2, 1, 0.5
    entry["bandwidth"] = 2.0
    ax = scn2s.pl.selection(adata, families="smoother", show=False)
    (chosen,) = _line_through(ax, [2.0], [0.7])
    assert chosen.get_marker() == "o"


def test_selection_refuses_a_grid_of_two_hyperparameters(denoised):
    adata = _with_selection(denoised, grid={"rank": np.arange(3), "alpha": np.arange(3)})
    with pytest.raises(ValueError, match="only a grid over one hyperparameter"):
        scn2s.pl.selection(adata, show=False)


def test_selection_into_given_axes(denoised):
    _, ax = plt.subplots()
    assert scn2s.pl.selection(denoised, ax=ax, show=False) is ax
    assert len(ax.get_lines()) > 0
    _, axes = plt.subplots(1, 2)
    with pytest.raises(ValueError, match="ax holds 2 Axes but the plot has 1 panels"):
        scn2s.pl.selection(denoised, ax=axes, show=False)
    _, axes = plt.subplots(1, 2)
    assert scn2s.pl.selection(_two_families(denoised), ax=axes, show=False) == list(axes)


def test_save_writes_png(denoised, tmp_path):
    scn2s.pl.selection(denoised, show=False, save=tmp_path / "sel.png")
    assert (tmp_path / "sel.png").read_bytes()[:4] == b"\x89PNG"
    scn2s.pl.selection(denoised, show=False, save=str(tmp_path / "sub" / "noext"))
    assert (tmp_path / "sub" / "noext.png").exists()
    figdir = sc.settings.figdir
    sc.settings.figdir = tmp_path / "figures"
    try:
        scn2s.pl.genes(denoised, "gene_1", show=False, save=True)
    finally:
        sc.settings.figdir = figdir
    assert (tmp_path / "figures" / f"genes.{sc.settings.file_format_figs}").exists()


def test_show(denoised, monkeypatch):
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(True))
    assert isinstance(scn2s.pl.selection(denoised), Axes)  # Agg is not interactive: nothing shown
    assert shown == []
    assert scn2s.pl.selection(denoised, show=True) is None
    assert shown == [True]


def _medians(ax: Axes) -> list[np.ndarray]:
    """The y of each median segment, for the raw then the denoised violins."""
    return [np.array([seg[0, 1] for seg in c.get_segments()]) for c in ax.collections if isinstance(c, LineCollection)]


def test_genes_draws_raw_and_denoised_violins_per_group(denoised):
    genes = ["gene_0", "gene_5", "gene_7"]
    axes = scn2s.pl.genes(denoised, genes, groupby="cell_type", show=False)
    assert len(axes) == 3
    groups = list(denoised.obs["cell_type"].cat.categories)
    # the medians drawn are those of log1p(counts scaled to the median library size), as scanpy would compute
    target = np.median(np.asarray(denoised.X.sum(axis=1)).ravel())
    expected = {}
    for name, X in (("raw", denoised.X), ("denoised", denoised.layers["denoised"])):
        norm = sc.pp.normalize_total(ad.AnnData(X), target_sum=target, inplace=False)["X"]
        expected[name] = np.log1p(np.asarray(norm.toarray() if hasattr(norm, "toarray") else norm))
    for ax, gene in zip(axes, genes, strict=True):
        assert ax.get_title() == gene
        assert [t.get_text() for t in ax.get_xticklabels()] == groups
        bodies = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bodies) == 2 * len(groups)
        j = denoised.var_names.get_loc(gene)
        raw_medians, denoised_medians = _medians(ax)
        for k, group in enumerate(groups):
            cells = (denoised.obs["cell_type"] == group).to_numpy()
            assert raw_medians[k] == pytest.approx(np.median(expected["raw"][cells, j]), rel=1e-5, abs=1e-9)
            assert denoised_medians[k] == pytest.approx(np.median(expected["denoised"][cells, j]), rel=1e-5)
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["raw", "denoised"]


def test_genes_single_gene_and_no_groups(denoised):
    ax = scn2s.pl.genes(denoised, "gene_3", show=False)
    assert isinstance(ax, Axes)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["all cells"]


def test_genes_on_normalised_values(denoised):
    adata = denoised.copy()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    with pytest.raises(ValueError, match="non-integer values"):
        scn2s.pl.genes(adata, "gene_3", show=False)
    sc.pp.log1p(adata, layer="denoised")
    ax = scn2s.pl.genes(adata, "gene_3", normalize=False, show=False)
    raw_median, denoised_median = _medians(ax)
    assert denoised_median[0] == pytest.approx(np.median(adata.layers["denoised"][:, 3]))
    assert raw_median[0] == pytest.approx(np.median(adata.X[:, 3].toarray()))
    assert isinstance(scn2s.pl.genes(adata, "gene_3", layer="counts", show=False), Axes)


def test_genes_errors(denoised):
    with pytest.raises(KeyError, match=r"Genes not in adata.var_names: \['CD3E'\]"):
        scn2s.pl.genes(denoised, ["gene_1", "CD3E"], show=False)
    with pytest.raises(KeyError, match="groupby='leiden' is not a column"):
        scn2s.pl.genes(denoised, "gene_1", groupby="leiden", show=False)
    with pytest.raises(KeyError, match="Layer 'smooth' not found"):
        scn2s.pl.genes(denoised, "gene_1", key="smooth", show=False)
    with pytest.raises(ValueError, match="genes is empty"):
        scn2s.pl.genes(denoised, [], show=False)


@pytest.fixture(scope="module")
def auto_fit():
    pytest.importorskip("torch")
    adata = simulate(200, 60, n_types=3, rank=2, depth=600, rng=3)
    configs = [
        {"hidden": h, "bottleneck": b, "dropout": d, "max_epochs": 2, "patience": 1}
        for h, b, d in ((256, 32, 0.1), (128, 16, 0.0), (512, 64, 0.2))
    ]
    scn2s.pp.denoise(adata, autoencoder_kwds={"configs": configs}, lowrank_kwds={"max_rank": 10}, progress=False)
    return adata


def _legend_texts(ax: Axes) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_auto_selection_marks_what_was_written_and_compares_the_families(auto_fit):
    record = auto_fit.uns["denoised"]
    written = record["comparison"]["chosen"]
    other = ({"lowrank", "autoencoder"} - {written}).pop()
    axes = scn2s.pl.selection(auto_fit, show=False)
    assert len(axes) == 3
    titles = {"lowrank": axes[0].get_title(), "autoencoder": axes[1].get_title()}
    assert titles[written] == f"{written} (written)"
    assert titles[other] == f"{other} (not written)"
    panel = {"lowrank": axes[0], "autoencoder": axes[1]}
    assert any(text.startswith("chosen") for text in _legend_texts(panel[written]))
    assert not any("chosen" in text for text in _legend_texts(panel[other]))
    assert any(text.startswith("best of its family: ") for text in _legend_texts(panel[other]))
    for ax in axes:
        assert not any("1 splits" in text for text in _legend_texts(ax))
    # the comparison: each family's best on the shared split, the written one in the choice colour
    comparison = axes[2]
    assert comparison.get_shared_y_axes().joined(comparison, axes[0])
    losses = record["comparison"]["loss"]
    for i, family in enumerate(["lowrank", "autoencoder"]):
        (point,) = _line_through(comparison, [i], [losses[family]])
        assert point.get_marker() == "o"
        expected = "C3" if family == written else "0.45"
        assert matplotlib.colors.same_color(point.get_color(), expected)
    texts = _legend_texts(comparison)
    assert texts[["lowrank", "autoencoder"].index(written)] == f"written: {written}, {losses[written]:.5g}"
    margin = 100 * (losses[other] / losses[written] - 1)
    assert f"best of its family: {other}, {losses[other]:.5g} ({margin:+.2f}%)" in texts


def test_auto_selection_draws_candidates_as_points_with_readable_labels(auto_fit):
    selection = auto_fit.uns["denoised"]["selection"]["autoencoder"]
    labels = list(selection["grid"]["config"])
    assert len(labels) == 4
    assert labels[0] == "h256-b32-d0.1"
    axes = scn2s.pl.selection(auto_fit, show=False)
    ax = axes[1]
    # the mean loss of each candidate as a point, no line joining the candidates
    (means,) = _line_through(ax, np.arange(4), selection["loss_mean"])
    assert means.get_linestyle() == "None"
    assert means.get_marker() == "o"
    assert all(line.get_linestyle() == "None" for line in ax.get_lines() if len(line.get_xdata()) > 1)
    assert "held-out loss (one split)" in _legend_texts(ax)
    ticks = ax.get_xticklabels()
    assert [t.get_text().replace("\n", "-") for t in ticks] == labels
    assert ticks[0].get_text() == "h256-b32\nd0.1"
    assert ticks[3].get_text().split("\n")[1:] == [labels[3].split("-")[2], "noposterior"]
    # no two tick labels overlap, on any panel
    figure = ax.figure
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for axis in axes:
        boxes = [t.get_window_extent(renderer) for t in axis.get_xticklabels() if t.get_text()]
        for left, right in itertools.pairwise(boxes):
            assert left.x1 < right.x0, [t.get_text() for t in axis.get_xticklabels()]


def test_selection_zooms_on_a_band_too_thin_to_see(denoised):
    record = denoised.uns["denoised"]["selection"]["lowrank"]
    mean = record["loss_mean"]
    offsets = 1e-4 * (mean.max() - mean.min()) * np.array([[-1.0], [0.0], [1.0]])
    thin = _with_selection(denoised, loss_per_split=mean + offsets, loss_std=np.abs(offsets).max() * np.ones_like(mean))
    ax = scn2s.pl.selection(thin, show=False)
    (inset,) = ax.child_axes
    chosen = int(record["split_rank"])
    rank = record["grid"]["rank"]
    window = np.abs(rank - chosen) <= 3
    shown = [line for line in inset.get_lines() if len(line.get_xdata()) > 1]
    assert len(shown) == 4  # each split and the mean
    assert all(set(line.get_xdata()) <= set(rank[window]) for line in shown)
    assert chosen in shown[0].get_xdata()
    assert [c for c in inset.collections if isinstance(c, PolyCollection)]
    # the legend's entries for the splits and the band are drawn to be seen, and say how wide the band is
    handles = dict(zip(_legend_texts(ax), ax.get_legend().legend_handles, strict=True))
    assert handles["each split"].get_alpha() >= 0.7
    (band,) = [text for text in handles if text.startswith("± 1 sd over 3 splits (at most ")]
    assert handles[band].get_alpha() >= 0.4
    wide = _with_selection(denoised, loss_std=0.2 * (mean.max() - mean.min()) * np.ones_like(mean))
    assert scn2s.pl.selection(wide, show=False).child_axes == []
