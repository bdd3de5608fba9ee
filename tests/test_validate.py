"""Bad input fails early with a message that says what is wrong, where, and what to do."""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scn2s
from scn2s._names import METHODS
from scn2s._validate import MAX_COUNT, check_counts, write_results
from scn2s.datasets import simulate
from scn2s.split import binomial_split, overlap_probabilities

RNG = "rng must be a non-negative integer seed, a numpy.random.Generator, a numpy.random.RandomState or None, got"

KINDS = {"dense": np.asarray, "csr": sparse.csr_matrix, "csc": sparse.csc_matrix}
HINT_X = 'If the raw counts are in a layer, pass layer="counts" (or its name).'
HINT_LAYER = "Pass layer= naming the layer that holds the raw counts, or layer=None for adata.X."


@pytest.fixture(scope="module")
def counts() -> np.ndarray:
    """60 cells x 25 genes, at most 100 per entry so that every integer dtype holds them."""
    return np.minimum(simulate(60, 25, n_types=2, rank=2, depth=300, rng=3).X.toarray(), 100)


def _denoise(adata, **kwargs):
    return scn2s.pp.denoise(
        adata, **{"method": "lowrank", "lowrank_kwds": {"max_rank": 5}, "progress": False, **kwargs}
    )


def _raises(exception, message: str, func, *args, **kwargs):
    """Call ``func`` and check that it raises ``exception`` with exactly ``message``."""
    with pytest.raises(exception) as info:
        func(*args, **kwargs)
    assert info.value.args[0] == message
    return info


# --- the values of the counts ------------------------------------------------------------------------------------


def _bad(counts: np.ndarray, case: str) -> tuple[np.ndarray, type, str]:
    """A corrupted copy of ``counts`` and the exception and message (with {source} and {hint}) it must raise."""
    X = counts.astype(np.float64)
    if case == "log-normalised":
        X = np.zeros_like(X)
        X[0, 0], X[3, 1] = 0.5, 2.0
        return (
            X,
            ValueError,
            (
                "{source} holds non-integer values (e.g. 0.5), so it looks normalised or log-transformed; scn2s needs "
                "raw UMI counts. {hint}"
            ),
        )
    if case == "negative":
        X[1, 2], X[4, 0] = -1.5, -0.25
        return (
            X,
            ValueError,
            (
                "{source} contains 2 negative value(s) (minimum -1.5), so it looks scaled or centred; scn2s needs raw "
                "UMI counts. {hint}"
            ),
        )
    if case == "nan":
        X[2, 2] = X[5, 5] = np.nan
        return X, ValueError, "{source} contains 2 NaN value(s); raw UMI counts are finite. {hint}"
    if case == "inf":
        X[0, 3] = np.inf
        return X, ValueError, "{source} contains 1 infinite value(s); raw UMI counts are finite. {hint}"
    if case == "-inf":
        X[0, 3] = -np.inf
        return X, ValueError, "{source} contains 1 infinite value(s); raw UMI counts are finite. {hint}"
    if case == "wrapped uint64":
        X = counts.astype(np.uint64)
        X[1, 1] = np.iinfo(np.uint64).max  # what 0 - 1 gives in uint64
        return (
            X,
            ValueError,
            (
                "{source} holds values up to 1.84467e+19, above 2**53, the largest integer float64 arithmetic holds "
                "exactly; these are not UMI counts (an unsigned integer that wrapped around below zero?)."
            ),
        )
    if case == "huge float":
        X[1, 1] = 1e300
        return (
            X,
            ValueError,
            (
                "{source} holds values up to 1e+300, above 2**53, the largest integer float64 arithmetic holds "
                "exactly; these are not UMI counts (an unsigned integer that wrapped around below zero?)."
            ),
        )
    if case == "bool":
        return (
            counts > 0,
            TypeError,
            (
                "{source} has boolean dtype, which holds presence or absence, not UMI counts; scn2s needs the raw "
                "counts. {hint}"
            ),
        )
    if case == "complex":
        return (
            X.astype(np.complex128),
            TypeError,
            ("{source} has dtype complex128; expected UMI counts of an integer or float dtype."),
        )
    raise AssertionError(case)


BAD_VALUES = ["log-normalised", "negative", "nan", "inf", "-inf", "wrapped uint64", "huge float", "bool", "complex"]


