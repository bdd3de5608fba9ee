"""``method="auto"`` compares the families on the same held-out molecules and writes the better one."""

from __future__ import annotations

import numpy as np
import pytest

import scn2s
from scn2s.datasets import simulate

CONFIG = [{"hidden": 128, "bottleneck": 8, "dropout": 0.0, "max_epochs": 60, "patience": 8}]


def _true_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    def transform(values):
        return np.sqrt(values / values.sum(axis=1, keepdims=True) * 1e4)

    return float(np.mean((transform(estimate) - transform(truth)) ** 2))


@pytest.mark.parametrize(
    ("structure", "shape", "winner"),
    [("trajectory", (800, 250), "autoencoder"), ("sqrt_linear", (300, 250), "lowrank")],
)
def test_auto_picks_the_family_with_the_lower_true_error(structure, shape, winner):
    adata = simulate(*shape, structure=structure, rank=3, depth=1000, rng=0)
    truth = adata.layers["rates"].astype(np.float64)
    errors = {}
    for method in ("lowrank", "autoencoder"):
        fitted = scn2s.pp.denoise(adata, method=method, autoencoder_kwds={"configs": CONFIG}, progress=False, copy=True)
        errors[method] = _true_error(fitted.layers["denoised"].astype(np.float64), truth)
    assert min(errors, key=errors.get) == winner, errors
    scn2s.pp.denoise(adata, method="auto", autoencoder_kwds={"configs": CONFIG}, progress=False)
    record = adata.uns["denoised"]
    assert record["comparison"]["chosen"] == winner
    assert record["method"] == winner
    assert set(record["selection"]) == {"lowrank", "autoencoder"}
    # the comparison uses the same split and loss for both families
    lowrank = record["selection"]["lowrank"]
    assert record["comparison"]["loss"]["lowrank"] == pytest.approx(lowrank["loss_per_split"][0, lowrank["split_rank"]])
    assert record["comparison"]["loss"]["autoencoder"] == pytest.approx(
        record["selection"]["autoencoder"]["loss_mean"].min()
    )
    written = _true_error(adata.layers["denoised"].astype(np.float64), truth)
    assert written == pytest.approx(errors[winner], rel=1e-6)
