"""``batch_key`` on four PBMC samples of three chemistries: held-out loss with and without, and the embedding.

Data: ``../shared/data/pbmc_4batches_3chemistries.h5ad`` (``obs["batch"]``; ``obs["cell_type"]`` for the pbmc3k
cells). Genes: the 2,000 most variable (``seurat_v3`` on the counts, per batch). ``scn2s.pp.denoise(method=
"lowrank")`` with and without ``batch_key="batch"`` (``rng=0``); the record of the first holds both variants'
held-out losses on the same splits. For each run's embedding (``obsm["X_denoised"]``): the batch entropy of each
cell's 30 nearest neighbours (mean over cells, divided by ``log(4)``: 1 is perfect mixing), and, on the labelled
cells, the labels' silhouette and the ARI of Leiden clusters (resolution 1) against them.

    python benchmarks/batches.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
FILE = "pbmc_4batches_3chemistries.h5ad"


def batch_entropy(rep: np.ndarray, batches: np.ndarray, k: int = 30) -> float:
    from sklearn.neighbors import NearestNeighbors

    _, index = NearestNeighbors(n_neighbors=k + 1).fit(rep).kneighbors(rep)
    levels = np.unique(batches)
    codes = np.searchsorted(levels, batches)[index[:, 1:]]
    shares = np.stack([(codes == b).mean(axis=1) for b in range(len(levels))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(shares > 0, shares * np.log(shares), 0.0), axis=1)
    return float(entropy.mean() / np.log(len(levels)))


def labels_agreement(rep: np.ndarray, labels: np.ndarray) -> dict:
    import anndata as ad
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    adata = ad.AnnData(X=np.zeros((len(labels), 1)), obsm={"rep": rep})
    sc.pp.neighbors(adata, n_neighbors=15, use_rep="rep")
    sc.tl.leiden(adata, resolution=1.0, flavor="igraph", n_iterations=2, random_state=0)
    return {
        "ari": float(adjusted_rand_score(labels, adata.obs["leiden"])),
        "silhouette": float(silhouette_score(rep, labels, random_state=0)),
    }


def main() -> None:
    import anndata as ad
    import scanpy as sc

    import scn2s

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    adata = ad.read_h5ad(args.data / FILE)
    sc.pp.filter_genes(adata, min_cells=3)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3", batch_key="batch")
    adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    batches = adata.obs["batch"].astype(str).to_numpy()
    labelled = adata.obs["cell_type"].notna().to_numpy()
    labels = adata.obs["cell_type"].astype(str).to_numpy()[labelled]
    sizes = {str(level): int(size) for level, size in zip(*np.unique(batches, return_counts=True), strict=True)}
    print(f"{adata.n_obs} cells x {adata.n_vars} genes; batches {sizes}")
    result = {}
    for name, kwargs in (("with batch_key", {"batch_key": "batch"}), ("without", {})):
        run = adata.copy()
        start = time.perf_counter()
        scn2s.pp.denoise(run, method="lowrank", progress=False, **kwargs)
        seconds = time.perf_counter() - start
        record = run.uns["denoised"]
        rep = run.obsm["X_denoised"]
        entry = {
            "seconds": seconds,
            "rank": int(record["best_params"]["rank"]),
            "heldout_loss": float(record["selection"]["lowrank"]["loss_mean"].min()),
            "batch_entropy": batch_entropy(rep, batches),
            **labels_agreement(rep[labelled], labels),
        }
        if "batches" in record["selection"]["lowrank"]:
            entry["batches"] = {k: v for k, v in record["selection"]["lowrank"]["batches"].items() if k != "levels"}
        result[name] = entry
        print(name, json.dumps(entry, default=float), flush=True)


if __name__ == "__main__":
    main()
