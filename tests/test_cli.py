from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import scn2s
import scn2s._memory
from scn2s.cli import main
from scn2s.datasets import simulate


@pytest.fixture(scope="module")
def counts_file(tmp_path_factory):
    adata = simulate(200, 80, n_types=3, rank=2, depth=600, rng=2)
    adata.layers["counts"] = adata.X.copy()
    adata.var["highly_variable"] = np.arange(adata.n_vars) < 50
    path = tmp_path_factory.mktemp("input") / "counts.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("scn2s"), err
    assert "error:" in lines[0]
    return lines[0]


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"scn2s {scn2s.__version__}"


def test_help_exits_zero(capsys):
    assert main(["denoise", "--help"]) == 0
    assert "--key-added" in capsys.readouterr().out


def test_denoise_writes_output_and_summary(counts_file, workdir, capsys):
    before = counts_file.read_bytes()
    assert main(["-q", "denoise", "--method", "lowrank", str(counts_file), "-o", "out.h5ad", "--max-rank", "12"]) == 0
    out = capsys.readouterr().out
    assert counts_file.read_bytes() == before
    result = ad.read_h5ad(workdir / "out.h5ad")
    record = result.uns["denoised"]
    rank = record["best_params"]["rank"]
    split_rank = record["selection"]["lowrank"]["split_rank"]
    assert result.layers["denoised"].shape == (200, 80)
    assert result.obsm["X_denoised"].shape == (200, rank)
    assert result.varm["denoised_loadings"].shape == (80, rank)
    assert "written: lowrank, rank" in out
    assert "held-out loss" in out
    assert f"{split_rank}" in out.split("<- chosen")[0].splitlines()[-1]
    assert f"rank {rank}" in out
    assert "time:" in out
    assert "wrote out.h5ad: layers['denoised'] (denoised expected counts of the lowrank model)" in out
    assert "mean and sd over 3 splits" in out
    assert "obsm['X_denoised']" in out
    assert "scored on:" not in out  # every cell scored
    assert sorted(p.name for p in workdir.iterdir()) == ["out.h5ad"]


