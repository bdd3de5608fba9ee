"""The interface every model family offers the orchestration (:func:`scn2s.pp.denoise`).

A family is a package (:mod:`scn2s.lowrank`, :mod:`scn2s.autoencoder`) that holds its model, its search and its
data path, and offers:

* an options dataclass (``LowRankOptions``, ``AutoencoderOptions``), made from the family's ``*_kwds`` mapping of
  :func:`~scn2s.pp.denoise` by :func:`options_from` (unknown keys raise), and checked when it is made;
* ``select(counts, *, splits, options, rng, progress, ...)``: the search on the shared :class:`~scn2s.select.Splits`,
  scored by the same loss on the same held-out molecules as every other family, then the fit of the choice on the
  full counts; it returns a :class:`Selection`.

:func:`~scn2s.select.compare_families` compares selections by :attr:`Selection.heldout_losses` alone, and the
output and the record are built from :meth:`Selection.reconstruct`, :meth:`Selection.best_params` and
:meth:`Selection.record` alone, so a new family (an external denoiser, a model with batch covariates) plugs in
by offering the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Protocol, TypeVar

import numpy as np

__all__ = ["Selection", "SplitLosses", "options_from"]

T = TypeVar("T")


class Selection(Protocol):
    """What a family's ``select`` returns: its search's outcome and the full-depth fit it chose."""

    family: str
    """The family's name: the key of its entry in ``uns[key_added]["selection"]``."""

    @property
    def heldout_losses(self) -> np.ndarray:
        """Held-out loss of the family's choice, per split it was scored on (the splits' order)."""

    def reconstruct(self, rows: slice) -> np.ndarray:
        """Denoised expected counts of the cells ``rows``, all modelled genes (float64, dense)."""

    def best_params(self) -> dict:
        """The choice, for ``uns[key_added]["best_params"]``."""

    def record(self) -> dict:
        """The family's entry of ``uns[key_added]["selection"]``, ``n_splits`` included (``p``, ``seed`` are added)."""


def options_from(cls: type[T], kwds: Mapping | None, name: str) -> T:
    """``cls(**kwds)`` (``None``: the defaults), or a :class:`ValueError` that names the keys ``name`` accepts."""
    kwds = {} if kwds is None else kwds
    if not isinstance(kwds, Mapping):
        msg = f"{name} must be a mapping of option names to values or None, got {kwds!r}."
        raise TypeError(msg)
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(kwds) - set(valid))
    if unknown:
        msg = f"{name} has unknown key(s) {unknown}; valid: {valid}."
        raise ValueError(msg)
    return cls(**kwds)


class SplitLosses:
    """``loss_mean`` and ``loss_std`` of a search's held-out ``losses`` (splits x candidates), for its selection."""

    @property
    def loss_mean(self) -> np.ndarray:
        """Mean held-out loss of each candidate over the splits."""
        return self.losses.mean(axis=0)

    @property
    def loss_std(self) -> np.ndarray:
        """Standard deviation of each candidate's held-out loss over the splits (0 for one split)."""
        return self.losses.std(axis=0, ddof=1) if len(self.losses) > 1 else np.zeros(self.losses.shape[1])
