"""Shared plumbing of the plotting functions: axes, ``show=`` and ``save=``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


def make_axes(
    n_panels: int, ax: Axes | Sequence[Axes] | None, *, panel_size: tuple[float, float], ncols: int, sharey: bool
) -> tuple[Figure, list[Axes]]:
    """``n_panels`` axes: the ones given in ``ax``, or a new figure laid out in ``ncols`` columns."""
    if ax is not None:
        from matplotlib.axes import Axes

        axes = [ax] if isinstance(ax, Axes) else list(np.ravel(ax))
        if len(axes) != n_panels:
            msg = f"ax holds {len(axes)} Axes but the plot has {n_panels} panels; pass one Axes per panel or ax=None."
            raise ValueError(msg)
        return axes[0].figure, axes
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, n_panels))
    nrows = -(-n_panels // ncols)
    width, height = panel_size
    fig, grid = plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), sharey=sharey, squeeze=False, layout="constrained"
    )
    axes = list(grid.ravel())
    for extra in axes[n_panels:]:
        extra.remove()
    return fig, axes[:n_panels]


def finish(fig: Figure, axes: list[Axes], *, show: bool | None, save: str | Path | bool | None, name: str):
    """Save and show like scanpy; return the Axes (one, or a list) unless the figure was shown."""
    if save:
        path = _save_path(save, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
        logger.info("saved figure to %s", path)
    if show is None:
        show = _interactive_backend()
    if show:
        import matplotlib.pyplot as plt

        plt.show()
        return None
    return axes[0] if len(axes) == 1 else axes


def _save_path(save: str | Path | bool, name: str) -> Path:
    if save is True:
        import scanpy as sc

        return Path(sc.settings.figdir) / f"{name}.{sc.settings.file_format_figs}"
    path = Path(save)
    return path if path.suffix else path.with_suffix(".png")


def _interactive_backend() -> bool:
    import matplotlib
    from matplotlib.backends import BackendFilter, backend_registry

    return matplotlib.get_backend().lower() not in backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE)
