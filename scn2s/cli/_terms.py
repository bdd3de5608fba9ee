"""The package's messages in the words of the command line: flags (``--layer``) for Python arguments (``layer=``)."""

from __future__ import annotations

import re

__all__ = ["command_line_terms"]

#: The arguments of :func:`scn2s.pp.denoise` and :func:`scn2s.pp.split_counts` that a flag sets.
FLAGS = {
    "layer": "--layer",
    "mask_var": "--genes",
    "key_added": "--key-added",
    "method": "--method",
    "output": "--output",
    "rank": "--rank",
    "max_rank": "--max-rank",
    "n_splits": "--n-splits",
    "device": "--device",
    "batch_key": "--batch-key",
    "transform_batch": "--transform-batch",
    "integrate": "--integrate",
}
_NAMES = "|".join(sorted(FLAGS, key=len, reverse=True))
_NONE = re.compile(rf"\b(pass )?({_NAMES})=None\b")
_VALUE = re.compile(rf"\b({_NAMES})=(?:(['\"])(.*?)\2|(?=[\w.]))")
_BARE = re.compile(r"\b(mask_var|key_added|max_rank|n_splits)\b")


def command_line_terms(message: str) -> str:
    """``message`` with the Python arguments of :func:`scn2s.pp.denoise` named by their command-line flags.

    ``layer="counts"`` becomes ``--layer counts``, ``mask_var='hvg'`` ``--genes hvg``, ``pass layer=None`` "leave out
    ``--layer``", a bare ``layer=`` ``--layer`` and ``mask_var`` ``--genes``; the rest of the message is unchanged.
    """
    message = _NONE.sub(lambda m: f"{'leave out' if m[1] else 'no'} {FLAGS[m[2]]}", message)
    message = _VALUE.sub(lambda m: f"{FLAGS[m[1]]} {m[3]}" if m[2] else f"{FLAGS[m[1]]} ", message)
    message = re.sub(rf"\b({_NAMES})=", lambda m: FLAGS[m[1]], message)
    return _BARE.sub(lambda m: FLAGS[m[1]], message)
