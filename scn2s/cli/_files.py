"""Files of the command line: checks before any work, atomic no-replace writes after it."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import pickle
import shutil
import signal
import sys
import uuid
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING

from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from anndata import AnnData

__all__ = [
    "InputError",
    "Terminated",
    "WriteError",
    "atomic_write",
    "check_paths",
    "check_space",
    "estimated_size",
    "input_errors",
    "nbytes",
    "read_h5ad",
    "signals_interrupt",
    "write_anndata",
]

logger = logging.getLogger(__name__)

ZARR_SUFFIX = ".zarr"
_SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_HEADROOM = 1.1  # free space asked for, over the estimated size
_RENAME_NOREPLACE = 1  # linux/fs.h
_FORK_WRITES = sys.platform.startswith("linux") and hasattr(os, "fork")


class InputError(Exception):
    """A problem with the command's arguments or input data: reported in one line, exit code 2."""


class WriteError(Exception):
    """Writing the output failed (a full disk, an I/O error): reported in one line, exit code 1."""


class Terminated(KeyboardInterrupt):
    """``SIGTERM`` or ``SIGHUP`` received: handled like an interrupt; exit code ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """While the block runs, ``SIGTERM`` and ``SIGHUP`` raise :class:`Terminated`, as ``SIGINT`` raises an interrupt.

    The write in progress is abandoned and its temporary file removed. Outside the main thread (where Python
    cannot install handlers) nothing changes.
    """
    saved = {}

    def handler(signum, frame):
        raise Terminated(signum)

    try:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            saved[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for signum, previous in saved.items():
            signal.signal(signum, previous)


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
        If the input is missing or not a file; the output is a folder (other than a ``.zarr`` store), lies in a
        missing folder or one where no file can be created, is the input itself, or exists and ``force`` is false.
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
    if output_path.is_dir() and output_path.suffix != ZARR_SUFFIX:
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
    if output_path.suffix == ZARR_SUFFIX:
        try:
            import zarr  # noqa: F401
        except ImportError:
            msg = f"writing {output_path} as a .zarr store needs the zarr package (pip install zarr); or write .h5ad"
            raise InputError(msg) from None
    _check_writable_folder(output_path)


def _check_writable_folder(output_path: Path) -> None:
    """Create and remove a file beside ``output_path``: the surest test that the output can be written there."""
    probe = _temporary(output_path, "probe")
    try:
        probe.touch(exist_ok=False)
    except OSError as err:
        msg = f"cannot write to the output folder {output_path.parent} ({err.strerror or err}); nothing was computed"
        raise InputError(msg) from err
    probe.unlink(missing_ok=True)


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))


def _temporary(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.{kind}")


def check_space(path: Path, size: int) -> None:
    """Raise :class:`InputError` if the folder of ``path`` has less free space than ``size`` bytes (and a margin).

    Does nothing where the free space is unknown.
    """
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    needed = int(size * _HEADROOM)
    logger.debug("output about %d bytes, %d free in %s", size, free, path.parent)
    if needed > free:
        msg = (
            f"not enough free space for {path}: about {_gib(needed)} needed, {_gib(free)} free in {path.parent}; "
            "nothing was written"
        )
        raise InputError(msg)


def _gib(size: int) -> str:
    return f"{size / 2**30:.3g} GiB" if size >= 2**30 else f"{size / 2**20:.3g} MiB"


def nbytes(value) -> int:
    """The bytes of an array's values (and, if sparse, its indices)."""
    if sparse.issparse(value):
        return sum(part.nbytes for part in (value.data, value.indices, value.indptr) if hasattr(part, "nbytes"))
    return int(getattr(value, "nbytes", 0))


def estimated_size(adata: AnnData, *, extra: int = 0) -> int:
    """About the bytes an uncompressed file of ``adata`` takes (its arrays and frames), plus ``extra``."""
    size = extra + (nbytes(adata.X) if adata.X is not None and not adata.isbacked else 0)
    for mapping in (adata.layers, adata.obsm, adata.varm, adata.obsp, adata.varp):
        size += sum(nbytes(value) for value in mapping.values())
    for frame in (adata.obs, adata.var):
        size += int(frame.memory_usage(index=True, deep=True).sum())
    return size


def read_h5ad(path: Path) -> AnnData:
    """Read an ``.h5ad`` file; any failure is an :class:`InputError`."""
    import anndata as ad

    logger.info("reading %s", path)
    try:
        return ad.read_h5ad(path)
    except Exception as err:
        msg = f"cannot read {path} as an .h5ad file ({type(err).__name__}: {err})"
        raise InputError(msg) from err


def atomic_write(path: Path, write: Callable[[Path], None], *, replace: bool = False) -> None:
    """Write ``path`` through ``write(temporary_path)``, then move the temporary file (or folder) onto ``path``.

    The temporary lies in the same folder and is removed on any failure, ``KeyboardInterrupt`` and
    :class:`Terminated` included: ``path`` is either untouched or complete. The move is atomic. Without
    ``replace`` it never replaces anything: if ``path`` appeared while the output was computed, it is kept and
    :class:`InputError` is raised. With ``replace``, an existing ``path`` is replaced at once (a file) or swapped
    out (a folder). A write that fails for want of space raises :class:`WriteError`.

    On Linux the write runs in a forked child process, so that a crash of the writing library (HDF5 can crash
    when the disk fills during a write) is reported as :class:`WriteError` and the temporary still removed.
    """
    temporary = _temporary(path, "partial")
    try:
        try:
            _write_apart(write, temporary, path)
        except OSError as err:
            if _is_space_error(err):
                msg = f"no space left on the device of {path.parent} while writing {path}; nothing was written"
                raise WriteError(msg) from err
            raise
        if replace:
            _replace(temporary, path)
        elif not _move_no_replace(temporary, path):
            msg = (
                f"{path} appeared while scn2s was running; it was kept and the result was not written. Write to "
                "another file, or pass --force to replace it"
            )
            raise InputError(msg)
    except BaseException:
        _remove(temporary)
        raise
    logger.info("wrote %s", path)


