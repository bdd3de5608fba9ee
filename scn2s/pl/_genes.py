from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from .._validate import check_counts, describe_source
from ._utils import finish, make_axes

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)

_RAW = "0.6"
_DENOISED = "C0"


def genes(
    adata: AnnData,
    genes: str | Sequence[str],
    *,
    groupby: str | None = None,
    key: str = "denoised",
    layer: str | None = None,
    normalize: bool = True,
    ncols: int = 3,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes | list[Axes] | None:
    """Raw against denoised expression of genes, per group of cells.

    One panel per gene. For each group, a half violin of the raw values (grey, left) faces a half violin of
    the denoised values (right), with the group medians marked. Raw counts of a marker gene are mostly zeros
    and a few discrete levels; the denoised values show the expression level each cell is estimated to
    have.

    Parameters
    ----------
    adata
        Annotated data with raw counts and the layer written by :func:`scn2s.pp.denoise`.
    genes
        Gene name or names (``adata.var_names``).
    groupby
        Categorical ``obs`` column whose groups are compared, such as cell types or clusters; ``None`` draws
        all cells as one group.
    key
        Layer of denoised values (the ``key_added`` of :func:`scn2s.pp.denoise`).
    layer
        Layer of raw values; ``None`` uses ``adata.X``.
    normalize
        Scale each cell of both matrices to the median raw library size and take ``log1p``, as
        :func:`scanpy.pp.normalize_total` and :func:`scanpy.pp.log1p` would; the raw values must then be
        counts. ``False`` plots both as stored, for when both were already normalised and logged.
    ncols
        Panels per row.
    ax
        Axes to draw into, one per gene; ``None`` makes a new figure.
    show
        Show the figure; ``None`` shows it when matplotlib's backend is interactive (a notebook, a window).
    save
        Save the figure: a file path (``.png`` when it has no suffix), or ``True`` for
        ``scanpy.settings.figdir / "genes.<scanpy.settings.file_format_figs>"``.

    Returns
    -------
    The :class:`~matplotlib.axes.Axes` (a list of them, one per gene, for several genes), or ``None`` when the
    figure was shown.

    Raises
    ------
    KeyError
        If a gene, the ``groupby`` column, ``layer`` or ``key`` is not in ``adata``.
    ValueError
        If ``normalize=True`` and the raw values are not counts.
    """
    names = [genes] if isinstance(genes, str) else list(genes)
    if not names:
        msg = "genes is empty; name at least one gene."
        raise ValueError(msg)
    missing = [name for name in names if name not in adata.var_names]
    if missing:
        msg = f"Genes not in adata.var_names: {missing}."
        raise KeyError(msg)
    raw = _matrix(adata, layer)
    if key not in adata.layers:
        msg = f"Layer {key!r} not found in adata.layers; run scn2s.pp.denoise(adata, key_added={key!r}) first."
        raise KeyError(msg)
    denoised = adata.layers[key]
    labels = _groups(adata, groupby)
    columns = adata.var_names.get_indexer(names)
    if normalize:
        check_counts(raw, describe_source(layer))
        raw_values, denoised_values = _log_normalize(raw, denoised, columns)
    else:
        raw_values, denoised_values = _columns(raw, columns), _columns(denoised, columns)

    groups = [group for group in labels.categories if (labels == group).any()]
    members = [np.flatnonzero(labels == group) for group in groups]
    fig, axes = make_axes(
        len(names), ax, panel_size=(max(3.0, 0.45 * len(groups) + 1.0), 2.8), ncols=ncols, sharey=False
    )
    positions = np.arange(len(groups))
    for j, (name, axis) in enumerate(zip(names, axes, strict=True)):
        for values, side, color in ((raw_values, "low", _RAW), (denoised_values, "high", _DENOISED)):
            data = [values[rows, j] for rows in members]
            parts = axis.violinplot(data, positions, side=side, widths=0.85, showextrema=False, showmedians=True)
            for body in parts["bodies"]:
                body.set_facecolor(color)
                body.set_edgecolor(color)
                body.set_alpha(0.7)
            parts["cmedians"].set_color("k")
            parts["cmedians"].set_linewidth(1.0)
        axis.set_title(name)
        axis.set_xticks(positions, [str(group) for group in groups], rotation=90 if len(groups) > 3 else 0)
        if j % max(1, min(ncols, len(names))) == 0:
            axis.set_ylabel("log1p(normalised)" if normalize else "expression")
    _legend(axes[0])
    return finish(fig, axes, show=show, save=save, name="genes")


def _matrix(adata: AnnData, layer: str | None):
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        available = ", ".join(repr(k) for k in adata.layers) or "none"
        msg = f"Layer {layer!r} not found in adata.layers (available: {available})."
        raise KeyError(msg)
    return adata.layers[layer]


def _groups(adata: AnnData, groupby: str | None) -> pd.Categorical:
    if groupby is None:
        return pd.Categorical(np.full(adata.n_obs, "all cells"))
    if groupby not in adata.obs:
        msg = f"groupby={groupby!r} is not a column of adata.obs."
        raise KeyError(msg)
    column = adata.obs[groupby]
    return column.cat.remove_unused_categories().array if column.dtype == "category" else pd.Categorical(column)


def _columns(X, columns: np.ndarray) -> np.ndarray:
    block = X[:, columns]
    return np.asarray(block.toarray() if sparse.issparse(block) else block, dtype=np.float64)


def _log_normalize(raw, denoised, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    raw_library = np.asarray(raw.sum(axis=1), dtype=np.float64).ravel()
    target = float(np.median(raw_library[raw_library > 0])) if (raw_library > 0).any() else 1.0
    out = []
    for X in (raw, denoised):
        library = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
        scale = np.divide(target, library, out=np.zeros_like(library), where=library > 0)
        out.append(np.log1p(_columns(X, columns) * scale[:, None]))
    return out[0], out[1]


def _legend(ax: Axes) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=_RAW, alpha=0.7, label="raw"), Patch(color=_DENOISED, alpha=0.7, label="denoised")]
    ax.legend(handles=handles, fontsize="small", frameon=False, loc="upper right")
