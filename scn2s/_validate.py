"""Checks, fetches and writes shared by the AnnData-level functions.

Every message says what was wrong, where (``adata.X`` or ``adata.layers[...]``) and what to do.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from ._sparse import is_dask_array

if TYPE_CHECKING:
    from collections.abc import Mapping

    from anndata import AnnData

__all__ = [
    "DELETE",
    "MAX_COUNT",
    "check_counts",
    "check_fraction",
    "check_integer",
    "check_key",
    "check_sample_ratio",
    "describe_source",
    "gene_mask",
    "get_counts",
    "make_rng",
    "seed_record",
    "versions",
    "write_results",
]

MAX_COUNT = 2**53
"""Largest count accepted: the largest integer that float64 arithmetic holds exactly."""

_MISSING = object()


def describe_source(layer: str | None) -> str:
    """Where the counts are read from, as the user would type it: ``adata.X`` or ``adata.layers['name']``."""
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def _hint(source: str) -> str:
    if source == "adata.X":
        return 'If the raw counts are in a layer, pass layer="counts" (or its name).'
    if source.startswith("adata.layers"):
        return "Pass layer= naming the layer that holds the raw counts, or layer=None for adata.X."
    return "Pass the raw counts."


def get_counts(adata: AnnData, layer: str | None):
    """The count matrix of ``adata`` (``X`` or a layer), checked by :func:`check_counts`; never a copy.

    An AnnData opened with ``backed=`` holds ``X`` on disk (layers are read into memory): its ``X`` is returned
    unchecked, for the caller to read and check block by block (:class:`scn2s._blocks.RowBlocks`); so are counts
    in a dask array, for the caller to check chunk by chunk on dask's workers
    (:class:`scn2s.lowrank.dask.DaskRowBlocks`).
    """
    if layer is not None and not isinstance(layer, str):
        msg = f"layer must be the name of a layer (a string) or None for adata.X, got {layer!r}."
        raise TypeError(msg)
    if adata.n_obs == 0 or adata.n_vars == 0:
        msg = f"adata is empty ({adata.n_obs} cells x {adata.n_vars} genes); there are no counts to process."
        raise ValueError(msg)
    available = ", ".join(repr(k) for k in adata.layers) or "none"
    if layer is None:
        X = adata.X
        if X is None:
            msg = f"adata.X is None; pass layer= naming the layer with the raw counts (available: {available})."
            raise ValueError(msg)
        if adata.isbacked:
            return X
    elif layer in adata.layers:
        X = adata.layers[layer]
    else:
        msg = f"Layer {layer!r} not found in adata.layers (available: {available}); pass layer=None for adata.X."
        raise KeyError(msg)
    if is_dask_array(X):
        return X  # checked chunk by chunk on dask's workers (scn2s.lowrank.dask.DaskRowBlocks)
    check_counts(X, describe_source(layer))
    return X


_CHECK_CHUNK = 1 << 22


def check_counts(X, source: str = "X") -> None:
    """Raise if ``X`` is not a matrix of raw UMI counts.

    Accepted: dense or sparse (CSR, CSC) matrices of any integer dtype (signed or unsigned, 8 to 64 bits), or
    of a float dtype holding integer values, all finite, non-negative and at most :data:`MAX_COUNT`. ``X`` is
    never converted or modified; arithmetic on it is done in int64 or float64, on chunks of the values, so the
    check's own memory stays small whatever the size of ``X``.

    Parameters
    ----------
    X
        The counts.
    source
        Where ``X`` was read from, for the messages (:func:`describe_source`).
    """
    values = X.data if sparse.issparse(X) else np.asarray(X)
    dtype = values.dtype
    if dtype == np.bool_:
        msg = (
            f"{source} has boolean dtype, which holds presence or absence, not UMI counts; scn2s needs the raw "
            f"counts. {_hint(source)}"
        )
        raise TypeError(msg)
    if dtype.kind not in "iuf":
        msg = f"{source} has dtype {dtype}; expected UMI counts of an integer or float dtype."
        raise TypeError(msg)
    if values.size == 0:
        return
    flat = values.reshape(-1)
    chunks = [flat[start : start + _CHECK_CHUNK] for start in range(0, flat.size, _CHECK_CHUNK)]
    if dtype.kind == "f":
        n_nan = sum(int(np.count_nonzero(np.isnan(chunk))) for chunk in chunks)
        if n_nan:
            msg = f"{source} contains {n_nan} NaN value(s); raw UMI counts are finite. {_hint(source)}"
            raise ValueError(msg)
        n_inf = sum(int(np.count_nonzero(np.isinf(chunk))) for chunk in chunks)
        if n_inf:
            msg = f"{source} contains {n_inf} infinite value(s); raw UMI counts are finite. {_hint(source)}"
            raise ValueError(msg)
    low = min(chunk.min() for chunk in chunks)
    if low < 0:
        n_negative = sum(int(np.count_nonzero(chunk < 0)) for chunk in chunks)
        msg = (
            f"{source} contains {n_negative} negative value(s) (minimum {low:g}), so it looks scaled or centred; "
            f"scn2s needs raw UMI counts. {_hint(source)}"
        )
        raise ValueError(msg)
    if dtype.kind == "f":
        for chunk in chunks:
            fractional = chunk != np.round(chunk)
            if fractional.any():
                example = chunk[fractional][0]
                msg = (
                    f"{source} holds non-integer values (e.g. {example:.6g}), so it looks normalised or "
                    f"log-transformed; scn2s needs raw UMI counts. {_hint(source)}"
                )
                raise ValueError(msg)
    high = max(chunk.max() for chunk in chunks)
    high = int(high) if dtype.kind in "iu" else float(high)
    if high > MAX_COUNT:
        msg = (
            f"{source} holds values up to {high:.6g}, above 2**53, the largest integer float64 arithmetic holds "
            "exactly; these are not UMI counts (an unsigned integer that wrapped around below zero?)."
        )
        raise ValueError(msg)


def gene_mask(adata: AnnData, mask_var) -> np.ndarray | None:
    """Indices of the genes selected by ``mask_var`` (a boolean array or ``var`` column), or ``None`` for all.

    Raises
    ------
    KeyError
        If ``mask_var`` names no ``var`` column.
    ValueError
        If the mask is not boolean over the genes, or selects none.
    """
    if mask_var is None:
        return None
    if isinstance(mask_var, str):
        if mask_var not in adata.var:
            msg = f"mask_var={mask_var!r} is not a column of adata.var (run sc.pp.highly_variable_genes first?)."
            raise KeyError(msg)
        mask = adata.var[mask_var].to_numpy()
    else:
        mask = np.asarray(mask_var)
    if mask.dtype != bool or mask.shape != (adata.n_vars,):
        msg = (
            f"mask_var must be a boolean mask over the {adata.n_vars} genes, got dtype {mask.dtype} and shape "
            f"{mask.shape}."
        )
        raise ValueError(msg)
    if not mask.any():
        msg = "mask_var selects no gene; select at least one, or pass mask_var=None to model every gene."
        raise ValueError(msg)
    return np.flatnonzero(mask)


def check_fraction(name: str, value, *, closed_right: bool = False) -> None:
    """Raise unless ``value`` is a real number in ``(0, 1)`` (``(0, 1]`` with ``closed_right``)."""
    interval = "in (0, 1]" if closed_right else "strictly between 0 and 1"
    valid = isinstance(value, Real) and not isinstance(value, bool)
    if valid:
        valid = 0 < value <= 1 if closed_right else 0 < value < 1
    if not valid:
        msg = f"{name} must be {interval}, got {value!r}."
        raise ValueError(msg)


def check_sample_ratio(sample_ratio, *, held_out: bool) -> None:
    """Raise unless ``sample_ratio`` is None or a fraction; with ``held_out``, below 1.

    At ``sample_ratio=1`` the counts hold every molecule of the library, and the finite-pool split puts every
    molecule of one half into the other too (:func:`scn2s.split.overlap_probabilities`): nothing is held out.
    """
    if sample_ratio is None:
        return
    check_fraction("sample_ratio", sample_ratio, closed_right=True)
    if held_out and sample_ratio == 1:
        msg = (
            "sample_ratio=1 says the counts hold every molecule of the library; the two halves of a split then "
            "overlap so that one contains the other, and no molecule is held out. Pass a value below 1, or None "
            "for plain thinning."
        )
        raise ValueError(msg)


def check_integer(name: str, value, *, minimum: int, allow_none: bool = False) -> None:
    """Raise unless ``value`` is an integer (not a bool) of at least ``minimum`` (or None, if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, Integral) and not isinstance(value, bool) and value >= minimum:
        return
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if allow_none:
        what += " or None"
    msg = f"{name} must be {what}, got {value!r}."
    raise ValueError(msg)