@pytest.mark.parametrize("case", BAD_VALUES)
@pytest.mark.parametrize("kind", ["dense", "csr", "csc"])
def test_bad_values_in_X_are_refused(counts, case, kind):
    X, exception, message = _bad(counts, case)
    adata = ad.AnnData(KINDS[kind](X))
    expected = message.format(source="adata.X", hint=HINT_X)
    _raises(exception, expected, _denoise, adata)
    _raises(exception, expected, scn2s.pp.split_counts, adata)
    assert not adata.layers
    assert not adata.uns


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_in_a_layer_name_the_layer(counts, case):
    X, exception, message = _bad(counts, case)
    adata = ad.AnnData(sparse.csr_matrix(counts), layers={"counts": sparse.csr_matrix(X)})
    expected = message.format(source="adata.layers['counts']", hint=HINT_LAYER)
    _raises(exception, expected, _denoise, adata, layer="counts")
    _raises(exception, expected, scn2s.pp.split_counts, adata, layer="counts")


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_in_an_array_are_refused_by_the_split(counts, case):
    X, exception, message = _bad(counts, case)
    expected = message.format(source="X", hint="Pass the raw counts.")
    _raises(exception, expected, binomial_split, X, 0.5, rng=np.random.default_rng(0))


def test_the_largest_count_is_accepted():
    X = np.array([[MAX_COUNT, 0], [3, 1]], dtype=np.int64)
    check_counts(X)
    a, b = binomial_split(X, 0.5, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(a + b, X)


def test_normalised_data_suggests_the_counts_layer(counts):
    adata = ad.AnnData(sparse.csr_matrix(counts), layers={"counts": sparse.csr_matrix(counts)})
    adata.X = sparse.csr_matrix(np.log1p(counts))
    with pytest.raises(ValueError, match=r'^adata.X holds non-integer values \(e.g. [0-9.]+\).*layer="counts"'):
        _denoise(adata)
    _denoise(adata, layer="counts")
    assert "denoised" in adata.layers


# --- dtypes that hold counts -------------------------------------------------------------------------------------

SPARSE_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
SPARSE_DTYPES += [np.float32, np.float64]
DTYPE_CASES = [(kind, dtype) for kind in ("dense", "csr", "csc") for dtype in SPARSE_DTYPES]
DTYPE_CASES.append(("dense", np.float16))  # scipy.sparse cannot hold float16


@pytest.fixture(scope="module")
def reference(counts) -> np.ndarray:
    adata = ad.AnnData(counts.astype(np.int64))
    _denoise(adata)
    return adata.layers["denoised"]


@pytest.mark.parametrize(("kind", "dtype"), DTYPE_CASES, ids=[f"{k}-{np.dtype(d).name}" for k, d in DTYPE_CASES])
def test_every_integer_and_float_dtype_gives_the_same_output(counts, reference, kind, dtype):
    X = KINDS[kind](counts.astype(dtype))
    adata = ad.AnnData(X)
    _denoise(adata)
    np.testing.assert_array_equal(adata.layers["denoised"], reference)
    assert adata.X.dtype == dtype  # the input is never converted


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
def test_small_integer_types_do_not_overflow(dtype):
    """Library sizes far above the dtype's range: the arithmetic is done in int64 / float64."""
    rng = np.random.default_rng(0)
    high = np.iinfo(dtype).max
    X = rng.integers(high // 2, high + 1, (30, 40)).astype(dtype)
    library = X.sum(axis=1, dtype=np.int64)
    assert library.min() > 20 * high
    adata = ad.AnnData(sparse.csr_matrix(X))
    _denoise(adata)
    np.testing.assert_allclose(adata.layers["denoised"].sum(axis=1), library, rtol=1e-5)
    scn2s.pp.split_counts(adata)
    a, b = adata.layers["counts_a"], adata.layers["counts_b"]
    assert a.dtype == b.dtype == dtype
    np.testing.assert_array_equal(a.toarray().astype(np.int64) + b.toarray(), X)


def test_sparse_arrays_are_accepted(counts, reference):
    adata = ad.AnnData(sparse.csr_array(counts))
    _denoise(adata)
    np.testing.assert_array_equal(adata.layers["denoised"], reference)
    scn2s.pp.split_counts(adata)
    assert isinstance(adata.layers["counts_a"], sparse.csr_array)


# --- the AnnData around the counts -------------------------------------------------------------------------------


def test_missing_layer_lists_the_available_ones(counts):
    adata = ad.AnnData(counts, layers={"raw": counts, "spliced": counts})
    message = "Layer 'counts' not found in adata.layers (available: 'raw', 'spliced'); pass layer=None for adata.X."
    _raises(KeyError, message, _denoise, adata, layer="counts")
    _raises(KeyError, message, scn2s.pp.split_counts, adata, layer="counts")
    message = "Layer 'counts' not found in adata.layers (available: none); pass layer=None for adata.X."
    _raises(KeyError, message, _denoise, ad.AnnData(counts), layer="counts")


def test_layer_must_be_a_name(counts):
    message = "layer must be the name of a layer (a string) or None for adata.X, got 0."
    _raises(TypeError, message, _denoise, ad.AnnData(counts), layer=0)


def test_missing_X_points_to_the_layers(counts):
    adata = ad.AnnData(X=None, obs={"i": np.arange(60)}, var={"j": np.arange(25)}, layers={"counts": counts})
    message = "adata.X is None; pass layer= naming the layer with the raw counts (available: 'counts')."
    _raises(ValueError, message, _denoise, adata)
    _denoise(adata, layer="counts")


@pytest.mark.parametrize("shape", [(0, 25), (60, 0), (0, 0)])
def test_empty_anndata(shape):
    adata = ad.AnnData(np.zeros(shape, dtype=np.int32))
    message = f"adata is empty ({shape[0]} cells x {shape[1]} genes); there are no counts to process."
    _raises(ValueError, message, _denoise, adata)
    _raises(ValueError, message, scn2s.pp.split_counts, adata)


def test_one_cell_is_refused(counts):
    message = "denoise needs at least 2 cells to fit a model across cells; adata.X has 1."
    _raises(ValueError, message, _denoise, ad.AnnData(counts[:1]))
    adata = ad.AnnData(counts[:1])
    scn2s.pp.split_counts(adata)  # splitting one cell is fine
    np.testing.assert_array_equal(adata.layers["counts_a"] + adata.layers["counts_b"], counts[:1])


ONE_GENE = (
    "Only 1 gene is modelled: each cell's denoised count is its own count of that gene (the library size), so the "
    "output equals the counts; using rank 0."
)


@pytest.mark.parametrize("n_cells", [2, 60])
def test_one_gene_returns_the_counts_with_a_warning(counts, n_cells):
    column = next(j for j in range(counts.shape[1]) if counts[:n_cells, j].any())
    adata = ad.AnnData(counts[:n_cells, [column]])
    with pytest.warns(UserWarning, match=f"^{re.escape(ONE_GENE)}$"):
        _denoise(adata)
    np.testing.assert_allclose(adata.layers["denoised"], adata.X, rtol=1e-6)
    assert adata.uns["denoised"]["best_params"]["rank"] == 0
    _denoise(adata, lowrank_kwds={"rank": 0})  # asking for rank 0 is not warned about


def test_one_gene_selected_by_mask_var(counts):
    adata = ad.AnnData(counts)
    mask = np.zeros(adata.n_vars, dtype=bool)
    mask[counts.sum(axis=0).argmax()] = True
    with pytest.warns(UserWarning, match="Only 1 gene is modelled"):
        _denoise(adata, mask_var=mask)
    np.testing.assert_allclose(adata.layers["denoised"], counts, rtol=1e-6)


@pytest.mark.parametrize(("shape", "limit"), [((4, 25), 3), ((60, 3), 3), ((2, 2), 1)])
def test_ranks_beyond_the_shape_are_clamped_with_a_warning(counts, shape, limit):
    adata = ad.AnnData(counts[: shape[0], : shape[1]] + 1)
    n, g = shape
    message = f"max_rank=50 exceeds what {n} cells x {g} genes allow (at most min(cells - 1, genes) = {limit}); "
    with pytest.warns(UserWarning, match=f"^{re.escape(message + f'using {limit}.')}$"):
        _denoise(adata, lowrank_kwds={"max_rank": 50})
    assert adata.uns["denoised"]["selection"]["lowrank"]["grid"]["rank"][-1] == limit
    with pytest.warns(UserWarning, match=f"^rank=7 exceeds what {n} cells x {g} genes allow"):
        _denoise(adata, lowrank_kwds={"rank": 7})
    assert adata.uns["denoised"]["best_params"]["rank"] == limit


def test_clamp_warning_points_at_the_caller(counts):
    with pytest.warns(UserWarning, match="max_rank=50 exceeds") as record:
        _denoise(ad.AnnData(counts[:5]), lowrank_kwds={"max_rank": 50})
    assert record[0].filename == __file__


def test_clamp_counts_the_genes_selected_by_mask_var(counts):
    adata = ad.AnnData(counts)
    mask = counts.sum(axis=0) > 0
    mask[np.flatnonzero(mask)[4:]] = False
    with pytest.warns(UserWarning, match=r"^max_rank=10 exceeds what 60 cells x 4 genes allow"):
        _denoise(adata, mask_var=mask, lowrank_kwds={"max_rank": 10})


def test_all_zero_counts_are_refused(counts):
    adata = ad.AnnData(sparse.csr_matrix(counts.shape, dtype=np.int32))
    message = (
        "adata.X holds no molecule (every count is zero); there is nothing to denoise. Check that layer= names the "
        "raw counts."
    )
    _raises(ValueError, message, _denoise, adata)
    adata = ad.AnnData(np.zeros_like(counts), layers={"counts": np.zeros_like(counts)})
    _raises(ValueError, message.replace("adata.X", "adata.layers['counts']"), _denoise, adata, layer="counts")
    # explicit zeros are no molecules either
    adata = ad.AnnData(sparse.csr_matrix((np.zeros(3), ([0, 1, 2], [0, 1, 2])), shape=(5, 4)))
    _raises(ValueError, message, _denoise, adata)
    scn2s.pp.split_counts(adata)  # splitting zeros is harmless
    assert adata.layers["counts_a"].nnz == 0


def test_all_zero_counts_in_the_masked_genes_are_refused(counts):
    X = counts.copy()
    X[:, :3] = 0
    mask = np.zeros(X.shape[1], dtype=bool)
    mask[:3] = True
    message = (
        "adata.X holds no molecule in the genes selected by mask_var (every count is zero); there is nothing to "
        "denoise. Check that layer= names the raw counts."
    )
    _raises(ValueError, message, _denoise, ad.AnnData(X), mask_var=mask)


@pytest.mark.parametrize("kind", ["dense", "csr", "csc"])
def test_all_zero_cells_and_genes_are_kept_as_zeros(counts, kind):
    """No division by zero anywhere: RuntimeWarnings are errors in the test suite."""
    X = counts.copy()
    X[[0, 7, 59]] = 0
    X[:, [0, 11, 24]] = 0
    adata = ad.AnnData(KINDS[kind](X))
    _denoise(adata, lowrank_kwds={"max_rank": 8})
    out = adata.layers["denoised"]
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[[0, 7, 59]], 0)
    np.testing.assert_array_equal(out[:, [0, 11, 24]], 0)
    np.testing.assert_allclose(out.sum(axis=1), X.sum(axis=1), rtol=1e-5)
    assert np.all(np.isfinite(adata.uns["denoised"]["selection"]["lowrank"]["loss_mean"]))
    scn2s.pp.split_counts(adata)
    for key in ("counts_a", "counts_b"):
        half = adata.layers[key]
        half = half.toarray() if sparse.issparse(half) else half
        np.testing.assert_array_equal(half[[0, 7, 59]], 0)
        np.testing.assert_array_equal(half[:, [0, 11, 24]], 0)


def test_nearly_empty_counts_give_finite_output():
    """A handful of molecules: most training halves are empty and most singular values zero."""
    X = np.zeros((12, 6), dtype=np.int64)
    X[0, 0], X[3, 2], X[3, 5] = 1, 2, 1
    adata = ad.AnnData(X)
    _denoise(adata)
    out = adata.layers["denoised"]
    assert np.all(np.isfinite(out))
    assert np.all(out >= 0)
    np.testing.assert_allclose(out.sum(axis=1), X.sum(axis=1), rtol=1e-6)


# --- the arguments -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p": 0.0}, "p must be strictly between 0 and 1, got 0.0."),
        ({"p": 1}, "p must be strictly between 0 and 1, got 1."),
        ({"p": float("nan")}, "p must be strictly between 0 and 1, got nan."),
        ({"p": "0.5"}, "p must be strictly between 0 and 1, got '0.5'."),
        ({"p": None}, "p must be strictly between 0 and 1, got None."),
        ({"n_splits": 0}, "n_splits must be a positive integer, got 0."),
        ({"n_splits": 2.0}, "n_splits must be a positive integer, got 2.0."),
        ({"n_splits": True}, "n_splits must be a positive integer, got True."),
        ({"lowrank_kwds": {"max_rank": 0}}, "max_rank must be a positive integer, got 0."),
        ({"lowrank_kwds": {"max_rank": -3}}, "max_rank must be a positive integer, got -3."),
        ({"lowrank_kwds": {"max_rank": None}}, "max_rank must be a positive integer, got None."),
        ({"lowrank_kwds": {"rank": -1}}, "rank must be an integer >= 0 or None, got -1."),
        ({"lowrank_kwds": {"rank": 2.5}}, "rank must be an integer >= 0 or None, got 2.5."),
        (
            {"lowrank_kwds": {"max_ranks": 3}},
            "lowrank_kwds has unknown key(s) ['max_ranks']; valid: ['max_rank', 'rank', 'depth_correction'].",
        ),
        (
            {"autoencoder_kwds": {"hidden": 8}},
            "autoencoder_kwds has unknown key(s) ['hidden']; valid: ['configs', 'n_splits'].",
        ),
        ({"autoencoder_kwds": {"n_splits": 0}}, "n_splits must be a positive integer, got 0."),
        ({"sample_ratio": 0}, "sample_ratio must be in (0, 1], got 0."),
        ({"sample_ratio": 1.5}, "sample_ratio must be in (0, 1], got 1.5."),
        ({"sample_ratio": float("nan")}, "sample_ratio must be in (0, 1], got nan."),
        ({"key_added": ""}, "key_added must be a non-empty string, got ''."),
        ({"key_added": None}, "key_added must be a non-empty string, got None."),
        ({"method": "magic"}, f"method must be one of {METHODS}, got 'magic'."),
        ({"rng": "seed"}, RNG + " 'seed'."),
        ({"rng": -1}, RNG + " -1."),
    ],
)
def test_denoise_arguments_are_checked_before_any_work(counts, kwargs, message):
    adata = ad.AnnData(counts)
    _raises(ValueError, message, _denoise, adata, **kwargs)
    assert not adata.layers
    assert not adata.uns


