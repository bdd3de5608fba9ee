"""Robustness of ``scn2s.pp.denoise(method="lowrank")``: a bounded random-input run, and the bad inputs it refuses.

Random inputs span shapes (2 x 1, 3 x 2, one gene, one cell, tall, wide), densities from 0 to 1 with all-zero
cells and genes, every accepted dtype, dense / CSR / CSC / CSR array / CSR with duplicate entries / views, the
counts in ``X`` or a layer, and random arguments (``max_rank``, ``rank``, ``p``, ``n_splits``,
``sample_ratio``, ``mask_var``, ``depth_correction``). Each must either be denoised into a finite,
non-negative ``float32`` layer of the right shape that keeps every cell's library size, leaves the input
untouched and raises no warning other than the documented ones, or be refused with the documented message
(one cell; no molecule).

    python benchmarks/fuzz.py --n 1000 --seed 0    # the random-input run
    python benchmarks/fuzz.py --bad-inputs         # a markdown table of bad inputs and the messages they give
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
from scipy import sparse

import scn2s
from scn2s.split import binomial_split

DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"]
KINDS = ["dense", "csr", "csc", "csr_array", "csr with duplicates", "view"]
# warnings the inputs may legitimately raise; anything else (a RuntimeWarning above all) is a failure
ALLOWED_WARNINGS = ("exceeds what", "Only 1 gene is modelled")


@dataclass
class Case:
    """One random input: the AnnData, the arguments, and what must happen."""

    adata: ad.AnnData
    kwargs: dict
    description: str
    expected_error: str | None = None
    facts: dict = field(default_factory=dict)


def _digest(X) -> str:
    h = hashlib.sha256()
    if sparse.issparse(X):
        for part in (X.data, X.indices, X.indptr):
            h.update(np.ascontiguousarray(part).tobytes())
    else:
        h.update(np.ascontiguousarray(X).tobytes())
    return h.hexdigest()


def _shape(rng: np.random.Generator) -> tuple[int, int]:
    family = rng.choice(["fixed", "one gene", "one cell", "tall", "wide", "square"], p=[0.2, 0.1, 0.05, 0.2, 0.2, 0.25])
    if family == "fixed":
        return [(2, 1), (3, 2), (2, 2), (2, 5), (4, 3), (5, 1)][rng.integers(6)]
    if family == "one gene":
        return int(rng.integers(2, 200)), 1
    if family == "one cell":
        return 1, int(rng.integers(1, 50))
    if family == "tall":
        return int(rng.integers(20, 600)), int(rng.integers(1, 12))
    if family == "wide":
        return int(rng.integers(2, 12)), int(rng.integers(20, 400))
    return int(rng.integers(5, 120)), int(rng.integers(5, 120))


def _counts(rng: np.random.Generator, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    n, g = shape
    density = float(rng.choice([0.0, rng.uniform(0, 0.05), rng.uniform(0, 1), 1.0], p=[0.05, 0.3, 0.5, 0.15]))
    if rng.random() < 0.5:  # low-rank rates
        rank = int(rng.integers(1, 4))
        rates = rng.gamma(1.0, 1.0, (n, rank)) @ rng.gamma(0.5, 2.0, (rank, g))
    else:  # heavy-tailed independent rates
        rates = rng.gamma(0.3, 5.0, (n, g))
    rates *= 10.0 ** rng.uniform(-1, 2)
    X = rng.poisson(rates) * (rng.random((n, g)) < density)
    if rng.random() < 0.4:
        X[rng.random(n) < 0.2] = 0  # all-zero cells
    if rng.random() < 0.4:
        X[:, rng.random(g) < 0.2] = 0  # all-zero genes
    high = 2048 if dtype == np.float16 else min(np.iinfo(dtype).max if dtype.kind in "iu" else 10**6, 10**6)
    return np.minimum(X, high).astype(dtype)


def _store(rng: np.random.Generator, X: np.ndarray, kind: str):
    if kind in ("dense", "view"):
        return X
    if kind == "csc":
        return sparse.csc_matrix(X)
    if kind == "csr_array":
        return sparse.csr_array(X)
    csr = sparse.csr_matrix(X)
    if kind == "csr with duplicates" and csr.nnz:
        first = (csr.data // 2).astype(csr.dtype)
        data = np.empty(2 * csr.nnz, dtype=csr.dtype)
        indices = np.repeat(csr.indices, 2)
        data[0::2], data[1::2] = first, csr.data - first
        return sparse.csr_matrix((data, indices, 2 * csr.indptr), shape=csr.shape)
    return csr


def random_case(rng: np.random.Generator) -> Case:
    """Draw one random input for :func:`scn2s.pp.denoise` and what it must give."""
    shape = _shape(rng)
    dtype = np.dtype(rng.choice(DTYPES))
    kind = str(rng.choice(KINDS))
    if dtype == np.float16 and kind not in ("dense", "view"):
        kind = "dense"  # scipy.sparse cannot hold float16
    X = _counts(rng, shape, dtype)
    stored = _store(rng, X, kind)
    in_layer = bool(rng.random() < 0.3)
    adata = ad.AnnData(sparse.csr_matrix(np.log1p(X.astype(np.float64))) if in_layer else stored)
    if in_layer:
        adata.layers["counts"] = stored
    lowrank: dict = {"max_rank": int(rng.integers(1, 61))}
    kwargs: dict = {"method": "lowrank", "lowrank_kwds": lowrank, "rng": int(rng.integers(2**31))}
    kwargs["progress"] = False
    if in_layer:
        kwargs["layer"] = "counts"
    if rng.random() < 0.15:
        lowrank["rank"] = int(rng.integers(0, 20))
    if rng.random() < 0.3:
        kwargs["p"] = float(rng.uniform(0.1, 0.9))
    if rng.random() < 0.3:
        kwargs["n_splits"] = int(rng.integers(1, 5))
    if rng.random() < 0.15:
        kwargs["sample_ratio"] = float(rng.uniform(0.05, 0.95))
    if rng.random() < 0.2:
        lowrank["depth_correction"] = False
    genes = np.arange(shape[1])
    if rng.random() < 0.2:
        mask = rng.random(shape[1]) < 0.5
        mask[rng.integers(shape[1])] = True
        kwargs["mask_var"] = mask
        genes = np.flatnonzero(mask)
    if kind == "view":
        rows = np.sort(rng.choice(shape[0], size=max(1, int(rng.integers(1, shape[0] + 1))), replace=False))
        adata = adata[rows]
        X = X[rows]
        kwargs["copy"] = True
        shape = (len(rows), shape[1])
    modelled = X[:, genes]
    source = "adata.layers['counts']" if in_layer else "adata.X"
    expected = None
    if not modelled.any():
        where = " in the genes selected by mask_var" if "mask_var" in kwargs else ""
        expected = (
            f"{source} holds no molecule{where} (every count is zero); there is nothing to denoise. Check that "
            "layer= names the raw counts."
        )
    elif shape[0] < 2:
        expected = f"denoise needs at least 2 cells to fit a model across cells; {source} has {shape[0]}."
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k not in ("mask_var", "method", "progress"))
    where = "layer" if in_layer else "X"
    description = f"{shape[0]}x{shape[1]} {kind} {dtype.name} in {where}, {np.count_nonzero(X)} non-zeros, {shown}"
    facts = {"shape": shape, "kind": kind, "dtype": dtype.name, "X": X, "genes": genes, "source": source}
    return Case(adata, kwargs, description, expected, facts)


def check_case(case: Case) -> tuple[str, str | None]:
    """Run one case; return ``(outcome, problem)`` with outcome "denoised" or "refused" and problem None if fine."""
    adata, facts = case.adata, case.facts
    source_matrix = adata.layers["counts"] if facts["source"] != "adata.X" else adata.X
    before = _digest(source_matrix)
    kwargs = dict(case.kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = scn2s.pp.denoise(adata, **kwargs)
        except ValueError as error:
            if case.expected_error is not None and error.args[0] == case.expected_error:
                return "refused", None
            return "refused", f"unexpected error: {error!r}"
        except Exception as error:  # a fuzz run reports every failure
            return "crashed", f"{type(error).__name__}: {error}"
    if case.expected_error is not None:
        return "denoised", f"expected the error {case.expected_error!r}"
    unexpected = [w for w in caught if not any(text in str(w.message) for text in ALLOWED_WARNINGS)]
    if unexpected:
        return "denoised", f"unexpected warning: {unexpected[0].category.__name__}: {unexpected[0].message}"
    out_adata = result if kwargs.get("copy") else adata
    out = out_adata.layers["denoised"]
    X = facts["X"].astype(np.float64)
    genes = facts["genes"]
    if _digest(source_matrix) != before:
        return "denoised", "the input counts changed"
    if out.shape != X.shape or out.dtype != np.float32:
        return "denoised", f"output {out.shape} {out.dtype}, expected {X.shape} float32"
    if not np.all(np.isfinite(out)):
        return "denoised", "non-finite output"
    if np.any(out < 0):
        return "denoised", "negative output"
    library = X[:, genes].sum(axis=1)
    totals = out[:, genes].sum(axis=1, dtype=np.float64)
    if not np.allclose(totals, library, rtol=1e-4, atol=1e-3):
        worst = int(np.argmax(np.abs(totals - library)))
        return "denoised", f"library size not kept: cell {worst} has {out[worst, genes].sum()} for {library[worst]}"
    if np.any(out[library == 0][:, genes] != 0) or np.any(out[:, genes][:, X[:, genes].sum(axis=0) == 0] != 0):
        return "denoised", "all-zero cell or gene has non-zero output"
    rest = np.setdiff1d(np.arange(X.shape[1]), genes)
    if not np.array_equal(out[:, rest], X[:, rest].astype(np.float32)):
        return "denoised", "genes outside mask_var do not keep their counts"
    return "denoised", None


def run(n: int, seed: int = 0, *, verbose: bool = False) -> dict:
    """Draw and check ``n`` random inputs; return the tallies and the failures."""
    rng = np.random.default_rng(seed)
    tally = {"tried": 0, "denoised": 0, "refused": 0, "failures": [], "kinds": {}, "dtypes": {}}
    for i in range(n):
        case = random_case(rng)
        outcome, problem = check_case(case)
        tally["tried"] += 1
        tally["kinds"][case.facts["kind"]] = tally["kinds"].get(case.facts["kind"], 0) + 1
        tally["dtypes"][case.facts["dtype"]] = tally["dtypes"].get(case.facts["dtype"], 0) + 1
        if problem is None:
            tally[outcome] += 1
        else:
            tally["failures"].append(f"#{i} {case.description}: {problem}")
        if verbose:
            print(f"#{i} {outcome} {case.description}" + (f" FAILED: {problem}" if problem else ""))
    return tally


# --- bad inputs ------------------------------------------------------------------------------------------------


def _counts_fixture() -> np.ndarray:
    return scn2s.datasets.simulate(60, 25, n_types=2, rank=2, depth=300, rng=3).X.toarray()


def bad_inputs(tmp: Path) -> list[tuple[str, callable]]:
    """(description, call) pairs: each call gives one bad (or borderline) input to scn2s."""
    X = _counts_fixture()
    f = X.astype(np.float64)

    def denoise(A, **kwargs):
        adata = A if isinstance(A, ad.AnnData) else ad.AnnData(A)
        return lambda: scn2s.pp.denoise(
            adata, **{"method": "lowrank", "lowrank_kwds": {"max_rank": 5}, "progress": False, **kwargs}
        )

    def with_value(index, value, dtype=np.float64):
        out = X.astype(dtype)
        out[index] = value
        return out

    def backed():
        path = tmp / "backed.h5ad"
        ad.AnnData(sparse.csr_matrix(X)).write_h5ad(path)
        return ad.read_h5ad(path, backed="r")

    zero_genes = X.copy()
    zero_genes[:, :3] = 0
    first_three = np.zeros(25, dtype=bool)
    first_three[:3] = True
    view = ad.AnnData(sparse.csr_matrix(X))[10:50]
    return [
        ("log1p-normalised X", denoise(sparse.csr_matrix(np.log1p(f)))),
        ("log1p-normalised layer", denoise(ad.AnnData(X, layers={"counts": np.log1p(f)}), layer="counts")),
        ("scaled X (negative values)", denoise(f - f.mean(axis=0))),
        ("NaN in X", denoise(with_value((2, 2), np.nan))),
        ("+inf in X", denoise(with_value((0, 3), np.inf))),
        ("boolean X", denoise(X > 0)),
        ("complex X", denoise(f.astype(np.complex128))),
        ("object X", denoise(X.astype(object))),
        ("uint64 wrapped below zero (2**64 - 1)", denoise(with_value((1, 1), np.iinfo(np.uint64).max, np.uint64))),
        ("float 1e300", denoise(with_value((1, 1), 1e300))),
        ("layer that does not exist", denoise(ad.AnnData(X, layers={"raw": X}), layer="counts")),
        ("layer=0", denoise(X, layer=0)),
        (
            "X is None",
            denoise(ad.AnnData(None, obs={"i": np.arange(60)}, var={"j": np.arange(25)}, layers={"counts": X})),
        ),
        ("empty AnnData (0 x 25)", denoise(np.zeros((0, 25), dtype=np.int32))),
        ("backed AnnData", lambda: scn2s.pp.denoise(backed(), method="lowrank", progress=False)),
        ("one cell", denoise(X[:1])),
        ("all-zero counts", denoise(sparse.csr_matrix(X.shape, dtype=np.int32))),
        ("all-zero counts in the mask_var genes", denoise(zero_genes, mask_var=first_three)),
        ("one gene", denoise(X[:, X.sum(axis=0).argmax()][:, None])),
        ("3 cells, max_rank=50", denoise(X[:3] + 1, lowrank_kwds={"max_rank": 50})),
        ("rank=40 on 60 x 25", denoise(X, lowrank_kwds={"rank": 40})),
        ("view, written in place", denoise(view)),
        ("p=0", denoise(X, p=0.0)),
        ("p=1", denoise(X, p=1.0)),
        ("p=nan", denoise(X, p=float("nan"))),
        ('p="0.5"', denoise(X, p="0.5")),
        ("n_splits=0", denoise(X, n_splits=0)),
        ("n_splits=2.0", denoise(X, n_splits=2.0)),
        ("max_rank=0", denoise(X, lowrank_kwds={"max_rank": 0})),
        ("rank=-1", denoise(X, lowrank_kwds={"rank": -1})),
        ("rank=2.5", denoise(X, lowrank_kwds={"rank": 2.5})),
        ("sample_ratio=0", denoise(X, sample_ratio=0.0)),
        ("sample_ratio=1.5", denoise(X, sample_ratio=1.5)),
        ("sample_ratio=1 (denoise)", denoise(X, sample_ratio=1.0)),
        ('key_added=""', denoise(X, key_added="")),
        (
            'key_added="counts" with layer="counts"',
            denoise(ad.AnnData(X, layers={"counts": X}), layer="counts", key_added="counts"),
        ),
        ('rng="seed"', denoise(X, rng="seed")),
        ("rng=-1", denoise(X, rng=-1)),
        ('method="magic"', denoise(X, method="magic")),
        ('mask_var="highly_variable" missing', denoise(X, mask_var="highly_variable")),
        ("mask_var of the wrong length", denoise(X, mask_var=np.ones(3, dtype=bool))),
        ("mask_var selecting no gene", denoise(X, mask_var=np.zeros(25, dtype=bool))),
        ('split_counts key_added=("a", "a")', lambda: scn2s.pp.split_counts(ad.AnnData(X), key_added=("a", "a"))),
        ("split_counts p=1.5", lambda: scn2s.pp.split_counts(ad.AnnData(X), p=1.5)),
        ("binomial_split of non-integer floats", lambda: binomial_split(f + 0.5, rng=np.random.default_rng(0))),
    ]


def bad_input_table() -> str:
    """Run every bad input; return a markdown table of what each one gives."""
    rows = ["| input | result |", "| --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        for description, call in bad_inputs(Path(tmp)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    call()
                    result = "accepted"
                except Exception as error:  # the table reports every outcome
                    result = f"`{type(error).__name__}`: {error.args[0]}"
            for warning in caught:
                result += f"; `{warning.category.__name__}`: {warning.message}"
            escaped = result.replace(tmp, "<tmp>").replace("|", "\\|")
            rows.append(f"| {description} | {escaped} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Command line: the fuzz run, or ``--bad-inputs`` for the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="number of random inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bad-inputs", action="store_true", help="print the table of bad inputs and exit")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.bad_inputs:
        print(bad_input_table())
        return 0
    logging.getLogger("scn2s").setLevel(logging.ERROR)  # the search's notes would drown the report
    start = time.perf_counter()
    tally = run(args.n, args.seed, verbose=args.verbose)
    elapsed = time.perf_counter() - start
    passed = tally["denoised"] + tally["refused"]
    print(f"scn2s {scn2s.__version__}, seed {args.seed}: tried {tally['tried']} random inputs in {elapsed:.0f} s")
    print(f"  passed {passed}: {tally['denoised']} denoised and checked, {tally['refused']} refused as documented")
    print(f"  failed {len(tally['failures'])}")
    print("  array kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(tally["kinds"].items())))
    print("  dtypes: " + ", ".join(f"{k} {v}" for k, v in sorted(tally["dtypes"].items())))
    for failure in tally["failures"]:
        print(f"  FAILED {failure}")
    return 1 if tally["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
