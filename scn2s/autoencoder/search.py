"""Hyperparameter search of the autoencoder family (array level; torch inside), behind the family interface.

The interface is that of :mod:`scn2s.select.family`: :class:`AutoencoderOptions`, :func:`select` and
:class:`AutoencoderSelection`. torch is imported only when a network is trained or run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from .._validate import check_integer
from ..select.family import options_from
from ..select.splits import Splits

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

logger = logging.getLogger(__name__)

DEFAULT_CONFIGS: tuple[dict, ...] = (
    {"hidden": 256, "bottleneck": 32, "dropout": 0.1},
    {"hidden": 128, "bottleneck": 16, "dropout": 0.0},
    {"hidden": 512, "bottleneck": 64, "dropout": 0.2},
)

SHAPE_SCALES: tuple[float, ...] = tuple(2.0 ** (k / 2) for k in range(-4, 7))
"""Factors on the learned prior shapes tried at inference (0.25 to 8, by sqrt 2)."""

LOSS = "heldout_sqrt_mse"
"""The name of the held-out loss in the record (:func:`scn2s.loss.heldout_sqrt_mse`)."""


@dataclass(frozen=True)
class AutoencoderOptions:
    """Options of the autoencoder family: ``autoencoder_kwds`` of :func:`scn2s.pp.denoise`.

    Attributes
    ----------
    configs
        Candidates, dicts of :class:`~scn2s.autoencoder.train.TrainConfig` fields (``hidden``, ``bottleneck``,
        ``dropout``, ``posterior``, ``input_range``, ``max_epochs``, ``batch_size``, ``likelihood``, ...);
        ``None``: :data:`DEFAULT_CONFIGS`.
    n_splits
        Number of splits the candidates are trained on (each costs one training per candidate).
    """

    configs: Sequence[Mapping] | None = None
    n_splits: int = 1

    def __post_init__(self) -> None:
        check_integer("n_splits", self.n_splits, minimum=1)
        if self.configs is not None:
            make_configs(self.configs)  # each setting checked, by name, before any work

    @classmethod
    def from_kwds(cls, kwds: Mapping | None) -> AutoencoderOptions:
        """The options of an ``autoencoder_kwds`` mapping (``None``: the defaults); unknown keys raise."""
        return options_from(cls, kwds, "autoencoder_kwds")


LONG_SEARCH_S = 300.0
"""An autoencoder search estimated to take longer than this (seconds, at most) is announced by a warning."""

_TIMED_CELLS = 512
"""Cells of the timed pass that estimates the search's duration."""


def make_configs(configs: Sequence[Mapping] | None, **overrides):
    """:class:`~scn2s.autoencoder.train.TrainConfig` objects from dicts (default grid if ``None``)."""
    from .train import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    out = []
    for config in DEFAULT_CONFIGS if configs is None else configs:
        unknown = set(config) - names
        if unknown:
            msg = f"Unknown autoencoder setting(s) {sorted(unknown)}; valid: {sorted(names)}."
            raise ValueError(msg)
        out.append(TrainConfig(**{**overrides, **config}))
    if not out:
        msg = 'autoencoder_kwds["configs"] is empty: give at least one candidate, or None for the default ones.'
        raise ValueError(msg)
    return out


def config_label(config) -> str:
    """Short name of a candidate, e.g. ``h256-b32-d0.1``.

    ``-noposterior`` is appended without the posterior, and the training input fractions where they differ from
    the default: ``-f0.5`` for a fixed fraction, ``-f0.2:0.8`` for a range.
    """
    from .train import TrainConfig

    label = f"h{config.hidden}-b{config.bottleneck}-d{config.dropout:g}"
    if config.input_range != TrainConfig.input_range:
        low, high = config.input_bounds
        label += f"-f{low:g}" if config.input_range is None else f"-f{low:g}:{high:g}"
    return label if config.posterior else f"{label}-noposterior"


class TrainingHalf(NamedTuple):
    """One split's halves on the genes with training molecules, as the candidates train and are scored on them."""

    train: sparse.csr_matrix
    heldout: sparse.csr_matrix
    gene_fraction: float  # the share of the genes kept, which rescales the losses to all genes
    unseen: float  # the loss of the held-out molecules of the other genes, predicted as zero, per entry


