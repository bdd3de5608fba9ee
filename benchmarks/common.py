"""What the benchmarks share: the peers benchmark's tasks, methods and scores, and the peak resident set.

Imported by the scripts of this folder, run as ``python benchmarks/<script>.py`` (the folder is then first on
``sys.path``): ``from common import load_task, score, ...``. The tasks, methods and scores are those of
``benchmarks/peers.py``, whose docstring describes them; results go to :data:`RESULTS` as JSON.

"""

from __future__ import annotations

import argparse
import resource
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import sparse

TASKS = ("sim", "pbmc1k", "zheng")
METHODS = ("none", "lowrank", "autoencoder", "auto", "best_rank", "magic", "scvi")
LABELS = {
    "none": "no denoising",
    "lowrank": "scn2s lowrank",
    "autoencoder": "scn2s autoencoder",
    "auto": "scn2s auto (default)",
    "best_rank": "best fixed rank (oracle)",
    "magic": "MAGIC",
    "scvi": "scVI",
}
FILES = {"pbmc1k": "pbmc1k_10x_v3_906cells.h5ad", "zheng": "zheng2017_purified_pbmc_mix_3874.h5ad"}
FRACTIONS = {"pbmc1k": 0.2, "zheng": 0.5}
N_GENES = 2000
N_CORR_GENES = 200
CHECK_DEPTHS = (2000.0, 1000.0, 500.0, 250.0)
NLL_FLOOR = 1e-4
MAX_RANK = 50
LOWRANK_REPEATS = 3
N_CLUSTERS = 10
ERROR_LABELS = {
    "mse_cp10k": "MSE CP10k",
    "poisson_nll": "Poisson NLL",
    "heldout_sqrt_loss": "held-out sqrt loss",
    "mse_sqrt_cp10k": "MSE sqrt CP10k",
}


@dataclass
class Task:
    """Input counts (CSR, cells x genes), the target they are scored against, and labels if any."""

    name: str
    counts: sparse.csr_matrix
    target: np.ndarray
    target_is_truth: bool
    labels: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @cached_property
    def target_cp10k(self) -> np.ndarray:
        """``cp10k(target)``, computed once for all the estimates scored against it."""
        return cp10k(self.target)

    @cached_property
    def target_noise(self) -> float:
        """The mean multinomial noise variance of ``target_cp10k`` (:func:`noise_variance`; 0 for the truth)."""
        return 0.0 if self.target_is_truth else float(np.mean(noise_variance(self.target)))


# --- tasks -------------------------------------------------------------------------------------------------


def load_task(name: str, data_dir: Path) -> Task:
    if name == "sim":
        return _sim_task()
    return _real_task(name, data_dir)


def _sim_task() -> Task:
    import scn2s

    adata = scn2s.datasets.simulate(3000, 2000, depth=1500, rng=0)
    counts = sparse.csr_matrix(adata.X)
    target = np.asarray(adata.layers["rates"], dtype=np.float64)
    return Task("sim", counts, target, target_is_truth=True, info=_shape_info(counts))


