"""``scn2s.pp.calibrate`` on MAGIC and kNN smoothing: the value it chooses against the default and the oracle.

Default mode, on the tasks of ``benchmarks/peers.py`` (the same inputs, targets and error columns): for each
denoiser, the parameter ``calibrate`` chooses (3 splits at ``p = 0.5``, with the depth transfer of
:mod:`scn2s.denoisers`), the package's default, and the oracle grid point (the lowest Poisson NLL against the
target: the truth on the simulation, the held-out counts on real data), each with the Poisson NLL and MSE of
CP10k of ``peers.py`` and its time (``calibrate``: the whole search and the final fit).

``--sweep``: on the simulation, every grid point's true error (:func:`true_error`, what ``calibrate``'s loss
estimates) next to its Poisson NLL, the two criteria side by side.

``--depth``: the shift of the best parameter with depth, on simulations with known rates. For each
simulation, the grid point with the lowest true error (MSE of expected square roots against the truth's,
:func:`true_error`) on the counts and on the counts thinned to half their depth; the exponent ``a`` of
``k_N = k_{N/2} * 2**-a`` (the geometric mean over the simulations) is what :mod:`scn2s.denoisers` uses.

Run from the repository root (needs the ``benchmarks`` extra)::

    python benchmarks/calibrate.py [--tasks sim pbmc1k zheng] [--denoisers knn_smoothing magic]
    python benchmarks/calibrate.py --depth [--denoisers knn_smoothing magic]
    python benchmarks/calibrate.py --sweep [--denoisers knn_smoothing magic]
    python benchmarks/calibrate.py --denoisers magic --params back=square  # a fixed parameter in every call
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from common import load_task, mse_cp10k, poisson_error, task_parser
from scipy import sparse

GRIDS = {
    "knn_smoothing": {"k": [1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100]},
    "magic": {"t": list(range(1, 11))},
}
DEPTH_SIMULATIONS = (
    {"n_cells": 1500, "n_genes": 1000, "depth": 500.0, "rng": 1},
    {"n_cells": 1500, "n_genes": 1000, "depth": 2000.0, "rng": 2},
    {"n_cells": 1500, "n_genes": 1000, "depth": 1000.0, "structure": "trajectory", "rng": 3},
)


def true_error(estimate: np.ndarray, rates: np.ndarray) -> float:
    """Mean squared error of ``m(estimate)`` against ``m(rates)``, the estimate on each cell's true library size.

    ``m`` is :func:`scn2s.loss.sqrt_poisson_mean`: the held-out loss of ``calibrate`` is this error at the held-out
    depth plus a constant, so this is what it estimates.
    """
    from scn2s.loss import sqrt_poisson_mean
    from scn2s.select.calibrate import scale_to_library

    scaled = scale_to_library(np.array(estimate, dtype=np.float64), rates.sum(axis=1))
    return float(np.mean((sqrt_poisson_mean(scaled) - sqrt_poisson_mean(rates)) ** 2))


def dense(values) -> np.ndarray:
    return np.asarray(values.toarray() if sparse.issparse(values) else values, dtype=np.float64)


def depth_shift(names: list[str]) -> None:
    import scn2s
    from scn2s.split import binomial_split

    print("| denoiser | simulation | best at N/2 | best at N | applied at N (after any transfer): true error / best |")
    print("|---|---|---:|---:|---:|")
    for name in names:
        denoiser = getattr(scn2s.denoisers, name)
        ((param, values),) = GRIDS[name].items()
        logs = []
        for spec in DEPTH_SIMULATIONS:
            adata = scn2s.datasets.simulate(**spec)
            counts = sparse.csr_matrix(adata.X, dtype=np.float64)
            rates = np.asarray(adata.layers["rates"], dtype=np.float64)
            half, _ = binomial_split(counts, 0.5, rng=np.random.default_rng(0))
            errors = {}
            for depth, x, truth in (("half", half, rates / 2), ("full", counts, rates)):
                errors[depth] = [true_error(dense(denoiser(x, **{param: v})), truth) for v in values]
            best_half = values[int(np.argmin(errors["half"]))]
            best_full = values[int(np.argmin(errors["full"]))]
            transferred = denoiser.transfer({param: best_half}, 2.0)[param]
            at = true_error(dense(denoiser(counts, **{param: transferred})), rates)
            logs.append(np.log2(best_half / best_full))
            label = ", ".join(f"{k}={v}" for k, v in spec.items())
            print(
                f"| {name} | {label} | {best_half} | {best_full} | {transferred}: {at / min(errors['full']):.4f} |",
                flush=True,
            )
        print(f"| {name} | exponent (mean of log2 ratios) | | | {np.mean(logs):.2f} |", flush=True)


def sweep(names: list[str], data_dir: Path, fixed: dict) -> None:
    import scn2s

    task = load_task("sim", data_dir)
    print("| denoiser | value | true error (sqrt) | Poisson NLL |")
    print("|---|---|---:|---:|")
    for name in names:
        denoiser = getattr(scn2s.denoisers, name)
        ((param, values),) = GRIDS[name].items()
        for value in values:
            estimate = dense(denoiser(task.counts, **fixed, **{param: value}))
            error, nll = true_error(estimate, task.target), poisson_error(estimate, task)
            print(f"| {name} | {param}={value} | {error:.5f} | {nll:.5f} |", flush=True)


def compare(task_names: list[str], names: list[str], data_dir: Path, fixed: dict | None = None) -> None:
    fixed = fixed or {}
    import anndata as ad

    import scn2s

    print("| task | denoiser | setting | value | Poisson NLL | MSE CP10k | time (s) |")
    print("|---|---|---|---|---:|---:|---:|")
    for task_name in task_names:
        task = load_task(task_name, data_dir)
        for name in names:
            denoiser = getattr(scn2s.denoisers, name)
            ((param, values),) = GRIDS[name].items()
            rows = {}
            adata = ad.AnnData(X=task.counts.copy())
            start = time.perf_counter()
            grid = GRIDS[name] | {key: [value] for key, value in fixed.items()}
            scn2s.pp.calibrate(adata, denoiser, grid, progress=False)
            elapsed = time.perf_counter() - start
            chosen = adata.uns["denoised"]["best_params"][param]
            split_choice = adata.uns["denoised"]["selection"][name][f"split_{param}"]
            rows["calibrate"] = (f"{chosen} (at p N: {split_choice})", np.asarray(adata.layers["denoised"]), elapsed)
            default = denoiser.defaults[param]
            start = time.perf_counter()
            estimate = dense(denoiser(task.counts, **fixed))
            rows["default"] = (str(default), estimate, time.perf_counter() - start)
            grid_scores = []
            for value in values:
                start = time.perf_counter()
                estimate = dense(denoiser(task.counts, **fixed, **{param: value}))
                grid_scores.append((poisson_error(estimate, task), value, estimate, time.perf_counter() - start))
            _, value, estimate, seconds = min(grid_scores, key=lambda s: s[0])
            rows["oracle"] = (str(value), estimate, seconds)
            for setting, (label, estimate, seconds) in rows.items():
                estimate = np.asarray(estimate, dtype=np.float64)
                print(
                    f"| {task_name} | {name} | {setting} | {param}={label} | {poisson_error(estimate, task):.4f} | "
                    f"{mse_cp10k(estimate, task):.2f} | {seconds:.1f} |",
                    flush=True,
                )


def main() -> None:
    parser = task_parser(__doc__.splitlines()[0])
    parser.add_argument("--denoisers", nargs="+", choices=list(GRIDS), default=list(GRIDS))
    parser.add_argument("--depth", action="store_true", help="measure the shift of the best parameter with depth")
    parser.add_argument("--sweep", action="store_true", help="true error and Poisson NLL of every grid point (sim)")
    parser.add_argument("--params", nargs="+", default=[], help="KEY=VALUE passed to every call (strings)")
    args = parser.parse_args()
    fixed = dict(item.split("=", 1) for item in args.params)
    if args.depth:
        depth_shift(args.denoisers)
    elif args.sweep:
        sweep(args.denoisers, args.data_dir, fixed)
    else:
        compare(args.tasks, args.denoisers, args.data_dir, fixed)


if __name__ == "__main__":
    main()
