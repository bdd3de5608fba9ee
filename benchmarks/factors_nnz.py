"""Time of ``denoise(method="lowrank", output="factors")`` on a matrix of many cells and genes and few non-zeros.

The cost should follow the non-zeros and (cells + genes) x rank, not cells x genes.

    python benchmarks/factors_nnz.py --cells 200000 --genes 10000 --nnz 10
"""

from __future__ import annotations

import argparse
import time

import anndata as ad
import numpy as np
from scipy import sparse

import scn2s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--genes", type=int, default=10_000)
    parser.add_argument("--nnz", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = rng.choice(args.cells, args.nnz, replace=False)
    cols = rng.choice(args.genes, args.nnz, replace=False)
    X = sparse.csr_matrix((np.ones(args.nnz, dtype=np.float32), (rows, cols)), shape=(args.cells, args.genes))
    adata = ad.AnnData(X)
    start = time.perf_counter()
    scn2s.pp.denoise(adata, method="lowrank", output="factors", progress=False)
    total = time.perf_counter() - start
    timings = adata.uns["denoised"]["timings"]
    steps = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
    print(f"{args.cells} cells x {args.genes} genes, {args.nnz} non-zeros: {total:.1f} s ({steps})")


if __name__ == "__main__":
    main()