def _real_task(name: str, data_dir: Path) -> Task:
    import anndata as ad
    import scanpy as sc

    from scn2s.split import binomial_split

    adata = ad.read_h5ad(data_dir / FILES[name])
    counts_in, counts_out = binomial_split(sparse.csr_matrix(adata.X), FRACTIONS[name], rng=np.random.default_rng(0))
    thinned = ad.AnnData(X=counts_in, obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    sc.pp.highly_variable_genes(thinned, flavor="seurat_v3", n_top_genes=N_GENES)
    genes = thinned.var["highly_variable"].to_numpy()
    counts = sparse.csr_matrix(counts_in[:, genes])
    target = np.asarray(counts_out[:, genes].toarray(), dtype=np.float64)
    labels = adata.obs["celltype"].astype(str).to_numpy() if name == "zheng" else None
    info = _shape_info(counts) | {"p": FRACTIONS[name], "target_umis_per_cell": float(np.median(target.sum(axis=1)))}
    return Task(name, counts, target, target_is_truth=False, labels=labels, info=info)


def _shape_info(counts: sparse.csr_matrix) -> dict:
    library = np.asarray(counts.sum(axis=1)).ravel()
    return {
        "cells": counts.shape[0],
        "genes": counts.shape[1],
        "input_umis_per_cell": float(np.median(library)),
        "cells_without_molecules": int(np.sum(library == 0)),
    }


# --- methods (run in the worker; each returns expected counts and a small record) ------------------------------


def run_method(method: str, task: Task) -> tuple[np.ndarray, dict]:
    return {
        "none": _none,
        "lowrank": scn2s_runner("lowrank"),
        "autoencoder": scn2s_runner("autoencoder"),
        "auto": scn2s_runner("auto"),
        "best_rank": _best_rank,
        "magic": _magic,
        "scvi": _scvi,
    }[method](task)


def _none(task: Task) -> tuple[np.ndarray, dict]:
    return task.counts.toarray().astype(np.float64), {}


def scn2s_runner(method: str, rng: int = 0):
    """``scn2s.pp.denoise`` with ``method`` (``"auto"``: the default) and ``rng``, as a method of this benchmark."""

    def run(task: Task) -> tuple[np.ndarray, dict]:
        import anndata as ad

        import scn2s

        adata = ad.AnnData(X=task.counts.copy())
        kwargs = {} if method == "auto" else {"method": method}
        if method != "lowrank":
            kwargs["device"] = "cpu"
        scn2s.pp.denoise(adata, rng=rng, progress=False, **kwargs)
        record = adata.uns["denoised"]
        info = {"family": record["method"], "best_params": _plain(record["best_params"])}
        if "comparison" in record:
            info["comparison"] = _plain(record["comparison"]["loss"])
        return np.asarray(adata.layers["denoised"], dtype=np.float64), info

    return run


def _best_rank(task: Task) -> tuple[np.ndarray, dict]:
    """The rank with the lowest MSE of sqrt CP10k against the target; also the best rank for every other error."""
    from scn2s.lowrank import fit_lowrank
    from scn2s.lowrank.model import reconstruct_counts

    fit = fit_lowrank(task.counts, rank=MAX_RANK, rng=np.random.default_rng(0))
    ranks = range(fit.factors.max_rank + 1)
    curves = {name: [] for name in ERRORS if not (task.target_is_truth and name == "heldout_sqrt_loss")}
    for k in ranks:
        estimate = reconstruct_counts(fit.factors, k, fit.library_size, fit.target_sum)
        for name, curve in curves.items():
            curve.append(ERRORS[name](estimate, task))
    best = {name: {"rank": int(np.argmin(curve)), "value": float(np.min(curve))} for name, curve in curves.items()}
    rank = best["mse_sqrt_cp10k"]["rank"]
    estimate = reconstruct_counts(fit.factors, rank, fit.library_size, fit.target_sum)
    return estimate, {"rank": rank, "mse_per_rank": curves["mse_sqrt_cp10k"], "best_per_error": best}


def _magic(task: Task) -> tuple[np.ndarray, dict]:
    import magic

    library = np.asarray(task.counts.sum(axis=1), dtype=np.float64).ravel()
    scale = np.divide(np.median(library), library, out=np.zeros_like(library), where=library > 0)
    normalised = sparse.diags(scale) @ task.counts.astype(np.float64)
    smoothed = magic.MAGIC(random_state=0, verbose=0).fit_transform(np.sqrt(normalised))
    squared = np.clip(np.asarray(smoothed, dtype=np.float64), 0.0, None) ** 2
    negative = float(np.mean(np.asarray(smoothed) < 0))
    return _rescale(squared, library), {"fraction_negative_before_clip": negative}


def _scvi(task: Task) -> tuple[np.ndarray, dict]:
    import anndata as ad
    import scvi

    scvi.settings.seed = 0
    adata = ad.AnnData(X=task.counts.astype(np.float32))
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata)
    model.train(accelerator="cpu")
    frequencies = model.get_normalized_expression(library_size=1.0, n_samples=25, return_mean=True)
    library = np.asarray(task.counts.sum(axis=1), dtype=np.float64).ravel()
    epochs = len(model.history["elbo_train"])
    return _rescale(np.asarray(frequencies, dtype=np.float64), library), {"epochs": epochs}


