"""How much the scores of ``scn2s.pp.denoise`` (default ``method="auto"``) move with its seed.

``benchmarks/peers.py`` runs scn2s once, with the default ``rng=0``. This runs it on the same tasks with the seeds
given (the seed draws the splits, the held-out molecules and the networks' initial weights and batches), scores
each output with the scores of ``peers.py``, and prints a row per seed with the choice, then the median, minimum
and maximum over the seeds.

Run from the repository root (needs the ``benchmarks`` extra)::

    python benchmarks/seeds.py [--tasks sim pbmc1k zheng] [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import numpy as np
from common import Reference, choice, load_task, scn2s_runner, score, task_parser

COLUMNS = (
    ("mse_cp10k", "MSE CP10k", ".2f"),
    ("poisson_nll", "Poisson NLL", ".4f"),
    ("heldout_sqrt_loss", "held-out sqrt loss", ".5f"),
    ("corr_cp10k_ratio", "corr CP10k ratio", ".2f"),
    ("variance_ratio", "variance / truth", ".2f"),
    ("covariance_ratio", "abs covariance / truth", ".2f"),
    ("ari", "ARI", ".3f"),
)


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
        task = load_task(task_name, args.data_dir)
        reference = Reference.of(task)
        all_scores = []
        for seed in args.seeds:
            estimate, info = scn2s_runner("auto", rng=seed)(task)
            scores = score(estimate, task, reference)
            all_scores.append(scores)
            lines.append(
                f"| {task_name} | {seed} | {choice('auto', info)} | "
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
