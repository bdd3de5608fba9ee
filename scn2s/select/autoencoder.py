"""Hyperparameter search of the autoencoder family (array level; torch inside)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from .._timing import Timings
from .splits import Splits

__all__ = ["DEFAULT_CONFIGS", "SHAPE_SCALES", "AutoencoderSelection", "fit_autoencoder", "make_configs"]

logger = logging.getLogger(__name__)

DEFAULT_CONFIGS: tuple[dict, ...] = (
    {"hidden": 256, "bottleneck": 32, "dropout": 0.1},
    {"hidden": 128, "bottleneck": 16, "dropout": 0.0},
    {"hidden": 512, "bottleneck": 64, "dropout": 0.2},
)

SHAPE_SCALES: tuple[float, ...] = tuple(2.0 ** (k / 2) for k in range(-4, 7))
"""Factors on the learned prior shapes tried at inference (0.25 to 8, by sqrt 2)."""


def make_configs(configs: Sequence[Mapping] | None, **overrides):
    """:class:`~scn2s.models.autoencoder.train.TrainConfig` objects from dicts (default grid if ``None``)."""
    from ..models.autoencoder.train import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    out = []
    for config in DEFAULT_CONFIGS if configs is None else configs:
        unknown = set(config) - names
        if unknown:
            msg = f"Unknown autoencoder setting(s) {sorted(unknown)}; valid: {sorted(names)}."
            raise ValueError(msg)
        out.append(TrainConfig(**{**overrides, **config}))
    if not out:
        msg = "autoencoder_configs is empty."
        raise ValueError(msg)
    return out


def config_label(config) -> str:
    """Short name of a candidate, e.g. ``h256-b32-d0.1``.

    ``-noposterior`` is appended without the posterior, and the training input fractions where they differ from
    the default: ``-f0.5`` for a fixed fraction, ``-f0.2:0.8`` for a range.
    """
    from ..models.autoencoder.train import TrainConfig

    label = f"h{config.hidden}-b{config.bottleneck}-d{config.dropout:g}"
    if config.input_range != TrainConfig.input_range:
        low, high = config.input_bounds
        label += f"-f{low:g}" if config.input_range is None else f"-f{low:g}:{high:g}"
    return label if config.posterior else f"{label}-noposterior"


@dataclass
class AutoencoderSelection:
    """Outcome of the autoencoder search, and the full-depth fit it chose."""

    configs: list
    losses_full: np.ndarray  # (n_splits_used, n_configs), mean per entry, full-input inference, best shape scale
    losses_replicas: np.ndarray  # (n_splits_used, n_configs), thinned-replica inference, best shape scale
    best_epochs: np.ndarray  # (n_splits_used, n_configs)
    shape_scales: np.ndarray = field(default_factory=lambda: np.ones(1))  # the factors tried on the prior shapes
    losses_by_scale: np.ndarray | None = None  # (2 inference modes, n_splits_used, n_configs, n_scales)
    shape_scale: float = 1.0  # the chosen candidate's factor in its inference mode
    heldout_curves: list = field(default_factory=list)  # [split][config] -> per-epoch held-out loss
    train_curves: list = field(default_factory=list)
    best: int = 0
    mode: str = "full"
    epochs: int = 1
    model: object = None
    genes: np.ndarray | None = None
    device: str = "cpu"
    seed: int = 0
    batch_size: int = 0
    world_size: int = 1  # processes that trained together (torch.distributed)

    @property
    def losses(self) -> np.ndarray:
        """Held-out loss of each candidate under its better inference mode, ``(n_splits_used, n_configs)``."""
        return np.minimum(self.losses_full, self.losses_replicas)

    @property
    def loss_mean(self) -> np.ndarray:
        """Mean held-out loss of each candidate over the splits used."""
        return self.losses.mean(axis=0)

    @property
    def loss_std(self) -> np.ndarray:
        """Standard deviation of each candidate's held-out loss over the splits used (0 for one split)."""
        return self.losses.std(axis=0, ddof=1) if len(self.losses) > 1 else np.zeros(self.losses.shape[1])

    def reconstruct(self, counts: sparse.csr_matrix, rows: slice) -> np.ndarray:
        """Denoised expected counts of a block of cells (all modelled genes)."""
        import torch

        from ..models.autoencoder.data import CsrBatches
        from ..models.autoencoder.train import predict_rates

        n_genes = counts.shape[1]
        block = counts[rows]
        out = np.zeros((block.shape[0], n_genes))
        data = CsrBatches(block[:, self.genes], self.device)
        generator = torch.Generator(device=self.device).manual_seed(self.seed + (rows.start or 0))
        config = self.configs[self.best]
        rates = predict_rates(
            self.model,
            data,
            np.arange(block.shape[0]),
            mode=self.mode,
            input_fraction=config.input_fraction,
            n_replicas=config.n_replicas,
            shape_scale=self.shape_scale,
            generator=generator,
        )
        out[:, self.genes] = rates.cpu().numpy()
        return out


