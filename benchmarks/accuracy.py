"""Accuracy benchmark of ``scn2s.pp.denoise`` against held-out molecules and a simulated truth.

Two problems:

``pbmc1k``
    The deep ``pbmc1k_10x_v3_906cells.h5ad`` (about 6,100 UMIs per cell) is thinned by
    :func:`scn2s.split.binomial_split` into 20% of its molecules, which are denoised, and the other 80%, the
    target. Given the truth the two parts are independent Poisson samples, so the 80% part scores an
    estimate that never saw it.
``simulation``
    :func:`scn2s.datasets.simulate` counts, denoised and scored against their true rates.

Each estimate is scored by the mean squared error of square-root CP10k values and by the Poisson negative
log-likelihood per entry (see :class:`Scorer`). The rows are: no denoising, fixed ranks 10 and 50,
``scn2s`` lowrank with and without the depth correction, and the oracle rank, the rank (``0..max_rank``)
whose output scores best against the target. Every rank is scored from one rank-``max_rank`` factorisation
of the counts (:func:`scn2s.lowrank.fit_lowrank` and :func:`scn2s.lowrank.model.reconstruct_counts`), a
randomized SVD as ``pp.denoise`` makes but from its own random stream; the report measures how far that
reconstruction is from ``pp.denoise``'s output at the same rank.

Time and peak memory of each configuration come from a fresh interpreter (a worker) that loads the counts
from a temporary file and runs ``pp.denoise`` ``--repeats`` times: wall time by ``time.perf_counter``, CPU
time of all threads by ``time.process_time``. Workers run with one BLAS thread unless ``--blas-threads``
says otherwise: numpy's and scipy's separate OpenBLAS pools, two threads each by default, fight over two
cores. The peak memory is the worker's peak resident set size, ``VmHWM`` of ``/proc/self/status``: that is
``ru_maxrss`` without what Linux carries over from the launching process (``getrusage(RUSAGE_SELF)`` of a
child started by ``subprocess`` reports at least the parent's peak at the ``exec``). The output goes back
through a temporary file and is scored here.

Run from the repository root::

    python benchmarks/accuracy.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData
from common import current_rss_mib, peak_rss_mib
from scipy import sparse

import scn2s
from scn2s import pp
from scn2s.datasets import simulate
from scn2s.loss import poisson_nll
from scn2s.lowrank import fit_lowrank
from scn2s.lowrank.model import reconstruct_counts
from scn2s.split import binomial_split

if TYPE_CHECKING:
    from scn2s.lowrank import LowRankSelection

PBMC_FILE = "pbmc1k_10x_v3_906cells.h5ad"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
THIN_FRACTION = 0.2
RATE_FLOOR = 1e-4
CHECK_RANK = 10
DATASETS = ("pbmc1k", "simulation")
# row label -> lowrank_kwds of pp.denoise (None: no denoising); the oracle rows are added at run time
CONFIGS: dict[str, dict | None] = {
    "no denoising": None,
    "fixed rank 10": {"rank": 10},
    "fixed rank 50": {"rank": 50},
    "scn2s lowrank": {"depth_correction": True},
    "scn2s lowrank, no depth correction": {"depth_correction": False},
}
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def log(message: str) -> None:
    """Progress line on stderr (stdout carries the report)."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------
# problems and metrics


@dataclass
class Problem:
    """Counts to denoise and the target that scores the estimate.

    Attributes
    ----------
    name
        Data set name.
    counts
        Cells x genes CSR counts given to the denoiser.
    target
        The 80% held-out counts (CSR, integer) or the true rates (dense float64).
    target_is_truth
        Whether ``target`` holds true rates rather than counts.
    description
        One line on how the problem was built.
    """

    name: str
    counts: sparse.csr_matrix
    target: sparse.csr_matrix | np.ndarray
    target_is_truth: bool
    description: str


