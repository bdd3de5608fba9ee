"""How much memory a new allocation can have: checked before work whose output would not fit."""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["GIB", "available_memory"]

logger = logging.getLogger(__name__)

GIB = 2**30
_MEMINFO = Path("/proc/meminfo")


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
