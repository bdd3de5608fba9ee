"""Plots: the model selection record and denoised expression (matplotlib, imported on first use)."""

from ._embedding import embedding
from ._genes import genes
from ._selection import selection

__all__ = ["embedding", "genes", "selection"]
