"""``batch_key``: per-batch gene means (low-rank), a batch covariate (autoencoder), decided by held-out molecules."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scn2s
import scn2s.select.calibrate
from scn2s.cli._report import selection_summary
from scn2s.loss import convert_sqrt_mean
from scn2s.lowrank.model import BlockOperator, heldout_loss_per_rank, randomized_svd, reconstruct_counts


def test_the_operator_centres_each_cell_on_its_batch():
    rng = np.random.default_rng(0)
    Y = sparse.random(300, 40, density=0.3, random_state=1, format="csr")
    groups = rng.integers(0, 3, 300)
    op = BlockOperator([Y[:100], Y[100:250], Y[250:]], groups)
    means = np.stack([Y[groups == b].toarray().mean(axis=0) for b in range(3)])
    centred = Y.toarray() - means[groups]
    M, Q = rng.standard_normal((40, 5)), rng.standard_normal((300, 4))
    np.testing.assert_allclose(op.mean, means)
    np.testing.assert_allclose(op.right(M), centred @ M)
    np.testing.assert_allclose(op.left(Q), centred.T @ Q)


@pytest.mark.parametrize("ratio", [1.0, 1.5])
def test_heldout_loss_of_every_rank_with_batch_means_is_the_direct_sum(ratio):
    rng = np.random.default_rng(0)
    Y = sparse.random(300, 40, density=0.3, random_state=1, format="csr")
    groups = rng.integers(0, 3, 300)
    factors = randomized_svd(BlockOperator([Y], groups), 10, rng=np.random.default_rng(2))
    heldout = sparse.csr_matrix(rng.poisson(0.8, (300, 40)).astype(np.float64))
    a = rng.uniform(0.5, 2, 300)
    fast = heldout_loss_per_rank(factors, a, [heldout[:120], heldout[120:]], depth_ratio=ratio)
    target = np.sqrt(heldout.toarray())
    direct = []
    for k in range(11):
        pred = a[:, None] * (factors.mean[groups] + factors.U[:, :k] * factors.s[:k] @ factors.Vt[:k])
        pred = pred if ratio == 1.0 else convert_sqrt_mean(pred, ratio)
        direct.append(((target - pred) ** 2).sum())
    np.testing.assert_allclose(fast, direct, rtol=1e-9)
    counts = reconstruct_counts(factors, 3, np.full(300, 50.0), 50.0)
    np.testing.assert_allclose(counts.sum(axis=1), 50.0)


def test_batch_means_are_chosen_by_heldout_loss_and_recorded(batched, tmp_path):
    adata = batched.copy()
    scn2s.pp.denoise(adata, method="lowrank", batch_key="batch", progress=False)
    record = adata.uns["denoised"]
    batches = record["selection"]["lowrank"]["batches"]
    assert batches["compared"]
    assert batches["used"]
    assert batches["loss_with"] < batches["loss_without"]
    assert list(batches["levels"]) == ["b0", "b1", "b2"]
    assert record["params"]["batch_key"] == "batch"
    np.testing.assert_allclose(
        record["comparison"]["loss"]["lowrank"] if "comparison" in record else batches["loss_with"],
        batches["loss_with"],
    )
    # the variant without the batches is exactly a run without batch_key
    plain = batched.copy()
    scn2s.pp.denoise(plain, method="lowrank", progress=False)
    np.testing.assert_allclose(
        plain.uns["denoised"]["selection"]["lowrank"]["loss_mean"].min(), batches["loss_without"]
    )
    assert plain.uns["denoised"]["best_params"]["rank"] == batches["rank_without"]
    assert record["best_params"]["rank"] == batches["rank_with"]
    # each cell keeps its own batch's expression: closer to the truth than without the batches
    truth = np.asarray(adata.layers["rates"])
    truth = truth / truth.sum(axis=1, keepdims=True) * np.asarray(adata.X.sum(axis=1))
    error = {
        name: np.mean((np.sqrt(data.layers["denoised"]) - np.sqrt(truth)) ** 2)
        for name, data in (("with", adata), ("without", plain))
    }
    assert error["with"] < error["without"]
    adata.write_h5ad(tmp_path / "out.h5ad")
    assert ad.read_h5ad(tmp_path / "out.h5ad").uns["denoised"]["selection"]["lowrank"]["batches"]["used"]


def test_transform_batch_writes_every_cell_as_if_in_the_reference(batched):
    adata = batched.copy()
    scn2s.pp.denoise(adata, method="lowrank", batch_key="batch", transform_batch="b0", progress=False)
    batches = adata.uns["denoised"]["selection"]["lowrank"]["batches"]
    assert batches["reference"] == "b0"
    assert batches["transformed"]
    own = batched.copy()
    scn2s.pp.denoise(own, method="lowrank", batch_key="batch", progress=False)
    in_b0 = (adata.obs["batch"] == "b0").to_numpy()
    np.testing.assert_allclose(adata.layers["denoised"][in_b0], own.layers["denoised"][in_b0], rtol=1e-5)
    assert not np.allclose(adata.layers["denoised"][~in_b0], own.layers["denoised"][~in_b0])
    # the batch-specific efficiencies are gone: every cell's genes now follow b0's

    def shift(layer):
        return np.abs(np.log1p(layer[~in_b0].mean(axis=0)) - np.log1p(layer[in_b0].mean(axis=0))).mean()

    assert shift(adata.layers["denoised"]) < 0.5 * shift(own.layers["denoised"])


AE_CONFIG = {"hidden": 64, "bottleneck": 8, "max_epochs": 60}


@pytest.fixture(scope="module")
def autoencoded(batched):
    """The autoencoder on the batched simulation: with the batches, without, and with ``transform_batch="b0"``."""
    runs = {}
    for name, kwargs in (
        ("with", {"batch_key": "batch"}),
        ("without", {}),
        ("b0", {"batch_key": "batch", "transform_batch": "b0"}),
    ):
        adata = batched.copy()
        options = {"method": "autoencoder", "autoencoder_kwds": {"configs": [AE_CONFIG]}, "progress": False}
        scn2s.pp.denoise(adata, **options, **kwargs)
        runs[name] = adata
    return runs


def _sqrt_error(adata) -> float:
    truth = np.asarray(adata.layers["rates"])
    truth = truth / truth.sum(axis=1, keepdims=True) * np.asarray(adata.X.sum(axis=1))
    return float(np.mean((np.sqrt(adata.layers["denoised"]) - np.sqrt(truth)) ** 2))


def test_the_autoencoder_is_told_the_batch_if_it_lowers_the_heldout_loss(autoencoded):
    record = autoencoded["with"].uns["denoised"]
    selection = record["selection"]["autoencoder"]
    batches = selection["batches"]
    assert batches["compared"]
    assert batches["used"]
    assert batches["loss_with"] < batches["loss_without"]
    assert batches["config_with"] == "h64-b8-d0.1-batch"
    assert record["best_params"]["batch_covariate"]
    assert "h64-b8-d0.1-batch" in list(selection["grid"]["config"])
    # the candidates without the covariate are those of a run without batch_key, on the same molecules
    plain = autoencoded["without"].uns["denoised"]["selection"]["autoencoder"]
    np.testing.assert_allclose(plain["loss_mean"].min(), batches["loss_without"])
    assert "batches" not in plain
    # each cell keeps its own batch's expression, closer to the truth
    assert _sqrt_error(autoencoded["with"]) < 0.9 * _sqrt_error(autoencoded["without"])
    # the record names it, and the command line's summary says it
    from scn2s._record import candidate_names
    from scn2s.cli._report import selection_summary

    assert candidate_names(selection)[-1].endswith(", batch covariate")
    lines = selection_summary(record, key="denoised")
    assert any(line.startswith("  batch covariate (obs['batch'], 3 batches): used, held-out loss") for line in lines)


def test_the_autoencoders_transform_batch_and_embedding_are_free_of_the_batches(autoencoded):
    own, moved = autoencoded["with"], autoencoded["b0"]
    batches = moved.uns["denoised"]["selection"]["autoencoder"]["batches"]
    assert batches["reference"] == "b0"
    assert batches["transformed"]
    in_b0 = (own.obs["batch"] == "b0").to_numpy()
    np.testing.assert_allclose(moved.layers["denoised"][in_b0], own.layers["denoised"][in_b0], rtol=1e-3, atol=1e-4)

    def shift(layer):
        return np.abs(np.log1p(layer[~in_b0].mean(axis=0)) - np.log1p(layer[in_b0].mean(axis=0))).mean()

    assert shift(moved.layers["denoised"]) < 0.3 * shift(own.layers["denoised"])
    # neighbours in the code: from every batch with the covariate, from the cell's own batch without it
    from sklearn.neighbors import NearestNeighbors

    def mixing(adata) -> float:
        rep = adata.obsm["X_denoised"]
        _, index = NearestNeighbors(n_neighbors=16).fit(rep).kneighbors(rep)
        codes = adata.obs["batch"].cat.codes.to_numpy()
        return float((codes[index[:, 1:]] != codes[:, None]).mean())

    assert mixing(own) > 0.3
    assert mixing(autoencoded["without"]) < 0.1


def test_a_network_with_batches_needs_them_and_its_own_batch_as_reference_changes_nothing():
    import torch

    from scn2s.autoencoder.data import CsrBatches
    from scn2s.autoencoder.module import CountAutoencoder
    from scn2s.autoencoder.train import predict_rates

    torch.manual_seed(0)
    model = CountAutoencoder(30, hidden=16, bottleneck=4, n_batches=2).eval()
    with torch.no_grad():
        model.batch_logits.normal_()
    counts = sparse.csr_matrix(np.random.default_rng(0).poisson(3.0, (10, 30)).astype(np.float32))
    with pytest.raises(ValueError, match="models 2 batches"):
        model(torch.zeros(3, 30))
    groups = np.array([0, 1] * 5)
    data = CsrBatches(counts, "cpu", groups=groups, n_groups=2)
    rows = np.arange(10)
    own = predict_rates(model, data, rows)
    np.testing.assert_allclose(own.sum(axis=1), counts.sum(axis=1).A1, rtol=1e-5)
    to_own = predict_rates(model, CsrBatches(counts[::2], "cpu", groups=groups[::2], n_groups=2), rows[:5], reference=0)
    np.testing.assert_allclose(to_own, own[::2], rtol=1e-5)
    moved = predict_rates(model, data, rows, reference=0)
    assert not torch.allclose(moved[1::2], own[1::2])
    with pytest.raises(ValueError, match="batch_covariate=True needs each cell's batch"):
        scn2s.autoencoder.train.train(counts, scn2s.autoencoder.train.TrainConfig(batch_covariate=True), epochs=1)


def test_auto_models_batches_in_both_families(batched):
    adata = batched.copy()
    config = {"hidden": 16, "bottleneck": 4, "max_epochs": 2}
    scn2s.pp.denoise(adata, batch_key="batch", autoencoder_kwds={"configs": [config]}, progress=False)
    selection = adata.uns["denoised"]["selection"]
    assert "batches" in selection["lowrank"]
    assert selection["autoencoder"]["batches"]["compared"]
    assert set(adata.uns["denoised"]["comparison"]["loss"]) == {"lowrank", "autoencoder"}
    plain = batched.copy()
    with pytest.raises(ValueError, match="batch_covariate=True needs each cell's batch"):
        scn2s.pp.denoise(plain, autoencoder_kwds={"configs": [{**config, "batch_covariate": True}]}, progress=False)
    assert "denoised" not in plain.uns


def test_one_batch_changes_nothing(batched):
    adata = batched.copy()
    adata.obs["one"] = "all"
    with pytest.warns(UserWarning, match="holds one batch"):
        scn2s.pp.denoise(adata, method="lowrank", batch_key="one", progress=False)
    plain = batched.copy()
    scn2s.pp.denoise(plain, method="lowrank", progress=False)
    np.testing.assert_array_equal(adata.layers["denoised"], plain.layers["denoised"])
    assert "batches" not in adata.uns["denoised"]["selection"]["lowrank"]


@pytest.mark.parametrize(
    ("change", "kwargs", "error", "match"),
    [
        ("missing", {}, ValueError, "has 1 missing values"),
        ("single", {}, ValueError, "batches of a single cell"),
        (None, {"batch_key": "nope"}, KeyError, "is not a column of adata.obs"),
        (None, {"output": "factors"}, ValueError, "output='factors'"),
        (None, {"transform_batch": "b9"}, ValueError, "is not a batch"),
        (None, {"batch_key": None, "transform_batch": "b0"}, ValueError, "needs batch_key"),
    ],
)
def test_odd_batch_columns_are_refused_before_any_work(batched, change, kwargs, error, match):
    adata = batched.copy()
    column = adata.obs["batch"].astype(str).to_numpy().astype(object)
    if change == "missing":
        column[5] = None
    elif change == "single":
        column[5] = "alone"
    adata.obs["batch"] = column
    arguments = {"method": "lowrank", "batch_key": "batch", "progress": False} | kwargs
    with pytest.raises(error, match=match):
        scn2s.pp.denoise(adata, **arguments)
    assert "denoised" not in adata.layers
    assert "denoised" not in adata.uns


def test_the_command_line_takes_the_batch_column_and_says_what_it_did(batched, tmp_path, capsys):
    from scn2s.cli import main

    source = tmp_path / "in.h5ad"
    batched.write_h5ad(source)
    out = str(tmp_path / "out.h5ad")
    assert main(["denoise", str(source), "-o", out, "--method", "lowrank", "--batch-key", "batch"]) == 0
    assert "per-batch gene means (obs['batch'], 3 batches): used, held-out loss" in capsys.readouterr().out
    assert ad.read_h5ad(out).uns["denoised"]["params"]["batch_key"] == "batch"
    refused = [
        (["--batch-key", "nope"], "is not a column of adata.obs"),
        (["--batch-key", "batch", "--transform-batch", "b9"], "--transform-batch b9 is not a batch"),
    ]
    for i, (flags, message) in enumerate(refused):
        assert main(["-q", "denoise", str(source), "-o", str(tmp_path / f"x{i}.h5ad"), *flags]) == 2
        error = capsys.readouterr().err
        assert message in error, error
        assert not (tmp_path / f"x{i}.h5ad").exists()


def test_the_command_line_warns_once_about_a_single_batch(batched, tmp_path):
    from scn2s.cli import main

    adata = batched.copy()
    adata.obs["one"] = "all"
    source = tmp_path / "in.h5ad"
    adata.write_h5ad(source)
    with pytest.warns(UserWarning, match="holds one batch") as caught:
        code = main(
            [
                "-q",
                "denoise",
                str(source),
                "-o",
                str(tmp_path / "out.h5ad"),
                "--method",
                "lowrank",
                "--batch-key",
                "one",
            ]
        )
    assert code == 0
    assert sum("holds one batch" in str(w.message) for w in caught) == 1


def gene_means(counts, *, weight: float = 1.0):
    """Every cell's frequencies pulled (by ``weight``) to the mean frequencies of the cells it was given."""
    dense = counts.toarray() if sparse.issparse(counts) else np.asarray(counts, dtype=np.float64)
    library = dense.sum(axis=1, keepdims=True)
    frequencies = dense / np.maximum(library, 1)
    return (1 - weight) * frequencies + weight * frequencies.mean(axis=0)