def test_summary_says_when_a_subset_of_cells_scored(counts_file, workdir, capsys, monkeypatch):
    from dataclasses import replace

    from scn2s.select.splits import Splits

    draw = Splits.draw
    monkeypatch.setattr(Splits, "draw", classmethod(lambda cls, *a, **k: replace(draw(*a, **k), scored_cells=120)))
    assert main(["-q", "denoise", "--method", "lowrank", str(counts_file), "-o", "out.h5ad", "--max-rank", "6"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert ad.read_h5ad(workdir / "out.h5ad").uns["denoised"]["selection"]["lowrank"]["scored_cells"] == 120
    assert out[1].startswith("  written: lowrank, rank")
    assert out[2].startswith("  scored on: the held-out molecules of 120 of the 200 cells, drawn from each split")


def test_denoise_options_match_the_python_call(counts_file, workdir, capsys):
    argv = [
        "denoise",
        "--method",
        "lowrank",
        str(counts_file),
        "-o",
        "out.h5ad",
        "--layer",
        "counts",
        "--key-added",
        "smooth",
    ]
    argv += ["--genes", "highly_variable", "--seed", "3", "--max-rank", "10", "--n-splits", "2", "-q"]
    assert main(argv) == 0
    result = ad.read_h5ad(workdir / "out.h5ad")
    expected = ad.read_h5ad(counts_file)
    scn2s.pp.denoise(
        expected, method="lowrank", layer="counts", key_added="smooth", mask_var="highly_variable", rng=3,
        lowrank_kwds={"max_rank": 10}, n_splits=2, progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(result.layers["smooth"], expected.layers["smooth"])
    params = result.uns["smooth"]["params"]
    assert (params["layer"], params["mask_var"], params["seed"], params["n_splits"]) == (
        "counts",
        "highly_variable",
        3,
        2,
    )
    assert "modelled: genes in var['highly_variable']" in capsys.readouterr().out


def test_fixed_rank_summary(counts_file, workdir, capsys):
    assert main(["-q", "denoise", "--method", "lowrank", str(counts_file), "-o", "out.h5ad", "--rank", "3"]) == 0
    assert "written: lowrank, rank 3, fixed by the caller (no search)" in capsys.readouterr().out


@pytest.fixture
def bad_inputs(counts_file, workdir):
    adata = ad.read_h5ad(counts_file)
    adata.X = sparse.csr_matrix(np.log1p(adata.X.toarray()))
    adata.write_h5ad(workdir / "normalised.h5ad")
    (workdir / "text.h5ad").write_text("not an h5ad file\n")
    return workdir


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.h5ad"], "input file not found: missing.h5ad"),
        (["text.h5ad"], "cannot read text.h5ad as an .h5ad file"),
        (["normalised.h5ad"], "normalised.h5ad: adata.X holds non-integer values"),
        (
            ["{counts}", "--layer", "raw"],
            "Layer 'raw' not found in adata.layers (available: 'counts', 'rates'); leave out --layer for adata.X",
        ),
        (["{counts}", "--genes", "selected"], "--genes selected is not a column of adata.var"),
        (["normalised.h5ad"], "If the raw counts are in a layer, pass --layer counts (or its name)"),
        (["{counts}", "--p", "1.5"], "argument --p: must be strictly between 0 and 1, got 1.5"),
        (["{counts}", "--max-rank", "ten"], "argument --max-rank: must be a positive integer, got 'ten'"),
        (["{counts}", "--method", "magic"], "argument --method: invalid choice: 'magic'"),
        (["{counts}", "--key-added", "a/b"], "argument --key-added: must be a non-empty name without '/'"),
    ],
)
def test_input_errors_exit_2_with_one_line(bad_inputs, counts_file, capsys, args, message):
    args = [arg.format(counts=counts_file) for arg in args]
    assert main(["denoise", *args, "-o", "out.h5ad"]) == 2
    line = _error_line(capsys)
    assert message in line
    # the flags, not the Python arguments they set
    assert not any(name in line for name in ("layer=", "mask_var", "key_added", "max_rank"))
    assert not (bad_inputs / "out.h5ad").exists()


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ('pass layer="counts" (or its name).', "pass --layer counts (or its name)."),
        (
            "Pass layer= naming the layer, or layer=None for adata.X.",
            "Pass --layer naming the layer, or no --layer for adata.X.",
        ),
        ("mask_var='hvg' is not a column", "--genes hvg is not a column"),
        ("or pass mask_var=None to model every gene", "or leave out --genes to model every gene"),
        ("in the genes selected by mask_var (every", "in the genes selected by --genes (every"),
        ("key_added='counts' would overwrite", "--key-added counts would overwrite"),
        ("rank= needs method=\"lowrank\", got method='auto'", "--rank needs --method lowrank, got --method auto"),
        ("max_rank=60 is above", "--max-rank 60 is above"),
        ("adata.layers['counts'] holds no molecule", "adata.layers['counts'] holds no molecule"),
    ],
)
def test_messages_name_the_flags(message, expected):
    from scn2s.cli._terms import command_line_terms

    assert command_line_terms(message) == expected


def test_an_error_raised_while_denoising_names_the_flags(counts_file, workdir, capsys):
    adata = ad.read_h5ad(counts_file)
    adata.var["none"] = False
    adata.var["first"] = np.arange(adata.n_vars) == 0
    adata.X = sparse.csr_matrix(adata.X.shape, dtype=np.int64)
    adata.write_h5ad(workdir / "empty.h5ad")
    assert main(["denoise", "--method", "lowrank", "empty.h5ad", "-o", "out.h5ad", "--genes", "none"]) == 2
    assert "--genes selects no gene; select at least one, or leave out --genes to model every gene" in _error_line(
        capsys
    )
    assert main(["denoise", "--method", "lowrank", "empty.h5ad", "-o", "out.h5ad", "--genes", "first"]) == 1
    line = _error_line(capsys)
    assert "holds no molecule in the genes selected by --genes" in line
    assert "Check that --layer names the raw counts" in line


def test_demo_help_has_a_description(capsys):
    assert main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Simulate Poisson counts" in out
    assert "known true rates" in out


@pytest.mark.parametrize("argv", [[], ["denoise"], ["denoise", "in.h5ad"], ["frobnicate"]])
def test_usage_errors_exit_2_with_one_line(workdir, capsys, argv):
    assert main(argv) == 2
    line = _error_line(capsys)
    assert "--help" in line


@pytest.mark.parametrize("command", ["denoise", "split"])
def test_refuses_to_overwrite_without_force(counts_file, workdir, capsys, command):
    out = workdir / "out.h5ad"
    out.write_bytes(b"previous")
    assert main([command, str(counts_file), "-o", str(out)]) == 2
    assert "output file exists" in _error_line(capsys)
    assert out.read_bytes() == b"previous"
    assert main(["-q", command, str(counts_file), "-o", str(out), "--force"]) == 0
    assert ad.read_h5ad(out).n_obs == 200


