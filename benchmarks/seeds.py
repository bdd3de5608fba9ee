"""How much the scores of ``scn2s.pp.denoise`` (default ``method="auto"``) move with its seed.

``benchmarks/peers.py`` runs scn2s once, with the default ``rng=0``. This runs it on the same tasks with the seeds
given (the seed draws the splits, the held-out molecules and the networks' initial weights and batches), scores
each output with the scores of ``peers.py``, and prints a row per seed with the choice, then the median, minimum
and maximum over the seeds.

Run from the repository root (needs the ``benchmarks`` extra)::

    python benchmarks/seeds.py [--tasks sim pbmc1k zheng] [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import Reference, load_task, score, task_parser

COLUMNS = (
    ("mse_cp10k", "MSE CP10k", ".2f"),
    ("poisson_nll", "Poisson NLL", ".4f"),
    ("heldout_sqrt_loss", "held-out sqrt loss", ".5f"),
    ("corr_cp10k_ratio", "corr CP10k ratio", ".2f"),
    ("variance_ratio", "variance / truth", ".2f"),
    ("covariance_ratio", "abs covariance / truth", ".2f"),
    ("ari", "ARI", ".3f"),
)


def run(task_name: str, seed: int, data_dir: Path) -> tuple[dict, str]:
    import anndata as ad

    import scn2s

    task = load_task(task_name, data_dir)
    adata = ad.AnnData(X=task.counts.copy())
    scn2s.pp.denoise(adata, device="cpu", rng=seed, progress=False)
    record = adata.uns["denoised"]
    params = record["best_params"]
    if record["method"] == "lowrank":
        choice = f"lowrank, rank {params['rank']}"
    else:
        posterior = f"posterior x{params['shape_scale']:.3g}" if params["posterior"] else "no posterior"
        choice = f"h{params['hidden']}-b{params['bottleneck']}, {posterior}, {params['epochs']} epochs"
    estimate = np.asarray(adata.layers["denoised"], dtype=np.float64)
    return score(estimate, task, Reference.of(task)), choice


def cell(scores: dict, key: str, fmt: str) -> str:
    value = scores.get(key)
    return "" if value is None else format(value, fmt)


def main() -> None:
    parser = task_parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    header = ["| task | seed | choice | " + " | ".join(label for _, label, _ in COLUMNS) + " |"]
    header.append("|---|---|---|" + "---:|" * len(COLUMNS))
    print("\n".join(header), flush=True)
    lines = []
    for task_name in args.tasks:
        all_scores = []
        for seed in args.seeds:
            scores, choice = run(task_name, seed, args.data_dir)
            all_scores.append(scores)
            lines.append(
                f"| {task_name} | {seed} | {choice} | "
                + " | ".join(cell(scores, key, fmt) for key, _, fmt in COLUMNS)
                + " |"
            )
            print(lines[-1], flush=True)
        for name, reduce in (("median", np.median), ("min", np.min), ("max", np.max)):
            values = {
                key: float(reduce([s[key] for s in all_scores]))
                for key, _, _ in COLUMNS
                if all_scores[0].get(key) is not None
            }
            lines.append(
                f"| {task_name} | {name} | | " + " | ".join(cell(values, key, fmt) for key, _, fmt in COLUMNS) + " |"
            )
    print("\n".join(["", *header, *lines]))


if __name__ == "__main__":
    main()