@pytest.mark.parametrize(
    ("mask_var", "exception", "message"),
    [
        (
            "highly_variable",
            KeyError,
            "mask_var='highly_variable' is not a column of adata.var (run sc.pp.highly_variable_genes first?).",
        ),
        (
            np.ones(3, dtype=bool),
            ValueError,
            "mask_var must be a boolean mask over the 25 genes, got dtype bool and shape (3,).",
        ),
        (
            np.arange(25),
            ValueError,
            "mask_var must be a boolean mask over the 25 genes, got dtype int64 and shape (25,).",
        ),
        (
            np.zeros(25, dtype=bool),
            ValueError,
            "mask_var selects no gene; select at least one, or pass mask_var=None to model every gene.",
        ),
    ],
)
def test_mask_var_is_checked(counts, mask_var, exception, message):
    _raises(exception, message, _denoise, ad.AnnData(counts), mask_var=mask_var)


def test_numpy_scalars_are_valid_arguments(counts):
    adata = ad.AnnData(counts)
    _denoise(adata, p=np.float32(0.5), n_splits=np.int64(2), lowrank_kwds={"max_rank": np.int32(4)})
    assert adata.uns["denoised"]["selection"]["lowrank"]["loss_per_split"].shape == (2, 5)


def test_sample_ratio_of_one_holds_nothing_out(counts):
    """Regression: denoise accepted sample_ratio=1, where one half of every split contains the other."""
    both, _, _ = overlap_probabilities(0.5, 1.0)
    assert both == pytest.approx(1.0)  # every molecule in both halves: nothing is held out
    message = (
        "sample_ratio=1 says the counts hold every molecule of the library; the two halves of a split then overlap "
        "so that one contains the other, and no molecule is held out. Pass a value below 1, or None for plain "
        "thinning."
    )
    _raises(ValueError, message, _denoise, ad.AnnData(counts), sample_ratio=1.0)
    adata = ad.AnnData(counts)
    scn2s.pp.split_counts(adata, sample_ratio=1.0)  # a valid split, just not one to select a model with
    np.testing.assert_array_equal(adata.layers["counts_a"], counts)