@pytest.mark.parametrize("command", ["denoise", "split"])
def test_refuses_to_overwrite_the_input(counts_file, workdir, capsys, command):
    link = workdir / "link.h5ad"
    link.symlink_to(counts_file)
    before = counts_file.read_bytes()
    for target in (counts_file, counts_file.parent / ".." / counts_file.parent.name / counts_file.name, link):
        assert main([command, str(counts_file), "-o", str(target), "--force"]) == 2
        assert "refusing to overwrite the input file" in _error_line(capsys)
    assert counts_file.read_bytes() == before


def test_output_folder_must_exist(counts_file, workdir, capsys):
    assert main(["denoise", "--method", "lowrank", str(counts_file), "-o", "nowhere/out.h5ad"]) == 2
    assert "output folder does not exist: nowhere" in _error_line(capsys)
    assert main(["denoise", "--method", "lowrank", str(counts_file), "-o", "."]) == 2
    assert "is a folder" in _error_line(capsys)


def _failing_write(exception):
    def write_h5ad(self, filename, **kwargs):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise exception

    return write_h5ad


@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.parametrize(("exception", "code"), [(OSError("No space left on device"), 1), (KeyboardInterrupt(), 130)])
def test_failed_write_leaves_no_partial_output(counts_file, workdir, capsys, monkeypatch, existing, exception, code):
    out = workdir / "out.h5ad"
    if existing:
        out.write_bytes(b"previous")
    monkeypatch.setattr(ad.AnnData, "write_h5ad", _failing_write(exception))
    assert (
        main(["-q", "denoise", "--method", "lowrank", str(counts_file), "-o", str(out), "--force", "--max-rank", "5"])
        == code
    )
    line = _error_line(capsys)
    assert ("no space left on the device" if code == 1 else "interrupted") in line
    if existing:
        assert out.read_bytes() == b"previous"
    else:
        assert not out.exists()
    assert sorted(p.name for p in workdir.iterdir()) == (["out.h5ad"] if existing else [])


