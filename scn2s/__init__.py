"""Self-supervised denoising of single-cell UMI counts, calibrated by held-out molecules."""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, denoisers, pl, pp, tl

try:
    __version__ = version("scn2s")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = ["__version__", "datasets", "denoisers", "pl", "pp", "tl"]
