"""The subcommands: each takes the parsed arguments, prints its summary and returns the exit code."""

from __future__ import annotations

import logging
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._batches import read_batches
from .._memory import check_layer_fits
from .._names import denoise_keys, denoise_ownership, integrated_key, split_ownership
from .._validate import check_writable, describe_source, gene_mask, get_counts
from ._files import (
    InputError,
    atomic_write,
    check_paths,
    check_space,
    estimated_size,
    input_errors,
    nbytes,
    read_h5ad,
    write_anndata,
)
from ._report import selection_summary

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator

__all__ = ["demo", "denoise", "split"]

logger = logging.getLogger(__name__)


def denoise(args: argparse.Namespace) -> int:
    """``scn2s denoise IN -o OUT``: denoise the counts of an ``.h5ad`` file and write the result.

    Under ``torchrun --nproc_per_node=N`` every process denoises (the autoencoder's trainings are shared) and only
    rank 0 writes OUT and prints the summary; the other ranks write and print nothing and return 0.
    """
    from .. import pp

    start = time.perf_counter()
    if args.output == "factors" and args.method != "lowrank":
        msg = f"--output factors stores a low-rank model and needs --method lowrank, got --method {args.method}"
        raise InputError(msg)
    if args.rank is not None and args.method != "lowrank":
        msg = f"--rank fixes the rank of a low-rank model and needs --method lowrank, got --method {args.method}"
        raise InputError(msg)
    if args.layer is not None and args.key_added == args.layer:
        msg = f"--key-added {args.key_added} would overwrite the input counts in --layer {args.layer}; choose another"
        raise InputError(msg)
    if args.uncertainty and (args.method == "lowrank" or args.output != "layer"):
        msg = (
            "--uncertainty writes the posterior standard deviations of the autoencoder; the low-rank family has no "
            f"posterior, got --method {args.method} --output {args.output}"
        )
        raise InputError(msg)
    if args.integrate and (args.batch_key is None or args.output != "layer"):
        msg = "--integrate removes the batches from the cells' embedding and needs --batch-key (and --output layer)"
        raise InputError(msg)
    check_paths(args.input, args.out, force=args.force)
    if args.device is not None and args.method != "lowrank":
        _check_device(args.device)
    adata = read_h5ad(args.input)
    with input_errors(args.input):
        get_counts(adata, args.layer)
        if args.genes is not None:
            gene_mask(adata, args.genes)
        with warnings.catch_warnings():  # checked here for the exit code; denoise gives the warnings
            warnings.simplefilter("ignore")
            read_batches(
                adata,
                args.batch_key,
                args.transform_batch,
                output=args.output,
                lazy=False,
                stacklevel=2,
            )
        planned = denoise_keys(
            args.key_added, args.output, method=args.method, uncertainty=args.uncertainty, integrate=args.integrate
        )
        check_writable(adata, planned, **denoise_ownership(args.key_added, args.layer))
    layer_size = adata.n_obs * adata.n_vars * 4 if args.output == "layer" else 0
    check_space(args.out, estimated_size(adata, extra=layer_size))
    if args.output == "layer":
        try:
            check_layer_fits(adata.shape, key_added=args.key_added, alternatives=_LAYER_ALTERNATIVES)
        except MemoryError as err:
            raise InputError(f"{args.input}: {err}") from err
    with _torchrun(args.device) as (main, device):
        pp.denoise(
            adata,
            method=args.method,
            layer=args.layer,
            key_added=args.key_added,
            mask_var=args.genes,
            batch_key=args.batch_key,
            transform_batch=args.transform_batch,
            integrate=args.integrate,
            p=args.p,
            n_splits=args.n_splits,
            lowrank_kwds={"max_rank": args.max_rank, "rank": args.rank},
            device=device,
            output=args.output,
            uncertainty=args.uncertainty,
            rng=args.seed,
            progress=args.progress and main,
        )
    if not main:
        return 0
    write_anndata(adata, args.out, force=args.force)
    record = adata.uns[args.key_added]
    modelled = "all genes" if args.genes is None else f"genes in var[{args.genes!r}]"
    print(
        f"scn2s denoise: {args.input}, {adata.n_obs} cells x {adata.n_vars} genes "
        f"(counts in {describe_source(args.layer)}, modelled: {modelled})"
    )
    for line in selection_summary(record, key=args.key_added, n_obs=adata.n_obs):
        print(f"  {line}")
    print(f"  time: {record['elapsed_seconds']:.1f} s denoising, {time.perf_counter() - start:.1f} s in all")
    key = args.key_added
    if args.output == "layer":
        sd = f", layers['{key}_sd'] (their posterior standard deviations)" if f"{key}_sd" in adata.layers else ""
        integrated = integrated_key(key)
        integrated = f", obsm[{integrated!r}] (the same, batches removed)" if integrated in adata.obsm else ""
        print(
            f"  wrote {args.out}: layers[{key!r}] (denoised expected counts of the {record['method']} model){sd}, "
            f"obsm['X_{key}'] (the cells' embedding, for sc.pp.neighbors(use_rep='X_{key}')){integrated}, "
            f"uns[{key!r}] (the selection record)"
        )
    else:
        print(
            f"  wrote {args.out}: the low-rank factors (obsm['X_{key}'], varm['{key}_loadings'], var and obs "
            f"columns '{key}_*'), uns[{key!r}] (the selection record); scn2s.tl.reconstruct gives denoised values "
            "for any slice, scn2s.tl.write_denoised a file with the whole layer"
        )
    return 0


