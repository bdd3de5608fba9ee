"""Self-supervised model selection by held-out molecules (array level).

Each split thins the counts into a training half ``X'`` (fraction ``p``) and a held-out half ``X''``. A
candidate is fit on ``X'`` alone, predicts the rate of every held-out count, and is scored on ``X''`` by
:mod:`scn2s.loss`. No held-out molecule is seen by the model it scores, and every candidate of every family
is scored by the same loss on the same held-out molecules (:class:`Splits`).
"""

from .auto import compare_families
from .autoencoder import DEFAULT_CONFIGS, AutoencoderSelection, fit_autoencoder
from .lowrank import LowRankSelection, clamp_rank, fit_lowrank, rank_limit, search_lowrank
from .splits import Splits, split_fractions

__all__ = [
    "DEFAULT_CONFIGS",
    "AutoencoderSelection",
    "LowRankSelection",
    "Splits",
    "clamp_rank",
    "compare_families",
    "fit_autoencoder",
    "fit_lowrank",
    "rank_limit",
    "search_lowrank",
    "split_fractions",
]
