"""Files of the command line: checks before any work, atomic writes after it."""

from __future__ import annotations

import logging
import os
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from anndata import AnnData

__all__ = ["InputError", "atomic_write", "check_paths", "input_errors", "read_h5ad", "write_h5ad"]

logger = logging.getLogger(__name__)


class InputError(Exception):
    """A problem with the command's arguments or input data: reported in one line, exit code 2."""


@contextmanager
def input_errors(source: Path) -> Iterator[None]:
    """Report the package's validation errors about ``source`` as :class:`InputError`.

    ``ValueError``, ``KeyError`` and ``TypeError`` raised inside the block become an :class:`InputError` whose
    message names ``source``.
    """
    try:
        yield
    except (ValueError, KeyError, TypeError) as err:
        message = err.args[0] if err.args and isinstance(err.args[0], str) else str(err)
        raise InputError(f"{source}: {message}") from err


def check_paths(input_path: Path | None, output_path: Path | None, *, force: bool) -> None:
    """Check, before any work, that the input can be read and the output may be written.

    Raises
    ------
    InputError
        If the input is missing or not a file; the output is a folder, lies in a missing folder, is the input
        itself, or exists and ``force`` is false.
    """
    if input_path is not None:
        if not input_path.exists():
            msg = f"input file not found: {input_path}"
            raise InputError(msg)
        if not input_path.is_file():
            msg = f"input is not a file: {input_path}"
            raise InputError(msg)
    if output_path is None:
        return
    if output_path.is_dir():
        msg = f"output {output_path} is a folder; give a file name such as {output_path / 'denoised.h5ad'}"
        raise InputError(msg)
    if not output_path.parent.is_dir():
        msg = f"output folder does not exist: {output_path.parent}"
        raise InputError(msg)
    if input_path is not None and _same_file(input_path, output_path):
        msg = f"refusing to overwrite the input file {input_path}; write to another file with -o"
        raise InputError(msg)
    if output_path.exists() and not force:
        msg = f"output file exists: {output_path}; pass --force to overwrite it"
        raise InputError(msg)


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))


def read_h5ad(path: Path) -> AnnData:
    """Read an ``.h5ad`` file; any failure is an :class:`InputError`."""
    import anndata as ad

    logger.info("reading %s", path)
    try:
        return ad.read_h5ad(path)
    except Exception as err:
        msg = f"cannot read {path} as an .h5ad file ({type(err).__name__}: {err})"
        raise InputError(msg) from err


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(temporary_path)``, then rename the temporary file onto ``path``.

    The temporary file lies in the same folder (so the rename is atomic) and is removed on any failure,
    ``KeyboardInterrupt`` included: ``path`` is either untouched or complete.
    """
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        write(temporary)
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    logger.info("wrote %s", path)


def write_h5ad(adata: AnnData, path: Path) -> None:
    """Write ``adata`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, adata.write_h5ad)
