from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import sparse

from scn2s.datasets import simulate
from scn2s.lowrank import fit_lowrank, search_lowrank
from scn2s.lowrank.model import reconstruct_counts
from scn2s.select import Splits, split_fractions


def sqrt_cp10k_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    def transform(values):
        return np.sqrt(values / values.sum(axis=1, keepdims=True) * 1e4)

    return float(np.mean((transform(estimate) - transform(truth)) ** 2))


@pytest.fixture(scope="module")
def simulation():
    return simulate(1500, 800, n_types=6, rank=4, depth=1500, rng=11)


@pytest.fixture(scope="module")
def selection(simulation):
    return fit_lowrank(simulation.X, max_rank=40, rng=np.random.default_rng(0))


def test_chosen_rank_is_within_two_percent_of_the_oracle(simulation, selection):
    truth = simulation.layers["rates"].astype(np.float64)
    errors = np.array(
        [
            sqrt_cp10k_error(
                reconstruct_counts(selection.factors, k, selection.library_size, selection.target_sum), truth
            )
            for k in range(41)
        ]
    )
    oracle = int(np.argmin(errors))
    assert 0 < oracle < 40
    assert errors[selection.rank] <= 1.02 * errors[oracle], (selection.rank, oracle)
    # and it is a real choice: the extremes of the grid are far worse
    assert errors[0] > 2 * errors[oracle]
    assert errors[40] > 1.1 * errors[oracle]


def test_selection_record_is_complete(selection):
    assert selection.losses.shape == (3, 41)
    assert selection.split_singular_values.shape == (3, 40)
    assert selection.split_rank == int(np.argmin(selection.loss_mean))
    assert selection.rank >= selection.split_rank
    assert np.all(selection.loss_std > 0)
    assert 1.0 <= selection.noise_ratio <= np.sqrt(2)


def test_depth_correction_can_be_switched_off(simulation):
    fit = fit_lowrank(simulation.X, max_rank=40, depth_correction=False, rng=np.random.default_rng(0))
    assert fit.rank == fit.split_rank


def test_fixed_rank_skips_the_search(simulation):
    fit = fit_lowrank(simulation.X, rank=7, rng=np.random.default_rng(0))
    assert fit.rank == 7
    assert fit.losses.size == 0


def test_rank_clamped_to_shape():
    small = simulate(6, 30, rng=0)
    message = r"max_rank=50 exceeds what 6 cells x 30 genes allow \(at most min\(cells - 1, genes\) = 5\); using 5\."
    with pytest.warns(UserWarning, match=message) as record:
        fit = fit_lowrank(small.X, max_rank=50, rng=np.random.default_rng(0))
    assert record[0].filename == __file__  # attributed to the caller
    assert fit.factors.max_rank == 5
    with pytest.warns(UserWarning, match=r"rank=9 exceeds what 6 cells x 30 genes allow"):
        fit = fit_lowrank(small.X, rank=9, rng=np.random.default_rng(0))
    assert fit.rank == 5


def test_fewer_than_two_cells_cannot_be_fit():
    one = simulate(1, 30, rng=0)
    message = "Need at least 2 cells and 1 gene to fit a model across cells, got 1 x 30 (cells x genes)."
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        fit_lowrank(one.X, rng=np.random.default_rng(0))


def test_unequal_split_uses_the_depth_conversion(simulation):
    counts = simulation.X[:300]
    splits = Splits.draw(np.random.default_rng(1), 2, 0.7)
    losses, _ = search_lowrank(counts, max_rank=10, splits=splits, rng=np.random.default_rng(0))
    assert losses.shape == (2, 11)
    assert np.all(np.isfinite(losses))
    assert 0 < int(np.argmin(losses.mean(axis=0))) <= 10


def test_split_fractions_with_overlap():
    assert split_fractions(0.3, None) == (0.3, 0.7)
    a, b = split_fractions(0.5, 0.4)
    assert a == pytest.approx(b)
    assert a > 0.5


def test_search_survives_a_training_half_without_molecules():
    """Regression: an empty training half gave a NaN normalisation target and a 'Mean of empty slice' warning."""
    counts = sparse.csr_matrix(np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]))
    # p = 0.01: the single molecule lands in the held-out half of both splits (checked, for this seed)
    splits = Splits.draw(np.random.default_rng(0), 2, 0.01)
    assert all(splits.get(i, counts)[0].nnz == 0 for i in range(2))
    losses, spectra = search_lowrank(counts, max_rank=2, splits=splits, rng=np.random.default_rng(0))
    assert np.all(np.isfinite(losses))
    np.testing.assert_array_equal(spectra, 0.0)


def test_compare_families_takes_any_selection_on_the_splits_all_used():
    from types import SimpleNamespace

    from scn2s.select import compare_families

    a = SimpleNamespace(family="lowrank", heldout_losses=np.array([1.0, 2.0, 9.0]))
    b = SimpleNamespace(family="autoencoder", heldout_losses=np.array([1.4]))
    c = SimpleNamespace(family="external", heldout_losses=np.array([1.2, 0.1]))
    comparison = compare_families([a, b, c])
    assert comparison == {
        "n_splits": 1,
        "loss": {"lowrank": 1.0, "autoencoder": 1.4, "external": 1.2},
        "chosen": "lowrank",
    }
    assert compare_families([a, c])["chosen"] == "external"  # 0.65 against 1.5 on the two splits both used


