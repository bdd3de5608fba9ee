"""``integrate=True`` of :func:`~scn2s.pp.denoise`: the cells' embedding with the batches removed, beside it.

The layer and the embedding ``obsm[f"X_{key_added}"]`` are left as they are (each cell keeps its own batch's
expression); ``obsm[f"X_{key_added}_integrated"]`` is that embedding corrected by :func:`scn2s.integrate.harmonize`.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np

from .._names import factor_keys, integrated_key
from ..integrate import harmonize

if TYPE_CHECKING:
    from .._batches import Batches

__all__ = ["check_integrate", "integrated_entries"]

logger = logging.getLogger(__name__)


def check_integrate(integrate: bool, batch_key: str | None, output: str) -> None:
    """Raise, before any work, if ``integrate`` cannot be honoured."""
    if not isinstance(integrate, bool):
        msg = f"integrate must be True or False, got {integrate!r}."
        raise TypeError(msg)
    if integrate and batch_key is None:
        msg = "integrate=True removes the batches from the cells' embedding and needs batch_key (an obs column)."
        raise ValueError(msg)
    if integrate and output != "layer":
        msg = f"integrate=True needs output='layer' (with batch_key), got output={output!r}."
        raise ValueError(msg)


def integrated_entries(
    entries: dict[str, dict], batches: Batches | None, *, key_added: str, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict]:
    """``{obsm key: embedding}`` with the batches removed, and its record (``uns[key_added]["integration"]``).

    The embedding is the chosen family's (in ``entries["obsm"]``); a denoiser calibrated beside the families has
    none, so nothing is written, with a :class:`UserWarning`. With one batch (``batches`` is None after
    :func:`scn2s._batches.read_batches`'s warning) there is nothing to remove: the embedding is written as it is.
    """
    embedding = entries.get("obsm", {}).get(factor_keys(key_added)["scores"][1])
    key = integrated_key(key_added)
    if embedding is None:
        msg = f"integrate=True: the denoiser chosen has no cell embedding, so obsm[{key!r}] is not written."
        warnings.warn(msg, UserWarning, stacklevel=4)
        return {}, {"method": "none", "reason": "the denoiser chosen has no embedding"}
    if batches is None:
        return {key: np.array(embedding)}, {"method": "none", "reason": "one batch"}
    result = harmonize(embedding, batches.codes, n_groups=len(batches.levels), rng=rng)
    if not result.converged:
        logger.info("harmony: the objective still fell after %d rounds", result.rounds)
    record = {
        "method": "harmony",
        "batch_key": batches.key,
        "n_clusters": result.n_clusters,
        "rounds": result.rounds,
        "converged": result.converged,
        "objective": np.asarray(result.objective),
        **result.params,
    }
    return {key: result.embedding.astype(np.asarray(embedding).dtype, copy=False)}, record
