"""Sphinx configuration: ``sphinx-build -W -b html docs docs/_build/html`` (needs the ``docs`` extra)."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

project = "scn2s"
author = "scn2s developers"
copyright = "scn2s developers"
try:
    release = metadata.version("scn2s")
except metadata.PackageNotFoundError:  # building from a source tree without an install
    release = "unknown"
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
autosummary_generate = True
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
templates_path = []
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = ["_static"]
