"""Rank search of the low-rank family (array level), behind the family interface of :mod:`scn2s.select.family`."""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from .._batches import Batches
from .._blocks import RowBlocks
from .._sparse import canonical_csr, is_dask_array
from .._timing import Timings
from .._validate import check_integer
from ..select.family import SplitLosses, options_from
from ..select.splits import Splits
from .blocks import BlockCounts
from .model import LowRankFactors, randomized_svd, reconstruct_counts, transfer_rank

if TYPE_CHECKING:
    from .dask import DaskRowBlocks

__all__ = [
    "Batches",
    "LowRankOptions",
    "LowRankSelection",
    "as_row_blocks",
    "clamp_rank",
    "fit_lowrank",
    "normalised_blocks",
    "rank_limit",
    "search_lowrank",
    "select",
]


class RankLosses(NamedTuple):
    """What :func:`search_lowrank` measures."""

    losses: np.ndarray  # (n_splits, max_rank + 1): held-out loss per entry of every rank on every split
    singular_values: np.ndarray  # (n_splits, max_rank): each split's spectrum


class NormalisedCounts(NamedTuple):
    """The normalised square-root counts of :func:`normalised_blocks`, with what normalised them."""

    blocks: list  # block by block (or a dask array of its chunks)
    library: np.ndarray  # each cell's count (float64)
    target_sum: float  # the normalisation target: the median library size


LOSS = "heldout_sqrt_mse"
"""The name of the held-out loss in the record (:func:`scn2s.loss.heldout_sqrt_mse`)."""


@dataclass(frozen=True)
class LowRankOptions:
    """Options of the low-rank family: ``lowrank_kwds`` of :func:`scn2s.pp.denoise`.

    Attributes
    ----------
    max_rank
        Largest rank searched.
    rank
        Fit this rank without a search (``method="lowrank"`` only).
    depth_correction
        Carry the rank chosen at depth ``p N`` to the full depth (:func:`scn2s.lowrank.model.transfer_rank`).
    """

    max_rank: int = 50
    rank: int | None = None
    depth_correction: bool = True

    def __post_init__(self) -> None:
        check_integer("max_rank", self.max_rank, minimum=1)
        check_integer("rank", self.rank, minimum=0, allow_none=True)

    @classmethod
    def from_kwds(cls, kwds: Mapping | None) -> LowRankOptions:
        """The options of a ``lowrank_kwds`` mapping (``None``: the defaults); unknown keys raise."""
        return options_from(cls, kwds, "lowrank_kwds")


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LowRankSelection(SplitLosses):
    """Outcome of the rank search, and the full-depth fit it chose (a :class:`~scn2s.select.family.Selection`)."""

    ranks: np.ndarray
    losses: np.ndarray  # (n_splits, n_ranks), mean per entry
    split_singular_values: np.ndarray  # (n_splits, K)
    split_rank: int
    rank: int
    noise_ratio: float
    factors: LowRankFactors
    library_size: np.ndarray
    target_sum: float
    n_splits: int  # the splits drawn (none scored with a fixed rank)
    batches: dict | None = None  # with batch codes: the comparison with and without per-batch means (the record's)
    reference: int | None = None  # a batch code: every cell reconstructed as if in that batch (transform_batch)

    family = "lowrank"

    def embedding(self) -> np.ndarray:
        """The cells' scores of the applied rank, ``U[:, :rank] * s[:rank]`` (float64, cells x rank)."""
        return self.factors.U[:, : self.rank] * self.factors.s[: self.rank]

    @property
    def loadings(self) -> np.ndarray:
        """The modelled genes' loadings of the applied rank, ``Vt[:rank].T`` (genes x rank)."""
        return self.factors.Vt[: self.rank].T

    @property
    def heldout_losses(self) -> np.ndarray:
        """Held-out loss of the rank chosen at the split depth, per split."""
        return self.losses[:, self.split_rank]

    def reconstruct(self, rows: slice) -> np.ndarray:
        """Denoised expected counts of a block of cells (all modelled genes).

        With per-batch means and a ``reference`` batch, each cell is centred on that batch's means instead of its
        own: its expression as if measured in the reference batch.
        """
        groups = None
        if self.reference is not None and self.factors.groups is not None:
            groups = np.full(len(self.library_size[rows]), self.reference)
        return reconstruct_counts(self.factors, self.rank, self.library_size, self.target_sum, rows=rows, groups=groups)

    def best_params(self) -> dict:
        """The choice: ``{"rank": k}``."""
        return {"rank": self.rank}

    def record(self) -> dict:
        """The family's entry of ``uns[key_added]["selection"]`` (without the shared ``p`` and ``seed``)."""
        record = {"loss": LOSS, "split_rank": self.split_rank, "rank": self.rank, "singular_values": self.factors.s}
        if len(self.ranks):
            record |= {
                "grid": {"rank": self.ranks},
                "loss_mean": self.loss_mean,
                "loss_std": self.loss_std,
                "loss_per_split": self.losses,
                "split_singular_values": self.split_singular_values,
            }
            if np.isfinite(self.noise_ratio):
                record["noise_ratio"] = self.noise_ratio
        if self.batches is not None:
            record["batches"] = dict(self.batches)
        return record | {"n_splits": self.n_splits}


