"""Reading the selection record that :func:`scn2s.pp.denoise` writes to ``uns[key_added]``.

Each family's entry of ``uns[key]["selection"]`` that searched a grid holds ``grid`` (one named
hyperparameter and its values), ``loss_mean``, ``loss_std`` and ``loss_per_split`` (held-out loss of each
candidate), and the choice: ``split_<name>`` (chosen at the training half's depth, where the losses were
measured) and ``<name>`` (the value applied to the full counts). Plots and the command line read it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["LOSS_LABELS", "SelectionCurve", "candidate_names", "get_record", "selection_curves"]

#: Readable names of the losses recorded in ``selection[family]["loss"]``.
LOSS_LABELS = {"heldout_sqrt_mse": "MSE of square-root counts per entry"}


@dataclass(frozen=True)
class SelectionCurve:
    """Held-out loss of one family's candidates over its hyperparameter grid."""

    family: str
    name: str
    values: np.ndarray
    loss_mean: np.ndarray
    loss_std: np.ndarray
    loss_per_split: np.ndarray | None
    chosen: float | str
    applied: float | str
    loss: str | None
    p: float | None

    @property
    def n_splits(self) -> int:
        """Number of splits the losses were averaged over."""
        return 1 if self.loss_per_split is None else len(self.loss_per_split)

    @property
    def loss_label(self) -> str:
        """Readable name of the loss."""
        return LOSS_LABELS.get(self.loss, self.loss or "held-out loss")


def get_record(adata: AnnData, key: str) -> dict:
    """The record of ``adata.uns[key]``, or a :class:`KeyError` that says how to make it."""
    record = adata.uns.get(key)
    if not isinstance(record, dict) or "selection" not in record:
        msg = f"adata.uns[{key!r}] holds no denoising record; run scn2s.pp.denoise(adata, key_added={key!r}) first."
        raise KeyError(msg)
    return record


def selection_curves(record: dict, families: str | list[str] | None = None, *, key: str = "denoised") -> list:
    """One :class:`SelectionCurve` per family of the record (all families by default).

    Raises :class:`ValueError` for a family fit with fixed hyperparameters (no held-out losses), and for a grid
    over more than one hyperparameter.
    """
    selection = record["selection"]
    if families is None:
        families = list(selection)
    elif isinstance(families, str):
        families = [families]
    missing = [family for family in families if family not in selection]
    if missing:
        msg = f"No selection for {missing} in adata.uns[{key!r}]; it has {list(selection)}."
        raise KeyError(msg)
    return [_curve(family, selection[family], record, key) for family in families]


def _curve(family: str, entry: dict, record: dict, key: str) -> SelectionCurve:
    if "loss_mean" not in entry:
        fixed = ", ".join(f"{name}={value}" for name, value in record.get("best_params", {}).items())
        msg = (
            f"adata.uns[{key!r}]['selection'][{family!r}] holds no held-out losses: the model was fit with fixed "
            f"hyperparameters ({fixed or 'no search'}), so nothing was selected. Run scn2s.pp.denoise without "
            "fixing them (for example without rank=) to search and plot the selection."
        )
        raise ValueError(msg)
    grid = entry["grid"]
    if len(grid) != 1:
        msg = f"The {family!r} grid spans {list(grid)}; only a grid over one hyperparameter can be drawn as a curve."
        raise ValueError(msg)
    ((name, values),) = grid.items()
    values = np.asarray(values)
    mean = np.asarray(entry["loss_mean"], dtype=np.float64)
    std = np.asarray(entry.get("loss_std", np.zeros_like(mean)), dtype=np.float64)
    per_split = entry.get("loss_per_split")
    chosen = entry.get(f"split_{name}", values[int(np.argmin(mean))])
    applied = entry.get(name, chosen)
    p = entry.get("p")
    return SelectionCurve(
        family=family,
        name=name,
        values=values,
        loss_mean=mean,
        loss_std=std,
        loss_per_split=None if per_split is None else np.asarray(per_split, dtype=np.float64),
        chosen=_scalar(chosen),
        applied=_scalar(applied),
        loss=None if entry.get("loss") is None else str(entry["loss"]),
        p=None if p is None else float(p),
    )


def _scalar(value):
    """A grid value as a Python scalar: an int or float for ranks, the label for autoencoder candidates."""
    value = np.asarray(value).item()
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        return value
    return int(value) if float(value).is_integer() else float(value)


#: The training input fractions of an autoencoder candidate that its readable name leaves unsaid.
_DEFAULT_INPUT_RANGE = (0.1, 0.9)


def candidate_names(entry: dict) -> list[str]:
    """Readable names of the autoencoder candidates of ``selection["autoencoder"]``, in grid order.

    For example ``"256 hidden, 32 bottleneck, dropout 0.1, posterior"`` beside the label ``h256-b32-d0.1``; the
    training input fractions are named where they differ from the default. Labels alone where the record lacks
    the settings. A candidate with the batch covariate is named so (``"..., batch covariate"``).
    """
    labels = [str(_scalar(label)) for label in np.asarray(entry["grid"]["config"])]
    if not all(name in entry for name in ("hidden", "bottleneck", "dropout", "posterior")):
        return labels
    names = []
    for i in range(len(labels)):
        dropout = float(entry["dropout"][i])
        parts = [
            f"{int(entry['hidden'][i])} hidden",
            f"{int(entry['bottleneck'][i])} bottleneck",
            f"dropout {dropout:g}" if dropout else "no dropout",
            "posterior" if bool(entry["posterior"][i]) else "no posterior",
        ]
        if "input_range" in entry:
            low, high = (float(v) for v in np.asarray(entry["input_range"])[i])
            if (low, high) != _DEFAULT_INPUT_RANGE:
                parts.append(f"inputs {low:g} of the molecules" if low == high else f"inputs {low:g} to {high:g}")
        if "batch_covariate" in entry and bool(entry["batch_covariate"][i]):
            parts.append("batch covariate")
        names.append(", ".join(parts))
    return names
