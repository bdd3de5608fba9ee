"""Peers side by side: scn2s against MAGIC and scVI on held-out molecules and simulated truth.

The parent builds each task once and saves its input counts to a scratch folder. Every method runs in a
fresh interpreter (``--worker``) that loads the counts, times only the method (``time.perf_counter``),
records its peak resident set (``VmHWM``) and saves its estimate as expected counts, cells x genes; the
parent scores it. Results are cached in the ``--out`` JSON, so a rerun of one method
(``--methods scvi``) leaves the others alone. ``--tables`` prints the Markdown tables of the cache.
``--keep DIR`` keeps every estimate (``DIR/<task>/<method>.npy``); ``--rescore DIR`` scores kept estimates
again without running the methods (their times and records stay as they were).

Real data has no truth, only the held-out molecules, so two of the scores are estimates of the error and of
the correlations *of the truth* that are unbiased under binomial thinning: given a cell's held-out total
``s``, its held-out counts are multinomial, so the noise of ``cp10k(target)`` has a known covariance that is
estimated without bias from the counts and subtracted (see ``mse_cp10k`` and ``truth_corr``).

Tasks (each restricted to one gene set shared by all methods):

``sim``
    ``scn2s.datasets.simulate(3000, 2000, depth=1500, rng=0)``, all genes; target: the true rates.
``pbmc1k``
    ``pbmc1k_10x_v3_906cells`` thinned to 20% (input) vs the other 80% (target); the 2000 most variable
    genes of the input (``seurat_v3``).
``zheng``
    ``zheng2017_purified_pbmc_mix_3874`` thinned to 50% vs the other half; 2000 genes as above; clustering
    agreement with ``obs["celltype"]``.

Needs the ``benchmarks`` extra (``pip install -e ".[benchmarks]"``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    ERROR_LABELS,
    LABELS,
    LOWRANK_REPEATS,
    METHODS,
    RESULTS,
    TASKS,
    Reference,
    Task,
    choice,
    load_task,
    mse_cp10k_check,
    peak_rss_mib,
    run_method,
    score,
    task_parser,
    truth_corr_check,
)
from scipy import sparse


def worker(args: argparse.Namespace) -> None:
    """Run one method on the task saved in ``args.scratch``; write its estimate, time and peak RSS there."""
    scratch = args.scratch
    meta = json.loads((scratch / "task.json").read_text())
    counts = sparse.load_npz(scratch / "counts.npz").tocsr()
    # only the oracle reads the target
    target = np.load(scratch / "target.npy") if args.method == "best_rank" else np.empty((0, 0))
    task = Task(meta["name"], counts, target, target_is_truth=meta["target_is_truth"])
    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)
    start = time.perf_counter()
    estimate, info = run_method(args.method, task)
    elapsed = time.perf_counter() - start
    np.save(scratch / "estimate.npy", estimate.astype(np.float32))
    info["torch_threads"] = args.torch_threads
    record = {"time_s": elapsed, "peak_rss_mib": peak_rss_mib(), "info": info}
    (scratch / "record.json").write_text(json.dumps(record))


def save_task(task: Task, scratch: Path) -> None:
    sparse.save_npz(scratch / "counts.npz", task.counts, compressed=False)
    np.save(scratch / "target.npy", task.target)
    (scratch / "task.json").write_text(json.dumps({"name": task.name, "target_is_truth": task.target_is_truth}))


def spawn(method: str, scratch: Path, torch_threads: int | None) -> tuple[np.ndarray, dict]:
    """Run one method in a fresh interpreter on the task saved in ``scratch``; return its estimate and record."""
    command = [sys.executable, __file__, "--worker", "--method", method, "--scratch", str(scratch)]
    if torch_threads is not None:
        command += ["--torch-threads", str(torch_threads)]
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        msg = f"{method} failed with exit code {result.returncode}."
        raise RuntimeError(msg)
    return np.load(scratch / "estimate.npy"), json.loads((scratch / "record.json").read_text())


def benchmark(
    task_name: str,
    methods: list[str],
    data_dir: Path,
    out: Path,
    torch_threads: int | None = None,
    keep: Path | None = None,
) -> None:
    task = load_task(task_name, data_dir)
    reference = Reference.of(task)
    entry = {"info": task_info(task), "methods": {}}
    repeats = {"lowrank": LOWRANK_REPEATS}
    with tempfile.TemporaryDirectory() as scratch:
        save_task(task, Path(scratch))
        for method in methods:
            runs = []
            for _ in range(repeats.get(method, 1)):
                runs.append(spawn(method, Path(scratch), torch_threads))
                record = runs[-1][1]
                print(f"{task_name} {method}: {record['time_s']:.1f} s, {record['peak_rss_mib']:.0f} MiB", flush=True)
            estimate, record = runs[0]
            if keep is not None:
                (keep / task_name).mkdir(parents=True, exist_ok=True)
                np.save(keep / task_name / f"{method}.npy", estimate)
            entry["methods"][method] = score(estimate.astype(np.float64), task, reference) | {
                "time_s": float(np.median([r["time_s"] for _, r in runs])),
                "times_s": [r["time_s"] for _, r in runs],
                "peak_rss_mib": float(np.median([r["peak_rss_mib"] for _, r in runs])),
                "info": record["info"],
            }
            save_result(out, task_name, method, entry)


def rescore(task_name: str, data_dir: Path, out: Path, keep: Path) -> None:
    """Score the estimates kept in ``keep`` again; times, memory and records stay as ``out`` has them."""
    task = load_task(task_name, data_dir)
    reference = Reference.of(task)
    results = json.loads(out.read_text())
    entry = {"info": task_info(task), "methods": results[task_name]["methods"]}
    for path in sorted((keep / task_name).glob("*.npy")):
        method = path.stem
        entry["methods"][method] |= score(np.load(path).astype(np.float64), task, reference)
        save_result(out, task_name, method, entry)


def task_info(task: Task) -> dict:
    if task.name == "sim":
        return task.info | {"truth_corr_check": truth_corr_check(task), "mse_cp10k_check": mse_cp10k_check(task)}
    return task.info


def save_result(out: Path, task_name: str, method: str, entry: dict) -> None:
    """Write one method's result into ``out``, keeping what other runs wrote there meanwhile."""
    results = json.loads(out.read_text()) if out.exists() else {}
    saved = results.setdefault(task_name, {"methods": {}})
    saved["info"] = entry["info"]
    saved["methods"][method] = entry["methods"][method]
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out)


