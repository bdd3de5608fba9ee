"""The autoencoder search under torchrun (DDP) vs one process: time, choice and held-out losses.

A correctness check of the distributed path, not a speed benchmark. Run from the repository root::

    python benchmarks/ddp.py                                              # one process
    python -m torch.distributed.run --standalone --nproc_per_node=2 benchmarks/ddp.py   # two, gloo on CPU

Add ``--device cuda`` on GPUs (nccl, one GPU per process).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from scn2s.autoencoder import distributed, fit_autoencoder
from scn2s.datasets import simulate
from scn2s.select import Splits

CONFIGS = [
    {"hidden": 64, "bottleneck": 8, "dropout": 0.0, "max_epochs": 10, "patience": 3, "batch_size": 128},
    {"hidden": 128, "bottleneck": 16, "dropout": 0.1, "max_epochs": 10, "patience": 3, "batch_size": 128},
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--genes", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    if distributed.launched_by_torchrun():
        device = distributed.init_from_env(device)
    counts = simulate(args.cells, args.genes, depth=1000, rng=0).X.tocsr()
    splits = Splits.draw(np.random.default_rng(0), 1, 0.5)
    start = time.perf_counter()
    fit = fit_autoencoder(counts, splits=splits, configs=CONFIGS, device=device, rng=np.random.default_rng(1))
    elapsed = time.perf_counter() - start
    if distributed.is_main_process():
        print(
            json.dumps(
                {
                    "processes": distributed.world_size(),
                    "cells": args.cells,
                    "genes": args.genes,
                    "seconds": round(elapsed, 2),
                    "chosen": int(fit.best),
                    "epochs": int(fit.epochs),
                    "inference": fit.mode,
                    "best_epochs": fit.best_epochs.tolist(),
                    "losses_full": fit.losses_full.round(6).tolist(),
                    "losses_replicas": fit.losses_replicas.round(6).tolist(),
                }
            )
        )
    distributed.destroy()


if __name__ == "__main__":
    main()
