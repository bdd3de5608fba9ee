"""Hyperparameter search of the autoencoder family (array level; torch inside)."""

from __future__ import annotations

import logging
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
    refit: bool = True,
) -> AutoencoderSelection:
    """Choose autoencoder hyperparameters by held-out molecules and train the choice on the full counts.

    For each of the first ``n_splits`` splits and each candidate, a network is trained across the molecules
    of the training half (:func:`scn2s.models.autoencoder.train.train`) with early stopping on the held-out
    half, which it never sees as input or target. The candidates train in turns, and those that cannot catch the
    leader stop early (successive halving: after :data:`RUNG_EPOCHS` epochs, then after twice as many, and so on,
    only the better half by held-out loss so far goes on; the last one trains to its early stop); a stopped
    candidate is scored at its best epoch so far. The candidate, its number of epochs and its inference mode
    (all molecules as input, or the average over thinned replicas at ``input_fraction``) are chosen by
    the held-out loss of :mod:`scn2s.loss`, the same loss and molecules that score the low-rank family. The
    best of the candidates that leave ``posterior`` unset (every default candidate) is also trained with the
    posterior switched off (on, if it was off), and that variant competes on the same held-out molecules: the
    posterior helps where cells vary gene by gene beyond what the code explains, and costs a little where they do
    not; it stops at the first rung where its held-out loss so far is above that candidate's at the same epoch.
    The choice is then trained on the full counts for the chosen number of epochs.

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
    refit
        Train the choice afresh on the full counts; ``False``: keep the network the first split trained (on its
        training half) where it models the same genes, and save that training.
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
    from ..models.autoencoder import distributed
    from ..models.autoencoder.train import resolve_device, train

    device = resolve_device(device)
    timings = Timings() if timings is None else timings
    candidates = make_configs(configs)
    # the candidates that leave ``posterior`` to its default: the best of them is also tried with it switched
    raw = DEFAULT_CONFIGS if configs is None else configs
    open_posterior = [j for j, config in enumerate(raw) if "posterior" not in config]
    used = min(n_splits, len(splits))
    seeds = [int(s) for s in rng.integers(2**31, size=used + 1)]
    halves = [_Half.of(splits, i, counts, device) for i in range(used)]
    bar = tqdm(
        total=used * (len(candidates) + bool(open_posterior)),
        desc="autoencoder search",
        disable=not progress or not distributed.is_main_process(),
    )
    race = [[half.trainer(config, seeds[i]) for i, half in enumerate(halves)] for config in candidates]
    _race(race)
    scores = [_score(config, runs, halves, timings, bar) for config, runs in zip(candidates, race, strict=True)]
    if open_posterior:
        leader = open_posterior[int(np.argmin([scores[j].mean_loss for j in open_posterior]))]
        switched = replace(candidates[leader], posterior=not candidates[leader].posterior)
        if switched not in candidates:
            runs = [half.trainer(switched, seeds[i]) for i, half in enumerate(halves)]
            _race([runs], leader=race[leader])
            candidates.append(switched)
            scores.append(_score(switched, runs, halves, timings, bar))
    bar.close()
    selection = _selection(candidates, scores)
    selection.device, selection.seed, selection.world_size = str(device), seeds[-1], distributed.world_size()
    config = candidates[selection.best]
    logger.info(
        "autoencoder %s chosen: %d epochs, %s inference, shape scale %g",
        config_label(config),
        selection.epochs,
        selection.mode,
        selection.shape_scale,
    )
    selection.genes = np.flatnonzero(np.asarray(counts.sum(axis=0)).ravel() > 0)
    if not refit and np.array_equal(halves[0].genes, selection.genes):
        selection.model, selection.batch_size = scores[selection.best].models[0], config.batch_size
        return selection
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


RUNG_EPOCHS = 8
"""Epochs of the first rung of the race between candidates (:func:`fit_autoencoder`); each later rung is twice."""


@dataclass
class _Half:
    """One split's training and held-out halves, of the genes with a training molecule, on the device."""

    train: object  # CsrBatches
    heldout: object  # CsrBatches
    train_counts: sparse.csr_matrix
    heldout_counts: sparse.csr_matrix
    depth_ratio: float
    gene_share: float  # modelled genes / all genes: the loss is per entry of the full matrix
    genes: np.ndarray  # the genes of the training half with a molecule
    unseen: float  # held-out molecules of genes absent from the training half (predicted as zero), per entry

    @classmethod
    def of(cls, splits: Splits, i: int, counts: sparse.csr_matrix, device) -> _Half:
        from ..models.autoencoder.data import CsrBatches

        n, g = counts.shape
        train_half, heldout_half = splits.get(i, counts)
        genes = np.flatnonzero(np.asarray(train_half.sum(axis=0)).ravel() > 0)
        unseen = float(heldout_half.sum()) - float(heldout_half[:, genes].sum())
        train_half, heldout_half = train_half[:, genes], heldout_half[:, genes]
        return cls(
            CsrBatches(train_half, device),
            CsrBatches(heldout_half, device),
            train_half,
            heldout_half,
            splits.depth_ratio,
            len(genes) / g,
            genes,
            unseen / (n * g),
        )

    def trainer(self, config, seed: int):
        """A :class:`~scn2s.models.autoencoder.train.Trainer` of ``config`` on this half."""
        from ..models.autoencoder.train import Trainer

        return Trainer(
            self.train_counts,
            config,
            heldout=self.heldout_counts,
            depth_ratio=self.depth_ratio,
            device=self.train.device,
            seed=seed,
            batches=(self.train, self.heldout),
        )

    def loss(self, values):
        """Per-entry losses of the modelled genes as losses per entry of all genes."""
        return np.asarray(values) * self.gene_share + self.unseen


