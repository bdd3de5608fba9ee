from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

from .._blocks import RowBlocks
from .._sparse import canonical_csr, is_dask_array
from .._timing import Timings
from .._validate import (
    check_fraction,
    check_integer,
    check_key,
    check_sample_ratio,
    describe_source,
    gene_mask,
    get_counts,
    make_rng,
    seed_record,
    versions,
    write_results,
)
from ..select import (
    AutoencoderSelection,
    LowRankSelection,
    Splits,
    clamp_rank,
    compare_families,
    fit_autoencoder,
    fit_lowrank,
)
from ..select.autoencoder import config_label
from ._output import OUTPUTS, check_layer_fits, dense_layer, factor_entries, lazy_layer, stale_entries

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

_METHODS = ("auto", "lowrank", "autoencoder")


def denoise(
    adata: AnnData,
    *,
    method: Literal["auto", "lowrank", "autoencoder"] = "auto",
    layer: str | None = None,
    key_added: str = "denoised",
    mask_var: str | np.ndarray | None = None,
    p: float = 0.5,
    n_splits: int = 3,
    max_rank: int = 50,
    rank: int | None = None,
    depth_correction: bool = True,
    sample_ratio: float | None = None,
    autoencoder_configs: Sequence[Mapping] | None = None,
    autoencoder_splits: int = 1,
    device: str | None = None,
    output: Literal["layer", "factors"] = "layer",
    rng: int | np.random.Generator | None = 0,
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Denoise UMI counts with a model chosen by held-out molecules.

    The counts are split by binomial thinning into a training half (fraction ``p``) and a held-out half,
    ``n_splits`` times, and every candidate of every family is scored by the same loss (:mod:`scn2s.loss`)
    on the same held-out molecules, which the candidate never sees.

    * ``"lowrank"``: the library-normalised square-root counts of each training half are factorised once by
      a randomized truncated SVD, and every rank ``0..max_rank`` is scored. The rank with the lowest mean
      held-out loss, carried from depth ``p N`` to the full depth ``N`` (``depth_correction``), is refit on
      the full counts.
    * ``"autoencoder"``: for each candidate of ``autoencoder_configs``, a count autoencoder is trained across
      the molecules of the first ``autoencoder_splits`` training halves (a fresh input/target split every
      epoch, at a fraction drawn for each cell from ``input_range``) with early stopping on the held-out half.
      Its output is the posterior mean of each cell's frequencies under a gamma prior centred on the network's,
      with a learned shape per gene, given the cell's own counts (``posterior=True``, the default; see
      :class:`~scn2s.models.autoencoder.module.CountAutoencoder`).
      The inference mode (all of a cell's molecules as input, or the mean over thinned replicas) and a factor on
      the learned shapes (:data:`~scn2s.select.autoencoder.SHAPE_SCALES`: at inference the network sees more
      molecules than in training, and its prior deserves more weight) are chosen on the same held-out molecules.
      The best candidate, its epoch count, inference mode and shape factor are trained on the full counts.
    * ``"auto"``: both, and the family with the lower held-out loss on the splits both used is written.

    The low-rank family reads the counts in blocks of cells, so an AnnData opened with ``backed="r"`` is
    streamed from its file (``method="lowrank"``); for the autoencoder (``"auto"``, ``"autoencoder"``) the
    modelled genes of a backed ``X`` are read into memory, block by block.

    Under ``torchrun`` (a ``torch.distributed`` process group of more than one process, joined with
    :func:`scn2s.models.autoencoder.distributed.init_from_env`), every rank calls ``denoise`` with the same
    ``adata`` and arguments and an integer ``rng``: the autoencoder's trainings are shared between the ranks
    (DistributedDataParallel), the low-rank family runs on every rank, and every rank ends with the same layer and
    record in its ``adata``. Write files on rank 0 only
    (:func:`~scn2s.models.autoencoder.distributed.is_main_process`); the command line does.

    Counts in a dask array of sparse chunks (``X`` or the layer; e.g. from
    :func:`anndata.experimental.read_elem_lazy`) are denoised chunk by chunk on dask's workers
    (``method="lowrank"`` only): the chunks are the blocks of the in-memory path, split by the same seeds, so the
    same ``rng`` chooses the same rank; nothing of cells x genes comes to this process, and the layer is lazy.

    Everything is computed before anything is written, and the writes are all or nothing: after an error or
    an interrupt (``KeyboardInterrupt``) ``adata`` is as it was. Writing to a view makes it an actual AnnData
    (anndata warns); its parent is not changed.

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
        ``"highly_variable"``. ``None`` models every gene. Genes outside the mask keep their raw counts in the
        output layer.
    p
        Fraction of the molecules in each split's training half.
    n_splits
        Number of independent splits whose held-out losses are averaged.
    max_rank
        Largest rank searched.
    rank
        Fit this rank without a search (``method="lowrank"`` only).
    depth_correction
        Carry the rank chosen at depth ``p N`` to the full depth (:func:`scn2s.models.lowrank.transfer_rank`).
    sample_ratio
        Fraction of the library's molecules observed, for the finite-pool overlap correction
        (:func:`scn2s.split.overlap_probabilities`). ``None``: plain thinning.
    autoencoder_configs
        Autoencoder candidates, dicts of :class:`~scn2s.models.autoencoder.train.TrainConfig` fields
        (``hidden``, ``bottleneck``, ``dropout``, ``posterior``, ``input_range``, ``max_epochs``, ``batch_size``,
        ``likelihood``, ...);
        default :data:`scn2s.select.DEFAULT_CONFIGS`.
    autoencoder_splits
        Number of splits the autoencoder candidates are trained on (each costs one training per candidate).
    device
        Torch device of the autoencoder; ``None`` picks CUDA when available.
    output
        ``"layer"``: write the denoised values as a dense ``float32`` layer (cells x genes x 4 bytes; checked
        against the memory available before any work, :class:`MemoryError` if it would not fit); for counts in
        a dask array, a lazy dask array chunked like the counts (not checked: it is computed when read or
        written, chunk by chunk).
        ``"factors"`` (``method="lowrank"`` only): store the low-rank model instead (cells x rank and genes x
        rank), from which :func:`scn2s.tl.reconstruct` computes any slice of the layer and
        :func:`scn2s.tl.write_denoised` writes it to a file chunk by chunk. Entries of an earlier output of the
        other kind under ``key_added`` are removed.
    rng
        Seed or :class:`numpy.random.Generator`; the same seed gives the same output.
    progress
        Show progress bars.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` if ``copy=True``, with

    ``adata.layers[key_added]``
        With ``output="layer"``: ``float32`` denoised expected counts, cells x genes: each cell on its own
        library size (its modelled genes sum to its observed count over them), non-negative, zero for genes with
        no molecule. Normalise and log it as you would counts. A lazy dask array when the counts are one.
    ``adata.obsm[f"X_{key_added}"]``
        With ``output="factors"``: the cells' scores ``U[:, :rank] * s[:rank]`` (float64, cells x rank).
    ``adata.varm[f"{key_added}_loadings"]``
        With ``output="factors"``: the genes' loadings ``Vt[:rank].T`` (genes x rank; zero outside
        ``mask_var``).
    ``adata.var[f"{key_added}_mean"]``, ``adata.var[f"{key_added}_modelled"]``
        With ``output="factors"``: the genes' means in normalised square-root space (NaN outside ``mask_var``),
        and whether each gene is modelled.
    ``adata.obs[f"{key_added}_library_size"]``, ``adata.obs[f"{key_added}_scale"]``
        With ``output="factors"``: each cell's count over the modelled genes, and the factor that rescales its
        expected counts (:func:`scn2s.models.lowrank.unscaled_counts`) to sum to it
        (:func:`scn2s.models.lowrank.cell_scale`).
    ``adata.uns[key_added]``
        ``method`` (the family written); ``params`` (the arguments; ``autoencoder_configs`` as a mapping by
        position, ``"0"``, ``"1"``, ...); ``best_params`` (``{"rank": k}``, or the autoencoder's ``hidden``,
        ``bottleneck``, ``dropout``, ``posterior``, ``input_range``, ``shape_scale``, ``epochs`` and ``inference``);
        ``selection``, per family
        searched: for ``lowrank``, ``grid`` (``{"rank": ranks}``), ``loss`` (the loss's name), ``loss_mean``,
        ``loss_std`` and ``loss_per_split`` (held-out loss per entry, see :mod:`scn2s.loss`), ``split_rank`` (chosen at
        depth ``p N``), ``rank`` (applied at full depth), ``noise_ratio``, ``split_singular_values`` and
        ``singular_values`` (the spectra of the splits and of the full fit); for ``autoencoder``, ``grid`` (``config``:
        the candidates' labels), ``hidden``, ``bottleneck``, ``dropout``, ``posterior``, ``input_range`` (candidates x
        2: the lowest and highest fraction of a cell's training molecules in its inputs), the same loss keys,
        ``loss_full_input`` and ``loss_replicas`` (the two inference modes, each at the candidate's best shape
        factor), ``shape_scales`` (the factors tried), ``loss_full_input_by_scale`` and ``loss_replicas_by_scale``
        (splits x candidates x factors; constant over the factors without a posterior), ``shape_scale`` (the
        chosen candidate's factor, 1 without a posterior), ``best_epochs``, ``heldout_curves`` and
        ``train_curves`` (per candidate and split, per epoch), ``chosen``, ``epochs``, ``inference``, ``device``,
        ``batch_size``, ``world_size`` (processes that trained together, 1 without ``torch.distributed``); both with
        ``p``, ``n_splits`` and ``seed``; ``comparison`` (``method="auto"``: each family's held-out loss on the shared
        splits and the choice); ``version``; ``versions`` (``python``, ``scn2s``, ``numpy``, ``scipy`` and ``anndata``);
        ``elapsed_seconds``; ``timings`` (seconds per step: ``read``, ``split``, ``selection``, ``fit``,
        ``autoencoder``, ``output``, those that ran, and the autoencoder search's: ``autoencoder.refit`` and per
        candidate ``autoencoder.<label>.steps``, ``.heldout`` and ``.scoring``, see
        :func:`~scn2s.select.fit_autoencoder`); ``output`` (``"layer"`` or ``"factors"``); with
        ``output="factors"``, ``factors`` (``family``: ``"lowrank"``, ``rank`` and ``target_sum``, the normalisation
        target). :func:`scn2s.pl.selection` plots ``selection``.

    Raises
    ------
    MemoryError
        With ``output="layer"``, if the layer is larger than the memory available; raised before any work, the
        message says what to do instead.
    TypeError
        If the counts have a boolean or non-numeric dtype, or ``layer`` is not a string.
    KeyError
        If ``layer`` or the ``mask_var`` column does not exist (the message lists the layers).
    ValueError
        If the counts are not raw UMI counts (non-integer, negative, NaN, infinite, above ``2**53``) or hold no
        molecule; if ``adata`` is empty or has a single cell; if an argument is out of range; or if
        ``output="factors"`` with a method other than ``"lowrank"``, or the counts are a dask array with a method
        other than ``"lowrank"`` (raised before any work). Each message names where the counts were read
        (``adata.X`` or ``adata.layers[...]``) and what to do.
    """
    start = time.perf_counter()
    if method not in _METHODS:
        msg = f"method must be one of {_METHODS}, got {method!r}."
        raise ValueError(msg)
    if rank is not None and method != "lowrank":
        msg = f'rank= fixes the low-rank model and needs method="lowrank", got method={method!r}.'
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
    check_integer("max_rank", max_rank, minimum=1)
    check_integer("rank", rank, minimum=0, allow_none=True)
    check_sample_ratio(sample_ratio, held_out=True)
    lazy = _lazy_counts(adata, layer, method)
    if output == "layer" and not lazy:
        check_layer_fits(adata.shape, key_added=key_added)  # before any work
    seed = seed_record(rng)
    requested = method
    timings = Timings()
    split_rng, lowrank_rng, autoencoder_rng = make_rng(rng).spawn(3)
    splits = Splits.draw(split_rng, n_splits, p, sample_ratio)
    counts = get_counts(adata, layer)
    genes = gene_mask(adata, mask_var)

    source = describe_source(layer)
    with timings.step("read"):
        backed = adata.isbacked and layer is None
        if lazy:
            # a dask array: every chunk is checked on its worker in one pass before any work
            from .._dask import DaskRowBlocks

            modelled = None
            blocks = DaskRowBlocks(counts, genes=genes, source=source)
            has_molecule = blocks.has_molecule()
        elif method == "lowrank":
            # read block by block (streamed from the file if backed, each block checked the first time it is
            # read); a dense matrix in memory is made sparse once
            if not backed and not sparse.issparse(counts):
                counts = canonical_csr(counts)
            modelled = None
            blocks = RowBlocks(counts, genes=genes, source=source, checked=not backed)
            if backed or genes is not None:
                # one pass, which also checks every block of a backed X before any work
                has_molecule = any([bool(block.data.any()) for _, _, block in blocks])
            else:
                has_molecule = bool(counts.data.any())
        else:
            if backed:
                # the autoencoder trains on the counts in memory: the modelled genes are read block by block
                logger.info("reading the modelled counts of %s from %s into memory", source, adata.filename)
                modelled = RowBlocks(counts, genes=genes, source=source).to_csr()
            else:
                counts = canonical_csr(counts)  # a copy only if X holds duplicate entries; never modified
                modelled = counts[:, genes] if genes is not None else counts
            blocks = RowBlocks(modelled, checked=True)
            has_molecule = bool(modelled.data.any())
    if not has_molecule:
        where = " in the genes selected by mask_var" if genes is not None else ""
        msg = (
            f"{source} holds no molecule{where} (every count is zero); there is nothing to denoise. Check that "
            "layer= names the raw counts."
        )
        raise ValueError(msg)
    n_cells, n_genes = blocks.shape
    if n_cells < 2:
        msg = f"denoise needs at least 2 cells to fit a model across cells; {source} has {n_cells}."
        raise ValueError(msg)
    if n_genes == 1 and rank != 0:
        msg = (
            "Only 1 gene is modelled: each cell's denoised count is its own count of that gene (the library size), "
            "so the output equals the counts; using rank 0."
        )
        warnings.warn(msg, UserWarning, stacklevel=2)
        method, rank = "lowrank", 0
    elif rank is not None:
        rank = clamp_rank("rank", rank, (n_cells, n_genes), stacklevel=3)
    elif method != "autoencoder":  # the autoencoder searches no rank
        max_rank = clamp_rank("max_rank", max_rank, (n_cells, n_genes), stacklevel=3)
    logger.info("denoising %s: %d cells x %d genes", source, n_cells, n_genes)
    fits: dict[str, LowRankSelection | AutoencoderSelection] = {}
    if method in ("auto", "lowrank"):
        fits["lowrank"] = fit_lowrank(
            blocks,
            max_rank=max_rank,
            rank=rank,
            splits=splits,
            depth_correction=depth_correction,
            rng=lowrank_rng,
            progress=progress,
            timings=timings,
        )
    if method in ("auto", "autoencoder"):
        with timings.step("autoencoder"):
            fits["autoencoder"] = fit_autoencoder(
                modelled,
                splits=splits,
                configs=autoencoder_configs,
                n_splits=autoencoder_splits,
                device=device,
                rng=autoencoder_rng,
                progress=progress,
                timings=timings,
            )
    comparison = compare_families(fits["lowrank"], fits["autoencoder"]) if method == "auto" else None
    family = comparison["chosen"] if comparison else method
    fit = fits[family]
    with timings.step("output"):
        row_chunks = blocks.chunks if lazy else None
        if output == "layer" and lazy:
            entries = {"layers": {key_added: lazy_layer(fit, blocks.raw, genes)}}
        elif output == "layer":
            entries = {"layers": {key_added: dense_layer(fit, modelled, counts, genes, progress=progress)}}
        else:
            entries, factors_record = factor_entries(
                fit, counts.shape[1], genes, key_added=key_added, row_chunks=row_chunks
            )

    params = {
        "method": requested,
        "autoencoder_splits": autoencoder_splits,
        "layer": layer or "X",
        "mask_var": mask_var if isinstance(mask_var, str) else ("custom" if mask_var is not None else "all"),
        "p": p,
        "n_splits": n_splits,
        "max_rank": max_rank,
        "depth_correction": depth_correction,
        "seed": seed,
        "output": output,
    }
    if rank is not None:
        params["rank"] = rank
    if sample_ratio is not None:
        params["sample_ratio"] = sample_ratio
    if device is not None:
        params["device"] = device
    if autoencoder_configs is not None:
        # a mapping by position, of lists for tuples: what anndata can write to .h5ad
        params["autoencoder_configs"] = {
            str(i): {k: list(v) if isinstance(v, tuple) else v for k, v in c.items()}
            for i, c in enumerate(autoencoder_configs)
        }
    selection = {}
    if "lowrank" in fits:
        selection["lowrank"] = _lowrank_record(fits["lowrank"]) | {"p": p, "n_splits": n_splits, "seed": seed}
    if "autoencoder" in fits:
        selection["autoencoder"] = _autoencoder_record(fits["autoencoder"]) | {"p": p, "seed": seed}
    record = {
        "method": family,
        "params": params,
        "best_params": _best_params(fit),
        "selection": selection,
        "version": _version(),
        "versions": versions(),
        "elapsed_seconds": time.perf_counter() - start,
        "timings": timings.as_dict(),
    }
    if comparison is not None:
        record["comparison"] = comparison
    record["output"] = output
    if output == "factors":
        record["factors"] = factors_record
    # everything is computed: write all or nothing
    if copy:
        adata = adata.copy()
    write_results(adata, **stale_entries(key_added, output), **entries, uns={key_added: record})
    where = f"layers[{key_added!r}]" if output == "layer" else f"the factors obsm['X_{key_added}'] and others"
    logger.info("wrote %s (%s, %s) in %.1f s", where, family, record["best_params"], record["elapsed_seconds"])
    return adata if copy else None


def _lazy_counts(adata: AnnData, layer: str | None, method: str) -> bool:
    """Whether the counts are a dask array; raises unless ``method="lowrank"``, the family that runs on dask."""
    if layer is None:
        counts = None if adata.isbacked else adata.X
    else:
        counts = adata.layers[layer] if isinstance(layer, str) and layer in adata.layers else None
    if not is_dask_array(counts):
        return False
    if method != "lowrank":
        msg = (
            f'{describe_source(layer)} is a dask array; only method="lowrank" runs chunk by chunk on dask\'s '
            f'workers, got method={method!r}. Pass method="lowrank", or compute the counts into memory first '
            "(e.g. adata.X = adata.X.compute()) for the autoencoder."
        )
        raise ValueError(msg)
    return True


def _best_params(fit) -> dict:
    if isinstance(fit, LowRankSelection):
        return {"rank": fit.rank}
    config = fit.configs[fit.best]
    return {
        "hidden": config.hidden,
        "bottleneck": config.bottleneck,
        "dropout": config.dropout,
        "posterior": config.posterior,
        "input_range": list(config.input_bounds),
        "shape_scale": fit.shape_scale,
        "epochs": fit.epochs,
        "inference": fit.mode,
    }


def _lowrank_record(fit: LowRankSelection) -> dict:
    record = {
        "loss": "heldout_sqrt_mse",
        "split_rank": fit.split_rank,
        "rank": fit.rank,
        "singular_values": fit.factors.s,
    }
    if len(fit.ranks):
        record |= {
            "grid": {"rank": fit.ranks},
            "loss_mean": fit.loss_mean,
            "loss_std": fit.loss_std,
            "loss_per_split": fit.losses,
            "split_singular_values": fit.split_singular_values,
        }
        if np.isfinite(fit.noise_ratio):
            record["noise_ratio"] = fit.noise_ratio
    return record


def _autoencoder_record(fit: AutoencoderSelection) -> dict:
    labels = [config_label(c) for c in fit.configs]
    curves = {
        name: {
            label: {f"split_{i}": np.asarray(per_split[j], dtype=np.float64) for i, per_split in enumerate(source)}
            for j, label in enumerate(labels)
        }
        for name, source in (("heldout_curves", fit.heldout_curves), ("train_curves", fit.train_curves))
    }
    return {
        "loss": "heldout_sqrt_mse",
        "grid": {"config": np.array(labels)},
        "hidden": np.array([c.hidden for c in fit.configs]),
        "bottleneck": np.array([c.bottleneck for c in fit.configs]),
        "dropout": np.array([c.dropout for c in fit.configs]),
        "posterior": np.array([c.posterior for c in fit.configs]),
        "input_range": np.array([c.input_bounds for c in fit.configs], dtype=np.float64),
        "loss_mean": fit.loss_mean,
        "loss_std": fit.loss_std,
        "loss_per_split": fit.losses,
        "loss_full_input": fit.losses_full,
        "loss_replicas": fit.losses_replicas,
        "shape_scales": fit.shape_scales,
        "loss_full_input_by_scale": fit.losses_by_scale[0],
        "loss_replicas_by_scale": fit.losses_by_scale[1],
        "shape_scale": fit.shape_scale,
        "best_epochs": fit.best_epochs,
        **curves,
        "chosen": labels[fit.best],
        "epochs": fit.epochs,
        "inference": fit.mode,
        "device": fit.device,
        "batch_size": fit.batch_size,
        "world_size": fit.world_size,
        "n_splits": int(fit.losses.shape[0]),
    }


def _version() -> str:
    from .. import __version__

    return __version__