class SplitScore(NamedTuple):
    """One candidate trained on one split's training half, scored on its held-out half."""

    full: np.ndarray  # held-out loss with full-input inference, per shape scale (len(SHAPE_SCALES))
    replicas: np.ndarray  # held-out loss with thinned-replica inference, per shape scale
    best_epoch: int
    heldout_curve: np.ndarray  # per epoch
    train_curve: list[float]  # per epoch


@dataclass(frozen=True)
class AutoencoderSelection:
    """Outcome of the autoencoder search and the fit it chose: a :class:`~scn2s.select.family.Selection`."""

    configs: list
    losses_full: np.ndarray  # (n_splits_used, n_configs), mean per entry, full-input inference, best shape scale
    losses_replicas: np.ndarray  # (n_splits_used, n_configs), thinned-replica inference, best shape scale
    best_epochs: np.ndarray  # (n_splits_used, n_configs)
    shape_scales: np.ndarray  # the factors tried on the prior shapes
    losses_by_scale: np.ndarray  # (2 inference modes, n_splits_used, n_configs, n_scales)
    shape_scale: float  # the chosen candidate's factor in its inference mode (1 without a posterior)
    heldout_curves: list  # [split][config] -> per-epoch held-out loss
    train_curves: list
    best: int  # index of the chosen candidate
    mode: str  # its inference mode, "full" or "replicas"
    epochs: int  # its epochs on the full counts
    model: object  # the network trained on the full counts
    counts: sparse.csr_matrix  # the counts it denoises (cells' own molecules are its input)
    genes: np.ndarray  # the genes it models: those with a molecule
    device: str
    seed: int
    batch_size: int
    world_size: int  # processes that trained together (torch.distributed)

    family = "autoencoder"

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

    @property
    def heldout_losses(self) -> np.ndarray:
        """Held-out loss of the chosen candidate, per split it was trained on."""
        return self.losses[:, self.best]

    @property
    def has_posterior(self) -> bool:
        """Whether the chosen network outputs a gamma-Poisson posterior (and so has posterior standard deviations)."""
        return self.model is not None and self.model.log_shape is not None

    def reconstruct(self, rows: slice) -> np.ndarray:
        """Denoised expected counts of a block of cells (all modelled genes)."""
        return self._predict(rows, sd=False)

    def posterior_sd(self, rows: slice) -> np.ndarray:
        """Posterior standard deviations of the expected counts of a block of cells (all modelled genes).

        The posterior of each expected count is a gamma distribution with the mean :meth:`reconstruct` gives and
        shape ``(mean / sd) ** 2`` (:func:`~scn2s.autoencoder.train.predict_posterior`), under the chosen
        network, inference mode and shape factor. Zero for genes without a molecule.

        Raises
        ------
        ValueError
            If the chosen network has no posterior (:attr:`has_posterior`).
        """
        return self._predict(rows, sd=True)

    def embedding(self, *, chunk_size: int = 1024) -> np.ndarray:
        """The network's code of every cell from all its molecules: ``float32``, cells x bottleneck.

        The code is deterministic (dropout is off at inference), read in chunks of ``chunk_size`` cells.
        """
        from .data import CsrBatches
        from .train import encode

        data = CsrBatches(self.counts[:, self.genes], self.device)
        n = self.counts.shape[0]
        parts = [encode(self.model, data, np.arange(i, min(i + chunk_size, n))) for i in range(0, n, chunk_size)]
        return np.concatenate([part.cpu().numpy() for part in parts]).astype(np.float32, copy=False)

    def _predict(self, rows: slice, *, sd: bool) -> np.ndarray:
        import torch

        from .data import CsrBatches
        from .train import predict_posterior, predict_rates

        n_genes = self.counts.shape[1]
        block = self.counts[rows]
        out = np.zeros((block.shape[0], n_genes))
        data = CsrBatches(block[:, self.genes], self.device)
        generator = torch.Generator(device=self.device).manual_seed(self.seed + (rows.start or 0))
        config = self.configs[self.best]
        predict = predict_posterior if sd else predict_rates
        values = predict(
            self.model,
            data,
            np.arange(block.shape[0]),
            mode=self.mode,
            input_fraction=config.input_fraction,
            n_replicas=config.n_replicas,
            shape_scale=self.shape_scale,
            generator=generator,
        )
        out[:, self.genes] = (values[1] if sd else values).cpu().numpy()
        return out

    def best_params(self) -> dict:
        """The chosen candidate's architecture, posterior, training inputs, shape factor, epochs and inference."""
        config = self.configs[self.best]
        return {
            "hidden": config.hidden,
            "bottleneck": config.bottleneck,
            "dropout": config.dropout,
            "posterior": config.posterior,
            "input_range": list(config.input_bounds),
            "shape_scale": self.shape_scale,
            "epochs": self.epochs,
            "inference": self.mode,
        }

    def record(self) -> dict:
        """The family's entry of ``uns[key_added]["selection"]`` (without the shared ``p`` and ``seed``)."""
        labels = [config_label(c) for c in self.configs]
        curves = {
            name: {
                label: {f"split_{i}": np.asarray(per_split[j], dtype=np.float64) for i, per_split in enumerate(source)}
                for j, label in enumerate(labels)
            }
            for name, source in (("heldout_curves", self.heldout_curves), ("train_curves", self.train_curves))
        }
        return {
            "loss": LOSS,
            "grid": {"config": np.array(labels)},
            "hidden": np.array([c.hidden for c in self.configs]),
            "bottleneck": np.array([c.bottleneck for c in self.configs]),
            "dropout": np.array([c.dropout for c in self.configs]),
            "posterior": np.array([c.posterior for c in self.configs]),
            "input_range": np.array([c.input_bounds for c in self.configs], dtype=np.float64),
            "loss_mean": self.loss_mean,
            "loss_std": self.loss_std,
            "loss_per_split": self.losses,
            "loss_full_input": self.losses_full,
            "loss_replicas": self.losses_replicas,
            "shape_scales": self.shape_scales,
            "loss_full_input_by_scale": self.losses_by_scale[0],
            "loss_replicas_by_scale": self.losses_by_scale[1],
            "shape_scale": self.shape_scale,
            "best_epochs": self.best_epochs,
            **curves,
            "chosen": labels[self.best],
            "epochs": self.epochs,
            "inference": self.mode,
            "device": self.device,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "n_splits": int(self.losses.shape[0]),
        }


