"""Time and peak memory of ``scn2s.integrate.harmonize`` (``integrate=True``) as the cells grow.

A synthetic embedding like a low-rank model's scores: ``--dims`` dimensions, ten cell types, four batches that move
each type by an offset of their own. Each size runs in a fresh process (its peak resident memory is the process's),
three times; the median time is reported, with the rounds run and the batch entropy of 30 neighbours of 2,000 cells
before and after (1 is perfect mixing).

    python benchmarks/integrate_scale.py [--cells 10000 100000 1000000] [--dims 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def simulate(n: int, d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    types, groups = rng.integers(0, 10, n), rng.integers(0, 4, n)
    centres = rng.normal(0, 6, (10, d))
    offsets = rng.normal(0, 1.5, (4, 10, d))
    return centres[types] + offsets[groups, types] + rng.normal(0, 0.5, (n, d)), groups


def entropy(embedding: np.ndarray, groups: np.ndarray, rng: np.random.Generator, k: int = 30) -> float:
    from scipy.spatial import cKDTree

    cells = rng.choice(len(groups), size=min(2000, len(groups)), replace=False)
    _, index = cKDTree(embedding).query(embedding[cells], k=k + 1)
    shares = np.stack([(groups[index[:, 1:]] == g).mean(axis=1) for g in range(4)], axis=1)
    logs = np.log(np.where(shares > 0, shares, 1.0))
    return float(-(shares * logs).sum(axis=1).mean() / np.log(4)) + 0.0  # no "-0.000"


def one(n: int, d: int) -> dict:
    from scn2s.integrate import harmonize

    embedding, groups = simulate(n, d, np.random.default_rng(0))
    start = time.perf_counter()
    result = harmonize(embedding, groups, rng=np.random.default_rng(1))
    seconds = time.perf_counter() - start
    rng = np.random.default_rng(2)
    return {
        "cells": n,
        "seconds": seconds,
        "rounds": result.rounds,
        "entropy_before": entropy(embedding, groups, rng),
        "entropy_after": entropy(result.embedding, groups, np.random.default_rng(2)),
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dims", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.dims)))
        return
    print("| cells | seconds (median) | runs | rounds | batch entropy before, after | peak GiB |")
    print("|---|---|---|---|---|---|")
    for n in args.cells:
        runs = []
        for _ in range(args.repeats):
            command = [sys.executable, __file__, "--one", str(n), "--dims", str(args.dims)]
            runs.append(json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout))
        seconds = [r["seconds"] for r in runs]
        last = runs[-1]
        print(
            f"| {n:,} | {np.median(seconds):.1f} | {', '.join(f'{s:.1f}' for s in seconds)} | {last['rounds']} | "
            f"{last['entropy_before']:.3f}, {last['entropy_after']:.3f} | {max(r['peak_gib'] for r in runs):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
