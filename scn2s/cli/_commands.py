"""The subcommands: each takes the parsed arguments, prints its summary and returns the exit code."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._validate import describe_source, get_counts
from ._files import atomic_write, check_paths, input_errors, read_h5ad, write_h5ad
from ._report import selection_summary

if TYPE_CHECKING:
    import argparse

__all__ = ["demo", "denoise", "split"]

logger = logging.getLogger(__name__)


def denoise(args: argparse.Namespace) -> int:
    """``scn2s denoise IN -o OUT``: denoise the counts of an ``.h5ad`` file and write the result."""
    from .. import pp
    from ..pp._denoise import _gene_mask

    start = time.perf_counter()
    check_paths(args.input, args.output, force=args.force)
    adata = read_h5ad(args.input)
    with input_errors(args.input):
        get_counts(adata, args.layer)
        if args.genes is not None:
            _gene_mask(adata, args.genes)
    pp.denoise(
        adata,
        method=args.method,
        layer=args.layer,
        key_added=args.key_added,
        mask_var=args.genes,
        p=args.p,
        n_splits=args.n_splits,
        max_rank=args.max_rank,
        rank=args.rank,
        rng=args.seed,
        progress=args.progress,
    )
    write_h5ad(adata, args.output)
    record = adata.uns[args.key_added]
    modelled = "all genes" if args.genes is None else f"genes in var[{args.genes!r}]"
    print(
        f"scn2s denoise: {args.input}, {adata.n_obs} cells x {adata.n_vars} genes "
        f"(counts in {describe_source(args.layer)}, modelled: {modelled})"
    )
    for line in selection_summary(record, key=args.key_added):
        print(f"  {line}")
    print(f"  time: {record['elapsed_seconds']:.1f} s denoising, {time.perf_counter() - start:.1f} s in all")
    print(
        f"  wrote {args.output}: layers[{args.key_added!r}] (denoised expected counts), "
        f"uns[{args.key_added!r}] (the selection record)"
    )
    return 0


def split(args: argparse.Namespace) -> int:
    """``scn2s split IN -o OUT``: write the two halves of a binomial split of the counts as layers."""
    from .. import pp

    check_paths(args.input, args.output, force=args.force)
    adata = read_h5ad(args.input)
    with input_errors(args.input):
        get_counts(adata, args.layer)
    first, second = args.key_added
    pp.split_counts(adata, p=args.p, layer=args.layer, key_added=(first, second), rng=args.seed)
    write_h5ad(adata, args.output)
    totals = [int(adata.layers[name].sum()) for name in (first, second)]
    print(
        f"scn2s split: {args.input}, {adata.n_obs} cells x {adata.n_vars} genes "
        f"(counts in {describe_source(args.layer)}), p={args.p}, seed {args.seed}"
    )
    print(f"  wrote {args.output}: layers[{first!r}] ({totals[0]} molecules) and layers[{second!r}] ({totals[1]})")
    return 0


def demo(args: argparse.Namespace) -> int:
    """``scn2s demo``: denoise simulated counts with a known truth, report the error and plot the selection."""
    from .. import datasets, pp

    check_paths(None, args.output, force=args.force)
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
    if args.output:
        write_h5ad(adata, args.output)
        print(f"  wrote {args.output}")
    return 0


def _save_selection_plot(adata, figdir: Path) -> Path:
    import matplotlib.pyplot as plt

    from .. import pl

    ax = pl.selection(adata, show=False)
    figdir.mkdir(parents=True, exist_ok=True)
    path = figdir / "selection.png"
    try:
        atomic_write(path, lambda temporary: ax.figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(ax.figure)
    return path


def _sqrt_cp10k_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    def transform(values: np.ndarray) -> np.ndarray:
        total = values.sum(axis=1, keepdims=True)
        return np.sqrt(np.divide(values, total, out=np.zeros_like(values), where=total > 0) * 1e4)

    return float(np.mean((transform(estimate) - transform(truth)) ** 2))