def test_calibrate_denoises_each_batch_alone_where_that_lowers_the_heldout_loss(batched):
    adata = batched.copy()
    scn2s.pp.calibrate(adata, gene_means, {"weight": [0.5, 1.0]}, batch_key="batch", progress=False)
    record = adata.uns["denoised"]
    entry = record["selection"]["gene_means"]
    batches = entry["batches"]
    assert batches["used"]
    assert batches["loss_with"] < batches["loss_without"]
    assert list(batches["levels"]) == ["b0", "b1", "b2"]
    assert record["params"]["batch_key"] == "batch"
    np.testing.assert_allclose(entry["loss_mean"], batches["loss_mean_with"])
    # all cells together is exactly a run without batch_key, on the same splits
    plain = batched.copy()
    scn2s.pp.calibrate(plain, gene_means, {"weight": [0.5, 1.0]}, progress=False)
    together = plain.uns["denoised"]["selection"]["gene_means"]["loss_mean"]
    np.testing.assert_allclose(together, batches["loss_mean_without"])
    # the layer: each batch's own mean frequencies, on each cell's library size
    weight = record["best_params"]["weight"]
    counts = batched.X.toarray().astype(np.float64)
    library = counts.sum(axis=1)
    expected = np.empty_like(counts)
    for level in ["b0", "b1", "b2"]:
        cells = (batched.obs["batch"] == level).to_numpy()
        values = gene_means(counts[cells], weight=weight)
        expected[cells] = values / values.sum(axis=1, keepdims=True) * library[cells, None]
    np.testing.assert_allclose(adata.layers["denoised"], expected, rtol=1e-5, atol=1e-4)
    lines = selection_summary(record, key="denoised")
    assert any("each batch alone (obs['batch'], 3 batches): used" in line for line in lines)


