"""Preprocessing: AnnData in, layers and ``uns`` entries out."""

from ._denoise import denoise
from ._split import split_counts

__all__ = ["denoise", "split_counts"]
