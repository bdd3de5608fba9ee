"""A bounded random-input run of denoise(method="lowrank"), with the checks of benchmarks/fuzz.py."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import scn2s

N_CASES = 60


@pytest.fixture(scope="module")
def fuzz():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz.py"
    spec = importlib.util.spec_from_file_location("scn2s_fuzz", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_random_inputs_give_finite_non_negative_output_or_the_documented_error(fuzz):
    tally = fuzz.run(N_CASES, seed=2024)
    assert tally["failures"] == []
    assert tally["tried"] == N_CASES
    assert tally["denoised"] >= N_CASES // 2
    assert tally["refused"] >= 1  # one cell or no molecule: refused with the exact message
    assert set(tally["kinds"]) == set(fuzz.KINDS)
    assert len(tally["dtypes"]) >= 9


def test_the_cases_cover_the_awkward_shapes(fuzz):
    rng = np.random.default_rng(2024)
    shapes = [fuzz.random_case(rng).facts["shape"] for _ in range(N_CASES)]
    assert any(g == 1 for _, g in shapes)
    assert any(n == 1 for n, _ in shapes)
    assert any(n > 10 * g for n, g in shapes)
    assert any(g > 10 * n for n, g in shapes)
    assert {(2, 1), (3, 2)} & set(shapes)


def _case(fuzz, seed=0):
    rng = np.random.default_rng(seed)
    while True:
        case = fuzz.random_case(rng)
        if case.expected_error is None and "mask_var" not in case.kwargs:
            return case


@pytest.mark.parametrize("fault", ["negative", "nan", "library", "runtime warning", "mutation", "crash"])
def test_the_checks_catch_a_faulty_denoiser(fuzz, monkeypatch, fault):
    """Control: each check fails when denoise misbehaves in the way it looks for."""
    real = scn2s.pp.denoise

    def faulty(adata, **kwargs):
        if fault == "crash":
            raise IndexError("planted")
        result = real(adata, **kwargs)
        out = (result if kwargs.get("copy") else adata).layers["denoised"]
        if fault == "negative":
            out[0, 0] = -1.0
        elif fault == "nan":
            out[-1, -1] = np.nan
        elif fault == "library":
            out *= 1.01
        elif fault == "runtime warning":
            warnings.warn("invalid value encountered in divide", RuntimeWarning, stacklevel=1)
        elif fault == "mutation":
            counts = adata.layers["counts"] if "layer" in kwargs else adata.X
            if isinstance(counts, np.ndarray):
                counts[...] = 0
            else:
                counts.data[:] = 0
        return result

    monkeypatch.setattr(scn2s.pp, "denoise", faulty)
    problems = []
    for seed in range(5):
        case = _case(fuzz, seed)
        if fault == "mutation" and case.kwargs.get("copy"):
            continue
        problems.append(fuzz.check_case(case)[1])
    assert any(problem is not None for problem in problems), fault


def test_bad_inputs_are_all_refused_or_warned_about(fuzz):
    table = fuzz.bad_input_table()
    rows = table.splitlines()[2:]
    assert len(rows) >= 40
    for row in rows:
        _, result = row.strip("| ").split(" | ", 1)
        assert "Error`" in result or "Warning`" in result, row
        assert "Traceback" not in result
