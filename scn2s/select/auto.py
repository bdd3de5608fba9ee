"""Comparison of the families on the same held-out molecules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .family import Selection

__all__ = ["compare_families"]


def compare_families(selections: Sequence[Selection]) -> dict:
    """Pick the family with the lower held-out loss, on the splits all were scored on.

    Each family's loss is that of its choice at the split depth (:attr:`~scn2s.select.family.Selection.heldout_losses`:
    the low-rank family's chosen rank, the autoencoder's chosen candidate): means over the same splits of the same
    loss on the same held-out molecules.

    Returns
    -------
    ``{"n_splits": m, "loss": {family: ..., ...}, "chosen": family}``.
    """
    used = min(len(selection.heldout_losses) for selection in selections)
    losses = {selection.family: float(selection.heldout_losses[:used].mean()) for selection in selections}
    return {"n_splits": used, "loss": losses, "chosen": min(losses, key=losses.get)}