def test_output_cannot_overwrite_the_input_counts(counts):
    adata = ad.AnnData(counts, layers={"counts": counts.copy()})
    message = (
        "key_added='counts' would overwrite the input counts in adata.layers['counts']; choose another name for the "
        "output."
    )
    _raises(ValueError, message, _denoise, adata, layer="counts", key_added="counts")
    message = message.replace("key_added=", "key_added[1]=")
    _raises(ValueError, message, scn2s.pp.split_counts, adata, layer="counts", key_added=("a", "counts"))
    np.testing.assert_array_equal(adata.layers["counts"], counts)


@pytest.mark.parametrize(
    ("key_added", "message"),
    [
        ("ab", "key_added must be two different layer names, got 'ab'."),
        (("a", "a"), "key_added must be two different layer names, got ('a', 'a')."),
        (("a", "b", "c"), "key_added must be two different layer names, got ('a', 'b', 'c')."),
        (("a", ""), "key_added[1] must be a non-empty string, got ''."),
        ((None, "b"), "key_added[0] must be a non-empty string, got None."),
    ],
)
def test_split_key_added_is_checked(counts, key_added, message):
    _raises(ValueError, message, scn2s.pp.split_counts, ad.AnnData(counts), key_added=key_added)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p": 1.0}, "p must be strictly between 0 and 1, got 1.0."),
        ({"sample_ratio": 0.0}, "sample_ratio must be in (0, 1], got 0.0."),
        ({"rng": 1.5}, RNG + " 1.5."),
    ],
)
def test_split_arguments_are_checked(counts, kwargs, message):
    _raises(ValueError, message, scn2s.pp.split_counts, ad.AnnData(counts), **kwargs)


