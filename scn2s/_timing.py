"""Wall time of the steps of a run, for ``uns`` records and for benchmarks.

Each step logs ``start`` and ``end`` records on this module's logger (``scn2s._timing``, DEBUG) with the step's name in
``record.step`` and the phase in ``record.phase``, so a benchmark can attach a handler and line its own
measurements (memory, say) up with the steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Timings"]

logger = logging.getLogger(__name__)


class Timings:
    """Seconds spent per named step; a step entered several times accumulates."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time the enclosed block as step ``name``."""
        logger.debug("start %s", name, extra={"step": name, "phase": "start"})
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
            logger.debug("end %s (%.3f s)", name, elapsed, extra={"step": name, "phase": "end"})

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` measured elsewhere to step ``name``."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def as_dict(self) -> dict[str, float]:
        """A copy of the accumulated seconds per step."""
        return dict(self.seconds)
