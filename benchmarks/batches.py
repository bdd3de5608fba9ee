"""``batch_key`` on four PBMC samples of three chemistries: held-out NLL per batch, batch mixing, labels, time.

Data: ``../shared/data/pbmc_4batches_3chemistries.h5ad`` (``obs["batch"]``; ``obs["cell_type"]`` for the pbmc3k
cells). Genes: the 2,000 most variable (``seurat_v3`` on the counts, per batch).

Each method runs twice, with and without the batches:

* **held-out**: fit on a binomial half of the molecules (``p=0.5``, seed 0, the same half for every method) and
  score the other half: the Poisson NLL per entry, for all cells and for each batch (the estimate rescaled to
  each cell's held-out total, as ``benchmarks/peers.py`` does), and scn2s's held-out square-root loss;
* **embedding**: fit on all the molecules, as a user would, and take the cell embedding (scn2s:
  ``obsm["X_denoised"]``; scVI: its latent): the batch entropy of each cell's 30 nearest neighbours (mean over
  cells, divided by ``log(4)``: 1 is perfect mixing), and, on the labelled cells, the labels' silhouette and the
  ARI of Leiden clusters (resolution 1) against them.

``per batch`` (``--variants "per batch"``, scn2s only): each batch's cells denoised alone, held-out scores only.
``transform`` (scn2s only): ``transform_batch="pbmc3k_v1"`` on all the molecules, and the batch mixing and label
agreement of the written layer (``normalize_total``, ``log1p``, PCA with 30 components).
``integrated``: the embedding with the batches removed, on all the molecules: scn2s's
``obsm["X_denoised_integrated"]`` (``batch_key="batch", integrate=True``; the embedding it corrects is scored
too), scVI's latent with ``batch_key``; the ARI for Leiden seeds 0 to 4 and their median.

Methods: ``lowrank`` and ``autoencoder`` (``scn2s.pp.denoise(method=..., rng=0)`` with and without
``batch_key="batch"``; the record of the run with it holds both variants' held-out losses on scn2s's own splits),
``scvi`` (``scvi.model.SCVI`` with and without ``batch_key``, defaults, the mean of 25 samples of the normalised
expression), and two denoisers of :mod:`scn2s.denoisers` calibrated by ``scn2s.pp.calibrate`` over a grid
(``magic``: ``t`` 1 to 4; ``knn_smoothing``: ``k`` 5 to 200), with ``batch_key`` (each candidate run on all
cells together and on each batch alone, the lower held-out loss applied; the record holds both) and without (held-out
scores only: they have no embedding). Results are cached in ``--out`` per method, so ``--methods scvi`` reruns only
scVI.

    python benchmarks/batches.py [--data ../shared/data] [--methods lowrank autoencoder scvi magic knn_smoothing]
        [--variants with without "per batch" transform integrated] [--tables]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import sparse

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
FILE = "pbmc_4batches_3chemistries.h5ad"
OUT = Path(__file__).resolve().parent / "results" / "batches.json"
VARIANTS = (
    ("with", True),
    ("without", False),
    ("per batch", None),
    ("transform", "transform"),
    ("integrated", "integrated"),
)
LEIDEN_SEEDS = (0, 1, 2, 3, 4)
REFERENCE = "pbmc3k_v1"
DENOISERS = {"magic": {"t": [1, 2, 3, 4]}, "knn_smoothing": {"k": [5, 10, 20, 50, 100, 200]}}


def batch_entropy(rep: np.ndarray, batches: np.ndarray, k: int = 30) -> float:
    from sklearn.neighbors import NearestNeighbors

    _, index = NearestNeighbors(n_neighbors=k + 1).fit(rep).kneighbors(rep)
    levels = np.unique(batches)
    codes = np.searchsorted(levels, batches)[index[:, 1:]]
    shares = np.stack([(codes == b).mean(axis=1) for b in range(len(levels))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(shares > 0, shares * np.log(shares), 0.0), axis=1)
    return float(entropy.mean() / np.log(len(levels)))


def labels_agreement(rep: np.ndarray, labels: np.ndarray, seeds: tuple[int, ...] = (0,)) -> dict:
    """ARI of Leiden clusters (resolution 1, ``random_state=0``) and the labels' silhouette; with more ``seeds``,
    also the ARI of each Leiden seed and their median."""
    import anndata as ad
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    adata = ad.AnnData(X=np.zeros((len(labels), 1)), obsm={"rep": rep})
    sc.pp.neighbors(adata, n_neighbors=15, use_rep="rep")
    aris = []
    for seed in seeds:
        sc.tl.leiden(adata, resolution=1.0, flavor="igraph", n_iterations=2, random_state=seed)
        aris.append(float(adjusted_rand_score(labels, adata.obs["leiden"])))
    scores = {"ari": aris[0], "silhouette": float(silhouette_score(rep, labels, random_state=0))}
    if len(seeds) > 1:
        scores |= {"ari_seeds": aris, "ari_median": float(np.median(aris))}
    return scores


def load(data: Path):
    import anndata as ad
    import scanpy as sc

    adata = ad.read_h5ad(data / FILE)
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3", batch_key="batch")
    adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    adata.X = sparse.csr_matrix(adata.X)
    adata.obs["batch"] = adata.obs["batch"].astype(str).astype("category")
    return adata


def heldout_scores(estimate: np.ndarray, target: sparse.csr_matrix, batches: np.ndarray) -> dict:
    """Poisson NLL per entry (all cells and per batch) and scn2s's square-root loss of an estimate's rescaled rates."""
    from scn2s.loss import heldout_sqrt_mse, poisson_nll, sqrt_poisson_mean

    held = np.asarray(target.sum(axis=1), dtype=np.float64).ravel()
    total = estimate.sum(axis=1)
    rates = estimate * np.divide(held, total, out=np.zeros_like(total), where=total > 0)[:, None]
    rates = np.maximum(rates, 1e-4)
    scores = {
        "nll": poisson_nll(target, rates),
        "sqrt_loss": heldout_sqrt_mse(target, sqrt_poisson_mean(rates)) / (target.shape[0] * target.shape[1]),
    }
    scores["nll_per_batch"] = {
        str(level): poisson_nll(target[batches == level], rates[batches == level]) for level in np.unique(batches)
    }
    return scores


def run_scn2s(
    adata, method: str, batch: bool | None, *, integrate: bool = False
) -> tuple[np.ndarray, np.ndarray | dict | None, dict]:
    """The layer, the embedding (with ``integrate``: ``{"integrated": ..., "plain": ...}``) and the choice."""
    import scn2s

    if batch is None:  # a separate fit of each batch's cells; their embeddings are not comparable: none
        layer = np.zeros(adata.shape)
        for level in adata.obs["batch"].cat.categories:
            cells = (adata.obs["batch"] == level).to_numpy()
            layer[cells] = run_scn2s(adata[cells].copy(), method, False)[0]
        return layer, None, {}
    run = adata.copy()
    kwargs = {"batch_key": "batch", "integrate": integrate} if batch else {}
    scn2s.pp.denoise(run, method=method, progress=False, rng=0, **kwargs)
    record = run.uns["denoised"]
    info = {"best_params": {k: _plain(v) for k, v in record["best_params"].items()}}
    family = record["selection"].get(record["method"], {})
    if "batches" in family:
        info["batches"] = {k: _plain(v) for k, v in family["batches"].items() if k != "levels"}
    layer = run.layers["denoised"]
    layer = layer.toarray() if sparse.issparse(layer) else np.asarray(layer)
    rep = np.asarray(run.obsm["X_denoised"])
    if integrate:
        info["integration"] = {k: _plain(v) for k, v in record["integration"].items()}
        rep = {"integrated": np.asarray(run.obsm["X_denoised_integrated"]), "plain": rep}
    return np.asarray(layer, dtype=np.float64), rep, info


def run_scvi(adata, batch: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    import scvi

    scvi.settings.seed = 0
    run = adata.copy()
    run.X = run.X.astype(np.float32)
    scvi.model.SCVI.setup_anndata(run, batch_key="batch" if batch else None)
    model = scvi.model.SCVI(run)
    model.train(accelerator="cpu")
    frequencies = np.asarray(model.get_normalized_expression(library_size=1.0, n_samples=25, return_mean=True))
    latent = model.get_latent_representation()
    return frequencies.astype(np.float64), latent, {"epochs": len(model.history["elbo_train"])}


def run_calibrated(adata, name: str, batch: bool) -> tuple[np.ndarray, None, dict]:
    """``scn2s.pp.calibrate`` of a denoiser of :mod:`scn2s.denoisers` over ``DENOISERS[name]``, with ``batch_key``
    (all cells together or each batch alone, by held-out loss) or without."""
    import scn2s

    run = adata.copy()
    kwargs = {"batch_key": "batch"} if batch else {}
    scn2s.pp.calibrate(run, getattr(scn2s.denoisers, name), DENOISERS[name], progress=False, rng=0, **kwargs)
    record = run.uns["denoised"]
    entry = record["selection"][name]
    info = {"best_params": _plain(record["best_params"]), "loss_mean": _plain(entry["loss_mean"])}
    if "batches" in entry:
        info["batches"] = {k: _plain(v) for k, v in entry["batches"].items() if k != "levels"}
    return np.asarray(run.layers["denoised"], dtype=np.float64), None, info


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def transformed(adata, method: str) -> dict:
    """The layer written with ``transform_batch=REFERENCE`` (all molecules): its PCA's mixing and labels, and time."""
    import scanpy as sc

    import scn2s

    batches = adata.obs["batch"].to_numpy().astype(str)
    labelled = adata.obs["cell_type"].notna().to_numpy()
    labels = adata.obs["cell_type"].astype(str).to_numpy()[labelled]
    run = adata.copy()
    start = time.perf_counter()
    scn2s.pp.denoise(run, method=method, batch_key="batch", transform_batch=REFERENCE, progress=False, rng=0)
    seconds = time.perf_counter() - start
    family = run.uns["denoised"]["selection"][run.uns["denoised"]["method"]]
    layer = sc.AnnData(X=np.asarray(run.layers["denoised"], dtype=np.float32))
    sc.pp.normalize_total(layer, target_sum=1e4)
    sc.pp.log1p(layer)
    rep = sc.pp.pca(layer.X, n_comps=30, random_state=0)
    return {
        "embedding": {
            "representation": f"PCA(30) of log1p CP10k of the layer written as if in {REFERENCE}",
            "transformed": bool(family["batches"].get("transformed", False)),
            "batch_entropy": batch_entropy(rep, batches),
            **labels_agreement(rep[labelled], labels),
            "seconds": seconds,
        }
    }


