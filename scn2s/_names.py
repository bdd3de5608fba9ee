"""The names that the public functions accept and write, shared by :mod:`scn2s.pp`, :mod:`scn2s.tl` and the CLI."""

from __future__ import annotations

__all__ = ["METHODS", "OUTPUTS", "factor_keys"]

METHODS = ("auto", "lowrank", "autoencoder")
"""The values of ``method`` of :func:`scn2s.pp.denoise`."""

OUTPUTS = ("layer", "factors")
"""The values of ``output`` of :func:`scn2s.pp.denoise`."""


def factor_keys(key_added: str) -> dict[str, tuple[str, str]]:
    """Where each stored factor lives: ``{factor: (attribute, key)}``."""
    return {
        "scores": ("obsm", f"X_{key_added}"),
        "loadings": ("varm", f"{key_added}_loadings"),
        "mean": ("var", f"{key_added}_mean"),
        "modelled": ("var", f"{key_added}_modelled"),
        "library_size": ("obs", f"{key_added}_library_size"),
        "scale": ("obs", f"{key_added}_scale"),
    }