def check_key(name: str, key, *, layer: str | None) -> None:
    """Raise unless ``key`` is a non-empty string that does not name the input layer ``layer``."""
    if not isinstance(key, str) or not key:
        msg = f"{name} must be a non-empty string, got {key!r}."
        raise ValueError(msg)
    if key == layer:
        msg = (
            f"{name}={key!r} would overwrite the input counts in adata.layers[{layer!r}]; choose another name "
            "for the output."
        )
        raise ValueError(msg)


def make_rng(rng) -> np.random.Generator:
    """``np.random.default_rng(rng)``, with a message naming the argument when ``rng`` is not a seed."""
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as error:
        msg = f"rng must be a non-negative integer seed, a numpy.random.Generator or None, got {rng!r}."
        raise ValueError(msg) from error


def seed_record(seed) -> int | str:
    """A storable description of the ``rng`` argument."""
    if seed is None:
        return "none"
    if isinstance(seed, (int, np.integer)):
        return int(seed)
    if isinstance(seed, np.random.Generator):
        seq = seed.bit_generator.seed_seq
        entropy = getattr(seq, "entropy", None)
        spawn_key = getattr(seq, "spawn_key", ())
        return f"Generator(entropy={entropy}, spawn_key={tuple(spawn_key)})"
    return repr(seed)


