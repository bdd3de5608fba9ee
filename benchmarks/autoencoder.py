"""Autoencoder checks: noise memorisation without a fixed held-out set, inference mode, throughput.

Run from the repository root::

    python benchmarks/autoencoder.py [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from scn2s.autoencoder.data import CsrBatches
from scn2s.autoencoder.train import TrainConfig, heldout_loss, resolve_device, train
from scn2s.datasets import simulate
from scn2s.split import binomial_split


def memorisation(device: torch.device) -> list[str]:
    """Train 300 epochs with no early stopping: held-out loss vs the training loss on fresh splits."""
    adata = simulate(1000, 300, structure="trajectory", depth=1000, rng=0)
    train_half, heldout = binomial_split(adata.X, 0.5, rng=np.random.default_rng(0))
    config = TrainConfig(hidden=512, bottleneck=64, dropout=0.0, max_epochs=300, patience=10**6)
    result = train(train_half, config, heldout=heldout, device=device, seed=0)
    held, trained = np.array(result.heldout_loss), np.array(result.train_loss)
    rows = [
        "| epoch | training loss (fresh splits of the training half) | held-out loss |",
        "| ---: | ---: | ---: |",
    ]
    for epoch in (1, 10, 25, result.best_epoch, 100, 150, 200, 250, 300):
        rows.append(f"| {epoch} | {trained[epoch - 1]:.5f} | {held[epoch - 1]:.5f} |")
    rows.append("")
    rows.append(
        f"Best held-out epoch {result.best_epoch}; after 300 epochs the held-out loss is "
        f"{100 * (held[-1] / held.min() - 1):.1f}% above its minimum while the training loss kept falling "
        f"({trained[result.best_epoch - 1]:.5f} -> {trained[-1]:.5f})."
    )
    return rows


def inference_modes(device: torch.device) -> list[str]:
    """Held-out loss of the best epoch with all molecules as input vs the average of thinned replicas."""
    rows = ["| data | epochs | full input | thinned replicas (8) | better |", "| --- | ---: | ---: | ---: | --- |"]
    cases = {
        "types 2000x1000": simulate(2000, 1000, rng=1),
        "trajectory 1000x300": simulate(1000, 300, structure="trajectory", depth=1000, rng=0),
        "sqrt_linear 1000x300": simulate(1000, 300, structure="sqrt_linear", rank=3, depth=1000, rng=0),
    }
    for name, adata in cases.items():
        train_half, heldout = binomial_split(adata.X, 0.5, rng=np.random.default_rng(0))
        config = TrainConfig(max_epochs=150, patience=15)
        result = train(train_half, config, heldout=heldout, device=device, seed=0)
        full = min(result.heldout_loss)
        replicas = heldout_loss(
            result.model,
            CsrBatches(train_half, device),
            CsrBatches(heldout, device),
            1.0,
            mode="replicas",
            generator=torch.Generator(device=device).manual_seed(0),
        )
        better = "replicas" if replicas < full else "full"
        rows.append(f"| {name} | {result.best_epoch} | {full:.6f} | {replicas:.6f} | {better} |")
    return rows


THROUGHPUT_SIZES = ((10_000, 2000), (5000, 10_000))


def throughput(device: torch.device, sizes=THROUGHPUT_SIZES) -> list[str]:
    """Training cells per second (median of 3 runs of 5 epochs), for each cells x genes size."""
    rows = ["| cells x genes | hidden/bottleneck | cells/s (median of 3) | runs (s) |", "| --- | --- | ---: | --- |"]
    for n_cells, n_genes in sizes:
        adata = simulate(n_cells, n_genes, rng=0)
        config = TrainConfig(hidden=256, bottleneck=32, batch_size=256)
        times = []
        for run in range(3):
            start = time.perf_counter()
            train(adata.X, config, epochs=5, device=device, seed=run)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        rate = 5 * n_cells / float(np.median(times))
        runs = ", ".join(f"{t:.1f}" for t in times)
        rows.append(f"| {n_cells} x {n_genes} | 256/32 | {rate:,.0f} | {runs} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--only", choices=("memorisation", "inference", "throughput"), help="run one part (default: all three)"
    )
    parser.add_argument(
        "--sizes",
        help="throughput sizes as cellsxgenes, comma-separated (default: 10000x2000,5000x10000)",
    )
    args = parser.parse_args()
    sizes = THROUGHPUT_SIZES
    if args.sizes:
        sizes = tuple(tuple(int(v) for v in size.split("x")) for size in args.sizes.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads\n")
    for part, title, section in (
        ("memorisation", "Noise memorisation without early stopping", memorisation),
        ("inference", "Inference mode", inference_modes),
        ("throughput", "Training throughput", lambda device: throughput(device, sizes)),
    ):
        if args.only not in (None, part):
            continue
        print(f"### {title}\n")
        print("\n".join(section(device)), "\n", flush=True)


if __name__ == "__main__":
    main()
