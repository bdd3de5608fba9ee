"""The autoencoder's posterior output against the network's frequencies alone, by held-out loss.

For each task of ``benchmarks/peers.py`` (its input counts only), the counts are split once (``p = 0.5``) and every
default candidate is trained on the training half with and without the posterior (``TrainConfig.posterior``), with
early stopping on the held-out half, as in the search of ``scn2s.pp.denoise``. Printed: the held-out loss of each
(full-input and replica inference), the best epoch and time, and the quantiles of the learned prior shapes.

Run from the repository root (needs the ``benchmarks`` extra for the real tasks' gene selection)::

    python benchmarks/posterior.py [--tasks sim pbmc1k zheng] [--threads N]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from common import load_task, task_parser, training_halves

from scn2s.autoencoder import DEFAULT_CONFIGS
from scn2s.autoencoder.data import CsrBatches
from scn2s.autoencoder.search import config_label
from scn2s.autoencoder.train import TrainConfig, heldout_loss, train


def compare(task_name: str, data_dir: Path) -> list[str]:
    task = load_task(task_name, data_dir)
    train_half, heldout = training_halves(task, 0)
    rows = []
    for raw in DEFAULT_CONFIGS:
        for posterior in (False, True):
            config = TrainConfig(**raw, posterior=posterior)
            start = time.perf_counter()
            result = train(train_half, config, heldout=heldout, device="cpu", seed=1)
            elapsed = time.perf_counter() - start
            replicas = heldout_loss(
                result.model,
                CsrBatches(train_half, "cpu"),
                CsrBatches(heldout, "cpu"),
                1.0,
                mode="replicas",
                generator=torch.Generator().manual_seed(1),
            )
            shape = ""
            if posterior:
                quantiles = np.quantile(result.model.log_shape.detach().exp().numpy(), [0.05, 0.5, 0.95])
                shape = " / ".join(f"{q:.3g}" for q in quantiles)
            rows.append(
                f"| {task_name} | {config_label(config)} | {min(result.heldout_loss):.6f} | {replicas:.6f} | "
                f"{result.best_epoch} | {elapsed:.1f} | {shape} |"
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = task_parser(__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    header = [
        "| task | candidate | held-out loss, full input | held-out loss, replicas | best epoch | time (s) | "
        "prior shape 5% / 50% / 95% |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    print("\n".join(header), flush=True)
    for task_name in args.tasks:
        compare(task_name, args.data_dir)


if __name__ == "__main__":
    main()