def test_array_split_arguments_are_checked(counts):
    rng = np.random.default_rng(0)
    _raises(ValueError, "p must be strictly between 0 and 1, got 'a'.", binomial_split, counts, "a", rng=rng)
    message = "sample_ratio must be in (0, 1], got 2.0."
    _raises(ValueError, message, binomial_split, counts, 0.5, rng=rng, sample_ratio=2.0)


# --- views -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dense", "csr"])
def test_views_give_the_same_output_as_their_copy(counts, kind):
    parent = ad.AnnData(KINDS[kind](counts))
    view = parent[10:50, 2:]
    actual = view.copy()
    _denoise(actual)
    out = _denoise(view, copy=True)
    np.testing.assert_array_equal(out.layers["denoised"], actual.layers["denoised"])
    assert view.is_view
    assert not parent.layers


def test_denoising_a_view_in_place_makes_it_actual_and_leaves_the_parent(counts):
    parent = ad.AnnData(sparse.csr_matrix(counts))
    view = parent[10:50]
    with pytest.warns(ad.ImplicitModificationWarning, match="initializing view as actual"):
        _denoise(view)
    assert not view.is_view
    assert view.layers["denoised"].shape == (40, counts.shape[1])
    assert not parent.layers
    assert not parent.uns
    np.testing.assert_array_equal(parent.X.toarray(), counts)


