"""How much memory a new allocation can have: checked before work whose output would not fit."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

__all__ = ["GIB", "available_memory", "check_layer_fits"]

logger = logging.getLogger(__name__)

GIB = 2**30
_MEMINFO = Path("/proc/meminfo")

PYTHON_ALTERNATIVES = (
    'Store the low-rank model instead with method="lowrank", output="factors", then compute denoised values for '
    "slices with scn2s.tl.reconstruct, or write the whole layer to an .h5ad or .zarr file chunk by chunk with "
    "scn2s.tl.write_denoised. Or denoise fewer cells or genes, e.g. adata[:, adata.var['highly_variable']].copy(): "
    "mask_var= alone does not shrink the layer, which keeps the raw counts of the genes it leaves out."
)


def check_layer_fits(shape: tuple[int, int], *, key_added: str, alternatives: str = PYTHON_ALTERNATIVES) -> None:
    """Raise :class:`MemoryError` if a ``float32`` layer of ``shape`` is larger than the memory available.

    Does nothing when the available memory is unknown (:func:`available_memory`).
    """
    n_obs, n_vars = shape
    size = n_obs * n_vars * np.dtype(np.float32).itemsize
    available = available_memory()
    if available is None:
        return
    logger.debug("dense layer %.3g GiB, %.3g GiB available", size / GIB, available / GIB)
    if size > available:
        msg = (
            f"The denoised layer adata.layers[{key_added!r}] would take {size / GIB:.3g} GiB ({n_obs} cells "
            f"x {n_vars} genes x 4 bytes), more than the {available / GIB:.3g} GiB of memory available; "
            f"nothing was computed. {alternatives}"
        )
        raise MemoryError(msg)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations without swapping, or ``None`` when unknown.

    Linux: ``MemAvailable`` of ``/proc/meminfo`` (free memory plus the page cache that can be dropped).
    Elsewhere: the free physical pages (``os.sysconf("SC_AVPHYS_PAGES")``) times the page size, where the
    platform reports them. Limits set by a container's cgroup are not read.
    """
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        logger.debug("available memory unknown on this platform")
        return None
