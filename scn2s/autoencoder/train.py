"""Cross-molecule training of the count autoencoder, early stopping on held-out molecules, inference.

Training follows Noise2Self for counts: every epoch each cell's training molecules are split afresh into an
input part (a fraction drawn for the cell from ``input_range``, or ``input_fraction`` for all) and a target part,
and the loss is the Poisson (or negative binomial) negative log-likelihood of the target given the rates predicted
from the input, rescaled to the target's depth. The network never sees the molecules it is asked to predict.
Molecules held out once, before training (``heldout``), are never input or target: they only score epochs and
hyperparameters, with the cross-molecule loss of :mod:`scn2s.loss`.

While a ``torch.distributed`` process group of more than one process is initialised (``torchrun``), training and
the held-out loss are shared between the ranks; see :mod:`scn2s.autoencoder.distributed`. Every rank must
then call :func:`train` and :func:`heldout_loss` with the same arguments.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy import sparse
from tqdm.auto import tqdm

from ..loss import sqrt_mean_table
from . import distributed
from .data import CsrBatches, input_transform, nonzero_entries, thin
from .module import CountAutoencoder

__all__ = [
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "encode",
    "heldout_loss",
    "predict_posterior",
    "predict_rates",
    "resolve_device",
    "train",
]

logger = logging.getLogger(__name__)

InferenceMode = Literal["full", "replicas"]


@dataclass(frozen=True)
class TrainConfig:
    """Architecture and optimisation settings of one autoencoder candidate.

    ``input_fraction`` is the depth of the thinned replicas at inference and, with ``input_range=None``, of every
    training input. ``input_range=(low, high)``: every epoch, each cell's training molecules are split at a fraction
    drawn afresh, uniformly in ``[low, high]``, so the network learns from inputs of many depths, closer to the
    deeper inputs it is given at inference; the loss is rescaled by each cell's own ``(1 - fraction) / fraction``.

    An epoch is one pass over the cells, or ``epoch_cells`` cells of it if there are more (the next epoch goes on
    through the same permutation): ``max_epochs``, ``patience`` and the held-out evaluations that end each epoch
    count in optimiser steps on large data, not in passes. The evaluations of early stopping score the held-out
    molecules of a fixed random subset of ``heldout_cells`` cells when there are more (``None``: all cells,
    ``epoch_cells=None``: an epoch is always a whole pass); the search scores its candidates on the held-out
    molecules of the cells of :meth:`scn2s.select.Splits.scored_rows` (at most 32,768).

    ``batch_covariate=True``: the decoder is told each cell's batch (``batch_key``; one-hot beside the code), so that
    shifts between batches need not be carried by the code. The training data must then hold each cell's batch.
    """

    hidden: int = 256
    bottleneck: int = 32
    dropout: float = 0.1
    likelihood: Literal["poisson", "nb"] = "poisson"
    max_epochs: int = 150
    patience: int = 15
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    input_fraction: float = 0.5
    input_range: tuple[float, float] | None = (0.1, 0.9)
    n_replicas: int = 8
    posterior: bool = True
    shape_learning_rate: float = 0.05
    epoch_cells: int | None = 16384
    heldout_cells: int | None = 8192
    batch_covariate: bool = False

    def __post_init__(self) -> None:
        """Check every setting; a message names the setting, what it must be and what it got."""

        def integer(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < minimum:
                what = {"hidden": "the width of the hidden layer, "}.get(name, "")
                msg = f"autoencoder setting {name} must be {what}an integer >= {minimum}, got {value!r}."
                raise ValueError(msg)

        def number(name: str, low: float, high: float, *, low_open: bool, high_open: bool) -> None:
            value = getattr(self, name)
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            ok = ok and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
            if not ok:
                interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
                msg = f"autoencoder setting {name} must be a number in {interval}, got {value!r}."
                raise ValueError(msg)

        for name, minimum in (("hidden", 1), ("bottleneck", 1), ("max_epochs", 1), ("patience", 1)):
            integer(name, minimum)
        integer("batch_size", 1)
        integer("n_replicas", 1)
        number("dropout", 0, 1, low_open=False, high_open=True)
        number("learning_rate", 0, np.inf, low_open=True, high_open=True)
        number("weight_decay", 0, np.inf, low_open=False, high_open=True)
        number("shape_learning_rate", 0, np.inf, low_open=False, high_open=True)
        number("input_fraction", 0, 1, low_open=True, high_open=True)
        if self.likelihood not in ("poisson", "nb"):
            msg = f"autoencoder setting likelihood must be 'poisson' or 'nb', got {self.likelihood!r}."
            raise ValueError(msg)
        for name in ("posterior", "batch_covariate"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                msg = f"autoencoder setting {name} must be True or False, got {getattr(self, name)!r}."
                raise ValueError(msg)
        if self.input_range is None:
            return
        try:
            values = tuple(float(v) for v in self.input_range)
        except (TypeError, ValueError):
            values = ()
        if len(values) != 2 or not 0 < values[0] <= values[1] < 1:
            msg = f"input_range must be (low, high) with 0 < low <= high < 1, got {self.input_range!r}."
            raise ValueError(msg)
        object.__setattr__(self, "input_range", values)

    @property
    def input_bounds(self) -> tuple[float, float]:
        """The lowest and highest fraction of a cell's training molecules in its inputs."""
        return (self.input_fraction,) * 2 if self.input_range is None else self.input_range


