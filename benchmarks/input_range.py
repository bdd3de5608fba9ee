"""Training inputs at a fixed fraction of each cell's molecules against fractions drawn from a range, by held-out loss.

For each task of ``benchmarks/peers.py`` (its input counts only) and each seed, the counts are split once
(``p = 0.5``, ``np.random.default_rng(seed)``) and one candidate is trained on the training half twice, with early
stopping on the held-out half: with every input at ``input_fraction = 0.5`` (``input_range=None``) and with each
cell's fraction drawn afresh every epoch from ``input_range = (0.1, 0.9)`` (the default). Printed: the held-out loss
of each inference mode at its best shape factor, as the search of ``scn2s.pp.denoise`` scores a candidate, the best
epoch and the training time.

Run from the repository root (needs the ``benchmarks`` extra for the real tasks' gene selection)::

    python benchmarks/input_range.py [--tasks sim pbmc1k zheng] [--seeds 0 1 2] [--threads N]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from common import load_task, task_parser, training_halves

from scn2s.autoencoder.data import CsrBatches
from scn2s.autoencoder.search import SHAPE_SCALES, config_label
from scn2s.autoencoder.train import TrainConfig, heldout_loss, train

# the candidate scn2s auto chose for each task in the peers run (benchmarks/RESULTS.md, "Peers")
CANDIDATES = {
    "sim": {"hidden": 128, "bottleneck": 16, "dropout": 0.0, "posterior": False},
    "pbmc1k": {"hidden": 512, "bottleneck": 64, "dropout": 0.2},
    "zheng": {"hidden": 256, "bottleneck": 32, "dropout": 0.1},
}
RANGES = (None, (0.1, 0.9))


def compare(task_name: str, data_dir: Path, seeds: list[int]) -> list[dict]:
    task = load_task(task_name, data_dir)
    rows = []
    for seed in seeds:
        train_half, heldout = training_halves(task, seed)
        data, held = CsrBatches(train_half, "cpu"), CsrBatches(heldout, "cpu")
        for input_range in RANGES:
            config = TrainConfig(**CANDIDATES[task_name], input_range=input_range)
            start = time.perf_counter()
            result = train(train_half, config, heldout=heldout, device="cpu", seed=seed + 1)
            elapsed = time.perf_counter() - start
            scales = SHAPE_SCALES if config.posterior else (1.0,)
            row = {"task": task_name, "seed": seed, "candidate": config_label(config), "epoch": result.best_epoch}
            for mode in ("full", "replicas"):
                losses = heldout_loss(
                    result.model,
                    data,
                    held,
                    1.0,
                    mode=mode,
                    input_fraction=config.input_fraction,
                    n_replicas=config.n_replicas,
                    shape_scales=scales,
                    generator=torch.Generator().manual_seed(seed + 1),
                )
                best = int(np.argmin(losses))
                row[mode] = float(losses[best])
                row[f"{mode}_scale"] = scales[best]
            row["time_s"] = elapsed
            rows.append(row)
            print(
                f"| {task_name} | {seed} | {row['candidate']} | {row['full']:.6f} (x{row['full_scale']:.3g}) | "
                f"{row['replicas']:.6f} (x{row['replicas_scale']:.3g}) | {row['epoch']} | {elapsed:.1f} |",
                flush=True,
            )
    return rows


def main() -> None:
    parser = task_parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print("| task | seed | candidate | held-out loss, full input | held-out loss, replicas | best epoch | time (s) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    rows = [row for name in args.tasks for row in compare(name, args.data_dir, args.seeds)]
    print("\n| task | seeds | lower with the range | held-out loss change, median (min to max) |")
    print("|---|---:|---:|---|")
    for name in args.tasks:
        best = {}
        for row in rows:
            if row["task"] == name:
                best.setdefault(row["seed"], []).append(min(row["full"], row["replicas"]))
        change = np.array([100 * (ranged / fixed - 1) for fixed, ranged in best.values()])
        print(
            f"| {name} | {len(change)} | {int(np.sum(change < 0))} | {np.median(change):+.3f}% "
            f"({change.min():+.3f}% to {change.max():+.3f}%) |"
        )


if __name__ == "__main__":
    main()