def _rescale(values: np.ndarray, library: np.ndarray) -> np.ndarray:
    total = values.sum(axis=1)
    return values * np.divide(library, total, out=np.zeros_like(total), where=total > 0)[:, None]


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- metrics -----------------------------------------------------------------------------------------------


def cp10k(values: np.ndarray) -> np.ndarray:
    total = values.sum(axis=1, keepdims=True)
    return values * np.divide(1e4, total, out=np.zeros_like(total), where=total > 0)


def mse_sqrt_cp10k(estimate: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean((np.sqrt(cp10k(estimate)) - np.sqrt(cp10k(target))) ** 2))


def poisson_error(estimate: np.ndarray, task: Task) -> float:
    """Poisson NLL per entry of the target (counts), or its expectation under the true rates (simulation)."""
    from scn2s.loss import poisson_nll

    rates = np.maximum(_rescale(estimate, task.target.sum(axis=1)), NLL_FLOOR)
    if task.target_is_truth:
        return float(np.mean(rates - task.target * np.log(rates)))
    return poisson_nll(task.target, rates, floor=NLL_FLOOR)


def heldout_sqrt_loss(estimate: np.ndarray, target: np.ndarray) -> float:
    """scn2s's selection loss per entry: ``(sqrt(target) - m(rate))**2``, rates rescaled to the target's depth."""
    from scn2s.loss import heldout_sqrt_mse, sqrt_poisson_mean

    rates = _rescale(estimate, target.sum(axis=1))
    return heldout_sqrt_mse(target, sqrt_poisson_mean(rates)) / target.size


def mse_cp10k(estimate: np.ndarray, task: Task) -> float:
    """MSE of CP10k against the truth: exact for the simulation, an unbiased estimate on held-out counts.

    Given a cell's held-out total ``s``, its counts are multinomial, so ``cp10k(target)`` is unbiased for the
    true CP10k with per-entry variance ``1e8 * pi * (1 - pi) / s``, of which ``1e8 * x * (s - x) / (s**2 * (s - 1))``
    is an unbiased estimate. Subtracting its mean from the MSE against the target leaves the MSE against the
    truth, in expectation.
    """
    return float(np.mean((cp10k(estimate) - task.target_cp10k) ** 2)) - task.target_noise


def noise_variance(counts: np.ndarray) -> np.ndarray:
    """Unbiased estimate of each entry's multinomial variance in CP10k given its row total (0 where total < 2)."""
    total = counts.sum(axis=1, keepdims=True)
    denominator = total**2 * (total - 1)
    return np.divide(1e8 * counts * (total - counts), denominator, out=np.zeros_like(counts), where=total > 1)


def truth_covariance(target: np.ndarray, task_is_truth: bool, genes: np.ndarray | None = None) -> np.ndarray:
    """Covariance over cells of the true CP10k of ``genes``: exact, or corrected for multinomial noise.

    For held-out counts the noise covariance given a row total ``s`` is ``1e8 * (diag(pi) - pi pi^T) / s``;
    ``x_g * x_h / (s**2 * (s - 1))`` and ``x_g * (s - x_g) / (s**2 * (s - 1))`` estimate its entries without
    bias, and their means over cells are subtracted from the sample covariance.
    """
    genes = np.arange(target.shape[1]) if genes is None else genes
    values = cp10k(target)[:, genes]
    covariance = np.atleast_2d(np.cov(values, rowvar=False))
    if task_is_truth:
        return covariance
    counts = target[:, genes]
    total = target.sum(axis=1, keepdims=True)
    weight = np.divide(1e8, total**2 * (total - 1), out=np.zeros_like(total), where=total > 1)
    noise = -((counts * weight).T @ counts) / target.shape[0]
    noise[np.diag_indices_from(noise)] = np.mean(noise_variance(target)[:, genes], axis=0)
    return covariance - noise


