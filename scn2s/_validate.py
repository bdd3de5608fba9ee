"""Checks, fetches and writes shared by the AnnData-level functions.

Every message says what was wrong, where (``adata.X`` or ``adata.layers[...]``) and what to do.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from ._sparse import is_dask_array

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from anndata import AnnData

__all__ = [
    "ATTRIBUTES",
    "DELETE",
    "MAX_COUNT",
    "RECORD_KEYS",
    "boundary_rng",
    "check_counts",
    "check_fraction",
    "check_integer",
    "check_key",
    "check_sample_ratio",
    "check_writable",
    "describe_source",
    "gene_mask",
    "get_counts",
    "make_rng",
    "recorded_keys",
    "versions",
    "write_results",
]

logger = logging.getLogger(__name__)

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
                    f"{source} holds non-integer values (e.g. {example}), so it looks normalised or "
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


_RNG_KINDS = "a non-negative integer seed, a numpy.random.Generator, a numpy.random.RandomState or None"
_INT64 = 2**63


def make_rng(rng) -> np.random.Generator:
    """The array-level functions' random source: a Generator as it is, or one seeded by ``rng``.

    ``rng`` is an integer seed of any size, ``None`` (fresh entropy), a :class:`numpy.random.Generator` (used as
    it is) or a :class:`numpy.random.RandomState` (scanpy's legacy seed, which seeds a new Generator with an
    integer it draws); anything else raises a ``ValueError`` naming the argument.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(_seed_of(rng, fresh=rng is None))


def boundary_rng(rng) -> tuple[np.random.Generator, int | str]:
    """The random source of a public function's run and the seed that reproduces it, for its record.

    Every run is seeded by one integer: ``rng`` itself if it is one (of any size), or one drawn from ``rng``
    (a :class:`numpy.random.Generator` or :class:`numpy.random.RandomState`, which move on, so that two runs of
    one generator differ and their records tell them apart) or from fresh entropy (``None``). Passing the
    recorded seed as ``rng`` repeats the run. The seed is recorded as an integer, or as its decimal string if it
    does not fit in 64 bits (what ``.h5ad`` files hold). Anything else raises a ``ValueError`` naming the argument.
    """
    seed = _seed_of(rng, fresh=True)
    return np.random.default_rng(seed), (seed if seed < _INT64 else str(seed))


def _seed_of(rng, *, fresh: bool) -> int | None:
    if isinstance(rng, Integral) and not isinstance(rng, bool) and rng >= 0:
        return int(rng)
    if rng is None:
        return int(np.random.default_rng().integers(_INT64)) if fresh else None
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(_INT64))
    if isinstance(rng, np.random.RandomState):
        return int(rng.randint(0, _INT64 - 1, dtype=np.int64))
    msg = f"rng must be {_RNG_KINDS}, got {rng!r}."
    raise ValueError(msg)


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

ATTRIBUTES = ("obs", "var", "obsm", "varm", "layers", "uns")
"""The AnnData mappings scn2s writes to, in the order of the writes (the ``uns`` record last)."""

RECORD_KEYS = "keys"
"""The entry of a record that lists the keys its run wrote: ``{attribute: [key, ...]}``."""

Keys = dict[str, set[str]]


def _where(attribute: str, key: str) -> str:
    return f"adata.{attribute}[{key!r}]"


def _has(adata: AnnData, attribute: str, key: str) -> bool:
    mapping = getattr(adata, attribute)
    return key in (mapping.columns if attribute in ("obs", "var") else mapping)


def recorded_keys(record, legacy: Callable[[Mapping], Mapping[str, Any] | None] | None = None) -> Keys | None:
    """The keys an earlier scn2s record says its run wrote, or ``None`` if ``record`` is no scn2s record.

    A record lists them under :data:`RECORD_KEYS`; for a record of an earlier version without that list,
    ``legacy(record)`` (if given) says which keys that version wrote, or ``None``.
    """
    if not isinstance(record, Mapping):
        return None
    listed = record.get(RECORD_KEYS)
    if listed is None and legacy is not None:
        listed = legacy(record)
    if not isinstance(listed, Mapping):
        return None
    return {
        attribute: {str(key) for key in np.atleast_1d(np.asarray(listed[attribute], dtype=object)).tolist()}
        for attribute in ATTRIBUTES
        if attribute in listed
    }


def check_writable(
    adata: AnnData,
    planned: Mapping[str, Iterable[str]],
    *,
    record_key: str,
    protected: Iterable[tuple[str, str]] = (),
    legacy: Callable[[Mapping], Mapping[str, Any] | None] | None = None,
) -> Keys:
    """Raise, before any work, if a write of ``planned`` would overwrite a key scn2s does not own.

    A key is owned if the earlier record ``adata.uns[record_key]`` (:func:`recorded_keys`) lists it: a re-run
    over an earlier result replaces it. Any other existing key, ``uns[record_key]`` itself if it is no scn2s
    record, or any of ``protected`` (the input counts, as ``(attribute, key)`` pairs), is refused with a message
    naming it.

    Parameters
    ----------
    adata
        The AnnData to be written.
    planned
        The keys to be written, by attribute (``obs``, ``var``, ``obsm``, ``varm``, ``layers``, ``uns``).
    record_key
        The ``uns`` entry of the run's record.
    protected
        Keys never written or removed, such as ``("layers", "counts")`` for the input layer.
    legacy
        For a record without :data:`RECORD_KEYS`, the keys written by the version that wrote it.

    Returns
    -------
    The keys owned by the earlier record (empty if none), by attribute.

    Raises
    ------
    ValueError
        Naming the first key that may not be written.
    """
    protected = set(protected)
    earlier = recorded_keys(adata.uns.get(record_key), legacy) if record_key in adata.uns else {}
    if earlier is None:
        msg = (
            f"adata.uns[{record_key!r}] exists and is not a record written by scn2s; scn2s writes only keys it owns. "
            "Pass another key_added, or delete that entry first."
        )
        raise ValueError(msg)
    for attribute in ATTRIBUTES:
        for key in planned.get(attribute, ()):
            if (attribute, key) in protected:
                msg = (
                    f"{_where(attribute, key)} holds the input counts and would be overwritten by the output; "
                    "choose another key_added."
                )
                raise ValueError(msg)
            if attribute == "uns" and key == record_key:
                continue
            if _has(adata, attribute, key) and key not in earlier.get(attribute, ()):
                msg = (
                    f"{_where(attribute, key)} exists and was not written by scn2s under adata.uns[{record_key!r}]; "
                    "scn2s does not overwrite it. Pass another key_added, or delete that entry first."
                )
                raise ValueError(msg)
    return earlier


