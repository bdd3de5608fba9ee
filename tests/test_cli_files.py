"""The command line's writes: never a file it did not create, nothing partial, one line and an exit code."""

from __future__ import annotations

import errno
import functools
import os
import signal
import threading
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import scn2s
import scn2s.cli._files
from scn2s.cli import main
from scn2s.datasets import simulate


@pytest.fixture(scope="module")
def counts_file(tmp_path_factory):
    adata = simulate(60, 20, n_types=2, rank=2, depth=300, rng=2)
    adata.layers["counts"] = adata.X.copy()
    path = tmp_path_factory.mktemp("input") / "counts.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("scn2s: error: ")
    return lines[0]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _split(counts_file, out, *extra):
    return main(["-q", "split", str(counts_file), "-o", str(out), *extra])


def _after_the_work(monkeypatch, action):
    """Run ``action()`` after split_counts has computed, before the output is written."""
    real = scn2s.pp.split_counts

    @functools.wraps(real)
    def split_then_act(adata, **kwargs):
        real(adata, **kwargs)
        action()

    monkeypatch.setattr(scn2s.pp, "split_counts", split_then_act)


def _no_work(monkeypatch):
    for name in ("split_counts", "denoise"):

        @functools.wraps(getattr(scn2s.pp, name))
        def fail(*args, **kwargs):
            pytest.fail("work started")

        monkeypatch.setattr(scn2s.pp, name, fail)


NO_RENAMEAT2 = [False, True]


@pytest.fixture(params=NO_RENAMEAT2, ids=["renameat2", "link"])
def fallback(request, monkeypatch):
    """Both ways of the no-replace move: renameat2(RENAME_NOREPLACE), and the link (or mkdir) where it is missing."""
    if request.param:
        monkeypatch.setattr(scn2s.cli._files, "_renameat2", lambda *args: None)
    return request.param


# --- 1. no replace ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_an_output_that_appears_during_the_run_is_kept(counts_file, workdir, capsys, monkeypatch, fallback, suffix):
    out = workdir / f"out{suffix}"
    _after_the_work(monkeypatch, lambda: out.write_bytes(b"someone else's"))
    assert _split(counts_file, out) == 2
    assert "appeared while scn2s was running; it was kept" in _error_line(capsys)
    assert out.read_bytes() == b"someone else's"
    assert _names(workdir) == [out.name]


@pytest.mark.parametrize("suffix", [".h5ad", ".zarr"])
def test_force_replaces_what_appeared(counts_file, workdir, monkeypatch, fallback, suffix):
    out = workdir / f"out{suffix}"
    _after_the_work(monkeypatch, lambda: out.write_bytes(b"someone else's"))
    assert _split(counts_file, out, "--force") == 0
    back = ad.read_zarr(out) if suffix == ".zarr" else ad.read_h5ad(out)
    assert {"counts_a", "counts_b"} <= set(back.layers)
    assert _names(workdir) == [out.name]


def test_two_runs_to_one_output_one_wins_the_other_exits_2(counts_file, workdir, capsys, monkeypatch, fallback):
    out = workdir / "out.h5ad"
    codes = []
    real = scn2s.pp.split_counts

    @functools.wraps(real)
    def split_while_another_run_finishes(adata, **kwargs):
        real(adata, **kwargs)
        if not codes:  # the second run starts and finishes while the first is between its work and its write
            codes.append(None)
            codes[0] = _split(counts_file, out, "--seed", "7")

    monkeypatch.setattr(scn2s.pp, "split_counts", split_while_another_run_finishes)
    first = _split(counts_file, out)
    assert codes == [0]
    assert first == 2
    assert "appeared while scn2s was running" in _error_line(capsys)
    assert ad.read_h5ad(out).uns["split_counts"]["params"]["seed"] == 7  # the winner's output, whole
    assert _names(workdir) == ["out.h5ad"]