def signal_genes(target: np.ndarray, task_is_truth: bool) -> np.ndarray:
    """The ``N_CORR_GENES`` genes with the largest (estimated) true variance of CP10k."""
    values = cp10k(target)
    variance = np.var(values, axis=0, ddof=1)
    if not task_is_truth:
        variance = variance - np.mean(noise_variance(target), axis=0)
    return np.argsort(-variance, kind="stable")[:N_CORR_GENES]


def truth_corr(target: np.ndarray, task_is_truth: bool, genes: np.ndarray) -> float:
    """Mean |Pearson r| over gene pairs of the truth's CP10k (estimated from held-out counts on real data)."""
    covariance = truth_covariance(target, task_is_truth, genes)
    scale = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        return mean_abs_pair(covariance / np.outer(scale, scale))


def mean_abs_pair(matrix: np.ndarray) -> float:
    """Mean absolute value over the pairs above the diagonal of a gene x gene matrix (NaNs left out)."""
    return float(np.nanmean(np.abs(matrix[np.triu_indices(len(matrix), k=1)])))


def mean_abs_corr_cp10k(values: np.ndarray, genes: np.ndarray) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        return mean_abs_pair(np.corrcoef(cp10k(values)[:, genes], rowvar=False))


def truth_corr_check(task: Task) -> list[dict]:
    """On the simulation, the noise-corrected estimate of the truth's correlations from Poisson counts drawn at
    several depths (UMIs per cell), next to the exact value and to the plain correlation of the counts."""
    rng = np.random.default_rng(1)
    rows = []
    for depth in CHECK_DEPTHS:
        rates = task.target * (depth / np.median(task.target.sum(axis=1)))
        counts = rng.poisson(rates).astype(np.float64)
        genes = signal_genes(counts, task_is_truth=False)
        rows.append(
            {
                "umis_per_cell": float(np.median(counts.sum(axis=1))),
                "truth": truth_corr(task.target, True, genes),
                "counts": mean_abs_corr_cp10k(counts, genes),
                "estimate": truth_corr(counts, False, genes),
            }
        )
    return rows


def mse_cp10k_check(task: Task) -> list[dict]:
    """On the simulation, the held-out estimate of the MSE of CP10k against the exact one: the counts split at
    several fractions, the held-out half as target, for three estimates (the truth, the input half, and the
    mean of the two in CP10k)."""
    from scn2s.split import binomial_split

    rows = []
    for p in (0.2, 0.5, 0.9):
        given, heldout = binomial_split(task.counts, p, rng=np.random.default_rng(1))
        heldout_task = Task("check", given, heldout.toarray().astype(np.float64), target_is_truth=False)
        truth_task = Task("check", given, task.target, target_is_truth=True)
        given = given.toarray().astype(np.float64)
        candidates = {"truth": task.target, "input": given, "halfway": (cp10k(given) + cp10k(task.target)) / 2}
        for name, estimate in candidates.items():
            exact, estimated = mse_cp10k(estimate, truth_task), mse_cp10k(estimate, heldout_task)
            rows.append({"p": p, "estimate": name, "exact": exact, "held_out_estimate": estimated})
    return rows


def mean_abs_corr(values: np.ndarray, genes: np.ndarray) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        return mean_abs_pair(np.corrcoef(np.log1p(cp10k(values)[:, genes]), rowvar=False))


