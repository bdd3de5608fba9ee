"""Hyperparameter search of the autoencoder family (array level; torch inside), behind the family interface.

The interface is that of :mod:`scn2s.select.family`: :class:`AutoencoderOptions`, :func:`select` and
:class:`AutoencoderSelection`. torch is imported only when a network is trained or run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal, get_args

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from .._batches import Batches
from .._timing import Timings
from .._validate import check_integer
from ..select.family import SplitLosses, options_from
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

Refit = Literal["continue", "afresh", "none"]
"""How :func:`fit_autoencoder` makes the chosen network for the full counts (its ``refit``)."""
REFITS: tuple[str, ...] = get_args(Refit)

REFIT_EPOCHS = 0.5
"""Share of the chosen epochs for which ``refit="continue"`` trains the split's network on the full counts."""

REFIT_LEARNING_RATE = 0.3
"""Factor on the learning rate of those epochs."""

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

    @property
    def needs_batches(self) -> bool:
        """Whether a candidate sets ``batch_covariate=True`` (it then needs each cell's batch)."""
        return any(bool(config.get("batch_covariate", False)) for config in self.configs or ())

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

    ``-noposterior`` is appended without the posterior, ``-batch`` with the batch covariate, and the training input
    fractions where they differ from the default: ``-f0.5`` for a fixed fraction, ``-f0.2:0.8`` for a range.
    """
    from .train import TrainConfig

    label = f"h{config.hidden}-b{config.bottleneck}-d{config.dropout:g}"
    if config.input_range != TrainConfig.input_range:
        low, high = config.input_bounds
        label += f"-f{low:g}" if config.input_range is None else f"-f{low:g}:{high:g}"
    if not config.posterior:
        label += "-noposterior"
    return f"{label}-batch" if config.batch_covariate else label


@dataclass(frozen=True)
class AutoencoderSelection(SplitLosses):
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
    epochs: int  # its best epoch on the splits (mean), the chosen number of epochs
    model: object  # the network for the full counts
    refit: str  # how it was made: "continue", "afresh" or "none" (see fit_autoencoder)
    refit_epochs: int  # its epochs on the full counts (0: none)
    counts: sparse.csr_matrix  # the counts it denoises (cells' own molecules are its input)
    genes: np.ndarray  # the genes it models: those with a molecule
    device: str
    seed: int
    batch_size: int
    world_size: int  # processes that trained together (torch.distributed)
    groups: np.ndarray | None = None  # each cell's batch (codes), where the chosen network models batches
    n_groups: int = 0
    reference: int | None = None  # transform_batch: every cell decoded in this batch
    batches: dict | None = None  # with batch codes: the comparison with and without the covariate (the record's)

    family = "autoencoder"

    @property
    def losses(self) -> np.ndarray:
        """Held-out loss of each candidate under its better inference mode, ``(n_splits_used, n_configs)``."""
        return np.minimum(self.losses_full, self.losses_replicas)

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

        data = CsrBatches(self.counts[:, self.genes], self.device, groups=self.groups, n_groups=self.n_groups or None)
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
        groups = None if self.groups is None else self.groups[rows]
        data = CsrBatches(block[:, self.genes], self.device, groups=groups, n_groups=self.n_groups or None)
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
            reference=self.reference,
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
            **({"batch_covariate": True} if config.batch_covariate else {}),
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
            "refit": self.refit,
            "refit_epochs": self.refit_epochs,
            "inference": self.mode,
            "device": self.device,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "n_splits": int(self.losses.shape[0]),
            **(
                {"batch_covariate": np.array([c.batch_covariate for c in self.configs]), "batches": dict(self.batches)}
                if self.batches is not None
                else {}
            ),
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
    timings: Timings | None = None,
    refit: Refit = "continue",
    batches: Batches | None = None,
) -> AutoencoderSelection:
    """Choose autoencoder hyperparameters by held-out molecules and train the choice on the full counts.

    For each of the first ``n_splits`` splits and each candidate, a network is trained across the molecules
    of the training half (:func:`scn2s.autoencoder.train.train`) with early stopping on the held-out
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
    With ``batches``, the best candidate so far is also trained with the batch covariate (the decoder told each
    cell's batch), stopped as the posterior's switch is, and competes on the same held-out molecules; the record's
    ``batches`` says which won and by how much.
    The choice is then trained on the full counts (``refit``): by default the first split's network trained on for
    half its epochs at a lower learning rate, which measured as good as or better than a network trained afresh for
    all of them (``benchmarks/RESULTS.md``, "Speed of method='auto'").

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
    refit
        How the choice's network for the full counts is made. ``"continue"``: the network the first split trained
        (on its training half, at its best epoch), trained on for :data:`REFIT_EPOCHS` of its epochs on the full
        counts at :data:`REFIT_LEARNING_RATE` of its learning rate (genes without a molecule in that half start
        without weights); ``"afresh"``: a new network trained on the full counts for the chosen number of epochs;
        ``"none"``: the first split's network as it is, where it models the same genes (else ``"afresh"``).
    batches
        Each cell's batch (``batch_key``) and, with ``reference``, the batch every cell is written as if measured in
        (if the covariate wins).
    timings
        Where the seconds of the search's steps are added: per candidate (its label ``L``)
        ``autoencoder.L.steps`` (optimiser steps), ``autoencoder.L.heldout`` (held-out evaluations during
        training) and ``autoencoder.L.scoring`` (the inference modes and shape factors), and ``autoencoder.refit``
        (the chosen candidate on the full counts).

    Notes
    -----
    Under ``torch.distributed`` (``torchrun``; :mod:`scn2s.autoencoder.distributed`), every rank calls this
    with the same counts, splits and ``rng`` state: each training is shared between the ranks, the held-out
    molecules are the same on every rank (checked), and so are the losses, the choice and the final network.
    """
    from . import distributed
    from .train import resolve_device, train

    if refit not in REFITS:
        msg = f"refit must be one of {REFITS}, got {refit!r}."
        raise ValueError(msg)
    device = resolve_device(device)
    timings = Timings() if timings is None else timings
    candidates = make_configs(configs)
    if batches is None and any(config.batch_covariate for config in candidates):
        msg = "autoencoder setting batch_covariate=True needs each cell's batch: pass batch_key."
        raise ValueError(msg)
    groups = None if batches is None else np.asarray(batches.codes)
    n_groups = 0 if batches is None else len(batches.levels)
    # the candidates that leave ``posterior`` to its default: the best of them is also tried with it switched
    raw = DEFAULT_CONFIGS if configs is None else configs
    open_posterior = [j for j, config in enumerate(raw) if "posterior" not in config]
    used = min(n_splits, len(splits))
    seeds = [int(s) for s in rng.integers(2**31, size=used + 1)]
    halves = [_Half.of(splits, i, counts, device, groups=groups, n_groups=n_groups) for i in range(used)]
    main = distributed.is_main_process()
    if progress or logger.isEnabledFor(logging.INFO):
        seconds = _timed_pass(halves[0], candidates, depth_ratio=splits.depth_ratio, device=device, seed=seeds[-1])
        if main:
            switches = bool(open_posterior) + (batches is not None)
            _log_estimate(seconds, candidates, switches, n_splits=used, shape=halves[0].train_counts.shape)
    bar = tqdm(
        total=used * (len(candidates) + bool(open_posterior) + (batches is not None)),
        desc="autoencoder search",
        disable=not progress or not main,
    )

    def shown(config, i: int):
        """The progress callback of ``config``'s training on split ``i``."""
        return _show_epoch(bar, f"{config_label(config)}, split {i + 1}/{used}", config.max_epochs)

    race = [
        [half.trainer(config, seeds[i], shown(config, i)) for i, half in enumerate(halves)] for config in candidates
    ]
    _race(race)
    scores = [_score(config, runs, halves, timings, bar) for config, runs in zip(candidates, race, strict=True)]

    def switch(among: list[int], setting: str) -> None:
        """Train the best of ``among`` with ``setting`` switched, raced against it, as one more candidate."""
        leader = among[int(np.argmin([scores[j].mean_loss for j in among]))]
        switched = replace(candidates[leader], **{setting: not getattr(candidates[leader], setting)})
        if switched in candidates:
            return
        runs = [half.trainer(switched, seeds[i], shown(switched, i)) for i, half in enumerate(halves)]
        _race([runs], leader=race[leader])
        candidates.append(switched)
        race.append(runs)
        scores.append(_score(switched, runs, halves, timings, bar))

    if open_posterior:
        switch(open_posterior, "posterior")
    if batches is not None:
        switch(list(range(len(candidates))), "batch_covariate")
    bar.close()
    choice = _choice(candidates, scores)
    config = candidates[choice["best"]]
    record = None if batches is None else _batches_record(batches, candidates, scores, config)
    logger.info(
        "autoencoder %s chosen: %d epochs, %s inference, shape scale %g",
        config_label(config),
        choice["epochs"],
        choice["mode"],
        choice["shape_scale"],
    )
    genes = np.flatnonzero(np.asarray(counts.sum(axis=0)).ravel() > 0)
    split_model = scores[choice["best"]].models[0]
    refit_epochs = 0
    if refit == "none" and np.array_equal(halves[0].genes, genes):
        model, batch_size = split_model, config.batch_size
    else:
        init, refit_config, refit_epochs = None, config, choice["epochs"]
        if refit == "continue":
            init = split_model.widened(np.searchsorted(genes, halves[0].genes), len(genes))
            refit_config = replace(config, learning_rate=config.learning_rate * REFIT_LEARNING_RATE)
            refit_epochs = max(1, int(np.ceil(REFIT_EPOCHS * choice["epochs"])))
        with timings.step("autoencoder.refit"):
            final = train(
                counts[:, genes],
                refit_config,
                epochs=refit_epochs,
                device=device,
                seed=seeds[-1],
                progress=progress and main,
                groups=groups,
                n_groups=n_groups or None,
                init=init,
            )
        model, batch_size = final.model, final.batch_size
    return AutoencoderSelection(
        configs=candidates,
        **choice,
        model=model,
        refit=("afresh" if refit == "none" else refit) if refit_epochs else "none",
        refit_epochs=refit_epochs,
        counts=counts,
        genes=genes,
        device=str(device),
        seed=seeds[-1],
        batch_size=batch_size,
        world_size=distributed.world_size(),
        groups=groups if config.batch_covariate else None,
        n_groups=n_groups if config.batch_covariate else 0,
        reference=batches.reference if batches is not None and config.batch_covariate else None,
        batches=record,
    )


def _batches_record(batches: Batches, candidates: list, scores: list, chosen) -> dict:
    """The comparison with and without the batch covariate: the best held-out loss and candidate of each side."""
    record = {"key": batches.key, "levels": np.asarray(batches.levels, dtype=str)}
    for side, flag in (("with", True), ("without", False)):
        sides = [j for j, config in enumerate(candidates) if config.batch_covariate == flag]
        if sides:
            best = min(sides, key=lambda j: scores[j].mean_loss)
            record[f"loss_{side}"] = scores[best].mean_loss
            record[f"config_{side}"] = config_label(candidates[best])
    record["compared"] = "loss_with" in record and "loss_without" in record
    record["used"] = bool(chosen.batch_covariate)
    if batches.reference is not None:
        record["reference"] = str(batches.levels[batches.reference])
        record["transformed"] = record["used"]
    return record


def select(
    counts: sparse.csr_matrix,
    *,
    splits: Splits,
    options: AutoencoderOptions,
    device: str | None = None,
    rng: np.random.Generator,
    progress: bool = False,
    timings: Timings | None = None,
    batches: Batches | None = None,
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
        timings=timings,
        batches=batches,
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
    """Seconds of one training epoch, and of the scoring after training, of each candidate on ``half``.

    Each candidate is trained for two epochs on at most :data:`_TIMED_CELLS` cells of the first split and scored as
    the search scores it (both inference modes, every shape factor); the second epoch and the scoring are timed
    (the first epoch pays for the start) and scaled to the cells of an epoch (at most the candidate's
    ``epoch_cells``) and to the cells that score. The networks are thrown away, and the search's results are
    unchanged (training and scoring draw from their own seeded streams).
    """
    import torch

    from .data import CsrBatches
    from .train import heldout_loss, train

    train_part, held_part = half.train_counts[:_TIMED_CELLS], half.heldout_counts[:_TIMED_CELLS]
    groups = None if half.groups is None else half.groups[:_TIMED_CELLS]
    n_groups = half.n_groups or None
    n, sampled = half.train_counts.shape[0], train_part.shape[0]
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
            groups=groups,
            n_groups=n_groups,
        )
        start = time.perf_counter()
        data = CsrBatches(train_part, device, groups=groups, n_groups=n_groups)
        held = CsrBatches(held_part, device)
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
        epoch_cells = n if config.epoch_cells is None else min(n, config.epoch_cells)
        scored = n if half.scored is None else len(half.scored)
        seconds.append((epoch * epoch_cells / sampled, (time.perf_counter() - start) * scored / sampled))
    return seconds


def _log_estimate(
    seconds: list[tuple[float, float]],
    candidates: list,
    switches: int,
    *,
    n_splits: int,
    shape: tuple[int, int],
) -> float:
    """Log the estimated longest duration of the search (a warning above :data:`LONG_SEARCH_S`); return it.

    Every training of the search runs ``max_epochs`` at most and is then scored, and the final training on the full
    counts runs as many epochs at most; each of the ``switches`` candidates trained with a setting switched (the
    posterior, the batch covariate) is counted at the mean cost of the candidates.
    """
    training = [epoch * config.max_epochs for (epoch, _), config in zip(seconds, candidates, strict=True)]
    cost = [t + scoring for t, (_, scoring) in zip(training, seconds, strict=True)]
    total = sum(cost) * n_splits
    trainings = len(candidates) * n_splits
    total += switches * float(np.mean(cost)) * n_splits
    trainings += switches * n_splits
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
    scored: np.ndarray | None = None  # the cells whose held-out molecules score (Splits.scored_rows); None: all
    groups: np.ndarray | None = None  # each cell's batch (codes)
    n_groups: int = 0

    @classmethod
    def of(cls, splits: Splits, i: int, counts: sparse.csr_matrix, device, *, groups=None, n_groups: int = 0) -> _Half:
        from .data import CsrBatches

        n, g = counts.shape
        train_half, heldout_half = splits.get(i, counts)
        genes = np.flatnonzero(np.asarray(train_half.sum(axis=0)).ravel() > 0)
        scored = splits.scored_rows(i, n)
        scoring = heldout_half if scored is None else heldout_half[scored]
        unseen = float(scoring.sum()) - float(scoring[:, genes].sum())
        train_half, heldout_half = train_half[:, genes], heldout_half[:, genes]
        return cls(
            CsrBatches(train_half, device, groups=groups, n_groups=n_groups or None),
            CsrBatches(heldout_half, device),
            train_half,
            heldout_half,
            splits.depth_ratio,
            len(genes) / g,
            genes,
            unseen / (splits.n_scored(n) * g),
            scored,
            groups,
            n_groups,
        )

    def trainer(self, config, seed: int, on_epoch=None):
        """A :class:`~scn2s.autoencoder.train.Trainer` of ``config`` on this half; ``on_epoch`` shows its epochs."""
        from .train import Trainer

        trainer = Trainer(
            self.train_counts,
            config,
            heldout=self.heldout_counts,
            depth_ratio=self.depth_ratio,
            device=self.train.device,
            seed=seed,
            batches=(self.train, self.heldout),
        )
        trainer.on_epoch = on_epoch
        return trainer

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
                trainer.advance(end - trainer.epoch, on_epoch=trainer.on_epoch)
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

    from .train import heldout_loss

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
                    rows=half.scored,
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


def _choice(candidates: list, scores: list[_Score]) -> dict:
    """The candidate, inference mode and shape scale of lowest mean held-out loss, its mean best epoch, the losses.

    The fields of :class:`AutoencoderSelection` that the search decides.
    """
    losses_by_scale = np.stack([score.by_mode for score in scores], axis=2)  # (modes, splits, candidates, scales)
    scale_index = np.argmin(losses_by_scale.mean(axis=1), axis=-1)  # (modes, candidates)
    full, replicas = np.take_along_axis(losses_by_scale, scale_index[:, None, :, None], axis=-1)[..., 0]
    best_epochs = np.stack([score.best_epochs for score in scores], axis=1)
    n_splits = len(scores[0].heldout_curves)
    best = int(np.argmin(np.minimum(full, replicas).mean(axis=0)))
    mode = "replicas" if replicas[:, best].mean() < full[:, best].mean() else "full"
    shape_scale = float(SHAPE_SCALES[scale_index[int(mode == "replicas"), best]]) if candidates[best].posterior else 1.0
    return {
        "losses_full": full,
        "losses_replicas": replicas,
        "best_epochs": best_epochs.astype(int),
        "shape_scales": np.array(SHAPE_SCALES),
        "losses_by_scale": losses_by_scale,
        "shape_scale": shape_scale,
        "heldout_curves": [[score.heldout_curves[i] for score in scores] for i in range(n_splits)],
        "train_curves": [[score.train_curves[i] for score in scores] for i in range(n_splits)],
        "best": best,
        "mode": mode,
        "epochs": max(1, int(np.round(best_epochs[:, best].mean()))),
    }
