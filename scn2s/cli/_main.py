from __future__ import annotations

import argparse
import inspect
import logging
import re
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from . import _commands
from ._files import InputError, Terminated, WriteError, signals_interrupt
from ._terms import command_line_terms

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["console_main", "main"]

logger = logging.getLogger(__name__)

#: Measured durations of ``scn2s denoise`` quoted by ``--help``; the README's "How long it takes" gives the same
#: figures (a test checks), so update both together.
MEASURED_TIMES = {
    "data": "pbmc1k (906 cells x 14,688 genes) on 2 CPU cores",
    "lowrank": "7 s",
    "auto": "about 3 min",
}

_DESCRIPTION = (
    "Denoise single-cell UMI counts with a model chosen by held-out molecules. "
    "Exit codes: 0 success, 2 usage or input error, 1 other error, 130 interrupted (SIGINT), 143 terminated "
    "(SIGTERM), 129 hung up (SIGHUP)."
)


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit code.

    Parameters
    ----------
    argv
        Arguments after the program name, such as ``["denoise", "in.h5ad", "-o", "out.h5ad"]``.

    Returns
    -------
    The exit code: 0 success, 2 a usage or input error (one line on standard error), 1 any other error,
    ``128 + signum`` after a signal: 130 interrupted (``SIGINT``), 143 ``SIGTERM``, 129 ``SIGHUP``.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    args.progress = not args.quiet
    with _package_logging(args.verbose, args.quiet), signals_interrupt():
        try:
            return args.func(args)
        except InputError as err:
            _error(str(err))
            return 2
        except WriteError as err:
            _error(str(err))
            return 1
        except Terminated as err:
            _error(f"terminated by {err.args[0]}; no partial output was left")
            return 128 + err.signum
        except KeyboardInterrupt:
            _error("interrupted; no output was written")
            return 130
        except Exception as err:
            if args.verbose:
                traceback.print_exc()
            hint = "" if args.verbose else " (run with -v for the traceback)"
            _error(f"{type(err).__name__}: {err}{hint}")
            return 1


def console_main() -> None:
    """Entry point of the ``scn2s`` console script: :func:`main` on ``sys.argv``, then exit with its code."""
    sys.exit(main())


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _error(message: str) -> None:
    """One line on standard error, naming flags (``--layer``) where the package's message names arguments."""
    print(f"scn2s: error: {' '.join(command_line_terms(message).split())}", file=sys.stderr)