def test_splits_score_the_cells_of_a_random_subset_above_scored_cells():
    from scn2s.select.splits import SCORED_CELLS

    splits = Splits.draw(np.random.default_rng(0), 2, 0.5)
    assert splits.scored_cells == SCORED_CELLS
    assert splits.scored_rows(0, SCORED_CELLS) is None
    assert splits.scored_mask(0, 100) is None
    assert splits.n_scored(100) == 100
    assert splits.n_scored(10**6) == SCORED_CELLS
    few = Splits(p=0.5, seeds=splits.seeds, scored_cells=40)
    rows = few.scored_rows(0, 100)
    assert len(rows) == 40
    assert np.all(np.diff(rows) > 0)
    assert rows[0] >= 0
    assert rows[-1] < 100
    np.testing.assert_array_equal(rows, few.scored_rows(0, 100))  # the same for every family that asks
    assert not np.array_equal(rows, few.scored_rows(1, 100))  # each split its own
    mask = few.scored_mask(0, 100)
    assert mask.sum() == 40
    assert mask[rows].all()
    assert Splits(p=0.5, seeds=(1,), scored_cells=None).scored_rows(0, 10**6) is None
    # the molecules themselves are split as before: the subset only says which cells score
    counts = sparse.random(100, 30, density=0.3, format="csr", random_state=0, data_rvs=lambda k: np.ones(k) * 3)
    for a, b in zip(splits.get(0, counts), few.get(0, counts), strict=True):
        assert (a != b).nnz == 0
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="scored_cells"):
            Splits(p=0.5, seeds=(1,), scored_cells=bad)


@pytest.mark.parametrize("p", [0.5, 0.4])
def test_the_rank_losses_of_the_scored_cells_are_those_of_their_rows_alone(simulation, p):
    """``keep`` scores the marked cells' held-out molecules alone, on the exact and the converted path, by blocks."""
    from scn2s.lowrank.model import LowRankFactors, heldout_loss_per_rank

    counts = sparse.csr_matrix(simulation.X[:400, :200])
    rng = np.random.default_rng(0)
    K = 5
    factors = LowRankFactors(
        mean=rng.random(200),
        U=np.linalg.qr(rng.normal(size=(400, K)))[0],
        s=np.sort(rng.random(K))[::-1] * 20,
        Vt=np.linalg.qr(rng.normal(size=(200, K)))[0].T,
    )
    scale = rng.random(400) + 0.5
    keep = rng.random(400) < 0.3
    rows = np.flatnonzero(keep)
    ratio = (1 - p) / p
    alone = heldout_loss_per_rank(
        LowRankFactors(mean=factors.mean, U=factors.U[rows], s=factors.s, Vt=factors.Vt),
        scale[rows],
        counts[rows],
        depth_ratio=ratio,
    )
    blocks = [counts[:150], counts[150:320], counts[320:]]
    for heldout in (counts, blocks):
        marked = heldout_loss_per_rank(factors, scale, heldout, depth_ratio=ratio, keep=keep)
        np.testing.assert_allclose(marked, alone, rtol=1e-10)
    everyone = heldout_loss_per_rank(factors, scale, counts, depth_ratio=ratio, keep=np.ones(400, dtype=bool))
    np.testing.assert_allclose(everyone, heldout_loss_per_rank(factors, scale, counts, depth_ratio=ratio))


def test_the_heldout_blocks_keep_the_scored_cells_molecules_only(simulation):
    """Above ``scored_cells`` the held-out blocks a split holds have the scored rows of the whole split, no others."""
    import dataclasses

    from scn2s._blocks import RowBlocks
    from scn2s.lowrank.blocks import BlockCounts

    counts = sparse.csr_matrix(simulation.X[:600, :300])
    splits = Splits.draw(np.random.default_rng(4), 1, 0.5)
    few = dataclasses.replace(splits, scored_cells=250)
    blocks = BlockCounts(RowBlocks(counts, block_rows=170))
    every, scored = blocks.split(splits, 0), blocks.split(few, 0)
    keep = few.scored_mask(0, 600)
    for rows, whole, part in zip(blocks.slices, every.heldout, scored.heldout, strict=True):
        assert part.shape == whole.shape
        np.testing.assert_array_equal(part[keep[rows]].toarray(), whole[keep[rows]].toarray())
        assert part[~keep[rows]].nnz == 0
    assert sum(part.nnz for part in scored.heldout) < 0.5 * sum(whole.nnz for whole in every.heldout)
    for a, b in zip(every.train, scored.train, strict=True):
        assert (a != b).nnz == 0  # the training half is every cell's, as before
    np.testing.assert_array_equal(every.library, scored.library)


def test_the_rank_search_scores_only_the_scored_cells(simulation):
    """Above ``scored_cells`` the per-entry losses are those of the scored cells: close to every cell's, not equal."""
    import dataclasses

    counts = sparse.csr_matrix(simulation.X[:600, :300])
    splits = Splits.draw(np.random.default_rng(4), 2, 0.5)
    assert splits.scored_rows(0, 600) is None
    few = dataclasses.replace(splits, scored_cells=250)
    every = search_lowrank(counts, max_rank=10, splits=splits, rng=np.random.default_rng(0)).losses
    scored = search_lowrank(counts, max_rank=10, splits=few, rng=np.random.default_rng(0)).losses
    assert not np.allclose(every, scored, rtol=1e-6)
    np.testing.assert_allclose(scored, every, rtol=0.1)
    at_most = search_lowrank(
        counts, max_rank=10, splits=dataclasses.replace(splits, scored_cells=600), rng=np.random.default_rng(0)
    ).losses
    np.testing.assert_array_equal(at_most, every)
