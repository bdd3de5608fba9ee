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
_OTHER = "0.45"
#: A band of ±1 sd narrower than this fraction of the panel's loss range is also drawn in a zoomed inset.
_THIN = 0.03
#: Characters per line of a wrapped candidate label.
_WRAP = 9


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
    every candidate on the grid, the spread over the splits (a band of one standard deviation and each split's
    own curve, for more than one split), a dot at the candidate with the lowest loss (the choice made at the
    training half's depth ``p N``), and, where it differs, a dashed line at the value applied to the full counts
    (for ``"lowrank"``, the rank after the depth correction). A grid of named candidates (the autoencoder's) is
    drawn as points, one per candidate. Where the band is too thin to see, a zoomed inset around the choice shows
    it. After ``method="auto"``, "chosen" marks only the family written (the other's best is "best of its
    family"), and a last panel compares the families' best on the splits all were scored on.

    Parameters
    ----------
    adata
        Annotated data denoised by :func:`scn2s.pp.denoise`.
    key
        The ``key_added`` of that call: the record is ``adata.uns[key]``.
    families
        Family or families to draw; ``None`` draws every family in the record.
    ax
        Axes to draw into, one per panel (one per family, and one for the comparison of the families after
        ``method="auto"`` when both are drawn); ``None`` makes a new figure.
    show
        Show the figure; ``None`` shows it when matplotlib's backend is interactive (a notebook, a window).
    save
        Save the figure: a file path (``.png`` when it has no suffix), or ``True`` for
        ``scanpy.settings.figdir / "selection.<scanpy.settings.file_format_figs>"``.

    Returns
    -------
    The :class:`~matplotlib.axes.Axes` (a list of them for several panels), or ``None`` when the figure
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
    comparison = record.get("comparison")
    drawn = {curve.family for curve in curves}
    if comparison is not None and not set(comparison["loss"]) <= drawn:
        comparison = None
    n_panels = len(curves) + (comparison is not None)
    zoomed = any(_band_is_thin(curve) for curve in curves)
    # a zoomed panel's legend goes beside it, clear of the inset: room for it
    fig, axes = make_axes(n_panels, ax, panel_size=(7.2 if zoomed else 4.8, 3.6), ncols=n_panels, sharey=True)
    several = len(record["selection"]) > 1
    written = record.get("method")
    for i, (curve, axis) in enumerate(zip(curves, axes, strict=False)):
        _draw(axis, curve, written=not several or curve.family == written, several=several)
        if i == 0:
            axis.set_ylabel(f"held-out loss\n({curve.loss_label})")
    if comparison is not None:
        _draw_comparison(axes[-1], comparison, {curve.family: curve for curve in curves})
    return finish(fig, axes, show=show, save=save, name="selection")


def _categorical(curve: SelectionCurve) -> bool:
    """Whether the grid holds named candidates (the autoencoder's labels) rather than numbers."""
    return np.asarray(curve.values).dtype.kind in "OUS"


def _draw(ax: Axes, curve: SelectionCurve, *, written: bool, several: bool) -> None:
    from matplotlib.lines import Line2D

    categorical = _categorical(curve)
    values = np.asarray(curve.values)
    x = np.arange(len(values)) if categorical else values
    mean = curve.loss_mean
    spread = curve.loss_per_split is not None and curve.n_splits > 1
    handles = []
    if spread:
        handles += _draw_spread(ax, curve, x, categorical=categorical)
    if categorical:
        ax.plot(x, mean, ls="none", marker="o", ms=6, color=_LINE)
    else:
        ax.plot(x, mean, color=_LINE, lw=1.6)
    mean_label = "mean held-out loss" if spread else "held-out loss (one split)"
    handles.append(
        Line2D([], [], color=_LINE, lw=0 if categorical else 1.6, marker="o" if categorical else None, label=mean_label)
    )
    role = "chosen" if written else "best of its family"
    depth = f" at depth {curve.p:g}·N" if curve.p is not None and curve.applied != curve.chosen else ""
    what = str(curve.chosen) if categorical else f"{curve.name} {curve.chosen}"
    position = int(np.flatnonzero(values == curve.chosen)[0]) if categorical else curve.chosen
    color = _CHOICE if written else _OTHER
    ax.plot([position], [_loss_at(curve, curve.chosen)], ls="none", marker="o", ms=8, color=color, zorder=3)
    handles.append(Line2D([], [], ls="none", marker="o", ms=8, color=color, label=f"{role}{depth}: {what}"))
    if curve.applied != curve.chosen and not categorical:
        ax.axvline(curve.applied, color=color, ls="--", lw=1.2)
        applied = "applied at full depth" if written else "for the full depth"
        handles.append(Line2D([], [], color=color, ls="--", lw=1.2, label=f"{applied}: {curve.name} {curve.applied}"))
    if categorical:
        ax.set_xticks(x, [_wrap(str(value)) for value in values], fontsize="small")
        ax.set_xlim(-0.5, len(values) - 0.5)
        ax.set_xlabel("candidate")
    else:
        ax.set_xlabel(curve.name)
    title = curve.family
    if several:
        title += " (written)" if written else " (not written)"
    ax.set_title(title)
    zoomed = spread and not categorical and _zoom_if_thin(ax, curve)
    if zoomed:  # beside the panel, clear of the inset
        ax.legend(handles=handles, fontsize="small", frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1))
    else:
        ax.legend(handles=handles, fontsize="small", frameon=False)


def _draw_spread(ax: Axes, curve: SelectionCurve, x: np.ndarray, *, categorical: bool) -> list:
    """Each split's losses and the ±1 sd band (error bars for named candidates); their legend entries."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    mean, std = curve.loss_mean, curve.loss_std
    n = curve.n_splits
    if categorical:
        for losses in curve.loss_per_split:
            ax.plot(x, losses, ls="none", marker="_", ms=10, mew=1.2, color=_LINE, alpha=0.6)
        ax.errorbar(x, mean, yerr=std, fmt="none", ecolor=_LINE, elinewidth=1.0, capsize=4, alpha=0.5)
        split_handle = Line2D([], [], ls="none", marker="_", ms=10, mew=1.2, color=_LINE, label="each split")
        band_handle = Line2D([], [], ls="-", lw=1.0, color=_LINE, alpha=0.5, label=_band_label(std, n))
        return [split_handle, band_handle]
    for losses in curve.loss_per_split:
        ax.plot(x, losses, color=_LINE, lw=0.6, alpha=0.4)
    ax.fill_between(x, mean - std, mean + std, color=_LINE, alpha=0.25, lw=0)
    # legend entries drawn stronger than the artists, so that they can be read however thin the band
    split_handle = Line2D([], [], color=_LINE, lw=1.0, alpha=0.7, label="each split")
    band_handle = Patch(color=_LINE, alpha=0.4, lw=0, label=_band_label(std, n))
    return [split_handle, band_handle]


def _band_label(std: np.ndarray, n_splits: int) -> str:
    return f"± 1 sd over {n_splits} splits (at most {float(np.max(std)):.2g})"


def _band_is_thin(curve: SelectionCurve) -> bool:
    """Whether a numeric grid's widest ±1 sd band over several splits is under :data:`_THIN` of its loss range."""
    if _categorical(curve) or curve.loss_per_split is None or curve.n_splits < 2:
        return False
    losses = np.concatenate([curve.loss_mean - curve.loss_std, curve.loss_mean + curve.loss_std])
    return bool(2 * np.max(curve.loss_std) < _THIN * (losses.max() - losses.min()))


def _zoom_if_thin(ax: Axes, curve: SelectionCurve) -> bool:
    """Where the band cannot be seen, an inset around the choice with each split, the band and the mean.

    Returns whether the inset was drawn.
    """
    if not _band_is_thin(curve):
        return False
    x, mean, std = np.asarray(curve.values, dtype=np.float64), curve.loss_mean, curve.loss_std
    span = max(3.0, 0.15 * (x.max() - x.min()))
    # the candidates near the choice whose loss is within a few band widths of the lowest
    around = np.abs(x - float(curve.chosen)) <= span
    window = around & (mean - mean.min() <= 10 * float(np.max(std)))
    if window.sum() < 3:
        window = around
    if window.sum() < 2:
        return False
    inset = ax.inset_axes(_free_corner(ax, x, mean))
    for losses in curve.loss_per_split:
        inset.plot(x[window], losses[window], color=_LINE, lw=0.8, alpha=0.6)
    inset.fill_between(x[window], (mean - std)[window], (mean + std)[window], color=_LINE, alpha=0.25, lw=0)
    inset.plot(x[window], mean[window], color=_LINE, lw=1.4)
    inset.plot([curve.chosen], [_loss_at(curve, curve.chosen)], ls="none", marker="o", ms=5, color=_CHOICE)
    if curve.applied != curve.chosen and x[window].min() <= float(curve.applied) <= x[window].max():
        inset.axvline(curve.applied, color=_CHOICE, ls="--", lw=1.0)
    inset.tick_params(labelsize="x-small")
    inset.set_title("zoom: each split and ± 1 sd", fontsize="x-small")
    ax.indicate_inset_zoom(inset, edgecolor="0.5")
    return True


def _free_corner(ax: Axes, x: np.ndarray, y: np.ndarray) -> list[float]:
    """Bounds (axes fraction) of an inset in the corner region the curve crosses least, below the legend."""
    corners = {
        (0.5, 0.3): [0.5, 0.3, 0.45, 0.3],
        (0.05, 0.3): [0.12, 0.3, 0.4, 0.3],
        (0.5, 0.05): [0.5, 0.08, 0.45, 0.3],
    }
    points = ax.transAxes.inverted().transform(ax.transData.transform(np.column_stack([x, y])))
    counts = {}
    for (left, bottom), bounds in corners.items():
        inside = (points[:, 0] >= bounds[0] - 0.05) & (points[:, 0] <= bounds[0] + bounds[2] + 0.05)
        inside &= (points[:, 1] >= bounds[1] - 0.05) & (points[:, 1] <= bounds[1] + bounds[3] + 0.05)
        counts[(left, bottom)] = int(inside.sum())
    return corners[min(counts, key=counts.get)]


def _draw_comparison(ax: Axes, comparison: dict, curves: dict) -> None:
    """The families' best held-out loss on the splits all were scored on; the written one marked."""
    from matplotlib.lines import Line2D

    losses = {family: float(loss) for family, loss in comparison["loss"].items()}
    chosen = str(comparison["chosen"])
    families = list(losses)
    best = losses[chosen]
    handles = []
    labels = []
    for i, family in enumerate(families):
        curve = curves[family]
        what = str(curve.chosen) if _categorical(curve) else f"{curve.name} {curve.chosen}"
        labels.append(f"{family}\n{_wrap(what)}")
        color = _CHOICE if family == chosen else _OTHER
        ax.plot([i], [losses[family]], ls="none", marker="o", ms=8, color=color, zorder=3)
        if family == chosen:
            text = f"written: {family}, {losses[family]:.5g}"
        else:
            margin = 100 * (losses[family] / best - 1)
            text = f"best of its family: {family}, {losses[family]:.5g} ({margin:+.2f}%)"
            ax.annotate(
                f"{margin:+.2f}%", (i, losses[family]), textcoords="offset points", xytext=(8, 0), fontsize="small"
            )
        handles.append(Line2D([], [], ls="none", marker="o", ms=8, color=color, label=text))
    ax.set_xticks(range(len(families)), labels, fontsize="small")
    ax.set_xlim(-0.6, len(families) - 0.4)
    n = int(comparison["n_splits"])
    ax.set_title("families compared")
    ax.set_xlabel(f"best of each family, on the {'split' if n == 1 else f'{n} splits'} both were scored on")
    ax.legend(handles=handles, fontsize="small", frameon=False)


def _wrap(label: str) -> str:
    """A candidate label on short lines, broken at its hyphens: ``h256-b32-d0.1-noposterior`` on three."""
    lines: list[str] = []
    for part in label.split("-"):
        if lines and len(lines[-1]) + 1 + len(part) <= _WRAP:
            lines[-1] += f"-{part}"
        else:
            lines.append(part)
    return "\n".join(lines)


def _loss_at(curve: SelectionCurve, value: float) -> float:
    """Mean loss of the grid point ``value``, interpolated if it is not on the grid."""
    on_grid = np.flatnonzero(curve.values == value)
    if len(on_grid):
        return float(curve.loss_mean[on_grid[0]])
    order = np.argsort(curve.values)
    return float(np.interp(value, curve.values[order], curve.loss_mean[order]))
