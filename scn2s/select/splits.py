"""The molecule splits shared by every candidate of every family."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from .._blocks import RowBlocks
from ..split import binomial_split, overlap_probabilities

__all__ = ["SCORED_CELLS", "Splits", "split_fractions"]

SCORED_CELLS = 32_768
"""Cells whose held-out molecules score each split when there are more (:attr:`Splits.scored_cells`)."""


def split_fractions(p: float, sample_ratio: float | None) -> tuple[float, float]:
    """Expected fractions of the counts in the training and held-out halves."""
    if sample_ratio is None:
        return p, 1 - p
    both, first, second = overlap_probabilities(p, sample_ratio)
    return first + both, second + both


@dataclass(frozen=True)
class Splits:
    """``n_splits`` reproducible training/held-out splits of the same counts.

    Each split has its own seed, so every family that asks for split ``i`` gets the very same molecules: all
    candidates are scored on the same held-out molecules. The molecules of each block of
    :data:`scn2s._blocks.BLOCK_ROWS` cells are split by a stream of their own (the split's seed and the block's
    index), so a block read alone (:meth:`get_block`) is split exactly as in the whole matrix (:meth:`get`).

    With more than ``scored_cells`` cells, the held-out molecules of that many cells, drawn at random from the
    split's seed (:meth:`scored_rows`), score every candidate of every family; every cell's molecules are still
    split, and every cell's training molecules are still the candidates' input. ``None``: every cell's score.
    """

    p: float
    seeds: tuple[int, ...]
    sample_ratio: float | None = None
    scored_cells: int | None = SCORED_CELLS

    def __post_init__(self) -> None:
        cells = self.scored_cells
        if cells is not None and (not isinstance(cells, (int, np.integer)) or isinstance(cells, bool) or cells < 1):
            msg = f"scored_cells must be a positive integer or None, got {cells!r}."
            raise ValueError(msg)

    @classmethod
    def draw(cls, rng: np.random.Generator, n_splits: int, p: float, sample_ratio: float | None = None) -> Splits:
        """Draw the seeds of ``n_splits`` splits from ``rng``."""
        if n_splits < 1:
            msg = f"n_splits must be at least 1, got {n_splits}."
            raise ValueError(msg)
        return cls(p=p, seeds=tuple(int(s) for s in rng.integers(2**63, size=n_splits)), sample_ratio=sample_ratio)

    def __len__(self) -> int:
        return len(self.seeds)

    def get(self, i: int, counts: sparse.csr_matrix) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
        """``(training half, held-out half)`` of split ``i`` of the whole matrix (CSR), split block by block."""
        halves = [self.get_block(i, b, block) for b, _, block in RowBlocks(counts, checked=True)]
        if len(halves) == 1:
            return halves[0]
        return tuple(sparse.vstack(parts, format="csr") for parts in zip(*halves, strict=True))

    def get_block(self, i: int, b: int, block: sparse.csr_matrix) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
        """``(training half, held-out half)`` of split ``i`` of block ``b`` (cells ``b * BLOCK_ROWS`` onwards)."""
        rng = np.random.default_rng([self.seeds[i], b])
        return binomial_split(block, self.p, rng=rng, sample_ratio=self.sample_ratio)

    def scored_rows(self, i: int, n: int) -> np.ndarray | None:
        """The cells (sorted indices) whose held-out molecules score split ``i`` of ``n`` cells; ``None``: all.

        The same for every family and candidate: drawn from the split's seed, in a stream apart from the blocks'.
        """
        if self.scored_cells is None or n <= self.scored_cells:
            return None
        rng = np.random.default_rng(np.random.SeedSequence(self.seeds[i], spawn_key=(n,)))
        return np.sort(rng.choice(n, self.scored_cells, replace=False))

    def scored_mask(self, i: int, n: int) -> np.ndarray | None:
        """:meth:`scored_rows` as a boolean mask over the ``n`` cells; ``None``: all."""
        rows = self.scored_rows(i, n)
        if rows is None:
            return None
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        return mask

    def n_scored(self, n: int) -> int:
        """How many of ``n`` cells score each split."""
        return n if self.scored_cells is None else min(n, self.scored_cells)

    @property
    def fractions(self) -> tuple[float, float]:
        """Expected fractions of the counts in the training and held-out halves."""
        return split_fractions(self.p, self.sample_ratio)

    @property
    def depth_ratio(self) -> float:
        """Expected depth of the held-out half over the training half (exactly 1 for equal halves)."""
        train, heldout = self.fractions
        return 1.0 if np.isclose(train, heldout) else heldout / train
