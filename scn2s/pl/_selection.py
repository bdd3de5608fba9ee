from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from .._record import get_record, selection_curves
from ._utils import finish, make_axes

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from anndata import AnnData
    from matplotlib.axes import Axes

    from .._record import SelectionCurve

logger = logging.getLogger(__name__)

_LINE = "C0"
_CHOICE = "C3"


def selection(
    adata: AnnData,
    *,
    key: str = "denoised",
    families: str | list[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Axes | list[Axes] | None:
    """Held-out loss against each hyperparameter, with the spread over splits and the choice marked.

    One panel per model family in ``adata.uns[key]["selection"]``, all on the same y axis since every family
    is scored by the same loss on the same held-out molecules. Each panel shows the mean held-out loss of
    every candidate on the grid, a band of one standard deviation over the splits and each split's own
    curve, a dot at the candidate with the lowest loss (the choice made at the training half's depth
    ``p N``), and, where it differs, a dashed line at the value applied to the full counts (for
    ``"lowrank"``, the rank after the depth correction).

    Parameters
    ----------
    adata
        Annotated data denoised by :func:`scn2s.pp.denoise`.
    key
        The ``key_added`` of that call: the record is ``adata.uns[key]``.
    families
        Family or families to draw; ``None`` draws every family in the record.
    ax
        Axes to draw into, one per family; ``None`` makes a new figure.
    show
        Show the figure; ``None`` shows it when matplotlib's backend is interactive (a notebook, a window).
    save
        Save the figure: a file path (``.png`` when it has no suffix), or ``True`` for
        ``scanpy.settings.figdir / "selection.<scanpy.settings.file_format_figs>"``.

    Returns
    -------
    The :class:`~matplotlib.axes.Axes` (a list of them for several families), or ``None`` when the figure
    was shown.

    Raises
    ------
    KeyError
        If ``adata.uns[key]`` holds no denoising record, or a family in ``families`` is not in it.
    ValueError
        If a family was fit with fixed hyperparameters (``rank=``): there was no search to plot.
    """
    record = get_record(adata, key)
    curves = selection_curves(record, families, key=key)
    fig, axes = make_axes(len(curves), ax, panel_size=(4.8, 3.6), ncols=len(curves), sharey=True)
    for i, (curve, axis) in enumerate(zip(curves, axes, strict=True)):
        _draw(axis, curve, chosen_family=len(curves) > 1 and curve.family == record.get("method"))
        if i == 0:
            axis.set_ylabel(f"held-out loss\n({curve.loss_label})")
    return finish(fig, axes, show=show, save=save, name="selection")


def _draw(ax: Axes, curve: SelectionCurve, *, chosen_family: bool) -> None:
    x, mean, std = curve.values, curve.loss_mean, curve.loss_std
    if curve.loss_per_split is not None and curve.n_splits > 1:
        for i, losses in enumerate(curve.loss_per_split):
            ax.plot(x, losses, color=_LINE, lw=0.6, alpha=0.4, label="each split" if i == 0 else None)
    ax.fill_between(x, mean - std, mean + std, color=_LINE, alpha=0.25, lw=0, label=f"± 1 sd, {curve.n_splits} splits")
    ax.plot(x, mean, color=_LINE, lw=1.6, label="mean held-out loss")
    depth = f" at depth {curve.p:g}·N" if curve.p is not None and curve.applied != curve.chosen else ""
    ax.plot(
        [curve.chosen],
        [_loss_at(curve, curve.chosen)],
        ls="none",
        marker="o",
        ms=7,
        color=_CHOICE,
        zorder=3,
        label=f"chosen{depth}: {curve.name} {curve.chosen}",
    )
    if curve.applied != curve.chosen:
        ax.axvline(
            curve.applied, color=_CHOICE, ls="--", lw=1.2, label=f"applied at full depth: {curve.name} {curve.applied}"
        )
    ax.set_xlabel(curve.name)
    ax.set_title(f"{curve.family} (chosen)" if chosen_family else curve.family)
    ax.legend(fontsize="small", frameon=False)


def _loss_at(curve: SelectionCurve, value: float) -> float:
    """Mean loss of the grid point ``value``, interpolated if it is not on the grid."""
    on_grid = np.flatnonzero(curve.values == value)
    if len(on_grid):
        return float(curve.loss_mean[on_grid[0]])
    order = np.argsort(curve.values)
    return float(np.interp(value, curve.values[order], curve.loss_mean[order]))
