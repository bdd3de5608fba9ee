"""scn2s writes only keys it owns, and the write step is all or nothing at every line."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scn2s
import scn2s.pp._denoise
import scn2s.pp._split
from scn2s._validate import RECORD_KEYS
from scn2s.datasets import simulate


@pytest.fixture(scope="module")
def base() -> ad.AnnData:
    adata = simulate(60, 25, n_types=2, rank=2, depth=300, rng=4)
    adata.X = sparse.csr_matrix(adata.X)
    del adata.layers["rates"]
    return adata


def _denoise(adata, **kwargs):
    return scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 4}, progress=False, **kwargs)


def _no_work(monkeypatch):
    """Any computation fails: a refusal must come before it."""

    def fail(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(scn2s.lowrank, "select", fail)
    monkeypatch.setattr(scn2s.pp._split, "binomial_split", fail)


def test_layer_output_keeps_a_users_keys_named_like_the_factors(base):
    adata = base.copy()
    adata.var["denoised_mean"] = 7.0
    adata.obs["denoised_scale"] = 3.0
    _denoise(adata)
    assert "denoised" in adata.layers
    assert (adata.var["denoised_mean"] == 7.0).all()
    assert (adata.obs["denoised_scale"] == 3.0).all()
    keys = {"layers": ["denoised"], "obsm": ["X_denoised"], "varm": ["denoised_loadings"]}
    assert adata.uns["denoised"][RECORD_KEYS] == keys


def test_layer_output_refuses_a_users_embedding_under_its_name(base, monkeypatch):
    """The layer output writes the embedding obsm["X_denoised"]: a user's key of that name is refused by name."""
    adata = base.copy()
    adata.obsm["X_denoised"] = np.ones((adata.n_obs, 2))
    _no_work(monkeypatch)
    with pytest.raises(ValueError, match=r"adata.obsm\['X_denoised'\] exists"):
        _denoise(adata)
    np.testing.assert_array_equal(adata.obsm["X_denoised"], 1.0)
    assert "denoised" not in adata.layers


def test_factors_output_keeps_a_users_layer_named_like_the_output(base):
    adata = base.copy()
    adata.layers["denoised"] = adata.X.copy()
    _denoise(adata, output="factors")
    assert (adata.layers["denoised"] != adata.X).nnz == 0
    assert set(adata.uns["denoised"][RECORD_KEYS]) == {"obs", "var", "obsm", "varm"}


@pytest.mark.parametrize("output", ["layer", "factors"])
def test_refuses_before_any_work_to_replace_a_users_key(base, monkeypatch, output):
    """sc.pp.pca wrote obsm["X_pca"] and uns["pca"]: either is refused, by name."""
    adata = base.copy()
    adata.obsm["X_pca"] = np.ones((adata.n_obs, 3))
    if output == "layer":
        adata.uns["pca"] = {"variance": np.ones(3)}
    before = adata.copy()
    _no_work(monkeypatch)
    where = r"adata.obsm\['X_pca'\] exists" if output == "factors" else r"adata.uns\['pca'\] exists"
    with pytest.raises(ValueError, match=where):
        _denoise(adata, key_added="pca", output=output)
    np.testing.assert_array_equal(adata.obsm["X_pca"], before.obsm["X_pca"])
    assert set(adata.uns) == set(before.uns)
    assert set(adata.layers) == set(before.layers)


@pytest.mark.parametrize(
    ("attribute", "key"), [("layers", "denoised"), ("obsm", "X_denoised"), ("var", "denoised_mean")]
)
def test_factors_refuse_any_users_key_they_would_write(base, monkeypatch, attribute, key):
    adata = base.copy()
    if attribute == "var":
        adata.var[key] = 1.0
    elif attribute == "obsm":
        adata.obsm[key] = np.ones((adata.n_obs, 1))
    else:
        adata.layers[key] = adata.X.copy()
    _no_work(monkeypatch)
    if attribute == "layers":  # the factors do not write that layer: no refusal, and it is kept
        monkeypatch.undo()
        _denoise(adata, output="factors")
        assert key in adata.layers
        return
    with pytest.raises(ValueError, match=rf"adata.{attribute}\['{key}'\] exists and was not written by scn2s"):
        _denoise(adata, output="factors")


