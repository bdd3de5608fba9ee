"""Low-rank denoising of counts in a dask array on a LocalCluster: 1 worker vs 2 workers (1 thread each).

Simulated counts (cell types with a gamma expression profile each, log-normal library sizes, Poisson counts) are
generated chunk by chunk on the workers as CSR blocks of ``scn2s._blocks.BLOCK_ROWS`` cells, so no process ever
holds the whole matrix, and persisted on the workers before the clock starts (an atlas already loaded into the
cluster's memory; reading from a file adds its own cost to every pass). Each configuration runs
``scn2s.pp.denoise(method="lowrank", output="factors")`` ``--runs`` times and reports the median.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/dask_scale.py --cells 200000 --genes 2000
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import anndata as ad
import dask.array as da
import numpy as np
from dask.distributed import Client, LocalCluster
from scipy import sparse

import scn2s
from scn2s._blocks import BLOCK_ROWS, block_slices


def _chunk(block, *, n_genes: int, n_types: int, seed: int, block_id=None) -> sparse.csr_matrix:
    rows = block.shape[0]
    profiles = np.random.default_rng(seed).gamma(0.3, size=(n_types, n_genes))
    profiles /= profiles.sum(axis=1, keepdims=True)
    rng = np.random.default_rng([seed, block_id[0]])
    types = rng.integers(n_types, size=rows)
    library = rng.lognormal(np.log(2000), 0.5, size=rows)
    parts = []
    for start in range(0, rows, 2048):  # dense rates of 2048 cells at a time
        sub = slice(start, start + 2048)
        rates = library[sub, None] * profiles[types[sub]]
        parts.append(sparse.csr_matrix(rng.poisson(rates).astype(np.int32)))
    return sparse.vstack(parts, format="csr")


def simulated_counts(n_cells: int, n_genes: int, *, n_types: int = 10, seed: int = 0):
    """A dask array of CSR chunks of ``BLOCK_ROWS`` cells, each generated on its worker."""
    rows = tuple(s.stop - s.start for s in block_slices(n_cells, BLOCK_ROWS))
    shape = da.zeros((n_cells, 1), chunks=(rows, 1), dtype=np.int8)
    return shape.map_blocks(
        _chunk,
        n_genes=n_genes,
        n_types=n_types,
        seed=seed,
        chunks=(rows, (n_genes,)),
        dtype=np.int32,
        meta=sparse.csr_matrix((0, 0), dtype=np.int32),
    )


def run(n_workers: int, args) -> list[float]:
    with (
        LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        counts = simulated_counts(args.cells, args.genes).persist()
        nnz = sum(counts.map_blocks(lambda b: np.array([b.nnz]), drop_axis=1, dtype=int).compute())
        return _timed_runs(counts, args, f"{n_workers} worker(s), nnz {nnz}")


def run_in_memory(args) -> list[float]:
    """The same counts computed into one CSR matrix in this process, and denoised without dask (the baseline)."""
    import dask

    with dask.config.set(scheduler="sync"):
        counts = simulated_counts(args.cells, args.genes).compute()
    return _timed_runs(counts, args, "in memory")


def _timed_runs(counts, args, label: str) -> list[float]:
    """Seconds of ``args.runs`` low-rank denoisings of ``counts`` (seeds 0, 1, ...), each printed as it ends."""
    seconds = []
    for i in range(args.runs):
        adata = ad.AnnData(X=counts)
        start = time.perf_counter()
        scn2s.pp.denoise(
            adata, method="lowrank", output="factors", lowrank_kwds={"max_rank": args.max_rank}, progress=False, rng=i
        )
        seconds.append(time.perf_counter() - start)
        rank = adata.uns["denoised"]["best_params"]["rank"]
        print(f"  {label}, run {i}: {seconds[-1]:.1f} s, rank {rank}", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--max-rank", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--in-memory", action="store_true", help="also time the same counts in memory, no dask")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    rows = []
    if args.in_memory:
        seconds = run_in_memory(args)
        print(f"  in memory: median {statistics.median(seconds):.1f} s, load average {os.getloadavg()}", flush=True)
    for n_workers in args.workers:
        seconds = run(n_workers, args)
        print(f"  load average: {os.getloadavg()}", flush=True)
        median = statistics.median(seconds)
        rows.append((n_workers, median, args.cells / median))
    print(f"load average after: {os.getloadavg()}")
    if not rows:
        return
    print(f"\n{args.cells} cells x {args.genes} genes, max_rank {args.max_rank}, medians of {args.runs} runs")
    print("| workers (1 thread each) | seconds | cells/s | speed-up |")
    print("|---|---|---|---|")
    for n_workers, median, rate in rows:
        print(f"| {n_workers} | {median:.1f} | {rate:,.0f} | {rows[0][1] / median:.2f} |")


if __name__ == "__main__":
    main()
