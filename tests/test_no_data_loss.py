"""The input counts are never modified, and a failed or interrupted run leaves the AnnData as it was."""

from __future__ import annotations

import hashlib
import pickle

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scn2s
import scn2s.pp._denoise
import scn2s.pp._split
from scn2s.datasets import simulate


def _digest(X) -> str:
    h = hashlib.sha256()
    h.update(repr((type(X).__name__, X.shape, X.dtype)).encode())
    if sparse.issparse(X):
        for part in (X.data, X.indices, X.indptr):
            h.update(np.ascontiguousarray(part).tobytes())
    else:
        h.update(np.ascontiguousarray(X).tobytes())
    return h.hexdigest()


def _fingerprint(adata: ad.AnnData) -> dict:
    """Everything a function could change: X, every layer, uns, obs, var, obsm, varm, obsp."""
    return {
        "X": _digest(adata.X),
        "layers": {key: _digest(value) for key, value in adata.layers.items()},
        "uns": hashlib.sha256(pickle.dumps(dict(adata.uns))).hexdigest(),
        "obs": hashlib.sha256(pickle.dumps(adata.obs)).hexdigest(),
        "var": hashlib.sha256(pickle.dumps(adata.var)).hexdigest(),
        "obsm": sorted(adata.obsm),
        "varm": sorted(adata.varm),
        "obsp": sorted(adata.obsp),
    }


def _non_canonical(X) -> sparse.csr_matrix:
    """CSR with unsorted indices and each entry split into two duplicates."""
    X = sparse.csr_matrix(X)
    first = X.data // 2
    data = np.empty(2 * X.nnz, dtype=X.data.dtype)
    indices = np.empty(2 * X.nnz, dtype=X.indices.dtype)
    data[0::2], data[1::2] = first, X.data - first
    indices[0::2] = indices[1::2] = X.indices
    out = sparse.csr_matrix((data, indices, 2 * X.indptr), shape=X.shape)
    for row in range(out.shape[0]):  # reverse each row: unsorted indices
        start, stop = out.indptr[row], out.indptr[row + 1]
        out.indices[start:stop] = out.indices[start:stop][::-1].copy()
        out.data[start:stop] = out.data[start:stop][::-1].copy()
    out.has_sorted_indices = False
    return out


KINDS = {
    "dense": lambda X: X.toarray(),
    "csr": sparse.csr_matrix,
    "csc": sparse.csc_matrix,
    "csr_array": sparse.csr_array,
    "non-canonical csr": _non_canonical,
}


@pytest.fixture(scope="module")
def small() -> ad.AnnData:
    adata = simulate(80, 30, n_types=2, rank=2, depth=400, rng=2)
    adata.obsm["X_fake"] = np.zeros((80, 2))
    adata.uns["kept"] = {"note": "from before"}
    return adata


def _make(small, kind: str, dtype, *, in_layer: bool) -> ad.AnnData:
    adata = small.copy()
    counts = KINDS[kind](small.X.astype(dtype))
    if in_layer:
        adata.layers["counts"] = counts
        adata.X = sparse.csr_matrix(np.log1p(small.X.toarray()))
    else:
        adata.X = counts
    return adata


def _denoise(adata, **kwargs):
    return scn2s.pp.denoise(adata, method="lowrank", lowrank_kwds={"max_rank": 6}, progress=False, **kwargs)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.float32])
@pytest.mark.parametrize("in_layer", [False, True], ids=["X", "layer"])
def test_denoise_and_split_leave_the_counts_byte_identical(small, kind, dtype, in_layer):
    adata = _make(small, kind, dtype, in_layer=in_layer)
    layer = "counts" if in_layer else None
    before = _fingerprint(adata)
    _denoise(adata, layer=layer)
    scn2s.pp.split_counts(adata, layer=layer)
    after = _fingerprint(adata)
    assert after["X"] == before["X"]
    assert after["layers"]["rates"] == before["layers"]["rates"]
    if in_layer:
        assert after["layers"]["counts"] == before["layers"]["counts"]
    assert set(after["layers"]) == set(before["layers"]) | {"denoised", "counts_a", "counts_b"}
    assert adata.uns["kept"] == {"note": "from before"}


@pytest.mark.parametrize("kind", ["dense", "csr", "non-canonical csr"])
def test_copy_leaves_the_original_untouched_entirely(small, kind):
    adata = _make(small, kind, np.int64, in_layer=False)
    before = _fingerprint(adata)
    out = _denoise(adata, copy=True)
    assert _fingerprint(adata) == before
    assert "denoised" in out.layers
    out = scn2s.pp.split_counts(adata, copy=True)
    assert _fingerprint(adata) == before
    assert {"counts_a", "counts_b"} <= set(out.layers)


def test_a_view_and_its_parent_are_untouched_with_copy(small):
    parent = small.copy()
    before = _fingerprint(parent)
    view = parent[5:60, 3:]
    _denoise(view, copy=True)
    scn2s.pp.split_counts(view, copy=True)
    assert view.is_view
    assert _fingerprint(parent) == before


class Boom(Exception):
    pass


def _raise(exception):
    def fail(*args, **kwargs):
        raise exception

    return fail


