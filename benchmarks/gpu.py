"""Autoencoder training throughput and ``method="auto"`` end to end on a CUDA device, with a CPU check.

Run by ``benchmarks/gpu.sh`` on a fresh CUDA machine; runs on the CPU too at small sizes (``--device cpu``), to
test this script. For each size (simulated cells x 2,000 genes, built in blocks of 100,000 cells):

- training throughput: cells per second of the default candidate (``h256-b32``), whole passes, after one pass to
  warm up;
- ``scn2s.pp.denoise`` with the defaults (``method="auto"``) on the device: seconds and ``uns["timings"]``.

Then the check: ``denoise(method="autoencoder")`` on the first size, on the device and on the CPU with the same
seed; the held-out loss of the chosen candidate on the device must be within ``--tolerance`` (relative) of the
CPU's (bfloat16 autocast on CUDA, float32 on the CPU). Prints each result as it comes and writes them all to
``--json``; exits 1 if the check fails.

    python benchmarks/gpu.py --sizes 10000 100000 1000000 --json gpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from scipy import sparse

BLOCK = 100_000


def counts_of(n_cells: int, n_genes: int = 2000) -> sparse.csr_matrix:
    """Simulated counts, in blocks of at most 100,000 cells (each block its own seed)."""
    import scn2s

    blocks = []
    for k, start in enumerate(range(0, n_cells, BLOCK)):
        size = min(BLOCK, n_cells - start)
        blocks.append(sparse.csr_matrix(scn2s.datasets.simulate(size, n_genes, depth=1500, rng=k).X))
    return sparse.vstack(blocks, format="csr")


def throughput(counts: sparse.csr_matrix, device: str, passes: int) -> float:
    """Training cells per second of the default candidate, whole passes, after one warm-up pass."""
    import torch

    from scn2s.autoencoder.train import TrainConfig, Trainer

    trainer = Trainer(counts, TrainConfig(epoch_cells=None), device=device, seed=0)
    trainer.advance(1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.advance(passes)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return passes * counts.shape[0] / (time.perf_counter() - start)


def denoise(counts: sparse.csr_matrix, device: str, **kwargs) -> dict:
    import anndata as ad

    import scn2s

    adata = ad.AnnData(X=counts)
    start = time.perf_counter()
    scn2s.pp.denoise(adata, device=device, progress=False, rng=0, **kwargs)
    record = adata.uns["denoised"]
    out = {"seconds": time.perf_counter() - start, "family": str(record["method"])}
    out["timings"] = {k: float(v) for k, v in record["timings"].items()}
    auto = record["selection"]["autoencoder"]
    chosen = list(auto["grid"]["config"]).index(auto["chosen"])
    out |= {"chosen": str(auto["chosen"]), "heldout_loss": float(auto["loss_mean"][chosen])}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--skip-auto-above", type=int, default=None, help="time only training above this size")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import torch

    results: dict = {"device": args.device, "torch": torch.__version__, "sizes": {}}
    if args.device.startswith("cuda"):
        results["device_name"] = torch.cuda.get_device_name(0)
    print(json.dumps({k: v for k, v in results.items() if k != "sizes"}), flush=True)

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))

    for n in args.sizes:
        start = time.perf_counter()
        counts = counts_of(n)
        entry = {"simulate_seconds": time.perf_counter() - start, "nnz": int(counts.nnz)}
        entry["train_cells_per_second"] = throughput(counts, args.device, args.passes)
        print(n, json.dumps(entry), flush=True)
        if args.skip_auto_above is None or n <= args.skip_auto_above:
            entry["auto"] = denoise(counts, args.device)
            print(n, "auto", json.dumps(entry["auto"]), flush=True)
        results["sizes"][str(n)] = entry
        save()
    counts = counts_of(args.sizes[0])
    on_device = denoise(counts, args.device, method="autoencoder")
    on_cpu = denoise(counts, "cpu", method="autoencoder")
    gap = abs(on_device["heldout_loss"] - on_cpu["heldout_loss"]) / on_cpu["heldout_loss"]
    results["check"] = {
        "cells": args.sizes[0],
        "device": on_device,
        "cpu": on_cpu,
        "relative_gap": gap,
        "tolerance": args.tolerance,
        "passed": bool(gap <= args.tolerance),
    }
    save()
    print("check", json.dumps(results["check"]), flush=True)
    return 0 if gap <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
