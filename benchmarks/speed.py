"""Time of ``scn2s.pp.denoise(method="auto")`` and where it goes, side by side with another checkout.

Each run is a fresh process (``--trees``: the checkouts whose ``scn2s`` is imported, by path; the first is the
reference). Tasks: ``pbmc1k`` and ``zheng`` as in ``benchmarks/peers.py`` (scored with its scores: held-out loss,
Poisson NLL, noise-corrected MSE), and ``simN`` (``scn2s.datasets.simulate(N, 2000)``, scored against the truth).
The checkouts run at the same time, seed by seed, so that the load of the machine falls on all of them alike.
Prints one row per run (wall and CPU seconds, the choice, the scores, the breakdown of
``uns["denoised"]["timings"]``) and the medians per task and checkout, with the ratios of times to the first.

Run from the repository root (needs the ``benchmarks`` extra)::

    python benchmarks/speed.py --tasks pbmc1k zheng --seeds 0 1 2 --trees /path/to/base .
    python benchmarks/speed.py --tasks sim1000 sim10000 --seeds 0 --trees .
    python benchmarks/speed.py --tasks pbmc1k zheng --seeds 0 1 2 --trees /path/to/base . scvi

``scvi`` in ``--trees`` adds scVI's default training (scvi-tools, ``benchmarks/common.py``; its own seed 0 whatever
the seed) on the same task at the same time, timed and scored alike. ``PATH:NAME`` in ``--trees`` runs that checkout
with the keywords of ``--variant NAME=JSON`` passed to ``denoise``, e.g. one candidate of the autoencoder::

    python benchmarks/speed.py --tasks pbmc1k --trees /path/to/base . .:h128 \\
        --variant 'h128={"autoencoder_kwds": {"configs": [{"hidden": 128, "bottleneck": 16, "dropout": 0}]}}'
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCVI = "scvi"  # in --trees: scVI's default training on the task, timed beside the checkouts
SCORES = (
    ("heldout_sqrt_loss", "held-out loss", ".5f"),
    ("poisson_nll", "Poisson NLL", ".4f"),
    ("mse_cp10k", "MSE", ".2f"),
)


def worker(task_name: str, seed: int, data_dir: Path, out: Path) -> None:
    sys.path.insert(0, str(HERE))
    import anndata as ad
    from peers import Reference, load_task, score
    from scipy import sparse

    import scn2s

    if os.environ.get("SPEED_METHOD") == SCVI:
        scvi_worker(task_name, data_dir, out)
        return
    if task_name.startswith("sim"):
        sim = scn2s.datasets.simulate(int(task_name[3:]), 2000, depth=1500, rng=0)
        counts, target = sparse.csr_matrix(sim.X), None
    else:
        task = load_task(task_name, data_dir)
        counts = task.counts
    adata = ad.AnnData(X=counts.copy())
    kwds = json.loads(os.environ.get("SPEED_KWDS") or "{}")
    start = time.perf_counter()
    scn2s.pp.denoise(adata, rng=seed, progress=False, device="cpu", **kwds)
    seconds = time.perf_counter() - start
    record = adata.uns["denoised"]
    entry = {
        "seconds": seconds,
        "family": str(record["method"]),
        "best_params": {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in record["best_params"].items()},
        "timings": {k: float(v) for k, v in record["timings"].items()},
        "scn2s": scn2s.__file__,
        "kwds": kwds,
    }
    estimate = np.asarray(adata.layers["denoised"], dtype=np.float64)
    if task_name.startswith("sim"):
        target = np.asarray(sim.layers["rates"], dtype=np.float64)
        entry["scores"] = {"mse_truth_rates": float(np.mean((estimate - target) ** 2))}
    else:
        scores = score(estimate, task, Reference.of(task))
        entry["scores"] = {key: scores.get(key) for key, _, _ in SCORES}
    out.write_text(json.dumps(entry))


def scvi_worker(task_name: str, data_dir: Path, out: Path) -> None:
    """scVI's default training on the task (``benchmarks/common.py``'s ``scvi`` method, seed 0), timed and scored."""
    from common import run_method
    from peers import Reference, load_task, score

    task = load_task(task_name, data_dir)
    start = time.perf_counter()
    estimate, info = run_method("scvi", task)
    seconds = time.perf_counter() - start
    scores = score(estimate, task, Reference.of(task))
    entry = {
        "seconds": seconds,
        "family": "scvi",
        "best_params": info,
        "timings": {},
        "scores": {key: scores.get(key) for key, _, _ in SCORES},
    }
    out.write_text(json.dumps(entry))


def checkout(tree: str) -> tuple[Path, str]:
    """The path and the variant's name of a ``--trees`` entry (``PATH`` or ``PATH:NAME``)."""
    path, _, name = tree.partition(":")
    return Path(path), name