def test_the_input_counts_are_never_the_output(base, monkeypatch):
    adata = base.copy()
    adata.layers["counts"] = adata.X.copy()
    _no_work(monkeypatch)
    with pytest.raises(ValueError, match=r"adata.layers\['counts'\]"):  # counts in X, a user's layer "counts"
        _denoise(adata, key_added="counts")
    with pytest.raises(ValueError, match="input counts"):  # the counts themselves
        _denoise(adata, layer="counts", key_added="counts")
    assert adata.layers["counts"].dtype == base.X.dtype
    assert "counts" not in adata.uns


@pytest.mark.parametrize(("first", "second"), [("layer", "layer"), ("layer", "factors"), ("factors", "layer")])
def test_a_rerun_replaces_its_own_earlier_result(base, first, second):
    adata = base.copy()
    _denoise(adata, output=first, rng=1)
    _denoise(adata, output=second, rng=2)
    assert adata.uns["denoised"]["params"]["seed"] == 2
    assert ("denoised" in adata.layers) == (second == "layer")
    assert "X_denoised" in adata.obsm  # the embedding, written by both outputs
    assert ("denoised_mean" in adata.var) == (second == "factors")


@pytest.mark.parametrize("output", ["layer", "factors"])
def test_a_rerun_over_a_record_read_from_h5ad_and_one_without_the_keys(base, tmp_path, output):
    adata = base.copy()
    _denoise(adata, output=output, rng=1)
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    _denoise(back, output="factors" if output == "layer" else "layer", rng=2)
    assert ("denoised" in back.layers) == (output == "factors")
    # a record of an earlier version, which listed no keys (and wrote no embedding with the layer): its
    # output's keys are its own
    del adata.uns["denoised"][RECORD_KEYS]
    if output == "layer":
        del adata.obsm["X_denoised"], adata.varm["denoised_loadings"]
    _denoise(adata, output="factors" if output == "layer" else "layer", rng=2)
    assert ("denoised" in adata.layers) == (output == "factors")


def test_split_counts_writes_only_keys_it_owns(base, monkeypatch):
    adata = base.copy()
    adata.layers["counts_a"] = adata.X.copy()
    with pytest.raises(ValueError, match=r"adata.layers\['counts_a'\] exists and was not written by scn2s"):
        scn2s.pp.split_counts(adata)
    fresh = base.copy()
    scn2s.pp.split_counts(fresh)
    scn2s.pp.split_counts(fresh, rng=5)  # a rerun over its own layers
    assert fresh.uns["split_counts"][RECORD_KEYS] == {"layers": ["counts_a", "counts_b"]}
    # a split of one of the halves: the input layer is kept, though the earlier record lists it
    scn2s.pp.split_counts(fresh, layer="counts_a", key_added=("aa", "ab"))
    assert {"counts_a", "aa", "ab"} <= set(fresh.layers)
    assert "counts_b" not in fresh.layers
    assert fresh.uns["split_counts"][RECORD_KEYS] == {"layers": ["aa", "ab"]}
    fresh.uns["denoised"] = {"note": "a user's"}
    _no_work(monkeypatch)
    with pytest.raises(ValueError, match=r"adata.uns\['denoised'\] exists and is not a record written by scn2s"):
        _denoise(fresh)


# --- all or nothing at every line of the write step ----------------------------------------------------------------