# (module, name) of the steps of denoise after the checks: the search, the output layer, the record, the versions
LATE_DENOISE_STEPS = [
    ("scn2s.lowrank", "select"),
    ("scn2s.pp._output", "dense_layer"),
    ("scn2s.lowrank.LowRankSelection", "record"),
    ("scn2s.pp._denoise", "_version"),
]


def _patch(monkeypatch, step: tuple[str, str], exception) -> None:
    owner, name = step
    monkeypatch.setattr(f"{owner}.{name}", _raise(exception))


@pytest.mark.parametrize("step", LATE_DENOISE_STEPS, ids=lambda step: step[1])
@pytest.mark.parametrize("exception", [Boom, KeyboardInterrupt])
def test_denoise_failing_mid_run_leaves_the_anndata_as_it_was(small, monkeypatch, step, exception):
    adata = small.copy()
    _denoise(adata, rng=1)  # an earlier result that must survive the failed run
    before = _fingerprint(adata)
    _patch(monkeypatch, step, exception)
    with pytest.raises(exception):
        _denoise(adata, rng=2)
    assert _fingerprint(adata) == before


@pytest.mark.parametrize("exception", [Boom, KeyboardInterrupt])
def test_denoise_interrupted_while_writing_rolls_back(small, exception):
    adata = small.copy()
    _denoise(adata, rng=1)
    old_layer = adata.layers["denoised"].copy()

    class Interrupting(dict):
        def __setitem__(self, key, value):
            if key == "denoised":  # the layer is written, then the record write fails
                raise exception
            super().__setitem__(key, value)

    adata.uns = Interrupting(adata.uns)
    before = _fingerprint(adata)
    with pytest.raises(exception):
        _denoise(adata, rng=2)
    assert _fingerprint(adata) == before
    np.testing.assert_array_equal(adata.layers["denoised"], old_layer)
    # on a fresh AnnData the half-written layer is removed
    fresh = small.copy()
    fresh.uns = Interrupting(fresh.uns)
    with pytest.raises(exception):
        _denoise(fresh, rng=2)
    assert "denoised" not in fresh.layers
    assert "denoised" not in fresh.uns


@pytest.mark.parametrize("exception", [Boom, KeyboardInterrupt])
def test_split_counts_failing_leaves_the_anndata_as_it_was(small, monkeypatch, exception):
    adata = small.copy()
    before = _fingerprint(adata)
    monkeypatch.setattr(scn2s.pp._split, "binomial_split", _raise(exception))
    with pytest.raises(exception):
        scn2s.pp.split_counts(adata)
    assert _fingerprint(adata) == before
    monkeypatch.undo()

    class Interrupting(dict):
        def __setitem__(self, key, value):
            if key == "split_counts":  # both layers are written, then the record write fails
                raise exception
            super().__setitem__(key, value)

    adata.uns = Interrupting(adata.uns)
    before = _fingerprint(adata)
    with pytest.raises(exception):
        scn2s.pp.split_counts(adata)
    assert _fingerprint(adata) == before
    assert "counts_a" not in adata.layers
    assert "counts_b" not in adata.layers


def _factors(adata, **kwargs):
    return _denoise(adata, output="factors", **kwargs)


FACTOR_STEPS = [("scn2s.lowrank", "select"), ("scn2s.pp._output", "factor_entries"), ("scn2s.pp._denoise", "_version")]


@pytest.mark.parametrize("step", FACTOR_STEPS, ids=lambda step: step[1])
@pytest.mark.parametrize("exception", [Boom, KeyboardInterrupt])
def test_factors_failing_mid_run_leave_the_anndata_as_it_was(small, monkeypatch, step, exception):
    adata = small.copy()
    _factors(adata, rng=1)
    before = _fingerprint(adata)
    _patch(monkeypatch, step, exception)
    with pytest.raises(exception):
        _factors(adata, rng=2)
    assert _fingerprint(adata) == before


@pytest.mark.parametrize("exception", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize(("earlier", "output"), [("layer", "factors"), ("factors", "factors"), ("factors", "layer")])
def test_outputs_interrupted_while_writing_roll_back(small, exception, earlier, output):
    """The entries are written (and those of an earlier output of the other kind removed), then the record fails."""
    adata = small.copy()
    adata.obs["after"] = 1.0  # a column after the ones denoise writes: restored in place
    _denoise(adata, rng=1, output=earlier)
    old = {name: np.array(adata.obs[name]) for name in adata.obs.columns}

    class Interrupting(dict):
        def __setitem__(self, key, value):
            if key == "denoised":
                raise exception
            super().__setitem__(key, value)

    adata.uns = Interrupting(adata.uns)
    before = _fingerprint(adata)
    with pytest.raises(exception):
        _denoise(adata, rng=2, output=output)
    assert _fingerprint(adata) == before
    assert list(adata.obs.columns) == list(old)
    for name, values in old.items():
        np.testing.assert_array_equal(adata.obs[name].to_numpy(), values)
    fresh = small.copy()
    fresh.uns = Interrupting(fresh.uns)
    before = _fingerprint(fresh)
    with pytest.raises(exception):
        _denoise(fresh, rng=2, output=output)
    assert _fingerprint(fresh) == before