def rank_limit(shape: tuple[int, int]) -> int:
    """Largest rank a centred factorisation of ``shape`` (cells x genes) has: ``min(n_cells - 1, n_genes)``."""
    n, g = shape
    return min(n - 1, g)


def clamp_rank(name: str, value: int, shape: tuple[int, int], *, stacklevel: int = 2) -> int:
    """``value`` clamped to :func:`rank_limit`, with a :class:`UserWarning` when it is lowered.

    Parameters
    ----------
    name
        Name of the argument, for the message.
    value
        The requested rank.
    shape
        Cells x genes of the counts.
    stacklevel
        Passed to :func:`warnings.warn`; ``2`` attributes the warning to the caller of this function.

    Raises
    ------
    ValueError
        If ``shape`` has fewer than 2 cells: nothing can be fit.
    """
    n, g = shape
    limit = rank_limit(shape)
    if limit < 1:
        msg = f"Need at least 2 cells and 1 gene to fit a model across cells, got {n} x {g} (cells x genes)."
        raise ValueError(msg)
    if value > limit:
        msg = (
            f"{name}={value} exceeds what {n} cells x {g} genes allow (at most min(cells - 1, genes) = {limit}); "
            f"using {limit}."
        )
        warnings.warn(msg, UserWarning, stacklevel=stacklevel)
        return limit
    return value


def as_row_blocks(counts) -> BlockCounts | DaskRowBlocks:
    """``counts`` as the family's data path: blocks of consecutive cells, in memory, on disk or on dask's workers.

    A matrix in memory or :class:`~scn2s._blocks.RowBlocks` becomes :class:`~scn2s.lowrank.blocks.BlockCounts`, and
    a dask array of CSR chunks :class:`scn2s.lowrank.dask.DaskRowBlocks` (both matrices taken as checked counts);
    either is returned as is. Both have the methods the search uses (``split``, ``library_sizes``, ``normalised``,
    ``operator``, ``heldout_loss_per_rank``), so one implementation serves the counts wherever they live.
    """
    if is_dask_array(counts):
        from .dask import DaskRowBlocks

        return DaskRowBlocks(counts, checked=True)
    if isinstance(counts, np.ndarray) or sparse.issparse(counts):
        return BlockCounts(RowBlocks(canonical_csr(counts), checked=True))
    if isinstance(counts, RowBlocks):
        return BlockCounts(counts)
    return counts