def load_pbmc(data_dir: Path, seed: int) -> Problem:
    """Thin the deep pbmc1k counts to ``THIN_FRACTION`` of their molecules; the rest is the target."""
    import anndata as ad

    path = data_dir / PBMC_FILE
    counts = sparse.csr_matrix(ad.read_h5ad(path).X)
    thinned, heldout = binomial_split(counts, THIN_FRACTION, rng=np.random.default_rng(seed))
    description = (
        f"`{PBMC_FILE}`: {counts.shape[0]} cells x {counts.shape[1]} genes, thinned by "
        f"`binomial_split(X, {THIN_FRACTION}, rng=np.random.default_rng({seed}))` to {THIN_FRACTION:.0%} of its "
        f"molecules (median {np.median(row_sums(thinned)):.0f} UMIs/cell, "
        f"{1 - thinned.nnz / np.prod(thinned.shape):.1%} zeros); target: the other {1 - THIN_FRACTION:.0%} "
        f"(median {np.median(row_sums(heldout)):.0f} UMIs/cell)"
    )
    return Problem("pbmc1k", thinned, heldout, target_is_truth=False, description=description)


def make_simulation(args: argparse.Namespace) -> Problem:
    """Simulated Poisson counts; the target is their true rates."""
    sim = simulate(args.sim_cells, args.sim_genes, depth=args.sim_depth, rng=args.seed)
    counts = sparse.csr_matrix(sim.X)
    rates = np.asarray(sim.layers["rates"], dtype=np.float64)
    params = sim.uns["simulation"]
    description = (
        f"`scn2s.datasets.simulate({args.sim_cells}, {args.sim_genes}, depth={args.sim_depth:g}, rng={args.seed})` "
        f"(defaults structure={params.get('structure', 'types')!r}, n_types={params['n_types']}, "
        f"rank={params['rank']}, depth_spread={params['depth_spread']}): "
        f"median {np.median(row_sums(counts)):.0f} UMIs/cell, {1 - counts.nnz / np.prod(counts.shape):.1%} zeros; "
        "target: the true rates, `layers['rates']`"
    )
    return Problem("simulation", counts, rates, target_is_truth=True, description=description)


def build_problem(name: str, args: argparse.Namespace) -> Problem:
    """The problem called ``name``."""
    if name == "pbmc1k":
        return load_pbmc(args.data_dir, args.seed)
    return make_simulation(args)


def row_sums(X: sparse.spmatrix | np.ndarray) -> np.ndarray:
    """Per-cell totals as float64."""
    return np.asarray(X.sum(axis=1), dtype=np.float64).ravel()


def sqrt_cp10k(X: sparse.spmatrix | np.ndarray) -> np.ndarray:
    """Dense float64 ``sqrt(1e4 * X / row_sum)`` (zero rows stay zero)."""
    dense = X.toarray() if sparse.issparse(X) else np.asarray(X)
    dense = dense.astype(np.float64, copy=False)
    totals = row_sums(dense)
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.sqrt(dense * scale[:, None])


