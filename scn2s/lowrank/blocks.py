"""The low-rank family's data path in memory: counts read block by block (array level).

Every pass of the rank search and of the full-depth fit (library sizes, splits, the products of the randomized
SVD, the held-out losses) goes over the cells block by block (:class:`scn2s._blocks.RowBlocks`), so an input is
never converted or densified whole, and an input on disk is streamed. :class:`BlockCounts` and
:class:`scn2s.lowrank.dask.DaskRowBlocks` (the same counts in a dask array) have the same methods, which are all
that :mod:`scn2s.lowrank.search` uses: each hands the maths of :mod:`scn2s.lowrank.model` the operator and the
held-out loss for where its counts live.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from scipy import sparse

from .._sparse import rows_only
from .model import BlockOperator, CentredOperator, LowRankFactors, heldout_loss_per_rank, sqrt_normalize

if TYPE_CHECKING:
    from .._blocks import RowBlocks
    from ..select.splits import Splits

__all__ = ["BlockCounts", "SplitHalves"]


class SplitHalves(NamedTuple):
    """One split of the counts, as the data path holds it while the split is scored."""

    train: list  # the training half, block by block (or a dask array of its chunks)
    heldout: list  # the held-out half, likewise
    library: np.ndarray  # each cell's count in the training half (float64)


class BlockCounts:
    """Cells x genes counts held as :class:`~scn2s._blocks.RowBlocks` (in memory or on disk).

    Parameters
    ----------
    blocks
        The counts, read block by block.
    """

    def __init__(self, blocks: RowBlocks) -> None:
        self.blocks = blocks
        self.shape = blocks.shape
        self.slices = blocks.slices

    def library_sizes(self) -> np.ndarray:
        """Each cell's total count (float64), one pass over the blocks."""
        return self.blocks.library_sizes()

    def split(self, splits: Splits, i: int) -> SplitHalves:
        """Split ``i`` of every block: the training blocks, the held-out blocks, the training library sizes.

        The held-out blocks keep the molecules of the cells that score the split (:meth:`Splits.scored_mask`)
        only: the rows of the others are empty.
        """
        train, heldout = [], []
        library = np.empty(self.shape[0])
        keep = splits.scored_mask(i, self.shape[0])
        for b, rows, block in self.blocks:
            train_block, heldout_block = splits.get_block(i, b, block)
            library[rows] = np.asarray(train_block.sum(axis=1, dtype=np.float64)).ravel()
            train.append(train_block)
            heldout.append(_narrow(heldout_block if keep is None else rows_only(heldout_block, keep[rows])))
            del block
        return SplitHalves(train, heldout, library)

    def normalised(self, library: np.ndarray, target_sum: float, parts: list | None = None) -> list:
        """:func:`~scn2s.lowrank.model.sqrt_normalize` of each block of ``parts`` (default: the counts)."""
        if parts is None:
            return [sqrt_normalize(block, library[rows], target_sum) for _, rows, block in self.blocks]
        for j, rows in enumerate(self.slices):  # in place: each part is freed as soon as it is normalised
            parts[j] = sqrt_normalize(parts[j], library[rows], target_sum)
        return parts

    @staticmethod
    def operator(parts: list, groups: np.ndarray | None = None) -> CentredOperator:
        """The centred operator of normalised blocks, for :func:`~scn2s.lowrank.model.randomized_svd`.

        ``groups``: each cell's batch code, to centre each cell on its batch's means.
        """
        return BlockOperator(parts, groups)

    @staticmethod
    def heldout_loss_per_rank(
        factors: LowRankFactors,
        cell_scale: np.ndarray,
        heldout: list,
        *,
        depth_ratio: float,
        keep: np.ndarray | None = None,
    ) -> np.ndarray:
        """:func:`~scn2s.lowrank.model.heldout_loss_per_rank` of held-out blocks (``keep``: the cells that score)."""
        return heldout_loss_per_rank(factors, cell_scale, heldout, depth_ratio=depth_ratio, keep=keep)


def _narrow(counts: sparse.csr_matrix) -> sparse.csr_matrix:
    """``counts`` with its values in ``uint16`` when they fit (held while a split is scored: half the memory)."""
    if counts.data.size and counts.data.max() <= np.iinfo(np.uint16).max:
        counts.data = counts.data.astype(np.uint16)
    return counts