def fit_autoencoder(
    counts: sparse.csr_matrix,
    *,
    splits: Splits,
    configs: Sequence[Mapping] | None = None,
    n_splits: int = 1,
    device: str | None = None,
    rng: np.random.Generator,
    progress: bool = False,
    timings: Timings | None = None,
) -> AutoencoderSelection:
    """Choose autoencoder hyperparameters by held-out molecules and train the choice on the full counts.

    For each of the first ``n_splits`` splits and each candidate, a network is trained across the molecules
    of the training half (:func:`scn2s.models.autoencoder.train.train`) with early stopping on the held-out
    half, which it never sees as input or target. The candidate, its number of epochs and its inference mode
    (all molecules as input, or the average over thinned replicas at ``input_fraction``) are chosen by
    the held-out loss of :mod:`scn2s.loss`, the same loss and molecules that score the low-rank family. The
    best of the candidates that leave ``posterior`` unset (every default candidate) is also trained with the
    posterior switched off (on, if it was off), and that variant competes on the same held-out molecules: the
    posterior helps where cells vary gene by gene beyond what the code explains, and costs a little where they do
    not. The choice is then trained on the full counts for the chosen number of epochs.

    Parameters
    ----------
    counts
        Cells x genes counts (CSR).
    splits
        The shared splits.
    configs
        Candidate settings (dicts of :class:`~scn2s.models.autoencoder.train.TrainConfig` fields); default
        :data:`DEFAULT_CONFIGS`. Set ``posterior`` in a candidate to keep the search from switching it.
    n_splits
        How many of the splits to train on (each costs one training per candidate; their halves are held in
        memory together).
    device
        Torch device; ``None`` picks CUDA when available.
    rng
        Seeds of the networks.
    progress
        Show progress bars.
    timings
        Where the seconds of the search's steps are added: per candidate (its label ``L``)
        ``autoencoder.L.steps`` (optimiser steps), ``autoencoder.L.heldout`` (held-out evaluations during
        training) and ``autoencoder.L.scoring`` (the inference modes and shape factors), and ``autoencoder.refit``
        (the chosen candidate on the full counts).

    Notes
    -----
    Under ``torch.distributed`` (``torchrun``; :mod:`scn2s.models.autoencoder.distributed`), every rank calls this
    with the same counts, splits and ``rng`` state: each training is shared between the ranks, the held-out
    molecules are the same on every rank (checked), and so are the losses, the choice and the final network.
    """
    import torch

    from ..models.autoencoder import distributed
    from ..models.autoencoder.data import CsrBatches
    from ..models.autoencoder.train import heldout_loss, resolve_device, train

    device = resolve_device(device)
    timings = Timings() if timings is None else timings
    candidates = make_configs(configs)
    # the candidates that leave ``posterior`` to its default: the best of them is also tried with it switched
    raw = DEFAULT_CONFIGS if configs is None else configs
    open_posterior = [j for j, config in enumerate(raw) if "posterior" not in config]
    n, g = counts.shape
    used = min(n_splits, len(splits))
    seeds = [int(s) for s in rng.integers(2**31, size=used + 1)]
    halves = []
    for i in range(used):
        train_half, heldout_half = splits.get(i, counts)
        genes = np.flatnonzero(np.asarray(train_half.sum(axis=0)).ravel() > 0)
        # held-out molecules of genes absent from the training half are predicted as zero
        unseen = float(heldout_half.sum()) - float(heldout_half[:, genes].sum())
        halves.append((train_half[:, genes], heldout_half[:, genes], len(genes) / g, unseen / (n * g)))

    def score(config) -> list[tuple[np.ndarray, np.ndarray, int, np.ndarray, list[float]]]:
        """Train ``config`` on each split's training half.

        Per split: the held-out loss with full and with replica inference (one a shape scale), the best epoch, and
        the held-out and training curves.
        """
        scales = SHAPE_SCALES if config.posterior else (1.0,)
        name = f"autoencoder.{config_label(config)}"
        out = []
        for i, (train_part, held_part, scale, unseen) in enumerate(halves):
            result = train(
                train_part, config, heldout=held_part, depth_ratio=splits.depth_ratio, device=device, seed=seeds[i]
            )
            timings.add(f"{name}.steps", result.step_seconds)
            timings.add(f"{name}.heldout", result.heldout_seconds)
            began = time.perf_counter()
            data, held = CsrBatches(train_part, device), CsrBatches(held_part, device)
            by_mode = []
            for mode in ("full", "replicas"):
                losses = heldout_loss(
                    result.model,
                    data,
                    held,
                    splits.depth_ratio,
                    mode=mode,
                    input_fraction=config.input_fraction,
                    n_replicas=config.n_replicas,
                    shape_scales=scales,
                    generator=torch.Generator(device=device).manual_seed(seeds[i]),
                )
                by_mode.append(np.broadcast_to(losses * scale + unseen, len(SHAPE_SCALES)))
            timings.add(f"{name}.scoring", time.perf_counter() - began)
            logger.debug("split %d %s: epoch %d, loss %.6g", i, config_label(config), result.best_epoch, by_mode[0][0])
            curve = np.asarray(result.heldout_loss) * scale + unseen
            out.append((*by_mode, result.best_epoch, curve, result.train_loss))
            bar.update()
        return out

    bar = tqdm(
        total=used * (len(candidates) + bool(open_posterior)),
        desc="autoencoder search",
        disable=not progress or not distributed.is_main_process(),
    )

    def stacked(k: int) -> np.ndarray:
        """Field ``k`` of every score as a ``(splits, candidates, ...)`` array."""
        return np.array([[split[k] for split in per] for per in scores]).swapaxes(0, 1)

    def by_scale() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Losses by inference mode and shape scale, each mode's and candidate's best scale, the losses there.

        ``(2, splits, candidates, scales)``; ``(2, candidates)``, the scale of lowest mean loss over the splits;
        ``(2, splits, candidates)``.
        """
        losses = np.stack([stacked(0), stacked(1)])
        index = np.argmin(losses.mean(axis=1), axis=-1)
        return losses, index, np.take_along_axis(losses, index[:, None, :, None], axis=-1)[..., 0]

    scores = [score(config) for config in candidates]
    if open_posterior:
        mean_loss = by_scale()[2].min(axis=0).mean(axis=0)[open_posterior]
        best = candidates[open_posterior[int(np.argmin(mean_loss))]]
        switched = replace(best, posterior=not best.posterior)
        if switched not in candidates:
            candidates.append(switched)
            scores.append(score(switched))
    bar.close()
    losses_by_scale, scale_index, (full, replicas) = by_scale()
    best_epochs = stacked(2)
    heldout_curves = [[per[i][3] for per in scores] for i in range(used)]
    train_curves = [[np.asarray(per[i][4]) for per in scores] for i in range(used)]
    selection = AutoencoderSelection(
        configs=candidates,
        losses_full=full,
        losses_replicas=replicas,
        best_epochs=best_epochs.astype(int),
        shape_scales=np.array(SHAPE_SCALES),
        losses_by_scale=losses_by_scale,
        heldout_curves=heldout_curves,
        train_curves=train_curves,
        device=str(device),
        seed=seeds[-1],
        world_size=distributed.world_size(),
    )
    selection.best = int(np.argmin(selection.loss_mean))
    selection.mode = "replicas" if replicas[:, selection.best].mean() < full[:, selection.best].mean() else "full"
    config = candidates[selection.best]
    if config.posterior:
        selection.shape_scale = float(SHAPE_SCALES[scale_index[int(selection.mode == "replicas"), selection.best]])
    selection.epochs = max(1, int(np.round(best_epochs[:, selection.best].mean())))
    logger.info(
        "autoencoder %s chosen: %d epochs, %s inference, shape scale %g",
        config_label(config),
        selection.epochs,
        selection.mode,
        selection.shape_scale,
    )
    selection.genes = np.flatnonzero(np.asarray(counts.sum(axis=0)).ravel() > 0)
    with timings.step("autoencoder.refit"):
        final = train(
            counts[:, selection.genes],
            config,
            epochs=selection.epochs,
            device=device,
            seed=seeds[-1],
            progress=progress and distributed.is_main_process(),
        )
    selection.model = final.model
    selection.batch_size = final.batch_size
    return selection
