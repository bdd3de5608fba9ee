"""Held-out scoring of any denoiser's parameters (array level).

A denoiser is a function ``denoiser(counts, **params)`` of a CSR count matrix (cells x genes) that returns a
cells x genes array of non-negative values, on any scale per cell. Each candidate (a set of ``params``) is fit
on the training half of every split and scored on the held-out half by the loss every family of
:func:`scn2s.pp.denoise` is scored by (:mod:`scn2s.loss`): its values are brought to each cell's training
library size, carried to the held-out depth (``depth_ratio``) and compared, as expected square roots, with the
square roots of the held-out counts. The held-out molecules are never passed to the denoiser.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from .._timing import Timings
from ..loss import heldout_sqrt_mse, poisson_nll, sqrt_poisson_mean
from .family import SplitLosses
from .splits import Splits

__all__ = [
    "CalibratedDenoiser",
    "DenoiserError",
    "DenoiserSelection",
    "PerBatch",
    "candidate_label",
    "check_estimate",
    "expand_grid",
    "run_denoiser",
    "scale_to_library",
    "score_estimate",
    "search_denoiser",
]

logger = logging.getLogger(__name__)


class DenoiserError(ValueError):
    """A denoiser failed or returned something other than a cells x genes array of non-negative values."""


def expand_grid(grid: Mapping[str, Sequence] | Sequence[Mapping]) -> list[dict]:
    """The candidates of ``grid``: every combination of a dict of lists, or the dicts of a list as they are.

    Raises
    ------
    ValueError
        If the grid is empty, a value of a dict grid is not a non-empty list, or a candidate is not a dict of
        parameters named by strings.
    """
    if isinstance(grid, Mapping):
        if not grid:
            msg = "grid holds no candidate; give at least one parameter and its values, or [{}] for the defaults."
            raise ValueError(msg)
        names = list(grid)
        values = []
        for name in names:
            options = grid[name]
            if isinstance(options, (str, bytes)) or not isinstance(options, Sequence | np.ndarray) or not len(options):
                msg = f"grid[{name!r}] must be a non-empty list of values to try, got {options!r}."
                raise ValueError(msg)
            values.append([_plain(v) for v in options])
        candidates = [dict(zip(names, combination, strict=True)) for combination in itertools.product(*values)]
    elif isinstance(grid, Sequence) and not isinstance(grid, (str, bytes)):
        candidates = []
        for candidate in grid:
            if not isinstance(candidate, Mapping):
                msg = f"A list grid holds dicts of parameters, one per candidate; got {candidate!r}."
                raise ValueError(msg)
            candidates.append({name: _plain(value) for name, value in candidate.items()})
    else:
        msg = f"grid must be a dict of lists (every combination is tried) or a list of dicts, got {grid!r}."
        raise ValueError(msg)
    if not candidates:
        msg = "grid holds no candidate; give at least one set of parameters."
        raise ValueError(msg)
    for candidate in candidates:
        if not all(isinstance(name, str) for name in candidate):
            msg = f"Parameter names must be strings, got {list(candidate)}."
            raise ValueError(msg)
    return candidates


def _plain(value):
    """A numpy scalar as the Python scalar it holds (so records and labels read ``3``, not ``np.int64(3)``)."""
    return value.item() if isinstance(value, np.generic) else value


def candidate_label(params: Mapping) -> str:
    """``"k=15, n_pcs=30"``: a candidate's parameters as one would pass them (``"defaults"`` when none)."""
    return ", ".join(f"{name}={value!r}" for name, value in params.items()) or "defaults"


def run_denoiser(denoiser: Callable, counts: sparse.csr_matrix, params: Mapping, *, what: str) -> np.ndarray:
    """``denoiser(counts, **params)`` checked by :func:`check_estimate`, as a dense float64 array.

    ``what`` says which counts the call was on (for the messages). The denoiser gets a copy of ``counts``, so
    that a denoiser that writes into its input cannot alter the splits.

    Raises
    ------
    DenoiserError
        If the denoiser raises (the error is chained) or returns a bad estimate; the message names the
        candidate's parameters.
    """
    try:
        estimate = denoiser(counts.copy(), **params)
    except Exception as error:
        msg = (
            f"The denoiser raised {type(error).__name__} for the candidate {candidate_label(params)} on {what}: {error}"
        )
        raise DenoiserError(msg) from error
    return check_estimate(estimate, counts.shape, params)