def _captured_write(adata, monkeypatch, module, run):
    """Run ``run(adata)`` with ``module.write_results`` captured: its arguments, for the real one to be replayed."""
    calls = []
    real = module.write_results
    monkeypatch.setattr(module, "write_results", lambda adata, **kwargs: calls.append(kwargs))
    run(adata)
    monkeypatch.undo()
    (kwargs,) = calls
    return real, kwargs


def _state(adata: ad.AnnData) -> dict:
    """What the write step may change: the frames' contents, the keys and the identity of every other value (new
    values are new objects)."""
    return {
        "obs": (pickle.dumps(adata.obs), tuple(adata.obs.columns)),
        "var": (pickle.dumps(adata.var), tuple(adata.var.columns)),
        **{
            name: {key: id(value) for key, value in getattr(adata, name).items()} for name in ("obsm", "varm", "layers")
        },
        "uns": {key: id(value) for key, value in adata.uns.items()},
    }


_SCN2S = str(Path(scn2s.__file__).parent)
_TRACED = (_SCN2S, str(Path(ad.__file__).parent))


class _Injector:
    """A trace function that raises ``KeyboardInterrupt`` at the ``at``-th line executed in scn2s or anndata.

    Lines of other packages (pandas, numpy) are not traced: an interrupt inside one of their calls reaches the
    calling line of scn2s or anndata as one at that line does. ``positions`` lists the lines executed.
    """

    def __init__(self, at: int | None) -> None:
        self.at, self.lines, self.positions = at, 0, []

    def __call__(self, frame, event, arg):
        if event == "call" and not frame.f_code.co_filename.startswith(_TRACED):
            return None
        if event == "line":
            self.lines += 1
            if self.at is None:
                self.positions.append((frame.f_code.co_filename, frame.f_lineno))
            elif self.lines == self.at:
                raise KeyboardInterrupt
        return self


def _traced(write, adata, kwargs, at):
    injector = _Injector(at)
    sys.settrace(injector)
    try:
        write(adata, **kwargs)
    finally:
        sys.settrace(None)
    return injector.positions


def _injection_points(positions) -> list[int]:
    """Every line executed in scn2s, and the first execution of each line of anndata (whose validation of each
    value runs the same lines again and again): 1-based, for :class:`_Injector`."""
    seen, points = set(), []
    for i, position in enumerate(positions, start=1):
        if position[0].startswith(_SCN2S) or position not in seen:
            points.append(i)
        seen.add(position)
    return points


SCENARIOS = {
    "layer over nothing": (None, lambda a: _denoise(a, rng=2)),
    "factors over a layer": ("layer", lambda a: _denoise(a, rng=2, output="factors")),
    "layer over factors": ("factors", lambda a: _denoise(a, rng=2)),
    "split over a split": ("split", lambda a: scn2s.pp.split_counts(a, rng=2, key_added=("x", "y"))),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_an_interrupt_at_every_line_of_the_write_leaves_all_old_or_all_new(base, monkeypatch, scenario):
    earlier, run = SCENARIOS[scenario]
    adata = base.copy()
    adata.obs["user"] = 1.0
    if earlier == "split":
        scn2s.pp.split_counts(adata, rng=1)
    elif earlier is not None:
        _denoise(adata, rng=1, output=earlier)
    module = scn2s.pp._split if earlier == "split" else scn2s.pp._denoise
    write, kwargs = _captured_write(adata, monkeypatch, module, run)
    old = _state(adata)
    target = adata.copy()
    points = _injection_points(_traced(write, target, kwargs, at=None))
    assert len(points) > 100
    for at in points:
        with pytest.raises(KeyboardInterrupt):
            _traced(write, adata, kwargs, at)
        assert _state(adata) == old, f"partial state after an interrupt at line {at}"
    write(adata, **kwargs)  # not interrupted: all new
    assert _state(adata) != old
    assert _keys(_state(adata)) == _keys(_state(target))


def _keys(state: dict) -> dict:
    return {name: value[1] if name in ("obs", "var") else set(value) for name, value in state.items()}