def integrated(adata, method: str) -> dict:
    """The embedding with the batches removed, on all molecules: scn2s's ``integrate=True`` (with the embedding it
    corrects), scVI's latent with ``batch_key``; batch mixing, labels (ARI over the Leiden seeds) and time."""
    batches = adata.obs["batch"].to_numpy().astype(str)
    labelled = adata.obs["cell_type"].notna().to_numpy()
    labels = adata.obs["cell_type"].astype(str).to_numpy()[labelled]
    start = time.perf_counter()
    if method == "scvi":
        _, reps, info = run_scvi(adata, True)
        reps = {"integrated": reps}
    else:
        _, reps, info = run_scn2s(adata, method, True, integrate=True)
    seconds = time.perf_counter() - start

    def scores(rep: np.ndarray) -> dict:
        return {"batch_entropy": batch_entropy(rep, batches), **labels_agreement(rep[labelled], labels, LEIDEN_SEEDS)}

    return {"embedding": {**scores(reps.pop("integrated")), "seconds": seconds, **info}} | {
        f"embedding ({name})": scores(rep) for name, rep in reps.items()
    }


def run_method(adata, method: str, batch: bool | None) -> dict:
    from scn2s.split import binomial_split

    if batch == "transform":
        return transformed(adata, method)
    if batch == "integrated":
        return integrated(adata, method)
    batches = adata.obs["batch"].to_numpy().astype(str)
    labelled = adata.obs["cell_type"].notna().to_numpy()
    labels = adata.obs["cell_type"].astype(str).to_numpy()[labelled]
    if method == "scvi":
        fit = run_scvi
    elif method in DENOISERS:
        fit = lambda a, b: run_calibrated(a, method, b)  # noqa: E731
    else:
        fit = lambda a, b: run_scn2s(a, method, b)  # noqa: E731

    train, target = binomial_split(adata.X, 0.5, rng=0)
    half = adata.copy()
    half.X = train
    start = time.perf_counter()
    estimate, _, half_info = fit(half, batch)
    half_seconds = time.perf_counter() - start
    entry = {"heldout": {**heldout_scores(estimate, target, batches), "seconds": half_seconds, **half_info}}

    if batch is None or method in DENOISERS:  # no embedding
        return entry
    start = time.perf_counter()
    _, rep, info = fit(adata, batch)
    seconds = time.perf_counter() - start
    entry["embedding"] = {
        "batch_entropy": batch_entropy(rep, batches),
        **labels_agreement(rep[labelled], labels),
        "seconds": seconds,
        **info,
    }
    return entry