def write_results(
    adata: AnnData,
    *,
    record_key: str,
    record: dict,
    protected: Iterable[tuple[str, str]] = (),
    legacy: Callable[[Mapping], Mapping[str, Any] | None] | None = None,
    **entries: Mapping[str, Any],
) -> None:
    """Write a run's entries and its record ``adata.uns[record_key]``: only keys scn2s owns, all or none.

    ``entries`` are mappings by attribute (``obs=``, ``var=``, ``obsm=``, ``varm=``, ``layers=``, ``uns=``) of
    the keys to write. The keys are checked first (:func:`check_writable`: nothing is written if one is not
    scn2s's to write). The keys the earlier record lists that this run does not write are removed (an earlier
    output of another kind under the same name; ``protected`` keys are kept), and ``record`` is stored with
    :data:`RECORD_KEYS` set to the keys written, the record itself excepted.

    The writes go in the order of :data:`ATTRIBUTES` (the ``uns`` record last); ``obs`` and ``var`` are replaced
    by new frames holding the changed columns. Every write is entered in an undo log before it is made, so if
    any write fails or is interrupted (``KeyboardInterrupt`` included, at any line), the entries already written
    are restored to what they were (or removed; the old ``obs`` and ``var`` frames are put back) and the
    exception propagates. A view is made an actual AnnData by the first write (anndata warns with
    ``ImplicitModificationWarning`` unless that write replaces ``obs`` or ``var``); its parent is never changed.
    """
    unknown = set(entries) - set(ATTRIBUTES)
    if unknown:
        msg = f"write_results writes to {ATTRIBUTES}, got {sorted(unknown)}."
        raise TypeError(msg)
    protected = set(protected)
    planned = {attribute: list(entries.get(attribute) or {}) for attribute in ATTRIBUTES}
    earlier = check_writable(adata, planned, record_key=record_key, protected=protected, legacy=legacy)
    written = {attribute: sorted(keys) for attribute, keys in planned.items() if keys}
    changes = {attribute: dict(entries.get(attribute) or {}) for attribute in ATTRIBUTES}
    for attribute, keys in earlier.items():
        for key in keys - set(planned[attribute]):
            if (attribute, key) not in protected and not (attribute == "uns" and key == record_key):
                changes[attribute][key] = DELETE
    changes["uns"][record_key] = {**record, RECORD_KEYS: written}
    _commit(adata, changes)


def _commit(adata: AnnData, changes: Mapping[str, Mapping[str, Any]]) -> None:
    """Make ``changes`` (by attribute; :data:`DELETE` removes) all or none: an undo entry precedes every write."""
    undo: list[tuple[str, str, Any]] = []
    try:
        for name in ATTRIBUTES:
            entries = changes.get(name) or {}
            if name in ("obs", "var"):
                old = getattr(adata, name)
                if any(value is not DELETE or key in old.columns for key, value in entries.items()):
                    # a new frame, assigned at once; the old one is never modified and comes back on failure
                    new = _with_columns(old, entries)
                    undo.append((name, "", old))
                    setattr(adata, name, new)
                continue
            for key, value in entries.items():
                mapping = getattr(adata, name)  # anew: the first write makes a view actual
                old = mapping.get(key, _MISSING)
                if value is DELETE and old is _MISSING:
                    continue
                undo.append((name, key, old))
                if value is DELETE:
                    del mapping[key]
                else:
                    mapping[key] = value
    except BaseException:
        _roll_back(adata, undo)
        raise


def _roll_back(adata: AnnData, undo: list[tuple[str, str, Any]]) -> None:
    """Undo the log, last entry first.

    An entry that cannot be restored (the write that failed, which may fail again) does not stop the others.
    """
    for name, key, old in reversed(undo):
        try:
            if name in ("obs", "var"):
                setattr(adata, name, old)
                continue
            mapping = getattr(adata, name)
            if old is _MISSING:
                mapping.pop(key, None)
            elif mapping.get(key, _MISSING) is not old:
                mapping[key] = old
        except Exception:
            logger.debug("could not restore adata.%s[%r]", name, key, exc_info=True)


def _with_columns(frame, entries: Mapping[str, Any]):
    """A copy of ``frame`` with the columns of ``entries`` set (or, for :data:`DELETE`, removed)."""
    frame = frame.copy()
    for key, value in entries.items():
        if value is not DELETE:
            frame[key] = value
        elif key in frame.columns:
            del frame[key]
    return frame