def _race(race: list[list], leader: list | None = None) -> None:
    """Train the candidates in turns and stop those that cannot catch the leader (successive halving).

    ``race[j][i]``: the trainer of candidate ``j`` on split ``i``. Every running candidate trains to the end of a
    rung (:data:`RUNG_EPOCHS`, then twice as many epochs each rung); then, by the lowest held-out loss so far (mean
    over the splits), the better half of the candidates (rounded up) goes on, among them any that has already
    stopped early, and the others stop. The last one runs to its early stop. With ``leader`` (the held-out curves,
    per split, of a candidate trained before), each candidate is stopped at a rung end as soon as its loss so far is
    above the leader's at the same epoch.
    """
    alive = list(range(len(race)))
    end = RUNG_EPOCHS
    while True:
        for j in alive:
            for trainer in race[j]:
                trainer.advance(end - trainer.epoch)
        running = [j for j in alive if not all(trainer.stopped for trainer in race[j])]
        if not running:
            return
        best = {j: np.mean([trainer.best_loss for trainer in race[j]]) for j in alive}
        if leader is not None:
            reference = np.mean([np.nanmin(trainer.result.heldout_loss[:end]) for trainer in leader])
            if all(best[j] > reference for j in running):
                return
        elif len(running) == 1:
            alive = running
            end = max(trainer.config.max_epochs for trainer in race[alive[0]])
            continue
        else:
            alive = sorted(alive, key=best.get)[: (len(alive) + 1) // 2]
            if not any(j in running for j in alive):
                return
        end *= 2


@dataclass
class _Score:
    """One candidate's trainings on the splits, scored on the held-out molecules."""

    by_mode: np.ndarray  # (2 inference modes, splits, shape scales): full input, thinned replicas
    best_epochs: np.ndarray  # (splits,)
    heldout_curves: list[np.ndarray]  # per split, per epoch
    train_curves: list[np.ndarray]
    models: list

    @property
    def mean_loss(self) -> float:
        """Mean over the splits of the held-out loss in the better inference mode, each mode at its best scale."""
        index = np.argmin(self.by_mode.mean(axis=1), axis=-1)
        return float(self.by_mode[[0, 1], :, index].min(axis=0).mean())


def _score(config, runs: list, halves: list[_Half], timings: Timings, bar) -> _Score:
    """Each split's network at its best epoch, scored by inference mode and shape scale on its held-out half."""
    import torch

    from ..models.autoencoder.train import heldout_loss

    name = f"autoencoder.{config_label(config)}"
    scales = SHAPE_SCALES if config.posterior else (1.0,)
    by_mode = np.zeros((2, len(halves), len(SHAPE_SCALES)))
    results = []
    for i, (trainer, half) in enumerate(zip(runs, halves, strict=True)):
        result = trainer.finish()
        results.append(result)
        timings.add(f"{name}.steps", result.step_seconds)
        timings.add(f"{name}.heldout", result.heldout_seconds)
        with timings.step(f"{name}.scoring"):
            for k, mode in enumerate(("full", "replicas")):
                losses = heldout_loss(
                    result.model,
                    half.train,
                    half.heldout,
                    half.depth_ratio,
                    mode=mode,
                    input_fraction=config.input_fraction,
                    n_replicas=config.n_replicas,
                    shape_scales=scales,
                    generator=torch.Generator(device=half.train.device).manual_seed(trainer.seed),
                )
                by_mode[k, i] = half.loss(losses)
        logger.debug("split %d %s: epoch %d, loss %.6g", i, config_label(config), result.best_epoch, by_mode[0, i, 0])
        bar.update()
    return _Score(
        by_mode=by_mode,
        best_epochs=np.array([result.best_epoch for result in results]),
        heldout_curves=[half.loss(result.heldout_loss) for result, half in zip(results, halves, strict=True)],
        train_curves=[np.asarray(result.train_loss) for result in results],
        models=[result.model for result in results],
    )


def _selection(candidates: list, scores: list[_Score]) -> AutoencoderSelection:
    """The candidate, inference mode and shape scale of lowest mean held-out loss, and its mean best epoch."""
    losses_by_scale = np.stack([score.by_mode for score in scores], axis=2)  # (modes, splits, candidates, scales)
    scale_index = np.argmin(losses_by_scale.mean(axis=1), axis=-1)  # (modes, candidates)
    full, replicas = np.take_along_axis(losses_by_scale, scale_index[:, None, :, None], axis=-1)[..., 0]
    best_epochs = np.stack([score.best_epochs for score in scores], axis=1)
    n_splits = len(scores[0].heldout_curves)
    selection = AutoencoderSelection(
        configs=candidates,
        losses_full=full,
        losses_replicas=replicas,
        best_epochs=best_epochs.astype(int),
        shape_scales=np.array(SHAPE_SCALES),
        losses_by_scale=losses_by_scale,
        heldout_curves=[[score.heldout_curves[i] for score in scores] for i in range(n_splits)],
        train_curves=[[score.train_curves[i] for score in scores] for i in range(n_splits)],
    )
    selection.best = int(np.argmin(selection.loss_mean))
    selection.mode = "replicas" if replicas[:, selection.best].mean() < full[:, selection.best].mean() else "full"
    if candidates[selection.best].posterior:
        selection.shape_scale = float(SHAPE_SCALES[scale_index[int(selection.mode == "replicas"), selection.best]])
    selection.epochs = max(1, int(np.round(best_epochs[:, selection.best].mean())))
    return selection