@dataclass
class TrainResult:
    """A trained network with its learning curves."""

    model: CountAutoencoder
    best_epoch: int
    train_loss: list[float] = field(default_factory=list)
    heldout_loss: list[float] = field(default_factory=list)
    batch_size: int = 0
    step_seconds: float = 0.0  # wall time of the optimiser steps (with the batches' thinning)
    heldout_seconds: float = 0.0  # wall time of the held-out evaluations (with the copies of the best state)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def sqrt_poisson_mean_torch(rate: torch.Tensor) -> torch.Tensor:
    """Torch version of :func:`scn2s.loss.sqrt_poisson_mean` (same table, evenly spaced in log rate)."""
    return sqrt_poisson_mean_of_log(torch.log(rate), rate)


def sqrt_poisson_mean_of_log(log_rate: torch.Tensor, rate: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`sqrt_poisson_mean_torch` of the rates whose logs are ``log_rate`` (``rate``: the rates, if at hand).

    The table is read at the log rates directly; the rates themselves are needed (and made, if not given) only where
    some lie beyond the table's ends.
    """
    log_m, slope, start, step, lam_min, lam_max = _sqrt_mean_tables(log_rate.device)
    last = len(log_m) - 1
    position = ((log_rate - start) / step).clamp_(0, last)
    idx = position.int().clamp_(0, last)  # the floor (the positions are not negative); NaN stays in the table
    flat = idx.view(-1)
    out = position.sub_(idx).mul_(slope.index_select(0, flat).view_as(idx))
    out = torch.exp(out.add_(log_m.index_select(0, flat).view_as(idx)))
    lowest, highest = torch.stack(torch.aminmax(log_rate)).tolist()  # one synchronisation on a GPU
    if lowest < np.log(lam_min) or highest > np.log(lam_max):
        rate = torch.exp(log_rate) if rate is None else rate
        root = torch.sqrt(rate.clamp_min(lam_max))
        out = torch.where(rate > lam_max, root - 1 / (8 * root), out)
        out = torch.where(rate < lam_min, rate.clamp_min(0), out)
    return out


@functools.cache
def _sqrt_mean_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float, float, float, float]:
    """The table of :func:`scn2s.loss.sqrt_mean_table` on ``device``: log m, its slopes, the grid and its ends."""
    table_log_lam, table_log_m = sqrt_mean_table()
    log_m = torch.as_tensor(table_log_m, dtype=torch.float32, device=device)
    slope = torch.cat([torch.diff(log_m), log_m.new_zeros(1)])  # the last entry: the table's end, read as it is
    start, step = float(table_log_lam[0]), float(table_log_lam[1] - table_log_lam[0])
    return log_m, slope, start, step, float(np.exp(table_log_lam[0])), float(np.exp(table_log_lam[-1]))


def _nll(
    log_freq: torch.Tensor, log_scale: torch.Tensor, target: torch.Tensor, model: CountAutoencoder
) -> torch.Tensor:
    return _nll_per_cell(log_freq, log_scale, target, model).mean()


def _nll_per_cell(
    log_freq: torch.Tensor, log_scale: torch.Tensor, target: torch.Tensor, model: CountAutoencoder
) -> torch.Tensor:
    log_rate = log_freq + log_scale
    if model.likelihood == "poisson":
        per_cell = (torch.exp(log_rate) - target * log_rate).sum(dim=1)
    else:
        theta = torch.exp(model.log_theta)
        log_theta_mu = torch.logaddexp(torch.log(theta), log_rate)
        per_cell = -(
            torch.lgamma(target + theta)
            - torch.lgamma(theta)
            - torch.lgamma(target + 1)
            + theta * (torch.log(theta) - log_theta_mu)
            + target * (log_rate - log_theta_mu)
        ).sum(dim=1)
    return per_cell


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.inference_mode()
def predict_rates(
    model: CountAutoencoder,
    data: CsrBatches,
    rows: np.ndarray,
    *,
    mode: InferenceMode = "full",
    input_fraction: float = 0.5,
    n_replicas: int = 8,
    shape_scale: float = 1.0,
    generator: torch.Generator | None = None,
    reference: int | None = None,
) -> torch.Tensor:
    """Expected counts of the given cells at their own depth.

    ``mode="full"`` feeds all of a cell's molecules (deeper than most training inputs); ``"replicas"``
    averages the predicted frequencies over ``n_replicas`` thinnings to ``input_fraction``. Either
    way the frequencies are scaled by the cell's full library size. With a posterior, the network's frequencies
    are the prior and all the cell's molecules update it, with the learned shapes times ``shape_scale``.

    ``reference`` (a network with batches, ``data`` with each cell's batch): every cell as if measured in that
    batch. Each cell's output frequencies are multiplied by the ratio of the network's frequencies decoded in the
    reference batch to those in its own (from the same code), then normalised again, so that the cell keeps what
    its own molecules say and loses its batch's shift.
    """
    return _predict(model, data, rows, mode, input_fraction, n_replicas, shape_scale, generator, reference)[0]


@torch.inference_mode()
def predict_posterior(
    model: CountAutoencoder,
    data: CsrBatches,
    rows: np.ndarray,
    *,
    mode: InferenceMode = "full",
    input_fraction: float = 0.5,
    n_replicas: int = 8,
    shape_scale: float = 1.0,
    generator: torch.Generator | None = None,
    reference: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Posterior means (as :func:`predict_rates`) and posterior standard deviations of the cells' expected counts.

    Given the prior of shape :math:`a_g` (the learned shape times ``shape_scale``) and a cell's count :math:`x_{ig}`,
    the posterior of the expected count is a gamma distribution of shape :math:`x_{ig} + a_g` whose mean is the
    output :math:`\mu_{ig}` (after the normalisation over genes, a common factor per cell), of variance
    :math:`\mu_{ig}^2 / (x_{ig} + a_g)`. That posterior takes the network's prior as exact, but the prior is made
    from the cell's own molecules and moves with their sampling noise. The variance therefore adds the spread of
    that noise: the variance (over ``n_replicas`` thinnings of the cell's molecules to ``input_fraction``) of the
    posterior means that each thinned replica's prior gives. In ``mode="replicas"`` these are the replicas the mean
    averages; in ``mode="full"`` they are drawn for the spread alone. With one replica there is no spread, and the
    standard deviation is the gamma posterior's, :math:`\mu_{ig} / \sqrt{x_{ig} + a_g}`. ``reference``: as
    :func:`predict_rates`; each replica's output is moved by its own ratio.

    Raises
    ------
    ValueError
        If the network has no posterior (``posterior=False``).
    """
    if model.log_shape is None:
        msg = "The network was trained without a posterior (posterior=False): it has no posterior standard deviation."
        raise ValueError(msg)
    spread = _Spread()
    rates, counts = _predict(
        model, data, rows, mode, input_fraction, n_replicas, shape_scale, generator, reference, spread=spread
    )
    variance = rates.square().div_(counts + torch.exp(model.log_shape.float()) * shape_scale)
    if spread.n > 1:
        variance += spread.variance()
    return rates, variance.sqrt_()


class _Spread:
    """The running mean and unbiased variance (Welford's updates) of tensors of one shape, added one at a time."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def add(self, value: torch.Tensor) -> None:
        self.n += 1
        if self.mean is None:
            self.mean, self.squares = value.clone(), torch.zeros_like(value)
            return
        delta = value - self.mean
        self.mean += delta / self.n
        self.squares += delta * (value - self.mean)

    def variance(self) -> torch.Tensor:
        return self.squares / (self.n - 1)


def _predict(
    model, data, rows, mode, input_fraction, n_replicas, shape_scale, generator, reference, spread=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cells' expected counts (as :func:`predict_rates`) and their counts, dense on the device.

    ``spread`` (a :class:`_Spread`): each thinned replica's own expected counts are added to it.
    """
    counts = data.dense(rows)
    library = counts.sum(dim=1, keepdim=True)

    def each(log_freq: torch.Tensor, shift: torch.Tensor | None) -> None:
        spread.add(_rates(model, log_freq, counts, library, shape_scale, shift))

    log_freq, shift = _network_log_frequencies(
        model,
        counts,
        data.one_hot(rows),
        data.one_hot(rows, reference=reference) if reference is not None else None,
        mode=mode,
        input_fraction=input_fraction,
        n_replicas=n_replicas,
        generator=generator,
        each=None if spread is None else each,
    )
    return _rates(model, log_freq, counts, library, shape_scale, shift), counts


@torch.inference_mode()
def encode(model: CountAutoencoder, data: CsrBatches, rows: np.ndarray) -> torch.Tensor:
    """The network's code (the bottleneck) of the cells, from all their molecules (``len(rows) x bottleneck``).

    A network with batches takes each cell's batch from ``data``.
    """
    model.eval()
    counts = data.dense(rows)
    with _autocast(counts.device):
        return model.encode(input_transform(counts)[0], data.one_hot(rows)).float()


def _network_log_frequencies(
    model: CountAutoencoder,
    counts: torch.Tensor,
    batch: torch.Tensor | None,
    reference: torch.Tensor | None = None,
    *,
    mode: InferenceMode,
    input_fraction: float,
    n_replicas: int,
    generator: torch.Generator | None,
    each: Callable[[torch.Tensor, torch.Tensor | None], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The network's log frequencies of the cells: from all their molecules, or of the mean over thinned replicas.

    ``batch``: the cells' batches (one-hot) for a network with batches. With ``reference`` (one-hot, every cell in
    the reference batch), also the log ratio of the frequencies decoded in the reference batch to those in the
    cell's own, from the same codes; ``None`` otherwise. ``each``: called with every thinned replica's log
    frequencies and log ratio (or ``None``); in ``mode="full"`` the replicas are drawn for it, after the full input.
    """
    model.eval()
    with _autocast(counts.device):
        moves = reference is not None and model.n_batches
        if mode == "full":
            code = model.encode(input_transform(counts)[0], batch)
            log_freq = model.decode(code, batch)
            shift = model.decode(code, reference) - log_freq if moves else None
            if each is not None:
                for log_freq_r, log_moved_r in _replicas(
                    model, counts, batch, reference, input_fraction, n_replicas, generator
                ):
                    each(log_freq_r, None if log_moved_r is None else log_moved_r - log_freq_r)
            return log_freq, shift
        freq = torch.zeros_like(counts)
        moved = torch.zeros_like(counts) if moves else None
        for log_freq_r, log_moved_r in _replicas(
            model, counts, batch, reference, input_fraction, n_replicas, generator
        ):
            freq += torch.exp(log_freq_r)
            if moved is not None:
                moved += torch.exp(log_moved_r)
            if each is not None:
                each(log_freq_r, None if log_moved_r is None else log_moved_r - log_freq_r)
        log_freq = torch.log(freq / n_replicas)
        return log_freq, None if moved is None else torch.log(moved / n_replicas) - log_freq


def _replicas(model, counts, batch, reference, input_fraction, n_replicas, generator):
    """The network's log frequencies of each of ``n_replicas`` thinnings of ``counts`` to ``input_fraction``.

    Each comes with those decoded in the reference batch from the same code, for a network with batches and a
    ``reference``; else with ``None``.
    """
    entries = nonzero_entries(counts)
    for _ in range(n_replicas):
        inputs = thin(counts, input_fraction, generator, entries=entries)[0]
        code = model.encode(input_transform(inputs)[0], batch)
        log_freq = model.decode(code, batch)
        yield log_freq, model.decode(code, reference) if reference is not None and model.n_batches else None


def _rates(
    model: CountAutoencoder,
    log_freq: torch.Tensor,
    counts: torch.Tensor,
    library: torch.Tensor,
    shape_scale: float,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Expected counts: the network's frequencies, or the posterior's given all the cell's molecules.

    ``shift``: log ratios of frequencies (a reference batch's over the cell's own) applied to the output before it
    is normalised again.
    """
    if model.log_shape is not None:
        log_freq = model.posterior(log_freq, counts, shape_scale, library=library)
    if shift is not None:
        log_freq = torch.log_softmax(log_freq + shift, dim=-1)
    return torch.exp(log_freq) * library


EVAL_ROWS = {"cpu": 256}
"""Cells per pass of the held-out loss (:func:`heldout_loss`), by device type; 1024 on the others (CUDA)."""


@torch.inference_mode()
def heldout_loss(
    model: CountAutoencoder,
    data: CsrBatches,
    heldout: CsrBatches,
    depth_ratio: float,
    *,
    mode: InferenceMode = "full",
    input_fraction: float = 0.5,
    n_replicas: int = 8,
    shape_scales: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    rows: np.ndarray | None = None,
) -> float | np.ndarray:
    """Cross-molecule loss (:mod:`scn2s.loss`) of the network on held-out molecules, mean per entry.

    With ``shape_scales``, an array: the loss of the posterior with the learned shapes times each scale, from one
    pass of the network. ``rows``: score these cells only (default all). ``batch_size``: cells per pass (default
    :data:`EVAL_ROWS` of the device's type: on the CPU a batch's dense tensors then stay in the cache). Under
    ``torch.distributed``, each rank scores a contiguous share of the cells and the sum over the ranks is returned
    on every rank (the same number: added in rank order).
    """
    scales = (1.0,) if shape_scales is None else tuple(shape_scales)
    batch_size = EVAL_ROWS.get(data.device.type, 1024) if batch_size is None else batch_size
    total = np.zeros(len(scales))
    cells = np.arange(len(data)) if rows is None else np.asarray(rows)
    n_cells = len(cells)
    if distributed.is_distributed():
        cells = np.array_split(cells, distributed.world_size())[distributed.rank()]
    for start in range(0, len(cells), batch_size):
        batch = cells[start : start + batch_size]
        counts, target = data.dense(batch), torch.sqrt(heldout.dense(batch))
        library = counts.sum(dim=1, keepdim=True)
        log_scale = torch.log(library * depth_ratio)  # expected counts at the held-out half's depth
        log_freq, _ = _network_log_frequencies(
            model,
            counts,
            data.one_hot(batch),
            mode=mode,
            input_fraction=input_fraction,
            n_replicas=n_replicas,
            generator=generator,
        )
        if model.log_shape is None:
            outputs = [log_freq for _ in scales]
        else:
            outputs = model.posteriors(log_freq, counts, library, scales)
        for k, output in enumerate(outputs):
            diff = target.sub(sqrt_poisson_mean_of_log(output + log_scale)).view(-1)
            total[k] += float(torch.linalg.vecdot(diff, diff))
    if distributed.is_distributed():
        total = distributed.gather(total).sum(axis=0)
    losses = total / (n_cells * data.shape[1])
    return float(losses[0]) if shape_scales is None else losses


def train(
    counts: sparse.csr_matrix,
    config: TrainConfig,
    *,
    heldout: sparse.csr_matrix | None = None,
    depth_ratio: float = 1.0,
    epochs: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = False,
    on_epoch: Callable[[int, float, float], None] | None = None,
    groups: np.ndarray | None = None,
    n_groups: int | None = None,
    init: CountAutoencoder | None = None,
) -> TrainResult:
    """Train a :class:`CountAutoencoder` across molecules of ``counts``.

    Parameters
    ----------
    counts
        Training molecules (cells x genes, CSR). The only data the network learns from.
    config
        Architecture and optimisation settings.
    heldout
        Molecules held out once (same shape), for early stopping: the network state of the epoch with the
        lowest held-out loss is returned. ``None``: train ``epochs`` epochs and return the last state.
    depth_ratio
        Expected depth of ``heldout`` over that of ``counts``.
    epochs
        Number of epochs without ``heldout`` (default ``config.max_epochs``).
    device
        Torch device; ``None`` picks CUDA when available.
    seed
        Seeds the batch order, the thinning and the weights. On CPU the same seed gives the same network. Under
        ``torch.distributed`` the batch order and the initial weights are the same on every rank; the thinning
        and dropout of each rank have streams of their own (:func:`~.distributed.rank_seed`).
    progress
        Show a progress bar over epochs.
    on_epoch
        Called as ``on_epoch(epoch, train_loss, heldout_loss)`` after each epoch.
    groups
        Each cell's batch, codes ``0..n_groups-1`` (needed with ``config.batch_covariate``).
    n_groups
        Number of batches (default: the largest code plus one).
    init
        Start from a copy of this network's weights (of the same architecture and genes) instead of new ones.

    Returns
    -------
    The trained network, the best epoch (1-based) and the per-epoch losses. Under ``torch.distributed``: the same
    on every rank (the network of rank 0 is broadcast at the end).

    Raises
    ------
    RuntimeError
        Under ``torch.distributed``, if the training or held-out molecules or the seed differ between ranks.
    """
    trainer = Trainer(
        counts,
        config,
        heldout=heldout,
        depth_ratio=depth_ratio,
        device=device,
        seed=seed,
        groups=groups,
        n_groups=n_groups,
        init=init,
    )
    n_epochs = config.max_epochs if heldout is not None or epochs is None else epochs
    show = progress and distributed.is_main_process()
    for _ in tqdm(range(n_epochs), desc="training", disable=not show, leave=False):
        if trainer.stopped:
            break
        trainer.advance(1, on_epoch=on_epoch)
    return trainer.finish()


class Trainer:
    """One network in training, advanced a few epochs at a time, with early stopping on held-out molecules.

    :func:`train` runs one to the end; the autoencoder search advances several in turns, to stop those that cannot
    catch the leader. Each trainer keeps its own random streams (batch order, thinning, weights and dropout), so its
    network after ``k`` epochs is the same however the turns fell, and the same as :func:`train`'s.

    Parameters are those of :func:`train`, and ``batches``: ``counts`` and ``heldout`` already on the device, as
    :class:`~.data.CsrBatches` (trainers of one split share them; the cells' batches are then those of the first).
    ``max_epochs`` and ``patience`` of ``config`` stop it (:attr:`stopped`) when there are held-out molecules;
    without, it runs as many epochs as it is advanced.
    """

    def __init__(
        self,
        counts: sparse.csr_matrix,
        config: TrainConfig,
        *,
        heldout: sparse.csr_matrix | None = None,
        depth_ratio: float = 1.0,
        device: str | torch.device | None = None,
        seed: int = 0,
        batches: tuple[CsrBatches, CsrBatches | None] | None = None,
        groups: np.ndarray | None = None,
        n_groups: int | None = None,
        init: CountAutoencoder | None = None,
    ) -> None:
        device = resolve_device(device)
        shared = distributed.is_distributed()
        if shared:
            # the held-out molecules come from the same seeds on every rank: make sure of it before any training
            fingerprints = [
                distributed.fingerprint(counts),
                -1 if heldout is None else distributed.fingerprint(heldout),
            ]
            distributed.check_same("training molecules, held-out molecules or seeds", [*fingerprints, seed])
        self.config, self.depth_ratio, self.seed = config, depth_ratio, seed
        if batches is None:
            data = CsrBatches(counts, device, groups=groups, n_groups=n_groups)
            batches = data, CsrBatches(heldout, device) if heldout is not None else None
        self.data, self.held = batches
        if config.batch_covariate and self.data.n_groups < 1:
            msg = "autoencoder setting batch_covariate=True needs each cell's batch (batch_key)."
            raise ValueError(msg)
        self.epoch = 0
        self._order_rng = np.random.default_rng(seed)  # the same on every rank: the same permutation each epoch
        self._queue = np.zeros(0, dtype=np.int64)  # the rest of the permutation when an epoch is part of a pass
        n = len(self.data)
        self._heldout_rows = None
        if config.heldout_cells is not None and n > config.heldout_cells:
            chosen = np.random.default_rng([seed, 1]).choice(n, config.heldout_cells, replace=False)
            self._heldout_rows = np.sort(chosen)
        self._generator = torch.Generator(device=device).manual_seed(distributed.rank_seed(seed))
        self._devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=self._devices):
            torch.manual_seed(seed)
            model = CountAutoencoder(
                counts.shape[1],
                hidden=config.hidden,
                bottleneck=config.bottleneck,
                dropout=config.dropout,
                likelihood=config.likelihood,
                posterior=config.posterior,
                n_batches=self.data.n_groups if config.batch_covariate else 0,
            ).to(device)
            if init is not None:
                model.load_state_dict(init.state_dict())
            self._network = model
            if shared:
                torch.manual_seed(distributed.rank_seed(seed))  # dropout masks of each rank's own cells
                self._network = distributed.wrap(model, device)
            self._rng_states = _rng_states(self._devices)
        self._optimiser = _optimiser(model, config)
        self.result = TrainResult(model=model, best_epoch=0, batch_size=config.batch_size)
        self.best_loss, self._best_state, self._stale = np.inf, None, 0

    @property
    def stopped(self) -> bool:
        """Whether early stopping ended the training.

        After ``patience`` epochs without a better held-out loss, or ``max_epochs``; never without held-out molecules.
        """
        config = self.config
        return self.held is not None and (self._stale >= config.patience or self.epoch >= config.max_epochs)

    def advance(self, epochs: int, on_epoch: Callable[[int, float, float], None] | None = None) -> None:
        """Train up to ``epochs`` more epochs (fewer if it stops), each followed by its held-out loss.

        ``on_epoch(epoch, train_loss, heldout_loss)`` is called after each epoch.
        """
        result = self.result
        with torch.random.fork_rng(devices=self._devices):
            _set_rng_states(self._rng_states, self._devices)
            for _ in range(epochs):
                if self.stopped:
                    break
                self.epoch += 1
                began = time.perf_counter()
                config, data = self.config, self.data
                train_loss = _run_epoch(
                    self._network, self._optimiser, data, self._cells(), self._generator, config, result
                )
                result.step_seconds += time.perf_counter() - began
                loss = np.nan
                if self.held is not None:
                    began = time.perf_counter()
                    loss = heldout_loss(
                        result.model,
                        data,
                        self.held,
                        self.depth_ratio,
                        generator=self._generator,
                        rows=self._heldout_rows,
                    )
                    if loss < self.best_loss:
                        self.best_loss, self._stale, result.best_epoch = loss, 0, self.epoch
                        self._best_state = copy.deepcopy(result.model.state_dict())
                    else:
                        self._stale += 1
                    result.heldout_seconds += time.perf_counter() - began
                result.train_loss.append(train_loss)
                result.heldout_loss.append(loss)
                if on_epoch is not None:
                    on_epoch(self.epoch, train_loss, loss)
            self._rng_states = _rng_states(self._devices)

    def _cells(self) -> np.ndarray:
        """The cells of the next epoch, in order: a permutation, or the next ``epoch_cells`` of one."""
        n, limit = len(self.data), self.config.epoch_cells
        if limit is None or limit >= n:
            return self._order_rng.permutation(n)
        parts, need = [], limit
        while need > 0:
            if not len(self._queue):
                self._queue = self._order_rng.permutation(n)
            parts.append(self._queue[:need])
            self._queue = self._queue[need:]
            need -= len(parts[-1])
        return np.concatenate(parts)

    def finish(self) -> TrainResult:
        """The network at its best epoch (the last one without held-out molecules), the same on every rank."""
        result = self.result
        if self._best_state is not None:
            result.model.load_state_dict(self._best_state)
        else:
            result.best_epoch = self.epoch
        distributed.broadcast_module(result.model)
        result.model.eval()
        return result


def _rng_states(devices: list[torch.device]) -> list[torch.Tensor]:
    """The global torch random states (CPU, then each CUDA device): weights and dropout draw from them."""
    return [torch.get_rng_state(), *(torch.cuda.get_rng_state(device) for device in devices)]


def _set_rng_states(states: list[torch.Tensor], devices: list[torch.device]) -> None:
    torch.set_rng_state(states[0])
    for state, device in zip(states[1:], devices, strict=True):
        torch.cuda.set_rng_state(state, device)


def _optimiser(model: CountAutoencoder, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, torch's fused kernel; the per-gene prior shapes and batch efficiencies take larger steps.

    Those (numbers per gene, on a log scale) take ``shape_learning_rate``, undecayed.
    """
    per_gene = [p for p in (model.log_shape, model.batch_logits) if p is not None]
    network = [p for p in model.parameters() if all(p is not q for q in per_gene)]
    groups = [{"params": network}]
    if per_gene:
        groups.append({"params": per_gene, "lr": config.shape_learning_rate, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)


def _run_epoch(
    model: CountAutoencoder | torch.nn.parallel.DistributedDataParallel,
    optimiser: torch.optim.Optimizer,
    data: CsrBatches,
    order: np.ndarray,
    generator: torch.Generator,
    config: TrainConfig,
    result: TrainResult,
) -> float:
    """One epoch over the cells of ``order`` with fresh input/target splits; backs off the batch size on CUDA OOM.

    ``model`` wrapped in DistributedDataParallel: each batch is shared between the ranks, and a CUDA OOM is raised
    (a retry on one rank alone would leave the others waiting).
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return _shared_epoch_pass(model, optimiser, data, order, generator, config, result.batch_size)
    while True:
        try:
            return _epoch_pass(model, optimiser, data, order, generator, config, result.batch_size)
        except torch.cuda.OutOfMemoryError:
            if result.batch_size <= 1:
                raise
            result.batch_size //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            logger.warning("GPU out of memory: retrying the epoch with batch size %d", result.batch_size)


def _split_batch(
    data: CsrBatches, rows: np.ndarray, config: TrainConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
    """A batch's input and target molecules, and the log of each cell's target-over-input depth.

    The log ratio is one number for a fixed ``input_fraction``, a ``(cells, 1)`` tensor with ``input_range``.
    """
    if config.input_range is None:
        inputs, target = data.thinned(rows, config.input_fraction, generator)
        return inputs, target, float(np.log((1 - config.input_fraction) / config.input_fraction))
    low, high = config.input_range
    fraction = low + (high - low) * torch.rand(len(rows), generator=generator, device=data.device)
    inputs, target = data.thinned(rows, fraction, generator)
    return inputs, target, (torch.log1p(-fraction) - torch.log(fraction))[:, None]


def _epoch_pass(model, optimiser, data, order, generator, config, batch_size) -> float:
    model.train()
    total, n = 0.0, 0
    for rows in data.batches(batch_size, order=order):
        inputs, target, log_ratio = _split_batch(data, rows, config, generator)
        x, library = input_transform(inputs)
        keep = library[:, 0] > 0
        if not bool(keep.any()):
            continue
        batch = data.one_hot(rows)
        with _autocast(data.device):
            log_freq = model(x[keep], inputs[keep], None if batch is None else batch[keep])
        loss = _nll(log_freq, (torch.log(library) + log_ratio)[keep], target[keep], model)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        total += float(loss.detach()) * int(keep.sum())
        n += int(keep.sum())
    return total / max(n, 1) / data.shape[1]


def _shared_epoch_pass(network, optimiser, data, order, generator, config, batch_size) -> float:
    """One epoch under DistributedDataParallel: each batch of the permutation is shared out between the ranks.

    Every rank runs the same number of steps (one per batch). A rank's loss is its cells' summed NLL times
    ``world_size / cells in the whole batch``, so the gradient averaged by DDP is that of the batch's mean NLL, as
    in a single process. A rank with no cell in a batch still steps (zero loss), so the collectives stay matched.
    """
    model = network.module
    world = distributed.world_size()
    network.train()
    total, n = 0.0, 0
    for batch in data.batches(batch_size, order=order):
        rows = distributed.shard(batch)
        inputs, target, log_ratio = _split_batch(data, rows, config, generator)
        x, library = input_transform(inputs)
        keep = library[:, 0] > 0
        kept = int(distributed.gather(int(keep.sum())).sum())
        if kept == 0:
            continue
        batch = data.one_hot(rows)
        with _autocast(data.device):
            log_freq = network(x[keep], inputs[keep], None if batch is None else batch[keep])
        per_cell = _nll_per_cell(log_freq, (torch.log(library) + log_ratio)[keep], target[keep], model)
        loss = per_cell.sum() * (world / kept)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        total += float(per_cell.detach().sum())
        n += kept
    total = float(distributed.gather(total).sum())
    return total / max(n, 1) / data.shape[1]