# --- 3. disk full -------------------------------------------------------------------------------------------------


def test_too_little_free_space_is_refused_before_any_work(counts_file, workdir, capsys, monkeypatch):
    monkeypatch.setattr(scn2s.cli._files.shutil, "disk_usage", lambda path: _Usage(1000))
    _no_work(monkeypatch)
    assert _split(counts_file, workdir / "out.h5ad") == 2
    assert "not enough free space" in _error_line(capsys)
    assert _names(workdir) == []
    assert main(["-q", "denoise", str(counts_file), "-o", "out.h5ad"]) == 2
    assert "not enough free space" in _error_line(capsys)


class _Usage:
    def __init__(self, free: int) -> None:
        self.total, self.used, self.free = 10 * free, 9 * free, free


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError("Can't write data (file write failed: errno = 28, error message = 'No space left on device')"),
        OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)),
    ],
    ids=["errno", "hdf5", "quota"],
)
@pytest.mark.parametrize("existing", [False, True])
def test_a_full_disk_while_writing_exits_1_with_one_line_and_leaves_nothing(
    counts_file, workdir, capsys, monkeypatch, error, existing
):
    out = workdir / "out.h5ad"
    if existing:
        out.write_bytes(b"previous")

    def write_until_full(self, path, **kwargs):
        Path(path).write_bytes(b"partial")
        raise error

    monkeypatch.setattr(ad.AnnData, "write_h5ad", write_until_full)
    assert _split(counts_file, out, "--force") == 1
    assert "no space left on the device" in _error_line(capsys)
    assert _names(workdir) == (["out.h5ad"] if existing else [])
    if existing:
        assert out.read_bytes() == b"previous"


@pytest.mark.skipif(not scn2s.cli._files._FORK_WRITES, reason="the write runs in a child process on Linux only")
@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGBUS, signal.SIGKILL])
@pytest.mark.parametrize("existing", [False, True])
def test_a_writer_that_crashes_exits_1_with_one_line_and_leaves_nothing(
    counts_file, workdir, capsys, monkeypatch, signum, existing
):
    # HDF5 crashes this way when the disk fills during a write (a real 1 MiB tmpfs in RESULTS)
    out = workdir / "out.h5ad"
    if existing:
        out.write_bytes(b"previous")

    def write_then_crash(self, path, **kwargs):
        Path(path).write_bytes(b"partial")
        os.kill(os.getpid(), signum)  # the writer's own process

    monkeypatch.setattr(ad.AnnData, "write_h5ad", write_then_crash)
    assert _split(counts_file, out, "--force") == 1
    line = _error_line(capsys)
    assert f"the writer was stopped by {signal.Signals(signum).name}" in line
    assert line.endswith("nothing was written")
    assert _names(workdir) == (["out.h5ad"] if existing else [])
    if existing:
        assert out.read_bytes() == b"previous"


@pytest.mark.skipif(not scn2s.cli._files._FORK_WRITES, reason="the write runs in a child process on Linux only")
def test_a_child_writers_errors_reach_the_command(workdir):
    def fails(error):
        def write(path):
            Path(path).write_bytes(b"partial")
            raise error

        return write

    with pytest.raises(ValueError, match="bad value"):
        scn2s.cli._files.atomic_write(workdir / "a.h5ad", fails(ValueError("bad value")))
    unpicklable = ValueError("holds a lock")
    unpicklable.lock = threading.Lock()
    with pytest.raises(RuntimeError, match="ValueError: holds a lock"):
        scn2s.cli._files.atomic_write(workdir / "b.h5ad", fails(unpicklable))
    assert isinstance(scn2s.cli._files._loaded_error(b"not a pickle"), scn2s.cli._files.WriteError)
    scn2s.cli._files.atomic_write(workdir / "c.h5ad", lambda path: Path(path).write_bytes(b"whole"))
    assert _names(workdir) == ["c.h5ad"]
    assert (workdir / "c.h5ad").read_bytes() == b"whole"


