"""The summary that the command line prints: what was written, why, and the held-out loss of the candidates."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._record import candidate_names, selection_curves

if TYPE_CHECKING:
    from .._record import SelectionCurve

__all__ = ["selection_summary"]


def selection_summary(record: dict, *, key: str, n_obs: int | None = None, n_best: int = 5) -> list[str]:
    """Lines saying which family was written and why, then each family's choice and a table of its candidates.

    The first line names the family written and its model. Where fewer than ``n_obs`` cells scored the candidates
    (the selection entries' ``scored_cells``), a line says so. After ``method="auto"``, the next lines give both
    families' held-out loss on the splits both were scored on and the margin. Each family's table lists the
    ``n_best`` candidates with the lowest mean loss, the ends of the grid and the value applied to the full
    counts, in grid order; the sd column only when the losses are averaged over more than one split.
    """
    written = record.get("method")
    families = list(record["selection"])
    curves = {}
    for family in families:
        try:
            (curves[family],) = selection_curves(record, family, key=key)
        except ValueError:
            curves[family] = None
    lines = [f"written: {written}, {_model(record, written, curves.get(written))}"]
    scored = {int(entry["scored_cells"]) for entry in record["selection"].values() if "scored_cells" in entry}
    if n_obs is not None and len(scored) == 1 and (n_scored := scored.pop()) < n_obs:
        lines.append(
            f"scored on: the held-out molecules of {n_scored:,} of the {n_obs:,} cells, drawn from each split's seed "
            "(every cell's molecules were split, and every cell's training molecules were the input)"
        )
    comparison = record.get("comparison")
    if comparison is not None:
        lines.extend(_comparison(record, comparison, curves))
    for family in families:
        curve = curves[family]
        if len(families) > 1:
            role = "written" if family == written else "best of its family, not written"
            lines.append(f"{family} ({role}): {_model(record, family, curve)}")
        if family == "autoencoder" and curve is not None:
            lines.append(_autoencoder_output(record["selection"][family]))
        if "batches" in record["selection"][family]:
            lines.append(_batches(record["selection"][family]["batches"], family))
        if curve is not None:
            names = candidate_names(record["selection"][family]) if family == "autoencoder" else None
            lines.extend(_table(curve, n_best, names=names, written=family == written))
    return lines


def _batches(batches: dict, family: str) -> str:
    """A family's use of the batches: used or not, and the held-out losses with and without them."""
    what = {"lowrank": "per-batch gene means", "autoencoder": "batch covariate"}.get(family, "each batch alone")
    where = f"obs[{str(batches['key'])!r}], {len(batches['levels'])} batches"
    used = bool(batches["used"])
    if not bool(batches["compared"]):
        chosen = "used (a fixed rank: not compared)" if family == "lowrank" else ("used" if used else "not used")
        line = f"  {what} ({where}): {chosen}"
    else:
        with_, without = float(batches["loss_with"]), float(batches["loss_without"])
        line = (
            f"  {what} ({where}): {'used' if used else 'not used'}, held-out loss {with_:.6g} with, "
            f"{without:.6g} without ({100 * (with_ / without - 1):+.2f}%)"
        )
    if "reference" in batches:
        state = "written" if bool(batches["transformed"]) else f"not applied (the {what} lost)"
        line += f"; every cell as if in batch {batches['reference']!r}: {state}"
    return line


def _model(record: dict, family: str, curve: SelectionCurve | None) -> str:
    """The model of ``family``: its choice, with the readable name of an autoencoder candidate."""
    if curve is None:
        fixed = ", ".join(f"{name} {value}" for name, value in record.get("best_params", {}).items())
        return f"{fixed}, fixed by the caller (no search)"
    if family == "autoencoder":
        entry = record["selection"][family]
        labels = [str(value) for value in curve.values]
        name = candidate_names(entry)[labels.index(str(curve.chosen))]
        return f"{curve.chosen} ({name})"
    return _choice(curve)


def _comparison(record: dict, comparison: dict, curves: dict) -> list[str]:
    """Every family's held-out loss on the shared splits, the margin, and which was written."""
    losses = {family: float(loss) for family, loss in comparison["loss"].items()}
    chosen = str(comparison["chosen"])
    n = int(comparison["n_splits"])
    shared = "the split" if n == 1 else f"the {n} splits"
    if len(losses) == 2:
        lines = [f"why: the lower held-out loss of the two families, on {shared} both were scored on:"]
    else:
        lines = [f"why: the lowest held-out loss of the {len(losses)} families, on {shared} all were scored on:"]
    best = losses[chosen]
    what = {family: _chosen_name(curves.get(family)) for family in losses}
    width, what_width = max(map(len, losses)), max(map(len, what.values()))
    for family in sorted(losses, key=losses.get):
        if family == chosen:
            note = "lowest  <- written"
        else:
            note = f"{100 * (losses[family] / best - 1):+.2f}% ({losses[family] - best:+.3g}), not written"
        lines.append(f"  {family:<{width}}  {losses[family]:<10.6g}  {what[family]:<{what_width}}  {note}")
    return lines


def _chosen_name(curve: SelectionCurve | None) -> str:
    """The best candidate of a family at the split depth: ``rank 13``, or an autoencoder candidate's label."""
    if curve is None:
        return ""
    return str(curve.chosen) if curve.name == "config" else f"{curve.name} {curve.chosen}"


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


def _table(curve: SelectionCurve, n_best: int, *, names: list[str] | None, written: bool) -> list[str]:
    """The held-out loss of the best candidates; ``names``: a readable name printed beside each label."""
    mean, std, values = curve.loss_mean, curve.loss_std, curve.values
    best = int(np.argmin(mean))
    rows = {0, len(values) - 1, *np.argsort(mean, kind="stable")[:n_best].tolist()}
    rows |= set(np.flatnonzero(values == curve.applied).tolist())
    spread = curve.n_splits > 1
    label = "candidate" if names is not None else curve.name
    width = max(len(label), 6, *(len(str(v)) for v in values))
    align = "<" if names is not None else ">"
    over = f"mean and sd over {curve.n_splits} splits" if spread else "one split"
    header = f"    {label:{align}{width}}  {'loss':>10}" + (f"  {'sd':>8}" if spread else "") + f"  {'vs lowest':>9}"
    if names is not None:
        name_width = max(map(len, names))
        names = [f"{name:<{name_width}}" for name in names]
    lines = [f"  held-out loss ({curve.loss_label}; {over}):", header]
    previous = None
    for i in sorted(rows):
        if previous is not None and i > previous + 1:
            lines.append(f"    {'...':{align}{width}}")
        previous = i
        excess = "lowest" if i == best else f"{100 * (mean[i] / mean[best] - 1):+.2f}%"
        notes = []
        if values[i] == curve.chosen:
            notes.append("chosen" if written else "best of its family")
        if values[i] == curve.applied and curve.applied != curve.chosen:
            notes.append("applied at full depth")
        note = f"  <- {', '.join(notes)}" if notes else ""
        sd = f"  {std[i]:>8.2g}" if spread else ""
        name = f"  {names[i]}" if names is not None else ""
        lines.append(f"    {values[i]!s:{align}{width}}  {mean[i]:>10.6g}{sd}  {excess:>9}{name}{note}".rstrip())
    return lines