def test_unexpected_error_exits_1_and_verbose_shows_the_traceback(counts_file, workdir, capsys, monkeypatch):
    def broken(counts, **kwargs):
        raise RuntimeError("something broke")

    monkeypatch.setattr(scn2s.lowrank, "select", broken)
    assert main(["denoise", "--method", "lowrank", str(counts_file), "-o", "out.h5ad"]) == 1
    line = _error_line(capsys)
    assert "RuntimeError: something broke (run with -v for the traceback)" in line
    assert main(["denoise", "--method", "lowrank", str(counts_file), "-o", "out.h5ad", "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.strip().splitlines()[-1] == "scn2s: error: RuntimeError: something broke"
    assert not (workdir / "out.h5ad").exists()


def test_quiet_and_verbose(counts_file, workdir, capsys):
    argv = ["denoise", "--method", "lowrank", str(counts_file), "--max-rank", "5"]
    assert main(["-q", *argv, "-o", "a.h5ad"]) == 0
    assert capsys.readouterr().err == ""
    assert main([*argv, "-o", "b.h5ad"]) == 0
    err = capsys.readouterr().err
    assert "rank search" in err  # progress bar
    assert "INFO" not in err
    assert main([*argv, "-o", "c.h5ad", "-v"]) == 0
    err = capsys.readouterr().err
    assert "INFO scn2s.pp._denoise: denoising adata.X: 200 cells x 80 genes" in err
    assert "DEBUG" not in err
    assert main(["-vv", *argv, "-o", "d.h5ad"]) == 0
    assert "DEBUG scn2s.lowrank.search: split 0: best rank" in capsys.readouterr().err
    # the command's handler is removed afterwards
    assert not logging.getLogger("scn2s").handlers


def test_split_writes_two_halves(counts_file, workdir, capsys):
    argv = ["-q", "split", str(counts_file), "-o", "halves.h5ad", "--p", "0.3", "--key-added", "a", "b"]
    assert main([*argv, "--layer", "counts", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    result = ad.read_h5ad(workdir / "halves.h5ad")
    assert (result.layers["a"] + result.layers["b"] != result.layers["counts"]).nnz == 0
    assert result.layers["a"].sum() < result.layers["b"].sum()
    assert result.uns["split_counts"]["params"]["p"] == 0.3
    assert result.uns["split_counts"]["params"]["seed"] == 4
    assert "layers['a']" in out
    assert "layers['b']" in out
    assert main(["split", "missing.h5ad", "-o", "x.h5ad"]) == 2
    assert "input file not found" in _error_line(capsys)


def test_demo_writes_the_selection_plot(workdir, capsys):
    assert main(["-q", "demo", "--cells", "300", "--genes", "100", "-o", "demo.h5ad"]) == 0
    out = capsys.readouterr().out
    figure = workdir / "scn2s_demo" / "selection.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"selection plot (held-out loss against rank): {figure.relative_to(workdir)}" in out
    assert "rank chosen by held-out molecules" in out
    assert "x lower" in out
    assert "denoised" in ad.read_h5ad(workdir / "demo.h5ad").layers
    assert main(["-q", "demo", "--cells", "300", "--genes", "100", "-o", "demo.h5ad"]) == 2
    assert "output file exists" in _error_line(capsys)


def test_demo_figdir(workdir, capsys):
    assert main(["-q", "demo", "--cells", "200", "--genes", "60", "--figdir", "figs/run1"]) == 0
    assert (workdir / "figs" / "run1" / "selection.png").exists()
    assert "figs/run1/selection.png" in capsys.readouterr().out
    assert sorted(p.name for p in (workdir / "figs" / "run1").iterdir()) == ["selection.png"]


def test_output_factors_writes_the_factors_and_says_so(counts_file, workdir, capsys):
    argv = ["-q", "denoise", "--method", "lowrank", str(counts_file), "-o", "out.h5ad", "--max-rank", "10"]
    assert main([*argv, "--output", "factors", "--genes", "highly_variable"]) == 0
    out = capsys.readouterr().out
    result = ad.read_h5ad(workdir / "out.h5ad")
    assert "denoised" not in result.layers
    assert result.uns["denoised"]["output"] == "factors"
    assert "wrote out.h5ad: the low-rank factors (obsm['X_denoised'], varm['denoised_loadings']" in out
    expected = ad.read_h5ad(counts_file)
    scn2s.pp.denoise(
        expected, method="lowrank", lowrank_kwds={"max_rank": 10}, mask_var="highly_variable", progress=False
    )
    np.testing.assert_array_equal(scn2s.tl.reconstruct(result), expected.layers["denoised"])


def test_uncertainty_needs_the_autoencoder(counts_file, workdir, capsys):
    argv = ["denoise", str(counts_file), "-o", "out.h5ad", "--method", "lowrank", "--uncertainty"]
    assert main(argv) == 2
    assert "--uncertainty" in _error_line(capsys)
    assert not (workdir / "out.h5ad").exists()


def test_output_factors_needs_the_lowrank_method(counts_file, workdir, capsys):
    assert main(["denoise", str(counts_file), "-o", "out.h5ad", "--output", "factors"]) == 2
    assert "--output factors stores a low-rank model and needs --method lowrank, got --method auto" in _error_line(
        capsys
    )
    assert not (workdir / "out.h5ad").exists()


def test_rank_needs_the_lowrank_method(counts_file, workdir, capsys):
    assert main(["denoise", str(counts_file), "-o", "out.h5ad", "--rank", "3", "--method", "autoencoder"]) == 2
    line = _error_line(capsys)
    assert "--rank fixes the rank of a low-rank model and needs --method lowrank, got --method autoencoder" in line
    assert not (workdir / "out.h5ad").exists()


def test_memory_guard_exits_2_and_points_to_output_factors(counts_file, workdir, capsys, monkeypatch):
    monkeypatch.setattr(scn2s._memory, "available_memory", lambda: 1000)
    assert main(["denoise", "--method", "lowrank", str(counts_file), "-o", "out.h5ad"]) == 2
    line = _error_line(capsys)
    assert "The denoised layer adata.layers['denoised'] would take" in line
    assert "(200 cells x 80 genes x 4 bytes)" in line
    assert "Pass --output factors (with --method lowrank)" in line
    assert not (workdir / "out.h5ad").exists()
    argv = ["-q", "denoise", "--method", "lowrank", str(counts_file), "-o", "out.h5ad", "--output", "factors"]
    assert main(argv) == 0


def test_device_is_passed_to_denoise(counts_file, workdir, capsys):
    argv = ["-q", "denoise", "--method", "lowrank", str(counts_file), "-o", "out.h5ad", "--max-rank", "5"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert ad.read_h5ad(workdir / "out.h5ad").uns["denoised"]["params"]["device"] == "cpu"


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CUDA", ""])
def test_unknown_device_exits_2_with_one_line(counts_file, workdir, capsys, device):
    assert main(["denoise", str(counts_file), "-o", "out.h5ad", "--device", device]) == 2
    assert "argument --device: must be a torch device: cpu, cuda, cuda:N" in _error_line(capsys)


def test_unavailable_cuda_device_exits_2_with_one_line(counts_file, workdir, capsys):
    torch = pytest.importorskip("torch")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = f"cuda:{count}"
    assert main(["denoise", "--method", "autoencoder", str(counts_file), "-o", "out.h5ad", "--device", device]) == 2
    line = _error_line(capsys)
    assert f"--device {device}: torch sees" in line
    assert "CUDA device" in line
    assert not (workdir / "out.h5ad").exists()


TINY_CONFIGS = (
    {"hidden": 32, "bottleneck": 4, "dropout": 0.0, "max_epochs": 4, "patience": 2},
    {"hidden": 32, "bottleneck": 8, "dropout": 0.1, "max_epochs": 4, "patience": 2},
)


def test_auto_summary_says_which_family_was_written_and_why(counts_file, workdir, capsys, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr(scn2s.autoencoder.search, "DEFAULT_CONFIGS", TINY_CONFIGS)
    monkeypatch.setattr(scn2s.autoencoder.search, "LONG_SEARCH_S", 0.0)
    assert main(["denoise", str(counts_file), "-o", "out.h5ad", "--max-rank", "10"]) == 0
    captured = capsys.readouterr()
    # before the search, its estimated duration, in the words of the command line
    (warning,) = [line for line in captured.err.splitlines() if line.startswith("WARNING")]
    assert "WARNING scn2s.autoencoder.search: autoencoder search on 200 cells x " in warning
    assert "estimated at most" in warning
    assert "The low-rank family alone (--method lowrank) takes a small fraction of that" in warning
    assert "epoch 4/4, held-out loss" in captured.err
    lines = captured.out.splitlines()
    record = ad.read_h5ad(workdir / "out.h5ad").uns["denoised"]
    written = record["comparison"]["chosen"]
    other = ({"lowrank", "autoencoder"} - {written}).pop()
    assert record["method"] == written
    assert lines[1].startswith(f"  written: {written}, ")
    assert lines[2] == "  why: the lower held-out loss of the two families, on the split both were scored on:"
    losses = record["comparison"]["loss"]
    rows = {line.split()[0]: line for line in lines[3:5]}
    assert set(rows) == {"lowrank", "autoencoder"}
    assert rows[written].split()[1] == f"{losses[written]:.6g}"
    assert rows[written].endswith("lowest  <- written")
    margin = 100 * (losses[other] / losses[written] - 1)
    assert f"{losses[other]:.6g}" in rows[other]
    assert f"{margin:+.2f}%" in rows[other]
    assert rows[other].endswith("not written")
    text = "\n".join(lines)
    assert f"  {written} (written): " in text
    assert f"  {other} (best of its family, not written): " in text
    # the chosen marker only in the written family's table, the other family's best named as such
    assert text.count("<- chosen") == 1
    assert text.count("<- best of its family") == 1
    # readable candidate names beside the labels; no sd column for the autoencoder's single split
    assert "h32-b4-d0 " in text
    assert "32 hidden, 4 bottleneck, no dropout, posterior" in text
    assert "32 hidden, 8 bottleneck, dropout 0.1, posterior" in text
    one_split = lines.index("    held-out loss (MSE of square-root counts per entry; one split):")
    assert lines[one_split + 1].split() == ["candidate", "loss", "vs", "lowest"]
    assert "mean and sd over 3 splits" in text
    assert f"wrote out.h5ad: layers['denoised'] (denoised expected counts of the {written} model)" in text


def test_denoise_help_states_the_measured_times_of_the_readme(capsys):
    from pathlib import Path

    from scn2s.cli._main import MEASURED_TIMES

    assert main(["denoise", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"--method lowrank {MEASURED_TIMES['lowrank']}, the default auto {MEASURED_TIMES['auto']}" in help_text
    assert "logs an estimate of its duration before it starts" in help_text
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert (
        f"on 2 CPU cores: `--method lowrank` {MEASURED_TIMES['lowrank']}; the default `auto` {MEASURED_TIMES['auto']}"
        in readme
    )
