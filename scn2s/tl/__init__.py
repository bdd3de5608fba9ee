"""Tools: the denoised values of ``pp.denoise(output="factors")``, for any slice or as a file."""

from ._reconstruct import reconstruct
from ._write import write_denoised

__all__ = ["reconstruct", "write_denoised"]
