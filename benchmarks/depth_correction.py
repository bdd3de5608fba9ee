"""The rank is chosen at depth p N and applied at depth N: how much does the correction help?

For simulations of several shapes and depths (seeds 1-5 each), compares the true error of the rank chosen
on the splits (no correction), of the depth-corrected rank, and of the oracle rank (lowest true error over
0..max_rank, all from one factorisation of the full counts).

Run from the repository root::

    python benchmarks/depth_correction.py
"""

from __future__ import annotations

import argparse

import numpy as np

from scn2s.datasets import simulate
from scn2s.lowrank import fit_lowrank
from scn2s.lowrank.model import reconstruct_counts
from scn2s.select.splits import Splits

CASES = (  # n_cells, n_genes, rank, depth, n_types
    (2000, 1000, 4, 2000, 6),
    (2000, 1000, 4, 500, 6),
    (2000, 1000, 8, 5000, 10),
    (3000, 2000, 6, 1500, 8),
    (1000, 2000, 3, 10000, 5),
    (5000, 1000, 10, 1000, 12),
    (900, 3000, 10, 6000, 10),
)


def sqrt_cp10k_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Mean squared error of square-root counts per 10,000."""

    def transform(values: np.ndarray) -> np.ndarray:
        return np.sqrt(values / values.sum(axis=1, keepdims=True) * 1e4)

    return float(np.mean((transform(estimate) - transform(truth)) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-rank", type=int, default=60)
    parser.add_argument(
        "--p", type=float, nargs="+", default=[0.5], help="split fractions to compare (the training half's share)"
    )
    parser.add_argument("--cases", type=int, nargs="+", help="indices of CASES to run (default: all)")
    args = parser.parse_args()
    cases = [CASES[i] for i in args.cases] if args.cases else list(CASES)
    header = "| cells x genes | rank, types | depth | seed | oracle |"
    header += "".join(f" p={p:g}: split rank (ratio) | p={p:g}: corrected (ratio) |" for p in args.p)
    print(header)
    print("| --- | --- | ---: | ---: | ---: |" + " --- | --- |" * len(args.p))
    ratios = {(p, name): [] for p in args.p for name in ("split", "corrected")}
    for n_cells, n_genes, rank, depth, n_types in cases:
        for seed in range(1, args.seeds + 1):
            adata = simulate(n_cells, n_genes, n_types=n_types, rank=rank, depth=depth, rng=seed)
            truth = adata.layers["rates"].astype(np.float64)
            row = f"| {n_cells} x {n_genes} | {rank}, {n_types} | {depth} | {seed} |"
            errors = oracle = None
            for p in args.p:
                # the splits fit_lowrank draws by default (three, from its third stream), at fraction p
                splits = Splits.draw(np.random.default_rng(seed).spawn(3)[2], 3, p)
                fit = fit_lowrank(adata.X, max_rank=args.max_rank, splits=splits, rng=np.random.default_rng(seed))
                if errors is None:  # the full-depth factorisation does not depend on p
                    estimates = (
                        reconstruct_counts(fit.factors, k, fit.library_size, fit.target_sum)
                        for k in range(args.max_rank + 1)
                    )
                    errors = np.array([sqrt_cp10k_error(estimate, truth) for estimate in estimates])
                    oracle = int(np.argmin(errors))
                    row += f" {oracle} |"
                split, corrected = errors[fit.split_rank] / errors[oracle], errors[fit.rank] / errors[oracle]
                ratios[p, "split"].append(split)
                ratios[p, "corrected"].append(corrected)
                row += f" {fit.split_rank} ({split:.4f}) | {fit.rank} ({corrected:.4f}) |"
            print(row, flush=True)
    print()
    print("| p | rank used | mean error / oracle | median | max | share > 1.02 |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for (p, name), values in ratios.items():
        values = np.array(values)
        print(
            f"| {p:g} | {name} | {values.mean():.4f} | {np.median(values):.4f} | {values.max():.4f} | "
            f"{np.mean(values > 1.02):.0%} ({np.sum(values > 1.02)}/{len(values)}) |"
        )


if __name__ == "__main__":
    main()
