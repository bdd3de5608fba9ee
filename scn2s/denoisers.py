"""Ready denoisers for :func:`scn2s.pp.calibrate`: each ``denoiser(counts, **params)`` on a CSR count matrix.

Each returns a cells x genes array of non-negative values (expected counts up to each cell's scale) and carries
three attributes that :func:`~scn2s.pp.calibrate` reads:

``name``
    The family's name in the record (``uns[key_added]["selection"][name]``).
``defaults``
    The package's own default parameters (what a call without calibration uses).
``transfer(params, ratio)``
    The parameters to apply to counts ``ratio`` times as deep as those they were chosen on (the full counts
    against a split's training half, ``ratio = 1 / p``). A user's own function needs none of these; a
    :class:`Denoiser` made with a ``transfer=`` rule carries one.

**Depth.** ``calibrate`` chooses parameters at depth ``p N`` and applies them at ``N``. For kNN smoothing's ``k``
and MAGIC's ``t`` the shift was measured on simulations with known rates (``benchmarks/calibrate.py --depth``;
``benchmarks/RESULTS.md``, "Calibrate"): the best grid point at half depth is the best, or next to it, at full
depth, and scaling it by the inverse depth ratio (``k / 2``, ``t / 2``) made the true error worse, by up to 21%.
So these denoisers carry no transfer: their parameters are applied as chosen.

The packages of the peers are imported when a denoiser is first called, and a missing one raises an
:class:`ImportError` naming the extra to install: ``magic`` (``magic-impute``), ``scvi`` (``scvi-tools``).
kNN smoothing and PCA reconstruction need only scanpy and scikit-learn, and scn2s's own families nothing more.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from .loss import sqrt_poisson_mean_inverse

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["Denoiser", "autoencoder", "knn_smoothing", "lowrank", "magic", "pca", "scvi"]

logger = logging.getLogger(__name__)


class Denoiser:
    """A denoising function with its name, its package's defaults and its depth transfer.

    Parameters
    ----------
    function
        ``function(counts, **params)`` -> cells x genes array.
    name
        Name of the family in the record.
    defaults
        The parameters a call without calibration uses.
    transfer
        ``transfer(params, ratio)`` -> the parameters for counts ``ratio`` times as deep; ``None`` keeps them.
    """

    def __init__(
        self,
        function: Callable,
        *,
        name: str,
        defaults: Mapping,
        transfer: Callable[[dict, float], dict] | None = None,
    ) -> None:
        self.function = function
        self.name = name
        self.defaults = dict(defaults)
        self._transfer = transfer
        self.__doc__ = function.__doc__
        self.__name__ = name

    def __call__(self, counts: sparse.csr_matrix, **params):
        """Denoise ``counts`` (cells x genes, CSR) with ``params`` (the defaults for those not given)."""
        return self.function(sparse.csr_matrix(counts), **(self.defaults | params))

    def transfer(self, params: Mapping, ratio: float) -> dict:
        """``params`` chosen on counts of one depth, for counts ``ratio`` times as deep."""
        params = dict(params)
        return params if self._transfer is None or ratio == 1 else self._transfer(params, ratio)

    def clear(self) -> None:
        """Drop what the denoiser keeps between calls (MAGIC's graph, kNN smoothing's components)."""
        _CACHE.pop(self.name, None)

    def __repr__(self) -> str:
        return f"scn2s.denoisers.{self.name}"


def _require(module: str, extra: str, package: str) -> ModuleType:
    """Import ``module``, or raise an :class:`ImportError` that names the extra and the package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        msg = (
            f"scn2s.denoisers.{extra} needs the package {package!r}, which is not installed: "
            f'pip install "scn2s[{extra}]" (or pip install {package}).'
        )
        raise ImportError(msg) from error


def _library(counts: sparse.csr_matrix) -> np.ndarray:
    return np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()


def _frequencies(counts: sparse.csr_matrix) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Each cell's counts over its library size (rows without molecules stay zero), and the library sizes."""
    library = _library(counts)
    inverse = np.divide(1.0, library, out=np.zeros_like(library), where=library > 0)
    return sparse.csr_matrix(sparse.diags(inverse) @ counts.astype(np.float64)), library


def _log_normalised(counts: sparse.csr_matrix) -> tuple[sparse.csr_matrix, sparse.csr_matrix, float]:
    """``log1p`` of the counts normalised to the median library size (scanpy's ``normalize_total``)."""
    frequencies, library = _frequencies(counts)
    target = float(np.median(library[library > 0])) if (library > 0).any() else 1.0
    logged = frequencies * target
    logged.data = np.log1p(logged.data)
    return logged, frequencies, target


def _n_comps(requested: int, shape: tuple[int, int]) -> int:
    return int(max(0, min(requested, min(shape) - 1)))


