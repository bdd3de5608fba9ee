"""Probe: `scn2s split` writing to a file system too small for its output, with the free-space check skipped.

The check before the work (and again before the write) refuses such a run; skipping it shows what happens when
the disk fills *during* the write. Needs a small file system, e.g. as root::

    mkdir -p /mnt/tiny && mount -t tmpfs -o size=1m tmpfs /mnt/tiny
    python benchmarks/full_disk.py /mnt/tiny

Prints the exit code, the lines on standard error and the files left in the folder; exit 0 when the run failed
with one line and left nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import scn2s.cli._commands
import scn2s.cli._files
from scn2s.cli import main
from scn2s.datasets import simulate


def probe(folder: Path, *, cells: int, genes: int, suffix: str) -> bool:
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "counts.h5ad"
        simulate(cells, genes, n_types=3, rank=3, depth=2000, rng=0).write_h5ad(source)
        print(f"input {source.stat().st_size / 2**20:.1f} MiB; writing to {folder}")
        for module in (scn2s.cli._files, scn2s.cli._commands):  # the guard under test is the write itself
            module.check_space = lambda path, size: None
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["-q", "split", str(source), "-o", str(folder / f"out{suffix}")])
    lines = err.getvalue().strip().splitlines()
    left = sorted(p.name for p in folder.iterdir())
    print(f"exit {code}")
    for line in lines:
        print(f"stderr: {line}")
    print(f"left in {folder}: {left}")
    return code == 1 and len(lines) == 1 and not left


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="an empty folder on a small file system")
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--genes", type=int, default=1000)
    parser.add_argument("--suffix", choices=[".h5ad", ".zarr"], default=".h5ad", help="the output's format")
    return parser.parse_args()


if __name__ == "__main__":
    args = _parse()
    sys.exit(0 if probe(args.folder, cells=args.cells, genes=args.genes, suffix=args.suffix) else 1)