def _write_apart(write: Callable[[Path], None], temporary: Path, path: Path) -> None:
    """Run ``write(temporary)`` and sync it, in a forked child on Linux (elsewhere in this process).

    An exception in the child is raised again here; a child that dies of a signal raises :class:`WriteError`. An
    interrupt or signal of this process kills the child before it propagates.
    """
    if _FORK_WRITES:
        try:
            read_end, write_end = os.pipe()
            pid = os.fork()
        except OSError as err:  # no memory or processes left to fork: write here
            logger.debug("writing in this process: %s", err)
        else:
            if pid == 0:  # pragma: no cover - the child; its effects are tested from the parent
                _child_write(write, temporary, read_end, write_end)
            _wait_for_writer(pid, read_end, write_end, path)
            return
    write(temporary)
    _sync(temporary)


def _child_write(write: Callable[[Path], None], temporary: Path, read_end: int, write_end: int) -> None:
    """The forked child's part of :func:`_write_apart`: write, sync, report any exception, and exit at once."""
    code = 0
    try:
        os.close(read_end)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        write(temporary)
        _sync(temporary)
    except BaseException as err:  # every failure goes back to the parent
        code = 1
        try:
            payload = pickle.dumps(err)
        except Exception:
            payload = pickle.dumps(RuntimeError(f"{type(err).__name__}: {err}"))
        try:
            os.write(write_end, payload)
        except OSError:
            pass
    finally:
        os._exit(code)


def _wait_for_writer(pid: int, read_end: int, write_end: int, path: Path) -> None:
    """Wait for the child writing ``path``; raise what it raised, or :class:`WriteError` if it died of a signal."""
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            payload = pipe.read()
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        msg = f"writing {path} failed: the writer was stopped by {name}{_space_hint(path)}; nothing was written"
        raise WriteError(msg)
    if payload:
        raise _loaded_error(payload)
    if os.WEXITSTATUS(status) != 0:
        msg = f"writing {path} failed: the writer exited with status {os.WEXITSTATUS(status)}; nothing was written"
        raise WriteError(msg)


def _loaded_error(payload: bytes) -> BaseException:
    try:
        return pickle.loads(payload)  # written by this process's own child
    except Exception:
        return WriteError("the writer failed with an error that could not be passed back")


def _space_hint(path: Path) -> str:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return ""
    return f" ({_gib(free)} free in {path.parent}; HDF5 can stop this way when the disk fills)"


def _is_space_error(err: OSError) -> bool:
    # h5py reports HDF5's failed writes with the C library's message and, often, no errno of its own
    return err.errno in _SPACE_ERRORS or any(os.strerror(code) in str(err) for code in _SPACE_ERRORS)


def _sync(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with file.open("rb") as handle:
            os.fsync(handle.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _renameat2(source: Path, target: Path, flags: int) -> bool | None:
    """``renameat2(2)``: True if done, False if ``target`` exists, None where the call is not available."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    at_fdcwd = -100
    if function(at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        return False
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # no such call, or not on this file system
        return None
    raise OSError(code, os.strerror(code), str(target))


def _move_no_replace(source: Path, target: Path) -> bool:
    """Move ``source`` onto ``target`` unless ``target`` exists, atomically; False if it exists.

    ``renameat2(RENAME_NOREPLACE)`` where available; else, for a file, a hard link (which fails on an existing
    name) and the removal of the temporary name; for a folder, creating ``target`` empty (which fails on an
    existing name) and renaming onto that empty folder.
    """
    done = _renameat2(source, target, _RENAME_NOREPLACE)
    if done is not None:
        return done
    try:
        if source.is_dir():
            target.mkdir()
            os.rename(source, target)
        else:
            os.link(source, target)
            source.unlink()
    except FileExistsError:
        return False
    return True


def _replace(source: Path, target: Path) -> None:
    """Move ``source`` onto ``target``, replacing what is there (a folder is first moved aside, then removed)."""
    if target.is_dir() and not target.is_symlink():
        aside = _temporary(target, "old")
        os.rename(target, aside)
        try:
            os.rename(source, target)
        except BaseException:
            os.rename(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
        return
    if source.is_dir() and target.exists():
        target.unlink()
    os.replace(source, target)


def write_anndata(adata: AnnData, path: Path, *, force: bool) -> None:
    """Write ``adata`` to ``path`` atomically (:func:`atomic_write`): ``.zarr`` as a zarr store, else ``.h5ad``.

    The free space is checked against the estimated size first (:func:`check_space`).
    """
    check_space(path, estimated_size(adata))
    atomic_write(path, _write_zarr(adata) if path.suffix == ZARR_SUFFIX else adata.write_h5ad, replace=force)


def _write_zarr(adata: AnnData) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with warnings.catch_warnings():
            # anndata's default format (zarr v2), without its notice that the default will change
            warnings.filterwarnings("ignore", message="Writing zarr v2 data", category=UserWarning)
            adata.write_zarr(path)

    return write