def run(
    trees: list[str], task: str, seed: int, data_dir: Path, threads: int | None, variants: dict[str, dict]
) -> list[dict]:
    """One run per checkout, all at once (the load falls on all alike); each entry with its process's CPU seconds."""
    with tempfile.TemporaryDirectory() as scratch:
        running = {}
        for k, tree in enumerate(trees):
            path, name = checkout(trees[0] if tree == SCVI else tree)  # scVI's run imports the first checkout's scn2s
            env = dict(
                os.environ,
                PYTHONPATH=str(path.resolve()),
                SPEED_METHOD=SCVI if tree == SCVI else "",
                SPEED_KWDS=json.dumps(variants[name]) if name and tree != SCVI else "",
            )
            if threads:
                env |= {"OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            out = Path(scratch) / f"{k}.json"
            command = [sys.executable, __file__, "--worker", task, str(seed), str(data_dir), str(out)]
            running[subprocess.Popen(command, env=env).pid] = (k, out)
        entries = [None] * len(trees)
        while running:
            pid, status, usage = os.wait4(-1, 0)
            if pid not in running:
                continue
            k, out = running.pop(pid)
            if status != 0:
                msg = f"the run of {trees[k]} on {task} (seed {seed}) failed"
                raise RuntimeError(msg)
            entries[k] = json.loads(out.read_text()) | {"cpu_seconds": usage.ru_utime + usage.ru_stime}
        return entries


def breakdown(timings: dict) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in timings.items())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["pbmc1k", "zheng"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trees", nargs="+", default=[str(HERE.parent)], help="PATH, PATH:NAME (a variant) or scvi")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME=JSON", help="keywords of denoise for PATH:NAME"
    )
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs (default: inherited)")
    parser.add_argument("--json", type=Path, default=None, help="write every run's entry here")
    args = parser.parse_args()
    variants = {}
    for spec in args.variant:
        name, _, kwds = spec.partition("=")
        variants[name] = json.loads(kwds)
    unknown = {checkout(t)[1] for t in args.trees if t != SCVI} - set(variants) - {""}
    if unknown:
        parser.error(f"no --variant for {sorted(unknown)}")
    results = []
    print(f"load average before: {os.getloadavg()}", flush=True)
    for task in args.tasks:
        for seed in args.seeds:
            entries = run(args.trees, task, seed, args.data_dir, args.threads, variants)
            for tree, entry in zip(args.trees, entries, strict=True):
                entry |= {"task": task, "seed": seed, "tree": str(tree)}
                results.append(entry)
                scores = " | ".join(
                    format(entry["scores"][k], f) if entry["scores"].get(k) is not None else "" for k, _, f in SCORES
                )
                print(
                    f"| {task} | {seed} | {tree} | {entry['seconds']:.1f} | {entry['cpu_seconds']:.1f} | "
                    f"{entry['family']} {entry['best_params']} | {scores} | {breakdown(entry['timings'])} |",
                    flush=True,
                )
    print(f"load average after: {os.getloadavg()}")
    header = "| task | checkout | seconds (median) | time / first | CPU seconds (median) | CPU / first | "
    print("\n" + header + " | ".join(s[1] for s in SCORES) + " |")
    print("|---|---|---:|---:|---:|---:|" + "---:|" * len(SCORES))
    for task in args.tasks:
        reference = None
        for tree in args.trees:
            runs = [r for r in results if r["task"] == task and r["tree"] == str(tree)]
            seconds = float(np.median([r["seconds"] for r in runs]))
            cpu = float(np.median([r["cpu_seconds"] for r in runs]))
            reference = (seconds, cpu) if reference is None else reference
            medians = []
            for key, _, fmt in SCORES:
                values = [r["scores"].get(key) for r in runs if r["scores"].get(key) is not None]
                medians.append(format(float(np.median(values)), fmt) if values else "")
            ratios = f"{seconds:.1f} | {seconds / reference[0]:.3f} | {cpu:.1f} | {cpu / reference[1]:.3f}"
            print(f"| {task} | {tree} | {ratios} | " + " | ".join(medians) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