def search_lowrank(
    counts: sparse.csr_matrix | RowBlocks | BlockCounts | DaskRowBlocks,
    *,
    max_rank: int,
    splits: Splits,
    rng: np.random.Generator,
    progress: bool = False,
    timings: Timings | None = None,
    groups: np.ndarray | None = None,
) -> RankLosses:
    """Held-out loss of every rank ``0..max_rank`` on every split.

    Each split's training half is factorised once; its held-out half scores all ranks (the held-out molecules of
    the cells of :meth:`~scn2s.select.Splits.scored_rows`: all of them up to ``scored_cells``). The counts are read
    block by block, once per split; the two halves of a split are held in memory (as sparse blocks whose
    non-zeros are at most those of the counts) while it is scored. ``groups``: each cell's batch code, to centre
    each cell on its batch's means (rank 0 is then the batches' means).

    Returns
    -------
    :class:`RankLosses`: per-entry ``losses`` ``(n_splits, max_rank + 1)`` and each split's
    ``singular_values`` ``(n_splits, max_rank)``.
    """
    blocks = as_row_blocks(counts)
    timings = Timings() if timings is None else timings
    n, g = blocks.shape
    train_frac, _ = splits.fractions
    losses = np.empty((len(splits), max_rank + 1))
    spectra = np.empty((len(splits), max_rank))
    svd_rngs = rng.spawn(len(splits))
    for i in tqdm(range(len(splits)), desc="rank search", disable=not progress):
        with timings.step("split"):
            train, heldout, library = blocks.split(splits, i)
        with timings.step("selection"):
            # normalise to the full-depth scale estimated from the training half alone (which may hold no molecule)
            expressed = library > 0
            target_sum = float(np.median(library[expressed])) / train_frac if expressed.any() else 1.0
            train = blocks.normalised(library, target_sum, train)
            factors = randomized_svd(_operator(blocks, train, groups), max_rank, rng=svd_rngs[i])
            del train
            cell_scale = np.sqrt(library / target_sum)
            keep = splits.scored_mask(i, n)
            losses[i] = blocks.heldout_loss_per_rank(
                factors, cell_scale, heldout, depth_ratio=splits.depth_ratio, keep=keep
            )
            losses[i] /= splits.n_scored(n) * g
            del heldout
        spectra[i] = factors.s
        logger.debug("split %d: best rank %d", i, int(np.argmin(losses[i])))
    return RankLosses(losses, spectra)


def _operator(blocks: BlockCounts | DaskRowBlocks, parts: list, groups: np.ndarray | None):
    """The data path's centred operator of ``parts``, on each batch's means with ``groups`` (in memory only)."""
    return blocks.operator(parts) if groups is None else blocks.operator(parts, groups)


def normalised_blocks(blocks: BlockCounts | DaskRowBlocks) -> NormalisedCounts:
    """The normalised square-root counts as blocks, each cell's library size and the normalisation target.

    Two passes over the counts (library sizes, then the normalised blocks), so that only the normalised copy
    is held.
    """
    library = blocks.library_sizes()
    expressed = library > 0
    target_sum = float(np.median(library[expressed])) if expressed.any() else 1.0
    normalised = blocks.normalised(library, target_sum)
    return NormalisedCounts(normalised, library, target_sum)


