"""The factor on the autoencoder's prior shapes: the held-out loss that chooses it, and what it does to the output.

For each task of ``benchmarks/peers.py``, the autoencoder search of ``scn2s.pp.denoise`` runs on the task's input
(``scn2s.autoencoder.fit_autoencoder`` on one split at ``p = 0.5``, default candidates), and the chosen network's output
on the full input is then written with every factor of a grid in place of the chosen one. Printed, per factor: the
held-out loss of the search's split (what chooses the factor; ``SHAPE_SCALES`` only), and the scores of
``peers.py`` for the output (MSE CP10k, Poisson NLL and the held-out sqrt loss against the task's target, the
correlation ratio of the 200 most variable genes and its split into variance and covariance, ARI on zheng).
A smaller factor gives the cell's own counts more weight; a larger one the network's frequencies.

Run from the repository root (needs the ``benchmarks`` extra)::

    python benchmarks/shape_factor.py [--tasks sim pbmc1k zheng]
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from common import Reference, load_task, score, task_parser

from scn2s.autoencoder import fit_autoencoder
from scn2s.autoencoder.search import SHAPE_SCALES, config_label
from scn2s.select import Splits

FACTORS = (0.0625, 0.125, *SHAPE_SCALES)


def rows(task_name: str, data_dir: Path) -> list[str]:
    task = load_task(task_name, data_dir)
    reference = Reference.of(task)
    split_rng, fit_rng = np.random.default_rng(0).spawn(2)
    fit = fit_autoencoder(task.counts, splits=Splits.draw(split_rng, 1, 0.5), device="cpu", rng=fit_rng)
    config = fit.configs[fit.best]
    print(
        f"{task_name}: {config_label(config)}, {fit.epochs} epochs, {fit.mode} inference, factor {fit.shape_scale:g}",
        flush=True,
    )
    if not config.posterior:
        return [f"| {task_name} | (chosen without the posterior: no factor) | | | | | | | | |"]
    split_loss = dict(zip(SHAPE_SCALES, fit.losses_by_scale[int(fit.mode == "replicas"), 0, fit.best], strict=True))
    chosen, out = fit.shape_scale, []
    for factor in FACTORS:
        scores = score(replace(fit, shape_scale=factor).reconstruct(slice(None)), task, reference)
        loss = f"{split_loss[factor]:.6f}" if factor in split_loss else ""
        heldout = "" if scores["heldout_sqrt_loss"] is None else f"{scores['heldout_sqrt_loss']:.5f}"
        ari = f"{scores['ari']:.3f}" if "ari" in scores else ""
        mark = " (chosen)" if factor == chosen else ""
        out.append(
            f"| {task_name} | {factor:.3g}{mark} | {loss} | {scores['mse_cp10k']:.2f} | {scores['poisson_nll']:.4f} | "
            f"{heldout} | {scores['corr_cp10k_ratio']:.2f} | {scores['variance_ratio']:.2f} | "
            f"{scores['covariance_ratio']:.2f} | {ari} |"
        )
        print(out[-1], flush=True)
    return out


def main() -> None:
    parser = task_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    header = [
        "| task | factor | held-out loss of the split | MSE CP10k | Poisson NLL | held-out sqrt loss | "
        "corr CP10k ratio | variance / truth | abs covariance / truth | ARI |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(header), flush=True)
    table = [line for task_name in args.tasks for line in rows(task_name, args.data_dir)]
    print("\n".join(["", *header, *table]))


if __name__ == "__main__":
    main()