@contextmanager
def _package_logging(verbose: int, quiet: bool) -> Iterator[None]:
    """Send the package's log records to standard error while a command runs (``-v``: info, ``-vv``: debug)."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    package = logging.getLogger("scn2s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_flag_terms)
    saved = package.level, package.propagate
    package.addHandler(handler)
    package.setLevel(level)
    package.propagate = False
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(saved[0])
        package.propagate = saved[1]


def _flag_terms(record: logging.LogRecord) -> bool:
    """A log filter of the command line: the message names flags (``--method lowrank``), not Python arguments."""
    record.msg, record.args = command_line_terms(record.getMessage()), None
    return True


def _parser() -> argparse.ArgumentParser:
    from .. import __version__, pp
    from .._names import METHODS, OUTPUTS
    from ..lowrank import LowRankOptions

    parser = _Parser(prog="scn2s", description=_DESCRIPTION, parents=[_verbosity(suppress=False)])
    parser.add_argument("--version", action="version", version=f"scn2s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    verbosity = _verbosity(suppress=True)

    def default(name: str, function=pp.denoise):
        return inspect.signature(function).parameters[name].default

    den = commands.add_parser(
        "denoise",
        parents=[verbosity],
        help="denoise the counts of an .h5ad file",
        description="Denoise the UMI counts of IN with a model chosen by held-out molecules and write OUT with "
        "the denoised layer and the selection record (scn2s.pp.denoise). Measured times, "
        f"{MEASURED_TIMES['data']}: --method lowrank {MEASURED_TIMES['lowrank']}, the default auto "
        f"{MEASURED_TIMES['auto']}, nearly all of it the autoencoder search, which logs an estimate of its duration "
        "before it starts and shows each candidate's epochs; a GPU (--device cuda) shortens it.",
    )
    _input_output(den)
    den.add_argument("--method", choices=METHODS, default=default("method"), help="denoising family (%(default)s)")
    den.add_argument("--layer", help="layer holding the raw counts (default: X)")
    den.add_argument(
        "--key-added", type=_key, default=default("key_added"), help="name of the layer and uns entry (%(default)s)"
    )
    den.add_argument(
        "--genes", metavar="VAR_COLUMN", help="model only the genes of this boolean var column, e.g. highly_variable"
    )
    den.add_argument(
        "--batch-key",
        metavar="OBS_COLUMN",
        help="obs column of each cell's batch: the low-rank family centres each cell on its batch's gene means, the "
        "autoencoder tells its decoder each cell's batch, each if that lowers the held-out loss (the record says "
        "by how much)",
    )
    den.add_argument(
        "--transform-batch",
        metavar="BATCH",
        help="with --batch-key: write every cell's expression as if measured in this batch",
    )
    den.add_argument(
        "--integrate",
        action="store_true",
        help="with --batch-key: also write obsm['X_KEY_integrated'], the cells' embedding with the batches removed "
        "(Harmony), for clustering and UMAP across batches",
    )
    den.add_argument("--p", type=_fraction, default=default("p"), help="training fraction of each split (%(default)s)")
    den.add_argument("--n-splits", type=_positive, default=default("n_splits"), help="splits averaged (%(default)s)")
    den.add_argument(
        "--max-rank", type=_positive, default=LowRankOptions.max_rank, help="largest rank searched (%(default)s)"
    )
    den.add_argument("--rank", type=_non_negative, help="fit this rank without a search")
    den.add_argument(
        "--output",
        choices=OUTPUTS,
        default=default("output"),
        help="what OUT holds: the dense denoised layer, or the low-rank factors that give any slice of it "
        "(scn2s.tl.reconstruct, scn2s.tl.write_denoised; needs --method lowrank) (%(default)s)",
    )
    den.add_argument(
        "--uncertainty",
        action="store_true",
        help="also write layers['KEY_sd'], the posterior standard deviation of each denoised value (the "
        "autoencoder's gamma-Poisson posterior; not with --method lowrank)",
    )
    den.add_argument(
        "--device",
        type=_device,
        help="torch device of the autoencoder, e.g. cpu, cuda or cuda:1 (default: cuda if available)",
    )
    den.add_argument("--seed", type=_non_negative, default=0, help="random seed (%(default)s)")
    den.set_defaults(func=_commands.denoise)

    spl = commands.add_parser(
        "split",
        parents=[verbosity],
        help="write the two halves of a binomial split of the counts as layers",
        description="Split every count of IN by binomial thinning into two halves and write OUT with them as two "
        "layers (scn2s.pp.split_counts).",
    )
    _input_output(spl)
    spl.add_argument(
        "--p",
        type=_fraction,
        default=default("p", pp.split_counts),
        help="expected fraction in the first half (%(default)s)",
    )
    spl.add_argument("--layer", help="layer holding the raw counts (default: X)")
    spl.add_argument(
        "--key-added",
        nargs=2,
        type=_key,
        default=list(default("key_added", pp.split_counts)),
        metavar=("FIRST", "SECOND"),
        help="names of the two layers (counts_a counts_b)",
    )
    spl.add_argument("--seed", type=_non_negative, default=0, help="random seed (%(default)s)")
    spl.set_defaults(func=_commands.split)

    dem = commands.add_parser(
        "demo",
        parents=[verbosity],
        help="denoise simulated counts with a known truth, report the error and plot the selection",
        description="Simulate Poisson counts of cells from a few types with known true rates (scn2s.datasets."
        "simulate), denoise them with the low-rank family (scn2s.pp.denoise, method lowrank), print the rank chosen "
        "by held-out molecules and the error against the truth before and after, and write the selection plot to "
        "FIGDIR/selection.png. Needs no data and no torch; takes seconds.",
    )
    dem.add_argument("--cells", type=_positive, default=2000, help="simulated cells (%(default)s)")
    dem.add_argument("--genes", type=_positive, default=1000, help="simulated genes (%(default)s)")
    dem.add_argument("--seed", type=_non_negative, default=0, help="random seed (%(default)s)")
    dem.add_argument(
        "--figdir", type=Path, default=Path("scn2s_demo"), help="folder of the selection plot (%(default)s)"
    )
    dem.add_argument("-o", "--out", type=Path, help="also write the denoised AnnData to this .h5ad file")
    dem.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    dem.set_defaults(func=_commands.demo)
    return parser


def _verbosity(*, suppress: bool) -> argparse.ArgumentParser:
    """``-v``/``-q``, accepted before and after the subcommand."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS if suppress else 0,
        help="more log output (-vv: debug)",
    )
    options.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="no progress bars or log output, only errors",
    )
    return options


def _input_output(command: argparse.ArgumentParser) -> None:
    command.add_argument("input", type=Path, metavar="IN", help="input .h5ad file with raw UMI counts")
    command.add_argument(
        "-o", "--out", type=Path, required=True, metavar="OUT", help="output .h5ad file, or .zarr store"
    )
    command.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def _number(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        msg = f"must be {what}, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _checked(kind: type, what: str, bound: str, accept):
    """An argparse ``type`` that parses ``kind`` (else "must be ``what``") and refuses values outside ``accept``."""

    def parse(text: str):
        value = _number(text, kind, what)
        if not accept(value):
            msg = f"must be {bound}, got {text}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


_fraction = _checked(float, "a number strictly between 0 and 1", "strictly between 0 and 1", lambda v: 0 < v < 1)
_positive = _checked(int, "a positive integer", "a positive integer", lambda v: v >= 1)
_non_negative = _checked(int, "a non-negative integer", "a non-negative integer", lambda v: v >= 0)


_DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(:\d+)?")


def _device(text: str) -> str:
    if not _DEVICE.fullmatch(text):
        msg = f"must be a torch device: cpu, cuda, cuda:N (the N-th GPU), mps or xpu, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return text


def _key(text: str) -> str:
    if not text or "/" in text:
        msg = f"must be a non-empty name without '/', got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return text