def test_a_denoiser_failing_on_one_batch_is_named(batched):
    def needs_250_cells(counts):
        if counts.shape[0] < 250:
            raise ValueError("fewer cells than neighbours")
        return counts.toarray()

    adata = batched.copy()
    with pytest.raises(scn2s.select.calibrate.DenoiserError, match=r"of batch 'b\d' alone: ValueError: fewer cells"):
        scn2s.pp.calibrate(adata, needs_250_cells, [{}], batch_key="batch", progress=False)
    assert "denoised" not in adata.uns


def test_denoise_scores_a_users_denoiser_per_batch_beside_the_families(batched):
    adata = batched.copy()
    scn2s.pp.denoise(
        adata,
        method="lowrank",
        batch_key="batch",
        denoisers={"gene_means": (gene_means, {"weight": [1.0]})},
        progress=False,
    )
    selection = adata.uns["denoised"]["selection"]
    assert "batches" in selection["lowrank"]
    assert selection["gene_means"]["batches"]["used"]
    np.testing.assert_allclose(
        adata.uns["denoised"]["comparison"]["loss"]["gene_means"], selection["gene_means"]["batches"]["loss_with"]
    )


def test_calibrate_with_a_one_batch_column_denoises_all_cells_together(batched):
    adata = batched.copy()
    adata.obs["one"] = "all"
    with pytest.warns(UserWarning, match="one batch"):
        scn2s.pp.calibrate(adata, gene_means, {"weight": [1.0]}, batch_key="one", progress=False)
    assert "batches" not in adata.uns["denoised"]["selection"]["gene_means"]
    with pytest.raises(KeyError, match="not a column"):
        scn2s.pp.calibrate(adata, gene_means, {"weight": [1.0]}, batch_key="missing", progress=False)
