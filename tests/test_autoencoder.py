from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from scipy import sparse, stats

import scn2s
from scn2s._record import selection_curves
from scn2s.autoencoder import fit_autoencoder
from scn2s.autoencoder import train as train_module
from scn2s.autoencoder.data import SMALL_COUNT, CsrBatches, Staging, binomial, input_transform, thin
from scn2s.autoencoder.module import CountAutoencoder
from scn2s.autoencoder.search import RUNG_EPOCHS, SHAPE_SCALES, config_label
from scn2s.autoencoder.train import (
    TrainConfig,
    Trainer,
    heldout_loss,
    predict_rates,
    sqrt_poisson_mean_of_log,
    sqrt_poisson_mean_torch,
    train,
)
from scn2s.cli._report import selection_summary
from scn2s.datasets import simulate
from scn2s.loss import sqrt_poisson_mean
from scn2s.select import Splits
from scn2s.split import binomial_split

TINY = {"hidden": 32, "bottleneck": 4, "dropout": 0.0, "max_epochs": 12, "patience": 4, "batch_size": 64}


@pytest.fixture(scope="module")
def halves():
    adata = simulate(300, 80, n_types=3, rank=2, depth=800, rng=2)
    train_half, heldout = binomial_split(adata.X, 0.5, rng=np.random.default_rng(0))
    return adata, train_half, heldout


def test_module_outputs_log_frequencies():
    model = CountAutoencoder(20, hidden=8, bottleneck=2, likelihood="nb")
    out = model(torch.rand(5, 20))
    assert out.shape == (5, 20)
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(5))
    assert model.log_theta.shape == (20,)


