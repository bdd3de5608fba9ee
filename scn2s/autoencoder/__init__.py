"""The autoencoder family: a count autoencoder trained across molecules, its settings chosen by held-out molecules.

Array level, no AnnData; torch is imported only by the modules that need it, when a network is trained or run.
``module`` holds the network, ``data`` the sparse batching and thinning, ``train`` the training loop with early
stopping on held-out molecules and the inference modes, ``distributed`` the training across processes
(``torchrun``), and ``search`` the hyperparameter search and the family interface of :mod:`scn2s.select.family`
(:class:`AutoencoderOptions`, :func:`select`, :class:`AutoencoderSelection`).
"""

from .search import (
    DEFAULT_CONFIGS,
    SHAPE_SCALES,
    AutoencoderOptions,
    AutoencoderSelection,
    config_label,
    fit_autoencoder,
    make_configs,
    select,
)

__all__ = [
    "DEFAULT_CONFIGS",
    "SHAPE_SCALES",
    "AutoencoderOptions",
    "AutoencoderSelection",
    "config_label",
    "fit_autoencoder",
    "make_configs",
    "select",
]
