"""Hyperparameter search of the autoencoder family (array level; torch inside)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

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

LONG_SEARCH_S = 300.0
"""An autoencoder search estimated to take longer than this (seconds, at most) is announced by a warning."""

_TIMED_CELLS = 512
"""Cells of the timed pass that estimates the search's duration."""


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

    main = distributed.is_main_process()
    if progress or logger.isEnabledFor(logging.INFO):
        seconds = _timed_pass(halves[0], candidates, depth_ratio=splits.depth_ratio, device=device, seed=seeds[-1])
        if main:
            _log_estimate(seconds, candidates, open_posterior, n_splits=used, shape=(n, halves[0][0].shape[1]))

    def score(config) -> list[tuple[np.ndarray, np.ndarray, int, np.ndarray, list[float]]]:
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
            out.append((*by_mode, result.best_epoch, curve, result.train_loss))
            bar.update()
        return out

    bar = tqdm(
        total=used * (len(candidates) + bool(open_posterior)),
        desc="autoencoder search",
        disable=not progress or not main,
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
    final = train(
        counts[:, selection.genes],
        config,
        epochs=selection.epochs,
        device=device,
        seed=seeds[-1],
        progress=progress and main,
    )
    selection.model = final.model
    selection.batch_size = final.batch_size
    return selection


def _show_epoch(bar, name: str, max_epochs: int) -> Callable[[int, float, float], None]:
    """An ``on_epoch`` callback that shows a candidate's epoch and held-out loss beside the search's progress bar.

    The callback of :func:`~scn2s.models.autoencoder.train.train`; the lowest held-out loss so far is shown too.
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

    from ..models.autoencoder.data import CsrBatches
    from ..models.autoencoder.train import heldout_loss, train

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