# --- all-or-nothing writes ---------------------------------------------------------------------------------------


def test_write_results_rolls_back_a_failed_write(counts):
    earlier = {"params": {}, "keys": {"layers": ["old"]}}
    adata = ad.AnnData(counts, layers={"old": counts + 1}, uns={"old": {"a": 1}, "run": earlier})
    with pytest.raises(ValueError, match="Value passed for key 'bad' is of incorrect shape"):
        write_results(
            adata,
            record_key="run",
            record={"params": {"new": 1}},
            layers={"new": np.zeros_like(counts), "old": np.zeros_like(counts), "bad": np.zeros((2, 2))},
        )
    assert set(adata.layers) == {"old"}
    np.testing.assert_array_equal(adata.layers["old"], counts + 1)
    assert adata.uns == {"old": {"a": 1}, "run": earlier}


def test_write_results_rolls_back_an_interrupt(counts, monkeypatch):
    adata = ad.AnnData(counts, uns={"old": 1, "run": {"keys": {"uns": ["old"]}}})
    uns_type = type(adata.uns)

    class Interrupting(uns_type):
        def __setitem__(self, key, value):
            if key == "new":
                raise KeyboardInterrupt
            super().__setitem__(key, value)

    adata.uns = Interrupting(adata.uns)
    with pytest.raises(KeyboardInterrupt):
        write_results(
            adata, record_key="run", record={}, layers={"new": np.zeros_like(counts)}, uns={"old": 2, "new": 3}
        )
    assert not adata.layers
    assert dict(adata.uns) == {"old": 1, "run": {"keys": {"uns": ["old"]}}}
