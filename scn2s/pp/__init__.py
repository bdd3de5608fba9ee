"""Preprocessing: AnnData in, layers and ``uns`` entries out."""

from ._calibrate import calibrate
from ._denoise import denoise
from ._split import split_counts

__all__ = ["calibrate", "denoise", "split_counts"]
