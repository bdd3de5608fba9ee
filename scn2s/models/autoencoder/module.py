"""The count autoencoder network."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["CountAutoencoder"]


class CountAutoencoder(nn.Module):
    """Autoencoder from transformed counts to per-gene log-frequencies.

    ``encoder``: genes -> hidden -> bottleneck; ``decoder``: bottleneck -> hidden -> genes. The output
    logits give frequencies through a softmax over genes; times a library size they are Poisson rates (or the
    means of a negative binomial with per-gene inverse dispersion ``exp(log_theta)``).

    Parameters
    ----------
    n_genes
        Number of genes in and out.
    hidden
        Width of the hidden layers.
    bottleneck
        Width of the code.
    dropout
        Dropout after each hidden layer.
    likelihood
        ``"poisson"`` or ``"nb"`` (adds the ``log_theta`` parameter).
    """

    def __init__(
        self,
        n_genes: int,
        *,
        hidden: int = 256,
        bottleneck: int = 32,
        dropout: float = 0.1,
        likelihood: Literal["poisson", "nb"] = "poisson",
    ) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(n_genes, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, bottleneck),
        )
        self.decoder = nn.Sequential(
            nn.Linear(bottleneck, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_genes),
        )
        self.likelihood = likelihood
        self.log_theta = nn.Parameter(torch.zeros(n_genes)) if likelihood == "nb" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-frequencies (log-softmax over genes) for transformed counts ``x`` (cells x genes)."""
        return torch.log_softmax(self.decoder(self.encoder(x)).float(), dim=-1)
