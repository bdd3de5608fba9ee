"""The count autoencoder network."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

__all__ = ["CountAutoencoder"]

_INITIAL_LOG_SHAPE = float(np.log(100.0))  # a prior worth 100 molecules: training starts near the network alone


class CountAutoencoder(nn.Module):
    r"""Autoencoder from transformed counts to per-gene log-frequencies.

    ``encoder``: genes -> hidden -> bottleneck; ``decoder``: bottleneck -> hidden -> genes. The output
    logits give frequencies through a softmax over genes; times a library size they are Poisson rates (or the
    means of a negative binomial with per-gene inverse dispersion ``exp(log_theta)``).

    With ``posterior=True`` the network's frequencies :math:`q_{ig}` are the prior means of a gamma prior on
    each cell's true frequency, with a learned shape :math:`a_g = \exp(\text{log_shape}_g)` per gene (the inverse
    squared coefficient of variation that the code leaves unexplained), and the output is the posterior mean
    given the cell's counts :math:`x_{ig}` at library size :math:`s_i`:

    .. math::

        \hat\pi_{ig} \propto \frac{x_{ig} + a_g}{s_i + a_g / q_{ig}},

    normalised to sum to one over the genes, so that the rates of a cell still add up to its library size.

    A gene whose expression the code explains (:math:`a_g \to \infty`) keeps the network's frequency; one with
    cell-specific variation of its own takes part of it from the cell's counts, the more so the deeper the cell.
    The shape does not depend on depth, but the prior does: at inference the network sees more of each cell's
    molecules than in training (all of them, or the mean over several thinnings), so its frequencies are closer to
    the truth and deserve a larger shape. :func:`scn2s.autoencoder.fit_autoencoder` chooses the factor on held-out
    molecules (``shape_scale`` of :meth:`posterior`).

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
    posterior
        Output the gamma-Poisson posterior mean given the cell's counts (adds the ``log_shape`` parameter).
    n_batches
        Number of batches the decoder is told each cell's batch of (0: none): one-hot beside the code, and a learned
        log-efficiency per batch and gene added to the output logits (``batch_logits``), the shape of a chemistry's or
        sample's capture differences. The encoder sees each cell's counts divided by its batch's efficiencies
        (:meth:`encode`), so that the decoder, not the code, carries the shifts between batches.
    """

    def __init__(
        self,
        n_genes: int,
        *,
        hidden: int = 256,
        bottleneck: int = 32,
        dropout: float = 0.1,
        likelihood: Literal["poisson", "nb"] = "poisson",
        posterior: bool = True,
        n_batches: int = 0,
    ) -> None:
        super().__init__()
        self.n_batches = n_batches
        self.encoder = nn.Sequential(
            nn.Linear(n_genes, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, bottleneck),
        )
        self.decoder = nn.Sequential(
            nn.Linear(bottleneck + n_batches, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_genes),
        )
        self.likelihood = likelihood
        # each batch's own log capture efficiency of each gene, added to the logits (zero-initialised)
        self.batch_logits = nn.Parameter(torch.zeros(n_batches, n_genes)) if n_batches else None
        self.log_theta = nn.Parameter(torch.zeros(n_genes)) if likelihood == "nb" else None
        self.log_shape = nn.Parameter(torch.full((n_genes,), _INITIAL_LOG_SHAPE)) if posterior else None

    def forward(
        self, x: torch.Tensor, counts: torch.Tensor | None = None, batch: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Log-frequencies for transformed counts ``x`` (cells x genes).

        Without ``counts``, or with ``posterior=False``, the network's (log-softmax over genes); with the cells'
        ``counts`` and ``posterior=True``, the posterior's (:meth:`posterior`). ``batch``: each cell's batch, one-hot
        (cells x ``n_batches``), required if the network has batches and ignored otherwise.
        """
        log_freq = self.decode(self.encode(x, batch), batch)
        if counts is None or self.log_shape is None:
            return log_freq
        return self.posterior(log_freq, counts)

    def encode(self, x: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """The code of transformed counts ``x``; with batches, of the counts divided by their batch's efficiencies.

        ``x`` is ``log1p`` of counts per 10,000 (:func:`~scn2s.autoencoder.data.input_transform`). A network with
        batches divides each cell's counts by its batch's learned efficiencies (``exp(batch_logits)``) and scales them
        back to 10,000 before the encoder, so that the code need not carry what the batch explains.
        """
        if self.n_batches:
            if batch is None:
                msg = f"This network models {self.n_batches} batches: give each cell's batch (one-hot)."
                raise ValueError(msg)
            scaled = torch.expm1(x.float()) * torch.exp(-(batch.float() @ self.batch_logits))
            total = scaled.sum(dim=1, keepdim=True)
            x = torch.log1p(scaled * torch.where(total > 0, 1e4 / total.clamp_min(1e-12), torch.zeros_like(total)))
        return self.encoder(x)

    def decode(self, code: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """The network's log-frequencies (log-softmax over genes) of codes, in the given batches (one-hot)."""
        if self.n_batches:
            if batch is None:
                msg = f"This network models {self.n_batches} batches: give each cell's batch (one-hot)."
                raise ValueError(msg)
            logits = self.decoder(torch.cat([code, batch.to(code.dtype)], dim=1)).float()
            return torch.log_softmax(logits + batch.float() @ self.batch_logits, dim=-1)
        return torch.log_softmax(self.decoder(code).float(), dim=-1)

    def posterior(
        self,
        log_freq: torch.Tensor,
        counts: torch.Tensor,
        shape_scale: float = 1.0,
        library: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Log posterior mean frequencies (normalised over genes) given prior ``log_freq`` and the cells' ``counts``.

        ``shape_scale`` multiplies every learned shape (a prior worth more molecules, or fewer); training uses 1.
        ``library``: the cells' totals ``counts.sum(dim=1, keepdim=True)``, if the caller has them.
        """
        log_shape = self.log_shape.float() + float(np.log(shape_scale))
        if library is None:
            library = counts.sum(dim=1, keepdim=True)
        log_post = torch.log(counts + torch.exp(log_shape)) - torch.logaddexp(torch.log(library), log_shape - log_freq)
        return torch.log_softmax(log_post, dim=-1)

    def posteriors(
        self, log_freq: torch.Tensor, counts: torch.Tensor, library: torch.Tensor, shape_scales: Sequence[float]
    ) -> Iterator[torch.Tensor]:
        """:meth:`posterior` at each of ``shape_scales``, from the same prior: fewer passes over the cells x genes.

        The posterior mean frequencies are proportional to ``(counts + a) / (library + a / freq)``, with ``a`` the
        shapes times the scale; ``1 / freq`` is made once for all scales (a prior frequency below ``exp(-80)`` counts
        as ``exp(-80)``, so that it stays finite in float32; the posterior's frequency there is as small).
        """
        inverse = torch.exp(-log_freq.clamp_min(-80.0))
        shape = torch.exp(self.log_shape.float())
        for scale in shape_scales:
            prior = shape * scale
            weights = (counts + prior).div_(torch.addcmul(library, inverse, prior))
            yield torch.log(weights).sub_(torch.log(weights.sum(dim=1, keepdim=True)))

    def widened(self, genes: np.ndarray, n_genes: int) -> CountAutoencoder:
        """A copy that models ``n_genes`` genes, this network's genes at positions ``genes`` of them.

        The genes it did not model start without weight in or out: no input weight, a zero output weight and the
        lowest output bias of the modelled genes (a frequency as low as that of the rarest modelled gene), the
        initial prior shape and no dispersion or batch effect of their own.
        """
        genes = np.asarray(genes, dtype=np.int64)
        first, last = self.encoder[0], self.decoder[-1]
        wide = CountAutoencoder(
            n_genes,
            hidden=first.out_features,
            bottleneck=self.encoder[-1].out_features,
            dropout=self.encoder[3].p,
            likelihood=self.likelihood,
            posterior=self.log_shape is not None,
            n_batches=self.n_batches,
        ).to(first.weight.device)
        index = torch.as_tensor(genes, device=first.weight.device)
        with torch.no_grad():
            for name, mine in self.state_dict().items():
                theirs = wide.state_dict()[name]
                if mine.shape == theirs.shape:
                    theirs.copy_(mine)
            wide.encoder[0].weight.zero_()
            wide.encoder[0].weight[:, index] = first.weight
            wide.decoder[-1].weight.zero_()
            wide.decoder[-1].weight[index] = last.weight
            wide.decoder[-1].bias.fill_(float(last.bias.min()))
            wide.decoder[-1].bias[index] = last.bias
            for name in ("log_shape", "log_theta"):
                if getattr(self, name) is not None:
                    getattr(wide, name)[index] = getattr(self, name)
            if self.batch_logits is not None:
                wide.batch_logits.zero_()
                wide.batch_logits[:, index] = self.batch_logits
        return wide