@contextmanager
def _torchrun(device: str | None) -> Iterator[tuple[bool, str | None]]:
    """Under torchrun with more than one process, join the process group for the block and leave it after.

    Yields whether this process is the main one (rank 0, which alone writes and prints) and the device to use
    (on CUDA, the GPU ``LOCAL_RANK`` unless ``--device`` names one). Outside torchrun: ``(True, device)``.
    A process group already initialised by the caller is used as it is and left open.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield True, device
        return
    from ..autoencoder import distributed

    joined = not distributed.is_distributed()
    resolved = distributed.init_from_env(device)
    if resolved.type == "cuda":
        device = str(resolved)
    try:
        yield distributed.is_main_process(), device
    finally:
        if joined:
            distributed.destroy()


_LAYER_ALTERNATIVES = (
    "Pass --output factors (with --method lowrank) to write the low-rank factors instead, from which "
    "scn2s.tl.reconstruct computes slices and scn2s.tl.write_denoised writes the layer chunk by chunk; or denoise "
    "a file with fewer cells or genes (--genes does not shrink the layer, which keeps the raw counts of the other "
    "genes)."
)


def _check_device(device: str) -> None:
    """Raise :class:`InputError` if torch cannot use ``device`` (the syntax was checked by the parser)."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            msg = f"--device {device}: torch sees no CUDA device on this machine; use --device cpu"
            raise InputError(msg)
        if index and int(index) >= count:
            msg = f"--device {device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            raise InputError(msg)
    elif kind == "mps" and not torch.backends.mps.is_available():
        msg = f"--device {device}: the Apple MPS backend is not available here; use --device cpu"
        raise InputError(msg)


def split(args: argparse.Namespace) -> int:
    """``scn2s split IN -o OUT``: write the two halves of a binomial split of the counts as layers."""
    from .. import pp

    first, second = args.key_added
    if first == second:
        msg = f"--key-added needs two different layer names, got {first} {second}"
        raise InputError(msg)
    if args.layer in (first, second):
        msg = f"--key-added {args.layer} would overwrite the input counts in --layer {args.layer}; choose another"
        raise InputError(msg)
    check_paths(args.input, args.out, force=args.force)
    adata = read_h5ad(args.input)
    with input_errors(args.input):
        counts = get_counts(adata, args.layer)
        check_writable(adata, {"layers": [first, second]}, **split_ownership(args.layer))
    check_space(args.out, estimated_size(adata, extra=2 * nbytes(counts)))
    pp.split_counts(adata, p=args.p, layer=args.layer, key_added=(first, second), rng=args.seed)
    write_anndata(adata, args.out, force=args.force)
    totals = [int(adata.layers[name].sum()) for name in (first, second)]
    print(
        f"scn2s split: {args.input}, {adata.n_obs} cells x {adata.n_vars} genes "
        f"(counts in {describe_source(args.layer)}), p={args.p}, seed {args.seed}"
    )
    print(f"  wrote {args.out}: layers[{first!r}] ({totals[0]} molecules) and layers[{second!r}] ({totals[1]})")
    return 0


def demo(args: argparse.Namespace) -> int:
    """``scn2s demo``: denoise simulated counts with a known truth, report the error and plot the selection."""
    from .. import datasets, pp

    check_paths(None, args.out, force=args.force)
    adata = datasets.simulate(args.cells, args.genes, rng=args.seed)
    truth = adata.layers["rates"].astype(np.float64)
    start = time.perf_counter()
    pp.denoise(adata, method="lowrank", rng=args.seed, progress=args.progress)
    elapsed = time.perf_counter() - start
    record = adata.uns["denoised"]
    selection = record["selection"]["lowrank"]
    raw_error = _sqrt_cp10k_error(adata.X.toarray().astype(np.float64), truth)
    denoised_error = _sqrt_cp10k_error(adata.layers["denoised"].astype(np.float64), truth)
    figure = _save_selection_plot(adata, Path(args.figdir))
    print(f"scn2s demo: simulated {adata.n_obs} cells x {adata.n_vars} genes with known true rates")
    print(
        f"  rank chosen by held-out molecules: {selection['split_rank']} at depth p={selection['p']}, "
        f"{selection['rank']} at full depth"
    )
    print(
        f"  error vs truth (MSE of sqrt CP10k): raw counts {raw_error:.4f}, denoised {denoised_error:.4f} "
        f"({raw_error / denoised_error:.1f}x lower)"
    )
    print(f"  time: {elapsed:.1f} s; output in adata.layers['denoised'], record in adata.uns['denoised']")
    print(f"  selection plot (held-out loss against rank): {figure}")
    if args.out:
        write_anndata(adata, args.out, force=args.force)
        print(f"  wrote {args.out}")
    return 0


def _save_selection_plot(adata, figdir: Path) -> Path:
    import matplotlib.pyplot as plt

    from .. import pl

    ax = pl.selection(adata, show=False)
    figdir.mkdir(parents=True, exist_ok=True)
    path = figdir / "selection.png"
    try:
        atomic_write(
            path,
            lambda temporary: ax.figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight"),
            replace=True,
        )
    finally:
        plt.close(ax.figure)
    return path


def _sqrt_cp10k_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    def transform(values: np.ndarray) -> np.ndarray:
        total = values.sum(axis=1, keepdims=True)
        return np.sqrt(np.divide(values, total, out=np.zeros_like(values), where=total > 0) * 1e4)

    return float(np.mean((transform(estimate) - transform(truth)) ** 2))