def test_posterior_is_the_gamma_poisson_mean():
    model = CountAutoencoder(6, hidden=8, bottleneck=2)
    rng = np.random.default_rng(0)
    prior = rng.dirichlet(np.ones(6), size=4)
    counts = rng.poisson(50 * prior).astype(np.float64)
    counts[3] = 0  # a cell without molecules keeps its prior
    shape = np.array([0.5, 1.0, 2.0, 5.0, 20.0, 1e9])
    with torch.no_grad():
        model.log_shape.copy_(torch.tensor(np.log(shape)))

    def posterior(counts):
        with torch.no_grad():
            log_prior = torch.tensor(np.log(prior[: len(counts)]), dtype=torch.float32)
            return model.posterior(log_prior, torch.tensor(counts, dtype=torch.float32)).exp().numpy()

    library = counts.sum(axis=1, keepdims=True)
    expected = (counts + shape) / (library + shape / prior)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(posterior(counts), expected, rtol=1e-5)
    # a factor on the shapes is a prior worth that many times the molecules
    with torch.no_grad():
        log_prior = torch.tensor(np.log(prior), dtype=torch.float32)
        scaled = model.posterior(log_prior, torch.tensor(counts, dtype=torch.float32), shape_scale=3.0).exp().numpy()
    expected = (counts + 3 * shape) / (library + 3 * shape / prior)
    np.testing.assert_allclose(scaled, expected / expected.sum(axis=1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(posterior(counts)[3], prior[3], rtol=1e-5)
    # a deeper cell with the same proportions is pulled further towards them
    observed = counts[:3] / library[:3]
    shallow, deep = posterior(counts[:3]), posterior(10 * counts[:3])
    assert np.all(np.abs(deep - observed).sum(axis=1) < np.abs(shallow - observed).sum(axis=1))
    plain = CountAutoencoder(6, hidden=8, bottleneck=2, posterior=False).eval()
    assert plain.log_shape is None
    x = torch.rand(4, 6)
    torch.testing.assert_close(plain(x, torch.tensor(counts, dtype=torch.float32)), plain(x))


def test_posterior_learns_which_genes_vary_on_their_own():
    """Genes with cell-to-cell variation that the code cannot explain get small prior shapes (weight on the
    cell's own counts), and the posterior lowers the held-out loss on such data."""
    rng = np.random.default_rng(4)
    n_cells, n_genes = 600, 60
    types = rng.integers(0, 3, n_cells)
    profiles = rng.gamma(2.0, 1.0, (3, n_genes))
    own = np.ones((n_cells, n_genes))
    own[:, n_genes // 2 :] = rng.gamma(2.0, 0.5, (n_cells, n_genes // 2))  # CV 0.7, independent per cell
    rates = profiles[types] * own
    rates *= 1500 / rates.sum(axis=1, keepdims=True)
    counts = sparse.csr_matrix(rng.poisson(rates))
    train_half, heldout = binomial_split(counts, 0.5, rng=np.random.default_rng(0))
    config = {**TINY, "bottleneck": 2, "max_epochs": 40, "patience": 8}
    with_posterior = train(train_half, TrainConfig(**config), heldout=heldout, seed=0)
    without = train(train_half, TrainConfig(**config, posterior=False), heldout=heldout, seed=0)
    shape = with_posterior.model.log_shape.detach().exp().numpy()
    assert np.median(shape[n_genes // 2 :]) < 0.2 * np.median(shape[: n_genes // 2])
    assert min(with_posterior.heldout_loss) < 0.98 * min(without.heldout_loss)


def test_batches_densify_the_right_rows(halves):
    _, train_half, _ = halves
    data = CsrBatches(train_half, "cpu")
    rows = np.array([5, 0, 299, 17])
    np.testing.assert_array_equal(data.dense(rows).numpy(), train_half[rows].toarray())
    seen = np.concatenate(list(data.batches(64, order=np.random.default_rng(0).permutation(300))))
    np.testing.assert_array_equal(np.sort(seen), np.arange(300))


def test_thinned_batches_split_the_stored_counts(halves):
    _, train_half, _ = halves
    data = CsrBatches(train_half, "cpu")
    rows = np.arange(50)
    inputs, target = data.thinned(rows, 0.3, torch.Generator().manual_seed(0))
    dense = train_half[rows].toarray()
    np.testing.assert_array_equal((inputs + target).numpy(), dense)
    assert torch.all(inputs >= 0)
    assert abs(float(inputs.sum()) / dense.sum() - 0.3) < 0.03


def test_thinned_batches_take_a_fraction_per_row(halves):
    _, train_half, _ = halves
    data = CsrBatches(train_half, "cpu")
    rows = np.arange(6)
    fraction = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    inputs, target = data.thinned(rows, fraction, torch.Generator().manual_seed(0))
    dense = torch.tensor(train_half[rows].toarray(), dtype=torch.float32)
    torch.testing.assert_close(inputs[1::2], dense[1::2], rtol=0, atol=0)
    torch.testing.assert_close(target[::2], dense[::2], rtol=0, atol=0)
    assert float(inputs[::2].sum()) == 0
    assert float(target[1::2].sum()) == 0


def test_input_range_draws_a_fraction_per_cell_and_rescales_by_it(halves):
    _, train_half, _ = halves
    data = CsrBatches(train_half, "cpu")
    rows = np.arange(300)
    config = TrainConfig(input_range=[0.1, 0.9])
    assert config.input_range == (0.1, 0.9)
    inputs, target, log_ratio = train_module._split_batch(data, rows, config, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal((inputs + target).numpy(), train_half[rows].toarray())
    fraction = 1 / (1 + torch.exp(log_ratio[:, 0]))
    assert float(fraction.min()) >= 0.1
    assert float(fraction.max()) <= 0.9
    assert float(fraction.max() - fraction.min()) > 0.6  # spread over the range, one draw per cell
    observed = inputs.sum(dim=1) / (inputs + target).sum(dim=1)
    # each cell's input holds its own fraction of its molecules (binomial: a few per cent at ~400 molecules)
    assert float((observed - fraction).abs().max()) < 0.15
    assert np.corrcoef(observed.numpy(), fraction.numpy())[0, 1] > 0.98
    _, _, fixed = train_module._split_batch(
        data, rows, TrainConfig(input_fraction=0.3, input_range=None), torch.Generator()
    )
    assert fixed == pytest.approx(np.log(0.7 / 0.3))


@pytest.mark.parametrize("input_range", [(0.0, 0.5), (0.5, 1.0), (0.6, 0.4), (0.5,)])
def test_input_range_must_lie_inside_zero_one(input_range):
    with pytest.raises(ValueError, match="input_range"):
        TrainConfig(input_range=input_range)


def test_input_transform_handles_empty_cells():
    x, library = input_transform(torch.tensor([[0.0, 0.0], [1.0, 3.0]]))
    assert torch.all(torch.isfinite(x))
    torch.testing.assert_close(x[0], torch.zeros(2))
    torch.testing.assert_close(library[:, 0], torch.tensor([0.0, 4.0]))


def test_torch_sqrt_poisson_mean_matches_numpy():
    rate = np.concatenate([[0.0, 1e-8], np.geomspace(1e-5, 1e5, 300)])
    ours = sqrt_poisson_mean_torch(torch.tensor(rate, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(ours, sqrt_poisson_mean(rate), rtol=1e-4, atol=1e-12)


def test_sqrt_poisson_mean_of_log_rates_matches_numpy():
    rate = np.concatenate([[0.0, 1e-8], np.geomspace(1e-5, 1e5, 300)])
    expected = sqrt_poisson_mean(rate)
    with np.errstate(divide="ignore"):
        log_rate = torch.tensor(np.log(rate), dtype=torch.float32)
    np.testing.assert_allclose(sqrt_poisson_mean_of_log(log_rate).numpy(), expected, rtol=2e-4, atol=1e-12)
    # inside the table, the rates are not needed
    inside = (rate > 1e-5) & (rate < 1e4)
    ours = sqrt_poisson_mean_of_log(torch.tensor(np.log(rate[inside]), dtype=torch.float64)).numpy()
    np.testing.assert_allclose(ours, expected[inside], rtol=1e-4)


@pytest.mark.parametrize("probs", [0.5, "per entry"])
def test_binomial_draws_follow_the_binomial_law(probs):
    """Small counts (sums of Bernoulli trials) and large ones (torch.binomial) alike: the law of each count."""
    generator = torch.Generator().manual_seed(1)
    levels = torch.tensor([0.0, 1, 2, 3, SMALL_COUNT, SMALL_COUNT + 1, 12, 60])
    counts = levels.repeat_interleave(20_000)
    p = 0.5 if probs == 0.5 else torch.tensor([0.1, 0.5, 0.85]).repeat(len(counts) // 3 + 1)[: len(counts)]
    drawn = binomial(counts, p, generator)
    assert drawn.dtype == counts.dtype
    assert torch.equal(drawn, drawn.round())
    assert bool(torch.all((drawn >= 0) & (drawn <= counts)))
    p = torch.as_tensor(p).expand_as(counts)
    for level in levels.tolist():
        for prob in torch.unique(p).tolist():
            mask = (counts == level) & (p == prob)
            k = drawn[mask].numpy().astype(int)
            observed = np.bincount(k, minlength=int(level) + 1)
            expected = stats.binom.pmf(np.arange(int(level) + 1), int(level), prob) * len(k)
            keep = expected > 5  # the chi-square test's cells
            if keep.sum() < 2:
                assert observed[~keep].sum() <= 5 + 3 * np.sqrt(5 + expected[~keep].sum())
                continue
            rest = observed[~keep].sum(), expected[~keep].sum()
            obs = np.append(observed[keep], rest[0])
            exp = np.append(expected[keep], rest[1])
            exp = exp * obs.sum() / exp.sum()
            assert stats.chisquare(obs[exp > 0], exp[exp > 0]).pvalue > 1e-4, (level, prob)


def test_posteriors_at_several_scales_match_the_posterior():
    torch.manual_seed(0)
    model = CountAutoencoder(40, hidden=8, bottleneck=3, dropout=0.0, likelihood="poisson", posterior=True).eval()
    with torch.no_grad():
        model.log_shape.normal_(0, 1)
    counts = torch.poisson(torch.full((30, 40), 1.5))
    counts[0] = 0  # a cell without molecules: the prior
    library = counts.sum(dim=1, keepdim=True)
    log_freq = torch.log_softmax(torch.randn(30, 40) * 3, dim=-1)
    scales = (0.25, 1.0, 8.0)
    with torch.no_grad():
        together = list(model.posteriors(log_freq, counts, library, scales))
        for scale, one in zip(scales, together, strict=True):
            torch.testing.assert_close(one, model.posterior(log_freq, counts, scale, library=library))


@pytest.mark.parametrize("mode", ["replicas", "full"])
@pytest.mark.parametrize("reference", [None, 0])
def test_posterior_sd_adds_the_spread_of_the_replicas(mode, reference):
    """sd^2 = mean^2 / (x + a) plus the unbiased variance of the thinned replicas' own posterior means; with a
    reference batch, of each replica's output moved to that batch."""
    from scn2s.autoencoder.train import predict_posterior

    torch.manual_seed(0)
    model = CountAutoencoder(
        40, hidden=8, bottleneck=3, dropout=0.0, likelihood="poisson", posterior=True, n_batches=2
    ).eval()
    with torch.no_grad():
        model.log_shape.normal_(0, 1)
        model.batch_logits.normal_()
    counts = sparse.csr_matrix(np.random.default_rng(1).poisson(2.0, (30, 40)).astype(np.float32))
    data, rows, scale = CsrBatches(counts, "cpu", groups=np.arange(30) % 2, n_groups=2), np.arange(30), 1.41
    options = {"input_fraction": 0.5, "shape_scale": scale, "reference": reference}
    shapes = torch.as_tensor(counts.toarray()).double() + torch.exp(model.log_shape.detach()).double() * scale
    mean, sd = predict_posterior(
        model, data, rows, mode=mode, n_replicas=6, generator=torch.Generator().manual_seed(3), **options
    )
    rates = predict_rates(
        model, data, rows, mode=mode, n_replicas=6, generator=torch.Generator().manual_seed(3), **options
    )
    torch.testing.assert_close(mean, rates)
    # the same thinnings, one at a time: in "full" mode they are drawn after the full input, which draws nothing
    generator = torch.Generator().manual_seed(3)
    each = torch.stack(
        [
            predict_rates(model, data, rows, mode="replicas", n_replicas=1, generator=generator, **options)
            for _ in range(6)
        ]
    )
    spread = each.double().var(dim=0, unbiased=True)
    assert float(spread.max()) > 0
    torch.testing.assert_close(
        sd.double() ** 2 - mean.double() ** 2 / shapes, spread, rtol=2e-3, atol=1e-5 * float(spread.max())
    )
    # one replica: no spread, the gamma posterior's own standard deviation
    one, alone = predict_posterior(
        model, data, rows, mode=mode, n_replicas=1, generator=torch.Generator().manual_seed(5), **options
    )
    torch.testing.assert_close(alone.double() ** 2, one.double() ** 2 / shapes, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("input_range", [None, (0.1, 0.9)])
def test_training_lowers_the_heldout_loss(halves, input_range):
    _, train_half, heldout = halves
    result = train(train_half, TrainConfig(**TINY, input_range=input_range), heldout=heldout, seed=0)
    assert result.heldout_loss[result.best_epoch - 1] < 0.95 * result.heldout_loss[0]
    assert result.best_epoch >= 2
    assert np.isfinite(result.train_loss).all()


def test_heldout_molecules_never_enter_training(halves):
    """The training trajectory is a function of the training molecules alone: any held-out set gives the
    same weights after every epoch; the held-out set only decides which epoch is kept."""
    _, train_half, heldout = halves
    other = sparse.csr_matrix(np.random.default_rng(9).poisson(5.0, heldout.shape))
    snapshots = {}
    for name, held in (("real", heldout), ("other", other)):
        weights = []
        config = TrainConfig(**{**TINY, "patience": 100, "max_epochs": 5})
        train(
            train_half,
            config,
            heldout=held,
            seed=3,
            on_epoch=lambda *_, w=weights, h=held: w.append(_current_weights()),
        )
        snapshots[name] = weights
    for a, b in zip(snapshots["real"], snapshots["other"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


_LAST_MODEL: list = []


def _current_weights() -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in _LAST_MODEL[-1].parameters()])


@pytest.fixture(autouse=True)
def _track_models(monkeypatch):
    original = CountAutoencoder.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        _LAST_MODEL.append(self)

    monkeypatch.setattr(CountAutoencoder, "__init__", init)
    yield
    _LAST_MODEL.clear()


@pytest.mark.parametrize("input_range", [None, (0.1, 0.9)])
def test_same_seed_same_network_on_cpu(halves, input_range):
    _, train_half, heldout = halves
    config = TrainConfig(**{**TINY, "dropout": 0.2, "input_range": input_range})
    a = train(train_half, config, heldout=heldout, seed=5)
    b = train(train_half, config, heldout=heldout, seed=5)
    c = train(train_half, config, heldout=heldout, seed=6)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert not torch.equal(next(a.model.parameters()), next(c.model.parameters()))


def test_negative_binomial_likelihood_trains(halves):
    _, train_half, heldout = halves
    result = train(train_half, TrainConfig(**TINY, likelihood="nb"), heldout=heldout, seed=0)
    assert result.heldout_loss[result.best_epoch - 1] < result.heldout_loss[0]


def test_out_of_memory_backs_off_the_batch_size(halves, monkeypatch, caplog):
    _, train_half, _ = halves
    original = train_module._epoch_pass
    calls = []

    def flaky(*args):
        calls.append(args[-1])
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return original(*args)

    monkeypatch.setattr(train_module, "_epoch_pass", flaky)
    with caplog.at_level(logging.WARNING):
        result = train(train_half, TrainConfig(**TINY), epochs=2, seed=0)
    assert calls[:2] == [64, 32]
    assert result.batch_size == 32
    assert "GPU out of memory: retrying the epoch with batch size 32" in caplog.text


def test_denoise_autoencoder_writes_layer_and_curves(halves):
    adata = halves[0].copy()
    configs = [{**TINY, "max_epochs": 80, "patience": 10}, {**TINY, "bottleneck": 8, "max_epochs": 80, "patience": 10}]
    scn2s.pp.denoise(adata, method="autoencoder", autoencoder_kwds={"configs": configs}, progress=False)
    out = adata.layers["denoised"]
    assert out.shape == adata.shape
    assert out.dtype == np.float32
    assert np.all(out >= 0)
    np.testing.assert_allclose(out.sum(axis=1), np.asarray(adata.X.sum(axis=1)).ravel(), rtol=1e-4)
    record = adata.uns["denoised"]
    assert record["method"] == "autoencoder"
    selection = record["selection"]["autoencoder"]
    labels = list(selection["grid"]["config"])
    assert labels[:2] == ["h32-b4-d0", "h32-b8-d0"]
    # the better of the two is also trained without the posterior, on the same held-out molecules
    assert labels[2:] == [labels[int(np.argmin(selection["loss_mean"][:2]))] + "-noposterior"]
    assert list(selection["posterior"]) == [True, True, False]
    assert selection["loss_mean"].shape == (3,)
    assert record["best_params"]["posterior"] == selection["posterior"][labels.index(selection["chosen"])]
    assert selection["chosen"] in selection["grid"]["config"]
    assert selection["inference"] in ("full", "replicas")
    assert selection["input_range"].shape == (len(labels), 2)
    np.testing.assert_array_equal(record["best_params"]["input_range"], [0.1, 0.9])
    np.testing.assert_array_equal(selection["input_range"][labels.index(selection["chosen"])], [0.1, 0.9])
    assert record["best_params"]["epochs"] == selection["epochs"]
    curve = selection["heldout_curves"][selection["chosen"]]["split_0"]
    assert len(curve) >= selection["epochs"]
    assert "lowrank" not in record["selection"]
    truth = adata.layers["rates"]
    raw_error = np.mean((np.sqrt(adata.X.toarray()) - np.sqrt(truth)) ** 2)
    assert np.mean((np.sqrt(out) - np.sqrt(truth)) ** 2) < 0.7 * raw_error
    # the record reads back as a curve over the candidates, for the plot and the command line's summary
    (curve,) = selection_curves(record, "autoencoder")
    assert curve.chosen == selection["chosen"]
    assert list(curve.values) == list(selection["grid"]["config"])
    summary = selection_summary(record, key="denoised")
    chosen = labels.index(selection["chosen"])
    posterior = "posterior" if selection["posterior"][chosen] else "no posterior"
    assert summary[0] == f"written: autoencoder, {selection['chosen']} (32 hidden, {labels[chosen][5]} bottleneck, " + (
        f"no dropout, {posterior})"
    )
    assert summary[1].startswith("  output: posterior" if selection["posterior"][chosen] else "  output: the network")
    assert f"; {selection['epochs']} epochs" in summary[1]
    inference = {"full": "all of each cell's molecules", "replicas": "thinned replicas"}[selection["inference"]]
    assert inference in summary[1]
    assert "one split" in summary[2]
    assert " sd " not in summary[3]


def test_the_record_of_chosen_candidates_writes_to_h5ad(halves, tmp_path):
    import anndata as ad

    adata = halves[0].copy()
    configs = [{**TINY, "max_epochs": 2, "input_range": None}, {**TINY, "max_epochs": 2, "input_range": (0.2, 0.8)}]
    scn2s.pp.denoise(adata, method="autoencoder", autoencoder_kwds={"configs": configs}, progress=False)
    adata.write_h5ad(tmp_path / "out.h5ad")
    record = ad.read_h5ad(tmp_path / "out.h5ad").uns["denoised"]
    assert record["params"]["autoencoder_configs"]["0"]["input_range"] is None
    np.testing.assert_array_equal(record["params"]["autoencoder_configs"]["1"]["input_range"], [0.2, 0.8])
    selection = record["selection"]["autoencoder"]
    labels = list(selection["grid"]["config"])
    assert labels[:2] == ["h32-b4-d0-f0.5", "h32-b4-d0-f0.2:0.8"]
    np.testing.assert_array_equal(selection["input_range"][:2], [[0.5, 0.5], [0.2, 0.8]])
    chosen = labels.index(selection["chosen"])
    np.testing.assert_array_equal(record["best_params"]["input_range"], selection["input_range"][chosen])


def test_a_posterior_set_by_the_caller_is_not_switched(halves):
    adata, _, _ = halves
    splits = Splits.draw(np.random.default_rng(0), 1, 0.5)
    config = {**TINY, "max_epochs": 3, "posterior": False}
    fit = fit_autoencoder(adata.X, splits=splits, configs=[config], device="cpu", rng=np.random.default_rng(0))
    assert [c.posterior for c in fit.configs] == [False]
    assert fit.losses.shape == (1, 1)
    assert fit.model.log_shape is None


def test_the_shape_factor_is_chosen_on_the_heldout_molecules(halves):
    """Every factor on the prior shapes is scored in both inference modes on the split's held-out molecules (one
    pass of the network for all of them); the chosen one has the lowest loss in the chosen mode and is the one the
    output uses."""
    adata, _, _ = halves
    splits = Splits.draw(np.random.default_rng(0), 1, 0.5)
    config = {**TINY, "max_epochs": 6, "posterior": True}
    fit = fit_autoencoder(adata.X, splits=splits, configs=[config], device="cpu", rng=np.random.default_rng(0))
    np.testing.assert_array_equal(fit.shape_scales, SHAPE_SCALES)
    assert fit.losses_by_scale.shape == (2, 1, 1, len(SHAPE_SCALES))
    mode = int(fit.mode == "replicas")
    by_scale = fit.losses_by_scale[mode, 0, 0]
    assert fit.shape_scale == SHAPE_SCALES[int(np.argmin(by_scale))]
    assert fit.losses[0, 0] == by_scale.min()
    assert np.ptp(by_scale) > 0  # the factor changes the loss
    # one pass for all factors gives what each factor gives alone
    train_half, heldout_half = splits.get(0, adata.X)
    trained = train(train_half, TrainConfig(**config), epochs=3, seed=0)
    data, held = CsrBatches(train_half, "cpu"), CsrBatches(heldout_half, "cpu")
    together = heldout_loss(trained.model, data, held, splits.depth_ratio, shape_scales=(0.5, 1.0, 4.0))
    cells, target = np.arange(len(data)), torch.sqrt(held.dense(np.arange(len(data))))

    def alone(scale: float) -> float:
        rates = predict_rates(trained.model, data, cells, shape_scale=scale) * splits.depth_ratio
        return float(((target - sqrt_poisson_mean_torch(rates)) ** 2).mean())

    np.testing.assert_allclose(together, [alone(c) for c in (0.5, 1.0, 4.0)], rtol=1e-5)
    assert heldout_loss(trained.model, data, held, splits.depth_ratio) == together[1]
    # the output is the posterior with the chosen factor
    model = fit.model
    block = adata.X[:50][:, fit.genes]
    rates = predict_rates(model, CsrBatches(block, "cpu"), np.arange(50), mode="full", shape_scale=fit.shape_scale)
    full_input = dataclasses.replace(fit, mode="full")
    np.testing.assert_allclose(full_input.reconstruct(slice(0, 50))[:, fit.genes], rates.numpy(), rtol=1e-6)


def test_labels_name_input_fractions_other_than_the_default():
    assert TrainConfig().input_range == (0.1, 0.9)
    assert config_label(TrainConfig()) == "h256-b32-d0.1"
    assert config_label(TrainConfig(input_range=None)) == "h256-b32-d0.1-f0.5"
    assert config_label(TrainConfig(input_range=(0.2, 0.8), posterior=False)) == "h256-b32-d0.1-f0.2:0.8-noposterior"


def test_rank_needs_lowrank(halves):
    with pytest.raises(ValueError, match='needs method="lowrank"'):
        scn2s.pp.denoise(halves[0].copy(), lowrank_kwds={"rank": 3}, progress=False)


def test_unknown_autoencoder_setting(halves):
    with pytest.raises(ValueError, match=r"Unknown autoencoder setting\(s\) \['width'\]"):
        scn2s.pp.denoise(
            halves[0].copy(), method="autoencoder", autoencoder_kwds={"configs": [{"width": 3}]}, progress=False
        )


def test_the_search_shows_each_epoch_and_logs_an_estimate_without_changing_results(halves, caplog, capsys):
    import logging

    adata, _, _ = halves
    splits = Splits.draw(np.random.default_rng(0), 1, 0.5)
    configs = [{**TINY, "max_epochs": 3, "patience": 3}]

    def fit(progress):
        return fit_autoencoder(
            adata.X, splits=splits, configs=configs, device="cpu", rng=np.random.default_rng(1), progress=progress
        )

    with caplog.at_level(logging.WARNING, logger="scn2s"):
        quiet = fit(False)
    assert not caplog.records
    with caplog.at_level(logging.INFO, logger="scn2s"):
        shown = fit(True)
    (estimate,) = [r for r in caplog.records if "estimated at most" in r.getMessage()]
    assert estimate.levelno == logging.INFO
    assert estimate.getMessage().startswith(f"autoencoder search on {adata.n_obs} cells x ")
    assert "(2 trainings and the final one, of up to 3 epochs" in estimate.getMessage()
    assert "an estimate" in estimate.getMessage()
    # the timed pass before the search changes nothing in it
    np.testing.assert_array_equal(shown.losses_full, quiet.losses_full)
    np.testing.assert_array_equal(shown.best_epochs, quiet.best_epochs)
    err = capsys.readouterr().err
    assert "h32-b4-d0, split 1/1: epoch 3/3, held-out loss " in err
    assert "h32-b4-d0-noposterior, split 1/1: epoch 1/3" in err
    assert "training" in err


def test_a_long_search_is_announced_by_a_warning(halves, caplog, monkeypatch):
    import logging

    from scn2s.autoencoder import search as autoencoder

    monkeypatch.setattr(autoencoder, "LONG_SEARCH_S", 0.0)
    adata, _, _ = halves
    splits = Splits.draw(np.random.default_rng(0), 1, 0.5)
    with caplog.at_level(logging.INFO, logger="scn2s"):
        fit_autoencoder(
            adata.X,
            splits=splits,
            configs=[{**TINY, "max_epochs": 2, "posterior": True}],
            device="cpu",
            rng=np.random.default_rng(0),
        )
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "estimated at most" in warning.getMessage()
    assert "(1 trainings and the final one, of up to 2 epochs" in warning.getMessage()
    assert 'method="lowrank"' in warning.getMessage()


def test_durations_read_as_a_person_would_say_them():
    from scn2s.autoencoder.search import format_duration

    assert [format_duration(s) for s in (40, 600, 45 * 60, 5400, 2.5 * 3600)] == [
        "40 s",
        "10 min",
        "45 min",
        "1.5 h",
        "2.5 h",
    ]


def test_a_trainer_advanced_in_turns_trains_the_network_of_train(halves):
    """Advanced a few epochs at a time, with another trainer's epochs in between, the network is train()'s."""
    _, train_half, heldout = halves
    config = TrainConfig(**{**TINY, "dropout": 0.2})
    whole = train(train_half, config, heldout=heldout, seed=3)
    trainer = Trainer(train_half, config, heldout=heldout, seed=3)
    other = Trainer(train_half, TrainConfig(**{**TINY, "dropout": 0.3}), heldout=heldout, seed=4)
    while not trainer.stopped:
        trainer.advance(3)
        other.advance(2)
    turns = trainer.finish()
    assert turns.best_epoch == whole.best_epoch
    np.testing.assert_array_equal(turns.heldout_loss, whole.heldout_loss)
    for a, b in zip(turns.model.parameters(), whole.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_an_epoch_of_a_large_data_set_is_part_of_a_pass(halves):
    """With more cells than ``epoch_cells``, an epoch is that many cells, and the next goes on through the pass;
    early stopping scores a fixed subset of ``heldout_cells`` cells."""
    _, train_half, heldout = halves
    config = TrainConfig(**{**TINY, "epoch_cells": 128, "heldout_cells": 100, "max_epochs": 5, "patience": 10})
    trainer = Trainer(train_half, config, heldout=heldout, seed=0)
    passes = [trainer._cells() for _ in range(7)]  # 300 cells: 128 + 128 + (44 of this pass, 84 of the next) ...
    assert all(len(cells) == 128 for cells in passes)
    first = np.concatenate(passes)[:300]
    np.testing.assert_array_equal(np.sort(first), np.arange(300))
    assert len(trainer._heldout_rows) == 100
    trainer = Trainer(train_half, config, heldout=heldout, seed=0)
    trainer.advance(1)
    rows = trainer._heldout_rows
    model = trainer.result.model
    expected = heldout_loss(model, CsrBatches(train_half, "cpu"), CsrBatches(heldout, "cpu"), 1.0, rows=rows)
    assert trainer.result.heldout_loss == [expected]


def test_the_search_stops_candidates_that_cannot_catch_the_leader(halves):
    """Successive halving: a candidate that barely learns is stopped at the end of the first rung; the leader
    trains to its early stop, and the held-out loss of every candidate is in the record."""
    adata = halves[0].copy()
    good = {**TINY, "max_epochs": 40, "patience": 5, "posterior": True}
    slow = {**good, "patience": 100, "learning_rate": 1e-6}
    configs = [good, {**slow, "hidden": 16}, {**slow, "hidden": 24}]
    scn2s.pp.denoise(adata, method="autoencoder", autoencoder_kwds={"configs": configs}, progress=False)
    selection = adata.uns["denoised"]["selection"]["autoencoder"]
    curves = selection["heldout_curves"]
    lengths = [len(curves[label]["split_0"]) for label in ("h32-b4-d0", "h16-b4-d0", "h24-b4-d0")]
    assert selection["chosen"] == "h32-b4-d0"
    # three run the first rung, two the second (twice as long), the leader to its early stop
    assert sorted(lengths[1:]) == [RUNG_EPOCHS, 2 * RUNG_EPOCHS]
    assert lengths[0] == len(curves["h32-b4-d0"]["split_0"]) > RUNG_EPOCHS
    assert selection["best_epochs"][0, 0] == lengths[0] - 5 or lengths[0] == 40
    assert selection["loss_mean"].shape == (3,)
    timings = adata.uns["denoised"]["timings"]
    assert {"autoencoder.h32-b4-d0.steps", "autoencoder.h32-b4-d0.heldout", "autoencoder.refit"} <= set(timings)


def test_staging_gathers_through_reused_buffers():
    """The entries of each batch go through the same host buffers in turns; what was returned is a copy."""
    staging = Staging(torch.device("cpu"))
    sources = (torch.arange(10, dtype=torch.int64) * 3, torch.arange(10, dtype=torch.float32) / 2)
    indices = [torch.tensor([3, 1, 4]), torch.tensor([1, 5]), torch.tensor([9, 2, 6, 5, 3, 5, 8, 9]), torch.tensor([0])]
    returned, buffers = [], []
    for index in indices:
        returned.append(staging.gather(sources, index))
        buffers.append([buffer.data_ptr() for buffer in staging._buffers[(staging._turn - 1) % 2]])
    for index, out in zip(indices, returned, strict=True):
        for source, gathered in zip(sources, out, strict=True):
            torch.testing.assert_close(gathered, source[index], rtol=0, atol=0)
    assert buffers[3] == buffers[1]  # small enough for the buffers of the second batch: reused


def test_thin_draws_the_non_zero_counts_only():
    generator = torch.Generator().manual_seed(0)
    counts = torch.poisson(torch.full((200, 300), 0.7), generator=generator)
    kept, rest = thin(counts, 0.3, generator)
    assert torch.equal(kept + rest, counts)
    assert bool(torch.all(kept >= 0))
    assert bool(torch.all(rest >= 0))
    assert float(kept.sum() / counts.sum()) == pytest.approx(0.3, abs=0.02)


def test_a_widened_network_keeps_its_genes():
    """The network for all genes starts as the split's network on the split's genes, and without weights elsewhere."""
    torch.manual_seed(0)
    small = CountAutoencoder(5, hidden=8, bottleneck=3, dropout=0.0, likelihood="nb").eval()
    with torch.no_grad():
        for parameter in small.parameters():
            parameter.add_(torch.randn_like(parameter))
    genes = np.array([0, 2, 3, 5, 6])
    others = np.setdiff1d(np.arange(8), genes)
    wide = small.widened(genes, 8).eval()
    x = torch.rand(4, 5)
    wide_x = torch.zeros(4, 8)
    wide_x[:, genes] = x
    code = small.encode(x)
    torch.testing.assert_close(wide.encode(wide_x), code)
    logits = wide.decoder(code)
    torch.testing.assert_close(logits[:, genes], small.decoder(code))
    torch.testing.assert_close(logits[:, others], small.decoder[-1].bias.min().expand(4, len(others)))
    torch.testing.assert_close(wide.log_shape[genes], small.log_shape)
    torch.testing.assert_close(wide.log_theta[genes], small.log_theta)
    assert not wide.encoder[0].weight[:, others].any()


@pytest.mark.parametrize("refit", ["continue", "afresh", "none"])
def test_the_refit_trains_on_the_full_counts_as_asked(halves, refit):
    adata = halves[0]
    counts = sparse.csr_matrix(adata.X)
    splits = Splits.draw(np.random.default_rng(0), 1, 0.5)
    selection = fit_autoencoder(
        counts, splits=splits, configs=[{**TINY, "posterior": True}], rng=np.random.default_rng(1), refit=refit
    )
    record = selection.record()
    epochs = {"continue": int(np.ceil(0.5 * selection.epochs)), "afresh": selection.epochs, "none": 0}[refit]
    assert record["refit"] == refit
    assert record["refit_epochs"] == epochs


def test_the_continued_refit_starts_from_the_split_network(halves, monkeypatch):
    """With a vanishing learning rate, the network for the full counts keeps the split's weights."""
    from scn2s.autoencoder import search

    adata = halves[0]
    counts = sparse.csr_matrix(adata.X)
    splits = Splits.draw(np.random.default_rng(0), 1, 0.5)
    kept = fit_autoencoder(
        counts, splits=splits, configs=[{**TINY, "posterior": True}], rng=np.random.default_rng(1), refit="none"
    )
    monkeypatch.setattr(search, "REFIT_LEARNING_RATE", 1e-9)
    continued = fit_autoencoder(
        counts, splits=splits, configs=[{**TINY, "posterior": True}], rng=np.random.default_rng(1), refit="continue"
    )
    assert continued.record()["refit_epochs"] > 0
    torch.testing.assert_close(continued.model.encoder[0].weight, kept.model.encoder[0].weight, atol=1e-6, rtol=0)
    afresh = fit_autoencoder(
        counts, splits=splits, configs=[{**TINY, "posterior": True}], rng=np.random.default_rng(1), refit="afresh"
    )
    assert not torch.allclose(afresh.model.encoder[0].weight, kept.model.encoder[0].weight, atol=1e-3)


def test_an_unknown_refit_is_refused(halves):
    counts = sparse.csr_matrix(halves[0].X)
    with pytest.raises(ValueError, match="refit must be one of"):
        fit_autoencoder(
            counts, splits=Splits.draw(np.random.default_rng(0), 1, 0.5), rng=np.random.default_rng(1), refit=True
        )


def test_the_search_scores_the_held_out_molecules_of_the_scored_cells(halves, monkeypatch):
    """Above ``Splits.scored_cells`` every candidate is scored on the cells every family is scored on."""
    adata, _, _ = halves
    splits = Splits(p=0.5, seeds=(7,), scored_cells=120)
    rows = splits.scored_rows(0, adata.n_obs)
    scored = []
    original = train_module.heldout_loss

    def spy(*args, **kwargs):
        if kwargs.get("shape_scales") is not None:  # the candidates' scoring (early stopping passes none)
            scored.append(kwargs.get("rows"))
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "heldout_loss", spy)
    configs = [{**TINY, "max_epochs": 2}, {**TINY, "hidden": 16, "max_epochs": 2}]
    fit = fit_autoencoder(adata.X, splits=splits, configs=configs, device="cpu", rng=np.random.default_rng(0))
    assert len(scored) == 2 * len(fit.configs)  # two inference modes per candidate
    for seen in scored:
        np.testing.assert_array_equal(seen, rows)
    every = fit_autoencoder(
        adata.X, splits=Splits(p=0.5, seeds=(7,)), configs=configs, device="cpu", rng=np.random.default_rng(0)
    )
    np.testing.assert_array_equal(every.best_epochs, fit.best_epochs)  # the same trainings
    assert not np.allclose(every.losses_full, fit.losses_full, rtol=1e-6)
    np.testing.assert_allclose(every.losses_full, fit.losses_full, rtol=0.1)