def tables(results: dict) -> str:
    held = [v["heldout"] for m in results.values() for v in m.values() if "heldout" in v]
    levels = sorted({b for h in held for b in h["nll_per_batch"]})
    head = "| method | batches | held-out NLL | " + " | ".join(levels) + " | sqrt loss | seconds (half) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for method, variants in results.items():
        for name, entry in variants.items():
            if "heldout" not in entry:
                continue
            held = entry["heldout"]
            per = " | ".join(f"{held['nll_per_batch'][b]:.5f}" for b in levels)
            lines.append(
                f"| {method} | {name} | {held['nll']:.5f} | {per} | {held['sqrt_loss']:.6f} | {held['seconds']:.0f} |"
            )
    lines += ["", "| method | batches | batch entropy | ARI | silhouette | seconds (all) |", "|---" * 6 + "|"]
    for method, variants in results.items():
        for name, entry in variants.items():
            if "embedding" not in entry or name == "integrated":
                continue
            emb = entry["embedding"]
            lines.append(
                f"| {method} | {name} | {emb['batch_entropy']:.3f} | {emb['ari']:.3f} | {emb['silhouette']:.3f} "
                f"| {emb['seconds']:.0f} |"
            )
    head = "| method | embedding | batch entropy | ARI (seed 0) | ARI (median of 5 seeds) | silhouette | seconds |"
    lines += ["", head, "|---" * 7 + "|"]
    for method, variants in results.items():
        entry = variants.get("integrated", {})
        for name, emb in entry.items():
            plain = "latent" if method == "scvi" else "integrated"
            what = name[len("embedding (") : -1] if name != "embedding" else plain
            seconds = f"{emb['seconds']:.0f}" if "seconds" in emb else ""
            lines.append(
                f"| {method} | {what} | {emb['batch_entropy']:.3f} | {emb['ari']:.3f} | {emb['ari_median']:.3f} "
                f"| {emb['silhouette']:.3f} | {seconds} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--methods", nargs="+", default=["lowrank", "autoencoder", "scvi"])
    parser.add_argument("--variants", nargs="+", default=["with", "without"], choices=[name for name, _ in VARIANTS])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--tables", action="store_true", help="print the tables of --out and exit")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.tables:
        print(tables(results))
        return
    adata = load(args.data)
    sizes = adata.obs["batch"].value_counts().to_dict()
    print(f"{adata.n_obs} cells x {adata.n_vars} genes; batches {sizes}", flush=True)
    for method in args.methods:
        for name, batch in VARIANTS:
            allowed = ("with", "without") + (("integrated",) if method == "scvi" else ())
            if name not in args.variants or (method in (*DENOISERS, "scvi") and name not in allowed):
                continue
            entry = run_method(adata, method, batch)
            print(method, name, json.dumps(entry, default=float), flush=True)
            results = json.loads(args.out.read_text()) if args.out.exists() else {}
            results.setdefault(method, {})[name] = entry
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(tables(results))


if __name__ == "__main__":
    main()
