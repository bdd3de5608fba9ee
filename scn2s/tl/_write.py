"""Write an AnnData with its denoised layer computed chunk by chunk from the stored factors."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._sparse import is_dask_array
from ._factors import StoredFactors, check_chunk_size, load_factors

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["write_denoised"]

logger = logging.getLogger(__name__)

_ENCODING = {"encoding-type": "array", "encoding-version": "0.2.0"}  # anndata's dense array
_SUFFIXES = (".h5ad", ".zarr")
_ZARR_CHUNK_VALUES = 2**22  # 16 MiB of float32 per stored zarr chunk


def write_denoised(
    adata: AnnData, filename: str | os.PathLike, *, key: str = "denoised", chunk_size: int = 10_000
) -> None:
    """Write ``adata`` to an ``.h5ad`` or ``.zarr`` file with the denoised layer computed from the factors.

    ``adata`` is written by anndata's writer; then ``layers[key]`` is added to the file as a dense ``float32``
    array (anndata's encoding, so :func:`anndata.read_h5ad` and :func:`anndata.read_zarr` read it as a layer)
    and filled ``chunk_size`` cells at a time by :func:`scn2s.tl.reconstruct`'s computation: the full dense
    layer is never in memory. The file is written under a temporary name beside ``filename`` and renamed onto
    it when complete, so a failed or interrupted write leaves no partial file (and an existing ``filename`` as
    it was).

    With counts in a dask array (``pp.denoise`` of a lazily opened AnnData), ``layers[key]`` of
    ``output="layer"`` is a lazy dask array: anndata's writer then computes and writes it chunk by chunk, on
    dask's workers, into the same temporary-then-renamed file. With ``output="factors"``, the raw counts of the
    genes outside ``mask_var`` are read from the dask array one chunk of cells at a time.

    Parameters
    ----------
    adata
        Annotated data holding the factors of ``scn2s.pp.denoise(..., output="factors")``.
    filename
        Path ending in ``.h5ad`` or ``.zarr``; overwritten if it exists.
    key
        The ``key_added`` of :func:`scn2s.pp.denoise`; the layer's name in the file.
    chunk_size
        Cells computed and written at a time (memory: ``chunk_size`` x genes x 8 bytes).

    Returns
    -------
    ``None``. ``adata`` is not modified; the file holds ``adata`` and ``layers[key]``, the ``float32`` denoised
    values of every cell and gene.

    Raises
    ------
    KeyError, ValueError
        As :func:`scn2s.tl.reconstruct`; ``ValueError`` also if ``filename`` has another suffix, its folder does
        not exist, or ``adata.layers[key]`` exists already in memory (write ``adata`` with anndata's writer then).
    """
    check_chunk_size(chunk_size)
    lazy = is_dask_array(adata.layers[key]) if key in adata.layers else False
    factors = None if lazy else load_factors(adata, key)
    path = Path(filename)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        msg = f"filename must end in .h5ad or .zarr, got {str(path)!r}."
        raise ValueError(msg)
    if key in adata.layers and not lazy:
        msg = (
            f"adata.layers[{key!r}] exists already; write adata with adata.write_h5ad or adata.write_zarr, or "
            f"delete the layer first (del adata.layers[{key!r}])."
        )
        raise ValueError(msg)
    if not path.parent.is_dir():
        msg = f"the folder of {str(path)!r} does not exist."
        raise ValueError(msg)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        if suffix == ".h5ad":
            adata.write_h5ad(temporary)
            if not lazy:
                _fill_h5ad(temporary, key, factors, adata.shape, chunk_size)
        else:
            adata.write_zarr(temporary)
            if not lazy:
                _fill_zarr(temporary, key, factors, adata.shape, chunk_size)
        _replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    logger.info("wrote %s with layers[%r] (%d cells x %d genes)", path, key, *adata.shape)


def _row_chunks(n_obs: int, chunk_size: int):
    for start in range(0, n_obs, chunk_size):
        yield slice(start, min(start + chunk_size, n_obs))


def _fill_h5ad(path: Path, key: str, factors: StoredFactors, shape: tuple[int, int], chunk_size: int) -> None:
    import h5py

    genes = np.arange(shape[1])
    with h5py.File(path, "r+") as file:
        dataset = file["layers"].create_dataset(key, shape=shape, dtype=np.float32)
        dataset.attrs.update(_ENCODING)
        for rows in _row_chunks(shape[0], chunk_size):
            dataset[rows] = factors.block(np.arange(rows.start, rows.stop), genes)


def _fill_zarr(path: Path, key: str, factors: StoredFactors, shape: tuple[int, int], chunk_size: int) -> None:
    import zarr

    n_obs, n_vars = shape
    stored_rows = max(1, min(n_obs, chunk_size, _ZARR_CHUNK_VALUES // max(n_vars, 1)))
    step = stored_rows * max(1, chunk_size // stored_rows)  # whole stored chunks per write
    genes = np.arange(n_vars)
    group = zarr.open_group(path, mode="r+")
    array = group["layers"].create_array(key, shape=shape, dtype=np.float32, chunks=(stored_rows, max(n_vars, 1)))
    array.attrs.update(_ENCODING)
    for rows in _row_chunks(n_obs, step):
        array[rows] = factors.block(np.arange(rows.start, rows.stop), genes)
    # anndata reads the consolidated metadata, which its writer wrote before the layer existed
    with warnings.catch_warnings():  # zarr's warning that v3 has no consolidated metadata: anndata's writer gave it
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)
        zarr.consolidate_metadata(path)


def _replace(temporary: Path, path: Path) -> None:
    """Move ``temporary`` onto ``path``; an existing ``path`` is moved aside first, and back on failure."""
    if temporary.is_file():
        os.replace(temporary, path)  # atomic
        return
    aside = None
    if path.exists() or path.is_symlink():
        aside = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.old")
        os.replace(path, aside)
    try:
        os.replace(temporary, path)
    except BaseException:
        if aside is not None:
            os.replace(aside, path)
        raise
    if aside is not None:
        _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