# --- 4. unwritable destination ------------------------------------------------------------------------------------


def test_an_unwritable_folder_is_refused_before_any_work(counts_file, workdir, capsys, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "touch", refuse)
    _no_work(monkeypatch)
    for command in (["split"], ["denoise", "--method", "lowrank"]):
        assert main(["-q", *command, str(counts_file), "-o", "out.h5ad"]) == 2
        assert "cannot write to the output folder" in _error_line(capsys)
    assert _names(workdir) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_folder_is_refused_before_any_work(counts_file, workdir, capsys, monkeypatch):
    folder = workdir / "locked"
    folder.mkdir(mode=0o500)
    _no_work(monkeypatch)
    assert _split(counts_file, folder / "out.h5ad") == 2
    assert "cannot write to the output folder" in _error_line(capsys)


# --- 5. signals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
@pytest.mark.parametrize("existing", [False, True])
def test_sigterm_and_sighup_while_writing_leave_no_partial_file(
    counts_file, workdir, capsys, monkeypatch, signum, code, existing
):
    out = workdir / "out.h5ad"
    if existing:
        out.write_bytes(b"previous")
    real = ad.AnnData.write_h5ad
    command = os.getpid()  # the process running the command, which may write in a child of its own

    def write_then_signal(self, path, **kwargs):
        real(self, path, **kwargs)
        os.kill(command, signum)  # delivered in the middle of the write step
        time.sleep(30)  # a child writer is killed by the command before it gets further

    monkeypatch.setattr(ad.AnnData, "write_h5ad", write_then_signal)
    before = signal.getsignal(signum)
    assert _split(counts_file, out, "--force") == code
    assert f"terminated by {signal.Signals(signum).name}" in _error_line(capsys)
    assert _names(workdir) == (["out.h5ad"] if existing else [])
    if existing:
        assert out.read_bytes() == b"previous"
    assert signal.getsignal(signum) is before


# --- 9. usage errors and zarr -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["denoise", "--layer", "counts", "--key-added", "counts"], "would overwrite the input counts"),
        (["denoise", "--rank", "3"], "--rank fixes the rank of a low-rank model and needs --method lowrank"),
        (["denoise", "--rank", "3", "--method", "autoencoder"], "needs --method lowrank"),
        (["denoise", "--key-added", "counts"], "adata.layers['counts'] exists and was not written by scn2s"),
        (["split", "--key-added", "counts", "counts"], "two different layer names"),
        (["split", "--layer", "counts", "--key-added", "counts", "other"], "would overwrite the input counts"),
        (["split", "--key-added", "counts", "other"], "adata.layers['counts'] exists and was not written by scn2s"),
    ],
)
def test_usage_errors_exit_2_before_any_work(counts_file, workdir, capsys, monkeypatch, argv, message):
    _no_work(monkeypatch)
    assert main(["-q", argv[0], str(counts_file), "-o", "out.h5ad", *argv[1:]]) == 2
    assert message in _error_line(capsys)
    assert _names(workdir) == []


def test_zarr_output_is_a_zarr_store_written_atomically(counts_file, workdir, capsys):
    out = workdir / "out.zarr"
    assert main(["-q", "denoise", "--method", "lowrank", "--max-rank", "3", str(counts_file), "-o", str(out)]) == 0
    back = ad.read_zarr(out)
    assert back.layers["denoised"].shape == back.shape
    np.testing.assert_array_equal(back.layers["counts"].toarray(), ad.read_h5ad(counts_file).layers["counts"].toarray())
    capsys.readouterr()
    assert _split(counts_file, out) == 2
    assert "output file exists" in _error_line(capsys)
    assert _split(counts_file, out, "--force") == 0
    assert "counts_a" in ad.read_zarr(out).layers
    assert _names(workdir) == ["out.zarr"]
