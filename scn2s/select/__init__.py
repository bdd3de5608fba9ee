"""Self-supervised model selection by held-out molecules (array level): what every family shares.

Each split thins the counts into a training half ``X'`` (fraction ``p``) and a held-out half ``X''``. A
candidate is fit on ``X'`` alone, predicts the rate of every held-out count, and is scored on ``X''`` by
:mod:`scn2s.loss`. No held-out molecule is seen by the model it scores, and every candidate of every family
is scored by the same loss on the same held-out molecules (:class:`Splits`). The families
(:mod:`scn2s.lowrank`, :mod:`scn2s.autoencoder`) offer the interface of :mod:`scn2s.select.family`.
"""

from .auto import compare_families
from .family import Selection, options_from
from .splits import Splits, split_fractions

__all__ = ["Selection", "Splits", "compare_families", "options_from", "split_fractions"]
