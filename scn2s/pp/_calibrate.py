from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral, Real
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .._batches import read_batches
from .._memory import check_layer_fits
from .._names import METHODS, denoise_ownership
from .._sparse import canonical_csr, is_dask_array
from .._timing import Timings
from .._validate import (
    boundary_rng,
    check_fraction,
    check_integer,
    check_key,
    check_writable,
    describe_source,
    get_counts,
    versions,
    write_results,
)
from ..select import Splits
from ..select.calibrate import (
    CalibratedDenoiser,
    DenoiserSelection,
    PerBatch,
    candidate_label,
    expand_grid,
    run_denoiser,
    scale_to_library,
    search_denoiser,
)

if TYPE_CHECKING:
    from anndata import AnnData
    from scipy import sparse

    from .._batches import Batches

logger = logging.getLogger(__name__)


def calibrate(
    adata: AnnData,
    denoiser: Callable,
    grid: Mapping[str, Sequence] | Sequence[Mapping],
    *,
    layer: str | None = None,
    key_added: str = "denoised",
    batch_key: str | None = None,
    p: float = 0.5,
    n_splits: int = 3,
    depth_correction: bool = True,
    name: str | None = None,
    rng: int | np.random.Generator | np.random.RandomState | None = 0,
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Choose any denoiser's parameters by held-out molecules, and write its denoised counts.

    The counts are split by binomial thinning into a training half (fraction ``p``) and a held-out half,
    ``n_splits`` times, with the same splits as :func:`scn2s.pp.denoise` draws from the same ``rng``. Every
    candidate of ``grid`` is fit on each training half (``denoiser(training_half, **params)``), its values are
    brought to each cell's training library size, carried to the held-out depth and scored on the held-out half
    by the loss every family of :func:`~scn2s.pp.denoise` is scored by (:mod:`scn2s.loss`), so its losses are in
    the same currency as scn2s's own models'. The candidate with the lowest mean loss was chosen at depth
    ``p N``; with ``depth_correction``, a denoiser that has a ``transfer`` method (those of
    :mod:`scn2s.denoisers`) carries its parameters to the full depth ``N`` (kNN smoothing's ``k`` and MAGIC's
    ``t`` shrink with depth); a plain function's parameters are applied as chosen. The denoiser is then applied
    to the full counts and its values brought to each cell's library size.

    Everything is computed before anything is written: after an error (a failing or bad denoiser included)
    ``adata`` is as it was.

    Parameters
    ----------
    adata
        Annotated data with raw UMI counts (cells x genes), dense or sparse, in memory.
    denoiser
        ``denoiser(counts, **params)``: given a CSR count matrix (cells x genes, float64 copies of integer
        counts), returns a dense or sparse cells x genes array of finite non-negative values, expected counts or
        any per-cell scale (frequencies, normalised counts). For instance a function of :mod:`scn2s.denoisers`.
    grid
        The candidates: a dict of lists (every combination is tried), or a list of dicts of parameters.
    layer
        Layer holding the raw counts; ``None`` uses ``adata.X``.
    key_added
        Name of the layer and ``uns`` entry written.
    batch_key
        Column of ``adata.obs`` holding each cell's batch. Every candidate is then also scored with each batch's
        cells denoised alone (the denoiser called once per batch), on the same held-out molecules, and the way with
        the lower held-out loss, all cells together or each batch alone, is applied to the full counts: the
        record's ``batches`` says which and by how much. Checked as :func:`~scn2s.pp.denoise` checks it.
    p
        Fraction of the molecules in each split's training half.
    n_splits
        Number of independent splits whose held-out losses are averaged.
    depth_correction
        Carry the chosen parameters from depth ``p N`` to ``N`` with the denoiser's ``transfer`` method, if it
        has one.
    name
        Name of the denoiser in the record; default its ``name`` attribute, or its function name.
    rng
        Seed of the splits, as :func:`~scn2s.pp.denoise` takes it (the denoiser's own randomness is its own).
    progress
        Show a progress bar over the denoiser's calls.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` if ``copy=True``, with

    ``adata.layers[key_added]``
        ``float32`` denoised expected counts, cells x genes: the denoiser's output with the parameters applied,
        each cell on its own library size; zero for a cell without molecules.
    ``adata.uns[key_added]``
        In the schema of :func:`~scn2s.pp.denoise`'s record: ``method`` (the denoiser's name), ``params`` (the
        arguments, the grid included), ``best_params`` (the parameters applied to the full counts),
        ``selection`` with one entry under the denoiser's name: ``grid`` (``{parameter: values}`` when one
        parameter varies, else ``{"candidate": labels}``), ``labels`` and ``candidates`` (each candidate's
        parameters), ``loss`` (the loss's name), ``loss_mean``, ``loss_std`` and ``loss_per_split`` (held-out
        loss per entry, see :mod:`scn2s.loss`), ``nll_mean`` and ``nll_per_split`` (Poisson negative
        log-likelihood per held-out entry), ``seconds_per_split`` (each call's time), ``split_<parameter>``
        (chosen at depth ``p N``), ``<parameter>`` (applied to the full counts), ``chosen`` and ``applied`` (as
        labels), ``depth_ratio`` (full over training depth), ``transferred``, ``p``, ``n_splits`` and ``seed``, and
        with ``batch_key`` ``batches`` (``key``, ``levels``, ``how``, ``compared``, ``loss_with`` and ``chosen_with``
        for each batch alone, ``loss_without`` and ``chosen_without`` for all cells together, ``loss_mean_with`` and
        ``loss_mean_without`` per candidate, ``used``; the entry's other scores are those of the way used);
        ``version``; ``versions``; ``elapsed_seconds``; ``timings`` (``read``, ``split``, ``selection``,
        ``fit``, ``output``); ``output`` (``"layer"``). :func:`scn2s.pl.selection` plots it and the command
        line's summary reads it.

    Raises
    ------
    TypeError
        If ``denoiser`` is not callable, or the counts have a boolean or non-numeric dtype.
    KeyError
        If ``layer`` does not exist.
    ValueError
        If the counts are not raw UMI counts, hold no molecule, or have fewer than 2 cells; if an argument is
        out of range or ``grid`` holds no candidate; if the counts are on disk or in a dask array; or if the
        ``batch_key`` column has missing values or a batch of a single cell.
    KeyError
        If ``batch_key`` is not a column of ``adata.obs``.
    scn2s.select.calibrate.DenoiserError
        A :class:`ValueError` raised when the denoiser raises or returns a wrong shape, negative, NaN or
        infinite values; the message names the candidate's parameters. Nothing is written.
    MemoryError
        If the layer is larger than the memory available; raised before any work.

    Examples
    --------
    >>> import scn2s
    >>> adata = scn2s.datasets.simulate(300, 100, rng=0)
    >>> scn2s.pp.calibrate(adata, scn2s.denoisers.knn_smoothing, {"k": [1, 5, 10, 20]}, progress=False)
    >>> adata.uns["denoised"]["method"]
    'knn_smoothing'
    """
    start = time.perf_counter()
    if not callable(denoiser):
        msg = f"denoiser must be a function denoiser(counts, **params), got {type(denoiser).__name__}."
        raise TypeError(msg)
    check_key("key_added", key_added, layer=layer)
    check_fraction("p", p)
    check_integer("n_splits", n_splits, minimum=1)
    owner = denoise_ownership(key_added, layer)
    check_writable(adata, {"layers": [key_added], "uns": [key_added]}, **owner)  # before any work
    name = _name(denoiser, name)
    candidates = expand_grid(grid)
    source = describe_source(layer)
    if adata.isbacked and layer is None:
        msg = "calibrate needs the counts in memory; adata is backed. Read it with backed=None (the default)."
        raise ValueError(msg)
    batches = read_batches(adata, batch_key, None, output="layer", lazy=False, stacklevel=3)
    timings = Timings()
    with timings.step("read"):
        counts = get_counts(adata, layer)
        if is_dask_array(counts):
            msg = f"{source} is a dask array; calibrate needs the counts in memory (e.g. adata.X = adata.X.compute())."
            raise ValueError(msg)
        counts = canonical_csr(counts)  # never modifies the counts
    if not counts.data.any():
        msg = f"{source} holds no molecule (every count is zero); there is nothing to denoise."
        raise ValueError(msg)
    if counts.shape[0] < 2:
        msg = f"calibrate needs at least 2 cells; {source} has {counts.shape[0]}."
        raise ValueError(msg)
    check_layer_fits(adata.shape, key_added=key_added, alternatives="Calibrate on fewer cells or genes.")
    rng, seed = boundary_rng(rng)
    # the first stream of the generator, as denoise's: the same rng gives the same splits
    (split_rng,) = rng.spawn(1)
    splits = Splits.draw(split_rng, n_splits, p)
    counts = counts.astype(np.float64)  # what every call receives (a copy, see run_denoiser)
    logger.info("calibrating %s on %s: %d candidates x %d splits", name, source, len(candidates), n_splits)
    fit = calibrate_family(
        denoiser,
        counts,
        candidates,
        splits=splits,
        name=name,
        batches=batches,
        depth_correction=depth_correction,
        progress=progress,
        timings=timings,
    )
    with timings.step("output"):
        layer_values = fit.values.astype(np.float32)
    params = {
        "denoiser": name,
        "grid": _grid_params(grid),
        "layer": layer or "X",
        "p": p,
        "n_splits": n_splits,
        "depth_correction": depth_correction,
        "seed": seed,
        "output": "layer",
    }
    if batch_key is not None:
        params["batch_key"] = batch_key
    record = {
        "method": name,
        "params": params,
        "best_params": fit.best_params(),
        "selection": {name: fit.record() | {"p": p, "seed": seed, "scored_cells": splits.n_scored(adata.n_obs)}},
        "version": _version(),
        "versions": versions(),
        "elapsed_seconds": time.perf_counter() - start,
        "timings": timings.as_dict(),
        "output": "layer",
    }
    if copy:
        adata = adata.copy()
    write_results(adata, record=record, **owner, layers={key_added: layer_values})
    logger.info(
        "wrote layers[%r] (%s, %s) in %.1f s", key_added, name, candidate_label(fit.params), record["elapsed_seconds"]
    )
    return adata if copy else None


def calibrate_family(
    denoiser: Callable,
    counts: sparse.csr_matrix,
    candidates: Sequence[Mapping],
    *,
    splits: Splits,
    name: str,
    batches: Batches | None = None,
    depth_correction: bool = True,
    progress: bool = False,
    timings: Timings | None = None,
) -> CalibratedDenoiser:
    """Score ``denoiser``'s candidates on ``splits`` and apply the best to the full ``counts`` (float64 CSR).

    With ``batches``, every candidate is also scored with each batch's cells denoised alone
    (:class:`~scn2s.select.calibrate.PerBatch`), on the same splits; the way (all cells together, or each batch
    alone) whose best candidate has the lower held-out loss is applied, and the record's ``batches`` entry holds
    both. The choice is carried to the full depth by the denoiser's ``transfer`` rule, if it has one and
    ``depth_correction``; its estimate on the full counts is brought to each cell's library size. A denoiser's
    ``clear()`` (what the denoisers of :mod:`scn2s.denoisers` keep between calls) is called at the end.

    Raises
    ------
    scn2s.select.calibrate.DenoiserError
        If a call fails or returns a bad estimate.
    """
    timings = Timings() if timings is None else timings
    kwargs = {"splits": splits, "progress": progress, "timings": timings}
    try:
        fit = search_denoiser(denoiser, counts, candidates, name=name, **kwargs)
        alone = None
        if batches is not None:
            per_batch = PerBatch(denoiser, batches.codes, batches.levels)
            alone = search_denoiser(per_batch, counts, candidates, name=f"{name} per batch", **kwargs)
        used = alone is not None and alone.loss_mean[alone.best] < fit.loss_mean[fit.best]
        chosen = (alone if used else fit).best_params
        ratio = 1 / splits.fractions[0]
        transfer = getattr(denoiser, "transfer", None) if depth_correction else None
        applied = dict(transfer(chosen, ratio)) if callable(transfer) else chosen
        if applied != chosen:
            logger.info(
                "%s chosen at depth p=%g, %s at full depth",
                candidate_label(chosen),
                splits.fractions[0],
                candidate_label(applied),
            )
        with timings.step("fit"):
            estimate = run_denoiser(per_batch if used else denoiser, counts, applied, what="the full counts")
    finally:
        clear = getattr(denoiser, "clear", None)
        if callable(clear):
            clear()
    library = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    values = scale_to_library(estimate, library)
    entry = _selection_record(alone if used else fit, applied, ratio=ratio) | {"n_splits": len(splits)}
    if alone is not None:
        entry["batches"] = _batches_record(batches, joint=fit, alone=alone, used=used)
        logger.info(
            "%s: each batch alone %s the held-out loss (%.6g against %.6g for all cells together)",
            name,
            "lowers" if used else "does not lower",
            alone.loss_mean[alone.best],
            fit.loss_mean[fit.best],
        )
    params = {k: _storable(v) for k, v in applied.items()}
    return CalibratedDenoiser(family=name, search=alone if used else fit, params=params, values=values, entry=entry)


def _batches_record(batches: Batches, *, joint: DenoiserSelection, alone: DenoiserSelection, used: bool) -> dict:
    """``selection[name]["batches"]``: each batch alone (``with``) against all cells together (``without``).

    The best held-out loss and candidate each way, every candidate's mean loss both ways, and whether each batch
    alone was used.
    """
    return {
        "key": batches.key,
        "levels": np.asarray(batches.levels),
        "how": "each batch denoised alone",
        "compared": True,
        "loss_with": float(alone.loss_mean[alone.best]),
        "loss_without": float(joint.loss_mean[joint.best]),
        "chosen_with": candidate_label(alone.best_params),
        "chosen_without": candidate_label(joint.best_params),
        "loss_mean_with": alone.loss_mean,
        "loss_mean_without": joint.loss_mean,
        "used": bool(used),
    }


def _name(denoiser: Callable, name: str | None) -> str:
    if name is None:
        name = getattr(denoiser, "name", None) or getattr(denoiser, "__name__", None)
        if not isinstance(name, str) or not name.isidentifier():
            name = "denoiser"  # a lambda, a partial, a callable object
    if not isinstance(name, str) or not name or "/" in name:
        msg = f"name must be a non-empty string without '/', got {name!r}."
        raise ValueError(msg)
    return name


def _storable(value):
    """A parameter value as anndata writes it to ``.h5ad``: numbers and strings as they are, the rest as text."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, str)) or (isinstance(value, Real) and not isinstance(value, bool)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, Real) and not isinstance(v, bool) for v in value):
        return list(value)
    return repr(value)


def _values(values: list) -> np.ndarray:
    """Values of one parameter over candidates: numbers as a numeric array, anything else as strings."""
    if all(isinstance(v, Integral) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    if all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.float64)
    return np.asarray([v if isinstance(v, str) else repr(v) for v in values])


def _grid_params(grid) -> dict:
    """The grid argument as the record stores it: a dict grid as is, a list grid as a mapping by position."""
    if isinstance(grid, Mapping):
        return {name: _values([_storable(v) for v in values]) for name, values in grid.items()}
    return {str(i): {k: _storable(v) for k, v in candidate.items()} for i, candidate in enumerate(grid)}


def _selection_record(fit: DenoiserSelection, applied: dict, *, ratio: float) -> dict:
    """The selection entry: the grid as one named axis, the candidates' scores and the choice."""
    names = list(dict.fromkeys(name for candidate in fit.candidates for name in candidate))
    varying = [n for n in names if len({repr(c.get(n)) for c in fit.candidates}) > 1]
    if not varying and len(names) == 1:
        varying = names  # a single candidate of one parameter
    labels = [candidate_label(c) for c in fit.candidates]
    chosen = fit.candidates[fit.best]
    if len(varying) == 1 and all(varying[0] in c for c in fit.candidates):
        (axis,) = varying
        values = _values([c[axis] for c in fit.candidates])
        split_value, applied_value = _storable(chosen[axis]), _storable(applied.get(axis, chosen[axis]))
    else:
        axis = "candidate"
        values = np.asarray([candidate_label({n: c[n] for n in varying if n in c}) for c in fit.candidates])
        split_value = str(values[fit.best])
        applied_value = candidate_label({n: applied[n] for n in varying if n in applied})
    return {
        "loss": "heldout_sqrt_mse",
        "grid": {axis: values},
        "labels": np.asarray(labels),
        "candidates": {n: _values([_storable(c.get(n)) for c in fit.candidates]) for n in names},
        "loss_mean": fit.loss_mean,
        "loss_std": fit.loss_std,
        "loss_per_split": fit.losses,
        "nll_mean": fit.nll.mean(axis=0),
        "nll_per_split": fit.nll,
        "seconds_per_split": fit.seconds,
        f"split_{axis}": split_value,
        axis: applied_value,
        "chosen": labels[fit.best],
        "applied": candidate_label(applied),
        "depth_ratio": ratio,
        "transferred": applied != chosen,
    }


def _version() -> str:
    from .. import __version__

    return __version__


class ExtraDenoiser(NamedTuple):
    """A denoiser that :func:`scn2s.pp.denoise` calibrates beside its own families (``denoisers=``)."""

    name: str
    denoiser: Callable
    candidates: list[dict]
    grid: dict  # as the record stores it


def extra_denoisers(denoisers: Mapping | None, *, output: str, lazy: bool) -> list[ExtraDenoiser]:
    """The ``denoisers`` argument of :func:`scn2s.pp.denoise`, checked before any work.

    A mapping of names to a denoiser (its defaults, one candidate) or a ``(denoiser, grid)`` pair. Each name becomes
    the family's key in the record and cannot be one of scn2s's own families.
    """
    if denoisers is None:
        return []
    if not isinstance(denoisers, Mapping):
        msg = (
            "denoisers must be a mapping of names to a denoiser or a (denoiser, grid) pair, e.g. "
            f'{{"magic": (scn2s.denoisers.magic, {{"t": [1, 2, 3]}})}}; got {type(denoisers).__name__}.'
        )
        raise TypeError(msg)
    if denoisers and output != "layer":
        msg = f'denoisers= compares denoisers by their layers and needs output="layer", got output={output!r}.'
        raise ValueError(msg)
    if denoisers and lazy:
        msg = "denoisers= needs the counts in memory; they are a dask array, which only the low-rank family reads."
        raise ValueError(msg)
    out = []
    for name, spec in denoisers.items():
        if not isinstance(name, str) or not name.isidentifier() or name in METHODS:
            msg = (
                f"denoisers: {name!r} cannot name a denoiser; use an identifier other than scn2s's own families "
                f"{METHODS}."
            )
            raise ValueError(msg)
        denoiser, grid = spec if isinstance(spec, tuple) and len(spec) == 2 else (spec, [{}])
        if not callable(denoiser):
            msg = (
                f"denoisers[{name!r}] must be a function denoiser(counts, **params) or a (denoiser, grid) pair, "
                f"got {spec!r}."
            )
            raise TypeError(msg)
        out.append(ExtraDenoiser(name, denoiser, expand_grid(grid), _grid_params(grid)))
    return out


def calibrate_extras(
    extras: Sequence[ExtraDenoiser],
    counts: sparse.csr_matrix,
    *,
    splits: Splits,
    batches: Batches | None,
    progress: bool,
    timings: Timings,
) -> list[CalibratedDenoiser]:
    """Calibrate each of ``denoise``'s extra denoisers on ``counts`` (the modelled genes) and ``splits``.

    With ``batches``, each is also scored with each batch alone (:func:`calibrate_family`).

    ``timings`` gets each one's total under its name and its steps as ``<name>.split``, ``.selection``, ``.fit``.
    """
    counts = counts.astype(np.float64)  # what every call receives (a copy, see run_denoiser)
    fits = []
    for extra in extras:
        steps = Timings()
        with timings.step(extra.name):
            fit = calibrate_family(
                extra.denoiser,
                counts,
                extra.candidates,
                splits=splits,
                name=extra.name,
                batches=batches,
                progress=progress,
                timings=steps,
            )
        fits.append(fit)
        for step, seconds in steps.as_dict().items():
            timings.add(f"{extra.name}.{step}", seconds)
    return fits
