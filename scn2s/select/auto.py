"""Comparison of the families on the same held-out molecules."""

from __future__ import annotations

from .autoencoder import AutoencoderSelection
from .lowrank import LowRankSelection

__all__ = ["compare_families"]


def compare_families(lowrank: LowRankSelection, autoencoder: AutoencoderSelection) -> dict:
    """Pick the family with the lower held-out loss, on the splits both were scored on.

    The low-rank loss is that of its chosen rank at the split depth, the autoencoder's that of its chosen
    candidate; both are means over the same splits of the same loss on the same held-out molecules.

    Returns
    -------
    ``{"n_splits": m, "loss": {"lowrank": ..., "autoencoder": ...}, "chosen": family}``.
    """
    used = autoencoder.losses.shape[0]
    losses = {
        "lowrank": float(lowrank.losses[:used, lowrank.split_rank].mean()),
        "autoencoder": float(autoencoder.losses[:, autoencoder.best].mean()),
    }
    return {"n_splits": used, "loss": losses, "chosen": min(losses, key=losses.get)}