def clustering(estimate: np.ndarray, labels: np.ndarray) -> dict:
    """Leiden on log1p CP10k -> PCA(30) -> kNN(15), resolution searched for ~10 clusters; ARI, NMI."""
    import anndata as ad
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    adata = ad.AnnData(X=np.log1p(cp10k(estimate)).astype(np.float32))
    sc.pp.pca(adata, n_comps=30, random_state=0)
    sc.pp.neighbors(adata, n_neighbors=15, random_state=0)
    lo, hi, resolution, found = 0.02, 3.0, 1.0, None
    for _ in range(12):
        sc.tl.leiden(adata, resolution=resolution, flavor="igraph", n_iterations=2, directed=False, random_state=0)
        n = adata.obs["leiden"].nunique()
        if found is None or abs(n - N_CLUSTERS) < abs(found[1] - N_CLUSTERS):
            found = (resolution, n, adata.obs["leiden"].to_numpy().copy())
        if n == N_CLUSTERS:
            break
        lo, hi = (resolution, hi) if n < N_CLUSTERS else (lo, resolution)
        resolution = (lo + hi) / 2
    resolution, n, clusters = found
    return {
        "ari": float(adjusted_rand_score(labels, clusters)),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "n_clusters": int(n),
        "resolution": float(resolution),
    }


@dataclass
class Reference:
    """What every estimate of a task is compared with: gene sets and the target's correlations."""

    corr_genes: np.ndarray
    target_corr: float
    signal_genes: np.ndarray
    truth_corr: float
    truth_covariance: np.ndarray
    signal_target: np.ndarray
    signal_noise: np.ndarray

    @classmethod
    def of(cls, task: Task) -> Reference:
        corr_genes = np.argsort(-task.target.mean(axis=0), kind="stable")[:N_CORR_GENES]
        genes = signal_genes(task.target, task.target_is_truth)
        noise = np.zeros(len(genes))
        if not task.target_is_truth:
            noise = np.mean(noise_variance(task.target)[:, genes], axis=0)
        return cls(
            corr_genes,
            mean_abs_corr(task.target, corr_genes),
            genes,
            truth_corr(task.target, task.target_is_truth, genes),
            truth_covariance(task.target, task.target_is_truth, genes),
            task.target_cp10k[:, genes],
            noise,
        )


def spread_against_truth(estimate: np.ndarray, reference: Reference) -> dict:
    """Over the signal genes, in CP10k: where correlations above or below the truth's come from.

    ``variance_ratio``: the median of each gene's variance over the truth's; ``covariance_ratio``: the mean
    |covariance| over gene pairs over the truth's. ``calibration_slope``: the median of each gene's slope of the
    truth on the estimate, ``cov(estimate, truth) / var(estimate)`` (1: calibrated, ``E[truth | estimate]`` moves
    one for one with the estimate; above 1: shrunk too far; below 1: spread by noise); the covariance with the
    held-out counts is unbiased for the covariance with the truth, their noise being independent of the estimate.
    ``error_ratio``: the median of each gene's MSE (noise-corrected as :func:`mse_cp10k`) over the truth's
    variance. For a calibrated estimate ``var(estimate) = var(truth) - MSE``, so ``variance_ratio`` is about
    ``1 - error_ratio``: its genes' variances fall short of the truth's by its error.
    """
    values = cp10k(estimate)[:, reference.signal_genes]
    covariance = np.cov(values, rowvar=False)
    truth = reference.truth_covariance
    pairs = np.triu_indices(len(reference.signal_genes), k=1)
    centred = values - values.mean(axis=0)
    with_truth = np.sum(centred * (reference.signal_target - reference.signal_target.mean(axis=0)), axis=0)
    with_truth /= len(values) - 1
    error = np.mean((values - reference.signal_target) ** 2, axis=0) - reference.signal_noise
    with np.errstate(invalid="ignore", divide="ignore"):
        variance_ratio = float(np.nanmedian(np.diag(covariance) / np.diag(truth)))
        slope = float(np.nanmedian(with_truth / np.diag(covariance)))
        error_ratio = float(np.nanmedian(error / np.diag(truth)))
    return {
        "variance_ratio": variance_ratio,
        "covariance_ratio": float(np.mean(np.abs(covariance[pairs])) / np.mean(np.abs(truth[pairs]))),
        "calibration_slope": slope,
        "error_ratio": error_ratio,
    }