def check_estimate(estimate, shape: tuple[int, int], params: Mapping) -> np.ndarray:
    """``estimate`` as a dense float64 array, or a :class:`DenoiserError` naming the candidate's parameters.

    A denoiser must return a dense or sparse cells x genes array (an AnnData's ``X`` is taken) of finite
    non-negative numbers.
    """
    label = candidate_label(params)
    if hasattr(estimate, "X") and hasattr(estimate, "obs_names"):  # an AnnData
        estimate = estimate.X
    if sparse.issparse(estimate):
        estimate = estimate.toarray()
    try:
        estimate = np.asarray(estimate, dtype=np.float64)
    except (TypeError, ValueError) as error:
        msg = f"The denoiser returned {type(estimate).__name__} for the candidate {label}, not an array of numbers."
        raise DenoiserError(msg) from error
    if estimate.shape != tuple(shape):
        msg = (
            f"The denoiser returned an array of shape {estimate.shape} for the candidate {label}; expected "
            f"{tuple(shape)} (cells x genes, the shape of the counts it was given)."
        )
        raise DenoiserError(msg)
    finite = np.isfinite(estimate)
    if not finite.all():
        n = int(estimate.size - np.count_nonzero(finite))
        msg = (
            f"The denoiser returned {n} NaN or infinite values for the candidate {label}; every value must be a "
            "finite non-negative number."
        )
        raise DenoiserError(msg)
    negative = estimate < 0
    if negative.any():
        msg = (
            f"The denoiser returned {int(np.count_nonzero(negative))} negative values (lowest "
            f"{float(estimate.min()):.3g}) for the candidate {label}; it must return non-negative expected counts "
            "or values on any non-negative scale. Clip them (np.clip(values, 0, None)) if they are noise."
        )
        raise DenoiserError(msg)
    return estimate


@dataclass(frozen=True)
class PerBatch:
    """``denoiser`` applied to each batch's cells alone, as one denoiser of all the cells.

    ``groups`` holds each cell's batch (codes ``0..n-1``), ``levels`` their names (for the messages). Each call runs
    ``denoiser(counts[cells of batch b], **params)`` for every batch and puts the estimates back in the cells' order;
    each is checked as :func:`check_estimate` checks a whole estimate. The estimates stay on the denoiser's own
    scale per cell, as they would for all cells at once.
    """

    denoiser: Callable
    groups: np.ndarray
    levels: Sequence[str]

    def __call__(self, counts: sparse.csr_matrix, **params) -> np.ndarray:
        """The estimates of every batch's cells, each from those cells alone (cells x genes, float64)."""
        out = np.empty(counts.shape)
        for code, level in enumerate(self.levels):
            cells = np.flatnonzero(self.groups == code)
            try:
                estimate = self.denoiser(counts[cells], **params)
            except Exception as error:
                msg = f"on the {len(cells)} cells of batch {level!r} alone: {type(error).__name__}: {error}"
                raise DenoiserError(msg) from error
            out[cells] = check_estimate(estimate, (len(cells), counts.shape[1]), params)
        return out


def scale_to_library(estimate: np.ndarray, library: np.ndarray) -> np.ndarray:
    """Each row of ``estimate`` rescaled to sum to the cell's ``library`` (0 for a row that sums to 0), in place."""
    total = estimate.sum(axis=1)
    estimate *= np.divide(library, total, out=np.zeros_like(total), where=total > 0)[:, None]
    return estimate


def score_estimate(
    estimate: np.ndarray,
    train: sparse.csr_matrix,
    heldout: sparse.csr_matrix,
    depth_ratio: float,
    *,
    rows: np.ndarray | None = None,
) -> tuple[float, float]:
    """Held-out loss and Poisson NLL per entry of an estimate made from ``train``.

    The estimate is brought to each cell's training library size (in place) and multiplied by ``depth_ratio``,
    the expected depth of the held-out half over the training half: the predicted rate of each held-out count.
    The loss is :func:`scn2s.loss.heldout_sqrt_mse` of ``m(rate)`` (the depth conversion of every family); the
    NLL is :func:`scn2s.loss.poisson_nll` of the held-out counts. ``rows``: only these cells score
    (:meth:`scn2s.select.Splits.scored_rows`; ``None``: all).
    """
    if rows is not None:
        estimate, train, heldout = estimate[rows], train[rows], heldout[rows]
    library = np.asarray(train.sum(axis=1), dtype=np.float64).ravel()
    rates = scale_to_library(estimate, library)
    if depth_ratio != 1.0:
        rates *= depth_ratio
    loss = heldout_sqrt_mse(heldout, sqrt_poisson_mean(rates)) / rates.size
    return loss, poisson_nll(heldout, rates)