def fit_lowrank(
    counts: sparse.csr_matrix | RowBlocks | BlockCounts | DaskRowBlocks,
    *,
    max_rank: int = 50,
    rank: int | None = None,
    splits: Splits | None = None,
    depth_correction: bool = True,
    rng: np.random.Generator,
    progress: bool = False,
    timings: Timings | None = None,
    groups: np.ndarray | None = None,
) -> LowRankSelection:
    """Choose a rank by held-out molecules and fit it on the full counts.

    The rank minimising the mean held-out loss over splits is chosen at the training half's depth and, with
    ``depth_correction``, carried to full depth by :func:`scn2s.lowrank.model.transfer_rank`. With
    ``rank`` given, the search is skipped and that rank is fit.

    Parameters
    ----------
    counts
        Cells x genes counts: a CSR matrix, or :class:`~scn2s._blocks.RowBlocks` to read them block by block
        (an input on disk is streamed), or a dask array of CSR chunks (run on dask's workers).
    max_rank
        Largest rank searched; clamped to :func:`rank_limit` with a :class:`UserWarning`.
    rank
        Fixed rank instead of a search (``0``: gene means only); clamped like ``max_rank``.
    splits
        The splits whose held-out losses are averaged (default: three splits at ``p = 0.5`` drawn from
        ``rng``).
    depth_correction
        Carry the rank chosen at depth ``p N`` to depth ``N``.
    rng
        Source of randomness; each split and the final fit get their own stream.
    progress
        Show a progress bar.
    timings
        Records the seconds spent splitting (``"split"``), scoring ranks (``"selection"``) and in the
        full-depth fit (``"fit"``).
    groups
        Each cell's batch code (``0..b-1``, counts in memory): every cell is centred on its batch's gene means
        instead of the means of all cells, so that shifts between batches do not use up rank.
    """
    blocks = as_row_blocks(counts)
    timings = Timings() if timings is None else timings
    if rank is None:
        max_rank = clamp_rank("max_rank", max_rank, blocks.shape, stacklevel=3)
    else:
        rank = clamp_rank("rank", rank, blocks.shape, stacklevel=3)
    search_rng, fit_rng, split_rng = rng.spawn(3)
    if splits is None:
        splits = Splits.draw(split_rng, 3, 0.5)
    K = max_rank if rank is None else max(rank, 1)
    if rank is None:
        # the search first: its halves are freed before the full counts are normalised
        losses, spectra = search_lowrank(
            blocks, max_rank=K, splits=splits, rng=search_rng, progress=progress, timings=timings, groups=groups
        )
    with timings.step("fit"):
        normalised, library, target_sum = normalised_blocks(blocks)
        factors = randomized_svd(_operator(blocks, normalised, groups), K, rng=fit_rng)
        del normalised
    if rank is not None:
        return LowRankSelection(
            ranks=np.arange(0),
            losses=np.empty((0, 0)),
            split_singular_values=np.empty((0, 0)),
            split_rank=rank,
            rank=rank,
            noise_ratio=float("nan"),
            factors=factors,
            library_size=library,
            target_sum=target_sum,
            n_splits=len(splits),
        )
    split_rank = int(np.argmin(losses.mean(axis=0)))
    chosen, ratio = split_rank, float("nan")
    if depth_correction:
        train_frac, _ = splits.fractions
        chosen, ratio = transfer_rank(
            spectra.mean(axis=0), factors.s, split_rank, max_noise_ratio=1 / np.sqrt(train_frac)
        )
    if max(split_rank, chosen) >= K:
        logger.warning(
            "The chosen rank is the largest searched (%d); the optimum may lie beyond. Increase max_rank.", K
        )
    logger.info("rank %d chosen at depth p=%.2f, %d at full depth", split_rank, splits.p, chosen)
    return LowRankSelection(
        ranks=np.arange(K + 1),
        losses=losses,
        split_singular_values=spectra,
        split_rank=split_rank,
        rank=chosen,
        noise_ratio=ratio,
        factors=factors,
        library_size=library,
        target_sum=target_sum,
        n_splits=len(splits),
    )


def select(
    counts: sparse.csr_matrix | RowBlocks | DaskRowBlocks,
    *,
    splits: Splits,
    options: LowRankOptions,
    rng: np.random.Generator,
    progress: bool = False,
    timings: Timings | None = None,
    batches: Batches | None = None,
) -> LowRankSelection:
    """The family interface (:mod:`scn2s.select.family`): :func:`fit_lowrank` with ``options``.

    With ``batches``, the rank search runs twice from the same random state, with each cell centred on its batch's
    gene means and on the means of all cells; the variant with the lower held-out loss (at its chosen rank, over
    the splits) is fit, and its record says which won and by how much. With a fixed rank nothing is compared: the
    batches' means are used. ``batches.reference``: reconstruct every cell as if in that batch.
    """
    kwargs = {"splits": splits, "progress": progress, "timings": timings, **asdict(options)}
    if batches is None:
        return fit_lowrank(counts, rng=rng, **kwargs)
    with_rng = copy.deepcopy(rng)
    with_batches = fit_lowrank(counts, rng=with_rng, groups=batches.codes, **kwargs)
    record = {"key": batches.key, "levels": np.asarray(batches.levels, dtype=str), "compared": options.rank is None}
    chosen = with_batches
    if options.rank is None:
        without = fit_lowrank(counts, rng=rng, **kwargs)
        used = float(with_batches.heldout_losses.mean()) <= float(without.heldout_losses.mean())
        record |= {
            "loss_with": float(with_batches.heldout_losses.mean()),
            "loss_without": float(without.heldout_losses.mean()),
            "rank_with": with_batches.rank,
            "rank_without": without.rank,
        }
        chosen = with_batches if used else without
        logger.info(
            "per-batch means %s: held-out loss %.6g with, %.6g without",
            "used" if used else "not used",
            record["loss_with"],
            record["loss_without"],
        )
    record["used"] = chosen is with_batches
    reference = batches.reference if chosen is with_batches else None
    if batches.reference is not None:
        record["reference"] = str(batches.levels[batches.reference])
        record["transformed"] = reference is not None
    return replace(chosen, batches=record, reference=reference)
