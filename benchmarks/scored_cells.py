"""The low-rank family's held-out losses from every cell's held-out molecules and from ``Splits.scored_cells``'.

Above 32,768 cells, the held-out molecules of 32,768 cells drawn from each split's seed score every candidate of
every family (:class:`scn2s.select.Splits`). This runs the rank search of ``simulate(N, 2000, depth=1500, rng=0)``
twice on the same three splits, scored on every cell and on the scored cells, and prints the chosen rank, its loss
per split and the losses around it::

    python benchmarks/scored_cells.py --cells 100000
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
from scipy import sparse

import scn2s
from scn2s.lowrank import search_lowrank
from scn2s.select import Splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--max-rank", type=int, default=50)
    args = parser.parse_args()
    counts = sparse.csr_matrix(scn2s.datasets.simulate(args.cells, 2000, depth=1500, rng=0).X)
    splits = Splits.draw(np.random.default_rng(0), 3, 0.5)
    every = dataclasses.replace(splits, scored_cells=None)
    for name, chosen in (("every cell", every), (f"{splits.n_scored(args.cells):,} cells", splits)):
        began = time.perf_counter()
        losses = search_lowrank(counts, max_rank=args.max_rank, splits=chosen, rng=np.random.default_rng(1)).losses
        mean = losses.mean(axis=0)
        best = int(np.argmin(mean))
        near = range(max(best - 2, 0), min(best + 3, len(mean)))
        print(
            f"{name}: {time.perf_counter() - began:.1f} s; rank {best}, loss {mean[best]:.6f}; "
            f"per split {np.round(losses[:, best], 6).tolist()} (ranks {np.argmin(losses, axis=1).tolist()}); "
            f"ranks {near.start} to {near.stop - 1}: {np.round(mean[near.start : near.stop], 6).tolist()}"
        )


if __name__ == "__main__":
    main()
