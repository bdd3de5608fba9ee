"""Command line: ``scn2s denoise``, ``scn2s split``, ``scn2s demo``, ``scn2s --version``.

Exit codes: 0 success; 2 a usage or input error, reported in one line on standard error; 1 any other
error; 130 interrupted. Outputs are written to a temporary file beside the target and renamed onto it
only once complete, so an interrupted or failed run never leaves a partial output.
"""

from ._main import console_main, main

__all__ = ["console_main", "main"]