def versions() -> dict[str, str]:
    """Versions of Python and of the packages that determine the output, for ``uns`` records."""
    record = {"python": platform.python_version()}
    for package in ("scn2s", "numpy", "scipy", "anndata"):
        try:
            record[package] = version(package)
        except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
            record[package] = "unknown"
    return record


DELETE = object()
"""A value for :func:`write_results` that removes the entry (an older result that the new one replaces)."""

_ORDER = ("obs", "var", "obsm", "varm", "layers", "uns")


def write_results(
    adata: AnnData,
    *,
    layers: Mapping[str, Any] | None = None,
    uns: Mapping[str, Any] | None = None,
    obs: Mapping[str, Any] | None = None,
    var: Mapping[str, Any] | None = None,
    obsm: Mapping[str, Any] | None = None,
    varm: Mapping[str, Any] | None = None,
) -> None:
    """Write entries to ``obs`` and ``var`` columns, ``obsm``, ``varm``, ``layers`` and ``uns``: all or none.

    The entries are written in that order (the ``uns`` record last); an entry whose value is :data:`DELETE`
    is removed if present; ``obs`` and ``var`` are replaced by new frames holding the changed columns. If any
    write fails, or is interrupted (``KeyboardInterrupt`` included), the entries already written are restored
    to what they were (or removed; the old ``obs`` and ``var`` frames are put back), and the exception
    propagates. A view is made an actual AnnData by the first write (anndata warns with
    ``ImplicitModificationWarning`` unless that write replaces ``obs`` or ``var``); its parent is never changed.
    """
    given = {"obs": obs, "var": var, "obsm": obsm, "varm": varm, "layers": layers, "uns": uns}
    done: list[tuple[str, str, Any]] = []
    try:
        for name in _ORDER:
            entries = given[name] or {}
            if name in ("obs", "var"):
                old = getattr(adata, name)
                if any(value is not DELETE or key in old.columns for key, value in entries.items()):
                    # a new frame, assigned at once; the old one is never modified and comes back on failure
                    setattr(adata, name, _with_columns(old, entries))
                    done.append((name, "", old))
                continue
            for key, value in entries.items():
                mapping = getattr(adata, name)  # anew: the first write makes a view actual
                old = mapping.get(key, _MISSING)
                if value is DELETE:
                    if old is _MISSING:
                        continue
                    del mapping[key]
                else:
                    mapping[key] = value
                done.append((name, key, old))
    except BaseException:
        for name, key, old in reversed(done):
            if name in ("obs", "var"):
                setattr(adata, name, old)
                continue
            mapping = getattr(adata, name)
            if old is _MISSING:
                mapping.pop(key, None)
            else:
                mapping[key] = old
        raise


def _with_columns(frame, entries: Mapping[str, Any]):
    """A copy of ``frame`` with the columns of ``entries`` set (or, for :data:`DELETE`, removed)."""
    frame = frame.copy()
    for key, value in entries.items():
        if value is not DELETE:
            frame[key] = value
        elif key in frame.columns:
            del frame[key]
    return frame