def fit_autoencoder(
    counts: sparse.csr_matrix,
    *,
    splits: Splits,
    configs: Sequence[Mapping] | None = None,
    n_splits: int = 1,
    device: str | None = None,
    rng: np.random.Generator,
    progress: bool = False,
) -> AutoencoderSelection:
    """Choose autoencoder hyperparameters by held-out molecules and train the choice on the full counts.

    For each of the first ``n_splits`` splits and each candidate, a network is trained across the molecules
    of the training half (:func:`scn2s.autoencoder.train.train`) with early stopping on the held-out
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
        Candidate settings (dicts of :class:`~scn2s.autoencoder.train.TrainConfig` fields); default
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

    Notes
    -----
    Under ``torch.distributed`` (``torchrun``; :mod:`scn2s.autoencoder.distributed`), every rank calls this
    with the same counts, splits and ``rng`` state: each training is shared between the ranks, the held-out
    molecules are the same on every rank (checked), and so are the losses, the choice and the final network.
    """
    import torch

    from . import distributed
    from .data import CsrBatches
    from .train import heldout_loss, resolve_device, train

    device = resolve_device(device)
    candidates = make_configs(configs)
    # the candidates that leave ``posterior`` to its default: the best of them is also tried with it switched
    raw = DEFAULT_CONFIGS if configs is None else configs
    open_posterior = [j for j, config in enumerate(raw) if "posterior" not in config]
    n, g = counts.shape
    used = min(n_splits, len(splits))
    seeds = [int(s) for s in rng.integers(2**31, size=used + 1)]
    halves = []
    main = distributed.is_main_process()
    for i in range(used):
        train_half, heldout_half = splits.get(i, counts)
        genes = np.flatnonzero(np.asarray(train_half.sum(axis=0)).ravel() > 0)
        # held-out molecules of genes absent from the training half are predicted as zero
        unseen = float(heldout_half.sum()) - float(heldout_half[:, genes].sum())
        halves.append(TrainingHalf(train_half[:, genes], heldout_half[:, genes], len(genes) / g, unseen / (n * g)))
    if progress or logger.isEnabledFor(logging.INFO):
        seconds = _timed_pass(halves[0], candidates, depth_ratio=splits.depth_ratio, device=device, seed=seeds[-1])
        if main:
            _log_estimate(seconds, candidates, open_posterior, n_splits=used, shape=(n, halves[0][0].shape[1]))

    def score(config) -> list[SplitScore]:
        """Train ``config`` on each split's training half.

        Per split: the held-out loss with full and with replica inference (one a shape scale), the best epoch, and
        the held-out and training curves.
        """
        scales = SHAPE_SCALES if config.posterior else (1.0,)
        out = []
        for i, (train_part, held_part, scale, unseen) in enumerate(halves):
            result = train(
                train_part,
                config,
                heldout=held_part,
                depth_ratio=splits.depth_ratio,
                device=device,
                seed=seeds[i],
                progress=progress and main,
                on_epoch=_show_epoch(bar, f"{config_label(config)}, split {i + 1}/{used}", config.max_epochs),
            )
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
            logger.debug("split %d %s: epoch %d, loss %.6g", i, config_label(config), result.best_epoch, by_mode[0][0])
            curve = np.asarray(result.heldout_loss) * scale + unseen
            out.append(SplitScore(*by_mode, result.best_epoch, curve, result.train_loss))
            bar.update()
        return out

    bar = tqdm(
        total=used * (len(candidates) + bool(open_posterior)),
        desc="autoencoder search",
        disable=not progress or not main,
    )

    def stacked(name: str) -> np.ndarray:
        """Field ``name`` of every score as a ``(splits, candidates, ...)`` array."""
        return np.array([[getattr(split, name) for split in per] for per in scores]).swapaxes(0, 1)

    def by_scale() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Losses by inference mode and shape scale, each mode's and candidate's best scale, the losses there.

        ``(2, splits, candidates, scales)``; ``(2, candidates)``, the scale of lowest mean loss over the splits;
        ``(2, splits, candidates)``.
        """
        losses = np.stack([stacked("full"), stacked("replicas")])
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
    best_epochs = stacked("best_epoch")
    best = int(np.argmin(np.minimum(full, replicas).mean(axis=0)))
    mode = "replicas" if replicas[:, best].mean() < full[:, best].mean() else "full"
    config = candidates[best]
    shape_scale = float(SHAPE_SCALES[scale_index[int(mode == "replicas"), best]]) if config.posterior else 1.0
    epochs = max(1, int(np.round(best_epochs[:, best].mean())))
    logger.info(
        "autoencoder %s chosen: %d epochs, %s inference, shape scale %g",
        config_label(config),
        epochs,
        mode,
        shape_scale,
    )
    genes = np.flatnonzero(np.asarray(counts.sum(axis=0)).ravel() > 0)
    final = train(
        counts[:, genes],
        config,
        epochs=epochs,
        device=device,
        seed=seeds[-1],
        progress=progress and main,
    )
    return AutoencoderSelection(
        configs=candidates,
        losses_full=full,
        losses_replicas=replicas,
        best_epochs=best_epochs.astype(int),
        shape_scales=np.array(SHAPE_SCALES),
        losses_by_scale=losses_by_scale,
        shape_scale=shape_scale,
        heldout_curves=[[per[i].heldout_curve for per in scores] for i in range(used)],
        train_curves=[[np.asarray(per[i].train_curve) for per in scores] for i in range(used)],
        best=best,
        mode=mode,
        epochs=epochs,
        model=final.model,
        counts=counts,
        genes=genes,
        device=str(device),
        seed=seeds[-1],
        batch_size=final.batch_size,
        world_size=distributed.world_size(),
    )


def select(
    counts: sparse.csr_matrix,
    *,
    splits: Splits,
    options: AutoencoderOptions,
    device: str | None = None,
    rng: np.random.Generator,
    progress: bool = False,
) -> AutoencoderSelection:
    """The family interface (:mod:`scn2s.select.family`): :func:`fit_autoencoder` with ``options``."""
    return fit_autoencoder(
        counts,
        splits=splits,
        configs=options.configs,
        n_splits=options.n_splits,
        device=device,
        rng=rng,
        progress=progress,
    )


def _show_epoch(bar, name: str, max_epochs: int) -> Callable[[int, float, float], None]:
    """An ``on_epoch`` callback that shows a candidate's epoch and held-out loss beside the search's progress bar.

    The callback of :func:`~scn2s.autoencoder.train.train`; the lowest held-out loss so far is shown too.
    """
    lowest = [np.inf]

    def show(epoch: int, train_loss: float, heldout: float) -> None:
        lowest[0] = min(lowest[0], heldout)
        bar.set_postfix_str(f"{name}: epoch {epoch}/{max_epochs}, held-out loss {heldout:.6g} (lowest {lowest[0]:.6g})")

    return show


def _timed_pass(half, candidates: list, *, depth_ratio: float, device, seed: int) -> list[tuple[float, float]]:
    """Seconds of one training epoch, and of the scoring after training, of each candidate on all cells of ``half``.

    Each candidate is trained for two epochs on at most :data:`_TIMED_CELLS` cells of the first split and scored as
    the search scores it (both inference modes, every shape factor); the second epoch and the scoring are timed
    (the first epoch pays for the start) and scaled to the number of cells. The networks are thrown away, and the
    search's results are unchanged (training and scoring draw from their own seeded streams).
    """
    import torch

    from .data import CsrBatches
    from .train import heldout_loss, train

    train_part, held_part = half[0][:_TIMED_CELLS], half[1][:_TIMED_CELLS]
    scale = half[0].shape[0] / train_part.shape[0]
    seconds = []
    for config in candidates:
        ends: list[float] = []

        def timed(*_, ends=ends) -> None:
            ends.append(time.perf_counter())

        result = train(
            train_part,
            replace(config, max_epochs=2, patience=2),
            heldout=held_part,
            depth_ratio=depth_ratio,
            device=device,
            seed=seed,
            on_epoch=timed,
        )
        start = time.perf_counter()
        data, held = CsrBatches(train_part, device), CsrBatches(held_part, device)
        for mode in ("full", "replicas"):
            heldout_loss(
                result.model,
                data,
                held,
                depth_ratio,
                mode=mode,
                input_fraction=config.input_fraction,
                n_replicas=config.n_replicas,
                shape_scales=SHAPE_SCALES if config.posterior else (1.0,),
                generator=torch.Generator(device=device).manual_seed(seed),
            )
        epoch = ends[-1] - ends[0] if len(ends) == 2 else 0.0
        seconds.append((epoch * scale, (time.perf_counter() - start) * scale))
    return seconds


def _log_estimate(
    seconds: list[tuple[float, float]],
    candidates: list,
    open_posterior: list[int],
    *,
    n_splits: int,
    shape: tuple[int, int],
) -> float:
    """Log the estimated longest duration of the search (a warning above :data:`LONG_SEARCH_S`); return it.

    Every training of the search runs ``max_epochs`` at most and is then scored, and the final training on the full
    counts runs as many epochs at most; the candidate trained with its posterior switched is counted at the mean
    cost of the candidates it may come from.
    """
    training = [epoch * config.max_epochs for (epoch, _), config in zip(seconds, candidates, strict=True)]
    cost = [t + scoring for t, (_, scoring) in zip(training, seconds, strict=True)]
    total = sum(cost) * n_splits
    trainings = len(candidates) * n_splits
    if open_posterior:
        total += float(np.mean([cost[j] for j in open_posterior])) * n_splits
        trainings += n_splits
    total += max(training)  # the final training, on the full counts
    epochs = sorted({config.max_epochs for config in candidates})
    up_to = f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]} to {epochs[-1]}"
    message = (
        f"autoencoder search on {shape[0]} cells x {shape[1]} genes: estimated at most {format_duration(total)} "
        f"({trainings} trainings and the final one, of up to {up_to} epochs, from a timed epoch and scoring of each "
        "candidate on a few cells; an estimate: early stopping usually ends trainings sooner)"
    )
    if total > LONG_SEARCH_S:
        logger.warning(
            '%s. The low-rank family alone (method="lowrank") takes a small fraction of that; a GPU shortens it.',
            message,
        )
    else:
        logger.info(message)
    return total


def format_duration(seconds: float) -> str:
    """A duration for a person: ``40 s``, ``12 min``, ``1.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
