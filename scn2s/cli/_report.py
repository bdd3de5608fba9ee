"""The summary that the command line prints: the chosen model and the held-out loss of the candidates."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._record import selection_curves

if TYPE_CHECKING:
    from .._record import SelectionCurve

__all__ = ["selection_summary"]


def selection_summary(record: dict, *, key: str, n_best: int = 5) -> list[str]:
    """Lines describing the choice of each family and a compact table of its candidates' held-out losses.

    The table lists the ``n_best`` candidates with the lowest mean loss, the ends of the grid and the value
    applied to the full counts, in grid order.
    """
    lines = []
    for family in record["selection"]:
        try:
            (curve,) = selection_curves(record, family, key=key)
        except ValueError:
            fixed = ", ".join(f"{name} {value}" for name, value in record.get("best_params", {}).items())
            lines.append(f"model: {family}, {fixed}, fixed by the caller (no search)")
            continue
        lines.append(f"model: {family}, {_choice(curve)}")
        if family == "autoencoder":
            lines.append(_autoencoder_output(record["selection"][family]))
        lines.extend(_table(curve, n_best))
    return lines


_INFERENCE = {"full": "all of each cell's molecules", "replicas": "thinned replicas of each cell, averaged"}


def _autoencoder_output(selection: dict) -> str:
    """How the chosen network makes the output: posterior or not (with its shape factor), inference, epochs."""
    chosen = list(selection["grid"]["config"]).index(selection["chosen"])
    if bool(selection["posterior"][chosen]):
        output = f"posterior given each cell's counts, prior shapes x{float(selection['shape_scale']):.3g}"
    else:
        output = "the network's frequencies (no posterior)"
    inference = _INFERENCE.get(str(selection["inference"]), str(selection["inference"]))
    return f"  output: {output}; network input: {inference}; {int(selection['epochs'])} epochs"


def _choice(curve: SelectionCurve) -> str:
    name = curve.name
    if curve.applied == curve.chosen:
        return f"{name} {curve.applied} (lowest held-out loss)"
    depth = f" at depth {curve.p:g}·N" if curve.p is not None else ""
    return (
        f"{name} {curve.applied} applied to the full counts ({name} {curve.chosen} had the lowest held-out loss{depth})"
    )


def _table(curve: SelectionCurve, n_best: int) -> list[str]:
    mean, std, values = curve.loss_mean, curve.loss_std, curve.values
    best = int(np.argmin(mean))
    rows = {0, len(values) - 1, *np.argsort(mean, kind="stable")[:n_best].tolist()}
    rows |= set(np.flatnonzero(values == curve.applied).tolist())
    width = max(len(curve.name), 6)
    lines = [
        f"  held-out loss ({curve.loss_label}; mean and sd over {curve.n_splits} splits):",
        f"    {curve.name:>{width}}  {'loss':>10}  {'sd':>8}  {'vs lowest':>9}",
    ]
    previous = None
    for i in sorted(rows):
        if previous is not None and i > previous + 1:
            lines.append(f"    {'...':>{width}}")
        previous = i
        excess = "lowest" if i == best else f"{100 * (mean[i] / mean[best] - 1):+.2f}%"
        notes = []
        if values[i] == curve.chosen:
            notes.append("chosen")
        if values[i] == curve.applied and curve.applied != curve.chosen:
            notes.append("applied at full depth")
        note = f"  <- {', '.join(notes)}" if notes else ""
        lines.append(f"    {values[i]!s:>{width}}  {mean[i]:>10.6g}  {std[i]:>8.2g}  {excess:>9}{note}")
    return lines