ERRORS = {
    "mse_cp10k": lambda estimate, task: mse_cp10k(estimate, task),
    "poisson_nll": lambda estimate, task: poisson_error(estimate, task),
    "heldout_sqrt_loss": lambda estimate, task: heldout_sqrt_loss(estimate, task.target),
    "mse_sqrt_cp10k": lambda estimate, task: mse_sqrt_cp10k(estimate, task.target),
}


def score(estimate: np.ndarray, task: Task, reference: Reference) -> dict:
    corr = mean_abs_corr(estimate, reference.corr_genes)
    corr_cp10k = mean_abs_corr_cp10k(estimate, reference.signal_genes)
    scores = {
        "mse_sqrt_cp10k": mse_sqrt_cp10k(estimate, task.target),
        "mse_cp10k": mse_cp10k(estimate, task),
        "poisson_nll": poisson_error(estimate, task),
        "heldout_sqrt_loss": None if task.target_is_truth else heldout_sqrt_loss(estimate, task.target),
        "corr": corr,
        "corr_target": reference.target_corr,
        "corr_ratio": corr / reference.target_corr,
        "corr_cp10k": corr_cp10k,
        "corr_cp10k_truth": reference.truth_corr,
        "corr_cp10k_ratio": corr_cp10k / reference.truth_corr,
        **spread_against_truth(estimate, reference),
    }
    if task.labels is not None:
        scores |= clustering(estimate, task.labels)
    return scores


# --- worker and parent -------------------------------------------------------------------------------------


def choice(method: str, info: dict) -> str:
    if method == "best_rank":
        return f"rank {info['rank']}"
    if method == "scvi":
        return f"{info['epochs']} epochs"
    if "family" not in info:
        return ""
    params = info["best_params"]
    if info["family"] == "lowrank":
        return f"lowrank, rank {params['rank']}"
    posterior = {True: ", posterior", False: ", no posterior"}.get(params.get("posterior"), "")
    if params.get("posterior") and "shape_scale" in params:
        posterior += f" x{params['shape_scale']:.3g}"
    return (
        f"autoencoder h{params['hidden']}-b{params['bottleneck']}{posterior}, {params['epochs']} epochs, "
        f"{params['inference']}"
    )


def training_halves(task: Task, seed: int) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """One split of the task's input at ``p = 0.5`` (``np.random.default_rng(seed)``): the training and held-out
    halves, on the genes with training molecules (as the autoencoder search trains on them)."""
    from scn2s.select import Splits

    train_half, heldout = Splits.draw(np.random.default_rng(seed), 1, 0.5).get(0, task.counts)
    genes = np.flatnonzero(np.asarray(train_half.sum(axis=0)).ravel() > 0)
    return train_half[:, genes], heldout[:, genes]


def task_parser(description: str) -> argparse.ArgumentParser:
    """Command-line parser with the options every benchmark over these tasks has: ``--tasks``, ``--data-dir``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    return parser


RESULTS = Path(__file__).with_name("results")
"""The folder of the benchmarks' JSON results."""


def peak_rss_mib() -> float:
    """Peak resident set of this process in MiB.

    ``VmHWM`` of ``/proc/self/status`` on Linux: unlike ``ru_maxrss``, it does not include the peak of the
    process that launched this one. Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    scale = 2**20 if sys.platform == "darwin" else 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def current_rss_mib() -> float:
    """Current resident set of this process in MiB (``VmRSS``; NaN where unknown)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return float("nan")