def rescale_rows(estimate: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """``estimate`` (float64) with each row rescaled to sum to ``depth`` (zero rows stay zero)."""
    estimate = np.asarray(estimate, dtype=np.float64)
    totals = row_sums(estimate)
    scale = np.divide(depth, totals, out=np.zeros_like(totals), where=totals > 0)
    return estimate * scale[:, None]


def expected_poisson_nll(truth: np.ndarray, rates: np.ndarray, *, floor: float = RATE_FLOOR) -> float:
    """Expected Poisson NLL per entry of counts drawn at ``truth``, less the ``E[log x!]`` term.

    ``mean(rate - truth * log(rate))`` with ``rates`` floored at ``floor``. The dropped term does not depend
    on the estimate.
    """
    rates = np.maximum(rates, floor)
    return float(np.mean(rates - truth * np.log(rates)))


class Scorer:
    """Scores estimates of one problem's target.

    * MSE of square-root CP10k: ``mean((sqrt_cp10k(estimate) - sqrt_cp10k(target))**2)`` over all entries.
    * Poisson NLL per entry: the estimate is rescaled per cell to the target's depth (the 80% library size,
      or the row sum of the true rates) and floored at ``RATE_FLOOR``; scored against the 80% counts by
      :func:`scn2s.loss.poisson_nll`, against true rates by :func:`expected_poisson_nll`.
    """

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.target_sqrt = sqrt_cp10k(problem.target)
        self.target_depth = row_sums(problem.target)

    def mse(self, estimate: np.ndarray) -> float:
        diff = sqrt_cp10k(estimate) - self.target_sqrt
        return float(np.einsum("ij,ij->", diff, diff) / diff.size)

    def nll(self, estimate: np.ndarray) -> float:
        rates = rescale_rows(estimate, self.target_depth)
        if self.problem.target_is_truth:
            return expected_poisson_nll(self.problem.target, rates)
        return poisson_nll(self.problem.target, rates, floor=RATE_FLOOR)

    def score(self, estimate: np.ndarray) -> tuple[float, float]:
        """``(mse, nll)`` of a dense estimate."""
        return self.mse(estimate), self.nll(estimate)

    def truth_nll(self) -> float | None:
        """NLL of the true rates themselves (simulation only): the least the NLL column can be."""
        if not self.problem.target_is_truth:
            return None
        return self.nll(self.problem.target)


# --------------------------------------------------------------------------------------------------------------
# oracle curve


@dataclass
class RankCurve:
    """Scores of every rank ``0..max_rank`` from one factorisation."""

    mse: np.ndarray
    nll: np.ndarray
    seconds: float

    @property
    def oracle_mse(self) -> int:
        return int(np.argmin(self.mse))

    @property
    def oracle_nll(self) -> int:
        return int(np.argmin(self.nll))


def full_fit(problem: Problem, rank: int, seed: int) -> LowRankSelection:
    """Randomized SVD of the full counts up to ``rank``, by :func:`scn2s.lowrank.fit_lowrank` (no search)."""
    return fit_lowrank(problem.counts, rank=rank, rng=np.random.default_rng(seed))


def rank_output(fit: LowRankSelection, k: int) -> np.ndarray:
    """The rank-``k`` output of ``fit``, as ``pp.denoise`` writes it (float32)."""
    return reconstruct_counts(fit.factors, k, fit.library_size, fit.target_sum).astype(np.float32)


def rank_curve(fit: LowRankSelection, scorer: Scorer) -> RankCurve:
    """Score the rank-``k`` output of ``fit`` for every ``k`` from 0 to its rank."""
    start = time.perf_counter()
    max_rank = fit.factors.max_rank
    mse, nll = np.empty(max_rank + 1), np.empty(max_rank + 1)
    for k in range(max_rank + 1):
        mse[k], nll[k] = scorer.score(rank_output(fit, k))
    return RankCurve(mse, nll, time.perf_counter() - start)


def equivalence_check(problem: Problem, scorer: Scorer, fit: LowRankSelection, k: int, seed: int) -> dict:
    """Compare ``pp.denoise(rank=k)`` with ``fit_lowrank`` + ``reconstruct_counts`` at rank ``k``.

    Two reconstructions: from ``fit_lowrank(rank=k)`` (same sketch width as ``pp.denoise``, another random
    stream), and from the rank-``max_rank`` fit truncated to ``k`` (how the oracle curve is made). Each is
    compared by its relative Frobenius distance to ``pp.denoise``'s output and by its MSE.
    """
    adata = AnnData(X=problem.counts.copy())
    pp.denoise(adata, method="lowrank", lowrank_kwds={"rank": k}, rng=seed, progress=False)
    api = np.asarray(adata.layers["denoised"], dtype=np.float64)
    norm = np.linalg.norm(api)
    check = {"rank": k, "mse_api": scorer.mse(api)}
    for name, other in (("same_width", rank_output(full_fit(problem, k, seed), k)), ("curve", rank_output(fit, k))):
        other = other.astype(np.float64)
        check[f"rel_diff_{name}"] = float(np.linalg.norm(api - other) / norm)
        check[f"mse_{name}"] = scorer.mse(other)
    return check


# --------------------------------------------------------------------------------------------------------------
# worker: one configuration in a fresh process


def run_worker(args: argparse.Namespace) -> dict:
    """Load the counts, run ``pp.denoise`` ``--repeats`` times, save the output, and report time and memory."""
    kwargs = json.loads(args.worker_kwargs)
    adata = AnnData(X=sparse.load_npz(args.worker_counts).tocsr())
    rss_before, peak_before = current_rss_mib(), peak_rss_mib()
    load_before = os.getloadavg()[0]
    wall, cpu = [], []
    for _ in range(args.repeats):
        adata.layers.pop("denoised", None)
        adata.uns.pop("denoised", None)
        start, start_cpu = time.perf_counter(), time.process_time()
        pp.denoise(adata, method="lowrank", rng=args.seed, progress=False, lowrank_kwds=kwargs)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak = peak_rss_mib()
    np.save(args.worker_output, np.asarray(adata.layers["denoised"]))
    uns = adata.uns["denoised"]
    selection = uns["selection"]["lowrank"]
    return {
        "kwargs": kwargs,
        "wall": wall,
        "cpu": cpu,
        "load": [load_before, os.getloadavg()[0]],
        "rss_before_mib": rss_before,
        "peak_before_mib": peak_before,
        "peak_rss_mib": peak,
        "rank": int(uns["best_params"]["rank"]),
        "split_rank": int(selection["split_rank"]),
        "noise_ratio": float(selection.get("noise_ratio", float("nan"))),
    }


def spawn_worker(args: argparse.Namespace, counts_file: Path, kwargs: dict) -> tuple[dict, np.ndarray]:
    """Run ``pp.denoise(lowrank_kwds=kwargs)`` in a fresh interpreter; return its report and output."""
    output_file = counts_file.with_name("output.npy")
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker-counts",
        str(counts_file),
        "--worker-output",
        str(output_file),
        "--worker-kwargs",
        json.dumps(kwargs),
        "--seed",
        str(args.seed),
        "--repeats",
        str(args.repeats),
    ]
    env = dict(os.environ)
    if args.blas_threads > 0:
        env |= dict.fromkeys(THREAD_VARIABLES, str(args.blas_threads))
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        sys.exit(f"worker for pp.denoise(lowrank_kwds={kwargs}) failed:\n{done.stderr}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    output = np.load(output_file)
    output_file.unlink()
    return report, output


# --------------------------------------------------------------------------------------------------------------
# benchmark


def benchmark_dataset(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    """Oracle curve, equivalence check and every configuration for one data set."""
    problem = build_problem(name, args)
    log(f"[{name}] {problem.description}")
    scorer = Scorer(problem)
    fit = full_fit(problem, args.max_rank, args.seed)
    curve = rank_curve(fit, scorer)
    log(f"[{name}] oracle rank {curve.oracle_mse} (MSE), {curve.oracle_nll} (NLL); curve: {curve.seconds:.1f} s")
    check = equivalence_check(problem, scorer, fit, CHECK_RANK, args.seed)
    del fit
    counts_file = workdir / f"{name}_counts.npz"
    sparse.save_npz(counts_file, problem.counts, compressed=False)

    rows: dict[str, dict] = {}
    for label, kwargs in CONFIGS.items():
        if kwargs is None:
            rows[label] = {"mse_nll": scorer.score(problem.counts.toarray())}
            continue
        if "rank" not in kwargs:
            kwargs = {**kwargs, "max_rank": args.max_rank}
        rows[label] = run_config(args, counts_file, kwargs, scorer, label=f"[{name}] {label}")
    oracles: dict[int, dict] = {}
    for k in sorted({curve.oracle_mse, curve.oracle_nll}):
        oracles[k] = run_config(args, counts_file, {"rank": k}, scorer, label=f"[{name}] oracle rank {k}")
    return {
        "name": name,
        "description": problem.description,
        "curve": {"mse": curve.mse.tolist(), "nll": curve.nll.tolist(), "seconds": curve.seconds},
        "oracle_mse": curve.oracle_mse,
        "oracle_nll": curve.oracle_nll,
        "check": check,
        "rows": rows,
        "oracles": oracles,
        "truth_nll": scorer.truth_nll(),
    }


def run_config(args: argparse.Namespace, counts_file: Path, kwargs: dict, scorer: Scorer, *, label: str) -> dict:
    """One configuration: time and memory from a worker, its output scored here."""
    report, output = spawn_worker(args, counts_file, kwargs)
    report["mse_nll"] = scorer.score(output)
    wall = ", ".join(f"{t:.2f}" for t in report["wall"])
    log(
        f"{label}: rank {report['rank']} (split {report['split_rank']}), MSE {report['mse_nll'][0]:.5f}, "
        f"NLL {report['mse_nll'][1]:.5f}, wall [{wall}] s, peak RSS {report['peak_rss_mib']:.0f} MiB, "
        f"load {report['load'][0]:.1f} -> {report['load'][1]:.1f}"
    )
    return report


# --------------------------------------------------------------------------------------------------------------
# report


def table(result: dict) -> str:
    """Markdown table of one data set's rows."""
    truth_nll = result["truth_nll"]
    curve_mse, curve_nll = np.asarray(result["curve"]["mse"]), np.asarray(result["curve"]["nll"])
    # with a truth, the NLL ratio is taken on the excess over the truth's own NLL (the NLL is not positive)
    offset = truth_nll if truth_nll is not None else 0.0
    best = (curve_mse.min(), curve_nll.min() - offset)
    nll_head = (
        "Poisson NLL | excess over truth | ratio to oracle (excess)"
        if truth_nll is not None
        else ("Poisson NLL | ratio to oracle")
    )
    header = (
        f"| method | rank | MSE sqrt CP10k | ratio to oracle | {nll_head} | wall time (s), median | runs (s) "
        "| CPU time (s), median | peak RSS (MiB) | peak - RSS before (MiB) |"
    )
    align = "|---|---|---:|---:|" + "---:|" * (3 if truth_nll is not None else 2) + "---:|---|---:|---:|---:|"
    lines = [header, align]
    for label, row in result["rows"].items():
        lines.append(_line(label, _rank_label(row), row["mse_nll"], row, best, truth_nll))
    for k, row in result["oracles"].items():
        which = [m for m, best_k in (("MSE", result["oracle_mse"]), ("NLL", result["oracle_nll"])) if best_k == k]
        scores = (curve_mse[k], curve_nll[k])
        lines.append(_line(f"oracle rank ({' and '.join(which)})", str(k), scores, row, best, truth_nll))
    return "\n".join(lines)


def _rank_label(row: dict) -> str:
    if "rank" not in row:
        return "-"
    if "rank" in row["kwargs"]:
        return str(row["rank"])
    return f"{row['rank']} (split: {row['split_rank']})"


def _line(label: str, rank: str, scores, row: dict, best: tuple[float, float], truth_nll: float | None) -> str:
    mse, nll = scores
    offset = truth_nll if truth_nll is not None else 0.0
    cells = [label, rank, f"{mse:.5f}", f"{mse / best[0]:.3f}", f"{nll:.5f}"]
    if truth_nll is not None:
        cells.append(f"{nll - offset:.5f}")
    cells.append(f"{(nll - offset) / best[1]:.4f}")
    if "wall" in row:
        rise = row["peak_rss_mib"] - row["rss_before_mib"]
        cells += [
            f"{np.median(row['wall']):.2f}",
            ", ".join(f"{t:.2f}" for t in row["wall"]),
            f"{np.median(row['cpu']):.2f}",
            f"{row['peak_rss_mib']:.0f}",
            f"{rise:.0f}",
        ]
    else:
        cells += ["-"] * 5
    return "| " + " | ".join(cells) + " |"


def notes(result: dict) -> str:
    """Oracle ranks, the checks and the truth's NLL, as markdown bullets."""
    check, rows, curve = result["check"], result["rows"], result["curve"]
    max_rank = len(curve["mse"]) - 1
    chosen, plain = rows["scn2s lowrank"], rows["scn2s lowrank, no depth correction"]
    lines = [
        f"- Oracle rank over 0..{max_rank}: {result['oracle_mse']} by MSE, {result['oracle_nll']} by NLL. "
        f"scn2s lowrank chose {chosen['rank']} (rank {chosen['split_rank']} at depth pN, noise ratio "
        f"{chosen['noise_ratio']:.3f}); without the depth correction {plain['rank']}.",
        f"- Check at rank {check['rank']}: `pp.denoise(rank={check['rank']})` (MSE {check['mse_api']:.6f}) vs "
        f"`fit_lowrank(rank={check['rank']})` + `reconstruct_counts`: relative Frobenius difference "
        f"{check['rel_diff_same_width']:.2e}, MSE {check['mse_same_width']:.6f}; vs the rank-{max_rank} fit "
        f"truncated to {check['rank']} (the oracle curve): {check['rel_diff_curve']:.2e}, MSE "
        f"{check['mse_curve']:.6f}.",
    ]
    same = []
    for label in ("scn2s lowrank", "scn2s lowrank, no depth correction", "fixed rank 50"):
        row = rows[label]
        same.append(f"{label} {row['mse_nll'][0]:.6f} vs {curve['mse'][row['rank']]:.6f} (rank {row['rank']})")
    lines.append("- MSE of the worker's output vs the oracle curve at the same rank: " + "; ".join(same) + ".")
    if result["truth_nll"] is not None:
        lines.append(f"- NLL of the true rates themselves: {result['truth_nll']:.5f}.")
    loads = [load for row in (*rows.values(), *result["oracles"].values()) for load in row.get("load", [])]
    lines.append(
        f"- Oracle curve: {curve['seconds']:.1f} s for one rank-{max_rank} fit and {max_rank + 1} scored outputs. "
        f"1-minute load average during the timed runs: {min(loads):.1f} to {max(loads):.1f}."
    )
    return "\n".join(lines)


def source_revision() -> str:
    """Where the imported ``scn2s`` comes from: its folder, and the git commit with ``+dirty`` if modified."""
    root = Path(scn2s.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "scn2s"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(root)
    return f"{root} @ {commit}{'+dirty' if dirty else ''}"


def report(results: list[dict], args: argparse.Namespace, seconds: float) -> str:
    """The whole markdown report."""
    threads = "inherited" if args.blas_threads <= 0 else f"{args.blas_threads} ({', '.join(THREAD_VARIABLES)})"
    parts = [
        f"{datetime.date.today().isoformat()}; scn2s {scn2s.__version__} from `{source_revision()}`, "
        f"numpy {np.__version__}, Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"seed {args.seed}, max_rank {args.max_rank}, {args.repeats} timed runs per configuration, "
        f"BLAS threads {threads}; NLL rates floored at {RATE_FLOOR:g}.",
    ]
    for result in results:
        parts += [f"### {result['name']}", result["description"] + ".", table(result), notes(result)]
    parts.append(f"Total wall time: {seconds:.0f} s.")
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"folder holding {PBMC_FILE}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the thinning, simulation and denoising")
    parser.add_argument("--max-rank", type=int, default=50, help="largest rank searched and of the oracle curve")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration")
    parser.add_argument("--sim-cells", type=int, default=3000)
    parser.add_argument("--sim-genes", type=int, default=2000)
    parser.add_argument("--sim-depth", type=float, default=1500.0)
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="BLAS threads of the timed workers (OPENBLAS/OMP/MKL_NUM_THREADS); 0 inherits the environment",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--worker-counts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-kwargs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir.resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker_counts is not None:
        print(json.dumps(run_worker(args)))
        return
    if "pbmc1k" in args.datasets and not (args.data_dir / PBMC_FILE).exists():
        sys.exit(f"error: {args.data_dir / PBMC_FILE} not found; pass --data-dir, the folder of the shared data.")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scn2s-bench-") as tmp:
        results = [benchmark_dataset(name, args, Path(tmp)) for name in args.datasets]
    seconds = time.perf_counter() - start
    print(report(results, args, seconds))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