# --- tables ------------------------------------------------------------------------------------------------


def tables(results: dict) -> str:
    """Two Markdown tables a task (errors; correlations, clusters and cost) and the simulation's estimator check."""
    blocks = []
    for task_name in TASKS:
        if task_name not in results:
            continue
        entry = results[task_name]
        methods = {m: entry["methods"][m] for m in METHODS if m in entry["methods"]}
        real = any(m.get("heldout_sqrt_loss") is not None for m in methods.values())
        clustered = any("ari" in m for m in methods.values())
        versus = "held-out estimate of truth" if real else "truth"
        errors = [f"| method | MSE CP10k ({versus}) | Poisson NLL |" + (" held-out sqrt loss |" if real else "")]
        errors[0] += f" MSE sqrt CP10k (vs {'held-out counts' if real else 'truth'}) | choice |"
        others = ["| method | mean abs corr CP10k (truth) | ratio | variance / truth | abs covariance / truth |"]
        others[0] += " slope of truth on estimate | error / truth variance | mean abs corr log1p (target) | ratio |"
        others[0] += " ARI | NMI | clusters |" if clustered else ""
        others[0] += " time (s) | peak RSS (MiB) |"
        for rows in (errors, others):
            rows.append("|" + "---|" * (rows[0].count("|") - 1))
        for method, m in methods.items():
            row = f"| {LABELS[method]} | {m['mse_cp10k']:.2f} | {m['poisson_nll']:.4f} |"
            row += f" {m['heldout_sqrt_loss']:.5f} |" if real else ""
            errors.append(row + f" {m['mse_sqrt_cp10k']:.4f} | {choice(method, m['info'])} |")
            row = f"| {LABELS[method]} | {m['corr_cp10k']:.3f} ({m['corr_cp10k_truth']:.3f})"
            row += f" | {m['corr_cp10k_ratio']:.2f} | {m['variance_ratio']:.2f} | {m['covariance_ratio']:.2f} |"
            row += f" {m['calibration_slope']:.2f} | {m['error_ratio']:.2f} |"
            row += f" {m['corr']:.3f} ({m['corr_target']:.3f}) | {m['corr_ratio']:.2f} |"
            if clustered:
                row += f" {m['ari']:.3f} | {m['nmi']:.3f} | {m['n_clusters']} |"
            others.append(row + f" {m['time_s']:.1f} | {m['peak_rss_mib']:.0f} |")
        info = {k: v for k, v in entry["info"].items() if not k.endswith("_check")}
        block = f"**{task_name}** ({json.dumps(info)})\n\n" + "\n".join(errors) + "\n\n"
        if "best_per_error" in methods.get("best_rank", {}).get("info", {}):
            best = methods["best_rank"]["info"]["best_per_error"]
            block += "Best fixed rank for each error (oracle, ranks 0-50): " + "; ".join(
                f"{ERROR_LABELS[name]} rank {b['rank']} ({b['value']:.5g})" for name, b in best.items()
            )
            block += ".\n\n"
        block += "\n".join(others)
        if "mse_cp10k_check" in entry["info"]:
            block += "\n\n" + _check_table(entry["info"]["mse_cp10k_check"], MSE_CHECK_COLUMNS)
        if "truth_corr_check" in entry["info"]:
            block += "\n\n" + _check_table(entry["info"]["truth_corr_check"], CORR_CHECK_COLUMNS)
        blocks.append(block)
    return "\n\n".join(blocks)


MSE_CHECK_COLUMNS = (
    ("simulated counts split at p, held-out half as target", "p", "g"),
    ("estimate", "estimate", ""),
    ("MSE CP10k, exact", "exact", ".2f"),
    ("held-out estimate", "held_out_estimate", ".2f"),
)
CORR_CHECK_COLUMNS = (
    ("Poisson counts of the simulated truth, UMIs per cell", "umis_per_cell", ".0f"),
    ("truth", "truth", ".3f"),
    ("counts", "counts", ".3f"),
    ("noise-corrected estimate", "estimate", ".3f"),
)


def _check_table(rows: list[dict], columns: tuple[tuple[str, str, str], ...]) -> str:
    """Markdown table of ``rows``, one column per ``(title, key, format)``."""
    lines = ["| " + " | ".join(title for title, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(format(r[key], spec) for _, key, spec in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = task_parser(__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--out", type=Path, default=RESULTS / "peers.json")
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads in each worker (default: torch's)")
    parser.add_argument("--keep", type=Path, help="keep every estimate in this folder (<task>/<method>.npy)")
    parser.add_argument("--rescore", type=Path, help="score the estimates kept in this folder again, run nothing")
    parser.add_argument("--tables", action="store_true", help="print the tables of --out and exit")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.rescore is not None:
        for task_name in args.tasks:
            rescore(task_name, args.data_dir, args.out, args.rescore)
    elif not args.tables:
        for task_name in args.tasks:
            benchmark(task_name, args.methods, args.data_dir, args.out, args.torch_threads, args.keep)
    print(tables(json.loads(args.out.read_text()) if args.out.exists() else {}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
