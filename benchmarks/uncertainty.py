"""Calibration of the posterior standard deviations: how often the nominal posterior intervals cover the truth.

A simulation (``scn2s.datasets.simulate``, six types, rank 4) is denoised with ``uncertainty=True`` by one
autoencoder candidate with the posterior; each value's posterior is the gamma distribution of shape
``(mean / sd) ** 2`` and scale ``sd ** 2 / mean``, and its central 50%, 80% and 95% intervals are checked against the
true expected count on the cell's observed library size (the true frequencies times the cell's count, the quantity
the layer estimates). Also by bins of the true value, and the share of misses below and above the interval.

    python benchmarks/uncertainty.py --cells 800 --genes 300 --epochs 150

``--search``: the default candidates and their search instead of the one candidate (what ``method="autoencoder"``
runs without ``autoencoder_kwds``); ``--epochs`` is then ignored.

``--factors``: the coverage again with the sd times a factor per gene ``c_g`` (the gamma's shape divided by
``c_g**2``, its mean kept): ``c_g`` from the truth (an oracle, ``c_g**2 = mean_i (truth - mean)**2 / mean_i sd**2``),
and from the held-out half of one split, by a network of the same settings trained on the training half
(``c_g**2 = sum_i [(x'' - d mu')**2 - x''] / (d**2 sum_i sd'**2)``, clipped to [0.25, 25]: ``(x'' - d mu')**2 - x''``
is unbiased for ``d**2 (truth' - mu')**2``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import stats

LEVELS = (0.5, 0.8, 0.95)


def coverage(mean: np.ndarray, sd: np.ndarray, truth: np.ndarray) -> dict:
    has = sd > 0
    shape, scale, truth = (mean[has] / sd[has]) ** 2, sd[has] ** 2 / mean[has], truth[has]
    out = {"entries": int(has.sum()), "entries_without_sd": int((~has).sum())}
    for level in LEVELS:
        low = stats.gamma.ppf((1 - level) / 2, shape, scale=scale)
        high = stats.gamma.ppf((1 + level) / 2, shape, scale=scale)
        out[f"{level:g}"] = float(np.mean((truth >= low) & (truth <= high)))
        out[f"{level:g}_below"] = float(np.mean(truth < low))
        out[f"{level:g}_above"] = float(np.mean(truth > high))
        edges = np.quantile(truth, [0, 0.2, 0.4, 0.6, 0.8, 1])
        bins = np.clip(np.searchsorted(edges, truth, side="right") - 1, 0, 4)
        out[f"{level:g}_by_truth_quintile"] = [
            float(np.mean(((truth >= low) & (truth <= high))[bins == b])) for b in range(5)
        ]
        out["truth_quintile_edges"] = edges.tolist()
    return out


def scaled(mean: np.ndarray, sd: np.ndarray, truth: np.ndarray, factor2: np.ndarray) -> dict:
    """:func:`coverage` with each gene's sd times ``sqrt(factor2)``."""
    return {k: v for k, v in coverage(mean, sd * np.sqrt(factor2)[None, :], truth).items() if "quintile" not in k}


def heldout_factors(adata, config: dict, seed: int) -> np.ndarray:
    """``c_g**2`` from the held-out half of one split (``p=0.5``), by a network trained on its training half."""
    import torch
    from scipy import sparse

    from scn2s.autoencoder.data import CsrBatches
    from scn2s.autoencoder.train import TrainConfig, predict_posterior, train
    from scn2s.select import Splits

    counts = sparse.csr_matrix(adata.X, dtype=np.float64)
    splits = Splits.draw(np.random.default_rng(seed), 1, 0.5)
    half, heldout = splits.get(0, counts)
    result = train(half, TrainConfig(**config), heldout=heldout, depth_ratio=splits.depth_ratio, device="cpu", seed=0)
    generator = torch.Generator().manual_seed(0)
    rows = np.arange(half.shape[0])
    mu, sd = predict_posterior(result.model, CsrBatches(half, "cpu"), rows, mode="replicas", generator=generator)
    mu, sd = mu.numpy().astype(np.float64), sd.numpy().astype(np.float64)
    held, d = heldout.toarray(), splits.depth_ratio
    moments = ((held - d * mu) ** 2 - held).sum(axis=0)
    return np.clip(moments / np.maximum(d**2 * (sd**2).sum(axis=0), 1e-300), 0.25, 25.0)


def main(argv: list[str] | None = None) -> int:
    import scn2s

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=800)
    parser.add_argument("--genes", type=int, default=300)
    parser.add_argument("--depth", type=float, default=1000.0)
    parser.add_argument("--epochs", type=int, default=150, help="max_epochs of the candidate")
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulation")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--factors", action="store_true", help="also with a variance factor per gene (see above)")
    parser.add_argument("--search", action="store_true", help="the default candidates (see above)")
    args = parser.parse_args(argv)
    if args.factors and args.search:
        parser.error("--factors needs the one candidate: leave out --search")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    adata = scn2s.datasets.simulate(args.cells, args.genes, depth=args.depth, rng=args.seed)
    config = {"hidden": 128, "bottleneck": 16, "dropout": 0.0, "max_epochs": args.epochs, "posterior": True}
    start = time.perf_counter()
    kwds = None if args.search else {"configs": [config]}
    scn2s.pp.denoise(adata, method="autoencoder", autoencoder_kwds=kwds, uncertainty=True, progress=False)
    seconds = time.perf_counter() - start
    rates = adata.layers["rates"].astype(np.float64)
    library = np.asarray(adata.X.sum(axis=1), dtype=np.float64).ravel()
    truth = rates / rates.sum(axis=1, keepdims=True) * library[:, None]
    result = {
        "args": vars(args),
        "best_params": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in adata.uns["denoised"]["best_params"].items()
        },
        "seconds": seconds,
        "coverage": coverage(
            adata.layers["denoised"].astype(np.float64), adata.layers["denoised_sd"].astype(np.float64), truth
        ),
    }
    if args.factors:
        mean = adata.layers["denoised"].astype(np.float64)
        sd = adata.layers["denoised_sd"].astype(np.float64)
        oracle = ((truth - mean) ** 2).mean(axis=0) / np.maximum((sd**2).mean(axis=0), 1e-300)
        held = heldout_factors(adata, config, args.seed)
        result["factors"] = {
            "oracle": {
                "quartiles": np.quantile(np.sqrt(oracle), [0, 0.25, 0.5, 0.75, 1]),
                **scaled(mean, sd, truth, oracle),
            },
            "heldout": {
                "quartiles": np.quantile(np.sqrt(held), [0, 0.25, 0.5, 0.75, 1]),
                **scaled(mean, sd, truth, held),
            },
        }
    print(json.dumps(result, indent=1, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