def _pca_scores(logged: sparse.csr_matrix, n_comps: int, random_state: int) -> np.ndarray:
    """The first ``n_comps`` principal components of the cells (scikit-learn's randomized PCA)."""
    from sklearn.decomposition import PCA

    return PCA(n_comps, svd_solver="randomized", random_state=random_state).fit_transform(logged.toarray())


_CACHE: dict[str, tuple] = {}


def _cached(kind: str, key: tuple, compute: Callable):
    """``compute()``, or its value for the last call of ``kind`` with the same ``key``.

    One value is kept per kind (the denoiser's name; :meth:`Denoiser.clear` drops it): a grid over a parameter
    that does not change the expensive part (MAGIC's ``t`` its graph, kNN smoothing's ``k`` its principal
    components) computes that part once per split.
    """
    held = _CACHE.get(kind)
    if held is not None and held[0] == key:
        return held[1]
    _CACHE.pop(kind, None)
    value = compute()
    _CACHE[kind] = (key, value)
    return value


def _fingerprint(counts: sparse.csr_matrix) -> tuple:
    """A checksum of a CSR matrix, to tell the same counts from others."""
    parts = (counts.indptr, counts.indices, counts.data)
    return (counts.shape, counts.dtype.str, *(zlib.crc32(np.ascontiguousarray(a).view(np.uint8)) for a in parts))


# --- kNN smoothing ------------------------------------------------------------------------------------------


def _knn_smoothing(counts: sparse.csr_matrix, *, k: int, n_pcs: int, random_state: int) -> sparse.csr_matrix:
    """Each cell's frequencies averaged over its ``k`` nearest cells, itself included.

    Neighbours are found by Euclidean distance on the first ``n_pcs`` principal components of the
    log-normalised counts (scikit-learn's randomized PCA and exact neighbours; the components of the last
    counts are kept, so a grid over ``k`` computes them once per split). The result holds frequencies (each
    cell's counts over its library size, averaged), which :func:`~scn2s.pp.calibrate` brings to each cell's
    library size.
    """
    from sklearn.neighbors import NearestNeighbors

    n_cells = counts.shape[0]
    k = int(k)
    if k < 1:
        msg = f"k must be at least 1 (the cell itself), got {k}."
        raise ValueError(msg)
    k = min(k, n_cells)
    logged, frequencies, _ = _log_normalised(counts)
    if k == 1:
        return frequencies
    n_comps = _n_comps(n_pcs, counts.shape)
    key = (_fingerprint(counts), n_comps, random_state)
    space = _cached(
        "knn_smoothing", key, lambda: _pca_scores(logged, n_comps, random_state) if n_comps else logged.toarray()
    )
    _, columns = NearestNeighbors(n_neighbors=k).fit(space).kneighbors(space)
    # each cell is among its own neighbours (distance 0) unless k other cells are identical to it: put it in
    rows = np.arange(n_cells)
    alone = ~(columns == rows[:, None]).any(axis=1)
    columns[alone, -1] = rows[alone]
    weights = sparse.csr_matrix(
        (np.full(columns.size, 1.0 / k), columns.ravel(), np.arange(0, columns.size + 1, k)), shape=(n_cells, n_cells)
    )
    return sparse.csr_matrix(weights @ frequencies)


knn_smoothing = Denoiser(_knn_smoothing, name="knn_smoothing", defaults={"k": 15, "n_pcs": 30, "random_state": 0})


# --- PCA reconstruction -------------------------------------------------------------------------------------


def _pca(counts: sparse.csr_matrix, *, n_comps: int, random_state: int) -> np.ndarray:
    """The log-normalised counts reconstructed from their first ``n_comps`` principal components (scanpy's PCA).

    ``expm1`` of ``mean + scores @ components``, clipped at zero: normalised expected counts (``n_comps=0``: the
    genes' means).
    """
    import scanpy as sc

    logged, _, _ = _log_normalised(counts)
    n_comps = _n_comps(n_comps, counts.shape)
    mean = np.asarray(logged.mean(axis=0), dtype=np.float64).ravel()
    reconstruction = np.broadcast_to(mean, counts.shape).copy()
    if n_comps > 0:
        scores, components, _, _ = sc.pp.pca(logged, n_comps=n_comps, random_state=random_state, return_info=True)
        reconstruction += np.asarray(scores, dtype=np.float64) @ np.asarray(components, dtype=np.float64)
    np.expm1(reconstruction, out=reconstruction)
    return np.clip(reconstruction, 0.0, None, out=reconstruction)


pca = Denoiser(_pca, name="pca", defaults={"n_comps": 50, "random_state": 0})


# --- MAGIC --------------------------------------------------------------------------------------------------


