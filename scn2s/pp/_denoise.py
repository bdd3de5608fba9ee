from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import numpy as np

from .. import autoencoder, lowrank
from .._batches import read_batches
from .._memory import check_layer_fits
from .._names import METHODS, OUTPUTS, denoise_keys, denoise_ownership
from .._timing import Timings
from .._validate import (
    boundary_rng,
    check_fraction,
    check_integer,
    check_key,
    check_sample_ratio,
    check_writable,
    describe_source,
    gene_mask,
    get_counts,
    versions,
    write_results,
)
from ..select import Splits, compare_families
from ._calibrate import calibrate_extras, extra_denoisers
from ._counts import check_modelled, is_lazy, read_counts
from ._integrate import check_integrate, integrated_entries
from ._output import check_uncertainty, output_entries

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)


def denoise(
    adata: AnnData,
    *,
    method: Literal["auto", "lowrank", "autoencoder"] = "auto",
    layer: str | None = None,
    key_added: str = "denoised",
    mask_var: str | np.ndarray | None = None,
    batch_key: str | None = None,
    transform_batch: str | None = None,
    integrate: bool = False,
    p: float = 0.5,
    n_splits: int = 3,
    sample_ratio: float | None = None,
    lowrank_kwds: Mapping | None = None,
    autoencoder_kwds: Mapping | None = None,
    denoisers: Mapping | None = None,
    device: str | None = None,
    output: Literal["layer", "factors"] = "layer",
    uncertainty: bool = False,
    rng: int | np.random.Generator | np.random.RandomState | None = 0,
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Denoise UMI counts with a model chosen by held-out molecules.

    The counts are split by binomial thinning into a training half (fraction ``p``) and a held-out half,
    ``n_splits`` times, and every candidate of every family is scored by the same loss (:mod:`scn2s.loss`)
    on the same held-out molecules, which the candidate never sees. ``"lowrank"`` searches the rank of a
    truncated SVD of the normalised square-root counts, ``"autoencoder"`` the settings of a count autoencoder
    trained across molecules, ``"auto"`` both, and writes the family with the lower held-out loss. The choice is
    fit on the full counts. The user guide (``docs/usage.rst``) explains each family, counts on disk
    (``backed="r"``) or in a dask array, training under ``torchrun``, and every entry of the record.

    Everything is computed before anything is written, and the writes are all or nothing: after an error or
    an interrupt ``adata`` is as it was.

    Parameters
    ----------
    adata
        Annotated data with raw UMI counts (cells x genes), dense or sparse; never modified except for the
        keys written.
    method
        Denoising family.
    layer
        Layer holding the raw counts; ``None`` uses ``adata.X``.
    key_added
        Name of the layer and ``uns`` entry written.
    mask_var
        Genes to model: a boolean array, or the name of a boolean ``var`` column such as
        ``"highly_variable"``. ``None`` models every gene. Genes outside the mask keep their raw counts.
    batch_key
        Column of ``adata.obs`` holding each cell's batch (sample, donor, chemistry). The low-rank family then
        centres each cell on its batch's gene means, so that shifts between batches do not use up rank; the
        autoencoder's best candidate is also trained with the batch as a covariate (its decoder learns each batch's
        log efficiency per gene, and its encoder sees the counts divided by them). Each family compares this with
        its model without the batches on the same held-out molecules: the record
        (``selection[family]["batches"]``) says which won and by how much, and the winner is written. The layer
        stays denoising, not integration: each cell keeps its own batch's expression. Needs ``output="layer"`` and
        counts in memory.
    transform_batch
        With ``batch_key``: a batch in which every cell is written as if measured (scVI's name): the low-rank family
        centres every cell on that batch's means, the autoencoder decodes every cell's code in that batch and moves
        the cell's output by the ratio. Applied only where the batches won.
    integrate
        With ``batch_key``: also write ``obsm[f"X_{key_added}_integrated"]``, the cells' embedding with the batches
        removed by Harmony (:func:`scn2s.integrate.harmonize`), for ``sc.pp.neighbors``, UMAP and clustering across
        batches. The layer and ``obsm[f"X_{key_added}"]`` are unchanged.
    p
        Fraction of the molecules in each split's training half.
    n_splits
        Number of independent splits whose held-out losses are averaged.
    sample_ratio
        Fraction of the library's molecules observed, for the finite-pool overlap correction
        (:func:`scn2s.split.overlap_probabilities`). ``None``: plain thinning.
    lowrank_kwds
        Options of the low-rank family (:class:`~scn2s.lowrank.LowRankOptions`): ``max_rank`` (largest rank
        searched, 50), ``rank`` (fit this rank without a search, ``method="lowrank"`` only), ``depth_correction``
        (carry the rank chosen at depth ``p N`` to the full depth, ``True``).
    autoencoder_kwds
        Options of the autoencoder family (:class:`~scn2s.autoencoder.AutoencoderOptions`): ``configs`` (the
        candidates, dicts of :class:`~scn2s.autoencoder.train.TrainConfig` fields; default
        :data:`scn2s.autoencoder.DEFAULT_CONFIGS`), ``n_splits`` (splits the candidates are trained on, 1).
    denoisers
        Other denoisers to calibrate and compare beside the families of ``method``, on the same splits and by the
        same loss: a mapping of names to a denoiser ``denoiser(counts, **params)`` (see :func:`scn2s.pp.calibrate`;
        run at its defaults) or to a ``(denoiser, grid)`` pair, e.g. ``{"magic": (scn2s.denoisers.magic, {"t":
        [1, 2, 3]})}``. Each gets the counts of the modelled genes (``mask_var``) and is scored on every split
        (``n_splits``), with ``batch_key`` also with each batch's cells denoised alone; if one has the lowest
        held-out loss, its chosen parameters are applied to the full counts and written (no embedding).
        ``output="layer"`` and counts in memory only.
    device
        Torch device of the autoencoder; ``None`` picks CUDA when available.
    output
        ``"layer"``: the denoised values as a dense ``float32`` layer (checked against the memory available
        before any work; a lazy dask array for counts in one). ``"factors"`` (``method="lowrank"`` only): the
        low-rank model instead, from which :func:`scn2s.tl.reconstruct` computes any slice of the layer and
        :func:`scn2s.tl.write_denoised` writes it chunk by chunk.
    uncertainty
        Also write ``layers[f"{key_added}_sd"]``, the posterior standard deviation of every denoised value under the
        autoencoder's gamma-Poisson posterior, widened by the spread of the thinned replicas' posterior means
        (:func:`scn2s.autoencoder.train.predict_posterior`). ``method="autoencoder"`` or ``"auto"``,
        ``output="layer"``; a :class:`UserWarning`, and no such layer, if the family or candidate chosen has no
        posterior. The intervals it gives are too narrow on simulations (the README's "Uncertainty").
    rng
        Integer seed (any size), ``None``, :class:`numpy.random.Generator` or :class:`numpy.random.RandomState`;
        the run is seeded by one integer (drawn from a generator, which moves on), recorded in ``params["seed"]``:
        the same seed gives the same output.
    progress
        Show progress bars.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` if ``copy=True``, with

    ``adata.layers[key_added]``
        With ``output="layer"``: ``float32`` denoised expected counts, cells x genes, each cell on its own
        library size. Normalise and log it as you would counts.
    ``adata.layers[f"{key_added}_sd"]``
        With ``uncertainty=True``: ``float32`` posterior standard deviations of the layer's values (``NaN`` outside
        ``mask_var``).
    ``adata.obsm[f"X_{key_added}"]``
        Whatever the output, the chosen family's cell embedding, for ``sc.pp.neighbors(adata,
        use_rep=f"X_{key_added}")``, UMAP and clustering: the low-rank cell scores ``U[:, :rank] * s[:rank]``, or
        the autoencoder's code (bottleneck) of each cell's counts.
    ``adata.obsm[f"X_{key_added}_integrated"]``
        With ``integrate=True``: that embedding with the batches removed (Harmony), for ``use_rep`` across batches.
    ``adata.varm[f"{key_added}_loadings"]``
        Low-rank family: the genes' loadings (zero outside ``mask_var``).
    ``adata.var``, ``adata.obs``
        With ``output="factors"``: the genes' means and modelled flags (``{key_added}_mean``,
        ``{key_added}_modelled``) and the cells' library sizes and per-cell scales (``{key_added}_library_size``,
        ``{key_added}_scale``).
    ``adata.uns[key_added]``
        The record: ``method`` (the family written), ``params``, ``best_params``, ``selection`` (per family
        searched; :func:`scn2s.pl.selection` plots it), ``comparison`` (``method="auto"``), ``version``,
        ``versions``, ``elapsed_seconds``, ``timings`` (seconds per step, with the autoencoder search's per
        candidate: ``autoencoder.<label>.steps``, ``.heldout``, ``.scoring``, and ``autoencoder.refit``),
        ``integration`` (with ``integrate=True``: the correction's method, clusters, rounds and objective), ``keys``
        (the keys written, by attribute: ``layers``, ``obsm``, ``varm``, ``obs``, ``var``), ``output`` and, with
        ``output="factors"``, ``factors``.

    Raises
    ------
    MemoryError
        With ``output="layer"``, if the layer is larger than the memory available; raised before any work.
    TypeError
        If the counts have a boolean or non-numeric dtype, or ``layer`` is not a string.
    KeyError
        If ``layer`` or the ``mask_var`` column does not exist.
    ValueError
        If the counts are not raw UMI counts or hold no molecule; if a key this run would write exists and no
        earlier scn2s record under ``key_added`` lists it (raised before any work, naming the key); if ``adata`` has
        fewer than 2 cells; if an argument is out of range or a ``*_kwds`` key unknown; if ``output="factors"`` or
        dask counts come with a method other than ``"lowrank"``, ``uncertainty=True`` with ``method="lowrank"``
        or ``output="factors"``, or ``integrate=True`` without ``batch_key``. Each message says what to do.
    """
    start = time.perf_counter()
    lowrank_options = lowrank.LowRankOptions.from_kwds(lowrank_kwds)
    autoencoder_options = autoencoder.AutoencoderOptions.from_kwds(autoencoder_kwds)
    _check_arguments(method, output, lowrank_options.rank, key_added=key_added, layer=layer, p=p, n_splits=n_splits)
    check_sample_ratio(sample_ratio, held_out=True)
    check_uncertainty(uncertainty, method, output)
    check_integrate(integrate, batch_key, output)
    owner = denoise_ownership(key_added, layer)
    planned = denoise_keys(key_added, output, method=method, uncertainty=uncertainty, integrate=integrate)
    check_writable(adata, planned, **owner)  # before any work: write only keys scn2s owns
    lazy = is_lazy(adata, layer, method)
    batches = read_batches(adata, batch_key, transform_batch, output=output, lazy=lazy, stacklevel=3)
    if batches is None and method != "lowrank" and autoencoder_options.needs_batches:
        msg = "autoencoder setting batch_covariate=True needs each cell's batch: pass batch_key (an obs column)."
        raise ValueError(msg)
    extras = extra_denoisers(denoisers, output=output, lazy=lazy)
    if output == "layer" and not lazy:
        check_layer_fits(adata.shape, key_added=key_added)  # before any work
    rng, seed = boundary_rng(rng)  # one integer seed reproduces the run: the record holds it
    requested, timings = method, Timings()
    split_rng, lowrank_rng, autoencoder_rng, integrate_rng = rng.spawn(4)
    splits = Splits.draw(split_rng, n_splits, p, sample_ratio)
    counts = get_counts(adata, layer)
    genes = gene_mask(adata, mask_var)
    with timings.step("read"):
        data = read_counts(adata, counts, genes, layer=layer, method=method, lazy=lazy)
    source = describe_source(layer)
    method, lowrank_options = check_modelled(data.blocks.shape, method, lowrank_options, source=source, stacklevel=3)
    logger.info("denoising %s: %d cells x %d genes", source, *data.blocks.shape)
    fits = []
    if method in ("auto", "lowrank"):
        kwargs = {"splits": splits, "rng": lowrank_rng, "progress": progress, "timings": timings, "batches": batches}
        fits.append(lowrank.select(data.blocks, options=lowrank_options, **kwargs))
    if method in ("auto", "autoencoder"):
        with timings.step("autoencoder"):
            kwargs = {
                "splits": splits,
                "device": device,
                "rng": autoencoder_rng,
                "progress": progress,
                "timings": timings,
                "batches": batches,
            }
            fits.append(autoencoder.select(data.modelled, options=autoencoder_options, **kwargs))
    if extras:
        modelled = data.modelled if data.modelled is not None else data.blocks.to_csr()
        fits += calibrate_extras(extras, modelled, splits=splits, batches=batches, progress=progress, timings=timings)
    comparison = compare_families(fits) if len(fits) > 1 else None
    fit = next(f for f in fits if f.family == (comparison["chosen"] if comparison else method))
    with timings.step("output"):
        entries, output_record = output_entries(
            fit,
            output,
            data.counts,
            genes,
            key_added=key_added,
            lazy=data.lazy,
            uncertainty=uncertainty,
            progress=progress,
        )
    if integrate:
        with timings.step("integrate"):
            integrated, output_record["integration"] = integrated_entries(
                entries, batches, key_added=key_added, rng=integrate_rng
            )
        entries["obsm"] = entries.get("obsm", {}) | integrated
    options = {"lowrank_options": lowrank_options, "autoencoder_options": autoencoder_options}
    params = _params(requested, layer, mask_var, p, n_splits, sample_ratio, device, output, seed, **options)
    params["uncertainty"] = uncertainty
    if integrate:
        params["integrate"] = True
    if extras:
        params["denoisers"] = {extra.name: extra.grid for extra in extras}
    if batch_key is not None:
        params["batch_key"] = batch_key
    if transform_batch is not None:
        params["transform_batch"] = str(transform_batch)
    scored = splits.n_scored(data.blocks.shape[0])  # the cells whose held-out molecules scored each split
    record = {
        "method": fit.family,
        "params": params,
        "best_params": fit.best_params(),
        "selection": {f.family: f.record() | {"p": p, "seed": seed, "scored_cells": scored} for f in fits},
        "version": _version(),
        "versions": versions(),
        "elapsed_seconds": time.perf_counter() - start,
        "timings": timings.as_dict(),
    }
    if comparison is not None:
        record["comparison"] = comparison
    record |= output_record
    if copy:
        adata = adata.copy()
    write_results(adata, record=record, **owner, **entries)
    where = f"layers[{key_added!r}]" if output == "layer" else f"the factors obsm['X_{key_added}'] and others"
    logger.info("wrote %s (%s, %s) in %.1f s", where, fit.family, record["best_params"], record["elapsed_seconds"])
    return adata if copy else None


def _check_arguments(
    method: str, output: str, rank: int | None, *, key_added: str, layer: str | None, p: float, n_splits: int
) -> None:
    """Raise if an argument of :func:`denoise` is out of range or does not go with ``method``."""
    if method not in METHODS:
        msg = f"method must be one of {METHODS}, got {method!r}."
        raise ValueError(msg)
    if rank is not None and method != "lowrank":
        msg = (
            f'lowrank_kwds={{"rank": ...}} fixes the low-rank model and needs method="lowrank", got method={method!r}.'
        )
        raise ValueError(msg)
    if output not in OUTPUTS:
        msg = f"output must be one of {OUTPUTS}, got {output!r}."
        raise ValueError(msg)
    if output == "factors" and method != "lowrank":
        msg = (
            f'output="factors" stores the factors of a low-rank model and needs method="lowrank", got '
            f'method={method!r}; the autoencoder has no such factors and writes a layer (output="layer").'
        )
        raise ValueError(msg)
    check_key("key_added", key_added, layer=layer)
    check_fraction("p", p)
    check_integer("n_splits", n_splits, minimum=1)


def _params(
    method: str,
    layer: str | None,
    mask_var,
    p: float,
    n_splits: int,
    sample_ratio: float | None,
    device: str | None,
    output: str,
    seed: int | str,
    *,
    lowrank_options: lowrank.LowRankOptions,
    autoencoder_options: autoencoder.AutoencoderOptions,
) -> dict:
    """The arguments of :func:`denoise` as recorded in ``uns[key_added]["params"]`` (the options flat)."""
    params = {
        "method": method,
        "autoencoder_splits": autoencoder_options.n_splits,
        "layer": layer or "X",
        "mask_var": mask_var if isinstance(mask_var, str) else ("custom" if mask_var is not None else "all"),
        "p": p,
        "n_splits": n_splits,
        "max_rank": lowrank_options.max_rank,
        "depth_correction": lowrank_options.depth_correction,
        "seed": seed,
        "output": output,
    }
    if lowrank_options.rank is not None:
        params["rank"] = lowrank_options.rank
    if sample_ratio is not None:
        params["sample_ratio"] = sample_ratio
    if device is not None:
        params["device"] = device
    if autoencoder_options.configs is not None:
        # a mapping by position, of lists for tuples: what anndata can write to .h5ad
        params["autoencoder_configs"] = {
            str(i): {k: list(v) if isinstance(v, tuple) else v for k, v in c.items()}
            for i, c in enumerate(autoencoder_options.configs)
        }
    return params


def _version() -> str:
    from .. import __version__

    return __version__
