from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._validate import check_counts, describe_source
from ._genes import _columns, _log_normalize, _matrix
from ._utils import finish, make_axes

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes


def embedding(
    adata: AnnData,
    genes: str | Sequence[str],
    *,
    basis: str = "X_umap",
    key: str = "denoised",
    layer: str | None = None,
    normalize: bool = True,
    components: tuple[int, int] = (0, 1),
    size: float | None = None,
    cmap: str = "viridis",
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes | list[Axes] | None:
    """Cells in an embedding coloured by a gene's raw and denoised values, side by side.

    Two panels per gene, on one row: the raw values (left) and the denoised values (right), on the same colour
    scale, so that the denoised values' smoother pattern is read against the raw counts' zeros and few levels.
    Any embedding in ``obsm`` works: a UMAP computed from the denoised embedding
    (``sc.pp.neighbors(adata, use_rep="X_denoised"); sc.tl.umap(adata)``), ``X_pca``, or the embedding itself.

    Parameters
    ----------
    adata
        Annotated data with raw counts, the layer written by :func:`scn2s.pp.denoise` and the embedding.
    genes
        Gene name or names (``adata.var_names``).
    basis
        Key of the embedding in ``adata.obsm`` (cells x at least 2).
    key
        Layer of denoised values (the ``key_added`` of :func:`scn2s.pp.denoise`).
    layer
        Layer of raw values; ``None`` uses ``adata.X``.
    normalize
        Scale each cell of both matrices to the median raw library size and take ``log1p``, as
        :func:`scn2s.pl.genes` does; the raw values must then be counts. ``False`` plots both as stored.
    components
        The two columns of the embedding drawn (0-based).
    size
        Marker size; ``None`` scales it with the number of cells, as scanpy does.
    cmap
        Colour map.
    ax
        Axes to draw into, two per gene (raw, denoised); ``None`` makes a new figure.
    show
        Show the figure; ``None`` shows it when matplotlib's backend is interactive (a notebook, a window).
    save
        Save the figure: a file path (``.png`` when it has no suffix), or ``True`` for
        ``scanpy.settings.figdir / "embedding.<scanpy.settings.file_format_figs>"``.

    Returns
    -------
    The list of :class:`~matplotlib.axes.Axes`, raw then denoised for each gene, or ``None`` when the figure was
    shown.

    Raises
    ------
    KeyError
        If a gene, ``basis``, ``layer`` or ``key`` is not in ``adata``.
    ValueError
        If the embedding has fewer columns than ``components`` needs, or ``normalize=True`` and the raw values are
        not counts.
    """
    names = [genes] if isinstance(genes, str) else list(genes)
    if not names:
        msg = "genes is empty; name at least one gene."
        raise ValueError(msg)
    missing = [name for name in names if name not in adata.var_names]
    if missing:
        msg = f"Genes not in adata.var_names: {missing}."
        raise KeyError(msg)
    if basis not in adata.obsm:
        available = ", ".join(repr(k) for k in adata.obsm) or "none"
        msg = (
            f"Embedding {basis!r} not found in adata.obsm (available: {available}); e.g. "
            'sc.pp.neighbors(adata, use_rep="X_denoised") and sc.tl.umap(adata) write "X_umap".'
        )
        raise KeyError(msg)
    coordinates = np.asarray(adata.obsm[basis])
    if coordinates.ndim != 2 or coordinates.shape[1] <= max(components):
        msg = f"adata.obsm[{basis!r}] has shape {coordinates.shape}; components={components} needs more columns."
        raise ValueError(msg)
    raw = _matrix(adata, layer)
    if key not in adata.layers:
        msg = f"Layer {key!r} not found in adata.layers; run scn2s.pp.denoise(adata, key_added={key!r}) first."
        raise KeyError(msg)
    denoised = adata.layers[key]
    columns = adata.var_names.get_indexer(names)
    if normalize:
        check_counts(raw, describe_source(layer))
        raw_values, denoised_values = _log_normalize(raw, denoised, columns)
    else:
        raw_values, denoised_values = _columns(raw, columns), _columns(denoised, columns)

    fig, axes = make_axes(2 * len(names), ax, panel_size=(3.4, 3.0), ncols=2, sharey=False)
    x, y = coordinates[:, components[0]], coordinates[:, components[1]]
    size = min(120_000 / max(adata.n_obs, 1), 20.0) if size is None else size
    for j, name in enumerate(names):
        vmin = float(min(raw_values[:, j].min(), denoised_values[:, j].min()))
        vmax = float(max(raw_values[:, j].max(), denoised_values[:, j].max()))
        for values, axis, what in ((raw_values, axes[2 * j], "raw"), (denoised_values, axes[2 * j + 1], key)):
            order = np.argsort(values[:, j], kind="stable")  # highest on top
            points = axis.scatter(
                x[order], y[order], c=values[order, j], s=size, cmap=cmap, vmin=vmin, vmax=vmax, linewidths=0
            )
            axis.set_title(f"{name} ({what})")
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_xlabel(f"{basis.removeprefix('X_')}{components[0] + 1}")
            axis.set_ylabel(f"{basis.removeprefix('X_')}{components[1] + 1}")
        fig.colorbar(points, ax=axes[2 * j + 1], label="log1p(normalised)" if normalize else "expression")
    return finish(fig, axes, show=show, save=save, name="embedding")