@dataclass
class DenoiserSelection(SplitLosses):
    """Outcome of a search over a denoiser's parameters: the held-out scores of every candidate."""

    name: str
    candidates: list[dict]
    losses: np.ndarray  # (n_splits, n_candidates), mean per entry
    nll: np.ndarray  # (n_splits, n_candidates), Poisson NLL per entry
    seconds: np.ndarray  # (n_splits, n_candidates), time of each call of the denoiser
    best: int

    @property
    def best_params(self) -> dict:
        """The parameters of the candidate with the lowest mean held-out loss."""
        return dict(self.candidates[self.best])


@dataclass(frozen=True)
class CalibratedDenoiser:
    """A denoiser calibrated on the splits, as a family of :func:`scn2s.pp.denoise` (:class:`~.family.Selection`).

    ``search`` scored its candidates on the held-out molecules of the splits every family is scored on; ``params``
    (the choice, carried to the full depth by the denoiser's own rule if it has one) was then applied to the full
    counts, giving ``values``: expected counts, each cell on its own library size (cells x modelled genes).
    """

    family: str
    search: DenoiserSelection
    params: dict
    values: np.ndarray
    entry: dict
    has_posterior: ClassVar[bool] = False

    @property
    def heldout_losses(self) -> np.ndarray:
        """Held-out loss of the chosen candidate, per split."""
        return self.search.losses[:, self.search.best]

    def reconstruct(self, rows: slice) -> np.ndarray:
        """The denoised expected counts of the cells ``rows``."""
        return self.values[rows]

    def embedding(self) -> None:
        """A denoiser offers no cell embedding."""
        return

    def best_params(self) -> dict:
        """The parameters applied to the full counts."""
        return dict(self.params)

    def record(self) -> dict:
        """The selection entry (the calibration's schema: :func:`scn2s.pp.calibrate`)."""
        return dict(self.entry)


def search_denoiser(
    denoiser: Callable,
    counts: sparse.csr_matrix,
    candidates: Sequence[Mapping],
    *,
    splits: Splits,
    name: str = "denoiser",
    progress: bool = False,
    timings: Timings | None = None,
) -> DenoiserSelection:
    """Score every candidate on every split: fit on the training half, score on the held-out half.

    Parameters
    ----------
    denoiser
        ``denoiser(counts, **params)``, see the module docstring.
    counts
        Cells x genes counts (CSR).
    candidates
        The parameter sets to score (:func:`expand_grid`).
    splits
        The splits (the same seeds as :func:`scn2s.pp.denoise` draws from the same ``rng``).
    name
        Name of the denoiser, for the progress bar and the record.
    progress
        Show a progress bar over the denoiser's calls.
    timings
        Records the seconds spent splitting (``"split"``) and in the candidates (``"selection"``).

    Raises
    ------
    DenoiserError
        If a call fails or returns a bad estimate (:func:`run_denoiser`).
    """
    timings = Timings() if timings is None else timings
    shape = (len(splits), len(candidates))
    losses, nll, seconds = np.empty(shape), np.empty(shape), np.empty(shape)
    bar = tqdm(total=shape[0] * shape[1], desc=f"calibrating {name}", disable=not progress)
    with bar:
        for i in range(len(splits)):
            with timings.step("split"):
                train, heldout = splits.get(i, counts)
            scored = splits.scored_rows(i, counts.shape[0])
            for j, params in enumerate(candidates):
                with timings.step("selection"):
                    watch = Timings()
                    with watch.step("call"):
                        estimate = run_denoiser(denoiser, train, params, what=f"the training half of split {i}")
                    seconds[i, j] = watch.seconds["call"]
                    losses[i, j], nll[i, j] = score_estimate(estimate, train, heldout, splits.depth_ratio, rows=scored)
                del estimate
                logger.debug("%s split %d, %s: loss %.6g", name, i, candidate_label(params), losses[i, j])
                bar.update()
    best = int(np.argmin(losses.mean(axis=0)))
    logger.info("%s: %s has the lowest held-out loss", name, candidate_label(candidates[best]))
    return DenoiserSelection(
        name=name,
        candidates=[dict(c) for c in candidates],
        losses=losses,
        nll=nll,
        seconds=seconds,
        best=best,
    )
