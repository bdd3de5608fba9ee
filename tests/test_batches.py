"""``batch_key``: each cell centred on its batch's gene means in the low-rank family, decided by held-out molecules."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scn2s
from scn2s.loss import convert_sqrt_mean
from scn2s.lowrank.model import BlockOperator, heldout_loss_per_rank, randomized_svd, reconstruct_counts


@pytest.fixture(scope="module")
def batched():
    """A simulation measured in three batches whose capture efficiency differs by gene."""
    adata = scn2s.datasets.simulate(600, 200, n_types=3, rank=3, depth=800, rng=0)
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 3, adata.n_obs)
    efficiency = rng.lognormal(0, 0.8, (3, adata.n_vars))
    adata.layers["rates"] = adata.layers["rates"] * efficiency[batch]
    adata.X = sparse.csr_matrix(rng.poisson(adata.layers["rates"]).astype(np.float32))
    adata.obs["batch"] = pd.Categorical([f"b{b}" for b in batch])
    return adata


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


def test_auto_models_batches_in_the_lowrank_family_only(batched):
    adata = batched.copy()
    config = {"hidden": 16, "bottleneck": 4, "max_epochs": 2}
    scn2s.pp.denoise(adata, batch_key="batch", autoencoder_kwds={"configs": [config]}, progress=False)
    selection = adata.uns["denoised"]["selection"]
    assert "batches" in selection["lowrank"]
    assert "batches" not in selection["autoencoder"]
    assert set(adata.uns["denoised"]["comparison"]["loss"]) == {"lowrank", "autoencoder"}


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
        (None, {"method": "autoencoder"}, ValueError, "method='autoencoder'"),
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
        (["--method", "autoencoder", "--batch-key", "batch"], "--method autoencoder"),
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