def _magic(
    counts: sparse.csr_matrix,
    *,
    t,
    knn: int,
    decay: float,
    n_pca: int,
    random_state: int,
    back: str = "poisson_mean",
) -> np.ndarray:
    """MAGIC (van Dijk et al. 2018) on library-normalised square-root counts, as its tutorial preprocesses them.

    Genes without molecules are left out (and get zero). The imputed values are clipped at zero and brought back
    to counts: ``back="poisson_mean"`` (the default) takes them, on each cell's own depth, as expected square roots
    of Poisson counts and inverts that (:func:`scn2s.loss.sqrt_poisson_mean_inverse`, as scn2s's low-rank model
    does); ``back="square"`` squares them (normalised expected counts, as MAGIC's users do), which underestimates
    genes of a few molecules many times over, since the square of an average of square roots is far below the
    average (``benchmarks/RESULTS.md``, "Calibrate"). The diffusion operator of the last counts and ``knn``,
    ``decay``, ``n_pca`` is kept, so a grid over ``t`` builds the graph once per split.
    """
    magic_module = _require("magic", "magic", "magic-impute")
    expressed = np.flatnonzero(counts.getnnz(axis=0) > 0)  # MAGIC asks for genes without molecules to be removed

    def fit():
        frequencies, library = _frequencies(counts[:, expressed])
        normalised = frequencies * float(np.median(library[library > 0]))
        normalised.data = np.sqrt(normalised.data)
        n_comps = _n_comps(n_pca, normalised.shape) or None
        operator = magic_module.MAGIC(t=t, knn=knn, decay=decay, n_pca=n_comps, random_state=random_state, verbose=0)
        return operator.fit(normalised)

    operator = _cached("magic", (_fingerprint(counts), knn, decay, n_pca, random_state), fit)
    operator.set_params(t=t)
    smoothed = np.zeros(counts.shape)
    smoothed[:, expressed] = np.asarray(operator.transform(genes="all_genes"), dtype=np.float64)
    np.clip(smoothed, 0.0, None, out=smoothed)
    if back == "square":
        return np.square(smoothed, out=smoothed)
    if back == "poisson_mean":
        library = _library(counts)
        target = float(np.median(library[library > 0]))
        return sqrt_poisson_mean_inverse(smoothed * np.sqrt(library / target)[:, None])
    msg = f'back must be "square" or "poisson_mean", got {back!r}.'
    raise ValueError(msg)


magic = Denoiser(
    _magic,
    name="magic",
    defaults={"t": 3, "knn": 5, "decay": 1, "n_pca": 100, "random_state": 0, "back": "poisson_mean"},
)


# --- scVI ---------------------------------------------------------------------------------------------------


def _scvi(counts: sparse.csr_matrix, *, n_latent: int, max_epochs: int | None, seed: int) -> np.ndarray:
    """The normalised expression of scVI (Lopez et al. 2018), the mean of 25 posterior samples (library size 1).

    ``max_epochs=None`` is scVI's own default (``min(400, 20000 / cells * 400)``). Trained on scVI's default
    accelerator.
    """
    import anndata as ad

    scvi_module = _require("scvi", "scvi", "scvi-tools")
    scvi_module.settings.seed = seed
    adata = ad.AnnData(X=counts.astype(np.float32))
    scvi_module.model.SCVI.setup_anndata(adata)
    model = scvi_module.model.SCVI(adata, n_latent=n_latent)
    model.train(max_epochs=max_epochs)
    frequencies = model.get_normalized_expression(library_size=1.0, n_samples=25, return_mean=True)
    return np.asarray(frequencies, dtype=np.float64)


scvi = Denoiser(_scvi, name="scvi", defaults={"n_latent": 10, "max_epochs": None, "seed": 0})


# --- scn2s's own families -----------------------------------------------------------------------------------


def _lowrank(counts: sparse.csr_matrix, *, rank: int, seed: int) -> np.ndarray:
    """scn2s's low-rank model of the normalised square-root counts at a fixed ``rank`` (no search)."""
    from .lowrank import fit_lowrank
    from .lowrank.model import reconstruct_counts

    fit = fit_lowrank(counts, rank=rank, rng=np.random.default_rng(seed))
    return reconstruct_counts(fit.factors, fit.rank, fit.library_size, fit.target_sum)


lowrank = Denoiser(_lowrank, name="lowrank", defaults={"rank": 10, "seed": 0})


def _autoencoder(counts: sparse.csr_matrix, *, seed: int, device: str | None, **config) -> np.ndarray:
    """scn2s's count autoencoder with one candidate's settings (``TrainConfig`` fields).

    Its epochs, inference mode and shape factor are chosen on a split of the counts it is given, the held-out
    molecules of the calling split never among them.
    """
    from .autoencoder import fit_autoencoder
    from .select import Splits

    rng = np.random.default_rng(seed)
    split_rng, fit_rng = rng.spawn(2)
    splits = Splits.draw(split_rng, 1, 0.5)
    fit = fit_autoencoder(counts, splits=splits, configs=[config], device=device, rng=fit_rng)
    return fit.reconstruct(slice(0, counts.shape[0]))


autoencoder = Denoiser(_autoencoder, name="autoencoder", defaults={"seed": 0, "device": None})
